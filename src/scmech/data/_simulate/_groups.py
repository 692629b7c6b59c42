"""Truth groups of a simulation and their keys.

The truth tables of ``uns["truth"]`` have one row per group: a condition in a medium (steady state) or a
condition in a medium after a switch time at a read-out time (dynamic). :func:`simulation_group_keys` gives the
key of each cell, so that pseudobulks of the observed cells can be compared with the truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from ._cells import _Cells

__all__ = ["simulation_group_keys"]


def _fmt_time(v: float) -> str:
    """Time as written in group keys: ``"{:g}"``, ``"none"`` when not finite."""
    return "none" if not np.isfinite(v) else f"{float(v):g}"


def simulation_group_keys(obs: pd.DataFrame, *, regime: str | None = None, batch: bool = False) -> np.ndarray:
    """Per-cell keys of the truth tables (``uns["truth"]["mean_log"]`` etc.) of a simulation.

    The key is ``"{perturbation}|{media}"`` in the steady-state regime and
    ``"{perturbation}|{media}|{media_time}|{time}"`` in the dynamic regime, with times written by ``"{:g}"``
    and ``"none"`` for cells that were not switched (e.g. ``"G0012|m1|-1|2"``, ``"NT|m0|none|0.5"``). With
    ``batch=True`` ``"|{batch}"`` is appended (the index of ``mean_log_batch``).

    Parameters
    ----------
    obs
        ``adata.obs`` of a simulation (or a subset of it).
    regime
        ``"steady_state"`` or ``"dynamic"``; inferred from the presence of a ``time`` column when ``None``.
    batch
        Whether to append the batch.

    Returns
    -------
    Array of keys, one per cell.

    Raises
    ------
    KeyError
        When ``obs`` lacks a column of the keys.
    ValueError
        For another ``regime``.

    Examples
    --------
    >>> adata = simulate_perturbseq(500, 50, n_perturbations=4, n_combinations=1, seed=0)
    >>> keys = simulation_group_keys(adata.obs)
    >>> bool(set(keys) <= set(adata.uns["truth"]["mean_log"].index))
    True
    """
    if not isinstance(obs, pd.DataFrame):
        msg = f"obs must be the DataFrame adata.obs of a simulation, got {type(obs).__name__}; pass adata.obs."
        raise TypeError(msg)
    if regime is None:
        regime = "dynamic" if "time" in obs.columns else "steady_state"
    if regime not in ("steady_state", "dynamic"):
        msg = f"regime={regime!r} is not allowed; expected 'steady_state', 'dynamic' or None (inferred)."
        raise ValueError(msg)
    needed = ["perturbation", "media"] + (["media_time", "time"] if regime == "dynamic" else []) + (["batch"] * batch)
    missing = [c for c in needed if c not in obs.columns]
    if missing:
        msg = (
            f"obs lacks the column(s) {missing} of a {regime} simulation (needed: {needed}); pass adata.obs of "
            "simulate_perturbseq (or a subset of it)."
        )
        raise KeyError(msg)
    keys = obs["perturbation"].astype(str).str.cat(obs["media"].astype(str), sep="|")
    if regime == "dynamic":
        mt = pd.Series([_fmt_time(v) for v in obs["media_time"].to_numpy(dtype=float)], index=obs.index)
        tt = pd.Series([_fmt_time(v) for v in obs["time"].to_numpy(dtype=float)], index=obs.index)
        keys = keys.str.cat([mt, tt], sep="|")
    if batch:
        keys = keys.str.cat(obs["batch"].astype(str), sep="|")
    return keys.to_numpy(dtype=object)


def _group_key(label: str, media: int, media_time: float, time: float, dynamic: bool) -> str:
    """Key of one group (the format of :func:`simulation_group_keys`)."""
    if dynamic:
        return f"{label}|m{media}|{_fmt_time(media_time)}|{_fmt_time(time)}"
    return f"{label}|m{media}"


@dataclass
class _Groups:
    """Truth groups: one per (condition, medium) or (condition, medium, switch time, read-out time)."""

    keys: list[str]
    cond: np.ndarray
    media: np.ndarray
    media_time: np.ndarray
    time: np.ndarray
    ctx: np.ndarray  # a state context that produces the group
    t_idx: np.ndarray
    code: np.ndarray  # group of each cell


def _make_groups(
    labels: list[str], cells: _Cells, switches: np.ndarray, times: np.ndarray, p: dict[str, Any]
) -> _Groups:
    """All possible groups of the conditions ``labels`` (also empty ones) and the group of each cell.

    Parameters
    ----------
    labels
        Condition labels, the control first.
    cells
        The cells (:func:`~scmech.data._simulate._cells._design_cells`).
    switches, times
        Media switch times and read-out times of the dynamic regime (NaN in the steady-state regime).
    p
        Validated parameters of :func:`~scmech.data.simulate_perturbseq`.

    Returns
    -------
    The groups, in the order of conditions, then media or (switch, time) protocols.
    """
    dynamic = p["regime"] == "dynamic"
    rows: dict[str, tuple] = {}
    for c, label in enumerate(labels):
        if dynamic:
            for ctx, s in enumerate(switches):
                for ti, t in enumerate(times):
                    mt = s if s <= t else np.nan
                    med = int(np.isfinite(mt))
                    rows.setdefault(_group_key(label, med, mt, t, True), (c, med, mt, t, ctx, ti))
        else:
            for med in range(p["n_media"]):
                rows.setdefault(_group_key(label, med, np.nan, np.nan, False), (c, med, np.nan, np.nan, med, 0))
    keys = list(rows)
    cols = list(zip(*rows.values(), strict=True))
    index = {k: i for i, k in enumerate(keys)}
    cell_keys = (
        _group_key(labels[c], m, a, b, dynamic)
        for c, m, a, b in zip(cells.cond, cells.media, cells.media_time, cells.time, strict=True)
    )
    code = np.fromiter((index[k] for k in cell_keys), dtype=np.int64, count=cells.cond.size)
    arrays = [np.asarray(col, dtype=float if i in (2, 3) else np.int64) for i, col in enumerate(cols)]
    return _Groups(keys, *arrays, code=code)
