r"""The sequencing budget: cells versus depth for a fixed number of reads (``power(..., budget_reads=...)``).

A budget of :math:`R` reads buys :math:`n = R/(r + c)` cells at :math:`r` reads per cell (:math:`c`: the cost
of capturing a cell, in reads). Measurement variance falls with depth, :math:`\sigma^2_{\mathrm{meas}}\,r_0/r`
from the pilot's depth :math:`r_0`, biological variance does not; the noise floor of one of :math:`K`
perturbations' effects is smallest at :math:`r^\star = \sqrt{c\,r_0\,\sigma^2_{\mathrm{meas}}/
\sigma^2_{\mathrm{bio}}}`. The full statement is in the docstring of :func:`~scmech.tl._design.power`.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ._inputs import _as_array

if TYPE_CHECKING:
    from collections.abc import Sequence


def _finite_number(value: float, name: str, *, minimum: float, strict: bool, what: str) -> float:
    """``value`` as a float, refusing non-numbers, NaN, infinity and values below (or at, ``strict``) ``minimum``."""
    try:
        v = float(value)
    except (TypeError, ValueError) as e:
        msg = f"{name} must be a number ({what}), got {value!r}."
        raise TypeError(msg) from e
    if not np.isfinite(v) or v < minimum or (strict and v == minimum):
        msg = f"{name} must be a finite number {'>' if strict else '>='} {minimum:g} ({what}), got {value!r}."
        raise ValueError(msg)
    return v


def _check_budget_arguments(
    budget_reads: float,
    cell_cost_reads: float,
    reads_per_cell: float | Sequence[float] | None,
    pilot_depth: float | None,
) -> np.ndarray | None:
    """Check the budget arguments that need no variance terms (before a pilot is read); return the given depths."""
    _finite_number(budget_reads, "budget_reads", minimum=0, strict=True, what="total reads of the screen")
    _finite_number(cell_cost_reads, "cell_cost_reads", minimum=0, strict=False, what="cost of one cell in reads")
    if pilot_depth is not None:
        _finite_number(pilot_depth, "pilot_depth", minimum=0, strict=True, what="reads or UMIs per cell of the pilot")
    return None if reads_per_cell is None else np.sort(_as_array(reads_per_cell, "reads_per_cell"))


def _check_budget(var: dict[str, Any], pilot_depth: float | None) -> tuple[float, float, float]:
    """Return the pilot's depth and the biological and measurement variances, or say how to supply them."""
    r0 = pilot_depth if pilot_depth is not None else var.get("depth")
    if r0 is None or not r0 > 0:
        msg = (
            "The budget trade-off needs the pilot's depth: pass pilot_depth= (reads or UMIs per cell of the pilot) or "
            "a pilot AnnData with counts, or 'depth' in the variance dict."
        )
        raise ValueError(msg)
    bio, meas = var.get("bio", np.nan), var.get("meas", np.nan)
    if np.isnan(bio) or np.isnan(meas):
        msg = (
            "The budget trade-off needs sigma2_bio and sigma2_meas separately: use a pilot with counts or pass "
            "{'bio': ..., 'meas': ...}."
        )
        raise ValueError(msg)
    return float(r0), bio, meas


def _unaffordable(
    affordable: np.ndarray, grid: np.ndarray, need: float, K: int, budget_reads: float, cell_cost_reads: float
) -> None:
    """Raise when no depth of ``grid`` buys ``need`` cells; warn about the depths that do not."""
    what = (
        f"one cell of each of the {K} perturbation{'s' if K > 1 else ''} and of the controls ({need:.3g} cells in all, "
        "K + sqrt(K))"
    )
    cost = f" + {cell_cost_reads:g} reads per cell captured" if cell_cost_reads > 0 else ""
    if not affordable.any():
        r = float(grid[0])
        msg = (
            f"budget_reads={budget_reads:g} cannot pay for {what} at {r:g} reads per cell{cost}, the shallowest "
            f"reads_per_cell: that needs budget_reads >= {math.ceil(need * (r + cell_cost_reads)):,}. Raise "
            "budget_reads or lower reads_per_cell."
        )
        raise ValueError(msg)
    bad = grid[~affordable]
    msg = (
        f"budget_reads={budget_reads:g} cannot pay for {what} at {bad.size} of {grid.size} depths (reads_per_cell >= "
        f"{bad.min():g}{cost}): their expected_error and mde are NaN (no estimate) and they are never optimal."
    )
    warnings.warn(msg, UserWarning, stacklevel=4)


def _analytic_optimum(
    bio: float, meas: float, r0: float, budget_reads: float, cell_cost_reads: float, share: float
) -> dict[str, float]:
    r"""Find the depth :math:`r^\star` of least expected error, its cells and error (needs :math:`c > 0`, bio > 0)."""
    r_star = math.sqrt(cell_cost_reads * r0 * meas / bio)
    n_star = budget_reads / (r_star + cell_cost_reads)
    e_star = (bio + meas * r0 / r_star) * share / n_star
    return {"reads_per_cell": r_star, "n_cells": n_star, "expected_error": e_star}


def _budget(
    var: dict[str, Any],
    *,
    budget_reads: float,
    cell_cost_reads: float,
    reads_per_cell: np.ndarray | None,
    pilot_depth: float | None,
    n_perturbations: int | None,
    z: float,
) -> pd.DataFrame:
    r"""Compute the expected error and MDE over a grid of depths for a read budget, with the optimum in ``attrs``.

    The arguments are those of :func:`~scmech.tl._design.power`, checked by ``_check_budget_arguments``
    (``reads_per_cell`` is its sorted grid); ``var`` comes from :func:`~scmech.tl._design.resolve_variance` and
    ``z`` is :math:`z_{1-\alpha/2} + z_{\mathrm{power}}`. Depths at which the budget buys fewer than
    :math:`K + \sqrt K` cells (one per perturbation and of the controls) get a NaN error and are never optimal
    (a warning); when that holds at every depth, a :class:`ValueError`.

    Returns
    -------
    One row per depth (``reads_per_cell``, ``n_cells``, ``sigma2_cell``, ``expected_error``, ``mde``,
    ``optimal``); ``attrs`` holds ``optimum``, ``grid_optimum`` and ``model``.
    """
    r0, bio, meas = _check_budget(var, pilot_depth)
    grid = np.geomspace(r0 / 50, r0 * 50, 61) if reads_per_cell is None else np.sort(np.asarray(reads_per_cell))
    K = int(n_perturbations) if n_perturbations is not None else 1
    share = (K + math.sqrt(K)) * (1 + 1 / math.sqrt(K))  # n / n_p  *  (1 + n_p / n_controls)
    need = K + math.sqrt(K)  # cells for one of each perturbation and sqrt(K) controls
    n = budget_reads / (grid + cell_cost_reads)
    affordable = n >= need
    if not affordable.all():
        _unaffordable(affordable, grid, need, K, budget_reads, cell_cost_reads)
    sigma = bio + meas * r0 / grid
    err = np.where(affordable, sigma * share / n, np.nan)  # no estimate without a cell of each
    best = int(np.nanargmin(err))
    out = pd.DataFrame(
        {
            "reads_per_cell": grid,
            "n_cells": np.floor(n),
            "sigma2_cell": sigma,
            "expected_error": err,
            "mde": z * np.sqrt(err),
            "optimal": np.arange(grid.size) == best,
        }
    )
    grid_opt = {
        "reads_per_cell": float(grid[best]),
        "n_cells": float(np.floor(n[best])),
        "expected_error": float(err[best]),
        "at_edge": bool(best in (0, grid.size - 1)),
    }
    optimum = dict(grid_opt)
    if cell_cost_reads > 0 and bio > 0:
        analytic = _analytic_optimum(bio, meas, r0, budget_reads, cell_cost_reads, share)
        if analytic["n_cells"] >= need:  # else the budget cannot pay for the cells at the analytic depth
            optimum = analytic
    out.attrs["optimum"] = optimum
    out.attrs["grid_optimum"] = grid_opt
    out.attrs["model"] = {
        "bio": float(bio),
        "meas": float(meas),
        "pilot_depth": float(r0),
        "budget_reads": float(budget_reads),
        "cell_cost_reads": float(cell_cost_reads),
        "n_perturbations": K,
    }
    return out
