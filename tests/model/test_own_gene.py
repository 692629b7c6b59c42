"""How an unseen target's own gene moves (``scmech.model._own_gene``): a scaled production calibrated on the training
targets' own genes, or (CRISPRa, where the data say so) a common level."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp

from scmech.data import simulate_perturbseq
from scmech.model import SemiMechVI
from scmech.model._observations import Observations, ObservedPseudobulk
from scmech.model._own_gene import (
    _level_after,
    centre_effect,
    effect_reaching,
    half_sample_mode,
    own_calibration,
    own_gene_effect,
    own_gene_model,
    weighted_median,
)
from scmech.model._own_gene_fit import OwnGeneMixin
from scmech.model._protocols import CLASS_REFERENCE, Context

from .conftest import tiny_model_without


def test_own_effect_calibration_is_the_median_signed_by_the_modality(caplog):
    med, sd = own_calibration([-0.3, -0.4, -1.5, -0.35, -0.2], "CRISPRko")
    assert med == pytest.approx(-0.35)
    assert sd == pytest.approx(1.4826 * 0.05)
    assert own_calibration([], "CRISPRi")[0] == 0.0
    # the data disagree with the registered modality: no own-gene effect, and a warning
    assert own_calibration([0.4, 0.5, 0.3], "CRISPRi")[0] == 0.0
    assert "against the registered modality" in caplog.text
    assert own_calibration([0.4, 0.5, 0.3], "CRISPRa")[0] == pytest.approx(0.4)
    assert own_calibration([0.4, 0.5, 0.3], None)[0] == pytest.approx(0.4)


def test_own_gene_effect_recovers_a_planted_knockdown():
    rng = np.random.default_rng(0)
    reference = rng.uniform(0.2, 6.0, 12)
    a = float(np.log(0.3))
    # counts: the knock-down scales the normalised expression, a small fall for a gene barely expressed
    observed = np.log1p(0.3 * np.expm1(reference))
    effect, sd, each = own_gene_effect(observed, reference)
    assert effect == pytest.approx(a, abs=1e-3)
    np.testing.assert_allclose(each, a, atol=1e-3)
    assert sd == pytest.approx(0.0, abs=1e-3)
    assert abs(observed - reference)[reference.argmin()] < 0.5 < abs(observed - reference)[reference.argmax()]
    # efficacy levels: the mean factor over the levels
    levels = np.array([0.5, 1.0, 1.5])
    observed = np.log1p(np.mean(np.exp(a * levels)) * np.expm1(reference))
    assert own_gene_effect(observed, reference, efficacy_levels=levels)[0] == pytest.approx(a, abs=1e-3)
    # log-normalised input (normal likelihood): a shift
    assert own_gene_effect(reference - 0.7, reference, counts=False)[0] == pytest.approx(-0.7, abs=1e-3)
    # targets that disagree: a few whose own gene falls far further (their knock-down collapses a programme the
    # gene belongs to) do not pull the effect, which stays at the typical one; the spread shows them
    far = np.arange(12) < 3
    observed = np.log1p(np.where(far, 0.05, 0.7) * np.expm1(reference))
    effect, sd, each = own_gene_effect(observed, reference)
    assert effect == pytest.approx(np.log(0.7), abs=1e-3)
    assert np.mean(each) < np.log(0.7) - 0.5  # a mean would have been pulled by the three
    assert sd == pytest.approx(0.0, abs=1e-3)  # the robust spread of a majority in agreement
    # the well-measured fall of a highly expressed gene weighs more than that of a gene barely expressed
    level = np.where(np.arange(12) < 5, 5.0, 0.02)
    observed = np.log1p(np.where(level > 1, 0.3, 0.9) * np.expm1(level))
    effect, _, each = own_gene_effect(observed, level)
    assert np.median(each) == pytest.approx(np.log(0.9), abs=1e-3)
    assert effect == pytest.approx(np.log(0.3), abs=1e-3)
    assert own_gene_effect(np.zeros(0), np.zeros(0))[0] == 0.0


def test_weighted_median_closed_forms():
    v = np.array([3.0, 1.0, 2.0, 10.0])
    assert weighted_median(v, np.ones(4)) == pytest.approx(np.median(v))
    assert weighted_median(v[:3], np.ones(3)) == pytest.approx(2.0)
    # a value without weight does not count; a heavy one takes the median
    assert weighted_median(v, np.array([1.0, 1.0, 1.0, 0.0])) == pytest.approx(2.0)
    assert weighted_median(v, np.array([1.0, 1.0, 1.0, 5.0])) == pytest.approx(10.0)
    # an even split: the mean of the two values with weight on either side of it
    assert weighted_median(v, np.array([1.0, 1.0, 0.0, 0.0])) == pytest.approx(2.0)
    assert weighted_median(v, np.array([0.0, 1.0, 0.0, 1.0])) == pytest.approx(5.5)
    # all weights zero: the plain median
    assert weighted_median(v, np.zeros(4)) == pytest.approx(np.median(v))


def test_half_sample_mode_closed_forms():
    # one value, two (their mean), three (the closer pair's mean; equidistant: the middle one)
    assert half_sample_mode(np.array([5.0])) == 5.0
    assert half_sample_mode(np.array([1.0, 3.0])) == pytest.approx(2.0)
    assert half_sample_mode(np.array([4.0, 1.0, 2.0])) == pytest.approx(1.5)
    assert half_sample_mode(np.array([1.0, 2.0, 3.0])) == pytest.approx(2.0)
    # symmetric values: their centre
    assert half_sample_mode(np.arange(10.0)) == pytest.approx(4.5)
    assert np.isnan(half_sample_mode(np.zeros(0)))
    # two groups: the larger one, where the median lies between them
    v = np.array([-1.6, -1.5, -0.66, -0.4, -0.32, -0.29])
    assert half_sample_mode(v) == pytest.approx(-0.305)
    assert np.median(v) == pytest.approx(-0.53)
    assert half_sample_mode(np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])) == 1.0
    # weights: a value without weight does not count, a heavy group wins
    assert half_sample_mode(v, np.array([0, 0, 0, 0, 1.0, 1.0])) == pytest.approx(-0.305)
    assert half_sample_mode(v, np.array([5.0, 5.0, 1.0, 1.0, 1.0, 1.0])) == pytest.approx(-1.55)
    assert half_sample_mode(np.array([1.0, 3.0]), np.array([3.0, 1.0])) == pytest.approx(1.5)
    # all weights zero or not finite: equal weights
    assert half_sample_mode(v, np.zeros(6)) == pytest.approx(-0.305)
    assert half_sample_mode(v, np.full(6, np.nan)) == pytest.approx(-0.305)
    with pytest.raises(ValueError, match=r"non-finite values \(\[nan\]\)"):
        half_sample_mode(np.array([1.0, np.nan, 2.0]))
    with pytest.raises(ValueError, match="6 values and 2 weights"):
        half_sample_mode(v, np.ones(2))


def test_own_effect_centre_is_the_mode_of_the_larger_group():
    # three knock-downs leave 70 % of their own mRNA, three fall further (two collapse their programme): an unseen
    # target gets the typical 70 %, where the median of the six gives a fall that no target showed
    reference = np.full(6, 5.0)
    kept = np.array([0.2, 0.2, 0.45, 0.7, 0.7, 0.7])
    observed = np.log1p(kept * np.expm1(reference))
    effect, _, each = own_gene_effect(observed, reference)
    np.testing.assert_allclose(each, np.log(kept), atol=1e-4)
    assert effect == pytest.approx(np.log(0.7), abs=1e-4)
    median = own_gene_effect(observed, reference, centre="median")[0]
    assert median == pytest.approx(np.median(np.log(kept)), abs=1e-4)
    assert median < np.log(0.7) - 0.1
    with pytest.raises(ValueError, match="centre='mean' is not one of 'mode', 'median'"):
        centre_effect(each, reference, centre="mean")


def test_effect_reaching_closed_forms():
    ref = np.array([0.05, 0.5, 2.0, 3.0, 4.0, 0.0])
    a = effect_reaching(3.0, ref)
    # counts, one efficacy level: e^a = (e^L - 1) / (e^l - 1)
    np.testing.assert_allclose(a[:3], np.log(np.expm1(3.0) / np.expm1(ref[:3])), rtol=1e-9)
    # a gene at or above the level is not lowered; a gene not expressed at all gets the bound
    assert a[3] == 0.0
    assert a[4] == 0.0
    assert a[5] == 10.0
    # several efficacy levels: the mean factor reaches the level (a round trip through f_a)
    eta = np.array([0.3, 0.8, 1.0])
    b = effect_reaching(3.0, ref[:3], efficacy_levels=eta)
    np.testing.assert_allclose(_level_after(b, ref[:3], True, eta), 3.0, atol=1e-9)
    assert np.all(b > a[:3])  # weaker efficacies need a larger effect
    # log-normalised input (normal likelihood): a shift by (L - l) / mean efficacy
    c = effect_reaching(3.0, ref[:4], counts=False, efficacy_levels=eta)
    np.testing.assert_allclose(c, np.maximum(3.0 - ref[:4], 0.0) / eta.mean(), rtol=1e-9)


def _activation(rng, reference: np.ndarray, level: float | None, factor: float | None, sd: float = 0.1) -> np.ndarray:
    """Observed own levels of activated targets: a common level, or a scaled production."""
    if level is not None:
        return level + rng.normal(0.0, sd, reference.size)
    return np.log1p(factor * np.expm1(reference)) + rng.normal(0.0, sd, reference.size)


def test_the_data_choose_between_a_common_level_and_a_scaled_production():
    rng = np.random.default_rng(0)
    reference = rng.uniform(0.02, 2.0, 12)
    common = _activation(rng, reference, 3.0, None)
    scaled = _activation(rng, reference, None, np.exp(1.5))
    assert own_gene_model(common, reference, modality="CRISPRa") == "level"
    assert own_gene_model(scaled, reference, modality="CRISPRa") == "scale"
    # knock-downs scale their target's production whatever the data; so does an unregistered modality
    for modality in ("CRISPRko", "CRISPRi", None):
        assert own_gene_model(common, reference, modality=modality) == "scale"
    # too few targets to compare the two
    assert own_gene_model(common[:3], reference[:3], modality="CRISPRa") == "scale"
    # why: no scaling fits such data; the median's undershoots the silent genes and overshoots the expressed ones
    a = own_gene_effect(common, reference, centre="median")[0]
    scaled_pred = np.log1p(np.exp(a) * np.expm1(reference))
    low, high = reference < 0.2, reference > 1.5
    assert np.all(scaled_pred[low] < common[low] - 1.0)
    assert np.all(scaled_pred[high] > common[high] + 0.2)
    a = own_gene_effect(common, reference)[0]  # the mode's fits one group of genes and misses the silent ones
    assert np.all(np.log1p(np.exp(a) * np.expm1(reference[low])) < common[low] - 1.0)


def _activated_screen(seed: int = 0):
    """A small CRISPRa screen whose targets are brought to one level from baselines between silent and high."""
    adata = simulate_perturbseq(
        n_cells=900, n_genes=30, n_perturbations=8, n_combinations=0, modality="CRISPRa", seed=seed
    )
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    adata.obs["perturbation"] = labels
    targets = sorted(set(labels) - {"NT"})
    genes = list(adata.var_names)
    rng = np.random.default_rng(seed)
    x = np.asarray(adata.X.toarray() if sp.issparse(adata.X) else adata.X, dtype=np.float64).copy()
    library = x.sum(1)
    keep = np.geomspace(0.005, 1.0, len(targets))  # baselines from nearly silent to fully expressed
    for j, t in enumerate(targets):
        g = genes.index(t)
        x[labels != t, g] = rng.binomial(x[labels != t, g].astype(np.int64), keep[j])
        cells = labels == t
        x[cells, g] = rng.poisson(library[cells] * np.expm1(3.0) / 1e4)  # log1p(1e4 * share) = 3 when activated
    adata.X = sp.csr_matrix(x.astype(np.float32))
    return adata, targets, keep


def test_an_activation_screen_brings_an_unseen_silent_target_to_the_common_level(tmp_path):
    adata, targets, keep = _activated_screen()
    SemiMechVI.setup_anndata(
        adata, perturbation_key="perturbation", control_label="NT", batch_key="batch", perturbation_modality="CRISPRa"
    )
    held_target = targets[int(np.argmin(keep))]  # the most silent target
    labels = adata.obs["perturbation"].to_numpy()
    model, _ = tiny_model_without(adata, np.flatnonzero(labels == held_target), max_epochs=3)
    tm = model.target_map_
    assert tm.own_model == "level"
    x = adata.X.toarray()

    def level(label: str, gene: str) -> float:
        cells = labels == label
        return float(np.log1p(1e4 * np.mean(x[cells, genes.index(gene)] / x[cells].sum(1))))

    genes = list(adata.var_names)
    trained = [t for t in targets if t != held_target]
    # the level is the training targets' median own level (the model's pseudobulks, as observed)
    assert tm.own_level == pytest.approx(np.median([level(t, t) for t in trained]), abs=1e-4)
    assert np.isnan(tm.own_effect)
    pred = model.predict([held_target])
    observed, control = level(held_target, held_target), level("NT", held_target)
    assert observed - control > 2.0  # the target was silent and is activated
    change = float(pred.obs["own_gene_change"].iloc[0])
    assert change == pytest.approx(observed - control, abs=0.6)
    # the spread reported is that of the training targets' own levels
    assert float(pred.obs["own_gene_sd"].iloc[0]) == pytest.approx(tm.own_effect_sd)
    summary = pred.uns["scmech"]["prediction"]["own_gene"]
    assert summary["model"] == "level"
    assert summary["level"] == pytest.approx(tm.own_level)
    # the calibration table shows the level model: every target brought to the level, never lowered
    table = model.get_own_gene_calibration()
    assert table.attrs["model"] == "level"
    without = table["control_level"].to_numpy()
    np.testing.assert_allclose(table["calibrated_change"], np.maximum(tm.own_level - without, 0.0))
    # a scaled production at the factor calibrated on the training targets would have left it nearly silent
    reference = [np.mean([level(p, t) for p in trained if p != t]) for t in trained]
    a = own_gene_effect(np.array([level(t, t) for t in trained]), np.array(reference))[0]
    assert _level_after(np.asarray(a), np.array([control]), True, np.ones(1))[0] - control < 1.0
    # saved and loaded, the model keeps the level model and predicts the same
    model.save(tmp_path / "m", save_anndata=True)
    loaded = SemiMechVI.load(tmp_path / "m")
    assert loaded.target_map_.own_model == "level"
    np.testing.assert_allclose(loaded.target_map_.own_effects, tm.own_effects)
    np.testing.assert_allclose(np.asarray(loaded.predict([held_target]).X), np.asarray(pred.X), rtol=1e-5, atol=1e-6)


def test_the_calibration_table_shows_what_the_own_gene_rests_on(steady):
    model = steady.model
    tm = model.target_map_
    table = model.get_own_gene_calibration()
    assert list(table.columns) == ["control_level", "observed_level", "observed_change", "effect", "calibrated_change"]
    assert set(table.index) <= set(tm.class_targets)
    assert len(table) == tm.own_targets
    np.testing.assert_allclose(table["observed_change"], table["observed_level"] - table["control_level"])
    # the calibrated effect is the weighted median of the targets' own effects, and gives the calibrated change
    effect, _, each = own_gene_effect(table["observed_level"].to_numpy(), table["control_level"].to_numpy())
    np.testing.assert_allclose(table["effect"], each)
    assert table.attrs["effect"] == pytest.approx(tm.own_effect) == pytest.approx(effect)
    control = table["control_level"].to_numpy()
    np.testing.assert_allclose(
        table["calibrated_change"], _level_after(np.asarray(effect), control, True, np.ones(1)) - control
    )
    assert table.attrs["model"] == "scale"
    curve = table.attrs["curve"]
    assert np.all(np.asarray(curve["low"]) <= np.asarray(curve["change"]) + 1e-12)
    assert np.all(np.asarray(curve["change"]) <= np.asarray(curve["high"]) + 1e-12)


def test_the_calibration_table_needs_a_trained_model_with_observed_targets(small_adata):
    small_adata.var_names = [f"X{i}" for i in range(small_adata.n_vars)]  # no target's gene is measured
    SemiMechVI.setup_anndata(small_adata, perturbation_key="perturbation", control_label="NT")
    model = SemiMechVI(small_adata, n_latent=2)
    with pytest.raises(RuntimeError, match="untrained"):
        model.get_own_gene_calibration()
    model.train(max_epochs=1, enable_progress_bar=False)
    with pytest.raises(ValueError, match="not on observed training targets"):
        model.get_own_gene_calibration()


def _log1p_knockdown_screen(seed: int = 0):
    """A small CRISPRi screen, log-normalised, whose first target is barely expressed (its knock-down kept)."""
    adata = simulate_perturbseq(n_cells=900, n_genes=30, n_perturbations=8, n_combinations=0, seed=seed)
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    adata.obs["perturbation"] = labels
    targets = sorted(set(labels) - {"NT"})
    genes = list(adata.var_names)
    x = np.asarray(adata.X.toarray() if sp.issparse(adata.X) else adata.X, dtype=np.float64).copy()
    g = genes.index(targets[0])
    x[:, g] = np.random.default_rng(seed).binomial(x[:, g].astype(np.int64), 0.01)  # thinned in every cell
    adata.X = np.log1p(1e4 * x / x.sum(1, keepdims=True)).astype(np.float32)
    return adata, targets[0]


def test_a_knock_down_scales_log1p_input_and_never_takes_a_gene_below_zero():
    adata, held = _log1p_knockdown_screen()
    SemiMechVI.setup_anndata(
        adata, perturbation_key="perturbation", control_label="NT", counts=False, perturbation_modality="CRISPRi"
    )
    labels = adata.obs["perturbation"].to_numpy()
    model, _ = tiny_model_without(adata, np.flatnonzero(labels == held), max_epochs=3, gene_likelihood="normal")
    tm = model.target_map_
    assert model._own_settings()[0]  # every pseudobulk is non-negative: log(1 + x) of an expression
    assert tm.own_model == "scale"
    assert tm.own_effects is not None
    table = model.get_own_gene_calibration()
    assert table.attrs["scaled"]
    # each gene gets the shift that takes it where the calibrated factor takes it from its anchor
    anchor = model._anchor_bases([CLASS_REFERENCE], tm.trained)[0]
    np.testing.assert_allclose(
        tm.own_effects, _level_after(np.asarray(tm.own_effect), anchor, True, np.ones(1)) - anchor, atol=1e-9
    )
    x = np.asarray(adata.X)
    g = list(adata.var_names).index(held)
    control, observed = float(x[labels == "NT", g].mean()), float(x[labels == held, g].mean())
    assert 0.0 < control < 1.5  # barely expressed (the training targets' genes sit above 3.5)
    pred = model.predict([held])
    change = float(pred.obs["own_gene_change"].iloc[0])
    assert float(np.asarray(pred.X)[0, g]) >= 0.0
    assert change == pytest.approx(observed - control, abs=0.2)
    # the shift calibrated on the training targets' own genes, as before, would take it far below zero
    own = table["observed_level"].to_numpy()
    shift = own_gene_effect(own, table["control_level"].to_numpy(), counts=False)[0]
    assert control + shift < -0.3
    # a map whose effect reaches the decoder as one shift (saved before log1p input was scaled) is read as one
    model.target_map_ = dataclasses.replace(tm, own_effects=None)
    as_saved = model.get_own_gene_calibration()
    assert not as_saved.attrs["scaled"]
    np.testing.assert_allclose(as_saved["calibrated_change"], tm.own_effect)
    pred = model.predict([held])
    assert float(pred.obs["own_gene_sd"].iloc[0]) == pytest.approx(tm.own_effect_sd)


def test_centred_log_normalised_input_is_shifted():
    adata, held = _log1p_knockdown_screen()
    x = np.asarray(adata.X)
    adata.X = (x - x.mean(0)).astype(np.float32)  # centred: negative means, not log(1 + x) of an expression
    SemiMechVI.setup_anndata(
        adata, perturbation_key="perturbation", control_label="NT", counts=False, perturbation_modality="CRISPRi"
    )
    labels = adata.obs["perturbation"].to_numpy()
    model, _ = tiny_model_without(adata, np.flatnonzero(labels == held), max_epochs=2, gene_likelihood="normal")
    assert not model._own_settings()[0]
    tm = model.target_map_
    assert tm.own_model == "scale"
    assert tm.own_effects is None
    table = model.get_own_gene_calibration()
    assert not table.attrs["scaled"]
    np.testing.assert_allclose(table["calibrated_change"], tm.own_effect, atol=1e-9)
    # centred values stand for no expression: no expression layer rather than a meaningless expm1
    pred = model.predict([held])
    assert "expression" not in pred.layers
    assert "no expression layer" in pred.uns["scmech"]["prediction"]["value"]


def _log_base_fit(adata, held: str, base: float | None):
    adata = adata.copy()
    if base is not None:
        adata.X = (np.asarray(adata.X, dtype=np.float64) / np.log(base)).astype(np.float32)
        adata.uns["log1p"] = {"base": base}
    SemiMechVI.setup_anndata(
        adata, perturbation_key="perturbation", control_label="NT", counts=False, perturbation_modality="CRISPRi"
    )
    labels = adata.obs["perturbation"].to_numpy()
    model, _ = tiny_model_without(adata, np.flatnonzero(labels == held), max_epochs=2, gene_likelihood="normal")
    return model, adata


def test_log1p_input_in_another_base_is_scaled_in_that_base():
    """``sc.pp.log1p(adata, base=2)``: a knock-down scales the expression 2**x - 1, not e**x - 1."""
    adata, held = _log1p_knockdown_screen()
    natural, _ = _log_base_fit(adata, held, None)
    log2, data2 = _log_base_fit(adata, held, 2)
    assert log2._own_settings().log_base == 2.0
    t_e, t_2 = natural.get_own_gene_calibration(), log2.get_own_gene_calibration()
    assert t_2.attrs["log_base"] == 2.0
    assert t_2.attrs["value"].endswith("base b = 2")
    # the same knock-downs: the factors do not depend on the base, the levels and changes are in its units
    np.testing.assert_allclose(t_2["control_level"], t_e["control_level"] / np.log(2), rtol=1e-4)
    np.testing.assert_allclose(t_2["effect"], t_e["effect"], atol=1e-3)
    np.testing.assert_allclose(t_2["calibrated_change"], t_e["calibrated_change"] / np.log(2), rtol=1e-3, atol=1e-4)
    # the held-out target barely expressed: its predicted change in log2 units, its expression as 2**x - 1
    pred = log2.predict([held])
    labels = data2.obs["perturbation"].to_numpy()
    g = list(data2.var_names).index(held)
    x = np.asarray(data2.X)
    control, observed = float(x[labels == "NT", g].mean()), float(x[labels == held, g].mean())
    assert float(pred.obs["own_gene_change"].iloc[0]) == pytest.approx(observed - control, abs=0.2 / np.log(2))
    np.testing.assert_allclose(pred.layers["expression"], np.exp2(np.asarray(pred.X, dtype=np.float64)) - 1, rtol=1e-4)
    assert pred.uns["scmech"]["prediction"]["value"].endswith("base b = 2")
    own_sd = natural.predict([held]).obs["own_gene_sd"].iloc[0] / np.log(2)
    assert float(pred.obs["own_gene_sd"].iloc[0]) == pytest.approx(float(own_sd), rel=0.05)


def test_log_normalised_input_with_a_broken_base_is_refused_at_setup():
    adata, _ = _log1p_knockdown_screen()
    adata.uns["log1p"] = {"base": "2"}
    with pytest.raises(ValueError, match=r"adata\.uns\['log1p'\]\['base'\] is '2'"):
        SemiMechVI.setup_anndata(adata, perturbation_key="perturbation", control_label="NT", counts=False)


def test_log1p_input_is_read_from_the_controls_which_are_never_moved():
    ctx = Context(None)
    var = np.full(2, 0.01, dtype=np.float32)
    obs = Observations(control_label="NT")
    obs.conditions[("NT", ctx)] = ObservedPseudobulk(np.array([0.0, 1.0], dtype=np.float32), var, 100)
    # a perturbation moved to the controls' batch mix can dip below zero at a gene barely expressed
    obs.conditions[("A", ctx)] = ObservedPseudobulk(np.array([-0.001, 0.5], dtype=np.float32), var, 100)
    model = SimpleNamespace(anchor_=obs)
    assert OwnGeneMixin._log1p_input(model)
    # the controls' level in each batch counts where the batch has enough controls
    obs.batch_levels[ctx] = (np.array([[0.1, 1.0], [-0.2, 1.0]]), np.full((2, 2), 0.01), np.array([True, False]))
    assert OwnGeneMixin._log1p_input(model)
    obs.batch_levels[ctx] = (np.array([[0.1, 1.0], [-0.2, 1.0]]), np.full((2, 2), 0.01), np.array([True, True]))
    assert not OwnGeneMixin._log1p_input(model)
    # centred values: a negative control mean
    obs.batch_levels.clear()
    obs.conditions[("NT", ctx)] = ObservedPseudobulk(np.array([-0.3, 0.3], dtype=np.float32), var, 100)
    assert not OwnGeneMixin._log1p_input(model)
    assert not OwnGeneMixin._log1p_input(SimpleNamespace(anchor_=None))


def test_an_activation_to_a_level_reaches_a_silent_gene_on_log1p_input():
    """log1p input, normal likelihood: a factor cannot lift a gene that is not expressed, the level model can."""
    adata, targets, keep = _activated_screen()
    held = targets[int(np.argmin(keep))]  # the most silent target, silenced: no read outside its own cells
    labels = adata.obs["perturbation"].to_numpy()
    x = adata.X.toarray()
    x[labels != held, list(adata.var_names).index(held)] = 0.0
    adata.X = np.log1p(1e4 * x / x.sum(1, keepdims=True)).astype(np.float32)
    SemiMechVI.setup_anndata(
        adata, perturbation_key="perturbation", control_label="NT", counts=False, perturbation_modality="CRISPRa"
    )
    model, _ = tiny_model_without(adata, np.flatnonzero(labels == held), max_epochs=3, gene_likelihood="normal")
    tm = model.target_map_
    assert tm.own_model == "level"
    anchor = model._anchor_bases([CLASS_REFERENCE], tm.trained)[0]
    np.testing.assert_allclose(tm.own_effects, np.maximum(tm.own_level - anchor, 0.0), atol=1e-9)
    g = list(adata.var_names).index(held)
    x = np.asarray(adata.X)
    control, observed = float(x[labels == "NT", g].mean()), float(x[labels == held, g].mean())
    assert control == 0.0
    assert observed > 2.0
    change = float(model.predict([held]).obs["own_gene_change"].iloc[0])
    assert change == pytest.approx(observed, abs=0.6)


def test_the_level_rests_on_every_observed_member_and_the_validations_on_a_seeded_draw(steady, monkeypatch):
    import copy

    import scmech.model._post_training as post

    pairs = (np.arange(6), np.arange(12.0).reshape(6, 2), np.arange(10, 16))
    drawn = post._at_most(pairs, 4)
    assert len(drawn[0]) == 4
    assert list(drawn[0]) == sorted(drawn[0])
    assert set(drawn[0]) <= set(range(6))
    np.testing.assert_array_equal(drawn[1], pairs[1][drawn[0]])
    np.testing.assert_array_equal(drawn[2], pairs[2][drawn[0]])
    np.testing.assert_array_equal(post._at_most(pairs, 4)[0], drawn[0])  # seeded
    assert post._at_most(pairs, 6) is pairs
    assert post._at_most(None, 2) is None
    # a class larger than the validations' limit: the own-gene level still counts every observed member
    model = copy.deepcopy(steady.model)
    before = model.target_map_.own_targets
    assert before >= 3
    monkeypatch.setattr(post, "MAX_CLASS", 2)
    model._fit_target_map(np.asarray(model.train_indices))
    assert model.target_map_.own_source == "observed"
    assert model.target_map_.own_targets == before
    assert model.target_map_.own_effect == pytest.approx(steady.model.target_map_.own_effect)
