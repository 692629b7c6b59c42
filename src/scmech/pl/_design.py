"""Design plots: error components per perturbation, batch tables and power curves."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import anndata as ad
import numpy as np
import pandas as pd

from scmech._constants import SCMECH_ADATA_KEYS
from scmech._docs import fill_doc

from ._utils import finish, get_ax

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from anndata import AnnData
    from matplotlib.axes import Axes

    from scmech.tl._design import BatchDesign

__all__ = ["design_table", "error_components", "power_curve"]

#: colours and labels of the error components, in stacking order
_COMPONENT_STYLE = {
    "noise_floor": ("#9ecae1", "noise floor"),
    "confounding": ("#e6550d", "confounding"),
    "batch": ("#fdae6b", "batch"),
    "model": ("#756bb1", "model"),
}


def _nice_log_ticks(axis, lo: float, hi: float, position=None) -> None:
    """Put 1-2-5 ticks with plain labels (``20,000``, ``0.2``) on a log axis between ``lo`` and ``hi``.

    ``position`` maps a tick value to its place on a log scale (for a secondary axis); ticks closer than a
    fifth of the range to the previous one are dropped so that their labels do not collide.
    """
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    lo, hi = max(min(lo, hi), 1e-300), max(lo, hi)
    decades = range(int(np.floor(np.log10(lo))) - 1, int(np.ceil(np.log10(hi))) + 1)
    ticks: list[float] = []
    for mantissas in ((1,), (1, 2, 5), (1, 2, 3, 5), (1, 1.5, 2, 3, 4, 5, 6, 8)):
        cand = [m * 10.0**e for e in decades for m in mantissas if lo <= m * 10.0**e <= hi]
        if len(cand) > 7:
            break
        ticks = cand
        if len(ticks) >= 3:
            break
    if position is not None and len(ticks) > 1:
        pos = np.log10(np.asarray([position(t) for t in ticks], dtype=float))
        span = abs(np.log10(position(lo)) - np.log10(position(hi))) or 1.0
        kept, last = [], None
        for t, p in sorted(zip(ticks, pos, strict=True), key=lambda tp: tp[1]):
            if last is None or abs(p - last) >= 0.2 * span:
                kept.append(t)
                last = p
        ticks = sorted(kept)
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 10 else f"{v:g}"))
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())


def _strip(ax: Axes) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


@fill_doc
def error_components(
    result_or_adata: pd.DataFrame | AnnData,
    *,
    conditions: Sequence[str] | None = None,
    key: str = "error_decomposition",
    sort: bool = True,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Axes | None:
    """Stacked bars of the error components of each perturbation (:func:`scmech.tl.error_decomposition`).

    One horizontal bar per perturbation: noise floor, confounding, batch and (with predictions) model error,
    stacked from 0; a negative model error (a prediction within the noise) is drawn to the left of 0. A black
    tick marks the total with its bootstrap interval. Perturbations flagged ``confounded`` (cells only in
    batches without controls) are labelled in red with an asterisk.

    Parameters
    ----------
    result_or_adata
        The table returned by ``error_decomposition``, or an AnnData holding it in ``uns["scmech"][key]``.
    conditions
        Perturbations to show (in this order when ``sort=False``); all when ``None``.
    key
        ``uns["scmech"]`` key of the decomposition (AnnData input).
    sort
        Largest total on top.
    ax
        %(ax)s
    show
        %(show)s
    save
        %(save)s

    Returns
    -------
    The axes, unless ``show=True``.

    Examples
    --------
    >>> table = scmech.tl.error_decomposition(adata, batch_key="bio_rep")
    >>> scmech.pl.error_components(table)
    """
    table = _decomposition_table(result_or_adata, key)
    wide, total, flags = _component_frame(table, conditions, sort)
    fig, ax = get_ax(ax, (6.4, 0.3 * max(len(wide), 1) + 1.5))
    _draw_component_bars(ax, wide)
    _draw_component_totals(ax, table, wide, total)
    _label_components(ax, wide, flags)
    return finish(ax, name="error_components", show=show, save=save)


def _decomposition_table(result_or_adata: pd.DataFrame | AnnData, key: str) -> pd.DataFrame:
    """Get the long table of :func:`scmech.tl.error_decomposition`, given or from ``uns["scmech"][key]``.

    Parameters
    ----------
    result_or_adata
        The table returned by ``error_decomposition``, or an AnnData holding it in ``uns["scmech"][key]``.
    key
        ``uns["scmech"]`` key of the decomposition (AnnData input).

    Returns
    -------
    The table, checked to have the columns ``condition``, ``component`` and ``value``.

    Raises
    ------
    KeyError
        When the AnnData holds no decomposition under ``key`` or the table lacks a needed column.
    TypeError
        When ``result_or_adata`` is neither a DataFrame nor an AnnData.
    """
    if isinstance(result_or_adata, ad.AnnData):
        stored = result_or_adata.uns.get(SCMECH_ADATA_KEYS.UNS, {}).get(key)
        if stored is None:
            msg = f"adata.uns['scmech'] has no {key!r}; run scmech.tl.error_decomposition(adata, key_added={key!r})."
            raise KeyError(msg)
        table = stored["table"]
    elif isinstance(result_or_adata, pd.DataFrame):
        table = result_or_adata
    else:
        msg = f"Pass the table of error_decomposition or an AnnData holding it, got {type(result_or_adata).__name__}."
        raise TypeError(msg)
    need = {"condition", "component", "value"}
    if not need <= set(table.columns):
        msg = f"The table lacks columns {sorted(need - set(table.columns))}; pass error_decomposition's output."
        raise KeyError(msg)
    return table


def _component_frame(
    table: pd.DataFrame, conditions: Sequence[str] | str | None, sort: bool
) -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    """One row per perturbation to draw (bottom to top), its total and whether it is confounded.

    Parameters
    ----------
    table
        The long table of ``error_decomposition`` (checked by :func:`_decomposition_table`).
    conditions
        Perturbations to show (in this order when ``sort=False``); all when ``None``.
    sort
        Order the rows by total, the largest last (on top).

    Returns
    -------
    The components in wide form (perturbations x components), the total of each perturbation (the ``total``
    component, or the sum of the components) and its ``confounded`` flag (all ``False`` without the column).

    Raises
    ------
    KeyError
        When a perturbation of ``conditions`` is not in the table.
    """
    wide = table.pivot_table(index="condition", columns="component", values="value", aggfunc="first", sort=False)
    if conditions is not None:
        conditions = [str(c) for c in ([conditions] if isinstance(conditions, str) else conditions)]
        missing = [c for c in conditions if c not in wide.index]
        if missing:
            msg = f"Condition(s) {missing[:5]} are not in the decomposition (conditions: {list(wide.index)[:8]})."
            raise KeyError(msg)
        wide = wide.loc[conditions]
    comps = [c for c in _COMPONENT_STYLE if c in wide.columns]
    total = wide["total"] if "total" in wide.columns else wide[comps].sum(axis=1)
    if sort:
        order = total.sort_values(ascending=True, kind="stable", na_position="first").index
        wide, total = wide.loc[order], total.loc[order]
    flags = (
        table.drop_duplicates("condition").set_index("condition")["confounded"].reindex(wide.index).fillna(False)
        if "confounded" in table.columns
        else pd.Series(False, index=wide.index)
    )
    return wide, total, flags


def _draw_component_bars(ax: Axes, wide: pd.DataFrame) -> None:
    """Stack the positive part of each component from 0 and draw the negative part, hatched, left of 0.

    Parameters
    ----------
    ax
        Axes to draw into.
    wide
        The components of each perturbation (perturbations x components), one bar per row.
    """
    n = len(wide)
    y = np.arange(n)
    left = np.zeros(n)
    for c in (c for c in _COMPONENT_STYLE if c in wide.columns):
        colour, label = _COMPONENT_STYLE[c]
        v = np.nan_to_num(wide[c].to_numpy(dtype=float))
        pos = np.maximum(v, 0.0)
        if (pos > 0).any() or c == "noise_floor":
            ax.barh(y, pos, left=left, height=0.72, color=colour, label=label, edgecolor="white", linewidth=0.4)
        left = left + pos
        if (v < 0).any():
            ax.barh(y, np.minimum(v, 0.0), height=0.72, color=colour, hatch="///", edgecolor="white", linewidth=0.4)


def _draw_component_totals(ax: Axes, table: pd.DataFrame, wide: pd.DataFrame, total: pd.Series) -> None:
    """Mark each perturbation's total with a black tick and its bootstrap interval (when the table has one).

    Parameters
    ----------
    ax
        Axes to draw into.
    table
        The long table of ``error_decomposition``; its ``ci_low`` and ``ci_high`` columns give the interval.
    wide
        The components in wide form; its index gives the perturbations in drawing order.
    total
        The total of each perturbation, in the order of ``wide``.
    """
    tv = total.to_numpy(dtype=float)
    xerr = None
    if {"ci_low", "ci_high"} <= set(table.columns):
        ci = table[table["component"] == "total"].set_index("condition").reindex(wide.index)
        lo, hi = ci["ci_low"].to_numpy(dtype=float), ci["ci_high"].to_numpy(dtype=float)
        if np.isfinite(lo).any():
            xerr = np.vstack([np.clip(tv - lo, 0, None), np.clip(hi - tv, 0, None)])
            xerr = np.nan_to_num(xerr)
    y = np.arange(len(wide))
    ax.errorbar(tv, y, xerr=xerr, fmt="|", color="black", markersize=9, capsize=2, lw=0.8, label="total", zorder=4)


def _label_components(ax: Axes, wide: pd.DataFrame, flags: pd.Series) -> None:
    """Label the perturbations (confounded ones in red, with an asterisk), the axis, the title and the legend.

    Parameters
    ----------
    ax
        Axes of the bars.
    wide
        The components in wide form; its index gives the perturbations in drawing order.
    flags
        Whether each perturbation is confounded, in the order of ``wide``.
    """
    n = len(wide)
    y = np.arange(n)
    labels = [f"{c} *" if flags.iloc[i] else str(c) for i, c in enumerate(wide.index)]
    ax.set_yticks(y, labels)
    ticks = {t.get_text(): t for t in ax.get_yticklabels()}  # axes with a shared y may list other labels too
    for lab, flag in zip(labels, flags.to_numpy(), strict=True):
        if flag and lab in ticks:
            ticks[lab].set_color("#b30000")
    ax.set_ylim(-0.6, n - 0.4)
    ax.axvline(0, color="0.6", lw=0.8, zorder=0)
    ax.set_xlabel("expected squared error per gene (log1p pseudobulk)")
    title = "error decomposition"
    if flags.any():
        title += "  (* confounded: only in batches without controls)"
    ax.set_title(title, fontsize="medium", loc="left")
    handles, hl = ax.get_legend_handles_labels()
    ax.legend(handles, hl, loc="lower right", fontsize="small", frameon=True, framealpha=0.9, edgecolor="none")
    ax.grid(axis="x", color="0.93", zorder=0)
    ax.set_axisbelow(True)
    _strip(ax)


def _check_design_table(table: pd.DataFrame, what: str) -> None:
    """Refuse a table that is not cells per batch row (rows) and condition (columns, the control first)."""
    layout = (
        "rows batches, columns the control label followed by one column per perturbation, values cell counts "
        "(as BatchDesign.table from scmech.tl.recommend_batches)"
    )
    if not isinstance(table, pd.DataFrame):
        msg = f"{what} must be a pandas DataFrame ({layout}), got {type(table).__name__}."
        raise TypeError(msg)
    n_rows, n_cols = table.shape
    if n_rows == 0 or n_cols == 0:
        msg = f"{what} is empty ({n_rows} rows x {n_cols} columns); it needs {layout}."
        raise ValueError(msg)
    if n_cols < 2:
        msg = (
            f"{what} has the single column {[str(c) for c in table.columns]}; it lacks the perturbation columns: "
            f"it needs {layout}."
        )
        raise ValueError(msg)
    non_numeric = [str(c) for c, dt in table.dtypes.items() if not pd.api.types.is_numeric_dtype(dt)]
    non_numeric += [str(c) for c, dt in table.dtypes.items() if pd.api.types.is_bool_dtype(dt)]
    if non_numeric:
        msg = f"{what} has non-numeric columns {non_numeric[:5]}; its values must be cell counts ({layout})."
        raise TypeError(msg)
    mat = table.to_numpy(dtype=float)
    bad = ~np.isfinite(mat) | (mat < 0) | (mat != np.round(mat))
    if bad.any():
        i, j = np.argwhere(bad)[0]
        msg = (
            f"{what} holds {int(bad.sum())} value(s) that are not cell counts (whole numbers >= 0), e.g. "
            f"{float(mat[i, j])!r} in row {table.index[i]!r}, column {table.columns[j]!r}; fill empty cells with 0."
        )
        raise ValueError(msg)


@fill_doc
def design_table(
    design: BatchDesign | pd.DataFrame,
    *,
    naive: bool = False,
    annotate: bool | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Axes | None:
    """Heat map of the cells per batch (rows of the design) and condition, with the counts written in.

    Conditions run down the rows (controls first), batches (or batch x time point / medium) across the
    columns; empty cells are white.

    Parameters
    ----------
    design
        A :class:`~scmech.tl._design.BatchDesign` or its ``table``: cell counts with rows the batches (or a
        MultiIndex batch x time point / medium) and columns the control label followed by the perturbations.
    naive
        Show the design's naive reference table instead.
    annotate
        Write the counts into the cells; automatically when the table is small enough to read.
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
        When the table is empty, lacks the control or perturbation columns (fewer than two columns), or holds
        values that are not cell counts.

    Examples
    --------
    >>> design = scmech.tl.recommend_batches(12, n_batches=4, cells_per_batch=3000)
    >>> scmech.pl.design_table(design)
    """
    import matplotlib as mpl

    if isinstance(design, pd.DataFrame):
        if naive:
            msg = "naive=True needs a BatchDesign (a plain table has no naive reference)."
            raise ValueError(msg)
        table = design
        title = "cells per batch"
        what = "The design table"
    elif hasattr(design, "table"):
        table = design.naive_table if naive else design.table
        if table is None:
            msg = "naive=True, but this BatchDesign has no naive_table; pass naive=False."
            raise ValueError(msg)
        title = "naive design: one batch per perturbation" if naive else "recommended design"
        what = "design.naive_table" if naive else "design.table"
    else:
        msg = f"Pass a BatchDesign or its table, got {type(design).__name__}."
        raise TypeError(msg)
    _check_design_table(table, what)
    mat = table.to_numpy(dtype=float).T  # conditions x batch rows
    conds = [str(c) for c in table.columns]
    if isinstance(table.index, pd.MultiIndex):
        names = list(table.index.names)
        cols = [
            "\n".join(f"{'t=' if nm == 'time' else ''}{v}" for nm, v in zip(names, row, strict=True))
            for row in table.index
        ]
        load = table.groupby(level=0, sort=False).sum().to_numpy().sum(axis=1)
    else:
        cols = [str(v) for v in table.index]
        load = table.to_numpy().sum(axis=1)
    n_r, n_c = mat.shape
    fig, ax = get_ax(ax, (min(1.6 + 0.75 * n_c, 16), min(max(2.6, 0.9 + 0.28 * n_r), 30)))
    cmap = mpl.colormaps["Blues"].with_extremes(under="white")
    vmax = max(float(np.nanmax(mat)), 1.0)
    im = ax.imshow(mat, aspect="auto", cmap=cmap, vmin=0.5, vmax=vmax, interpolation="nearest")
    if annotate is None:
        annotate = n_r * n_c <= 800
    if annotate:
        size = 7 if n_r <= 40 else 5.5
        for i in range(n_r):
            for j in range(n_c):
                v = mat[i, j]
                colour = "white" if v > 0.6 * vmax else "0.15"
                ax.text(j, i, f"{int(v):,}" if v else "·", ha="center", va="center", fontsize=size, color=colour)
    rotate = max(len(line) for c in cols for line in c.split("\n")) > 9 and n_c > 4
    ax.set_xticks(np.arange(n_c), cols, rotation=30 if rotate else 0, ha="right" if rotate else "center")
    ax.set_yticks(np.arange(n_r), conds, fontsize=8 if n_r <= 40 else 6)
    ax.set_xticks(np.arange(n_c + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(n_r + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", lw=0.8)
    ax.tick_params(which="minor", length=0)
    ax.axhline(0.5, color="0.3", lw=1.0)  # controls | perturbations
    rng = f"{int(load.min()):,}" if load.min() == load.max() else f"{int(load.min()):,}–{int(load.max()):,}"
    ax.set_title(f"{title}\n(cells per batch: {rng})", fontsize="medium")
    for side in ("top", "right", "left", "bottom"):
        ax.spines[side].set_visible(False)
    cb = fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02, shrink=0.6)
    cb.set_label("cells")
    return finish(ax, name="design_table" + ("_naive" if naive else ""), show=show, save=save)


@fill_doc
def power_curve(
    power_df: pd.DataFrame,
    *,
    y: Literal["mde", "expected_error"] = "mde",
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Axes | None:
    """Minimal detectable effect against cells, or the sequencing-budget curve, from :func:`scmech.tl.power`.

    For a table with ``n_cells`` and ``mde`` (cells mode): the MDE against the cells per perturbation on
    log-log axes (with per-gene rows: the median and the 10–90 % band over genes). For a budget curve
    (``reads_per_cell``): the MDE (or expected error) against reads per cell, the number of cells the budget
    buys on the top axis, and the optimum marked.

    Parameters
    ----------
    power_df
        Output of ``scmech.tl.power``.
    y
        Quantity on the vertical axis.
    ax
        %(ax)s
    show
        %(show)s
    save
        %(save)s

    Returns
    -------
    The axes, unless ``show=True``.

    Examples
    --------
    >>> curve = scmech.tl.power(var, budget_reads=2e7, cell_cost_reads=200, n_perturbations=25)
    >>> scmech.pl.power_curve(curve)
    """
    _check_power_df(power_df, y)
    ylabel = "minimal detectable effect (log1p pseudobulk)" if y == "mde" else "expected squared error of an effect"
    fig, ax = get_ax(ax, (5.4, 4.0))
    if "reads_per_cell" in power_df.columns:
        _plot_budget_curve(ax, power_df, y)
    elif "n_cells" in power_df.columns:
        ylabel = _plot_cells_curve(ax, power_df, y, ylabel)
    else:
        msg = "power_df has neither 'n_cells' nor 'reads_per_cell'; pass the output of scmech.tl.power."
        raise KeyError(msg)
    _finish_power_axes(ax, ylabel)
    return finish(ax, name="power_curve", show=show, save=save)


def _check_power_df(power_df: pd.DataFrame, y: str) -> None:
    """Refuse a ``power_df`` that is not a DataFrame or lacks the column ``y``.

    Parameters
    ----------
    power_df
        Output of ``scmech.tl.power``.
    y
        Quantity on the vertical axis.

    Raises
    ------
    TypeError
        When ``power_df`` is not a DataFrame.
    KeyError
        When ``y`` is not a column of ``power_df``.
    """
    if not isinstance(power_df, pd.DataFrame):
        msg = f"power_df must be the DataFrame of scmech.tl.power, got {type(power_df).__name__}."
        raise TypeError(msg)
    if y not in power_df.columns:
        msg = f"Column {y!r} is not in power_df (columns: {list(power_df.columns)})."
        raise KeyError(msg)


def _plot_budget_curve(ax: Axes, power_df: pd.DataFrame, y: str) -> None:
    """Draw a sequencing-budget curve: ``y`` against reads per cell, the optimum and the cells on the top axis.

    Parameters
    ----------
    ax
        Axes to draw into.
    power_df
        Output of ``scmech.tl.power`` with ``reads_per_cell`` (its ``attrs`` may hold the ``optimum`` and the
        ``model``).
    y
        Quantity on the vertical axis.
    """
    df = power_df.sort_values("reads_per_cell")
    ax.plot(df["reads_per_cell"], df[y], color="C0", lw=1.8, label="fixed budget")
    opt = power_df.attrs.get("optimum")
    model = power_df.attrs.get("model", {})
    if opt:
        _mark_budget_optimum(ax, df, opt, y)
    if "pilot_depth" in model:
        ax.axvline(model["pilot_depth"], color="0.6", ls=":", lw=1, label="pilot depth")
    ax.set_xscale("log")
    ax.set_yscale("log")
    vals = df[y].to_numpy(dtype=float)
    _nice_log_ticks(ax.yaxis, float(np.nanmin(vals)), float(np.nanmax(vals)))
    ax.set_xlabel("reads per cell")
    budget, cost = model.get("budget_reads"), model.get("cell_cost_reads", 0.0)
    if budget:
        _add_cells_axis(ax, df, budget, cost)
    ax.set_title(
        f"budget {budget:,.0f} reads, cell cost {cost:,.0f} reads" if budget else "sequencing budget",
        fontsize="medium",
    )


def _mark_budget_optimum(ax: Axes, df: pd.DataFrame, opt: dict, y: str) -> None:
    """Mark the optimum of a budget curve with a star and write its reads per cell and cells above it.

    Parameters
    ----------
    ax
        Axes of the curve.
    df
        The budget curve, sorted by ``reads_per_cell``.
    opt
        The optimum (``power_df.attrs["optimum"]``): ``reads_per_cell``, ``n_cells`` and ``expected_error``.
    y
        Quantity on the vertical axis; other than ``expected_error`` it is interpolated at the optimum.
    """
    vy = (
        opt["expected_error"]
        if y == "expected_error"
        else float(np.interp(np.log(opt["reads_per_cell"]), np.log(df["reads_per_cell"]), df[y]))
    )
    ax.plot(opt["reads_per_cell"], vy, marker="*", ms=13, color="C3", zorder=4, ls="none", label="optimum")
    ax.annotate(
        f"{opt['reads_per_cell']:,.0f} reads/cell\n{opt['n_cells']:,.0f} cells",
        (opt["reads_per_cell"], vy),
        xytext=(0, 18),
        textcoords="offset points",
        ha="center",
        fontsize="small",
    )


def _add_cells_axis(ax: Axes, df: pd.DataFrame, budget: float, cost: float) -> None:
    """Add a top axis with the number of cells the budget buys at each depth.

    Parameters
    ----------
    ax
        Axes of the budget curve (reads per cell on the x axis).
    df
        The budget curve, sorted by ``reads_per_cell``.
    budget
        Sequencing budget in reads.
    cost
        Cost of a cell in reads.
    """
    sec = ax.secondary_xaxis(
        "top",
        functions=(
            lambda r: budget / (np.maximum(r, 1e-12) + cost),
            lambda n: budget / np.maximum(n, 1e-12) - cost,
        ),
    )
    n_lo = budget / (float(df["reads_per_cell"].max()) + cost)
    n_hi = budget / (float(df["reads_per_cell"].min()) + cost)
    _nice_log_ticks(sec.xaxis, n_lo, n_hi, position=lambda n: budget / n - cost if budget / n > cost else 1e-9)
    sec.set_xlabel("cells the budget buys")


def _plot_cells_curve(ax: Axes, df: pd.DataFrame, y: str, ylabel: str) -> str:
    """Draw ``y`` (or the power per effect) against the cells per perturbation.

    Parameters
    ----------
    ax
        Axes to draw into.
    df
        Output of ``scmech.tl.power`` with ``n_cells``.
    y
        Quantity on the vertical axis.
    ylabel
        Label of the vertical axis for ``y``.

    Returns
    -------
    The label of the vertical axis: ``"power"`` for the power curves of a table with ``effect`` and
    ``power``, else ``ylabel``.
    """
    title = "minimal detectable effect"
    if "effect" in df.columns and "power" in df.columns and y == "mde":
        _plot_power_by_effect(ax, df)
        ylabel = "power"
        title = "power of a two-sided z test"
    else:
        _plot_value_by_cells(ax, df, y)
    ncell = df["n_cells"].to_numpy(dtype=float)
    _nice_log_ticks(ax.xaxis, float(ncell.min()), float(ncell.max()))
    ax.set_xlabel("cells per perturbation")
    ax.set_title(title, fontsize="medium")
    return ylabel


def _plot_power_by_effect(ax: Axes, df: pd.DataFrame) -> None:
    """Draw the median power against the cells per perturbation, one line per effect, and the 80 % line.

    Parameters
    ----------
    ax
        Axes to draw into.
    df
        Output of ``scmech.tl.power`` with ``n_cells``, ``effect`` and ``power``.
    """
    for k, (e, sub) in enumerate(df.groupby("effect", sort=True)):
        g = sub.groupby("n_cells")["power"].median()
        ax.plot(g.index, g.to_numpy(), marker="o", ms=3, color=f"C{k}", label=f"effect {e:g}")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.axhline(0.8, color="0.6", ls=":", lw=1)


def _plot_value_by_cells(ax: Axes, df: pd.DataFrame, y: str) -> None:
    """Draw the median of ``y`` against the cells per perturbation, with the 10–90 % band over genes if per gene.

    Parameters
    ----------
    ax
        Axes to draw into.
    df
        Output of ``scmech.tl.power`` with ``n_cells`` (and ``gene`` when per gene).
    y
        Quantity on the vertical axis.
    """
    g = df.groupby("n_cells")[y]
    med = g.median()
    ax.plot(
        med.index,
        med.to_numpy(),
        marker="o",
        ms=3,
        color="C0",
        lw=1.8,
        label="median gene" if "gene" in df.columns else y,
    )
    if "gene" in df.columns:
        ax.fill_between(
            med.index,
            g.quantile(0.1).to_numpy(),
            g.quantile(0.9).to_numpy(),
            color="C0",
            alpha=0.2,
            lw=0,
            label="10–90 % of genes",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    top = g.quantile(0.9) if "gene" in df.columns else med
    bottom = g.quantile(0.1) if "gene" in df.columns else med
    _nice_log_ticks(ax.yaxis, float(bottom.min()), float(top.max()))


def _finish_power_axes(ax: Axes, ylabel: str) -> None:
    """Label the vertical axis and add the grid and the legend of a power curve.

    Parameters
    ----------
    ax
        Axes of the curve.
    ylabel
        Label of the vertical axis.
    """
    ax.set_ylabel(ylabel)
    ax.grid(which="major", color="0.92")
    ax.legend(fontsize="small", frameon=False)
    _strip(ax)
