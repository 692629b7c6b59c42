r"""Correlation metrics: Pearson correlations of the predicted and observed profiles and changes.

For a condition with prediction :math:`\hat\mu_p`, observation :math:`\mu_p`, control :math:`\mu_{\mathrm{ctrl}}`
and Systema reference :math:`r` (the mean of the training perturbations' centroids):

- ``pearson``: :math:`\mathrm{corr}_g(\hat\mu_p, \mu_p)`;
- ``pearson_delta`` (all genes), ``pearson_delta_de`` (DE genes) and ``pearson_delta_top_change`` (the genes
  with the largest observed change): :math:`\mathrm{corr}_g(\hat\mu_p-\mu_{\mathrm{ctrl}},\ \mu_p-\mu_{\mathrm{ctrl}})`;
- ``systema_pearson_delta`` (all genes), ``systema_pearson_delta_de`` (DE genes) and
  ``systema_pearson_delta_off`` (all genes but the condition's own targets): the same with :math:`r` in place of
  the control.
"""

from __future__ import annotations

import numpy as np

#: vectors whose spread is below this are constant up to float32 storage of log-scale predictions
_CONST_TOL = 1e-5


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; NaN when either vector is (numerically) constant or has fewer than 2 values.

    Not :func:`scipy.stats.pearsonr` or :func:`numpy.corrcoef`: they return NaN (with a warning) only for exactly
    constant input, while a prediction stored as float32 on the log scale is constant up to ``1e-5`` (e.g. the
    control mean's change), where their correlation is noise. Here such vectors give NaN, and the result is clipped
    to [-1, 1].
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.size < 2 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return np.nan
    a = a - a.mean()
    b = b - b.mean()
    if np.abs(a).max() <= _CONST_TOL or np.abs(b).max() <= _CONST_TOL:
        return np.nan
    return float(np.clip((a @ b) / np.sqrt((a @ a) * (b @ b)), -1.0, 1.0))


def _pearson_metrics(
    yhat: np.ndarray, y: np.ndarray, ctrl: np.ndarray, de: np.ndarray, n_de_genes: int
) -> dict[str, float]:
    """``pearson``, ``pearson_delta``, ``pearson_delta_de`` and ``pearson_delta_top_change`` of one condition.

    Parameters
    ----------
    yhat, y, ctrl
        Predicted, observed and control log pseudobulk (genes).
    de
        Positions of the condition's DE genes (empty: the DE metric is NaN).
    n_de_genes
        Number of genes with the largest observed change for ``pearson_delta_top_change``.

    Returns
    -------
    The four metrics by name.
    """
    dp, do = yhat - ctrl, y - ctrl
    top = np.argsort(-np.abs(do), kind="stable")[: min(n_de_genes, len(do))]
    return {
        "pearson": _pearson(yhat, y),
        "pearson_delta": _pearson(dp, do),
        "pearson_delta_de": _pearson(dp[de], do[de]) if len(de) else np.nan,
        "pearson_delta_top_change": _pearson(dp[top], do[top]),
    }


def _systema_metrics(
    yhat: np.ndarray, y: np.ndarray, ref: np.ndarray | None, de: np.ndarray, off: np.ndarray
) -> dict[str, float]:
    """``systema_pearson_delta``, ``systema_pearson_delta_de`` and ``systema_pearson_delta_off`` of one condition.

    Parameters
    ----------
    yhat, y
        Predicted and observed log pseudobulk (genes).
    ref
        The Systema reference (genes); ``None`` makes every metric NaN.
    de
        Positions of the condition's DE genes.
    off
        Mask of the genes that are not the condition's own targets.

    Returns
    -------
    The three metrics by name.
    """
    return {
        "systema_pearson_delta": _pearson(yhat - ref, y - ref) if ref is not None else np.nan,
        "systema_pearson_delta_de": (
            _pearson(yhat[de] - ref[de], y[de] - ref[de]) if (ref is not None and len(de)) else np.nan
        ),
        "systema_pearson_delta_off": (_pearson((yhat - ref)[off], (y - ref)[off]) if ref is not None else np.nan),
    }
