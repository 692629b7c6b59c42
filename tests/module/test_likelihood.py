"""The sparse negative binomial log-likelihood equals scvi-tools' dense one, in value and gradient."""

from __future__ import annotations

import pytest
import torch
from scvi.distributions import NegativeBinomial, Normal, ZeroInflatedNegativeBinomial

from scmech.module._likelihood import counts_log_likelihood, nb_log_likelihood


def _data(n_cells: int = 40, n_genes: int = 30, density: float = 0.2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n_cells, n_genes, generator=g, dtype=torch.float64) < density).double()
    x = x * torch.randint(1, 50, (n_cells, n_genes), generator=g).double()
    x[3] = 0.0  # a cell without any count
    x[:, 5] = 0.0  # a gene never counted
    mu = torch.rand(n_cells, n_genes, generator=g, dtype=torch.float64) * 5 + 1e-3
    return x, mu


@pytest.mark.parametrize("sparse", [True, False], ids=["stored counts", "dense"])
@pytest.mark.parametrize("per", ["gene", "cell"])
def test_value_and_gradients_equal_scvi_tools(sparse, per):
    x, mu = _data()
    shape = (x.shape[1],) if per == "gene" else x.shape
    theta = torch.rand(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3 + 0.05
    mu_a, th_a = mu.clone().requires_grad_(), theta.clone().requires_grad_()
    mu_b, th_b = mu.clone().requires_grad_(), theta.clone().requires_grad_()
    ours = nb_log_likelihood(x, mu_a, th_a, sparse=sparse)
    ref = NegativeBinomial(mu=mu_b, theta=th_b).log_prob(x).sum(-1)
    assert ours.shape == (x.shape[0],)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-8)
    ours.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(mu_a.grad, mu_b.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(th_a.grad, th_b.grad, rtol=1e-8, atol=1e-8)


def test_a_broadcast_per_gene_theta_is_read_per_gene():
    x, mu = _data()
    theta = torch.rand(x.shape[1], dtype=torch.float64) + 0.1
    px = NegativeBinomial(mu=mu, theta=theta)  # stores theta broadcast to every cell
    assert px.theta.stride(0) == 0
    torch.testing.assert_close(counts_log_likelihood(px, x), px.log_prob(x).sum(-1), rtol=1e-10, atol=1e-8)


def test_float32_counts_match_to_rounding():
    x, mu = _data(n_cells=64, n_genes=200, density=0.05)
    theta = torch.rand(200) + 0.1
    ours = nb_log_likelihood(x.float(), mu.float(), theta)
    ref = NegativeBinomial(mu=mu.float(), theta=theta).log_prob(x.float()).sum(-1)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-2)


def test_other_distributions_use_their_own_log_prob():
    x, mu = _data()
    theta = torch.rand(x.shape[1], dtype=torch.float64) + 0.1
    zi = torch.zeros_like(mu) - 1.0
    zinb = ZeroInflatedNegativeBinomial(mu=mu, theta=theta, zi_logits=zi)
    torch.testing.assert_close(counts_log_likelihood(zinb, x), zinb.log_prob(x).sum(-1))
    normal = Normal(mu, torch.ones_like(mu))
    torch.testing.assert_close(counts_log_likelihood(normal, x), normal.log_prob(x).sum(-1))
