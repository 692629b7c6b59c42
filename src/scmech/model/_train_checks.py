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

__all__ = [
    "_check_accelerator",
    "_check_distributed_split",
    "_check_early_stopping",
    "_check_mappings",
    "_check_plan_keys",
    "_check_split_options",
    "_check_train_arguments",
    "_external_sets",
]

#: ``DataSplitter`` arguments that ``train`` sets itself (a second value would be a TypeError inside scvi-tools)
_SPLITTER_KEYS = {
    "train_size": "pass train(train_size=...)",
    "validation_size": "pass train(validation_size=...)",
    "batch_size": "pass train(batch_size=...)",
    "shuffle_set_split": "train draws the split itself: pass external_indexing for a split of your own",
    "distributed_sampler": "train sets it from the strategy",
    "load_sparse_tensor": "train sets it",
    "batching": "pass train(batching=...)",
    "batch_labels": "train reads them from the registered batch_key",
    "condition_codes": "train reads them from the registered perturbations",
    "is_control": "train reads them from the registered perturbations",
    "condition_weights": "train builds them",
    "seed": "set scvi.settings.seed",
}


def _whole(value) -> bool:
    """Whether ``value`` is a positive whole number (``2.0`` and numpy integers included; ``True`` not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    if isinstance(value, numbers.Integral):  # Python integers beyond float64 and int64 included
        return bool(value >= 1)
    return bool(np.isfinite(value) and int(value) == value and value >= 1)


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
        ("eps", 0.0, "a positive finite number (the optimiser's epsilon), e.g. 0.01"),
        ("max_kl_weight", None, "a finite number >= 0 (the KL weight after warm-up), e.g. 1.0"),
        ("min_kl_weight", None, "a finite number >= 0 (the KL weight at the start of warm-up), e.g. 0.0"),
        ("error_alpha", None, "a finite number >= 0 (the exponent of error-guided weights), e.g. 1.0"),
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
    for key in ("n_epochs_kl_warmup", "n_steps_kl_warmup"):
        value = plan_kwargs.get(key)
        if value is not None and not (_whole(value) or (not isinstance(value, bool) and value == 0)):
            msg = f"plan_kwargs[{key!r}]={value!r} must be a whole number >= 0 (or None: no warm-up in that unit)."
            raise ValueError(msg)


def _check_split_options(datasplitter_kwargs: Mapping | None, train_size, validation_size) -> None:
    """Refuse split options that would be ignored or that scvi-tools' splitter would receive twice.

    Parameters
    ----------
    datasplitter_kwargs
        ``train``'s ``datasplitter_kwargs``.
    train_size
        ``train``'s ``train_size``.
    validation_size
        ``train``'s ``validation_size``.

    Raises
    ------
    ValueError
        For a ``datasplitter_kwargs`` key that ``train`` sets itself, ``train_size``/``validation_size`` together
        with ``external_indexing`` (they would be ignored; ``train_size=1`` and ``validation_size=0`` are accepted),
        or a size that is not a number.
    """
    kwargs = datasplitter_kwargs or {}
    for key, fix in _SPLITTER_KEYS.items():
        if key in kwargs:
            msg = f"datasplitter_kwargs[{key!r}]={kwargs[key]!r} is set by train itself; {fix}."
            raise ValueError(msg)
    for name, value in (("train_size", train_size), ("validation_size", validation_size)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
            msg = f"{name}={value!r} must be a fraction of the cells (a number in [0, 1]), or None."
            raise ValueError(msg)
        # train_size=1 / validation_size=0 ("no random split") agree with any given split, as in scvi-tools
        neutral = value == (1 if name == "train_size" else 0)
        if kwargs.get("external_indexing") is not None and not neutral:
            msg = (
                f"{name}={value!r} would be ignored: datasplitter_kwargs['external_indexing'] already fixes the split. "
                f"Pass either {name} or external_indexing, not both."
            )
            raise ValueError(msg)


def _check_accelerator(trainer_kwargs: Mapping) -> None:
    """Refuse an ``accelerator`` that this machine lacks, naming the argument and what is available.

    Parameters
    ----------
    trainer_kwargs
        ``train``'s keyword arguments for the Trainer.

    Raises
    ------
    ValueError
        When ``accelerator`` asks for a GPU (or MPS) that torch does not see.
    """
    import torch

    acc = trainer_kwargs.get("accelerator")
    if not isinstance(acc, str):
        return
    name = acc.lower()
    missing = (name in ("gpu", "cuda") and not torch.cuda.is_available()) or (
        name == "mps" and not torch.backends.mps.is_available()
    )
    if missing:
        msg = (
            f"accelerator={acc!r} was asked for, but torch sees no such device on this machine; use "
            "accelerator='cpu' (or 'auto', which takes a GPU when there is one)."
        )
        raise ValueError(msg)


def _check_early_stopping(early_stopping: bool, trainer_kwargs: Mapping) -> None:
    """Refuse early-stopping options that would be ignored or that Lightning would reject only after training.

    Parameters
    ----------
    early_stopping
        ``train``'s ``early_stopping``.
    trainer_kwargs
        ``train``'s keyword arguments for the Trainer (``early_stopping_patience``, ``_min_delta``, ``_mode``...).

    Raises
    ------
    ValueError
        For an ``early_stopping_*`` option given with ``early_stopping=False``, a patience that is not a whole
        number >= 1, a ``min_delta`` that is not a finite number >= 0, or a mode other than ``"min"``/``"max"``.
    """
    given = sorted(k for k in trainer_kwargs if k.startswith("early_stopping_"))
    if given and not early_stopping:
        msg = f"{given} would be ignored: early stopping is off. Pass early_stopping=True, or drop these options."
        raise ValueError(msg)
    patience = trainer_kwargs.get("early_stopping_patience")
    if patience is not None and not _whole(patience):
        msg = f"early_stopping_patience={patience!r} must be a whole number of epochs >= 1, e.g. 45."
        raise ValueError(msg)
    delta = trainer_kwargs.get("early_stopping_min_delta")
    if delta is not None and (
        isinstance(delta, bool) or not isinstance(delta, numbers.Real) or not np.isfinite(delta) or delta < 0
    ):
        msg = f"early_stopping_min_delta={delta!r} must be a finite number >= 0, e.g. 0.0."
        raise ValueError(msg)
    mode = trainer_kwargs.get("early_stopping_mode")
    if mode is not None and mode not in ("min", "max"):
        msg = f"early_stopping_mode={mode!r} must be 'min' (for losses) or 'max'."
        raise ValueError(msg)


def _check_distributed_split(trainer_kwargs: Mapping, datasplitter_kwargs: Mapping | None, seed: int | None) -> None:
    """Refuse multi-process training whose processes would each draw another train/validation split.

    Lightning's DDP runs the training script once per process, and each process splits the cells itself, drawing
    from ``scvi.settings.seed``. Unset, every process draws another split: each trains on cells that another
    validates on, and the model keeps rank 0's split while the weights saw the others'.

    Parameters
    ----------
    trainer_kwargs
        ``train``'s keyword arguments for the Trainer (``devices``, ``num_nodes``, ``strategy``).
    datasplitter_kwargs
        ``train``'s splitter arguments (an ``external_indexing`` split is the same in every process).
    seed
        ``scvi.settings.seed``.

    Raises
    ------
    ValueError
        For several processes (``devices`` above 1 or ``-1``, ``num_nodes`` above 1) without a seed or a given split.
    """
    if seed is not None or (datasplitter_kwargs or {}).get("external_indexing") is not None:
        return
    devices = trainer_kwargs.get("devices", 1)
    nodes = trainer_kwargs.get("num_nodes", 1)
    several = (
        (isinstance(devices, int) and (devices > 1 or devices == -1))
        or (isinstance(devices, list | tuple) and len(devices) > 1)
        or (isinstance(devices, str) and devices.strip() not in ("1", "auto", "0", ""))
        or (isinstance(nodes, int) and nodes > 1)
    )
    if several:
        msg = (
            f"Training in several processes (devices={devices!r}, num_nodes={nodes!r}) splits the cells into "
            "training and validation cells in each process, and without a seed each process draws another split "
            "(each would train on cells another validates on). Set scvi.settings.seed to an integer before "
            "training, or pass the split as datasplitter_kwargs={'external_indexing': ...}."
        )
        raise ValueError(msg)
