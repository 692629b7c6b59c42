r"""Baselines with the interface of :class:`~scmech.model.SemiMechVI`.

Each baseline registers data with the same ``setup_anndata`` as SemiMechVI, fits on the training cells of a
split (``train(datasplitter_kwargs={"external_indexing": split.external_indexing})``) and returns from
``predict`` an AnnData with exactly the layout of ``SemiMechVI.predict(return_mean=True)``: one row per
condition, ``X`` the predicted pseudobulk :math:`\log(1 + 10^4\bar\rho)` (the definition of
:func:`scmech.data.pseudobulk`), ``layers["expression"]`` its ``expm1``.

Definitions (ANCHORS §5), in log-pseudobulk space with :math:`\mu_{\mathrm{ctrl}}` the pseudobulk of the
training controls and :math:`\mu_q` that of training condition :math:`q`:

- :class:`ControlMean`: :math:`\hat\mu_p = \mu_{\mathrm{ctrl}}`.
- :class:`TrainMean`: :math:`\hat\mu_p = \frac{1}{|T|}\sum_{q \in T}\mu_q` over training perturbations.
- :class:`Additive`: :math:`\hat\mu_{A+B} = \mu_{\mathrm{ctrl}} + (\mu_A - \mu_{\mathrm{ctrl}})
  + (\mu_B - \mu_{\mathrm{ctrl}})`.
- :class:`LinearModel`: the double-ridge model of Ahlmann-Eltze, Huber & Anders (2025).
- :class:`ScGen`: latent arithmetic with :class:`pertpy.tools.Scgen` (optional extra).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

import anndata as ad
import numpy as np
import pandas as pd
from scvi import REGISTRY_KEYS, settings
from scvi.model.base import BaseModelClass

from scmech._constants import SCMECH_ADATA_KEYS, SCMECH_REGISTRY_KEYS, TARGET_SUM
from scmech.data._design import canonical_label, parse_condition
from scmech.data._embedding import pseudobulk_gene_embedding, solve_y_axb
from scmech.data._fields import perturbation_state
from scmech.data._pseudobulk import normalized_mean
from scmech.model._setup import PerturbationSetupMixin

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData
    from mudata import MuData

logger = logging.getLogger(__name__)
K = SCMECH_REGISTRY_KEYS

__all__ = ["Additive", "ControlMean", "LinearModel", "ScGen", "TrainMean"]

_VALUE = "log1p(1e4 * mean normalised expression)"


class _PseudobulkBaseline(PerturbationSetupMixin, BaseModelClass):
    """Shared machinery: training pseudobulks, request parsing, contexts and the prediction AnnData."""

    def __init__(self, adata: AnnData | MuData) -> None:
        super().__init__(adata)
        self.is_trained_ = False
        self._pb: pd.DataFrame | None = None
        self._n_train_cells: pd.Series | None = None
        self._train_idx: np.ndarray | None = None
        self._trained_targets: set[str] = set()

    # ------------------------------------------------------------------ scvi-tools plumbing
    def to_device(self, device: Any) -> None:
        """Baselines run on numpy; there is nothing to move."""

    @property
    def device(self) -> str:
        """Baselines run on the CPU."""
        return "cpu"

    def save(self, *args, **kwargs) -> None:
        """Baselines are not saved: they refit in seconds from the data."""
        msg = f"{type(self).__name__} is a closed-form baseline and is not saved; refit it with .train()."
        raise NotImplementedError(msg)

    @classmethod
    def load(cls, *args, **kwargs):
        """Baselines are never saved, so there is nothing to load (and no file is ever unpickled)."""
        msg = f"{cls.__name__} is a closed-form baseline and is never saved; create it and refit it with .train()."
        raise NotImplementedError(msg)

    load_registry = load
    view_setup_args = load
    convert_legacy_save = load

    # ------------------------------------------------------------------ registry access
    def _setup(self) -> dict:
        return self.adata_manager.registry["setup_args"]

    def _pstate(self) -> dict:
        return perturbation_state(self.adata_manager)

    def _control(self) -> str:
        return self._pstate()["control_label"]

    def _canonical(self, label: str) -> tuple[str, tuple[str, ...]]:
        st = self._pstate()
        targets = parse_condition(str(label), separator=st["separator"], control_label=st["control_label"])
        return canonical_label(targets, separator=st["separator"], control_label=st["control_label"]), targets

    def _pseudobulk(self, idx: np.ndarray, labels: np.ndarray, groups: Sequence[str]) -> np.ndarray:
        """Log pseudobulk (groups x genes) of cells ``idx`` grouped by ``labels`` (one label per cell of idx).

        Proportions of the registered genes, as :func:`scmech.tl.evaluate` measures them: a registered size factor
        (e.g. the whole transcriptome's library of a gene panel) concerns the likelihood of a count model, not
        the space predictions live in.
        """
        x, _ = self._expression_matrix(self.adata)
        counts = self._setup().get("counts", True)
        mean = normalized_mean(x[idx], labels, groups, counts=counts)
        return np.log1p(TARGET_SUM * mean) if counts else mean

    # ------------------------------------------------------------------ training
    def _train_indices(self, datasplitter_kwargs: dict | None) -> np.ndarray:
        design = self._design(self.adata)
        fit = design.fit_mask
        ext = (datasplitter_kwargs or {}).get("external_indexing")
        if ext is None:
            idx = np.flatnonzero(fit)
            val = test = np.zeros(0, dtype=np.int64)
        else:
            if len(ext) == 0:
                msg = (
                    "external_indexing is empty; pass [train, validation, test] index arrays "
                    "(e.g. split.external_indexing)."
                )
                raise ValueError(msg)
            idx = np.asarray(ext[0], dtype=np.int64)
            val = np.asarray(ext[1], dtype=np.int64) if len(ext) > 1 else np.zeros(0, dtype=np.int64)
            test = np.asarray(ext[2], dtype=np.int64) if len(ext) > 2 else np.zeros(0, dtype=np.int64)
            if len(idx) and (idx.min() < 0 or idx.max() >= len(fit)):
                msg = f"external_indexing[0] holds indices outside 0..{len(fit) - 1}."
                raise ValueError(msg)
            idx = np.unique(idx[fit[idx]])
        if len(idx) == 0:
            msg = "No cells to train on: the training indices are empty after removing unassigned cells."
            raise ValueError(msg)
        self.train_indices_, self.validation_indices_, self.test_indices_ = idx, val, test
        return idx

    def train(
        self,
        max_epochs: int | None = None,
        *,
        datasplitter_kwargs: dict | None = None,
        **kwargs,
    ) -> None:
        """Fit the baseline on the training cells.

        Parameters
        ----------
        max_epochs
            Ignored (closed-form fit); accepted for interface compatibility.
        datasplitter_kwargs
            ``{"external_indexing": [train, validation, test]}`` (e.g. ``split.external_indexing``): the fit
            uses the training indices only. All assigned cells when ``None``.
        **kwargs
            Ignored (``batch_size``, ``plan_kwargs``, ``enable_progress_bar``, ...).
        """
        if kwargs:
            logger.debug("%s.train ignores %s", type(self).__name__, sorted(kwargs))
        self._check_registered_data(values=True)
        idx = self._train_indices(datasplitter_kwargs)
        design = self._design(self.adata)
        labels = design.labels[idx]
        ctrl = design.control_label
        present = set(labels.tolist())
        if ctrl not in present:
            msg = (
                f"No control cells ({ctrl!r}) among the training cells; baselines need training controls. "
                "Keep controls in training (scmech.tl.split does by default)."
            )
            raise ValueError(msg)
        conds = [ctrl, *sorted(present - {ctrl})]
        pb = self._pseudobulk(idx, labels, conds)
        _, var_names = self._expression_matrix(self.adata)
        self._pb = pd.DataFrame(pb, index=pd.Index(conds, name="condition"), columns=pd.Index(var_names).astype(str))
        self._n_train_cells = pd.Series(labels).value_counts().reindex(conds)
        self._train_idx = idx
        self._trained_targets = {t for c in conds[1:] for t in self._canonical(c)[1]}
        self._shift_cache = {}
        self._fit()
        self.is_trained_ = True

    def _fit(self) -> None:
        """Model-specific fit on ``self._pb``."""

    # ------------------------------------------------------------------ prediction
    @property
    def training_conditions_(self) -> list[str]:
        """Conditions (control first) of the training cells."""
        self._check_if_trained(warn=False)
        return list(self._pb.index)

    def _predict_one(self, label: str, targets: tuple[str, ...]) -> tuple[np.ndarray, int]:
        raise NotImplementedError

    def _context_values(self, key: str | None, registry_key: str) -> np.ndarray | None:
        if key is None:
            return None
        return self._obs(self.adata, registry_key)[key].to_numpy()

    def _context_shift(self, batch, media, time) -> tuple[np.ndarray, str]:
        """Log-space offset of the training controls of a context (batch, medium, time) from all controls."""
        if batch is None and media is None and time is None:
            return np.zeros(self._pb.shape[1]), ""
        cache = self.__dict__.setdefault("_shift_cache", {})
        ckey = (None if batch is None else str(batch), None if media is None else str(media), time)
        if ckey in cache:
            return cache[ckey]
        setup = self._setup()
        idx = self._train_idx
        design = self._design(self.adata)
        mask = design.is_control[idx].copy()
        parts = []
        for value, key, reg, name in (
            (batch, setup.get("batch_key"), REGISTRY_KEYS.BATCH_KEY, "batch"),
            (media, setup.get("media_key"), K.MEDIA_KEY, "media"),
            (time, setup.get("time_key"), K.TIME_KEY, "time"),
        ):
            if value is None:
                continue
            if key is None:
                msg = (
                    f"`{name}`={value!r} was given, but no {name} key was registered; register it with "
                    f"setup_anndata(..., {name}_key=...) or drop the argument."
                )
                raise ValueError(msg)
            col = self._context_values(key, reg)[idx]
            if name == "time":
                mask &= np.isclose(col.astype(np.float64), float(value))
            else:
                mask &= col.astype(str) == str(value)
            parts.append(f"{name}={value}")
        if not mask.any():
            msg = (
                f"No training control cells with {', '.join(parts)}; the baseline shifts predictions by the "
                "controls of the requested context and needs some there (keep that context's controls in training)."
            )
            raise KeyError(msg)
        sub = idx[mask]
        ctrl = self._control()
        pb_ctx = self._pseudobulk(sub, np.full(len(sub), ctrl, dtype=object), [ctrl])[0]
        cache[ckey] = (pb_ctx - self._pb.loc[ctrl].to_numpy(), ", ".join(parts))
        return cache[ckey]

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
        **kwargs,
    ) -> AnnData:
        r"""Predict the pseudobulk of conditions, with the layout of ``SemiMechVI.predict``.

        Parameters
        ----------
        perturbations
            Labels to predict (``"STAT1"``, ``"STAT1+JAK2"``, the control label). When ``None``: every
            registered condition the baseline can predict (the others are skipped and logged); an explicit
            request the baseline cannot answer raises :class:`KeyError`.
        media
            Medium (one, or one per perturbation): the prediction is shifted by the offset of the training
            controls in that medium from all training controls.
        time
            Time point (one, or one per perturbation), handled like ``media``.
        batch
            Batch, handled like ``media`` (e.g. the held-out replicate, whose controls are in training).
        n_cells
            Ignored (baselines predict pseudobulks); accepted for interface compatibility.
        from_cells
            Ignored, as ``n_cells``.
        return_mean
            Must be ``True``: baselines predict pseudobulks, not cells.
        adata
            Ignored except for a check that its genes match; baselines predict from their training pseudobulks.
        **kwargs
            Ignored (``batch_size``, ``random_state``, ...).

        Returns
        -------
        AnnData with one row per condition: ``X`` the predicted :math:`\log(1 + 10^4\bar\rho)` (float32),
        ``layers["expression"]`` its ``expm1``, ``obs`` columns ``perturbation``, ``media``, ``time``,
        ``media_time``, ``batch``, ``n_cells`` (training cells the prediction draws on) and
        ``unseen_targets``, and ``uns["scmech"]["prediction"]`` the provenance.
        """
        self._check_if_trained(warn=False)
        if not return_mean:
            msg = (
                f"{type(self).__name__} predicts pseudobulks, not cells; use return_mean=True (per-cell predictions "
                "come from SemiMechVI or ScGen)."
            )
            raise NotImplementedError(msg)
        if kwargs:
            logger.debug("%s.predict ignores %s", type(self).__name__, sorted(kwargs))
        self._check_registered_data()
        _, var_names = self._expression_matrix(self.adata)
        if adata is not None and list(map(str, adata.var_names)) != list(map(str, var_names)):
            msg = "`adata` has other genes than the training data; baselines predict the training genes only."
            raise ValueError(msg)
        explicit = perturbations is not None
        if perturbations is None:
            perturbations = list(self._pstate()["conditions"])
        elif isinstance(perturbations, str):
            perturbations = [perturbations]
        perturbations = list(perturbations)
        n = len(perturbations)
        med = _broadcast(media, n, "media")
        tim = _broadcast(time, n, "time")
        rows, obs_rows, skipped = [], [], []
        for p, m, t in zip(perturbations, med, tim, strict=True):
            label, targets = self._canonical(p)
            try:
                value, n_used = self._predict_one(label, targets)
            except KeyError as e:
                if explicit:
                    raise
                skipped.append((label, str(e).strip("'\"")))
                continue
            shift, _ = self._context_shift(batch, m, t)
            rows.append(value + shift)
            obs_rows.append(
                {
                    "perturbation": label,
                    "media": m,
                    "time": np.nan if t is None else float(t),
                    "media_time": np.nan,
                    "batch": batch if batch is not None else "training cells",
                    "n_cells": int(n_used),
                    "unseen_targets": ",".join(t_ for t_ in targets if t_ not in self._trained_targets),
                    "anchored": False,
                }
            )
        if skipped:
            logger.info(
                "%s cannot predict %d registered condition(s), skipped: %s",
                type(self).__name__,
                len(skipped),
                [s[0] for s in skipped][:10],
            )
        if not rows:
            msg = f"{type(self).__name__} can predict none of the requested conditions ({skipped[:3]})."
            raise KeyError(msg)
        return _prediction_anndata(
            np.vstack(rows),
            obs_rows,
            var_names,
            self._provenance(skipped=[s[0] for s in skipped]),
        )

    def _provenance(self, **extra) -> dict:
        return {
            "model": type(self).__name__,
            "value": _VALUE,
            "n_train_cells": int(len(self._train_idx)),
            "train_conditions": list(self._pb.index),
            "params": dict(self.init_params_["non_kwargs"]),
            **extra,
        }

    def _require(self, cond: str) -> np.ndarray:
        if cond not in self._pb.index:
            msg = f"Condition {cond!r} has no training cells."
            raise KeyError(msg)
        return self._pb.loc[cond].to_numpy()


def _broadcast(v, n: int, name: str) -> list:
    if v is None or isinstance(v, str | float | int | np.floating | np.integer):
        return [v] * n
    v = list(v)
    if len(v) != n:
        msg = f"`{name}` has {len(v)} values for {n} perturbations; give one value or one per perturbation."
        raise ValueError(msg)
    return v


def _prediction_anndata(logx: np.ndarray, obs_rows: list[dict], var_names, provenance: dict) -> AnnData:
    """AnnData with the layout of ``SemiMechVI.predict(return_mean=True)``."""
    logx = np.asarray(logx, dtype=np.float64)
    expr = np.expm1(logx)
    obs = pd.DataFrame(obs_rows)
    index = [
        f"{r['perturbation']}|{r['media']}|{r['time']:g}"
        if (r["media"] is not None or np.isfinite(r["time"]))
        else r["perturbation"]
        for r in obs_rows
    ]
    obs.index = pd.Index(index).astype(str)
    if not obs.index.is_unique:
        obs.index = [f"{i}#{k}" for k, i in enumerate(obs.index)]
    for c in ("perturbation", "media", "batch"):
        obs[c] = obs[c].astype(str).astype("category")
    obs["n_cells"] = obs["n_cells"].astype(np.int64)
    obs["time"] = obs["time"].astype(np.float64)
    obs["media_time"] = obs["media_time"].astype(np.float64)
    out = ad.AnnData(
        X=logx.astype(np.float32),
        obs=obs,
        var=pd.DataFrame(index=pd.Index(var_names, dtype=str).copy()),
        layers={"expression": expr.astype(np.float32)},
    )
    out.uns[SCMECH_ADATA_KEYS.UNS] = {"prediction": provenance}
    return out


# ---------------------------------------------------------------------- the baselines
class ControlMean(_PseudobulkBaseline):
    r"""Control-mean baseline: every perturbation is predicted as the training controls' pseudobulk.

    :math:`\hat\mu_p = \mu_{\mathrm{ctrl}}` ("no change"). Its Pearson Δ is undefined (a constant change);
    :func:`scmech.tl.evaluate` reports NaN for it.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata` (the same registration as SemiMechVI).

    Examples
    --------
    >>> scmech.tl.ControlMean.setup_anndata(adata, perturbation_key="perturbation", control_label="NT")
    >>> model = scmech.tl.ControlMean(adata)
    >>> model.train(datasplitter_kwargs={"external_indexing": split.external_indexing})
    >>> pred = model.predict(split.test_conditions)
    """

    def __init__(self, adata: AnnData | MuData) -> None:
        super().__init__(adata)
        self._model_summary_string = "ControlMean baseline: predicts the training controls' pseudobulk."
        self.init_params_ = self._get_init_params(locals())

    def _predict_one(self, label, targets):
        ctrl = self._control()
        return self._require(ctrl), int(self._n_train_cells[ctrl])


class TrainMean(_PseudobulkBaseline):
    r"""Train-perturbation mean (Systema's "non-control mean").

    :math:`\hat\mu_p = \frac{1}{|T|}\sum_{q\in T}\mu_q`, the mean log pseudobulk over the training
    perturbations :math:`T` (control excluded). It captures the systematic shift shared by perturbations.
    The control label is predicted as the control pseudobulk.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.

    Examples
    --------
    >>> scmech.tl.TrainMean.setup_anndata(adata)
    >>> model = scmech.tl.TrainMean(adata)
    >>> model.train(datasplitter_kwargs={"external_indexing": split.external_indexing})
    >>> pred = model.predict(split.test_conditions)
    """

    def __init__(self, adata: AnnData | MuData) -> None:
        super().__init__(adata)
        self._model_summary_string = "TrainMean baseline: mean pseudobulk of the training perturbations."
        self.init_params_ = self._get_init_params(locals())

    def _fit(self) -> None:
        perts = [c for c in self._pb.index if c != self._control()]
        if not perts:
            msg = "TrainMean needs training perturbations besides the control; the training cells hold none."
            raise ValueError(msg)
        self.train_mean_ = self._pb.loc[perts].to_numpy().mean(axis=0)
        self._n_perturbed = int(self._n_train_cells.loc[perts].sum())

    def _predict_one(self, label, targets):
        if not targets:
            return self._require(label), int(self._n_train_cells[label])
        return self.train_mean_, self._n_perturbed


class Additive(_PseudobulkBaseline):
    r"""Additive baseline for combinations.

    :math:`\hat\mu_{A+B} = \mu_{\mathrm{ctrl}} + (\mu_A - \mu_{\mathrm{ctrl}}) + (\mu_B - \mu_{\mathrm{ctrl}})`
    in log-pseudobulk space, from the training singles (any number of targets). Conditions seen in training
    (singles, combinations, the control) are predicted as their own training pseudobulk. A condition with a
    target never perturbed alone in training raises :class:`KeyError`.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.

    Examples
    --------
    >>> scmech.tl.Additive.setup_anndata(adata)
    >>> model = scmech.tl.Additive(adata)
    >>> model.train(datasplitter_kwargs={"external_indexing": split.external_indexing})
    >>> pred = model.predict(["STAT1+JAK2"])
    """

    def __init__(self, adata: AnnData | MuData) -> None:
        super().__init__(adata)
        self._model_summary_string = "Additive baseline: control plus the sum of the singles' changes."
        self.init_params_ = self._get_init_params(locals())

    def _predict_one(self, label, targets):
        if label in self._pb.index:
            return self._pb.loc[label].to_numpy(), int(self._n_train_cells[label])
        missing = [t for t in targets if t not in self._pb.index]
        if missing:
            msg = (
                f"Additive cannot predict {label!r}: target(s) {missing} were not perturbed alone in training. "
                "It needs every single of a combination among the training conditions."
            )
            raise KeyError(msg)
        ctrl = self._control()
        base = self._pb.loc[ctrl].to_numpy()
        value = base + sum(self._pb.loc[t].to_numpy() - base for t in targets)
        n_used = int(self._n_train_cells[ctrl] + sum(self._n_train_cells[t] for t in targets))
        return value, n_used


class LinearModel(_PseudobulkBaseline):
    r"""Linear model of Ahlmann-Eltze, Huber & Anders (Nat Methods 2025).

    Following ``benchmark/src/run_linear_pretrained_model.R`` of the paper's repository: pseudobulk the
    training conditions (control included); the gene embedding :math:`G` (genes x K) holds the scores
    :math:`U_K S_K` of a PCA of the training pseudobulk with genes as observations and each condition
    centred (or ``adata.varm[gene_embedding]``). A perturbation of gene :math:`k` is embedded as :math:`G`'s
    row :math:`k` (the control as 0; a combination as the sum of its targets' rows). With :math:`Y` the
    training changes vs control (genes x conditions, the control column included, combinations and targets
    that are not genes left out as in the script) and :math:`b` its row means,

    .. math::

        W = (G^\top G + \lambda I)^{-1} G^\top (Y - b\mathbf 1^\top) P^\top (P P^\top + \lambda I)^{-1},
        \qquad \hat\mu_p = G W P_p + b + \mu_{\mathrm{ctrl}}.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    n_components
        Number of principal components :math:`K` (``pca_dim``, default 10).
    ridge
        Ridge penalty :math:`\lambda` on both sides (default 0.1).
    gene_embedding
        ``"training_data"`` (PCA of the training pseudobulk) or a ``varm`` key of a genes x K embedding.

    Examples
    --------
    >>> scmech.tl.LinearModel.setup_anndata(adata)
    >>> model = scmech.tl.LinearModel(adata, n_components=10, ridge=0.1)
    >>> model.train(datasplitter_kwargs={"external_indexing": split.external_indexing})
    >>> pred = model.predict(split.test_conditions)
    """

    def __init__(
        self,
        adata: AnnData | MuData,
        n_components: int = 10,
        ridge: float = 0.1,
        gene_embedding: Literal["training_data"] | str = "training_data",
    ) -> None:
        super().__init__(adata)
        if int(n_components) < 1:
            msg = f"n_components must be >= 1, got {n_components}."
            raise ValueError(msg)
        if not (np.isfinite(ridge) and ridge >= 0):
            msg = f"ridge must be a finite penalty >= 0, got {ridge}."
            raise ValueError(msg)
        if gene_embedding != "training_data" and gene_embedding not in self._rna().varm:
            msg = (
                f"gene_embedding {gene_embedding!r} is neither 'training_data' nor a key of adata.varm "
                f"(keys: {list(self._rna().varm.keys())})."
            )
            raise KeyError(msg)
        self.n_components = int(n_components)
        self.ridge = float(ridge)
        self.gene_embedding = gene_embedding
        self._model_summary_string = (
            f"LinearModel baseline (Ahlmann-Eltze et al. 2025): K={n_components}, ridge={ridge}, "
            f"gene embedding {gene_embedding!r}."
        )
        self.init_params_ = self._get_init_params(locals())

    def _rna(self):
        f = self._field(REGISTRY_KEYS.X_KEY)
        mod = getattr(f, "mod_key", None)
        return self.adata.mod[mod] if (mod is not None and hasattr(self.adata, "mod")) else self.adata

    def _fit(self) -> None:
        pb = self._pb
        genes = list(pb.columns)
        if self.gene_embedding == "training_data":
            g = pseudobulk_gene_embedding(pb.to_numpy(), n_components=self.n_components)
        else:
            g = np.asarray(self._rna().varm[self.gene_embedding], dtype=np.float64)
            if g.ndim != 2 or g.shape[0] != len(genes):
                msg = f"adata.varm[{self.gene_embedding!r}] must be genes x K, got shape {g.shape}."
                raise ValueError(msg)
        pos = {gene: i for i, gene in enumerate(genes)}
        ctrl = self._control()
        base = pb.loc[ctrl].to_numpy()
        cols, p_cols = [], []
        for c in pb.index:
            label, targets = self._canonical(c)
            if not targets:
                cols.append(c)
                p_cols.append(np.zeros(g.shape[1]))
            elif len(targets) == 1 and targets[0] in pos:
                cols.append(c)
                p_cols.append(g[pos[targets[0]]])
        if len(cols) < 2:
            msg = (
                "LinearModel needs training perturbations of single targets that are genes of the data "
                f"(training conditions: {list(pb.index)[:10]}); none were found."
            )
            raise ValueError(msg)
        y = (pb.loc[cols].to_numpy() - base).T  # genes x conditions
        p = np.stack(p_cols, axis=1)  # K x conditions
        coef, center = solve_y_axb(y, g, p, a_ridge=self.ridge, b_ridge=self.ridge)
        self.gene_embedding_ = g
        self.coef_ = coef
        self.center_ = center
        self.fit_conditions_ = cols
        self._gene_pos = pos
        self._n_fit_cells = int(self._n_train_cells.loc[cols].sum())

    def perturbation_embedding(self, targets: Sequence[str]) -> np.ndarray:
        """Embedding of a perturbation: the sum of its targets' rows of the gene embedding (0 for control)."""
        self._check_if_trained(warn=False)
        missing = [t for t in targets if t not in self._gene_pos]
        if missing:
            msg = (
                f"LinearModel cannot embed target(s) {missing}: they are not genes of the data, so they have no "
                "row in the gene embedding. Predict measured targets only."
            )
            raise KeyError(msg)
        out = np.zeros(self.gene_embedding_.shape[1])
        for t in targets:
            out += self.gene_embedding_[self._gene_pos[t]]
        return out

    def _predict_one(self, label, targets):
        pvec = self.perturbation_embedding(targets)
        base = self._pb.loc[self._control()].to_numpy()
        return self.gene_embedding_ @ self.coef_ @ pvec + self.center_ + base, self._n_fit_cells


# ---------------------------------------------------------------------- scGen adapter (optional)
def _import_scgen():
    try:
        from pertpy.tools import Scgen
    except ImportError as e:
        msg = f"ScGen needs pertpy: pip install 'scmech[pertpy]' ({e})."
        raise ImportError(msg) from e
    return Scgen


class ScGen(_PseudobulkBaseline):
    r"""scGen (via :class:`pertpy.tools.Scgen`) for held-out batches: latent arithmetic from controls.

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
        idx = self._train_indices(datasplitter_kwargs)
        design = self._design(self.adata)
        labels = design.labels[idx]
        if design.control_label not in set(labels.tolist()):
            msg = f"No control cells ({design.control_label!r}) among the training cells; scGen needs them."
            raise ValueError(msg)
        _, var_names = self._expression_matrix(self.adata)
        sub = ad.AnnData(
            X=self._log_normalised(idx),
            obs=pd.DataFrame(
                {"condition": pd.Categorical(labels), "cell_type": pd.Categorical(self._cell_types(idx))},
                index=pd.Index(np.asarray(self.adata.obs_names)[idx]).astype(str),
            ),
            var=pd.DataFrame(index=pd.Index(var_names).astype(str)),
        )
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
            Ignored.

        Returns
        -------
        AnnData with the layout of ``SemiMechVI.predict``.
        """
        self._check_if_trained(warn=False)
        if media is not None or time is not None:
            msg = "The ScGen adapter predicts across batches only; media and time are not supported."
            raise ValueError(msg)
        _, var_names = self._expression_matrix(self.adata)
        if adata is not None and list(map(str, adata.var_names)) != list(map(str, var_names)):
            msg = "`adata` has other genes than the training data; ScGen predicts the training genes only."
            raise ValueError(msg)
        seed = settings.seed if random_state is None else random_state
        rng = np.random.default_rng(seed)
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
        if perturbations is None:
            perturbations = list(self._pb.index)
        elif isinstance(perturbations, str):
            perturbations = [perturbations]
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
        prov = self._provenance(n_starting_cells=len(start), random_state=int(seed))
        out = _prediction_anndata(np.vstack(rows), obs_rows, var_names, prov)
        if not return_mean:
            src = np.tile(np.asarray(self._sub.obs_names)[start], len(perturbations))
            out.obs["source_cell"] = src
            out.obs.index = [f"{lab}|{c}" for lab, c in zip(out.obs["perturbation"], src, strict=True)]
        return out
