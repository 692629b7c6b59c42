"""Per-cell knock-down estimate from the unique-attractor mixture, written to ``obs`` as an efficacy column."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from scmech._constants import SCMECH_ADATA_KEYS
from scmech.tl._seeds import check_random_state, resolved_seed

from ._data import _prepare
from ._registry import _rngs
from ._unique_attractor import _mixture_checks
from ._validation import _validate_flags, _validate_key_added, _validate_target

if TYPE_CHECKING:
    from anndata import AnnData


def estimate_efficacy(
    adata: AnnData,
    *,
    perturbation_key: str = "perturbation",
    control_label: str = "NT",
    separator: str = "+",
    unassigned_label: str | None = "unassigned",
    batch_key: str | None = None,
    time_key: str | None = None,
    media_key: str | None = None,
    layer: str | None = None,
    counts: bool = True,
    key_added: str = SCMECH_ADATA_KEYS.EFFICACY_OBS,
    random_state: int | None = 0,
    copy: bool = False,
) -> pd.Series | AnnData:
    r"""Per-cell knock-down estimate: the posterior probability of being perturbed (0 = escaper).

    Runs the unique-attractor mixture of :func:`check_assumptions` (cross-fitted projection on each
    perturbation's direction; control-fixed two-component mixture) and writes each perturbed cell's
    posterior :math:`P(\text{perturbed}\mid z_c)`, so that the column can be registered as ``efficacy_key`` of
    :meth:`~scmech.model.SemiMechVI.setup_anndata`. It is a probability of belonging to the responding
    population, not a graded knock-down: partial responders get intermediate values.

    Cells of perturbations that cannot be tested (fewer than 20 cells, or a shift of less than one control SD,
    where escapers and responders overlap) get 1, the model's default of a full effect; control and
    unassigned cells get 0.

    Parameters
    ----------
    adata
        Annotated data matrix with raw counts in ``X`` (or ``layer``).
    perturbation_key, control_label, separator, unassigned_label, batch_key, time_key, media_key, layer, counts
        As in :func:`check_assumptions`.
    key_added
        ``obs`` column to write; not one of the columns read (``perturbation_key``, ``batch_key``, ...).
    random_state
        Seed of the cross-fitting split (a non-negative integer); ``None`` uses ``scvi.settings.seed`` (a fresh
        seed when that is ``None`` too).
    copy
        Return a copy of ``adata`` instead of writing into ``adata``.

    Returns
    -------
    The efficacy per cell (a Series indexed by ``obs_names``) when ``copy=False``, else the copy of ``adata``.
    Writes ``adata.obs[key_added]`` (``float64`` in :math:`[0, 1]`) and nothing else.

    Examples
    --------
    >>> efficacy = scmech.tl.estimate_efficacy(adata, batch_key="bio_rep")
    >>> scmech.model.SemiMechVI.setup_anndata(adata, batch_key="bio_rep", efficacy_key="scmech_efficacy")
    """
    _validate_target(adata, key_added, copy, "adata.obs")
    _validate_flags(counts=counts, copy=copy)
    read = {"perturbation_key": perturbation_key, "batch_key": batch_key, "time_key": time_key}
    _validate_key_added(key_added, {**read, "media_key": media_key})
    check_random_state(random_state)
    data = _prepare(
        adata,
        perturbation_key=perturbation_key,
        control_label=control_label,
        separator=separator,
        unassigned_label=unassigned_label,
        batch_key=batch_key,
        time_key=time_key,
        media_key=media_key,
        layer=layer,
        counts=counts,
    )
    # the generator of the unique-attractor check of check_assumptions(random_state=random_state), so that the
    # cross-fitting splits, and so the posteriors, are the same
    mixtures = _mixture_checks(data, _rngs(resolved_seed(random_state))["unique_attractor"], 1, 0.05)
    pert = data.design.perturbation
    eff = np.where(pert.fit_mask & ~pert.is_control, 1.0, 0.0)
    for m in mixtures:
        if m.posterior is not None:
            eff[m.cells] = m.posterior
    eff = np.clip(eff, 0.0, 1.0)
    series = pd.Series(eff, index=adata.obs_names.copy(), name=key_added, dtype=np.float64)
    adata = adata.copy() if copy else adata
    adata.obs[key_added] = series.to_numpy()
    return adata if copy else series
