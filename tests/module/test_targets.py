"""The compact form of a design: the targets of each cell, as registered and as gathered from multi-hot rows."""

from __future__ import annotations

import numpy as np
import torch

from scmech.data import parse_perturbations
from scmech.module._targets import active_targets, from_entries

LABELS = ["NT", "A", "B+C", "C", "A+B+C", "unassigned", "B"]


def _design():
    return parse_perturbations(LABELS, control_label="NT")


def test_entries_hold_each_cells_targets_in_order_with_padding():
    design = _design()
    entries = design.entries()
    assert entries.shape == (len(LABELS), 3)  # the largest combination has 3 targets
    targets = design.targets
    for lab, row in zip(LABELS, entries, strict=True):
        got = [targets[int(i)] for i in row if i >= 0]
        want = [] if lab in ("NT", "unassigned") else sorted(lab.split("+"))
        assert got == want
        assert list(row[len(got) :]) == [-1] * (3 - len(got))


def test_registered_entries_and_multi_hot_rows_give_the_same_products():
    design = _design()
    dense = torch.as_tensor(design.matrix.toarray(), dtype=torch.float32)
    table = torch.randn(dense.shape[1], 4, generator=torch.Generator().manual_seed(0))
    from_registry = from_entries(torch.as_tensor(design.entries()), dense.shape[1])
    gathered = active_targets(dense)
    for active in (from_registry, gathered):
        torch.testing.assert_close(active.weighted_sum(table), dense @ table)
        torch.testing.assert_close(active.perturbed[:, 0], (dense.sum(1) > 0).float())
    # both forms give the same key for the same row, and different keys for different rows
    torch.testing.assert_close(from_registry.key(), gathered.key())
    keys = {tuple(k.tolist()) for k in gathered.key()}
    assert len(keys) == len({tuple(r.tolist()) for r in dense})


def test_multi_hot_values_and_an_explicit_width_are_kept():
    dense = torch.tensor([[0.0, 0.5, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    active = active_targets(dense, k=3)
    assert active.index.shape == (3, 3)
    table = torch.arange(8, dtype=torch.float32).reshape(4, 2)
    torch.testing.assert_close(active.weighted_sum(table), dense @ table)
    np.testing.assert_array_equal(active.value[1].numpy(), [0, 0, 0])
