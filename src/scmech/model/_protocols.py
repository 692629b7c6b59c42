"""Protocols: the conditions a model is asked to predict, as ordered words of perturbation, medium and time."""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from scmech.data._design import canonical_label, parse_condition

from ._persistence import persistable

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["CLASS_REFERENCE", "Context", "Protocol", "Step", "build_protocols", "protocol_from_steps"]

Step = tuple[str, Any]

#: Reserved target name: the mean latent operator of the measured training targets, without an own-gene effect.
#: An unseen target's specific change is measured from its read-out when the target is anchored; it is never a
#: target of the data and never reported.
CLASS_REFERENCE = "\x00class reference"


@persistable
@dataclass(frozen=True)
class Context:
    """Where a condition is read out: medium, read-out time and medium-switch time.

    ``time`` and ``switch`` are ``None`` in the steady-state regime (and ``switch`` when the medium holds
    throughout); times are rounded to 6 decimals so that equal read-outs compare equal.
    """

    media: str | None
    time: float | None = None
    switch: float | None = None


@dataclass(frozen=True)
class Protocol:
    """One condition to predict: targets, medium and times (perturbation at time 0).

    Parameters
    ----------
    label
        Canonical label of the perturbation (``"A+B"``, or the control label).
    targets
        Targets of the perturbation (empty for the control).
    media
        Medium at read-out (``None``: the baseline medium).
    time
        Read-out time since the perturbation (0 in the steady-state regime).
    media_time
        Time of the switch into ``media`` relative to the perturbation; NaN when the medium holds throughout.
    """

    label: str
    targets: tuple[str, ...]
    media: str | None
    time: float
    media_time: float

    @cached_property
    def key(self) -> tuple:
        """Hashable identity of the read-out (NaN switch times compare equal), without the label."""
        switch = None if not np.isfinite(self.media_time) else round(float(self.media_time), 6)
        return (self.targets, self.media, round(float(self.time), 6), switch)

    def at(self, context: Context, *, label: str | None = None, targets: tuple[str, ...] | None = None) -> Protocol:
        """Return the same perturbation (or ``targets``) read out in ``context``."""
        targets = self.targets if targets is None else targets
        return Protocol(
            label=self.label if label is None else label,
            targets=targets,
            media=context.media,
            time=0.0 if context.time is None else float(context.time),
            media_time=np.nan if context.switch is None else float(context.switch),
        )


def protocol_from_steps(
    steps: Sequence[Step], *, separator: str, control_label: str, control_labels: Sequence[str] | None = None
) -> Protocol:
    """Turn an ordered list of steps into a :class:`Protocol`.

    Steps are ``("perturb", "STAT1")``, ``("media", "stim")`` and ``("wait", 2.0)``, applied in order on a
    clock that starts at 0. The read-out is at the end. At most one perturbation and one change of medium.

    Parameters
    ----------
    steps
        The ordered steps.
    separator
        Separator of combinations in perturbation labels.
    control_label
        Label of the control (the canonical one).
    control_labels
        Every label of the controls; all of them read as the control.
    """
    controls = control_labels if control_labels is not None else control_label
    clock = 0.0
    t_pert = None
    t_media = None
    targets: tuple[str, ...] = ()
    media = None
    label = control_label
    for step in steps:
        if not (isinstance(step, tuple | list) and len(step) == 2):
            msg = (
                f"Protocol step {step!r} must be a pair like ('perturb', 'STAT1'), ('media', 'stim') or ('wait', 2.0)."
            )
            raise ValueError(msg)
        op, value = step
        if op == "wait":
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                msg = f"('wait', {value!r}) needs a number: the duration, in the units of the registered time key."
                raise TypeError(msg)
            value = float(value)
            if not np.isfinite(value) or value < 0:
                msg = f"('wait', {value}) needs a finite, non-negative duration."
                raise ValueError(msg)
            clock += value
        elif op == "perturb":
            if t_pert is not None:
                msg = "A protocol holds one ('perturb', ...) step; combine targets as 'A+B' in that step."
                raise ValueError(msg)
            t_pert = clock
            targets = parse_condition(
                str(value), separator=separator, control_label=controls, source="the protocol's ('perturb', ...) step"
            )
            label = canonical_label(targets, separator=separator, control_label=control_label)
        elif op == "media":
            if t_media is not None:
                msg = "A protocol holds at most one ('media', ...) step."
                raise ValueError(msg)
            t_media = clock
            media = str(value)
        else:
            msg = f"Unknown protocol step {op!r}; use 'perturb', 'media' or 'wait'."
            raise ValueError(msg)
    if t_pert is None:
        t_pert = 0.0
    return Protocol(
        label=label,
        targets=targets,
        media=media,
        time=clock - t_pert,
        media_time=np.nan if t_media is None else t_media - t_pert,
    )


def _protocol_list(protocol) -> list:
    """Return ``predict``'s ``protocol`` as a list of step lists (one protocol, or a list of them), refusing empties."""
    example = "[('perturb', 'STAT1'), ('wait', 2.0)]"
    if isinstance(protocol, str | bytes) or not isinstance(protocol, Iterable):
        msg = f"protocol={protocol!r} must be a list of steps like {example}, or a list of such lists."
        raise TypeError(msg)
    protocol = list(protocol)  # a generator is read once
    if len(protocol) == 0:
        msg = f"`protocol` is empty; give steps like {example}."
        raise ValueError(msg)
    first = protocol[0]
    many = isinstance(first, list | tuple) and len(first) > 0 and isinstance(first[0], list | tuple)
    plist = [list(p) if isinstance(p, list | tuple) else p for p in protocol] if many else [protocol]
    for i, steps in enumerate(plist):
        if isinstance(steps, list) and len(steps) == 0:
            msg = (
                f"protocol[{i}] is empty: each protocol of the list needs its steps, e.g. {example} (the control "
                "read out at time 0 is [('wait', 0.0)])."
            )
            raise ValueError(msg)
    return plist


def _per_condition(value, n: int, name: str) -> list:
    """One value per requested condition: a scalar is repeated, a sequence must have ``n`` values."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()  # a 0-d array is one value
    if value is None or isinstance(value, str | float | int | np.floating | np.integer):
        return [value] * n
    if not isinstance(value, Iterable):
        msg = f"`{name}`={value!r} must be one value or a list of one value per perturbation."
        raise TypeError(msg)
    value = list(value)
    if len(value) != n:
        msg = f"`{name}` has {len(value)} values for {n} perturbations; give one value or one per perturbation."
        raise ValueError(msg)
    return value


def _labels(perturbations, conditions: Sequence[str], separator: str, control_label: str) -> list:
    """Return the requested labels as a list: every registered condition for ``None``, one label, or any iterable."""
    if perturbations is None:
        return list(conditions)
    if isinstance(perturbations, str):
        return [perturbations]
    if not isinstance(perturbations, Iterable):
        msg = (
            f"perturbations={perturbations!r} must be a label or a list of labels (e.g. ['STAT1', "
            f"'STAT1{separator}JAK2', {control_label!r}])."
        )
        raise TypeError(msg)
    return list(perturbations)  # a generator or a Series is read once, by position


def build_protocols(
    perturbations,
    media,
    time,
    media_time,
    protocol,
    *,
    separator: str,
    control_label: str,
    conditions: Sequence[str],
    dynamic: bool,
    control_labels: Sequence[str] | None = None,
) -> list[Protocol]:
    """Protocols of a ``predict`` request, from either ``protocol`` steps or labels with media and times.

    Parameters
    ----------
    perturbations, media, time, media_time, protocol
        The arguments of :meth:`~scmech.model.SemiMechVI.predict`.
    separator
        Separator of combinations.
    control_label
        Label of the control.
    conditions
        The registered conditions, predicted when ``perturbations`` and ``protocol`` are ``None``.
    dynamic
        Whether the model reads out time-resolved protocols (else steady states).
    control_labels
        Every label of the controls (``control_label`` is the canonical one); all of them read as the control.
    """
    controls = control_labels if control_labels is not None else control_label
    if protocol is not None:
        if perturbations is not None or time is not None or media is not None or media_time is not None:
            msg = "Pass either `protocol` or `perturbations`/`media`/`time`/`media_time`, not both."
            raise ValueError(msg)
        plist = _protocol_list(protocol)
        out = [
            protocol_from_steps(p, separator=separator, control_label=control_label, control_labels=controls)
            for p in plist
        ]
        if not dynamic and any(p.time > 0 or np.isfinite(p.media_time) for p in out):
            msg = (
                "This model reads out steady states (regime='steady_state'): 'wait' steps and media switch times "
                "have no meaning for it. Use a dynamic model (setup with a time_key) for time-resolved protocols."
            )
            raise ValueError(msg)
        return out
    perturbations = _labels(perturbations, conditions, separator, control_label)
    n = len(perturbations)
    if n == 0:
        msg = "`perturbations` is empty; name at least one condition (e.g. ['STAT1'] or the control label)."
        raise ValueError(msg)
    if not dynamic and media_time is not None:
        msg = "`media_time` applies to dynamic models; a steady-state model reads out the fixed point in `media`."
        raise ValueError(msg)
    med = _per_condition(media, n, "media")
    tim = _per_condition(time, n, "time")
    mtim = _per_condition(media_time, n, "media_time")
    out = []
    for i, (p, m, t, s) in enumerate(zip(perturbations, med, tim, mtim, strict=True)):
        if p is None or isinstance(p, float | np.floating):
            msg = (
                f"perturbations[{i}] = {p!r} is not a label; name each condition as a string (a target such as "
                f"'STAT1', a combination 'A{separator}B' or the control label {control_label!r})."
            )
            raise TypeError(msg)
        targets = parse_condition(str(p), separator=separator, control_label=controls, source=f"perturbations[{i}]")
        if dynamic and t is None:
            msg = "The model is dynamic: give the read-out `time` (since perturbation) to predict."
            raise ValueError(msg)
        if not dynamic and t is not None:
            msg = "`time` applies to dynamic models; this model reads out steady states (regime='steady_state')."
            raise ValueError(msg)
        for name, value in (("time", t), ("media_time", s)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
                msg = f"{name}={value!r} must be a number (time in the units of the registered time key)."
                raise TypeError(msg)
        tt = 0.0 if t is None else float(t)
        if not np.isfinite(tt) or tt < 0:
            msg = f"time={t!r} must be finite and >= 0 (time since perturbation)."
            raise ValueError(msg)
        ss = np.nan if s is None else float(s)
        if np.isinf(ss):
            msg = (
                f"media_time={s!r} for {p!r} is infinite: give the time of the switch into the medium (finite, in the "
                "units of the registered time key; negative: before the perturbation), or None (NaN) for cells that "
                "never switched."
            )
            raise ValueError(msg)
        if np.isfinite(ss) and m is None:
            msg = (
                f"media_time={s!r} for {p!r} without a medium: name the medium switched into at that time, "
                "e.g. media='stim', media_time=0.5."
            )
            raise ValueError(msg)
        if np.isfinite(ss) and ss > tt:
            msg = (
                f"media_time={s!r} is after the read-out time={t!r} for {p!r}: the switch would not have happened "
                f"when the cells are read out, so they would not be in {m!r}. Give media_time <= time (negative: "
                "the switch came before the perturbation)."
            )
            raise ValueError(msg)
        label = canonical_label(targets, separator=separator, control_label=control_label)
        out.append(Protocol(label, targets, None if m is None else str(m), tt, ss))
    return out
