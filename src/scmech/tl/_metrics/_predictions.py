r"""Predictions as the evaluation reads them: models by name, canonical labels and prediction frames."""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scmech._constants import SCMECH_ADATA_KEYS
from scmech.data._checks import check_unique_names
from scmech.data._design import canonical_condition, get_design

from ._checks import _check_scale, check_finite_rows

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from anndata import AnnData

    from scmech.data._design import PerturbationDesign

logger = logging.getLogger(__name__)


def _as_dict(predictions: AnnData | Mapping[str, AnnData], what: str = "predictions") -> dict[str, AnnData]:
    """``{model_name: AnnData}`` from one prediction (named by its provenance) or a dict of them."""
    if isinstance(predictions, ad.AnnData):
        prov = predictions.uns.get(SCMECH_ADATA_KEYS.UNS, {}).get(SCMECH_ADATA_KEYS.PREDICTION_UNS, {})
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


def _prediction_frame(
    pred: AnnData, name: str, design: PerturbationDesign, genes: pd.Index, *, data_max: float | None = None
) -> pd.DataFrame:
    r"""Predicted log pseudobulk (conditions x genes) of a mean prediction, control rows dropped.

    Raises for duplicated gene names and for predictions that are not finite or not on the
    :math:`\log(1 + 10^4\bar\rho)` scale.
    """
    check_condition_labels(pred, f"Predictions of {name!r}", "have")
    labels = prediction_labels(pred, design, f"Predictions of {name!r}", "evaluate")
    check_unique_names(
        pred.var_names, f"The var_names of the predictions of {name!r}", "var_names_make_unique() on that AnnData"
    )
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


def _design(
    adata: AnnData,
    perturbation_key: str,
    control_label: str | Sequence[str],
    separator: str,
    unassigned_label: str | Sequence[str] | None,
) -> PerturbationDesign:
    """Read the perturbation design of the observed data (no warning about missing controls)."""
    return get_design(
        adata,
        perturbation_key,
        control_label,
        separator=separator,
        unassigned_label=unassigned_label,
        warn_missing_controls=False,
    ).perturbation


def _genes(adata: AnnData, frames: dict[str, pd.DataFrame]) -> pd.Index:
    """Genes of ``adata`` present in every prediction frame, in ``adata``'s order."""
    genes = pd.Index(adata.var_names).astype(str)
    common = genes
    for f in frames.values():
        common = common[common.isin(f.columns)]
    if len(common) < len(genes):
        short = {name: int((~genes.isin(f.columns)).sum()) for name, f in frames.items()}
        short = {name: n for name, n in short.items() if n}
        if len(common) == 0:
            msg = (
                f"No gene of adata.var_names is in every prediction (genes missing per prediction: {short}): "
                "predict the genes of the data that is evaluated, or pass that data's genes."
            )
            raise ValueError(msg)
        warnings.warn(
            f"Evaluating on the {len(common)} of {len(genes)} genes present in every prediction (genes missing per "
            f"prediction: {short}). Gene-set metrics (top-20 DE, Systema) of a part of the genes are not comparable "
            "with those of all genes; predict every gene of adata to score on all of them.",
            UserWarning,
            stacklevel=3,
        )
    return common


#: ``obs`` columns of a prediction that name the context its rows were predicted in
CONTEXT_COLUMNS = ("media", "time", "media_time", "batch")


def prediction_labels(pred: AnnData, design: PerturbationDesign, what: str, task: str) -> list[str]:
    """Canonical condition of each row of a mean prediction, refusing a condition predicted in several rows.

    Parameters
    ----------
    pred
        The predictions, one row per condition (their labels checked by :func:`check_condition_labels`).
    design
        The observed data's perturbation design, whose separator and control label the labels are written in.
    what
        How the message names the predictions (``"predictions"``, ``"Predictions of 'model'"``).
    task
        What the caller does with one context at a time (``"evaluate"``, ``"decompose"``), for the message.

    Returns
    -------
    One canonical label per row.

    Raises
    ------
    ValueError
        When two rows predict the same condition (e.g. one per medium or time point).
    """
    labels = [canonical_condition(x, design) for x in pred.obs["perturbation"].astype(str)]
    dup = pd.Series(labels)[pd.Series(labels).duplicated()].unique().tolist()
    if dup:
        rows = pred.obs.loc[np.isin(labels, dup)]
        varies = [c for c in CONTEXT_COLUMNS if c in rows and rows[c].astype(str).nunique() > 1]
        if not varies:  # the same request twice (predict(["A", "A"]) names its rows A#0, A#1)
            msg = (
                f"{what} hold several rows for {dup[:5]} in the same context (the condition was requested more than "
                f"once: rows {rows.index[:4].tolist()}); {task} one row per condition: "
                "pred[~pred.obs['perturbation'].duplicated()]."
            )
        else:
            msg = (
                f"{what} hold several rows for {dup[:5]}, one per {' and '.join(varies)}; {task} one context at a "
                f"time, e.g. pred[pred.obs[{varies[0]!r}] == {_plain(rows[varies[0]].iloc[0])!r}]."
            )
        raise ValueError(msg)
    return labels


def check_condition_labels(pred: Any, what: str, verb: str = "has") -> None:
    """Refuse predictions without an ``obs["perturbation"]`` column or with missing (NaN) labels in it.

    A NaN label would become a condition ``"nan"`` (or be dropped), and its row silently go unscored.

    Parameters
    ----------
    pred
        The predictions (an AnnData).
    what
        How messages name them (``"predictions"``, ``"Predictions of 'model'"``).
    verb
        ``"has"`` or ``"have"``, agreeing with ``what``.

    Raises
    ------
    KeyError
        Without the column.
    ValueError
        For missing labels.
    """
    if "perturbation" not in pred.obs.columns:
        msg = f"{what} {verb} no obs['perturbation'] column; pass the AnnData returned by predict()."
        raise KeyError(msg)
    na = pred.obs["perturbation"].isna().to_numpy()
    if na.any():
        msg = (
            f"{what} {verb} {int(na.sum())} missing (NaN) labels in obs['perturbation'] (rows "
            f"{list(pred.obs_names[na][:5])}); every row must name its condition. Fix or drop those rows."
        )
        raise ValueError(msg)


def _plain(value: object) -> object:
    """``value`` as the Python scalar a user compares an ``obs`` column with (``0.5``, not ``np.float64(0.5)``)."""
    return value.item() if isinstance(value, np.generic) else value
