r"""Additive baseline for combinations: the control plus the sum of the singles' changes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._base import _PseudobulkBaseline

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

__all__ = ["Additive"]


class Additive(_PseudobulkBaseline):
    r"""Additive baseline for combinations.

    :math:`\hat\mu_{A+B} = \mu_{\mathrm{ctrl}} + (\mu_A - \mu_{\mathrm{ctrl}}) + (\mu_B - \mu_{\mathrm{ctrl}})`
    in log-pseudobulk space, from the training singles (any number of targets). Conditions seen in training
    (singles, combinations, the control) are predicted as their own training pseudobulk. A condition with a
    target never perturbed alone in training raises :class:`KeyError`.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.

    Examples
    --------
    A screen with combinations, holding out a combination whose singles are in training:

    >>> adata = scmech.data.simulate_perturbseq(2000, 100, n_perturbations=6, n_combinations=2, seed=1)
    >>> split = scmech.tl.split(adata, "combination", test_size=0.5)
    >>> scmech.tl.Additive.setup_anndata(adata)
    >>> model = scmech.tl.Additive(adata)
    >>> model.train(datasplitter_kwargs={"external_indexing": split.external_indexing})
    >>> pred = model.predict(split.test_conditions)
    """

    def __init__(self, adata: AnnData | MuData) -> None:
        super().__init__(adata)
        self._model_summary_string = "Additive baseline: control plus the sum of the singles' changes."
        self.init_params_ = self._get_init_params(locals())

    def _predict_one(self, label, targets):
        if label in self._pb.index:
            return self._pb.loc[label].to_numpy(), int(self._n_train_cells[label])
        missing = [t for t in targets if t not in self._pb.index]
        if missing:
            msg = (
                f"Additive cannot predict {label!r}: target(s) {missing} were not perturbed alone in training. "
                "It needs every single of a combination among the training conditions."
            )
            raise KeyError(msg)
        ctrl = self._control()
        base = self._pb.loc[ctrl].to_numpy()
        value = base + sum(self._pb.loc[t].to_numpy() - base for t in targets)
        n_used = int(self._n_train_cells[ctrl] + sum(self._n_train_cells[t] for t in targets))
        return value, n_used
