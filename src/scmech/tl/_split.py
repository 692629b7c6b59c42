"""Held-out splits of a Perturb-seq screen: perturbations, combinations, batches, time points and media.

Evaluation never uses random cell splits: a random split puts cells of every perturbation into training, so
the "held-out" cells are predicted from their own condition. Every split here holds out whole conditions (or
the perturbed cells of whole batches, time points or media); only the validation set is a random subset of
the training cells.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from scmech.data._design import canonical_label, get_design, parse_condition

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from anndata import AnnData

    from scmech.data._design import PerturbationDesign

logger = logging.getLogger(__name__)

__all__ = ["Split", "leave_one_out", "split"]

SplitKind = Literal["perturbation", "combination", "batch", "time", "media"]
_KINDS = ("perturbation", "combination", "batch", "time", "media")
_GROUP_KEYS = {"batch": "batch_key", "time": "time_key", "media": "media_key"}


@dataclass(frozen=True)
class Split:
    """Train, validation and test cells of a held-out split.

    Attributes
    ----------
    train
        Sorted indices (into ``adata``) of the training cells.
    validation
        Sorted indices of the validation cells (a random subset of the non-test assigned cells).
    test
        Sorted indices of the held-out test cells.
    kind
        The kind of split (``"perturbation"``, ``"combination"``, ``"batch"``, ``"time"`` or ``"media"``).
    test_conditions
        Canonical perturbation labels of the test cells (control excluded).
    train_conditions
        Canonical perturbation labels of the training and validation cells (control excluded): the
        "training perturbations" of the Systema reference in :func:`scmech.tl.evaluate`.
    test_groups
        Held-out batch, time or medium values (batch, time and media splits); empty otherwise.
    group_key
        ``obs`` column of ``test_groups``, or ``None``.
    control_reference
        Sorted indices of the control cells against which test cells are compared: the training controls for
        perturbation and combination splits (so that every reference comes from training cells and the
        control mean is exactly "no change"), the controls of the held-out groups otherwise.
    excluded
        Sorted indices of assigned cells in no set (e.g. training combinations that contain a held-out target
        in a combination split with ``seen < 2``). Unassigned cells are never in any set and are not listed.
    params
        The arguments the split was made with.
    """

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    kind: str
    test_conditions: list[str]
    train_conditions: list[str]
    test_groups: list[Any] = field(default_factory=list)
    group_key: str | None = None
    control_reference: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    excluded: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def external_indexing(self) -> list[np.ndarray]:
        """``[train, validation, test]`` for ``model.train(datasplitter_kwargs={"external_indexing": ...})``."""
        return [self.train, self.validation, self.test]

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (lists and strings), e.g. to store in ``uns`` or JSON."""
        return {
            "kind": self.kind,
            "train": self.train.tolist(),
            "validation": self.validation.tolist(),
            "test": self.test.tolist(),
            "test_conditions": list(self.test_conditions),
            "train_conditions": list(self.train_conditions),
            "test_groups": [g.item() if isinstance(g, np.generic) else g for g in self.test_groups],
            "group_key": self.group_key,
            "control_reference": self.control_reference.tolist(),
            "excluded": self.excluded.tolist(),
            "params": dict(self.params),
        }

    def __repr__(self) -> str:
        tc = ", ".join(self.test_conditions[:6]) + (" ..." if len(self.test_conditions) > 6 else "")
        groups = f", test_groups={self.test_groups}" if self.test_groups else ""
        return (
            f"Split(kind={self.kind!r}, train={len(self.train)}, validation={len(self.validation)}, "
            f"test={len(self.test)} cells, test_conditions=[{tc}]{groups})"
        )


# ---------------------------------------------------------------------- helpers
def _canonical(label: str, design: PerturbationDesign, what: str = "test condition") -> str:
    try:
        targets = parse_condition(str(label), separator=design.separator, control_label=design.control_label)
    except ValueError as e:
        msg = f"Cannot parse {what} {label!r}: {e}"
        raise ValueError(msg) from e
    return canonical_label(targets, separator=design.separator, control_label=design.control_label)


def _check_fraction(value: float, name: str, *, allow_zero: bool) -> None:
    lo_ok = value >= 0 if allow_zero else value > 0
    if not (np.isfinite(value) and lo_ok and value < 1):
        bound = "[0, 1)" if allow_zero else "(0, 1)"
        msg = f"{name}={value!r} must be a fraction in {bound}."
        raise ValueError(msg)


def _n_pick(n: int, test_size: float, *, keep_one: bool) -> int:
    k = max(1, round(test_size * n))
    return min(k, n - 1) if keep_one else min(k, n)


def _targets(design: PerturbationDesign, cond: str) -> tuple[str, ...]:
    tg = design.condition_targets.get(cond)
    if tg is None:
        tg = parse_condition(cond, separator=design.separator, control_label=design.control_label)
    return tg


def _validation(train: np.ndarray, validation_size: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n_val = int(np.floor(validation_size * len(train)))
    if n_val == 0:
        return np.sort(train), np.zeros(0, dtype=np.int64)
    perm = rng.permutation(train)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


# ---------------------------------------------------------------------- main entry
def split(
    adata: AnnData,
    kind: SplitKind,
    *,
    perturbation_key: str = "perturbation",
    control_label: str | Sequence[str] = "NT",
    separator: str = "+",
    unassigned_label: str | Sequence[str] | None = "unassigned",
    batch_key: str | None = None,
    time_key: str | None = None,
    media_key: str | None = None,
    test_conditions: Sequence[Any] | str | None = None,
    test_size: float = 0.2,
    validation_size: float = 0.1,
    seen: Literal[0, 1, 2] = 2,
    controls_in_train: bool = True,
    restrict_to_measured: bool = False,
    random_state: int = 0,
) -> Split:
    """Split a screen into training, validation and held-out test cells.

    Kinds of split:

    ``"perturbation"``
        Held-out perturbations: all cells of the test conditions leave training; controls stay in training.
    ``"combination"``
        Held-out combinations (``A+B``) of which ``seen`` single targets are still perturbed in training.
        With ``seen=2`` both singles stay in training; with ``seen=1`` one target of each test combination is
        held out everywhere (its single's cells join the test set); with ``seen=0`` both are. Training
        combinations containing a held-out target are excluded from every set (see :attr:`Split.excluded`).
    ``"batch"``, ``"time"``, ``"media"``
        A held-out batch (replicate, lane), time point or medium: its perturbed cells are the test set. Its
        controls stay in training by default (``controls_in_train``), as in "train on replicates 1–2 plus the
        controls of replicate 3".

    Unassigned cells belong to no set. The validation set is a random ``validation_size`` fraction of the
    remaining training cells. Nothing is written to ``adata``.

    Parameters
    ----------
    adata
        Annotated data matrix (not modified).
    kind
        ``"perturbation"``, ``"combination"``, ``"batch"``, ``"time"`` or ``"media"``.
    perturbation_key
        ``obs`` column of perturbation labels.
    control_label
        Label (or labels) of non-targeting controls.
    separator
        Separator of combinations.
    unassigned_label
        Label (or labels) of cells without a guide call.
    batch_key
        ``obs`` column of batches (required for ``kind="batch"``).
    time_key
        ``obs`` column of time points (required for ``kind="time"``).
    media_key
        ``obs`` column of media (required for ``kind="media"``).
    test_conditions
        Conditions to hold out instead of a random choice: perturbation labels for ``"perturbation"`` and
        ``"combination"``, batch, time or medium values for the other kinds.
    test_size
        Fraction of the candidate conditions (or groups) held out when ``test_conditions`` is ``None``; at
        least one. With ``validation_size``, it must sum to less than 1.
    validation_size
        Fraction of the training cells moved to the validation set.
    seen
        Combination splits: number of single targets of each test combination still perturbed in training.
    controls_in_train
        Batch, time and media splits: whether the held-out group's controls stay in training (else they
        join the test set). Perturbation and combination splits always keep controls in training.
    restrict_to_measured
        Choose test perturbations only among those whose targets are all genes of ``adata.var_names`` (the
        linear baseline needs a measured target).
    random_state
        Seed of the random choices (:func:`numpy.random.default_rng`).

    Returns
    -------
    The :class:`Split`; pass ``split.external_indexing`` to ``model.train(datasplitter_kwargs=...)``.

    Examples
    --------
    >>> adata = scmech.datasets.papalexi2021()
    >>> sp = scmech.tl.split(adata, "perturbation", test_conditions=["STAT1", "JAK2"])
    >>> scmech.model.SemiMechVI.setup_anndata(adata)
    >>> model = scmech.model.SemiMechVI(adata)
    >>> model.train(max_epochs=20, datasplitter_kwargs={"external_indexing": sp.external_indexing})
    >>> sp_rep = scmech.tl.split(adata, "batch", batch_key="bio_rep", test_conditions=["rep_3"])
    """
    if kind not in _KINDS:
        msg = f"Unknown split kind {kind!r}; use one of {list(_KINDS)}."
        raise ValueError(msg)
    _check_fraction(test_size, "test_size", allow_zero=False)
    _check_fraction(validation_size, "validation_size", allow_zero=True)
    if test_conditions is None and test_size + validation_size >= 1:
        msg = (
            f"test_size={test_size!r} and validation_size={validation_size!r} sum to "
            f"{test_size + validation_size:.3g} >= 1, leaving (almost) nothing to train on; choose sizes that sum to "
            "less than 1 (e.g. test_size=0.2, validation_size=0.1)."
        )
        raise ValueError(msg)
    if kind == "combination" and seen not in (0, 1, 2):
        msg = f"seen={seen!r} must be 0, 1 or 2 (single targets of each test combination seen in training)."
        raise ValueError(msg)
    if kind in ("perturbation", "combination") and not controls_in_train:
        msg = (
            f"controls_in_train=False applies to batch, time and media splits; a {kind} split always keeps the "
            "controls in training. Leave controls_in_train=True."
        )
        raise ValueError(msg)
    group_key = None
    if kind in _GROUP_KEYS:
        group_key = {"batch": batch_key, "time": time_key, "media": media_key}[kind]
        if group_key is None:
            arg = _GROUP_KEYS[kind]
            msg = f"A {kind!r} split needs `{arg}`: the obs column of the {kind} values (e.g. {arg}='bio_rep')."
            raise ValueError(msg)
    if isinstance(test_conditions, str | int | float | np.number):
        test_conditions = [test_conditions]
    params = {
        "kind": kind,
        "perturbation_key": perturbation_key,
        "control_label": control_label,
        "separator": separator,
        "unassigned_label": unassigned_label,
        "batch_key": batch_key,
        "time_key": time_key,
        "media_key": media_key,
        "test_size": test_size,
        "validation_size": validation_size,
        "seen": seen,
        "controls_in_train": controls_in_train,
        "restrict_to_measured": restrict_to_measured,
        "random_state": random_state,
    }
    full = get_design(
        adata,
        perturbation_key,
        control_label,
        separator=separator,
        unassigned_label=unassigned_label,
        batch_key=batch_key if kind == "batch" else None,
        time_key=time_key if kind == "time" else None,
        media_key=media_key if kind == "media" else None,
        warn_missing_controls=False,
    )
    design = full.perturbation
    rng = np.random.default_rng(random_state)
    labels = design.labels
    assigned = design.fit_mask
    is_ctrl = design.is_control
    perts = [c for c in design.conditions if c != design.control_label]
    if not perts:
        msg = f"obs[{perturbation_key!r}] has no perturbed (non-control, assigned) cells to hold out."
        raise ValueError(msg)
    genes = set(map(str, adata.var_names))

    test_mask = np.zeros(adata.n_obs, dtype=bool)
    excluded_mask = np.zeros(adata.n_obs, dtype=bool)
    control_ref = assigned & is_ctrl
    test_groups: list[Any] = []

    if kind == "perturbation":
        if test_conditions is not None:
            chosen = _given_conditions(test_conditions, design, perts, perturbation_key)
        else:
            cands = [c for c in perts if not restrict_to_measured or all(t in genes for t in _targets(design, c))]
            if not cands:
                msg = (
                    "restrict_to_measured=True, but no perturbation has all its targets in adata.var_names; "
                    "pass restrict_to_measured=False or test_conditions."
                )
                raise ValueError(msg)
            k = _n_pick(len(cands), test_size, keep_one=len(cands) == len(perts))
            if k == 0:
                msg = (
                    f"obs[{perturbation_key!r}] has a single perturbation ({perts[0]!r}): a perturbation split must "
                    "keep one in training, so nothing is left to hold out. Split a screen with at least two "
                    "perturbations, or split by batch, time or medium."
                )
                raise ValueError(msg)
            chosen = sorted(rng.choice(cands, size=k, replace=False).tolist())
        if set(chosen) >= set(perts):
            msg = (
                f"The test conditions {chosen} hold out every perturbation, so nothing perturbed is left to train "
                "on. Hold out fewer conditions."
            )
            raise ValueError(msg)
        test_mask = assigned & np.isin(labels, chosen)
    elif kind == "combination":
        chosen, held_targets = _combination_choice(
            design, perts, test_conditions, test_size, seen, restrict_to_measured, genes, rng, perturbation_key
        )
        test_conds = set(chosen)
        held_singles = [c for c in perts if len(_targets(design, c)) == 1 and _targets(design, c)[0] in held_targets]
        test_conds |= set(held_singles)
        test_mask = assigned & np.isin(labels, sorted(test_conds))
        leak = [c for c in perts if c not in test_conds and any(t in held_targets for t in _targets(design, c))]
        excluded_mask = assigned & np.isin(labels, leak)
        if leak:
            logger.info(
                "Excluded %d training condition(s) containing held-out targets %s: %s",
                len(leak),
                sorted(held_targets),
                leak[:10],
            )
        chosen = sorted(test_conds)
    else:
        values, chosen_groups = _group_choice(full, kind, group_key, test_conditions, test_size, assigned, rng)
        in_group = np.isin(values, chosen_groups)
        test_mask = assigned & in_group & ~is_ctrl
        if not controls_in_train:
            test_mask |= assigned & in_group & is_ctrl
        if not test_mask[~is_ctrl].any():
            msg = f"{kind} value(s) {chosen_groups} of obs[{group_key!r}] hold no perturbed cells to test."
            raise ValueError(msg)
        control_ref = assigned & is_ctrl & in_group
        if not control_ref.any():
            logger.warning(
                "%s value(s) %s of obs[%r] hold no control cells; test cells will be compared with all controls.",
                kind,
                chosen_groups,
                group_key,
            )
            control_ref = assigned & is_ctrl
        test_groups = list(chosen_groups)
        chosen = sorted(set(labels[test_mask & ~is_ctrl].tolist()))

    train_mask = assigned & ~test_mask & ~excluded_mask
    train_all = np.flatnonzero(train_mask)
    if len(train_all) == 0:
        msg = "Nothing left to train on: every assigned cell is in the test set. Hold out fewer conditions."
        raise ValueError(msg)
    if not (train_mask & is_ctrl).any():
        msg = (
            f"No control cells ({design.control_label!r}) are left in training; models need training controls. "
            "Keep controls_in_train=True or add controls to other groups."
        )
        raise ValueError(msg)
    train_conds = sorted(set(labels[train_mask & ~is_ctrl].tolist()))
    if not train_conds:
        msg = "No perturbed cells are left in training; hold out fewer conditions or groups."
        raise ValueError(msg)
    train, validation = _validation(train_all, validation_size, rng)
    if kind in ("perturbation", "combination"):
        # changes are measured from the training controls, the reference every model was fitted on
        control_ref = np.zeros(len(labels), dtype=bool)
        control_ref[train] = True
        control_ref &= is_ctrl
    test = np.flatnonzero(test_mask).astype(np.int64)
    out = Split(
        train=train.astype(np.int64),
        validation=validation.astype(np.int64),
        test=test,
        kind=kind,
        test_conditions=[c for c in chosen if c != design.control_label],
        train_conditions=train_conds,
        test_groups=test_groups,
        group_key=group_key,
        control_reference=np.flatnonzero(control_ref).astype(np.int64),
        excluded=np.flatnonzero(excluded_mask).astype(np.int64),
        params=params,
    )
    logger.info("%r", out)
    return out


def _given_conditions(given: Sequence[Any], design: PerturbationDesign, perts: list[str], key: str) -> list[str]:
    out = []
    for g in given:
        c = _canonical(g, design)
        if c == design.control_label:
            msg = f"Test condition {g!r} is the control; controls cannot be held out as a test perturbation."
            raise ValueError(msg)
        if c not in perts:
            msg = (
                f"Test condition {g!r} (canonical {c!r}) has no assigned cells in obs[{key!r}]. "
                f"Available perturbations include {perts[:12]}."
            )
            raise KeyError(msg)
        out.append(c)
    if not out:
        msg = "test_conditions is empty; pass at least one condition or None for a random choice."
        raise ValueError(msg)
    return sorted(set(out))


def _combination_choice(
    design: PerturbationDesign,
    perts: list[str],
    given: Sequence[Any] | None,
    test_size: float,
    seen: int,
    restrict_to_measured: bool,
    genes: set[str],
    rng: np.random.Generator,
    key: str,
) -> tuple[list[str], set[str]]:
    """Choose test combinations and the targets held out everywhere so that each has ``seen`` seen singles."""
    combos = [c for c in perts if len(_targets(design, c)) >= 2]
    if not combos:
        msg = (
            f"A combination split needs combinations (labels like 'A{design.separator}B') in obs[{key!r}], but all "
            "perturbations are singles. Use kind='perturbation'."
        )
        raise ValueError(msg)
    singles = {_targets(design, c)[0] for c in perts if len(_targets(design, c)) == 1}

    def n_seen(c: str, held: set[str]) -> int:
        return sum(1 for t in _targets(design, c) if t in singles and t not in held)

    def try_add(c: str, held: set[str], accepted: list[str]) -> set[str] | None:
        tg = list(_targets(design, c))
        n_unseen = len(tg) - seen
        # targets that cannot be seen alone: already held out, or never perturbed alone in the data
        forced = [t for t in tg if t in held or t not in singles]
        if n_unseen < 0 or len(forced) > n_unseen:
            return None
        free = [t for t in tg if t not in forced]
        extra = rng.choice(free, size=n_unseen - len(forced), replace=False).tolist() if free else []
        new_held = set(held) | set(forced) | set(extra)
        if any(n_seen(a, new_held) != seen for a in [*accepted, c]):
            return None
        return new_held

    held: set[str] = set()
    accepted: list[str] = []
    if given is not None:
        chosen = _given_conditions(given, design, perts, key)
        for c in chosen:
            if len(_targets(design, c)) < 2:
                msg = f"Test condition {c!r} is not a combination; a combination split holds out 'A+B' labels."
                raise ValueError(msg)
            new = try_add(c, held, accepted)
            if new is None:
                msg = (
                    f"Cannot hold out {c!r} with seen={seen}: its single targets present in training are "
                    f"{[t for t in _targets(design, c) if t in singles]}, and held-out targets {sorted(held)} "
                    "conflict with the other test combinations. Choose other combinations or another `seen`."
                )
                raise ValueError(msg)
            held, accepted = new, [*accepted, c]
        return accepted, held
    cands = [c for c in combos if not restrict_to_measured or all(t in genes for t in _targets(design, c))]
    if not cands:
        msg = "restrict_to_measured=True, but no combination has all its targets in adata.var_names."
        raise ValueError(msg)
    k = _n_pick(len(cands), test_size, keep_one=False)
    for i in rng.permutation(len(cands)):
        c = cands[i]
        new = try_add(c, held, accepted)
        if new is None:
            continue
        held, accepted = new, [*accepted, c]
        if len(accepted) >= k:
            break
    if not accepted:
        msg = (
            f"No combination can be held out with seen={seen}: seen=2 needs both single targets perturbed "
            f"alone in the data (singles present: {sorted(singles)[:10]}). Lower `seen` or add singles."
        )
        raise ValueError(msg)
    if len(accepted) < k:
        logger.info("Only %d of the %d requested combinations could be held out with seen=%d.", len(accepted), k, seen)
    return sorted(accepted), held


def _group_choice(full, kind, group_key, given, test_size, assigned, rng) -> tuple[np.ndarray, list[Any]]:
    if kind == "time":
        values = np.asarray(full.time, dtype=np.float64)
    else:
        col = full.batch if kind == "batch" else full.media
        values = np.asarray(col).astype(str)
    present = pd.unique(values[assigned])
    present = sorted(present.tolist())
    if len(present) < 2:
        msg = (
            f"obs[{group_key!r}] has {len(present)} {kind} value(s) among assigned cells; a {kind} split needs at "
            "least two (one to hold out, one to train on)."
        )
        raise ValueError(msg)
    if given is not None:
        chosen = []
        for g in given:
            v = float(g) if kind == "time" else str(g)
            if v not in present:
                msg = f"{kind} value {g!r} is not in obs[{group_key!r}] (values: {present[:12]})."
                raise KeyError(msg)
            chosen.append(v)
        if not chosen:
            msg = "test_conditions is empty; pass at least one value or None for a random choice."
            raise ValueError(msg)
        chosen = sorted(set(chosen))
        if len(chosen) >= len(present):
            msg = f"test_conditions {chosen} hold out every {kind} of obs[{group_key!r}]; nothing is left to train on."
            raise ValueError(msg)
    else:
        k = _n_pick(len(present), test_size, keep_one=True)
        idx = sorted(rng.choice(len(present), size=k, replace=False).tolist())
        chosen = [present[i] for i in idx]
    return values, chosen


def leave_one_out(
    adata: AnnData,
    *,
    perturbation_key: str = "perturbation",
    control_label: str | Sequence[str] = "NT",
    separator: str = "+",
    unassigned_label: str | Sequence[str] | None = "unassigned",
    conditions: Sequence[str] | None = None,
    validation_size: float = 0.1,
    restrict_to_measured: bool = False,
    random_state: int = 0,
) -> Iterator[Split]:
    """Leave-one-perturbation-out splits: one :func:`split` of kind ``"perturbation"`` per condition.

    Parameters
    ----------
    adata
        Annotated data matrix (not modified).
    perturbation_key
        ``obs`` column of perturbation labels.
    control_label
        Label (or labels) of non-targeting controls.
    separator
        Separator of combinations.
    unassigned_label
        Label (or labels) of cells without a guide call.
    conditions
        Conditions to leave out in turn; all perturbations (restricted to measured targets with
        ``restrict_to_measured``) when ``None``.
    validation_size
        Fraction of training cells in each validation set.
    restrict_to_measured
        With ``conditions=None``, only perturbations whose targets are all genes of ``adata.var_names``.
    random_state
        Seed of the validation sets.

    Returns
    -------
    An iterator of :class:`Split` (one per condition, in sorted order); wrap it in ``list`` to keep them all.
    Arguments are checked before the first split is made.

    Examples
    --------
    >>> for sp in scmech.tl.leave_one_out(adata, conditions=["STAT1", "JAK2"]):
    ...     model = scmech.tl.LinearModel(adata)
    ...     model.train(datasplitter_kwargs={"external_indexing": sp.external_indexing})
    """
    design = get_design(
        adata,
        perturbation_key,
        control_label,
        separator=separator,
        unassigned_label=unassigned_label,
        warn_missing_controls=False,
    ).perturbation
    perts = [c for c in design.conditions if c != design.control_label]
    if conditions is None:
        genes = set(map(str, adata.var_names))
        conds = [c for c in perts if not restrict_to_measured or all(t in genes for t in _targets(design, c))]
    else:
        conds = _given_conditions(list(conditions), design, perts, perturbation_key)
    if len(perts) < 2:
        msg = "Leave-one-out needs at least two perturbations (one held out, the others to train on)."
        raise ValueError(msg)
    _check_fraction(validation_size, "validation_size", allow_zero=True)

    def _gen() -> Iterator[Split]:
        for c in conds:
            yield split(
                adata,
                "perturbation",
                perturbation_key=perturbation_key,
                control_label=control_label,
                separator=separator,
                unassigned_label=unassigned_label,
                test_conditions=[c],
                validation_size=validation_size,
                random_state=random_state,
            )

    return _gen()
