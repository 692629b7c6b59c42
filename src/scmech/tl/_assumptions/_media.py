"""No media response: control cells are the same in every medium.

Control cells are compared across media with the stratified F of :mod:`._ftest`, within each time point and
batch; ``"violated"`` means that a model that ignores the medium is wrong for the controls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ._ftest import _comparable_strata, _f_test
from ._registry import _MIN_CELLS, HOLDS, VIOLATED, _cannot, _row, _time_label
from ._stats import _drop_small

if TYPE_CHECKING:
    from ._data import _Data

_A = "media_response"


def _check_media(
    data: _Data, keys: dict[str, str | None], rng: np.random.Generator, n_resamples: int, alpha: float
) -> list[dict[str, Any]]:
    """Compare control cells across media: the row of the media-response check.

    Parameters
    ----------
    data
        The screen.
    keys
        The ``obs`` keys of the design (unused; the same signature as the other checks).
    rng
        Generator of the permutations and bootstrap resamples.
    n_resamples
        Number of permutations and of bootstrap resamples.
    alpha
        Significance level; the interval covers ``1 - alpha``.

    Returns
    -------
    A list with the one result row.
    """
    ctrl = data.design.perturbation.is_control
    if data.media is None:
        return [_row(_A, "controls", verdict=_cannot("no media_key given"), n_cells=int(ctrl.sum()))]
    media = sorted(pd.unique(data.media[ctrl]).tolist(), key=str)
    subject = "controls across media"
    if len(media) < 2:
        why = f"controls in only one medium ({media[0] if media else 'none'})"
        return [_row(_A, subject, verdict=_cannot(why), n_cells=int(ctrl.sum()))]
    sel = np.flatnonzero(ctrl)
    group = data.media[sel]
    stratum = _strata(data, sel)
    keep, _ = _drop_small(pd.Series(group).astype(str) + "#" + pd.Series(stratum).astype(str), _MIN_CELLS)
    cells, group, stratum = sel[keep], group[keep], np.asarray(stratum)[keep]
    use = _comparable_strata(group, stratum)
    if not use.any():
        why = "no time point or batch holds controls (>= 10 cells) in two media: media are confounded with them"
        return [_row(_A, subject, verdict=_cannot(why), n_cells=int(ctrl.sum()))]
    cells, group, stratum = cells[use], group[use], stratum[use]
    f, lo, hi, p = _f_test(data, cells, group, stratum, rng, n_resamples, alpha)
    within = " and ".join(
        w for w, on in (("time point", data.time is not None), ("batch", data.batch is not None)) if on
    )
    used = sorted(pd.unique(group).tolist(), key=str)
    detail = f"controls compared across media {', '.join(map(str, used))}"
    if within:
        detail += f" within each {within}"
    detail += "; F = 1 when they differ by sampling noise only"
    verdict = VIOLATED if p < alpha and lo > 1.0 else HOLDS
    return [
        _row(
            _A, subject, effect=f, ci_low=lo, ci_high=hi, p_value=p, n_cells=len(cells), verdict=verdict, detail=detail
        )
    ]


def _strata(data: _Data, sel: np.ndarray) -> np.ndarray:
    """Stratum of each selected cell: its time point and batch joined by ``|`` (zeros when there are neither)."""
    parts = []
    if data.time is not None:
        parts.append(np.array([_time_label(t) for t in data.time[sel]], dtype=object))
    if data.batch is not None:
        parts.append(data.batch[sel])
    if not parts:
        return np.zeros(len(sel), dtype=int)
    return np.array(["|".join(str(p[i]) for p in parts) for i in range(len(sel))], dtype=object)
