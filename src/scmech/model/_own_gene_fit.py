"""The own-gene calibration of a fitted model: fitted after training, read by ``predict``, shown to the user."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pandas as pd

from scmech.data._log_scale import log1p_base, value_description

from ._anchoring import OtherMedia, UnseenTarget
from ._observations import Observations
from ._own_gene import (
    _level_after,
    _levels,
    centre_effect,
    effect_reaching,
    modality_sign,
    own_calibration,
    own_effects,
    own_gene_effect,
    own_gene_model,
)
from ._protocols import CLASS_REFERENCE, Protocol
from ._readout import efficacy_pool
from ._target_map import TargetMap

__all__ = ["OwnGeneMixin", "OwnSettings"]


class OwnSettings(NamedTuple):
    """How a knock-down moves a level: read once per fit, validation or table (:meth:`OwnGeneMixin._own_settings`)."""

    #: Whether the knock-down scales expression (counts, log1p input) or shifts the values (other input).
    scaled: bool
    #: Efficacy levels the model reads out over (``None``: 1).
    levels: np.ndarray | None
    #: Base of the logarithm of the levels (:math:`e` for counts' pseudobulks).
    log_base: float


class OwnGeneMixin:
    """Calibrates how an unseen target's knock-down moves its own gene on the training targets' own genes."""

    def get_own_gene_calibration(self) -> pd.DataFrame:
        r"""Return the training targets' own-gene levels and the calibration unseen targets get from them.

        A target without training cells whose gene is measured gets a direct effect on its own gene, calibrated on
        the training targets whose gene is measured and observed in the baseline context
        (``scmech.model._own_gene``). This table shows what it rests on: one row per such target, with its own
        gene's level in log-normalised pseudobulk units (:math:`\log(1 + 10^4 \bar\rho)` for counts, the
        registered values' own units for log-normalised input).

        Returns
        -------
        A DataFrame indexed by training target with columns

        - ``control_level``: the level its gene has without the knock-down: the controls' (an unseen target's own
          gene is knocked down from there too);
        - ``observed_level`` and ``observed_change`` (``observed_level - control_level``);
        - ``effect``: the factor (log) that reproduces its level by scaling its production;
        - ``calibrated_change``: the change the calibration gives a gene at ``control_level``.

        ``attrs`` holds ``model`` (``"scale"`` or ``"level"``), ``effect`` (the calibrated log factor, NaN under
        ``"level"``), ``level`` (the activated level under ``"level"``, else NaN), ``spread`` (``own_effect_sd``:
        of the factors under ``"scale"``, of the levels under ``"level"``), ``modality``, ``scaled`` (whether the
        knock-down scales expression, on counts and on log-normalised input that is :math:`\log(1 + x)`, or
        shifts it, on other log-normalised input), ``log_base`` (the base of the levels' logarithm, :math:`e`
        unless ``uns["log1p"]["base"]`` of log-normalised input says otherwise), ``value`` (what the levels are:
        :func:`~scmech.data._log_scale.value_description`), ``efficacy_levels``, and
        ``curve``: the
        calibrated change over a grid of control levels with its band at the centre ± the spread (lists under
        ``control_level``, ``change``, ``low`` and ``high``).
        :func:`scmech.pl.own_gene_calibration` draws it.

        Raises
        ------
        RuntimeError
            When the model is not trained (scvi-tools' check).
        ValueError
            When the calibration does not rest on observed training targets (fewer than 3 measured training
            targets were observed, or no controls were).

        Examples
        --------
        >>> table = model.get_own_gene_calibration()
        >>> scmech.pl.own_gene_calibration(table)
        """
        self._check_if_trained(warn=False)
        tm = getattr(self, "target_map_", None)
        if not isinstance(tm, TargetMap):
            msg = "The model has no target map: train it again with this version of scmech (model.train())."
            raise ValueError(msg)
        pairs = self._own_gene_pairs(tm.class_targets) if tm.own_source == "observed" else None
        if pairs is None:
            msg = (
                f"The own-gene calibration rests on {tm.own_source!r}, not on observed training targets (it needs at "
                "least 3 training targets whose gene is measured, observed with controls in the baseline context); "
                "there is no table to show."
            )
            raise ValueError(msg)
        seen = pairs[0]
        log1p, levels, base = self._own_settings()  # scaled exactly where the values are log(1 + x)
        counts = log1p and self._scaled_as_fitted(tm)
        own_level, reference = self._own_levels(pairs)
        _, _, each = own_gene_effect(own_level, reference, counts=counts, efficacy_levels=levels, log_base=base)
        eta = _levels(levels)

        def change(centre: float, at: np.ndarray) -> np.ndarray:
            if tm.own_model == "level":
                return np.maximum(centre, at) - at
            return _level_after(np.asarray(centre), at, counts, eta, base) - at

        centre = tm.own_level if tm.own_model == "level" else tm.own_effect
        spread = tm.own_effect_sd if np.isfinite(tm.own_effect_sd) else 0.0
        grid = np.linspace(0.0, float(np.max(reference)) * 1.1 + 0.5, 100)
        band = np.stack([change(centre - spread, grid), change(centre + spread, grid)])
        table = pd.DataFrame(
            {
                "control_level": reference,
                "observed_level": own_level,
                "observed_change": own_level - reference,
                "effect": each,
                "calibrated_change": change(centre, reference),
            },
            index=pd.Index([tm.class_targets[i] for i in seen], name="target"),
        )
        table.attrs = {
            "model": tm.own_model,
            "effect": float(tm.own_effect),
            "level": float(tm.own_level),
            "spread": float(tm.own_effect_sd),
            "modality": tm.modality,
            "scaled": bool(counts),
            "log_base": float(base),
            "value": value_description(
                bool(self.adata_manager.registry["setup_args"].get("counts", True)), base if log1p else None
            ),
            "efficacy_levels": None if levels is None else [float(v) for v in levels],
            "curve": {
                "control_level": grid.tolist(),
                "change": change(centre, grid).tolist(),
                "low": band.min(0).tolist(),
                "high": band.max(0).tolist(),
            },
        }
        return table

    def _own_settings(self) -> OwnSettings:
        r"""Whether a knock-down scales expression, the efficacy levels the model reads out over, and the log base.

        A knock-down scales its target's production, so its expression: on counts, and on log-normalised input
        that is :math:`\log_b(1 + x)` of a non-negative expression :math:`x` (:meth:`_log1p_input`; :math:`b`
        as :func:`scanpy.pp.log1p` recorded it, :meth:`_log_base`), a gene at level :math:`\ell` moves to
        :math:`\log_b(1 + e^{a}(b^{\ell} - 1))`. Other log-normalised input (centred or scaled values) gets the
        shift :math:`\ell + a`.
        """
        pool = efficacy_pool(self) if self.module.use_efficacy else None
        levels = None if pool is None else np.quantile(pool, (np.arange(8) + 0.5) / 8)
        scaled = self._own_scaled()
        return OwnSettings(scaled, levels, self._log_base() if scaled else math.e)

    def _log_base(self) -> float:
        """Return the base of the logarithm of the registered values: :math:`e` for counts, else the input's own.

        Log-normalised input keeps the base :func:`scanpy.pp.log1p` recorded in ``uns["log1p"]["base"]`` of the
        AnnData holding it (:func:`~scmech.data._log_scale.log1p_base`); counts are log-normalised by scmech with
        the natural logarithm.
        """
        if self.module.gene_likelihood != "normal":
            return math.e
        return log1p_base(self._expression_adata(self.adata), "adata")

    def _own_scaled(self) -> bool:
        """Whether a knock-down scales expression (:meth:`_own_settings`' flag, without its efficacy levels)."""
        if self.module.gene_likelihood != "normal":
            return bool(self.adata_manager.registry["setup_args"].get("counts", True))
        return self._log1p_input()

    def _log1p_input(self) -> bool:
        r"""Whether log-normalised input reads as :math:`\log(1 + x)` of a non-negative expression.

        True when the controls' pseudobulks (of every context, and per batch) are non-negative in every gene: a
        log-normalised screen (``log1p`` of normalised counts) is, while centred or scaled values have a negative
        mean in many genes. The controls are read because they are kept as observed; a perturbation's pseudobulk
        moved to the controls' batch mix (:func:`~scmech.model._observations.standardise_batches`) can dip below
        zero at a gene barely expressed.
        """
        obs = getattr(self, "anchor_", None)
        if not isinstance(obs, Observations):
            return False
        lows = [float(np.min(v.value)) for (label, _), v in obs.conditions.items() if label == obs.control_label]
        for values, _, observed in obs.batch_levels.values():
            rows = np.asarray(values, dtype=np.float64)[np.asarray(observed, dtype=bool)]
            lows += [float(rows.min())] if rows.size else []
        return bool(lows) and min(lows) >= 0.0

    def _scaled_as_fitted(self, tm: TargetMap) -> bool:
        """Whether ``tm``'s own-gene effect was fitted as a scaling where the decoder shifts (normal likelihood).

        A map whose ``"scale"`` effect reaches the decoder as one shift (``own_effects`` is ``None``: a model saved
        before log1p input was scaled, or an effect taken from the decoder's learned ones) holds a shift, and is
        read as one.
        """
        if self.module.gene_likelihood != "normal":
            return True
        return tm.own_model == "level" or tm.own_effects is not None

    def _readout_effects(self, effects: np.ndarray, reference: np.ndarray, settings: OwnSettings) -> np.ndarray:
        r"""Own-gene effects as the decoder applies them, for genes at ``reference`` without the knock-down.

        With a normal likelihood the decoder adds an effect to the mean of the log-normalised values (times each
        cell's efficacy), so a knock-down that scales expression (:meth:`_own_settings`) is passed as the shift
        that moves each gene's level where the scaling takes it: :math:`(f_a(\ell) - \ell) / \bar\eta`. Otherwise
        ``effects`` as they are (the decoder scales the expression, or the effect is a shift already).
        ``settings`` are :meth:`_own_settings`', read once by the caller.
        """
        scaled, levels, base = settings
        effects = np.asarray(effects, dtype=np.float64)
        if self.module.gene_likelihood != "normal" or not scaled:
            return effects
        eta = _levels(levels)
        reference = np.asarray(reference, dtype=np.float64)
        return (_level_after(effects, reference, True, eta, base) - reference) / float(eta.mean())

    def _own_levels(self, pairs: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Observed members' own-gene levels and the level each gene has without the knock-down: the controls'.

        A knock-down scales its target's production from the target's own unperturbed state, which the controls
        observe: an unseen target's own gene is predicted at its control level knocked down (:meth:`_own_from_control`),
        and each member's factor is measured the same way. The shared response at that gene (the other targets'
        mean) is no reference: it carries the programmes those targets move the gene by (the IFN-gamma knockouts of
        Papalexi lower every interferon-stimulated gene), which a target knocking down such a gene need not share.
        """
        seen, y, genes = pairs
        ctx = self._context_of(Protocol("", (), None, 0.0, np.nan))
        control = np.asarray(self.anchor_.control(ctx).value, dtype=np.float64)
        rows = np.arange(len(y))
        return y[rows, genes], control[genes]

    def _own_from_control(self, logx: np.ndarray, requested: list, plans: dict, observations: Observations) -> None:
        """Put the own gene of each anchored unseen single target at its control level knocked down (in place).

        The anchored row (:class:`~scmech.model._anchoring.UnseenTarget`) adds the model's own-gene change to the
        shared response at that gene, which carries the programmes the training targets move it by; the knock-down
        acts on the target's own unperturbed level, which the controls of the row's context observe
        (:meth:`_own_levels`). The calibrated change is applied there: the factor (``"scale"``; a shift on centred
        input) or the activated level (``"level"``), over the model's efficacy levels. Rows of targets whose gene is
        not measured, pooled rows and contexts without controls keep the anchored value.
        """
        tm = getattr(self, "target_map_", None)
        if not isinstance(tm, TargetMap) or tm.own_source == "none":
            return
        centre = tm.own_level if tm.own_model == "level" else tm.own_effect
        if not np.isfinite(centre):
            return
        pos = tm.gene_positions
        by_context: dict = {}  # rows and own genes of each context with controls
        for i, plan in plans.items():
            p = requested[i]
            if not isinstance(plan, UnseenTarget) or plan.pooled or len(p.targets) != 1 or p.targets[0] not in pos:
                continue
            by_context.setdefault(plan.context, ([], []))
            by_context[plan.context][0].append(i)
            by_context[plan.context][1].append(pos[p.targets[0]])
        if not by_context:  # the settings read the training efficacies: only when a row needs them
            return
        settings = self._own_settings()
        scaled = settings.scaled and self._scaled_as_fitted(tm)
        eta = _levels(settings.levels)
        for ctx, (rows, genes) in by_context.items():
            control = observations.control(ctx)
            if control is None:
                continue
            level = np.asarray(control.value, dtype=np.float64)[genes]
            if tm.own_model == "level":
                logx[rows, genes] = np.maximum(float(centre), level)
            else:
                logx[rows, genes] = _level_after(np.asarray(centre), level, scaled, eta, settings.log_base)

    def _own_across_media(self, logx: np.ndarray, requested: list, plans: dict, observations: Observations) -> None:
        r"""Carry the own-gene knock-down of each perturbation observed in other media whole (in place).

        A knock-down scales its target's production whatever the medium, so a perturbation observed in a source
        medium knocks its own genes down by the same factor from the controls of the requested medium: the factor
        that took the source's controls to the source's observation, applied to the requested medium's controls
        (:meth:`_carried_own_levels`; under the ``"level"`` model, the activated level itself). The carry-over of
        :class:`~scmech.model._anchoring.OtherMedia` shrinks every specific change by the fitted :math:`\rho`, which
        describes how the programmes downstream carry, not the knock-down (below 1 on the simulator with two media,
        whose knock-downs are the same in both media).
        """
        pos = getattr(getattr(self, "target_map_", None), "gene_positions", None) or {}
        rows = [
            (i, [pos[t] for t in requested[i].targets if t in pos])
            for i, plan in plans.items()
            if isinstance(plan, OtherMedia)
        ]
        rows = [(i, genes) for i, genes in rows if genes]
        if not rows:
            return
        settings = self._own_settings()
        for i, genes in rows:
            plan = plans[i]
            carried = self._carried_own_levels(
                requested[i].label, genes, plan.context, plan.sources, observations, settings
            )
            if carried is not None:
                logx[i, genes] = carried

    def _carried_own_levels(
        self, label: str, genes: list[int], context, sources, observations: Observations, settings: OwnSettings
    ) -> np.ndarray | None:
        """Levels of ``label``'s own ``genes`` in ``context``: its knock-down in ``sources`` carried whole (their mean).

        A factor against the registered modality (a CRISPRko or CRISPRi target whose gene rose in the source, by the
        sampling noise of a barely expressed gene) is carried as no change. A gene the source's controls do not
        express beyond twice their standard error has no identifiable factor: an activation carries the level it
        reached there (never below the requested medium's controls), a knock-down no change. ``None`` without
        controls in ``context`` or without a source observed with its controls.
        """
        target = observations.control(context)
        if target is None:
            return None
        tm = getattr(self, "target_map_", None)
        level_model = isinstance(tm, TargetMap) and tm.own_model == "level"
        scaled = settings.scaled and (not isinstance(tm, TargetMap) or self._scaled_as_fitted(tm))
        eta = _levels(settings.levels)
        here = np.asarray(target.value, dtype=np.float64)[genes]
        modality = self.adata_manager.registry["setup_args"].get("perturbation_modality")
        sign = modality_sign(modality)
        levels = []
        for s in sources:
            y, y0 = observations.get(label, s), observations.control(s)
            if y is None or y0 is None:
                continue
            observed = np.asarray(y.value, dtype=np.float64)[genes]
            if level_model:
                levels.append(np.maximum(observed, here))
                continue
            reference = np.asarray(y0.value, dtype=np.float64)[genes]
            a = own_effects(
                observed, reference, counts=scaled, efficacy_levels=settings.levels, log_base=settings.log_base
            )
            if sign:  # a knock-down never raises its own gene (nor an activation lowers it): noise, not effect
                a = sign * np.maximum(sign * a, 0.0)
            scaled_level = _level_after(a, here, scaled, eta, settings.log_base)
            # a gene the source's controls do not express within their noise has no factor to carry (any factor
            # fits a silent gene): its level is carried instead, as an activation reaches it, or none for a knock-down
            expressed = reference > 2.0 * np.sqrt(np.maximum(np.asarray(y0.var, dtype=np.float64)[genes], 0.0))
            unscaled = here if sign < 0 else np.maximum(observed, here)
            levels.append(np.where(expressed, scaled_level, unscaled))
        return np.mean(levels, axis=0) if levels else None

    def _fit_own_level(self, tm: TargetMap, own_level: np.ndarray, reference: np.ndarray) -> bool:
        """Switch ``tm`` to the ``"level"`` own-gene model where CRISPRa's activations reach a common level.

        :func:`~scmech.model._own_gene.own_gene_model` decides. The level is the median of the members' own-gene
        levels, its spread their robust one (1.4826 MAD, log-normalised units), and each gene's effect the one that
        brings the anchor of an unseen target (every training target's precision-weighted mean) there
        (:func:`~scmech.model._own_gene.effect_reaching`). ``own_effect`` (one factor for every gene) is then NaN.
        Returns whether the level model was chosen.
        """
        settings = counts, levels, base = self._own_settings()
        model = own_gene_model(
            own_level, reference, modality=tm.modality, counts=counts, efficacy_levels=levels, log_base=base
        )
        if model != "level":
            return False
        tm.own_model, tm.own_level, tm.own_effect = "level", float(np.median(own_level)), float("nan")
        tm.own_effect_sd = float(1.4826 * np.median(np.abs(own_level - tm.own_level)))
        anchor = self._anchor_bases([CLASS_REFERENCE], tm.trained)[0]  # a name no training target has: every one
        tm.own_effects = self._level_effects(tm.own_level, anchor, settings)
        return True

    def _level_effects(self, level: float, reference: np.ndarray, settings: OwnSettings) -> np.ndarray:
        r"""Effects, as the decoder applies them, that bring genes at ``reference`` up to ``level`` (never down).

        A decoder that scales expression gets the activating factor of
        :func:`~scmech.model._own_gene.effect_reaching`. A normal likelihood shifts the mean of the log-normalised
        values, so it gets the shift itself, :math:`\max(L - \ell, 0) / \bar\eta`: a factor cannot lift a gene
        that is not expressed at all, while the level model brings it to :math:`L` all the same. ``settings`` are
        :meth:`_own_settings`', read once by the caller.
        """
        counts, levels, base = settings
        reference = np.asarray(reference, dtype=np.float64)
        if self.module.gene_likelihood != "normal":
            return effect_reaching(level, reference, counts=counts, efficacy_levels=levels, log_base=base)
        return np.maximum(level - reference, 0.0) / float(_levels(levels).mean())

    def _fit_own_scale(self, tm: TargetMap) -> None:
        r"""Per-gene effects of the ``"scale"`` model where the decoder shifts what the knock-down scales.

        A normal likelihood on log-normalised input that reads as :math:`\log(1 + x)` (:meth:`_own_settings`):
        the calibrated factor moves a gene by an amount that depends on its level, so each gene gets the shift
        (:meth:`_readout_effects`) at its level in an unseen target's anchor (every training target's
        precision-weighted mean). Otherwise ``own_effects`` stays ``None`` and the decoder takes ``own_effect``.
        """
        if self.module.gene_likelihood != "normal" or not self._own_scaled():
            return
        anchor = self._anchor_bases([CLASS_REFERENCE], tm.trained)[0]
        tm.own_effects = self._readout_effects(np.full(len(anchor), tm.own_effect), anchor, self._own_settings())

    def _member_effects(self, own_level: np.ndarray, reference: np.ndarray, tm: TargetMap) -> np.ndarray:
        """Own-gene effect of each member mapped as if unseen: calibrated on the other members, by ``tm``'s model.

        The settings are read and each member's own factor is fitted once (a factor depends on nothing but the
        member's own levels); each member then gets the centre of the others', as the decoder applies it at the
        member's level (:meth:`_readout_effects`).
        """
        n = len(own_level)
        settings = counts, levels, base = self._own_settings()
        if n - 1 < 3:  # too few to refit (the level model needs at least 4 members, so this is "scale")
            return self._readout_effects(np.full(n, tm.own_effect), reference, settings)
        modality = self.adata_manager.registry["setup_args"].get("perturbation_modality")
        each = (
            own_effects(own_level, reference, counts=counts, efficacy_levels=levels, log_base=base)
            if tm.own_model != "level"
            else None
        )
        out = np.empty(n)
        for k in range(n):
            others = np.arange(n) != k
            if each is not None:
                centre = centre_effect(
                    each[others], reference[others], counts=counts, efficacy_levels=levels, log_base=base
                )
                out[k] = own_calibration([centre], modality)[0]
            else:
                out[k] = self._level_effects(float(np.median(own_level[others])), reference[k : k + 1], settings)[0]
        return out if tm.own_model == "level" else self._readout_effects(out, reference, settings)

    def _fit_own_effect(self, own_level: np.ndarray, reference: np.ndarray, spread: bool = True) -> tuple[float, float]:
        """Own-gene effect of :func:`~scmech.model._own_gene.own_gene_effect` on the members' own levels.

        ``reference`` is each member's level without its knock-down (:meth:`_own_levels`); the result is signed by
        the registered modality (:func:`~scmech.model._own_gene.own_calibration`). Returns the effect and the spread
        of the members' own effects (NaN without ``spread``).
        """
        counts, levels, base = self._own_settings()
        effect, sd, _ = own_gene_effect(
            own_level, reference, counts=counts, efficacy_levels=levels, spread=spread, log_base=base
        )
        modality = self.adata_manager.registry["setup_args"].get("perturbation_modality")
        signed, _ = own_calibration([effect], modality)
        return signed, sd
