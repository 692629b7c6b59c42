r"""SemiMechVAE: a VAE whose prior is the read-out of latent dynamics under the cell's protocol.

Generative model for a cell :math:`c` with protocol :math:`\pi_c` (perturbation, efficacy, medium, times):

.. math::

    z_c \sim \mathcal N\big(\mu_{\pi_c}, I\big), \qquad
    x_c \sim \mathcal O_{b(c)}(z_c),

where :math:`\mu_\pi` is where the dynamics take the baseline state :math:`z_{\text{base}}` under the
protocol: the fixed point of :math:`f_\theta(\cdot; m, p)` in the steady-state regime, or the RK4 flow of the
ordered protocol in the dynamic regime. The deviation :math:`z_c - \mu_{\pi_c}` is the cell's basal
(protocol-free) state; cell-to-cell heterogeneity is carried along it, so counterfactuals are
:math:`z_c - \mu_{\pi_c} + \mu_{\pi'}`.

Loss (per minibatch, means over cells):

.. math::

    \mathcal L = -\mathbb E_q \log p(x\mid z) + \beta\,\mathrm{KL}\big(q(z\mid x)\,\|\,\mathcal N(\mu_\pi, I)\big)
        + \lambda_{ss}\,\big\|f_\theta(\bar z_{\varnothing}; m_0, \varnothing)\big\|^2
        + \lambda_{mmd}\,\mathrm{MMD}_u^2(\text{basal} \mid \text{group}, \text{control}),

with :math:`\bar z_\varnothing` the mean latent of baseline control cells (the steady-state term: controls
are a fixed point) and an unbiased MMD between each protocol group's basal states and the controls'
(the basal state must not encode the perturbation). The KL warm-up weight :math:`\beta` applies to the
encoder only: the dynamics always receive the full prior gradient.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from scvi.nn import Encoder
from torch.distributions import Normal

from . import _loss_terms as loss_terms
from ._checks import check_module_arguments
from ._dynamics import VectorField
from ._measurement import MeasurementDecoder
from ._posterior import PosteriorMixin
from ._protocol_readout import ProtocolReadoutMixin

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._targets import ActiveTargets

__all__ = ["SemiMechVAE"]

#: training steps between two reads of the iterations the steady-state solves needed (each read waits for the device)
SOLVER_REVIEW_STEPS = 25


#: the extra metrics of :meth:`SemiMechVAE.loss` (the training plan logs them as ``<name>_<mode>``)
EXTRA_METRICS = ("ss_residual", "mmd", "basal_sd", "basal_leak", "fp_unconverged")


class SemiMechVAE(ProtocolReadoutMixin, PosteriorMixin, BaseModuleClass):
    r"""Semi-mechanistic VAE: measurement operator, latent dynamics and the steady-state loss.

    Parameters
    ----------
    n_input
        Number of genes.
    n_batch
        Number of batches.
    n_targets
        Number of registered perturbation targets.
    target_gene_index
        Gene position of each target (``-1`` if unmeasured), for the own-target effect.
    n_media
        Number of media (0 or 1: no media).
    n_latent
        Latent dimension.
    n_hidden
        Width of the encoder (and of an MLP decoder).
    n_layers
        Hidden layers of the encoder.
    n_layers_decoder
        Hidden layers of the decoder; 0 is a linear decoder (loadings).
    dropout_rate
        Encoder dropout.
    gene_likelihood
        ``"nb"``, ``"zinb"`` or ``"normal"`` (log-normalised data).
    dispersion
        ``"gene"`` or ``"gene-batch"``.
    regime
        ``"steady_state"`` (read-out at fixed points) or ``"dynamic"`` (read-out of the ordered protocol).
    readout
        ``"fixed_point"`` (implicit steady state) or ``"flow"`` (finite-horizon RK4 from the baseline state).
    steady_state_weight
        Weight :math:`\lambda_{ss}` of the steady-state term; 0 is the vanilla model.
    steady_state_on
        ``"mean"``: the term is evaluated at the mean baseline control state; ``"cells"``: at every
        baseline control cell (makes the whole control cloud stationary, which erases heterogeneity the
        field could otherwise explain).
    mmd_weight
        Weight of the unbiased MMD between basal states of protocol groups and controls.
    field_hidden
        Width of the nonlinear part of the field (0: linear dynamics).
    field_layers
        Hidden layers of the nonlinear part of the field.
    lipschitz
        Contraction bound of the field's nonlinear part.
    operator_scale
        Learning-rate multiplier of the operators.
    horizon
        Integration time of the ``"flow"`` read-out in the steady-state regime; in the dynamic regime, the
        longest registered read-out spans this many model time units (:meth:`set_time_unit`).
    ode_steps
        Fewest RK4 steps per protocol segment (more where the field is stiff over it).
    onset_tau
        Onset time constant of perturbations (0: instantaneous).
    learn_onset
        Fit the onset time constant.
    use_efficacy
        Scale operators by the registered per-cell efficacy.
    n_cats_per_cov
        Categories of each extra categorical covariate.
    n_continuous_cov
        Number of continuous covariates.
    shared_offset
        Learn the per-gene offset shared by perturbed cells.
    own_target
        Learn the direct effect of each knock-down on its own mRNA.
    log_variational
        Encode ``log1p`` of the counts.
    fixed_point_tol
        Tolerance of the steady-state solve.
    fixed_point_max_iter
        Iteration cap of the steady-state solve.
    """

    def __init__(
        self,
        n_input: int,
        n_batch: int = 0,
        n_targets: int = 0,
        target_gene_index: Sequence[int] | None = None,
        n_media: int = 1,
        n_latent: int = 10,
        n_hidden: int = 128,
        n_layers: int = 1,
        n_layers_decoder: int = 0,
        dropout_rate: float = 0.1,
        gene_likelihood: Literal["nb", "zinb", "normal"] = "nb",
        dispersion: Literal["gene", "gene-batch"] = "gene",
        regime: Literal["steady_state", "dynamic"] = "steady_state",
        readout: Literal["fixed_point", "flow"] = "fixed_point",
        steady_state_weight: float = 1.0,
        steady_state_on: Literal["mean", "cells"] = "mean",
        mmd_weight: float = 1.0,
        field_hidden: int = 32,
        field_layers: int = 1,
        lipschitz: float = 0.9,
        operator_scale: float = 1.0,
        horizon: float = 4.0,
        ode_steps: int = 8,
        onset_tau: float = 0.0,
        learn_onset: bool = False,
        use_efficacy: bool = True,
        n_cats_per_cov: Sequence[int] | None = None,
        n_continuous_cov: int = 0,
        shared_offset: bool = True,
        own_target: bool = True,
        log_variational: bool = True,
        fixed_point_tol: float = 1e-5,
        fixed_point_max_iter: int = 50,
    ) -> None:
        # the settings only (the checker ignores the sizes of the data)
        check_module_arguments(**{k: v for k, v in locals().items() if k not in ("self", "__class__")})
        super().__init__()
        self.n_input = n_input
        self.n_batch = n_batch
        self.n_targets = n_targets
        self.n_media = max(n_media, 1)
        self.n_latent = n_latent
        self.gene_likelihood = gene_likelihood
        self.regime = regime
        self.readout = readout
        self.steady_state_weight = steady_state_weight
        self.steady_state_on = steady_state_on
        self.mmd_weight = mmd_weight
        self.horizon = horizon
        self.ode_steps = ode_steps
        self.use_efficacy = use_efficacy
        self.log_variational = log_variational and gene_likelihood != "normal"
        self.fixed_point_tol = fixed_point_tol
        self.fixed_point_max_iter = fixed_point_max_iter
        tgi = torch.as_tensor(list(target_gene_index) if target_gene_index is not None else [-1] * n_targets)
        self.encoder = self._build_encoder(n_input, n_latent, n_layers, n_hidden, dropout_rate)
        self.decoder = MeasurementDecoder(
            n_latent,
            n_input,
            n_batch,
            tgi,
            likelihood=gene_likelihood,
            dispersion=dispersion,
            n_layers=n_layers_decoder,
            n_hidden=n_hidden,
            n_cats_per_cov=n_cats_per_cov,
            n_continuous_cov=n_continuous_cov,
            shared_offset=shared_offset,
            own_target=own_target,
        )
        self.field = self._build_field(
            n_latent,
            n_targets,
            n_media=self.n_media,
            n_hidden=field_hidden,
            n_layers=field_layers,
            lipschitz=lipschitz,
            operator_scale=operator_scale,
            onset_tau=onset_tau,
            learn_onset=learn_onset,
        )
        self.z_base = torch.nn.Parameter(torch.zeros(n_latent))
        self._init_state(n_latent, fixed_point_max_iter)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _build_encoder(n_input: int, n_latent: int, n_layers: int, n_hidden: int, dropout_rate: float) -> Encoder:
        r"""Build the encoder :math:`q(z \mid x)` (scvi-tools' ``Encoder``, returning a Normal).

        Parameters
        ----------
        n_input
            Number of genes.
        n_latent
            Latent dimension.
        n_layers
            Hidden layers.
        n_hidden
            Width of the hidden layers.
        dropout_rate
            Dropout.

        Returns
        -------
        The encoder.
        """
        return Encoder(
            n_input,
            n_latent,
            n_layers=n_layers,
            n_hidden=n_hidden,
            dropout_rate=dropout_rate,
            distribution="normal",
            var_eps=1e-4,
            return_dist=True,
        )

    def _init_state(self, n_latent: int, fixed_point_max_iter: int) -> None:
        """Register the buffers (control reference, library scale, time unit) and the steady-state solver's state.

        Parameters
        ----------
        n_latent
            Latent dimension.
        fixed_point_max_iter
            Iteration cap of the steady-state solve (caps the first training budget).
        """
        # running mean of the baseline control state (latent); used when a minibatch holds no controls
        self.register_buffer("control_reference", torch.zeros(n_latent))
        self.register_buffer("control_reference_set", torch.zeros((), dtype=torch.bool))
        # log of the registered genes' share of a registered size factor (e.g. a panel within a whole library)
        self.register_buffer("log_library_scale", torch.zeros(()))
        # data time units per model time unit (set from the registered read-out times when training starts)
        self.register_buffer("time_unit", torch.ones(()))
        # share of unconverged steady-state solves in the last read-out, kept on the device (no host sync per step)
        self._last_unconverged: torch.Tensor | float = 0.0
        # a training step runs a fixed number of Newton iterations (no host sync); the budget follows what the solves
        # of the last SOLVER_REVIEW_STEPS steps needed, read from the device once per review
        self._fp_budget = min(4, fixed_point_max_iter)
        self._fp_needed: torch.Tensor | None = None
        self._fp_steps = 0
        # solve the distinct protocols of a training minibatch once (None: on the CPU, where finding them costs no
        # device sync; a GPU solves every row in parallel instead)
        self.deduplicate: bool | None = None
        # evaluate the negative binomial's log-gamma terms on the non-zero counts only (None: on the CPU, where
        # finding them costs no device sync; see scmech.module._likelihood)
        self.sparse_counts: bool | None = None

    def _build_field(self, n_latent: int, n_targets: int, **kwargs) -> VectorField:
        """Build the latent vector field (a subclass may build another :class:`~scmech.module._flow.ProtocolFlow`)."""
        return VectorField(n_latent, n_targets, **kwargs)

    def dynamics_parameter_names(self) -> list[str]:
        """Return the names of the parameters of the dynamics and of the own-target effects (the fast group).

        Returns
        -------
        The parameter names, as ``named_parameters()`` gives them.
        """
        names = [f"field.{n}" for n, _ in self.field.named_parameters()] + ["z_base"]
        names += ["decoder.own_effect"] if self.decoder.own_effect is not None else []
        return names

    def _solve(
        self, z0: torch.Tensor, media: torch.Tensor, drive: torch.Tensor, implicit: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Steady states; in training, a fixed number of iterations that follows what earlier solves needed.

        Outside training the solve stops when it converges (it checks every few iterations). A training step runs
        exactly the current budget and records, on the device, how many iterations its rows needed; every
        :data:`SOLVER_REVIEW_STEPS` steps the budget is set to the most any step needed plus one (doubled, up to
        ``fixed_point_max_iter``, when a step ran out of it). The share of rows that did not converge is reported as
        ``fp_unconverged`` in the training history.
        """
        cap = self.fixed_point_max_iter
        if not self.training:
            res = self.field.fixed_point(z0, media, drive, tol=self.fixed_point_tol, max_iter=cap, implicit=implicit)
        else:
            budget = min(self._fp_budget, cap)
            res = self.field.fixed_point(
                z0, media, drive, tol=self.fixed_point_tol, max_iter=budget, implicit=implicit, check_every=None
            )
            needed = res.n_needed.detach()
            self._fp_needed = needed if self._fp_needed is None else torch.maximum(self._fp_needed, needed)
            self._fp_steps += 1
            if self._fp_steps >= SOLVER_REVIEW_STEPS:
                self.review_solver_budget()
        self._last_unconverged = (~res.converged).float().mean().detach()
        return res.z, res.residual

    def review_solver_budget(self) -> int:
        """Set the training budget of Newton iterations from what the solves since the last review needed.

        One read of a device value. Returns the new budget.

        Returns
        -------
        The new budget of Newton iterations per solve.
        """
        if self._fp_needed is not None:
            needed = int(self._fp_needed)
            cap = max(self.fixed_point_max_iter, 1)
            ran_out = needed >= min(self._fp_budget, cap)
            self._fp_budget = min(cap, 2 * self._fp_budget if ran_out else max(needed + 1, 2))
        self._fp_needed = None
        self._fp_steps = 0
        return self._fp_budget

    # ------------------------------------------------------------------ scvi-tools hooks
    def forward(self, *args, **kwargs):
        """Run scvi-tools' forward pass (inference, generative, loss), with torch's distribution argument checks off.

        The checks (``Distribution(validate_args=True)``, torch's default, also inside scvi-tools' encoder) test
        every parameter tensor and read the verdict back to the host: a device sync per distribution on a GPU. The
        values they test come from the network (finite by construction; a non-finite loss stops training with
        :class:`FloatingPointError`), so they are switched off for the duration of the call and restored after it.

        Parameters
        ----------
        *args, **kwargs
            Arguments of scvi-tools' ``BaseModuleClass.forward`` (``tensors``, the input and output keyword arguments
            of :meth:`inference`, :meth:`generative` and :meth:`loss`, ``compute_loss``).

        Returns
        -------
        What scvi-tools' ``forward`` returns: the inference and generative outputs, and the loss output with
        ``compute_loss=True``.
        """
        previous = torch.distributions.Distribution._validate_args
        torch.distributions.Distribution.set_default_validate_args(False)
        try:
            return super().forward(*args, **kwargs)
        finally:
            torch.distributions.Distribution.set_default_validate_args(previous)

    def _get_inference_input(self, tensors: dict) -> dict:
        return {
            "x": tensors[REGISTRY_KEYS.X_KEY],
            "batch_index": tensors.get(REGISTRY_KEYS.BATCH_KEY),
        }

    @auto_move_data
    def inference(self, x: torch.Tensor, batch_index: torch.Tensor | None = None, n_samples: int = 1) -> dict:
        """Encode cells into the latent state: returns ``qz`` (a Normal), ``z`` and the log library size.

        Parameters
        ----------
        x
            Expression of each cell (n x genes); its ``log1p`` is encoded with ``log_variational``.
        batch_index
            Batch of each cell (n x 1); not used, the encoder sees the expression only.
        n_samples
            Number of samples of ``z`` per cell drawn from ``qz`` (samples x n x latent when more than 1).

        Returns
        -------
        ``{"qz": ..., "z": ..., "library": ...}``; ``library`` is the log of each cell's total counts (at least 1).
        """
        x_ = torch.log1p(x) if self.log_variational else x
        qz, z = self.encoder(x_)
        if n_samples > 1:
            z = qz.sample((n_samples,))
        library = torch.log(x.sum(1, keepdim=True).clamp(min=1.0))
        return {"qz": qz, "z": z, "library": library}

    def _get_generative_input(self, tensors: dict, inference_outputs: dict) -> dict:
        size_factor = tensors.get(REGISTRY_KEYS.SIZE_FACTOR_KEY)
        if size_factor is None:
            library = inference_outputs["library"]
        else:
            library = torch.log(size_factor) + self.log_library_scale
        out = {
            "z": inference_outputs["z"],
            "library": library,
            "batch_index": tensors.get(REGISTRY_KEYS.BATCH_KEY),
            "cat_covs": tensors.get(REGISTRY_KEYS.CAT_COVS_KEY),
            "cont_covs": tensors.get(REGISTRY_KEYS.CONT_COVS_KEY),
        }
        out.update(self._protocol(tensors))
        return out

    @auto_move_data
    def generative(
        self,
        z: torch.Tensor,
        library: torch.Tensor,
        perturbation: torch.Tensor | ActiveTargets,
        media: torch.Tensor,
        efficacy: torch.Tensor | None = None,
        time: torch.Tensor | None = None,
        media_time: torch.Tensor | None = None,
        batch_index: torch.Tensor | None = None,
        cat_covs: torch.Tensor | None = None,
        cont_covs: torch.Tensor | None = None,
        transform_batch: torch.Tensor | None = None,
    ) -> dict:
        r"""Prior from the dynamics' read-out and the measurement distribution ``px``.

        Parameters
        ----------
        z
            Latent states (n x latent).
        library
            Log library size of each cell (n x 1).
        perturbation, media, efficacy, time, media_time
            The protocol of each cell, as in :meth:`readout_states`.
        batch_index
            Batch of each cell (n x 1), or ``None``.
        cat_covs
            Category codes of the extra categorical covariates (n x covariates), or ``None``.
        cont_covs
            Values of the continuous covariates (n x covariates), or ``None``.
        transform_batch
            Decode every cell as if it came from this batch (replaces ``batch_index``).

        Returns
        -------
        ``{"px": ..., "pz": ..., "mu": ..., "fp_residual": ...}``: the measurement distribution, the prior
        :math:`\mathcal N(\mu_\pi, I)`, its mean (the read-out) and the steady-state residual of each row.
        """
        if transform_batch is not None:
            batch_index = torch.ones_like(batch_index) * transform_batch
        active = self.active(perturbation)
        mu, residual = self.readout_states(active, media, efficacy, time, media_time)
        offset = self.decoder.perturbation_offset(active, efficacy, ramp=self.offset_ramp(time))
        logits = self.decoder.logits(z, batch_index, offset, cat_covs, cont_covs)
        px = self.decoder.distribution(z, logits, library, batch_index)
        pz = Normal(mu, torch.ones_like(mu), validate_args=False)
        return {"px": px, "pz": pz, "mu": mu, "fp_residual": residual}

    @property
    def extra_metric_names(self) -> list[str]:
        """Names of the extra metrics :meth:`loss` returns (logged as ``<name>_train`` and ``<name>_validation``)."""
        return list(EXTRA_METRICS)

    def loss(
        self,
        tensors: dict,
        inference_outputs: dict,
        generative_outputs: dict,
        kl_weight: float = 1.0,
        ss_weight: float | None = None,
        mmd_weight: float | None = None,
    ) -> LossOutput:
        """Negative ELBO plus the steady-state and MMD terms; extra terms in ``extra_metrics``.

        Parameters
        ----------
        tensors
            A minibatch of registered tensors.
        inference_outputs
            Output of :meth:`inference` on the minibatch.
        generative_outputs
            Output of :meth:`generative` on the minibatch.
        kl_weight
            Weight of the KL term (scvi-tools' warm-up); it acts on the encoder only, the dynamics get the full
            prior gradient.
        ss_weight
            Weight of the steady-state term; the module's ``steady_state_weight`` when ``None``.
        mmd_weight
            Weight of the MMD term; the module's ``mmd_weight`` when ``None``.

        Returns
        -------
        scvi-tools' ``LossOutput`` with the reconstruction loss, the KL divergence and, in ``extra_metrics``,
        ``ss_residual``, ``mmd``, ``basal_sd``, ``basal_leak`` and ``fp_unconverged``.
        """
        ss_w = self.steady_state_weight if ss_weight is None else ss_weight
        mmd_w = self.mmd_weight if mmd_weight is None else mmd_weight
        qz, z, mu = inference_outputs["qz"], inference_outputs["z"], generative_outputs["mu"]
        x, px = tensors[REGISTRY_KEYS.X_KEY], generative_outputs["px"]
        loss, recon, kl_true, prior_fit = loss_terms.elbo_terms(x, px, qz, mu, kl_weight, sparse=self.sparse_counts)
        self._cell_prior_fit = prior_fit.detach()  # per-cell dynamics error, read by error-guided batching

        proto = self._protocol(tensors)
        active, media = self.active(proto["perturbation"]), proto["media"]
        baseline_ctrl = loss_terms.baseline_controls(active, media, proto["media_time"])
        basal = z - mu
        # every term below is written with masks and torch.where: a training step never waits for the device
        has_ctrl, n_ctrl, ctrl_w, mean_ctrl = loss_terms.control_mean(qz.loc.detach(), baseline_ctrl)
        reference_known = has_ctrl | self.control_reference_set
        if self.training:
            loss_terms.update_control_reference(
                self.control_reference, self.control_reference_set, mean_ctrl[0], has_ctrl, reference_known
            )
        mean_ctrl = torch.where(has_ctrl, mean_ctrl, self.control_reference.unsqueeze(0))
        ss = loss_terms.steady_state_term(
            self.field,
            self.z_base,
            qz.loc.detach(),
            mean_ctrl,
            ctrl_w,
            n_ctrl,
            has_ctrl,
            reference_known,
            regime=self.regime,
            steady_state_on=self.steady_state_on,
        )
        if ss_w > 0:
            loss = loss + ss_w * ss
        same = loss_terms.protocol_groups(active, media, proto["time"], proto["media_time"])
        mmd = torch.zeros((), device=z.device)
        if mmd_w > 0:
            mmd = loss_terms.basal_mmd(basal, same, baseline_ctrl, n_ctrl)
            loss = loss + mmd_w * mmd
        extra = {  # the names of EXTRA_METRICS, in order
            "ss_residual": ss.detach().sqrt(),
            "mmd": mmd.detach(),
            "basal_sd": basal.detach().std(0).mean(),
            "basal_leak": loss_terms.basal_leak(basal, same),
            "fp_unconverged": torch.as_tensor(self._last_unconverged, device=z.device).float(),
        }
        # a non-finite loss is returned as it is: the model's FiniteLossCallback stops training with the likely
        # causes, where it knows the epoch, the step and the model's settings
        return LossOutput(
            loss=loss,
            reconstruction_loss=recon,
            kl_local={"kl_divergence_z": kl_true},
            extra_metrics=extra,
        )
