"""NeuralODE: the paper's end-to-end neural ODE, as a model of the package, to test its steady-state claim.

The same ``setup_anndata`` / ``train`` / ``predict`` interface and the same measurement operator as
:class:`~scmech.model.SemiMechVI`; only the dynamics differ (:mod:`scmech.module._neural_ode`). It is the
baseline of the paper's one experiment (does a steady-state loss lower test error and stabilise convergence in an
end-to-end neural ODE?), measured by ``benchmarks/paper_claim.py``; it is not a second product. Its predictions are
its own read-outs: no anchoring on observed pseudobulks, and no regulatory network (its field has no guaranteed
steady state).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal, NoReturn

from scmech.module import NeuralODEVAE

from ._argument_checks import check_flag
from ._semimechvi import SemiMechVI, check_sizes

if TYPE_CHECKING:
    import numpy as np
    from anndata import AnnData
    from mudata import MuData

logger = logging.getLogger(__name__)

__all__ = ["NeuralODE"]


class NeuralODE(SemiMechVI):
    r"""End-to-end neural ODE of a Perturb-seq screen: the paper's vanilla model, with an optional steady-state term.

    Cells follow :math:`dz/dt = f_\theta(z, \sum_{k \in p} \eta_k e_k, e_m)`, one MLP of the latent state and the
    summed embeddings of the targets and of the medium, from the baseline (control) state; every protocol is read
    out by its flow (a finite horizon in the steady-state regime, the ordered protocol in the dynamic regime).
    Counts are measured through the same operator as :class:`~scmech.model.SemiMechVI` (NB/ZINB, library size,
    batch), with no per-gene response of perturbed cells outside the dynamics.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    n_latent
        Dimension of the latent cell state.
    n_hidden
        Width of the encoder.
    n_layers
        Hidden layers of the encoder.
    gene_likelihood
        ``"nb"``, ``"zinb"``, or ``"normal"`` for data registered with ``counts=False``.
    regime
        ``"steady_state"``, ``"dynamic"`` or ``"auto"`` (dynamic when a time key is registered).
    steady_state_weight
        Weight :math:`\lambda_{ss}` of the steady-state term :math:`\|f_\theta(\bar z_\varnothing; m_0,
        \varnothing)\|^2` on the baseline controls (in the dynamic regime, at the baseline state every protocol
        starts from); 0, the default, is the paper's vanilla model.
    steady_state_perturbed
        Put the term also on perturbed populations, assumed settled (steady-state regime only).
    field_hidden
        Width of the field's MLP.
    field_layers
        Hidden layers of the field's MLP.
    **module_kwargs
        Passed to :class:`~scmech.module.NeuralODEVAE` (e.g. ``horizon``, ``ode_steps``, ``mmd_weight``,
        ``dispersion``, ``onset_tau``). ``lipschitz``, ``operator_scale``, ``fixed_point_tol`` and
        ``fixed_point_max_iter`` (SemiMechVI's contracting field and steady-state solve) are refused: the neural field
        would ignore them.

    Examples
    --------
    >>> adata = scmech.data.simulate_perturbseq(2000, 100, regime="dynamic", media_switch_times=(1.0,))
    >>> scmech.model.NeuralODE.setup_anndata(adata, perturbation_key="perturbation", control_label="NT",
    ...                                      time_key="time", media_key="media", media_time_key="media_time")
    >>> vanilla = scmech.model.NeuralODE(adata)
    >>> with_term = scmech.model.NeuralODE(adata, steady_state_weight=1.0)
    """

    _module_cls = NeuralODEVAE

    def __init__(
        self,
        adata: AnnData | MuData | None = None,
        n_latent: int = 10,
        n_hidden: int = 128,
        n_layers: int = 1,
        gene_likelihood: Literal["nb", "zinb", "normal"] = "nb",
        regime: Literal["auto", "steady_state", "dynamic"] = "auto",
        steady_state_weight: float = 0.0,
        steady_state_perturbed: bool = False,
        field_hidden: int = 64,
        field_layers: int = 2,
        **module_kwargs,
    ) -> None:
        if "readout" in module_kwargs and module_kwargs["readout"] != "flow":
            msg = f"readout={module_kwargs['readout']!r}: NeuralODE is read out by flows only."
            raise ValueError(msg)
        module_kwargs.pop("readout", None)
        check_sizes(field_hidden=field_hidden, field_layers=field_layers)
        # a numpy bool (e.g. read from a config table) is a flag like any other of the package's
        steady_state_perturbed = check_flag(steady_state_perturbed, "steady_state_perturbed")
        super().__init__(
            adata,
            n_latent=n_latent,
            n_hidden=n_hidden,
            n_layers=n_layers,
            gene_likelihood=gene_likelihood,
            regime=regime,
            steady_state_weight=steady_state_weight,
            readout="flow",
            steady_state_perturbed=steady_state_perturbed,
            field_hidden=field_hidden,
            field_layers=field_layers,
            **module_kwargs,
        )
        self._model_summary_string = (
            f"NeuralODE model ({self.regime} regime, flow read-out) with n_latent={n_latent}, field MLP "
            f"{field_layers} x {field_hidden}, steady_state_weight={steady_state_weight}"
            f"{' (controls and perturbed)' if steady_state_perturbed else ''}, "
            f"{self.module.n_targets} targets."
        )
        self.init_params_ = self._get_init_params(locals())

    def _fit_anchor(
        self, train_indices: np.ndarray, validation_indices: np.ndarray | None = None, min_cells: int = 10
    ) -> None:
        """No anchoring: the paper's model predicts its own read-outs (``predict(anchor=...)`` has no effect).

        Parameters
        ----------
        train_indices, validation_indices, min_cells
            As in :meth:`SemiMechVI._fit_anchor <scmech.model.SemiMechVI._fit_anchor>`; not used.
        """
        self.anchor_ = None

    def get_regulatory_network(self, *args, **kwargs) -> NoReturn:
        """Not available: the network is read at the control steady state, which a neural field need not have.

        Parameters
        ----------
        *args
            Ignored.
        **kwargs
            Ignored.

        Raises
        ------
        NotImplementedError
            Always.
        """
        msg = (
            "NeuralODE has no guaranteed control steady state to linearise its field at; "
            "use SemiMechVI.get_regulatory_network."
        )
        raise NotImplementedError(msg)

    def get_steady_state_residual(self, *args, **kwargs) -> NoReturn:
        """Not available: the neural field is read out by flows, with no steady-state solve to report.

        Parameters
        ----------
        *args
            Ignored.
        **kwargs
            Ignored.

        Raises
        ------
        NotImplementedError
            Always.
        """
        msg = "NeuralODE is read out by flows; there is no steady-state solve to report a residual for."
        raise NotImplementedError(msg)
