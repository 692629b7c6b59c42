r"""Predictions and observed cells in one AnnData and one space, for pertpy (:func:`combine_prediction`)."""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scmech._constants import SCMECH_ADATA_KEYS
from scmech._docs import fill_doc
from scmech._numbers import check_positive_int
from scmech._threads import log_normalise
from scmech.data._checks import check_unique_names, rows_in_memory
from scmech.data._design import canonical_condition, get_design
from scmech.data._pseudobulk import pseudobulk
from scmech.tl._metrics._checks import _as_list, _check_scale, log_data_max
from scmech.tl._metrics._evaluate import _check_log_scale
from scmech.tl._metrics._predictions import check_condition_labels
from scmech.tl._seeds import check_seed

from ._common import OBSERVED, PREDICTED, _dense

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from anndata import AnnData

logger = logging.getLogger(__name__)

__all__ = ["combine_prediction"]


def _is_mean_prediction(pred: AnnData, labels: np.ndarray) -> bool:
    """Whether ``pred`` holds one row per condition (``predict(return_mean=True)``) rather than cells.

    Per-cell predictions carry ``obs["source_cell"]``; without it ``pred`` is a mean prediction, whose labels
    must then be unique (two rows of one condition would be read as cells, or as one of them silently).
    """
    if "source_cell" in pred.obs.columns:
        return False
    lab = pd.Index(labels.tolist())
    if not lab.is_unique:
        dup = lab[lab.duplicated()].unique().tolist()[:5]
        msg = (
            f"pred has no obs['source_cell'], so it is read as a mean prediction (one row per condition), but "
            f"{int(lab.duplicated().sum())} rows repeat a condition of obs['perturbation'] (e.g. {dup}, combinations "
            "compared regardless of target order). Keep one row per condition, or, for per-cell predictions, "
            "add obs['source_cell'] (e.g. pred.obs['source_cell'] = pred.obs_names)."
        )
        raise ValueError(msg)
    return True


@fill_doc
def combine_prediction(
    pred: AnnData,
    observed: AnnData,
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
) -> AnnData:
    r"""Predicted and observed cells of each condition in one AnnData, ready for pertpy.

    ``pred`` is what :meth:`SemiMechVI.predict <scmech.model.SemiMechVI.predict>` or a baseline's ``predict``
    returns: ``X`` is :math:`\log(1 + 10^4\rho)`, per cell (``return_mean=False``, with ``obs["source_cell"]``)
    or per condition (the pseudobulk :math:`\log(1 + 10^4\bar\rho)`, ``return_mean=True``). A ``pred`` without
    ``obs["source_cell"]`` is read as a mean prediction and must have one row per condition. The observed cells
    are put in the same space: log-normalised (``normalize_total(1e4)`` and ``log1p`` when ``counts``) for a
    per-cell prediction, and aggregated to the same pseudobulk (:func:`scmech.data.pseudobulk`) for a mean
    prediction. The observed controls are always included (for a "no change" reference).

    Parameters
    ----------
    pred
        Prediction AnnData with ``obs["perturbation"]``, on that scale: a value above :math:`\log(1 + 10^4)` + 0.5
        (or, with ``counts=False``, above the observed data's largest value + 0.5) is refused, as
        :func:`~scmech.tl.evaluate` refuses it (counts or ``np.expm1`` of a prediction).
    observed
        Observed cells with counts in ``X`` (or ``layer``) and labels in ``obs[perturbation_key]``.
    perturbation_key
        %(perturbation_key)s
    control_label
        %(single_control_label)s
    separator
        %(separator)s
        Combinations of ``pred`` and ``observed`` are matched regardless of the order of their targets.
    unassigned_label
        %(unassigned_label)s
    layer
        %(layer)s
    counts
        Whether ``observed`` holds raw counts (else log-normalised values, used as they are). With ``counts=False``
        the observed cells read must be on a log scale, as in :func:`scmech.tl.evaluate`: a ``ValueError`` refuses
        integers above :math:`\log(1 + 10^4)` + 0.5 (raw counts) and any value above 30.
    conditions
        Conditions to keep (one label or a list); all predicted conditions with observed cells when ``None``.
    n_pcs
        Principal components of ``obsm["X_pca"]``, fitted on the observed log-normalised cells (controls and
        ``conditions``) and applied to both sides; ``None`` leaves ``X_pca`` out.
    max_cells
        At most this many cells per condition and side (a seeded subsample); ``None`` keeps all.
    random_state
        Seed of the subsamples and the PCA.

    Returns
    -------
    AnnData over the genes shared by ``pred`` and ``observed`` with ``X`` the log-normalised values and

    - ``obs["perturbation"]`` (canonical condition), ``obs["source"]`` (``"predicted"``/``"observed"``),
      ``obs["group"]`` (``"predicted|STAT1"``, ``"observed|NT"``, categorical) and ``obs["n_cells"]`` (cells
      behind the row: 1 for a cell, the cells of a pseudobulk, or a mean prediction's own ``obs["n_cells"]``, the
      cells it rests on, such as the starting cells of ``SemiMechVI.predict`` or the cells a baseline averaged;
      1 without that column);
    - ``obsm["X_pca"]`` (with ``n_pcs``);
    - ``uns["scmech"]["combine_prediction"]``: ``mean_prediction``, ``n_pcs`` and the PCA ``loadings``.

    Hand it to pertpy's ``Distance``, e.g.
    ``Distance("edistance", obsm_key="X_pca").onesided_distances(out, groupby="group", selected_group="observed|NT")``.

    Examples
    --------
    >>> pred = model.predict(["STAT1", "JAK2"], return_mean=False, n_cells=200)
    >>> both = scmech.tl.combine_prediction(pred, adata)
    >>> both.obs["group"].value_counts()
    """
    _check_combine_args(pred, observed, n_pcs=n_pcs, max_cells=max_cells, layer=layer)
    check_seed(random_state, allow_none=False)
    design = get_design(
        observed,
        perturbation_key,
        control_label,
        separator=separator,
        unassigned_label=unassigned_label,
        warn_missing_controls=False,
    ).perturbation
    ctrl = design.control_label

    canon = partial(canonical_condition, design=design)
    plabels = np.asarray([canon(x) for x in pred.obs["perturbation"].astype(str)], dtype=object)
    mean_pred = _is_mean_prediction(pred, plabels)
    olabels = np.where(design.is_unassigned, "", design.labels).astype(object)
    observed_conds = set(olabels[olabels != ""].tolist())
    if ctrl not in observed_conds:
        msg = f"observed has no control cells ({control_label!r} in obs[{perturbation_key!r}])."
        raise ValueError(msg)
    conds = _combined_conditions(plabels, observed_conds, conditions, canon, perturbation_key)
    genes = _shared_genes(pred, observed)
    rng = np.random.default_rng(np.random.SeedSequence(int(random_state)))
    obs_groups = [ctrl, *[c for c in conds if c != ctrl]]
    # observed: log-normalised cells of the control and the conditions (seeded subsample per group)
    take = np.concatenate([_subsample(np.flatnonzero(olabels == c), max_cells, rng) for c in obs_groups])
    cell_x = _log_normalised(observed, take, olabels, genes, layer=layer, counts=counts)
    if mean_pred:
        # the observed pseudobulk over all cells of each group, the definition the mean prediction uses
        pb = pseudobulk(observed, olabels.astype(str), layer=layer, counts=counts, groups=obs_groups)
        ox = pb.loc[obs_groups, genes].to_numpy(np.float64)
        o_lab = np.asarray(obs_groups, dtype=object)
        o_n = np.asarray([int((olabels == c).sum()) for c in obs_groups])
    else:
        ox, o_lab, o_n = cell_x, olabels[take], np.ones(len(take), dtype=int)
    # predicted rows of the conditions
    prow = np.concatenate([_subsample(np.flatnonzero(plabels == c), max_cells, rng) for c in conds])
    px, p_n = _predicted_rows(pred, prow, genes, mean_pred=mean_pred)
    _check_scale(px, "pred.X", data_max=log_data_max(observed, layer, counts))
    x = np.vstack([px, ox])
    lab = np.concatenate([plabels[prow], o_lab]).astype(str)
    out = _combined_anndata(x, lab, np.concatenate([p_n, o_n]), len(prow), genes)
    info: dict[str, Any] = {"mean_prediction": bool(mean_pred), "n_pcs": 0}
    if n_pcs is not None:
        from sklearn.decomposition import PCA

        k = max(1, min(int(n_pcs), cell_x.shape[0] - 1, cell_x.shape[1]))
        pca = PCA(n_components=k, random_state=int(random_state)).fit(cell_x)
        out.obsm["X_pca"] = pca.transform(x).astype(np.float64)
        info.update(n_pcs=int(k), loadings=pca.components_.T.astype(np.float32))
    out.uns[SCMECH_ADATA_KEYS.UNS] = {"combine_prediction": info}
    return out


def _check_combine_args(pred: Any, observed: Any, *, n_pcs: Any, max_cells: Any, layer: str | None) -> None:
    """Run the checks of :func:`combine_prediction` that need no design."""
    if not isinstance(pred, ad.AnnData) or not isinstance(observed, ad.AnnData):
        msg = (
            f"pred and observed must be AnnData (got {type(pred).__name__} and {type(observed).__name__}); pass "
            "the AnnData returned by predict() and the observed cells (mdata['rna'] of a MuData)."
        )
        raise TypeError(msg)
    check_positive_int(n_pcs, "n_pcs", allow_none=True, hint=", or None to compare genes directly")
    check_positive_int(max_cells, "max_cells", allow_none=True, hint=" (e.g. max_cells=300) or None to keep all cells")
    check_unique_names(pred.var_names, "pred.var_names", "pred.var_names_make_unique()")
    check_unique_names(observed.var_names, "observed.var_names", "observed.var_names_make_unique()")
    if layer is not None and layer not in observed.layers:
        msg = f"layer={layer!r} is not a layer of observed (layers: {list(observed.layers.keys())})."
        raise KeyError(msg)
    check_condition_labels(pred, "pred")


def _combined_conditions(
    plabels: np.ndarray,
    observed_conds: set[str],
    conditions: str | Sequence[str] | None,
    canon: Callable[[str], str],
    perturbation_key: str,
) -> list[str]:
    """Conditions to combine: those asked for, or every predicted condition with observed cells."""
    if conditions is None:
        conds = [c for c in pd.unique(plabels) if c in observed_conds]
    else:
        conds = [canon(c) for c in _as_list(conditions)]
        missing = [c for c in conds if c not in set(plabels.tolist()) or c not in observed_conds]
        if missing:
            msg = (
                f"conditions {missing[:5]} lack predicted or observed cells; predicted: {sorted(set(plabels))[:10]}, "
                f"observed: {sorted(observed_conds)[:10]}."
            )
            raise KeyError(msg)
    if not conds:
        msg = (
            f"No predicted condition has observed cells (predicted: {sorted(set(plabels))[:10]}; observed "
            f"obs[{perturbation_key!r}]: {sorted(observed_conds)[:10]}); check perturbation_key and control_label."
        )
        raise ValueError(msg)
    return conds


def _shared_genes(pred: AnnData, observed: AnnData) -> pd.Index:
    """Genes of both sides, in ``pred``'s order."""
    genes = pd.Index(pred.var_names).astype(str).intersection(pd.Index(observed.var_names).astype(str), sort=False)
    if len(genes) == 0:
        msg = "pred and observed share no var_names; predict on the genes of the observed data."
        raise ValueError(msg)
    if len(genes) < observed.n_vars or len(genes) < pred.n_vars:
        logger.info("Comparing on the %d genes shared by pred and observed", len(genes))
    return genes


def _subsample(idx: np.ndarray, max_cells: int | None, rng: np.random.Generator) -> np.ndarray:
    """At most ``max_cells`` of ``idx`` (a seeded subsample, sorted); all when ``None``."""
    if max_cells is not None and len(idx) > max_cells:
        idx = np.sort(rng.choice(idx, size=max_cells, replace=False))
    return idx


def _log_normalised(
    observed: AnnData, take: np.ndarray, olabels: np.ndarray, genes: pd.Index, *, layer: str | None, counts: bool
) -> np.ndarray:
    """Log-normalised observed cells ``take`` (cells x ``genes``; ``normalize_total`` and ``log1p`` for counts)."""
    gpos = pd.Index(observed.var_names).astype(str).get_indexer(genes)
    # a backed matrix is read in blocks of rows (``take`` is grouped by condition, not sorted)
    xo = rows_in_memory(observed.layers[layer] if layer is not None else observed.X, take)
    cells = ad.AnnData(
        X=sp.csr_matrix(xo, dtype=np.float32) if sp.issparse(xo) else np.asarray(xo, dtype=np.float32),
        obs=pd.DataFrame({"g": olabels[take].astype(str)}, index=np.arange(len(take)).astype(str)),
        var=pd.DataFrame(index=pd.Index(observed.var_names).astype(str)),
    )
    if counts:
        log_normalise(cells)
    else:
        where = "observed.X" if layer is None else f"observed.layers[{layer!r}]"
        n_stored = cells.X.nnz if sp.issparse(cells.X) else cells.X.size
        _check_log_scale(cells.X, float(cells.X.max()) if n_stored else None, where)
    return _dense(cells.X)[:, gpos].astype(np.float64)


def _predicted_rows(
    pred: AnnData, prow: np.ndarray, genes: pd.Index, *, mean_pred: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted values of rows ``prow`` (rows x ``genes``) and the cells behind each row."""
    ppos = pd.Index(pred.var_names).astype(str).get_indexer(genes)
    px = _dense(pred.X[prow])[:, ppos].astype(np.float64)
    if not np.isfinite(px).all():
        msg = "pred.X holds non-finite values; pass the AnnData returned by predict() (log1p scale)."
        raise ValueError(msg)
    p_n = (
        pd.to_numeric(pred.obs["n_cells"], errors="coerce").fillna(1).to_numpy()[prow].astype(int)
        if mean_pred and "n_cells" in pred.obs.columns
        else np.ones(len(prow), dtype=int)
    )
    return px, p_n


def _combined_anndata(x: np.ndarray, lab: np.ndarray, n_cells: np.ndarray, n_pred: int, genes: pd.Index) -> AnnData:
    """Predicted rows (the first ``n_pred`` of ``x``), then observed rows; ``obs`` labels, sides and cell counts."""
    src = np.array([PREDICTED] * n_pred + [OBSERVED] * (len(x) - n_pred), dtype=object)
    obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical(lab),
            "source": pd.Categorical(src, categories=[PREDICTED, OBSERVED]),
            "group": pd.Categorical([f"{s}|{c}" for s, c in zip(src, lab, strict=True)]),
            "n_cells": n_cells.astype(np.int64),
        },
        index=[f"{s}|{c}|{i}" for i, (s, c) in enumerate(zip(src, lab, strict=True))],
    )
    return ad.AnnData(X=x.astype(np.float32), obs=obs, var=pd.DataFrame(index=genes.copy()))
