"""Rows of backed data in the order they were asked for.

scvi-tools' :class:`~scvi.data.AnnTorchDataset` sorts the positions of each minibatch of a backed AnnData (h5py
reads increasing positions only) and returns the rows in that sorted order, while every ``get_*`` method and
``predict(from_cells=...)`` reads them as the order it asked for: ``indices=[5, 1, 3]`` came back as cells 1, 3,
5 under the labels of 5, 1, 3. scvi-tools has no option to restore the order, so the dataset of such a loader
reads each minibatch's distinct positions in increasing order and puts the rows back in the requested order
(repeated positions included, which h5py refuses).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from scvi.data import AnnTorchDataset

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["keep_requested_order"]


class _RequestedOrder(AnnTorchDataset):
    """An :class:`~scvi.data.AnnTorchDataset` of backed data whose minibatches keep the requested order."""

    def __getitem__(self, indexes: Any) -> dict[str, Any]:
        if isinstance(indexes, int | np.integer | slice):
            return super().__getitem__(indexes)
        positions = np.asarray(indexes)
        distinct, inverse = np.unique(positions, return_inverse=True)
        data = super().__getitem__(distinct)
        if len(distinct) == len(positions) and np.array_equal(distinct, positions):
            return data
        out = {}
        for k, v in data.items():
            if isinstance(v, np.ndarray) and v.ndim and len(v) == len(distinct):
                out[k] = v[inverse]
            elif isinstance(v, np.ndarray) or not hasattr(v, "shape"):
                out[k] = v  # one value for the minibatch (a minified AnnData's type, for example)
            else:  # a torch sparse tensor (load_sparse_tensor=True) cannot be put back in order row by row
                msg = (
                    f"Cannot return the rows of backed data in the requested order for {k!r} ({type(v).__name__}); "
                    "pass increasing indices, or load the data into memory (adata.to_memory())."
                )
                raise TypeError(msg)
        return out


def keep_requested_order(loader: Any, data: AnnData, indices: np.ndarray | None) -> Any:
    """Make ``loader`` return the rows of backed ``data`` in the order of ``indices``; other loaders as they are.

    Parameters
    ----------
    loader
        An scvi-tools ``AnnDataLoader`` over ``data`` (its dataset a ``Subset`` of an ``AnnTorchDataset``).
    data
        The AnnData the loader reads.
    indices
        The positions asked for (``None``: every cell, in order).

    Returns
    -------
    ``loader``, its dataset reading rows in the requested order where ``data`` is backed and ``indices`` are not
    increasing.
    """
    if indices is None or not getattr(data, "isbacked", False):
        return loader
    idx = np.asarray(indices)
    if idx.dtype == bool or np.all(np.diff(idx) > 0):
        return loader
    dataset = getattr(loader.dataset, "dataset", loader.dataset)
    if type(dataset) is AnnTorchDataset:
        dataset.__class__ = _RequestedOrder
    return loader
