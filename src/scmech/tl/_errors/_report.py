"""Notes and tables of an error decomposition: the design facts, warnings and what goes into ``adata.uns``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ._components import COMPONENTS

if TYPE_CHECKING:
    from ._data import _Layout
    from ._estimate import _Estimate
    from ._setup import _Setup


def _confounded(n: np.ndarray) -> np.ndarray:
    """Per perturbation: whether all its cells sit in batches without controls (``n``: conditions x batches)."""
    n_ctrl_b = n[0]
    return np.array([bool(((n[i] > 0) & (n_ctrl_b == 0)).sum() == (n[i] > 0).sum()) for i in range(1, len(n))])


def _unidentifiable_batch_note(
    lay: _Layout, used: list[int], key: str, min_cells: int, values: np.ndarray, target: str
) -> str:
    """Why sigma2_batch is NaN, which terms are NaN with it, and how to fix it."""
    if lay.n_batches == 1:
        why = "there is only one batch"
    else:
        names = [lay.batches[i] for i in used]
        why = f"only {len(used)} batch(es) {names} of obs[{key!r}] hold >= {min_cells} control cells"
    conf_nan = [p for p, v in zip(lay.conditions[1:], values[:, 1], strict=True) if np.isnan(v)]
    text = f"sigma2_batch is not identifiable: {why}; it is set to NaN. The noise floor is still given"
    if conf_nan and target == "delta":
        text += f"; confounding is NaN for {conf_nan[:10]}"
    if target == "expression":
        text += "; the batch term is NaN"
    text += ". Put controls in at least two batches, or pass variance={'batch': ...} from a pilot."
    return text


def _design_notes(
    s: _Setup,
    var: dict[str, Any],
    values: np.ndarray,
    override: dict[str, np.ndarray],
    confounded: np.ndarray,
    *,
    batch_key: str | None,
    min_cells: int,
    target: str,
) -> tuple[list[str], list[str]]:
    """Write the notes on the design for ``params["notes"]``; return them and those to warn about (in order)."""
    lay = s.layout
    notes: list[str] = []
    to_warn: list[str] = []
    used = var["batches_used"]
    key = batch_key if batch_key is not None else "<one batch>"
    if "batch" in override:
        notes.append("sigma2_batch taken from `variance`.")
    elif len(used) < 2:
        text = _unidentifiable_batch_note(lay, used, key, min_cells, values, target)
        notes.append(text)
        to_warn.append(text)
    if s.no_control_batches:
        flagged = [p for p, c in zip(lay.conditions[1:], confounded, strict=True) if c]
        text = (
            f"Batches {s.no_control_batches[:10]} of obs[{key!r}] hold no control cells: effects of perturbations "
            "there are confounded with the batch effect. Their confounding term uses sigma2_batch from the "
            f"{len(used)} batch(es) with controls. Perturbations only in batches without controls (flagged "
            f"`confounded`): {flagged[:10]}{' ...' if len(flagged) > 10 else ''}. Put controls in every batch."
        )
        notes.append(text)
        to_warn.append(text)
    if s.dropped:
        notes.append(f"left out (fewer than {min_cells} cells): {s.dropped}")
    return notes, to_warn


def _tidy_table(est: _Estimate, n: np.ndarray, confounded: np.ndarray, perts: list[str]) -> pd.DataFrame:
    """One row per perturbation and component: value, interval, cells, batches and the confounded flag."""
    values, lo, hi = est.values, est.lo, est.hi
    comps = [c for c in COMPONENTS if c in est.comp] + ["total"]
    n_p = n[1:].sum(axis=1)
    n_b = (n[1:] > 0).sum(axis=1)
    rows = []
    for i, p in enumerate(perts):
        for j, c in enumerate(comps):
            rows.append((p, c, values[i, j], lo[i, j], hi[i, j], int(n_p[i]), int(n_b[i]), bool(confounded[i])))
    return pd.DataFrame(
        rows, columns=["condition", "component", "value", "ci_low", "ci_high", "n_cells", "n_batches", "confounded"]
    )


def _gene_tables(est: _Estimate, genes: pd.Index) -> dict[str, pd.DataFrame]:
    """``per_gene`` components, per-gene ``variance`` terms and the ``variance_summary`` (value, interval)."""
    comp, var, expressed = est.comp, est.var, est.expressed
    vsum, vlo, vhi = est.vsum, est.vlo, est.vhi
    comps = [c for c in COMPONENTS if c in comp] + ["total"]
    per_gene = pd.DataFrame({c: comp[c].mean(axis=0) for c in comps}, index=pd.Index(genes, name="gene"))
    variance_df = pd.DataFrame(
        {k: np.asarray(var[k], dtype=np.float64) for k in ("batch", "cell", "bio", "meas", "mean")},
        index=pd.Index(genes, name="gene"),
    )
    variance_summary = pd.DataFrame(
        {"value": vsum, "ci_low": vlo, "ci_high": vhi, "n_genes": int(expressed.sum())},
        index=pd.Index(["batch", "cell", "bio", "meas"], name="term"),
    )
    return {"per_gene": per_gene, "variance": variance_df, "variance_summary": variance_summary}


def _params(
    s: _Setup,
    var: dict[str, Any],
    n_ctrl_b: np.ndarray,
    notes: list[str],
    *,
    perturbation_key: str,
    batch_key: str | None,
    layer: str | None,
    counts: bool,
    target: str,
    predictions: bool,
    dispersion: str,
    variance_given: list[str],
    n_splits: int,
    n_bootstrap: int,
    min_cells: int,
    random_state: int,
) -> dict[str, Any]:
    """Collect the arguments of the call and the facts of the design, as stored in ``params``."""
    lay = s.layout
    return {
        "perturbation_key": perturbation_key,
        "control_label": lay.conditions[0],
        "batch_key": batch_key if batch_key is not None else "",
        "layer": layer if layer is not None else "",
        "counts": bool(counts),
        "target": target,
        "predictions": predictions,
        "dispersion": dispersion,
        "variance_given": variance_given,
        "n_splits": int(n_splits),
        "n_bootstrap": int(n_bootstrap),
        "min_cells": int(min_cells),
        "random_state": int(random_state),
        "batches": list(lay.batches),
        "batches_without_controls": list(s.no_control_batches),
        "batches_for_sigma2_batch": [lay.batches[i] for i in var["batches_used"]],
        "controls_per_batch": [int(v) for v in n_ctrl_b],
        "dropped_conditions": list(s.dropped),
        "notes": notes,
    }
