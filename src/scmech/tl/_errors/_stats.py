r"""Group statistics: the mean of each (condition, batch) group and its per-cell variance from half splits.

These are the only passes over the cells; the variance terms (``_variance``) and the error components
(``_components``) are computed from them. A bootstrap replicate recomputes them on resampled cells.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    from ._data import _Data

#: at most this many floats per dense block of half-split means
_BLOCK = 20_000_000


@dataclass
class _Stats:
    """Per-group statistics of one (point or bootstrap) pass over the cells."""

    n: np.ndarray  # (groups,) cells
    mean: np.ndarray  # (groups, genes) mean of z (NaN for empty groups)
    cell_var: np.ndarray  # (groups, genes) per-cell variance on the pseudobulk scale from half splits (NaN: n < 2)
    mean_l: np.ndarray | None  # (groups, genes) mean of zl (control groups only, else NaN)
    mean_2: np.ndarray | None  # (groups, genes) mean of z2 (control groups only, else NaN)


def _group_means(mat: sp.csr_matrix, cells: np.ndarray, code: np.ndarray, n_groups: int, n: np.ndarray) -> np.ndarray:
    """Mean of the rows ``cells`` of ``mat`` per group ``code`` (``n`` cells each; NaN for empty groups)."""
    ind = sp.csr_matrix((np.ones(cells.size), (code, cells)), shape=(n_groups, mat.shape[0]))
    sums = ind @ mat
    sums = sums.toarray() if sp.issparse(sums) else np.asarray(sums)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = sums / n[:, None]
    out[n == 0] = np.nan
    return out


def _split_variance(
    data: _Data,
    cells: np.ndarray,
    code: np.ndarray,
    n: np.ndarray,
    mean: np.ndarray,
    n_splits: int,
    rng: np.random.Generator,
) -> np.ndarray:
    r"""Per-cell variance of each group on the pseudobulk scale from random half splits.

    For a split of a group's :math:`n` cells into halves :math:`A, B` (sizes :math:`\lfloor n/2\rfloor` and
    the rest), :math:`E[(\bar y_A-\bar y_B)^2] = \sigma^2(1/n_A + 1/n_B)`; the estimate is the mean over
    ``n_splits`` splits of :math:`(\bar y_A-\bar y_B)^2/(1/n_A+1/n_B)`. ``cells`` may repeat (bootstrap);
    the B half is the group sum minus the A half.
    """
    G = data.z.shape[1]
    out = np.full((data.n_groups, G), np.nan)
    ok = n >= 2
    if not ok.any():
        return out
    keep = ok[code]
    cells, code = cells[keep], code[keep]
    groups = np.flatnonzero(ok)
    n_a = (n // 2)[groups].astype(float)
    n_b = n[groups] - n_a
    sums = mean[groups] * n[groups, None]
    local = np.full(data.n_groups, -1)
    local[groups] = np.arange(groups.size)
    starts = np.concatenate([[0], np.cumsum(np.bincount(code, minlength=data.n_groups))[:-1]])
    half_of = n // 2
    per = max(1, _BLOCK // max(1, groups.size * G))  # splits per product
    acc = np.zeros((groups.size, G))
    idx = np.arange(code.size)
    for r0 in range(0, n_splits, per):
        rr = min(per, n_splits - r0)
        rows, cols = [], []
        for r in range(rr):
            order = np.lexsort((rng.random(code.size), code))
            sc = code[order]
            a = (idx - starts[sc]) < half_of[sc]
            rows.append(r * groups.size + local[sc[a]])
            cols.append(cells[order][a])
        row = np.concatenate(rows)
        h = sp.csr_matrix((np.ones(row.size), (row, np.concatenate(cols))), shape=(rr * groups.size, data.z.shape[0]))
        m = h @ data.z
        m = (m.toarray() if sp.issparse(m) else np.asarray(m)).reshape(rr, groups.size, G)
        d = data.f(m / n_a[None, :, None]) - data.f((sums[None] - m) / n_b[None, :, None])
        acc += (d**2).sum(axis=0)
    out[groups] = acc / n_splits / (1.0 / n_a + 1.0 / n_b)[:, None]
    return out


def _stats(
    data: _Data,
    cells: np.ndarray,
    code: np.ndarray,
    n_splits: int,
    rng: np.random.Generator,
    control_groups: np.ndarray,
) -> _Stats:
    """Group sizes, means and split variances, plus the controls' measurement moments (counts only).

    Parameters
    ----------
    data
        The normalised cells.
    cells
        Rows of ``data`` to use, sorted by group (they repeat in a bootstrap replicate).
    code
        Group code of each entry of ``cells``.
    n_splits
        Random half splits per group.
    rng
        Random generator of the splits.
    control_groups
        Codes of the control groups.

    Returns
    -------
    The ``_Stats``.
    """
    n = np.bincount(code, minlength=data.n_groups).astype(np.int64)
    mean = _group_means(data.z, cells, code, data.n_groups, n.astype(float))
    cell_var = _split_variance(data, cells, code, n, mean, n_splits, rng)
    mean_l = mean_2 = None
    if data.counts:
        sel = np.isin(code, control_groups)
        n_c = np.where(np.isin(np.arange(data.n_groups), control_groups), n, 0).astype(float)
        mean_l = _group_means(data.zl, cells[sel], code[sel], data.n_groups, n_c)
        mean_2 = _group_means(data.z2, cells[sel], code[sel], data.n_groups, n_c)
    return _Stats(n=n, mean=mean, cell_var=cell_var, mean_l=mean_l, mean_2=mean_2)
