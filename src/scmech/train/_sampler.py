"""Minibatch strategies for SemiMechVI: random, batch-matched and error-guided.

- ``"random"``: scvi-tools' default shuffling.
- ``"batch_matched"``: every minibatch holds cells of one wet-lab batch, perturbed cells together with
  controls of that same batch (at least ``min_controls`` when the batch has them), so that the comparisons the
  loss makes inside a minibatch (the MMD against controls, the control reference of the steady-state term) never
  mix batches.
- ``"error_guided"``: cells are drawn with probabilities proportional to a weight per perturbation condition,
  updated after every epoch from the running error of the dynamics on that condition (the distance between the
  encoded cells and the read-out of their protocol); controls keep weight 1.

An epoch holds ``ceil(n / batch_size)`` minibatches (``"batch_matched"``: as many as it takes to place every cell
of each wet-lab batch, the number the sampler's length reports, so that Lightning reaches every cell). All
strategies are seeded and split the minibatches across processes under distributed (DDP) training: process ``r``
of ``w`` takes every ``w``-th minibatch.
"""

from __future__ import annotations

import inspect
import math
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from scvi import settings
from scvi.dataloaders import DataSplitter
from torch.utils.data import DataLoader, Sampler

from scmech._numbers import check_positive_int

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["BATCHING", "PerturbationBatchSampler", "PerturbationDataSplitter"]

BATCHING = ("random", "batch_matched", "error_guided")

#: the options of torch's ``DataLoader`` that a splitter's keyword arguments may set (workers, timeout...); the
#: loaders set the others themselves (the dataset, the minibatches, ``drop_last`` and ``pin_memory`` of the splitter)
LOADER_OPTIONS = tuple(
    name
    for name in inspect.signature(DataLoader.__init__).parameters
    if name
    not in {
        "self",
        "dataset",
        "batch_size",
        "shuffle",
        "sampler",
        "batch_sampler",
        "collate_fn",
        "drop_last",
        "pin_memory",
    }
)


def _dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class PerturbationBatchSampler(Sampler):
    """Yield minibatches (lists of positions into the training cells) for a batching strategy.

    Parameters
    ----------
    batch_labels
        Wet-lab batch code of each training cell (``"batch_matched"``).
    condition_codes
        Perturbation condition code of each training cell (``"error_guided"``).
    is_control
        Whether each training cell is a control.
    batch_size
        Cells per minibatch.
    strategy
        ``"batch_matched"`` or ``"error_guided"``.
    condition_weights
        Shared array of sampling weights per condition code (updated in place by the training plan).
    min_controls
        Minimum number of controls per minibatch (``"batch_matched"``), when the batch has that many.
    distributed
        Split minibatches across DDP processes.
    seed
        Seed; each epoch uses ``seed + epoch``.
    """

    def __init__(
        self,
        *,
        batch_labels: np.ndarray,
        condition_codes: np.ndarray,
        is_control: np.ndarray,
        batch_size: int,
        strategy: Literal["batch_matched", "error_guided"],
        condition_weights: np.ndarray | None = None,
        min_controls: int = 8,
        distributed: bool = False,
        seed: int = 0,
    ) -> None:
        if strategy not in ("batch_matched", "error_guided"):
            msg = f"strategy={strategy!r} is not 'batch_matched' or 'error_guided'."
            raise ValueError(msg)
        self.batch_labels = np.asarray(batch_labels)
        self.condition_codes = np.asarray(condition_codes)
        self.is_control = np.asarray(is_control, dtype=bool)
        lengths = {len(self.batch_labels), len(self.condition_codes), len(self.is_control)}
        if len(lengths) != 1:
            msg = (
                f"batch_labels, condition_codes and is_control must hold one value per training cell; got lengths "
                f"{len(self.batch_labels)}, {len(self.condition_codes)} and {len(self.is_control)}."
            )
            raise ValueError(msg)
        self.batch_size = check_positive_int(batch_size, "batch_size", hint=" (cells per minibatch), e.g. 128")
        self.strategy = strategy
        self.condition_weights = condition_weights
        self.min_controls = int(min_controls)
        self.distributed = distributed
        self.seed = int(seed)
        self.epoch = 0
        self.n = len(self.batch_labels)

    def set_epoch(self, epoch: int) -> None:
        """Draw the next epoch's minibatches from ``seed + epoch`` (Lightning calls this before every epoch).

        With the epoch from the trainer, not from the sampler's own count, a run resumed from a checkpoint draws
        the minibatches the uninterrupted run drew.

        Parameters
        ----------
        epoch
            The trainer's current epoch.
        """
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.strategy == "batch_matched":
            n_batches = sum(len(chunks) for _, chunks in self._batch_plan())
        else:
            n_batches = math.ceil(self.n / self.batch_size)
        if self.distributed:
            _, world = _dist_info()
            return math.ceil(n_batches / world)
        return n_batches

    def _batch_plan(self) -> list[tuple[np.ndarray, list[tuple[int, int]]]]:
        """Per wet-lab batch: its cells, and the number of its other cells and of its controls in each minibatch.

        Every minibatch of a batch holds ``k_c`` of its controls (its share of the batch, at least ``min_controls``
        when it has them, and at most ``batch_size - 1`` when it has other cells, so that there is room for them)
        and up to ``batch_size - k_c`` of its other cells, until all of its other cells are placed; controls not yet
        placed then fill minibatches of their own. Every cell is trained on in every epoch (controls repeat where
        they are fewer than their slots). A last minibatch of one cell joins the one before it: batch normalisation
        cannot train on a single cell. The plan does not depend on the seed, so :meth:`__len__` reports the number
        of minibatches :meth:`__iter__` yields.

        Raises
        ------
        ValueError
            For a wet-lab batch of a single training cell: its only minibatch would hold one cell.
        """
        plan = []
        bs = self.batch_size
        for b in np.unique(self.batch_labels):
            in_b = self.batch_labels == b
            n_b = int(in_b.sum())
            n_ctrl = int((in_b & self.is_control).sum())
            n_other = n_b - n_ctrl
            if n_b == 1:
                msg = (
                    f"Wet-lab batch {b.item() if isinstance(b, np.generic) else b!r} (its code among the registered "
                    "batches) has a "
                    "single training cell: batching='batch_matched' keeps every minibatch "
                    "within one batch, and a minibatch of one cell cannot be trained on (batch normalisation). Give "
                    "the batch more cells, merge it with another, or use batching='random'."
                )
                raise ValueError(msg)
            chunks = []
            if n_other:
                k_c = min(n_ctrl, max(self.min_controls, round(n_ctrl / n_b * bs)), bs - 1)
                k_o = bs - k_c
                chunks = [(min(k_o, n_other - start), k_c) for start in range(0, n_other, k_o)]
            left = n_ctrl - sum(c for _, c in chunks)
            chunks += [(0, min(bs, left - start)) for start in range(0, max(left, 0), bs)]
            if len(chunks) > 1 and sum(chunks[-1]) == 1:
                (o1, c1), (o2, c2) = chunks[-2], chunks.pop()
                chunks[-1] = (o1 + o2, c1 + c2)
            plan.append((in_b, chunks))
        return plan

    def _batch_matched(self, rng: np.random.Generator) -> list[np.ndarray]:
        out = []
        for in_b, chunks in self._batch_plan():
            ctrl = rng.permutation(np.flatnonzero(in_b & self.is_control))
            other = rng.permutation(np.flatnonzero(in_b & ~self.is_control))
            pos_o = pos_c = 0
            for n_o, n_c in chunks:
                take = np.take(ctrl, np.arange(pos_c, pos_c + n_c), mode="wrap") if n_c else ctrl[:0]
                out.append(np.unique(np.concatenate([other[pos_o : pos_o + n_o], take])))
                pos_o, pos_c = pos_o + n_o, pos_c + n_c
        order = rng.permutation(len(out))
        return [out[i] for i in order]

    def _error_guided(self, rng: np.random.Generator) -> list[np.ndarray]:
        w = np.ones(self.n)
        if self.condition_weights is not None:
            cw = np.asarray(self.condition_weights, dtype=np.float64)
            w = cw[self.condition_codes]
        w = np.where(self.is_control, 1.0, w)
        p = w / w.sum()
        n_mb = math.ceil(self.n / self.batch_size)
        size = min(self.batch_size, self.n)
        return [np.sort(rng.choice(self.n, size=size, replace=False, p=p)) for _ in range(n_mb)]

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng(self.seed + self.epoch)
        self.epoch += 1
        batches = self._batch_matched(rng) if self.strategy == "batch_matched" else self._error_guided(rng)
        if self.distributed:
            rank, world = _dist_info()
            n_each = math.ceil(len(batches) / world)
            batches = (batches * world)[: n_each * world][rank::world]
        for mb in batches:
            yield mb.tolist()


class PerturbationDataSplitter(DataSplitter):
    """The :class:`~scvi.dataloaders.DataSplitter` of scvi-tools, with a training loader that uses a batching strategy.

    Parameters
    ----------
    adata_manager
        The model's AnnData manager.
    batching
        ``"random"``, ``"batch_matched"`` or ``"error_guided"``.
    batch_labels
        Wet-lab batch code of every cell of the AnnData.
    condition_codes
        Condition code of every cell of the AnnData.
    is_control
        Control mask over every cell of the AnnData.
    condition_weights
        Shared sampling weights per condition code (``"error_guided"``).
    min_controls
        Minimum controls per minibatch (``"batch_matched"``).
    seed
        Seed of the sampler.
    **kwargs
        Passed to :class:`~scvi.dataloaders.DataSplitter`; its options of torch's ``DataLoader``
        (``num_workers``, ``timeout``...) reach the strategies' training loader too.
    """

    def __init__(
        self,
        adata_manager,
        *,
        batching: str = "random",
        batch_labels: np.ndarray | None = None,
        condition_codes: np.ndarray | None = None,
        is_control: np.ndarray | None = None,
        condition_weights: np.ndarray | None = None,
        min_controls: int = 8,
        seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(adata_manager, **kwargs)
        self.batching = batching
        self._batch_labels = batch_labels
        self._condition_codes = condition_codes
        self._is_control = is_control
        self.condition_weights = condition_weights
        self.min_controls = min_controls
        self.seed = seed

    def train_dataloader(self):
        """Build the training loader: scvi-tools' for ``"random"``, the strategy's sampler otherwise.

        Returns
        -------
        The training data loader.
        """
        if self.batching == "random":
            return super().train_dataloader()
        kw = dict(self.data_loader_kwargs)
        distributed = bool(kw.pop("distributed_sampler", False))
        batch_size = kw.pop("batch_size", None) or settings.batch_size
        idx = np.asarray(self.train_idx)
        sampler = PerturbationBatchSampler(
            batch_labels=self._batch_labels[idx],
            condition_codes=self._condition_codes[idx],
            is_control=self._is_control[idx],
            batch_size=batch_size,
            strategy=self.batching,
            condition_weights=self.condition_weights,
            min_controls=self.min_controls,
            distributed=distributed,
            seed=self.seed,
        )
        # a run resumed from a checkpoint builds its loader at the restored epoch, and Lightning draws the first
        # minibatches before it calls set_epoch: the sampler starts there, not at epoch 0
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            # the epochs processed so far, as Lightning counts them for set_epoch (current_epoch lags by one when
            # the checkpoint was written at an epoch's end)
            sampler.set_epoch(int(trainer.fit_loop.epoch_progress.current.processed))
        dataset = self.adata_manager.create_torch_dataset(indices=idx, load_sparse_tensor=self.load_sparse_tensor)
        # the loader options given to the splitter (workers, timeout...), as scvi-tools' loaders take them
        options = {k: v for k, v in kw.items() if k in LOADER_OPTIONS}
        options.setdefault("num_workers", settings.dl_num_workers)
        return DataLoader(dataset, sampler=sampler, batch_size=None, pin_memory=self.pin_memory, **options)
