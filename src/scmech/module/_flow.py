r"""Integration of ordered protocols (perturbation, medium switch, read-out time) through a latent vector field.

A field subclasses :class:`ProtocolFlow` and defines ``forward(z, media, drive, ramp)`` (the value of
:math:`f_\theta`) and ``stiffness()`` (a bound on the moduli of its Jacobian's eigenvalues); the flow of a protocol,
its RK4 step count and the onset ramp of perturbations are shared. Written here rather than taken from an ODE
library: the protocol is cut at its events (medium switch, perturbation) into segments whose step counts follow the
field's stiffness, every row of a minibatch is integrated in one batched pass, and gradients run through the steps.

This module knows no AnnData: tensors in, tensors out.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ._targets import ActiveTargets, active_targets

__all__ = ["ProtocolFlow"]


class ProtocolFlow(nn.Module):
    """Base of the latent vector fields: the flow of an ordered protocol and the onset of perturbations."""

    def _init_onset(self, onset_tau: float, learn_onset: bool) -> None:
        """Create the onset time constant (``log_tau``; 0.5 when ``onset_tau`` is 0 and it is learned)."""
        tau0 = onset_tau if onset_tau > 0 else 0.5
        self.log_tau = nn.Parameter(torch.tensor(math.log(tau0)), requires_grad=learn_onset)
        self.onset = bool(onset_tau > 0 or learn_onset)

    @property
    def tau(self) -> torch.Tensor:
        """Onset time constant."""
        return self.log_tau.exp()

    def stiffness(self) -> float:
        """Bound on the moduli of the eigenvalues of the field's Jacobian (rate per model time unit)."""
        raise NotImplementedError

    def target_drive(
        self,
        perturbation: torch.Tensor | ActiveTargets,
        efficacy: torch.Tensor | None = None,
        operators: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ActiveTargets]:
        r"""Input of each row's targets, :math:`\sum_k \eta\, v_k` (the rows of ``operators``), and the targets.

        Parameters
        ----------
        perturbation
            Multi-hot rows (n x targets), or their non-zero entries (``ActiveTargets``; the cost of a training
            step then does not grow with the number of targets).
        efficacy
            Efficacy per row (n,) or (n, 1); 1 when ``None``.
        operators
            Rows to use instead of the field's ``operators`` (e.g. with rows for unseen targets).

        Returns
        -------
        The input of each row (n x latent) and the rows' active targets (:class:`ActiveTargets`).
        """
        active = perturbation if isinstance(perturbation, ActiveTargets) else active_targets(perturbation)
        ops = self.operators if operators is None else operators
        u = active.weighted_sum(ops.to(active.value.dtype))
        if efficacy is not None:
            u = u * efficacy.reshape(-1, 1)
        return u, active

    def integrate_protocol(
        self,
        z0: torch.Tensor,
        drive: torch.Tensor,
        media: torch.Tensor,
        t_read: torch.Tensor,
        media_time: torch.Tensor,
        *,
        baseline_media: int = 0,
        n_steps: int = 8,
    ) -> torch.Tensor:
        r"""Integrate an ordered protocol with fixed-step RK4 and return the states at read-out.

        Each row starts from ``z0`` in the baseline medium at time :math:`t_0 = \min(0, s)`; the perturbation
        is applied at time 0 (with the onset ramp), the medium switches to ``media`` at ``media_time``
        :math:`s` (NaN: the row is in ``media`` throughout), and the state is read at ``t_read``. The interval
        is cut at the events into three segments of ``n_steps`` RK4 steps each, so operators apply in the
        order of the protocol (they do not commute).

        Parameters
        ----------
        z0
            Start states (n x latent).
        drive
            Perturbation input per row (n x latent).
        media
            Medium at read-out per row (n,).
        t_read
            Read-out time since perturbation (n,).
        media_time
            Time of the switch into ``media`` (n,), NaN for no switch.
        baseline_media
            Index of the baseline medium.
        n_steps
            Fewest RK4 steps per segment; more are taken where the field is stiff over the segment
            (:meth:`stable_steps`), so that the integration stays stable and accurate in any time unit.

        Returns
        -------
        The latent state of each row at its read-out time (n x latent).
        """
        no_switch = torch.isnan(media_time)
        s = torch.where(no_switch, torch.zeros_like(media_time), media_time)
        t_read = torch.clamp(t_read, min=0.0)
        t0 = torch.minimum(torch.zeros_like(s), s)
        t0 = torch.minimum(t0, t_read)
        e_a = torch.clamp(torch.minimum(torch.zeros_like(s), s), min=t0)
        e_b = torch.clamp(torch.maximum(torch.zeros_like(s), s), max=t_read)
        e_b = torch.maximum(e_b, e_a)
        bounds = [t0, e_a, e_b, t_read]
        z = z0
        base = torch.full_like(media, baseline_media)
        for k in range(3):
            start, end = bounds[k], torch.maximum(bounds[k + 1], bounds[k])
            length = float((end - start).max())
            if length <= 0:
                continue
            steps = self.stable_steps(length, n_steps)
            mid = 0.5 * (start + end)
            in_media = no_switch | (mid >= s)
            med = torch.where(in_media, media, base)
            pert_on = (mid >= 0).to(z.dtype).unsqueeze(-1)
            dt = ((end - start) / steps).unsqueeze(-1)
            t = start.unsqueeze(-1)
            for _ in range(steps):
                z = self._rk4_step(z, t, dt, med, drive, pert_on)
                t = t + dt
        return z

    def stable_steps(self, length: float, n_steps: int, max_step: float = 1.0, cap: int = 100_000) -> int:
        r"""RK4 steps for a segment of ``length``: at least ``n_steps``, and :math:`\rho\,\Delta t \le` ``max_step``.

        Fixed-step RK4 is stable on a linear mode of rate :math:`\rho` only while :math:`\rho\,\Delta t < 2.785`
        and accurate to a few digits at :math:`\rho\,\Delta t \le 1`. The step count follows the stiffness bound
        :meth:`stiffness` over the longest segment of the batch, so a time course in hours integrates as one in
        days does (with 24 times the steps when its rates are per hour).

        Parameters
        ----------
        length
            Longest segment of the batch (time units of the model).
        n_steps
            Fewest steps.
        max_step
            Largest :math:`\rho\,\Delta t`.
        cap
            Most steps; a segment that would need more raises a clear error.

        Returns
        -------
        The number of steps.
        """
        need = int(np.ceil(self.stiffness() * length / max_step))
        if need > cap:
            msg = (
                f"Integrating a protocol segment of length {length:g} would need {need} RK4 steps (the field's rates "
                f"reach {self.stiffness():.3g} per time unit). In the dynamic regime, check the time units of the "
                "data or pass shorter read-out times; in the steady-state regime the segment is the read-out horizon "
                f"({length:g}): pass a shorter horizon. Rates this high in a field that is learned (not fixed by the "
                "data) mean training diverged: lower the learning rate (plan_kwargs={'lr': 1e-4})."
            )
            raise FloatingPointError(msg)
        return max(int(n_steps), need)

    def _ramp(self, t: torch.Tensor, pert_on: torch.Tensor) -> torch.Tensor:
        if not self.onset:
            return pert_on
        return pert_on * (1 - torch.exp(-torch.clamp(t, min=0.0) / self.tau))

    def _rk4_step(self, z, t, dt, media, drive, pert_on):
        k1 = self.forward(z, media, drive, self._ramp(t, pert_on))
        k2 = self.forward(z + 0.5 * dt * k1, media, drive, self._ramp(t + 0.5 * dt, pert_on))
        k3 = self.forward(z + 0.5 * dt * k2, media, drive, self._ramp(t + 0.5 * dt, pert_on))
        k4 = self.forward(z + dt * k3, media, drive, self._ramp(t + dt, pert_on))
        return z + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
