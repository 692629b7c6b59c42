r"""Empirical-Bayes weights of the anchoring: how far a correction is kept, and how much each observation counts.

:func:`shrinkage` weighs a correction per gene against its sampling noise (a common prior with a limited
translation chosen by :func:`sure_translation`); :func:`random_effects_weights` weighs the members of a
random-effects mean by their precision, and :func:`without_own_genes` takes each member out of the mean at the
genes it knocks down itself (:func:`member_mean` reads that mean without forming the members x genes weights).
:mod:`scmech.model._anchoring` applies them; the precision-weighted train mean of :class:`scmech.tl.TrainMean`
uses the second.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = [
    "TRANSLATION_LIMITS",
    "member_mean",
    "random_effects_weights",
    "shrinkage",
    "sure_translation",
    "without_own_genes",
]


def shrinkage(corr: np.ndarray, var: np.ndarray | None) -> np.ndarray:
    r"""Per-gene weight of a correction observed with per-gene sampling variance ``var`` (empirical Bayes).

    The correction :math:`c_g` is the model's systematic error :math:`s_g` plus sampling noise of variance
    :math:`v_g`. With a common prior variance of the systematic errors, estimated from the correction itself as
    :math:`\tau^2 = \max(0, \overline{c_g^2 - v_g})`, the posterior mean of :math:`s_g` is :math:`k_g c_g` with
    :math:`k_g = \tau^2 / (\tau^2 + v_g)`: noisy genes (low expression, few cells) are shrunk towards the model,
    and a correction that is all noise is dropped.

    A common prior fits the typical gene, and a model's errors need not be typical: often most genes are fitted
    within their noise and a few are far off. The common :math:`\tau^2` is then small and would pull a
    correction that stands far out of its noise most of the way back to the model's error. A limited
    translation (Efron and Morris, J. Am. Stat. Assoc. 67, 130-139, 1972) bounds the shrinkage of each gene to
    :math:`\lambda` standard errors of its own noise: :math:`w_g = \max(k_g, 1 - \lambda \sqrt{v_g} / |c_g|)`.
    :math:`\lambda` is chosen per correction by :func:`sure_translation`, which minimises Stein's unbiased
    estimate of the squared error of :math:`w_g c_g`: the data decide between keeping corrections whole
    (:math:`\lambda = 0`), the common prior alone (:math:`\lambda \to \infty`) and any limit in between, so
    that errors concentrated on few genes are kept and errors spread thinly over many genes are shrunk. Without
    variances the correction is kept whole.

    Parameters
    ----------
    corr
        The correction per gene.
    var
        Its sampling variance per gene, or ``None``.
    """
    if var is None:
        return np.ones_like(corr)
    corr = np.asarray(corr, dtype=np.float64)
    var = np.nan_to_num(np.asarray(var, dtype=np.float64), nan=0.0)
    tau2 = max(0.0, float(np.mean(corr**2 - var)))
    common = tau2 / (tau2 + var) if tau2 > 0 else np.zeros_like(corr)
    lam = sure_translation(corr, var, common)
    size = np.abs(corr)
    if np.isinf(lam):
        limited = np.zeros_like(corr)
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            limited = np.where(size > 0, 1.0 - lam * np.sqrt(var) / size, 0.0)
    limited = np.where(var > 0, limited, 1.0)  # a correction without noise is exact
    return np.clip(np.maximum(common, limited), 0.0, 1.0)


#: translation limits :func:`sure_translation` chooses among, in standard errors (besides no limit at all)
TRANSLATION_LIMITS = np.arange(201) * 0.05


def sure_translation(corr: np.ndarray, var: np.ndarray, common: np.ndarray) -> float:
    r"""Return the translation limit :math:`\lambda` of :func:`shrinkage` that minimises Stein's unbiased risk estimate.

    For the estimate :math:`\hat s_g = w_g c_g` with :math:`w_g = \max(k_g, 1 - \lambda \sigma_g / |c_g|)`
    (:math:`\sigma_g^2 = v_g`), gene :math:`g` is translated by :math:`\lambda \sigma_g` when
    :math:`t_g = |c_g| (1 - k_g) / \sigma_g > \lambda` and scaled by :math:`k_g` otherwise. Stein's lemma
    (Ann. Stat. 9, 1135-1151, 1981) gives the unbiased estimate of :math:`E \sum_g (\hat s_g - s_g)^2`:
    :math:`v_g (1 + \lambda^2)` for a translated gene and :math:`(1 - k_g)^2 c_g^2 + v_g (2 k_g - 1)` for a
    scaled one (:math:`k_g` held fixed). It is evaluated at every limit of :data:`TRANSLATION_LIMITS` (0 to 10
    standard errors in steps of 0.05) and without a limit (every gene scaled), in one pass over the genes: each
    gene's terms are binned by the first limit that scales it and the bins summed cumulatively, so that choosing
    costs no sort of the genes (a minimum over a grid, as Donoho and Johnstone's SureShrink chooses a
    threshold, J. Am. Stat. Assoc. 90, 1200-1224, 1995). Written here because scipy and scikit-learn have no
    SURE for this estimator.

    Parameters
    ----------
    corr
        The correction per gene.
    var
        Its sampling variance per gene (0 where the correction is exact).
    common
        The common empirical-Bayes weight :math:`k_g` per gene.

    Returns
    -------
    The limit :math:`\lambda \ge 0`, in standard errors; ``inf`` when scaling every gene by the common weight
    is best.
    """
    sd = np.sqrt(var)
    noisy = sd > 0
    if not noisy.any():
        return 0.0
    c, v, k = corr[noisy], var[noisy], common[noisy]
    t = np.abs(c) * (1.0 - k) / sd[noisy]
    risk_scaled = (1.0 - k) ** 2 * c**2 + v * (2.0 * k - 1.0)
    limits = TRANSLATION_LIMITS
    n = len(limits)
    # gene g is scaled at limits[j] when t_g <= limits[j], i.e. from bin ceil(t_g / step) on (n: never on the grid)
    first = np.minimum(np.ceil(t / limits[1]), n).astype(np.int64)
    scaled = np.cumsum(np.bincount(first, weights=risk_scaled, minlength=n + 1))[:n]
    scaled_var = np.cumsum(np.bincount(first, weights=v, minlength=n + 1))[:n]
    risk = scaled + (v.sum() - scaled_var) * (1.0 + limits**2)
    best = int(np.argmin(risk))
    return float("inf") if risk_scaled.sum() < risk[best] else float(limits[best])


def random_effects_weights(values: np.ndarray, var: np.ndarray) -> np.ndarray:
    r"""Weights of a random-effects mean of observed responses (members x genes), each with its sampling noise.

    Each member :math:`q` observes the class's response plus its own deviation, of common variance
    :math:`\tau^2` per gene, plus sampling noise of mean variance :math:`\bar v_q` per gene (few cells: large
    :math:`\bar v_q`). The best linear unbiased mean weighs each member by :math:`1 / (\tau^2 + \bar v_q)`
    (DerSimonian and Laird, Control. Clin. Trials 7, 177-188, 1986), with :math:`\tau^2` estimated by moments
    over all genes: the members' spread around their mean less their mean noise. Members observed with similar
    precision get equal weights; a member observed in a handful of cells, whose pseudobulk is mostly noise,
    weighs less and no longer pulls every unseen target's prediction along its noise.

    Parameters
    ----------
    values
        Observed log pseudobulks of the members (members x genes).
    var
        Their per-gene sampling variances.

    Returns
    -------
    The weights, summing to 1.
    """
    k = len(values)
    if k < 2:
        return np.ones(k)
    noise = np.nan_to_num(np.asarray(var, dtype=np.float64), nan=0.0).mean(axis=1)
    spread = float(np.mean(np.var(np.asarray(values, dtype=np.float64), axis=0, ddof=1)))
    tau2 = max(0.0, spread - float(noise.mean()))
    total = tau2 + noise
    if not np.all(total > 0):
        return np.full(k, 1.0 / k)
    w = 1.0 / total
    return w / w.sum()


def without_own_genes(weights: np.ndarray, own_genes: tuple[tuple[int, ...], ...], n_genes: int) -> np.ndarray:
    r"""Per-gene weights of a mean of members' responses that leaves each member out at its own target genes.

    A member's response at the gene it knocks down is its direct knock-down, not a response that another target
    shares: a target without training cells does not knock down the training targets' genes. The mean that
    anchors it (the shared response, :class:`~scmech.model._anchoring.UnseenTarget`) therefore reads gene
    :math:`g` over the members that do not target :math:`g`, with their weights renormalised:
    :math:`\omega_{qg} = \omega_q [g \notin G_q] / \sum_p \omega_p [g \notin G_p]`. Otherwise every unseen
    target is predicted with a fall of each training target's gene by that target's share of the mean: large on
    log-normalised input, where a knock-down moves its gene's mean of log values by several units, and wrong
    wherever it is scored relative to the training targets' mean (which carries those falls). A gene that every
    member targets keeps the plain weights.

    Parameters
    ----------
    weights
        The members' weights (:func:`random_effects_weights`), summing to 1.
    own_genes
        Positions of each member's target genes (empty for a target whose gene is not measured).
    n_genes
        Number of genes.

    Returns
    -------
    Weights (members x genes), each column summing to 1.
    """
    w = np.asarray(weights, dtype=np.float64)
    out = np.repeat(w[:, None], n_genes, axis=1)
    for q, genes in enumerate(own_genes):
        if genes:
            out[q, list(genes)] = 0.0
    total = out.sum(axis=0)
    empty = total <= 0
    out[:, empty] = w[:, None]
    out[:, ~empty] /= total[~empty]
    return out


def member_mean(
    weights: np.ndarray, values: np.ndarray, own_genes: tuple[tuple[int, ...], ...] = (), *, squared: bool = False
) -> np.ndarray:
    r"""Mean of the members' ``values`` (members x genes) with the weights of :func:`without_own_genes`.

    :math:`\sum_q \omega_{qg} x_{qg}` (``squared=True``: :math:`\sum_q \omega_{qg}^2 x_{qg}`, the sampling variance
    of the mean when ``values`` are the members' variances), computed as
    :math:`\sum_q w_q [g \notin G_q] x_{qg} / \sum_q w_q [g \notin G_q]` from the weights' product with
    ``values`` and a sparse correction at the members' own genes. The weights :func:`without_own_genes` returns
    are members x genes; a screen anchors an unseen target on every training target, and at genome scale
    (thousands of targets, thousands of genes) that matrix, and its product with each operand, would take
    gigabytes for what one matrix-vector product gives.

    Parameters
    ----------
    weights
        The members' weights (:func:`random_effects_weights`), summing to 1.
    values
        The members' values (members x genes).
    own_genes
        Positions of each member's target genes (empty: no member is left out anywhere).
    squared
        Weigh by the squared weights.
    """
    w = np.asarray(weights, dtype=np.float64)
    x = np.asarray(values, dtype=np.float64)
    n, n_genes = x.shape
    power = 2 if squared else 1
    total = (w**power) @ x
    pairs = sorted({(q, int(g)) for q, genes in enumerate(own_genes) for g in genes})
    if not pairs:
        return total
    rows, cols = (np.asarray(v, dtype=np.int64) for v in zip(*pairs, strict=True))
    left = sp.csr_matrix((w[rows], (rows, cols)), shape=(n, n_genes))  # each member's weight at its own genes
    kept = w.sum() - np.asarray(left.sum(axis=0)).ravel()
    removed = np.bincount(cols, weights=w[rows] ** power * x[rows, cols], minlength=n_genes)
    empty = kept <= 0  # a gene every member targets keeps the plain weights
    out = np.where(empty, total, (total - removed) / np.where(empty, 1.0, kept) ** power)
    return out
