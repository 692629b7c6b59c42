"""Warnings on perturbation labels that look like mistakes, before registration.

A target is matched to its own gene by name. Labels in another letter case than the genes, genes indexed by
Ensembl identifier with the symbols in a column, labels that name guides rather than their target genes, and
labels that mean "no guide call" would each leave targets without their own gene, or cells fitted as a target,
without an error. :func:`warn_target_names` names each with its fix; ``validate_for_setup`` calls it.
"""

from __future__ import annotations

import re
import warnings
from typing import TYPE_CHECKING

import pandas as pd
from scvi import settings

if TYPE_CHECKING:
    from collections.abc import Sequence

    from scmech.data._design import PerturbationDesign

__all__ = ["warn_target_names"]

#: labels that usually mean "no guide call" rather than a target (``nan``/``<na>``: a missing value turned into a
#: string by ``astype(str)``; ``multiple``: the label :func:`scmech.pp.assign_guides` writes for several guides)
_UNASSIGNED_LIKE = (
    "unassigned", "unknown", "none", "na", "n/a", "nan", "<na>", "null", "multiple", "multiplet", "ambiguous", "",
)  # fmt: skip


def warn_target_names(
    design: PerturbationDesign,
    var_names: Sequence[str],
    key: str,
    unassigned_label: str | Sequence[str] | None,
    var: pd.DataFrame | None = None,
    gene_symbols: str | None = None,
) -> None:
    """Warn about targets that look like mistakes: genes in another case or ``var`` column, unassigned labels.

    Parameters
    ----------
    design
        The parsed perturbation labels.
    var_names
        The names targets are matched against (``var_names``, or the ``gene_symbols`` column).
    key
        The ``obs`` column of the labels, as messages name it.
    unassigned_label
        The ``unassigned_label`` of the setup call.
    var
        The genes' annotations (``adata.var``): a column that names more targets than ``var_names`` does (gene
        symbols beside Ensembl identifiers) is named in a warning.
    gene_symbols
        The ``gene_symbols`` of the setup call, as messages name the matched names.
    """
    genes = [str(g) for g in var_names]
    exact = set(genes) - {""}
    _warn_symbol_column(design, exact, key, var, gene_symbols)
    _warn_guide_like(design, exact, key)
    lower = {g.lower(): g for g in genes}
    case_only = [(t, lower[t.lower()]) for t in design.targets if t not in exact and t.lower() in lower]
    if case_only:
        pairs = ", ".join(f"{t!r} vs gene {g!r}" for t, g in case_only[:5])
        warnings.warn(
            f"{len(case_only)} target(s) of obs[{key!r}] match a gene only up to letter case ({pairs}); they are taken "
            "as unmeasured targets. Relabel them with the gene names (or rename the genes) if they are the same.",
            UserWarning,
            stacklevel=settings.warnings_stacklevel + 2,
        )
    like = [t for t in design.targets if t.strip().lower() in _UNASSIGNED_LIKE]
    if like and (unassigned_label is None or len(_as_labels(unassigned_label)) == 0):
        msg = (
            f"unassigned_label=None, so {like} in obs[{key!r}] are taken as perturbation targets. If these cells "
            f"have no guide call, pass unassigned_label={like[0]!r}."
        )
        warnings.warn(msg, UserWarning, stacklevel=settings.warnings_stacklevel + 2)
    elif like:
        labels = [*_as_labels(unassigned_label), *like]
        msg = (
            f"{like} in obs[{key!r}] are taken as perturbation targets, but they read like cells without a usable "
            "guide call (a missing value turned into text by astype(str), or assign_guides' label for several "
            f"guides). If so, pass unassigned_label={labels!r}."
        )
        warnings.warn(msg, UserWarning, stacklevel=settings.warnings_stacklevel + 2)


def _warn_symbol_column(
    design: PerturbationDesign, genes: set[str], key: str, var: pd.DataFrame | None, gene_symbols: str | None = None
) -> None:
    """Warn when another column of ``var`` names more of the targets than the names they are matched against.

    A target is matched to its own gene by name (``var_names``, or the ``gene_symbols`` column); screens often
    index genes by Ensembl identifier and keep the symbols the guides are named by in a column, and every target
    then silently loses its own gene.
    """
    targets = set(design.targets)
    measured = len(targets & genes)
    if var is None or measured == len(targets) or not targets:
        return
    best, found = None, measured
    for col in var.columns:
        values = var[col]
        if col == gene_symbols or not (
            pd.api.types.is_object_dtype(values) or isinstance(values.dtype, pd.CategoricalDtype)
        ):
            continue
        n = len(targets & set(values.astype(str)))
        if n > found:
            best, found = col, n
    if best is None:
        return
    matched = "var_names" if gene_symbols is None else f"var[{gene_symbols!r}]"
    msg = (
        f"{found} of the {len(targets)} targets of obs[{key!r}] are genes of var[{best!r}], but only {measured} are "
        f"in {matched}, which a target's own gene is matched against; the others are taken as unmeasured targets, "
        f"without the knock-down of their own gene. Pass gene_symbols={best!r} to setup_anndata (setup_mudata)."
    )
    warnings.warn(msg, UserWarning, stacklevel=settings.warnings_stacklevel + 3)


#: characters that join a gene name to a guide's number or vector, or genes into a combination, in common labels
_DELIMITERS = re.compile(r"[_\-.:|/ ]+")


def _gene_in(token: str, genes: set[str]) -> str | None:
    """Return the gene a label's token names: the token itself, or the token after a guide's ``sg`` prefix."""
    if token in genes:
        return token
    if token[:2].lower() == "sg" and token[2:] in genes:
        return token[2:]
    return None


def _warn_guide_like(design: PerturbationDesign, genes: set[str], key: str) -> None:
    """Warn when unmeasured targets are made of gene names: guides, or combinations joined by another separator.

    Screens often label cells by guide (``"STAT1_2"``, ``"sgSTAT1-1"``, ``"CREB1_pDS269"``) or join the genes of a
    combination with another character than ``separator`` (``"CEBPA_CEBPB"``). Such a label is no gene, so the
    target loses the knock-down of its own gene, and a guide of a target is fitted as a target of its own.
    """
    combos, guides = [], []
    for t in design.targets:
        if t in genes:
            continue
        tokens = [tok for tok in _DELIMITERS.split(t) if tok]
        hits = [g for g in (_gene_in(tok, genes) for tok in tokens) if g]
        if len(tokens) >= 2 and len(hits) == len(tokens):
            combos.append((t, _DELIMITERS.search(t).group(0)))
        elif hits:
            guides.append((t, hits[0]))
    if combos:
        t, delimiter = combos[0]
        msg = (
            f"{len(combos)} target(s) of obs[{key!r}] are no gene but join genes with {delimiter!r} (for example "
            f"{t!r}); each is taken as one unmeasured target. If they are combinations, pass separator={delimiter!r}."
        )
        warnings.warn(msg, UserWarning, stacklevel=settings.warnings_stacklevel + 3)
    if guides:
        t, gene = guides[0]
        examples = ", ".join(repr(g[0]) for g in guides[:3])
        msg = (
            f"{len(guides)} target(s) of obs[{key!r}] are no gene but contain one ({examples}; {t!r} holds {gene!r}): "
            "labels that name guides rather than their target gene are fitted as targets of their own, without "
            "the knock-down of their own gene. Label each cell by its target gene (scmech.pp.assign_guides writes "
            "such a column, or derive one from these labels) and pass it as perturbation_key."
        )
        warnings.warn(msg, UserWarning, stacklevel=settings.warnings_stacklevel + 3)


def _as_labels(value: str | Sequence[str]) -> tuple:
    """Return one label, or a sequence of them, as a tuple.

    Parameters
    ----------
    value
        A label or a sequence of labels.

    Returns
    -------
    The labels as a tuple.
    """
    return (value,) if isinstance(value, str) else tuple(value)
