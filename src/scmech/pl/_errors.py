"""Error-component plots: the stacked error components per perturbation."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd

from scmech._constants import SCMECH_ADATA_KEYS
from scmech._docs import fill_doc

from ._utils import _strip, finish, get_ax

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from anndata import AnnData
    from matplotlib.axes import Axes

__all__ = ["error_components"]


#: colours and labels of the error components, in stacking order
_COMPONENT_STYLE = {
    "noise_floor": ("#9ecae1", "noise floor"),
    "confounding": ("#e6550d", "confounding"),
    "batch": ("#fdae6b", "batch"),
    "model": ("#756bb1", "model"),
}


@fill_doc
def error_components(
    result_or_adata: pd.DataFrame | AnnData,
    *,
    conditions: str | Sequence[str] | None = None,
    key: str = SCMECH_ADATA_KEYS.ERRORS_UNS,
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
        Perturbations to show (in this order when ``sort=False``); a single name is one perturbation; all when
        ``None``.
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

    Raises
    ------
    ValueError
        When the table is empty, has no value to draw, or ``conditions`` selects no perturbation.

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
    ValueError
        When the table has no rows.
    """
    if isinstance(result_or_adata, ad.AnnData):
        stored = result_or_adata.uns.get(SCMECH_ADATA_KEYS.UNS, {}).get(key)
        if stored is None:
            msg = f"adata.uns['scmech'] has no {key!r}; run scmech.tl.error_decomposition(adata, key_added={key!r})."
            raise KeyError(msg)
        table = stored["table"]
        what = f"adata.uns['scmech'][{key!r}]['table']"
    elif isinstance(result_or_adata, pd.DataFrame):
        table = result_or_adata
        what = "The error decomposition table"
    else:
        msg = f"Pass the table of error_decomposition or an AnnData holding it, got {type(result_or_adata).__name__}."
        raise TypeError(msg)
    if len(table) == 0:
        msg = (
            f"{what} is empty ({table.shape[0]} rows, {table.shape[1]} columns): nothing to plot. Pass the table "
            "of scmech.tl.error_decomposition (or an AnnData it wrote to), not a filtered copy without rows."
        )
        raise ValueError(msg)
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
    ValueError
        When ``conditions`` selects no perturbation, or no perturbation of the table has a value.
    """
    if conditions is not None:
        given = conditions
        conditions = [str(c) for c in ([conditions] if isinstance(conditions, str) else conditions)]
        if not conditions:
            names = [str(c) for c in pd.unique(table["condition"].dropna())[:2]]
            msg = (
                f"conditions={given!r} selects no perturbation: nothing to plot. Pass conditions=None for all "
                f"perturbations of the decomposition, or name some (e.g. conditions={names!r})."
            )
            raise ValueError(msg)
    wide = table.pivot_table(index="condition", columns="component", values="value", aggfunc="first", sort=False)
    if wide.empty:
        msg = (
            f"The error decomposition has no perturbation with a value ({len(table)} rows, all with a missing "
            "condition or value): nothing to plot. Pass the table of scmech.tl.error_decomposition."
        )
        raise ValueError(msg)
    if conditions is not None:
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
