"""Summary figure of the assumption checks of :func:`scmech.tl.check_assumptions`."""

from __future__ import annotations

import re
import textwrap
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from scmech._constants import SCMECH_ADATA_KEYS
from scmech._docs import fill_doc
from scmech.tl._assumptions import ASSUMPTIONS, CANNOT, HOLDS, VIOLATED, _get_table

from ._utils import check_ax, finish

if TYPE_CHECKING:
    from pathlib import Path

    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.gridspec import GridSpecBase

__all__ = ["assumptions"]

#: colour of each verdict
VERDICT_COLOURS = {VIOLATED: "#c0392b", HOLDS: "#2471a3", CANNOT: "0.55"}
#: short panel titles
_TITLES = {
    "baseline_steady_state": "Baseline steady state (A1): do controls drift?",
    "media_response": "Media response: do controls differ between media?",
    "unique_attractor": "Unique attractor (A2): share of perturbed cells that look unperturbed",
    "instantaneous_perturbation": "Instantaneous perturbation: share of the effect gained over the last interval",
    "additivity": "Additivity: |combination - sum of singles| / noise",
    "model_steady_state": "Model: steady-state residual, controls / perturbed cells",
}
#: reference value drawn in each panel and its label
_REFERENCE = {
    "baseline_steady_state": (1.0, "noise only"),
    "media_response": (1.0, "noise only"),
    "unique_attractor": (0.05, "tolerance (violated also needs ΔBIC > 10)"),
    "instantaneous_perturbation": (0.1, "tolerance"),
    "additivity": (1.0, "noise only"),
    "model_steady_state": (1.0, "equal"),
}


def _kind(verdict: str) -> str:
    if verdict in (HOLDS, VIOLATED):
        return verdict
    return CANNOT


def _row_note(assumption: str, row: pd.Series) -> str:
    """Text at the right of a tested row: the mixture's ΔBIC (unique attractor) or the p-value."""
    if assumption == "unique_attractor":
        found = re.search(r"ΔBIC = (-?[\d.]+|nan)", str(row.get("detail", "")))
        return f"ΔBIC {found.group(1)}" if found else ""
    p = float(row.get("p_value", np.nan))
    if not np.isfinite(p):
        return ""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _panel_rows(sub: pd.DataFrame) -> pd.DataFrame:
    """Order the rows of one panel: one summary row for the untested subjects, then the tested ones by effect."""
    kind = sub["verdict"].astype(str).map(_kind)
    tested = sub[kind != CANNOT].copy()
    tested["kind"] = kind[kind != CANNOT]
    tested = tested.sort_values("effect", ascending=True, kind="stable")
    untested = sub[kind == CANNOT]
    rows = []
    if not untested.empty:
        reasons = untested["verdict"].str.replace(f"{CANNOT}: ", "", regex=False)
        reasons = reasons.str.replace(
            r"the perturbation moves cells by only -?[\d.]+ control SDs along its own direction; ",
            "cells move < 1 control SD along the perturbation's direction (too weak to split); ",
            regex=True,
        )
        reasons = reasons.str.replace(r"\(z = [-\d.]+ < 3\)", "", regex=True)
        reasons = reasons.str.replace("(too weak to split); escapers and responders overlap", "(too weak to split)")
        reasons = reasons.str.strip()
        top = reasons.value_counts()
        why = top.index[0] + (f" (and {len(top) - 1} other reasons)" if len(top) > 1 else "")
        label = str(untested["subject"].iloc[0]) if len(untested) == 1 else f"{len(untested)} subjects"
        rows.append(
            pd.DataFrame(
                {
                    "subject": [label],
                    "effect": [np.nan],
                    "ci_low": [np.nan],
                    "ci_high": [np.nan],
                    "kind": [CANNOT],
                    "why": [why],
                }
            )
        )
    rows.append(tested)
    return pd.concat(rows, ignore_index=True)


@fill_doc
def assumptions(
    result_or_adata: pd.DataFrame | AnnData,
    *,
    key: str = SCMECH_ADATA_KEYS.ASSUMPTIONS_UNS,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
    return_fig: bool = False,
) -> list[Axes] | Figure | None:
    r"""Summary of :func:`scmech.tl.check_assumptions`: one panel per assumption, one row per subject.

    Each tested subject (controls, a medium, a perturbation, a combination) is a point at its effect size with
    its interval, coloured by verdict (red: violated, blue: holds); a dashed line marks the value expected when
    the assumption holds (F = 1 for noise only, the tolerance of the unperturbed fraction or of the late
    growth, interaction = noise). The p-value is written at the right of each row; the unique-attractor panel
    shows the mixture's :math:`\Delta\mathrm{BIC}` instead, since a fraction above the tolerance counts as a
    violation only when the mixture also wins by :math:`\Delta\mathrm{BIC} > 10`. Subjects that cannot be
    tested are collapsed into one grey row per panel with the most common reason.

    Parameters
    ----------
    result_or_adata
        The table returned by ``check_assumptions``, or an AnnData holding it in ``uns["scmech"][key]``.
    key
        ``uns["scmech"]`` key (AnnData input).
    ax
        Axes whose area the panels fill (it is removed and replaced by one axes per panel); a new figure when
        ``None``.
    show
        %(show)s
    save
        Path to save the figure to (the suffix sets the format), or ``True`` for
        ``scanpy.settings.figdir / "scmech_assumptions.png"``.
    return_fig
        Return the figure instead of the axes.

    Returns
    -------
    One axes per panel (in the order of :data:`scmech.tl.ASSUMPTIONS`), or the figure with ``return_fig=True``;
    ``None`` when ``show=True``.

    Examples
    --------
    >>> table = scmech.tl.check_assumptions(adata, batch_key="bio_rep")
    >>> scmech.pl.assumptions(table)
    """
    check_ax(ax)
    table = _get_table(result_or_adata, key)
    panels = _assumption_panels(table)
    fig, grid = _panel_grid(ax, panels)
    axes = [_draw_panel(fig.add_subplot(grid[i]), a, rows, table) for i, (a, rows) in enumerate(panels)]
    _verdict_legend(fig, axes, in_given_ax=ax is not None)
    out = finish(axes[0], name="assumptions", show=show, save=save)
    if out is None:
        return None
    return fig if return_fig else axes


def _assumption_panels(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """List the panels to draw: each assumption of the table (those of :data:`ASSUMPTIONS` first), its rows.

    Parameters
    ----------
    table
        The table of ``check_assumptions``.

    Returns
    -------
    ``(assumption, rows)`` per panel, the rows ordered by :func:`_panel_rows`.

    Raises
    ------
    ValueError
        When the table is empty.
    """
    present = [a for a in ASSUMPTIONS if (table["assumption"] == a).any()]
    present += [a for a in pd.unique(table["assumption"]) if a not in ASSUMPTIONS]
    if not present:
        msg = "The assumption table is empty; nothing to plot."
        raise ValueError(msg)
    return [(a, _panel_rows(table[table["assumption"] == a])) for a in present]


def _panel_grid(ax: Axes | None, panels: list[tuple[str, pd.DataFrame]]) -> tuple[Figure, GridSpecBase]:
    """Make a grid of one row per panel, as tall as its rows: in a new figure, or in place of ``ax`` (removed).

    Parameters
    ----------
    ax
        Axes whose area the panels fill, or ``None`` for a new figure.
    panels
        ``(assumption, rows)`` per panel.

    Returns
    -------
    The figure and the grid of the panels.
    """
    import matplotlib.pyplot as plt

    heights = [
        max(len(p), 1) + (1.6 if np.isfinite(p["effect"].to_numpy(dtype=float)).any() else 0.9) for _, p in panels
    ]
    if ax is None:
        fig = plt.figure(figsize=(8.0, 0.27 * sum(heights) + 0.9), layout="constrained")
        grid = fig.add_gridspec(len(panels), 1, height_ratios=heights)
    else:
        fig = ax.figure
        spec = ax.get_subplotspec()
        if spec is None:  # axes placed by position (fig.add_axes): fill its rectangle
            box = ax.get_position()
            grid = fig.add_gridspec(
                len(panels), 1, height_ratios=heights, hspace=0.6, left=box.x0, right=box.x1, bottom=box.y0, top=box.y1
            )
        else:
            grid = spec.subgridspec(len(panels), 1, height_ratios=heights, hspace=0.6)
        ax.remove()
    return fig, grid


def _draw_panel(pax: Axes, assumption: str, rows: pd.DataFrame, table: pd.DataFrame) -> Axes:
    """Draw the panel of one assumption: its tested rows, its untested row and the reference line.

    Parameters
    ----------
    pax
        Axes of the panel.
    assumption
        The assumption (a key of :data:`_TITLES`, or another name).
    rows
        The rows of the panel, as ordered by :func:`_panel_rows`.
    table
        The table of ``check_assumptions`` (for the name of the statistic).

    Returns
    -------
    ``pax``.
    """
    n = len(rows)
    eff = rows["effect"].to_numpy(dtype=float)
    lo = rows["ci_low"].to_numpy(dtype=float)
    hi = rows["ci_high"].to_numpy(dtype=float)
    ref, ref_label = _REFERENCE.get(assumption, (np.nan, ""))
    tested = bool(np.isfinite(eff).any())
    if not tested:
        ref = np.nan
    x0, x1 = _panel_xlim(eff, lo, hi, ref)
    _draw_tested_rows(pax, assumption, rows, eff, lo, hi)
    _draw_untested_rows(pax, rows, x0)
    if np.isfinite(ref):
        pax.axvline(ref, color="0.45", ls="--", lw=0.9, zorder=1)
        pax.text(ref, n - 0.45, f" {ref_label}", fontsize=7, color="0.4", va="bottom", ha="left")
    _style_panel(pax, assumption, rows, table, tested, (x0, x1))
    return pax


def _panel_xlim(eff: np.ndarray, lo: np.ndarray, hi: np.ndarray, ref: float) -> tuple[float, float]:
    """Get the x range of a panel: its effects, intervals and reference value, padded by 8 %.

    Parameters
    ----------
    eff
        Effect of each row (NaN for the untested row).
    lo
        Lower end of each row's interval (may be NaN).
    hi
        Upper end of each row's interval (may be NaN).
    ref
        Reference value of the panel (NaN for none).

    Returns
    -------
    The lower and upper x limits; ``(-0.08, 1.08)`` when there is nothing to show.
    """
    finite = np.isfinite(eff)
    span = np.concatenate([eff[finite], lo[np.isfinite(lo)], hi[np.isfinite(hi)], [ref] if np.isfinite(ref) else []])
    x0, x1 = (float(span.min()), float(span.max())) if span.size else (0.0, 1.0)
    pad = 0.08 * (x1 - x0) if x1 > x0 else 0.5
    return x0 - pad, x1 + pad


def _draw_tested_rows(
    pax: Axes, assumption: str, rows: pd.DataFrame, eff: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> None:
    """Draw each tested row as a point with its interval, coloured by verdict, and its note at the right.

    Parameters
    ----------
    pax
        Axes of the panel.
    assumption
        The assumption of the panel (sets the note, see :func:`_row_note`).
    rows
        The rows of the panel.
    eff
        Effect of each row (NaN for the untested row, which is skipped).
    lo
        Lower end of each row's interval (may be NaN).
    hi
        Upper end of each row's interval (may be NaN).
    """
    for j in np.flatnonzero(np.isfinite(eff)):
        colour = VERDICT_COLOURS[rows["kind"].iloc[j]]
        err = None
        if np.isfinite(lo[j]) and np.isfinite(hi[j]):
            err = [[max(eff[j] - lo[j], 0.0)], [max(hi[j] - eff[j], 0.0)]]
        pax.errorbar(eff[j], j, xerr=err, fmt="o", color=colour, ms=5, lw=1.4, capsize=2.5, zorder=3)
        note = _row_note(assumption, rows.iloc[j])
        if note:
            pax.text(
                1.01, j, note, transform=pax.get_yaxis_transform(), va="center", ha="left", fontsize=7, color="0.3"
            )


def _draw_untested_rows(pax: Axes, rows: pd.DataFrame, x0: float) -> None:
    """Write why the untested row cannot be tested (or that an effect is not finite), in grey italics.

    Parameters
    ----------
    pax
        Axes of the panel.
    rows
        The rows of the panel; those with a non-finite effect are written out (untested ones with their ``why``).
    x0
        Left x limit of the panel.
    """
    for j in np.flatnonzero(~np.isfinite(rows["effect"].to_numpy(dtype=float))):
        if rows["kind"].iloc[j] == CANNOT:
            why = textwrap.shorten(f"cannot be tested: {rows['why'].iloc[j]}", width=110, placeholder=" ...")
        else:  # a tested row without a finite effect (e.g. an edited table): say so instead of drawing nothing
            why = f"{rows['kind'].iloc[j]}: effect {rows['effect'].iloc[j]}, not drawn"
        pax.text(x0, j, "  " + why, va="center", ha="left", fontsize=7.5, color="0.4", style="italic")


def _style_panel(
    pax: Axes, assumption: str, rows: pd.DataFrame, table: pd.DataFrame, tested: bool, xlim: tuple[float, float]
) -> None:
    """Label the rows (untested in grey), set the limits and the title, and the x axis of a tested panel.

    Parameters
    ----------
    pax
        Axes of the panel.
    assumption
        The assumption of the panel.
    rows
        The rows of the panel.
    table
        The table of ``check_assumptions`` (its ``statistic`` column names the x axis).
    tested
        Whether any row of the panel was tested; an untested panel has no x axis.
    xlim
        The x limits of the panel.
    """
    n = len(rows)
    labels = [textwrap.shorten(str(sub), width=28, placeholder="...") for sub in rows["subject"]]
    pax.set_yticks(np.arange(n), labels, fontsize=8)
    for tick, kind in zip(pax.get_yticklabels(), rows["kind"], strict=True):
        tick.set_color("0.45" if kind == CANNOT else "0.1")
    pax.set_ylim(-0.7, n - 0.3 + (0.5 if tested else 0.0))
    pax.set_xlim(*xlim)
    pax.set_title(_TITLES.get(assumption, str(assumption)), fontsize=9, loc="left", pad=10 if tested else 3)
    for side in ("top", "right"):
        pax.spines[side].set_visible(False)
    if tested:
        is_a = table["assumption"] == assumption
        stat = table.loc[is_a, "statistic"].iloc[0] if "statistic" in table.columns else ""
        pax.set_xlabel(str(stat or "effect"), fontsize=8, labelpad=1)
        pax.tick_params(axis="x", labelsize=8)
        pax.grid(axis="x", color="0.93", zorder=0)
        pax.set_axisbelow(True)
    else:
        pax.set_xticks([])
        pax.spines["bottom"].set_visible(False)


def _verdict_legend(fig: Figure, axes: list[Axes], *, in_given_ax: bool) -> None:
    """Add the legend of the verdict colours: above the figure, or above the first panel in a given axes.

    Parameters
    ----------
    fig
        The figure of the panels.
    axes
        One axes per panel.
    in_given_ax
        Whether the panels fill a given axes (the legend then goes above the first panel, not the figure).
    """
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], marker="o", ls="", color=VERDICT_COLOURS[VIOLATED], label="violated"),
        Line2D([], [], marker="o", ls="", color=VERDICT_COLOURS[HOLDS], label="holds"),
        Line2D([], [], marker="s", ls="", color=VERDICT_COLOURS[CANNOT], label="cannot be tested (grey text)"),
    ]
    if not in_given_ax:
        fig.legend(handles=handles, loc="outside upper right", ncol=3, fontsize=7.5, frameon=False)
    else:
        axes[0].legend(
            handles=handles, loc="lower right", bbox_to_anchor=(1.0, 1.02), ncol=3, fontsize=7.5, frameon=False
        )
