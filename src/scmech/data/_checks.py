"""Input checks shared by models and tools: each failure names the key, the value and the fix."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["check_adata", "check_expression"]


def _values(x) -> np.ndarray:
    if sp.issparse(x):
        return np.asarray(x.data)
    if hasattr(x, "compute") and not isinstance(x, np.ndarray):  # dask
        msg = "Lazy (dask) matrices are checked chunk by chunk; call check_expression on each chunk."
        raise TypeError(msg)
    return np.asarray(x)


def check_expression(x, where: str, *, counts: bool = True, max_check: int | None = 50_000_000) -> None:
    """Check an expression matrix: finite values, and non-negative integers when ``counts``.

    Parameters
    ----------
    x
        Dense or sparse matrix (cells x genes), or an h5py-backed sparse dataset.
    where
        Where the matrix lives (e.g. ``"adata.X"`` or ``"adata.layers['counts']"``), for messages.
    counts
        Require non-negative integers.
    max_check
        Check at most this many stored values (the first ones) to bound the cost on huge data.
    """
    if not (sp.issparse(x) or isinstance(x, np.ndarray)):
        try:
            x = x[: min(x.shape[0], 10_000)]
            x = x if (sp.issparse(x) or isinstance(x, np.ndarray)) else np.asarray(x)
        except Exception as e:
            msg = f"Cannot read {where} of type {type(x).__name__} to check it: {e}"
            raise TypeError(msg) from e
    vals = _values(x).ravel()
    if max_check is not None and vals.size > max_check:
        vals = vals[:max_check]
    if not np.issubdtype(vals.dtype, np.number):
        msg = f"{where} has non-numeric dtype {vals.dtype}; convert it to float or integer counts."
        raise TypeError(msg)
    if np.issubdtype(vals.dtype, np.floating):
        bad = ~np.isfinite(vals)
        if bad.any():
            msg = f"{where} has {int(bad.sum())} NaN or infinite values; remove or impute them before registering."
            raise ValueError(msg)
    if not counts:
        return
    if (vals < 0).any():
        msg = (
            f"{where} has {int((vals < 0).sum())} negative values (min {vals.min():g}); raw counts are "
            "non-negative. Register the raw counts layer (layer=...), or declare non-count data with "
            "gene_likelihood='normal' and counts=False."
        )
        raise ValueError(msg)
    if np.issubdtype(vals.dtype, np.floating):
        frac = np.abs(vals - np.round(vals)) > 1e-6
        if frac.any():
            msg = (
                f"{where} holds non-integer values (e.g. {vals[frac][0]:g}): it looks normalised or log-transformed. "
                "Register the raw counts (layer='counts'), or declare log-normalised data with "
                "gene_likelihood='normal' (setup_anndata(..., counts=False))."
            )
            raise ValueError(msg)


def check_adata(adata: AnnData, *, allow_view: bool = False) -> None:
    """Check an AnnData before registration: not a view, unique names, no empty cells or genes."""
    if adata.is_view and not allow_view:
        msg = (
            "adata is a view of another AnnData; registering would write into a copy and lose the link. "
            "Call adata = adata.copy() first."
        )
        raise ValueError(msg)
    for axis, names in (("obs_names", adata.obs_names), ("var_names", adata.var_names)):
        if not names.is_unique:
            dup = names[names.duplicated()].unique().tolist()[:5]
            fix = "adata.obs_names_make_unique()" if axis == "obs_names" else "adata.var_names_make_unique()"
            msg = f"adata.{axis} has {int(names.duplicated().sum())} duplicates (e.g. {dup}); call {fix}."
            raise ValueError(msg)
    if adata.n_obs == 0 or adata.n_vars == 0:
        msg = f"adata has shape {adata.shape}; it needs cells and genes."
        raise ValueError(msg)


def check_empty_cells_genes(x, where: str, *, counts: bool = True) -> tuple[int, int]:
    """Raise for cells without counts; return the number of all-zero genes (a warning for the caller).

    Returns
    -------
    ``(n_zero_cells, n_zero_genes)``; ``n_zero_cells`` is always 0 (else this raises).
    """
    if not counts:
        return 0, 0
    cell_sums = np.asarray(x.sum(axis=1)).ravel()
    zero_cells = int((cell_sums <= 0).sum())
    if zero_cells:
        msg = (
            f"{where} has {zero_cells} cells without any counts; they carry no information and have no library "
            "size. Remove them first, e.g. sc.pp.filter_cells(adata, min_counts=1)."
        )
        raise ValueError(msg)
    gene_sums = np.asarray(x.sum(axis=0)).ravel()
    return 0, int((gene_sums <= 0).sum())
