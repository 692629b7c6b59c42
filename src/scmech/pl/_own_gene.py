"""The own-gene calibration of unseen targets, from :meth:`~scmech.model.SemiMechVI.get_own_gene_calibration`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from scmech._docs import fill_doc

from ._utils import finish, get_ax

if TYPE_CHECKING:
    from pathlib import Path

    from matplotlib.axes import Axes

__all__ = ["own_gene_calibration"]

_COLUMNS = ("control_level", "observed_change", "calibrated_change")


@fill_doc
def own_gene_calibration(
    calibration: pd.DataFrame,
    *,
    annotate: bool = True,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Axes | None:
    """Plot each training target's own-gene change against its level in controls, with the calibrated change.

    Every point is a training target whose gene is measured: how far its knock-down moved its own gene
    (log-normalised pseudobulk) against the level the gene would have without it. The line is the change a target
    without training cells gets at each level (a scaled production, or for CRISPRa an activated level), the band
    the centre of the calibration ± its robust spread. Points far from the line are targets whose own gene moved
    beyond (or short of) the typical direct effect: the prediction's uncertainty, not a fit to them.

    Parameters
    ----------
    calibration
        The table of :meth:`~scmech.model.SemiMechVI.get_own_gene_calibration`.
    annotate
        Write each target's name beside its point.
    ax
        %(ax)s
    show
        %(show)s
    save
        %(save)s

    Returns
    -------
    The axes, unless ``show`` is ``True``.

    Raises
    ------
    TypeError
        When ``calibration`` is not a DataFrame.
    ValueError
        When it lacks a column or its ``attrs["curve"]`` (not a table of ``get_own_gene_calibration``), or is
        empty.

    Examples
    --------
    >>> scmech.pl.own_gene_calibration(model.get_own_gene_calibration())
    """
    curve = _checked(calibration)
    fig, ax = get_ax(ax, (5.0, 4.0))
    x = np.asarray(curve["control_level"], dtype=np.float64)
    ax.fill_between(x, curve["low"], curve["high"], color="C0", alpha=0.15, lw=0, label="± spread")
    model = calibration.attrs.get("model", "scale")
    ax.plot(x, curve["change"], color="C0", lw=1.5, label=f"calibrated ({model})")
    ax.axhline(0.0, color="0.6", lw=0.8, ls="--")
    ax.scatter(
        calibration["control_level"],
        calibration["observed_change"],
        s=22,
        color="C3",
        zorder=3,
        label="training targets",
    )
    if annotate:
        for name, row in calibration.iterrows():
            ax.annotate(
                str(name),
                (row["control_level"], row["observed_change"]),
                xytext=(3, 3),
                textcoords="offset points",
                fontsize=7,
            )
    ax.set_xlabel(f"own gene's level without the knock-down ({_scale(calibration.attrs)})")
    ax.set_ylabel("own-gene change")
    ax.set_title(_title(calibration.attrs), fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    return finish(ax, name="own_gene_calibration", show=show, save=save)


def _scale(attrs: dict) -> str:
    """Name the levels' scale for the axis: counts' pseudobulk, or log-normalised input as registered."""
    value = str(attrs.get("value", "log1p(1e4"))
    if value.startswith("log1p(1e4"):  # counts, and tables written before the entry was added
        return "log1p of 10⁴ × share"
    if "no expression layer" in value:
        return "as registered"
    base = float(attrs.get("log_base", np.e))
    return "log1p, as registered" if base == np.e else f"log{base:g}(1 + x), as registered"


def _title(attrs: dict) -> str:
    """Title naming the model and its calibrated centre."""
    spread = attrs.get("spread", float("nan"))
    if attrs.get("model") == "level":
        return f"own gene brought to level {attrs.get('level', float('nan')):.2f} ± {spread:.2f}"
    effect = attrs.get("effect", float("nan"))
    if not attrs.get("scaled", True):  # centred or scaled input: the knock-down shifts the values
        return f"own gene shifted by a = {effect:.2f} ± {spread:.2f}"
    return f"own gene scaled by e^a, a = {effect:.2f} ± {spread:.2f} (factor {np.exp(effect):.2f})"


def _checked(calibration: pd.DataFrame) -> dict:
    """Return the table's curve after checking it is a table of ``get_own_gene_calibration``."""
    if not isinstance(calibration, pd.DataFrame):
        msg = f"calibration must be a pandas DataFrame, got {type(calibration).__name__}."
        raise TypeError(msg)
    missing = [c for c in _COLUMNS if c not in calibration.columns]
    curve = calibration.attrs.get("curve")
    if missing or not isinstance(curve, dict):
        what = f"the column(s) {missing}" if missing else "attrs['curve']"
        msg = (
            f"calibration lacks {what}; pass the table of model.get_own_gene_calibration() (pandas operations "
            "that build a new frame may drop its attrs)."
        )
        raise ValueError(msg)
    if calibration.empty:
        msg = "calibration is empty: nothing to plot."
        raise ValueError(msg)
    return curve
