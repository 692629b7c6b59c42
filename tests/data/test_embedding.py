"""The pseudobulk gene embedding: principal-component scores, full or truncated at genome scale."""

from __future__ import annotations

import numpy as np
import pytest

from scmech.data import _embedding


def _pseudobulk(n_conditions: int, n_genes: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    programmes = rng.normal(size=(n_conditions, 4)) @ rng.normal(size=(4, n_genes)) * 3
    return programmes + rng.normal(size=(n_conditions, n_genes))


def test_embedding_is_the_principal_component_scores():
    pb = _pseudobulk(40, 60)
    scores = _embedding.pseudobulk_gene_embedding(pb, n_components=5)
    y = pb.T - pb.T.mean(axis=0, keepdims=True)
    # scores are U_K S_K: orthogonal columns whose norms are the leading singular values
    s = np.linalg.svd(y, compute_uv=False)[:5]
    np.testing.assert_allclose(np.linalg.norm(scores, axis=0), s, rtol=1e-10)
    gram = scores.T @ scores
    np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0, atol=1e-8 * s[0] ** 2)


@pytest.mark.parametrize("n_components", [3, 10])
def test_truncated_solve_at_genome_scale_matches_the_full_svd(monkeypatch, n_components):
    pb = _pseudobulk(350, 400)  # both dimensions above the truncation threshold
    assert min(pb.shape) > _embedding.TRUNCATED_SVD_ABOVE
    truncated = _embedding.pseudobulk_gene_embedding(pb, n_components=n_components)
    monkeypatch.setattr(_embedding, "TRUNCATED_SVD_ABOVE", 10**9)
    full = _embedding.pseudobulk_gene_embedding(pb, n_components=n_components)
    # the same components up to the sign of each column
    signs = np.sign((truncated * full).sum(axis=0))
    np.testing.assert_allclose(truncated * signs, full, atol=1e-7 * np.abs(full).max())
