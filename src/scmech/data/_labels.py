"""Perturbation labels: one label read into its targets, and targets written as their canonical label.

:func:`parse_condition` reads one label (``"STAT1+JAK2"``, a control or unassigned label) into its sorted targets;
:func:`canonical_label` writes targets as the label that reads back into them. The labels of all cells are parsed
into a design by :func:`~scmech.data._perturbation_design.parse_perturbations`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from scmech._docs import fill_doc

from ._label_checks import check_scalar_label, check_separator

if TYPE_CHECKING:
    from collections.abc import Sequence


__all__ = ["canonical_label", "parse_condition"]


def _as_tuple(labels: str | Sequence[str] | None) -> tuple[str, ...]:
    """Labels as a tuple of strings: one label (any scalar, e.g. an integer code ``0``) or a sequence of them."""
    if labels is None:
        return ()
    if isinstance(labels, str) or np.isscalar(labels):
        return (str(labels),)
    return tuple(str(x) for x in labels)


@fill_doc
def canonical_label(targets: Sequence[str], *, separator: str = "+", control_label: str = "NT") -> str:
    """Canonical spelling of a perturbation: targets sorted and joined, or the control label.

    The label is exactly the one :func:`parse_condition` reads back into the same targets
    (``parse_condition(canonical_label(t)) == tuple(sorted(t))``), and the canonical form of any label naming
    these targets. As in :func:`parse_condition`, surrounding whitespace is stripped from each target and
    targets equal to ``control_label`` are dropped (``("STAT1", "NT")`` is ``"STAT1"``).

    Parameters
    ----------
    targets
        Target genes of the perturbation; empty (or only the control label) for the control.
    separator
        %(separator)s
    control_label
        Label used for the empty perturbation.

    Returns
    -------
    The canonical label, e.g. ``"JAK2+STAT1"`` for ``("STAT1", "JAK2")``.

    Raises
    ------
    TypeError
        When ``targets`` is a single string, or not a collection of strings.
    ValueError
        For a blank ``separator`` or ``control_label``, and for targets that cannot make a condition: an empty
        (or blank) target, a target containing ``separator`` (or, for a separator of several characters, beginning
        or ending with part of it where the label would read as other targets), or a target named twice.
    """
    if isinstance(targets, str) or not hasattr(targets, "__len__"):
        msg = (
            f"targets={targets!r} must be a list or tuple of target names, e.g. ('STAT1', 'JAK2'); to read a label "
            "such as 'STAT1+JAK2', use parse_condition."
        )
        raise TypeError(msg)
    if not all(isinstance(t, str) for t in targets):
        msg = f"targets={targets!r} must hold target names (strings)."
        raise TypeError(msg)
    check_separator(separator)
    if not isinstance(control_label, str) or control_label.strip() == "":
        msg = f"`control_label` must be a non-empty label such as 'NT', got {control_label!r}."
        raise ValueError(msg)
    names = [t.strip() for t in targets]
    if any(t == "" for t in names):
        msg = f"targets={list(targets)!r} holds an empty target name; name every target (e.g. ('STAT1', 'JAK2'))."
        raise ValueError(msg)
    joined = [t for t in names if separator in t]
    if joined:
        msg = (
            f"targets={list(targets)!r}: the target(s) {joined} contain the separator {separator!r}, so the label "
            f"would read as other targets. Pass each target separately (e.g. {joined[0].split(separator)}) or "
            "another `separator`."
        )
        raise ValueError(msg)
    names = [t for t in names if t != control_label]
    if len(set(names)) != len(names):
        dup = sorted({t for t in names if names.count(t) > 1})
        msg = f"targets={list(targets)!r} names the target(s) {dup} more than once; a combination lists each once."
        raise ValueError(msg)
    if not names:
        return control_label
    label = separator.join(sorted(names))
    if [t.strip() for t in label.split(separator)] != sorted(names):
        # a multi-character separator can straddle two targets: ("A+", "B") with "++" is "A+++B", read as A, +B
        msg = (
            f"targets={list(targets)!r}: joined by {separator!r} they read as other targets ({label!r}), since a "
            "target begins or ends with part of the separator. Pass another `separator`."
        )
        raise ValueError(msg)
    return label


@fill_doc
def parse_condition(
    label: str,
    *,
    separator: str = "+",
    control_label: str | Sequence[str] = "NT",
    key: str = "perturbation",
    genes: Sequence[str] | None = None,
    source: str | None = None,
) -> tuple[str, ...]:
    """Parse one perturbation label into its sorted tuple of targets.

    Parts equal to a control label are dropped, so GEARS-style ``"STAT1+ctrl"`` reads as ``STAT1``
    (with ``control_label="ctrl"``); a label made only of control parts is the control, ``()``.

    Parameters
    ----------
    label
        The label, e.g. ``"STAT1"``, ``"STAT1+JAK2"`` or the control label.
    separator
        %(separator)s
    control_label
        %(control_label)s
    key
        Name of the column the label came from, used in error messages.
    genes
        Gene names (usually ``var_names``) used to detect a separator inside a gene name.
    source
        Where the label came from, as error messages name it (``obs[key]`` when ``None``; for example
        ``"perturbations[0]"`` for a label a prediction was asked for).

    Returns
    -------
    Sorted tuple of target names; ``()`` for a control.

    Raises
    ------
    TypeError
        For a missing label (``None``, NaN or ``pd.NA``) or a container (list, tuple...) instead of a label.
    ValueError
        For a blank separator, an empty label or empty part, a repeated target (``"A+A"``), or a label whose
        parsing is ambiguous because a gene name contains the separator.
    """
    where = f"obs[{key!r}]" if source is None else source
    if label is None or (not isinstance(label, str) and pd.api.types.is_scalar(label) and pd.isna(label)):
        msg = (
            f"Perturbation label {label!r} in {where} is missing (NaN/None), not a label: fill it with the "
            "unassigned label (e.g. 'unassigned'), the control label or a target."
        )
        raise TypeError(msg)
    if isinstance(label, bytes | bytearray):
        msg = f"Perturbation label {label!r} in {where} is bytes, not text; decode it first (label.decode())."
        raise TypeError(msg)
    check_scalar_label(label, key)
    check_separator(separator)
    controls = _as_tuple(control_label)
    raw = str(label)
    text = raw.strip()
    if text == "":
        msg = f"Empty perturbation label {raw!r} in {where}: label the cell as a target, a control or unassigned."
        raise ValueError(msg)
    if text in controls:
        return ()
    parts = [p.strip() for p in text.split(separator)]
    if any(p == "" for p in parts):
        msg = (
            f"Perturbation label {raw!r} in {where} has an empty target around the separator {separator!r}; "
            f"write combinations as 'A{separator}B'."
        )
        raise ValueError(msg)
    if genes is not None and len(parts) > 1:
        gene_set = set(genes)
        for i in range(len(parts)):
            for j in range(i + 2, len(parts) + 1):
                joined = separator.join(parts[i:j])
                if joined in gene_set:
                    msg = (
                        f"Perturbation label {raw!r} in {where} is ambiguous: the gene {joined!r} contains the "
                        f"separator {separator!r}. Pass another `separator` (e.g. '+' or '|') and relabel "
                        f"combinations with it."
                    )
                    raise ValueError(msg)
    targets = [p for p in parts if p not in controls]
    if len(set(targets)) != len(targets):
        dup = sorted({t for t in targets if targets.count(t) > 1})
        msg = (
            f"Perturbation label {raw!r} in {where} names the target(s) {dup} more than once; "
            "a combination lists each target once."
        )
        raise ValueError(msg)
    return tuple(sorted(targets))
