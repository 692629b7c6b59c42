"""Plots: benchmark leaderboards and predicted vs observed changes."""

from ._benchmark import leaderboard, predicted_vs_observed

__all__ = ["leaderboard", "predicted_vs_observed"]
