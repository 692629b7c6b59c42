"""Heat map of a regulatory network from :meth:`~scmech.model.SemiMechVI.get_regulatory_network`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from scmech._docs import fill_doc

from ._utils import finish, get_ax

if TYPE_CHECKING:
    from pathlib import Path

    from matplotlib.axes import Axes

__all__ = ["regulatory_network"]


@fill_doc
def regulatory_network(
    network: pd.DataFrame,
    *,
    n_sources: int = 15,
    n_targets: int = 30,
    include_self: bool = False,
    cmap: str = "RdBu_r",
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Axes | None:
    """Plot the strongest sources and targets of a signed gene-gene network as a heat map.

    Columns are sources (regulators or perturbed targets), rows are the genes they act on; both are the
    ones with the largest summed absolute weight. The colour scale is symmetric around 0 (red: activation or
    increase, blue: repression or decrease).

    Parameters
    ----------
    network
        A matrix ``df.loc[target, source]`` (``get_regulatory_network()``, any ``kind``) or a long table of
        edges with columns ``source``, ``target``, ``weight`` (``get_regulatory_network(top_k=...)``).
    n_sources
        Number of sources (columns) to show.
    n_targets
        Number of target genes (rows) to show.
    include_self
        Show the diagonal (self-regulation); blanked otherwise.
    cmap
        Diverging colour map.
    ax
        %(ax)s
    show
        %(show)s
    save
        %(save)s

    Returns
    -------
    The axes, unless ``show`` is ``True``.

    Raises
    ------
    TypeError
        When ``network`` is not a DataFrame.
    ValueError
        When ``network`` is neither an edge table nor a matrix (missing ``source``, ``target`` or ``weight``
        columns, non-numeric weights or no gene names), is empty, or ``n_sources``/``n_targets`` is below 1.

    Examples
    --------
    >>> net = model.get_regulatory_network(kind="intervention")
    >>> scmech.pl.regulatory_network(net, n_sources=10)
    """
    mat = _as_matrix(network)
    for name, value in (("n_sources", n_sources), ("n_targets", n_targets)):
        if int(value) < 1:
            msg = f"{name}={value!r} is out of range; expected an integer >= 1."
            raise ValueError(msg)
    if mat.size == 0:
        msg = "network is empty: nothing to plot."
        raise ValueError(msg)
    mat = mat.astype(float)
    if not include_self:
        common = mat.index.intersection(mat.columns)
        for g in common:
            mat.loc[g, g] = np.nan
    strength = mat.abs()
    sources = strength.sum(axis=0).sort_values(ascending=False).index[: int(n_sources)]
    targets = strength[sources].sum(axis=1).sort_values(ascending=False).index[: int(n_targets)]
    sub = mat.loc[targets, sources]
    vmax = float(np.nanmax(np.abs(sub.to_numpy()))) if np.isfinite(sub.to_numpy()).any() else 1.0
    vmax = vmax if vmax > 0 else 1.0
    figsize = (max(3.0, 0.3 * len(sources) + 2.0), max(3.0, 0.22 * len(targets) + 1.5))
    fig, ax = get_ax(ax, figsize)
    im = ax.imshow(np.ma.masked_invalid(sub.to_numpy()), cmap=cmap, vmin=-vmax, vmax=vmax, aspect="auto")
    ax.set_xticks(np.arange(len(sources)), labels=[str(s) for s in sources], rotation=90, fontsize=7)
    ax.set_yticks(np.arange(len(targets)), labels=[str(t) for t in targets], fontsize=7)
    ax.set_xlabel("source")
    ax.set_ylabel("target")
    kind = network.attrs.get("kind")
    ax.set_title(f"regulatory network ({kind})" if kind else "regulatory network", fontsize=9)
    fig.colorbar(im, ax=ax, label="weight", shrink=0.8)
    return finish(ax, name="regulatory_network", show=show, save=save)


_EDGE_COLUMNS = ("source", "target", "weight")


def _as_matrix(network: pd.DataFrame) -> pd.DataFrame:
    """Return the network as a ``target x source`` matrix, refusing a table that is neither form.

    Parameters
    ----------
    network
        A ``df.loc[target, source]`` matrix (gene names as index and columns, numeric weights) or a long table
        with columns ``source``, ``target`` and ``weight``.

    Returns
    -------
    The matrix (a copy).

    Raises
    ------
    TypeError
        When ``network`` is not a DataFrame.
    ValueError
        When it is neither form.
    """
    if not isinstance(network, pd.DataFrame):
        msg = f"network must be a pandas DataFrame, got {type(network).__name__}."
        raise TypeError(msg)
    present = [c for c in _EDGE_COLUMNS if c in network.columns]
    missing = [c for c in _EDGE_COLUMNS if c not in network.columns]
    if present and missing:
        msg = (
            f"network looks like an edge table (it has {present}) but lacks the column(s) {missing}; an edge table "
            "needs 'source', 'target' and 'weight' (get_regulatory_network(top_k=...))."
        )
        raise ValueError(msg)
    if not missing:
        if not pd.api.types.is_numeric_dtype(network["weight"]):
            msg = f"network['weight'] must hold numbers, got dtype {network['weight'].dtype}."
            raise ValueError(msg)
        return network.pivot_table(index="target", columns="source", values="weight", aggfunc="sum")
    non_numeric = [c for c in network.columns if not pd.api.types.is_numeric_dtype(network[c])]
    unnamed = isinstance(network.index, pd.RangeIndex)
    if non_numeric or unnamed:
        why = (
            f"its column(s) {list(map(str, non_numeric))[:5]} are not numeric"
            if non_numeric
            else "its rows are numbered (a RangeIndex), not named by gene"
        )
        msg = (
            f"network is not a regulatory network: it lacks the column(s) {missing} of an edge table, and as a "
            f"target x source matrix {why}. Pass get_regulatory_network() (a genes x genes matrix, "
            "df.loc[target, source]) or an edge table with columns 'source', 'target' and 'weight'."
        )
        raise ValueError(msg)
    return network.copy()
