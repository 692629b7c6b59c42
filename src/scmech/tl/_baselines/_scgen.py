r"""scGen adapter (:class:`pertpy.tools.Scgen`, optional extra): latent arithmetic from a batch's controls.

pertpy is imported when a :class:`ScGen` is created, not when this module is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd
from scvi import settings

from scmech._constants import TARGET_SUM

from ._base import _PseudobulkBaseline
from ._layout import _prediction_anndata

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData
    from mudata import MuData

__all__ = ["ScGen"]


def _import_scgen():
    try:
        from pertpy.tools import Scgen
    except ImportError as e:
        msg = f"ScGen needs pertpy: pip install 'scmech[pertpy]' ({e})."
        raise ImportError(msg) from e
    return Scgen


class ScGen(_PseudobulkBaseline):
    r"""The scGen model (via :class:`pertpy.tools.Scgen`) for held-out batches: latent arithmetic from controls.

    Trains pertpy's scGen VAE on the log-normalised training cells (``normalize_total(1e4)`` + ``log1p``),
    with the registered batch as scGen's "cell type" and the perturbation as its condition. A perturbation
    :math:`p` is predicted in batch :math:`b` by shifting the latents of :math:`b`'s training controls by

    .. math:: \delta_p = \frac{1}{|C_p|}\sum_{c\in C_p}\big(\bar z_{p,c} - \bar z_{\mathrm{ctrl},c}\big),

    the mean over the batches :math:`C_p` holding both training cells of :math:`p` and controls (a
    deterministic version of ``Scgen.predict``'s balanced sampling), and decoding. The decoded cells are
    log-normalised; the pseudobulk is :math:`\log(1 + \mathrm{mean}(\mathrm{expm1}(\cdot)))`, the
    definition of :func:`scmech.data.pseudobulk`. Perturbations without training cells cannot be predicted.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata` (with ``batch_key`` for the held-out batch setting).
    n_hidden
        Hidden units of scGen's encoder and decoder.
    n_latent
        Latent dimension.
    n_layers
        Hidden layers.
    dropout_rate
        Dropout rate.
    **model_kwargs
        Passed to :class:`pertpy.tools.Scgen`.

    Examples
    --------
    >>> sp = scmech.tl.split(adata, "batch", batch_key="bio_rep", test_conditions=["rep_3"])
    >>> scmech.tl.ScGen.setup_anndata(adata, batch_key="bio_rep")
    >>> model = scmech.tl.ScGen(adata)
    >>> model.train(max_epochs=50, datasplitter_kwargs={"external_indexing": sp.external_indexing})
    >>> pred = model.predict(sp.test_conditions, batch="rep_3")
    """

    def __init__(
        self,
        adata: AnnData | MuData,
        n_hidden: int = 800,
        n_latent: int = 100,
        n_layers: int = 2,
        dropout_rate: float = 0.2,
        **model_kwargs,
    ) -> None:
        _import_scgen()
        super().__init__(adata)
        if hasattr(adata, "mod"):
            msg = "ScGen takes an AnnData; pass the RNA modality (mdata['rna']) registered with setup_anndata."
            raise TypeError(msg)
        self._scgen_kwargs = {
            "n_hidden": n_hidden,
            "n_latent": n_latent,
            "n_layers": n_layers,
            "dropout_rate": dropout_rate,
            **model_kwargs,
        }
        self.scgen_ = None
        self._model_summary_string = (
            f"ScGen adapter (pertpy.tools.Scgen): n_hidden={n_hidden}, n_latent={n_latent}, n_layers={n_layers}."
        )
        self.init_params_ = self._get_init_params(locals())

    def _log_normalised(self, idx: np.ndarray) -> np.ndarray:
        import scipy.sparse as sp

        x, _ = self._expression_matrix(self.adata)
        sub = x[idx]
        sub = sub.toarray() if sp.issparse(sub) else np.asarray(sub)
        sub = sub.astype(np.float64)
        if not self._setup().get("counts", True):
            return sub.astype(np.float32)
        # proportions of the registered genes, the space every prediction is scored in
        lib = np.maximum(sub.sum(axis=1), 1.0)
        return np.log1p(TARGET_SUM * sub / lib[:, None]).astype(np.float32)

    def _cell_types(self, idx: np.ndarray) -> np.ndarray:
        key = self._setup().get("batch_key")
        if key is None:
            return np.full(len(idx), "all", dtype=object)
        return self.adata.obs[key].astype(str).to_numpy()[idx]

    def _training_anndata(self, idx: np.ndarray, labels: np.ndarray) -> AnnData:
        """Log-normalised training cells with scGen's ``condition`` (perturbation) and ``cell_type`` (batch)."""
        _, var_names = self._expression_matrix(self.adata)
        return ad.AnnData(
            X=self._log_normalised(idx),
            obs=pd.DataFrame(
                {"condition": pd.Categorical(labels), "cell_type": pd.Categorical(self._cell_types(idx))},
                index=pd.Index(np.asarray(self.adata.obs_names)[idx]).astype(str),
            ),
            var=pd.DataFrame(index=pd.Index(var_names).astype(str)),
        )

    def train(
        self,
        max_epochs: int | None = None,
        *,
        batch_size: int = 128,
        datasplitter_kwargs: dict | None = None,
        plan_kwargs: dict | None = None,
        **trainer_kwargs,
    ) -> None:
        """Train scGen on the training cells.

        Parameters
        ----------
        max_epochs
            Epochs (scvi-tools' heuristic when ``None``).
        batch_size
            Minibatch size.
        datasplitter_kwargs
            ``{"external_indexing": [train, validation, test]}``: scGen trains on the training indices only
            (with its own random validation subset of them).
        plan_kwargs
            Passed to scGen's training plan.
        **trainer_kwargs
            Passed to ``Scgen.train`` (e.g. ``accelerator``, ``early_stopping``).
        """
        scgen_cls = _import_scgen()
        idx = self._train_indices(datasplitter_kwargs, with_validation=False)  # a network: validation monitors it
        design = self._design(self.adata)
        labels = design.labels[idx]
        if design.control_label not in set(labels.tolist()):
            msg = f"No control cells ({design.control_label!r}) among the training cells; scGen needs them."
            raise ValueError(msg)
        sub = self._training_anndata(idx, labels)
        scgen_cls.setup_anndata(sub, batch_key="condition", labels_key="cell_type")
        model = scgen_cls(sub, **self._scgen_kwargs)
        model.train(max_epochs=max_epochs, batch_size=batch_size, plan_kwargs=plan_kwargs, **trainer_kwargs)
        self.scgen_ = model
        self._sub = sub
        self._latent = np.asarray(model.get_latent_representation(sub))
        conds = [design.control_label, *sorted(set(labels.tolist()) - {design.control_label})]
        self._pb = pd.DataFrame(
            self._pseudobulk(idx, labels, conds), index=pd.Index(conds, name="condition"), columns=sub.var_names
        )
        self._n_train_cells = pd.Series(labels).value_counts().reindex(conds)
        self._train_idx = idx
        self._trained_targets = {t for c in conds[1:] for t in self._canonical(c)[1]}
        self.is_trained_ = True

    def _delta(self, label: str) -> np.ndarray:
        obs = self._sub.obs
        cond = obs["condition"].astype(str).to_numpy()
        ct = obs["cell_type"].astype(str).to_numpy()
        ctrl = self._control()
        diffs = []
        for c in sorted(set(ct[cond == label].tolist())):
            p_mask = (cond == label) & (ct == c)
            c_mask = (cond == ctrl) & (ct == c)
            if c_mask.any():
                diffs.append(self._latent[p_mask].mean(0) - self._latent[c_mask].mean(0))
        if not diffs:
            msg = f"No batch holds both training cells of {label!r} and controls; scGen has no latent shift for it."
            raise KeyError(msg)
        return np.mean(diffs, axis=0)

    def _decode(self, z: np.ndarray) -> np.ndarray:
        px = self.scgen_.module.as_bound().generative(z)["px"]
        return np.clip(np.asarray(px, dtype=np.float64), 0, None)

    def predict(
        self,
        perturbations: str | Sequence[str] | None = None,
        *,
        media: str | Sequence[str] | None = None,
        time: float | Sequence[float] | None = None,
        batch: str | None = None,
        n_cells: int | None = None,
        from_cells: Sequence[int] | np.ndarray | None = None,
        return_mean: bool = True,
        adata: AnnData | None = None,
        random_state: int | None = None,
        **kwargs,
    ) -> AnnData:
        r"""Predict perturbations in a batch by latent arithmetic from that batch's training controls.

        Parameters
        ----------
        perturbations
            Labels to predict; every training condition when ``None``.
        media
            Not supported (must be ``None``).
        time
            Not supported (must be ``None``).
        batch
            Batch whose training controls are shifted (e.g. the held-out replicate); all training controls
            when ``None``.
        n_cells
            Number of starting controls (a random subset; up to 500 when ``None``).
        from_cells
            Indices of training cells of ``adata`` to start from instead of the controls.
        return_mean
            One row per condition (pseudobulk of the decoded cells) when ``True``; one row per decoded cell
            otherwise (``X`` log-normalised values, ``obs["source_cell"]``).
        adata
            Ignored except for a gene check; the registered data are used.
        random_state
            Seed of the subset of starting cells (``scvi.settings.seed`` when ``None``).
        **kwargs
            ``batch_size`` and ``anchor`` of ``SemiMechVI.predict``, accepted and ignored; ``media_time`` and
            ``efficacy`` must be ``None``; any other keyword raises :class:`TypeError`.

        Returns
        -------
        AnnData with the layout of ``SemiMechVI.predict``.
        """
        self._check_if_trained(warn=False)
        unknown = sorted(set(kwargs) - {"batch_size", "anchor", "media_time", "efficacy"})
        if unknown:
            msg = f"ScGen.predict() got unexpected keyword argument(s) {unknown}."
            raise TypeError(msg)
        for name in ("media_time", "efficacy"):
            if kwargs.get(name) is not None:
                msg = f"{name}={kwargs[name]!r}: the ScGen adapter has no model of it; drop the argument."
                raise ValueError(msg)
        if media is not None or time is not None:
            msg = "The ScGen adapter predicts across batches only; media and time are not supported."
            raise ValueError(msg)
        var_names = self._training_genes(adata, "ScGen predicts")
        seed = (settings.seed if settings.seed is not None else 0) if random_state is None else random_state
        rng = np.random.default_rng(seed)
        start = self._start_cells(batch, from_cells, n_cells, rng)
        if perturbations is None:
            perturbations = list(self._pb.index)
        elif isinstance(perturbations, str):
            perturbations = [perturbations]
        rows, obs_rows = self._decoded_rows(perturbations, start, batch, return_mean=return_mean)
        prov = self._provenance(self._value_base(), n_starting_cells=len(start), random_state=int(seed))
        out = _prediction_anndata(np.vstack(rows), obs_rows, var_names, prov)
        if not return_mean:
            src = np.tile(np.asarray(self._sub.obs_names)[start], len(perturbations))
            out.obs["source_cell"] = src
            out.obs.index = [f"{lab}|{c}" for lab, c in zip(out.obs["perturbation"], src, strict=True)]
        return out

    def _start_cells(
        self,
        batch: str | None,
        from_cells: Sequence[int] | np.ndarray | None,
        n_cells: int | None,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """Positions (among the training cells) of the cells whose latents are shifted: controls or ``from_cells``."""
        obs = self._sub.obs
        cond = obs["condition"].astype(str).to_numpy()
        ct = obs["cell_type"].astype(str).to_numpy()
        if from_cells is not None:
            pos = pd.Index(self._train_idx).get_indexer(np.asarray(from_cells, dtype=np.int64))
            if (pos < 0).any():
                msg = "from_cells must index training cells of adata (ScGen encodes the cells it was trained on)."
                raise ValueError(msg)
            start = pos
        else:
            mask = cond == self._control()
            if batch is not None:
                if str(batch) not in set(ct.tolist()):
                    msg = f"Batch {batch!r} has no training cells (batches: {sorted(set(ct.tolist()))})."
                    raise KeyError(msg)
                mask &= ct == str(batch)
            start = np.flatnonzero(mask)
            if len(start) == 0:
                msg = f"No training control cells in batch {batch!r} to start from."
                raise KeyError(msg)
        cap = 500 if (n_cells is None and from_cells is None) else n_cells
        if cap is not None and len(start) > cap:
            start = np.sort(rng.choice(start, size=cap, replace=False))
        return start

    def _decoded_rows(
        self, perturbations: Sequence[str], start: np.ndarray, batch: str | None, *, return_mean: bool
    ) -> tuple[list[np.ndarray], list[dict]]:
        """Decode each perturbation from the starting latents: cells (or their pseudobulk) and their ``obs``."""
        z0 = self._latent[start]
        rows, obs_rows = [], []
        for p in perturbations:
            label, targets = self._canonical(p)
            if targets and label not in self._pb.index:
                msg = f"ScGen cannot predict {label!r}: it has no training cells (scGen needs the perturbation seen)."
                raise KeyError(msg)
            delta = self._delta(label) if targets else 0.0
            cells = self._decode(z0 + delta)
            info = {
                "perturbation": label,
                "media": None,
                "time": np.nan,
                "media_time": np.nan,
                "batch": batch if batch is not None else "source cells",
                "n_cells": len(start),
                "unseen_targets": "",
                "anchored": False,
            }
            if return_mean:
                rows.append(np.log1p(np.expm1(cells).mean(0, keepdims=True)))
                obs_rows.append(info)
            else:
                rows.append(cells)
                obs_rows.extend([info] * len(start))
        return rows, obs_rows
