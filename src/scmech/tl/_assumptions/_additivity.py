r"""Additivity: a combination's effect is the sum of its singles' effects.

Per combination whose singles and controls are observed in the same contexts, the genetic interaction
:math:`I = \bar y_{A+B} - \bar y_A - \bar y_B + \bar y_\varnothing` (per context, summed in squares over
contexts) is compared with its noise floor, the mean squared half-difference of the interaction over random
splits of each group into halves. The effect is :math:`\lVert I\rVert/\sqrt N` (1 = additive within noise).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ._data import _contexts
from ._registry import _MIN_CELLS, HOLDS, VIOLATED, _cannot, _fmt, _row
from ._stats import _bootstrap_design, _label_design, _per_replicate, _recentred_interval

if TYPE_CHECKING:
    from scmech.data._design import PerturbationDesign

    from ._data import _Data

_A = "additivity"

#: a statistic of replicates: counts, sums and sums of squares per group -> one array per replicate
_Statistic = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _interaction_stat(data: _Data, coef: np.ndarray, n_ctx: int) -> _Statistic:
    """Statistic of replicates: the interaction contrast ``coef`` per context (replicates x contexts x genes)."""

    def stat(n: np.ndarray, s: np.ndarray, q: np.ndarray) -> np.ndarray:
        pb, _ = data.pseudobulk(n, s, q)
        pb = pb.reshape(pb.shape[0], n_ctx, len(coef), -1)
        return np.einsum("j,rcjg->rcg", coef, pb)

    return stat


def _check_additivity(
    data: _Data, keys: dict[str, str | None], rng: np.random.Generator, n_resamples: int, alpha: float
) -> list[dict[str, Any]]:
    """Rows of the additivity check, one per combination.

    Parameters
    ----------
    data
        The screen.
    keys
        The ``obs`` keys of the design (unused; the same signature as the other checks).
    rng
        Generator of the random splits, then of the bootstrap resamples.
    n_resamples
        Number of random splits and of bootstrap resamples.
    alpha
        Significance level; the intervals cover ``1 - alpha``.

    Returns
    -------
    The result rows.
    """
    pert = data.design.perturbation
    combos = sorted({lab for lab in pert.labels[pert.fit_mask] if len(pert.condition_targets.get(lab, ())) >= 2})
    if not combos:
        return [_row(_A, "combinations", verdict=_cannot("no combinations in the screen"))]
    contexts = _contexts(data)
    return [_check_combination(data, combo, contexts, rng, n_resamples, alpha) for combo in combos]


def _check_combination(
    data: _Data,
    combo: str,
    contexts: list[tuple[str, np.ndarray]],
    rng: np.random.Generator,
    n_resamples: int,
    alpha: float,
) -> dict[str, Any]:
    """Row of one combination: its interaction norm over the split-half noise, with a bootstrap interval."""
    pert = data.design.perturbation
    targets = pert.condition_targets[combo]
    parts_label = [combo, *targets, pert.control_label]
    coef = np.array([1.0] + [-1.0] * len(targets) + [len(targets) - 1.0])
    usable = _usable_contexts(pert, parts_label, contexts)
    if not usable:
        return _row(_A, combo, verdict=_cannot(_why_untestable(pert, targets)))
    cells, codes, bounds = _stack_groups(usable)
    n_groups = len(usable) * len(parts_label)
    inter = _interaction_stat(data, coef, len(usable))

    def sq_norm(n: np.ndarray, s: np.ndarray, q: np.ndarray) -> np.ndarray:
        return (inter(n, s, q) ** 2).sum(axis=(1, 2))

    obs_sq = float(sq_norm(*[x[None] for x in data.moments(cells, codes, n_groups)])[0])
    null_sq = _split_half_noise(data, cells, codes, bounds, n_groups, inter, rng, n_resamples)
    noise = float(np.mean(null_sq))
    ratio = float(np.sqrt(obs_sq / noise)) if noise > 0 else np.nan
    p_value = float((1.0 + np.sum(null_sq >= obs_sq)) / (1.0 + n_resamples))
    # a bootstrap replicate carries one more round of noise: remove it before taking the ratio
    b_sq = _per_replicate(data, cells, _bootstrap_design(codes, n_groups, n_resamples, rng), n_groups, sq_norm)
    boot = np.sqrt(np.maximum(b_sq - noise, 0.0) / noise) if noise > 0 else np.full(n_resamples, np.nan)
    lo, hi = _recentred_interval(ratio, boot, alpha)
    violated = p_value < alpha and lo > 1.0
    where = f" in {len(usable)} contexts" if len(usable) > 1 else ""
    detail = (
        f"|observed - sum of singles| is {_fmt(ratio)} x its sampling noise{where} (1 = additive within "
        f"noise; split-half p = {_fmt(p_value, 3)})"
    )
    return _row(
        _A,
        combo,
        effect=ratio,
        ci_low=max(lo, 0.0),
        ci_high=hi,
        p_value=p_value,
        n_cells=len(cells),
        verdict=VIOLATED if violated else HOLDS,
        detail=detail,
    )


def _usable_contexts(
    pert: PerturbationDesign, parts_label: list[str], contexts: list[tuple[str, np.ndarray]]
) -> list[tuple[str, list[np.ndarray]]]:
    """Contexts with at least ``_MIN_CELLS`` cells of every label in ``parts_label``, with those cells."""
    usable = []
    for context, cmask in contexts:
        groups = [np.flatnonzero((pert.labels == lab) & cmask) for lab in parts_label]
        if all(len(g) >= _MIN_CELLS for g in groups):
            usable.append((context, groups))
    return usable


def _why_untestable(pert: PerturbationDesign, targets: tuple[str, ...]) -> str:
    """Why a combination cannot be tested: a single is not observed, or no context has all the groups."""
    missing = [t for t in targets if not ((pert.labels == t) & pert.fit_mask).any()]
    if missing:
        return f"single(s) {missing} not observed"
    return f"no context with >= {_MIN_CELLS} cells of the combination, each single and the controls"


def _stack_groups(
    usable: list[tuple[str, list[np.ndarray]]],
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Cells of all groups of all contexts in one array, their group codes and each group's ``(start, stop)``."""
    all_cells, all_codes, bounds = [], [], []
    offset = 0
    for ci, (_, groups) in enumerate(usable):
        k = len(groups)
        for j, g in enumerate(groups):
            all_cells.append(g)
            all_codes.append(np.full(len(g), ci * k + j))
            bounds.append((offset, offset + len(g)))
            offset += len(g)
    return np.concatenate(all_cells), np.concatenate(all_codes), bounds


def _split_half_noise(
    data: _Data,
    cells: np.ndarray,
    codes: np.ndarray,
    bounds: list[tuple[int, int]],
    n_groups: int,
    inter: _Statistic,
    rng: np.random.Generator,
    n_resamples: int,
) -> np.ndarray:
    """Squared norms of the half-differences of the interaction over random splits of each group into halves.

    ``(I_1 - I_2) / 2`` has the sampling variance of the full-data interaction, so their mean is its noise floor.
    """
    half = np.zeros((n_resamples, len(cells)), dtype=bool)
    for lo_, hi_ in bounds:
        m = hi_ - lo_
        order = np.argsort(rng.random((n_resamples, m)), axis=1)
        half[:, lo_:hi_] = order < m // 2
    both = np.where(half, codes[None, :], codes[None, :] + n_groups)  # rows: first half, then second half

    def half_diff(n: np.ndarray, s: np.ndarray, q: np.ndarray) -> np.ndarray:
        i1 = inter(n[:, :n_groups], s[:, :n_groups], q[:, :n_groups])
        i2 = inter(n[:, n_groups:], s[:, n_groups:], q[:, n_groups:])
        return (((i1 - i2) / 2) ** 2).sum(axis=(1, 2))

    return _per_replicate(data, cells, _label_design(both, 2 * n_groups), 2 * n_groups, half_diff)
