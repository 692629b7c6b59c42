"""The driver: :func:`check_assumptions` runs every check of the registry on a screen and stores the table."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from scmech._constants import SCMECH_ADATA_KEYS
from scmech._docs import fill_doc
from scmech.data._checks import scmech_uns
from scmech.tl._seeds import check_random_state, resolved_seed

from ._additivity import _check_additivity
from ._baseline import _check_baseline
from ._data import _prepare
from ._instantaneous import _check_time
from ._media import _check_media
from ._model import _check_model
from ._registry import COLUMNS, _cannot, _rngs, _row
from ._unique_attractor import _mixture_checks
from ._validation import (
    _validate_common,
    _validate_flags,
    _validate_model,
    _validate_resample_size,
    _validate_target,
)

if TYPE_CHECKING:
    from anndata import AnnData

    from ._data import _Data
    from ._unique_attractor import _MixtureResult


@fill_doc
def check_assumptions(
    adata: AnnData,
    *,
    perturbation_key: str = "perturbation",
    control_label: str = "NT",
    separator: str = "+",
    unassigned_label: str | None = "unassigned",
    batch_key: str | None = None,
    time_key: str | None = None,
    media_key: str | None = None,
    layer: str | None = None,
    counts: bool = True,
    model: Any | None = None,
    n_bootstrap: int = 200,
    alpha: float = 0.05,
    key_added: str = SCMECH_ADATA_KEYS.ASSUMPTIONS_UNS,
    random_state: int | None = 0,
    copy: bool = False,
) -> pd.DataFrame | AnnData:
    r"""Test the hidden assumptions of perturbation models on a screen.

    Each check gives an effect size with a ``1 - alpha`` interval, a p-value where one is defined, and a verdict:
    ``"holds"``, ``"violated"`` or ``"cannot be tested: <why>"``. Genes: those with a mean count of at least
    0.05 per cell (at most the 2,000 most expressed). Intervals: cell bootstrap (``n_bootstrap`` resamples
    within each group), percentile interval re-centred on the estimate.

    **Baseline steady state (A1)** (``baseline_steady_state``, one row per medium). Control cells are grouped by
    time point (within batches when ``batch_key`` is given, so batch effects drop out) or, without
    ``time_key``, by batch. Per gene :math:`g`, the one-way ANOVA ratio of the between-group variance of the
    group means to the within-group variance of the normalised values (:math:`10^4 x/\ell`),

    .. math:: F_g = \frac{\sum_k n_k(\bar x_{kg} - \bar x_{\cdot g})^2/(K - 1)}{\sum_k\sum_{c\in k}(x_{cg} -
              \bar x_{kg})^2/(N - K)},

    is 1 on average when group means differ only by sampling noise (with batches as strata the sums run within
    each batch and the degrees of freedom add up). The effect is :math:`F = \mathrm{mean}_g F_g`; the p-value
    comes from ``n_bootstrap`` permutations of the group labels of control cells (within strata).
    ``"violated"`` when :math:`p <` ``alpha`` and the interval's lower bound exceeds 1. Without time points,
    batches are compared: a difference is
    then a batch effect or a drift, which cannot be told apart (the detail says so).

    **Media response** (``media_response``): the same statistic across media, within each time point and
    batch. ``"violated"`` (a model that ignores the medium is wrong for controls) when :math:`p <` ``alpha``
    and the interval's lower bound exceeds 1.

    **Unique attractor (A2)** (``unique_attractor``, one row per perturbation and (medium, time) context).
    Log-normalised cells (centred on their batch's controls when every batch has controls) are projected on
    the perturbation's direction (mean difference to controls on its top 50 DE genes by Welch's :math:`t`),
    two-fold cross-fitted: each half of the cells is scored by the direction learnt on the other half and
    standardised by its held-out controls, which are then :math:`N(0, 1)`. The perturbed cells' scores
    :math:`z` are fitted by a single shifted state :math:`N(\mu, \sigma^2)` and by a mixture with one component
    fixed at the control distribution (as Mixscape's not-perturbed class),

    .. math:: z \sim \pi\, N(0, 1) + (1 - \pi)\, N(\mu, \sigma^2).

    The effect is :math:`\pi`, the fraction of cells that look unperturbed (escapers, or a second attractor at
    the baseline); the p-value is the likelihood-ratio test at the boundary :math:`\pi = 0`
    (:math:`\tfrac12\chi^2_0 + \tfrac12\chi^2_1`). ``"violated"`` when the mixture wins by
    :math:`\Delta\mathrm{BIC} > 10` and the interval's lower bound of :math:`\pi` exceeds 0.05; ``"cannot be
    tested"`` when the perturbed cells move by less than one control SD on average (escapers and responders
    overlap) or there are fewer than 20 perturbed or control cells. The per-cell posterior
    :math:`P(\text{perturbed}\mid z_c) = (1-\pi)N(z_c;\mu,\sigma^2)/[\pi N(z_c;0,1) + (1-\pi)N(z_c;\mu,\sigma^2)]`
    is an estimate of each cell's knock-down (0 = escaper), stored in ``"posterior"``; write it to ``obs``
    with :func:`estimate_efficacy`.

    **Instantaneous perturbation** (``instantaneous_perturbation``, per perturbation and medium; needs
    ``time_key``). At each time point the effect norm is the debiased distance of the perturbation's
    pseudobulk to the same-time controls, :math:`E_t = (\lVert\bar y_p - \bar y_\varnothing\rVert^2 - \sum_g
    (v_{pg} + v_{\varnothing g}))^{1/2}`. The effect is the share of the last effect that appeared over the
    last interval, :math:`1 - E_{t_{K-1}}/E_{t_K}` (0: settled; negative: decaying). ``"violated"`` when the
    interval's lower bound exceeds 0.1 (the effect still grew by more than 10 % of its size); the p-value is the
    bootstrap share of replicates at or below 0.1. An onset delay and a slow relaxation of the network both
    make effects grow, so the check answers "have the cells settled at their post-perturbation state by the
    last read-out?", the premise of reading cells as post-intervention equilibria; it cannot tell the two
    causes apart, and read-outs short compared with the slowest degradation times flag instantaneous
    perturbations too. ``"cannot be tested"`` when the effect at the last read-out is not above noise: its
    debiased squared norm is less than 3 null standard deviations, :math:`(2\sum_g v_g^2)^{1/2}`.

    **Additivity** (``additivity``, per combination whose singles and controls are observed in the same
    contexts). The genetic interaction :math:`I = \bar y_{A+B} - \bar y_A - \bar y_B + \bar y_\varnothing` (per
    context, summed in squares over contexts) is compared with its noise floor
    :math:`N = E\lVert(I^{(1)} - I^{(2)})/2\rVert^2` over ``n_bootstrap`` random splits of each group into
    halves (the half-difference has the sampling variance of the full-data :math:`I`). The effect is
    :math:`\lVert I\rVert/\sqrt N` (1 = additive within noise); the p-value is the share of split-half noise
    norms at least :math:`\lVert I\rVert^2`. ``"violated"`` when :math:`p <` ``alpha`` and the interval's
    lower bound exceeds 1. A response shared
    by every perturbed cell (absent from the controls) is not additive at the pseudobulk level either, and is
    flagged.

    **Model** (``model_steady_state``, with ``model``): the steady-state residual
    :math:`\lVert f_\theta(z_c)\rVert` of :meth:`~scmech.model.SemiMechVI.get_steady_state_residual`, median
    over control cells divided by the median over perturbed cells; p-value of a one-sided Mann–Whitney test
    (controls larger). ``"violated"`` when :math:`p <` ``alpha``: the learned field moves controls more than
    perturbed cells.

    Parameters
    ----------
    adata
        Annotated data matrix with raw counts in ``X`` (or ``layer``).
    perturbation_key
        %(perturbation_key)s
    control_label
        %(single_control_label)s
    separator
        %(separator)s
    unassigned_label
        Label of cells without a usable guide call; they are left out.
    batch_key
        %(batch_key)s
    time_key
        %(time_key)s
    media_key
        %(media_key)s
    layer
        %(layer)s
    counts
        %(counts)s
    model
        A trained :class:`~scmech.model.SemiMechVI` set up on ``adata``; adds the model-based check.
    n_bootstrap
        Number of bootstrap resamples, permutations and random splits per test (at most 10,000, and fewer on
        screens so large that the resamples of their cells would not fit in memory).
    alpha
        Significance level of the verdicts; intervals cover ``1 - alpha``.
    key_added
        Key under ``adata.uns["scmech"]``.
    random_state
        Seed of the resampling (a non-negative integer); ``None`` uses ``scvi.settings.seed`` (a fresh seed, recorded
        in ``params``, when that is ``None`` too).
    copy
        Return a copy of ``adata`` with the result instead of writing into ``adata``.

    Returns
    -------
    The result table (``copy=False``) or the copy of ``adata`` holding it (``copy=True``). Columns:
    ``assumption`` (a key of :data:`ASSUMPTIONS`), ``subject`` (controls, a medium, a perturbation, a
    combination), ``statistic`` (what ``effect`` measures), ``effect``, ``ci_low``, ``ci_high``, ``p_value``
    (NaN where not defined), ``n_cells``, ``verdict`` and ``detail`` (plain language).

    Writes ``adata.uns["scmech"][key_added]``, a dict with ``"table"`` (the result), ``"posterior"`` (a
    DataFrame indexed by the ``obs_names`` of perturbed cells of tested perturbations, columns ``condition``,
    ``context`` and ``p_perturbed``) and ``"params"`` (the arguments). Nothing else is written.

    Examples
    --------
    >>> adata = scmech.datasets.papalexi2021()
    >>> table = scmech.tl.check_assumptions(adata, batch_key="bio_rep")
    >>> print(scmech.tl.report_assumptions(table))
    """
    _validate_common(n_bootstrap, alpha)
    _validate_flags(counts=counts, copy=copy)
    check_random_state(random_state)
    seed = resolved_seed(random_state)
    _validate_target(adata, key_added, copy, 'adata.uns["scmech"]')
    _validate_model(model)
    data = _prepare(
        adata,
        perturbation_key=perturbation_key,
        control_label=control_label,
        separator=separator,
        unassigned_label=unassigned_label,
        batch_key=batch_key,
        time_key=time_key,
        media_key=media_key,
        layer=layer,
        counts=counts,
    )
    n = int(n_bootstrap)
    _validate_resample_size(n, int(data.design.perturbation.fit_mask.sum()))
    rows, mixtures = _run_checks(adata, data, model, _rngs(seed), n, alpha)
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["n_cells"] = table["n_cells"].astype(np.int64)
    posterior = _posterior_frame(adata, mixtures)
    params = {
        "perturbation_key": perturbation_key,
        "control_label": data.design.perturbation.control_label,
        "separator": separator,
        "unassigned_label": unassigned_label if unassigned_label is not None else "",
        "batch_key": batch_key if batch_key is not None else "",
        "time_key": time_key if time_key is not None else "",
        "media_key": media_key if media_key is not None else "",
        "layer": layer if layer is not None else "",
        "counts": bool(counts),
        "model": type(model).__name__ if model is not None else "",
        "n_bootstrap": n,
        "alpha": float(alpha),
        "random_state": int(seed),
        "n_genes": len(data.genes),
    }
    adata = adata.copy() if copy else adata
    scmech_uns(adata)[key_added] = {
        "table": table,
        "posterior": posterior,
        "params": params,
    }
    return adata if copy else table


def _run_checks(
    adata: AnnData, data: _Data, model: Any | None, rngs: dict[str, np.random.Generator], n: int, alpha: float
) -> tuple[list[dict[str, Any]], list[_MixtureResult]]:
    """Run the checks in report order, each with its own random stream.

    Parameters
    ----------
    adata
        The screen (for the model check).
    data
        The screen as the checks read it.
    model
        A trained model, or ``None`` to skip the model check.
    rngs
        Generator of each check, keyed by assumption.
    n
        Number of resamples per test.
    alpha
        Significance level.

    Returns
    -------
    The result rows, and the unique-attractor results (which hold the per-cell posteriors).
    """
    keys = data.design.keys
    rows: list[dict[str, Any]] = []
    rows += _check_baseline(data, keys, rngs["baseline_steady_state"], n, alpha)
    rows += _check_media(data, keys, rngs["media_response"], n, alpha)
    mixtures = _mixture_checks(data, rngs["unique_attractor"], n, alpha)
    if mixtures:
        rows += [m.row for m in mixtures]
    else:
        rows.append(_row("unique_attractor", "perturbations", verdict=_cannot("no perturbed cells")))
    rows += _check_time(data, keys, rngs["instantaneous_perturbation"], n, alpha)
    rows += _check_additivity(data, keys, rngs["additivity"], n, alpha)
    if model is not None:
        rows += _check_model(adata, data, model, rngs["model_steady_state"], n, alpha)
    return rows, mixtures


def _posterior_frame(adata: AnnData, mixtures: list[_MixtureResult]) -> pd.DataFrame:
    """Per-cell posteriors of the tested perturbations, indexed by ``obs_names`` (empty when none was tested)."""
    parts = [
        pd.DataFrame(
            {"condition": m.condition, "context": m.context, "p_perturbed": m.posterior},
            index=pd.Index(np.asarray(adata.obs_names)[m.cells]),
        )
        for m in mixtures
        if m.posterior is not None
    ]
    if not parts:
        return pd.DataFrame({"condition": [], "context": [], "p_perturbed": []}, index=pd.Index([], dtype=str))
    return pd.concat(parts)
