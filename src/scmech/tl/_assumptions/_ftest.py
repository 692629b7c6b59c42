r"""Stratified one-way ANOVA F of control cells between groups, shared by the baseline and media checks.

Per gene :math:`g`, the ratio of the between-group variance of the group means to the within-group
variance of the normalised values is 1 on average when group means differ by sampling noise only; with
strata (batches) the sums run within each stratum and the degrees of freedom add up. The statistic is the
mean over genes, its p-value comes from permutations of the group labels within strata, and its interval
from a cell bootstrap within each (stratum, group).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ._stats import _bootstrap_design, _label_design, _per_replicate, _recentred_interval

if TYPE_CHECKING:
    from ._data import _Data


def _f_statistic(n: np.ndarray, s: np.ndarray, q: np.ndarray, stratum: np.ndarray) -> np.ndarray:
    r"""Mean over genes of the one-way ANOVA F of groups within strata, per replicate.

    ``n`` (replicates x groups), ``s`` and ``q`` (replicates x groups x genes) are the counts, sums and sums of
    squares; ``stratum`` is each group's stratum. Between-group sums of squares are taken around each stratum's
    mean, so strata (batches) drop out.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        m = s / n[..., None]
        ssw = (q - n[..., None] * m**2).sum(axis=1)
        ssb = np.zeros(ssw.shape)
        df_b = 0
        for st in np.unique(stratum):
            g = stratum == st
            if g.sum() < 2:
                continue
            centre = s[:, g].sum(axis=1) / n[:, g].sum(axis=1)[:, None]
            ssb += (n[:, g][..., None] * (m[:, g] - centre[:, None]) ** 2).sum(axis=1)
            df_b += int(g.sum()) - 1
        df_w = n.sum(axis=1) - n.shape[1]
        if df_b == 0:
            return np.full(n.shape[0], np.nan)
        good = ssw > 1e-12 * np.maximum(np.abs(q).max(axis=1), 1.0)
        f = np.where(good, (ssb / df_b) / (ssw / df_w[:, None]), np.nan)
        ok = good.any(axis=1) & (df_w > 0)
        out = np.full(n.shape[0], np.nan)
        out[ok] = np.nanmean(f[ok], axis=1)
    return out


def _permuted_cells(
    g_codes: np.ndarray, s_codes: np.ndarray, lookup: np.ndarray, n_g: int, rng: np.random.Generator, n_rep: int
) -> np.ndarray:
    """Cell-group codes (replicates x cells) with the group labels shuffled within each stratum.

    Group sizes per stratum are kept; ``lookup`` maps ``stratum * n_g + group`` to the cell-group code.
    """
    labels = np.tile(g_codes, (n_rep, 1))
    for st in np.unique(s_codes):
        idx = np.flatnonzero(s_codes == st)
        labels[:, idx] = rng.permuted(labels[:, idx], axis=1)
    return lookup[s_codes[None, :] * n_g + labels]


def _f_test(
    data: _Data,
    cells: np.ndarray,
    group: np.ndarray,
    stratum: np.ndarray,
    rng: np.random.Generator,
    n_resamples: int,
    alpha: float,
) -> tuple[float, float, float, float]:
    """F statistic of ``group`` within ``stratum`` over ``cells``, re-centred bootstrap interval and permutation p.

    Parameters
    ----------
    data
        The screen.
    cells
        Indices of the cells compared.
    group, stratum
        Group and stratum of each of ``cells``.
    rng
        Generator of the permutations, then of the bootstrap.
    n_resamples
        Number of permutations and of bootstrap resamples.
    alpha
        The interval covers ``1 - alpha``.

    Returns
    -------
    ``(F, ci_low, ci_high, p_value)``; all NaN when F is not defined.
    """
    g_codes, g_uni = pd.factorize(pd.Series(group), sort=True)
    s_codes, _ = pd.factorize(pd.Series(stratum), sort=True)
    n_g = len(g_uni)
    c_codes, c_uni = pd.factorize(pd.Series(s_codes * n_g + g_codes), sort=True)
    strat_of = np.asarray(c_uni) // n_g
    k = len(c_uni)
    lookup = np.full((int(s_codes.max()) + 1) * n_g, -1)
    lookup[np.asarray(c_uni)] = np.arange(k)

    def stat(n: np.ndarray, s: np.ndarray, q: np.ndarray) -> np.ndarray:
        return _f_statistic(n, s, q, strat_of)

    f_obs = float(stat(*[x[None] for x in data.moments(cells, c_codes, k)])[0])
    if not np.isfinite(f_obs):
        return np.nan, np.nan, np.nan, np.nan
    # permutation null: shuffle the group labels within each stratum (group sizes per stratum are kept)
    perm = _permuted_cells(g_codes, s_codes, lookup, n_g, rng, n_resamples)
    f_perm = _per_replicate(data, cells, _label_design(perm, k), k, stat)
    p_value = (1.0 + np.sum(f_perm >= f_obs)) / (1.0 + n_resamples)
    # bootstrap: resample cells within each (stratum, group)
    boot = _per_replicate(data, cells, _bootstrap_design(c_codes, k, n_resamples, rng), k, stat)
    lo, hi = _recentred_interval(f_obs, boot, alpha)
    return f_obs, max(lo, 0.0), hi, float(p_value)


def _comparable_strata(group: np.ndarray, stratum: np.ndarray) -> np.ndarray:
    """Mask of the cells whose stratum holds at least two groups (all ``False`` when no stratum does)."""
    per_stratum = pd.Series(group).groupby(pd.Series(stratum).to_numpy()).nunique()
    return np.isin(stratum, per_stratum.index[per_stratum >= 2])
