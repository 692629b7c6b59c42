"""Protocol groups of a minibatch: its distinct protocols and the MMD of each group's basal states.

Both work from pairwise comparisons of the rows' protocol keys, which cost little for a minibatch and, unlike
``torch.unique``, never wait for the device to know an output size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["_distinct_rows", "_group_mmd"]

#: most rows whose distinct protocols are found by a pairwise comparison (a minibatch); more use ``torch.unique``
PAIRWISE_ROWS = 2048


def _group_mmd(
    x: torch.Tensor, same: torch.Tensor, ref_mask: torch.Tensor, bandwidths: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean unbiased MMD^2 (sum of RBF kernels) of each group of rows against the reference rows.

    Groups are given by ``same`` (n x n, true where two rows share a protocol), so no group labels have to be
    found first (a search whose output size the device cannot know in advance). Each group's sums are read from
    its rows: a row holds its group's within-group and cross-reference kernel sums (``same @ ...``), and the mean
    over groups weighs each row by one over its group's size. One kernel matrix for the whole minibatch: the cost
    is that of a single MMD whatever the number of groups, and nothing waits for the device.

    With every row in the reference (``ref_mask`` all true) each group is compared with the pooled rows; otherwise
    groups inside the reference are not compared with it. Groups with fewer than 2 rows are skipped.

    Returns
    -------
    The mean MMD^2 over the compared groups (0 when there are none) and their number (a 0-d tensor).
    """
    dt = x.dtype
    d2 = torch.cdist(x, x).pow(2)
    kmat = sum(torch.exp(-d2 / (2 * b**2)) for b in bandwidths)
    n_bw = float(len(bandwidths))
    s = same.to(dt)
    ref = ref_mask.to(dt)
    n_r = ref.sum()
    n_g = s.sum(1)  # size of each row's group
    s_gg = s @ (kmat * s).sum(1)  # within-group kernel sum of each row's group
    s_gr = s @ (kmat @ ref)  # group x reference kernel sum
    overlap = s @ ref  # rows both in the group and the reference: drop their self-pairs
    s_rr = ref @ kmat @ ref
    pooled = ref_mask.all()
    keep = (n_g >= 2) & (pooled | (overlap < n_g)) & (n_r >= 2)
    one = torch.ones((), device=x.device, dtype=dt)
    sxx = (s_gg - n_bw * n_g) / torch.where(keep, n_g * (n_g - 1), one)
    syy = (s_rr - n_bw * n_r) / torch.clamp(n_r * (n_r - 1), min=1.0)
    sxy = (s_gr - n_bw * overlap) / torch.where(keep, n_g * n_r - overlap, one)
    w = keep.to(dt) / n_g.clamp(min=1.0)  # a group's rows weigh one in all
    n_groups = w.sum()
    mmd = (w * (sxx + syy - 2 * sxy)).sum() / n_groups.clamp(min=1.0)
    return torch.where(n_groups > 0, mmd, torch.zeros((), device=x.device, dtype=dt)), n_groups


def _distinct_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Find the distinct rows of protocol keys (a minibatch's in order of first appearance) and each row's position.

    A pairwise comparison (n x n, cheap for a minibatch) instead of ``torch.unique(dim=0)``, which sorts the rows
    one by one in Python-level loops of tensor selects (a quarter of the read-out's time at 256 rows).
    """
    n = rows.shape[0]
    if n > PAIRWISE_ROWS:  # a prediction's rows: the pairwise comparison would grow as their square
        return torch.unique(rows, dim=0, return_inverse=True)
    same = (rows.unsqueeze(1) == rows.unsqueeze(0)).all(-1)
    first = same.to(torch.uint8).argmax(1)  # the first row equal to each row
    is_first = first == torch.arange(n, device=rows.device)
    position = torch.cumsum(is_first.long(), 0) - 1
    return rows[is_first], position[first]
