"""Prediction intervals of unseen targets: the conformal rank rule, jackknife residuals, coverage, the layers."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import scmech
from scmech.data import simulate_perturbseq
from scmech.model import SemiMechVI
from scmech.model._anchoring import Combination, UnseenTarget
from scmech.model._calibration import media_carry_residuals, model_free_carry
from scmech.model._intervals import check_level, conformal_bounds, conformal_range, jackknife_residuals
from scmech.model._observations import Observations, ObservedPseudobulk
from scmech.model._protocols import Context, Protocol

from .conftest import tiny_model_without


def test_conformal_bounds_are_the_order_statistics_of_the_rank_rule():
    r = np.arange(-9.0, 10.0)[:, None]  # 19 residuals, -9 ... 9
    lo, hi = conformal_bounds(r, 0.9)  # ranks floor(20 * 0.05) = 1 and ceil(20 * 0.95) = 19
    assert (lo[0], hi[0]) == (-9.0, 9.0)
    lo, hi = conformal_bounds(r, 0.8)  # ranks 2 and 18
    assert (lo[0], hi[0]) == (-8.0, 8.0)
    # five residuals cannot bound a new one at 90 %: infinite; NaN residuals do not count
    few = np.array([[1.0, -2.0], [2.0, np.nan], [-1.0, 1.0], [0.5, np.nan], [-0.5, np.nan]])
    lo, hi = conformal_bounds(few, 0.9)
    assert np.all(np.isinf(lo))
    assert np.all(np.isinf(hi))
    assert np.all(lo < 0)
    assert np.all(hi > 0)
    # the bounds always hold the prediction (0): residuals all above it give a lower bound of 0
    lo, hi = conformal_bounds(np.arange(1.0, 20.0)[:, None], 0.9)
    assert (lo[0], hi[0]) == (0.0, 19.0)
    assert conformal_range(np.arange(1.0, 20.0), 0.9) == (1.0, 19.0)
    assert conformal_range(np.arange(1.0, 6.0), 0.9) == (-np.inf, np.inf)


def test_jackknife_residuals_leave_each_member_out_of_the_weighted_mean():
    values = np.array([[1.0, 1.0], [2.0, 2.0], [6.0, 6.0]])
    weights = np.full((3, 2), 1.0 / 3.0)
    weights[:, 1] = [0.0, 0.5, 0.5]  # member 0 left out at gene 1 (its own gene)
    r = jackknife_residuals(values, weights)
    np.testing.assert_allclose(r[:, 0], [1 - 4.0, 2 - 3.5, 6 - 1.5])
    assert np.isnan(r[0, 1])
    np.testing.assert_allclose(r[1:, 1], [2.0 - 6.0, 6.0 - 2.0])


def test_the_rule_covers_a_new_exchangeable_target_as_promised():
    # heavy-tailed targets, each with its own amplitude (a few move far): a normal interval would under-cover; the
    # rank rule covers a new target with the promised probability over screens (the guarantee is marginal)
    rng = np.random.default_rng(0)
    n, genes, screens = 39, 20, 300
    covered = {0.5: [], 0.8: [], 0.9: []}
    for _ in range(screens):
        draws = rng.standard_t(2, size=(n + 1, genes)) * rng.lognormal(0.0, 1.0, size=(n + 1, 1))
        members, new = draws[:n], draws[n]
        residuals = jackknife_residuals(members, np.full((n, genes), 1.0 / n))
        for level, hits in covered.items():
            lo, hi = conformal_bounds(residuals, level)
            residual = new - members.mean(axis=0)
            hits.append(np.mean((residual >= lo) & (residual <= hi)))
    for level, hits in covered.items():
        # at least the level; above it by at most the rank rule's rounding (2 / (n + 1)) and the Monte Carlo error
        assert level - 0.02 <= np.mean(hits) <= level + 2.0 / (n + 1) + 0.02


@pytest.mark.parametrize(
    ("level", "error"),
    [(True, TypeError), ("0.9", TypeError), (1.0, ValueError), (0.0, ValueError), (np.nan, ValueError)],
)
def test_a_level_outside_zero_and_one_is_refused(level, error):
    with pytest.raises(error, match="interval="):
        check_level(level)
    assert check_level(None) is None


def _registered_screen(modality: str | None, **simulate) -> tuple:
    """A simulated screen (no combinations unless asked) registered with its batches and ``modality``; its labels."""
    adata = simulate_perturbseq(**{"n_combinations": 0, **simulate})
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    adata.obs["perturbation"] = labels
    SemiMechVI.setup_anndata(
        adata, perturbation_key="perturbation", control_label="NT", batch_key="batch", perturbation_modality=modality
    )
    return adata, labels


@pytest.fixture(scope="module")
def screen():
    adata, labels = _registered_screen("CRISPRi", n_cells=2400, n_genes=60, n_perturbations=30, seed=1)
    targets = sorted(set(labels) - {"NT"})
    held = targets[:6]
    model, _ = tiny_model_without(adata, np.flatnonzero(np.isin(labels, held)), max_epochs=3)
    return model, adata, held, targets[6:]


def test_unseen_targets_get_bounds_that_hold_their_held_out_cells(screen):
    model, adata, held, trained = screen
    pred = model.predict(["NT", trained[0], *held], interval=0.8)
    x, lo, hi = (np.asarray(a, dtype=np.float64) for a in (pred.X, pred.layers["lower"], pred.layers["upper"]))
    assert pred.uns["scmech"]["prediction"]["interval"] == 0.8
    # observed conditions get no interval
    assert np.isnan(lo[:2]).all()
    assert np.isnan(hi[:2]).all()
    # every unseen row is bounded, around its prediction, finitely (24 training targets suffice at 80 %), its own
    # gene too (each held-out target's gene is measured: bounded by the training targets' own factors)
    assert set(held) <= set(map(str, adata.var_names))
    assert np.isfinite(lo[2:]).all()
    assert np.isfinite(hi[2:]).all()
    assert np.all(lo[2:] <= x[2:] + 1e-6)
    assert np.all(hi[2:] >= x[2:] - 1e-6)
    # the bounds hold the held-out targets' observed pseudobulks about as often as promised
    labels = adata.obs["perturbation"].to_numpy()
    counts = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    inside = []
    for i, t in enumerate(held):
        cells = counts[labels == t]
        y = np.log1p(1e4 * (cells / cells.sum(1, keepdims=True)).mean(0))
        inside.append((y >= lo[2 + i]) & (y <= hi[2 + i]))
    assert np.mean(inside) >= 0.7
    # a higher level widens the bounds, never narrows them
    wide = model.predict(held, interval=0.9)
    assert np.all(wide.layers["lower"] <= lo[2:] + 1e-6)
    assert np.all(wide.layers["upper"] >= hi[2:] - 1e-6)
    # the prediction itself does not move
    np.testing.assert_allclose(np.asarray(wide.X), x[2:], atol=1e-6)
    np.testing.assert_allclose(np.asarray(model.predict(held).X), x[2:], atol=1e-6)


def test_an_interval_needs_the_anchored_mean_prediction(screen):
    model, _, held, _ = screen
    with pytest.raises(ValueError, match="interval=0.8 needs the anchored mean prediction"):
        model.predict(held, interval=0.8, anchor="none")
    with pytest.raises(ValueError, match="interval=0.8 needs"):
        model.predict(held, interval=0.8, return_mean=False)
    with pytest.raises(ValueError, match="without from_cells or adata"):
        model.predict(held, interval=0.8, from_cells=[0, 1, 2])
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        model.predict(held, interval=95)


def test_interval_coverage_scores_the_bounds_against_the_held_out_cells(screen):
    model, adata, held, trained = screen
    labels = adata.obs["perturbation"].to_numpy()
    split = scmech.tl.split(adata, "perturbation", test_conditions=held, random_state=0)
    pred = model.predict(["NT", trained[0], *held], interval=0.8)
    table = scmech.tl.interval_coverage({"SemiMechVI": pred}, adata, split=split)
    # one row per held-out condition with an interval: observed conditions and the controls have none
    assert sorted(table["condition"]) == sorted(held)
    assert (table["level"] == 0.8).all()
    # the same shares as counted by hand from the held-out cells' pseudobulks (own gene apart)
    lo, hi = np.asarray(pred.layers["lower"]), np.asarray(pred.layers["upper"])
    genes = list(map(str, adata.var_names))
    counts = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    test = np.zeros(adata.n_obs, dtype=bool)
    test[split.test] = True
    for i, t in enumerate(held):
        cells = counts[(labels == t) & test]
        y = np.log1p(1e4 * (cells / cells.sum(1, keepdims=True)).mean(0))
        inside = (y >= lo[2 + i]) & (y <= hi[2 + i])
        g = genes.index(t)
        row = table.set_index("condition").loc[t]
        assert row["coverage"] == pytest.approx(np.delete(inside, g).mean(), abs=1e-6)
        assert row["own_gene_covered"] == float(inside[g])
        assert row["n_genes"] == len(genes) - 1
        assert row["infinite"] == 0.0
    # several models are scored on the same observed pseudobulks
    both = scmech.tl.interval_coverage({"a": pred, "b": pred}, adata, split=split)
    cols = ["condition", "coverage", "own_gene_covered"]
    pd.testing.assert_frame_equal(
        both[both["model"] == "a"][cols].reset_index(drop=True), both[both["model"] == "b"][cols].reset_index(drop=True)
    )
    # predictions without intervals are refused, naming the fix
    with pytest.raises(KeyError, match=r"interval=0.9"):
        scmech.tl.interval_coverage(model.predict(held), adata, split=split)


def test_unseen_targets_without_an_interval_are_named_in_a_warning():
    adata, labels = _registered_screen("CRISPRko", n_cells=600, n_genes=30, n_perturbations=4, seed=0)
    held = sorted(set(labels) - {"NT"})[1:]  # one training target: too few to anchor on a shared response
    model, _ = tiny_model_without(adata, np.flatnonzero(np.isin(labels, held)), max_epochs=2)
    with pytest.warns(UserWarning, match=r"No prediction interval for \[.*\(anchored as: observed controls"):
        pred = model.predict(held, interval=0.9)
    assert np.isnan(pred.layers["lower"]).all()


def test_a_target_seen_only_in_training_combinations_is_named_where_it_gets_no_interval():
    adata, labels = _registered_screen("CRISPRi", n_cells=900, n_genes=60, n_perturbations=24, n_combinations=4, seed=0)
    doubles = sorted(c for c in set(labels) if "+" in c)
    only_in_doubles = doubles[0].split("+")[0]  # its single held out, its doubles kept in training
    held = [only_in_doubles, next(t for t in sorted(set(labels)) if "+" not in t and t not in ("NT", only_in_doubles))]
    test = np.flatnonzero(np.isin(labels, held))
    model, train = tiny_model_without(adata, test, max_epochs=2)
    with pytest.warns(UserWarning, match=rf"No prediction interval for \['{only_in_doubles}'\]"):
        pred = model.predict(held, interval=0.8)
    assert np.isnan(pred.layers["lower"][0]).all()
    assert not np.isnan(pred.layers["lower"][1]).all()
    assert pred.obs["anchoring"].iloc[0] == "observed controls of the context"
    split = scmech.tl.split(adata, "perturbation", test_conditions=held, perturbation_key="perturbation")
    with pytest.warns(
        UserWarning, match=rf"1 condition\(s\) predicted by 'SemiMechVI'.*not scored: \['{only_in_doubles}'\]"
    ):
        table = scmech.tl.interval_coverage(pred, adata, split=split)
    assert table["condition"].tolist() == [held[1]]


def test_carry_over_residuals_predict_each_reference_perturbation_without_itself():
    """The model-free carry-over is the context's mean plus rho times the carried change, rho the least-squares
    slope clipped to [0, 1]; each residual refits both without its perturbation, and the centre uses them all."""
    rng = np.random.default_rng(0)
    here, there = Context("m1"), Context("m0")
    obs = Observations(control_label="NT")
    genes, refs = 15, ("A", "B", "C", "D", "E")
    for q in [*refs, "P"]:
        carried = rng.normal(0.0, 1.0, genes)
        obs.targets[q] = (q,)
        obs.conditions[(q, there)] = ObservedPseudobulk(2.0 + carried, np.full(genes, 0.01), 50)
        if q != "P":
            y = 3.0 + 0.6 * carried + rng.normal(0, 0.2, genes)
            obs.conditions[(q, here)] = ObservedPseudobulk(y, np.full(genes, 0.01), 50)
    y_here = np.stack([obs.get(q, here).value for q in refs])
    y_there = np.stack([obs.get(q, there).value for q in refs])

    def carry(rows: np.ndarray, carried: np.ndarray) -> np.ndarray:
        t = y_here[rows] - y_here[rows].mean(0)
        c = y_there[rows] - y_there[rows].mean(0)
        rho = np.clip((c * t).sum() / (c * c).sum(), 0, 1)
        return y_here[rows].mean(0) + rho * (carried - y_there[rows].mean(0))

    residuals = media_carry_residuals(obs, here, (there,), refs)
    assert residuals.shape == (len(refs), genes)
    for k in range(len(refs)):
        rest = np.arange(len(refs)) != k
        np.testing.assert_allclose(residuals[k], y_here[k] - carry(rest, y_there[k]), atol=1e-10)
    every = np.ones(len(refs), dtype=bool)
    centre = model_free_carry(obs, here, (there,), refs).centre(obs, "P")
    np.testing.assert_allclose(centre, carry(every, obs.get("P", there).value), atol=1e-10)
    # too few to refit without one of them
    assert media_carry_residuals(obs, here, (there,), refs[:3]) is None


def test_a_perturbation_carried_from_another_medium_gets_the_carry_over_bounds():
    adata = simulate_perturbseq(n_cells=2400, n_genes=40, n_perturbations=12, n_combinations=0, n_media=2, seed=0)
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    adata.obs["perturbation"] = labels
    media = adata.obs["media"].astype(str).to_numpy()
    SemiMechVI.setup_anndata(
        adata, perturbation_key="perturbation", control_label="NT", batch_key="batch", media_key="media"
    )
    targets = sorted(set(labels) - {"NT"})
    held = targets[:3]  # observed in m0 only: their m1 cells held out
    model, _ = tiny_model_without(adata, np.flatnonzero(np.isin(labels, held) & (media == "m1")), max_epochs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # every row is bounded: no warning
        pred = model.predict(held, media="m1", interval=0.5)
    assert (pred.obs["anchoring"] == "observed in other media").all()
    lo, hi, x = (np.asarray(a, dtype=np.float64) for a in (pred.layers["lower"], pred.layers["upper"], pred.X))
    assert np.isfinite(lo).all()
    assert np.isfinite(hi).all()
    assert (lo <= x + 1e-5).all()
    assert (x <= hi + 1e-5).all()
    # 9 reference perturbations bound up to 1 - 2 / 10: beyond it, infinitely
    assert np.isinf(np.asarray(model.predict(held, media="m1", interval=0.85).layers["upper"])).all()
    # the own gene: the factor observed in m0 (from m0's controls) applied to m1's controls, whole
    obs = model.anchor_
    m0, m1 = Context("m0"), Context("m1")
    genes = list(map(str, adata.var_names))

    def carried(label: str) -> float:
        g = genes.index(label)
        factor = np.expm1(obs.get(label, m0).value[g]) / np.expm1(obs.control(m0).value[g])
        return float(np.log1p(factor * np.expm1(obs.control(m1).value[g])))

    reference = tuple(q for q in targets if q not in held)
    own_residuals = np.array([[obs.get(q, m1).value[genes.index(q)] - carried(q)] for q in reference])
    own_lo, own_hi = conformal_bounds(own_residuals, 0.5)
    r_lo, r_hi = conformal_bounds(media_carry_residuals(obs, m1, (m0,), reference), 0.5)
    for i, t in enumerate(held):
        g = genes.index(t)
        assert x[i, g] == pytest.approx(carried(t), rel=1e-3)
        # bounded by the reference perturbations' own genes carried the same way, not by the carry-over
        assert lo[i, g] == pytest.approx(max(x[i, g] + own_lo[0], 0.0), abs=1e-4)
        assert hi[i, g] == pytest.approx(x[i, g] + own_hi[0], abs=1e-4)
        # elsewhere: the model-free carry-over's residual bounds, widened to hold the prediction
        centre = model_free_carry(obs, m1, (m0,), reference).centre(obs, t)
        off = np.arange(len(genes)) != g
        np.testing.assert_allclose(hi[i][off], (np.maximum(x[i], centre) + r_hi)[off], atol=1e-4)
        np.testing.assert_allclose(lo[i][off], np.maximum(np.minimum(x[i], centre) + r_lo, 0.0)[off], atol=1e-4)


def test_a_perturbation_observed_at_other_times_is_bounded_by_the_interpolation_residuals(monkeypatch):
    adata = simulate_perturbseq(
        n_cells=3000,
        n_genes=30,
        n_perturbations=10,
        n_combinations=0,
        regime="dynamic",
        media_switch_times=None,
        time_points=(0.5, 1.0, 2.0, 4.0),
        seed=0,
    )
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    adata.obs["perturbation"] = labels
    SemiMechVI.setup_anndata(
        adata, perturbation_key="perturbation", control_label="NT", batch_key="batch", time_key="time"
    )
    held = sorted(set(labels) - {"NT"})[:3]  # observed at 0.5, 1 and 4, not at 2
    test = np.flatnonzero(np.isin(labels, held) & (adata.obs["time"].to_numpy() == 2.0))
    model, _ = tiny_model_without(adata, test, max_epochs=2)
    seen = {}
    offsets = model._interval_offsets

    def spy(logx, requested, plans, observations, level):
        seen.update(plans=plans, observations=observations)
        return offsets(logx, requested, plans, observations, level)

    monkeypatch.setattr(model, "_interval_offsets", spy)
    pred = model.predict(held, time=2.0, interval=0.5)
    assert (pred.obs["anchoring"] == "observed at neighbouring times").all()
    lo, hi, x = (np.asarray(a, dtype=np.float64) for a in (pred.layers["lower"], pred.layers["upper"], pred.X))
    obs = seen["observations"]
    plan = seen["plans"][0]
    assert [u for u, _ in plan.points] == [1.0, 4.0]  # 2 lies between the observed 1 and 4
    at = {u: Context(plan.context.media, u, plan.context.switch) for u in (1.0, 2.0, 4.0)}

    def interpolated(label: str) -> np.ndarray:
        return obs.control(at[2.0]).value + sum(
            w * (obs.get(label, at[u]).value - obs.control(at[u]).value) for u, w in plan.points
        )

    members = [q for q in obs.perturbations_in(at[2.0]) if all(obs.get(q, at[u]) for u in (1.0, 4.0))]
    assert len(members) == 7
    r_lo, r_hi = conformal_bounds(np.stack([obs.get(q, at[2.0]).value - interpolated(q) for q in members]), 0.5)
    genes = list(map(str, adata.var_names))
    # the own gene by the members' own genes: a knock-down moves it far more than the others move it
    own = np.array([[obs.get(q, at[2.0]).value[genes.index(q)] - interpolated(q)[genes.index(q)]] for q in members])
    own_lo, own_hi = conformal_bounds(own, 0.5)
    for i, t in enumerate(held):
        centre = interpolated(t)
        g = genes.index(t)
        off = (np.arange(len(genes)) != g) & (x[i] > 0)  # counts: bounds floored at no expression
        np.testing.assert_allclose(lo[i][off], np.maximum(np.minimum(x[i], centre) + r_lo, 0.0)[off], atol=1e-4)
        np.testing.assert_allclose(hi[i][off], (np.maximum(x[i], centre) + r_hi)[off], atol=1e-4)
        assert hi[i, g] == pytest.approx(max(x[i, g], centre[g]) + own_hi[0], abs=1e-4)
        assert lo[i, g] == pytest.approx(max(min(x[i, g], centre[g]) + own_lo[0], 0.0), abs=1e-4)


def test_a_combination_is_bounded_by_the_observed_interactions_of_the_training_combinations():
    rng = np.random.default_rng(0)
    ctx = Context(None)
    obs = Observations(control_label="NT")
    genes = 12
    for lab in ("NT", "A", "B", "C"):
        obs.conditions[(lab, ctx)] = ObservedPseudobulk(rng.normal(2.0, 0.5, genes), np.full(genes, 0.01), 50)
        obs.targets[lab] = (lab,)
    for a, b in (("A", "B"), ("B", "C")):
        obs.conditions[(f"{a}+{b}", ctx)] = ObservedPseudobulk(rng.normal(2.0, 0.5, genes), np.full(genes, 0.01), 50)
        obs.targets[f"{a}+{b}"] = (a, b)
    y = {lab: obs.get(lab, ctx).value for lab, _ in obs.conditions}
    plan = Combination(ctx)
    residuals = plan.residuals(obs)
    for row, (a, b) in enumerate((("A", "B"), ("B", "C"))):
        np.testing.assert_allclose(residuals[row], y[f"{a}+{b}"] - y[a] - y[b] + y["NT"], rtol=1e-6)
    # the reference a held-out combination's bounds hold for: its observed singles added
    held = Protocol("A+C", ("A", "C"), None, 0.0, np.nan)
    np.testing.assert_allclose(plan.centre(held, obs), y["A"] + y["C"] - y["NT"], rtol=1e-6)
    # no training combination in another context: nothing to bound by
    assert Combination(Context("other")).residuals(obs) is None


def test_a_held_out_double_is_bounded_by_how_far_the_training_doubles_strayed(tmp_path):
    adata, labels = _registered_screen(None, n_cells=3000, n_genes=40, n_perturbations=8, n_combinations=12, seed=0)
    doubles = sorted(lab for lab in set(labels) if "+" in lab)
    held = doubles[:2]
    model, _ = tiny_model_without(adata, np.flatnonzero(np.isin(labels, held)), max_epochs=2)
    ctx = Context(None)
    plan = Combination(ctx)
    residuals = plan.residuals(model.anchor_)
    assert residuals.shape == (len(doubles) - 2, adata.n_vars)  # every training double, observed with its singles
    pred = model.predict(held, interval=0.8)
    lo, hi = conformal_bounds(residuals, 0.8)
    x = np.asarray(pred.X, dtype=np.float64)
    for i, label in enumerate(held):
        row = Protocol(label, tuple(label.split("+")), None, 0.0, np.nan)
        additive = plan.centre(row, model.anchor_)
        assert np.abs(x[i] - additive).max() > 1e-4  # the model moved the prediction: the bounds hold both
        expressed = x[i] > 0  # (no clipping at 0 there)
        np.testing.assert_allclose(
            pred.layers["lower"][i][expressed], np.maximum(np.minimum(x[i], additive) + lo, 0.0)[expressed], atol=1e-5
        )
        np.testing.assert_allclose(
            pred.layers["upper"][i][expressed], (np.maximum(x[i], additive) + hi)[expressed], atol=1e-5
        )
    # scored per double, both of its target genes apart
    table = scmech.tl.interval_coverage(pred, adata).set_index("condition")
    assert sorted(table.index) == sorted(held)
    genes = list(map(str, adata.var_names))
    for label in held:
        targets = [genes.index(t) for t in label.split("+") if t in genes]
        assert table.loc[label, "n_genes"] == adata.n_vars - len(targets)
    # the same after save and load
    model.save(tmp_path / "m", save_anndata=True)
    loaded = SemiMechVI.load(tmp_path / "m")
    np.testing.assert_allclose(loaded.predict(held, interval=0.8).layers["upper"], pred.layers["upper"], atol=1e-5)


def test_unseen_bounds_hold_the_shared_response_and_the_prediction(screen, monkeypatch):
    model, adata, held, _ = screen
    seen = {}
    offsets = model._interval_offsets

    def spy(logx, requested, plans, observations, level, **kwargs):
        out = offsets(logx, requested, plans, observations, level, **kwargs)
        seen.update(plans=plans, observations=observations, offsets=out)
        return out

    monkeypatch.setattr(model, "_interval_offsets", spy)
    pred = model.predict(held, interval=0.8)
    x, lo_layer, hi_layer = (
        np.asarray(a, dtype=np.float64) for a in (pred.X, pred.layers["lower"], pred.layers["upper"])
    )
    genes = list(map(str, adata.var_names))
    moved = 0.0
    for i, t in enumerate(held):
        plan, obs = seen["plans"][i], seen["observations"]
        lo, hi = conformal_bounds(plan.residuals(obs), 0.8)
        values, _ = plan._observed(obs)
        reference = (plan.weights(obs) * values).sum(axis=0)  # the observed shared response
        off = np.ones(len(genes), dtype=bool)
        off[genes.index(t)] = False  # the own gene is set (and bounded) apart
        off &= x[i] > 0
        # measured where the row was anchored: its deviation from the reference widens the bounds
        np.testing.assert_allclose(seen["offsets"][i][0][off], (lo + np.minimum(0.0, reference - x[i]))[off], atol=1e-5)
        np.testing.assert_allclose(lo_layer[i][off], np.maximum(np.minimum(x[i], reference) + lo, 0.0)[off], atol=1e-5)
        np.testing.assert_allclose(hi_layer[i][off], (np.maximum(x[i], reference) + hi)[off], atol=1e-5)
        moved = max(moved, float(np.abs(x[i] - reference)[off].max()))
    assert moved > 1e-3  # the model moved the predictions away from the reference, and the bounds hold both


def test_a_level_too_high_for_the_training_targets_gives_infinite_bounds_not_nan(screen):
    model, adata, held, _ = screen
    pred = model.predict(held, interval=0.99)  # 24 training targets cannot bound a new one at 99 %
    lo, hi = np.asarray(pred.layers["lower"]), np.asarray(pred.layers["upper"])
    assert not np.isnan(lo).any()
    assert not np.isnan(hi).any()
    assert np.isinf(hi).all()  # the own genes too: a knock-down's factor unbounded above
    genes = list(map(str, adata.var_names))
    own = [genes.index(t) for t in held]
    np.testing.assert_allclose(lo[np.arange(len(held)), own], 0.0, atol=1e-6)  # ... and below: down to no expression


def test_blocked_bounds_equal_the_bounds_of_every_residual_at_once():
    rng = np.random.default_rng(0)
    ctx, genes = Context(None), 50
    obs = Observations(control_label="NT")
    members = [f"T{i}" for i in range(30)]
    for m in [*members, "NT"]:
        obs.conditions[(m, ctx)] = ObservedPseudobulk(rng.standard_t(3, genes), rng.uniform(0.01, 0.1, genes), 50)
        obs.targets[m] = (m,)
    own = tuple((i,) if i % 3 == 0 else () for i in range(len(members)))  # every third member's gene is measured
    plan = UnseenTarget(ctx, tuple(members), False, own)
    lo, hi = conformal_bounds(plan.residuals(obs), 0.8)
    for block in (7, 50, 2048):
        blocked = plan.bounds(obs, 0.8, block=block)
        np.testing.assert_allclose(blocked[0], lo, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(blocked[1], hi, rtol=1e-12, atol=1e-12)
