"""The expression amplitude of an unseen knock-down: closed forms, recovery of a planted steepness, a silent target."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from scmech.data import simulate_perturbseq
from scmech.model import SemiMechVI
from scmech.model._amplitude import MIN_STEEPNESS_MEMBERS, STEEPNESS, expression_amplitude, fit_steepness

from .conftest import tiny_model_without


def test_expression_amplitude_closed_forms():
    median = 4.0
    # one at the median for every steepness; 0 where the gene is silent
    for k in STEEPNESS:
        assert float(expression_amplitude(median, median, k)) == pytest.approx(1.0)
        assert float(expression_amplitude(0.0, median, k)) == 0.0
    # flat: every expressed gene moves the shared response as far
    np.testing.assert_allclose(expression_amplitude(np.array([0.01, 1.0, 100.0]), median, 0.0), [1.0, 1.0, 1.0])
    # proportional
    np.testing.assert_allclose(expression_amplitude(np.array([2.0, 8.0]), median, float("inf")), [0.5, 2.0])
    # k = 1: (x / (x + m)) * 2
    assert float(expression_amplitude(12.0, median, 1.0)) == pytest.approx(12.0 / 16.0 * 2.0)


def _members(amplitude, n: int = 12, genes: int = 60, noise: float = 0.05, seed: int = 0):
    """Members whose observed change is ``amplitude(x)`` times a shared response, plus noise; own genes distinct."""
    rng = np.random.default_rng(seed)
    shared = rng.normal(0.0, 0.5, genes)
    expression = np.exp(rng.uniform(np.log(2.0), np.log(200.0), n))
    median = float(np.median(expression))
    changes = np.stack([amplitude(x, median) * shared + rng.normal(0.0, noise, genes) for x in expression])
    # each member's anchor as an unseen target: the shared response seen through the others' noise
    anchors = np.stack([shared + rng.normal(0.0, noise / 3, genes) for _ in range(n)])
    return changes, anchors, expression, np.arange(n)


def test_fit_steepness_recovers_a_proportional_and_a_flat_screen():
    changes, anchors, expression, own = _members(lambda x, m: 1.0)
    k, silent, errors = fit_steepness(changes, anchors, expression, own)
    assert k == 0.0  # flat: nothing follows expression
    assert silent == 0.0  # no silent member: the mechanistic rule stands
    assert set(errors) == set(STEEPNESS)
    changes, anchors, expression, own = _members(lambda x, m: x / m)
    k, _, errors = fit_steepness(changes, anchors, expression, own)
    assert k >= 3.0  # the response follows expression: a steep amplitude
    assert errors[k] < errors[0.0]


def test_silent_members_decide_whether_a_silent_target_stays_at_the_controls():
    changes, anchors, expression, own = _members(lambda x, m: 1.0)
    expression[:4] = 0.0
    # silent members that respond like the others: their response is not their own gene's, a silent target shares it
    _, silent, _ = fit_steepness(changes, anchors, expression, own)
    assert silent == 1.0
    # silent members that do not respond: a silent target stays at the controls
    changes[:4] = np.random.default_rng(1).normal(0.0, 0.05, changes[:4].shape)
    _, silent, _ = fit_steepness(changes, anchors, expression, own)
    assert silent == 0.0
    # too few expressed members to choose among the curves: flat, even where the response follows expression
    changes, anchors, expression, own = _members(lambda x, m: x / m)
    few = slice(0, MIN_STEEPNESS_MEMBERS - 1)
    k, _, errors = fit_steepness(changes[few], anchors[few], expression[few], own[few])
    assert k == 0.0
    assert errors == {}


def _screen_with_a_silent_gene(modality: str):
    adata = simulate_perturbseq(n_cells=600, n_genes=30, n_perturbations=6, n_combinations=0, modality=modality, seed=0)
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    adata.obs["perturbation"] = labels
    targets = set(labels) - {"NT"}
    others = [g for g in map(str, adata.var_names) if g not in targets]
    x = np.asarray(adata.X.toarray(), dtype=np.float32)
    silent, expressed = others[0], others[1]
    x[:, list(adata.var_names).index(silent)] = 0.0  # a gene no cell expresses
    adata.X = sp.csr_matrix(x)
    with pytest.warns(UserWarning, match="without any counts"):
        SemiMechVI.setup_anndata(
            adata,
            perturbation_key="perturbation",
            control_label="NT",
            batch_key="batch",
            perturbation_modality=modality,
        )
    model, _ = tiny_model_without(adata, np.array([], dtype=int), max_epochs=3)
    return model, silent, expressed


def test_an_unseen_knock_down_of_a_silent_gene_is_predicted_at_the_controls(tmp_path):
    model, silent, expressed = _screen_with_a_silent_gene("CRISPRko")
    tm = model.target_map_
    assert np.isfinite(tm.amplitude_median)
    assert tm.amplitude_silent == 0.0
    summary = tm.map_summary()
    assert summary["amplitude_silent"] == 0.0
    assert summary["amplitude_steepness"] == tm.amplitude_steepness
    pred = model.predict(["NT", silent, expressed])
    x = np.asarray(pred.X, dtype=np.float64)
    # nothing to knock down: the controls, not the shared response of the training targets
    np.testing.assert_allclose(x[1], x[0], atol=1e-5)
    np.testing.assert_array_equal(pred.obs["amplitude"].to_numpy()[:2], [np.nan, 0.0])
    assert pred.obs["amplitude"].iloc[2] == pytest.approx(1.0)  # flat: fewer training targets than the minimum
    # an expressed gene's knock-down gets the shared response, away from the controls
    assert np.abs(x[2] - x[0]).max() > 0.05
    # the same without the controls requested, and after another unseen target of the same anchoring plan
    alone_rows = np.asarray(model.predict([expressed, silent]).X, dtype=np.float64)
    np.testing.assert_allclose(alone_rows[1], x[0], atol=1e-4)
    np.testing.assert_allclose(alone_rows[0], x[2], atol=1e-4)
    # saved and loaded, the model keeps its amplitude and predicts the same
    model.save(tmp_path / "m", save_anndata=True)
    loaded = SemiMechVI.load(tmp_path / "m")
    assert loaded.target_map_.amplitude_median == pytest.approx(tm.amplitude_median)
    assert loaded.target_map_.amplitude_silent == 0.0
    np.testing.assert_allclose(np.asarray(loaded.predict(["NT", silent]).X), x[:2], atol=1e-4)
    # the model alone is not scaled
    alone = np.asarray(model.predict([silent], anchor="none").X, dtype=np.float64)
    assert np.abs(alone[0] - x[0]).max() > 1e-3


def test_an_activation_screen_gets_no_expression_amplitude():
    model, silent, _ = _screen_with_a_silent_gene("CRISPRa")
    tm = model.target_map_
    assert np.isnan(tm.amplitude_median)
    assert tm.map_summary()["amplitude_steepness"] is None
    pred = np.asarray(model.predict(["NT", silent]).X, dtype=np.float64)
    assert np.abs(pred[1] - pred[0]).max() > 0.05  # activating a silent gene is not predicted at the controls
