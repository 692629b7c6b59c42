"""Metric names: the direction of every metric and the families that share a precondition."""

from __future__ import annotations

__all__ = ["METRIC_DIRECTIONS", "higher_is_better"]

#: whether a higher value is better, per metric name
METRIC_DIRECTIONS: dict[str, bool] = {
    "pearson": True,
    "pearson_delta": True,
    "pearson_delta_de": True,
    "pearson_delta_top_change": True,
    "mse": False,
    "mse_de": False,
    "l2_top": False,
    "direction_accuracy_de": True,
    "systema_pearson_delta": True,
    "systema_pearson_delta_de": True,
    "systema_pearson_delta_off": True,
    "centroid_accuracy": True,
    "perturbench_rank": False,
    "energy_distance": False,
}

#: the distances of ``pertpy.tools.Distance`` (``scmech.tl.prediction_distance``) are lower-is-better too
_LOWER_HINTS = (
    "mse",
    "mae",
    "l1",
    "l2",
    "distance",
    "rank",
    "error",
    "loss",
    "mmd",
    "wasserstein",
    "kldiv",
    "euclidean",
    "cityblock",
)

#: metrics that need DE genes, NaN for conditions with fewer than 2 observed cells
_DE_METRICS = ("pearson_delta_de", "mse_de", "direction_accuracy_de", "systema_pearson_delta_de")
#: metrics that need the Systema reference (the training perturbations)
_SYSTEMA_METRICS = ("systema_pearson_delta", "systema_pearson_delta_de", "systema_pearson_delta_off")


def higher_is_better(metric: str) -> bool:
    """Direction of a metric: known names from :data:`METRIC_DIRECTIONS`, else guessed from the name.

    Parameters
    ----------
    metric
        Metric name.

    Returns
    -------
    ``True`` when a higher value is better; names with a hint of a loss (``mse``, ``distance``, ``rank``, ...)
    or of a distance of ``pertpy.tools.Distance`` (``mmd``, ``wasserstein``, ``sym_kldiv``, ``euclidean``,
    ``cityblock``) are lower-is-better.
    """
    if metric in METRIC_DIRECTIONS:
        return METRIC_DIRECTIONS[metric]
    return not any(h in metric.lower() for h in _LOWER_HINTS)
