"""Calls into scanpy's numba-parallel preprocessing that keep torch's thread count."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["log_normalise", "torch_threads_kept"]


@contextlib.contextmanager
def torch_threads_kept() -> Iterator[None]:
    """Restore torch's intra-op thread count after the block, whatever the block did to it.

    numba's OpenMP threading layer and torch share one OpenMP runtime, and a parallel numba function (scanpy's
    ``normalize_total``, ``log1p``, ``rank_genes_groups`` on sparse data) sets the runtime's thread count for the
    whole process. A user's ``torch.set_num_threads(1)`` then silently became the machine's core count after
    :func:`scmech.tl.evaluate`, and models trained afterwards ran torch's multi-threaded reductions: slower on
    shared CPUs, and no longer reproducible in the last digits. scmech must not change process-wide settings, so
    each such call is wrapped in this block.
    """
    import torch

    n = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


def log_normalise(adata) -> None:
    r"""Normalise ``adata``'s counts to 1e4 per cell and take ``log1p`` in place (scanpy), torch's threads kept.

    Parameters
    ----------
    adata
        Cells with counts in ``X``; replaced by :math:`\log(1 + 10^4 x / \text{total})`.
    """
    import scanpy as sc
    import scipy.sparse as sp

    from scmech._constants import TARGET_SUM

    if sp.issparse(adata.X) and not sp.isspmatrix(adata.X):
        adata.X = sp.csr_matrix(adata.X)  # scanpy fails on scipy's sparse arrays (csr_array)
    with torch_threads_kept():
        sc.pp.normalize_total(adata, target_sum=TARGET_SUM)
        sc.pp.log1p(adata)
