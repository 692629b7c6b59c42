"""``predict``: protocols, the model's read-out, anchoring on the training observations, and the AnnData.

The steps live in their own modules: :mod:`._protocols` (what is asked), :mod:`._target_map` (how targets
without training cells act), :mod:`._readout` (the model's counterfactual read-out) and :mod:`._anchoring`
(the correction by observed training pseudobulks), applied to the read-outs by :mod:`._prediction_anchoring`;
:mod:`._post_training` fits what they need once training ends, and :mod:`._prediction_output` assembles the returned
AnnData. This mixin wires the steps together.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from scvi import settings

from scmech._constants import SCMECH_ADATA_KEYS, SCMECH_REGISTRY_KEYS

from ._argument_checks import check_flag, check_not_unassigned, check_predict_arguments
from ._prediction_anchoring import AnchoringStepsMixin
from ._prediction_intervals import IntervalMixin, IntervalRequest
from ._prediction_output import PredictionOutputMixin
from ._protocols import CLASS_REFERENCE, Context, Protocol, Step, build_protocols
from ._readout import efficacy_pool, read_out, starting_cells
from ._time_checks import warn_extrapolated_times

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData


logger = logging.getLogger(__name__)
K = SCMECH_REGISTRY_KEYS

__all__ = ["PredictionMixin"]


class PredictionMixin(AnchoringStepsMixin, PredictionOutputMixin, IntervalMixin):
    """``predict``: protocols, operators for every target, the model's read-out, anchoring and the AnnData."""

    # ------------------------------------------------------------------ contexts
    def _context_of(self, p: Protocol) -> Context:
        cats = self._media_categories()
        media = (cats[0] if cats else None) if p.media is None else str(p.media)
        if self.regime != "dynamic":
            return Context(media)
        switch = None if not np.isfinite(p.media_time) else round(float(p.media_time), 6)
        return Context(media, round(float(p.time), 6), switch)

    def _context_keys(self, rows: np.ndarray) -> list[Context]:
        """Context of each of ``rows`` of the registered data, as :meth:`_context_of` writes it."""
        reg = self.adata_manager.data_registry
        cats = self._media_categories()

        def column(key):
            if key not in reg:
                return None
            return np.asarray(self.adata_manager.get_from_registry(key), dtype=np.float64).ravel()[rows]

        n = len(rows)
        med, tim, swi = column(K.MEDIA_KEY), column(K.TIME_KEY), column(K.MEDIA_TIME_KEY)
        none = -np.inf  # stands for "not registered" and for NaN (no switch), which np.unique cannot group
        cols = np.column_stack([np.full(n, none) if c is None else np.nan_to_num(c, nan=none) for c in (med, tim, swi)])
        uniq, inverse = np.unique(cols, axis=0, return_inverse=True)
        keys = [
            self._context_of(
                Protocol(
                    "",
                    (),
                    None if m == none else cats[int(m)],
                    0.0 if t == none else float(t),
                    np.nan if sw == none else float(sw),
                )
            )
            for m, t, sw in uniq
        ]
        return [keys[j] for j in np.asarray(inverse).ravel()]

    # ------------------------------------------------------------------ operators
    def _class_of(self, target: str) -> tuple[tuple[str, ...], bool] | None:
        """Training targets an unseen ``target`` is anchored on, and whether it has no prior information.

        ``None`` when it has training cells. Every training target (:meth:`TargetMap.sorted_pool`): a target's
        class, and its prediction, do not depend on which other rows are requested with it, on their order or on
        duplicates, and unseen targets of one context share one anchoring plan.
        """
        tm = self.target_map_
        if tm is None or target in tm.trained_set:
            return None
        measured = target in tm.gene_positions and tm.directions is not None
        return tuple(tm.sorted_pool()), not measured

    def _own_gene_positions(self, target: str) -> tuple[int, ...]:
        """Position of a training target's own gene, the class members being single targets (empty: not measured)."""
        tm = self.target_map_
        pos = tm.gene_positions if tm is not None else {}
        return (pos[target],) if target in pos else ()

    def _operators_for(self, protocols: list[Protocol]) -> tuple:
        """Operators, own effects and gene index for every target the protocols name, and the mapped targets.

        Targets without training cells (registered but held out, or new) get theirs from the target map.

        Returns
        -------
        ``((operators, own effects, gene index), columns, mapped targets, source of each mapped target)``.
        """
        module = self.module
        ops = module.field.operators.detach().clone()
        own = module.decoder.own_effect
        own = own.detach().clone() if own is not None else None
        idx = module.decoder.target_gene_index
        registered = list(self._perturbation_state()["targets"])
        known = set(registered)
        needed = {t for p in protocols for t in p.targets}
        new_targets = sorted(needed - known)
        trained = set(self.trained_targets_ or registered)
        untrained = [t for t in registered if t in needed and t not in trained]
        mapped = untrained + new_targets
        columns = {t: i for i, t in enumerate(registered + new_targets)}
        if not mapped:
            return (ops, own, idx), columns, [], {}
        if self.target_map_ is None:
            msg = f"Cannot predict targets {mapped} without training cells: the model has no target map (train it)."
            raise KeyError(msg)
        if not self.target_map_.trained:
            # a model without an own-gene effect in its decoder (NeuralODE) has none to be uncalibrated
            own_note = " (with an uncalibrated own-gene effect)" if own is not None else ""
            warnings.warn(
                f"The model was trained without perturbed cells, so targets {mapped[:5]} have no response to take "
                f"from training targets: they are predicted at the controls' state{own_note}. Train on perturbed "
                "cells to predict perturbations.",
                UserWarning,
                stacklevel=4,
            )
        vals, own_vals, sources = self.target_map_.operators(mapped)
        dev = ops.device
        new_ops = torch.as_tensor(vals, dtype=ops.dtype, device=dev)
        new_own = torch.as_tensor(own_vals, dtype=ops.dtype, device=dev)
        pos = {t: i for i, t in enumerate(registered)}
        for k, t in enumerate(untrained):
            ops[pos[t]] = new_ops[k]
            if own is not None:
                own[pos[t]] = new_own[k]
        n_old = len(untrained)
        if new_targets:
            ops = torch.cat([ops, new_ops[n_old:]], dim=0)
            if own is not None:
                own = torch.cat([own, new_own[n_old:]])
            new_pos = self._target_positions(new_targets)
            new_idx = torch.as_tensor(new_pos, dtype=idx.dtype, device=idx.device)
            idx = torch.cat([idx, new_idx])
        return (ops, own, idx), columns, mapped, dict(zip(mapped, sources, strict=True))

    def _media_index(self, protocols: list[Protocol]) -> list[int]:
        cats = self._media_categories()
        out = []
        for p in protocols:
            if p.media is None:
                out.append(0)
            elif p.media not in cats:
                msg = (
                    f"Medium {p.media!r} was not seen in training (media: {cats or 'none registered'}). "
                    "Predict only registered media."
                )
                raise KeyError(msg)
            else:
                self._check_trained_medium(p.media)
                out.append(cats.index(p.media))
        return out

    @torch.inference_mode()
    def _read(
        self,
        protocols: list[Protocol],
        *,
        anchor_rows: int,
        random_state: int,
        adata=None,
        batch=None,
        efficacy=None,
        n_cells=None,
        from_cells=None,
        return_mean: bool = True,
        batch_size=None,
    ):
        """Read ``protocols`` out (the first ``len - anchor_rows`` are the requested ones)."""
        own_data = adata is None
        adata = self._validate_anndata(adata)
        rng = np.random.default_rng(random_state)
        operators, columns, mapped, sources = self._operators_for(protocols)
        batch_index = None
        if batch is not None:
            cats = self._batch_categories()
            if str(batch) not in cats:
                msg = f"Batch {batch!r} was not seen in training (batches: {cats or 'none registered'})."
                raise KeyError(msg)
            batch_index = cats.index(str(batch))
        media_index = self._media_index(protocols)
        start = starting_cells(self, adata, from_cells, n_cells, rng, own_data)
        pool = efficacy_pool(self) if (efficacy is None and self.module.use_efficacy) else None
        if efficacy is not None:
            levels = np.array([float(efficacy)])
        elif pool is not None:
            # quantiles of the perturbed training cells' efficacies, spread evenly over the counterfactual cells
            levels = np.quantile(pool, (np.arange(8) + 0.5) / 8)
        else:
            levels = None
        ro = read_out(
            self,
            protocols,
            adata=adata,
            start=start,
            batch_index=batch_index,
            levels=levels,
            return_mean=return_mean,
            operators=operators,
            columns=columns,
            media_index=media_index,
            n_requested=len(protocols) - anchor_rows,
            batch_size=batch_size,
        )
        # the class reference is a read-out the anchoring needs, not a target of the data
        ro.mapped = [t for t in mapped if t != CLASS_REFERENCE]
        ro.sources = {t: v for t, v in sources.items() if t != CLASS_REFERENCE}
        ro.start = start
        ro.user_cells = from_cells is not None
        ro.efficacy = "empirical" if pool is not None else ("given" if efficacy is not None else "1")
        return ro

    # ------------------------------------------------------------------ predict
    @torch.inference_mode()
    def _check_requested_targets(self, requested: list[Protocol]) -> None:
        """Refuse the unassigned label as a target; warn of a target known in another case or a time beyond training."""
        st = self._perturbation_state()
        ua = self.adata_manager.registry["setup_args"].get("unassigned_label")
        known = {str(t) for t in st["targets"]}
        by_lower: dict[str, str] = {}
        for name in [*known, *map(str, self._target_gene_names())]:
            by_lower.setdefault(name.lower(), name)
        for p in requested:
            check_not_unassigned(p.targets, ua)
            for t in p.targets:
                if t not in known and t.lower() in by_lower and by_lower[t.lower()] != t:
                    warnings.warn(
                        f"Target {t!r} is not registered, but {by_lower[t.lower()]!r} is (a target or gene in another "
                        f"letter case); {t!r} is predicted as a new target. Did you mean {by_lower[t.lower()]!r}?",
                        UserWarning,
                        stacklevel=3,
                    )
        if self.regime == "dynamic":
            warn_extrapolated_times(requested, float(self.module.time_unit) * float(self.module.horizon))

    def predict(
        self,
        perturbations: str | Sequence[str] | None = None,
        *,
        media: str | Sequence[str] | None = None,
        time: float | Sequence[float] | None = None,
        media_time: float | Sequence[float] | None = None,
        batch: str | None = None,
        efficacy: float | None = None,
        n_cells: int | None = None,
        from_cells: Sequence[int] | np.ndarray | None = None,
        protocol: Sequence[Step] | Sequence[Sequence[Step]] | None = None,
        return_mean: bool = True,
        anchor: Literal["auto", "combinations", "none"] = "auto",
        batch_mix: Literal["observed", "controls"] = "observed",
        interval: float | None = None,
        adata: AnnData | None = None,
        batch_size: int | None = None,
        random_state: int | None = None,
    ) -> AnnData:
        r"""Predict expression under perturbations, media and time protocols.

        Each requested condition is predicted as counterfactuals of starting cells (by default the training
        control cells): a cell's basal state (its latent minus the read-out of its own protocol) plus the
        read-out of the requested protocol, decoded through the measurement operator with the cell's own batch
        (or ``batch``). Every target can be predicted: targets never perturbed in training act through their
        own-gene knock-down carried through the learned dynamics when their gene is measured, and through the
        shared response of the screen otherwise (:mod:`scmech.model._target_map`; ``obs["target_source"]``).

        Parameters
        ----------
        perturbations
            Labels to predict (``"STAT1"``, ``"STAT1+JAK2"``, the control label); all registered conditions
            when ``None``.
        media
            Medium at read-out (one, or one per perturbation); the baseline medium when ``None``.
        time
            Read-out time since the perturbation (dynamic models). A ``UserWarning`` says when a read-out or switch
            time lies beyond the longest time of the training cells (an extrapolation). At time 0 a perturbed cell
            equals a control: the perturbation has not acted yet.
        media_time
            Time of the switch into ``media`` relative to the perturbation (negative: before it; ``None``: the
            medium holds throughout).
        batch
            Batch whose capture the predictions are measured with; each starting cell's own batch when ``None``.
            Anchored predictions in a batch are corrected by the training observations moved to that batch (see
            ``anchor``) when each can be moved (the controls of every batch involved observed in its context);
            otherwise the prediction is anchored in each cell's own batch and moved to ``batch`` by the model's
            batch effect. ``uns["scmech"]["prediction"]["batch_anchoring"]`` says which.
        efficacy
            Knock-down efficacy of the predicted perturbations; when ``None`` and an efficacy key is registered,
            the counterfactual cells are spread evenly over 8 quantiles of the perturbed training cells'
            efficacies (escapers included), else 1. Efficacy scales the target-specific effect only: at 0 (an
            escaper) a perturbed cell keeps the response shared by every perturbed cell (guide delivery, Cas9
            activity), so it differs from the control by that shared response. An anchored prediction at a given
            efficacy is corrected by the model's error at the training cells' efficacies, where the observations
            were made, so the efficacy moves it as it moves the model's read-out.
        n_cells
            Number of starting cells (a random subset); up to 500 control cells when ``None`` and
            ``from_cells`` is not given. Asking for more cells than there are uses them all, with a warning.
        from_cells
            Indices (or a boolean mask) of the starting cells in ``adata``; the training control cells when
            ``None`` (all control cells of another ``adata``).
        protocol
            An ordered list of steps, ``[("perturb", "STAT1"), ("media", "stim"), ("wait", 2.0)]``, or a list
            of such lists, instead of ``perturbations``/``media``/``time``: operators are applied in order and
            do not commute.
        return_mean
            One row per condition (mean over counterfactual cells) when ``True``; one row per counterfactual
            cell otherwise.
        anchor
            ``"auto"`` corrects mean predictions by the model's error on what was observed in training, in
            log-normalised space, so that each simple baseline is nested in the prediction (the plans, in the order they
            are tried, are documented in :mod:`scmech.model._anchoring`): an observed condition is its observation; a
            combination whose singles were observed is their additive sum plus the share of the model's interaction that
            the training combinations bear out (none without them); a perturbation observed at other times or in other
            media carries its observed effect over as far as the training data show it carries; a target without
            training cells is the precision-weighted mean of the training targets' observations plus the model's
            specific change; any other condition is the observed controls of its context plus the model's change from
            them. The observations are used in the batch composition their cells came in (see ``batch_mix``); with
            ``batch``, every observation (controls included) is moved to that batch alone by the controls' level in
            each batch where it can be (see ``batch``), so that the anchored prediction is measured in it too. Each
            correction is weighed per gene against the sampling noise of the pseudobulks it uses
            (``obs["anchor_weight"]`` is the mean weight). ``"combinations"`` does only the
            combinations; ``"none"`` returns the model's own read-out. ``obs["anchoring"]`` records the plan of each
            row (missing where a row is not anchored). Anchoring applies only to mean predictions from the training
            controls (no ``from_cells`` or ``adata``).
        batch_mix
            The batch composition of anchored predictions without ``batch``. ``"observed"``: the observations as
            observed, each condition in the composition its cells came in, a target without training cells in that
            of the training targets' cells (the pooled pseudobulk a screen measures, which ``scmech.tl.evaluate``
            compares with). ``"controls"``: every observation moved to the training controls' composition, where the
            read-outs start, by the controls' level in each batch (direct standardisation; one that cannot be moved is
            kept as observed): the perturbation applied to the controls as they were measured, its effect alone.
            The two differ where the perturbed cells fill the batches in other proportions than the controls.
        interval
            Probability (for example ``0.9``) of prediction intervals: ``layers["lower"]`` and ``layers["upper"]``
            (on ``X``'s scale) bound the pseudobulk the row's cells would show, for targets without training cells,
            for combinations whose singles were observed, for perturbations observed in other media (carried by a
            calibrated carry-over) and for perturbations observed at neighbouring times. Each gene's bounds are
            conformal bounds of how far the training data strayed from the same model-free reference
            (:mod:`scmech.model._intervals`): each training target from the weighted mean of the others (the
            observed shared response an unseen target is anchored on), each training combination from its observed
            singles added. They are widened to hold both that reference's bounds and the prediction's, as the model
            moves the prediction away from the reference. A perturbation carried from other media is bounded by how
            far each perturbation observed in both strayed from the model-free carry-over fitted without it
            (:func:`~scmech.model._calibration.media_carry_residuals`), widened alike; one observed at neighbouring
            times by how far the perturbations observed at its time and at those lay from their changes
            interpolated. For a row exchangeable with those training rows they hold with about this probability, on
            average over rows and genes (not for each target), without assuming a normal spread. The own gene's
            bounds are the levels its knock-down reaches at the conformal range of the training targets' own
            factors. Too few training rows for the probability give infinite bounds (with ``n`` of them, a
            probability above ``1 - 2 / (n + 1)`` cannot be held; a combination without training combinations is
            unbounded). NaN on other rows (observed conditions, targets seen only in training combinations, contexts
            without controls); a ``UserWarning`` names the rows not observed in training that get none. Needs the
            anchored mean prediction (``return_mean=True``, ``anchor="auto"``, no ``from_cells`` or ``adata``).
            ``None``: no intervals. :func:`scmech.tl.interval_coverage` scores them against held-out cells.
        adata
            AnnData holding the starting cells (registered data when ``None``).
        batch_size
            Minibatch size for encoding.
        random_state
            Seed for subsetting cells (``scvi.settings.seed`` when ``None``).

        Returns
        -------
        AnnData with ``X`` the log-normalised prediction :math:`\log(1 + 10^4 \rho)` (the pseudobulk definition
        of :func:`scmech.data.pseudobulk`; log-normalised input is predicted in its own values),
        ``layers["expression"]`` the normalised expression (counts per 10,000; :math:`b^{x} - 1` of input
        log-normalised in base :math:`b`, as ``uns["log1p"]["base"]`` records it; no layer for centred or scaled
        input, which stands for no expression), ``obs`` columns ``perturbation``, ``media``, ``time``,
        ``media_time``, ``batch``, ``n_cells``, ``unseen_targets``, ``target_source`` (how each target without
        training cells was predicted: ``"gene map"`` or ``"shared response"``), ``own_gene_change`` and
        ``own_gene_sd`` (the predicted change of a single target's own gene from the training controls and its
        standard deviation from the spread of the training targets' knock-downs; NaN where not applicable),
        ``anchored``, ``anchoring`` (the row's anchoring plan), ``anchor_weight`` and ``steady_state_residual``
        (:math:`\|f\|` at the solved fixed point, NaN for flows; a :class:`RuntimeWarning` names conditions
        whose solve did not converge, also listed in ``uns["scmech"]["prediction"]["unconverged"]``), and
        ``uns["scmech"]["prediction"]`` the provenance (among it ``"own_gene"``, the calibrated own-gene
        knock-down, ``"target_map"``, what unseen targets' operators rest on: the embedding considered, whether
        its map was kept, the propagation gain, and ``"target_sources"``, a table of each unseen target's
        ``source``). With ``interval``, ``layers["lower"]`` and ``layers["upper"]`` (see ``interval``).
        ``own_gene_change``, ``own_gene_sd``, ``anchored``, ``anchoring`` and ``anchor_weight`` describe mean
        rows only; per-cell predictions (``return_mean=False``) carry ``obs["source_cell"]`` instead, and
        ``obsm["X_scmech"]`` (counterfactual latents).
        """
        self._check_if_trained(warn=False)
        return_mean = check_flag(return_mean, "return_mean")
        level = check_predict_arguments(
            n_cells=n_cells,
            random_state=random_state,
            efficacy=efficacy,
            batch_size=batch_size,
            anchor=anchor,
            batch_mix=batch_mix,
            batch=batch,
            interval=interval,
        )
        seed = (settings.seed if settings.seed is not None else 0) if random_state is None else random_state
        st = self._perturbation_state()
        requested = build_protocols(
            perturbations,
            media,
            time,
            media_time,
            protocol,
            separator=st["separator"],
            control_label=st["control_label"],
            conditions=list(st["conditions"]),
            dynamic=self.regime == "dynamic",
            control_labels=self.adata_manager.registry["setup_args"]["control_label"],
        )
        self._check_requested_targets(requested)
        observations, moved = self._observations_in(batch, batch_mix)
        can_anchor = (
            return_mean and anchor != "none" and from_cells is None and adata is None and observations is not None
        )
        if level is not None and not (can_anchor and anchor == "auto"):
            msg = (
                f"interval={interval!r} needs the anchored mean prediction, from which the training targets' spread is "
                "measured: pass return_mean=True and anchor='auto', without from_cells or adata"
                + ("" if observations is not None else " (this model holds no training observations to anchor on)")
                + "."
            )
            raise ValueError(msg)
        plans, extra, amplitudes = self._plan(requested, anchor, observations) if can_anchor else ({}, [], {})
        intervals = IntervalRequest(level) if level is not None else None
        how = {
            "random_state": seed,
            "adata": adata,
            "batch": batch,
            "n_cells": n_cells,
            "from_cells": from_cells,
            "return_mean": return_mean,
            "batch_size": batch_size,
        }
        ro = self._read(requested + extra, anchor_rows=len(extra), efficacy=efficacy, **how)
        if return_mean and plans and (efficacy is not None or not moved):
            # the observations stand for the training efficacies (and, not moved, for each cell's own batch)
            where = {**how, "batch": batch if moved else None}
            logx, weights = self._anchor_by_reference(
                ro, requested, extra, plans, amplitudes, observations, where, intervals
            )
        elif return_mean:
            logx, weights = self._anchor(
                ro.log_values, requested, extra, plans, observations, amplitudes=amplitudes, intervals=intervals
            )
        else:
            logx, weights = ro.log_values, np.full(len(requested), np.nan)
        bounds = (
            self._interval_bounds(logx, requested, plans, observations, amplitudes, intervals)
            if intervals is not None
            else None
        )
        out = self._prediction_anndata(
            logx,
            requested,
            ro,
            plans,
            weights,
            return_mean=return_mean,
            adata=adata,
            batch=batch,
            seed=seed,
            anchor=anchor if can_anchor else "none",
            amplitudes=amplitudes,
        )
        if bounds is not None:
            self._warn_unbounded(bounds[0], requested, plans)
            self._add_interval_layers(out, bounds, level)
        if plans:
            out.uns[SCMECH_ADATA_KEYS.UNS][SCMECH_ADATA_KEYS.PREDICTION_UNS]["batch_mix"] = batch_mix
        if batch is not None and plans:
            how_moved = (
                "observations moved to the batch" if moved else "model's batch effect on the anchored prediction"
            )
            out.uns[SCMECH_ADATA_KEYS.UNS][SCMECH_ADATA_KEYS.PREDICTION_UNS]["batch_anchoring"] = how_moved
        return out
