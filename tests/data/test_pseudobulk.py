"""Pseudobulk means: the same numbers whatever the storage of the matrix."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from scmech.data._pseudobulk import normalized_mean


def test_sparse_matrices_larger_than_a_block_give_the_dense_means():
    """In-memory CSR matrices are summed in row blocks (bounded memory); the result must not depend on it."""
    rng = np.random.default_rng(0)
    n = 25_000  # more than two blocks of 10,000 rows
    x = sp.random(n, 40, density=0.2, format="csr", random_state=1, dtype=np.float32)
    x.data = np.ceil(x.data * 10)
    x = (
        x + sp.csr_matrix((np.ones(n, dtype=np.float32), (np.arange(n), np.zeros(n, dtype=int))), shape=x.shape)
    ).tocsr()
    groups = rng.choice(["a", "b", "c", "skip"], n)
    sparse = normalized_mean(x, groups, ["a", "b", "c"])
    dense = normalized_mean(x.toarray(), groups, ["a", "b", "c"])
    np.testing.assert_allclose(sparse, dense, rtol=1e-12)
    # by hand for one group: mean over its cells of counts / library size
    d = x.toarray().astype(np.float64)
    sel = groups == "b"
    np.testing.assert_allclose(sparse[1], (d[sel] / d[sel].sum(1, keepdims=True)).mean(0), rtol=1e-10)
    # a group confined to one block (the others are skipped)
    only_first = np.where(np.arange(n) < 100, "a", "none")
    np.testing.assert_allclose(
        normalized_mean(x, only_first, ["a"]), normalized_mean(x.toarray(), only_first, ["a"]), rtol=1e-12
    )


def test_second_moments_by_hand_for_counts_and_values_in_blocks():
    """``second_moment=True`` also averages squared proportions (or squared values), sparse or dense, across row
    blocks, in the same pass as the means."""
    rng = np.random.default_rng(2)
    n = 21_000  # more than two blocks
    d = rng.poisson(2.0, size=(n, 5)).astype(np.float64) + 1.0
    groups = rng.choice(["a", "b"], n)
    prop = d / d.sum(1, keepdims=True)
    for x in (d, sp.csr_matrix(d)):
        mean, m2 = normalized_mean(x, groups, ["a", "b"], second_moment=True)
        np.testing.assert_allclose(mean, normalized_mean(x, groups, ["a", "b"]), rtol=1e-12)
        np.testing.assert_allclose(m2[0], (prop[groups == "a"] ** 2).mean(0), rtol=1e-10)
        _, raw = normalized_mean(x, groups, ["a", "b"], counts=False, second_moment=True)
        np.testing.assert_allclose(raw[1], (d[groups == "b"] ** 2).mean(0), rtol=1e-10)
    # an empty group is NaN in both
    mean, m2 = normalized_mean(d, groups, ["a", "none"], second_moment=True)
    assert np.isnan(mean[1]).all()
    assert np.isnan(m2[1]).all()
