"""Registry of the assumption checks and the vocabulary of their result table.

Every check module builds its rows with :func:`_row` and words its verdicts with :data:`HOLDS`,
:data:`VIOLATED` or :func:`_cannot`, so that the table, the report and the plot share one vocabulary.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: the checks, in report order, with their plain-language statement
ASSUMPTIONS: dict[str, str] = {
    "baseline_steady_state": "Baseline steady state (A1): control cells do not drift",
    "media_response": "No media response: control cells are the same in every medium",
    "unique_attractor": "Unique attractor (A2): each perturbed population is one state",
    "instantaneous_perturbation": "Instantaneous perturbation: effects have settled by the last read-out",
    "additivity": "Additivity: a combination's effect is the sum of its singles' effects",
    "model_steady_state": "Model: control cells sit at a fixed point of the learned field",
}
#: name of each check's effect size
STATISTICS: dict[str, str] = {
    "baseline_steady_state": "F (between / within)",
    "media_response": "F (between / within)",
    "unique_attractor": "unperturbed fraction",
    "instantaneous_perturbation": "growth share",
    "additivity": "interaction / noise",
    "model_steady_state": "residual ratio (control / perturbed)",
}
HOLDS = "holds"
VIOLATED = "violated"
CANNOT = "cannot be tested"
COLUMNS = [
    "assumption",
    "subject",
    "statistic",
    "effect",
    "ci_low",
    "ci_high",
    "p_value",
    "n_cells",
    "verdict",
    "detail",
]

#: groups of cells smaller than this are left out of the A1, media, time and additivity checks
_MIN_CELLS = 10

#: the check that draws from each random stream of ``SeedSequence(random_state).spawn(len(_STREAMS))``; each
#: check has its own stream, so that the resampling of one does not shift the others
_STREAMS = (
    "baseline_steady_state",
    "media_response",
    "unique_attractor",
    "instantaneous_perturbation",
    "additivity",
    "model_steady_state",
)


def _rngs(random_state: int) -> dict[str, np.random.Generator]:
    """Random generator of each check, keyed by assumption.

    Parameters
    ----------
    random_state
        Seed of the resampling.

    Returns
    -------
    One independent generator per entry of :data:`_STREAMS`.
    """
    seeds = np.random.SeedSequence(int(random_state)).spawn(len(_STREAMS))
    return {name: np.random.default_rng(s) for name, s in zip(_STREAMS, seeds, strict=True)}


def _cannot(why: str) -> str:
    """Verdict of a check that cannot be run, with the reason."""
    return f"{CANNOT}: {why}"


def _row(assumption: str, subject: str, **kw: Any) -> dict[str, Any]:
    """Build a row of the result table: NaN effect and interval, no cells, no verdict unless given in ``kw``."""
    row = {
        "assumption": assumption,
        "subject": subject,
        "statistic": STATISTICS[assumption],
        "effect": np.nan,
        "ci_low": np.nan,
        "ci_high": np.nan,
        "p_value": np.nan,
        "n_cells": 0,
        "verdict": "",
        "detail": "",
    }
    row.update(kw)
    return row


def _fmt(x: float, digits: int = 2) -> str:
    """Format a number for the details and the report: fixed-point below 1e4, 3 significant digits above."""
    if not np.isfinite(x):
        return "nan"
    return f"{x:.{digits}f}" if abs(x) < 1e4 else f"{x:.3g}"


def _time_label(t: float) -> str:
    """Label of a time point, e.g. ``t=2``."""
    return f"t={t:g}"
