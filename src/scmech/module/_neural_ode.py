r"""NeuralODEVAE: the paper's end-to-end neural ODE in the package's VAE, with or without the steady-state term.

The same measurement operator, encoder, prior and training as :class:`~scmech.module.SemiMechVAE`; only the
dynamics differ. The field is one MLP :math:`f_\theta(z, \sum_k \eta_k e_k, e_m)`
(:class:`~scmech.module._neural_field.NeuralField`), every protocol is read out by the flow from the baseline
state (controls are the starting state), and the decoder has no per-gene response of its own to perturbations (no
shared offset, no own-gene effect): a perturbation acts only through the dynamics. The loss is

.. math::

    \mathcal L = -\mathrm{ELBO} + \lambda_{ss}\,\|f_\theta(\bar z_\varnothing; m_0, \varnothing)\|^2
        \Big[+ \lambda_{ss}\,\tfrac{1}{|P|}\textstyle\sum_{p \in P} \|f_\theta(\bar z_p; m_p, p)\|^2\Big]
        + \lambda_{mmd}\,\mathrm{MMD},

with the bracket (``steady_state_perturbed``) for perturbed populations assumed settled (non-differentiating
cells read out long after the perturbation); :math:`\lambda_{ss} = 0` is the vanilla model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scmech._numbers import check_positive_int

from . import _loss_terms as loss_terms
from ._checks import check_module_arguments
from ._neural_field import NeuralField
from ._semimechvae import SemiMechVAE

if TYPE_CHECKING:
    import torch
    from scvi.module.base import LossOutput

__all__ = ["NeuralODEVAE"]

#: settings of SemiMechVAE's contracting field and steady-state solve, which the flow-read MLP field has no use for
NOT_APPLICABLE = {
    "lipschitz": "the contraction bound of SemiMechVI's field",
    "operator_scale": "the learning-rate multiplier of SemiMechVI's operators",
    "fixed_point_tol": "the tolerance of SemiMechVI's steady-state solve",
    "fixed_point_max_iter": "the iteration cap of SemiMechVI's steady-state solve",
}


class NeuralODEVAE(SemiMechVAE):
    r"""End-to-end neural ODE VAE: an MLP field read out by flows from the baseline state.

    Parameters
    ----------
    n_input
        Number of genes.
    steady_state_perturbed
        Also ask perturbed populations to be settled: :math:`\|f_\theta(\bar z_p; m_p, p)\|^2` at each protocol
        group's mean latent state, averaged over the groups of a minibatch (steady-state regime only).
    field_hidden
        Width of the field's MLP.
    field_layers
        Hidden layers of the field's MLP.
    shared_offset
        Learn a per-gene offset shared by perturbed cells in the decoder (off: the paper's model has no response
        outside the dynamics).
    own_target
        Learn a direct effect of each knock-down on its own mRNA in the decoder (off, as ``shared_offset``).
    **kwargs
        Passed to :class:`~scmech.module.SemiMechVAE` (``readout`` must be ``"flow"`` if given).

    Raises
    ------
    TypeError
        For a ``steady_state_perturbed`` that is not ``True`` or ``False``; for ``lipschitz``, ``operator_scale``,
        ``fixed_point_tol`` or ``fixed_point_max_iter``, settings of SemiMechVI's contracting field and steady-state
        solve that would have no effect on the neural field; for a keyword argument no module takes.
    ValueError
        For a ``readout`` other than ``"flow"``, ``steady_state_perturbed=True`` in the dynamic regime, or a
        ``field_hidden`` or ``field_layers`` below 1.
    """

    def __init__(
        self,
        n_input: int,
        *,
        steady_state_perturbed: bool = False,
        field_hidden: int = 64,
        field_layers: int = 2,
        shared_offset: bool = False,
        own_target: bool = False,
        **kwargs: Any,
    ) -> None:
        readout = kwargs.pop("readout", "flow")
        if readout != "flow":
            msg = f"readout={readout!r}: NeuralODE is read out by flows only (its field has no guaranteed fixed point)."
            raise ValueError(msg)
        _check_settings(kwargs)
        # a string such as "no" is true: it switched the perturbed populations' term on without a word
        check_module_arguments(steady_state_perturbed=steady_state_perturbed)
        regime = kwargs.get("regime", "steady_state")
        if steady_state_perturbed and regime == "dynamic":
            msg = (
                "steady_state_perturbed=True asks perturbed populations to be settled, which a dynamic time course "
                "contradicts (its read-outs are snapshots of a trajectory). Use it in the steady-state regime only: "
                "pass regime='steady_state' (regime='auto' picks 'dynamic' when a time key is registered), or "
                "steady_state_perturbed=False."
            )
            raise ValueError(msg)
        for name, value in (("field_hidden", field_hidden), ("field_layers", field_layers)):
            # the field's own check named n_hidden and n_layers, the encoder's arguments
            check_positive_int(value, name, hint=" (the MLP field needs a hidden layer of one unit)")
        super().__init__(
            n_input,
            readout="flow",
            field_hidden=field_hidden,
            field_layers=field_layers,
            shared_offset=shared_offset,
            own_target=own_target,
            **kwargs,
        )
        self.steady_state_perturbed = bool(steady_state_perturbed)

    def _build_field(self, n_latent: int, n_targets: int, **kwargs: Any) -> NeuralField:
        """Build the MLP field (SemiMechVAE's defaults of ``lipschitz`` and ``operator_scale`` are dropped)."""
        kwargs.pop("lipschitz", None)
        kwargs.pop("operator_scale", None)
        return NeuralField(n_latent, n_targets, **kwargs)

    @property
    def extra_metric_names(self) -> list[str]:
        """Extra metrics of :meth:`loss`: those of ``SemiMechVAE`` and, with ``steady_state_perturbed``, its term."""
        return [*super().extra_metric_names, *(["ss_residual_perturbed"] if self.steady_state_perturbed else [])]

    def loss(
        self,
        tensors: dict,
        inference_outputs: dict,
        generative_outputs: dict,
        kl_weight: float = 1.0,
        ss_weight: float | None = None,
        mmd_weight: float | None = None,
    ) -> LossOutput:
        """:meth:`SemiMechVAE.loss`, plus the steady-state term on perturbed populations when it is asked for.

        Parameters
        ----------
        tensors, inference_outputs, generative_outputs, kl_weight, ss_weight, mmd_weight
            As in :meth:`SemiMechVAE.loss <scmech.module.SemiMechVAE.loss>`.

        Returns
        -------
        The ``LossOutput`` of :meth:`SemiMechVAE.loss <scmech.module.SemiMechVAE.loss>`; with
        ``steady_state_perturbed``, its loss includes the perturbed populations' term (weighted like the
        steady-state term) and ``extra_metrics`` has ``ss_residual_perturbed``.
        """
        out = super().loss(tensors, inference_outputs, generative_outputs, kl_weight, ss_weight, mmd_weight)
        if not self.steady_state_perturbed:
            return out
        ss_w = self.steady_state_weight if ss_weight is None else ss_weight
        term = self._perturbed_steady_state(tensors, inference_outputs["qz"].loc.detach())
        if ss_w > 0:
            out.loss = out.loss + ss_w * term
        out.extra_metrics["ss_residual_perturbed"] = term.detach().sqrt()
        return out

    def _perturbed_steady_state(self, tensors: dict, loc: torch.Tensor) -> torch.Tensor:
        r"""Mean over the minibatch's perturbed protocol groups of :math:`\|f_\theta(\bar z_p; m_p, p)\|^2`.

        Parameters
        ----------
        tensors
            The minibatch's registered tensors.
        loc
            Latent means of its cells (detached).

        Returns
        -------
        The term (:func:`~scmech.module._loss_terms.perturbed_steady_state_term`).
        """
        proto = self._protocol(tensors)
        active = self.active(proto["perturbation"])
        same = loss_terms.protocol_groups(active, proto["media"], proto["time"], proto["media_time"])
        return loss_terms.perturbed_steady_state_term(self.field, active, proto["media"], proto["efficacy"], loc, same)


def _check_settings(kwargs: dict[str, Any]) -> None:
    """Refuse the settings of SemiMechVI's field and solve, which the neural field would ignore.

    Parameters
    ----------
    kwargs
        The keyword arguments passed on to :class:`~scmech.module.SemiMechVAE`.

    Raises
    ------
    TypeError
        Naming the first such setting and what to do instead.
    """
    for name, meaning in NOT_APPLICABLE.items():
        if name in kwargs:
            # they were dropped without a word, so a user (or the hint of a diverging run) changed nothing
            msg = (
                f"{name}={kwargs[name]!r} does not apply to NeuralODE: it is {meaning}, and the neural field is an "
                "unconstrained MLP read out by flows. Drop it, or use SemiMechVI."
            )
            raise TypeError(msg)
