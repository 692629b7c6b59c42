"""Experimental design of a Perturb-seq screen: labels → targets, controls, batches, time, media, efficacy.

Everything here works on numpy/pandas/scipy objects and knows no torch. Models register the design
through the fields in :mod:`scmech.data._fields`; tools call :func:`get_design` directly.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from scmech._docs import fill_doc

from ._checks import check_flag
from ._labels import canonical_label, parse_condition
from ._obs_checks import check_float32
from ._perturbation_design import PerturbationDesign, parse_perturbations

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

logger = logging.getLogger(__name__)

__all__ = [
    "ExperimentalDesign",
    "PerturbationDesign",
    "canonical_label",
    "get_design",
    "parse_condition",
    "parse_perturbations",
    "validate_categorical",
    "validate_efficacy",
    "validate_time",
]


def validate_time(values: Sequence[float] | np.ndarray | pd.Series, key: str = "time") -> np.ndarray:
    """Check a time column: numeric, finite and non-negative.

    Parameters
    ----------
    values
        Time per cell (e.g. days after perturbation).
    key
        Name of the ``obs`` column, used in error messages.

    Returns
    -------
    The values as ``float64``.
    """
    if np.ndim(values) == 1 and pd.api.types.is_bool_dtype(pd.Series(values)):
        msg = (
            f"obs[{key!r}] holds True/False values, which would be read as times 0 and 1; register the read-out time "
            "since the perturbation as numbers (e.g. days)."
        )
        raise TypeError(msg)
    arr = _numeric(values, key, "time")
    bad = ~np.isfinite(arr)
    if bad.any():
        msg = f"obs[{key!r}] has {int(bad.sum())} NaN or infinite time values; every cell needs a time (e.g. days)."
        raise ValueError(msg)
    if (arr < 0).any():
        msg = (
            f"obs[{key!r}] has {int((arr < 0).sum())} negative time values (min {arr.min():g}); time counts from the "
            "perturbation (0) onwards. Shift the clock so that the perturbation is at 0."
        )
        raise ValueError(msg)
    return arr


def validate_efficacy(values: Sequence[float] | np.ndarray | pd.Series, key: str = "efficacy") -> np.ndarray:
    """Check a knock-down efficacy column: numeric, finite and in ``[0, 1]``.

    Parameters
    ----------
    values
        Efficacy per cell: the fraction of knock-down (0 = escaper, 1 = full effect).
    key
        Name of the ``obs`` column, used in error messages.

    Returns
    -------
    The values as ``float64``.
    """
    arr = _numeric(values, key, "efficacy")
    bad = ~np.isfinite(arr)
    if bad.any():
        msg = f"obs[{key!r}] has {int(bad.sum())} NaN or infinite efficacy values; use 1.0 where unknown."
        raise ValueError(msg)
    out = (arr < 0) | (arr > 1)
    if out.any():
        msg = (
            f"obs[{key!r}] has {int(out.sum())} efficacy values outside [0, 1] (range {arr.min():g} to {arr.max():g}); "
            "efficacy is the fraction of knock-down (0 = escaper, 1 = full effect). Rescale it."
        )
        raise ValueError(msg)
    return arr


def validate_categorical(values: Sequence | pd.Series, key: str, what: str = "category") -> pd.Categorical:
    """Check a categorical column: no missing values; unused categories are dropped.

    Parameters
    ----------
    values
        One value per cell (e.g. a batch, a medium or a guide).
    key
        Name of the ``obs`` column, used in messages.
    what
        What the values are (e.g. ``"batch"``), used in error messages.

    Returns
    -------
    A :class:`pandas.Categorical` with only the categories in use.
    """
    ser = pd.Series(values)
    if ser.isna().any():
        msg = (
            f"obs[{key!r}] has {int(ser.isna().sum())} missing (NaN) {what} values; give every cell a {what} "
            f"(e.g. adata.obs[{key!r}] = adata.obs[{key!r}].cat.add_categories('unknown').fillna('unknown'))."
        )
        raise ValueError(msg)
    cat = pd.Categorical(ser.astype(str) if not isinstance(ser.dtype, pd.CategoricalDtype) else ser)
    unused = [c for c in cat.categories if c not in set(cat)]
    if unused:
        logger.info("obs[%r]: dropping %d unused categories %s", key, len(unused), unused[:5])
        cat = cat.remove_unused_categories()
    return cat


def _numeric(values, key: str, what: str) -> np.ndarray:
    """Return one number per cell as ``float64`` (missing values as NaN), within the ``float32`` range of training."""
    if np.ndim(values) != 1:
        msg = f"obs[{key!r}] {what} values must be one number per cell (1-D), got shape {np.shape(values)}."
        raise ValueError(msg)
    ser = pd.Series(values, dtype=np.float64 if len(values) == 0 else None)
    numeric = pd.api.types.is_numeric_dtype(ser) and not pd.api.types.is_complex_dtype(ser)
    if not (numeric or pd.api.types.is_bool_dtype(ser)):
        msg = f"obs[{key!r}] must be numeric {what} values, got dtype {ser.dtype}; convert it with pd.to_numeric."
        raise TypeError(msg)
    arr = ser.to_numpy(dtype=np.float64, na_value=np.nan)
    check_float32(arr, key, what)
    return arr


def canonical_condition(label: str, design: PerturbationDesign, what: str | None = None) -> str:
    """Canonical label of a condition written in ``design``'s separator and control label (targets sorted).

    Parameters
    ----------
    label
        A condition label, e.g. ``"JAK2+STAT1"`` or the control label.
    design
        The perturbation design whose ``separator`` and ``control_label`` the label is written in.
    what
        How a message names the label (``"test condition"``); ``None`` lets the parser's own error through.

    Returns
    -------
    The canonical label: the control label, or the sorted targets joined by the separator.

    Raises
    ------
    ValueError
        When the label cannot be parsed (an empty target, a separator at an end).
    """
    try:
        targets = parse_condition(label, separator=design.separator, control_label=design.control_label)
    except ValueError as e:
        if what is None:
            raise
        msg = f"Cannot parse {what} {label!r}: {e}"
        raise ValueError(msg) from e
    return canonical_label(targets, separator=design.separator, control_label=design.control_label)


@dataclass(frozen=True)
class ExperimentalDesign:
    """The validated experimental design of a screen, as used by ``scmech.tl`` tools.

    Made by :func:`get_design`; each parameter is also an attribute of the same name (the object is frozen).

    Parameters
    ----------
    perturbation
        Parsed perturbation labels.
    batch
        Wet-lab batch (lane, replicate) per cell, or ``None``.
    time
        Time since perturbation per cell, or ``None``.
    media
        Medium or condition per cell, or ``None``.
    media_time
        Time of the switch into ``media`` on the same clock as ``time`` (perturbation at 0), or ``None``.
    efficacy
        Knock-down efficacy per cell in ``[0, 1]``, or ``None``.
    guide
        Guide identity per cell, or ``None``.
    keys
        The ``obs`` keys each part came from.
    """

    perturbation: PerturbationDesign
    batch: pd.Categorical | None = None
    time: np.ndarray | None = None
    media: pd.Categorical | None = None
    media_time: np.ndarray | None = None
    efficacy: np.ndarray | None = None
    guide: pd.Categorical | None = None
    keys: dict[str, str | None] = field(default_factory=dict)

    def cells_per_batch(self) -> pd.DataFrame:
        """Cell counts, conditions x batches (fitted cells only).

        Returns
        -------
        A DataFrame of cell counts, conditions as rows and batches as columns.
        """
        if self.batch is None:
            msg = "No batch_key was given, so there are no batches to count."
            raise ValueError(msg)
        m = self.perturbation.fit_mask
        return pd.crosstab(
            pd.Series(self.perturbation.labels[m], name="condition"),
            pd.Series(np.asarray(self.batch)[m], name="batch"),
        )


def _obs_column(adata: AnnData, key: str, what: str) -> pd.Series:
    if not isinstance(key, str):
        msg = f"{what}={key!r} must be the name of one obs column (a string)."
        raise TypeError(msg)
    if key not in adata.obs.columns:
        cols = list(adata.obs.columns)
        msg = f"{what} {key!r} is not a column of adata.obs (columns: {cols[:12]}{' ...' if len(cols) > 12 else ''})."
        raise KeyError(msg)
    return adata.obs[key]


@fill_doc
def get_design(
    adata: AnnData,
    perturbation_key: str = "perturbation",
    control_label: str | Sequence[str] = "NT",
    *,
    separator: str = "+",
    unassigned_label: str | Sequence[str] | None = "unassigned",
    batch_key: str | None = None,
    time_key: str | None = None,
    media_key: str | None = None,
    media_time_key: str | None = None,
    efficacy_key: str | None = None,
    guide_key: str | None = None,
    warn_missing_controls: bool = True,
) -> ExperimentalDesign:
    """Read and validate the experimental design from ``adata.obs``.

    Parameters
    ----------
    adata
        Annotated data matrix (not modified).
    perturbation_key
        %(perturbation_key)s
    control_label
        %(control_label)s
    separator
        %(separator)s
    unassigned_label
        %(unassigned_label)s
    batch_key
        %(batch_key)s
    time_key
        %(time_key)s
    media_key
        %(media_key)s
    media_time_key
        %(media_time_key)s
    efficacy_key
        %(efficacy_key)s
    guide_key
        %(guide_key)s
    warn_missing_controls
        Warn when some batch, time point or medium holds no control cells (``True`` or ``False``).

    Returns
    -------
    The validated :class:`ExperimentalDesign`.

    Raises
    ------
    TypeError
        For an ``adata`` that is not an AnnData, and a ``warn_missing_controls`` that is not ``True`` or ``False``.
    KeyError
        For a key that is not a column of ``adata.obs``.
    ValueError
        For labels or columns that fail their checks (e.g. negative times, efficacies outside [0, 1]).
    """
    if not hasattr(adata, "obs") or not hasattr(adata, "var_names"):
        msg = f"adata must be an AnnData (with obs and var_names), got {type(adata).__name__}."
        raise TypeError(msg)
    warn_missing_controls = check_flag(warn_missing_controls, "warn_missing_controls")
    labels = _obs_column(adata, perturbation_key, "perturbation_key")
    pert = parse_perturbations(
        labels.to_numpy(),
        control_label=control_label,
        separator=separator,
        unassigned_label=unassigned_label,
        var_names=adata.var_names,
        key=perturbation_key,
    )
    batch = validate_categorical(_obs_column(adata, batch_key, "batch_key"), batch_key, "batch") if batch_key else None
    time = validate_time(_obs_column(adata, time_key, "time_key"), time_key) if time_key else None
    media = validate_categorical(_obs_column(adata, media_key, "media_key"), media_key, "medium") if media_key else None
    media_time = None
    if media_time_key and not media_key:
        msg = (
            f"media_time_key={media_time_key!r} without a media_key: a switch time needs the medium switched into. "
            "Register media_key=... too, or drop media_time_key."
        )
        raise ValueError(msg)
    if media_time_key:
        media_time = _numeric(_obs_column(adata, media_time_key, "media_time_key"), media_time_key, "media time")
    efficacy = None
    if efficacy_key:
        efficacy = validate_efficacy(_obs_column(adata, efficacy_key, "efficacy_key"), efficacy_key)
    guide = validate_categorical(_obs_column(adata, guide_key, "guide_key"), guide_key, "guide") if guide_key else None
    design = ExperimentalDesign(
        perturbation=pert,
        batch=batch,
        time=time,
        media=media,
        media_time=media_time,
        efficacy=efficacy,
        guide=guide,
        keys={
            "perturbation": perturbation_key,
            "batch": batch_key,
            "time": time_key,
            "media": media_key,
            "media_time": media_time_key,
            "efficacy": efficacy_key,
            "guide": guide_key,
        },
    )
    if warn_missing_controls:
        _warn_missing_controls(design)
    return design


def _warn_missing_controls(design: ExperimentalDesign) -> None:
    ctrl = design.perturbation.is_control
    for name, col in (("batch", design.batch), ("time", design.time), ("media", design.media)):
        if col is None:
            continue
        values = pd.Series(np.asarray(col))
        fit = design.perturbation.fit_mask
        groups = set(values[fit].unique().tolist())
        with_ctrl = set(values[ctrl].unique().tolist())
        missing = sorted(groups - with_ctrl, key=str)
        if missing:
            msg = (
                f"No control cells in {name} {missing[:10]} of obs[{design.keys[name]!r}]: effects there are "
                f"confounded with the {name} effect. Put non-targeting controls in every {name}."
            )
            warnings.warn(msg, UserWarning, stacklevel=3)
