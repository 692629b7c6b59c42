"""The base of log-normalised input (``uns["log1p"]["base"]``) and the expression a value on that scale stands for."""

from __future__ import annotations

import math

import anndata as ad
import numpy as np
import pytest

from scmech.data._log_scale import expression_of, log1p_base, value_description


def _with_uns(uns: dict) -> ad.AnnData:
    adata = ad.AnnData(np.zeros((2, 2), dtype=np.float32))
    adata.uns.update(uns)
    return adata


@pytest.mark.parametrize(
    ("uns", "base"),
    [
        ({}, math.e),
        ({"log1p": {}}, math.e),  # what an .h5ad round trip leaves of {"base": None}
        ({"log1p": {"base": None}}, math.e),
        ({"log1p": {"base": 2}}, 2.0),
        ({"log1p": {"base": np.float64(10.0)}}, 10.0),
        ({"log1p": {"base": np.array(2.0)}}, 2.0),  # how h5py reads a scalar back
    ],
)
def test_the_base_is_read_as_scanpy_records_it(uns, base):
    assert log1p_base(_with_uns(uns)) == base


@pytest.mark.parametrize("bad", ["two", "2", True, 1, 0, -2.0, float("nan"), float("inf"), [2, 10]])
def test_a_broken_base_is_refused_naming_the_key_and_the_fix(bad):
    with pytest.raises(ValueError, match=r"adata\.uns\['log1p'\]\['base'\] is .*None for the natural logarithm"):
        log1p_base(_with_uns({"log1p": {"base": bad}}))


def test_a_log1p_entry_that_is_not_a_mapping_is_refused():
    with pytest.raises(ValueError, match=r"mdata\['rna'\]\.uns\['log1p'\] is a str"):
        log1p_base(_with_uns({"log1p": "natural"}), "mdata['rna']")


def test_the_expression_inverts_the_logarithm_of_its_base():
    expression = np.array([[0.0, 1.0, 7.0, 1e4]])
    for base in (math.e, 2.0, 10.0):
        values = np.log1p(expression) / math.log(base)
        np.testing.assert_allclose(expression_of(values, base), expression, rtol=1e-5)
        assert expression_of(values, base).dtype == np.float32


def test_the_value_is_described_by_its_scale():
    assert value_description(True, math.e) == "log1p(1e4 * mean normalised expression)"
    assert value_description(False, math.e).endswith("base b = e")
    assert value_description(False, 2.0).endswith("base b = 2")
    assert "no expression layer" in value_description(False, None)
