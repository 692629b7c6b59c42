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
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import pandas as pd
from scipy.stats import norm

from scmech._constants import SCMECH_ADATA_KEYS

from ._errors import VAR_MEAN_THRESHOLD, estimate_variance

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from anndata import AnnData

logger = logging.getLogger(__name__)

__all__ = ["BatchDesign", "minimal_detectable_effect", "power", "recommend_batches", "resolve_variance"]

#: bounds of the default (square-root rule) control fraction
_CONTROL_FRACTION_BOUNDS = (0.05, 0.5)
#: per-perturbation columns of ``BatchDesign.expected_error`` (then the same with prefix ``naive_``)
_ERROR_COLUMNS = ("n_cells", "n_controls", "n_batches", "noise_factor", "batch_factor", "expected_error", "mde")
#: controls per batch (and time point / medium) the design never goes below: two cells make a variance
_MIN_CONTROLS_PER_ROW = 2


# ------------------------------------------------------------------------------------------------------------
# variance terms
# ------------------------------------------------------------------------------------------------------------


def resolve_variance(
    pilot_or_variance: AnnData | Mapping[str, Any] | pd.DataFrame | None,
    *,
    pilot_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    r"""Variance terms for design calculations from a pilot, a per-gene table or scalars.

    Parameters
    ----------
    pilot_or_variance
        - an AnnData pilot: the ``"variance"`` of an :func:`~scmech.tl._errors.error_decomposition` stored in
          ``uns["scmech"]["error_decomposition"]`` when present, else
          :func:`~scmech.tl._errors.estimate_variance` with ``pilot_kwargs`` (which must name the
          ``batch_key``);
        - a DataFrame (genes x ``batch``, ``cell``, optionally ``bio``, ``meas``, ``mean``), e.g. that
          ``"variance"`` entry;
        - a dict of scalars: ``batch`` and either ``cell`` or ``bio`` and ``meas``; optionally ``depth`` (the
          pilot's reads, or UMIs, per cell) and ``per_gene`` (a per-gene table), e.g. the output of this function.
    pilot_kwargs
        Keyword arguments of :func:`~scmech.tl._errors.estimate_variance` for an AnnData pilot.

    Returns
    -------
    Dict with scalars ``batch``, ``cell``, ``bio``, ``meas`` (NaN where unknown; means over genes with a
    control mean of at least 1 count per :math:`10^4` when the table has a ``mean`` column), ``depth``
    (mean library size of the pilot's controls, or ``None``) and ``per_gene`` (the table, or ``None``).
    """
    per_gene = None
    depth = None
    if isinstance(pilot_or_variance, ad.AnnData):
        stored = pilot_or_variance.uns.get(SCMECH_ADATA_KEYS.UNS, {}).get("error_decomposition")
        kwargs = dict(pilot_kwargs or {})
        if stored is not None and not kwargs:
            per_gene = stored["variance"]
        else:
            if "batch_key" not in kwargs:
                msg = (
                    "A pilot AnnData needs pilot_kwargs={'batch_key': ...} (and perturbation_key/control_label if "
                    "they differ from the defaults), or run error_decomposition on it first."
                )
                raise KeyError(msg)
            per_gene = estimate_variance(pilot_or_variance, **kwargs)
            depth = per_gene.attrs.get("mean_library_size")
        if depth is None:
            from scmech.data._pseudobulk import _get_matrix, library_size

            x = _get_matrix(pilot_or_variance, kwargs.get("layer"))
            depth = float(library_size(x).mean()) if kwargs.get("counts", True) else None
    elif isinstance(pilot_or_variance, pd.DataFrame):
        per_gene = pilot_or_variance
        depth = per_gene.attrs.get("mean_library_size")
    elif pilot_or_variance is not None and hasattr(pilot_or_variance, "items"):
        d = {str(k): v for k, v in pilot_or_variance.items()}
        unknown = sorted(set(d) - {"batch", "cell", "bio", "meas", "depth", "per_gene"})
        if unknown:
            msg = f"variance has unknown entries {unknown}; use 'batch', 'cell' (or 'bio' and 'meas') and 'depth'."
            raise KeyError(msg)
        out = {k: float(d[k]) if k in d and d[k] is not None else np.nan for k in ("batch", "cell", "bio", "meas")}
        if np.isnan(out["cell"]) and not (np.isnan(out["bio"]) or np.isnan(out["meas"])):
            out["cell"] = out["bio"] + out["meas"]
        if np.isnan(out["cell"]):
            msg = "variance needs 'cell' (sigma2_bio + sigma2_meas) or both 'bio' and 'meas'."
            raise KeyError(msg)
        if any(v < 0 for v in out.values() if not np.isnan(v)):
            msg = f"variance terms must be >= 0, got {out}."
            raise ValueError(msg)
        out["depth"] = float(d["depth"]) if d.get("depth") is not None else None
        per = d.get("per_gene")
        out["per_gene"] = per if isinstance(per, pd.DataFrame) else None
        return out
    else:
        msg = (
            "Pass a pilot AnnData, a per-gene variance DataFrame (error_decomposition's 'variance') or a dict "
            f"{{'batch': ..., 'cell': ...}}; got {type(pilot_or_variance).__name__}."
        )
        raise TypeError(msg)
    if "cell" not in per_gene.columns:
        msg = f"The variance table needs a 'cell' column (columns: {list(per_gene.columns)})."
        raise KeyError(msg)
    sel = np.ones(len(per_gene), dtype=bool)
    if "mean" in per_gene.columns:
        sel = per_gene["mean"].to_numpy(dtype=float) >= VAR_MEAN_THRESHOLD
        if not sel.any():
            sel = np.ones(len(per_gene), dtype=bool)
    out = {
        k: float(per_gene.loc[sel, k].mean()) if k in per_gene.columns else np.nan
        for k in ("batch", "cell", "bio", "meas")
    }
    out["depth"] = depth
    out["per_gene"] = per_gene
    return out


def _z(alpha: float, power: float) -> float:
    if not 0 < alpha < 1 or not 0 < power < 1:
        msg = f"alpha ({alpha}) and power ({power}) must lie in (0, 1)."
        raise ValueError(msg)
    return float(norm.ppf(1 - alpha / 2) + norm.ppf(power))


def minimal_detectable_effect(
    sigma2_cell: float | np.ndarray,
    n_cells: float | np.ndarray,
    n_controls: float | np.ndarray,
    *,
    sigma2_batch: float | np.ndarray = 0.0,
    batch_factor: float | np.ndarray = 0.0,
    alpha: float = 0.05,
    power: float = 0.8,
) -> np.ndarray:
    r"""Minimal detectable effect of a two-sided :math:`z` test on the pseudobulk scale.

    .. math:: \mathrm{MDE} = (z_{1-\alpha/2} + z_{\mathrm{power}})
        \sqrt{\sigma^2_{\mathrm{cell}}(1/n_p + 1/n_\varnothing) + \sigma^2_{\mathrm{batch}}\,F},

    with :math:`F = \sum_b (w_b - u_b)^2` the batch-composition mismatch (``batch_factor``: 0 when the
    perturbation and the controls share their batches in the same proportions, 2 for a perturbation alone
    in a batch without controls).

    Parameters
    ----------
    sigma2_cell
        Per-cell variance :math:`\sigma^2_{\mathrm{bio}}+\sigma^2_{\mathrm{meas}}`.
    n_cells
        Cells of the perturbation.
    n_controls
        Control cells.
    sigma2_batch
        Batch variance.
    batch_factor
        :math:`\sum_b (w_b - u_b)^2`.
    alpha
        Test level.
    power
        Power.

    Returns
    -------
    The MDE (broadcast over the inputs).

    Examples
    --------
    >>> float(minimal_detectable_effect(1.0, 400, 400).round(3))
    0.198
    """
    z = _z(alpha, power)
    n_cells = np.asarray(n_cells, dtype=float)
    n_controls = np.asarray(n_controls, dtype=float)
    var = np.asarray(sigma2_cell) * (1 / n_cells + 1 / n_controls) + np.asarray(sigma2_batch) * np.asarray(batch_factor)
    return z * np.sqrt(var)


# ------------------------------------------------------------------------------------------------------------
# batching
# ------------------------------------------------------------------------------------------------------------


@dataclass
class BatchDesign:
    r"""A recommended assignment of cells to batches (and time points / media).

    Attributes
    ----------
    table
        Cell counts: rows batches (a MultiIndex batch x time x medium when time points or media are given),
        columns the control label and the perturbations.
    expected_error
        One row per perturbation (and time point / medium): ``n_cells``, ``n_controls``, ``n_batches``,
        ``noise_factor`` :math:`1/n_p + 1/n_\varnothing`, ``batch_factor`` :math:`\sum_b(w_b-u_b)^2`,
        ``expected_error`` :math:`\sigma^2_{\mathrm{cell}}\cdot` noise_factor :math:`+
        \sigma^2_{\mathrm{batch}}\cdot` batch_factor, ``mde``, and the same for the naive design (prefix
        ``naive_``).
    cells_per_perturbation
        Total cells per perturbation (over batches, time points and media).
    notes
        How the design was sized, and anything the user should know.
    naive_table
        The naive reference design with the same cells: perturbations round robin over batches (one batch
        each), all controls in the first batch.
    n_controls
        Control cells per time point / medium.
    control_fraction
        Share of controls.
    variance
        The variance terms used (``batch``, ``cell``; unit values when none were given).
    params
        The arguments.
    """

    table: pd.DataFrame
    expected_error: pd.DataFrame
    cells_per_perturbation: pd.Series
    notes: list[str] = field(default_factory=list)
    naive_table: pd.DataFrame | None = None
    n_controls: int = 0
    control_fraction: float = 0.0
    variance: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        rows, cols = self.table.shape
        err = self.expected_error
        return (
            f"BatchDesign({cols - 1} perturbations, {rows} batch rows, {int(self.table.to_numpy().sum())} cells; "
            f"mean expected error {err['expected_error'].mean():.3g} vs naive {err['naive_expected_error'].mean():.3g})"
        )


def _perturbation_labels(perturbations: Sequence[str] | int, control_label: str) -> list[str]:
    if isinstance(perturbations, int | np.integer):
        if perturbations < 1:
            msg = f"perturbations must be >= 1 (or a list of labels), got {perturbations}."
            raise ValueError(msg)
        width = len(str(int(perturbations) - 1))
        return [f"P{i:0{width}d}" for i in range(int(perturbations))]
    labels = [str(p) for p in ([perturbations] if isinstance(perturbations, str) else perturbations)]
    if not labels:
        msg = "perturbations is empty; pass the labels of the perturbations to screen (or their number)."
        raise ValueError(msg)
    dup = sorted({p for p in labels if labels.count(p) > 1})
    if dup:
        msg = f"perturbations lists {dup[:5]} more than once."
        raise ValueError(msg)
    if control_label in labels:
        msg = f"perturbations contains the control label {control_label!r}; controls are added by the design."
        raise ValueError(msg)
    return labels


def _contexts(time_points, media) -> tuple[list[tuple], list[str]]:
    levels, names = [], []
    if time_points is not None:
        tp = list(time_points) if not isinstance(time_points, str | int | float) else [time_points]
        if not tp or len(set(tp)) != len(tp):
            msg = f"time_points must be a non-empty list of distinct time points, got {time_points!r}."
            raise ValueError(msg)
        levels.append(tp)
        names.append("time")
    if media is not None:
        md = [media] if isinstance(media, str) else [str(m) for m in media]
        if not md or len(set(md)) != len(md):
            msg = f"media must be a non-empty list of distinct media, got {media!r}."
            raise ValueError(msg)
        levels.append(md)
        names.append("medium")
    if not levels:
        return [()], []
    import itertools

    return list(itertools.product(*levels)), names


def _default_control_fraction(k: int) -> float:
    lo, hi = _CONTROL_FRACTION_BOUNDS
    return float(min(hi, max(lo, 1.0 / (1.0 + math.sqrt(k)))))


def _spread(n: int, k_max: int, loads: np.ndarray, order_key: np.ndarray) -> np.ndarray:
    """Split ``n`` cells over the ``k_max`` least-loaded batches as evenly as possible; update ``loads``."""
    B = loads.size
    k = min(B, k_max, n)
    out = np.zeros(B, dtype=np.int64)
    if n <= 0:
        return out
    if k == B:
        out[:] = n // B
        rem = n - out.sum()
        pick = np.lexsort((order_key, loads + out))[:rem]
        out[pick] += 1
    else:
        pick = np.lexsort((order_key, loads))[:k]
        out[pick] = n // k
        rem = n - out.sum()
        sub = pick[np.lexsort((order_key[pick], (loads + out)[pick]))[:rem]]
        out[sub] += 1
    loads += out
    return out


def _allocate(
    labels: list[str], control_label: str, n_p: int, n_c: int, B: int, n_ctx: int, rng: np.random.Generator
) -> np.ndarray:
    """Allocate cells (contexts, batches, 1 + K): controls evenly in every batch, perturbations over all."""
    K = len(labels)
    counts = np.zeros((n_ctx, B, K + 1), dtype=np.int64)
    loads = np.zeros(B, dtype=np.int64)
    tie = np.arange(B)
    for s in range(n_ctx):
        counts[s, :, 0] = _spread(n_c, B, loads, tie)
        for j in rng.permutation(K):
            counts[s, :, j + 1] = _spread(n_p, B, loads, tie)
    return counts


def _naive(K: int, n_p: int, n_c: int, B: int, n_ctx: int) -> np.ndarray:
    counts = np.zeros((n_ctx, B, K + 1), dtype=np.int64)
    counts[:, 0, 0] = n_c
    for j in range(K):
        counts[:, j % B, j + 1] = n_p
    return counts


def _errors(counts: np.ndarray, var: dict[str, float], z: float) -> dict[str, np.ndarray]:
    """Per (context, perturbation): cells, controls, batches, noise and batch factors, expected error, MDE."""
    n = counts.sum(axis=1).astype(float)  # (ctx, 1 + K)
    with np.errstate(invalid="ignore", divide="ignore"):
        w = counts / n[:, None, :]
    u = w[:, :, :1]
    batch_factor = ((w[:, :, 1:] - u) ** 2).sum(axis=1)
    batch_factor[batch_factor < 1e-15] = 0.0
    noise = 1.0 / n[:, 1:] + 1.0 / n[:, :1]
    expected = var["cell"] * noise + var["batch"] * batch_factor
    return {
        "n_cells": n[:, 1:],
        "n_controls": np.broadcast_to(n[:, :1], n[:, 1:].shape),
        "n_batches": (counts[:, :, 1:] > 0).sum(axis=1),
        "noise_factor": noise,
        "batch_factor": batch_factor,
        "expected_error": expected,
        "mde": z * np.sqrt(expected),
    }


def _min_batches(feasible, start: int, limit: int = 100_000) -> int | None:
    b = max(1, start)
    while b <= limit:
        if feasible(b):
            return b
        b = b + 1 if b < 64 else int(b * 1.05) + 1
    return None


def recommend_batches(
    perturbations: Sequence[str] | int,
    n_batches: int,
    cells_per_batch: int,
    *,
    control_fraction: float | None = None,
    min_batches_per_perturbation: int = 2,
    target_effect: float | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
    pilot: AnnData | None = None,
    variance: Mapping[str, Any] | pd.DataFrame | None = None,
    time_points: Sequence[float] | None = None,
    media: Sequence[str] | None = None,
    control_label: str = "NT",
    pilot_kwargs: Mapping[str, Any] | None = None,
    random_state: int = 0,
) -> BatchDesign:
    r"""Recommend how many cells of each perturbation and control go into each batch.

    The design follows FRAMEWORK §6:

    1. **Controls in every batch** (and at every time point and in every medium), so that each effect has a
       same-batch reference.
    2. **Every perturbation spread over the batches** in the proportions of the controls (over all batches
       when it has enough cells, never fewer than ``min_batches_per_perturbation``): then
       :math:`w = u` and the batch term :math:`\sigma^2_{\mathrm{batch}}\sum_b(w_b-u_b)^2` of the error
       vanishes (up to rounding).
    3. **Balanced load**: cells are placed greedily into the least-loaded batch; no batch exceeds
       ``cells_per_batch``.
    4. **Controls' share**: for :math:`K` perturbations compared with one control group, the sum of the noise
       floors :math:`\sum_p\sigma^2(1/n_p + 1/n_\varnothing)` at a fixed total
       :math:`Kn_p + n_\varnothing` is smallest at :math:`n_\varnothing = \sqrt K\, n_p` (the classical
       many-to-one optimum), i.e. a control fraction :math:`1/(1+\sqrt K)`; the default uses it, bounded to
       [5 %, 50 %] so that every batch keeps enough controls to measure its batch effect.
    5. **Sizing**: without ``target_effect`` the capacity ``n_batches * cells_per_batch`` is filled. With it,
       the cells per perturbation (per time point / medium) are the fewest that detect ``target_effect`` with a
       two-sided :math:`z` test,

       .. math:: n_p = \Big\lceil (z_{1-\alpha/2}+z_{\mathrm{power}})^2\,
           \sigma^2_{\mathrm{cell}}\,(1 + 1/r) / \delta^2 \Big\rceil,\qquad n_\varnothing = \lceil r\,n_p\rceil,

       with :math:`r = n_\varnothing/n_p` from the control fraction and :math:`\sigma^2_{\mathrm{cell}}` the
       mean over expressed genes from ``pilot`` or ``variance``.

    The expected squared error of every effect is computed for this design and for the naive design with
    the same cells (one batch per perturbation, round robin; all controls in the first batch), where a
    perturbation outside the control batch pays :math:`2\sigma^2_{\mathrm{batch}}`.

    Parameters
    ----------
    perturbations
        Labels of the perturbations, or their number (labels ``P0``, ``P1``, ...).
    n_batches
        Number of batches (lanes, replicates).
    cells_per_batch
        Capacity of a batch (cells after quality control).
    control_fraction
        Share of control cells; the square-root rule when ``None``.
    min_batches_per_perturbation
        Each perturbation goes into at least this many batches.
    target_effect
        Smallest effect (pseudobulk scale, about a natural-log fold change) to detect; needs variance terms.
    alpha
        Level of the two-sided test.
    power
        Power at ``target_effect``.
    pilot
        Pilot screen (AnnData with counts) for the variance terms, see
        :func:`~scmech.tl._design.resolve_variance` (pass ``pilot_kwargs={"batch_key": ...}``).
    variance
        Variance terms instead of a pilot: ``{"batch": ..., "cell": ...}`` or error_decomposition's
        ``"variance"`` table.
    time_points
        Time points; controls and every perturbation are placed at each (rows batch x time).
    media
        Media, like ``time_points``.
    control_label
        Column name of the controls.
    pilot_kwargs
        Keyword arguments of :func:`~scmech.tl._errors.estimate_variance` for ``pilot``.
    random_state
        Seed of the order in which perturbations are placed (ties of the load balancing).

    Returns
    -------
    The :class:`BatchDesign`.

    Raises
    ------
    ValueError
        When no design meets the constraints, naming the constraint and what would fix it.

    Examples
    --------
    >>> design = recommend_batches(25, n_batches=4, cells_per_batch=5000)
    >>> design.table.sum(axis=1).max() <= 5000
    True
    >>> design = recommend_batches(
    ...     25, 4, 5000, target_effect=0.2, variance={"batch": 0.02, "cell": 7.4}
    ... )
    >>> design.expected_error[["mde", "naive_mde"]].mean()
    """
    labels = _perturbation_labels(perturbations, control_label)
    K = len(labels)
    for name, value in (("n_batches", n_batches), ("cells_per_batch", cells_per_batch)):
        if int(value) != value or value < 1:
            msg = f"{name} must be a positive integer, got {value!r}."
            raise ValueError(msg)
    B, C = int(n_batches), int(cells_per_batch)
    m = int(min_batches_per_perturbation)
    if m < 1:
        msg = f"min_batches_per_perturbation must be >= 1, got {min_batches_per_perturbation}."
        raise ValueError(msg)
    if m > B:
        msg = (
            f"min_batches_per_perturbation={m} exceeds n_batches={B}: use at least {m} batches or lower "
            "min_batches_per_perturbation."
        )
        raise ValueError(msg)
    if control_fraction is not None and not 0 < control_fraction < 1:
        msg = f"control_fraction must lie in (0, 1), got {control_fraction}."
        raise ValueError(msg)
    if target_effect is not None and not target_effect > 0:
        msg = f"target_effect must be > 0, got {target_effect}."
        raise ValueError(msg)
    z = _z(alpha, power)
    contexts, ctx_names = _contexts(time_points, media)
    S = len(contexts)
    notes: list[str] = []
    if pilot is not None and variance is not None:
        msg = "Pass either pilot or variance, not both."
        raise ValueError(msg)
    source = pilot if pilot is not None else variance
    var_known = source is not None
    var = resolve_variance(source, pilot_kwargs=pilot_kwargs) if var_known else {"batch": 1.0, "cell": 1.0}
    if var_known and np.isnan(var["batch"]):
        notes.append("sigma2_batch unknown (NaN): the batch terms are not evaluated.")
    if not var_known:
        notes.append(
            "No variance terms given: expected errors use sigma2_cell = sigma2_batch = 1 (relative units) and MDEs "
            "are not computed. Pass pilot= or variance= for absolute values."
        )
    f = _default_control_fraction(K) if control_fraction is None else float(control_fraction)
    ratio = f * K / (1 - f)  # n_controls / n_per_perturbation
    rule = "square-root rule" if control_fraction is None else "given"
    min_ctrl = _MIN_CONTROLS_PER_ROW * B

    if target_effect is not None:
        if not var_known or np.isnan(var["cell"]):
            msg = (
                "target_effect needs the variance terms: pass pilot= (a pilot AnnData) or "
                "variance={'batch': ..., 'cell': ...}."
            )
            raise ValueError(msg)
        n_p = max(m, math.ceil(z**2 * var["cell"] * (1 + 1 / ratio) / target_effect**2))
        n_c = max(min_ctrl, math.ceil(ratio * n_p))
        total = S * (K * n_p + n_c)
        if total > B * C:

            def feasible(b: int) -> bool:
                return S * (K * n_p + max(_MIN_CONTROLS_PER_ROW * b, math.ceil(ratio * n_p))) <= b * C

            b_need = _min_batches(feasible, B)
            alt = f" or >= {b_need:,} batches of {C:,} cells" if b_need is not None else ""
            msg = (
                f"target_effect={target_effect:g} (alpha={alpha:g}, power={power:g}, sigma2_cell={var['cell']:.3g}) "
                f"needs {n_p:,} cells per perturbation and {n_c:,} controls per time point/medium, {total:,} cells in "
                f"all, but {B} batches hold {B * C:,}: needs >= {math.ceil(total / B):,} cells per batch{alt} (or a "
                "larger target_effect, fewer perturbations)."
            )
            raise ValueError(msg)
        notes.append(
            f"Sized for target_effect={target_effect:g}: {n_p} cells per perturbation and {n_c} controls per time "
            f"point/medium ({total:,} of {B * C:,} cells of capacity)."
        )
    else:
        per_ctx = (B * C) // S
        n_c = max(min_ctrl, int(round(f * per_ctx)))
        n_p = (per_ctx - n_c) // K
        if n_p < m:

            def feasible(b: int) -> bool:
                cap = (b * C) // S
                nc = max(_MIN_CONTROLS_PER_ROW * b, int(round(f * cap)))
                return (cap - nc) // K >= m

            need_c = math.ceil(S * (K * m / (1 - f) + 0) / B)
            need_c = max(need_c, math.ceil(S * (K * m + min_ctrl) / B))
            b_need = _min_batches(feasible, B)
            alt = f" or >= {b_need:,} batches" if b_need is not None else ""
            msg = (
                f"{B} batches of {C:,} cells cannot hold {K} perturbations in >= {m} batches each"
                f"{' at ' + str(S) + ' time points/media' if S > 1 else ''} plus controls in every batch "
                f"(control fraction {f:.2f}): needs >= {need_c:,} cells per batch{alt}, or fewer perturbations."
            )
            raise ValueError(msg)
    rng = np.random.default_rng(random_state)
    counts = _allocate(labels, control_label, n_p, n_c, B, S, rng)
    loads = counts.sum(axis=(0, 2))
    if loads.max() > C:  # cannot happen with the greedy balancing, but never return an infeasible design
        msg = f"Internal error: a batch holds {loads.max()} > cells_per_batch={C} cells."
        raise RuntimeError(msg)
    if n_p < B:
        notes.append(
            f"{n_p} cells per perturbation are fewer than the {B} batches: each perturbation sits in {n_p} batches "
            "(1 cell each), so a small batch term remains."
        )
    naive = _naive(K, n_p, n_c, B, S)
    naive_load = naive.sum(axis=(0, 2)).max()
    if naive_load > C:
        notes.append(
            f"The naive reference design (controls all in the first batch) would overfill it ({naive_load:,} > "
            f"{C:,} cells); it is shown for comparison of errors only."
        )
    var_used = {
        "batch": float(var["batch"]) if not np.isnan(var["batch"]) else 0.0,
        "cell": float(var["cell"]),
    }
    rec = _errors(counts, var_used, z)
    nai = _errors(naive, var_used, z)
    # tables
    batches = [f"batch{i}" for i in range(B)]
    if ctx_names:
        rows = [(b, *ctx) for b in batches for ctx in contexts]
        index = pd.MultiIndex.from_tuples(rows, names=["batch", *ctx_names])
        reorder = lambda c: c.transpose(1, 0, 2).reshape(B * S, K + 1)
    else:
        index = pd.Index(batches, name="batch")
        reorder = lambda c: c[0]
    columns = pd.Index([control_label, *labels], name="condition")
    table = pd.DataFrame(reorder(counts), index=index, columns=columns)
    naive_table = pd.DataFrame(reorder(naive), index=index, columns=columns)
    records = []
    for s, ctx in enumerate(contexts):
        for j, p in enumerate(labels):
            row: dict[str, Any] = {"perturbation": p}
            row.update(dict(zip(ctx_names, ctx, strict=True)))
            for src, prefix in ((rec, ""), (nai, "naive_")):
                for key in _ERROR_COLUMNS:
                    row[f"{prefix}{key}"] = src[key][s, j]
            records.append(row)
    expected = pd.DataFrame.from_records(records)
    for key in ("n_cells", "n_controls", "n_batches", "naive_n_cells", "naive_n_controls", "naive_n_batches"):
        expected[key] = expected[key].astype(np.int64)
    if not var_known:
        expected[["mde", "naive_mde"]] = np.nan
    lo_b, hi_b = int(rec["n_batches"].min()), int(rec["n_batches"].max())
    spread = str(lo_b) if lo_b == hi_b else f"{lo_b}-{hi_b}"
    notes.insert(
        0,
        f"Control fraction {f:.3f} ({rule}; n_controls = {n_c / n_p:.2f} x cells per perturbation, sqrt(K) = "
        f"{math.sqrt(K):.2f}). Controls in all {B} batches"
        f"{' and at every ' + '/'.join(ctx_names) if ctx_names else ''}; each perturbation in {spread} batches; max "
        f"load {int(loads.max()):,} of {C:,} cells.",
    )
    cells_pp = pd.Series(table[labels].sum(axis=0).to_numpy(), index=pd.Index(labels, name="perturbation"))
    params = {
        "n_batches": B,
        "cells_per_batch": C,
        "control_fraction": control_fraction,
        "min_batches_per_perturbation": m,
        "target_effect": target_effect,
        "alpha": alpha,
        "power": power,
        "time_points": list(time_points) if time_points is not None else None,
        "media": list(media) if media is not None else None,
        "control_label": control_label,
        "random_state": random_state,
        "variance_source": "pilot" if pilot is not None else ("variance" if variance is not None else "unit"),
    }
    return BatchDesign(
        table=table,
        expected_error=expected,
        cells_per_perturbation=cells_pp.rename("n_cells"),
        notes=notes,
        naive_table=naive_table,
        n_controls=int(n_c),
        control_fraction=float(table[control_label].sum() / table.to_numpy().sum()),
        variance=var_used,
        params=params,
    )


# ------------------------------------------------------------------------------------------------------------
# power and sequencing budget
# ------------------------------------------------------------------------------------------------------------


def _as_array(values, name: str, *, integer: bool = False) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(values, dtype=float))
    if arr.ndim != 1 or not np.isfinite(arr).all() or (arr <= 0).any():
        msg = f"{name} must be a positive number or a 1-d sequence of positive numbers, got {values!r}."
        raise ValueError(msg)
    return np.round(arr) if integer else arr


def power(
    pilot_or_variance: AnnData | Mapping[str, Any] | pd.DataFrame,
    *,
    n_cells: float | Sequence[float] | None = None,
    effect: float | Sequence[float] | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
    design: BatchDesign | None = None,
    n_controls: float | None = None,
    n_perturbations: int | None = None,
    batch_factor: float = 0.0,
    reads_per_cell: float | Sequence[float] | None = None,
    budget_reads: float | None = None,
    cell_cost_reads: float = 0.0,
    pilot_depth: float | None = None,
    per_gene: bool = False,
    pilot_kwargs: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    r"""Minimal detectable effects, cells needed, and the cells-versus-depth trade-off of a sequencing budget.

    All on the pseudobulk scale with the variance model of the module docstring; the variance terms come from a
    pilot (AnnData), error_decomposition's per-gene ``"variance"`` table, or scalars (see
    :func:`~scmech.tl._design.resolve_variance`). Scalars are means over expressed genes; ``per_gene=True``
    uses every gene's own terms.

    **Modes** (by the arguments given):

    - ``n_cells`` (one or several): the MDE for each, :math:`(z_{1-\alpha/2}+z_{\mathrm{power}})\sqrt V` with
      :math:`V = \sigma^2_{\mathrm{cell}}(1/n + 1/n_\varnothing) + \sigma^2_{\mathrm{batch}}F`. With ``effect``
      too: the power :math:`\Phi(|\delta|/\sqrt V - z_{1-\alpha/2})` instead.
    - ``effect`` alone: the cells per perturbation needed,
      :math:`n = z^2\sigma^2_{\mathrm{cell}}(1 + 1/r)/(\delta^2 - z^2\sigma^2_{\mathrm{batch}}F)` (infinite when
      the batch term alone exceeds the effect), with :math:`r = n_\varnothing/n`.
    - ``design``: the MDE of every perturbation of a :class:`BatchDesign` (its own batch factors), beside the
      naive design's.
    - ``budget_reads``: the sequencing trade-off. A budget of :math:`R` reads buys
      :math:`n = R/(r + c)` cells at :math:`r` reads per cell (``cell_cost_reads`` :math:`c` counts the cost of
      capturing a cell in reads; 0 for a pure read budget). Measurement variance falls with depth,
      :math:`\sigma^2_{\mathrm{meas}}(r) = \sigma^2_{\mathrm{meas}}\,r_0/r` from the pilot's depth :math:`r_0`,
      biological variance does not, so the noise floor of one perturbation's effect
      (:math:`K` = ``n_perturbations`` perturbations sharing the cells with :math:`\sqrt K` controls' share) is

      .. math:: E(r) = \big(\sigma^2_{\mathrm{bio}} + \sigma^2_{\mathrm{meas}} r_0/r\big)\,
          \frac{(r + c)\,(K + \sqrt K)(1 + 1/\sqrt K)}{R},

      minimised at :math:`r^\star = \sqrt{c\,r_0\,\sigma^2_{\mathrm{meas}}/\sigma^2_{\mathrm{bio}}}`: deeper
      when measurement noise dominates, shallower (more cells) when biological variance does. With
      :math:`c = 0` the error grows with :math:`r` and the shallowest depth of the grid is best (the least
      depth at which cells and guides can still be called).

    Parameters
    ----------
    pilot_or_variance
        Pilot AnnData, per-gene variance table or dict of scalars (``batch``, ``cell`` or ``bio`` + ``meas``,
        ``depth``).
    n_cells
        Cells per perturbation.
    effect
        Effect size(s) on the pseudobulk scale.
    alpha
        Level of the two-sided test.
    power
        Power for MDEs and cells needed.
    design
        A :class:`BatchDesign`: MDE per perturbation.
    n_controls
        Control cells; ``sqrt(n_perturbations) * n_cells`` when ``n_perturbations`` is given, else ``n_cells``.
    n_perturbations
        Perturbations sharing the controls (and the budget).
    batch_factor
        :math:`F=\sum_b(w_b-u_b)^2` of the comparison (0: perturbation and controls share batches evenly).
    reads_per_cell
        Budget mode: the depths to evaluate; 61 log-spaced values from :math:`r_0/50` to :math:`50 r_0` when
        ``None``.
    budget_reads
        Budget mode: total reads (read equivalents with ``cell_cost_reads``).
    cell_cost_reads
        Budget mode: cost of one cell in reads.
    pilot_depth
        Reads (or UMIs) per cell of the pilot, :math:`r_0`; the pilot's mean library size when ``None``.
    per_gene
        One row per gene (and ``n_cells``/``effect``) with each gene's variance terms.
    pilot_kwargs
        Keyword arguments of :func:`~scmech.tl._errors.estimate_variance` for a pilot AnnData.

    Returns
    -------
    A DataFrame. ``n_cells`` mode: ``n_cells``, ``n_controls``, ``se``, ``mde`` (and ``effect``, ``power``);
    ``effect`` mode: ``effect``, ``n_cells``, ``n_controls``; ``design`` mode: ``perturbation``, ``n_cells``,
    ``n_controls``, ``batch_factor``, ``se``, ``mde``, ``naive_mde``; budget mode: ``reads_per_cell``,
    ``n_cells``, ``sigma2_cell``, ``expected_error``, ``mde``, ``optimal``, with
    ``attrs["optimum"]`` = ``{"reads_per_cell", "n_cells", "expected_error"}`` (analytic, :math:`c>0`) and
    ``attrs["grid_optimum"]``. ``per_gene=True`` adds a ``gene`` column.

    Examples
    --------
    >>> var = {"batch": 0.02, "bio": 1.4, "meas": 6.2, "depth": 200}
    >>> power(var, n_cells=[100, 400, 1600])
    >>> power(var, effect=0.2)
    >>> curve = power(var, budget_reads=2e7, cell_cost_reads=200, n_perturbations=25)
    >>> curve.attrs["optimum"]
    """
    var = resolve_variance(pilot_or_variance, pilot_kwargs=pilot_kwargs)
    z = _z(alpha, power)
    z_a = float(norm.ppf(1 - alpha / 2))
    if batch_factor < 0:
        msg = f"batch_factor must be >= 0, got {batch_factor}."
        raise ValueError(msg)
    sb = 0.0 if np.isnan(var["batch"]) else var["batch"]
    if per_gene:
        pg = var["per_gene"]
        if pg is None:
            msg = "per_gene=True needs per-gene variance terms: pass a pilot AnnData or a per-gene variance table."
            raise ValueError(msg)
        genes = pg.index.astype(str)
        cell = pg["cell"].to_numpy(dtype=float)
        batch = pg["batch"].to_numpy(dtype=float) if "batch" in pg.columns else np.zeros(len(pg))
        batch = np.nan_to_num(batch)
    else:
        genes = None
        cell = np.array([var["cell"]])
        batch = np.array([sb])

    def controls_for(n: np.ndarray) -> np.ndarray:
        if n_controls is not None:
            return np.full_like(n, float(n_controls))
        if n_perturbations is not None:
            return math.sqrt(n_perturbations) * n
        return n

    def frame(rows: dict[str, np.ndarray], n_rows: int) -> pd.DataFrame:
        out = pd.DataFrame(rows)
        if genes is not None:
            out.insert(0, "gene", np.tile(genes.to_numpy(), n_rows))
        return out

    if budget_reads is not None:
        return _budget(
            var,
            budget_reads=budget_reads,
            cell_cost_reads=cell_cost_reads,
            reads_per_cell=reads_per_cell,
            pilot_depth=pilot_depth,
            n_perturbations=n_perturbations,
            z=z,
        )
    if design is not None:
        ee = design.expected_error
        n_p = ee["n_cells"].to_numpy(dtype=float)
        n_c = ee["n_controls"].to_numpy(dtype=float)
        se = np.sqrt(var["cell"] * (1 / n_p + 1 / n_c) + sb * ee["batch_factor"].to_numpy())
        naive_se = np.sqrt(
            var["cell"] * (1 / ee["naive_n_cells"] + 1 / ee["naive_n_controls"]).to_numpy()
            + sb * ee["naive_batch_factor"].to_numpy()
        )
        keep = [c for c in ee.columns if c in ("perturbation", "time", "medium")]
        out = ee[keep].copy()
        out["n_cells"] = n_p.astype(np.int64)
        out["n_controls"] = n_c.astype(np.int64)
        out["batch_factor"] = ee["batch_factor"].to_numpy()
        out["se"] = se
        out["mde"] = z * se
        out["naive_mde"] = z * naive_se
        return out
    if n_cells is not None:
        n = _as_array(n_cells, "n_cells")
        nc = controls_for(n)
        # rows: n_cells (outer) x genes (inner)
        se = np.sqrt(cell[None, :] * (1 / n[:, None] + 1 / nc[:, None]) + batch[None, :] * batch_factor)
        rows: dict[str, np.ndarray] = {
            "n_cells": np.repeat(n, cell.size),
            "n_controls": np.repeat(nc, cell.size),
            "se": se.ravel(),
            "mde": (z * se).ravel(),
        }
        if effect is not None:
            eff = _as_array(effect, "effect")
            parts = []
            for e in eff:
                r = {k: v.copy() for k, v in rows.items()}
                r["effect"] = np.full(r["se"].size, e)
                r["power"] = norm.cdf(e / r["se"] - z_a) + norm.cdf(-e / r["se"] - z_a)
                parts.append(frame(r, n.size))
            return pd.concat(parts, ignore_index=True)
        return frame(rows, n.size)
    if effect is not None:
        eff = _as_array(effect, "effect")
        if n_controls is not None:
            # fixed controls: n from  z^2 (cell (1/n + 1/nc) + batch F) = e^2
            room = eff[:, None] ** 2 / z**2 - batch[None, :] * batch_factor - cell[None, :] / float(n_controls)
            with np.errstate(divide="ignore", invalid="ignore"):
                need = np.where(room > 0, cell[None, :] / room, np.inf)
            nc = np.full_like(need, float(n_controls))
        else:
            r = math.sqrt(n_perturbations) if n_perturbations is not None else 1.0
            room = eff[:, None] ** 2 / z**2 - batch[None, :] * batch_factor
            with np.errstate(divide="ignore", invalid="ignore"):
                need = np.where(room > 0, cell[None, :] * (1 + 1 / r) / room, np.inf)
            nc = need * r
        need = np.ceil(need)
        nc = np.ceil(nc)
        return frame({"effect": np.repeat(eff, cell.size), "n_cells": need.ravel(), "n_controls": nc.ravel()}, eff.size)
    msg = "Pass n_cells (MDE), effect (cells needed), design (MDE per perturbation) or budget_reads (depth trade-off)."
    raise ValueError(msg)


def _budget(
    var: dict[str, Any],
    *,
    budget_reads: float,
    cell_cost_reads: float,
    reads_per_cell,
    pilot_depth: float | None,
    n_perturbations: int | None,
    z: float,
) -> pd.DataFrame:
    if not budget_reads > 0:
        msg = f"budget_reads must be > 0, got {budget_reads}."
        raise ValueError(msg)
    if cell_cost_reads < 0:
        msg = f"cell_cost_reads must be >= 0, got {cell_cost_reads}."
        raise ValueError(msg)
    r0 = pilot_depth if pilot_depth is not None else var.get("depth")
    if r0 is None or not r0 > 0:
        msg = (
            "The budget trade-off needs the pilot's depth: pass pilot_depth= (reads or UMIs per cell of the pilot) or "
            "a pilot AnnData with counts, or 'depth' in the variance dict."
        )
        raise ValueError(msg)
    bio, meas = var.get("bio", np.nan), var.get("meas", np.nan)
    if np.isnan(bio) or np.isnan(meas):
        msg = (
            "The budget trade-off needs sigma2_bio and sigma2_meas separately: use a pilot with counts or pass "
            "{'bio': ..., 'meas': ...}."
        )
        raise ValueError(msg)
    grid = np.geomspace(r0 / 50, r0 * 50, 61) if reads_per_cell is None else _as_array(reads_per_cell, "reads_per_cell")
    grid = np.sort(grid)
    K = int(n_perturbations) if n_perturbations is not None else 1
    share = (K + math.sqrt(K)) * (1 + 1 / math.sqrt(K))  # n / n_p  *  (1 + n_p / n_controls)
    n = budget_reads / (grid + cell_cost_reads)
    sigma = bio + meas * r0 / grid
    err = sigma * share / n
    best = int(np.argmin(err))
    out = pd.DataFrame(
        {
            "reads_per_cell": grid,
            "n_cells": np.floor(n),
            "sigma2_cell": sigma,
            "expected_error": err,
            "mde": z * np.sqrt(err),
            "optimal": np.arange(grid.size) == best,
        }
    )
    grid_opt = {
        "reads_per_cell": float(grid[best]),
        "n_cells": float(np.floor(n[best])),
        "expected_error": float(err[best]),
        "at_edge": bool(best in (0, grid.size - 1)),
    }
    if cell_cost_reads > 0 and bio > 0:
        r_star = math.sqrt(cell_cost_reads * r0 * meas / bio)
        n_star = budget_reads / (r_star + cell_cost_reads)
        e_star = (bio + meas * r0 / r_star) * share / n_star
        optimum = {"reads_per_cell": r_star, "n_cells": n_star, "expected_error": e_star}
    else:
        optimum = dict(grid_opt)
    out.attrs["optimum"] = optimum
    out.attrs["grid_optimum"] = grid_opt
    out.attrs["model"] = {
        "bio": float(bio),
        "meas": float(meas),
        "pilot_depth": float(r0),
        "budget_reads": float(budget_reads),
        "cell_cost_reads": float(cell_cost_reads),
        "n_perturbations": K,
    }
    return out
