"""Small data and trained models shared by the model tests.

Everything is tiny (a few hundred cells, 30 genes, 1-2 epochs). Training runs with one torch thread: the
minibatches are so small that intra-op threads only add contention on shared CPUs (a 4-epoch run takes
~1 s with one thread and >10 s with two busy ones).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING

import numpy as np
import pytest
import scvi

from scmech.data import simulate_perturbseq
from scmech.model import SemiMechVI

if TYPE_CHECKING:
    import anndata as ad

N_GENES = 30
#: conditions of the simulated screens with seed 0 (the network and targets do not depend on n_cells)
CONDITIONS = ("NT", "G0008", "G0009", "G0010", "G0021", "G0009+G0021")
#: keyword arguments of every training run in these tests
TRAIN_KWARGS = {"batch_size": 64, "enable_progress_bar": False, "log_every_n_steps": 1}
#: a small model
MODEL_KWARGS = {"n_latent": 4, "n_hidden": 16, "field_hidden": 8}


@cache
def _simulated(regime: str, n_cells: int, seed: int) -> ad.AnnData:
    return simulate_perturbseq(
        n_cells=n_cells, n_genes=N_GENES, n_perturbations=4, n_combinations=1, seed=seed, regime=regime
    )


def simulated(regime: str = "steady_state", n_cells: int = 240, seed: int = 0) -> ad.AnnData:
    """A fresh copy of a small simulated screen (targets G0008, G0009, G0010, G0021 and G0009+G0021)."""
    adata = _simulated(regime, n_cells, seed).copy()
    adata.obs["perturbation"] = adata.obs["perturbation"].astype(str)
    if seed == 0:  # the tests name these conditions; fail loudly if the simulator's choice ever changes
        assert set(adata.obs["perturbation"]) == set(CONDITIONS), set(adata.obs["perturbation"])
    return adata


@pytest.fixture
def make_adata():
    """Factory of fresh small simulated AnnDatas: ``make_adata(regime="dynamic", n_cells=240)``."""
    return simulated


@pytest.fixture
def small_adata() -> ad.AnnData:
    """120 steady-state cells, not registered."""
    return simulated(n_cells=120)


@pytest.fixture
def train_kwargs() -> dict:
    return dict(TRAIN_KWARGS)


@pytest.fixture
def model_kwargs() -> dict:
    return dict(MODEL_KWARGS)


def tiny_model_without(
    adata: ad.AnnData, held: np.ndarray, *, max_epochs: int, batch_size: int = 128, **model_kwargs
) -> tuple[SemiMechVI, np.ndarray]:
    """A small model (seed 0) trained on every cell of a registered ``adata`` but ``held`` (the test set, no
    validation cells); returns it and the training rows."""
    train = np.setdiff1d(np.arange(adata.n_obs), held)
    scvi.settings.seed = 0
    model = SemiMechVI(adata, **model_kwargs, **MODEL_KWARGS)
    model.train(
        max_epochs=max_epochs,
        batch_size=batch_size,
        enable_progress_bar=False,
        datasplitter_kwargs={"external_indexing": [train, np.array([], dtype=int), held]},
    )
    return model, train


@dataclass
class Trained:
    """A trained model with the split it was given."""

    model: SemiMechVI = field(repr=False)  # scvi-tools models print their summary in __repr__
    adata: ad.AnnData
    unassigned: np.ndarray
    heldout_target: str
    external: list[np.ndarray]


#: target whose cells are all held out of training in the steady-state fixture (a single, not in a combination)
HELDOUT = "G0010"


def train_steady() -> Trained:
    scvi.settings.seed = 0
    adata = simulated()
    labels = adata.obs["perturbation"].to_numpy().copy()
    perturbed = np.flatnonzero((labels != "NT") & (labels != HELDOUT))
    unassigned = perturbed[:12]
    labels[unassigned] = "unassigned"
    adata.obs["perturbation"] = labels
    SemiMechVI.setup_anndata(adata, perturbation_key="perturbation", control_label="NT", batch_key="batch")
    model = SemiMechVI(adata, **MODEL_KWARGS)
    held = np.flatnonzero(labels == HELDOUT)
    rest = np.setdiff1d(np.arange(adata.n_obs), held)
    rng = np.random.default_rng(0)
    rest = rng.permutation(rest)
    n_val = 24
    # the training list deliberately includes the unassigned cells: train() must drop them
    external = [np.sort(rest[n_val:]), np.sort(rest[:n_val]), held]
    model.train(
        max_epochs=2, datasplitter_kwargs={"external_indexing": external}, check_val_every_n_epoch=1, **TRAIN_KWARGS
    )
    return Trained(model, adata, unassigned, HELDOUT, external)


def train_dynamic() -> Trained:
    scvi.settings.seed = 0
    adata = simulated("dynamic")
    SemiMechVI.setup_anndata(adata, batch_key="batch", time_key="time", media_key="media", media_time_key="media_time")
    model = SemiMechVI(adata, **MODEL_KWARGS)
    model.train(max_epochs=2, **TRAIN_KWARGS)
    return Trained(model, adata, np.array([], dtype=int), "", [])


@cache
def _train_dynamic_contexts() -> Trained:
    adata = simulate_perturbseq(
        1200, N_GENES, n_perturbations=4, n_combinations=0, regime="dynamic", media_switch_times=(-1.0, 1.0), seed=0
    )
    SemiMechVI.setup_anndata(adata, batch_key="batch", time_key="time", media_key="media", media_time_key="media_time")
    scvi.settings.seed = 0
    model = SemiMechVI(adata, n_latent=4, n_hidden=16, field_hidden=8)
    model.train(max_epochs=1, batch_size=128, enable_progress_bar=False)
    return Trained(model, adata, np.array([], dtype=int), "", [])


@pytest.fixture
def dynamic_contexts() -> Trained:
    """Dynamic model on 1,200 cells (media switched before and after the perturbation): enough controls per
    (medium, time, switch) context for the context anchoring. Shared and cached: do not modify it."""
    return _train_dynamic_contexts()


@pytest.fixture(scope="module")
def steady() -> Trained:
    """Steady-state model (fixed-point read-out) with 12 unassigned cells and ``HELDOUT`` held out."""
    return train_steady()


@pytest.fixture(scope="module")
def dynamic() -> Trained:
    """Dynamic model (time, media m0/m1, switch times) trained for 2 epochs."""
    return train_dynamic()
