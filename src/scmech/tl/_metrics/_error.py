r"""Error metrics: squared and Euclidean errors of the prediction and the sign of its changes.

- ``mse``: :math:`\frac1G\sum_g(\hat\mu_{p,g}-\mu_{p,g})^2`; ``mse_de`` on the DE genes;
- ``l2_top``: :math:`\lVert\hat\mu_p-\mu_p\rVert_2` over the genes most expressed in control;
- ``direction_accuracy_de``: share of DE genes whose predicted change has the observed sign.
"""

from __future__ import annotations

import numpy as np

from ._correlation import _CONST_TOL


def _sign(x: np.ndarray) -> np.ndarray:
    """Sign of a change, 0 within float32 storage noise of log-scale values."""
    return np.where(np.abs(x) <= _CONST_TOL, 0.0, np.sign(x))


def _error_metrics(
    yhat: np.ndarray, y: np.ndarray, ctrl: np.ndarray, de: np.ndarray, top_genes: np.ndarray
) -> dict[str, float]:
    """``mse``, ``mse_de``, ``l2_top`` and ``direction_accuracy_de`` of one condition.

    Parameters
    ----------
    yhat, y, ctrl
        Predicted, observed and control log pseudobulk (genes).
    de
        Positions of the condition's DE genes (empty: the DE metrics are NaN).
    top_genes
        Positions of the genes most expressed in control.

    Returns
    -------
    The four metrics by name.
    """
    dp, do = yhat - ctrl, y - ctrl
    return {
        "mse": float(np.mean((yhat - y) ** 2)),
        "mse_de": float(np.mean((yhat[de] - y[de]) ** 2)) if len(de) else np.nan,
        "l2_top": float(np.linalg.norm(yhat[top_genes] - y[top_genes])),
        "direction_accuracy_de": float(np.mean(_sign(dp[de]) == _sign(do[de]))) if len(de) else np.nan,
    }
