"""Invariants of ``predict`` and the representations that a user relies on, checked on a tiny trained model."""

from __future__ import annotations

import numpy as np
import pytest

from scmech.data import pseudobulk
from scmech.model import SemiMechVI

from .conftest import small, trained

CONDITIONS = ["G0008", "G0009", "G0009+G0021", "NT"]


@pytest.fixture(scope="module")
def model() -> SemiMechVI:
    return trained(small(240), max_epochs=2)


def _x(out) -> np.ndarray:
    return np.asarray(out.X)


def test_rows_do_not_depend_on_the_other_rows_their_order_or_duplicates(model):
    full = _x(model.predict(CONDITIONS, random_state=1))
    for i, label in enumerate(CONDITIONS):
        np.testing.assert_allclose(_x(model.predict([label], random_state=1))[0], full[i], atol=1e-5)
    np.testing.assert_allclose(_x(model.predict(CONDITIONS[::-1], random_state=1))[::-1], full, atol=1e-5)
    dup = _x(model.predict(["G0008", "G0008"], random_state=1))
    np.testing.assert_allclose(dup[0], dup[1], atol=1e-6)
    np.testing.assert_allclose(dup[0], full[0], atol=1e-5)


def test_unseen_targets_are_anchored_on_every_training_target_whatever_the_other_rows(model):
    # no subsample of the training targets: a random one added its own noise to every unseen prediction, and it
    # had to be drawn per target so that rows did not depend on each other
    trained_targets = sorted(model.target_map_.trained)
    u1, u2 = [g for g in model.adata.var_names if g not in set(trained_targets)][:2]
    for target in (u1, "NEW_A"):
        assert model._class_of(target)[0] == tuple(trained_targets)
    for first, second in ((u1, u2), ("NEW_A", "NEW_B")):
        both = _x(model.predict([first, second], random_state=3))
        alone = _x(model.predict([second], random_state=3))
        np.testing.assert_allclose(both[1], alone[0], atol=1e-5)
        dup = _x(model.predict([second, second], random_state=3))
        np.testing.assert_allclose(dup[0], dup[1], atol=1e-5)


def test_combination_order_and_surrounding_whitespace_do_not_matter(model):
    out = model.predict(["G0009+G0021", "G0021+G0009", " G0009 + G0021 "], random_state=1)
    x = _x(out)
    np.testing.assert_allclose(x[1], x[0], atol=1e-6)
    np.testing.assert_allclose(x[2], x[0], atol=1e-6)
    assert set(out.obs["perturbation"]) == {"G0009+G0021"}


def test_predictions_survive_save_and_load(model, tmp_path):
    model.save(tmp_path / "m", save_anndata=True)
    loaded = SemiMechVI.load(tmp_path / "m")
    for anchor in ("auto", "none"):
        np.testing.assert_allclose(
            _x(loaded.predict(CONDITIONS, random_state=1, anchor=anchor)),
            _x(model.predict(CONDITIONS, random_state=1, anchor=anchor)),
            atol=1e-6,
        )


def test_shuffled_starting_data_give_the_same_prediction(model):
    adata = model.adata
    perm = np.random.default_rng(0).permutation(adata.n_obs)
    shuffled = _x(model.predict(CONDITIONS, random_state=1, adata=adata[perm].copy()))
    same = _x(model.predict(CONDITIONS, random_state=1, adata=adata.copy()))
    np.testing.assert_allclose(shuffled, same, atol=1e-5)
    # another AnnData starts from all its controls: the registered data's controls, training and validation alike
    controls = np.flatnonzero(adata.obs["perturbation"].to_numpy() == "NT")
    np.testing.assert_allclose(_x(model.predict(CONDITIONS, random_state=1, from_cells=controls)), same, atol=1e-5)


def test_representations_on_a_view_equal_those_on_a_copy_and_indices_a_subset(model):
    view = model.adata[40:120]
    full = model.get_latent_representation()
    np.testing.assert_allclose(model.get_latent_representation(view), model.get_latent_representation(view.copy()))
    np.testing.assert_allclose(model.get_latent_representation(indices=np.arange(40, 120)), full[40:120])
    basal = model.get_basal_representation()
    np.testing.assert_allclose(model.get_basal_representation(indices=np.arange(40, 120)), basal[40:120], atol=1e-6)


def test_anchored_seen_condition_is_closer_to_its_observation(model):
    observed = pseudobulk(model.adata[model.train_indices], "perturbation")
    anchored = _x(model.predict(CONDITIONS, random_state=1))
    own = _x(model.predict(CONDITIONS, random_state=1, anchor="none"))
    for i, label in enumerate(CONDITIONS):
        target = observed.loc[label].to_numpy()
        assert np.abs(anchored[i] - target).mean() < np.abs(own[i] - target).mean(), label


def test_efficacy_moves_the_read_out_monotonically_away_from_the_controls(model):
    control = _x(model.predict(["NT"], random_state=1, anchor="none"))[0]
    dist = [
        np.abs(_x(model.predict(["G0009"], random_state=1, efficacy=e, anchor="none"))[0] - control).mean()
        for e in (0.0, 0.5, 1.0)
    ]
    assert dist[0] < dist[1] < dist[2]
