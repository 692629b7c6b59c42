"""What a simulation perturbs: a random regulatory network, its single targets, combinations and conditions.

:func:`_build_network` draws an acyclic network (``_network`` explains why acyclic), the shared systematic and
cell-cycle programs, NB dispersions and the media programs; :func:`_choose_perturbations` picks the targeted
genes and the combinations of them; :func:`_conditions` turns them into the simulated conditions (the control
first) with their labels and fitness effects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import expit

from ._network import SimulatedNetwork, _gene_names

#: label of non-targeting control cells
CONTROL_LABEL = "NT"
#: rank of the cell-cycle-like program
_CELL_CYCLE_RANK = 2


def _signed_program(rng: np.random.Generator, genes: np.ndarray, strength: float, p_up: float) -> np.ndarray:
    """Log multipliers of a program on ``genes``: up with probability ``p_up``, size ``strength`` x U(0.5, 1.5)."""
    sign = np.where(rng.random(genes.size) < p_up, 1.0, -1.0)
    return strength * sign * rng.uniform(0.5, 1.5, genes.size)


def _random_regulation(rng: np.random.Generator, p: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Draw the acyclic signed regulation ``W`` and the regulators in topological order.

    ``regs[i]`` is regulated only by ``regs[:i]``; a few hub regulators (log-normal popularity) regulate many
    genes.

    Parameters
    ----------
    rng
        Random stream of the network.
    p
        Validated parameters of :func:`~scmech.data.simulate_perturbseq`.

    Returns
    -------
    ``W`` (genes x genes) and the regulators, in topological order.
    """
    n = p["n_genes"]
    n_reg = int(min(n - 1, max(2, round(p["regulator_fraction"] * n))))
    regs = rng.permutation(n)[:n_reg]  # topological order: regs[i] is regulated only by regs[:i]
    reg_pos = {int(g): i for i, g in enumerate(regs)}
    popularity = rng.lognormal(0.0, 1.0, n_reg)  # a few hubs regulate many genes
    W = np.zeros((n, n))
    for g in range(n):
        n_cand = reg_pos.get(g, n_reg)
        if n_cand == 0 or rng.random() < p["unregulated_fraction"]:
            continue
        k = int(min(n_cand, 1 + rng.poisson(p["regulators_per_gene"] - 1.0)))
        w = popularity[:n_cand] / popularity[:n_cand].sum()
        js = regs[rng.choice(n_cand, size=k, replace=False, p=w)]
        W[g, js] = np.where(rng.random(k) < 0.65, 1.0, -1.0) * rng.uniform(0.75, 2.5, k)
    return W, regs


def _media_programs(rng: np.random.Generator, p: dict[str, Any], regs: np.ndarray) -> np.ndarray:
    """Production multipliers (media x genes): ~10% of genes per medium, a third of them regulators.

    Regulators in the program make it propagate through the network; medium 0 (the baseline) is all ones.
    """
    n = p["n_genes"]
    media = np.ones((p["n_media"], n))
    n_prog = max(2, round(0.1 * n))
    for m in range(1, p["n_media"]):
        reg_part = rng.choice(regs, size=min(regs.size, max(1, n_prog // 3)), replace=False)
        rest = rng.choice(np.setdiff1d(np.arange(n), reg_part), size=n_prog - reg_part.size, replace=False)
        genes = np.concatenate([reg_part, rest])
        media[m, genes] = np.exp(_signed_program(rng, genes, p["media_strength"], 0.5))
    return media


def _build_network(rng: np.random.Generator, p: dict[str, Any]) -> tuple[SimulatedNetwork, dict[str, np.ndarray]]:
    """Draw the true network of a simulation and the per-gene parameters of its cells and measurement.

    Parameters
    ----------
    rng
        Random stream of the network.
    p
        Validated parameters of :func:`~scmech.data.simulate_perturbseq`.

    Returns
    -------
    The network and ``{"theta": NB inverse dispersions, "cell_cycle": loadings (genes x rank)}``.
    """
    n = p["n_genes"]
    W, regs = _random_regulation(rng, p)
    alpha = np.exp(rng.normal(0.0, p["alpha_sd"], n))
    gamma = np.exp(rng.normal(0.0, 0.25, n))
    basal = rng.uniform(0.05, 0.25, n)
    z0 = rng.normal(0.0, 0.75, n)
    offset = z0 - W.sum(axis=1)
    baseline = alpha * (basal + (1.0 - basal) * expit(z0)) / gamma
    # shared stress program (systematic variation): mostly up-regulated, ~8% of genes
    sys_genes = rng.choice(n, size=max(2, round(0.08 * n)), replace=False)
    systematic = np.zeros(n)
    systematic[sys_genes] = _signed_program(rng, sys_genes, p["systematic_strength"], 0.7)
    cell_cycle = np.zeros((n, _CELL_CYCLE_RANK))
    for r in range(_CELL_CYCLE_RANK):
        genes = rng.choice(n, size=max(2, round(0.1 * n)), replace=False)
        cell_cycle[genes, r] = rng.normal(0.0, 1.0, genes.size) * p["cell_cycle_sd"]
    theta = p["dispersion"] * np.exp(rng.normal(0.0, 0.25, n))
    media = _media_programs(rng, p, regs)
    net = SimulatedNetwork(
        W=W,
        alpha=alpha,
        gamma=gamma,
        basal=basal,
        offset=offset,
        baseline=baseline,
        media_effect=media,
        systematic_program=systematic,
        modality=p["modality"],
        activation_strength=p["activation_strength"],
        gene_names=_gene_names(n),
    )
    return net, {"theta": theta, "cell_cycle": cell_cycle}


def _choose_singles(rng: np.random.Generator, net: SimulatedNetwork, n_single: int) -> list[int]:
    """Single targets: half strong regulators (most targets), half weak genes, all reasonably expressed."""
    n = net.n_genes
    adj = net.W != 0  # adj[g, j]: j regulates g
    out_deg = adj.sum(axis=0)
    prop = net.baseline / net.baseline.sum()
    expressed = prop >= np.quantile(prop, 0.5)
    strong_pool = np.flatnonzero(expressed & (out_deg > 0))
    strong_pool = strong_pool[np.argsort(-out_deg[strong_pool], kind="stable")]
    n_strong = min(math.ceil(n_single / 2), strong_pool.size)
    strong = rng.choice(strong_pool[: max(n_strong, min(strong_pool.size, 2 * n_strong))], n_strong, replace=False)
    weak_pool = np.setdiff1d(np.flatnonzero(expressed & (out_deg <= 1)), strong)
    n_weak = min(n_single - n_strong, weak_pool.size)
    weak = rng.choice(weak_pool, n_weak, replace=False)
    chosen = np.concatenate([strong, weak]).astype(int)
    if chosen.size < n_single:
        rest = np.setdiff1d(np.arange(n), chosen)
        chosen = np.concatenate([chosen, rng.choice(rest, n_single - chosen.size, replace=False)])
    return sorted(int(g) for g in chosen)


def _choose_pairs(
    rng: np.random.Generator, net: SimulatedNetwork, singles: list[int], n_comb: int
) -> list[tuple[int, int]]:
    """Choose combinations of two single targets, preferring pairs that share downstream genes (within two steps)."""
    a2 = (net.W != 0).astype(np.int64)
    reach = (a2 + a2 @ a2) > 0  # reach[g, j]: g within two steps downstream of j
    pairs = [(a, b) for i, a in enumerate(singles) for b in singles[i + 1 :]]
    overlap = np.array([int((reach[:, a] & reach[:, b]).sum()) for a, b in pairs])
    order = np.argsort(-overlap, kind="stable")
    good = order[overlap[order] > 0]
    pool = good[: max(n_comb, min(good.size, 2 * n_comb))]
    pick = list(rng.choice(pool, min(n_comb, pool.size), replace=False)) if pool.size else []
    if len(pick) < n_comb:
        rest = np.setdiff1d(np.arange(len(pairs)), pick)
        pick += list(rng.choice(rest, n_comb - len(pick), replace=False))
    return sorted(pairs[i] for i in pick)


def _choose_perturbations(
    rng: np.random.Generator, net: SimulatedNetwork, n_single: int, n_comb: int
) -> tuple[list[int], list[tuple[int, int]]]:
    """Choose single targets and combinations.

    Singles: half strong regulators (most targets), half weak genes, all reasonably expressed; combinations:
    pairs sharing downstream genes (within two steps).
    """
    singles = _choose_singles(rng, net, n_single)
    if n_comb == 0:
        return singles, []
    return singles, _choose_pairs(rng, net, singles, n_comb)


@dataclass
class _Conditions:
    """The simulated conditions: the control first, then the singles, then the combinations."""

    targets: list[tuple[int, ...]]  # target gene indices of each condition (() for the control)
    labels: list[str]  # canonical labels, targets sorted: "NT", "G0012", "G0012+G0045"
    fitness: np.ndarray  # fitness of each perturbed condition (the control's is 0)


def _conditions(
    rng: np.random.Generator,
    p: dict[str, Any],
    names: list[str],
    singles: list[int],
    pairs: list[tuple[int, int]],
) -> _Conditions:
    """Conditions with canonical labels and fitness (a combination's fitness is the sum of its targets').

    Parameters
    ----------
    rng
        Random stream of the perturbations (draws one fitness per single target).
    p
        Validated parameters of :func:`~scmech.data.simulate_perturbseq`.
    names
        Gene names.
    singles, pairs
        Chosen single targets and combinations (:func:`_choose_perturbations`).

    Returns
    -------
    The conditions.
    """
    fit_single = dict(zip(singles, rng.normal(0.0, 1.0, len(singles)) * p["fitness_sd"], strict=True))
    targets: list[tuple[int, ...]] = [(), *[(g,) for g in singles], *pairs]
    labels = [CONTROL_LABEL] + ["+".join(sorted(names[g] for g in tg)) for tg in targets[1:]]
    fitness = np.array([sum(fit_single[g] for g in tg) for tg in targets[1:]])
    return _Conditions(targets, labels, fitness)
