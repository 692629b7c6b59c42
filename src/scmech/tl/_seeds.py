"""Seeds of the tools: the checks of ``random_state`` and the seed a run uses when it is ``None``."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["check_random_state", "check_seed", "default_seed", "resolved_seed"]


def check_seed(random_state: Any, name: str = "random_state", *, allow_none: bool = True) -> None:
    """Refuse a seed that :func:`numpy.random.default_rng` cannot take (anything but ``None`` or an integer >= 0).

    The check of the scoring, error and design tools: a value that is not an integer raises ``TypeError``.

    Parameters
    ----------
    random_state
        The seed.
    name
        Argument name for the message.
    allow_none
        Let ``None`` through (the tool then draws from ``scvi.settings.seed`` or a fresh stream).

    Raises
    ------
    TypeError
        For a value that is not an integer (``True``, ``1.5``, ``"0"``).
    ValueError
        For a negative integer.
    """
    if random_state is None and allow_none:
        return
    if isinstance(random_state, bool) or not isinstance(random_state, int | np.integer) or random_state < 0:
        alt = " (or None)" if allow_none else ""
        msg = f"{name}={random_state!r} must be a non-negative integer seed{alt}, e.g. {name}=0."
        raise TypeError(msg) if not isinstance(random_state, int | np.integer) else ValueError(msg)


def check_random_state(random_state: Any) -> None:
    """Refuse a ``random_state`` that is not a non-negative integer or ``None``, always with ``ValueError``.

    The check of :func:`~scmech.tl.split`, :func:`~scmech.tl.leave_one_out`, :func:`~scmech.tl.check_assumptions`,
    :func:`~scmech.tl.estimate_efficacy` and the Mixscape tool, whose documented error for any bad seed is a
    ``ValueError``; :func:`check_seed` raises ``TypeError`` for a non-integer instead.

    Parameters
    ----------
    random_state
        The seed.

    Raises
    ------
    ValueError
        For anything but ``None`` or an integer >= 0 (``True`` included).
    """
    ok = random_state is None or (
        isinstance(random_state, int | np.integer) and not isinstance(random_state, bool) and random_state >= 0
    )
    if not ok:
        msg = (
            f"random_state={random_state!r} must be a non-negative integer seed (e.g. random_state=0) or None "
            "(scvi.settings.seed)."
        )
        raise ValueError(msg)


def default_seed(random_state: int | None) -> int | None:
    """Return the seed of the random choices: ``random_state``, or ``scvi.settings.seed`` when it is ``None``.

    Parameters
    ----------
    random_state
        A checked seed, or ``None``.

    Returns
    -------
    The seed (``None`` when neither is set).
    """
    if random_state is not None:
        return int(random_state)
    from scvi import settings

    return settings.seed


def resolved_seed(random_state: int | None) -> int:
    """Return the seed of a run: ``random_state``, else ``scvi.settings.seed``, else a fresh one (recorded).

    Parameters
    ----------
    random_state
        A seed that passed :func:`check_random_state`, or ``None``.

    Returns
    -------
    The seed, always an integer, so that the run can record it.
    """
    seed = default_seed(random_state)
    return int(seed) if seed is not None else int(np.random.SeedSequence().generate_state(1)[0])
