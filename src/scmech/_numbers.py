"""The checks of a whole-number argument and of a flag that every layer shares (sizes, counts, seeds; flags)."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

__all__ = ["check_flag", "check_positive_int", "is_positive_whole"]


def check_positive_int(value: Any, name: str, *, allow_none: bool = False, hint: str | None = None) -> int | None:
    """Return ``value`` as a Python ``int`` when it is a positive whole number (numpy integers included).

    Parameters
    ----------
    value
        The value.
    name
        Argument name for the message.
    allow_none
        Let ``None`` through (a default chosen by the caller).
    hint
        Text after "must be a positive integer" in the message: what the number counts, an example, what
        ``None`` does. ``None`` gives " (or None for the default)" with ``allow_none`` and nothing without.

    Returns
    -------
    The value as ``int`` (or ``None``).

    Raises
    ------
    ValueError
        For anything but a positive whole number (``True``/``False``, ``2.0`` and ``"3"`` included).
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        if hint is None:
            hint = " (or None for the default)" if allow_none else ""
        msg = f"{name}={value!r} must be a positive integer{hint}."
        raise ValueError(msg)
    return int(value)


def check_flag(value: Any, name: str) -> bool:
    """Return ``value`` as a ``bool`` when it is ``True`` or ``False`` (a string ``"no"`` would read as ``True``).

    Parameters
    ----------
    value
        The value.
    name
        Argument name for the message.

    Returns
    -------
    The flag as ``bool``.

    Raises
    ------
    TypeError
        For anything but a Python or numpy bool (``"no"``, ``0`` and ``None`` included).
    """
    if not isinstance(value, bool | np.bool_):
        msg = f"{name}={value!r} must be True or False."
        raise TypeError(msg)
    return bool(value)


def is_positive_whole(value: Any) -> bool:
    """Whether ``value`` is a positive whole number (``2000``, ``2.0`` or ``2e3``, numpy ones included; not ``True``).

    The rule of sizes given as floats by habit (``cells_per_batch=2e3``); :func:`check_positive_int` is the stricter
    one of arguments that must be integers.
    """
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        return False
    if isinstance(value, numbers.Integral):  # Python integers beyond float64 and int64 included
        return bool(value >= 1)
    return bool(np.isfinite(value) and int(value) == value and value >= 1)
