"""Hostile input to registration, the data layer and guide assignment: clear errors, no silent wrong answers."""

from __future__ import annotations

import time

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scmech.data import (
    SimulatedNetwork,
    get_design,
    parse_condition,
    parse_perturbations,
    simulate_perturbseq,
    simulation_group_keys,
    validate_efficacy,
    validate_time,
)
from scmech.data._embedding import pseudobulk_gene_embedding, ridge_map, ridge_map_cv, solve_y_axb
from scmech.model import SemiMechVI
from scmech.pp import assign_guides

TINY_SIM = {"n_cells": 60, "n_genes": 20, "n_perturbations": 2, "n_combinations": 0}


def _registered_targets(adata) -> list[str]:
    manager = SemiMechVI._get_most_recent_anndata_manager(adata, required=True)
    return list(manager.registry["field_registries"]["perturbation"]["state_registry"]["targets"])


# ---------------------------------------------------------------------------------------------- the simulator


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"time_points": [1e6]}, r"time_points and media_switch_times span 1e\+06 days.*at most 20,000"),
        ({"media_switch_times": [-1e6]}, r"span 1e\+06 days \(from -1e\+06 to 4\)"),
    ],
)
def test_simulator_refuses_time_spans_that_need_too_many_steps(kwargs, match):
    start = time.perf_counter()
    with pytest.raises(ValueError, match=match):
        simulate_perturbseq(**TINY_SIM, regime="dynamic", **kwargs)
    assert time.perf_counter() - start < 5


def test_simulator_ignores_time_points_of_the_steady_state_regime():
    adata = simulate_perturbseq(**TINY_SIM, time_points=[1e6])
    assert adata.n_obs == 60


def test_network_integration_refuses_an_absurd_span():
    net = SimulatedNetwork.from_truth(simulate_perturbseq(**TINY_SIM).uns["truth"])
    with pytest.raises(ValueError, match=r"t span 1e\+06 days.*or a larger dt"):
        net.integrate(net.steady_state(), [0.0, 1e6])
    with pytest.raises(ValueError, match=r"dt=0 must be a positive finite RK4 step"):
        net.integrate(net.steady_state(), [0.0, 1.0], dt=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_genes": 10**7}, r"n_genes=10000000 is too large.*dense genes x genes"),
        ({"n_efficacy_grid": 10**7}, r"n_efficacy_grid=10000000 is too large"),
        ({"n_media": 10**6}, r"n_media=1000000 is too large"),
        ({"n_batches": 10**6}, r"n_batches=1000000 is too large"),
        ({"library_size_mean": 1e20}, r"library_size_mean=1e\+20 is out of range.*\(0, 1e\+09\]"),
        ({"media_strength": 1e3, "n_media": 2}, r"production rates overflow.*media_strength"),
    ],
)
def test_simulator_refuses_extreme_parameters_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        simulate_perturbseq(**{**TINY_SIM, **kwargs})


def test_simulator_warns_when_cells_have_no_counts():
    with pytest.warns(UserWarning, match=r"60 of 60 simulated cells have no counts.*library_size_mean=0\.001"):
        adata = simulate_perturbseq(**TINY_SIM, library_size_mean=1e-3)
    assert adata.X.nnz == 0


def test_simulation_group_keys_name_the_missing_columns():
    with pytest.raises(KeyError, match=r"lacks the column\(s\) \['media'\]"):
        simulation_group_keys(pd.DataFrame({"perturbation": ["NT"]}))
    with pytest.raises(ValueError, match=r"regime='other'"):
        simulation_group_keys(pd.DataFrame({"perturbation": ["NT"], "media": ["m0"]}), regime="other")


# ---------------------------------------------------------------------------------------------- guide assignment


def _guides(names, counts, targets) -> ad.AnnData:
    return ad.AnnData(
        X=sp.csr_matrix(np.asarray(counts, dtype=np.float32)),
        obs=pd.DataFrame(index=[f"c{i}" for i in range(len(counts))]),
        var=pd.DataFrame({"target": targets}, index=names),
    )


COUNTS = [[10, 0, 0], [0, 10, 0], [10, 10, 0], [0, 0, 10]]


@pytest.mark.parametrize("rule", ["max_fraction", "threshold"])
def test_guide_names_with_the_separator_are_refused(rule):
    gdata = _guides(["A+1", "B", "C"], COUNTS, ["A", "B", "C"])
    obs = gdata.obs.copy()
    with pytest.raises(ValueError, match=r"Guide name\(s\) \['A\+1'\] contain the separator '\+'.*separator="):
        assign_guides(gdata, rule=rule)
    pd.testing.assert_frame_equal(gdata.obs, obs)
    df = assign_guides(gdata, rule=rule, separator="|")  # unambiguous with another separator
    assert df["scmech_guide"].tolist()[2] == "A+1|B"


def test_guide_targets_are_stripped_as_registration_strips_labels():
    gdata = _guides(["g1", "g2", "g3"], COUNTS, [" A", "A ", "C"])
    df = assign_guides(gdata, rule="threshold")
    # both guides target A: one target, not "multiple"
    assert df["scmech_perturbation"].tolist() == ["A", "A", "A", "C"]
    # a padded control target is the control, as setup_anndata reads a padded control label
    df = assign_guides(_guides(["g1", "g2", "g3"], COUNTS, [" NT", "B", "C"]), rule="threshold", combinations=True)
    assert df["scmech_perturbation"].tolist() == ["NT", "B", "B", "C"]


def test_a_blank_separator_is_refused_as_setup_refuses_it():
    with pytest.raises(ValueError, match=r"separator=' ' must be a non-blank string"):
        assign_guides(_guides(["g1", "g2", "g3"], COUNTS, ["A", "B", "C"]), separator=" ")


def test_boolean_guide_calls_are_refused():
    gdata = _guides(["g1", "g2", "g3"], COUNTS, ["A", "B", "C"])
    gdata.X = gdata.X.toarray() > 0
    with pytest.raises(TypeError, match=r"adata\.X holds booleans \(guide calls\), not UMI counts.*min_umis=1"):
        assign_guides(gdata)


def test_obsm_guide_counts_with_missing_or_text_values_are_refused():
    adata = ad.AnnData(X=np.ones((3, 2)), obs=pd.DataFrame(index=["c0", "c1", "c2"]))
    adata.obsm["gc"] = pd.DataFrame(
        {"a": pd.array([10, None, 0], dtype="Int64"), "b": [0, 0, 9]}, index=adata.obs_names
    )
    with pytest.raises(ValueError, match=r"adata\.obsm\['gc'\] must hold guide UMI counts"):
        assign_guides(adata, obsm_key="gc")
    adata.obsm["gc"] = pd.DataFrame({"a": ["x", "y", "z"], "b": [0, 0, 9]}, index=adata.obs_names)
    with pytest.raises(TypeError, match=r"adata\.obsm\['gc'\] holds non-numeric guide counts"):
        assign_guides(adata, obsm_key="gc")
    assert list(adata.obs.columns) == []


def test_a_uns_entry_that_is_not_a_dict_is_refused_before_anything_is_written():
    gdata = _guides(["g1", "g2", "g3"], COUNTS, ["A", "B", "C"])
    gdata.uns["scmech"] = "the user's note"
    with pytest.raises(ValueError, match=r"adata\.uns\['scmech'\] holds a str, not a dictionary.*key_added"):
        assign_guides(gdata)
    assert list(gdata.obs.columns) == []
    assert gdata.uns["scmech"] == "the user's note"


# ---------------------------------------------------------------------------------------------- embedding helpers


def test_embedding_helpers_validate_their_arguments():
    rng = np.random.default_rng(0)
    pb = rng.normal(size=(5, 30))
    for bad in (-1, 0, 2.5, True):
        with pytest.raises(ValueError, match=r"n_components=.* must be a positive integer"):
            pseudobulk_gene_embedding(pb, bad)
    with pytest.raises(ValueError, match=r"pseudobulk has 150 NaN"):
        pseudobulk_gene_embedding(np.full((5, 30), np.nan), 2)
    e, v = rng.normal(size=(10, 3)), rng.normal(size=(10, 2))
    for bad in (-1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match=r"ridge=.* must be a non-negative finite ridge penalty"):
            ridge_map(e, v, ridge=bad)
    with pytest.raises(ValueError, match=r"ridges=-1\.0 must be a non-negative"):
        ridge_map_cv(e, v, ridges=np.array([-1.0]))
    with pytest.raises(ValueError, match=r"a_ridge=-1\.0 must be a non-negative"):
        solve_y_axb(rng.normal(size=(30, 4)), rng.normal(size=(30, 3)), rng.normal(size=(2, 4)), a_ridge=-1.0)
    with pytest.raises(ValueError, match=r"values has 5 rows for 10 targets"):
        ridge_map(e, v[:5])
    with pytest.raises(ValueError, match=r"singular.*positive ridge"):
        ridge_map(np.ones((10, 3)), v, ridge=0.0)


# ---------------------------------------------------------------------------------------------- labels


def test_a_container_stored_as_a_label_is_refused(rel):
    adata = rel.small()
    labels = adata.obs["perturbation"].astype(object).to_numpy()
    labels[0] = ("G0008",)
    adata.obs["perturbation"] = labels
    with pytest.raises(TypeError, match=r"Perturbation label \('G0008',\) .* is a tuple, not one label"):
        SemiMechVI.setup_anndata(adata)
    with pytest.raises(TypeError, match=r"is a list, not one label"):
        parse_condition(["A", "B"])
    with pytest.raises(ValueError, match=r"must be one per cell \(1-D\)"):
        parse_perturbations(np.array([["NT", "A"], ["A", "NT"]]))


def test_a_combination_with_the_unassigned_label_is_refused(rel):
    adata = rel.small()
    adata.obs["perturbation"] = adata.obs["perturbation"].astype(str).replace({"G0008": "unassigned+G0021"})
    before = rel.snapshot(adata)
    with pytest.raises(ValueError, match=r"\['unassigned\+G0021'\] .* combine a target with the unassigned label"):
        SemiMechVI.setup_anndata(adata)
    rel.assert_unchanged(adata, before)


@pytest.mark.parametrize("label", ["nan", "None", "multiple"])
def test_targets_that_read_as_missing_calls_warn(rel, label):
    adata = rel.small()
    adata.obs["perturbation"] = adata.obs["perturbation"].astype(str).replace({"G0008": label})
    with pytest.warns(UserWarning, match=rf"\['{label}'\] in obs\['perturbation'\] are taken as perturbation targets"):
        SemiMechVI.setup_anndata(adata)
    assert label in _registered_targets(adata)


@pytest.mark.parametrize("separator", [1, None, " "])
def test_a_separator_that_is_not_a_string_is_named(rel, separator):
    with pytest.raises(ValueError, match=r"`separator` must be a non-blank string"):
        SemiMechVI.setup_anndata(rel.small(), separator=separator)
    with pytest.raises(ValueError, match=r"`separator` must be a non-blank string"):
        parse_condition("A+B", separator=separator)


# ---------------------------------------------------------------------------------------------- design columns


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"perturbation_key": ["perturbation"]}, TypeError, r"perturbation_key=\['perturbation'\] must be the name"),
        ({"batch_key": ["batch"]}, TypeError, r"batch_key=\['batch'\] .*pass batch_key='batch'"),
        ({"time_key": 1}, TypeError, r"time_key=1 must be the name of one obs column"),
        ({"categorical_covariate_keys": ["batch", "batch"]}, ValueError, r"names \['batch'\] more than once"),
    ],
)
def test_keys_of_the_wrong_kind_are_named(rel, kwargs, exc, match):
    adata = rel.small()
    before = rel.snapshot(adata)
    with pytest.raises(exc, match=match):
        SemiMechVI.setup_anndata(adata, **kwargs)
    rel.assert_unchanged(adata, before)


def test_a_tuple_of_covariate_keys_is_a_list(rel):
    adata = rel.small()
    SemiMechVI.setup_anndata(adata, categorical_covariate_keys=("batch",))
    manager = SemiMechVI._get_most_recent_anndata_manager(adata, required=True)
    assert manager.registry["setup_args"]["categorical_covariate_keys"] == ["batch"]


@pytest.mark.parametrize("arg", ["batch_key", "media_key", "categorical_covariate_keys"])
def test_categorical_columns_mixing_value_types_are_refused(rel, arg):
    adata = rel.small()
    adata.obs["mixed"] = np.array([1, "1"] * (adata.n_obs // 2), dtype=object)
    before = rel.snapshot(adata)
    value = ["mixed"] if arg == "categorical_covariate_keys" else "mixed"
    with pytest.raises(TypeError, match=rf"{arg} obs\['mixed'\] mixes value types \(\['number', 'str'\]\)"):
        SemiMechVI.setup_anndata(adata, **{arg: value})
    rel.assert_unchanged(adata, before)


@pytest.mark.parametrize(
    ("column", "value", "what"),
    [
        ("size_factor_key", 1e300, "library size"),
        ("size_factor_key", 1e-300, "library size"),
        ("time_key", 1e300, "time"),
        ("continuous_covariate_keys", 1e300, "continuous covariate"),
    ],
)
def test_numbers_beyond_float32_are_refused(rel, column, value, what):
    adata = rel.small()
    adata.obs["num"] = value
    arg = ["num"] if column == "continuous_covariate_keys" else "num"
    with pytest.raises(ValueError, match=rf"obs\['num'\] has 120 {what} values beyond the float32 range"):
        SemiMechVI.setup_anndata(adata, **{column: arg})


def test_complex_and_two_dimensional_times_are_refused(rel):
    adata = rel.small()
    adata.obs["t"] = np.ones(adata.n_obs, dtype=complex)
    with pytest.raises(TypeError, match=r"obs\['t'\] must be numeric time values, got dtype complex128"):
        SemiMechVI.setup_anndata(adata, time_key="t")
    with pytest.raises(ValueError, match=r"one number per cell \(1-D\), got shape \(3, 2\)"):
        validate_time(np.ones((3, 2)))


def test_boolean_times_are_refused_not_read_as_days_0_and_1(rel):
    adata = rel.small()
    adata.obs["t"] = np.arange(adata.n_obs) % 2 == 0
    before = adata.obs.copy()
    with pytest.raises(TypeError, match=r"obs\['t'\] holds True/False values, which would be read as times 0 and 1"):
        SemiMechVI.setup_anndata(adata, time_key="t")
    pd.testing.assert_frame_equal(adata.obs, before)
    # a boolean efficacy (escaper or responder) stays accepted
    np.testing.assert_array_equal(validate_efficacy(np.array([True, False])), [1.0, 0.0])


def test_get_design_refuses_what_is_not_an_anndata(rel):
    with pytest.raises(TypeError, match=r"adata must be an AnnData .*got DataFrame"):
        get_design(rel.small().obs)


@pytest.mark.parametrize(
    ("embedding", "exc", "match"),
    [
        (sp.csr_matrix(np.ones((30, 3))), TypeError, r"varm\['e'\] is a sparse matrix; .*toarray\(\)"),
        (np.ones((30, 0)), ValueError, r"varm\['e'\] has no features"),
    ],
)
def test_gene_embeddings_that_cannot_be_read_are_refused(rel, embedding, exc, match):
    adata = rel.small()
    adata.varm["e"] = embedding
    with pytest.raises(exc, match=match):
        SemiMechVI.setup_anndata(adata, gene_embedding_key="e")


def test_a_missing_x_and_a_falsy_layer_are_named(rel):
    adata = rel.small()
    adata.X = None
    with pytest.raises(ValueError, match=r"adata\.X is empty \(None\); pass layer="):
        SemiMechVI.setup_anndata(adata)
    with pytest.raises(TypeError, match=r"layer=0 must be the name of one layer of adata\.layers"):
        SemiMechVI.setup_anndata(rel.small(), layer=0)


def test_setup_mudata_names_a_key_of_the_wrong_type(rel):
    adata = rel.small()
    mdata = md.MuData({"rna": adata})
    with pytest.raises(TypeError, match=r"perturbation_key=1 must name obs column\(s\) of mdata\['rna'\]"):
        SemiMechVI.setup_mudata(mdata, perturbation_key=1)
