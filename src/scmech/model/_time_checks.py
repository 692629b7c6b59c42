"""Checks of the times of a dynamic model: the registered read-out and switch times, and the requested ones."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np

from scmech._constants import SCMECH_REGISTRY_KEYS

if TYPE_CHECKING:
    from ._protocols import Protocol

__all__ = ["check_registered_times", "warn_extrapolated_times"]

K = SCMECH_REGISTRY_KEYS


def _registered(manager, registry_key: str) -> np.ndarray | None:
    """Values of a registered numeric ``obs`` field as float64, or ``None`` when it is not registered."""
    if registry_key not in manager.data_registry:
        return None
    return np.asarray(manager.get_from_registry(registry_key), dtype=np.float64).ravel()


def check_registered_times(manager) -> None:
    """Refuse registered times a dynamic model cannot learn from, or would read out in another medium.

    Parameters
    ----------
    manager
        The model's :class:`~scvi.data.AnnDataManager`.

    Raises
    ------
    ValueError
        When no time key is registered; when every cell is read out at time 0 (a perturbation has had no time to
        act, so the dynamic regime has nothing to learn of it); or when cells were read out before their medium
        switch (``media_time > time``): at read-out they were not yet in the medium they are labelled with.
    """
    setup = manager.registry["setup_args"]
    time = _registered(manager, K.TIME_KEY)
    if time is None:
        msg = "regime='dynamic' needs a time key: register it with setup_anndata(..., time_key=...)."
        raise ValueError(msg)
    time_key = setup.get("time_key")
    if len(time) and not (time > 0).any():
        msg = (
            f"obs[{time_key!r}] is 0 for every cell: in the dynamic regime a perturbation acts from time 0, so cells "
            "read out at 0 carry no perturbation effect to learn. Register the read-out times since perturbation, "
            "or fit their steady states with regime='steady_state' (or setup_anndata without time_key)."
        )
        raise ValueError(msg)
    switch = _registered(manager, K.MEDIA_TIME_KEY)
    if switch is None:
        return
    early = np.isfinite(switch) & (switch > time)
    if early.any():
        i = int(np.flatnonzero(early)[0])
        msg = (
            f"{int(early.sum())} cells have obs[{setup.get('media_time_key')!r}] after obs[{time_key!r}] (e.g. cell "
            f"{i}: switch at {switch[i]:g}, read out at {time[i]:g}): they were read out before their medium switch, "
            f"so they were not in the medium obs[{setup.get('media_key')!r}] names. Give those cells the medium they "
            "were in at read-out and a NaN switch time."
        )
        raise ValueError(msg)


def warn_extrapolated_times(requested: list[Protocol], longest: float) -> None:
    """Warn when requested read-out or switch times lie beyond the longest time the model was trained on.

    Parameters
    ----------
    requested
        The requested protocols.
    longest
        Longest registered read-out time (or switch time, in magnitude) of the training cells, in the data's
        time units.
    """
    if not np.isfinite(longest) or longest <= 0:
        return
    limit = longest * (1 + 1e-6)
    times = sorted({p.time for p in requested if p.time > limit})
    switches = sorted({p.media_time for p in requested if np.isfinite(p.media_time) and abs(p.media_time) > limit})
    if not times and not switches:
        return
    asked = ", ".join([f"time={t:g}" for t in times[:5]] + [f"media_time={s:g}" for s in switches[:5]])
    msg = (
        f"{asked} lies beyond the training times (up to {longest:g} in the units of the registered time key): the "
        "prediction extrapolates the learned dynamics past the observed window and is not checked against data."
    )
    warnings.warn(msg, UserWarning, stacklevel=3)
