r"""How a target without training cells acts: its own-gene knock-down, carried through the learned dynamics.

A target :math:`t` that was never perturbed in training gets a latent operator and an own-gene effect from
what is known of it before any data:

- **Own gene.** CRISPRko, CRISPRi and CRISPRa act on their target's own mRNA: they scale its production, so
  its expression by a factor :math:`r = e^{a}` (:math:`a` in logit units, the decoder's own-target effect).
  When the gene is measured, :math:`a` is calibrated on what the training targets did to their own genes, in the
  space predictions are scored in (:func:`~scmech.model._own_gene.own_gene_effect`): the weighted half-sample
  mode of the factors that reproduce each training target's observed own-gene level, the typical one, robust to
  those whose own gene also falls with a programme their knock-down collapses. The change it predicts follows the
  target's expression, a large fall for a highly expressed gene and a small one for a gene barely expressed. The
  spread of the training targets' factors is its uncertainty; it is not shrunk by anything else. CRISPRa can
  instead bring its target to a level that does not follow its level in controls (a silent gene activated):
  where the training targets say so (:func:`~scmech.model._own_gene.own_gene_model`), an unseen activated target
  gets the effect that brings it to their median own level (:func:`~scmech.model._own_gene.effect_reaching`).
- **Propagation.** A change of gene :math:`g`'s true expression by :math:`a` (here the median of the training
  targets' learned direct effects, the scale their operators were learned on) moves the cell state along the
  direction in which :math:`g` varies among control cells, :math:`\delta z = a\,h_g` with
  :math:`h_g = \Sigma_z D_g^\top / (D_g \Sigma_z D_g^\top + s_g^2)` (:math:`\Sigma_z` the covariance of the
  control cells' latent states, :math:`D_g` the gene's decoder loading, :math:`s_g^2` its gene-specific
  biological variance: :math:`\log(1 + 1/\theta_g)` of the negative binomial). The latent drive that holds the
  cell there is :math:`d = -J\,\delta z`, with :math:`J` the Jacobian of the learned field at the control
  state; the fixed point of the field under that drive carries the intervention to every gene (the SCM link
  of the framework: a soft intervention on one gene, propagated through the equilibrium).
- **Gain.** Whether training knock-downs really propagate that way is measured, not assumed: across the
  training targets :math:`q` of the class, their learned operators are regressed on their own propagated
  drives, :math:`v_q - \bar v = \kappa\,(d_q - \bar d)`, and :math:`\kappa \ge 0` is shrunk to the share whose
  leave-one-target-out predictions of the training targets' observed pseudobulks (each mapped as if unseen)
  are best; 0 when propagation does not validate. Without enough observed training targets the leave-one-out
  error of the operators themselves decides (:func:`propagation_gain`).
- **Class.** The operator is :math:`\bar v + \kappa (d_t - \bar d)` with :math:`\bar v` the mean operator of
  the training targets of the same class (those whose gene is measured), plus a ridge map from a gene
  embedding fitted on what remains (its penalty chosen by leave-one-out on the operators; it falls back to
  nothing). Like the gain, the map is kept only where it predicts the training targets' observed
  pseudobulks, each mapped as if unseen, better than the operator without it. A target whose gene is not
  measured has no own-gene effect and no direction: it gets the mean operator of every training target, the
  shared response of the screen. Anchored, every unseen target starts from the random-effects mean of every
  training target's observations (:class:`~scmech.model._anchoring.UnseenTarget`); the class enters through
  the model's change from the class's mean operator.

Magnitude follows from these: a weak efficacy scales the drive and the own-gene effect down, a target barely
loaded on any program of the control cells has a short :math:`h_g` and stays near its class mean.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from scmech.data._embedding import ridge_map_cv
from scmech.data._target_genes import name_positions

from ._persistence import persistable
from ._protocols import CLASS_REFERENCE

logger = logging.getLogger(__name__)

__all__ = [
    "TargetMap",
    "latent_directions",
    "propagation_gain",
    "smallest_within_noise",
]

#: sources of a mapped target, as reported in ``predict``'s ``obs["target_source"]``
SOURCE_GENE = "gene map"
SOURCE_SHARED = "shared response"


@persistable
@dataclass
class TargetMap:
    r"""Operators and own-gene effects for targets without training cells (see the module docstring).

    Parameters
    ----------
    var_names
        The name each gene is matched against targets by: ``var_names``, or the registered ``gene_symbols``
        column.
    trained
        Targets with training cells.
    class_targets
        Training targets whose gene is measured (the class a mapped measured target is compared with).
    operator_class
        Mean latent operator of ``class_targets``.
    operator_all
        Mean latent operator of every training target.
    own_effect
        Calibrated direct effect of a knock-down on its own mRNA (decoder logit units: the log of the factor by
        which it scales the gene's expression).
    own_effect_sd
        Spread of the training targets' direct effects (robust standard deviation, logit units).
    own_targets
        Number of training targets the own-gene calibration rests on (0: not calibrated, effect 0).
    own_source
        What the calibration rests on: ``"observed"`` (the training targets' observed own-gene levels,
        :func:`~scmech.model._own_gene.own_gene_effect`), ``"learned"`` (the median of their learned direct effects,
        when too few were observed) or ``"none"``.
    own_model
        How the knock-down moves an unseen target's own gene (:func:`~scmech.model._own_gene.own_gene_model`):
        ``"scale"`` (its production by the factor ``e^own_effect``) or ``"level"`` (CRISPRa: to the activated level
        ``own_level``, whatever its level in controls; ``own_effects`` holds the effect that does so per gene and
        ``own_effect_sd`` the spread of the training targets' levels, in log-normalised units).
    own_level
        Calibrated own-gene level of an activated target (``"level"`` model; NaN otherwise).
    own_effects
        Direct effect per gene as the decoder applies it: under the ``"level"`` model, and under ``"scale"`` with a
        normal likelihood on log1p input, where the decoder shifts a level that the knock-down scales (``None``
        otherwise: ``own_effect`` for every gene).
    drive_effect
        Direct effect that scales an unseen target's propagated drive: the median of the training targets'
        learned direct effects, the scale on which the propagation gain is fitted (``NaN``: ``own_effect``).
    directions
        Latent drive per unit change of each gene (genes x latent), :math:`-J h_g`.
    propagation_mean
        Mean propagated drive :math:`\bar d` of the class.
    gain
        Propagation gain :math:`\kappa` (0 when the training targets do not bear it out).
    gain_fit
        The least-squares gain before validation.
    gain_loo
        Leave-one-target-out mean squared error for each share of the fitted gain: of the training targets'
        pseudobulks predicted as if unseen, or (without enough observed targets) of their operators.
    embedding
        Gene embedding of the residual ridge map (genes x K), or ``None``.
    embedding_source
        Where the embedding came from.
    coef, intercept
        The residual ridge map (``None`` when not fitted).
    ridge
        Its penalty (``inf``: no embedding-specific part).
    modality
        ``"CRISPRko"``, ``"CRISPRi"``, ``"CRISPRa"`` or ``None`` (registered with ``setup_anndata``).
    amplitude_median
        Median control expression of the training targets' expressed genes (normalised, not logged), against which
        an unseen target's amplitude along the shared response is read (:mod:`scmech.model._amplitude`); NaN: no
        amplitude (CRISPRa, no modality, input that is not a log of expression, or no expressed member gene).
    amplitude_steepness
        Steepness :math:`k` of the amplitude (0: flat, ``inf``: proportional to expression), chosen on the training
        targets (:func:`~scmech.model._amplitude.fit_steepness`).
    amplitude_silent
        Amplitude of a target whose gene the controls do not express (0: predicted at the controls; 1: where the
        training targets with silent genes showed the shared response all the same).
    """

    var_names: list[str]
    trained: list[str]
    class_targets: list[str]
    operator_class: np.ndarray
    operator_all: np.ndarray
    own_effect: float = 0.0
    own_effect_sd: float = float("nan")
    own_targets: int = 0
    own_source: str = "none"
    own_model: str = "scale"
    own_level: float = float("nan")
    own_effects: np.ndarray | None = None
    drive_effect: float = float("nan")
    directions: np.ndarray | None = None
    propagation_mean: np.ndarray | None = None
    gain: float = 0.0
    gain_fit: float = 0.0
    gain_loo: dict = field(default_factory=dict)
    embedding: np.ndarray | None = None
    embedding_source: str = "none"
    coef: np.ndarray | None = None
    intercept: np.ndarray | None = None
    ridge: float = float("inf")
    modality: str | None = None
    amplitude_median: float = float("nan")
    amplitude_steepness: float = 0.0
    amplitude_silent: float = 1.0

    @property
    def gene_positions(self) -> dict[str, int]:
        """Position of each gene by its name (:func:`~scmech.data._target_genes.name_positions`; cached, not saved)."""
        n, cached = self.__dict__.get("_gene_positions", (-1, None))
        if cached is None or n != len(self.var_names):
            cached = name_positions(self.var_names)
            self.__dict__["_gene_positions"] = (len(self.var_names), cached)
        return cached

    @property
    def trained_set(self) -> frozenset[str]:
        """The targets with training cells, as a set (cached, not saved)."""
        cached = self.__dict__.get("_trained_set")
        if cached is None or cached[0] is not self.trained or cached[1] != len(self.trained):
            cached = (self.trained, len(self.trained), frozenset(self.trained))
            self.__dict__["_trained_set"] = cached
        return cached[2]

    def sorted_pool(self) -> np.ndarray:
        """Return the training targets an unseen target is anchored on, sorted (cached, not saved).

        Every training target: the anchor is the screen's shared response, their random-effects mean
        (:func:`~scmech.model._weights.random_effects_weights`); what the prior information says of a target
        (its measured gene, its embedding) enters through the model's specific change, not through which
        observations the anchor averages.
        """
        cached = self.__dict__.setdefault("_sorted_pools", {})
        key = len(self.trained)
        if key not in cached:
            cached[key] = np.asarray(sorted(self.trained), dtype=object)
        return cached[key]

    def operators(self, targets: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Latent operators, own-gene effects and sources of ``targets`` (none of which has training cells).

        Parameters
        ----------
        targets
            Target names.

        Returns
        -------
        Operators (targets x latent), own-gene effects (targets,) and each target's source:
        ``"gene map"`` (measured gene) or ``"shared response"`` (no gene, no embedding).
        :data:`~scmech.model._protocols.CLASS_REFERENCE` gets the class's mean operator and no own-gene effect.
        """
        pos = self.gene_positions
        ops, own, source = [], [], []
        drive = self.own_effect if not np.isfinite(self.drive_effect) else self.drive_effect
        for t in targets:
            if t == CLASS_REFERENCE:
                ops.append(np.asarray(self.operator_class, dtype=np.float64))
                own.append(0.0)
                source.append(SOURCE_GENE)
                continue
            if t not in pos or self.directions is None:
                ops.append(np.asarray(self.operator_all, dtype=np.float64))
                own.append(0.0)
                source.append(SOURCE_SHARED)
                continue
            g = pos[t]
            d = drive * np.asarray(self.directions[g], dtype=np.float64)
            op = np.asarray(self.operator_class, dtype=np.float64) + self.gain * (d - self.propagation_mean)
            if self.coef is not None and self.embedding is not None:
                op = op + np.asarray(self.embedding[g], dtype=np.float64) @ self.coef + self.intercept
            ops.append(op)
            own.append(self.own_effect if self.own_effects is None else float(self.own_effects[g]))
            source.append(SOURCE_GENE)
        return np.asarray(ops), np.asarray(own), source

    def map_summary(self) -> dict:
        """Return what an unseen target's operator rests on (for provenance).

        ``embedding`` is the gene embedding considered for the residual map; ``embedding_map_kept`` says whether
        the map passed its validations (a finite leave-one-out penalty and a lower error on the training targets
        predicted as if unseen), so an embedding that was considered and dropped is not reported as used.
        """
        return {
            "embedding": self.embedding_source,
            "embedding_map_kept": self.coef is not None,
            "ridge": float(self.ridge) if self.coef is not None else float("inf"),
            "propagation_gain": float(self.gain),
            "propagation_gain_fitted": float(self.gain_fit),
            "class_targets": len(self.class_targets),
            "training_targets": len(self.trained),
            "amplitude_steepness": float(self.amplitude_steepness) if np.isfinite(self.amplitude_median) else None,
            "amplitude_silent": float(self.amplitude_silent) if np.isfinite(self.amplitude_median) else None,
        }

    def own_gene_summary(self) -> dict:
        """Return the calibrated own-gene effect, its spread, its model and what it rests on (for provenance).

        Under the ``"level"`` model ``own_effect_sd`` is the spread of the training targets' own levels (log-normalised
        units) and ``level`` the level an activated target reaches (``None`` under ``"scale"``); the effect is then
        per gene.
        """
        return {
            "own_effect_logit": float(self.own_effect),
            "own_effect_sd": float(self.own_effect_sd),
            "n_training_targets": int(self.own_targets),
            "calibrated_on": self.own_source,
            "model": self.own_model,
            "level": float(self.own_level) if self.own_model == "level" else None,
            "modality": self.modality,
            "propagation_gain": float(self.gain),
        }


def latent_directions(
    loading: np.ndarray, latent_cov: np.ndarray, gene_var: np.ndarray, jacobian: np.ndarray
) -> np.ndarray:
    r"""Latent drive per unit change of each gene's true expression, :math:`-J h_g` (genes x latent).

    Parameters
    ----------
    loading
        Decoder loading :math:`D` (genes x latent): the change of each gene's log expression per unit latent
        change at the control state.
    latent_cov
        Covariance :math:`\Sigma_z` of the control cells' latent states.
    gene_var
        Gene-specific biological variance :math:`s_g^2` of the log expression, beyond the latent state.
    jacobian
        Jacobian :math:`J` of the field at the control state (latent x latent).
    """
    d = np.asarray(loading, dtype=np.float64)
    cov = np.asarray(latent_cov, dtype=np.float64)
    sd = d @ cov  # genes x latent: Sigma D_g^T, row-wise
    denom = np.einsum("gk,gk->g", sd, d) + np.maximum(np.asarray(gene_var, dtype=np.float64), 1e-8)
    h = sd / denom[:, None]
    return -(h @ np.asarray(jacobian, dtype=np.float64).T)


def propagation_gain(
    drives: np.ndarray, operators: np.ndarray, shares: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
) -> tuple[float, float, dict]:
    r"""Gain :math:`\kappa \ge 0` of :math:`v_q - \bar v = \kappa (d_q - \bar d)`, shrunk as far as it validates.

    The least-squares gain over the training targets is scaled by the share :math:`s` (of ``shares``) chosen on
    the leave-one-target-out squared errors by the one-standard-error rule (:func:`smallest_within_noise`): for
    each target left out, means and gain are refitted on the others and the target predicted as
    :math:`\bar v_{-q} + s\,\kappa_{-q} (d_q - \bar d_{-q})`. :math:`s = 0` (no propagation, the class mean)
    wins ties and differences within the noise.

    Parameters
    ----------
    drives
        Propagated drives :math:`d_q` of the training targets (targets x latent).
    operators
        Their learned operators :math:`v_q`.
    shares
        Shares of the least-squares gain to validate.

    Returns
    -------
    The validated gain :math:`s\kappa`, the least-squares gain :math:`\kappa` and the mean leave-one-out error of
    each share.
    """
    x = np.asarray(drives, dtype=np.float64)
    y = np.asarray(operators, dtype=np.float64)
    n = len(x)
    if n < 3:
        return 0.0, 0.0, {}

    def fit(xs, ys):
        xc, yc = xs - xs.mean(0), ys - ys.mean(0)
        den = float((xc * xc).sum())
        return max(0.0, float((xc * yc).sum()) / den) if den > 0 else 0.0

    gain = fit(x, y)
    loo = {share: np.zeros(n) for share in shares}
    for i in range(n):
        keep = np.arange(n) != i
        k = fit(x[keep], y[keep])
        step = x[i] - x[keep].mean(0)
        for share in shares:
            pred = y[keep].mean(0) + share * k * step
            loo[share][i] = float(((y[i] - pred) ** 2).sum())
    best = smallest_within_noise(loo)
    return best * gain, gain, {float(k): float(v.mean()) for k, v in loo.items()}


def smallest_within_noise(errors: dict[float, np.ndarray]) -> float:
    r"""Smallest share whose leave-one-out error is within one standard error of the best share's (1-SE rule).

    The one-standard-error rule of cross-validation (Breiman et al. 1984; Hastie, Tibshirani and Friedman, *The
    Elements of Statistical Learning*, 7.10), on paired errors: a share :math:`s` below the best share
    :math:`s^*` is chosen when its mean excess error over the training targets left out,
    :math:`\overline{e_s - e_{s^*}}`, is at most the standard error of that mean. With a handful of training
    targets the best share is often best by chance; the rule keeps the simpler prediction (the class mean, no
    propagation) unless the evidence for more stands out of the spread between targets.

    Parameters
    ----------
    errors
        Per share, the error of each left-out training target (one array per share, same targets).
    """
    shares = sorted(errors)
    best = min(shares, key=lambda share: (float(np.mean(errors[share])), share))
    for share in shares:
        if share >= best:
            break
        diff = np.asarray(errors[share], dtype=np.float64) - np.asarray(errors[best], dtype=np.float64)
        n = len(diff)
        se = float(diff.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
        if float(diff.mean()) <= se:
            return share
    return best


def residual_map(embedding: np.ndarray | None, residuals: np.ndarray) -> tuple:
    """Ridge map from a gene embedding to what the class mean and the propagation leave of the operators.

    The penalty is chosen by exact leave-one-out (:func:`~scmech.data._embedding.ridge_map_cv`); an infinite
    penalty (the usual outcome with few training targets) means no embedding-specific part.

    Returns
    -------
    Coefficients, intercept and penalty, or ``(None, None, inf)`` without an embedding or with fewer than 3
    targets.
    """
    if embedding is None or len(residuals) < 3:
        return None, None, float("inf")
    coef, intercept, ridge, _ = ridge_map_cv(embedding, residuals)
    if not np.isfinite(ridge):
        return None, None, float("inf")
    return coef, intercept, float(ridge)
