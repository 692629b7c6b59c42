r"""Baselines with the interface of :class:`~scmech.model.SemiMechVI`, one baseline per module.

Each baseline registers data with the same ``setup_anndata`` as SemiMechVI, fits on the training cells of a
split (``train(datasplitter_kwargs={"external_indexing": split.external_indexing})``) and returns from
``predict`` an AnnData with exactly the layout of ``SemiMechVI.predict(return_mean=True)``: one row per
condition, ``X`` the predicted pseudobulk :math:`\log(1 + 10^4\bar\rho)` (the definition of
:func:`scmech.data.pseudobulk`), ``layers["expression"]`` its ``expm1`` (:math:`b^{x} - 1` for input
log-normalised in base :math:`b`; none for centred or scaled input).

Definitions (ANCHORS §5), in log-pseudobulk space with :math:`\mu_{\mathrm{ctrl}}` the pseudobulk of the
training controls and :math:`\mu_q` that of training condition :math:`q`:

- :class:`ControlMean` (:mod:`._control_mean`): :math:`\hat\mu_p = \mu_{\mathrm{ctrl}}`.
- :class:`TrainMean` (:mod:`._train_mean`): :math:`\hat\mu_p = \frac{1}{|T|}\sum_{q \in T}\mu_q` over training
  perturbations, or (``weighting="precision"``) their random-effects mean, each weighed by its precision.
- :class:`Additive` (:mod:`._additive`): :math:`\hat\mu_{A+B} = \mu_{\mathrm{ctrl}} + (\mu_A - \mu_{\mathrm{ctrl}})
  + (\mu_B - \mu_{\mathrm{ctrl}})`.
- :class:`LinearModel` (:mod:`._linear`): the double-ridge model of Ahlmann-Eltze, Huber & Anders (2025).
- :class:`ScGen` (:mod:`._scgen`): latent arithmetic with :class:`pertpy.tools.Scgen` (optional extra).

What they share lives in :mod:`._base` (registration, training pseudobulks, contexts, prediction) and
:mod:`._layout` (the prediction AnnData).
"""

from __future__ import annotations

from ._additive import Additive
from ._base import _PseudobulkBaseline
from ._control_mean import ControlMean
from ._layout import _prediction_anndata
from ._linear import LinearModel
from ._scgen import ScGen
from ._train_mean import TrainMean

__all__ = ["Additive", "ControlMean", "LinearModel", "ScGen", "TrainMean"]
