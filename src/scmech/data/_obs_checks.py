"""Checks of the ``obs`` keys and columns, and the ``varm`` embedding, that registration reads.

Each refuses input that scvi-tools or torch would otherwise fail on deep inside (a list where one column is
expected, a column mixing ``1`` and ``"1"``, a sparse embedding) or turn into NaN during training (numbers beyond
the ``float32`` range that the data loaders use), naming the argument, the value and the fix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

__all__ = ["FLOAT32_MAX", "check_float32", "check_gene_embedding", "check_key_types", "check_mixed_types"]

#: the largest magnitude the data loaders (``float32``) hold
FLOAT32_MAX = float(np.finfo(np.float32).max)
#: the smallest positive ``float32`` (normal) number: smaller positive values become 0 or lose precision
FLOAT32_TINY = float(np.finfo(np.float32).tiny)


def check_float32(values: np.ndarray, key: str, what: str, *, positive: bool = False) -> None:
    """Refuse finite values that ``float32`` (the data loaders' type) cannot hold: they would train as inf or 0.

    Parameters
    ----------
    values
        The values as ``float64`` (NaN is left to the caller).
    key
        The ``obs`` column, as messages name it.
    what
        What the values are (e.g. ``"time"``).
    positive
        Also refuse positive values below the smallest ``float32`` number (they would become 0).

    Raises
    ------
    ValueError
        For values out of the ``float32`` range.
    """
    finite = values[np.isfinite(values)]
    big = np.abs(finite) > FLOAT32_MAX
    small = (finite > 0) & (finite < FLOAT32_TINY) if positive else np.zeros(finite.shape, dtype=bool)
    if big.any() or small.any():
        bad = finite[big | small]
        msg = (
            f"obs[{key!r}] has {bad.size} {what} values beyond the float32 range used in training (e.g. {bad[0]:g}; "
            f"magnitudes from {FLOAT32_TINY:.1e} to {FLOAT32_MAX:.1e}): they would train as 0 or infinity. Rescale "
            "them (e.g. other units)."
        )
        raise ValueError(msg)


def check_key_types(single: dict[str, object], lists: dict[str, object]) -> None:
    """Refuse ``obs`` keys of the wrong kind: one column name per single key, a list of distinct names per list key.

    Parameters
    ----------
    single
        Argument name to its value, for arguments naming one ``obs`` column (or ``None``).
    lists
        Argument name to its value, for arguments naming a list of ``obs`` columns (or ``None``).

    Raises
    ------
    TypeError
        For a single key that is not a string, or a list that holds something other than strings.
    ValueError
        For a list that names a column twice.
    """
    for arg, key in single.items():
        if key is not None and not isinstance(key, str):
            hint = f" (pass {arg}={key[0]!r})" if isinstance(key, list | tuple) and len(key) == 1 else ""
            optional = "" if arg == "perturbation_key" else " or None"
            msg = f"{arg}={key!r} must be the name of one obs column (a string){optional}{hint}."
            raise TypeError(msg)
    for arg, keys in lists.items():
        if keys is None:
            continue
        if not all(isinstance(k, str) for k in keys):
            msg = f"{arg}={keys!r} must be a list of obs column names (strings)."
            raise TypeError(msg)
        dup = sorted({k for k in keys if list(keys).count(k) > 1})
        if dup:
            msg = f"{arg}={list(keys)!r} names {dup} more than once; list each column once."
            raise ValueError(msg)


def check_mixed_types(adata: AnnData, keys: Sequence[tuple[str | None, str]]) -> None:
    """Refuse categorical ``obs`` columns whose values mix types (``1`` and ``"1"``), which no category order sorts.

    Parameters
    ----------
    adata
        The AnnData to register.
    keys
        ``(column, argument name)`` pairs; ``None`` columns are skipped.

    Raises
    ------
    TypeError
        For a column whose values (or categories) are of several types.
    """
    for key, what in keys:
        if key is None or key not in adata.obs.columns:
            continue
        col = adata.obs[key]
        values = col.cat.categories if isinstance(col.dtype, pd.CategoricalDtype) else col.dropna().unique()
        kinds = {_kind(v) for v in values}
        if len(kinds) > 1:
            msg = (
                f"{what} obs[{key!r}] mixes value types ({sorted(kinds)}), e.g. 1 and '1', which read as different "
                f"categories that print alike. Make them one type: adata.obs[{key!r}] = adata.obs[{key!r}].astype(str)."
            )
            raise TypeError(msg)


def _kind(value: object) -> str:
    """Return the kind of a category value: ``"bool"``, ``"number"``, ``"str"`` or its type's name."""
    if isinstance(value, bool | np.bool_):
        return "bool"
    if isinstance(value, int | float | np.number):
        return "number"
    return "str" if isinstance(value, str) else type(value).__name__


def check_gene_embedding(adata: AnnData, key: str | None) -> None:
    """Check a gene embedding in ``varm``: a dense, numeric, finite genes x features matrix with a feature.

    Parameters
    ----------
    adata
        The AnnData to register.
    key
        The ``varm`` key, or ``None``.

    Raises
    ------
    KeyError
        When ``key`` is not in ``adata.varm``.
    TypeError
        For a sparse or non-numeric embedding, or one that is not 2-D.
    ValueError
        For an embedding without features or with NaN or infinite values.
    """
    if key is None:
        return
    if key not in adata.varm:
        msg = f"gene_embedding_key {key!r} is not in adata.varm (keys: {list(adata.varm.keys())})."
        raise KeyError(msg)
    raw = adata.varm[key]
    if sp.issparse(raw):
        msg = (
            f"varm[{key!r}] is a sparse matrix; store the embedding dense: "
            f"adata.varm[{key!r}] = adata.varm[{key!r}].toarray()."
        )
        raise TypeError(msg)
    emb = np.asarray(raw)
    if not np.issubdtype(emb.dtype, np.number) or np.iscomplexobj(emb) or emb.ndim != 2:
        msg = f"varm[{key!r}] must be a numeric genes x features matrix, got dtype {emb.dtype} with shape {emb.shape}."
        raise TypeError(msg)
    if emb.shape[1] == 0:
        msg = f"varm[{key!r}] has no features (shape {emb.shape}); pass an embedding with at least one column."
        raise ValueError(msg)
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        names = list(adata.var_names[bad][:3])
        msg = (
            f"varm[{key!r}] has NaN or infinite values for {int(bad.sum())} genes (e.g. {names}); fill them, or drop "
            "those genes, before registering."
        )
        raise ValueError(msg)
