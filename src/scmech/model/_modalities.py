"""Which modality of a MuData each argument of ``setup_mudata`` reads, and the view its checks run on."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anndata as ad
import pandas as pd

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

__all__ = ["_NO_MODALITY", "_resolve_modalities", "_validation_view", "check_cell_order"]

#: arguments of ``setup_mudata`` that name no ``obs`` column or layer, and so belong to no modality
_NO_MODALITY = ("modalities", "control_label", "separator", "unassigned_label", "counts", "perturbation_modality")
#: arguments of ``setup_mudata`` that name the RNA modality's layer, ``var`` column or ``varm`` key, never ``obs``
_RNA_VAR = ("rna_layer", "gene_embedding_key", "gene_symbols")


def _resolve_modalities(mdata: MuData, modalities: dict[str, str] | None, setup_args: dict) -> tuple[dict, str]:
    """Return the modality of every argument of ``setup_mudata`` and the modality of the RNA counts.

    Parameters
    ----------
    mdata
        The MuData to register.
    modalities
        The user's ``modalities`` (argument name to modality name), or ``None``.
    setup_args
        The arguments of the ``setup_mudata`` call; those naming data default to the RNA modality.

    Returns
    -------
    The completed mapping (a new dictionary) and the name of the RNA modality.

    Raises
    ------
    KeyError
        When the RNA modality, or a modality given for an argument, is not in ``mdata``.
    """
    if modalities is not None and not isinstance(modalities, dict):
        msg = (
            f"modalities={modalities!r} must be a dict from argument name to modality name, e.g. "
            "modalities={'perturbation_key': 'guide'}."
        )
        raise TypeError(msg)
    modalities = dict(modalities or {})
    rna_mod = modalities.get("rna_layer", "rna")
    if rna_mod not in mdata.mod:
        msg = (
            f"MuData has no modality {rna_mod!r} for the RNA counts (modalities: {list(mdata.mod.keys())}); "
            "pass modalities={'rna_layer': '<name>'}."
        )
        raise KeyError(msg)
    for arg in list(setup_args.keys()):
        if arg not in _NO_MODALITY:
            modalities.setdefault(arg, rna_mod)
    unknown = sorted(set(modalities) - set(setup_args) - {"rna_layer"})
    if unknown:
        msg = f"modalities names {unknown}, which are not arguments of setup_mudata (e.g. 'perturbation_key')."
        raise KeyError(msg)
    for arg, mod in modalities.items():
        if mod is None and setup_args.get(arg) is not None:
            msg = (
                f"modalities[{arg!r}] = None (the MuData's global obs) is not supported; name the modality whose obs "
                f"holds {setup_args[arg]!r}, e.g. modalities={{{arg!r}: 'rna'}}."
            )
            raise ValueError(msg)
        if mod is not None and mod not in mdata.mod:
            msg = f"modalities[{arg!r}] = {mod!r} is not a modality of the MuData ({list(mdata.mod.keys())})."
            raise KeyError(msg)
    return modalities, rna_mod


def check_cell_order(mdata: MuData, rna_mod: str, modalities: dict) -> None:
    """Refuse a modality that a registered column comes from and that holds the RNA modality's cells in another order.

    scvi-tools reads a modality's ``obs`` columns by position, so a guide modality stored in another row order
    would give every cell another cell's perturbation, batch or covariates, silently.

    Parameters
    ----------
    mdata
        The MuData to register.
    rna_mod
        The modality of the RNA counts.
    modalities
        The modality of every argument (:func:`_resolve_modalities`).

    Raises
    ------
    ValueError
        When such a modality holds the same cells as the RNA modality in another order.
    """
    rna_names = mdata.mod[rna_mod].obs_names
    for arg, mod in sorted(modalities.items()):
        if mod is None or mod == rna_mod or arg in _NO_MODALITY or arg in _RNA_VAR:
            continue
        names = mdata.mod[mod].obs_names
        if names.equals(rna_names) or len(names) != len(rna_names) or set(names) != set(rna_names):
            continue  # the same order, or other cells (scvi-tools' pairing check explains those)
        msg = (
            f"mdata[{mod!r}] (the modality of {arg}) holds the cells of mdata[{rna_mod!r}] in another order; "
            "scvi-tools reads its obs by position, so each cell would get another cell's labels. Put it in the RNA "
            f"modality's order first: mdata.mod[{mod!r}] = mdata[{mod!r}][mdata[{rna_mod!r}].obs_names].copy(); "
            "mdata.update()."
        )
        raise ValueError(msg)


def _validation_view(
    mdata: MuData, rna_mod: str, modalities: dict, setup_args: dict, rna_layer: str | None
) -> AnnData | None:
    """Build an AnnData of the RNA modality's values and every registered ``obs`` column from its own modality.

    ``setup_mudata`` checks it as ``setup_anndata`` checks an AnnData, so that a column taken from another
    modality (size factors, covariates, the batch) is checked as thoroughly as one from the RNA modality. The
    matrices are the RNA modality's own (not copied); every modality holds the RNA modality's cells in its order
    (:func:`check_cell_order`).

    Parameters
    ----------
    mdata
        The MuData to register.
    rna_mod
        The modality of the RNA counts.
    modalities
        The modality of every argument (:func:`_resolve_modalities`).
    setup_args
        The arguments of the ``setup_mudata`` call.
    rna_layer
        The layer of the RNA counts (``None``: ``X``).

    Returns
    -------
    The view, or ``None`` when a modality holds other cells than the RNA modality (scvi-tools' pairing check
    explains that).

    Raises
    ------
    KeyError
        When a registered column is not in the ``obs`` of its modality.
    TypeError
        When an argument naming ``obs`` columns is neither a string nor a list.
    """
    rna = mdata.mod[rna_mod]
    obs = pd.DataFrame(index=rna.obs_names.copy())
    for arg, mod in modalities.items():
        keys = setup_args.get(arg)
        if mod is None or keys is None or arg in _NO_MODALITY or arg in _RNA_VAR:
            continue
        src = mdata.mod[mod].obs
        if not isinstance(keys, str | list | tuple):
            msg = f"{arg}={keys!r} must name obs column(s) of mdata[{mod!r}] (a string, or a list for covariates)."
            raise TypeError(msg)
        for key in [keys] if isinstance(keys, str) else list(keys):
            if key not in src.columns:
                msg = f"{arg} {key!r} is not a column of mdata[{mod!r}].obs."
                raise KeyError(msg)
            if not src.index.equals(rna.obs_names):
                return None  # other cells (scvi-tools' pairing check explains); another order: _check_cell_order
            obs[key] = src[key].set_axis(obs.index)
    layers = {rna_layer: rna.layers[rna_layer]} if rna_layer and rna_layer in rna.layers else None
    return ad.AnnData(X=rna.X, obs=obs, var=rna.var, layers=layers, varm=dict(rna.varm.items()))
