r"""Interoperability with pertpy (the optional ``scmech[pertpy]`` extra).

- :func:`efficacy_from_mixscape`: pertpy's Mixscape classes or posterior scores as the per-cell knock-down
  efficacy of :meth:`~scmech.model.SemiMechVI.setup_anndata` (``efficacy_key``).
- :func:`combine_prediction`: a prediction of scmech (``SemiMechVI.predict`` or a baseline's ``predict``) and
  the observed cells in one AnnData, in one space, labelled for pertpy.
- :func:`prediction_distance`: :class:`pertpy.tools.Distance` between predicted and observed cells of each
  condition.
- :func:`perturbation_space`: pertpy's :class:`~pertpy.tools.PseudobulkSpace` or
  :class:`~pertpy.tools.CentroidSpace` of predicted and observed conditions side by side.

pertpy is imported inside the functions; ``import scmech.tl`` does not import it.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any, Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scvi import settings

from scmech._constants import SCMECH_ADATA_KEYS, TARGET_SUM
from scmech.data._design import canonical_label, get_design, parse_condition
from scmech.data._pseudobulk import pseudobulk

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

logger = logging.getLogger(__name__)

__all__ = ["combine_prediction", "efficacy_from_mixscape", "perturbation_space", "prediction_distance"]

#: pertpy metrics that compare distributions of cells (a mean prediction is a single point for them)
_CELL_METRICS = frozenset(
    {
        "edistance",
        "mean_pairwise",
        "mmd",
        "wasserstein",
        "sym_kldiv",
        "t_test",
        "ks_test",
        "nb_ll",
        "classifier_proba",
        "classifier_cp",
        "mean_var_distribution",
    }
)
PREDICTED, OBSERVED = "predicted", "observed"


def _import_pertpy(what: str):
    try:
        import pertpy as pt
    except ImportError as e:
        msg = f"{what} needs pertpy: pip install 'scmech[pertpy]' ({e})."
        raise ImportError(msg) from e
    return pt


def _dense(x) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def _obs_column(adata: AnnData, key: str, what: str) -> pd.Series:
    if key not in adata.obs.columns:
        msg = f"{what}: {key!r} is not a column of adata.obs (columns: {list(adata.obs.columns)[:10]}); pass {what}=..."
        raise KeyError(msg)
    return adata.obs[key]


# ---------------------------------------------------------------------- Mixscape efficacy
def efficacy_from_mixscape(
    adata: AnnData,
    *,
    perturbation_key: str = "perturbation",
    control_label: str = "NT",
    unassigned_label: str | Sequence[str] | None = ("unassigned", "multiple"),
    score_key: str | None = None,
    class_key: str | None = None,
    layer: str | None = None,
    counts: bool = True,
    split_by: str | None = None,
    n_neighbors: int | None = 20,
    n_pcs: int = 15,
    min_de_genes: int = 5,
    logfc_threshold: float = 0.25,
    pval_cutoff: float = 0.05,
    perturbation_type: str = "KO",
    untestable: float = 1.0,
    key_added: str = SCMECH_ADATA_KEYS.EFFICACY_OBS,
    random_state: int = 0,
    copy: bool = False,
) -> pd.Series | AnnData:
    r"""Per-cell knock-down efficacy in :math:`[0, 1]` from pertpy's Mixscape.

    Three sources, in this order:

    - ``score_key``: read Mixscape's posterior probability of being perturbed (``"mixscape_class_p_ko"`` after
      :meth:`pertpy.tools.Mixscape.mixscape`) from ``adata.obs``;
    - ``class_key``: read Mixscape's classes (``"mixscape_class"`` or ``"mixscape_class_global"``): classes
      ending in ``"NP"`` (not perturbed, escapers) give 0, the others 1;
    - neither: run Mixscape on a private, log-normalised copy of the assigned cells
      (``normalize_total(1e4)`` and ``log1p`` when ``counts``; PCA with ``n_pcs`` components;
      :meth:`~pertpy.tools.Mixscape.perturbation_signature` against the ``n_neighbors`` nearest controls;
      :meth:`~pertpy.tools.Mixscape.mixscape`) and take the posterior probability of being perturbed.
      Perturbations in which Mixscape finds fewer than ``min_de_genes`` marker genes cannot be split into
      responders and escapers; their cells get ``untestable`` (1 by default: the model's full effect, as
      :func:`scmech.tl.estimate_efficacy` does).

    Control and unassigned cells get 0. The column can be registered as ``efficacy_key`` of
    :meth:`~scmech.model.SemiMechVI.setup_anndata`. Like :func:`scmech.tl.estimate_efficacy`, it is a
    probability of belonging to the responding population, not a graded knock-down.

    Parameters
    ----------
    adata
        Annotated data matrix with raw counts in ``X`` (or ``layer``) and perturbation labels in ``obs``.
    perturbation_key
        ``obs`` column with the perturbation of each cell (e.g. written by :func:`scmech.pp.assign_guides`).
    control_label
        Label of non-targeting control cells.
    unassigned_label
        Label (or labels) of cells without a usable guide call; they are left out of Mixscape.
    score_key
        ``obs`` column with Mixscape posterior probabilities to read instead of running Mixscape.
    class_key
        ``obs`` column with Mixscape classes to read instead of running Mixscape.
    layer
        Layer with the counts; ``X`` when ``None``.
    counts
        Whether the matrix holds raw counts (log-normalised for Mixscape) or log-normalised values already.
    split_by
        ``obs`` column (e.g. replicates) within which Mixscape picks controls and fits its mixtures.
    n_neighbors
        Control neighbours of each cell in the perturbation signature (pertpy's ``ref_selection_mode="nn"``);
        ``None`` subtracts the mean of the controls (of the cell's ``split_by`` group) instead, which is faster.
    n_pcs
        Principal components used to find the neighbours.
    min_de_genes, logfc_threshold, pval_cutoff, perturbation_type
        Passed to :meth:`pertpy.tools.Mixscape.mixscape`.
    untestable
        Efficacy of the cells of perturbations without enough marker genes.
    key_added
        ``obs`` column to write.
    random_state
        Seed of the PCA, the neighbour search and Mixscape's mixture models.
    copy
        Return a copy of ``adata`` instead of writing into ``adata``.

    Returns
    -------
    The efficacy per cell (a Series indexed by ``obs_names``) when ``copy=False``, else the copy of ``adata``.
    Writes ``adata.obs[key_added]`` (``float64`` in :math:`[0, 1]`) and nothing else: Mixscape runs on a copy.

    Examples
    --------
    >>> import scmech
    >>> scmech.tl.efficacy_from_mixscape(adata, perturbation_key="perturbation", split_by="bio_rep")
    >>> scmech.model.SemiMechVI.setup_anndata(adata, efficacy_key="scmech_efficacy")

    Reading the scores of a Mixscape run of your own:

    >>> scmech.tl.efficacy_from_mixscape(adata, score_key="mixscape_class_p_ko")
    """
    # cheap checks first
    if not isinstance(key_added, str) or not key_added:
        msg = f"key_added={key_added!r} must be a non-empty string (the obs column to write)."
        raise ValueError(msg)
    if score_key is not None and class_key is not None:
        msg = f"Pass either score_key={score_key!r} or class_key={class_key!r}, not both."
        raise ValueError(msg)
    if not (isinstance(untestable, int | float) and 0.0 <= float(untestable) <= 1.0):
        msg = f"untestable={untestable!r} must be in [0, 1] (1 = full effect, 0 = no effect)."
        raise ValueError(msg)
    for name, value in (("n_neighbors", n_neighbors), ("n_pcs", n_pcs), ("min_de_genes", min_de_genes)):
        if name == "n_neighbors" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            msg = f"{name}={value!r} must be a positive integer."
            raise ValueError(msg)
    if layer is not None and layer not in adata.layers:
        msg = f"layer={layer!r} is not a layer of adata (layers: {list(adata.layers.keys())}); pass layer=None for X."
        raise KeyError(msg)
    if split_by is not None:
        _obs_column(adata, split_by, "split_by")
    design = get_design(
        adata,
        perturbation_key,
        control_label,
        unassigned_label=unassigned_label,
        warn_missing_controls=False,
    ).perturbation
    perturbed = ~design.is_control & ~design.is_unassigned
    eff = np.zeros(adata.n_obs, dtype=np.float64)
    if score_key is not None:
        score = pd.to_numeric(_obs_column(adata, score_key, "score_key"), errors="coerce").to_numpy(np.float64)
        bad = perturbed & ~(np.isfinite(score) & (score >= 0) & (score <= 1))
        if bad.any():
            msg = (
                f"adata.obs[{score_key!r}] must hold probabilities in [0, 1] for every perturbed cell; "
                f"{int(bad.sum())} are not (e.g. {score[np.flatnonzero(bad)[0]]!r}). Pass Mixscape's "
                "'<class>_p_ko' column."
            )
            raise ValueError(msg)
        eff[perturbed] = score[perturbed]
        source = f"obs[{score_key!r}]"
    elif class_key is not None:
        classes = _obs_column(adata, class_key, "class_key").astype(str).to_numpy()
        eff[perturbed] = np.where(np.char.endswith(classes[perturbed].astype(str), "NP"), 0.0, 1.0)
        source = f"obs[{class_key!r}]"
    else:
        if not design.is_control.any():
            msg = f"No control cells ({control_label!r} in obs[{perturbation_key!r}]); Mixscape needs them."
            raise ValueError(msg)
        eff = _run_mixscape(
            adata,
            design,
            layer=layer,
            counts=counts,
            split_by=split_by,
            n_neighbors=n_neighbors,
            n_pcs=n_pcs,
            min_de_genes=min_de_genes,
            logfc_threshold=logfc_threshold,
            pval_cutoff=pval_cutoff,
            perturbation_type=perturbation_type,
            untestable=float(untestable),
            random_state=random_state,
        )
        source = "pertpy Mixscape"
    eff = np.clip(eff, 0.0, 1.0)
    logger.info("Efficacy from %s: mean %.3f over %d perturbed cells", source, eff[perturbed].mean(), perturbed.sum())
    series = pd.Series(eff, index=adata.obs_names.copy(), name=key_added, dtype=np.float64)
    adata = adata.copy() if copy else adata
    adata.obs[key_added] = series.to_numpy()
    return adata if copy else series


def _run_mixscape(
    adata: AnnData,
    design,
    *,
    layer: str | None,
    counts: bool,
    split_by: str | None,
    n_neighbors: int | None,
    n_pcs: int,
    min_de_genes: int,
    logfc_threshold: float,
    pval_cutoff: float,
    perturbation_type: str,
    untestable: float,
    random_state: int,
) -> np.ndarray:
    pt = _import_pertpy("efficacy_from_mixscape")
    import scanpy as sc

    cells = np.flatnonzero(~design.is_unassigned)
    x = adata.layers[layer] if layer is not None else adata.X
    x = x[cells]
    x = sp.csr_matrix(x, dtype=np.float32) if sp.issparse(x) else np.asarray(x, dtype=np.float32)
    labels = design.labels[cells].astype(str)
    obs = pd.DataFrame({"_perturbation": labels}, index=pd.Index(adata.obs_names[cells]).astype(str))
    if split_by is not None:
        obs["_split"] = adata.obs[split_by].astype(str).to_numpy()[cells]
    work = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=pd.Index(adata.var_names).astype(str)))
    if counts:
        sc.pp.normalize_total(work, target_sum=TARGET_SUM)
        sc.pp.log1p(work)
    ctrl = design.control_label
    split = "_split" if split_by is not None else None
    # controls per split: the signature needs them (n_neighbors of them for the neighbour search)
    groups = work.obs["_split"] if split is not None else pd.Series("all", index=work.obs_names)
    n_ctrl = (work.obs["_perturbation"] == ctrl).groupby(groups.to_numpy()).sum()
    need = 1 if n_neighbors is None else n_neighbors
    few = n_ctrl[n_ctrl < need]
    if len(few):
        where = f"split_by={split_by!r} groups {few.index.tolist()[:5]}" if split is not None else "The data"
        msg = (
            f"{where} have fewer than {need} control cells ({int(few.min())}); Mixscape compares each cell with "
            "controls: lower n_neighbors, pass n_neighbors=None or split_by=None."
        )
        raise ValueError(msg)
    n_comps = max(1, min(n_pcs, work.n_obs - 1, work.n_vars - 1))
    if n_neighbors is not None:
        sc.pp.pca(work, n_comps=n_comps, random_state=random_state)
    ms = pt.tl.Mixscape()
    with warnings.catch_warnings():
        # scanpy's DataFrame-fragmentation notices from rank_genes_groups: nothing the user can act on
        warnings.simplefilter("ignore", category=getattr(pd.errors, "PerformanceWarning", Warning))
        if n_neighbors is None:
            # pertpy's ref_selection_mode="split_by": the mean of the split's controls minus the cell
            xw = _dense(work.X).astype(np.float64)
            sig = np.empty_like(xw)
            is_ctrl = (work.obs["_perturbation"] == ctrl).to_numpy()
            for g in pd.unique(groups.to_numpy()):
                m = (groups == g).to_numpy()
                sig[m] = xw[m & is_ctrl].mean(axis=0) - xw[m]
            work.layers["X_pert"] = sig
        else:
            ms.perturbation_signature(
                work,
                "_perturbation",
                ctrl,
                split_by=split,
                n_neighbors=n_neighbors,
                use_rep="X_pca",
                n_dims=n_comps,
                random_state=int(random_state),
            )
        kwargs = {
            "min_de_genes": min_de_genes,
            "logfc_threshold": logfc_threshold,
            "pval_cutoff": pval_cutoff,
            "random_state": int(random_state),
        }
        if _pertpy_mixture_works():
            ms.mixscape(
                work,
                "_perturbation",
                ctrl,
                layer="X_pert",
                split_by=split,
                perturbation_type=perturbation_type,
                **kwargs,
            )
            prob = work.obs[f"mixscape_class_p_{perturbation_type.lower()}"].to_numpy(np.float64)
            # perturbations (per split) with a mixture fit are in uns["mixscape"]; the others had too few markers
            fitted = work.uns.get("mixscape", {})
            backend = "pertpy"
        else:
            prob, fitted = _mixscape_posterior(work, "_perturbation", ctrl, split, **kwargs)
            backend = "scmech (scikit-learn too new for pertpy's mixture model)"
    logger.info("Mixscape mixture fits by %s", backend)
    splits = (
        work.obs["_split"].astype(str).to_numpy() if split is not None else np.full(work.n_obs, "all", dtype=object)
    )
    is_pert = labels != ctrl
    tested = np.array(
        [bool(p) and lab in fitted and s in fitted[lab] for p, lab, s in zip(is_pert, labels, splits, strict=True)]
    )
    n_untested = len(set(labels[is_pert & ~tested].tolist()))
    if n_untested:
        logger.info(
            "Mixscape found fewer than %d marker genes for %d perturbation(s); their cells get efficacy %.2g",
            min_de_genes,
            n_untested,
            untestable,
        )
    eff_cells = np.where(is_pert, np.where(tested, prob, untestable), 0.0)
    eff = np.zeros(adata.n_obs, dtype=np.float64)
    eff[cells] = eff_cells
    return eff


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


def _gaussian_logpdf(x: np.ndarray, mean: float, var: float) -> np.ndarray:
    return -0.5 * (np.log(2 * np.pi * var) + (x - mean) ** 2 / var)


def _fixed_control_mixture(pvec: np.ndarray, nt: np.ndarray, guide: np.ndarray, max_iter: int = 100) -> np.ndarray:
    """Posterior of the perturbed component of a 1-D two-Gaussian mixture whose control component is fixed.

    The control component has the mean and variance of the control cells' projections (as Mixscape); the
    perturbed component and the weights are fitted by EM on all cells, starting from the current guide cells.
    """
    m0, v0 = float(pvec[nt].mean()), max(float(pvec[nt].var(ddof=1)), 1e-6)
    m1, v1 = float(pvec[guide].mean()), max(float(pvec[guide].var(ddof=1)) if guide.sum() > 1 else v0, 1e-6)
    w1, old = 0.5, -np.inf
    for _ in range(max_iter):
        l0 = np.log1p(-w1) + _gaussian_logpdf(pvec, m0, v0)
        l1 = np.log(w1) + _gaussian_logpdf(pvec, m1, v1)
        top = np.maximum(l0, l1)
        ll = top + np.log(np.exp(l0 - top) + np.exp(l1 - top))
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
    l0 = np.log1p(-w1) + _gaussian_logpdf(pvec, m0, v0)
    l1 = np.log(w1) + _gaussian_logpdf(pvec, m1, v1)
    return 1.0 / (1.0 + np.exp(np.clip(l0 - l1, -700, 700)))


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
        sc.tl.rank_genes_groups(
            sub, groupby=pert_key, groups=genes, reference=ctrl, method="wilcoxon", use_raw=False, key_added="_ms"
        )
        res = sub.uns["_ms"]
        var_pos = {g: i for i, g in enumerate(sub.var_names)}
        for gene in genes:
            lfc = np.asarray(res["logfoldchanges"][gene], dtype=np.float64)
            padj = np.asarray(res["pvals_adj"][gene], dtype=np.float64)
            names = np.asarray(res["names"][gene])
            markers = names[(np.abs(lfc) >= logfc_threshold) & (padj < pval_cutoff)]
            if len(markers) < min_de_genes:
                continue
            nt = in_split & (labels == ctrl)
            orig = in_split & (labels == gene)
            rows = np.flatnonzero(nt | orig)
            dat = xp[rows][:, [var_pos[g] for g in markers]]
            sd = dat.std(axis=0, ddof=1)
            dat = (dat - dat.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
            is_nt, is_orig = nt[rows], orig[rows]
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
            prob[np.flatnonzero(orig)] = post
            fitted.setdefault(gene, {})[str(cat)] = True
    return prob, fitted


# ---------------------------------------------------------------------- predictions -> pertpy
def _is_mean_prediction(pred: AnnData, labels: np.ndarray) -> bool:
    return "source_cell" not in pred.obs.columns and len(set(labels.tolist())) == len(labels)


def combine_prediction(
    pred: AnnData,
    observed: AnnData,
    *,
    perturbation_key: str = "perturbation",
    control_label: str = "NT",
    separator: str = "+",
    unassigned_label: str | Sequence[str] | None = ("unassigned", "multiple"),
    layer: str | None = None,
    counts: bool = True,
    conditions: Sequence[str] | None = None,
    n_pcs: int | None = 30,
    max_cells: int | None = 300,
    random_state: int = 0,
) -> AnnData:
    r"""Predicted and observed cells of each condition in one AnnData, ready for pertpy.

    ``pred`` is what :meth:`SemiMechVI.predict <scmech.model.SemiMechVI.predict>` or a baseline's ``predict``
    returns: ``X`` is :math:`\log(1 + 10^4\rho)`, per cell (``return_mean=False``) or per condition (the
    pseudobulk :math:`\log(1 + 10^4\bar\rho)`, ``return_mean=True``). The observed cells are put in the same
    space: log-normalised (``normalize_total(1e4)`` and ``log1p`` when ``counts``) for a per-cell prediction,
    and aggregated to the same pseudobulk (:func:`scmech.data.pseudobulk`) for a mean prediction. The observed
    controls are always included (for a "no change" reference).

    Parameters
    ----------
    pred
        Prediction AnnData with ``obs["perturbation"]``.
    observed
        Observed cells with counts in ``X`` (or ``layer``) and labels in ``obs[perturbation_key]``.
    perturbation_key, control_label, separator, unassigned_label
        Labels of ``observed`` (combinations are matched regardless of the order of their targets).
    layer
        Layer of ``observed`` with the counts.
    counts
        Whether ``observed`` holds raw counts (else log-normalised values, used as they are).
    conditions
        Conditions to keep; all predicted conditions with observed cells when ``None``.
    n_pcs
        Principal components of ``obsm["X_pca"]``, fitted on the observed log-normalised cells (controls and
        ``conditions``) and applied to both sides; ``None`` leaves ``X_pca`` out.
    max_cells
        At most this many cells per condition and side (a seeded subsample); ``None`` keeps all.
    random_state
        Seed of the subsamples and the PCA.

    Returns
    -------
    AnnData over the genes shared by ``pred`` and ``observed`` with ``X`` the log-normalised values and

    - ``obs["perturbation"]`` (canonical condition), ``obs["source"]`` (``"predicted"``/``"observed"``),
      ``obs["group"]`` (``"predicted|STAT1"``, ``"observed|NT"``, categorical) and ``obs["n_cells"]`` (cells
      behind the row: 1 for a cell, the cells of a pseudobulk or the starting cells of a mean prediction);
    - ``obsm["X_pca"]`` (with ``n_pcs``);
    - ``uns["scmech"]["combine_prediction"]``: ``mean_prediction``, ``n_pcs`` and the PCA ``loadings``.

    Hand it to pertpy's ``Distance``, e.g.
    ``Distance("edistance", obsm_key="X_pca").onesided_distances(out, groupby="group", selected_group="observed|NT")``.

    Examples
    --------
    >>> pred = model.predict(["STAT1", "JAK2"], return_mean=False, n_cells=200)
    >>> both = scmech.tl.combine_prediction(pred, adata)
    >>> both.obs["group"].value_counts()
    """
    if not isinstance(pred, ad.AnnData) or not isinstance(observed, ad.AnnData):
        msg = (
            f"pred and observed must be AnnData (got {type(pred).__name__} and {type(observed).__name__}); pass "
            "the AnnData returned by predict() and the observed cells (mdata['rna'] of a MuData)."
        )
        raise TypeError(msg)
    if n_pcs is not None and (isinstance(n_pcs, bool) or not isinstance(n_pcs, int | np.integer) or n_pcs < 1):
        msg = f"n_pcs={n_pcs!r} must be a positive integer, or None to compare genes directly."
        raise ValueError(msg)
    if max_cells is not None and (not isinstance(max_cells, int | np.integer) or max_cells < 1):
        msg = f"max_cells={max_cells!r} must be a positive integer or None."
        raise ValueError(msg)
    if layer is not None and layer not in observed.layers:
        msg = f"layer={layer!r} is not a layer of observed (layers: {list(observed.layers.keys())})."
        raise KeyError(msg)
    if "perturbation" not in pred.obs.columns:
        msg = "pred has no obs['perturbation'] column; pass the AnnData returned by predict()."
        raise KeyError(msg)
    design = get_design(
        observed,
        perturbation_key,
        control_label,
        separator=separator,
        unassigned_label=unassigned_label,
        warn_missing_controls=False,
    ).perturbation
    ctrl = design.control_label

    def _canon(label: str) -> str:
        t = parse_condition(str(label), separator=separator, control_label=control_label, key="perturbation")
        return canonical_label(t, separator=separator, control_label=ctrl)

    plabels = np.asarray([_canon(x) for x in pred.obs["perturbation"].astype(str)], dtype=object)
    mean_pred = _is_mean_prediction(pred, plabels)
    olabels = np.where(design.is_unassigned, "", design.labels).astype(object)
    observed_conds = set(olabels[olabels != ""].tolist())
    if ctrl not in observed_conds:
        msg = f"observed has no control cells ({control_label!r} in obs[{perturbation_key!r}])."
        raise ValueError(msg)
    if conditions is None:
        conds = [c for c in pd.unique(plabels) if c in observed_conds]
    else:
        conds = [_canon(c) for c in conditions]
        missing = [c for c in conds if c not in set(plabels.tolist()) or c not in observed_conds]
        if missing:
            msg = (
                f"conditions {missing[:5]} lack predicted or observed cells; predicted: {sorted(set(plabels))[:10]}, "
                f"observed: {sorted(observed_conds)[:10]}."
            )
            raise KeyError(msg)
    if not conds:
        msg = (
            f"No predicted condition has observed cells (predicted: {sorted(set(plabels))[:10]}; observed "
            f"obs[{perturbation_key!r}]: {sorted(observed_conds)[:10]}); check perturbation_key and control_label."
        )
        raise ValueError(msg)
    genes = pd.Index(pred.var_names).astype(str).intersection(pd.Index(observed.var_names).astype(str), sort=False)
    if len(genes) == 0:
        msg = "pred and observed share no var_names; predict on the genes of the observed data."
        raise ValueError(msg)
    if len(genes) < observed.n_vars or len(genes) < pred.n_vars:
        logger.info("Comparing on the %d genes shared by pred and observed", len(genes))
    rng = np.random.default_rng(np.random.SeedSequence(int(random_state)))

    def _take(idx: np.ndarray) -> np.ndarray:
        if max_cells is not None and len(idx) > max_cells:
            idx = np.sort(rng.choice(idx, size=max_cells, replace=False))
        return idx

    obs_groups = [ctrl, *[c for c in conds if c != ctrl]]
    # observed: log-normalised cells of the control and the conditions (seeded subsample per group)
    take = np.concatenate([_take(np.flatnonzero(olabels == c)) for c in obs_groups])
    gpos = pd.Index(observed.var_names).astype(str).get_indexer(genes)
    xo = observed.layers[layer] if layer is not None else observed.X
    cells = ad.AnnData(
        X=sp.csr_matrix(xo[take], dtype=np.float32) if sp.issparse(xo) else np.asarray(xo[take], dtype=np.float32),
        obs=pd.DataFrame({"g": olabels[take].astype(str)}, index=np.arange(len(take)).astype(str)),
        var=pd.DataFrame(index=pd.Index(observed.var_names).astype(str)),
    )
    if counts:
        import scanpy as sc

        sc.pp.normalize_total(cells, target_sum=TARGET_SUM)
        sc.pp.log1p(cells)
    cell_x = _dense(cells.X)[:, gpos].astype(np.float64)
    if mean_pred:
        # the observed pseudobulk over all cells of each group, the definition the mean prediction uses
        pb = pseudobulk(observed, olabels.astype(str), layer=layer, counts=counts, groups=obs_groups)
        ox = pb.loc[obs_groups, genes].to_numpy(np.float64)
        o_lab = np.asarray(obs_groups, dtype=object)
        o_n = np.asarray([int((olabels == c).sum()) for c in obs_groups])
    else:
        ox, o_lab, o_n = cell_x, olabels[take], np.ones(len(take), dtype=int)
    # predicted rows of the conditions
    ppos = pd.Index(pred.var_names).astype(str).get_indexer(genes)
    prow = np.concatenate([_take(np.flatnonzero(plabels == c)) for c in conds])
    px = _dense(pred.X[prow])[:, ppos].astype(np.float64)
    if not np.isfinite(px).all():
        msg = "pred.X holds non-finite values; pass the AnnData returned by predict() (log1p scale)."
        raise ValueError(msg)
    p_n = (
        pd.to_numeric(pred.obs["n_cells"], errors="coerce").fillna(1).to_numpy()[prow].astype(int)
        if mean_pred and "n_cells" in pred.obs.columns
        else np.ones(len(prow), dtype=int)
    )
    x = np.vstack([px, ox])
    lab = np.concatenate([plabels[prow], o_lab]).astype(str)
    src = np.array([PREDICTED] * len(prow) + [OBSERVED] * len(ox), dtype=object)
    obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical(lab),
            "source": pd.Categorical(src, categories=[PREDICTED, OBSERVED]),
            "group": pd.Categorical([f"{s}|{c}" for s, c in zip(src, lab, strict=True)]),
            "n_cells": np.concatenate([p_n, o_n]).astype(np.int64),
        },
        index=[f"{s}|{c}|{i}" for i, (s, c) in enumerate(zip(src, lab, strict=True))],
    )
    out = ad.AnnData(X=x.astype(np.float32), obs=obs, var=pd.DataFrame(index=genes.copy()))
    info: dict[str, Any] = {"mean_prediction": bool(mean_pred), "n_pcs": 0}
    if n_pcs is not None:
        from sklearn.decomposition import PCA

        k = max(1, min(int(n_pcs), cell_x.shape[0] - 1, cell_x.shape[1]))
        pca = PCA(n_components=k, random_state=int(random_state)).fit(cell_x)
        out.obsm["X_pca"] = pca.transform(x).astype(np.float64)
        info.update(n_pcs=int(k), loadings=pca.components_.T.astype(np.float32))
    out.uns[SCMECH_ADATA_KEYS.UNS] = {"combine_prediction": info}
    return out


def prediction_distance(
    pred: AnnData,
    observed: AnnData,
    metric: str = "edistance",
    *,
    perturbation_key: str = "perturbation",
    control_label: str = "NT",
    separator: str = "+",
    unassigned_label: str | Sequence[str] | None = ("unassigned", "multiple"),
    layer: str | None = None,
    counts: bool = True,
    conditions: Sequence[str] | None = None,
    n_pcs: int | None = 30,
    max_cells: int | None = 300,
    random_state: int = 0,
    **metric_kwargs: Any,
) -> pd.DataFrame:
    r"""Distance (:class:`pertpy.tools.Distance`) between the predicted and observed cells of each condition.

    Both sides are put in one space by :func:`combine_prediction` (log-normalised values, then the observed
    cells' PCA with ``n_pcs`` components, or the genes when ``None``) and compared with
    ``pertpy.tools.Distance(metric)``. With ``metric="edistance"`` this is the E-distance of
    :func:`scmech.tl.energy_distance` (Euclidean, not squared; the ``energy_distance`` of
    :func:`scmech.tl.evaluate` with the same ``n_pcs`` and ``max_cells``).

    Distribution metrics (``"edistance"``, ``"mmd"``, ``"wasserstein"``, ...) need per-cell predictions
    (``predict(return_mean=False)``); for a mean prediction (one row per condition) use a metric of means such
    as ``"euclidean"``, ``"mse"`` or ``"pearson_distance"``, which compares it with the observed pseudobulk.

    Parameters
    ----------
    pred
        Prediction AnnData (``SemiMechVI.predict`` or a baseline's ``predict``).
    observed
        Observed cells (counts in ``X`` or ``layer``).
    metric
        A metric of :class:`pertpy.tools.Distance`.
    perturbation_key, control_label, separator, unassigned_label, layer, counts, conditions, n_pcs, max_cells
        As in :func:`combine_prediction`.
    random_state
        Seed of the subsamples and the PCA.
    **metric_kwargs
        Passed to the metric (e.g. ``kernel="rbf"`` for ``"mmd"``).

    Returns
    -------
    DataFrame indexed by condition with ``distance`` (predicted vs observed), ``control_distance`` (observed
    controls vs observed condition: the score of predicting "no change"), ``n_predicted`` and ``n_observed``
    (rows compared). ``attrs["metric"]`` names the metric. Nothing is written to ``pred`` or ``observed``.

    Examples
    --------
    >>> pred = model.predict(["STAT1", "JAK2"], return_mean=False, n_cells=200)
    >>> scmech.tl.prediction_distance(pred, adata, metric="edistance")
    >>> scmech.tl.prediction_distance(model.predict(["STAT1"]), adata, metric="pearson_distance")
    """
    pt = _import_pertpy("prediction_distance")
    try:
        dist = pt.tl.Distance(metric=metric, obsm_key="X_pca")
    except ValueError as e:
        msg = f"metric={metric!r} is not a pertpy Distance metric ({e}); use e.g. 'edistance', 'mmd' or 'euclidean'."
        raise ValueError(msg) from e
    both = combine_prediction(
        pred,
        observed,
        perturbation_key=perturbation_key,
        control_label=control_label,
        separator=separator,
        unassigned_label=unassigned_label,
        layer=layer,
        counts=counts,
        conditions=conditions,
        n_pcs=n_pcs,
        max_cells=max_cells,
        random_state=random_state,
    )
    mean_pred = both.uns[SCMECH_ADATA_KEYS.UNS]["combine_prediction"]["mean_prediction"]
    if mean_pred and metric in _CELL_METRICS:
        msg = (
            f"metric={metric!r} compares distributions of cells, but pred holds one row per condition (a mean "
            "prediction): each side is a single point. Predict cells (predict(return_mean=False)) or use a metric "
            "of means ('euclidean', 'mse', 'pearson_distance')."
        )
        warnings.warn(msg, UserWarning, stacklevel=settings.warnings_stacklevel)
    rep = both.obsm["X_pca"] if "X_pca" in both.obsm else np.asarray(both.X, dtype=np.float64)
    group = both.obs["group"].astype(str).to_numpy()
    ctrl = get_design(
        observed, perturbation_key, control_label, unassigned_label=unassigned_label, warn_missing_controls=False
    ).perturbation.control_label
    y_ctrl = rep[group == f"{OBSERVED}|{ctrl}"]
    n_cells = both.obs["n_cells"].to_numpy()
    rows = []
    for c in pd.unique(both.obs["perturbation"].astype(str)[both.obs["source"] == PREDICTED]):
        ip, io = group == f"{PREDICTED}|{c}", group == f"{OBSERVED}|{c}"
        d = float(dist(rep[ip], rep[io], **metric_kwargs))
        dc = float(dist(y_ctrl, rep[io], **metric_kwargs)) if c != ctrl else 0.0
        rows.append(
            {
                "condition": c,
                "distance": d,
                "control_distance": dc,
                "n_predicted": int(n_cells[ip].sum()),
                "n_observed": int(n_cells[io].sum()),
            }
        )
    out = pd.DataFrame(rows).set_index("condition")
    out.attrs["metric"] = metric
    return out


def perturbation_space(
    pred: AnnData,
    observed: AnnData | None = None,
    *,
    method: Literal["pseudobulk", "centroid"] = "pseudobulk",
    perturbation_key: str = "perturbation",
    control_label: str = "NT",
    separator: str = "+",
    unassigned_label: str | Sequence[str] | None = ("unassigned", "multiple"),
    layer: str | None = None,
    counts: bool = True,
    conditions: Sequence[str] | None = None,
    n_pcs: int | None = 30,
    max_cells: int | None = 300,
    random_state: int = 0,
) -> AnnData:
    """Perturbation space (pertpy) of the predicted and observed conditions.

    Runs pertpy's :class:`~pertpy.tools.PseudobulkSpace` (``method="pseudobulk"``: the mean log-normalised
    profile of each group) or :class:`~pertpy.tools.CentroidSpace` (``method="centroid"``: the cell closest to
    the group's centroid in ``X_pca``) on :func:`combine_prediction`'s AnnData, one row per group
    (``"predicted|STAT1"``, ``"observed|STAT1"``, ...). The result feeds pertpy's ``PerturbationSpace`` tools
    (``compute_control_diff``, ``add``, ``label_transfer``) and ``Distance.pairwise``.

    Parameters
    ----------
    pred
        Prediction AnnData (``SemiMechVI.predict`` or a baseline's ``predict``).
    observed
        Observed cells; ``None`` gives the space of the predictions alone (``X`` of ``pred`` as it is).
    method
        pertpy space to compute.
    perturbation_key, control_label, separator, unassigned_label, layer, counts, conditions, n_pcs, max_cells
        As in :func:`combine_prediction`.
    random_state
        Seed of the subsamples and the PCA.

    Returns
    -------
    AnnData with one row per group: ``obs`` ``group``, ``perturbation`` and ``source``; ``X`` the group's
    profile (genes for ``"pseudobulk"``; the ``X_pca`` coordinates of the centroid cell for ``"centroid"``);
    ``obsm["X_pca"]`` when a PCA was computed.

    Examples
    --------
    >>> ps = scmech.tl.perturbation_space(model.predict(return_mean=False, n_cells=100), adata)
    >>> pertpy.tools.Distance("euclidean", obsm_key="X_pca").pairwise(ps, groupby="group")
    """
    pt = _import_pertpy("perturbation_space")
    if method not in ("pseudobulk", "centroid"):
        msg = f"method={method!r} is not a perturbation space here; use 'pseudobulk' or 'centroid'."
        raise ValueError(msg)
    if observed is None:
        if "perturbation" not in pred.obs.columns:
            msg = "pred has no obs['perturbation'] column; pass the AnnData returned by predict()."
            raise KeyError(msg)
        lab = pred.obs["perturbation"].astype(str).to_numpy()
        keep = np.ones(pred.n_obs, dtype=bool) if conditions is None else np.isin(lab, [str(c) for c in conditions])
        both = ad.AnnData(
            X=_dense(pred.X[keep]).astype(np.float32),
            obs=pd.DataFrame(
                {
                    "perturbation": pd.Categorical(lab[keep]),
                    "source": pd.Categorical([PREDICTED] * int(keep.sum())),
                    "group": pd.Categorical([f"{PREDICTED}|{c}" for c in lab[keep]]),
                },
                index=pd.Index(pred.obs_names[keep]).astype(str),
            ),
            var=pd.DataFrame(index=pd.Index(pred.var_names).astype(str)),
        )
        if n_pcs is not None and both.n_obs > 1:
            from sklearn.decomposition import PCA

            k = max(1, min(int(n_pcs), both.n_obs - 1, both.n_vars))
            both.obsm["X_pca"] = PCA(n_components=k, random_state=int(random_state)).fit_transform(
                np.asarray(both.X, dtype=np.float64)
            )
    else:
        both = combine_prediction(
            pred,
            observed,
            perturbation_key=perturbation_key,
            control_label=control_label,
            separator=separator,
            unassigned_label=unassigned_label,
            layer=layer,
            counts=counts,
            conditions=conditions,
            n_pcs=n_pcs,
            max_cells=max_cells,
            random_state=random_state,
        )
    if method == "centroid" and "X_pca" not in both.obsm:
        msg = "method='centroid' works on the PCA: pass n_pcs (e.g. 30), not None."
        raise ValueError(msg)
    with warnings.catch_warnings():
        # pertpy 1.0 calls AnnData.obsm_keys(), deprecated by anndata: nothing the user can act on
        warnings.filterwarnings("ignore", message=".*obsm_keys is deprecated.*", category=FutureWarning)
        if method == "centroid":
            ps = pt.tl.CentroidSpace().compute(both, target_col="group", embedding_key="X_pca", keep_obs=True)
            ps.obsm["X_pca"] = np.asarray(ps.X, dtype=np.float64)
        else:
            ps = pt.tl.PseudobulkSpace().compute(both, target_col="group", mode="mean")
            if "X_pca" in both.obsm:
                # the mean of projected rows is the projection of the mean: pseudobulk the embedding as well
                emb = pt.tl.PseudobulkSpace().compute(both, target_col="group", embedding_key="X_pca", mode="mean")
                ps.obsm["X_pca"] = _dense(emb[ps.obs_names].X).astype(np.float64)
    for c in ("perturbation", "source"):
        if c not in ps.obs.columns:
            first = both.obs.groupby("group", observed=True)[c].first()
            ps.obs[c] = first.reindex(ps.obs["group"].astype(str)).to_numpy()
    ps.obs["group"] = ps.obs["group"].astype(str).astype("category")
    ps.obs["perturbation"] = ps.obs["perturbation"].astype(str).astype("category")
    ps.obs["source"] = ps.obs["source"].astype(str).astype("category")
    return ps
