from __future__ import annotations

import time

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scmech.data._pseudobulk import pseudobulk
from scmech.data._simulate import SimulatedNetwork, simulate_perturbseq, simulation_group_keys

# ----------------------------------------------------------------------------------------------------------------
# shared simulations
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def steady():
    return simulate_perturbseq(20000, 200, n_perturbations=12, n_combinations=4, n_batches=4, seed=3)


@pytest.fixture(scope="module")
def dynamic():
    return simulate_perturbseq(
        6000,
        100,
        n_perturbations=6,
        n_combinations=2,
        regime="dynamic",
        media_switch_times=(-1.0, 1.0, None),
        time_points=(0.5, 2.0, 4.0),
        seed=5,
    )


def _norm_expr(adata):
    x = adata.X.toarray()
    return x / x.sum(axis=1, keepdims=True)


def _net(adata):
    return SimulatedNetwork.from_truth(adata.uns["truth"])


def _strong_target(adata):
    tr = adata.uns["truth"]
    W = np.asarray(tr["W"])
    names = list(adata.var_names)
    return max(tr["targets"], key=lambda t: int((W[:, names.index(t)] != 0).sum()))


# ----------------------------------------------------------------------------------------------------------------
# contract
# ----------------------------------------------------------------------------------------------------------------


def test_output_contract(steady):
    a = steady
    assert sp.issparse(a.X)
    assert a.X.format == "csr"
    assert a.X.dtype == np.float32
    assert np.all(a.X.data == np.round(a.X.data))
    assert a.X.data.min() > 0
    assert list(a.var_names[:2]) == ["G0000", "G0001"]
    assert a.obs_names[0] == "cell_000000"
    for col in ("perturbation", "batch", "media", "efficacy", "guide", "n_targets", "true_library_size"):
        assert col in a.obs.columns
    assert "time" not in a.obs.columns
    assert a.obs["perturbation"].cat.categories[0] == "NT"
    tr = a.uns["truth"]
    labels = set(a.obs["perturbation"].astype(str))
    assert labels == set(tr["conditions"])
    for comb in tr["combinations"]:
        parts = comb.split("+")
        assert parts == sorted(parts)
        assert all(p in tr["targets"] for p in parts)
    assert set(tr["targets"]) <= set(a.var_names)
    assert a.var.loc[tr["targets"], "is_target"].all()
    assert a.var["is_regulator"].sum() == a.uns["simulation"]["n_regulators"]
    ctrl = a.obs["perturbation"] == "NT"
    assert (a.obs.loc[ctrl, "n_targets"] == 0).all()
    assert (a.obs.loc[ctrl, "efficacy"] == 0).all()
    assert a.obs.loc[ctrl, "guide"].astype(str).str.match(r"^NT_g\d$").all()
    comb = a.obs["n_targets"] == 2
    assert a.obs.loc[comb, "guide"].astype(str).str.match(r"^G\d{4}_g\d\+G\d{4}_g\d$").all()
    assert a.obs["efficacy"].between(0, 1).all()
    # group keys index the truth tables, and the groups table counts the cells
    keys = simulation_group_keys(a.obs)
    assert set(keys) <= set(tr["mean_log"].index)
    counts = pd.Series(keys).value_counts()
    assert (tr["groups"].loc[counts.index, "n_cells"] == counts).all()
    assert list(tr["mean_log"].columns) == list(a.var_names)
    bkeys = simulation_group_keys(a.obs, batch=True)
    assert set(bkeys) <= set(tr["mean_log_batch"].index)
    assert len(tr["mean_log_batch"]) == len(tr["groups"]) * a.uns["simulation"]["n_batches"]
    assert set(tr["var_components"].columns) == {"batch", "bio", "meas", "mean"}
    assert tr["batch_log_capture"].shape == (4, a.n_vars)


# ----------------------------------------------------------------------------------------------------------------
# dynamics: fixed points and stability
# ----------------------------------------------------------------------------------------------------------------


def test_controls_are_a_stable_fixed_point(steady):
    tr = steady.uns["truth"]
    net = _net(steady)
    x0 = net.steady_state()
    scale = np.abs(net.gamma * x0).max()
    assert np.abs(net.f(x0)).max() < 1e-10 * scale
    assert tr["control_residual"] < 1e-10 * np.linalg.norm(net.gamma * x0)
    np.testing.assert_allclose(tr["steady_state"].loc["NT|m0"].to_numpy(), x0, rtol=1e-10)
    eig = np.linalg.eigvals(net.jacobian(x0))
    assert eig.real.max() < 0
    # it is an attractor: a displaced state relaxes back
    rng = np.random.default_rng(0)
    traj = net.integrate(x0 * np.exp(rng.normal(0, 0.5, x0.size)), [0.0, 40.0])
    np.testing.assert_allclose(traj[-1], x0, rtol=1e-4)


def test_perturbed_fixed_points_are_stable(steady):
    tr = steady.uns["truth"]
    net = _net(steady)
    em = steady.uns["simulation"]["efficacy_mean"]
    for label in [_strong_target(steady), tr["targets"][0], tr["combinations"][0]]:
        targets = label.split("+")
        x = tr["steady_state"].loc[f"{label}|m0"].to_numpy()
        scale = np.abs(net.gamma * x).max()
        assert np.abs(net.f(x, targets=targets, efficacy=em)).max() < 1e-8 * scale
        assert np.linalg.eigvals(net.jacobian(x, targets=targets, efficacy=em)).real.max() < 0
        np.testing.assert_allclose(net.steady_state(targets=targets, efficacy=em), x, rtol=1e-8)
        # and the perturbation moved the state: the targets are knocked down
        idx = net.target_index(targets)
        assert np.all(x[idx] < net.baseline[idx])


def test_strong_regulator_has_downstream_effects(steady):
    net = _net(steady)
    t = _strong_target(steady)
    x = net.steady_state(targets=t, efficacy=0.9)
    lfc = np.abs(np.log(x / net.baseline))
    assert (lfc > 0.1).sum() >= 5
    tr = steady.uns["truth"]
    weak = [g for g in tr["targets"] if not steady.var.loc[g, "is_regulator"]]
    assert weak, "expected some targets without downstream genes"
    xw = net.steady_state(targets=weak[0], efficacy=0.9)
    assert (np.abs(np.log(xw / net.baseline)) > 1e-12).sum() == 1


def test_cyclic_network_uses_fallback_solver():
    # a 2-gene negative feedback loop (not acyclic): the fixed-point iteration alone oscillates
    net = SimulatedNetwork(
        W=np.array([[0.0, -6.0], [6.0, 0.0]]),
        alpha=np.ones(2),
        gamma=np.ones(2),
        basal=np.full(2, 0.01),
        offset=np.zeros(2),
        baseline=np.ones(2),
        media_effect=np.ones((1, 2)),
        systematic_program=np.zeros(2),
    )
    x = net.steady_state()
    assert np.abs(net.f(x)).max() < 1e-10
    assert np.linalg.eigvals(net.jacobian(x)).real.max() < 0


# ----------------------------------------------------------------------------------------------------------------
# efficacy, escapers, modality
# ----------------------------------------------------------------------------------------------------------------


def test_efficacy_lowers_target_expression(steady):
    a = steady
    tr = a.uns["truth"]
    expr = _norm_expr(a)
    pert = a.obs["perturbation"].astype(str).to_numpy()
    eff = a.obs["efficacy"].to_numpy()
    ctrl = pert == "NT"
    high_ratio, esc_ratio = [], []
    for t in tr["targets"]:
        j = a.var_names.get_loc(t)
        cells = pert == t
        base = expr[ctrl, j].mean()
        assert expr[cells, j].mean() < 0.7 * base
        high_ratio.append(expr[cells & (eff > 0.6), j].mean() / base)
        esc_ratio.append(expr[cells & (eff < 0.05), j].mean() / base)
    high_ratio, esc_ratio = np.array(high_ratio), np.array(esc_ratio)
    assert np.median(high_ratio) < 0.4
    assert np.median(esc_ratio) > 0.7
    assert np.mean(high_ratio < esc_ratio) >= 0.9
    # escapers are recorded in the truth and have efficacy close to 0
    esc = np.asarray(tr["cell_escaper"])
    assert esc[~ctrl].mean() == pytest.approx(a.uns["simulation"]["escaper_fraction"], abs=0.02)
    assert eff[esc].max() <= 0.05


def test_efficacy_is_monotone_in_the_state(steady):
    net = _net(steady)
    t = _strong_target(steady)
    j = net.target_index(t)[0]
    levels = [net.steady_state(targets=t, efficacy=e)[j] for e in np.linspace(0, 1, 6)]
    assert np.all(np.diff(levels) < 0)


def test_crispra_raises_targets():
    a = simulate_perturbseq(4000, 100, n_perturbations=6, n_combinations=0, modality="CRISPRa", seed=2)
    pb = pseudobulk(a, "perturbation")
    for t in a.uns["truth"]["targets"]:
        assert pb.loc[t, t] > pb.loc["NT", t] + 0.3


# ----------------------------------------------------------------------------------------------------------------
# measurement: batches, pseudobulk truth, variance components
# ----------------------------------------------------------------------------------------------------------------


def test_batch_capture_recovered_from_controls(steady):
    a = steady
    tr = a.uns["truth"]
    vc = tr["var_components"]
    good = (vc["mean"] >= 5).to_numpy()
    ctrl = (a.obs["perturbation"] == "NT").to_numpy()
    lab = np.where(ctrl, a.obs["batch"].astype(str), "other")
    batches = list(a.obs["batch"].cat.categories)
    pb = pseudobulk(a, lab, groups=batches).to_numpy()[:, good]
    cap = tr["batch_log_capture"].loc[batches].to_numpy()[:, good]

    def centre(m):  # remove gene means and the per-batch normalisation constant
        m = m - m.mean(axis=0, keepdims=True)
        return m - m.mean(axis=1, keepdims=True)

    r = np.corrcoef(centre(pb).ravel(), centre(cap).ravel())[0, 1]
    assert r > 0.8


def test_observed_pseudobulk_approaches_mean_log(steady):
    a = steady
    tr = a.uns["truth"]
    keys = simulation_group_keys(a.obs)
    obs = pseudobulk(a, keys)
    truth = tr["mean_log"].loc[obs.index]
    good = (tr["var_components"]["mean"] >= 1).to_numpy()
    assert np.corrcoef(obs.to_numpy().ravel(), truth.to_numpy().ravel())[0, 1] > 0.99
    d_obs = (obs - obs.loc["NT|m0"]).to_numpy()[:, good]
    d_tru = (truth - truth.loc["NT|m0"]).to_numpy()[:, good]
    assert np.corrcoef(d_obs.ravel(), d_tru.ravel())[0, 1] > 0.95
    # per batch, the observed pseudobulk approaches mean_log_batch (batch effect included)
    bkeys = simulation_group_keys(a.obs, batch=True)
    obs_b = pseudobulk(a, bkeys, groups=[k for k in np.unique(bkeys) if k.startswith("NT|")])
    tru_b = tr["mean_log_batch"].loc[obs_b.index]
    err_b = np.mean((obs_b.to_numpy() - tru_b.to_numpy())[:, good] ** 2)
    err_nob = np.mean((obs_b.to_numpy() - tr["mean_log"].loc[["NT|m0"] * len(obs_b)].to_numpy())[:, good] ** 2)
    assert err_b < 0.5 * err_nob


def test_mean_log_converges_with_more_cells():
    # same seed: same network and targets whatever the number of cells; the error of the observed deltas shrinks
    errs = []
    for n in (2000, 16000):
        a = simulate_perturbseq(n, 100, n_perturbations=6, n_combinations=1, seed=11)
        tr = a.uns["truth"]
        obs = pseudobulk(a, simulation_group_keys(a.obs))
        d_obs = obs - obs.loc["NT|m0"]
        d_tru = tr["mean_log"].loc[obs.index] - tr["mean_log"].loc["NT|m0"]
        good = (tr["var_components"]["mean"] >= 1).to_numpy()
        errs.append(float(np.mean((d_obs - d_tru).to_numpy()[:, good] ** 2)))
        W = np.asarray(tr["W"])
        targets = list(tr["targets"])
    a2 = simulate_perturbseq(500, 100, n_perturbations=6, n_combinations=1, seed=11)
    np.testing.assert_array_equal(np.asarray(a2.uns["truth"]["W"]), W)
    assert list(a2.uns["truth"]["targets"]) == targets
    assert errs[1] < 0.3 * errs[0]


def test_mean_log_specific_splits_the_systematic_response(steady):
    tr = steady.uns["truth"]
    ml, spec = tr["mean_log"], tr["mean_log_specific"]
    pd.testing.assert_series_equal(ml.loc["NT|m0"], spec.loc["NT|m0"])
    prog = np.asarray(tr["systematic_program"])
    shared = (ml - spec).drop(index="NT|m0")
    # perturbed conditions differ, in the direction of the program on its genes
    on = prog != 0
    assert (shared.abs().to_numpy()[:, on].mean(axis=1) > 0.05).all()
    agree = np.sign(shared.to_numpy()[:, on]) == np.sign(prog[on])
    assert agree.mean() > 0.9
    # the shared part is nearly the same in every perturbation (it does not depend on the target)
    assert shared.to_numpy()[:, on].std(axis=0).mean() < 0.5 * np.abs(shared.to_numpy()[:, on]).mean()
    # switched off, the two tables coincide
    a0 = simulate_perturbseq(1000, 60, n_perturbations=4, n_combinations=1, systematic_strength=0.0, seed=1)
    pd.testing.assert_frame_equal(a0.uns["truth"]["mean_log"], a0.uns["truth"]["mean_log_specific"])
    assert not np.asarray(a0.uns["truth"]["cell_systematic"]).any()


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_variance_components_agree_with_data(dropout):
    a = simulate_perturbseq(
        30000, 150, n_perturbations=4, n_combinations=0, n_batches=6, control_fraction=0.5, dropout=dropout, seed=7
    )
    tr = a.uns["truth"]
    vc = tr["var_components"]
    good = (vc["mean"] >= 5).to_numpy()
    ctrl = (a.obs["perturbation"] == "NT").to_numpy()
    rng = np.random.default_rng(0)
    n = 40
    ratios = []
    for b in a.obs["batch"].cat.categories:
        idx = rng.permutation(np.flatnonzero(ctrl & (a.obs["batch"] == b).to_numpy()))
        k = idx.size // n
        lab = np.full(a.n_obs, "rest", dtype=object)
        for j in range(k):
            lab[idx[j * n : (j + 1) * n]] = f"s{j}"
        v = pseudobulk(a, lab, groups=[f"s{j}" for j in range(k)]).var(axis=0, ddof=1).to_numpy()
        ratios.append(v / ((vc["bio"] + vc["meas"]).to_numpy() / n))
    ratio = np.mean(ratios, axis=0)[good].mean()
    assert 0.85 < ratio < 1.15
    # batch: variance of the observed per-batch control pseudobulks minus the sampling part
    lab = np.where(ctrl, a.obs["batch"].astype(str), "rest")
    per_batch = pseudobulk(a, lab, groups=list(a.obs["batch"].cat.categories))
    n_b = a.obs.loc[ctrl, "batch"].value_counts().to_numpy()
    est = per_batch.var(axis=0, ddof=1).to_numpy() - (vc["bio"] + vc["meas"]).to_numpy() * np.mean(1.0 / n_b)
    assert est[good].mean() == pytest.approx(vc["batch"].to_numpy()[good].mean(), rel=0.2)
    assert tr["var_batch"] == pytest.approx(vc["batch"][vc["mean"] >= 1].mean())
    assert tr["var_bio"] > 0
    assert tr["var_meas"] > 0


def test_dropout_adds_zeros_and_measurement_variance():
    kw = {"n_perturbations": 2, "n_combinations": 0, "seed": 4}
    a0 = simulate_perturbseq(2000, 80, dropout=0.0, **kw)
    a1 = simulate_perturbseq(2000, 80, dropout=0.3, **kw)
    assert a1.X.nnz < 0.85 * a0.X.nnz
    assert a1.uns["truth"]["var_meas"] > a0.uns["truth"]["var_meas"]
    pd.testing.assert_frame_equal(a0.uns["truth"]["mean_log"], a1.uns["truth"]["mean_log"])


# ----------------------------------------------------------------------------------------------------------------
# combinations
# ----------------------------------------------------------------------------------------------------------------


def test_combinations_have_genetic_interactions(steady):
    tr = steady.uns["truth"]
    inter = tr["interaction"]
    assert list(inter.index) == [f"{c}|m0" for c in tr["combinations"]]
    assert (inter.abs().to_numpy() > 0.1).sum() >= 5
    assert (inter.abs().max(axis=1) > 0.05).all()
    # the truth is the non-additive part of the ODE: for the targets themselves, one shared efficacy and no
    # cross-regulation, the effect is nearly additive; the interaction lives downstream
    net = _net(steady)
    em = steady.uns["simulation"]["efficacy_mean"]
    comb = tr["combinations"][0]
    a, b = comb.split("+")
    xab = net.steady_state(targets=[a, b], efficacy=em)
    xa, xb = net.steady_state(targets=a, efficacy=em), net.steady_state(targets=b, efficacy=em)
    resid = np.log(xab) - np.log(xa) - np.log(xb) + np.log(net.baseline)
    assert np.abs(resid).max() > 0.05


def test_observed_interactions_follow_truth():
    a = simulate_perturbseq(
        40000, 120, n_perturbations=6, n_combinations=3, systematic_strength=0.0, bio_sd=0.1, seed=12
    )
    tr = a.uns["truth"]
    pb = pseudobulk(a, "perturbation")
    obs, tru = [], []
    for comb in tr["combinations"]:
        x, y = comb.split("+")
        obs.append(pb.loc[comb] - pb.loc[x] - pb.loc[y] + pb.loc["NT"])
        tru.append(tr["interaction"].loc[f"{comb}|m0"])
    obs, tru = np.concatenate(obs), np.concatenate(tru)
    big = np.abs(tru) > 0.1
    assert big.sum() >= 5
    assert np.corrcoef(obs[big], tru[big])[0, 1] > 0.8


# ----------------------------------------------------------------------------------------------------------------
# media (steady state) and the dynamic regime
# ----------------------------------------------------------------------------------------------------------------


def test_media_steady_state():
    a = simulate_perturbseq(3000, 80, n_perturbations=4, n_combinations=1, n_media=3, seed=8)
    tr = a.uns["truth"]
    assert list(a.obs["media"].cat.categories) == ["m0", "m1", "m2"]
    tab = pd.crosstab(a.obs["perturbation"], a.obs["media"])
    assert (tab > 0).all().all()
    np.testing.assert_allclose(np.asarray(tr["media_effect"])[0], 1.0)
    net = _net(a)
    for m in (1, 2):
        x = tr["steady_state"].loc[f"NT|m{m}"].to_numpy()
        assert np.abs(net.f(x, media=m)).max() < 1e-8 * np.abs(net.gamma * x).max()
        assert np.abs(np.log(x / net.baseline)).max() > 0.3


def test_dynamic_contract(dynamic):
    a = dynamic
    assert {"time", "media_time"} <= set(a.obs.columns)
    obs = a.obs
    switched = obs["media"] == "m1"
    assert obs.loc[switched, "media_time"].notna().all()
    assert obs.loc[~switched, "media_time"].isna().all()
    assert (obs.loc[switched, "media_time"] <= obs.loc[switched, "time"]).all()
    assert a.uns["simulation"]["regime"] == "dynamic"
    # controls at every time point and protocol
    ctrl = obs[obs["perturbation"] == "NT"]
    prot = ctrl["media_time"].fillna(np.inf).astype(str) + "@" + ctrl["time"].astype(str)
    allp = obs["media_time"].fillna(np.inf).astype(str) + "@" + obs["time"].astype(str)
    assert set(prot) == set(allp)
    assert set(simulation_group_keys(obs)) <= set(a.uns["truth"]["mean_log"].index)


def test_dynamic_controls_stay_at_fixed_point_without_switch(dynamic):
    tr = dynamic.uns["truth"]
    net = _net(dynamic)
    x0 = net.steady_state()
    for t in (0.5, 2, 4):
        np.testing.assert_allclose(tr["steady_state"].loc[f"NT|m0|none|{t:g}"].to_numpy(), x0, rtol=1e-8)
        # with a switch the state moves
        moved = tr["steady_state"].loc[f"NT|m1|-1|{t:g}"].to_numpy()
        assert np.abs(np.log(moved / x0)).max() > 0.3
    # the observed controls without a switch agree across time points (noise only)
    pb = pseudobulk(dynamic, simulation_group_keys(dynamic.obs))
    good = (tr["var_components"]["mean"] >= 5).to_numpy()
    drift = np.abs(pb.loc["NT|m0|none|0.5"] - pb.loc["NT|m0|none|4"]).to_numpy()[good].mean()
    switch = np.abs(pb.loc["NT|m1|-1|4"] - pb.loc["NT|m0|none|4"]).to_numpy()[good].mean()
    assert drift < 0.5 * switch


def test_dynamic_order_of_perturbation_and_switch_matters(dynamic):
    tr = dynamic.uns["truth"]
    ss = tr["steady_state"]
    t = _strong_target(dynamic)
    before = ss.loc[f"{t}|m1|-1|2"] - ss.loc["NT|m1|-1|2"]  # switched a day before the perturbation
    after = ss.loc[f"{t}|m1|1|2"] - ss.loc["NT|m1|1|2"]  # switched a day after it
    state_diff = np.abs(np.log(ss.loc[f"{t}|m1|-1|2"] / ss.loc[f"{t}|m1|1|2"]))
    assert state_diff.max() > 0.2
    rel = np.abs(before - after).sum() / np.abs(before).sum()
    assert rel > 0.05
    # the public integrator reproduces the simulator's states
    net = _net(dynamic)
    em = dynamic.uns["simulation"]["efficacy_mean"]
    traj = net.integrate(net.steady_state(), [-1.0, 0.0, 2.0], targets=t, efficacy=em, switch_time=-1.0)
    np.testing.assert_allclose(traj[-1], ss.loc[f"{t}|m1|-1|2"].to_numpy(), rtol=1e-10)


def test_onset_delay_slows_effects():
    kw = {
        "n_perturbations": 4,
        "n_combinations": 0,
        "regime": "dynamic",
        "media_switch_times": None,
        "time_points": (0.5, 1, 2, 4),
    }
    a0 = simulate_perturbseq(500, 60, onset_tau=0.0, seed=9, **kw)
    a2 = simulate_perturbseq(500, 60, onset_tau=2.0, seed=9, **kw)
    assert "m1" not in set(a0.obs["media"].astype(str))
    t = a0.uns["truth"]["targets"][0]
    j = list(a0.var_names).index(t)

    def effect(a, time):
        ss = a.uns["truth"]["steady_state"]
        return abs(np.log(ss.loc[f"{t}|m0|none|{time:g}"].iloc[j] / ss.loc[f"NT|m0|none|{time:g}"].iloc[j]))

    e0 = [effect(a0, s) for s in (0.5, 1, 2, 4)]
    e2 = [effect(a2, s) for s in (0.5, 1, 2, 4)]
    assert np.all(np.diff(e0) >= -1e-12)
    assert np.all(np.diff(e2) > 0)
    assert e2[0] < 0.5 * e0[0]
    assert all(x < y for x, y in zip(e2, e0, strict=True))


# ----------------------------------------------------------------------------------------------------------------
# designs, fitness, determinism, validation
# ----------------------------------------------------------------------------------------------------------------


def test_design_spread(steady):
    tab = pd.crosstab(steady.obs["perturbation"], steady.obs["batch"])
    assert (tab > 0).all().all()


def test_design_confounded():
    a = simulate_perturbseq(3000, 80, n_perturbations=6, n_combinations=2, n_batches=3, design="confounded", seed=1)
    tab = pd.crosstab(a.obs["perturbation"], a.obs["batch"])
    assert ((tab > 0).sum(axis=1) == 1).all()
    assert tab.loc["NT", "b0"] == tab.loc["NT"].sum()
    assert (tab.drop(index="NT").sum(axis=0) > 0).all()  # perturbations fill every batch
    a2 = simulate_perturbseq(2000, 80, n_perturbations=3, n_combinations=0, n_batches=8, design="confounded", seed=1)
    tab2 = pd.crosstab(a2.obs["perturbation"], a2.obs["batch"])
    assert ((tab2 > 0).sum(axis=1) == 1).all()
    assert tab2.loc["NT", "b0"] > 0


def test_design_controls_missing():
    a = simulate_perturbseq(3000, 80, n_perturbations=4, n_combinations=1, n_batches=3, design="controls_missing")
    tab = pd.crosstab(a.obs["perturbation"], a.obs["batch"])
    assert tab.loc["NT", "b2"] == 0
    assert (tab.loc["NT", ["b0", "b1"]] > 0).all()
    assert (tab.drop(index="NT") > 0).all().all()
    # the variance components come from the batches that have controls; the truth stays complete
    assert np.isfinite(a.uns["truth"]["var_components"].to_numpy()).all()
    assert np.isfinite(a.uns["truth"]["mean_log_batch"].loc["NT|m0|b2"]).all()


def test_fitness_scales_cell_numbers():
    a = simulate_perturbseq(20000, 100, n_perturbations=10, n_combinations=0, fitness_sd=1.0, seed=6)
    fit = a.uns["truth"]["fitness"]
    counts = a.obs["perturbation"].value_counts()
    np.testing.assert_array_equal(counts.loc[fit.index].to_numpy(), fit["n_cells"].to_numpy())
    r = np.corrcoef(np.log(fit["n_cells"]), fit["fitness"])[0, 1]
    assert r > 0.99
    a0 = simulate_perturbseq(2000, 100, n_perturbations=10, n_combinations=0, seed=6)
    assert (a0.uns["truth"]["fitness"]["fitness"] == 0).all()


def test_deterministic_for_a_seed():
    kw = {"n_perturbations": 4, "n_combinations": 1}
    a = simulate_perturbseq(800, 60, seed=21, **kw)
    b = simulate_perturbseq(800, 60, seed=21, **kw)
    c = simulate_perturbseq(800, 60, seed=22, **kw)
    assert (a.X != b.X).nnz == 0
    pd.testing.assert_frame_equal(a.obs, b.obs)
    pd.testing.assert_frame_equal(a.uns["truth"]["mean_log"], b.uns["truth"]["mean_log"])
    assert (a.X != c.X).nnz > 0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_cells": 0}, ValueError, r"n_cells=0 is out of range"),
        ({"n_cells": 10.5}, TypeError, r"n_cells must be an integer"),
        ({"n_genes": 5}, ValueError, r"n_genes=5 is out of range; expected an integer >= 10"),
        ({"n_perturbations": 60}, ValueError, r"n_perturbations=60 is out of range"),
        ({"n_combinations": 100}, ValueError, r"n_combinations=100 is out of range"),
        ({"efficacy_mean": 1.5}, ValueError, r"efficacy_mean=1.5 is out of range; expected a finite value in \[0, 1\]"),
        ({"escaper_fraction": -0.1}, ValueError, r"escaper_fraction=-0.1"),
        ({"control_fraction": 1.0}, ValueError, r"control_fraction=1.0 is out of range"),
        ({"dropout": 1.0}, ValueError, r"dropout=1.0 is out of range"),
        ({"dispersion": 0}, ValueError, r"dispersion=0 is out of range"),
        ({"modality": "CRISPRx"}, ValueError, r"modality='CRISPRx' is not allowed"),
        ({"regime": "steady"}, ValueError, r"regime='steady' is not allowed"),
        ({"design": "random"}, ValueError, r"design='random' is not allowed"),
        ({"design": "controls_missing", "n_batches": 1}, ValueError, r"n_batches=1 is out of range"),
        ({"time_points": ()}, ValueError, r"time_points=\(\) must be a non-empty"),
        ({"time_points": (-1.0,)}, ValueError, r"time_points=-1.0 is out of range"),
        ({"regime": "dynamic", "n_media": 1}, ValueError, r"n_media=1 is out of range"),
        ({"media_switch_times": "soon"}, ValueError, r"media_switch_times='soon'"),
        ({"onset_tau": -1.0}, ValueError, r"onset_tau=-1.0 is out of range"),
        ({"n_efficacy_grid": 1}, ValueError, r"n_efficacy_grid=1 is out of range"),
    ],
)
def test_parameter_validation(kwargs, error, match):
    params = {"n_cells": 100, "n_genes": 100, "n_perturbations": 4, "n_combinations": 1} | kwargs
    with pytest.raises(error, match=match):
        simulate_perturbseq(**params)


def test_network_validation():
    net = SimulatedNetwork.from_truth(simulate_perturbseq(200, 30, n_perturbations=2, n_combinations=0).uns["truth"])
    with pytest.raises(ValueError, match=r"efficacy=1.2 is out of range"):
        net.f(net.baseline, targets="G0001", efficacy=1.2)
    with pytest.raises(ValueError, match=r"media=3 is out of range"):
        net.steady_state(media=3)
    with pytest.raises(KeyError, match=r"Target 'XYZ' is not a gene"):
        net.steady_state(targets="XYZ")
    with pytest.raises(ValueError, match=r"t must be a non-empty, strictly increasing"):
        net.integrate(net.baseline, [1.0, 0.0])
    with pytest.raises(KeyError, match=r"truth lacks the network keys"):
        SimulatedNetwork.from_truth({"W": np.zeros((2, 2))})


# ----------------------------------------------------------------------------------------------------------------
# persistence and speed
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("regime", ["steady_state", "dynamic"])
def test_h5ad_round_trip(tmp_path, regime):
    a = simulate_perturbseq(600, 50, n_perturbations=4, n_combinations=1, regime=regime, seed=2)
    path = tmp_path / "sim.h5ad"
    a.write_h5ad(path)
    b = ad.read_h5ad(path)
    assert (a.X != b.X).nnz == 0
    pd.testing.assert_frame_equal(a.obs, b.obs)
    for key in ("mean_log", "mean_log_specific", "mean_log_batch", "steady_state", "interaction", "groups"):
        pd.testing.assert_frame_equal(a.uns["truth"][key], b.uns["truth"][key], check_dtype=False)
    assert b.uns["simulation"]["regime"] == regime
    net = SimulatedNetwork.from_truth(b.uns["truth"])
    x = net.steady_state()
    np.testing.assert_allclose(x, SimulatedNetwork.from_truth(a.uns["truth"]).steady_state())
    assert net.gene_names == list(a.var_names)


def test_h5ad_round_trip_without_combinations(tmp_path):
    a = simulate_perturbseq(300, 40, n_perturbations=2, n_combinations=0, seed=2)
    a.write_h5ad(tmp_path / "sim.h5ad")
    b = ad.read_h5ad(tmp_path / "sim.h5ad")
    assert b.uns["truth"]["interaction"].shape == (0, 40)


@pytest.mark.slow
def test_speed_50k_cells_500_genes():
    start = time.perf_counter()
    a = simulate_perturbseq(50000, 500, seed=0)
    elapsed = time.perf_counter() - start
    assert a.shape == (50000, 500)
    assert elapsed < 30.0, f"simulation took {elapsed:.1f} s"


def test_unstable_fixed_point_warns():
    # a strong repressilator has a limit cycle: Newton finds the (unstable) fixed point and the solver says so
    W = np.zeros((3, 3))
    W[1, 0] = W[2, 1] = W[0, 2] = -10.0
    net = SimulatedNetwork(
        W=W,
        alpha=np.ones(3),
        gamma=np.ones(3),
        basal=np.full(3, 0.01),
        offset=np.full(3, 5.0),
        baseline=np.ones(3),
        media_effect=np.ones((1, 3)),
        systematic_program=np.zeros(3),
    )
    with pytest.warns(UserWarning, match=r"fixed point\(s\) found by Newton's method are unstable"):
        x = net.steady_state()
    assert np.abs(net.f(x)).max() < 1e-10
    assert np.linalg.eigvals(net.jacobian(x)).real.max() > 0


def test_tiny_simulations_run():
    for regime in ("steady_state", "dynamic"):
        a = simulate_perturbseq(12, 20, n_perturbations=2, n_combinations=1, regime=regime, seed=0)
        assert a.n_obs == 12


def test_selection_is_relative_to_controls_and_design():
    a = simulate_perturbseq(
        20000, 60, n_perturbations=10, n_combinations=0, fitness_sd=1.0, control_fraction=0.2, seed=6
    )
    fit = a.uns["truth"]["fitness"]
    counts = a.obs["perturbation"].value_counts()
    np.testing.assert_allclose(fit["design_frequency"], 0.8 / 10)
    # controls are neutral: log(n_p / n_NT) - log(design_p / design_NT) is the fitness (up to rounding)
    ratio = np.log(counts.loc[fit.index] / counts["NT"]) - np.log(fit["design_frequency"] / 0.2)
    np.testing.assert_allclose(ratio.to_numpy(), fit["fitness"].to_numpy(), atol=0.02)
    # without selection the controls are exactly control_fraction of the cells
    a0 = simulate_perturbseq(2000, 60, n_perturbations=10, n_combinations=0, control_fraction=0.2, seed=6)
    assert (a0.obs["perturbation"] == "NT").sum() == 400
