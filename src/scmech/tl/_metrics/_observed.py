r"""The observed side of an evaluation: pseudobulks, the Systema reference, DE genes and log-normalised cells."""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scmech._threads import log_normalise, torch_threads_kept
from scmech.data._checks import BackedRows, is_backed_matrix
from scmech.data._pseudobulk import pseudobulk
from scmech.data._target_genes import name_positions

from ._checks import _warn
from ._names import _DE_METRICS

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

    from scmech.data._design import PerturbationDesign

logger = logging.getLogger(__name__)


class _Observed:
    """Observed pseudobulks, DE genes and log-normalised cells for one evaluation.

    Parameters
    ----------
    adata
        Observed data.
    design
        Its perturbation design.
    obs_mask
        Cells whose conditions are evaluated.
    ctrl_mask
        Control cells the changes are measured against.
    train_mask
        Cells of the training perturbations (for the Systema reference).
    conditions
        Canonical labels of the evaluated conditions.
    train_conditions
        Canonical labels of the training perturbations; ``None`` leaves the Systema reference out.
    genes
        Genes of the evaluation.
    layer, counts
        Where the counts are and whether they are counts (else log-normalised values).
    n_de_genes
        Number of top DE genes per condition.
    n_top_expressed
        Number of genes most expressed in control (``l2_top``).
    de_method
        Test of :func:`scanpy.tl.rank_genes_groups`.
    gene_names
        The name each of ``genes`` is matched against targets by (a ``gene_symbols`` column); ``None``: ``genes``.
    """

    def __init__(
        self,
        adata: AnnData,
        design: PerturbationDesign,
        obs_mask: np.ndarray,
        ctrl_mask: np.ndarray,
        train_mask: np.ndarray,
        conditions: list[str],
        train_conditions: list[str] | None,
        genes: pd.Index,
        *,
        layer: str | None,
        counts: bool,
        n_de_genes: int,
        n_top_expressed: int,
        de_method: str,
        gene_names: Sequence[str] | None = None,
    ) -> None:
        self.design = design
        self.conditions = conditions
        self.genes = genes
        #: position (in ``genes``) of the gene each target names; the first of a repeated name
        self.target_pos = name_positions(genes if gene_names is None else gene_names)
        self.n_de_genes = n_de_genes
        ctrl = design.control_label
        labels = design.labels
        group = np.full(adata.n_obs, "", dtype=object)
        sel = obs_mask & np.isin(labels, conditions)
        group[sel] = labels[sel]
        group[ctrl_mask] = ctrl
        self.group = group
        self.n_cells = pd.Series(group[sel]).value_counts().reindex(conditions).fillna(0).astype(int)
        pb = pseudobulk(adata, group.astype(str), layer=layer, counts=counts, groups=[ctrl, *conditions])
        self.pb = pb.loc[:, genes]
        self.ctrl = self.pb.loc[ctrl].to_numpy()
        # the Systema reference: mean of the observed training perturbation centroids
        self.reference = _systema_reference(adata, design, train_mask, train_conditions, genes, layer, counts)
        # genes most expressed in control
        n_top = min(n_top_expressed, len(genes))
        self.top_genes = np.sort(np.argsort(-self.ctrl, kind="stable")[:n_top])
        self.cells = _log_normalised_cells(adata, group, genes, layer, counts)
        self.de_genes = self._de(n_de_genes, de_method)

    def _de(self, n_de_genes: int, de_method: str) -> dict[str, np.ndarray]:
        """Top DE genes (positions in ``genes``) of each condition vs control, by scanpy's rank_genes_groups."""
        import scanpy as sc

        ctrl = self.design.control_label
        sub = self.cells
        counts = sub.obs["group"].value_counts()
        ok = [c for c in self.conditions if counts.get(c, 0) >= 2]
        few = sorted(set(self.conditions) - set(ok))
        out: dict[str, np.ndarray] = {c: np.zeros(0, dtype=int) for c in few}
        if few:
            _warn(
                f"Condition(s) {few[:10]} have fewer than 2 observed cells: no DE test is possible, so "
                f"{', '.join(_DE_METRICS)} are NaN for them (the other metrics use the pseudobulk of their cells). "
                "Collect more cells, or leave them out of `conditions`."
            )
        if counts.get(ctrl, 0) < 2:
            logger.warning("Fewer than 2 control cells: no DE genes; DE metrics are NaN.")
            return {c: np.zeros(0, dtype=int) for c in self.conditions}
        if not ok:
            return out
        n = min(n_de_genes, sub.n_vars)
        work = ad.AnnData(X=sub.X, obs=sub.obs[["group"]].copy(), var=pd.DataFrame(index=sub.var_names))
        work.uns["log1p"] = {"base": None}
        with warnings.catch_warnings(), torch_threads_kept():
            # scanpy warns about DataFrame fragmentation once per group; nothing the user can act on
            warnings.simplefilter("ignore", category=getattr(pd.errors, "PerformanceWarning", Warning))
            sc.tl.rank_genes_groups(
                work,
                groupby="group",
                groups=ok,
                reference=ctrl,
                method=de_method,
                rankby_abs=True,
                n_genes=n,
                use_raw=False,
                key_added="de",
            )
        names = work.uns["de"]["names"]
        pos = {g: i for i, g in enumerate(sub.var_names)}
        for c in ok:
            out[c] = np.asarray([pos[g] for g in names[c][:n]], dtype=int)
        return out


def _systema_reference(
    adata: AnnData,
    design: PerturbationDesign,
    train_mask: np.ndarray,
    train_conditions: list[str] | None,
    genes: pd.Index,
    layer: str | None,
    counts: bool,
) -> np.ndarray | None:
    """Mean of the observed centroids of the training perturbations; ``None`` without any."""
    if not train_conditions:
        return None
    ctrl = design.control_label
    labels = design.labels
    tc = [c for c in train_conditions if c != ctrl]
    tgroup = np.where(train_mask & np.isin(labels, tc), labels, "")
    present = sorted(set(tgroup[tgroup != ""].tolist()))
    missing = sorted(set(tc) - set(present))
    if missing:
        logger.info(
            "%d training conditions have no observed cells and are left out of r: %s", len(missing), missing[:5]
        )
    if not present:
        return None
    tpb = pseudobulk(adata, tgroup.astype(str), layer=layer, counts=counts, groups=present)
    return tpb.loc[:, genes].to_numpy().mean(axis=0)


def _log_normalised_cells(
    adata: AnnData, group: np.ndarray, genes: pd.Index, layer: str | None, counts: bool
) -> AnnData:
    """Log-normalised copy of the cells of a group (``obs["group"]``, restricted to ``genes``); adata is untouched."""
    cells = np.flatnonzero(group != "")
    x = adata.layers[layer] if layer is not None else adata.X
    # a backed (on-disk) matrix: only these cells are read, in blocks of rows
    x = BackedRows(x)[cells].toarray_like() if is_backed_matrix(x) else x[cells]
    sub = ad.AnnData(
        # a csr_matrix for scanpy, which fails on scipy's sparse arrays (csr_array)
        X=(sp.csr_matrix(x, dtype=np.float32) if sp.issparse(x) else np.asarray(x, dtype=np.float32)),
        obs=pd.DataFrame({"group": pd.Categorical(group[cells].astype(str))}, index=np.arange(len(cells)).astype(str)),
        var=pd.DataFrame(index=pd.Index(adata.var_names).astype(str)),
    )
    if counts:
        log_normalise(sub)
    return sub[:, genes].copy() if not genes.equals(sub.var_names) else sub
