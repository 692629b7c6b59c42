"""The two assignment rules, ``max_fraction`` and ``threshold``, from a guide UMI summary per cell."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    import scipy.sparse as sp


class _CellStats(NamedTuple):
    """Guide UMI summary per cell."""

    #: total guide UMIs
    total: np.ndarray
    #: guides with at least one UMI
    n_guides: np.ndarray
    #: column of the top guide (ties: the first)
    top: np.ndarray
    #: UMIs of the top guide
    max_umis: np.ndarray
    #: their fraction of the total (0 without guide UMIs)
    frac: np.ndarray
    #: guides with at least ``min_umis`` UMIs
    n_pass: np.ndarray
    #: guides with the top (non-zero) count
    at_max: np.ndarray


def _cell_stats(x: sp.csr_matrix, min_umis: int) -> _CellStats:
    """Summarise the guide UMIs of each cell.

    Parameters
    ----------
    x
        Guide counts (cells x guides), float64 CSR without duplicated entries.
    min_umis
        Minimum UMI count of an assigned guide.

    Returns
    -------
    The per-cell summary.
    """
    n = x.shape[0]
    total = np.asarray(x.sum(axis=1)).ravel()
    n_guides = np.diff(x.indptr)
    # top guide per cell; ties are resolved below
    top = np.asarray(x.argmax(axis=1)).ravel() if n else np.zeros(0, dtype=int)
    max_umis = np.asarray(x.max(axis=1).toarray()).ravel() if n else np.zeros(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(total > 0, max_umis / np.where(total > 0, total, 1), 0.0)
    rows = np.repeat(np.arange(n), n_guides)
    passing = x.data >= min_umis
    n_pass = np.bincount(rows[passing], minlength=n)
    at_max = np.bincount(rows[(x.data == max_umis[rows]) & (x.data > 0)], minlength=n)
    return _CellStats(total, n_guides, top, max_umis, frac, n_pass, at_max)


def _passing_guides(x: sp.csr_matrix, i: int, min_umis: int, names: list[str]) -> list[int]:
    """Return the columns of the guides of cell ``i`` with at least ``min_umis`` UMIs, sorted by guide name.

    Parameters
    ----------
    x
        Guide counts (cells x guides), CSR.
    i
        Row of the cell.
    min_umis
        Minimum UMI count of an assigned guide.
    names
        Guide names.

    Returns
    -------
    Column indices of the passing guides.
    """
    lo, hi = x.indptr[i], x.indptr[i + 1]
    idx, vals = x.indices[lo:hi], x.data[lo:hi]
    return sorted(idx[vals >= min_umis].tolist(), key=lambda j: names[j])


def _assign_max_fraction(
    x: sp.csr_matrix,
    names: list[str],
    tg: np.ndarray,
    stats: _CellStats,
    min_umis: int,
    min_fraction: float,
    multiple_label: str,
    unassigned_label: str,
    separator: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Assign each cell its top guide when it reaches ``min_umis`` and ``min_fraction`` (``rule="max_fraction"``).

    Parameters
    ----------
    x
        Guide counts (cells x guides), CSR.
    names
        Guide names.
    tg
        Target of each guide.
    stats
        Per-cell guide summary.
    min_umis
        Minimum UMI count of an assigned guide.
    min_fraction
        Minimum fraction of the cell's guide UMIs held by the top guide.
    multiple_label
        Label of cells with several guides reaching ``min_umis`` but no assignment.
    unassigned_label
        Label of other cells without an assignment.
    separator
        Separator of the guides of ``multiple_label`` cells.

    Returns
    -------
    The guide and the perturbation label of each cell (object arrays).
    """
    n = x.shape[0]
    guide_col = np.full(n, unassigned_label, dtype=object)
    pert_col = np.full(n, unassigned_label, dtype=object)
    guide_arr = np.asarray(names, dtype=object)
    ok = (stats.max_umis >= min_umis) & (stats.frac >= min_fraction) & (stats.at_max == 1)
    guide_col[ok] = guide_arr[stats.top[ok]]
    pert_col[ok] = tg[stats.top[ok]]
    multi = ~ok & (stats.n_pass >= 2)
    pert_col[multi] = multiple_label
    for i in np.flatnonzero(multi):
        guide_col[i] = separator.join(names[j] for j in _passing_guides(x, i, min_umis, names))
    return guide_col, pert_col


def _assign_threshold(
    x: sp.csr_matrix,
    names: list[str],
    tg: np.ndarray,
    stats: _CellStats,
    min_umis: int,
    combinations: bool,
    control_label: str,
    multiple_label: str,
    unassigned_label: str,
    separator: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Assign each cell every guide with at least ``min_umis`` UMIs (``rule="threshold"``).

    Parameters
    ----------
    x
        Guide counts (cells x guides), CSR.
    names
        Guide names.
    tg
        Target of each guide.
    stats
        Per-cell guide summary.
    min_umis
        Minimum UMI count of an assigned guide.
    combinations
        Label cells with guides of several targets as combinations (controls dropped).
    control_label
        Label of control guides.
    multiple_label
        Label of cells with guides of several targets without ``combinations``.
    unassigned_label
        Label of cells without an assigned guide.
    separator
        Separator of combinations and of several assigned guides.

    Returns
    -------
    The guide and the perturbation label of each cell (object arrays).
    """
    n = x.shape[0]
    guide_col = np.full(n, unassigned_label, dtype=object)
    pert_col = np.full(n, unassigned_label, dtype=object)
    for i in np.flatnonzero(stats.n_pass == 1):
        (j,) = _passing_guides(x, i, min_umis, names)
        guide_col[i] = names[j]
        pert_col[i] = tg[j]
    for i in np.flatnonzero(stats.n_pass >= 2):
        gs = _passing_guides(x, i, min_umis, names)
        guide_col[i] = separator.join(names[j] for j in gs)
        cell_targets = sorted(set(tg[gs]))
        if len(cell_targets) == 1:
            pert_col[i] = cell_targets[0]
        elif combinations:
            real = [t for t in cell_targets if t != control_label]
            pert_col[i] = separator.join(real)
        else:
            pert_col[i] = multiple_label
    return guide_col, pert_col
