"""Checks of ``train``'s data-splitter arguments (``external_indexing``, loader options, DDP splits)."""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING

import numpy as np

from ._train_checks import _real, _whole

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["_check_distributed_split", "_check_split_options", "_external_sets"]


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
    "indices": "pass the cells as external_indexing=[train, validation, test]",
    "shuffle": "train builds the minibatches itself: choose them with train(batching=...)",
    "sampler": "train builds the minibatches itself: choose them with train(batching=...)",
    "batch_sampler": "train builds the minibatches itself: choose them with train(batching=...)",
    "collate_fn": "the model reads minibatches as scvi-tools builds them",
    "iter_ndarray": "the model reads minibatches as scvi-tools builds them",
    "data_and_attributes": "the model reads every registered field",
}

#: ``datasplitter_kwargs`` keys that ``train`` passes on, with the batching they act on (``None``: any)
_SPLITTER_OPTIONS = {
    "external_indexing": None,
    "pin_memory": None,
    "min_controls": ("batch_matched",),
    "drop_last": ("random",),
    "drop_dataset_tail": ("random",),
}


def _external_sets(external) -> list[np.ndarray]:
    """Check ``external_indexing``: at most three disjoint sets of integer cell positions, each without repeats.

    Parameters
    ----------
    external
        The user's ``[train, validation, test]``.

    Returns
    -------
    The sets as sorted integer arrays (the order a set was given in does not change the trained model).

    Raises
    ------
    ValueError
        For more than three sets, boolean masks, names, fractional positions, repeats or overlaps.
    """
    fix = "pass [train, validation, test] as integer positions, e.g. np.flatnonzero(mask) for a boolean mask."
    if isinstance(external, str | np.ndarray | dict) or not hasattr(external, "__len__") or not 1 <= len(external) <= 3:
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
                first = arr.ravel()[0].item()
                msg = f"external_indexing[{k}] holds {arr.dtype} values (e.g. {first!r}), not positions; {fix}"
                raise ValueError(msg)
        arr = arr.astype(int).ravel()
        if len(np.unique(arr)) != len(arr):
            msg = f"external_indexing[{k}] lists some cells more than once; {fix}"
            raise ValueError(msg)
        # sorted: the same cells train the same model whatever order they were listed in (the loaders and the
        # batching samplers draw minibatches by position in these arrays)
        sets.append(np.sort(arr))
    for a in range(len(sets)):
        for b in range(a + 1, len(sets)):
            if np.intersect1d(sets[a], sets[b]).size:
                msg = f"external_indexing[{a}] and external_indexing[{b}] share cells; each cell belongs to one set."
                raise ValueError(msg)
    return sets


def _loader_options() -> list[str]:
    """Return the options of torch's ``DataLoader`` that ``datasplitter_kwargs`` may set (workers, timeout...)."""
    from scmech.train._sampler import LOADER_OPTIONS

    return list(LOADER_OPTIONS)


def _check_loader_workers(kwargs: Mapping) -> None:
    """Refuse a bad ``num_workers``, and worker options without worker processes (torch fails inside training).

    Parameters
    ----------
    kwargs
        ``train``'s ``datasplitter_kwargs``.

    Raises
    ------
    ValueError
        For a ``num_workers`` that is not a whole number >= 0, or ``timeout``, ``persistent_workers``,
        ``prefetch_factor``, ``worker_init_fn`` or ``multiprocessing_context`` with no worker process.
    """
    from scvi import settings

    workers = kwargs.get("num_workers", settings.dl_num_workers)
    if not (_whole(workers) or (_real(workers) and workers == 0)):
        msg = (
            f"datasplitter_kwargs['num_workers']={workers!r} must be a whole number >= 0 (0: load in the main "
            "process), e.g. 0."
        )
        raise ValueError(msg)
    options = ("timeout", "persistent_workers", "prefetch_factor", "worker_init_fn", "multiprocessing_context")
    given = [k for k in options if kwargs.get(k) is not None and kwargs.get(k) is not False and kwargs.get(k) != 0]
    if given and workers == 0:
        msg = (
            f"datasplitter_kwargs {given} act on worker processes, and num_workers=0 loads in the main process; pass "
            "datasplitter_kwargs['num_workers'] >= 1 with them, or drop them."
        )
        raise ValueError(msg)


def _check_split_options(
    datasplitter_kwargs: Mapping | None, train_size, validation_size, batching: str = "random"
) -> None:
    """Refuse split options that are unknown, that would be ignored or that scvi-tools' splitter would receive twice.

    Parameters
    ----------
    datasplitter_kwargs
        ``train``'s ``datasplitter_kwargs``.
    train_size
        ``train``'s ``train_size``.
    validation_size
        ``train``'s ``validation_size``.
    batching
        ``train``'s ``batching``: ``min_controls`` acts on ``"batch_matched"`` only, ``drop_last`` and
        ``drop_dataset_tail`` on ``"random"`` only.

    Raises
    ------
    KeyError
        For a key that neither the splitter nor its data loaders take, naming the accepted ones.
    ValueError
        For a ``datasplitter_kwargs`` key that ``train`` sets itself or that ``batching`` would ignore,
        ``train_size``/``validation_size`` together with ``external_indexing`` (they would be ignored;
        ``train_size=1`` and ``validation_size=0`` are accepted), a ``min_controls`` that is not a whole number
        >= 0, or a size that is not a number.
    """
    kwargs = datasplitter_kwargs or {}
    for key, fix in _SPLITTER_KEYS.items():
        if key in kwargs:
            msg = f"datasplitter_kwargs[{key!r}]={kwargs[key]!r} is set by train itself; {fix}."
            raise ValueError(msg)
    accepted = [*_SPLITTER_OPTIONS, *_loader_options()]
    unknown = sorted(str(k) for k in kwargs if k not in accepted)
    if unknown:
        msg = (
            f"datasplitter_kwargs has unknown keys {unknown}; it takes {sorted(accepted)} (the split, and options of "
            "torch's DataLoader)."
        )
        raise KeyError(msg)
    for key, strategies in _SPLITTER_OPTIONS.items():
        if key in kwargs and strategies is not None and batching not in strategies:
            msg = (
                f"datasplitter_kwargs[{key!r}]={kwargs[key]!r} would be ignored: it acts on batching="
                f"{strategies[0]!r} only, and this run has batching={batching!r}. Drop it, or pass "
                f"batching={strategies[0]!r}."
            )
            raise ValueError(msg)
    _check_loader_workers(kwargs)
    min_controls = kwargs.get("min_controls")
    if "min_controls" in kwargs and not (_whole(min_controls) or (_real(min_controls) and min_controls == 0)):
        msg = (
            f"datasplitter_kwargs['min_controls']={min_controls!r} must be a whole number >= 0 (the controls of a "
            "batch-matched minibatch), e.g. 8."
        )
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
