"""The design of the simulated cells: which cells get which condition, efficacy, batch, medium and time.

Cells are allocated to conditions by design frequency (and fitness, i.e. selection), spread evenly over media
(steady state) or protocols x read-out times (dynamic) and over batches by ``design``; each perturbed cell draws
an efficacy (a Beta distribution mixed with escapers), whether it shows the systematic response, its guides and
its library size. The cells are then shuffled into their final order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import beta as beta_dist

#: escapers have an efficacy uniform on [0, _ESCAPER_MAX]
_ESCAPER_MAX = 0.05


def _batch_names(n_batches: int) -> list[str]:
    """Batch names ``"b0"``, ``"b1"``..."""
    return [f"b{b}" for b in range(n_batches)]


def _allocate(n_total: int, weights: np.ndarray) -> np.ndarray:
    """Largest-remainder allocation of ``n_total`` items proportional to ``weights``."""
    if weights.size == 0:
        return np.zeros(0, dtype=np.int64)
    exact = n_total * weights / weights.sum()
    base = np.floor(exact).astype(np.int64)
    rem = n_total - int(base.sum())
    base[np.argsort(-(exact - base), kind="stable")[:rem]] += 1
    return base


def _design_frequency(p: dict[str, Any], n_cond: int) -> np.ndarray:
    """Frequency of each condition (control first) in the guide library, before selection."""
    if n_cond == 1:
        return np.ones(1)
    cf = p["control_fraction"]
    return np.concatenate([[cf], np.full(n_cond - 1, (1.0 - cf) / (n_cond - 1))])


def _balanced(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """Spread ``n`` items evenly over ``k`` slots in random order (all in slot 0 when ``k == 0``)."""
    return rng.permutation(np.arange(n) % k) if k > 0 else np.zeros(n, dtype=np.int64)


def _draw_efficacy(rng: np.random.Generator, n: int, p: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Efficacies of ``n`` cells: Beta(m kappa, (1 - m) kappa), escapers U(0, ``_ESCAPER_MAX``); and the escapers."""
    m, kappa = p["efficacy_mean"], p["efficacy_concentration"]
    eta = np.full(n, m) if m in (0.0, 1.0) else rng.beta(m * kappa, (1.0 - m) * kappa, n)
    escaper = rng.random(n) < p["escaper_fraction"]
    eta[escaper] = rng.uniform(0.0, _ESCAPER_MAX, int(escaper.sum()))
    return eta, escaper


def _efficacy_quadrature(p: dict[str, Any], n_points: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Points and weights of the efficacy distribution (Beta and escaper mixture) for population means."""
    m, kappa, e = p["efficacy_mean"], p["efficacy_concentration"], p["escaper_fraction"]
    q = (np.arange(n_points) + 0.5) / n_points
    main = np.full(n_points, m) if m in (0.0, 1.0) else beta_dist.ppf(q, m * kappa, (1.0 - m) * kappa)
    esc = q * _ESCAPER_MAX
    pts = np.concatenate([main, esc])
    wts = np.concatenate([np.full(n_points, (1.0 - e) / n_points), np.full(n_points, e / n_points)])
    return pts, wts


@dataclass
class _Cells:
    """Per-cell design, in the final (shuffled) cell order."""

    cond: np.ndarray  # condition index (0 = control)
    batch: np.ndarray
    eta: np.ndarray  # efficacy
    escaper: np.ndarray
    systematic: np.ndarray  # shows the shared response
    guide_idx: np.ndarray  # (cells, 2) guide numbers
    lib: np.ndarray  # library size
    ctx: np.ndarray  # state context: medium (steady state) or protocol (dynamic)
    t_idx: np.ndarray  # read-out time index (0 in the steady-state regime)
    media: np.ndarray  # medium at read-out
    media_time: np.ndarray  # switch time into that medium, NaN if not switched
    time: np.ndarray  # read-out time, NaN in the steady-state regime


def _condition_counts(p: dict[str, Any], fitness: np.ndarray) -> np.ndarray:
    r"""Count the cells of each condition (control first).

    With fitness, proportional to the design frequency times :math:`\exp(\text{fitness})` (at least one
    control); without, the controls are ``control_fraction`` of the cells and the perturbations share the rest.
    """
    n_cond = fitness.size + 1
    if n_cond > 1 and np.any(fitness != 0):
        # selection: abundance = design frequency x exp(fitness), controls neutral (fitness 0)
        counts = _allocate(p["n_cells"], _design_frequency(p, n_cond) * np.exp(np.concatenate([[0.0], fitness])))
        if counts[0] == 0:
            counts[0], counts[np.argmax(counts)] = 1, counts.max() - 1
    else:
        n_ctrl = p["n_cells"] if n_cond == 1 else max(1, round(p["control_fraction"] * p["n_cells"]))
        counts = np.concatenate([[n_ctrl], _allocate(p["n_cells"] - n_ctrl, np.ones(n_cond - 1))])
    return counts


def _assign_slots_and_batches(
    rng: np.random.Generator, p: dict[str, Any], counts: np.ndarray, n_slots: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Condition, slot (medium or protocol x time, balanced) and batch (by ``design``) of each cell, by condition.

    ``"confounded"``: the perturbations, in random order, round robin over the batches, the controls in batch 0;
    ``"controls_missing"``: the controls over all batches but the last; ``"spread"``: all over all batches.
    """
    n_cond, B = counts.size, p["n_batches"]
    conf_batch = np.zeros(n_cond, dtype=np.int64)  # confounded: perturbations round robin, controls in b0
    conf_batch[1:][rng.permutation(n_cond - 1)] = np.arange(n_cond - 1) % B
    cond, slot, batch = [], [], []
    for c, n_c in enumerate(counts):
        cond.append(np.full(n_c, c))
        slot.append(_balanced(rng, n_c, n_slots))
        if p["design"] == "confounded":
            batch.append(np.full(n_c, conf_batch[c]))
        elif p["design"] == "controls_missing" and c == 0:
            batch.append(_balanced(rng, n_c, B - 1))
        else:
            batch.append(_balanced(rng, n_c, B))
    return np.concatenate(cond), np.concatenate(slot), np.concatenate(batch)


def _draw_cell_attributes(
    rng: np.random.Generator, p: dict[str, Any], cond: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Efficacy, escaper and systematic flags (perturbed cells only), guide numbers and library size per cell."""
    n = cond.size
    perturbed = cond > 0
    eta, escaper = _draw_efficacy(rng, n, p)
    eta[~perturbed] = 0.0
    escaper &= perturbed
    systematic = perturbed & (rng.random(n) < p["systematic_fraction"])
    guide_idx = rng.integers(1, p["guides_per_target"] + 1, size=(n, 2))
    sd = p["library_size_sd"]
    lib = np.exp(rng.normal(math.log(p["library_size_mean"]) - sd**2 / 2, sd, n))
    return eta, escaper, systematic, guide_idx, lib


def _read_out(
    p: dict[str, Any], slot: np.ndarray, switches: np.ndarray, times: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """State context, time index, medium, switch time and read-out time of each cell from its slot.

    Dynamic regime: slot = protocol x time; a cell read out before its switch counts as not switched
    (medium 0, switch time NaN). Steady state: the slot is the medium.
    """
    n = slot.size
    if p["regime"] == "dynamic":
        ctx, t_idx = slot // times.size, slot % times.size
        time_ = times[t_idx]
        s = switches[ctx]
        with np.errstate(invalid="ignore"):
            media_time = np.where(s <= time_, s, np.nan)  # read out before the switch: not switched
        media = np.isfinite(media_time).astype(np.int64)
    else:
        ctx, t_idx, media = slot, np.zeros(n, dtype=np.int64), slot
        media_time, time_ = np.full(n, np.nan), np.full(n, np.nan)
    return ctx, t_idx, media, media_time, time_


def _design_cells(
    rng: np.random.Generator, p: dict[str, Any], fitness: np.ndarray, switches: np.ndarray, times: np.ndarray
) -> _Cells:
    """Cells over conditions (fitness-weighted), media or protocol x time (balanced) and batches (``design``).

    Parameters
    ----------
    rng
        Random stream of the design.
    p
        Validated parameters of :func:`~scmech.data.simulate_perturbseq`.
    fitness
        Fitness of each perturbed condition.
    switches, times
        Media switch times and read-out times of the dynamic regime (NaN in the steady-state regime).

    Returns
    -------
    The cells, shuffled.
    """
    n_slots = switches.size * times.size if p["regime"] == "dynamic" else p["n_media"]
    cond, slot, batch = _assign_slots_and_batches(rng, p, _condition_counts(p, fitness), n_slots)
    eta, escaper, systematic, guide_idx, lib = _draw_cell_attributes(rng, p, cond)
    order = rng.permutation(cond.size)
    cond, slot, batch, eta, escaper, systematic, guide_idx, lib = (
        a[order] for a in (cond, slot, batch, eta, escaper, systematic, guide_idx, lib)
    )
    ctx, t_idx, media, media_time, time_ = _read_out(p, slot, switches, times)
    return _Cells(cond, batch, eta, escaper, systematic, guide_idx, lib, ctx, t_idx, media, media_time, time_)
