r"""The extra terms of :meth:`SemiMechVAE.loss <scmech.module.SemiMechVAE.loss>` beyond the ELBO.

Each term is a function of the minibatch's tensors: the baseline control cells and their mean state, the
running control reference, the steady-state term :math:`\|f_\theta(\bar z_\varnothing; m_0, \varnothing)\|^2`,
the protocol groups of the minibatch, the unbiased MMD of the groups' basal states against the controls and the
share of basal variance between groups (a diagnostic).

Every branch is written with masks and :func:`torch.where`: none of these functions reads a device value back to
the host, so a training step never waits for the device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from torch.distributions import Normal, kl_divergence

from ._groups import _group_mmd
from ._likelihood import counts_log_likelihood

if TYPE_CHECKING:
    from torch.distributions import Distribution

    from ._targets import ActiveTargets

__all__ = [
    "baseline_controls",
    "basal_leak",
    "basal_mmd",
    "control_mean",
    "elbo_terms",
    "protocol_groups",
    "steady_state_term",
    "update_control_reference",
]


def elbo_terms(
    x: torch.Tensor, px: Distribution, qz: Normal, mu: torch.Tensor, kl_weight: float, sparse: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Negative ELBO of a minibatch, with the KL warm-up on the encoder only.

    The warm-up weight scales the KL term's gradient for the encoder; the dynamics get the prior's full gradient
    through :math:`\tfrac12\|\mathbb E_q z - \mu_\pi\|^2`, added with no effect on the value of the loss.

    Parameters
    ----------
    x
        Expression of each cell (n x genes).
    px
        The measurement distribution of each cell.
    qz
        The posterior :math:`q(z \mid x)` of each cell.
    mu
        The prior mean :math:`\mu_\pi` of each cell (n x latent): its protocol's read-out.
    kl_weight
        Weight of the KL term for the encoder (scvi-tools' warm-up).
    sparse
        Evaluate a negative binomial's log-gamma terms on the non-zero counts only (``None``: on the CPU;
        :func:`~scmech.module._likelihood.nb_log_likelihood`).

    Returns
    -------
    The loss (mean over cells, 0-d), the reconstruction loss and the KL divergence of each cell (n,), and each
    cell's prior fit :math:`\tfrac12\|\mathbb E_q z - \mu_\pi\|^2` (n,).
    """
    recon = -counts_log_likelihood(px, x, sparse=sparse)
    kl_true = kl_divergence(qz, Normal(mu, torch.ones_like(mu), validate_args=False)).sum(-1)
    # warm-up acts on the encoder only; the dynamics get the full prior gradient
    kl_enc = kl_divergence(qz, Normal(mu.detach(), torch.ones_like(mu), validate_args=False)).sum(-1)
    # the prior's gradient for the dynamics at full weight, with no effect on the value of the loss
    prior_fit = 0.5 * (qz.loc.detach() - mu).pow(2).sum(-1)
    loss = torch.mean(recon + kl_weight * kl_enc + (prior_fit - prior_fit.detach()))
    return loss, recon, kl_true, prior_fit


def baseline_controls(active: ActiveTargets, media: torch.Tensor, media_time: torch.Tensor) -> torch.Tensor:
    """Return which cells are baseline controls: no target, the baseline medium and no medium switch.

    Parameters
    ----------
    active
        The targets of each cell.
    media
        Medium index per cell (n,).
    media_time
        Time of the switch into the cell's medium (n,); NaN where there was none.

    Returns
    -------
    A boolean mask (n,).
    """
    is_ctrl = (active.value == 0).all(-1)
    return is_ctrl & (media == 0) & (torch.isnan(media_time))


def control_mean(
    loc: torch.Tensor, baseline_ctrl: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean latent state of the minibatch's baseline control cells.

    Parameters
    ----------
    loc
        Posterior means of the cells (n x latent), detached.
    baseline_ctrl
        Which cells are baseline controls (n,), from :func:`baseline_controls`.

    Returns
    -------
    Whether the minibatch holds a baseline control (0-d), their number (0-d), their weights (n x 1: 1 for a
    control, else 0) and their mean state (1 x latent; zeros without controls).
    """
    has_ctrl = baseline_ctrl.any()
    n_ctrl = baseline_ctrl.sum()
    ctrl_w = baseline_ctrl.to(loc.dtype).unsqueeze(-1)
    mean_ctrl = (loc * ctrl_w).sum(0, keepdim=True) / n_ctrl.clamp(min=1)
    return has_ctrl, n_ctrl, ctrl_w, mean_ctrl


@torch.no_grad()
def update_control_reference(
    reference: torch.Tensor,
    reference_set: torch.Tensor,
    mean_ctrl: torch.Tensor,
    has_ctrl: torch.Tensor,
    reference_known: torch.Tensor,
) -> None:
    """Blend the minibatch's control mean into the running control reference, in place.

    The reference is the running mean of the baseline control state, used when a minibatch holds no controls:
    the first minibatch with controls sets it, later ones move it by a tenth of the way; a minibatch without
    controls leaves it as it is.

    Parameters
    ----------
    reference
        The running reference (latent,), updated in place.
    reference_set
        Whether the reference was set (0-d boolean), updated in place.
    mean_ctrl
        Mean state of the minibatch's baseline controls (latent,).
    has_ctrl
        Whether the minibatch holds a baseline control (0-d boolean).
    reference_known
        Whether a control was seen in this or an earlier minibatch (0-d boolean): the new ``reference_set``.
    """
    blended = torch.where(reference_set, 0.9 * reference + 0.1 * mean_ctrl, mean_ctrl)
    reference.copy_(torch.where(has_ctrl, blended, reference))
    reference_set.copy_(reference_known)


def steady_state_term(
    field: torch.nn.Module,
    z_base: torch.Tensor,
    loc: torch.Tensor,
    mean_ctrl: torch.Tensor,
    ctrl_w: torch.Tensor,
    n_ctrl: torch.Tensor,
    has_ctrl: torch.Tensor,
    reference_known: torch.Tensor,
    *,
    regime: Literal["steady_state", "dynamic"],
    steady_state_on: Literal["mean", "cells"],
) -> torch.Tensor:
    r"""Steady-state term: baseline controls are a fixed point of :math:`f(\cdot; m_0, \varnothing)`.

    Parameters
    ----------
    field
        The latent vector field, called as ``field(z, media, drive)``.
    z_base
        The baseline state (latent,); in the dynamic regime every protocol starts there, so the term is the field
        at it.
    loc
        Posterior means of the cells (n x latent), detached; used with ``steady_state_on="cells"``.
    mean_ctrl
        Mean baseline control state (1 x latent): the minibatch's, or the running reference without controls.
    ctrl_w
        Control weights of the cells (n x 1), from :func:`control_mean`.
    n_ctrl
        Number of baseline controls in the minibatch (0-d).
    has_ctrl
        Whether the minibatch holds a baseline control (0-d boolean).
    reference_known
        Whether a control was seen in this or an earlier minibatch (0-d boolean); without one the term is 0.
    regime
        ``"steady_state"`` or ``"dynamic"``.
    steady_state_on
        ``"mean"``: the field at the mean control state; ``"cells"``: the mean over the control cells.

    Returns
    -------
    The squared norm of the field (0-d).
    """
    zero_drive = torch.zeros(1, z_base.shape[-1], device=loc.device)
    m0 = torch.zeros(1, dtype=torch.long, device=loc.device)
    if regime == "dynamic":
        # every protocol starts from z_base in the baseline medium: the baseline is a fixed point there
        return field(z_base.unsqueeze(0), m0, zero_drive).pow(2).sum()
    if steady_state_on == "cells":
        f_cells = field(loc, m0.expand(len(loc)), zero_drive.expand(len(loc), -1)).pow(2).sum(-1)
        f_ref = field(mean_ctrl, m0, zero_drive).pow(2).sum()
        ss_cells = (f_cells * ctrl_w[:, 0]).sum() / n_ctrl.clamp(min=1)
        return torch.where(has_ctrl, ss_cells, torch.where(reference_known, f_ref, torch.zeros_like(f_ref)))
    f_ctrl = field(mean_ctrl, m0, zero_drive).pow(2).sum()
    return torch.where(reference_known, f_ctrl, torch.zeros_like(f_ctrl))  # no baseline control seen yet


def protocol_groups(
    active: ActiveTargets, media: torch.Tensor, time: torch.Tensor, media_time: torch.Tensor
) -> torch.Tensor:
    """Return which pairs of cells share a protocol (targets, medium, time and medium switch).

    Parameters
    ----------
    active
        The targets of each cell.
    media
        Medium index per cell (n,).
    time
        Read-out time per cell (n,).
    media_time
        Time of the switch into the cell's medium (n,); NaN where there was none.

    Returns
    -------
    A boolean matrix (n x n), true where two rows belong to one protocol group.
    """
    protocol = torch.cat(
        [
            active.key(),
            media.reshape(-1, 1).float(),
            time.reshape(-1, 1),
            torch.nan_to_num(media_time, nan=-1e9).reshape(-1, 1),
        ],
        dim=1,
    )
    return (protocol.unsqueeze(1) == protocol.unsqueeze(0)).all(-1)


def basal_mmd(
    basal: torch.Tensor, same: torch.Tensor, baseline_ctrl: torch.Tensor, n_ctrl: torch.Tensor
) -> torch.Tensor:
    """Unbiased MMD of each protocol group's basal states against the baseline controls'.

    The basal states must not encode the protocol. A minibatch with fewer than 2 baseline controls (e.g. a design
    where every cell switched medium or was perturbed) compares each group with the pooled minibatch instead.

    Parameters
    ----------
    basal
        Basal states of the cells (n x latent): their latent state minus their protocol's read-out.
    same
        Which pairs of cells share a protocol (n x n), from :func:`protocol_groups`.
    baseline_ctrl
        Which cells are baseline controls (n,).
    n_ctrl
        Their number (0-d).

    Returns
    -------
    The mean MMD over the compared groups (0-d).
    """
    n_latent = basal.shape[-1]
    bw = [0.5 * n_latent**0.5, n_latent**0.5, 2 * n_latent**0.5]
    ref = torch.where(n_ctrl >= 2, baseline_ctrl, torch.ones_like(baseline_ctrl))
    mmd, _ = _group_mmd(basal, same, ref, bw)
    return mmd


@torch.no_grad()
def basal_leak(basal: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """Share of the basal variance between protocol groups (a diagnostic, without gradient).

    Parameters
    ----------
    basal
        Basal states of the cells (n x latent).
    same
        Which pairs of cells share a protocol (n x n), from :func:`protocol_groups`.

    Returns
    -------
    The variance of the group means over the total variance (0-d).
    """
    sf = same.to(basal.dtype)
    group_mean = (sf @ basal) / sf.sum(1, keepdim=True)
    total_var = basal.var(0, unbiased=False).sum().clamp(min=1e-8)
    return ((group_mean - basal.mean(0)) ** 2).sum(-1).mean() / total_var


def perturbed_steady_state_term(
    field, active: ActiveTargets, media: torch.Tensor, efficacy: torch.Tensor | None, loc: torch.Tensor, same
) -> torch.Tensor:
    r"""Mean over the perturbed protocol groups of :math:`\|f_\theta(\bar z_p; m_p, p)\|^2` (assumed settled).

    Written with masks (no host sync): each row evaluates the field at its group's mean state and is weighed by one
    over its group's size, so that every group counts once.

    Parameters
    ----------
    field
        The latent vector field (``drive`` and ``forward``).
    active
        The targets of each cell.
    media
        Medium index per cell (n,).
    efficacy
        Efficacy per cell (n,), or ``None``.
    loc
        Latent means of the cells (n x latent), detached.
    same
        Which pairs of cells share a protocol (:func:`protocol_groups`).

    Returns
    -------
    The term (a scalar tensor); 0 without perturbed cells.
    """
    same = same.to(loc.dtype)
    size = same.sum(1)
    group_mean = (same @ loc) / size.unsqueeze(-1)
    f2 = field(group_mean, media, field.drive(active, efficacy)).pow(2).sum(-1)
    weight = (active.value != 0).any(-1).to(loc.dtype) / size
    return (f2 * weight).sum() / weight.sum().clamp(min=1e-12)
