"""Bad input gets a clear error: its type, the key or value at fault, and the fix."""

from __future__ import annotations

import gc
import warnings

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scmech
from scmech import tl
from scmech.model import SemiMechVI


def _set(adata, i, j, value):
    x = np.asarray(adata.X.toarray() if sp.issparse(adata.X) else adata.X, dtype=np.float64)
    x[i, j] = value
    adata.X = sp.csr_matrix(x) if sp.issparse(adata.X) else x


# ================================================================================================ setup_anndata
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
@pytest.mark.parametrize(
    ("value", "match"),
    [
        (-1.0, r"adata\.X has 1 negative values \(min -1\).*raw counts.*layer=|counts=False"),
        (0.5, r"adata\.X holds non-integer values \(e\.g\. 0\.5\).*layer='counts'.*counts=False"),
        (np.nan, r"adata\.X has 1 NaN or infinite values; remove or impute them"),
        (np.inf, r"adata\.X has 1 NaN or infinite values"),
    ],
)
def test_setup_rejects_bad_counts(rel, sparse, value, match):
    adata = rel.small(sparse=sparse)
    _set(adata, 3, 4, value)
    with pytest.raises(ValueError, match=match):
        SemiMechVI.setup_anndata(adata)


def test_setup_names_the_layer_with_bad_counts(rel):
    adata = rel.small()
    adata.layers["counts"] = adata.X.copy()
    adata.layers["counts"].data[0] = 2.5
    with pytest.raises(ValueError, match=r"adata\.layers\['counts'\] holds non-integer values \(e\.g\. 2\.5\)"):
        SemiMechVI.setup_anndata(adata, layer="counts")


def test_non_count_data_are_accepted_when_declared(rel):
    adata = rel.small(sparse=False)
    adata.X = np.log1p(adata.X.astype(np.float32))
    SemiMechVI.setup_anndata(adata, counts=False)
    SemiMechVI(adata, gene_likelihood="normal", **rel.MODEL_KWARGS)
    with pytest.raises(ValueError, match=r"registered as non-count data \(counts=False\).*gene_likelihood='normal'"):
        SemiMechVI(adata, gene_likelihood="nb", **rel.MODEL_KWARGS)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
def test_raw_counts_declared_log_normalised_warn(rel, sparse):
    """Raw counts registered with counts=False were read as log levels (an expression of e**x - 1, inf in float32
    above 88) without a word; log-normalised values, and counts in a layer beside them, do not warn."""
    adata = rel.small(sparse=sparse)
    top = float(adata.X.max() if sparse else np.max(adata.X))
    with pytest.warns(
        UserWarning, match=rf"adata\.X was registered with counts=False .* integers up to {top:g}.*counts=True"
    ):
        SemiMechVI.setup_anndata(adata, counts=False)
    adata.layers["counts"] = adata.X.copy()
    adata.X = np.log1p(np.asarray(adata.X.toarray() if sparse else adata.X, dtype=np.float32))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*looks like raw counts.*")
        SemiMechVI.setup_anndata(adata, counts=False)
        SemiMechVI.setup_anndata(adata, layer="counts")


def test_evaluate_on_log_normalised_data_names_its_own_argument(rel):
    """evaluate() on log-normalised data without counts=False repeated the setup's advice
    (setup_anndata(..., counts=False)), which does not change what evaluate reads."""
    adata = rel.small(sparse=False)
    adata.X = np.log1p(np.asarray(adata.X, dtype=np.float32))
    tl.TrainMean.setup_anndata(adata, perturbation_key="perturbation", control_label="NT", counts=False)
    model = tl.TrainMean(adata)
    model.train()
    pred = model.predict(["G0008"])
    with pytest.raises(
        ValueError, match=r"adata\.X holds non-integer values: .*evaluate reads counts.*Pass counts=False"
    ):
        tl.evaluate({"TrainMean": pred}, adata, perturbation_key="perturbation", control_label="NT")
    assert len(
        tl.evaluate({"TrainMean": pred}, adata, perturbation_key="perturbation", control_label="NT", counts=False)
    )


def test_setup_rejects_a_view(rel):
    with pytest.raises(ValueError, match=r"adata is a view.*adata = adata\.copy\(\)"):
        SemiMechVI.setup_anndata(rel.small()[:50])


def test_setup_rejects_a_missing_layer(rel):
    with pytest.raises(KeyError, match=r"Layer 'counts' is not in adata\.layers \(layers: \[\]\)"):
        SemiMechVI.setup_anndata(rel.small(), layer="counts")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"perturbation_key": "guide_call"}, r"perturbation_key 'guide_call' is not a column of adata\.obs \(columns"),
        ({"batch_key": "lane"}, r"batch_key 'lane' is not a column of adata\.obs"),
        ({"time_key": "day"}, r"time_key 'day' is not a column of adata\.obs"),
        ({"media_key": "stim"}, r"media_key 'stim' is not a column of adata\.obs"),
        ({"size_factor_key": "libsize"}, r"size_factor_key 'libsize' is not a column of adata\.obs"),
        ({"categorical_covariate_keys": ["donor"]}, r"categorical covariate key 'donor' is not a column"),
        ({"continuous_covariate_keys": ["pct_mt"]}, r"continuous covariate key 'pct_mt' is not a column"),
        ({"gene_embedding_key": "X_gene"}, r"gene_embedding_key 'X_gene' is not in adata\.varm"),
    ],
)
def test_setup_names_a_missing_key(rel, kwargs, match):
    with pytest.raises(KeyError, match=match):
        SemiMechVI.setup_anndata(rel.small(), **kwargs)


def test_setup_rejects_nan_batch_values_and_says_how_to_fill_them(rel):
    adata = rel.small()
    batch = adata.obs["batch"].astype(str).astype(object)
    batch.iloc[[2, 7]] = np.nan
    adata.obs["batch"] = pd.Categorical(batch)
    with pytest.raises(ValueError, match=r"obs\['batch'\] has 2 missing \(NaN\) batch values.*fillna\('unknown'\)"):
        SemiMechVI.setup_anndata(adata, batch_key="batch")


@pytest.mark.parametrize("key", ["batch_key", "categorical_covariate_keys"])
def test_setup_warns_about_unused_categories(rel, key):
    adata = rel.small()
    adata.obs["batch"] = pd.Categorical(adata.obs["batch"].astype(str), categories=["b0", "b1", "b2", "b9"])
    value = "batch" if key == "batch_key" else ["batch"]
    with pytest.warns(UserWarning, match=r"obs\['batch'\] has unused categories \['b9'\].*remove_unused_categories"):
        SemiMechVI.setup_anndata(adata, **{key: value})


def test_unused_perturbation_categories_are_ignored(rel):
    adata = rel.small()
    labels = adata.obs["perturbation"].astype(str)
    adata.obs["perturbation"] = pd.Categorical(labels, categories=[*sorted(set(labels)), "G0001"])
    SemiMechVI.setup_anndata(adata)
    targets = SemiMechVI(adata, **rel.MODEL_KWARGS).adata_manager.get_state_registry("perturbation")["targets"]
    assert "G0001" not in targets
    assert list(targets) == ["G0008", "G0009", "G0010", "G0021"]


def test_setup_without_control_cells_names_the_labels_seen(rel):
    with pytest.raises(ValueError, match=r"No control cells.*control_label='non-targeting'.*seen include 'G0008'"):
        SemiMechVI.setup_anndata(rel.small(), control_label="non-targeting")


def test_setup_warns_which_batches_lack_controls(rel):
    adata = rel.small()
    labels = adata.obs["perturbation"].to_numpy().copy()
    labels[(labels == "NT") & (adata.obs["batch"].astype(str).to_numpy() == "b1")] = "unassigned"
    adata.obs["perturbation"] = labels
    with pytest.warns(UserWarning, match=r"No control cells in batch \['b1'\] of obs\['batch'\].*every batch"):
        SemiMechVI.setup_anndata(adata, batch_key="batch")


def test_setup_warns_about_perturbations_with_too_few_cells(rel):
    adata = rel.small()
    labels = adata.obs["perturbation"].to_numpy().copy()
    labels[np.flatnonzero(labels == "G0010")[2:]] = "unassigned"
    adata.obs["perturbation"] = labels
    with pytest.warns(UserWarning, match=r"Conditions \['G0010'\] of obs\['perturbation'\] have fewer than 3 cells"):
        SemiMechVI.setup_anndata(adata)


def test_setup_rejects_empty_cells_and_warns_about_empty_genes(rel):
    adata = rel.small(sparse=False)
    x = adata.X.copy()
    x[5] = 0
    adata.X = x
    with pytest.raises(ValueError, match=r"adata\.X has 1 cells without any counts.*filter_cells\(adata, min_counts=1"):
        SemiMechVI.setup_anndata(adata)
    adata = rel.small(sparse=False)
    x = adata.X.copy()
    x[:, [3, 4]] = 0
    adata.X = x
    with pytest.warns(UserWarning, match=r"adata\.X has 2 genes without any counts.*filter_genes"):
        SemiMechVI.setup_anndata(adata)


@pytest.mark.parametrize(
    ("axis", "fix"), [("obs_names", "obs_names_make_unique"), ("var_names", "var_names_make_unique")]
)
def test_setup_rejects_duplicated_names(rel, axis, fix):
    adata = rel.small()
    names = list(getattr(adata, axis))
    names[1] = names[0]
    setattr(adata, axis, names)
    with pytest.raises(ValueError, match=rf"adata\.{axis} has 1 duplicates \(e\.g\. \['{names[0]}'\]\).*{fix}\(\)"):
        SemiMechVI.setup_anndata(adata)


def test_a_target_absent_from_var_names_is_registered_as_unmeasured(rel):
    adata = rel.small()
    adata.obs["perturbation"] = adata.obs["perturbation"].replace({"G0008": "CD274"})
    SemiMechVI.setup_anndata(adata)
    st = SemiMechVI(adata, **rel.MODEL_KWARGS).adata_manager.get_state_registry("perturbation")
    index = dict(zip(st["targets"], st["target_var_index"], strict=True))
    assert index["CD274"] == -1
    assert index["G0009"] == list(adata.var_names).index("G0009")


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ([np.nan] + [1.0] * 119, r"obs\['day'\] has 1 NaN or infinite time values; every cell needs a time"),
        ([-2.0] + [1.0] * 119, r"obs\['day'\] has 1 negative time values \(min -2\).*perturbation is at 0"),
        (["1d"] * 120, r"obs\['day'\] must be numeric time values, got dtype object.*pd\.to_numeric"),
    ],
)
def test_setup_rejects_bad_time_values(rel, values, match):
    adata = rel.small()
    adata.obs["day"] = values
    with pytest.raises((ValueError, TypeError), match=match):
        SemiMechVI.setup_anndata(adata, time_key="day")


@pytest.mark.parametrize(
    ("key", "values", "match"),
    [
        ("efficacy_key", [1.5] * 120, r"obs\['eff'\] has 120 efficacy values outside \[0, 1\].*Rescale it"),
        ("size_factor_key", [0.0] * 120, r"obs\['eff'\] must hold positive, finite library sizes"),
    ],
)
def test_setup_rejects_out_of_range_numbers(rel, key, values, match):
    adata = rel.small()
    adata.obs["eff"] = values
    with pytest.raises(ValueError, match=match):
        SemiMechVI.setup_anndata(adata, **{key: "eff"})


def test_setup_mudata_names_a_missing_modality(rel):
    mdata = md.MuData({"gex": rel.small()})
    with pytest.raises(KeyError, match=r"no modality 'rna'.*\['gex'\].*modalities=\{'rna_layer': '<name>'\}"):
        SemiMechVI.setup_mudata(mdata)
    with pytest.raises(KeyError, match=r"modalities\['batch_key'\] = 'guide' is not a modality of the MuData"):
        SemiMechVI.setup_mudata(mdata, batch_key="batch", modalities={"rna_layer": "gex", "batch_key": "guide"})


def _guide_modality(rna, **columns) -> ad.AnnData:
    guide = ad.AnnData(np.ones((rna.n_obs, 5), dtype=np.float32), obs=pd.DataFrame(index=rna.obs_names.copy()))
    for key, value in columns.items():
        guide.obs[key] = value
    return guide


@pytest.mark.parametrize(
    ("columns", "setup", "exc", "match"),
    [
        # size factors, covariates and the batch taken from another modality are checked as from the RNA one
        ({"sf": 0.0}, {"size_factor_key": "sf"}, ValueError, r"obs\['sf'\] must hold positive, finite library sizes"),
        ({"sf": -5.0}, {"size_factor_key": "sf"}, ValueError, r"obs\['sf'\] must hold positive, finite"),
        ({"cov": np.nan}, {"continuous_covariate_keys": ["cov"]}, ValueError, r"obs\['cov'\] has missing values"),
        ({"cov": np.inf}, {"continuous_covariate_keys": ["cov"]}, ValueError, r"obs\['cov'\] must hold finite"),
        ({"b": np.nan}, {"batch_key": "b"}, ValueError, r"obs\['b'\] has 120 missing \(NaN\) batch values"),
        ({}, {"batch_key": "b"}, KeyError, r"batch_key 'b' is not a column of mdata\['guide'\]\.obs"),
    ],
)
def test_setup_mudata_checks_columns_of_every_modality(rel, columns, setup, exc, match):
    rna = rel.small()
    mdata = md.MuData({"rna": rna, "guide": _guide_modality(rna, **columns)})
    before = {k: m.obs.copy() for k, m in mdata.mod.items()}
    modalities = dict.fromkeys(setup, "guide")
    with pytest.raises(exc, match=match):
        SemiMechVI.setup_mudata(mdata, **setup, modalities=modalities)
    for k, m in mdata.mod.items():  # a failed setup leaves the data as they were
        pd.testing.assert_frame_equal(m.obs, before[k])


@pytest.mark.parametrize(
    ("change", "exc", "match"),
    [
        # one NaN covariate made every predicted row NaN
        (lambda c: c.obs.__setitem__("pct", np.r_[np.nan, c.obs["pct"].to_numpy()[1:]]), ValueError, "'pct'.*missing"),
        (lambda c: c.obs.__setitem__("pct", np.r_[np.inf, c.obs["pct"].to_numpy()[1:]]), ValueError, "'pct'.*finite"),
        (lambda c: c.obs.__setitem__("donor", ["d9"] + list(c.obs["donor"])[1:]), ValueError, r"\['d9'\]"),
        (lambda c: c.obs.__setitem__("donor", [None] + list(c.obs["donor"])[1:]), ValueError, "'donor'.*missing"),
    ],
)
def test_query_covariates_are_checked_as_at_setup(rel, change, exc, match):
    adata = rel.small()
    adata.obs["pct"] = np.linspace(0.0, 1.0, adata.n_obs)
    adata.obs["donor"] = np.array(["d1", "d2", "d3"])[np.arange(adata.n_obs) % 3]
    model = rel.trained(adata, continuous_covariate_keys=["pct"], categorical_covariate_keys=["donor"])
    assert np.isfinite(model.predict(adata=adata.copy()).X).all()
    query = adata.copy()
    change(query)
    with pytest.raises(exc, match=match):
        model.predict(adata=query)
    with pytest.raises(exc, match=match):
        model.get_latent_representation(adata=query)


def test_a_mudata_model_refuses_an_anndata_query(rel):
    rna = rel.small()
    mdata = md.MuData({"rna": rna})
    SemiMechVI.setup_mudata(mdata)
    model = SemiMechVI(mdata, **rel.MODEL_KWARGS)
    model.train(max_epochs=1, **rel.TRAIN_KWARGS)
    with pytest.raises(TypeError, match=r"set up with a MuData \(setup_mudata\); pass data of the same kind"):
        model.get_latent_representation(adata=rna)


def test_a_mudata_query_is_checked_as_at_setup(rel, tmp_path):
    rna = rel.small()
    SemiMechVI.setup_mudata(md.MuData({"rna": rna.copy()}), batch_key="batch")
    mdata = md.MuData({"rna": rna.copy()})
    SemiMechVI.setup_mudata(mdata, batch_key="batch")
    model = SemiMechVI(mdata, **rel.MODEL_KWARGS)
    model.train(max_epochs=1, **rel.TRAIN_KWARGS)
    bad = rna.copy()
    x = bad.X.toarray() if hasattr(bad.X, "toarray") else np.array(bad.X)
    x = x.astype(np.float32)
    x[0, 0] = -5.0
    bad.X = x
    with pytest.raises(ValueError, match=r"mdata\['rna'\].X has 1 negative values"):
        model.get_latent_representation(md.MuData({"rna": bad}))
    missing = rna.copy()
    values = missing.obs["batch"].astype(object).to_numpy()
    values[0] = np.nan
    missing.obs["batch"] = values
    with pytest.raises(ValueError, match=r"obs\['batch'\] has 1 missing \(NaN\) batch values"):
        model.get_latent_representation(md.MuData({"rna": missing}))
    # and a MuData the saved model is loaded with, where scvi-tools' transfer failed inside numpy
    path = tmp_path / "m"
    model.save(path)
    with pytest.raises(ValueError, match=r"obs\['batch'\] has 1 missing \(NaN\) batch values"):
        SemiMechVI.load(path, adata=md.MuData({"rna": missing}))


def test_a_mudata_model_does_not_label_its_genes_with_other_modalities(rel):
    rna = rel.small()
    mdata = md.MuData({"guide": _guide_modality(rna), "rna": rna})  # mdata.var_names: 5 guide + 30 RNA features
    SemiMechVI.setup_mudata(mdata)
    model = SemiMechVI(mdata, **rel.MODEL_KWARGS)
    model.train(max_epochs=1, **rel.TRAIN_KWARGS)
    assert model.get_normalized_expression(return_numpy=True).shape == (rna.n_obs, rna.n_vars)
    for call in (
        lambda: model.get_normalized_expression(),
        lambda: model.get_normalized_expression(gene_list=[rna.var_names[0]]),
        lambda: model.get_feature_correlation_matrix(),
    ):
        with pytest.raises(NotImplementedError, match=r"labels its result with the genes of every modality"):
            call()


def test_setup_mudata_refuses_modalities_of_unknown_arguments(rel):
    mdata = md.MuData({"rna": rel.small()})
    with pytest.raises(KeyError, match=r"modalities names \['perturbaton_key'\], which are not arguments"):
        SemiMechVI.setup_mudata(mdata, modalities={"perturbaton_key": "rna"})


def test_setup_mudata_checks_the_rna_counts(rel):
    rna = rel.small()
    _set(rna, 0, 0, -3)
    with pytest.raises(ValueError, match=r"mdata\['rna'\]\.X has 1 negative values"):
        SemiMechVI.setup_mudata(md.MuData({"rna": rna}))


# ================================================================================================ train
def _fresh_model(rel, **setup):
    adata = rel.small()
    SemiMechVI.setup_anndata(adata, **setup)
    return adata, SemiMechVI(adata, **rel.MODEL_KWARGS)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda a: a._inplace_subset_var(np.arange(20)), r"now have 20 genes but were set up with 30.*setup_anndata"),
        (
            lambda a: a._inplace_subset_obs(np.arange(100)),
            r"now have 100 cells but were set up with 120.*setup",
        ),
        (
            lambda a: setattr(a, "var_names", [f"x{g}" for g in a.var_names]),
            r"genes of the registered data were renamed or reordered after setup \(e\.g\. \['G0000'",
        ),
    ],
    ids=["fewer genes", "fewer cells", "renamed genes"],
)
def test_train_refuses_data_changed_after_setup(rel, change, match):
    adata, model = _fresh_model(rel)
    change(adata)
    with pytest.raises(ValueError, match=match):
        model.train(max_epochs=1, **rel.TRAIN_KWARGS)
    assert not model.is_trained_


def test_train_refuses_counts_replaced_after_setup(rel):
    adata, model = _fresh_model(rel)
    adata.X = adata.X * 0.5
    with pytest.raises(ValueError, match=r"adata\.X holds non-integer values"):
        model.train(max_epochs=1, **rel.TRAIN_KWARGS)


def test_predict_refuses_data_changed_after_training(rel, model):
    adata = rel.small()
    m = rel.trained(adata)
    adata._inplace_subset_var(np.arange(25))
    with pytest.raises(ValueError, match=r"now have 25 genes but were set up with 30"):
        m.predict(["G0008"])
    with pytest.raises(ValueError, match=r"now have 25 genes but were set up with 30"):
        m.get_latent_representation()


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"max_epochs": 0}, ValueError, r"max_epochs=0 must be a positive integer"),
        ({"max_epochs": 1.5}, ValueError, r"max_epochs=1\.5 must be a positive integer"),
        ({"max_epochs": 1, "batch_size": 0}, ValueError, r"batch_size=0 must be a positive integer"),
        ({"max_epochs": 1, "batching": "balanced"}, ValueError, r"batching='balanced' is not one of"),
        (
            {"max_epochs": 1, "batching": "batch_matched"},
            ValueError,
            r"needs wet-lab batches.*batch_key",
        ),
        (
            {"max_epochs": 1, "batch_size": 7, "train_size": 1.0},
            ValueError,
            r"With 120 training cells and batch_size=7, a minibatch holds a single cell.*batch_size=6",
        ),
        ({"max_epochs": 1, "train_size": 1.5}, ValueError, r"train_size must be in \(0, 1\], got 1\.5"),
        ({"max_epochs": 1, "plan_kwargs": {"lr": -1}}, ValueError, r"plan_kwargs\['lr'\]=-1 must be a positive"),
        ({"max_epochs": 1, "plan_kwargs": {"lr": float("nan")}}, ValueError, r"plan_kwargs\['lr'\]=nan must be"),
        (
            {"max_epochs": 1, "plan_kwargs": {"weight_decay": -0.1}},
            ValueError,
            r"plan_kwargs\['weight_decay'\]=-0\.1 must be 0 or more",
        ),
        (
            {"max_epochs": 1, "ckpt_path": "nowhere/last.ckpt"},
            FileNotFoundError,
            r"ckpt_path='nowhere/last\.ckpt'",
        ),
        (
            {"max_epochs": 1, "datasplitter_kwargs": {"external_indexing": [np.array([0, 500])]}},
            ValueError,
            r"external_indexing holds indices outside 0\.\.119",
        ),
        # validation_size beyond what training leaves was dropped silently; negative failed inside scvi-tools
        ({"max_epochs": 1, "train_size": 0.9, "validation_size": 0.5}, ValueError, r"validation_size=0\.5 must be in"),
        ({"max_epochs": 1, "validation_size": -0.1}, ValueError, r"validation_size=-0\.1 must be in \[0, 1 - train"),
        (
            {"max_epochs": 1, "early_stopping": True, "train_size": 1.0},
            ValueError,
            r"early_stopping=True stops on the validation loss.*no validation cells",
        ),
        (
            {"max_epochs": 1, "datasplitter_kwargs": {"external_indexing": [np.arange(120) < 100]}},
            ValueError,
            r"external_indexing\[0\] is a boolean mask.*np\.flatnonzero",
        ),
        (
            {"max_epochs": 1, "datasplitter_kwargs": {"external_indexing": [np.array(["c1", "c2"])]}},
            ValueError,
            r"external_indexing\[0\] holds <U2 values .*not positions",
        ),
        (
            {"max_epochs": 1, "datasplitter_kwargs": {"external_indexing": [np.array([0.5, 1.0])]}},
            ValueError,
            r"external_indexing\[0\] holds float64 values",
        ),
        (
            {"max_epochs": 1, "datasplitter_kwargs": {"external_indexing": [np.array([0, 0, 1])]}},
            ValueError,
            r"external_indexing\[0\] lists some cells more than once",
        ),
        (
            {"max_epochs": 1, "datasplitter_kwargs": {"external_indexing": [np.arange(60), np.arange(50, 120)]}},
            ValueError,
            r"external_indexing\[0\] and external_indexing\[1\] share cells",
        ),
        (
            {"max_epochs": 1, "datasplitter_kwargs": {"external_indexing": [np.arange(30)] * 4}},
            ValueError,
            r"external_indexing must be a list of up to three sets",
        ),
    ],
)
def test_train_validates_its_arguments(rel, kwargs, exc, match):
    _, model = _fresh_model(rel)
    train_kwargs = {k: v for k, v in rel.TRAIN_KWARGS.items() if k not in kwargs}
    with pytest.raises(exc, match=match):
        model.train(**kwargs, **train_kwargs)
    assert not model.is_trained_


def test_error_guided_batching_needs_perturbed_training_cells(rel):
    adata = rel.small()
    adata = adata[adata.obs["perturbation"] == "NT"].copy()
    SemiMechVI.setup_anndata(adata, batch_key="batch")
    model = SemiMechVI(adata, **rel.MODEL_KWARGS)
    with pytest.raises(ValueError, match=r"batching='error_guided' .* the training cells are all controls"):
        model.train(max_epochs=1, batching="error_guided", **rel.TRAIN_KWARGS)


# ================================================================================================ predict
@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "match"),
    [
        (
            ["G0008"],
            {"batch": "b9"},
            KeyError,
            r"Batch 'b9' was not seen in training \(batches: \['b0', 'b1', 'b2'",
        ),
        (["G0008"], {"media": "IFNG"}, KeyError, r"Medium 'IFNG' was not seen in training.*registered media"),
        ([np.nan], {}, TypeError, r"perturbations\[0\] = nan is not a label.*'STAT1'"),
        (["G0008", None], {}, TypeError, r"perturbations\[1\] = None is not a label"),
        # the label is the request's, not obs'
        ([""], {}, ValueError, r"Empty perturbation label '' in perturbations\[0\]:"),
        (["G0008", "G0008+"], {}, ValueError, r"'G0008\+' in perturbations\[1\] has an empty target"),
        (["G0008+"], {}, ValueError, r"empty target around the separator '\+'"),
        (["G0008+G0008"], {}, ValueError, r"names the target\(s\) \['G0008'\] more than once"),
        (["G0008"], {"time": 1.0}, ValueError, r"`time` applies to dynamic models"),
        (["G0008"], {"efficacy": 1.5}, ValueError, r"efficacy=1\.5 must be in \[0, 1\]"),
        (["G0008"], {"efficacy": [0.5]}, TypeError, r"efficacy=\[0\.5\] must be one number in \[0, 1\]"),
        (["G0008"], {"efficacy": "0.5"}, TypeError, r"efficacy='0\.5' must be one number"),
        (["G0008"], {"n_cells": 0}, ValueError, r"n_cells=0 must be a whole number of starting cells, at least 1"),
        (["G0008"], {"from_cells": [10_000]}, ValueError, r"from_cells must index cells of adata \(0\.\.119\)"),
        (["G0008"], {"anchor": "always"}, ValueError, r"anchor='always' is not one of"),
        (["G0008"], {"n_cells": 2.5}, ValueError, r"n_cells=2\.5 must be a whole number of starting cells"),
        (["G0008"], {"random_state": -1}, ValueError, r"random_state=-1 must be a non-negative integer seed"),
        # int() of these raised Python's own errors, naming neither the argument nor the fix
        (["G0008"], {"n_cells": float("nan")}, ValueError, r"n_cells=nan must be a whole number of starting cells"),
        (["G0008"], {"n_cells": float("inf")}, ValueError, r"n_cells=inf must be a whole number of starting cells"),
        (["G0008"], {"random_state": "a"}, ValueError, r"random_state='a' must be a non-negative integer seed"),
        (["G0008"], {"from_cells": [0.5]}, TypeError, r"from_cells must be integer positions or a boolean mask"),
        (["G0008"], {"batch_size": 0}, ValueError, r"batch_size=0 must be a positive integer"),
        (["G0008"], {"batch_size": -1}, ValueError, r"batch_size=-1 must be a positive integer"),
        (["unassigned"], {}, ValueError, r"'unassigned' is the unassigned label.*cannot be predicted"),
    ],
)
def test_predict_explains_bad_requests(model, args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        model.predict(args, **kwargs)


def test_predict_warns_about_a_known_target_in_another_case(model):
    with pytest.warns(UserWarning, match=r"Target 'g0008' is not registered, but 'G0008' is.*Did you mean 'G0008'"):
        pred = model.predict(["g0008"])
    assert pred.obs["unseen_targets"].tolist() == ["g0008"]


def test_a_medium_switch_must_come_before_the_read_out():
    from scmech.model._protocols import build_protocols

    kw = {"separator": "+", "control_label": "NT", "conditions": ["NT", "A"], "dynamic": True}
    with pytest.raises(ValueError, match=r"media_time=5\.0 is after the read-out time=1\.0 for 'A'"):
        build_protocols(["A"], "stim", 1.0, 5.0, None, **kw)
    with pytest.raises(ValueError, match=r"media_time=0\.5 for 'A' without a medium"):
        build_protocols(["A"], None, 1.0, 0.5, None, **kw)
    (p,) = build_protocols(["A"], "stim", 1.0, -0.5, None, **kw)  # a switch before the perturbation is fine
    assert (p.media, p.time, p.media_time) == ("stim", 1.0, -0.5)


@pytest.mark.parametrize("value", [np.inf, "high"])
def test_setup_rejects_a_continuous_covariate_that_is_not_finite(rel, value):
    adata = rel.small()
    adata.obs["pct_mt"] = np.full(adata.n_obs, 0.1, dtype=object)
    adata.obs.iloc[0, adata.obs.columns.get_loc("pct_mt")] = value
    with pytest.raises(ValueError, match=r"obs\['pct_mt'\] must hold finite numbers to be a continuous covariate"):
        SemiMechVI.setup_anndata(adata, continuous_covariate_keys=["pct_mt"])
    assert "_scvi_manager_uuid" not in adata.uns


def test_setup_rejects_a_gene_embedding_with_nan(rel):
    adata = rel.small()
    emb = np.ones((adata.n_vars, 4))
    emb[2, 1] = np.nan
    adata.varm["emb"] = emb
    gene = adata.var_names[2]
    with pytest.raises(
        ValueError, match=rf"varm\['emb'\] has NaN or infinite values for 1 genes \(e\.g\. \['{gene}'\]\)"
    ):
        SemiMechVI.setup_anndata(adata, gene_embedding_key="emb")


@pytest.mark.parametrize(("kwargs", "name"), [({"n_latent": 0}, "n_latent"), ({"n_hidden": 2.5}, "n_hidden")])
def test_model_refuses_a_size_that_is_not_a_positive_integer(rel, kwargs, name):
    adata = rel.small()
    SemiMechVI.setup_anndata(adata)
    with pytest.raises(ValueError, match=rf"{name}={list(kwargs.values())[0]!r} must be a positive integer"):
        SemiMechVI(adata, **kwargs)


def test_setup_names_a_covariate_string_that_should_be_a_list(rel):
    adata = rel.small()
    with pytest.raises(TypeError, match=r"categorical_covariate_keys must be a list of obs columns.*pass \['batch'\]"):
        SemiMechVI.setup_anndata(adata, categorical_covariate_keys="batch")


def test_save_to_a_file_path_is_refused(model, tmp_path):
    target = tmp_path / "model.txt"
    target.write_text("keep me")
    with pytest.raises(ValueError, match=r"model\.txt is a file, not a directory"):
        model.save(target, overwrite=True)
    assert target.read_text() == "keep me"


def test_predict_an_unseen_target_that_is_a_gene_works(model):
    pred = model.predict(["G0001"])
    assert pred.obs["unseen_targets"].tolist() == ["G0001"]
    assert pred.obs["target_source"].tolist() == ["gene map"]
    assert np.isfinite(pred.X).all()


def test_predict_an_unseen_target_that_is_not_a_gene_gets_the_shared_response(model):
    pred = model.predict(["CD274", "G0008+CD274"])
    assert pred.obs["unseen_targets"].tolist() == ["CD274", "CD274"]
    assert pred.obs["target_source"].tolist() == ["shared response", "shared response"]
    assert np.isfinite(pred.X).all()


def test_query_data_with_an_unseen_batch_raises(rel, model):
    query = rel.small()
    query.obs["batch"] = query.obs["batch"].astype(str).replace({"b0": "b9"})
    with pytest.raises(
        ValueError, match=r"category the model was not trained on .*Category b9 not found.*Relabel it to a training"
    ):
        model.predict(["G0008"], adata=query)


def test_query_data_with_an_unseen_target_raises(rel, model):
    query = rel.small()
    query.obs["perturbation"] = query.obs["perturbation"].replace({"G0008": "CD274"})
    with pytest.raises(ValueError, match=r"perturbs target\(s\) \['CD274'\] that were not registered"):
        model.predict(["G0008"], adata=query)


def test_a_query_view_is_read_as_its_copy_and_left_a_view(rel, model):
    query = rel.small()
    view = query[:60]
    latent = model.get_latent_representation(view)
    pred = model.predict(["G0008"], adata=view, random_state=0)
    # scvi-tools would have turned the caller's view into a copy in place to register it
    assert view.is_view
    assert "_scvi_uuid" not in query.uns
    assert "_scvi_uuid" not in view.uns
    copy = query[:60].copy()
    np.testing.assert_allclose(latent, model.get_latent_representation(copy))
    np.testing.assert_allclose(pred.X, model.predict(["G0008"], adata=copy, random_state=0).X)
    # one registered copy per view, dropped with the view: views made anew for each call do not pile up
    store = model._per_instance_manager_store[model.id]
    before = len(store)
    model.get_latent_representation(view)
    assert len(store) == before
    for _ in range(3):
        model.get_latent_representation(query[:50])
    gc.collect()
    assert len(store) <= before + 1


def test_query_data_with_other_genes_raises(rel, model):
    query = rel.small()[:, ::-1].copy()
    with pytest.raises(ValueError, match=r"other genes \(or another gene order\).*adata\[:, model\.adata\.var_names\]"):
        model.predict(["G0008"], adata=query)


# ================================================================================================ tl
def test_split_explains_bad_requests(rel):
    adata = rel.small()
    with pytest.raises(KeyError, match=r"perturbation_key 'guide_call' is not a column of adata\.obs"):
        tl.split(adata, "perturbation", perturbation_key="guide_call")
    with pytest.raises(ValueError, match=r"No control cells.*control_label='ctrl'"):
        tl.split(adata, "perturbation", control_label="ctrl")
    with pytest.raises(ValueError, match=r"'batch' split needs `batch_key`"):
        tl.split(adata, "batch")
    with pytest.raises(KeyError, match=r"Test condition 'CD274' \(canonical 'CD274'\) has no assigned cells"):
        tl.split(adata, "perturbation", test_conditions=["CD274"])
    adata.obs.loc[adata.obs_names[0], "perturbation"] = np.nan
    with pytest.raises(ValueError, match=r"obs\['perturbation'\] has 1 missing \(NaN\) labels.*fillna\('unassigned'\)"):
        tl.split(adata, "perturbation")


@pytest.mark.parametrize(
    ("value", "match"),
    [(-1.0, r"adata\.X has 1 negative values"), (np.nan, r"adata\.X has 1 NaN or infinite values")],
)
def test_evaluate_refuses_bad_counts(rel, value, match):
    adata = rel.small()
    tl.TrainMean.setup_anndata(adata)
    m = tl.TrainMean(adata)
    m.train()
    pred = m.predict()
    bad = rel.small()
    _set(bad, 0, 0, value)
    with pytest.raises(ValueError, match=match):
        tl.evaluate({"TrainMean": pred}, bad)
    with pytest.raises(KeyError, match=r"Layer 'counts' is not in adata\.layers.*layer=None"):
        tl.evaluate({"TrainMean": pred}, adata, layer="counts")
    with pytest.raises(KeyError, match=r"perturbation_key 'guide_call' is not a column"):
        tl.evaluate({"TrainMean": pred}, adata, perturbation_key="guide_call")


@pytest.mark.parametrize("cls", [tl.ControlMean, tl.TrainMean, tl.Additive, tl.LinearModel])
def test_baselines_explain_bad_input(rel, cls):
    adata = rel.small()
    _set(adata, 0, 0, -1)
    with pytest.raises(ValueError, match=r"adata\.X has 1 negative values"):
        cls.setup_anndata(adata)
    adata = rel.small()
    cls.setup_anndata(adata)
    m = cls(adata)
    with pytest.raises(RuntimeError, match="untrained model"):
        m.predict(["G0008"])
    m.train()
    if cls in (tl.Additive, tl.LinearModel):  # these need the target's own data or a gene embedding
        with pytest.raises(KeyError, match="CD274"):
            m.predict(["CD274"])
    else:  # the control and train-mean baselines predict any target by construction
        assert np.isfinite(m.predict(["CD274"]).X).all()
    with pytest.raises(ValueError, match=r"`batch`='b9' was given, but no batch key was registered.*batch_key="):
        m.predict(["NT"], batch="b9")
    adata._inplace_subset_var(np.arange(20))
    with pytest.raises(ValueError, match=r"now have 20 genes but were set up with 30"):
        m.predict(["NT"])
    with pytest.raises(ValueError, match=r"now have 20 genes but were set up with 30"):
        m.train()


def test_baseline_with_an_unseen_batch_context_raises(rel):
    adata = rel.small()
    tl.Additive.setup_anndata(adata, batch_key="batch")
    m = tl.Additive(adata)
    m.train()
    with pytest.raises(KeyError, match=r"No training control cells with batch=b9"):
        m.predict(["G0008"], batch="b9")


def test_error_decomposition_explains_bad_input(rel):
    adata = rel.small()
    with pytest.raises(KeyError, match=r"batch_key 'lane' is not a column of adata\.obs.*wet-lab batch"):
        tl.error_decomposition(adata, batch_key="lane", n_bootstrap=0)
    with pytest.raises(KeyError, match=r"Layer 'counts' is not in adata\.layers"):
        tl.error_decomposition(adata, batch_key="batch", layer="counts", n_bootstrap=0)
    bad = rel.small(sparse=False)
    _set(bad, 0, 0, 0.5)
    with pytest.raises(ValueError, match=r"adata\.X does not hold counts.*layer=.*counts=False"):
        tl.error_decomposition(bad, batch_key="batch", n_bootstrap=0)
    empty = rel.small(sparse=False)
    x = empty.X.copy()
    x[4] = 0
    empty.X = x
    with pytest.raises(ValueError, match=r"1 cells have a library size of 0; remove empty cells"):
        tl.error_decomposition(empty, batch_key="batch", n_bootstrap=0)


# ================================================================================================ loader
def test_loader_explains_a_missing_or_damaged_file(tmp_path, monkeypatch):
    from scmech.datasets import _papalexi

    monkeypatch.setattr(_papalexi, "_path", lambda: tmp_path / "missing.h5ad")
    with pytest.raises(FileNotFoundError, match=r"papalexi2021_thp1_eccite\.h5ad is missing.*reinstall scmech"):
        scmech.datasets.papalexi2021()
    damaged = tmp_path / "damaged.h5ad"
    damaged.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    monkeypatch.setattr(_papalexi, "_path", lambda: damaged)
    with pytest.raises(OSError, match=r"is corrupted \(sha256 [0-9a-f]{12}…\); reinstall scmech"):
        scmech.datasets.papalexi2021()
    with pytest.raises(OSError, match=r"Cannot read the bundled dataset .*damaged.*Reinstall scmech"):
        scmech.datasets.papalexi2021(check_integrity=False)


def test_loader_reads_a_valid_file_without_integrity_check(rel, tmp_path, monkeypatch):
    from scmech.datasets import _papalexi

    adata = ad.AnnData(rel.small().X.copy())
    adata.write_h5ad(tmp_path / "ok.h5ad")
    monkeypatch.setattr(_papalexi, "_path", lambda: tmp_path / "ok.h5ad")
    out = scmech.datasets.papalexi2021(check_integrity=False)
    assert out.shape == adata.shape
    with pytest.raises(OSError, match="is corrupted"):
        scmech.datasets.papalexi2021()


def test_labels_edited_after_setup_are_refused(rel):
    adata = rel.small()
    SemiMechVI.setup_anndata(adata, batch_key="batch")
    model = SemiMechVI(adata, n_latent=4, n_hidden=16, field_hidden=8)
    labels = adata.obs["perturbation"].astype(str).to_numpy().copy()
    labels[labels == "G0008"] = "G0009"
    adata.obs["perturbation"] = labels
    with pytest.raises(ValueError, match=r"obs\['perturbation'\] was changed after setup_anndata"):
        model.train(max_epochs=1, enable_progress_bar=False)


def test_integer_control_codes_are_labels(rel):
    adata = rel.small()
    codes = {lab: i for i, lab in enumerate(sorted(adata.obs["perturbation"].astype(str).unique()))}
    adata.obs["code"] = adata.obs["perturbation"].astype(str).map(codes)
    ctrl = codes["NT"]
    SemiMechVI.setup_anndata(adata, perturbation_key="code", control_label=ctrl)
    model = SemiMechVI(adata, n_latent=4, n_hidden=16, field_hidden=8)
    assert model.adata_manager.get_state_registry("perturbation")["control_label"] == str(ctrl)


def test_every_control_label_reads_as_the_control(rel):
    adata = rel.small()
    labels = adata.obs["perturbation"].astype(str).to_numpy().copy()
    nt = np.flatnonzero(labels == "NT")
    labels[nt[: len(nt) // 2]] = "non-targeting"
    adata.obs["perturbation"] = labels
    SemiMechVI.setup_anndata(adata, control_label=["NT", "non-targeting"])
    model = SemiMechVI(adata, n_latent=4, n_hidden=16, field_hidden=8)
    model.train(max_epochs=1, enable_progress_bar=False, batch_size=64)
    pred = model.predict(["non-targeting", "NT", "G0008+non-targeting"], anchor="none")
    assert list(pred.obs["perturbation"]) == ["NT", "NT", "G0008"]
    np.testing.assert_array_equal(pred.X[0], pred.X[1])
    assert (pred.obs["unseen_targets"] == "").all()


def test_targets_named_like_genes_in_another_case_warn(rel):
    adata = rel.small()
    labels = adata.obs["perturbation"].astype(str).to_numpy().copy()
    labels[labels == "G0008"] = "g0008"
    adata.obs["perturbation"] = labels
    with pytest.warns(UserWarning, match=r"match a gene only up to letter case \('g0008' vs gene 'G0008'\)"):
        SemiMechVI.setup_anndata(adata)


def test_an_unassigned_label_kept_as_a_target_warns(rel):
    adata = rel.small()
    labels = adata.obs["perturbation"].astype(str).to_numpy().copy()
    labels[:5] = "unassigned"
    adata.obs["perturbation"] = labels
    with pytest.warns(
        UserWarning, match=r"unassigned_label=None, so \['unassigned'\].*pass unassigned_label='unassigned'"
    ):
        SemiMechVI.setup_anndata(adata, unassigned_label=None)


def test_cells_outside_every_external_indexing_set_are_named(rel):
    _, model = _fresh_model(rel)
    train_kwargs = {k: v for k, v in rel.TRAIN_KWARGS.items() if k != "datasplitter_kwargs"}
    with pytest.warns(UserWarning, match=r"110 of 120 cells are in none of the external_indexing sets"):
        model.train(max_epochs=1, datasplitter_kwargs={"external_indexing": [np.arange(10)]}, **train_kwargs)
    assert len(model.train_indices_) == 10


@pytest.mark.parametrize(
    "method",
    [
        "get_latent_representation",
        "get_basal_representation",
        "get_steady_state_residual",
        "get_normalized_expression",
        "get_latent_library_size",
    ],
)
def test_empty_indices_are_refused_by_name(rel, method):
    model = rel.trained()
    with pytest.raises(ValueError, match=r"indices is empty: pass the indices of at least one cell, or indices=None"):
        getattr(model, method)(indices=[])
    assert len(getattr(model, method)(indices=[0, 1])) == 2


def test_setup_warnings_point_at_the_users_call(rel):
    adata = rel.small()
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    labels[:2] = "RARE"  # a condition with too few cells
    labels[2:5] = "unassigned"  # an unassigned-like label kept as a target
    adata.obs["perturbation"] = labels
    with pytest.warns(UserWarning, match="fewer than 3 cells|unassigned_label=None") as record:
        SemiMechVI.setup_anndata(adata, unassigned_label=None)
    messages = {str(r.message)[:30]: r.filename for r in record}
    assert any("fewer than 3 cells" in str(r.message) for r in record)
    assert any("unassigned_label=None" in str(r.message) for r in record)
    assert set(messages.values()) == {__file__}, messages


def test_targets_named_by_a_var_column_other_than_var_names_warn(rel):
    """Genes indexed by identifier with the symbols the guides are named by in a column: every target would
    silently lose its own gene."""
    adata = rel.small()
    adata.var["gene_name"] = adata.var_names.astype(str)
    adata.var_names = [f"ENSG{i:011d}" for i in range(adata.n_vars)]
    match = (
        r"of the \d+ targets of obs\['perturbation'\] are genes of var\['gene_name'\], but only 0 are in "
        r"var_names.*Pass gene_symbols='gene_name' to setup_anndata"
    )
    with pytest.warns(UserWarning, match=match):
        SemiMechVI.setup_anndata(adata)
    # with the column registered, nothing to say
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*are genes of var.*")
        SemiMechVI.setup_anndata(adata, gene_symbols="gene_name")
    # indexed by the symbols, nothing to say
    fixed = rel.small()
    fixed.var["gene_id"] = [f"ENSG{i:011d}" for i in range(fixed.n_vars)]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*are genes of var.*")
        SemiMechVI.setup_anndata(fixed)


@pytest.mark.parametrize(
    ("relabel", "match"),
    [
        ({"G0008": "G0008_1", "G0009": "sgG0009-2"}, r"2 target\(s\) .* contain one \('G0008_1', 'sgG0009-2'; .*"),
        ({"G0009+G0021": "G0009_G0021"}, r"1 target\(s\) .* join genes with '_' .*pass separator='_'"),
    ],
)
def test_labels_that_name_guides_or_join_genes_otherwise_warn(rel, relabel, match):
    """A guide's label, or a combination joined by another character, is no gene: its own gene would be lost."""
    adata = rel.small()
    adata.obs["perturbation"] = adata.obs["perturbation"].astype(str).replace(relabel)
    with pytest.warns(UserWarning, match=match):
        SemiMechVI.setup_anndata(adata)
    # labelled by target gene, nothing to say
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*are no gene but.*")
        SemiMechVI.setup_anndata(rel.small())


@pytest.mark.parametrize("controls", ["nt", "non-targeting_1"])
def test_setup_without_control_cells_names_the_likely_control_label_first(rel, controls):
    adata = rel.small()
    labels = adata.obs["perturbation"].astype(str).replace({"NT": controls})
    adata.obs["perturbation"] = labels.astype("category")
    with pytest.raises(ValueError, match=rf"seen include '{controls}', .*Did you mean control_label='{controls}'\?"):
        SemiMechVI.setup_anndata(adata, control_label="NT")


@pytest.mark.parametrize(
    ("value", "whole"),
    [
        (2, True),
        (2.0, True),
        (np.int32(3), True),
        (10**20, True),
        (True, False),
        (0, False),
        (1.5, False),
        (float("inf"), False),
        (float("nan"), False),
        (-(10**20), False),
        ("3", False),
    ],
)
def test_positive_whole_numbers_include_python_integers_beyond_int64(value, whole):
    from scmech.model._train_checks import _whole

    assert _whole(value) is whole


def test_setup_mudata_refuses_a_modality_in_another_cell_order(rel):
    # scvi-tools reads a modality's obs by position: the guide modality's labels went to the wrong cells silently
    rna = rel.small()
    guide = _guide_modality(rna, perturbation=rna.obs["perturbation"].to_numpy(), b=rna.obs["batch"].to_numpy())
    del rna.obs["perturbation"]
    shuffled = guide[np.random.default_rng(1).permutation(guide.n_obs)].copy()
    mdata = md.MuData({"rna": rna, "guide": shuffled})
    with pytest.raises(
        ValueError,
        match=r"mdata\['guide'\] \(the modality of batch_key\) holds the cells of mdata\['rna'\] in another order; "
        r"scvi-tools reads its obs by position.*mdata\.mod\['guide'\] = mdata\['guide'\]\[mdata\['rna'\]\.obs_names\]",
    ):
        SemiMechVI.setup_mudata(mdata, batch_key="b", modalities={"perturbation_key": "guide", "batch_key": "guide"})
    # as the message says
    mdata.mod["guide"] = mdata["guide"][mdata["rna"].obs_names].copy()
    mdata.update()
    SemiMechVI.setup_mudata(mdata, batch_key="b", modalities={"perturbation_key": "guide", "batch_key": "guide"})
    model = SemiMechVI(mdata, **rel.MODEL_KWARGS)
    labels = model.adata_manager.get_from_registry("batch").ravel()
    codes = pd.Categorical(guide.obs["b"]).codes
    np.testing.assert_array_equal(labels, codes)


def test_setup_mudata_modalities_argument_is_checked(rel):
    rna = rel.small()
    guide = _guide_modality(rna, b=rna.obs["batch"].to_numpy())
    mdata = md.MuData({"rna": rna, "guide": guide})
    with pytest.raises(TypeError, match=r"modalities=\['guide'\] must be a dict from argument name to modality name"):
        SemiMechVI.setup_mudata(mdata, batch_key="b", modalities=["guide"])
    with pytest.raises(
        ValueError, match=r"modalities\['batch_key'\] = None \(the MuData's global obs\) is not supported"
    ):
        SemiMechVI.setup_mudata(mdata, batch_key="b", modalities={"batch_key": None})


def test_a_mudata_model_refuses_modalities_removed_or_reordered_after_setup(rel):
    rna = rel.small()
    guide = _guide_modality(rna, perturbation=rna.obs["perturbation"].to_numpy())
    del rna.obs["perturbation"]
    mdata = md.MuData({"rna": rna, "guide": guide})
    SemiMechVI.setup_mudata(mdata, modalities={"perturbation_key": "guide"})
    model = SemiMechVI(mdata, **rel.MODEL_KWARGS)
    model.train(max_epochs=1, **rel.TRAIN_KWARGS)
    mdata.mod["guide"] = guide[np.random.default_rng(0).permutation(guide.n_obs)].copy()
    with pytest.raises(
        ValueError, match=r"changed after setup_mudata: mdata\['guide'\].*in another order.*setup_mudata"
    ):
        model.predict(["G0008"])
    del mdata.mod["guide"]
    with pytest.raises(
        ValueError, match=r"changed after setup_mudata: modalities\['perturbation_key'\] = 'guide' is not"
    ):
        model.predict(["G0008"])


def test_load_onto_data_without_a_registered_column_names_it(rel, tmp_path):
    adata = rel.small()
    model = rel.trained(adata)
    model.save(tmp_path / "m")
    other = adata.copy()
    del other.obs["batch"]
    # scvi-tools' own "batch not found in adata.obs." named neither the argument nor the fix
    with pytest.raises(KeyError, match=r"adata\.obs has no column 'batch', the batch_key the saved model was set up"):
        SemiMechVI.load(tmp_path / "m", adata=other)


def test_setup_layer_must_be_one_layer_name(rel):
    adata = rel.small()
    adata.layers["c"] = adata.X.copy()
    with pytest.raises(TypeError, match=r"layer=\['c'\] must be the name of one layer of adata\.layers"):
        SemiMechVI.setup_anndata(adata, layer=["c"])


@pytest.mark.parametrize(
    ("held", "members"),
    [
        # G0009 would train through the double G0009+G0021, so it is held out with it
        (["G0008", "G0009", "G0010", "G0009+G0021"], ["G0021"]),
        (["G0008", "G0010"], ["G0009", "G0021"]),
    ],
)
def test_an_own_gene_calibrated_on_fewer_than_three_targets_warns_and_has_no_spread(rel, held, members):
    adata = rel.small()
    split = tl.split(adata, "perturbation", test_conditions=held, random_state=0)
    SemiMechVI.setup_anndata(adata)
    model = SemiMechVI(adata, **rel.MODEL_KWARGS)
    model.train(max_epochs=1, datasplitter_kwargs={"external_indexing": split.external_indexing}, **rel.TRAIN_KWARGS)
    assert model.target_map_.class_targets == members
    # one target's spread was reported as 0, and two agreeing targets' as near 0: certainties they cannot give
    match = rf"rests on {len(members)} training target\(s\) whose gene is measured: too few .* uncertainty"
    with pytest.warns(UserWarning, match=match):
        pred = model.predict(["G0008", "G0010"], interval=0.3)  # two training rows bound up to 1 - 2 / 3
    assert pred.obs["own_gene_sd"].isna().all()
    genes = list(map(str, adata.var_names))
    for i, target in enumerate(["G0008", "G0010"]):
        lower, upper = pred.layers["lower"][i], pred.layers["upper"][i]
        if len(members) < 2:  # no shared response to anchor on: no interval at all
            assert np.isnan(lower).all()
            continue
        g = genes.index(target)
        assert lower[g] == 0.0  # unbounded below, floored at no expression
        assert np.isinf(upper[g])
        # elsewhere bounded, but at the members' own genes, where each is left out of the shared response
        assert np.isfinite(np.delete(upper, [genes.index(t) for t in [target, *members]])).all()


def test_query_with_a_missing_batch_is_named(rel, model):
    # scvi-tools' transfer of the setup failed inside numpy ('<' not supported between 'str' and 'float')
    query = rel.small()
    values = query.obs["batch"].astype(object).to_numpy()
    values[0] = np.nan
    query.obs["batch"] = values
    for call in (lambda: model.get_latent_representation(query), lambda: model.predict(["G0008"], adata=query)):
        with pytest.raises(ValueError, match=r"obs\['batch'\] has 1 missing \(NaN\) batch values"):
            call()


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (np.nan, r"adata.X has 1 NaN or infinite values"),
        (-5.0, r"adata.X has 1 negative values \(min -5\)"),
        (0.5, r"adata.X holds non-integer values"),
    ],
)
def test_query_expression_is_checked_as_at_setup(rel, model, value, match):
    # a NaN or a negative count stopped the encoder inside torch; a fractional count was encoded without a word
    query = rel.small()
    x = query.X.toarray() if hasattr(query.X, "toarray") else np.array(query.X)
    x = x.astype(np.float32)
    x[0, 0] = value if value != 0.5 else x[0, 0] + 0.5
    query.X = x
    with pytest.raises(ValueError, match=match):
        model.get_latent_representation(query)


def test_latent_flags_and_network_genes_are_checked(model):
    # scvi-tools read give_mean="no" as True; genes=3 failed with "'int' object is not iterable"
    with pytest.raises(TypeError, match=r"give_mean='no' must be True or False"):
        model.get_latent_representation(give_mean="no")
    with pytest.raises(TypeError, match=r"return_dist=1 must be True or False"):
        model.get_latent_representation(return_dist=1)
    with pytest.raises(ValueError, match=r"mc_samples=0 must be a positive integer"):
        model.get_latent_representation(give_mean=False, mc_samples=0)
    with pytest.raises(TypeError, match=r"give_mean='no' must be True or False"):
        model.get_latent_library_size(give_mean="no")
    with pytest.raises(TypeError, match=r"genes=3 must be a gene name or a list of gene names"):
        model.get_regulatory_network(genes=3)
