r"""The screen as the checks read it: expressed genes, normalised, with the parsed design.

Genes count as expressed from a mean count of ``0.05`` per cell (at most the 2,000 most expressed are kept).
With raw counts, cells are normalised to :math:`10^4 x_{cg}/\ell_c`; log-normalised values (``counts=False``)
are used as they are. :class:`_Data` then gives per-group moments and the pseudobulk with its delta-method
sampling variance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scmech._constants import TARGET_SUM
from scmech.data._checks import rows_in_memory
from scmech.data._design import get_design
from scmech.data._pseudobulk import _get_matrix, library_size

from ._registry import _time_label
from ._validation import _check_raw_counts

if TYPE_CHECKING:
    from anndata import AnnData

    from scmech.data._design import ExperimentalDesign

#: genes count as expressed from this mean raw count per cell (counts) on
_MIN_MEAN_COUNT = 0.05
#: at most this many (most expressed) genes are used
_MAX_GENES = 2000


@dataclass
class _Data:
    """Expressed genes of the screen, normalised, with the parsed design."""

    design: ExperimentalDesign
    norm: sp.csr_matrix  # cells x genes: 1e4 x / l (counts) or the values as given
    norm2: sp.csr_matrix  # element-wise square of ``norm``
    genes: pd.Index
    counts: bool
    batch: np.ndarray | None
    time: np.ndarray | None
    media: np.ndarray | None

    def moments(self, cells: np.ndarray, codes: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cell count, sum and sum of squares per group (groups x genes) of the given cells."""
        keep = codes >= 0
        design = sp.csr_matrix(
            (np.ones(int(keep.sum())), (codes[keep], np.flatnonzero(keep))), shape=(n_groups, len(cells))
        )
        return self.replicate_moments(cells, design)

    def replicate_moments(self, cells: np.ndarray, design: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Weighted count, sum and sum of squares of ``cells`` for each row of ``design`` (rows x cells)."""
        xc, xc2 = self.norm[cells], self.norm2[cells]
        n = np.asarray(design.sum(axis=1)).ravel()
        return n, np.asarray((design @ xc).todense()), np.asarray((design @ xc2).todense())

    def pseudobulk(self, n: np.ndarray, s: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Log pseudobulk and its delta-method sampling variance per group (``(..., groups, genes)``)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            nn = n[..., None]
            m = s / nn
            var = np.maximum(q - nn * m**2, 0.0) / np.maximum(nn - 1.0, 1.0)
            if self.counts:
                return np.log1p(m), var / nn / (1.0 + m) ** 2
            return m, var / nn

    def log_dense(self, cells: np.ndarray) -> np.ndarray:
        """Dense log-normalised values (cells x genes) of the given cells."""
        x = self.norm[cells].toarray()
        return np.log1p(x) if self.counts else x


def _prepare(
    adata: AnnData,
    *,
    perturbation_key: str,
    control_label: str,
    separator: str,
    unassigned_label: str | None,
    batch_key: str | None,
    time_key: str | None,
    media_key: str | None,
    layer: str | None,
    counts: bool,
) -> _Data:
    """Parse the design, check and normalise the matrix and keep the expressed genes.

    Parameters
    ----------
    adata
        Annotated data matrix.
    perturbation_key, control_label, separator, unassigned_label, batch_key, time_key, media_key, layer, counts
        As in :func:`~scmech.tl.check_assumptions`.

    Returns
    -------
    The data the checks read.
    """
    design = get_design(
        adata,
        perturbation_key,
        control_label,
        separator=separator,
        unassigned_label=unassigned_label,
        batch_key=batch_key,
        time_key=time_key,
        media_key=media_key,
    )
    x, where = _checked_matrix(adata, layer, counts)
    norm, mean_count, expressed = _normalise(x, design.perturbation.fit_mask, counts, where)
    idx = _select_genes(mean_count, expressed, where)
    norm = sp.csr_matrix(norm[:, idx])
    return _Data(
        design=design,
        norm=norm,
        norm2=norm.multiply(norm).tocsr(),
        genes=pd.Index(adata.var_names[idx]).astype(str),
        counts=counts,
        batch=None if design.batch is None else np.asarray(design.batch).astype(str),
        time=design.time,
        media=None if design.media is None else np.asarray(design.media).astype(str),
    )


def _checked_matrix(adata: AnnData, layer: str | None, counts: bool) -> tuple[sp.csr_matrix, str]:
    """Read the matrix of ``layer`` as float64 CSR, checked to hold counts (or finite log-scale values); say where."""
    x = _get_matrix(adata, layer)
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    _check_raw_counts(x, where, counts, "The checks need raw counts (they normalise them)")
    x = sp.csr_matrix(rows_in_memory(x), dtype=np.float64)  # a backed matrix is read (in blocks of rows)
    if not counts:
        # raw counts declared log-normalised would be compared without library-size normalisation
        from scmech.tl._metrics._evaluate import _check_log_scale

        _check_log_scale(x, float(x.max()) if x.nnz else None, where)
    return x, where


def _normalise(
    x: sp.csr_matrix, fit: np.ndarray, counts: bool, where: str
) -> tuple[sp.spmatrix, np.ndarray, np.ndarray]:
    """Normalised matrix, mean per gene over the ``fit`` cells and which genes are expressed.

    With counts, cells are scaled to ``TARGET_SUM`` and genes with a mean count of at least
    :data:`_MIN_MEAN_COUNT` are expressed; otherwise the values are kept and genes that vary are expressed.
    """
    if counts:
        lib = library_size(x)
        empty = fit & (lib <= 0)
        if empty.any():
            msg = f"{int(empty.sum())} cells of {where} have no counts; remove empty cells first."
            raise ValueError(msg)
        mean_count = np.asarray(x[fit].mean(axis=0)).ravel()
        expressed = mean_count >= _MIN_MEAN_COUNT
        norm = sp.diags(np.where(lib > 0, TARGET_SUM / np.maximum(lib, 1e-300), 0.0)) @ x
    else:
        norm = x
        mean_count = np.asarray(x[fit].mean(axis=0)).ravel()
        sq = np.asarray(x[fit].multiply(x[fit]).mean(axis=0)).ravel()
        expressed = (sq - mean_count**2) > 0
    return norm, mean_count, expressed


def _select_genes(mean_count: np.ndarray, expressed: np.ndarray, where: str) -> np.ndarray:
    """Sorted indices of the expressed genes, at most the :data:`_MAX_GENES` with the highest mean."""
    idx = np.flatnonzero(expressed)
    if idx.size > _MAX_GENES:
        idx = np.sort(idx[np.argsort(-mean_count[idx], kind="stable")[:_MAX_GENES]])
    if idx.size < 2:
        msg = (
            f"Only {idx.size} genes of {where} are expressed (mean count >= {_MIN_MEAN_COUNT} per cell); the "
            "assumption checks need expressed genes."
        )
        raise ValueError(msg)
    return idx


def _contexts(data: _Data, use_time: bool = True) -> list[tuple[str, np.ndarray]]:
    """Cell masks of each (medium, time) context, labelled by the parts that vary ("" for a single context)."""
    n = data.design.perturbation.n_cells
    fit = data.design.perturbation.fit_mask
    media = data.media if data.media is not None and len(pd.unique(data.media[fit])) > 1 else None
    time = data.time if use_time and data.time is not None and len(np.unique(data.time[fit])) > 1 else None
    if media is None and time is None:
        return [("", np.ones(n, dtype=bool))]
    frame = pd.DataFrame(
        {
            "media": media if media is not None else "",
            "time": time if time is not None else 0.0,
        }
    )
    frame["key"] = [
        ", ".join(p for p in (m if media is not None else "", _time_label(t) if time is not None else "") if p)
        for m, t in zip(frame["media"], frame["time"], strict=True)
    ]
    order = frame.drop_duplicates("key").sort_values(["media", "time"])["key"].tolist()
    return [(k, (frame["key"] == k).to_numpy()) for k in order]
