r"""Prediction intervals of unseen targets and combinations: how far the training data stray from the same reference.

A target without training cells is predicted from the training targets: its anchor is their precision-weighted mean,
the observed shared response (:class:`~scmech.model._anchoring.UnseenTarget`). How far its observation may lie from
that reference is what the training targets show, each against the weighted mean of the others: the leave-one-out
(jackknife) residuals (:func:`jackknife_residuals`). Were the unseen target exchangeable with the training targets,
its residual would be one more draw of the same distribution, and the conformal rank rule (:func:`conformal_bounds`;
Vovk, Gammerman and Shafer 2005; Lei et al., J. Am. Stat. Assoc. 113, 1094-1111, 2018) bounds it with the requested
probability per gene, whatever that distribution's shape: no normal approximation of a spread that a few strong
targets make heavy-tailed. With leave-one-out residuals the probability holds approximately (the jackknife; the
jackknife+ of Barber et al., Ann. Stat. 49, 486-507, 2021, guarantees at least 1 - 2 alpha), on average over
targets and genes, never for each target.

A combination whose singles were observed is bounded the same way around its observed singles added, by the
training combinations' observed interactions (:func:`~scmech.model._anchoring.observed_interaction`): observations
only, so the rule is exact split conformal there.

The model moves each prediction away from its reference (its specific change, the calibrated interaction, the
shrinkage towards its read-outs), which the residuals do not see: ``predict`` widens the bounds to hold both the
reference's and the prediction's (:class:`~scmech.model._prediction_intervals.IntervalMixin`). With too few training
rows for the level the bound is infinite: :math:`n` residuals cannot bound a draw beyond rank :math:`n`.

The own gene of a target whose gene is measured is knocked down by the calibrated factor; its bounds are the same
rank rule applied to the training targets' individual factors (:func:`conformal_range`).

Written here, not taken from a library: the residuals are those of this package's anchor (each training target
left out of the precision-weighted mean, and out of the mean at its own genes), and the rule is a few lines of
order statistics per gene.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["check_level", "conformal_bounds", "conformal_range", "jackknife_residuals"]


def check_level(level: float | None) -> float | None:
    """Validate a prediction interval's ``level`` (a probability strictly between 0 and 1, or ``None``).

    Returns
    -------
    The level as a float, or ``None``.
    """
    if level is None:
        return None
    if isinstance(level, bool) or not isinstance(level, numbers.Real):
        msg = f"interval={level!r} must be a number between 0 and 1 (for example 0.9), or None for no interval."
        raise TypeError(msg)
    if not (math.isfinite(level) and 0.0 < float(level) < 1.0):
        msg = f"interval={level!r} must lie strictly between 0 and 1 (for example 0.9 for a 90 % interval)."
        raise ValueError(msg)
    return float(level)


def jackknife_residuals(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    r"""Residual of each member against the weighted mean of the others, per gene (members x genes).

    ``weights`` are the members' weights in the mean at each gene (members x genes, each column summing to 1, 0
    where a member is left out, as at the genes it knocks down itself). Member :math:`q`'s residual at gene
    :math:`g` is :math:`y_{qg} - (\sum_r w_{rg} y_{rg} - w_{qg} y_{qg}) / (1 - w_{qg})`; it is NaN where
    :math:`q` is not in the mean (its weight is 0) or no other member is.
    """
    y = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    total = (w * y).sum(axis=0, keepdims=True)
    rest = 1.0 - w
    with np.errstate(divide="ignore", invalid="ignore"):
        others = (total - w * y) / rest
    out = y - others
    out[(w <= 0) | (rest <= 1e-12)] = np.nan
    return out


def _ranks(n: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks of the lower and upper bounds among ``n`` values (split conformal, one tail each)."""
    alpha = 1.0 - level
    upper = np.ceil((n + 1) * (1.0 - alpha / 2.0) - 1e-9).astype(np.int64)
    lower = np.floor((n + 1) * (alpha / 2.0) + 1e-9).astype(np.int64)
    return lower, upper


def conformal_bounds(residuals: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    r"""Lower and upper bounds per gene that a new exchangeable residual falls within with probability ``level``.

    Of the :math:`n_g` finite residuals at gene :math:`g`, the lower bound is the :math:`\lfloor (n_g + 1)
    \alpha / 2 \rfloor`-th smallest and the upper the :math:`\lceil (n_g + 1)(1 - \alpha / 2) \rceil`-th
    (:math:`\alpha = 1 -` ``level``): each tail holds a new draw with probability at most :math:`\alpha / 2`.
    A rank outside :math:`1, \dots, n_g` gives :math:`\mp\infty`. The bounds always contain 0 (the point
    prediction): a gene whose residuals all lie on one side gets 0 as its bound on the other.

    Parameters
    ----------
    residuals
        Residuals (members x genes); NaN where a member has none.
    level
        Probability in (0, 1).

    Returns
    -------
    The lower (at most 0) and upper (at least 0) bound of each column.
    """
    r = np.asarray(residuals, dtype=np.float64)
    if r.shape[0] == 0:  # nothing to bound a new residual by
        return np.full(r.shape[1], -np.inf), np.full(r.shape[1], np.inf)
    n = np.isfinite(r).sum(axis=0)
    ordered = np.sort(np.where(np.isfinite(r), r, np.inf), axis=0)  # NaN last
    lo_rank, hi_rank = _ranks(n, level)
    rows = ordered.shape[0]
    lo = np.take_along_axis(ordered, np.clip(lo_rank - 1, 0, max(rows - 1, 0))[None, :], axis=0)[0]
    hi = np.take_along_axis(ordered, np.clip(hi_rank - 1, 0, max(rows - 1, 0))[None, :], axis=0)[0]
    lo = np.where(lo_rank >= 1, lo, -np.inf)
    hi = np.where(hi_rank <= n, hi, np.inf)
    return np.minimum(lo, 0.0), np.maximum(hi, 0.0)


def conformal_range(values: np.ndarray, level: float) -> tuple[float, float]:
    """Range of a new draw exchangeable with ``values`` at ``level`` (the rank rule of :func:`conformal_bounds`).

    The bounds are order statistics of the values themselves (not residuals): ``-inf`` / ``inf`` where too few.

    Returns
    -------
    The lower and the upper bound.
    """
    v = np.sort(np.asarray(values, dtype=np.float64)[np.isfinite(values)])
    n = np.asarray([len(v)])
    lo_rank, hi_rank = (int(r[0]) for r in _ranks(n, level))
    lo = float(v[lo_rank - 1]) if lo_rank >= 1 else -np.inf
    hi = float(v[hi_rank - 1]) if hi_rank <= len(v) else np.inf
    return lo, hi
