"""The parts of a prediction's context and the ``setup_anndata`` arguments naming their obs columns.

``predict`` writes a row's context into its ``obs`` (``batch``, ``media``, ``time``, ``media_time``) and the obs
columns the model was registered with into its provenance (:func:`context_keys`), so that
:func:`scmech.tl.evaluate` scores it against the cells observed in that context.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["CONTEXT_FIELDS", "context_keys"]

#: context columns of a prediction's ``obs`` and the ``setup_anndata`` argument naming each one's obs column
CONTEXT_FIELDS = {"batch": "batch_key", "media": "media_key", "time": "time_key", "media_time": "media_time_key"}


def context_keys(setup_args: Mapping[str, Any]) -> dict[str, str | None]:
    """Return the obs column a model was registered with for each context field (its ``setup_anndata`` arguments).

    Parameters
    ----------
    setup_args
        The model's registered ``setup_anndata`` arguments.

    Returns
    -------
    ``{"batch_key": ..., "media_key": ..., "time_key": ..., "media_time_key": ...}`` (``None`` where not registered).
    """
    return {arg: (None if setup_args.get(arg) is None else str(setup_args[arg])) for arg in CONTEXT_FIELDS.values()}
