r"""The model's read-out of protocols: counterfactual cells decoded through the measurement operator.

A requested protocol :math:`\pi` is read out from starting cells :math:`c` (by default the training
controls): the cell's basal state :math:`z_c - \mu_{\pi_c}` plus the read-out :math:`\mu_\pi` of the requested
protocol (fixed point or flow of the latent dynamics), decoded with the cell's batch and covariates and the
perturbation's gene-space offset. The mean over cells is the predicted pseudobulk. This module computes; the
model's ``predict`` plans, anchors and packages.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from scvi import REGISTRY_KEYS

from scmech._constants import SCMECH_REGISTRY_KEYS, TARGET_SUM
from scmech.module._targets import ActiveTargets

if TYPE_CHECKING:
    from ._protocols import Protocol

__all__ = ["Readout", "mean_over_cells", "read_out"]

K = SCMECH_REGISTRY_KEYS


@dataclass
class Readout:
    r"""Result of :func:`read_out`.

    Parameters
    ----------
    log_values
        :math:`\log(1 + 10^4 \rho)` per protocol (mean over cells) or per counterfactual cell (float32).
    residual
        Steady-state residual :math:`\|f\|` of each protocol's solve (largest over efficacy levels).
    latents
        Counterfactual latent states (per-cell read-outs only).
    n_cells
        Number of starting cells.
    unconverged
        Labels of the requested protocols whose steady-state solve did not converge.
    mapped
        Targets without training cells, predicted through the target map.
    sources
        How each mapped target was predicted.
    start
        Indices of the starting cells.
    efficacy
        Where the efficacy came from: ``"empirical"``, ``"given"`` or ``"1"``.
    user_cells
        Whether the starting cells were the user's (``from_cells``).
    """

    log_values: np.ndarray
    residual: np.ndarray
    latents: np.ndarray | None
    n_cells: int
    unconverged: list[str]
    mapped: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    start: np.ndarray | None = None
    efficacy: str = "1"
    user_cells: bool = False


def starting_cells(model, adata, from_cells, n_cells, rng: np.random.Generator, own_data: bool) -> np.ndarray:
    """Return the starting cells: ``from_cells``, else the control cells (of training, for the model's data).

    Held-out control cells never start a prediction on the registered data: a batch held out with its
    controls stays unseen.
    """
    design = model._design(adata)
    if from_cells is None:
        mask = design.is_control & ~design.is_unassigned
        if own_data and getattr(model, "train_indices_", None) is not None and len(model.train_indices_):
            train = np.zeros(adata.n_obs, dtype=bool)
            train[np.asarray(model.train_indices_, dtype=int)] = True
            mask &= train
        idx = np.flatnonzero(mask)
        if len(idx) == 0:
            msg = (
                "No control cells to start counterfactuals from (among the training cells for the registered "
                "data); pass from_cells=<indices of cells>."
            )
            raise ValueError(msg)
        cap = 500 if n_cells is None else n_cells
    else:
        fc = np.asarray(from_cells)
        if fc.size == 0:
            msg = "from_cells is empty: pass the positions (or a boolean mask) of at least one starting cell, or None."
            raise ValueError(msg)
        if fc.dtype != bool and not np.issubdtype(fc.dtype, np.integer):
            msg = (
                f"from_cells must be integer positions or a boolean mask of the cells, got dtype {fc.dtype} "
                f"({fc.ravel()[:3].tolist()}...). Positions of names: np.flatnonzero(adata.obs_names.isin(names))."
            )
            raise TypeError(msg)
        idx = np.flatnonzero(fc) if fc.dtype == bool else fc.astype(int)
        if fc.dtype == bool and len(fc) != adata.n_obs:
            msg = f"from_cells is a mask of length {len(fc)} for {adata.n_obs} cells."
            raise ValueError(msg)
        if len(idx) == 0 or idx.min() < 0 or idx.max() >= adata.n_obs:
            msg = f"from_cells must index cells of adata (0..{adata.n_obs - 1})."
            raise ValueError(msg)
        cap = n_cells
    if n_cells is not None and len(idx) < n_cells:
        pool = "cells in from_cells" if from_cells is not None else "control cells to start from"
        warnings.warn(
            f"n_cells={n_cells} asks for more starting cells than the {len(idx)} {pool}; all {len(idx)} are used "
            "(obs['n_cells'] of the prediction says how many).",
            UserWarning,
            stacklevel=4,
        )
    if cap is not None and len(idx) > cap:
        idx = np.sort(rng.choice(idx, size=cap, replace=False))
    return idx


def efficacy_pool(model) -> np.ndarray | None:
    """Efficacies of the perturbed training cells (held-out cells excluded), or ``None``."""
    if K.EFFICACY_KEY not in model.adata_manager.data_registry:
        return None
    eff = np.asarray(model.adata_manager.get_from_registry(K.EFFICACY_KEY)).ravel()
    design = model._design(model.adata)
    perturbed = design.fit_mask & ~design.is_control
    train = getattr(model, "train_indices_", None)
    if train is not None and len(train):
        in_train = np.zeros(len(perturbed), dtype=bool)
        in_train[np.asarray(train, dtype=int)] = True
        perturbed &= in_train
    return eff[perturbed] if perturbed.any() else None


def _basal_states(model, adata, start: np.ndarray, batch_size: int | None) -> tuple:
    """Basal latent states of the starting cells with their batches and covariates."""
    module, dev = model.module, model.device
    dl = model._make_data_loader(adata=adata, indices=start, batch_size=batch_size or 1024, shuffle=False)
    basal, batches, cats, conts = [], [], [], []
    for tensors in dl:
        tensors = {k: v.to(dev) for k, v in tensors.items()}
        inf = module.inference(**module._get_inference_input(tensors))
        proto = module._protocol(tensors)
        mu, _ = module.readout_states(
            proto["perturbation"], proto["media"], proto["efficacy"], proto["time"], proto["media_time"], implicit=False
        )
        basal.append(inf["qz"].loc - mu)
        batches.append(tensors.get(REGISTRY_KEYS.BATCH_KEY))
        cats.append(tensors.get(REGISTRY_KEYS.CAT_COVS_KEY))
        conts.append(tensors.get(REGISTRY_KEYS.CONT_COVS_KEY))

    def cat(parts):
        return torch.cat(parts) if parts[0] is not None else None

    return torch.cat(basal), cat(batches), cat(cats), cat(conts)


def read_out(
    model,
    protocols: list[Protocol],
    *,
    adata,
    start: np.ndarray,
    batch_index: int | None,
    levels: np.ndarray | None,
    return_mean: bool,
    operators: tuple,
    columns: dict[str, int],
    media_index: list[int],
    n_requested: int,
    batch_size: int | None = None,
) -> Readout:
    """Read the protocols out from the starting cells (see the module docstring).

    Parameters
    ----------
    model
        A trained :class:`~scmech.model.SemiMechVI`.
    protocols
        Protocols to read out; the first ``n_requested`` are the user's (the rest serve anchoring).
    adata
        AnnData holding the starting cells.
    start
        Indices of the starting cells.
    batch_index
        Batch every counterfactual is measured in, or ``None`` for each cell's own.
    levels
        Efficacy levels spread over the cells, or ``None`` (full efficacy).
    return_mean
        Mean over cells per protocol, else one row per protocol and cell.
    operators
        ``(operators, own effects, target gene index)`` for every column of the perturbation matrix.
    columns
        Column of each target in the perturbation matrix.
    media_index
        Medium index of each protocol.
    n_requested
        Number of requested protocols (convergence is reported for these).
    batch_size
        Minibatch size for encoding.
    """
    if return_mean:
        # a protocol asked for twice (e.g. two control labels) is read out once: identical rows, less work
        first: dict[tuple, int] = {}
        for i, p in enumerate(protocols):
            first.setdefault(p.key, i)
        if len(first) < len(protocols):
            rows = list(first.values())
            position = {k: j for j, k in enumerate(first)}
            where = np.asarray([position[p.key] for p in protocols], dtype=int)
            ro = read_out(
                model,
                [protocols[i] for i in rows],
                adata=adata,
                start=start,
                batch_index=batch_index,
                levels=levels,
                return_mean=True,
                operators=operators,
                columns=columns,
                media_index=[media_index[i] for i in rows],
                n_requested=0,
                batch_size=batch_size,
            )
            residual = ro.residual[where]
            unconverged = _unconverged(model.module, protocols[:n_requested], residual)
            return Readout(ro.log_values[where], residual, None, ro.n_cells, unconverged)
    module, dev = model.module, model.device
    ops, own, gene_idx = operators
    basal, b_idx, cat_covs, cont_covs = _basal_states(model, adata, start, batch_size)
    n0 = basal.shape[0]
    if batch_index is not None:
        b_idx = torch.full((n0, 1), batch_index, device=dev)
    n_prot = len(protocols)
    n_lev = 1 if levels is None else len(levels)
    cell_level = torch.as_tensor(np.arange(n0) % n_lev, device=dev)
    pert_rows = _targets_of(protocols, columns, n_lev, dev)
    eff_rows = None if levels is None else torch.as_tensor(np.tile(levels, n_prot), dtype=torch.float32, device=dev)
    med_rows = torch.as_tensor(np.repeat(media_index, n_lev), dtype=torch.long, device=dev)
    t_rows = torch.as_tensor(np.repeat([p.time for p in protocols], n_lev), dtype=torch.float32, device=dev)
    s_rows = torch.as_tensor(np.repeat([p.media_time for p in protocols], n_lev), dtype=torch.float32, device=dev)
    mu_rows, res_rows = module.readout_states(
        pert_rows, med_rows, eff_rows, t_rows, s_rows, operators=ops, implicit=False
    )
    residual = res_rows.reshape(n_prot, n_lev).amax(1).cpu().numpy().astype(np.float64)
    unconverged = _unconverged(module, protocols[:n_requested], residual)
    normal = module.gene_likelihood == "normal"
    offset = {"own_effect": own, "target_gene_index": gene_idx, "ramp": module.offset_ramp(t_rows)}
    values, latents = None, None
    if return_mean and module.decoder.hidden is None:
        # linear decoder: logits = A_cell + B_condition, so the mean over cells is exact in two products
        cell_logits = module.decoder.logits(basal, b_idx, None, cat_covs, cont_covs)
        cond_logits = mu_rows @ module.decoder.loading.weight.T  # (protocols x levels) x genes
        module.decoder.perturbation_offset(pert_rows, eff_rows, **offset, add_to=cond_logits)
        values = mean_over_cells(cell_logits, cond_logits.reshape(n_prot, n_lev, -1), cell_level, softmax=not normal)
    if values is None:
        off_rows = module.decoder.perturbation_offset(pert_rows, eff_rows, **offset)
        off_rows = None if off_rows is None else off_rows.reshape(n_prot, n_lev, -1)
        covs = (b_idx, cat_covs, cont_covs)
        mu_rows = mu_rows.reshape(n_prot, n_lev, -1)
        values, latents = _per_cell(module, basal, mu_rows, off_rows, cell_level, covs, return_mean)
        values = torch.from_numpy(values)
    # single precision (the predictions are float32; about 7 digits of the log), in place: at genome scale each copy
    # is 10^4 x 8,000 values (and torch's log1p is vectorised, numpy's is not)
    values = values.cpu().float()
    if not normal:
        values.mul_(TARGET_SUM).log1p_()
    return Readout(values.numpy(), residual, latents, n0, unconverged)


def _targets_of(protocols: list[Protocol], columns: dict[str, int], n_levels: int, device) -> ActiveTargets:
    """Return the targets of each protocol (repeated for ``n_levels`` efficacy levels) in compact form.

    Never a protocols x targets matrix: at genome scale (:math:`10^4` protocols and targets) it would take gigabytes.
    """
    n_targets = len(columns)
    k = max([len(p.targets) for p in protocols] + [1])
    index = np.full((len(protocols), k), n_targets, dtype=np.int64)
    for row, p in enumerate(protocols):
        index[row, : len(p.targets)] = sorted(columns[t] for t in p.targets)
    index = torch.as_tensor(np.repeat(index, n_levels, axis=0), device=device)
    return ActiveTargets(index, (index < n_targets).float(), n_targets)


def _unconverged(module, requested: list[Protocol], residual: np.ndarray) -> list[str]:
    fp = module.regime == "steady_state" and module.readout == "fixed_point"
    limit = max(module.fixed_point_tol * 10, 1e-4) * np.sqrt(module.n_latent)
    bad = [(p.label, r) for p, r in zip(requested, residual, strict=False) if fp and r > limit]
    if bad:
        warnings.warn(
            f"The steady-state solve did not converge within fixed_point_max_iter={module.fixed_point_max_iter} "
            f"Newton iterations for {len(bad)} condition(s) (e.g. {bad[0][0]!r}, residual "
            f"{bad[0][1]:.3g}); their predictions are the last "
            "iterate. Check obs['steady_state_residual']; a model trained longer or with a larger "
            "fixed_point_max_iter (SemiMechVI(..., fixed_point_max_iter=...)) usually converges.",
            RuntimeWarning,
            stacklevel=4,
        )
    return [label for label, _ in bad]


def _per_cell(module, basal, mu_rows, off_rows, cell_level, covs, return_mean) -> tuple:
    """Decode every counterfactual cell (MLP decoders, per-cell output, or an underflowing fast path)."""
    b_idx, cat_covs, cont_covs = covs
    n0, n_genes, n_prot = basal.shape[0], module.n_input, mu_rows.shape[0]
    chunk = max(1, int(2e7 // max(n0 * n_genes, 1)))
    rows_x, rows_z = [], []
    for lo in range(0, n_prot, chunk):
        ks = slice(lo, min(lo + chunk, n_prot))
        k = ks.stop - ks.start
        z_cf = basal.unsqueeze(0) + mu_rows[ks][:, cell_level]  # k x cells x latent
        offset = None if off_rows is None else off_rows[ks][:, cell_level].reshape(k * n0, n_genes)
        logits = module.decoder.logits(
            z_cf.reshape(k * n0, -1),
            None if b_idx is None else b_idx.repeat(k, 1),
            offset,
            None if cat_covs is None else cat_covs.repeat(k, 1),
            None if cont_covs is None else cont_covs.repeat(k, 1),
        )
        value = logits if module.gene_likelihood == "normal" else torch.softmax(logits, dim=-1)
        value = value.reshape(k, n0, n_genes)
        if return_mean:
            rows_x.append(value.mean(1).cpu().numpy())
        else:
            rows_x.append(value.reshape(k * n0, n_genes).cpu().numpy())
            rows_z.append(z_cf.reshape(k * n0, -1).cpu().numpy())
    latents = np.concatenate(rows_z) if rows_z else None
    return np.concatenate(rows_x), latents


def mean_over_cells(
    cell_logits: torch.Tensor, cond_logits: torch.Tensor, cell_level: torch.Tensor, *, softmax: bool
) -> torch.Tensor | None:
    r"""Mean over cells of :math:`\mathrm{softmax}(A_i + B_{k,l(i)})` for every condition :math:`k`, exactly.

    With :math:`E^A_i = e^{A_i - \max A_i}` and :math:`E^B_k = e^{B_k - \max B_k}`, the softmax of cell
    :math:`i` under condition :math:`k` is :math:`E^A_i \odot E^B_k / (E^A_i \cdot E^B_k)`, so the mean over the
    cells of efficacy level :math:`l` is :math:`E^B_k \odot \sum_i E^A_i / S_{ik}` with :math:`S = E^B {E^A}^T`:
    two matrix products instead of a softmax over cells x conditions x genes. Every term is positive and each
    exponent is at most 0, so single precision holds (relative error about 1e-6) unless a normaliser falls below
    1e-30; then it is recomputed in float64, and ``None`` (use the per-cell path) is returned when a normaliser
    underflows there too.

    Parameters
    ----------
    cell_logits
        Logits of the cell-specific part (cells x genes).
    cond_logits
        Logits of the condition-specific part (conditions x levels x genes).
    cell_level
        Efficacy level of each cell (cells,).
    softmax
        ``False`` for an identity link (``gene_likelihood="normal"``): the mean of sums.
    """
    for dtype, smallest in ((torch.float32, 1e-30), (torch.float64, 1e-280)):
        out = _mean_over_cells(cell_logits.to(dtype), cond_logits.to(dtype), cell_level, softmax, smallest)
        if out is not None:
            return out.float()
    return None


def _mean_over_cells(a, b, cell_level, softmax: bool, smallest: float) -> torch.Tensor | None:
    # conditions x genes arrays dominate (10^4 x 8,000 at genome scale): each is written once, in place
    n0 = a.shape[0]
    out = None
    for lev in range(b.shape[1]):
        sel = cell_level == lev
        if not bool(sel.any()):
            continue
        a_l, b_l = a[sel], b[:, lev]
        if not softmax:
            part = (b_l * sel.sum() + a_l.sum(0, keepdim=True)).mul_(1.0 / n0)
        else:
            ea = torch.exp(a_l - a_l.amax(1, keepdim=True))
            eb = b_l - b_l.amax(1, keepdim=True)
            eb.exp_()
            norm = eb @ ea.T  # conditions x cells
            if bool((norm < smallest).any()):
                return None
            part = norm.reciprocal_().mul_(1.0 / n0) @ ea
            part.mul_(eb)
            del eb
        out = part if out is None else out.add_(part)
    if out is None:
        return torch.zeros(b.shape[0], b.shape[2], dtype=a.dtype, device=b.device)
    return out
