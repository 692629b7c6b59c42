r"""Experimental design of a Perturb-seq screen: batching, cell numbers and sequencing depth (FRAMEWORK §6–7).

All quantities live on the pseudobulk scale :math:`\log(1+10^4\bar\rho)` of :func:`scmech.data.pseudobulk`
and use the variance model of :func:`scmech.tl._errors.error_decomposition`: the effect estimate
:math:`\hat\Delta_p = \bar y_p - \bar y_\varnothing` of a perturbation with :math:`n_p` cells (batch
composition :math:`w`) against :math:`n_\varnothing` controls (composition :math:`u`) has

.. math:: V_p = \mathrm{E}\big[(\hat\Delta_p - \Delta_p)^2\big]
    = \sigma^2_{\mathrm{cell}}\Big(\frac{1}{n_p} + \frac{1}{n_\varnothing}\Big)
    + \sigma^2_{\mathrm{batch}}\sum_b (w_b - u_b)^2,

and a two-sided :math:`z` test at level :math:`\alpha` detects an effect :math:`\delta` with power
:math:`1-\beta` when :math:`|\delta| \ge \mathrm{MDE} = (z_{1-\alpha/2} + z_{1-\beta})\sqrt{V_p}`.

Modules:

- ``_variance``: :func:`resolve_variance`, the variance terms from a pilot, a table or scalars;
- ``_power``: :func:`minimal_detectable_effect` and :func:`power` (MDE, cells needed, MDE of a design);
- ``_budget``: the sequencing budget (cells versus depth) of :func:`power`;
- ``_inputs``: argument checks shared by the tools;
- ``_batch_design``: the :class:`BatchDesign` result;
- ``_sizing``: control fraction and cells per perturbation;
- ``_allocation``: placing cells into batches and the expected error of each effect;
- ``_recommend``: :func:`recommend_batches`, the driver, and its tables.
"""

from ._batch_design import BatchDesign
from ._power import minimal_detectable_effect, power
from ._recommend import recommend_batches
from ._variance import resolve_variance

__all__ = ["BatchDesign", "minimal_detectable_effect", "power", "recommend_batches", "resolve_variance"]
