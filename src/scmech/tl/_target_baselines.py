r"""Mechanism-aware baselines for targets never perturbed in training: the own gene and the target class.

Both use only what is known of a target before any data, as :class:`~scmech.model.SemiMechVI` does for such
targets, so that the model is compared with the strongest simple predictors of the same information:

- :class:`OwnGene`: the train-perturbation mean with the target's own gene set to the calibrated own-gene
  change, :math:`\hat\mu_{p,g} = \mu_{\mathrm{ctrl},g} + c` at :math:`g = \mathrm{gene}(p)`, with :math:`c` the
  half-sample mode (or median, or mean) over the training single targets whose gene is measured of their observed
  own-gene change
  (a CRISPR knock-out or knock-down lowers its own mRNA, activation raises it; the sign of the registered
  ``perturbation_modality`` is enforced).
- :class:`TargetClassMean`: the mean of the training targets of the same class: the ``k`` training targets
  nearest in a gene embedding, or (``k=None``) every training target whose gene is measured. A target
  without a measured gene gets the train-perturbation mean.
"""

from __future__ import annotations

import logging
import numbers
from typing import TYPE_CHECKING, Literal

import numpy as np

from scmech._numbers import is_positive_whole
from scmech.data._embedding import pseudobulk_gene_embedding
from scmech.model._own_gene import half_sample_mode, modality_sign

from ._baselines import TrainMean
from ._baselines._checks import check_embedding, check_positive_int

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

logger = logging.getLogger(__name__)

__all__ = ["OwnGene", "TargetClassMean"]


class OwnGene(TrainMean):
    r"""Train-perturbation mean plus the calibrated change of the target's own gene.

    :math:`\hat\mu_p = \sum_{q\in T}\omega_q\mu_q` (the train mean of :class:`~scmech.tl.TrainMean`, plain or
    precision-weighted) except at the own gene :math:`g` of each target of :math:`p`, predicted at
    :math:`\mu_{\mathrm{ctrl},g} + c`. The own-gene change :math:`c` is the ``statistic`` over the training single
    targets whose gene is measured of :math:`\mu_{q,\mathrm{gene}(q)} - \mu_{\mathrm{ctrl},\mathrm{gene}(q)}`;
    with a registered ``perturbation_modality`` a value of the wrong sign is set to 0. Targets whose gene is not
    measured are the train mean.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    statistic
        ``"mode"`` (the half-sample mode, :func:`~scmech.model._own_gene.half_sample_mode`, as SemiMechVI
        calibrates its own-gene effect: the typical change, robust to the few strong targets whose own mRNA also
        falls through feedback even where they are a third of the targets), ``"median"`` or ``"mean"``.
    weighting
        The mean it starts from, as in :class:`~scmech.tl.TrainMean`: ``"equal"`` (the plain train mean) or
        ``"precision"`` (the random-effects mean that SemiMechVI anchors a target without training cells on; with
        the calibrated own gene, the strongest simple predictor of such a target we know).

    Examples
    --------
    >>> scmech.tl.OwnGene.setup_anndata(adata, perturbation_modality="CRISPRko")
    >>> model = scmech.tl.OwnGene(adata)  # or OwnGene(adata, weighting="precision")
    >>> model.train(datasplitter_kwargs={"external_indexing": split.external_indexing})
    >>> pred = model.predict(split.test_conditions)
    """

    def __init__(
        self,
        adata: AnnData | MuData,
        statistic: Literal["mode", "median", "mean"] = "mode",
        weighting: Literal["equal", "precision"] = "equal",
    ) -> None:
        super().__init__(adata, weighting=weighting)
        if statistic not in ("mode", "median", "mean"):
            msg = f"statistic={statistic!r} is not one of 'mode', 'median', 'mean'."
            raise ValueError(msg)
        self.statistic = statistic
        mean = "train mean" if weighting == "equal" else "precision-weighted train mean"
        self._model_summary_string = f"OwnGene baseline: {mean} plus the {statistic} own-gene change."
        self.init_params_ = self._get_init_params(locals())

    def _fit(self) -> None:
        super()._fit()
        self._gene_pos = self._target_gene_positions()
        ctrl = self._pb.loc[self._control()].to_numpy()
        changes = [float(self._pb.loc[c].iloc[g] - ctrl[g]) for c, g in _measured_singles(self)]
        if not changes:
            logger.warning("OwnGene: no training single target is a measured gene; it predicts the train mean.")
            self.own_change_ = 0.0
        else:
            centre = {"mode": half_sample_mode, "median": np.median, "mean": np.mean}[self.statistic]
            self.own_change_ = float(centre(np.asarray(changes)))
        sign = modality_sign(self._setup().get("perturbation_modality"))
        if sign * self.own_change_ < 0:
            logger.warning(
                "OwnGene: the training targets' own-gene change (%.3g) has the wrong sign for the registered "
                "modality; it is set to 0.",
                self.own_change_,
            )
            self.own_change_ = 0.0
        self.own_targets_ = len(changes)

    def _predict_one(self, label, targets):
        value, n = super()._predict_one(label, targets)
        if not targets:
            return value, n
        value = value.copy()
        ctrl = self._pb.loc[self._control()].to_numpy()
        for t in targets:
            if t in self._gene_pos:
                value[self._gene_pos[t]] = ctrl[self._gene_pos[t]] + self.own_change_
        return value, n


class TargetClassMean(TrainMean):
    r"""Mean of the training targets of the same class as the predicted target.

    The class of a target whose gene is measured is the ``k`` training single targets (measured genes) nearest
    to it in a gene embedding (Euclidean distance), or all of them with ``k=None``: with a panel that measures
    only some targets' genes, these are the targets described by the same prior information. A target without
    a measured gene, and any combination, gets the train-perturbation mean.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    k
        Number of nearest training targets; every measured training target when ``None``.
    n_components
        Principal components of the default gene embedding (the training pseudobulk's, as
        :class:`~scmech.tl.LinearModel`).
    gene_embedding
        ``"training_data"`` or a ``varm`` key of a genes x K embedding.

    Examples
    --------
    >>> scmech.tl.TargetClassMean.setup_anndata(adata)
    >>> model = scmech.tl.TargetClassMean(adata)  # k=5 for the 5 nearest in the embedding
    >>> model.train(datasplitter_kwargs={"external_indexing": split.external_indexing})
    >>> pred = model.predict(split.test_conditions)
    """

    def __init__(
        self,
        adata: AnnData | MuData,
        k: int | None = None,
        n_components: int = 10,
        gene_embedding: str = "training_data",
    ) -> None:
        super().__init__(adata)
        if k is not None and (isinstance(k, bool | np.bool_) or not isinstance(k, numbers.Real)):
            msg = f"k={k!r} must be a positive integer (nearest training targets) or None (all measured ones)."
            raise TypeError(msg)
        if k is not None and not is_positive_whole(k):
            msg = f"k={k!r} must be a positive integer (nearest training targets) or None (all measured ones)."
            raise ValueError(msg)
        self.k = None if k is None else int(k)
        self.n_components = check_positive_int(n_components, "n_components", 10)
        if gene_embedding != "training_data" and gene_embedding not in self._rna().varm:
            msg = (
                f"gene_embedding={gene_embedding!r} is neither 'training_data' nor a key of adata.varm "
                f"(keys: {list(self._rna().varm.keys())})."
            )
            raise KeyError(msg)
        self.gene_embedding = gene_embedding
        kind = "all measured training targets" if k is None else f"the {k} nearest training targets"
        self._model_summary_string = f"TargetClassMean baseline: mean of {kind}."
        self.init_params_ = self._get_init_params(locals())

    def _fit(self) -> None:
        super()._fit()
        genes = list(self._pb.columns)
        self._gene_pos = self._target_gene_positions()
        self.class_targets_ = [c for c, _ in _measured_singles(self)]
        self._class_values = np.asarray([self._pb.loc[c].to_numpy() for c in self.class_targets_])
        if self.k is not None:
            if self.gene_embedding == "training_data":
                self.embedding_ = pseudobulk_gene_embedding(self._pb.to_numpy(), n_components=self.n_components)
            else:
                self.embedding_ = check_embedding(
                    self._rna().varm[self.gene_embedding], self.gene_embedding, len(genes)
                )

    def _rna(self):
        from scvi import REGISTRY_KEYS

        f = self._field(REGISTRY_KEYS.X_KEY)
        mod = getattr(f, "mod_key", None)
        return self.adata.mod[mod] if (mod is not None and hasattr(self.adata, "mod")) else self.adata

    def _predict_one(self, label, targets):
        value, n = super()._predict_one(label, targets)
        if len(targets) != 1 or targets[0] not in self._gene_pos or not self.class_targets_:
            return value, n
        members = np.arange(len(self.class_targets_))
        if self.k is not None:
            e = self.embedding_
            g = self._gene_pos[targets[0]]
            dist = [np.linalg.norm(e[self._gene_pos[c]] - e[g]) for c in self.class_targets_]
            members = np.argsort(dist, kind="stable")[: self.k]
        chosen = [self.class_targets_[i] for i in members]
        return self._class_values[members].mean(axis=0), int(self._n_train_cells.loc[chosen].sum())


def _measured_singles(model: TrainMean) -> list[tuple[str, int]]:
    """List the training single targets of ``model`` whose gene is measured, with the gene's position.

    Parameters
    ----------
    model
        A fitted pseudobulk baseline (its training pseudobulk in ``_pb``, gene positions in ``_gene_pos``).

    Returns
    -------
    ``(condition, gene position)`` of each training condition that perturbs one measured gene, in training order.
    """
    out = []
    for c in model._pb.index:
        _, targets = model._canonical(c)
        if len(targets) == 1 and targets[0] in model._gene_pos:
            out.append((c, model._gene_pos[targets[0]]))
    return out
