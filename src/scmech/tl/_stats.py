r"""Statistics shared by the tools: the re-centred bootstrap interval and the normal log-density.

Both are written here rather than taken from scipy:

- :func:`scipy.stats.bootstrap` resamples a statistic of independent observations; the tools resample cells within
  groups (and, in the error decomposition, re-split them), so they produce their replicates themselves and need only
  the interval from them;
- :func:`scipy.stats.norm.logpdf` evaluates the same formula with more overhead per call (the EM fits call it twice
  per iteration) and in another order, whose last bits moved the assumption checks' reported fractions by up to
  1e-7 through the EM's relative stopping rule.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["norm_logpdf", "recentred_interval"]

_LOG_2PI = float(np.log(2 * np.pi))


def recentred_interval(
    estimate: float | np.ndarray,
    boot: np.ndarray,
    alpha: float,
    *,
    centre: Literal["median", "mean"],
) -> tuple[float | np.ndarray, float | np.ndarray]:
    r"""Percentile interval of bootstrap replicates, shifted so that their centre sits on the estimate.

    Resampled cells carry the data's sampling noise once more, which shifts many estimators (a variance component
    by about :math:`\overline{\sigma^2_{\mathrm{cell}}/n}`); the spread of the replicates is therefore used around
    the point estimate, :math:`[\hat\theta + (q_{\alpha/2} - c),\ \hat\theta + (q_{1-\alpha/2} - c)]`.

    Parameters
    ----------
    estimate
        The statistic on the data (a number, or an array matching ``boot``'s trailing dimensions).
    boot
        Its bootstrap replicates along axis 0.
    alpha
        The interval covers ``1 - alpha``.
    centre
        The replicates' centre :math:`c`: ``"median"`` for bounded, skewed statistics (the assumption checks'
        fractions and ratios, whose replicates pile up at a bound), ``"mean"`` for the error decomposition's
        variance components (their shift under resampling is a shift of the mean).

    Returns
    -------
    ``(low, high)``, shaped like ``estimate``.
    """
    boot = np.asarray(boot, dtype=np.float64)
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2], axis=0)
    c = np.median(boot, axis=0) if centre == "median" else boot.mean(axis=0)
    return estimate + (lo - c), estimate + (hi - c)


def norm_logpdf(x: np.ndarray, mean: float | np.ndarray, sd: float | np.ndarray) -> np.ndarray:
    r"""Log-density of :math:`N(\mu, \sigma^2)` at ``x`` (broadcast).

    Parameters
    ----------
    x
        Where to evaluate it.
    mean
        :math:`\mu`.
    sd
        :math:`\sigma`.

    Returns
    -------
    The log-densities, broadcast over the arguments.
    """
    return -0.5 * ((x - mean) / sd) ** 2 - np.log(sd) - 0.5 * _LOG_2PI
