r"""Anchoring: correct the model's mean predictions by its error on what was observed in training.

The model's read-out :math:`m_p` of a condition is corrected in log-normalised space by observed training
pseudobulks :math:`y`, so that each simple baseline is nested in the prediction and the model supplies what
the baseline cannot. One plan per predicted row, chosen in this order:

:class:`Observed`
    The condition was observed in training in its context: :math:`m_p + w (y_p - m_p)`.
:class:`Combination`
    Every single of a combination was observed in the context: the additive sum of the observed singles
    :math:`A = \sum_k y_k - (n-1) y_\varnothing` plus the model's interaction
    :math:`I = m_p - \sum_k m_k + (n-1) m_\varnothing`, scaled by the gain :math:`\kappa_I \in [0, 1]` that
    the training combinations bear out.
:class:`TimeNeighbours`
    (dynamic) The perturbation was observed at other read-out times under the same medium protocol: the
    model's error there, interpolated in time.
:class:`OtherMedia`
    The perturbation was observed at the same time under other medium protocols: its effect there is
    carried over as far as the training targets observed in both media show that it carries.
:class:`UnseenTarget`
    A single target without training cells: the random-effects mean of the training targets' observations (each
    weighed by its precision, so that a target observed in a handful of cells does not carry its noise into every
    prediction) plus the model's change specific to the target, measured from its read-out of the class's mean
    operator.
:class:`ControlLevel`
    Any other condition in a context whose controls were observed: :math:`m_p + w (y_\varnothing -
    m_\varnothing)`.

Each correction :math:`c_g` is weighed per gene against the sampling noise :math:`v_g` of the pseudobulks it
uses (:func:`~scmech.model._weights.shrinkage`). The gains of combinations and media are fitted on the training
observations (:mod:`scmech.model._calibration`). This module knows no model: plans name the read-outs they need
as :class:`~scmech.model._protocols.Protocol` objects and get them back as arrays. Choosing each row's plan and
applying the plans to many rows is :mod:`scmech.model._anchor_planning`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ._intervals import conformal_bounds, jackknife_residuals
from ._observations import Observations, ObservedPseudobulk, log_pseudobulk
from ._observations import _rows as _rows  # re-exported: the training samples pseudobulks with it
from ._protocols import CLASS_REFERENCE, Context, Protocol
from ._weights import member_mean, random_effects_weights, shrinkage, without_own_genes

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "AnchorPlan",
    "Combination",
    "ControlLevel",
    "ObservedPseudobulk",
    "Observations",
    "Observed",
    "OtherMedia",
    "SharedCorrection",
    "TimeNeighbours",
    "UnseenTarget",
    "log_pseudobulk",
    "member_weights",
    "observed_interaction",
]


def _value(o: ObservedPseudobulk) -> np.ndarray:
    return np.asarray(o.value, dtype=np.float64)


def _var(o: ObservedPseudobulk) -> np.ndarray:
    return np.asarray(o.var, dtype=np.float64)


def member_weights(values: np.ndarray, var: np.ndarray, own_genes: tuple[tuple[int, ...], ...] = ()) -> np.ndarray:
    """Weights (members x genes) of the shared response: random-effects weights, each member left out at its genes.

    :func:`~scmech.model._weights.random_effects_weights` over the members' observations (``values`` and their
    sampling variances ``var``, members x genes), then
    :func:`~scmech.model._weights.without_own_genes` (no member is left out when ``own_genes`` is empty).
    """
    w = random_effects_weights(values, var)
    n_genes = np.asarray(values).shape[1]
    if not any(own_genes):
        return np.repeat(w[:, None], n_genes, axis=1)
    return without_own_genes(w, own_genes, n_genes)


def observed_interaction(obs: Observations, label: str, ctx: Context) -> tuple[np.ndarray, np.ndarray] | None:
    r"""Observed interaction of a training combination and its sampling variance, or ``None``.

    :math:`I = y_p - \sum_k y_k + (n - 1) y_\varnothing`: how far the combination ``label`` strayed in ``ctx`` from
    its observed singles added. ``None`` for a single, or where a single or the controls were not observed there.
    """
    targets = obs.targets.get(label, ())
    y, y0 = obs.get(label, ctx), obs.control(ctx)
    if len(targets) < 2 or y is None or y0 is None or not all(obs.get(t, ctx) is not None for t in targets):
        return None
    n = len(targets)
    singles = [obs.get(t, ctx) for t in targets]
    value = _value(y) - sum(_value(o) for o in singles) + (n - 1) * _value(y0)
    var = _var(y) + sum(_var(o) for o in singles) + (n - 1) ** 2 * _var(y0)
    return value, var


# ---------------------------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class AnchorPlan:
    """How one predicted row is anchored: the read-outs it needs and how it combines them with observations."""

    description: ClassVar[str] = ""

    def needs(self, row: Protocol, obs: Observations) -> list[Protocol]:
        """Model read-outs (besides the row itself) that the plan uses."""
        return []

    def apply(self, row: Protocol, read: Callable, obs: Observations) -> tuple[np.ndarray, np.ndarray]:
        """Anchored value of ``row`` and the per-gene weights its corrections kept."""
        raise NotImplementedError

    @staticmethod
    def _weighed(base: np.ndarray, *corrections: tuple[np.ndarray, np.ndarray | None]) -> tuple:
        """Add to ``base`` each independent correction, weighed against its own noise."""
        total, weights = AnchorPlan._weighed_sum(*corrections)
        return base + total, weights

    @staticmethod
    def _weighed_sum(*corrections: tuple[np.ndarray, np.ndarray | None]) -> tuple:
        """Sum of the corrections, each weighed against its own noise, and the weights."""
        weights = [shrinkage(c, v) for c, v in corrections]
        total = sum(w * c for w, (c, _) in zip(weights, corrections, strict=True))
        return total, np.concatenate(weights) if weights else np.ones(0)


@dataclass(frozen=True)
class SharedCorrection(AnchorPlan):
    """A plan whose correction depends on the plan alone, not on the row: rows with equal plans share it.

    Its :meth:`needs` depend on the plan alone too: a caller lists them once per distinct plan.

    ``apply`` is :meth:`base` plus the :meth:`offset` plus the weighed :meth:`corrections`; a caller anchoring
    many rows computes the offset and the weighed correction once per distinct plan (:func:`anchor_rows`): at
    genome scale thousands of rows share the controls of one context.
    """

    def base(self, row: Protocol, read: Callable, obs: Observations) -> np.ndarray | float:
        """Return the model's value of ``row`` that the correction is added to."""
        return read(row)

    def offset(self, read: Callable, obs: Observations) -> np.ndarray | float:
        """Return a term shared by the plan's rows, added as it is (not weighed)."""
        return 0.0

    def corrections(self, read: Callable, obs: Observations) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Return the independent corrections and their sampling variances."""
        raise NotImplementedError

    def shared(self, read: Callable, obs: Observations) -> tuple[np.ndarray, np.ndarray]:
        """Return the offset plus the weighed corrections, and the weights they kept."""
        total, weights = self._weighed_sum(*self.corrections(read, obs))
        return self.offset(read, obs) + total, weights

    def apply(self, row, read, obs):
        total, weights = self.shared(read, obs)
        return self.base(row, read, obs) + total, weights


@dataclass(frozen=True)
class Observed(AnchorPlan):
    """The condition was observed in training in its context: the model pulled to the observation."""

    description: ClassVar[str] = "observed"
    context: Context

    def apply(self, row, read, obs):
        y = obs.get(row.label, self.context)
        m = read(row)
        return self._weighed(m, (_value(y) - m, _var(y)))


@dataclass(frozen=True)
class ControlLevel(SharedCorrection):
    """The observed controls' level in the context plus the model's change from them."""

    description: ClassVar[str] = "observed controls of the context"
    context: Context

    def needs(self, row, obs):
        return [obs.protocol(obs.control_label, self.context)]

    def corrections(self, read, obs):
        y = obs.control(self.context)
        m_ctrl = read(obs.protocol(obs.control_label, self.context))
        return [(_value(y) - m_ctrl, _var(y))]


@dataclass(frozen=True)
class Combination(AnchorPlan):
    r"""Observed singles added, plus the share :math:`\kappa_I` of the model's interaction the data bear out.

    :math:`\hat y = m_{add} + w \odot (A - m_{add}) + \kappa_I (m_p - m_{add})` with the observed additive sum
    :math:`A = \sum_k y_k - (n-1) y_\varnothing` and the model's own additive sum :math:`m_{add}`: with
    noise-free singles (:math:`w = 1`) this is :math:`A + \kappa_I I`, so a combination starts from its observed
    singles and moves away only as far as the training combinations show the model's interaction to hold.
    """

    description: ClassVar[str] = "observed singles plus the calibrated interaction"
    context: Context

    def needs(self, row, obs):
        return [obs.protocol(t, self.context) for t in row.targets] + [obs.protocol(obs.control_label, self.context)]

    def residuals(self, obs: Observations) -> np.ndarray | None:
        """Observed interaction of each training combination of the context (combinations x genes; ``None``: none).

        How far each strayed from its observed singles added (:func:`observed_interaction`), what bounds a held-out
        combination's interval around its observed additive sum (:meth:`centre`): observations only, so a held-out
        combination's interaction is one more draw of the same kind.
        """
        rows = [observed_interaction(obs, label, ctx) for label, ctx in obs.conditions if ctx == self.context]
        rows = [r[0] for r in rows if r is not None]
        return np.stack(rows) if rows else None

    def centre(self, row: Protocol, obs: Observations) -> np.ndarray:
        """Return the observed additive sum of the row's singles, the model-free reference its interval holds for."""
        n = len(row.targets)
        return sum(_value(obs.get(t, self.context)) for t in row.targets) - (n - 1) * _value(obs.control(self.context))

    def apply(self, row, read, obs):
        n = len(row.targets)
        ys = [obs.get(t, self.context) for t in row.targets]
        y0 = obs.control(self.context)
        add_obs = sum(_value(y) for y in ys) - (n - 1) * _value(y0)
        var = sum(_var(y) for y in ys) + (n - 1) ** 2 * _var(y0)
        m_add = sum(read(obs.protocol(t, self.context)) for t in row.targets)
        m_add = m_add - (n - 1) * read(obs.protocol(obs.control_label, self.context))
        value, w = self._weighed(m_add, (add_obs - m_add, var))
        return value + obs.interaction_gain * (read(row) - m_add), w


@dataclass(frozen=True)
class UnseenTarget(SharedCorrection):
    r"""A target without training cells: the shared response of the training targets plus the model's specific change.

    :math:`\hat y_t = \sum_q \omega_q m_q + w \odot \sum_q \omega_q (y_q - m_q) + (m_t - m_{\bar v})` over the training
    targets :math:`q` (``members``) with the random-effects weights :math:`\omega_q`
    (:func:`~scmech.model._weights.random_effects_weights`): the precision-weighted mean of the training targets'
    observations, nested in the model, which supplies what is specific to :math:`t`, the change of its read-out
    :math:`m_t` (the direct knock-down of its own gene, its propagation through the learned dynamics and, where
    validated, the embedding's map) from the read-out :math:`m_{\bar v}` of the mean operator of the targets with a
    measured gene, without an own gene (:data:`~scmech.model._protocols.CLASS_REFERENCE`). The mean is the mean of the
    members' read-outs, not the read-out of their mean operator: the dynamics and the decoder are nonlinear, the
    response to an average drive is not the average response, and their difference is no information about :math:`t`.

    The weights matter where the training targets were observed with unequal precision: with equal weights a
    target of 30 cells moves every unseen prediction by its noise as much as a target of 1,000 cells moves it
    by its effect. Anchoring on every training target rather than on those of the same kind (for example those
    with a measured gene) keeps the anchor's own noise low; what a target's kind implies is the model's part. Every
    one of them, however many: a subsample would add its own noise to every unseen prediction. The mean is read with
    :func:`~scmech.model._weights.member_mean`, one matrix product, not a members x genes matrix of weights.

    A target without any prior information (``pooled``: no measured gene, no embedding) has nothing specific
    for the model to add; it is exchangeable with the training targets: anchored, it is their weighted mean.

    At a gene that a member knocks down itself (``own_genes``: each member's target genes), the mean leaves that
    member out (:func:`~scmech.model._weights.without_own_genes`): its direct knock-down is not a response that
    ``t`` shares.
    """

    description: ClassVar[str] = "shared response of the training targets plus the model's specific change"
    context: Context
    members: tuple[str, ...]
    pooled: bool = False
    own_genes: tuple[tuple[int, ...], ...] = ()

    def needs(self, row, obs):
        out = [obs.protocol(q, self.context) for q in self.members]
        return out if self.pooled else [*out, obs.protocol(CLASS_REFERENCE, self.context)]

    def base(self, row, read, obs):
        return 0.0 if self.pooled else read(row)

    def _observed(self, obs: Observations) -> tuple[np.ndarray, np.ndarray]:
        """Return the members' observed values and sampling variances (members x genes)."""
        ys = [obs.get(q, self.context) for q in self.members]
        return np.stack([_value(y) for y in ys]), np.stack([_var(y) for y in ys])

    def weights(self, obs: Observations) -> np.ndarray:
        """Weight of each member in the mean at each gene (members x genes; :func:`member_weights`)."""
        values, var = self._observed(obs)
        return member_weights(values, var, self.own_genes)

    def residuals(self, obs: Observations) -> np.ndarray:
        """Each member's observation less the weighted mean of the others (members x genes; NaN at its own genes).

        The members' jackknife residuals (:func:`~scmech.model._intervals.jackknife_residuals`) with the weights of
        the anchor (:meth:`weights`): how far each training target strays from the shared response when it is
        predicted as an unseen target is, which bounds how far the unseen target may (``predict(interval=...)``).
        """
        values, var = self._observed(obs)
        return jackknife_residuals(values, member_weights(values, var, self.own_genes))

    def bounds(self, obs: Observations, level: float, block: int = 2048) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Conformal bounds (:func:`~scmech.model._intervals.conformal_bounds`) of :meth:`residuals`, and their centre.

        The centre is the observed shared response (the members' weighted mean), the model-free reference the bounds
        hold for. Computed over blocks of ``block`` genes, so that a screen of thousands of training targets holds a
        few members x ``block`` arrays at a time, not several members x genes ones; the members' observations are
        read once.
        """
        values, var = self._observed(obs)
        w = random_effects_weights(values, var)
        n_genes = values.shape[1]
        lower, upper = np.empty(n_genes), np.empty(n_genes)
        for start in range(0, n_genes, block):
            stop = min(start + block, n_genes)
            own = tuple(tuple(g - start for g in genes if start <= g < stop) for genes in self.own_genes)
            weights = without_own_genes(w, own, stop - start)
            residuals = jackknife_residuals(values[:, start:stop], weights)
            lower[start:stop], upper[start:stop] = conformal_bounds(residuals, level)
        return lower, upper, member_mean(w, values, self.own_genes)

    def _terms(self, read, obs) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Return the offset and the correction with its variance, from one computation of the weights."""
        values, var = self._observed(obs)
        w = random_effects_weights(values, var)
        mean = member_mean(w, np.stack([read(obs.protocol(q, self.context)) for q in self.members]), self.own_genes)
        offset = mean if self.pooled else mean - read(obs.protocol(CLASS_REFERENCE, self.context))
        observed = member_mean(w, values, self.own_genes)
        return offset, (observed - mean, member_mean(w, var, self.own_genes, squared=True))

    def offset(self, read, obs):
        return self._terms(read, obs)[0]

    def corrections(self, read, obs):
        return [self._terms(read, obs)[1]]

    def shared(self, read, obs):
        offset, correction = self._terms(read, obs)
        total, weights = self._weighed_sum(correction)
        return offset + total, weights


@dataclass(frozen=True)
class TimeNeighbours(AnchorPlan):
    r"""(dynamic) The model's error at the neighbouring observed read-out times, interpolated linearly.

    :math:`m_{p,t} + (y_{\varnothing,t} - m_{\varnothing,t}) + \sum_u w_u [(y_{p,u} - y_{\varnothing,u}) -
    (m_{p,u} - m_{\varnothing,u})]` when every context's controls were observed, else on levels.
    """

    description: ClassVar[str] = "observed at neighbouring times"
    context: Context
    points: tuple[tuple[float, float], ...]
    with_controls: bool

    def _at(self, u: float) -> Context:
        return Context(self.context.media, u, self.context.switch)

    def _contexts(self) -> list[Context]:
        return [self.context, *(self._at(u) for u, _ in self.points)]

    def needs(self, row, obs):
        out = [row.at(self._at(u)) for u, _ in self.points]
        if self.with_controls:
            out += [obs.protocol(obs.control_label, c) for c in self._contexts()]
        return out

    def apply(self, row, read, obs):
        terms, corr = [], 0.0
        ctrl = {}
        if self.with_controls:
            for c in self._contexts():
                y = obs.control(c)
                ctrl[c] = (_value(y) - read(obs.protocol(obs.control_label, c)), _var(y))
            corr = ctrl[self.context][0]
            terms.append((1.0, ctrl[self.context][1]))
        for u, w in self.points:
            y = obs.get(row.label, self._at(u))
            err = _value(y) - read(row.at(self._at(u)))
            terms.append((w, _var(y)))
            if self.with_controls:
                err = err - ctrl[self._at(u)][0]
                terms.append((w, ctrl[self._at(u)][1]))
            corr = corr + w * err
        var = sum(w**2 * v for w, v in terms)
        return self._weighed(read(row), (corr, var))


@dataclass(frozen=True)
class OtherMedia(AnchorPlan):
    r"""A perturbation observed at the same time under other medium protocols (sources :math:`s`).

    With a calibration (at least 3 training targets observed both in the context :math:`C` and in a source),
    the medium's observed train mean plus what carries:

    .. math::

        \hat y_{p,C} = \bar y_C + \rho\,(y_{p,s} - \bar y_s) + \alpha\,[(m_{p,C} - \bar m_C) - (m_{p,s} - \bar m_s)],

    with :math:`\bar y, \bar m` the observed and modelled means of the training perturbations observed in
    both, and :math:`\rho, \alpha \in [0, 1]` fitted on them (averaged over sources). With :math:`\rho =
    \alpha = 0` it is the medium's train mean. Without a calibration (no perturbation observed in :math:`C`):
    :math:`m_p + w (y_{\varnothing,C} - m_{\varnothing,C}) + w' \overline{[(y_{p,s} - y_{\varnothing,s}) -
    (m_{p,s} - m_{\varnothing,s})]}`, each correction weighed against its noise.
    """

    description: ClassVar[str] = "observed in other media"
    context: Context
    sources: tuple[Context, ...]
    reference: tuple[str, ...] = ()  # the training perturbations observed in the context and every source

    def calibrated(self, obs: Observations) -> bool:
        """Whether the carry-over was calibrated on reference perturbations observed in the context and the sources."""
        return bool(self.reference) and all((self.context, s) in obs.media_carry for s in self.sources)

    def needs(self, row, obs):
        out = [row.at(s) for s in self.sources]
        if self.calibrated(obs):
            return out + [obs.protocol(q, c) for c in (self.context, *self.sources) for q in self.reference]
        out += [obs.protocol(obs.control_label, s) for s in self.sources]
        if obs.control(self.context) is not None:
            out.append(obs.protocol(obs.control_label, self.context))
        return out

    def apply(self, row, read, obs):
        if self.calibrated(obs):
            return self._apply_calibrated(row, read, obs)
        parts = []
        y0 = obs.control(self.context)
        if y0 is not None:
            parts.append((_value(y0) - read(obs.protocol(obs.control_label, self.context)), _var(y0)))
        corr, var = 0.0, 0.0
        k = len(self.sources)
        for s in self.sources:
            y, ys0 = obs.get(row.label, s), obs.control(s)
            err = (_value(y) - read(row.at(s))) - (_value(ys0) - read(obs.protocol(obs.control_label, s)))
            corr = corr + err / k
            var = var + (_var(y) + _var(ys0)) / k**2
        parts.append((corr, var))
        return self._weighed(read(row), *parts)

    def _apply_calibrated(self, row, read, obs):
        ref = self.reference

        def means(c: Context) -> tuple[np.ndarray, np.ndarray]:
            y = np.mean([_value(obs.get(q, c)) for q in ref], axis=0)
            m = np.mean([read(obs.protocol(q, c)) for q in ref], axis=0)
            return y, m

        y_c, m_c = means(self.context)
        value = 0.0
        for s in self.sources:
            rho, alpha = obs.media_carry[(self.context, s)]
            y_s, m_s = means(s)
            carried = _value(obs.get(row.label, s)) - y_s
            modulation = (read(row) - m_c) - (read(row.at(s)) - m_s)
            value = value + (y_c + rho * carried + alpha * modulation) / len(self.sources)
        return value, np.ones(len(value))
