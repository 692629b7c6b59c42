from __future__ import annotations

import logging
import os

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "agg")

# the tests train tiny models made of many small tensor operations: with pytest-xdist's workers on a 2-core
# machine, intra-op threads only add contention (epochs run 10x slower), so each worker uses one thread
import torch

torch.set_num_threads(1)
logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)

#: the obs columns that begin every prediction, of SemiMechVI and of each baseline (each adds its own after them)
PREDICTION_OBS = ("perturbation", "media", "time", "media_time", "batch", "n_cells", "unseen_targets")


def _baseline_predictions(adata, split, conditions: dict) -> dict:
    """Predictions of ``conditions``, ``{baseline class: conditions to predict}``: each baseline is registered with
    default keys on its own copy of ``adata``, trained on ``split`` and asked in turn; by class name."""
    preds = {}
    for cls, conds in conditions.items():
        a = adata.copy()
        cls.setup_anndata(a)
        m = cls(a)
        m.train(datasplitter_kwargs={"external_indexing": split.external_indexing})
        preds[cls.__name__] = m.predict(conds)
    return preds


@pytest.fixture
def prediction_obs() -> list[str]:
    """The obs columns that begin every prediction (``PREDICTION_OBS``)."""
    return list(PREDICTION_OBS)


@pytest.fixture
def baseline_predictions():
    """Factory of baselines' predictions: ``baseline_predictions(adata, split, {cls: conditions})``."""
    return _baseline_predictions


@pytest.fixture(autouse=True)
def _seed():
    import scvi

    scvi.settings.seed = 0


@pytest.fixture
def rng():
    return np.random.default_rng(0)
