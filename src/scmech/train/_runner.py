"""scvi-tools' training runner, resuming checkpoints without unpickling."""

from __future__ import annotations

import functools

from scvi.train import TrainRunner

__all__ = ["CheckpointMismatchError", "CheckpointSafeTrainRunner"]


class CheckpointMismatchError(ValueError):
    """A checkpoint written by a run with other data or settings than the one resuming from it."""


class CheckpointSafeTrainRunner(TrainRunner):
    """:class:`scvi.train.TrainRunner` whose Lightning run reads ``ckpt_path`` with ``weights_only=True``.

    Lightning hands ``torch.load`` its own default (``weights_only=None``), so whether a checkpoint may run code
    while it is read depends on torch's version and environment (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``). scmech's
    checkpoints hold tensors and plain data only, so they are always read with ``weights_only=True``. Written
    here because scvi-tools' runner does not pass the argument on.

    Parameters
    ----------
    *args, **kwargs
        Passed to :class:`scvi.train.TrainRunner`.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.trainer.fit = functools.partial(self.trainer.fit, weights_only=True)
