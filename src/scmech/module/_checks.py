"""Checks of a module's settings, before any layer is built.

An unknown ``dispersion`` or ``readout`` would silently fall back to another behaviour, a NaN or negative loss weight
silently switches its term off, a zero or negative ``horizon`` reads every perturbation out at the baseline state,
and a dropout rate above 1 fails inside torch: each is refused here, by name.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from scmech._numbers import check_flag

__all__ = ["check_module_arguments"]

#: allowed values of the settings that name a behaviour
CHOICES = {
    "gene_likelihood": ("nb", "zinb", "normal"),
    "dispersion": ("gene", "gene-batch"),
    "regime": ("steady_state", "dynamic"),
    "readout": ("fixed_point", "flow"),
    "steady_state_on": ("mean", "cells"),
}
#: numbers that must be finite and >= 0 (a weight of 0 switches its term off)
NON_NEGATIVE = ("steady_state_weight", "mmd_weight", "onset_tau")
#: numbers that must be finite and > 0
POSITIVE = ("lipschitz", "operator_scale", "horizon", "fixed_point_tol")
#: whole numbers >= 1
COUNTS = ("ode_steps", "fixed_point_max_iter")
#: whole numbers >= 0
SIZES = ("n_layers_decoder", "field_hidden", "field_layers")
#: switches
FLAGS = ("learn_onset", "use_efficacy", "shared_offset", "own_target", "log_variational", "steady_state_perturbed")


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_whole(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_module_arguments(**settings: Any) -> None:
    """Refuse module settings that would build a module that fails inside torch or silently does something else.

    Parameters
    ----------
    **settings
        The module's keyword arguments by name (any subset of those checked).

    Raises
    ------
    ValueError
        Naming the first setting out of its allowed values or range, with what is allowed.
    TypeError
        For a switch that is not ``True`` or ``False``.
    """
    for name, value in settings.items():
        if name in CHOICES and value not in CHOICES[name]:
            msg = f"{name}={value!r} is not one of {', '.join(map(repr, CHOICES[name]))}."
            raise ValueError(msg)
        if name in NON_NEGATIVE and not (_is_real(value) and value >= 0):
            msg = f"{name}={value!r} must be a finite number >= 0."
            raise ValueError(msg)
        if name in POSITIVE and not (_is_real(value) and value > 0):
            msg = f"{name}={value!r} must be a finite number > 0."
            raise ValueError(msg)
        if name in COUNTS and not (_is_whole(value) and value >= 1):
            msg = f"{name}={value!r} must be a positive integer."
            raise ValueError(msg)
        if name in SIZES and not (_is_whole(value) and value >= 0):
            msg = f"{name}={value!r} must be a whole number >= 0."
            raise ValueError(msg)
        if name == "dropout_rate" and not (_is_real(value) and 0 <= value < 1):
            msg = f"dropout_rate={value!r} must be a number in [0, 1) (the share of encoder units dropped in training)."
            raise ValueError(msg)
        if name in FLAGS:
            check_flag(value, name)
