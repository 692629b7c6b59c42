"""Choosing each predicted row's anchoring plan, and applying the plans to many rows at once.

:func:`plan_anchoring` picks, for every requested row, the plan of :mod:`scmech.model._anchoring` that its
observations allow (in the order that module lists); :func:`anchor_rows` applies the plans, computing each shared
correction once per distinct plan; :func:`anchored_control` is the control level of a context the other rows are
measured from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._anchoring import (
    AnchorPlan,
    Combination,
    ControlLevel,
    Observed,
    OtherMedia,
    SharedCorrection,
    TimeNeighbours,
    UnseenTarget,
)
from ._protocols import Context

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ._observations import Observations
    from ._protocols import Protocol

__all__ = ["anchor_rows", "anchored_control", "plan_anchoring", "row_of"]


def anchor_rows(
    plans: dict[int, AnchorPlan], rows: Sequence[Protocol], read: Callable, obs: Observations, values: np.ndarray
) -> np.ndarray:
    """Anchor ``values[i]`` of each planned row ``i`` in place; return each row's mean kept weight (NaN: none).

    Rows with equal :class:`SharedCorrection` plans share one weighed correction, computed once.

    Parameters
    ----------
    plans
        Plan of each anchored row, by row position.
    rows
        The requested protocols.
    read
        The model's read-out of a protocol (log-normalised, genes).
    obs
        The training observations.
    values
        The model's read-outs of ``rows`` (rows x genes), overwritten with the anchored values.
    """
    weights = np.full(len(rows), np.nan)
    shared: dict[AnchorPlan, tuple[np.ndarray, float]] = {}
    for i, plan in plans.items():
        if isinstance(plan, SharedCorrection):
            if plan not in shared:
                total, w = plan.shared(read, obs)
                shared[plan] = (total, float(np.mean(w)) if len(w) else np.nan)
            total, weights[i] = shared[plan]
            values[i] = plan.base(rows[i], read, obs) + total
        else:
            values[i], w = plan.apply(rows[i], read, obs)
            weights[i] = float(np.mean(w)) if len(w) else np.nan
    return weights


# ---------------------------------------------------------------------------------------------- planning
def plan_anchoring(
    rows: Sequence[Protocol],
    contexts: Sequence[Context],
    obs: Observations,
    *,
    mode: str,
    unseen: Callable[[str], tuple[str, ...] | None],
    dynamic: bool,
    genes_of: Callable[[str], tuple[int, ...]] | None = None,
) -> dict[int, AnchorPlan]:
    """Choose one plan per row (see the module docstring for the order); rows without one are left out.

    Parameters
    ----------
    rows
        The requested protocols.
    contexts
        The context of each row.
    obs
        The training observations.
    mode
        ``"auto"`` (every plan) or ``"combinations"`` (only :class:`Combination`).
    unseen
        For a target without training cells, the members of its class (training targets to anchor on) and
        whether it has no prior information (pooled); ``None`` for a target with training cells.
    dynamic
        Whether read-outs are time-resolved.
    genes_of
        Positions of a training target's own genes, which :class:`UnseenTarget` leaves it out of the mean at
        (``None``: no member is left out).
    """
    plans: dict[int, AnchorPlan] = {}
    observed_times: dict[tuple, list[float]] = {}
    if dynamic:
        for lab, ctx in obs.conditions:
            observed_times.setdefault((lab, ctx.media, ctx.switch), []).append(ctx.time)
    for i, (p, ctx) in enumerate(zip(rows, contexts, strict=True)):
        plan = _plan_row(p, ctx, obs, mode=mode, unseen=unseen, observed_times=observed_times, genes_of=genes_of)
        if plan is not None:
            plans[i] = plan
    return plans


def _plan_row(
    p: Protocol, ctx: Context, obs: Observations, *, mode, unseen, observed_times, genes_of=None
) -> AnchorPlan | None:
    if len(p.targets) >= 2 and obs.control(ctx) is not None and all(obs.get(t, ctx) for t in p.targets):
        if obs.get(p.label, ctx) is None or mode == "combinations":
            return Combination(ctx)
    if mode != "auto":
        return None
    if obs.get(p.label, ctx) is not None:
        return Observed(ctx)
    if not p.targets:
        return ControlLevel(ctx) if obs.control(ctx) is not None else None
    times = observed_times.get((p.label, ctx.media, ctx.switch))
    if times:
        return _time_plan(ctx, sorted(times), obs)
    sources = tuple(
        c for c in obs.contexts_of(p.label) if c.time == ctx.time and (c.media, c.switch) != (ctx.media, ctx.switch)
    )
    sources = tuple(s for s in sources if obs.control(s) is not None)
    if sources:
        ref = _media_reference(ctx, sources, obs)
        return OtherMedia(ctx, sources, ref)
    if len(p.targets) == 1:
        found = unseen(p.targets[0])
        if found is not None:
            members, pooled = found
            members = tuple(q for q in members if obs.get(q, ctx) is not None)
            if len(members) >= 2:
                own = tuple(genes_of(q) for q in members) if genes_of is not None else ()
                return UnseenTarget(ctx, members, pooled, own)
    return ControlLevel(ctx) if obs.control(ctx) is not None else None


def _time_plan(ctx: Context, times: list[float], obs: Observations) -> TimeNeighbours:
    t = ctx.time
    lo = max((u for u in times if u < t), default=None)
    hi = min((u for u in times if u > t), default=None)
    if lo is None or hi is None:
        points = ((hi if lo is None else lo, 1.0),)
    else:
        w = (t - lo) / (hi - lo)
        points = ((lo, 1.0 - w), (hi, w))
    needed = [ctx, *(Context(ctx.media, u, ctx.switch) for u, _ in points)]
    return TimeNeighbours(ctx, points, all(obs.control(c) is not None for c in needed))


def _media_reference(ctx: Context, sources: tuple[Context, ...], obs: Observations) -> tuple[str, ...]:
    """Training perturbations observed in ``ctx`` and every source, when each pair is calibrated."""
    if not all((ctx, s) in obs.media_carry for s in sources):
        return ()
    ref = set(obs.perturbations_in(ctx))
    for s in sources:
        ref &= set(obs.perturbations_in(s))
    return tuple(sorted(ref)) if len(ref) >= 3 else ()


def row_of(protocols: list[Protocol]) -> dict:
    """Row of each protocol's key among ``protocols`` (its first)."""
    rows: dict = {}
    for i, p in enumerate(protocols):
        rows.setdefault(p.key, i)
    return rows


def anchored_control(ctx: Context, observations: Observations, rows: dict, log_values: np.ndarray) -> np.ndarray | None:
    """Return the controls' anchored prediction in ``ctx`` (:class:`Observed`), or None.

    ``rows`` is :func:`row_of` of the read-outs ``log_values``. ``None`` where the controls were not observed in ``ctx``
    or their read-out is not among ``log_values``.
    """
    p = observations.protocol(observations.control_label, ctx)
    if observations.control(ctx) is None or p.key not in rows:
        return None
    value, _ = Observed(ctx).apply(p, lambda q: log_values[rows[q.key]], observations)
    return np.asarray(value, dtype=np.float64)
