r"""Instantaneous perturbation: effects have settled by the last read-out.

Per perturbation and medium (needs ``time_key``), the effect norm at each time point is the debiased distance
of the perturbation's pseudobulk to the same-time controls, and the effect size is the share of the last effect
that appeared over the last interval, :math:`1 - E_{t_{K-1}}/E_{t_K}`. An onset delay and a slow relaxation
of the network both make effects grow; the check cannot tell them apart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ._data import _contexts
from ._registry import _MIN_CELLS, HOLDS, VIOLATED, _cannot, _fmt, _row
from ._stats import _bootstrap_design, _per_replicate, _recentred_interval

if TYPE_CHECKING:
    from ._data import _Data

_A = "instantaneous_perturbation"
#: the effect counts as still growing when more than this share of it appeared over the last interval
_MAX_GROWTH_SHARE = 0.1
#: the effect at the last read-out must have at least this z-score against "no effect" to be compared
_MIN_EFFECT_Z = 3.0

#: a time point: its value, the perturbed cells and the control cells read out then
_TimePoint = tuple[float, np.ndarray, np.ndarray]


def _effect_norm(pb_p: np.ndarray, v_p: np.ndarray, pb_c: np.ndarray, v_c: np.ndarray) -> tuple[float, float]:
    r"""Debiased effect norm and its z-score against "no effect".

    :math:`\lVert\Delta\rVert^2 - \sum_g v_g` has mean 0 and standard deviation about
    :math:`(2\sum_g v_g^2)^{1/2}` when there is no effect (a sum of scaled :math:`\chi^2_1` variables).
    """
    v = v_p + v_c
    excess = float(((pb_p - pb_c) ** 2).sum()) - float(v.sum())
    sd = float(np.sqrt(2.0 * (v**2).sum()))
    return float(np.sqrt(max(excess, 0.0))), excess / sd if sd > 0 else np.inf


def _effect_norms(pb_p: np.ndarray, v_p: np.ndarray, pb_c: np.ndarray, v_c: np.ndarray) -> np.ndarray:
    """Debiased effect norms of replicates (rows)."""
    excess = ((pb_p - pb_c) ** 2).sum(axis=-1) - (v_p + v_c).sum(axis=-1)
    return np.sqrt(np.maximum(excess, 0.0))


def _check_time(
    data: _Data, keys: dict[str, str | None], rng: np.random.Generator, n_resamples: int, alpha: float
) -> list[dict[str, Any]]:
    """Rows of the instantaneous-perturbation check, one per perturbation and medium.

    Parameters
    ----------
    data
        The screen.
    keys
        The ``obs`` keys of the design (unused; the same signature as the other checks).
    rng
        Generator of the bootstrap resamples.
    n_resamples
        Number of bootstrap resamples.
    alpha
        The intervals cover ``1 - alpha``.

    Returns
    -------
    The result rows.
    """
    pert = data.design.perturbation
    if data.time is None:
        return [_row(_A, "perturbations", verdict=_cannot("no time_key given: one read-out per cell"))]
    rows = []
    for context, cmask in _contexts(data, use_time=False):
        conds = sorted(set(pert.labels[cmask & pert.fit_mask & ~pert.is_control].tolist()))
        for cond in conds:
            subject = cond if not context else f"{cond} ({context})"
            rows.append(_check_condition(data, subject, _time_points(data, cond, cmask), rng, n_resamples, alpha))
    return rows


def _time_points(data: _Data, cond: str, cmask: np.ndarray) -> list[_TimePoint]:
    """Time points of the context at which ``cond`` and the controls both have at least ``_MIN_CELLS`` cells."""
    pert = data.design.perturbation
    times = []
    for t in np.unique(data.time[cmask]):
        tp = np.flatnonzero((pert.labels == cond) & cmask & (data.time == t))
        tc = np.flatnonzero(pert.is_control & cmask & (data.time == t))
        if len(tp) >= _MIN_CELLS and len(tc) >= _MIN_CELLS:
            times.append((float(t), tp, tc))
    return times


def _effects_over_time(data: _Data, times: list[_TimePoint]) -> tuple[list[float], list[float]]:
    """Debiased effect norm and its z-score against "no effect" at each time point."""
    effects, snrs = [], []
    for _, tp, tc in times:
        cells = np.concatenate([tp, tc])
        codes = np.r_[np.zeros(len(tp), dtype=int), np.ones(len(tc), dtype=int)]
        pb, v = data.pseudobulk(*data.moments(cells, codes, 2))
        e, snr = _effect_norm(pb[0], v[0], pb[1], v[1])
        effects.append(e)
        snrs.append(snr)
    return effects, snrs


def _check_condition(
    data: _Data, subject: str, times: list[_TimePoint], rng: np.random.Generator, n_resamples: int, alpha: float
) -> dict[str, Any]:
    """Row of one perturbation in one medium: the growth share of its effect over the last interval."""
    if len(times) < 2:
        why = f"perturbed and control cells (>= {_MIN_CELLS}) at only {len(times)} time point(s)"
        return _row(_A, subject, verdict=_cannot(why))
    effects, snrs = _effects_over_time(data, times)
    (t1, p1, c1), (t2, p2, c2) = times[-2], times[-1]
    n_cells = len(p1) + len(c1) + len(p2) + len(c2)
    if snrs[-1] < _MIN_EFFECT_Z:
        why = f"the effect at the last read-out is not above sampling noise (z = {_fmt(snrs[-1], 1)} < 3)"
        return _row(_A, subject, verdict=_cannot(why), n_cells=n_cells, detail=why)
    share = 1.0 - effects[-2] / effects[-1] if effects[-1] > 0 else np.nan
    boot = _bootstrap_share(data, times[-2], times[-1], rng, n_resamples)
    lo, hi = _recentred_interval(share, boot, alpha)
    hi = min(hi, 1.0) if np.isfinite(hi) else hi
    p_value = float((1.0 + np.sum(boot - (np.nanmedian(boot) - share) <= _MAX_GROWTH_SHARE)) / (1.0 + n_resamples))
    violated = np.isfinite(lo) and lo > _MAX_GROWTH_SHARE
    course = ", ".join(f"{_fmt(e)} at t={t:g}" for e, (t, _, _) in zip(effects, times, strict=True))
    detail = f"effect norm {course}: {_fmt(100 * share, 0)}% of the last effect appeared between t={t1:g} and t={t2:g}"
    detail += (
        " (still growing: onset delay or slow relaxation)"
        if violated
        else f" (growth not shown to exceed {100 * _MAX_GROWTH_SHARE:.0f}% of the effect)"
    )
    verdict = VIOLATED if violated else HOLDS
    return _row(
        _A,
        subject,
        effect=share,
        ci_low=lo,
        ci_high=hi,
        p_value=p_value,
        n_cells=n_cells,
        verdict=verdict,
        detail=detail,
    )


def _bootstrap_share(
    data: _Data, before: _TimePoint, last: _TimePoint, rng: np.random.Generator, n_resamples: int
) -> np.ndarray:
    """Growth share of bootstrap resamples of the cells of the last two time points (within each group)."""
    (_, p1, c1), (_, p2, c2) = before, last
    cells = np.concatenate([p1, c1, p2, c2])
    codes = np.r_[np.full(len(p1), 0), np.full(len(c1), 1), np.full(len(p2), 2), np.full(len(c2), 3)]

    def share_stat(n: np.ndarray, s: np.ndarray, q: np.ndarray) -> np.ndarray:
        pb, v = data.pseudobulk(n, s, q)
        e1 = _effect_norms(pb[:, 0], v[:, 0], pb[:, 1], v[:, 1])
        e2 = _effect_norms(pb[:, 2], v[:, 2], pb[:, 3], v[:, 3])
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(e2 > 0, 1.0 - e1 / e2, np.nan)

    return _per_replicate(data, cells, _bootstrap_design(codes, 4, n_resamples, rng), 4, share_stat)
