r"""The structural-causal-model link: a linearised gene regulatory network from the learned dynamics.

At the control steady state :math:`z^\star` (:math:`f_\theta(z^\star; m_0, \varnothing) = 0`) the dynamics
linearise to :math:`\delta\dot z = J\,\delta z` with :math:`J = \partial f_\theta/\partial z`. The measurement
operator maps latent changes to gene changes, :math:`\delta x = D\,\delta z` with :math:`D` the Jacobian of the
decoder's log-expression (the loadings of a linear decoder). In gene space the linearised field is

.. math:: \delta\dot x = A\,\delta x, \qquad A = D\,J\,D^{+},

a signed gene-gene influence matrix (:math:`A_{ij}` the effect of gene :math:`j` on the rate of gene :math:`i`;
rank at most the latent dimension), and the steady-state response to a small sustained push on gene
:math:`j` is :math:`R = -D\,J^{-1}D^{+}` (column :math:`j`): the total, not only the direct, effect. Both hold
near the control steady state only; far from it (strong perturbations, other media, differentiating systems
read out before equilibrium) the linearisation and its SCM reading do not apply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import torch

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["NetworkMixin"]


class NetworkMixin:
    """``get_regulatory_network``: the gene-gene influence matrix of the learned dynamics."""

    @torch.no_grad()
    def _control_steady_state(self, media: int = 0) -> tuple[torch.Tensor, float]:
        module = self.module
        field = module.field
        dev = module.z_base.device
        drive = torch.zeros(1, module.n_latent, device=dev)
        med = torch.full((1,), media, dtype=torch.long, device=dev)
        res = field.fixed_point(
            module.control_reference.unsqueeze(0).clone(), med, drive, tol=1e-7, max_iter=200, implicit=False
        )
        return res.z[0], float(res.residual[0])

    def _decoder_jacobian(self, z: torch.Tensor) -> torch.Tensor:
        decoder = self.module.decoder
        if decoder.hidden is None:
            return decoder.loading.weight.detach().clone()  # genes x latent

        def logits(zz):
            return decoder.loading(decoder.hidden(zz.unsqueeze(0)))[0]

        with torch.enable_grad():
            return torch.autograd.functional.jacobian(logits, z.detach().clone())

    def get_regulatory_network(
        self,
        *,
        kind: Literal["jacobian", "response"] = "jacobian",
        media: str | None = None,
        genes: Sequence[str] | None = None,
        top_k: int | None = None,
        include_self: bool = False,
    ) -> pd.DataFrame:
        r"""Signed gene-gene influence of the learned dynamics, linearised at the control steady state.

        See :mod:`scmech.model._network` for the maths: ``kind="jacobian"`` gives :math:`A = DJD^{+}` (direct
        influence on the rate of change), ``kind="response"`` gives :math:`R = -DJ^{-1}D^{+}` (steady-state
        response to a sustained push; for a knock-down of gene :math:`j` the predicted change of every gene is
        approximately column :math:`j` times the change of :math:`j`'s production). Valid near the control
        steady state only.

        Parameters
        ----------
        kind
            ``"jacobian"`` or ``"response"``.
        media
            Medium whose control steady state to linearise at; the baseline medium when ``None``.
        genes
            Restrict the matrix to these genes (rows and columns).
        top_k
            Return the ``top_k`` strongest edges (by absolute weight) as a long DataFrame with columns
            ``source``, ``target``, ``weight`` instead of the matrix.
        include_self
            Keep the diagonal (self-regulation, dominated by relaxation) among the ranked edges.

        Returns
        -------
        A genes x genes DataFrame (``df.loc[target, source]``) or, with ``top_k``, the top edges.

        Examples
        --------
        >>> net = model.get_regulatory_network(top_k=50)
        >>> net.head()
        """
        self._check_if_trained(warn=False)
        if kind not in ("jacobian", "response"):
            msg = f"kind={kind!r} is not 'jacobian' or 'response'."
            raise ValueError(msg)
        cats = self._media_categories()
        m = 0
        if media is not None:
            if str(media) not in cats:
                msg = f"Medium {media!r} was not seen in training (media: {cats or 'none registered'})."
                raise KeyError(msg)
            m = cats.index(str(media))
        z_star, residual = self._control_steady_state(m)
        module = self.module
        with torch.no_grad():
            jac = module.field.jacobian(
                z_star.unsqueeze(0), torch.full((1,), m, dtype=torch.long, device=z_star.device)
            )
            jac = jac[0].double().cpu().numpy()
        dec = self._decoder_jacobian(z_star).double().cpu().numpy()  # genes x latent
        dec_pinv = np.linalg.pinv(dec)
        mat = dec @ jac @ dec_pinv if kind == "jacobian" else -dec @ np.linalg.solve(jac, dec_pinv)
        _, var_names = self._expression_matrix(self.adata)
        names = pd.Index(np.asarray(var_names).astype(str))
        df = pd.DataFrame(mat, index=names.copy(), columns=names.copy())
        df.index.name, df.columns.name = "target", "source"
        df.attrs["steady_state_residual"] = residual
        df.attrs["kind"] = kind
        if genes is not None:
            missing = [g for g in genes if g not in names]
            if missing:
                msg = f"Genes {missing[:5]} are not in the model's genes."
                raise KeyError(msg)
            df = df.loc[list(genes), list(genes)]
        if top_k is None:
            return df
        long = df.stack().rename("weight").reset_index()
        if not include_self:
            long = long[long["target"] != long["source"]]
        long = long.reindex(long["weight"].abs().sort_values(ascending=False).index).head(int(top_k))
        return long[["source", "target", "weight"]].reset_index(drop=True)
