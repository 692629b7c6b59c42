"""Plots: benchmark leaderboards, predicted vs observed changes, error components, designs and assumption checks."""

from ._assumptions import assumptions
from ._benchmark import leaderboard, predicted_vs_observed
from ._design import design_table, error_components, power_curve
from ._network import regulatory_network

__all__ = [
    "assumptions",
    "design_table",
    "error_components",
    "leaderboard",
    "power_curve",
    "predicted_vs_observed",
    "regulatory_network",
]
