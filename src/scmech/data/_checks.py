"""Input checks shared by models and tools: each failure names the key, the value and the fix."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scmech._numbers import check_flag

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from anndata import AnnData

__all__ = [
    "BackedRows",
    "check_adata",
    "check_expression",
    "check_flag",
    "check_unique_names",
    "is_backed_matrix",
    "iter_row_chunks",
    "looks_like_counts",
    "rows_in_memory",
    "scmech_uns",
]

#: Rows read at a time from a backed (on-disk) matrix.
CHUNK_ROWS = 10_000


class BackedRows:
    """Lazy selection of rows of a backed (on-disk) matrix; rows are read in blocks only when needed.

    Indexing by rows (an integer array, a boolean mask or a slice) returns another lazy selection, so that code
    written for in-memory matrices (``x[train_indices]``) does not load a backed matrix; :func:`iter_row_chunks`
    reads it block by block, ``sum`` reduces it that way, and ``toarray``/``np.asarray`` load it (for small
    selections).

    Parameters
    ----------
    matrix
        anndata's backed sparse dataset or an h5py dataset (cells x genes).
    rows
        Positions of the selected rows, in order; all rows when ``None``.
    """

    def __init__(self, matrix, rows: np.ndarray | None = None) -> None:
        self.matrix = matrix
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of the selection."""
        n = self.matrix.shape[0] if self.rows is None else len(self.rows)
        return (n, self.matrix.shape[1])

    @property
    def dtype(self):
        """Data type of the stored values."""
        return self.matrix.dtype

    def _positions(self) -> np.ndarray:
        return np.arange(self.matrix.shape[0]) if self.rows is None else self.rows

    def __getitem__(self, key):
        if isinstance(key, tuple):
            rows, cols = key
            return self[rows].toarray_like()[:, cols]
        pos = self._positions()
        if isinstance(key, slice):
            return BackedRows(self.matrix, pos[key])
        key = np.asarray(key)
        if key.dtype == bool:
            if len(key) != len(pos):
                msg = f"Boolean row mask of length {len(key)} for {len(pos)} rows."
                raise IndexError(msg)
            return BackedRows(self.matrix, pos[key])
        if key.ndim == 0:
            return BackedRows(self.matrix, pos[[int(key)]])
        return BackedRows(self.matrix, pos[key.astype(np.int64)])

    def _read(self, rows: np.ndarray):
        """Read the given rows (in this order) into memory."""
        if len(rows) == 0:
            return self.matrix[0:0]
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        lo, hi = int(srt[0]), int(srt[-1]) + 1
        if hi - lo <= 4 * len(srt):
            # a dense run of rows: one contiguous read, then select
            block = self.matrix[lo:hi][srt - lo]
        else:
            uniq, inverse = np.unique(srt, return_inverse=True)
            block = self.matrix[uniq][inverse]
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        return block[back]

    def blocks(self, chunk_rows: int = CHUNK_ROWS) -> Iterator[tuple[int, object]]:
        """Yield ``(start, block)``: consecutive in-memory blocks of the selected rows."""
        pos = self._positions()
        for start in range(0, len(pos), chunk_rows):
            yield start, self._read(pos[start : start + chunk_rows])

    def toarray_like(self):
        """Load the selection into memory (sparse stays sparse)."""
        blocks = [b for _, b in self.blocks()]
        if not blocks:
            return self._read(np.array([], dtype=np.int64))
        return sp.vstack(blocks, format="csr") if sp.issparse(blocks[0]) else np.concatenate(blocks)

    def toarray(self) -> np.ndarray:
        """Load the selection into a dense array."""
        x = self.toarray_like()
        return x.toarray() if sp.issparse(x) else np.asarray(x)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        x = self.toarray()
        return x if dtype is None else x.astype(dtype)

    def sum(self, axis: int | None = None):
        """Sum over the selection (read block by block), like ``scipy.sparse`` (2-D ``matrix`` results)."""
        if axis is None:
            return float(sum(np.asarray(b.sum()) for _, b in self.blocks()))
        if axis in (1, -1):
            return np.concatenate(
                [np.asarray(b.sum(axis=1, dtype=np.float64)).reshape(-1, 1) for _, b in self.blocks()] or [[]]
            )
        total = np.zeros((1, self.shape[1]), dtype=np.float64)
        for _, b in self.blocks():
            total += np.asarray(b.sum(axis=0, dtype=np.float64), dtype=np.float64).reshape(1, -1)
        return total


def is_backed_matrix(x) -> bool:
    """Whether ``x`` is the on-disk matrix of a backed AnnData (or a :class:`BackedRows` selection of one)."""
    if sp.issparse(x) or isinstance(x, np.ndarray):
        return False
    if isinstance(x, BackedRows):
        return True
    import h5py
    from anndata.abc import CSCDataset, CSRDataset

    return isinstance(x, CSRDataset | CSCDataset | h5py.Dataset)


def rows_in_memory(x, rows: np.ndarray | None = None):
    """Rows of a matrix in memory, in the given order (all rows when ``None``); sparse stays sparse.

    In-memory matrices are indexed as usual. The on-disk matrix of a backed AnnData is read in blocks of rows
    (:class:`BackedRows`), so that rows in any order (e.g. grouped by condition) can be taken: h5py refuses
    unsorted indices, and anndata's backed sparse datasets are not ``scipy.sparse`` matrices.

    Parameters
    ----------
    x
        Dense or sparse matrix (cells x genes), or the on-disk matrix of a backed AnnData.
    rows
        Positions (or a boolean mask) of the rows to read.

    Returns
    -------
    A dense ``numpy`` array or a ``scipy.sparse`` matrix.
    """
    if is_backed_matrix(x):
        sel = x if isinstance(x, BackedRows) else BackedRows(x)
        return (sel if rows is None else sel[rows]).toarray_like()
    return x if rows is None else x[rows]


def iter_row_chunks(x, chunk_rows: int = CHUNK_ROWS) -> Iterator[tuple[int, object]]:
    """Yield ``(start, block)`` with consecutive in-memory row blocks of a matrix.

    In-memory matrices are yielded whole (one block); backed matrices are read ``chunk_rows`` rows at a time, so
    memory is bounded by the block size, not by the size of the matrix.
    """
    if not is_backed_matrix(x):
        yield 0, x
        return
    yield from (x if isinstance(x, BackedRows) else BackedRows(x)).blocks(chunk_rows)


def _values(x) -> np.ndarray:
    if sp.issparse(x):
        return np.asarray(x.data)
    if hasattr(x, "compute") and not isinstance(x, np.ndarray):  # dask
        msg = "Lazy (dask) matrices are checked chunk by chunk; call check_expression on each chunk."
        raise TypeError(msg)
    return np.asarray(x)


def check_expression(x, where: str, *, counts: bool = True, max_check: int | None = 50_000_000) -> None:
    """Check an expression matrix: finite values, and non-negative integers when ``counts``.

    Parameters
    ----------
    x
        Dense or sparse matrix (cells x genes), or the on-disk matrix of a backed AnnData (read in blocks of rows,
        never whole).
    where
        Where the matrix lives (e.g. ``"adata.X"`` or ``"adata.layers['counts']"``), for messages.
    counts
        Require non-negative integers.
    max_check
        Check at most this many stored values (the first ones) to bound the cost on huge data.
    """
    if is_backed_matrix(x):
        budget = max_check
        for _, block in iter_row_chunks(x):
            _check_values(_values(block).ravel(), where, counts=counts, max_check=budget)
            if budget is not None:
                budget -= _values(block).size
                if budget <= 0:
                    break
        return
    if not (sp.issparse(x) or isinstance(x, np.ndarray)):
        try:
            x = x[: min(x.shape[0], 10_000)]
            x = x if (sp.issparse(x) or isinstance(x, np.ndarray)) else np.asarray(x)
        except Exception as e:
            msg = f"Cannot read {where} of type {type(x).__name__} to check it: {e}"
            raise TypeError(msg) from e
    _check_values(_values(x).ravel(), where, counts=counts, max_check=max_check)


def _check_values(vals: np.ndarray, where: str, *, counts: bool, max_check: int | None) -> None:
    if max_check is not None and vals.size > max_check:
        vals = vals[:max_check]
    if not np.issubdtype(vals.dtype, np.number):
        msg = f"{where} has non-numeric dtype {vals.dtype}; convert it to float or integer counts."
        raise TypeError(msg)
    if np.issubdtype(vals.dtype, np.floating):
        bad = ~np.isfinite(vals)
        if bad.any():
            msg = f"{where} has {int(bad.sum())} NaN or infinite values; remove or impute them before registering."
            raise ValueError(msg)
    if not counts:
        return
    if (vals < 0).any():
        msg = (
            f"{where} has {int((vals < 0).sum())} negative values (min {vals.min():g}); raw counts are "
            "non-negative. Register the raw counts layer (layer=...), or declare non-count data with "
            "gene_likelihood='normal' and counts=False."
        )
        raise ValueError(msg)
    if np.issubdtype(vals.dtype, np.floating):
        frac = np.abs(vals - np.round(vals)) > 1e-6
        if frac.any():
            # every digit the stored float needs (213.00002, not 213), so that the fraction shows
            example = str(vals[frac][0])
            msg = (
                f"{where} holds non-integer values (e.g. {example}): it looks normalised or log-transformed. "
                "Register the raw counts (layer='counts'), or declare log-normalised data with "
                "gene_likelihood='normal' (setup_anndata(..., counts=False))."
            )
            off = float(np.abs(vals[frac] - np.round(vals[frac])).max())
            if off < 1e-3:
                msg += (
                    f" Every non-integer value lies within {off:.1g} of a whole number: if these are counts with "
                    "rounding error, round them first (np.rint)."
                )
            raise ValueError(msg)


def looks_like_counts(x, rows: int = 10_000) -> float | None:
    r"""Largest value of ``x`` when its first ``rows`` rows hold only non-negative integers above 1, else ``None``.

    Log-normalised values are fractional; raw counts registered as ``counts=False`` (log-normalised input) would
    be read as levels of :math:`\log(1 + x)` and turned back into expressions of :math:`e^{x} - 1`.
    """
    if is_backed_matrix(x):
        _, block = next(iter_row_chunks(x))
    elif sp.issparse(x) or isinstance(x, np.ndarray):
        block = x[: min(x.shape[0], rows)]
    else:
        return None  # a lazy or exotic matrix: checked by check_expression, not sampled here
    vals = _values(block).ravel()
    if vals.size == 0 or not np.issubdtype(vals.dtype, np.number) or (vals < 0).any():
        return None
    top = float(vals.max())
    if top <= 1 or (np.issubdtype(vals.dtype, np.floating) and (np.abs(vals - np.round(vals)) > 1e-6).any()):
        return None
    return top


def check_unique_names(names: Sequence[Any] | pd.Index, where: str, fix: str) -> None:
    """Refuse duplicated cell or gene names, which name-based matching cannot tell apart.

    Parameters
    ----------
    names
        The names (``obs_names`` or ``var_names``).
    where
        What they are, to start the message (e.g. ``"adata.var_names"``).
    fix
        The call that makes them unique (e.g. ``"adata.var_names_make_unique()"``).

    Raises
    ------
    ValueError
        When a name occurs more than once.
    """
    names = pd.Index(names)
    if not names.is_unique:
        dup = names[names.duplicated()].unique().tolist()[:5]
        msg = f"{where} has {int(names.duplicated().sum())} duplicates (e.g. {dup}); call {fix}."
        raise ValueError(msg)


def check_adata(adata: AnnData, *, allow_view: bool = False) -> None:
    """Check an AnnData before registration: not a view, unique names, no empty cells or genes."""
    if adata.is_view and not allow_view:
        msg = (
            "adata is a view of another AnnData; registering would write into a copy and lose the link. "
            "Call adata = adata.copy() first."
        )
        raise ValueError(msg)
    check_unique_names(adata.obs_names, "adata.obs_names", "adata.obs_names_make_unique()")
    check_unique_names(adata.var_names, "adata.var_names", "adata.var_names_make_unique()")
    if adata.n_obs == 0 or adata.n_vars == 0:
        msg = f"adata has shape {adata.shape}; it needs cells and genes."
        raise ValueError(msg)


def check_empty_cells_genes(x, where: str, *, counts: bool = True) -> tuple[int, int]:
    """Raise for cells without counts; return the number of all-zero genes (a warning for the caller).

    Backed matrices are summed in blocks of rows.

    Returns
    -------
    ``(n_zero_cells, n_zero_genes)``; ``n_zero_cells`` is always 0 (else this raises).
    """
    if not counts:
        return 0, 0
    zero_cells = 0
    gene_sums = np.zeros(x.shape[1], dtype=np.float64)
    for _, block in iter_row_chunks(x):
        zero_cells += int((np.asarray(block.sum(axis=1, dtype=np.float64)).ravel() <= 0).sum())
        gene_sums += np.asarray(block.sum(axis=0, dtype=np.float64), dtype=np.float64).ravel()
    if zero_cells:
        msg = (
            f"{where} has {zero_cells} cells without any counts; they carry no information and have no library "
            "size. Remove them first, e.g. sc.pp.filter_cells(adata, min_counts=1)."
        )
        raise ValueError(msg)
    return 0, int((gene_sums <= 0).sum())


def scmech_uns(adata: AnnData) -> MutableMapping:
    """Return ``adata.uns["scmech"]``, where scmech's functions store their results, creating it when absent.

    Raises
    ------
    ValueError
        When ``adata.uns["scmech"]`` exists and is not a dictionary: the result could not be stored under it.
    """
    slot = adata.uns.setdefault("scmech", {})
    if not isinstance(slot, MutableMapping):
        msg = (
            f"adata.uns['scmech'] holds a {type(slot).__name__}, not a dictionary, so the result cannot be stored "
            "under it; rename or delete that entry (del adata.uns['scmech'])."
        )
        raise ValueError(msg)
    return slot
