r"""Control-mean baseline: every perturbation predicted as the training controls ('no change')."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._base import _PseudobulkBaseline

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

__all__ = ["ControlMean"]


class ControlMean(_PseudobulkBaseline):
    r"""Control-mean baseline: every perturbation is predicted as the training controls' pseudobulk.

    :math:`\hat\mu_p = \mu_{\mathrm{ctrl}}` ("no change"). Its Pearson Δ is undefined (a constant change);
    :func:`scmech.tl.evaluate` reports NaN for it.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata` (the same registration as SemiMechVI).

    Examples
    --------
    >>> scmech.tl.ControlMean.setup_anndata(adata, perturbation_key="perturbation", control_label="NT")
    >>> model = scmech.tl.ControlMean(adata)
    >>> model.train(datasplitter_kwargs={"external_indexing": split.external_indexing})
    >>> pred = model.predict(split.test_conditions)
    """

    _predicts_control_level = True

    def __init__(self, adata: AnnData | MuData) -> None:
        super().__init__(adata)
        self._model_summary_string = "ControlMean baseline: predicts the training controls' pseudobulk."
        self.init_params_ = self._get_init_params(locals())

    def _predict_one(self, label, targets):
        ctrl = self._control()
        return self._require(ctrl), int(self._n_train_cells[ctrl])
