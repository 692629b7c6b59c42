"""Data other than the registered data: checked, and registered as scvi-tools registers a query.

``predict(adata=query)`` and the ``get_*`` methods read cells the model was not set up with. scvi-tools transfers
the setup to them (registering them, as :doc:`/guarantees` says); :class:`QueryDataMixin` checks them first (the
registered kind, the genes, finite covariates, known categories) and registers a copy of a view in its place.
"""

from __future__ import annotations

import logging
import weakref

import numpy as np
from scvi import REGISTRY_KEYS
from scvi.data._constants import _SCVI_UUID_KEY

from scmech._constants import SCMECH_REGISTRY_KEYS
from scmech.data._checks import check_expression

from ._setup_checks import _check_covariates, check_context_columns

logger = logging.getLogger(__name__)

__all__ = ["QueryDataMixin"]


class QueryDataMixin:
    """``_validate_anndata`` for query data: the checks, and one registered copy per view."""

    def _validate_anndata(self, adata=None, copy_if_view: bool = True):
        """scvi-tools' validation plus a check that the genes are those the model was set up with.

        The model's parameters are gene-specific, so other genes (or the same genes in another order) raise
        instead of being silently misread; so do registered data whose cells or genes changed after setup.
        """
        if (adata is None or adata is self.adata) and self.adata is not None:
            self._check_registered_data()
        if adata is not None and adata is not self.adata:
            self._check_query(adata)
            if adata.is_view:
                adata = self._registered_copy(adata)
        if adata is not None:
            from ._persistence import var_names_of

            ref = var_names_of(self.adata) if self.adata is not None else None
            new = var_names_of(adata)
            if ref is not None:
                same = (
                    all(np.array_equal(np.asarray(ref[k]), np.asarray(new.get(k))) for k in ref)
                    if isinstance(ref, dict)
                    else np.array_equal(np.asarray(ref, dtype=object), np.asarray(new, dtype=object))
                )
                if not same:
                    msg = (
                        "adata has other genes (or another gene order) than the data the model was set up with; "
                        "subset and reorder it first: adata = adata[:, model.adata.var_names].copy()."
                    )
                    raise ValueError(msg)
        try:
            return super()._validate_anndata(adata, copy_if_view=copy_if_view)
        except ValueError as e:
            if "not found in source registry" not in str(e):
                raise
            # scvi-tools suggests extend_categories=True, an option scmech does not expose: a batch or covariate
            # category the model never trained on has no learned capture to measure cells with
            msg = (
                f"adata holds a category the model was not trained on ({e}). Its batch capture (or covariate effect) "
                "was never learned, so these cells cannot be encoded and measured as trained. Relabel it to a "
                "training category whose capture you want to assume, or train on data that contain it."
            )
            raise ValueError(msg) from e

    def _registered_copy(self, view):
        """Return the copy of a query ``view`` that is registered in its place: one per view, freed with the view.

        scvi-tools would make the caller's view a copy in place to register it, cutting its link to the data it
        views. The copy is registered here instead, and the caller's view stays a view. The same view object gets
        the same copy on every call, and when the view is freed its copy's registration is dropped, so views made
        anew for each call (``model.get_latent_representation(adata[:100])``) do not pile up registered copies.
        """
        copies = self.__dict__.setdefault("_query_view_copies", {})
        entry = copies.get(id(view))
        if entry is not None and entry[0]() is view:
            return entry[1]
        logger.info("Received a view of %s: registering a copy of it.", type(view).__name__)
        copy = view.copy()
        copies[id(view)] = (weakref.ref(view), copy)
        weakref.finalize(view, _forget_view_copy, weakref.ref(self), id(view), copy)
        return copy

    def _check_query_contents(self, adata, counts: bool) -> None:
        """Refuse missing batches or media and invalid expression values in query data (an AnnData or a MuData).

        Each is read where the model's fields read it (a MuData's modality, the registered layer), and checked as
        ``setup_anndata`` checks training data (:func:`~scmech.model._setup_checks.check_context_columns`,
        :func:`~scmech.data._checks.check_expression`).
        """
        setup = self.adata_manager.registry["setup_args"]
        for key, arg in ((REGISTRY_KEYS.BATCH_KEY, "batch_key"), (SCMECH_REGISTRY_KEYS.MEDIA_KEY, "media_key")):
            check_context_columns(self._obs(adata, key), setup, (arg,))  # where the model's field reads it
        expression = self._expression_adata(adata)
        layer = self._field(REGISTRY_KEYS.X_KEY).attr_key
        if layer is None or layer in expression.layers:
            mod = getattr(self._field(REGISTRY_KEYS.X_KEY), "mod_key", None)
            where = (f"mdata[{mod!r}]" if mod else "adata") + (f".layers[{layer!r}]" if layer else ".X")
            check_expression(expression.layers[layer] if layer else expression.X, where, counts=counts)

    def _check_query(self, adata) -> None:
        """Check data other than the registered data before scvi-tools transfers the setup to them.

        The query must be of the registered kind (an AnnData for a model set up with ``setup_anndata``, a MuData
        for ``setup_mudata``), and its covariates must be as setup requires of the training data: continuous ones
        finite (one NaN would make every prediction NaN), categorical ones, batches and media without missing values
        and within the categories the model was trained on. Its expression matrix must hold what setup requires
        (finite; non-negative integers for counts): a NaN or a negative count would stop the encoder deep in torch,
        and a fractional count would be encoded without a word.
        """
        from mudata import MuData

        if isinstance(self.adata, MuData) != isinstance(adata, MuData):
            kind = "a MuData (setup_mudata)" if isinstance(self.adata, MuData) else "an AnnData (setup_anndata)"
            msg = f"The model was set up with {kind}; pass data of the same kind, with the same modalities and keys."
            raise TypeError(msg)
        setup = self.adata_manager.registry["setup_args"]
        self._check_query_contents(adata, setup.get("counts", True))
        if isinstance(adata, MuData):
            return
        _check_covariates(adata, None, setup.get("continuous_covariate_keys"))
        keys = setup.get("categorical_covariate_keys") or []
        if not keys:
            return
        _check_covariates(adata, keys, None)
        known = self.adata_manager.get_state_registry(REGISTRY_KEYS.CAT_COVS_KEY)["mappings"]
        for key in keys:
            new = sorted(set(map(str, adata.obs[key].unique())) - set(map(str, known[key])))
            if new:
                msg = (
                    f"obs[{key!r}] holds categories the model was not trained on: {new[:5]}. Their covariate effect "
                    f"was never learned; relabel them to a training category ({list(map(str, known[key]))[:5]}) or "
                    "train on data that contain them."
                )
                raise ValueError(msg)


def _forget_view_copy(model_ref: weakref.ref, key: int, copy) -> None:
    """Drop the registered copy of a freed query view (:meth:`QueryDataMixin._registered_copy`)."""
    model = model_ref()
    if model is None:
        return
    copies = model.__dict__.get("_query_view_copies", {})
    if key in copies and copies[key][1] is copy:
        del copies[key]
    # scvi-tools' deregister_manager does not find a transferred query's manager: drop it by the copy's uuid
    uuid = copy.uns.get(_SCVI_UUID_KEY)
    if uuid is not None:
        model._per_instance_manager_store.get(model.id, {}).pop(uuid, None)
        model._setup_adata_manager_store.pop(uuid, None)
