"""Nothing changed: no function modifies the user's X, layers, obs, var or obsm; results go under documented keys."""

from __future__ import annotations

import numpy as np
import pytest
import scvi

from scmech import tl
from scmech.model import SemiMechVI


def _user_data(rel, sparse: bool = True):
    adata = rel.small(sparse=sparse)
    adata.layers["counts"] = adata.X.copy()
    adata.obsm["X_user"] = np.arange(adata.n_obs * 2, dtype=np.float32).reshape(-1, 2)
    adata.varm["user_loadings"] = np.ones((adata.n_vars, 3))
    adata.uns["user"] = {"note": "mine"}
    return adata


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
def test_setup_train_predict_and_latents_leave_the_data_unchanged(rel, sparse):
    adata = _user_data(rel, sparse)
    before = rel.snapshot(adata)
    scvi.settings.seed = 0
    SemiMechVI.setup_anndata(adata, layer="counts", batch_key="batch")
    documented = {"obs": rel.REGISTRATION_OBS, "obsm": rel.REGISTRATION_OBSM, "uns": rel.REGISTRATION_UNS}
    rel.assert_unchanged(adata, before, **documented)
    # setup writes exactly the documented targets of each cell: one column per target of the largest combination
    order = max(len(str(lab).split("+")) for lab in adata.obs["perturbation"])
    assert adata.obsm["_scmech_perturbation"].shape == (adata.n_obs, order)
    model = SemiMechVI(adata, **rel.MODEL_KWARGS)
    model.train(max_epochs=1, **rel.TRAIN_KWARGS)
    rel.assert_unchanged(adata, before, **documented)
    pred = model.predict(["G0008", "G0009+G0021"])
    model.predict(["G0008"], return_mean=False, n_cells=5)
    model.get_latent_representation()
    model.get_steady_state_residual()
    model.get_basal_representation()
    rel.assert_unchanged(adata, before, **documented)
    assert pred.n_vars == adata.n_vars
    assert pred.obs_names.tolist() == ["G0008", "G0009+G0021"]


def test_query_data_are_left_unchanged(rel, model):
    query = _user_data(rel)
    before = rel.snapshot(query)
    model.get_latent_representation(query)
    model.predict(["G0008"], adata=query)
    # transferring the setup registers the query like training data, nothing else
    rel.assert_unchanged(query, before, obs=rel.REGISTRATION_OBS, obsm=rel.REGISTRATION_OBSM, uns=rel.REGISTRATION_UNS)


def test_a_failed_setup_leaves_the_data_untouched(rel):
    adata = _user_data(rel)
    before = rel.snapshot(adata)
    with pytest.raises(KeyError, match="time_key 'day'"):
        SemiMechVI.setup_anndata(adata, time_key="day")
    rel.assert_unchanged(adata, before)


def test_split_leaves_the_data_unchanged(rel):
    adata = _user_data(rel)
    before = rel.snapshot(adata)
    tl.split(adata, "perturbation", test_conditions=["G0010"])
    tl.split(adata, "batch", batch_key="batch", test_conditions=["b2"])
    list(tl.leave_one_out(adata))
    rel.assert_unchanged(adata, before)


@pytest.mark.parametrize("cls", [tl.ControlMean, tl.TrainMean, tl.Additive, tl.LinearModel])
def test_baselines_leave_the_data_unchanged(rel, cls):
    adata = _user_data(rel)
    before = rel.snapshot(adata)
    sp_ = tl.split(adata, "perturbation", test_conditions=["G0010"], restrict_to_measured=True)
    cls.setup_anndata(adata, layer="counts", batch_key="batch")
    m = cls(adata)
    m.train(datasplitter_kwargs={"external_indexing": sp_.external_indexing})
    m.predict(["G0008+G0009"] if cls is tl.Additive else sp_.test_conditions)
    rel.assert_unchanged(adata, before, obs=rel.REGISTRATION_OBS, obsm=rel.REGISTRATION_OBSM, uns=rel.REGISTRATION_UNS)


def test_evaluate_writes_only_under_its_key(rel):
    adata = _user_data(rel)
    work = rel.small()
    tl.TrainMean.setup_anndata(work)
    m = tl.TrainMean(work)
    m.train()
    pred = m.predict()
    before = rel.snapshot(adata)
    res = tl.evaluate({"TrainMean": pred}, adata, layer="counts")
    rel.assert_unchanged(adata, before)
    tl.evaluate({"TrainMean": pred}, adata, layer="counts", key_added="bench")
    rel.assert_unchanged(adata, before, uns={"scmech"})
    assert list(adata.uns["scmech"]) == ["bench"]
    assert adata.uns["scmech"]["bench"].equals(res)


def test_error_decomposition_writes_only_under_its_key(rel):
    adata = _user_data(rel)
    before = rel.snapshot(adata)
    out = tl.error_decomposition(adata, batch_key="batch", layer="counts", n_bootstrap=0, n_splits=2, copy=True)
    rel.assert_unchanged(adata, before)
    rel.assert_unchanged(out, before, uns={"scmech"})
    assert set(out.uns["scmech"]) == {"error_decomposition"}
    tl.error_decomposition(adata, batch_key="batch", layer="counts", n_bootstrap=0, n_splits=2)
    rel.assert_unchanged(adata, before, uns={"scmech"})
    assert set(adata.uns["scmech"]) == {"error_decomposition"}
