"""Plots: leaderboards, predicted vs observed changes, error components, designs, assumptions, own-gene calibration."""

from ._assumptions import assumptions
from ._benchmark import leaderboard, predicted_vs_observed
from ._design import design_table, error_components, power_curve
from ._network import regulatory_network
from ._own_gene import own_gene_calibration

__all__ = [
    "assumptions",
    "design_table",
    "error_components",
    "leaderboard",
    "own_gene_calibration",
    "power_curve",
    "predicted_vs_observed",
    "regulatory_network",
]
