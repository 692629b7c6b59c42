r"""Baseline steady state (A1): unedited control cells do not drift over time.

Control cells are grouped by time point (within batches when ``batch_key`` is given, so that batch effects
drop out) or, without ``time_key``, by batch, and compared by the stratified F of :mod:`._ftest`: ``F = 1``
when the groups differ by sampling noise only. One row per medium.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ._ftest import _comparable_strata, _f_test
from ._registry import _MIN_CELLS, HOLDS, VIOLATED, _cannot, _row, _time_label
from ._stats import _drop_small

if TYPE_CHECKING:
    from ._data import _Data

_A = "baseline_steady_state"


def _check_baseline(
    data: _Data, keys: dict[str, str | None], rng: np.random.Generator, n_resamples: int, alpha: float
) -> list[dict[str, Any]]:
    """Rows of the baseline steady-state check, one per medium of the controls.

    Parameters
    ----------
    data
        The screen.
    keys
        The ``obs`` keys of the design (``"time"``, ``"batch"``, ...), for the details.
    rng
        Generator of the permutations and bootstrap resamples.
    n_resamples
        Number of permutations and of bootstrap resamples.
    alpha
        Significance level; the intervals cover ``1 - alpha``.

    Returns
    -------
    The result rows.
    """
    ctrl = data.design.perturbation.is_control
    if data.time is None and data.batch is None:
        why = "no time_key or batch_key: controls were read out once, so a drift cannot be seen"
        return [_row(_A, "controls", verdict=_cannot(why), n_cells=int(ctrl.sum()))]
    by_time = data.time is not None and len(np.unique(data.time[ctrl])) > 1
    if not by_time and data.batch is None:
        why = f"controls at only one time point of obs[{keys['time']!r}] and no batch_key"
        return [_row(_A, "controls", verdict=_cannot(why), n_cells=int(ctrl.sum()))]
    media_groups = [("controls", np.ones_like(ctrl))]
    if data.media is not None:
        media_groups = [(f"controls in {m}", data.media == m) for m in pd.unique(data.media[ctrl])]
    return [
        _check_medium(data, keys, subject, ctrl & mmask, by_time, rng, n_resamples, alpha)
        for subject, mmask in media_groups
    ]


def _control_groups(
    data: _Data, keys: dict[str, str | None], sel: np.ndarray, by_time: bool
) -> tuple[np.ndarray, np.ndarray, str]:
    """Group (time point or batch) and stratum (batch or none) of the selected controls, and what the groups are."""
    if by_time:
        group = np.array([_time_label(t) for t in data.time[sel]], dtype=object)
        stratum = data.batch[sel] if data.batch is not None else np.zeros(int(sel.sum()), dtype=int)
        return group, stratum, f"time points of obs[{keys['time']!r}]"
    return data.batch[sel], np.zeros(int(sel.sum()), dtype=int), f"batches of obs[{keys['batch']!r}]"


def _check_medium(
    data: _Data,
    keys: dict[str, str | None],
    subject: str,
    sel: np.ndarray,
    by_time: bool,
    rng: np.random.Generator,
    n_resamples: int,
    alpha: float,
) -> dict[str, Any]:
    """Row of the controls in ``sel`` (a boolean mask): F test between their time points (or batches)."""
    group, stratum, what = _control_groups(data, keys, sel, by_time)
    keep, small = _drop_small(pd.Series(group).astype(str) + "|" + pd.Series(stratum).astype(str), _MIN_CELLS)
    cells = np.flatnonzero(sel)[keep]
    group, stratum = group[keep], np.asarray(stratum)[keep]
    n_groups = len(pd.unique(group))
    # strata (batches) in which at least two groups (time points) have controls
    use = _comparable_strata(group, stratum)
    if n_groups < 2 or not use.any():
        return _row(_A, subject, verdict=_cannot(_why_untestable(keys, n_groups, what)), n_cells=int(sel.sum()))
    cells, group, stratum = cells[use], group[use], stratum[use]
    f, lo, hi, p = _f_test(data, cells, group, stratum, rng, n_resamples, alpha)
    detail = _detail(group, n_groups, what, by_time, data.batch is not None, small)
    verdict = VIOLATED if p < alpha and lo > 1.0 else HOLDS
    return _row(
        _A, subject, effect=f, ci_low=lo, ci_high=hi, p_value=p, n_cells=len(cells), verdict=verdict, detail=detail
    )


def _why_untestable(keys: dict[str, str | None], n_groups: int, what: str) -> str:
    """Why the controls cannot be compared: a single group, or no batch that holds two time points."""
    if n_groups < 2:
        per = f" per batch of obs[{keys['batch']!r}]" if keys.get("batch") else ""
        return (
            f"controls (>= {_MIN_CELLS} cells{per}) in only {n_groups} of the {what}: a group is compared only where "
            f"{_MIN_CELLS} or more of its control cells share {'a batch' if per else 'it'}"
        )
    return (
        f"no batch of obs[{keys['batch']!r}] holds controls at two {what.split(' of ')[0]}: time and "
        "batch are confounded"
    )


def _detail(group: np.ndarray, n_groups: int, what: str, by_time: bool, has_batch: bool, small: list[str]) -> str:
    """Plain-language detail: which groups were compared, how, and what a batch comparison cannot tell."""
    groups_txt = ", ".join(str(g) for g in sorted(pd.unique(group), key=str)[:6])
    detail = f"controls compared across {n_groups} {what} ({groups_txt}"
    detail += ", ...)" if n_groups > 6 else ")"
    if by_time and has_batch:
        detail += ", within batches"
    detail += "; F = 1 when they differ by sampling noise only"
    if not by_time:
        detail += (
            "; without time points a difference between batches is a batch effect or a drift, which this "
            "check cannot tell apart"
        )
    if small:
        detail += f"; left out (< {_MIN_CELLS} cells): {len(small)} group(s)"
    return detail
