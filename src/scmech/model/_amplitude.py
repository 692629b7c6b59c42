r"""How far an unseen knock-down moves the shared response: by how much of its target's product there is to remove.

A CRISPRko or CRISPRi knock-down removes its target's product, and what it moves downstream follows how much
product there was to remove. An unseen target is anchored on the shared response of the training targets
(:class:`~scmech.model._anchoring.UnseenTarget`); its amplitude along that response is

.. math::

    a(x) = \frac{x / (x + k \tilde x)}{1 / (1 + k)},

of its gene's expression :math:`x` in the controls (normalised, not logged) against the median :math:`\tilde x` of
the training targets' genes: :math:`a(\tilde x) = 1`, a saturating rise with :math:`x` whose steepness :math:`k`
runs from flat (:math:`k \to 0`: every expressed target moves the shared response as far) to proportional
(:math:`k \to \infty`: :math:`a = x / \tilde x`). A gene the controls do not express at all has nothing to remove:
:math:`a(0) = 0` for every :math:`k > 0`, and so in the flat limit too, and such a knock-down is predicted at the
controls, unless the training targets whose gene is silent show a response all the same. How steeply the response
follows expression is a property of the screen, so :math:`k` is chosen on the training targets
(:func:`fit_steepness`), each predicted from the others as an unseen target is anchored, by the one-standard-error
rule towards flat (:func:`~scmech.model._target_map.smallest_within_noise`, the rule of the propagation gain and
the embedding map), once there are enough of them (:data:`MIN_STEEPNESS_MEMBERS`). CRISPRa is left out: it can
switch on a silent gene, whose response does not follow its level in the controls.

Written here because the scaling is the framework's (a knock-down scales its target's production), not a
library's.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from ._anchoring import Observations, UnseenTarget
from ._protocols import Context, Protocol
from ._target_map import TargetMap, smallest_within_noise

if TYPE_CHECKING:
    from collections.abc import Callable

logger = logging.getLogger(__name__)

__all__ = [
    "AMPLITUDE_MODALITIES",
    "MIN_STEEPNESS_MEMBERS",
    "STEEPNESS",
    "AmplitudeMixin",
    "amplitude_of",
    "expression_amplitude",
    "fit_steepness",
]

#: steepness values :func:`fit_steepness` chooses among: flat, saturating at several scales, proportional
STEEPNESS = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0, float("inf"))
#: modalities whose unseen targets' shared response is scaled by their expression
AMPLITUDE_MODALITIES = ("CRISPRko", "CRISPRi")
#: fewest training targets with an expressed gene on which :func:`fit_steepness` chooses a steepness (else flat)
MIN_STEEPNESS_MEMBERS = 10


def expression_amplitude(x: float | np.ndarray, median: float, k: float) -> np.ndarray:
    r"""Amplitude :math:`a(x)` of the shared response for a target of control expression ``x`` (module docstring).

    Parameters
    ----------
    x
        The target gene's expression in the controls (normalised, not logged; 0 or more).
    median
        The median expression of the training targets' genes (positive).
    k
        The steepness: 0 flat (1 for every expressed gene), ``inf`` proportional (:math:`x / \tilde x`).

    Returns
    -------
    The amplitude, 0 where ``x`` is 0.
    """
    x = np.maximum(np.asarray(x, dtype=np.float64), 0.0)
    if k == 0.0:
        return np.where(x > 0, 1.0, 0.0)
    if np.isinf(k):
        return x / median
    return (x / (x + k * median)) * (1.0 + k)


def fit_steepness(
    changes: np.ndarray, shared: np.ndarray, expression: np.ndarray, own_genes: np.ndarray
) -> tuple[float, float, dict[float, float]]:
    r"""Steepness :math:`k` of :func:`expression_amplitude` that best predicts the training targets, each as if unseen.

    Member :math:`q` is predicted as :math:`a_k(x_q)\,s_q`: its shared response :math:`s_q` (the anchor it would get
    as an unseen target, less the controls) scaled by the amplitude of its gene's control expression against the
    median of the other members' expressed genes. The squared error against its observed change, off its own gene
    (predicted apart), is averaged over genes; :math:`k` is the smallest of :data:`STEEPNESS` whose mean error over
    the expressed members is within one standard error of the best
    (:func:`~scmech.model._target_map.smallest_within_noise`).

    A choice among seven curves needs more training targets than the choice of a share (the propagation gain),
    so below :data:`MIN_STEEPNESS_MEMBERS` expressed members the amplitude stays flat. On Papalexi (6 measured
    training targets per leave-3-out fold) the rule picked :math:`k = 3` in 3 of 9 fits, where the strongly expressed
    strong knockouts (STAT1, JAK2, IFNGR2) were all training targets, and the highly expressed but weak UBE2L6 held
    out got more than the shared response: the held-out squared error rose for 6 of the 9 targets held out in those
    fits, and CR fell from 0.259 to 0.236 over all folds (``benchmarks/amplitude.py``).

    Parameters
    ----------
    changes
        The members' observed changes from the controls (members x genes).
    shared
        Each member's anchor as an unseen target, less the controls (members x genes).
    expression
        Each member's gene's expression in the controls (normalised, not logged).
    own_genes
        Each member's gene position.

    Returns
    -------
    The steepness (0 with fewer than :data:`MIN_STEEPNESS_MEMBERS` expressed members), the amplitude of a silent
    target (0 or 1) and the mean error of each steepness over the expressed members (empty when not chosen).
    """
    changes, shared = np.asarray(changes, dtype=np.float64), np.asarray(shared, dtype=np.float64)
    expression = np.asarray(expression, dtype=np.float64)
    genes = np.arange(changes.shape[1])

    def error(q: int, a: float) -> float:
        off = genes != int(own_genes[q])
        return float(np.mean((a * shared[q, off] - changes[q, off]) ** 2))

    silent = np.flatnonzero(expression <= 0)
    amplitude_silent = 0.0
    if len(silent):
        at = {0.0: np.array([error(q, 0.0) for q in silent]), 1.0: np.array([error(q, 1.0) for q in silent])}
        amplitude_silent = float(smallest_within_noise(at))
    expressed = np.flatnonzero(expression > 0)
    if len(expressed) < MIN_STEEPNESS_MEMBERS:
        return 0.0, amplitude_silent, {}
    errors = {k: np.zeros(len(expressed)) for k in STEEPNESS}
    for j, q in enumerate(expressed):
        median = float(np.median(np.delete(expression[expressed], j)))
        for k in STEEPNESS:
            errors[k][j] = error(q, float(expression_amplitude(expression[q], median, k)))
    return float(smallest_within_noise(errors)), amplitude_silent, {k: float(e.mean()) for k, e in errors.items()}


def amplitude_of(tm: TargetMap, x: float) -> float:
    """Amplitude of an unseen target whose gene the controls express at ``x``, as ``tm`` was fitted (1: not fitted)."""
    if not np.isfinite(tm.amplitude_median):
        return 1.0
    if x <= 0:
        return float(tm.amplitude_silent)
    return float(expression_amplitude(x, tm.amplitude_median, tm.amplitude_steepness))


class AmplitudeMixin:
    """Fits the expression amplitude of unseen knock-downs after training and applies it to anchored predictions."""

    def _amplitude_base(self, tm: TargetMap) -> float | None:
        """Return the base of the levels' logarithm where the amplitude applies (CRISPRko/CRISPRi on scaling input)."""
        if tm.modality not in AMPLITUDE_MODALITIES or not self._own_scaled():
            return None
        return float(self._log_base())

    def _fit_amplitude(
        self,
        tm: TargetMap,
        members: list[str],
        checked: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
        bases: np.ndarray | None,
    ) -> None:
        """Set ``tm``'s amplitude: the median expression of the members' genes, the steepness and the silent amplitude.

        ``checked`` are the observed members the validations use (:meth:`PostTrainingMixin._own_gene_pairs`, at most
        ``MAX_CLASS``) and ``bases`` their anchors as unseen targets; without them (fewer than 3 observed members)
        the amplitude is flat and a silent target stays at the controls (:func:`fit_steepness`' defaults).
        """
        base = self._amplitude_base(tm)
        obs = getattr(self, "anchor_", None)
        if base is None or not isinstance(obs, Observations):
            return
        control = obs.control(self._context_of(Protocol("", (), None, 0.0, np.nan)))
        if control is None:
            return
        level = np.asarray(control.value, dtype=np.float64)
        pos = self._target_gene_positions()
        x = np.power(base, level[[pos[t] for t in members]]) - 1.0
        if not np.any(x > 0):
            return
        tm.amplitude_median = float(np.median(x[x > 0]))
        if checked is None or bases is None:
            tm.amplitude_steepness, tm.amplitude_silent = 0.0, 0.0
            return
        _, y, genes = checked
        k, silent, errors = fit_steepness(y - level, bases - level, np.power(base, level[genes]) - 1.0, genes)
        tm.amplitude_steepness, tm.amplitude_silent = k, silent
        logger.debug("Expression amplitude: steepness %s (errors %s), silent amplitude %s.", k, errors, silent)

    def _amplitudes(self, requested: list, plans: dict) -> dict[int, float]:
        """Amplitude of each requested row whose amplitude is not 1, by row.

        Only an anchored unseen single target (:class:`~scmech.model._anchoring.UnseenTarget`, not pooled) whose
        gene is measured, in a context with observed controls, on a fitted amplitude, has one: :func:`amplitude_of`
        its gene's level in those controls.
        """
        tm = getattr(self, "target_map_", None)
        obs = getattr(self, "anchor_", None)
        if not isinstance(tm, TargetMap) or not np.isfinite(tm.amplitude_median) or not isinstance(obs, Observations):
            return {}
        base = self._amplitude_base(tm)
        if base is None:
            return {}
        out = {}
        for i, plan in plans.items():
            p = requested[i]
            if not isinstance(plan, UnseenTarget) or plan.pooled or len(p.targets) != 1:
                continue
            g, observed = tm.gene_positions.get(p.targets[0]), obs.control(plan.context)
            if g is None or observed is None:
                continue
            a = amplitude_of(tm, float(base ** float(observed.value[g]) - 1.0))
            if a != 1.0:
                out[i] = a
        return out

    def _scale_by_expression(
        self,
        logx: np.ndarray,
        requested: list,
        plans: dict,
        amplitudes: dict[int, float],
        control: Callable[[Context], np.ndarray | None],
    ) -> None:
        """Scale the change from the controls of each row with an amplitude (:meth:`_amplitudes`, by row) in place.

        ``control(context)`` is the controls' anchored prediction in a row's context, made as the rows were (``None``:
        no controls there; the prediction reads them out for every row whose amplitude is not 1), so that a target at
        amplitude 0 is predicted as the controls are. The own gene keeps its calibrated level
        (:meth:`~scmech.model._own_gene_fit.OwnGeneMixin._own_from_control`, set before).
        """
        for i, a in amplitudes.items():
            c = control(plans[i].context)
            if c is None:
                continue
            g = self.target_map_.gene_positions[requested[i].targets[0]]
            own = logx[i, g]
            logx[i] = c + a * (logx[i] - c)
            logx[i, g] = own
