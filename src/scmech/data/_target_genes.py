"""Which registered gene each perturbation target is: target names matched to gene names.

A target's own gene is the gene of the same name. By default the names are ``var_names``; screens that index
genes by a stable identifier (Ensembl) and keep the symbols the guides are named by in a ``var`` column name
that column with ``gene_symbols``, as scanpy's plotting functions do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["check_target_genes", "name_positions", "target_gene_names"]


def target_gene_names(var: pd.DataFrame, gene_symbols: str | None = None, *, where: str = "adata.var") -> pd.Index:
    """Return the name each gene is matched against perturbation targets by, one per gene.

    Parameters
    ----------
    var
        The genes' annotations (``adata.var``), indexed by ``var_names``.
    gene_symbols
        Column of ``var`` with the gene names the targets are named by; ``None`` matches targets against
        ``var_names``. A missing value names no target.
    where
        How messages name ``var``.

    Returns
    -------
    The names, as strings, in the order of the genes.

    Raises
    ------
    TypeError
        When ``gene_symbols`` is not a string or its column holds numbers.
    KeyError
        When ``gene_symbols`` is not a column of ``var``.
    """
    if gene_symbols is None:
        return pd.Index(np.asarray(var.index).astype(str), dtype=object)
    if not isinstance(gene_symbols, str):
        msg = f"gene_symbols must be the name of a column of {where} (a string), not {type(gene_symbols).__name__}."
        raise TypeError(msg)
    if gene_symbols not in var.columns:
        msg = (
            f"gene_symbols {gene_symbols!r} is not a column of {where} (columns: {list(map(str, var.columns))[:12]}). "
            "Name the column that holds the gene names the perturbations are labelled with, or pass "
            "gene_symbols=None to match targets against var_names."
        )
        raise KeyError(msg)
    values = var[gene_symbols]
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        msg = (
            f"gene_symbols {gene_symbols!r}: {where}[{gene_symbols!r}] holds {values.dtype} values, not gene names. "
            "Name the column of gene symbols."
        )
        raise TypeError(msg)
    names = values.astype(object).where(values.notna(), "")
    return pd.Index([str(v) for v in names], dtype=object)


def name_positions(names: Sequence[str]) -> dict[str, int]:
    """Position of each name among ``names``: the first of a repeated name; a missing (empty) name is left out.

    Parameters
    ----------
    names
        The genes' names (:func:`target_gene_names`).

    Returns
    -------
    ``{name: position}``.
    """
    pos: dict[str, int] = {}
    for i, name in enumerate(names):
        if name:
            pos.setdefault(str(name), i)
    return pos


def check_target_genes(
    names: Sequence[str], targets: Sequence[str], key: str = "perturbation", gene_symbols: str | None = None
) -> None:
    """Refuse a target that names more than one gene: its own gene would be a guess.

    ``var_names`` are unique once registered, but a column of symbols often repeats one (two identifiers of the
    same symbol); only targets that name a repeated symbol matter.

    Parameters
    ----------
    names
        The genes' names (:func:`target_gene_names`).
    targets
        The perturbation targets.
    key
        The ``obs`` column of the perturbations, as messages name it.
    gene_symbols
        The ``var`` column the names come from (``None``: ``var_names``), as messages name it.

    Raises
    ------
    ValueError
        When a target names two or more genes.
    """
    index = pd.Index(names)
    if index.is_unique:
        return
    repeated = set(index[index.duplicated()])
    clash = [t for t in targets if t in repeated]
    if not clash:
        return
    where = f"adata.var[{gene_symbols!r}]" if gene_symbols is not None else "adata.var_names"
    first = clash[0]
    positions = np.flatnonzero(np.asarray(index) == first).tolist()
    msg = (
        f"{len(clash)} target(s) of obs[{key!r}] name more than one gene of {where} (for example {first!r} at "
        f"gene positions {positions[:5]}), so their own gene is ambiguous. Keep one gene per name, for example "
        f"adata = adata[:, ~{where}.duplicated().to_numpy()].copy(), or rename the others."
    )
    raise ValueError(msg)
