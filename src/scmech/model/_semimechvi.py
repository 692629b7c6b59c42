"""SemiMechVI: the semi-mechanistic model of a Perturb-seq screen with the scvi-tools model API.

The class holds its construction only; each concern is a mixin of its own module: registration
(:mod:`~scmech.model._setup`), training (:mod:`~scmech.model._training`, with the callbacks of
:mod:`~scmech.model._callbacks`), the fits after training (:mod:`~scmech.model._post_training`), prediction
(:mod:`~scmech.model._prediction`), latent quantities (:mod:`~scmech.model._latent`), the regulatory network
(:mod:`~scmech.model._network`), measurement methods (:mod:`~scmech.model._rnaseq`) and persistence
(:mod:`~scmech.model._persistence`).
"""

from __future__ import annotations

import logging
import math
import numbers
from typing import TYPE_CHECKING, Literal

from scvi import REGISTRY_KEYS
from scvi.model.base import BaseModelClass, RNASeqMixin, UnsupervisedTrainingMixin, VAEMixin

from scmech._numbers import check_positive_int
from scmech.module import SemiMechVAE
from scmech.train import PerturbationDataSplitter, SemiMechTrainingPlan

from ._argument_checks import check_device, check_module_settings
from ._latent import LatentMixin
from ._network import NetworkMixin
from ._persistence import SafeSaveLoadMixin
from ._post_training import PostTrainingMixin
from ._prediction import PredictionMixin
from ._query import QueryDataMixin
from ._rnaseq import MeasurementMethodsMixin
from ._setup import PerturbationSetupMixin
from ._time_checks import check_registered_times
from ._training import TrainingMixin

if TYPE_CHECKING:
    import torch
    from anndata import AnnData
    from mudata import MuData

logger = logging.getLogger(__name__)

__all__ = ["SemiMechVI"]


class SemiMechVI(
    NetworkMixin,
    PredictionMixin,
    PostTrainingMixin,
    QueryDataMixin,
    PerturbationSetupMixin,
    SafeSaveLoadMixin,
    MeasurementMethodsMixin,
    LatentMixin,
    TrainingMixin,
    RNASeqMixin,
    VAEMixin,
    UnsupervisedTrainingMixin,
    BaseModelClass,
):
    r"""Semi-mechanistic variational inference for CRISPR-perturbation single-cell data.

    A VAE whose decoder is the measurement operator (NB/ZINB counts with library size and batch capture)
    and whose prior is the read-out of latent dynamics :math:`dz/dt = f_\theta(z; m, p)` under each cell's
    protocol: fixed points in the steady-state regime, the ordered flow of perturbation, medium and time in
    the dynamic regime. See :mod:`scmech.module` for the equations.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata` (or MuData with :meth:`setup_mudata`).
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
        Weight of the steady-state term :math:`\|f_\theta(\bar z_\varnothing; m_0, \varnothing)\|^2`. Values
        above 0 in the steady-state regime also read perturbed cells out at exact fixed points (implicit
        gradients); 0 is the vanilla model: a finite-horizon flow from the baseline state with no
        steady-state term.
    readout
        ``"auto"`` (as described for ``steady_state_weight``), ``"fixed_point"`` or ``"flow"``.
    **module_kwargs
        Passed to :class:`~scmech.module.SemiMechVAE` (e.g. ``field_hidden``, ``mmd_weight``,
        ``n_layers_decoder``, ``dispersion``, ``onset_tau``, ``horizon``).

    Examples
    --------
    >>> adata = scmech.datasets.papalexi2021()
    >>> scmech.model.SemiMechVI.setup_anndata(adata, perturbation_key="perturbation", control_label="NT",
    ...                                       batch_key="bio_rep")
    >>> model = scmech.model.SemiMechVI(adata)
    >>> model.train(max_epochs=20)
    >>> pred = model.predict(["STAT1", "JAK2"])
    """

    _module_cls = SemiMechVAE
    _training_plan_cls = SemiMechTrainingPlan
    _data_splitter_cls = PerturbationDataSplitter

    def __init__(
        self,
        adata: AnnData | MuData | None = None,
        n_latent: int = 10,
        n_hidden: int = 128,
        n_layers: int = 1,
        gene_likelihood: Literal["nb", "zinb", "normal"] = "nb",
        regime: Literal["auto", "steady_state", "dynamic"] = "auto",
        steady_state_weight: float = 1.0,
        readout: Literal["auto", "fixed_point", "flow"] = "auto",
        **module_kwargs,
    ) -> None:
        check_sizes(n_latent=n_latent, n_hidden=n_hidden, n_layers=n_layers)
        own = ("n_latent", "n_hidden", "n_layers", "gene_likelihood", "regime", "readout", "steady_state_weight")
        check_module_settings(self._module_cls, module_kwargs, type(self).__name__, given=own)
        super().__init__(adata)
        setup = self.adata_manager.registry["setup_args"]
        counts = setup.get("counts", True)
        if gene_likelihood not in ("nb", "zinb", "normal"):
            msg = f"gene_likelihood={gene_likelihood!r} is not one of 'nb', 'zinb', 'normal'."
            raise ValueError(msg)
        if gene_likelihood == "normal" and counts:
            msg = (
                "gene_likelihood='normal' models log-normalised data, but the data were registered as counts. "
                "Use 'nb'/'zinb' for counts, or register log-normalised data with setup_anndata(..., counts=False)."
            )
            raise ValueError(msg)
        if gene_likelihood != "normal" and not counts:
            msg = (
                f"The data were registered as non-count data (counts=False), which gene_likelihood={gene_likelihood!r} "
                "cannot model. Use gene_likelihood='normal', or register raw counts."
            )
            raise ValueError(msg)
        has_time = setup.get("time_key") is not None
        if regime == "auto":
            regime = "dynamic" if has_time else "steady_state"
            logger.info("regime='auto' picked %r (%s time key registered).", regime, "a" if has_time else "no")
        if regime not in ("steady_state", "dynamic"):
            msg = f"regime={regime!r} is not one of 'auto', 'steady_state', 'dynamic'."
            raise ValueError(msg)
        if regime == "dynamic":
            check_registered_times(self.adata_manager)
        if (
            isinstance(steady_state_weight, bool)
            or not isinstance(steady_state_weight, numbers.Real)
            or not math.isfinite(steady_state_weight)
            or steady_state_weight < 0
        ):
            msg = (
                f"steady_state_weight={steady_state_weight!r} must be a finite number >= 0 (0: no steady-state term, "
                "the vanilla model; 1: the default)."
            )
            raise ValueError(msg)
        if readout == "auto":
            readout = "fixed_point" if (regime == "steady_state" and steady_state_weight > 0) else "flow"
        self.regime = regime
        pstate = self._perturbation_state()
        n_batch = self.summary_stats.get("n_batch", 0)
        n_media = self._n_media()
        n_cats = (
            self.adata_manager.get_state_registry(REGISTRY_KEYS.CAT_COVS_KEY).n_cats_per_key
            if REGISTRY_KEYS.CAT_COVS_KEY in self.adata_manager.data_registry
            else None
        )
        n_cont = self.summary_stats.get("n_extra_continuous_covs", 0)
        self.module = self._module_cls(
            n_input=self.summary_stats.n_vars,
            n_batch=n_batch,
            n_targets=len(pstate["targets"]),
            target_gene_index=self._target_positions(pstate["targets"]).tolist(),
            n_media=n_media,
            n_latent=n_latent,
            n_hidden=n_hidden,
            n_layers=n_layers,
            gene_likelihood=gene_likelihood,
            regime=regime,
            readout=readout,
            steady_state_weight=steady_state_weight,
            n_cats_per_cov=n_cats,
            n_continuous_cov=n_cont,
            **module_kwargs,
        )
        self._model_summary_string = (
            f"SemiMechVI model ({regime} regime, {readout} read-out) with n_latent={n_latent}, "
            f"n_hidden={n_hidden}, n_layers={n_layers}, gene_likelihood={gene_likelihood!r}, "
            f"steady_state_weight={steady_state_weight}, {len(pstate['targets'])} targets, "
            f"{n_batch} batches, {n_media} media."
        )
        self.target_map_ = None
        self.trained_targets_ = None
        self.trained_media_ = None
        self.anchor_ = None
        self.init_params_ = self._get_init_params(locals())

    def to_device(self, device: str | int | torch.device) -> None:
        """Move the model to ``device`` (scvi-tools' method), checked first so that a wrong one is named.

        Parameters
        ----------
        device
            ``"cpu"``, ``"cuda"``, ``"cuda:<index>"``, a GPU index, or a :class:`torch.device`.
        """
        super().to_device(check_device(device))

    def _n_media(self) -> int:
        return max(len(self._media_categories()), 1)


def check_sizes(**sizes: int) -> None:
    """Refuse a network size that is not a positive integer (torch would fail deep inside, or build an empty layer).

    Parameters
    ----------
    **sizes
        Each size by its argument name, e.g. ``n_latent=10``.

    Raises
    ------
    ValueError
        Naming the first size that is not a positive integer.
    """
    for name, value in sizes.items():
        check_positive_int(value, name)
