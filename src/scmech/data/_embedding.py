"""Gene embeddings and closed-form ridge maps shared by the linear baseline and SemiMechVI.

The gene embedding of Ahlmann-Eltze, Huber & Anders (2025): principal components of the training pseudobulk
(genes as observations, conditions as features, each condition centred), the genes' scores on the top
:math:`K` components. A perturbation of gene :math:`k` is embedded as gene :math:`k`'s row.
"""

from __future__ import annotations

import numpy as np

from scmech._numbers import check_positive_int

__all__ = ["pseudobulk_gene_embedding", "ridge_map", "ridge_map_cv", "solve_y_axb"]


def _check_penalty(name: str, value: float) -> float:
    """Return a ridge penalty as a float; refuse a negative, non-finite or non-numeric one.

    A negative penalty is not a ridge: it can cancel the Gram matrix's eigenvalues and make the solve singular or
    the map arbitrarily large.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        msg = f"{name}={value!r} must be a non-negative number (a ridge penalty), e.g. 0.1."
        raise TypeError(msg)
    if not (np.isfinite(value) and value >= 0):
        msg = f"{name}={value!r} must be a non-negative finite ridge penalty, e.g. 0.1."
        raise ValueError(msg)
    return float(value)


def _check_matrix(name: str, value, rows: int | None = None) -> np.ndarray:
    """Return a finite 2-D float64 matrix (a 1-D one as a column); refuse NaN, infinite values and a row mismatch."""
    m = np.asarray(value, dtype=np.float64)
    m = m[:, None] if m.ndim == 1 else m
    if m.ndim != 2:
        msg = f"{name} must be a matrix (2-D), got shape {m.shape}."
        raise ValueError(msg)
    if not np.isfinite(m).all():
        msg = f"{name} has {int((~np.isfinite(m)).sum())} NaN or infinite values; fill or drop them first."
        raise ValueError(msg)
    if rows is not None and m.shape[0] != rows:
        msg = f"{name} has {m.shape[0]} rows for {rows} targets; give one row per target."
        raise ValueError(msg)
    return m


def _solve(a: np.ndarray, b: np.ndarray, what: str) -> np.ndarray:
    """``np.linalg.solve`` that names the penalty to raise when the system is singular."""
    try:
        return np.linalg.solve(a, b)
    except np.linalg.LinAlgError as e:
        msg = f"The ridge system is singular ({e}); pass a positive {what} (e.g. 0.1)."
        raise ValueError(msg) from e


#: smallest dimension of a pseudobulk above which only its leading components are computed
TRUNCATED_SVD_ABOVE = 300


def pseudobulk_gene_embedding(pseudobulk: np.ndarray, n_components: int = 10) -> np.ndarray:
    """Gene embedding from a pseudobulk matrix.

    Parameters
    ----------
    pseudobulk
        Conditions x genes matrix of log-normalised pseudobulk (training conditions, control included).
    n_components
        Number of principal components :math:`K`.

    Returns
    -------
    Genes x K matrix of principal-component scores (``prcomp`` convention: :math:`U_K S_K`).
    """
    y = np.asarray(pseudobulk, dtype=np.float64).T  # genes x conditions
    if y.ndim != 2 or y.shape[1] < 2:
        msg = f"A gene embedding needs at least 2 training conditions, got a matrix of shape {y.shape[::-1]}."
        raise ValueError(msg)
    check_positive_int(n_components, "n_components", hint=" (the number of components), e.g. 10")
    if not np.isfinite(y).all():
        msg = f"The pseudobulk has {int((~np.isfinite(y)).sum())} NaN or infinite values; drop empty conditions first."
        raise ValueError(msg)
    y = y - y.mean(axis=0, keepdims=True)
    k = min(n_components, min(y.shape) - 1) if min(y.shape) > 1 else 1
    if min(y.shape) > TRUNCATED_SVD_ABOVE:
        # genome scale (thousands of genes x conditions): only the leading k components, by Lanczos iterations
        # (scipy's ARPACK, deterministic starting vector) instead of a full SVD whose cost grows as the cube
        from scipy.sparse.linalg import svds

        u, s, _ = svds(y, k=k, v0=np.ones(min(y.shape)) / np.sqrt(min(y.shape)))
        order = np.argsort(s)[::-1]
        u, s = u[:, order], s[order]
    else:
        u, s, _ = np.linalg.svd(y, full_matrices=False)
    scores = u[:, :k] * s[:k]
    if k < n_components:
        scores = np.hstack([scores, np.zeros((scores.shape[0], n_components - k))])
    return scores


def solve_y_axb(
    y: np.ndarray, a: np.ndarray, b: np.ndarray, a_ridge: float = 0.1, b_ridge: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    r"""Double ridge solution of :math:`Y \approx A K B + c\mathbf 1^\top`.

    Parameters
    ----------
    y
        Genes x perturbations matrix of changes.
    a
        Genes x K gene embedding.
    b
        K' x perturbations perturbation embedding.
    a_ridge, b_ridge
        Ridge penalties on both sides.

    Returns
    -------
    ``K`` (K x K') and the centre ``c`` (row means of ``y``).
    """
    a_ridge, b_ridge = _check_penalty("a_ridge", a_ridge), _check_penalty("b_ridge", b_ridge)
    center = y.mean(axis=1)
    yc = y - center[:, None]
    left = _solve(a.T @ a + a_ridge * np.eye(a.shape[1]), a.T @ yc @ b.T, "a_ridge")
    k = _solve((b @ b.T + b_ridge * np.eye(b.shape[0])).T, left.T, "b_ridge").T
    return k, center


def ridge_map(
    embedding: np.ndarray, values: np.ndarray, ridge: float = 0.1, intercept: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form ridge map from embeddings to values, fitted across training targets.

    Parameters
    ----------
    embedding
        Targets x K embedding of the training targets.
    values
        Targets x D values to predict (e.g. per-target operators).
    ridge
        Ridge penalty.
    intercept
        Fit an (unpenalised) intercept: the mean value over training targets.

    Returns
    -------
    Coefficients (K x D) and intercept (D,). A new target's value is ``e @ coef + intercept``.
    """
    ridge = _check_penalty("ridge", ridge)
    e = _check_matrix("embedding", embedding)
    v = _check_matrix("values", values, rows=e.shape[0])
    e_mean = e.mean(axis=0) if intercept else np.zeros(e.shape[1])
    v_mean = v.mean(axis=0) if intercept else np.zeros(v.shape[1])
    ec, vc = e - e_mean, v - v_mean
    coef = _solve(ec.T @ ec + ridge * np.eye(e.shape[1]), ec.T @ vc, "ridge")
    return coef, v_mean - e_mean @ coef


def ridge_map_cv(
    embedding: np.ndarray, values: np.ndarray, ridges: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, float, dict[float, float]]:
    """Ridge map with the penalty chosen by exact leave-one-out cross-validation over the targets.

    Large penalties shrink every new target to the mean of the training targets (the train-mean baseline);
    small ones follow the embedding (the linear baseline's map). The grid is relative to the embedding's
    total variance so that it is scale-free.

    Parameters
    ----------
    embedding
        Targets x K embedding of the training targets.
    values
        Targets x D values to predict.
    ridges
        Penalties to try, as multiples of the embedding's total variance; a log grid when ``None``.

    Returns
    -------
    Coefficients, intercept, the chosen penalty, and the LOO mean squared error of each penalty.
    """
    e = _check_matrix("embedding", embedding)
    v = _check_matrix("values", values, rows=e.shape[0])
    if ridges is not None:
        ridges = [_check_penalty("ridges", r) for r in np.atleast_1d(np.asarray(ridges)).tolist()]
        if not ridges:
            msg = "ridges is empty; pass the penalties to try (e.g. np.logspace(-3, 4, 15)) or None for that grid."
            raise ValueError(msg)
    n = e.shape[0]
    if n < 3:
        return np.zeros((e.shape[1], v.shape[1])), v.mean(axis=0), float("inf"), {}
    ec = e - e.mean(axis=0)
    vc = v - v.mean(axis=0)
    scale = max(float((ec**2).sum()) / n, 1e-12)
    grid = np.logspace(-3, 4, 15) if ridges is None else np.asarray(ridges, dtype=float)
    cv: dict[float, float] = {}
    for r in grid:
        lam = r * scale
        inv = np.linalg.inv(ec.T @ ec + lam * np.eye(e.shape[1]))
        hat = ec @ inv @ ec.T
        resid = vc - hat @ vc
        # leave-one-out residuals of ridge with an unpenalised intercept (the centring costs 1/n)
        denom = 1.0 - np.diag(hat) - 1.0 / n
        loo = resid / np.clip(denom, 1e-6, None)[:, None]
        cv[float(r)] = float(np.mean(loo**2))
    # the mean-only predictor (infinite penalty), for reference
    cv[float("inf")] = float(np.mean((vc * (n / (n - 1))) ** 2))
    best = min(cv, key=cv.get)
    if np.isinf(best):
        coef = np.zeros((e.shape[1], v.shape[1]))
        return coef, v.mean(axis=0) - e.mean(axis=0) @ coef, best, cv
    coef, icpt = ridge_map(e, v, ridge=best * scale)
    return coef, icpt, best * scale, cv
