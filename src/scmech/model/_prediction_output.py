"""The AnnData that ``predict`` returns: values, one row per prediction, and their provenance.

:class:`PredictionOutputMixin` assembles the output of :meth:`~scmech.model._prediction.PredictionMixin.predict`
once the read-out is anchored: the ``obs`` of each row (protocol, unseen targets, own-gene change, anchoring),
the expression layer, and the provenance in ``uns``.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd

from scmech._constants import SCMECH_ADATA_KEYS
from scmech.data._context import context_keys
from scmech.data._log_scale import expression_of, value_description

from ._anchoring import Observations, UnseenTarget
from ._target_map import TargetMap

if TYPE_CHECKING:
    from anndata import AnnData

    from ._protocols import Protocol
    from ._readout import Readout

__all__ = ["PredictionOutputMixin"]


class PredictionOutputMixin:
    """Assembly of :meth:`predict`'s AnnData: the ``obs`` of each prediction, the values and the provenance."""

    def _own_gene_columns(self, logx: np.ndarray, requested: list[Protocol], mapped: list[str]) -> tuple:
        r"""Predict the change of each unseen single target's own gene from the training controls, and its sd.

        The sd carries the spread of the training targets' direct own-gene effects (logit units) to the log
        scale by the delta method, :math:`\partial \log(1 + 10^4 \rho e^a) / \partial a = 10^4 \rho / (1 +
        10^4 \rho)` at the predicted level (divided by :math:`\log b` on input log-normalised in base :math:`b`;
        the spread itself where the knock-down is a shift: log-normalised input that is not :math:`\log(1 + x)`
        of a non-negative expression). Under the ``"level"`` model
        (activations brought to a common level) it is the spread of the training targets' own levels.
        """
        n = len(requested)
        change, sd = np.full(n, np.nan), np.full(n, np.nan)
        tm = self.target_map_
        obs = self.anchor_
        if not isinstance(tm, TargetMap) or not isinstance(obs, Observations):
            return change, sd
        pos = {g: i for i, g in enumerate(tm.var_names)}
        scaled = self._own_scaled() and self._scaled_as_fitted(tm)  # counts, or log1p input scaled
        k = math.log(self._log_base()) if scaled else 1.0  # log_b(1 + x) = log(1 + x) / k
        mapped = set(mapped)
        own = sorted({p.targets[0] for p in requested if len(p.targets) == 1 and p.targets[0] in mapped} & set(pos))
        if own and (tm.own_targets < 2 or not np.isfinite(tm.own_effect_sd)):
            none = tm.own_targets == 0 or not np.isfinite(tm.own_effect)
            warnings.warn(
                f"The own-gene knock-down of {own[:5]} (targets without training cells whose gene is measured) rests "
                f"on {tm.own_targets} training target(s) whose gene is measured: "
                + (
                    "their own gene is not knocked down. Keep such targets in training to calibrate it."
                    if none
                    else "too few to see how far the knock-down varies between targets, so its uncertainty "
                    "(obs['own_gene_sd']) is unknown and predict(interval=) leaves the own gene unbounded. Keep at "
                    "least three such targets in training."
                ),
                UserWarning,
                stacklevel=5,
            )
        for i, p in enumerate(requested):
            if len(p.targets) != 1 or p.targets[0] not in mapped or p.targets[0] not in pos:
                continue
            y0 = obs.control(self._context_of(p))
            if y0 is None:
                continue
            g = pos[p.targets[0]]
            change[i] = logx[i, g] - float(y0.value[g])
            if tm.own_model == "level":  # the spread of the training targets' own levels, already on this scale
                sd[i] = tm.own_effect_sd
                continue
            level = np.expm1(logx[i, g] * k) if scaled else np.inf
            sd[i] = tm.own_effect_sd * (level / (1.0 + level) / k if np.isfinite(level) else 1.0)
        return change, sd

    def _prediction_obs(
        self,
        logx: np.ndarray,
        requested: list[Protocol],
        ro: Readout,
        plans: dict,
        weights: np.ndarray,
        *,
        return_mean: bool,
        adata: AnnData | None,
        batch: str | None,
        amplitudes: dict[int, float] | None = None,
    ) -> pd.DataFrame:
        """Describe each row of :meth:`predict`'s output: its protocol, provenance and (for means) anchoring.

        Parameters
        ----------
        logx
            Predicted log values (for the own-gene columns of mean predictions).
        requested
            The requested protocols.
        ro
            The read-out of the protocols.
        plans
            The anchoring plan of each anchored row.
        weights
            Each row's anchoring weight.
        return_mean
            Whether rows are means over the starting cells (else one row per starting cell).
        adata
            The data the starting cells came from (``None``: the registered data).
        batch
            The batch the predictions are measured with (``None``: each starting cell's own).
        amplitudes
            The expression amplitude of each scaled row (:meth:`~scmech.model._amplitude.AmplitudeMixin._amplitudes`;
            other anchored unseen targets have 1).

        Returns
        -------
        The ``obs`` of the predictions, with unique names.
        """
        module = self.module
        n_req = len(requested)
        fp = module.regime == "steady_state" and module.readout == "fixed_point"
        media_cats = self._media_categories()
        media_index = self._media_index(requested)
        own_change, own_sd = self._own_gene_columns(logx, requested, ro.mapped) if return_mean else (None, None)
        rows = []
        mapped = set(ro.mapped)
        for i, p in enumerate(requested):
            unseen = [t for t in p.targets if t in mapped]
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
            amplitudes = amplitudes or {}
            for i, row in enumerate(rows):
                row["own_gene_change"] = own_change[i]
                row["own_gene_sd"] = own_sd[i]
                row["anchored"] = i in plans
                row["anchoring"] = plans[i].description if i in plans else None
                row["anchor_weight"] = weights[i]
                row["amplitude"] = amplitudes.get(i, 1.0) if isinstance(plans.get(i), UnseenTarget) else np.nan
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
            if not obs.index.is_unique:  # a condition asked twice, a cell started twice or duplicated source names
                obs.index = [f"{i}#{k}" for k, i in enumerate(obs.index)]
        for c in ("perturbation", "batch"):
            obs[c] = obs[c].astype(str).astype("category")
        # without media (or an anchoring plan) the column is missing (NaN), not the string "None"
        for c in ("media", "anchoring") if return_mean else ("media",):
            obs[c] = pd.Categorical([None if pd.isna(m) else str(m) for m in obs[c]])
        return obs

    def _prediction_anndata(
        self, logx, requested, ro, plans, weights, *, return_mean, adata, batch, seed, anchor, amplitudes=None
    ):
        """Assemble the AnnData that :meth:`predict` returns: values, one row per prediction, and the provenance.

        Parameters
        ----------
        logx
            Predicted log values, one row per requested protocol (or per requested protocol and starting cell).
        requested
            The requested protocols.
        ro
            The read-out of the protocols (starting cells, latents, residuals, unseen targets and their sources).
        plans
            The anchoring plan of each anchored row.
        weights
            Each row's anchoring weight.
        return_mean
            Whether rows are means over the starting cells (else one row per starting cell).
        adata
            The data the starting cells came from (``None``: the registered data).
        batch
            The batch the predictions are measured with (``None``: each starting cell's own).
        seed
            The random state of the prediction.
        anchor
            The anchoring mode used.
        amplitudes
            The expression amplitude of each scaled row (``None``: none).

        Returns
        -------
        The predictions with ``obs``, ``layers["expression"]`` and the provenance in ``uns``.
        """
        module = self.module
        counts = bool(self.adata_manager.registry["setup_args"].get("counts", True))
        log1p = self._own_scaled()  # counts, or log-normalised input that is log(1 + x) of an expression
        if log1p:
            # log(1 + 1e4 * mean) of counts, and log1p input, is >= 0: a correction that would take a gene below
            # zero expression (an observed change added to a lower level) predicts that the gene is not expressed
            logx = np.maximum(logx, 0.0)
        base = self._log_base() if log1p else None
        obs = self._prediction_obs(
            logx,
            requested,
            ro,
            plans,
            weights,
            return_mean=return_mean,
            adata=adata,
            batch=batch,
            amplitudes=amplitudes,
        )
        _, var_names = self._expression_matrix(self.adata if adata is None else adata)
        x = np.asarray(logx, dtype=np.float32)
        out = ad.AnnData(
            X=x,
            obs=obs,
            var=pd.DataFrame(index=pd.Index(var_names, dtype=str).copy()),
            # centred or scaled values stand for no expression: no layer rather than a meaningless one
            layers={} if base is None else {"expression": expression_of(x, base)},
        )
        if not return_mean:
            out.obsm[SCMECH_ADATA_KEYS.LATENT_OBSM] = ro.latents.astype(np.float32)
        tm = self.target_map_
        out.uns[SCMECH_ADATA_KEYS.UNS] = {
            SCMECH_ADATA_KEYS.PREDICTION_UNS: {
                "model": type(self).__name__,
                "regime": self.regime,
                "readout": module.readout,
                "steady_state_weight": float(module.steady_state_weight),
                "n_starting_cells": int(ro.n_cells),
                "starting_cells": "user" if (adata is not None or ro.user_cells) else "training controls",
                "efficacy": ro.efficacy,
                "unseen_targets": list(ro.mapped),
                # a table, not a dict keyed by target: h5ad reads a "/" in a key as a nested group
                "target_sources": pd.DataFrame(
                    {"source": [str(v) for v in ro.sources.values()]},
                    index=pd.Index([str(t) for t in ro.sources], dtype=str, name="target"),
                ),
                "own_gene": tm.own_gene_summary() if isinstance(tm, TargetMap) else None,
                "unconverged": ro.unconverged,
                "target_map": tm.map_summary() if isinstance(tm, TargetMap) else None,
                "random_state": int(seed),
                "value": value_description(counts, base),
                "anchor": anchor,
                "context_keys": context_keys(self.adata_manager.registry["setup_args"]),
            }
        }
        return out
