r"""Train-perturbation mean (Systema's 'non-control mean'): the shift shared by perturbations."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

from scmech.model._weights import random_effects_weights

from ._base import _PseudobulkBaseline

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

__all__ = ["TrainMean"]

_WEIGHTINGS = ("equal", "precision")


class TrainMean(_PseudobulkBaseline):
    r"""Train-perturbation mean (Systema's "non-control mean"), plain or precision-weighted.

    :math:`\hat\mu_p = \sum_{q\in T}\omega_q\mu_q`, the mean log pseudobulk over the training perturbations
    :math:`T` (control excluded). It captures the systematic shift shared by perturbations. The control label is
    predicted as the control pseudobulk.

    With ``weighting="equal"`` every training perturbation weighs :math:`1/|T|`. With ``weighting="precision"``
    each weighs :math:`\omega_q \propto 1/(\tau^2 + \bar v_q)`, the random-effects mean of DerSimonian and Laird
    (:func:`~scmech.model._weights.random_effects_weights`): :math:`\bar v_q` is the mean sampling variance of
    :math:`q`'s pseudobulk over genes (delta method: between-cell variance over the cell count) and
    :math:`\tau^2` the spread of the perturbations around their mean beyond that noise. A perturbation observed
    in a few dozen cells, mostly noise, then no longer moves the prediction as much as one observed in a
    thousand; when all are observed alike the weights are equal. It is the mean SemiMechVI anchors a target
    without training cells on, so the model's own contribution can be read off against it.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    weighting
        ``"equal"`` (the plain mean) or ``"precision"`` (the random-effects mean).

    Examples
    --------
    >>> scmech.tl.TrainMean.setup_anndata(adata)
    >>> model = scmech.tl.TrainMean(adata)  # or TrainMean(adata, weighting="precision")
    >>> model.train(datasplitter_kwargs={"external_indexing": split.external_indexing})
    >>> pred = model.predict(split.test_conditions)
    """

    def __init__(self, adata: AnnData | MuData, weighting: Literal["equal", "precision"] = "equal") -> None:
        super().__init__(adata)
        if weighting not in _WEIGHTINGS:
            msg = f"weighting={weighting!r} is not one of {list(_WEIGHTINGS)}; use 'equal' or 'precision'."
            raise ValueError(msg)
        self.weighting = weighting
        kind = "mean" if weighting == "equal" else "precision-weighted (random-effects) mean"
        self._model_summary_string = f"TrainMean baseline: {kind} pseudobulk of the training perturbations."
        self.init_params_ = self._get_init_params(locals())

    def _fit(self) -> None:
        perts = [c for c in self._pb.index if c != self._control()]
        if not perts:
            who = type(self).__name__
            msg = f"{who} needs training perturbations besides the control; the training cells hold none."
            raise ValueError(msg)
        values = self._pb.loc[perts].to_numpy()
        self.weights_ = np.full(len(perts), 1.0 / len(perts))
        if self.weighting == "precision" and len(perts) >= 2:
            self.weights_ = random_effects_weights(values, self._pb_var.loc[perts].to_numpy())
        self.train_mean_ = self.weights_ @ values
        self._n_perturbed = int(self._n_train_cells.loc[perts].sum())

    def _keeps_variances(self) -> bool:
        return self.weighting == "precision"

    def _predict_one(self, label, targets):
        if not targets:
            return self._require(label), int(self._n_train_cells[label])
        return self.train_mean_, self._n_perturbed
