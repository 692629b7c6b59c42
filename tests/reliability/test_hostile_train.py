"""Hostile options of ``train``, ``save`` and ``load``: clear scmech errors, never silent or half-done work."""

from __future__ import annotations

import numpy as np
import pytest
import scvi
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from scmech.model import SemiMechVI


def _model(rel, adata=None) -> SemiMechVI:
    scvi.settings.seed = 0
    adata = rel.small() if adata is None else adata
    SemiMechVI.setup_anndata(adata, batch_key="batch")
    return SemiMechVI(adata, **rel.MODEL_KWARGS)


@pytest.fixture
def interrupted(rel, tmp_path):
    """The ``last.ckpt`` of a 4-epoch random-batching run that crashed at epoch 2, and its data."""
    adata = rel.small()
    model = _model(rel, adata)
    dirpath = tmp_path / "ckpt"
    with pytest.raises(RuntimeError, match="simulated crash"):
        model.train(
            max_epochs=4, callbacks=[ModelCheckpoint(dirpath=dirpath, save_last=True), rel.Crash(2)], **rel.TRAIN_KWARGS
        )
    return dirpath / "last.ckpt", adata


# ================================================================================================ resume
@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"batching": "batch_matched"}, r"batching: 'random' there, 'batch_matched' here"),
        ({"max_epochs": 2}, r"max_epochs: 4 there, 2 here"),
        ({"plan_kwargs": {"lr": 1e-2}}, r"plan_kwargs"),
        ({"batch_size": 32}, r"batch_size: 64 there, 32 here"),
    ],
)
def test_resuming_with_other_settings_is_refused(rel, interrupted, change, named):
    ckpt, adata = interrupted
    kwargs = {**rel.TRAIN_KWARGS, "max_epochs": 4, **change}
    with pytest.raises(ValueError, match=rf"Cannot resume from ckpt_path=.*last\.ckpt.*{named}"):
        _model(rel, adata).train(ckpt_path=ckpt, **kwargs)


def test_resuming_on_other_data_is_refused(rel, interrupted):
    ckpt, _ = interrupted
    with pytest.raises(ValueError, match=r"Cannot resume.*data: '120 cells x \d+ genes' there, '200 cells"):
        _model(rel, rel.small(n_cells=200)).train(max_epochs=4, ckpt_path=ckpt, **rel.TRAIN_KWARGS)


def test_resuming_error_guided_from_a_random_run_is_refused(rel, interrupted):
    ckpt, adata = interrupted
    with pytest.raises(ValueError, match=r"Cannot resume from ckpt_path=.*batching"):
        _model(rel, adata).train(max_epochs=4, batching="error_guided", ckpt_path=ckpt, **rel.TRAIN_KWARGS)


def test_an_empty_checkpoint_file_is_named(rel, tmp_path):
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"Cannot resume from ckpt_path=.*empty\.ckpt.*EOFError"):
        _model(rel).train(max_epochs=1, ckpt_path=tmp_path / "empty.ckpt", **rel.TRAIN_KWARGS)


# ================================================================================================ callbacks
def test_a_single_callback_is_taken_as_lightning_takes_it(rel, tmp_path):
    model = _model(rel)
    model.train(max_epochs=1, callbacks=ModelCheckpoint(dirpath=tmp_path, save_last=True), **rel.TRAIN_KWARGS)
    assert (tmp_path / "last.ckpt").is_file()
    with pytest.raises(TypeError, match=r"callbacks holds 'x', which is not a Lightning callback"):
        _model(rel).train(max_epochs=1, callbacks=["x"], **rel.TRAIN_KWARGS)


# ================================================================================================ split options
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"datasplitter_kwargs": {"train_size": 0.5}}, r"datasplitter_kwargs\['train_size'\]=0.5 is set by train"),
        ({"datasplitter_kwargs": {"batch_size": 8}}, r"datasplitter_kwargs\['batch_size'\]=8 is set by train"),
        ({"datasplitter_kwargs": {"shuffle_set_split": False}}, r"datasplitter_kwargs\['shuffle_set_split'\]"),
        ({"datasplitter_kwargs": {"seed": 3}}, r"datasplitter_kwargs\['seed'\]=3 .*scvi.settings.seed"),
        ({"train_size": "0.5"}, r"train_size='0.5' must be a fraction"),
        ({"train_size": True}, r"train_size=True must be a fraction"),
        (
            {"train_size": 0.5, "datasplitter_kwargs": {"external_indexing": [np.arange(100)]}},
            r"train_size=0.5 would be ignored",
        ),
        (
            {"validation_size": 0.1, "datasplitter_kwargs": {"external_indexing": [np.arange(100)]}},
            r"validation_size=0.1 would be ignored",
        ),
    ],
)
def test_split_options_that_would_clash_or_be_ignored_are_refused(rel, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _model(rel).train(max_epochs=1, **kwargs, **rel.TRAIN_KWARGS)


def test_reduce_lr_on_plateau_without_validation_cells_is_refused(rel):
    with pytest.raises(ValueError, match=r"reduce_lr_on_plateau'\]=True watches lr_scheduler_metric='elbo_validation'"):
        _model(rel).train(max_epochs=1, train_size=1.0, plan_kwargs={"reduce_lr_on_plateau": True}, **rel.TRAIN_KWARGS)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("n_epochs_kl_warmup", "x"),
        ("n_epochs_kl_warmup", -1),
        ("n_steps_kl_warmup", 2.5),
        ("max_kl_weight", float("nan")),
        ("min_kl_weight", -0.5),
        ("eps", -1.0),
        ("error_alpha", float("nan")),
    ],
)
def test_plan_numbers_are_checked_before_training(rel, key, value):
    with pytest.raises(ValueError, match=rf"plan_kwargs\['{key}'\]={value!r} must be"):
        _model(rel).train(max_epochs=1, batching="error_guided", plan_kwargs={key: value}, **rel.TRAIN_KWARGS)


# ================================================================================================ devices
@pytest.mark.parametrize("accelerator", ["gpu", "cuda", "mps"])
def test_an_accelerator_this_machine_lacks_is_named(rel, accelerator):
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this machine has an accelerator")
    with pytest.raises(ValueError, match=rf"accelerator='{accelerator}' was asked for.*accelerator='cpu'"):
        _model(rel).train(max_epochs=1, accelerator=accelerator, **rel.TRAIN_KWARGS)


def test_loading_onto_a_missing_mps_device_is_named(model, tmp_path):
    if torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    model.save(tmp_path / "m")
    with pytest.raises(ValueError, match=r"accelerator='mps' was asked for, but torch sees no MPS device"):
        SemiMechVI.load(tmp_path / "m", adata=model.adata, accelerator="mps")


# ================================================================================================ save
def test_a_failing_data_write_leaves_the_earlier_save_as_it_was(model, tmp_path):
    model.save(tmp_path / "m", save_anndata=True)
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}
    with pytest.raises(ValueError, match=r"anndata_write_kwargs=\{'compression': 'bogus'\}.*nothing was saved"):
        model.save(tmp_path / "m", overwrite=True, save_anndata=True, compression="bogus")
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()} == before
    loaded = SemiMechVI.load(tmp_path / "m")
    np.testing.assert_allclose(loaded.get_latent_representation(), model.get_latent_representation())


# ================================================================================================ early stopping
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"early_stopping_patience": 3}, r"\['early_stopping_patience'\] would be ignored: early stopping is off"),
        ({"early_stopping": True, "early_stopping_patience": "2"}, r"early_stopping_patience='2' must be a whole"),
        ({"early_stopping": True, "early_stopping_min_delta": -1.0}, r"early_stopping_min_delta=-1.0 must be"),
        ({"early_stopping": True, "early_stopping_mode": "bogus"}, r"early_stopping_mode='bogus' must be 'min'"),
    ],
)
def test_early_stopping_options_are_checked_before_training(rel, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _model(rel).train(max_epochs=2, **kwargs, **rel.TRAIN_KWARGS)


# ================================================================================================ load
def test_loading_a_mudata_model_onto_an_anndata_names_the_kinds(rel, tmp_path):
    import mudata as md

    with md.set_options(pull_on_update=False):
        mdata = md.MuData({"rna": rel.small()})
    scvi.settings.seed = 0
    SemiMechVI.setup_mudata(mdata, perturbation_key="perturbation", batch_key="batch")
    model = SemiMechVI(mdata, **rel.MODEL_KWARGS)
    model.train(max_epochs=1, **rel.TRAIN_KWARGS)
    model.save(tmp_path / "mu")
    with pytest.raises(ValueError, match=r"trained on a MuData \(modalities \['rna'\]\), and adata is a AnnData"):
        SemiMechVI.load(tmp_path / "mu", adata=rel.small())


def test_loading_an_anndata_model_onto_a_mudata_names_the_kinds(model, tmp_path):
    import mudata as md

    model.save(tmp_path / "ad")
    with md.set_options(pull_on_update=False):
        mdata = md.MuData({"rna": model.adata.copy()})
    with pytest.raises(ValueError, match=r"trained on an AnnData, and adata is a MuData"):
        SemiMechVI.load(tmp_path / "ad", adata=mdata)
