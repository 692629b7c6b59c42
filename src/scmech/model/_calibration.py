"""Calibrations of the anchoring on the training observations: the combination interaction and media carry-over.

Each says how far the model's own structure is borne out by what was observed in training, so that anchoring
moves a prediction away from its simple baseline only as far as the data support it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from ._anchoring import Observations, _value, observed_interaction

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._protocols import Context, Protocol

__all__ = ["ModelFreeCarry", "fit_interaction_gain", "fit_media_carry", "media_carry_residuals", "model_free_carry"]


def fit_media_carry(
    obs: Observations, read: Callable[[Protocol], np.ndarray], *, min_targets: int = 3
) -> dict[tuple[Context, Context], tuple[float, float]]:
    r"""Calibrate how far a perturbation's effect carries from one medium protocol to another.

    For each ordered pair of contexts at the same read-out time with at least ``min_targets`` training
    perturbations observed in both, the specific changes :math:`e_{q,C} = y_{q,C} - \bar y_C` are regressed on
    the carried change :math:`y_{q,s} - \bar y_s` and the model's change of it between the two media,
    :math:`(m_{q,C} - \bar m_C) - (m_{q,s} - \bar m_s)`, by least squares summed over genes and targets; both
    coefficients are clipped to :math:`[0, 1]` (a coefficient that is not borne out is dropped, one above 1 is
    not extrapolated).

    Parameters
    ----------
    obs
        The training observations.
    read
        The model's read-out of a protocol (log-normalised mean).
    min_targets
        Fewest shared targets for a calibration.
    """
    contexts = sorted({ctx for _, ctx in obs.conditions}, key=repr)
    out = {}
    for c in contexts:
        for s in contexts:
            if s == c or s.time != c.time:
                continue
            both = sorted(set(obs.perturbations_in(c)) & set(obs.perturbations_in(s)))
            if len(both) < min_targets:
                continue
            y_c = np.stack([_value(obs.get(q, c)) for q in both])
            y_s = np.stack([_value(obs.get(q, s)) for q in both])
            m_c = np.stack([read(obs.protocol(q, c)) for q in both])
            m_s = np.stack([read(obs.protocol(q, s)) for q in both])
            target = y_c - y_c.mean(0)
            carried = y_s - y_s.mean(0)
            modulation = (m_c - m_c.mean(0)) - (m_s - m_s.mean(0))
            out[(c, s)] = _two_coefficients(target, carried, modulation)
    return out


def media_carry_residuals(
    obs: Observations,
    context: Context,
    sources: tuple[Context, ...],
    reference: tuple[str, ...],
    *,
    min_targets: int = 3,
) -> np.ndarray | None:
    r"""How far each reference perturbation strays from the model-free carry-over when it is predicted without itself.

    The model-free carry-over of a perturbation :math:`p` into the context :math:`C` from the sources :math:`s` is
    :class:`ModelFreeCarry`: :math:`\bar y_C + \tilde\rho\,(y_{p,s} - \bar y_s)` over the reference perturbations
    observed in :math:`C` and every source, :math:`\tilde\rho \in [0, 1]` the least-squares share of their carried
    changes (averaged over sources). Each reference perturbation :math:`q` is predicted by it from the others (the
    means and :math:`\tilde\rho` without :math:`q`), and its residual :math:`y_{q,C} - \hat y_{q,C}` is how far a
    perturbation exchangeable with them may lie from that centre: the jackknife residuals ``predict(interval=...)``
    takes the conformal bounds of. The model's modulation (the :math:`\alpha` term of
    :class:`~scmech.model._anchoring.OtherMedia`) is left out: the model was fitted to each reference perturbation's
    cells in :math:`C`, so its read-out there would make their residuals smaller than a held-out one's; the bounds
    are widened to hold the prediction instead, as for the other plans.

    Parameters
    ----------
    obs
        The training observations.
    context, sources, reference
        The plan's context, its source contexts and its reference perturbations.
    min_targets
        Fewest perturbations each leave-one-out fit rests on (as :func:`fit_media_carry`).

    Returns
    -------
    The residuals (reference perturbations x genes), or ``None`` with fewer than ``min_targets + 1`` of them.
    """
    if len(reference) < min_targets + 1:
        return None
    return model_free_carry(obs, context, sources, reference).residuals(min_targets)


class ModelFreeCarry(NamedTuple):
    r"""The model-free carry-over into a context, fitted once on its reference perturbations.

    ``mean`` is their mean in the context; ``sources`` holds, per source, their mean there and the least-squares
    share :math:`\tilde\rho \in [0, 1]` of their carried changes. :meth:`centre` applies it to a perturbation.
    """

    mean: np.ndarray
    sources: tuple[tuple[Context, np.ndarray, float], ...]
    #: the reference perturbations' observations in the context, and in each source (read once, for the residuals)
    y_c: np.ndarray
    y_s: tuple[np.ndarray, ...]

    def centre(self, obs: Observations, label: str) -> np.ndarray:
        """Return the model-free carry-over of ``label`` (:func:`media_carry_residuals`' centre)."""
        return _apply_carry(
            self.mean, [(m, rho) for _, m, rho in self.sources], [_value(obs.get(label, s)) for s, _, _ in self.sources]
        )

    def residuals(self, min_targets: int = 3) -> np.ndarray | None:
        """Each reference perturbation less its carry-over fitted without it (:func:`media_carry_residuals`)."""
        y_c, y_s = self.y_c, self.y_s
        if len(y_c) < min_targets + 1:
            return None
        out = np.empty_like(y_c)
        for k in range(len(y_c)):
            rest = np.arange(len(y_c)) != k
            out[k] = y_c[k] - _apply_carry(*_fit_carry(y_c[rest], [y[rest] for y in y_s]), [y[k] for y in y_s])
        return out


def model_free_carry(
    obs: Observations, context: Context, sources: tuple[Context, ...], reference: tuple[str, ...]
) -> ModelFreeCarry:
    """Fit the model-free carry-over into ``context`` from ``sources`` on the ``reference`` perturbations."""
    y_c = np.stack([_value(obs.get(q, context)) for q in reference])
    y_s = tuple(np.stack([_value(obs.get(q, s)) for q in reference]) for s in sources)
    mean, terms = _fit_carry(y_c, list(y_s))
    return ModelFreeCarry(mean, tuple((s, m, rho) for s, (m, rho) in zip(sources, terms, strict=True)), y_c, y_s)


def _fit_carry(y_c: np.ndarray, y_s: list[np.ndarray]) -> tuple[np.ndarray, list[tuple[np.ndarray, float]]]:
    """``y_c``'s mean, and per source the mean and the least-squares share (in [0, 1]) of the carried changes."""
    yc_bar = y_c.mean(0)
    terms = []
    for ys in y_s:
        ys_bar = ys.mean(0)
        rho, _ = _two_coefficients(y_c - yc_bar, ys - ys_bar, np.zeros_like(ys))
        terms.append((ys_bar, rho))
    return yc_bar, terms


def _apply_carry(mean: np.ndarray, terms: list[tuple[np.ndarray, float]], row: list[np.ndarray]) -> np.ndarray:
    """``mean`` plus each source's share of ``row``'s carried change, averaged over sources."""
    return sum((mean + rho * (r - ys_bar)) / len(terms) for (ys_bar, rho), r in zip(terms, row, strict=True))


def _two_coefficients(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Least-squares coefficients of ``y`` on ``a`` and ``b`` (flattened), each clipped to [0, 1]."""
    y, a, b = y.ravel(), a.ravel(), b.ravel()
    gram = np.array([[a @ a, a @ b], [a @ b, b @ b]])
    rhs = np.array([a @ y, b @ y])
    if np.linalg.matrix_rank(gram) < 2:
        rho = float(rhs[0] / gram[0, 0]) if gram[0, 0] > 0 else 0.0
        return float(np.clip(rho, 0.0, 1.0)), 0.0
    rho, alpha = np.linalg.solve(gram, rhs)
    rho, alpha = float(np.clip(rho, 0.0, 1.0)), float(np.clip(alpha, 0.0, 1.0))
    # with one coefficient clipped, refit the other alone
    if rho in (0.0, 1.0) and 0.0 < alpha < 1.0:
        alpha = float(np.clip((b @ (y - rho * a)) / (b @ b), 0.0, 1.0)) if b @ b > 0 else 0.0
    elif alpha in (0.0, 1.0) and 0.0 < rho < 1.0:
        rho = float(np.clip((a @ (y - alpha * b)) / (a @ a), 0.0, 1.0)) if a @ a > 0 else 0.0
    return rho, alpha


def fit_interaction_gain(obs: Observations, read: Callable[[Protocol], np.ndarray]) -> tuple[float, int]:
    r"""Share of the model's interaction that the training combinations bear out, beyond their noise.

    Over the training combinations observed with all their singles and controls in a context, the observed
    interaction :math:`I^{obs} = y_p - \sum_k y_k + (n-1) y_\varnothing` is regressed on the model's
    :math:`I^{m}` (same formula on read-outs): :math:`\kappa_I = \sum \langle I^{obs}, I^m\rangle / \sum
    \lVert I^m\rVert^2`, clipped to :math:`[0, 1]`. The model was fitted to these combinations, so its
    :math:`I^m` may follow their sampling noise :math:`\epsilon` (variance :math:`v` per gene), which inflates
    the cross product by up to :math:`\sum v`. How much it follows is read from its residual: a model that
    captures the true interaction and none of the noise leaves :math:`E\lVert I^{obs} - I^m\rVert^2 = \sum v`,
    one that reproduces the noise leaves 0. The cross product is therefore reduced by :math:`\phi \sum v` with
    :math:`\phi = \max(0, 1 - \mathrm{RSS} / \sum v)`, the share of the noise the model followed. Combinations
    that are additive within their noise give :math:`\kappa_I \approx 0` even for a model that reproduces
    them, and without training combinations there is no evidence of interaction, :math:`\kappa_I = 0`: held-out
    combinations are then their observed singles added.

    Returns
    -------
    The gain and the number of combinations it rests on.
    """
    num = den = rss = noise = 0.0
    n_used = 0
    for _, i_obs, i_mod, var in _interactions(obs, read):
        num += float(i_obs @ i_mod)
        den += float(i_mod @ i_mod)
        rss += float((i_obs - i_mod) @ (i_obs - i_mod))
        noise += float(np.nansum(var))
        n_used += 1
    if n_used == 0 or den <= 0:
        return 0.0, n_used
    followed = float(np.clip(1.0 - rss / noise, 0.0, 1.0)) if noise > 0 else 0.0
    return float(np.clip((num - followed * noise) / den, 0.0, 1.0)), n_used


def _interactions(obs: Observations, read: Callable[[Protocol], np.ndarray]):
    """Yield each training combination observed with all its singles and controls in a context.

    Each as its context, its observed and the model's interaction, and the observed interaction's sampling variance.
    """
    for label, ctx in obs.conditions:
        observed = observed_interaction(obs, label, ctx)
        if observed is None:
            continue
        i_obs, var = observed
        targets = obs.targets[label]
        n = len(targets)
        m = read(obs.protocol(label, ctx))
        i_mod = (
            m - sum(read(obs.protocol(t, ctx)) for t in targets) + (n - 1) * read(obs.protocol(obs.control_label, ctx))
        )
        yield ctx, i_obs, i_mod, var
