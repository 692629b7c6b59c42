from __future__ import annotations

import numpy as np
import pytest

from scmech.model import SemiMechVI
from scmech.train import PerturbationBatchSampler


def _labels(n=600, seed=0):
    rng = np.random.default_rng(seed)
    batch = rng.integers(0, 3, size=n)
    cond = rng.integers(0, 6, size=n)
    is_ctrl = cond == 0
    return batch, cond, is_ctrl


def _sampler(batch, cond, is_ctrl, **kwargs) -> PerturbationBatchSampler:
    return PerturbationBatchSampler(batch_labels=batch, condition_codes=cond, is_control=is_ctrl, **kwargs)


def test_batch_matched_minibatches_hold_one_batch_with_its_controls():
    batch, cond, is_ctrl = _labels()
    s = _sampler(batch, cond, is_ctrl, batch_size=64, strategy="batch_matched", min_controls=8)
    mbs = list(iter(s))
    seen = set()
    for mb in mbs:
        mb = np.asarray(mb)
        assert len(np.unique(batch[mb])) == 1
        assert is_ctrl[mb].sum() >= 8
        seen.update(mb.tolist())
    # every perturbed cell appears in the epoch
    assert set(np.flatnonzero(~is_ctrl)) <= seen
    # deterministic for the seed, different next epoch
    s2 = _sampler(batch, cond, is_ctrl, batch_size=64, strategy="batch_matched", min_controls=8)
    assert [list(m) for m in iter(s2)] == [list(m) for m in mbs]
    assert [list(m) for m in iter(s2)] != [list(m) for m in mbs]


def test_error_guided_draws_in_proportion_to_weights():
    batch, cond, is_ctrl = _labels(n=3000)
    weights = np.ones(6)
    weights[3] = 4.0
    s = _sampler(batch, cond, is_ctrl, batch_size=100, strategy="error_guided", condition_weights=weights)
    drawn = np.concatenate([np.asarray(mb) for _ in range(5) for mb in iter(s)])
    freq = np.bincount(cond[drawn], minlength=6) / np.bincount(cond, minlength=6)
    assert freq[3] / np.mean(freq[[1, 2, 4, 5]]) == pytest.approx(4.0, rel=0.2)
    assert len(s) == 30


def test_unknown_strategy_raises():
    batch, cond, is_ctrl = _labels()
    with pytest.raises(ValueError, match="strategy='nope' is not"):
        _sampler(batch, cond, is_ctrl, batch_size=64, strategy="nope")


@pytest.mark.parametrize("batching", ["batch_matched", "error_guided"])
def test_model_trains_with_each_batching(batching, monkeypatch):
    import scmech

    adata = scmech.data.simulate_perturbseq(n_cells=400, n_genes=30, n_perturbations=4, n_combinations=1, seed=0)
    SemiMechVI.setup_anndata(adata, batch_key="batch")
    model = SemiMechVI(adata, n_latent=4, n_hidden=16, field_hidden=8)
    captured = {}
    from scmech.train import SemiMechTrainingPlan

    original = SemiMechTrainingPlan._update_weights

    def spy(self):
        before = self._tracking["weights"].copy()
        original(self)
        captured["changed"] = not np.allclose(before, self._tracking["weights"])

    monkeypatch.setattr(SemiMechTrainingPlan, "_update_weights", spy)
    model.train(max_epochs=2, batch_size=64, enable_progress_bar=False, batching=batching)
    assert np.isfinite(model.history["elbo_train"].to_numpy().astype(float)).all()
    if batching == "error_guided":
        assert captured["changed"]


def test_batch_matched_needs_a_batch_key():
    import scmech

    adata = scmech.data.simulate_perturbseq(n_cells=200, n_genes=20, n_perturbations=3, n_combinations=0, seed=0)
    SemiMechVI.setup_anndata(adata)
    model = SemiMechVI(adata, n_latent=3, n_hidden=8, field_hidden=4)
    with pytest.raises(ValueError, match="batching='batch_matched' needs wet-lab batches"):
        model.train(max_epochs=1, batching="batch_matched")
    with pytest.raises(ValueError, match="batching='sorted' is not one of"):
        model.train(max_epochs=1, batching="sorted")


def _epoch(labels, is_control, batch_size, **kwargs) -> tuple[PerturbationBatchSampler, list]:
    s = PerturbationBatchSampler(
        batch_labels=labels,
        condition_codes=np.zeros(len(labels), dtype=int),
        is_control=is_control,
        batch_size=batch_size,
        strategy="batch_matched",
        **kwargs,
    )
    return s, list(s)


@pytest.mark.parametrize(
    ("labels", "controls", "batch_size"),
    [
        (np.repeat(np.arange(10), 100), 0.1, 128),
        (np.repeat(np.arange(3), 334)[:1000], 0.1, 16),
        (np.zeros(1000, dtype=int), 0.1, 64),
        (np.repeat(np.arange(7), 143)[:1000], 0.1, 50),
        (np.zeros(100, dtype=int), 0.1, 8),  # min_controls=8 would fill every minibatch with controls
        (np.zeros(301, dtype=int), 300 / 301, 128),  # one perturbed cell among 300 controls
        (np.r_[np.zeros(183, dtype=int), np.ones(17, dtype=int)], 0.0, 16),  # a batch of 17 = 16 + 1 cells
        (np.zeros(33, dtype=int), 1.0, 16),  # controls only: 16 + 16 + 1
    ],
)
def test_batch_matched_reaches_every_cell_in_minibatches_of_at_least_two(labels, controls, batch_size):
    # Lightning stops an epoch at len(sampler): a length below the yield left a fifth of the cells untrained, and
    # a minibatch of one cell stops batch normalisation
    n = len(labels)
    is_control = np.zeros(n, dtype=bool)
    is_control[: round(controls * n)] = True
    is_control = np.random.default_rng(0).permutation(is_control)
    s, _ = _epoch(labels, is_control, batch_size)
    for epoch in range(2):
        s.set_epoch(epoch)
        batches = list(s)
        assert len(batches) == len(s)
        assert len(np.unique(np.concatenate(batches))) == n
        assert min(len(mb) for mb in batches) >= 2
        assert all(len(set(labels[mb])) == 1 for mb in batches)  # each minibatch within one wet-lab batch


def test_batch_matched_refuses_a_batch_of_one_cell():
    with pytest.raises(ValueError, match=r"Wet-lab batch 1 \(its code among the registered batches\) has a single"):
        _epoch(np.r_[np.zeros(20, dtype=int), 1], np.zeros(21, dtype=bool), 8)


def test_sampler_and_train_name_wrong_arguments():
    with pytest.raises(ValueError, match=r"batch_size=0 must be a positive integer \(cells per minibatch\)"):
        PerturbationBatchSampler(
            batch_labels=np.zeros(10),
            condition_codes=np.zeros(10, int),
            is_control=np.zeros(10, bool),
            batch_size=0,
            strategy="batch_matched",
        )
    with pytest.raises(ValueError, match=r"one value per training cell; got lengths 10, 9 and 10"):
        PerturbationBatchSampler(
            batch_labels=np.zeros(10),
            condition_codes=np.zeros(9, int),
            is_control=np.zeros(10, bool),
            batch_size=4,
            strategy="batch_matched",
        )


def test_an_unknown_train_argument_is_named_with_its_closest_ones():
    import scmech

    adata = scmech.data.simulate_perturbseq(n_cells=200, n_genes=20, n_perturbations=3, n_combinations=0, seed=0)
    SemiMechVI.setup_anndata(adata)
    model = SemiMechVI(adata, n_latent=4, n_hidden=16, field_hidden=8)
    with pytest.raises(TypeError, match=r"train\(\) got unknown keyword argument\(s\) 'foo':"):
        model.train(max_epochs=1, foo=1)
    with pytest.raises(TypeError, match=r"'max_epoch' \(did you mean 'max_epochs'"):
        model.train(max_epoch=1)
    assert not model.is_trained_
    # what scvi-tools' training takes besides its trainers is no unknown argument
    model.train(max_epochs=1, load_sparse_tensor=False, shuffle_set_split=True, enable_progress_bar=False)
    assert model.is_trained_
