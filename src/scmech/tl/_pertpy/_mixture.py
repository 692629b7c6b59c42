r"""Mixscape's classification by scmech, for a scikit-learn too new for pertpy's mixture model.

pertpy 1.0's ``MixscapeGaussianMixture`` overrides ``GaussianMixture._m_step(X, log_resp)``, which scikit-learn 1.8
calls with ``xp=``; :func:`_pertpy_mixture_works` tells whether pertpy's own ``Mixscape.mixscape`` can run, and
:func:`_mixscape_posterior` is the same classification (Papalexi et al. 2021) otherwise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.special import expit

from scmech._threads import torch_threads_kept
from scmech.tl._stats import norm_logpdf

if TYPE_CHECKING:
    from anndata import AnnData


def _pertpy_mixture_works() -> bool:
    """Whether pertpy's Mixscape mixture model runs with the installed scikit-learn.

    pertpy 1.0 overrides ``GaussianMixture._m_step(X, log_resp)``; scikit-learn 1.8 calls it with ``xp=``.
    """
    import inspect

    from sklearn.mixture import GaussianMixture

    try:
        from pertpy.tools._mixscape import MixscapeGaussianMixture
    except ImportError:
        return False
    needs_xp = "xp" in inspect.signature(GaussianMixture._m_step).parameters
    takes = inspect.signature(MixscapeGaussianMixture._m_step).parameters
    return not needs_xp or "xp" in takes or any(p.kind is p.VAR_KEYWORD for p in takes.values())


def _fixed_control_mixture(pvec: np.ndarray, nt: np.ndarray, guide: np.ndarray, max_iter: int = 100) -> np.ndarray:
    """Posterior of the perturbed component of a 1-D two-Gaussian mixture whose control component is fixed.

    The control component has the mean and variance of the control cells' projections (as Mixscape); the
    perturbed component and the weights are fitted by EM on all cells, starting from the current guide cells.
    The log-likelihood is :func:`numpy.logaddexp` of the components' and the posterior :func:`scipy.special.expit`
    of the log-odds.
    """
    m0, v0 = float(pvec[nt].mean()), max(float(pvec[nt].var(ddof=1)), 1e-6)
    m1, v1 = float(pvec[guide].mean()), max(float(pvec[guide].var(ddof=1)) if guide.sum() > 1 else v0, 1e-6)
    w1, old = 0.5, -np.inf
    for _ in range(max_iter):
        l0 = np.log1p(-w1) + norm_logpdf(pvec, m0, np.sqrt(v0))
        l1 = np.log(w1) + norm_logpdf(pvec, m1, np.sqrt(v1))
        ll = np.logaddexp(l0, l1)
        r1 = np.exp(l1 - ll)
        n1 = r1.sum()
        if n1 < 1e-8:
            break
        w1 = float(np.clip(n1 / len(pvec), 1e-6, 1 - 1e-6))
        m1 = float((r1 * pvec).sum() / n1)
        v1 = max(float((r1 * (pvec - m1) ** 2).sum() / n1), 1e-6)
        total = float(ll.sum())
        if abs(total - old) <= 1e-8 * max(1.0, abs(total)):
            break
        old = total
    l0 = np.log1p(-w1) + norm_logpdf(pvec, m0, np.sqrt(v0))
    l1 = np.log(w1) + norm_logpdf(pvec, m1, np.sqrt(v1))
    return expit(l1 - l0)


def _markers(res: dict, gene: str, logfc_threshold: float, pval_cutoff: float) -> np.ndarray:
    """Marker genes of a perturbation from a ``rank_genes_groups`` result: large change and small adjusted p."""
    lfc = np.asarray(res["logfoldchanges"][gene], dtype=np.float64)
    padj = np.asarray(res["pvals_adj"][gene], dtype=np.float64)
    names = np.asarray(res["names"][gene])
    return names[(np.abs(lfc) >= logfc_threshold) & (padj < pval_cutoff)]


def _classify(
    dat: np.ndarray, is_nt: np.ndarray, is_orig: np.ndarray, *, iter_num: int, min_de_genes: int
) -> np.ndarray:
    """Posterior of being perturbed of a perturbation's cells, iterating projection and mixture until stable.

    Parameters
    ----------
    dat
        Scaled signatures (cells x marker genes) of the controls and the perturbation's cells.
    is_nt, is_orig
        Which rows are controls and which the perturbation's cells.
    iter_num
        At most this many rounds.
    min_de_genes
        Stop when fewer cells than this stay in the perturbed class.

    Returns
    -------
    The posterior of each of the perturbation's cells (1 when no round could run).
    """
    guide = is_orig.copy()
    post = np.ones(int(is_orig.sum()))
    for _ in range(iter_num):
        vec = dat[guide].mean(axis=0) - dat[is_nt].mean(axis=0)
        denom = float(vec @ vec)
        if denom <= 0 or guide.sum() < 2:
            break
        pvec = dat @ vec / denom
        post_all = _fixed_control_mixture(pvec, is_nt, guide)
        post = post_all[is_orig]
        new_guide = np.zeros_like(guide)
        new_guide[np.flatnonzero(is_orig)[post > 0.5]] = True
        if new_guide.sum() < min_de_genes or (new_guide == guide).all():
            guide = new_guide
            break
        guide = new_guide
    return post


def _mixscape_posterior(
    work: AnnData,
    pert_key: str,
    ctrl: str,
    split: str | None,
    *,
    min_de_genes: int,
    logfc_threshold: float,
    pval_cutoff: float,
    random_state: int,
    iter_num: int = 10,
) -> tuple[np.ndarray, dict]:
    """Mixscape's classification (Papalexi et al. 2021; pertpy's ``Mixscape.mixscape``) on ``layers["X_pert"]``.

    Per split and perturbation: marker genes by Wilcoxon tests against the controls (``|logFC| >=
    logfc_threshold``, adjusted p below ``pval_cutoff``, at least ``min_de_genes``); cells projected on the
    difference of the scaled perturbation signatures of the current perturbed class and the controls; a
    two-component mixture with the control component fixed; iterated until the classes are stable. Returns the
    posterior of being perturbed per cell and ``{perturbation: {split: True}}`` for the fitted ones.
    """
    import scanpy as sc

    del random_state  # EM from a deterministic start: nothing random
    labels = work.obs[pert_key].astype(str).to_numpy()
    splits = work.obs[split].astype(str).to_numpy() if split is not None else np.full(work.n_obs, "all", dtype=object)
    xp = work.layers["X_pert"]
    xp = xp.toarray() if sp.issparse(xp) else np.asarray(xp, dtype=np.float64)
    prob = np.zeros(work.n_obs, dtype=np.float64)
    fitted: dict[str, dict[str, bool]] = {}
    for cat in pd.unique(splits):
        in_split = splits == cat
        sub = work[in_split].copy()
        genes = sorted(set(labels[in_split].tolist()) - {ctrl})
        if not genes or ctrl not in set(labels[in_split].tolist()):
            continue
        with torch_threads_kept():
            sc.tl.rank_genes_groups(
                sub, groupby=pert_key, groups=genes, reference=ctrl, method="wilcoxon", use_raw=False, key_added="_ms"
            )
        res = sub.uns["_ms"]
        var_pos = {g: i for i, g in enumerate(sub.var_names)}
        for gene in genes:
            markers = _markers(res, gene, logfc_threshold, pval_cutoff)
            if len(markers) < min_de_genes:
                continue
            nt = in_split & (labels == ctrl)
            orig = in_split & (labels == gene)
            rows = np.flatnonzero(nt | orig)
            dat = xp[rows][:, [var_pos[g] for g in markers]]
            sd = dat.std(axis=0, ddof=1)
            dat = (dat - dat.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
            post = _classify(dat, nt[rows], orig[rows], iter_num=iter_num, min_de_genes=min_de_genes)
            prob[np.flatnonzero(orig)] = post
            fitted.setdefault(gene, {})[str(cat)] = True
    return prob, fitted
