"""SemiMechVI: the semi-mechanistic model of a Perturb-seq screen with the scvi-tools model API."""

from __future__ import annotations

import logging
import pickle
import random
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from scvi import REGISTRY_KEYS, settings
from scvi.model.base import BaseModelClass, RNASeqMixin, UnsupervisedTrainingMixin, VAEMixin
from scvi.train import SaveCheckpoint

from scmech._constants import SCMECH_REGISTRY_KEYS
from scmech.data._pseudobulk import normalized_mean
from scmech.module import SemiMechVAE
from scmech.train import BATCHING, PerturbationDataSplitter, SemiMechTrainingPlan

from ._anchoring import _rows
from ._network import NetworkMixin
from ._persistence import SafeSaveLoadMixin
from ._post_training import PostTrainingMixin
from ._prediction import PredictionMixin
from ._protocols import Protocol
from ._rnaseq import MeasurementMethodsMixin
from ._setup import PerturbationSetupMixin

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence

    from anndata import AnnData
    from mudata import MuData

logger = logging.getLogger(__name__)
K = SCMECH_REGISTRY_KEYS

__all__ = ["SemiMechVI"]


class FiniteLossCallback(Callback):
    """Stop training with a clear message as soon as the training loss is NaN or infinite."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor) or bool(torch.isfinite(loss.detach()).all()):
            return
        module = getattr(pl_module, "module", None)
        ss = getattr(module, "steady_state_weight", None)
        msg = (
            f"The training loss became {loss.detach().float().mean().item()} at epoch {trainer.current_epoch}, "
            f"step {trainer.global_step}; training stopped. Likely causes: a learning rate too high for these data "
            "(try plan_kwargs={'lr': 1e-4}) or for the operators (a lower operator_scale); extreme counts or library "
            "sizes (look for outlier cells, or pass "
            "size_factor_key); dynamics that diverge under a high steady-state weight"
            f"{'' if ss is None else f' (steady_state_weight={ss:g}; try a lower value)'}; or non-count data "
            "registered as counts."
        )
        raise FloatingPointError(msg)


class _EnableCheckpointing(SaveCheckpoint):
    """Inert checkpoint callback that lets a user's ``ModelCheckpoint`` run under scvi-tools' Trainer.

    scvi-tools' Trainer switches Lightning checkpointing on only together with its own
    :class:`~scvi.train.SaveCheckpoint`, which writes model directories into ``scvi.settings.logging_dir`` and
    puts the module in eval mode on every save. This subclass saves nothing and has none of those side effects.
    """

    def __init__(self) -> None:
        ModelCheckpoint.__init__(self, save_top_k=0)
        self.load_best_on_end = False
        self.loss_is_nan = False
        self.check_nan_gradients = False

    def on_save_checkpoint(self, trainer, *args) -> None:
        return

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        return


class RNGStateCallback(Callback):
    """Save the random number generator states in Lightning checkpoints and restore them on resume.

    Lightning restores weights, optimiser and loop state but not the generators that shuffle minibatches and
    draw latent samples; with them, a resumed CPU run repeats the uninterrupted one.
    """

    def state_dict(self) -> dict[str, Any]:
        # tensors and plain numbers only, so that the checkpoint loads with torch.load(weights_only=True)
        _, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 - saved and restored, never drawn from
        return {
            "torch": torch.get_rng_state(),
            "numpy": [torch.as_tensor(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
            "python": random.getstate(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning restores callbacks before it builds the data loaders, whose shuffling draws from these
        torch.set_rng_state(state_dict["torch"])
        keys, pos, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss))  # noqa: NPY002
        version, internal, gauss_next = state_dict["python"]
        random.setstate((version, tuple(internal), gauss_next))


class SemiMechVI(
    NetworkMixin,
    PredictionMixin,
    PostTrainingMixin,
    PerturbationSetupMixin,
    SafeSaveLoadMixin,
    MeasurementMethodsMixin,
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
        if regime == "dynamic" and not has_time:
            msg = "regime='dynamic' needs a time key: register it with setup_anndata(..., time_key=...)."
            raise ValueError(msg)
        if steady_state_weight < 0:
            msg = f"steady_state_weight must be >= 0, got {steady_state_weight}."
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
            target_gene_index=list(pstate["target_var_index"]),
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
        self.anchor_ = None
        self.init_params_ = self._get_init_params(locals())

    def _n_media(self) -> int:
        return max(len(self._media_categories()), 1)

    # ------------------------------------------------------------------ training
    def train(
        self,
        max_epochs: int | None = None,
        *,
        batch_size: int = 128,
        train_size: float | None = None,
        validation_size: float | None = None,
        early_stopping: bool = False,
        batching: Literal["random", "batch_matched", "error_guided"] = "random",
        datasplitter_kwargs: dict | None = None,
        plan_kwargs: dict | None = None,
        ckpt_path: str | os.PathLike | None = None,
        **trainer_kwargs,
    ):
        """Train with scvi-tools' Lightning loop; defaults suited to the model.

        Unassigned cells are excluded from training (their count is logged). Held-out splits go through
        ``datasplitter_kwargs={"external_indexing": [train, validation, test]}`` (e.g. from
        :func:`scmech.tl.split`); never evaluate on random cell splits. The KL warm-up defaults to a quarter
        of ``max_epochs`` (scvi-tools' default of 400 epochs would keep the KL weight tiny in short runs);
        the dynamics always receive the full prior gradient. The dynamics learn at ``dynamics_lr_factor`` (plan
        keyword, default 10) times the learning rate. The validation ELBO is recorded every epoch when there are
        validation cells. Accelerators, devices and Lightning strategies (e.g.
        ``strategy="ddp_find_unused_parameters_true"``) pass through ``trainer_kwargs``.

        Interrupted runs resume from Lightning checkpoints: train with
        ``callbacks=[lightning.pytorch.callbacks.ModelCheckpoint(dirpath=..., save_last=True)]`` (checkpointing is
        switched on for you when such a callback is given), then call ``train`` on a model built the same way with
        the same ``max_epochs``, split and ``plan_kwargs`` and ``ckpt_path=".../last.ckpt"``. The checkpoint holds
        the weights, the optimiser, the epoch and the random number generator states, so on the CPU the resumed
        run reaches the state of an uninterrupted one (without scvi-tools' own ``SaveCheckpoint``, which switches
        the module to eval mode whenever it saves). ``history`` then holds the epochs run after resuming.

        Training stops with :class:`FloatingPointError` as soon as the loss becomes NaN or infinite; the message
        names the likely causes.

        On CPUs shared with other work, torch's intra-op threads can slow these small tensor operations down
        several-fold; ``torch.set_num_threads(1)`` per process is often fastest (scmech never changes it for you).

        Multi-GPU and multi-node training go through Lightning's DDP strategies as in scvi-tools:
        ``train(accelerator="gpu", devices=-1, strategy="ddp_find_unused_parameters_true")`` (``num_nodes=`` for
        several machines; ``"ddp_notebook_find_unused_parameters_true"`` in Jupyter; CPUs with the gloo backend
        work too). Caveats: run training from a script (Lightning relaunches it per process), ``batch_size`` is
        per process, early stopping is off under DDP, only rank 0 fills ``history``, every process runs the code
        after ``train`` (save from rank 0: ``os.environ.get("LOCAL_RANK", "0") == "0"``), and the batch-matched and
        error-guided samplers split their minibatches across processes (error weights are summed over them).

        Parameters
        ----------
        max_epochs
            Number of epochs; scvi-tools' heuristic from the number of cells when ``None``.
        batch_size
            Minibatch size (per device under DDP).
        train_size
            Fraction of fitted cells used for training when no external indexing is given (default 0.9).
        validation_size
            Fraction used for validation (default: the rest).
        early_stopping
            Lightning early stopping on the validation ELBO (ignored under DDP, as in scvi-tools).
        batching
            Minibatch strategy (:mod:`scmech.train`): ``"random"`` (scvi-tools' shuffling), ``"batch_matched"``
            (each minibatch from one wet-lab batch, perturbed cells with same-batch controls; needs a
            ``batch_key``) or ``"error_guided"`` (conditions drawn in proportion to the running error of the
            dynamics on them). All work under DDP.
        datasplitter_kwargs
            Passed to :class:`~scvi.dataloaders.DataSplitter`.
        plan_kwargs
            Passed to :class:`~scvi.train.TrainingPlan` (``lr``, ``n_epochs_kl_warmup``, ``ss_weight``...).
        ckpt_path
            Lightning checkpoint to resume from (e.g. the ``last.ckpt`` of a
            :class:`~lightning.pytorch.callbacks.ModelCheckpoint`); ``None`` starts afresh.
        **trainer_kwargs
            Passed to :class:`~scvi.train.Trainer` (``accelerator``, ``devices``, ``strategy``...).
        """
        if max_epochs is not None and (isinstance(max_epochs, bool) or int(max_epochs) != max_epochs or max_epochs < 1):
            msg = f"max_epochs={max_epochs!r} must be a positive integer (or None for scvi-tools' heuristic)."
            raise ValueError(msg)
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            msg = f"batch_size={batch_size!r} must be a positive integer (cells per minibatch), e.g. 128."
            raise ValueError(msg)
        if ckpt_path is not None:
            if not Path(ckpt_path).is_file():
                msg = (
                    f"ckpt_path={str(ckpt_path)!r} is not a file; pass the checkpoint a ModelCheckpoint callback wrote "
                    "(e.g. '<dirpath>/last.ckpt'), or ckpt_path=None to train afresh."
                )
                raise FileNotFoundError(msg)
            trainer_kwargs["ckpt_path"] = str(ckpt_path)
        # the data may have been changed in place since setup_anndata: refuse before torch sees it
        self._check_registered_data(values=True)
        callbacks = list(trainer_kwargs.pop("callbacks", None) or [])
        if any(isinstance(c, ModelCheckpoint) for c in callbacks) and not any(
            isinstance(c, SaveCheckpoint) for c in callbacks
        ):
            callbacks.append(_EnableCheckpointing())
        if ckpt_path is not None or any(isinstance(c, ModelCheckpoint) for c in callbacks):
            callbacks.append(RNGStateCallback())
        callbacks.append(FiniteLossCallback())
        trainer_kwargs["callbacks"] = callbacks
        self.module.train()  # a second call (or a loaded model) must not train in eval mode
        fit = self._fit_mask(self.adata)
        n_fit = int(fit.sum())
        if max_epochs is None:
            # scvi-tools' heuristic (a private function there): 400 epochs up to 20,000 cells, fewer beyond
            max_epochs = max(min(round(20_000 / max(n_fit, 1) * 400), 400), 1)
        max_epochs = int(max_epochs)
        plan_kwargs = dict(plan_kwargs or {})
        if "n_steps_kl_warmup" not in plan_kwargs:
            plan_kwargs.setdefault("n_epochs_kl_warmup", max(1, max_epochs // 4))
        datasplitter_kwargs = dict(datasplitter_kwargs or {})
        external = datasplitter_kwargs.get("external_indexing")
        n_unfit = len(fit) - n_fit
        if external is None:
            external = self._default_split(fit, train_size, validation_size)
        else:
            external = [np.asarray(ix, dtype=int) for ix in external]
            bad = [len(np.setdiff1d(ix, np.arange(len(fit)))) for ix in external]
            if any(bad):
                msg = f"external_indexing holds indices outside 0..{len(fit) - 1}."
                raise ValueError(msg)
            external = [ix[fit[ix]] for ix in external]
        while len(external) < 3:
            external.append(np.array([], dtype=int))
        # scvi-tools' splitter needs every cell in one set: unassigned and unlisted cells join the test set,
        # which is never trained on
        covered = np.zeros(len(fit), dtype=bool)
        for ix in external:
            covered[ix] = True
        if datasplitter_kwargs.get("external_indexing") is not None and (~covered & fit).sum() > 0:
            warnings.warn(
                f"{int((~covered & fit).sum())} of {int(fit.sum())} cells are in none of the external_indexing sets; "
                "they are held out like test cells (never trained on). Pass [train, validation, test] covering "
                "every cell to silence this.",
                UserWarning,
                stacklevel=2,
            )
        external[2] = np.union1d(external[2], np.flatnonzero(~covered)).astype(int)
        if n_unfit:
            logger.info("%d unassigned cells are kept in adata but excluded from training.", n_unfit)
        datasplitter_kwargs["external_indexing"] = external
        if len(external[1]) > 0:
            # record the validation ELBO every epoch (scvi-tools only does so with early stopping)
            trainer_kwargs.setdefault("check_val_every_n_epoch", 1)
        if len(external[0]) == 0:
            msg = "No cells to train on: the training indices are empty after removing unassigned cells."
            raise ValueError(msg)
        n_train = len(external[0])
        if batching == "random" and (batch_size == 1 or n_train % batch_size == 1):
            ok = next((b for b in range(max(batch_size - 1, 2), 2 * batch_size + 3) if n_train % b != 1), None)
            fix = f"Use another batch size, e.g. batch_size={ok}." if ok else "Train on more cells."
            msg = (
                f"With {n_train} training cells and batch_size={batch_size}, a minibatch holds a single cell, which "
                f"the encoder's batch normalisation cannot train on. {fix}"
            )
            raise ValueError(msg)
        self._configure_batching(batching, datasplitter_kwargs, plan_kwargs)
        if not self.is_trained_ and ckpt_path is None:
            self._init_gene_levels(np.asarray(external[0]))
            self._init_time_unit(np.asarray(external[0]))
        with warnings.catch_warnings():
            # the training plan's own (cheaper) batch transfer is intended
            warnings.filterwarnings("ignore", message=".*overridden `transfer_batch_to_device`.*")
            try:
                out = super().train(
                    max_epochs=max_epochs,
                    batch_size=batch_size,
                    early_stopping=early_stopping,
                    datasplitter_kwargs=datasplitter_kwargs,
                    plan_kwargs=plan_kwargs,
                    **trainer_kwargs,
                )
            except (RuntimeError, KeyError, pickle.UnpicklingError) as e:
                if ckpt_path is None:
                    raise
                msg = (
                    f"Cannot resume from ckpt_path={str(ckpt_path)!r}: it does not fit this model and data ({e}). "
                    "Resume with a model built the same way (same arguments, data set up the same way) as the run "
                    "that wrote the checkpoint, or train afresh with ckpt_path=None."
                )
                raise ValueError(msg) from e
        # the observations first: the target map validates its propagation gain on them
        self._fit_anchor(np.asarray(external[0]))
        self._fit_target_map(np.asarray(external[0]))
        hist = (self.history_ or {}).get("fp_unconverged_train")
        if hist is not None and len(hist) and float(np.asarray(hist)[-1].ravel()[0]) > 0:
            logger.warning(
                "In the last epoch %.0f%% of the steady-state solves did not converge within fixed_point_max_iter=%d "
                "(history['fp_unconverged_train']); train longer or raise fixed_point_max_iter.",
                100 * float(np.asarray(hist)[-1].ravel()[0]),
                self.module.fixed_point_max_iter,
            )
        return out

    def _init_gene_levels(self, train_indices: np.ndarray, max_cells: int = 20_000) -> None:
        """Start the decoder's per-gene intercepts at the training cells' mean log expression.

        The softmax of a decoder initialised at zero gives every gene the same share; a gene holding a large
        share of the counts then takes thousands of optimiser steps to reach its level, and short runs stay
        misfit on exactly the genes that dominate the likelihood. The mean is read in row blocks (backed data
        too) from at most ``max_cells`` training cells drawn with scvi-tools' seed.
        """
        idx = np.sort(np.asarray(train_indices, dtype=int))
        if len(idx) == 0:
            return
        if len(idx) > max_cells:
            idx = np.sort(np.random.default_rng(settings.seed).choice(idx, max_cells, replace=False))
        x, _ = self._expression_matrix(self.adata)
        counts = self.adata_manager.registry["setup_args"].get("counts", True)
        size_factor = None
        if REGISTRY_KEYS.SIZE_FACTOR_KEY in self.adata_manager.data_registry:
            size_factor = np.asarray(self.adata_manager.get_from_registry(REGISTRY_KEYS.SIZE_FACTOR_KEY)).ravel()
        xs, lab = _rows(x, idx, np.full(len(idx), "fit", dtype=object))
        mean = normalized_mean(xs, lab, ["fit"], counts=counts)[0]
        if size_factor is not None and counts:
            self._init_library_scale(x, idx, size_factor[idx])
        if counts:
            mean = np.clip(mean, 0.0, None)
            floor = max(float(mean[mean > 0].min()) if (mean > 0).any() else 1.0, 1e-12) / 10
            level = np.log(np.maximum(mean, floor))
            level -= level.mean()
        else:
            level = mean
        bias = self.module.decoder.loading.bias
        with torch.no_grad():
            bias.copy_(torch.as_tensor(level, dtype=bias.dtype, device=bias.device))

    def _init_time_unit(self, train_indices: np.ndarray) -> None:
        """Measure model time in units of the longest registered read-out (or switch) time over ``horizon``.

        A time course recorded in hours then trains and predicts as the same course in days: the field's rates,
        initialised at 1 per model time unit, start at the same number of relaxation times over the experiment.
        """
        if self.regime != "dynamic":
            return
        reg = self.adata_manager.data_registry
        spans = []
        for key in (K.TIME_KEY, K.MEDIA_TIME_KEY):
            if key in reg:
                v = np.asarray(self.adata_manager.get_from_registry(key), dtype=np.float64).ravel()[train_indices]
                v = np.abs(v[np.isfinite(v)])
                if len(v):
                    spans.append(float(v.max()))
        longest = max(spans, default=0.0)
        if longest > 0:
            self.module.set_time_unit(longest / self.module.horizon)

    def _init_library_scale(self, x, idx: np.ndarray, size_factor: np.ndarray) -> None:
        """Scale a registered size factor to the registered genes' counts (a gene panel within a larger library).

        The decoder's expression proportions sum to one over the registered genes, so the expected count total of
        a cell is its library size. A size factor on another scale (the whole transcriptome's library of a gene
        panel, or factors around 1) is rescaled by the median over training cells of the registered genes' total
        over the size factor: depth still varies with the size factor from cell to cell, and the predictions stay
        proportions of the registered genes (the space of :func:`scmech.data.pseudobulk`).
        """
        sums = []
        for lo in range(0, len(idx), 10_000):
            block = x[idx[lo : lo + 10_000]]
            sums.append(np.asarray(block.sum(axis=1)).ravel())
        totals = np.concatenate(sums).astype(np.float64)
        ratio = totals / np.maximum(np.asarray(size_factor, dtype=np.float64), 1e-12)
        scale = float(np.median(ratio[ratio > 0])) if (ratio > 0).any() else 1.0
        if not 0.5 <= scale <= 2.0:
            logger.info(
                "size_factor_key is %.3g times the registered genes' counts (median over training cells); it is "
                "rescaled so that the model's proportions of these genes meet their counts.",
                1.0 / scale,
            )
        buf = self.module.log_library_scale
        with torch.no_grad():
            buf.fill_(float(np.log(scale)))

    def _configure_batching(self, batching: str, datasplitter_kwargs: dict, plan_kwargs: dict) -> None:
        if batching not in BATCHING:
            msg = f"batching={batching!r} is not one of {BATCHING}."
            raise ValueError(msg)
        if batching == "random":
            return
        design = self._design(self.adata)
        if self.adata_manager.registry["setup_args"].get("batch_key") is not None:
            batch = np.asarray(self.adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)).ravel().astype(int)
        elif batching == "batch_matched":
            msg = "batching='batch_matched' needs wet-lab batches: setup_anndata(..., batch_key=...)."
            raise ValueError(msg)
        else:
            batch = np.zeros(design.n_cells, dtype=int)
        codes, uniques = pd.factorize(pd.Series(design.labels))
        weights = np.ones(len(uniques))
        datasplitter_kwargs.update(
            batching=batching,
            batch_labels=batch,
            condition_codes=codes,
            is_control=design.is_control,
            condition_weights=weights,
            seed=int(settings.seed or 0),
        )
        if batching == "error_guided":
            rng = np.random.default_rng(0)
            h = rng.integers(1, 2**40, size=design.matrix.shape[1], dtype=np.int64)
            rows = design.condition_matrix([u for u in uniques if u in design.condition_targets])
            keys = (np.asarray(rows.todense()).round().astype(np.int64) * h).sum(1)
            conds = [int(np.flatnonzero(uniques == u)[0]) for u in uniques if u in design.condition_targets]
            order = np.argsort(keys)
            plan_kwargs["error_tracking"] = {
                "hash": h,
                "keys": keys[order],
                "key_condition": np.asarray(conds)[order],
                "weights": weights,
            }

    def _default_split(self, fit: np.ndarray, train_size, validation_size) -> list[np.ndarray]:
        rng = np.random.default_rng(settings.seed)
        idx = rng.permutation(np.flatnonzero(fit))
        train_size = 0.9 if train_size is None else train_size
        if not 0 < train_size <= 1:
            msg = f"train_size must be in (0, 1], got {train_size}."
            raise ValueError(msg)
        n_train = int(np.ceil(train_size * len(idx)))
        n_val = len(idx) - n_train if validation_size is None else int(np.floor(validation_size * len(idx)))
        return [np.sort(idx[:n_train]), np.sort(idx[n_train : n_train + n_val]), np.sort(idx[n_train + n_val :])]

    # ------------------------------------------------------------------ latent quantities
    @torch.inference_mode()
    def get_steady_state_residual(
        self, adata: AnnData | None = None, indices: Sequence[int] | None = None, batch_size: int | None = None
    ) -> np.ndarray:
        r"""Per-cell steady-state residual :math:`\|f_\theta(z_c; m_c, p_c)\|` at the cell's latent mean.

        Near zero for cells at an equilibrium of their own protocol; large for cells the field would still
        move (e.g. controls that drift, or cells between attractors). Cells of targets without training cells
        use the operators of the gene-embedding map, as :meth:`predict` does. This is a per-cell quantity;
        ``history["ss_residual_train"]`` is the residual at the mean control state, the quantity the
        steady-state term penalises (with ``steady_state_on="mean"``).

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
            out.append(field(z, proto["media"], drive).norm(dim=-1).cpu().numpy())
        return np.concatenate(out)

    @torch.inference_mode()
    def get_basal_representation(
        self, adata: AnnData | None = None, indices: Sequence[int] | None = None, batch_size: int | None = None
    ) -> np.ndarray:
        r"""Basal state of each cell: its latent mean minus the read-out of its protocol, :math:`z_c - \mu_{\pi_c}`.

        The basal state is what remains of a cell once its perturbation, medium and time are removed; it
        should not encode the perturbation (check with ``history["basal_leak_train"]``).
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
