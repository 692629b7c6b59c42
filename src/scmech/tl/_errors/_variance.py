r"""Variance terms of the control cells: cell, batch, measurement and biological variance, per gene.

On the pseudobulk scale :math:`\bar y=\log(1+10^4\bar\rho)`, from the control groups' statistics:
:math:`\sigma^2_{\mathrm{cell}}` from within-batch half splits, :math:`\sigma^2_{\mathrm{batch}}` by the method
of moments over batches, :math:`\sigma^2_{\mathrm{meas}}` as the Poisson (or negative-binomial) sampling
variance by the delta method, and :math:`\sigma^2_{\mathrm{bio}}` as the rest. The formulas are in the
docstring of :func:`~scmech.tl._errors.error_decomposition`; :func:`estimate_variance` returns the terms alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from scmech.tl._seeds import check_seed

from ._inputs import _check_counts_args, _dispersion
from ._setup import _setup
from ._stats import _stats

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

    from ._data import _Data, _Layout
    from ._stats import _Stats

#: genes enter the scalar variance summaries when their control mean is at least this (counts per 10^4),
#: the same rule as the simulator's ``var_mean_threshold``
VAR_MEAN_THRESHOLD = 1.0


def _weighted(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean over rows (axis 0) with positive weight and finite values; NaN when there is none."""
    w = np.where(np.isfinite(values).all(axis=1), weights, 0.0)
    if w.sum() <= 0:
        return np.full(values.shape[1], np.nan)
    return (w @ np.where(w[:, None] > 0, values, 0.0)) / w.sum()


def _batch_variance(
    mean: np.ndarray, cv: np.ndarray, n: np.ndarray, min_cells: int, data: _Data
) -> tuple[np.ndarray, np.ndarray]:
    r"""Method-of-moments :math:`\sigma^2_{\mathrm{batch}}` over batches with ``>= min_cells`` controls.

    Parameters
    ----------
    mean, cv, n
        Control mean, split variance (batches x genes) and cells per batch.
    min_cells
        Batches with fewer controls do not enter.
    data
        The normalised cells (for the pseudobulk transform).

    Returns
    -------
    Per-gene :math:`\sigma^2_{\mathrm{batch}}` (NaN with fewer than two such batches) and the batches used.
    """
    use = np.flatnonzero((n >= max(2, min_cells)) & np.isfinite(cv).all(axis=1))
    if use.size >= 2:
        y = data.f(mean[use])
        sampling = (cv[use] / n[use, None]).mean(axis=0)
        batch = np.maximum(y.var(axis=0, ddof=1) - sampling, 0.0)
    else:
        batch = np.full(mean.shape[1], np.nan)
    return batch, use


def _measurement_variance(
    st: _Stats, lay: _Layout, data: _Data, dispersion: np.ndarray | None, mean: np.ndarray, n: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    r"""Per-gene :math:`\sigma^2_{\mathrm{meas}}` and :math:`\sigma^2_{\mathrm{bio}}` (NaN without counts).

    Measurement: Poisson (+ NB) sampling variance of :math:`z` at the cell's library size, by the delta
    method; biological: the delta-method total per-cell variance minus it.
    """
    if not (data.counts and st.mean_l is not None and st.mean_2 is not None):
        G = st.mean.shape[1]
        return np.full(G, np.nan), np.full(G, np.nan)
    ml = lay.grid(st.mean_l)[0]
    m2 = lay.grid(st.mean_2)[0]
    tech = ml.copy()
    if dispersion is not None:
        tech = tech + (m2 - ml) / (dispersion[None, :] + 1.0)
    meas_b = tech / (1.0 + mean) ** 2
    meas = _weighted(meas_b, np.where(n >= 1, n, 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        total_b = (m2 - mean**2) * (n / np.maximum(n - 1, 1))[:, None] / (1.0 + mean) ** 2
    cell_delta = _weighted(total_b, np.where(n >= 2, n, 0.0))
    bio = np.maximum(cell_delta - meas, 0.0)
    return meas, bio


def _variance_terms(
    st: _Stats, lay: _Layout, data: _Data, dispersion: np.ndarray | None
) -> dict[str, np.ndarray | list[int]]:
    r"""Per-gene variance terms from the control groups (row 0 of the layout).

    Returns
    -------
    Dict with per-gene ``batch``, ``cell``, ``bio``, ``meas``, ``mean`` (the control mean) and
    ``batches_used`` (the batches that entered :math:`\sigma^2_{\mathrm{batch}}`).
    """
    n = lay.grid(st.n)[0].astype(float)  # control cells per batch
    mean = lay.grid(st.mean)[0]
    cv = lay.grid(st.cell_var)[0]
    # sigma2_cell: per-batch split estimates pooled with weights n_b
    cell = _weighted(cv, np.where(n >= 2, n, 0.0))
    batch, use = _batch_variance(mean, cv, n, lay.min_cells, data)
    meas, bio = _measurement_variance(st, lay, data, dispersion, mean, n)
    ctrl_mean = _weighted(mean, n)
    return {"batch": batch, "cell": cell, "bio": bio, "meas": meas, "mean": ctrl_mean, "batches_used": list(use)}


def _variance_summary(var: dict[str, Any], expressed: np.ndarray) -> np.ndarray:
    """Means of ``batch``, ``cell``, ``bio``, ``meas`` over the expressed genes (NaN when there is none)."""
    if not expressed.any():
        return np.full(4, np.nan)
    return np.array([np.mean(var[k][expressed]) for k in ("batch", "cell", "bio", "meas")])


def estimate_variance(
    adata: AnnData,
    *,
    perturbation_key: str = "perturbation",
    control_label: str | Sequence[str] = "NT",
    separator: str = "+",
    unassigned_label: str | Sequence[str] | None = "unassigned",
    batch_key: str | None,
    layer: str | None = None,
    counts: bool = True,
    dispersion: float | np.ndarray | pd.Series | None = None,
    n_splits: int = 20,
    min_cells: int = 2,
    random_state: int = 0,
) -> pd.DataFrame:
    r"""Per-gene variance terms of a screen's control cells (the estimators of :func:`error_decomposition`).

    Parameters
    ----------
    adata
        Pilot or screen with counts (not modified).
    perturbation_key, control_label, separator, unassigned_label, batch_key, layer, counts
        As in :func:`error_decomposition`.
    dispersion, n_splits, min_cells, random_state
        As in :func:`error_decomposition`.

    Returns
    -------
    DataFrame (genes x ``batch``, ``cell``, ``bio``, ``meas``, ``mean``) on the pseudobulk scale; ``mean`` is
    the control mean in counts per :math:`10^4` (plain mean for ``counts=False``). ``attrs`` holds
    ``n_batches_with_controls``, ``mean_library_size`` (controls, counts only) and ``n_controls``.

    Examples
    --------
    >>> var = estimate_variance(adata, batch_key="bio_rep")
    >>> var.loc[var["mean"] >= 1, ["batch", "cell"]].mean()
    """
    _check_counts_args(n_splits=n_splits, min_cells=min_cells)
    check_seed(random_state)
    if n_splits < 1 or min_cells < 2:
        msg = f"n_splits ({n_splits}) must be >= 1 and min_cells ({min_cells}) >= 2."
        raise ValueError(msg)
    disp = _dispersion(dispersion, pd.Index(adata.var_names).astype(str))
    s = _setup(
        adata,
        perturbation_key=perturbation_key,
        control_label=control_label,
        separator=separator,
        unassigned_label=unassigned_label,
        batch_key=batch_key,
        layer=layer,
        counts=counts,
        conditions=[],
        min_cells=min_cells,
        require_perturbations=False,
    )
    rng = np.random.default_rng(random_state)
    st = _stats(s.data, s.cells, s.code, n_splits, rng, s.control_groups)
    var = _variance_terms(st, s.layout, s.data, disp)
    frame = pd.DataFrame({k: var[k] for k in ("batch", "cell", "bio", "meas", "mean")}, index=s.genes)
    frame.index.name = "gene"
    frame.attrs["n_batches_with_controls"] = len(var["batches_used"])
    frame.attrs["n_controls"] = int(st.n[: s.layout.n_batches].sum())
    if s.data.lib is not None:
        frame.attrs["mean_library_size"] = float(s.data.lib.mean())
    return frame
