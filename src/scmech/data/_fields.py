"""scvi-tools fields that register the experimental design of a screen.

:class:`PerturbationField` parses perturbation labels into the targets of each cell (a compact multi-hot design)
that the data loaders serve per minibatch; :class:`TimeField`, :class:`EfficacyField` and :class:`MediaTimeField`
are numerical ``obs`` fields with the validation of :mod:`scmech.data._design`. Each has a MuData variant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import rich.table
from scvi.data.fields import BaseAnnDataField, MuDataWrapper, NumericalObsField

from scmech._constants import SCMECH_ADATA_KEYS, SCMECH_REGISTRY_KEYS
from scmech._docs import fill_doc

from ._design import _numeric, parse_perturbations, validate_efficacy, validate_time
from ._target_genes import check_target_genes, target_gene_names

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

__all__ = [
    "EfficacyField",
    "MediaTimeField",
    "MuDataEfficacyField",
    "MuDataMediaTimeField",
    "MuDataPerturbationField",
    "MuDataTimeField",
    "PerturbationField",
    "TimeField",
]


def perturbation_state(adata_manager) -> dict:
    """Return the perturbation field's state registry of a manager, as stored (read-only by convention).

    scvi-tools' ``AnnDataManager.get_state_registry`` converts the whole state into a frozen attribute dictionary
    on every call. The perturbation state holds one entry per target and per condition, so at genome scale
    (:math:`10^4` targets) each conversion takes most of a second, and a model reads it many times; this reads the
    registry the manager keeps (``adata_manager.registry``, the dictionary scvi-tools saves with a model).
    """
    return adata_manager.registry["field_registries"][SCMECH_REGISTRY_KEYS.PERTURBATION_KEY]["state_registry"]


@fill_doc
class PerturbationField(BaseAnnDataField):
    """Register perturbation labels as the targets of each cell.

    Registration parses ``adata.obs[obs_key]`` with :func:`~scmech.data.parse_perturbations` and writes the
    targets of each cell to ``adata.obsm["_scmech_perturbation"]``: their positions in the registered target list
    (cells x the largest number of targets of one cell, ``-1`` where a cell has fewer; a control row is all
    ``-1``). This is the canonical multi-hot design in compact form (:meth:`PerturbationDesign.entries`): a
    minibatch carries a few numbers per cell, whatever the number of targets of the screen. The state registry
    keeps the targets, the canonical conditions and their cell counts, the label conventions and the position of
    each target in ``var_names`` (``-1`` when the target gene is not measured), or in the ``var`` column
    ``gene_symbols``.

    Parameters
    ----------
    registry_key
        Key under which the data loaders serve the matrix.
    obs_key
        %(perturbation_key)s
    control_label
        %(control_label)s
    separator
        %(separator)s
    unassigned_label
        %(unassigned_label)s They are kept but not fitted.
    gene_symbols
        %(gene_symbols)s
    """

    TARGETS_KEY = "targets"
    CONDITIONS_KEY = "conditions"
    N_CELLS_KEY = "n_cells_per_condition"
    TARGET_VAR_INDEX_KEY = "target_var_index"
    CONTROL_KEY = "control_label"
    SEPARATOR_KEY = "separator"
    UNASSIGNED_KEY = "unassigned_label"
    OBS_KEY = "obs_key"
    GENE_SYMBOLS_KEY = "gene_symbols"

    def __init__(
        self,
        registry_key: str,
        obs_key: str,
        *,
        control_label: str | Sequence[str] = "NT",
        separator: str = "+",
        unassigned_label: str | Sequence[str] | None = "unassigned",
        gene_symbols: str | None = None,
    ) -> None:
        super().__init__()
        self._registry_key = registry_key
        self._obs_key = obs_key
        self.control_label = control_label
        self.separator = separator
        self.unassigned_label = unassigned_label
        self.gene_symbols = gene_symbols

    @property
    def registry_key(self) -> str:
        """Key referenced by the data loaders."""
        return self._registry_key

    @property
    def attr_name(self) -> str:
        """The matrix lives in ``obsm``."""
        return "obsm"

    @property
    def attr_key(self) -> str:
        """``obsm`` key of the registered targets of each cell."""
        return SCMECH_ADATA_KEYS.PERTURBATION_OBSM

    @property
    def is_empty(self) -> bool:
        """The field is never empty."""
        return False

    def _parse(self, adata: AnnData, targets: Sequence[str] | None = None):
        if self._obs_key not in adata.obs.columns:
            msg = (
                f"perturbation_key {self._obs_key!r} is not a column of adata.obs "
                f"(columns: {list(adata.obs.columns)[:12]})."
            )
            raise KeyError(msg)
        names = target_gene_names(adata.var, self.gene_symbols)
        design = parse_perturbations(
            adata.obs[self._obs_key].to_numpy(),
            control_label=self.control_label,
            separator=self.separator,
            unassigned_label=self.unassigned_label,
            var_names=names,
            targets=targets,
            key=self._obs_key,
            require_control=targets is None,
        )
        check_target_genes(names, design.targets, self._obs_key, self.gene_symbols)
        return design, names

    def validate_field(self, adata: AnnData) -> None:
        """Check that the column exists and parses.

        Parameters
        ----------
        adata
            Data to register.
        """
        self._parse(adata)

    def register_field(self, adata: AnnData) -> dict:
        """Parse the labels, write the targets of each cell and return the state registry.

        Parameters
        ----------
        adata
            Data to register; the targets of each cell are written to its ``obsm``.

        Returns
        -------
        The state registry: the ``obs`` column, the targets, the conditions with their cell counts, the position
        of each target among the genes (``var_names``, or the ``gene_symbols`` column) and the label conventions.
        """
        design, names = self._parse(adata)
        adata.obsm[self.attr_key] = design.entries()
        counts = design.cell_counts()
        return {
            self.OBS_KEY: self._obs_key,
            self.TARGETS_KEY: list(design.targets),
            self.CONDITIONS_KEY: list(design.conditions),
            self.N_CELLS_KEY: {str(k): int(v) for k, v in counts.items()},
            self.TARGET_VAR_INDEX_KEY: design.target_index(names).tolist(),
            self.GENE_SYMBOLS_KEY: self.gene_symbols,
            self.CONTROL_KEY: design.control_label,
            self.SEPARATOR_KEY: self.separator,
            self.UNASSIGNED_KEY: design.unassigned_label,
        }

    def transfer_field(self, state_registry: dict, adata_target: AnnData, **kwargs) -> dict:
        """Register new data with the targets of the source registry (unknown targets raise).

        Parameters
        ----------
        state_registry
            State registry of the data the model was set up on (:meth:`register_field`).
        adata_target
            New data to register; the targets of each cell are written to its ``obsm``.
        **kwargs
            Options of scvi-tools' transfer (e.g. ``extend_categories``); not used.

        Returns
        -------
        A copy of ``state_registry`` (the registered targets are kept).
        """
        design, _ = self._parse(adata_target, targets=state_registry[self.TARGETS_KEY])
        adata_target.obsm[self.attr_key] = design.entries()
        out = dict(state_registry)
        out[self.TARGETS_KEY] = list(state_registry[self.TARGETS_KEY])
        return out

    def get_summary_stats(self, state_registry: dict) -> dict:
        """Count targets and perturbation conditions (control excluded).

        Parameters
        ----------
        state_registry
            State registry returned by :meth:`register_field`.

        Returns
        -------
        ``{"n_targets": ..., "n_perturbations": ...}``.
        """
        conds = state_registry[self.CONDITIONS_KEY]
        n_cond = len([c for c in conds if c != state_registry[self.CONTROL_KEY]])
        return {"n_targets": len(state_registry[self.TARGETS_KEY]), "n_perturbations": n_cond}

    def view_state_registry(self, state_registry: dict) -> rich.table.Table | None:
        """Table of conditions with their cell counts.

        Parameters
        ----------
        state_registry
            State registry returned by :meth:`register_field`.

        Returns
        -------
        One row per condition (cells, whether it is the control), then the unassigned cells (not fitted).
        """
        t = rich.table.Table(title=f"Perturbation state registry: adata.obs['{state_registry[self.OBS_KEY]}']")
        t.add_column("Condition", justify="center", style="dodger_blue1", no_wrap=True, overflow="fold")
        t.add_column("Cells", justify="center", style="dark_violet", no_wrap=True, overflow="fold")
        t.add_column("Control", justify="center", style="green", no_wrap=True, overflow="fold")
        n_cells = state_registry[self.N_CELLS_KEY]
        for cond in state_registry[self.CONDITIONS_KEY]:
            t.add_row(cond, str(n_cells.get(cond, 0)), "yes" if cond == state_registry[self.CONTROL_KEY] else "")
        un = state_registry[self.UNASSIGNED_KEY]
        if un is not None and un in n_cells:
            t.add_row(f"{un} (not fitted)", str(n_cells[un]), "")
        return t


class _ValidatedNumericalObsField(NumericalObsField):
    """Numerical ``obs`` field with a validation function."""

    _what = "value"

    def _check(self, values, key):  # pragma: no cover - overridden
        return values

    def validate_field(self, adata: AnnData) -> None:
        """Check presence, type and range.

        Parameters
        ----------
        adata
            Data to register.
        """
        if self.attr_key not in adata.obs.columns:
            cols = list(adata.obs.columns)[:12]
            msg = f"{self._what} key {self.attr_key!r} is not a column of adata.obs (columns: {cols})."
            raise KeyError(msg)
        self._check(adata.obs[self.attr_key], self.attr_key)


class TimeField(_ValidatedNumericalObsField):
    """Time since perturbation per cell (numeric, finite, ``>= 0``).

    Parameters
    ----------
    attr_key
        ``obs`` column with the time; ``None`` leaves the field empty (no time registered).
    registry_key
        Key under which the data loaders serve the values.
    """

    _what = "time"

    def __init__(self, attr_key: str | None, registry_key: str = SCMECH_REGISTRY_KEYS.TIME_KEY) -> None:
        super().__init__(registry_key, attr_key, required=False)

    def _check(self, values, key):
        return validate_time(values, key)


class EfficacyField(_ValidatedNumericalObsField):
    """Knock-down efficacy per cell in ``[0, 1]``.

    Parameters
    ----------
    attr_key
        ``obs`` column with the efficacy; ``None`` leaves the field empty (no efficacy registered).
    registry_key
        Key under which the data loaders serve the values.
    """

    _what = "efficacy"

    def __init__(self, attr_key: str | None, registry_key: str = SCMECH_REGISTRY_KEYS.EFFICACY_KEY) -> None:
        super().__init__(registry_key, attr_key, required=False)

    def _check(self, values, key):
        return validate_efficacy(values, key)


class MediaTimeField(_ValidatedNumericalObsField):
    """Time of the switch into the cell's medium, on the clock of the time key (NaN: never switched).

    Parameters
    ----------
    attr_key
        ``obs`` column with the switch time; ``None`` leaves the field empty (no switch time registered).
    registry_key
        Key under which the data loaders serve the values.
    """

    _what = "media time"

    def __init__(self, attr_key: str | None, registry_key: str = SCMECH_REGISTRY_KEYS.MEDIA_TIME_KEY) -> None:
        super().__init__(registry_key, attr_key, required=False)

    def _check(self, values, key):
        arr = _numeric(values, key, "media time")
        if np.isinf(arr).any():
            msg = f"obs[{key!r}] has infinite media switch times; use NaN for cells that never switched medium."
            raise ValueError(msg)
        return arr


MuDataPerturbationField = MuDataWrapper(PerturbationField)
MuDataTimeField = MuDataWrapper(TimeField)
MuDataEfficacyField = MuDataWrapper(EfficacyField)
MuDataMediaTimeField = MuDataWrapper(MediaTimeField)

# scvi-tools' wrapper makes classes without a docstring; each gets one naming the field it wraps
_MUDATA_DOC = """:class:`{field}` for a MuData: the same field, read from one modality or from the MuData itself.

Parameters
----------
*args
    Positional arguments of :class:`{field}`.
mod_key
    Modality whose ``obs`` holds the column; ``None`` uses the ``obs`` of the MuData itself.
mod_required
    Raise a ``ValueError`` when ``mod_key`` is ``None``.
**kwargs
    Keyword arguments of :class:`{field}`.
"""
MuDataPerturbationField.__doc__ = _MUDATA_DOC.format(field="PerturbationField")
MuDataTimeField.__doc__ = _MUDATA_DOC.format(field="TimeField")
MuDataEfficacyField.__doc__ = _MUDATA_DOC.format(field="EfficacyField")
MuDataMediaTimeField.__doc__ = _MUDATA_DOC.format(field="MediaTimeField")
