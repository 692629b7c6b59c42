r"""pertpy's perturbation spaces of predicted and observed conditions side by side (:func:`perturbation_space`)."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Literal

import anndata as ad
import numpy as np
import pandas as pd

from scmech.tl._metrics._checks import _as_list
from scmech.tl._metrics._predictions import check_condition_labels

from ._combine import combine_prediction
from ._common import PREDICTED, _dense, _import_pertpy

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import ModuleType

    from anndata import AnnData

__all__ = ["perturbation_space"]


def perturbation_space(
    pred: AnnData,
    observed: AnnData | None = None,
    *,
    method: Literal["pseudobulk", "centroid"] = "pseudobulk",
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
) -> AnnData:
    """Perturbation space (pertpy) of the predicted and observed conditions.

    Runs pertpy's :class:`~pertpy.tools.PseudobulkSpace` (``method="pseudobulk"``: the mean log-normalised
    profile of each group) or :class:`~pertpy.tools.CentroidSpace` (``method="centroid"``: the cell closest to
    the group's centroid in ``X_pca``) on :func:`combine_prediction`'s AnnData, one row per group
    (``"predicted|STAT1"``, ``"observed|STAT1"``, ...). The result feeds pertpy's ``PerturbationSpace`` tools
    (``compute_control_diff``, ``add``, ``label_transfer``) and ``Distance.pairwise``.

    Parameters
    ----------
    pred
        Prediction AnnData (``SemiMechVI.predict`` or a baseline's ``predict``).
    observed
        Observed cells; ``None`` gives the space of the predictions alone (``X`` of ``pred`` as it is).
    method
        The pertpy space to compute.
    perturbation_key, control_label, separator, unassigned_label, layer, counts, conditions, n_pcs, max_cells
        As in :func:`combine_prediction`.
    random_state
        Seed of the subsamples and the PCA.

    Returns
    -------
    AnnData with one row per group: ``obs`` ``group``, ``perturbation`` and ``source``; ``X`` the group's
    profile (genes for ``"pseudobulk"``; the ``X_pca`` coordinates of the centroid cell for ``"centroid"``);
    ``obsm["X_pca"]`` when a PCA was computed.

    Examples
    --------
    >>> import pertpy
    >>> ps = scmech.tl.perturbation_space(model.predict(return_mean=False, n_cells=100), adata)
    >>> pertpy.tools.Distance("euclidean", obsm_key="X_pca").pairwise(ps, groupby="group")
    """
    pt = _import_pertpy("perturbation_space")
    if method not in ("pseudobulk", "centroid"):
        msg = f"method={method!r} is not a perturbation space here; use 'pseudobulk' or 'centroid'."
        raise ValueError(msg)
    if observed is None:
        both = _predictions_alone(pred, conditions, n_pcs=n_pcs, random_state=random_state)
    else:
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
    if method == "centroid" and "X_pca" not in both.obsm:
        msg = "method='centroid' works on the PCA: pass n_pcs (e.g. 30), not None."
        raise ValueError(msg)
    ps = _pertpy_space(pt, both, method)
    for c in ("perturbation", "source"):
        if c not in ps.obs.columns:
            first = both.obs.groupby("group", observed=True)[c].first()
            ps.obs[c] = first.reindex(ps.obs["group"].astype(str)).to_numpy()
    ps.obs["group"] = ps.obs["group"].astype(str).astype("category")
    ps.obs["perturbation"] = ps.obs["perturbation"].astype(str).astype("category")
    ps.obs["source"] = ps.obs["source"].astype(str).astype("category")
    return ps


def _predictions_alone(
    pred: AnnData, conditions: str | Sequence[str] | None, *, n_pcs: int | None, random_state: int
) -> AnnData:
    """Label the rows of ``pred`` (of ``conditions``) as :func:`combine_prediction` does, with a PCA.

    With the checks :func:`combine_prediction` makes of ``pred``: labels present, requested conditions predicted,
    values finite. The scale is not bounded: without observed data there is nothing to compare it with.
    """
    if not isinstance(pred, ad.AnnData):
        msg = f"pred must be the AnnData returned by predict(), got {type(pred).__name__}."
        raise TypeError(msg)
    check_condition_labels(pred, "pred")
    lab = pred.obs["perturbation"].astype(str).to_numpy()
    wanted = _as_list(conditions)
    if wanted is not None:
        missing = [str(c) for c in wanted if str(c) not in set(lab.tolist())]
        if missing:
            msg = f"conditions {missing[:5]} are not predicted in pred (predicted: {sorted(set(lab.tolist()))[:10]})."
            raise KeyError(msg)
    keep = np.ones(pred.n_obs, dtype=bool) if wanted is None else np.isin(lab, [str(c) for c in wanted])
    values = _dense(pred.X[keep]).astype(np.float64)
    if not np.isfinite(values).all():
        rows = sorted(set(lab[keep][~np.isfinite(values).all(axis=1)].tolist()))
        msg = f"pred.X holds NaN or infinite values in the rows of {rows[:5]}; fix or drop those rows."
        raise ValueError(msg)
    both = ad.AnnData(
        X=values.astype(np.float32),
        obs=pd.DataFrame(
            {
                "perturbation": pd.Categorical(lab[keep]),
                "source": pd.Categorical([PREDICTED] * int(keep.sum())),
                "group": pd.Categorical([f"{PREDICTED}|{c}" for c in lab[keep]]),
            },
            index=pd.Index(pred.obs_names[keep]).astype(str),
        ),
        var=pd.DataFrame(index=pd.Index(pred.var_names).astype(str)),
    )
    if n_pcs is not None and both.n_obs > 1:
        from sklearn.decomposition import PCA

        k = max(1, min(int(n_pcs), both.n_obs - 1, both.n_vars))
        both.obsm["X_pca"] = PCA(n_components=k, random_state=int(random_state)).fit_transform(
            np.asarray(both.X, dtype=np.float64)
        )
    return both


def _pertpy_space(pt: ModuleType, both: AnnData, method: str) -> AnnData:
    """Pertpy's ``CentroidSpace`` (on ``X_pca``) or ``PseudobulkSpace`` (of ``X`` and ``X_pca``) by ``group``."""
    with warnings.catch_warnings():
        # pertpy 1.0 calls AnnData.obsm_keys(), deprecated by anndata: nothing the user can act on
        warnings.filterwarnings("ignore", message=".*obsm_keys is deprecated.*", category=FutureWarning)
        if method == "centroid":
            ps = pt.tl.CentroidSpace().compute(both, target_col="group", embedding_key="X_pca", keep_obs=True)
            ps.obsm["X_pca"] = np.asarray(ps.X, dtype=np.float64)
        else:
            ps = pt.tl.PseudobulkSpace().compute(both, target_col="group", mode="mean")
            if "X_pca" in both.obsm:
                # the mean of projected rows is the projection of the mean: pseudobulk the embedding as well
                emb = pt.tl.PseudobulkSpace().compute(both, target_col="group", embedding_key="X_pca", mode="mean")
                ps.obsm["X_pca"] = _dense(emb[ps.obs_names].X).astype(np.float64)
    return ps
