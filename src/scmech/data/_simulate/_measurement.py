r"""The measurement of the simulated cells: heterogeneity, capture, library size, counts and dropout.

A cell's noise-free state (``_states``) is multiplied by :math:`\exp(\epsilon_c)`, a per-gene Gaussian
(``bio_sd``) plus a rank-2 "cell-cycle" program. The measurement operator :math:`\mathcal O_b` of its batch
:math:`b` then has capture :math:`s_{bg}`, proportions :math:`\rho_{cg} = x_{cg}s_{bg}/\sum_h x_{ch}s_{bh}`,
library size :math:`\ell_c` and :math:`y_{cg}\sim\mathrm{NB}(\ell_c\rho_{cg}, \theta_g)`, optionally
zero-inflated. Along the way the sums behind the truth tables (``_truth``) are accumulated, in chunks of cells.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from scmech._constants import TARGET_SUM

from ._random_network import _CELL_CYCLE_RANK
from ._states import _cell_rows

if TYPE_CHECKING:
    from ._cells import _Cells
    from ._groups import _Groups
    from ._states import _StateGrid

#: cells per chunk of the measurement
_CHUNK = 8192


def _empty_sums(n_groups: int, n_genes: int, n_batches: int) -> dict[str, np.ndarray]:
    """Zero accumulators of :func:`_measure` (their meaning is documented there)."""
    return {
        "rho0": np.zeros((n_groups, n_genes)),
        "spec": np.zeros((n_groups, n_genes)),
        "xn": np.zeros((n_batches, n_groups, n_genes)),
        "n": np.zeros(n_batches),
        "s1": np.zeros((n_batches, n_genes)),
        "s2": np.zeros((n_batches, n_genes)),
        "meas": np.zeros((n_batches, n_genes)),
    }


def _group_sum(codes: np.ndarray, n_groups: int, values: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Sum of the (weighted) rows of ``values`` per group ``codes`` (groups x columns)."""
    m = codes.size
    w = np.ones(m) if weights is None else weights
    return sp.csr_matrix((w, (codes, np.arange(m))), shape=(n_groups, m)) @ values


def _heterogeneity(
    rng: np.random.Generator, p: dict[str, Any], n_cells: int, n_genes: int, loadings: np.ndarray
) -> np.ndarray:
    r"""Multiplicative cell-to-cell heterogeneity :math:`\exp(\epsilon_c)` (cells x genes).

    :math:`\epsilon_c` is a per-gene Gaussian with SD ``bio_sd`` plus the cell-cycle program (``loadings``, genes x
    rank) with standard normal scores when ``cell_cycle_sd > 0``.
    """
    eps = rng.standard_normal((n_cells, n_genes)) * p["bio_sd"]
    if p["cell_cycle_sd"] > 0:
        eps += rng.standard_normal((n_cells, _CELL_CYCLE_RANK)) @ loadings.T
    return np.exp(eps)


def _add_state_sums(
    acc: dict[str, np.ndarray],
    codes: np.ndarray,
    x: np.ndarray,
    on: np.ndarray,
    x_on_specific: np.ndarray | None,
    capture: np.ndarray,
) -> None:
    """Add the noise-free group sums of a chunk of cells to ``acc`` (``rho0``, ``spec`` and ``xn``).

    Parameters
    ----------
    acc
        Accumulators (:func:`_empty_sums`).
    codes
        Group of each cell of the chunk.
    x
        States of the chunk (cells x genes).
    on
        Positions in the chunk of the cells that show the systematic response.
    x_on_specific
        States of those cells without the systematic response (``None`` when there are none).
    capture
        Capture factors (batches x genes).
    """
    n_groups = acc["rho0"].shape[0]
    rho0 = x / x.sum(axis=1, keepdims=True)
    acc["rho0"] += _group_sum(codes, n_groups, rho0)
    if on.size:
        rho0 = rho0.copy()
        rho0[on] = x_on_specific / x_on_specific.sum(axis=1, keepdims=True)
    acc["spec"] += _group_sum(codes, n_groups, rho0)
    inv_norm = 1.0 / (x @ capture.T)  # (cells, batches)
    for b in range(capture.shape[0]):
        acc["xn"][b] += _group_sum(codes, n_groups, x, inv_norm[:, b])


def _draw_counts(
    rng: np.random.Generator,
    p: dict[str, Any],
    x: np.ndarray,
    capture: np.ndarray,
    lib: np.ndarray,
    theta: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    r"""Draw the counts of a chunk of cells measured with their own batch's capture (``capture``: cells x genes).

    Returns
    -------
    The counts :math:`y\sim\mathrm{NB}(\ell\rho, \theta)` (zero-inflated with probability ``dropout``) and the
    proportions :math:`\rho`.
    """
    xc = x * capture
    rho = xc / xc.sum(axis=1, keepdims=True)
    mu = lib[:, None] * rho
    y = rng.poisson(rng.gamma(theta, mu / theta))
    if p["dropout"] > 0:
        y[rng.random(y.shape) < p["dropout"]] = 0
    return y, rho


def _add_control_sums(
    acc: dict[str, np.ndarray],
    pi_d: float,
    rho: np.ndarray,
    batch: np.ndarray,
    lib: np.ndarray,
    theta: np.ndarray,
) -> None:
    """Add medium-0 control cells (proportions ``rho``, batches, library sizes) to the per-batch sums of ``acc``.

    ``n`` (cells), ``s1`` and ``s2`` (proportions and their squares) and ``meas``, the expected ZINB variance of
    1e4 y / l' with l' = (1 - dropout) l.
    """
    lib_eff = (1.0 - pi_d) * lib[:, None]
    meas = TARGET_SUM**2 * (rho / lib_eff + rho**2 * (1.0 / theta + pi_d) / (1.0 - pi_d))
    acc["n"] += np.bincount(batch, minlength=acc["n"].size)
    for name, val in (("s1", rho), ("s2", rho**2), ("meas", meas)):
        np.add.at(acc[name], batch, val)


def _measure(
    rng: np.random.Generator,
    p: dict[str, Any],
    grid: _StateGrid,
    cells: _Cells,
    groups: _Groups,
    capture: np.ndarray,
    theta: np.ndarray,
    loadings: np.ndarray,
) -> tuple[sp.csr_matrix, dict[str, np.ndarray]]:
    """Per-cell states, counts and the sums behind the truth tables, in chunks of cells.

    Sums: ``rho0`` / ``spec`` (noise-free proportions with capture 1, with and without the systematic
    response), ``xn`` (batches x groups x genes: sum of x / (x . s_b), so the mean proportion with batch b's
    capture is s_b times it over n), and over medium-0 controls per own batch ``n``, ``s1``, ``s2``
    (proportions and squares) and ``meas`` (expected measurement variance of 1e4 y / l').
    """
    n, G, B = cells.cond.size, grid.flat.shape[1], capture.shape[0]
    lo, hi, lo_s, hi_s, wt = _cell_rows(grid, cells)
    ctrl0 = (cells.cond == 0) & (cells.media == 0)
    acc = _empty_sums(len(groups.keys), G, B)
    blocks = []
    for start in range(0, n, _CHUNK):
        idx = np.arange(start, min(n, start + _CHUNK))
        het = _heterogeneity(rng, p, idx.size, G, loadings)
        x = grid.interpolate(lo[idx], hi[idx], wt[idx]) * het
        on = np.flatnonzero(cells.systematic[idx])
        x_on_specific = None
        if on.size:
            x_on_specific = grid.interpolate(lo_s[idx[on]], hi_s[idx[on]], wt[idx[on]]) * het[on]
        _add_state_sums(acc, groups.code[idx], x, on, x_on_specific, capture)
        y, rho = _draw_counts(rng, p, x, capture[cells.batch[idx]], cells.lib[idx], theta)
        blocks.append(sp.csr_matrix(y.astype(np.float32)))
        c0 = np.flatnonzero(ctrl0[idx])
        if c0.size:
            _add_control_sums(acc, p["dropout"], rho[c0], cells.batch[idx[c0]], cells.lib[idx[c0]], theta)
    return sp.vstack(blocks, format="csr"), acc
