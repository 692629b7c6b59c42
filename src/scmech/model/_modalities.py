"""Which modality of a MuData each argument of ``setup_mudata`` reads, and the view its checks run on."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anndata as ad
import pandas as pd

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

__all__ = ["_NO_MODALITY", "_resolve_modalities", "_validation_view"]

#: arguments of ``setup_mudata`` that name no ``obs`` column or layer, and so belong to no modality
_NO_MODALITY = ("modalities", "control_label", "separator", "unassigned_label", "counts", "perturbation_modality")


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
        if mod is not None and mod not in mdata.mod:
            msg = f"modalities[{arg!r}] = {mod!r} is not a modality of the MuData ({list(mdata.mod.keys())})."
            raise KeyError(msg)
    return modalities, rna_mod


def _validation_view(
    mdata: MuData, rna_mod: str, modalities: dict, setup_args: dict, rna_layer: str | None
) -> AnnData | None:
    """Build an AnnData of the RNA modality's values and every registered ``obs`` column from its own modality.

    ``setup_mudata`` checks it as ``setup_anndata`` checks an AnnData, so that a column taken from another
    modality (size factors, covariates, the batch) is checked as thoroughly as one from the RNA modality. The
    matrices are the RNA modality's own (not copied); the columns are aligned to its cells by name.

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
        if mod is None or keys is None or arg in _NO_MODALITY or arg in ("rna_layer", "gene_embedding_key"):
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
                if set(src.index) != set(rna.obs_names):
                    return None
                col = src[key].reindex(rna.obs_names)
            else:
                col = src[key]
            obs[key] = col.set_axis(obs.index)
    layers = {rna_layer: rna.layers[rna_layer]} if rna_layer and rna_layer in rna.layers else None
    return ad.AnnData(X=rna.X, obs=obs, var=rna.var, layers=layers, varm=dict(rna.varm.items()))
