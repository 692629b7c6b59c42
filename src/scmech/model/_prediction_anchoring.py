"""``predict``'s anchoring step: each row's plan, the training observations it uses, and the anchored values.

:mod:`._anchoring` defines the plans (what each kind of row is anchored on); this mixin applies them to the model's
read-outs: :meth:`AnchoringStepsMixin._plan` chooses them and lists the further read-outs they need,
:meth:`AnchoringStepsMixin._anchor` anchors where the observations were measured, and
:meth:`AnchoringStepsMixin._anchor_by_reference` moves that correction to read-outs made elsewhere (another batch,
another efficacy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._anchor_planning import anchor_rows, anchored_control, plan_anchoring, row_of
from ._anchoring import Observations, SharedCorrection

if TYPE_CHECKING:
    import numpy as np

    from ._prediction_intervals import IntervalRequest
    from ._protocols import Protocol

__all__ = ["AnchoringStepsMixin"]


class AnchoringStepsMixin:
    """The anchoring step of ``predict``: plans, the observations for a batch, and the anchored read-outs."""

    def _observations_in(self, batch: str | None, batch_mix: str = "observed") -> tuple[Observations | None, bool]:
        """Return the training observations for predictions measured in ``batch``, and whether they stand for it.

        Without ``batch``, the observations as observed, or (``batch_mix="controls"``) moved to the training
        controls' batch composition (:meth:`Observations.in_controls_mix`).

        In one batch every observation is moved there by the controls' batch levels (:meth:`Observations.in_batch`)
        when every one can be (the controls of each batch involved observed in each context). Otherwise they are
        returned as they are and stand for the composition their cells came in (``False``): the prediction is then
        anchored there and moved to ``batch`` by the model (:meth:`_anchor_by_reference`), so that one under-sampled
        batch or context neither drops observations nor turns anchoring off. ``None`` without observations.
        """
        obs = self.anchor_
        if not isinstance(obs, Observations):
            return None, True
        if batch is None or int(self.summary_stats.get("n_batch", 1)) <= 1:
            if batch_mix == "controls" and obs.batch_levels:
                return obs.in_controls_mix(), True
            return obs, True
        cats = self._batch_categories()
        if not obs.batch_levels or str(batch) not in cats:  # an unknown batch is refused by the read-out
            return obs, False
        there = obs.in_batch(cats.index(str(batch)))
        return (obs, False) if there is None else (there, True)

    def _plan(
        self, requested: list[Protocol], anchor: str, observations: Observations
    ) -> tuple[dict, list[Protocol], dict[int, float]]:
        """Anchoring plan of each requested row, the further read-outs the plans need (deduplicated) and the amplitudes.

        The amplitudes are :meth:`~scmech.model._amplitude.AmplitudeMixin._amplitudes`' (rows whose amplitude is not
        1); such a row also needs the controls' read-out in its context, from which it is scaled.
        """
        plans = plan_anchoring(
            requested,
            [self._context_of(p) for p in requested],
            observations,
            mode=anchor,
            unseen=self._class_of,
            dynamic=self.regime == "dynamic",
            genes_of=self._own_gene_positions,
        )
        have = {p.key for p in requested}
        extra = []
        shared = set()  # a shared plan needs the same read-outs for every row: list them once
        scaled = self._amplitudes(requested, plans)  # rows scaled from the controls' prediction need its read-out
        for i, plan in plans.items():
            first = not (isinstance(plan, SharedCorrection) and plan in shared)
            if isinstance(plan, SharedCorrection):
                shared.add(plan)
            needs = plan.needs(requested[i], observations) if first else []
            if i in scaled:
                needs = [*needs, observations.protocol(observations.control_label, plan.context)]
            for q in needs:
                if q.key not in have:
                    have.add(q.key)
                    extra.append(q)
        return plans, extra, scaled

    def _anchor_by_reference(
        self,
        ro,
        requested: list,
        extra: list,
        plans: dict,
        amplitudes: dict[int, float],
        observations: Observations,
        where: dict,
        intervals: IntervalRequest | None = None,
    ) -> tuple:
        """Anchor read-outs (``ro``) made where the observations were not: the correction is measured where they were.

        The observations stand for the training cells' own efficacies (and, unless moved to the requested batch,
        for the batch composition their cells came in, read out from each control cell in its own batch). Each
        row's anchoring correction is the one there (the anchored row minus the model's read-out, read with
        ``where`` and the default efficacies), added to the requested read-out: anchoring moves the prediction by
        the model's error, and the efficacy and the batch still move it as the model says. The ``intervals``'
        offsets are :meth:`_anchor`'s, measured where the observations were (the move adds to both sides).
        """
        ref = self._read(requested + extra, anchor_rows=len(extra), efficacy=None, **where)
        anchored, weights = self._anchor(ref.log_values, requested, extra, plans, observations, intervals=intervals)
        n = len(requested)
        out = ro.log_values[:n] + (anchored - ref.log_values[:n])
        rows = row_of(requested + extra)

        def control(ctx) -> np.ndarray | None:  # the controls' prediction, moved as every row is
            c = anchored_control(ctx, observations, rows, ref.log_values)
            if c is None:
                return None
            k = rows[observations.protocol(observations.control_label, ctx).key]
            return c + (ro.log_values[k] - ref.log_values[k])

        self._scale_by_expression(out, requested, plans, amplitudes, control)
        return out, weights

    def _anchor(
        self,
        log_values: np.ndarray,
        requested: list,
        extra: list,
        plans: dict,
        observations: Observations | None,
        *,
        amplitudes: dict[int, float] | None = None,
        intervals: IntervalRequest | None = None,
    ) -> tuple:
        """Apply each row's plan to the read-outs; returns the anchored rows and each row's mean weight.

        With ``intervals``, each row with an interval (an unseen target, a combination, a perturbation carried from
        other media) gets its bounds relative to its anchored value, filled into ``intervals.offsets``
        (:meth:`~scmech.model._prediction_intervals.IntervalMixin._interval_offsets`), before its own gene and its
        amplitude are set.

        Rows with ``amplitudes`` (from :meth:`_plan`) have their change from the controls' anchored prediction scaled
        by them (:meth:`~scmech.model._amplitude.AmplitudeMixin._scale_by_expression`); :meth:`_anchor_by_reference`
        passes none and scales its own rows once moved.
        """
        rows = row_of(requested + extra)

        def read(p: Protocol) -> np.ndarray:
            return log_values[rows[p.key]]

        logx = log_values[: len(requested)].copy()
        weights = anchor_rows(plans, requested, read, observations, logx)
        if intervals is not None and observations is not None:
            intervals.offsets.update(self._interval_offsets(logx, requested, plans, observations, intervals.level))
        self._own_from_control(logx, requested, plans, observations)
        self._own_across_media(logx, requested, plans, observations)
        if amplitudes and observations is not None:
            self._scale_by_expression(
                logx, requested, plans, amplitudes, lambda ctx: anchored_control(ctx, observations, rows, log_values)
            )
        return logx, weights
