r"""Placing cells into batches, and the expected error of every effect under a placement.

``_allocate`` builds the recommended design (controls evenly in every batch, each perturbation spread over
the least-loaded batches), ``_naive`` the reference design (one batch per perturbation, all controls in the
first batch), and ``_expected_errors`` the error :math:`\sigma^2_{\mathrm{cell}}(1/n_p + 1/n_\varnothing)
+ \sigma^2_{\mathrm{batch}}\sum_b(w_b-u_b)^2` of each perturbation's effect under either. Cell counts are
arrays (contexts, batches, 1 + perturbations), the controls first; a context is a (time point, medium).
"""

from __future__ import annotations

import numpy as np

from ._variance import _batch_term


def _spread(n: int, k_max: int, loads: np.ndarray, order_key: np.ndarray) -> np.ndarray:
    """Split ``n`` cells over the ``k_max`` least-loaded batches as evenly as possible; update ``loads``."""
    B = loads.size
    k = min(B, k_max, n)
    out = np.zeros(B, dtype=np.int64)
    if n <= 0:
        return out
    if k == B:
        out[:] = n // B
        rem = n - out.sum()
        pick = np.lexsort((order_key, loads + out))[:rem]
        out[pick] += 1
    else:
        pick = np.lexsort((order_key, loads))[:k]
        out[pick] = n // k
        rem = n - out.sum()
        sub = pick[np.lexsort((order_key[pick], (loads + out)[pick]))[:rem]]
        out[sub] += 1
    loads += out
    return out


def _allocate(
    labels: list[str], control_label: str, n_p: int, n_c: int, B: int, n_ctx: int, rng: np.random.Generator
) -> np.ndarray:
    """Allocate cells (contexts, batches, 1 + K): controls evenly in every batch, perturbations over all."""
    K = len(labels)
    counts = np.zeros((n_ctx, B, K + 1), dtype=np.int64)
    loads = np.zeros(B, dtype=np.int64)
    tie = np.arange(B)
    for s in range(n_ctx):
        counts[s, :, 0] = _spread(n_c, B, loads, tie)
        for j in rng.permutation(K):
            counts[s, :, j + 1] = _spread(n_p, B, loads, tie)
    return counts


def _naive(K: int, n_p: int, n_c: int, B: int, n_ctx: int) -> np.ndarray:
    """Build the naive design (contexts, batches, 1 + K): perturbations round robin, controls in the first batch."""
    counts = np.zeros((n_ctx, B, K + 1), dtype=np.int64)
    counts[:, 0, 0] = n_c
    for j in range(K):
        counts[:, j % B, j + 1] = n_p
    return counts


def _expected_errors(counts: np.ndarray, var: dict[str, float], z: float) -> dict[str, np.ndarray]:
    """Per (context, perturbation): cells, controls, batches, noise and batch factors, expected error, MDE."""
    n = counts.sum(axis=1).astype(float)  # (ctx, 1 + K)
    with np.errstate(invalid="ignore", divide="ignore"):
        w = counts / n[:, None, :]
    u = w[:, :, :1]
    batch_factor = ((w[:, :, 1:] - u) ** 2).sum(axis=1)
    batch_factor[batch_factor < 1e-15] = 0.0
    noise = 1.0 / n[:, 1:] + 1.0 / n[:, :1]
    expected = var["cell"] * noise + _batch_term(var["batch"], batch_factor)  # NaN where F > 0, batch unknown
    return {
        "n_cells": n[:, 1:],
        "n_controls": np.broadcast_to(n[:, :1], n[:, 1:].shape),
        "n_batches": (counts[:, :, 1:] > 0).sum(axis=1),
        "noise_factor": noise,
        "batch_factor": batch_factor,
        "expected_error": expected,
        "mde": z * np.sqrt(expected),
    }
