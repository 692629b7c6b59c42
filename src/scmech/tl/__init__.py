"""Tools: held-out splits, baselines with the model interface, and evaluation metrics."""

from __future__ import annotations

from typing import Any

from ._baselines import Additive, ControlMean, LinearModel, TrainMean
from ._metrics import METRIC_DIRECTIONS, energy_distance, evaluate, leaderboard, leaderboard_table, noise_ceiling
from ._split import Split, leave_one_out, split

__all__ = [
    "METRIC_DIRECTIONS",
    "Additive",
    "ControlMean",
    "LinearModel",
    "ScGen",
    "Split",
    "TrainMean",
    "energy_distance",
    "evaluate",
    "leaderboard",
    "leaderboard_table",
    "leave_one_out",
    "noise_ceiling",
    "split",
]


def __getattr__(name: str) -> Any:
    # the scGen adapter is loaded on first access; pertpy itself only when a ScGen model is created
    if name == "ScGen":
        from ._baselines import ScGen

        return ScGen
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
