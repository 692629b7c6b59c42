"""Argument checks shared by the design tools: numbers, perturbation labels, time points and media.

Each function checks one argument of :func:`~scmech.tl._design.recommend_batches` or
:func:`~scmech.tl._design.power` and brings it to the form the calculations use, with an error message that
names the fix.
"""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from scmech._numbers import is_positive_whole

if TYPE_CHECKING:
    from collections.abc import Sequence


def _as_array(values: float | Sequence[float], name: str, *, integer: bool = False) -> np.ndarray:
    """Check a positive number or a 1-d sequence of them; return a float array (rounded with ``integer``)."""
    try:
        arr = np.atleast_1d(np.asarray(values, dtype=float))
    except (TypeError, ValueError) as e:
        msg = f"{name}={values!r} must be a positive number or a 1-d sequence of positive numbers."
        raise TypeError(msg) from e
    if arr.size == 0:
        msg = f"{name}={values!r} is empty; pass a positive number or a 1-d sequence of positive numbers."
        raise ValueError(msg)
    if arr.ndim != 1 or not np.isfinite(arr).all() or (arr <= 0).any():
        msg = f"{name} must be a positive number or a 1-d sequence of positive numbers, got {values!r}."
        raise ValueError(msg)
    return np.round(arr) if integer else arr


def _perturbation_labels(perturbations: Sequence[str] | int, control_label: str) -> list[str]:
    """Labels of the perturbations: ``P0``, ``P1``, ... for a number, else the given distinct labels."""
    if isinstance(perturbations, bool | np.bool_ | float | np.floating):
        kind = "a bool" if isinstance(perturbations, bool | np.bool_) else "a float"
        msg = (
            f"perturbations={perturbations!r} is {kind}; pass the number of perturbations as an integer (e.g. "
            "perturbations=6) or a list of their labels."
        )
        raise TypeError(msg)
    if isinstance(perturbations, int | np.integer):
        if perturbations < 1:
            msg = f"perturbations must be >= 1 (or a list of labels), got {perturbations}."
            raise ValueError(msg)
        width = len(str(int(perturbations) - 1))
        labels = [f"P{i:0{width}d}" for i in range(int(perturbations))]
        if control_label in labels:
            msg = (
                f"control_label={control_label!r} is also the label generated for one of perturbations="
                f"{int(perturbations)} (labels {labels[0]!r} to {labels[-1]!r}); pass another control_label (e.g. "
                "'NT') or the perturbations' own labels as a list."
            )
            raise ValueError(msg)
        return labels
    if isinstance(perturbations, str):
        raw = [perturbations]
    else:
        try:
            raw = list(perturbations)
        except TypeError:
            msg = (
                f"perturbations={perturbations!r} ({type(perturbations).__name__}) is neither a number nor a list of "
                "labels; pass the number of perturbations as an integer (e.g. perturbations=6) or a list of their "
                "labels."
            )
            raise TypeError(msg) from None
    missing = [i for i, p in enumerate(raw) if p is None or (isinstance(p, float | np.floating) and np.isnan(p))]
    if missing:
        msg = (
            f"perturbations has {len(missing)} missing (None/NaN) label(s) at position(s) {missing[:5]}; they would "
            "become a perturbation named 'nan'. Drop them or name them."
        )
        raise ValueError(msg)
    labels = [str(p) for p in raw]
    if not labels:
        msg = "perturbations is empty; pass the labels of the perturbations to screen (or their number)."
        raise ValueError(msg)
    dup = sorted({p for p in labels if labels.count(p) > 1})
    if dup:
        msg = f"perturbations lists {dup[:5]} more than once."
        raise ValueError(msg)
    if control_label in labels:
        msg = f"perturbations contains the control label {control_label!r}; controls are added by the design."
        raise ValueError(msg)
    return labels


def _check_time_points(tp: list, given: object) -> None:
    """Refuse time points that are not numbers, not finite or negative (``setup_anndata`` refuses them too)."""
    try:
        arr = np.asarray(tp, dtype=float)
    except (TypeError, ValueError) as e:
        msg = f"time_points must be numbers (e.g. days after perturbation), got {given!r}."
        raise TypeError(msg) from e
    bad = ~np.isfinite(arr)
    if bad.any():
        msg = (
            f"time_points has {int(bad.sum())} NaN or infinite value(s) ({given!r}); every time point must be a "
            "finite number (e.g. days after perturbation)."
        )
        raise ValueError(msg)
    if (arr < 0).any():
        msg = (
            f"time_points has negative value(s) ({given!r}, min {arr.min():g}); time counts from the perturbation "
            "(0) onwards, as setup_anndata requires. Shift the clock so that the perturbation is at 0."
        )
        raise ValueError(msg)


def _levels(values: object) -> list:
    """Return one level or a collection of levels as a list; a set sorted (its own order varies between runs)."""
    if (
        isinstance(values, str)
        or not isinstance(values, Iterable)
        or np.ndim(values) == 0
        and not isinstance(values, set | frozenset)
    ):
        return [values.item() if isinstance(values, np.ndarray | np.generic) else values]
    return sorted(values) if isinstance(values, set | frozenset) else list(values)


def _contexts(
    time_points: Sequence[float] | float | None, media: Sequence[str] | str | None
) -> tuple[list[tuple], list[str]]:
    """All (time point, medium) combinations and the names of the given levels (``[()]``, ``[]`` for none)."""
    levels, names = [], []
    if time_points is not None:
        tp = _levels(time_points)
        _check_time_points(tp, time_points)
        if not tp or len(set(tp)) != len(tp):
            msg = f"time_points must be a non-empty list of distinct time points, got {time_points!r}."
            raise ValueError(msg)
        levels.append(tp)
        names.append("time")
    if media is not None:
        md = [str(m) for m in _levels(media)]
        if not md or len(set(md)) != len(md):
            msg = f"media must be a non-empty list of distinct media, got {media!r}."
            raise ValueError(msg)
        levels.append(md)
        names.append("medium")
    if not levels:
        return [()], []
    return list(itertools.product(*levels)), names


def _whole(value: object, name: str, what: str) -> int:
    """Return ``value`` as an ``int`` when it is a positive whole number (``2000`` or ``2e3``; not ``True``)."""
    if not is_positive_whole(value):
        msg = f"{name}={value!r} must be a positive whole number ({what})."
        raise ValueError(msg)
    return int(value)


def _check_batch_arguments(
    n_batches: int,
    cells_per_batch: int,
    min_batches_per_perturbation: int,
    control_fraction: float | None,
    target_effect: float | None,
) -> tuple[int, int, int]:
    """Check the sizes of :func:`~scmech.tl._design.recommend_batches`, in this order.

    Returns
    -------
    The number of batches, the capacity of a batch and the minimal batches per perturbation, as integers.
    """
    B = _whole(n_batches, "n_batches", "the number of wet-lab batches, e.g. n_batches=4")
    C = _whole(cells_per_batch, "cells_per_batch", "the cells one batch holds, e.g. cells_per_batch=2000")
    m = _whole(
        min_batches_per_perturbation,
        "min_batches_per_perturbation",
        "the batches each perturbation is spread over, e.g. min_batches_per_perturbation=2",
    )
    if m > B:
        msg = (
            f"min_batches_per_perturbation={m} exceeds n_batches={B}: use at least {m} batches or lower "
            "min_batches_per_perturbation."
        )
        raise ValueError(msg)
    for name, value, lo, hi, what in (
        ("control_fraction", control_fraction, 0.0, 1.0, "lie in (0, 1), e.g. 0.1"),
        ("target_effect", target_effect, 0.0, np.inf, "be a positive number (log fold change), e.g. 0.5"),
    ):
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)
        if value is not None and not (ok and lo < float(value) < hi):
            msg = f"{name}={value!r} must {what}."
            raise ValueError(msg)
    return B, C, m
