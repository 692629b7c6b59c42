"""Posterior predictive samples and the marginal likelihood of a scmech module (scvi-tools' module contract)."""

from __future__ import annotations

import numpy as np
import torch
from scvi import REGISTRY_KEYS
from torch.distributions import Normal

from scmech._numbers import check_positive_int

__all__ = ["PosteriorMixin"]


class PosteriorMixin:
    r"""``sample`` and ``marginal_ll`` of a module with ``forward``, ``inference`` and ``generative``.

    The generative outputs must hold ``px`` (the measurement operator's distribution) and ``mu`` (the prior mean
    of the latent state at the cell's protocol read-out); the prior is :math:`\mathcal N(\mu, I)`.
    """

    @torch.inference_mode()
    def sample(
        self, tensors: dict, n_samples: int = 1, generative_kwargs: dict | None = None, **kwargs
    ) -> torch.Tensor:
        """Posterior predictive samples of the counts (cells x genes [x samples]).

        Parameters
        ----------
        tensors
            A minibatch of registered tensors.
        n_samples
            Samples per cell.
        generative_kwargs
            Passed to :meth:`generative` (scvi-tools passes ``transform_batch`` here).
        **kwargs
            Ignored (other scvi-tools modules take e.g. ``max_poisson_rate``).

        Returns
        -------
        Counts sampled from the measurement operator (cells x genes, or cells x genes x samples).
        """
        _check_count(n_samples, "n_samples")
        _, gen = self.forward(
            tensors, compute_loss=False, inference_kwargs={"n_samples": 1}, generative_kwargs=generative_kwargs
        )
        dist = gen["px"]
        samples = dist.sample((n_samples,)) if n_samples > 1 else dist.sample()
        if n_samples > 1:
            samples = samples.permute(1, 2, 0)
        return samples.cpu()

    @torch.inference_mode()
    def marginal_ll(self, tensors: dict, n_mc_samples: int, return_mean: bool = False, **kwargs):
        r"""Importance-sampling estimate of :math:`\log p(x)` per cell, with the encoder as proposal.

        :math:`\log p(x) \approx \operatorname{logsumexp}_s [\log p(x \mid z_s) + \log p(z_s) - \log q(z_s
        \mid x)] - \log S` with :math:`z_s \sim q(z \mid x)` and the prior :math:`p(z) = \mathcal N(\mu_\pi, I)`
        at the cell's protocol read-out.

        Parameters
        ----------
        tensors
            A minibatch of registered tensors.
        n_mc_samples
            Number of importance samples :math:`S`.
        return_mean
            Return the mean over cells (a float) instead of one value per cell.
        **kwargs
            Ignored.

        Returns
        -------
        The log-likelihood estimate of each cell, or their mean when ``return_mean``.
        """
        _check_count(n_mc_samples, "n_mc_samples")
        x = tensors[REGISTRY_KEYS.X_KEY]
        inf = self.inference(**self._get_inference_input(tensors))
        qz = inf["qz"]
        gen_input = self._get_generative_input(tensors, inf)
        terms = []
        for _ in range(int(n_mc_samples)):
            z = qz.sample()
            gen = self.generative(**{**gen_input, "z": z})
            log_px = gen["px"].log_prob(x).sum(-1)
            log_pz = Normal(gen["mu"], torch.ones_like(gen["mu"])).log_prob(z).sum(-1)
            log_qz = qz.log_prob(z).sum(-1)
            terms.append(log_px + log_pz - log_qz)
        ll = torch.logsumexp(torch.stack(terms), dim=0) - float(np.log(n_mc_samples))
        return float(ll.mean()) if return_mean else ll.cpu()


def _check_count(value, name: str) -> None:
    """Refuse a number of samples that is not a positive whole number (0 would fail in ``torch.stack``)."""
    check_positive_int(value, name, hint=" (samples per cell)")
