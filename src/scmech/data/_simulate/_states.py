r"""Noise-free cell states: the state grid solved per condition and context, and each cell's place on it.

Per condition (and medium in the steady-state regime, or protocol and read-out time in the dynamic regime) the
states are solved on a grid of efficacies, with and without the systematic response, all grid rows at once:
fixed points in the steady-state regime, RK4 trajectories from the baseline control fixed point in the dynamic
regime. A cell's state is interpolated linearly at its efficacy :math:`\eta_c` (and multiplied by its
heterogeneity in ``_measurement``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ._network import _warn_residual

if TYPE_CHECKING:
    from ._cells import _Cells
    from ._network import SimulatedNetwork


@dataclass
class _StateGrid:
    """Noise-free states per (time, condition, context, systematic flag, efficacy level), flattened to rows."""

    flat: np.ndarray  # (times * rows, genes)
    n_rows: int
    block: dict[tuple[int, int, int], int]  # (condition, context, systematic) -> first row
    n_grid: int  # efficacy levels linspace(0, 1, n_grid), then one row at efficacy_mean

    def rows(self, c: int, ctx: int, sflag: int, ti: int, eta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows bracketing efficacies ``eta`` and the linear interpolation weight of the upper row."""
        start = ti * self.n_rows + self.block[(c, ctx, sflag)]
        if c == 0:  # controls: one row, efficacy irrelevant
            return np.full(eta.size, start), np.full(eta.size, start), np.zeros(eta.size)
        pos = np.clip(eta, 0.0, 1.0) * (self.n_grid - 1)
        i0 = np.minimum(np.floor(pos).astype(np.int64), self.n_grid - 2)
        return start + i0, start + i0 + 1, pos - i0

    def mean_row(self, c: int, ctx: int, ti: int) -> int:
        """Row of the state at the mean efficacy without the systematic response."""
        return ti * self.n_rows + self.block[(c, ctx, 0)] + (0 if c == 0 else self.n_grid)

    def interpolate(self, lo: np.ndarray, hi: np.ndarray, w: np.ndarray) -> np.ndarray:
        """States interpolated between rows ``lo`` and ``hi``."""
        return self.flat[lo] * (1.0 - w)[:, None] + self.flat[hi] * w[:, None]


def _grid_layout(
    p: dict[str, Any], cond_targets: list[tuple[int, ...]], n_ctx: int, has_sys: bool
) -> tuple[dict[tuple[int, int, int], int], list[int], np.ndarray, np.ndarray, np.ndarray]:
    """Rows of the state grid: per (condition, context, systematic flag) a block of efficacy levels.

    A perturbed condition has ``n_efficacy_grid`` levels on [0, 1] and one at ``efficacy_mean``, with and without
    the systematic response (when it is on); the control has one row per context.

    Returns
    -------
    The first row of each block, and per row its condition, context, efficacy and systematic strength.
    """
    levels = np.concatenate([np.linspace(0.0, 1.0, p["n_efficacy_grid"]), [p["efficacy_mean"]]])
    block: dict[tuple[int, int, int], int] = {}
    r_cond, r_ctx, r_eta, r_sys = [], [], [], []
    for c in range(len(cond_targets)):
        for ctx in range(n_ctx):
            for sflag in (0, 1) if (c > 0 and has_sys) else (0,):
                block[(c, ctx, sflag)] = len(r_cond)
                lv = levels if c > 0 else np.zeros(1)
                r_cond += [c] * lv.size
                r_ctx += [ctx] * lv.size
                r_eta += lv.tolist()
                r_sys += [float(sflag)] * lv.size
    return block, r_cond, np.array(r_ctx), np.array(r_eta), np.array(r_sys)


def _solve_state_grid(
    net: SimulatedNetwork,
    p: dict[str, Any],
    cond_targets: list[tuple[int, ...]],
    switches: np.ndarray,
    times: np.ndarray,
    has_sys: bool,
) -> _StateGrid:
    """Solve fixed points (steady state) or RK4 trajectories (dynamic) on the efficacy grid, all rows at once.

    Parameters
    ----------
    net
        The true network.
    p
        Validated parameters of :func:`~scmech.data.simulate_perturbseq`.
    cond_targets
        Target genes of each condition (the control first).
    switches, times
        Media switch times and read-out times of the dynamic regime (NaN in the steady-state regime).
    has_sys
        Whether the systematic response is on (grid rows with it are solved only then).

    Returns
    -------
    The state grid.

    Raises
    ------
    ValueError
        If a state is not finite and non-negative (production rates that overflow).
    """
    try:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            states = _solve_states(net, p, cond_targets, switches, times, has_sys)
    except np.linalg.LinAlgError as e:  # Newton's fallback on a network whose rates overflowed
        states = np.full(1, np.nan)
        cause = e
    else:
        cause = None
    if not np.all(np.isfinite(states)) or states.min() < 0:
        msg = (
            "Simulated states are not finite and non-negative: the production rates overflow. Lower media_strength, "
            f"systematic_strength, activation_strength or alpha_sd (got {p['media_strength']:g}, "
            f"{p['systematic_strength']:g}, {p['activation_strength']:g}, {p['alpha_sd']:g})."
        )
        raise ValueError(msg) from cause
    n_ctx = switches.size if p["regime"] == "dynamic" else p["n_media"]
    block, _, r_ctx, _, _ = _grid_layout(p, cond_targets, n_ctx, has_sys)
    return _StateGrid(states.reshape(-1, net.n_genes), r_ctx.size, block, p["n_efficacy_grid"])


def _solve_states(
    net: SimulatedNetwork,
    p: dict[str, Any],
    cond_targets: list[tuple[int, ...]],
    switches: np.ndarray,
    times: np.ndarray,
    has_sys: bool,
) -> np.ndarray:
    """Solve the rows of the state grid (times x rows x genes); the steps of :func:`_solve_state_grid`."""
    dynamic = p["regime"] == "dynamic"
    n_ctx = switches.size if dynamic else p["n_media"]
    block, r_cond, r_ctx, r_eta, r_sys = _grid_layout(p, cond_targets, n_ctx, has_sys)
    n_rows = r_ctx.size
    pair_rows = np.array([r for r, c in enumerate(r_cond) for _ in cond_targets[c]], dtype=np.int64)
    pair_cols = np.array([g for c in r_cond for g in cond_targets[c]], dtype=np.int64)
    if dynamic:
        x0, res = net._solve_fixed_points(net.production()[None, :])
        _warn_residual(res)
        t_start = float(min(0.0, np.nanmin(switches) if np.isfinite(switches).any() else 0.0))
        states = net._integrate_batch(
            np.broadcast_to(x0[0], (n_rows, net.n_genes)),
            t_start,
            times,
            media_before=np.zeros(n_rows, dtype=np.int64),
            media_after=np.ones(n_rows, dtype=np.int64),
            switch=switches[r_ctx],
            pair_rows=pair_rows,
            pair_cols=pair_cols,
            efficacy=r_eta,
            systematic=r_sys,
            onset_tau=p["onset_tau"],
        )  # (times, rows, genes)
    else:
        prod = net.alpha * net.media_effect[r_ctx]
        prod[r_sys > 0] *= np.exp(net.systematic_program)
        prod[pair_rows, pair_cols] *= net.perturbation_factor(r_eta[pair_rows])
        states, res = net._solve_fixed_points(prod)
        _warn_residual(res)
        states = states[None]
    return states


def _cell_rows(grid: _StateGrid, cells: _Cells) -> tuple[np.ndarray, ...]:
    """Per-cell bracketing rows with the cell's systematic flag (lo, hi) and without it (lo_s, hi_s), weights.

    Parameters
    ----------
    grid
        The state grid.
    cells
        The cells.

    Returns
    -------
    ``lo``, ``hi``, ``lo_s``, ``hi_s`` (row indices into ``grid.flat``) and ``wt``, the weight of the upper row.
    """
    n = cells.cond.size
    lo, hi, lo_s, hi_s = (np.empty(n, np.int64) for _ in range(4))
    wt = np.empty(n)
    key = np.stack([cells.cond, cells.ctx, cells.t_idx], axis=1)
    uniq, inverse = np.unique(key, axis=0, return_inverse=True)
    for k, (c, ctx, ti) in enumerate(uniq):
        sel = np.flatnonzero(inverse.ravel() == k)
        lo_s[sel], hi_s[sel], wt[sel] = grid.rows(int(c), int(ctx), 0, int(ti), cells.eta[sel])
        lo[sel], hi[sel] = lo_s[sel], hi_s[sel]
        on = sel[cells.systematic[sel]]
        if on.size:
            lo[on], hi[on], _ = grid.rows(int(c), int(ctx), 1, int(ti), cells.eta[on])
    return lo, hi, lo_s, hi_s, wt
