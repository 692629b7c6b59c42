r"""Train-perturbation mean (Systema's 'non-control mean'): the shift shared by perturbations."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._base import _PseudobulkBaseline

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

__all__ = ["TrainMean"]


class TrainMean(_PseudobulkBaseline):
    r"""Train-perturbation mean (Systema's "non-control mean").

    :math:`\hat\mu_p = \frac{1}{|T|}\sum_{q\in T}\mu_q`, the mean log pseudobulk over the training
    perturbations :math:`T` (control excluded). It captures the systematic shift shared by perturbations.
    The control label is predicted as the control pseudobulk.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.

    Examples
    --------
    >>> scmech.tl.TrainMean.setup_anndata(adata)
    >>> model = scmech.tl.TrainMean(adata)
    >>> model.train(datasplitter_kwargs={"external_indexing": split.external_indexing})
    >>> pred = model.predict(split.test_conditions)
    """

    def __init__(self, adata: AnnData | MuData) -> None:
        super().__init__(adata)
        self._model_summary_string = "TrainMean baseline: mean pseudobulk of the training perturbations."
        self.init_params_ = self._get_init_params(locals())

    def _fit(self) -> None:
        perts = [c for c in self._pb.index if c != self._control()]
        if not perts:
            msg = "TrainMean needs training perturbations besides the control; the training cells hold none."
            raise ValueError(msg)
        self.train_mean_ = self._pb.loc[perts].to_numpy().mean(axis=0)
        self._n_perturbed = int(self._n_train_cells.loc[perts].sum())

    def _predict_one(self, label, targets):
        if not targets:
            return self._require(label), int(self._n_train_cells[label])
        return self.train_mean_, self._n_perturbed
