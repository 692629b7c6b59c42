"""What the pertpy tools share: the lazy pertpy import, dense matrices, obs columns and the side labels."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    from types import ModuleType

    import pandas as pd
    from anndata import AnnData

#: ``obs["source"]`` of predicted and observed rows
PREDICTED, OBSERVED = "predicted", "observed"


def _import_pertpy(what: str) -> ModuleType:
    """Import pertpy, naming the ``scmech[pertpy]`` extra when it is missing."""
    try:
        import pertpy as pt
    except ImportError as e:
        msg = f"{what} needs pertpy: pip install 'scmech[pertpy]' ({e})."
        raise ImportError(msg) from e
    return pt


def _dense(x: Any) -> np.ndarray:
    """Return a dense array of a (possibly sparse) matrix."""
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def _obs_column(adata: AnnData, key: str, what: str) -> pd.Series:
    """``adata.obs[key]``, or a ``KeyError`` naming the argument ``what`` that gave the key.

    Not :func:`scmech.data._design._obs_column`: the message differs (``"score_key: 'p' is not a column ...;
    pass score_key=..."`` here, the first 10 columns; ``"batch_key 'b' is not a column ..."`` there, the first 12),
    and the messages of the pertpy tools are part of their behaviour.
    """
    if key not in adata.obs.columns:
        msg = f"{what}: {key!r} is not a column of adata.obs (columns: {list(adata.obs.columns)[:10]}); pass {what}=..."
        raise KeyError(msg)
    return adata.obs[key]
