"""Hostile input to the data layer and the bundled dataset: flags, near-integer counts, an empty pseudobulk."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scmech
from scmech.data import get_design, pseudobulk, simulate_perturbseq
from scmech.data._checks import check_expression, check_flag


@pytest.fixture(scope="module")
def sim():
    return simulate_perturbseq(n_cells=600, n_genes=40, n_perturbations=6, n_combinations=2, seed=0)


# ---------------------------------------------------------------------------------------------- flags (D8)


@pytest.mark.parametrize("value", ["no", "False", 0, 1, None, [True]])
def test_check_flag_refuses_anything_but_a_bool(value):
    with pytest.raises(TypeError, match=rf"^flag={re.escape(repr(value))} must be True or False\.$"):
        check_flag(value, "flag")


@pytest.mark.parametrize("value", [True, False, np.True_, np.False_])
def test_check_flag_returns_python_bools(value):
    out = check_flag(value, "flag")
    assert out is bool(value)


def test_get_design_refuses_a_string_warn_missing_controls(sim):
    # "no" read as truthy: the warnings stayed on
    with pytest.raises(TypeError, match=r"warn_missing_controls='no' must be True or False"):
        get_design(sim, warn_missing_controls="no")
    with pytest.raises(TypeError, match=r"warn_missing_controls=0 must be True or False"):
        get_design(sim, warn_missing_controls=0)


def test_get_design_warn_missing_controls_false_still_silences_the_warning(sim):
    adata = sim.copy()
    adata.obs["batch"] = np.where(adata.obs["perturbation"].astype(str) == "NT", "b0", "b1")
    with pytest.warns(UserWarning, match="control"):
        get_design(adata, batch_key="batch")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        design = get_design(adata, batch_key="batch", warn_missing_controls=np.False_)
    assert design.batch is not None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"as_mudata": "no"}, r"as_mudata='no' must be True or False"),
        ({"check_integrity": 0}, r"check_integrity=0 must be True or False"),
        ({"check_integrity": "yes"}, r"check_integrity='yes' must be True or False"),
    ],
)
def test_papalexi2021_refuses_non_bool_flags(kwargs, match):
    # as_mudata="no" returned a MuData; check_integrity=0 skipped the check silently
    with pytest.raises(TypeError, match=match):
        scmech.datasets.papalexi2021(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"counts": "no"}, r"counts='no' must be True or False"),
        ({"allow_empty": 1}, r"allow_empty=1 must be True or False"),
    ],
)
def test_pseudobulk_refuses_non_bool_flags(sim, kwargs, match):
    with pytest.raises(TypeError, match=match):
        pseudobulk(sim, "perturbation", **kwargs)


# ------------------------------------------------------------------------------- near-integer counts (D10)


@pytest.mark.parametrize("dense", [False, True])
def test_near_integer_float32_counts_show_their_fraction(sim, dense):
    x = sim.X * 1.0000001  # float32 counts such as 213.00002, off by rounding
    assert x.dtype == np.float32
    x = x.toarray() if dense else x
    # the example used to print as "213" (format :g), which looks like an integer
    with pytest.raises(ValueError, match=r"holds non-integer values \(e\.g\. \d+\.\d*[1-9]\d*\)") as info:
        check_expression(x, "adata.X")
    example = float(str(info.value).split("(e.g. ")[1].split(")")[0])
    assert example != round(example)
    assert "within" in str(info.value)
    assert "np.rint" in str(info.value)


def test_setup_shows_the_fraction_of_near_integer_counts(sim):
    from scmech.model import SemiMechVI

    adata = sim.copy()
    adata.X = adata.X * 1.0000001
    first = adata.X.data[np.abs(adata.X.data - np.round(adata.X.data)) > 1e-6][0]
    with pytest.raises(ValueError, match=rf"adata\.X holds non-integer values \(e\.g\. {str(first)}\)"):
        SemiMechVI.setup_anndata(adata, perturbation_key="perturbation")


def test_clearly_fractional_values_keep_their_message_without_the_rounding_hint():
    x = sp.csr_matrix(np.array([[1.0, 2.5], [0.25, 3.0]], dtype=np.float32))
    with pytest.raises(ValueError, match=r"non-integer values \(e\.g\. 2\.5\)") as info:
        check_expression(x, "adata.X")
    assert "np.rint" not in str(info.value)


# ------------------------------------------------------------------------------------ empty pseudobulk (D11)


def test_pseudobulk_refuses_a_min_cells_that_no_group_reaches(sim):
    largest = int(sim.obs["perturbation"].value_counts().max())
    assert largest < 1000
    with pytest.raises(
        ValueError, match=rf"min_cells=1000 leaves no group .*the largest group \('.+'\) has {largest} cells"
    ):
        pseudobulk(sim, "perturbation", min_cells=1000)
    # at the largest group's size, the groups of that size come back
    table = pseudobulk(sim, "perturbation", min_cells=largest)
    sizes = sim.obs["perturbation"].astype(str).value_counts()
    assert table.index.tolist() == sorted(sizes.index[sizes == largest])


def test_pseudobulk_min_cells_leaves_out_small_groups_only(sim):
    labels = np.where(np.arange(sim.n_obs) < 3, "tiny", "big")
    table = pseudobulk(sim, labels, min_cells=5)
    assert table.index.tolist() == ["big"]
    assert isinstance(table, pd.DataFrame)
    assert np.isfinite(table.to_numpy()).all()


def test_simulation_and_label_helpers_name_wrong_arguments():
    adata = scmech.data.simulate_perturbseq(200, 20, n_perturbations=3, n_combinations=0, seed=0)
    with pytest.raises(TypeError, match=r"obs must be the DataFrame adata.obs of a simulation, got AnnData"):
        scmech.data.simulation_group_keys(adata)
    net = scmech.data.SimulatedNetwork.from_truth(adata.uns["truth"])
    with pytest.raises(ValueError, match=r"efficacy=2.0 is out of range; expected values in \[0, 1\]"):
        net.perturbation_factor(2.0)  # a production factor of -1
    with pytest.raises(ValueError, match=r"x0 has shape \(5,\); pass one state per gene, shape \(20,\)"):
        net.integrate(np.zeros(5), [0.0, 1.0])
    with pytest.raises(TypeError, match=r"truth must be the dict adata.uns\['truth'\] of simulate_perturbseq"):
        scmech.data.SimulatedNetwork.from_truth(None)
    with pytest.raises(TypeError, match=r"is bytes, not text; decode it first"):
        scmech.data.parse_condition(b"A")
    with pytest.raises(TypeError, match=r"require_control='no' must be True or False"):
        scmech.data.parse_perturbations(["NT", "A"], require_control="no")
