"""Inputs of :func:`~scmech.tl.selection`: its arguments, the cells' labels and the reference time and abundances.

Each function checks one input of the selection estimate and brings it to the form the estimators use: the
perturbation of each cell under its canonical label (as everywhere in scmech), its batch and time, and the
reference, with an error message that names the fix.
"""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from scmech.data._labels import canonical_label, parse_condition

if TYPE_CHECKING:
    from collections.abc import Mapping

#: the batch label of the pooled rows of the result
POOLED = "all"


def _check_args(
    obs: pd.DataFrame,
    perturbation_key: str,
    batch_key: str | None,
    time_key: str | None,
    confidence: float,
    reference: Mapping[str, float] | pd.Series | None,
    reference_time: float | str | None,
    min_cells: int = 0,
) -> None:
    """Refuse missing ``obs`` columns, invalid ``confidence`` or ``min_cells`` and conflicting reference arguments.

    Parameters
    ----------
    obs
        Cell annotations.
    perturbation_key
        ``obs`` column with the perturbation labels.
    batch_key
        ``obs`` column of batches, or ``None``.
    time_key
        ``obs`` column of read-out times, or ``None``.
    confidence
        Level of the intervals.
    reference
        Expected frequencies or counts per condition, or ``None``.
    reference_time
        The reference time point, or ``None``.
    min_cells
        Smallest count for an estimate.

    Raises
    ------
    KeyError
        For a key that is not a column of ``obs``.
    TypeError
        For a ``confidence`` or ``min_cells`` that is not a number (a whole number for ``min_cells``).
    ValueError
        For ``confidence`` outside (0, 1), a negative ``min_cells``, ``time_key`` without ``reference_time`` (or
        the reverse), and both ``reference`` and ``reference_time``.
    """
    for name, key in (("perturbation_key", perturbation_key), ("batch_key", batch_key), ("time_key", time_key)):
        if key is not None and key not in obs.columns:
            msg = f"{name}={key!r} is not a column of adata.obs (columns: {list(obs.columns)[:10]})."
            raise KeyError(msg)
    if isinstance(confidence, bool) or not isinstance(confidence, int | float | np.integer | np.floating):
        msg = f"confidence={confidence!r} must be a number in (0, 1), e.g. confidence=0.95."
        raise TypeError(msg)
    if not 0 < confidence < 1:
        msg = f"confidence={confidence!r} is out of range; expected a value in (0, 1), e.g. confidence=0.95."
        raise ValueError(msg)
    if isinstance(min_cells, bool) or not isinstance(min_cells, int | np.integer) or min_cells < 0:
        msg = f"min_cells={min_cells!r} must be a whole number >= 0 (cells per condition), e.g. min_cells=10."
        raise ValueError(msg) if isinstance(min_cells, int | np.integer) else TypeError(msg)
    if (reference_time is None) != (time_key is None):
        msg = (
            f"time_key={time_key!r} and reference_time={reference_time!r} go together: give both to compare "
            "time points with a reference time point, or neither."
        )
        raise ValueError(msg)
    if reference is not None and reference_time is not None:
        msg = "Give either reference= (expected frequencies) or time_key=/reference_time= (a reference time), not both."
        raise ValueError(msg)


def _cell_labels(
    obs: pd.DataFrame,
    perturbation_key: str,
    control_label: str,
    unassigned_label: str | None,
    batch_key: str | None,
    time_key: str | None,
    separator: str = "+",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the perturbation (canonical), batch and time label of each assigned cell, as strings.

    Refuses missing perturbation labels, a missing control label, data without perturbed cells and a batch
    named like the pooled rows.

    Parameters
    ----------
    obs
        Cell annotations.
    perturbation_key
        ``obs`` column with the perturbation labels.
    control_label
        Label of the control cells (a string).
    unassigned_label
        Label of the cells to leave out, or ``None``.
    batch_key
        ``obs`` column of batches; one batch (``"all"``) when ``None``.
    time_key
        ``obs`` column of read-out times; one time (``""``) when ``None``.
    separator
        Separator of the targets of a combination.

    Returns
    -------
    The perturbation (its canonical label, :func:`~scmech.data.canonical_label`), batch and time labels per cell.

    Raises
    ------
    ValueError
        For missing (NaN) perturbation labels, missing batch or time values of assigned cells, when no cell
        has ``control_label``, when no cell is perturbed, and for a batch labelled ``"all"``.
    """
    raw = obs[perturbation_key]
    na = raw.isna().to_numpy()
    if na.any():
        msg = (
            f"obs[{perturbation_key!r}] has {int(na.sum())} missing (NaN) labels; fill them with the unassigned "
            f"label (e.g. adata.obs[{perturbation_key!r}] = adata.obs[{perturbation_key!r}].astype(object)"
            ".fillna('unassigned')) or with targets."
        )
        raise ValueError(msg)
    labels = raw.astype(str).to_numpy()
    uniq, inverse = np.unique(labels, return_inverse=True)
    unassigned = str(unassigned_label) if unassigned_label is not None else None
    canon = np.asarray(
        [
            u
            if u == unassigned
            else canonical_label(
                parse_condition(u, separator=separator, control_label=control_label, key=perturbation_key),
                separator=separator,
                control_label=control_label,
            )
            for u in uniq
        ],
        dtype=object,
    )
    labels = canon[inverse].astype(str)
    if control_label not in set(labels):
        msg = (
            f"control_label={control_label!r} is not a value of adata.obs[{perturbation_key!r}]; pass the label of "
            "the non-targeting controls."
        )
        raise ValueError(msg)
    keep = labels != str(unassigned_label) if unassigned_label is not None else np.ones(len(labels), dtype=bool)
    if not np.any(keep & (labels != control_label)):
        msg = (
            f"adata.obs[{perturbation_key!r}] has no perturbed cells: every assigned cell has control_label="
            f"{control_label!r}; selection compares perturbations with the controls and needs some."
        )
        raise ValueError(msg)
    for name, key in (("batch_key", batch_key), ("time_key", time_key)):
        n_na = int((obs[key].isna().to_numpy() & keep).sum()) if key is not None else 0
        if n_na:
            msg = (
                f"adata.obs[{key!r}] (the {name}) has {n_na} missing (NaN) values among the assigned cells; they "
                f"would form a group named 'nan'. Fill them (e.g. adata.obs[{key!r}] = adata.obs[{key!r}]"
                f".astype(object).fillna('unknown')) or leave those cells out (adata[adata.obs[{key!r}].notna()]"
                ".copy())."
            )
            raise ValueError(msg)
    batches = obs[batch_key].astype(str).to_numpy() if batch_key is not None else np.full(len(obs), POOLED)
    if batch_key is not None and POOLED in set(batches[keep]):
        msg = (
            f"adata.obs[{batch_key!r}] has a batch named {POOLED!r}, the label of the pooled rows of the result; "
            f"rename it (e.g. adata.obs[{batch_key!r}] = adata.obs[{batch_key!r}].astype(str).replace("
            f"{POOLED!r}, 'batch_all'))."
        )
        raise ValueError(msg)
    times = obs[time_key].astype(str).to_numpy() if time_key is not None else np.full(len(obs), "")
    return labels[keep], batches[keep], times[keep]


def _canonical_reference(reference: Mapping[str, float] | pd.Series, control_label: str, separator: str) -> pd.Series:
    """Key ``reference`` by canonical labels; refuse values that are not numbers and two keys of one condition."""
    try:
        ref = pd.Series(reference, dtype=float)
    except (TypeError, ValueError) as e:
        msg = f"reference must map conditions to numbers (expected frequencies or counts): {e}."
        raise ValueError(msg) from e
    keys = [
        canonical_label(
            parse_condition(str(k), separator=separator, control_label=control_label, source="reference"),
            separator=separator,
            control_label=control_label,
        )
        for k in ref.index
    ]
    seen: dict[str, str] = {}
    for k, c in zip(ref.index, keys, strict=True):
        if c in seen:
            msg = f"reference has two entries for the condition {c!r}: {seen[c]!r} and {k!r}; give one."
            raise ValueError(msg)
        seen[c] = k
    ref.index = pd.Index(keys)
    return ref


def _reference_time(obs: pd.DataFrame, time_key: str, times: np.ndarray, reference_time: float | str) -> str:
    """Return the label (as in ``times``) of the reference time point; numeric times are matched by value.

    Parameters
    ----------
    obs
        Cell annotations.
    time_key
        ``obs`` column of read-out times.
    times
        Time label of each cell, as strings.
    reference_time
        The reference time point.

    Returns
    -------
    The reference time label.

    Raises
    ------
    ValueError
        When no cell is at ``reference_time``.
    """
    ref_t = str(reference_time)
    if ref_t not in set(times):
        # numeric time columns are matched by value
        num = pd.to_numeric(obs[time_key], errors="coerce").to_numpy()
        numeric = isinstance(reference_time, numbers.Real) and not isinstance(reference_time, bool | np.bool_)
        hit = np.isclose(num, float(reference_time)) if numeric else None
        if hit is None or not hit.any():
            msg = f"reference_time={reference_time!r} is not a value of adata.obs[{time_key!r}]."
            raise ValueError(msg)
        ref_t = str(times[np.flatnonzero(hit)[0]])
    return ref_t
