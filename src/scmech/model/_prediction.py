"""Prediction of perturbations, media and time protocols as AnnData (the model's read-out API)."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from scvi import REGISTRY_KEYS, settings

from scmech._constants import SCMECH_ADATA_KEYS, SCMECH_REGISTRY_KEYS, TARGET_SUM
from scmech.data._design import canonical_label, parse_condition
from scmech.data._embedding import pseudobulk_gene_embedding, ridge_map_cv
from scmech.data._pseudobulk import normalized_mean

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

logger = logging.getLogger(__name__)
K = SCMECH_REGISTRY_KEYS

__all__ = ["PredictionMixin", "Protocol"]

Step = tuple[str, Any]


@dataclass(frozen=True)
class Protocol:
    """One condition to predict: targets, medium and times (perturbation at time 0)."""

    label: str
    targets: tuple[str, ...]
    media: str | None
    time: float
    media_time: float


def protocol_from_steps(steps: Sequence[Step], *, separator: str, control_label: str) -> Protocol:
    """Turn an ordered list of steps into a :class:`Protocol`.

    Steps are ``("perturb", "STAT1")``, ``("media", "stim")`` and ``("wait", 2.0)``, applied in order on a
    clock that starts at 0. The read-out is at the end. At most one perturbation and one change of medium.
    """
    clock = 0.0
    t_pert = None
    t_media = None
    targets: tuple[str, ...] = ()
    media = None
    label = control_label
    for step in steps:
        if not (isinstance(step, tuple | list) and len(step) == 2):
            msg = (
                f"Protocol step {step!r} must be a pair like ('perturb', 'STAT1'), ('media', 'stim') or ('wait', 2.0)."
            )
            raise ValueError(msg)
        op, value = step
        if op == "wait":
            value = float(value)
            if not np.isfinite(value) or value < 0:
                msg = f"('wait', {value}) needs a finite, non-negative duration."
                raise ValueError(msg)
            clock += value
        elif op == "perturb":
            if t_pert is not None:
                msg = "A protocol holds one ('perturb', ...) step; combine targets as 'A+B' in that step."
                raise ValueError(msg)
            t_pert = clock
            targets = parse_condition(str(value), separator=separator, control_label=control_label)
            label = canonical_label(targets, separator=separator, control_label=control_label)
        elif op == "media":
            if t_media is not None:
                msg = "A protocol holds at most one ('media', ...) step."
                raise ValueError(msg)
            t_media = clock
            media = str(value)
        else:
            msg = f"Unknown protocol step {op!r}; use 'perturb', 'media' or 'wait'."
            raise ValueError(msg)
    if t_pert is None:
        t_pert = 0.0
    return Protocol(
        label=label,
        targets=targets,
        media=media,
        time=clock - t_pert,
        media_time=np.nan if t_media is None else t_media - t_pert,
    )


class PredictionMixin:
    """``predict`` and the closed-form map for targets never perturbed in training."""

    # ------------------------------------------------------------------ unseen targets
    def _fit_target_map(self, train_indices: np.ndarray, n_components: int = 10) -> None:
        """Fit the closed-form map from gene embeddings to operators over the training targets.

        Records the targets with training cells (``trained_targets_``); every other target, registered or
        not, is predicted through this map. The ridge penalty is chosen by leave-one-out over the training
        targets, from "follow the embedding" (the linear baseline's map) to "the mean training target" (the
        train-mean baseline).
        """
        adata = self.adata
        design = self._design(adata)
        st = self.adata_manager.get_state_registry(K.PERTURBATION_KEY)
        targets = list(st["targets"])
        trained = np.asarray(design.matrix[train_indices].sum(axis=0)).ravel() > 0
        self.trained_targets_ = [t for t, ok in zip(targets, trained, strict=True) if ok]
        x, var_names = self._expression_matrix(adata)
        setup = self.adata_manager.registry["setup_args"]
        emb_key = setup.get("gene_embedding_key")
        if emb_key is not None:
            a = adata.mod[self._field(REGISTRY_KEYS.X_KEY).mod_key] if hasattr(adata, "mod") else adata
            embedding = np.asarray(a.varm[emb_key], dtype=np.float64)
            source = f"varm[{emb_key!r}]"
        else:
            labels = design.labels[train_indices]
            vc = pd.Series(labels).value_counts()
            conds = sorted(c for c in vc.index[(vc >= 3)] if c != design.unassigned_label)
            if len(conds) < 3:
                self.target_map_ = None
                return
            mean = normalized_mean(*_rows(x, train_indices, labels), conds, counts=setup.get("counts", True))
            pb = np.log1p(TARGET_SUM * mean) if setup.get("counts", True) else mean
            embedding = pseudobulk_gene_embedding(pb, n_components=min(n_components, len(conds) - 1))
            source = "training pseudobulk PCA"
        gene_pos = {g: i for i, g in enumerate(var_names)}
        fit = [t for t, ok in zip(targets, trained, strict=True) if ok and t in gene_pos]
        if len(fit) < 2:
            self.target_map_ = None
            return
        e = embedding[[gene_pos[t] for t in fit]]
        coef, intercept, ridge, _ = ridge_map_cv(e, self._map_values(fit))
        self.target_map_ = {
            "embedding": embedding.astype(np.float32),
            "var_names": [str(v) for v in var_names],
            "coef": coef,
            "intercept": intercept,
            "fit_targets": fit,
            "ridge": float(ridge),
            "source": source,
        }

    def _map_values(self, targets: list[str]) -> np.ndarray:
        """Return what the gene-embedding map predicts for ``targets``: their operators and own-target effects."""
        pos = {t: i for i, t in enumerate(self.adata_manager.get_state_registry(K.PERTURBATION_KEY)["targets"])}
        rows = [pos[t] for t in targets]
        with torch.no_grad():
            ops = self.module.field.operators.detach().cpu().numpy()[rows]
            own = self.module.decoder.own_effect
            own_v = own.detach().cpu().numpy()[rows] if own is not None else np.zeros(len(rows))
        return np.hstack([ops, own_v[:, None]])

    def _fit_map_calibration(self, max_targets: int = 50) -> None:
        r"""Calibration slope of the gene-embedding map in data space, by leave-one-target-out.

        Each training target :math:`q` with an observed pseudobulk is mapped as if it had no training cells (the
        map refitted without it) and predicted by the model; its predicted change from the mean of the other
        training singles, :math:`d_q = m^{(-q)}_q - \bar m_{-q}`, is set against the observed one,
        :math:`e_q = y_q - \bar y_{-q}`. The slope :math:`\alpha = \sum_q \langle e_q, d_q\rangle / \sum_q
        \lVert d_q\rVert^2`, clipped to :math:`[0, 1]`, says how much of a mapped target's specific change the
        data bear out (``target_map_["slope"]``; 1 with fewer than 3 such targets). ``predict`` scales the specific
        change of targets without training cells by it when it anchors them on the mean training error.
        """
        tm, anc = self.target_map_, self.anchor_
        if tm is None:
            return
        tm["slope"], tm["slope_targets"] = 1.0, 0
        if anc is None:
            return
        ctrl = anc["control_label"]
        obs = {c: np.asarray(v, dtype=np.float64) for c, v in zip(anc["conditions"], anc["log1p"], strict=True)}
        singles = [c for c in anc["conditions"] if c != ctrl]
        fit = list(tm["fit_targets"])
        usable = [t for t in fit if t in obs]
        # leaving one out must leave enough targets for the map's own leave-one-out choice of penalty
        if len(usable) < 3 or len(fit) < 4 or len(singles) < 3:
            return
        if len(usable) > max_targets:
            usable = sorted(np.random.default_rng(0).choice(usable, size=max_targets, replace=False).tolist())
        pos = {g: i for i, g in enumerate(tm["var_names"])}
        e = np.asarray(tm["embedding"], dtype=np.float64)[[pos[t] for t in fit]]
        values = self._map_values(fit)
        raw = self.predict(singles, anchor="none", random_state=0)
        m = {c: np.asarray(raw.X[i], dtype=np.float64) for i, c in enumerate(singles)}
        # sums over the singles, so that each mean over the others is one subtraction
        m_sum, y_sum, n_other = sum(m.values()), sum(obs[c] for c in singles), len(singles) - 1
        saved = self.target_map_, self.trained_targets_
        num = den = 0.0
        try:
            for t in usable:
                keep = [j for j, u in enumerate(fit) if u != t]
                coef, intercept, _, _ = ridge_map_cv(e[keep], values[keep])
                self.target_map_ = {**tm, "coef": coef, "intercept": intercept}
                self.trained_targets_ = [u for u in saved[1] if u != t]
                m_loo = np.asarray(self.predict([t], anchor="none", random_state=0).X[0], dtype=np.float64)
                d = m_loo - (m_sum - m[t]) / n_other
                num += float((obs[t] - (y_sum - obs[t]) / n_other) @ d)
                den += float(d @ d)
        finally:
            self.target_map_, self.trained_targets_ = saved
        if den > 0:
            tm["slope"], tm["slope_targets"] = float(np.clip(num / den, 0.0, 1.0)), len(usable)

    def _map_targets(self, targets: list[str]) -> np.ndarray:
        tm = self.target_map_
        if tm is None:
            msg = (
                f"Cannot predict targets {targets} without training cells: no gene-embedding map was fitted (it "
                "needs at least two training targets that are measured genes, or a gene_embedding_key)."
            )
            raise KeyError(msg)
        pos = {g: i for i, g in enumerate(tm["var_names"])}
        missing = [t for t in targets if t not in pos]
        if missing:
            msg = (
                f"Target(s) {missing} have no training cells and are not genes of the data, so they have no gene "
                "embedding. Add an embedding for them (setup_anndata(..., gene_embedding_key=...) with the gene in "
                "var_names) or predict only measured genes."
            )
            raise KeyError(msg)
        emb = np.asarray(tm["embedding"], dtype=np.float64)[[pos[t] for t in targets]]
        return emb @ np.asarray(tm["coef"]) + np.asarray(tm["intercept"])

    def _operators_for(
        self, new_targets: list[str], needed: set[str]
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, list[str]]:
        """Operators, own effects and gene index for registered targets plus ``new_targets``.

        Targets without training cells (registered but held out, or new) among ``needed`` get their operator
        and own-target effect from the gene-embedding map. Returns them with the list of mapped targets.
        """
        module = self.module
        ops = module.field.operators.detach().clone()
        own = module.decoder.own_effect
        own = own.detach().clone() if own is not None else None
        idx = module.decoder.target_gene_index
        registered = list(self.adata_manager.get_state_registry(K.PERTURBATION_KEY)["targets"])
        trained = set(getattr(self, "trained_targets_", None) or registered)
        untrained = [t for t in registered if t in needed and t not in trained]
        mapped = untrained + list(new_targets)
        if not mapped:
            return ops, own, idx, []
        vals = self._map_targets(mapped)
        dev = ops.device
        new_ops = torch.as_tensor(vals[:, :-1], dtype=ops.dtype, device=dev)
        new_own = torch.as_tensor(vals[:, -1], dtype=ops.dtype, device=dev)
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
            var_pos = {g: i for i, g in enumerate(var_names)}
            new_idx = torch.as_tensor([var_pos.get(t, -1) for t in new_targets], dtype=idx.dtype, device=idx.device)
            idx = torch.cat([idx, new_idx])
        return ops, own, idx, mapped

    # ------------------------------------------------------------------ prediction
    def _build_protocols(self, perturbations, media, time, media_time, protocol) -> list[Protocol]:
        st = self.adata_manager.get_state_registry(K.PERTURBATION_KEY)
        sep, ctrl = st["separator"], st["control_label"]
        if protocol is not None:
            if perturbations is not None or time is not None or media is not None or media_time is not None:
                msg = "Pass either `protocol` or `perturbations`/`media`/`time`/`media_time`, not both."
                raise ValueError(msg)
            if len(protocol) == 0:
                msg = "`protocol` is empty; give steps like [('perturb', 'STAT1'), ('wait', 2.0)]."
                raise ValueError(msg)
            first = protocol[0]
            many = isinstance(first, list | tuple) and len(first) > 0 and isinstance(first[0], list | tuple)
            plist = protocol if many else [protocol]
            out = [protocol_from_steps(p, separator=sep, control_label=ctrl) for p in plist]
            if self.regime == "steady_state" and any(p.time > 0 or np.isfinite(p.media_time) for p in out):
                msg = (
                    "This model reads out steady states (regime='steady_state'): 'wait' steps and media switch times "
                    "have no meaning for it. Use a dynamic model (setup with a time_key) for time-resolved protocols."
                )
                raise ValueError(msg)
            return out
        if perturbations is None:
            perturbations = list(st["conditions"])
        if isinstance(perturbations, str):
            perturbations = [perturbations]
        n = len(perturbations)
        if n == 0:
            msg = "`perturbations` is empty; name at least one condition (e.g. ['STAT1'] or the control label)."
            raise ValueError(msg)
        if self.regime == "steady_state" and media_time is not None:
            msg = "`media_time` applies to dynamic models; a steady-state model reads out the fixed point in `media`."
            raise ValueError(msg)

        def _broadcast(v, name):
            if v is None or isinstance(v, str | float | int | np.floating | np.integer):
                return [v] * n
            v = list(v)
            if len(v) != n:
                msg = f"`{name}` has {len(v)} values for {n} perturbations; give one value or one per perturbation."
                raise ValueError(msg)
            return v

        med, tim, mtim = _broadcast(media, "media"), _broadcast(time, "time"), _broadcast(media_time, "media_time")
        out = []
        for i, (p, m, t, s) in enumerate(zip(perturbations, med, tim, mtim, strict=True)):
            if p is None or isinstance(p, float | np.floating):
                msg = (
                    f"perturbations[{i}] = {p!r} is not a label; name each condition as a string (a target such as "
                    f"'STAT1', a combination 'A{sep}B' or the control label {ctrl!r})."
                )
                raise TypeError(msg)
            targets = parse_condition(str(p), separator=sep, control_label=ctrl)
            if self.regime == "dynamic" and t is None:
                msg = "The model is dynamic: give the read-out `time` (since perturbation) to predict."
                raise ValueError(msg)
            if self.regime == "steady_state" and t is not None:
                msg = "`time` applies to dynamic models; this model reads out steady states (regime='steady_state')."
                raise ValueError(msg)
            tt = 0.0 if t is None else float(t)
            if not np.isfinite(tt) or tt < 0:
                msg = f"time={t!r} must be finite and >= 0 (time since perturbation)."
                raise ValueError(msg)
            ss = np.nan if s is None else float(s)
            out.append(Protocol(canonical_label(targets, separator=sep, control_label=ctrl), targets, m, tt, ss))
        return out

    def _starting_cells(self, adata, from_cells, n_cells, rng) -> np.ndarray:
        design = self._design(adata)
        if from_cells is None:
            idx = np.flatnonzero(design.is_control)
            if len(idx) == 0:
                msg = "No control cells to start counterfactuals from; pass from_cells=<indices of cells>."
                raise ValueError(msg)
            cap = 500 if n_cells is None else n_cells
        else:
            fc = np.asarray(from_cells)
            idx = np.flatnonzero(fc) if fc.dtype == bool else fc.astype(int)
            if fc.dtype == bool and len(fc) != adata.n_obs:
                msg = f"from_cells is a mask of length {len(fc)} for {adata.n_obs} cells."
                raise ValueError(msg)
            if len(idx) == 0 or idx.min() < 0 or idx.max() >= adata.n_obs:
                msg = f"from_cells must index cells of adata (0..{adata.n_obs - 1})."
                raise ValueError(msg)
            cap = n_cells
        if cap is not None and len(idx) > cap:
            idx = np.sort(rng.choice(idx, size=cap, replace=False))
        return idx

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

        Each requested condition is predicted as counterfactuals of starting cells: a cell's basal state
        (its latent minus the read-out of its own protocol) plus the read-out of the requested protocol,
        decoded through the measurement operator with the cell's own batch (or ``batch``). Targets never
        perturbed in training are predicted through the closed-form gene-embedding map when they are genes of
        the data (or have a ``varm`` embedding).

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
            Indices (or a boolean mask) of the starting cells in ``adata``; control cells when ``None``.
        protocol
            An ordered list of steps, ``[("perturb", "STAT1"), ("media", "stim"), ("wait", 2.0)]``, or a list
            of such lists, instead of ``perturbations``/``media``/``time``: operators are applied in order and
            do not commute.
        return_mean
            One row per condition (mean over counterfactual cells) when ``True``; one row per counterfactual
            cell otherwise.
        anchor
            Correct mean predictions by the model's own error on conditions observed in training (steady-state
            regime, baseline medium), in log-normalised space:

            - a combination whose single targets were all observed is predicted as the observed singles plus the
              model's interaction, :math:`\hat y_{A+B} = y_A + y_B - y_\varnothing + [m_{A+B} - m_A - m_B +
              m_\varnothing]` (the additive baseline nested in the model; the dynamics supply what is not
              additive, such as the shared response of perturbed cells counted once);
            - with ``"auto"``, a single target without training cells is predicted as
              :math:`\bar m + \alpha (m_t - \bar m) + \overline{(y_q - m_q)}`, the model plus its mean error
              over (up to 50) observed training singles :math:`q` (the train-mean baseline nested in the model; the
              model supplies what is specific to :math:`t`, such as the knock-down of its own mRNA). The specific
              change from the mean training single :math:`\bar m` keeps the share :math:`\alpha \in [0, 1]` that
              the data bore out for training targets mapped as if unseen (leave-one-target-out, fitted after
              training: ``target_map_["slope"]``; 1 with fewer than 3 such targets);
            - with ``"auto"``, the control and singles observed in training are their observed pseudobulk
              (weighed against its noise, below), so that every row of the result lives in the same (data) space
              and differences between rows are effects;
            - with ``"auto"``, any other condition in a context (medium, time, switch time) whose controls were
              observed in training is predicted as :math:`m_p + (y_\varnothing - m_\varnothing)` in that
              context: the level of the observed controls plus the model's change from them (the control-mean
              baseline nested in the model);
            - with ``"auto"``, a perturbation observed in training under the same medium protocol is its
              observation (in the steady-state regime, and in the dynamic regime at an observed read-out time);
              in the dynamic regime, at another time it is the model plus its
              error at the neighbouring observed times :math:`u` (weights :math:`w_u` linear in time; the nearest
              time outside their range), on changes from each context's observed controls when those were
              observed: :math:`m_{p,t} + (y_{\varnothing,t} - m_{\varnothing,t}) + \sum_u w_u
              [(y_{p,u} - y_{\varnothing,u}) - (m_{p,u} - m_{\varnothing,u})]` (the linear model's pooling over
              time points nested in the model; the dynamics supply how the effect changes with time);
            - with ``"auto"``, a perturbation not observed under its medium protocol but observed at the same
              read-out time under others (sources :math:`s`, e.g. another medium) is the model plus the observed
              controls' level in its context and the model's mean error on the perturbation's change from the
              controls of each source: :math:`m_{p} + (y_{\varnothing} - m_{\varnothing}) + \overline{[(y_{p,s} -
              y_{\varnothing,s}) - (m_{p,s} - m_{\varnothing,s})]}` (the linear model's medium-independent effect
              nested in the model; the dynamics supply how the medium changes the effect). The two corrections are
              independent errors and each is weighed against its own noise.

            Each correction :math:`c_g` (the bracketed observed-minus-model terms above) is weighed per gene
            against the sampling noise of the observed pseudobulks it uses (variance :math:`v_g`, from the
            training cells' between-cell variance over their number, through the log by the delta method): the
            row gets :math:`m + w_g c_g` with :math:`w_g = \tau^2 / (\tau^2 + v_g)` and
            :math:`\tau^2 = \max(0, \overline{c_g^2 - v_g})`, the empirical-Bayes estimate of the model's
            systematic error. A correction that stands out of the noise is kept, noisy genes are shrunk towards
            the model, and a correction that is all noise is dropped; ``obs["anchor_weight"]`` is each row's mean
            :math:`w_g` (NaN where nothing was anchored).

            ``"combinations"`` does only the first; ``"none"`` returns the model's own predictions (e.g. to
            inspect its fit). ``uns["scmech"]["prediction"]["anchoring"]`` records what was done to each row.
            Anchoring applies only to mean predictions from the training controls (no ``from_cells``, ``batch``
            or ``adata``).
        adata
            AnnData holding the starting cells (registered data when ``None``).
        batch_size
            Minibatch size for encoding.
        random_state
            Seed for subsetting cells and drawing efficacies (``scvi.settings.seed`` when ``None``).

        Returns
        -------
        AnnData with ``X`` the log-normalised prediction :math:`\log(1 + 10^4 \rho)` (the pseudobulk definition
        of :func:`scmech.data.pseudobulk`), ``layers["expression"]`` the normalised expression
        (counts per 10,000), ``obs`` columns ``perturbation``, ``media``, ``time``, ``media_time``, ``batch``,
        ``n_cells``, ``unseen_targets``, ``anchored`` and ``steady_state_residual`` (:math:`\|f\|` at the solved
        fixed point, NaN for flows; a :class:`RuntimeWarning` names conditions whose solve did not converge, also
        listed in ``uns["scmech"]["prediction"]["unconverged"]``), and ``uns["scmech"]["prediction"]`` the
        provenance. Per-cell predictions also carry ``obs["source_cell"]`` and ``obsm["X_scmech"]``
        (counterfactual latents).
        """
        self._check_if_trained(warn=False)
        if n_cells is not None and int(n_cells) < 1:
            msg = f"n_cells={n_cells} must be at least 1."
            raise ValueError(msg)
        if efficacy is not None and not (0.0 <= float(efficacy) <= 1.0):
            msg = f"efficacy={efficacy} must be in [0, 1] (fraction of knock-down; 1 = full effect)."
            raise ValueError(msg)
        own_data = adata is None
        adata = self._validate_anndata(adata)
        seed = (settings.seed if settings.seed is not None else 0) if random_state is None else random_state
        rng = np.random.default_rng(seed)
        protocols = self._build_protocols(perturbations, media, time, media_time, protocol)
        n_requested = len(protocols)
        if anchor not in ("auto", "combinations", "none"):
            msg = f"anchor={anchor!r} is not one of 'auto', 'combinations', 'none'."
            raise ValueError(msg)
        # anchoring corrects the model by its error on the training data: it applies to predictions from the
        # training controls, measured like them (not to other starting cells, other data or one batch)
        can_anchor = return_mean and anchor != "none" and from_cells is None and batch is None and own_data
        anchored = self._anchor_plan(protocols, anchor, rng) if can_anchor else {}
        if anchored:
            # the model's own predictions of the observed components, from the same starting cells
            st0 = self.adata_manager.get_state_registry(K.PERTURBATION_KEY)
            markers = ("__mean__", "__self__", "__context__")
            dynamic_plans = ("__context__", "__time__", "__observed__", "__media__")
            extra = sorted(
                {t for ts in anchored.values() if ts[0] not in dynamic_plans for t in ts if t not in markers}
                | {st0["control_label"]}
            )
            protocols = protocols + [
                Protocol(
                    label=t,
                    targets=() if t == st0["control_label"] else (t,),
                    media=None,
                    time=0.0,
                    media_time=np.nan,
                )
                for t in extra
            ]
            protocols = protocols + [
                Protocol(
                    label=f"__time__{i}@{u}",
                    targets=protocols[i].targets,
                    media=protocols[i].media,
                    time=float(u),
                    media_time=protocols[i].media_time,
                )
                for i, ts in anchored.items()
                if ts[0] == "__time__"
                for u, _ in ts[3:]
            ]
            protocols = protocols + [
                Protocol(
                    label=f"__media__{i}@{src!r}",
                    targets=protocols[i].targets,
                    media=src[0],
                    time=protocols[i].time,
                    media_time=np.nan if src[1] is None else src[1],
                )
                for i, ts in anchored.items()
                if ts[0] == "__media__"
                for src in ts[4:]
            ]
            contexts = sorted(
                {ts[1] for ts in anchored.values() if ts[0] == "__context__"}
                | {c for ts in anchored.values() if ts[0] == "__time__" for c in self._time_anchor_contexts(ts)}
                | {c for ts in anchored.values() if ts[0] == "__media__" for c in self._media_anchor_contexts(ts)}
            )
            by_repr = {repr(k): k for k in self.anchor_context_}
            protocols = protocols + [
                Protocol(
                    label=f"__context__{c}",
                    targets=(),
                    media=by_repr[c][0],
                    time=0.0 if by_repr[c][1] is None else by_repr[c][1],
                    media_time=np.nan if by_repr[c][2] is None else by_repr[c][2],
                )
                for c in contexts
            ]
        st = self.adata_manager.get_state_registry(K.PERTURBATION_KEY)
        known = list(st["targets"])
        known_set = set(known)
        new_targets = sorted({t for p in protocols for t in p.targets if t not in known_set})
        needed = {t for p in protocols for t in p.targets}
        ops, own, gene_idx, mapped = self._operators_for(new_targets, needed)
        all_targets = known + new_targets
        col = {t: i for i, t in enumerate(all_targets)}
        media_cats = self._media_categories()
        batch_cats = self._batch_categories()
        media_idx = []
        for p in protocols:
            if p.media is None:
                media_idx.append(0)
            elif p.media not in media_cats:
                msg = (
                    f"Medium {p.media!r} was not seen in training (media: {media_cats or 'none registered'}). "
                    "Predict only registered media."
                )
                raise KeyError(msg)
            else:
                media_idx.append(media_cats.index(p.media))
        batch_index = None
        if batch is not None:
            if str(batch) not in batch_cats:
                msg = f"Batch {batch!r} was not seen in training (batches: {batch_cats or 'none registered'})."
                raise KeyError(msg)
            batch_index = batch_cats.index(str(batch))

        start = self._starting_cells(adata, from_cells, n_cells, rng)
        module = self.module
        dev = self.device
        dl = self._make_data_loader(adata=adata, indices=start, batch_size=batch_size or 1024, shuffle=False)
        basal, batches, cats, conts = [], [], [], []
        for tensors in dl:
            tensors = {k: v.to(dev) for k, v in tensors.items()}
            inf = module.inference(**module._get_inference_input(tensors))
            proto = module._protocol(tensors)
            mu, _ = module.readout_states(
                proto["perturbation"],
                proto["media"],
                proto["efficacy"],
                proto["time"],
                proto["media_time"],
                implicit=False,
            )
            basal.append(inf["qz"].loc - mu)
            batches.append(tensors.get(REGISTRY_KEYS.BATCH_KEY))
            cats.append(tensors.get(REGISTRY_KEYS.CAT_COVS_KEY))
            conts.append(tensors.get(REGISTRY_KEYS.CONT_COVS_KEY))
        basal = torch.cat(basal)
        n0 = basal.shape[0]
        b_idx = torch.cat(batches) if batches[0] is not None else None
        if batch_index is not None:
            b_idx = torch.full((n0, 1), batch_index, device=dev)
        cat_covs = torch.cat(cats) if cats[0] is not None else None
        cont_covs = torch.cat(conts) if conts[0] is not None else None

        eff_pool = self._efficacy_pool(adata) if (efficacy is None and module.use_efficacy) else None
        n_prot = len(protocols)
        # efficacy levels: one given value, or quantiles of the perturbed training cells' efficacies spread
        # evenly over the counterfactual cells (a deterministic stand-in for drawing one per cell)
        if efficacy is not None:
            levels = np.array([float(efficacy)])
        elif eff_pool is not None:
            levels = np.quantile(eff_pool, (np.arange(8) + 0.5) / 8)
        else:
            levels = None
        n_lev = 1 if levels is None else len(levels)
        cell_level = torch.as_tensor(np.arange(n0) % n_lev, device=dev)
        pert = torch.zeros(n_prot, len(all_targets), device=dev)
        for k, p in enumerate(protocols):
            for t in p.targets:
                pert[k, col[t]] = 1.0
        pert_rows = pert.repeat_interleave(n_lev, dim=0)
        eff_rows = None if levels is None else torch.as_tensor(np.tile(levels, n_prot), dtype=torch.float32, device=dev)
        med_rows = torch.as_tensor(np.repeat(media_idx, n_lev), dtype=torch.long, device=dev)
        t_rows = torch.as_tensor(np.repeat([p.time for p in protocols], n_lev), dtype=torch.float32, device=dev)
        s_rows = torch.as_tensor(np.repeat([p.media_time for p in protocols], n_lev), dtype=torch.float32, device=dev)
        mu_rows, res_rows = module.readout_states(
            pert_rows, med_rows, eff_rows, t_rows, s_rows, operators=ops, implicit=False
        )
        # residual |f| of each condition's steady-state solve (largest over efficacy levels); 0 for flows
        residual = res_rows.reshape(n_prot, n_lev).amax(1).cpu().numpy().astype(np.float64)
        fp = module.regime == "steady_state" and module.readout == "fixed_point"
        limit = max(module.fixed_point_tol * 10, 1e-4) * np.sqrt(module.n_latent)
        bad = [(p.label, r) for p, r in zip(protocols[:n_requested], residual, strict=False) if fp and r > limit]
        unconverged = [label for label, _ in bad]
        if bad:
            warnings.warn(
                f"The steady-state solve did not converge within fixed_point_max_iter={module.fixed_point_max_iter} "
                f"Newton iterations for {len(bad)} condition(s) (e.g. {bad[0][0]!r}, residual "
                f"{bad[0][1]:.3g}); their predictions are the last "
                "iterate. Check obs['steady_state_residual']; a model trained longer or with a larger "
                "fixed_point_max_iter (SemiMechVI(..., fixed_point_max_iter=...)) usually converges.",
                RuntimeWarning,
                stacklevel=2,
            )
        off_rows = module.decoder.perturbation_offset(pert_rows, eff_rows, own_effect=own, target_gene_index=gene_idx)
        mu_rows = mu_rows.reshape(n_prot, n_lev, -1)
        off_rows = None if off_rows is None else off_rows.reshape(n_prot, n_lev, -1)
        n_genes = module.n_input
        chunk = max(1, int(2e7 // max(n0 * n_genes, 1)))
        rows_x, rows_z, obs_rows = [], [], []
        fast = None
        if return_mean and module.decoder.hidden is None:
            # linear decoder: logits = A_cell + B_condition, so the mean over cells is exact in two products
            cell_logits = module.decoder.logits(basal, b_idx, None, cat_covs, cont_covs)
            cond_logits = mu_rows @ module.decoder.loading.weight.T
            if off_rows is not None:
                cond_logits = cond_logits + off_rows
            fast = _mean_over_cells(cell_logits, cond_logits, cell_level, softmax=module.gene_likelihood != "normal")
        if fast is not None:
            rows_x.append(fast.cpu().numpy())
        for lo in range(0, n_prot if fast is None else 0, chunk):
            ks = slice(lo, min(lo + chunk, n_prot))
            k = ks.stop - ks.start
            z_cf = basal.unsqueeze(0) + mu_rows[ks][:, cell_level]  # k x cells x latent
            offset = None if off_rows is None else off_rows[ks][:, cell_level].reshape(k * n0, n_genes)
            logits = module.decoder.logits(
                z_cf.reshape(k * n0, -1),
                None if b_idx is None else b_idx.repeat(k, 1),
                offset,
                None if cat_covs is None else cat_covs.repeat(k, 1),
                None if cont_covs is None else cont_covs.repeat(k, 1),
            )
            value = logits if module.gene_likelihood == "normal" else torch.softmax(logits, dim=-1)
            value = value.reshape(k, n0, n_genes)
            if return_mean:
                rows_x.append(value.mean(1).cpu().numpy())
            else:
                rows_x.append(value.reshape(k * n0, n_genes).cpu().numpy())
                rows_z.append(z_cf.reshape(k * n0, -1).cpu().numpy())
        for p, m, r in zip(protocols, media_idx, residual, strict=True):
            info = {
                "perturbation": p.label,
                "media": media_cats[m] if media_cats else None,
                "time": p.time if self.regime == "dynamic" else np.nan,
                "media_time": p.media_time,
                "batch": batch if batch is not None else "source cells",
                "n_cells": n0,
                "unseen_targets": ",".join(t for t in p.targets if t in mapped),
                "steady_state_residual": float(r) if fp else np.nan,
            }
            if return_mean:
                obs_rows.append(info)
            else:
                obs_rows.extend([info] * n0)
        values = np.concatenate(rows_x).astype(np.float64)
        if module.gene_likelihood == "normal":
            logx = values
        else:
            logx = np.log1p(TARGET_SUM * values)
        if return_mean:
            logx, weights = self._apply_anchor(logx, protocols, anchored, n_requested)
            logx = logx[:n_requested]
            obs_rows = obs_rows[:n_requested]
            for i, row in enumerate(obs_rows):
                row["anchored"] = i in anchored
                row["anchor_weight"] = weights[i]
            protocols = protocols[:n_requested]
        expr = np.expm1(logx)
        obs = pd.DataFrame(obs_rows)
        if not return_mean:
            obs["source_cell"] = np.tile(np.asarray(adata.obs_names)[start], len(protocols))
            obs.index = [f"{lab}|{c}" for lab, c in zip(obs["perturbation"], obs["source_cell"], strict=True)]
        else:
            obs.index = [
                f"{r['perturbation']}|{r['media']}|{r['time']:g}"
                if self.regime == "dynamic" or r["media"]
                else r["perturbation"]
                for r in obs_rows
            ]
            obs.index = pd.Index(obs.index).astype(str)
            if not obs.index.is_unique:
                obs.index = [f"{i}#{k}" for k, i in enumerate(obs.index)]
        for c in ("perturbation", "media", "batch"):
            obs[c] = obs[c].astype(str).astype("category")
        _, var_names = self._expression_matrix(adata)
        out = ad.AnnData(
            X=logx.astype(np.float32),
            obs=obs,
            var=pd.DataFrame(index=pd.Index(var_names, dtype=str).copy()),
            layers={"expression": expr.astype(np.float32)},
        )
        if not return_mean:
            out.obsm[SCMECH_ADATA_KEYS.LATENT_OBSM] = np.concatenate(rows_z).astype(np.float32)
        out.uns[SCMECH_ADATA_KEYS.UNS] = {
            "prediction": {
                "model": type(self).__name__,
                "regime": self.regime,
                "readout": module.readout,
                "steady_state_weight": float(module.steady_state_weight),
                "n_starting_cells": int(n0),
                "starting_cells": "controls" if from_cells is None else "user",
                "efficacy": "empirical" if eff_pool is not None else ("given" if efficacy is not None else "1"),
                "unseen_targets": list(mapped),
                "unconverged": unconverged,
                "target_map": None if self.target_map_ is None else self.target_map_["source"],
                "random_state": int(seed),
                "value": "log1p(1e4 * mean normalised expression)",
                "anchor": anchor if can_anchor else "none",
                "anchoring": {
                    str(obs.index[i]): {
                        "__mean__": f"mean error of {len(ts) - 1} training singles",
                        "__self__": "observed",
                        "__context__": "observed controls of the context",
                        "__observed__": "observed",
                        "__time__": "observed at neighbouring times",
                        "__media__": "observed in other media",
                    }.get(ts[0], "observed singles")
                    for i, ts in anchored.items()
                    if i < len(obs)
                },
            }
        }
        return out

    def _fit_anchor(self, train_indices: np.ndarray, min_cells: int = 10) -> None:
        """Store observed log pseudobulks: training singles and control (baseline medium), controls per context."""
        self.anchor_ = None
        self.anchor_context_, self.anchor_context_var_ = self._context_controls(np.asarray(train_indices), min_cells)
        # perturbations per context: for other read-out times (dynamic) and other media (both regimes)
        by_context = self.regime == "dynamic" or len(self._media_categories()) > 1
        self.anchor_protocols_, self.anchor_protocols_var_ = (
            self._protocol_pseudobulks(np.asarray(train_indices), min_cells) if by_context else ({}, {})
        )
        if self.regime != "steady_state":
            return
        design = self._design(self.adata)
        idx = np.asarray(train_indices)
        if K.MEDIA_KEY in self.adata_manager.data_registry:
            media = np.asarray(self.adata_manager.get_from_registry(K.MEDIA_KEY)).ravel()
            idx = idx[media[idx] == 0]
        labels = design.labels[idx]
        n_t = design.n_targets_per_cell[idx]
        keep = (n_t <= 1) & ~design.is_unassigned[idx]
        vc = pd.Series(labels[keep]).value_counts()
        conds = sorted(vc.index[vc >= min_cells].tolist())
        if design.control_label not in conds or len(conds) < 2:
            return
        x, _ = self._expression_matrix(self.adata)
        counts = self.adata_manager.registry["setup_args"].get("counts", True)
        pb, var = _log_pseudobulk(x, idx[keep], labels[keep], conds, counts)
        self.anchor_ = {
            "conditions": conds,
            "log1p": pb.astype(np.float32),
            "var": var.astype(np.float32),
            "control_label": design.control_label,
        }

    def _context_of(self, media: str | None, time: float, media_time: float) -> tuple:
        cats = self._media_categories()
        m = (cats[0] if cats else None) if media is None else str(media)
        t = round(float(time), 6) if self.regime == "dynamic" else None
        s = None if (self.regime != "dynamic" or not np.isfinite(media_time)) else round(float(media_time), 6)
        return (m, t, s)

    def _context_keys(self, rows: np.ndarray) -> list[tuple]:
        """Context ``(medium, time, switch time)`` of each of ``rows``, as :meth:`_context_of` writes it."""
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
            self._context_of(None if m == none else cats[int(m)], 0.0 if t == none else t, np.nan if sw == none else sw)
            for m, t, sw in uniq
        ]
        return [keys[j] for j in np.asarray(inverse).ravel()]

    def _pseudobulks_by(self, rows: np.ndarray, keys: list, min_cells: int) -> tuple[dict, dict]:
        """Observed log pseudobulks of ``rows`` by ``keys`` (groups of ``min_cells`` cells or more), variances."""
        if len(rows) == 0:
            return {}, {}
        codes = pd.Series(pd.Categorical([repr(k) for k in keys]))
        vc = codes.value_counts()
        groups = sorted(vc.index[vc >= min_cells].tolist())
        if not groups:
            return {}, {}
        lookup = {repr(k): k for k in keys}
        x, _ = self._expression_matrix(self.adata)
        counts = self.adata_manager.registry["setup_args"].get("counts", True)
        pb, var = _log_pseudobulk(x, rows, codes.astype(str).to_numpy(), groups, counts)
        values = {lookup[g]: pb[i].astype(np.float32) for i, g in enumerate(groups)}
        return values, {lookup[g]: var[i].astype(np.float32) for i, g in enumerate(groups)}

    def _context_controls(self, idx: np.ndarray, min_cells: int) -> tuple[dict, dict]:
        """Observed log pseudobulk of the training controls per context ``(medium, time, switch time)``, variances."""
        design = self._design(self.adata)
        keep = idx[design.is_control[idx] & ~design.is_unassigned[idx]]
        return self._pseudobulks_by(keep, self._context_keys(keep), min_cells)

    def _protocol_pseudobulks(self, idx: np.ndarray, min_cells: int) -> tuple[dict, dict]:
        """Observed log pseudobulks of the training perturbations and their variances.

        Both as ``{(label, medium, switch): {time: values}}``.
        """
        design = self._design(self.adata)
        keep = idx[~design.is_control[idx] & ~design.is_unassigned[idx]]
        labels = design.labels[keep]
        keys = [(str(lab), m, s, t) for lab, (m, t, s) in zip(labels, self._context_keys(keep), strict=True)]
        out: dict = {}
        out_var: dict = {}
        values, variances = self._pseudobulks_by(keep, keys, min_cells)
        for (lab, m, s, t), v in values.items():
            out.setdefault((lab, m, s), {})[t] = v
            out_var.setdefault((lab, m, s), {})[t] = variances[(lab, m, s, t)]
        return out, out_var

    def _anchor_plan(self, protocols: list[Protocol], anchor: str, rng: np.random.Generator) -> dict:
        """Plan the anchoring: protocol position -> observed components (``("__mean__", q1, ...)`` for the mean).

        Combinations (baseline medium) whose single targets all have observed training pseudobulks get their
        singles; with ``anchor="auto"``, singles without training cells get a sample of observed singles.
        """
        anc = getattr(self, "anchor_", None)
        plan: dict[int, tuple[str, ...]] = {}
        if anc:
            plan = self._baseline_anchor_plan(protocols, anchor, rng, anc)
        observed = getattr(self, "anchor_protocols_", None) or {}
        if anchor == "auto" and observed:
            plan.update(self._time_anchor_plan(protocols, plan, observed))
        context = getattr(self, "anchor_context_", None) or {}
        if anchor == "auto" and observed and context:
            plan.update(self._media_anchor_plan(protocols, plan, observed, context))
        if anchor == "auto" and context:
            for i, p in enumerate(protocols):
                if i in plan:
                    continue
                key = self._context_of(p.media, p.time, p.media_time)
                if key in context:
                    plan[i] = ("__context__", repr(key))
        return plan

    def _time_anchor_plan(self, protocols: list[Protocol], plan: dict, observed: dict) -> dict:
        """Perturbations observed in training under the same medium protocol at other read-out times.

        At an observed time the prediction is the observation (``"__observed__"``); between observed times the
        model's error there is interpolated linearly in time (the nearest one outside their range).
        """
        out: dict[int, tuple] = {}
        for i, p in enumerate(protocols):
            if i in plan or not p.targets:
                continue
            m, t, s = self._context_of(p.media, p.time, p.media_time)
            times = observed.get((p.label, m, s))
            if not times:
                continue
            key = (p.label, m, s)
            if t in times:
                out[i] = ("__observed__", key, t)
                continue
            lo = max((u for u in times if u < t), default=None)
            hi = min((u for u in times if u > t), default=None)
            if lo is None or hi is None:
                points = ((hi if lo is None else lo, 1.0),)
            else:
                w = (t - lo) / (hi - lo)
                points = ((lo, 1.0 - w), (hi, w))
            out[i] = ("__time__", key, t, *points)
        return out

    def _media_anchor_plan(self, protocols: list[Protocol], plan: dict, observed: dict, context: dict) -> dict:
        """Perturbations not observed under their medium protocol but observed at the same time under others.

        Each such protocol ``(medium, switch)`` whose controls were observed at that time is a source: the model's
        error on the perturbation's change from those controls carries over to the requested medium.
        """
        out: dict[int, tuple] = {}
        for i, p in enumerate(protocols):
            if i in plan or not p.targets:
                continue
            m, t, s = self._context_of(p.media, p.time, p.media_time)
            sources = sorted(
                (
                    (m2, s2)
                    for (lab, m2, s2), times in observed.items()
                    if lab == p.label and (m2, s2) != (m, s) and t in times and (m2, t, s2) in context
                ),
                key=repr,
            )
            if sources:
                out[i] = ("__media__", p.label, t, (m, t, s) if (m, t, s) in context else None, *sources)
        return out

    @staticmethod
    def _media_anchor_contexts(ts: tuple) -> list[str]:
        """Control contexts a ``"__media__"`` plan uses: the requested one (when observed), then each source's."""
        own = [repr(ts[3])] if ts[3] is not None else []
        return own + [repr((m, ts[2], s)) for m, s in ts[4:]]

    def _time_anchor_contexts(self, ts: tuple) -> list[str]:
        """Control contexts a ``"__time__"`` plan uses (all of them, or none when one is not observed)."""
        _, m, s = ts[1]
        need = [repr((m, ts[2], s))] + [repr((m, u, s)) for u, _ in ts[3:]]
        have = {repr(k) for k in (getattr(self, "anchor_context_", None) or {})}
        return need if all(c in have for c in need) else []

    def _baseline_anchor_plan(
        self, protocols: list[Protocol], anchor: str, rng: np.random.Generator, anc: dict
    ) -> dict:
        seen = set(anc["conditions"]) - {anc["control_label"]}
        trained = set(self.trained_targets_ or [])
        baseline = (None, *self._media_categories()[:1])
        plan: dict[int, tuple[str, ...]] = {}
        pool = sorted(seen)
        if len(pool) > 50:
            pool = sorted(rng.choice(pool, size=50, replace=False).tolist())
        for i, p in enumerate(protocols):
            if p.media not in baseline:
                continue
            if anchor == "auto" and (p.label in seen or p.label == anc["control_label"]):
                plan[i] = ("__self__",)
            elif len(p.targets) >= 2 and all(t in seen for t in p.targets):
                plan[i] = p.targets
            elif anchor == "auto" and len(p.targets) == 1 and p.targets[0] not in trained and len(pool) >= 2:
                plan[i] = ("__mean__", *pool)
        return plan

    def _apply_anchor(
        self, logx: np.ndarray, protocols: list[Protocol], anchored: dict, n_requested: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Anchored values and the mean weight each row's correction kept (:func:`_shrinkage`; NaN: not anchored)."""
        weights = np.full(n_requested, np.nan)
        if not anchored:
            return logx, weights
        anc = self.anchor_ or {"conditions": [], "log1p": [], "control_label": None}
        obs = {c: np.asarray(v, dtype=np.float64) for c, v in zip(anc["conditions"], anc["log1p"], strict=True)}
        # variances were stored from this version on; a model saved before has none (corrections kept whole)
        has_var = getattr(self, "anchor_context_var_", None) is not None and (self.anchor_ is None or "var" in anc)
        obs_var = dict(zip(anc["conditions"], anc["var"], strict=True)) if has_var and self.anchor_ else {}
        protocol_var = getattr(self, "anchor_protocols_var_", None) or {}
        ctrl = anc["control_label"]
        # the components were appended after the requested conditions
        row = {p.label: n_requested + k for k, p in enumerate(protocols[n_requested:])}
        out = logx.copy()
        err_ctrl = obs[ctrl] - logx[row[ctrl]] if ctrl in obs else None
        context = {repr(k): np.asarray(v, dtype=np.float64) for k, v in self.anchor_context_.items()}
        context_var = {repr(k): v for k, v in self.anchor_context_var_.items()} if has_var else {}

        def noise(*terms) -> np.ndarray | None:
            # variance of a weighted sum of independent observed pseudobulks: sum of w^2 v
            return sum(w**2 * np.asarray(v, dtype=np.float64) for w, v in terms) if has_var else None

        for i, p in enumerate(protocols[:n_requested]):
            if i not in anchored:
                continue
            targets = anchored[i]
            # the row is base + the weighed correction, plus any further independent correction, each weighed
            base, more = logx[i], []
            if targets[0] == "__observed__":
                corr = np.asarray(self.anchor_protocols_[targets[1]][targets[2]], dtype=np.float64) - logx[i]
                var = noise((1.0, protocol_var.get(targets[1], {}).get(targets[2])))
            elif targets[0] == "__time__":
                # the model's error at the neighbouring observed times, interpolated; on changes from the
                # controls of each context when those were observed, else on levels
                times = self.anchor_protocols_[targets[1]]
                ctx = self._time_anchor_contexts(targets)
                corr = context[ctx[0]] - logx[row[f"__context__{ctx[0]}"]] if ctx else 0.0
                terms = [(1.0, context_var.get(ctx[0]))] if ctx else []
                for j, (u, w) in enumerate(targets[3:], start=1):
                    err = np.asarray(times[u], dtype=np.float64) - logx[row[f"__time__{i}@{u}"]]
                    terms.append((w, protocol_var.get(targets[1], {}).get(u)))
                    if ctx:
                        err = err - (context[ctx[j]] - logx[row[f"__context__{ctx[j]}"]])
                        terms.append((w, context_var.get(ctx[j])))
                    corr = corr + w * err
                var = noise(*terms)
            elif targets[0] == "__media__":
                # the observed controls' level in the requested context (when observed) plus the model's error on
                # the perturbation's change from the controls under each other medium protocol, averaged
                _, lab, t, own, *sources = targets
                if own is not None:
                    c = repr(own)
                    more.append((context[c] - logx[row[f"__context__{c}"]], noise((1.0, context_var.get(c)))))
                corr, terms = 0.0, []
                for src in sources:
                    c = repr((src[0], t, src[1]))
                    y = np.asarray(self.anchor_protocols_[(lab, *src)][t], dtype=np.float64)
                    err = (y - logx[row[f"__media__{i}@{src!r}"]]) - (context[c] - logx[row[f"__context__{c}"]])
                    corr = corr + err / len(sources)
                    terms += [(1.0 / len(sources), protocol_var.get((lab, *src), {}).get(t))]
                    terms += [(1.0 / len(sources), context_var.get(c))]
                var = noise(*terms)
            elif targets[0] == "__context__":
                # the level of the observed controls of the same context, the model's change from them
                corr = context[targets[1]] - logx[row[f"__context__{targets[1]}"]]
                var = noise((1.0, context_var.get(targets[1])))
            elif targets[0] == "__self__":
                corr = obs[p.label] - logx[i]
                var = noise((1.0, obs_var.get(p.label)))
            elif targets[0] == "__mean__":
                corr = np.mean([obs[t] - logx[row[t]] for t in targets[1:]], axis=0)
                q = len(targets) - 1
                var = noise(*[(1.0 / q, obs_var.get(t)) for t in targets[1:]])
                # the mapped target's specific change from the mean training single, as far as the data bear it out
                slope = float((self.target_map_ or {}).get("slope", 1.0))
                base = logx[i] - (1.0 - slope) * (logx[i] - np.mean([logx[row[t]] for t in targets[1:]], axis=0))
            else:
                corr = sum(obs[t] - logx[row[t]] for t in targets) - (len(targets) - 1) * err_ctrl
                var = noise(*[(1.0, obs_var.get(t)) for t in targets], (len(targets) - 1.0, obs_var.get(ctrl)))
            parts = [(corr, var), *more]
            ws = [_shrinkage(c, v) for c, v in parts]
            weights[i] = float(np.mean(np.concatenate(ws)))
            out[i] = base + sum(w * c for w, (c, _) in zip(ws, parts, strict=True))
        return out, weights

    def _efficacy_pool(self, adata) -> np.ndarray | None:
        if K.EFFICACY_KEY not in self.adata_manager.data_registry:
            return None
        eff = np.asarray(self.adata_manager.get_from_registry(K.EFFICACY_KEY)).ravel()
        design = self._design(self.adata)
        perturbed = design.fit_mask & ~design.is_control
        return eff[perturbed] if perturbed.any() else None


def _mean_over_cells(
    cell_logits: torch.Tensor, cond_logits: torch.Tensor, cell_level: torch.Tensor, *, softmax: bool
) -> torch.Tensor | None:
    r"""Mean over cells of :math:`\mathrm{softmax}(A_i + B_{k,l(i)})` for every condition :math:`k`, exactly.

    With :math:`E^A_i = e^{A_i - \max A_i}` and :math:`E^B_k = e^{B_k - \max B_k}`, the softmax of cell
    :math:`i` under condition :math:`k` is :math:`E^A_i \odot E^B_k / (E^A_i \cdot E^B_k)`, so the mean over the
    cells of efficacy level :math:`l` is :math:`E^B_k \odot \sum_i E^A_i / S_{ik}` with :math:`S = E^B {E^A}^T`:
    two matrix products instead of a softmax over cells x conditions x genes. Computed in float64; returns
    ``None`` (use the per-cell path) when a normaliser underflows.

    Parameters
    ----------
    cell_logits
        Logits of the cell-specific part (cells x genes).
    cond_logits
        Logits of the condition-specific part (conditions x levels x genes).
    cell_level
        Efficacy level of each cell (cells,).
    softmax
        ``False`` for an identity link (``gene_likelihood="normal"``): the mean of sums.
    """
    n0 = cell_logits.shape[0]
    a = cell_logits.double()
    b = cond_logits.double()
    out = torch.zeros(b.shape[0], b.shape[2], dtype=torch.float64, device=b.device)
    for lev in range(b.shape[1]):
        sel = cell_level == lev
        if not bool(sel.any()):
            continue
        a_l, b_l = a[sel], b[:, lev]
        if not softmax:
            out += sel.sum() * b_l + a_l.sum(0, keepdim=True)
            continue
        ea = torch.exp(a_l - a_l.amax(1, keepdim=True))
        eb = torch.exp(b_l - b_l.amax(1, keepdim=True))
        norm = eb @ ea.T  # conditions x cells
        if bool((norm < 1e-280).any()):
            return None
        out += eb * ((1.0 / norm) @ ea)
    return (out / n0).float()


def _log_pseudobulk(x, rows: np.ndarray, labels: np.ndarray, groups: list, counts: bool) -> tuple:
    r"""Log pseudobulk of ``rows`` per group and its sampling variance per gene (delta method).

    The variance of a group's mean normalised expression is the between-cell variance over the cell count; through
    :math:`\log(1 + 10^4 m)` it is scaled by :math:`(10^4 / (1 + 10^4 m))^2`. Non-count data are averaged as they
    are.
    """
    xr, lab = _rows(x, rows, labels)
    mean, second = normalized_mean(xr, lab, groups, counts=counts, second_moment=True)
    n = pd.Series(np.asarray(labels, dtype=object)).value_counts().reindex(groups).to_numpy(dtype=np.float64)
    var = np.clip(second - mean**2, 0.0, None) / np.maximum(n - 1.0, 1.0)[:, None]
    if counts:
        return np.log1p(TARGET_SUM * mean), var * (TARGET_SUM / (1.0 + TARGET_SUM * mean)) ** 2
    return mean, var


def _shrinkage(corr: np.ndarray, var: np.ndarray | None) -> np.ndarray:
    r"""Per-gene weight of a correction observed with per-gene sampling variance ``var`` (empirical Bayes).

    The correction :math:`c_g` is the model's systematic error :math:`s_g` plus sampling noise of variance
    :math:`v_g`. With a common prior variance of the systematic errors, estimated from the correction itself as
    :math:`\tau^2 = \max(0, \overline{c_g^2 - v_g})`, the posterior mean of :math:`s_g` is :math:`w_g c_g` with
    :math:`w_g = \tau^2 / (\tau^2 + v_g)`: a correction that stands out of the noise is kept, noisy genes (low
    expression, few cells) are shrunk towards the model, and a correction that is all noise is dropped. Without
    variances (models saved before they were stored) the correction is kept whole.
    """
    if var is None:
        return np.ones_like(corr)
    var = np.nan_to_num(np.asarray(var, dtype=np.float64), nan=0.0)
    tau2 = max(0.0, float(np.mean(corr**2 - var)))
    if tau2 == 0.0:
        return np.zeros_like(corr)
    return tau2 / (tau2 + var)


def _rows(x, rows: np.ndarray, labels: np.ndarray) -> tuple:
    """Matrix and per-row labels for :func:`normalized_mean` restricted to ``rows``.

    In-memory matrices are passed whole with an empty label outside ``rows`` (ignored by ``normalized_mean``),
    so that the selected rows are not copied; backed matrices are selected lazily.
    """
    rows = np.asarray(rows)
    if isinstance(x, np.ndarray) or sp.issparse(x):
        full = np.full(x.shape[0], "", dtype=object)
        full[rows] = np.asarray(labels, dtype=object)
        return x, full
    return x[rows], labels
