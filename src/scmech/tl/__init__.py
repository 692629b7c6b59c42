"""Tools: held-out splits, baselines, evaluation metrics, error decomposition, batch design and assumption checks."""

from __future__ import annotations

from typing import Any

from ._assumptions import ASSUMPTIONS, check_assumptions, estimate_efficacy, report_assumptions
from ._baselines import Additive, ControlMean, LinearModel, TrainMean
from ._design import BatchDesign, minimal_detectable_effect, power, recommend_batches
from ._errors import COMPONENTS, error_decomposition, estimate_variance
from ._metrics import (
    METRIC_DIRECTIONS,
    energy_distance,
    evaluate,
    interval_coverage,
    leaderboard,
    leaderboard_table,
    noise_ceiling,
    win_counts,
)
from ._pertpy import combine_prediction, efficacy_from_mixscape, perturbation_space, prediction_distance
from ._selection import selection
from ._split import Split, leave_one_out, split
from ._target_baselines import OwnGene, TargetClassMean

__all__ = [
    "ASSUMPTIONS",
    "COMPONENTS",
    "METRIC_DIRECTIONS",
    "Additive",
    "BatchDesign",
    "ControlMean",
    "LinearModel",
    "OwnGene",
    "ScGen",
    "Split",
    "TargetClassMean",
    "TrainMean",
    "check_assumptions",
    "combine_prediction",
    "efficacy_from_mixscape",
    "energy_distance",
    "error_decomposition",
    "estimate_efficacy",
    "estimate_variance",
    "evaluate",
    "interval_coverage",
    "leaderboard",
    "leaderboard_table",
    "leave_one_out",
    "minimal_detectable_effect",
    "noise_ceiling",
    "perturbation_space",
    "power",
    "prediction_distance",
    "recommend_batches",
    "report_assumptions",
    "selection",
    "split",
    "win_counts",
]


def __getattr__(name: str) -> Any:
    # the scGen adapter is loaded on first access; pertpy itself only when a ScGen model is created
    if name == "ScGen":
        from ._baselines import ScGen

        return ScGen
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
