"""The noise ceiling: the observed data scored as a prediction of itself (:func:`noise_ceiling`) and its steps."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from scmech._docs import fill_doc
from scmech.data._checks import check_unique_names
from scmech.data._design import canonical_condition, get_design
from scmech.data._pseudobulk import pseudobulk
from scmech.tl._seeds import check_seed

from ._checks import _as_list, _check_de_method, _warn
from ._evaluate import _check_sizes, _data_max
from ._score import _run

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

    from scmech.data._design import PerturbationDesign

__all__ = ["noise_ceiling"]


@fill_doc
def noise_ceiling(
    adata: AnnData,
    *,
    split: Literal["half", "replicate"] = "half",
    batch_key: str | None = None,
    perturbation_key: str = "perturbation",
    control_label: str | Sequence[str] = "NT",
    separator: str = "+",
    unassigned_label: str | Sequence[str] | None = "unassigned",
    layer: str | None = None,
    counts: bool = True,
    conditions: str | Sequence[str] | None = None,
    train_conditions: str | Sequence[str] | None = None,
    n_de_genes: int = 20,
    n_top_expressed: int = 1000,
    de_method: Literal["t-test", "t-test_overestim_var", "wilcoxon", "logreg"] = "t-test",
    spearman_brown: bool = True,
    random_state: int = 0,
) -> pd.DataFrame:
    r"""Agreement of the observed data with itself: the best score a prediction can expect.

    ``split="half"``: each condition's cells are split at random into two halves; the pseudobulk of one half
    is scored as the "prediction" of the other with :func:`evaluate` (all controls as reference).
    ``split="replicate"``: for each replicate ``b`` of ``batch_key``, each condition's pseudobulk from the
    other replicates predicts its cells in ``b`` (``b``'s controls as reference, as in a held-out-batch
    split); the scores are averaged over replicates per condition.

    Parameters
    ----------
    adata
        Observed data (not modified).
    split
        ``"half"`` or ``"replicate"``.
    batch_key
        %(batch_key)s
        Its batches are the replicates of ``split="replicate"``, which requires it.
    perturbation_key
        %(perturbation_key)s
    control_label
        %(control_label)s
    separator
        %(separator)s
    unassigned_label
        %(unassigned_label)s
    layer
        %(layer)s
    counts
        %(counts)s
    conditions
        Conditions to score (one label or a list); all perturbations when ``None``. Conditions with fewer than 2
        cells (and, for ``split="replicate"``, conditions whose cells sit in a single replicate) cannot be compared
        with themselves and are left out with a ``UserWarning`` naming them. A condition with 2 cells leaves one
        observed cell in its half, so its DE metrics are NaN (as in :func:`evaluate`, with a warning).
    train_conditions
        Training perturbations (one label or a list) for the Systema reference (all their cells); Systema
        metrics NaN without.
    n_de_genes
        Number of top DE genes.
    n_top_expressed
        Number of genes most expressed in control for ``l2_top``.
    de_method
        Test of :func:`scanpy.tl.rank_genes_groups`.
    spearman_brown
        ``split="half"``: step the Pearson metrics up from half to full size, :math:`2r/(1+r)`, for
        :math:`r > 0`. A split-half correlation :math:`r \le 0` (no reproducible signal) is left as it is: the
        formula would take it below -1 (e.g. :math:`r = -0.5` to -2), outside the range of a correlation.
        Ignored for ``split="replicate"``, whose other replicates hold most of the cells.
    random_state
        Seed of the halves.

    Returns
    -------
    Tidy DataFrame as :func:`evaluate`, with ``model == "noise_ceiling"`` and ``n_cells`` the observed
    cells scored.

    Examples
    --------
    >>> ceiling = scmech.tl.noise_ceiling(
    ...     adata, split="replicate", batch_key="bio_rep", conditions=results["condition"].unique().tolist()
    ... )
    >>> scmech.tl.leaderboard(pd.concat([results, ceiling]))
    """
    if split not in ("half", "replicate"):
        msg = f"split={split!r} must be 'half' or 'replicate'."
        raise ValueError(msg)
    if split == "replicate" and batch_key is None:
        msg = "split='replicate' needs `batch_key`, the obs column of replicates (e.g. batch_key='bio_rep')."
        raise ValueError(msg)
    _check_de_method(de_method)
    _check_sizes(n_de_genes, n_top_expressed, 1, 2)
    check_seed(random_state)
    check_unique_names(adata.var_names, "adata.var_names", "adata.var_names_make_unique()")
    _data_max(adata, layer, counts)
    conditions, train_conditions = _as_list(conditions), _as_list(train_conditions)
    full = get_design(
        adata,
        perturbation_key,
        control_label,
        separator=separator,
        unassigned_label=unassigned_label,
        batch_key=batch_key,
        warn_missing_controls=False,
    )
    design = full.perturbation
    conds = _ceiling_conditions(design, conditions, perturbation_key)
    rng = np.random.default_rng(random_state)
    genes = pd.Index(adata.var_names).astype(str)
    tconds = None if train_conditions is None else [canonical_condition(c, design) for c in train_conditions]
    common = {
        "conditions": None,
        "train_conditions": tconds,
        "genes": genes,
        "layer": layer,
        "counts": counts,
        "n_de_genes": n_de_genes,
        "n_top_expressed": n_top_expressed,
        "de_method": de_method,
        "cell_predictions": None,
        "n_pcs": 1,
        "max_cells": 2,
        "random_state": random_state,
    }
    if split == "half":
        return _half_ceiling(adata, design, conds, rng, spearman_brown=spearman_brown, common=common)
    return _replicate_ceiling(adata, design, np.asarray(full.batch).astype(str), conds, batch_key, common=common)


def _ceiling_conditions(
    design: PerturbationDesign, conditions: Sequence[str] | None, perturbation_key: str
) -> list[str]:
    """Conditions of the noise ceiling: those asked for (or all) with at least 2 assigned cells."""
    assigned = design.fit_mask
    ctrl = design.control_label
    counts_per = pd.Series(design.labels[assigned & ~design.is_control]).value_counts()
    if conditions is not None:
        conds = sorted({canonical_condition(c, design) for c in conditions} - {ctrl})
        if not conds:
            msg = (
                f"conditions={list(conditions)[:5]} holds only the control label {ctrl!r}; the noise ceiling scores "
                "perturbations' changes from the controls. Pass perturbation labels (e.g. "
                f"{sorted(counts_per.index)[:3]}), or conditions=None for every perturbation."
            )
            raise ValueError(msg)
        missing = [c for c in conds if c not in counts_per.index]
        if missing:
            msg = f"Condition(s) {missing[:5]} have no assigned cells in obs[{perturbation_key!r}]."
            raise KeyError(msg)
    else:
        conds = sorted(counts_per.index.tolist())
    few = [c for c in conds if counts_per[c] < 2]
    if few:
        _warn(
            f"Condition(s) {few[:10]} of obs[{perturbation_key!r}] have fewer than 2 cells and are left out of the "
            "noise ceiling: one cell cannot be compared with itself (no second cell to predict it from).",
            stacklevel=3,
        )
        conds = [c for c in conds if c not in few]
    if not conds:
        which = f"of conditions={list(conditions)[:5]}" if conditions is not None else f"of obs[{perturbation_key!r}]"
        msg = (
            f"No condition {which} has at least 2 cells; the noise ceiling compares a condition's cells with each "
            "other. Score conditions with more cells."
        )
        raise ValueError(msg)
    return conds


def _half_ceiling(
    adata: AnnData,
    design: PerturbationDesign,
    conds: list[str],
    rng: np.random.Generator,
    *,
    spearman_brown: bool,
    common: dict[str, Any],
) -> pd.DataFrame:
    """``split="half"``: one random half of each condition's cells predicts the other half."""
    labels = design.labels
    assigned = design.fit_mask
    half_a = np.zeros(adata.n_obs, dtype=bool)
    for c in conds:
        idx = rng.permutation(np.flatnonzero(assigned & (labels == c)))
        half_a[idx[: len(idx) // 2]] = True
    obs_mask = assigned & ~half_a & np.isin(labels, conds)
    pred = _half_prediction(adata, labels, half_a, conds, common["genes"], common["layer"], common["counts"])
    res = _run(
        {"noise_ceiling": pred},
        adata,
        design,
        obs_mask=obs_mask,
        ctrl_mask=design.is_control & assigned,
        train_mask=assigned,
        **common,
    )
    if spearman_brown:
        # only r > 0: for r in (-1, -1/3) the step-up 2r/(1+r) falls below -1, which no correlation can be
        corr = res["metric"].str.contains("pearson") & (res["value"] > 0)
        r = res.loc[corr, "value"]
        res.loc[corr, "value"] = 2 * r / (1 + r)
    return res


def _replicate_ceiling(
    adata: AnnData,
    design: PerturbationDesign,
    reps: np.ndarray,
    conds: list[str],
    batch_key: str | None,
    *,
    common: dict[str, Any],
) -> pd.DataFrame:
    """``split="replicate"``: the other replicates predict each replicate; scores averaged over replicates."""
    labels = design.labels
    assigned = design.fit_mask
    is_ctrl = design.is_control & assigned
    out = []
    scored: set[str] = set()
    for b in sorted(set(reps[assigned].tolist())):
        in_b = reps == b
        here = set(labels[assigned & in_b].tolist())
        elsewhere = set(labels[assigned & ~in_b].tolist())
        cb = [c for c in conds if c in here and c in elsewhere]
        if not cb or not (is_ctrl & in_b).any():
            continue
        pred = _half_prediction(adata, labels, assigned & ~in_b, cb, common["genes"], common["layer"], common["counts"])
        res = _run(
            {"noise_ceiling": pred},
            adata,
            design,
            obs_mask=assigned & in_b & np.isin(labels, cb),
            ctrl_mask=is_ctrl & in_b,
            train_mask=assigned,
            **common,
        )
        res["replicate"] = b
        out.append(res)
        scored.update(cb)
    if not out:
        msg = f"No condition has cells in two replicates of obs[{batch_key!r}] (with controls); nothing to compare."
        raise ValueError(msg)
    unscored = [c for c in conds if c not in scored]
    if unscored:
        _warn(
            f"Condition(s) {unscored[:10]} are left out of the noise ceiling: their cells sit in a single replicate "
            f"of obs[{batch_key!r}] (or only in replicates without controls), so no other replicate predicts them.",
            stacklevel=3,
        )
    res = pd.concat(out, ignore_index=True)
    agg = (
        res.groupby(["model", "condition", "metric"], sort=True)
        .agg(value=("value", "mean"), n_cells=("n_cells", "sum"))
        .reset_index()
    )
    return agg[["model", "condition", "metric", "value", "n_cells"]]


def _half_prediction(
    adata: AnnData,
    labels: np.ndarray,
    mask: np.ndarray,
    conds: list[str],
    genes: pd.Index,
    layer: str | None,
    counts: bool,
) -> pd.DataFrame:
    """Pseudobulk (conditions x genes) of the cells of ``mask``, scored as the prediction of the others."""
    group = np.where(mask & np.isin(labels, conds), labels, "")
    pb = pseudobulk(adata, group.astype(str), layer=layer, counts=counts, groups=conds)
    return pb.loc[:, genes]
