"""What ``predict`` needs from training, fitted once training ends: the observations and the target map.

:meth:`PostTrainingMixin._fit_anchor` stores the observed training pseudobulks of every condition in every
context (:class:`~scmech.model._anchoring.Observations`) and calibrates the combination interaction and the
carry-over between media on them; :meth:`PostTrainingMixin._fit_target_map` fits the
:class:`~scmech.model._target_map.TargetMap` for targets without training cells (class mean, own-gene effect,
propagation directions and the validated gain).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch
from scvi import REGISTRY_KEYS

from scmech._constants import SCMECH_REGISTRY_KEYS, TARGET_SUM
from scmech.data._embedding import pseudobulk_gene_embedding
from scmech.data._pseudobulk import normalized_mean
from scmech.data._target_genes import name_positions

from ._amplitude import AmplitudeMixin
from ._anchoring import Observations, ObservedPseudobulk, _rows, log_pseudobulk
from ._calibration import fit_interaction_gain, fit_media_carry
from ._own_gene import own_calibration
from ._own_gene_fit import OwnGeneMixin
from ._protocols import Protocol
from ._readout import efficacy_pool, read_out, starting_cells
from ._target_map import (
    TargetMap,
    latent_directions,
    propagation_gain,
    residual_map,
    smallest_within_noise,
)
from ._weights import member_mean, random_effects_weights

logger = logging.getLogger(__name__)
K = SCMECH_REGISTRY_KEYS

__all__ = ["PostTrainingMixin"]

#: most training targets the propagation gain and the embedding map are validated on (each refitted without it)
MAX_CLASS = 50
#: shares of the least-squares propagation gain validated by leave-one-target-out
GAIN_SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)


class PostTrainingMixin(OwnGeneMixin, AmplitudeMixin):
    """Fits, after training, the training observations and the target map that ``predict`` uses."""

    def _fit_target_map(self, train_indices: np.ndarray, n_components: int = 10) -> None:
        """Fit the :class:`~scmech.model._target_map.TargetMap` for targets without training cells."""
        adata = self.adata
        design = self._design(adata)
        targets = list(self._perturbation_state()["targets"])
        trained = np.asarray(design.matrix[train_indices].sum(axis=0)).ravel() > 0
        self.trained_targets_ = [t for t, ok in zip(targets, trained, strict=True) if ok]
        var_names = list(self._target_gene_names(adata))  # the names targets are matched against
        gene_pos = name_positions(var_names)
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
        learned, learned_sd = own_calibration([own[row[t]] for t in members], modality)
        tm = TargetMap(
            var_names=var_names,
            trained=list(fit),
            class_targets=members,
            operator_class=op_class,
            operator_all=op_all,
            own_effect=learned,
            own_effect_sd=learned_sd,
            own_targets=len(members) if own_p is not None else 0,
            own_source="learned" if members and own_p is not None else "none",
            drive_effect=learned,
            modality=modality,
        )
        if members and own_p is not None:
            pairs = self._own_gene_pairs(members)
            checked = _at_most(pairs, MAX_CLASS)
            bases = None if checked is None else self._anchor_bases([members[i] for i in checked[0]], fit)
            if pairs is not None:
                tm.own_targets, tm.own_source = len(pairs[0]), "observed"
                own_level, reference = self._own_levels(pairs)
                if not self._fit_own_level(tm, own_level, reference):
                    tm.own_effect, tm.own_effect_sd = self._fit_own_effect(own_level, reference)
                    self._fit_own_scale(tm)
            self._fit_amplitude(tm, members, checked, bases)
            tm.directions = self._latent_directions(np.asarray(train_indices))
            drives = np.stack([own[row[t]] * tm.directions[gene_pos[t]] for t in members])
            class_ops = ops[[row[t] for t in members]]
            tm.propagation_mean = drives.mean(0)
            tm.gain, tm.gain_fit, tm.gain_loo = propagation_gain(drives, class_ops)
            validated = self._validate_gain(
                members, drives, class_ops, own[[row[t] for t in members]], tm, checked, bases
            )
            if validated is not None:
                tm.gain, tm.gain_loo = validated
            embedding, tm.embedding_source = self._gene_embedding(train_indices, n_components)
            if embedding is not None:
                member_emb = embedding[[gene_pos[t] for t in members]]
                resid = class_ops - op_class - tm.gain * (drives - tm.propagation_mean)
                coef, intercept, ridge = residual_map(member_emb, resid)
                if coef is not None and self._validate_map(member_emb, drives, class_ops, tm, checked, bases):
                    tm.embedding, tm.coef, tm.intercept, tm.ridge = embedding.astype(np.float32), coef, intercept, ridge
        self.target_map_ = tm

    def _own_gene_pairs(self, members: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Observed own-gene levels of every class member observed in the baseline context.

        Returns
        -------
        The members' positions in ``members``, the observed pseudobulks (members x genes) and each member's gene
        position, or ``None`` with fewer than 3 observed members or without observed controls.
        """
        obs = self.anchor_
        ctx = self._context_of(Protocol("", (), None, 0.0, np.nan))
        if not isinstance(obs, Observations) or obs.control(ctx) is None:
            return None
        seen = [i for i, q in enumerate(members) if obs.get(q, ctx) is not None]
        if len(seen) < 3:
            return None
        y = np.stack([np.asarray(obs.get(members[i], ctx).value, dtype=np.float64) for i in seen])
        genes = self._target_gene_positions()
        return np.asarray(seen), y, np.asarray([genes[members[i]] for i in seen])

    def _anchor_bases(self, names: list[str], trained: list[str]) -> np.ndarray:
        """Return the observed anchor each of ``names`` would get as an unseen target (names x genes).

        As :class:`~scmech.model._anchoring.UnseenTarget` anchors a target without training cells: the random-effects
        mean (:func:`~scmech.model._weights.member_mean`: each target left out at its own gene) of the observations of
        every other training target in the baseline context. The validations of the gain and of the embedding map
        predict each member from this anchor, so that they judge the model's specific change exactly where a
        prediction adds it.
        """
        obs = self.anchor_
        ctx = self._context_of(Protocol("", (), None, 0.0, np.nan))
        observed = {q: obs.get(q, ctx) for q in trained}
        observed = {q: o for q, o in observed.items() if o is not None}
        gene_pos = self._target_gene_positions()
        order = sorted(observed)
        values = np.stack([np.asarray(observed[q].value, dtype=np.float64) for q in order])
        var = np.stack([np.asarray(observed[q].var, dtype=np.float64) for q in order])
        own = tuple((gene_pos[q],) if q in gene_pos else () for q in order)
        out = []
        for name in names:
            keep = np.array([q != name for q in order])
            kept_own = tuple(g for g, k in zip(own, keep, strict=True) if k)
            out.append(member_mean(random_effects_weights(values[keep], var[keep]), values[keep], kept_own))
        return np.stack(out)

    def _validate_gain(
        self,
        members: list[str],
        drives: np.ndarray,
        ops: np.ndarray,
        own: np.ndarray,
        tm: TargetMap,
        pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
        bases: np.ndarray | None,
    ) -> tuple[float, dict] | None:
        r"""Share of the propagation gain that predicts the training targets best, each mapped as if unseen.

        For each training target :math:`q` of the class observed in the baseline context (at most ``MAX_CLASS``,
        a seeded random draw beyond), the class mean, the gain and the own-gene effects are refitted without it and
        :math:`q` is predicted as an unseen target is anchored: its anchor :math:`\bar y_{-q}`, the random-effects
        mean of the other training targets' observations (``bases``, :meth:`_anchor_bases`), plus the model's specific
        change, its read-out under the mapped operator with the own-gene knock-down minus its read-out under the
        class's mean operator without it. The share :math:`s` of the
        least-squares gain (:data:`GAIN_SHARES`) is chosen on the members' mean squared errors against their
        observed pseudobulks by the one-standard-error rule
        (:func:`~scmech.model._target_map.smallest_within_noise`): a larger share only when it predicts the
        members better by more than the spread between them. This validates the gain in the space predictions are
        scored in, not in the latent space, where the error weighs directions by the latent geometry rather than
        by their effect on expression.

        Parameters
        ----------
        members
            The training targets of the class (measured genes).
        drives, ops
            The members' propagated drives and learned operators (members x latent).
        own
            The members' learned direct effects.
        tm
            The target map (its least-squares gain and directions are used).
        pairs
            From :meth:`_own_gene_pairs`.
        bases
            Each observed member's anchor as an unseen target (:meth:`_anchor_bases`).

        Returns
        -------
        ``(gain, errors per share)``, or ``None`` without at least 3 observed members (``pairs``, from
        :meth:`_own_gene_pairs`; the latent leave-one-out of :func:`~scmech.model._target_map.propagation_gain`
        stands).
        """
        if pairs is None or tm.gain_fit <= 0:
            return None
        seen, y, genes = pairs
        own_level, reference = self._own_levels(pairs)
        member_effect = self._member_effects(own_level, reference, tm)
        rows, labels = [], []
        for k, i in enumerate(seen):
            keep = [j for j in range(len(members)) if j != i]
            x_k, v_k = drives[keep], ops[keep]
            xc, vc = x_k - x_k.mean(0), v_k - v_k.mean(0)
            den = float((xc * xc).sum())
            kappa = max(0.0, float((xc * vc).sum()) / den) if den > 0 else 0.0
            d = float(np.median(own[keep])) * np.asarray(tm.directions[genes[k]], dtype=np.float64) - x_k.mean(0)
            a = float(member_effect[k])
            rows.append((v_k.mean(0), 0.0, -1))
            labels.append((k, None))
            for share in GAIN_SHARES:
                rows.append((v_k.mean(0) + share * kappa * d, a, int(genes[k])))
                labels.append((k, share))
        errors = _mapped_errors(labels, self._read_mapped(rows), y, bases, GAIN_SHARES, genes)
        best = smallest_within_noise(errors)
        return best * tm.gain_fit, {float(k): float(v.mean()) for k, v in errors.items()}

    def _validate_map(
        self,
        embedding: np.ndarray,
        drives: np.ndarray,
        ops: np.ndarray,
        tm: TargetMap,
        pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
        bases: np.ndarray | None,
    ) -> bool:
        r"""Whether the embedding's residual map predicts the training targets better, each mapped as if unseen.

        The map's penalty is chosen by leave-one-out on the latent operators (:func:`residual_map`), which
        weighs directions by the latent geometry, not by their effect on expression; with a handful of targets
        it can follow noise. As :meth:`_validate_gain` does for the propagation, each training target :math:`q`
        of the class observed in the baseline context is predicted without it: the map refitted on the other
        members (its penalty chosen again), :math:`q`'s operator with and without the map's part, both read out
        with the own-gene knock-down, added to :math:`q`'s anchor and compared with its observed pseudobulk. The
        map is kept only when its mean squared error is lower by more than the spread between the members
        (:func:`~scmech.model._target_map.smallest_within_noise`, share 1 against share 0).

        Parameters
        ----------
        embedding
            Embedding rows of the class members' genes (members x K).
        drives, ops
            The members' propagated drives and learned operators (members x latent).
        tm
            The target map (its gain and own-gene effect are used).
        pairs
            From :meth:`_own_gene_pairs`; ``None`` (fewer than 3 observed members) keeps the map as the latent
            leave-one-out chose it.
        bases
            Each observed member's anchor as an unseen target (:meth:`_anchor_bases`).
        """
        if pairs is None:
            return True
        seen, y, genes = pairs
        own_level, reference = self._own_levels(pairs)
        member_effect = self._member_effects(own_level, reference, tm)
        drive = tm.drive_effect if np.isfinite(tm.drive_effect) else tm.own_effect
        rows, labels = [], []
        for k, i in enumerate(seen):
            keep = [j for j in range(len(ops)) if j != i]
            v_k, x_k = ops[keep], drives[keep]
            d = drive * np.asarray(tm.directions[genes[k]], dtype=np.float64) - x_k.mean(0)
            base = v_k.mean(0) + tm.gain * d
            resid = v_k - v_k.mean(0) - tm.gain * (x_k - x_k.mean(0))
            coef, intercept, _ = residual_map(embedding[keep], resid)
            shift = np.zeros_like(base) if coef is None else embedding[i] @ coef + intercept
            a = float(member_effect[k])
            for share, op in ((None, v_k.mean(0)), (0.0, base), (1.0, base + shift)):
                rows.append((op, 0.0 if share is None else a, -1 if share is None else int(genes[k])))
                labels.append((k, share))
        errors = _mapped_errors(labels, self._read_mapped(rows), y, bases, (0.0, 1.0), genes)
        return smallest_within_noise(errors) > 0

    @torch.inference_mode()
    def _read_mapped(self, rows: list[tuple[np.ndarray, float, int]]) -> np.ndarray:
        """Read out single targets given by ``(operator, own-gene effect, gene position)`` from the training controls.

        Each row is a pseudo-target appended to the registered ones (baseline medium, steady state or time 0).
        """
        module = self.module
        registered = list(self._perturbation_state()["targets"])
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

    def _fit_anchor(
        self, train_indices: np.ndarray, validation_indices: np.ndarray | None = None, min_cells: int = 10
    ) -> None:
        """Store the observed pseudobulks of every training condition in every context, and calibrate on them.

        A condition's pseudobulk pools its training cells with its validation cells: the validation cells of a
        condition observed in training are a random share of the same population, held back to monitor the fit,
        not a held-out condition, and leaving them out would add sampling noise to every anchored prediction.
        Validation cells of a condition (in a context) without training cells are never used: a split that
        validates on held-out conditions keeps them unseen.
        """
        design = self._design(self.adata)
        idx = np.asarray(train_indices)
        idx = idx[~design.is_unassigned[idx]]
        contexts = self._context_keys(idx)
        keys = _condition_keys(design.labels[idx], contexts)
        if validation_indices is not None and len(validation_indices):
            val = np.asarray(validation_indices)
            val = val[~design.is_unassigned[val]]
            val_contexts = self._context_keys(val)
            val_keys = _condition_keys(design.labels[val], val_contexts)
            seen = np.asarray(pd.Index(keys.unique()).get_indexer(val_keys.to_numpy()) >= 0)
            idx = np.concatenate([idx, val[seen]])
            keys = pd.concat([keys, val_keys[seen]], ignore_index=True)
            contexts = contexts + [c for c, ok in zip(val_contexts, seen, strict=True) if ok]
        labels = design.labels[idx]
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
            st = self._perturbation_state()
            for lab, _ in obs.conditions:
                if lab != design.control_label:
                    obs.targets[lab] = tuple(str(lab).split(st["separator"]))
            self._keep_batch_levels(obs, idx, keys, lookup, train_indices, min_cells)
        self.anchor_ = obs
        self._calibrate_anchor()

    def _keep_batch_levels(
        self,
        obs: Observations,
        idx: np.ndarray,
        keys: pd.Series,
        lookup: dict,
        train_indices: np.ndarray,
        min_cells: int,
    ) -> None:
        """Keep in ``obs`` each pseudobulk's batch composition, the controls' level per batch and their composition.

        ``idx`` are the observed cells, ``keys`` their condition keys, ``lookup`` the condition of each key; a
        batch's controls in a context need ``min_cells`` cells. The pseudobulks stay as observed, each in the
        composition its cells came in: an unseen target's cells come in the composition of the training targets'
        cells, not necessarily the controls', and its observed pseudobulk is what a prediction is compared with.
        What is kept lets a prediction move them to one batch (:meth:`Observations.in_batch`) or to the training
        controls' composition, the perturbation's effect alone (:meth:`Observations.in_controls_mix`). Nothing is
        kept without a registered batch.
        """
        if (
            int(self.summary_stats.get("n_batch", 1)) <= 1
            or REGISTRY_KEYS.BATCH_KEY not in self.adata_manager.data_registry
        ):
            return
        design = self._design(self.adata)
        codes = np.asarray(self.adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)).ravel().astype(int)
        n_batch = int(self.summary_stats["n_batch"])
        start = np.asarray(train_indices, dtype=int)
        start = start[design.is_control[start] & ~design.is_unassigned[start]]
        if len(start) == 0:
            return
        pool = np.bincount(codes[start], minlength=n_batch) / len(start)
        batch = codes[idx]
        key_of = keys.to_numpy(dtype=object)
        mix = {}
        for key, sub in pd.Series(batch).groupby(key_of):
            if key in lookup and lookup[key] in obs.conditions:
                mix[lookup[key]] = np.bincount(sub.to_numpy(), minlength=n_batch) / len(sub)
        # the controls of each context in each batch: their condition key (one per context) and the batch code
        is_ctrl = design.is_control[idx]
        groups_of = pd.Series(key_of[is_ctrl]) + "\x01" + pd.Series(batch[is_ctrl]).astype(str)
        n = groups_of.value_counts()
        groups = sorted(n.index)
        x, _ = self._expression_matrix(self.adata)
        counts = self.adata_manager.registry["setup_args"].get("counts", True)
        pb, var = log_pseudobulk(x, idx[is_ctrl], groups_of.to_numpy(dtype=object), groups, counts)
        row = {g: i for i, g in enumerate(groups)}
        controls = {}
        for key, (lab, ctx) in lookup.items():
            if lab != design.control_label:
                continue
            rows = [row.get(f"{key}\x01{b}") for b in range(n_batch)]
            ok = np.array([r is not None and n[groups[r]] >= min_cells for r in rows])
            values = np.stack([pb[r] if r is not None else np.zeros(pb.shape[1]) for r in rows])
            variances = np.stack([var[r] if r is not None else np.zeros(pb.shape[1]) for r in rows])
            controls[ctx] = (values.astype(np.float32), variances.astype(np.float32), ok)
        obs.batch_mix = mix
        obs.batch_levels = controls
        obs.batch_pool = pool

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


def _at_most(
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None, limit: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """At most ``limit`` of the observed members ``pairs`` (:meth:`PostTrainingMixin._own_gene_pairs`), drawn at random.

    The own-gene level is calibrated on every observed member; the validations refit the map once per member, so a
    screen with thousands of them validates on a seeded random draw of ``limit``, in their order (not the first
    ``limit`` by name).
    """
    if pairs is None or len(pairs[0]) <= limit:
        return pairs
    keep = np.sort(np.random.default_rng(seed).choice(len(pairs[0]), size=limit, replace=False))
    return pairs[0][keep], pairs[1][keep], pairs[2][keep]


def _condition_keys(labels: np.ndarray, contexts: list) -> pd.Series:
    """Key of each cell's condition in its context (perturbation label and read-out context)."""
    return pd.Series([f"{lab}\x00{c!r}" for lab, c in zip(labels, contexts, strict=True)])


def _mapped_errors(
    labels: list, values: np.ndarray, y: np.ndarray, bases: np.ndarray, shares, own_genes: np.ndarray | None = None
) -> dict[float, np.ndarray]:
    """Squared errors of the observed members, each predicted as if unseen, for each share of a mapped part.

    ``labels`` names each read-out row ``(member, share)``, with ``share=None`` for the member's reference
    read-out (the class's mean operator without an own gene). Member ``k`` is predicted as an unseen target is
    anchored: its anchor ``bases[k]`` (the random-effects mean of the other training targets' observations,
    :meth:`PostTrainingMixin._anchor_bases`) plus its read-out's change from its reference, against its
    observation ``y[k]``. Member ``k``'s own gene (``own_genes[k]``) is left out of its error: an unseen
    target's own gene is predicted from its control level, whatever the share
    (:meth:`~scmech.model._own_gene_fit.OwnGeneMixin._own_from_control`).
    """
    errors = {share: np.zeros(len(y)) for share in shares}
    reference = {}
    for (k, share), value in zip(labels, values, strict=True):
        if share is None:
            reference[k] = value
            continue
        sq = (bases[k] + value - reference[k] - y[k]) ** 2
        if own_genes is not None:
            sq = np.delete(sq, int(own_genes[k]))
        errors[share][k] = float(np.mean(sq))
    return errors
