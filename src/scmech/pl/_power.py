"""Power plots: detectable effect or expected error against the budget, the cells per condition or the effect."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from scmech._docs import fill_doc

from ._utils import _strip, finish, get_ax

if TYPE_CHECKING:
    from pathlib import Path

    from matplotlib.axes import Axes

__all__ = ["power_curve"]


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
    ValueError
        When ``power_df`` has no rows, or no finite value of ``y``.
    KeyError
        When ``y`` is not a column of ``power_df``.
    """
    if not isinstance(power_df, pd.DataFrame):
        msg = f"power_df must be the DataFrame of scmech.tl.power, got {type(power_df).__name__}."
        raise TypeError(msg)
    if power_df.empty:
        msg = (
            f"power_df is empty ({power_df.shape[0]} rows, {power_df.shape[1]} columns): nothing to plot. Pass the "
            "table of scmech.tl.power (e.g. with n_cells=[50, 100, 200]), not a filtered copy without rows."
        )
        raise ValueError(msg)
    if y not in power_df.columns:
        msg = f"Column {y!r} is not in power_df (columns: {list(power_df.columns)})."
        raise KeyError(msg)
    if not np.isfinite(pd.to_numeric(power_df[y], errors="coerce").to_numpy(dtype=float)).any():
        msg = f"power_df[{y!r}] has no finite value: nothing to plot. Pass the table of scmech.tl.power."
        raise ValueError(msg)


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
