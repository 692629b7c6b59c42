"""Checks of ``train``'s arguments, before anything is set up."""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import os

__all__ = ["_check_mappings", "_check_plan_keys", "_check_train_arguments", "_external_sets"]


def _whole(value) -> bool:
    """Whether ``value`` is a positive whole number (``2.0`` and numpy integers included; ``True`` not)."""
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and np.isfinite(value)
        and int(value) == value
        and value >= 1
    )


def _check_mappings(**mappings) -> None:
    """Refuse ``plan_kwargs``/``datasplitter_kwargs`` that are not dictionaries (``None`` is fine).

    Parameters
    ----------
    **mappings
        Each argument by name.

    Raises
    ------
    TypeError
        Naming the first argument that is not a dict.
    """
    examples = {"plan_kwargs": "{'lr': 1e-3}", "datasplitter_kwargs": "{'external_indexing': [train, validation]}"}
    for name, value in mappings.items():
        if value is not None and not isinstance(value, Mapping):
            msg = f"{name}={value!r} must be a dict of keyword arguments (or None), e.g. {examples.get(name, '{}')}."
            raise TypeError(msg)


def _check_plan_keys(plan_kwargs: Mapping | None, plan_cls: type, module) -> None:
    """Refuse ``plan_kwargs`` keys that neither the training plan nor the module's loss takes.

    scvi-tools' plan hands unknown keys to the module's ``loss``, which raises only at the first training step.

    Parameters
    ----------
    plan_kwargs
        ``train``'s ``plan_kwargs``.
    plan_cls
        The model's training plan class.
    module
        The model's module.

    Raises
    ------
    KeyError
        Naming the unknown keys and the known ones.
    """
    if not plan_kwargs:
        return
    known: set[str] = set()
    for fn in [*(klass.__init__ for klass in plan_cls.__mro__ if "__init__" in vars(klass)), module.loss]:
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):  # pragma: no cover - builtins
            continue
        known |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    known -= {"self", "module", "tensors", "inference_outputs", "generative_outputs", "args", "kwargs"}
    unknown = sorted(set(plan_kwargs) - known)
    if unknown:
        msg = f"plan_kwargs has unknown keys {unknown}; the training plan and the loss take {sorted(known)}."
        raise KeyError(msg)


def _external_sets(external) -> list[np.ndarray]:
    """Check ``external_indexing``: at most three disjoint sets of integer cell positions, each without repeats.

    Parameters
    ----------
    external
        The user's ``[train, validation, test]``.

    Returns
    -------
    The sets as integer arrays.

    Raises
    ------
    ValueError
        For more than three sets, boolean masks, names, fractional positions, repeats or overlaps.
    """
    fix = "pass [train, validation, test] as integer positions, e.g. np.flatnonzero(mask) for a boolean mask."
    if isinstance(external, str | np.ndarray) or not hasattr(external, "__len__") or not 1 <= len(external) <= 3:
        msg = f"external_indexing must be a list of up to three sets of cells ([train, validation, test]); {fix}"
        raise ValueError(msg)
    sets = []
    for k, ix in enumerate(external):
        arr = np.asarray(ix)
        if arr.dtype == bool:
            msg = f"external_indexing[{k}] is a boolean mask; {fix}"
            raise ValueError(msg)
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            whole = np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))
            if not whole:
                msg = f"external_indexing[{k}] holds {arr.dtype} values (e.g. {arr.ravel()[0]!r}), not positions; {fix}"
                raise ValueError(msg)
        arr = arr.astype(int).ravel()
        if len(np.unique(arr)) != len(arr):
            msg = f"external_indexing[{k}] lists some cells more than once; {fix}"
            raise ValueError(msg)
        sets.append(arr)
    for a in range(len(sets)):
        for b in range(a + 1, len(sets)):
            if np.intersect1d(sets[a], sets[b]).size:
                msg = f"external_indexing[{a}] and external_indexing[{b}] share cells; each cell belongs to one set."
                raise ValueError(msg)
    return sets


def _check_train_arguments(
    max_epochs: int | None,
    batch_size: int,
    ckpt_path: str | os.PathLike | None,
    plan_kwargs: dict | None = None,
) -> None:
    """Refuse bad training arguments before anything is set up.

    A number of epochs or a batch size that is not a positive integer, a checkpoint that is no file, and an
    optimiser setting that torch would reject only once training has started.

    Parameters
    ----------
    max_epochs
        ``train``'s ``max_epochs`` (``None``: scvi-tools' heuristic).
    batch_size
        ``train``'s ``batch_size``.
    ckpt_path
        ``train``'s ``ckpt_path`` (``None``: train afresh).
    plan_kwargs
        ``train``'s ``plan_kwargs``: ``lr`` must be a positive finite number, ``weight_decay`` non-negative.

    Raises
    ------
    ValueError
        For a bad ``max_epochs``, ``batch_size``, ``optimizer``, ``lr``, ``weight_decay``, loss weight
        (``ss_weight``, ``mmd_weight``) or ``dynamics_lr_factor``.
    FileNotFoundError
        When ``ckpt_path`` is not a file.
    """
    if max_epochs is not None and not _whole(max_epochs):
        msg = f"max_epochs={max_epochs!r} must be a positive integer (or None for scvi-tools' heuristic)."
        raise ValueError(msg)
    if not _whole(batch_size):
        msg = f"batch_size={batch_size!r} must be a positive integer (cells per minibatch), e.g. 128."
        raise ValueError(msg)
    if ckpt_path is not None and not Path(ckpt_path).is_file():
        msg = (
            f"ckpt_path={str(ckpt_path)!r} is not a file; pass the checkpoint a ModelCheckpoint callback wrote "
            "(e.g. '<dirpath>/last.ckpt'), or ckpt_path=None to train afresh."
        )
        raise FileNotFoundError(msg)
    plan_kwargs = plan_kwargs or {}
    optimizer = plan_kwargs.get("optimizer", "Adam")
    if optimizer not in ("Adam", "AdamW", "Custom"):
        msg = (
            f"plan_kwargs['optimizer']={optimizer!r} is not one of 'Adam', 'AdamW', 'Custom' (with 'Custom', pass "
            "plan_kwargs['optimizer_creator'])."
        )
        raise ValueError(msg)
    numbers_checked = (
        ("lr", 0.0, "a positive finite number, e.g. 1e-3"),
        ("weight_decay", None, "0 or more"),
        # a NaN or negative loss weight would silently switch its term off
        ("ss_weight", None, "a finite number >= 0 (the weight of the steady-state term; None: the model's own)"),
        ("mmd_weight", None, "a finite number >= 0 (the weight of the MMD term; None: the model's own)"),
        ("dynamics_lr_factor", 0.0, "a positive finite number (the dynamics' learning-rate multiplier)"),
    )
    for key, low, rule in numbers_checked:
        if key not in plan_kwargs or (key in ("ss_weight", "mmd_weight") and plan_kwargs[key] is None):
            continue
        value = plan_kwargs[key]
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)
        ok = ok and (value > low if low is not None else value >= 0)
        if not ok:
            msg = f"plan_kwargs[{key!r}]={value!r} must be {rule}."
            raise ValueError(msg)
