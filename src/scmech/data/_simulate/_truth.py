"""The truth tables of a simulation (``uns["truth"]``): noise-free group means, interactions, variance components.

They are computed from the sums accumulated while measuring the cells (``_measurement``) and from the state
grid (``_states``); :func:`~scmech.data.simulate_perturbseq` documents every key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from scmech._constants import TARGET_SUM

from ._cells import _batch_names, _design_frequency, _efficacy_quadrature

if TYPE_CHECKING:
    from ._cells import _Cells
    from ._groups import _Groups
    from ._network import SimulatedNetwork
    from ._random_network import _Conditions
    from ._states import _StateGrid

#: genes count as expressed for the scalar variance components above this mean (counts per TARGET_SUM)
_VAR_MEAN_THRESHOLD = 1.0


def _variance_components(
    acc: dict[str, np.ndarray], capture: np.ndarray, groups: _Groups, names: list[str]
) -> pd.DataFrame:
    """Delta-method variance components over medium-0 control cells (see :func:`~scmech.data.simulate_perturbseq`)."""
    B = capture.shape[0]
    c0 = np.flatnonzero((groups.cond == 0) & (groups.media == 0))
    n_c0 = np.isin(groups.code, c0).sum()
    v_n, ok = acc["n"], acc["n"] >= 2
    with np.errstate(invalid="ignore", divide="ignore"):  # NaN when no control is in medium 0
        mean = TARGET_SUM * acc["rho0"][c0].sum(axis=0) / n_c0
        per_batch = np.log1p(TARGET_SUM * capture * acc["xn"][:, c0].sum(axis=1) / n_c0)
        batch = per_batch.var(axis=0, ddof=1) if B > 1 else np.zeros(len(names))
        m_b = acc["s1"][ok] / v_n[ok, None]
        denom = (1.0 + TARGET_SUM * m_b) ** 2
        bio = TARGET_SUM**2 * (acc["s2"][ok] - v_n[ok, None] * m_b**2) / (v_n[ok, None] - 1.0) / denom
        meas = acc["meas"][ok] / v_n[ok, None] / denom
        w = v_n[ok] / v_n[ok].sum()
    return pd.DataFrame(
        {"batch": batch, "bio": w @ bio, "meas": w @ meas, "mean": mean}, index=pd.Index(names, name="gene")
    )


def _interactions(
    grid: _StateGrid, p: dict[str, Any], cond_targets: list[tuple[int, ...]], groups: _Groups, names: list[str]
) -> pd.DataFrame:
    """Noise-free genetic interactions of the population pseudobulk (efficacy quadrature, no heterogeneity)."""
    q_eta, q_w = _efficacy_quadrature(p)
    single = {tg[0]: c for c, tg in enumerate(cond_targets) if len(tg) == 1}

    def population_log(c: int, ctx: int, ti: int) -> np.ndarray:
        xq = grid.interpolate(*grid.rows(c, ctx, 0, ti, q_eta))
        return np.log1p(TARGET_SUM * (q_w @ (xq / xq.sum(axis=1, keepdims=True))))

    rows, keys = [], []
    for i, key in enumerate(groups.keys):
        c, ctx, ti = int(groups.cond[i]), int(groups.ctx[i]), int(groups.t_idx[i])
        if len(cond_targets[c]) != 2:
            continue
        a, b = (single[g] for g in cond_targets[c])
        rows.append(
            population_log(c, ctx, ti)
            - population_log(a, ctx, ti)
            - population_log(b, ctx, ti)
            + population_log(0, ctx, ti)
        )
        keys.append(key)
    values = np.array(rows).reshape(len(rows), len(names))
    return pd.DataFrame(values, index=pd.Index(keys, name="group"), columns=names)


def _group_means(
    acc: dict[str, np.ndarray], capture: np.ndarray, n_g: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``mean_log``, ``mean_log_specific`` (groups x genes) and ``mean_log_batch`` (groups x batches x genes).

    Log1p of ``TARGET_SUM`` times the mean noise-free proportion over the ``n_g`` cells of each group (NaN rows
    for empty groups), with capture 1, without the systematic response and with each batch's capture.
    """
    with np.errstate(invalid="ignore", divide="ignore"):  # empty groups give NaN rows
        mean_log = np.log1p(TARGET_SUM * acc["rho0"] / n_g[:, None])
        mean_spec = np.log1p(TARGET_SUM * acc["spec"] / n_g[:, None])
        mean_batch = np.log1p(TARGET_SUM * capture[None, :, :] * acc["xn"].transpose(1, 0, 2) / n_g[:, None, None])
    return mean_log, mean_spec, mean_batch


def _groups_table(groups: _Groups, conds: _Conditions, n_g: np.ndarray) -> pd.DataFrame:
    """``uns["truth"]["groups"]``: condition, medium, switch and read-out time, targets and cells of each group."""
    return pd.DataFrame(
        {
            "condition": [conds.labels[c] for c in groups.cond],
            "media": [f"m{m}" for m in groups.media],
            "media_time": groups.media_time,
            "time": groups.time,
            "n_targets": np.array([len(conds.targets[c]) for c in groups.cond], dtype=np.int64),
            "n_cells": n_g.astype(np.int64),
        },
        index=pd.Index(groups.keys, name="group"),
    )


def _fitness_table(p: dict[str, Any], conds: _Conditions, cells: _Cells) -> pd.DataFrame:
    """``uns["truth"]["fitness"]``: fitness, cells and design frequency of each perturbed condition."""
    labels = conds.labels
    return pd.DataFrame(
        {
            "fitness": conds.fitness,
            "n_cells": np.bincount(cells.cond, minlength=len(labels))[1:].astype(np.int64),
            "design_frequency": _design_frequency(p, len(labels))[1:],
        },
        index=pd.Index(labels[1:], name="condition"),
    )


def _truth_tables(
    net: SimulatedNetwork,
    extra: dict[str, np.ndarray],
    p: dict[str, Any],
    conds: _Conditions,
    cells: _Cells,
    groups: _Groups,
    grid: _StateGrid,
    acc: dict[str, np.ndarray],
    capture: np.ndarray,
    x_ctrl: np.ndarray,
) -> dict[str, Any]:
    """Assemble ``uns["truth"]``: the network's parameters followed by the truth tables.

    Parameters
    ----------
    net
        The true network.
    extra
        ``theta`` and ``cell_cycle`` loadings drawn with the network.
    p
        Validated parameters of :func:`~scmech.data.simulate_perturbseq`.
    conds
        The conditions.
    cells
        The cells.
    groups
        The truth groups.
    grid
        The state grid.
    acc
        Sums accumulated by :func:`~scmech.data._simulate._measurement._measure`.
    capture
        Capture factors (batches x genes).
    x_ctrl
        Baseline control state (its residual is ``control_residual``).

    Returns
    -------
    The ``uns["truth"]`` dictionary (keys documented in :func:`~scmech.data.simulate_perturbseq`).
    """
    names, G = net.gene_names, net.n_genes
    gidx = pd.Index(groups.keys, name="group")
    bnames = _batch_names(p["n_batches"])
    n_g = np.bincount(groups.code, minlength=len(groups.keys)).astype(float)
    mean_log, mean_spec, mean_batch = _group_means(acc, capture, n_g)
    mb_index = pd.Index([f"{k}|{b}" for k in groups.keys for b in bnames], name="group_batch")
    ss_rows = [
        grid.mean_row(int(c), int(x), int(t)) for c, x, t in zip(groups.cond, groups.ctx, groups.t_idx, strict=True)
    ]
    var_comp = _variance_components(acc, capture, groups, names)
    expressed = var_comp["mean"].to_numpy() >= _VAR_MEAN_THRESHOLD

    def gene_mean(col: str) -> float:
        return float(var_comp[col][expressed].mean()) if expressed.any() else float("nan")

    truth: dict[str, Any] = net.to_truth()
    truth.update(
        {
            "theta": extra["theta"],
            "cell_cycle_loadings": extra["cell_cycle"],
            "targets": [names[tg[0]] for tg in conds.targets if len(tg) == 1],
            "combinations": [lab for lab, tg in zip(conds.labels, conds.targets, strict=True) if len(tg) == 2],
            "conditions": list(conds.labels),
            "fitness": _fitness_table(p, conds, cells),
            "cell_systematic": cells.systematic.copy(),
            "cell_escaper": cells.escaper.copy(),
            "groups": _groups_table(groups, conds, n_g),
            "steady_state": pd.DataFrame(grid.flat[ss_rows], index=gidx, columns=names),
            "control_residual": float(np.linalg.norm(net.f(x_ctrl))),
            "mean_log": pd.DataFrame(mean_log, index=gidx, columns=names),
            "mean_log_specific": pd.DataFrame(mean_spec, index=gidx, columns=names),
            "mean_log_batch": pd.DataFrame(mean_batch.reshape(-1, G), index=mb_index, columns=names),
            "interaction": _interactions(grid, p, conds.targets, groups, names),
            "var_components": var_comp,
            "var_batch": gene_mean("batch"),
            "var_bio": gene_mean("bio"),
            "var_meas": gene_mean("meas"),
            "batch_log_capture": pd.DataFrame(np.log(capture), index=pd.Index(bnames, name="batch"), columns=names),
        }
    )
    return truth
