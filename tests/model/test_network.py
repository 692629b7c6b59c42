"""The linearised regulatory network of a fitted model (the SCM link)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch


def test_network_matrix_matches_linearised_dynamics(steady):
    model = steady.model
    net = model.get_regulatory_network()
    genes = list(steady.adata.var_names)
    assert list(net.index) == genes
    assert list(net.columns) == genes
    assert net.index.name == "target"
    assert net.columns.name == "source"
    assert net.attrs["kind"] == "jacobian"
    assert net.attrs["steady_state_residual"] < 1e-4
    # rank is bounded by the latent dimension: it is D J D^+
    assert np.linalg.matrix_rank(net.to_numpy(), tol=1e-8) <= model.module.n_latent
    # applying A to a gene change in the decoder's column space equals D J of the latent change
    dec = model.module.decoder.loading.weight.detach().double().numpy()
    z_star, _ = model._control_steady_state(0)
    jac = (
        model.module.field.jacobian(z_star.unsqueeze(0), torch.zeros(1, dtype=torch.long))[0].detach().double().numpy()
    )
    dz = np.random.default_rng(0).normal(size=dec.shape[1])
    np.testing.assert_allclose(net.to_numpy() @ (dec @ dz), dec @ jac @ dz, rtol=1e-6, atol=1e-8)


def test_response_is_minus_inverse(steady):
    model = steady.model
    a = model.get_regulatory_network(kind="jacobian").to_numpy()
    r = model.get_regulatory_network(kind="response").to_numpy()
    dec = model.module.decoder.loading.weight.detach().double().numpy()
    # on the decoder's column space R inverts -A: -A R x = x for x = D dz
    x = dec @ np.random.default_rng(1).normal(size=dec.shape[1])
    np.testing.assert_allclose(-a @ (r @ x), x, rtol=1e-5, atol=1e-8)


def test_top_k_edges_and_gene_subset(steady):
    model = steady.model
    full = model.get_regulatory_network()
    edges = model.get_regulatory_network(top_k=7)
    assert list(edges.columns) == ["source", "target", "weight"]
    assert len(edges) == 7
    assert (edges["source"] != edges["target"]).all()
    off = full.to_numpy()[~np.eye(full.shape[0], dtype=bool)]
    np.testing.assert_allclose(np.abs(edges["weight"]).to_numpy(), np.sort(np.abs(off))[::-1][:7])
    genes = list(steady.adata.var_names[:5])
    sub = model.get_regulatory_network(genes=genes)
    np.testing.assert_allclose(sub.to_numpy(), full.loc[genes, genes].to_numpy())


def test_network_bad_arguments(steady):
    model = steady.model
    with pytest.raises(ValueError, match="kind="):
        model.get_regulatory_network(kind="granger")
    with pytest.raises(KeyError, match="not in the model's genes"):
        model.get_regulatory_network(genes=["NOT_A_GENE"])
    with pytest.raises(KeyError, match="was not seen in training"):
        model.get_regulatory_network(media="mars")
    for bad in (0, -1, 2.5, True):  # head(-1) would silently return all edges but one
        with pytest.raises(ValueError, match=rf"top_k={bad!r} must be a positive whole number"):
            model.get_regulatory_network(top_k=bad)
    # one gene as a string is that gene, not its letters
    gene = str(steady.adata.var_names[3])
    pd.testing.assert_frame_equal(model.get_regulatory_network(genes=gene), model.get_regulatory_network(genes=[gene]))


def test_intervention_columns_are_fixed_point_effects(steady):
    model = steady.model
    net = model.get_regulatory_network(kind="intervention")
    targets = list(model.adata_manager.get_state_registry("perturbation")["targets"])
    assert list(net.columns) == targets
    assert list(net.index) == list(steady.adata.var_names)
    assert net.attrs["kind"] == "intervention"
    # column k is the decoded change between the post-intervention fixed point (operator v_k) and z*
    z_star, _ = model._control_steady_state(0)
    field, dec = model.module.field, model.module.decoder
    k = 0
    with torch.no_grad():
        res = field.fixed_point(
            z_star.unsqueeze(0).clone(), torch.zeros(1, dtype=torch.long), field.operators[k : k + 1], implicit=False
        )
        assert float(field(res.z, torch.zeros(1, dtype=torch.long), field.operators[k : k + 1]).abs().max()) < 1e-4
        rho0 = torch.softmax(dec.logits(z_star.unsqueeze(0), None), -1)[0].double().numpy()
        rho1 = torch.softmax(dec.logits(res.z, None), -1)[0].double().numpy()
    np.testing.assert_allclose(net.iloc[:, k], np.log1p(1e4 * rho1) - np.log1p(1e4 * rho0), atol=1e-4)
    edges = model.get_regulatory_network(kind="intervention", top_k=5)
    assert set(edges["source"]) <= set(targets)
    sub = model.get_regulatory_network(kind="intervention", genes=list(steady.adata.var_names[:6]))
    assert set(sub.columns) <= set(targets)


def test_without_relaxation_drops_gamma(steady):
    model = steady.model
    full = model.get_regulatory_network().to_numpy()
    bare = model.get_regulatory_network(relaxation=False).to_numpy()
    dec = model.module.decoder.loading.weight.detach().double().numpy()
    gamma = model.module.field.gamma.detach().double().numpy()
    # A - A_bare = -D Gamma D^+
    np.testing.assert_allclose(full - bare, -dec @ np.diag(gamma) @ np.linalg.pinv(dec), atol=1e-8)
    with pytest.raises(ValueError, match="relaxation=False applies to kind='jacobian' only"):
        model.get_regulatory_network(kind="response", relaxation=False)
