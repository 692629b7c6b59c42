"""Checks of the arguments of :func:`~scmech.tl.check_assumptions` and :func:`~scmech.tl.estimate_efficacy`."""

from __future__ import annotations

from typing import Any

import anndata as ad
import numpy as np

from scmech._numbers import check_flag, check_positive_int
from scmech.data._checks import check_expression

#: at most this many resamples per test (p-values and intervals are stable from a few hundred)
_MAX_BOOTSTRAP = 10_000
#: at most this many resampled cell labels (n_bootstrap x cells) are held in memory by one test
_MAX_RESAMPLED_CELLS = 2_000_000_000


def _validate_common(n_bootstrap: int, alpha: float) -> None:
    """Refuse a non-positive or huge ``n_bootstrap``, an ``alpha`` outside (0, 1), or too few resamples for ``alpha``.

    Raises
    ------
    ValueError
        With the value to pass instead.
    """
    check_positive_int(n_bootstrap, "n_bootstrap", hint=", e.g. n_bootstrap=200")
    if n_bootstrap > _MAX_BOOTSTRAP:
        msg = (
            f"n_bootstrap={n_bootstrap} is too large: use n_bootstrap <= {_MAX_BOOTSTRAP} (200 to 2000 give stable "
            "intervals and p-values)."
        )
        raise ValueError(msg)
    if isinstance(alpha, bool) or not isinstance(alpha, float | int | np.floating) or not 0.0 < float(alpha) < 1.0:
        msg = f"alpha={alpha!r} must be a number in (0, 1), e.g. alpha=0.05."
        raise ValueError(msg)
    # the smallest resampling p-value 1 / (n_bootstrap + 1) must fall strictly below alpha (verdicts need p < alpha)
    need = int(np.floor(1.0 / float(alpha) - 1.0 + 1e-9)) + 1
    if n_bootstrap < need:
        fix = (
            f"Use n_bootstrap >= {need} (200 or more for stable intervals)."
            if need <= _MAX_BOOTSTRAP
            else f"n_bootstrap is at most {_MAX_BOOTSTRAP}: use alpha > {1 / (_MAX_BOOTSTRAP + 1):.2g}, e.g. 0.001."
        )
        msg = (
            f"n_bootstrap={n_bootstrap} cannot give a p-value below alpha={alpha:g}: the smallest resampling "
            f"p-value is 1 / (n_bootstrap + 1). {fix}"
        )
        raise ValueError(msg)


def _validate_target(adata: ad.AnnData, key_added: str, copy: bool, where: str) -> None:
    """Refuse a non-AnnData, an empty ``key_added``, or a view that would be written into (``copy=False``).

    Raises
    ------
    TypeError
        When ``adata`` is not an AnnData.
    ValueError
        For an empty key or a view.
    """
    if not isinstance(adata, ad.AnnData):
        msg = f"adata must be an AnnData, got {type(adata).__name__}."
        raise TypeError(msg)
    if not isinstance(key_added, str) or not key_added:
        msg = f"key_added={key_added!r} must be a non-empty string (the {where} key to write)."
        raise ValueError(msg)
    if adata.is_view and not copy:
        msg = (
            f"adata is a view ({adata.n_obs} x {adata.n_vars}); writing {where}[{key_added!r}] would silently "
            "copy it. Pass adata.copy() or copy=True."
        )
        raise ValueError(msg)


def _validate_model(model: Any | None) -> None:
    """Refuse a model without ``get_steady_state_residual`` (``None`` is accepted).

    Raises
    ------
    TypeError
        With what to pass instead.
    """
    if model is not None and not hasattr(model, "get_steady_state_residual"):
        msg = (
            f"model={type(model).__name__} is not a trained scmech.model.SemiMechVI; pass one set up on adata, "
            "or model=None for the data checks only."
        )
        raise TypeError(msg)


def _validate_flags(**flags: Any) -> None:
    """Refuse a flag (``counts``, ``copy``) that is not a bool: ``counts="no"`` would count as ``True``.

    Raises
    ------
    TypeError
        Naming the flag and its value.
    """
    for name, value in flags.items():
        check_flag(value, name)


def _validate_resample_size(n_bootstrap: int, n_cells: int) -> None:
    """Refuse an ``n_bootstrap`` whose resamples of ``n_cells`` cells would not fit in memory.

    Raises
    ------
    ValueError
        With the largest ``n_bootstrap`` that fits.
    """
    cap = max(_MAX_RESAMPLED_CELLS // max(n_cells, 1), 1)
    if n_bootstrap > cap:
        msg = (
            f"n_bootstrap={n_bootstrap} is too large: each test holds n_bootstrap resamples of the {n_cells} cells "
            f"in memory. Use n_bootstrap <= {cap} (200 to 2000 give stable intervals and p-values)."
        )
        raise ValueError(msg)


def _validate_key_added(key_added: str, read: dict[str, str | None]) -> None:
    """Refuse a ``key_added`` that names an ``obs`` column the call reads: it would be overwritten.

    Parameters
    ----------
    key_added
        The ``obs`` column to write.
    read
        Argument name -> ``obs`` column read by the call (``None`` when not given).

    Raises
    ------
    ValueError
        Naming the argument whose column would be overwritten.
    """
    for arg, key in read.items():
        if key is not None and key == key_added:
            msg = (
                f"key_added={key_added!r} is also {arg}: writing the efficacy there would overwrite the column "
                f"that is read. Pass another key_added, e.g. key_added='scmech_efficacy'."
            )
            raise ValueError(msg)


def _check_raw_counts(x: Any, where: str, counts: bool, needs: str) -> None:
    """Refuse NaN or infinite values and, with ``counts``, values that are not raw counts, saying why they are needed.

    Parameters
    ----------
    x
        The matrix the tool reads.
    where
        Where it comes from (``"adata.X"``, ``"adata.layers['counts']"``), for messages.
    counts
        Whether the tool reads raw counts.
    needs
        Why the tool needs raw counts, a sentence put before the fix.
    """
    try:
        check_expression(x, where, counts=counts)
    except ValueError as e:
        if not counts or "NaN" in str(e):
            raise
        what = str(e).split(" Register")[0].strip()
        fix = "pass the layer that holds them (layer='counts'), or counts=False for log-normalised values."
        msg = f"{what} {needs}: {fix}"
        raise ValueError(msg) from e
