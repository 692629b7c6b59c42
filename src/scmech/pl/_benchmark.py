"""Benchmark plots: leaderboards and predicted vs observed changes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from scmech._constants import SCMECH_ADATA_KEYS
from scmech._docs import fill_doc
from scmech.data._checks import check_unique_names

from ._utils import finish, get_ax

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from anndata import AnnData
    from matplotlib.axes import Axes

    from scmech.data._design import PerturbationDesign
    from scmech.tl import Split
    from scmech.tl._metrics import _Observed

__all__ = ["leaderboard", "predicted_vs_observed"]


@fill_doc
def leaderboard(
    results_or_board: pd.DataFrame,
    *,
    metric: str = "pearson_delta_de",
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Axes | None:
    """Dot plot of models' mean score with error bars, best model on top.

    A model named ``"noise_ceiling"`` (from :func:`scmech.tl.noise_ceiling`) is drawn as a dashed vertical
    line with its sd band instead of a dot.

    Parameters
    ----------
    results_or_board
        Tidy results of :func:`scmech.tl.evaluate` or the output of :func:`scmech.tl.leaderboard`.
    metric
        Metric to show.
    ax
        %(ax)s
    show
        %(show)s
    save
        %(save)s

    Returns
    -------
    The axes, unless ``show=True``. Error bars are the sd over conditions (or over seeds when the results
    have a ``seed`` column).

    Examples
    --------
    >>> results = scmech.tl.evaluate(preds, adata, split=sp)
    >>> scmech.pl.leaderboard(results, metric="pearson_delta_de")
    """
    from scmech.tl._metrics import higher_is_better
    from scmech.tl._metrics import leaderboard as make_board

    df = results_or_board
    if not isinstance(df, pd.DataFrame):
        msg = f"results_or_board must be a DataFrame from scmech.tl.evaluate or scmech.tl.leaderboard, got {type(df)}."
        raise TypeError(msg)
    is_board = {"mean", "sd", "rank"} <= set(df.columns)
    known = sorted(set(df["metric"])) if "metric" in df.columns else []
    if not is_board and "metric" in df.columns:
        df = df[df["metric"] == metric]  # the other metrics' coverage is no concern of this plot
    board = df if is_board else make_board(df)
    undefined: list[str] = []
    if not is_board and metric in set(df["metric"]):
        rows = df[df["metric"] == metric]
        defined = rows.dropna(subset=["value"]).groupby("model")["value"].size()
        undefined = sorted(set(rows["model"].astype(str)) - set(defined.index.astype(str)))
    sub = board[board["metric"] == metric]
    if sub.empty and not is_board and metric in set(df["metric"]):
        msg = (
            f"Every value of metric {metric!r} is NaN (undefined for {', '.join(undefined)}): nothing to plot. "
            "Pick a metric the models define (e.g. pearson_delta_de for models that predict changes)."
        )
        raise ValueError(msg)
    if sub.empty:
        msg = f"Metric {metric!r} is not in the results (metrics: {known})."
        raise KeyError(msg)
    higher = higher_is_better(metric)
    ceiling = sub[sub["model"] == "noise_ceiling"]
    sub = sub[sub["model"] != "noise_ceiling"].sort_values("mean", ascending=higher, kind="stable")
    n = len(sub)
    fig, ax = get_ax(ax, (5.0, 0.42 * max(n, 1) + 1.4))
    y = np.arange(n)
    sd = sub["sd"].fillna(0).to_numpy()
    ax.errorbar(sub["mean"], y, xerr=sd, fmt="o", color="C0", ecolor="0.45", capsize=3, markersize=6, zorder=3)
    ax.set_yticks(y, sub["model"].astype(str).tolist())
    ax.set_ylim(-0.6, n - 0.4)
    if "pearson" in metric or "correlation" in metric:
        ax.axvline(0, color="0.85", lw=0.8, zorder=0)
    if not ceiling.empty:
        m, s = float(ceiling["mean"].iloc[0]), float(np.nan_to_num(ceiling["sd"].iloc[0]))
        lo, hi = m - s, m + s
        if "pearson" in metric:
            lo, hi = max(lo, -1.0), min(hi, 1.0)
        elif "accuracy" in metric or metric == "perturbench_rank":
            lo, hi = max(lo, 0.0), min(hi, 1.0)
        ax.axvspan(lo, hi, color="0.6", alpha=0.12, lw=0, zorder=0)
        ax.axvline(m, color="0.4", ls="--", lw=1, zorder=1, label="noise ceiling")
        ax.legend(loc="lower right" if higher else "lower left", fontsize="small", frameon=False)
    over = "seeds" if "n_conditions" in sub.columns else "conditions"
    label = f"{metric} ({'higher' if higher else 'lower'} is better)\nmean ± sd over {over}"
    if undefined:
        label += f"\nundefined for {', '.join(undefined)}"
    ax.set_xlabel(label)
    ax.grid(axis="x", color="0.93", zorder=0)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return finish(ax, name=f"leaderboard_{metric}", show=show, save=save)


@fill_doc
def predicted_vs_observed(
    prediction: AnnData,
    adata: AnnData,
    condition: str,
    *,
    perturbation_key: str = "perturbation",
    control_label: str | Sequence[str] = "NT",
    separator: str = "+",
    unassigned_label: str | Sequence[str] | None = "unassigned",
    layer: str | None = None,
    counts: bool = True,
    split: Split | None = None,
    genes: str | Sequence[str] | None = None,
    n_genes: int = 20,
    de_method: Literal["t-test", "t-test_overestim_var", "wilcoxon", "logreg"] = "t-test",
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Axes | None:
    """Scatter of predicted vs observed change vs control for one condition, top DE genes labelled.

    Changes are in the pseudobulk space of :func:`scmech.data.pseudobulk` (the space of ``predict``), against
    the observed control pseudobulk, as in :func:`scmech.tl.evaluate`. The title gives the Pearson r over all
    genes and over the highlighted genes. A prediction made with ``interval=level`` shows each highlighted gene's
    prediction interval as a vertical bar (an infinite bound runs to the edge of the axes).

    Parameters
    ----------
    prediction
        AnnData returned by ``predict`` holding a row for ``condition``.
    adata
        Observed data (not modified).
    condition
        Perturbation to show.
    perturbation_key
        %(perturbation_key)s
    control_label
        %(control_label)s
    separator
        %(separator)s
    unassigned_label
        %(unassigned_label)s
    layer
        %(layer)s
    counts
        %(counts)s
    split
        The split the model was trained on; observed cells then come from its test set and controls from
        ``split.control_reference`` (as in :func:`scmech.tl.evaluate`).
    genes
        Genes to highlight and label instead of the top DE genes; a single name is one gene.
    n_genes
        Number of top DE genes (vs control, :func:`scanpy.tl.rank_genes_groups`) to highlight.
    de_method
        Test of :func:`scanpy.tl.rank_genes_groups`.
    ax
        %(ax)s
    show
        %(show)s
    save
        %(save)s

    Returns
    -------
    The axes, unless ``show=True``.

    Raises
    ------
    ValueError
        When ``genes`` selects no gene, ``n_genes`` is below 1 or ``condition`` is the control.
    KeyError
        When a gene of ``genes`` is missing, or ``condition`` has no prediction or no observed cells.

    Examples
    --------
    >>> pred = model.predict(["STAT1"])
    >>> scmech.pl.predicted_vs_observed(pred, adata, "STAT1", split=sp)
    """
    from scmech.tl._metrics import _design

    if genes is None and (isinstance(n_genes, bool) or not isinstance(n_genes, int | np.integer) or n_genes < 1):
        msg = f"n_genes={n_genes!r} must be an integer >= 1 (top DE genes to draw), e.g. n_genes=20."
        raise ValueError(msg)
    if split is not None:
        split.check_adata(adata)
    check_unique_names(adata.var_names, "adata.var_names", "adata.var_names_make_unique()")
    genes = _gene_list(genes, adata, n_genes)
    design = _design(adata, perturbation_key, control_label, separator, unassigned_label)
    cond = _perturbation_of(condition, design)
    model, frame, gene_idx = _predicted_frame(prediction, adata, design, cond)
    obs = _observed_changes(
        adata, design, cond, gene_idx, split, layer=layer, counts=counts, n_genes=n_genes, de_method=de_method
    )
    x = obs.pb.loc[cond].to_numpy() - obs.ctrl
    yv = frame.loc[cond, gene_idx].to_numpy() - obs.ctrl
    hi, what = _highlighted_genes(genes, gene_idx, obs.de_genes if genes is None else None, cond)
    fig, ax = get_ax(ax, (5.2, 4.8))
    _draw_predicted_vs_observed(ax, x, yv, hi, what, gene_idx)
    _draw_interval(ax, prediction, design, cond, gene_idx, obs.ctrl, x[hi], hi)
    _label_predicted_vs_observed(ax, x, yv, hi, what, cond, model)
    return finish(ax, name=f"predicted_vs_observed_{cond}", show=show, save=save)


def _draw_interval(
    ax: Axes,
    prediction: AnnData,
    design: PerturbationDesign,
    cond: str,
    gene_idx: pd.Index,
    ctrl: np.ndarray,
    x: np.ndarray,
    hi: np.ndarray,
) -> None:
    """Draw the prediction interval of each highlighted gene as a vertical bar, where ``predict`` gave one.

    Bounds come from ``layers["lower"]`` and ``layers["upper"]`` (``predict(..., interval=level)``), as changes
    from the observed controls like the predictions; an infinite bound runs to the edge of the axes. Nothing is
    drawn without them or where they are NaN (a condition observed in training).
    """
    from scmech.data._design import canonical_condition

    if "lower" not in prediction.layers or "upper" not in prediction.layers:
        return
    labels = [canonical_condition(c, design) for c in prediction.obs["perturbation"].astype(str)]
    if cond not in labels:
        return
    row = labels.index(cond)
    cols = pd.Index(prediction.var_names).astype(str).get_indexer(gene_idx[hi])
    lower = np.asarray(prediction.layers["lower"], dtype=np.float64)[row, cols] - ctrl[hi]
    upper = np.asarray(prediction.layers["upper"], dtype=np.float64)[row, cols] - ctrl[hi]
    keep = ~(np.isnan(lower) | np.isnan(upper))
    if not keep.any():
        return
    bottom, top = ax.get_ylim()
    level = prediction.uns.get(SCMECH_ADATA_KEYS.UNS, {}).get(SCMECH_ADATA_KEYS.PREDICTION_UNS, {}).get("interval")
    ax.vlines(
        x[keep],
        np.maximum(lower[keep], bottom),
        np.minimum(upper[keep], top),
        color="C3",
        alpha=0.35,
        lw=1.2,
        zorder=2,
        label="prediction interval" if level is None else f"{float(level):.0%} prediction interval",
    )
    ax.set_ylim(bottom, top)


def _gene_list(genes: str | Sequence[str] | None, adata: AnnData, n_genes: int) -> list[str] | None:
    """Return the genes to highlight as a list (a bare string is one gene), refusing an empty selection.

    Parameters
    ----------
    genes
        Genes to highlight as given, or ``None`` for the top DE genes.
    adata
        Observed data (its first genes make the example of the message).
    n_genes
        Number of top DE genes drawn when ``genes`` is ``None`` (for the message).

    Returns
    -------
    The gene names, or ``None``.

    Raises
    ------
    ValueError
        When ``genes`` is empty.
    """
    if genes is None:
        return None
    if isinstance(genes, str):
        return [genes]
    names = [str(g) for g in genes]
    if not names:
        example = [str(g) for g in adata.var_names[:2]]
        msg = (
            f"genes={genes!r} selects no gene; pass genes=None for the top n_genes={n_genes!r} DE genes, or name "
            f"the genes to highlight (e.g. genes={example!r})."
        )
        raise ValueError(msg)
    return names


def _perturbation_of(condition: str, design: PerturbationDesign) -> str:
    """Return the canonical label of ``condition``, refusing the control.

    Parameters
    ----------
    condition
        Perturbation to show, as given.
    design
        The perturbation design of the observed data.

    Returns
    -------
    The canonical label of ``condition``.

    Raises
    ------
    ValueError
        When ``condition`` is the control.
    """
    from scmech.data._design import canonical_condition

    cond = canonical_condition(condition, design)
    if cond == design.control_label:
        msg = f"condition {condition!r} is the control; choose a perturbation."
        raise ValueError(msg)
    return cond


def _predicted_frame(
    prediction: AnnData, adata: AnnData, design: PerturbationDesign, cond: str
) -> tuple[str, pd.DataFrame, pd.Index]:
    """Get the model's name, its predicted pseudobulk and the genes shared by the data and the prediction.

    Parameters
    ----------
    prediction
        AnnData returned by ``predict``.
    adata
        Observed data.
    design
        The perturbation design of the observed data.
    cond
        Canonical label of the perturbation to show.

    Returns
    -------
    The model's name, the predicted log pseudobulk (conditions x genes) and the shared genes (in the order of
    ``adata.var_names``).

    Raises
    ------
    KeyError
        When the prediction has no row for ``cond``.
    """
    from scmech.tl._metrics import _prediction_frame

    model = str(
        prediction.uns.get(SCMECH_ADATA_KEYS.UNS, {})
        .get(SCMECH_ADATA_KEYS.PREDICTION_UNS, {})
        .get("model", "prediction")
    )
    all_genes = pd.Index(adata.var_names).astype(str)
    frame = _prediction_frame(prediction, model, design, all_genes)
    if cond not in frame.index:
        msg = f"The prediction has no row for {cond!r} (rows: {list(frame.index)[:10]}); predict it first."
        raise KeyError(msg)
    return model, frame, all_genes[all_genes.isin(frame.columns)]


def _observed_changes(
    adata: AnnData,
    design: PerturbationDesign,
    cond: str,
    gene_idx: pd.Index,
    split: Split | None,
    *,
    layer: str | None,
    counts: bool,
    n_genes: int,
    de_method: str,
) -> _Observed:
    """Pseudobulk the observed cells of ``cond`` (test set of ``split``) and the controls, and find DE genes.

    Parameters
    ----------
    adata
        Observed data (not modified).
    design
        The perturbation design of ``adata``.
    cond
        Canonical label of the perturbation to show.
    gene_idx
        Genes shared by the data and the prediction.
    split
        The split the model was trained on, or ``None`` for all assigned cells.
    layer
        Layer with the counts; ``X`` when ``None``.
    counts
        Whether the matrix holds raw counts (``False`` for log-normalised values).
    n_genes
        Number of top DE genes to find.
    de_method
        Test of :func:`scanpy.tl.rank_genes_groups`.

    Returns
    -------
    The observed pseudobulks (``pb``), the control pseudobulk (``ctrl``) and the DE genes (``de_genes``).

    Raises
    ------
    KeyError
        When there are no observed cells of ``cond``.
    """
    from scmech.tl._metrics import _index_mask, _Observed

    n = adata.n_obs
    assigned = design.fit_mask
    if split is not None:
        obs_mask = _index_mask(split.test, n, "test") & assigned
        ctrl_mask = _index_mask(split.control_reference, n, "control_reference") & assigned & design.is_control
    else:
        obs_mask = assigned.copy()
        ctrl_mask = assigned & design.is_control
    if not (obs_mask & (design.labels == cond)).any():
        msg = f"No observed cells of {cond!r} to compare with (in the test set of the split when one is given)."
        raise KeyError(msg)
    return _Observed(
        adata,
        design,
        obs_mask,
        ctrl_mask,
        assigned,
        [cond],
        None,
        gene_idx,
        layer=layer,
        counts=counts,
        n_de_genes=n_genes,
        n_top_expressed=1,
        de_method=de_method,
    )


def _highlighted_genes(
    genes: list[str] | None, gene_idx: pd.Index, de_genes: dict[str, np.ndarray] | None, cond: str
) -> tuple[np.ndarray, str]:
    """Get the positions of the genes to highlight (given, or the top DE genes) and what they are.

    Parameters
    ----------
    genes
        Genes to highlight, or ``None`` for the top DE genes of ``cond``.
    gene_idx
        Genes shared by the data and the prediction.
    de_genes
        Positions of the top DE genes of each condition (used when ``genes`` is ``None``).
    cond
        Canonical label of the perturbation shown.

    Returns
    -------
    The positions in ``gene_idx`` of the highlighted genes and their description (``"selected"`` or
    ``"top-k DE"``).

    Raises
    ------
    KeyError
        When a gene of ``genes`` is not in ``gene_idx``.
    """
    if genes is not None:
        missing = [g for g in genes if g not in gene_idx]
        if missing:
            msg = f"Gene(s) {missing[:5]} are not in the data and the prediction."
            raise KeyError(msg)
        return gene_idx.get_indexer(genes), "selected"
    hi = de_genes[cond]
    return hi, f"top-{len(hi)} DE"


def _draw_predicted_vs_observed(
    ax: Axes, x: np.ndarray, yv: np.ndarray, hi: np.ndarray, what: str, gene_idx: pd.Index
) -> None:
    """Scatter the predicted against the observed changes, the highlighted genes in red and labelled, and y = x.

    Parameters
    ----------
    ax
        Axes to draw into.
    x
        Observed change vs control of each gene.
    yv
        Predicted change vs control of each gene.
    hi
        Positions of the highlighted genes.
    what
        Description of the highlighted genes (for the legend).
    gene_idx
        Gene names (for the labels).
    """
    rest = np.setdiff1d(np.arange(len(x)), hi)
    ax.scatter(x[rest], yv[rest], s=8, color="0.7", alpha=0.6, linewidths=0, label="other genes")
    ax.scatter(x[hi], yv[hi], s=18, color="C3", linewidths=0, label=f"{what} genes", zorder=3)
    finite = np.concatenate([x[np.isfinite(x)], yv[np.isfinite(yv)]])
    lo, up = (float(finite.min()), float(finite.max())) if finite.size else (-1.0, 1.0)
    pad = 0.05 * (up - lo or 1.0)
    ax.plot([lo - pad, up + pad], [lo - pad, up + pad], ls="--", color="0.5", lw=0.8, label="y = x")
    ax.axhline(0, color="0.88", lw=0.8, zorder=0)
    ax.axvline(0, color="0.88", lw=0.8, zorder=0)
    texts = [ax.text(x[i], yv[i], str(gene_idx[i]), fontsize=7, zorder=4) for i in hi]
    _spread_labels(ax, texts, x[hi], yv[hi])


def _label_predicted_vs_observed(
    ax: Axes, x: np.ndarray, yv: np.ndarray, hi: np.ndarray, what: str, cond: str, model: str
) -> None:
    """Label the axes, give the Pearson r (all genes; highlighted genes when two or more) in the title, add the legend.

    Parameters
    ----------
    ax
        Axes of the scatter.
    x
        Observed change vs control of each gene.
    yv
        Predicted change vs control of each gene.
    hi
        Positions of the highlighted genes.
    what
        Description of the highlighted genes.
    cond
        Canonical label of the perturbation shown.
    model
        Name of the model that made the prediction.
    """
    from scmech.tl._metrics import _pearson

    r_all = _pearson(yv, x)
    if len(hi) >= 2:
        of_hi = f", {_pearson(yv[hi], x[hi]):.2f} ({what})"
    else:  # a correlation needs two genes: say so rather than print nan
        of_hi = f"; no r for {len(hi)} {what} gene{'' if len(hi) == 1 else 's'}"
    ax.set_xlabel("observed change vs control (log1p pseudobulk)")
    ax.set_ylabel(f"predicted change vs control ({model})")
    ax.set_title(f"{cond} — Pearson r = {r_all:.2f} (all {len(x)} genes){of_hi}", fontsize="medium")
    ax.legend(loc="upper left", fontsize="small", frameon=False)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _spread_labels(ax: Axes, texts: list, x: np.ndarray, y: np.ndarray) -> None:
    """Move gene labels apart: adjustText when installed, otherwise small alternating offsets."""
    if not texts:
        return
    try:
        from adjustText import adjust_text
    except ImportError:
        for k, t in enumerate(texts):
            t.set_position((x[k], y[k]))
            t.set_ha("left" if k % 2 == 0 else "right")
            t.set_va("bottom" if (k // 2) % 2 == 0 else "top")
        return
    adjust_text(texts, x=x, y=y, ax=ax, arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.5})
