"""``predict``'s prediction intervals: unseen targets, combinations, other media and times (conformal bounds)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from scmech._constants import SCMECH_ADATA_KEYS

from ._anchoring import Combination, Observed, OtherMedia, TimeNeighbours, UnseenTarget, _value
from ._calibration import model_free_carry
from ._intervals import conformal_bounds, conformal_range
from ._own_gene import _level_after, _levels, own_effects
from ._protocols import Context
from ._target_map import TargetMap

if TYPE_CHECKING:
    from ._observations import Observations
    from ._own_gene_fit import OwnSettings

__all__ = ["IntervalMixin", "IntervalRequest"]


@dataclass
class IntervalRequest:
    """A prediction's interval level and, once anchored, each bounded row's bounds relative to its prediction."""

    level: float
    #: row -> (lower, upper) offsets from the row's anchored value, filled by ``_anchor``
    offsets: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


class IntervalMixin:
    """Adds ``predict``'s prediction intervals (``interval=``): unseen targets, combinations, other media and times."""

    def _interval_offsets(
        self,
        logx: np.ndarray,
        requested: list,
        plans: dict,
        observations: Observations,
        level: float,
    ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Bounds of each row with an interval relative to its anchored value ``logx`` (where the anchoring is done).

        The conformal bounds of the plan's residuals hold around its model-free reference: the observed shared
        response for an unseen target (:meth:`~scmech.model._anchoring.UnseenTarget.bounds`), the observed singles
        added for a combination (:meth:`~scmech.model._anchoring.Combination.centre`; bounded by the training
        combinations' observed interactions in its context, infinitely without any). The model moved the row from
        there by ``d`` (its specific change, the calibrated interaction, the shrinkage towards its read-outs), so the
        offsets hold both the reference's bounds and the prediction's: ``lo + min(0, -d)`` and ``hi + max(0, -d)``.
        A perturbation observed at neighbouring times starts from its observed change interpolated to the row's
        time on the controls there (:func:`_interpolated`), bounded by how far the training perturbations observed at
        that time and at the same neighbours strayed from theirs (:func:`_time_bounds`).
        A perturbation carried from other media by a calibrated carry-over starts from the model-free carry-over
        (:func:`~scmech.model._calibration.model_free_carry`), bounded by the reference perturbations' residuals
        from it, each predicted without itself (:func:`~scmech.model._calibration.media_carry_residuals`; infinitely
        with fewer than 4 of them); the model's modulation moved it from there.
        Each plan's bounds are computed once, reading its members' observations once.
        """
        out = {}
        cache: dict = {}
        for i, plan in plans.items():
            if isinstance(plan, UnseenTarget):
                if plan not in cache:
                    cache[plan] = plan.bounds(observations, level)
                lo, hi, centre = cache[plan]
            elif isinstance(plan, Combination):
                if plan not in cache:
                    cache[plan] = _infinite_without(plan.residuals(observations), level, logx.shape[1])
                lo, hi = cache[plan]
                centre = plan.centre(requested[i], observations)
            elif isinstance(plan, TimeNeighbours) and plan.with_controls:
                if plan not in cache:
                    cache[plan] = _time_bounds(plan, observations, level, logx.shape[1])
                lo, hi = cache[plan]
                centre = _interpolated(plan, observations, requested[i].label)
            elif isinstance(plan, OtherMedia) and plan.calibrated(observations):
                if plan not in cache:  # the carry-over and its bounds, fitted once for the plan's rows
                    carry = model_free_carry(observations, plan.context, plan.sources, plan.reference)
                    cache[plan] = (*_infinite_without(carry.residuals(), level, logx.shape[1]), carry)
                lo, hi, carry = cache[plan]
                centre = carry.centre(observations, requested[i].label)
            else:
                continue
            d = logx[i] - centre  # the prediction less the reference the bounds hold for
            out[i] = (lo + np.minimum(0.0, -d), hi + np.maximum(0.0, -d))
        return out

    def _interval_bounds(
        self,
        logx: np.ndarray,
        requested: list,
        plans: dict,
        observations: Observations,
        amplitudes: dict[int, float],
        intervals: IntervalRequest,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return the bounds (rows x genes, ``logx``'s scale) of unseen targets and combinations; NaN elsewhere.

        Each row's offsets (:meth:`_interval_offsets`, measured where it was anchored) added to its final value,
        scaled by the row's expression amplitude where it exceeds 1, as its change from the controls is (below 1
        they are kept: the residuals hold the training targets' sampling noise too, which a weaker or silent
        target's cells keep). At the own gene of a single target whose gene is measured: the level its knock-down
        reaches at the conformal range of the training targets' own factors (:meth:`_own_gene_bounds`), moved as
        the predicted level was.
        """
        lower = np.full(logx.shape, np.nan)
        upper = np.full(logx.shape, np.nan)
        for i, (lo, hi) in intervals.offsets.items():
            a = max(amplitudes.get(i, 1.0), 1.0)  # a weaker target keeps them: its sampling noise does not shrink
            lower[i] = logx[i] + a * lo
            upper[i] = logx[i] + a * hi
        self._own_gene_bounds(logx, lower, upper, requested, plans, observations, intervals.level)
        self._context_own_bounds(logx, lower, upper, requested, plans, observations, intervals.level)
        return lower, upper

    def _context_own_bounds(
        self,
        logx: np.ndarray,
        lower: np.ndarray,
        upper: np.ndarray,
        requested: list,
        plans: dict,
        observations: Observations,
        level: float,
    ) -> None:
        """Set the bounds at the own genes of perturbations carried from other media or other times (in place).

        A knock-down moves its own gene far more than the other perturbations move it, so the residuals that bound
        the row's other genes (other perturbations at that gene) say nothing of it. Its own genes are bounded by how
        far each single-target reference perturbation's own gene lay from its model-free reference in the context:
        carried whole from the other media (:meth:`~scmech.model._own_gene_fit.OwnGeneMixin._carried_own_levels`, the
        row's own prediction there) or interpolated from the neighbouring times (:func:`_interpolated`), widened to
        hold the prediction. The references have no fitted parameters, so the residuals are exchangeable with the
        row's. Infinite with too few reference perturbations whose gene is measured.
        """
        pos = getattr(getattr(self, "target_map_", None), "gene_positions", None) or {}
        cache: dict = {}
        settings = self._own_settings() if any(isinstance(p, OtherMedia) for p in plans.values()) else None
        for i, plan in plans.items():
            genes = [pos[t] for t in requested[i].targets if t in pos]
            if not genes or not isinstance(plan, OtherMedia | TimeNeighbours) or np.isnan(lower[i]).all():
                continue

            def reference(label: str, own: list[int], plan=plan) -> np.ndarray | None:
                if isinstance(plan, OtherMedia):
                    return self._carried_own_levels(label, own, plan.context, plan.sources, observations, settings)
                return _interpolated(plan, observations, label)[own]

            if plan not in cache:
                members = plan.reference if isinstance(plan, OtherMedia) else _time_members(plan, observations)
                residuals = []
                for q in members:  # single targets: a double's two own genes are not two draws
                    targets = observations.targets.get(q, (q,))
                    own = [pos[targets[0]]] if len(targets) == 1 and targets[0] in pos else []
                    expected = reference(q, own) if own else None
                    if expected is not None:
                        residuals.extend(np.asarray(observations.get(q, plan.context).value)[own] - expected)
                cache[plan] = conformal_bounds(np.asarray(residuals, dtype=np.float64)[:, None], level)
            lo, hi = (float(v[0]) for v in cache[plan])
            centre = reference(requested[i].label, genes)
            centre = logx[i, genes] if centre is None else centre
            lower[i, genes] = np.minimum(logx[i, genes], centre) + lo
            upper[i, genes] = np.maximum(logx[i, genes], centre) + hi

    def _warn_unbounded(self, lower: np.ndarray, requested: list, plans: dict) -> None:
        """Warn about perturbed rows not observed in training that got no interval, saying how they were anchored.

        For example a target without training cells among too few training targets, a combination with such a
        target, a target seen only in training combinations, or one observed in other media or at other times.
        """
        rows = [
            i
            for i, p in enumerate(requested)
            if p.targets and not isinstance(plans.get(i), Observed) and np.isnan(lower[i]).all()
        ]
        if not rows:
            return
        how = sorted({getattr(plans.get(i), "description", "not anchored") for i in rows})
        names = [requested[i].label for i in rows]
        more = " ..." if len(names) > 5 else ""
        msg = (
            f"No prediction interval for {names[:5]}{more} (anchored as: {'; '.join(how)}; obs['anchoring'] per row): "
            "intervals are given for single targets without training cells anchored on the shared response of the "
            "training targets, for combinations of observed singles, for perturbations carried from other media "
            "by a calibrated carry-over and for perturbations observed at neighbouring times (with controls at "
            "each), which these are not. A carry-over is calibrated on at least 3 training perturbations observed "
            "in both media (4 for finite bounds)."
        )
        warnings.warn(msg, UserWarning, stacklevel=3)

    def _add_interval_layers(self, out, bounds: tuple[np.ndarray, np.ndarray], level: float) -> None:
        r"""Write the bounds to ``out.layers["lower"]`` and ``["upper"]`` and the level to its provenance.

        On counts and :math:`\log(1 + x)` input the bounds are kept at or above 0, as the prediction is (no gene
        below zero expression).
        """
        lower, upper = bounds
        if self._own_scaled():
            lower, upper = np.maximum(lower, 0.0), np.maximum(upper, 0.0)  # NaN stays NaN
        out.layers["lower"] = np.asarray(lower, dtype=np.float32)
        out.layers["upper"] = np.asarray(upper, dtype=np.float32)
        out.uns[SCMECH_ADATA_KEYS.UNS][SCMECH_ADATA_KEYS.PREDICTION_UNS]["interval"] = float(level)

    def _own_gene_bounds(
        self,
        logx: np.ndarray,
        lower: np.ndarray,
        upper: np.ndarray,
        requested: list,
        plans: dict,
        observations: Observations,
        level: float,
    ) -> None:
        """Set the bounds at the own gene of each unseen single target whose gene is measured (in place).

        The own gene is knocked down from its control level by the calibrated factor
        (:meth:`~scmech.model._own_gene_fit.OwnGeneMixin._own_from_control`); its bounds are the levels the
        knock-down reaches at the conformal range of the training targets' own factors (under the ``"level"`` model,
        of their own levels), each moved by what moved the predicted level after the knock-down (the batch, the
        efficacy). Too few training targets whose gene is measured give infinite bounds.
        """
        tm = getattr(self, "target_map_", None)
        if not isinstance(tm, TargetMap) or tm.own_source == "none":
            return
        centre = tm.own_level if tm.own_model == "level" else tm.own_effect
        pos = tm.gene_positions
        rows = [
            i
            for i, plan in plans.items()
            if isinstance(plan, UnseenTarget)
            and not plan.pooled
            and len(requested[i].targets) == 1
            and requested[i].targets[0] in pos
            and observations.control(plan.context) is not None
        ]
        if not rows or not np.isfinite(centre):
            return
        settings = self._own_settings()
        scaled = settings.scaled and self._scaled_as_fitted(tm)
        eta = _levels(settings.levels)
        values = self._own_gene_members(tm, settings, scaled)
        lo, hi = conformal_range(values, level) if values is not None else (-np.inf, np.inf)
        floor = 0.0 if scaled else -np.inf  # a scaled expression falls at most to none

        def reached(v: float, ref: np.ndarray) -> float:
            """Level the knock-down of factor (``"level"`` model: level) ``v`` reaches from ``ref``."""
            if not np.isfinite(v):  # no bound: the factor's end of the scale, not a product with it
                return floor if v < 0 else np.inf
            if tm.own_model == "level":
                return float(np.maximum(v, ref)[0])
            return float(_level_after(np.asarray(v), ref, scaled, eta, settings.log_base)[0])

        for i in rows:
            g = pos[requested[i].targets[0]]
            ref = np.asarray(observations.control(plans[i].context).value, dtype=np.float64)[[g]]
            at_centre = reached(centre, ref)
            # a larger factor reaches a higher level, whichever way the modality moves the gene
            low, high = reached(lo, ref), reached(hi, ref)
            lower[i, g] = min(logx[i, g] + low - at_centre, logx[i, g])
            upper[i, g] = max(logx[i, g] + high - at_centre, logx[i, g])

    def _own_gene_members(self, tm: TargetMap, settings: OwnSettings, scaled: bool) -> np.ndarray | None:
        """Return the training targets' own factors (own levels under the ``"level"`` model), or ``None`` (too few).

        ``scaled``: whether the factors scale expression or shift the values, as the calibrated one is applied.
        """
        pairs = self._own_gene_pairs(tm.class_targets)
        if pairs is None:
            return None
        own_level, reference = self._own_levels(pairs)
        if tm.own_model == "level":
            return own_level
        return own_effects(
            own_level,
            reference,
            counts=scaled,
            efficacy_levels=settings.levels,
            log_base=settings.log_base,
        )


def _infinite_without(residuals: np.ndarray | None, level: float, n_genes: int) -> tuple[np.ndarray, np.ndarray]:
    """Conformal bounds of a plan's ``residuals`` (its references x genes); infinite without any.

    The residuals of the training combinations' interactions, of the reference perturbations' carry-over from other
    media, or of the perturbations observed at the row's time from their interpolated changes.
    """
    if residuals is None or not len(residuals):
        return np.full(n_genes, -np.inf), np.full(n_genes, np.inf)
    return conformal_bounds(residuals, level)


def _interpolated(plan: TimeNeighbours, observations: Observations, label: str) -> np.ndarray:
    """Return ``label``'s observed change at the neighbouring times, interpolated, on the controls at the row's time.

    The model-free reference of a perturbation observed at other times (the plan's weights interpolate).
    """
    here = plan.context
    centre = _value(observations.control(here)).astype(np.float64)
    for u, w in plan.points:
        there = Context(here.media, u, here.switch)
        centre = centre + w * (_value(observations.get(label, there)) - _value(observations.control(there)))
    return centre


def _time_bounds(plan: TimeNeighbours, observations: Observations, level: float, n_genes: int) -> tuple:
    """Conformal bounds of how far perturbations observed at the row's time lay from their interpolated changes.

    The training perturbations observed at the row's time and at its neighbouring times, each compared with
    :func:`_interpolated`; infinite without any. The interpolation has no fitted parameter, so their residuals are
    exchangeable with the row's: split-conformal bounds, at least the level for a row exchangeable with them.
    """
    here = plan.context
    members = _time_members(plan, observations)
    residuals = [_value(observations.get(q, here)) - _interpolated(plan, observations, q) for q in members]
    return _infinite_without(np.stack(residuals) if residuals else None, level, n_genes)


def _time_members(plan: TimeNeighbours, observations: Observations) -> list[str]:
    """Return the training perturbations observed at the row's time and at each of its neighbouring times."""
    here = plan.context
    around = [Context(here.media, u, here.switch) for u, _ in plan.points]
    return [q for q in observations.perturbations_in(here) if all(observations.get(q, c) for c in around)]
