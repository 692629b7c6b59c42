"""What a split holds out: the test conditions (or groups) and their cells, by kind of split."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd

from scmech.data._design import canonical_condition, parse_condition

if TYPE_CHECKING:
    from collections.abc import Sequence

    from scmech.data._design import PerturbationDesign

logger = logging.getLogger(__name__)


class _HeldOut(NamedTuple):
    """What a split holds out: test conditions, test cells, excluded cells, reference controls and groups."""

    chosen: list[str]
    test_mask: np.ndarray
    excluded_mask: np.ndarray
    control_ref: np.ndarray
    test_groups: list[Any]


def _held_out(
    full: Any,
    kind: str,
    group_key: str | None,
    given: Sequence[Any] | None,
    *,
    test_size: float,
    seen: int,
    controls_in_train: bool,
    restrict_to_measured: bool,
    genes: set[str],
    rng: np.random.Generator,
    key: str,
) -> _HeldOut:
    """Choose what a split of ``kind`` holds out (``full`` is the data's design, ``key`` the perturbation column).

    ``control_ref`` is the held-out groups' controls for batch, time and media splits and all assigned controls
    otherwise (:func:`split` then narrows it to the training controls).
    """
    design = full.perturbation
    assigned = design.fit_mask
    perts = [c for c in design.conditions if c != design.control_label]
    if not perts:
        msg = f"obs[{key!r}] has no perturbed (non-control, assigned) cells to hold out."
        raise ValueError(msg)
    excluded_mask = np.zeros(len(design.labels), dtype=bool)
    control_ref = assigned & design.is_control
    if kind == "perturbation":
        chosen = _perturbation_choice(design, perts, given, test_size, restrict_to_measured, genes, rng, key)
        return _HeldOut(chosen, assigned & np.isin(design.labels, chosen), excluded_mask, control_ref, [])
    if kind == "combination":
        chosen, test_mask, excluded_mask = _combination_test(
            design, perts, given, test_size, seen, restrict_to_measured, genes, rng, key
        )
        return _HeldOut(chosen, test_mask, excluded_mask, control_ref, [])
    chosen, test_mask, control_ref, test_groups = _group_test(
        full, kind, group_key, given, test_size, controls_in_train, rng
    )
    return _HeldOut(chosen, test_mask, excluded_mask, control_ref, test_groups)


def _n_pick(n: int, test_size: float, *, keep_one: bool) -> int:
    k = max(1, round(test_size * n))
    return min(k, n - 1) if keep_one else min(k, n)


def _targets(design: PerturbationDesign, cond: str) -> tuple[str, ...]:
    tg = design.condition_targets.get(cond)
    if tg is None:
        tg = parse_condition(cond, separator=design.separator, control_label=design.control_label)
    return tg


def _given_conditions(given: Sequence[Any], design: PerturbationDesign, perts: list[str], key: str) -> list[str]:
    out = []
    for g in given:
        c = canonical_condition(g, design, "test condition")
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


def _perturbation_choice(
    design: PerturbationDesign,
    perts: list[str],
    given: Sequence[Any] | None,
    test_size: float,
    restrict_to_measured: bool,
    genes: set[str],
    rng: np.random.Generator,
    key: str,
) -> list[str]:
    """Choose the test perturbations of a perturbation split (given, or a random ``test_size`` share)."""
    if given is not None:
        chosen = _given_conditions(given, design, perts, key)
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
                f"obs[{key!r}] has a single perturbation ({perts[0]!r}): a perturbation split must "
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
    return chosen


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


def _combination_test(
    design: PerturbationDesign,
    perts: list[str],
    given: Sequence[Any] | None,
    test_size: float,
    seen: int,
    restrict_to_measured: bool,
    genes: set[str],
    rng: np.random.Generator,
    key: str,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Test conditions, test cells and excluded cells of a combination split.

    The test set holds the chosen combinations and the singles of the targets held out everywhere; training
    conditions containing such a target are excluded from every set.
    """
    assigned = design.fit_mask
    chosen, held_targets = _combination_choice(
        design, perts, given, test_size, seen, restrict_to_measured, genes, rng, key
    )
    test_conds = set(chosen)
    held_singles = [c for c in perts if len(_targets(design, c)) == 1 and _targets(design, c)[0] in held_targets]
    test_conds |= set(held_singles)
    test_mask = assigned & np.isin(design.labels, sorted(test_conds))
    leak = [c for c in perts if c not in test_conds and any(t in held_targets for t in _targets(design, c))]
    excluded_mask = assigned & np.isin(design.labels, leak)
    if leak:
        logger.info(
            "Excluded %d training condition(s) containing held-out targets %s: %s",
            len(leak),
            sorted(held_targets),
            leak[:10],
        )
    return sorted(test_conds), test_mask, excluded_mask


def _group_choice(
    full: Any,
    kind: str,
    group_key: str,
    given: Sequence[Any] | None,
    test_size: float,
    assigned: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, list[Any]]:
    """Values of the split's column per cell and the held-out values (given, or a random ``test_size`` share)."""
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
            v = _time_value(g, group_key) if kind == "time" else str(g)
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


def _time_value(value: Any, group_key: str) -> float:
    """Return a held-out time point as a float; refuse bools and values that are not numbers, naming the column."""
    msg = (
        f"time value {value!r} in test_conditions is not a number; a time split holds out time points of "
        f"obs[{group_key!r}]: pass them as numbers, e.g. test_conditions=[2.0]."
    )
    if isinstance(value, bool | np.bool_):
        raise TypeError(msg)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(msg) from None


def _group_test(
    full: Any,
    kind: str,
    group_key: str,
    given: Sequence[Any] | None,
    test_size: float,
    controls_in_train: bool,
    rng: np.random.Generator,
) -> tuple[list[str], np.ndarray, np.ndarray, list[Any]]:
    """Test conditions, test cells, reference controls and held-out groups of a batch, time or media split."""
    design = full.perturbation
    assigned = design.fit_mask
    is_ctrl = design.is_control
    values, chosen_groups = _group_choice(full, kind, group_key, given, test_size, assigned, rng)
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
    chosen = sorted(set(design.labels[test_mask & ~is_ctrl].tolist()))
    return chosen, test_mask, control_ref, list(chosen_groups)
