r"""Scoring: every metric family of every model on the evaluated conditions, as a tidy table.

:func:`_run` is shared by :func:`~scmech.tl.evaluate` and :func:`~scmech.tl.noise_ceiling`: it picks the
conditions to evaluate, builds the observed side (:class:`~._observed._Observed`) and scores each model's
prediction frame with the families of :mod:`._correlation`, :mod:`._error`, :mod:`._rank` and
:mod:`._distribution`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd

from scmech.data._design import canonical_condition, parse_condition

from ._checks import _warn
from ._correlation import _pearson_metrics, _systema_metrics
from ._distribution import _cell_edistance, _fit_pca, _observed_subsets
from ._error import _error_metrics
from ._names import _SYSTEMA_METRICS
from ._observed import _Observed
from ._rank import _centroid_distances, _rank_metrics

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData
    from sklearn.decomposition import PCA

    from scmech.data._design import PerturbationDesign

logger = logging.getLogger(__name__)


def _off_target(c: str, design: PerturbationDesign, gene_pos: dict[str, int], n_genes: int) -> np.ndarray:
    """Mask of the genes that are not targets of condition ``c``."""
    targets = parse_condition(c, separator=design.separator, control_label=design.control_label)
    off = np.ones(n_genes, dtype=bool)
    off[[gene_pos[t] for t in targets if t in gene_pos]] = False
    return off


class _CellSpace(NamedTuple):
    """What ``energy_distance`` shares across models: the PCA, the observed cells per condition, the sizes.

    The observed cells are drawn once and every model's predicted cells with a fresh generator seeded with
    ``seed``, so that a model's score does not depend on the other models evaluated with it (or their order).
    """

    pca: PCA
    observed: dict[str, np.ndarray]
    max_cells: int
    seed: int


def _metrics_for(
    pred: pd.DataFrame, obs: _Observed, cell_pred: AnnData | None, space: _CellSpace | None
) -> list[tuple[str, str, float]]:
    """``(condition, metric, value)`` of one model's prediction frame, every family in turn per condition.

    ``energy_distance`` is added when ``space`` is given (a model with per-cell predictions).
    """
    rng = np.random.default_rng(space.seed) if space is not None else None
    conds = obs.conditions
    obs_mat = obs.pb.loc[conds].to_numpy()
    pred_mat = pred.loc[conds, obs.genes].to_numpy()
    dist = _centroid_distances(pred_mat, obs_mat)
    rows = []
    gene_pos = obs.target_pos
    for i, c in enumerate(conds):
        yhat, y = pred_mat[i], obs_mat[i]
        de = obs.de_genes[c]
        off = _off_target(c, obs.design, gene_pos, len(y))
        vals = {
            **_pearson_metrics(yhat, y, obs.ctrl, de, obs.n_de_genes),
            **_error_metrics(yhat, y, obs.ctrl, de, obs.top_genes),
            **_systema_metrics(yhat, y, obs.reference, de, off),
            **_rank_metrics(dist, i),
        }
        if space is not None:
            vals["energy_distance"] = _cell_edistance(
                c, cell_pred, obs, space.pca, space.observed[c], rng, space.max_cells
            )
        rows.extend((c, m, v) for m, v in vals.items())
    return rows


def _evaluated_conditions(
    preds: dict[str, pd.DataFrame],
    design: PerturbationDesign,
    obs_mask: np.ndarray,
    conditions: Sequence[str] | None,
) -> list[str]:
    """Pick the conditions to evaluate: those asked for, or the observed ones every model predicts."""
    ctrl = design.control_label
    observed_conds = set(design.labels[obs_mask & ~design.is_control & design.fit_mask].tolist())
    if conditions is not None:
        conds = sorted({canonical_condition(c, design) for c in conditions} - {ctrl})
        missing = [c for c in conds if c not in observed_conds]
        if missing:
            msg = (
                f"Condition(s) {missing[:5]} have no observed cells to evaluate against "
                f"(observed: {sorted(observed_conds)[:10]})."
            )
            raise KeyError(msg)
        for name, frame in preds.items():
            lack = [c for c in conds if c not in frame.index]
            if lack:
                msg = f"Model {name!r} has no prediction for {lack[:5]}; predict them or drop them from `conditions`."
                raise KeyError(msg)
    else:
        per_model = {name: set(frame.index) & observed_conds for name, frame in preds.items()}
        common = set.intersection(*per_model.values())
        union = set.union(*per_model.values())
        if union - common:
            logger.warning(
                "Models predict different conditions; evaluating the %d they share (left out: %s).",
                len(common),
                sorted(union - common)[:10],
            )
        conds = sorted(common)
        unobserved = {c for f in preds.values() for c in f.index} - observed_conds
        if unobserved:
            logger.info("Predicted conditions without observed cells are not evaluated: %s", sorted(unobserved)[:10])
    if not conds:
        msg = "No condition to evaluate: the predictions share no perturbation with the observed (test) cells."
        raise ValueError(msg)
    return conds


def _score_model(
    name: str,
    frame: pd.DataFrame,
    obs: _Observed,
    cell_pred: AnnData | None,
    space: _CellSpace | None,
) -> list[tuple[str, str, str, float, int]]:
    """``(model, condition, metric, value, n_cells)`` rows of one model."""
    if cell_pred is not None and "perturbation" not in cell_pred.obs.columns:
        msg = f"cell_predictions[{name!r}] has no obs['perturbation']; pass predict(return_mean=False)."
        raise KeyError(msg)
    if cell_pred is not None and len(obs.genes.difference(pd.Index(cell_pred.var_names).astype(str))):
        msg = f"cell_predictions[{name!r}] lacks genes of the evaluation."
        raise ValueError(msg)
    rows = [
        (name, c, m, v, int(obs.n_cells[c]))
        for c, m, v in _metrics_for(frame, obs, cell_pred, space if cell_pred is not None else None)
    ]
    if space is not None and cell_pred is None:
        rows.extend((name, c, "energy_distance", np.nan, int(obs.n_cells[c])) for c in obs.conditions)
    return rows


def _run(
    preds: dict[str, pd.DataFrame],
    adata: AnnData,
    design: PerturbationDesign,
    *,
    obs_mask: np.ndarray,
    ctrl_mask: np.ndarray,
    train_mask: np.ndarray,
    conditions: Sequence[str] | None,
    train_conditions: Sequence[str] | None,
    genes: pd.Index,
    gene_names: pd.Series | None = None,
    layer: str | None,
    counts: bool,
    n_de_genes: int,
    n_top_expressed: int,
    de_method: str,
    cell_predictions: dict[str, AnnData] | None,
    n_pcs: int,
    max_cells: int,
    random_state: int,
) -> pd.DataFrame:
    """Score prediction frames against the observed cells of ``obs_mask`` (see :func:`scmech.tl.evaluate`)."""
    ctrl = design.control_label
    conds = _evaluated_conditions(preds, design, obs_mask, conditions)
    if not ctrl_mask.any():
        msg = f"No control cells ({ctrl!r}) to compute changes against."
        raise ValueError(msg)
    if train_conditions is None:
        logger.info("No train_conditions given: systema_pearson_delta(_de) are NaN.")
    obs = _Observed(
        adata,
        design,
        obs_mask,
        ctrl_mask,
        train_mask,
        conds,
        None if train_conditions is None else [canonical_condition(c, design) for c in train_conditions],
        genes,
        layer=layer,
        counts=counts,
        n_de_genes=n_de_genes,
        n_top_expressed=n_top_expressed,
        de_method=de_method,
        gene_names=None if gene_names is None else list(gene_names),
    )
    if train_conditions is not None and obs.reference is None:
        _warn(
            f"None of the training conditions {list(train_conditions)[:5]} has observed training cells, so "
            f"{', '.join(_SYSTEMA_METRICS)} are NaN (the Systema reference is their mean centroid). Pass the "
            "training perturbations of this adata (or the split the models were trained on)."
        )
    space = None
    if cell_predictions:
        rng = np.random.default_rng(random_state)
        pca = _fit_pca(obs, n_pcs, rng, max_cells, random_state)
        space = _CellSpace(pca, _observed_subsets(obs, rng, max_cells), max_cells, random_state)
    rows = []
    for name, frame in preds.items():
        rows.extend(_score_model(name, frame, obs, (cell_predictions or {}).get(name), space))
    return pd.DataFrame(rows, columns=["model", "condition", "metric", "value", "n_cells"])
