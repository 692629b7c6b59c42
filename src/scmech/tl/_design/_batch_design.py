"""The result of :func:`~scmech.tl._design.recommend_batches`: a :class:`BatchDesign`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class BatchDesign:
    r"""A recommended assignment of cells to batches (and time points / media).

    Made by :func:`~scmech.tl.recommend_batches`; each parameter is also an attribute of the same name.

    Parameters
    ----------
    table
        Cell counts: rows batches (a MultiIndex batch x time x medium when time points or media are given),
        columns the control label and the perturbations.
    expected_error
        One row per perturbation (and time point / medium): ``n_cells``, ``n_controls``, ``n_batches``,
        ``noise_factor`` :math:`1/n_p + 1/n_\varnothing`, ``batch_factor`` :math:`\sum_b(w_b-u_b)^2`,
        ``expected_error`` :math:`\sigma^2_{\mathrm{cell}}\cdot` noise_factor :math:`+
        \sigma^2_{\mathrm{batch}}\cdot` batch_factor, ``mde``, and the same for the naive design (prefix
        ``naive_``).
    cells_per_perturbation
        Total cells per perturbation (over batches, time points and media).
    notes
        How the design was sized, and anything the user should know.
    naive_table
        The naive reference design with the same cells: perturbations round robin over batches (one batch
        each), all controls in the first batch.
    n_controls
        Control cells per time point / medium.
    control_fraction
        Share of controls.
    variance
        The variance terms used (``batch``, ``cell``; unit values when none were given; ``batch`` NaN when unknown,
        e.g. from a pilot with controls in one batch).
    params
        The arguments.
    """

    table: pd.DataFrame
    expected_error: pd.DataFrame
    cells_per_perturbation: pd.Series
    notes: list[str] = field(default_factory=list)
    naive_table: pd.DataFrame | None = None
    n_controls: int = 0
    control_fraction: float = 0.0
    variance: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        rows, cols = self.table.shape
        err = self.expected_error
        return (
            f"BatchDesign({cols - 1} perturbations, {rows} batch rows, {int(self.table.to_numpy().sum())} cells; "
            f"mean expected error {err['expected_error'].mean(skipna=False):.3g} vs naive "
            f"{err['naive_expected_error'].mean(skipna=False):.3g})"
        )
