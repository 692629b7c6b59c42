"""Reading the guide counts (MuData modality, guide AnnData or ``obsm``), matched to the cells to annotate."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scmech.data._checks import is_backed_matrix, rows_in_memory

if TYPE_CHECKING:
    from collections.abc import Sequence

    from mudata import MuData


def _guide_source(
    data: MuData | ad.AnnData,
    rna: ad.AnnData | None,
    guide_mod: str,
    rna_mod: str,
    layer: str | None,
    obsm_key: str | None,
    guide_names: Sequence[str] | str | None,
) -> tuple[sp.csr_matrix, list[str], pd.DataFrame | None, ad.AnnData, str]:
    """Guide counts (cells of the output AnnData x guides), guide names, guide ``var``, output AnnData."""
    if hasattr(data, "mod"):
        mods = list(data.mod.keys())
        if guide_mod not in data.mod:
            msg = f"guide_mod={guide_mod!r} is not a modality of the MuData (modalities: {mods}); pass guide_mod=..."
            raise KeyError(msg)
        if rna_mod not in data.mod:
            msg = f"rna_mod={rna_mod!r} is not a modality of the MuData (modalities: {mods}); pass rna_mod=..."
            raise KeyError(msg)
        if obsm_key is not None or rna is not None:
            msg = "With a MuData, the guide counts come from mdata[guide_mod]; leave obsm_key and rna as None."
            raise ValueError(msg)
        gdata, out = data.mod[guide_mod], data.mod[rna_mod]
        x = _layer(gdata, layer, f"mdata[{guide_mod!r}]")
        source = f"mdata[{guide_mod!r}]" + (f".layers[{layer!r}]" if layer else ".X")
        names, var = [str(v) for v in gdata.var_names], gdata.var
        if gdata is not out:
            _check_unique_cells(gdata.obs_names, f"mdata[{guide_mod!r}]")
            _check_unique_cells(out.obs_names, f"mdata[{rna_mod!r}]")
        x = _align(x, gdata.obs_names, out.obs_names, source)
        return x, names, var, out, source
    if not isinstance(data, ad.AnnData):
        msg = f"data must be a MuData or an AnnData, got {type(data).__name__}."
        raise TypeError(msg)
    if obsm_key is not None:
        if layer is not None:
            msg = f"Pass either obsm_key={obsm_key!r} or layer={layer!r} for the guide counts, not both."
            raise ValueError(msg)
        if obsm_key not in data.obsm:
            msg = (
                f"obsm_key={obsm_key!r} is not in adata.obsm (keys: {list(data.obsm.keys())}); pass the key of the "
                "guide counts."
            )
            raise KeyError(msg)
        if rna is not None:
            msg = "With obsm_key the assignment is written to the same AnnData; leave rna as None."
            raise ValueError(msg)
        raw = data.obsm[obsm_key]
        source = f"adata.obsm[{obsm_key!r}]"
        names = _obsm_names(data, raw, guide_names, obsm_key)
        x = sp.csr_matrix(_numeric_counts(raw, source))
        return x, names, None, data, source
    x = _layer(data, layer, "adata")
    source = "adata" + (f".layers[{layer!r}]" if layer else ".X")
    names, var = [str(v) for v in data.var_names], data.var
    out = data
    if rna is not None:
        if not isinstance(rna, ad.AnnData):
            msg = f"rna must be an AnnData (the RNA data to annotate), got {type(rna).__name__}."
            raise TypeError(msg)
        if rna is not data:
            _check_unique_cells(data.obs_names, "data")
            _check_unique_cells(rna.obs_names, "rna")
        x = _align(x, data.obs_names, rna.obs_names, source)
        out = rna
    return x, names, var, out, source


def _layer(adata: ad.AnnData, layer: str | None, what: str):
    if layer is None:
        if adata.X is None:
            msg = f"{what}.X is empty (None); pass layer=... with the guide counts."
            raise ValueError(msg)
        return _numeric_counts(adata.X, f"{what}.X")
    if layer not in adata.layers:
        msg = f"layer={layer!r} is not a layer of {what} (layers: {list(adata.layers.keys())}); pass layer=None for X."
        raise KeyError(msg)
    return _numeric_counts(adata.layers[layer], f"{what}.layers[{layer!r}]")


def _numeric_counts(values, source: str):
    """Return guide counts as a numeric matrix (a DataFrame as a float array, missing values as NaN).

    Parameters
    ----------
    values
        The guide counts as stored: a dense or sparse matrix, or a DataFrame (``obsm``).
    source
        Where they come from (for messages).

    Returns
    -------
    The counts, dense or sparse (not copied unless converted).

    Raises
    ------
    TypeError
        For boolean guide calls (not UMI counts) and non-numeric values.
    """
    if is_backed_matrix(values):
        # the guide counts of a backed AnnData (cells x guides, small): read them, as anndata's on-disk sparse
        # datasets are not scipy.sparse matrices
        values = rows_in_memory(values)
    if isinstance(values, pd.DataFrame):
        if any(pd.api.types.is_bool_dtype(d) for d in values.dtypes):
            values = values.to_numpy(dtype=bool)
        else:
            try:
                values = values.to_numpy(dtype=np.float64, na_value=np.nan)
            except (TypeError, ValueError) as e:
                msg = f"{source} holds non-numeric guide counts ({e}); pass UMI counts (numbers)."
                raise TypeError(msg) from e
    dtype = getattr(values, "dtype", None)
    if dtype is not None and np.issubdtype(dtype, np.bool_):
        msg = (
            f"{source} holds booleans (guide calls), not UMI counts, so no guide would reach min_umis. Assign from "
            "the UMI counts, or pass the calls as counts with min_umis=1 (e.g. .astype(int))."
        )
        raise TypeError(msg)
    if dtype is not None and not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        msg = f"{source} has dtype {dtype}, not numeric guide UMI counts; convert it to integers or floats."
        raise TypeError(msg)
    return values


def _check_unique_cells(cells: pd.Index, what: str) -> None:
    """Refuse duplicated ``obs_names`` where cells are matched by name (each duplicate would get one cell's guide)."""
    if cells.is_unique:
        return
    dup = cells[cells.duplicated()].unique().tolist()
    msg = (
        f"{what}.obs_names has {int(cells.duplicated().sum())} duplicated names (e.g. {dup[:5]}); the guide counts "
        "are matched to the RNA cells by obs_names, so duplicated cells would all get one cell's guide. Make the "
        f"names unique first ({what}.obs_names_make_unique(), on the guide and the RNA data alike so that they still "
        "match) or drop the duplicated cells."
    )
    raise ValueError(msg)


def _align(x, guide_cells: pd.Index, out_cells: pd.Index, source: str) -> sp.csr_matrix:
    """Rows of ``x`` (guide cells) in the order of ``out_cells``; cells without guide data get zero counts."""
    x = sp.csr_matrix(x, dtype=np.float64)
    if guide_cells.equals(out_cells):
        return x
    pos = pd.Index(guide_cells).get_indexer(out_cells)
    if (pos < 0).all():
        msg = (
            f"The cells of {source} share no obs_names with the RNA data; the two must name cells the same way "
            "(e.g. the same barcodes)."
        )
        raise ValueError(msg)
    rows = np.where(pos >= 0, pos, 0)
    out = x[rows]
    if (pos < 0).any():
        keep = sp.diags((pos >= 0).astype(x.dtype))
        out = sp.csr_matrix(keep @ out)
        out.eliminate_zeros()
    return out


def _obsm_names(adata: ad.AnnData, raw, guide_names, obsm_key: str) -> list[str]:
    n = raw.shape[1]
    if isinstance(guide_names, str):
        if guide_names not in adata.uns:
            msg = f"guide_names={guide_names!r} is not a key of adata.uns; pass the guide names as a list or a uns key."
            raise KeyError(msg)
        guide_names = adata.uns[guide_names]
    if guide_names is None:
        if isinstance(raw, pd.DataFrame):
            guide_names = raw.columns
        else:
            msg = (
                f"adata.obsm[{obsm_key!r}] is an array without guide names; pass guide_names=[...] (one per column) "
                "or the name of a uns entry that holds them."
            )
            raise ValueError(msg)
    names = [str(g) for g in np.asarray(guide_names).ravel()]
    if len(names) != n:
        msg = f"guide_names has {len(names)} names for the {n} columns of adata.obsm[{obsm_key!r}]."
        raise ValueError(msg)
    return names


def _check_guide_counts(
    x: sp.csr_matrix, names: list[str], out: ad.AnnData, source: str, inplace: bool
) -> sp.csr_matrix:
    """Refuse a view to annotate, no guides, duplicated guide names and values that are not UMI counts.

    Parameters
    ----------
    x
        Guide counts (cells x guides).
    names
        Guide names.
    out
        The AnnData to annotate.
    source
        Where the counts come from (for messages).
    inplace
        Whether ``out`` is to be written.

    Returns
    -------
    The counts as a float64 CSR matrix without duplicated entries.

    Raises
    ------
    ValueError
        For any of the problems above.
    """
    if inplace and out.is_view:
        msg = "The AnnData to annotate is a view; call .copy() on it first (or pass inplace=False)."
        raise ValueError(msg)
    if x.shape[1] == 0:
        msg = f"{source} has no guides (0 columns)."
        raise ValueError(msg)
    if len(set(names)) != len(names):
        dup = pd.Index(names)[pd.Index(names).duplicated()].unique().tolist()
        msg = f"Guide names in {source} are not unique: {dup[:5]}; make them unique first."
        raise ValueError(msg)
    # a copy: csr_matrix can share the user's arrays, and summing duplicates edits them in place
    x = sp.csr_matrix(x, dtype=np.float64, copy=True)
    x.sum_duplicates()
    x.eliminate_zeros()  # stored zeros are not guides with a UMI
    data_ = x.data
    if data_.size and (not np.isfinite(data_).all() or data_.min() < 0 or not np.array_equal(data_, np.round(data_))):
        msg = f"{source} must hold guide UMI counts (non-negative integers); pass the layer with raw guide counts."
        raise ValueError(msg)
    return x
