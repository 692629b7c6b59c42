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

What the data identify. The latent relaxation :math:`-\Gamma` of the field maps to :math:`-D\Gamma D^{+}` in
gene space, a (near-)projection onto the decoder's column space that couples every pair of co-loaded genes;
it is a property of the low-rank measurement, not regulation (the true gene-space relaxation is diagonal).
``relaxation=False`` drops it and keeps :math:`D\,\partial g_\theta/\partial z\,D^{+}`, the part of the
field that couples latent directions. Either way the matrix has rank at most the latent dimension, so its
entries are an extrapolation for genes whose own push was never observed. Only the columns of perturbed
targets are identified by an intervention: ``kind="intervention"`` returns, for every registered target
:math:`k` with a learned operator :math:`v_k`, the change of every gene's log-normalised expression between
the post-intervention fixed point :math:`z^\star_k` (:math:`f_\theta(z^\star_k) + v_k = 0`, full knock-down)
and :math:`z^\star`, i.e. the total (direct plus indirect) effect of the intervention on target :math:`k`,
without the shared response of perturbed cells and without the decoder's own-mRNA effect of the knock-down
(so the column is the network-mediated effect). This is the SCM intervention effect when assumptions A1-A2
hold and the read-out is at equilibrium.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import torch

from ._argument_checks import check_flag

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

    @torch.no_grad()
    def _intervention_effects(self, z_star: torch.Tensor, media: int) -> tuple[np.ndarray, list[str]]:
        """Log-normalised expression change of the full knock-down of each registered target (genes x targets)."""
        from scmech._constants import TARGET_SUM

        module = self.module
        field = module.field
        targets = [str(t) for t in self._perturbation_state()["targets"]]
        n_t = len(targets)
        if n_t == 0:
            return np.zeros((module.n_input, 0)), targets
        dev = z_star.device
        drive = field.operators.detach()  # one full knock-down per row, without the shared push
        med = torch.full((n_t,), media, dtype=torch.long, device=dev)
        res = field.fixed_point(
            z_star.unsqueeze(0).expand(n_t, -1).clone(), med, drive, tol=1e-7, max_iter=200, implicit=False
        )
        decoder = module.decoder
        base = decoder.logits(z_star.unsqueeze(0), None).double()
        post = decoder.logits(res.z, None).double()
        if module.gene_likelihood == "normal":
            eff = post - base
        else:
            eff = torch.log1p(TARGET_SUM * torch.softmax(post, -1)) - torch.log1p(TARGET_SUM * torch.softmax(base, -1))
        return eff.T.cpu().numpy(), targets

    def get_regulatory_network(
        self,
        *,
        kind: Literal["jacobian", "response", "intervention"] = "jacobian",
        media: str | None = None,
        genes: str | Sequence[str] | None = None,
        top_k: int | None = None,
        include_self: bool = False,
        relaxation: bool = True,
    ) -> pd.DataFrame:
        r"""Signed gene-gene influence of the learned dynamics, linearised at the control steady state.

        See :mod:`scmech.model._network` for the maths: ``kind="jacobian"`` gives :math:`A = DJD^{+}` (direct
        influence on the rate of change), ``kind="response"`` gives :math:`R = -DJ^{-1}D^{+}` (steady-state
        response to a sustained push; for a knock-down of gene :math:`j` the predicted change of every gene is
        approximately column :math:`j` times the change of :math:`j`'s production). ``kind="intervention"``
        gives, for each registered target, the change of log-normalised expression of every gene between the
        post-intervention fixed point (full knock-down through the learned operator) and the control fixed
        point: the total effect of the intervention, the only columns the data identify. The first two are valid
        near the control steady state only. On the simulator (``benchmarks/results/network.md``) the
        intervention columns rank true direct edges with AUROC about 0.85, close to the model-free observed
        effect of each perturbation (about 0.86); the Jacobian and response reach about 0.62, all of it from the
        relaxation term (0.50, chance, with ``relaxation=False``): read them as shared decoder loadings, not as
        regulation. The network is only as good as the model's fit of the effects.

        Parameters
        ----------
        kind
            ``"jacobian"``, ``"response"`` or ``"intervention"``.
        media
            Medium whose control steady state to linearise at; the baseline medium when ``None``.
        genes
            Restrict the matrix to these genes (rows and columns, in the order given); one gene may be given as a
            string. Each gene must be one of the model's and appear once: an empty list and duplicates are
            refused. For ``kind="intervention"`` the columns are those of the genes that are registered targets;
            when none is, the frame has the genes as rows and no column (no edge with ``top_k``), with a warning
            that names the targets.
        top_k
            Return the ``top_k`` strongest edges (by absolute weight) as a long DataFrame with columns
            ``source``, ``target``, ``weight`` instead of the matrix.
        include_self
            Keep the diagonal (self-regulation, dominated by relaxation) among the ranked edges.
        relaxation
            Keep the latent relaxation :math:`-\Gamma` in :math:`J` (``kind`` ``"jacobian"`` only). ``False``
            drops it: its gene-space image :math:`-D\Gamma D^{+}` couples all co-loaded genes and is not
            regulation.

        Returns
        -------
        A genes x genes DataFrame (``df.loc[target, source]``; genes x registered targets for
        ``kind="intervention"``) or, with ``top_k``, the top edges.

        Raises
        ------
        RuntimeError
            For a model that is not trained.
        KeyError
            For a gene of ``genes`` that the model does not have, or a medium not seen in training.
        ValueError
            For an empty or duplicated ``genes``, and for other arguments out of their range.

        Examples
        --------
        >>> net = model.get_regulatory_network(top_k=50)
        >>> net.head()
        """
        self._check_if_trained(warn=False)
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1):
            msg = f"top_k={top_k!r} must be a positive whole number of edges (or None for the whole matrix)."
            raise ValueError(msg)
        _, var_names = self._expression_matrix(self.adata)
        names = pd.Index(np.asarray(var_names).astype(str))
        genes = _check_network_genes(genes, names)
        include_self = check_flag(include_self, "include_self")
        relaxation = check_flag(relaxation, "relaxation")
        if kind not in ("jacobian", "response", "intervention"):
            msg = f"kind={kind!r} is not 'jacobian', 'response' or 'intervention'."
            raise ValueError(msg)
        if not relaxation and kind != "jacobian":
            msg = f"relaxation=False applies to kind='jacobian' only, not kind={kind!r}; drop relaxation=False."
            raise ValueError(msg)
        cats = self._media_categories()
        m = 0
        if media is not None:
            if str(media) not in cats:
                msg = f"Medium {media!r} was not seen in training (media: {cats or 'none registered'})."
                raise KeyError(msg)
            self._check_trained_medium(str(media), "the network")
            m = cats.index(str(media))
        z_star, residual = self._control_steady_state(m)
        module = self.module
        if kind == "intervention":
            mat, targets = self._intervention_effects(z_star, m)
            columns = pd.Index(targets)
        else:
            with torch.no_grad():
                jac = module.field.jacobian(
                    z_star.unsqueeze(0), torch.full((1,), m, dtype=torch.long, device=z_star.device)
                )
                if not relaxation:
                    jac = jac + torch.diag_embed(module.field.gamma.detach()).unsqueeze(0)
                jac = jac[0].double().cpu().numpy()
            dec = self._decoder_jacobian(z_star).double().cpu().numpy()  # genes x latent
            dec_pinv = np.linalg.pinv(dec)
            mat = dec @ jac @ dec_pinv if kind == "jacobian" else -dec @ np.linalg.solve(jac, dec_pinv)
            columns = names.copy()
        df = pd.DataFrame(mat, index=names.copy(), columns=columns)
        df.index.name, df.columns.name = "target", "source"
        df.attrs["steady_state_residual"] = residual
        df.attrs["kind"] = kind
        df.attrs["relaxation"] = relaxation
        if genes is not None:
            cols = [g for g in genes if g in df.columns] if kind == "intervention" else genes
            if not cols:
                targets = list(df.columns)
                warnings.warn(
                    f"genes={genes[:5]!r}{'...' if len(genes) > 5 else ''} holds no registered target, and "
                    "kind='intervention' has one column per target, so the network has no column. Add targets to "
                    f"genes (registered: {targets[:10]}{'...' if len(targets) > 10 else ''}), or select the rows "
                    "of the whole network: net.loc[genes].",
                    UserWarning,
                    stacklevel=2,
                )
            df = df.loc[genes, cols]
        if top_k is None:
            return df
        long = df.stack().rename("weight").reset_index()
        if not include_self:
            long = long[long["target"] != long["source"]]
        long = long.reindex(long["weight"].abs().sort_values(ascending=False).index).head(int(top_k))
        return long[["source", "target", "weight"]].reset_index(drop=True)


def _check_network_genes(genes, names: pd.Index) -> list[str] | None:
    """Return ``genes`` as a list of the model's genes, each once; ``None`` for every gene.

    Parameters
    ----------
    genes
        One gene (a string), several, or ``None``.
    names
        The model's genes.

    Raises
    ------
    TypeError
        For anything but a name or a sequence of names (a number, for example).
    ValueError
        For an empty selection (the network would be a 0 x 0 frame) or a gene named twice (its row and column
        would be repeated).
    KeyError
        For genes the model does not have.
    """
    if genes is None:
        return None
    if not isinstance(genes, str | Iterable) or (isinstance(genes, np.ndarray) and genes.ndim == 0):
        msg = f"genes={genes!r} must be a gene name or a list of gene names (var_names), or None for every gene."
        raise TypeError(msg)
    genes = [genes] if isinstance(genes, str) else [str(g) for g in genes]
    if not genes:
        msg = "genes=[] selects no gene; pass genes=None for every gene."
        raise ValueError(msg)
    missing = [g for g in genes if g not in names]
    if missing:
        msg = f"genes holds {missing[:5]}, which are not in the model's genes (see model.adata.var_names)."
        raise KeyError(msg)
    index = pd.Index(genes)
    if index.has_duplicates:
        dup = index[index.duplicated()].unique().tolist()
        msg = f"genes holds {dup[:5]} more than once; give each gene once (e.g. list(dict.fromkeys(genes)))."
        raise ValueError(msg)
    return genes
