"""Latent quantities of a trained SemiMechVI beyond scvi-tools' latent representation.

:class:`LatentMixin` gives each cell's steady-state residual (how far the field would still move it) and its basal
state (its latent mean minus the read-out of its own protocol).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ._argument_checks import check_flag, check_indices, check_positive_int
from ._protocols import Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

__all__ = ["LatentMixin"]


class LatentMixin:
    """Per-cell quantities of the latent dynamics: steady-state residuals and basal states."""

    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        give_mean: bool = True,
        mc_samples: int = 5000,
        batch_size: int | None = None,
        return_dist: bool = False,
        dataloader=None,
        **data_loader_kwargs,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Return each cell's latent state (scvi-tools' method), its flags and sample count checked first.

        scvi-tools reads the flags as truth values, so ``give_mean="no"`` gave the mean, as ``True`` does.

        Parameters
        ----------
        adata
            AnnData registered like the training data (``None``: the training data).
        indices
            Positions or a boolean mask of the cells (``None``: every cell).
        give_mean
            The posterior mean (``True``) or one sample of the posterior per cell.
        mc_samples
            Samples for the mean of a posterior without a closed-form mean.
        batch_size
            Minibatch size.
        return_dist
            Return the posterior means and variances instead.
        dataloader
            An iterator over minibatches in place of ``adata`` and ``indices`` (scvi-tools' option).
        **data_loader_kwargs
            Passed to the data loader.

        Returns
        -------
        Cells x latent dimensions (with ``return_dist``, the means and the variances).
        """
        give_mean = check_flag(give_mean, "give_mean")
        return_dist = check_flag(return_dist, "return_dist")
        mc_samples = check_positive_int(mc_samples, "mc_samples", hint=", e.g. mc_samples=5000")
        return super().get_latent_representation(
            adata=adata,
            indices=indices,
            give_mean=give_mean,
            mc_samples=mc_samples,
            batch_size=batch_size,
            return_dist=return_dist,
            dataloader=dataloader,
            **data_loader_kwargs,
        )

    def get_aggregated_posterior(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        dof: float | None = 3.0,
    ) -> torch.distributions.Distribution:
        """Return the aggregated posterior of the cells' latent states (scvi-tools' method), indices checked first.

        scvi-tools' method reads ``indices.shape``, so a list of positions failed with an AttributeError inside it.

        Parameters
        ----------
        adata
            AnnData registered like the training data (``None``: the training data).
        indices
            Positions or a boolean mask of the cells to aggregate (``None``: every cell).
        batch_size
            Minibatch size.
        dof
            Degrees of freedom of the Student's t components (``None``: normal components).

        Returns
        -------
        A mixture distribution with one component per cell.
        """
        n_obs = self._validate_anndata(adata).n_obs
        idx = check_indices(indices, n_obs)
        return super().get_aggregated_posterior(adata=adata, indices=idx, batch_size=batch_size, dof=dof)

    @torch.inference_mode()
    def get_steady_state_residual(
        self, adata: AnnData | None = None, indices: Sequence[int] | None = None, batch_size: int | None = None
    ) -> np.ndarray:
        r"""Per-cell steady-state residual :math:`\|f_\theta(z_c; m_c, p_c)\|` at the cell's latent mean.

        Near zero for cells at an equilibrium of their own protocol; large for cells the field would still
        move (e.g. controls that drift, or cells between attractors). In the dynamic regime the drive is the one the
        flow applies at the cell's read-out time (with the onset ramp). Cells of targets without training cells
        use the operators of the gene-embedding map, as :meth:`predict` does. This is a per-cell quantity;
        ``history["ss_residual_train"]`` is the residual at the mean control state, the quantity the
        steady-state term penalises (with ``steady_state_on="mean"``).

        Parameters
        ----------
        adata
            AnnData set up like the registered one (the registered data when ``None``).
        indices
            Indices of the cells to compute it for (every cell when ``None``).
        batch_size
            Minibatch size for encoding (scvi-tools' default when ``None``).

        Returns
        -------
        Array of residual norms, one per cell.
        """
        self._check_if_trained(warn=False)
        adata = self._validate_anndata(adata)
        dl = self._make_data_loader(adata=adata, indices=indices, batch_size=batch_size)
        out = []
        field = self.module.field
        # targets without training cells act through the gene-embedding map, as in predict
        registered = list(self._perturbation_state()["targets"])
        ops = None
        if self.trained_targets_:
            every = [Protocol(t, (t,), None, 0.0, np.nan) for t in registered]
            (ops, _, _), _, _, _ = self._operators_for(every)
        for tensors in dl:
            inf = self.module.inference(**self.module._get_inference_input(tensors))
            proto = self.module._protocol({k: v.to(self.device) for k, v in tensors.items()})
            z = inf["qz"].loc
            drive = field.drive(proto["perturbation"], proto["efficacy"], operators=ops)
            ramp = None
            if self.regime == "dynamic":  # the drive at each cell's read-out time, as the flow applies it
                t = (proto["time"] / self.module.time_unit).reshape(-1, 1)
                ramp = field._ramp(t, torch.ones_like(t))
            out.append(field(z, proto["media"], drive, ramp).norm(dim=-1).cpu().numpy())
        return np.concatenate(out)

    @torch.inference_mode()
    def get_basal_representation(
        self, adata: AnnData | None = None, indices: Sequence[int] | None = None, batch_size: int | None = None
    ) -> np.ndarray:
        r"""Basal state of each cell: its latent mean minus the read-out of its protocol, :math:`z_c - \mu_{\pi_c}`.

        The basal state is what remains of a cell once its perturbation, medium and time are removed; it
        should not encode the perturbation (check with ``history["basal_leak_train"]``).

        Parameters
        ----------
        adata
            AnnData set up like the registered one (the registered data when ``None``).
        indices
            Indices of the cells to compute it for (every cell when ``None``).
        batch_size
            Minibatch size for encoding (scvi-tools' default when ``None``).

        Returns
        -------
        Array of basal states, cells x latent dimensions.
        """
        self._check_if_trained(warn=False)
        adata = self._validate_anndata(adata)
        dl = self._make_data_loader(adata=adata, indices=indices, batch_size=batch_size)
        out = []
        for tensors in dl:
            inf = self.module.inference(**self.module._get_inference_input(tensors))
            proto = self.module._protocol({k: v.to(self.device) for k, v in tensors.items()})
            mu, _ = self.module.readout_states(
                proto["perturbation"],
                proto["media"],
                proto["efficacy"],
                proto["time"],
                proto["media_time"],
                implicit=False,
            )
            out.append((inf["qz"].loc - mu).cpu().numpy())
        return np.concatenate(out)
