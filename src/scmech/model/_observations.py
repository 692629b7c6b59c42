"""Observations: the training pseudobulks that anchoring corrects the model's predictions by.

:class:`Observations` holds the log pseudobulk of every observed condition in every context with its sampling
variance (:class:`ObservedPseudobulk`), computed by :func:`log_pseudobulk`, each in the batch composition its
cells were observed in; :func:`standardise_batches` moves them to another composition (one batch, or the training
controls'). The anchoring plans that use them live in :mod:`._anchoring`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from scmech._constants import TARGET_SUM
from scmech.data._pseudobulk import normalized_mean

from ._protocols import Context, Protocol
from ._serialisation import persistable

__all__ = ["ObservedPseudobulk", "Observations", "log_pseudobulk", "standardise_batches"]


# saved under the name of the module that defined them first, so that earlier saves keep loading
@persistable(name="scmech.model._anchoring.ObservedPseudobulk")
@dataclass
class ObservedPseudobulk:
    """Log pseudobulk of a group of training cells and its per-gene sampling variance."""

    value: np.ndarray
    var: np.ndarray
    n_cells: int


@persistable(name="scmech.model._anchoring.Observations")
@dataclass
class Observations:
    r"""Observed training pseudobulks of every condition in every context, and their calibrations.

    Parameters
    ----------
    control_label
        Label of the controls.
    conditions
        ``{(label, context): pseudobulk}`` for every condition (controls included) with enough training cells.
    targets
        The targets of each observed label.
    interaction_gain
        :math:`\kappa_I`: the share of the model's interaction that the training combinations bear out (0 without
        training combinations).
    media_carry
        ``{(context, source context): (rho, alpha)}``: how far a perturbation's observed specific change in the
        source carries to the context (``rho``) and how far the model's change of it between the two does
        (``alpha``), both from the training targets observed in both (see :class:`~scmech.model._anchoring.OtherMedia`).
    batch_standardised
        Number of pseudobulks moved to another batch composition than their own (:meth:`in_mix`); 0 for the
        observations as observed.
    batch_mix
        ``{(label, context): shares}``: the batch composition each pseudobulk stands for (the condition's own, as
        observed), batches in code order.
    batch_levels
        ``{context: (values, variances, observed)}``: the context's controls' log pseudobulk in each batch
        (batches x genes), its sampling variance and whether the batch has enough control cells; what
        :meth:`in_mix` moves the pseudobulks by.
    batch_pool
        The training controls' share of each batch: the composition predictions start from
        (:meth:`in_controls_mix`).
    """

    control_label: str
    conditions: dict[tuple[str, Context], ObservedPseudobulk] = field(default_factory=dict)
    targets: dict[str, tuple[str, ...]] = field(default_factory=dict)
    interaction_gain: float = 0.0
    interaction_pairs: int = 0
    media_carry: dict[tuple[Context, Context], tuple[float, float]] = field(default_factory=dict)
    batch_standardised: int = 0
    batch_mix: dict[tuple[str, Context], np.ndarray] = field(default_factory=dict)
    batch_levels: dict[Context, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    batch_pool: np.ndarray | None = None

    def in_batch(self, code: int) -> Observations | None:
        """Return the observations moved to one batch, for predictions measured in that batch.

        :meth:`in_mix` with batch ``code`` alone; ``None`` when some pseudobulk cannot be moved (a batch of its
        composition, or ``code``, without enough controls in its context): it stands for other batches, and
        anchoring on it would carry their difference into the prediction.

        Parameters
        ----------
        code
            The batch's code (its position among the registered batches).

        Returns
        -------
        The moved observations (a new object; this one is unchanged), or ``None``.

        Raises
        ------
        ValueError
            When the observations hold no batch levels (no batch registered, or a model saved before they were
            kept).
        """
        n_batch = len(next(iter(self._levels().values()))[2])
        target = np.zeros(n_batch)
        target[int(code)] = 1.0
        return self.in_mix(target)

    def in_controls_mix(self) -> Observations:
        """Return the observations moved to the training controls' batch composition, where predictions start.

        :meth:`in_mix` with ``batch_pool``, moving every pseudobulk that can be moved (the controls of each batch
        of its composition observed in its context) and keeping the others as observed: a prediction anchored on
        them is the perturbation applied to the training controls as they were measured, its effect alone.

        Raises
        ------
        ValueError
            When the observations hold no batch levels or no controls' composition (no batch registered, or a
            model saved before they were kept).
        """
        if self.batch_pool is None:
            self._levels()
            msg = "These observations hold no training controls' batch composition (saved by an earlier scmech)."
            raise ValueError(msg + " Predict with batch_mix='observed', or retrain.")
        return self.in_mix(np.asarray(self.batch_pool, dtype=np.float64), partial=True)

    def in_mix(self, target: np.ndarray, *, partial: bool = False) -> Observations | None:
        r"""Return the observations moved to the batch composition ``target``.

        Each pseudobulk (controls included) is moved from the batch composition it stands for (``batch_mix``) to
        ``target`` by its context's controls' batch levels (:func:`standardise_batches`). ``batch_standardised``
        of the result counts the pseudobulks moved; the calibrations are shared.

        Parameters
        ----------
        target
            Share of each batch (batches in code order).
        partial
            Keep a pseudobulk that cannot be moved as it is (``False``: return ``None`` instead).

        Returns
        -------
        The moved observations (a new object; this one is unchanged), or ``None`` (see ``partial``).
        """
        levels = self._levels()
        target = np.asarray(target, dtype=np.float64)
        conditions = dict(self.conditions)
        moved = standardise_batches(conditions, self.batch_mix, levels, target)
        there = {k for k, v in self.batch_mix.items() if np.allclose(v, target)}
        done = set(moved) | there
        if len(done) < len(conditions) and not partial:
            return None
        mix = {k: (target if k in done else self.batch_mix.get(k)) for k in conditions}
        mix = {k: v for k, v in mix.items() if v is not None}
        return replace(self, conditions=conditions, batch_standardised=len(moved), batch_mix=mix)

    def _levels(self) -> dict:
        """Return ``batch_levels``, refusing observations without them."""
        if not self.batch_levels:
            msg = (
                "These observations hold no per-batch control levels (no batch was registered, or the model was "
                "saved by an earlier scmech): they cannot be moved to another batch composition. Predict without "
                "batch= (and with batch_mix='observed'), or retrain."
            )
            raise ValueError(msg)
        return self.batch_levels

    def protocol(self, label: str, context: Context) -> Protocol:
        """Return the read-out of an observed condition (or of the controls) in ``context``."""
        targets = () if label == self.control_label else self.targets.get(label, (label,))
        return Protocol(label, tuple(targets), None, 0.0, np.nan).at(context)

    def get(self, label: str, context: Context) -> ObservedPseudobulk | None:
        """Observed pseudobulk of ``label`` in ``context``, or ``None``."""
        return self.conditions.get((label, context))

    def control(self, context: Context) -> ObservedPseudobulk | None:
        """Observed pseudobulk of the controls in ``context``, or ``None``."""
        return self.conditions.get((self.control_label, context))

    def perturbations_in(self, context: Context) -> list[str]:
        """Labels of the perturbations (controls excluded) observed in ``context``, sorted."""
        return self._index()[0].get(context, [])

    def contexts_of(self, label: str) -> list[Context]:
        """Contexts in which ``label`` was observed."""
        return self._index()[1].get(label, [])

    def _index(self) -> tuple[dict, dict]:
        """Labels per context and contexts per label, built once per set of conditions (not saved)."""
        key = len(self.conditions)
        cached = self.__dict__.get("_cached_index")
        if cached is None or cached[0] != key:
            by_context: dict[Context, list[str]] = {}
            by_label: dict[str, list[Context]] = {}
            for lab, ctx in self.conditions:
                if lab != self.control_label:
                    by_context.setdefault(ctx, []).append(lab)
                by_label.setdefault(lab, []).append(ctx)
            by_context = {c: sorted(v) for c, v in by_context.items()}
            by_label = {lab: sorted(v, key=repr) for lab, v in by_label.items()}
            cached = (key, by_context, by_label)
            self.__dict__["_cached_index"] = cached
        return cached[1], cached[2]


def log_pseudobulk(x, rows: np.ndarray, labels: np.ndarray, groups: list, counts: bool) -> tuple:
    r"""Log pseudobulk of ``rows`` per group and its sampling variance per gene (delta method).

    The variance of a group's mean normalised expression is the between-cell variance over the cell count;
    through :math:`\log(1 + 10^4 m)` it is scaled by :math:`(10^4 / (1 + 10^4 m))^2`. Non-count data are
    averaged as they are. A group of a single cell has no between-cell variance of its own; it borrows the
    pooled within-group variance of the groups with at least two cells (per gene), rather than passing for an
    exact observation that every precision weight and every shrinkage would trust most.

    Parameters
    ----------
    x
        Expression matrix (cells x genes; in memory or backed).
    rows
        Rows to use.
    labels
        Group of each of ``rows``.
    groups
        Groups to return, in this order.
    counts
        Whether ``x`` holds counts (else log-normalised values).
    """
    xr, lab = _rows(x, rows, labels)
    mean, second = normalized_mean(xr, lab, groups, counts=counts, second_moment=True)
    n = pd.Series(np.asarray(labels, dtype=object)).value_counts().reindex(groups).to_numpy(dtype=np.float64)
    n = np.nan_to_num(n, nan=0.0)
    # unbiased between-cell variance per group (0 for a single cell, which has none of its own)
    cell_var = np.clip(second - mean**2, 0.0, None) * (n / np.maximum(n - 1.0, 1.0))[:, None]
    several, single = n >= 2, n == 1
    if single.any() and several.any():
        dof = n[several] - 1.0
        cell_var[single] = (dof[:, None] * cell_var[several]).sum(0) / dof.sum()
    var = cell_var / np.maximum(n, 1.0)[:, None]
    if counts:
        return np.log1p(TARGET_SUM * mean), var * (TARGET_SUM / (1.0 + TARGET_SUM * mean)) ** 2
    return mean, var


def standardise_batches(
    conditions: dict,
    shares: dict,
    controls: dict,
    pool: np.ndarray,
) -> list:
    r"""Move observed pseudobulks to another batch composition (direct standardisation by the controls).

    A pseudobulk observed in proportions :math:`\pi_b` of the batches stands for that composition: compared with a
    prediction in another one :math:`w_b` (one batch, for predictions measured there; the training controls',
    where the model's read-outs start), it differs by the batches' effects as well as by the perturbation. With its
    context's controls observed in every batch involved, the observation is moved to :math:`w` by the controls'
    batch levels :math:`c_b` (batch effects additive in log space, as the controls in every batch measure them):
    :math:`y + \sum_b (w_b - \pi_b) c_b`, with variance :math:`v + \sum_b (w_b - \pi_b)^2 v_{c_b}`. A pseudobulk
    with a batch whose controls are missing in its context is kept as observed.

    Parameters
    ----------
    conditions
        ``{(label, context): ObservedPseudobulk}``; moved entries are replaced.
    shares
        ``{(label, context): pi}``: each condition to move and the share of its cells per batch (batches in code
        order).
    controls
        ``{context: (values, variances, observed)}``: the controls' log pseudobulk per batch (batches x genes),
        its sampling variance and whether the batch has enough control cells in the context.
    pool
        :math:`w`: the composition to move to.

    Returns
    -------
    The keys of the conditions moved.
    """
    pool = np.asarray(pool, dtype=np.float64)
    done = []
    for key, pi in shares.items():
        if key not in conditions or key[1] not in controls:
            continue
        values, variances, observed = controls[key[1]]
        d = pool - np.asarray(pi, dtype=np.float64)
        used = np.abs(d) > 1e-9
        if not used.any() or not observed[used].all():
            continue
        o = conditions[key]
        value = np.asarray(o.value, dtype=np.float64) + d[used] @ values[used]
        var = np.asarray(o.var, dtype=np.float64) + (d[used] ** 2) @ variances[used]
        conditions[key] = ObservedPseudobulk(value.astype(np.float32), var.astype(np.float32), o.n_cells)
        done.append(key)
    return done


def _rows(x, rows: np.ndarray, labels: np.ndarray) -> tuple:
    """Matrix and per-row labels for :func:`normalized_mean` restricted to ``rows``.

    In-memory matrices are passed whole with an empty label outside ``rows`` (ignored by ``normalized_mean``),
    so that the selected rows are not copied; backed matrices are selected lazily.
    """
    import scipy.sparse as sp

    rows = np.asarray(rows)
    if isinstance(x, np.ndarray) or sp.issparse(x):
        full = np.full(x.shape[0], "", dtype=object)
        full[rows] = np.asarray(labels, dtype=object)
        return x, full
    return x[rows], labels
