"""Tests of :class:`scmech.model.SemiMechVI`: registration, training, prediction and input validation."""

from __future__ import annotations

import contextlib
import io

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scvi
import torch

import scmech
from scmech.data import pseudobulk, simulate_perturbseq, simulation_group_keys
from scmech.model import SemiMechVI
from scmech.model._anchoring import log_pseudobulk as _log_pseudobulk
from scmech.model._weights import shrinkage as _shrinkage
from scmech.model._weights import sure_translation
from scmech.train import SemiMechTrainingPlan

from .conftest import tiny_model_without

EXTRA_HISTORY = ("ss_residual_train", "mmd_train", "basal_leak_train", "basal_sd_train", "fp_unconverged_train")
#: the obs columns SemiMechVI's predictions add after the shared ones (the ``prediction_obs`` fixture)
PRED_OBS_OWN = [
    "target_source",
    "steady_state_residual",
    "own_gene_change",
    "own_gene_sd",
    "anchored",
    "anchoring",
    "anchor_weight",
    "amplitude",
]


def _printed(obj) -> str:
    """What ``print(obj)`` shows (scvi-tools models print their summary with rich), whitespace collapsed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print(obj)
    return " ".join(out.getvalue().split())


def _dense(adata: ad.AnnData) -> np.ndarray:
    return adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)


# ================================================================================================ registration
def test_setup_anndata_registers_the_design(small_adata, model_kwargs):
    adata = small_adata
    SemiMechVI.setup_anndata(adata, batch_key="batch")
    targets = sorted({t for lab in adata.obs["perturbation"] if lab != "NT" for t in lab.split("+")})
    # the targets of each cell, as positions in the target list (-1 padding; at most 2 targets per cell here)
    entries = adata.obsm["_scmech_perturbation"]
    assert entries.shape == (adata.n_obs, max(len(lab.split("+")) for lab in adata.obs["perturbation"]))
    for lab, row in zip(adata.obs["perturbation"], entries, strict=True):
        got = sorted(targets[int(i)] for i in row if i >= 0)
        assert got == ([] if lab == "NT" else sorted(lab.split("+")))
    model = SemiMechVI(adata, **model_kwargs)
    st = model.adata_manager.get_state_registry("perturbation")
    assert list(st["targets"]) == targets
    assert st["control_label"] == "NT"
    assert model.summary_stats.n_targets == len(targets)
    assert model.summary_stats.n_batch == 3
    text = _printed(model)
    assert "steady_state regime, fixed_point read-out" in text
    assert f"{len(targets)} targets, 3 batches" in text
    # scvi-tools 1.4.2 calls rich.pretty.pprint without importing rich.pretty (upstream bug, not scmech's)
    import rich.pretty  # noqa: F401

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        model.view_anndata_setup()
    printed = out.getvalue()
    assert "Perturbation state registry" in printed
    assert "_scmech_perturbation" in printed


def test_regime_auto_is_dynamic_iff_a_time_key_is_registered(make_adata, model_kwargs):
    dyn = make_adata("dynamic", n_cells=120)
    SemiMechVI.setup_anndata(dyn, batch_key="batch", time_key="time", media_key="media", media_time_key="media_time")
    model = SemiMechVI(dyn, **model_kwargs)
    assert model.regime == "dynamic"
    assert model.module.regime == "dynamic"
    assert model.module.readout == "flow"
    assert "dynamic regime, flow read-out" in _printed(model)
    assert "2 media" in _printed(model)
    # same cells without the time key: steady state
    dyn2 = make_adata("dynamic", n_cells=120)
    SemiMechVI.setup_anndata(dyn2, batch_key="batch", media_key="media")
    model = SemiMechVI(dyn2, **model_kwargs)
    assert model.regime == "steady_state"
    assert model.module.regime == "steady_state"


@pytest.mark.parametrize(
    ("weight", "readout", "expected"),
    [
        (1.0, "auto", "fixed_point"),
        (0.5, "auto", "fixed_point"),
        (0.0, "auto", "flow"),
        (0.0, "fixed_point", "fixed_point"),
        (1.0, "flow", "flow"),
    ],
)
def test_readout_auto_follows_the_steady_state_weight(small_adata, model_kwargs, weight, readout, expected):
    SemiMechVI.setup_anndata(small_adata)
    model = SemiMechVI(small_adata, steady_state_weight=weight, readout=readout, **model_kwargs)
    assert model.module.readout == expected
    assert model.module.steady_state_weight == weight
    assert f"{expected} read-out" in _printed(model)


# ================================================================================================ training
def test_history_has_the_extra_metrics(steady):
    hist = steady.model.history
    for key in ("elbo_train", "reconstruction_loss_train", "kl_local_train", *EXTRA_HISTORY):
        assert key in hist, key
        assert len(hist[key]) == 2, key
        assert np.isfinite(hist[key].to_numpy(dtype=float)).all(), key
    # validation metrics are logged too (the fixture validates every epoch)
    assert "elbo_validation" in hist
    assert "ss_residual_validation" in hist
    assert steady.model.is_trained_


def test_training_excludes_unassigned_cells_and_follows_external_indexing(steady):
    model, external = steady.model, steady.external
    train = np.asarray(model.train_indices)
    assert len(np.intersect1d(train, steady.unassigned)) == 0
    assert len(np.intersect1d(np.asarray(model.validation_indices), steady.unassigned)) == 0
    # exactly the given training cells minus the unassigned ones
    np.testing.assert_array_equal(np.sort(train), np.setdiff1d(external[0], steady.unassigned))
    np.testing.assert_array_equal(
        np.sort(np.asarray(model.validation_indices)), np.setdiff1d(external[1], steady.unassigned)
    )
    # (not vacuous: unassigned cells were listed for training)
    assert len(np.intersect1d(external[0], steady.unassigned)) > 0
    held = np.flatnonzero(steady.adata.obs["perturbation"].to_numpy() == steady.heldout_target)
    assert len(np.intersect1d(train, held)) == 0
    # the held-out target is registered but has no training cells
    assert steady.heldout_target in model.adata_manager.get_state_registry("perturbation")["targets"]
    assert steady.heldout_target not in model.trained_targets_


def test_default_split_never_trains_on_unassigned_cells(small_adata, model_kwargs, train_kwargs):
    labels = small_adata.obs["perturbation"].to_numpy().copy()
    unassigned = np.flatnonzero(labels != "NT")[:10]
    labels[unassigned] = "unassigned"
    small_adata.obs["perturbation"] = labels
    SemiMechVI.setup_anndata(small_adata)
    model = SemiMechVI(small_adata, **model_kwargs)
    model.train(max_epochs=1, **train_kwargs)
    fitted = np.concatenate([model.train_indices, model.validation_indices])
    assert len(np.intersect1d(fitted, unassigned)) == 0
    assert len(fitted) == small_adata.n_obs - len(unassigned)
    np.testing.assert_array_equal(np.sort(model.test_indices), np.sort(unassigned))


class _RecordingPlan(SemiMechTrainingPlan):
    seen: list[dict] = []

    def __init__(self, module, **kwargs):
        type(self).seen.append(dict(kwargs))
        super().__init__(module, **kwargs)


@pytest.mark.parametrize(("max_epochs", "expected"), [(1, 1), (4, 1), (8, 2)])
def test_kl_warmup_defaults_to_a_quarter_of_max_epochs(
    small_adata, model_kwargs, train_kwargs, monkeypatch, max_epochs, expected
):
    monkeypatch.setattr(SemiMechVI, "_training_plan_cls", _RecordingPlan)
    _RecordingPlan.seen = []
    SemiMechVI.setup_anndata(small_adata)
    model = SemiMechVI(small_adata, **model_kwargs)
    model.train(max_epochs=max_epochs, **train_kwargs)
    assert _RecordingPlan.seen[-1]["n_epochs_kl_warmup"] == expected
    kl = model.history["kl_weight"]["kl_weight"].to_numpy(dtype=float)
    np.testing.assert_allclose(kl, np.minimum(1.0, np.arange(max_epochs) / expected), atol=1e-6)


def test_kl_warmup_can_be_overridden(small_adata, model_kwargs, train_kwargs, monkeypatch):
    monkeypatch.setattr(SemiMechVI, "_training_plan_cls", _RecordingPlan)
    _RecordingPlan.seen = []
    SemiMechVI.setup_anndata(small_adata)
    model = SemiMechVI(small_adata, **model_kwargs)
    model.train(max_epochs=2, plan_kwargs={"n_epochs_kl_warmup": 10, "ss_weight": 0.5}, **train_kwargs)
    assert _RecordingPlan.seen[-1]["n_epochs_kl_warmup"] == 10
    assert _RecordingPlan.seen[-1]["ss_weight"] == 0.5
    _RecordingPlan.seen = []
    model.train(max_epochs=2, plan_kwargs={"n_steps_kl_warmup": 5}, **train_kwargs)
    assert "n_epochs_kl_warmup" not in _RecordingPlan.seen[-1]


def test_training_again_runs_in_training_mode(small_adata, model_kwargs, train_kwargs, monkeypatch):
    from scmech.module import SemiMechVAE

    SemiMechVI.setup_anndata(small_adata)
    model = SemiMechVI(small_adata, **model_kwargs)
    model.train(max_epochs=1, **train_kwargs)
    modes = []
    original = SemiMechVAE.loss

    def recording_loss(self, *args, **kwargs):
        if torch.is_grad_enabled():  # training steps; validation steps run in eval mode under no_grad
            modes.append(self.training)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SemiMechVAE, "loss", recording_loss)
    model.train(max_epochs=1, **train_kwargs)
    assert modes
    assert all(modes)


def test_external_indexing_out_of_range_raises(small_adata, model_kwargs, train_kwargs):
    SemiMechVI.setup_anndata(small_adata)
    model = SemiMechVI(small_adata, **model_kwargs)
    with pytest.raises(ValueError, match="external_indexing holds indices outside 0..119"):
        model.train(max_epochs=1, datasplitter_kwargs={"external_indexing": [np.arange(10), np.array([500])]})


def test_training_on_unassigned_cells_only_raises(small_adata, model_kwargs):
    labels = small_adata.obs["perturbation"].to_numpy().copy()
    un = np.flatnonzero(labels != "NT")[:20]
    labels[un] = "unassigned"
    small_adata.obs["perturbation"] = labels
    SemiMechVI.setup_anndata(small_adata)
    model = SemiMechVI(small_adata, **model_kwargs)
    rest = np.setdiff1d(np.arange(small_adata.n_obs), un)
    with pytest.raises(ValueError, match="No cells to train on"):
        model.train(max_epochs=1, datasplitter_kwargs={"external_indexing": [un, rest[:5], rest[5:]]})


@pytest.mark.parametrize("train_size", [0.0, 1.5])
def test_bad_train_size_raises(small_adata, model_kwargs, train_size):
    SemiMechVI.setup_anndata(small_adata)
    model = SemiMechVI(small_adata, **model_kwargs)
    with pytest.raises(ValueError, match=r"train_size must be in \(0, 1\]"):
        model.train(max_epochs=1, train_size=train_size)


def test_untrained_model_refuses_to_predict(small_adata, model_kwargs):
    SemiMechVI.setup_anndata(small_adata)
    model = SemiMechVI(small_adata, **model_kwargs)
    with pytest.raises(RuntimeError, match="Please train the model first"):
        model.predict()


# ================================================================================================ predict
def test_predict_layout(steady, prediction_obs):
    model, adata = steady.model, steady.adata
    pred = model.predict(["NT", "G0008", "G0009+G0021"])
    assert isinstance(pred, ad.AnnData)
    assert pred.shape == (3, adata.n_vars)
    assert list(pred.var_names) == list(adata.var_names)
    assert list(pred.obs_names) == ["NT", "G0008", "G0009+G0021"]
    assert list(pred.obs.columns) == [*prediction_obs, *PRED_OBS_OWN]
    assert list(pred.obs["perturbation"]) == ["NT", "G0008", "G0009+G0021"]
    assert isinstance(pred.obs["perturbation"].dtype, pd.CategoricalDtype)
    assert pred.obs["time"].isna().all()
    assert pred.obs["media_time"].isna().all()
    assert (pred.obs["batch"] == "source cells").all()
    # the training controls start the counterfactuals (validation and held-out controls never do)
    is_ctrl = (adata.obs["perturbation"] == "NT").to_numpy()
    n_ctrl = int(is_ctrl[np.asarray(model.train_indices)].sum())
    assert 0 < n_ctrl < int(is_ctrl.sum())
    assert (pred.obs["n_cells"] == n_ctrl).all()
    assert pred.X.dtype == np.float32
    assert set(pred.layers) == {"expression"}
    assert "X_scmech" not in pred.obsm
    prov = pred.uns["scmech"]["prediction"]
    assert prov["model"] == "SemiMechVI"
    assert prov["regime"] == "steady_state"
    assert prov["readout"] == "fixed_point"
    assert prov["n_starting_cells"] == n_ctrl
    assert prov["starting_cells"] == "training controls"
    assert prov["random_state"] == 0
    # all registered conditions by default
    everything = model.predict()
    assert list(everything.obs["perturbation"]) == list(
        model.adata_manager.get_state_registry("perturbation")["conditions"]
    )


def test_predict_x_is_log1p_of_normalised_expression(steady):
    anchored = steady.model.predict(["NT", "G0008", "G0021"])
    np.testing.assert_allclose(np.expm1(anchored.X), anchored.layers["expression"], rtol=1e-5, atol=1e-4)
    pred = steady.model.predict(["NT", "G0008", "G0021"], anchor="none")
    expr = pred.layers["expression"]
    np.testing.assert_allclose(np.expm1(pred.X), expr, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(expr.sum(1), 1e4, rtol=1e-4)
    assert (expr > 0).all()
    # predictions of different perturbations differ
    assert np.abs(pred.X[0] - pred.X[1]).max() > 1e-5


def test_predict_is_deterministic_for_a_fixed_random_state(steady):
    model = steady.model
    a = model.predict(["G0008", "G0009"], n_cells=8, random_state=3, return_mean=False)
    b = model.predict(["G0008", "G0009"], n_cells=8, random_state=3, return_mean=False)
    np.testing.assert_array_equal(a.X, b.X)
    pd.testing.assert_frame_equal(a.obs, b.obs)
    c = model.predict(["G0008", "G0009"], n_cells=8, random_state=4, return_mean=False)
    assert set(a.obs["source_cell"]) != set(c.obs["source_cell"])
    assert a.uns["scmech"]["prediction"]["random_state"] == 3
    # random_state=None falls back to scvi.settings.seed
    scvi.settings.seed = 3
    d = model.predict(["G0008", "G0009"], n_cells=8, return_mean=False)
    np.testing.assert_array_equal(a.X, d.X)


def test_predict_per_cell(steady):
    model, adata = steady.model, steady.adata
    conds = ["NT", "G0008", "G0009+G0021"]
    per_cell = model.predict(conds, n_cells=10, return_mean=False, random_state=1)
    assert per_cell.n_obs == len(conds) * 10
    assert per_cell.obsm["X_scmech"].shape == (30, model.module.n_latent)
    assert per_cell.obs_names.is_unique
    assert set(per_cell.obs["source_cell"]) <= set(adata.obs_names)
    assert (adata.obs.loc[per_cell.obs["source_cell"], "perturbation"] == "NT").all()
    np.testing.assert_array_equal(
        per_cell.obs["source_cell"].to_numpy()[:10], per_cell.obs["source_cell"].to_numpy()[10:20]
    )
    # the mean over counterfactual cells is the condition-level prediction
    mean = model.predict(conds, n_cells=10, random_state=1, anchor="none")
    for k, cond in enumerate(conds):
        rows = per_cell.obs["perturbation"] == cond
        np.testing.assert_allclose(per_cell.layers["expression"][rows].mean(0), mean.layers["expression"][k], rtol=1e-4)
    # counterfactual latents: the basal state plus the read-out of the requested protocol
    z = per_cell.obsm["X_scmech"]
    shift = z[10:20] - z[:10]
    np.testing.assert_allclose(shift, np.broadcast_to(shift[0], shift.shape), atol=1e-5)


def test_control_counterfactual_of_a_control_cell_is_its_own_reconstruction(steady):
    model, adata = steady.model, steady.adata
    ctrl = np.flatnonzero(adata.obs["perturbation"].to_numpy() == "NT")[:6]
    pred = model.predict("NT", from_cells=ctrl, return_mean=False)
    latent = model.get_latent_representation(indices=ctrl)
    np.testing.assert_allclose(pred.obsm["X_scmech"], latent, rtol=1e-4, atol=1e-5)
    batch = torch.as_tensor(adata.obs["_scvi_batch"].to_numpy()[ctrl])[:, None]
    with torch.no_grad():
        logits = model.module.decoder.logits(torch.as_tensor(latent), batch, None)
        expected = 1e4 * torch.softmax(logits, -1).numpy()
    np.testing.assert_allclose(pred.layers["expression"], expected, rtol=1e-4, atol=1e-4)


def test_predict_from_cells_accepts_indices_and_masks(steady):
    model, adata = steady.model, steady.adata
    idx = np.array([0, 5, 9])
    mask = np.zeros(adata.n_obs, dtype=bool)
    mask[idx] = True
    a = model.predict("G0008", from_cells=idx)
    b = model.predict("G0008", from_cells=mask)
    np.testing.assert_array_equal(a.X, b.X)
    assert a.obs["n_cells"].iloc[0] == 3
    assert a.uns["scmech"]["prediction"]["starting_cells"] == "user"
    with pytest.raises(ValueError, match="from_cells must index cells of adata"):
        model.predict("G0008", from_cells=[adata.n_obs])
    with pytest.raises(ValueError, match="from_cells is a mask of length 3"):
        model.predict("G0008", from_cells=np.array([True, False, True]))


def test_predict_unseen_combination_of_seen_singles(steady):
    model = steady.model
    pred = model.predict(["G0008+G0021", "G0021+G0008", "G0008", "G0021"])
    assert list(pred.obs["perturbation"])[:2] == ["G0008+G0021", "G0008+G0021"]  # canonical label
    assert (pred.obs["unseen_targets"] == "").all()
    np.testing.assert_array_equal(pred.X[0], pred.X[1])
    assert np.abs(pred.X[0] - pred.X[2]).max() > 1e-6
    assert np.abs(pred.X[0] - pred.X[3]).max() > 1e-6
    assert pred.uns["scmech"]["prediction"]["unseen_targets"] == []


def test_predict_target_held_out_of_training_is_marked_unseen(steady):
    model, held = steady.model, steady.heldout_target
    pred = model.predict([held, "G0008", f"G0008+{held}"])
    assert list(pred.obs["unseen_targets"]) == [held, "", held]
    assert pred.uns["scmech"]["prediction"]["unseen_targets"] == [held]
    summary = pred.uns["scmech"]["prediction"]["target_map"]
    tm = model.target_map_
    assert summary["embedding"] == "training pseudobulk PCA"
    # the map is reported as used only when it passed its validations
    assert summary["embedding_map_kept"] is (tm.coef is not None)
    assert summary["propagation_gain"] == tm.gain
    assert summary["training_targets"] == len(tm.trained)
    assert np.isfinite(pred.X).all()
    # its prediction comes from the gene-embedding map, not from its (untrained) operator
    assert np.abs(pred.X[0] - model.predict("NT").X[0]).max() > 1e-6


def test_predict_new_target_that_is_a_gene(steady):
    model, adata = steady.model, steady.adata
    registered = set(model.adata_manager.get_state_registry("perturbation")["targets"])
    new = next(g for g in adata.var_names if g not in registered)
    pred = model.predict([new, f"G0008+{new}"])
    assert list(pred.obs["unseen_targets"]) == [new, new]
    assert np.isfinite(pred.X).all()


def test_predict_unknown_target_that_is_not_a_gene_gets_the_shared_response(steady):
    """A target with no training cells and no measured gene is predicted (never a KeyError) and flagged."""
    model = steady.model
    pred = model.predict(["NOT_A_GENE", "OTHER_UNKNOWN", "G0008+NOT_A_GENE"], anchor="none")
    assert list(pred.obs["target_source"]) == ["shared response"] * 3
    assert pred.uns["scmech"]["prediction"]["target_sources"]["source"].to_dict() == {
        "NOT_A_GENE": "shared response",
        "OTHER_UNKNOWN": "shared response",
    }
    assert np.isfinite(pred.X).all()
    # two unknown targets are the same guess: the mean operator of the training targets, no own gene (equal up to
    # the rounding of the single-precision mean over starting cells, which depends on a row's position)
    np.testing.assert_allclose(pred.X[0], pred.X[1], rtol=1e-6, atol=0)
    tm = model.target_map_
    ops, own, source = tm.operators(["NOT_A_GENE"])
    np.testing.assert_allclose(ops[0], tm.operator_all)
    assert own[0] == 0.0
    assert source == ["shared response"]
    trained_ops = model.module.field.operators.detach().numpy()
    pos = {t: i for i, t in enumerate(model.adata_manager.get_state_registry("perturbation")["targets"])}
    np.testing.assert_allclose(tm.operator_all, trained_ops[[pos[t] for t in tm.trained]].mean(0), rtol=1e-5, atol=1e-6)
    # it differs from the control: the shared response of perturbed cells
    assert np.abs(pred.X[0] - model.predict("NT", anchor="none").X[0]).max() > 1e-6


def test_predict_unknown_medium_or_batch_raises(steady, dynamic):
    with pytest.raises(KeyError, match=r"Medium 'm1' was not seen in training \(media: none registered\)"):
        steady.model.predict("G0008", media="m1")
    with pytest.raises(KeyError, match=r"Medium 'm7' was not seen in training \(media: \['m0', 'm1'\]\)"):
        dynamic.model.predict("G0008", media="m7", time=1.0)
    with pytest.raises(KeyError, match=r"Batch 'b9' was not seen in training \(batches: \['b0', 'b1', 'b2'\]\)"):
        steady.model.predict("G0008", batch="b9")


def test_predict_in_a_medium_without_training_cells_raises():
    # its embedding was never trained: the control row read an untrained medium and a perturbation was "carried"
    # there without a single perturbation observed in both media
    adata = simulate_perturbseq(240, 30, n_perturbations=4, n_combinations=0, seed=0, n_media=2)
    adata.obs["perturbation"] = adata.obs["perturbation"].astype(str)
    SemiMechVI.setup_anndata(adata, batch_key="batch", media_key="media")
    held = np.flatnonzero(adata.obs["media"].astype(str).to_numpy() == "m1")
    model, _ = tiny_model_without(adata, held, max_epochs=1)
    for call, what in (
        (lambda: model.predict(["NT"], media="m1"), "predict"),
        (lambda: model.get_regulatory_network(media="m1"), "the network"),
    ):
        with pytest.raises(
            KeyError,
            match=rf"Medium 'm1' has no training cells \(media with training cells: \['m0'\]\).*so {what} there",
        ):
            call()
    assert np.isfinite(model.predict(["NT"], media="m0").X).all()


def test_predict_in_a_given_batch(steady):
    # too few controls per batch in this small screen to move the observations to one batch: the prediction is
    # anchored in each cell's own batch and moved to the requested one by the model's batch effect
    model = steady.model
    conds = ["NT", "G0008", steady.heldout_target]
    b0 = model.predict(conds, batch="b0")
    b1 = model.predict(conds, batch="b1")
    assert b0.obs["batch"].iloc[0] == "b0"
    assert np.abs(b0.X - b1.X).max() > 0
    assert model.anchor_.in_batch(0) is None
    assert b0.obs["anchored"].all()
    assert b0.uns["scmech"]["prediction"]["batch_anchoring"] == "model's batch effect on the anchored prediction"
    own = model.predict(conds)
    for pred in (b0, b1):
        batch = pred.obs["batch"].iloc[0]
        alone = model.predict(conds, batch=batch, anchor="none").X
        np.testing.assert_allclose(pred.X - alone, own.X - model.predict(conds, anchor="none").X, atol=1e-5)
    # observations without batch levels (a model saved before they were kept) take the same way
    from dataclasses import replace

    saved = model.anchor_
    try:
        model.anchor_ = replace(saved, batch_levels={}, batch_mix={})
        with pytest.raises(ValueError, match="hold no per-batch control levels"):
            model.anchor_.in_batch(0)
        np.testing.assert_allclose(model.predict(conds, batch="b0").X, b0.X, atol=1e-6)
    finally:
        model.anchor_ = saved


def test_time_is_refused_by_a_steady_state_model(steady):
    with pytest.raises(ValueError, match="`time` applies to dynamic models"):
        steady.model.predict("G0008", time=1.0)


def test_predict_with_mismatched_lengths_raises(steady):
    with pytest.raises(ValueError, match="`media` has 3 values for 2 perturbations"):
        steady.model.predict(["G0008", "G0009"], media=["m0", "m0", "m0"])


def test_duplicated_conditions_get_unique_row_names(steady):
    pred = steady.model.predict(["G0008", "G0008"])
    assert list(pred.obs_names) == ["G0008#0", "G0008#1"]
    np.testing.assert_array_equal(pred.X[0], pred.X[1])


@pytest.mark.parametrize(
    "kwargs",
    [{"perturbations": "G0008", "media_time": 1.0}, {"protocol": [("perturb", "G0008"), ("wait", 3.0)]}],
)
def test_steady_state_model_refuses_timed_protocols(steady, kwargs):
    with pytest.raises(ValueError, match="dynamic"):
        steady.model.predict(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"perturbations": []}, "perturbation"), ({"n_cells": 0}, "n_cells"), ({"efficacy": 2.0}, "efficacy")],
)
def test_predict_validates_its_arguments(steady, kwargs, match):
    kwargs = {"perturbations": "G0008", **kwargs}
    with pytest.raises(ValueError, match=match):
        steady.model.predict(**kwargs)


def test_dynamic_model_needs_a_time(dynamic):
    with pytest.raises(ValueError, match="The model is dynamic: give the read-out `time`"):
        dynamic.model.predict("G0008")
    with pytest.raises(ValueError, match=r"time=-1.0 must be finite and >= 0"):
        dynamic.model.predict("G0008", time=-1.0)
    with pytest.raises(TypeError, match=r"time='2' must be a number"):
        dynamic.model.predict("G0008", time="2")
    with pytest.raises(TypeError, match=r"media_time='0.5' must be a number"):
        dynamic.model.predict("G0008", time=2.0, media="m1", media_time="0.5")
    # an infinite switch time never switches: the row would be labelled m1 and read out in m0
    for never in (np.inf, -np.inf):
        with pytest.raises(ValueError, match=r"media_time=-?inf for 'G0008' is infinite.*or None \(NaN\)"):
            dynamic.model.predict("G0008", time=2.0, media="m1", media_time=never)


def test_dynamic_predictions_depend_on_time_and_media(dynamic):
    model = dynamic.model
    pred = model.predict(["G0008", "G0008", "G0008"], time=[0.5, 2.0, 2.0], media=["m0", "m0", "m1"])
    assert list(pred.obs["time"]) == [0.5, 2.0, 2.0]
    assert list(pred.obs["media"]) == ["m0", "m0", "m1"]
    assert list(pred.obs_names) == ["G0008|m0|0.5", "G0008|m0|2", "G0008|m1|2"]
    assert pred.uns["scmech"]["prediction"]["regime"] == "dynamic"
    assert np.abs(pred.X[0] - pred.X[1]).max() > 1e-6
    assert np.abs(pred.X[1] - pred.X[2]).max() > 1e-6


def test_protocol_prediction_on_a_dynamic_model(dynamic):
    model = dynamic.model
    pred = model.predict(protocol=[("perturb", "G0008"), ("media", "m1"), ("wait", 2.0)])
    assert pred.n_obs == 1
    row = pred.obs.iloc[0]
    assert (row["perturbation"], row["media"], row["time"], row["media_time"]) == ("G0008", "m1", 2.0, 0.0)
    # a protocol is the same prediction as its perturbation/media/time/media_time description
    via_steps = model.predict(protocol=[("perturb", "G0008"), ("wait", 1.0), ("media", "m1"), ("wait", 1.0)])
    via_args = model.predict("G0008", media="m1", time=2.0, media_time=1.0)
    np.testing.assert_array_equal(via_steps.X, via_args.X)
    # several protocols at once
    two = model.predict(
        protocol=[
            [("media", "m1"), ("wait", 1.0), ("perturb", "G0008"), ("wait", 1.0)],
            [("perturb", "G0008"), ("wait", 1.0), ("media", "m1"), ("wait", 1.0)],
        ]
    )
    assert list(two.obs["media_time"]) == [-1.0, 1.0]
    assert list(two.obs["time"]) == [1.0, 2.0]
    assert two.obs_names.is_unique


def test_protocol_order_matters(dynamic):
    model = dynamic.model
    media_first = model.predict(protocol=[("media", "m1"), ("wait", 1.0), ("perturb", "G0008"), ("wait", 1.0)])
    pert_first = model.predict(protocol=[("perturb", "G0008"), ("wait", 1.0), ("media", "m1"), ("wait", 1.0)])
    assert np.abs(media_first.X - pert_first.X).max() > 1e-4


@pytest.mark.parametrize(
    ("protocol", "match"),
    [
        ([("jump", 1.0)], "Unknown protocol step 'jump'"),
        ([("wait", -1.0)], r"\('wait', -1.0\) needs a finite, non-negative duration"),
        ([("wait", float("inf"))], "needs a finite, non-negative duration"),
        ([("perturb", "G0008"), ("perturb", "G0009")], r"A protocol holds one \('perturb', ...\) step"),
        ([("media", "m1"), ("media", "m0")], r"at most one \('media', ...\) step"),
        ([("perturb", "G0008", 1.0)], "must be a pair"),
        (["perturb"], "must be a pair"),
    ],
)
def test_bad_protocol_steps_raise(dynamic, protocol, match):
    with pytest.raises(ValueError, match=match):
        dynamic.model.predict(protocol=protocol)


def test_protocol_and_perturbations_together_raise(dynamic):
    with pytest.raises(ValueError, match="Pass either `protocol` or"):
        dynamic.model.predict("G0008", protocol=[("perturb", "G0008"), ("wait", 1.0)])


def test_protocol_with_unknown_medium_raises(dynamic):
    with pytest.raises(KeyError, match="Medium 'm5' was not seen in training"):
        dynamic.model.predict(protocol=[("perturb", "G0008"), ("media", "m5"), ("wait", 1.0)])


# ================================================================================================ latent quantities
def test_latent_representation_and_normalized_expression(steady):
    model, adata = steady.model, steady.adata
    z = model.get_latent_representation()
    assert z.shape == (adata.n_obs, model.module.n_latent)
    assert np.isfinite(z).all()
    np.testing.assert_array_equal(z, model.get_latent_representation())
    expr = model.get_normalized_expression()
    assert expr.shape == (adata.n_obs, adata.n_vars)
    np.testing.assert_allclose(np.asarray(expr).sum(1), 1.0, rtol=1e-4)
    sub = model.get_normalized_expression(indices=[0, 1, 2], library_size=1e4)
    np.testing.assert_allclose(np.asarray(sub).sum(1), 1e4, rtol=1e-4)


def test_steady_state_residual(steady):
    model, adata = steady.model, steady.adata
    res = model.get_steady_state_residual()
    assert res.shape == (adata.n_obs,)
    assert np.isfinite(res).all()
    assert (res >= 0).all()
    # far from the data the field is large: the cells' own residuals are smaller than a random point's
    field = model.module.field
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        z_far = 5.0 * torch.randn(200, model.module.n_latent, generator=g) + field.center
        drive = torch.zeros(200, model.module.n_latent)
        far = field(z_far, torch.zeros(200, dtype=torch.long), drive).norm(dim=-1).numpy()
    ctrl = adata.obs["perturbation"].to_numpy() == "NT"
    assert np.median(res[ctrl]) < np.median(far)
    # the residual is evaluated at each cell's own protocol: controls at the field without drive
    ctrl_idx = np.flatnonzero(ctrl)[:5]
    z = torch.as_tensor(model.get_latent_representation(indices=ctrl_idx))
    with torch.no_grad():
        expected = field(z, torch.zeros(5, dtype=torch.long), torch.zeros_like(z)).norm(dim=-1).numpy()
    np.testing.assert_allclose(res[ctrl_idx], expected, rtol=1e-4, atol=1e-6)


def test_basal_representation(steady):
    model, adata = steady.model, steady.adata
    basal = model.get_basal_representation()
    z = model.get_latent_representation()
    assert basal.shape == z.shape
    labels = adata.obs["perturbation"].to_numpy()
    # within a protocol group the basal state is the latent minus one common read-out
    for cond in ("NT", "G0008", "G0009+G0021"):
        diff = (z - basal)[labels == cond]
        np.testing.assert_allclose(diff, np.broadcast_to(diff[0], diff.shape), atol=1e-5)
    d_ctrl = (z - basal)[labels == "NT"][0]
    d_pert = (z - basal)[labels == "G0008"][0]
    assert np.abs(d_ctrl - d_pert).max() > 1e-6


def test_dynamic_latent_quantities(dynamic):
    model, adata = dynamic.model, dynamic.adata
    assert model.get_basal_representation().shape == (adata.n_obs, model.module.n_latent)
    res = model.get_steady_state_residual(indices=np.arange(20))
    assert res.shape == (20,)
    assert np.isfinite(res).all()


# ================================================================================================ query data
def test_query_data_with_the_same_genes(steady, small_adata):
    model = steady.model
    z = model.get_latent_representation(adata=small_adata)
    assert z.shape == (small_adata.n_obs, model.module.n_latent)
    pred = model.predict("G0008", adata=small_adata)
    assert pred.obs["n_cells"].iloc[0] == int((small_adata.obs["perturbation"] == "NT").sum())


def test_query_data_with_a_new_batch_category_raises(steady, small_adata):
    small_adata.obs["batch"] = small_adata.obs["batch"].astype(str).replace({"b0": "b9"})
    with pytest.raises(ValueError, match="Category b9 not found in source registry.*extend_categories"):
        steady.model.get_latent_representation(adata=small_adata)


def test_query_data_with_an_unregistered_target_raises(steady, small_adata):
    labels = small_adata.obs["perturbation"].to_numpy().copy()
    labels[labels == "G0008"] = "G0001"
    small_adata.obs["perturbation"] = labels
    with pytest.raises(ValueError, match=r"perturbs target\(s\) \['G0001'\] that were not registered"):
        steady.model.get_latent_representation(adata=small_adata)


def test_query_data_with_renamed_genes_raises(steady, small_adata):
    small_adata.var_names = [f"x{g}" for g in small_adata.var_names]
    with pytest.raises(ValueError, match="var_names|genes"):
        steady.model.get_latent_representation(adata=small_adata)


def test_query_data_with_reordered_genes_raises(steady, small_adata):
    reordered = small_adata[:, small_adata.var_names[::-1]].copy()
    with pytest.raises(ValueError, match="var_names|genes"):
        steady.model.predict("G0008", adata=reordered)


# ================================================================================================ bad input
def _set_x(adata, i, j, value):
    x = _dense(adata).astype(np.float32)
    x[i, j] = value
    adata.X = x


def test_setup_rejects_a_view(small_adata):
    with pytest.raises(ValueError, match="adata is a view of another AnnData"):
        SemiMechVI.setup_anndata(small_adata[:10])


@pytest.mark.parametrize("sparse", [False, True])
def test_setup_rejects_negative_counts(small_adata, sparse):
    _set_x(small_adata, 0, 0, -1.0)
    if sparse:
        small_adata.X = sp.csr_matrix(small_adata.X)
    with pytest.raises(ValueError, match=r"adata.X has 1 negative values \(min -1\)"):
        SemiMechVI.setup_anndata(small_adata)


@pytest.mark.parametrize("sparse", [False, True])
def test_setup_rejects_non_integer_counts(small_adata, sparse):
    _set_x(small_adata, 3, 2, 0.5)
    if sparse:
        small_adata.X = sp.csr_matrix(small_adata.X)
    with pytest.raises(ValueError, match="adata.X holds non-integer values .*counts=False"):
        SemiMechVI.setup_anndata(small_adata)


def test_log_normalised_data_with_counts_false_and_normal_likelihood(small_adata, model_kwargs, train_kwargs):
    x = _dense(small_adata)
    small_adata.layers["log"] = np.log1p(1e4 * x / x.sum(1, keepdims=True)).astype(np.float32)
    SemiMechVI.setup_anndata(small_adata, layer="log", counts=False, batch_key="batch")
    with pytest.raises(ValueError, match=r"registered as non-count data \(counts=False\)"):
        SemiMechVI(small_adata, **model_kwargs)
    model = SemiMechVI(small_adata, gene_likelihood="normal", **model_kwargs)
    assert "gene_likelihood='normal'" in _printed(model)
    model.train(max_epochs=1, **train_kwargs)
    pred = model.predict(["NT", "G0008"])
    assert np.isfinite(pred.X).all()
    np.testing.assert_allclose(np.expm1(pred.X), pred.layers["expression"], rtol=1e-4, atol=1e-4)
    assert model.get_latent_representation().shape == (small_adata.n_obs, model_kwargs["n_latent"])


def test_setup_rejects_nan_values(small_adata):
    _set_x(small_adata, 1, 1, np.nan)
    small_adata.X = sp.csr_matrix(small_adata.X)
    with pytest.raises(ValueError, match="adata.X has 1 NaN or infinite values"):
        SemiMechVI.setup_anndata(small_adata)
    # also for non-count data
    with pytest.raises(ValueError, match="NaN or infinite values"):
        SemiMechVI.setup_anndata(small_adata, counts=False)


def test_setup_rejects_a_missing_layer(small_adata):
    with pytest.raises(KeyError, match=r"Layer 'counts' is not in adata.layers \(layers: \[\]\)"):
        SemiMechVI.setup_anndata(small_adata, layer="counts")


def test_setup_reads_the_given_layer(small_adata, model_kwargs):
    small_adata.layers["counts"] = small_adata.X.copy()
    small_adata.X = np.full(small_adata.shape, 0.5, dtype=np.float32)  # not counts: must not be read
    SemiMechVI.setup_anndata(small_adata, layer="counts")
    SemiMechVI(small_adata, **model_kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"perturbation_key": "nope"}, "perturbation_key 'nope' is not a column of adata.obs"),
        ({"batch_key": "nope"}, "batch_key 'nope' is not a column of adata.obs"),
        ({"time_key": "nope"}, "time_key 'nope' is not a column of adata.obs"),
        ({"media_key": "nope"}, "media_key 'nope' is not a column of adata.obs"),
        ({"media_key": "media", "media_time_key": "nope"}, "media_time_key 'nope' is not a column of adata.obs"),
        ({"efficacy_key": "nope"}, "efficacy_key 'nope' is not a column of adata.obs"),
        ({"gene_embedding_key": "nope"}, "gene_embedding_key 'nope' is not in adata.varm"),
    ],
)
def test_setup_rejects_missing_keys(small_adata, kwargs, match):
    with pytest.raises(KeyError, match=match):
        SemiMechVI.setup_anndata(small_adata, **kwargs)


def test_setup_refuses_a_switch_time_without_a_medium(small_adata):
    # a switch into the baseline medium changes nothing, and its cells would drop out of the baseline controls
    small_adata.obs["switch"] = 1.0
    with pytest.raises(ValueError, match="media_time_key='switch' without a media_key"):
        SemiMechVI.setup_anndata(small_adata, media_time_key="switch")


def test_failed_setup_leaves_adata_untouched(small_adata):
    cols = list(small_adata.obs.columns)
    with pytest.raises(KeyError, match="time_key 'nope'"):
        SemiMechVI.setup_anndata(small_adata, batch_key="batch", time_key="nope")
    assert list(small_adata.obs.columns) == cols


def test_setup_rejects_data_without_control_cells(small_adata):
    with pytest.raises(
        ValueError, match="No control cells: no label of obs\\['perturbation'\\] equals control_label='CTRL'"
    ):
        SemiMechVI.setup_anndata(small_adata, control_label="CTRL")


@pytest.mark.parametrize(
    ("column", "row", "setup", "match"),
    [
        pytest.param(
            "batch",
            4,
            {"batch_key": "batch"},
            r"obs\['batch'\] has 1 missing \(NaN\) batch values",
            id="nan_in_the_batch_column",
        ),
        pytest.param(
            "perturbation", 2, {}, r"obs\['perturbation'\] has 1 missing \(NaN\) labels", id="nan_perturbation_labels"
        ),
    ],
)
def test_setup_rejects_nan(small_adata, column, row, setup, match):
    values = small_adata.obs[column].astype(object).to_numpy()
    values[row] = np.nan
    small_adata.obs[column] = values
    with pytest.raises(ValueError, match=match):
        SemiMechVI.setup_anndata(small_adata, **setup)


def test_setup_rejects_an_all_zero_cell(small_adata):
    x = _dense(small_adata)
    x[7] = 0
    small_adata.X = sp.csr_matrix(x)
    with pytest.raises(ValueError, match="adata.X has 1 cells without any counts"):
        SemiMechVI.setup_anndata(small_adata)


def test_setup_warns_on_all_zero_genes(small_adata):
    x = _dense(small_adata)
    x[:, 3] = 0
    small_adata.X = sp.csr_matrix(x)
    with pytest.warns(UserWarning, match="adata.X has 1 genes without any counts"):
        SemiMechVI.setup_anndata(small_adata)


def test_setup_warns_on_conditions_with_fewer_than_three_cells(small_adata):
    labels = small_adata.obs["perturbation"].to_numpy().copy()
    labels[np.flatnonzero(labels == "G0008")[2:]] = "NT"
    small_adata.obs["perturbation"] = labels
    with pytest.warns(UserWarning, match="G0008"):
        SemiMechVI.setup_anndata(small_adata)


@pytest.mark.parametrize(
    ("values", "exc", "match"),
    [
        ([-1.0], ValueError, "negative time values"),
        ([np.nan], ValueError, "NaN or infinite time values"),
        (["late"], TypeError, "must be numeric time values"),
    ],
)
def test_setup_rejects_bad_time_values(make_adata, values, exc, match):
    adata = make_adata("dynamic", n_cells=120)
    t = adata.obs["time"].to_numpy().astype(object)
    t[0] = values[0]
    adata.obs["time"] = t if isinstance(values[0], str) else t.astype(float)
    with pytest.raises(exc, match=match):
        SemiMechVI.setup_anndata(adata, time_key="time")


def test_setup_rejects_efficacy_outside_unit_interval(small_adata):
    eff = small_adata.obs["efficacy"].to_numpy().copy()
    eff[0] = 1.5
    small_adata.obs["efficacy"] = eff
    with pytest.raises(ValueError, match=r"1 efficacy values outside \[0, 1\]"):
        SemiMechVI.setup_anndata(small_adata, efficacy_key="efficacy")


def test_setup_accepts_scipy_sparse_arrays(small_adata, model_kwargs, train_kwargs):
    small_adata.X = sp.csr_array(small_adata.X)
    SemiMechVI.setup_anndata(small_adata, batch_key="batch")
    model = SemiMechVI(small_adata, **model_kwargs)
    model.train(max_epochs=1, **train_kwargs)
    assert model.predict("G0008").n_obs == 1


@pytest.mark.parametrize("dense", [True, False])
def test_dense_and_csr_counts_train_alike(small_adata, model_kwargs, train_kwargs, dense):
    if dense:
        small_adata.X = _dense(small_adata)
    SemiMechVI.setup_anndata(small_adata, batch_key="batch")
    model = SemiMechVI(small_adata, **model_kwargs)
    model.train(max_epochs=1, **train_kwargs)
    assert np.isfinite(model.history["elbo_train"].to_numpy(dtype=float)).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gene_likelihood": "normal"}, "gene_likelihood='normal' models log-normalised data"),
        ({"gene_likelihood": "poisson"}, "gene_likelihood='poisson' is not one of"),
        ({"regime": "dynamic"}, "regime='dynamic' needs a time key"),
        ({"regime": "chaotic"}, "regime='chaotic' is not one of"),
        ({"steady_state_weight": -0.1}, r"steady_state_weight=-0.1 must be a finite number >= 0"),
        # NaN passed the old `< 0` check and silently chose the vanilla flow read-out
        ({"steady_state_weight": float("nan")}, r"steady_state_weight=nan must be a finite number >= 0"),
        ({"steady_state_weight": float("inf")}, r"steady_state_weight=inf must be a finite number >= 0"),
        ({"steady_state_weight": "1"}, r"steady_state_weight='1' must be a finite number >= 0"),
        ({"steady_state_weight": None}, r"steady_state_weight=None must be a finite number >= 0"),
    ],
)
def test_model_rejects_bad_arguments(small_adata, model_kwargs, kwargs, match):
    SemiMechVI.setup_anndata(small_adata)
    with pytest.raises(ValueError, match=match):
        SemiMechVI(small_adata, **model_kwargs, **kwargs)


@pytest.mark.parametrize("gene_likelihood", ["nb", "zinb"])
def test_count_likelihoods_train_and_predict(small_adata, model_kwargs, train_kwargs, gene_likelihood):
    SemiMechVI.setup_anndata(small_adata, batch_key="batch")
    model = SemiMechVI(small_adata, gene_likelihood=gene_likelihood, **model_kwargs)
    model.train(max_epochs=1, **train_kwargs)
    # the model's own read-out is a normalised expression (anchoring corrects it in log space)
    pred = model.predict(["NT", "G0008"], anchor="none")
    np.testing.assert_allclose(pred.layers["expression"].sum(1), 1e4, rtol=1e-4)


def test_steady_state_weight_zero_is_the_vanilla_flow_model(small_adata, model_kwargs, train_kwargs):
    SemiMechVI.setup_anndata(small_adata)
    model = SemiMechVI(small_adata, steady_state_weight=0.0, **model_kwargs)
    model.train(max_epochs=1, **train_kwargs)
    assert model.module.readout == "flow"
    assert "ss_residual_train" in model.history
    pred = model.predict("G0008")
    assert pred.uns["scmech"]["prediction"]["readout"] == "flow"
    assert pred.uns["scmech"]["prediction"]["steady_state_weight"] == 0.0


def test_efficacy_key_draws_empirical_efficacies(small_adata, model_kwargs, train_kwargs):
    SemiMechVI.setup_anndata(small_adata, efficacy_key="efficacy")
    model = SemiMechVI(small_adata, **model_kwargs)
    model.train(max_epochs=1, **train_kwargs)
    pred = model.predict("G0008")
    assert pred.uns["scmech"]["prediction"]["efficacy"] == "empirical"
    given = model.predict("G0008", efficacy=0.0)
    assert given.uns["scmech"]["prediction"]["efficacy"] == "given"
    full = model.predict("G0008", efficacy=1.0)
    assert np.abs(given.X - full.X).max() > 0.01
    # anchoring corrects by the model's error where the observations were made (the training efficacies), so
    # the efficacy moves the anchored prediction exactly as it moves the model's own read-out, seen and unseen
    for target in ("G0008", "NEW1"):
        alone = [model.predict(target, efficacy=e, anchor="none").X for e in (0.0, 1.0)]
        anchored = [model.predict(target, efficacy=e).X for e in (0.0, 1.0)]
        np.testing.assert_allclose(anchored[0] - anchored[1], alone[0] - alone[1], atol=1e-5)
        # and by the same correction as the default prediction's
        default = model.predict(target)
        np.testing.assert_allclose(
            anchored[1] - alone[1],
            default.X - model.predict(target, anchor="none").X,
            atol=1e-5,
        )


# ================================================================================================ user data
def test_setup_train_predict_do_not_mutate_user_data(small_adata, model_kwargs, train_kwargs):
    adata = small_adata
    adata.layers["counts"] = adata.X.copy()
    x0 = _dense(adata).copy()
    obs0 = adata.obs.copy()
    var0 = adata.var.copy()
    layers0 = {k: (v.toarray() if sp.issparse(v) else np.asarray(v)).copy() for k, v in adata.layers.items()}
    uns0 = set(adata.uns)
    SemiMechVI.setup_anndata(adata, layer="counts", batch_key="batch")
    model = SemiMechVI(adata, **model_kwargs)
    model.train(max_epochs=1, **train_kwargs)
    model.predict(["NT", "G0008"])
    model.predict("G0008", return_mean=False, n_cells=3)
    model.get_latent_representation()
    model.get_basal_representation()
    model.get_steady_state_residual()
    np.testing.assert_array_equal(_dense(adata), x0)
    user_cols = [c for c in adata.obs.columns if not c.startswith("_scvi_")]
    assert user_cols == list(obs0.columns)
    pd.testing.assert_frame_equal(adata.obs[user_cols], obs0)
    pd.testing.assert_frame_equal(adata.var, var0)
    assert set(adata.layers) == set(layers0)
    for k, v in layers0.items():
        got = adata.layers[k]
        np.testing.assert_array_equal(got.toarray() if sp.issparse(got) else got, v)
    assert set(adata.obsm) == {"_scmech_perturbation"}
    assert set(adata.uns) - uns0 <= {"_scvi_uuid", "_scvi_manager_uuid"}


# ================================================================================================ MuData
def _guide_modality(rna: ad.AnnData, seed: int = 0) -> ad.AnnData:
    """A fake guide-count modality whose obs holds the perturbation labels."""
    rng = np.random.default_rng(seed)
    labels = rna.obs["perturbation"].to_numpy()
    guides = sorted(set(labels))
    counts = np.zeros((rna.n_obs, len(guides)), dtype=np.float32)
    counts[np.arange(rna.n_obs), [guides.index(lab) for lab in labels]] = rng.integers(5, 50, rna.n_obs)
    obs = pd.DataFrame({"perturbation": labels}, index=rna.obs_names.copy())
    return ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=[f"g_{g}" for g in guides]))


def test_setup_mudata_with_the_perturbation_in_the_guide_modality(small_adata, model_kwargs, train_kwargs):
    rna = small_adata
    guide = _guide_modality(rna)
    del rna.obs["perturbation"]
    with md.set_options(pull_on_update=False):
        mdata = md.MuData({"rna": rna, "guide": guide})
    SemiMechVI.setup_mudata(
        mdata, batch_key="batch", modalities={"rna_layer": "rna", "perturbation_key": "guide", "batch_key": "rna"}
    )
    model = SemiMechVI(mdata, **model_kwargs)
    assert model.summary_stats.n_vars == rna.n_vars
    model.train(max_epochs=1, **train_kwargs)
    pred = model.predict(["NT", "G0008", "G0009+G0021"])
    assert pred.shape == (3, rna.n_vars)
    assert list(pred.var_names) == list(rna.var_names)
    assert model.get_latent_representation().shape == (mdata.n_obs, model_kwargs["n_latent"])
    per_cell = model.predict("G0008", n_cells=4, return_mean=False)
    assert set(per_cell.obs["source_cell"]) <= set(mdata.obs_names)


def test_setup_mudata_on_a_papalexi_subset(model_kwargs, train_kwargs):
    full = scmech.datasets.papalexi2021(check_integrity=False)
    labels = full.obs["perturbation"].astype(str).to_numpy()
    rng = np.random.default_rng(0)
    keep = []
    for lab, n in (("NT", 120), ("JAK2", 60), ("IFNGR2", 60), ("IRF1", 60), ("unassigned", 20)):
        keep.extend(rng.choice(np.flatnonzero(labels == lab), size=n, replace=False))
    keep = np.sort(np.asarray(keep))
    rna = full[keep].copy()
    guides = np.asarray(rna.uns["grna_ids"]).astype(str)
    gdata = ad.AnnData(
        X=rna.obsm["grna_counts"].copy(),
        obs=pd.DataFrame(index=rna.obs_names.copy()),
        var=pd.DataFrame({"target": np.asarray(rna.uns["grna_targets"]).astype(str)}, index=guides),
    )
    del rna.obsm["grna_counts"]
    x = rna.X
    rna = rna[:, np.asarray(x.sum(0)).ravel() > 0].copy()  # drop genes without counts in the subset
    with md.set_options(pull_on_update=False):
        mdata = md.MuData({"rna": rna, "guide": gdata})
    SemiMechVI.setup_mudata(mdata, perturbation_key="perturbation", batch_key="bio_rep")
    model = SemiMechVI(mdata, **model_kwargs)
    assert model.summary_stats.n_batch == 3
    model.train(max_epochs=1, **train_kwargs)
    assert "ss_residual_train" in model.history
    pred = model.predict(["NT", "JAK2", "IFNGR2", "IRF1", "IFNGR2+JAK2"])
    assert pred.shape == (5, rna.n_vars)
    assert np.isfinite(pred.X).all()
    unassigned = np.flatnonzero(mdata.mod["rna"].obs["perturbation"].to_numpy() == "unassigned")
    assert len(np.intersect1d(model.train_indices, unassigned)) == 0


def test_setup_mudata_errors(small_adata):
    with md.set_options(pull_on_update=False):
        mdata = md.MuData({"gex": small_adata})
    with pytest.raises(KeyError, match="MuData has no modality 'rna' for the RNA counts"):
        SemiMechVI.setup_mudata(mdata)
    with pytest.raises(KeyError, match=r"modalities\['batch_key'\] = 'protein' is not a modality"):
        SemiMechVI.setup_mudata(mdata, batch_key="batch", modalities={"rna_layer": "gex", "batch_key": "protein"})
    with pytest.raises(ValueError, match="is a view"):
        SemiMechVI.setup_mudata(mdata[:20], modalities={"rna_layer": "gex"})


@pytest.mark.parametrize("variant", ["efficacy", "normal", "dynamic", "mlp_decoder"])
def test_mean_prediction_is_the_mean_of_counterfactual_cells(variant, make_adata, model_kwargs, train_kwargs):
    """The condition mean (exact two-product path for linear decoders) equals the mean of the per-cell path."""
    adata = make_adata("dynamic" if variant == "dynamic" else "steady_state", n_cells=240)
    setup = {"perturbation_key": "perturbation", "control_label": "NT", "batch_key": "batch"}
    kwargs = dict(model_kwargs)
    predict = {}
    if variant == "efficacy":
        setup["efficacy_key"] = "efficacy"
    elif variant == "normal":
        x = _dense(adata)
        adata.X = np.log1p(1e4 * x / x.sum(1, keepdims=True)).astype(np.float32)
        setup["counts"] = False
        kwargs["gene_likelihood"] = "normal"
    elif variant == "dynamic":
        setup.update(time_key="time", media_key="media", media_time_key="media_time")
        predict = {"media": "m1", "time": 2.0}
    else:
        kwargs["n_layers_decoder"] = 1
    SemiMechVI.setup_anndata(adata, **setup)
    scvi.settings.seed = 0
    model = SemiMechVI(adata, **kwargs)
    model.train(max_epochs=1, **train_kwargs)
    conds = ["NT", "G0008", "G0009+G0021"]
    per_cell = model.predict(conds, n_cells=40, return_mean=False, random_state=2, **predict)
    mean = model.predict(conds, n_cells=40, random_state=2, anchor="none", **predict)
    layer = per_cell.X if variant == "normal" else per_cell.layers["expression"]
    target = mean.X if variant == "normal" else mean.layers["expression"]
    for k, cond in enumerate(conds):
        rows = (per_cell.obs["perturbation"] == cond).to_numpy()
        np.testing.assert_allclose(np.asarray(layer[rows]).mean(0), target[k], rtol=2e-4, atol=1e-5)


def test_each_protocol_of_one_request_is_anchored_to_its_own_context(dynamic_contexts):
    """Requesting a condition at two times at once gives what two separate requests give."""
    model, adata = dynamic_contexts.model, dynamic_contexts.adata
    target = adata.uns["truth"]["targets"][0]
    both = model.predict([target, target], media="m1", time=[1.0, 4.0], media_time=1.0, random_state=0)
    assert both.obs["anchored"].all()
    for k, t in enumerate((1.0, 4.0)):
        alone = model.predict(target, media="m1", time=t, media_time=1.0, random_state=0)
        np.testing.assert_allclose(both.X[k], alone.X[0], rtol=1e-5, atol=1e-5)
    assert both.obs["anchoring"].notna().all()


def test_dynamic_anchoring_uses_the_perturbation_observed_at_other_times():
    adata = simulate_perturbseq(
        1600, 30, n_perturbations=4, n_combinations=0, regime="dynamic", media_switch_times=(1.0,), seed=0
    )
    SemiMechVI.setup_anndata(adata, batch_key="batch", time_key="time", media_key="media", media_time_key="media_time")
    target = adata.uns["truth"]["targets"][0]
    obs = adata.obs
    held = np.flatnonzero((obs["perturbation"] == target).to_numpy() & (obs["time"] == 2.0).to_numpy())
    model, train = tiny_model_without(adata, held, max_epochs=1)
    keys = simulation_group_keys(obs)
    observed = pseudobulk(adata[train], keys[train])
    kw = {"media": "m1", "media_time": 1.0, "random_state": 0}
    # a time observed in training: the observation (a one-epoch model's error stands far out of the noise, so the
    # correction is kept almost whole)
    seen = model.predict(target, time=4.0, **kw)
    assert seen.obs["anchoring"].iloc[0] == "observed"
    assert seen.obs["anchor_weight"].iloc[0] > 0.9
    seen_raw = model.predict(target, time=4.0, anchor="none", **kw)
    y = observed.loc[f"{target}|m1|1|4"].to_numpy()
    assert np.mean((seen.X[0] - y) ** 2) < 0.05 * np.mean((seen_raw.X[0] - y) ** 2)
    # a held-out time between observed ones: the model corrected by its errors at 1 and 4 days
    anchored = model.predict(target, time=2.0, **kw)
    assert anchored.obs["anchoring"].iloc[0] == "observed at neighbouring times"
    raw = model.predict(target, time=2.0, anchor="none", **kw)
    truth = pseudobulk(adata[held], keys[held]).loc[f"{target}|m1|1|2"].to_numpy()
    assert np.mean((anchored.X[0] - truth) ** 2) < 0.5 * np.mean((raw.X[0] - truth) ** 2)


def test_predict_reports_and_warns_about_unconverged_steady_states(steady):
    model = steady.model
    ok = model.predict(["NT", "G0008"])
    assert (ok.obs["steady_state_residual"] < 1e-3).all()
    assert ok.uns["scmech"]["prediction"]["unconverged"] == []
    saved = model.module.fixed_point_max_iter
    model.module.fixed_point_max_iter = 0  # no Newton step: the solve stops at its starting state
    try:
        with pytest.warns(RuntimeWarning, match=r"did not converge within fixed_point_max_iter=0"):
            bad = model.predict(["NT", "G0008"], anchor="none")
    finally:
        model.module.fixed_point_max_iter = saved
    assert (bad.obs["steady_state_residual"] > 1e-3).any()
    assert set(bad.uns["scmech"]["prediction"]["unconverged"]) <= {"NT", "G0008"}
    assert bad.uns["scmech"]["prediction"]["unconverged"]


# ------------------------------------------------------------------------------------------------ anchoring weights
def test_log_pseudobulk_variance_is_the_delta_method_sampling_variance():
    rng = np.random.default_rng(0)
    x = sp.csr_matrix(rng.poisson(3.0, size=(40, 6)).astype(np.float32) + np.eye(40, 6, dtype=np.float32))
    labels = np.array(["a"] * 25 + ["b"] * 15)
    rows = np.arange(40)
    pb, var = _log_pseudobulk(x, rows, labels, ["a", "b"], counts=True)
    dense = x.toarray()
    prop = dense / dense.sum(1, keepdims=True)
    for k, g in enumerate(["a", "b"]):
        p_g = prop[labels == g]
        m = p_g.mean(0)
        np.testing.assert_allclose(pb[k], np.log1p(1e4 * m), rtol=1e-6)
        expected = p_g.var(0, ddof=1) / len(p_g) * (1e4 / (1 + 1e4 * m)) ** 2
        np.testing.assert_allclose(var[k], expected, rtol=1e-6)
    # non-count data: plain means and their sampling variances
    pb, var = _log_pseudobulk(dense, rows, labels, ["a", "b"], counts=False)
    np.testing.assert_allclose(var[1], dense[labels == "b"].var(0, ddof=1) / 15, rtol=1e-6)


def test_log_pseudobulk_single_cell_borrows_the_pooled_variance():
    # one cell has no between-cell variance of its own: it must not pass for an exact observation
    rng = np.random.default_rng(5)
    x = rng.normal(0.0, 1.0, size=(41, 5))
    labels = np.array(["a"] * 25 + ["b"] * 15 + ["one"])
    _, var = _log_pseudobulk(x, np.arange(41), labels, ["a", "b", "one"], counts=False)
    pooled = (24 * x[:25].var(0, ddof=1) + 14 * x[25:40].var(0, ddof=1)) / 38
    np.testing.assert_allclose(var[2], pooled, rtol=1e-6)
    np.testing.assert_allclose(var[1], x[25:40].var(0, ddof=1) / 15, rtol=1e-6)  # the others are unchanged
    # nothing to borrow from: a lone single-cell group keeps variance 0
    _, alone = _log_pseudobulk(x, np.arange(40, 41), labels[40:], ["one"], counts=False)
    assert (alone == 0).all()


def test_anchor_weights_keep_corrections_out_of_the_noise_and_drop_pure_noise():
    rng = np.random.default_rng(1)
    v = rng.uniform(0.01, 0.2, size=4000)
    # pure sampling noise: the correction is dropped (almost) entirely
    noise = rng.normal(0.0, np.sqrt(v))
    assert float(np.mean(_shrinkage(noise, v))) < 0.1
    # a systematic error far above the noise is kept (almost) whole
    big = rng.normal(0.0, 3.0, size=v.size) + noise
    w = _shrinkage(big, v)
    assert float(w.min()) > 0.97
    # in between, noisier genes are shrunk more: the weights are at least tau^2 / (tau^2 + v), and a gene is
    # shrunk by at most the translation limit chosen for the correction, in its own standard errors
    mid = rng.normal(0.0, 0.3, size=v.size) + noise
    w = _shrinkage(mid, v)
    tau2 = np.mean(mid**2 - v)
    assert np.all(w >= tau2 / (tau2 + v) - 1e-12)
    lam = sure_translation(mid, v, tau2 / (tau2 + v))
    assert np.all(np.abs(mid) * (1.0 - w) <= lam * np.sqrt(v) + 1e-12)
    assert w[np.argmax(v)] < w[np.argmin(v)]
    # without variances (a model saved before they were stored) the correction is kept whole
    np.testing.assert_array_equal(_shrinkage(mid, None), np.ones_like(mid))


def test_anchor_weight_is_reported_per_row(steady):
    model = steady.model
    pred = model.predict(["NT", "G0008", steady.heldout_target])
    assert pred.obs["anchored"].all()
    assert pred.obs["anchor_weight"].between(0.0, 1.0).all()
    raw = model.predict(["NT", "G0008", steady.heldout_target], anchor="none")
    assert raw.obs["anchor_weight"].isna().all()


def test_a_size_factor_of_a_larger_library_is_rescaled_to_the_registered_genes(small_adata, model_kwargs, train_kwargs):
    """A gene panel with the whole transcriptome's library as size factor: the model's expected totals meet the
    panel's counts, and predictions stay proportions of the registered genes."""
    x = _dense(small_adata)
    rng = np.random.default_rng(0)
    small_adata.obs["library"] = 10.0 * x.sum(1) * np.exp(rng.normal(0, 0.05, small_adata.n_obs))
    SemiMechVI.setup_anndata(small_adata, batch_key="batch", size_factor_key="library")
    model = SemiMechVI(small_adata, **model_kwargs)
    model.train(max_epochs=1, **train_kwargs)
    assert float(model.module.log_library_scale) == pytest.approx(np.log(0.1), abs=0.02)
    pred = model.predict(["NT", "G0008"], anchor="none")
    np.testing.assert_allclose(pred.layers["expression"].sum(1), 1e4, rtol=1e-4)
    # the baselines score in the same space whatever size factor is registered
    from scmech import tl

    tl.TrainMean.setup_anndata(small_adata, batch_key="batch", size_factor_key="library")
    with_sf = tl.TrainMean(small_adata)
    with_sf.train()
    plain = small_adata.copy()
    tl.TrainMean.setup_anndata(plain, batch_key="batch")
    without = tl.TrainMean(plain)
    without.train()
    np.testing.assert_allclose(with_sf.predict(["G0008"]).X, without.predict(["G0008"]).X, rtol=1e-6)


def test_a_time_course_in_hours_trains_and_predicts_as_in_days(make_adata, model_kwargs, train_kwargs):
    """Time is measured in units of the longest read-out: the same screen in hours gives the same model."""
    preds, units = {}, {}
    for unit, factor in (("days", 1.0), ("hours", 24.0)):
        adata = make_adata("dynamic", n_cells=240)
        adata.obs["time"] = adata.obs["time"].astype(float) * factor
        adata.obs["media_time"] = adata.obs["media_time"].astype(float) * factor
        SemiMechVI.setup_anndata(
            adata, batch_key="batch", time_key="time", media_key="media", media_time_key="media_time"
        )
        scvi.settings.seed = 0
        model = SemiMechVI(adata, onset_tau=0.5 * factor, **model_kwargs)
        model.train(max_epochs=2, **train_kwargs)
        assert np.isfinite(model.history["elbo_train"].to_numpy(dtype=float)).all()
        assert model.module.onset_tau_data == pytest.approx(0.5 * factor, rel=1e-5)
        preds[unit] = model.predict(["G0008", "NT"], media="m1", time=2.0 * factor, media_time=1.0 * factor)
        units[unit] = float(model.module.time_unit)
    assert units["hours"] == pytest.approx(24.0 * units["days"])
    np.testing.assert_allclose(preds["hours"].X, preds["days"].X, rtol=1e-4, atol=1e-4)


def test_a_loaded_model_knows_its_trained_media_with_part_of_its_data(tmp_path):
    # the split cells of a model loaded with part of its data drop out; its trained media must not
    adata = simulate_perturbseq(240, 30, n_perturbations=4, n_combinations=0, seed=0, n_media=2)
    adata.obs["perturbation"] = adata.obs["perturbation"].astype(str)
    SemiMechVI.setup_anndata(adata, batch_key="batch", media_key="media")
    model, _ = tiny_model_without(adata, np.array([], dtype=int), max_epochs=1)
    assert model.trained_media_ == ["m0", "m1"]
    model.save(tmp_path / "m")
    m0 = adata[adata.obs["media"].astype(str) == "m0"].copy()
    loaded = SemiMechVI.load(tmp_path / "m", adata=m0)
    assert loaded.trained_media_ == ["m0", "m1"]
    assert np.isfinite(loaded.predict(["NT"], media="m1", anchor="none").X).all()
