from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "agg")

# the tests train tiny models made of many small tensor operations: with pytest-xdist's workers on a 2-core
# machine, intra-op threads only add contention (epochs run 10x slower), so each worker uses one thread
import torch

torch.set_num_threads(1)
logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)

#: the shared data folder of a development checkout (absent in a bare clone)
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "papalexi2021_thp1_eccite"


@pytest.fixture(autouse=True)
def _seed():
    import scvi

    scvi.settings.seed = 0


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip("the shared data folder is not available next to this checkout")
    return SHARED_DATA
