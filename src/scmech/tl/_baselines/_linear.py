r"""Linear model of Ahlmann-Eltze, Huber & Anders (2025): a double ridge regression on gene embeddings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from scvi import REGISTRY_KEYS

from scmech.data._embedding import pseudobulk_gene_embedding, solve_y_axb

from ._base import _PseudobulkBaseline
from ._checks import check_embedding, check_nonnegative, check_positive_int

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData
    from mudata import MuData

__all__ = ["LinearModel"]


class LinearModel(_PseudobulkBaseline):
    r"""Linear model of Ahlmann-Eltze, Huber & Anders (Nat Methods 2025).

    Following ``benchmark/src/run_linear_pretrained_model.R`` of the paper's repository: pseudobulk the
    training conditions (control included); the gene embedding :math:`G` (genes x K) holds the scores
    :math:`U_K S_K` of a PCA of the training pseudobulk with genes as observations and each condition
    centred (or ``adata.varm[gene_embedding]``). A perturbation of gene :math:`k` is embedded as :math:`G`'s
    row :math:`k` (the control as 0; a combination as the sum of its targets' rows). With :math:`Y` the
    training changes vs control (genes x conditions, the control column included, combinations and targets
    that are not genes left out as in the script) and :math:`b` its row means,

    .. math::

        W = (G^\top G + \lambda I)^{-1} G^\top (Y - b\mathbf 1^\top) P^\top (P P^\top + \lambda I)^{-1},
        \qquad \hat\mu_p = G W P_p + b + \mu_{\mathrm{ctrl}}.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    n_components
        Number of principal components :math:`K` (``pca_dim``, default 10).
    ridge
        Ridge penalty :math:`\lambda` on both sides (default 0.1).
    gene_embedding
        ``"training_data"`` (PCA of the training pseudobulk) or a ``varm`` key of a genes x K embedding.

    Examples
    --------
    >>> scmech.tl.LinearModel.setup_anndata(adata)
    >>> model = scmech.tl.LinearModel(adata, n_components=10, ridge=0.1)
    >>> model.train(datasplitter_kwargs={"external_indexing": split.external_indexing})
    >>> pred = model.predict(split.test_conditions)
    """

    def __init__(
        self,
        adata: AnnData | MuData,
        n_components: int = 10,
        ridge: float = 0.1,
        gene_embedding: Literal["training_data"] | str = "training_data",
    ) -> None:
        super().__init__(adata)
        n_components = check_positive_int(n_components, "n_components", 10)
        ridge = check_nonnegative(ridge, "ridge", 0.1)
        if gene_embedding != "training_data" and gene_embedding not in self._rna().varm:
            msg = (
                f"gene_embedding {gene_embedding!r} is neither 'training_data' nor a key of adata.varm "
                f"(keys: {list(self._rna().varm.keys())})."
            )
            raise KeyError(msg)
        self.n_components = int(n_components)
        self.ridge = float(ridge)
        self.gene_embedding = gene_embedding
        self._model_summary_string = (
            f"LinearModel baseline (Ahlmann-Eltze et al. 2025): K={n_components}, ridge={ridge}, "
            f"gene embedding {gene_embedding!r}."
        )
        self.init_params_ = self._get_init_params(locals())

    def _rna(self):
        f = self._field(REGISTRY_KEYS.X_KEY)
        mod = getattr(f, "mod_key", None)
        return self.adata.mod[mod] if (mod is not None and hasattr(self.adata, "mod")) else self.adata

    def _gene_embedding(self, genes: list[str]) -> np.ndarray:
        """Genes x K embedding: the PCA of the training pseudobulk, or ``adata.varm[gene_embedding]``."""
        if self.gene_embedding == "training_data":
            return pseudobulk_gene_embedding(self._pb.to_numpy(), n_components=self.n_components)
        return check_embedding(self._rna().varm[self.gene_embedding], self.gene_embedding, len(genes))

    def _fit_columns(self, g: np.ndarray, pos: dict[str, int]) -> tuple[list[str], list[np.ndarray]]:
        """Training conditions of the fit (the control and single targets that are genes) and their embeddings."""
        cols, p_cols = [], []
        for c in self._pb.index:
            label, targets = self._canonical(c)
            if not targets:
                cols.append(c)
                p_cols.append(np.zeros(g.shape[1]))
            elif len(targets) == 1 and targets[0] in pos:
                cols.append(c)
                p_cols.append(g[pos[targets[0]]])
        if len(cols) < 2:
            msg = (
                "LinearModel needs training perturbations of single targets that are genes of the data "
                f"(training conditions: {list(self._pb.index)[:10]}); none were found."
            )
            raise ValueError(msg)
        return cols, p_cols

    def _fit(self) -> None:
        pb = self._pb
        genes = list(pb.columns)
        g = self._gene_embedding(genes)
        pos = self._target_gene_positions()
        ctrl = self._control()
        base = pb.loc[ctrl].to_numpy()
        cols, p_cols = self._fit_columns(g, pos)
        y = (pb.loc[cols].to_numpy() - base).T  # genes x conditions
        p = np.stack(p_cols, axis=1)  # K x conditions
        try:
            coef, center = solve_y_axb(y, g, p, a_ridge=self.ridge, b_ridge=self.ridge)
        except (np.linalg.LinAlgError, ValueError) as e:  # scmech.data reports a singular system as a ValueError
            if not isinstance(e, np.linalg.LinAlgError) and "singular" not in str(e).lower():
                raise
            msg = (
                f"LinearModel's fit is singular with ridge={self.ridge} ({len(cols)} training conditions, "
                f"{g.shape[1]} embedding components). Pass a positive ridge (e.g. ridge=0.1) or fewer n_components."
            )
            raise ValueError(msg) from e
        self.gene_embedding_ = g
        self.coef_ = coef
        self.center_ = center
        self.fit_conditions_ = cols
        self._gene_pos = pos
        self._n_fit_cells = int(self._n_train_cells.loc[cols].sum())

    def perturbation_embedding(self, targets: Sequence[str]) -> np.ndarray:
        """Embedding of a perturbation: the sum of its targets' rows of the gene embedding (0 for control).

        Parameters
        ----------
        targets
            Target genes of the perturbation (genes of the data); empty for the control.

        Returns
        -------
        The embedding (one value per column of the gene embedding).
        """
        self._check_if_trained(warn=False)
        missing = [t for t in targets if t not in self._gene_pos]
        if missing:
            msg = (
                f"LinearModel cannot embed target(s) {missing}: they are not genes of the data, so they have no "
                "row in the gene embedding. Predict measured targets only."
            )
            raise KeyError(msg)
        out = np.zeros(self.gene_embedding_.shape[1])
        for t in targets:
            out += self.gene_embedding_[self._gene_pos[t]]
        return out

    def _predict_one(self, label, targets):
        pvec = self.perturbation_embedding(targets)
        base = self._pb.loc[self._control()].to_numpy()
        return self.gene_embedding_ @ self.coef_ @ pvec + self.center_ + base, self._n_fit_cells
