"""Interrupted training resumes from a checkpoint; same seed, same results; hostile data never give a NaN loss."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import scvi
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from scmech.model import SemiMechVI


def _model(rel, adata, **kwargs) -> SemiMechVI:
    scvi.settings.seed = 0
    SemiMechVI.setup_anndata(adata, batch_key="batch")
    return SemiMechVI(adata, **{**rel.MODEL_KWARGS, **kwargs})


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.module.state_dict().items()}


def _assert_same_state(a: dict, b: dict, **tol) -> None:
    assert list(a) == list(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k, **tol)


# ================================================================================================ resume
@pytest.mark.parametrize("batching", ["random", "batch_matched", "error_guided"])
def test_interrupted_training_resumes_to_the_uninterrupted_state(rel, tmp_path, batching):
    adata = rel.small()
    full = _model(rel, adata)
    full.train(max_epochs=4, batching=batching, **rel.TRAIN_KWARGS)

    crashed = _model(rel, adata)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashed.train(max_epochs=4, batching=batching, callbacks=[ckpt, rel.Crash(2)], **rel.TRAIN_KWARGS)
    assert (tmp_path / "last.ckpt").is_file()
    # the checkpoint loads without unpickling arbitrary objects
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["epoch"] == 1

    resumed = _model(rel, adata)  # a new process would rebuild the model the same way
    resumed.train(max_epochs=4, batching=batching, ckpt_path=tmp_path / "last.ckpt", **rel.TRAIN_KWARGS)
    assert resumed.is_trained_
    _assert_same_state(_state(resumed), _state(full), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        resumed.history["elbo_train"].to_numpy(dtype=float).ravel(),
        full.history["elbo_train"].to_numpy(dtype=float).ravel()[2:],
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        resumed.predict(["G0008", "G0009+G0021"]).X, full.predict(["G0008", "G0009+G0021"]).X, rtol=1e-4, atol=1e-5
    )


def test_resuming_into_another_model_or_from_a_broken_file_explains_itself(rel, tmp_path):
    adata = rel.small()
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    _model(rel, adata).train(max_epochs=1, callbacks=[ckpt], **rel.TRAIN_KWARGS)
    other = _model(rel, adata, n_latent=rel.MODEL_KWARGS["n_latent"] + 2)
    with pytest.raises(ValueError, match=r"Cannot resume from ckpt_path=.*does not fit this model and data"):
        other.train(max_epochs=2, ckpt_path=tmp_path / "last.ckpt", **rel.TRAIN_KWARGS)
    (tmp_path / "broken.ckpt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match=r"Cannot resume from ckpt_path=.*broken\.ckpt"):
        _model(rel, adata).train(max_epochs=2, ckpt_path=tmp_path / "broken.ckpt", **rel.TRAIN_KWARGS)


class _Payload:
    """Touches a file when unpickled: stands for code a crafted checkpoint would run."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_a_checkpoint_is_never_unpickled_even_when_torch_is_told_to(rel, tmp_path, monkeypatch):
    # torch honours this variable only where the caller leaves weights_only unset; scmech sets it
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "ran"
    torch.save({"epoch": 0, "state_dict": {}, "payload": _Payload(marker)}, tmp_path / "crafted.ckpt")
    with pytest.raises(ValueError, match=r"Cannot resume from ckpt_path=.*crafted\.ckpt"):
        _model(rel, rel.small()).train(max_epochs=2, ckpt_path=tmp_path / "crafted.ckpt", **rel.TRAIN_KWARGS)
    assert not marker.exists()


def test_checkpointing_writes_only_where_asked(rel, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    adata = rel.small()
    model = _model(rel, adata)
    model.train(
        max_epochs=2, callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)], **rel.TRAIN_KWARGS
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert "last.ckpt" in {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert model.module.training is False  # trained models are left in eval mode, as scvi-tools does


# ================================================================================================ determinism
def test_same_seed_same_data_gives_identical_losses_and_predictions(rel):
    runs = []
    for _ in range(2):
        model = _model(rel, rel.small())
        model.train(max_epochs=2, **rel.TRAIN_KWARGS)
        runs.append(
            (
                _state(model),
                {k: v.to_numpy() for k, v in model.history.items()},
                model.predict(["NT", "G0008", "G0009+G0021"]).X,
                model.predict(["G0008"], return_mean=False, n_cells=6).X,
                model.get_latent_representation(),
            )
        )
    (s1, h1, p1, c1, z1), (s2, h2, p2, c2, z2) = runs
    _assert_same_state(s1, s2, rtol=0, atol=0)
    assert h1.keys() == h2.keys()
    for k in h1:
        np.testing.assert_array_equal(h1[k], h2[k], err_msg=k)
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_array_equal(z1, z2)


def test_another_seed_gives_another_model(rel):
    states = []
    for seed in (0, 1):
        model = _model(rel, rel.small())
        scvi.settings.seed = seed
        model.train(max_epochs=1, **rel.TRAIN_KWARGS)
        states.append(model.history["elbo_train"].to_numpy().ravel())
    assert not np.array_equal(states[0], states[1])


# ================================================================================================ numerical health
def _hostile(rel, kind: str):
    adata = rel.small(sparse=False)
    x = adata.X.astype(np.float64)
    rng = np.random.default_rng(0)
    if kind == "huge library sizes":
        x[:10] *= 1000
    elif kind == "tiny library sizes":
        keep = np.zeros_like(x)
        keep[np.arange(x.shape[0]), rng.integers(0, x.shape[1], x.shape[0])] = 1
        x = keep  # one count per cell
    elif kind == "very sparse genes":
        x[:, 5:] = 0
        x[rng.integers(0, x.shape[0], x.shape[1] - 5), np.arange(5, x.shape[1])] = 1  # one count per gene
    elif kind == "a huge count":
        x[0, 0] = 1e7
    adata.X = sp.csr_matrix(x)
    return adata


def _assert_finite_history(model) -> None:
    for key in ("elbo_train", "reconstruction_loss_train", "kl_local_train", "ss_residual_train", "validation_loss"):
        values = model.history[key].to_numpy(dtype=float)
        assert np.isfinite(values).all(), (key, values)


@pytest.mark.parametrize("kind", ["huge library sizes", "tiny library sizes", "very sparse genes", "a huge count"])
def test_hostile_counts_give_a_finite_loss(rel, kind):
    adata = _hostile(rel, kind)
    model = _model(rel, adata)
    model.train(max_epochs=2, **rel.TRAIN_KWARGS)
    _assert_finite_history(model)
    assert np.isfinite(model.predict(["G0008", "G0009+G0021"]).X).all()


@pytest.mark.parametrize(
    ("model_kwargs", "train_kwargs"),
    [
        ({"steady_state_weight": 100.0}, {}),
        ({}, {"batch_size": 3}),
        ({"steady_state_weight": 0.0}, {"plan_kwargs": {"lr": 1e-2}}),
    ],
    ids=["high steady-state weight", "tiny batches", "vanilla, high learning rate"],
)
def test_hostile_settings_give_a_finite_loss(rel, model_kwargs, train_kwargs):
    adata = _hostile(rel, "huge library sizes")
    model = _model(rel, adata, **model_kwargs)
    model.train(max_epochs=2, **{**rel.TRAIN_KWARGS, **train_kwargs})
    _assert_finite_history(model)


def test_a_diverging_model_is_stopped_by_the_callback_with_its_causes(rel):
    """A real non-finite loss from inside the module (not a patched one) reaches the callback's message."""
    model = _model(rel, rel.small())
    with torch.no_grad():
        model.module.decoder.batch_effect.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"loss became nan at epoch 0, step \d+; training stopped.*lr"):
        model.train(max_epochs=1, **rel.TRAIN_KWARGS)


def test_a_non_finite_loss_stops_training_and_names_the_causes(rel, monkeypatch):
    model = _model(rel, rel.small())
    loss = model.module.loss

    def nan_loss(*args, **kwargs):
        out = loss(*args, **kwargs)
        out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(model.module, "loss", nan_loss)
    with pytest.raises(
        FloatingPointError,
        match=r"loss became nan at epoch 0, step \d+; training stopped.*lr.*steady_state_weight=1",
    ):
        model.train(max_epochs=2, **rel.TRAIN_KWARGS)
