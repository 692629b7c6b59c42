r"""The machinery every pseudobulk baseline shares: registration, training pseudobulks, contexts and prediction.

A baseline subclasses :class:`_PseudobulkBaseline` and implements ``_predict_one(label, targets)`` (and, when it
fits anything beyond the training pseudobulks, ``_fit``).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scvi import REGISTRY_KEYS
from scvi.model.base import BaseModelClass

from scmech._constants import SCMECH_REGISTRY_KEYS, TARGET_SUM
from scmech.data._context import context_keys
from scmech.data._design import canonical_label, parse_condition
from scmech.data._fields import perturbation_state
from scmech.data._log_scale import log1p_base, value_description
from scmech.data._pseudobulk import normalized_mean
from scmech.model._argument_checks import check_not_unassigned
from scmech.model._observations import log_pseudobulk
from scmech.model._protocols import _per_condition
from scmech.model._setup import PerturbationSetupMixin
from scmech.model._split_checks import _external_sets

from ._checks import check_indices
from ._layout import _prediction_anndata

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData
    from mudata import MuData

logger = logging.getLogger(__name__)
#: keywords of ``SemiMechVI.predict`` a baseline accepts and ignores (it reads no cells and is its own anchor)
_IGNORED_PREDICT_KWARGS = frozenset({"batch_size", "random_state", "anchor"})
K = SCMECH_REGISTRY_KEYS


class _PseudobulkBaseline(PerturbationSetupMixin, BaseModelClass):
    """Shared machinery: training pseudobulks, request parsing, contexts and the prediction AnnData."""

    #: whether every prediction is the control level (:class:`~scmech.tl.ControlMean`)
    _predicts_control_level: bool = False

    def __init__(self, adata: AnnData | MuData) -> None:
        super().__init__(adata)
        self.is_trained_ = False
        self._pb: pd.DataFrame | None = None
        self._pb_var: pd.DataFrame | None = None
        self._n_train_cells: pd.Series | None = None
        self._train_idx: np.ndarray | None = None
        self._trained_targets: set[str] = set()

    # ------------------------------------------------------------------ scvi-tools plumbing
    def to_device(self, device: Any) -> None:
        """Do nothing: baselines run on numpy, so there is nothing to move.

        Parameters
        ----------
        device
            The device scvi-tools would move a model to; ignored.
        """

    @property
    def device(self) -> str:
        """Baselines run on the CPU."""
        return "cpu"

    def save(self, *args, **kwargs) -> None:
        """Refuse to save: baselines are not saved, since they refit in seconds from the data.

        Parameters
        ----------
        *args, **kwargs
            The arguments of scvi-tools' ``save``; any call raises ``NotImplementedError``.
        """
        msg = f"{type(self).__name__} is a closed-form baseline and is not saved; refit it with .train()."
        raise NotImplementedError(msg)

    @classmethod
    def load(cls, *args, **kwargs):
        """Refuse to load: baselines are never saved, so there is nothing to load (and no file is ever unpickled).

        ``load_registry``, ``view_setup_args`` and ``convert_legacy_save`` refuse the same way.

        Parameters
        ----------
        *args, **kwargs
            The arguments of scvi-tools' method of the same name; any call raises ``NotImplementedError``.
        """
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
        targets = parse_condition(label, separator=st["separator"], control_label=st["control_label"])
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
    def _train_indices(self, datasplitter_kwargs: dict | None, with_validation: bool = True) -> np.ndarray:
        """Return the cells to fit on: the assigned cells of ``external_indexing[0]``, with the validation cells.

        With ``with_validation``, the validation cells of the training conditions join (:meth:`_with_validation`);
        all assigned cells without a split.
        """
        design = self._design(self.adata)
        fit = design.fit_mask
        ext = (datasplitter_kwargs or {}).get("external_indexing")
        if ext is None:
            idx = np.flatnonzero(fit)
            val = test = np.zeros(0, dtype=np.int64)
        else:
            if hasattr(ext, "__len__") and not isinstance(ext, str | np.ndarray) and len(ext) == 0:
                msg = (
                    "external_indexing is empty; pass [train, validation, test] index arrays "
                    "(e.g. split.external_indexing)."
                )
                raise ValueError(msg)
            # as SemiMechVI.train checks it: up to three disjoint sets, so that no test cell is fitted on
            sets = _external_sets(ext)
            idx, val, test = (
                check_indices(sets[i], len(fit), f"external_indexing[{i}]") if len(sets) > i else np.zeros(0, np.int64)
                for i in range(3)
            )
            idx = np.unique(idx[fit[idx]])
            if with_validation:
                idx = self._with_validation(idx, val, design)
        if len(idx) == 0:
            msg = "No cells to train on: the training indices are empty after removing unassigned cells."
            raise ValueError(msg)
        self.train_indices_, self.validation_indices_, self.test_indices_ = idx, val, test
        return idx

    @staticmethod
    def _with_validation(idx: np.ndarray, val: np.ndarray, design) -> np.ndarray:
        """Add to the training cells ``idx`` the validation cells of the conditions they hold.

        The validation cells of a training condition are a random share of its cells, held back to monitor a
        fitted model; a pseudobulk baseline has nothing to monitor and uses them, as SemiMechVI's anchoring does.
        Validation cells of a condition without training cells are never used.
        """
        if len(val) == 0 or len(idx) == 0:
            return idx
        val = val[(val >= 0) & (val < len(design.labels))]
        val = val[design.fit_mask[val]]
        seen = np.isin(design.labels[val], np.unique(design.labels[idx]))
        return np.unique(np.concatenate([idx, val[seen]]))

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
            uses the training cells and the validation cells of the training conditions, never test cells. All
            assigned cells when ``None``.
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
        x, var_names = self._expression_matrix(self.adata)
        frame = {"index": pd.Index(conds, name="condition"), "columns": pd.Index(var_names).astype(str)}
        if self._keeps_variances():
            # the same pass over the cells gives the pseudobulks' sampling variances
            pb, var = log_pseudobulk(x, idx, labels, conds, self._setup().get("counts", True))
            self._pb_var = pd.DataFrame(var, **frame)
        else:
            pb = self._pseudobulk(idx, labels, conds)
        self._pb = pd.DataFrame(pb, **frame)
        self._n_train_cells = pd.Series(labels).value_counts().reindex(conds)
        self._train_idx = idx
        self._trained_targets = {t for c in conds[1:] for t in self._canonical(c)[1]}
        self._shift_cache = {}
        self._fit()
        self.is_trained_ = True

    def _keeps_variances(self) -> bool:
        """Whether ``train`` also keeps the training pseudobulks' sampling variances (``self._pb_var``)."""
        return False

    def _fit(self) -> None:
        """Model-specific fit on ``self._pb``."""

    # ------------------------------------------------------------------ contexts
    def _context_values(self, key: str | None, registry_key: str) -> np.ndarray | None:
        if key is None:
            return None
        return self._obs(self.adata, registry_key)[key].to_numpy()

    def _context_mask(self, batch: Any, media: Any, time: Any, media_time: Any = None) -> tuple[np.ndarray, list[str]]:
        """Training controls (mask over the training cells) of a context, and the context's description."""
        setup = self._setup()
        idx = self._train_idx
        design = self._design(self.adata)
        mask = design.is_control[idx].copy()
        parts = []
        for value, key, reg, name in (
            (batch, setup.get("batch_key"), REGISTRY_KEYS.BATCH_KEY, "batch"),
            (media, setup.get("media_key"), K.MEDIA_KEY, "media"),
            (time, setup.get("time_key"), K.TIME_KEY, "time"),
            (media_time, setup.get("media_time_key"), K.MEDIA_TIME_KEY, "media_time"),
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
            if name == "media_time" and _is_nan(value):
                mask &= np.isnan(col.astype(np.float64))  # NaN: cells that never switched, as predictions write it
            elif name in ("time", "media_time"):
                mask &= np.isclose(col.astype(np.float64), _as_time(value, name))
            else:
                mask &= col.astype(str) == str(value)
            parts.append(f"{name}={value}")
        return mask, parts

    def _context_shift(
        self, batch: Any, media: Any, time: Any, media_time: Any = None
    ) -> tuple[np.ndarray, str, int | None]:
        """Log-space offset of the training controls of a context (batch, medium, time, switch) from all controls.

        Also its description, and the number of its training controls (``None`` without a context): the cells the
        control level of the context rests on.
        """
        if batch is None and media is None and time is None and media_time is None:
            return np.zeros(self._pb.shape[1]), "", None
        cache = self.__dict__.setdefault("_shift_cache", {})
        ckey = _context_key(batch, media, time, media_time)
        if ckey in cache:
            return cache[ckey]
        mask, parts = self._context_mask(batch, media, time, media_time)
        if not mask.any():
            msg = (
                f"No training control cells with {', '.join(parts)}; the baseline shifts predictions by the "
                "controls of the requested context and needs some there (keep that context's controls in training)."
            )
            raise KeyError(msg)
        sub = self._train_idx[mask]
        ctrl = self._control()
        pb_ctx = self._pseudobulk(sub, np.full(len(sub), ctrl, dtype=object), [ctrl])[0]
        cache[ckey] = (pb_ctx - self._pb.loc[ctrl].to_numpy(), ", ".join(parts), len(sub))
        return cache[ckey]

    # ------------------------------------------------------------------ prediction
    def _predict_one(self, label: str, targets: tuple[str, ...]) -> tuple[np.ndarray, int]:
        raise NotImplementedError

    def _training_genes(self, adata: AnnData | None, who: str) -> Sequence[str]:
        """Return the registered genes; refuse an ``adata`` with other genes (``who`` names the predictor)."""
        _, var_names = self._expression_matrix(self.adata)
        if adata is not None and list(map(str, adata.var_names)) != list(map(str, var_names)):
            msg = f"`adata` has other genes than the training data; {who} the training genes only."
            raise ValueError(msg)
        return var_names

    def predict(
        self,
        perturbations: str | Sequence[str] | None = None,
        *,
        media: str | Sequence[str] | None = None,
        time: float | Sequence[float] | None = None,
        media_time: float | Sequence[float] | None = None,
        batch: str | None = None,
        efficacy: float | None = None,
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
        media_time
            Time of the switch into ``media`` (one, or one per perturbation), handled like ``media`` (needs a
            registered ``media_time_key``).
        batch
            Batch, handled like ``media`` (e.g. the held-out replicate, whose controls are in training).
        efficacy
            Refused unless ``None``: a baseline predicts observed pseudobulks, at the training cells' efficacies.
        n_cells
            Ignored (baselines predict pseudobulks); accepted for interface compatibility.
        from_cells
            Ignored, as ``n_cells``.
        return_mean
            Must be ``True``: baselines predict pseudobulks, not cells.
        adata
            Ignored except for a check that its genes match; baselines predict from their training pseudobulks.
        **kwargs
            ``batch_size``, ``random_state`` and ``anchor`` of ``SemiMechVI.predict``, accepted and ignored (a
            baseline reads no cells and is its own anchor); any other keyword raises :class:`TypeError`.

        Returns
        -------
        AnnData with one row per condition: ``X`` the predicted :math:`\log(1 + 10^4\bar\rho)` (float32),
        ``layers["expression"]`` its ``expm1`` (:math:`b^{x} - 1` for input log-normalised in base :math:`b`, none
        for centred or scaled input), ``obs`` columns ``perturbation``, ``media``, ``time``,
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
        unknown = sorted(set(kwargs) - _IGNORED_PREDICT_KWARGS)
        if unknown:
            msg = (
                f"{type(self).__name__}.predict() got unexpected keyword argument(s) {unknown}; it takes "
                "perturbations, media, time, media_time, batch and return_mean (and accepts SemiMechVI's "
                f"{sorted(_IGNORED_PREDICT_KWARGS)})."
            )
            raise TypeError(msg)
        if efficacy is not None:
            msg = (
                f"efficacy={efficacy!r}: {type(self).__name__} predicts observed pseudobulks, at the training cells' "
                "efficacies, and has no model of a knock-down's strength; drop efficacy= (SemiMechVI.predict takes it)."
            )
            raise ValueError(msg)
        if kwargs:
            logger.debug("%s.predict ignores %s", type(self).__name__, sorted(kwargs))
        self._check_registered_data()
        var_names = self._training_genes(adata, "baselines predict")
        explicit = perturbations is not None
        if perturbations is None:
            perturbations = list(self._pstate()["conditions"])
        elif isinstance(perturbations, str):
            perturbations = [perturbations]
        perturbations = list(perturbations)
        if not perturbations:
            msg = "`perturbations` is empty; name at least one condition (e.g. ['STAT1'] or the control label)."
            raise ValueError(msg)
        base = self._value_base()  # read once: the floor, the expression layer and the provenance follow it
        rows, obs_rows, skipped = self._predict_rows(
            list(perturbations), media, time, batch, explicit=explicit, media_time=media_time, floor=base is not None
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
            self._provenance(base, skipped=[s[0] for s in skipped]),
            base=base,
        )

    def _predict_rows(
        self,
        perturbations: list[str],
        media: Any,
        time: Any,
        batch: str | None,
        *,
        explicit: bool,
        media_time=None,
        floor: bool = True,
    ) -> tuple[list[np.ndarray], list[dict], list[tuple[str, str]]]:
        r"""Predicted rows, their ``obs`` and the ``(label, reason)`` of the conditions skipped.

        With ``floor`` (values that are :math:`\log(1 + x)` of an expression, :meth:`_value_base`) no row goes
        below zero.
        """
        n = len(perturbations)
        med = _per_condition(media, n, "media")
        tim = _per_condition(time, n, "time")
        switch = _per_condition(media_time, n, "media_time")
        rows, obs_rows, skipped = [], [], []
        unassigned = self._setup().get("unassigned_label")
        for p, m, t, mt in zip(perturbations, med, tim, switch, strict=True):
            label, targets = self._canonical(p)
            if explicit:
                check_not_unassigned(targets, unassigned)
            try:
                value, n_used = self._predict_one(label, targets)
            except KeyError as e:
                if explicit:
                    raise
                skipped.append((label, str(e).strip("'\"")))
                continue
            shift, _, n_controls = self._context_shift(batch, m, t, mt)
            if n_controls is not None and (not targets or self._predicts_control_level):
                # the control level of a context is its own controls' pseudobulk: those are the cells it rests on
                n_used = n_controls
            # summed changes (Additive, a context's shift) that would take a gene below zero expression predict that
            # it is not expressed
            rows.append(np.maximum(value + shift, 0.0) if floor else value + shift)
            obs_rows.append(
                {
                    "perturbation": label,
                    "media": m,
                    "time": np.nan if t is None else float(t),
                    "media_time": np.nan if mt is None else float(mt),
                    "batch": batch if batch is not None else "training cells",
                    "n_cells": int(n_used),
                    "unseen_targets": ",".join(t_ for t_ in targets if t_ not in self._trained_targets),
                    "anchored": False,
                }
            )
        return rows, obs_rows, skipped

    def _value_base(self) -> float | None:
        r"""Return the base of the values' logarithm: :math:`e` for counts, log1p input's own, ``None`` for others.

        Log-normalised input reads as :math:`\log_b(1 + x)` of an expression when the controls' pseudobulk is
        non-negative in every gene (centred or scaled values are negative in many), with :math:`b` as
        :func:`scanpy.pp.log1p` recorded it (:func:`~scmech.data._log_scale.log1p_base`).
        """
        if self._setup().get("counts", True):
            return math.e
        if not bool((self._pb.loc[self._control()].to_numpy() >= 0).all()):
            return None
        return log1p_base(self._expression_adata(self.adata), "adata")

    def _provenance(self, base: float | None, **extra) -> dict:
        return {
            "model": type(self).__name__,
            "value": value_description(bool(self._setup().get("counts", True)), base),
            "n_train_cells": int(len(self._train_idx)),
            "train_conditions": list(self._pb.index),
            "params": dict(self.init_params_["non_kwargs"]),
            "context_keys": context_keys(self._setup()),
            **extra,
        }

    def _require(self, cond: str) -> np.ndarray:
        if cond not in self._pb.index:
            msg = f"Condition {cond!r} has no training cells."
            raise KeyError(msg)
        return self._pb.loc[cond].to_numpy()


def _as_time(value: Any, name: str) -> float:
    """Return a requested time point as a float; refuse values that are not numbers.

    Parameters
    ----------
    value
        The requested ``time`` or ``media_time``.
    name
        The argument's name, for messages.

    Returns
    -------
    The time as a float.

    Raises
    ------
    TypeError
        For a value that is not a number (e.g. a time-point label).
    """
    try:
        return float(value)
    except (TypeError, ValueError):
        msg = f"`{name}`={value!r} is not a number; registered times are numeric (e.g. {name}=24.0)."
        raise TypeError(msg) from None


def _is_nan(value: Any) -> bool:
    """Whether ``value`` is a float NaN (a switch time that never came), not ``None`` or a number."""
    return isinstance(value, float | np.floating) and bool(np.isnan(value))


def _context_key(batch: Any, media: Any, time: Any, media_time: Any) -> tuple:
    """Key of a context in the baselines' caches (NaN switch times compare equal here, unlike floats)."""
    switch = "never" if _is_nan(media_time) else media_time
    return (None if batch is None else str(batch), None if media is None else str(media), time, switch)
