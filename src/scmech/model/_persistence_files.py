"""Files of a saved model: the file-name prefix, the weights (read without unpickling) and the saved init parameters.

Helpers of :mod:`scmech.model._persistence`.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["_build_saved", "_check_prefix", "_read_weights", "_unchanged_on_failure", "_weights_file"]


def _check_prefix(prefix) -> None:
    """Refuse a file-name prefix that is not a plain string (a path separator would write outside the directory)."""
    if prefix is None:
        return
    if not isinstance(prefix, str):
        msg = f"prefix={prefix!r} must be a string (the start of the file names), or None."
        raise TypeError(msg)
    if any(sep in prefix for sep in ("/", "\\", os.sep)):
        msg = (
            f"prefix={prefix!r} holds a path separator: the files would be written outside dir_path. Put the "
            "directory in dir_path and use a plain prefix such as 'run1_'."
        )
        raise ValueError(msg)


def _build_saved(cls, adata, init: dict, meta_path: Path):
    """Build the model the saved init parameters describe; parameters that do not build one raise ``ValueError``."""
    try:
        non_kwargs = dict(init["non_kwargs"])
        kwargs = {k: v for group in init["kwargs"].values() for k, v in group.items()}
        non_kwargs.pop("adata", None)
        return cls(adata, **non_kwargs, **kwargs)
    except (TypeError, KeyError, AttributeError, ValueError) as e:
        msg = f"The init parameters in {meta_path} do not build a {cls.__name__} ({e}); save the model again."
        raise ValueError(msg) from e


def _weights_file(state: dict[str, torch.Tensor], model_name: str, registry: dict) -> dict:
    """Return what ``model.pt`` holds: the tensors, and the model's name and setup in scvi-tools' layout.

    Only tensors, strings, numbers, lists and dicts, so :func:`torch.load` reads it with ``weights_only=True``. The
    layout is scvi-tools' (``model_state_dict``, ``attr_dict["registry_"]``), so that scvi-tools' own loaders given
    a scmech save answer with their error for a model of another class (``SCVI.load``) or read its registry
    (``load_registry``, ``view_setup_args``), instead of failing on a file they cannot parse.

    Parameters
    ----------
    state
        The module's ``state_dict``.
    model_name
        The model class.
    registry
        The registry as plain JSON data (as ``metadata.json`` holds it).
    """
    summary = {
        "model_name": model_name,
        "scvi_version": registry.get("scvi_version", ""),
        "setup_method_name": "setup_anndata",
        "setup_args": registry.get("setup_args", {}),
    }
    return {"model_state_dict": state, "attr_dict": {"registry_": summary}}


def _read_weights(w_path: Path, dev: torch.device) -> dict[str, torch.Tensor]:
    """Read the saved tensors with ``torch.load(weights_only=True)``; anything but tensors is refused unread.

    Parameters
    ----------
    w_path
        The ``model.pt`` of a save.
    dev
        Device to map the tensors to.

    Returns
    -------
    The module's state dict.

    Raises
    ------
    ValueError
        For a truncated file, or one that holds Python objects besides tensors.
    """
    try:
        state = torch.load(w_path, map_location=dev, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if found is None:
            msg = f"Cannot read the weights in {w_path} (truncated or not a weights file): {e}"
            raise ValueError(msg) from e
        msg = (
            f"Cannot read the weights in {w_path}: besides tensors it holds the Python object "
            f"{found.group(1)!r}, which could run code when unpickled, so it is refused; scmech never writes such "
            "files. Load only models saved by scmech from sources you trust."
        )
        raise ValueError(msg) from e
    except Exception as e:
        msg = f"Cannot read the weights in {w_path} (truncated or not a weights file): {e}"
        raise ValueError(msg) from e
    if isinstance(state, dict) and isinstance(state.get("model_state_dict"), dict):
        state = state["model_state_dict"]  # the layout save() writes (a bare dict of tensors is read as well)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        msg = f"{w_path} does not hold a model's weights (a dict of tensors, as save() writes), but a {type(state)}."
        raise ValueError(msg)
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        msg = (
            f"The weights in {w_path} hold NaN or infinite values (in {bad[:3]}): the saved model diverged or the "
            "file was altered, and every result would be NaN or wrong. Train the model again."
        )
        raise ValueError(msg)
    return state


@contextlib.contextmanager
def _unchanged_on_failure(adata):
    """Leave ``adata`` as it was when the block fails: keys that registering it added are removed again.

    Loading registers the data first (``obs``/``obsm``/``uns`` keys of scvi-tools' registry) and may still fail
    after that, e.g. on a missing ``obs`` column or weights of another architecture; the user's AnnData must not
    keep half a registration. MuData saves are registered per modality and are left as they are.

    Parameters
    ----------
    adata
        The data the model is loaded onto.
    """
    if not hasattr(adata, "obsm") or hasattr(adata, "mod"):
        yield
        return
    obs, obsm, uns = set(adata.obs.columns), set(adata.obsm.keys()), dict(adata.uns)
    try:
        yield
    except BaseException:
        for c in set(adata.obs.columns) - obs:
            del adata.obs[c]
        for k in set(adata.obsm.keys()) - obsm:
            del adata.obsm[k]
        for k in set(adata.uns.keys()) - set(uns):
            del adata.uns[k]
        for k, v in uns.items():
            if adata.uns.get(k) is not v:
                adata.uns[k] = v
        raise
