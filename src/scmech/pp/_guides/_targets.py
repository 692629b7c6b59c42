"""The target of each guide as given and checked, its label (controls) and the labels it may not take."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import anndata as ad


def _targets(
    names: list[str],
    var: pd.DataFrame | None,
    targets: str | Mapping[str, str] | Sequence[str] | None,
    target_pattern: str | None,
    adata: ad.AnnData,
) -> list[str]:
    """Target of each guide: a guide var column or uns entry, a mapping, a list, a regex or the guide name."""
    raw, what = _raw_targets(names, var, targets, target_pattern, adata)
    return _check_targets(names, raw, what)


def _raw_targets(
    names: list[str],
    var: pd.DataFrame | None,
    targets: str | Mapping[str, str] | Sequence[str] | None,
    target_pattern: str | None,
    adata: ad.AnnData,
) -> tuple[list, str]:
    """Targets as given (not yet checked), and where they come from (for messages)."""
    if targets is not None and target_pattern is not None:
        msg = "Pass either targets=... or target_pattern=... to map guides to targets, not both."
        raise ValueError(msg)
    if target_pattern is not None:
        try:
            rx = re.compile(target_pattern)
        except re.error as e:
            msg = f"target_pattern={target_pattern!r} is not a valid regular expression ({e})."
            raise ValueError(msg) from e
        if rx.groups == 0:
            msg = (
                f"target_pattern={target_pattern!r} has no group: its first group is the target, so put the target "
                r"in parentheses, e.g. r'^(.+?)[-_]?g\d+$'."
            )
            raise ValueError(msg)
        out = []
        for g in names:
            m = rx.search(g)
            if m is None:
                msg = (
                    f"target_pattern={target_pattern!r} does not match guide {g!r}; use a pattern whose first group "
                    r"is the target, e.g. r'^(.+?)[-_]?g\d+$'."
                )
                raise ValueError(msg)
            out.append(m.group(1))
        return out, f"target_pattern={target_pattern!r}"
    if targets is None:
        if var is not None and "target" in var.columns:
            return list(var["target"]), "the guide var['target'] column"
        return list(names), "the guide names"
    if isinstance(targets, str):
        if var is not None:
            if targets not in var.columns:
                msg = (
                    f"targets={targets!r} is not a column of the guide var (columns: {list(var.columns)}); pass the "
                    "column with each guide's target, a {guide: target} mapping or target_pattern=..."
                )
                raise KeyError(msg)
            return list(var[targets]), f"the guide var[{targets!r}] column"
        if targets not in adata.uns:
            msg = (
                f"targets={targets!r} is not a key of adata.uns; pass the uns key with one target per guide, a "
                "{guide: target} mapping or target_pattern=..."
            )
            raise KeyError(msg)
        what = f"adata.uns[{targets!r}]"
        targets = list(np.asarray(adata.uns[targets], dtype=object).ravel())
    else:
        what = "targets"
    if isinstance(targets, Mapping):
        missing = [g for g in names if g not in targets]
        if missing:
            msg = f"targets has no entry for guides {missing[:5]}; map every guide to its target."
            raise KeyError(msg)
        return [targets[g] for g in names], what
    targets = list(targets)
    if len(targets) != len(names):
        msg = f"{what} has {len(targets)} entries for {len(names)} guides; give one target per guide."
        raise ValueError(msg)
    return targets, what


def _check_targets(names: list[str], raw: list, what: str) -> list[str]:
    """Refuse missing (NaN/None, or their string forms ``'nan'``/``'None'``), non-string and empty targets.

    Returns the targets without surrounding whitespace.
    """

    def _missing(t) -> bool:
        if t is None:
            return True
        if isinstance(t, str):
            return t in ("nan", "NaN", "None", "<NA>")
        try:
            return bool(pd.isna(t))
        except (TypeError, ValueError):  # array-like entries are not missing values
            return False

    fix = "; give every guide its target (e.g. 'non-targeting' for control guides) or drop those guides."
    miss = [g for g, t in zip(names, raw, strict=True) if _missing(t)]
    if miss:
        msg = f"{what} gives a missing target (NaN/None, or the string 'nan'/'None') for guide(s) {_few(miss)}{fix}"
        raise ValueError(msg)
    # a guide has one target, named by a string: a list would become its repr, and 1 and 1.0 two targets
    odd = [g for g, t in zip(names, raw, strict=True) if not isinstance(t, str)]
    if odd:
        example = raw[names.index(odd[0])]
        msg = (
            f"{what} gives a target that is not a gene name (a string) for guide(s) {_few(odd)}, e.g. {example!r}; "
            "name each guide's one target as a string (a guide against two genes is two guides, or a combination "
            "assigned with combinations=True)."
        )
        raise TypeError(msg)
    # surrounding whitespace is not part of a name (setup_anndata strips it too): " A" and "A" are one target
    out = [str(t).strip() for t in raw]
    empty = [g for g, t in zip(names, out, strict=True) if not t]
    if empty:
        msg = f"{what} gives an empty target for guide(s) {_few(empty)}{fix}"
        raise ValueError(msg)
    return out


def _few(names: list[str]) -> str:
    """Return the first five names, and how many more."""
    return f"{names[:5]}" + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _labelled_targets(
    names: list[str],
    var: pd.DataFrame | None,
    targets: str | Mapping[str, str] | Sequence[str] | None,
    target_pattern: str | None,
    adata: ad.AnnData,
    control_targets: Sequence[str],
    control_label: str,
) -> np.ndarray:
    """Return the target of each guide, with ``control_label`` for control guides.

    Parameters
    ----------
    names
        Guide names.
    var
        Guide ``var``, or ``None``.
    targets
        The ``targets`` argument of :func:`assign_guides`.
    target_pattern
        The ``target_pattern`` argument of :func:`assign_guides`.
    adata
        The AnnData to annotate (for ``uns`` keys).
    control_targets
        Target names of control guides (case-insensitive).
    control_label
        Label of control guides.

    Returns
    -------
    Object array of targets, one per guide.
    """
    tg = _targets(names, var, targets, target_pattern, adata)
    listed = {str(c).lower() for c in control_targets}
    named = [
        g for g, t in zip(names, tg, strict=True) if t.lower() == control_label.lower() and t.lower() not in listed
    ]
    others = sorted({t for t in tg if t.lower() in listed})
    if named and others:  # a real target named like the control label would share the controls' label
        msg = (
            f"control_label={control_label!r} is the target of guide(s) {named[:5]}, while other guides target the "
            f"controls {others[:5]}; both would be labelled {control_label!r}. Pass the label the control guides "
            f"should carry (e.g. control_label={others[0]!r}), or list {control_label!r} in control_targets if its "
            "guides are controls too."
        )
        raise ValueError(msg)
    ctrl_set = listed | {control_label.lower()}
    return np.asarray([control_label if t.lower() in ctrl_set else t for t in tg], dtype=object)


def _check_reserved_targets(
    names: list[str], tg: np.ndarray, control_label: str, multiple_label: str, unassigned_label: str, separator: str
) -> None:
    """Refuse targets that read as a label, a guide named ``unassigned_label``, and separators in targets or guides.

    Parameters
    ----------
    names
        Guide names.
    tg
        Target of each guide (``control_label`` for control guides).
    control_label
        Label of control guides.
    multiple_label
        Label of cells with several unresolved guides.
    unassigned_label
        Label of cells without an assigned guide.
    separator
        Separator of combinations.

    Raises
    ------
    ValueError
        For any of the problems above.
    """
    # a target must not read as one of the labels written for cells without a (single) target
    reserved = {"multiple_label": multiple_label, "unassigned_label": unassigned_label, "control_label": control_label}
    for arg, label in reserved.items():
        hit = [(g, t) for g, t in zip(names, tg, strict=True) if t != control_label and t.strip() == label.strip()]
        if hit:
            msg = (
                f"Guide(s) {[g for g, _ in hit][:5]} have the target {hit[0][1]!r}, which reads as {arg}={label!r}, "
                "the label written for "
                + {
                    "multiple_label": "cells with several guides",
                    "unassigned_label": "cells without an assigned guide",
                    "control_label": "control guides",
                }[arg]
                + f"; rename the target (targets=...) or pass another {arg}=..."
            )
            raise ValueError(msg)
    if unassigned_label in names:
        msg = (
            f"A guide is named {unassigned_label!r}, which is unassigned_label={unassigned_label!r}, the guide label "
            "of cells without an assigned guide; rename the guide or pass another unassigned_label=..."
        )
        raise ValueError(msg)
    for t in set(tg) - {control_label}:
        if separator in t:
            msg = f"Guide target {t!r} contains the separator {separator!r}; pass another separator=..."
            raise ValueError(msg)
    # the guides of a cell with several are joined by the separator: a name containing it would read as two guides
    joined = [g for g in names if separator in g]
    if joined:
        msg = (
            f"Guide name(s) {_few(joined)} contain the separator {separator!r}, which joins the guides of cells with "
            f"several guides (e.g. {separator.join([joined[0], 'other'])!r} would be ambiguous). Rename the guides or "
            f"pass another separator=... (and the same separator to setup_anndata)."
        )
        raise ValueError(msg)
