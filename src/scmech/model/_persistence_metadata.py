"""The metadata of a saved model: ``metadata.json`` read as plain JSON and checked before anything is restored.

Helpers of :mod:`scmech.model._persistence`: the file names and format, and the checks that refuse a missing,
foreign, truncated or altered file with a message (an altered entry, an attribute ``save`` never writes) instead
of an error from deep inside the decoder or a method replaced by a value.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ._serialisation import from_jsonable

__all__ = ["ADATA", "FORMAT", "FORMAT_VERSION", "MDATA", "METADATA", "WEIGHTS"]

FORMAT = "scmech-model"
FORMAT_VERSION = 3
WEIGHTS = "model.pt"
METADATA = "metadata.json"
ADATA = "adata.h5ad"
MDATA = "mdata.h5mu"


def _decoded(meta: dict, key: str, meta_path: Path) -> Any:
    """Decode ``meta[key]`` (:func:`~scmech.model._serialisation.from_jsonable`), refusing an altered entry."""
    try:
        return from_jsonable(meta[key])
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as e:
        msg = (
            f"{meta_path} is damaged: its {key!r} entry cannot be read ({type(e).__name__}: {e}). Save the model again."
        )
        raise ValueError(msg) from e


def _check_saved_attributes(cls: type, attrs: Any, meta_path: Path) -> None:
    """Refuse saved attributes that ``save`` never writes: only the trained state's public ``name_`` attributes.

    ``load`` sets each saved attribute on the model; a name like ``predict`` or ``regime`` (an altered file) would
    replace a method or a property.
    """
    if not isinstance(attrs, dict):
        msg = f"{meta_path} is damaged: its attributes are a {type(attrs).__name__}, not a dict. Save the model again."
        raise ValueError(msg)
    bad = [
        name
        for name in attrs
        if not (isinstance(name, str) and name.isidentifier() and name.endswith("_") and not name.startswith("_"))
        or callable(getattr(cls, name, None))
        or isinstance(getattr(cls, name, None), property)
    ]
    if bad:
        msg = (
            f"{meta_path} holds attributes that {cls.__name__}.save() never writes ({bad[:5]}): the file was altered. "
            "Save the model again."
        )
        raise ValueError(msg)


def _read_model_metadata(path: Path, meta_path: Path, w_path: Path, model_name: str) -> dict:
    """Read the metadata of a saved model and refuse missing, foreign, incomplete or other-version files.

    Parameters
    ----------
    path
        The directory of the save.
    meta_path
        Its ``metadata.json``.
    w_path
        Its ``model.pt`` (only checked to exist here).
    model_name
        The class loading it.

    Returns
    -------
    The metadata, holding every entry that ``load`` reads.

    Raises
    ------
    FileNotFoundError
        When the metadata or the weights are missing.
    ValueError
        For a truncated or foreign file, an incomplete one, another save format or another model class.
    """
    for p in (meta_path, w_path):
        if not p.exists():
            msg = f"{p} not found: {path} does not hold a model saved by {model_name}.save()."
            raise FileNotFoundError(msg)
    meta = _parse_metadata(path, meta_path, model_name)
    lacking = [k for k in ("model_name", "registry", "attributes", "var_names", "cells") if k not in meta]
    if lacking:
        msg = f"{meta_path} is incomplete (no {lacking}); the model was not saved completely. Save it again."
        raise ValueError(msg)
    if meta.get("format_version") != FORMAT_VERSION:
        msg = (
            f"{meta_path} was written in save format {meta.get('format_version')!r} by scmech "
            f"{meta.get('scmech_version', 'unknown')}; this version reads format {FORMAT_VERSION}. Load it with "
            "the scmech that saved it, or train the model again."
        )
        raise ValueError(msg)
    if meta["model_name"] != model_name:
        msg = f"{path} holds a {meta['model_name']}, not a {model_name}."
        raise ValueError(msg)
    return meta


def _data_file_of_earlier_save(meta_path: Path) -> str | None:
    """Name of the data file an earlier scmech save recorded in ``meta_path`` (``None``: none, or not scmech's)."""
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return None
    name = meta.get("data_file")
    return name if name in (ADATA, MDATA) else None


def _read_metadata(dir_path, prefix: str | None, model_name: str) -> dict:
    """Read and validate the plain-JSON metadata of a scmech save (never unpickles anything)."""
    path = Path(dir_path)
    meta_path = path / f"{prefix or ''}{METADATA}"
    meta = _parse_metadata(path, meta_path, model_name)
    if "registry" not in meta:
        msg = f"{meta_path} is not an scmech model file (format {meta.get('format')!r})."
        raise ValueError(msg)
    return meta


def _parse_metadata(path: Path, meta_path: Path, model_name: str) -> dict:
    """Parse ``metadata.json`` as plain JSON and refuse a missing, unreadable or foreign file.

    Parameters
    ----------
    path
        The directory of the save.
    meta_path
        Its ``metadata.json``.
    model_name
        The class reading it, for messages.

    Returns
    -------
    The metadata, a dict whose ``format`` is scmech's.

    Raises
    ------
    FileNotFoundError
        When the file is missing.
    ValueError
        For a truncated or non-JSON file, or one that another program wrote.
    """
    if not meta_path.exists():
        msg = f"{meta_path} not found: {path} does not hold a model saved by {model_name}.save()."
        raise FileNotFoundError(msg)
    if not meta_path.is_file():
        msg = f"{meta_path} is not a file: {path} does not hold a model saved by {model_name}.save()."
        raise ValueError(msg)
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        msg = f"{meta_path} is not valid JSON (truncated, too deeply nested or not written by scmech): {e}"
        raise ValueError(msg) from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        msg = f"{meta_path} is not an scmech model file (format {found!r})."
        raise ValueError(msg)
    return meta
