r"""Interoperability with pertpy (the optional ``scmech[pertpy]`` extra), one module per tool.

- :func:`efficacy_from_mixscape` (:mod:`._mixscape`, with :mod:`._mixture` for scikit-learn versions pertpy's
  mixture model does not run with): pertpy's Mixscape classes or posterior scores as the per-cell knock-down
  efficacy of :meth:`~scmech.model.SemiMechVI.setup_anndata` (``efficacy_key``).
- :func:`combine_prediction` (:mod:`._combine`): a prediction of scmech (``SemiMechVI.predict`` or a baseline's
  ``predict``) and the observed cells in one AnnData, in one space, labelled for pertpy.
- :func:`prediction_distance` (:mod:`._distance`): :class:`pertpy.tools.Distance` between predicted and observed
  cells of each condition.
- :func:`perturbation_space` (:mod:`._space`): pertpy's :class:`~pertpy.tools.PseudobulkSpace` or
  :class:`~pertpy.tools.CentroidSpace` of predicted and observed conditions side by side.

pertpy is imported inside the functions (:mod:`._common`); ``import scmech.tl`` does not import it.
"""

from __future__ import annotations

from ._combine import combine_prediction
from ._common import OBSERVED, PREDICTED
from ._distance import prediction_distance
from ._mixscape import efficacy_from_mixscape
from ._space import perturbation_space

__all__ = ["combine_prediction", "efficacy_from_mixscape", "perturbation_space", "prediction_distance"]
