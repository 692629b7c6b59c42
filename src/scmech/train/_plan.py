"""Training plan of SemiMechVI: scvi-tools' TrainingPlan with a faster learning rate for the dynamics."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from scvi.train import TrainingPlan
from torch.optim.lr_scheduler import ReduceLROnPlateau

from ._runner import CheckpointMismatchError

__all__ = ["SemiMechTrainingPlan"]

#: key of the error-guided sampling weights in Lightning checkpoints
_ERROR_WEIGHTS = "scmech_error_guided_weights"
#: the ELBO metrics scvi-tools' plan logs per mode (``elbo_train``, ``kl_local_validation``, ...)
_ELBO_METRICS = ("elbo", "reconstruction_loss", "kl_local", "kl_global")


class SemiMechTrainingPlan(TrainingPlan):
    """:class:`~scvi.train.TrainingPlan` with two parameter groups.

    The dynamics (vector field, operators, baseline state) and the own-target effects of the measurement
    operator learn at ``dynamics_lr_factor`` times the learning rate: they receive gradient only from the cells
    of the conditions they describe and otherwise lag behind the VAE (perturbation effects "learn slowly and
    stay shrunk" in prototypes).

    Two changes to scvi-tools' loop make it cheaper per step, without changing what is recorded: epoch-level
    metrics are logged once per epoch instead of at every step, and minibatches already on the CPU are not walked
    through Lightning's generic device transfer. scvi-tools calls Lightning's ``log`` six or more times per step
    (``train_loss``, the four ELBO metrics, each extra metric), and every call walks the stored result through
    Lightning's collection utilities (about a fifth of a step's time at scvi-tools' default width on a CPU). Here
    ``train_loss``/``validation_loss`` and the extra metrics (``ss_residual``, ``mmd``, ...) are averaged over the
    epoch in plain tensors, weighted by minibatch size as Lightning does; the ELBO metrics are updated at every
    step as in scvi-tools and logged once, at the end of the epoch. ``history`` holds the same keys and values.
    With ``on_step=True`` (a plan keyword of scvi-tools) every step is logged as in scvi-tools.

    Parameters
    ----------
    module
        A module with a ``dynamics_parameter_names()`` method (e.g. :class:`~scmech.module.SemiMechVAE`).
    dynamics_lr_factor
        Learning-rate multiplier of the dynamics parameters.
    error_tracking
        The record of error-guided batching (``batching="error_guided"`` of ``SemiMechVI.train``, which builds it):
        a dict with ``"hash"`` (a random hash per target), ``"keys"`` (the hash of each condition, the sum of its
        targets' hashes, sorted), ``"key_condition"`` (the condition code of each key) and ``"weights"`` (the
        sampler's weight per condition code, updated in place at the end of every epoch). ``None``: no record.
    error_alpha
        Exponent of the error-guided weights: a condition's new weight is its mean dynamics error over the epoch,
        relative to the mean over the conditions, to this power (clipped to ``[0.25, 4]`` and averaged with the
        previous weight).
    **kwargs
        Passed to :class:`~scvi.train.TrainingPlan` (``lr``, ``weight_decay``, ``n_epochs_kl_warmup``, ...) and
        unknown ones to the module's ``loss`` (``ss_weight``, ``mmd_weight``).
    """

    def __init__(
        self,
        module,
        *,
        dynamics_lr_factor: float = 10.0,
        error_tracking: dict | None = None,
        error_alpha: float = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(module, **kwargs)
        if dynamics_lr_factor <= 0:
            msg = f"dynamics_lr_factor must be > 0, got {dynamics_lr_factor}."
            raise ValueError(msg)
        self.dynamics_lr_factor = dynamics_lr_factor
        self._extra_sums: dict[str, dict[str, list]] = {"train": {}, "validation": {}}
        self._pending_metrics: dict[str, dict] = {}
        # error-guided batching: per-condition running error of the dynamics -> the sampler's weights
        parts = ("hash", "keys", "key_condition", "weights")
        if error_tracking is not None and not (
            isinstance(error_tracking, Mapping) and all(k in error_tracking for k in parts)
        ):
            msg = (
                f"error_tracking (a {type(error_tracking).__name__}) must be None or the dict with keys {list(parts)} "
                "that SemiMechVI.train builds for batching='error_guided'; pass train(batching='error_guided') "
                "instead of error_tracking."
            )
            raise TypeError(msg)
        self.error_alpha = error_alpha
        self._tracking = error_tracking
        if error_tracking is not None:
            self._hash = torch.as_tensor(error_tracking["hash"], dtype=torch.long)
            self._keys = torch.as_tensor(error_tracking["keys"], dtype=torch.long)
            self._key_condition = torch.as_tensor(error_tracking["key_condition"], dtype=torch.long)
            n = len(error_tracking["weights"])
            self._err_sum = torch.zeros(n, dtype=torch.float64)
            self._err_n = torch.zeros(n, dtype=torch.float64)

    @staticmethod
    def logged_metrics(module) -> list[str]:
        """Return the names of the epoch-level metrics the plan logs with ``module``.

        They are the keys of ``history`` and what ``early_stopping_monitor`` and ``lr_scheduler_metric`` may watch.

        Parameters
        ----------
        module
            The module to train: its ``extra_metric_names`` (the extra metrics its ``loss`` returns; none when it
            has no such attribute).

        Returns
        -------
        ``train_loss`` and the training metrics (``elbo_train``, ``ss_residual_train``, ...), then the same for
        validation (``validation_loss``, ``elbo_validation``, ...).
        """
        extra = list(getattr(module, "extra_metric_names", ()))
        names = []
        for mode in ("train", "validation"):
            names += [f"{mode}_loss", *(f"{name}_{mode}" for name in (*_ELBO_METRICS, *extra))]
        return names

    def training_step(self, batch, batch_idx):
        """Run scvi-tools' training step with epoch-level logging, plus the error record of error-guided batching.

        Parameters
        ----------
        batch
            A minibatch of registered tensors.
        batch_idx
            Position of the minibatch in the epoch.

        Returns
        -------
        The loss of the minibatch.
        """
        if self.on_step:
            out = super().training_step(batch, batch_idx)
        else:
            if "kl_weight" in self.loss_kwargs:
                kl_weight = self.kl_weight
                self.loss_kwargs.update({"kl_weight": kl_weight})
                self.log("kl_weight", kl_weight, on_step=True, on_epoch=False)
            _, _, loss_output = self.forward(batch, loss_kwargs=self.loss_kwargs)
            self._accumulate("train", "train_loss", loss_output.loss, float(loss_output.n_obs_minibatch))
            self.compute_and_log_metrics(loss_output, self.train_metrics, "train")
            if loss_output.extra_metrics:
                self.prepare_scib_autotune(loss_output.extra_metrics, "training")
            out = loss_output.loss
        if self._tracking is not None:
            err = getattr(self.module, "_cell_prior_fit", None)
            pert = batch.get("perturbation")
            if err is not None and pert is not None:
                self._record_errors(pert, err.detach())
        return out

    def _record_errors(self, entries: torch.Tensor, err: torch.Tensor) -> None:
        """Add each cell's dynamics error to its condition's record, on the minibatch's device (no host read).

        ``entries`` are the registered targets of each cell (positions, -1 padding); a condition's hash is the sum
        of its targets' hashes. The record is read once per epoch (:meth:`_update_weights`).
        """
        dev = err.device
        if self._err_sum.device != dev:
            for name in ("_hash", "_keys", "_key_condition", "_err_sum", "_err_n"):
                setattr(self, name, getattr(self, name).to(dev))
        idx = entries.round().long()
        codes = torch.where(idx >= 0, self._hash[idx.clamp(min=0)], torch.zeros_like(idx)).sum(1)
        pos = torch.searchsorted(self._keys, codes).clamp(max=len(self._keys) - 1)
        ok = (self._keys[pos] == codes).to(torch.float64)
        cond = self._key_condition[pos]
        self._err_sum.index_add_(0, cond, err.to(torch.float64) * ok)
        self._err_n.index_add_(0, cond, ok)

    def _update_weights(self) -> None:
        s, n = self._err_sum.clone(), self._err_n.clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            s, n = s.to(self.device), n.to(self.device)
            torch.distributed.all_reduce(s)
            torch.distributed.all_reduce(n)
        s, n = s.cpu(), n.cpu()
        weights = self._tracking["weights"]
        seen = n > 0
        if seen.sum() >= 2:
            err = (s[seen] / n[seen]).numpy()
            new = np.clip((err / max(err.mean(), 1e-12)) ** self.error_alpha, 0.25, 4.0)
            idx = np.flatnonzero(seen.numpy())
            weights[idx] = 0.5 * weights[idx] + 0.5 * new
        self._err_sum.zero_()
        self._err_n.zero_()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Save the error-guided sampling weights: a resumed run then draws the minibatches of the uninterrupted one.

        Parameters
        ----------
        checkpoint
            Lightning's checkpoint dictionary (tensors only are added: it loads with ``weights_only=True``).
        """
        super().on_save_checkpoint(checkpoint)
        if self._tracking is not None:
            checkpoint[_ERROR_WEIGHTS] = torch.as_tensor(np.asarray(self._tracking["weights"], dtype=np.float64))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore the error-guided sampling weights saved in ``checkpoint`` (in place: the sampler shares them).

        Parameters
        ----------
        checkpoint
            Lightning's checkpoint dictionary.

        Raises
        ------
        CheckpointMismatchError
            When the checkpoint was written with error-guided batching over other conditions, or without it.
        """
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get(_ERROR_WEIGHTS)
        if self._tracking is None and saved is None:
            return
        weights = None if self._tracking is None else self._tracking["weights"]
        if saved is None or weights is None or tuple(saved.shape) != np.shape(weights):
            msg = (
                "the checkpoint was written with "
                f"{'no' if saved is None else len(saved)} error-guided condition weights and this run has "
                f"{'none' if weights is None else len(weights)}: resume with the batching "
                "(batching='error_guided' or not) and the data of the interrupted run."
            )
            raise CheckpointMismatchError(msg)
        weights[:] = saved.cpu().numpy()

    # ------------------------------------------------------------------ cheaper logging and transfer
    def validation_step(self, batch, batch_idx):
        """Run scvi-tools' validation step with epoch-level logging.

        Parameters
        ----------
        batch
            A minibatch of registered tensors.
        batch_idx
            Position of the minibatch in the epoch.

        Returns
        -------
        ``None``: the losses are logged (scvi-tools' step may return its own output where it runs instead).
        """
        if self.on_step:
            return super().validation_step(batch, batch_idx)
        _, _, loss_output = self.forward(batch, loss_kwargs=self.loss_kwargs)
        self._accumulate("validation", "validation_loss", loss_output.loss, float(loss_output.n_obs_minibatch))
        self.compute_and_log_metrics(loss_output, self.val_metrics, "validation")
        if loss_output.extra_metrics:
            self.prepare_scib_autotune(loss_output.extra_metrics, "validation")
        return None

    def _accumulate(self, mode: str, key: str, value: torch.Tensor, n: float) -> None:
        sums = self._extra_sums.setdefault(mode, {})
        v = value.detach() * n
        acc = sums.get(key)
        sums[key] = [v, n] if acc is None else [acc[0] + v, acc[1] + n]

    def compute_and_log_metrics(self, loss_output, metrics, mode: str):
        """Update the ELBO metrics as scvi-tools does; accumulate the 0-d extra metrics for one log per epoch.

        Parameters
        ----------
        loss_output
            The module's ``LossOutput`` of the minibatch.
        metrics
            The ELBO metrics of scvi-tools for the mode (``train_metrics`` or ``val_metrics``).
        mode
            ``"train"`` or ``"validation"``, the suffix of the logged keys.
        """
        extra = loss_output.extra_metrics
        if self.on_step:
            loss_output.extra_metrics = {}
            try:
                super().compute_and_log_metrics(loss_output, metrics, mode)
            finally:
                loss_output.extra_metrics = extra
        else:
            with torch.inference_mode():
                metrics[f"elbo_{mode}"].update(
                    reconstruction_loss=loss_output.reconstruction_loss_sum,
                    kl_local=loss_output.kl_local_sum,
                    kl_global=loss_output.kl_global_sum,
                    n_obs_minibatch=loss_output.n_obs_minibatch,
                )
            self._pending_metrics[mode] = metrics
        n = float(loss_output.n_obs_minibatch)
        for key, value in extra.items():
            if isinstance(value, torch.Tensor) and value.dim() == 0:
                self._accumulate(mode, f"{key}_{mode}", value, n)

    def _log_extra(self, mode: str) -> None:
        metrics = self._pending_metrics.pop(mode, None)
        if metrics is not None:
            self.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=self.use_sync_dist)
        for key, (total, n) in self._extra_sums.get(mode, {}).items():
            # logged with the epoch's cell count, so that Lightning's (distributed) mean weights processes by cells
            self.log(key, total / n, on_step=False, on_epoch=True, batch_size=int(n), sync_dist=self.use_sync_dist)
        self._extra_sums[mode] = {}

    def on_train_epoch_end(self) -> None:
        """Log the epoch means (``train_loss``, ELBO metrics, ``<key>_train``); update error-guided weights."""
        self._log_extra("train")
        if self._tracking is not None:
            self._update_weights()
        super().on_train_epoch_end()

    def on_validation_epoch_end(self) -> None:
        """Log the epoch means (``validation_loss``, ELBO metrics, ``<key>_validation``)."""
        self._log_extra("validation")
        super().on_validation_epoch_end()

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
        """Skip Lightning's generic collection walk when the minibatch stays on the CPU.

        Parameters
        ----------
        batch
            The minibatch; a dict bound for the CPU is returned as it is.
        device
            The device to move it to.
        dataloader_idx
            Index of the dataloader the minibatch came from.

        Returns
        -------
        The minibatch on ``device``.
        """
        if getattr(device, "type", str(device)) == "cpu" and isinstance(batch, dict):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def configure_optimizers(self):
        """Adam (or the configured optimizer) over two groups: VAE and dynamics.

        Returns
        -------
        The optimizer, with its learning-rate scheduler when one is configured (Lightning's format).
        """
        names = set(self.module.dynamics_parameter_names())
        dyn, rest = [], []
        for name, p in self.module.named_parameters():
            if p.requires_grad:
                (dyn if name in names else rest).append(p)
        groups = [{"params": rest}]
        if dyn:
            groups.append({"params": dyn, "lr": self.lr * self.dynamics_lr_factor})
        optimizer = self.get_optimizer_creator()(groups)
        config = {"optimizer": optimizer}
        if self.reduce_lr_on_plateau:
            scheduler = ReduceLROnPlateau(
                optimizer,
                patience=self.lr_patience,
                factor=self.lr_factor,
                threshold=self.lr_threshold,
                min_lr=self.lr_min,
                threshold_mode="abs",
            )
            config["lr_scheduler"] = {"scheduler": scheduler, "monitor": self.lr_scheduler_metric}
        return config
