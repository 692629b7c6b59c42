"""The normalised cells of one decomposition and the layout of their (condition, batch) groups.

Every cell used by :func:`~scmech.tl._errors.error_decomposition` belongs to one group, coded
``condition * n_batches + batch`` with the controls as condition 0, so the first ``n_batches`` groups are the
control groups. ``_Data`` holds the cells on the scale that is averaged (counts per :math:`10^4`, or the
log-normalised values as they are) and ``_Layout`` the names behind the group codes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from scmech._constants import TARGET_SUM
from scmech._docs import fill_doc
from scmech.data._checks import rows_in_memory
from scmech.data._pseudobulk import _get_matrix, library_size

if TYPE_CHECKING:
    from anndata import AnnData

#: normalised cells are held dense up to this many values (cells x genes)
_DENSE = 30_000_000


@dataclass
class _Data:
    """Normalised cells of the groups of one decomposition (rows = the used cells only)."""

    z: sp.csr_matrix | np.ndarray  # 1e4 x / l (counts) or x (log-normalised), float64
    zl: sp.csr_matrix | np.ndarray | None  # z * 1e4 / l (Poisson term), control rows only, counts only
    z2: sp.csr_matrix | np.ndarray | None  # z ** 2, control rows only, counts only
    code: np.ndarray  # group code per used cell: condition * n_batches + batch
    n_groups: int
    counts: bool
    lib: np.ndarray | None = None  # library size per control cell (counts only)

    def f(self, m: np.ndarray) -> np.ndarray:
        """Pseudobulk transform of a mean of ``z``."""
        return np.log1p(m) if self.counts else m


@dataclass
class _Layout:
    """Names of the group codes: conditions (the control first) and batches."""

    conditions: list[str]  # control first
    batches: list[str]
    min_cells: int

    @property
    def n_batches(self) -> int:
        """Number of batches."""
        return len(self.batches)

    def grid(self, values: np.ndarray) -> np.ndarray:
        """Reshape a per-group array to (conditions, batches, ...)."""
        return values.reshape(len(self.conditions), self.n_batches, *values.shape[1:])


def _check_finite(x: sp.csr_matrix, layer: str | None) -> None:
    """Raise when ``x`` (the used cells, all genes) holds NaN or infinite values."""
    bad = ~np.isfinite(x.data)
    if bad.any():
        where = f"adata.layers[{layer!r}]" if layer is not None else "adata.X"
        msg = (
            f"{where} has {int(bad.sum())} NaN or infinite values in the cells used; remove or impute them (e.g. "
            f"fill with 0 for undetected counts) before decomposing."
        )
        raise ValueError(msg)


def _check_counts(x: sp.csr_matrix, lib: np.ndarray, layer: str | None) -> None:
    """Raise unless ``x`` holds non-negative integer counts and every cell has a positive library size.

    ``x`` has passed ``_check_finite``.
    """
    data = x.data
    if data.size and ((data < 0).any() or not np.allclose(data, np.round(data))):
        where = f"adata.layers[{layer!r}]" if layer is not None else "adata.X"
        msg = (
            f"{where} does not hold counts (negative or non-integer values); pass the raw counts with `layer=`, "
            "or counts=False for log-normalised data (then the measurement/biological split is not available)."
        )
        raise ValueError(msg)
    if (lib <= 0).any():
        msg = f"{int((lib <= 0).sum())} cells have a library size of 0; remove empty cells first."
        raise ValueError(msg)


@fill_doc
def _prepare(
    adata: AnnData,
    rows: np.ndarray,
    code: np.ndarray,
    n_groups: int,
    *,
    layer: str | None,
    counts: bool,
    genes: np.ndarray | None,
    n_control_groups: int,
) -> _Data:
    """Normalise the used cells (``rows``, sorted by group ``code``) and, for counts, the controls' moments.

    Parameters
    ----------
    adata
        The screen.
    rows
        Positions in ``adata`` of the used cells, sorted by group.
    code
        Group code of each used cell.
    n_groups
        Number of groups (conditions x batches).
    layer
        %(layer)s
    counts
        Whether the matrix holds counts (normalised to counts per :math:`10^4`) or log-normalised values.
    genes
        Positions of the genes to keep; all when ``None``.
    n_control_groups
        Number of control groups (the first codes), whose cells also get the measurement moments.

    Returns
    -------
    The ``_Data``, dense when it holds at most ``_DENSE`` values.
    """
    x = rows_in_memory(_get_matrix(adata, layer), rows)  # backed data: rows in group order, read in blocks
    x = sp.csr_matrix(x, dtype=np.float64) if sp.issparse(x) else sp.csr_matrix(np.asarray(x, dtype=np.float64))
    _check_finite(x, layer)
    lib = library_size(x) if counts else None
    if genes is not None:
        x = x[:, genes]
    if counts:
        _check_counts(x, lib, layer)
        scale = TARGET_SUM / lib
        z = sp.csr_matrix(sp.diags(scale) @ x)
        # moments for the measurement variance, controls only (the first rows: codes 0 .. n_batches - 1)
        n_ctrl = int(np.searchsorted(np.asarray(code), n_control_groups))
        zc = z[:n_ctrl]
        zl = sp.csr_matrix(sp.diags(scale[:n_ctrl]) @ zc)
        z2 = sp.csr_matrix(zc.multiply(zc))
    else:
        z, zl, z2 = x, None, None
    if z.shape[0] * z.shape[1] <= _DENSE:
        # sparse (groups x cells) @ dense is much faster than sparse @ sparse for the dense outputs needed here
        z = z.toarray()
        zl = zl.toarray() if zl is not None else None
        z2 = z2.toarray() if z2 is not None else None
    lib = lib[: zl.shape[0]] if lib is not None and zl is not None else lib
    return _Data(z=z, zl=zl, z2=z2, code=np.asarray(code, dtype=np.int64), n_groups=n_groups, counts=counts, lib=lib)
