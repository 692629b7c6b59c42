r"""Evaluation of perturbation predictions: per-condition metrics, noise ceiling and leaderboards.

Definitions follow ANCHORS §4. For an evaluated condition :math:`p`, :math:`\mu_p` is its observed
pseudobulk, :math:`\hat\mu_p` the prediction and :math:`\mu_{\mathrm{ctrl}}` the observed control pseudobulk,
all in the space of :func:`scmech.data.pseudobulk`, :math:`\log(1 + 10^4\bar\rho)`; predictions from
``SemiMechVI.predict`` and the baselines of :mod:`scmech.tl` live in the same space.

Metrics (``metric`` strings; ↑ higher is better, ↓ lower is better):

- ``pearson`` ↑: :math:`\mathrm{corr}_g(\hat\mu_p, \mu_p)` (saturates near 1, shown for completeness).
- ``pearson_delta`` ↑: :math:`\mathrm{corr}_g(\hat\mu_p-\mu_{\mathrm{ctrl}},\ \mu_p-\mu_{\mathrm{ctrl}})` over all
  genes.
- ``pearson_delta_de`` ↑: the same on :math:`p`'s top ``n_de_genes`` DE genes vs control (t-test, GEARS).
- ``pearson_delta_top_change`` ↑: the same on the ``n_de_genes`` genes with the largest observed
  :math:`|\mu_p-\mu_{\mathrm{ctrl}}|` (the linear-baseline papers' gene set).
- ``mse`` ↓: :math:`\frac1G\sum_g(\hat\mu_{p,g}-\mu_{p,g})^2`; ``mse_de`` ↓ on the DE genes.
- ``l2_top`` ↓: :math:`\lVert\hat\mu_p-\mu_p\rVert_2` over the ``n_top_expressed`` genes most expressed in control.
- ``direction_accuracy_de`` ↑: share of DE genes whose predicted change has the observed sign (changes
  below 1e-5, float32 storage noise, count as 0).
- ``systema_pearson_delta`` ↑: :math:`\mathrm{corr}_g(\hat\mu_p - r,\ \mu_p - r)`, :math:`r` the mean of the
  observed centroids of the training perturbations; ``systema_pearson_delta_de`` ↑ on the DE genes;
  ``systema_pearson_delta_off`` ↑ over all genes but the perturbation's own target genes (what a prediction
  says beyond the knock-down of its own mRNA).
- ``centroid_accuracy`` ↑: share of the other evaluated conditions :math:`q` with
  :math:`\lVert\hat\mu_p-\mu_q\rVert > \lVert\hat\mu_p-\mu_p\rVert` (Systema).
- ``perturbench_rank`` ↓: :math:`\#\{q: \lVert\hat\mu_p-\mu_q\rVert < \lVert\hat\mu_p-\mu_p\rVert\}/n` over the
  :math:`n` evaluated conditions (PerturBench; 0 best).
- ``energy_distance`` ↓: E-distance between predicted and observed cells in PCA space (Euclidean).
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any, Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scmech._constants import SCMECH_ADATA_KEYS, TARGET_SUM
from scmech.data._checks import check_expression
from scmech.data._design import canonical_label, get_design, parse_condition
from scmech.data._pseudobulk import pseudobulk

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from anndata import AnnData

    from scmech.data._design import PerturbationDesign

    from ._split import Split

logger = logging.getLogger(__name__)

__all__ = ["METRIC_DIRECTIONS", "evaluate", "leaderboard", "leaderboard_table", "noise_ceiling", "win_counts"]

#: whether a higher value is better, per metric name
METRIC_DIRECTIONS: dict[str, bool] = {
    "pearson": True,
    "pearson_delta": True,
    "pearson_delta_de": True,
    "pearson_delta_top_change": True,
    "mse": False,
    "mse_de": False,
    "l2_top": False,
    "direction_accuracy_de": True,
    "systema_pearson_delta": True,
    "systema_pearson_delta_de": True,
    "systema_pearson_delta_off": True,
    "centroid_accuracy": True,
    "perturbench_rank": False,
    "energy_distance": False,
}

_LOWER_HINTS = ("mse", "mae", "l1", "l2", "distance", "rank", "error", "loss")

#: tests of :func:`scanpy.tl.rank_genes_groups` accepted as ``de_method``
_DE_METHODS = ("t-test", "t-test_overestim_var", "wilcoxon", "logreg")

#: the largest value of :math:`\log(1 + 10^4\bar\rho)`: one gene holding all of a cell's counts
_MAX_LOG1P = float(np.log1p(TARGET_SUM))
#: predictions above ``_MAX_LOG1P`` by more than this are on another scale (room for extrapolating models)
_SCALE_MARGIN = 0.5

#: metrics that need DE genes, NaN for conditions with fewer than 2 observed cells
_DE_METRICS = ("pearson_delta_de", "mse_de", "direction_accuracy_de", "systema_pearson_delta_de")
_SYSTEMA_METRICS = ("systema_pearson_delta", "systema_pearson_delta_de", "systema_pearson_delta_off")


def _warn(msg: str) -> None:
    warnings.warn(msg, UserWarning, stacklevel=3)


def _check_de_method(de_method: Any) -> None:
    if de_method not in _DE_METHODS:
        msg = f"de_method={de_method!r} is not supported; use one of {list(_DE_METHODS)} (scanpy rank_genes_groups)."
        raise ValueError(msg)


def _check_scale(x: np.ndarray | sp.spmatrix, what: str, data_max: float | None = None) -> None:
    r"""Refuse predictions that cannot be on the :math:`\log(1 + 10^4\bar\rho)` scale (e.g. counts, ``expm1``).

    For log-normalised data (``data_max``, the largest observed value) the bound is that value when it is larger
    (another target sum).
    """
    if not sp.issparse(x):
        x = np.asarray(x)
    if (x.nnz if sp.issparse(x) else x.size) == 0:
        return
    top = float(x.max())
    bound = _MAX_LOG1P if data_max is None else max(_MAX_LOG1P, data_max)
    if top > bound + _SCALE_MARGIN:
        where = f"log1p(1e4) = {_MAX_LOG1P:.2f}" if bound == _MAX_LOG1P else f"the data's largest value {bound:.2f}"
        msg = (
            f"{what} reach {top:.4g}, above {where} (one gene holding all of a cell's counts): "
            "they are not on the log1p(10^4 proportion) scale. Predictions must be on that scale, as returned by "
            "predict(): not counts, counts per 10^4, np.expm1 of a prediction or another normalisation."
        )
        raise ValueError(msg)


def check_finite_rows(x: np.ndarray, labels: Sequence[str], what: str, consequence: str) -> None:
    """Refuse a prediction matrix with NaN or infinite values, naming the rows (conditions) that hold them."""
    bad = ~np.isfinite(np.asarray(x, dtype=np.float64)).all(axis=1)
    if bad.any():
        rows = [labels[i] for i in np.flatnonzero(bad)]
        msg = f"{what} hold NaN or infinite values for {rows[:5]}; {consequence}"
        raise ValueError(msg)


def higher_is_better(metric: str) -> bool:
    """Direction of a metric: known names from :data:`METRIC_DIRECTIONS`, else guessed from the name."""
    if metric in METRIC_DIRECTIONS:
        return METRIC_DIRECTIONS[metric]
    return not any(h in metric.lower() for h in _LOWER_HINTS)


# ---------------------------------------------------------------------- small numerics
#: vectors whose spread is below this are constant up to float32 storage of log-scale predictions
_CONST_TOL = 1e-5


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; NaN when either vector is (numerically) constant or has fewer than 2 values."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.size < 2 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return np.nan
    a = a - a.mean()
    b = b - b.mean()
    if np.abs(a).max() <= _CONST_TOL or np.abs(b).max() <= _CONST_TOL:
        return np.nan
    return float(np.clip((a @ b) / np.sqrt((a @ a) * (b @ b)), -1.0, 1.0))


def _sign(x: np.ndarray) -> np.ndarray:
    """Sign of a change, 0 within float32 storage noise of log-scale values."""
    return np.where(np.abs(x) <= _CONST_TOL, 0.0, np.sign(x))


def energy_distance(x: np.ndarray, y: np.ndarray) -> float:
    r"""Energy distance with Euclidean (not squared) cell-to-cell distances.

    .. math:: E(X, Y) = 2\,\overline{d(x, y)} - \overline{d(x, x')} - \overline{d(y, y')},

    with :math:`d` the Euclidean distance and every mean over all pairs, the zero diagonal included (as
    ``pertpy.tools.Distance("edistance")`` since pertpy PR #733; scPerturb used squared distances).

    Parameters
    ----------
    x, y
        Cells x features arrays.

    Returns
    -------
    The energy distance (0 for identical samples).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.normal(size=(50, 3)), rng.normal(1.0, size=(40, 3))
    >>> round(energy_distance(x, x), 6)
    0.0
    """
    from scipy.spatial.distance import cdist

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(x) == 0 or len(y) == 0:
        msg = "energy_distance needs at least one cell on each side."
        raise ValueError(msg)
    return float(2 * cdist(x, y).mean() - cdist(x, x).mean() - cdist(y, y).mean())


# ---------------------------------------------------------------------- input handling
def _as_dict(predictions: AnnData | Mapping[str, AnnData], what: str = "predictions") -> dict[str, AnnData]:
    if isinstance(predictions, ad.AnnData):
        prov = predictions.uns.get(SCMECH_ADATA_KEYS.UNS, {}).get("prediction", {})
        return {str(prov.get("model", "model")): predictions}
    if isinstance(predictions, dict):
        bad = [k for k, v in predictions.items() if not isinstance(v, ad.AnnData)]
        if bad:
            msg = f"{what}[{bad[0]!r}] is not an AnnData; pass {{model_name: model.predict(...)}}."
            raise TypeError(msg)
        if not predictions:
            msg = f"{what} is empty; pass an AnnData from predict() or a dict {{model_name: AnnData}}."
            raise ValueError(msg)
        return {str(k): v for k, v in predictions.items()}
    msg = (
        f"{what} must be an AnnData from predict() or a dict {{model_name: AnnData}}, got {type(predictions).__name__}."
    )
    raise TypeError(msg)


def _canonical(label: str, design: PerturbationDesign) -> str:
    targets = parse_condition(str(label), separator=design.separator, control_label=design.control_label)
    return canonical_label(targets, separator=design.separator, control_label=design.control_label)


def _prediction_frame(
    pred: AnnData, name: str, design: PerturbationDesign, genes: pd.Index, *, data_max: float | None = None
) -> pd.DataFrame:
    r"""Predicted log pseudobulk (conditions x genes) of a mean prediction, control rows dropped.

    Raises for predictions that are not finite or not on the :math:`\log(1 + 10^4\bar\rho)` scale.
    """
    if "perturbation" not in pred.obs.columns:
        msg = f"Predictions of {name!r} have no obs['perturbation'] column; pass the AnnData returned by predict()."
        raise KeyError(msg)
    labels = [_canonical(x, design) for x in pred.obs["perturbation"].astype(str)]
    dup = pd.Series(labels)[pd.Series(labels).duplicated()].unique().tolist()
    if dup:
        msg = (
            f"Predictions of {name!r} hold several rows for {dup[:5]} (e.g. one per medium or time); evaluate one "
            "context at a time: pred[pred.obs['media'] == 'stim']."
        )
        raise ValueError(msg)
    x = pred.X.toarray() if sp.issparse(pred.X) else np.asarray(pred.X)
    check_finite_rows(
        x,
        labels,
        f"Predictions of {name!r}",
        "a model that fails on a condition must not be scored (the leaderboard would drop the failure and rank it "
        "higher). Fix or drop those rows.",
    )
    _check_scale(x, f"Predictions of {name!r}", data_max=data_max)
    frame = pd.DataFrame(x.astype(np.float64), index=labels, columns=pd.Index(pred.var_names).astype(str))
    missing = genes.difference(frame.columns)
    if len(missing) == len(genes):
        msg = f"Predictions of {name!r} share no genes with adata.var_names."
        raise ValueError(msg)
    frame = frame.loc[[c for c in frame.index if c != design.control_label]]
    return frame


class _Observed:
    """Observed pseudobulks, DE genes and log-normalised cells for one evaluation."""

    def __init__(
        self,
        adata: AnnData,
        design: PerturbationDesign,
        obs_mask: np.ndarray,
        ctrl_mask: np.ndarray,
        train_mask: np.ndarray,
        conditions: list[str],
        train_conditions: list[str] | None,
        genes: pd.Index,
        *,
        layer: str | None,
        counts: bool,
        n_de_genes: int,
        n_top_expressed: int,
        de_method: str,
    ) -> None:
        self.design = design
        self.conditions = conditions
        self.genes = genes
        self.n_de_genes = n_de_genes
        ctrl = design.control_label
        labels = design.labels
        group = np.full(adata.n_obs, "", dtype=object)
        sel = obs_mask & np.isin(labels, conditions)
        group[sel] = labels[sel]
        group[ctrl_mask] = ctrl
        self.group = group
        self.n_cells = pd.Series(group[sel]).value_counts().reindex(conditions).fillna(0).astype(int)
        pb = pseudobulk(adata, group.astype(str), layer=layer, counts=counts, groups=[ctrl, *conditions])
        self.pb = pb.loc[:, genes]
        self.ctrl = self.pb.loc[ctrl].to_numpy()
        # the Systema reference: mean of the observed training perturbation centroids
        self.reference = None
        if train_conditions:
            tc = [c for c in train_conditions if c != ctrl]
            tgroup = np.where(train_mask & np.isin(labels, tc), labels, "")
            present = sorted(set(tgroup[tgroup != ""].tolist()))
            missing = sorted(set(tc) - set(present))
            if missing:
                logger.info(
                    "%d training conditions have no observed cells and are left out of r: %s", len(missing), missing[:5]
                )
            if present:
                tpb = pseudobulk(adata, tgroup.astype(str), layer=layer, counts=counts, groups=present)
                self.reference = tpb.loc[:, genes].to_numpy().mean(axis=0)
        # genes most expressed in control
        n_top = min(n_top_expressed, len(genes))
        self.top_genes = np.sort(np.argsort(-self.ctrl, kind="stable")[:n_top])
        # log-normalised cells of the evaluated conditions and the controls (a copy; adata is untouched)
        cells = np.flatnonzero(group != "")
        x = adata.layers[layer] if layer is not None else adata.X
        sub = ad.AnnData(
            X=(x[cells].astype(np.float32) if sp.issparse(x) else np.asarray(x[cells], dtype=np.float32)),
            obs=pd.DataFrame(
                {"group": pd.Categorical(group[cells].astype(str))}, index=np.arange(len(cells)).astype(str)
            ),
            var=pd.DataFrame(index=pd.Index(adata.var_names).astype(str)),
        )
        if counts:
            import scanpy as sc

            sc.pp.normalize_total(sub, target_sum=1e4)
            sc.pp.log1p(sub)
        self.cells = sub[:, genes].copy() if not genes.equals(sub.var_names) else sub
        self.de_genes = self._de(n_de_genes, de_method)

    def _de(self, n_de_genes: int, de_method: str) -> dict[str, np.ndarray]:
        """Top DE genes (positions in ``genes``) of each condition vs control, by scanpy's rank_genes_groups."""
        import scanpy as sc

        ctrl = self.design.control_label
        sub = self.cells
        counts = sub.obs["group"].value_counts()
        ok = [c for c in self.conditions if counts.get(c, 0) >= 2]
        few = sorted(set(self.conditions) - set(ok))
        out: dict[str, np.ndarray] = {c: np.zeros(0, dtype=int) for c in few}
        if few:
            _warn(
                f"Condition(s) {few[:10]} have fewer than 2 observed cells: no DE test is possible, so "
                f"{', '.join(_DE_METRICS)} are NaN for them (the other metrics use the pseudobulk of their cells). "
                "Collect more cells, or leave them out of `conditions`."
            )
        if counts.get(ctrl, 0) < 2:
            logger.warning("Fewer than 2 control cells: no DE genes; DE metrics are NaN.")
            return {c: np.zeros(0, dtype=int) for c in self.conditions}
        if not ok:
            return out
        n = min(n_de_genes, sub.n_vars)
        work = ad.AnnData(X=sub.X, obs=sub.obs[["group"]].copy(), var=pd.DataFrame(index=sub.var_names))
        work.uns["log1p"] = {"base": None}
        with warnings.catch_warnings():
            # scanpy warns about DataFrame fragmentation once per group; nothing the user can act on
            warnings.simplefilter("ignore", category=getattr(pd.errors, "PerformanceWarning", Warning))
            sc.tl.rank_genes_groups(
                work,
                groupby="group",
                groups=ok,
                reference=ctrl,
                method=de_method,
                rankby_abs=True,
                n_genes=n,
                use_raw=False,
                key_added="de",
            )
        names = work.uns["de"]["names"]
        pos = {g: i for i, g in enumerate(sub.var_names)}
        for c in ok:
            out[c] = np.asarray([pos[g] for g in names[c][:n]], dtype=int)
        return out


def _metrics_for(
    pred: pd.DataFrame, obs: _Observed, cell_pred: AnnData | None, pca, rng: np.random.Generator, max_cells: int
) -> list[tuple[str, str, float]]:
    conds = obs.conditions
    ctrl = obs.ctrl
    obs_mat = obs.pb.loc[conds].to_numpy()
    pred_mat = pred.loc[conds, obs.genes].to_numpy()
    from scipy.spatial.distance import cdist

    dist = cdist(pred_mat, obs_mat)  # Euclidean, prediction p x observed q
    n = len(conds)
    ref = obs.reference
    rows = []
    gene_pos = {g: i for i, g in enumerate(obs.genes)}
    design = obs.design
    for i, c in enumerate(conds):
        yhat, y = pred_mat[i], obs_mat[i]
        de = obs.de_genes[c]
        dp, do = yhat - ctrl, y - ctrl
        top = np.argsort(-np.abs(do), kind="stable")[: min(obs.n_de_genes, len(do))]
        targets = parse_condition(c, separator=design.separator, control_label=design.control_label)
        off = np.ones(len(y), dtype=bool)
        off[[gene_pos[t] for t in targets if t in gene_pos]] = False
        vals = {
            "pearson": _pearson(yhat, y),
            "pearson_delta": _pearson(dp, do),
            "pearson_delta_de": _pearson(dp[de], do[de]) if len(de) else np.nan,
            "pearson_delta_top_change": _pearson(dp[top], do[top]),
            "mse": float(np.mean((yhat - y) ** 2)),
            "mse_de": float(np.mean((yhat[de] - y[de]) ** 2)) if len(de) else np.nan,
            "l2_top": float(np.linalg.norm(yhat[obs.top_genes] - y[obs.top_genes])),
            "direction_accuracy_de": float(np.mean(_sign(dp[de]) == _sign(do[de]))) if len(de) else np.nan,
            "systema_pearson_delta": _pearson(yhat - ref, y - ref) if ref is not None else np.nan,
            "systema_pearson_delta_de": (
                _pearson(yhat[de] - ref[de], y[de] - ref[de]) if (ref is not None and len(de)) else np.nan
            ),
            "systema_pearson_delta_off": (_pearson((yhat - ref)[off], (y - ref)[off]) if ref is not None else np.nan),
            "centroid_accuracy": (float(np.mean(np.delete(dist[i], i) > dist[i, i])) if n > 1 else np.nan),
            "perturbench_rank": float(np.sum(dist[i] < dist[i, i]) / n) if n > 1 else np.nan,
        }
        if pca is not None:
            vals["energy_distance"] = _cell_edistance(c, cell_pred, obs, pca, rng, max_cells)
        rows.extend((c, m, v) for m, v in vals.items())
    return rows


def _fit_pca(obs: _Observed, n_pcs: int, rng: np.random.Generator, max_cells: int, random_state: int):
    from sklearn.decomposition import PCA

    grp = obs.cells.obs["group"].astype(str).to_numpy()
    take = []
    for g in pd.unique(grp):
        idx = np.flatnonzero(grp == g)
        if len(idx) > max_cells:
            idx = np.sort(rng.choice(idx, size=max_cells, replace=False))
        take.append(idx)
    take = np.concatenate(take)
    x = obs.cells.X[take]
    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    k = max(1, min(n_pcs, x.shape[0] - 1, x.shape[1]))
    return PCA(n_components=k, random_state=random_state).fit(x)


def _cell_edistance(c, cell_pred, obs: _Observed, pca, rng, max_cells) -> float:
    if cell_pred is None:
        return np.nan
    design = obs.design
    plabels = np.asarray([_canonical(x, design) for x in cell_pred.obs["perturbation"].astype(str)])
    pidx = np.flatnonzero(plabels == c)
    grp = obs.cells.obs["group"].astype(str).to_numpy()
    oidx = np.flatnonzero(grp == c)
    if len(pidx) == 0 or len(oidx) == 0:
        return np.nan
    if len(pidx) > max_cells:
        pidx = np.sort(rng.choice(pidx, size=max_cells, replace=False))
    if len(oidx) > max_cells:
        oidx = np.sort(rng.choice(oidx, size=max_cells, replace=False))
    px = cell_pred[pidx][:, obs.genes].X
    px = px.toarray() if sp.issparse(px) else np.asarray(px)
    ox = obs.cells.X[oidx]
    ox = ox.toarray() if sp.issparse(ox) else np.asarray(ox)
    return energy_distance(pca.transform(px.astype(np.float64)), pca.transform(ox.astype(np.float64)))


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
    ctrl = design.control_label
    observed_conds = set(design.labels[obs_mask & ~design.is_control & design.fit_mask].tolist())
    if conditions is not None:
        conds = sorted({_canonical(c, design) for c in conditions} - {ctrl})
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
        None if train_conditions is None else [_canonical(c, design) for c in train_conditions],
        genes,
        layer=layer,
        counts=counts,
        n_de_genes=n_de_genes,
        n_top_expressed=n_top_expressed,
        de_method=de_method,
    )
    if train_conditions is not None and obs.reference is None:
        _warn(
            f"None of the training conditions {list(train_conditions)[:5]} has observed training cells, so "
            f"{', '.join(_SYSTEMA_METRICS)} are NaN (the Systema reference is their mean centroid). Pass the "
            "training perturbations of this adata (or the split the models were trained on)."
        )
    rng = np.random.default_rng(random_state)
    pca = None
    if cell_predictions:
        pca = _fit_pca(obs, n_pcs, rng, max_cells, random_state)
    rows = []
    for name, frame in preds.items():
        cp = (cell_predictions or {}).get(name)
        if cp is not None and "perturbation" not in cp.obs.columns:
            msg = f"cell_predictions[{name!r}] has no obs['perturbation']; pass predict(return_mean=False)."
            raise KeyError(msg)
        if cp is not None and len(genes.difference(pd.Index(cp.var_names).astype(str))):
            msg = f"cell_predictions[{name!r}] lacks genes of the evaluation."
            raise ValueError(msg)
        for c, m, v in _metrics_for(frame, obs, cp, pca if cp is not None else None, rng, max_cells):
            rows.append((name, c, m, v, int(obs.n_cells[c])))
        if pca is not None and cp is None:
            rows.extend((name, c, "energy_distance", np.nan, int(obs.n_cells[c])) for c in conds)
    return pd.DataFrame(rows, columns=["model", "condition", "metric", "value", "n_cells"])


def _design(adata, perturbation_key, control_label, separator, unassigned_label) -> PerturbationDesign:
    return get_design(
        adata,
        perturbation_key,
        control_label,
        separator=separator,
        unassigned_label=unassigned_label,
        warn_missing_controls=False,
    ).perturbation


def _genes(adata: AnnData, frames: dict[str, pd.DataFrame]) -> pd.Index:
    genes = pd.Index(adata.var_names).astype(str)
    common = genes
    for f in frames.values():
        common = common[common.isin(f.columns)]
    if len(common) < len(genes):
        logger.warning("Evaluating on the %d of %d genes present in every prediction.", len(common), len(genes))
    return common


def _index_mask(idx, n: int, what: str) -> np.ndarray:
    idx = np.asarray(idx, dtype=np.int64)
    if len(idx) and (idx.min() < 0 or idx.max() >= n):
        msg = f"split.{what} holds indices outside 0..{n - 1}; was the split made on this AnnData?"
        raise ValueError(msg)
    m = np.zeros(n, dtype=bool)
    m[idx] = True
    return m


def evaluate(
    predictions: AnnData | Mapping[str, AnnData],
    adata: AnnData,
    *,
    perturbation_key: str = "perturbation",
    control_label: str | Sequence[str] = "NT",
    separator: str = "+",
    unassigned_label: str | Sequence[str] | None = "unassigned",
    layer: str | None = None,
    counts: bool = True,
    conditions: Sequence[str] | None = None,
    train_conditions: Sequence[str] | None = None,
    split: Split | None = None,
    n_de_genes: int = 20,
    n_top_expressed: int = 1000,
    de_method: Literal["t-test", "t-test_overestim_var", "wilcoxon", "logreg"] = "t-test",
    cell_predictions: Mapping[str, AnnData] | None = None,
    n_pcs: int = 30,
    max_cells: int = 300,
    key_added: str | None = None,
    random_state: int = 0,
) -> pd.DataFrame:
    r"""Score predictions of held-out conditions against the observed data.

    Observed values are pseudobulks of ``adata`` (:func:`scmech.data.pseudobulk`, the definition the
    predictions use). Every non-control row of the predictions is a candidate condition; the evaluated
    conditions are those with observed cells that every model predicts. The metrics (ANCHORS §4; their
    directions in ``scmech.tl.METRIC_DIRECTIONS``) are

    ``pearson``, ``pearson_delta``, ``pearson_delta_de``, ``mse``, ``mse_de``, ``l2_top``,
    ``direction_accuracy_de``, ``systema_pearson_delta``, ``systema_pearson_delta_de``,
    ``centroid_accuracy``, ``perturbench_rank`` and, with ``cell_predictions``, ``energy_distance``.

    DE genes are the top ``n_de_genes`` of :func:`scanpy.tl.rank_genes_groups` (``reference`` = control,
    ``rankby_abs=True``) on a log-normalised copy of the observed cells (``normalize_total(1e4)`` +
    ``log1p``); they depend on the observed data only, so every model is scored on the same genes. A
    condition with fewer than 2 observed cells has no DE test: it is still evaluated (its other metrics use the
    pseudobulk of its cell, with ``n_cells`` telling how little that is), its DE metrics (``pearson_delta_de``,
    ``mse_de``, ``direction_accuracy_de``, ``systema_pearson_delta_de``) are NaN, and a ``UserWarning`` names
    it; :func:`noise_ceiling` leaves such conditions out, as one cell cannot predict itself. The
    Systema reference :math:`r` is the mean of the observed centroids of the training perturbations
    (``train_conditions``, or ``split.train_conditions``); without them the Systema metrics are NaN (with a
    ``UserWarning``).

    Predictions must be on the scale returned by ``predict``, :math:`\log(1 + 10^4\bar\rho)`, whose largest
    possible value is :math:`\log(1 + 10^4) \approx 9.21`; predictions (or ``cell_predictions``) above it by more
    than 0.5 (e.g. counts, or ``np.expm1`` of a prediction) are refused with a ``ValueError``. With
    ``counts=False`` the bound is the data's largest value when that is larger (another target sum).
    ``centroid_accuracy`` and ``perturbench_rank`` compare each prediction with the observed centroids of
    all evaluated conditions (Euclidean distance over genes) and are NaN when only one is evaluated.

    ``energy_distance`` is the E-distance :math:`2\,\overline{d(x,y)} - \overline{d(x,x')} -
    \overline{d(y,y')}` with **Euclidean** (not squared) :math:`d`, as ``pertpy.tools.Distance("edistance")``
    since pertpy PR #733, between at most ``max_cells`` predicted and observed cells per condition (seeded),
    in the space of the top ``n_pcs`` principal components of the observed log-normalised cells.

    Parameters
    ----------
    predictions
        An AnnData returned by ``predict`` (one row per condition) or a dict ``{model_name: AnnData}``.
    adata
        Observed data with counts (or log-normalised values with ``counts=False``). Not modified, except for
        ``uns["scmech"][key_added]`` when ``key_added`` is given.
    perturbation_key
        ``obs`` column of perturbation labels.
    control_label
        Label (or labels) of non-targeting controls.
    separator
        Separator of combinations.
    unassigned_label
        Label (or labels) of cells without a guide call (never used).
    layer
        Layer with the counts; ``X`` when ``None``.
    counts
        Whether the matrix holds counts (``False``: log-normalised values, averaged as they are).
    conditions
        Conditions to evaluate; every model must predict each. All shared ones when ``None``.
    train_conditions
        Training perturbations, for the Systema reference.
    split
        The :class:`~scmech.tl.Split` the models were trained on: observed conditions then come from its test
        cells, controls from ``split.control_reference`` (the held-out group's controls for batch, time and
        media splits), the Systema reference from its training cells (``split.train``, the cells the baselines fit)
        and, when ``train_conditions`` is
        ``None``, ``split.train_conditions``. Without a split all assigned cells of ``adata`` are used (for a
        held-out batch, pass the split or subset ``adata`` to the held-out batch).
    n_de_genes
        Number of top DE genes per condition.
    n_top_expressed
        Number of genes most expressed in control for ``l2_top`` (all genes when there are fewer).
    de_method
        Test of :func:`scanpy.tl.rank_genes_groups`.
    cell_predictions
        ``{model_name: predict(return_mean=False)}`` for ``energy_distance`` (per-cell AnnData with
        ``obs["perturbation"]`` and log-normalised ``X``).
    n_pcs
        Principal components for ``energy_distance``.
    max_cells
        At most this many cells per side and condition for ``energy_distance`` and its PCA.
    key_added
        When given, the result is stored as a DataFrame in ``adata.uns["scmech"][key_added]`` (the only write
        to ``adata``).
    random_state
        Seed of the cell subsets for ``energy_distance``.

    Returns
    -------
    Tidy DataFrame with columns ``model``, ``condition``, ``metric``, ``value`` and ``n_cells`` (observed
    cells of the condition).

    Raises
    ------
    ValueError
        For an unknown ``de_method``, non-finite predictions, or predictions not on the
        :math:`\log(1 + 10^4\bar\rho)` scale.

    Examples
    --------
    >>> sp = scmech.tl.split(adata, "perturbation", test_conditions=["STAT1", "JAK2"])
    >>> preds = {}
    >>> for cls in (scmech.tl.ControlMean, scmech.tl.TrainMean, scmech.tl.LinearModel):
    ...     cls.setup_anndata(adata)
    ...     m = cls(adata)
    ...     m.train(datasplitter_kwargs={"external_indexing": sp.external_indexing})
    ...     preds[cls.__name__] = m.predict(sp.test_conditions)
    >>> results = scmech.tl.evaluate(preds, adata, split=sp)
    >>> scmech.tl.leaderboard(results)
    """
    if n_de_genes < 1 or n_top_expressed < 1 or n_pcs < 1 or max_cells < 2:
        msg = (
            f"n_de_genes ({n_de_genes}), n_top_expressed ({n_top_expressed}) and n_pcs ({n_pcs}) must be >= 1 and "
            f"max_cells ({max_cells}) >= 2."
        )
        raise ValueError(msg)
    _check_de_method(de_method)
    preds_ad = _as_dict(predictions)
    cells_ad = _as_dict(cell_predictions, "cell_predictions") if cell_predictions else None
    if cells_ad:
        unknown = sorted(set(cells_ad) - set(preds_ad))
        if unknown:
            msg = f"cell_predictions has models {unknown} without mean predictions; use the same keys as predictions."
            raise KeyError(msg)
    design = _design(adata, perturbation_key, control_label, separator, unassigned_label)
    if layer is not None and layer not in adata.layers:
        msg = f"Layer {layer!r} is not in adata.layers (layers: {list(adata.layers.keys())}); pass layer=None for X."
        raise KeyError(msg)
    check_expression(
        adata.layers[layer] if layer is not None else adata.X,
        "adata.X" if layer is None else f"adata.layers[{layer!r}]",
        counts=counts,
    )
    data_max = None
    if not counts:
        mat = adata.layers[layer] if layer is not None else adata.X
        data_max = float(mat.max()) if (mat.nnz if sp.issparse(mat) else np.size(mat)) else None
    for name, cp in (cells_ad or {}).items():
        _check_scale(cp.X, f"cell_predictions[{name!r}]", data_max=data_max)
    genes0 = pd.Index(adata.var_names).astype(str)
    frames = {name: _prediction_frame(p, name, design, genes0, data_max=data_max) for name, p in preds_ad.items()}
    genes = _genes(adata, frames)
    n = adata.n_obs
    assigned = design.fit_mask
    if split is not None:
        obs_mask = _index_mask(split.test, n, "test") & assigned
        ctrl_mask = _index_mask(split.control_reference, n, "control_reference") & assigned & design.is_control
        train_mask = _index_mask(split.train, n, "train") & assigned
        if train_conditions is None:
            train_conditions = split.train_conditions
    else:
        obs_mask = assigned.copy()
        ctrl_mask = assigned & design.is_control
        train_mask = assigned.copy()
    if train_conditions is None or len(train_conditions) == 0:
        _warn(
            f"No training perturbations (train_conditions or split): {', '.join(_SYSTEMA_METRICS)} are NaN, the "
            "Systema reference being the mean of the training centroids. Pass split= (the split the models were "
            "trained on) or train_conditions=."
        )
        train_conditions = None
    result = _run(
        frames,
        adata,
        design,
        obs_mask=obs_mask,
        ctrl_mask=ctrl_mask,
        train_mask=train_mask,
        conditions=conditions,
        train_conditions=train_conditions,
        genes=genes,
        layer=layer,
        counts=counts,
        n_de_genes=n_de_genes,
        n_top_expressed=n_top_expressed,
        de_method=de_method,
        cell_predictions=cells_ad,
        n_pcs=n_pcs,
        max_cells=max_cells,
        random_state=random_state,
    )
    if key_added is not None:
        adata.uns.setdefault(SCMECH_ADATA_KEYS.UNS, {})[key_added] = result.copy()
    return result


def noise_ceiling(
    adata: AnnData,
    *,
    split: Literal["half", "replicate"] = "half",
    batch_key: str | None = None,
    perturbation_key: str = "perturbation",
    control_label: str | Sequence[str] = "NT",
    separator: str = "+",
    unassigned_label: str | Sequence[str] | None = "unassigned",
    layer: str | None = None,
    counts: bool = True,
    conditions: Sequence[str] | None = None,
    train_conditions: Sequence[str] | None = None,
    n_de_genes: int = 20,
    n_top_expressed: int = 1000,
    de_method: Literal["t-test", "t-test_overestim_var", "wilcoxon", "logreg"] = "t-test",
    spearman_brown: bool = True,
    random_state: int = 0,
) -> pd.DataFrame:
    """Agreement of the observed data with itself: the best score a prediction can expect.

    ``split="half"``: each condition's cells are split at random into two halves; the pseudobulk of one half
    is scored as the "prediction" of the other with :func:`evaluate` (all controls as reference).
    ``split="replicate"``: for each replicate ``b`` of ``batch_key``, each condition's pseudobulk from the
    other replicates predicts its cells in ``b`` (``b``'s controls as reference, as in a held-out-batch
    split); the scores are averaged over replicates per condition.

    Parameters
    ----------
    adata
        Observed data (not modified).
    split
        ``"half"`` or ``"replicate"``.
    batch_key
        ``obs`` column of replicates (required for ``split="replicate"``).
    perturbation_key
        ``obs`` column of perturbation labels.
    control_label
        Label (or labels) of non-targeting controls.
    separator
        Separator of combinations.
    unassigned_label
        Label (or labels) of cells without a guide call.
    layer
        Layer with the counts; ``X`` when ``None``.
    counts
        Whether the matrix holds counts.
    conditions
        Conditions to score; all perturbations when ``None``. Conditions with fewer than 2 cells (and, for
        ``split="replicate"``, conditions whose cells sit in a single replicate) cannot be compared with
        themselves and are left out with a ``UserWarning`` naming them. A condition with 2 cells leaves one
        observed cell in its half, so its DE metrics are NaN (as in :func:`evaluate`, with a warning).
    train_conditions
        Training perturbations for the Systema reference (all their cells); Systema metrics NaN without.
    n_de_genes
        Number of top DE genes.
    n_top_expressed
        Number of genes most expressed in control for ``l2_top``.
    de_method
        Test of :func:`scanpy.tl.rank_genes_groups`.
    spearman_brown
        ``split="half"``: step the Pearson metrics up from half to full size, :math:`2r/(1+r)` (for
        :math:`r > -1`). Ignored for ``split="replicate"``, whose other replicates hold most of the cells.
    random_state
        Seed of the halves.

    Returns
    -------
    Tidy DataFrame as :func:`evaluate`, with ``model == "noise_ceiling"`` and ``n_cells`` the observed
    cells scored.

    Examples
    --------
    >>> ceiling = scmech.tl.noise_ceiling(adata, split="replicate", batch_key="bio_rep")
    >>> scmech.tl.leaderboard(pd.concat([results, ceiling]))
    """
    if split not in ("half", "replicate"):
        msg = f"split={split!r} must be 'half' or 'replicate'."
        raise ValueError(msg)
    if split == "replicate" and batch_key is None:
        msg = "split='replicate' needs `batch_key`, the obs column of replicates (e.g. batch_key='bio_rep')."
        raise ValueError(msg)
    _check_de_method(de_method)
    full = get_design(
        adata,
        perturbation_key,
        control_label,
        separator=separator,
        unassigned_label=unassigned_label,
        batch_key=batch_key,
        warn_missing_controls=False,
    )
    design = full.perturbation
    labels = design.labels
    assigned = design.fit_mask
    ctrl = design.control_label
    is_ctrl = design.is_control & assigned
    counts_per = pd.Series(labels[assigned & ~design.is_control]).value_counts()
    if conditions is not None:
        conds = sorted({_canonical(c, design) for c in conditions} - {ctrl})
        missing = [c for c in conds if c not in counts_per.index]
        if missing:
            msg = f"Condition(s) {missing[:5]} have no assigned cells in obs[{perturbation_key!r}]."
            raise KeyError(msg)
    else:
        conds = sorted(counts_per.index.tolist())
    few = [c for c in conds if counts_per[c] < 2]
    if few:
        _warn(
            f"Condition(s) {few[:10]} of obs[{perturbation_key!r}] have fewer than 2 cells and are left out of the "
            "noise ceiling: one cell cannot be compared with itself (no second cell to predict it from)."
        )
        conds = [c for c in conds if c not in few]
    if not conds:
        which = f"of conditions={list(conditions)[:5]}" if conditions is not None else f"of obs[{perturbation_key!r}]"
        msg = (
            f"No condition {which} has at least 2 cells; the noise ceiling compares a condition's cells with each "
            "other. Score conditions with more cells."
        )
        raise ValueError(msg)
    rng = np.random.default_rng(random_state)
    genes = pd.Index(adata.var_names).astype(str)
    tconds = None if train_conditions is None else [_canonical(c, design) for c in train_conditions]
    common = {
        "conditions": None,
        "train_conditions": tconds,
        "genes": genes,
        "layer": layer,
        "counts": counts,
        "n_de_genes": n_de_genes,
        "n_top_expressed": n_top_expressed,
        "de_method": de_method,
        "cell_predictions": None,
        "n_pcs": 1,
        "max_cells": 2,
        "random_state": random_state,
    }
    if split == "half":
        half_a = np.zeros(adata.n_obs, dtype=bool)
        for c in conds:
            idx = rng.permutation(np.flatnonzero(assigned & (labels == c)))
            half_a[idx[: len(idx) // 2]] = True
        obs_mask = assigned & ~half_a & np.isin(labels, conds)
        pred = _half_prediction(adata, labels, half_a, conds, genes, layer, counts)
        res = _run(
            {"noise_ceiling": pred},
            adata,
            design,
            obs_mask=obs_mask,
            ctrl_mask=is_ctrl,
            train_mask=assigned,
            **common,
        )
        if spearman_brown:
            corr = res["metric"].str.contains("pearson") & (res["value"] > -1)
            r = res.loc[corr, "value"]
            res.loc[corr, "value"] = 2 * r / (1 + r)
        return res
    reps = np.asarray(full.batch).astype(str)
    out = []
    scored: set[str] = set()
    for b in sorted(set(reps[assigned].tolist())):
        in_b = reps == b
        here = set(labels[assigned & in_b].tolist())
        elsewhere = set(labels[assigned & ~in_b].tolist())
        cb = [c for c in conds if c in here and c in elsewhere]
        if not cb or not (is_ctrl & in_b).any():
            continue
        pred = _half_prediction(adata, labels, assigned & ~in_b, cb, genes, layer, counts)
        res = _run(
            {"noise_ceiling": pred},
            adata,
            design,
            obs_mask=assigned & in_b & np.isin(labels, cb),
            ctrl_mask=is_ctrl & in_b,
            train_mask=assigned,
            **common,
        )
        res["replicate"] = b
        out.append(res)
        scored.update(cb)
    if not out:
        msg = f"No condition has cells in two replicates of obs[{batch_key!r}] (with controls); nothing to compare."
        raise ValueError(msg)
    unscored = [c for c in conds if c not in scored]
    if unscored:
        _warn(
            f"Condition(s) {unscored[:10]} are left out of the noise ceiling: their cells sit in a single replicate "
            f"of obs[{batch_key!r}] (or only in replicates without controls), so no other replicate predicts them."
        )
    res = pd.concat(out, ignore_index=True)
    agg = (
        res.groupby(["model", "condition", "metric"], sort=True)
        .agg(value=("value", "mean"), n_cells=("n_cells", "sum"))
        .reset_index()
    )
    return agg[["model", "condition", "metric", "value", "n_cells"]]


def _half_prediction(adata, labels, mask, conds, genes, layer, counts) -> pd.DataFrame:
    group = np.where(mask & np.isin(labels, conds), labels, "")
    pb = pseudobulk(adata, group.astype(str), layer=layer, counts=counts, groups=conds)
    return pb.loc[:, genes]


# ---------------------------------------------------------------------- leaderboards
def leaderboard(
    results: pd.DataFrame | Sequence[pd.DataFrame], *, metrics: Sequence[str] | None = None
) -> pd.DataFrame:
    """Summarise evaluation results per model and metric, with a direction-aware rank.

    Parameters
    ----------
    results
        Tidy results of :func:`evaluate` / :func:`noise_ceiling` (or a list of them), with columns
        ``model``, ``condition``, ``metric``, ``value`` and optionally ``seed``.
    metrics
        Metrics to keep (all when ``None``).

    Returns
    -------
    DataFrame with one row per model and metric: ``mean``, ``sd`` and ``n`` over conditions (NaN values
    dropped) or, when a ``seed`` column is present, the mean and sd over seeds of the per-seed means (``n``
    then counts seeds and ``n_conditions`` conditions), ``higher_is_better`` and ``rank`` (1 = best within
    the metric; ties share the best rank).

    Examples
    --------
    >>> board = scmech.tl.leaderboard(results, metrics=["pearson_delta_de", "l2_top"])
    """
    df = pd.concat(list(results), ignore_index=True) if isinstance(results, list | tuple) else results
    need = {"model", "metric", "value"}
    if not isinstance(df, pd.DataFrame) or not need <= set(df.columns):
        msg = f"results must be a DataFrame from scmech.tl.evaluate with columns {sorted(need)}."
        raise ValueError(msg)
    if metrics is not None:
        metrics = list(metrics)
        unknown = sorted(set(metrics) - set(df["metric"]))
        if unknown:
            msg = f"Metric(s) {unknown} are not in the results (metrics: {sorted(set(df['metric']))})."
            raise KeyError(msg)
        df = df[df["metric"].isin(metrics)]
    df = df.dropna(subset=["value"])
    if "seed" in df.columns:
        per_seed = df.groupby(["model", "metric", "seed"], sort=False)["value"].mean().reset_index()
        board = (
            per_seed.groupby(["model", "metric"], sort=False)["value"]
            .agg(mean="mean", sd="std", n="count")
            .reset_index()
        )
        ncond = df.groupby(["model", "metric"], sort=False)["condition"].nunique().rename("n_conditions")
        board = board.merge(ncond.reset_index(), on=["model", "metric"], how="left")
    else:
        board = df.groupby(["model", "metric"], sort=False)["value"].agg(mean="mean", sd="std", n="count").reset_index()
    board["higher_is_better"] = board["metric"].map(higher_is_better).astype(bool)
    signed = np.where(board["higher_is_better"], -board["mean"], board["mean"])
    board["rank"] = pd.Series(signed, index=board.index).groupby(board["metric"]).rank(method="min").astype(int)
    order = list(metrics) if metrics is not None else list(dict.fromkeys(board["metric"]))
    board["metric"] = pd.Categorical(board["metric"], categories=order, ordered=True)
    board = board.sort_values(["metric", "rank", "model"]).reset_index(drop=True)
    board["metric"] = board["metric"].astype(str)
    return board


def leaderboard_table(
    results_or_board: pd.DataFrame, *, metrics: Sequence[str] | None = None, digits: int = 3, show_sd: bool = True
) -> pd.DataFrame:
    """Compact wide leaderboard: models x metrics, each cell ``"mean ± sd"``, rows ordered by mean rank.

    Parameters
    ----------
    results_or_board
        Tidy results of :func:`evaluate` or the output of :func:`leaderboard`.
    metrics
        Metrics (columns) to show, in order; all when ``None``.
    digits
        Decimals shown.
    show_sd
        Append ``± sd``.

    Returns
    -------
    DataFrame of strings indexed by model, one column per metric.

    Examples
    --------
    >>> scmech.tl.leaderboard_table(results, metrics=["pearson_delta_de", "l2_top"])
    """
    board = results_or_board if "rank" in results_or_board.columns else leaderboard(results_or_board, metrics=metrics)
    if metrics is not None:
        board = board[board["metric"].isin(list(metrics))]
    cols = list(metrics) if metrics is not None else list(dict.fromkeys(board["metric"]))

    def fmt(r: Any) -> str:
        s = f"{r['mean']:.{digits}f}"
        if show_sd and np.isfinite(r["sd"]):
            s += f" ± {r['sd']:.{digits}f}"
        return s

    board = board.assign(cell=board.apply(fmt, axis=1))
    wide = board.pivot(index="model", columns="metric", values="cell").reindex(columns=cols)
    order = board.groupby("model")["rank"].mean().sort_values().index
    wide = wide.loc[order]
    wide.columns.name = None
    return wide


def win_counts(results: pd.DataFrame, model: str, metric: str, *, against: Sequence[str] | None = None) -> pd.DataFrame:
    """Per-condition wins of ``model`` against every other model on one metric.

    A condition's score is averaged over the rows it has (e.g. over seeds) before models are compared, so each
    condition counts once. A win is a better score in the metric's direction (``scmech.tl.METRIC_DIRECTIONS``); NaN
    scores are left out of that pair.

    Parameters
    ----------
    results
        Tidy results of :func:`evaluate` (several runs concatenated, e.g. with a ``seed`` column).
    model
        The model whose wins are counted.
    metric
        The metric compared.
    against
        Models to compare with; every other model when ``None``.

    Returns
    -------
    DataFrame indexed by the other models with columns ``wins``, ``losses``, ``ties`` and ``n`` (conditions
    scored by both).

    Examples
    --------
    >>> scmech.tl.win_counts(results, "SemiMechVI", "pearson_delta_top_change")
    """
    sub = results[results["metric"] == metric]
    if sub.empty:
        msg = f"No results for metric {metric!r} (metrics: {sorted(results['metric'].unique())[:12]})."
        raise KeyError(msg)
    table = sub.groupby(["condition", "model"])["value"].mean().unstack("model")
    if model not in table.columns:
        msg = f"No results for model {model!r} (models: {list(table.columns)})."
        raise KeyError(msg)
    others = [m for m in (against if against is not None else table.columns) if m != model]
    sign = 1.0 if higher_is_better(metric) else -1.0
    rows = {}
    for other in others:
        if other not in table.columns:
            msg = f"No results for model {other!r} (models: {list(table.columns)})."
            raise KeyError(msg)
        pair = table[[model, other]].dropna()
        diff = sign * (pair[model] - pair[other])
        rows[other] = {
            "wins": int((diff > 0).sum()),
            "losses": int((diff < 0).sum()),
            "ties": int((diff == 0).sum()),
            "n": len(pair),
        }
    return pd.DataFrame.from_dict(rows, orient="index", columns=["wins", "losses", "ties", "n"])
