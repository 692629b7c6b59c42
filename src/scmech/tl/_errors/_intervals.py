r"""Bootstrap intervals of the error components and the variance summaries.

Cells are resampled with replacement within each (condition, batch) group, the whole estimate (split variances,
variance terms, components) is recomputed on each replicate, and the percentile interval of the replicates is
re-centred on the point estimate. The batches themselves are fixed, so the intervals do not include the
uncertainty of :math:`\sigma^2_{\mathrm{batch}}` about a population of batches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from scmech.tl._stats import recentred_interval

from ._components import COMPONENTS, _summaries
from ._variance import _variance_summary

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._setup import _Setup


def _resample(setup: _Setup, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap: cells drawn with replacement within each (condition, batch) group (members sorted by group)."""
    n = np.bincount(setup.code, minlength=setup.data.n_groups)
    starts = np.concatenate([[0], np.cumsum(n)[:-1]])
    pos = starts[setup.code] + np.floor(rng.random(setup.code.size) * n[setup.code]).astype(np.int64)
    return setup.cells[pos]


def _interval(estimate: np.ndarray, boot: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of the replicates, re-centred on the estimate by their mean.

    :func:`scmech.tl._stats.recentred_interval` with ``alpha = 1 - level`` and the mean as the centre.
    """
    return recentred_interval(estimate, boot, 1 - level, centre="mean")


def _bootstrap(
    replicate: Callable[[np.ndarray, np.random.Generator, int], tuple[Any, dict[str, Any], dict[str, np.ndarray]]],
    setup: _Setup,
    rng: np.random.Generator,
    n_bootstrap: int,
    n_splits: int,
    expressed: np.ndarray,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Component summaries and variance summaries of ``n_bootstrap`` replicates.

    Parameters
    ----------
    replicate
        ``replicate(cells, rng, n_splits)`` returns the statistics, variance terms and components of one pass.
    setup
        The decomposition's setup (whose cells are resampled).
    rng
        Random generator of the resampling and of the replicates' splits.
    n_bootstrap
        Number of replicates.
    n_splits
        Half splits per group in every replicate.
    expressed
        Genes that enter the variance summaries.

    Returns
    -------
    Lists of per-replicate component summaries (perturbations x components) and variance summaries.
    """
    boot_vals, boot_var = [], []
    for _ in range(int(n_bootstrap)):
        _, var_b, comp_b = replicate(_resample(setup, rng), rng, n_splits)
        boot_vals.append(_summaries(comp_b))
        boot_var.append(_variance_summary(var_b, expressed))
    return boot_vals, boot_var


def _bootstrap_intervals(
    values: np.ndarray,
    vsum: np.ndarray,
    boot_vals: list[np.ndarray],
    boot_var: list[np.ndarray],
    comp: dict[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lower and upper bounds of the components and of the variance summaries (NaN without replicates).

    Bounds of the non-negative terms (all components except ``model``, and the variances) are clipped at 0.
    """
    if not boot_vals:
        lo = hi = np.full_like(values, np.nan)
        vlo = vhi = np.full_like(vsum, np.nan)
        return lo, hi, vlo, vhi
    lo, hi = _interval(values, np.stack(boot_vals))
    vlo, vhi = _interval(vsum, np.stack(boot_var))
    nonneg = np.array([c != "model" for c in [*[c for c in COMPONENTS if c in comp], "total"]])
    lo = np.where(nonneg[None, :], np.maximum(lo, 0.0), lo)
    vlo = np.maximum(vlo, 0.0)
    return lo, hi, vlo, vhi
