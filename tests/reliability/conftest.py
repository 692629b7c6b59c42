"""Tiny data and models shared by the reliability tests (the model tests' fixtures, reused)."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scvi
from lightning.pytorch.callbacks import Callback

from scmech.model import SemiMechVI

# the model tests' tiny simulated screens and training settings (a conftest is not importable by name)
_spec = importlib.util.spec_from_file_location(
    "_scmech_model_fixtures", Path(__file__).parents[1] / "model" / "conftest.py"
)
_model_fixtures = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _model_fixtures
_spec.loader.exec_module(_model_fixtures)
simulated = _model_fixtures.simulated
MODEL_KWARGS = _model_fixtures.MODEL_KWARGS
TRAIN_KWARGS = _model_fixtures.TRAIN_KWARGS

if TYPE_CHECKING:
    import anndata as ad


def small(n_cells: int = 120, *, sparse: bool = True) -> ad.AnnData:
    """A fresh small simulated screen (targets G0008, G0009, G0010, G0021, G0009+G0021; batches b0-b2)."""
    adata = simulated(n_cells=n_cells)
    adata.X = sp.csr_matrix(adata.X) if sparse else np.asarray(adata.X.toarray() if sp.issparse(adata.X) else adata.X)
    return adata


def dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if sp.issparse(x) else x)


def trained(adata: ad.AnnData | None = None, *, max_epochs: int = 1, **setup) -> SemiMechVI:
    """A tiny trained model (seed 0) on ``adata`` (a fresh small screen when ``None``)."""
    scvi.settings.seed = 0
    adata = small() if adata is None else adata
    SemiMechVI.setup_anndata(adata, **{"batch_key": "batch", **setup})
    model = SemiMechVI(adata, **MODEL_KWARGS)
    model.train(max_epochs=max_epochs, **TRAIN_KWARGS)
    return model


def snapshot(adata: ad.AnnData) -> dict:
    """Deep copy of everything a user put in an AnnData: X, layers, obs, var, obsm, varm, uns."""
    return {
        "X": dense(adata.X).copy(),
        "layers": {k: dense(v).copy() for k, v in adata.layers.items()},
        "obs": adata.obs.copy(deep=True),
        "var": adata.var.copy(deep=True),
        "obsm": {k: dense(v).copy() for k, v in adata.obsm.items()},
        "varm": {k: dense(v).copy() for k, v in adata.varm.items()},
        "uns_keys": set(adata.uns.keys()),
        "uns": copy.deepcopy(dict(adata.uns)),
        "x_type": type(adata.X),
        "shape": adata.shape,
    }


#: what scvi-tools registration adds (documented in setup_anndata)
REGISTRATION_OBS = {"_scvi_batch", "_scvi_labels"}
REGISTRATION_UNS = {"_scvi_uuid", "_scvi_manager_uuid"}
REGISTRATION_OBSM = {"_scmech_perturbation"}


def assert_unchanged(adata: ad.AnnData, before: dict, *, obs=(), obsm=(), uns=()) -> None:
    """Assert that the user's data are untouched; only the named (documented) keys may have been added."""
    assert adata.shape == before["shape"]
    assert type(adata.X) is before["x_type"]
    np.testing.assert_array_equal(dense(adata.X), before["X"])
    assert set(adata.layers.keys()) == set(before["layers"])
    for k, v in before["layers"].items():
        np.testing.assert_array_equal(dense(adata.layers[k]), v)
    added = set(adata.obs.columns) - set(before["obs"].columns)
    assert added <= set(obs), f"undocumented obs columns {added - set(obs)}"
    pd.testing.assert_frame_equal(adata.obs[list(before["obs"].columns)], before["obs"])
    pd.testing.assert_frame_equal(adata.var, before["var"])
    added = set(adata.obsm.keys()) - set(before["obsm"])
    assert added <= set(obsm), f"undocumented obsm keys {added - set(obsm)}"
    for k, v in before["obsm"].items():
        np.testing.assert_array_equal(dense(adata.obsm[k]), v)
    assert set(adata.varm.keys()) == set(before["varm"])
    added = set(adata.uns.keys()) - before["uns_keys"]
    assert added <= set(uns), f"undocumented uns keys {added - set(uns)}"
    for k in before["uns_keys"]:
        if k not in uns:  # a documented key may be updated
            assert repr(adata.uns[k]) == repr(before["uns"][k]), k


class Crash(Callback):
    """Simulate a crash (killed job, lost node) at the start of an epoch."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            msg = "simulated crash"
            raise RuntimeError(msg)


@pytest.fixture
def rel() -> SimpleNamespace:
    """Helpers of the reliability tests: ``small``, ``dense``, ``trained``, ``snapshot``, ``Crash`` and more."""
    return SimpleNamespace(
        Crash=Crash,
        small=small,
        dense=dense,
        trained=trained,
        snapshot=snapshot,
        assert_unchanged=assert_unchanged,
        MODEL_KWARGS=dict(MODEL_KWARGS),
        TRAIN_KWARGS=dict(TRAIN_KWARGS),
        REGISTRATION_OBS=REGISTRATION_OBS,
        REGISTRATION_UNS=REGISTRATION_UNS,
        REGISTRATION_OBSM=REGISTRATION_OBSM,
    )


@pytest.fixture(scope="module")
def model() -> SemiMechVI:
    """A tiny model trained for one epoch on a fresh screen with batches (shared by a module's tests)."""
    return trained()
