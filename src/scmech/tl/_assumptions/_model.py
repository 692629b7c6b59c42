r"""Model check: control cells sit at a fixed point of the learned vector field.

Compares the steady-state residual :math:`\lVert f_\theta(z_c)\rVert` of a trained
:class:`~scmech.model.SemiMechVI` at control cells with that at perturbed cells. A model trained with a
steady-state term pushes the control residual down, so this checks the fit rather than the data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats

from ._registry import HOLDS, VIOLATED, _cannot, _fmt, _row
from ._stats import _recentred_interval

if TYPE_CHECKING:
    from anndata import AnnData

    from ._data import _Data

_A = "model_steady_state"


def _check_model(
    adata: AnnData, data: _Data, model: Any, rng: np.random.Generator, n_resamples: int, alpha: float
) -> list[dict[str, Any]]:
    """Compare the median residual of controls with that of perturbed cells: the row of the model check.

    Parameters
    ----------
    adata
        The data the model was set up on.
    data
        The screen.
    model
        An object with ``get_steady_state_residual(adata)`` (one residual per cell).
    rng
        Generator of the bootstrap resamples.
    n_resamples
        Number of bootstrap resamples.
    alpha
        Significance level; the interval covers ``1 - alpha``.

    Returns
    -------
    A list with the one result row.
    """
    res = np.asarray(model.get_steady_state_residual(adata), dtype=np.float64)
    pert = data.design.perturbation
    if res.shape != (pert.n_cells,):
        msg = f"The model returned {res.shape[0]} residuals for {pert.n_cells} cells; pass the data it was set up on."
        raise ValueError(msg)
    rc = res[pert.is_control]
    rp = res[pert.fit_mask & ~pert.is_control]
    if len(rc) < 2 or len(rp) < 2:
        return [_row(_A, "controls vs perturbed", verdict=_cannot("fewer than 2 control or perturbed cells"))]
    ratio = float(np.median(rc) / np.median(rp)) if np.median(rp) > 0 else np.nan
    boot = np.array(
        [
            np.median(rc[rng.integers(0, len(rc), len(rc))])
            / max(np.median(rp[rng.integers(0, len(rp), len(rp))]), 1e-300)
            for _ in range(n_resamples)
        ]
    )
    lo, hi = _recentred_interval(ratio, boot, alpha)
    p_value = float(stats.mannwhitneyu(rc, rp, alternative="greater").pvalue)
    violated = p_value < alpha
    detail = (
        f"median residual |f(z)| {_fmt(float(np.median(rc)), 3)} at control cells vs {_fmt(float(np.median(rp)), 3)} "
        f"at perturbed cells; a model trained with a steady-state term pushes the control residual down, so this "
        "checks the fit rather than the data"
    )
    return [
        _row(
            _A,
            "controls vs perturbed",
            effect=ratio,
            ci_low=max(lo, 0.0),
            ci_high=hi,
            p_value=p_value,
            n_cells=len(rc) + len(rp),
            verdict=VIOLATED if violated else HOLDS,
            detail=detail,
        )
    ]
