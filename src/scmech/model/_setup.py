"""Registration of a screen's counts and design, shared by SemiMechVI and the baselines."""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import (
    CategoricalJointObsField,
    CategoricalObsField,
    LayerField,
    MuDataCategoricalJointObsField,
    MuDataCategoricalObsField,
    MuDataLayerField,
    MuDataNumericalJointObsField,
    MuDataNumericalObsField,
    NumericalJointObsField,
    NumericalObsField,
)

from scmech._constants import SCMECH_REGISTRY_KEYS
from scmech._docs import fill_doc
from scmech.data._checks import (
    BackedRows,
    check_adata,
    check_expression,
    is_backed_matrix,
)
from scmech.data._design import parse_perturbations
from scmech.data._fields import (
    EfficacyField,
    MediaTimeField,
    MuDataEfficacyField,
    MuDataMediaTimeField,
    MuDataPerturbationField,
    MuDataTimeField,
    PerturbationField,
    TimeField,
    perturbation_state,
)
from scmech.data._target_genes import name_positions, target_gene_names

from ._argument_checks import check_batch_size, check_indices
from ._loader import keep_requested_order
from ._modalities import _resolve_modalities, _validation_view, check_cell_order
from ._setup_checks import PERTURBATION_MODALITIES, _check_covariates, _check_modality, validate_for_setup  # noqa: F401

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData
    from mudata import MuData

logger = logging.getLogger(__name__)
K = SCMECH_REGISTRY_KEYS

__all__ = ["PerturbationSetupMixin"]


def _key_list(keys):
    """Return a tuple of ``obs`` keys as a list; anything else (``None``, a list, a wrong type checked later) as is."""
    return list(keys) if isinstance(keys, tuple) else keys


class PerturbationSetupMixin:
    """``setup_anndata``/``setup_mudata`` for perturbation screens and access to the registered design."""

    # ------------------------------------------------------------------ registration
    #: validates everything before anything is written (see :func:`~scmech.model._setup_checks.validate_for_setup`)
    _validate_for_setup = staticmethod(validate_for_setup)

    @classmethod
    @fill_doc
    def setup_anndata(
        cls,
        adata: AnnData,
        layer: str | None = None,
        perturbation_key: str = "perturbation",
        control_label: str | Sequence[str] = "NT",
        separator: str = "+",
        unassigned_label: str | Sequence[str] | None = "unassigned",
        batch_key: str | None = None,
        time_key: str | None = None,
        media_key: str | None = None,
        media_time_key: str | None = None,
        efficacy_key: str | None = None,
        size_factor_key: str | None = None,
        categorical_covariate_keys: list[str] | None = None,
        continuous_covariate_keys: list[str] | None = None,
        gene_embedding_key: str | None = None,
        counts: bool = True,
        perturbation_modality: str | None = None,
        gene_symbols: str | None = None,
        **kwargs,
    ) -> None:
        """Register an AnnData with its counts and experimental design.

        Writes ``adata.obsm["_scmech_perturbation"]`` (the targets of each cell) and the
        ``_scvi_*`` columns and ``uns`` entries of scvi-tools registration; nothing else is changed.

        Parameters
        ----------
        adata
            AnnData with raw counts (or log-normalised values with ``counts=False``). Not a view.
        layer
            %(layer)s
        perturbation_key
            %(perturbation_key)s
        control_label
            %(control_label)s
        separator
            %(separator)s
        unassigned_label
            %(unassigned_label)s Kept but not fitted (their count is logged).
        batch_key
            %(batch_key)s A measurement effect.
        time_key
            %(time_key)s Makes ``regime="auto"`` dynamic.
        media_key
            %(media_key)s In vivo: the niche. The first category is the baseline medium.
        media_time_key
            %(media_time_key)s Negative: before the perturbation; NaN: no switch.
        efficacy_key
            %(efficacy_key)s It scales each cell's operators.
        size_factor_key
            %(size_factor_key)s
        categorical_covariate_keys
            %(categorical_covariate_keys)s
        continuous_covariate_keys
            %(continuous_covariate_keys)s
        gene_embedding_key
            %(gene_embedding_key)s
        counts
            %(counts)s With ``False`` use ``gene_likelihood="normal"``.
        perturbation_modality
            %(perturbation_modality)s
        gene_symbols
            %(gene_symbols)s
        **kwargs
            Passed to :meth:`~scvi.data.AnnDataManager.register_fields` (e.g. ``source_registry``).
        """
        # a tuple of covariate keys is a list of them (scvi-tools would read the tuple as one column name)
        categorical_covariate_keys = _key_list(categorical_covariate_keys)
        continuous_covariate_keys = _key_list(continuous_covariate_keys)
        setup_method_args = cls._get_setup_method_args(**locals())
        _check_modality(perturbation_modality)
        if kwargs.get("source_registry") is None:
            cls._validate_for_setup(
                adata,
                layer=layer,
                counts=counts,
                perturbation_key=perturbation_key,
                control_label=control_label,
                separator=separator,
                unassigned_label=unassigned_label,
                batch_key=batch_key,
                time_key=time_key,
                media_key=media_key,
                media_time_key=media_time_key,
                efficacy_key=efficacy_key,
                size_factor_key=size_factor_key,
                categorical_covariate_keys=categorical_covariate_keys,
                continuous_covariate_keys=continuous_covariate_keys,
                gene_embedding_key=gene_embedding_key,
                gene_symbols=gene_symbols,
            )
        else:
            check_adata(adata)
            check_expression(adata.layers[layer] if layer else adata.X, "adata.X", counts=counts)
        fields = [
            # counts are validated above (scvi-tools' own check rejects scipy sparse arrays)
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=False),
            PerturbationField(
                K.PERTURBATION_KEY,
                perturbation_key,
                control_label=control_label,
                separator=separator,
                unassigned_label=unassigned_label,
                gene_symbols=gene_symbols,
            ),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
            NumericalObsField(REGISTRY_KEYS.SIZE_FACTOR_KEY, size_factor_key, required=False),
            CategoricalJointObsField(REGISTRY_KEYS.CAT_COVS_KEY, categorical_covariate_keys),
            NumericalJointObsField(REGISTRY_KEYS.CONT_COVS_KEY, continuous_covariate_keys),
            TimeField(time_key),
            EfficacyField(efficacy_key),
            MediaTimeField(media_time_key),
        ]
        if media_key is not None:
            fields.append(CategoricalObsField(K.MEDIA_KEY, media_key))
        adata_manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    @classmethod
    @fill_doc
    def setup_mudata(
        cls,
        mdata: MuData,
        rna_layer: str | None = None,
        perturbation_key: str = "perturbation",
        control_label: str | Sequence[str] = "NT",
        separator: str = "+",
        unassigned_label: str | Sequence[str] | None = "unassigned",
        batch_key: str | None = None,
        time_key: str | None = None,
        media_key: str | None = None,
        media_time_key: str | None = None,
        efficacy_key: str | None = None,
        size_factor_key: str | None = None,
        categorical_covariate_keys: list[str] | None = None,
        continuous_covariate_keys: list[str] | None = None,
        gene_embedding_key: str | None = None,
        counts: bool = True,
        perturbation_modality: str | None = None,
        gene_symbols: str | None = None,
        modalities: dict[str, str] | None = None,
        **kwargs,
    ) -> None:
        """Register a MuData: counts from the RNA modality, design columns from a modality's ``obs``.

        Parameters
        ----------
        mdata
            MuData with an RNA modality (a guide modality may sit beside it; assign guides first with
            :func:`scmech.pp.assign_guides` to get a perturbation column).
        rna_layer
            Layer of the RNA modality with counts; ``X`` when ``None``.
        perturbation_key
            %(perturbation_key)s
        control_label
            %(control_label)s
        separator
            %(separator)s
        unassigned_label
            %(unassigned_label)s Kept but not fitted (their count is logged).
        batch_key
            %(batch_key)s A measurement effect.
        time_key
            %(time_key)s Makes ``regime="auto"`` dynamic.
        media_key
            %(media_key)s In vivo: the niche. The first category is the baseline medium.
        media_time_key
            %(media_time_key)s Negative: before the perturbation; NaN: no switch.
        efficacy_key
            %(efficacy_key)s It scales each cell's operators.
        size_factor_key
            %(size_factor_key)s
        categorical_covariate_keys
            %(categorical_covariate_keys)s
        continuous_covariate_keys
            %(continuous_covariate_keys)s
        gene_embedding_key
            %(gene_embedding_key)s
        counts
            %(counts)s With ``False`` use ``gene_likelihood="normal"``.
        perturbation_modality
            %(perturbation_modality)s
        gene_symbols
            %(gene_symbols)s
        modalities
            Maps each argument (``"rna_layer"``, ``"perturbation_key"``, ...) to a modality name. Arguments
            not listed default to the modality of ``rna_layer`` (``"rna"`` when absent).
        **kwargs
            Passed to :meth:`~scvi.data.AnnDataManager.register_fields`.
        """
        categorical_covariate_keys = _key_list(categorical_covariate_keys)
        continuous_covariate_keys = _key_list(continuous_covariate_keys)
        setup_method_args = cls._get_setup_method_args(**locals())
        _check_modality(perturbation_modality)
        modalities, rna_mod = _resolve_modalities(mdata, modalities, setup_method_args["setup_args"])
        rna = mdata.mod[rna_mod]
        check_cell_order(mdata, rna_mod, modalities)
        checked = None
        if kwargs.get("source_registry") is None:  # a load re-registers data the saved model was checked on
            checked = _validation_view(mdata, rna_mod, modalities, setup_method_args["setup_args"], rna_layer)
        if checked is not None:
            cls._validate_for_setup(
                checked,
                layer=rna_layer,
                counts=counts,
                perturbation_key=perturbation_key,
                control_label=control_label,
                separator=separator,
                unassigned_label=unassigned_label,
                batch_key=batch_key,
                time_key=time_key,
                media_key=media_key,
                media_time_key=media_time_key,
                efficacy_key=efficacy_key,
                size_factor_key=size_factor_key,
                categorical_covariate_keys=categorical_covariate_keys,
                continuous_covariate_keys=continuous_covariate_keys,
                gene_embedding_key=gene_embedding_key,
                gene_symbols=gene_symbols,
                mod=rna_mod,
            )
        else:
            check_adata(rna)
            check_expression(rna.layers[rna_layer] if rna_layer else rna.X, f"mdata[{rna_mod!r}].X", counts=counts)
        if mdata.is_view:
            msg = "mdata is a view; call mdata = mdata.copy() first."
            raise ValueError(msg)
        fields = [
            MuDataLayerField(REGISTRY_KEYS.X_KEY, rna_layer, mod_key=rna_mod, is_count_data=False, mod_required=True),
            MuDataPerturbationField(
                K.PERTURBATION_KEY,
                perturbation_key,
                control_label=control_label,
                separator=separator,
                unassigned_label=unassigned_label,
                # the symbols are the RNA modality's; labels kept in another modality are matched by the model
                gene_symbols=gene_symbols if modalities["perturbation_key"] == rna_mod else None,
                mod_key=modalities["perturbation_key"],
            ),
            MuDataCategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key, mod_key=modalities["batch_key"]),
            MuDataNumericalObsField(
                REGISTRY_KEYS.SIZE_FACTOR_KEY, size_factor_key, mod_key=modalities["size_factor_key"], required=False
            ),
            MuDataCategoricalJointObsField(
                REGISTRY_KEYS.CAT_COVS_KEY, categorical_covariate_keys, mod_key=modalities["categorical_covariate_keys"]
            ),
            MuDataNumericalJointObsField(
                REGISTRY_KEYS.CONT_COVS_KEY, continuous_covariate_keys, mod_key=modalities["continuous_covariate_keys"]
            ),
            MuDataTimeField(time_key, mod_key=modalities["time_key"]),
            MuDataEfficacyField(efficacy_key, mod_key=modalities["efficacy_key"]),
            MuDataMediaTimeField(media_time_key, mod_key=modalities["media_time_key"]),
        ]
        if media_key is not None:
            fields.append(MuDataCategoricalObsField(K.MEDIA_KEY, media_key, mod_key=modalities["media_key"]))
        adata_manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(mdata, **kwargs)
        cls.register_manager(adata_manager)

    # ------------------------------------------------------------------ registry helpers
    def _field(self, registry_key: str):
        for f in self.adata_manager.fields:
            if f.registry_key == registry_key:
                return f
        return None

    def _obs(self, adata, registry_key: str = K.PERTURBATION_KEY) -> pd.DataFrame:
        f = self._field(registry_key)
        mod = getattr(f, "mod_key", None) if f is not None else None
        return adata.mod[mod].obs if (mod is not None and hasattr(adata, "mod")) else adata.obs

    def _perturbation_state(self) -> dict:
        """Return the perturbation field's state registry, read without scvi-tools' per-call conversion."""
        return perturbation_state(self.adata_manager)

    def _design(self, adata):
        """Parse ``adata``'s perturbation labels into a design (the last parse is reused while they are unchanged).

        A model reads its design several times per ``train`` (fit mask, batching, the post-training fits); parsing
        a million labels takes seconds, so the last parse is kept with a fingerprint of the labels (a hash of the
        column's values) and reused only when the same labels come again.
        """
        st = self._perturbation_state()
        labels = self._obs(adata)[st["obs_key"]]
        fingerprint = hashlib.blake2b(
            pd.util.hash_pandas_object(labels, index=False).to_numpy().tobytes(), digest_size=16
        ).hexdigest()
        cached = self.__dict__.get("_design_cache")
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
        setup = self.adata_manager.registry["setup_args"]
        design = parse_perturbations(
            labels.to_numpy(),
            control_label=setup["control_label"],
            separator=st["separator"],
            unassigned_label=setup["unassigned_label"],
            targets=list(st["targets"]),
            key=st["obs_key"],
            require_control=False,
        )
        self.__dict__["_design_cache"] = (fingerprint, design)
        return design

    def _make_data_loader(self, adata, indices=None, batch_size=None, shuffle=False, data_loader_class=None, **kwargs):
        """scvi-tools' data loader, after checking ``indices`` and ``batch_size`` with clear errors.

        scvi-tools' ``get_*`` methods fail deep inside torch, scipy or scvi on an empty, out-of-range or wrongly
        shaped ``indices`` (and read a short boolean mask as positions); every method of the model and of the
        baselines that iterates over cells comes through here. On backed data the rows come back in the order of
        ``indices`` (:func:`~scmech.model._loader.keep_requested_order`; scvi-tools returns each minibatch sorted).
        """
        data = adata if adata is not None else self.adata
        indices = check_indices(indices, data.n_obs)
        batch_size = check_batch_size(batch_size)
        loader = super()._make_data_loader(
            adata,
            indices=indices,
            batch_size=batch_size,
            shuffle=shuffle,
            data_loader_class=data_loader_class,
            **kwargs,
        )
        return loader if shuffle else keep_requested_order(loader, data, indices)

    def _check_registered_data(self, *, values: bool = False) -> None:
        """Check that the registered data still have the shape and genes they were set up with.

        Parameters
        ----------
        values
            Also check the registered expression matrix again (finite; non-negative integers for counts).

        Raises
        ------
        ValueError
            When cells or genes were added, removed, renamed or reordered in place after setup, or (with
            ``values``) when the matrix no longer holds valid values.
        """
        adata = self.adata
        self._check_registered_modalities()
        x, var_names = self._expression_matrix(adata)
        st = self.adata_manager.get_state_registry(REGISTRY_KEYS.X_KEY)
        n_obs, n_vars = st.get("n_obs"), st.get("n_vars")
        names = st.get("column_names")
        how = "setup_mudata" if hasattr(adata, "mod") else "setup_anndata"
        fix = f"Set up the data again ({type(self).__name__}.{how}) and create a new model."
        if n_obs is not None and x.shape[0] != n_obs:
            msg = f"The registered data now have {x.shape[0]} cells but were set up with {n_obs}. {fix}"
            raise ValueError(msg)
        if n_vars is not None and x.shape[1] != n_vars:
            msg = f"The registered data now have {x.shape[1]} genes but were set up with {n_vars}. {fix}"
            raise ValueError(msg)
        if names is not None and not np.array_equal(
            np.asarray(names, dtype=object), np.asarray(var_names, dtype=object)
        ):
            changed = [str(g) for g, h in zip(names, var_names, strict=True) if g != h][:5]
            msg = f"The genes of the registered data were renamed or reordered after setup (e.g. {changed}). {fix}"
            raise ValueError(msg)
        if values:
            f = self._field(REGISTRY_KEYS.X_KEY)
            where = f"adata.layers[{f.attr_key!r}]" if f.attr_key else "adata.X"
            check_expression(x, where, counts=self.adata_manager.registry["setup_args"].get("counts", True))
        self._check_registered_labels(fix)

    def _check_registered_modalities(self) -> None:
        """Refuse a registered MuData whose modalities were removed or reordered after ``setup_mudata``.

        Its ``obs`` columns are read by position: a modality in another cell order would give each cell another
        cell's labels (:func:`~scmech.model._modalities.check_cell_order`).
        """
        mdata = self.adata
        if not hasattr(mdata, "mod"):
            return
        setup = self.adata_manager.registry["setup_args"]
        try:
            modalities, rna_mod = _resolve_modalities(mdata, setup.get("modalities"), setup)
            check_cell_order(mdata, rna_mod, modalities)
        except (KeyError, ValueError) as e:
            msg = (
                f"The registered MuData changed after setup_mudata: {str(e).strip(chr(34))} Set up the data again "
                f"({type(self).__name__}.setup_mudata) and create a new model."
            )
            raise ValueError(msg) from e

    def _check_registered_labels(self, fix: str) -> None:
        """Refuse perturbation labels edited in ``obs`` after setup.

        Training reads the registered matrix, while the trained targets, the target map and the anchoring read the
        labels: after an edit a trained target would be predicted as unseen.
        """
        st = self._perturbation_state()
        key = st["obs_key"]
        how = "setup_mudata" if hasattr(self.adata, "mod") else "setup_anndata"
        try:
            current = self._design(self.adata).entries()
        except (KeyError, ValueError) as e:
            msg = f"obs[{key!r}] was changed after {how} and no longer parses with the registered targets ({e}). {fix}"
            raise ValueError(msg) from e
        registered = np.asarray(self.adata_manager.get_from_registry(K.PERTURBATION_KEY))
        width = max(registered.shape[1], current.shape[1])
        registered, current = (
            np.pad(m, ((0, 0), (0, width - m.shape[1])), constant_values=-1) for m in (registered, current)
        )
        if registered.shape != current.shape or not np.array_equal(registered, current):
            same_cells = len(registered) == len(current)
            rows = np.flatnonzero((registered != current).any(axis=1))[:5] if same_cells else np.arange(0)
            msg = (
                f"obs[{key!r}] was changed after {how} (e.g. cells {rows.tolist()}): the registered "
                f"perturbations no longer match the labels. {fix}"
            )
            raise ValueError(msg)

    def _fit_mask(self, adata) -> np.ndarray:
        return self._design(adata).fit_mask

    def _categories(self, registry_key: str) -> list[str]:
        """Categories of a registered categorical field (read from the stored registry: predictions ask per row)."""
        entry = self.adata_manager.registry["field_registries"].get(registry_key)
        if not entry or not entry.get("data_registry"):
            return []
        return [str(c) for c in entry["state_registry"]["categorical_mapping"]]

    def _media_categories(self) -> list[str]:
        return self._categories(K.MEDIA_KEY)

    def _media_of(self, indices: np.ndarray) -> list[str] | None:
        """Return the registered media of the cells ``indices`` (``None`` for a model without media)."""
        cats = self._media_categories()
        if not cats:
            return None
        codes = np.asarray(self.adata_manager.get_from_registry(K.MEDIA_KEY)).ravel()[np.asarray(indices, dtype=int)]
        return [cats[c] for c in np.unique(codes).astype(int)]

    def _check_trained_medium(self, medium: str, what: str = "predict") -> None:
        """Refuse a registered medium without training cells: its embedding (and any anchor there) was never fit.

        The media with training cells are recorded when training ends (``trained_media_``, saved with the model):
        a model loaded with part of its data still knows which media it was trained in.

        Raises
        ------
        KeyError
            Naming the medium, the media with training cells and the fix.
        """
        trained = getattr(self, "trained_media_", None)
        if trained is not None and medium not in trained:
            msg = (
                f"Medium {medium!r} has no training cells (media with training cells: {trained}): its embedding was "
                f"never trained, so {what} there would read an untrained medium. Train with cells of {medium!r} in "
                "the training split (some perturbations, and controls, observed there), or choose a trained medium."
            )
            raise KeyError(msg)

    def _batch_categories(self) -> list[str]:
        return self._categories(REGISTRY_KEYS.BATCH_KEY)

    def _expression_adata(self, adata):
        """Return the AnnData holding the registered expression (``adata`` itself, or a MuData's RNA modality)."""
        mod = getattr(self._field(REGISTRY_KEYS.X_KEY), "mod_key", None)
        return adata.mod[mod] if (mod is not None and hasattr(adata, "mod")) else adata

    def _expression_matrix(self, adata):
        f = self._field(REGISTRY_KEYS.X_KEY)
        mod = getattr(f, "mod_key", None)
        a = self._expression_adata(adata)
        layer = f.attr_key
        x = a.layers[layer] if layer else a.X
        # backed (on-disk) data: a lazy row selection, so that x[indices] is read in blocks, never whole
        x = BackedRows(x) if is_backed_matrix(x) else x
        return x, (a.var_names if mod else adata.var_names)

    def _target_gene_names(self, adata=None) -> pd.Index:
        """Return the name each registered gene is matched against perturbation targets by (``gene_symbols``).

        ``var_names`` of the expression (the RNA modality of a MuData), or its ``var`` column registered as
        ``gene_symbols``.
        """
        adata = self.adata if adata is None else adata
        var = self._expression_adata(adata).var
        return target_gene_names(var, self.adata_manager.registry["setup_args"].get("gene_symbols"))

    def _target_gene_positions(self, adata=None) -> dict[str, int]:
        """Position of each gene by the name targets are matched against (the first gene of a repeated name)."""
        return name_positions(self._target_gene_names(adata))

    def _target_positions(self, targets, adata=None) -> np.ndarray:
        """Position of each of ``targets``' own gene among the registered genes, ``-1`` where it is not measured."""
        pos = self._target_gene_positions(adata)
        return np.array([pos.get(str(t), -1) for t in targets], dtype=int)
