r"""Error decomposition of perturbation effects and predictions (FRAMEWORK §6).

Per gene, on the pseudobulk scale of :func:`scmech.data.pseudobulk`, :math:`\bar y=\log(1+10^4\bar\rho)`, the
pseudobulk of condition :math:`p` in wet-lab batch :math:`b` from :math:`n` cells is modelled as

.. math:: \bar y_{p,b} = \mu_p + \beta_b + \bar\epsilon,\qquad
    \beta_b\sim(0,\sigma^2_{\mathrm{batch}}),\qquad
    \mathrm{Var}\,\bar\epsilon = \sigma^2_{\mathrm{cell}}/n,\qquad
    \sigma^2_{\mathrm{cell}} = \sigma^2_{\mathrm{bio}} + \sigma^2_{\mathrm{meas}}.

:func:`error_decomposition` estimates the variance terms from the control cells and splits the expected (and,
for a prediction, the observed) squared error of every perturbation into a noise floor, a confounding term, a
batch term and the model error. The same estimators feed :mod:`scmech.tl._design` (batching and power).

Modules, in the order a decomposition runs through them:

- ``_inputs``: argument checks, labels, predictions, given variances and dispersion;
- ``_data`` and ``_setup``: the cells used, coded by (condition, batch) group, normalised;
- ``_stats``: group means and half-split variances (the passes over the cells);
- ``_variance``: the variance terms (cell, batch, measurement, biological) and :func:`estimate_variance`;
- ``_components``: noise floor, confounding, batch and model components;
- ``_intervals``: resampling within groups and percentile intervals;
- ``_estimate``: the point estimate and its bootstrap replicates (one pass of the three modules above each);
- ``_report``: notes, warnings and tables;
- ``_decomposition``: :func:`error_decomposition`, the driver.
"""

from ._components import COMPONENTS
from ._decomposition import error_decomposition
from ._variance import VAR_MEAN_THRESHOLD, estimate_variance

__all__ = ["COMPONENTS", "VAR_MEAN_THRESHOLD", "error_decomposition", "estimate_variance"]
