r"""Evaluation of held-out predictions: :func:`evaluate` and its steps.

:func:`evaluate` checks its arguments (:func:`_check_sizes`, :func:`_model_inputs`, :func:`_data_max`), reads the
predictions (:mod:`._predictions`), picks the observed cells of the split (:func:`_split_masks`) and the training
perturbations (:func:`_training_perturbations`), and scores every model (:func:`._score._run`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scmech._docs import fill_doc
from scmech.data._checks import check_expression, check_unique_names, scmech_uns
from scmech.data._target_genes import target_gene_names
from scmech.tl._seeds import check_seed

from ._checks import (
    _MAX_LOG1P,
    _SCALE_MARGIN,
    _as_list,
    _check_de_method,
    _check_finite_cells,
    _check_scale,
    _index_mask,
    _warn,
    log_data_max,
)
from ._context import context_mask, prediction_context
from ._names import _SYSTEMA_METRICS
from ._predictions import _as_dict, _design, _genes, _prediction_frame
from ._score import _run

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from anndata import AnnData

    from scmech.data._design import PerturbationDesign
    from scmech.tl._split import Split

__all__ = ["evaluate"]

#: the defaults of evaluate's sizes, as examples in messages
_SIZES = {"n_de_genes": 20, "n_top_expressed": 1000, "n_pcs": 30, "max_cells": 300}
#: the largest value a log-normalised matrix can hold for any sensible target sum, log(1 + 10^13)
_LOG_MAX = 30.0


@fill_doc
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
    conditions: str | Sequence[str] | None = None,
    train_conditions: str | Sequence[str] | None = None,
    split: Split | None = None,
    n_de_genes: int = 20,
    n_top_expressed: int = 1000,
    de_method: Literal["t-test", "t-test_overestim_var", "wilcoxon", "logreg"] = "t-test",
    cell_predictions: Mapping[str, AnnData] | None = None,
    n_pcs: int = 30,
    max_cells: int = 300,
    key_added: str | None = None,
    random_state: int = 0,
    batch_key: str | None = None,
    media_key: str | None = None,
    time_key: str | None = None,
    media_time_key: str | None = None,
    gene_symbols: str | None = None,
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

    Predictions made in a context (``predict(..., time=0.5)``, ``media=``, ``media_time=``, ``batch=``: their
    ``obs["time"]``, ``obs["media"]``, ``obs["media_time"]`` and ``obs["batch"]``) are scored against the cells
    observed in that context and its controls, never against their condition's cells pooled over contexts. The
    column of ``adata`` each field is read from is the one the model was registered with (recorded in the
    predictions' provenance) unless ``batch_key``, ``media_key``, ``time_key`` or ``media_time_key`` name another.
    The Systema reference then comes from the training perturbations observed in that context (from every training
    perturbation when none was). Predictions in several contexts are refused: evaluate one at a time.

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
        %(perturbation_key)s
    control_label
        %(control_label)s
    separator
        %(separator)s
    unassigned_label
        %(unassigned_label)s They are never used.
    layer
        %(layer)s
    counts
        %(counts)s
    conditions
        Conditions to evaluate (one label or a list); every model must predict each. All shared ones when
        ``None``.
    train_conditions
        Training perturbations (one label or a list), for the Systema reference.
    split
        The :class:`~scmech.tl.Split` the models were trained on: observed conditions then come from its test
        cells, controls from ``split.control_reference`` (the held-out group's controls for batch, time and
        media splits), the Systema reference from its training and validation cells (the cells the baselines fit)
        and, when ``train_conditions`` is
        ``None``, ``split.train_conditions``. Without a split all assigned cells of ``adata`` are used (for a
        held-out batch, pass the split or subset ``adata`` to the held-out batch). The split must have been made
        on this ``adata`` (the same cells in the same order); another one is refused.
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
    batch_key, media_key, time_key, media_time_key
        Columns of ``adata.obs`` holding each cell's batch, medium, read-out time and medium switch time, to match
        the context of the predictions (``None``: the column the predicting model was registered with). Only read
        when the predictions name that part of a context.
    gene_symbols
        %(gene_symbols)s It decides which gene ``systema_pearson_delta_off`` leaves out as a condition's own.

    Returns
    -------
    Tidy DataFrame with columns ``model``, ``condition``, ``metric``, ``value`` and ``n_cells`` (observed
    cells of the condition).

    Raises
    ------
    ValueError
        For an unknown ``de_method``, non-finite predictions, or predictions not on the
        :math:`\log(1 + 10^4\bar\rho)` scale; for a ``split`` made on other cells than ``adata`` (another number of
        cells, or other or reordered ``obs_names``; see :meth:`~scmech.tl.Split.check_adata`); for duplicated
        ``var_names`` in ``adata`` or in the predictions; for predictions in several contexts, or in a context no
        cell of ``adata`` was observed in, or whose column is not known.
    KeyError
        For a context column that ``adata.obs`` does not have.

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
    _check_sizes(n_de_genes, n_top_expressed, n_pcs, max_cells)
    _check_de_method(de_method)
    check_seed(random_state)
    conditions, train_conditions = _as_list(conditions), _as_list(train_conditions)
    if conditions is not None and len(conditions) == 0:
        msg = "conditions=[] selects nothing to evaluate; pass conditions=None to evaluate every shared condition."
        raise ValueError(msg)
    if split is not None:
        split.check_adata(adata)
    check_unique_names(adata.var_names, "adata.var_names", "adata.var_names_make_unique()")
    preds_ad, cells_ad = _model_inputs(predictions, cell_predictions)
    design = _design(adata, perturbation_key, control_label, separator, unassigned_label)
    data_max = _data_max(adata, layer, counts)
    for name, cp in (cells_ad or {}).items():
        _check_finite_cells(cp.X, f"cell_predictions[{name!r}]")
        _check_scale(cp.X, f"cell_predictions[{name!r}]", data_max=data_max)
    genes0 = pd.Index(adata.var_names).astype(str)
    frames = {name: _prediction_frame(p, name, design, genes0, data_max=data_max) for name, p in preds_ad.items()}
    genes = _genes(adata, frames)
    names = pd.Series(target_gene_names(adata.var, gene_symbols), index=genes0)
    obs_mask, ctrl_mask, train_mask = _split_masks(design, adata.n_obs, split)
    context = prediction_context(
        preds_ad, {"batch": batch_key, "media": media_key, "time": time_key, "media_time": media_time_key}
    )
    if context:
        here = context_mask(adata, context)
        if ctrl_mask.any() and not (ctrl_mask & here).any():
            where = ", ".join(f"{f} = {v!r} (adata.obs[{c!r}])" for f, (c, v) in context.items())
            msg = (
                f"No control cells ({design.control_label!r}) at {where}, the context the predictions are made in: "
                "changes are measured against the controls of that context. Evaluate predictions made without it "
                "(for a batch, predict(...) without batch=, scored against all controls), or add controls observed "
                "there."
            )
            raise ValueError(msg)
        obs_mask, ctrl_mask = obs_mask & here, ctrl_mask & here
        if (train_mask & here & ~design.is_control).any():
            train_mask = train_mask & here
    if split is not None and train_conditions is None:
        train_conditions = split.train_conditions
    train_conditions = _training_perturbations(train_conditions)
    try:
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
            gene_names=names.loc[genes],
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
    except ValueError as e:
        if not context or not str(e).startswith("No condition to evaluate"):
            raise
        where = ", ".join(f"{field} = {value!r} (adata.obs[{column!r}])" for field, (column, value) in context.items())
        msg = (
            f"{e} The predictions are made at {where}, and only the cells observed there are compared: predict the "
            "context the held-out cells were observed in (predict(..., time=..., media=..., batch=...))."
        )
        raise ValueError(msg) from e
    if key_added is not None:
        scmech_uns(adata)[key_added] = result.copy()
    return result


def _check_sizes(n_de_genes: int, n_top_expressed: int, n_pcs: int, max_cells: int) -> None:
    """Refuse gene, component and cell numbers that are not integers or are below their minimum."""
    sizes = {"n_de_genes": n_de_genes, "n_top_expressed": n_top_expressed, "n_pcs": n_pcs, "max_cells": max_cells}
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            msg = (
                f"{name}={value!r} must be an integer (a number of genes, components or cells), e.g. "
                f"{name}={_SIZES[name]}."
            )
            raise TypeError(msg)
    for name, value in sizes.items():
        low = 2 if name == "max_cells" else 1
        if value < low:
            msg = f"{name}={value} is too small; it must be >= {low} (default {name}={_SIZES[name]})."
            raise ValueError(msg)


def _model_inputs(
    predictions: AnnData | Mapping[str, AnnData], cell_predictions: Mapping[str, AnnData] | None
) -> tuple[dict[str, AnnData], dict[str, AnnData] | None]:
    """Mean and per-cell predictions by model name; every per-cell model must have a mean prediction."""
    preds_ad = _as_dict(predictions)
    cells_ad = _as_dict(cell_predictions, "cell_predictions") if cell_predictions else None
    for name, cp in (cells_ad or {}).items():
        check_unique_names(
            cp.var_names, f"The var_names of cell_predictions[{name!r}]", "var_names_make_unique() on that AnnData"
        )
    if cells_ad:
        unknown = sorted(set(cells_ad) - set(preds_ad))
        if unknown:
            msg = f"cell_predictions has models {unknown} without mean predictions; use the same keys as predictions."
            raise KeyError(msg)
    return preds_ad, cells_ad


def _data_max(adata: AnnData, layer: str | None, counts: bool) -> float | None:
    """Check the observed matrix; return its largest value for log-normalised data (``None`` for counts)."""
    if layer is not None and layer not in adata.layers:
        msg = f"Layer {layer!r} is not in adata.layers (layers: {list(adata.layers.keys())}); pass layer=None for X."
        raise KeyError(msg)
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    try:
        check_expression(adata.layers[layer] if layer is not None else adata.X, where, counts=counts)
    except ValueError as e:
        if not counts or "non-integer" not in str(e):
            raise
        # the setup's advice (setup_anndata(counts=False)) is not the fix here: evaluate's own arguments are
        msg = (
            f"{where} holds non-integer values: it looks log-normalised, and evaluate reads counts by default. "
            "Pass counts=False to score log-normalised data (as registered with setup_anndata(..., counts=False)), "
            "or layer='counts' for a layer of raw counts."
        )
        raise ValueError(msg) from e
    data_max = log_data_max(adata, layer, counts)
    if not counts:
        mat = adata.layers[layer] if layer is not None else adata.X
        _check_log_scale(mat, data_max, "adata.X" if layer is None else f"adata.layers[{layer!r}]")
    return data_max


def _check_log_scale(mat: np.ndarray | sp.spmatrix, data_max: float | None, where: str) -> None:
    r"""Refuse ``counts=False`` for data that cannot be log-normalised (counts, or unlogged normalised values).

    Parameters
    ----------
    mat
        The observed matrix.
    data_max
        Its largest value (``None`` when empty).
    where
        Where the matrix lives, for messages.

    Raises
    ------
    ValueError
        When the values are integers above :math:`\log(1 + 10^4)` + 0.5 (raw counts) or exceed 30
        (:math:`\log(1 + 10^{13})`: not on a log scale).
    """
    if data_max is None:
        return
    vals = mat.data if sp.issparse(mat) else np.asarray(mat).ravel()
    integral = bool(np.all(vals == np.round(vals)))
    if data_max > _LOG_MAX or (integral and data_max > _MAX_LOG1P + _SCALE_MARGIN):
        kind = "integer counts" if integral else "values not on a log scale"
        msg = (
            f"counts=False declares {where} log-normalised, but it holds {kind} (largest value {data_max:.4g}); "
            "pseudobulks of it would overflow or be meaningless. Pass counts=True for raw counts, or log-normalise "
            "them first (sc.pp.normalize_total(adata, target_sum=1e4); sc.pp.log1p(adata))."
        )
        raise ValueError(msg)


def _split_masks(design: PerturbationDesign, n: int, split: Split | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Observed (test), control and training cells: from the split, or every assigned cell without one."""
    assigned = design.fit_mask
    if split is not None:
        obs_mask = _index_mask(split.test, n, "test") & assigned
        ctrl_mask = _index_mask(split.control_reference, n, "control_reference") & assigned & design.is_control
        # the training perturbations' cells that models may use: training and validation (never test)
        train_mask = (_index_mask(split.train, n, "train") | _index_mask(split.validation, n, "validation")) & assigned
    else:
        obs_mask = assigned.copy()
        ctrl_mask = assigned & design.is_control
        train_mask = assigned.copy()
    return obs_mask, ctrl_mask, train_mask


def _training_perturbations(train_conditions: Sequence[str] | None) -> Sequence[str] | None:
    """Return the training perturbations of the Systema reference; ``None``, with a warning, without any."""
    if train_conditions is None or len(train_conditions) == 0:
        _warn(
            f"No training perturbations (train_conditions or split): {', '.join(_SYSTEMA_METRICS)} are NaN, the "
            "Systema reference being the mean of the training centroids. Pass split= (the split the models were "
            "trained on) or train_conditions=.",
            stacklevel=3,
        )
        return None
    return train_conditions
