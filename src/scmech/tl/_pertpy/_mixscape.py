r"""pertpy's Mixscape as the per-cell knock-down efficacy (:func:`efficacy_from_mixscape`) and its steps."""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scmech._constants import SCMECH_ADATA_KEYS
from scmech._docs import fill_doc
from scmech._numbers import check_positive_int
from scmech._threads import log_normalise, torch_threads_kept
from scmech.data._design import get_design
from scmech.tl._assumptions._validation import (
    _check_raw_counts,
    _validate_flags,
    _validate_key_added,
    _validate_target,
)
from scmech.tl._seeds import check_random_state, resolved_seed

from ._common import _dense, _import_pertpy, _obs_column
from ._mixture import _mixscape_posterior, _pertpy_mixture_works

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

    from scmech.data._design import PerturbationDesign

logger = logging.getLogger(__name__)

__all__ = ["efficacy_from_mixscape"]


@fill_doc
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
    random_state: int | None = 0,
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
        %(perturbation_key)s
        For instance the column written by :func:`scmech.pp.assign_guides`.
    control_label
        %(single_control_label)s
    unassigned_label
        %(unassigned_label)s They are left out of Mixscape.
    score_key
        ``obs`` column with Mixscape posterior probabilities to read instead of running Mixscape.
    class_key
        ``obs`` column with Mixscape classes to read instead of running Mixscape.
    layer
        %(layer)s
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
        ``obs`` column to write; not one of the columns read (``perturbation_key``, ``score_key``, ...).
    random_state
        Seed of the PCA, the neighbour search and Mixscape's mixture models (an integer in :math:`[0, 2^{32})`);
        ``None`` uses ``scvi.settings.seed`` (a fresh seed when that is ``None`` too).
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
    _validate_target(adata, key_added, copy, "adata.obs")
    _validate_flags(counts=counts, copy=copy)
    read = {"perturbation_key": perturbation_key, "score_key": score_key, "class_key": class_key}
    _validate_key_added(key_added, {**read, "split_by": split_by})
    _check_mixscape_args(
        adata,
        score_key=score_key,
        class_key=class_key,
        untestable=untestable,
        n_neighbors=n_neighbors,
        n_pcs=n_pcs,
        min_de_genes=min_de_genes,
        layer=layer,
        split_by=split_by,
    )
    _check_de_args(logfc_threshold, pval_cutoff)
    seed = _mixscape_seed(random_state)
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
        eff[perturbed] = _scores(adata, score_key, perturbed)[perturbed]
        source = f"obs[{score_key!r}]"
    elif class_key is not None:
        eff[perturbed] = _classes(adata, class_key, perturbed, design.labels)
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
            random_state=seed,
        )
        source = "pertpy Mixscape"
    eff = np.clip(eff, 0.0, 1.0)
    if perturbed.any():
        logger.info(
            "Efficacy from %s: mean %.3f over %d perturbed cells", source, eff[perturbed].mean(), perturbed.sum()
        )
    series = pd.Series(eff, index=adata.obs_names.copy(), name=key_added, dtype=np.float64)
    adata = adata.copy() if copy else adata
    adata.obs[key_added] = series.to_numpy()
    return adata if copy else series


def _check_mixscape_args(
    adata: AnnData,
    *,
    score_key: str | None,
    class_key: str | None,
    untestable: Any,
    n_neighbors: Any,
    n_pcs: Any,
    min_de_genes: Any,
    layer: str | None,
    split_by: str | None,
) -> None:
    """Run the cheap checks of :func:`efficacy_from_mixscape`, before any work."""
    if score_key is not None and class_key is not None:
        msg = f"Pass either score_key={score_key!r} or class_key={class_key!r}, not both."
        raise ValueError(msg)
    is_number = isinstance(untestable, int | float | np.integer | np.floating) and not isinstance(untestable, bool)
    if not (is_number and 0.0 <= float(untestable) <= 1.0):
        msg = f"untestable={untestable!r} must be in [0, 1] (1 = full effect, 0 = no effect)."
        raise ValueError(msg)
    for name, value in (("n_neighbors", n_neighbors), ("n_pcs", n_pcs), ("min_de_genes", min_de_genes)):
        if name == "n_neighbors" and value is None:
            continue
        check_positive_int(value, name)
    if layer is not None and layer not in adata.layers:
        msg = f"layer={layer!r} is not a layer of adata (layers: {list(adata.layers.keys())}); pass layer=None for X."
        raise KeyError(msg)
    if split_by is not None:
        _obs_column(adata, split_by, "split_by")


def _check_de_args(logfc_threshold: Any, pval_cutoff: Any) -> None:
    """Refuse a negative or non-finite ``logfc_threshold`` and a ``pval_cutoff`` outside (0, 1]."""
    for name, value, ok in (
        ("logfc_threshold", logfc_threshold, lambda v: np.isfinite(v) and v >= 0.0),
        ("pval_cutoff", pval_cutoff, lambda v: 0.0 < v <= 1.0),
    ):
        number = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
        if not (number and ok(float(value))):
            need = "a finite number >= 0, e.g. 0.25" if name == "logfc_threshold" else "in (0, 1], e.g. 0.05"
            msg = f"{name}={value!r} must be {need} (Mixscape's marker genes pass it)."
            raise ValueError(msg)


def _mixscape_seed(random_state: Any) -> int:
    """Return the seed of the Mixscape run: ``random_state`` checked, or ``scvi.settings.seed`` for ``None``."""
    check_random_state(random_state)
    seed = resolved_seed(random_state)
    if seed >= 2**32:
        msg = f"random_state={random_state!r} must be below 2**32 (numpy's seeds); pass e.g. random_state=0."
        raise ValueError(msg)
    return seed


def _classes(adata: AnnData, class_key: str, perturbed: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Efficacy of the perturbed cells from Mixscape's classes: 0 for the class "NP" or "<target> NP", else 1.

    Raises
    ------
    ValueError
        For a column that does not hold Mixscape's classes: missing values, numbers or booleans, or the
        perturbation labels themselves.
    """
    raw = _obs_column(adata, class_key, "class_key")
    if pd.api.types.is_bool_dtype(raw) or pd.api.types.is_numeric_dtype(raw):
        msg = (
            f"adata.obs[{class_key!r}] holds {raw.dtype} values, not Mixscape classes (text such as 'STAT1 KO', "
            "'STAT1 NP' or, global, 'KO' / 'NP'). Pass Mixscape's 'mixscape_class' or 'mixscape_class_global' "
            "column, or score_key= for posterior probabilities."
        )
        raise ValueError(msg)
    bad = perturbed & raw.isna().to_numpy()
    if bad.any():
        msg = (
            f"adata.obs[{class_key!r}] must hold a Mixscape class for every perturbed cell; "
            f"{int(bad.sum())} are missing (e.g. {raw.iloc[np.flatnonzero(bad)[0]]!r}). Pass Mixscape's "
            "'mixscape_class' or 'mixscape_class_global' column."
        )
        raise ValueError(msg)
    text = raw.astype(str).str.strip()
    if (text.to_numpy()[perturbed] == np.asarray(labels).astype(str)[perturbed]).all():
        msg = (
            f"adata.obs[{class_key!r}] repeats the perturbation labels, not Mixscape classes ('<target> KO', "
            "'<target> NP'); pass Mixscape's 'mixscape_class' or 'mixscape_class_global' column."
        )
        raise ValueError(msg)
    # Mixscape's classes: "<target> NP" / "NP" for escapers, "<target> <type>" / "<type>" otherwise; the last
    # word decides (a target whose name ends in "NP", such as SNAP, is no escaper)
    last = text.str.upper().str.split().str[-1].to_numpy()[perturbed]
    return np.where(last == "NP", 0.0, 1.0)


def _scores(adata: AnnData, score_key: str, perturbed: np.ndarray) -> np.ndarray:
    """Mixscape's posterior probabilities from ``obs[score_key]``; each perturbed cell's must be in [0, 1]."""
    score = pd.to_numeric(_obs_column(adata, score_key, "score_key"), errors="coerce").to_numpy(np.float64)
    bad = perturbed & ~(np.isfinite(score) & (score >= 0) & (score <= 1))
    if bad.any():
        msg = (
            f"adata.obs[{score_key!r}] must hold probabilities in [0, 1] for every perturbed cell; "
            f"{int(bad.sum())} are not (e.g. {score[np.flatnonzero(bad)[0]]!r}). Pass Mixscape's "
            "'<class>_p_ko' column."
        )
        raise ValueError(msg)
    return score


def _run_mixscape(
    adata: AnnData,
    design: PerturbationDesign,
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
    """Efficacy of every cell of ``adata`` from a Mixscape run on a log-normalised copy of the assigned cells."""
    pt = _import_pertpy("efficacy_from_mixscape")
    import scanpy as sc

    cells = np.flatnonzero(~design.is_unassigned)
    labels = design.labels[cells].astype(str)
    work = _mixscape_input(adata, cells, labels, layer=layer, counts=counts, split_by=split_by)
    ctrl = design.control_label
    split = "_split" if split_by is not None else None
    # controls per split: the signature needs them (n_neighbors of them for the neighbour search)
    groups = work.obs["_split"] if split is not None else pd.Series("all", index=work.obs_names)
    _check_controls(work, ctrl, groups, n_neighbors, split_by)
    n_comps = max(1, min(n_pcs, work.n_obs - 1, work.n_vars - 1))
    if n_neighbors is not None:
        with torch_threads_kept():
            sc.pp.pca(work, n_comps=n_comps, random_state=random_state)
    ms = pt.tl.Mixscape()
    with warnings.catch_warnings(), torch_threads_kept():
        # scanpy's DataFrame-fragmentation notices from rank_genes_groups: nothing the user can act on
        warnings.simplefilter("ignore", category=getattr(pd.errors, "PerformanceWarning", Warning))
        if n_neighbors is None:
            # pertpy's ref_selection_mode="split_by": the mean of the split's controls minus the cell
            work.layers["X_pert"] = _mean_signature(work, ctrl, groups)
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
    eff = np.zeros(adata.n_obs, dtype=np.float64)
    eff[cells] = _cell_efficacy(
        work, labels, ctrl, split, prob, fitted, min_de_genes=min_de_genes, untestable=untestable
    )
    return eff


def _mixscape_input(
    adata: AnnData,
    cells: np.ndarray,
    labels: np.ndarray,
    *,
    layer: str | None,
    counts: bool,
    split_by: str | None,
) -> AnnData:
    """Private copy of ``cells`` for Mixscape: log-normalised, ``obs`` ``_perturbation`` (and ``_split``)."""
    x = adata.layers[layer] if layer is not None else adata.X
    x = x[cells]
    _check_mixscape_matrix(x, "adata.X" if layer is None else f"adata.layers[{layer!r}]", counts)
    x = sp.csr_matrix(x, dtype=np.float32) if sp.issparse(x) else np.asarray(x, dtype=np.float32)
    obs = pd.DataFrame({"_perturbation": labels}, index=pd.Index(adata.obs_names[cells]).astype(str))
    if split_by is not None:
        obs["_split"] = adata.obs[split_by].astype(str).to_numpy()[cells]
    work = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=pd.Index(adata.var_names).astype(str)))
    if counts:
        log_normalise(work)
    return work


def _check_mixscape_matrix(x: Any, where: str, counts: bool) -> None:
    """Refuse NaN or infinite values, and (``counts``) values that are not raw counts, before Mixscape reads them."""
    _check_raw_counts(x, where, counts, "Mixscape's input is log-normalised from raw counts here")


def _check_controls(work: AnnData, ctrl: str, groups: pd.Series, n_neighbors: int | None, split_by: str | None) -> None:
    """Refuse ``split_by`` groups with fewer controls than the signature needs."""
    n_ctrl = (work.obs["_perturbation"] == ctrl).groupby(groups.to_numpy()).sum()
    need = 1 if n_neighbors is None else n_neighbors
    few = n_ctrl[n_ctrl < need]
    if len(few):
        where = f"split_by={split_by!r} groups {few.index.tolist()[:5]}" if split_by is not None else "The data"
        msg = (
            f"{where} have fewer than {need} control cells ({int(few.min())}); Mixscape compares each cell with "
            "controls: lower n_neighbors, pass n_neighbors=None or split_by=None."
        )
        raise ValueError(msg)


def _mean_signature(work: AnnData, ctrl: str, groups: pd.Series) -> np.ndarray:
    """Perturbation signature: the mean of the controls of the cell's group minus the cell."""
    xw = _dense(work.X).astype(np.float64)
    sig = np.empty_like(xw)
    is_ctrl = (work.obs["_perturbation"] == ctrl).to_numpy()
    for g in pd.unique(groups.to_numpy()):
        m = (groups == g).to_numpy()
        sig[m] = xw[m & is_ctrl].mean(axis=0) - xw[m]
    return sig


def _cell_efficacy(
    work: AnnData,
    labels: np.ndarray,
    ctrl: str,
    split: str | None,
    prob: np.ndarray,
    fitted: dict,
    *,
    min_de_genes: int,
    untestable: float,
) -> np.ndarray:
    """Efficacy of the Mixscape cells: the posterior where fitted, ``untestable`` elsewhere, 0 for controls."""
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
    return np.where(is_pert, np.where(tested, prob, untestable), 0.0)
