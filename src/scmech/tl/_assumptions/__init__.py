r"""Tests of the hidden assumptions of perturbation models on a screen's own data (FRAMEWORK.md §1, §4, §7).

Published predictors of perturbation effects read a Perturb-seq screen as samples of post-perturbation
equilibria: unedited cells sit at a baseline steady state (A1) and do not respond to the medium, every
perturbation leads to one attractor (A2), perturbations act at once, and combinations add. Each check here
turns one of these into a test with an effect size, an interval and a plain verdict (``"holds"``,
``"violated"`` or ``"cannot be tested: <why>"``).

All checks work on the genes expressed in the screen (mean count :math:`\ge` ``0.05`` per cell, at most the
2,000 most expressed) and on the pseudobulk of :mod:`scmech.data._pseudobulk`,
:math:`\bar y_g = \log(1 + \overline{10^4 x_{cg}/\ell_c})`, whose sampling variance for :math:`n` cells is,
by the delta method, :math:`v_g = s^2_g / (n\,(1 + \bar m_g)^2)` with :math:`s^2_g` the cell-to-cell variance
of the normalised values :math:`10^4 x_{cg}/\ell_c` and :math:`\bar m_g` their mean.

Intervals are percentile intervals of a cell bootstrap (cells resampled within each group), re-centred on
the estimate: resampling adds a second round of sampling noise to between-group differences, which would
otherwise shift the interval upwards.

Modules
-------
``_registry``
    The checks (:data:`ASSUMPTIONS`), verdict words, table columns and the row builder.
``_data``
    The screen as the checks read it: expressed genes, normalisation, pseudobulk, contexts.
``_stats``
    Shared statistics: re-centred bootstrap interval and resampling designs.
``_ftest``
    Stratified F test of control cells between groups (baseline and media checks).
``_mixture``
    EM fit of the control-fixed two-component Gaussian mixture.
``_baseline``, ``_media``, ``_unique_attractor``, ``_instantaneous``, ``_additivity``, ``_model``
    One module per assumption check.
``_check``
    The driver, :func:`check_assumptions`.
``_efficacy``
    :func:`estimate_efficacy`, the per-cell posterior of the unique-attractor mixture.
``_report``
    :func:`report_assumptions`.
``_validation``
    Argument checks.
"""

from __future__ import annotations

from ._check import check_assumptions
from ._efficacy import estimate_efficacy
from ._registry import ASSUMPTIONS, CANNOT, COLUMNS, HOLDS, STATISTICS, VIOLATED
from ._report import _get_table, report_assumptions

__all__ = ["ASSUMPTIONS", "check_assumptions", "estimate_efficacy", "report_assumptions"]
