r"""Power of a perturbation screen: minimal detectable effects, cells needed, and the MDE of a batch design.

The effect estimate :math:`\hat\Delta_p = \bar y_p - \bar y_\varnothing` of a perturbation with :math:`n_p`
cells (batch composition :math:`w`) against :math:`n_\varnothing` controls (composition :math:`u`) has

.. math:: V_p = \mathrm{E}\big[(\hat\Delta_p - \Delta_p)^2\big]
    = \sigma^2_{\mathrm{cell}}\Big(\frac{1}{n_p} + \frac{1}{n_\varnothing}\Big)
    + \sigma^2_{\mathrm{batch}}\sum_b (w_b - u_b)^2,

and a two-sided :math:`z` test at level :math:`\alpha` detects an effect :math:`\delta` with power
:math:`1-\beta` when :math:`|\delta| \ge \mathrm{MDE} = (z_{1-\alpha/2} + z_{1-\beta})\sqrt{V_p}`. The
sequencing-budget mode of :func:`power` is in ``_budget``.
"""

from __future__ import annotations

import math
import warnings
from numbers import Real
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy.stats import norm

from ._budget import _budget, _check_budget_arguments
from ._inputs import _as_array
from ._variance import _batch_term, _unknown_batch_message, resolve_variance

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from anndata import AnnData

    from ._batch_design import BatchDesign


def _z(alpha: float, power: float) -> float:
    r"""Sum of the normal quantiles :math:`z_{1-\alpha/2} + z_{\mathrm{power}}` (:math:`\alpha < \mathrm{power} < 1`).

    ``alpha`` must lie in (0, 1) and ``power`` between ``alpha`` and 1. A two-sided test at level :math:`\alpha`
    rejects with probability :math:`\alpha` when there is no effect, so a power at or below :math:`\alpha` is met
    by every effect, 0 included: no minimal detectable effect or cell number answers it (the formula would give a
    negative or meaningless one), and it is refused.
    """
    for name, value, example in (("alpha", alpha, 0.05), ("power", power, 0.8)):
        if isinstance(value, bool | np.bool_) or not isinstance(value, Real):
            msg = f"{name}={value!r} must be a number in (0, 1), e.g. {name}={example}."
            raise TypeError(msg)
    if not 0 < alpha < 1:
        msg = f"alpha={alpha!r} must lie in (0, 1) (the level of the two-sided test), e.g. alpha=0.05."
        raise ValueError(msg)
    if not alpha < power < 1:
        msg = (
            f"power={power!r} must lie between alpha={alpha!r} and 1: a two-sided test at level alpha already "
            f"rejects with probability alpha when there is no effect, so a power of alpha or less is met by every "
            f"effect and has no minimal detectable effect or cell number. Pass a power in ({alpha:g}, 1), e.g. "
            "power=0.8."
        )
        raise ValueError(msg)
    return float(norm.ppf(1 - alpha / 2) + norm.ppf(power))


def minimal_detectable_effect(
    sigma2_cell: float | np.ndarray,
    n_cells: float | np.ndarray,
    n_controls: float | np.ndarray,
    *,
    sigma2_batch: float | np.ndarray = 0.0,
    batch_factor: float | np.ndarray = 0.0,
    alpha: float = 0.05,
    power: float = 0.8,
) -> np.ndarray:
    r"""Minimal detectable effect of a two-sided :math:`z` test on the pseudobulk scale.

    .. math:: \mathrm{MDE} = (z_{1-\alpha/2} + z_{\mathrm{power}})
        \sqrt{\sigma^2_{\mathrm{cell}}(1/n_p + 1/n_\varnothing) + \sigma^2_{\mathrm{batch}}\,F},

    with :math:`F = \sum_b (w_b - u_b)^2` the batch-composition mismatch (``batch_factor``: 0 when the
    perturbation and the controls share their batches in the same proportions, 2 for a perturbation alone
    in a batch without controls).

    Parameters
    ----------
    sigma2_cell
        Per-cell variance :math:`\sigma^2_{\mathrm{bio}}+\sigma^2_{\mathrm{meas}}`.
    n_cells
        Cells of the perturbation.
    n_controls
        Control cells.
    sigma2_batch
        Batch variance.
    batch_factor
        :math:`\sum_b (w_b - u_b)^2`.
    alpha
        Test level, in (0, 1).
    power
        Power, between ``alpha`` and 1.

    Returns
    -------
    The MDE (broadcast over the inputs).

    Raises
    ------
    TypeError
        For an ``alpha`` or ``power`` that is not a number.
    ValueError
        For ``alpha`` outside (0, 1), a ``power`` outside (``alpha``, 1) (a power at or below the test's level is
        met by every effect), cell numbers (``n_cells``, ``n_controls``) that are not positive, and variances
        (``sigma2_cell``, ``sigma2_batch``) or a ``batch_factor`` that are negative (or NaN).

    Examples
    --------
    >>> float(minimal_detectable_effect(1.0, 400, 400).round(3))
    0.198
    """
    z = _z(alpha, power)
    n_cells = _checked(n_cells, "n_cells", positive=True, what="cell numbers")
    n_controls = _checked(n_controls, "n_controls", positive=True, what="cell numbers")
    sigma2_cell = _checked(sigma2_cell, "sigma2_cell", positive=False, what="variances")
    sigma2_batch = _checked(sigma2_batch, "sigma2_batch", positive=False, what="variances")
    batch_factor = _checked(batch_factor, "batch_factor", positive=False, what="sums of squares")
    shapes = {
        "sigma2_cell": sigma2_cell.shape,
        "n_cells": n_cells.shape,
        "n_controls": n_controls.shape,
        "sigma2_batch": sigma2_batch.shape,
        "batch_factor": batch_factor.shape,
    }
    try:
        np.broadcast_shapes(*shapes.values())
    except ValueError:
        msg = (
            f"The arrays of minimal_detectable_effect do not broadcast together (shapes {shapes}); give numbers or "
            "arrays of one shape (one value per perturbation or gene)."
        )
        raise ValueError(msg) from None
    var = sigma2_cell * (1 / n_cells + 1 / n_controls) + sigma2_batch * batch_factor
    return z * np.sqrt(var)


def _checked(value: float | np.ndarray, name: str, *, positive: bool, what: str, finite: bool = False) -> np.ndarray:
    """``value`` as a float array, refusing values that are not positive (``positive``) or are negative or NaN.

    With ``finite``, infinite values are refused too.
    """
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as e:
        msg = f"{name}={value!r} must be a number or an array of numbers."
        raise TypeError(msg) from e
    bad = ~(arr > 0) if positive else ~(arr >= 0)
    if finite:
        bad |= ~np.isfinite(arr)
    if bad.any():
        first = float(arr[bad].ravel()[0])
        need = "positive" if positive else "non-negative"
        need = f"finite {need}" if finite else need
        where = f" ({int(bad.sum())} of {arr.size} values)" if arr.ndim else ""
        msg = f"{name} must be {need} ({what}), got {first:g}{where}; pass {need} {what}."
        raise ValueError(msg)
    return arr


def power(
    pilot_or_variance: AnnData | Mapping[str, Any] | pd.DataFrame,
    *,
    n_cells: float | Sequence[float] | None = None,
    effect: float | Sequence[float] | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
    design: BatchDesign | None = None,
    n_controls: float | None = None,
    n_perturbations: int | None = None,
    batch_factor: float = 0.0,
    reads_per_cell: float | Sequence[float] | None = None,
    budget_reads: float | None = None,
    cell_cost_reads: float = 0.0,
    pilot_depth: float | None = None,
    per_gene: bool = False,
    pilot_kwargs: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    r"""Minimal detectable effects, cells needed, and the cells-versus-depth trade-off of a sequencing budget.

    All on the pseudobulk scale with the variance model of the module docstring; the variance terms come from a
    pilot (AnnData), error_decomposition's per-gene ``"variance"`` table, or scalars (see
    :func:`~scmech.tl._design.resolve_variance`). Scalars are means over expressed genes; ``per_gene=True``
    uses every gene's own terms.

    **Modes** (by the arguments given):

    - ``n_cells`` (one or several): the MDE for each, :math:`(z_{1-\alpha/2}+z_{\mathrm{power}})\sqrt V` with
      :math:`V = \sigma^2_{\mathrm{cell}}(1/n + 1/n_\varnothing) + \sigma^2_{\mathrm{batch}}F`. With ``effect``
      too: the power of the two-sided test, :math:`\Phi(\delta/\sqrt V - z_{1-\alpha/2}) +
      \Phi(-\delta/\sqrt V - z_{1-\alpha/2})` (:math:`\alpha` at :math:`\delta = 0`), instead.
    - ``effect`` alone: the cells per perturbation needed,
      :math:`n = z^2\sigma^2_{\mathrm{cell}}(1 + 1/r)/(\delta^2 - z^2\sigma^2_{\mathrm{batch}}F)` (infinite when
      the batch term alone exceeds the effect), with :math:`r = n_\varnothing/n`.
    - ``design``: the MDE of every perturbation of a :class:`BatchDesign` (its own batch factors), beside the
      naive design's.
    - ``budget_reads``: the sequencing trade-off. A budget of :math:`R` reads buys
      :math:`n = R/(r + c)` cells at :math:`r` reads per cell (``cell_cost_reads`` :math:`c` counts the cost of
      capturing a cell in reads; 0 for a pure read budget). Measurement variance falls with depth,
      :math:`\sigma^2_{\mathrm{meas}}(r) = \sigma^2_{\mathrm{meas}}\,r_0/r` from the pilot's depth :math:`r_0`,
      biological variance does not, so the noise floor of one perturbation's effect
      (:math:`K` = ``n_perturbations`` perturbations sharing the cells with :math:`\sqrt K` controls' share) is

      .. math:: E(r) = \big(\sigma^2_{\mathrm{bio}} + \sigma^2_{\mathrm{meas}} r_0/r\big)\,
          \frac{(r + c)\,(K + \sqrt K)(1 + 1/\sqrt K)}{R},

      minimised at :math:`r^\star = \sqrt{c\,r_0\,\sigma^2_{\mathrm{meas}}/\sigma^2_{\mathrm{bio}}}`: deeper
      when measurement noise dominates, shallower (more cells) when biological variance does. With
      :math:`c = 0` the error grows with :math:`r` and the shallowest depth of the grid is best (the least
      depth at which cells and guides can still be called). The formula needs at least one cell of each
      perturbation and of the controls, :math:`n \ge K + \sqrt K`: depths at which the budget buys fewer cells
      get a NaN ``expected_error`` and ``mde`` (no estimate) and are never ``optimal`` (with a warning), and a budget
      that buys that few at every depth of the grid raises a :class:`ValueError`.

    **Unknown batch variance.** A pilot with controls in a single batch (or variance terms without ``batch``)
    leaves :math:`\sigma^2_{\mathrm{batch}}` unknown (NaN). The batch term :math:`\sigma^2_{\mathrm{batch}}F`
    is then 0 where :math:`F = 0` (the batch effects cancel) and NaN where :math:`F > 0`: those ``se``, ``mde``
    and cells needed are NaN, with a warning that says how to pass the batch variance.

    Parameters
    ----------
    pilot_or_variance
        Pilot AnnData, per-gene variance table or dict of scalars (``batch``, ``cell`` or ``bio`` + ``meas``,
        ``depth``).
    n_cells
        Cells per perturbation.
    effect
        Effect size(s) on the pseudobulk scale.
    alpha
        Level of the two-sided test.
    power
        Power for MDEs and cells needed, between ``alpha`` and 1 (e.g. 0.8).
    design
        A :class:`BatchDesign`: MDE per perturbation.
    n_controls
        Control cells (a finite number > 0); ``sqrt(n_perturbations) * n_cells`` when ``n_perturbations`` is
        given, else ``n_cells``.
    n_perturbations
        Perturbations sharing the controls (and the budget); a positive integer.
    batch_factor
        :math:`F=\sum_b(w_b-u_b)^2` of the comparison, a finite number >= 0 (0: perturbation and controls share
        batches evenly).
    reads_per_cell
        Budget mode: the depths to evaluate; 61 log-spaced values from :math:`r_0/50` to :math:`50 r_0` when
        ``None``.
    budget_reads
        Budget mode: total reads (read equivalents with ``cell_cost_reads``).
    cell_cost_reads
        Budget mode: cost of one cell in reads.
    pilot_depth
        Reads (or UMIs) per cell of the pilot, :math:`r_0`; the pilot's mean library size when ``None``.
    per_gene
        One row per gene (and ``n_cells``/``effect``) with each gene's variance terms.
    pilot_kwargs
        Keyword arguments of :func:`~scmech.tl._errors.estimate_variance` for a pilot AnnData.

    Returns
    -------
    A DataFrame. ``n_cells`` mode: ``n_cells``, ``n_controls``, ``se``, ``mde`` (and ``effect``, ``power``);
    ``effect`` mode: ``effect``, ``n_cells``, ``n_controls``; ``design`` mode: ``perturbation``, ``n_cells``,
    ``n_controls``, ``batch_factor``, ``se``, ``mde``, ``naive_mde``; budget mode: ``reads_per_cell``,
    ``n_cells``, ``sigma2_cell``, ``expected_error``, ``mde``, ``optimal``, with
    ``attrs["optimum"]`` = ``{"reads_per_cell", "n_cells", "expected_error"}`` (analytic, :math:`c>0`) and
    ``attrs["grid_optimum"]`` (the analytic optimum is the grid's when :math:`c = 0` or when the budget cannot
    pay for :math:`K + \sqrt K` cells at :math:`r^\star`). ``per_gene=True`` adds a ``gene`` column.

    Raises
    ------
    TypeError
        For an ``alpha`` or ``power`` that is not a number.
    ValueError
        For ``alpha`` outside (0, 1) and a ``power`` outside (``alpha``, 1) (a power at or below the test's level
        is met by every effect); ``n_controls`` that is not a finite positive number, ``n_perturbations`` that is
        not a positive integer, ``batch_factor`` that is negative or not finite (the checks of
        :func:`minimal_detectable_effect`); ``n_cells``, ``effect`` or ``reads_per_cell`` that are not positive;
        ``budget_reads``, ``cell_cost_reads`` or ``pilot_depth`` that are not finite or are negative; a budget that
        cannot pay for :math:`K + \sqrt K` cells at any depth of the grid; and when no mode is given.

    Examples
    --------
    >>> var = {"batch": 0.02, "bio": 1.4, "meas": 6.2, "depth": 200}
    >>> power(var, n_cells=[100, 400, 1600])
    >>> power(var, effect=0.2)
    >>> curve = power(var, budget_reads=2e7, cell_cost_reads=200, n_perturbations=25)
    >>> curve.attrs["optimum"]
    """
    # cheap arguments first, before a pilot is read
    z = _z(alpha, power)
    z_a = float(norm.ppf(1 - alpha / 2))
    batch_factor, n_controls, n_perturbations = _check_power_arguments(batch_factor, n_controls, n_perturbations)
    _check_modes(
        n_cells=n_cells,
        effect=effect,
        design=design,
        budget_reads=budget_reads,
        budget_only={
            "reads_per_cell": reads_per_cell,
            "cell_cost_reads": cell_cost_reads or None,
            "pilot_depth": pilot_depth,
        },
    )
    grid = None
    if budget_reads is not None:
        grid = _check_budget_arguments(budget_reads, cell_cost_reads, reads_per_cell, pilot_depth)
    elif design is None and n_cells is None and effect is None:
        msg = (
            "Pass n_cells (MDE), effect (cells needed), design (MDE per perturbation) or budget_reads (depth "
            "trade-off)."
        )
        raise ValueError(msg)
    var = resolve_variance(pilot_or_variance, pilot_kwargs=pilot_kwargs)
    if budget_reads is not None:
        return _budget(
            var,
            budget_reads=budget_reads,
            cell_cost_reads=cell_cost_reads,
            reads_per_cell=grid,
            pilot_depth=pilot_depth,
            n_perturbations=n_perturbations,
            z=z,
        )
    if design is not None:
        return _design_mde(var, design, z)
    genes, cell, batch = _gene_terms(var, per_gene)
    shared = {"n_controls": n_controls, "n_perturbations": n_perturbations, "batch_factor": batch_factor, "z": z}
    if n_cells is not None:
        out = _mde_rows(cell, batch, genes, n_cells=n_cells, effect=effect, z_a=z_a, **shared)
    else:
        out = _cells_needed(cell, batch, genes, effect=effect, **shared)
    if batch_factor > 0 and np.isnan(batch).any():
        what = "the cells needed (n_cells, n_controls)"
        if n_cells is not None:
            what = "se, mde and power" if effect is not None else "se and mde"
        _warn_unknown_batch(var, f"{what} (batch_factor={batch_factor:g})", cell)
    return out


def _check_modes(*, n_cells: Any, effect: Any, design: Any, budget_reads: Any, budget_only: dict[str, Any]) -> None:
    """Refuse arguments that the chosen mode of :func:`power` would silently ignore.

    Parameters
    ----------
    n_cells, effect, design, budget_reads
        The mode arguments of :func:`power`.
    budget_only
        Arguments used by budget mode only, by name (``None`` when not given).

    Raises
    ------
    ValueError
        For budget-mode arguments without ``budget_reads``, and for ``n_cells``, ``effect`` or ``design`` beside
        ``budget_reads``, or ``n_cells`` or ``effect`` beside ``design``.
    """
    given = {"n_cells": n_cells, "effect": effect, "design": design}
    given = [k for k, v in given.items() if v is not None]
    stray = [k for k, v in budget_only.items() if v is not None]
    if budget_reads is None and stray:
        msg = (
            f"{stray} only apply to the budget mode and would be ignored without budget_reads; pass budget_reads= "
            f"(total reads) for the depth trade-off, or drop {stray}."
        )
        raise ValueError(msg)
    if budget_reads is not None and given:
        msg = (
            f"budget_reads= (the depth trade-off) ignores {given}; call power() once per mode: with budget_reads "
            "(and reads_per_cell), or with n_cells/effect/design."
        )
        raise ValueError(msg)
    if design is not None and len(given) > 1:
        msg = (
            f"design= gives the MDE of the design's own cell numbers and ignores {given[1:]}; call power() "
            "separately with design= or with n_cells/effect."
        )
        raise ValueError(msg)


def _check_power_arguments(
    batch_factor: float, n_controls: float | None, n_perturbations: int | None
) -> tuple[float, float | None, int | None]:
    """Check the comparison arguments of :func:`power` as :func:`minimal_detectable_effect` does; return them."""
    bf = _checked(batch_factor, "batch_factor", positive=False, what="sums of squares", finite=True)
    if bf.ndim:
        msg = f"batch_factor must be one number (the sum of squares of the comparison), got {batch_factor!r}."
        raise ValueError(msg)
    if n_controls is not None:
        nc = _checked(n_controls, "n_controls", positive=True, what="cell numbers", finite=True)
        if nc.ndim:
            msg = f"n_controls must be one number (control cells), got {n_controls!r}."
            raise ValueError(msg)
        n_controls = float(nc)
    if n_perturbations is not None:
        ok = isinstance(n_perturbations, int | np.integer | float | np.floating) and not isinstance(
            n_perturbations, bool
        )
        if not ok or not np.isfinite(n_perturbations) or n_perturbations < 1 or int(n_perturbations) != n_perturbations:
            msg = (
                f"n_perturbations must be a positive integer (the perturbations sharing the controls), got "
                f"{n_perturbations!r}; leave it None for one perturbation with as many controls as cells."
            )
            raise ValueError(msg)
        n_perturbations = int(n_perturbations)
    return float(bf), n_controls, n_perturbations


def _warn_unknown_batch(var: dict[str, Any], consequence: str, cell: np.ndarray, stacklevel: int = 3) -> None:
    """Warn that ``consequence`` is NaN because sigma2_batch is unknown, with the fix for :func:`power`."""
    c = float(np.nanmean(cell)) if np.isfinite(cell).any() else float("nan")
    fix = f"e.g. power({{'batch': 0.02, 'cell': {c:.3g}}}, ...) with your batch variance"
    warnings.warn(_unknown_batch_message(var, consequence, fix), UserWarning, stacklevel=stacklevel)


# ------------------------------------------------------------------------------------------------------------
# the steps of power()
# ------------------------------------------------------------------------------------------------------------


def _gene_terms(var: dict[str, Any], per_gene: bool) -> tuple[pd.Index | None, np.ndarray, np.ndarray]:
    """Genes (``None`` for the scalar mode) and their cell and batch variances (one entry without ``per_gene``).

    An unknown batch variance stays NaN.
    """
    if not per_gene:
        return None, np.array([var["cell"]], dtype=float), np.array([var["batch"]], dtype=float)
    pg = var["per_gene"]
    if pg is None:
        msg = "per_gene=True needs per-gene variance terms: pass a pilot AnnData or a per-gene variance table."
        raise ValueError(msg)
    genes = pg.index.astype(str)
    cell = pg["cell"].to_numpy(dtype=float)
    batch = pg["batch"].to_numpy(dtype=float) if "batch" in pg.columns else np.full(len(pg), np.nan)
    return genes, cell, batch


def _controls_for(n: np.ndarray, n_controls: float | None, n_perturbations: int | None) -> np.ndarray:
    r"""Control cells for ``n`` cells per perturbation: given, :math:`\sqrt K` times ``n``, or ``n``."""
    if n_controls is not None:
        return np.full_like(n, float(n_controls))
    if n_perturbations is not None:
        return math.sqrt(n_perturbations) * n
    return n


def _frame(rows: dict[str, np.ndarray], n_rows: int, genes: pd.Index | None) -> pd.DataFrame:
    """Build the result frame, with a ``gene`` column (genes inner, repeated ``n_rows`` times) when per gene."""
    out = pd.DataFrame(rows)
    if genes is not None:
        out.insert(0, "gene", np.tile(genes.to_numpy(), n_rows))
    return out


def _design_mde(var: dict[str, Any], design: BatchDesign, z: float) -> pd.DataFrame:
    """MDE of every perturbation of ``design`` (its own batch factors), beside the naive design's."""
    ee = design.expected_error
    n_p = ee["n_cells"].to_numpy(dtype=float)
    n_c = ee["n_controls"].to_numpy(dtype=float)
    bf = ee["batch_factor"].to_numpy(dtype=float)
    naive_bf = ee["naive_batch_factor"].to_numpy(dtype=float)
    se = np.sqrt(var["cell"] * (1 / n_p + 1 / n_c) + _batch_term(var["batch"], bf))
    naive_se = np.sqrt(
        var["cell"] * (1 / ee["naive_n_cells"] + 1 / ee["naive_n_controls"]).to_numpy()
        + _batch_term(var["batch"], naive_bf)
    )
    if np.isnan(var["batch"]) and ((bf > 0).any() or (naive_bf > 0).any()):
        consequence = (
            f"se and mde of {int((bf > 0).sum())} of {bf.size} rows and naive_mde of {int((naive_bf > 0).sum())} "
            f"of {naive_bf.size} rows"
        )
        _warn_unknown_batch(var, consequence, np.array([var["cell"]]), stacklevel=4)
    keep = [c for c in ee.columns if c in ("perturbation", "time", "medium")]
    out = ee[keep].copy()
    out["n_cells"] = n_p.astype(np.int64)
    out["n_controls"] = n_c.astype(np.int64)
    out["batch_factor"] = bf
    out["se"] = se
    out["mde"] = z * se
    out["naive_mde"] = z * naive_se
    return out


def _mde_rows(
    cell: np.ndarray,
    batch: np.ndarray,
    genes: pd.Index | None,
    *,
    n_cells: float | Sequence[float],
    effect: float | Sequence[float] | None,
    n_controls: float | None,
    n_perturbations: int | None,
    batch_factor: float,
    z: float,
    z_a: float,
) -> pd.DataFrame:
    """``n_cells`` mode: the MDE for each number of cells, or with ``effect`` the power at each effect."""
    n = _as_array(n_cells, "n_cells")
    nc = _controls_for(n, n_controls, n_perturbations)
    # rows: n_cells (outer) x genes (inner)
    se = np.sqrt(cell[None, :] * (1 / n[:, None] + 1 / nc[:, None]) + _batch_term(batch[None, :], batch_factor))
    rows: dict[str, np.ndarray] = {
        "n_cells": np.repeat(n, cell.size),
        "n_controls": np.repeat(nc, cell.size),
        "se": se.ravel(),
        "mde": (z * se).ravel(),
    }
    if effect is None:
        return _frame(rows, n.size, genes)
    eff = _as_array(effect, "effect")
    parts = []
    for e in eff:
        r = {k: v.copy() for k, v in rows.items()}
        r["effect"] = np.full(r["se"].size, e)
        r["power"] = norm.cdf(e / r["se"] - z_a) + norm.cdf(-e / r["se"] - z_a)
        parts.append(_frame(r, n.size, genes))
    return pd.concat(parts, ignore_index=True)


def _cells_needed(
    cell: np.ndarray,
    batch: np.ndarray,
    genes: pd.Index | None,
    *,
    effect: float | Sequence[float],
    n_controls: float | None,
    n_perturbations: int | None,
    batch_factor: float,
    z: float,
) -> pd.DataFrame:
    """``effect`` mode: the cells per perturbation (and controls) that detect each effect (inf: never)."""
    eff = _as_array(effect, "effect")
    if n_controls is not None:
        # fixed controls: n from  z^2 (cell (1/n + 1/nc) + batch F) = e^2
        room = eff[:, None] ** 2 / z**2 - _batch_term(batch[None, :], batch_factor) - cell[None, :] / float(n_controls)
        with np.errstate(divide="ignore", invalid="ignore"):
            need = np.where(room > 0, cell[None, :] / room, np.inf)
        nc = np.full_like(need, float(n_controls))
    else:
        r = math.sqrt(n_perturbations) if n_perturbations is not None else 1.0
        room = eff[:, None] ** 2 / z**2 - _batch_term(batch[None, :], batch_factor)
        with np.errstate(divide="ignore", invalid="ignore"):
            need = np.where(room > 0, cell[None, :] * (1 + 1 / r) / room, np.inf)
        nc = need * r
    need = np.where(np.isnan(room), np.nan, need)  # an unknown batch variance leaves the cells needed unknown
    nc = np.where(np.isnan(room), np.nan, nc)
    need = np.ceil(need)
    nc = np.ceil(nc)
    rows = {"effect": np.repeat(eff, cell.size), "n_cells": need.ravel(), "n_controls": nc.ravel()}
    return _frame(rows, eff.size, genes)
