"""Statistics shared by the checks: re-centred bootstrap intervals and resampling of cell groups.

Resampled statistics are computed from per-group moments: a resample (bootstrap, permutation or split) is a
sparse *design* matrix whose row ``b * k + j`` holds the weights of the cells of group ``j`` in replicate
``b``, so that the moments of all replicates come from one sparse product (:func:`_per_replicate`).

Intervals are percentile intervals of a cell bootstrap (cells resampled within each group), re-centred on
the estimate: resampling adds a second round of sampling noise to between-group differences, which would
otherwise shift the interval upwards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scmech.tl._stats import recentred_interval

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._data import _Data

#: at most this many replicate x group x gene values are held in memory at once
_CHUNK_VALUES = 4_000_000


def _recentred_interval(estimate: float, boot: np.ndarray, alpha: float) -> tuple[float, float]:
    """Percentile interval of a bootstrap distribution, shifted so that its median sits on the estimate.

    :func:`scmech.tl._stats.recentred_interval` with the median as the centre, after dropping non-finite replicates.

    Parameters
    ----------
    estimate
        The statistic on the data.
    boot
        Its bootstrap replicates; non-finite ones are dropped.
    alpha
        The interval covers ``1 - alpha``.

    Returns
    -------
    ``(low, high)``; NaNs with fewer than 2 finite replicates or a non-finite estimate.
    """
    boot = np.asarray(boot, dtype=np.float64)
    boot = boot[np.isfinite(boot)]
    if boot.size < 2 or not np.isfinite(estimate):
        return np.nan, np.nan
    lo, hi = recentred_interval(estimate, boot, alpha, centre="median")
    return float(lo), float(hi)


def _bootstrap_design(codes: np.ndarray, k: int, n_rep: int, rng: np.random.Generator) -> sp.csr_matrix:
    """Rows ``b * k + j``: a resample with replacement of the cells of group ``j`` (weights = multiplicities)."""
    rows, cols, vals = [], [], []
    for j in range(k):
        members = np.flatnonzero(codes == j)
        m = members.size
        if m == 0:
            continue
        draws = rng.integers(0, m, size=(n_rep, m)) + (np.arange(n_rep) * m)[:, None]
        cnt = np.bincount(draws.ravel(), minlength=n_rep * m).reshape(n_rep, m)
        rb, rc = np.nonzero(cnt)
        rows.append(rb * k + j)
        cols.append(members[rc])
        vals.append(cnt[rb, rc].astype(np.float64))
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_rep * k, len(codes))
    )


def _label_design(labels: np.ndarray, k: int, weights: np.ndarray | None = None) -> sp.csr_matrix:
    """Rows ``b * k + j`` from per-replicate group labels (replicates x cells); ``-1`` leaves a cell out."""
    n_rep, n = labels.shape
    rows = (np.arange(n_rep)[:, None] * k + labels).ravel()
    cols = np.tile(np.arange(n), n_rep)
    vals = np.ones(rows.size) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    keep = (labels.ravel() >= 0) & (vals > 0)
    return sp.csr_matrix((vals[keep], (rows[keep], cols[keep])), shape=(n_rep * k, n))


def _per_replicate(
    data: _Data,
    cells: np.ndarray,
    design: sp.csr_matrix,
    k: int,
    statistic: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
) -> np.ndarray:
    """Apply ``statistic(n, s, q)`` (arrays replicates x k [x genes]) to the replicates of ``design``, in chunks."""
    n_rep = design.shape[0] // k
    step = max(1, _CHUNK_VALUES // max(k * data.norm.shape[1], 1))
    out = []
    for b0 in range(0, n_rep, step):
        b1 = min(n_rep, b0 + step)
        n, s, q = data.replicate_moments(cells, design[b0 * k : b1 * k])
        g = s.shape[1]
        out.append(np.asarray(statistic(n.reshape(-1, k), s.reshape(-1, k, g), q.reshape(-1, k, g)), dtype=float))
    return np.concatenate(out) if out else np.zeros(0)


def _drop_small(labels: np.ndarray, min_cells: int) -> tuple[np.ndarray, list[str]]:
    """Mask of the cells whose label has at least ``min_cells`` cells, and the (sorted) labels left out."""
    vc = pd.Series(labels).value_counts()
    small = sorted(vc.index[vc < min_cells].astype(str).tolist())
    return np.isin(labels, vc.index[vc >= min_cells]), small
