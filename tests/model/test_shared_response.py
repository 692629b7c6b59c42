"""The shared response an unseen target is anchored on: a random-effects mean of the training targets."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from scmech.model._anchoring import Observations, ObservedPseudobulk, UnseenTarget
from scmech.model._post_training import PostTrainingMixin
from scmech.model._protocols import CLASS_REFERENCE, Context
from scmech.model._weights import member_mean, random_effects_weights, without_own_genes


def test_random_effects_weights_closed_form():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(4, 50))
    noise = np.array([0.1, 0.1, 0.1, 2.0])
    var = np.repeat(noise[:, None], 50, axis=1)
    w = random_effects_weights(values, var)
    tau2 = max(0.0, values.var(axis=0, ddof=1).mean() - noise.mean())
    expected = 1.0 / (tau2 + noise)
    np.testing.assert_allclose(w, expected / expected.sum())
    assert w.sum() == pytest.approx(1.0)
    assert w[3] < w[0] == pytest.approx(w[1])
    # equally precise members weigh equally, whatever their values
    np.testing.assert_allclose(random_effects_weights(values, np.full((4, 50), 0.3)), 0.25)
    # no noise and no spread: nothing to weigh by
    np.testing.assert_allclose(random_effects_weights(np.ones((3, 5)), np.zeros((3, 5))), 1 / 3)
    assert random_effects_weights(values[:1], var[:1]).tolist() == [1.0]


def test_random_effects_weights_tend_to_precision_weights_without_spread():
    # members that differ by their noise alone (tau2 = 0): weights are the inverse noise variances
    rng = np.random.default_rng(1)
    noise = np.array([0.01, 0.04, 1.0])
    values = rng.normal(scale=np.sqrt(noise)[:, None], size=(3, 20000))
    w = random_effects_weights(values, np.repeat(noise[:, None], 20000, axis=1))
    inv = 1 / noise
    np.testing.assert_allclose(w, inv / inv.sum(), rtol=0.05)


def _observations(values: np.ndarray, noise: np.ndarray) -> tuple[Observations, Context]:
    ctx = Context(None)
    conds = {("NT", ctx): ObservedPseudobulk(np.zeros(values.shape[1]), np.full(values.shape[1], 1e-3), 500)}
    for i, (v, s) in enumerate(zip(values, noise, strict=True)):
        conds[(f"T{i}", ctx)] = ObservedPseudobulk(v, np.full(values.shape[1], s), 100)
    return Observations("NT", conds, {f"T{i}": (f"T{i}",) for i in range(len(values))}), ctx


def test_a_noisy_training_target_barely_moves_an_unseen_prediction():
    rng = np.random.default_rng(2)
    shared = rng.normal(size=300)
    noise = np.array([0.01, 0.01, 0.01, 0.01, 1.0])  # the last target was observed in a handful of cells
    values = shared + rng.normal(scale=0.3, size=(5, 300)) + rng.normal(scale=np.sqrt(noise)[:, None], size=(5, 300))
    obs, ctx = _observations(values, noise)
    plan = UnseenTarget(ctx, tuple(f"T{i}" for i in range(5)), pooled=True)

    def read(p):  # the model reads out every training target as observed: the corrections are zero
        return values[int(p.label[1:])] if p.label != CLASS_REFERENCE else np.zeros(300)

    value, _ = plan.apply(obs.protocol("NEW", ctx), read, obs)
    w = random_effects_weights(values, np.repeat(noise[:, None], 300, axis=1))
    np.testing.assert_allclose(plan.weights(obs), np.repeat(w[:, None], 300, axis=1))
    np.testing.assert_allclose(value, w @ values)
    assert w[4] < w[0] / 5
    # the weighted anchor is closer to the shared response than the plain mean, which carries a fifth of the noise
    assert np.mean((value - shared) ** 2) < 0.5 * np.mean((values.mean(0) - shared) ** 2)


def _validation_inputs(n: int = 5, genes: int = 8):
    rng = np.random.default_rng(3)
    y = rng.normal(size=(n, genes))
    pairs = (np.arange(n), y, np.arange(n))
    tm = SimpleNamespace(gain=0.0, drive_effect=-1.0, own_effect=-1.0, directions=np.zeros((genes, 2)))
    embedding = rng.normal(size=(n, 2))
    ops = embedding @ np.array([[1.0, 0.0], [0.0, 1.0]]) + 0.01 * rng.normal(size=(n, 2))
    return y, pairs, tm, embedding, ops


@pytest.mark.parametrize("helps", [True, False])
def test_embedding_map_is_kept_only_when_it_predicts_the_held_out_training_targets(helps):
    y, pairs, tm, embedding, ops = _validation_inputs()
    # each member's anchor as an unseen target: any observed mean of the others; the map must explain the rest
    bases = np.random.default_rng(4).normal(size=y.shape)

    def read_mapped(rows):
        # rows come per member as (reference, without the map, with the map): the read-out is the operator's
        # first coordinate on every gene, and the member's truth is its own operator's; with ``helps`` the
        # map's read-out lands on the truth, otherwise the map points away from it
        out = []
        for j in range(len(rows)):
            k, kind = divmod(j, 3)
            truth = y[k] - bases[k]
            if kind == 0:
                out.append(np.zeros(y.shape[1]))
            elif kind == 1:
                out.append(0.5 * truth)
            else:
                out.append(truth if helps else -truth)
        return np.asarray(out)

    fake = SimpleNamespace(
        _read_mapped=read_mapped,
        _own_levels=lambda pairs: (np.zeros(len(pairs[0])), np.zeros(len(pairs[0]))),
        _member_effects=lambda own_level, reference, tm: np.full(len(own_level), -1.0),
    )
    kept = PostTrainingMixin._validate_map(fake, embedding, np.zeros_like(ops), ops, tm, pairs, bases)
    assert kept is helps
    # without observed members there is nothing to validate on: the latent choice stands
    assert PostTrainingMixin._validate_map(fake, embedding, np.zeros_like(ops), ops, tm, None, None) is True


def test_each_member_is_left_out_of_the_shared_response_at_its_own_gene():
    """A target without training cells does not knock down the training targets' genes: at gene g the mean reads
    the members that do not target g (weights renormalised); elsewhere it is the plain weighted mean."""
    rng = np.random.default_rng(4)
    values = rng.normal(size=(4, 6))
    values[0, 1] -= 3.0  # member T0 knocks its own gene (1) down
    values[2, 4] -= 3.0  # member T2 knocks gene 4 down
    noise = np.array([0.01, 0.02, 0.01, 0.05])
    obs, ctx = _observations(values, noise)
    own = ((1,), (), (4,), ())
    plan = UnseenTarget(ctx, tuple(f"T{i}" for i in range(4)), pooled=True, own_genes=own)

    def read(p):
        return values[int(p.label[1:])] if p.label != CLASS_REFERENCE else np.zeros(6)

    value, _ = plan.apply(obs.protocol("NEW", ctx), read, obs)
    w = random_effects_weights(values, np.repeat(noise[:, None], 6, axis=1))
    expected = w @ values
    for g, q in ((1, 0), (4, 2)):
        keep = np.arange(4) != q
        expected[g] = w[keep] @ values[keep, g] / w[keep].sum()
    np.testing.assert_allclose(value, expected)
    np.testing.assert_allclose(plan.weights(obs).sum(0), 1.0)
    # a gene every member targets keeps the plain weights
    np.testing.assert_allclose(without_own_genes(w, ((0,), (0,), (0,), (0,)), 6)[:, 0], w)


def test_member_mean_equals_the_mean_with_the_weights_without_own_genes():
    rng = np.random.default_rng(5)
    values, var = rng.normal(size=(6, 9)), rng.uniform(0.1, 1.0, size=(6, 9))
    w = random_effects_weights(values, var)
    own = ((0,), (), (2, 3), (0,), (8, 8), ())  # a repeated gene counts once
    omega = without_own_genes(w, ((0,), (), (2, 3), (0,), (8,), ()), 9)
    np.testing.assert_allclose(member_mean(w, values, own), (omega * values).sum(0), atol=1e-12)
    np.testing.assert_allclose(member_mean(w, var, own, squared=True), (omega**2 * var).sum(0), atol=1e-12)
    # no own genes: the plain weighted mean; a gene every member targets keeps the plain weights
    np.testing.assert_allclose(member_mean(w, values), w @ values, atol=1e-12)
    every = tuple((4,) for _ in range(6))
    np.testing.assert_allclose(member_mean(w, values, every)[4], w @ values[:, 4], atol=1e-12)
