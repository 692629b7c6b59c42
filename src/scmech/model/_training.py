"""Training of SemiMechVI: argument checks, the split, batching, initialisation and the fits after training.

:class:`TrainingMixin` wraps scvi-tools' :meth:`~scvi.model.base.UnsupervisedTrainingMixin.train` with the model's
defaults. Each step of :meth:`TrainingMixin.train` is a function of its own: the argument checks
(:func:`_check_train_arguments`), the callbacks (:func:`~scmech.model._callbacks.training_callbacks`), the number of
epochs and the KL warm-up (:func:`_resolve_max_epochs`, :func:`_with_kl_warmup`), the train/validation/test split
(:meth:`TrainingMixin._resolve_split`), the minibatch checks (:func:`_check_minibatches`), the batching
(:meth:`TrainingMixin._configure_batching`), the initialisation of the decoder and the time unit, the Lightning run
(:meth:`TrainingMixin._run_trainer`) and the fits that follow it (:meth:`TrainingMixin._fit_after_training`).
"""

from __future__ import annotations

import logging
import numbers
import pickle
import warnings
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch
from scvi import REGISTRY_KEYS, settings
from scvi.model._utils import use_distributed_sampler

from scmech._constants import SCMECH_REGISTRY_KEYS
from scmech.data._pseudobulk import normalized_mean
from scmech.train import CheckpointSafeTrainRunner
from scmech.train._runner import CheckpointMismatchError

from ._anchoring import _rows
from ._argument_checks import check_flag
from ._callbacks import run_signature, training_callbacks
from ._split_checks import _check_distributed_split, _check_split_options, _external_sets
from ._train_checks import (
    _check_accelerator,
    _check_batching,
    _check_early_stopping,
    _check_mappings,
    _check_plan_keys,
    _check_plan_options,
    _check_train_arguments,
    _check_trainer_names,
)

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence

logger = logging.getLogger(__name__)
K = SCMECH_REGISTRY_KEYS

__all__ = ["TrainingMixin"]


class TrainingMixin:
    """``train`` with the model's defaults and checks, and the initialisation and fits around scvi-tools' loop.

    Put it before scvi-tools' :class:`~scvi.model.base.UnsupervisedTrainingMixin` among a model's bases: its
    ``train`` hands the Lightning run to that mixin's ``train``, with a runner that reads checkpoints without
    unpickling (:class:`~scmech.train.CheckpointSafeTrainRunner`).
    """

    _train_runner_cls = CheckpointSafeTrainRunner

    def train(
        self,
        max_epochs: int | None = None,
        *,
        batch_size: int = 128,
        train_size: float | None = None,
        validation_size: float | None = None,
        early_stopping: bool = False,
        batching: Literal["random", "batch_matched", "error_guided"] = "random",
        datasplitter_kwargs: dict | None = None,
        plan_kwargs: dict | None = None,
        ckpt_path: str | os.PathLike | None = None,
        **trainer_kwargs,
    ):
        """Train with scvi-tools' Lightning loop; defaults suited to the model.

        Unassigned cells are excluded from training (their count is logged). Held-out splits go through
        ``datasplitter_kwargs={"external_indexing": [train, validation, test]}`` (e.g. from
        :func:`scmech.tl.split`); never evaluate on random cell splits. The KL warm-up defaults to a quarter
        of ``max_epochs`` (scvi-tools' default of 400 epochs would keep the KL weight tiny in short runs);
        the dynamics always receive the full prior gradient. The dynamics learn at ``dynamics_lr_factor`` (plan
        keyword, default 10) times the learning rate. The validation ELBO is recorded every epoch when there are
        validation cells. Accelerators, devices and Lightning strategies (e.g.
        ``strategy="ddp_find_unused_parameters_true"``) pass through ``trainer_kwargs``.

        Interrupted runs resume from Lightning checkpoints: train with
        ``callbacks=[lightning.pytorch.callbacks.ModelCheckpoint(dirpath=..., save_last=True)]`` (checkpointing is
        switched on for you when such a callback is given), then call ``train`` on a model built the same way with
        the same ``max_epochs``, split and ``plan_kwargs`` and ``ckpt_path=".../last.ckpt"``. The checkpoint holds
        the weights, the optimiser, the epoch and the random number generator states, so on the CPU the resumed
        run reaches the state of an uninterrupted one (without scvi-tools' own ``SaveCheckpoint``, which switches
        the module to eval mode whenever it saves). ``history`` then holds the epochs run after resuming.

        A second call of ``train`` continues from the trained weights (it does not restart): the optimiser and
        the KL warm-up start afresh, the split is drawn again, and ``history`` gains the new epochs after the old
        ones, as in scvi-tools. A resumed run refuses a checkpoint written with other data, split, ``batching``,
        ``max_epochs``, ``batch_size`` or ``plan_kwargs``.

        Training stops with :class:`FloatingPointError` as soon as the loss becomes NaN or infinite; the message
        names the likely causes.

        On CPUs shared with other work, torch's intra-op threads can slow these small tensor operations down
        several-fold; ``torch.set_num_threads(1)`` per process is often fastest (scmech never changes it for you).

        Multi-GPU and multi-node training go through Lightning's DDP strategies as in scvi-tools:
        ``train(accelerator="gpu", devices=-1, strategy="ddp_find_unused_parameters_true")`` (``num_nodes=`` for
        several machines; ``"ddp_notebook_find_unused_parameters_true"`` in Jupyter; CPUs with the gloo backend
        work too). Caveats: run training from a script (Lightning relaunches it per process), ``batch_size`` is
        per process, early stopping is off under DDP, only rank 0 fills ``history``, every process runs the code
        after ``train`` (save from rank 0: ``os.environ.get("LOCAL_RANK", "0") == "0"``), and the batch-matched and
        error-guided samplers split their minibatches across processes (error weights are summed over them).

        Parameters
        ----------
        max_epochs
            Number of epochs; scvi-tools' heuristic from the number of cells when ``None``.
        batch_size
            Minibatch size (per device under DDP).
        train_size
            Fraction of fitted cells used for training when no external indexing is given (default 0.9).
        validation_size
            Fraction used for validation (default: the rest).
        early_stopping
            Lightning early stopping on the validation ELBO (ignored under DDP, as in scvi-tools).
        batching
            Minibatch strategy (:mod:`scmech.train`): ``"random"`` (scvi-tools' shuffling), ``"batch_matched"``
            (each minibatch from one wet-lab batch, perturbed cells with same-batch controls; needs a
            ``batch_key``) or ``"error_guided"`` (conditions drawn in proportion to the running error of the
            dynamics on them). All work under DDP.
        datasplitter_kwargs
            Passed to :class:`~scmech.train.PerturbationDataSplitter`: ``external_indexing`` (the split),
            ``pin_memory``, ``min_controls`` (``batching="batch_matched"``), ``drop_last`` and ``drop_dataset_tail``
            (``batching="random"``) and the options of torch's ``DataLoader`` (``num_workers``, ``timeout``...);
            other keys are refused before training.
        plan_kwargs
            Passed to :class:`~scmech.train.SemiMechTrainingPlan` (``lr``, ``n_epochs_kl_warmup``, ``ss_weight``...).
            Keys that would have no effect are refused before training: ``kl_weight`` (set ``max_kl_weight`` and
            ``min_kl_weight``), ``update_only_decoder``, ``error_alpha`` without ``batching="error_guided"``, and the
            ``lr_*`` scheduler options without ``reduce_lr_on_plateau=True``. ``lr_scheduler_metric`` (like
            ``early_stopping_monitor``) names a metric of ``history``, e.g. ``"elbo_validation"``.
        ckpt_path
            Lightning checkpoint to resume from (e.g. the ``last.ckpt`` of a
            :class:`~lightning.pytorch.callbacks.ModelCheckpoint`); ``None`` starts afresh.
        **trainer_kwargs
            Passed to :class:`~scvi.train.Trainer` (``accelerator``, ``devices``, ``strategy``...).

        Returns
        -------
        What scvi-tools' training loop returns (``None``); the model is trained in place (``is_trained_``, ``history``).
        """
        _check_mappings(plan_kwargs=plan_kwargs, datasplitter_kwargs=datasplitter_kwargs)
        _check_train_arguments(max_epochs, batch_size, ckpt_path, plan_kwargs)
        _check_plan_keys(plan_kwargs, self._training_plan_cls, self.module)
        _check_batching(batching)
        # the metrics the plan logs: what lr_scheduler_metric and early_stopping_monitor may watch
        logged = getattr(self._training_plan_cls, "logged_metrics", None)
        metrics = logged(self.module) if callable(logged) else None
        _check_plan_options(plan_kwargs, batching, metrics)
        _check_split_options(datasplitter_kwargs, train_size, validation_size, batching)
        _check_trainer_names(trainer_kwargs)
        _check_accelerator(trainer_kwargs)
        _check_distributed_split(trainer_kwargs, datasplitter_kwargs, settings.seed)
        early_stopping = check_flag(early_stopping, "early_stopping")
        _check_early_stopping(early_stopping, trainer_kwargs, metrics)
        # torch's sampler takes Python integers only (a numpy integer is "not a positive integer value" to it)
        batch_size = int(batch_size)
        max_epochs = None if max_epochs is None else int(max_epochs)
        if ckpt_path is not None:
            trainer_kwargs["ckpt_path"] = str(ckpt_path)
        # the data may have been changed in place since setup_anndata: refuse before torch sees it
        self._check_registered_data(values=True)
        self.module.train()  # a second call (or a loaded model) must not train in eval mode
        fit = self._fit_mask(self.adata)
        max_epochs = _resolve_max_epochs(max_epochs, int(fit.sum()))
        plan_kwargs = _with_kl_warmup(plan_kwargs, max_epochs)
        datasplitter_kwargs = dict(datasplitter_kwargs or {})
        external = self._resolve_split(fit, datasplitter_kwargs.get("external_indexing"), train_size, validation_size)
        datasplitter_kwargs["external_indexing"] = external
        if len(external[1]) > 0:
            # record the validation ELBO every epoch (scvi-tools only does so with early stopping)
            trainer_kwargs.setdefault("check_val_every_n_epoch", 1)
        _check_minibatches(len(external[0]), batching, batch_size)
        _check_plateau(plan_kwargs, len(external[1]))
        signature = run_signature(self.adata, external, batching, max_epochs, batch_size, plan_kwargs)
        trainer_kwargs["callbacks"] = training_callbacks(
            trainer_kwargs.pop("callbacks", None), ckpt_path is not None, signature
        )
        if early_stopping and len(external[1]) == 0:
            msg = (
                "early_stopping=True stops on the validation loss, and this split has no validation cells: use "
                "train_size < 1 (or a validation set in external_indexing), or early_stopping=False."
            )
            raise ValueError(msg)
        if batching == "error_guided" and self._design(self.adata).is_control[external[0]].all():
            msg = (
                "batching='error_guided' samples perturbed conditions by their error, and the training cells are all "
                "controls; use batching='random' (or train on perturbed cells too)."
            )
            raise ValueError(msg)
        self._configure_batching(batching, datasplitter_kwargs, plan_kwargs)
        if batching != "random" and use_distributed_sampler(trainer_kwargs.get("strategy")):
            # the strategy's sampler shards its minibatches across processes itself; wrapped in Lightning's
            # DistributedSamplerWrapper it was sharded twice, and each epoch silently left a third of the cells out
            trainer_kwargs.setdefault("use_distributed_sampler", False)
        train_indices = np.asarray(external[0])
        if not self.is_trained_ and ckpt_path is None:
            self._init_gene_levels(train_indices)
            self._init_time_unit(train_indices)
        out = self._run_trainer(
            max_epochs=max_epochs,
            batch_size=batch_size,
            early_stopping=early_stopping,
            datasplitter_kwargs=datasplitter_kwargs,
            plan_kwargs=plan_kwargs,
            **trainer_kwargs,
        )
        self._fit_after_training(train_indices, np.asarray(external[1], dtype=int))
        return out

    def _resolve_split(
        self,
        fit: np.ndarray,
        external: Sequence[Sequence[int]] | None,
        train_size: float | None,
        validation_size: float | None,
    ) -> list[np.ndarray]:
        """Return the train, validation and test indices that scvi-tools' splitter receives.

        Without ``external`` the fitted cells are split at random (:meth:`_default_split`); a given ``external``
        is checked and loses its unassigned cells. scvi-tools' splitter needs every cell in one set, so
        unassigned cells and cells in none of the given sets join the test set, which is never trained on (the
        latter with a warning).

        Parameters
        ----------
        fit
            Boolean mask of the cells that may be fitted (all but the unassigned ones).
        external
            The user's ``external_indexing`` (``[train, validation, test]``, possibly shorter), or ``None``.
        train_size
            Fraction of fitted cells used for training without ``external``.
        validation_size
            Fraction used for validation without ``external``.

        Returns
        -------
        Three sorted integer arrays: training, validation and test cells.

        Raises
        ------
        ValueError
            When ``external`` holds indices outside the cells, or ``train_size`` is outside ``(0, 1]``.
        """
        n_unfit = len(fit) - int(fit.sum())
        given = external is not None
        if external is None:
            split = self._default_split(fit, train_size, validation_size)
        else:
            split = _external_sets(external)
            bad = [len(np.setdiff1d(ix, np.arange(len(fit)))) for ix in split]
            if any(bad):
                msg = f"external_indexing holds indices outside 0..{len(fit) - 1}."
                raise ValueError(msg)
            split = [ix[fit[ix]] for ix in split]
        while len(split) < 3:
            split.append(np.array([], dtype=int))
        # scvi-tools' splitter needs every cell in one set: unassigned and unlisted cells join the test set,
        # which is never trained on
        covered = np.zeros(len(fit), dtype=bool)
        for ix in split:
            covered[ix] = True
        if given and (~covered & fit).sum() > 0:
            warnings.warn(
                f"{int((~covered & fit).sum())} of {int(fit.sum())} cells are in none of the external_indexing sets; "
                "they are held out like test cells (never trained on). Pass [train, validation, test] covering "
                "every cell to silence this.",
                UserWarning,
                stacklevel=3,  # the user's call of train
            )
        split[2] = np.union1d(split[2], np.flatnonzero(~covered)).astype(int)
        if n_unfit:
            logger.info("%d unassigned cells are kept in adata but excluded from training.", n_unfit)
        return split

    def _run_trainer(self, **train_kwargs) -> Any:
        """Run scvi-tools' training loop; a checkpoint that does not fit the model raises a clear error.

        Parameters
        ----------
        **train_kwargs
            Passed to :meth:`scvi.model.base.UnsupervisedTrainingMixin.train`; a ``ckpt_path`` there is the
            checkpoint the run resumes from.

        Returns
        -------
        What scvi-tools' ``train`` returns.

        Raises
        ------
        ValueError
            When resuming from ``ckpt_path`` fails because it was written by another model or data.
        """
        ckpt_path = train_kwargs.get("ckpt_path")
        with warnings.catch_warnings():
            # the training plan's own (cheaper) batch transfer is intended
            warnings.filterwarnings("ignore", message=".*overridden `transfer_batch_to_device`.*")
            try:
                return super().train(**train_kwargs)
            except CheckpointMismatchError as e:
                msg = f"Cannot resume from ckpt_path={str(ckpt_path)!r}: {e}"
                raise ValueError(msg) from e
            except (RuntimeError, KeyError, EOFError, pickle.UnpicklingError) as e:
                if ckpt_path is None:
                    raise
                msg = (
                    f"Cannot resume from ckpt_path={str(ckpt_path)!r}: it does not fit this model and data "
                    f"({type(e).__name__}: {e}). "
                    "Resume with a model built the same way (same arguments, data set up the same way) as the run "
                    "that wrote the checkpoint, or train afresh with ckpt_path=None."
                )
                raise ValueError(msg) from e

    def _fit_after_training(self, train_indices: np.ndarray, validation_indices: np.ndarray | None = None) -> None:
        """Fit the anchoring observations and the target map on the training cells; report unconverged solves.

        Parameters
        ----------
        train_indices
            The cells trained on.
        validation_indices
            The validation cells: those of conditions observed in training join the observations.
        """
        self.trained_media_ = self._media_of(train_indices)
        # the observations first: the target map validates its propagation gain on them
        self._fit_anchor(train_indices, validation_indices)
        self._fit_target_map(train_indices)
        hist = (self.history_ or {}).get("fp_unconverged_train")
        if hist is not None and len(hist) and float(np.asarray(hist)[-1].ravel()[0]) > 0:
            logger.warning(
                "In the last epoch %.0f%% of the steady-state solves did not converge within fixed_point_max_iter=%d "
                "(history['fp_unconverged_train']); train longer or raise fixed_point_max_iter.",
                100 * float(np.asarray(hist)[-1].ravel()[0]),
                self.module.fixed_point_max_iter,
            )

    def _init_gene_levels(self, train_indices: np.ndarray, max_cells: int = 20_000) -> None:
        """Start the decoder's per-gene intercepts at the training cells' mean log expression.

        The softmax of a decoder initialised at zero gives every gene the same share; a gene holding a large
        share of the counts then takes thousands of optimiser steps to reach its level, and short runs stay
        misfit on exactly the genes that dominate the likelihood. The mean is read in row blocks (backed data
        too) from at most ``max_cells`` training cells drawn with scvi-tools' seed.
        """
        idx = np.sort(np.asarray(train_indices, dtype=int))
        if len(idx) == 0:
            return
        if len(idx) > max_cells:
            idx = np.sort(np.random.default_rng(settings.seed).choice(idx, max_cells, replace=False))
        x, _ = self._expression_matrix(self.adata)
        counts = self.adata_manager.registry["setup_args"].get("counts", True)
        size_factor = None
        if REGISTRY_KEYS.SIZE_FACTOR_KEY in self.adata_manager.data_registry:
            size_factor = np.asarray(self.adata_manager.get_from_registry(REGISTRY_KEYS.SIZE_FACTOR_KEY)).ravel()
        xs, lab = _rows(x, idx, np.full(len(idx), "fit", dtype=object))
        mean = normalized_mean(xs, lab, ["fit"], counts=counts)[0]
        if size_factor is not None and counts:
            self._init_library_scale(x, idx, size_factor[idx])
        if counts:
            mean = np.clip(mean, 0.0, None)
            floor = max(float(mean[mean > 0].min()) if (mean > 0).any() else 1.0, 1e-12) / 10
            level = np.log(np.maximum(mean, floor))
            level -= level.mean()
        else:
            level = mean
        bias = self.module.decoder.loading.bias
        with torch.no_grad():
            bias.copy_(torch.as_tensor(level, dtype=bias.dtype, device=bias.device))

    def _init_time_unit(self, train_indices: np.ndarray) -> None:
        """Measure model time in units of the longest registered read-out (or switch) time over ``horizon``.

        A time course recorded in hours then trains and predicts as the same course in days: the field's rates,
        initialised at 1 per model time unit, start at the same number of relaxation times over the experiment.
        """
        if self.regime != "dynamic":
            return
        reg = self.adata_manager.data_registry
        spans = []
        for key in (K.TIME_KEY, K.MEDIA_TIME_KEY):
            if key in reg:
                v = np.asarray(self.adata_manager.get_from_registry(key), dtype=np.float64).ravel()[train_indices]
                v = np.abs(v[np.isfinite(v)])
                if len(v):
                    spans.append(float(v.max()))
        longest = max(spans, default=0.0)
        if longest > 0:
            self.module.set_time_unit(longest / self.module.horizon)

    def _init_library_scale(self, x: Any, idx: np.ndarray, size_factor: np.ndarray) -> None:
        """Scale a registered size factor to the registered genes' counts (a gene panel within a larger library).

        The decoder's expression proportions sum to one over the registered genes, so the expected count total of
        a cell is its library size. A size factor on another scale (the whole transcriptome's library of a gene
        panel, or factors around 1) is rescaled by the median over training cells of the registered genes' total
        over the size factor: depth still varies with the size factor from cell to cell, and the predictions stay
        proportions of the registered genes (the space of :func:`scmech.data.pseudobulk`).
        """
        sums = []
        for lo in range(0, len(idx), 10_000):
            block = x[idx[lo : lo + 10_000]]
            sums.append(np.asarray(block.sum(axis=1)).ravel())
        totals = np.concatenate(sums).astype(np.float64)
        ratio = totals / np.maximum(np.asarray(size_factor, dtype=np.float64), 1e-12)
        scale = float(np.median(ratio[ratio > 0])) if (ratio > 0).any() else 1.0
        if not 0.5 <= scale <= 2.0:
            logger.info(
                "size_factor_key is %.3g times the registered genes' counts (median over training cells); it is "
                "rescaled so that the model's proportions of these genes meet their counts.",
                1.0 / scale,
            )
        buf = self.module.log_library_scale
        with torch.no_grad():
            buf.fill_(float(np.log(scale)))

    def _configure_batching(self, batching: str, datasplitter_kwargs: dict, plan_kwargs: dict) -> None:
        """Put what the minibatch strategy needs into the splitter's and the training plan's keyword arguments.

        Parameters
        ----------
        batching
            ``"random"`` (nothing to add), ``"batch_matched"`` or ``"error_guided"``.
        datasplitter_kwargs
            Updated in place with the batches, conditions and controls of the cells.
        plan_kwargs
            Updated in place with the error tracking of ``"error_guided"``.

        Raises
        ------
        ValueError
            For an unknown strategy, or ``"batch_matched"`` without registered batches.
        """
        _check_batching(batching)
        if batching == "random":
            return
        design = self._design(self.adata)
        if self.adata_manager.registry["setup_args"].get("batch_key") is not None:
            batch = np.asarray(self.adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)).ravel().astype(int)
        elif batching == "batch_matched":
            msg = "batching='batch_matched' needs wet-lab batches: setup_anndata(..., batch_key=...)."
            raise ValueError(msg)
        else:
            batch = np.zeros(design.n_cells, dtype=int)
        codes, uniques = pd.factorize(pd.Series(design.labels))
        weights = np.ones(len(uniques))
        datasplitter_kwargs.update(
            batching=batching,
            batch_labels=batch,
            condition_codes=codes,
            is_control=design.is_control,
            condition_weights=weights,
            seed=int(settings.seed or 0),
        )
        if batching == "error_guided":
            rng = np.random.default_rng(0)
            h = rng.integers(1, 2**40, size=design.matrix.shape[1], dtype=np.int64)
            rows = design.condition_matrix([u for u in uniques if u in design.condition_targets])
            keys = (np.asarray(rows.todense()).round().astype(np.int64) * h).sum(1)
            conds = [int(np.flatnonzero(uniques == u)[0]) for u in uniques if u in design.condition_targets]
            order = np.argsort(keys)
            plan_kwargs["error_tracking"] = {
                "hash": h,
                "keys": keys[order],
                "key_condition": np.asarray(conds)[order],
                "weights": weights,
            }

    def _default_split(
        self, fit: np.ndarray, train_size: float | None, validation_size: float | None
    ) -> list[np.ndarray]:
        """Split the fitted cells at random (scvi-tools' seed) into training, validation and test cells.

        Parameters
        ----------
        fit
            Boolean mask of the cells that may be fitted.
        train_size
            Fraction of them used for training (0.9 when ``None``).
        validation_size
            Fraction used for validation (the rest when ``None``).

        Returns
        -------
        Three sorted integer arrays.
        """
        rng = np.random.default_rng(settings.seed)
        idx = rng.permutation(np.flatnonzero(fit))
        train_size = 0.9 if train_size is None else train_size
        if not 0 < train_size <= 1:
            msg = f"train_size must be in (0, 1], got {train_size}."
            raise ValueError(msg)
        if validation_size is not None and (
            isinstance(validation_size, bool)
            or not isinstance(validation_size, numbers.Real)
            or not 0 <= validation_size <= 1 - train_size + 1e-12
        ):
            msg = (
                f"validation_size={validation_size!r} must be in [0, 1 - train_size] = [0, {1 - train_size:.3g}] "
                "(the validation cells come from what training leaves; None: all of it)."
            )
            raise ValueError(msg)
        n_train = int(np.ceil(train_size * len(idx)))
        n_val = len(idx) - n_train if validation_size is None else int(np.floor(validation_size * len(idx)))
        return [np.sort(idx[:n_train]), np.sort(idx[n_train : n_train + n_val]), np.sort(idx[n_train + n_val :])]


def _resolve_max_epochs(max_epochs: int | None, n_fit: int) -> int:
    """Return the number of epochs: ``max_epochs``, or scvi-tools' heuristic from the number of fitted cells.

    Parameters
    ----------
    max_epochs
        ``train``'s ``max_epochs`` (checked by :func:`_check_train_arguments`).
    n_fit
        Number of cells that may be fitted.

    Returns
    -------
    The number of epochs as an ``int``.
    """
    if max_epochs is None:
        # scvi-tools' heuristic (a private function there): 400 epochs up to 20,000 cells, fewer beyond
        max_epochs = max(min(round(20_000 / max(n_fit, 1) * 400), 400), 1)
    return int(max_epochs)


def _with_kl_warmup(plan_kwargs: dict | None, max_epochs: int) -> dict:
    """Return a copy of ``plan_kwargs`` whose KL warm-up defaults to a quarter of ``max_epochs``.

    Parameters
    ----------
    plan_kwargs
        ``train``'s ``plan_kwargs``; a warm-up given in steps or epochs there is kept.
    max_epochs
        Number of epochs of the run.

    Returns
    -------
    A new dictionary.
    """
    plan_kwargs = dict(plan_kwargs or {})
    if "n_steps_kl_warmup" not in plan_kwargs:
        plan_kwargs.setdefault("n_epochs_kl_warmup", max(1, max_epochs // 4))
    return plan_kwargs


def _check_minibatches(n_train: int, batching: str, batch_size: int) -> None:
    """Refuse an empty training set, and random minibatches of which one would hold a single cell.

    Parameters
    ----------
    n_train
        Number of training cells.
    batching
        ``train``'s ``batching``.
    batch_size
        ``train``'s ``batch_size``.

    Raises
    ------
    ValueError
        When there is no training cell, or the encoder's batch normalisation would meet a one-cell minibatch.
    """
    if n_train == 0:
        msg = "No cells to train on: the training indices are empty after removing unassigned cells."
        raise ValueError(msg)
    if batching == "random" and (batch_size == 1 or n_train % batch_size == 1):
        ok = next((b for b in range(max(batch_size - 1, 2), 2 * batch_size + 3) if n_train % b != 1), None)
        fix = f"Use another batch size, e.g. batch_size={ok}." if ok else "Train on more cells."
        msg = (
            f"With {n_train} training cells and batch_size={batch_size}, a minibatch holds a single cell, which "
            f"the encoder's batch normalisation cannot train on. {fix}"
        )
        raise ValueError(msg)


def _check_plateau(plan_kwargs: dict, n_validation: int) -> None:
    """Refuse ``reduce_lr_on_plateau`` on a validation metric when the split has no validation cells.

    Parameters
    ----------
    plan_kwargs
        ``train``'s ``plan_kwargs``.
    n_validation
        Number of validation cells.

    Raises
    ------
    ValueError
        Naming ``lr_scheduler_metric`` and the fixes (Lightning would fail with "invalid dataloader ... None").
    """
    metric = plan_kwargs.get("lr_scheduler_metric", "elbo_validation")
    if plan_kwargs.get("reduce_lr_on_plateau") and n_validation == 0 and str(metric).endswith("_validation"):
        msg = (
            f"plan_kwargs['reduce_lr_on_plateau']=True watches lr_scheduler_metric={metric!r}, and this split has no "
            "validation cells: use train_size < 1 (or a validation set in external_indexing), or "
            "reduce_lr_on_plateau=False."
        )
        raise ValueError(msg)
