r"""The protocol of each cell and the latent read-out :math:`\mu_\pi` of the dynamics under it.

:class:`ProtocolReadoutMixin` gives :class:`~scmech.module.SemiMechVAE` its protocol side: the protocol of each
cell of a registered minibatch (targets, efficacy, medium, read-out time and medium switch), the states the
dynamics reach under each protocol (the fixed point, or the flow of the ordered protocol) and the time unit the
dynamics run in. The steady-state solve itself, with its training budget of iterations, stays with the module.
"""

from __future__ import annotations

import numpy as np
import torch
from scvi import REGISTRY_KEYS

from scmech._constants import SCMECH_REGISTRY_KEYS

from ._groups import _distinct_rows
from ._targets import ActiveTargets, active_targets, from_entries

__all__ = ["ProtocolReadoutMixin"]

K = SCMECH_REGISTRY_KEYS


class ProtocolReadoutMixin:
    """The protocol of each cell, the read-out of the dynamics under it, and the time unit of the dynamics.

    Mixed into :class:`~scmech.module.SemiMechVAE`, whose attributes it reads: ``field``, ``z_base``,
    ``time_unit``, ``n_targets``, ``use_efficacy``, ``regime``, ``readout``, ``horizon``, ``ode_steps``,
    ``deduplicate`` and ``training``, and its steady-state solve ``_solve``.
    """

    def _protocol(self, tensors: dict) -> dict:
        """Return the protocol of each cell of a minibatch, with defaults for the fields that were not registered.

        Parameters
        ----------
        tensors
            A minibatch of registered tensors.

        Returns
        -------
        ``{"perturbation", "efficacy", "media", "time", "media_time"}``: the targets of each cell (``ActiveTargets``),
        the efficacy (``None`` when not registered or not used), the medium index (0), the read-out time (0) and the
        time of the medium switch (NaN: none).
        """
        x = tensors[REGISTRY_KEYS.X_KEY]
        n = x.shape[0]
        dev = x.device
        entries = tensors.get(K.PERTURBATION_KEY)
        entries = torch.full((n, 1), -1.0, device=dev) if entries is None else entries
        # the registered targets of each cell (a compact multi-hot row, see PerturbationField)
        pert = from_entries(entries, self.n_targets)
        eff = tensors.get(K.EFFICACY_KEY)
        media = tensors.get(K.MEDIA_KEY)
        time = tensors.get(K.TIME_KEY)
        mtime = tensors.get(K.MEDIA_TIME_KEY)
        return {
            "perturbation": pert,
            "efficacy": None if (eff is None or not self.use_efficacy) else eff.reshape(-1).float(),
            "media": torch.zeros(n, dtype=torch.long, device=dev) if media is None else media.reshape(-1).long(),
            "time": torch.zeros(n, device=dev) if time is None else time.reshape(-1).float(),
            "media_time": torch.full((n,), float("nan"), device=dev) if mtime is None else mtime.reshape(-1).float(),
        }

    def active(self, perturbation: torch.Tensor | ActiveTargets) -> ActiveTargets:
        """Return the targets of each row, from multi-hot rows (n x targets) or as they are.

        Registered minibatches already carry them (``_protocol``); multi-hot rows come from predictions.

        Parameters
        ----------
        perturbation
            Multi-hot rows (n x targets), or their non-zero entries (``ActiveTargets``), which are moved to the
            module's device when they are elsewhere.

        Returns
        -------
        The non-zero entries of each row.
        """
        if isinstance(perturbation, ActiveTargets):
            dev = self.z_base.device
            return perturbation if perturbation.value.device == dev else perturbation.to(dev)
        return active_targets(perturbation.float())

    def readout_states(
        self,
        perturbation: torch.Tensor | ActiveTargets,
        media: torch.Tensor,
        efficacy: torch.Tensor | None = None,
        time: torch.Tensor | None = None,
        media_time: torch.Tensor | None = None,
        operators: torch.Tensor | None = None,
        implicit: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Latent read-out :math:`\mu_\pi` of each row's protocol.

        On the CPU, and outside training, rows that share a protocol are solved once. A training step on a GPU
        solves every row instead (``deduplicate`` overrides the choice): finding the distinct protocols would wait
        for the device, and the solves of a minibatch's rows run in parallel there. Either way every row gets the
        same value.

        Parameters
        ----------
        perturbation
            The targets of each row: multi-hot rows (n x targets) or their non-zero entries (``ActiveTargets``).
        media
            Medium index per row (n,).
        efficacy
            Efficacy per row; 1 when ``None``.
        time
            Read-out time per row, in the data's time units (the dynamic regime reads the protocol there); 0 when
            ``None``.
        media_time
            Time of the switch into the row's medium, in the data's time units (NaN: never switched); no switch when
            ``None``.
        operators
            Target operators to use instead of the learned ones (e.g. with rows for unseen targets).
        implicit
            Attach implicit gradients to fixed points (else detached states); used by the ``"fixed_point"`` read-out
            only.

        Returns
        -------
        The states (n x latent) and the steady-state residual :math:`\|f\|` of each row's solve (zeros for
        flows).
        """
        active = self.active(perturbation)
        n = active.value.shape[0]
        dev = active.value.device
        eff = torch.ones(n, device=dev) if efficacy is None else efficacy.reshape(-1).float()
        # times arrive in the data's units; the dynamics run in model units (see ``set_time_unit``)
        t = torch.zeros(n, device=dev) if time is None else time.reshape(-1).float() / self.time_unit
        s = torch.full((n,), float("nan"), device=dev) if media_time is None else media_time.reshape(-1).float()
        s = s / self.time_unit
        rows = torch.cat(
            [
                active.key(),
                media.reshape(-1, 1).float(),
                eff.reshape(-1, 1),
                t.reshape(-1, 1),
                torch.nan_to_num(s, nan=-1e9).reshape(-1, 1),
            ],
            dim=1,
        )
        dedup = self.deduplicate if self.deduplicate is not None else dev.type != "cuda"
        if self.training and not dedup:
            uniq, inverse = rows, None
        else:
            uniq, inverse = _distinct_rows(rows)
        k = active.index.shape[1]
        act_u = ActiveTargets(uniq[:, :k].long(), uniq[:, k : 2 * k], active.n_targets)
        m_u = uniq[:, 2 * k].long()
        e_u = uniq[:, 2 * k + 1]
        t_u = uniq[:, 2 * k + 2]
        s_u = uniq[:, 2 * k + 3]
        s_u = torch.where(s_u < -1e8, torch.full_like(s_u, float("nan")), s_u)
        drive = self.field.drive(act_u, e_u, operators=operators)
        z0 = self.z_base.expand(len(uniq), -1)
        residual = torch.zeros(len(uniq), device=dev)
        if self.regime == "dynamic":
            mu = self.field.integrate_protocol(z0, drive, m_u, t_u, s_u, n_steps=self.ode_steps)
        elif self.readout == "fixed_point":
            mu, residual = self._solve(z0, m_u, drive, implicit)
        else:
            horizon = torch.full((len(uniq),), self.horizon, device=dev)
            nan = torch.full((len(uniq),), float("nan"), device=dev)
            mu = self.field.integrate_protocol(z0, drive, m_u, horizon, nan, n_steps=self.ode_steps)
        if inverse is None:
            return mu, residual
        return mu[inverse], residual[inverse]

    @torch.no_grad()
    def set_time_unit(self, unit: float) -> None:
        """Measure time in units of ``unit`` data time units; the onset time constant keeps its data value.

        The field's rates start at 1 per model time unit. With the unit set to the longest registered read-out time
        over ``horizon``, a time course spans the same number of relaxation times whatever the unit it was recorded
        in (hours or days), and learns and integrates the same way.

        Parameters
        ----------
        unit
            Data time units per model time unit (positive and finite).
        """
        if not np.isfinite(unit) or unit <= 0:
            msg = f"The time unit must be a positive number, got {unit}."
            raise ValueError(msg)
        old = float(self.time_unit)
        self.time_unit.fill_(float(unit))
        self.field.log_tau.sub_(float(np.log(unit / old)))

    def offset_ramp(self, time: torch.Tensor | None) -> torch.Tensor | None:
        r"""Fraction of the measurement offsets (shared offset, own-gene knock-down) present at each read-out time.

        In the dynamic regime a perturbation acts from its time 0 on: its offsets are absent at time 0 and, with an
        onset, build up as :math:`1 - e^{-t/\tau}`, the ramp of its drive on the latent dynamics, so that a
        perturbed cell read out at the perturbation equals a control and early read-outs see part of the effect.

        Parameters
        ----------
        time
            Read-out time of each row since the perturbation, in the data's time units, or ``None``.

        Returns
        -------
        The fraction per row (n,), or ``None`` (all of the offsets: the steady-state regime, or no times).
        """
        if self.regime != "dynamic" or time is None:
            return None
        t = time.reshape(-1).float() / self.time_unit
        on = (t > 0).to(t.dtype)
        if not self.field.onset:
            return on
        return on * (1 - torch.exp(-torch.clamp(t, min=0.0) / self.field.tau))

    @property
    def onset_tau_data(self) -> float:
        """The onset time constant in the data's time units."""
        return float(self.field.tau.detach()) * float(self.time_unit)
