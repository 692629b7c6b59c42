r"""Two-component Gaussian mixture with one component fixed at the control distribution.

The unique-attractor check fits :math:`z \sim \pi\, N(0, 1) + (1 - \pi)\, N(\mu, \sigma^2)` to the
standardised scores of perturbed cells: the first component is the control distribution (fixed), the second
the responders. General-purpose mixture fitters (e.g. scikit-learn's ``GaussianMixture``) cannot hold one
component fixed, so the EM algorithm is written out here, vectorised over independent fits (one per row), which
the bootstrap of :math:`\pi` uses.
"""

from __future__ import annotations

import numpy as np

from scmech.tl._stats import norm_logpdf as _norm_logpdf


def _em(
    z: np.ndarray, pi: np.ndarray, mu: np.ndarray, sd: np.ndarray, n_iter: int = 300, tol: float = 1e-9
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    r"""EM for :math:`\pi N(0, 1) + (1-\pi) N(\mu, \sigma^2)`, one fit per row of ``z`` (rows x cells).

    Parameters
    ----------
    z
        Scores, one fit per row.
    pi, mu, sd
        Starting values, one per row.
    n_iter
        At most this many iterations.
    tol
        Stop when every row's log-likelihood changes by less than ``tol`` (relative, at least absolute).

    Returns
    -------
    ``(pi, mu, sd, loglik)`` per row.
    """
    z = np.atleast_2d(z)
    pi, mu, sd = (np.asarray(v, dtype=np.float64).copy() for v in (pi, mu, sd))
    l0_base = _norm_logpdf(z, 0.0, 1.0)
    ll_old = np.full(z.shape[0], -np.inf)

    def loglik(pi: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        l0 = np.log(np.maximum(pi, 1e-300))[:, None] + l0_base
        l1 = np.log(np.maximum(1 - pi, 1e-300))[:, None] + _norm_logpdf(z, mu[:, None], sd[:, None])
        tot = np.logaddexp(l0, l1)
        return l1, tot

    for _ in range(n_iter):
        l1, tot = loglik(pi, mu, sd)
        ll = tot.sum(axis=1)
        r1 = np.exp(l1 - tot)
        w1 = r1.sum(axis=1)
        live = w1 > 1e-9
        pi = np.clip(1.0 - w1 / z.shape[1], 0.0, 1.0)
        w = np.where(live, w1, 1.0)
        mu = np.where(live, (r1 * z).sum(axis=1) / w, mu)
        sd = np.where(live, np.maximum(np.sqrt((r1 * (z - mu[:, None]) ** 2).sum(axis=1) / w), 0.05), sd)
        if np.all(np.abs(ll - ll_old) < tol * np.maximum(np.abs(ll), 1.0)):
            break
        ll_old = ll
    _, tot = loglik(pi, mu, sd)
    return pi, mu, sd, tot.sum(axis=1)


def _fit_mixture(z: np.ndarray) -> tuple[float, float, float, float]:
    r"""Best of three EM starts for :math:`\pi N(0, 1) + (1-\pi) N(\mu, \sigma^2)`: ``(pi, mu, sd, loglik)``."""
    z = np.asarray(z, dtype=np.float64)
    p0 = np.array([0.02, 0.2, 0.5])
    pi, mu, sd, ll = _em(np.tile(z, (3, 1)), p0, np.full(3, z.mean()) / (1 - p0), np.full(3, max(float(z.std()), 0.1)))
    i = int(np.argmax(ll))
    return float(pi[i]), float(mu[i]), float(sd[i]), float(ll[i])


def _posterior(z: np.ndarray, pi: float, mu: float, sd: float) -> np.ndarray:
    r"""Posterior probability of the responder component :math:`N(\mu, \sigma^2)` for each score."""
    l0 = np.log(max(pi, 1e-300)) + _norm_logpdf(z, 0.0, 1.0)
    l1 = np.log(max(1 - pi, 1e-300)) + _norm_logpdf(z, mu, sd)
    return np.exp(l1 - np.logaddexp(l0, l1))
