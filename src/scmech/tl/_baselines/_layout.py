r"""The prediction AnnData every baseline returns: the layout of ``SemiMechVI.predict(return_mean=True)``."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd

from scmech._constants import SCMECH_ADATA_KEYS
from scmech.data._log_scale import expression_of

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData


def _prediction_anndata(
    logx: np.ndarray,
    obs_rows: list[dict],
    var_names: Sequence[str],
    provenance: dict,
    *,
    base: float | None = math.e,
) -> AnnData:
    r"""AnnData with the layout of ``SemiMechVI.predict(return_mean=True)``.

    Parameters
    ----------
    logx
        Predicted :math:`\log(1 + 10^4\bar\rho)`, one row per entry of ``obs_rows``.
    obs_rows
        ``obs`` of each row: ``perturbation``, ``media``, ``time``, ``media_time``, ``batch``, ``n_cells``, ...
    var_names
        Genes.
    provenance
        Stored in ``uns["scmech"]["prediction"]``.
    base
        Base of the logarithm of ``logx`` (:math:`e` for counts' pseudobulks, log1p input's own), ``None`` for
        values that stand for no expression (centred or scaled input): no ``"expression"`` layer then.

    Returns
    -------
    ``X`` the float32 prediction, ``layers["expression"]`` the expression it stands for (:math:`b^{x} - 1`); rows named
    ``"perturbation|media|time"`` (or the perturbation alone without a context), made unique when needed.
    """
    logx = np.asarray(logx, dtype=np.float64)
    obs = pd.DataFrame(obs_rows)
    index = [
        f"{r['perturbation']}|{r['media']}|{r['time']:g}"
        if (r["media"] is not None or np.isfinite(r["time"]))
        else r["perturbation"]
        for r in obs_rows
    ]
    obs.index = pd.Index(index).astype(str)
    if not obs.index.is_unique:
        obs.index = [f"{i}#{k}" for k, i in enumerate(obs.index)]
    for c in ("perturbation", "batch"):
        obs[c] = obs[c].astype(str).astype("category")
    # without media the column is missing (NaN), not the string "None"
    obs["media"] = pd.Categorical([None if pd.isna(m) else str(m) for m in obs["media"]])
    obs["n_cells"] = obs["n_cells"].astype(np.int64)
    obs["time"] = obs["time"].astype(np.float64)
    obs["media_time"] = obs["media_time"].astype(np.float64)
    out = ad.AnnData(
        X=logx.astype(np.float32),
        obs=obs,
        var=pd.DataFrame(index=pd.Index(var_names, dtype=str).copy()),
        layers={} if base is None else {"expression": expression_of(logx, base)},
    )
    out.uns[SCMECH_ADATA_KEYS.UNS] = {SCMECH_ADATA_KEYS.PREDICTION_UNS: provenance}
    return out
