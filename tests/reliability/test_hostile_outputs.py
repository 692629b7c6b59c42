"""What scmech returns must be usable downstream: unique names, missing values as missing, backed inputs read right.

Each test failed before its fix (probes of round 6: outputs, round trips, alignment and interoperation).
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scvi

from scmech import pp, tl


def _backed(adata: ad.AnnData, path, *, sparse: bool) -> ad.AnnData:
    """``adata`` written with a sparse or dense X and opened backed (read-only)."""
    work = adata.copy()
    x = work.X.toarray() if sp.issparse(work.X) else np.asarray(work.X)
    work.X = sp.csr_matrix(x) if sparse else x
    work.write_h5ad(path)
    return ad.read_h5ad(path, backed="r")


def _roundtrip(adata: ad.AnnData, tmp_path, name: str) -> list[ad.AnnData]:
    """``adata`` written with ``write_h5ad`` and ``write_zarr`` and read back."""
    adata.write_h5ad(tmp_path / f"{name}.h5ad")
    adata.write_zarr(tmp_path / f"{name}.zarr")
    return [ad.read_h5ad(tmp_path / f"{name}.h5ad"), ad.read_zarr(tmp_path / f"{name}.zarr")]


# --- prediction outputs ---------------------------------------------------------------------------------------------


def test_cell_predictions_have_unique_names_when_a_cell_or_condition_repeats(model, rel, tmp_path):
    nt = np.flatnonzero(model.adata.obs["perturbation"].astype(str).to_numpy() == "NT")
    pred = model.predict(["G0008", "G0008"], from_cells=[nt[0], nt[0], nt[1]], return_mean=False)
    assert pred.n_obs == 6
    assert pred.obs_names.is_unique
    # the source cell of each row is still told by obs["source_cell"], in order
    src = np.asarray(model.adata.obs_names)[[nt[0], nt[0], nt[1]]]
    assert list(pred.obs["source_cell"]) == [*src, *src]
    # and rows can be selected by name (duplicated names would return several rows per name)
    assert pred[pred.obs_names[1]].n_obs == 1
    for back in _roundtrip(pred, tmp_path, "cells"):
        pd.testing.assert_frame_equal(back.obs, pred.obs)


def test_cell_predictions_from_cells_with_duplicated_names_are_unique(model):
    nt = model.adata[model.adata.obs["perturbation"].astype(str) == "NT"].copy()
    nt.obs_names = ["cell"] * nt.n_obs  # anndata allows it (with a warning)
    pred = model.predict(["G0008"], adata=nt, return_mean=False)
    assert pred.obs_names.is_unique
    assert set(pred.obs["source_cell"]) == {"cell"}


@pytest.mark.parametrize("return_mean", [True, False])
def test_predictions_without_media_have_missing_media_not_the_string_none(model, tmp_path, return_mean):
    pred = model.predict(["G0008", "NT"], return_mean=return_mean)
    assert isinstance(pred.obs["media"].dtype, pd.CategoricalDtype)
    assert pred.obs["media"].isna().all()
    assert "None" not in set(pred.obs["media"].astype(object).dropna())
    for back in _roundtrip(pred, tmp_path, f"media{return_mean}"):
        assert back.obs["media"].isna().all()
        pd.testing.assert_frame_equal(back.obs, pred.obs)


def test_prediction_provenance_with_slashes_in_labels_survives_a_round_trip(rel, tmp_path):
    """h5ad reads a "/" in a dict key as a nested group: labels are never keys of the provenance."""
    adata = rel.small()
    adata.var_names = [g.replace("G00", "G/") for g in adata.var_names]
    adata.obs["perturbation"] = adata.obs["perturbation"].astype(str).str.replace("G00", "G/")
    model = rel.trained(adata)
    pred = model.predict(["G/08", "G/09+G/21", "NOT/A_GENE"])
    assert pred.obs["anchoring"].notna().tolist() == [True, True, pred.obs["anchored"].iloc[2]]
    sources = pred.uns["scmech"]["prediction"]["target_sources"]
    for back in _roundtrip(pred, tmp_path, "slash"):
        pd.testing.assert_frame_equal(back.obs, pred.obs)
        pd.testing.assert_frame_equal(back.uns["scmech"]["prediction"]["target_sources"], sources)
    assert sources.loc["NOT/A_GENE", "source"] == "shared response"


def test_baseline_predictions_without_media_have_missing_media(rel):
    adata = rel.small()
    tl.ControlMean.setup_anndata(adata, perturbation_key="perturbation", control_label="NT")
    base = tl.ControlMean(adata)
    base.train()
    pred = base.predict(["G0008"])
    assert pred.obs["media"].isna().all()


# --- backed (on-disk) inputs read like in-memory ones ---------------------------------------------------------------


@pytest.mark.parametrize("sparse", [True, False])
def test_check_assumptions_on_backed_data_equals_in_memory(rel, tmp_path, sparse):
    adata = rel.small(n_cells=240)
    expected = tl.check_assumptions(adata.copy(), batch_key="batch", n_bootstrap=20)
    backed = _backed(adata, tmp_path / "a.h5ad", sparse=sparse)
    got = tl.check_assumptions(backed, batch_key="batch", n_bootstrap=20)
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-6)


def test_estimate_efficacy_on_backed_sparse_data_equals_in_memory(rel, tmp_path):
    adata = rel.small(n_cells=240)
    expected = tl.estimate_efficacy(adata.copy())
    got = tl.estimate_efficacy(_backed(adata, tmp_path / "e.h5ad", sparse=True))
    pd.testing.assert_series_equal(got, expected, check_exact=False, rtol=1e-6)


def test_error_decomposition_on_backed_dense_data_equals_in_memory(rel, tmp_path):
    adata = rel.small(n_cells=240)
    kw = {"batch_key": "batch", "n_splits": 3, "n_bootstrap": 10}
    expected = tl.error_decomposition(adata.copy(), **kw)
    got = tl.error_decomposition(_backed(adata, tmp_path / "d.h5ad", sparse=False), **kw)
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-6)


@pytest.mark.parametrize("sparse", [True, False])
def test_combine_prediction_with_backed_observed_equals_in_memory(model, rel, tmp_path, sparse):
    pred = model.predict(["G0008", "G0009+G0021"], return_mean=False)
    observed = rel.small(n_cells=240)
    expected = tl.combine_prediction(pred, observed.copy(), n_pcs=5)
    got = tl.combine_prediction(pred, _backed(observed, tmp_path / "o.h5ad", sparse=sparse), n_pcs=5)
    pd.testing.assert_frame_equal(got.obs, expected.obs)
    np.testing.assert_allclose(rel.dense(got.X), rel.dense(expected.X), rtol=1e-5, atol=1e-6)


def test_assign_guides_from_a_backed_guide_anndata_equals_in_memory(tmp_path):
    rng = np.random.default_rng(0)
    n, guides = 60, ["Ag1", "Bg1", "NTg1"]
    counts = rng.poisson(0.2, size=(n, len(guides)))
    counts[np.arange(n), np.arange(n) % len(guides)] += 20
    cells = [f"c{i}" for i in range(n)]
    gdata = ad.AnnData(
        X=sp.csr_matrix(counts.astype(np.int32)),
        obs=pd.DataFrame(index=cells),
        var=pd.DataFrame({"target": ["A", "B", "non-targeting"]}, index=guides),
    )
    rna = ad.AnnData(X=np.ones((n, 2), dtype=np.float32), obs=pd.DataFrame(index=cells[::-1]))
    expected = pp.assign_guides(gdata.copy(), rna=rna.copy(), inplace=False)
    gdata.write_h5ad(tmp_path / "g.h5ad")
    got = pp.assign_guides(ad.read_h5ad(tmp_path / "g.h5ad", backed="r"), rna=rna.copy(), inplace=False)
    pd.testing.assert_frame_equal(got, expected)
    # aligned by name: the RNA cells are in reverse order
    assert got.loc["c1", "scmech_perturbation"] == "B"
    assert got.loc["c2", "scmech_perturbation"] == "NT"


@pytest.fixture(autouse=True)
def _seed():
    scvi.settings.seed = 0


@pytest.mark.parametrize("sparse", [True, False])
def test_backed_rows_come_back_in_the_requested_order(model, tmp_path, sparse):
    # scvi-tools sorts each minibatch of backed data; the rows must still follow the indices asked for
    backed = _backed(model.adata, tmp_path / "q.h5ad", sparse=sparse)
    full = model.get_latent_representation()
    for idx in ([5, 1, 3], [7, 7, 2, 9, 0]):
        np.testing.assert_allclose(model.get_latent_representation(backed, indices=idx), full[idx], atol=1e-5)
    nt = np.flatnonzero(model.adata.obs["perturbation"].astype(str).to_numpy() == "NT")
    cells = [nt[2], nt[0], nt[1], nt[0]]
    in_memory = model.predict("G0008", from_cells=cells, return_mean=False, anchor="none")
    on_disk = model.predict("G0008", adata=backed, from_cells=cells, return_mean=False, anchor="none")
    assert list(on_disk.obs["source_cell"]) == list(in_memory.obs["source_cell"])
    np.testing.assert_allclose(_dense(on_disk.X), _dense(in_memory.X), atol=1e-5)


def _dense(x) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)
