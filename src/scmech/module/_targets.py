r"""The targets a minibatch perturbs, in a compact form whose cost does not grow with the screen's size.

A design is a multi-hot matrix (cells x targets). A genome-wide screen has :math:`10^4` targets, but a cell carries
at most a few of them (1 for single knock-downs, 2 for doubles). Registration stores the design in that compact
form (the targets of each cell, see :class:`~scmech.data.PerturbationField`), so a minibatch carries ``k`` numbers
per cell, and every computation of a training step (the operators' drive, the own-gene knock-down, the protocol keys
that group cells) reads only those entries: :math:`O(nk)` instead of :math:`O(nT)` work and memory per step.
Multi-hot rows that predictions build are gathered into the same form by :func:`active_targets`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ActiveTargets", "active_targets", "from_entries"]


@dataclass(frozen=True)
class ActiveTargets:
    """The non-zero entries of each row of a multi-hot matrix, ``k`` per row.

    Attributes
    ----------
    index
        Target index of each entry (n x k, long), sorted within a row; ``n_targets`` where the row has fewer than
        ``k`` targets (padding).
    value
        Value of each entry (n x k); 0 in padding.
    n_targets
        Number of targets of the matrix the entries come from.
    """

    index: torch.Tensor
    value: torch.Tensor
    n_targets: int

    @property
    def perturbed(self) -> torch.Tensor:
        """Whether each row carries any target (n x 1, the value dtype)."""
        return (self.value != 0).any(-1, keepdim=True).to(self.value.dtype)

    def gather(self, table: torch.Tensor) -> torch.Tensor:
        """Rows of ``table`` (targets x ...) at the entries, zero in padding (n x k x ...)."""
        safe = self.index.clamp(max=max(self.n_targets - 1, 0))
        if table.shape[0] == 0:
            return torch.zeros(*safe.shape, *table.shape[1:], device=table.device, dtype=table.dtype)
        out = table[safe]
        mask = (self.value != 0).to(out.dtype)
        return out * mask.reshape(*mask.shape, *([1] * (out.dim() - 2)))

    def weighted_sum(self, table: torch.Tensor) -> torch.Tensor:
        r"""Return :math:`\sum_k \text{value}_k \, \text{table}[\text{index}_k]` per row (multi-hot @ ``table``)."""
        return (self.gather(table) * self.value.unsqueeze(-1)).sum(1)

    def to(self, device: torch.device | str) -> ActiveTargets:
        """Move the entries to ``device``."""
        return ActiveTargets(self.index.to(device), self.value.to(device), self.n_targets)

    def key(self) -> torch.Tensor:
        """One row per cell that is equal exactly for equal multi-hot rows (n x 2k, float)."""
        return torch.cat([self.index.to(self.value.dtype), self.value], dim=1)


def active_targets(perturbation: torch.Tensor, k: int | None = None) -> ActiveTargets:
    """Gather the non-zero entries of each row of a multi-hot matrix.

    Parameters
    ----------
    perturbation
        Multi-hot rows (n x targets).
    k
        Entries kept per row: at least the largest number of targets in one row. ``None`` reads it from the data
        (one read of a device value).
    """
    n, n_targets = perturbation.shape
    if k is None:
        k = int((perturbation != 0).sum(-1).max()) if n and n_targets else 0
    k = max(min(int(k), n_targets), 1) if n_targets else 1
    if n_targets == 0:
        index = torch.zeros(n, 1, dtype=torch.long, device=perturbation.device)
        return ActiveTargets(index, torch.zeros(n, 1, device=perturbation.device, dtype=perturbation.dtype), 0)
    _, idx = torch.topk((perturbation != 0).to(torch.int8), k, dim=-1, sorted=False)
    value = perturbation.gather(1, idx)
    # padding (value 0) gets the index n_targets; sorting makes equal rows give equal entries
    idx = torch.where(value != 0, idx, torch.full_like(idx, n_targets))
    idx, order = torch.sort(idx, dim=-1)
    value = value.gather(1, order)
    return ActiveTargets(idx, value, n_targets)


def from_entries(entries: torch.Tensor, n_targets: int) -> ActiveTargets:
    """Active targets from a registered entries matrix (n x k target positions, ``-1`` where a cell has fewer).

    This is the form in which :class:`~scmech.data.PerturbationField` registers a design, so that a minibatch
    carries ``k`` numbers per cell instead of one per target.
    """
    idx = entries.reshape(entries.shape[0], -1).round().long()
    idx = torch.where(idx >= 0, idx, torch.full_like(idx, n_targets))
    idx, _ = torch.sort(idx, dim=-1)
    value = (idx < n_targets).float()
    return ActiveTargets(idx, value, n_targets)
