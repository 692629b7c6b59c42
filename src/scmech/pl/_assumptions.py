"""Summary figure of the assumption checks of :func:`scmech.tl.check_assumptions`."""

from __future__ import annotations

import re
import textwrap
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from scmech._docs import fill_doc
from scmech.tl._assumptions import ASSUMPTIONS, CANNOT, HOLDS, VIOLATED, _get_table

from ._utils import check_ax, finish

if TYPE_CHECKING:
    from pathlib import Path

    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

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
    key: str = "assumptions",
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
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    check_ax(ax)
    table = _get_table(result_or_adata, key)
    present = [a for a in ASSUMPTIONS if (table["assumption"] == a).any()]
    present += [a for a in pd.unique(table["assumption"]) if a not in ASSUMPTIONS]
    if not present:
        msg = "The assumption table is empty; nothing to plot."
        raise ValueError(msg)
    panels = [(a, _panel_rows(table[table["assumption"] == a])) for a in present]
    heights = [
        max(len(p), 1) + (1.6 if np.isfinite(p["effect"].to_numpy(dtype=float)).any() else 0.9) for _, p in panels
    ]
    if ax is None:
        fig = plt.figure(figsize=(8.0, 0.27 * sum(heights) + 0.9), layout="constrained")
        grid = fig.add_gridspec(len(panels), 1, height_ratios=heights)
    else:
        fig = ax.figure
        grid = ax.get_subplotspec().subgridspec(len(panels), 1, height_ratios=heights, hspace=0.6)
        ax.remove()
    axes = []
    for i, (a, rows) in enumerate(panels):
        pax = fig.add_subplot(grid[i])
        axes.append(pax)
        n = len(rows)
        y = np.arange(n)
        eff = rows["effect"].to_numpy(dtype=float)
        lo = rows["ci_low"].to_numpy(dtype=float)
        hi = rows["ci_high"].to_numpy(dtype=float)
        finite = np.isfinite(eff)
        ref, ref_label = _REFERENCE.get(a, (np.nan, ""))
        tested = bool(finite.any())
        if not tested:
            ref = np.nan
        span = np.concatenate(
            [eff[finite], lo[np.isfinite(lo)], hi[np.isfinite(hi)], [ref] if np.isfinite(ref) else []]
        )
        x0, x1 = (float(span.min()), float(span.max())) if span.size else (0.0, 1.0)
        pad = 0.08 * (x1 - x0) if x1 > x0 else 0.5
        x0, x1 = x0 - pad, x1 + pad
        for j in np.flatnonzero(finite):
            colour = VERDICT_COLOURS[rows["kind"].iloc[j]]
            err = None
            if np.isfinite(lo[j]) and np.isfinite(hi[j]):
                err = [[max(eff[j] - lo[j], 0.0)], [max(hi[j] - eff[j], 0.0)]]
            pax.errorbar(eff[j], y[j], xerr=err, fmt="o", color=colour, ms=5, lw=1.4, capsize=2.5, zorder=3)
            note = _row_note(a, rows.iloc[j])
            if note:
                pax.text(
                    1.01, y[j], note, transform=pax.get_yaxis_transform(), va="center", ha="left", fontsize=7,
                    color="0.3",
                )  # fmt: skip
        for j in np.flatnonzero(~finite):
            why = textwrap.shorten(f"cannot be tested: {rows['why'].iloc[j]}", width=110, placeholder=" ...")
            pax.text(x0, y[j], "  " + why, va="center", ha="left", fontsize=7.5, color="0.4", style="italic")
        if np.isfinite(ref):
            pax.axvline(ref, color="0.45", ls="--", lw=0.9, zorder=1)
            pax.text(ref, n - 0.45, f" {ref_label}", fontsize=7, color="0.4", va="bottom", ha="left")
        labels = [textwrap.shorten(str(sub), width=28, placeholder="...") for sub in rows["subject"]]
        pax.set_yticks(y, labels, fontsize=8)
        for tick, kind in zip(pax.get_yticklabels(), rows["kind"], strict=True):
            tick.set_color("0.45" if kind == CANNOT else "0.1")
        pax.set_ylim(-0.7, n - 0.3 + (0.5 if tested else 0.0))
        pax.set_xlim(x0, x1)
        pax.set_title(_TITLES.get(a, str(a)), fontsize=9, loc="left", pad=10 if tested else 3)
        for side in ("top", "right"):
            pax.spines[side].set_visible(False)
        if tested:
            stat = table.loc[table["assumption"] == a, "statistic"].iloc[0] if "statistic" in table.columns else ""
            pax.set_xlabel(str(stat or "effect"), fontsize=8, labelpad=1)
            pax.tick_params(axis="x", labelsize=8)
            pax.grid(axis="x", color="0.93", zorder=0)
            pax.set_axisbelow(True)
        else:
            pax.set_xticks([])
            pax.spines["bottom"].set_visible(False)
    handles = [
        Line2D([], [], marker="o", ls="", color=VERDICT_COLOURS[VIOLATED], label="violated"),
        Line2D([], [], marker="o", ls="", color=VERDICT_COLOURS[HOLDS], label="holds"),
        Line2D([], [], marker="s", ls="", color=VERDICT_COLOURS[CANNOT], label="cannot be tested (grey text)"),
    ]
    if ax is None:
        fig.legend(handles=handles, loc="outside upper right", ncol=3, fontsize=7.5, frameon=False)
    else:
        axes[0].legend(
            handles=handles, loc="lower right", bbox_to_anchor=(1.0, 1.02), ncol=3, fontsize=7.5, frameon=False
        )
    out = finish(axes[0], name="assumptions", show=show, save=save)
    if out is None:
        return None
    return fig if return_fig else axes
