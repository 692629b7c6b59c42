r"""The end-to-end neural field of the paper's vanilla model: an MLP of state, perturbation and medium.

.. math::

    f_\theta(z; m, p) = \mathrm{MLP}_\theta\big(z,\ \textstyle\sum_{k \in p} \eta_k e_k,\ e_m\big),

with one learned embedding :math:`e_k` per target (summed over the targets of a combination and scaled by the
cell's efficacy) and one per medium. Unlike :class:`~scmech.module._dynamics.VectorField` it has no separate
decay, centre, push shared by all perturbed cells or medium push: control and perturbed fields share every
parameter, and only the embedding input tells them apart. In this class the steady-state term
:math:`\|f_\theta(\bar z_\varnothing; m_0, \varnothing)\|^2` constrains what the perturbed fields share with the
control field (it is the setting of the paper's claim; see ``docs/framework.md``).

The field has no guaranteed fixed point, so it is read out by flows only.

This module knows no AnnData: tensors in, tensors out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ._flow import ProtocolFlow

if TYPE_CHECKING:
    from ._targets import ActiveTargets

__all__ = ["NeuralField"]


class NeuralField(ProtocolFlow):
    r"""Vector field :math:`f_\theta(z; m, p)` given by one MLP of the state and the embeddings.

    Parameters
    ----------
    n_latent
        Dimension of the latent state (and of the target embeddings, so that they stand where the operators of
        :class:`~scmech.module._dynamics.VectorField` stand: the target map fills rows for unseen targets).
    n_targets
        Number of targets with a learned embedding.
    n_media
        Number of media (medium 0 is the baseline).
    n_hidden
        Width of the MLP's hidden layers.
    n_layers
        Number of hidden layers (at least 1).
    onset_tau
        Time constant of the onset ramp of perturbations (0: instantaneous).
    learn_onset
        Learn ``onset_tau``.
    """

    def __init__(
        self,
        n_latent: int,
        n_targets: int,
        n_media: int = 1,
        n_hidden: int = 64,
        n_layers: int = 2,
        onset_tau: float = 0.0,
        learn_onset: bool = False,
    ) -> None:
        super().__init__()
        if n_hidden < 1 or n_layers < 1:
            msg = f"A neural field needs n_hidden >= 1 and n_layers >= 1, got n_hidden={n_hidden}, n_layers={n_layers}."
            raise ValueError(msg)
        self.n_latent = n_latent
        self.n_targets = n_targets
        self.n_media = n_media
        self.n_hidden = n_hidden
        # the embeddings start at zero (every target starts as the control); the MLP's input weights carry their
        # gradient from the first step
        self.operators_raw = nn.Parameter(torch.zeros(n_targets, n_latent))
        n_embed = min(8, n_media) if n_media > 1 else 0
        self.media_embedding = nn.Parameter(torch.randn(n_media, n_embed) * 0.1) if n_embed else None
        dims = [2 * n_latent + n_embed] + [n_hidden] * n_layers
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            layers += [nn.Linear(dims[i], dims[i + 1]), nn.Tanh()]
        out = nn.Linear(n_hidden, n_latent)
        # the field starts at zero (every flow starts as the identity), as VectorField's nonlinear part does
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.mlp = nn.Sequential(*layers, out)
        self._init_onset(onset_tau, learn_onset)

    @property
    def operators(self) -> torch.Tensor:
        """Embeddings :math:`e_k` of the targets (targets x latent)."""
        return self.operators_raw

    def drive(
        self,
        perturbation: torch.Tensor | ActiveTargets,
        efficacy: torch.Tensor | None = None,
        operators: torch.Tensor | None = None,
    ) -> torch.Tensor:
        r"""Perturbation input :math:`\sum_k \eta\, e_k` of each row (zero for controls).

        Parameters
        ----------
        perturbation
            Multi-hot rows (n x targets), or their non-zero entries (``ActiveTargets``).
        efficacy
            Efficacy per row; 1 when ``None``.
        operators
            Embeddings to use instead of the learned ones (e.g. with rows for unseen targets).

        Returns
        -------
        The summed embeddings of each row's targets, scaled by its efficacy (n x latent).
        """
        return self.target_drive(perturbation, efficacy, operators)[0]

    def forward(
        self,
        z: torch.Tensor,
        media: torch.Tensor,
        drive: torch.Tensor,
        ramp: torch.Tensor | None = None,
    ) -> torch.Tensor:
        r"""Evaluate :math:`f_\theta(z; m, p)`.

        Parameters
        ----------
        z
            States (n x latent).
        media
            Medium index per row (n,), long.
        drive
            Perturbation input from :meth:`drive` (n x latent).
        ramp
            Onset factor in [0, 1] per row (n, 1), multiplying the drive; 1 when ``None``.

        Returns
        -------
        The velocity :math:`dz/dt` of each row (n x latent).
        """
        u = drive if ramp is None else drive * ramp
        parts = [z, u.expand(z.shape[0], -1)]
        if self.media_embedding is not None:
            parts.append(self.media_embedding[media])
        return self.mlp(torch.cat(parts, dim=-1))

    def jacobian(self, z: torch.Tensor, media: torch.Tensor) -> torch.Tensor:
        r"""Jacobian :math:`\partial f / \partial z` of the control field per row (n x latent x latent).

        Parameters
        ----------
        z
            States (n x latent).
        media
            Medium index per row (n,), long.

        Returns
        -------
        One Jacobian per row, at zero drive (the unperturbed field).
        """
        zero = torch.zeros(1, self.n_latent, device=z.device, dtype=z.dtype)

        def one(zi: torch.Tensor, mi: torch.Tensor) -> torch.Tensor:
            return self.forward(zi[None], mi[None], zero)[0]

        return torch.func.vmap(torch.func.jacrev(one))(z, media)

    def stiffness(self) -> float:
        r"""Bound on the moduli of the Jacobian's eigenvalues: the product of the layers' spectral norms in :math:`z`.

        :math:`\tanh` is 1-Lipschitz, so :math:`\|\partial f/\partial z\| \le \|W_L\| \cdots \|W_2\|\,\|W_1^{(z)}\|`
        with :math:`W_1^{(z)}` the state's columns of the first layer.

        Returns
        -------
        The bound, a float.
        """
        with torch.no_grad():
            linears = [m for m in self.mlp if isinstance(m, nn.Linear)]
            rate = float(torch.linalg.matrix_norm(linears[0].weight[:, : self.n_latent], ord=2))
            for layer in linears[1:]:
                rate *= float(torch.linalg.matrix_norm(layer.weight, ord=2))
        return rate

    def fixed_point(self, *args, **kwargs):
        """Not available: the neural field has no guaranteed fixed point; it is read out by flows.

        Parameters
        ----------
        *args, **kwargs
            The arguments of :meth:`VectorField.fixed_point <scmech.module.VectorField.fixed_point>`; any call
            raises ``NotImplementedError``.
        """
        msg = (
            "The neural field of NeuralODE has no guaranteed steady state, so it is read out by flows only "
            "(readout='flow'); SemiMechVI reads fixed points."
        )
        raise NotImplementedError(msg)
