"""The scvi-tools model API a user reaches for works on SemiMechVI for every likelihood (or says why not)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scvi
import torch

from scmech.model import SemiMechVI

from .conftest import MODEL_KWARGS, TRAIN_KWARGS, simulated


def _model(gene_likelihood: str) -> SemiMechVI:
    adata = simulated(n_cells=160)
    setup = {"perturbation_key": "perturbation", "control_label": "NT", "batch_key": "batch"}
    if gene_likelihood == "normal":
        x = adata.X.toarray()
        adata.X = np.log1p(1e4 * x / x.sum(1, keepdims=True)).astype(np.float32)
        setup["counts"] = False
    SemiMechVI.setup_anndata(adata, **setup)
    scvi.settings.seed = 0
    model = SemiMechVI(adata, gene_likelihood=gene_likelihood, **MODEL_KWARGS)
    model.train(max_epochs=2, **TRAIN_KWARGS)
    return model


@pytest.fixture(scope="module", params=["nb", "zinb", "normal"])
def trained(request) -> SemiMechVI:
    return _model(request.param)


def test_normalized_expression(trained):
    expr = trained.get_normalized_expression()
    assert isinstance(expr, pd.DataFrame)
    assert expr.shape == (trained.adata.n_obs, trained.adata.n_vars)
    assert np.isfinite(expr.to_numpy()).all()
    if trained.module.gene_likelihood != "normal":
        np.testing.assert_allclose(expr.sum(1), 1.0, rtol=1e-4)  # proportions
    one_batch = trained.get_normalized_expression(transform_batch="b0", indices=[0, 1, 2])
    assert one_batch.shape == (3, trained.adata.n_vars)


def test_posterior_predictive_sample(trained):
    x = trained.posterior_predictive_sample(indices=np.arange(10), n_samples=3)
    arr = x.todense() if hasattr(x, "todense") else np.asarray(x)
    assert arr.shape == (10, trained.adata.n_vars, 3)
    assert np.isfinite(np.asarray(arr, dtype=float)).all()
    if trained.module.gene_likelihood != "normal":
        assert (np.asarray(arr) >= 0).all()
        assert np.allclose(np.asarray(arr), np.round(np.asarray(arr)))  # counts


def test_differential_expression(trained):
    de = trained.differential_expression(groupby="perturbation", group1="G0008", group2="NT")
    assert len(de) == trained.adata.n_vars
    # scvi-tools' "vanilla" mode: Bayes factors of expression 1 > expression 2, per gene
    assert {"bayes_factor", "proba_m1", "scale1", "scale2"} <= set(de.columns)
    assert np.isfinite(de["bayes_factor"]).all()
    assert ((de["proba_m1"] >= 0) & (de["proba_m1"] <= 1)).all()


def test_marginal_ll_elbo_and_reconstruction(trained):
    ll = trained.get_marginal_ll(n_mc_samples=5)
    elbo = trained.get_elbo()
    assert np.isfinite(ll)
    assert np.isfinite(float(elbo))
    # the marginal likelihood is bounded below by the ELBO (up to the Monte Carlo noise of 5 samples)
    assert ll >= float(elbo) - 0.05 * abs(float(elbo))
    per_cell = trained.get_marginal_ll(n_mc_samples=3, return_mean=False)
    assert isinstance(per_cell, torch.Tensor)
    assert per_cell.shape == (trained.adata.n_obs,)
    rec = trained.get_reconstruction_error()
    assert np.isfinite(float(next(iter(rec.values()))))


def test_latent_representation(trained):
    z = trained.get_latent_representation()
    assert z.shape == (trained.adata.n_obs, MODEL_KWARGS["n_latent"])
    dist = trained.get_latent_representation(return_dist=True)
    assert np.allclose(dist[0], z, atol=1e-5)


def test_library_size_likelihood_parameters_and_correlations(trained):
    if trained.module.gene_likelihood == "normal":
        for call in (
            lambda: trained.get_latent_library_size(),
            lambda: trained.get_feature_correlation_matrix(n_samples=2),
        ):
            with pytest.raises(NotImplementedError, match="does not apply to gene_likelihood='normal'"):
                call()
        params = trained.get_likelihood_parameters(indices=np.arange(5))
        assert set(params) == {"mean", "scale"}
        assert params["mean"].shape == (5, trained.adata.n_vars)
        return
    lib = trained.get_latent_library_size()
    x = trained.adata.X
    totals = np.asarray(x.sum(axis=1)).ravel()
    np.testing.assert_allclose(lib.ravel(), totals, rtol=1e-5)  # observed library sizes, as scVI's default
    params = trained.get_likelihood_parameters(indices=np.arange(5))
    assert params["mean"].shape == (5, trained.adata.n_vars)
    assert "dispersions" in params
    np.testing.assert_allclose(params["mean"].sum(1), totals[:5], rtol=1e-4)  # rates sum to the library
    corr = trained.get_feature_correlation_matrix(n_samples=2)
    assert corr.shape == (trained.adata.n_vars, trained.adata.n_vars)


def test_aggregated_posterior_anndata_setup_and_importance_weighted_expression(trained, capsys):
    post = trained.get_aggregated_posterior(indices=np.arange(10))
    z = torch.as_tensor(trained.get_latent_representation(indices=np.arange(3)))
    assert torch.isfinite(post.log_prob(z)).all()
    trained.view_anndata_setup()
    assert "perturbation" in capsys.readouterr().out
    kw = {"indices": np.arange(6), "n_samples_overall": 12, "weights": "importance", "return_numpy": True}
    if trained.module.gene_likelihood == "normal":
        with pytest.raises(NotImplementedError, match=r"weights='importance'.*use weights='uniform'"):
            trained.get_normalized_expression(**kw)
        kw["weights"] = "uniform"
    expr = trained.get_normalized_expression(**kw)
    assert expr.shape == (12, trained.adata.n_vars)
    assert np.isfinite(expr).all()
