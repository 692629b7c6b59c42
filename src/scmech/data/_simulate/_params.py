"""Validation of the parameters of :func:`~scmech.data.simulate_perturbseq`.

:func:`_validate` checks every argument (type and range, with messages that name the argument and the allowed
range) and resolves the defaults that depend on others (``n_media``); it returns the parameter dictionary
``p`` that every step of the simulator reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._limits import MAX_SIZES, check_time_span
from ._network import _DT, _MODALITIES

_REGIMES = ("steady_state", "dynamic")
_DESIGNS = ("spread", "confounded", "controls_missing")
#: real-valued parameters: (name, low, high, open at low, open at high); None: unbounded
_FLOAT_RANGES = (
    ("control_fraction", 0.0, 1.0, True, True),
    ("efficacy_mean", 0.0, 1.0, False, False),
    ("efficacy_concentration", 0.0, None, True, False),
    ("escaper_fraction", 0.0, 1.0, False, False),
    ("activation_strength", 0.0, None, True, False),
    ("regulator_fraction", 0.0, 1.0, True, False),
    ("regulators_per_gene", 1.0, None, False, False),
    ("unregulated_fraction", 0.0, 1.0, False, False),
    ("media_strength", 0.0, None, False, False),
    ("onset_tau", 0.0, None, False, False),
    ("bio_sd", 0.0, None, False, False),
    ("cell_cycle_sd", 0.0, None, False, False),
    ("systematic_fraction", 0.0, 1.0, False, False),
    ("systematic_strength", 0.0, None, False, False),
    ("fitness_sd", 0.0, None, False, False),
    ("batch_sd", 0.0, None, False, False),
    # beyond these, Poisson means overflow numpy's sampler (about 1e19)
    ("library_size_mean", 0.0, 1e9, True, False),
    ("library_size_sd", 0.0, 5.0, False, False),
    ("dispersion", 0.0, None, True, False),
    ("dropout", 0.0, 1.0, False, True),
    ("alpha_sd", 0.0, None, False, False),
)


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """Return ``value`` as an ``int`` in ``[low, high]`` (``high=None``: unbounded); raise otherwise.

    The size parameters of :data:`~scmech.data._simulate._limits.MAX_SIZES` are also bounded above, with the reason.
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        msg = f"{name} must be an integer, got {value!r} ({type(value).__name__})."
        raise TypeError(msg)
    if value < low or (high is not None and value > high):
        rng_txt = f">= {low}" if high is None else f"in [{low}, {high}]"
        msg = f"{name}={value!r} is out of range; expected an integer {rng_txt}."
        raise ValueError(msg)
    if name in MAX_SIZES and value > MAX_SIZES[name][0]:
        limit, why = MAX_SIZES[name]
        msg = f"{name}={value!r} is too large for the simulator; at most {limit:,} are allowed ({why})."
        raise ValueError(msg)
    return int(value)


def _check_float(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    open_low: bool = False,
    open_high: bool = False,
) -> float:
    """Return ``value`` as a finite ``float`` in the interval (``None``: unbounded, ``open_*``: bound excluded)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        msg = f"{name} must be a number, got {value!r} ({type(value).__name__})."
        raise TypeError(msg)
    v = float(value)
    bad = not np.isfinite(v)
    bad |= low is not None and (v < low or (open_low and v == low))
    bad |= high is not None and (v > high or (open_high and v == high))
    if bad:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        interval = f"{'(' if open_low or low is None else '['}{lo}, {hi}{')' if open_high or high is None else ']'}"
        msg = f"{name}={value!r} is out of range; expected a finite value in {interval}."
        raise ValueError(msg)
    return v


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``; raise otherwise."""
    if value not in choices:
        msg = f"{name}={value!r} is not allowed; expected one of {list(choices)}."
        raise ValueError(msg)
    return str(value)


def _validate_time_points(tp: Any) -> list[float]:
    """Read-out times: a non-empty sequence of finite times >= 0, returned sorted without duplicates."""
    if isinstance(tp, str | bytes) or not isinstance(tp, Sequence | np.ndarray) or len(tp) == 0:
        msg = f"time_points={tp!r} must be a non-empty sequence of times >= 0."
        raise ValueError(msg)
    return sorted({_check_float("time_points", t, 0.0) for t in tp})


def _validate_switches(sw: Any) -> list[float]:
    """Media switch times in their given order without duplicates, NaN for "no switch" (``None`` alone: one)."""
    if sw is None:
        return [np.nan]
    if isinstance(sw, str | bytes) or not isinstance(sw, Sequence | np.ndarray) or len(sw) == 0:
        msg = f"media_switch_times={sw!r} must be None or a non-empty sequence of times (None/NaN: no switch)."
        raise ValueError(msg)
    switches: list[float] = []
    for s in sw:
        v = np.nan if s is None or (isinstance(s, float) and np.isnan(s)) else _check_float("media_switch_times", s)
        if not any((np.isnan(v) and np.isnan(u)) or v == u for u in switches):
            switches.append(v)
    return switches


def _validate_n_media(n_media: Any, regime: str, switches: list[float]) -> int:
    """Resolve the number of media: default 2 in the dynamic regime with media switches (which need two), else 1."""
    any_switch = any(np.isfinite(s) for s in switches)
    if n_media is None:
        n_media = 2 if regime == "dynamic" and any_switch else 1
    n_media = _check_int("n_media", n_media, 1)
    if regime == "dynamic" and any_switch and n_media < 2:
        msg = f"n_media={n_media} is out of range for a dynamic regime with media switches; expected >= 2."
        raise ValueError(msg)
    return n_media


def _validate(p: dict[str, Any]) -> dict[str, Any]:
    """Check and resolve the arguments of :func:`~scmech.data.simulate_perturbseq`.

    Parameters
    ----------
    p
        The arguments by name (``locals()`` of :func:`~scmech.data.simulate_perturbseq`).

    Returns
    -------
    A copy with the values converted (``int``/``float``), ``time_points`` sorted, ``media_switch_times`` a list
    with NaN for no switch and ``n_media`` resolved.

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If an argument is out of range or not allowed.
    """
    q = dict(p)
    q["n_cells"] = _check_int("n_cells", p["n_cells"], 1)
    q["n_genes"] = _check_int("n_genes", p["n_genes"], 10)
    q["n_perturbations"] = _check_int("n_perturbations", p["n_perturbations"], 0, q["n_genes"] // 2)
    n_pairs = q["n_perturbations"] * (q["n_perturbations"] - 1) // 2
    q["n_combinations"] = _check_int("n_combinations", p["n_combinations"], 0, n_pairs)
    q["regime"] = _check_choice("regime", p["regime"], _REGIMES)
    q["modality"] = _check_choice("modality", p["modality"], _MODALITIES)
    q["design"] = _check_choice("design", p["design"], _DESIGNS)
    for name, low, high, ol, oh in _FLOAT_RANGES:
        q[name] = _check_float(name, p[name], low, high, open_low=ol, open_high=oh)
    q["guides_per_target"] = _check_int("guides_per_target", p["guides_per_target"], 1)
    q["n_batches"] = _check_int("n_batches", p["n_batches"], 1)
    q["n_efficacy_grid"] = _check_int("n_efficacy_grid", p["n_efficacy_grid"], 2)
    q["seed"] = _check_int("seed", p["seed"], 0)
    if q["design"] == "controls_missing" and q["n_batches"] < 2:
        msg = f"n_batches={q['n_batches']} is out of range for design='controls_missing'; expected >= 2."
        raise ValueError(msg)
    # time points and media switches (used in the dynamic regime; stored in both)
    q["time_points"] = _validate_time_points(p["time_points"])
    q["media_switch_times"] = _validate_switches(p["media_switch_times"])
    q["n_media"] = _validate_n_media(p["n_media"], q["regime"], q["media_switch_times"])
    if q["regime"] == "dynamic":
        # trajectories run from the earliest event (0 or the earliest switch) to the last read-out in RK4 steps
        finite = [s for s in q["media_switch_times"] if np.isfinite(s)]
        t_start = min(0.0, *finite) if finite else 0.0
        check_time_span(t_start, max(q["time_points"]), _DT, "time_points and media_switch_times")
    return q
