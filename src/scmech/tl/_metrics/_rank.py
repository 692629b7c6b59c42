r"""Rank metrics: how a prediction ranks the observed centroids of all evaluated conditions.

- ``centroid_accuracy`` (Systema): share of the other evaluated conditions :math:`q` with
  :math:`\lVert\hat\mu_p-\mu_q\rVert > \lVert\hat\mu_p-\mu_p\rVert`;
- ``perturbench_rank`` (PerturBench; 0 best): :math:`\#\{q: \lVert\hat\mu_p-\mu_q\rVert <
  \lVert\hat\mu_p-\mu_p\rVert\}/n` over the :math:`n` evaluated conditions.

Both are NaN when a single condition is evaluated.
"""

from __future__ import annotations

import numpy as np


def _centroid_distances(pred_mat: np.ndarray, obs_mat: np.ndarray) -> np.ndarray:
    """Euclidean distances over genes, prediction :math:`p` (rows) x observed centroid :math:`q` (columns)."""
    from scipy.spatial.distance import cdist

    return cdist(pred_mat, obs_mat)


def _rank_metrics(dist: np.ndarray, i: int) -> dict[str, float]:
    """``centroid_accuracy`` and ``perturbench_rank`` of condition ``i`` from the distance matrix ``dist``.

    Parameters
    ----------
    dist
        Output of :func:`_centroid_distances` over the evaluated conditions (square, same order on both axes).
    i
        Position of the condition.

    Returns
    -------
    The two metrics by name.
    """
    n = dist.shape[1]
    return {
        "centroid_accuracy": (float(np.mean(np.delete(dist[i], i) > dist[i, i])) if n > 1 else np.nan),
        "perturbench_rank": float(np.sum(dist[i] < dist[i, i]) / n) if n > 1 else np.nan,
    }
