"""The parsed design of all cells of a screen: :func:`parse_perturbations` into a :class:`PerturbationDesign`.

Canonical labels (:func:`~scmech.data._labels.canonical_label` of each label's targets), controls, unassigned
cells and a multi-hot matrix of targets. :mod:`scmech.data._design` adds the other design columns (batch, time,
media, efficacy) and re-exports these names.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scmech._docs import fill_doc
from scmech._numbers import check_flag

from ._label_checks import check_label_array, check_separator, check_unassigned_parts
from ._labels import _as_tuple, canonical_label, parse_condition

if TYPE_CHECKING:
    from collections.abc import Sequence

#: the unassigned cells are logged under the name of the design module, which re-exports :func:`parse_perturbations`
logger = logging.getLogger("scmech.data._design")

__all__ = ["PerturbationDesign", "parse_perturbations"]


@dataclass(frozen=True)
class PerturbationDesign:
    """Parsed perturbation labels of a screen.

    Made by :func:`parse_perturbations`; each parameter is also an attribute of the same name (the object is
    frozen).

    Parameters
    ----------
    labels
        Canonical label per cell (targets sorted and joined; control and unassigned labels as given).
    is_control
        Whether each cell is a non-targeting control.
    is_unassigned
        Whether each cell has no usable perturbation call; such cells are kept but not fitted.
    targets
        Sorted list of all targets perturbed in any cell.
    matrix
        Sparse multi-hot matrix (cells x targets), ``float32``; rows of controls and unassigned cells are 0.
    control_label
        Canonical control label.
    unassigned_label
        Canonical unassigned label, or ``None``.
    separator
        Separator between the targets of a combination.
    key
        The ``obs`` column the labels came from.
    condition_targets
        Targets of each canonical condition (canonical label to its sorted tuple of targets), as parsed;
        :meth:`condition_matrix` reads a condition's targets here and parses only labels that are not in it.
    """

    labels: np.ndarray
    is_control: np.ndarray
    is_unassigned: np.ndarray
    targets: list[str]
    matrix: sp.csr_matrix
    control_label: str
    unassigned_label: str | None
    separator: str
    key: str = "perturbation"
    condition_targets: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def n_cells(self) -> int:
        """Number of cells."""
        return len(self.labels)

    @property
    def fit_mask(self) -> np.ndarray:
        """Cells used for fitting (all but unassigned)."""
        return ~self.is_unassigned

    @property
    def conditions(self) -> list[str]:
        """Canonical conditions of assigned cells: the control first, then perturbations sorted."""
        labs = set(self.labels[self.fit_mask].tolist())
        others = sorted(labs - {self.control_label})
        return ([self.control_label] if self.control_label in labs else []) + others

    @property
    def n_targets_per_cell(self) -> np.ndarray:
        """Number of targets per cell (0 for controls and unassigned cells)."""
        return np.asarray(self.matrix.sum(axis=1)).ravel().astype(int)

    def entries(self) -> np.ndarray:
        """Return the targets of each cell: their positions in :attr:`targets` (cells x largest order, ``-1`` padding).

        The compact form of :attr:`matrix` that registration stores: a cell carries a few targets whatever the
        number of targets of the screen, so a minibatch of it costs the same in a genome-wide screen.

        Returns
        -------
        An integer array, cells x largest order.
        """
        m = sp.csr_matrix(self.matrix)
        m.eliminate_zeros()
        m.sort_indices()
        counts = np.diff(m.indptr)
        k = max(int(counts.max()) if len(counts) else 0, 1)
        out = np.full((m.shape[0], k), -1, dtype=np.float32)
        rows = np.repeat(np.arange(m.shape[0]), counts)
        out[rows, np.arange(m.nnz) - np.repeat(m.indptr[:-1], counts)] = m.indices
        return out

    def cell_counts(self) -> pd.Series:
        """Count cells per canonical label (unassigned included).

        Returns
        -------
        A Series of cell counts indexed by canonical label.
        """
        return pd.Series(self.labels).value_counts()

    def target_index(self, var_names: Sequence[str], targets: Sequence[str] | None = None) -> np.ndarray:
        """Position of each target in ``var_names``, ``-1`` where the target is not measured.

        Parameters
        ----------
        var_names
            Gene names of the data.
        targets
            Targets to look up; :attr:`targets` when ``None``.

        Returns
        -------
        Integer array with one position per target.
        """
        pos = {g: i for i, g in enumerate(var_names)}
        return np.array([pos.get(t, -1) for t in (self.targets if targets is None else targets)], dtype=int)

    def condition_matrix(self, conditions: Sequence[str]) -> sp.csr_matrix:
        """Multi-hot matrix (conditions x targets) of canonical conditions in this design.

        Parameters
        ----------
        conditions
            Condition labels (canonical, or parsed with this design's ``separator`` and ``control_label``); a
            target outside :attr:`targets` raises a ``KeyError``.

        Returns
        -------
        Sparse ``float32`` matrix, one row per condition (all zero for the control).
        """
        col = {t: i for i, t in enumerate(self.targets)}
        rows, cols = [], []
        for r, c in enumerate(conditions):
            tg = self.condition_targets.get(c)
            if tg is None:
                tg = parse_condition(c, separator=self.separator, control_label=self.control_label, key=self.key)
            for t in tg:
                if t not in col:
                    msg = f"Target {t!r} of condition {c!r} is not among the {len(col)} targets of obs[{self.key!r}]."
                    raise KeyError(msg)
                rows.append(r)
                cols.append(col[t])
        data = np.ones(len(rows), dtype=np.float32)
        return sp.csr_matrix((data, (rows, cols)), shape=(len(conditions), len(self.targets)))


#: words that name control guides in the labels of common screens (non-targeting, safe-targeting, scrambled...)
_CONTROL_WORDS = ("non-targeting", "nontargeting", "non_targeting", "safe", "control", "ctrl", "scrambl", "intergenic")


def _likely_controls(labels: Sequence[str], controls: Sequence[str]) -> list[str]:
    """Labels that look like the controls: the control label in another case, then labels naming a control word."""
    wanted = {c.lower() for c in controls}
    same = [u for u in labels if u.strip().lower() in wanted]
    words = [u for u in labels if u not in same and any(w in u.lower() for w in _CONTROL_WORDS)]
    return [*same, *words]


@fill_doc
def parse_perturbations(
    labels: Sequence[str] | pd.Series | np.ndarray,
    *,
    control_label: str | Sequence[str] = "NT",
    separator: str = "+",
    unassigned_label: str | Sequence[str] | None = "unassigned",
    var_names: Sequence[str] | None = None,
    targets: Sequence[str] | None = None,
    key: str = "perturbation",
    require_control: bool = True,
) -> PerturbationDesign:
    """Parse per-cell perturbation labels into a canonical design.

    Parameters
    ----------
    labels
        One label per cell: a target (``"STAT1"``), a combination (``"STAT1+JAK2"``), a control label or an
        unassigned label.
    control_label
        %(control_label)s The first one is the canonical control label.
    separator
        %(separator)s
    unassigned_label
        %(unassigned_label)s They are kept but excluded from fitting.
    var_names
        Gene names, used to detect separators inside gene names.
    targets
        Fixed list of targets (e.g. from a trained model). A label naming another target raises.
    key
        Name of the ``obs`` column, used in error messages.
    require_control
        Raise when no cell carries the control label.

    Returns
    -------
    The parsed :class:`PerturbationDesign`.

    Raises
    ------
    ValueError
        For missing (NaN) labels, malformed labels, a combination with an unassigned label as a part, no control
        cells or targets outside ``targets``.
    TypeError
        For a label that is a list, tuple or other container.
    """
    require_control = check_flag(require_control, "require_control")
    controls, unassigned = _label_options(control_label, separator, unassigned_label)
    ser = _label_series(labels, key)
    uniq, inverse = np.unique(ser.to_numpy(), return_inverse=True)
    canon_control = controls[0]
    canon_unassigned = unassigned[0] if unassigned else None
    parsed: dict[str, tuple[str, ...] | None] = {}
    for u in uniq:
        if u.strip() in unassigned:
            parsed[u] = None
        else:
            parsed[u] = parse_condition(u, separator=separator, control_label=controls, key=key, genes=var_names)
    check_unassigned_parts(parsed, unassigned, key)
    all_targets = _design_targets(parsed, targets, key)
    canon_of_uniq, is_ctrl_u, is_un_u, rows_u, condition_targets = _canonical_conditions(
        uniq, parsed, all_targets, separator, canon_control, canon_unassigned
    )
    canon = canon_of_uniq[inverse].astype(str)
    is_control = is_ctrl_u[inverse]
    is_unassigned = is_un_u[inverse]
    matrix = _multi_hot(rows_u, inverse, len(ser), len(all_targets))
    if require_control and not is_control.any():
        likely = _likely_controls(uniq, controls)
        seen = ", ".join(repr(x) for x in [*likely, *(u for u in uniq if u not in likely)][:8])
        hint = f"Did you mean control_label={likely[0]!r}? " if likely else ""
        msg = (
            f"No control cells: no label of obs[{key!r}] equals control_label={control_label!r} "
            f"({len(uniq)} labels; seen include {seen}). {hint}Pass the label your controls carry, e.g. "
            "control_label='non-targeting'."
        )
        raise ValueError(msg)
    n_un = int(is_unassigned.sum())
    if n_un:
        logger.info("%d of %d cells are unassigned (%r); they are kept but not fitted.", n_un, len(ser), unassigned)
    return PerturbationDesign(
        labels=canon,
        is_control=is_control,
        is_unassigned=is_unassigned,
        targets=list(all_targets),
        matrix=matrix,
        control_label=canon_control,
        unassigned_label=canon_unassigned,
        separator=separator,
        key=key,
        condition_targets=condition_targets,
    )


def _label_options(
    control_label: str | Sequence[str], separator: str, unassigned_label: str | Sequence[str] | None
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Check the label options of :func:`parse_perturbations`.

    Parameters
    ----------
    control_label
        The control label(s).
    separator
        The separator between the targets of a combination.
    unassigned_label
        The unassigned label(s), or ``None``.

    Returns
    -------
    The control labels and the unassigned labels, as tuples of strings.

    Raises
    ------
    ValueError
        For no or a blank control label, a blank separator, or a label that is both a control and unassigned.
    """
    controls = _as_tuple(control_label)
    if len(controls) == 0 or any(c.strip() == "" for c in controls):
        msg = f"`control_label` must be a non-empty label, got {control_label!r}."
        raise ValueError(msg)
    check_separator(separator)
    unassigned = _as_tuple(unassigned_label)
    overlap = set(controls) & set(unassigned)
    if overlap:
        msg = f"Labels {sorted(overlap)} are given both as `control_label` and `unassigned_label`."
        raise ValueError(msg)
    return controls, unassigned


def _label_series(labels: Sequence[str] | pd.Series | np.ndarray, key: str) -> pd.Series:
    """Return the labels as a series of strings, refusing missing (NaN) labels.

    Parameters
    ----------
    labels
        One label per cell.
    key
        Name of the ``obs`` column, used in error messages.

    Returns
    -------
    The labels as strings.

    Raises
    ------
    ValueError
        For missing labels.
    """
    arr = np.asarray(labels, dtype=object)
    check_label_array(arr, key)
    ser = pd.Series(arr)
    na = ser.isna().to_numpy()
    if na.any():
        msg = (
            f"obs[{key!r}] has {int(na.sum())} missing (NaN) labels; fill them with the unassigned label "
            f"(e.g. adata.obs[{key!r}] = adata.obs[{key!r}].astype(object).fillna('unassigned')) or with targets."
        )
        raise ValueError(msg)
    return ser.astype(str)


def _design_targets(parsed: dict[str, tuple[str, ...] | None], targets: Sequence[str] | None, key: str) -> list[str]:
    """Return the targets of the design: those the labels name, or a fixed list that must hold them all.

    Parameters
    ----------
    parsed
        The targets of each distinct label (``None`` for unassigned labels).
    targets
        A fixed list of targets, or ``None``.
    key
        Name of the ``obs`` column, used in error messages.

    Returns
    -------
    The sorted targets the labels name, or ``targets`` as a list.

    Raises
    ------
    ValueError
        When a label names a target outside ``targets``.
    """
    all_targets = sorted({t for tg in parsed.values() if tg for t in tg})
    if targets is not None:
        unknown = sorted(set(all_targets) - set(targets))
        if unknown:
            msg = (
                f"obs[{key!r}] perturbs target(s) {unknown[:10]} that were not registered "
                f"({len(targets)} known targets). Register the data anew or predict them with `model.predict`."
            )
            raise ValueError(msg)
        all_targets = list(targets)
    return all_targets


def _canonical_conditions(
    uniq: np.ndarray,
    parsed: dict[str, tuple[str, ...] | None],
    all_targets: Sequence[str],
    separator: str,
    canon_control: str,
    canon_unassigned: str | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[list[int]], dict[str, tuple[str, ...]]]:
    """Canonical label, kind and target columns of each distinct label.

    Parameters
    ----------
    uniq
        The distinct labels, sorted.
    parsed
        The targets of each distinct label (``None`` for unassigned labels).
    all_targets
        The targets of the design (the columns of its matrix).
    separator
        The separator between the targets of a combination.
    canon_control
        The canonical control label.
    canon_unassigned
        The canonical unassigned label, or ``None``.

    Returns
    -------
    For each distinct label: its canonical label (object array), whether it is a control, whether it is
    unassigned, and the columns of its targets; and the targets of each canonical condition.
    """
    col = {t: i for i, t in enumerate(all_targets)}
    canon_of_uniq = np.empty(len(uniq), dtype=object)
    is_ctrl_u = np.zeros(len(uniq), dtype=bool)
    is_un_u = np.zeros(len(uniq), dtype=bool)
    rows_u: list[list[int]] = []
    condition_targets: dict[str, tuple[str, ...]] = {}
    for i, u in enumerate(uniq):
        tg = parsed[u]
        if tg is None:
            canon_of_uniq[i] = canon_unassigned
            is_un_u[i] = True
            rows_u.append([])
        else:
            lab = canonical_label(tg, separator=separator, control_label=canon_control)
            canon_of_uniq[i] = lab
            condition_targets[lab] = tg
            is_ctrl_u[i] = len(tg) == 0
            rows_u.append([col[t] for t in tg])
    return canon_of_uniq, is_ctrl_u, is_un_u, rows_u, condition_targets


def _multi_hot(rows_u: list[list[int]], inverse: np.ndarray, n_cells: int, n_targets: int) -> sp.csr_matrix:
    """Multi-hot matrix (cells x targets) of the cells, from the target columns of their distinct labels.

    Parameters
    ----------
    rows_u
        The target columns of each distinct label.
    inverse
        The distinct label of each cell (its position in ``rows_u``).
    n_cells
        Number of cells.
    n_targets
        Number of targets (columns).

    Returns
    -------
    Sparse ``float32`` matrix.
    """
    indptr = np.zeros(n_cells + 1, dtype=np.int64)
    counts_u = np.array([len(r) for r in rows_u], dtype=np.int64)
    indptr[1:] = np.cumsum(counts_u[inverse])
    indices = np.concatenate([np.asarray(rows_u[k], dtype=np.int64) for k in inverse]) if n_cells else np.zeros(0)
    data = np.ones(len(indices), dtype=np.float32)
    return sp.csr_matrix((data, indices.astype(np.int64), indptr), shape=(n_cells, n_targets))
