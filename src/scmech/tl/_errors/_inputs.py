"""Input handling of the error decomposition: argument checks, labels, predictions, given variances, dispersion.

Each function checks one argument of :func:`~scmech.tl._errors.error_decomposition` (or
:func:`~scmech.tl._errors.estimate_variance`) and brings it to the form the estimators use, with an error
message that names the fix.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scmech.data._checks import check_unique_names
from scmech.data._design import canonical_condition, get_design
from scmech.tl._metrics import check_finite_rows
from scmech.tl._metrics._checks import _check_scale
from scmech.tl._metrics._predictions import check_condition_labels, prediction_labels
from scmech.tl._seeds import check_seed

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from anndata import AnnData

    from scmech.data._design import PerturbationDesign

logger = logging.getLogger(__name__)
#: defaults of the whole-number arguments, as examples in messages
_DEFAULTS = {"n_bootstrap": 200, "n_splits": 20, "min_cells": 2}


def _warn(msg: str, stacklevel: int = 3) -> None:
    """Warn the user; the default ``stacklevel`` points at the caller of the function that calls this one."""
    warnings.warn(msg, UserWarning, stacklevel=stacklevel)


def _check_batch_key(adata: AnnData, batch_key: str | None) -> None:
    """Raise a :class:`KeyError` naming the columns when ``batch_key`` is not a column of ``adata.obs``."""
    if batch_key is not None and batch_key not in adata.obs.columns:
        cols = list(adata.obs.columns)
        msg = (
            f"batch_key {batch_key!r} is not a column of adata.obs (columns: {cols[:12]}"
            f"{' ...' if len(cols) > 12 else ''}); pass the column with the wet-lab batch (lane, replicate)."
        )
        raise KeyError(msg)


def _check_counts_args(**values: object) -> None:
    """Refuse arguments that must be whole numbers (``n_bootstrap``, ``n_splits``, ``min_cells``) but are not.

    Parameters
    ----------
    **values
        The arguments by name.

    Raises
    ------
    TypeError
        For a boolean, a string or another value that is not a whole number.
    """
    for name, value in values.items():
        whole = isinstance(value, int | np.integer) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool | np.bool_) or not whole:
            msg = f"{name}={value!r} must be a whole number (e.g. {name}={_DEFAULTS[name]})."
            raise TypeError(msg)


def _check_arguments(
    adata: AnnData,
    *,
    target: str,
    n_bootstrap: int,
    n_splits: int,
    min_cells: int,
    key_added: str,
    batch_key: str | None,
    random_state: Any = 0,
) -> None:
    """Check the scalar arguments of :func:`~scmech.tl._errors.error_decomposition`, in this order."""
    check_seed(random_state)
    if target not in ("delta", "expression"):
        msg = f"target={target!r} is not supported; use 'delta' (effects) or 'expression' (batch-free predictions)."
        raise ValueError(msg)
    _check_counts_args(n_bootstrap=n_bootstrap, n_splits=n_splits, min_cells=min_cells)
    if int(n_bootstrap) != n_bootstrap or n_bootstrap < 0:
        msg = f"n_bootstrap must be an integer >= 0, got {n_bootstrap!r}."
        raise ValueError(msg)
    if n_splits < 1:
        msg = f"n_splits must be >= 1, got {n_splits!r}."
        raise ValueError(msg)
    if min_cells < 2:
        msg = f"min_cells must be >= 2 (a pseudobulk variance needs two cells), got {min_cells!r}."
        raise ValueError(msg)
    if not isinstance(key_added, str) or not key_added:
        msg = f"key_added must be a non-empty string, got {key_added!r}."
        raise ValueError(msg)
    _check_batch_key(adata, batch_key)


def _prediction_frame(
    predictions: AnnData, design: PerturbationDesign, genes: pd.Index, data_max: float | None = None
) -> pd.DataFrame:
    if not isinstance(predictions, ad.AnnData):
        msg = (
            f"predictions must be an AnnData from model.predict(...) or a baseline (one row per condition), got "
            f"{type(predictions).__name__}."
        )
        raise TypeError(msg)
    check_condition_labels(predictions, "predictions", "have")
    check_unique_names(predictions.var_names, "The var_names of predictions", "var_names_make_unique() on that AnnData")
    labels = prediction_labels(predictions, design, "predictions", "decompose")
    x = predictions.X.toarray() if sp.issparse(predictions.X) else np.asarray(predictions.X)
    check_finite_rows(
        x,
        labels,
        "predictions",
        "their model error would be NaN. Fix or drop those rows (pred[~pred.obs['perturbation'].isin([...])]).",
    )
    _check_scale(x, "predictions", data_max=data_max)
    frame = pd.DataFrame(x.astype(np.float64), index=labels, columns=pd.Index(predictions.var_names).astype(str))
    shared = genes[genes.isin(frame.columns)]
    if len(shared) == 0:
        msg = "predictions share no genes with adata.var_names."
        raise ValueError(msg)
    return frame


def _prediction_inputs(
    adata: AnnData,
    predictions: AnnData,
    all_genes: pd.Index,
    conditions: str | Sequence[str] | None,
    *,
    perturbation_key: str,
    control_label: str | Sequence[str],
    separator: str,
    unassigned_label: str | Sequence[str] | None,
    data_max: float | None = None,
) -> tuple[pd.DataFrame, str | Sequence[str] | None, pd.Index]:
    r"""Predictions as a frame (conditions x genes), the conditions to decompose and the genes they share.

    Without ``conditions``, the predicted perturbations that are also observed; given ``conditions`` must all be
    predicted. Genes missing from the predictions are left out (logged). Predictions must be on the
    :math:`\log(1 + 10^4\bar\rho)` scale, or below ``data_max`` (the largest value of log-normalised data) where
    that is larger, as :func:`~scmech.tl.evaluate` requires: counts or ``expm1`` of a prediction would give a model
    error of thousands, not a message.

    Returns
    -------
    The prediction frame, the conditions (as given, or the chosen list) and the genes to decompose on.
    """
    design0 = get_design(
        adata,
        perturbation_key,
        control_label,
        separator=separator,
        unassigned_label=unassigned_label,
        warn_missing_controls=False,
    ).perturbation
    frame = _prediction_frame(predictions, design0, all_genes, data_max)
    ctrl0 = design0.control_label
    observed = set(design0.labels[design0.fit_mask].tolist()) - {ctrl0}
    predicted = [c for c in frame.index if c != ctrl0]
    if conditions is None:
        conditions = [c for c in predicted if c in observed]
        unobserved = [c for c in predicted if c not in observed]
        if conditions and unobserved:
            _warn(
                f"Predicted condition(s) {unobserved[:5]} have no assigned cells in obs[{perturbation_key!r}] and are "
                "left out of the decomposition (a model error needs an observation).",
                stacklevel=4,
            )
        if not conditions:
            msg = (
                f"predictions share no perturbation with obs[{perturbation_key!r}] (predicted: {predicted[:5]}); "
                "predict the observed perturbations."
            )
            raise ValueError(msg)
    else:
        wanted = [
            canonical_condition(c, design0) for c in ([conditions] if isinstance(conditions, str) else conditions)
        ]
        missing = [c for c in wanted if c != ctrl0 and c not in frame.index]
        if missing:
            msg = f"Condition(s) {missing[:5]} are not in predictions; predict them or leave them out."
            raise ValueError(msg)
    genes = all_genes[all_genes.isin(frame.columns)]
    if len(genes) < len(all_genes):
        logger.warning("Decomposing on the %d of %d genes present in predictions.", len(genes), len(all_genes))
    return frame, conditions, genes


def _variance_override(variance: Mapping[str, Any] | pd.DataFrame | None, genes: pd.Index) -> dict[str, np.ndarray]:
    """Given ``batch`` and ``cell`` variance terms as per-gene arrays over ``genes`` (empty dict for ``None``)."""
    if variance is None:
        return {}
    if isinstance(variance, pd.DataFrame):
        cols = {c: variance[c] for c in variance.columns}
    elif hasattr(variance, "items"):
        cols = dict(variance.items())
    else:
        msg = f"variance must be a dict or DataFrame with 'batch'/'cell' entries, got {type(variance).__name__}."
        raise TypeError(msg)
    unknown = sorted(set(cols) - {"batch", "cell", "bio", "meas", "mean"})
    if unknown:
        msg = f"variance has unknown entries {unknown}; use 'batch' and/or 'cell' (variance on the pseudobulk scale)."
        raise KeyError(msg)
    out = {}
    for k in ("batch", "cell"):
        if k not in cols:
            continue
        v = cols[k]
        if isinstance(v, pd.Series):
            missing = genes.difference(v.index.astype(str))
            if len(missing):
                msg = f"variance[{k!r}] lacks {len(missing)} genes of adata (e.g. {list(missing[:3])})."
                raise KeyError(msg)
            arr = v.set_axis(v.index.astype(str)).loc[genes].to_numpy(dtype=np.float64)
        else:
            arr = np.broadcast_to(np.asarray(v, dtype=np.float64), (len(genes),)).copy()
        if not np.isfinite(arr).all() or (arr < 0).any():
            msg = f"variance[{k!r}] must be finite and >= 0."
            raise ValueError(msg)
        out[k] = arr
    return out


def _dispersion(
    dispersion: float | np.ndarray | pd.Series | None, genes: pd.Index, all_genes: pd.Index | None = None
) -> np.ndarray | None:
    """Per-gene NB inverse dispersion for ``genes``, from a scalar, an array over ``all_genes`` or a Series.

    An array holds one value per gene of ``adata`` (``all_genes``, in ``var_names`` order; ``genes`` when
    ``None``); a Series is aligned by gene name.
    """
    if dispersion is None:
        return None
    all_genes = genes if all_genes is None else all_genes
    if isinstance(dispersion, pd.Series):
        index = dispersion.index.astype(str)
        missing = genes.difference(index)
        if len(missing):
            msg = (
                f"dispersion (a Series) lacks {len(missing)} of the {len(genes)} genes of adata (e.g. "
                f"{list(missing[:3])}); index it by adata.var_names."
            )
            raise KeyError(msg)
        if index.duplicated().any():
            msg = f"dispersion (a Series) has duplicated genes {list(index[index.duplicated()].unique()[:3])}."
            raise ValueError(msg)
        arr = dispersion.set_axis(index).loc[genes].to_numpy(dtype=np.float64)
    else:
        try:
            raw = np.asarray(dispersion, dtype=np.float64)
        except (TypeError, ValueError) as e:
            msg = f"dispersion must be a number, an array or a pandas Series, got {type(dispersion).__name__}."
            raise TypeError(msg) from e
        if raw.ndim == 0:
            arr = np.full(len(genes), float(raw))
        elif raw.ndim == 1 and len(raw) == len(all_genes):
            arr = raw[all_genes.get_indexer(genes)] if not genes.equals(all_genes) else raw.copy()
        else:
            msg = (
                f"dispersion has shape {raw.shape} (length {raw.size}), but adata has {len(all_genes)} genes; pass "
                f"one value per gene of adata ({len(all_genes)}, in var_names order), a scalar, or a pandas Series "
                "indexed by gene name."
            )
            raise ValueError(msg)
    if not (np.isfinite(arr).all() and (arr > 0).all()):
        msg = "dispersion (NB inverse dispersion theta) must be finite and > 0 for every gene."
        raise ValueError(msg)
    return arr
