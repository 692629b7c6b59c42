r"""Tests of the hidden assumptions of perturbation models on a screen's own data (FRAMEWORK.md §1, §4, §7).

Published predictors of perturbation effects read a Perturb-seq screen as samples of post-perturbation
equilibria: unedited cells sit at a baseline steady state (A1) and do not respond to the medium, every
perturbation leads to one attractor (A2), perturbations act at once, and combinations add. Each check here
turns one of these into a test with an effect size, an interval and a plain verdict (``"holds"``,
``"violated"`` or ``"cannot be tested: <why>"``).

All checks work on the genes expressed in the screen (mean count :math:`\ge` ``0.05`` per cell, at most the
2,000 most expressed) and on the pseudobulk of :mod:`scmech.data._pseudobulk`,
:math:`\bar y_g = \log(1 + \overline{10^4 x_{cg}/\ell_c})`, whose sampling variance for :math:`n` cells is,
by the delta method, :math:`v_g = s^2_g / (n\,(1 + \bar m_g)^2)` with :math:`s^2_g` the cell-to-cell variance
of the normalised values :math:`10^4 x_{cg}/\ell_c` and :math:`\bar m_g` their mean.

Intervals are percentile intervals of a cell bootstrap (cells resampled within each group), re-centred on
the estimate: resampling adds a second round of sampling noise to between-group differences, which would
otherwise shift the interval upwards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats

from scmech._constants import SCMECH_ADATA_KEYS, TARGET_SUM
from scmech.data._checks import check_expression
from scmech.data._design import get_design
from scmech.data._pseudobulk import _get_matrix, library_size

if TYPE_CHECKING:
    from anndata import AnnData

    from scmech.data._design import ExperimentalDesign

logger = logging.getLogger(__name__)

__all__ = ["ASSUMPTIONS", "check_assumptions", "estimate_efficacy", "report_assumptions"]

#: the checks, in report order, with their plain-language statement
ASSUMPTIONS: dict[str, str] = {
    "baseline_steady_state": "Baseline steady state (A1): control cells do not drift",
    "media_response": "No media response: control cells are the same in every medium",
    "unique_attractor": "Unique attractor (A2): each perturbed population is one state",
    "instantaneous_perturbation": "Instantaneous perturbation: effects have settled by the last read-out",
    "additivity": "Additivity: a combination's effect is the sum of its singles' effects",
    "model_steady_state": "Model: control cells sit at a fixed point of the learned field",
}
#: name of each check's effect size
STATISTICS: dict[str, str] = {
    "baseline_steady_state": "F (between / within)",
    "media_response": "F (between / within)",
    "unique_attractor": "unperturbed fraction",
    "instantaneous_perturbation": "growth share",
    "additivity": "interaction / noise",
    "model_steady_state": "residual ratio (control / perturbed)",
}
HOLDS = "holds"
VIOLATED = "violated"
CANNOT = "cannot be tested"
COLUMNS = [
    "assumption",
    "subject",
    "statistic",
    "effect",
    "ci_low",
    "ci_high",
    "p_value",
    "n_cells",
    "verdict",
    "detail",
]

#: genes count as expressed from this mean raw count per cell (counts) on
_MIN_MEAN_COUNT = 0.05
#: at most this many (most expressed) genes are used
_MAX_GENES = 2000
#: groups of cells smaller than this are left out of the A1, media, time and additivity checks
_MIN_CELLS = 10
#: the unique-attractor check needs this many perturbed and control cells
_MIN_CELLS_MIXTURE = 20
#: DE genes that define a perturbation's direction
_N_DE_GENES = 50
#: a perturbation whose cells move by less than this many control SDs along their own direction is too weak
_MIN_SEPARATION = 1.0
#: the mixture must beat one shifted Gaussian by this much BIC ("very strong" on the Kass-Raftery scale) ...
_MIN_DELTA_BIC = 10.0
#: ... and the lower bound of the unperturbed fraction must exceed this
_MIN_MIXTURE_FRACTION = 0.05
#: the effect counts as still growing when more than this share of it appeared over the last interval
_MAX_GROWTH_SHARE = 0.1
#: the effect at the last read-out must have at least this z-score against "no effect" to be compared
_MIN_EFFECT_Z = 3.0


# ---------------------------------------------------------------------------------------------------- helpers
def _cannot(why: str) -> str:
    return f"{CANNOT}: {why}"


def _row(assumption: str, subject: str, **kw: Any) -> dict[str, Any]:
    row = {
        "assumption": assumption,
        "subject": subject,
        "statistic": STATISTICS[assumption],
        "effect": np.nan,
        "ci_low": np.nan,
        "ci_high": np.nan,
        "p_value": np.nan,
        "n_cells": 0,
        "verdict": "",
        "detail": "",
    }
    row.update(kw)
    return row


def _recentred_interval(estimate: float, boot: np.ndarray, alpha: float) -> tuple[float, float]:
    """Percentile interval of a bootstrap distribution, shifted so that its median sits on the estimate."""
    boot = np.asarray(boot, dtype=np.float64)
    boot = boot[np.isfinite(boot)]
    if boot.size < 2 or not np.isfinite(estimate):
        return np.nan, np.nan
    shift = float(np.median(boot)) - estimate
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return float(lo - shift), float(hi - shift)


def _fmt(x: float, digits: int = 2) -> str:
    if not np.isfinite(x):
        return "nan"
    return f"{x:.{digits}f}" if abs(x) < 1e4 else f"{x:.3g}"


def _time_label(t: float) -> str:
    return f"t={t:g}"


@dataclass
class _Data:
    """Expressed genes of the screen, normalised, with the parsed design."""

    design: ExperimentalDesign
    norm: sp.csr_matrix  # cells x genes: 1e4 x / l (counts) or the values as given
    norm2: sp.csr_matrix  # element-wise square of ``norm``
    genes: pd.Index
    counts: bool
    batch: np.ndarray | None
    time: np.ndarray | None
    media: np.ndarray | None

    def moments(self, cells: np.ndarray, codes: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cell count, sum and sum of squares per group (groups x genes) of the given cells."""
        keep = codes >= 0
        design = sp.csr_matrix(
            (np.ones(int(keep.sum())), (codes[keep], np.flatnonzero(keep))), shape=(n_groups, len(cells))
        )
        return self.replicate_moments(cells, design)

    def replicate_moments(self, cells: np.ndarray, design: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Weighted count, sum and sum of squares of ``cells`` for each row of ``design`` (rows x cells)."""
        xc, xc2 = self.norm[cells], self.norm2[cells]
        n = np.asarray(design.sum(axis=1)).ravel()
        return n, np.asarray((design @ xc).todense()), np.asarray((design @ xc2).todense())

    def pseudobulk(self, n: np.ndarray, s: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Log pseudobulk and its delta-method sampling variance per group (``(..., groups, genes)``)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            nn = n[..., None]
            m = s / nn
            var = np.maximum(q - nn * m**2, 0.0) / np.maximum(nn - 1.0, 1.0)
            if self.counts:
                return np.log1p(m), var / nn / (1.0 + m) ** 2
            return m, var / nn

    def log_dense(self, cells: np.ndarray) -> np.ndarray:
        """Dense log-normalised values (cells x genes) of the given cells."""
        x = self.norm[cells].toarray()
        return np.log1p(x) if self.counts else x


def _prepare(
    adata: AnnData,
    *,
    perturbation_key: str,
    control_label: str,
    separator: str,
    unassigned_label: str | None,
    batch_key: str | None,
    time_key: str | None,
    media_key: str | None,
    layer: str | None,
    counts: bool,
) -> _Data:
    design = get_design(
        adata,
        perturbation_key,
        control_label,
        separator=separator,
        unassigned_label=unassigned_label,
        batch_key=batch_key,
        time_key=time_key,
        media_key=media_key,
    )
    x = _get_matrix(adata, layer)
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    try:
        check_expression(x, where, counts=counts)
    except ValueError as e:
        if not counts or "NaN" in str(e):
            raise
        what = str(e).split(" Register")[0].strip()
        msg = (
            f"{what} The checks need raw counts (they normalise them): pass the layer that holds them "
            "(layer='counts'), or counts=False for log-normalised values."
        )
        raise ValueError(msg) from e
    x = sp.csr_matrix(x, dtype=np.float64)
    fit = design.perturbation.fit_mask
    if counts:
        lib = library_size(x)
        empty = fit & (lib <= 0)
        if empty.any():
            msg = f"{int(empty.sum())} cells of {where} have no counts; remove empty cells first."
            raise ValueError(msg)
        mean_count = np.asarray(x[fit].mean(axis=0)).ravel()
        expressed = mean_count >= _MIN_MEAN_COUNT
        norm = sp.diags(np.where(lib > 0, TARGET_SUM / np.maximum(lib, 1e-300), 0.0)) @ x
    else:
        norm = x
        mean_count = np.asarray(x[fit].mean(axis=0)).ravel()
        sq = np.asarray(x[fit].multiply(x[fit]).mean(axis=0)).ravel()
        expressed = (sq - mean_count**2) > 0
    idx = np.flatnonzero(expressed)
    if idx.size > _MAX_GENES:
        idx = np.sort(idx[np.argsort(-mean_count[idx], kind="stable")[:_MAX_GENES]])
    if idx.size < 2:
        msg = (
            f"Only {idx.size} genes of {where} are expressed (mean count >= {_MIN_MEAN_COUNT} per cell); the "
            "assumption checks need expressed genes."
        )
        raise ValueError(msg)
    norm = sp.csr_matrix(norm[:, idx])
    return _Data(
        design=design,
        norm=norm,
        norm2=norm.multiply(norm).tocsr(),
        genes=pd.Index(adata.var_names[idx]).astype(str),
        counts=counts,
        batch=None if design.batch is None else np.asarray(design.batch).astype(str),
        time=design.time,
        media=None if design.media is None else np.asarray(design.media).astype(str),
    )


def _contexts(data: _Data, use_time: bool = True) -> list[tuple[str, np.ndarray]]:
    """Cell masks of each (medium, time) context, labelled by the parts that vary ("" for a single context)."""
    n = data.design.perturbation.n_cells
    fit = data.design.perturbation.fit_mask
    media = data.media if data.media is not None and len(pd.unique(data.media[fit])) > 1 else None
    time = data.time if use_time and data.time is not None and len(np.unique(data.time[fit])) > 1 else None
    if media is None and time is None:
        return [("", np.ones(n, dtype=bool))]
    frame = pd.DataFrame(
        {
            "media": media if media is not None else "",
            "time": time if time is not None else 0.0,
        }
    )
    frame["key"] = [
        ", ".join(p for p in (m if media is not None else "", _time_label(t) if time is not None else "") if p)
        for m, t in zip(frame["media"], frame["time"], strict=True)
    ]
    order = frame.drop_duplicates("key").sort_values(["media", "time"])["key"].tolist()
    return [(k, (frame["key"] == k).to_numpy()) for k in order]


# ---------------------------------------------------------------------------------------------------- resampling
#: at most this many replicate x group x gene values are held in memory at once
_CHUNK_VALUES = 4_000_000


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


def _per_replicate(data: _Data, cells: np.ndarray, design: sp.csr_matrix, k: int, statistic) -> np.ndarray:
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


# ---------------------------------------------------------------------------------------------------- F test
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


def _f_test(
    data: _Data,
    cells: np.ndarray,
    group: np.ndarray,
    stratum: np.ndarray,
    rng: np.random.Generator,
    n_resamples: int,
    alpha: float,
) -> tuple[float, float, float, float]:
    """F statistic of ``group`` within ``stratum`` over ``cells``, re-centred bootstrap interval and permutation p."""
    g_codes, g_uni = pd.factorize(pd.Series(group), sort=True)
    s_codes, _ = pd.factorize(pd.Series(stratum), sort=True)
    n_g = len(g_uni)
    c_codes, c_uni = pd.factorize(pd.Series(s_codes * n_g + g_codes), sort=True)
    strat_of = np.asarray(c_uni) // n_g
    k = len(c_uni)
    lookup = np.full((int(s_codes.max()) + 1) * n_g, -1)
    lookup[np.asarray(c_uni)] = np.arange(k)

    def stat(n, s, q):
        return _f_statistic(n, s, q, strat_of)

    f_obs = float(stat(*[x[None] for x in data.moments(cells, c_codes, k)])[0])
    if not np.isfinite(f_obs):
        return np.nan, np.nan, np.nan, np.nan
    # permutation null: shuffle the group labels within each stratum (group sizes per stratum are kept)
    labels = np.tile(g_codes, (n_resamples, 1))
    for st in np.unique(s_codes):
        idx = np.flatnonzero(s_codes == st)
        labels[:, idx] = rng.permuted(labels[:, idx], axis=1)
    perm = lookup[s_codes[None, :] * n_g + labels]
    f_perm = _per_replicate(data, cells, _label_design(perm, k), k, stat)
    p_value = (1.0 + np.sum(f_perm >= f_obs)) / (1.0 + n_resamples)
    # bootstrap: resample cells within each (stratum, group)
    boot = _per_replicate(data, cells, _bootstrap_design(c_codes, k, n_resamples, rng), k, stat)
    lo, hi = _recentred_interval(f_obs, boot, alpha)
    return f_obs, max(lo, 0.0), hi, float(p_value)


def _drop_small(labels: np.ndarray, min_cells: int) -> tuple[np.ndarray, list[str]]:
    vc = pd.Series(labels).value_counts()
    small = sorted(vc.index[vc < min_cells].astype(str).tolist())
    return np.isin(labels, vc.index[vc >= min_cells]), small


def _check_baseline(
    data: _Data, keys: dict[str, str | None], rng: np.random.Generator, n_resamples: int, alpha: float
) -> list[dict[str, Any]]:
    a = "baseline_steady_state"
    ctrl = data.design.perturbation.is_control
    if data.time is None and data.batch is None:
        why = "no time_key or batch_key: controls were read out once, so a drift cannot be seen"
        return [_row(a, "controls", verdict=_cannot(why), n_cells=int(ctrl.sum()))]
    by_time = data.time is not None and len(np.unique(data.time[ctrl])) > 1
    if not by_time and data.batch is None:
        why = f"controls at only one time point of obs[{keys['time']!r}] and no batch_key"
        return [_row(a, "controls", verdict=_cannot(why), n_cells=int(ctrl.sum()))]
    media_groups = [("controls", np.ones_like(ctrl))]
    if data.media is not None:
        media_groups = [(f"controls in {m}", data.media == m) for m in pd.unique(data.media[ctrl])]
    rows = []
    for subject, mmask in media_groups:
        sel = ctrl & mmask
        if by_time:
            group = np.array([_time_label(t) for t in data.time[sel]], dtype=object)
            stratum = data.batch[sel] if data.batch is not None else np.zeros(int(sel.sum()), dtype=int)
            what = f"time points of obs[{keys['time']!r}]"
        else:
            group = data.batch[sel]
            stratum = np.zeros(int(sel.sum()), dtype=int)
            what = f"batches of obs[{keys['batch']!r}]"
        keep, small = _drop_small(pd.Series(group).astype(str) + "|" + pd.Series(stratum).astype(str), _MIN_CELLS)
        cells = np.flatnonzero(sel)[keep]
        group, stratum = group[keep], np.asarray(stratum)[keep]
        n_groups = len(pd.unique(group))
        # strata (batches) in which at least two groups (time points) have controls
        per_stratum = pd.Series(group).groupby(pd.Series(stratum).to_numpy()).nunique()
        if n_groups < 2 or (per_stratum >= 2).sum() == 0:
            if n_groups < 2:
                why = f"controls (>= {_MIN_CELLS} cells) in only {n_groups} of the {what}"
            else:
                why = (
                    f"no batch of obs[{keys['batch']!r}] holds controls at two {what.split(' of ')[0]}: time and "
                    "batch are confounded"
                )
            rows.append(_row(a, subject, verdict=_cannot(why), n_cells=int(sel.sum())))
            continue
        use = np.isin(stratum, per_stratum.index[per_stratum >= 2])
        cells, group, stratum = cells[use], group[use], stratum[use]
        f, lo, hi, p = _f_test(data, cells, group, stratum, rng, n_resamples, alpha)
        groups_txt = ", ".join(str(g) for g in sorted(pd.unique(group), key=str)[:6])
        detail = f"controls compared across {n_groups} {what} ({groups_txt}"
        detail += ", ...)" if n_groups > 6 else ")"
        if by_time and data.batch is not None:
            detail += ", within batches"
        detail += "; F = 1 when they differ by sampling noise only"
        if not by_time:
            detail += (
                "; without time points a difference between batches is a batch effect or a drift, which this "
                "check cannot tell apart"
            )
        if small:
            detail += f"; left out (< {_MIN_CELLS} cells): {len(small)} group(s)"
        verdict = VIOLATED if p < alpha and lo > 1.0 else HOLDS
        rows.append(
            _row(
                a,
                subject,
                effect=f,
                ci_low=lo,
                ci_high=hi,
                p_value=p,
                n_cells=len(cells),
                verdict=verdict,
                detail=detail,
            )
        )
    return rows


def _check_media(
    data: _Data, keys: dict[str, str | None], rng: np.random.Generator, n_resamples: int, alpha: float
) -> list[dict[str, Any]]:
    a = "media_response"
    ctrl = data.design.perturbation.is_control
    if data.media is None:
        return [_row(a, "controls", verdict=_cannot("no media_key given"), n_cells=int(ctrl.sum()))]
    media = sorted(pd.unique(data.media[ctrl]).tolist(), key=str)
    subject = "controls across media"
    if len(media) < 2:
        why = f"controls in only one medium ({media[0] if media else 'none'})"
        return [_row(a, subject, verdict=_cannot(why), n_cells=int(ctrl.sum()))]
    sel = np.flatnonzero(ctrl)
    group = data.media[sel]
    parts = []
    if data.time is not None:
        parts.append(np.array([_time_label(t) for t in data.time[sel]], dtype=object))
    if data.batch is not None:
        parts.append(data.batch[sel])
    stratum = (
        np.array(["|".join(str(p[i]) for p in parts) for i in range(len(sel))], dtype=object)
        if parts
        else np.zeros(len(sel), dtype=int)
    )
    keep, _ = _drop_small(pd.Series(group).astype(str) + "#" + pd.Series(stratum).astype(str), _MIN_CELLS)
    cells, group, stratum = sel[keep], group[keep], np.asarray(stratum)[keep]
    per_stratum = pd.Series(group).groupby(pd.Series(stratum).to_numpy()).nunique()
    if (per_stratum >= 2).sum() == 0:
        why = "no time point or batch holds controls (>= 10 cells) in two media: media are confounded with them"
        return [_row(a, subject, verdict=_cannot(why), n_cells=int(ctrl.sum()))]
    use = np.isin(stratum, per_stratum.index[per_stratum >= 2])
    cells, group, stratum = cells[use], group[use], stratum[use]
    f, lo, hi, p = _f_test(data, cells, group, stratum, rng, n_resamples, alpha)
    within = " and ".join(
        w for w, on in (("time point", data.time is not None), ("batch", data.batch is not None)) if on
    )
    used = sorted(pd.unique(group).tolist(), key=str)
    detail = f"controls compared across media {', '.join(map(str, used))}"
    if within:
        detail += f" within each {within}"
    detail += "; F = 1 when they differ by sampling noise only"
    verdict = VIOLATED if p < alpha and lo > 1.0 else HOLDS
    return [
        _row(a, subject, effect=f, ci_low=lo, ci_high=hi, p_value=p, n_cells=len(cells), verdict=verdict, detail=detail)
    ]


# ---------------------------------------------------------------------------------------------------- mixture
_LOG_2PI = float(np.log(2 * np.pi))


def _norm_logpdf(z: np.ndarray, mu, sd) -> np.ndarray:
    return -0.5 * ((z - mu) / sd) ** 2 - np.log(sd) - 0.5 * _LOG_2PI


def _em(
    z: np.ndarray, pi: np.ndarray, mu: np.ndarray, sd: np.ndarray, n_iter: int = 300, tol: float = 1e-9
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    r"""EM for :math:`\pi N(0, 1) + (1-\pi) N(\mu, \sigma^2)`, one fit per row of ``z`` (rows x cells).

    Returns ``(pi, mu, sd, loglik)`` per row.
    """
    z = np.atleast_2d(z)
    pi, mu, sd = (np.asarray(v, dtype=np.float64).copy() for v in (pi, mu, sd))
    l0_base = _norm_logpdf(z, 0.0, 1.0)
    ll_old = np.full(z.shape[0], -np.inf)

    def loglik(pi, mu, sd):
        l0 = np.log(np.maximum(pi, 1e-300))[:, None] + l0_base
        l1 = np.log(np.maximum(1 - pi, 1e-300))[:, None] + _norm_logpdf(z, mu[:, None], sd[:, None])
        tot = np.logaddexp(l0, l1)
        return l1, tot

    for _ in range(n_iter):
        l1, tot = loglik(pi, mu, sd)
        ll = tot.sum(axis=1)
        r1 = np.exp(l1 - tot)
        w1 = r1.sum(axis=1)
        live = w1 > 1e-9
        pi = np.clip(1.0 - w1 / z.shape[1], 0.0, 1.0)
        w = np.where(live, w1, 1.0)
        mu = np.where(live, (r1 * z).sum(axis=1) / w, mu)
        sd = np.where(live, np.maximum(np.sqrt((r1 * (z - mu[:, None]) ** 2).sum(axis=1) / w), 0.05), sd)
        if np.all(np.abs(ll - ll_old) < tol * np.maximum(np.abs(ll), 1.0)):
            break
        ll_old = ll
    _, tot = loglik(pi, mu, sd)
    return pi, mu, sd, tot.sum(axis=1)


def _fit_mixture(z: np.ndarray) -> tuple[float, float, float, float]:
    r"""Best of three EM starts for :math:`\pi N(0, 1) + (1-\pi) N(\mu, \sigma^2)`: ``(pi, mu, sd, loglik)``."""
    z = np.asarray(z, dtype=np.float64)
    p0 = np.array([0.02, 0.2, 0.5])
    pi, mu, sd, ll = _em(np.tile(z, (3, 1)), p0, np.full(3, z.mean()) / (1 - p0), np.full(3, max(float(z.std()), 0.1)))
    i = int(np.argmax(ll))
    return float(pi[i]), float(mu[i]), float(sd[i]), float(ll[i])


def _posterior(z: np.ndarray, pi: float, mu: float, sd: float) -> np.ndarray:
    l0 = np.log(max(pi, 1e-300)) + _norm_logpdf(z, 0.0, 1.0)
    l1 = np.log(max(1 - pi, 1e-300)) + _norm_logpdf(z, mu, sd)
    return np.exp(l1 - np.logaddexp(l0, l1))


def _cross_fitted_scores(
    xp: np.ndarray, xc: np.ndarray, rng: np.random.Generator, n_de: int
) -> tuple[np.ndarray, np.ndarray]:
    r"""Project perturbed and control cells on the perturbation's direction, two-fold cross-fitted.

    In each fold the direction (mean difference on the top DE genes by Welch's t) is learnt from the other
    fold's cells, and the held-out cells' projections are standardised by the held-out controls, so that the
    controls are :math:`N(0, 1)` by construction and no cell is scored by a direction it helped to choose.
    """
    fp = rng.permutation(len(xp)) % 2
    fc = rng.permutation(len(xc)) % 2
    zp = np.empty(len(xp))
    zc = np.empty(len(xc))
    for k in (0, 1):
        tp, tc = xp[fp != k], xc[fc != k]
        mp, mc = tp.mean(axis=0), tc.mean(axis=0)
        se = np.sqrt(tp.var(axis=0, ddof=1) / len(tp) + tc.var(axis=0, ddof=1) / len(tc))
        with np.errstate(invalid="ignore", divide="ignore"):
            t = np.where(se > 0, (mp - mc) / se, 0.0)
        top = np.argsort(-np.abs(t), kind="stable")[: min(n_de, xp.shape[1])]
        u = (mp - mc)[top]
        uu = float(u @ u)
        if uu <= 0:
            uu = 1.0
        sp_ = (xp[fp == k][:, top] - mc[top]) @ u / uu
        sc_ = (xc[fc == k][:, top] - mc[top]) @ u / uu
        a, b = float(sc_.mean()), float(sc_.std(ddof=1))
        b = b if b > 0 else 1.0
        zp[fp == k] = (sp_ - a) / b
        zc[fc == k] = (sc_ - a) / b
    return zp, zc


@dataclass
class _MixtureResult:
    condition: str
    context: str
    cells: np.ndarray  # indices of the perturbed cells
    row: dict[str, Any]
    posterior: np.ndarray | None  # P(perturbed) per perturbed cell, None when not tested


def _mixture_checks(data: _Data, rng: np.random.Generator, n_resamples: int, alpha: float) -> list[_MixtureResult]:
    a = "unique_attractor"
    pert = data.design.perturbation
    out: list[_MixtureResult] = []
    # separate streams: the cross-fitting splits (and so the posteriors) do not depend on n_resamples
    rng, rng_boot = rng.spawn(2)
    for context, cmask in _contexts(data):
        ctrl_cells = np.flatnonzero(pert.is_control & cmask)
        conds = sorted(set(pert.labels[cmask & pert.fit_mask & ~pert.is_control].tolist()))
        if not conds:
            continue
        xc_full = data.log_dense(ctrl_cells) if len(ctrl_cells) else None
        centre_by_batch = None
        if data.batch is not None and len(ctrl_cells):
            bc = pd.Series(data.batch[ctrl_cells]).value_counts()
            if (bc >= 5).all() and set(pd.unique(data.batch[cmask & pert.fit_mask])) <= set(bc.index):
                centre_by_batch = {b: xc_full[data.batch[ctrl_cells] == b].mean(axis=0) for b in bc.index}
        xc = xc_full
        if centre_by_batch is not None:
            xc = xc_full - np.vstack([centre_by_batch[b] for b in data.batch[ctrl_cells]])
        for cond in conds:
            cells = np.flatnonzero((pert.labels == cond) & cmask)
            subject = cond if not context else f"{cond} ({context})"
            n_tot = len(cells) + len(ctrl_cells)
            if len(cells) < _MIN_CELLS_MIXTURE or len(ctrl_cells) < _MIN_CELLS_MIXTURE:
                why = f"fewer than {_MIN_CELLS_MIXTURE} perturbed ({len(cells)}) or control ({len(ctrl_cells)}) cells"
                out.append(
                    _MixtureResult(cond, context, cells, _row(a, subject, verdict=_cannot(why), n_cells=n_tot), None)
                )
                continue
            xp = data.log_dense(cells)
            if centre_by_batch is not None:
                xp = xp - np.vstack([centre_by_batch[b] for b in data.batch[cells]])
            zp, _ = _cross_fitted_scores(xp, xc, rng, _N_DE_GENES)
            shift = float(np.mean(zp))
            if abs(shift) < _MIN_SEPARATION:
                why = (
                    f"the perturbation moves cells by only {_fmt(shift)} control SDs along its own direction; "
                    "escapers and responders overlap"
                )
                out.append(
                    _MixtureResult(
                        cond, context, cells, _row(a, subject, verdict=_cannot(why), n_cells=n_tot, detail=why), None
                    )
                )
                continue
            z = zp if shift > 0 else -zp
            pi, mu, sd, ll2 = _fit_mixture(z)
            ll1 = float(_norm_logpdf(z, float(z.mean()), max(float(z.std()), 0.05)).sum())
            lr = max(2.0 * (ll2 - ll1), 0.0)
            delta_bic = lr - np.log(len(z))
            p_value = float(0.5 * stats.chi2.sf(lr, 1)) if lr > 0 else 1.0
            boot = np.empty(n_resamples)
            step = max(1, _CHUNK_VALUES // len(z))
            for b0 in range(0, n_resamples, step):
                b1 = min(n_resamples, b0 + step)
                zb = z[rng_boot.integers(0, len(z), (b1 - b0, len(z)))]
                ones = np.ones(b1 - b0)
                boot[b0:b1] = _em(zb, ones * max(pi, 0.02), ones * mu, ones * sd, n_iter=100)[0]
            lo, hi = _recentred_interval(pi, boot, alpha)
            lo, hi = max(lo, 0.0), min(hi, 1.0)
            violated = delta_bic > _MIN_DELTA_BIC and lo > _MIN_MIXTURE_FRACTION
            detail = (
                f"{_fmt(100 * pi, 0)}% of cells look unperturbed (control-like), the others sit {_fmt(mu)} control "
                f"SDs away (SD {_fmt(sd)}); mixture vs one shifted state: ΔBIC = {_fmt(delta_bic, 1)}"
            )
            if violated:
                detail += " (escapers or a second attractor)"
            elif delta_bic <= _MIN_DELTA_BIC:
                detail += f" (not decisive: ΔBIC <= {_MIN_DELTA_BIC:g})"
            else:
                detail += f" (fraction not shown to exceed {_MIN_MIXTURE_FRACTION:g})"
            row = _row(
                a,
                subject,
                effect=pi,
                ci_low=lo,
                ci_high=hi,
                p_value=p_value,
                n_cells=n_tot,
                verdict=VIOLATED if violated else HOLDS,
                detail=detail,
            )
            out.append(_MixtureResult(cond, context, cells, row, _posterior(z, pi, mu, sd)))
    return out


# ---------------------------------------------------------------------------------------------------- time
def _effect_norm(pb_p, v_p, pb_c, v_c) -> tuple[float, float]:
    r"""Debiased effect norm and its z-score against "no effect".

    :math:`\lVert\Delta\rVert^2 - \sum_g v_g` has mean 0 and standard deviation about
    :math:`(2\sum_g v_g^2)^{1/2}` when there is no effect (a sum of scaled :math:`\chi^2_1` variables).
    """
    v = v_p + v_c
    excess = float(((pb_p - pb_c) ** 2).sum()) - float(v.sum())
    sd = float(np.sqrt(2.0 * (v**2).sum()))
    return float(np.sqrt(max(excess, 0.0))), excess / sd if sd > 0 else np.inf


def _effect_norms(pb_p, v_p, pb_c, v_c) -> np.ndarray:
    """Debiased effect norms of replicates (rows)."""
    excess = ((pb_p - pb_c) ** 2).sum(axis=-1) - (v_p + v_c).sum(axis=-1)
    return np.sqrt(np.maximum(excess, 0.0))


def _check_time(
    data: _Data, keys: dict[str, str | None], rng: np.random.Generator, n_resamples: int, alpha: float
) -> list[dict[str, Any]]:
    a = "instantaneous_perturbation"
    pert = data.design.perturbation
    if data.time is None:
        return [_row(a, "perturbations", verdict=_cannot("no time_key given: one read-out per cell"))]
    rows = []
    for context, cmask in _contexts(data, use_time=False):
        conds = sorted(set(pert.labels[cmask & pert.fit_mask & ~pert.is_control].tolist()))
        for cond in conds:
            subject = cond if not context else f"{cond} ({context})"
            times = []
            for t in np.unique(data.time[cmask]):
                tp = np.flatnonzero((pert.labels == cond) & cmask & (data.time == t))
                tc = np.flatnonzero(pert.is_control & cmask & (data.time == t))
                if len(tp) >= _MIN_CELLS and len(tc) >= _MIN_CELLS:
                    times.append((float(t), tp, tc))
            if len(times) < 2:
                why = f"perturbed and control cells (>= {_MIN_CELLS}) at only {len(times)} time point(s)"
                rows.append(_row(a, subject, verdict=_cannot(why)))
                continue
            effects, snrs = [], []
            for _, tp, tc in times:
                cells = np.concatenate([tp, tc])
                codes = np.r_[np.zeros(len(tp), dtype=int), np.ones(len(tc), dtype=int)]
                pb, v = data.pseudobulk(*data.moments(cells, codes, 2))
                e, snr = _effect_norm(pb[0], v[0], pb[1], v[1])
                effects.append(e)
                snrs.append(snr)
            (t1, p1, c1), (t2, p2, c2) = times[-2], times[-1]
            n_cells = len(p1) + len(c1) + len(p2) + len(c2)
            course = ", ".join(f"{_fmt(e)} at t={t:g}" for e, (t, _, _) in zip(effects, times, strict=True))
            if snrs[-1] < _MIN_EFFECT_Z:
                why = f"the effect at the last read-out is not above sampling noise (z = {_fmt(snrs[-1], 1)} < 3)"
                rows.append(_row(a, subject, verdict=_cannot(why), n_cells=n_cells, detail=why))
                continue
            share = 1.0 - effects[-2] / effects[-1] if effects[-1] > 0 else np.nan
            cells = np.concatenate([p1, c1, p2, c2])
            codes = np.r_[np.full(len(p1), 0), np.full(len(c1), 1), np.full(len(p2), 2), np.full(len(c2), 3)]

            def share_stat(n, s, q):
                pb, v = data.pseudobulk(n, s, q)
                e1 = _effect_norms(pb[:, 0], v[:, 0], pb[:, 1], v[:, 1])
                e2 = _effect_norms(pb[:, 2], v[:, 2], pb[:, 3], v[:, 3])
                with np.errstate(invalid="ignore", divide="ignore"):
                    return np.where(e2 > 0, 1.0 - e1 / e2, np.nan)

            boot = _per_replicate(data, cells, _bootstrap_design(codes, 4, n_resamples, rng), 4, share_stat)
            lo, hi = _recentred_interval(share, boot, alpha)
            hi = min(hi, 1.0) if np.isfinite(hi) else hi
            p_value = float(
                (1.0 + np.sum(boot - (np.nanmedian(boot) - share) <= _MAX_GROWTH_SHARE)) / (1.0 + n_resamples)
            )
            violated = np.isfinite(lo) and lo > _MAX_GROWTH_SHARE
            detail = (
                f"effect norm {course}: {_fmt(100 * share, 0)}% of the last effect appeared between t={t1:g} and "
                f"t={t2:g}"
            )
            detail += (
                " (still growing: onset delay or slow relaxation)"
                if violated
                else f" (growth not shown to exceed {100 * _MAX_GROWTH_SHARE:.0f}% of the effect)"
            )
            rows.append(
                _row(
                    a,
                    subject,
                    effect=share,
                    ci_low=lo,
                    ci_high=hi,
                    p_value=p_value,
                    n_cells=n_cells,
                    verdict=VIOLATED if violated else HOLDS,
                    detail=detail,
                )
            )
    return rows


# ---------------------------------------------------------------------------------------------------- additivity
def _interaction_stat(data: _Data, coef: np.ndarray, n_ctx: int):
    """Statistic of replicates: the interaction contrast ``coef`` per context (replicates x contexts x genes)."""

    def stat(n, s, q):
        pb, _ = data.pseudobulk(n, s, q)
        pb = pb.reshape(pb.shape[0], n_ctx, len(coef), -1)
        return np.einsum("j,rcjg->rcg", coef, pb)

    return stat


def _check_additivity(
    data: _Data, keys: dict[str, str | None], rng: np.random.Generator, n_resamples: int, alpha: float
) -> list[dict[str, Any]]:
    a = "additivity"
    pert = data.design.perturbation
    combos = sorted({lab for lab in pert.labels[pert.fit_mask] if len(pert.condition_targets.get(lab, ())) >= 2})
    if not combos:
        return [_row(a, "combinations", verdict=_cannot("no combinations in the screen"))]
    rows = []
    contexts = _contexts(data)
    for combo in combos:
        targets = pert.condition_targets[combo]
        parts_label = [combo, *targets, pert.control_label]
        coef = np.array([1.0] + [-1.0] * len(targets) + [len(targets) - 1.0])
        usable = []
        for context, cmask in contexts:
            groups = [np.flatnonzero((pert.labels == lab) & cmask) for lab in parts_label]
            if all(len(g) >= _MIN_CELLS for g in groups):
                usable.append((context, groups))
        if not usable:
            missing = [t for t in targets if not ((pert.labels == t) & pert.fit_mask).any()]
            why = (
                f"single(s) {missing} not observed"
                if missing
                else f"no context with >= {_MIN_CELLS} cells of the combination, each single and the controls"
            )
            rows.append(_row(a, combo, verdict=_cannot(why)))
            continue
        k = len(parts_label)
        all_cells, all_codes, bounds = [], [], []
        offset = 0
        for ci, (_, groups) in enumerate(usable):
            for j, g in enumerate(groups):
                all_cells.append(g)
                all_codes.append(np.full(len(g), ci * k + j))
                bounds.append((offset, offset + len(g)))
                offset += len(g)
        cells = np.concatenate(all_cells)
        codes = np.concatenate(all_codes)
        n_groups = len(usable) * k

        inter = _interaction_stat(data, coef, len(usable))

        def sq_norm(n, s, q, _inter=inter):
            return (_inter(n, s, q) ** 2).sum(axis=(1, 2))

        obs_sq = float(sq_norm(*[x[None] for x in data.moments(cells, codes, n_groups)])[0])
        # split halves: (I_1 - I_2) / 2 has the sampling variance of the full-data interaction
        half = np.zeros((n_resamples, len(cells)), dtype=bool)
        for lo_, hi_ in bounds:
            m = hi_ - lo_
            order = np.argsort(rng.random((n_resamples, m)), axis=1)
            half[:, lo_:hi_] = order < m // 2
        both = np.where(half, codes[None, :], codes[None, :] + n_groups)  # rows: first half, then second half

        def half_diff(n, s, q, _inter=inter, _k=n_groups):
            i1 = _inter(n[:, :_k], s[:, :_k], q[:, :_k])
            i2 = _inter(n[:, _k:], s[:, _k:], q[:, _k:])
            return (((i1 - i2) / 2) ** 2).sum(axis=(1, 2))

        null_sq = _per_replicate(data, cells, _label_design(both, 2 * n_groups), 2 * n_groups, half_diff)
        noise = float(np.mean(null_sq))
        ratio = float(np.sqrt(obs_sq / noise)) if noise > 0 else np.nan
        p_value = float((1.0 + np.sum(null_sq >= obs_sq)) / (1.0 + n_resamples))
        # a bootstrap replicate carries one more round of noise: remove it before taking the ratio
        b_sq = _per_replicate(data, cells, _bootstrap_design(codes, n_groups, n_resamples, rng), n_groups, sq_norm)
        boot = np.sqrt(np.maximum(b_sq - noise, 0.0) / noise) if noise > 0 else np.full(n_resamples, np.nan)
        lo, hi = _recentred_interval(ratio, boot, alpha)
        violated = p_value < alpha and lo > 1.0
        where = f" in {len(usable)} contexts" if len(usable) > 1 else ""
        detail = (
            f"|observed - sum of singles| is {_fmt(ratio)} x its sampling noise{where} (1 = additive within "
            f"noise; split-half p = {_fmt(p_value, 3)})"
        )
        rows.append(
            _row(
                a,
                combo,
                effect=ratio,
                ci_low=max(lo, 0.0),
                ci_high=hi,
                p_value=p_value,
                n_cells=len(cells),
                verdict=VIOLATED if violated else HOLDS,
                detail=detail,
            )
        )
    return rows


# ---------------------------------------------------------------------------------------------------- model
def _check_model(
    adata: AnnData, data: _Data, model: Any, rng: np.random.Generator, n_resamples: int, alpha: float
) -> list[dict[str, Any]]:
    a = "model_steady_state"
    res = np.asarray(model.get_steady_state_residual(adata), dtype=np.float64)
    pert = data.design.perturbation
    if res.shape != (pert.n_cells,):
        msg = f"The model returned {res.shape[0]} residuals for {pert.n_cells} cells; pass the data it was set up on."
        raise ValueError(msg)
    rc = res[pert.is_control]
    rp = res[pert.fit_mask & ~pert.is_control]
    if len(rc) < 2 or len(rp) < 2:
        return [_row(a, "controls vs perturbed", verdict=_cannot("fewer than 2 control or perturbed cells"))]
    ratio = float(np.median(rc) / np.median(rp)) if np.median(rp) > 0 else np.nan
    boot = np.array(
        [
            np.median(rc[rng.integers(0, len(rc), len(rc))])
            / max(np.median(rp[rng.integers(0, len(rp), len(rp))]), 1e-300)
            for _ in range(n_resamples)
        ]
    )
    lo, hi = _recentred_interval(ratio, boot, alpha)
    p_value = float(stats.mannwhitneyu(rc, rp, alternative="greater").pvalue)
    violated = p_value < alpha
    detail = (
        f"median residual |f(z)| {_fmt(float(np.median(rc)), 3)} at control cells vs {_fmt(float(np.median(rp)), 3)} "
        f"at perturbed cells; a model trained with a steady-state term pushes the control residual down, so this "
        "checks the fit rather than the data"
    )
    return [
        _row(
            a,
            "controls vs perturbed",
            effect=ratio,
            ci_low=max(lo, 0.0),
            ci_high=hi,
            p_value=p_value,
            n_cells=len(rc) + len(rp),
            verdict=VIOLATED if violated else HOLDS,
            detail=detail,
        )
    ]


# ---------------------------------------------------------------------------------------------------- public
def _validate_common(n_bootstrap: int, alpha: float) -> None:
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int | np.integer) or n_bootstrap < 1:
        msg = f"n_bootstrap={n_bootstrap!r} must be a positive integer, e.g. n_bootstrap=200."
        raise ValueError(msg)
    if isinstance(alpha, bool) or not isinstance(alpha, float | int | np.floating) or not 0.0 < float(alpha) < 1.0:
        msg = f"alpha={alpha!r} must be a number in (0, 1), e.g. alpha=0.05."
        raise ValueError(msg)
    # the smallest resampling p-value 1 / (n_bootstrap + 1) must fall strictly below alpha (verdicts need p < alpha)
    need = int(np.floor(1.0 / float(alpha) - 1.0 + 1e-9)) + 1
    if n_bootstrap < need:
        msg = (
            f"n_bootstrap={n_bootstrap} cannot give a p-value below alpha={alpha:g}: the smallest resampling "
            f"p-value is 1 / (n_bootstrap + 1). Use n_bootstrap >= {need} (200 or more for stable intervals)."
        )
        raise ValueError(msg)


def _validate_target(adata: AnnData, key_added: str, copy: bool, where: str) -> None:
    if not isinstance(adata, ad.AnnData):
        msg = f"adata must be an AnnData, got {type(adata).__name__}."
        raise TypeError(msg)
    if not isinstance(key_added, str) or not key_added:
        msg = f"key_added={key_added!r} must be a non-empty string (the {where} key to write)."
        raise ValueError(msg)
    if adata.is_view and not copy:
        msg = (
            f"adata is a view ({adata.n_obs} x {adata.n_vars}); writing {where}[{key_added!r}] would silently "
            "copy it. Pass adata.copy() or copy=True."
        )
        raise ValueError(msg)


def check_assumptions(
    adata: AnnData,
    *,
    perturbation_key: str = "perturbation",
    control_label: str = "NT",
    separator: str = "+",
    unassigned_label: str | None = "unassigned",
    batch_key: str | None = None,
    time_key: str | None = None,
    media_key: str | None = None,
    layer: str | None = None,
    counts: bool = True,
    model: Any | None = None,
    n_bootstrap: int = 200,
    alpha: float = 0.05,
    key_added: str = "assumptions",
    random_state: int = 0,
    copy: bool = False,
) -> pd.DataFrame | AnnData:
    r"""Test the hidden assumptions of perturbation models on a screen.

    Each check gives an effect size with a ``1 - alpha`` interval, a p-value where one is defined, and a verdict:
    ``"holds"``, ``"violated"`` or ``"cannot be tested: <why>"``. Genes: those with a mean count of at least
    0.05 per cell (at most the 2,000 most expressed). Intervals: cell bootstrap (``n_bootstrap`` resamples
    within each group), percentile interval re-centred on the estimate.

    **Baseline steady state (A1)** (``baseline_steady_state``, one row per medium). Control cells are grouped by
    time point (within batches when ``batch_key`` is given, so batch effects drop out) or, without
    ``time_key``, by batch. Per gene :math:`g`, the one-way ANOVA ratio of the between-group variance of the
    group means to the within-group variance of the normalised values (:math:`10^4 x/\ell`),

    .. math:: F_g = \frac{\sum_k n_k(\bar x_{kg} - \bar x_{\cdot g})^2/(K - 1)}{\sum_k\sum_{c\in k}(x_{cg} -
              \bar x_{kg})^2/(N - K)},

    is 1 on average when group means differ only by sampling noise (with batches as strata the sums run within
    each batch and the degrees of freedom add up). The effect is :math:`F = \mathrm{mean}_g F_g`; the p-value
    comes from ``n_bootstrap`` permutations of the group labels of control cells (within strata).
    ``"violated"`` when :math:`p <` ``alpha`` and the interval's lower bound exceeds 1. Without time points,
    batches are compared: a difference is
    then a batch effect or a drift, which cannot be told apart (the detail says so).

    **Media response** (``media_response``): the same statistic across media, within each time point and
    batch. ``"violated"`` (a model that ignores the medium is wrong for controls) when :math:`p <` ``alpha``
    and the interval's lower bound exceeds 1.

    **Unique attractor (A2)** (``unique_attractor``, one row per perturbation and (medium, time) context).
    Log-normalised cells (centred on their batch's controls when every batch has controls) are projected on
    the perturbation's direction (mean difference to controls on its top 50 DE genes by Welch's :math:`t`),
    two-fold cross-fitted: each half of the cells is scored by the direction learnt on the other half and
    standardised by its held-out controls, which are then :math:`N(0, 1)`. The perturbed cells' scores
    :math:`z` are fitted by a single shifted state :math:`N(\mu, \sigma^2)` and by a mixture with one component
    fixed at the control distribution (as Mixscape's not-perturbed class),

    .. math:: z \sim \pi\, N(0, 1) + (1 - \pi)\, N(\mu, \sigma^2).

    The effect is :math:`\pi`, the fraction of cells that look unperturbed (escapers, or a second attractor at
    the baseline); the p-value is the likelihood-ratio test at the boundary :math:`\pi = 0`
    (:math:`\tfrac12\chi^2_0 + \tfrac12\chi^2_1`). ``"violated"`` when the mixture wins by
    :math:`\Delta\mathrm{BIC} > 10` and the interval's lower bound of :math:`\pi` exceeds 0.05; ``"cannot be
    tested"`` when the perturbed cells move by less than one control SD on average (escapers and responders
    overlap) or there are fewer than 20 perturbed or control cells. The per-cell posterior
    :math:`P(\text{perturbed}\mid z_c) = (1-\pi)N(z_c;\mu,\sigma^2)/[\pi N(z_c;0,1) + (1-\pi)N(z_c;\mu,\sigma^2)]`
    is an estimate of each cell's knock-down (0 = escaper), stored in ``"posterior"``; write it to ``obs``
    with :func:`estimate_efficacy`.

    **Instantaneous perturbation** (``instantaneous_perturbation``, per perturbation and medium; needs
    ``time_key``). At each time point the effect norm is the debiased distance of the perturbation's
    pseudobulk to the same-time controls, :math:`E_t = (\lVert\bar y_p - \bar y_\varnothing\rVert^2 - \sum_g
    (v_{pg} + v_{\varnothing g}))^{1/2}`. The effect is the share of the last effect that appeared over the
    last interval, :math:`1 - E_{t_{K-1}}/E_{t_K}` (0: settled; negative: decaying). ``"violated"`` when the
    interval's lower bound exceeds 0.1 (the effect still grew by more than 10 % of its size); the p-value is the
    bootstrap share of replicates at or below 0.1. An onset delay and a slow relaxation of the network both
    make effects grow, so the check answers "have the cells settled at their post-perturbation state by the
    last read-out?", the premise of reading cells as post-intervention equilibria; it cannot tell the two
    causes apart, and read-outs short compared with the slowest degradation times flag instantaneous
    perturbations too. ``"cannot be tested"`` when the effect at the last read-out is not above noise: its
    debiased squared norm is less than 3 null standard deviations, :math:`(2\sum_g v_g^2)^{1/2}`.

    **Additivity** (``additivity``, per combination whose singles and controls are observed in the same
    contexts). The genetic interaction :math:`I = \bar y_{A+B} - \bar y_A - \bar y_B + \bar y_\varnothing` (per
    context, summed in squares over contexts) is compared with its noise floor
    :math:`N = E\lVert(I^{(1)} - I^{(2)})/2\rVert^2` over ``n_bootstrap`` random splits of each group into
    halves (the half-difference has the sampling variance of the full-data :math:`I`). The effect is
    :math:`\lVert I\rVert/\sqrt N` (1 = additive within noise); the p-value is the share of split-half noise
    norms at least :math:`\lVert I\rVert^2`. ``"violated"`` when :math:`p <` ``alpha`` and the interval's
    lower bound exceeds 1. A response shared
    by every perturbed cell (absent from the controls) is not additive at the pseudobulk level either, and is
    flagged.

    **Model** (``model_steady_state``, with ``model``): the steady-state residual
    :math:`\lVert f_\theta(z_c)\rVert` of :meth:`~scmech.model.SemiMechVI.get_steady_state_residual`, median
    over control cells divided by the median over perturbed cells; p-value of a one-sided Mann–Whitney test
    (controls larger). ``"violated"`` when :math:`p <` ``alpha``: the learned field moves controls more than
    perturbed cells.

    Parameters
    ----------
    adata
        Annotated data matrix with raw counts in ``X`` (or ``layer``).
    perturbation_key
        ``obs`` column with perturbation labels (targets, ``A+B`` combinations, control and unassigned labels).
    control_label
        Label of non-targeting control cells.
    separator
        Separator between the targets of a combination.
    unassigned_label
        Label of cells without a usable guide call; they are left out.
    batch_key
        ``obs`` column with the wet-lab batch (lane, replicate).
    time_key
        ``obs`` column with the time since perturbation.
    media_key
        ``obs`` column with the medium.
    layer
        Layer with the counts; ``X`` when ``None``.
    counts
        Whether the matrix holds raw counts (checked); ``False`` for log-normalised values, which are then
        averaged as they are.
    model
        A trained :class:`~scmech.model.SemiMechVI` set up on ``adata``; adds the model-based check.
    n_bootstrap
        Number of bootstrap resamples, permutations and random splits per test.
    alpha
        Significance level of the verdicts; intervals cover ``1 - alpha``.
    key_added
        Key under ``adata.uns["scmech"]``.
    random_state
        Seed of the resampling.
    copy
        Return a copy of ``adata`` with the result instead of writing into ``adata``.

    Returns
    -------
    The result table (``copy=False``) or the copy of ``adata`` holding it (``copy=True``). Columns:
    ``assumption`` (a key of :data:`ASSUMPTIONS`), ``subject`` (controls, a medium, a perturbation, a
    combination), ``statistic`` (what ``effect`` measures), ``effect``, ``ci_low``, ``ci_high``, ``p_value``
    (NaN where not defined), ``n_cells``, ``verdict`` and ``detail`` (plain language).

    Writes ``adata.uns["scmech"][key_added]``, a dict with ``"table"`` (the result), ``"posterior"`` (a
    DataFrame indexed by the ``obs_names`` of perturbed cells of tested perturbations, columns ``condition``,
    ``context`` and ``p_perturbed``) and ``"params"`` (the arguments). Nothing else is written.

    Examples
    --------
    >>> adata = scmech.datasets.papalexi2021()
    >>> table = scmech.tl.check_assumptions(adata, batch_key="bio_rep")
    >>> print(scmech.tl.report_assumptions(table))
    """
    _validate_common(n_bootstrap, alpha)
    _validate_target(adata, key_added, copy, 'adata.uns["scmech"]')
    if model is not None and not hasattr(model, "get_steady_state_residual"):
        msg = (
            f"model={type(model).__name__} is not a trained scmech.model.SemiMechVI; pass one set up on adata, "
            "or model=None for the data checks only."
        )
        raise TypeError(msg)
    data = _prepare(
        adata,
        perturbation_key=perturbation_key,
        control_label=control_label,
        separator=separator,
        unassigned_label=unassigned_label,
        batch_key=batch_key,
        time_key=time_key,
        media_key=media_key,
        layer=layer,
        counts=counts,
    )
    keys = data.design.keys
    n = int(n_bootstrap)
    seeds = np.random.SeedSequence(int(random_state)).spawn(6)
    rngs = [np.random.default_rng(s) for s in seeds]
    rows: list[dict[str, Any]] = []
    rows += _check_baseline(data, keys, rngs[0], n, alpha)
    rows += _check_media(data, keys, rngs[1], n, alpha)
    mixtures = _mixture_checks(data, rngs[2], n, alpha)
    if mixtures:
        rows += [m.row for m in mixtures]
    else:
        rows.append(_row("unique_attractor", "perturbations", verdict=_cannot("no perturbed cells")))
    rows += _check_time(data, keys, rngs[3], n, alpha)
    rows += _check_additivity(data, keys, rngs[4], n, alpha)
    if model is not None:
        rows += _check_model(adata, data, model, rngs[5], n, alpha)
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["n_cells"] = table["n_cells"].astype(np.int64)
    posterior = _posterior_frame(adata, mixtures)
    params = {
        "perturbation_key": perturbation_key,
        "control_label": data.design.perturbation.control_label,
        "separator": separator,
        "unassigned_label": unassigned_label if unassigned_label is not None else "",
        "batch_key": batch_key if batch_key is not None else "",
        "time_key": time_key if time_key is not None else "",
        "media_key": media_key if media_key is not None else "",
        "layer": layer if layer is not None else "",
        "counts": bool(counts),
        "model": type(model).__name__ if model is not None else "",
        "n_bootstrap": n,
        "alpha": float(alpha),
        "random_state": int(random_state),
        "n_genes": len(data.genes),
    }
    adata = adata.copy() if copy else adata
    adata.uns.setdefault(SCMECH_ADATA_KEYS.UNS, {})[key_added] = {
        "table": table,
        "posterior": posterior,
        "params": params,
    }
    return adata if copy else table


def _posterior_frame(adata: AnnData, mixtures: list[_MixtureResult]) -> pd.DataFrame:
    parts = [
        pd.DataFrame(
            {"condition": m.condition, "context": m.context, "p_perturbed": m.posterior},
            index=pd.Index(np.asarray(adata.obs_names)[m.cells]),
        )
        for m in mixtures
        if m.posterior is not None
    ]
    if not parts:
        return pd.DataFrame({"condition": [], "context": [], "p_perturbed": []}, index=pd.Index([], dtype=str))
    return pd.concat(parts)


def estimate_efficacy(
    adata: AnnData,
    *,
    perturbation_key: str = "perturbation",
    control_label: str = "NT",
    separator: str = "+",
    unassigned_label: str | None = "unassigned",
    batch_key: str | None = None,
    time_key: str | None = None,
    media_key: str | None = None,
    layer: str | None = None,
    counts: bool = True,
    key_added: str = SCMECH_ADATA_KEYS.EFFICACY_OBS,
    random_state: int = 0,
    copy: bool = False,
) -> pd.Series | AnnData:
    r"""Per-cell knock-down estimate: the posterior probability of being perturbed (0 = escaper).

    Runs the unique-attractor mixture of :func:`check_assumptions` (cross-fitted projection on each
    perturbation's direction; control-fixed two-component mixture) and writes each perturbed cell's
    posterior :math:`P(\text{perturbed}\mid z_c)`, so that the column can be registered as ``efficacy_key`` of
    :meth:`~scmech.model.SemiMechVI.setup_anndata`. It is a probability of belonging to the responding
    population, not a graded knock-down: partial responders get intermediate values.

    Cells of perturbations that cannot be tested (fewer than 20 cells, or a shift of less than one control SD,
    where escapers and responders overlap) get 1, the model's default of a full effect; control and
    unassigned cells get 0.

    Parameters
    ----------
    adata
        Annotated data matrix with raw counts in ``X`` (or ``layer``).
    perturbation_key, control_label, separator, unassigned_label, batch_key, time_key, media_key, layer, counts
        As in :func:`check_assumptions`.
    key_added
        ``obs`` column to write.
    random_state
        Seed of the cross-fitting split.
    copy
        Return a copy of ``adata`` instead of writing into ``adata``.

    Returns
    -------
    The efficacy per cell (a Series indexed by ``obs_names``) when ``copy=False``, else the copy of ``adata``.
    Writes ``adata.obs[key_added]`` (``float64`` in :math:`[0, 1]`) and nothing else.

    Examples
    --------
    >>> scmech.tl.estimate_efficacy(adata, batch_key="bio_rep")
    >>> scmech.model.SemiMechVI.setup_anndata(adata, efficacy_key="scmech_efficacy", ...)
    """
    _validate_target(adata, key_added, copy, "adata.obs")
    data = _prepare(
        adata,
        perturbation_key=perturbation_key,
        control_label=control_label,
        separator=separator,
        unassigned_label=unassigned_label,
        batch_key=batch_key,
        time_key=time_key,
        media_key=media_key,
        layer=layer,
        counts=counts,
    )
    rng = np.random.default_rng(np.random.SeedSequence(int(random_state)).spawn(6)[2])
    mixtures = _mixture_checks(data, rng, 1, 0.05)
    pert = data.design.perturbation
    eff = np.where(pert.fit_mask & ~pert.is_control, 1.0, 0.0)
    for m in mixtures:
        if m.posterior is not None:
            eff[m.cells] = m.posterior
    eff = np.clip(eff, 0.0, 1.0)
    series = pd.Series(eff, index=adata.obs_names.copy(), name=key_added, dtype=np.float64)
    adata = adata.copy() if copy else adata
    adata.obs[key_added] = series.to_numpy()
    return adata if copy else series


def report_assumptions(result: pd.DataFrame | AnnData, *, key: str = "assumptions", max_subjects: int = 5) -> str:
    """Short plain-text report of :func:`check_assumptions`.

    Parameters
    ----------
    result
        The table returned by ``check_assumptions``, or an AnnData holding it in ``uns["scmech"][key]``.
    key
        ``uns["scmech"]`` key (AnnData input).
    max_subjects
        At most this many subjects are named per assumption and verdict.

    Returns
    -------
    The report, one paragraph per assumption.

    Examples
    --------
    >>> print(scmech.tl.report_assumptions(adata))
    """
    table = _get_table(result, key)
    lines = ["Assumption checks (scmech.tl.check_assumptions)", ""]
    for a, statement in ASSUMPTIONS.items():
        sub = table[table["assumption"] == a]
        if sub.empty:
            continue
        verdicts = sub["verdict"].astype(str)
        kind = np.where(verdicts == VIOLATED, VIOLATED, np.where(verdicts == HOLDS, HOLDS, CANNOT))
        if len(sub) == 1:
            r = sub.iloc[0]
            text = f"{statement}: {r['verdict'].upper() if r['verdict'] in (HOLDS, VIOLATED) else r['verdict']}."
            if np.isfinite(r["effect"]):
                text += (
                    f" {r['statistic']} = {_fmt(r['effect'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"
                    + (f", p = {_fmt(r['p_value'], 3)}" if np.isfinite(r["p_value"]) else "")
                    + "."
                )
            if r["detail"] and r["detail"] not in r["verdict"]:
                text += f" {r['detail'][0].upper()}{r['detail'][1:]}."
            lines.append(f"- {text}")
            continue
        counts = {v: int((kind == v).sum()) for v in (VIOLATED, HOLDS, CANNOT)}
        head = f"- {statement}: " + ", ".join(f"{counts[v]} {v}" for v in (VIOLATED, HOLDS, CANNOT) if counts[v])
        contexts = sub["subject"].astype(str).str.endswith(")").any() and a != "baseline_steady_state"
        head += f" (of {len(sub)} {_plural(a)}{' and contexts' if contexts else ''})."
        lines.append(head)
        for v in (VIOLATED, HOLDS):
            part = sub[kind == v].sort_values("effect", ascending=False, key=lambda s: s.abs())
            if part.empty:
                continue
            named = ", ".join(
                f"{r.subject} {_fmt(r.effect)} [{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]"
                for r in part.head(max_subjects).itertuples()
            )
            more = f", +{len(part) - max_subjects} more" if len(part) > max_subjects else ""
            lines.append(f"    {v} ({part['statistic'].iloc[0]}): {named}{more}")
        cannot = sub[kind == CANNOT]
        if not cannot.empty:
            reasons = cannot["verdict"].str.replace(f"{CANNOT}: ", "", regex=False)
            reasons = reasons.str.replace(r"[-\d.]+ control SDs", "<1 control SD", regex=True)
            reasons = reasons.str.replace(r"\(effect norm .*\)", "", regex=True)
            reasons = reasons.str.replace(r"\(z = [-\d.]+ < 3\)", "(z < 3)", regex=True).str.strip()
            top = reasons.value_counts()
            lines.append(f"    {CANNOT}: " + "; ".join(f"{n} x {why}" for why, n in top.head(3).items()))
    return "\n".join(lines)


def _plural(assumption: str) -> str:
    return {
        "baseline_steady_state": "media",
        "unique_attractor": "perturbations",
        "instantaneous_perturbation": "perturbations",
        "additivity": "combinations",
    }.get(assumption, "subjects")


def _get_table(result: pd.DataFrame | AnnData, key: str) -> pd.DataFrame:
    if isinstance(result, ad.AnnData):
        stored = result.uns.get(SCMECH_ADATA_KEYS.UNS, {}).get(key)
        if stored is None:
            msg = f"adata.uns['scmech'] has no {key!r}; run scmech.tl.check_assumptions(adata, key_added={key!r})."
            raise KeyError(msg)
        table = stored["table"]
    elif isinstance(result, pd.DataFrame):
        table = result
    else:
        msg = f"Pass the table of check_assumptions or an AnnData holding it, got {type(result).__name__}."
        raise TypeError(msg)
    need = {"assumption", "subject", "effect", "ci_low", "ci_high", "verdict"}
    if not need <= set(table.columns):
        msg = f"The table lacks columns {sorted(need - set(table.columns))}; pass check_assumptions' output."
        raise KeyError(msg)
    return table
