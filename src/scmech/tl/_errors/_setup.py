"""Which cells, conditions and batches enter a decomposition, and their group codes.

``_setup`` is shared by :func:`~scmech.tl._errors.error_decomposition` and
:func:`~scmech.tl._errors.estimate_variance`: it parses the design, picks the conditions (leaving out those with
fewer than ``min_cells`` cells), codes every used cell by (condition, batch) and normalises the cells.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from scmech.data._design import canonical_condition, get_design

from ._data import _Data, _Layout, _prepare
from ._inputs import _check_batch_key, _warn

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

    from scmech.data._design import ExperimentalDesign, PerturbationDesign


@dataclass
class _Setup:
    """Everything a decomposition needs from ``adata``, computed once and shared by the bootstrap replicates."""

    data: _Data
    layout: _Layout
    genes: pd.Index
    cells: np.ndarray  # used-cell row per member, sorted by group
    code: np.ndarray
    control_groups: np.ndarray
    design: PerturbationDesign
    batch_key: str | None
    dropped: list[str]
    no_control_batches: list[str]


def _batch_labels(full: ExperimentalDesign, n_obs: int) -> tuple[np.ndarray, list[str]]:
    """Batch of every cell and the batch names (one batch ``"all"`` without a batch key)."""
    batch = np.asarray(full.batch).astype(str) if full.batch is not None else np.full(n_obs, "all")
    batches = [str(b) for b in full.batch.categories] if full.batch is not None else ["all"]
    return batch, batches


def _requested_conditions(
    design: PerturbationDesign,
    counts_per: pd.Series,
    conditions: str | Sequence[str] | None,
    perturbation_key: str,
) -> list[str]:
    """Pick the perturbations to decompose: all observed ones, or the given ones (canonical, no repeats)."""
    ctrl = design.control_label
    observed = [c for c in design.conditions if c != ctrl]
    if conditions is None:
        return observed
    wanted = []
    for c in [conditions] if isinstance(conditions, str) else conditions:
        can = canonical_condition(c, design)
        if can == ctrl:
            continue
        if can not in counts_per.index:
            msg = (
                f"Condition {c!r} has no assigned cells in obs[{perturbation_key!r}] "
                f"(conditions include {observed[:8]})."
            )
            raise KeyError(msg)
        wanted.append(can)
    asked = [conditions] if isinstance(conditions, str) else list(conditions)
    if asked and not wanted:
        msg = (
            f"conditions={asked[:5]} holds only the "
            f"control label {ctrl!r}; the decomposition is of perturbations' effects, measured against the controls. "
            f"Pass perturbation labels (e.g. {observed[:3]}), or conditions=None for every perturbation."
        )
        raise ValueError(msg)
    return list(dict.fromkeys(wanted))


def _check_controls(counts_per: pd.Series, ctrl: str) -> None:
    """Raise unless there are at least two control cells."""
    n_ctrl = int(counts_per.get(ctrl, 0))
    if n_ctrl < 2:
        msg = (
            f"Only {n_ctrl} control cell(s) ({ctrl!r}); the variance terms need at least 2 control cells, ideally "
            "hundreds in every batch."
        )
        raise ValueError(msg)


def _drop_small(
    observed: list[str], counts_per: pd.Series, min_cells: int, require_perturbations: bool
) -> tuple[list[str], list[str]]:
    """Split the conditions into those kept and those with fewer than ``min_cells`` cells (warned about).

    The warning points at the caller of ``_setup``, as it did before this step had a function of its own.
    """
    dropped = [c for c in observed if counts_per.get(c, 0) < min_cells]
    if dropped:
        _warn(
            f"Condition(s) {dropped[:10]} have fewer than min_cells={min_cells} cells and are left out of the "
            "decomposition (their pseudobulk is not estimable); lower min_cells or collect more cells.",
            stacklevel=4,
        )
    keep = [c for c in observed if c not in dropped]
    if not keep and require_perturbations:
        msg = f"No perturbation with at least min_cells={min_cells} cells to decompose."
        raise ValueError(msg)
    return keep, dropped


def _group_codes(
    labels: np.ndarray, batch: np.ndarray, conds: list[str], batches: list[str], fit: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows of the used cells sorted by group, their group codes, every cell's batch index and the used mask."""
    cidx = pd.Index(conds).get_indexer(labels)
    bidx = pd.Index(batches).get_indexer(batch)
    used = fit & (cidx >= 0)
    rows = np.flatnonzero(used)
    code_all = cidx[rows] * len(batches) + bidx[rows]
    order = np.argsort(code_all, kind="stable")
    return rows[order], code_all[order], bidx, used


def _batches_without_controls(
    batches: list[str], bidx: np.ndarray, fit: np.ndarray, labels: np.ndarray, ctrl: str, used: np.ndarray
) -> list[str]:
    """Batches that hold used cells but no control cell."""
    n_ctrl_b = np.bincount(bidx[fit & (labels == ctrl)], minlength=len(batches))
    in_use = np.bincount(bidx[used], minlength=len(batches)) > 0
    return [b for b, nc, u in zip(batches, n_ctrl_b, in_use, strict=True) if u and nc == 0]


def _setup(
    adata: AnnData,
    *,
    perturbation_key: str,
    control_label: str | Sequence[str],
    separator: str,
    unassigned_label: str | Sequence[str] | None,
    batch_key: str | None,
    layer: str | None,
    counts: bool,
    conditions: Sequence[str] | None,
    min_cells: int,
    genes: pd.Index | None = None,
    require_perturbations: bool = True,
) -> _Setup:
    """Parse the design, choose the conditions, code the used cells by (condition, batch) and normalise them.

    The keyword arguments are those of :func:`~scmech.tl._errors.error_decomposition`; ``genes`` restricts the
    genes (all when ``None``) and ``require_perturbations=False`` allows a setup of the controls alone.

    Returns
    -------
    The ``_Setup``.
    """
    _check_batch_key(adata, batch_key)
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
    ctrl = design.control_label
    fit = design.fit_mask
    labels = design.labels
    batch, batches = _batch_labels(full, adata.n_obs)
    counts_per = pd.Series(labels[fit]).value_counts()
    observed = _requested_conditions(design, counts_per, conditions, perturbation_key)
    _check_controls(counts_per, ctrl)
    keep, dropped = _drop_small(observed, counts_per, min_cells, require_perturbations)
    conds = [ctrl, *keep]
    rows, code_all, bidx, used = _group_codes(labels, batch, conds, batches, fit)
    layout = _Layout(conditions=conds, batches=batches, min_cells=min_cells)
    gpos = None
    all_genes = pd.Index(adata.var_names).astype(str)
    if genes is not None and not genes.equals(all_genes):
        gpos = all_genes.get_indexer(genes)
    data = _prepare(
        adata,
        rows,
        code_all,
        len(conds) * len(batches),
        layer=layer,
        counts=counts,
        genes=gpos,
        n_control_groups=len(batches),
    )
    return _Setup(
        data=data,
        layout=layout,
        genes=all_genes if genes is None else genes,
        cells=np.arange(rows.size),
        code=code_all,
        control_groups=np.arange(len(batches)),
        design=design,
        batch_key=batch_key,
        dropped=dropped,
        no_control_batches=_batches_without_controls(batches, bidx, fit, labels, ctrl, used),
    )
