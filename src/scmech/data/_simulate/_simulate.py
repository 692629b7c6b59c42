"""The simulator :func:`simulate_perturbseq`, composed of the steps of the other modules of this package.

Parameters are validated (``_params``), a network is drawn and perturbations chosen (``_random_network``), cells
are designed (``_cells``) and grouped (``_groups``), states solved (``_states``), cells measured
(``_measurement``) and the truth tables assembled (``_truth``); this module writes the AnnData.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Literal

import anndata as ad
import numpy as np
import pandas as pd

from ._cells import _batch_names, _design_cells
from ._groups import _make_groups
from ._measurement import _measure
from ._params import _validate
from ._random_network import CONTROL_LABEL, _build_network, _choose_perturbations, _conditions
from ._states import _solve_state_grid
from ._truth import _VAR_MEAN_THRESHOLD, _truth_tables

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._cells import _Cells
    from ._network import SimulatedNetwork
    from ._random_network import _Conditions

__all__ = ["simulate_perturbseq"]


def _cell_table(p: dict[str, Any], cells: _Cells, conds: _Conditions, names: list[str]) -> pd.DataFrame:
    """``obs`` of the simulation: condition, batch, medium, efficacy, guide, targets, library size (and times).

    Parameters
    ----------
    p
        Validated parameters of :func:`simulate_perturbseq`.
    cells
        The cells.
    conds
        The conditions.
    names
        Gene names.

    Returns
    -------
    One row per cell, index ``"cell_000000"``...
    """
    labels, cond_targets = conds.labels, conds.targets
    guide = [
        "+".join(f"{names[t]}_g{gi}" for t, gi in zip(cond_targets[c], gix, strict=False))
        if c
        else f"{CONTROL_LABEL}_g{gix[0]}"
        for c, gix in zip(cells.cond, cells.guide_idx, strict=True)
    ]
    n = cells.cond.size
    width = max(6, len(str(n - 1)))
    obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical.from_codes(cells.cond, categories=labels),
            "batch": pd.Categorical.from_codes(cells.batch, categories=_batch_names(p["n_batches"])),
            "media": pd.Categorical.from_codes(cells.media, categories=[f"m{i}" for i in range(p["n_media"])]),
            "efficacy": cells.eta.astype(np.float64),
            "guide": pd.Categorical(guide),
            "n_targets": np.array([len(cond_targets[c]) for c in cells.cond], dtype=np.int64),
            "true_library_size": cells.lib.astype(np.float64),
        },
        index=pd.Index([f"cell_{i:0{width}d}" for i in range(n)]),
    )
    if p["regime"] == "dynamic":
        obs["time"] = cells.time.astype(np.float64)
        obs["media_time"] = cells.media_time.astype(np.float64)
    return obs


def _gene_table(net: SimulatedNetwork, conds: _Conditions) -> pd.DataFrame:
    """``var`` of the simulation: whether each gene is targeted and whether it regulates others."""
    return pd.DataFrame(
        {
            "is_target": np.isin(np.arange(net.n_genes), [g for tg in conds.targets for g in tg]),
            "is_regulator": (net.W != 0).any(axis=0),
        },
        index=pd.Index(net.gene_names),
    )


def _simulation_record(p: dict[str, Any], var: pd.DataFrame) -> dict[str, Any]:
    """``uns["simulation"]``: the resolved parameters and a few derived values."""
    sim = dict(p)
    sim["time_points"] = [float(t) for t in p["time_points"]]
    sim["media_switch_times"] = [float(s) for s in p["media_switch_times"]]
    sim["n_regulators"] = int(var["is_regulator"].sum())
    sim["var_mean_threshold"] = _VAR_MEAN_THRESHOLD
    sim["control_label"] = CONTROL_LABEL
    return sim


def simulate_perturbseq(
    n_cells: int = 5000,
    n_genes: int = 200,
    *,
    n_perturbations: int = 20,
    n_combinations: int = 5,
    regime: Literal["steady_state", "dynamic"] = "steady_state",
    modality: Literal["CRISPRi", "CRISPRko", "CRISPRa"] = "CRISPRi",
    n_media: int | None = None,
    media_switch_times: Sequence[float | None] | None = (-1.0, 1.0),
    time_points: Sequence[float] = (0.5, 1.0, 2.0, 4.0),
    onset_tau: float = 0.0,
    control_fraction: float = 0.1,
    guides_per_target: int = 3,
    efficacy_mean: float = 0.8,
    efficacy_concentration: float = 10.0,
    escaper_fraction: float = 0.1,
    activation_strength: float = 3.0,
    regulator_fraction: float = 0.1,
    regulators_per_gene: float = 3.0,
    unregulated_fraction: float = 0.2,
    media_strength: float = 1.0,
    bio_sd: float = 0.2,
    cell_cycle_sd: float = 0.3,
    systematic_fraction: float = 0.6,
    systematic_strength: float = 0.5,
    fitness_sd: float = 0.0,
    n_batches: int = 3,
    batch_sd: float = 0.2,
    design: Literal["spread", "confounded", "controls_missing"] = "spread",
    library_size_mean: float = 3000.0,
    library_size_sd: float = 0.3,
    dispersion: float = 10.0,
    dropout: float = 0.0,
    alpha_sd: float = 2.0,
    n_efficacy_grid: int = 11,
    seed: int = 0,
) -> ad.AnnData:
    r"""Simulate a Perturb-seq screen from a gene-regulatory ODE and a measurement operator.

    The true network, states and noise-free pseudobulks are returned in ``uns["truth"]`` (docstring of the
    ``scmech.data._simulate`` package for the equations). Network, perturbations, design and cells use separate
    random streams spawned from ``seed``, so the network and the chosen targets of a seed do not depend on
    ``n_cells`` or the design.

    Parameters
    ----------
    n_cells
        Number of cells.
    n_genes
        Number of genes (all measured; all targets are genes).
    n_perturbations
        Number of single-target perturbations (at most ``n_genes // 2``); half strong regulators (many
        downstream genes), half genes with at most one downstream gene.
    n_combinations
        Number of two-target combinations of the single targets, chosen among pairs with shared downstream genes.
    regime
        ``"steady_state"``: every cell at the fixed point of its (medium, perturbation, efficacy), cells of each
        condition (controls included) spread evenly over ``n_media`` media. ``"dynamic"``: cells start at the
        baseline control fixed point, the perturbation acts at t = 0, a switch into medium 1 happens at one of
        ``media_switch_times`` and cells are read out at one of ``time_points``.
    modality
        CRISPRi/CRISPRko scale target production by :math:`1-\eta`, CRISPRa by :math:`1+a\eta`.
    n_media
        Number of media (medium 0 is the baseline). Default: 1, or 2 in the dynamic regime with switches.
    media_switch_times
        Dynamic regime: switch times into medium 1 relative to the perturbation (negative: before it). Each cell
        gets one protocol; ``None``/NaN entries mean no switch; ``None`` alone: a plain relaxation time course.
        A cell read out before its switch is a not-switched cell (``media`` "m0", ``media_time`` NaN).
    time_points
        Dynamic regime: read-out times (days after the perturbation, >= 0).
    onset_tau
        Dynamic regime: onset delay, :math:`\eta(t) = \eta_\infty(1-e^{-t/\tau})` (0 = instantaneous). The
        systematic response ramps in the same way. Ignored in the steady-state regime.
    control_fraction
        Fraction of non-targeting control cells.
    guides_per_target
        Guides per target (labels only; all guides of a target share one efficacy distribution).
    efficacy_mean, efficacy_concentration
        Efficacy :math:`\eta_c\sim\mathrm{Beta}(m\kappa, (1-m)\kappa)`. A combination uses one shared
        :math:`\eta_c` for both targets.
    escaper_fraction
        Fraction of perturbed cells that escape (:math:`\eta_c\sim U(0, 0.05)`).
    activation_strength
        :math:`a` for CRISPRa.
    regulator_fraction
        Fraction of genes that regulate others.
    regulators_per_gene
        Mean number of regulators of a regulated gene (1 + Poisson).
    unregulated_fraction
        Fraction of genes without regulators.
    media_strength
        Scale of the log production multipliers of the media programs (~10% of genes, a third regulators).
    bio_sd
        Per-gene log-normal cell-to-cell heterogeneity.
    cell_cycle_sd
        Scale of the shared rank-2 cell-cycle-like program (0 turns it off).
    systematic_fraction
        Fraction of perturbed cells showing the shared systematic response.
    systematic_strength
        Scale of its log production multipliers (~8% of genes, mostly up); 0 turns it off.
    fitness_sd
        SD of per-target fitness effects (selection, natural-log scale; a combination's fitness is the sum of
        its targets'). With fitness, the number of cells of every condition is proportional to its design
        frequency (``control_fraction`` for the controls, the rest shared equally by the perturbations) times
        :math:`\exp(\text{fitness})`, with fitness 0 for the controls: the log ratio of a perturbation's cells
        to the controls', relative to the design, is its fitness. Without (0), the controls are exactly
        ``control_fraction`` of the cells. Selection acts on abundance only, not on expression, and is the
        same at every time point.
    n_batches
        Number of batches ``"b0"``...
    batch_sd
        SD of the log capture factors :math:`\log s_{bg}`.
    design
        ``"spread"``: every condition (controls included) spread evenly over all batches. ``"confounded"``: the
        perturbations, in random order, are assigned round robin to batches 0, 1, ..., each perturbation's cells
        all in its one batch; the controls are all in batch 0 (batch 0 may also hold perturbations, the others
        never hold controls). ``"controls_missing"``: perturbations spread over all batches, controls over all
        but the last batch.
    library_size_mean, library_size_sd
        :math:`\log \ell_c \sim N(\log(\text{mean}) - \text{sd}^2/2, \text{sd})`, so
        :math:`E[\ell_c]` = ``library_size_mean``.
    dispersion
        Typical NB inverse dispersion :math:`\theta_g` (per gene :math:`\theta\,e^{N(0, 0.25^2)}`).
    dropout
        Zero-inflation probability (0 = plain NB).
    alpha_sd
        SD of the log production rates (expression range and sparsity).
    n_efficacy_grid
        Number of efficacy levels on [0, 1] at which states are solved; cells interpolate linearly.
    seed
        Random seed.

    Returns
    -------
    AnnData with raw counts (``float32`` CSR) in ``X`` and:

    ``var``
        ``is_target`` (gene is targeted by some perturbation), ``is_regulator`` (gene regulates others).
    ``obs`` (index ``"cell_000000"``...)
        ``perturbation`` (categorical: ``"NT"``, ``"G0012"``, ``"G0012+G0045"``), ``batch`` (categorical
        ``"b0"``...), ``media`` (categorical ``"m0"``...), ``efficacy`` (true :math:`\eta_c`, 0 for controls),
        ``guide`` (``"G0012_g2"``, ``"G0012_g1+G0045_g3"``, ``"NT_g1"``), ``n_targets`` (0/1/2),
        ``true_library_size`` (:math:`\ell_c`); in the dynamic regime also ``time`` (days since the
        perturbation) and ``media_time`` (switch time into ``media``, NaN if not switched).
    ``uns["simulation"]``
        All parameters (resolved: ``n_media``; ``media_switch_times`` as a list with NaN for no switch;
        ``time_points`` sorted), plus ``regime``, ``seed``, ``n_regulators``, ``var_mean_threshold``.
    ``uns["truth"]``
        Network (:meth:`SimulatedNetwork.to_truth`): ``W``, ``alpha``, ``gamma``, ``basal``, ``offset``,
        ``baseline``, ``media_effect`` (media x genes multipliers), ``systematic_program`` (log multipliers),
        ``modality``, ``activation_strength``, ``gene_names``. Also: ``theta`` (NB inverse dispersions),
        ``cell_cycle_loadings`` (genes x 2), ``targets`` (single targets), ``combinations`` (labels),
        ``conditions`` (all condition labels, NT first), ``fitness`` (DataFrame per perturbed condition:
        ``fitness``, ``n_cells``, ``design_frequency`` the condition's share of the guide library before
        selection; the controls' share is ``control_fraction``), ``cell_systematic`` and ``cell_escaper``
        (bool per cell, in ``obs`` order).

        *Groups.* Truth tables are indexed by group keys (:func:`simulation_group_keys`):
        ``"{condition}|{media}"`` (steady state) or ``"{condition}|{media}|{media_time}|{time}"`` (dynamic).
        ``groups`` is a DataFrame with one row per possible group (also empty ones): ``condition``, ``media``,
        ``media_time``, ``time`` (NaN in the steady-state regime), ``n_targets``, ``n_cells``.

        ``steady_state``: DataFrame (groups x genes) of true states at efficacy ``efficacy_mean`` without the
        systematic response (the state at the read-out time in the dynamic regime); ``control_residual``:
        :math:`\|f(x^\star_\varnothing; m_0)\|_2` of the solved baseline control state.

        ``mean_log``: DataFrame (groups x genes) of :math:`\log(1 + 10^4 \bar\rho)` with
        :math:`\bar\rho` the mean over the group's realised cells of their noise-free proportions
        (capture 1): the truth behind :func:`~scmech.data._pseudobulk.pseudobulk` without batch effect and
        without measurement noise (conditional on the cells' states, efficacies, heterogeneity and systematic
        flags); NaN rows for empty groups. ``mean_log_specific``: the same with the systematic response switched
        off in every cell (equal to ``mean_log`` for controls). ``mean_log_batch``: the same with the capture of
        each batch, index ``"{group}|{batch}"`` for every group and batch (counterfactual where the group has
        no cells in that batch).

        ``interaction``: DataFrame (combination groups x genes),
        :math:`L(A{+}B) - L(A) - L(B) + L(\varnothing)` in the same medium/protocol/time, with :math:`L` the
        population pseudobulk :math:`\log(1+10^4 E_\eta[\rho(x(\eta))])` over the efficacy distribution
        (exact quadrature, no heterogeneity, no systematic response): the noise-free genetic interaction.
        (The same contrast of ``mean_log`` also carries finite-cell noise and :math:`-1\times` the systematic
        shift, since the control lacks it.)

        Variance components on the scale of :math:`\log(1 + 10^4\bar\rho)`, by the delta method, over control
        cells in medium 0 (any time point; all sit at the baseline fixed point): ``var_components`` (genes x
        ``batch``, ``bio``, ``meas``, ``mean``). ``mean`` is :math:`10^4 E_c[\rho^0_{cg}]` (capture 1).
        Per batch ``b`` with own capture: ``bio`` = :math:`\mathrm{Var}_c(10^4\rho_{cg})/(1+10^4 m_{bg})^2`,
        ``meas`` = :math:`E_c[\mathrm{Var}(10^4 y_{cg}/\ell'_c)]/(1+10^4 m_{bg})^2` with the ZINB variance and
        :math:`\ell'_c=(1-\pi)\ell_c` (the expected total count, standing in for the observed total used by
        pseudobulks; its randomness is ignored), both averaged over batches weighted by their control counts.
        ``batch`` = variance over the realised batches (ddof=1; 0 for one batch) of the noise-free control
        pseudobulk with each batch's capture over all medium-0 controls. A pseudobulk of ``n`` controls of batch
        ``b`` thus varies by about ``(bio + meas) / n`` around its batch's value. Scalars ``var_batch``,
        ``var_bio``, ``var_meas``: means over genes with ``mean >= var_mean_threshold`` (1 count per 10^4).
        ``batch_log_capture``: DataFrame (batches x genes) of :math:`\log s_{bg}`.

    Examples
    --------
    >>> adata = simulate_perturbseq(2000, 100, n_perturbations=6, n_combinations=2, seed=1)
    >>> adata.obs["perturbation"].cat.categories[0]
    'NT'
    >>> from scmech.data import pseudobulk
    >>> keys = simulation_group_keys(adata.obs)
    >>> observed = pseudobulk(adata, keys)
    >>> truth = adata.uns["truth"]["mean_log"].loc[observed.index]
    """
    p = _validate(locals())
    rng_net, rng_pert, rng_design, rng_cells = np.random.default_rng(p["seed"]).spawn(4)
    net, extra = _build_network(rng_net, p)
    singles, pairs = _choose_perturbations(rng_pert, net, p["n_perturbations"], p["n_combinations"])
    conds = _conditions(rng_pert, p, net.gene_names, singles, pairs)
    dynamic = p["regime"] == "dynamic"
    switches = np.asarray(p["media_switch_times"], dtype=float) if dynamic else np.array([np.nan])
    times = np.asarray(p["time_points"], dtype=float) if dynamic else np.array([np.nan])
    has_sys = p["systematic_fraction"] > 0 and p["systematic_strength"] > 0

    # design, states, measurement
    cells = _design_cells(rng_design, p, conds.fitness, switches, times)
    capture = np.exp(rng_design.normal(0.0, 1.0, (p["n_batches"], net.n_genes)) * p["batch_sd"])
    if not has_sys:
        cells.systematic[:] = False
    groups = _make_groups(conds.labels, cells, switches, times, p)
    grid = _solve_state_grid(net, p, conds.targets, switches, times, has_sys)
    X, acc = _measure(rng_cells, p, grid, cells, groups, capture, extra["theta"], extra["cell_cycle"])

    # truth tables and AnnData
    x_ctrl = grid.flat[grid.mean_row(0, 0, 0)] if not dynamic else net.steady_state()
    truth = _truth_tables(net, extra, p, conds, cells, groups, grid, acc, capture, x_ctrl)
    var = _gene_table(net, conds)
    adata = ad.AnnData(X=X, obs=_cell_table(p, cells, conds, net.gene_names), var=var)
    adata.uns["simulation"] = _simulation_record(p, var)
    adata.uns["truth"] = truth
    _warn_empty_cells(X, p)
    return adata


def _warn_empty_cells(x, p: dict[str, Any]) -> None:
    """Warn when simulated cells have no counts (``setup_anndata`` refuses them): the libraries are too shallow."""
    empty = int((np.diff(x.indptr) == 0).sum())
    if empty:
        msg = (
            f"{empty} of {x.shape[0]} simulated cells have no counts (library_size_mean={p['library_size_mean']:g}, "
            f"library_size_sd={p['library_size_sd']:g}, dispersion={p['dispersion']:g}, dropout={p['dropout']:g}); "
            "models refuse such cells. Raise library_size_mean (e.g. 3000) or drop them with "
            "sc.pp.filter_cells(adata, min_counts=1)."
        )
        warnings.warn(msg, UserWarning, stacklevel=3)
