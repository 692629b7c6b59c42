"""Summaries of evaluation results: leaderboards (:func:`leaderboard`, :func:`leaderboard_table`) and wins."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ._checks import _as_list
from ._names import higher_is_better

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["leaderboard", "leaderboard_table", "win_counts"]


def leaderboard(
    results: pd.DataFrame | Sequence[pd.DataFrame], *, metrics: str | Sequence[str] | None = None
) -> pd.DataFrame:
    """Summarise evaluation results per model and metric, with a direction-aware rank.

    Parameters
    ----------
    results
        Tidy results of :func:`evaluate` / :func:`noise_ceiling` (or a list of them), with columns
        ``model``, ``condition``, ``metric``, ``value`` and optionally ``seed``.
    metrics
        Metrics to keep (one name or a list; all when ``None``).

    Returns
    -------
    DataFrame with one row per model and metric: ``mean``, ``sd`` and ``n`` over conditions (NaN values
    dropped; the rows of a condition repeated without a ``seed`` column are averaged first, with a
    ``UserWarning``, so that each condition counts once; a model without any finite score on a metric has no row
    for it, and a ``UserWarning`` says when models are scored on different conditions of a metric, as their means
    then do not compare) or, when a
    ``seed`` column is present, the mean and sd over seeds of the per-seed means (``n`` then counts seeds and
    ``n_conditions`` conditions), ``higher_is_better`` and ``rank`` (1 = best within
    the metric; ties share the best rank).

    Examples
    --------
    >>> board = scmech.tl.leaderboard(results, metrics=["pearson_delta_de", "l2_top"])
    """
    if isinstance(results, list | tuple) and len(results) == 0:
        msg = "results is an empty list; pass the DataFrame of scmech.tl.evaluate (or a list of them)."
        raise ValueError(msg)
    df = pd.concat(list(results), ignore_index=True) if isinstance(results, list | tuple) else results
    need = {"model", "metric", "value"}
    if not isinstance(df, pd.DataFrame) or not need <= set(df.columns):
        msg = f"results must be a DataFrame from scmech.tl.evaluate with columns {sorted(need)}."
        raise ValueError(msg)
    df = _check_results(df, "results", with_seed=True)
    metrics = _as_list(metrics)
    metrics = None if metrics is None else [str(m) for m in metrics]
    if metrics is not None:
        unknown = sorted(set(metrics) - set(df["metric"]))
        if unknown:
            msg = f"Metric(s) {unknown} are not in the results (metrics: {sorted(set(df['metric']))})."
            raise KeyError(msg)
        df = df[df["metric"].isin(metrics)]
    _warn_unequal_conditions(df)
    df = df.dropna(subset=["value"])
    if "seed" in df.columns:
        per_seed = df.groupby(["model", "metric", "seed"], sort=False)["value"].mean().reset_index()
        board = (
            per_seed.groupby(["model", "metric"], sort=False)["value"]
            .agg(mean="mean", sd="std", n="count")
            .reset_index()
        )
        ncond = df.groupby(["model", "metric"], sort=False)["condition"].nunique().rename("n_conditions")
        board = board.merge(ncond.reset_index(), on=["model", "metric"], how="left")
    else:
        if "condition" in df.columns:  # each condition once, as win_counts compares them
            _warn_repeated_rows(df)
            df = df.groupby(["model", "metric", "condition"], sort=False)["value"].mean().reset_index()
        board = df.groupby(["model", "metric"], sort=False)["value"].agg(mean="mean", sd="std", n="count").reset_index()
    board["higher_is_better"] = board["metric"].map(higher_is_better).astype(bool)
    signed = np.where(board["higher_is_better"], -board["mean"], board["mean"])
    board["rank"] = pd.Series(signed, index=board.index).groupby(board["metric"]).rank(method="min").astype(int)
    order = list(metrics) if metrics is not None else list(dict.fromkeys(board["metric"]))
    board["metric"] = pd.Categorical(board["metric"], categories=order, ordered=True)
    board = board.sort_values(["metric", "rank", "model"]).reset_index(drop=True)
    board["metric"] = board["metric"].astype(str)
    return board


def leaderboard_table(
    results_or_board: pd.DataFrame,
    *,
    metrics: str | Sequence[str] | None = None,
    digits: int = 3,
    show_sd: bool = True,
) -> pd.DataFrame:
    """Compact wide leaderboard: models x metrics, each cell ``"mean ± sd"``, rows ordered by mean rank.

    Parameters
    ----------
    results_or_board
        Tidy results of :func:`evaluate` or the output of :func:`leaderboard`.
    metrics
        Metrics (columns) to show, in order (one name or a list); all when ``None``.
    digits
        Decimals shown.
    show_sd
        Append ``± sd``.

    Returns
    -------
    DataFrame of strings indexed by model, one column per metric.

    Examples
    --------
    >>> scmech.tl.leaderboard_table(results, metrics=["pearson_delta_de", "l2_top"])
    """
    if isinstance(digits, bool) or not isinstance(digits, int | np.integer) or digits < 0:
        msg = f"digits={digits!r} must be a non-negative integer (decimals shown), e.g. digits=3."
        raise ValueError(msg)
    metrics = _as_list(metrics)
    metrics = None if metrics is None else [str(m) for m in metrics]
    if not isinstance(results_or_board, pd.DataFrame):
        msg = (
            "results_or_board must be a DataFrame from scmech.tl.evaluate or scmech.tl.leaderboard, got "
            f"{type(results_or_board).__name__}."
        )
        raise TypeError(msg)
    board = results_or_board if "rank" in results_or_board.columns else leaderboard(results_or_board, metrics=metrics)
    if metrics is not None:
        unknown = sorted(set(metrics) - set(board["metric"]))
        if unknown:
            msg = f"Metric(s) {unknown} are not in the leaderboard (metrics: {sorted(set(board['metric']))})."
            raise KeyError(msg)
        board = board[board["metric"].isin(list(metrics))]
    cols = list(metrics) if metrics is not None else list(dict.fromkeys(board["metric"]))

    def fmt(r: Any) -> str:
        s = f"{r['mean']:.{digits}f}"
        if show_sd and np.isfinite(r["sd"]):
            s += f" ± {r['sd']:.{digits}f}"
        return s

    board = board.assign(cell=board.apply(fmt, axis=1))
    wide = board.pivot(index="model", columns="metric", values="cell").reindex(columns=cols)
    order = board.groupby("model")["rank"].mean().sort_values().index
    wide = wide.loc[order]
    wide.columns.name = None
    return wide


def win_counts(
    results: pd.DataFrame, model: str, metric: str, *, against: str | Sequence[str] | None = None
) -> pd.DataFrame:
    """Per-condition wins of ``model`` against every other model on one metric.

    A condition's score is averaged over the rows it has (e.g. over seeds) before models are compared, so each
    condition counts once. A win is a better score in the metric's direction (``scmech.tl.METRIC_DIRECTIONS``); NaN
    scores are left out of that pair.

    Parameters
    ----------
    results
        Tidy results of :func:`evaluate` (several runs concatenated, e.g. with a ``seed`` column).
    model
        The model whose wins are counted.
    metric
        The metric compared.
    against
        Models to compare with (one name or a list); every other model when ``None``.

    Returns
    -------
    DataFrame indexed by the other models with columns ``wins``, ``losses``, ``ties`` and ``n`` (conditions
    scored by both).

    Examples
    --------
    >>> scmech.tl.win_counts(results, "SemiMechVI", "pearson_delta_top_change")
    """
    against = _as_list(against)
    need = {"model", "condition", "metric", "value"}
    if not isinstance(results, pd.DataFrame) or not need <= set(results.columns):
        have = list(results.columns) if isinstance(results, pd.DataFrame) else type(results).__name__
        msg = f"results must be a DataFrame from scmech.tl.evaluate with columns {sorted(need)}, got {have}."
        raise ValueError(msg)
    results = _check_results(results, "results", with_seed=False)
    sub = results[results["metric"] == metric]
    if sub.empty:
        msg = f"No results for metric {metric!r} (metrics: {sorted(results['metric'].unique())[:12]})."
        raise KeyError(msg)
    table = sub.groupby(["condition", "model"])["value"].mean().unstack("model")
    if model not in table.columns:
        msg = f"No results for model {model!r} (models: {list(table.columns)})."
        raise KeyError(msg)
    others = [m for m in (against if against is not None else table.columns) if m != model]
    if not others:
        msg = (
            f"No model to compare {model!r} with: against={against!r} names only the model itself"
            if against is not None
            else f"No model to compare {model!r} with: the results hold no other model"
        )
        raise ValueError(f"{msg} (models: {list(table.columns)}).")
    sign = 1.0 if higher_is_better(metric) else -1.0
    rows = {}
    for other in others:
        if other not in table.columns:
            msg = f"No results for model {other!r} (models: {list(table.columns)})."
            raise KeyError(msg)
        pair = table[[model, other]].dropna()
        diff = sign * (pair[model] - pair[other])
        rows[other] = {
            "wins": int((diff > 0).sum()),
            "losses": int((diff < 0).sum()),
            "ties": int((diff == 0).sum()),
            "n": len(pair),
        }
    return pd.DataFrame.from_dict(rows, orient="index", columns=["wins", "losses", "ties", "n"])


def _check_results(df: pd.DataFrame, what: str, *, with_seed: bool) -> pd.DataFrame:
    """Return ``df`` with a numeric ``value`` column; refuse values that are not numbers.

    Parameters
    ----------
    df
        Tidy results.
    what
        The argument's name, for messages.
    with_seed
        Whether a ``seed`` column is averaged per condition (then ``condition`` is needed).

    Returns
    -------
    ``df``, or a copy whose ``value`` column is converted to numbers and whose categorical ``model``, ``metric``,
    ``condition`` and ``seed`` columns hold their values (categories without rows, common after filtering, would
    otherwise enter every group-by as empty groups), with metric names as text.

    Raises
    ------
    TypeError
        For a ``value`` column holding booleans or entries that are not numbers.
    ValueError
        For a ``seed`` column without a ``condition`` column.
    """
    if with_seed and "seed" in df.columns and "condition" not in df.columns:
        msg = (
            f"{what} has a 'seed' column but no 'condition' column; per-seed means need the conditions. Pass the "
            "tidy results of scmech.tl.evaluate (columns model, condition, metric, value, seed)."
        )
        raise ValueError(msg)
    plain = {
        c: df[c].astype(object)
        for c in ("model", "metric", "condition", "seed")
        if c in df.columns and isinstance(df[c].dtype, pd.CategoricalDtype)
    }
    if "metric" in df.columns and not all(isinstance(m, str) for m in plain.get("metric", df["metric"])):
        plain["metric"] = plain.get("metric", df["metric"]).astype(str)
    if plain:
        df = df.assign(**plain)
    values = df["value"]
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return df
    numeric = pd.to_numeric(values, errors="coerce")
    bad = (numeric.isna() & values.notna()) | values.map(lambda v: isinstance(v, bool | np.bool_))
    if bad.any():
        msg = (
            f"{what}['value'] must hold numbers, got dtype {values.dtype} with e.g. {values[bad].iloc[0]!r}; "
            f"convert it first (e.g. {what}['value'] = pd.to_numeric({what}['value']))."
        )
        raise TypeError(msg)
    return df.assign(value=numeric.astype(np.float64))


def _warn_repeated_rows(df: pd.DataFrame) -> None:
    """Warn when a model, condition and metric have several rows and no ``seed`` column tells them apart."""
    repeated = df.duplicated(subset=["model", "condition", "metric"], keep=False)
    if repeated.any():
        first = df.loc[repeated].iloc[0]
        msg = (
            f"results hold {int(repeated.sum())} rows that repeat a model, condition and metric (e.g. "
            f"{first['model']!r}, {first['condition']!r}, {first['metric']!r}); each condition's rows are averaged "
            "first. For concatenated runs add a 'seed' column (pd.concat([r.assign(seed=s) for s, r in "
            "enumerate(runs)])) to get the mean and sd over seeds."
        )
        warnings.warn(msg, UserWarning, stacklevel=4)


def _warn_unequal_conditions(df: pd.DataFrame) -> None:
    """Warn when, within a metric, models have finite scores on different conditions (their means do not compare).

    A model without any finite score on a metric (e.g. ``pearson_delta`` of a model that predicts no change) is
    simply left out of that metric's ranking and is not warned about.

    Parameters
    ----------
    df
        Tidy results (NaN values included), with a ``condition`` column (else nothing is checked).
    """
    if "condition" not in df.columns or df.empty:
        return
    keys = [c for c in ("seed", "condition") if c in df.columns]
    scored = df.dropna(subset=["value"])
    uneven = {}
    for metric, grp in scored.groupby("metric", sort=False):
        sets = {m: set(g[keys].itertuples(index=False, name=None)) for m, g in grp.groupby("model", sort=False)}
        union = set().union(*sets.values())
        short = {str(m): f"{len(v)} of {len(union)}" for m, v in sets.items() if v != union}
        if short:
            uneven[str(metric)] = short
    if uneven:
        metric, short = next(iter(uneven.items()))
        msg = (
            f"For metric(s) {list(uneven)[:5]} the models are not scored on the same conditions (NaN scores are "
            f"dropped), e.g. {metric!r}: {short} conditions; their means and ranks compare different conditions. "
            "Score every model on the same conditions (evaluate them together; noise_ceiling(conditions=...)) or "
            "keep only the shared conditions."
        )
        warnings.warn(msg, UserWarning, stacklevel=3)
