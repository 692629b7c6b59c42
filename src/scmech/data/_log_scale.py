r"""The logarithm of log-normalised input: its base, and the expression a prediction on that scale stands for.

scanpy's :func:`scanpy.pp.log1p` writes :math:`\log_b(1 + x)` and records the base in ``uns["log1p"]["base"]``
(``None``: the natural logarithm). Counts are log-normalised by scmech itself, always with the natural logarithm
(:math:`\log(1 + 10^4 \bar\rho)`, :func:`scmech.data.pseudobulk`); log-normalised input keeps its own base, and
every place that turns a level back into an expression (a knock-down that scales it, the ``"expression"`` layer
of a prediction) reads it here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["expression_of", "log1p_base", "value_description"]


def log1p_base(adata: AnnData, where: str = "adata") -> float:
    r"""Return the base of the logarithm ``adata``'s values were log-normalised with (:math:`e` unless recorded).

    Read from ``adata.uns["log1p"]["base"]``, where :func:`scanpy.pp.log1p` records it; ``None``, a missing
    entry (also what an ``.h5ad`` round trip leaves of ``None``) and no ``uns["log1p"]`` mean the natural
    logarithm.

    Parameters
    ----------
    adata
        The AnnData holding the registered values (for a MuData, its RNA modality).
    where
        How to name ``adata`` in an error.

    Raises
    ------
    ValueError
        When ``uns["log1p"]`` is not a mapping, or its ``"base"`` is not a finite number above 0 other than 1.
    """
    entry = getattr(adata, "uns", {}).get("log1p")
    if entry is None:
        return math.e
    if not isinstance(entry, Mapping):
        msg = (
            f"{where}.uns['log1p'] is a {type(entry).__name__}, not the dict scanpy's sc.pp.log1p writes "
            "({'base': None} for the natural logarithm, {'base': 2} for log2). Set it to that dict, or delete it "
            "if the values are not log-normalised."
        )
        raise ValueError(msg)
    base = entry.get("base")
    if base is None:
        return math.e
    number = np.asarray(base)
    # a number (int, float, numpy scalar, or the 0-d array h5py reads back), never a string or a bool
    numeric = number.ndim == 0 and number.dtype.kind in "iuf"
    value = float(number.item()) if numeric else float("nan")
    if not math.isfinite(value) or value <= 0 or value == 1:
        msg = (
            f"{where}.uns['log1p']['base'] is {base!r}: the base of a logarithm must be a finite number above 0 "
            "other than 1. Set it to the base the values were log-normalised with (None for the natural "
            "logarithm, as sc.pp.log1p records it)."
        )
        raise ValueError(msg)
    return value


def expression_of(logx: np.ndarray, base: float = math.e) -> np.ndarray:
    r"""Expression :math:`b^{x} - 1` of values :math:`x = \log_b(1 + \text{expression})`, as float32.

    ``torch.expm1`` is used because it is vectorised across threads, unlike :func:`numpy.expm1`, which matters for
    genome-scale prediction matrices.
    """
    x = torch.from_numpy(np.ascontiguousarray(logx, dtype=np.float32))
    if base != math.e:
        x = x * math.log(base)
    return x.expm1().numpy()


def value_description(counts: bool, base: float | None) -> str:
    r"""Describe the values of a prediction, for its provenance (``uns["scmech"]["prediction"]["value"]``).

    Parameters
    ----------
    counts
        Whether the model was registered on counts (its values are :math:`\log(1 + 10^4 \bar\rho)`).
    base
        For log-normalised input, the base of its logarithm when it is :math:`\log_b(1 + x)` of an expression,
        ``None`` for other values (centred or scaled).
    """
    if counts:
        return "log1p(1e4 * mean normalised expression)"
    if base is None:
        return "the registered values (centred or scaled: no expression layer)"
    name = "e" if base == math.e else f"{base:g}"
    return f"the registered log-normalised values, log_b(1 + expression) with base b = {name}"
