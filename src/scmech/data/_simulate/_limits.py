"""Bounds on the work of a simulation: the RK4 steps of a trajectory and the sizes of the arrays it allocates.

The dynamic regime integrates every protocol with fixed RK4 steps of at most ``_DT`` days from the earliest event
(0 or the earliest media switch) to the last read-out, so its run time grows with that span; absurd times
(``time_points=[1e6]``) would run for hours. These checks refuse such requests up front with a message that names
the argument, the value and the bound.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["MAX_RK4_STEPS", "MAX_SIZES", "check_time_span", "check_times"]

#: most RK4 steps of one trajectory (with the default step of 0.05 days: a span of 1,000 days)
MAX_RK4_STEPS = 20_000

#: largest allowed value of the size parameters of :func:`~scmech.data.simulate_perturbseq`, with the reason
MAX_SIZES = {
    "n_cells": (10_000_000, "the counts are drawn as a dense cells x genes array in chunks"),
    "n_genes": (20_000, "the network is a dense genes x genes matrix"),
    "n_media": (100, "states are solved for every condition in every medium"),
    "n_batches": (1_000, "every batch has its own capture of every gene"),
    "n_efficacy_grid": (1_001, "states are solved at every efficacy level of every condition"),
}


def check_time_span(t_start: float, t_end: float, dt: float, what: str, fix: str = "") -> None:
    """Refuse a trajectory from ``t_start`` to ``t_end`` that needs more than :data:`MAX_RK4_STEPS` steps.

    Parameters
    ----------
    t_start, t_end
        Start and end of the integration (days).
    dt
        Largest RK4 step (days).
    what
        The arguments that set the span, as the message names them.
    fix
        Another remedy, appended to the message (e.g. ``", or a larger dt"``).

    Raises
    ------
    ValueError
        When the span needs more steps than :data:`MAX_RK4_STEPS`, or ``dt`` is not a positive finite number.
    """
    if not (np.isfinite(dt) and dt > 0):
        msg = f"dt={dt!r} must be a positive finite RK4 step (days), e.g. 0.05."
        raise ValueError(msg)
    n_steps = math.ceil((t_end - t_start) / dt - 1e-9)
    if n_steps > MAX_RK4_STEPS:
        msg = (
            f"{what} span {t_end - t_start:g} days (from {t_start:g} to {t_end:g}), which needs {n_steps:,} RK4 steps "
            f"of {dt:g} days; at most {MAX_RK4_STEPS:,} are allowed ({MAX_RK4_STEPS * dt:g} days). Use times within "
            f"that span (e.g. in days, not seconds){fix}."
        )
        raise ValueError(msg)


def check_times(t: np.ndarray, dt: float) -> None:
    """Check the output times of :meth:`~scmech.data.SimulatedNetwork.integrate`.

    Parameters
    ----------
    t
        The output times (1-D).
    dt
        Largest RK4 step.

    Raises
    ------
    ValueError
        For no times, times that are not finite or not strictly increasing, and a span that needs too many steps.
    """
    if t.size == 0 or np.any(np.diff(t) <= 0) or not np.all(np.isfinite(t)):
        msg = "t must be a non-empty, strictly increasing sequence of finite times."
        raise ValueError(msg)
    check_time_span(float(t[0]), float(t[-1]), dt, "t", ", or a larger dt")
