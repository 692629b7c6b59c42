r"""pertpy's :class:`~pertpy.tools.Distance` between predicted and observed cells (:func:`prediction_distance`)."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scvi import settings

from scmech._constants import SCMECH_ADATA_KEYS
from scmech.data._design import get_design

from ._combine import combine_prediction
from ._common import OBSERVED, PREDICTED, _import_pertpy

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

__all__ = ["prediction_distance"]

#: pertpy metrics that compare distributions of cells (a mean prediction is a single point for them)
_CELL_METRICS = frozenset(
    {
        "edistance",
        "mean_pairwise",
        "mmd",
        "wasserstein",
        "sym_kldiv",
        "t_test",
        "ks_test",
        "nb_ll",
        "classifier_proba",
        "classifier_cp",
        "mean_var_distribution",
    }
)


def prediction_distance(
    pred: AnnData,
    observed: AnnData,
    metric: str = "edistance",
    *,
    perturbation_key: str = "perturbation",
    control_label: str = "NT",
    separator: str = "+",
    unassigned_label: str | Sequence[str] | None = ("unassigned", "multiple"),
    layer: str | None = None,
    counts: bool = True,
    conditions: str | Sequence[str] | None = None,
    n_pcs: int | None = 30,
    max_cells: int | None = 300,
    random_state: int = 0,
    **metric_kwargs: Any,
) -> pd.DataFrame:
    r"""Distance (:class:`pertpy.tools.Distance`) between the predicted and observed cells of each condition.

    Both sides are put in one space by :func:`combine_prediction` (log-normalised values, then the observed
    cells' PCA with ``n_pcs`` components, or the genes when ``None``) and compared with
    ``pertpy.tools.Distance(metric)``. With ``metric="edistance"`` this is the E-distance of
    :func:`scmech.tl.energy_distance` (Euclidean, not squared; the ``energy_distance`` of
    :func:`scmech.tl.evaluate` with the same ``n_pcs`` and ``max_cells``).

    Distribution metrics (``"edistance"``, ``"mmd"``, ``"wasserstein"``, ...) need per-cell predictions
    (``predict(return_mean=False)``); for a mean prediction (one row per condition) use a metric of means such
    as ``"euclidean"``, ``"mse"`` or ``"pearson_distance"``, which compares it with the observed pseudobulk.

    Parameters
    ----------
    pred
        Prediction AnnData (``SemiMechVI.predict`` or a baseline's ``predict``).
    observed
        Observed cells (counts in ``X`` or ``layer``).
    metric
        A metric of :class:`pertpy.tools.Distance`.
    perturbation_key, control_label, separator, unassigned_label, layer, counts, conditions, n_pcs, max_cells
        As in :func:`combine_prediction`.
    random_state
        Seed of the subsamples and the PCA.
    **metric_kwargs
        Passed to the metric (e.g. ``kernel="rbf"`` for ``"mmd"``).

    Returns
    -------
    DataFrame indexed by condition with ``distance`` (predicted vs observed), ``control_distance`` (observed
    controls vs observed condition: the score of predicting "no change"), ``n_predicted`` and ``n_observed``
    (the cells behind the rows compared: :func:`combine_prediction`'s ``obs["n_cells"]`` summed per side). For
    per-cell predictions they are the predicted and observed cells compared (at most ``max_cells`` each); for a
    mean prediction, which compares one row per side, ``n_predicted`` is the prediction's own
    ``obs["n_cells"]`` (the cells it rests on, e.g. the starting cells of ``SemiMechVI.predict`` or the cells a
    baseline averaged; 1 without that column) and ``n_observed`` the observed cells of the pseudobulk.
    ``attrs["metric"]`` names the metric. Nothing is written to ``pred`` or ``observed``.

    Examples
    --------
    >>> pred = model.predict(["STAT1", "JAK2"], return_mean=False, n_cells=200)
    >>> scmech.tl.prediction_distance(pred, adata, metric="edistance")
    >>> scmech.tl.prediction_distance(model.predict(["STAT1"]), adata, metric="pearson_distance")
    """
    pt = _import_pertpy("prediction_distance")
    try:
        dist = pt.tl.Distance(metric=metric, obsm_key="X_pca")
    except ValueError as e:
        msg = f"metric={metric!r} is not a pertpy Distance metric ({e}); use e.g. 'edistance', 'mmd' or 'euclidean'."
        raise ValueError(msg) from e
    both = combine_prediction(
        pred,
        observed,
        perturbation_key=perturbation_key,
        control_label=control_label,
        separator=separator,
        unassigned_label=unassigned_label,
        layer=layer,
        counts=counts,
        conditions=conditions,
        n_pcs=n_pcs,
        max_cells=max_cells,
        random_state=random_state,
    )
    mean_pred = both.uns[SCMECH_ADATA_KEYS.UNS]["combine_prediction"]["mean_prediction"]
    if mean_pred and metric in _CELL_METRICS:
        msg = (
            f"metric={metric!r} compares distributions of cells, but pred holds one row per condition (a mean "
            "prediction): each side is a single point. Predict cells (predict(return_mean=False)) or use a metric "
            "of means ('euclidean', 'mse', 'pearson_distance')."
        )
        warnings.warn(msg, UserWarning, stacklevel=settings.warnings_stacklevel)
    rep = both.obsm["X_pca"] if "X_pca" in both.obsm else np.asarray(both.X, dtype=np.float64)
    group = both.obs["group"].astype(str).to_numpy()
    ctrl = get_design(
        observed,
        perturbation_key,
        control_label,
        separator=separator,
        unassigned_label=unassigned_label,
        warn_missing_controls=False,
    ).perturbation.control_label
    y_ctrl = rep[group == f"{OBSERVED}|{ctrl}"]
    n_cells = both.obs["n_cells"].to_numpy()
    rows = []
    for c in pd.unique(both.obs["perturbation"].astype(str)[both.obs["source"] == PREDICTED]):
        ip, io = group == f"{PREDICTED}|{c}", group == f"{OBSERVED}|{c}"
        d = float(dist(rep[ip], rep[io], **metric_kwargs))
        dc = float(dist(y_ctrl, rep[io], **metric_kwargs)) if c != ctrl else 0.0
        rows.append(
            {
                "condition": c,
                "distance": d,
                "control_distance": dc,
                "n_predicted": int(n_cells[ip].sum()),
                "n_observed": int(n_cells[io].sum()),
            }
        )
    out = pd.DataFrame(rows).set_index("condition")
    out.attrs["metric"] = metric
    return out
