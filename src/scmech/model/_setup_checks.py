"""The checks of registration: everything ``setup_anndata``/``setup_mudata`` validate before writing anything.

:func:`validate_for_setup` runs them in order (the expression matrix, the design, the size factor, the covariates
and the gene embedding), so that a failed setup leaves the data untouched; the other functions are its steps and
the check of ``perturbation_modality``.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scvi import settings

from scmech.data._checks import check_adata, check_empty_cells_genes, check_expression, looks_like_counts
from scmech.data._design import get_design, validate_categorical
from scmech.data._log_scale import log1p_base
from scmech.data._obs_checks import check_float32, check_gene_embedding, check_key_types, check_mixed_types
from scmech.data._target_genes import check_target_genes, target_gene_names

from ._target_name_checks import warn_target_names

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData


__all__ = ["PERTURBATION_MODALITIES", "check_context_columns", "check_saved_columns", "validate_for_setup"]

#: the perturbation modalities ``setup_anndata`` knows
PERTURBATION_MODALITIES = ("CRISPRko", "CRISPRi", "CRISPRa")


def _check_modality(value: str | None) -> None:
    """Check that a perturbation modality is one of :data:`PERTURBATION_MODALITIES` (or ``None``).

    Parameters
    ----------
    value
        The ``perturbation_modality`` of the setup call.

    Raises
    ------
    ValueError
        For another value.
    """
    if value is not None and value not in PERTURBATION_MODALITIES:
        msg = (
            f"perturbation_modality={value!r} is not one of {PERTURBATION_MODALITIES} (or None); e.g. "
            "setup_anndata(..., perturbation_modality='CRISPRi') for a knock-down screen."
        )
        raise ValueError(msg)


def validate_for_setup(
    adata: AnnData,
    *,
    layer: str | None,
    counts: bool,
    perturbation_key: str,
    control_label: str | Sequence[str],
    separator: str,
    unassigned_label: str | Sequence[str] | None,
    batch_key: str | None = None,
    time_key: str | None = None,
    media_key: str | None = None,
    media_time_key: str | None = None,
    efficacy_key: str | None = None,
    size_factor_key: str | None = None,
    categorical_covariate_keys: Sequence[str] | None = None,
    continuous_covariate_keys: Sequence[str] | None = None,
    gene_embedding_key: str | None = None,
    gene_symbols: str | None = None,
    mod: str | None = None,
) -> None:
    """Validate everything before anything is written, so that a failed setup leaves adata untouched.

    The mixin's ``_validate_for_setup``: ``setup_anndata`` and ``setup_mudata`` call it with their arguments.

    Parameters
    ----------
    adata
        The AnnData (or the RNA modality of a MuData) to register.
    layer
        Layer with the values; ``X`` when ``None``.
    counts
        Whether the values must be counts.
    perturbation_key, control_label, separator, unassigned_label
        The perturbation labels, as in :func:`~scmech.data.get_design`.
    batch_key, time_key, media_key, media_time_key, efficacy_key
        The design columns, as in :func:`~scmech.data.get_design`.
    size_factor_key
        ``obs`` column of library sizes, or ``None``.
    categorical_covariate_keys
        Categorical covariate columns, or ``None``.
    continuous_covariate_keys
        Continuous covariate columns, or ``None``.
    gene_embedding_key
        ``varm`` key of a gene embedding, or ``None``.
    gene_symbols
        ``var`` column of the names targets are matched against, or ``None`` (``var_names``).
    mod
        The MuData modality ``adata`` is, as messages name it; ``None`` for an AnnData.

    Raises
    ------
    KeyError
        For a missing layer, ``obs`` column, ``var`` column or ``varm`` key.
    ValueError
        For invalid values (expression, labels, design columns, size factors, covariates, numbers beyond the
        ``float32`` range of training), a covariate key listed twice and a target that names two genes.
    TypeError
        For a key that is not a string, a list of covariate keys given as a single string, a categorical column
        mixing value types, and a sparse or non-numeric gene embedding.
    """
    where = f"adata.layers[{layer!r}]" if layer is not None else "adata.X"
    if mod is not None:
        where = f"mdata[{mod!r}]." + where.removeprefix("adata.")
    check_key_types(
        {
            "perturbation_key": perturbation_key,
            "batch_key": batch_key,
            "time_key": time_key,
            "media_key": media_key,
            "media_time_key": media_time_key,
            "efficacy_key": efficacy_key,
            "size_factor_key": size_factor_key,
            "gene_embedding_key": gene_embedding_key,
        },
        {
            "categorical_covariate_keys": categorical_covariate_keys,
            "continuous_covariate_keys": continuous_covariate_keys,
        },
    )
    check_adata(adata)
    _check_expression_layer(adata, layer, where, counts=counts)
    categorical = (
        (batch_key, "batch_key"),
        (media_key, "media_key"),
        *((k, "categorical_covariate_keys") for k in categorical_covariate_keys or []),
    )
    check_mixed_types(adata, categorical)
    design = get_design(
        adata,
        perturbation_key,
        control_label,
        separator=separator,
        unassigned_label=unassigned_label,
        batch_key=batch_key,
        time_key=time_key,
        media_key=media_key,
        media_time_key=media_time_key,
        efficacy_key=efficacy_key,
    )
    names = target_gene_names(adata.var, gene_symbols, where="adata.var" if mod is None else f"mdata[{mod!r}].var")
    check_target_genes(names, design.perturbation.targets, perturbation_key, gene_symbols)
    warn_target_names(design.perturbation, names, perturbation_key, unassigned_label, adata.var, gene_symbols)
    _warn_small_conditions(design.perturbation, perturbation_key)
    _check_size_factor(adata, size_factor_key)
    _check_covariates(adata, categorical_covariate_keys, continuous_covariate_keys)
    _warn_unused_categories(adata, categorical)
    check_gene_embedding(adata, gene_embedding_key)


# ---------------------------------------------------------------------- the steps of PerturbationSetupMixin's checks
# Their warnings are issued two calls below the user's setup call (setup_anndata -> validate_for_setup -> step), hence
# ``warnings_stacklevel + 2``: they point at the user's line.


def _check_expression_layer(adata: AnnData, layer: str | None, where: str, *, counts: bool) -> None:
    """Check the expression matrix to register and warn about genes without any counts.

    Parameters
    ----------
    adata
        The AnnData (or the RNA modality of a MuData) to register.
    layer
        Layer with the values; ``X`` when ``None``.
    where
        How messages name the matrix (``"adata.X"``, ``"mdata['rna'].layers['counts']"``...).
    counts
        Whether the values must be counts.

    Raises
    ------
    KeyError
        When ``layer`` is not a layer of ``adata``.
    TypeError
        When ``layer`` is not a string.
    ValueError
        When the matrix holds invalid values (see :func:`~scmech.data._checks.check_expression`).
    """
    if layer is not None and not isinstance(layer, str):
        msg = f"layer={layer!r} must be the name of one layer of adata.layers (a string), or None for X."
        raise TypeError(msg)
    if layer is not None and layer not in adata.layers:
        msg = f"Layer {layer!r} is not in {where.split('.layers')[0]}.layers (layers: {list(adata.layers.keys())})."
        raise KeyError(msg)
    x = adata.layers[layer] if layer is not None else adata.X
    if x is None:
        msg = f"{where} is empty (None); pass layer=... with the counts."
        raise ValueError(msg)
    check_expression(x, where, counts=counts)
    if not counts:  # the base of log-normalised input is read back at prediction: refuse a broken record now
        log1p_base(adata, where.split(".layers")[0].removesuffix(".X"))
        top = looks_like_counts(x)
        if top is not None:
            warnings.warn(
                f"{where} was registered with counts=False (log-normalised values) but holds only non-negative "
                f"integers up to {top:g}: it looks like raw counts, whose predictions would be read as log levels. "
                "Register raw counts with counts=True (the default) and gene_likelihood='nb' or 'zinb', or "
                "log-normalise them first (sc.pp.normalize_total(adata, target_sum=1e4); sc.pp.log1p(adata)).",
                UserWarning,
                stacklevel=settings.warnings_stacklevel + 2,
            )
    _, zero_genes = check_empty_cells_genes(x, where, counts=counts)
    if zero_genes:
        warnings.warn(
            f"{where} has {zero_genes} genes without any counts; they are kept and predicted near zero. "
            "Consider sc.pp.filter_genes(adata, min_cells=1).",
            UserWarning,
            stacklevel=settings.warnings_stacklevel + 2,
        )


def _warn_small_conditions(design, perturbation_key: str) -> None:
    """Warn about conditions with fewer than 3 cells.

    Parameters
    ----------
    design
        The :class:`~scmech.data.PerturbationDesign` of the data.
    perturbation_key
        Its ``obs`` column, as messages name it.
    """
    counts_per = design.cell_counts()
    small = [c for c in design.conditions if counts_per.get(c, 0) < 3]
    if small:
        warnings.warn(
            f"Conditions {small[:10]} of obs[{perturbation_key!r}] have fewer than 3 cells; their effects are "
            "poorly determined. Consider merging or removing them.",
            UserWarning,
            stacklevel=settings.warnings_stacklevel + 2,
        )


def _check_size_factor(adata: AnnData, size_factor_key: str | None) -> None:
    """Check that a registered size factor is a column of positive, finite library sizes.

    Parameters
    ----------
    adata
        The AnnData to register.
    size_factor_key
        Its ``obs`` column of library sizes, or ``None``.

    Raises
    ------
    KeyError
        When the column does not exist.
    ValueError
        When it holds values that are not positive and finite.
    """
    for key, what in ((size_factor_key, "size_factor_key"),):
        if key is not None:
            if key not in adata.obs.columns:
                msg = f"{what} {key!r} is not a column of adata.obs."
                raise KeyError(msg)
            sf = pd.to_numeric(adata.obs[key], errors="coerce").to_numpy(dtype=float)
            if not np.all(np.isfinite(sf) & (sf > 0)):
                msg = f"obs[{key!r}] must hold positive, finite library sizes."
                raise ValueError(msg)
            check_float32(sf, key, "library size", positive=True)


def _check_covariates(
    adata: AnnData,
    categorical_covariate_keys: Sequence[str] | None,
    continuous_covariate_keys: Sequence[str] | None,
) -> None:
    """Check that the covariate keys are lists of ``obs`` columns without missing values.

    Parameters
    ----------
    adata
        The AnnData to register.
    categorical_covariate_keys
        Categorical covariate columns, or ``None``.
    continuous_covariate_keys
        Continuous covariate columns, or ``None``.

    Raises
    ------
    TypeError
        When a list of keys is given as a single string.
    KeyError
        When a key is not a column of ``adata.obs``.
    ValueError
        When a covariate has missing values, or a continuous one non-numeric or infinite values.
    """
    for keys, what in ((categorical_covariate_keys, "categorical"), (continuous_covariate_keys, "continuous")):
        if isinstance(keys, str):
            msg = f"{what}_covariate_keys must be a list of obs columns, got the string {keys!r}; pass [{keys!r}]."
            raise TypeError(msg)
        for key in keys or []:
            if key not in adata.obs.columns:
                msg = f"{what} covariate key {key!r} is not a column of adata.obs."
                raise KeyError(msg)
            col = adata.obs[key]
            if col.isna().any():
                msg = f"obs[{key!r}] has missing values; a covariate must be complete: fill them first."
                raise ValueError(msg)
            if what == "continuous":
                values = pd.to_numeric(col, errors="coerce")
                if values.isna().any() or not np.isfinite(values.to_numpy(dtype=np.float64)).all():
                    msg = (
                        f"obs[{key!r}] must hold finite numbers to be a continuous covariate (found non-numeric or "
                        "infinite values); fix them, or register the column as a categorical covariate."
                    )
                    raise ValueError(msg)
                check_float32(values.to_numpy(dtype=np.float64), key, "continuous covariate")


def _warn_unused_categories(adata: AnnData, keys: Sequence[tuple[str | None, str]]) -> None:
    """Warn about categorical ``obs`` columns with categories that no cell has.

    Parameters
    ----------
    adata
        The AnnData to register.
    keys
        ``(column, argument name)`` pairs; ``None`` columns are skipped.
    """
    for key, what in keys:
        if key is None:
            continue
        col = adata.obs[key]
        if isinstance(col.dtype, pd.CategoricalDtype):
            unused = [c for c in col.cat.categories if c not in set(col.unique())]
            if unused:
                warnings.warn(
                    f"{what} obs[{key!r}] has unused categories {unused[:10]}; they are registered without cells "
                    f"(e.g. a batch with an untrained embedding). Drop them first: adata.obs[{key!r}] = "
                    f"adata.obs[{key!r}].cat.remove_unused_categories().",
                    UserWarning,
                    stacklevel=settings.warnings_stacklevel + 2,
                )


#: ``setup_anndata`` arguments naming ``obs`` columns (one name, or a list for the covariates)
_OBS_ARGS = (
    "perturbation_key",
    "batch_key",
    "time_key",
    "media_key",
    "media_time_key",
    "efficacy_key",
    "size_factor_key",
    "categorical_covariate_keys",
    "continuous_covariate_keys",
)


def check_saved_columns(adata: AnnData, setup: dict) -> None:
    """Refuse data for a loaded model without an ``obs`` column the model was set up with.

    Parameters
    ----------
    adata
        The data the loaded model is attached to.
    setup
        The saved ``setup_anndata`` arguments.

    Raises
    ------
    KeyError
        Naming the argument and the missing column.
    """
    for arg in _OBS_ARGS:
        keys = setup.get(arg)
        for key in [keys] if isinstance(keys, str) else list(keys or ()):
            if key not in adata.obs.columns:
                msg = (
                    f"adata.obs has no column {key!r}, the {arg} the saved model was set up with; the data a model is "
                    "loaded with must be set up like its training data (add the column, e.g. the batch of each cell, "
                    "or load with the data it was trained on)."
                )
                raise KeyError(msg)
    check_context_columns(adata.obs, setup)


#: ``obs`` columns of categories that every cell needs (a missing one would crash scvi-tools' transfer of the setup)
_CONTEXT_ARGS = {"batch_key": "batch", "media_key": "medium"}


def check_context_columns(obs: pd.DataFrame, setup: dict, args: tuple[str, ...] = tuple(_CONTEXT_ARGS)) -> None:
    """Refuse missing (NaN) batches or media in data the setup is transferred to (a query, or a loaded model's).

    ``setup_anndata`` refuses them in training data (:func:`~scmech.data._design.validate_categorical`); scvi-tools'
    transfer of the setup to other data would fail inside numpy on them instead.

    Parameters
    ----------
    obs
        The cell annotations that hold the columns (``adata.obs``, or a MuData modality's).
    setup
        The setup arguments of the model, which name the columns.
    args
        The arguments to check (``"batch_key"``, ``"media_key"``): those whose columns are in ``obs``.

    Raises
    ------
    ValueError
        Naming the column, the number of missing values and the fix.
    """
    for arg in args:
        key = setup.get(arg)
        if key is not None and key in obs.columns:
            validate_categorical(obs[key], key, _CONTEXT_ARGS[arg])
