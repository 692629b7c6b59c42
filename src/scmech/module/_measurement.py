r"""The measurement operator: latent state → count (or log-normalised) distribution per gene.

.. math::

    \text{logits}_{cg} = (D z_c)_g + b_g + \beta_{b(c), g} + \sum_j \xi_{j, k_j(c), g} + (C s_c)_g
        + [p_c \neq \varnothing]\, o_g + \sum_{k \in p_c} \eta_c\, a_k\, [g = \text{gene}(k)],

:math:`\rho_c = \mathrm{softmax}(\text{logits}_c)` and :math:`x_{cg} \sim \mathrm{NB}(\ell_c \rho_{cg}, \theta_g)`
(or its zero-inflated form). :math:`D` is linear (default) or an MLP, :math:`\beta_b` is the batch's
per-gene capture (a measurement effect, not a biological one), :math:`\xi` and :math:`C` are
categorical and continuous covariates, :math:`o` is a full-rank per-gene offset of perturbed cells (the
shift shared by perturbations, which a low-rank latent shift cannot express) and :math:`a_k` is the direct
effect of a knock-down of gene :math:`k` on its own mRNA. With ``likelihood="normal"`` (log-normalised
data) the logits are the mean of a Gaussian with per-gene variance.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from scvi.distributions import NegativeBinomial, Normal, ZeroInflatedNegativeBinomial
from scvi.nn import FCLayers
from torch import nn

from ._targets import ActiveTargets, active_targets

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["MeasurementDecoder"]


class MeasurementDecoder(nn.Module):
    """Decoder of the measurement operator (see the module docstring for the model).

    Parameters
    ----------
    n_latent
        Latent dimension.
    n_genes
        Number of genes.
    n_batch
        Number of batches.
    target_gene_index
        Position of each target's gene in the gene list, ``-1`` where unmeasured.
    likelihood
        ``"nb"``, ``"zinb"`` or ``"normal"``.
    dispersion
        ``"gene"`` or ``"gene-batch"``.
    n_layers
        Hidden layers of the decoder MLP; 0 is a linear decoder.
    n_hidden
        Width of the decoder MLP.
    n_cats_per_cov
        Number of categories of each extra categorical covariate.
    n_continuous_cov
        Number of continuous covariates.
    shared_offset
        Learn the per-gene offset of perturbed cells.
    own_target
        Learn the direct effect of each target on its own mRNA.
    """

    def __init__(
        self,
        n_latent: int,
        n_genes: int,
        n_batch: int,
        target_gene_index: torch.Tensor,
        likelihood: Literal["nb", "zinb", "normal"] = "nb",
        dispersion: Literal["gene", "gene-batch"] = "gene",
        n_layers: int = 0,
        n_hidden: int = 128,
        n_cats_per_cov: Sequence[int] | None = None,
        n_continuous_cov: int = 0,
        shared_offset: bool = True,
        own_target: bool = True,
    ) -> None:
        super().__init__()
        self.likelihood = likelihood
        self.dispersion = dispersion
        self.n_genes = n_genes
        self.n_batch = n_batch
        self.hidden = (
            FCLayers(n_in=n_latent, n_out=n_hidden, n_layers=n_layers, n_hidden=n_hidden, dropout_rate=0.0)
            if n_layers > 0
            else None
        )
        self.loading = nn.Linear(n_hidden if n_layers > 0 else n_latent, n_genes)
        self.batch_effect = nn.Parameter(torch.zeros(max(n_batch, 1), n_genes))
        self.cat_effects = nn.ParameterList([nn.Parameter(torch.zeros(n, n_genes)) for n in (n_cats_per_cov or [])])
        self.cont_effect = nn.Parameter(torch.zeros(n_continuous_cov, n_genes)) if n_continuous_cov else None
        self.shared_offset = nn.Parameter(torch.zeros(n_genes)) if shared_offset else None
        self.register_buffer("target_gene_index", target_gene_index.long())
        n_targets = len(target_gene_index)
        self.own_effect = nn.Parameter(torch.zeros(n_targets)) if own_target else None
        n_disp = n_batch if dispersion == "gene-batch" else 1
        self.log_theta = nn.Parameter(torch.zeros(n_disp, n_genes) + 1.0)
        self.dropout_logits = nn.Linear(n_latent, n_genes) if likelihood == "zinb" else None
        self.log_sigma = nn.Parameter(torch.zeros(n_genes) - 1.0) if likelihood == "normal" else None

    def perturbation_offset(
        self,
        perturbation: torch.Tensor | ActiveTargets,
        efficacy: torch.Tensor | None,
        own_effect: torch.Tensor | None = None,
        target_gene_index: torch.Tensor | None = None,
        add_to: torch.Tensor | None = None,
        ramp: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """Gene-space effects of the perturbation: shared offset plus own-target knock-down (n x genes).

        ``perturbation`` is a multi-hot matrix (n x targets) or its non-zero entries (``ActiveTargets``); the
        own-gene knock-down is scattered from those entries, so its cost does not grow with the number of targets.

        Parameters
        ----------
        perturbation
            The targets of each row.
        efficacy
            Efficacy per row, or ``None`` (1).
        own_effect
            Own-gene effects to use instead of the learned ones (e.g. with rows for unseen targets).
        target_gene_index
            Gene position of each target (``-1``: not measured) to use with ``own_effect``.
        add_to
            Logits (n x genes) to add the effects to, in place, without autograd (prediction at genome scale:
            no second rows x genes array); returned.
        ramp
            Fraction of the effects present at each row's read-out (n,), or ``None`` (all of them): in the dynamic
            regime the effects build up with the onset of the perturbation and are absent at its time 0.

        Returns
        -------
        The offsets (n x genes), or ``add_to`` with them added.
        """
        active = perturbation if isinstance(perturbation, ActiveTargets) else active_targets(perturbation)
        out = add_to
        perturbed = active.perturbed
        if ramp is not None:
            perturbed = perturbed * ramp.reshape(-1, 1).to(perturbed.dtype)
        if self.shared_offset is not None:
            if add_to is not None:
                add_to.addcmul_(perturbed.to(add_to.dtype), self.shared_offset.to(add_to.dtype))
            else:
                out = perturbed * self.shared_offset
        own = self.own_effect if own_effect is None else own_effect
        idx = self.target_gene_index if target_gene_index is None else target_gene_index
        if own is not None and len(idx) > 0:
            gene = active.gather(idx.unsqueeze(-1)).squeeze(-1)  # gene of each entry; 0 in padding
            measured = active.gather((idx >= 0).unsqueeze(-1).to(active.value.dtype)).squeeze(-1)
            vals = active.value * active.gather(own.unsqueeze(-1).to(active.value.dtype)).squeeze(-1) * measured
            if efficacy is not None:
                vals = vals * efficacy.reshape(-1, 1)
            if ramp is not None:
                vals = vals * ramp.reshape(-1, 1).to(vals.dtype)
            if add_to is not None:
                return add_to.scatter_add_(1, gene.clamp(min=0), vals.to(add_to.dtype))
            n = active.value.shape[0]
            own_mat = torch.zeros(n, self.n_genes, device=vals.device, dtype=vals.dtype)
            own_mat = own_mat.scatter_add(1, gene.clamp(min=0), vals)
            out = own_mat if out is None else out + own_mat
        return out

    def logits(
        self,
        z: torch.Tensor,
        batch_index: torch.Tensor | None,
        gene_offset: torch.Tensor | None = None,
        cat_covs: torch.Tensor | None = None,
        cont_covs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Unnormalised log expression per gene.

        Parameters
        ----------
        z
            Latent states (n x latent).
        batch_index
            Batch of each row (n x 1), or ``None`` for no batch effect.
        gene_offset
            Per-gene terms (n x genes) added as they are, e.g. the perturbation offset
            (:meth:`perturbation_offset`).
        cat_covs
            Category codes of the extra categorical covariates (n x covariates), or ``None``.
        cont_covs
            Values of the continuous covariates (n x covariates), or ``None``.

        Returns
        -------
        The logits (n x genes).
        """
        h = self.hidden(z) if self.hidden is not None else z
        out = self.loading(h)
        if batch_index is not None and self.n_batch > 0:
            out = out + self.batch_effect[batch_index.reshape(-1).long()]
        if cat_covs is not None:
            for j, eff in enumerate(self.cat_effects):
                out = out + eff[cat_covs[:, j].long()]
        if cont_covs is not None and self.cont_effect is not None:
            out = out + cont_covs @ self.cont_effect
        if gene_offset is not None:
            out = out + gene_offset
        return out

    def distribution(
        self, z: torch.Tensor, logits: torch.Tensor, library: torch.Tensor, batch_index: torch.Tensor | None
    ):
        """Likelihood of the counts given the logits and the library size (log scale, n x 1).

        Parameters
        ----------
        z
            Latent states (n x latent); the zero-inflation logits of ``likelihood="zinb"`` are computed from them.
        logits
            Logits (n x genes) from :meth:`logits`.
        library
            Log library size per row (n x 1); not used by ``likelihood="normal"``.
        batch_index
            Batch of each row (n x 1), for ``dispersion="gene-batch"``; ``None`` uses the first batch's dispersion.

        Returns
        -------
        A scvi-tools distribution over the genes: ``NegativeBinomial``, ``ZeroInflatedNegativeBinomial`` or
        ``Normal`` (mean ``logits``, per-gene standard deviation).
        """
        if self.likelihood == "normal":
            # scvi-tools' Normal: its normalised expression (get_normalized("scale")) is the mean itself
            return Normal(logits, self.log_sigma.exp().clamp(min=1e-4).expand_as(logits), normal_mu=logits)
        scale = torch.softmax(logits, dim=-1)
        rate = torch.exp(library) * scale
        if self.dispersion == "gene-batch" and batch_index is not None:
            theta = self.log_theta[batch_index.reshape(-1).long()].exp()
        else:
            theta = self.log_theta[0].exp()
        if self.likelihood == "zinb":
            return ZeroInflatedNegativeBinomial(mu=rate, theta=theta, zi_logits=self.dropout_logits(z), scale=scale)
        return NegativeBinomial(mu=rate, theta=theta, scale=scale)
