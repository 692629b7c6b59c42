r"""How a knock-down moves its target's own gene: calibrated on what the training targets did to theirs.

A target without training cells whose gene is measured gets a direct effect on its own gene, calibrated on the
training targets' observed own-gene levels in the space predictions are scored in:

- :func:`own_gene_effect`: a scaled production (CRISPRko, CRISPRi, CRISPRa), the weighted half-sample mode of
  the factors that reproduce each training target's own level (:func:`half_sample_mode`);
- :func:`own_gene_model` and :func:`effect_reaching`: for CRISPRa, where the training targets say so, a common
  activated level instead, reached from each gene's level per gene;
- :func:`own_calibration`: the median of the decoder's learned direct effects, signed by the modality, when too
  few training targets were observed.

:class:`~scmech.model._target_map.TargetMap` holds the result; ``PostTrainingMixin`` fits it after training.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "centre_effect",
    "effect_reaching",
    "effect_weights",
    "half_sample_mode",
    "modality_sign",
    "own_calibration",
    "own_effects",
    "own_gene_effect",
    "own_gene_model",
    "shortest_half",
    "weighted_median",
]


def own_gene_effect(
    observed: np.ndarray,
    reference: np.ndarray,
    *,
    counts: bool = True,
    efficacy_levels: np.ndarray | None = None,
    bound: float = 10.0,
    spread: bool = True,
    log_base: float = math.e,
    centre: Literal["mode", "median"] = "mode",
) -> tuple[float, float, np.ndarray]:
    r"""Direct own-gene effect :math:`a` of a knock-down: the robust centre of the training targets' own effects.

    A knock-down scales its target's production, so (with counts) its normalised expression, by :math:`e^{a}`: a
    gene at log-normalised level :math:`\ell` (:math:`\log(1 + 10^4 \rho)`) moves to :math:`f_a(\ell) = \log(1 +
    e^{a}(e^{\ell} - 1))`, averaged over the efficacy levels :math:`\eta` as :math:`e^{a\eta}` when the model has
    them (on log-normalised input that is :math:`\log(1 + x)` of a non-negative expression too: scaling :math:`x`
    does the same); for other log-normalised input (centred or scaled) the effect is the shift :math:`f_a(\ell) =
    \ell + a\eta`. Each training target :math:`q` gets its own effect :math:`a_q`, the one with
    :math:`f_{a_q}(\ell_q) = y_q` (:math:`y_q` its own gene's observed level, :math:`\ell_q` its level without
    the knock-down: the controls', from which an unseen target's own gene is knocked down too). The calibrated
    effect is the centre of the :math:`a_q`: their weighted half-sample mode (:func:`half_sample_mode`), each
    :math:`a_q` weighed by how far the scored level moves per unit of :math:`a` (:math:`\partial f_a(\ell_q)/\partial
    a` at their median). A highly expressed gene, whose fall is measured well, weighs more than one barely expressed.

    The mode, not the mean or the median: a target's own gene also moves with the state its knock-down leaves. A
    knock-down that collapses a programme its own gene belongs to (a receptor, kinase or transcription factor of a
    pathway that induces it) falls far beyond its direct effect, and nothing known before the data tells an unseen
    target whether it will do the same. A mean is pulled by those few. So is a median once those beyond the
    typical fall near half of the training targets: of six targets three of which fall further, the median lies
    halfway between the groups, a fall that no target showed. The half-sample mode follows the densest group of
    effects, the typical direct effect; where the effects agree (one group) it is near their median. The spread
    reported beside it (1.4826 MAD) is the matching robust one. Written here because it is a one-parameter fit of
    this model's knock-down, not a library's estimator.

    Parameters
    ----------
    observed
        Observed own-gene level of each training target (log-normalised).
    reference
        Its level without the knock-down.
    counts
        Whether levels are :math:`\log(1 + x)` of a non-negative expression :math:`x` (counts' log-normalised
        pseudobulks, or log1p-normalised input: the knock-down scales :math:`x`) or other log-normalised values
        (the knock-down shifts them).
    efficacy_levels
        Efficacy levels the model reads out over (``None``: 1).
    bound
        Largest :math:`|a|` considered.
    spread
        Also return the spread and the targets' individual effects (``False``: NaN and an empty array).
    log_base
        Base :math:`b` of the logarithm of the levels, where they are :math:`\log_b(1 + x)`
        (:func:`~scmech.data._log_scale.log1p_base`; counts' pseudobulks use :math:`e`): :math:`f_a(\ell) =
        \log_b(1 + e^{a}(b^{\ell} - 1))`. The effect :math:`a` is a natural log factor whatever the base.
    centre
        ``"mode"`` (the weighted half-sample mode, the package's) or ``"median"`` (the weighted median, the
        calibration before it; kept so that the two can be compared).

    Returns
    -------
    The effect :math:`a`, the robust spread (1.4826 MAD) of the targets' individual effects, and those effects.
    """
    if len(observed) == 0:
        return 0.0, float("nan"), np.zeros(0)
    each = own_effects(
        observed, reference, counts=counts, efficacy_levels=efficacy_levels, bound=bound, log_base=log_base
    )
    effect = centre_effect(
        each, reference, counts=counts, efficacy_levels=efficacy_levels, log_base=log_base, centre=centre
    )
    if not spread:
        return effect, float("nan"), np.zeros(0)
    return effect, _spread(each), each


def own_effects(
    observed: np.ndarray,
    reference: np.ndarray,
    *,
    counts: bool = True,
    efficacy_levels: np.ndarray | None = None,
    bound: float = 10.0,
    log_base: float = math.e,
) -> np.ndarray:
    r"""Each training target's own effect :math:`a_q`, with :math:`f_{a_q}(\ell_q) = y_q` (:func:`own_gene_effect`).

    A target's effect depends on nothing but its own levels, so a leave-one-out calibration fits them once and
    takes :func:`centre_effect` of the others.
    """
    from scipy.optimize import minimize_scalar

    ref = np.asarray(reference, dtype=np.float64)
    eta = _levels(efficacy_levels)

    def fit(yy: float, rr: float) -> float:
        res = minimize_scalar(
            lambda a: float((yy - _level_after(np.asarray(a), rr, counts, eta, log_base)) ** 2),
            bounds=(-bound, bound),
            method="bounded",
        )
        return float(res.x)

    return np.array([fit(yy, rr) for yy, rr in zip(np.asarray(observed, dtype=np.float64), ref, strict=True)])


def centre_effect(
    each: np.ndarray,
    reference: np.ndarray,
    *,
    counts: bool = True,
    efficacy_levels: np.ndarray | None = None,
    log_base: float = math.e,
    centre: Literal["mode", "median"] = "mode",
) -> float:
    r"""Calibrated effect of :func:`own_gene_effect` from the effects :func:`own_effects` returns.

    Their weighted half-sample mode (``centre="median"``: their weighted median), each effect weighed by
    :func:`effect_weights`.
    """
    if centre not in ("mode", "median"):
        msg = f"centre={centre!r} is not one of 'mode', 'median'."
        raise ValueError(msg)
    slope = effect_weights(each, reference, counts=counts, efficacy_levels=efficacy_levels, log_base=log_base)
    return half_sample_mode(each, slope) if centre == "mode" else weighted_median(each, slope)


def effect_weights(
    each: np.ndarray,
    reference: np.ndarray,
    *,
    counts: bool = True,
    efficacy_levels: np.ndarray | None = None,
    log_base: float = math.e,
) -> np.ndarray:
    r"""Weight of each own effect in :func:`centre_effect`: :math:`\partial f_a(\ell_q)/\partial a` at their median.

    How far the scored level of each training target's gene moves per unit of effect: a highly expressed gene,
    whose fall is measured well, weighs more than one barely expressed.
    """
    ref = np.asarray(reference, dtype=np.float64)
    eta = _levels(efficacy_levels)
    middle, step = float(np.median(each)), 1e-4
    return np.abs(
        _level_after(np.asarray(middle + step), ref, counts, eta, log_base)
        - _level_after(np.asarray(middle - step), ref, counts, eta, log_base)
    ) / (2 * step)


def _levels(efficacy_levels: np.ndarray | None) -> np.ndarray:
    """Efficacy levels as a flat array (``None``: one level at 1)."""
    return np.ones(1) if efficacy_levels is None else np.asarray(efficacy_levels, dtype=np.float64).ravel()


def half_sample_mode(values: np.ndarray, weights: np.ndarray | None = None) -> float:
    r"""Weighted half-sample mode of ``values``: the centre of their densest half, narrowed until two remain.

    The half-sample mode of Bickel and Frühwirth (Computational Statistics & Data Analysis 50, 3500-3530, 2006),
    with weights: of the sorted values, keep the shortest run of neighbours that holds at least half the total
    weight, and repeat on it until at most two values remain (or the run cannot narrow); the result is their
    weighted mean. Runs of equal length are merged, so symmetric values give their centre. Values without weight
    are left out; all-zero or non-finite weights count as equal. Robust to a minority of outliers on one side, as
    the median is, and unlike the median it stays in the densest group when the others near half of the values
    (of -1.6, -1.5, -0.66, -0.4, -0.32 and -0.29 the mode is -0.305, the median -0.53, between the groups).
    scipy and numpy have no mode of continuous values; this is twenty lines.

    Parameters
    ----------
    values
        The values (any order).
    weights
        Their non-negative weights (``None``: equal).

    Returns
    -------
    The mode, NaN for no values.

    Raises
    ------
    ValueError
        When a value is not finite, or the weights are not one per value.

    Examples
    --------
    >>> half_sample_mode(np.array([-1.6, -1.5, -0.66, -0.4, -0.32, -0.29]))
    -0.305
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if len(w) != len(v):
        msg = f"half_sample_mode got {len(v)} values and {len(w)} weights; give one weight per value."
        raise ValueError(msg)
    if not np.all(np.isfinite(v)):
        msg = f"half_sample_mode got non-finite values ({v[~np.isfinite(v)][:3].tolist()}); it needs finite ones."
        raise ValueError(msg)
    if len(v) == 0:
        return float("nan")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        w = np.ones_like(v)
    keep = w > 0
    order = np.argsort(v[keep], kind="stable")
    v, w = v[keep][order], w[keep][order]
    while len(v) > 2:
        lo, hi = shortest_half(v, w)
        if hi - lo + 1 == len(v):
            break
        v, w = v[lo : hi + 1], w[lo : hi + 1]
    return float(np.sum(v * w) / np.sum(w))


def shortest_half(v: np.ndarray, w: np.ndarray) -> tuple[int, int]:
    """First and last position of the shortest run of sorted values ``v`` that holds half the weight ``w``.

    Runs of equal length are merged (the first start to the last end), so symmetric values keep their centre.
    One step of :func:`half_sample_mode`; ``v`` sorted, ``w`` positive, at least one value.
    """
    cum = np.concatenate([[0.0], np.cumsum(w)])
    # for each start i the first end j whose run i..j holds half the weight
    ends = np.searchsorted(cum, cum[:-1] + cum[-1] / 2 * (1 - 1e-12), side="left") - 1
    starts = np.flatnonzero(ends < len(v))
    ranges = v[ends[starts]] - v[starts]
    tied = starts[ranges <= ranges.min() + 1e-12 * max(1.0, float(np.abs(v).max()))]
    return int(tied.min()), int(ends[tied].max())


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """Median of ``values`` weighed by ``weights`` (the plain median when they are equal, all zero or not finite).

    numpy's weighted quantile (``method="inverted_cdf"``) gives the lower weighted median, the value at which the
    cumulative weight of the sorted values reaches half the total; the mean of it and the upper one (the same of
    the negated values) is symmetric, so that equal weights give :func:`numpy.median`.
    """
    v = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if len(v) == 0:
        return float("nan")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        w = np.ones_like(v)
    lower = np.quantile(v, 0.5, weights=w, method="inverted_cdf")
    upper = -np.quantile(-v, 0.5, weights=w, method="inverted_cdf")
    return float((lower + upper) / 2)


def _level_after(
    a: np.ndarray, level: np.ndarray, counts: bool, eta: np.ndarray, log_base: float = math.e
) -> np.ndarray:
    """Own-gene level after a knock-down of effect ``a`` from ``level`` (:func:`own_gene_effect`'s :math:`f_a`)."""
    if not counts:
        return level + a * float(eta.mean())
    factor = np.mean(np.exp(np.multiply.outer(a, eta)), axis=-1)
    k = 1.0 if log_base == math.e else math.log(log_base)
    return np.log1p(factor * np.expm1(np.maximum(level, 0.0) * k)) / k


def effect_reaching(
    level: float,
    reference: np.ndarray,
    *,
    counts: bool = True,
    efficacy_levels: np.ndarray | None = None,
    bound: float = 10.0,
    log_base: float = math.e,
) -> np.ndarray:
    r"""Activating effect :math:`a \ge 0` that moves each gene from ``reference`` to ``level`` (:math:`f_a`).

    The inverse of :func:`own_gene_effect`'s :math:`f_a` in :math:`a`, per gene: :math:`f_a(\ell) = L` has
    :math:`e^{a} = (e^{L} - 1) / (e^{\ell} - 1)` with counts, one efficacy level and the natural logarithm,
    :math:`a = (L - \ell) / \bar\eta` without counts; it is solved by bisection (:math:`f_a` increases with
    :math:`a`), which covers several efficacy levels and any base. A gene already at or above ``level`` gets 0
    (an activation does not lower its target), and a gene not expressed at all gets ``bound``.

    Parameters
    ----------
    level
        The level to reach (log-normalised).
    reference
        Each gene's level without the activation.
    counts, efficacy_levels, bound, log_base
        As in :func:`own_gene_effect`.
    """
    ref = np.asarray(reference, dtype=np.float64)
    eta = _levels(efficacy_levels)
    lo, hi = np.zeros_like(ref), np.full_like(ref, float(bound))
    below = _level_after(hi, ref, counts, eta, log_base) < level
    for _ in range(60):  # f_a is monotone in a: bisection to ~1e-17 of the bound
        mid = (lo + hi) / 2
        up = _level_after(mid, ref, counts, eta, log_base) < level
        lo, hi = np.where(up, mid, lo), np.where(up, hi, mid)
    out = np.where(below, float(bound), (lo + hi) / 2)
    return np.where(ref >= level, 0.0, out)


def own_gene_model(
    observed: np.ndarray,
    reference: np.ndarray,
    *,
    modality: str | None,
    counts: bool = True,
    efficacy_levels: np.ndarray | None = None,
    log_base: float = math.e,
) -> str:
    r"""Whether an activation scales its target's production or brings it to a common level, as the data say.

    CRISPRko and CRISPRi remove a share of their target's mRNA: the ``"scale"`` model of
    :func:`own_gene_effect`, a fall that follows the gene's expression. CRISPRa recruits activators to the
    promoter, and the fold it reaches is larger the lower the gene's basal expression (Gilbert et al., Cell 159,
    647-661, 2014): a silent gene is brought up to a level that does not follow its level in controls, which a
    scaling of a near-zero production cannot reach. For CRISPRa both models are tried on the training targets,
    each predicted from the others (leave-one-out): ``"scale"`` at the others' calibrated factor,
    ``"level"`` at the median of the others' observed own levels (never below the target's level without
    the activation).
    ``"level"`` is chosen only where its summed absolute error is smaller; every other modality, and fewer than
    4 training targets, keep ``"scale"``.

    Parameters
    ----------
    observed
        Observed own-gene level of each training target (log-normalised).
    reference
        Its level without the activation.
    modality
        The registered perturbation modality.
    counts, efficacy_levels, log_base
        As in :func:`own_gene_effect`.
    """
    y = np.asarray(observed, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if modality != "CRISPRa" or len(y) < 4:
        return "scale"
    eta = _levels(efficacy_levels)
    each = own_effects(y, ref, counts=counts, efficacy_levels=eta, log_base=log_base)
    err = {"scale": 0.0, "level": 0.0}
    for q in range(len(y)):
        others = np.arange(len(y)) != q
        a = max(0.0, centre_effect(each[others], ref[others], counts=counts, efficacy_levels=eta, log_base=log_base))
        err["scale"] += abs(y[q] - float(_level_after(np.asarray(a), ref[q : q + 1], counts, eta, log_base)[0]))
        err["level"] += abs(y[q] - max(float(np.median(y[others])), ref[q]))
    return "level" if err["level"] < err["scale"] else "scale"


def modality_sign(modality: str | None) -> float:
    """Direction a modality moves its target's own gene: -1 (CRISPRko, CRISPRi), +1 (CRISPRa), 0 when unknown."""
    return {"CRISPRko": -1.0, "CRISPRi": -1.0, "CRISPRa": 1.0}.get(modality or "", 0.0)


def own_calibration(values: list[float], modality: str | None) -> tuple[float, float]:
    """Median and robust spread of the training targets' direct own-gene effects, signed by the modality.

    CRISPRko and CRISPRi lower their target's production and CRISPRa raises it; a median of the other sign (the
    data disagree with the registered modality) is set to 0 with a warning.
    """
    if not values:
        return 0.0, float("nan")
    v = np.asarray(values, dtype=np.float64)
    med = float(np.median(v))
    sd = _spread(v)
    sign = modality_sign(modality)
    if sign and med * sign < 0:
        logger.warning(
            "The training targets' own-gene effects have median %.3g, against the registered modality %r; "
            "targets without training cells get no own-gene effect.",
            med,
            modality,
        )
        med = 0.0
    return med, sd


def _spread(values: np.ndarray) -> float:
    """Robust spread (1.4826 MAD) of three or more values; NaN for fewer.

    Two values say next to nothing about how far a third may lie (their sd was reported before, and two targets that
    happened to agree gave a near-zero spread for a knock-down that varies several-fold between targets).
    """
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 3:
        return float("nan")
    return float(1.4826 * np.median(np.abs(v - np.median(v))))
