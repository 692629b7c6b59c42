"""How often prediction intervals hold the held-out observations: :func:`interval_coverage`."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from scmech._constants import SCMECH_ADATA_KEYS
from scmech._docs import fill_doc
from scmech.data import pseudobulk
from scmech.data._checks import check_unique_names
from scmech.data._target_genes import target_gene_names

from ._context import context_mask, prediction_context
from ._evaluate import _split_masks
from ._predictions import _as_dict, _design, check_condition_labels, prediction_labels

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from anndata import AnnData

    from scmech.tl._split import Split

__all__ = ["interval_coverage"]

#: the columns of :func:`interval_coverage`'s table
COLUMNS = [
    "model",
    "condition",
    "level",
    "coverage",
    "own_gene_covered",
    "infinite",
    "median_width",
    "n_genes",
    "n_cells",
]


@fill_doc
def interval_coverage(
    predictions: AnnData | Mapping[str, AnnData],
    adata: AnnData,
    *,
    perturbation_key: str = "perturbation",
    control_label: str | Sequence[str] = "NT",
    separator: str = "+",
    unassigned_label: str | Sequence[str] | None = "unassigned",
    layer: str | None = None,
    counts: bool = True,
    split: Split | None = None,
    gene_symbols: str | None = None,
    batch_key: str | None = None,
    media_key: str | None = None,
    time_key: str | None = None,
    media_time_key: str | None = None,
) -> pd.DataFrame:
    r"""Share of genes whose observed pseudobulk lies within each predicted condition's interval.

    Scores the prediction intervals of ``SemiMechVI.predict(..., interval=level)`` (``layers["lower"]`` and
    ``layers["upper"]``) against the observed pseudobulks of the held-out conditions, as :func:`evaluate` scores the
    predictions: the same cells (the split's test cells, the context the predictions were made in) and the same
    pseudobulk (:func:`scmech.data.pseudobulk`). Rows without an interval (NaN bounds: conditions observed in
    training, and others ``predict`` gave none) are left out, with a ``UserWarning`` naming those with observed
    cells. A condition's own genes (every target gene of a combination) are scored apart.

    The promise of a conformal interval is marginal, over targets exchangeable with the training targets: average
    ``coverage`` over many held-out conditions before comparing it with ``level``; one strong target can lie outside
    on most genes. Infinite bounds (too few training targets for the level) hold trivially; ``infinite`` says how
    many genes had one.

    Parameters
    ----------
    predictions
        An AnnData returned by ``predict(..., interval=level)`` or a dict ``{model_name: AnnData}``.
    adata
        Observed data with counts (or log-normalised values with ``counts=False``). Not modified.
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
    split
        The :class:`~scmech.tl.Split` the model was trained on: the observed conditions come from its test cells.
        Without a split all assigned cells of ``adata`` are used.
    gene_symbols
        %(gene_symbols)s It decides which gene is a condition's own (``own_gene_covered``, left out of
        ``coverage``).
    batch_key, media_key, time_key, media_time_key
        Columns of ``adata.obs`` to match the context of the predictions, as in :func:`evaluate`.

    Returns
    -------
    One row per model and condition with an interval: ``level`` (the predictions' probability), ``coverage`` (share
    of the genes, the condition's own genes left out, within the bounds), ``own_gene_covered`` (whether its own gene
    is; NaN without one), ``infinite`` (share of those genes with an infinite bound), ``median_width`` (of the
    finite intervals, log units), ``n_genes`` and ``n_cells`` (observed cells).

    Raises
    ------
    KeyError
        For predictions without ``layers["lower"]`` and ``layers["upper"]``.
    ValueError
        For a ``split`` made on other cells than ``adata``; for duplicated ``var_names``; for predictions that
        share no gene with ``adata``, or whose intervals do not contain them (a lower bound above the upper).

    Examples
    --------
    >>> preds = model.predict(split.test_conditions, interval=0.9)
    >>> table = scmech.tl.interval_coverage(preds, adata, split=split)
    >>> table["coverage"].mean()  # about 0.9 or more over many exchangeable held-out targets
    """
    if split is not None:
        split.check_adata(adata)
    check_unique_names(adata.var_names, "adata.var_names", "adata.var_names_make_unique()")
    preds = _as_dict(predictions)
    design = _design(adata, perturbation_key, control_label, separator, unassigned_label)
    obs_mask, _, _ = _split_masks(design, adata.n_obs, split)
    context = prediction_context(
        preds, {"batch": batch_key, "media": media_key, "time": time_key, "media_time": media_time_key}
    )
    if context:
        obs_mask = obs_mask & context_mask(adata, context)
    genes = pd.Index(adata.var_names).astype(str)
    names = pd.Index(target_gene_names(adata.var, gene_symbols))
    own_of = {g: i for i, g in reversed(list(enumerate(map(str, names))))}
    bounds = {name: _bounds(pred, name, design, genes) for name, pred in preds.items()}  # every model checked first
    group = np.where(obs_mask, design.labels, "").astype(str)
    n_cells = pd.Series(group).value_counts()
    scored = {  # each model's conditions with an interval and observed cells
        name: [c for i, c in enumerate(labels) if (~np.isnan(lower[i])).any() and n_cells.get(c, 0) > 0]
        for name, (lower, _, labels, _) in bounds.items()
    }
    _warn_unscored(bounds, scored, n_cells, design.control_label)
    conditions = sorted({c for cs in scored.values() for c in cs})
    if not conditions:
        return pd.DataFrame(columns=COLUMNS)
    observed = pseudobulk(adata, group, layer=layer, counts=counts, groups=conditions).loc[:, genes]  # once for all
    rows = []
    for name, (lower, upper, labels, level) in bounds.items():
        for c in scored[name]:
            i = labels.index(c)
            own = [own_of[t] for t in c.split(design.separator) if t in own_of]
            y = observed.loc[c].to_numpy()
            rows.append(_row(name, c, level, y, lower[i], upper[i], own, int(n_cells[c])))
    return pd.DataFrame(rows, columns=COLUMNS)


def _warn_unscored(bounds: dict, scored: dict, n_cells: pd.Series, control: str) -> None:
    """Warn about predicted conditions with observed cells that are left out for want of an interval."""
    for name, (_, _, labels, _) in bounds.items():
        left = sorted({c for c in labels if c != control and n_cells.get(c, 0) > 0} - set(scored[name]))
        if left:
            more = " ..." if len(left) > 5 else ""
            msg = (
                f"{len(left)} condition(s) predicted by {name!r} with observed cells have no interval and are not "
                f"scored: {left[:5]}{more}. predict(..., interval=) bounds targets without training cells, "
                "combinations of observed singles, perturbations carried from other media by a calibrated "
                "carry-over and perturbations observed at neighbouring times; its warning and obs['anchoring'] say "
                "how these rows were predicted."
            )
            warnings.warn(msg, UserWarning, stacklevel=3)


def _bounds(pred: AnnData, name: str, design, genes: pd.Index) -> tuple[np.ndarray, np.ndarray, list[str], float]:
    """Return the bounds of ``pred`` on ``genes`` (rows x genes), its condition labels and its level."""
    missing = [k for k in ("lower", "upper") if k not in pred.layers]
    if missing:
        msg = (
            f"Predictions of {name!r} have no layers[{missing[0]!r}]: interval_coverage scores prediction intervals; "
            "predict with SemiMechVI.predict(..., interval=0.9)."
        )
        raise KeyError(msg)
    check_unique_names(pred.var_names, f"The var_names of the predictions of {name!r}", "var_names_make_unique()")
    cols = pd.Index(pred.var_names).astype(str)
    if not genes.isin(cols).any():
        msg = (
            f"Predictions of {name!r} share no genes with adata.var_names: score them against the data the model "
            "was trained on (the same genes)."
        )
        raise ValueError(msg)
    take = cols.get_indexer(genes)
    lower = np.where(take >= 0, np.asarray(pred.layers["lower"], dtype=np.float64)[:, np.maximum(take, 0)], np.nan)
    upper = np.where(take >= 0, np.asarray(pred.layers["upper"], dtype=np.float64)[:, np.maximum(take, 0)], np.nan)
    if np.any(lower > upper) or np.any(np.isnan(lower) != np.isnan(upper)):
        msg = (
            f"Predictions of {name!r} have a lower bound above the upper one, or a bound on one side only; pass the "
            "layers predict returned."
        )
        raise ValueError(msg)
    check_condition_labels(pred, f"Predictions of {name!r}", "have")
    labels = prediction_labels(pred, design, f"Predictions of {name!r}", "score")
    prov = pred.uns.get(SCMECH_ADATA_KEYS.UNS, {}).get(SCMECH_ADATA_KEYS.PREDICTION_UNS, {})
    return lower, upper, labels, float(prov.get("interval", np.nan))


def _row(
    model: str,
    condition: str,
    level: float,
    y: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    own: list[int],
    n_cells: int,
) -> list:
    """One row of the table: the coverage of one condition's observed pseudobulk ``y``."""
    off = ~np.isnan(lower)
    own_covered = np.nan
    if own and all(off[g] for g in own):
        own_covered = float(all(lower[g] <= y[g] <= upper[g] for g in own))
    off[own] = False
    inside = (y[off] >= lower[off]) & (y[off] <= upper[off])
    width = (upper - lower)[off]
    finite = np.isfinite(width)
    return [
        model,
        condition,
        level,
        float(inside.mean()) if off.any() else np.nan,
        own_covered,
        float((~finite).mean()) if off.any() else np.nan,
        float(np.median(width[finite])) if finite.any() else (np.inf if off.any() else np.nan),
        int(off.sum()),
        n_cells,
    ]
