"""Writing the assignment: the returned DataFrame and the ``obs`` columns and ``uns`` entry of the annotated AnnData."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from scmech._constants import GUIDE_SUMMARY_SUFFIXES, SCMECH_ADATA_KEYS

if TYPE_CHECKING:
    import anndata as ad

    from ._rules import _CellStats


def _assignment_frame(
    guide_col: np.ndarray, pert_col: np.ndarray, stats: _CellStats, key_added: str, obs_names: pd.Index
) -> pd.DataFrame:
    """Collect the assignment and the guide summary in the DataFrame that :func:`assign_guides` returns.

    Parameters
    ----------
    guide_col
        Assigned guide(s) of each cell.
    pert_col
        Perturbation label of each cell.
    stats
        Per-cell guide summary.
    key_added
        Prefix of the columns.
    obs_names
        Names of the annotated cells (copied as the index).

    Returns
    -------
    DataFrame with the ``{key_added}_*`` columns.
    """
    p = key_added
    n_guides, umis, max_umis, max_fraction = (f"{p}{s}" for s in GUIDE_SUMMARY_SUFFIXES)
    return pd.DataFrame(
        {
            f"{p}_guide": pd.Categorical(guide_col.astype(str)),
            f"{p}_perturbation": pd.Categorical(pert_col.astype(str)),
            n_guides: stats.n_guides.astype(np.int64),
            umis: np.round(stats.total).astype(np.int64),
            max_umis: np.round(stats.max_umis).astype(np.int64),
            max_fraction: stats.frac.astype(np.float64),
        },
        index=obs_names.copy(),
    )


def _write_assignment(out: ad.AnnData, df: pd.DataFrame, key_added: str, params: dict) -> None:
    """Write the columns of ``df`` into ``out.obs``, and the parameters and cells per label into ``out.uns``.

    Parameters
    ----------
    out
        The AnnData to annotate.
    df
        The assignment, indexed like ``out.obs``.
    key_added
        Prefix of the columns and key of ``out.uns``.
    params
        Parameters of the assignment.
    """
    for c in df.columns:
        out.obs[c] = df[c].to_numpy() if not isinstance(df[c].dtype, pd.CategoricalDtype) else df[c].values
    uns = out.uns.setdefault(key_added, {})
    uns[SCMECH_ADATA_KEYS.GUIDES_UNS] = {
        "params": params,
        "n_cells": {str(k): int(v) for k, v in df[f"{key_added}_perturbation"].value_counts().items()},
    }


def _check_uns_slot(out: ad.AnnData, key_added: str) -> None:
    """Refuse to write when ``out.uns[key_added]`` holds something other than a dictionary (nothing is written then).

    Parameters
    ----------
    out
        The AnnData to annotate.
    key_added
        Key of ``out.uns`` that receives the parameters.

    Raises
    ------
    ValueError
        When ``out.uns[key_added]`` exists and is not a dictionary.
    """
    slot = out.uns.get(key_added)
    if slot is not None and not isinstance(slot, MutableMapping):
        msg = (
            f"adata.uns[{key_added!r}] holds a {type(slot).__name__}, not a dictionary, so the assignment's parameters "
            f"cannot be stored under it; pass another key_added=... (or inplace=False)."
        )
        raise ValueError(msg)
