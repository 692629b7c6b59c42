r"""Distribution metric: the energy distance between predicted and observed cells (``energy_distance``).

In :func:`scmech.tl.evaluate` it is computed, per condition, between at most ``max_cells`` predicted and observed
cells in the space of the top principal components of the observed log-normalised cells.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scmech.data._design import canonical_condition

if TYPE_CHECKING:
    from anndata import AnnData
    from sklearn.decomposition import PCA

    from ._observed import _Observed


def energy_distance(x: np.ndarray, y: np.ndarray) -> float:
    r"""Energy distance with Euclidean (not squared) cell-to-cell distances.

    .. math:: E(X, Y) = 2\,\overline{d(x, y)} - \overline{d(x, x')} - \overline{d(y, y')},

    with :math:`d` the Euclidean distance and every mean over all pairs, the zero diagonal included (as
    ``pertpy.tools.Distance("edistance")`` since pertpy PR #733; scPerturb used squared distances).

    Parameters
    ----------
    x, y
        Cells x features arrays.

    Returns
    -------
    The energy distance (0 for identical samples).

    Raises
    ------
    TypeError
        For an AnnData or a MuData (pass its matrix, or a representation in ``obsm``).
    ValueError
        For arrays that are not 2-D, empty, with different numbers of features, or with NaN or infinite values.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.normal(size=(50, 3)), rng.normal(1.0, size=(40, 3))
    >>> round(energy_distance(x, x), 6)
    0.0
    """
    from scipy.spatial.distance import cdist

    for name, v in (("x", x), ("y", y)):
        if hasattr(v, "obs") and (hasattr(v, "X") or hasattr(v, "mod")):  # an AnnData or a MuData
            msg = (
                f"{name} must be a cells x features array, got {type(v).__name__}; pass e.g. adata.X or "
                "adata.obsm['X_pca'] of an AnnData, not the AnnData."
            )
            raise TypeError(msg)
    x = np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)
    y = np.asarray(y.toarray() if sp.issparse(y) else y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2:
        msg = f"x and y must be 2-D (cells x features) arrays, got shapes {x.shape} and {y.shape}."
        raise ValueError(msg)
    if len(x) == 0 or len(y) == 0:
        msg = "energy_distance needs at least one cell on each side."
        raise ValueError(msg)
    if x.shape[1] != y.shape[1]:
        msg = (
            f"x has {x.shape[1]} features and y {y.shape[1]}; both must hold the same features (columns) in the "
            "same order."
        )
        raise ValueError(msg)
    for name, arr in (("x", x), ("y", y)):
        if not np.isfinite(arr).all():
            msg = (
                f"{name} holds {int((~np.isfinite(arr)).sum())} NaN or infinite values; the distance would be NaN. "
                "Remove or impute them."
            )
            raise ValueError(msg)
    return float(2 * cdist(x, y).mean() - cdist(x, x).mean() - cdist(y, y).mean())


def _fit_pca(obs: _Observed, n_pcs: int, rng: np.random.Generator, max_cells: int, random_state: int) -> PCA:
    """PCA of the observed log-normalised cells, at most ``max_cells`` (seeded subsample) per group."""
    from sklearn.decomposition import PCA

    grp = obs.cells.obs["group"].astype(str).to_numpy()
    take = []
    for g in pd.unique(grp):
        idx = np.flatnonzero(grp == g)
        if len(idx) > max_cells:
            idx = np.sort(rng.choice(idx, size=max_cells, replace=False))
        take.append(idx)
    take = np.concatenate(take)
    x = obs.cells.X[take]
    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    k = max(1, min(n_pcs, x.shape[0] - 1, x.shape[1]))
    return PCA(n_components=k, random_state=random_state).fit(x)


def _observed_subsets(obs: _Observed, rng: np.random.Generator, max_cells: int) -> dict[str, np.ndarray]:
    """At most ``max_cells`` observed cells per evaluated condition (seeded), drawn once for every model.

    Drawn once so that every model's ``energy_distance`` is measured against the same observed cells: a model's
    score does not depend on which other models are evaluated with it, nor on their order.
    """
    grp = obs.cells.obs["group"].astype(str).to_numpy()
    out = {}
    for c in obs.conditions:
        oidx = np.flatnonzero(grp == c)
        if len(oidx) > max_cells:
            oidx = np.sort(rng.choice(oidx, size=max_cells, replace=False))
        out[c] = oidx
    return out


def _cell_edistance(
    c: str,
    cell_pred: AnnData | None,
    obs: _Observed,
    pca: PCA,
    oidx: np.ndarray,
    rng: np.random.Generator,
    max_cells: int,
) -> float:
    """Energy distance of condition ``c`` between predicted and observed cells in PCA space (NaN without cells).

    ``oidx`` are the observed cells of ``c`` (from :func:`_observed_subsets`, shared by the models); at most
    ``max_cells`` predicted cells are drawn with ``rng``.
    """
    if cell_pred is None:
        return np.nan
    design = obs.design
    plabels = np.asarray([canonical_condition(x, design) for x in cell_pred.obs["perturbation"].astype(str)])
    pidx = np.flatnonzero(plabels == c)
    if len(pidx) == 0 or len(oidx) == 0:
        return np.nan
    if len(pidx) > max_cells:
        pidx = np.sort(rng.choice(pidx, size=max_cells, replace=False))
    px = cell_pred[pidx][:, obs.genes].X
    px = px.toarray() if sp.issparse(px) else np.asarray(px)
    ox = obs.cells.X[oidx]
    ox = ox.toarray() if sp.issparse(ox) else np.asarray(ox)
    return energy_distance(pca.transform(px.astype(np.float64)), pca.transform(ox.astype(np.float64)))
