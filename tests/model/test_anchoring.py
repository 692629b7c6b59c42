"""Anchoring plans, the target map for unseen targets, and the absence of leaks from held-out cells."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import scipy.sparse as sp
import scvi

from scmech.data import simulate_perturbseq
from scmech.model import SemiMechVI
from scmech.model._anchoring import Observations, ObservedPseudobulk
from scmech.model._calibration import _two_coefficients, fit_interaction_gain, fit_media_carry
from scmech.model._own_gene import _level_after, _levels, own_gene_effect
from scmech.model._protocols import CLASS_REFERENCE, Context, Protocol
from scmech.model._target_map import latent_directions, propagation_gain, smallest_within_noise
from scmech.model._weights import random_effects_weights

from .conftest import MODEL_KWARGS, simulated, tiny_model_without


def _noise_free(obs: Observations) -> Observations:
    """A copy of the observations with zero sampling variances: every correction is kept whole (weight 1)."""
    out = copy.deepcopy(obs)
    for o in out.conditions.values():
        o.var = np.zeros_like(o.var)
    return out


def _raw(model, labels, **kw) -> dict[str, np.ndarray]:
    pred = model.predict(list(labels), anchor="none", random_state=0, **kw)
    return {lab: pred.X[i].astype(np.float64) for i, lab in enumerate(labels)}


def _class_reference(model) -> np.ndarray:
    """The model's read-out of the class's mean operator without an own gene (baseline context)."""
    p = Protocol(CLASS_REFERENCE, (CLASS_REFERENCE,), None, 0.0, np.nan)
    return model._reader([p])(p).astype(np.float64)


# ------------------------------------------------------------------------------------------------ combinations
def test_combination_is_its_observed_singles_plus_the_calibrated_interaction(steady, monkeypatch):
    model = steady.model
    obs = _noise_free(model.anchor_)
    monkeypatch.setattr(model, "anchor_", obs)
    ctx = Context(None)
    y = {lab: obs.get(lab, ctx).value.astype(np.float64) for lab in ("G0008", "G0021", "NT")}
    m = _raw(model, ["G0008+G0021", "G0008", "G0021", "NT"])
    additive = y["G0008"] + y["G0021"] - y["NT"]
    interaction = m["G0008+G0021"] - m["G0008"] - m["G0021"] + m["NT"]
    for gain in (0.0, 0.3, 1.0):
        obs.interaction_gain = gain
        pred = model.predict(["G0008+G0021"], random_state=0)
        assert pred.obs.loc["G0008+G0021", "anchoring"].startswith("observed singles")
        np.testing.assert_allclose(pred.X[0], additive + gain * interaction, rtol=1e-5, atol=1e-5)
    # a combination observed in training is its observation, unless only combinations are anchored
    seen = model.predict(["G0009+G0021"], random_state=0)
    np.testing.assert_allclose(seen.X[0], obs.get("G0009+G0021", ctx).value, rtol=1e-5, atol=1e-5)
    comb = model.predict(["G0009+G0021", "G0008"], anchor="combinations", random_state=0)
    assert comb.obs["anchored"].tolist() == [True, False]
    np.testing.assert_allclose(comb.X[1], _raw(model, ["G0008"])["G0008"], rtol=1e-6, atol=1e-6)


def _sure(corr: np.ndarray, var: np.ndarray, common: np.ndarray, lam: float) -> float:
    """Stein's unbiased risk estimate of w * c, w = max(k, 1 - lam sd / |c|), written out gene by gene."""
    total = 0.0
    for c, v, k in zip(corr, var, common, strict=True):
        if abs(c) * (1.0 - k) > lam * np.sqrt(v):  # translated by lam standard errors
            total += v * (1.0 + lam**2)
        else:  # scaled by the common weight
            total += (1.0 - k) ** 2 * c**2 + v * (2.0 * k - 1.0)
    return total


def _eb_weight(corr: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Empirical-Bayes weight written out here: tau^2 / (tau^2 + v), tau^2 = mean(c^2 - v) floored at 0, and no
    correction shrunk by more than lam standard errors, lam minimising the risk estimate gene by gene over the
    limits 0, 0.05, ..., 10 and no limit (brute force, not the binned cumulative sums of the package)."""
    corr, var = np.asarray(corr, dtype=np.float64), np.asarray(var, dtype=np.float64)
    tau2 = max(0.0, float(np.mean(corr**2 - var)))
    common = tau2 / (tau2 + var) if tau2 > 0 else np.zeros_like(corr)
    risks = {g: _sure(corr, var, common, g) for g in np.arange(201) * 0.05}
    lam = min(risks, key=risks.get)
    if _sure(corr, var, common, np.inf) < risks[lam]:
        return common
    limited = np.array([1.0 - lam * np.sqrt(v) / abs(c) if c != 0 else 0.0 for c, v in zip(corr, var, strict=True)])
    return np.clip(np.maximum(common, limited), 0.0, 1.0)


def test_the_translation_limit_minimises_steins_risk_estimate():
    from scmech.model._weights import shrinkage, sure_translation

    rng = np.random.default_rng(0)
    var = rng.uniform(0.01, 0.1, 300)
    corr = rng.normal(0.0, np.sqrt(var))
    corr[:10] += rng.choice([-1.0, 1.0], 10) * 2.0  # a few genes far off
    tau2 = max(0.0, float(np.mean(corr**2 - var)))
    common = tau2 / (tau2 + var)
    lam = sure_translation(corr, var, common)
    assert 0.0 < lam < 10.0
    np.testing.assert_allclose(shrinkage(corr, var), _eb_weight(corr, var), atol=1e-12)
    # the grid loses little against the exact minimum over every breakpoint (just above it, the gene is scaled)
    breaks = np.abs(corr) * (1.0 - common) / np.sqrt(var) * (1.0 + 1e-12)
    exact = min(_sure(corr, var, common, g) for g in np.concatenate([[0.0], breaks]))
    assert _sure(corr, var, common, lam) <= exact + 0.01 * abs(exact)
    # pure noise: no gene translated, every gene scaled by the common weight (here 0: the correction dropped)
    noise = rng.normal(0.0, np.sqrt(var))
    noise *= np.sqrt(np.mean(var) / np.mean(noise**2)) * 0.9  # tau^2 = 0
    assert sure_translation(noise, var, np.zeros_like(var)) >= np.max(np.abs(noise) / np.sqrt(var))
    assert shrinkage(noise, var).max() < 1e-12


def test_steins_risk_estimate_is_unbiased_for_the_translated_estimate():
    # the closed form of the risk estimate behind sure_translation: its mean over noise draws is the true risk
    rng = np.random.default_rng(3)
    n, lam = 200, 1.3
    var = rng.uniform(0.02, 0.2, n)
    signal = np.where(rng.random(n) < 0.1, rng.normal(0.0, 1.0, n), 0.0)
    common = np.full(n, 0.3)
    est, err = [], []
    for _ in range(3000):
        corr = signal + rng.normal(0.0, np.sqrt(var))
        w = np.maximum(common, 1.0 - lam * np.sqrt(var) / np.abs(corr))
        err.append(float(np.sum((w * corr - signal) ** 2)))
        est.append(_sure(corr, var, common, lam))
    assert np.mean(est) == pytest.approx(np.mean(err), rel=0.02)


def test_the_data_decide_how_far_corrections_are_translated():
    from scmech.model._weights import shrinkage

    rng = np.random.default_rng(0)
    var = np.full(500, 0.01)
    noise = rng.normal(0.0, 0.1, 500)
    # a few genes far out of their noise, the rest pure noise: the far genes are kept (almost) whole, which the
    # common prior alone would shrink to about a third, and the noise is dropped
    sparse = noise.copy()
    sparse[:2] += 1.0  # ten standard errors
    w = shrinkage(sparse, var)
    tau2 = max(0.0, float(np.mean(sparse**2 - var)))
    assert tau2 / (tau2 + 0.01) < 0.35
    assert w[:2].min() > 0.7
    assert float(np.mean(np.abs(w[2:] * sparse[2:]))) < 0.35 * float(np.mean(np.abs(sparse[2:])))
    # an error spread over every gene, about as large as the noise: the common prior (no translation) is best
    dense = rng.normal(0.0, 0.1, 500) + noise
    w = shrinkage(dense, var)
    tau2 = max(0.0, float(np.mean(dense**2 - var)))
    assert np.mean(np.isclose(w, tau2 / (tau2 + 0.01))) > 0.9
    assert shrinkage(np.zeros(3), np.ones(3)).tolist() == [0.0, 0.0, 0.0]
    assert shrinkage(np.ones(3), None).tolist() == [1.0, 1.0, 1.0]
    assert shrinkage(np.array([0.5, -0.2]), np.zeros(2)).tolist() == [1.0, 1.0]  # exact corrections are kept


def _shared_weights(model, members: list[str], ys: list) -> np.ndarray:
    """Random-effects weights of the members (members x genes), each member left out at its own gene."""
    omega = random_effects_weights(np.stack([o.value for o in ys]), np.stack([o.var for o in ys]))
    genes = list(map(str, model.adata.var_names))
    out = np.repeat(omega[:, None], len(genes), axis=1)
    for i, q in enumerate(members):
        if q in genes:
            out[i, genes.index(q)] = 0.0
    return out / out.sum(0)


def _mean_without_own_genes(model, members: list[str], values: list) -> np.ndarray:
    """Plain mean of the members' values, each member left out at its own gene."""
    values = np.stack(values).astype(np.float64)
    genes = list(map(str, model.adata.var_names))
    mean = values.mean(0)
    for i, q in enumerate(members):
        if q in genes:
            g = genes.index(q)
            mean[g] = np.mean(np.delete(values[:, g], i))
    return mean


def test_anchoring_with_the_shrinkage_users_get(steady):
    # the users' observations, with their sampling variances: every correction is weighed against its noise
    model, held = steady.model, steady.heldout_target
    obs, ctx = model.anchor_, Context(None)
    m = _raw(model, ["NT", "G0008", "G0021", "G0008+G0021", held, *model.target_map_.trained])
    pred = model.predict(["NT", "G0008", "G0008+G0021", held], random_state=0)
    weights = []

    def expected(base, corr, var):
        w = _eb_weight(corr, var)
        weights.append(w)
        return base + w * corr

    y = {lab: obs.get(lab, ctx) for lab in ("NT", "G0008", "G0021")}
    # observed single and controls: the model pulled to the observation
    for i, lab in enumerate(["NT", "G0008"]):
        want = expected(m[lab], y[lab].value - m[lab], y[lab].var)
        np.testing.assert_allclose(pred.X[i], want, rtol=1e-5, atol=1e-5)
    # unseen combination: observed singles added (weighed), plus the calibrated share of the interaction
    m_add = m["G0008"] + m["G0021"] - m["NT"]
    a_obs = y["G0008"].value + y["G0021"].value - y["NT"].value
    want = expected(m_add, a_obs - m_add, y["G0008"].var + y["G0021"].var + y["NT"].var)
    want = want + obs.interaction_gain * (m["G0008+G0021"] - m_add)
    np.testing.assert_allclose(pred.X[2], want, rtol=1e-5, atol=1e-5)
    # unseen target: the members' random-effects mean read-out plus the model's specific change, corrected by
    # their weighted mean error with the variance of that weighted mean
    members = model.target_map_.trained
    ys = [obs.get(q, ctx) for q in members]
    omega = _shared_weights(model, members, ys)  # each member left out at its own gene
    err = (omega * np.stack([o.value - m[q] for q, o in zip(members, ys, strict=True)])).sum(0)
    var = (omega**2 * np.stack([o.var for o in ys])).sum(0)
    base = (omega * np.stack([m[q] for q in members])).sum(0) + m[held] - _class_reference(model)
    want = expected(base, err, var)
    # its own gene: the control level knocked down by the calibrated factor (not the shared response's level)
    g = list(model.adata.var_names).index(held)
    settings, tm = model._own_settings(), model.target_map_
    want[g] = _level_after(np.asarray(tm.own_effect), obs.control(ctx).value[g], True, _levels(settings.levels))
    np.testing.assert_allclose(pred.X[3], want, rtol=1e-5, atol=1e-5)
    # the weights are not all one: the noise of this small screen does shrink some genes
    assert min(float(w.min()) for w in weights) < 0.9
    assert all(float(w.max()) <= 1.0 for w in weights)


def _combination_observations(rng, gain: float, n_genes: int = 40):
    ctx = Context(None)
    obs = Observations(control_label="NT")
    model_values = {}
    singles = [f"S{k}" for k in range(4)]
    for lab in ["NT", *singles]:
        v = rng.normal(2.0, 0.5, n_genes)
        obs.conditions[(lab, ctx)] = ObservedPseudobulk(v, np.zeros(n_genes), 50)
        model_values[(lab,)] = v + rng.normal(0, 0.01, n_genes)
    model_values[("NT",)] = obs.get("NT", ctx).value
    for a, b in [("S0", "S1"), ("S1", "S2"), ("S2", "S3"), ("S0", "S3")]:
        lab = f"{a}+{b}"
        interaction = rng.normal(0, 1.0, n_genes)
        m = model_values[(a,)] + model_values[(b,)] - model_values[("NT",)] + interaction
        y = obs.get(a, ctx).value + obs.get(b, ctx).value - obs.get("NT", ctx).value + gain * interaction
        y = y + rng.normal(0, 0.05, n_genes)
        obs.conditions[(lab, ctx)] = ObservedPseudobulk(y, np.zeros(n_genes), 50)
        obs.targets[lab] = (a, b)
        model_values[(a, b)] = m
    for s in singles:
        obs.targets[s] = (s,)

    def read(p: Protocol) -> np.ndarray:
        return model_values[p.targets or ("NT",)]

    return obs, read


def test_interaction_gain_recovers_the_share_the_training_combinations_bear_out():
    rng = np.random.default_rng(0)
    obs, read = _combination_observations(rng, gain=0.4)
    gain, n = fit_interaction_gain(obs, read)
    assert n == 4
    assert gain == pytest.approx(0.4, abs=0.03)
    # an interaction of the wrong sign is not borne out at all; without combinations there is no evidence
    obs, read = _combination_observations(rng, gain=-0.5)
    assert fit_interaction_gain(obs, read)[0] == 0.0
    singles_only = Observations("NT", {k: v for k, v in obs.conditions.items() if "+" not in k[0]})
    assert fit_interaction_gain(singles_only, read) == (0.0, 0)


# ------------------------------------------------------------------------------------------------ unseen targets
def test_unseen_target_is_the_shared_response_plus_the_models_specific_change(steady, monkeypatch):
    model, held = steady.model, steady.heldout_target
    monkeypatch.setattr(model, "anchor_", _noise_free(model.anchor_))
    tm = model.target_map_
    assert held not in tm.trained
    assert tm.class_targets == ["G0008", "G0009", "G0021"]
    pred = model.predict([held], random_state=0)
    assert pred.obs["target_source"].iloc[0] == "gene map"
    assert "shared response" in pred.obs.loc[held, "anchoring"]
    m = _raw(model, [held])
    ctx = Context(None)
    # noise-free observations are equally precise: the anchor is the plain mean of every training target (each
    # left out at its own gene), plus the change of the target's read-out from the class reference
    observed = _mean_without_own_genes(model, tm.trained, [model.anchor_.get(q, ctx).value for q in tm.trained])
    specific = m[held] - _class_reference(model)
    g = list(model.adata.var_names).index(held)
    off = np.arange(len(specific)) != g
    np.testing.assert_allclose(pred.X[0][off], (observed + specific)[off], rtol=1e-5, atol=1e-5)
    # its own gene: the controls' level knocked down by the calibrated factor
    level = model.anchor_.control(ctx).value[g]
    knocked = _level_after(np.asarray(tm.own_effect), level, True, _levels(model._own_settings().levels))
    assert pred.X[0, g] == pytest.approx(float(knocked), abs=1e-5)
    # the reference is a read-out of the anchoring, not a target of the data
    assert pred.uns["scmech"]["prediction"]["unseen_targets"] == [held]
    # with no propagation the specific change is the own-gene knock-down alone: other genes keep the class mean
    if tm.gain == 0 and tm.coef is None:
        off = np.arange(len(specific)) != g
        assert np.abs(specific[off]).max() < 0.02 < abs(specific[g])
    # its own gene: the predicted change from the training controls, with the spread of the direct effects
    change = pred.X[0, g] - model.anchor_.control(ctx).value[g]
    assert pred.obs["own_gene_change"].iloc[0] == pytest.approx(change, abs=1e-5)
    assert np.isfinite(pred.obs["own_gene_sd"].iloc[0])
    assert pred.uns["scmech"]["prediction"]["own_gene"]["n_training_targets"] == 3


def test_validation_anchors_each_member_as_an_unseen_target_is_anchored(steady):
    # the gain and the embedding map are validated on each measured member predicted from the anchor it would get
    # as an unseen target: the random-effects mean of every other training target's observation, never its own
    model = steady.model
    tm, obs, ctx = model.target_map_, model.anchor_, Context(None)
    members = tm.class_targets
    bases = model._anchor_bases(members, tm.trained)
    for q, base in zip(members, bases, strict=True):
        others = [o for o in (obs.get(r, ctx) for r in sorted(tm.trained) if r != q) if o is not None]
        values = np.stack([o.value for o in others]).astype(np.float64)
        names = [r for r in sorted(tm.trained) if r != q and obs.get(r, ctx) is not None]
        omega = _shared_weights(model, names, others)
        np.testing.assert_allclose(base, (omega * values).sum(0), rtol=1e-6, atol=1e-8)
    assert not np.allclose(bases[0], np.mean([obs.get(r, ctx).value for r in members[1:]], axis=0), atol=1e-3)


def test_unseen_operator_is_the_class_mean_plus_the_propagated_knockdown(steady):
    model, held = steady.model, steady.heldout_target
    tm = model.target_map_
    pos = {t: i for i, t in enumerate(model.adata_manager.get_state_registry("perturbation")["targets"])}
    ops = model.module.field.operators.detach().numpy().astype(np.float64)
    own = model.module.decoder.own_effect.detach().numpy().astype(np.float64)
    members = tm.class_targets
    np.testing.assert_allclose(tm.operator_class, ops[[pos[t] for t in members]].mean(0), rtol=1e-5, atol=1e-6)
    # the drive is scaled on the learned direct effects (the scale the operators were learned on)
    assert tm.drive_effect == pytest.approx(float(np.median(own[[pos[t] for t in members]])))
    genes = list(model.adata.var_names)
    drives = np.stack([own[pos[t]] * tm.directions[genes.index(t)] for t in members])
    np.testing.assert_allclose(tm.propagation_mean, drives.mean(0), rtol=1e-5, atol=1e-6)
    got, got_own, source = tm.operators([held])
    expected = tm.operator_class + tm.gain * (tm.drive_effect * tm.directions[genes.index(held)] - tm.propagation_mean)
    np.testing.assert_allclose(got[0], expected, rtol=1e-5, atol=1e-6)
    assert got_own[0] == tm.own_effect
    assert source == ["gene map"]
    # the read-out uses exactly these: the held-out target's row in the operators handed to the dynamics
    (ops_used, own_used, _), columns, mapped, _ = model._operators_for([Protocol(held, (held,), None, 0.0, np.nan)])
    assert mapped == [held]
    np.testing.assert_allclose(ops_used[columns[held]].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert float(own_used[columns[held]]) == pytest.approx(tm.own_effect)


def test_latent_directions_are_the_regression_on_the_gene_held_by_the_field():
    """h_g = S D_g / (D_g S D_g + s_g^2) and the drive -J h_g, against a hand computation."""
    rng = np.random.default_rng(1)
    loading = rng.normal(size=(6, 3))
    a = rng.normal(size=(3, 3))
    cov = a @ a.T + np.eye(3)
    gene_var = rng.uniform(0.1, 1.0, 6)
    jac = -np.diag([1.0, 2.0, 0.5]) + 0.1 * rng.normal(size=(3, 3))
    got = latent_directions(loading, cov, gene_var, jac)
    for g in range(6):
        d = loading[g]
        h = cov @ d / (d @ cov @ d + gene_var[g])
        np.testing.assert_allclose(got[g], -jac @ h, rtol=1e-10)
    # a gene the latent state does not carry has no direction; a noiseless one moves its own logit one for one
    assert np.allclose(latent_directions(np.zeros((1, 3)), cov, [0.5], jac), 0.0)
    h1 = -np.linalg.solve(jac, latent_directions(loading[:1], cov, [0.0], jac)[0])
    assert loading[0] @ h1 == pytest.approx(1.0)


def test_propagation_gain_recovers_a_planted_gain_and_drops_an_unsupported_one():
    rng = np.random.default_rng(0)
    drives = rng.normal(size=(12, 5))
    operators = 0.7 + 1.5 * drives + rng.normal(0, 0.05, (12, 5))
    gain, fitted, loo = propagation_gain(drives, operators)
    assert fitted == pytest.approx(1.5, abs=0.05)
    assert gain == pytest.approx(fitted)  # the whole gain validates
    assert loo[1.0] < loo[0.0]
    # operators unrelated to the drives: the leave-one-out choice keeps none of the gain
    unrelated = rng.normal(size=(12, 5))
    assert propagation_gain(drives, unrelated)[0] == 0.0
    # a negative slope is not a propagation
    assert propagation_gain(drives, -drives)[1] == 0.0
    assert propagation_gain(drives[:2], operators[:2]) == (0.0, 0.0, {})


def test_a_share_is_chosen_only_when_it_is_better_beyond_the_spread_between_targets():
    base = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    # every target predicted better by 0.5 with the full share: the evidence stands out, the full share is chosen
    assert smallest_within_noise({0.0: base, 0.5: base - 0.3, 1.0: base - 0.5}) == 1.0
    # better on average only because one target is (mean excess 0.5, standard error 0.5): the class mean stays
    lucky = base.copy()
    lucky[0] -= 3.0
    assert np.mean(lucky) < np.mean(base)
    assert smallest_within_noise({0.0: base, 1.0: lucky}) == 0.0
    # the best share itself when nothing smaller is within its noise; ties go to the smaller share
    assert smallest_within_noise({0.0: base + 1.0, 0.5: base, 1.0: base + 0.01}) == 0.5
    assert smallest_within_noise({0.0: base, 1.0: base}) == 0.0


def test_the_model_calibrates_the_own_gene_on_the_observed_training_targets(steady):
    model = steady.model
    tm, obs, ctx = model.target_map_, model.anchor_, Context(None)
    assert tm.own_source == "observed"
    genes = list(model.adata.var_names)
    members = [q for q in tm.class_targets if obs.get(q, ctx) is not None]
    y = np.stack([obs.get(q, ctx).value for q in members]).astype(np.float64)
    g = np.array([genes.index(q) for q in members])
    own = y[np.arange(len(members)), g]
    # each member's level without its knock-down: its gene's level in the controls (the knock-down scales the
    # target's own unperturbed production), not the other training targets' mean there, which carries their
    # programmes
    reference = np.asarray(obs.control(ctx).value, dtype=np.float64)[g]
    trained = [q for q in tm.trained if obs.get(q, ctx) is not None]
    shared = np.array(
        [np.mean([obs.get(p, ctx).value[g[i]] for p in trained if p != q]) for i, q in enumerate(members)]
    )
    assert not np.allclose(reference, shared)
    assert tm.own_effect == pytest.approx(own_gene_effect(own, reference)[0], abs=1e-6)
    assert tm.own_targets == len(members)
    # mapped targets read out with it
    _, got_own, _ = tm.operators([steady.heldout_target])
    assert got_own[0] == tm.own_effect
    assert model.predict([steady.heldout_target]).uns["scmech"]["prediction"]["own_gene"]["calibrated_on"] == "observed"


def test_validation_cells_of_training_conditions_join_the_observations(steady, monkeypatch):
    model = steady.model
    monkeypatch.setattr(model, "anchor_", model.anchor_)  # restored after the test
    train, validation, held = steady.external
    design = model._design(model.adata)
    ctx = Context(None)
    model._fit_anchor(train)
    alone = {lab: o.n_cells for (lab, _), o in model.anchor_.conditions.items()}
    # the validation cells of observed conditions join them; those of a held-out condition stay unseen
    model._fit_anchor(train, np.concatenate([validation, held]))
    pooled = {lab: o.n_cells for (lab, _), o in model.anchor_.conditions.items()}
    assert steady.heldout_target not in pooled
    val_labels = design.labels[validation]
    for lab, n in alone.items():
        assert pooled[lab] == n + int((val_labels == lab).sum())
    assert sum(pooled.values()) > sum(alone.values())
    # the pooled pseudobulk is the mean over the union of the cells
    controls = np.concatenate([train, validation])
    controls = controls[design.labels[controls] == "NT"]
    x = np.asarray(model.adata.X[controls].toarray() if sp.issparse(model.adata.X) else model.adata.X[controls])
    expected = np.log1p(1e4 * (x / x.sum(1, keepdims=True)).mean(0))
    np.testing.assert_allclose(model.anchor_.control(ctx).value, expected, rtol=1e-4, atol=1e-4)


def test_perturbation_modality_is_validated(small_adata):
    with pytest.raises(ValueError, match="perturbation_modality='CRISPRx' is not one of"):
        SemiMechVI.setup_anndata(small_adata, perturbation_modality="CRISPRx")
    SemiMechVI.setup_anndata(small_adata, perturbation_modality="CRISPRi")
    model = SemiMechVI(small_adata, **MODEL_KWARGS)
    assert model.adata_manager.registry["setup_args"]["perturbation_modality"] == "CRISPRi"


# ------------------------------------------------------------------------------------------------ contexts
def test_other_contexts_are_anchored_on_their_observed_controls(dynamic, monkeypatch):
    model, adata = dynamic.model, dynamic.adata
    obs = adata.obs
    ctrl = obs[(obs["perturbation"] == "NT") & (obs["media"] == "m1")]
    t, s = (float(v) for v in ctrl.groupby(["time", "media_time"], observed=True).size().idxmax())
    cells = ctrl[(ctrl["time"] == t) & (ctrl["media_time"] == s)]
    # the tiny fixture has few controls per context: rebuild with a lower minimum than train()'s 10, keep only
    # the controls (this test is about the controls' context)
    saved = model.anchor_
    model._fit_anchor(np.arange(adata.n_obs), min_cells=2)
    controls = Observations("NT", {k: v for k, v in model.anchor_.conditions.items() if k[0] == "NT"})
    monkeypatch.setattr(model, "anchor_", _noise_free(controls))
    try:
        x = adata[cells.index].X
        x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
        observed = np.log1p(1e4 * (x / x.sum(1, keepdims=True)).mean(0))
        kw = {"media": "m1", "time": t, "media_time": s, "random_state": 0}
        raw = model.predict(["G0008", "NT"], anchor="none", **kw)
        auto = model.predict(["G0008", "NT"], **kw)
        assert auto.obs["anchored"].all()
        assert auto.obs["anchoring"].iloc[0] == "observed controls of the context"
        np.testing.assert_allclose(auto.X[1], observed, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(auto.X[0] - auto.X[1], raw.X[0] - raw.X[1], rtol=1e-4, atol=1e-4)
        # a context without training controls is not anchored
        assert not model.predict(["G0008"], media="m1", time=123.0, media_time=s, random_state=0).obs["anchored"].any()
    finally:
        model.anchor_ = saved


def _two_media_screen(n_cells: int, n_perturbations: int, modality: str | None = None):
    """A registered screen of ``n_perturbations`` single targets in two media (m0, m1), and its first target."""
    adata = simulate_perturbseq(n_cells, 30, n_perturbations=n_perturbations, n_combinations=0, n_media=2, seed=0)
    adata.obs["perturbation"] = adata.obs["perturbation"].astype(str)
    SemiMechVI.setup_anndata(
        adata, perturbation_key="perturbation", control_label="NT", media_key="media", perturbation_modality=modality
    )
    return adata, adata.uns["truth"]["targets"][0]


def _carried_own_level(anc: Observations, target: str, own: np.ndarray, source: Context, here: Context) -> float:
    """The own gene's level in ``here``: the factor seen in ``source`` (from its controls) on ``here``'s controls."""
    factor = np.expm1(anc.get(target, source).value[own]) / np.expm1(anc.control(source).value[own])
    return float(np.log1p(factor * np.expm1(anc.control(here).value[own]))[0])


def test_a_perturbation_observed_in_another_medium_carries_over_as_far_as_calibrated(monkeypatch):
    """Held out of medium m1: m1's train mean plus the calibrated share of what it showed in m0."""
    adata, target = _two_media_screen(2000, 5)
    obs = adata.obs
    held = np.flatnonzero((obs["perturbation"] == target).to_numpy() & (obs["media"] == "m1").to_numpy())
    model, _ = tiny_model_without(adata, held, max_epochs=2)
    anc = model.anchor_
    c0, c1 = Context("m0"), Context("m1")
    assert (c1, c0) in anc.media_carry
    rho, alpha = anc.media_carry[(c1, c0)]
    assert 0.0 <= rho <= 1.0
    assert 0.0 <= alpha <= 1.0
    pred = model.predict(target, media="m1", random_state=0)
    assert pred.obs["anchoring"].iloc[0] == "observed in other media"
    ref = [q for q in anc.perturbations_in(c1) if anc.get(q, c0) is not None]
    assert target not in ref
    assert len(ref) >= 3
    m1 = _raw(model, [target, *ref], media="m1")
    m0 = _raw(model, [target, *ref], media="m0")
    y1 = np.mean([anc.get(q, c1).value for q in ref], axis=0)
    y0 = np.mean([anc.get(q, c0).value for q in ref], axis=0)
    m1_bar = np.mean([m1[q] for q in ref], axis=0)
    m0_bar = np.mean([m0[q] for q in ref], axis=0)
    expected = y1 + rho * (anc.get(target, c0).value - y0) + alpha * ((m1[target] - m1_bar) - (m0[target] - m0_bar))
    off = np.asarray(adata.var_names) != target  # the own gene is knocked down apart
    np.testing.assert_allclose(pred.X[0][off], expected[off], rtol=1e-4, atol=1e-4)
    assert pred.X[0][~off][0] == pytest.approx(_carried_own_level(anc, target, ~off, c0, c1), rel=1e-3)
    # with nothing carried it is m1's train mean: never below it in what it uses
    monkeypatch.setitem(anc.media_carry, (c1, c0), (0.0, 0.0))
    none = model.predict(target, media="m1", random_state=0).X[0]
    np.testing.assert_allclose(none[off], y1[off], rtol=1e-5, atol=1e-5)
    # against the simulator's noise-free truth the calibrated carry-over beats the model alone
    monkeypatch.setitem(anc.media_carry, (c1, c0), (rho, alpha))
    truth = adata.uns["truth"]["mean_log"].loc[f"{target}|m1"].to_numpy()
    assert np.mean((pred.X[0] - truth) ** 2) < np.mean((m1[target] - truth) ** 2)


def test_media_carry_without_a_calibration_falls_back_to_the_model_and_the_controls(monkeypatch):
    """No perturbation observed in both media: the model, the observed controls' level and the carried error."""
    adata, target = _two_media_screen(1600, 4)
    obs = adata.obs
    held = np.flatnonzero((obs["perturbation"] != "NT").to_numpy() & (obs["media"] == "m1").to_numpy())
    model, _ = tiny_model_without(adata, held, max_epochs=2)
    assert model.anchor_.media_carry == {}
    monkeypatch.setattr(model, "anchor_", _noise_free(model.anchor_))
    anc = model.anchor_
    pred = model.predict(target, media="m1", random_state=0)
    assert pred.obs["anchoring"].iloc[0] == "observed in other media"
    m1 = _raw(model, [target, "NT"], media="m1")
    m0 = _raw(model, [target, "NT"], media="m0")
    c0, c1 = Context("m0"), Context("m1")
    expected = (
        m1[target]
        + (anc.control(c1).value - m1["NT"])
        + (anc.get(target, c0).value - m0[target])
        - (anc.control(c0).value - m0["NT"])
    )
    off = np.asarray(adata.var_names) != target
    np.testing.assert_allclose(pred.X[0][off], expected[off], rtol=1e-4, atol=1e-4)
    # the own gene: the knock-down observed in m0, carried whole to m1's controls
    assert pred.X[0][~off][0] == pytest.approx(_carried_own_level(anc, target, ~off, c0, c1), rel=1e-3)


def _held_out_of_m1(modality: str, monkeypatch) -> tuple:
    """A two-media screen registered with ``modality``, its first target's m1 cells held out; the model (its
    observations a copy the test may edit), the copy, the target's gene position and the two media's contexts."""
    adata, target = _two_media_screen(1600, 5, modality=modality)
    obs = adata.obs
    held = np.flatnonzero((obs["perturbation"] == target).to_numpy() & (obs["media"] == "m1").to_numpy())
    model, _ = tiny_model_without(adata, held, max_epochs=2)
    anc = copy.deepcopy(model.anchor_)
    monkeypatch.setattr(model, "anchor_", anc)
    return model, target, anc, list(map(str, adata.var_names)).index(target), Context("m0"), Context("m1")


def _edited(anc: Observations, label: str, ctx: Context, g: int, value: float) -> None:
    """Set ``label``'s observed level of gene ``g`` in ``ctx`` to ``value`` (on a copy of its values)."""
    o = anc.conditions[(label, ctx)]
    o.value = o.value.copy()
    o.value[g] = value


def test_a_knock_down_that_rose_in_the_other_medium_is_carried_as_no_change(monkeypatch):
    """A CRISPRi target whose gene rose in m0 (noise) is not predicted to raise it in m1: no change is carried."""
    model, target, anc, g, c0, c1 = _held_out_of_m1("CRISPRi", monkeypatch)
    _edited(anc, target, c0, g, anc.control(c0).value[g] + 0.5)
    pred = model.predict(target, media="m1", random_state=0)
    assert pred.X[0][g] == pytest.approx(anc.control(c1).value[g], rel=1e-4)


def test_an_activation_of_a_gene_silent_in_the_other_medium_carries_its_level(monkeypatch):
    """Any factor fits a gene silent in the source's controls: the activated level is carried, not e^10 times it."""
    model, target, anc, g, c0, c1 = _held_out_of_m1("CRISPRa", monkeypatch)
    _edited(anc, "NT", c0, g, 0.0)  # the source's controls do not express it
    activated = float(anc.get(target, c0).value[g])
    pred = model.predict(target, media="m1", random_state=0)
    assert pred.X[0][g] == pytest.approx(max(activated, float(anc.control(c1).value[g])), rel=1e-4)


def test_fit_media_carry_recovers_planted_coefficients():
    rng = np.random.default_rng(0)
    n_genes, targets = 50, [f"T{k}" for k in range(8)]
    c0, c1 = Context("m0"), Context("m1")
    obs = Observations("NT")
    model_values = {}
    for t in targets:
        effect = rng.normal(0, 1, n_genes)
        modulation = rng.normal(0, 1, n_genes)
        model_values[(t, "m0")] = effect
        model_values[(t, "m1")] = effect + modulation
        y0 = 1.0 + effect + rng.normal(0, 0.05, n_genes)
        y1 = 2.0 + 0.6 * (y0 - 1.0) + 0.3 * modulation + rng.normal(0, 0.05, n_genes)
        obs.conditions[(t, c0)] = ObservedPseudobulk(y0, np.zeros(n_genes), 30)
        obs.conditions[(t, c1)] = ObservedPseudobulk(y1, np.zeros(n_genes), 30)
        obs.targets[t] = (t,)
    carry = fit_media_carry(obs, lambda p: model_values[(p.label, p.media)])
    rho, alpha = carry[(c1, c0)]
    assert rho == pytest.approx(0.6, abs=0.05)
    assert alpha == pytest.approx(0.3, abs=0.05)
    # too few shared targets: no calibration
    few = Observations("NT", {k: v for k, v in obs.conditions.items() if k[0] in targets[:2]})
    assert fit_media_carry(few, lambda p: model_values[(p.label, p.media)]) == {}
    # coefficients are kept in [0, 1]
    a = rng.normal(size=200)
    assert _two_coefficients(-a, a, rng.normal(size=200))[0] == 0.0
    assert _two_coefficients(3 * a, a, rng.normal(size=200))[0] == 1.0


# ------------------------------------------------------------------------------------------------ leaks
def _corrupt_rows(adata, rows: np.ndarray, rng) -> None:
    """Replace the counts of ``rows`` by other valid counts (in place, keeping the matrix type)."""
    x = adata.X.toarray() if sp.issparse(adata.X) else np.array(adata.X)
    x[rows] = rng.poisson(5.0, size=(len(rows), x.shape[1]))
    adata.X = sp.csr_matrix(x) if sp.issparse(adata.X) else x


def test_held_out_controls_never_move_predictions():
    """A batch held out with its controls: corrupting its cells after training leaves predictions bit for bit."""
    rng = np.random.default_rng(0)
    adata = simulated(n_cells=300)
    SemiMechVI.setup_anndata(adata, perturbation_key="perturbation", control_label="NT", batch_key="batch")
    held = np.flatnonzero(adata.obs["batch"].to_numpy() == "b1")
    model, _ = tiny_model_without(adata, held, max_epochs=2)
    conds = ["NT", "G0008", "G0010", "G0008+G0021"]
    before = model.predict(conds, random_state=0)
    before_raw = model.predict(conds, random_state=0, anchor="none")
    _corrupt_rows(adata, held, rng)
    after = model.predict(conds, random_state=0)
    np.testing.assert_array_equal(before.X, after.X)
    np.testing.assert_array_equal(before_raw.X, model.predict(conds, random_state=0, anchor="none").X)


def test_held_out_efficacies_never_move_predictions():
    """The efficacy levels of predictions come from the perturbed training cells only."""
    adata = simulated(n_cells=300)
    SemiMechVI.setup_anndata(
        adata, perturbation_key="perturbation", control_label="NT", batch_key="batch", efficacy_key="efficacy"
    )
    held = np.flatnonzero(adata.obs["perturbation"].to_numpy() == "G0010")
    model, _ = tiny_model_without(adata, held, max_epochs=2)
    before = model.predict(["G0010", "G0008"], random_state=0)
    assert before.uns["scmech"]["prediction"]["efficacy"] == "empirical"
    eff = adata.obs["efficacy"].to_numpy().copy()
    eff[held] = 0.0
    adata.obs["efficacy"] = eff
    after = model.predict(["G0010", "G0008"], random_state=0)
    np.testing.assert_array_equal(before.X, after.X)


def test_train_predict_use_only_training_cells_by_default(steady):
    model = steady.model
    pred = model.predict(["NT"], anchor="none", random_state=0)
    assert pred.uns["scmech"]["prediction"]["starting_cells"] == "training controls"
    controls = np.flatnonzero(steady.adata.obs["perturbation"].to_numpy() == "NT")
    n_train = len(np.intersect1d(controls, model.train_indices))
    assert pred.obs["n_cells"].iloc[0] == min(n_train, 500)
    assert n_train < len(controls)  # some controls are validation cells, which never start a prediction


def test_a_held_out_double_without_training_doubles_is_its_observed_singles_added(monkeypatch):
    """Log-normalised input, no combination in training: no evidence of interaction, the additive sum exactly."""
    adata = simulated(n_cells=300)
    x = adata.X.toarray()
    adata.X = np.log1p(1e4 * x / x.sum(1, keepdims=True)).astype(np.float32)
    SemiMechVI.setup_anndata(adata, perturbation_key="perturbation", control_label="NT", counts=False)
    held = np.flatnonzero(adata.obs["perturbation"].to_numpy() == "G0009+G0021")
    model, _ = tiny_model_without(adata, held, max_epochs=2, batch_size=64, gene_likelihood="normal")
    assert model.anchor_.interaction_gain == 0.0
    assert model.anchor_.interaction_pairs == 0
    monkeypatch.setattr(model, "anchor_", _noise_free(model.anchor_))
    ctx = Context(None)
    y = {lab: model.anchor_.get(lab, ctx).value.astype(np.float64) for lab in ("G0009", "G0021", "NT")}
    pred = model.predict(["G0009+G0021"], random_state=0)
    np.testing.assert_allclose(pred.X[0], y["G0009"] + y["G0021"] - y["NT"], rtol=1e-5, atol=1e-5)
    # the noisy version moves towards the model's own additive sum only where the singles are noisy
    monkeypatch.undo()
    noisy = model.predict(["G0009+G0021"], random_state=0)
    m = _raw(model, ["G0009", "G0021", "NT"])
    m_add = m["G0009"] + m["G0021"] - m["NT"]
    a = y["G0009"] + y["G0021"] - y["NT"]
    lo, hi = np.minimum(a, m_add) - 1e-5, np.maximum(a, m_add) + 1e-5
    assert np.all((noisy.X[0] >= lo) & (noisy.X[0] <= hi))


def _screen_of_doubles(rng, sd: float, interaction, model_follows_noise: bool, n_genes: int = 60):
    """Five singles and five doubles observed with noise of sd per double; the model's values per targets.

    ``interaction(rng, n_genes)`` gives each double's true interaction; the model has that interaction, plus the
    doubles' noise when ``model_follows_noise``.
    """
    ctx = Context(None)
    obs = Observations(control_label="NT")
    values = {}
    singles = [f"S{k}" for k in range(5)]
    for lab in ["NT", *singles]:
        v = rng.normal(2.0, 0.5, n_genes)
        obs.conditions[(lab, ctx)] = ObservedPseudobulk(v, np.full(n_genes, sd**2 / 4), 50)
        obs.targets[lab] = (lab,)
        values[(lab,)] = v
    values[()] = values[("NT",)]
    for a, b in [("S0", "S1"), ("S1", "S2"), ("S2", "S3"), ("S3", "S4"), ("S0", "S4")]:
        additive = values[(a,)] + values[(b,)] - values[()]
        inter = interaction(rng, n_genes)
        y = additive + inter + rng.normal(0, sd, n_genes)
        var = np.full(n_genes, sd**2 / 4)  # four pseudobulks of sd^2 / 4 each make up I's variance
        obs.conditions[(f"{a}+{b}", ctx)] = ObservedPseudobulk(y, var, 50)
        obs.targets[f"{a}+{b}"] = (a, b)
        values[(a, b)] = y if model_follows_noise else additive + inter
    return obs, values


def test_an_interaction_the_model_fitted_to_noise_is_not_borne_out():
    """Training doubles additive within their noise: even a model that follows that noise gets no gain."""
    rng = np.random.default_rng(3)
    obs, values = _screen_of_doubles(rng, 0.1, lambda rng, n: np.zeros(n), model_follows_noise=True)
    gain, n = fit_interaction_gain(obs, lambda p: values[p.targets or ()])
    assert n == 5
    assert gain < 0.15


def test_a_true_sparse_interaction_the_model_captures_is_kept_whole_in_noise():
    """Interactions on a few genes, noise on all: a model with the true interaction (none of the noise) keeps it."""

    def sparse(rng, n):
        out = np.zeros(n)
        out[rng.choice(n, 5, replace=False)] = rng.choice([-1.0, 1.0], 5)
        return out

    obs, values = _screen_of_doubles(np.random.default_rng(4), 0.25, sparse, model_follows_noise=False)
    gain, n = fit_interaction_gain(obs, lambda p: values[p.targets or ()])
    assert n == 5
    assert gain > 0.9  # a uniform discount by the noise share of the observed interactions gives about 0.5 here


def test_a_target_without_prior_information_is_exchangeable_with_the_training_targets(steady):
    # no measured gene, no embedding: the model has nothing specific to add, so the read-out is the random-effects
    # mean of the training targets' read-outs (not the read-out of their mean operator), anchored on their
    # observations
    model, ctx = steady.model, Context(None)
    pred = model.predict(["CD274"], random_state=0)
    assert pred.obs["target_source"].iloc[0] == "shared response"
    members = sorted(model.target_map_.trained)
    m = _raw(model, members)
    ys = [model.anchor_.get(q, ctx) for q in members]
    omega = _shared_weights(model, members, ys)
    reads = (omega * np.stack([m[q] for q in members])).sum(0)
    err = (omega * np.stack([o.value - m[q] for q, o in zip(members, ys, strict=True)])).sum(0)
    var = (omega**2 * np.stack([o.var for o in ys])).sum(0)
    np.testing.assert_allclose(pred.X[0], reads + _eb_weight(err, var) * err, rtol=1e-5, atol=1e-5)
    # noise-free observations: exactly the training targets' observed mean
    obs = _noise_free(model.anchor_)
    model.anchor_, saved = obs, model.anchor_
    try:
        exact = model.predict(["CD274"], random_state=0)
    finally:
        model.anchor_ = saved
    observed_mean = _mean_without_own_genes(model, members, [obs.get(q, ctx).value for q in members])
    np.testing.assert_allclose(exact.X[0], observed_mean, rtol=1e-5, atol=1e-5)


def test_rows_sharing_a_correction_get_exactly_what_each_plan_gives_alone():
    from scmech.model._anchor_planning import anchor_rows
    from scmech.model._anchoring import ControlLevel, Observed, UnseenTarget

    rng = np.random.default_rng(0)
    ctx = Context(None)
    obs = Observations(control_label="NT")
    for lab in ("NT", "A", "B"):
        obs.conditions[(lab, ctx)] = ObservedPseudobulk(rng.normal(size=6), rng.uniform(0.01, 0.2, 6), 20)
    reads = {p: rng.normal(size=6) for p in ("NT", "A", "B", "X", "Y", "Z", CLASS_REFERENCE)}
    proto = {lab: obs.protocol(lab, ctx) for lab in reads}

    def read(p):
        return reads[p.label]

    rows = [proto["X"], proto["Y"], proto["Z"], proto["A"]]
    shared = ControlLevel(ctx)
    plans = {0: shared, 1: shared, 2: UnseenTarget(ctx, ("A", "B")), 3: Observed(ctx)}
    values = np.stack([reads[p.label] for p in rows])
    weights = anchor_rows(plans, rows, read, obs, values)
    for i, plan in plans.items():
        alone, w = plan.apply(rows[i], read, obs)
        np.testing.assert_array_equal(values[i], alone)
        assert weights[i] == pytest.approx(float(np.mean(w)))
    # the shared correction moves both rows by the same amount: the controls' observed-minus-model error, shrunk
    np.testing.assert_allclose(values[0] - reads["X"], values[1] - reads["Y"])


def test_observations_are_standardised_to_the_batches_predictions_start_from():
    from scmech.model._observations import ObservedPseudobulk, log_pseudobulk, standardise_batches

    rng = np.random.default_rng(0)
    n_genes = 30
    base = rng.uniform(0.5, 3.0, n_genes)
    shift = np.where(np.arange(n_genes) < 10, 1.0, 0.0)  # batch 1 reads 10 genes one log unit higher
    effect = np.where(np.arange(n_genes) == 20, -1.0, 0.0)

    def cells(n, batch, target):
        rate = np.exp(base + batch * shift + (effect if target else 0.0))
        return rng.poisson(rate * 20, size=(n, n_genes)).astype(float)

    # controls in both batches (300 each); the target observed only in batch 1 (a replicate held out)
    x = np.vstack([cells(300, 0, False), cells(300, 1, False), cells(400, 1, True)])
    batch = np.repeat([0, 1, 1], [300, 300, 400])
    label = np.repeat(["NT", "NT", "T"], [300, 300, 400])
    ctx = Context(None)
    rows = np.arange(len(x))
    pb, var = log_pseudobulk(x, rows, label, ["NT", "T"], counts=True)
    conditions = {(lab, ctx): ObservedPseudobulk(pb[i], var[i], 0) for i, lab in enumerate(["NT", "T"])}
    keys = np.array([f"{b}" for b in batch[label == "NT"]], dtype=object)
    cpb, cvar = log_pseudobulk(x, rows[label == "NT"], keys, ["0", "1"], counts=True)
    controls = {ctx: (cpb, cvar, np.array([True, True]))}
    shares = {("NT", ctx): np.array([0.5, 0.5]), ("T", ctx): np.array([0.0, 1.0])}
    raw_change = pb[1] - pb[0]
    shares = {("T", ctx): shares[("T", ctx)]}  # the controls are kept as observed
    assert standardise_batches(conditions, shares, controls, pool=np.array([0.5, 0.5])) == [("T", ctx)]
    std = conditions[("T", ctx)]
    # closed form: y + sum_b (w_b - pi_b) c_b, variance v + sum_b (w_b - pi_b)^2 v_b
    np.testing.assert_allclose(std.value, pb[1] + 0.5 * cpb[0] - 0.5 * cpb[1], rtol=1e-5)
    np.testing.assert_allclose(std.var, var[1] + 0.25 * cvar[0] + 0.25 * cvar[1], rtol=1e-5)
    # the batch difference is gone from the change: only the target's own effect is left
    change = std.value - conditions[("NT", ctx)].value
    assert np.abs(raw_change[:10]).mean() > 0.2
    assert np.abs(change[:10]).mean() < 0.05
    assert change[20] == pytest.approx(-1.0, abs=0.15)
    # a batch without enough controls in the context: the condition is kept as observed
    conditions[("T", ctx)] = ObservedPseudobulk(pb[1], var[1], 0)
    controls = {ctx: (cpb, cvar, np.array([True, False]))}
    assert standardise_batches(conditions, shares, controls, pool=np.array([0.5, 0.5])) == []
    np.testing.assert_array_equal(conditions[("T", ctx)].value, pb[1])


def test_the_model_keeps_its_observations_as_observed_and_moves_them_to_a_batch_mix_on_request(tmp_path):
    # every training pseudobulk of a simulated screen (batches b0-b2) is kept in the batch composition its cells
    # came in; predictions can move them to the training controls' composition (the effect alone) or to one batch
    from scmech.model._observations import log_pseudobulk

    scvi.settings.seed = 0
    adata = simulated(n_cells=1200)
    # G0008 mostly in b1 and b2: a batch mix unlike the other perturbations'
    drop = (adata.obs["perturbation"] == "G0008").to_numpy() & (adata.obs["batch"] == "b0").to_numpy()
    drop &= np.random.default_rng(1).random(adata.n_obs) < 0.8
    adata = adata[~drop].copy()
    SemiMechVI.setup_anndata(adata, perturbation_key="perturbation", control_label="NT", batch_key="batch")
    model = SemiMechVI(adata, **MODEL_KWARGS)
    rest = np.random.default_rng(0).permutation(adata.n_obs)
    train, val = np.sort(rest[100:]), np.sort(rest[:100])
    model.train(max_epochs=1, datasplitter_kwargs={"external_indexing": [train, val, np.array([], dtype=int)]})
    obs = model.anchor_
    assert obs.batch_standardised == 0
    design = model._design(adata)
    batch = adata.obs["batch"].astype(str).to_numpy()
    cells = np.concatenate([train, val])
    start = train[design.is_control[train]]
    names = sorted(set(batch))
    pool = np.array([np.mean(batch[start] == b) for b in names])
    np.testing.assert_allclose(obs.batch_pool, pool)
    ctrl = cells[design.is_control[cells]]
    cpb, _ = log_pseudobulk(adata.X, ctrl, batch[ctrl], names, counts=True)
    pb, _ = log_pseudobulk(adata.X, ctrl, np.full(len(ctrl), "NT", dtype=object), ["NT"], counts=True)
    np.testing.assert_allclose(obs.control(Context(None)).value, pb[0], rtol=1e-5)
    in_controls = obs.in_controls_mix()
    for lab in ("G0008", "G0009+G0021"):
        mine = cells[design.labels[cells] == lab]
        pb, _ = log_pseudobulk(adata.X, mine, np.full(len(mine), lab, dtype=object), [lab], counts=True)
        pi = np.array([np.mean(batch[mine] == b) for b in names])
        assert np.abs(pool - pi).max() > (0.1 if lab == "G0008" else 0.0)
        np.testing.assert_allclose(obs.get(lab, Context(None)).value, pb[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(obs.batch_mix[(lab, Context(None))], pi)
        # in the training controls' composition: y + sum_b (w_b - pi_b) c_b
        want = pb[0] + (pool - pi) @ cpb
        np.testing.assert_allclose(in_controls.get(lab, Context(None)).value, want, rtol=1e-4, atol=1e-4)
        # moved to batch b1 alone for predictions measured there: y + sum_b (e_b1 - pi_b) c_b
        there = obs.in_batch(1).get(lab, Context(None)).value
        np.testing.assert_allclose(there, pb[0] + (np.eye(3)[1] - pi) @ cpb, rtol=1e-4, atol=1e-4)
    # the anchored prediction of an observed perturbation is its observation, in its own cells' composition by
    # default and in the controls' with batch_mix="controls"
    observed = model.predict("G0008")
    moved = model.predict("G0008", batch_mix="controls")
    assert observed.uns["scmech"]["prediction"]["batch_mix"] == "observed"
    assert moved.uns["scmech"]["prediction"]["batch_mix"] == "controls"
    gap = np.abs(obs.get("G0008", Context(None)).value - in_controls.get("G0008", Context(None)).value).mean()
    assert np.abs(observed.X[0] - obs.get("G0008", Context(None)).value).mean() < gap / 3
    assert np.abs(moved.X[0] - in_controls.get("G0008", Context(None)).value).mean() < gap / 3
    with pytest.raises(ValueError, match="batch_mix='controls' with batch='b1'"):
        model.predict("G0008", batch="b1", batch_mix="controls")
    with pytest.raises(ValueError, match="batch_mix='pooled' is not one of"):
        model.predict("G0008", batch_mix="pooled")
    # the controls are moved too, and every pseudobulk of the screen could be moved; the model's own observations
    # are left as they were
    before = {k: o.value.copy() for k, o in obs.conditions.items()}
    moved = obs.in_batch(1)
    assert moved.batch_standardised == len(obs.conditions)
    assert all(np.array_equal(o.value, before[k]) for k, o in obs.conditions.items())
    pi = np.array([np.mean(batch[ctrl] == b) for b in names])
    np.testing.assert_allclose(
        moved.control(Context(None)).value, obs.control(Context(None)).value + (np.eye(3)[1] - pi) @ cpb, rtol=1e-5
    )
    # so the anchored prediction of the controls in b1 is their level in b1, not the training controls' mix
    in_b1 = model.predict("NT", batch="b1")
    assert in_b1.uns["scmech"]["prediction"]["batch_anchoring"] == "observations moved to the batch"
    in_b1 = in_b1.X[0]
    assert np.abs(in_b1 - cpb[1]).mean() < np.abs(model.predict("NT").X[0] - cpb[1]).mean() / 3
    # a saved model keeps what the moves need
    model.save(tmp_path / "m")
    loaded = SemiMechVI.load(tmp_path / "m", adata=adata)
    np.testing.assert_array_equal(
        loaded.predict(["NT", "G0008"], batch="b1").X, model.predict(["NT", "G0008"], batch="b1").X
    )


@pytest.mark.parametrize("centred", [False, True])
def test_log1p_predictions_are_never_below_zero(centred):
    """Two observed singles that each silence a gene: their double's additive sum is below zero there. log1p input
    is never below zero, so the gene is predicted as not expressed; centred input keeps the sum."""
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(0)
    labels = np.repeat(["NT", "A", "B"], 60)
    x = rng.poisson(20, size=(len(labels), 8)).astype(np.float64)
    x[labels != "NT", 0] = 0  # each single silences gene 0
    x = np.log1p(1e4 * x / x.sum(1, keepdims=True))
    x = x - x.mean(0) if centred else x
    adata = ad.AnnData(
        x.astype(np.float32),
        obs=pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))]),
        var=pd.DataFrame(index=[f"g{i}" for i in range(8)]),
    )
    SemiMechVI.setup_anndata(adata, perturbation_key="perturbation", control_label="NT", counts=False)
    model, _ = tiny_model_without(adata, np.array([], dtype=int), max_epochs=2, gene_likelihood="normal")
    assert model._log1p_input() is not centred
    pred = np.asarray(model.predict(["A+B"], random_state=0).X)[0]
    y = {lab: x[labels == lab].mean(0) for lab in ("NT", "A", "B")}
    additive = y["A"] + y["B"] - y["NT"]
    assert additive[0] < -1.0
    if centred:
        assert pred[0] < -1.0
    else:
        assert pred[0] == 0.0
        assert np.all(pred >= 0.0)
