r"""Unique attractor (A2): each perturbed population is one state.

Per perturbation and (medium, time) context, log-normalised cells (centred on their batch's controls when
every batch has controls) are projected on the perturbation's direction, two-fold cross-fitted
(:func:`_cross_fitted_scores`), so that held-out controls are :math:`N(0, 1)`. The perturbed cells' scores are
fitted by one shifted state and by the control-fixed mixture of :mod:`._mixture`; the effect is the mixture's
unperturbed fraction :math:`\pi` (escapers, or a second attractor at the baseline), and each tested cell gets
its posterior probability of being perturbed (used by :func:`~scmech.tl.estimate_efficacy`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats

from ._data import _contexts
from ._mixture import _em, _fit_mixture, _norm_logpdf, _posterior
from ._registry import HOLDS, VIOLATED, _cannot, _fmt, _row
from ._stats import _CHUNK_VALUES, _recentred_interval

if TYPE_CHECKING:
    from ._data import _Data

_A = "unique_attractor"
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


@dataclass
class _MixtureResult:
    """Outcome of the unique-attractor check of one perturbation in one context."""

    condition: str
    context: str
    cells: np.ndarray  # indices of the perturbed cells
    row: dict[str, Any]
    posterior: np.ndarray | None  # P(perturbed) per perturbed cell, None when not tested


@dataclass
class _Controls:
    """Control cells of a context: indices, log values (batch-centred when possible) and per-batch centres."""

    cells: np.ndarray
    x: np.ndarray | None
    centre_by_batch: dict[str, np.ndarray] | None


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


def _mixture_checks(data: _Data, rng: np.random.Generator, n_resamples: int, alpha: float) -> list[_MixtureResult]:
    """Unique-attractor check of every perturbation in every (medium, time) context.

    Parameters
    ----------
    data
        The screen.
    rng
        Generator; split into one stream for the cross-fitting and one for the bootstrap, so that the
        cross-fitting splits (and so the posteriors) do not depend on ``n_resamples``.
    n_resamples
        Number of bootstrap resamples of the unperturbed fraction.
    alpha
        The intervals cover ``1 - alpha``.

    Returns
    -------
    One result per perturbation and context, in context then label order.
    """
    pert = data.design.perturbation
    out: list[_MixtureResult] = []
    rng, rng_boot = rng.spawn(2)
    for context, cmask in _contexts(data):
        conds = sorted(set(pert.labels[cmask & pert.fit_mask & ~pert.is_control].tolist()))
        if not conds:
            continue
        controls = _context_controls(data, cmask)
        for cond in conds:
            cells = np.flatnonzero((pert.labels == cond) & cmask)
            out.append(_check_condition(data, cond, context, cells, controls, rng, rng_boot, n_resamples, alpha))
    return out


def _context_controls(data: _Data, cmask: np.ndarray) -> _Controls:
    """Collect the controls of a context, centred on their batch's mean when every batch has 5 or more."""
    pert = data.design.perturbation
    ctrl_cells = np.flatnonzero(pert.is_control & cmask)
    xc_full = data.log_dense(ctrl_cells) if len(ctrl_cells) else None
    centre_by_batch = None
    if data.batch is not None and len(ctrl_cells):
        bc = pd.Series(data.batch[ctrl_cells]).value_counts()
        if (bc >= 5).all() and set(pd.unique(data.batch[cmask & pert.fit_mask])) <= set(bc.index):
            centre_by_batch = {b: xc_full[data.batch[ctrl_cells] == b].mean(axis=0) for b in bc.index}
    xc = xc_full
    if centre_by_batch is not None:
        xc = xc_full - np.vstack([centre_by_batch[b] for b in data.batch[ctrl_cells]])
    return _Controls(ctrl_cells, xc, centre_by_batch)


def _check_condition(
    data: _Data,
    cond: str,
    context: str,
    cells: np.ndarray,
    controls: _Controls,
    rng: np.random.Generator,
    rng_boot: np.random.Generator,
    n_resamples: int,
    alpha: float,
) -> _MixtureResult:
    """Unique-attractor check of the perturbed ``cells`` of ``cond`` against the context's controls."""
    subject = cond if not context else f"{cond} ({context})"
    n_ctrl = len(controls.cells)
    n_tot = len(cells) + n_ctrl
    if len(cells) < _MIN_CELLS_MIXTURE or n_ctrl < _MIN_CELLS_MIXTURE:
        why = f"fewer than {_MIN_CELLS_MIXTURE} perturbed ({len(cells)}) or control ({n_ctrl}) cells"
        return _MixtureResult(cond, context, cells, _row(_A, subject, verdict=_cannot(why), n_cells=n_tot), None)
    xp = data.log_dense(cells)
    if controls.centre_by_batch is not None:
        xp = xp - np.vstack([controls.centre_by_batch[b] for b in data.batch[cells]])
    zp, _ = _cross_fitted_scores(xp, controls.x, rng, _N_DE_GENES)
    shift = float(np.mean(zp))
    if abs(shift) < _MIN_SEPARATION:
        why = (
            f"the perturbation moves cells by only {_fmt(shift)} control SDs along its own direction; "
            "escapers and responders overlap"
        )
        row = _row(_A, subject, verdict=_cannot(why), n_cells=n_tot, detail=why)
        return _MixtureResult(cond, context, cells, row, None)
    z = zp if shift > 0 else -zp
    row, (pi, mu, sd) = _mixture_row(z, subject, n_tot, rng_boot, n_resamples, alpha)
    return _MixtureResult(cond, context, cells, row, _posterior(z, pi, mu, sd))


def _mixture_row(
    z: np.ndarray, subject: str, n_tot: int, rng_boot: np.random.Generator, n_resamples: int, alpha: float
) -> tuple[dict[str, Any], tuple[float, float, float]]:
    """Fit the mixture to the scores ``z``, test it against one shifted state, and the row with ``(pi, mu, sd)``."""
    pi, mu, sd, ll2 = _fit_mixture(z)
    ll1 = float(_norm_logpdf(z, float(z.mean()), max(float(z.std()), 0.05)).sum())
    lr = max(2.0 * (ll2 - ll1), 0.0)
    delta_bic = lr - np.log(len(z))
    # likelihood-ratio test at the boundary pi = 0: 1/2 chi2_0 + 1/2 chi2_1
    p_value = float(0.5 * stats.chi2.sf(lr, 1)) if lr > 0 else 1.0
    boot = _bootstrap_fraction(z, pi, mu, sd, rng_boot, n_resamples)
    lo, hi = _recentred_interval(pi, boot, alpha)
    lo, hi = max(lo, 0.0), min(hi, 1.0)
    violated = delta_bic > _MIN_DELTA_BIC and lo > _MIN_MIXTURE_FRACTION
    row = _row(
        _A,
        subject,
        effect=pi,
        ci_low=lo,
        ci_high=hi,
        p_value=p_value,
        n_cells=n_tot,
        verdict=VIOLATED if violated else HOLDS,
        detail=_detail(pi, mu, sd, delta_bic, violated),
    )
    return row, (pi, mu, sd)


def _bootstrap_fraction(
    z: np.ndarray, pi: float, mu: float, sd: float, rng: np.random.Generator, n_resamples: int
) -> np.ndarray:
    """Unperturbed fraction of ``n_resamples`` bootstrap resamples of ``z``, EM started at the fit (in chunks)."""
    boot = np.empty(n_resamples)
    step = max(1, _CHUNK_VALUES // len(z))
    for b0 in range(0, n_resamples, step):
        b1 = min(n_resamples, b0 + step)
        zb = z[rng.integers(0, len(z), (b1 - b0, len(z)))]
        ones = np.ones(b1 - b0)
        boot[b0:b1] = _em(zb, ones * max(pi, 0.02), ones * mu, ones * sd, n_iter=100)[0]
    return boot


def _detail(pi: float, mu: float, sd: float, delta_bic: float, violated: bool) -> str:
    """Plain-language detail: the two states, the BIC difference and why the verdict was reached."""
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
    return detail
