"""Training plan of SemiMechVI: scvi-tools' TrainingPlan with a faster learning rate for the dynamics."""

from __future__ import annotations

from scvi.train import TrainingPlan
from torch.optim.lr_scheduler import ReduceLROnPlateau

__all__ = ["SemiMechTrainingPlan"]


class SemiMechTrainingPlan(TrainingPlan):
    """:class:`~scvi.train.TrainingPlan` with two parameter groups.

    The dynamics (vector field, operators, baseline state) and the gene-space perturbation terms of the
    measurement operator learn at ``dynamics_lr_factor`` times the learning rate: they receive gradient only
    from the cells of the conditions they describe and otherwise lag behind the VAE (perturbation effects
    "learn slowly and stay shrunk" in prototypes).

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

    def __init__(self, module, *, dynamics_lr_factor: float = 10.0, **kwargs) -> None:
        super().__init__(module, **kwargs)
        if dynamics_lr_factor <= 0:
            msg = f"dynamics_lr_factor must be > 0, got {dynamics_lr_factor}."
            raise ValueError(msg)
        self.dynamics_lr_factor = dynamics_lr_factor

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
