"""Plain-text report of the assumption checks, one paragraph per assumption."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd

from scmech._constants import SCMECH_ADATA_KEYS

from ._registry import ASSUMPTIONS, CANNOT, HOLDS, VIOLATED, _fmt

if TYPE_CHECKING:
    from anndata import AnnData


def report_assumptions(
    result: pd.DataFrame | AnnData, *, key: str = SCMECH_ADATA_KEYS.ASSUMPTIONS_UNS, max_subjects: int = 5
) -> str:
    """Short plain-text report of :func:`check_assumptions`.

    Parameters
    ----------
    result
        The table returned by ``check_assumptions``, or an AnnData holding it in ``uns["scmech"][key]``.
    key
        ``uns["scmech"]`` key (AnnData input).
    max_subjects
        At most this many subjects are named per assumption and verdict.

    Returns
    -------
    The report, one paragraph per assumption.

    Examples
    --------
    >>> print(scmech.tl.report_assumptions(adata))
    """
    if isinstance(max_subjects, bool) or not isinstance(max_subjects, int | np.integer) or max_subjects < 0:
        msg = f"max_subjects={max_subjects!r} must be a non-negative integer, e.g. max_subjects=5."
        raise ValueError(msg)
    table = _get_table(result, key)
    lines = ["Assumption checks (scmech.tl.check_assumptions)", ""]
    for a, statement in ASSUMPTIONS.items():
        sub = table[table["assumption"] == a]
        if sub.empty:
            continue
        if len(sub) == 1:
            lines.append(f"- {_single_row_text(statement, sub.iloc[0])}")
        else:
            lines += _summary_lines(a, statement, sub, max_subjects)
    return "\n".join(lines)


def _single_row_text(statement: str, r: pd.Series) -> str:
    """Sentence of an assumption tested once: verdict, effect with interval and p-value, detail."""
    text = f"{statement}: {r['verdict'].upper() if r['verdict'] in (HOLDS, VIOLATED) else r['verdict']}."
    if np.isfinite(r["effect"]):
        text += (
            f" {r['statistic']} = {_fmt(r['effect'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"
            + (f", p = {_fmt(r['p_value'], 3)}" if np.isfinite(r["p_value"]) else "")
            + "."
        )
    if r["detail"] and r["detail"] not in r["verdict"]:
        text += f" {r['detail'][0].upper()}{r['detail'][1:]}."
    return text


def _summary_lines(a: str, statement: str, sub: pd.DataFrame, max_subjects: int) -> list[str]:
    """Lines of an assumption tested on several subjects: counts per verdict, the largest effects, the reasons."""
    verdicts = sub["verdict"].astype(str)
    kind = np.where(verdicts == VIOLATED, VIOLATED, np.where(verdicts == HOLDS, HOLDS, CANNOT))
    counts = {v: int((kind == v).sum()) for v in (VIOLATED, HOLDS, CANNOT)}
    head = f"- {statement}: " + ", ".join(f"{counts[v]} {v}" for v in (VIOLATED, HOLDS, CANNOT) if counts[v])
    contexts = sub["subject"].astype(str).str.endswith(")").any() and a != "baseline_steady_state"
    head += f" (of {len(sub)} {_plural(a)}{' and contexts' if contexts else ''})."
    lines = [head]
    for v in (VIOLATED, HOLDS):
        part = sub[kind == v].sort_values("effect", ascending=False, key=lambda s: s.abs())
        if part.empty:
            continue
        named = ", ".join(
            f"{r.subject} {_fmt(r.effect)} [{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]"
            for r in part.head(max_subjects).itertuples()
        )
        more = f", +{len(part) - max_subjects} more" if len(part) > max_subjects else ""
        lines.append(f"    {v} ({part['statistic'].iloc[0]}): {named}{more}")
    cannot = sub[kind == CANNOT]
    if not cannot.empty:
        lines.append(_cannot_line(cannot))
    return lines


def _cannot_line(cannot: pd.DataFrame) -> str:
    """Summarise the three most common reasons why subjects could not be tested, with their counts."""
    reasons = cannot["verdict"].str.replace(f"{CANNOT}: ", "", regex=False)
    reasons = reasons.str.replace(r"[-\d.]+ control SDs", "<1 control SD", regex=True)
    reasons = reasons.str.replace(r"\(effect norm .*\)", "", regex=True)
    reasons = reasons.str.replace(r"\(z = [-\d.]+ < 3\)", "(z < 3)", regex=True).str.strip()
    top = reasons.value_counts()
    return f"    {CANNOT}: " + "; ".join(f"{n} x {why}" for why, n in top.head(3).items())


def _plural(assumption: str) -> str:
    """Name the subjects of an assumption in the report (plural)."""
    return {
        "baseline_steady_state": "media",
        "unique_attractor": "perturbations",
        "instantaneous_perturbation": "perturbations",
        "additivity": "combinations",
    }.get(assumption, "subjects")


def _get_table(result: pd.DataFrame | AnnData, key: str) -> pd.DataFrame:
    """Get the result table, given or from ``adata.uns["scmech"][key]``, checked to have the needed columns.

    Raises
    ------
    KeyError
        When the AnnData holds no result under ``key``, or the table lacks columns.
    ValueError
        When a verdict is missing.
    TypeError
        When ``result`` is neither a DataFrame nor an AnnData.
    """
    if isinstance(result, ad.AnnData):
        table = _stored_table(result, key)
    elif isinstance(result, pd.DataFrame):
        table = result
    else:
        msg = f"Pass the table of check_assumptions or an AnnData holding it, got {type(result).__name__}."
        raise TypeError(msg)
    need = {"assumption", "subject", "effect", "ci_low", "ci_high", "verdict"}
    if not need <= set(table.columns):
        msg = f"The table lacks columns {sorted(need - set(table.columns))}; pass check_assumptions' output."
        raise KeyError(msg)
    verdicts = table["verdict"]
    bad = ~verdicts.map(lambda v: isinstance(v, str) and bool(v)).to_numpy(dtype=bool)
    if bad.any():
        msg = (
            f"The table's 'verdict' column has {int(bad.sum())} missing or non-text values (e.g. "
            f"{verdicts[bad].iloc[0]!r}); pass check_assumptions' output unchanged."
        )
        raise ValueError(msg)
    return table


def _stored_table(adata: AnnData, key: str) -> pd.DataFrame:
    """Get the table stored by :func:`check_assumptions` in ``adata.uns["scmech"][key]``.

    Raises
    ------
    KeyError
        When nothing, or no result of ``check_assumptions``, is stored under ``key``.
    """
    run = f"run scmech.tl.check_assumptions(adata, key_added={key!r})"
    store = adata.uns.get(SCMECH_ADATA_KEYS.UNS)
    stored = store.get(key) if isinstance(store, Mapping) else None
    if stored is None:
        msg = f"adata.uns['scmech'] has no {key!r}; {run}."
        raise KeyError(msg)
    table = stored.get("table") if isinstance(stored, Mapping) else None
    if not isinstance(table, pd.DataFrame):
        msg = (
            f"adata.uns['scmech'][{key!r}] is not a result of check_assumptions (a dict with a 'table' DataFrame, "
            f"got {type(stored).__name__}); {run}, or pass key=... of one."
        )
        raise KeyError(msg)
    return table
