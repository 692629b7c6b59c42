"""Lightning callbacks that :meth:`SemiMechVI.train <scmech.model.SemiMechVI.train>` adds to every run.

:class:`FiniteLossCallback` stops a run whose loss is no longer finite, :class:`RNGStateCallback` makes resumed
runs repeat uninterrupted ones, :class:`RunSignatureCallback` refuses to resume a run with other data or settings,
and :class:`_EnableCheckpointing` lets a user's
:class:`~lightning.pytorch.callbacks.ModelCheckpoint` run under scvi-tools' Trainer.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import random
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from scvi.train import SaveCheckpoint

from scmech.train._runner import CheckpointMismatchError

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "CheckpointMismatchError",
    "FiniteLossCallback",
    "RNGStateCallback",
    "RunSignatureCallback",
    "run_signature",
    "training_callbacks",
]


class FiniteLossCallback(Callback):
    """Stop training with a clear message as soon as the training loss is NaN or infinite."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor) or bool(torch.isfinite(loss.detach()).all()):
            return
        module = getattr(pl_module, "module", None)
        ss = getattr(module, "steady_state_weight", None)
        # the operators' own learning-rate multiplier exists only in SemiMechVI's contracting field
        operators = (
            " or for the operators (a lower operator_scale)"
            if hasattr(getattr(module, "field", None), "operator_scale")
            else ""
        )
        msg = (
            f"The training loss became {loss.detach().float().mean().item()} at epoch {trainer.current_epoch}, "
            f"step {trainer.global_step}; training stopped. Likely causes: a learning rate too high for these data "
            f"(try plan_kwargs={{'lr': 1e-4}}){operators}; extreme counts or library "
            "sizes (look for outlier cells, and pass size_factor_key or check the size factors already registered); "
            "dynamics that diverge under a high steady-state weight"
            f"{'' if ss is None else f' (steady_state_weight={ss:g}; try a lower value)'}; or non-count data "
            "registered as counts."
        )
        raise FloatingPointError(msg)


class _EnableCheckpointing(SaveCheckpoint):
    """Inert checkpoint callback that lets a user's ``ModelCheckpoint`` run under scvi-tools' Trainer.

    scvi-tools' Trainer switches Lightning checkpointing on only together with its own
    :class:`~scvi.train.SaveCheckpoint`, which writes model directories into ``scvi.settings.logging_dir`` and
    puts the module in eval mode on every save. This subclass saves nothing and has none of those side effects.
    """

    def __init__(self) -> None:
        ModelCheckpoint.__init__(self, save_top_k=0)
        self.load_best_on_end = False
        self.loss_is_nan = False
        self.check_nan_gradients = False

    def on_save_checkpoint(self, trainer, *args) -> None:
        return

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        return


class RNGStateCallback(Callback):
    """Save the random number generator states in Lightning checkpoints and restore them on resume.

    Lightning restores weights, optimiser and loop state but not the generators that shuffle minibatches and
    draw latent samples; with them, a resumed CPU run repeats the uninterrupted one. Under DDP every process has
    generators of its own and Lightning writes the checkpoint of process 0 only: the states of all processes are
    gathered into it (:meth:`state_dict` runs in every process as the checkpoint is assembled), and each process
    restores its own.
    """

    def __init__(self) -> None:
        self._strategy, self._rank, self._world = None, 0, 1

    def setup(self, trainer, pl_module, stage: str) -> None:
        # Lightning calls setup before it restores a checkpoint: the process's rank is known by then
        self._strategy = trainer.strategy
        self._rank = int(trainer.global_rank)
        self._world = int(trainer.world_size)

    def state_dict(self) -> dict[str, Any]:
        # tensors and plain numbers only, so that the checkpoint loads with torch.load(weights_only=True)
        _, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 - saved and restored, never drawn from
        version, internal, gauss_next = random.getstate()
        state = torch.cat(
            [
                torch.get_rng_state().to(torch.int64),
                torch.as_tensor(keys.astype(np.int64)),
                torch.tensor([pos, has_gauss], dtype=torch.int64),
                torch.as_tensor(np.asarray(internal, dtype=np.int64)),
                torch.tensor([version, 0 if gauss_next is None else 1], dtype=torch.int64),
            ]
        )
        floats = torch.tensor([gauss, 0.0 if gauss_next is None else gauss_next], dtype=torch.float64)
        if self._world > 1:  # one row per process
            state = self._strategy.all_gather(state).cpu().reshape(self._world, -1)
            floats = self._strategy.all_gather(floats).cpu().reshape(self._world, -1)
        return {"states": state.reshape(-1, state.shape[-1]), "floats": floats.reshape(-1, 2)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning restores callbacks before it builds the data loaders, whose shuffling draws from these
        states, floats = state_dict["states"], state_dict["floats"]
        if len(states) != self._world:
            msg = (
                f"The checkpoint holds the random states of {len(states)} process(es) and this run has "
                f"{self._world}: resume with as many processes (devices x num_nodes) as the run that "
                "wrote it, or train afresh with ckpt_path=None."
            )
            raise ValueError(msg)
        row, (gauss, gauss_next) = states[self._rank], floats[self._rank].tolist()
        n_torch = torch.get_rng_state().numel()
        torch.set_rng_state(row[:n_torch].to(torch.uint8))
        keys, rest = row[n_torch : n_torch + 624], row[n_torch + 624 :]
        np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), int(rest[0]), int(rest[1]), gauss))  # noqa: NPY002
        internal, (version, has_next) = rest[2:-2], rest[-2:].tolist()
        random.setstate((version, tuple(int(v) for v in internal), gauss_next if has_next else None))


def run_signature(
    adata, split: Sequence, batching: str, max_epochs: int, batch_size: int, plan_kwargs: dict
) -> dict[str, Any]:
    """Return what a resumed run must share with the run that wrote its checkpoint (plain strings and numbers).

    Parameters
    ----------
    adata
        The model's data (AnnData or MuData).
    split
        The training, validation and test cell positions.
    batching
        ``train``'s ``batching``.
    max_epochs
        The resolved number of epochs.
    batch_size
        ``train``'s ``batch_size``.
    plan_kwargs
        The resolved plan keywords (only numbers, strings, flags and ``None`` enter the signature).

    Returns
    -------
    A dict of strings and integers (loads with ``torch.load(weights_only=True)``).
    """
    names = np.asarray(adata.obs_names, dtype=object)
    cells = {}
    for label, ix in zip(("training cells", "validation cells"), split[:2], strict=False):
        digest = hashlib.sha256(pd.util.hash_array(names[np.asarray(ix, dtype=int)]).tobytes()).hexdigest()[:16]
        cells[label] = f"{len(ix)} cells ({digest})"
    plan = {k: v for k, v in sorted(plan_kwargs.items()) if v is None or isinstance(v, str | bool | numbers.Number)}
    return {
        "data": f"{adata.n_obs} cells x {adata.n_vars} genes",
        **cells,
        "batching": str(batching),
        "max_epochs": int(max_epochs),
        "batch_size": int(batch_size),
        "plan_kwargs": json.dumps(plan, default=str),
    }


class RunSignatureCallback(Callback):
    """Save the run's :func:`run_signature` in checkpoints; refuse to resume a run whose signature differs.

    Lightning restores whatever weights fit the model, so a checkpoint of other data, another split, another
    batching or number of epochs would resume silently into a run that repeats neither.

    Parameters
    ----------
    signature
        The signature of the current run.
    """

    def __init__(self, signature: dict[str, Any]) -> None:
        self.signature = dict(signature)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.signature)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        diff = [
            f"{key}: {state_dict[key]!r} there, {self.signature.get(key)!r} here"
            for key in state_dict
            if state_dict[key] != self.signature.get(key)
        ]
        if diff:
            split = any(
                state_dict.get(key) != self.signature.get(key) for key in ("training cells", "validation cells")
            )
            # scvi-tools draws the split from scvi.settings.seed: unset, each run (and process) draws another
            seed = (
                " A random split is drawn again in every run unless scvi.settings.seed is set: set it to the seed of "
                "the interrupted run, or pass the split as datasplitter_kwargs={'external_indexing': ...}."
                if split
                else ""
            )
            msg = (
                f"the checkpoint was written by a run with other data or settings ({'; '.join(diff)}).{seed} "
                "Resume with the same data, split, batching, max_epochs, batch_size and plan_kwargs as the interrupted "
                "run (the KL warm-up follows max_epochs), or train afresh with ckpt_path=None. To train longer, "
                "finish the run and call train() again: it continues from the trained weights."
            )
            raise CheckpointMismatchError(msg)


def training_callbacks(
    user_callbacks: Callback | Sequence[Callback] | None, resuming: bool, signature: dict[str, Any] | None = None
) -> list[Callback]:
    """Return the user's callbacks followed by those every training run needs.

    A user's :class:`~lightning.pytorch.callbacks.ModelCheckpoint` gets :class:`_EnableCheckpointing` (unless a
    :class:`~scvi.train.SaveCheckpoint` is there already); runs that checkpoint or resume get
    :class:`RNGStateCallback` (and :class:`RunSignatureCallback` with ``signature``); every run gets
    :class:`FiniteLossCallback`.

    Parameters
    ----------
    user_callbacks
        The ``callbacks`` passed to ``train``: a list, a single callback (as Lightning takes) or ``None``.
    resuming
        Whether the run resumes from a checkpoint (``ckpt_path`` was given).
    signature
        The run's :func:`run_signature` (``None``: not checked).

    Returns
    -------
    A new list; ``user_callbacks`` is not changed.

    Raises
    ------
    TypeError
        When ``callbacks`` holds something other than Lightning callbacks.
    """
    if isinstance(user_callbacks, Callback):
        user_callbacks = [user_callbacks]
    callbacks = list(user_callbacks or []) if not isinstance(user_callbacks, str) else [user_callbacks]
    bad = [c for c in callbacks if not isinstance(c, Callback)]
    if bad:
        msg = (
            f"callbacks holds {bad[0]!r}, which is not a Lightning callback; pass a list of "
            "lightning.pytorch.callbacks.Callback instances, e.g. callbacks=[ModelCheckpoint(dirpath=...)]."
        )
        raise TypeError(msg)
    if any(isinstance(c, ModelCheckpoint) for c in callbacks) and not any(
        isinstance(c, SaveCheckpoint) for c in callbacks
    ):
        callbacks.append(_EnableCheckpointing())
    if resuming or any(isinstance(c, ModelCheckpoint) for c in callbacks):
        callbacks.append(RNGStateCallback())
        if signature is not None:
            callbacks.append(RunSignatureCallback(signature))
    callbacks.append(FiniteLossCallback())
    return callbacks
