"""The model's read-out: the exact mean over starting cells of the per-cell softmax."""

from __future__ import annotations

import pytest
import torch

from scmech.model import _readout


def _per_cell_mean(cell_logits, cond_logits, cell_level):
    # condition k, cell i: softmax(A_i + B_{k, level(i)}); the mean over cells, one cell at a time
    per_cell = torch.softmax(cell_logits.double()[None] + cond_logits.double()[:, cell_level], dim=-1)
    return per_cell.mean(1)


@pytest.mark.parametrize("spread", [1.0, 30.0])
def test_exact_mean_over_cells_equals_the_mean_of_per_cell_softmaxes(spread):
    g = torch.Generator().manual_seed(0)
    cells = torch.randn(37, 50, generator=g) * spread
    conds = torch.randn(9, 2, 50, generator=g) * spread
    level = torch.arange(37) % 2
    got = _readout.mean_over_cells(cells, conds, level, softmax=True)
    want = _per_cell_mean(cells, conds, level)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-12)


def test_exact_mean_falls_back_to_double_precision_when_single_underflows():
    # logits spread over 200 nats: the single-precision normalisers underflow, double precision does not
    g = torch.Generator().manual_seed(1)
    cells = torch.zeros(5, 20)
    cells[:, 0] = 100.0
    conds = torch.zeros(3, 1, 20)
    conds[:, 0, 1] = 100.0
    conds[:, 0, 0] = -100.0 + torch.rand(3, generator=g)
    level = torch.zeros(5, dtype=torch.long)
    got = _readout.mean_over_cells(cells, conds, level, softmax=True)
    assert got is not None
    torch.testing.assert_close(got.double(), _per_cell_mean(cells, conds, level), rtol=1e-5, atol=1e-12)
