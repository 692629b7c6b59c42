"""Checks of the baselines' arguments: sizes, penalties, gene embeddings and split indices."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["check_embedding", "check_indices", "check_nonnegative", "check_positive_int"]


def check_positive_int(value: Any, name: str, default: int) -> int:
    """Return ``value`` as an ``int``; refuse booleans, non-integers and values below 1.

    Parameters
    ----------
    value
        The argument.
    name
        Its name, for messages.
    default
        Its default, as an example in messages.

    Returns
    -------
    The value as an ``int``.

    Raises
    ------
    TypeError
        For a value that is not an integer (``2.7``, ``"10"``, ``True``).
    ValueError
        For a value below 1.
    """
    integral = isinstance(value, int | np.integer) or (
        isinstance(value, float | np.floating) and float(value).is_integer()
    )
    if isinstance(value, bool | np.bool_) or not integral:
        msg = f"{name}={value!r} must be a positive integer, e.g. {name}={default}."
        raise TypeError(msg)
    if value < 1:
        msg = f"{name}={value!r} must be >= 1, e.g. {name}={default}."
        raise ValueError(msg)
    return int(value)


def check_nonnegative(value: Any, name: str, default: float) -> float:
    """Return ``value`` as a ``float``; refuse non-numbers and values that are negative or not finite.

    Parameters
    ----------
    value
        The argument.
    name
        Its name, for messages.
    default
        Its default, as an example in messages.

    Returns
    -------
    The value as a ``float``.

    Raises
    ------
    TypeError
        For a value that is not a real number.
    ValueError
        For a negative, NaN or infinite value.
    """
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating):
        msg = f"{name}={value!r} must be a number >= 0, e.g. {name}={default}."
        raise TypeError(msg)
    if not (np.isfinite(value) and value >= 0):
        msg = f"{name}={value!r} must be a finite number >= 0, e.g. {name}={default}."
        raise ValueError(msg)
    return float(value)


def check_embedding(g: Any, key: str, n_genes: int) -> np.ndarray:
    """Return the gene embedding ``adata.varm[key]`` as a float array; refuse a wrong shape or missing values.

    Parameters
    ----------
    g
        The embedding (genes x K).
    key
        Its ``varm`` key, for messages.
    n_genes
        The number of registered genes.

    Returns
    -------
    The embedding as a float64 array.

    Raises
    ------
    ValueError
        For an embedding that is not genes x K or holds NaN or infinite values.
    """
    g = np.asarray(g, dtype=np.float64)
    if g.ndim != 2 or g.shape[0] != n_genes or g.shape[1] < 1:
        msg = f"adata.varm[{key!r}] must be genes x K ({n_genes} rows), got shape {g.shape}."
        raise ValueError(msg)
    bad = ~np.isfinite(g)
    if bad.any():
        genes = np.flatnonzero(bad.any(axis=1))
        msg = (
            f"adata.varm[{key!r}] holds {int(bad.sum())} NaN or infinite values (rows {genes[:5].tolist()}); every "
            "prediction would be NaN. Impute them (e.g. with 0) or use gene_embedding='training_data'."
        )
        raise ValueError(msg)
    return g


def check_indices(idx: Any, n: int, where: str) -> np.ndarray:
    """Return split indices as ``int64``; refuse boolean masks, non-integer values and indices outside the data.

    Parameters
    ----------
    idx
        One array of ``external_indexing``.
    n
        Number of cells of the registered data.
    where
        Which array it is (e.g. ``"external_indexing[0]"``), for messages.

    Returns
    -------
    The indices.

    Raises
    ------
    ValueError
        For a boolean mask, non-integer values and indices outside ``0..n-1`` (as SemiMechVI's ``train``).
    """
    arr = np.asarray(idx)
    if arr.dtype == bool:
        msg = (
            f"{where} is a boolean mask; external_indexing takes integer cell indices. Convert it with "
            "np.flatnonzero(mask) (or pass split.external_indexing)."
        )
        raise ValueError(msg)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        values = np.asarray(arr, dtype=np.float64) if np.issubdtype(arr.dtype, np.number) else None
        if values is None or not np.all(values == np.round(values)):
            msg = f"{where} holds non-integer values (dtype {arr.dtype}); pass integer cell indices."
            raise ValueError(msg)
    arr = arr.astype(np.int64).ravel()
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        msg = f"{where} holds indices outside 0..{n - 1}; was the split made on this AnnData?"
        raise ValueError(msg)
    return arr
