"""Registry keys and the names of every key scmech writes into an AnnData.

This module is the single place that defines them; the documentation's "keys" page lists the same
names.
"""

from __future__ import annotations

from typing import NamedTuple


class _SCMECH_REGISTRY_KEYS_NT(NamedTuple):
    X_KEY: str = "X"
    BATCH_KEY: str = "batch"
    LABELS_KEY: str = "labels"
    SIZE_FACTOR_KEY: str = "size_factor"
    CAT_COVS_KEY: str = "extra_categorical_covs"
    CONT_COVS_KEY: str = "extra_continuous_covs"
    PERTURBATION_KEY: str = "perturbation"
    CONDITION_KEY: str = "condition"
    EFFICACY_KEY: str = "efficacy"
    TIME_KEY: str = "time"
    MEDIA_KEY: str = "media"
    MEDIA_TIME_KEY: str = "media_time"
    GUIDE_KEY: str = "guide"
    FIT_MASK_KEY: str = "fit_mask"
    GENE_EMBEDDING_KEY: str = "gene_embedding"


SCMECH_REGISTRY_KEYS = _SCMECH_REGISTRY_KEYS_NT()


class _SCMECH_ADATA_KEYS_NT(NamedTuple):
    """Keys scmech writes into a user's AnnData (and nowhere else)."""

    # written by registration (setup_anndata); private, like scvi-tools' ``_scvi_*`` columns
    PERTURBATION_OBSM: str = "_scmech_perturbation"
    CONDITION_OBS: str = "_scmech_condition"
    FIT_MASK_OBS: str = "_scmech_fit"
    # results of tools and models
    UNS: str = "scmech"
    LATENT_OBSM: str = "X_scmech"
    BASAL_OBSM: str = "X_scmech_basal"
    SS_RESIDUAL_OBS: str = "scmech_ss_residual"
    PREDICTED_LAYER: str = "scmech_predicted"
    EFFICACY_OBS: str = "scmech_efficacy"
    GUIDE_OBS: str = "scmech_guide"
    GUIDE_TARGET_OBS: str = "scmech_perturbation"
    # entries of ``uns["scmech"]``: the tools' default ``key_added`` and the provenance of a prediction
    ERRORS_UNS: str = "error_decomposition"
    ASSUMPTIONS_UNS: str = "assumptions"
    SELECTION_UNS: str = "selection"
    GUIDES_UNS: str = "guide_assignment"
    PREDICTION_UNS: str = "prediction"


SCMECH_ADATA_KEYS = _SCMECH_ADATA_KEYS_NT()

#: suffixes of the guide-summary ``obs`` columns that ``assign_guides`` writes after its ``key_added`` prefix
GUIDE_SUMMARY_SUFFIXES = ("_n_guides", "_guide_umis", "_guide_max_umis", "_guide_max_fraction")

# layers of the AnnData returned by ``predict`` and by the baselines
PREDICTION_LAYERS = ("expression", "log1p")
#: scale of normalised expression: counts per ``TARGET_SUM`` reads
TARGET_SUM = 1e4
