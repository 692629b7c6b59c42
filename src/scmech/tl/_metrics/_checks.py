r"""Checks of the inputs of an evaluation: DE test, prediction scale, finite rows and split indices."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from scmech._constants import TARGET_SUM
from scmech.data._checks import iter_row_chunks

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

__all__ = ["check_finite_rows", "log_data_max"]

#: tests of :func:`scanpy.tl.rank_genes_groups` accepted as ``de_method``
_DE_METHODS = ("t-test", "t-test_overestim_var", "wilcoxon", "logreg")

#: the largest value of :math:`\log(1 + 10^4\bar\rho)`: one gene holding all of a cell's counts
_MAX_LOG1P = float(np.log1p(TARGET_SUM))
#: predictions above ``_MAX_LOG1P`` by more than this are on another scale (room for extrapolating models)
_SCALE_MARGIN = 0.5


def _warn(msg: str, stacklevel: int = 2) -> None:
    """Issue a ``UserWarning`` attributed ``stacklevel`` frames above the caller of this function."""
    warnings.warn(msg, UserWarning, stacklevel=stacklevel + 1)


def _as_list(values: str | Sequence[Any] | None) -> list[Any] | None:
    """One label (a bare string) as a one-element list, a sequence as a list, ``None`` as is.

    A bare string would otherwise be iterated character by character (``"STAT1"`` -> ``S``, ``T``, ...).
    """
    if values is None:
        return None
    if isinstance(values, str):
        return [values]
    return list(values)


def _check_de_method(de_method: Any) -> None:
    """Refuse a ``de_method`` that :func:`scanpy.tl.rank_genes_groups` does not offer."""
    if de_method not in _DE_METHODS:
        msg = f"de_method={de_method!r} is not supported; use one of {list(_DE_METHODS)} (scanpy rank_genes_groups)."
        raise ValueError(msg)


def _check_scale(x: np.ndarray | sp.spmatrix, what: str, data_max: float | None = None) -> None:
    r"""Refuse predictions that cannot be on the :math:`\log(1 + 10^4\bar\rho)` scale (e.g. counts, ``expm1``).

    For log-normalised data (``data_max``, the largest observed value) the bound is that value when it is larger
    (another target sum).
    """
    if not sp.issparse(x):
        x = np.asarray(x)
    if (x.nnz if sp.issparse(x) else x.size) == 0:
        return
    top = float(x.max())
    bound = _MAX_LOG1P if data_max is None else max(_MAX_LOG1P, data_max)
    if top > bound + _SCALE_MARGIN:
        where = f"log1p(1e4) = {_MAX_LOG1P:.2f}" if bound == _MAX_LOG1P else f"the data's largest value {bound:.2f}"
        msg = (
            f"{what} reach {top:.4g}, above {where} (one gene holding all of a cell's counts): "
            "they are not on the log1p(10^4 proportion) scale. Predictions must be on that scale, as returned by "
            "predict(): not counts, counts per 10^4, np.expm1 of a prediction or another normalisation."
        )
        raise ValueError(msg)


def _check_finite_cells(x: np.ndarray | sp.spmatrix, what: str) -> None:
    """Refuse a per-cell prediction matrix with NaN or infinite values (the energy distance would be NaN).

    Parameters
    ----------
    x
        Cells x genes matrix.
    what
        What ``x`` is, to start the message (e.g. ``"cell_predictions['model']"``).

    Raises
    ------
    ValueError
        When a value is NaN or infinite.
    """
    vals = x.data if sp.issparse(x) else np.asarray(x)
    bad = ~np.isfinite(np.asarray(vals, dtype=np.float64))
    if bad.any():
        msg = (
            f"{what} holds {int(bad.sum())} NaN or infinite values; its energy_distance would be meaningless. "
            "Fix or drop those cells (a model that fails on a condition must not be scored)."
        )
        raise ValueError(msg)


def check_finite_rows(x: np.ndarray, labels: Sequence[str], what: str, consequence: str) -> None:
    """Refuse a prediction matrix with NaN or infinite values, naming the rows (conditions) that hold them.

    Parameters
    ----------
    x
        Conditions x genes matrix.
    labels
        Condition of each row.
    what
        What ``x`` is, to start the message (e.g. ``"Predictions of 'model'"``).
    consequence
        The rest of the message: why it is refused and what to do.

    Raises
    ------
    ValueError
        When a row holds a NaN or infinite value.
    """
    bad = ~np.isfinite(np.asarray(x, dtype=np.float64)).all(axis=1)
    if bad.any():
        rows = [labels[i] for i in np.flatnonzero(bad)]
        msg = f"{what} hold NaN or infinite values for {rows[:5]}; {consequence}"
        raise ValueError(msg)


def _index_mask(idx: Any, n: int, what: str) -> np.ndarray:
    """Boolean mask of ``n`` cells from the indices ``split.<what>``, refusing indices outside the data."""
    idx = np.asarray(idx, dtype=np.int64)
    if len(idx) and (idx.min() < 0 or idx.max() >= n):
        msg = f"split.{what} holds indices outside 0..{n - 1}; was the split made on this AnnData?"
        raise ValueError(msg)
    m = np.zeros(n, dtype=bool)
    m[idx] = True
    return m


def log_data_max(adata: AnnData, layer: str | None, counts: bool) -> float | None:
    """Largest value of log-normalised data (``counts=False``), the scale bound of its predictions; else ``None``.

    ``None`` too for a layer that is not there: the setup names that error. A backed matrix is read in blocks of
    rows.
    """
    if counts or (layer is not None and layer not in adata.layers):
        return None
    mat = adata.layers[layer] if layer is not None else adata.X
    tops = []
    for _, block in iter_row_chunks(mat):
        values = block.data if sp.issparse(block) else np.asarray(block)
        if values.size:
            tops.append(float(np.max(values)))
    return max(tops) if tops else None
