"""Hostile arguments to the model layer: each is refused by name before numpy, scipy, torch or scvi-tools see it.

Every case here once failed deep inside a library, or returned a wrong answer without a word (a boolean mask of the
wrong length read as positions, a NaN loss weight that switched its term off, a negative library size, a string
``"no"`` read as ``True``).
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import scvi
import torch

from scmech.model import NeuralODE, SemiMechVI


def _fresh(rel, cls=SemiMechVI, **model_kwargs):
    scvi.settings.seed = 0
    adata = rel.small()
    cls.setup_anndata(adata, batch_key="batch")
    return cls(adata, **{**rel.MODEL_KWARGS, **model_kwargs})


# ---------------------------------------------------------------- indices and batch sizes of inherited methods
@pytest.mark.parametrize(
    ("indices", "exc", "match"),
    [
        (
            [1_000_000],
            ValueError,
            r"indices holds positions outside the 120 cells \(e\.g\. \[1000000\]\); valid: 0\.\.1",
        ),
        ([0.5, 1.0], TypeError, r"indices must be integer cell positions or a boolean mask, got float64"),
        (["cell_000000"], TypeError, r"indices must be integer .*np\.flatnonzero\(adata\.obs_names\.isin\(names\)\)"),
        # a mask of 5 values was read as the positions [1, 1, 1, 1, 1]: five copies of one cell, without a word
        (np.ones(5, dtype=bool), ValueError, r"indices is a boolean mask of length 5 for 120 cells"),
        (np.zeros((2, 2), dtype=int), ValueError, r"indices has shape \(2, 2\); pass a flat list"),
    ],
)
@pytest.mark.parametrize(
    "method", ["get_latent_representation", "get_elbo", "get_steady_state_residual", "get_aggregated_posterior"]
)
def test_bad_indices_are_refused_by_name(model, method, indices, exc, match):
    with pytest.raises(exc, match=match):
        getattr(model, method)(indices=indices)


def test_aggregated_posterior_takes_a_list_of_positions(model):
    # a list failed inside scvi-tools ("'list' object has no attribute 'shape'")
    listed = model.get_aggregated_posterior(indices=[0, 1, 2])
    arrayed = model.get_aggregated_posterior(indices=np.array([0, 1, 2]))
    assert listed.mixture_distribution.probs.shape == (3,)
    torch.testing.assert_close(listed.component_distribution.mean, arrayed.component_distribution.mean)


def test_valid_indices_select_the_cells_asked_for(model):
    z = model.get_latent_representation()
    mask = np.zeros(model.adata.n_obs, dtype=bool)
    mask[[3, 7]] = True
    tol = {"rtol": 1e-5, "atol": 1e-6}  # other minibatches, other float rounding
    np.testing.assert_allclose(model.get_latent_representation(indices=mask), z[[3, 7]], **tol)
    np.testing.assert_allclose(model.get_latent_representation(indices=np.array([3, 7], np.int32)), z[[3, 7]], **tol)
    np.testing.assert_allclose(model.get_latent_representation(indices=[-1]), z[[-1]], **tol)


def test_batch_size_is_checked_and_numpy_integers_work(model):
    # torch's sampler called a numpy integer "not a positive integer value"
    z = model.get_latent_representation(batch_size=np.int64(16))
    np.testing.assert_allclose(z, model.get_latent_representation(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"batch_size=0 must be a positive integer \(or None for the default\)"):
        model.get_latent_representation(batch_size=0)
    with pytest.raises(ValueError, match=r"batch_size=2\.5 must be a positive integer"):
        model.get_steady_state_residual(batch_size=2.5)


# ---------------------------------------------------------------- sample counts, genes and library sizes
@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m: m.get_marginal_ll(n_mc_samples=0), r"n_mc_samples=0 must be a positive integer"),
        # scvi-tools returned one sample for 0 or a negative number of samples
        (lambda m: m.posterior_predictive_sample(n_samples=0), r"n_samples=0 must be a positive integer"),
        (lambda m: m.posterior_predictive_sample(n_samples=-1), r"n_samples=-1 must be a positive integer"),
        (lambda m: m.get_normalized_expression(n_samples=-3), r"n_samples=-3 must be a positive integer"),
        (lambda m: m.get_normalized_expression(n_samples_overall=0), r"n_samples_overall=0 must be a positive"),
    ],
)
def test_numbers_of_samples_must_be_positive(model, call, match):
    with pytest.raises(ValueError, match=match):
        call(model)


def test_posterior_predictive_sample_refuses_genes_the_model_lacks(model):
    # scvi-tools dropped the unknown gene and returned the others without a word
    with pytest.raises(KeyError, match=r"gene_list holds genes the model does not have: \['nope'\]"):
        model.posterior_predictive_sample(gene_list=["G0008", "nope"])
    assert model.posterior_predictive_sample(gene_list="G0008").shape == (model.adata.n_obs, 1)


@pytest.mark.parametrize("library_size", [-5, 0, float("nan"), float("inf"), True, "10000"])
def test_library_size_must_be_a_positive_number_or_latent(model, library_size):
    # a negative size gave negative expression, NaN gave NaN, without a word
    with pytest.raises(ValueError, match=r"library_size=.* must be a positive finite number of counts .*'latent'"):
        model.get_normalized_expression(library_size=library_size)


def test_library_size_scales_the_normalised_expression(model):
    torch.manual_seed(0)  # the expression is decoded from a posterior sample of each cell
    one = model.get_normalized_expression(library_size=1, return_numpy=True)
    torch.manual_seed(0)
    many = model.get_normalized_expression(library_size=1e4, return_numpy=True)
    np.testing.assert_allclose(many, one * 1e4, rtol=1e-4)
    assert np.isfinite(model.get_normalized_expression(library_size="latent", return_numpy=True)).all()


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"idx1": [], "idx2": [0, 1]}, ValueError, r"idx1 is empty: pass the indices of at least one cell"),
        ({"idx1": [0, 1], "idx2": [500]}, ValueError, r"idx2 holds positions outside the 120 cells"),
        # cells in both groups were silently moved to idx2
        ({"idx1": [0, 1, 2], "idx2": [2, 3]}, ValueError, r"idx1 and idx2 share 1 cells \(e\.g\. positions \[2\]\)"),
        ({"idx1": "nope == 'x'"}, KeyError, r"is not a valid query of adata\.obs \(UndefinedVariableError"),
        ({"idx1": "perturbation == 'zzz'"}, ValueError, r"selects no cell of adata\.obs"),
    ],
)
def test_differential_expression_checks_its_cell_groups(model, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        model.differential_expression(**kwargs, silent=True)


def test_differential_expression_by_query_and_mask_agree(model):
    obs = model.adata.obs
    by_query = model.differential_expression(idx1="perturbation == 'G0008'", silent=True)
    by_mask = model.differential_expression(idx1=(obs["perturbation"] == "G0008").to_numpy(), silent=True)
    assert by_query.shape == by_mask.shape == (model.adata.n_vars, by_query.shape[1])


def test_differential_expression_leaves_the_users_obs_as_it_was(model):
    # scvi-tools' method added obs["_scvi_raw_norm_scaling"] to the user's AnnData (and reused it afterwards)
    before = list(model.adata.obs.columns)
    res = model.differential_expression(groupby="perturbation", group1="G0008", silent=True)
    assert list(model.adata.obs.columns) == before
    assert np.isfinite(res["raw_normalized_mean1"]).all()
    model.adata.obs["_scvi_raw_norm_scaling"] = 1.0  # a column the user had is kept
    try:
        model.differential_expression(groupby="perturbation", group1="G0008", silent=True)
        assert (model.adata.obs["_scvi_raw_norm_scaling"] == 1.0).all()
    finally:
        del model.adata.obs["_scvi_raw_norm_scaling"]


# ---------------------------------------------------------------- flags given as strings
@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda m: m.predict(["G0008"], return_mean="no"), "return_mean"),
        (lambda m: m.get_regulatory_network(include_self="no", top_k=3), "include_self"),
        (lambda m: m.get_regulatory_network(relaxation="no"), "relaxation"),
    ],
)
def test_flags_given_as_strings_are_refused(model, call, name):
    # "no" is a true string: it silently meant True
    with pytest.raises(TypeError, match=rf"{name}='no' must be True or False"):
        call(model)


def test_save_with_overwrite_as_a_string_leaves_the_saved_files_untouched(model, tmp_path):
    model.save(tmp_path / "m", save_anndata=True)
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}
    with pytest.raises(TypeError, match=r"overwrite='no' must be True or False"):
        model.save(tmp_path / "m", overwrite="no")
    with pytest.raises(TypeError, match=r"save_anndata='yes' must be True or False"):
        model.save(tmp_path / "n", save_anndata="yes")
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()} == before
    assert not (tmp_path / "n").exists()


@pytest.mark.parametrize(("prefix", "exc"), [("../evil_", ValueError), ("sub/", ValueError), (3, TypeError)])
def test_save_and_load_refuse_a_prefix_that_is_not_a_plain_name(model, tmp_path, prefix, exc):
    target = tmp_path / "inner" / "m"
    with pytest.raises(exc, match=r"prefix="):
        model.save(target, prefix=prefix)
    assert not (tmp_path / "inner").exists()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(exc, match=r"prefix="):
        SemiMechVI.load(target, prefix=prefix)


# ---------------------------------------------------------------- predict's requests
def test_predict_takes_any_iterable_of_labels_and_refuses_a_number(model):
    by_list = model.predict(["G0008", "NT"])
    by_generator = model.predict(label for label in ["G0008", "NT"])
    np.testing.assert_array_equal(by_generator.X, by_list.X)
    with pytest.raises(TypeError, match=r"perturbations=8 must be a label or a list of labels"):
        model.predict(8)


def test_predict_from_no_cells_says_so(model):
    with pytest.raises(ValueError, match=r"from_cells is empty: pass the positions"):
        model.predict(["G0008"], from_cells=[])


# ---------------------------------------------------------------- damaged saves
def _damage_metadata(path, edit):
    meta = json.loads((path / "metadata.json").read_text())
    edit(meta)
    (path / "metadata.json").write_text(json.dumps(meta))


def _bad_registry(meta):
    meta["registry"] = {"a": 1}


def _bad_cells(meta):
    meta["cells"] = {"train_indices_": "!!not base64"}


def _bad_init(meta):
    meta["attributes"]["init_params_"]["non_kwargs"]["n_latent"] = -3


def _weights_list(path):
    torch.save([1, 2, 3], path / "model.pt")


def _weights_nan(path):
    saved = torch.load(path / "model.pt", weights_only=True)
    state = saved["model_state_dict"]
    state["z_base"] = state["z_base"] * float("nan")
    torch.save(saved, path / "model.pt")


def _garbage_data(path):
    (path / "adata.h5ad").write_text("garbage")


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda p: _damage_metadata(p, _bad_registry), r"holds no setup arguments; it was not written completely"),
        (lambda p: _damage_metadata(p, _bad_cells), r"The saved train_indices_ are damaged"),
        (lambda p: _damage_metadata(p, _bad_init), r"init parameters in .* do not build a SemiMechVI \(n_latent=-3"),
        (_weights_list, r"does not hold a model's weights \(a dict of tensors"),
        # NaN weights loaded fine and failed later inside numpy ("'list' argument must have no negative elements")
        (_weights_nan, r"hold NaN or infinite values \(in \['z_base'\]\)"),
        (_garbage_data, r"Cannot read the data saved in .*adata\.h5ad"),
    ],
)
def test_a_damaged_save_is_refused_with_what_is_damaged(model, tmp_path, damage, match):
    model.save(tmp_path / "m", save_anndata=True)
    damage(tmp_path / "m")
    with pytest.raises(ValueError, match=match):
        SemiMechVI.load(tmp_path / "m")


# ---------------------------------------------------------------- train's arguments
@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"batch_size": None}, ValueError, r"batch_size=None must be a positive integer"),
        ({"early_stopping": "no"}, TypeError, r"early_stopping='no' must be True or False"),
        ({"plan_kwargs": [1]}, TypeError, r"plan_kwargs=\[1\] must be a dict of keyword arguments"),
        ({"datasplitter_kwargs": [1]}, TypeError, r"datasplitter_kwargs=\[1\] must be a dict"),
        # an unknown key failed inside scvi-tools at the first training step
        ({"plan_kwargs": {"foo": 1}}, KeyError, r"plan_kwargs has unknown keys \['foo'\]"),
        # a NaN or negative weight silently switched the steady-state term off
        ({"plan_kwargs": {"ss_weight": float("nan")}}, ValueError, r"plan_kwargs\['ss_weight'\]=nan must be"),
        ({"plan_kwargs": {"mmd_weight": -1.0}}, ValueError, r"plan_kwargs\['mmd_weight'\]=-1\.0 must be"),
        ({"plan_kwargs": {"optimizer": "Foo"}}, ValueError, r"plan_kwargs\['optimizer'\]='Foo' is not one of"),
    ],
)
def test_train_refuses_bad_argument_types_before_training(rel, kwargs, exc, match):
    model = _fresh(rel)
    train_kwargs = {**rel.TRAIN_KWARGS, **kwargs}
    with pytest.raises(exc, match=match):
        model.train(max_epochs=1, **train_kwargs)
    assert not model.is_trained_


def test_train_takes_a_numpy_integer_batch_size_and_known_plan_keys(rel):
    model = _fresh(rel)
    # torch's sampler refused numpy integers ("should be a positive integer value, but got batch_size=32")
    train_kwargs = {**rel.TRAIN_KWARGS, "batch_size": np.int64(32)}
    model.train(max_epochs=1, plan_kwargs={"mmd_weight": 0.5, "ss_weight": None, "lr": 1e-3}, **train_kwargs)
    assert model.is_trained_


# ---------------------------------------------------------------- module settings
@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"readout": "foo"}, ValueError, r"readout='foo' is not one of 'fixed_point', 'flow'"),
        ({"dispersion": "foo"}, ValueError, r"dispersion='foo' is not one of 'gene', 'gene-batch'"),
        ({"steady_state_on": "foo"}, ValueError, r"steady_state_on='foo' is not one of 'mean', 'cells'"),
        ({"mmd_weight": float("nan")}, ValueError, r"mmd_weight=nan must be a finite number >= 0"),
        ({"onset_tau": -1.0}, ValueError, r"onset_tau=-1\.0 must be a finite number >= 0"),
        # a zero horizon read every perturbation out at the baseline state
        ({"readout": "flow", "horizon": 0.0}, ValueError, r"horizon=0\.0 must be a finite number > 0"),
        ({"dropout_rate": 2.0}, ValueError, r"dropout_rate=2\.0 must be a number in \[0, 1\)"),
        ({"ode_steps": 0}, ValueError, r"ode_steps=0 must be a positive integer"),
        ({"learn_onset": "yes"}, TypeError, r"learn_onset='yes' must be True or False"),
    ],
)
def test_module_settings_are_checked_by_name(rel, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        _fresh(rel, **kwargs)


def test_neural_ode_settings_are_checked_by_name(rel):
    with pytest.raises(ValueError, match=r"ode_steps=0 must be a positive integer"):
        _fresh(rel, NeuralODE, ode_steps=0)
    with pytest.raises(ValueError, match=r"horizon=nan must be a finite number > 0"):
        _fresh(rel, NeuralODE, horizon=float("nan"))


def test_a_wait_step_must_be_a_number():
    from scmech.model._protocols import protocol_from_steps

    # float("abc") failed with "could not convert string to float", naming no step
    with pytest.raises(TypeError, match=r"\('wait', 'abc'\) needs a number: the duration"):
        protocol_from_steps([("perturb", "A"), ("wait", "abc")], separator="+", control_label="NT")
    steps = [("perturb", "A"), ("wait", np.float32(2.0))]
    assert protocol_from_steps(steps, separator="+", control_label="NT").time == 2.0


def test_a_model_trained_on_controls_only_warns_when_it_predicts_a_target(rel):
    # it used to predict every target as a "shared response" of no training targets, without a word
    adata = rel.small(n_cells=240)
    adata = adata[adata.obs["perturbation"].astype(str) == "NT"].copy()
    model = rel.trained(adata)
    assert model.target_map_.trained == []
    with pytest.warns(UserWarning, match=r"trained without perturbed cells, so targets \['G0009'\].*controls' state"):
        out = model.predict(["G0009"])
    assert out.obs["target_source"].iloc[0] == "shared response"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.predict(["NT"])  # the controls themselves need no warning
    # a NeuralODE has no own-gene effect, so the warning does not speak of one
    NeuralODE.setup_anndata(adata, batch_key="batch")
    node = NeuralODE(adata, **rel.MODEL_KWARGS)
    node.train(max_epochs=1, **rel.TRAIN_KWARGS)
    with pytest.warns(UserWarning, match=r"trained without perturbed cells") as record:
        node.predict(["G0009"])
    assert not any("own-gene" in str(w.message) for w in record)


@pytest.mark.parametrize("cls", [SemiMechVI, NeuralODE])
def test_unknown_or_data_filled_module_settings_are_refused(rel, cls):
    """A misspelt setting failed inside the module ("SemiMechVAE.__init__() got an unexpected keyword argument"),
    one the model fills from the data with "got multiple values"."""
    adata = rel.small()
    cls.setup_anndata(adata, batch_key="batch")
    with pytest.raises(
        TypeError, match=rf"{cls.__name__} has no setting mmd_wieght=0\.1 \(did you mean 'mmd_weight'\?\)"
    ):
        cls(adata, **rel.MODEL_KWARGS, mmd_wieght=0.1)
    with pytest.raises(TypeError, match=rf"n_batch=3 is set by {cls.__name__} from the registered data"):
        cls(adata, **rel.MODEL_KWARGS, n_batch=3)
    model = cls(adata, **rel.MODEL_KWARGS, mmd_weight=0.25)
    assert model.module.mmd_weight == 0.25


def test_asking_for_more_starting_cells_than_there_are_warns(model):
    # predict(n_cells=10000) quietly used the few training controls there were
    with pytest.warns(UserWarning, match=r"n_cells=100000 asks for more starting cells than the (\d+) control cells"):
        out = model.predict(["G0008"], n_cells=100_000)
    every = model.predict(["G0008"], n_cells=None)
    assert out.obs["n_cells"].iloc[0] == every.obs["n_cells"].iloc[0] < 100_000
    with pytest.warns(UserWarning, match=r"n_cells=5 asks for more starting cells than the 2 cells in from_cells"):
        model.predict(["G0008"], from_cells=[0, 1], n_cells=5)


@pytest.mark.parametrize(
    ("device", "match"),
    [
        ("bogus", r"device='bogus' is not a device torch knows"),
        ("cuda:9", r"device='cuda:9': this machine has"),
        (1.5, r"device=1\.5 must be 'cpu', 'cuda'"),
    ],
)
def test_to_device_names_a_device_that_is_wrong_or_absent(model, device, match):
    # "bogus" got torch's list of every device type; "cuda:9" an AssertionError "Torch not compiled with CUDA"
    with pytest.raises(ValueError, match=match):
        model.to_device(device)
    model.to_device("cpu")
    assert model.device.type == "cpu"
