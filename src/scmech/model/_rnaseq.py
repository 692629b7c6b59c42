"""scvi-tools' RNA-seq model methods, adapted where SemiMechVI's measurement operator differs from scVI's.

SemiMechVI reads each cell's library size off its counts (or a registered size factor) instead of learning it,
and with ``gene_likelihood="normal"`` it models log-normalised values, for which count-model quantities
(dispersions, sampled counts' correlations, library sizes) do not exist. These methods answer for SemiMechVI what
scvi-tools' versions answer for scVI, or say why they do not apply. Every method that reads the learned weights
refuses an untrained model (scvi-tools' ``get_latent_representation`` does; its other methods return numbers
from the random initial weights), including the inherited ``get_elbo``, ``get_marginal_ll``,
``get_reconstruction_error`` and ``get_importance_weights``, wrapped here for that check alone.
"""

from __future__ import annotations

import inspect
import numbers
from typing import TYPE_CHECKING

import numpy as np
import torch

from ._argument_checks import check_flag, check_gene_list, check_indices, check_positive_int

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from anndata import AnnData

__all__ = ["MeasurementMethodsMixin"]


def _trained_only(name: str, what: str, owner: str) -> Callable:
    """Return a method that refuses an untrained model, then calls scvi-tools' method ``name`` unchanged.

    scvi-tools' own methods answer from the random initial weights of an untrained model.

    Parameters
    ----------
    name
        The method's name.
    what
        What it returns, for its docstring.
    owner
        The scvi-tools mixin that defines it, for its docstring.

    Returns
    -------
    The method.
    """

    def method(self, *args, **kwargs):
        self._check_if_trained(warn=False)
        return getattr(super(MeasurementMethodsMixin, self), name)(*args, **kwargs)

    method.__name__ = name
    method.__qualname__ = f"MeasurementMethodsMixin.{name}"
    method.__doc__ = f"""Return {what} (scvi-tools' method), for a trained model only.

    Parameters
    ----------
    *args, **kwargs
        Passed to :meth:`scvi.model.base.{owner}.{name}`.

    Returns
    -------
    As scvi-tools' method.

    Raises
    ------
    RuntimeError
        For a model that is not trained.
    """
    return method


class MeasurementMethodsMixin:
    """Library size, likelihood parameters, feature correlations and importance-weighted expression."""

    def _refuse_mudata_labels(self, method: str, kwargs: dict) -> None:
        """Refuse what scvi-tools would label with every modality's genes of a MuData (it has the RNA ones only).

        scvi-tools names the genes of these results by ``mdata.var_names``, which hold every modality's features,
        while the model describes the RNA modality's genes; the unlabelled array (``return_numpy=True``, without
        ``gene_list``) is right.
        """
        from mudata import MuData

        if not isinstance(self.adata, MuData) or self.adata.n_vars == len(self._expression_matrix(self.adata)[1]):
            return
        if method == "get_normalized_expression" and kwargs.get("return_numpy") and kwargs.get("gene_list") is None:
            return
        msg = (
            f"{method} on a model set up with a MuData: scvi-tools labels its result with the genes of every "
            "modality, and the model has the RNA modality's only. Use get_normalized_expression(return_numpy=True) "
            "without gene_list: its columns are the RNA modality's var_names, in order."
        )
        raise NotImplementedError(msg)

    def _refuse_for_normal(self, method: str, why: str) -> None:
        if self.module.gene_likelihood == "normal":
            msg = (
                f"{method} does not apply to gene_likelihood='normal': the model describes log-normalised values, "
                f"{why}. Train on raw counts with gene_likelihood='nb' or 'zinb' for it."
            )
            raise NotImplementedError(msg)

    @torch.inference_mode()
    def get_latent_library_size(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        give_mean: bool = True,
        batch_size: int | None = None,
        **kwargs,
    ) -> np.ndarray:
        """Library size of each cell as the measurement operator uses it (cells x 1).

        SemiMechVI does not learn a library size (scVI's ``use_observed_lib_size=True``): it is each cell's total
        count over the registered genes, or its registered size factor scaled to them.

        Parameters
        ----------
        adata
            AnnData set up like the training data; the registered data when ``None``.
        indices
            Cells to use; all when ``None``.
        give_mean
            Accepted for scvi-tools' interface; the library size is observed, so there is nothing to average.
        batch_size
            Minibatch size.
        **kwargs
            Passed to the data loader.

        Returns
        -------
        The library sizes, cells x 1.
        """
        self._check_if_trained(warn=False)
        check_flag(give_mean, "give_mean")
        self._refuse_for_normal("get_latent_library_size", "which have no library size")
        adata = self._validate_anndata(adata)
        dl = self._make_data_loader(adata=adata, indices=indices, batch_size=batch_size, **kwargs)
        out = []
        for tensors in dl:
            tensors = {k: v.to(self.device) for k, v in tensors.items()}
            inf = self.module.inference(**self.module._get_inference_input(tensors))
            gen_input = self.module._get_generative_input(tensors, inf)
            out.append(torch.exp(gen_input["library"]).cpu().numpy())
        return np.concatenate(out).reshape(-1, 1)

    @torch.inference_mode()
    def get_likelihood_parameters(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        n_samples: int | None = 1,
        give_mean: bool | None = False,
        batch_size: int | None = None,
        **kwargs,
    ) -> dict[str, np.ndarray]:
        """Return each cell's measurement distribution parameters: scvi-tools' keys for counts, mean and sd otherwise.

        For NB and ZINB this is scvi-tools' method (``mean``, ``dispersions`` and, for ZINB, ``dropout``). For
        ``gene_likelihood="normal"`` it returns ``mean`` and ``scale`` (the per-gene standard deviation) of the
        Gaussian over log-normalised values.

        Parameters
        ----------
        adata
            AnnData set up like the training data; the registered data when ``None``.
        indices
            Cells to use; all when ``None``.
        n_samples
            Posterior samples of the latent state per cell.
        give_mean
            Average over the samples.
        batch_size
            Minibatch size.
        **kwargs
            Passed to scvi-tools' method (counts) or the data loader.

        Returns
        -------
        A dict of arrays (cells x genes, or samples x cells x genes without ``give_mean``) by parameter name.
        """
        self._check_if_trained(warn=False)
        if self.module.gene_likelihood != "normal":
            return super().get_likelihood_parameters(
                adata=adata, indices=indices, n_samples=n_samples, give_mean=give_mean, batch_size=batch_size, **kwargs
            )
        adata = self._validate_anndata(adata)
        dl = self._make_data_loader(adata=adata, indices=indices, batch_size=batch_size, **kwargs)
        means, scales = [], []
        n = int(n_samples or 1)
        for tensors in dl:
            draws = []
            for _ in range(n):
                _, gen = self.module.forward(tensors, compute_loss=False)
                draws.append(gen["px"].loc.cpu().numpy())
                scale = gen["px"].scale.cpu().numpy()
            draws = np.stack(draws)
            means.append(draws.mean(0) if (give_mean or n == 1) else draws)
            scales.append(scale)
        axis = 0 if (give_mean or n == 1) else 1
        return {"mean": np.concatenate(means, axis=axis), "scale": np.concatenate(scales, axis=0)}

    def get_normalized_expression(self, *args, **kwargs):
        """Normalised expression of each cell (scvi-tools' method).

        With ``gene_likelihood="normal"`` the model describes the log-normalised values it was trained on, and the
        result is their predicted mean on that scale (not a share of a library): ``library_size`` other than 1 is
        refused, and so are importance weights (scvi-tools rebuilds its Gaussian from parameters it cannot pass
        back; use ``weights="uniform"``). Genes of ``gene_list`` that the model does not have are refused by name.
        ``indices`` are checked as in :meth:`get_latent_representation`: one position, a tuple or list of positions
        or a boolean mask (scvi-tools' method failed on a tuple or a single position while labelling the rows).

        Parameters
        ----------
        *args, **kwargs
            Passed to :meth:`scvi.model.base.RNASeqMixin.get_normalized_expression`.

        Returns
        -------
        As scvi-tools' method: a DataFrame of cells x genes (or an array, with ``return_numpy=True``).

        Raises
        ------
        RuntimeError
            For a model that is not trained.
        """
        self._check_if_trained(warn=False)
        kwargs = _as_keywords(super().get_normalized_expression, args, kwargs)
        if kwargs.get("weights") == "importance":
            self._refuse_for_normal(
                "get_normalized_expression(weights='importance')",
                "and scvi-tools cannot rebuild their Gaussian for importance weights (use weights='uniform')",
            )
        self._refuse_mudata_labels("get_normalized_expression", kwargs)
        library_size = kwargs.get("library_size", 1)
        if self.module.gene_likelihood == "normal" and not (
            isinstance(library_size, numbers.Real) and float(library_size) == 1.0
        ):
            msg = (
                f"library_size={library_size!r} does not apply to gene_likelihood='normal': the result is the "
                "predicted mean of the log-normalised values the model was trained on, not a share of a library. "
                "Leave library_size at 1 (or train on raw counts with gene_likelihood='nb' or 'zinb')."
            )
            raise ValueError(msg)
        if not (library_size == "latent" or _positive_finite(library_size)):
            msg = (
                f"library_size={library_size!r} must be a positive finite number of counts (1: proportions, 1e4: "
                "counts per 10,000) or 'latent' (each cell's own library size)."
            )
            raise ValueError(msg)
        kwargs["n_samples"] = check_positive_int(kwargs.get("n_samples", 1), "n_samples")
        if kwargs.get("n_samples_overall") is not None:
            kwargs["n_samples_overall"] = check_positive_int(kwargs["n_samples_overall"], "n_samples_overall")
        if kwargs.get("gene_list") is not None:
            kwargs["gene_list"] = check_gene_list(kwargs["gene_list"], self._expression_matrix(self.adata)[1])
        if kwargs.get("indices") is not None:
            data = kwargs["adata"] if kwargs.get("adata") is not None else self.adata
            kwargs["indices"] = check_indices(kwargs["indices"], data.n_obs)
        return super().get_normalized_expression(**kwargs)

    def posterior_predictive_sample(self, *args, **kwargs):
        """Sample counts from the posterior predictive distribution (scvi-tools' method), arguments checked first.

        ``n_samples`` must be a positive integer (scvi-tools would return one sample for 0 or a negative number),
        and genes of ``gene_list`` that the model does not have are refused by name (scvi-tools drops them).

        Parameters
        ----------
        *args, **kwargs
            Passed to :meth:`scvi.model.base.RNASeqMixin.posterior_predictive_sample`.

        Returns
        -------
        As scvi-tools' method: a sparse array of cells x genes (x samples).

        Raises
        ------
        RuntimeError
            For a model that is not trained.
        """
        self._check_if_trained(warn=False)
        kwargs = _as_keywords(super().posterior_predictive_sample, args, kwargs)
        kwargs["n_samples"] = check_positive_int(kwargs.get("n_samples", 1), "n_samples")
        if kwargs.get("gene_list") is not None:
            kwargs["gene_list"] = check_gene_list(kwargs["gene_list"], self._expression_matrix(self.adata)[1])
        return super().posterior_predictive_sample(**kwargs)

    def get_feature_correlation_matrix(self, *args, **kwargs):
        """Gene-gene correlation of posterior predictive samples (scvi-tools' method; count likelihoods only).

        ``n_samples`` must be a positive integer (scvi-tools' method returned an all-NaN matrix for 0 and failed
        inside numpy or torch for a negative or fractional number).

        Parameters
        ----------
        *args, **kwargs
            Passed to :meth:`scvi.model.base.RNASeqMixin.get_feature_correlation_matrix`.

        Returns
        -------
        A DataFrame of gene-gene correlations.

        Raises
        ------
        RuntimeError
            For a model that is not trained.
        """
        self._check_if_trained(warn=False)
        self._refuse_for_normal(
            "get_feature_correlation_matrix", "while scvi-tools' method samples counts at a common library size"
        )
        self._refuse_mudata_labels("get_feature_correlation_matrix", {})
        kwargs = _as_keywords(super().get_feature_correlation_matrix, args, kwargs)
        if "n_samples" in kwargs:
            kwargs["n_samples"] = check_positive_int(kwargs["n_samples"], "n_samples")
        return super().get_feature_correlation_matrix(**kwargs)

    def differential_expression(self, *args, **kwargs):
        """Differential expression between groups of cells (scvi-tools' method), with the groups checked first.

        A ``groupby`` column that ``adata`` does not have, or a ``group1``/``group2`` label that is not in it, is
        refused by name (scvi-tools' method would divide by an empty group).

        Parameters
        ----------
        *args, **kwargs
            Passed to :meth:`scvi.model.base.RNASeqMixin.differential_expression`.

        Returns
        -------
        As scvi-tools' method: a DataFrame of per-gene statistics for each comparison.

        Raises
        ------
        RuntimeError
            For a model that is not trained.
        """
        self._check_if_trained(warn=False)
        kwargs = _as_keywords(super().differential_expression, args, kwargs)
        groupby = kwargs.get("groupby")
        if groupby is not None:
            adata = kwargs.get("adata") if kwargs.get("adata") is not None else self.adata
            obs = adata.obs
            if groupby not in obs:
                msg = f"groupby={groupby!r} is not a column of adata.obs (columns: {list(obs.columns)[:10]})."
                raise KeyError(msg)
            present = set(map(str, obs[groupby].astype(str).unique()))
            for name in ("group1", "group2"):
                group = kwargs.get(name)
                labels = [group] if isinstance(group, str) else list(group or [])
                missing = [g for g in labels if str(g) not in present]
                if missing:
                    msg = f"{name}={group!r}: {missing} not in adata.obs[{groupby!r}] (labels: {sorted(present)[:10]})."
                    raise KeyError(msg)
        adata = kwargs.get("adata") if kwargs.get("adata") is not None else self.adata
        if kwargs.get("idx1") is not None:
            kwargs["idx1"], kwargs["idx2"] = _de_cells(adata, kwargs["idx1"], kwargs.get("idx2"))
        # scvi-tools caches each cell's normalisation in adata.obs (and would reuse a stale one after the counts
        # change); a user's AnnData keeps only the documented keys, so the column goes again unless it was there
        cached = _DE_SCALING_KEY in adata.obs
        try:
            return super().differential_expression(**kwargs)
        finally:
            if not cached and _DE_SCALING_KEY in adata.obs:
                del adata.obs[_DE_SCALING_KEY]

    # scvi-tools' VAE and RNA-seq methods that need no checks of their own beyond a trained model
    get_elbo = _trained_only("get_elbo", "the evidence lower bound of the data", "VAEMixin")
    get_marginal_ll = _trained_only("get_marginal_ll", "the marginal log-likelihood of the data", "VAEMixin")
    get_reconstruction_error = _trained_only(
        "get_reconstruction_error", "the reconstruction error of the data", "VAEMixin"
    )
    get_importance_weights = _trained_only(
        "get_importance_weights", "importance weights of posterior samples", "RNASeqMixin"
    )


def _as_keywords(method: Callable, args: tuple, kwargs: dict) -> dict:
    """``args`` and ``kwargs`` of a call to ``method`` as keyword arguments only, so that every check sees them.

    The wrappers check arguments by name; an argument given by position (``get_normalized_expression(adata,
    [0, 1])``) would otherwise reach scvi-tools unchecked. Too many positional arguments raise Python's TypeError.
    """
    if not args:
        return dict(kwargs)
    signature = inspect.signature(method)
    bound = signature.bind_partial(*args, **kwargs).arguments
    named = {}
    for name, value in bound.items():
        if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        else:
            named[name] = value
    return named


#: the obs column in which scvi-tools' differential expression caches each cell's 1e4 / library size
_DE_SCALING_KEY = "_scvi_raw_norm_scaling"


def _positive_finite(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value) and value > 0


def _de_cells(adata, idx1, idx2) -> tuple[np.ndarray, np.ndarray | None]:
    """Cells of the two groups of ``differential_expression(idx1=..., idx2=...)`` as positions, checked.

    Each group is positions, a boolean mask or a query of ``adata.obs``; an empty group, positions outside the cells
    and cells in both groups are refused (scvi-tools fails inside numpy, or silently moves shared cells to
    ``idx2``).
    """
    groups = []
    for name, idx, rest in (("idx1", idx1, "groupby groups"), ("idx2", idx2, "the cells outside idx1")):
        if idx is None:
            groups.append(None)
            continue
        if isinstance(idx, str):
            query = idx
            try:
                idx = np.flatnonzero(adata.obs.index.isin(adata.obs.query(query).index))
            except Exception as e:
                msg = f"{name}={query!r} is not a valid query of adata.obs ({type(e).__name__}: {e})."
                raise KeyError(msg) from e
            if len(idx) == 0:
                msg = f"{name}={query!r} selects no cell of adata.obs; select at least one (or give positions)."
                raise ValueError(msg)
        groups.append(np.unique(np.mod(check_indices(idx, adata.n_obs, name, none_means=rest), adata.n_obs)))
    if groups[1] is not None:
        shared = np.intersect1d(groups[0], groups[1])
        if shared.size:
            msg = (
                f"idx1 and idx2 share {shared.size} cells (e.g. positions {shared[:3].tolist()}); each cell belongs "
                "to one group. Remove them from one of the two."
            )
            raise ValueError(msg)
    return groups[0], groups[1]
