r"""Sizing a batch design: the control fraction and the cells per perturbation and of controls.

Steps 4 and 5 of :func:`~scmech.tl._design.recommend_batches`: the control fraction follows the square-root
rule :math:`1/(1+\sqrt K)` (bounded), and the cells per perturbation either fill the capacity or are the fewest
that detect ``target_effect``. When no design fits, the error names the number of batches (or cells per batch)
that would.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable

#: bounds of the default (square-root rule) control fraction
_CONTROL_FRACTION_BOUNDS = (0.05, 0.5)
#: controls per batch (and time point / medium) the design never goes below: two cells make a variance
_MIN_CONTROLS_PER_ROW = 2


def _default_control_fraction(k: int) -> float:
    r"""Apply the square-root rule :math:`1/(1+\sqrt k)`, bounded to ``_CONTROL_FRACTION_BOUNDS``."""
    lo, hi = _CONTROL_FRACTION_BOUNDS
    return float(min(hi, max(lo, 1.0 / (1.0 + math.sqrt(k)))))


def _min_batches(feasible: Callable[[int], bool], start: int, limit: int = 100_000) -> int | None:
    """Find the fewest batches from ``start`` on for which ``feasible`` holds (coarser steps above 64)."""
    b = max(1, start)
    while b <= limit:
        if feasible(b):
            return b
        b = b + 1 if b < 64 else int(b * 1.05) + 1
    return None


def _size_for_target(
    target_effect: float,
    var: dict[str, Any],
    var_known: bool,
    *,
    K: int,
    S: int,
    B: int,
    C: int,
    m: int,
    ratio: float,
    z: float,
    alpha: float,
    power: float,
) -> tuple[int, int, str]:
    r"""Cells per perturbation and controls (per context) that detect ``target_effect``, and a note on them.

    Parameters
    ----------
    target_effect
        Smallest effect to detect.
    var, var_known
        Variance terms, and whether they were given.
    K, S, B, C, m
        Perturbations, contexts, batches, cells per batch and minimal batches per perturbation.
    ratio
        Controls per cell of a perturbation.
    z, alpha, power
        :math:`z_{1-\alpha/2} + z_{\mathrm{power}}` and its arguments (for the messages).

    Raises
    ------
    ValueError
        Without variance terms, or when the cells needed exceed the capacity.
    """
    if not var_known or np.isnan(var["cell"]):
        msg = (
            "target_effect needs the variance terms: pass pilot= (a pilot AnnData) or "
            "variance={'batch': ..., 'cell': ...}."
        )
        raise ValueError(msg)
    min_ctrl = _MIN_CONTROLS_PER_ROW * B
    n_p = max(m, math.ceil(z**2 * var["cell"] * (1 + 1 / ratio) / target_effect**2))
    n_c = max(min_ctrl, math.ceil(ratio * n_p))
    total = S * (K * n_p + n_c)
    if total > B * C:

        def feasible(b: int) -> bool:
            return S * (K * n_p + max(_MIN_CONTROLS_PER_ROW * b, math.ceil(ratio * n_p))) <= b * C

        b_need = _min_batches(feasible, B)
        alt = f" or >= {b_need:,} batches of {C:,} cells" if b_need is not None else ""
        msg = (
            f"target_effect={target_effect:g} (alpha={alpha:g}, power={power:g}, sigma2_cell={var['cell']:.3g}) "
            f"needs {n_p:,} cells per perturbation and {n_c:,} controls per time point/medium, {total:,} cells in "
            f"all, but {B} batches hold {B * C:,}: needs >= {math.ceil(total / B):,} cells per batch{alt} (or a "
            "larger target_effect, fewer perturbations)."
        )
        raise ValueError(msg)
    note = (
        f"Sized for target_effect={target_effect:g}: {n_p} cells per perturbation and {n_c} controls per time "
        f"point/medium ({total:,} of {B * C:,} cells of capacity)."
    )
    return n_p, n_c, note


def _size_to_capacity(*, K: int, S: int, B: int, C: int, m: int, f: float) -> tuple[int, int]:
    """Cells per perturbation and controls (per context) that fill ``B`` batches of ``C`` cells.

    Raises
    ------
    ValueError
        When a perturbation would get fewer than ``m`` cells (one per batch it must sit in).
    """
    min_ctrl = _MIN_CONTROLS_PER_ROW * B
    per_ctx = (B * C) // S
    n_c = max(min_ctrl, int(round(f * per_ctx)))
    n_p = (per_ctx - n_c) // K
    if n_p < m:

        def feasible(b: int) -> bool:
            cap = (b * C) // S
            nc = max(_MIN_CONTROLS_PER_ROW * b, int(round(f * cap)))
            return (cap - nc) // K >= m

        need_c = math.ceil(S * (K * m / (1 - f) + 0) / B)
        need_c = max(need_c, math.ceil(S * (K * m + min_ctrl) / B))
        b_need = _min_batches(feasible, B)
        alt = f" or >= {b_need:,} batches" if b_need is not None else ""
        msg = (
            f"{B} batches of {C:,} cells cannot hold {K} perturbations in >= {m} batches each"
            f"{' at ' + str(S) + ' time points/media' if S > 1 else ''} plus controls in every batch "
            f"(control fraction {f:.2f}): needs >= {need_c:,} cells per batch{alt}, or fewer perturbations."
        )
        raise ValueError(msg)
    return n_p, n_c
