r"""The context a prediction was made in (batch, medium, read-out time, medium switch) and the cells observed there.

``predict`` writes each row's context into ``obs`` (``batch``, ``media``, ``time``, ``media_time``) and the obs
columns the model was registered with into its provenance (``uns["scmech"]["prediction"]["context_keys"]``,
:func:`~scmech.data._context.context_keys`).
A prediction at day 0.5 is scored against the cells observed at day 0.5 and their controls, never against every
cell of its condition pooled over days (:func:`context_mask`). scanpy, scvi-tools and pertpy score whatever cells
they are given; the context lives in scmech's own prediction format, so the matching is written here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from scmech._constants import SCMECH_ADATA_KEYS
from scmech.data._context import CONTEXT_FIELDS

if TYPE_CHECKING:
    from collections.abc import Mapping

    from anndata import AnnData

__all__ = ["context_mask", "prediction_context"]

#: batch values that mean "no batch asked for" (each starting cell's own, or the training cells' mix)
_UNSPECIFIED_BATCH = ("source cells", "training cells")
#: read-out times and switch times are matched to this tolerance
_TIME_TOL = 1e-6


def _specified(field: str, value: Any) -> bool:
    """Whether an ``obs`` entry (a scalar) names a context: not missing, and not a batch meaning "each cell's own"."""
    return not pd.isna(value) and not (field == "batch" and str(value) in _UNSPECIFIED_BATCH)


def _provenance_key(pred: AnnData, field: str) -> str | None:
    prov = pred.uns.get(SCMECH_ADATA_KEYS.UNS, {}).get(SCMECH_ADATA_KEYS.PREDICTION_UNS, {})
    keys = prov.get("context_keys") or {}
    key = keys.get(CONTEXT_FIELDS[field]) if isinstance(keys, dict) else None
    return None if key is None else str(key)


def prediction_context(
    predictions: Mapping[str, AnnData], keys: Mapping[str, str | None], fields: tuple[str, ...] = tuple(CONTEXT_FIELDS)
) -> dict[str, tuple]:
    """Return the one context every model's predictions name, with the obs column of each of its fields.

    Parameters
    ----------
    predictions
        Mean predictions by model name.
    keys
        The obs column of each context field given by the caller (``{"time": "time", ...}``; ``None``: the
        column the predictions' model was registered with, from their provenance).
    fields
        The context fields to read (the others are ignored).

    Returns
    -------
    ``{field: (column, value)}`` for each field some row specifies (a batch other than each cell's own, a
    medium, a read-out time or a switch time).

    Raises
    ------
    ValueError
        When the rows name several values of a field (several contexts; evaluate one at a time), or when a field is
        specified but no column is known for it.
    """
    found: dict[str, tuple] = {}
    for field, arg in CONTEXT_FIELDS.items():
        if field not in fields:
            continue
        values: dict[Any, list[str]] = {}
        column = keys.get(field)
        for name, pred in predictions.items():
            if field not in pred.obs.columns:
                continue
            vals = [v for v in pred.obs[field].tolist() if _specified(field, v)]
            for v in vals:
                values.setdefault(_normalised(field, v), []).append(name)
            if vals and column is None:
                column = _provenance_key(pred, field)
        if not values:
            continue
        if len(values) > 1:
            shown = sorted(values, key=str)[:5]
            example = shown[0] if field in ("time", "media_time") else repr(shown[0])
            msg = (
                f"The predictions name several values of obs[{field!r}] ({shown}); evaluate one context at a time, "
                f"e.g. pred[pred.obs[{field!r}] == {example}] (its observed cells and controls are those of that "
                "context)."
            )
            raise ValueError(msg)
        value = next(iter(values))
        if column is None:
            msg = (
                f"The predictions of {sorted(set(values[value]))} are made at {field} = {value!r} (their "
                f"obs[{field!r}]), but no obs column of adata is known for it (their model's provenance names none): "
                f"pass {arg}= (the column of adata holding each cell's {field}), so that they are scored against the "
                "cells observed there."
            )
            raise ValueError(msg)
        found[field] = (column, value)
    return found


def _normalised(field: str, value: Any) -> Any:
    if field in ("time", "media_time"):
        return float(value)
    return str(value)


def context_mask(adata: AnnData, context: Mapping[str, tuple]) -> np.ndarray:
    """Return the cells of ``adata`` in the context (every cell when it is empty).

    Parameters
    ----------
    adata
        The observed data.
    context
        ``{field: (column, value)}`` from :func:`prediction_context`.

    Returns
    -------
    A boolean mask over the cells of ``adata``.

    Raises
    ------
    KeyError
        For a column that is not in ``adata.obs``.
    ValueError
        When no cell of ``adata`` is in the context, or a time column is not numeric.
    """
    mask = np.ones(adata.n_obs, dtype=bool)
    for field, (column, value) in context.items():
        if column not in adata.obs.columns:
            msg = (
                f"The predictions are made at {field} = {value!r}, read from adata.obs[{column!r}], which adata does "
                f"not have; pass {CONTEXT_FIELDS[field]}= naming the column of adata that holds each cell's {field}."
            )
            raise KeyError(msg)
        col = adata.obs[column]
        if field in ("time", "media_time"):
            try:
                times = pd.to_numeric(col, errors="raise").to_numpy(dtype=np.float64)
            except (TypeError, ValueError) as e:
                msg = f"adata.obs[{column!r}] must hold numeric {field}s to match the predictions' {field} {value!r}."
                raise ValueError(msg) from e
            here = np.isclose(times, value, rtol=0.0, atol=_TIME_TOL)
        else:
            here = col.astype(str).to_numpy() == value
        if not here.any():
            seen = sorted(pd.unique(col.dropna()).tolist(), key=str)[:8]
            msg = (
                f"No cell of adata has {field} = {value!r} (adata.obs[{column!r}] holds {seen}): nothing was observed "
                "in the context these predictions are made in, so there is nothing to score them against."
            )
            raise ValueError(msg)
        mask &= here
    return mask
