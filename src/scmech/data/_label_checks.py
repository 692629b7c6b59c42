"""Checks of perturbation labels and their conventions, shared by the label parsers of :mod:`scmech.data`.

Each refuses input that would otherwise parse into a wrong design without a word: a list or tuple stored as one
label (it would become a target named after its ``repr``), a 2-D array of labels, a separator that is not a
string, or a combination naming the unassigned label as one of its targets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["check_label_array", "check_scalar_label", "check_separator", "check_unassigned_parts"]

#: containers that are not one label (a str is a Sequence, so it is excluded explicitly)
_CONTAINERS = (Sequence, Mapping, set, frozenset, np.ndarray)


def _is_container(value: object) -> bool:
    return isinstance(value, _CONTAINERS) and not isinstance(value, str | bytes)


def check_separator(separator: object) -> str:
    """Return the separator; refuse one that is not a non-blank string.

    Parameters
    ----------
    separator
        The separator between the targets of a combination.

    Returns
    -------
    The separator.

    Raises
    ------
    ValueError
        For ``None``, a non-string or a blank string.
    """
    if not isinstance(separator, str) or separator.strip() == "":
        msg = f"`separator` must be a non-blank string such as '+', got {separator!r}."
        raise ValueError(msg)
    return separator


def check_scalar_label(label: object, key: str) -> None:
    """Refuse a label that is a container (list, tuple, set, dict or array) rather than one label.

    Parameters
    ----------
    label
        One perturbation label.
    key
        The ``obs`` column of the label, as messages name it.

    Raises
    ------
    TypeError
        For a container.
    """
    if _is_container(label):
        msg = (
            f"Perturbation label {label!r} in obs[{key!r}] is a {type(label).__name__}, not one label; write a "
            "combination as one string joined by the separator (e.g. 'STAT1+JAK2')."
        )
        raise TypeError(msg)


def check_label_array(labels: np.ndarray, key: str) -> None:
    """Refuse labels that are not one per cell (a 2-D array) or that hold containers instead of labels.

    Parameters
    ----------
    labels
        The labels as an object array.
    key
        The ``obs`` column of the labels, as messages name it.

    Raises
    ------
    ValueError
        For an array that is not 1-D.
    TypeError
        For an entry that is a list, tuple, set, dict or array.
    """
    if labels.ndim != 1:
        msg = f"obs[{key!r}] labels must be one per cell (1-D), got an array of shape {labels.shape}."
        raise ValueError(msg)
    if any(issubclass(t, _CONTAINERS) and not issubclass(t, str | bytes) for t in set(map(type, labels))):
        check_scalar_label(next(v for v in labels if _is_container(v)), key)


def check_unassigned_parts(parsed: dict[str, tuple[str, ...] | None], unassigned: Sequence[str], key: str) -> None:
    """Refuse combinations with an unassigned label as a part (``"STAT1+unassigned"``).

    Parameters
    ----------
    parsed
        The targets of each distinct label (``None`` for unassigned labels).
    unassigned
        The unassigned labels.
    key
        The ``obs`` column of the labels, as messages name it.

    Raises
    ------
    ValueError
        When a label names an unassigned label among its targets.
    """
    names = {u.strip() for u in unassigned}
    bad = [label for label, tg in parsed.items() if tg and names.intersection(tg)]
    if bad:
        part = sorted(names.intersection(parsed[bad[0]]))[0]
        msg = (
            f"Perturbation label(s) {bad[:5]} in obs[{key!r}] combine a target with the unassigned label {part!r}, "
            f"which would be fitted as a target named {part!r}. Relabel such cells as {part!r} (no usable call) or "
            "with their targets only."
        )
        raise ValueError(msg)
