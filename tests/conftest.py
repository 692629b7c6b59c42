from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "agg")

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
