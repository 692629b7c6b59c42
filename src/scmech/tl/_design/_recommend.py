r"""Recommending a batch design: :func:`recommend_batches` and its steps after sizing.

The driver checks the arguments (``_inputs``), resolves the variance terms (``_variance``), sizes the
design (``_sizing``), places the cells (``_allocation``) and assembles the tables of the
:class:`~scmech.tl._design.BatchDesign` with the functions here.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from scmech.tl._seeds import check_seed

from ._allocation import _allocate, _expected_errors, _naive
from ._batch_design import BatchDesign
from ._inputs import _check_batch_arguments, _contexts, _levels, _perturbation_labels
from ._power import _z
from ._sizing import _default_control_fraction, _size_for_target, _size_to_capacity
from ._variance import _unknown_batch_message, resolve_variance

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from anndata import AnnData

#: per-perturbation columns of ``BatchDesign.expected_error`` (then the same with prefix ``naive_``)
_ERROR_COLUMNS = ("n_cells", "n_controls", "n_batches", "noise_factor", "batch_factor", "expected_error", "mde")


def _design_variance(
    pilot: AnnData | None,
    variance: Mapping[str, Any] | pd.DataFrame | None,
    pilot_kwargs: Mapping[str, Any] | None,
) -> tuple[dict[str, Any], bool, list[str]]:
    """Variance terms from ``pilot`` or ``variance`` (unit terms when neither), whether known, and notes."""
    if pilot is not None and variance is not None:
        msg = "Pass either pilot or variance, not both."
        raise ValueError(msg)
    notes: list[str] = []
    source = pilot if pilot is not None else variance
    var_known = source is not None
    var = resolve_variance(source, pilot_kwargs=pilot_kwargs) if var_known else {"batch": 1.0, "cell": 1.0}
    if var_known and np.isnan(var["batch"]):
        notes.append(
            "sigma2_batch unknown (NaN): expected_error and mde are NaN for rows with batch_factor > 0 (those that "
            "need the batch term; the naive design's, as a rule); pass variance={'batch': ..., 'cell': ...} or a "
            "pilot with controls in >= 2 batches."
        )
    if not var_known:
        notes.append(
            "No variance terms given: expected errors use sigma2_cell = sigma2_batch = 1 (relative units) and MDEs "
            "are not computed. Pass pilot= or variance= for absolute values."
        )
    return var, var_known, notes


def _warn_unknown_batch(var: dict[str, Any], rec: dict[str, np.ndarray], nai: dict[str, np.ndarray]) -> None:
    """Warn when an unknown batch variance leaves expected errors (rows with a batch factor > 0) NaN."""
    n_rec, n_nai = (int(np.isnan(d["expected_error"]).sum()) for d in (rec, nai))
    if not np.isnan(var["batch"]) or n_rec + n_nai == 0:
        return
    size = rec["expected_error"].size
    consequence = (
        f"expected_error and mde of {n_rec} of {size} rows of the recommended design and naive_expected_error and "
        f"naive_mde of {n_nai} of {size} rows of the naive design"
    )
    fix = f"e.g. variance={{'batch': 0.02, 'cell': {var['cell']:.3g}}} (instead of pilot=) with your batch variance"
    warnings.warn(_unknown_batch_message(var, consequence, fix), UserWarning, stacklevel=3)


def _place_cells(
    labels: list[str], control_label: str, n_p: int, n_c: int, *, B: int, C: int, S: int, random_state: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Cell counts of the recommended and the naive design (contexts, batches, 1 + K) and notes on them."""
    notes: list[str] = []
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
    naive = _naive(len(labels), n_p, n_c, B, S)
    naive_load = naive.sum(axis=(0, 2)).max()
    if naive_load > C:
        notes.append(
            f"The naive reference design (controls all in the first batch) would overfill it ({naive_load:,} > "
            f"{C:,} cells); it is shown for comparison of errors only."
        )
    return counts, naive, notes


def _count_tables(
    counts: np.ndarray,
    naive: np.ndarray,
    labels: list[str],
    control_label: str,
    contexts: list[tuple],
    ctx_names: list[str],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cells per batch (x time x medium) row and condition, for the recommended and the naive design."""
    S, B, K1 = counts.shape
    batches = [f"batch{i}" for i in range(B)]
    if ctx_names:
        rows = [(b, *ctx) for b in batches for ctx in contexts]
        index = pd.MultiIndex.from_tuples(rows, names=["batch", *ctx_names])
        reorder = lambda c: c.transpose(1, 0, 2).reshape(B * S, K1)
    else:
        index = pd.Index(batches, name="batch")
        reorder = lambda c: c[0]
    columns = pd.Index([control_label, *labels], name="condition")
    table = pd.DataFrame(reorder(counts), index=index, columns=columns)
    naive_table = pd.DataFrame(reorder(naive), index=index, columns=columns)
    return table, naive_table


def _expected_table(
    rec: dict[str, np.ndarray],
    nai: dict[str, np.ndarray],
    labels: list[str],
    contexts: list[tuple],
    ctx_names: list[str],
    var_known: bool,
) -> pd.DataFrame:
    """One row per perturbation (and context): the error columns of both designs (``naive_`` prefix)."""
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
    return expected


def _summary_note(
    f: float,
    rule: str,
    n_c: int,
    n_p: int,
    ctx_names: list[str],
    counts: np.ndarray,
    rec: dict[str, np.ndarray],
    C: int,
) -> str:
    """Write the first note: control fraction, spread of the perturbations over batches, and the largest load."""
    K, B = counts.shape[2] - 1, counts.shape[1]
    loads = counts.sum(axis=(0, 2))
    lo_b, hi_b = int(rec["n_batches"].min()), int(rec["n_batches"].max())
    spread = str(lo_b) if lo_b == hi_b else f"{lo_b}-{hi_b}"
    return (
        f"Control fraction {f:.3f} ({rule}; n_controls = {n_c / n_p:.2f} x cells per perturbation, sqrt(K) = "
        f"{math.sqrt(K):.2f}). Controls in all {B} batches"
        f"{' and at every ' + '/'.join(ctx_names) if ctx_names else ''}; each perturbation in {spread} batches; max "
        f"load {int(loads.max()):,} of {C:,} cells."
    )


def _params(
    *,
    B: int,
    C: int,
    m: int,
    control_fraction: float | None,
    target_effect: float | None,
    alpha: float,
    power: float,
    time_points: Sequence[float] | None,
    media: Sequence[str] | None,
    control_label: str,
    random_state: int,
    variance_source: str,
) -> dict[str, Any]:
    """Collect the arguments, as stored in ``BatchDesign.params``."""
    return {
        "n_batches": B,
        "cells_per_batch": C,
        "control_fraction": control_fraction,
        "min_batches_per_perturbation": m,
        "target_effect": target_effect,
        "alpha": alpha,
        "power": power,
        "time_points": _as_levels(time_points),
        "media": _as_levels(media),
        "control_label": control_label,
        "random_state": random_state,
        "variance_source": variance_source,
    }


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
        Labels of the perturbations (a list), or their number as an integer (labels ``P0``, ``P1``, ...).
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
        Power at ``target_effect``, between ``alpha`` and 1.
    pilot
        Pilot screen (AnnData with counts) for the variance terms, see
        :func:`~scmech.tl._design.resolve_variance` (pass ``pilot_kwargs={"batch_key": ...}``).
    variance
        Variance terms instead of a pilot: ``{"batch": ..., "cell": ...}`` or error_decomposition's
        ``"variance"`` table. When :math:`\sigma^2_{\mathrm{batch}}` is unknown (a pilot with controls in one
        batch, or no ``"batch"`` entry), it stays NaN: ``expected_error`` and ``mde`` are NaN for the rows whose
        ``batch_factor`` is positive (with a warning and a note), and exact for the rows with ``batch_factor`` 0.
    time_points
        Time points (finite numbers >= 0, e.g. days after perturbation, as ``setup_anndata`` requires); controls
        and every perturbation are placed at each (rows batch x time).
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
    TypeError
        For ``perturbations`` that is neither an integer nor a list of labels (a float or a bool, say), and for an
        ``alpha`` or ``power`` that is not a number.
    ValueError
        When no design meets the constraints, naming the constraint and what would fix it; for a ``control_label``
        that is one of the generated labels ``P0``, ``P1``, ...; for ``alpha`` outside (0, 1) or a ``power``
        outside (``alpha``, 1); and for time points that are not finite or are negative.

    Examples
    --------
    >>> design = recommend_batches(25, n_batches=4, cells_per_batch=5000)
    >>> bool(design.table.sum(axis=1).max() <= 5000)
    True

    Sizing for a target effect needs enough batches (four batches of 5,000 cells raise a ``ValueError`` that
    says how many are needed):

    >>> design = recommend_batches(
    ...     25, 12, 5000, target_effect=0.2, variance={"batch": 0.02, "cell": 7.4}
    ... )
    >>> design.expected_error[["mde", "naive_mde"]].mean().round(2)
    mde          0.20
    naive_mde    0.55
    dtype: float64
    """
    check_seed(random_state)
    labels = _perturbation_labels(perturbations, control_label)
    K = len(labels)
    B, C, m = _check_batch_arguments(
        n_batches, cells_per_batch, min_batches_per_perturbation, control_fraction, target_effect
    )
    z = _z(alpha, power)
    contexts, ctx_names = _contexts(time_points, media)
    S = len(contexts)
    var, var_known, notes = _design_variance(pilot, variance, pilot_kwargs)
    f = _default_control_fraction(K) if control_fraction is None else float(control_fraction)
    ratio = f * K / (1 - f)  # n_controls / n_per_perturbation
    rule = "square-root rule" if control_fraction is None else "given"

    # sizing, placement, expected errors of both designs
    if target_effect is not None:
        n_p, n_c, note = _size_for_target(
            target_effect, var, var_known, K=K, S=S, B=B, C=C, m=m, ratio=ratio, z=z, alpha=alpha, power=power
        )
        notes.append(note)
    else:
        n_p, n_c = _size_to_capacity(K=K, S=S, B=B, C=C, m=m, f=f)
    counts, naive, placement_notes = _place_cells(
        labels, control_label, n_p, n_c, B=B, C=C, S=S, random_state=random_state
    )
    notes.extend(placement_notes)
    var_used = {"batch": float(var["batch"]), "cell": float(var["cell"])}  # batch NaN when unknown
    rec = _expected_errors(counts, var_used, z)
    nai = _expected_errors(naive, var_used, z)
    _warn_unknown_batch(var, rec, nai)

    # tables
    table, naive_table = _count_tables(counts, naive, labels, control_label, contexts, ctx_names)
    expected = _expected_table(rec, nai, labels, contexts, ctx_names, var_known)
    notes.insert(0, _summary_note(f, rule, n_c, n_p, ctx_names, counts, rec, C))
    cells_pp = pd.Series(table[labels].sum(axis=0).to_numpy(), index=pd.Index(labels, name="perturbation"))
    params = _params(
        B=B,
        C=C,
        m=m,
        control_fraction=control_fraction,
        target_effect=target_effect,
        alpha=alpha,
        power=power,
        time_points=time_points,
        media=media,
        control_label=control_label,
        random_state=random_state,
        variance_source="pilot" if pilot is not None else ("variance" if variance is not None else "unit"),
    )
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


def _as_levels(values: Any) -> list | None:
    """Return a level or a sequence of levels as a list (``None`` as it is), numpy scalars as Python numbers."""
    if values is None:
        return None
    values = _levels(values)
    return [v.item() if isinstance(v, np.generic) else v for v in values]
