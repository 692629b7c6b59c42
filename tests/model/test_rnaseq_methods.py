"""scvi-tools' RNA-seq and VAE methods on SemiMechVI: untrained models refused, indices and sample counts checked."""

from __future__ import annotations

import numpy as np
import pytest
import scvi

from scmech.model import SemiMechVI

from .conftest import MODEL_KWARGS, TRAIN_KWARGS, simulated

UNTRAINED = "untrained model"


@pytest.fixture(scope="module")
def untrained() -> SemiMechVI:
    adata = simulated(n_cells=120)
    SemiMechVI.setup_anndata(adata, batch_key="batch")
    return SemiMechVI(adata, **MODEL_KWARGS)


@pytest.fixture(scope="module")
def trained() -> SemiMechVI:
    adata = simulated(n_cells=120)
    SemiMechVI.setup_anndata(adata, batch_key="batch")
    scvi.settings.seed = 0
    model = SemiMechVI(adata, **MODEL_KWARGS)
    model.train(max_epochs=1, **TRAIN_KWARGS)
    return model


# ====================================================================================================== untrained
@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda m: m.get_normalized_expression(), id="get_normalized_expression"),
        pytest.param(lambda m: m.get_normalized_expression(m.adata, [0, 1]), id="get_normalized_expression-positional"),
        pytest.param(
            lambda m: m.differential_expression(groupby="perturbation", group1="G0008"), id="differential_expression"
        ),
        pytest.param(lambda m: m.posterior_predictive_sample(), id="posterior_predictive_sample"),
        pytest.param(lambda m: m.get_feature_correlation_matrix(n_samples=2), id="get_feature_correlation_matrix"),
        pytest.param(lambda m: m.get_likelihood_parameters(), id="get_likelihood_parameters"),
        pytest.param(lambda m: m.get_elbo(), id="get_elbo"),
        pytest.param(lambda m: m.get_marginal_ll(n_mc_samples=2), id="get_marginal_ll"),
        pytest.param(lambda m: m.get_reconstruction_error(), id="get_reconstruction_error"),
        pytest.param(lambda m: m.get_importance_weights(m.adata, None, None, None, None), id="get_importance_weights"),
    ],
)
def test_untrained_model_is_refused(untrained, call):
    assert not untrained.is_trained_
    with pytest.raises(RuntimeError, match=UNTRAINED):
        call(untrained)


def test_trained_model_answers_the_wrapped_methods(trained):
    n_obs, n_vars = trained.adata.shape
    assert np.isfinite(float(trained.get_elbo()))
    assert np.isfinite(float(trained.get_marginal_ll(n_mc_samples=2)))
    assert set(trained.get_reconstruction_error()) == {"reconstruction_loss"}
    assert trained.get_likelihood_parameters()["mean"].shape == (n_obs, n_vars)
    assert trained.posterior_predictive_sample().shape == (n_obs, n_vars)
    de = trained.differential_expression(groupby="perturbation", group1="G0008", silent=True)
    assert de.shape[0] == n_vars


# ======================================================================================================== indices
@pytest.mark.parametrize(
    ("indices", "rows"),
    [((0, 1), [0, 1]), (3, [3]), (np.int32(3), [3]), (np.array([5, 2]), [5, 2]), (-1, [-1])],
)
def test_normalized_expression_takes_indices_as_latent_representation_does(trained, indices, rows):
    names = trained.adata.obs_names
    expr = trained.get_normalized_expression(indices=indices)
    assert expr.shape == (len(rows), trained.adata.n_vars)
    assert list(expr.index) == list(names[rows])
    assert trained.get_latent_representation(indices=indices).shape[0] == len(rows)
    assert np.isfinite(expr.to_numpy()).all()


def test_normalized_expression_checks_positional_indices(trained):
    expr = trained.get_normalized_expression(trained.adata, (0, 1))
    assert expr.shape == (2, trained.adata.n_vars)
    n = trained.adata.n_obs
    with pytest.raises(ValueError, match=rf"indices holds positions outside the {n} cells"):
        trained.get_normalized_expression(trained.adata, [n])
    with pytest.raises(ValueError, match="indices is empty"):
        trained.get_normalized_expression(indices=[])


# ====================================================================================================== n_samples
@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_feature_correlation_refuses_a_non_positive_sample_count(trained, bad):
    with pytest.raises(ValueError, match=rf"n_samples={bad!r} must be a positive integer"):
        trained.get_feature_correlation_matrix(n_samples=bad)
    with pytest.raises(ValueError, match=rf"n_samples={bad!r} must be a positive integer"):
        trained.get_feature_correlation_matrix(None, None, bad)  # by position: adata, indices, n_samples


def test_feature_correlation_with_a_valid_sample_count(trained):
    corr = trained.get_feature_correlation_matrix(n_samples=np.int64(2), correlation_type="pearson")
    n_vars = trained.adata.n_vars
    assert corr.shape == (n_vars, n_vars)
    np.testing.assert_allclose(np.diag(corr.to_numpy()), 1.0)
