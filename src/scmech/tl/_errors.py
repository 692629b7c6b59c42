r"""Error decomposition of perturbation effects and predictions (FRAMEWORK §6).

Per gene, on the pseudobulk scale of :func:`scmech.data.pseudobulk`, :math:`\bar y=\log(1+10^4\bar\rho)`, the
pseudobulk of condition :math:`p` in wet-lab batch :math:`b` from :math:`n` cells is modelled as

.. math:: \bar y_{p,b} = \mu_p + \beta_b + \bar\epsilon,\qquad
    \beta_b\sim(0,\sigma^2_{\mathrm{batch}}),\qquad
    \mathrm{Var}\,\bar\epsilon = \sigma^2_{\mathrm{cell}}/n,\qquad
    \sigma^2_{\mathrm{cell}} = \sigma^2_{\mathrm{bio}} + \sigma^2_{\mathrm{meas}}.

:func:`error_decomposition` estimates the variance terms from the control cells and splits the expected (and,
for a prediction, the observed) squared error of every perturbation into a noise floor, a confounding term, a
batch term and the model error. The same estimators feed :mod:`scmech.tl._design` (batching and power).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scmech._constants import SCMECH_ADATA_KEYS, TARGET_SUM
from scmech.data._design import canonical_label, get_design, parse_condition
from scmech.data._pseudobulk import _get_matrix, library_size

from ._metrics import check_finite_rows

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from anndata import AnnData

    from scmech.data._design import PerturbationDesign

logger = logging.getLogger(__name__)

__all__ = ["COMPONENTS", "VAR_MEAN_THRESHOLD", "error_decomposition", "estimate_variance"]

#: error components in stacking order (``total`` is their sum)
COMPONENTS = ("noise_floor", "confounding", "batch", "model")
#: genes enter the scalar variance summaries when their control mean is at least this (counts per 10^4),
#: the same rule as the simulator's ``var_mean_threshold``
VAR_MEAN_THRESHOLD = 1.0
#: ``(w - u)`` compositions closer than this count as identical (no confounding)
_MATCH_TOL = 1e-12
#: at most this many floats per dense block of half-split means
_BLOCK = 20_000_000
#: normalised cells are held dense up to this many values (cells x genes)
_DENSE = 30_000_000


# ------------------------------------------------------------------------------------------------------------
# data preparation
# ------------------------------------------------------------------------------------------------------------


@dataclass
class _Data:
    """Normalised cells of the groups of one decomposition (rows = the used cells only)."""

    z: sp.csr_matrix | np.ndarray  # 1e4 x / l (counts) or x (log-normalised), float64
    zl: sp.csr_matrix | np.ndarray | None  # z * 1e4 / l (Poisson term), control rows only, counts only
    z2: sp.csr_matrix | np.ndarray | None  # z ** 2, control rows only, counts only
    code: np.ndarray  # group code per used cell: condition * n_batches + batch
    n_groups: int
    counts: bool
    lib: np.ndarray | None = None  # library size per control cell (counts only)

    def f(self, m: np.ndarray) -> np.ndarray:
        """Pseudobulk transform of a mean of ``z``."""
        return np.log1p(m) if self.counts else m


def _prepare(
    adata: AnnData,
    rows: np.ndarray,
    code: np.ndarray,
    n_groups: int,
    *,
    layer: str | None,
    counts: bool,
    genes,
    n_control_groups: int,
) -> _Data:
    x = _get_matrix(adata, layer)
    x = x[rows]
    x = sp.csr_matrix(x, dtype=np.float64) if sp.issparse(x) else sp.csr_matrix(np.asarray(x, dtype=np.float64))
    lib = library_size(x) if counts else None
    if genes is not None:
        x = x[:, genes]
    if counts:
        data = x.data
        if data.size and ((data < 0).any() or not np.allclose(data, np.round(data))):
            where = f"adata.layers[{layer!r}]" if layer is not None else "adata.X"
            msg = (
                f"{where} does not hold counts (negative or non-integer values); pass the raw counts with `layer=`, "
                "or counts=False for log-normalised data (then the measurement/biological split is not available)."
            )
            raise ValueError(msg)
        if (lib <= 0).any():
            msg = f"{int((lib <= 0).sum())} cells have a library size of 0; remove empty cells first."
            raise ValueError(msg)
        scale = TARGET_SUM / lib
        z = sp.csr_matrix(sp.diags(scale) @ x)
        # moments for the measurement variance, controls only (the first rows: codes 0 .. n_batches - 1)
        n_ctrl = int(np.searchsorted(np.asarray(code), n_control_groups))
        zc = z[:n_ctrl]
        zl = sp.csr_matrix(sp.diags(scale[:n_ctrl]) @ zc)
        z2 = sp.csr_matrix(zc.multiply(zc))
    else:
        z, zl, z2 = x, None, None
    if z.shape[0] * z.shape[1] <= _DENSE:
        # sparse (groups x cells) @ dense is much faster than sparse @ sparse for the dense outputs needed here
        z = z.toarray()
        zl = zl.toarray() if zl is not None else None
        z2 = z2.toarray() if z2 is not None else None
    lib = lib[: zl.shape[0]] if lib is not None and zl is not None else lib
    return _Data(z=z, zl=zl, z2=z2, code=np.asarray(code, dtype=np.int64), n_groups=n_groups, counts=counts, lib=lib)


# ------------------------------------------------------------------------------------------------------------
# group statistics: means and half-split variances
# ------------------------------------------------------------------------------------------------------------


@dataclass
class _Stats:
    n: np.ndarray  # (groups,) cells
    mean: np.ndarray  # (groups, genes) mean of z (NaN for empty groups)
    cell_var: np.ndarray  # (groups, genes) per-cell variance on the pseudobulk scale from half splits (NaN: n < 2)
    mean_l: np.ndarray | None  # (groups, genes) mean of zl (control groups only, else NaN)
    mean_2: np.ndarray | None  # (groups, genes) mean of z2 (control groups only, else NaN)


def _group_means(mat: sp.csr_matrix, cells: np.ndarray, code: np.ndarray, n_groups: int, n: np.ndarray) -> np.ndarray:
    ind = sp.csr_matrix((np.ones(cells.size), (code, cells)), shape=(n_groups, mat.shape[0]))
    sums = ind @ mat
    sums = sums.toarray() if sp.issparse(sums) else np.asarray(sums)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = sums / n[:, None]
    out[n == 0] = np.nan
    return out


def _split_variance(
    data: _Data,
    cells: np.ndarray,
    code: np.ndarray,
    n: np.ndarray,
    mean: np.ndarray,
    n_splits: int,
    rng: np.random.Generator,
) -> np.ndarray:
    r"""Per-cell variance of each group on the pseudobulk scale from random half splits.

    For a split of a group's :math:`n` cells into halves :math:`A, B` (sizes :math:`\lfloor n/2\rfloor` and
    the rest), :math:`E[(\bar y_A-\bar y_B)^2] = \sigma^2(1/n_A + 1/n_B)`; the estimate is the mean over
    ``n_splits`` splits of :math:`(\bar y_A-\bar y_B)^2/(1/n_A+1/n_B)`. ``cells`` may repeat (bootstrap);
    the B half is the group sum minus the A half.
    """
    G = data.z.shape[1]
    out = np.full((data.n_groups, G), np.nan)
    ok = n >= 2
    if not ok.any():
        return out
    keep = ok[code]
    cells, code = cells[keep], code[keep]
    groups = np.flatnonzero(ok)
    n_a = (n // 2)[groups].astype(float)
    n_b = n[groups] - n_a
    sums = mean[groups] * n[groups, None]
    local = np.full(data.n_groups, -1)
    local[groups] = np.arange(groups.size)
    starts = np.concatenate([[0], np.cumsum(np.bincount(code, minlength=data.n_groups))[:-1]])
    half_of = n // 2
    per = max(1, _BLOCK // max(1, groups.size * G))  # splits per product
    acc = np.zeros((groups.size, G))
    idx = np.arange(code.size)
    for r0 in range(0, n_splits, per):
        rr = min(per, n_splits - r0)
        rows, cols = [], []
        for r in range(rr):
            order = np.lexsort((rng.random(code.size), code))
            sc = code[order]
            a = (idx - starts[sc]) < half_of[sc]
            rows.append(r * groups.size + local[sc[a]])
            cols.append(cells[order][a])
        row = np.concatenate(rows)
        h = sp.csr_matrix((np.ones(row.size), (row, np.concatenate(cols))), shape=(rr * groups.size, data.z.shape[0]))
        m = h @ data.z
        m = (m.toarray() if sp.issparse(m) else np.asarray(m)).reshape(rr, groups.size, G)
        d = data.f(m / n_a[None, :, None]) - data.f((sums[None] - m) / n_b[None, :, None])
        acc += (d**2).sum(axis=0)
    out[groups] = acc / n_splits / (1.0 / n_a + 1.0 / n_b)[:, None]
    return out


def _stats(
    data: _Data,
    cells: np.ndarray,
    code: np.ndarray,
    n_splits: int,
    rng: np.random.Generator,
    control_groups: np.ndarray,
) -> _Stats:
    n = np.bincount(code, minlength=data.n_groups).astype(np.int64)
    mean = _group_means(data.z, cells, code, data.n_groups, n.astype(float))
    cell_var = _split_variance(data, cells, code, n, mean, n_splits, rng)
    mean_l = mean_2 = None
    if data.counts:
        sel = np.isin(code, control_groups)
        n_c = np.where(np.isin(np.arange(data.n_groups), control_groups), n, 0).astype(float)
        mean_l = _group_means(data.zl, cells[sel], code[sel], data.n_groups, n_c)
        mean_2 = _group_means(data.z2, cells[sel], code[sel], data.n_groups, n_c)
    return _Stats(n=n, mean=mean, cell_var=cell_var, mean_l=mean_l, mean_2=mean_2)


# ------------------------------------------------------------------------------------------------------------
# variance terms and components from group statistics
# ------------------------------------------------------------------------------------------------------------


@dataclass
class _Layout:
    conditions: list[str]  # control first
    batches: list[str]
    min_cells: int

    @property
    def n_batches(self) -> int:
        return len(self.batches)

    def grid(self, values: np.ndarray) -> np.ndarray:
        """Reshape a per-group array to (conditions, batches, ...)."""
        return values.reshape(len(self.conditions), self.n_batches, *values.shape[1:])


def _weighted(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean over rows (axis 0) with positive weight and finite values; NaN when there is none."""
    w = np.where(np.isfinite(values).all(axis=1), weights, 0.0)
    if w.sum() <= 0:
        return np.full(values.shape[1], np.nan)
    return (w @ np.where(w[:, None] > 0, values, 0.0)) / w.sum()


def _variance_terms(
    st: _Stats, lay: _Layout, data: _Data, dispersion: np.ndarray | None
) -> dict[str, np.ndarray | list[int]]:
    r"""Per-gene variance terms from the control groups (row 0 of the layout)."""
    n = lay.grid(st.n)[0].astype(float)  # control cells per batch
    mean = lay.grid(st.mean)[0]
    cv = lay.grid(st.cell_var)[0]
    G = st.mean.shape[1]
    # sigma2_cell: per-batch split estimates pooled with weights n_b
    cell = _weighted(cv, np.where(n >= 2, n, 0.0))
    # sigma2_batch: method of moments over batches with >= min_cells controls
    use = np.flatnonzero((n >= max(2, lay.min_cells)) & np.isfinite(cv).all(axis=1))
    if use.size >= 2:
        y = data.f(mean[use])
        sampling = (cv[use] / n[use, None]).mean(axis=0)
        batch = np.maximum(y.var(axis=0, ddof=1) - sampling, 0.0)
    else:
        batch = np.full(G, np.nan)
    # measurement: Poisson (+ NB) sampling variance of z at the cell's library size, delta method
    if data.counts and st.mean_l is not None and st.mean_2 is not None:
        ml = lay.grid(st.mean_l)[0]
        m2 = lay.grid(st.mean_2)[0]
        tech = ml.copy()
        if dispersion is not None:
            tech = tech + (m2 - ml) / (dispersion[None, :] + 1.0)
        meas_b = tech / (1.0 + mean) ** 2
        meas = _weighted(meas_b, np.where(n >= 1, n, 0.0))
        with np.errstate(invalid="ignore", divide="ignore"):
            total_b = (m2 - mean**2) * (n / np.maximum(n - 1, 1))[:, None] / (1.0 + mean) ** 2
        cell_delta = _weighted(total_b, np.where(n >= 2, n, 0.0))
        bio = np.maximum(cell_delta - meas, 0.0)
    else:
        meas = np.full(G, np.nan)
        bio = np.full(G, np.nan)
    ctrl_mean = _weighted(mean, n)
    return {"batch": batch, "cell": cell, "bio": bio, "meas": meas, "mean": ctrl_mean, "batches_used": list(use)}


def _components(
    st: _Stats,
    lay: _Layout,
    data: _Data,
    var: dict[str, Any],
    target: str,
    pred: np.ndarray | None,
    pred_ctrl: np.ndarray | None,
    cell_given: bool = False,
) -> dict[str, np.ndarray]:
    """Per-gene components (perturbations x genes) for each component name, plus ``total``."""
    n = lay.grid(st.n).astype(float)  # (C, B)
    mean = lay.grid(st.mean)  # (C, B, G)
    cv = lay.grid(st.cell_var)
    n_tot = n.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        pooled = np.einsum("cb,cbg->cg", n, np.nan_to_num(mean)) / n_tot[:, None]
    y = data.f(pooled)  # (C, G)
    # per-condition cell variance, control's where a condition has no batch with >= 2 cells
    sigma = np.empty_like(y)
    for c in range(len(lay.conditions)):
        est = _weighted(cv[c], np.where(n[c] >= 2, n[c], 0.0))
        sigma[c] = est if np.isfinite(est).all() and not cell_given else var["cell"]
    w = n / n_tot[:, None]
    mismatch = ((w[1:] - w[0][None, :]) ** 2).sum(axis=1)  # (P,)
    concentration = (w[1:] ** 2).sum(axis=1)
    batch = var["batch"][None, :]
    P, G = len(lay.conditions) - 1, y.shape[1]
    out: dict[str, np.ndarray] = {}
    if target == "delta":
        out["noise_floor"] = sigma[1:] / n_tot[1:, None] + sigma[0][None, :] / n_tot[0]
        conf = np.where(mismatch[:, None] <= _MATCH_TOL, 0.0, batch * mismatch[:, None])
        out["confounding"] = conf
        out["batch"] = np.zeros((P, G))
    else:
        out["noise_floor"] = sigma[1:] / n_tot[1:, None]
        out["confounding"] = np.zeros((P, G))
        out["batch"] = batch * concentration[:, None]
    floor = out["noise_floor"] + out["confounding"] + out["batch"]
    if pred is None:
        out["total"] = floor
    else:
        if target == "delta":
            ref = pred_ctrl if pred_ctrl is not None else y[0]
            err = (pred - ref[None, :]) - (y[1:] - y[0][None, :])
        else:
            err = pred - y[1:]
        out["total"] = err**2
        out["model"] = out["total"] - floor
    return out


def _summaries(comp: dict[str, np.ndarray]) -> np.ndarray:
    """Mean over genes per (perturbation, component), the model error as the exact residual of the means."""
    names = [c for c in COMPONENTS if c in comp]
    vals = np.stack([comp[c].mean(axis=1) for c in names if c != "model"] + [comp["total"].mean(axis=1)], axis=1)
    if "model" in comp:
        model = vals[:, -1] - vals[:, :-1].sum(axis=1)
        vals = np.concatenate([vals[:, :-1], model[:, None], vals[:, -1:]], axis=1)
    return vals


def _interval(estimate: np.ndarray, boot: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    r"""Percentile interval of the replicates, re-centred on the estimate.

    Resampled cells carry the data's sampling noise once more, which shifts variance estimators (for
    :math:`\sigma^2_{\mathrm{batch}}` by about :math:`\overline{\sigma^2_{\mathrm{cell}}/n}`); the spread of the
    replicates is used around the point estimate.
    """
    q_lo, q_hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2], axis=0)
    centre = boot.mean(axis=0)
    return estimate + (q_lo - centre), estimate + (q_hi - centre)


def _variance_summary(var: dict[str, Any], expressed: np.ndarray) -> np.ndarray:
    if not expressed.any():
        return np.full(4, np.nan)
    return np.array([np.mean(var[k][expressed]) for k in ("batch", "cell", "bio", "meas")])


# ------------------------------------------------------------------------------------------------------------
# input handling
# ------------------------------------------------------------------------------------------------------------


def _canonical(label: str, design: PerturbationDesign) -> str:
    targets = parse_condition(str(label), separator=design.separator, control_label=design.control_label)
    return canonical_label(targets, separator=design.separator, control_label=design.control_label)


def _prediction_frame(predictions: AnnData, design: PerturbationDesign, genes: pd.Index) -> pd.DataFrame:
    if not isinstance(predictions, ad.AnnData):
        msg = (
            f"predictions must be an AnnData from model.predict(...) or a baseline (one row per condition), got "
            f"{type(predictions).__name__}."
        )
        raise TypeError(msg)
    if "perturbation" not in predictions.obs.columns:
        msg = "predictions has no obs['perturbation'] column; pass the AnnData returned by predict()."
        raise KeyError(msg)
    labels = [_canonical(x, design) for x in predictions.obs["perturbation"].astype(str)]
    dup = pd.Series(labels)[pd.Series(labels).duplicated()].unique().tolist()
    if dup:
        msg = (
            f"predictions hold several rows for {dup[:5]} (e.g. one per medium or time); decompose one context at a "
            "time: pred[pred.obs['media'] == 'stim']."
        )
        raise ValueError(msg)
    x = predictions.X.toarray() if sp.issparse(predictions.X) else np.asarray(predictions.X)
    check_finite_rows(
        x,
        labels,
        "predictions",
        "their model error would be NaN. Fix or drop those rows (pred[~pred.obs['perturbation'].isin([...])]).",
    )
    frame = pd.DataFrame(x.astype(np.float64), index=labels, columns=pd.Index(predictions.var_names).astype(str))
    shared = genes[genes.isin(frame.columns)]
    if len(shared) == 0:
        msg = "predictions share no genes with adata.var_names."
        raise ValueError(msg)
    return frame


def _variance_override(variance: Mapping[str, Any] | pd.DataFrame | None, genes: pd.Index) -> dict[str, np.ndarray]:
    if variance is None:
        return {}
    if isinstance(variance, pd.DataFrame):
        cols = {c: variance[c] for c in variance.columns}
    elif hasattr(variance, "items"):
        cols = dict(variance.items())
    else:
        msg = f"variance must be a dict or DataFrame with 'batch'/'cell' entries, got {type(variance).__name__}."
        raise TypeError(msg)
    unknown = sorted(set(cols) - {"batch", "cell", "bio", "meas", "mean"})
    if unknown:
        msg = f"variance has unknown entries {unknown}; use 'batch' and/or 'cell' (variance on the pseudobulk scale)."
        raise KeyError(msg)
    out = {}
    for k in ("batch", "cell"):
        if k not in cols:
            continue
        v = cols[k]
        if isinstance(v, pd.Series):
            missing = genes.difference(v.index.astype(str))
            if len(missing):
                msg = f"variance[{k!r}] lacks {len(missing)} genes of adata (e.g. {list(missing[:3])})."
                raise KeyError(msg)
            arr = v.set_axis(v.index.astype(str)).loc[genes].to_numpy(dtype=np.float64)
        else:
            arr = np.broadcast_to(np.asarray(v, dtype=np.float64), (len(genes),)).copy()
        if not np.isfinite(arr).all() or (arr < 0).any():
            msg = f"variance[{k!r}] must be finite and >= 0."
            raise ValueError(msg)
        out[k] = arr
    return out


def _dispersion(dispersion, genes: pd.Index, all_genes: pd.Index | None = None) -> np.ndarray | None:
    """Per-gene NB inverse dispersion for ``genes``, from a scalar, an array over ``all_genes`` or a Series.

    An array holds one value per gene of ``adata`` (``all_genes``, in ``var_names`` order; ``genes`` when
    ``None``); a Series is aligned by gene name.
    """
    if dispersion is None:
        return None
    all_genes = genes if all_genes is None else all_genes
    if isinstance(dispersion, pd.Series):
        index = dispersion.index.astype(str)
        missing = genes.difference(index)
        if len(missing):
            msg = (
                f"dispersion (a Series) lacks {len(missing)} of the {len(genes)} genes of adata (e.g. "
                f"{list(missing[:3])}); index it by adata.var_names."
            )
            raise KeyError(msg)
        if index.duplicated().any():
            msg = f"dispersion (a Series) has duplicated genes {list(index[index.duplicated()].unique()[:3])}."
            raise ValueError(msg)
        arr = dispersion.set_axis(index).loc[genes].to_numpy(dtype=np.float64)
    else:
        try:
            raw = np.asarray(dispersion, dtype=np.float64)
        except (TypeError, ValueError) as e:
            msg = f"dispersion must be a number, an array or a pandas Series, got {type(dispersion).__name__}."
            raise TypeError(msg) from e
        if raw.ndim == 0:
            arr = np.full(len(genes), float(raw))
        elif raw.ndim == 1 and len(raw) == len(all_genes):
            arr = raw[all_genes.get_indexer(genes)] if not genes.equals(all_genes) else raw.copy()
        else:
            msg = (
                f"dispersion has shape {raw.shape} (length {raw.size}), but adata has {len(all_genes)} genes; pass "
                f"one value per gene of adata ({len(all_genes)}, in var_names order), a scalar, or a pandas Series "
                "indexed by gene name."
            )
            raise ValueError(msg)
    if not (np.isfinite(arr).all() and (arr > 0).all()):
        msg = "dispersion (NB inverse dispersion theta) must be finite and > 0 for every gene."
        raise ValueError(msg)
    return arr


def _warn(msg: str) -> None:
    warnings.warn(msg, UserWarning, stacklevel=3)


# ------------------------------------------------------------------------------------------------------------
# the estimator shared with the design tools
# ------------------------------------------------------------------------------------------------------------


@dataclass
class _Setup:
    data: _Data
    layout: _Layout
    genes: pd.Index
    cells: np.ndarray  # used-cell row per member, sorted by group
    code: np.ndarray
    control_groups: np.ndarray
    design: PerturbationDesign
    batch_key: str | None
    dropped: list[str]
    no_control_batches: list[str]


def _setup(
    adata: AnnData,
    *,
    perturbation_key: str,
    control_label: str | Sequence[str],
    separator: str,
    unassigned_label: str | Sequence[str] | None,
    batch_key: str | None,
    layer: str | None,
    counts: bool,
    conditions: Sequence[str] | None,
    min_cells: int,
    genes: pd.Index | None = None,
    require_perturbations: bool = True,
) -> _Setup:
    if batch_key is not None and batch_key not in adata.obs.columns:
        cols = list(adata.obs.columns)
        msg = (
            f"batch_key {batch_key!r} is not a column of adata.obs (columns: {cols[:12]}"
            f"{' ...' if len(cols) > 12 else ''}); pass the column with the wet-lab batch (lane, replicate)."
        )
        raise KeyError(msg)
    full = get_design(
        adata,
        perturbation_key,
        control_label,
        separator=separator,
        unassigned_label=unassigned_label,
        batch_key=batch_key,
        warn_missing_controls=False,
    )
    design = full.perturbation
    ctrl = design.control_label
    fit = design.fit_mask
    labels = design.labels
    batch = np.asarray(full.batch).astype(str) if full.batch is not None else np.full(adata.n_obs, "all")
    batches = [str(b) for b in full.batch.categories] if full.batch is not None else ["all"]
    counts_per = pd.Series(labels[fit]).value_counts()
    observed = [c for c in design.conditions if c != ctrl]
    if conditions is not None:
        wanted = []
        for c in [conditions] if isinstance(conditions, str) else conditions:
            can = _canonical(c, design)
            if can == ctrl:
                continue
            if can not in counts_per.index:
                msg = (
                    f"Condition {c!r} has no assigned cells in obs[{perturbation_key!r}] "
                    f"(conditions include {observed[:8]})."
                )
                raise KeyError(msg)
            wanted.append(can)
        observed = list(dict.fromkeys(wanted))
    n_ctrl = int(counts_per.get(ctrl, 0))
    if n_ctrl < 2:
        msg = (
            f"Only {n_ctrl} control cell(s) ({ctrl!r}); the variance terms need at least 2 control cells, ideally "
            "hundreds in every batch."
        )
        raise ValueError(msg)
    dropped = [c for c in observed if counts_per.get(c, 0) < min_cells]
    if dropped:
        _warn(
            f"Condition(s) {dropped[:10]} have fewer than min_cells={min_cells} cells and are left out of the "
            "decomposition (their pseudobulk is not estimable); lower min_cells or collect more cells."
        )
    keep = [c for c in observed if c not in dropped]
    if not keep and require_perturbations:
        msg = f"No perturbation with at least min_cells={min_cells} cells to decompose."
        raise ValueError(msg)
    conds = [ctrl, *keep]
    cidx = pd.Index(conds).get_indexer(labels)
    bidx = pd.Index(batches).get_indexer(batch)
    used = fit & (cidx >= 0)
    rows = np.flatnonzero(used)
    code_all = cidx[rows] * len(batches) + bidx[rows]
    order = np.argsort(code_all, kind="stable")
    rows, code_all = rows[order], code_all[order]
    layout = _Layout(conditions=conds, batches=batches, min_cells=min_cells)
    gpos = None
    all_genes = pd.Index(adata.var_names).astype(str)
    if genes is not None and not genes.equals(all_genes):
        gpos = all_genes.get_indexer(genes)
    data = _prepare(
        adata,
        rows,
        code_all,
        len(conds) * len(batches),
        layer=layer,
        counts=counts,
        genes=gpos,
        n_control_groups=len(batches),
    )
    n_ctrl_b = np.bincount(bidx[fit & (labels == ctrl)], minlength=len(batches))
    in_use = np.bincount(bidx[used], minlength=len(batches)) > 0
    no_ctrl = [b for b, nc, u in zip(batches, n_ctrl_b, in_use, strict=True) if u and nc == 0]
    return _Setup(
        data=data,
        layout=layout,
        genes=all_genes if genes is None else genes,
        cells=np.arange(rows.size),
        code=code_all,
        control_groups=np.arange(len(batches)),
        design=design,
        batch_key=batch_key,
        dropped=dropped,
        no_control_batches=no_ctrl,
    )


def _resample(setup: _Setup, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap: cells drawn with replacement within each (condition, batch) group (members sorted by group)."""
    n = np.bincount(setup.code, minlength=setup.data.n_groups)
    starts = np.concatenate([[0], np.cumsum(n)[:-1]])
    pos = starts[setup.code] + np.floor(rng.random(setup.code.size) * n[setup.code]).astype(np.int64)
    return setup.cells[pos]


def estimate_variance(
    adata: AnnData,
    *,
    perturbation_key: str = "perturbation",
    control_label: str | Sequence[str] = "NT",
    separator: str = "+",
    unassigned_label: str | Sequence[str] | None = "unassigned",
    batch_key: str | None,
    layer: str | None = None,
    counts: bool = True,
    dispersion: float | np.ndarray | pd.Series | None = None,
    n_splits: int = 20,
    min_cells: int = 2,
    random_state: int = 0,
) -> pd.DataFrame:
    r"""Per-gene variance terms of a screen's control cells (the estimators of :func:`error_decomposition`).

    Parameters
    ----------
    adata
        Pilot or screen with counts (not modified).
    perturbation_key, control_label, separator, unassigned_label, batch_key, layer, counts
        As in :func:`error_decomposition`.
    dispersion, n_splits, min_cells, random_state
        As in :func:`error_decomposition`.

    Returns
    -------
    DataFrame (genes x ``batch``, ``cell``, ``bio``, ``meas``, ``mean``) on the pseudobulk scale; ``mean`` is
    the control mean in counts per :math:`10^4` (plain mean for ``counts=False``). ``attrs`` holds
    ``n_batches_with_controls``, ``mean_library_size`` (controls, counts only) and ``n_controls``.

    Examples
    --------
    >>> var = estimate_variance(adata, batch_key="bio_rep")
    >>> var.loc[var["mean"] >= 1, ["batch", "cell"]].mean()
    """
    if n_splits < 1 or min_cells < 2:
        msg = f"n_splits ({n_splits}) must be >= 1 and min_cells ({min_cells}) >= 2."
        raise ValueError(msg)
    disp = _dispersion(dispersion, pd.Index(adata.var_names).astype(str))
    s = _setup(
        adata,
        perturbation_key=perturbation_key,
        control_label=control_label,
        separator=separator,
        unassigned_label=unassigned_label,
        batch_key=batch_key,
        layer=layer,
        counts=counts,
        conditions=[],
        min_cells=min_cells,
        require_perturbations=False,
    )
    rng = np.random.default_rng(random_state)
    st = _stats(s.data, s.cells, s.code, n_splits, rng, s.control_groups)
    var = _variance_terms(st, s.layout, s.data, disp)
    frame = pd.DataFrame({k: var[k] for k in ("batch", "cell", "bio", "meas", "mean")}, index=s.genes)
    frame.index.name = "gene"
    frame.attrs["n_batches_with_controls"] = len(var["batches_used"])
    frame.attrs["n_controls"] = int(st.n[: s.layout.n_batches].sum())
    if s.data.lib is not None:
        frame.attrs["mean_library_size"] = float(s.data.lib.mean())
    return frame


def error_decomposition(
    adata: AnnData,
    *,
    perturbation_key: str = "perturbation",
    control_label: str | Sequence[str] = "NT",
    separator: str = "+",
    unassigned_label: str | Sequence[str] | None = "unassigned",
    batch_key: str | None,
    layer: str | None = None,
    counts: bool = True,
    predictions: AnnData | None = None,
    conditions: Sequence[str] | None = None,
    target: Literal["delta", "expression"] = "delta",
    dispersion: float | np.ndarray | pd.Series | None = None,
    variance: Mapping[str, Any] | pd.DataFrame | None = None,
    n_splits: int = 20,
    n_bootstrap: int = 200,
    min_cells: int = 2,
    key_added: str = "error_decomposition",
    random_state: int = 0,
    copy: bool = False,
) -> pd.DataFrame | AnnData:
    r"""Decompose the error of perturbation effects (and of predictions) into noise, batch and model terms.

    The model (FRAMEWORK §6), per gene on the pseudobulk scale :math:`\bar y=\log(1+10^4\bar\rho)` of
    :func:`scmech.data.pseudobulk`: condition :math:`p` in batch :math:`b` from :math:`n_{p,b}` cells,

    .. math:: \bar y_{p,b} = \mu_p + \beta_b + \bar\epsilon_{p,b},\qquad
        \mathrm{Var}\,\beta_b = \sigma^2_{\mathrm{batch}},\qquad
        \mathrm{Var}\,\bar\epsilon_{p,b} = \sigma^2_{\mathrm{cell}}/n_{p,b}.

    **Variance terms** (from the control cells; per gene, returned in ``variance``):

    - :math:`\sigma^2_{\mathrm{cell}}` (= bio + meas), from within-batch half splits: each batch's
      controls are split at random into halves :math:`A, B` (``n_splits`` times) and

      .. math:: \hat\sigma^2_{\mathrm{cell},b} = \frac{1}{R}\sum_{r=1}^{R}
          \frac{(\bar y_{A_r} - \bar y_{B_r})^2}{1/n_{A} + 1/n_{B}},

      pooled over batches with weights :math:`n_b`. This reads the variance of the pseudobulk itself (log
      scale, library-size normalisation included), so a pseudobulk of :math:`n` cells varies by
      :math:`\sigma^2_{\mathrm{cell}}/n`. The same estimator on a perturbation's own cells gives its
      :math:`\sigma^2_{\mathrm{cell},p}` (escapers and variable knock-down make it larger than the
      controls'); conditions without a batch of 2 cells use the controls'.
    - :math:`\sigma^2_{\mathrm{batch}}`, method of moments over the :math:`B_c` batches with at least
      ``min_cells`` controls (per-batch control pseudobulks :math:`\bar y_{\varnothing,b}`):

      .. math:: \hat\sigma^2_{\mathrm{batch}} = \max\Big(0,\ \widehat{\mathrm{Var}}_b\,\bar y_{\varnothing,b}
          - \frac{1}{B_c}\sum_b \hat\sigma^2_{\mathrm{cell},b}/n_{\varnothing,b}\Big),

      the sample variance (ddof 1) of the batch means minus its expected sampling part
      (:math:`E[\widehat{\mathrm{Var}}] = s^2_\beta + \overline{\sigma^2/n}` for independent noise); it
      estimates the spread of the realised batches and needs :math:`B_c\ge 2` (else NaN).
    - :math:`\sigma^2_{\mathrm{meas}}` (``counts=True``), the expected sampling variance of
      :math:`z=10^4x/\ell` at each cell's library size, by the delta method
      (:math:`\partial\log(1+m)/\partial m = 1/(1+m)`) and unbiased moments of the counts:

      .. math:: \hat\sigma^2_{\mathrm{meas},b} = \frac{\overline{z\,10^4/\ell}
          + \big(\overline{z^2} - \overline{z\,10^4/\ell}\big)/(\theta+1)}{(1+\bar z_b)^2},

      since :math:`E[z\,10^4/\ell] = 10^8\rho/\ell` (Poisson variance) and
      :math:`E[z^2 - z\,10^4/\ell]/(\theta+1) = 10^8\rho^2/\theta` (negative-binomial excess); the second
      term only with ``dispersion`` :math:`\theta`. Without it, meas is the Poisson part, a lower bound:
      gamma-Poisson overdispersion cannot be told apart from biological heterogeneity in counts alone.
    - :math:`\sigma^2_{\mathrm{bio}}`, the rest of the per-cell variance on the same linearisation:
      :math:`\hat\sigma^2_{\mathrm{bio}} = \max\big(0,\ \widehat{\mathrm{Var}}_c(z)/(1+\bar z_b)^2
      - \hat\sigma^2_{\mathrm{meas},b}\big)` pooled over batches (weights :math:`n_b`). Its delta-method
      total :math:`\widehat{\mathrm{Var}}_c(z)/(1+\bar z)^2` agrees with the split estimate
      :math:`\hat\sigma^2_{\mathrm{cell}}` up to the linearisation, so bio + meas is close to, not exactly,
      cell; being a difference, bio is the least precise term.

    **Components** for perturbation :math:`p` with batch composition :math:`w_b = n_{p,b}/n_p` and control
    composition :math:`u_b = n_{\varnothing,b}/n_\varnothing`, pooled pseudobulks :math:`\bar y_p`,
    :math:`\bar y_\varnothing` over all their cells:

    ``target="delta"`` (effects :math:`\hat\Delta_p = \bar y_p - \bar y_\varnothing`):

    .. math:: E\big[(\hat\Delta_p-\Delta_p)^2\big] =
        \underbrace{\frac{\sigma^2_{\mathrm{cell},p}}{n_p}
        + \frac{\sigma^2_{\mathrm{cell},\varnothing}}{n_\varnothing}}_{\text{noise floor}}
        + \underbrace{\sigma^2_{\mathrm{batch}}\textstyle\sum_b (w_b - u_b)^2}_{\text{confounding}},

    zero confounding when perturbation and controls share their batch composition, :math:`2\sigma^2_{\mathrm{batch}}`
    for a perturbation alone in a batch without controls; ``batch`` is 0 (the difference to the controls removes
    the shared batch effect). With ``predictions`` (:math:`\hat y`), the prediction's effect
    :math:`\hat y_p - \hat y_\varnothing` (its own control row when it has one, else the observed
    :math:`\bar y_\varnothing`) is compared with :math:`\hat\Delta_p`; a model anchored to the observed controls
    meets exactly the two terms above on top of its own error.

    ``target="expression"`` (a batch-free prediction of :math:`\bar y_p` itself):

    .. math:: E\big[(\hat\mu_p - \bar y_p)^2\big] = \underbrace{\|\hat\mu_p-\mu_p\|^2}_{\text{model}}
        + \underbrace{\sigma^2_{\mathrm{batch}}\textstyle\sum_b w_b^2}_{\text{batch}}
        + \underbrace{\sigma^2_{\mathrm{cell},p}/n_p}_{\text{noise floor}},

    the batch term being :math:`\sigma^2_{\mathrm{batch}}` for data of one batch and
    :math:`\sigma^2_{\mathrm{batch}}/B` for cells spread evenly over :math:`B` batches; ``confounding`` is 0.

    ``total``: without predictions, the sum of the terms (the error an oracle meets: the floor set by the
    design); with predictions, the observed squared error, and ``model`` is defined as the **residual**
    ``total - noise_floor - confounding - batch``, so the components add up to the total exactly (per gene and
    for the gene means). A negative model error means the prediction is within the noise.

    Parameters
    ----------
    adata
        Screen with counts (or log-normalised values with ``counts=False``). Not modified, except for
        ``uns["scmech"][key_added]``.
    perturbation_key
        ``obs`` column of perturbation labels.
    control_label
        Label (or labels) of non-targeting controls.
    separator
        Separator of combinations.
    unassigned_label
        Label (or labels) of cells without a guide call (never used).
    batch_key
        ``obs`` column of the wet-lab batch (lane, replicate). ``None``: one batch (then
        :math:`\sigma^2_{\mathrm{batch}}` is not identifiable).
    layer
        Layer with the counts; ``X`` when ``None``.
    counts
        Whether the matrix holds counts. ``False``: log-normalised values, averaged as they are (no
        measurement/biological split).
    predictions
        An AnnData from ``model.predict(...)`` or a baseline: one row per condition, ``obs["perturbation"]``,
        ``X`` the predicted :math:`\log(1+10^4\bar\rho)`. Adds the ``model`` component; genes missing from it
        are left out.
    conditions
        Perturbations to decompose; all observed ones (with predictions: all predicted and observed ones)
        when ``None``.
    target
        ``"delta"``: errors of effects relative to the controls; ``"expression"``: errors of a batch-free
        expression prediction (see above).
    dispersion
        Negative-binomial inverse dispersion :math:`\theta` for the measurement variance: a scalar, an array with
        one value per gene of ``adata`` (``var_names`` order) or a Series indexed by gene name (aligned by name);
        Poisson when ``None``.
    variance
        Variance terms to use instead of the estimates, ``{"batch": ..., "cell": ...}`` (scalars or per-gene
        Series on the pseudobulk scale), e.g. :math:`\sigma^2_{\mathrm{batch}}` from a pilot when the controls
        sit in one batch. A given ``cell`` is used for every condition (instead of each condition's own
        estimate). Given terms are held fixed in the bootstrap.
    n_splits
        Random half splits per group for :math:`\sigma^2_{\mathrm{cell}}`, in the estimate and in every
        bootstrap replicate (fewer splits in the replicates would add their own Monte-Carlo noise and widen
        the intervals about twofold).
    n_bootstrap
        Bootstrap replicates for the intervals (cells resampled with replacement within each
        (condition, batch) group; the batches themselves are fixed, so the intervals do not include the
        uncertainty of :math:`\sigma^2_{\mathrm{batch}}` about a population of batches). ``0``: no intervals.
    min_cells
        Conditions with fewer cells are left out; batches with fewer controls do not enter
        :math:`\sigma^2_{\mathrm{batch}}`.
    key_added
        Key under ``adata.uns["scmech"]``.
    random_state
        Seed of the splits and the bootstrap.
    copy
        Work on and return a copy of ``adata``.

    Returns
    -------
    The tidy table (or, with ``copy=True``, the copy of ``adata``): one row per perturbation and component
    (``noise_floor``, ``confounding``, ``batch``, ``model`` with predictions, and ``total``) with columns
    ``condition``, ``component``, ``value`` (mean over genes), ``ci_low``, ``ci_high`` (2.5 and 97.5 %
    bootstrap percentiles), ``n_cells``, ``n_batches`` (batches holding the perturbation) and ``confounded``
    (its cells sit only in batches without controls).

    Writes ``adata.uns["scmech"][key_added]``, a dict with

    - ``"table"``: the table above;
    - ``"per_gene"``: DataFrame genes x components (mean over the perturbations);
    - ``"variance"``: DataFrame genes x ``batch``, ``cell``, ``bio``, ``meas``, ``mean`` (control mean, counts
      per :math:`10^4`);
    - ``"variance_summary"``: DataFrame (``batch``, ``cell``, ``bio``, ``meas``) x ``value``, ``ci_low``,
      ``ci_high``, ``n_genes``: means over genes with a control mean of at least 1 count per :math:`10^4`
      (all genes for ``counts=False``);
    - ``"params"``: the arguments and notes (batches without controls, dropped conditions).

    Examples
    --------
    >>> adata = scmech.datasets.papalexi2021()
    >>> table = error_decomposition(adata, batch_key="bio_rep", n_bootstrap=50)
    >>> table.pivot(index="condition", columns="component", values="value").head()
    >>> adata.uns["scmech"]["error_decomposition"]["variance_summary"]
    """
    if target not in ("delta", "expression"):
        msg = f"target={target!r} is not supported; use 'delta' (effects) or 'expression' (batch-free predictions)."
        raise ValueError(msg)
    if int(n_bootstrap) != n_bootstrap or n_bootstrap < 0:
        msg = f"n_bootstrap must be an integer >= 0, got {n_bootstrap!r}."
        raise ValueError(msg)
    if n_splits < 1:
        msg = f"n_splits must be >= 1, got {n_splits!r}."
        raise ValueError(msg)
    if min_cells < 2:
        msg = f"min_cells must be >= 2 (a pseudobulk variance needs two cells), got {min_cells!r}."
        raise ValueError(msg)
    if not isinstance(key_added, str) or not key_added:
        msg = f"key_added must be a non-empty string, got {key_added!r}."
        raise ValueError(msg)
    if batch_key is not None and batch_key not in adata.obs.columns:
        cols = list(adata.obs.columns)
        msg = (
            f"batch_key {batch_key!r} is not a column of adata.obs (columns: {cols[:12]}"
            f"{' ...' if len(cols) > 12 else ''}); pass the column with the wet-lab batch (lane, replicate)."
        )
        raise KeyError(msg)
    all_genes = pd.Index(adata.var_names).astype(str)
    genes = all_genes
    frame = None
    if predictions is not None:
        design0 = get_design(
            adata,
            perturbation_key,
            control_label,
            separator=separator,
            unassigned_label=unassigned_label,
            warn_missing_controls=False,
        ).perturbation
        frame = _prediction_frame(predictions, design0, all_genes)
        ctrl0 = design0.control_label
        observed = set(design0.labels[design0.fit_mask].tolist()) - {ctrl0}
        predicted = [c for c in frame.index if c != ctrl0]
        if conditions is None:
            conditions = [c for c in predicted if c in observed]
            if not conditions:
                msg = (
                    f"predictions share no perturbation with obs[{perturbation_key!r}] (predicted: {predicted[:5]}); "
                    "predict the observed perturbations."
                )
                raise ValueError(msg)
        else:
            wanted = [_canonical(c, design0) for c in ([conditions] if isinstance(conditions, str) else conditions)]
            missing = [c for c in wanted if c != ctrl0 and c not in frame.index]
            if missing:
                msg = f"Condition(s) {missing[:5]} are not in predictions; predict them or leave them out."
                raise ValueError(msg)
        genes = all_genes[all_genes.isin(frame.columns)]
        if len(genes) < len(all_genes):
            logger.warning("Decomposing on the %d of %d genes present in predictions.", len(genes), len(all_genes))
    disp = _dispersion(dispersion, genes, all_genes)
    override = _variance_override(variance, genes)
    s = _setup(
        adata,
        perturbation_key=perturbation_key,
        control_label=control_label,
        separator=separator,
        unassigned_label=unassigned_label,
        batch_key=batch_key,
        layer=layer,
        counts=counts,
        conditions=conditions,
        min_cells=min_cells,
        genes=genes,
    )
    lay = s.layout
    perts = lay.conditions[1:]
    pred = pred_ctrl = None
    if frame is not None:
        pred = frame.loc[perts, genes].to_numpy()
        ctrl = lay.conditions[0]
        pred_ctrl = frame.loc[ctrl, genes].to_numpy() if ctrl in frame.index else None

    rng_point, rng_boot = np.random.default_rng(random_state).spawn(2)

    def run(cells: np.ndarray, rng: np.random.Generator, splits: int):
        st = _stats(s.data, cells, s.code, splits, rng, s.control_groups)
        var = _variance_terms(st, lay, s.data, disp)
        var.update(override)
        comp = _components(st, lay, s.data, var, target, pred, pred_ctrl, cell_given="cell" in override)
        return st, var, comp

    st, var, comp = run(s.cells, rng_point, n_splits)
    expressed = var["mean"] >= VAR_MEAN_THRESHOLD if counts else np.ones(len(genes), dtype=bool)
    values = _summaries(comp)
    vsum = _variance_summary(var, expressed)
    boot_vals, boot_var = [], []
    for _ in range(int(n_bootstrap)):
        _, var_b, comp_b = run(_resample(s, rng_boot), rng_boot, n_splits)
        boot_vals.append(_summaries(comp_b))
        boot_var.append(_variance_summary(var_b, expressed))
    if boot_vals:
        lo, hi = _interval(values, np.stack(boot_vals))
        vlo, vhi = _interval(vsum, np.stack(boot_var))
        nonneg = np.array([c != "model" for c in [*[c for c in COMPONENTS if c in comp], "total"]])
        lo = np.where(nonneg[None, :], np.maximum(lo, 0.0), lo)
        vlo = np.maximum(vlo, 0.0)
    else:
        lo = hi = np.full_like(values, np.nan)
        vlo = vhi = np.full_like(vsum, np.nan)

    # design facts and messages
    n = lay.grid(st.n)
    n_ctrl_b = n[0]
    notes: list[str] = []
    confounded = np.array([bool(((n[i] > 0) & (n_ctrl_b == 0)).sum() == (n[i] > 0).sum()) for i in range(1, len(n))])
    used = var["batches_used"]
    key = batch_key if batch_key is not None else "<one batch>"
    if "batch" in override:
        notes.append("sigma2_batch taken from `variance`.")
    elif len(used) < 2:
        if lay.n_batches == 1:
            why = "there is only one batch"
        else:
            names = [lay.batches[i] for i in used]
            why = f"only {len(used)} batch(es) {names} of obs[{key!r}] hold >= {min_cells} control cells"
        conf_nan = [p for p, v in zip(perts, values[:, 1], strict=True) if np.isnan(v)]
        text = f"sigma2_batch is not identifiable: {why}; it is set to NaN. The noise floor is still given"
        if conf_nan and target == "delta":
            text += f"; confounding is NaN for {conf_nan[:10]}"
        if target == "expression":
            text += "; the batch term is NaN"
        text += ". Put controls in at least two batches, or pass variance={'batch': ...} from a pilot."
        notes.append(text)
        _warn(text)
    if s.no_control_batches:
        flagged = [p for p, c in zip(perts, confounded, strict=True) if c]
        text = (
            f"Batches {s.no_control_batches[:10]} of obs[{key!r}] hold no control cells: effects of perturbations "
            "there are confounded with the batch effect. Their confounding term uses sigma2_batch from the "
            f"{len(used)} batch(es) with controls. Perturbations only in batches without controls (flagged "
            f"`confounded`): {flagged[:10]}{' ...' if len(flagged) > 10 else ''}. Put controls in every batch."
        )
        notes.append(text)
        _warn(text)
    if s.dropped:
        notes.append(f"left out (fewer than {min_cells} cells): {s.dropped}")

    comps = [c for c in COMPONENTS if c in comp] + ["total"]
    n_p = n[1:].sum(axis=1)
    n_b = (n[1:] > 0).sum(axis=1)
    rows = []
    for i, p in enumerate(perts):
        for j, c in enumerate(comps):
            rows.append((p, c, values[i, j], lo[i, j], hi[i, j], int(n_p[i]), int(n_b[i]), bool(confounded[i])))
    table = pd.DataFrame(
        rows, columns=["condition", "component", "value", "ci_low", "ci_high", "n_cells", "n_batches", "confounded"]
    )
    per_gene = pd.DataFrame({c: comp[c].mean(axis=0) for c in comps}, index=pd.Index(genes, name="gene"))
    variance_df = pd.DataFrame(
        {k: np.asarray(var[k], dtype=np.float64) for k in ("batch", "cell", "bio", "meas", "mean")},
        index=pd.Index(genes, name="gene"),
    )
    variance_summary = pd.DataFrame(
        {"value": vsum, "ci_low": vlo, "ci_high": vhi, "n_genes": int(expressed.sum())},
        index=pd.Index(["batch", "cell", "bio", "meas"], name="term"),
    )
    params = {
        "perturbation_key": perturbation_key,
        "control_label": lay.conditions[0],
        "batch_key": batch_key if batch_key is not None else "",
        "layer": layer if layer is not None else "",
        "counts": bool(counts),
        "target": target,
        "predictions": predictions is not None,
        "dispersion": "nb" if disp is not None else "poisson",
        "variance_given": sorted(override),
        "n_splits": int(n_splits),
        "n_bootstrap": int(n_bootstrap),
        "min_cells": int(min_cells),
        "random_state": int(random_state),
        "batches": list(lay.batches),
        "batches_without_controls": list(s.no_control_batches),
        "batches_for_sigma2_batch": [lay.batches[i] for i in used],
        "controls_per_batch": [int(v) for v in n_ctrl_b],
        "dropped_conditions": list(s.dropped),
        "notes": notes,
    }
    adata = adata.copy() if copy else adata
    adata.uns.setdefault(SCMECH_ADATA_KEYS.UNS, {})[key_added] = {
        "table": table,
        "per_gene": per_gene,
        "variance": variance_df,
        "variance_summary": variance_summary,
        "params": params,
    }
    return adata if copy else table
