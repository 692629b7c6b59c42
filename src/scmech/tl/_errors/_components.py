r"""Error components per perturbation and gene: noise floor, confounding, batch term and model error.

For perturbation :math:`p` with batch composition :math:`w` against controls with composition :math:`u`
(FRAMEWORK §6): the noise floor is :math:`\sigma^2_{\mathrm{cell}}/n`; ``target="delta"`` adds the confounding
:math:`\sigma^2_{\mathrm{batch}}\sum_b(w_b-u_b)^2`, ``target="expression"`` the batch term
:math:`\sigma^2_{\mathrm{batch}}\sum_b w_b^2`; with predictions, the model error is the residual of the observed
squared error. The formulas are in the docstring of :func:`~scmech.tl._errors.error_decomposition`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ._variance import _weighted

if TYPE_CHECKING:
    from ._data import _Data, _Layout
    from ._stats import _Stats

#: error components in stacking order (``total`` is their sum)
COMPONENTS = ("noise_floor", "confounding", "batch", "model")
#: ``(w - u)`` compositions closer than this count as identical (no confounding)
_MATCH_TOL = 1e-12


def _condition_cell_variance(n: np.ndarray, cv: np.ndarray, var: dict[str, Any], cell_given: bool) -> np.ndarray:
    """Per-condition cell variance (conditions x genes); the controls' where a condition has no batch of 2 cells.

    A given ``cell`` variance (``cell_given``) is used for every condition.
    """
    sigma = np.empty((cv.shape[0], cv.shape[2]))
    for c in range(cv.shape[0]):
        est = _weighted(cv[c], np.where(n[c] >= 2, n[c], 0.0))
        sigma[c] = est if np.isfinite(est).all() and not cell_given else var["cell"]
    return sigma


def _noise_and_batch(
    sigma: np.ndarray, n: np.ndarray, n_tot: np.ndarray, batch: np.ndarray, target: str
) -> dict[str, np.ndarray]:
    r"""Compute ``noise_floor``, ``confounding`` and ``batch`` (perturbations x genes) from the batch compositions.

    Parameters
    ----------
    sigma
        Per-condition cell variance (conditions x genes, the control first).
    n, n_tot
        Cells per condition and batch, and per condition.
    batch
        Per-gene :math:`\sigma^2_{\mathrm{batch}}`.
    target
        ``"delta"`` or ``"expression"``.
    """
    w = n / n_tot[:, None]
    mismatch = ((w[1:] - w[0][None, :]) ** 2).sum(axis=1)  # (P,)
    concentration = (w[1:] ** 2).sum(axis=1)
    batch = batch[None, :]
    P, G = n.shape[0] - 1, sigma.shape[1]
    out: dict[str, np.ndarray] = {}
    if target == "delta":
        out["noise_floor"] = sigma[1:] / n_tot[1:, None] + sigma[0][None, :] / n_tot[0]
        conf = np.where(mismatch[:, None] <= _MATCH_TOL, 0.0, batch * mismatch[:, None])
        out["confounding"] = conf
        out["batch"] = np.zeros((P, G))
    else:
        out["noise_floor"] = sigma[1:] / n_tot[1:, None]
        out["confounding"] = np.zeros((P, G))
        out["batch"] = batch * concentration[:, None]
    return out


def _prediction_error(y: np.ndarray, pred: np.ndarray, pred_ctrl: np.ndarray | None, target: str) -> np.ndarray:
    """Error of the predictions (perturbations x genes) against the observed pseudobulks ``y`` (control first).

    ``"delta"``: the predicted effect (against the prediction's own control row when there is one, else the
    observed controls) minus the observed effect; ``"expression"``: prediction minus observation.
    """
    if target == "delta":
        ref = pred_ctrl if pred_ctrl is not None else y[0]
        return (pred - ref[None, :]) - (y[1:] - y[0][None, :])
    return pred - y[1:]


def _components(
    st: _Stats,
    lay: _Layout,
    data: _Data,
    var: dict[str, Any],
    target: str,
    pred: np.ndarray | None,
    pred_ctrl: np.ndarray | None,
    cell_given: bool = False,
) -> dict[str, np.ndarray]:
    """Per-gene components (perturbations x genes) for each component name, plus ``total``."""
    n = lay.grid(st.n).astype(float)  # (C, B)
    mean = lay.grid(st.mean)  # (C, B, G)
    cv = lay.grid(st.cell_var)
    n_tot = n.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        pooled = np.einsum("cb,cbg->cg", n, np.nan_to_num(mean)) / n_tot[:, None]
    y = data.f(pooled)  # (C, G)
    sigma = _condition_cell_variance(n, cv, var, cell_given)
    out = _noise_and_batch(sigma, n, n_tot, var["batch"], target)
    floor = out["noise_floor"] + out["confounding"] + out["batch"]
    if pred is None:
        out["total"] = floor
    else:
        out["total"] = _prediction_error(y, pred, pred_ctrl, target) ** 2
        out["model"] = out["total"] - floor
    return out


def _summaries(comp: dict[str, np.ndarray]) -> np.ndarray:
    """Mean over genes per (perturbation, component), the model error as the exact residual of the means."""
    names = [c for c in COMPONENTS if c in comp]
    vals = np.stack([comp[c].mean(axis=1) for c in names if c != "model"] + [comp["total"].mean(axis=1)], axis=1)
    if "model" in comp:
        model = vals[:, -1] - vals[:, :-1].sum(axis=1)
        vals = np.concatenate([vals[:, :-1], model[:, None], vals[:, -1:]], axis=1)
    return vals
