"""Training plan of SemiMechVI: scvi-tools' TrainingPlan with a faster learning rate for the dynamics."""

from __future__ import annotations

import numpy as np
import torch
from scvi.train import TrainingPlan
from torch.optim.lr_scheduler import ReduceLROnPlateau

__all__ = ["SemiMechTrainingPlan"]


class SemiMechTrainingPlan(TrainingPlan):
    """:class:`~scvi.train.TrainingPlan` with two parameter groups.

    The dynamics (vector field, operators, baseline state) and the own-target effects of the measurement
    operator learn at ``dynamics_lr_factor`` times the learning rate: they receive gradient only from the cells
    of the conditions they describe and otherwise lag behind the VAE (perturbation effects "learn slowly and
    stay shrunk" in prototypes).

    Two changes to scvi-tools' loop make it cheaper per step, without changing what is computed: the module's
    extra metrics (``ss_residual``, ``mmd``, ...) are averaged over the epoch in plain tensors and logged once per
    epoch (scvi-tools logs each of them at every step, and Lightning's ``log`` costs milliseconds per call), and
    minibatches already on the CPU are not walked through Lightning's generic device transfer.

    Parameters
    ----------
    module
        A module with a ``dynamics_parameter_names()`` method (e.g. :class:`~scmech.module.SemiMechVAE`).
    dynamics_lr_factor
        Learning-rate multiplier of the dynamics parameters.
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
        # error-guided batching: per-condition running error of the dynamics -> the sampler's weights
        self.error_alpha = error_alpha
        self._tracking = error_tracking
        if error_tracking is not None:
            self._hash = torch.as_tensor(error_tracking["hash"], dtype=torch.long)
            self._keys = torch.as_tensor(error_tracking["keys"], dtype=torch.long)
            n = len(error_tracking["weights"])
            self._err_sum = torch.zeros(n, dtype=torch.float64)
            self._err_n = torch.zeros(n, dtype=torch.float64)

    def training_step(self, batch, batch_idx):
        """scvi-tools' training step, plus the per-condition error record of error-guided batching."""
        out = super().training_step(batch, batch_idx)
        if self._tracking is not None:
            err = getattr(self.module, "_cell_prior_fit", None)
            pert = batch.get("perturbation")
            if err is not None and pert is not None:
                codes = (pert.round().long().cpu() * self._hash).sum(1)
                pos = torch.searchsorted(self._keys, codes).clamp(max=len(self._keys) - 1)
                cond = torch.as_tensor(self._tracking["key_condition"], dtype=torch.long)[pos]
                ok = self._keys[pos] == codes
                e = err.detach().cpu().double()
                self._err_sum.index_add_(0, cond[ok], e[ok])
                self._err_n.index_add_(0, cond[ok], torch.ones(int(ok.sum()), dtype=torch.float64))
        return out

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

    # ------------------------------------------------------------------ cheaper logging and transfer
    def compute_and_log_metrics(self, loss_output, metrics, mode: str):
        """Log the ELBO terms as scvi-tools does; accumulate the extra metrics for one log per epoch."""
        extra = loss_output.extra_metrics
        loss_output.extra_metrics = {}
        try:
            super().compute_and_log_metrics(loss_output, metrics, mode)
        finally:
            loss_output.extra_metrics = extra
        n = float(loss_output.n_obs_minibatch)
        sums = self._extra_sums.setdefault(mode, {})
        for key, value in extra.items():
            if not isinstance(value, torch.Tensor) or value.dim() != 0:
                continue
            acc = sums.get(key)
            v = value.detach() * n
            sums[key] = [v, n] if acc is None else [acc[0] + v, acc[1] + n]

    def _log_extra(self, mode: str) -> None:
        sums = self._extra_sums.get(mode, {})
        for key, (total, n) in sums.items():
            self.log(f"{key}_{mode}", total / n, on_step=False, on_epoch=True, sync_dist=self.use_sync_dist)
        self._extra_sums[mode] = {}

    def on_train_epoch_end(self) -> None:
        """Log the epoch means of the extra metrics (``<key>_train``); update error-guided weights."""
        self._log_extra("train")
        if self._tracking is not None:
            self._update_weights()
        super().on_train_epoch_end()

    def on_validation_epoch_end(self) -> None:
        """Log the epoch means of the extra metrics (``<key>_validation``)."""
        self._log_extra("validation")
        super().on_validation_epoch_end()

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
        """Skip Lightning's generic collection walk when the minibatch stays on the CPU."""
        if getattr(device, "type", str(device)) == "cpu" and isinstance(batch, dict):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def configure_optimizers(self):
        """Adam (or the configured optimizer) over two groups: VAE and dynamics."""
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
