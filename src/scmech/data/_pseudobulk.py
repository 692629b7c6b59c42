r"""Pseudobulk: the one definition of a condition's log-normalised mean used across scmech.

For count data the pseudobulk of a group of cells is

.. math:: \bar y_g = \log\big(1 + s \cdot \tfrac{1}{n}\textstyle\sum_c x_{cg} / \ell_c\big),

the log of the mean normalised expression, with :math:`\ell_c` the cell's library size (total counts, or a
size factor) and :math:`s` the target sum (``1e4``). A model that predicts the mean proportion
:math:`\rho_g` therefore predicts :math:`\log(1 + s\rho_g)` exactly, without a Jensen gap. For data that
are already log-normalised (``counts=False``) the pseudobulk is the plain mean.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scmech._constants import TARGET_SUM
from scmech._docs import fill_doc
from scmech.data._checks import check_expression, check_flag, iter_row_chunks

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

__all__ = ["library_size", "normalized_mean", "pseudobulk"]


def _get_matrix(adata: AnnData, layer: str | None):
    if layer is None:
        return adata.X
    if layer not in adata.layers:
        msg = f"Layer {layer!r} is not in adata.layers (layers: {list(adata.layers.keys())}); pass layer=None for X."
        raise KeyError(msg)
    return adata.layers[layer]


def library_size(x, size_factor: np.ndarray | None = None) -> np.ndarray:
    """Library size per cell: total counts, or the given size factors.

    Parameters
    ----------
    x
        Cells x genes counts (dense or sparse), or a backed (on-disk) matrix, read ``10_000`` rows at a time.
    size_factor
        Library size per cell, returned as is (as ``float64``); total counts when ``None``.

    Returns
    -------
    One library size per cell, ``float64``.
    """
    if size_factor is not None:
        return np.asarray(size_factor, dtype=np.float64)
    sums = [np.asarray(block.sum(axis=1), dtype=np.float64).ravel() for _, block in _row_blocks(x)]
    return np.concatenate(sums) if sums else np.zeros(0, dtype=np.float64)


def normalized_mean(
    x,
    groups: np.ndarray,
    group_order: Sequence,
    *,
    size_factor: np.ndarray | None = None,
    counts: bool = True,
    second_moment: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Mean normalised expression (proportions) per group; plain means when ``counts=False``.

    Parameters
    ----------
    x
        Cells x genes matrix (dense or sparse), or a backed (on-disk) one, read in blocks of rows.
    groups
        Group label per cell; cells whose label is not in ``group_order`` are ignored.
    group_order
        Groups to compute, in this order (rows of the result).
    size_factor
        Library size per cell; total counts when ``None``.
    counts
        Whether ``x`` holds counts (normalise by library size) or already normalised values.
    second_moment
        Also return the mean of the squared (normalised) values, from the same pass over the rows (for sampling
        variances).

    Returns
    -------
    Array (groups x genes) of mean proportions (or means); with ``second_moment`` a tuple of it and the second
    moments. Empty groups give NaN rows.
    """
    groups = np.asarray(groups)
    index = pd.Index(list(group_order))
    codes = index.get_indexer(groups)
    keep = codes >= 0
    if counts:
        lib = library_size(x, size_factor)
        zero = keep & (lib <= 0)
        if zero.any():
            msg = f"{int(zero.sum())} cells have a library size of 0; remove empty cells before computing pseudobulks."
            raise ValueError(msg)
        scale = np.zeros_like(lib)
        scale[keep] = 1.0 / lib[keep]
    else:
        scale = keep.astype(np.float64)
    n = np.bincount(codes[keep], minlength=len(index)).astype(np.float64)
    sums = np.zeros((len(index), x.shape[1]), dtype=np.float64)
    sums2 = np.zeros_like(sums) if second_moment else None
    # backed (on-disk) matrices are read in blocks of rows; in-memory sparse ones are sliced in blocks too, so that
    # the sparse product's casts (index and value dtypes) copy one block, not the whole matrix
    for start, block in _row_blocks(x):
        rows = slice(start, start + block.shape[0])
        k = keep[rows]
        if not k.any():
            continue
        # indicator (groups x cells) with the per-cell scale, so the mean is one sparse product
        sel = (codes[rows][k], np.flatnonzero(k))
        ind = sp.csr_matrix((scale[rows][k], sel), shape=(len(index), block.shape[0]))
        part = ind @ block
        sums += part.toarray() if sp.issparse(part) else np.asarray(part)
        if second_moment:
            squared = block.multiply(block) if sp.issparse(block) else np.asarray(block, dtype=np.float64) ** 2
            ind2 = sp.csr_matrix((scale[rows][k] ** 2, sel), shape=ind.shape)
            part = ind2 @ squared
            sums2 += part.toarray() if sp.issparse(part) else np.asarray(part)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = sums / n[:, None]
        out2 = sums2 / n[:, None] if second_moment else None
    out[n == 0] = np.nan
    if not second_moment:
        return out
    out2[n == 0] = np.nan
    return out, out2


def _row_blocks(x, chunk_rows: int = 10_000):
    if isinstance(x, np.ndarray) and x.shape[0] > chunk_rows:  # views: nothing is copied
        for start in range(0, x.shape[0], chunk_rows):
            yield start, x[start : start + chunk_rows]
        return
    if sp.issparse(x) and x.shape[0] > chunk_rows:
        csr = x if sp.isspmatrix_csr(x) or isinstance(x, sp.csr_array) else None
        if csr is not None:
            for start in range(0, x.shape[0], chunk_rows):
                yield start, csr[start : start + chunk_rows]
            return
    yield from iter_row_chunks(x)


@fill_doc
def pseudobulk(
    adata: AnnData,
    groupby: str | Sequence[str] | np.ndarray,
    *,
    layer: str | None = None,
    counts: bool = True,
    size_factor_key: str | None = None,
    target_sum: float = TARGET_SUM,
    groups: Sequence | None = None,
    min_cells: int = 1,
    allow_empty: bool = False,
) -> pd.DataFrame:
    r"""Log-normalised pseudobulk per group of cells.

    Parameters
    ----------
    adata
        Annotated data matrix (not modified).
    groupby
        An ``obs`` column, or a per-cell array of group labels (a :class:`pandas.Series` indexed by
        ``obs_names`` is matched to the cells by its index, in any order; one with a default ``RangeIndex`` by
        position). Labels are compared as strings. Cells with a missing (NaN/None) label belong to no group:
        with ``groups=None`` they are refused (fill or drop them first, as for ``setup_anndata``); with
        ``groups`` given they are left out like any other cell outside ``groups``.
    layer
        %(layer)s
    counts
        %(counts)s
    size_factor_key
        ``obs`` column with library sizes (positive, finite) to use instead of total counts.
    target_sum
        Scale of normalised expression (counts per ``target_sum``); a positive finite number.
    groups
        Groups to return, in order; all groups with at least ``min_cells`` cells when ``None``.
    min_cells
        Groups with fewer cells are left out (when ``groups`` is ``None``). A ``min_cells`` above the largest
        group, which would leave no group at all, raises a ``ValueError`` rather than returning an empty table.
    allow_empty
        With ``groups`` given, return NaN rows for groups without cells instead of raising a ``KeyError``.

    Returns
    -------
    DataFrame (groups x genes) of :math:`\log(1 + s\,\bar\rho)`, indexed by group.

    Raises
    ------
    KeyError
        For a ``groupby``, ``layer`` or ``size_factor_key`` that is not in ``adata``, and for ``groups`` without
        cells (unless ``allow_empty``).
    TypeError
        For a ``counts`` or ``allow_empty`` that is not ``True`` or ``False``, a non-numeric ``target_sum`` and a
        string ``groups``.
    ValueError
        For a non-positive or non-finite ``target_sum``, missing labels with ``groups=None``, a ``min_cells``
        that no group reaches (with ``groups=None``), non-count data with ``counts=True``, NaN or infinite
        values, invalid size factors, a Series ``groupby`` indexed by other names, and an AnnData without cells
        (unless ``groups`` is given with ``allow_empty=True``).
    """
    counts = check_flag(counts, "counts")
    allow_empty = check_flag(allow_empty, "allow_empty")
    _check_args(target_sum, min_cells, groups)
    if adata.n_obs == 0 and not (allow_empty and groups is not None):
        msg = (
            "adata has no cells: there is nothing to pseudobulk. Check the selection that made it, or pass groups= "
            "with allow_empty=True for NaN rows."
        )
        raise ValueError(msg)
    labels, what = _group_labels(adata, groupby)
    missing_label = np.asarray([lab is None for lab in labels])
    if groups is None:
        groups = _default_groups(labels, missing_label, what, groupby, min_cells)
    groups = _check_groups(groups, labels, missing_label, what, allow_empty)
    x = _count_matrix(adata, layer, counts)
    sf = _size_factors(adata, size_factor_key)
    mean = normalized_mean(x, labels, groups, size_factor=sf, counts=counts)
    values = np.log1p(target_sum * mean) if counts else mean
    return pd.DataFrame(values, index=pd.Index(groups, name="condition"), columns=adata.var_names.copy())


def _check_args(target_sum: float, min_cells: int, groups: Sequence | None) -> None:
    """Refuse an invalid ``target_sum``, ``min_cells`` or a string passed as ``groups``.

    Parameters
    ----------
    target_sum
        Scale of normalised expression; a positive finite number.
    min_cells
        Smallest group returned; a non-negative integer.
    groups
        Groups to return, or ``None``.

    Raises
    ------
    TypeError
        For a non-numeric ``target_sum`` or a string ``groups``.
    ValueError
        For a non-positive or non-finite ``target_sum`` and an invalid ``min_cells``.
    """
    if isinstance(target_sum, bool) or not isinstance(target_sum, int | float | np.integer | np.floating):
        msg = f"target_sum={target_sum!r} must be a positive number (counts per target_sum), e.g. 1e4."
        raise TypeError(msg)
    if not (np.isfinite(target_sum) and target_sum > 0):
        msg = f"target_sum={target_sum!r} must be a positive finite number (counts per target_sum), e.g. 1e4."
        raise ValueError(msg)
    if isinstance(min_cells, bool) or not isinstance(min_cells, int | np.integer) or min_cells < 0:
        msg = f"min_cells={min_cells!r} must be a non-negative integer (the smallest group returned), e.g. 1."
        raise ValueError(msg)
    if groups is not None and isinstance(groups, str | bytes):
        msg = f"groups={groups!r} must be a list of group labels, e.g. groups=[{groups!r}]."
        raise TypeError(msg)


def _default_groups(
    labels: np.ndarray, missing_label: np.ndarray, what: str, groupby: str | Sequence[str] | np.ndarray, min_cells: int
) -> list:
    """Return the groups with at least ``min_cells`` cells, sorted; refuse missing labels.

    Parameters
    ----------
    labels
        Label per cell as a string (``None`` where missing).
    missing_label
        Whether each cell's label is missing.
    what
        Where the labels come from (for messages).
    groupby
        The ``groupby`` argument of :func:`pseudobulk` (for the suggested fix).
    min_cells
        Smallest group returned.

    Returns
    -------
    The sorted group labels.

    Raises
    ------
    ValueError
        When some cells have a missing label, or when no group has ``min_cells`` cells.
    """
    if missing_label.any():
        if isinstance(groupby, str):
            fix = (
                f"Fill them (e.g. adata.obs[{groupby!r}] = adata.obs[{groupby!r}].astype(object)"
                f".fillna('unassigned')), drop those cells (adata[adata.obs[{groupby!r}].notna()].copy())"
            )
        else:
            fix = "Fill them (e.g. labels = np.where(pd.isna(labels), 'unassigned', labels)), drop those cells"
        msg = (
            f"{what} has {int(missing_label.sum())} missing (NaN/None) labels, which belong to no group. {fix}, "
            "or pass the groups to compute as groups=[...]."
        )
        raise ValueError(msg)
    vc = pd.Series(labels).value_counts()
    kept = sorted(vc.index[vc >= min_cells].tolist())
    if not kept and len(vc):
        largest, size = vc.index[0], int(vc.iloc[0])
        msg = (
            f"min_cells={min_cells} leaves no group of {what}: the largest group ({largest!r}) has {size} cells. "
            f"Lower min_cells (e.g. min_cells={size}), or pass the groups to compute as groups=[...]."
        )
        raise ValueError(msg)
    return kept


def _check_groups(
    groups: Sequence, labels: np.ndarray, missing_label: np.ndarray, what: str, allow_empty: bool
) -> list[str]:
    """Return the groups as strings; refuse duplicated groups and, unless ``allow_empty``, groups without cells.

    Parameters
    ----------
    groups
        Groups to return, in order.
    labels
        Label per cell as a string (``None`` where missing).
    missing_label
        Whether each cell's label is missing.
    what
        Where the labels come from (for messages).
    allow_empty
        Whether groups without cells are allowed.

    Returns
    -------
    The groups as strings, in order.

    Raises
    ------
    ValueError
        For duplicated groups.
    KeyError
        For groups without cells (unless ``allow_empty``).
    """
    groups = [str(g) for g in groups]
    if len(set(groups)) != len(groups):
        dup = pd.Index(groups)[pd.Index(groups).duplicated()].unique().tolist()
        msg = f"groups has duplicated entries {dup[:5]}; give each group once."
        raise ValueError(msg)
    if not allow_empty:
        present = set(labels[~missing_label].tolist())
        absent = [g for g in groups if g not in present]
        if absent:
            avail = sorted(present)
            more = f", ... ({len(avail)} in all)" if len(avail) > 10 else ""
            msg = (
                f"groups {absent[:5]}{' and more' if len(absent) > 5 else ''} have no cells in {what} (groups there: "
                f"{avail[:10]}{more}); pass groups that occur, or allow_empty=True for NaN rows."
            )
            raise KeyError(msg)
    return groups


def _count_matrix(adata: AnnData, layer: str | None, counts: bool):
    """Return the expression matrix (``X`` or ``layer``), checked to hold counts (or finite values).

    Parameters
    ----------
    adata
        Annotated data matrix.
    layer
        Layer with the expression; ``X`` when ``None``.
    counts
        Whether the matrix must hold counts.

    Returns
    -------
    The matrix, as stored.

    Raises
    ------
    KeyError
        For a layer that is not in ``adata``.
    ValueError
        For non-count data with ``counts=True`` and for NaN or infinite values.
    """
    x = _get_matrix(adata, layer)
    try:
        check_expression(x, "adata.X" if layer is None else f"adata.layers[{layer!r}]", counts=counts)
    except ValueError as e:
        fix = "pass layer=... with the raw counts, or counts=False to average log-normalised values as they are"
        msg = f"{e} For pseudobulk: {fix}." if counts else str(e)
        raise ValueError(msg) from e
    return x


def _size_factors(adata: AnnData, size_factor_key: str | None) -> np.ndarray | None:
    """Return the library sizes from ``obs[size_factor_key]`` (positive, finite), or ``None`` for total counts.

    Parameters
    ----------
    adata
        Annotated data matrix.
    size_factor_key
        ``obs`` column with library sizes, or ``None``.

    Returns
    -------
    The size factors as float64, or ``None``.

    Raises
    ------
    KeyError
        For a column that is not in ``adata.obs``.
    TypeError
        For a non-numeric column.
    ValueError
        For size factors that are not positive finite numbers.
    """
    if size_factor_key is None:
        return None
    if size_factor_key not in adata.obs.columns:
        msg = f"size_factor_key {size_factor_key!r} is not a column of adata.obs."
        raise KeyError(msg)
    try:
        sf = adata.obs[size_factor_key].to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as e:
        msg = f"size_factor_key={size_factor_key!r}: obs column is not numeric ({e}); pass library sizes."
        raise TypeError(msg) from e
    bad = ~(np.isfinite(sf) & (sf > 0))
    if bad.any():
        msg = (
            f"obs[{size_factor_key!r}] has {int(bad.sum())} size factors that are not positive finite numbers "
            f"(e.g. {sf[bad][0]:g}); fix them or pass size_factor_key=None for total counts."
        )
        raise ValueError(msg)
    return sf


def _aligned(adata: AnnData, labels: pd.Series) -> pd.Series:
    """Put a Series of labels in the order of ``adata.obs_names``, aligned on its index as pandas aligns.

    A Series indexed by the cells' names in another order (``adata.obs[key].sort_values()``) is put in cell order;
    one with a default ``RangeIndex`` (built from a list) is read by position. Any other index is refused: reading it
    by position would give the groups other cells.
    """
    names = pd.Index(adata.obs_names)
    if len(labels) != adata.n_obs:
        return labels  # the length check of the labels names the problem
    if labels.index.equals(names) or isinstance(labels.index, pd.RangeIndex):
        return labels
    if labels.index.is_unique and labels.index.isin(names).all():
        return labels.reindex(names)
    msg = (
        "groupby is a Series whose index is not adata.obs_names (nor in another order): its labels cannot be matched "
        "to the cells. Index it by adata.obs_names, or pass its values (groupby.to_numpy()) to match by position."
    )
    raise ValueError(msg)


def _group_labels(adata: AnnData, groupby) -> tuple[np.ndarray, str]:
    """Labels per cell as strings (``None`` where missing), and where they come from (for messages)."""
    if isinstance(groupby, str):
        if groupby not in adata.obs.columns:
            msg = (
                f"groupby={groupby!r} is not a column of adata.obs (columns: {list(adata.obs.columns)[:10]}); pass "
                "an obs column or one label per cell."
            )
            raise KeyError(msg)
        raw = adata.obs[groupby]
        what = f"adata.obs[{groupby!r}]"
    else:
        groupby = _aligned(adata, groupby) if isinstance(groupby, pd.Series) else groupby
        arr = np.asarray(groupby, dtype=object)
        if arr.ndim != 1:
            msg = (
                f"groupby must be an obs column or one label per cell, got {type(groupby).__name__} of shape "
                f"{arr.shape}."
            )
            raise ValueError(msg)
        raw = pd.Series(arr)
        what = "groupby"
        if len(raw) != adata.n_obs:
            columns = [v for v in raw if isinstance(v, str) and v in adata.obs.columns]
            hint = (
                f" {columns} are obs columns: group by one column, or pass one label per cell (e.g. the columns "
                "joined into one)."
                if columns
                else ""
            )
            msg = f"groupby has {len(raw)} labels for {adata.n_obs} cells.{hint}"
            raise ValueError(msg)
    na = raw.isna().to_numpy()
    labels = raw.astype(str).to_numpy(dtype=object)
    labels[na] = None
    return labels, what
