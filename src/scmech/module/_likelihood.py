r"""Per-cell log-likelihood of the counts, with a negative binomial that skips what sparse counts make zero.

scvi-tools' ``NegativeBinomial.log_prob`` evaluates, for every cell and gene,

.. math::

    \log p(x \mid \mu, \theta) = \theta \log\theta - (\theta + x)\log(\theta + \mu) + x \log\mu
    + \log\Gamma(x + \theta) - \log\Gamma(\theta) - \log\Gamma(x + 1),

with the per-gene :math:`\theta` broadcast to every cell. In a training step the loss needs only its sum over the
genes of each cell, and two of the three log-gamma terms (with their digamma backward) cancel or vanish wherever
:math:`x = 0`: :math:`\log\Gamma(x + \theta) - \log\Gamma(\theta) - \log\Gamma(x + 1) = 0` there. Single-cell counts
are mostly zeros, so :func:`nb_log_likelihood` evaluates those terms on the stored counts alone and
:math:`\theta\log\theta` once per gene. The value is the same log-likelihood (a test compares it with scvi-tools'
to rounding); on CPU it costs about a fifth of the dense evaluation at 5% non-zero counts and less at 30%.

On other devices the dense form is kept: finding the non-zero counts has a data-dependent size, which would make
the device wait for the host in every step. Written here because scvi-tools evaluates the dense form only.
"""

from __future__ import annotations

import torch
from scvi.distributions import NegativeBinomial

__all__ = ["counts_log_likelihood", "nb_log_likelihood"]

#: scvi-tools' numerical floor inside the logarithms of its negative binomial
EPS = 1e-8


def nb_log_likelihood(
    x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, eps: float = EPS, sparse: bool | None = None
) -> torch.Tensor:
    r"""Return the negative binomial log-likelihood of each cell's counts, summed over the genes.

    Parameters
    ----------
    x
        Counts (cells x genes).
    mu
        Means (cells x genes).
    theta
        Inverse dispersions: per gene (genes,), or per cell and gene (cells x genes, e.g. per batch); a per-gene
        :math:`\theta` broadcast to every cell (a stride-0 view, as scvi-tools' distribution stores it) is read as
        per gene.
    eps
        Floor inside the logarithms (scvi-tools' value by default).
    sparse
        Evaluate the log-gamma terms on the non-zero counts only (``None``: on CPU tensors, see the module
        docstring).

    Returns
    -------
    The log-likelihood of each cell (cells,).
    """
    if theta.dim() == 2 and theta.shape[0] > 0 and theta.stride(0) == 0:
        theta = theta[0]
    per_gene = theta.dim() == 1
    log_theta_mu = torch.log(theta + mu + eps)
    dense = x * torch.log(mu + eps) - (theta + x) * log_theta_mu
    if per_gene:
        level = (theta * torch.log(theta + eps)).sum()
    else:
        level = (theta * torch.log(theta + eps)).sum(-1)
    total = dense.sum(-1) + level
    if not (x.device.type == "cpu" if sparse is None else sparse):
        theta_full = theta.expand_as(x)
        return total + (torch.lgamma(x + theta_full) - torch.lgamma(theta_full) - torch.lgamma(x + 1)).sum(-1)
    rows, cols = torch.nonzero(x, as_tuple=True)
    counts = x[rows, cols]
    theta_nz = theta[cols] if per_gene else theta[rows, cols]
    stored = torch.lgamma(counts + theta_nz) - torch.lgamma(theta_nz) - torch.lgamma(counts + 1)
    return total + torch.zeros_like(total).index_add(0, rows, stored)


def counts_log_likelihood(
    px: torch.distributions.Distribution, x: torch.Tensor, sparse: bool | None = None
) -> torch.Tensor:
    """Return the log-likelihood of each cell's expression under the measurement distribution, summed over genes.

    A plain negative binomial goes through :func:`nb_log_likelihood`; every other distribution (zero-inflated,
    normal) through its own ``log_prob``.

    Parameters
    ----------
    px
        The measurement distribution of each cell (an scvi-tools distribution).
    x
        Expression (cells x genes).
    sparse
        For a negative binomial, evaluate the log-gamma terms on the non-zero counts only (``None``: on CPU
        tensors).

    Returns
    -------
    The log-likelihood of each cell (cells,).
    """
    if type(px) is NegativeBinomial and px.mu is not None:
        return nb_log_likelihood(x, px.mu, px.theta, sparse=sparse)
    return px.log_prob(x).sum(-1)
