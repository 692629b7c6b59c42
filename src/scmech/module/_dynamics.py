r"""Latent dynamics: the vector field, its operators, the ODE solver and the steady-state solve.

The field acting on the latent cell state :math:`z \in \mathbb R^d` is

.. math::

    f_\theta(z; m, p, t) = -\gamma \odot (z - c) + g_\theta(z, e_m) + w_m
        + \textstyle\sum_{k \in p} \eta_k(t)\, v_k + [p \neq \varnothing]\, v_{\text{shared}},

with a stable linear part (:math:`\gamma > 0`), a nonlinear part :math:`g_\theta` (an MLP whose Lipschitz
constant is kept below :math:`\lambda_{\text{lip}} \min\gamma`, so that every (medium, perturbation) has
one globally attracting fixed point, assumption A2), a medium push :math:`w_m` and embedding :math:`e_m`
(:math:`w_0 = 0` for the baseline medium), one operator :math:`v_k` per target gene scaled by its efficacy
(with an optional onset ramp :math:`\eta_k(t) = \eta_k (1 - e^{-t/\tau})`), and a push shared by all
perturbed cells (the systematic response). With :math:`g = 0` the fixed point is
:math:`c + (w_m + \sum v_k + v_{\text{shared}})/\gamma`, a linear-response (latent-shift) model;
combinations interact only through :math:`g`.

This module knows no AnnData: tensors in, tensors out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ._flow import ProtocolFlow

if TYPE_CHECKING:
    from ._targets import ActiveTargets

__all__ = ["FixedPointResult", "VectorField"]


@dataclass
class FixedPointResult:
    r"""States at the fixed point and how well each solve converged.

    Returned by :meth:`VectorField.fixed_point`; each parameter is also an attribute of the same name.

    Parameters
    ----------
    z
        States at the fixed point (n x latent).
    residual
        Norm of the field :math:`\lVert f_\theta(z)\rVert` per row at the last iterate.
    converged
        Whether each row's largest :math:`|f_i|` is below ten times the tolerance (at least ``1e-4``); boolean, n.
    n_iter
        Number of iterations run.
    n_needed
        Iterations the solve needed until every row was within the tolerance (a device value; ``n_iter`` when the
        solve stopped at its cap).
    """

    z: torch.Tensor
    residual: torch.Tensor
    converged: torch.Tensor
    n_iter: int
    n_needed: torch.Tensor | None = None


class VectorField(ProtocolFlow):
    r"""Vector field :math:`f_\theta(z; m, p)` on the latent state with operators for targets and media.

    Parameters
    ----------
    n_latent
        Dimension of the latent state.
    n_targets
        Number of perturbation targets with a learned operator.
    n_media
        Number of media (medium 0 is the baseline).
    n_hidden
        Width of the nonlinear part :math:`g_\theta`; 0 makes the field linear.
    n_layers
        Number of hidden layers of :math:`g_\theta`.
    lipschitz
        Bound on :math:`\mathrm{Lip}(g_\theta) / \min\gamma`; below 1 guarantees a unique stable fixed point.
    operator_scale
        Multiplier of the raw operator parameters (a per-parameter learning-rate boost for the operators,
        which otherwise learn slowly).
    onset_tau
        Time constant of the onset ramp of perturbations (0: instantaneous).
    learn_onset
        Learn ``onset_tau`` (starting from the given value, or 0.5 when it is 0).
    """

    def __init__(
        self,
        n_latent: int,
        n_targets: int,
        n_media: int = 1,
        n_hidden: int = 64,
        n_layers: int = 1,
        lipschitz: float = 0.9,
        operator_scale: float = 1.0,
        onset_tau: float = 0.0,
        learn_onset: bool = False,
    ) -> None:
        super().__init__()
        if not 0 < lipschitz < 1:
            msg = f"`lipschitz` must be in (0, 1) for a unique stable fixed point, got {lipschitz}."
            raise ValueError(msg)
        self.n_latent = n_latent
        self.n_targets = n_targets
        self.n_media = n_media
        self.lipschitz = lipschitz
        self.operator_scale = operator_scale
        # gamma = softplus(raw) + 0.05, initialised at 1
        self.gamma_raw = nn.Parameter(torch.full((n_latent,), math.log(math.e**0.95 - 1)))
        self.center = nn.Parameter(torch.zeros(n_latent))
        self.operators_raw = nn.Parameter(torch.zeros(n_targets, n_latent))
        self.shared_raw = nn.Parameter(torch.zeros(n_latent))
        self.media_push_raw = nn.Parameter(torch.zeros(max(n_media - 1, 0), n_latent))
        n_embed = min(8, n_media) if n_media > 1 else 0
        self.media_embedding = nn.Parameter(torch.randn(n_media, n_embed) * 0.1) if n_embed else None
        self.n_hidden = n_hidden
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        if n_hidden > 0:
            dims = [n_latent + n_embed] + [n_hidden] * n_layers + [n_latent]
            for i in range(len(dims) - 1):
                w = torch.empty(dims[i + 1], dims[i])
                nn.init.orthogonal_(w)
                self.weights.append(nn.Parameter(w))
                if i < len(dims) - 2:
                    self.biases.append(nn.Parameter(torch.zeros(dims[i + 1])))
            # g starts at zero: tanh(0) = 0 scales the whole nonlinear part
            self.g_gate = nn.Parameter(torch.zeros(()))
        else:
            self.register_parameter("g_gate", None)
        self._init_onset(onset_tau, learn_onset)

    # ------------------------------------------------------------------ parameters
    @property
    def gamma(self) -> torch.Tensor:
        """Relaxation rates (positive)."""
        return nn.functional.softplus(self.gamma_raw) + 0.05

    @property
    def operators(self) -> torch.Tensor:
        """Operators :math:`v_k` of the targets (targets x latent)."""
        return self.operator_scale * self.operators_raw

    @property
    def shared(self) -> torch.Tensor:
        """Push shared by all perturbed cells."""
        return self.operator_scale * self.shared_raw

    @property
    def media_push(self) -> torch.Tensor:
        """Pushes :math:`w_m` of the media (media x latent, row 0 is the baseline's zero)."""
        zero = torch.zeros(1, self.n_latent, device=self.center.device, dtype=self.center.dtype)
        return torch.cat([zero, self.operator_scale * self.media_push_raw], dim=0)

    def _normalised_weights(self) -> list[torch.Tensor]:
        # Frobenius normalisation bounds the spectral norm of each layer by 1 (no power iteration needed)
        out = []
        for w in self.weights:
            norm = torch.linalg.matrix_norm(w)
            out.append(w / torch.clamp(norm, min=1.0))
        return out

    def _g_scale(self) -> torch.Tensor:
        return self.lipschitz * self.gamma.min() * torch.tanh(self.g_gate)

    # ------------------------------------------------------------------ evaluation
    def drive(
        self,
        perturbation: torch.Tensor | ActiveTargets,
        efficacy: torch.Tensor | None = None,
        operators: torch.Tensor | None = None,
    ) -> torch.Tensor:
        r"""Constant input of the perturbation: :math:`\sum_k \eta v_k + [p \neq \varnothing] v_{shared}`.

        Parameters
        ----------
        perturbation
            Multi-hot rows (n x targets), or their non-zero entries (``ActiveTargets``; the cost of a training
            step then does not grow with the number of targets).
        efficacy
            Efficacy per row (n,) or (n, 1); 1 when ``None``.
        operators
            Operators to use instead of the learned ones (e.g. with rows for unseen targets).

        Returns
        -------
        The perturbation input of each row (n x latent): its targets' operators, scaled by its efficacy.
        """
        u, active = self.target_drive(perturbation, efficacy, operators)
        return u + active.perturbed * self.shared

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
        out = -self.gamma * (z - self.center) + self.media_push[media] + u
        if self.n_hidden > 0:
            out = out + self._g(z, media)[0]
        return out

    def _frozen(self) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Compute the field's derived parameters once, for the many evaluations of one solve (no autograd)."""
        out: dict = {"gamma": self.gamma, "center": self.center, "push": self.media_push}
        if self.n_hidden > 0:
            out["ws"] = self._normalised_weights()
            out["scale"] = self._g_scale()
        return out

    def _value_and_jacobian(
        self, z: torch.Tensor, media: torch.Tensor, drive: torch.Tensor, frozen: dict
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Evaluate :math:`f` and :math:`\partial f / \partial z` at each row in one pass of the nonlinear part."""
        n, d = z.shape
        gamma = frozen["gamma"]
        value = -gamma * (z - frozen["center"]) + frozen["push"][media] + drive
        jac = -torch.diag_embed(gamma.expand(n, d))
        if self.n_hidden > 0:
            g, g_jac = self._g(z, media, with_jacobian=True, frozen=frozen)
            value, jac = value + g, jac + g_jac
        return value, jac

    def _g(self, z: torch.Tensor, media: torch.Tensor, with_jacobian: bool = False, frozen: dict | None = None):
        ws = self._normalised_weights() if frozen is None else frozen["ws"]
        h = z
        if self.media_embedding is not None:
            h = torch.cat([z, self.media_embedding[media]], dim=-1)
        derivs = []
        for i, w in enumerate(ws[:-1]):
            h = torch.tanh(h @ w.T + self.biases[i])
            derivs.append(1 - h**2)
        scale = self._g_scale() if frozen is None else frozen["scale"]
        out = scale * (h @ ws[-1].T)
        if not with_jacobian:
            return out, None
        # analytic Jacobian d g / d z: scale * W_L diag(d_{L-1}) W_{L-1} ... diag(d_1) W_1[:, :d]
        jac = ws[-1].expand(z.shape[0], -1, -1)
        for i in range(len(derivs) - 1, -1, -1):
            jac = jac * derivs[i].unsqueeze(1)
            w = ws[i] if i > 0 else ws[0][:, : self.n_latent]
            jac = jac @ w
        return out, scale * jac

    def jacobian(self, z: torch.Tensor, media: torch.Tensor) -> torch.Tensor:
        r"""Jacobian :math:`\partial f / \partial z` per row (n x latent x latent).

        Parameters
        ----------
        z
            States (n x latent).
        media
            Medium index per row (n,), long.

        Returns
        -------
        One Jacobian per row: :math:`-\mathrm{diag}(\gamma)` plus the Jacobian of :math:`g_\theta`.
        """
        n, d = z.shape
        jac = -torch.diag_embed(self.gamma.expand(n, d))
        if self.n_hidden > 0:
            jac = jac + self._g(z, media, with_jacobian=True)[1]
        return jac

    # ------------------------------------------------------------------ steady states
    def fixed_point(
        self,
        z_init: torch.Tensor,
        media: torch.Tensor,
        drive: torch.Tensor,
        *,
        tol: float = 1e-5,
        max_iter: int = 50,
        implicit: bool = True,
        check_every: int | None = 4,
    ) -> FixedPointResult:
        r"""Solve :math:`f_\theta(z^\star; m, p) = 0` by safeguarded Newton, with implicit gradients.

        Each iteration tries the Newton step :math:`z - J^{-1} f(z)` per row and keeps it where it lowers
        :math:`\max_i |f_i|`; elsewhere (an overshoot far from the fixed point, or a failed linear solve) the row
        takes the relaxation step :math:`z + f(z)/\gamma_{\max}`. The relaxation is a contraction with rate at
        most :math:`1 - (1 - L)\,\gamma_{\min}/\gamma_{\max}` (:math:`L` = ``lipschitz``, the bound on the
        nonlinear part), so every row converges; Newton makes the last steps quadratic. Convergence is
        checked on the host only every ``check_every`` iterations, and the tolerance is raised to what the
        dtype can resolve (a float32 solve cannot reach 1e-7 on states of order one).

        The solve runs without autograd; the result is re-attached by one Newton step with the Jacobian
        detached, :math:`z^\star - J^{-1} f_\theta(z^\star)`, whose value is :math:`z^\star` and whose
        gradient is the implicit-function-theorem gradient :math:`-J^{-1}\,\partial f/\partial\theta`
        (deep-equilibrium style): no backpropagation through the iterations.

        Parameters
        ----------
        z_init
            Starting states (n x latent).
        media
            Medium index per row.
        drive
            Perturbation input per row.
        tol
            Convergence tolerance on :math:`\max_i |f_i|`.
        max_iter
            Cap on iterations.
        implicit
            Attach implicit gradients (else return a detached state).
        check_every
            Iterations between convergence checks (each check waits for the device). ``None`` runs exactly
            ``max_iter`` iterations and never waits for the device: a training step passes the budget it learned
            from earlier epochs (:attr:`FixedPointResult.n_needed`), so that a GPU step runs without host syncs.

        Returns
        -------
        The solve's result: states, residuals and the iterations it needed (:class:`FixedPointResult`).
        """
        with torch.no_grad():
            frozen = self._frozen()
            z = z_init.detach().clone()
            d = drive.detach()
            n = z.shape[0]
            relax = 1.0 / frozen["gamma"].max()
            fz, jz = self._value_and_jacobian(z, media, d, frozen)
            size = fz.abs().amax(dim=-1)
            # the tolerance is raised to what the dtype resolves at the states' scale (kept on the device)
            scale = 1.0 + torch.nan_to_num(z.abs().amax() + d.abs().amax(), posinf=0.0)
            tol_t = torch.clamp(64 * torch.finfo(z.dtype).eps * scale * frozen["gamma"].max(), min=tol)
            # iterations still needed when each iteration began (a device count; read once per epoch by training)
            needed = torch.zeros((), device=z.device, dtype=torch.long)
            media2, d2 = torch.cat([media, media]), torch.cat([d, d])
            it = 0
            for it in range(1, max_iter + 1):
                if check_every is not None and (it - 1) % max(check_every, 1) == 0 and bool(size.max() < tol_t):
                    it -= 1
                    break
                needed = needed + (size.max() >= tol_t).long()
                step, info = torch.linalg.solve_ex(jz, fz.unsqueeze(-1))
                # both candidates (Newton and relaxation) in one pass, with their Jacobians for the next step
                f2, j2 = self._value_and_jacobian(torch.cat([z - step.squeeze(-1), z + relax * fz]), media2, d2, frozen)
                size_newton = f2[:n].abs().amax(dim=-1)
                take = ((info == 0) & torch.isfinite(size_newton) & (size_newton < size)).unsqueeze(-1)
                z = torch.where(take, z - step.squeeze(-1), z + relax * fz)
                fz = torch.where(take, f2[:n], f2[n:])
                jz = torch.where(take.unsqueeze(-1), j2[:n], j2[n:])
                size = fz.abs().amax(dim=-1)
            residual = fz.norm(dim=-1)
            converged = size < torch.clamp(tol_t * 10, min=1e-4)
            if not implicit:
                return FixedPointResult(z, residual, converged, it, needed)
            jac = jz
        f_attached = self.forward(z, media, drive)
        z_star = z - torch.linalg.solve(jac, f_attached.unsqueeze(-1)).squeeze(-1)
        return FixedPointResult(z_star, residual, converged, it, needed)

    def stiffness(self) -> float:
        r"""Bound on the field's stiffness: :math:`\max\gamma + \mathrm{Lip}(g_\theta)`.

        Every eigenvalue of :math:`\partial f / \partial z` is at most this in modulus (the linear part contributes
        :math:`\gamma`, the nonlinear part its Lipschitz constant, :math:`|\lambda_{\text{lip}} \min\gamma
        \tanh(\text{gate})|`, since its layers have spectral norm at most 1).

        Returns
        -------
        The bound, a float.
        """
        with torch.no_grad():
            rate = float(self.gamma.max())
            if self.n_hidden > 0:
                rate += float(self._g_scale().abs())
        return rate
