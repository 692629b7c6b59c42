"""Design plots: batch tables; the error-component and power plots are in ``_errors`` and ``_power``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from scmech._docs import fill_doc

from ._errors import error_components
from ._power import power_curve
from ._utils import finish, get_ax

if TYPE_CHECKING:
    from pathlib import Path

    from matplotlib.axes import Axes

    from scmech.tl._design import BatchDesign

__all__ = ["design_table", "error_components", "power_curve"]


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
