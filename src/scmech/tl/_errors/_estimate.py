"""The point estimate of a decomposition and its bootstrap intervals.

``_replicate`` is one pass over the cells (group statistics, variance terms, components); ``_estimate``
runs it on the cells themselves and on every bootstrap replicate, and summarises both over genes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from ._components import _components, _summaries
from ._intervals import _bootstrap, _bootstrap_intervals
from ._stats import _stats
from ._variance import VAR_MEAN_THRESHOLD, _variance_summary, _variance_terms

if TYPE_CHECKING:
    from ._setup import _Setup
    from ._stats import _Stats


@dataclass
class _Estimate:
    """Point estimate with intervals: per-gene terms, and their gene means per perturbation and component."""

    st: _Stats  # group statistics of the point estimate
    var: dict[str, Any]  # per-gene variance terms (given ones included)
    comp: dict[str, np.ndarray]  # per-gene components (perturbations x genes), plus ``total``
    expressed: np.ndarray  # genes that enter the variance summaries
    values: np.ndarray  # (perturbations, components + total) means over genes
    lo: np.ndarray
    hi: np.ndarray
    vsum: np.ndarray  # (batch, cell, bio, meas) means over expressed genes
    vlo: np.ndarray
    vhi: np.ndarray


def _replicate(
    s: _Setup,
    cells: np.ndarray,
    rng: np.random.Generator,
    splits: int,
    *,
    disp: np.ndarray | None,
    override: dict[str, np.ndarray],
    target: str,
    pred: np.ndarray | None,
    pred_ctrl: np.ndarray | None,
) -> tuple[_Stats, dict[str, Any], dict[str, np.ndarray]]:
    """One pass over ``cells`` (the point estimate or a bootstrap replicate): statistics, variances, components.

    Given variance terms (``override``) replace the estimates.
    """
    st = _stats(s.data, cells, s.code, splits, rng, s.control_groups)
    var = _variance_terms(st, s.layout, s.data, disp)
    var.update(override)
    comp = _components(st, s.layout, s.data, var, target, pred, pred_ctrl, cell_given="cell" in override)
    return st, var, comp


def _estimate(
    s: _Setup,
    *,
    disp: np.ndarray | None,
    override: dict[str, np.ndarray],
    target: str,
    pred: np.ndarray | None,
    pred_ctrl: np.ndarray | None,
    counts: bool,
    n_splits: int,
    n_bootstrap: int,
    random_state: int,
) -> _Estimate:
    """Estimate the components and variance terms, then their intervals from ``n_bootstrap`` replicates.

    The arguments are those of :func:`~scmech.tl._errors.error_decomposition` after input handling; the point
    estimate and the replicates draw from two independent streams of ``random_state``.
    """
    rng_point, rng_boot = np.random.default_rng(random_state).spawn(2)
    replicate = partial(_replicate, s, disp=disp, override=override, target=target, pred=pred, pred_ctrl=pred_ctrl)
    st, var, comp = replicate(s.cells, rng_point, n_splits)
    expressed = var["mean"] >= VAR_MEAN_THRESHOLD if counts else np.ones(len(s.genes), dtype=bool)
    values = _summaries(comp)
    vsum = _variance_summary(var, expressed)
    boot_vals, boot_var = _bootstrap(replicate, s, rng_boot, n_bootstrap, n_splits, expressed)
    lo, hi, vlo, vhi = _bootstrap_intervals(values, vsum, boot_vals, boot_var, comp)
    return _Estimate(
        st=st, var=var, comp=comp, expressed=expressed, values=values, lo=lo, hi=hi, vsum=vsum, vlo=vlo, vhi=vhi
    )
