r"""The error decomposition driver: :func:`error_decomposition` runs the steps of the other modules in order.

Input checks (``_inputs``), the setup of cells and groups (``_setup``), the estimate with its bootstrap
intervals (``_estimate``: group statistics, variance terms and components from ``_stats``,
``_variance``, ``_components``, resampled by ``_intervals``), then the notes and tables
(``_report``) stored in ``adata.uns``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from scmech._constants import SCMECH_ADATA_KEYS
from scmech._docs import fill_doc
from scmech.data._checks import check_unique_names, scmech_uns
from scmech.tl._metrics._checks import log_data_max
from scmech.tl._metrics._context import context_mask, prediction_context

from ._estimate import _estimate
from ._inputs import _check_arguments, _dispersion, _prediction_inputs, _variance_override, _warn
from ._report import _confounded, _design_notes, _gene_tables, _params, _tidy_table
from ._setup import _setup

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import numpy as np
    from anndata import AnnData

    from ._data import _Layout


def _prediction_arrays(
    frame: pd.DataFrame | None, lay: _Layout, genes: pd.Index
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Predicted perturbations (in layout order) and the predicted control row over ``genes``, if any."""
    if frame is None:
        return None, None
    pred = frame.loc[lay.conditions[1:], genes].to_numpy()
    ctrl = lay.conditions[0]
    pred_ctrl = frame.loc[ctrl, genes].to_numpy() if ctrl in frame.index else None
    return pred, pred_ctrl


def _in_context(
    adata: AnnData, predictions: AnnData, *, media_key: str | None, time_key: str | None, media_time_key: str | None
) -> AnnData:
    """``adata``, or a view of its cells in the medium, time and switch time the predictions are made in."""
    keys = {"media": media_key, "time": time_key, "media_time": media_time_key}
    context = prediction_context({"predictions": predictions}, keys, fields=("media", "time", "media_time"))
    return adata[context_mask(adata, context)] if context else adata


@fill_doc
def error_decomposition(
    adata: AnnData,
    *,
    perturbation_key: str = "perturbation",
    control_label: str | Sequence[str] = "NT",
    separator: str = "+",
    unassigned_label: str | Sequence[str] | None = "unassigned",
    batch_key: str | None,
    layer: str | None = None,
    counts: bool = True,
    predictions: AnnData | None = None,
    conditions: Sequence[str] | None = None,
    target: Literal["delta", "expression"] = "delta",
    dispersion: float | np.ndarray | pd.Series | None = None,
    variance: Mapping[str, Any] | pd.DataFrame | None = None,
    n_splits: int = 20,
    n_bootstrap: int = 200,
    min_cells: int = 2,
    key_added: str = SCMECH_ADATA_KEYS.ERRORS_UNS,
    random_state: int = 0,
    copy: bool = False,
    media_key: str | None = None,
    time_key: str | None = None,
    media_time_key: str | None = None,
) -> pd.DataFrame | AnnData:
    r"""Decompose the error of perturbation effects (and of predictions) into noise, batch and model terms.

    The model (FRAMEWORK §6), per gene on the pseudobulk scale :math:`\bar y=\log(1+10^4\bar\rho)` of
    :func:`scmech.data.pseudobulk`: condition :math:`p` in batch :math:`b` from :math:`n_{p,b}` cells,

    .. math:: \bar y_{p,b} = \mu_p + \beta_b + \bar\epsilon_{p,b},\qquad
        \mathrm{Var}\,\beta_b = \sigma^2_{\mathrm{batch}},\qquad
        \mathrm{Var}\,\bar\epsilon_{p,b} = \sigma^2_{\mathrm{cell}}/n_{p,b}.

    **Variance terms** (from the control cells; per gene, returned in ``variance``):

    - :math:`\sigma^2_{\mathrm{cell}}` (= bio + meas), from within-batch half splits: each batch's
      controls are split at random into halves :math:`A, B` (``n_splits`` times) and

      .. math:: \hat\sigma^2_{\mathrm{cell},b} = \frac{1}{R}\sum_{r=1}^{R}
          \frac{(\bar y_{A_r} - \bar y_{B_r})^2}{1/n_{A} + 1/n_{B}},

      pooled over batches with weights :math:`n_b`. This reads the variance of the pseudobulk itself (log
      scale, library-size normalisation included), so a pseudobulk of :math:`n` cells varies by
      :math:`\sigma^2_{\mathrm{cell}}/n`. The same estimator on a perturbation's own cells gives its
      :math:`\sigma^2_{\mathrm{cell},p}` (escapers and variable knock-down make it larger than the
      controls'); conditions without a batch of 2 cells use the controls'.
    - :math:`\sigma^2_{\mathrm{batch}}`, method of moments over the :math:`B_c` batches with at least
      ``min_cells`` controls (per-batch control pseudobulks :math:`\bar y_{\varnothing,b}`):

      .. math:: \hat\sigma^2_{\mathrm{batch}} = \max\Big(0,\ \widehat{\mathrm{Var}}_b\,\bar y_{\varnothing,b}
          - \frac{1}{B_c}\sum_b \hat\sigma^2_{\mathrm{cell},b}/n_{\varnothing,b}\Big),

      the sample variance (ddof 1) of the batch means minus its expected sampling part
      (:math:`E[\widehat{\mathrm{Var}}] = s^2_\beta + \overline{\sigma^2/n}` for independent noise); it
      estimates the spread of the realised batches and needs :math:`B_c\ge 2` (else NaN).
    - :math:`\sigma^2_{\mathrm{meas}}` (``counts=True``), the expected sampling variance of
      :math:`z=10^4x/\ell` at each cell's library size, by the delta method
      (:math:`\partial\log(1+m)/\partial m = 1/(1+m)`) and unbiased moments of the counts:

      .. math:: \hat\sigma^2_{\mathrm{meas},b} = \frac{\overline{z\,10^4/\ell}
          + \big(\overline{z^2} - \overline{z\,10^4/\ell}\big)/(\theta+1)}{(1+\bar z_b)^2},

      since :math:`E[z\,10^4/\ell] = 10^8\rho/\ell` (Poisson variance) and
      :math:`E[z^2 - z\,10^4/\ell]/(\theta+1) = 10^8\rho^2/\theta` (negative-binomial excess); the second
      term only with ``dispersion`` :math:`\theta`. Without it, meas is the Poisson part, a lower bound:
      gamma-Poisson overdispersion cannot be told apart from biological heterogeneity in counts alone.
    - :math:`\sigma^2_{\mathrm{bio}}`, the rest of the per-cell variance on the same linearisation:
      :math:`\hat\sigma^2_{\mathrm{bio}} = \max\big(0,\ \widehat{\mathrm{Var}}_c(z)/(1+\bar z_b)^2
      - \hat\sigma^2_{\mathrm{meas},b}\big)` pooled over batches (weights :math:`n_b`). Its delta-method
      total :math:`\widehat{\mathrm{Var}}_c(z)/(1+\bar z)^2` agrees with the split estimate
      :math:`\hat\sigma^2_{\mathrm{cell}}` up to the linearisation, so bio + meas is close to, not exactly,
      cell; being a difference, bio is the least precise term.

    **Components** for perturbation :math:`p` with batch composition :math:`w_b = n_{p,b}/n_p` and control
    composition :math:`u_b = n_{\varnothing,b}/n_\varnothing`, pooled pseudobulks :math:`\bar y_p`,
    :math:`\bar y_\varnothing` over all their cells:

    ``target="delta"`` (effects :math:`\hat\Delta_p = \bar y_p - \bar y_\varnothing`):

    .. math:: E\big[(\hat\Delta_p-\Delta_p)^2\big] =
        \underbrace{\frac{\sigma^2_{\mathrm{cell},p}}{n_p}
        + \frac{\sigma^2_{\mathrm{cell},\varnothing}}{n_\varnothing}}_{\text{noise floor}}
        + \underbrace{\sigma^2_{\mathrm{batch}}\textstyle\sum_b (w_b - u_b)^2}_{\text{confounding}},

    zero confounding when perturbation and controls share their batch composition,
    :math:`\sigma^2_{\mathrm{batch}}(1+\sum_b u_b^2)` for a perturbation alone in a batch without controls
    (:math:`2\sigma^2_{\mathrm{batch}}` when the controls sit in one other batch); ``batch`` is 0 (the difference to the
    controls removes the shared batch effect). With ``predictions`` (:math:`\hat y`), the prediction's effect
    :math:`\hat y_p - \hat y_\varnothing` (its own control row when it has one, else the observed
    :math:`\bar y_\varnothing`) is compared with :math:`\hat\Delta_p`; a model anchored to the observed controls
    meets exactly the two terms above on top of its own error.

    ``target="expression"`` (a batch-free prediction of :math:`\bar y_p` itself):

    .. math:: E\big[(\hat\mu_p - \bar y_p)^2\big] = \underbrace{\|\hat\mu_p-\mu_p\|^2}_{\text{model}}
        + \underbrace{\sigma^2_{\mathrm{batch}}\textstyle\sum_b w_b^2}_{\text{batch}}
        + \underbrace{\sigma^2_{\mathrm{cell},p}/n_p}_{\text{noise floor}},

    the batch term being :math:`\sigma^2_{\mathrm{batch}}` for data of one batch and
    :math:`\sigma^2_{\mathrm{batch}}/B` for cells spread evenly over :math:`B` batches; ``confounding`` is 0.

    ``total``: without predictions, the sum of the terms (the error an oracle meets: the floor set by the
    design); with predictions, the observed squared error, and ``model`` is defined as the **residual**
    ``total - noise_floor - confounding - batch``, so the components add up to the total exactly (per gene and
    for the gene means). A negative model error means the prediction is within the noise.

    Parameters
    ----------
    adata
        Screen with counts (or log-normalised values with ``counts=False``). Not modified, except for
        ``uns["scmech"][key_added]``.
    perturbation_key
        %(perturbation_key)s
    control_label
        %(control_label)s
    separator
        %(separator)s
    unassigned_label
        %(unassigned_label)s They are never used.
    batch_key
        %(batch_key)s
        ``None``: one batch (then :math:`\sigma^2_{\mathrm{batch}}` is not identifiable).
    layer
        %(layer)s
    counts
        %(counts)s
        With ``False`` there is no measurement/biological split.
    predictions
        An AnnData from ``model.predict(...)`` or a baseline: one row per condition, ``obs["perturbation"]``,
        ``X`` the predicted :math:`\log(1+10^4\bar\rho)`. Adds the ``model`` component; genes missing from it
        are left out.
    conditions
        Perturbations to decompose; all observed ones (with predictions: all predicted and observed ones)
        when ``None``.
    target
        ``"delta"``: errors of effects relative to the controls; ``"expression"``: errors of a batch-free
        expression prediction (see above).
    dispersion
        Negative-binomial inverse dispersion :math:`\theta` for the measurement variance: a scalar, an array with
        one value per gene of ``adata`` (``var_names`` order) or a Series indexed by gene name (aligned by name);
        Poisson when ``None``.
    variance
        Variance terms to use instead of the estimates, ``{"batch": ..., "cell": ...}`` (scalars or per-gene
        Series on the pseudobulk scale), e.g. :math:`\sigma^2_{\mathrm{batch}}` from a pilot when the controls
        sit in one batch. A given ``cell`` is used for every condition (instead of each condition's own
        estimate). Given terms are held fixed in the bootstrap.
    n_splits
        Random half splits per group for :math:`\sigma^2_{\mathrm{cell}}`, in the estimate and in every
        bootstrap replicate (fewer splits in the replicates would add their own Monte-Carlo noise and widen
        the intervals about twofold).
    n_bootstrap
        Bootstrap replicates for the intervals (cells resampled with replacement within each
        (condition, batch) group; the batches themselves are fixed, so the intervals do not include the
        uncertainty of :math:`\sigma^2_{\mathrm{batch}}` about a population of batches). ``0``: no intervals.
    min_cells
        Conditions with fewer cells are left out; batches with fewer controls do not enter
        :math:`\sigma^2_{\mathrm{batch}}`.
    key_added
        Key under ``adata.uns["scmech"]``.
    random_state
        Seed of the splits and the bootstrap.
    copy
        Work on and return a copy of ``adata``.
    media_key, time_key, media_time_key
        Columns of ``adata.obs`` holding each cell's medium, read-out time and medium switch time, to match the
        context of ``predictions`` (``None``: the column the predicting model was registered with). Predictions made
        in a medium or at a time (their ``obs["media"]``, ``obs["time"]``, ``obs["media_time"]``) are decomposed
        against the cells of that context only; a prediction's ``obs["batch"]`` is not matched, since the
        decomposition estimates the batch term over every batch.

    Returns
    -------
    The tidy table (or, with ``copy=True``, the copy of ``adata``): one row per perturbation and component
    (``noise_floor``, ``confounding``, ``batch``, ``model`` with predictions, and ``total``) with columns
    ``condition``, ``component``, ``value`` (mean over genes), ``ci_low``, ``ci_high`` (2.5 and 97.5 %
    bootstrap percentiles), ``n_cells``, ``n_batches`` (batches holding the perturbation) and ``confounded``
    (its cells sit only in batches without controls).

    Writes ``adata.uns["scmech"][key_added]``, a dict with

    - ``"table"``: the table above;
    - ``"per_gene"``: DataFrame genes x components (mean over the perturbations);
    - ``"variance"``: DataFrame genes x ``batch``, ``cell``, ``bio``, ``meas``, ``mean`` (control mean, counts
      per :math:`10^4`);
    - ``"variance_summary"``: DataFrame (``batch``, ``cell``, ``bio``, ``meas``) x ``value``, ``ci_low``,
      ``ci_high``, ``n_genes``: means over genes with a control mean of at least 1 count per :math:`10^4`
      (all genes for ``counts=False``);
    - ``"params"``: the arguments and notes (batches without controls, dropped conditions).

    Examples
    --------
    >>> adata = scmech.datasets.papalexi2021()
    >>> table = error_decomposition(adata, batch_key="bio_rep", n_bootstrap=50)
    >>> table.pivot(index="condition", columns="component", values="value").head()
    >>> adata.uns["scmech"]["error_decomposition"]["variance_summary"]
    """
    _check_arguments(
        adata,
        target=target,
        n_bootstrap=n_bootstrap,
        n_splits=n_splits,
        min_cells=min_cells,
        key_added=key_added,
        batch_key=batch_key,
        random_state=random_state,
    )
    labelling = {
        "perturbation_key": perturbation_key,
        "control_label": control_label,
        "separator": separator,
        "unassigned_label": unassigned_label,
    }
    check_unique_names(adata.var_names, "adata.var_names", "adata.var_names_make_unique()")
    all_genes = pd.Index(adata.var_names).astype(str)
    genes, frame, data = all_genes, None, adata
    if predictions is not None:
        frame, conditions, genes = _prediction_inputs(
            adata, predictions, all_genes, conditions, **labelling, data_max=log_data_max(adata, layer, counts)
        )
        data = _in_context(adata, predictions, media_key=media_key, time_key=time_key, media_time_key=media_time_key)
    disp = _dispersion(dispersion, genes, all_genes)
    override = _variance_override(variance, genes)
    s = _setup(
        data,
        **labelling,
        batch_key=batch_key,
        layer=layer,
        counts=counts,
        conditions=conditions,
        min_cells=min_cells,
        genes=genes,
    )
    pred, pred_ctrl = _prediction_arrays(frame, s.layout, genes)
    est = _estimate(
        s,
        disp=disp,
        override=override,
        target=target,
        pred=pred,
        pred_ctrl=pred_ctrl,
        counts=counts,
        n_splits=n_splits,
        n_bootstrap=n_bootstrap,
        random_state=random_state,
    )

    # design facts and messages
    n = s.layout.grid(est.st.n)
    confounded = _confounded(n)
    notes, to_warn = _design_notes(
        s, est.var, est.values, override, confounded, batch_key=batch_key, min_cells=min_cells, target=target
    )
    for text in to_warn:
        _warn(text)

    params = _params(
        s,
        est.var,
        n[0],
        notes,
        perturbation_key=perturbation_key,
        batch_key=batch_key,
        layer=layer,
        counts=counts,
        target=target,
        predictions=predictions is not None,
        dispersion="nb" if disp is not None else "poisson",
        variance_given=sorted(override),
        n_splits=n_splits,
        n_bootstrap=n_bootstrap,
        min_cells=min_cells,
        random_state=random_state,
    )
    table = _tidy_table(est, n, confounded, s.layout.conditions[1:])
    adata = adata.copy() if copy else adata
    scmech_uns(adata)[key_added] = {
        "table": table,
        **_gene_tables(est, genes),
        "params": params,
    }
    return adata if copy else table
