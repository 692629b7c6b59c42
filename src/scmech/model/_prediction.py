"""``predict``: protocols, the model's read-out, anchoring on the training observations, and the AnnData.

The steps live in their own modules: :mod:`._protocols` (what is asked), :mod:`._target_map` (how targets
without training cells act), :mod:`._readout` (the model's counterfactual read-out) and :mod:`._anchoring`
(the correction by observed training pseudobulks). This mixin fits the last two after training and wires the
steps together.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

import anndata as ad
import numpy as np
import pandas as pd
import torch
from scvi import REGISTRY_KEYS, settings

from scmech._constants import SCMECH_ADATA_KEYS, SCMECH_REGISTRY_KEYS, TARGET_SUM
from scmech.data._embedding import pseudobulk_gene_embedding
from scmech.data._pseudobulk import normalized_mean

from ._anchoring import (
    Observations,
    ObservedPseudobulk,
    _rows,
    fit_interaction_gain,
    fit_media_carry,
    log_pseudobulk,
    plan_anchoring,
)
from ._protocols import Context, Protocol, Step, build_protocols
from ._readout import efficacy_pool, read_out, starting_cells
from ._target_map import TargetMap, latent_directions, propagation_gain, residual_map

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

logger = logging.getLogger(__name__)
K = SCMECH_REGISTRY_KEYS

__all__ = ["PredictionMixin"]

#: most training targets a target-class mean is taken over (a random subset beyond)
MAX_CLASS = 50
#: shares of the least-squares propagation gain validated by leave-one-target-out
GAIN_SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)


class PredictionMixin:
    """``predict`` and what it needs from training: the target map and the anchoring observations."""

    # ------------------------------------------------------------------ fitted after training
    def _fit_target_map(self, train_indices: np.ndarray, n_components: int = 10) -> None:
        """Fit the :class:`~scmech.model._target_map.TargetMap` for targets without training cells."""
        adata = self.adata
        design = self._design(adata)
        targets = list(self.adata_manager.get_state_registry(K.PERTURBATION_KEY)["targets"])
        trained = np.asarray(design.matrix[train_indices].sum(axis=0)).ravel() > 0
        self.trained_targets_ = [t for t, ok in zip(targets, trained, strict=True) if ok]
        _, var_names = self._expression_matrix(adata)
        var_names = [str(v) for v in var_names]
        gene_pos = {g: i for i, g in enumerate(var_names)}
        row = {t: i for i, t in enumerate(targets)}
        with torch.no_grad():
            ops = self.module.field.operators.detach().cpu().numpy().astype(np.float64)
            own_p = self.module.decoder.own_effect
            own = own_p.detach().cpu().numpy().astype(np.float64) if own_p is not None else np.zeros(len(targets))
        n_latent = ops.shape[1]
        fit = self.trained_targets_
        members = [t for t in fit if t in gene_pos]
        op_all = ops[[row[t] for t in fit]].mean(0) if fit else np.zeros(n_latent)
        op_class = ops[[row[t] for t in members]].mean(0) if members else op_all
        modality = self.adata_manager.registry["setup_args"].get("perturbation_modality")
        own_effect, own_sd = _own_calibration([own[row[t]] for t in members], modality)
        tm = TargetMap(
            var_names=var_names,
            trained=list(fit),
            class_targets=members,
            operator_class=op_class,
            operator_all=op_all,
            own_effect=own_effect,
            own_effect_sd=own_sd,
            own_targets=len(members) if own_p is not None else 0,
            modality=modality,
        )
        if members and own_p is not None:
            tm.directions = self._latent_directions(np.asarray(train_indices))
            drives = np.stack([own[row[t]] * tm.directions[gene_pos[t]] for t in members])
            class_ops = ops[[row[t] for t in members]]
            tm.propagation_mean = drives.mean(0)
            tm.gain, tm.gain_fit, tm.gain_loo = propagation_gain(drives, class_ops)
            validated = self._validate_gain(members, drives, class_ops, own[[row[t] for t in members]], tm)
            if validated is not None:
                tm.gain, tm.gain_loo = validated
            embedding, tm.embedding_source = self._gene_embedding(train_indices, n_components)
            if embedding is not None:
                resid = class_ops - op_class - tm.gain * (drives - tm.propagation_mean)
                coef, intercept, ridge = residual_map(embedding[[gene_pos[t] for t in members]], resid)
                if coef is not None:
                    tm.embedding, tm.coef, tm.intercept, tm.ridge = embedding.astype(np.float32), coef, intercept, ridge
        self.target_map_ = tm

    def _validate_gain(
        self, members: list[str], drives: np.ndarray, ops: np.ndarray, own: np.ndarray, tm: TargetMap
    ) -> tuple[float, dict] | None:
        r"""Share of the propagation gain that predicts the training targets best, each mapped as if unseen.

        For each training target :math:`q` of the class observed in the baseline context (at most
        ``MAX_CLASS``), the class mean, the gain and the own-gene effect are refitted without it and :math:`q`
        is predicted as an unseen target would be: the model's read-out under the mapped operator plus the
        observed-minus-model mean of the other members. The share :math:`s` of the least-squares gain
        (:data:`GAIN_SHARES`) with the lowest mean squared error against :math:`q`'s observed pseudobulk wins
        (ties go to the smaller share). This validates the gain in the space predictions are scored in, not in
        the latent space, where the error weighs directions by the latent geometry rather than by their effect
        on expression.

        Returns
        -------
        ``(gain, errors per share)``, or ``None`` without at least 3 observed members (the latent leave-one-out
        of :func:`~scmech.model._target_map.propagation_gain` stands).
        """
        obs = self.anchor_
        ctx = self._context_of(Protocol("", (), None, 0.0, np.nan))
        if not isinstance(obs, Observations) or obs.control(ctx) is None:
            return None
        seen = [i for i, q in enumerate(members) if obs.get(q, ctx) is not None][:MAX_CLASS]
        if len(seen) < 3 or tm.gain_fit <= 0:
            return None
        read_trained = self._reader([obs.protocol(members[i], ctx) for i in seen])
        m = {i: read_trained(obs.protocol(members[i], ctx)) for i in seen}
        y = {i: np.asarray(obs.get(members[i], ctx).value, dtype=np.float64) for i in seen}
        genes = {g: k for k, g in enumerate(tm.var_names)}
        rows, labels = [], []
        for i in seen:
            keep = [j for j in range(len(members)) if j != i]
            x_k, v_k = drives[keep], ops[keep]
            xc, vc = x_k - x_k.mean(0), v_k - v_k.mean(0)
            den = float((xc * xc).sum())
            kappa = max(0.0, float((xc * vc).sum()) / den) if den > 0 else 0.0
            a = float(np.median(own[keep]))
            d = a * np.asarray(tm.directions[genes[members[i]]], dtype=np.float64) - x_k.mean(0)
            for share in GAIN_SHARES:
                rows.append((v_k.mean(0) + share * kappa * d, a, genes[members[i]]))
                labels.append((i, share))
        values = self._read_mapped(rows)
        errors = dict.fromkeys(GAIN_SHARES, 0.0)
        for (i, share), value in zip(labels, values, strict=True):
            others = [j for j in seen if j != i]
            correction = np.mean([y[j] - m[j] for j in others], axis=0)
            errors[share] += float(np.mean((value + correction - y[i]) ** 2)) / len(seen)
        best = min(sorted(errors), key=lambda share: (errors[share], share))
        return best * tm.gain_fit, {float(k): v for k, v in errors.items()}

    @torch.inference_mode()
    def _read_mapped(self, rows: list[tuple[np.ndarray, float, int]]) -> np.ndarray:
        """Read out single targets given by ``(operator, own-gene effect, gene position)`` from the training controls.

        Each row is a pseudo-target appended to the registered ones (baseline medium, steady state or time 0).
        """
        module = self.module
        registered = list(self.adata_manager.get_state_registry(K.PERTURBATION_KEY)["targets"])
        ops = module.field.operators.detach().clone()
        dev = ops.device
        own = module.decoder.own_effect
        own = own.detach().clone() if own is not None else None
        idx = module.decoder.target_gene_index
        names = [f"\x00mapped{k}" for k in range(len(rows))]
        ops = torch.cat([ops, torch.as_tensor(np.stack([r[0] for r in rows]), dtype=ops.dtype, device=dev)])
        if own is not None:
            own = torch.cat([own, torch.as_tensor([r[1] for r in rows], dtype=own.dtype, device=dev)])
        idx = torch.cat([idx, torch.as_tensor([r[2] for r in rows], dtype=idx.dtype, device=idx.device)])
        protocols = [Protocol(n, (n,), None, 0.0, np.nan) for n in names]
        columns = {t: i for i, t in enumerate(registered + names)}
        start = starting_cells(self, self.adata, None, None, np.random.default_rng(0), True)
        pool = efficacy_pool(self) if module.use_efficacy else None
        levels = None if pool is None else np.quantile(pool, (np.arange(8) + 0.5) / 8)
        ro = read_out(
            self,
            protocols,
            adata=self.adata,
            start=start,
            batch_index=None,
            levels=levels,
            return_mean=True,
            operators=(ops, own, idx),
            columns=columns,
            media_index=[0] * len(protocols),
            n_requested=0,
        )
        return ro.log_values

    def _gene_embedding(self, train_indices: np.ndarray, n_components: int) -> tuple[np.ndarray | None, str]:
        """Return a user's ``varm`` embedding, else the principal components of the training pseudobulk."""
        adata = self.adata
        setup = self.adata_manager.registry["setup_args"]
        emb_key = setup.get("gene_embedding_key")
        if emb_key is not None:
            a = adata.mod[self._field(REGISTRY_KEYS.X_KEY).mod_key] if hasattr(adata, "mod") else adata
            return np.asarray(a.varm[emb_key], dtype=np.float64), f"varm[{emb_key!r}]"
        design = self._design(adata)
        labels = design.labels[train_indices]
        vc = pd.Series(labels).value_counts()
        conds = sorted(c for c in vc.index[(vc >= 3)] if c != design.unassigned_label)
        if len(conds) < 3:
            return None, "none"
        x, _ = self._expression_matrix(adata)
        counts = setup.get("counts", True)
        mean = normalized_mean(*_rows(x, train_indices, labels), conds, counts=counts)
        pb = np.log1p(TARGET_SUM * mean) if counts else mean
        return pseudobulk_gene_embedding(pb, n_components=min(n_components, len(conds) - 1)), "training pseudobulk PCA"

    @torch.no_grad()
    def _latent_directions(self, train_indices: np.ndarray, max_cells: int = 20_000) -> np.ndarray:
        """Latent drive per unit change of each gene (:func:`~scmech.model._target_map.latent_directions`)."""
        module = self.module
        design = self._design(self.adata)
        ctrl = np.asarray(train_indices)[design.is_control[np.asarray(train_indices)]]
        if len(ctrl) > max_cells:
            ctrl = np.sort(np.random.default_rng(0).choice(ctrl, max_cells, replace=False))
        if len(ctrl) >= 3:
            cov = np.cov(self.get_latent_representation(indices=ctrl).T)
        else:
            cov = np.eye(module.n_latent)
        n_t = module.n_targets
        zero = torch.zeros(1, n_t, device=self.device)
        m0 = torch.zeros(1, dtype=torch.long, device=self.device)
        if module.regime == "dynamic":
            z_ctrl = module.z_base.detach().unsqueeze(0)
        else:
            z_ctrl, _ = module.readout_states(zero, m0, implicit=False)
        jac = module.field.jacobian(z_ctrl, m0)[0].cpu().numpy()
        decoder = module.decoder
        if decoder.hidden is None:
            loading = decoder.loading.weight.detach().cpu().numpy()
        else:
            with torch.enable_grad():
                loading = torch.autograd.functional.jacobian(lambda z: decoder.logits(z[None], None)[0], z_ctrl[0])
            loading = loading.cpu().numpy()
        if module.gene_likelihood == "normal":
            gene_var = decoder.log_sigma.detach().exp().pow(2).cpu().numpy()
        else:
            theta = decoder.log_theta.detach().exp().mean(0).cpu().numpy()
            gene_var = np.log1p(1.0 / theta)
        return latent_directions(loading, np.atleast_2d(cov), gene_var, jac).astype(np.float32)

    def _fit_anchor(self, train_indices: np.ndarray, min_cells: int = 10) -> None:
        """Store the observed training pseudobulks of every condition in every context, and calibrate on them."""
        design = self._design(self.adata)
        idx = np.asarray(train_indices)
        idx = idx[~design.is_unassigned[idx]]
        labels = design.labels[idx]
        contexts = self._context_keys(idx)
        keys = pd.Series([f"{lab}\x00{c!r}" for lab, c in zip(labels, contexts, strict=True)])
        vc = keys.value_counts()
        groups = sorted(vc.index[vc >= min_cells].tolist())
        obs = Observations(control_label=design.control_label)
        if groups:
            lookup = {k: (lab, c) for k, lab, c in zip(keys, labels, contexts, strict=True)}
            x, _ = self._expression_matrix(self.adata)
            counts = self.adata_manager.registry["setup_args"].get("counts", True)
            pb, var = log_pseudobulk(x, idx, keys.to_numpy(dtype=object), groups, counts)
            for i, g in enumerate(groups):
                obs.conditions[lookup[g]] = ObservedPseudobulk(
                    pb[i].astype(np.float32), var[i].astype(np.float32), int(vc[g])
                )
            st = self.adata_manager.get_state_registry(K.PERTURBATION_KEY)
            for lab, _ in obs.conditions:
                if lab != design.control_label:
                    obs.targets[lab] = tuple(str(lab).split(st["separator"]))
        self.anchor_ = obs
        self._calibrate_anchor()

    def _calibrate_anchor(self) -> None:
        """Calibrate the combination interaction and the carry-over between media on the training observations."""
        obs = self.anchor_
        combos = [(lab, c) for lab, c in obs.conditions if len(obs.targets.get(lab, ())) >= 2]
        need = []
        for lab, c in combos:
            need += [obs.protocol(lab, c), obs.protocol(obs.control_label, c)]
            need += [obs.protocol(t, c) for t in obs.targets[lab]]
        contexts = sorted({c for _, c in obs.conditions}, key=repr)
        if len(contexts) > 1:
            need += [obs.protocol(lab, c) for lab, c in obs.conditions if lab != obs.control_label]
        if not need:
            return
        read = self._reader(need)
        obs.interaction_gain, obs.interaction_pairs = fit_interaction_gain(obs, read) if combos else (0.0, 0)
        obs.media_carry = fit_media_carry(obs, read) if len(contexts) > 1 else {}

    def _reader(self, protocols: list[Protocol]):
        """Return the model's own read-outs (no anchoring, training controls) of ``protocols`` as a lookup."""
        unique = list({p.key: p for p in protocols}.values())
        values = {}
        for lo in range(0, len(unique), 2000):
            part = unique[lo : lo + 2000]
            ro = self._read(part, anchor_rows=0, random_state=0)
            values.update({p.key: ro.log_values[i] for i, p in enumerate(part)})
        return lambda p: values[p.key]

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
    def _class_of(self, target: str, rng: np.random.Generator) -> tuple[str, ...] | None:
        """Training targets an unseen ``target`` is anchored on (``None`` when it has training cells)."""
        tm = self.target_map_
        if tm is None or target in set(tm.trained):
            return None
        measured = target in set(tm.var_names) and tm.directions is not None
        pool = sorted(tm.class_targets if measured and len(tm.class_targets) >= 2 else tm.trained)
        if len(pool) > MAX_CLASS:
            pool = sorted(rng.choice(pool, size=MAX_CLASS, replace=False).tolist())
        return tuple(pool)

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
        registered = list(self.adata_manager.get_state_registry(K.PERTURBATION_KEY)["targets"])
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
            _, var_names = self._expression_matrix(self.adata)
            var_pos = {str(g): i for i, g in enumerate(var_names)}
            new_idx = torch.as_tensor([var_pos.get(t, -1) for t in new_targets], dtype=idx.dtype, device=idx.device)
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
        ro.mapped, ro.sources, ro.start = mapped, sources, start
        ro.user_cells = from_cells is not None
        ro.efficacy = "empirical" if pool is not None else ("given" if efficacy is not None else "1")
        return ro

    # ------------------------------------------------------------------ predict
    @torch.inference_mode()
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
            Read-out time since the perturbation (dynamic models).
        media_time
            Time of the switch into ``media`` relative to the perturbation (negative: before it; ``None``: the
            medium holds throughout).
        batch
            Batch whose capture the predictions are measured with; each starting cell's own batch when ``None``.
        efficacy
            Knock-down efficacy of the predicted perturbations; when ``None`` and an efficacy key is registered,
            the counterfactual cells are spread evenly over 8 quantiles of the perturbed training cells'
            efficacies (escapers included), else 1.
        n_cells
            Number of starting cells (a random subset); up to 500 control cells when ``None`` and
            ``from_cells`` is not given.
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
            log-normalised space, so that each simple baseline is nested in the prediction (the plans, in the
            order they are tried, are documented in :mod:`scmech.model._anchoring`): an observed condition is
            its observation; a combination whose singles were observed is their additive sum plus the share of
            the model's interaction that the training combinations bear out (none without them); a perturbation
            observed at other times or in other media carries its observed effect over as far as the training
            data show it carries; a target without training cells is its class's observed mean plus the model's
            specific change; any other condition is the observed controls of its context plus the model's change
            from them. Each correction is weighed per gene against the sampling noise of the pseudobulks it
            uses (``obs["anchor_weight"]`` is the mean weight). ``"combinations"`` does only the combinations;
            ``"none"`` returns the model's own read-out. ``uns["scmech"]["prediction"]["anchoring"]`` records
            the plan of each row. Anchoring applies only to mean predictions from the training controls (no
            ``from_cells``, ``batch`` or ``adata``).
        adata
            AnnData holding the starting cells (registered data when ``None``).
        batch_size
            Minibatch size for encoding.
        random_state
            Seed for subsetting cells and class members (``scvi.settings.seed`` when ``None``).

        Returns
        -------
        AnnData with ``X`` the log-normalised prediction :math:`\log(1 + 10^4 \rho)` (the pseudobulk definition
        of :func:`scmech.data.pseudobulk`), ``layers["expression"]`` the normalised expression
        (counts per 10,000), ``obs`` columns ``perturbation``, ``media``, ``time``, ``media_time``, ``batch``,
        ``n_cells``, ``unseen_targets``, ``target_source`` (how each target without training cells was
        predicted: ``"gene map"`` or ``"shared response"``), ``own_gene_change`` and ``own_gene_sd`` (the
        predicted change of a single target's own gene from the training controls and its standard deviation
        from the spread of the training targets' knock-downs; NaN where not applicable), ``anchored``,
        ``anchor_weight`` and ``steady_state_residual`` (:math:`\|f\|` at the solved fixed point, NaN for flows;
        a :class:`RuntimeWarning` names conditions whose solve did not converge, also listed in
        ``uns["scmech"]["prediction"]["unconverged"]``), and ``uns["scmech"]["prediction"]`` the provenance.
        Per-cell predictions also carry ``obs["source_cell"]`` and ``obsm["X_scmech"]`` (counterfactual latents).
        """
        self._check_if_trained(warn=False)
        if n_cells is not None and int(n_cells) < 1:
            msg = f"n_cells={n_cells} must be at least 1."
            raise ValueError(msg)
        if efficacy is not None and not (0.0 <= float(efficacy) <= 1.0):
            msg = f"efficacy={efficacy} must be in [0, 1] (fraction of knock-down; 1 = full effect)."
            raise ValueError(msg)
        if anchor not in ("auto", "combinations", "none"):
            msg = f"anchor={anchor!r} is not one of 'auto', 'combinations', 'none'."
            raise ValueError(msg)
        seed = (settings.seed if settings.seed is not None else 0) if random_state is None else random_state
        st = self.adata_manager.get_state_registry(K.PERTURBATION_KEY)
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
        )
        can_anchor = (
            return_mean and anchor != "none" and from_cells is None and batch is None and adata is None
        ) and isinstance(self.anchor_, Observations)
        plans = {}
        if can_anchor:
            rng = np.random.default_rng(seed)
            plans = plan_anchoring(
                requested,
                [self._context_of(p) for p in requested],
                self.anchor_,
                mode=anchor,
                unseen=lambda t: self._class_of(t, rng),
                dynamic=self.regime == "dynamic",
            )
        have = {p.key for p in requested}
        extra = []
        for i, plan in plans.items():
            for q in plan.needs(requested[i], self.anchor_):
                if q.key not in have:
                    have.add(q.key)
                    extra.append(q)
        ro = self._read(
            requested + extra,
            anchor_rows=len(extra),
            random_state=seed,
            adata=adata,
            batch=batch,
            efficacy=efficacy,
            n_cells=n_cells,
            from_cells=from_cells,
            return_mean=return_mean,
            batch_size=batch_size,
        )
        n_req = len(requested)
        weights = np.full(n_req, np.nan)
        if return_mean:
            row_of = {}
            for i, p in enumerate(requested + extra):
                row_of.setdefault(p.key, i)

            def read(p: Protocol) -> np.ndarray:
                return ro.log_values[row_of[p.key]]

            logx = ro.log_values[:n_req].copy()
            for i, plan in plans.items():
                logx[i], w = plan.apply(requested[i], read, self.anchor_)
                weights[i] = float(np.mean(w)) if len(w) else np.nan
        else:
            logx = ro.log_values
        return self._prediction_anndata(
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
        )

    def _own_gene_columns(self, logx: np.ndarray, requested: list[Protocol], mapped: list[str]) -> tuple:
        r"""Predict the change of each unseen single target's own gene from the training controls, and its sd.

        The sd carries the spread of the training targets' direct own-gene effects (logit units) to the log
        scale by the delta method, :math:`\partial \log(1 + 10^4 \rho e^a) / \partial a = 10^4 \rho / (1 +
        10^4 \rho)` at the predicted level.
        """
        n = len(requested)
        change, sd = np.full(n, np.nan), np.full(n, np.nan)
        tm = self.target_map_
        obs = self.anchor_
        if not isinstance(tm, TargetMap) or not isinstance(obs, Observations):
            return change, sd
        pos = {g: i for i, g in enumerate(tm.var_names)}
        counts = self.adata_manager.registry["setup_args"].get("counts", True)
        for i, p in enumerate(requested):
            if len(p.targets) != 1 or p.targets[0] not in mapped or p.targets[0] not in pos:
                continue
            y0 = obs.control(self._context_of(p))
            if y0 is None:
                continue
            g = pos[p.targets[0]]
            change[i] = logx[i, g] - float(y0.value[g])
            level = np.expm1(logx[i, g]) if counts else np.inf
            sd[i] = tm.own_effect_sd * (level / (1.0 + level) if np.isfinite(level) else 1.0)
        return change, sd

    def _prediction_anndata(self, logx, requested, ro, plans, weights, *, return_mean, adata, batch, seed, anchor):
        module = self.module
        n_req = len(requested)
        fp = module.regime == "steady_state" and module.readout == "fixed_point"
        media_cats = self._media_categories()
        media_index = self._media_index(requested)
        own_change, own_sd = self._own_gene_columns(logx, requested, ro.mapped) if return_mean else (None, None)
        rows = []
        for i, p in enumerate(requested):
            unseen = [t for t in p.targets if t in ro.mapped]
            rows.append(
                {
                    "perturbation": p.label,
                    "media": media_cats[media_index[i]] if media_cats else None,
                    "time": p.time if self.regime == "dynamic" else np.nan,
                    "media_time": p.media_time,
                    "batch": batch if batch is not None else "source cells",
                    "n_cells": ro.n_cells,
                    "unseen_targets": ",".join(unseen),
                    "target_source": ",".join(sorted({ro.sources[t] for t in unseen})),
                    "steady_state_residual": float(ro.residual[i]) if fp else np.nan,
                }
            )
        if return_mean:
            for i, row in enumerate(rows):
                row["own_gene_change"] = own_change[i]
                row["own_gene_sd"] = own_sd[i]
                row["anchored"] = i in plans
                row["anchor_weight"] = weights[i]
            obs = pd.DataFrame(rows)
            index = [
                f"{r['perturbation']}|{r['media']}|{r['time']:g}"
                if self.regime == "dynamic" or r["media"]
                else r["perturbation"]
                for r in rows
            ]
            obs.index = pd.Index(index).astype(str)
            if not obs.index.is_unique:
                obs.index = [f"{i}#{k}" for k, i in enumerate(obs.index)]
        else:
            n0 = ro.n_cells
            obs = pd.DataFrame([r for r in rows for _ in range(n0)])
            source_adata = self.adata if adata is None else adata
            obs["source_cell"] = np.tile(np.asarray(source_adata.obs_names)[ro.start], n_req)
            obs.index = [f"{lab}|{c}" for lab, c in zip(obs["perturbation"], obs["source_cell"], strict=True)]
        for c in ("perturbation", "media", "batch"):
            obs[c] = obs[c].astype(str).astype("category")
        _, var_names = self._expression_matrix(self.adata if adata is None else adata)
        out = ad.AnnData(
            X=logx.astype(np.float32),
            obs=obs,
            var=pd.DataFrame(index=pd.Index(var_names, dtype=str).copy()),
            layers={"expression": np.expm1(logx).astype(np.float32)},
        )
        if not return_mean:
            out.obsm[SCMECH_ADATA_KEYS.LATENT_OBSM] = ro.latents.astype(np.float32)
        tm = self.target_map_
        out.uns[SCMECH_ADATA_KEYS.UNS] = {
            "prediction": {
                "model": type(self).__name__,
                "regime": self.regime,
                "readout": module.readout,
                "steady_state_weight": float(module.steady_state_weight),
                "n_starting_cells": int(ro.n_cells),
                "starting_cells": "user" if (adata is not None or ro.user_cells) else "training controls",
                "efficacy": ro.efficacy,
                "unseen_targets": list(ro.mapped),
                "target_sources": dict(ro.sources),
                "own_gene": tm.own_gene_summary() if isinstance(tm, TargetMap) else None,
                "unconverged": ro.unconverged,
                "target_map": None if not isinstance(tm, TargetMap) else tm.embedding_source,
                "random_state": int(seed),
                "value": "log1p(1e4 * mean normalised expression)",
                "anchor": anchor,
                "anchoring": {str(obs.index[i]): plan.description for i, plan in plans.items()},
            }
        }
        return out


def _own_calibration(values: list[float], modality: str | None) -> tuple[float, float]:
    """Median and robust spread of the training targets' direct own-gene effects, signed by the modality.

    CRISPRko and CRISPRi lower their target's production and CRISPRa raises it; a median of the other sign (the
    data disagree with the registered modality) is set to 0 with a warning.
    """
    if not values:
        return 0.0, float("nan")
    v = np.asarray(values, dtype=np.float64)
    med = float(np.median(v))
    sd = float(1.4826 * np.median(np.abs(v - med))) if len(v) >= 3 else float(np.std(v))
    sign = {"CRISPRko": -1.0, "CRISPRi": -1.0, "CRISPRa": 1.0}.get(modality or "", 0.0)
    if sign and med * sign < 0:
        logger.warning(
            "The training targets' own-gene effects have median %.3g, against the registered modality %r; "
            "targets without training cells get no own-gene effect.",
            med,
            modality,
        )
        med = 0.0
    return med, sd
