"""Checks of ``train``'s arguments, before anything is set up."""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from scmech._numbers import is_positive_whole
from scmech.train import BATCHING

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence

__all__ = [
    "_check_batching",
    "_real",
    "_whole",
    "_check_accelerator",
    "_check_early_stopping",
    "_check_mappings",
    "_check_plan_keys",
    "_check_plan_options",
    "_check_train_arguments",
]

#: ``plan_kwargs`` keys that the model's training would ignore in every configuration, and what to do instead
_IGNORED_PLAN_KEYS = {
    "kl_weight": (
        "the training plan sets the KL weight itself at every step, warming it up from min_kl_weight to "
        "max_kl_weight. Pass plan_kwargs={'max_kl_weight': ...} instead (with 'min_kl_weight' for the start of the "
        "warm-up, or 'n_epochs_kl_warmup': 0 for a constant weight)"
    ),
    "update_only_decoder": (
        "it acts on scvi-tools' minified (latent-only) models, and this model always trains on the full data. Drop "
        "it; to keep parameters fixed, set their requires_grad to False (the optimiser skips them)"
    ),
}

#: ``plan_kwargs`` keys of the learning-rate scheduler, used only with ``reduce_lr_on_plateau=True``
_PLATEAU_KEYS = ("lr_factor", "lr_patience", "lr_threshold", "lr_min", "lr_scheduler_metric")


_whole = is_positive_whole  # the split checks import it from here too


def _real(value) -> bool:
    """Whether ``value`` is a finite real number (``True`` and ``False`` not)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and bool(np.isfinite(value))


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


def _check_plan_options(plan_kwargs: Mapping | None, batching: str, metrics: Sequence[str] | None = None) -> None:
    """Refuse ``plan_kwargs`` that the training would ignore, and scheduler options that torch would reject late.

    Parameters
    ----------
    plan_kwargs
        ``train``'s ``plan_kwargs`` (the keys are known: :func:`_check_plan_keys`).
    batching
        ``train``'s ``batching`` (``error_alpha`` acts on ``"error_guided"`` only).
    metrics
        The metrics the training plan logs (what ``lr_scheduler_metric`` may watch); ``None``: not checked.

    Raises
    ------
    ValueError
        For ``kl_weight``, ``update_only_decoder``, an ``on_epoch`` other than ``True`` or the internal
        ``error_tracking``; for an option that this
        configuration ignores (``error_alpha`` without error-guided batching, ``optimizer_creator`` without
        ``optimizer='Custom'``, ``eps``/``weight_decay`` with it, ``compile_kwargs`` without ``compile``, a
        scheduler option without ``reduce_lr_on_plateau=True``); for an ``lr_factor`` outside ``(0, 1)``, an
        ``lr_patience`` that is not a whole number >= 0, an ``lr_threshold`` or ``lr_min`` that is not a finite
        number >= 0, or an ``lr_scheduler_metric`` that the plan does not log.
    TypeError
        For a ``reduce_lr_on_plateau`` that is not ``True`` or ``False``.
    """
    kw = plan_kwargs or {}
    for key, why in _IGNORED_PLAN_KEYS.items():
        if key in kw:
            msg = f"plan_kwargs[{key!r}] would be ignored: {why}."
            raise ValueError(msg)
    if "on_epoch" in kw and kw["on_epoch"] is not True:
        msg = (
            f"plan_kwargs['on_epoch']={kw['on_epoch']!r}: the training always logs its metrics once per epoch (the "
            "history, early stopping and the learning-rate scheduler read them), so it would be ignored or would "
            "break them. Drop it; plan_kwargs['on_step']=True adds per-step logs of the ELBO terms."
        )
        raise ValueError(msg)
    if "error_tracking" in kw:
        msg = (
            "plan_kwargs['error_tracking'] is internal (train builds it for batching='error_guided') and cannot be "
            "passed. Drop it, and pass train(batching='error_guided') for error-guided minibatches "
            "(plan_kwargs['error_alpha'] sets the exponent of their weights)."
        )
        raise ValueError(msg)
    optimizer = kw.get("optimizer", "Adam")
    conditional = [
        (
            "error_alpha",
            batching != "error_guided",
            f"batching={batching!r} does not weight conditions by error",
            "pass batching='error_guided'",
        ),
        (
            "optimizer_creator",
            optimizer != "Custom",
            f"optimizer={optimizer!r} is built by the training plan",
            "pass plan_kwargs['optimizer']='Custom' with it",
        ),
        (
            "eps",
            optimizer == "Custom",
            "optimizer='Custom' builds the optimiser with optimizer_creator",
            "set it inside optimizer_creator",
        ),
        (
            "weight_decay",
            optimizer == "Custom",
            "optimizer='Custom' builds the optimiser with optimizer_creator",
            "set it inside optimizer_creator",
        ),
        ("compile_kwargs", not kw.get("compile", False), "compile is off", "pass plan_kwargs['compile']=True with it"),
    ]
    for key, ignored, why, fix in conditional:
        if key in kw and ignored:
            msg = f"plan_kwargs[{key!r}]={kw[key]!r} would be ignored: {why}. Drop it, or {fix}."
            raise ValueError(msg)
    plateau = kw.get("reduce_lr_on_plateau", False)
    if not isinstance(plateau, bool | np.bool_):
        msg = f"plan_kwargs['reduce_lr_on_plateau']={plateau!r} must be True or False."
        raise TypeError(msg)
    given = [k for k in _PLATEAU_KEYS if k in kw]
    if given and not plateau:
        msg = (
            f"plan_kwargs {given} would be ignored: the learning-rate scheduler is off. Pass "
            "plan_kwargs['reduce_lr_on_plateau']=True with them, or drop them."
        )
        raise ValueError(msg)
    if not plateau:
        return
    factor = kw.get("lr_factor", 0.6)
    if not _real(factor) or not 0 < factor < 1:
        msg = (
            f"plan_kwargs['lr_factor']={factor!r} must be a number in (0, 1): the factor the learning rate is "
            "multiplied by on a plateau, e.g. 0.6."
        )
        raise ValueError(msg)
    patience = kw.get("lr_patience", 30)
    if not (_whole(patience) or (_real(patience) and patience == 0)):
        msg = (
            f"plan_kwargs['lr_patience']={patience!r} must be a whole number of epochs >= 0 (epochs without "
            "improvement before the learning rate drops), e.g. 30."
        )
        raise ValueError(msg)
    for key, rule in (("lr_threshold", "the least change that counts as improvement"), ("lr_min", "the lowest rate")):
        value = kw.get(key, 0.0)
        if not _real(value) or value < 0:
            msg = f"plan_kwargs[{key!r}]={value!r} must be a finite number >= 0 ({rule}), e.g. 0.0."
            raise ValueError(msg)
    metric = kw.get("lr_scheduler_metric", "elbo_validation")
    if metrics is not None and metric not in metrics:
        msg = (
            f"plan_kwargs['lr_scheduler_metric']={metric!r} is not a metric the training logs; use one of "
            f"{list(metrics)}, e.g. 'elbo_validation'."
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


def _check_early_stopping(early_stopping: bool, trainer_kwargs: Mapping, metrics: Sequence[str] | None = None) -> None:
    """Refuse early-stopping options that would be ignored or that Lightning would reject only after training.

    Parameters
    ----------
    early_stopping
        ``train``'s ``early_stopping``.
    trainer_kwargs
        ``train``'s keyword arguments for the Trainer (``early_stopping_patience``, ``_min_delta``, ``_mode``...).
    metrics
        The metrics the training plan logs (what ``early_stopping_monitor`` may watch); ``None``: not checked.

    Raises
    ------
    ValueError
        For an ``early_stopping_*`` option given with ``early_stopping=False``, a patience that is not a whole
        number >= 1, a ``min_delta`` that is not a finite number >= 0, a mode other than ``"min"``/``"max"``, or a
        monitor that the plan does not log.
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
    monitor = trainer_kwargs.get("early_stopping_monitor")
    if monitor is not None and metrics is not None and monitor not in metrics:
        msg = (
            f"early_stopping_monitor={monitor!r} is not a metric the training logs; use one of {list(metrics)}, "
            "e.g. 'elbo_validation'."
        )
        raise ValueError(msg)


def _check_batching(batching: str) -> None:
    """Refuse a minibatch strategy that is not one of :data:`~scmech.train.BATCHING`.

    Parameters
    ----------
    batching
        ``train``'s ``batching``.

    Raises
    ------
    ValueError
        Naming the strategies.
    """
    if batching not in BATCHING:
        msg = f"batching={batching!r} is not one of {BATCHING}."
        raise ValueError(msg)


def _check_trainer_names(trainer_kwargs: Mapping) -> None:
    """Refuse a keyword argument of ``train`` that neither ``train`` nor a trainer takes, naming the closest ones.

    ``train`` passes its other keyword arguments to scvi-tools' ``UnsupervisedTrainingMixin.train`` (for example
    ``load_sparse_tensor``), its ``Trainer`` and on to Lightning's; an unknown one failed there as
    "Trainer.__init__() got an unexpected keyword argument", naming a class the user never called.

    Parameters
    ----------
    trainer_kwargs
        ``train``'s other keyword arguments.

    Raises
    ------
    TypeError
        Naming each unknown argument and what it may have meant.
    """
    import difflib

    import lightning.pytorch as pl
    from scvi.model.base import UnsupervisedTrainingMixin
    from scvi.train import Trainer

    known = set()
    for f in (UnsupervisedTrainingMixin.train, Trainer.__init__, pl.Trainer.__init__):
        known |= set(inspect.signature(f).parameters)
    known -= {"self", "kwargs", "trainer_kwargs"}
    unknown = sorted(k for k in trainer_kwargs if k not in known)
    if unknown:
        close = {k: difflib.get_close_matches(k, sorted(known), n=2) for k in unknown}
        hints = "; ".join(
            f"{k!r} (did you mean {', '.join(map(repr, c))}?)" if c else repr(k) for k, c in close.items()
        )
        msg = (
            f"train() got unknown keyword argument(s) {hints}: they are neither train's arguments nor those of the "
            "scvi-tools training and trainer it passes the others to (scvi-tools' and Lightning's Trainer)."
        )
        raise TypeError(msg)
