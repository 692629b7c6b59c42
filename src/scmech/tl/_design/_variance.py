r"""Variance terms for design calculations, from a pilot screen, a per-gene table or scalars.

Every design tool (:func:`~scmech.tl._design.power`, :func:`~scmech.tl._design.recommend_batches`) reads its
:math:`\sigma^2_{\mathrm{cell}}`, :math:`\sigma^2_{\mathrm{batch}}` (and, for the sequencing budget,
:math:`\sigma^2_{\mathrm{bio}}`, :math:`\sigma^2_{\mathrm{meas}}` and the pilot's depth) through
:func:`resolve_variance`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import pandas as pd

from scmech._constants import SCMECH_ADATA_KEYS
from scmech.tl._errors import VAR_MEAN_THRESHOLD, estimate_variance

if TYPE_CHECKING:
    from collections.abc import Mapping

    from anndata import AnnData


def _from_pilot(pilot: AnnData, pilot_kwargs: Mapping[str, Any] | None) -> tuple[pd.DataFrame, float | None]:
    """Per-gene variance table and depth (mean library size) of a pilot AnnData.

    The table is the stored error decomposition's ``"variance"`` when there is one and no ``pilot_kwargs``,
    else :func:`~scmech.tl._errors.estimate_variance` with ``pilot_kwargs`` (which must name ``batch_key``).
    """
    depth = None
    stored = pilot.uns.get(SCMECH_ADATA_KEYS.UNS, {}).get(SCMECH_ADATA_KEYS.ERRORS_UNS)
    kwargs = dict(pilot_kwargs or {})
    if stored is not None and not kwargs:
        per_gene = stored["variance"]
    else:
        if "batch_key" not in kwargs:
            msg = (
                "A pilot AnnData needs pilot_kwargs={'batch_key': ...} (and perturbation_key/control_label if "
                "they differ from the defaults), or run error_decomposition on it first."
            )
            raise KeyError(msg)
        per_gene = estimate_variance(pilot, **kwargs)
        depth = per_gene.attrs.get("mean_library_size")
    if depth is None:
        from scmech.data._pseudobulk import _get_matrix, library_size

        x = _get_matrix(pilot, kwargs.get("layer"))
        depth = float(library_size(x).mean()) if kwargs.get("counts", True) else None
    return per_gene, depth


def _scalar_term(d: dict[str, Any], key: str, what: str = "a variance on the pseudobulk scale") -> float:
    """Entry ``key`` of a variance dict as a float (NaN when absent or ``None``); refuse non-numbers and infinities."""
    v = d.get(key)
    if v is None:
        return np.nan
    try:
        out = float(v)
    except (TypeError, ValueError) as e:
        msg = f"variance[{key!r}] must be a number ({what}), got {v!r}."
        raise TypeError(msg) from e
    if np.isinf(out):
        msg = f"variance[{key!r}] is {out} (not finite); pass a finite number ({what})."
        raise ValueError(msg)
    return out


def _from_scalars(variance: Mapping[str, Any]) -> dict[str, Any]:
    """Check a dict of scalar terms; ``cell`` from ``bio + meas`` when it is missing (NaN: unknown)."""
    d = {str(k): v for k, v in variance.items()}
    unknown = sorted(set(d) - {"batch", "cell", "bio", "meas", "depth", "per_gene"})
    if unknown:
        msg = f"variance has unknown entries {unknown}; use 'batch', 'cell' (or 'bio' and 'meas') and 'depth'."
        raise KeyError(msg)
    out = {k: _scalar_term(d, k) for k in ("batch", "cell", "bio", "meas")}
    if np.isnan(out["cell"]) and not (np.isnan(out["bio"]) or np.isnan(out["meas"])):
        out["cell"] = out["bio"] + out["meas"]
    if np.isnan(out["cell"]):
        if d.get("cell") is not None:
            split = {k: d[k] for k in ("bio", "meas") if d.get(k) is not None}
            msg = (
                f"variance['cell'] is {d['cell']!r} (NaN, not finite){' and ' + str(split) if split else ''}: "
                "sigma2_cell is unknown. Pass a finite 'cell' (sigma2_bio + sigma2_meas), or finite 'bio' and 'meas'."
            )
            raise ValueError(msg)
        msg = "variance needs 'cell' (sigma2_bio + sigma2_meas) or both 'bio' and 'meas'."
        raise KeyError(msg)
    if any(v < 0 for v in out.values() if not np.isnan(v)):
        msg = f"variance terms must be >= 0, got {out}."
        raise ValueError(msg)
    depth = _scalar_term(d, "depth", "reads or UMIs per cell of the pilot")
    if d.get("depth") is not None and not depth > 0:
        msg = (
            f"variance['depth'] must be a number > 0 (reads or UMIs per cell of the pilot), got {d['depth']!r}; "
            "leave it out when unknown."
        )
        raise ValueError(msg)
    out["depth"] = None if np.isnan(depth) else depth
    per = d.get("per_gene")
    out["per_gene"] = per if isinstance(per, pd.DataFrame) else None
    return out


def _batch_term(sigma2_batch: float | np.ndarray, batch_factor: float | np.ndarray) -> np.ndarray:
    r"""Compute the batch term :math:`\sigma^2_{\mathrm{batch}}F` of an effect's error.

    Exactly 0 where :math:`F = 0` (perturbation and controls share their batches in the same proportions, so
    the batch effects cancel whatever their variance), NaN where :math:`F > 0` and :math:`\sigma^2_{\mathrm{batch}}`
    is unknown (NaN).
    """
    sb = np.asarray(sigma2_batch, dtype=float)
    f = np.asarray(batch_factor, dtype=float)
    with np.errstate(invalid="ignore"):
        return np.where(f == 0, 0.0, sb * f)


def _unknown_batch_message(var: Mapping[str, Any], consequence: str, fix: str) -> str:
    """Warning text for an unknown (NaN) batch variance: why it is unknown, what is NaN (``consequence``), ``fix``."""
    pg = var.get("per_gene")
    n = pg.attrs.get("n_batches_with_controls") if isinstance(pg, pd.DataFrame) else None
    if n is not None and n < 2:
        why = (
            f"the pilot has controls in {n} batch{'' if n == 1 else 'es'} (with at least min_cells controls), so the "
            "batch variance cannot be estimated"
        )
    elif isinstance(pg, pd.DataFrame):
        why = (
            "the variance table has no finite 'batch' (a pilot with controls in a single batch cannot estimate the "
            "batch variance)"
        )
    else:
        why = "the variance terms give no 'batch'"
    return (
        f"sigma2_batch is unknown (NaN): {why}. The batch term sigma2_batch * batch_factor is needed where "
        f"batch_factor > 0, so {consequence} are NaN. Pass the batch variance, {fix}, or a pilot with controls in "
        ">= 2 batches; where batch_factor = 0 (perturbation and controls spread evenly over the same batches) no "
        "batch variance is needed."
    )


def _summarise_table(per_gene: pd.DataFrame, depth: float | None) -> dict[str, Any]:
    """Scalar terms of a per-gene table: means over expressed genes (all genes when none is, or no ``mean``).

    The table's terms are checked as the scalars are (:func:`_from_scalars`): numbers, not negative and not
    infinite; a gene's NaN (a term not estimated there) is left out of the mean, and a ``cell`` column without
    any value is refused.
    """
    if "cell" not in per_gene.columns:
        msg = f"The variance table needs a 'cell' column (columns: {list(per_gene.columns)})."
        raise KeyError(msg)
    terms = {}
    for k in ("batch", "cell", "bio", "meas", "mean"):
        if k in per_gene.columns:
            terms[k] = _table_column(per_gene, k)
    if np.isnan(terms["cell"]).all():
        msg = (
            "The variance table's 'cell' column has no value (all NaN): sigma2_cell is unknown. Pass the 'variance' "
            "table of error_decomposition or estimate_variance, or a dict of scalars."
        )
        raise ValueError(msg)
    sel = np.ones(len(per_gene), dtype=bool)
    if "mean" in terms:
        sel = terms["mean"] >= VAR_MEAN_THRESHOLD
        if not sel.any():
            sel = np.ones(len(per_gene), dtype=bool)
    out = {}
    for k in ("batch", "cell", "bio", "meas"):
        v = terms[k][sel] if k in terms else np.full(1, np.nan)
        out[k] = float(np.nanmean(v)) if np.isfinite(v).any() else np.nan
    out["depth"] = depth
    out["per_gene"] = per_gene
    return out


def _table_column(per_gene: pd.DataFrame, key: str) -> np.ndarray:
    """Column ``key`` of a per-gene variance table as floats, refused when not numeric or infinite.

    The variance terms must also be >= 0; ``mean`` (the control mean, negative for scaled log-normalised data) need
    not.
    """
    try:
        v = pd.to_numeric(per_gene[key], errors="raise").to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as e:
        msg = f"The variance table's {key!r} column is not numeric ({e}); pass variances as numbers."
        raise TypeError(msg) from e
    bad = np.isinf(v) | ((v < 0) if key != "mean" else False)
    if bad.any():
        genes = list(per_gene.index[bad][:5])
        what = "infinite" if key == "mean" else "negative or infinite"
        need = "finite" if key == "mean" else "finite and >= 0"
        msg = (
            f"The variance table's {key!r} column has {int(bad.sum())} {what} value(s) (genes {genes}); it must be "
            f"{need}. Fix or drop those genes."
        )
        raise ValueError(msg)
    return v


def resolve_variance(
    pilot_or_variance: AnnData | Mapping[str, Any] | pd.DataFrame | None,
    *,
    pilot_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    r"""Variance terms for design calculations from a pilot, a per-gene table or scalars.

    Parameters
    ----------
    pilot_or_variance
        - an AnnData pilot: the ``"variance"`` of an :func:`~scmech.tl._errors.error_decomposition` stored in
          ``uns["scmech"]["error_decomposition"]`` when present, else
          :func:`~scmech.tl._errors.estimate_variance` with ``pilot_kwargs`` (which must name the
          ``batch_key``);
        - a DataFrame (genes x ``batch``, ``cell``, optionally ``bio``, ``meas``, ``mean``), e.g. that
          ``"variance"`` entry;
        - a dict of scalars: ``batch`` and either ``cell`` or ``bio`` and ``meas``; optionally ``depth`` (the
          pilot's reads, or UMIs, per cell) and ``per_gene`` (a per-gene table), e.g. the output of this function.
    pilot_kwargs
        Keyword arguments of :func:`~scmech.tl._errors.estimate_variance` for an AnnData pilot.

    Returns
    -------
    Dict with scalars ``batch``, ``cell``, ``bio``, ``meas`` (NaN where unknown; means over genes with a
    control mean of at least 1 count per :math:`10^4` when the table has a ``mean`` column), ``depth``
    (mean library size of the pilot's controls, or ``None``) and ``per_gene`` (the table, or ``None``).
    """
    if isinstance(pilot_or_variance, ad.AnnData):
        per_gene, depth = _from_pilot(pilot_or_variance, pilot_kwargs)
    elif isinstance(pilot_or_variance, pd.DataFrame):
        per_gene = pilot_or_variance
        depth = per_gene.attrs.get("mean_library_size")
    elif pilot_or_variance is not None and hasattr(pilot_or_variance, "items"):
        return _from_scalars(pilot_or_variance)
    else:
        msg = (
            "Pass a pilot AnnData, a per-gene variance DataFrame (error_decomposition's 'variance') or a dict "
            f"{{'batch': ..., 'cell': ...}}; got {type(pilot_or_variance).__name__}."
        )
        raise TypeError(msg)
    return _summarise_table(per_gene, depth)
