r"""Selection (fitness): cell abundance per perturbation relative to the controls.

In vivo, and in any screen read out days after transduction, perturbations that slow growth or kill cells are
depleted and those that speed growth enriched. Depletion changes how many cells a perturbation has, not their
expression: a model of expression is not to blame for a missing population, and a depleted perturbation's few
survivors (escapers, weak knock-downs) can make its effect look smaller. Abundance is its own observable here.

For a perturbation :math:`p` with :math:`n_p` cells, :math:`n_\varnothing` control cells, and expected
frequencies :math:`\pi_p, \pi_\varnothing` (guide library, plasmid counts, or the same conditions at a
reference time point),

.. math::

    \hat s_p = \log_2\frac{n_p + \tfrac12}{n_\varnothing + \tfrac12} - \log_2\frac{\pi_p}{\pi_\varnothing},
    \qquad
    \mathrm{se}^2 = \frac{1}{\ln^2 2}\Big(\frac{1}{n_p + \tfrac12} + \frac{1}{n_\varnothing + \tfrac12}
    \;\big[+ \frac{1}{m_p + \tfrac12} + \frac{1}{m_\varnothing + \tfrac12}\big]\Big),

the Poisson (Wald) variance of a log ratio of counts, with the bracket when the reference is itself counted
(:math:`m`: reference counts). :math:`\hat s_p` estimates the fitness relative to the controls in
:math:`\log_2` units (e.g. -1: half as many cells as expected). Batches are analysed separately and pooled
by inverse-variance weights; the variance of a counted reference, one draw shared by all batches, enters the
pooled variance once.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control, norm

from scmech._constants import SCMECH_ADATA_KEYS
from scmech._docs import fill_doc
from scmech.data._checks import scmech_uns

from ._selection_inputs import POOLED, _canonical_reference, _cell_labels, _check_args, _reference_time

if TYPE_CHECKING:
    from collections.abc import Mapping

    from anndata import AnnData

__all__ = ["selection"]

_FEW_REFERENCE_COUNTS = 10  # a counted reference with a smaller value is more likely a design ratio than reads
_COLUMNS = [
    "condition",
    "batch",
    "time",
    "n_cells",
    "n_control",
    "expected_ratio",
    "log2_ratio",
    "se",
    "ci_low",
    "ci_high",
    "pvalue",
    "qvalue",
    "call",
]


def _bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (:func:`scipy.stats.false_discovery_control`); NaN stays NaN."""
    q = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        q[ok] = false_discovery_control(p[ok], method="bh")
    return q


def _reference_table(
    reference: Mapping[str, float] | pd.Series,
    conditions: list[str],
    control_label: str,
    reference_counts: bool | None = None,
) -> tuple[pd.Series, bool]:
    """Return the reference per condition and whether it is counted (``reference_counts``; ``None``: inferred)."""
    ref = pd.Series(reference, dtype=float)
    ref.index = ref.index.astype(str)
    missing = [c for c in [control_label, *conditions] if c not in ref.index]
    if missing:
        msg = (
            f"reference lacks the conditions {missing[:5]}; give an expected frequency or count for every "
            f"perturbation and for the control {control_label!r}."
        )
        raise KeyError(msg)
    bad = ref[[control_label, *conditions]]
    if not np.all(np.isfinite(bad.to_numpy())) or (bad <= 0).any():
        msg = f"reference must be finite and positive for every condition, got {bad[~(bad > 0)].to_dict()}."
        raise ValueError(msg)
    if reference_counts is not None:
        return ref, reference_counts
    is_counts = bool(np.all(np.isclose(ref, np.round(ref))) and ref.sum() > 1)
    if is_counts and bad.min() < _FEW_REFERENCE_COUNTS:
        warnings.warn(
            f"reference holds whole numbers (smallest {bad.min():g}, sum {bad.sum():g}): they are read as counts "
            "(plasmid or library reads), whose Poisson noise widens every interval, and counts this small widen "
            "them a lot. If they are design ratios (e.g. 2 parts control to 1 part each guide), pass "
            "reference_counts=False; pass reference_counts=True to keep them as counts without this warning.",
            UserWarning,
            stacklevel=4,
        )
    return ref, is_counts


@fill_doc
def selection(
    adata: AnnData,
    *,
    perturbation_key: str = "perturbation",
    control_label: str = "NT",
    unassigned_label: str | None = "unassigned",
    separator: str = "+",
    batch_key: str | None = None,
    reference: Mapping[str, float] | pd.Series | None = None,
    reference_counts: bool | None = None,
    time_key: str | None = None,
    reference_time: float | str | None = None,
    confidence: float = 0.95,
    min_cells: int = 0,
    key_added: str = SCMECH_ADATA_KEYS.SELECTION_UNS,
) -> pd.DataFrame:
    r"""Estimate selection (fitness) per perturbation: cell abundance relative to the controls and the design.

    Counts the cells of every perturbation and of the controls (per batch when ``batch_key`` is given, and
    pooled) and compares their ratio with the expected one (module docstring for the estimator and its
    interval). The expectation comes from, in order:

    - ``time_key`` and ``reference_time``: the counts of the same conditions (and batch) at the reference time
      point; every other time point is compared with it (growth or depletion since then);
    - ``reference``: expected frequencies or counts per condition, e.g. the guide library's design or
      plasmid/library read counts; counts (``reference_counts``) widen the interval by their sampling noise,
      frequencies are exact;
    - neither: every perturbation equally frequent, with the control-to-perturbation ratio set so that the
      median perturbation is neutral (assumes most perturbations do not change fitness; give ``reference``
      when the design is known).

    The result is about abundance only: a depleted perturbation is not an expression effect, and its
    surviving cells may be a biased sample (escapers), so read its expression effect with its ``n_cells``.

    Parameters
    ----------
    adata
        Annotated data; only ``obs`` is used.
    perturbation_key
        ``obs`` column with the perturbation label of each cell.
    control_label
        %(single_control_label)s Labels are compared as strings, so ``0`` matches integer labels ``0``.
    unassigned_label
        Label of cells without a usable guide call; they are left out (``None``: keep every label).
    separator
        %(separator)s
        Labels are read as their targets, as everywhere in scmech: ``"B+A"`` and ``"A+B"`` (or ``" A"`` and ``"A"``)
        are one condition, reported under its canonical label (targets sorted), and so are the keys of
        ``reference``.
    batch_key
        ``obs`` column of wet-lab batches (lanes, replicates, animals); each batch is compared with its own
        controls and the batches are pooled by inverse-variance weights. A batch without control cells gets
        NaN estimates (call ``"too few cells"``) and does not enter the pooled estimate; no batch may be named
        ``"all"`` (the label of the pooled rows).
    reference
        Expected frequencies or counts per condition (index: labels, including ``control_label``).
    reference_counts
        Whether ``reference`` holds counts (reads of the guide library: their Poisson noise enters the interval)
        rather than exact frequencies or design ratios. ``None``: whole numbers summing to more than 1 are read as
        counts, with a warning when the smallest is below 10 (small whole numbers are more often ratios).
    time_key
        ``obs`` column of read-out times (or time-point labels).
    reference_time
        The time point whose counts serve as the reference (needs ``time_key``).
    confidence
        Level of the intervals.
    min_cells
        Conditions with fewer cells in a batch (and time) are reported with NaN estimates there. Estimates need
        at least one control cell whatever ``min_cells`` is.
    key_added
        Key in ``adata.uns["scmech"]``, a non-empty string.

    Returns
    -------
    One row per condition, batch (``"all"`` for the pooled estimate) and time point, with ``n_cells``,
    ``n_control``, ``expected_ratio`` (:math:`\pi_p/\pi_\varnothing`), ``log2_ratio`` (the selection
    estimate :math:`\hat s_p`), ``se``, ``ci_low``, ``ci_high``, ``pvalue`` (two-sided Wald test of no
    selection), ``qvalue`` (Benjamini-Hochberg over the pooled rows) and ``call`` (``"depleted"``,
    ``"enriched"`` or ``"neutral"``: whether the interval excludes 0). Also written to
    ``adata.uns["scmech"][key_added]`` as ``{"table": ..., "params": ...}`` (``adata`` must not be a view).
    Cells labelled ``unassigned_label`` are left out; missing (NaN) perturbation labels, and missing batch or
    time values of assigned cells, are refused.

    Examples
    --------
    >>> adata = scmech.data.simulate_perturbseq(20000, 100, n_perturbations=10, fitness_sd=1.0)
    >>> design = adata.uns["truth"]["fitness"]["design_frequency"]
    >>> design["NT"] = adata.uns["simulation"]["control_fraction"]
    >>> table = scmech.tl.selection(adata, batch_key="batch", reference=design)
    >>> table.query("batch == 'all' and call == 'depleted'")
    """
    if not isinstance(key_added, str) or not key_added:
        msg = f"key_added must be a non-empty string (the key of adata.uns['scmech'] to write), got {key_added!r}."
        raise ValueError(msg)
    if adata.is_view:
        msg = (
            f"adata is a view ({adata.n_obs} x {adata.n_vars}); writing adata.uns['scmech'][{key_added!r}] would "
            "silently be lost. Pass adata.copy()."
        )
        raise ValueError(msg)
    _check_args(adata.obs, perturbation_key, batch_key, time_key, confidence, reference, reference_time, min_cells)
    if reference_counts is not None and (not isinstance(reference_counts, bool | np.bool_) or reference is None):
        msg = (
            f"reference_counts={reference_counts!r} must be True, False or None, and goes with reference= (it says "
            "whether the reference holds counts or frequencies)."
        )
        raise ValueError(msg)
    control_label = str(control_label)
    labels, batches, times = _cell_labels(
        adata.obs, perturbation_key, control_label, unassigned_label, batch_key, time_key, separator
    )
    ref_t = None if reference_time is None else _reference_time(adata.obs, time_key, times, reference_time)
    conditions = sorted(set(labels) - {control_label})
    counts = pd.crosstab([batches, times], labels).reindex(columns=[control_label, *conditions], fill_value=0)
    counts.index = counts.index.set_names(["batch", "time"])
    if reference is not None:
        reference = _canonical_reference(reference, control_label, separator)
    table = _batch_estimates(counts, conditions, control_label, reference, ref_t, min_cells, reference_counts)
    if reference is None and reference_time is None:
        table = _median_neutral(table)
    if batch_key is not None:
        table = pd.concat([table, _pooled_estimates(table)], ignore_index=True)
    table = _add_tests(table, confidence, keep_time=time_key is not None)
    params = {
        "perturbation_key": perturbation_key,
        "control_label": control_label,
        "unassigned_label": unassigned_label,
        "separator": separator,
        "batch_key": batch_key,
        "reference": "time point" if reference_time is not None else ("given" if reference is not None else "median"),
        "reference_counts": None if reference_counts is None else bool(reference_counts),
        "time_key": time_key,
        "reference_time": None if reference_time is None else str(reference_time),
        "confidence": confidence,
        "min_cells": min_cells,
    }
    scmech_uns(adata)[key_added] = {"table": table, "params": params}
    return table


def _batch_estimates(
    counts: pd.DataFrame,
    conditions: list[str],
    control_label: str,
    reference: Mapping[str, float] | pd.Series | None,
    ref_t: str | None,
    min_cells: int,
    reference_counts: bool | None = None,
) -> pd.DataFrame:
    """Estimate the selection of every condition per batch and time point (not at the reference time).

    Parameters
    ----------
    counts
        Cells per (batch, time) row and condition column, the control first.
    conditions
        The perturbations, sorted.
    control_label
        Label of the control cells.
    reference
        Expected frequencies or counts per condition, or ``None``.
    ref_t
        Label of the reference time point, or ``None``.
    min_cells
        Smallest count for an estimate; NaN estimates below it.
    reference_counts
        Whether ``reference`` holds counts (``None``: inferred).

    Returns
    -------
    One row per condition, batch and time with ``n_cells``, ``n_control``, ``expected_ratio``, ``log2_ratio`` and
    ``se``.

    Raises
    ------
    KeyError
        For a ``reference`` that lacks conditions.
    ValueError
        For a ``reference`` that is not finite and positive.
    """
    rows = []
    ref_counts: pd.DataFrame | None = None
    expected: dict[str, float] | None = None
    ref_var: dict[str, float] | None = None
    if reference is not None:
        ref, is_counts = _reference_table(reference, conditions, control_label, reference_counts)
        expected = {c: float(ref[c] / ref[control_label]) for c in conditions}
        inv_control = 1.0 / (ref[control_label] + 0.5)
        ref_var = {c: 1.0 / (ref[c] + 0.5) + inv_control for c in conditions} if is_counts else None
    elif ref_t is not None:
        # a batch without cells at the reference time has zero reference counts (NaN estimates), not a KeyError
        batches = counts.index.get_level_values("batch").unique()
        ref_counts = counts.xs(ref_t, level="time").reindex(batches, fill_value=0)
    for (b, t), row in counts.iterrows():
        if ref_t is not None and t == ref_t:
            continue
        n_c = float(row[control_label])
        for c in conditions:
            n_p = float(row[c])
            var = 1.0 / (n_p + 0.5) + 1.0 / (n_c + 0.5)
            if ref_counts is not None:
                m_p, m_c = float(ref_counts.loc[b, c]), float(ref_counts.loc[b, control_label])
                exp_ratio = (m_p + 0.5) / (m_c + 0.5)
                var += 1.0 / (m_p + 0.5) + 1.0 / (m_c + 0.5)
                # a ratio to zero controls is not an estimate, whatever min_cells is
                enough = min(n_p, n_c, m_p, m_c) >= min_cells and min(n_c, m_c) > 0
            else:
                exp_ratio = expected[c] if expected is not None else 1.0
                var += ref_var[c] if ref_var is not None else 0.0
                enough = min(n_p, n_c) >= min_cells and n_c > 0
            est = np.log2((n_p + 0.5) / (n_c + 0.5)) - np.log2(exp_ratio) if enough else np.nan
            rows.append(
                {
                    "condition": c,
                    "batch": b,
                    "time": t,
                    "n_cells": int(n_p),
                    "n_control": int(n_c),
                    "expected_ratio": exp_ratio,
                    "log2_ratio": est,
                    "se": np.sqrt(var) / np.log(2) if enough else np.nan,
                    # reference variance shared by every batch (counted ``reference``), log2 scale
                    "_shared_var": (ref_var[c] if ref_var is not None else 0.0) / np.log(2) ** 2,
                }
            )
    return pd.DataFrame(rows)


def _median_neutral(table: pd.DataFrame) -> pd.DataFrame:
    """Shift the estimates so that the median perturbation of each batch and time is neutral.

    Parameters
    ----------
    table
        Per-batch estimates from equal design frequencies; modified in place.

    Returns
    -------
    The same table, shifted.
    """
    # equal design frequencies; the control-to-perturbation ratio makes the median perturbation neutral
    shift = table.groupby(["batch", "time"])["log2_ratio"].transform("median")
    table["log2_ratio"] -= shift
    table["expected_ratio"] *= np.exp2(shift)
    return table


def _pooled_estimates(table: pd.DataFrame) -> pd.DataFrame:
    """Pool the estimates of every condition and time over the batches by inverse-variance weights.

    Parameters
    ----------
    table
        Per-batch estimates.

    Returns
    -------
    One row per condition and time, with batch ``"all"``.
    """
    pooled = []
    for (c, t), grp in table.groupby(["condition", "time"], sort=False):
        g = grp[np.isfinite(grp["log2_ratio"])]
        # a counted ``reference`` is one draw shared by all batches: weight by the batch-only variance and add the
        # shared part once (pooling it as independent would shrink it by the number of batches)
        shared = float(g["_shared_var"].max()) if len(g) else 0.0
        w = 1.0 / (g["se"].to_numpy() ** 2 - shared)
        est = float(np.sum(w * g["log2_ratio"]) / w.sum()) if len(g) else np.nan
        pooled.append(
            {
                "condition": c,
                "batch": POOLED,
                "time": t,
                "n_cells": int(grp["n_cells"].sum()),
                "n_control": int(grp["n_control"].sum()),
                "expected_ratio": float(np.exp2(np.sum(w * np.log2(g["expected_ratio"])) / w.sum()))
                if len(g)
                else np.nan,
                "log2_ratio": est,
                "se": float(np.sqrt(1.0 / w.sum() + shared)) if len(g) else np.nan,
                "_shared_var": shared,
            }
        )
    return pd.DataFrame(pooled)


def _add_tests(table: pd.DataFrame, confidence: float, *, keep_time: bool) -> pd.DataFrame:
    """Add intervals, Wald p-values, q-values (pooled rows) and calls; order the columns and rows.

    Parameters
    ----------
    table
        Estimates per condition, batch and time.
    confidence
        Level of the intervals.
    keep_time
        Whether to keep the ``time`` column.

    Returns
    -------
    The table with the columns of the result, pooled rows first.
    """
    z = norm.ppf(0.5 + confidence / 2)
    table["ci_low"] = table["log2_ratio"] - z * table["se"]
    table["ci_high"] = table["log2_ratio"] + z * table["se"]
    table["pvalue"] = 2 * norm.sf(np.abs(table["log2_ratio"] / table["se"]))
    is_pooled = (table["batch"] == POOLED).to_numpy()
    table["qvalue"] = np.nan
    table.loc[is_pooled, "qvalue"] = _bh(table.loc[is_pooled, "pvalue"].to_numpy())
    table["call"] = np.select(
        [table["ci_high"] < 0, table["ci_low"] > 0], ["depleted", "enriched"], default="neutral"
    ).astype(object)
    table.loc[~np.isfinite(table["log2_ratio"]), "call"] = "too few cells"
    if not keep_time:
        table = table.drop(columns="time")
    table = table[[c for c in _COLUMNS if c in table.columns]]
    # pooled rows first, then per batch
    order = np.lexsort((table["condition"].to_numpy(), table["batch"].to_numpy(), table["batch"].to_numpy() != POOLED))
    return table.iloc[order].reset_index(drop=True)
