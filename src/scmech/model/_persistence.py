"""Saving and loading models without executing code from the file.

A saved model is a directory with ``model.pt`` (the module's tensors only, read with
``torch.load(weights_only=True)``) and ``metadata.json`` (registry, init parameters, training history and
other public attributes as plain JSON data). scvi-tools' own format pickles arbitrary objects, so loading an
untrusted file can run code; this format cannot.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd
import torch
from scvi.data import _constants

from ._argument_checks import check_flag
from ._modalities import _resolve_modalities
from ._persistence_files import _build_saved, _check_prefix, _read_weights, _unchanged_on_failure, _weights_file
from ._persistence_metadata import (
    ADATA,
    FORMAT,
    FORMAT_VERSION,
    MDATA,
    METADATA,
    WEIGHTS,
    _check_saved_attributes,
    _data_file_of_earlier_save,
    _decoded,
    _read_metadata,
    _read_model_metadata,
)
from ._serialisation import from_jsonable, persistable, to_jsonable
from ._setup_checks import check_context_columns, check_saved_columns

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

logger = logging.getLogger(__name__)

__all__ = ["SafeSaveLoadMixin", "from_jsonable", "persistable", "to_jsonable", "torch_device", "var_names_of"]


class SafeSaveLoadMixin:
    """``save``/``load`` in a format that loads without unpickling."""

    def save(
        self,
        dir_path: str | os.PathLike,
        prefix: str | None = None,
        overwrite: bool = False,
        save_anndata: bool = False,
        **anndata_write_kwargs,
    ) -> None:
        """Save the model to a directory (tensors in ``model.pt``, plain data in ``metadata.json``).

        Parameters
        ----------
        dir_path
            Directory to write.
        prefix
            Prefix of the file names.
        overwrite
            Replace the model files of an existing directory (and data a scmech save wrote there; other files,
            such as a user's own ``adata.h5ad``, are never removed or replaced). With ``False`` an existing
            directory raises and nothing is written.
        save_anndata
            Also write the registered data (``adata.h5ad`` or ``mdata.h5mu``).
        **anndata_write_kwargs
            Passed to the AnnData/MuData writer.
        """
        path = Path(dir_path)
        overwrite = check_flag(overwrite, "overwrite")
        save_anndata = check_flag(save_anndata, "save_anndata")
        _check_prefix(prefix)
        if path.exists() and not path.is_dir():
            msg = f"{path} is a file, not a directory; save the model to a directory (a new or an existing folder)."
            raise ValueError(msg)
        if path.exists() and not overwrite:
            msg = f"{path} already exists; pass overwrite=True to replace the model saved there."
            raise ValueError(msg)
        path.mkdir(parents=True, exist_ok=True)
        pre = prefix or ""
        attrs = {name: value for name, value in self._get_user_attributes() if name.endswith("_")}
        attrs.pop("registry_", None)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_name": type(self).__name__,
            "scmech_version": _version(),
            "var_names": to_jsonable(var_names_of(self.adata)),
            "registry": to_jsonable(self.adata_manager.registry),
            "attributes": to_jsonable(attrs),
            "cells": _split_cells(self),
        }
        data_name = (MDATA if hasattr(self.adata, "mod") else ADATA) if save_anndata else None
        ours = _data_file_of_earlier_save(path / f"{pre}{METADATA}")
        if data_name is not None and (path / f"{pre}{data_name}").exists() and ours != data_name:
            msg = (
                f"{path / (pre + data_name)} exists and was not written by a scmech save; it is left alone. Save the "
                "model to another directory, or move that file."
            )
            raise FileExistsError(msg)
        meta["data_file"] = data_name
        tmp_data = (
            None
            if data_name is None
            else _write_data_aside(self.adata, path / f".{pre}tmp-{data_name}", anndata_write_kwargs)
        )
        tmp_meta, tmp_w = path / f".{pre}{METADATA}.tmp", path / f".{pre}{WEIGHTS}.tmp"
        try:
            tmp_meta.write_text(json.dumps(meta))
            torch.save(_weights_file(self.module.state_dict(), type(self).__name__, meta["registry"]), tmp_w)
        except OSError:  # a full disk or a read-only folder: the files written so far go, the earlier save stays
            for tmp in (tmp_data, tmp_meta, tmp_w):
                if tmp is not None:
                    tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp_w, path / f"{pre}{WEIGHTS}")
        os.replace(tmp_meta, path / f"{pre}{METADATA}")
        # data that an earlier scmech save wrote must not sit next to these weights; nothing else is removed
        if ours is not None and ours != data_name and (path / f"{pre}{ours}").exists():
            (path / f"{pre}{ours}").unlink()
        if tmp_data is not None:
            os.replace(tmp_data, path / f"{pre}{data_name}")

    @classmethod
    def load_registry(cls, dir_path: str | os.PathLike, prefix: str | None = None) -> dict:
        """Return the registry saved with a model, read from its plain-JSON metadata (nothing is unpickled).

        Parameters
        ----------
        dir_path
            Directory written by :meth:`save`.
        prefix
            Prefix of the file names.
        """
        return from_jsonable(_read_metadata(dir_path, prefix, cls.__name__)["registry"])

    @classmethod
    def view_setup_args(cls, dir_path: str | os.PathLike, prefix: str | None = None) -> None:
        """Print the arguments a saved model's data were set up with (read from its plain-JSON metadata).

        Parameters
        ----------
        dir_path
            Directory written by :meth:`save`.
        prefix
            Prefix of the file names.
        """
        # scvi-tools' AnnDataManager.view_setup_method_args would do this, but it calls rich.pretty without
        # importing it (AttributeError in 1.4.2)
        import rich
        from rich.pretty import pprint

        registry = cls.load_registry(dir_path, prefix)
        method = registry.get("setup_method_name", "setup_anndata")
        rich.print(f"Setup via `{registry.get('model_name', cls.__name__)}.{method}` with arguments:")
        pprint(registry.get("setup_args", {}))

    @classmethod
    def convert_legacy_save(cls, *args, **kwargs) -> None:
        """Not applicable: scmech saves in its own format, and never reads scvi-tools' pickled legacy saves.

        Parameters
        ----------
        *args
            Ignored (scvi-tools' arguments).
        **kwargs
            Ignored.
        """
        msg = (
            f"{cls.__name__} models are saved in scmech's own format (tensors and plain JSON); there is no legacy "
            "scvi-tools save to convert, and scvi-tools' legacy files are pickles that scmech never loads."
        )
        raise NotImplementedError(msg)

    def update_setup_method_args(self, setup_method_args: dict) -> None:
        """Not applicable: the setup arguments of a trained model are fixed.

        scvi-tools' version writes into a registry attribute that does not exist (an ``AttributeError`` in 1.4.2),
        and changing keys such as ``perturbation_key`` or ``control_label`` after training would decouple the
        registry from the tensors, targets and anchors the model learned from.

        Parameters
        ----------
        setup_method_args
            The setup arguments that would be changed (named in the error).
        """
        keys = sorted(setup_method_args) if isinstance(setup_method_args, dict) else setup_method_args
        msg = (
            f"The setup arguments of a trained {type(self).__name__} are fixed (asked to update {keys}): they define "
            "the registered tensors, targets and anchors. Call "
            f"{type(self).__name__}.setup_anndata(adata, ...) with the new arguments and train a new model."
        )
        raise NotImplementedError(msg)

    @classmethod
    def load(
        cls,
        dir_path: str | os.PathLike,
        adata: AnnData | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
        prefix: str | None = None,
    ):
        """Load a model saved with :meth:`save`.

        Parameters
        ----------
        dir_path
            Directory written by :meth:`save`.
        adata
            Data to attach, set up like the training data (same genes in the same order); the data saved
            with the model when ``None``. The training cells are found in it by name (``obs_names``), in any
            order: held-out cells never become training cells, and on other cells predictions start from that
            AnnData's controls.
        accelerator
            Lightning accelerator name.
        device
            Device index or ``"auto"``.
        prefix
            Prefix of the file names.

        Returns
        -------
        The model, trained state restored.

        Raises
        ------
        FileNotFoundError
            When the directory or its files are missing.
        ValueError
            For a truncated or foreign file, another model class, or data with other genes or design.
        """
        path = Path(dir_path)
        _check_prefix(prefix)
        pre = prefix or ""
        meta_path, w_path = path / f"{pre}{METADATA}", path / f"{pre}{WEIGHTS}"
        meta = _read_model_metadata(path, meta_path, w_path, cls.__name__)
        dev = torch_device(accelerator, device)
        state = _read_weights(w_path, dev)
        registry, attrs = (_decoded(meta, key, meta_path) for key in ("registry", "attributes"))
        _check_saved_attributes(cls, attrs, meta_path)
        init = attrs.pop("init_params_", None) if isinstance(attrs, dict) else None
        if not (isinstance(registry, dict) and isinstance(registry.get("setup_args"), dict)) or init is None:
            msg = (
                f"{meta_path} holds no {'setup arguments' if init is not None else 'init parameters'}; it was not "
                f"written completely by {cls.__name__}.save(). Save the model again."
            )
            raise ValueError(msg)
        if adata is None:
            adata = _read_saved_data(path, pre)
        _check_same_genes(_decoded(meta, "var_names", meta_path), adata)
        with _unchanged_on_failure(adata):
            cls._register_like_saved(adata, registry)
            model = _build_saved(cls, adata, init, meta_path)
            try:
                model.module.load_state_dict(state, strict=True)
            except RuntimeError as e:
                msg = f"The weights in {w_path} do not fit this model's architecture: {e}"
                raise ValueError(msg) from e
            _check_weight_values(model.module, w_path)
        for name, value in attrs.items():
            setattr(model, name, value)
        _locate_split_cells(model, meta["cells"])
        model.module.eval()
        model.to_device(dev)
        logger.info("Loaded %s from %s", cls.__name__, path)
        return model

    @classmethod
    def _register_like_saved(cls, adata: AnnData, registry: dict) -> None:
        """Set ``adata`` up with the saved registry (same arguments, categories and targets as in training).

        Parameters
        ----------
        adata
            The data the loaded model is attached to.
        registry
            The registry saved with the model.

        Raises
        ------
        ValueError
            When ``adata`` holds a batch or covariate category the model was not trained on.
        """
        setup = dict(registry["setup_args"])
        method = registry.get("setup_method_name", "setup_anndata")
        if method == "setup_anndata":
            check_saved_columns(adata, setup)
        elif hasattr(adata, "mod"):
            modalities, _ = _resolve_modalities(adata, setup.get("modalities"), setup)
            for arg in ("batch_key", "media_key"):  # each where setup_mudata reads it: its modality's obs
                if modalities.get(arg) is not None:
                    check_context_columns(adata.mod[modalities[arg]].obs, setup, (arg,))
        try:
            getattr(cls, method)(adata, source_registry=registry, **setup)
        except ValueError as e:
            if "not found in source registry" not in str(e):
                raise
            msg = (
                f"adata holds a category the saved model was not trained on ({e}). Its batch capture (or covariate "
                "effect) was never learned; relabel it to a training category whose capture you want to assume, or "
                "train a model on data that contain it."
            )
            raise ValueError(msg) from e


SPLIT_ATTRIBUTES = ("train_indices_", "validation_indices_", "test_indices_")


def _cell_hashes(adata) -> np.ndarray:
    """64-bit hashes of the cell names (``pandas.util.hash_array``: deterministic across runs and machines)."""
    return pd.util.hash_array(np.asarray(adata.obs_names, dtype=object))


def _split_cells(model) -> dict[str, str]:
    """Return the cells of the split by name (hashed, base64), so that a load can find them again.

    The split attributes are row positions; on an AnnData with the same cells in another order, or a subset,
    positions would pick other cells, and held-out control cells could start predictions.
    """
    hashes = _cell_hashes(model.adata)
    out = {}
    for name in SPLIT_ATTRIBUTES:
        idx = getattr(model, name, None)
        if idx is not None:
            out[name] = base64.b64encode(hashes[np.asarray(idx, dtype=np.int64)].astype("<u8").tobytes()).decode()
    return out


def _locate_split_cells(model, cells: dict[str, str]) -> None:
    """Set the split attributes to the positions of the saved cells in the attached AnnData (absent ones drop out)."""
    if not cells:
        return
    if not isinstance(cells, dict) or not all(isinstance(v, str) for v in cells.values()):
        msg = (
            f"The saved split cells are damaged (a {type(cells).__name__}, not a dict of encoded cells); the model's "
            "metadata.json was altered. Save the model again."
        )
        raise ValueError(msg)
    hashes = _cell_hashes(model.adata)
    for name, encoded in cells.items():
        if name not in SPLIT_ATTRIBUTES:
            continue
        try:
            saved = np.frombuffer(base64.b64decode(encoded, validate=True), dtype="<u8")
        except (ValueError, TypeError) as e:  # binascii.Error is a ValueError
            msg = f"The saved {name} are damaged ({e}); the model's metadata.json was altered. Save the model again."
            raise ValueError(msg) from e
        setattr(model, name, np.flatnonzero(np.isin(hashes, saved)))


def var_names_of(adata) -> np.ndarray | dict[str, np.ndarray]:
    """Gene names of an AnnData (an array) or of each modality of a MuData (a dict), as saved with a model.

    scvi-tools has the same helper, but only as a private function (``scvi.model.base._save_load``).
    """
    if hasattr(adata, "mod"):
        return {k: adata.mod[k].var_names.astype(str).to_numpy() for k in adata.mod}
    return adata.var_names.astype(str).to_numpy()


def torch_device(accelerator: str = "auto", device: int | str = "auto") -> torch.device:
    """Return the torch device for scvi-tools' ``accelerator``/``device`` arguments of ``load``.

    Parameters
    ----------
    accelerator
        ``"auto"`` (a GPU when one is visible), ``"cpu"``, ``"gpu"``/``"cuda"`` or ``"mps"``.
    device
        ``"auto"`` or a device index.
    """
    acc = str(accelerator).lower()
    if acc == "auto":
        acc = "cuda" if torch.cuda.is_available() else "cpu"
    if acc == "gpu":
        acc = "cuda"
    if acc not in ("cpu", "cuda", "mps"):
        msg = f"accelerator={accelerator!r} is not one of 'auto', 'cpu', 'gpu', 'cuda', 'mps'."
        raise ValueError(msg)
    if acc == "cpu":
        return torch.device("cpu")
    if acc == "cuda" and not torch.cuda.is_available():
        msg = "accelerator='gpu' was asked for, but torch sees no CUDA device; use accelerator='cpu'."
        raise ValueError(msg)
    if acc == "mps" and not torch.backends.mps.is_available():
        msg = f"accelerator={accelerator!r} was asked for, but torch sees no MPS device; use accelerator='cpu'."
        raise ValueError(msg)
    if device in ("auto", None):
        return torch.device(acc)
    if isinstance(device, bool) or int(device) != device or int(device) < 0:
        msg = f"device={device!r} must be 'auto' or a device index (0, 1, ...)."
        raise ValueError(msg)
    return torch.device(acc, int(device))


def _read_saved_data(path: Path, pre: str) -> AnnData | MuData:
    """Read the data saved beside a model (``adata.h5ad``, else ``mdata.h5mu``).

    The file carries the scvi-tools identity (``uns["_scvi_uuid"]``) of the data it was written from. It is
    dropped, so that setting up the read copy gives it an identity of its own: otherwise the copy would take
    the in-memory original's place in scvi-tools' registry, and a new model on the original would raise
    "Did you make a copy?".

    Parameters
    ----------
    path
        The directory of the save.
    pre
        Prefix of the file names.

    Returns
    -------
    The saved AnnData or MuData.

    Raises
    ------
    ValueError
        When no data were saved.
    """
    for name, reader in ((ADATA, ad.read_h5ad), (MDATA, None)):
        p = path / f"{pre}{name}"
        if p.exists():
            if reader is None:
                import mudata

                reader = mudata.read_h5mu
            try:
                data = reader(p)
            except Exception as e:
                msg = f"Cannot read the data saved in {p} (truncated or not an h5ad/h5mu file): {e}. Pass adata=."
                raise ValueError(msg) from e
            for key in (_constants._SCVI_UUID_KEY, _constants._MANAGER_UUID_KEY):
                data.uns.pop(key, None)
            return data
    msg = f"No data saved in {path}; pass adata= (set up like the training data)."
    raise ValueError(msg)


def _check_same_genes(saved_var: np.ndarray | dict[str, np.ndarray], adata: AnnData | MuData) -> None:
    """Refuse data whose genes (names or order, per modality of a MuData) differ from the saved ones.

    Parameters
    ----------
    saved_var
        The gene names saved with the model (:func:`var_names_of` of the training data).
    adata
        The data the loaded model is attached to.

    Raises
    ------
    ValueError
        When the genes differ.
    """
    new_var = var_names_of(adata)
    if isinstance(saved_var, dict) != isinstance(new_var, dict):
        saved_kind = f"a MuData (modalities {sorted(saved_var)})" if isinstance(saved_var, dict) else "an AnnData"
        msg = (
            f"The model was trained on {saved_kind}, and adata is a {type(adata).__name__}; pass data of the kind "
            "it was trained on (set up like the training data)."
        )
        raise ValueError(msg)
    if isinstance(saved_var, dict):
        same = isinstance(new_var, dict) and all(
            np.array_equal(np.asarray(saved_var[k]), np.asarray(new_var.get(k))) for k in saved_var
        )
    else:
        same = np.array_equal(np.asarray(saved_var, dtype=object), np.asarray(new_var, dtype=object))
    if not same:
        msg = (
            "The genes of adata differ from those the model was trained on (names or order). "
            "Subset and reorder adata to the model's genes: adata[:, model_var_names]."
        )
        raise ValueError(msg)


def _write_data_aside(adata: AnnData | MuData, tmp: Path, write_kwargs: dict) -> Path:
    """Write the model's data to ``tmp`` before any model file is replaced, so that a failed write changes nothing.

    Raises
    ------
    ValueError
        When the writer refuses ``anndata_write_kwargs`` (or fails otherwise); the partial file is removed.
    """
    try:
        adata.write(tmp, **write_kwargs)
    except Exception as e:
        tmp.unlink(missing_ok=True)
        msg = (
            f"Cannot write the data with anndata_write_kwargs={write_kwargs!r} ({type(e).__name__}: {e}); nothing "
            "was saved. Pass options the AnnData/MuData writer takes (e.g. compression='gzip'), or none."
        )
        raise ValueError(msg) from e
    return tmp


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("scmech")
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


def _check_weight_values(module, w_path: Path) -> None:
    """Refuse a time unit that is not positive, which no training writes (NaN weights are refused when read).

    Such a file (altered, or damaged) loaded, and ``predict`` then failed asking for 3.4e38 integration steps.
    """
    unit = getattr(module, "time_unit", None)
    if unit is not None and not float(unit) > 0:
        msg = (
            f"The weights in {w_path} hold a time unit of {float(unit):g}, which no training writes (it is positive): "
            "the file is damaged or was altered. Save the model again."
        )
        raise ValueError(msg)
