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
    gene = str(trained.adata.var_names[2])
    assert list(trained.get_normalized_expression(gene_list=gene).columns) == [gene]
    with pytest.raises(KeyError, match=r"gene_list holds genes the model does not have: \['nope'\]"):
        trained.get_normalized_expression(gene_list=["nope", gene])
    if trained.module.gene_likelihood == "normal":  # a mean of log-normalised values has no library to scale to
        with pytest.raises(ValueError, match="library_size=10000.0 does not apply to gene_likelihood='normal'"):
            trained.get_normalized_expression(library_size=1e4)
    else:
        np.testing.assert_allclose(trained.get_normalized_expression(library_size=1e4).sum(1), 1e4, rtol=1e-4)


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
    with pytest.raises(KeyError, match=r"group1='FOO': \['FOO'\] not in adata.obs\['perturbation'\]"):
        trained.differential_expression(groupby="perturbation", group1="FOO", group2="NT")
    with pytest.raises(KeyError, match="groupby='nowhere' is not a column of adata.obs"):
        trained.differential_expression(groupby="nowhere", group1="G0008")


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


def test_registry_plumbing_and_device(trained, capsys):
    registry = trained.data_registry("perturbation")
    assert registry.shape[0] == trained.adata.n_obs
    assert trained.get_setup_arg("perturbation_key") == "perturbation"
    assert list(trained.get_var_names()) == list(trained.adata.var_names)
    trained.view_setup_method_args()
    assert "perturbation_key" in capsys.readouterr().out
    with pytest.raises(
        NotImplementedError, match=r"setup arguments of a trained SemiMechVI are fixed.*\['control_label'\]"
    ):
        trained.update_setup_method_args({"control_label": "other"})
    assert trained.get_setup_arg("control_label") != "other"
    trained.to_device("cpu")
    assert next(trained.module.parameters()).device.type == "cpu"
    # a second AnnData is registered when first used, and can be forgotten and registered again
    assert trained.get_anndata_manager(trained.adata) is trained.adata_manager
    other = trained.adata.copy()
    for key in ("_scvi_uuid", "_scvi_manager_uuid"):  # a new AnnData, not a copy of the registered one
        other.uns.pop(key, None)
    assert trained.get_anndata_manager(other) is None
    type(trained).setup_anndata(other, **trained.adata_manager.registry["setup_args"])
    z = trained.get_latent_representation(other)
    manager = trained.get_anndata_manager(other, required=True)
    np.testing.assert_allclose(z, trained.get_latent_representation(), rtol=1e-5, atol=1e-5)
    trained.deregister_manager(other)
    assert trained.get_anndata_manager(other) is None
    type(trained).register_manager(manager)
    assert type(trained)._setup_adata_manager_store[manager.adata_uuid] is manager
    trained.deregister_manager(other)


def test_differential_abundance_writes_scvi_tools_key(trained):
    adata = trained.adata.copy()
    for key in ("_scvi_uuid", "_scvi_manager_uuid"):
        adata.uns.pop(key, None)
    type(trained).setup_anndata(adata, **trained.adata_manager.registry["setup_args"])
    trained.differential_abundance(adata, sample_key="batch")
    da = adata.obsm["da_log_probs"]  # scvi-tools' documented output key
    assert list(da.columns) == list(adata.obs["batch"].unique())
    assert da.shape[0] == adata.n_obs
    assert np.isfinite(da.to_numpy()).all()
    # cells are most likely under the aggregated posterior of their own sample more often than by chance
    own = (da.idxmax(axis=1) == adata.obs["batch"].astype(str)).mean()
    assert own > 1.0 / da.shape[1]
    trained.deregister_manager(adata)


def test_importance_weights_are_a_distribution_over_samples(trained, monkeypatch):
    if trained.module.gene_likelihood == "normal":
        pytest.skip("importance weights need a count likelihood (refused above)")
    seen = []
    original = type(trained).get_importance_weights

    def spy(self, *args, **kwargs):
        w = original(self, *args, **kwargs)
        seen.append(np.asarray(w))
        return w

    monkeypatch.setattr(type(trained), "get_importance_weights", spy)
    # return_numpy: scvi-tools 1.4.2 cannot label 12 samples drawn from 6 cells (SCVI fails the same way)
    trained.get_normalized_expression(
        indices=np.arange(6), n_samples_overall=12, weights="importance", return_numpy=True
    )
    assert seen
    w = seen[0]
    assert np.isfinite(w).all()
    assert (w >= 0).all()
    assert w.sum() == pytest.approx(1.0, rel=1e-5)
