""":func:`assign_guides`: argument checks, then reading the counts and targets, assigning and writing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

from scmech._constants import SCMECH_ADATA_KEYS

from ._rules import _assign_max_fraction, _assign_threshold, _cell_stats
from ._source import _check_guide_counts, _guide_source
from ._targets import _check_reserved_targets, _labelled_targets
from ._write import _assignment_frame, _check_uns_slot, _write_assignment

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import anndata as ad
    import pandas as pd
    from mudata import MuData

__all__ = ["assign_guides"]


#: target names (compared case-insensitively) that mark non-targeting or safe-targeting guides
CONTROL_TARGETS = ("non-targeting", "nontargeting", "non_targeting", "NT", "safe-targeting", "control", "ctrl")


def assign_guides(
    data: MuData | ad.AnnData,
    *,
    rna: ad.AnnData | None = None,
    guide_mod: str = "guide",
    rna_mod: str = "rna",
    layer: str | None = None,
    obsm_key: str | None = None,
    guide_names: Sequence[str] | str | None = None,
    targets: str | Mapping[str, str] | Sequence[str] | None = None,
    target_pattern: str | None = None,
    rule: Literal["max_fraction", "threshold"] = "max_fraction",
    min_umis: int = 5,
    min_fraction: float = 0.8,
    combinations: bool = False,
    control_targets: Sequence[str] = CONTROL_TARGETS,
    control_label: str = "NT",
    multiple_label: str = "multiple",
    unassigned_label: str = "unassigned",
    separator: str = "+",
    key_added: str = SCMECH_ADATA_KEYS.UNS,
    inplace: bool = True,
) -> pd.DataFrame:
    r"""Assign guides and their targets to cells from guide UMI counts.

    Rules (with :math:`y_{cg}` the UMI count of guide :math:`g` in cell :math:`c`):

    - ``rule="max_fraction"`` (low MOI; sceptre's ``"maximum"`` assignment): the top guide
      :math:`g^\ast` is assigned when :math:`y_{cg^\ast} \ge` ``min_umis`` and it holds at least
      ``min_fraction`` of the cell's guide UMIs. A cell that fails the fraction rule (or has tied top guides)
      while two or more guides reach ``min_umis`` is labelled ``multiple_label``; other cells are
      ``unassigned_label``.
    - ``rule="threshold"`` (high MOI; sceptre's ``"thresholding"``, pertpy's ``assign_by_threshold``): every
      guide with :math:`y_{cg} \ge` ``min_umis`` is assigned. Guides of one target give that target; guides of
      several targets give the combination ``"A+B"`` (targets sorted, controls dropped) when
      ``combinations=True`` and ``multiple_label`` otherwise. ``min_fraction`` is not used.

    Why not pertpy's :class:`~pertpy.preprocessing.GuideAssignment`: it assigns guide names by a UMI
    threshold, the top guide or a mixture model, and writes them to the guide AnnData. It has no fraction rule
    for the top guide (a cell whose top guide holds half its UMIs is assigned), no map from guides to their
    targets, no control label, and no combination labels of targets. It does not annotate a separate RNA
    AnnData or a MuData modality either. Those are what registration needs (one perturbation label per RNA
    cell), so they are implemented here. The mixture model has no counterpart here; for it, use pertpy's and
    map its guide calls to targets.

    Guides whose target is in ``control_targets`` (case-insensitive) are non-targeting controls: their
    target is ``control_label``. The perturbation column can be registered directly:
    ``SemiMechVI.setup_anndata(adata, perturbation_key="scmech_perturbation",
    unassigned_label=["unassigned", "multiple"])``.

    Parameters
    ----------
    data
        Where the guide counts are: a :class:`~mudata.MuData` with a guide modality ``guide_mod`` beside the
        RNA modality ``rna_mod``; an AnnData of guide counts (cells x guides, ``X`` or ``layer``), annotating
        itself or ``rna``; or an AnnData with the counts in ``obsm[obsm_key]``.
    rna
        With an AnnData of guide counts: the RNA AnnData to annotate (cells matched by ``obs_names``, which must
        be unique in both; RNA cells without guide data count as having no guide UMIs). ``None`` annotates
        ``data`` itself.
    guide_mod, rna_mod
        Modalities of a MuData with the guide counts and the cells to annotate.
    layer
        Layer of the guide AnnData (or modality) with the counts; ``X`` when ``None``.
    obsm_key
        ``obsm`` key of an AnnData that holds the guide counts (array, sparse matrix or DataFrame).
    guide_names
        With ``obsm_key``: the guide names (one per column), or the ``uns`` key holding them; the columns of a
        DataFrame are used when ``None``.
    targets
        Each guide's target: a column of the guide ``var`` (or, with ``obsm_key``, an ``uns`` key with one target
        per guide), a ``{guide: target}`` mapping or a list aligned with the guides. When ``None``: the guide
        ``var["target"]`` column if there is one, else the guide names themselves. Every guide needs a
        non-empty target (no NaN/None) that differs from ``multiple_label`` and ``unassigned_label``.
    target_pattern
        Regular expression whose first group extracts the target from a guide name, e.g.
        ``r"^(.+?)g\d+$"`` for ``"STAT1g2"``; instead of ``targets``.
    rule
        Assignment rule, see above.
    min_umis
        Minimum UMI count of an assigned guide.
    min_fraction
        Minimum fraction of the cell's guide UMIs held by the top guide (``rule="max_fraction"``).
    combinations
        With ``rule="threshold"``, label cells with guides of several targets as combinations.
    control_targets
        Target names of non-targeting (or safe-targeting) guides.
    control_label
        Perturbation label of cells with control guides, as the ``control_label`` of ``setup_anndata``.
    multiple_label
        Perturbation label of cells with several guides that the rule does not resolve.
    unassigned_label
        Perturbation label of cells without an assigned guide.
    separator
        Separator of combinations and of several assigned guides; not blank, and in no guide name or target (a
        joined label must read back unambiguously).
    key_added
        Prefix of the ``obs`` columns written.
    inplace
        Write the columns into the RNA ``obs``; with ``False`` only the DataFrame is returned.

    Returns
    -------
    DataFrame indexed by the annotated cells' ``obs_names`` with the columns written (``inplace=True``) into the
    ``obs`` of the RNA AnnData (``mdata[rna_mod]``, ``rna`` or ``data``):

    - ``{key_added}_guide`` (categorical): assigned guide(s) joined by ``separator``; the guides reaching
      ``min_umis`` for ``multiple_label`` cells; ``unassigned_label`` otherwise;
    - ``{key_added}_perturbation`` (categorical): target label (``control_label`` for control guides),
      ``multiple_label`` or ``unassigned_label``;
    - ``{key_added}_n_guides`` (int): guides with at least one UMI;
    - ``{key_added}_guide_umis`` (int): total guide UMIs;
    - ``{key_added}_guide_max_umis`` (int): UMIs of the top guide;
    - ``{key_added}_guide_max_fraction`` (float): their fraction of the total (0 without guide UMIs).

    With ``inplace=True`` the parameters and the number of cells per label are also stored in
    ``uns[key_added]["guide_assignment"]`` of the same AnnData. Nothing else (the guide counts in particular)
    is modified.

    Raises
    ------
    ValueError
        For invalid arguments, guide data that are not UMI counts, duplicated ``obs_names`` where guide and RNA
        cells are matched by name, and missing, empty or reserved guide targets. Nothing is written then.
    KeyError
        For modalities, layers, ``obsm``/``uns`` keys or ``var`` columns that do not exist.
    TypeError
        For guide data that are booleans (guide calls) or not numeric, and targets that are not strings.

    Examples
    --------
    >>> import scmech
    >>> mdata = scmech.datasets.papalexi2021(as_mudata=True)
    >>> df = scmech.pp.assign_guides(mdata, min_umis=5, min_fraction=0.8)
    >>> int((df["scmech_perturbation"] == "STAT1").sum())
    325
    """
    # cheap argument checks first
    control_targets = _check_args(
        rule,
        min_umis,
        min_fraction,
        control_targets,
        control_label,
        multiple_label,
        unassigned_label,
        separator,
        key_added,
    )
    x, names, var, out, source = _guide_source(data, rna, guide_mod, rna_mod, layer, obsm_key, guide_names)
    x = _check_guide_counts(x, names, out, source, inplace)
    if inplace:
        _check_uns_slot(out, key_added)
    tg = _labelled_targets(names, var, targets, target_pattern, out, control_targets, control_label)
    _check_reserved_targets(names, tg, control_label, multiple_label, unassigned_label, separator)
    stats = _cell_stats(x, min_umis)
    if rule == "max_fraction":
        guide_col, pert_col = _assign_max_fraction(
            x, names, tg, stats, min_umis, float(min_fraction), multiple_label, unassigned_label, separator
        )
    else:
        guide_col, pert_col = _assign_threshold(
            x, names, tg, stats, min_umis, combinations, control_label, multiple_label, unassigned_label, separator
        )
    df = _assignment_frame(guide_col, pert_col, stats, key_added, out.obs_names)
    if inplace:
        params = {
            "source": source,
            "rule": rule,
            "min_umis": int(min_umis),
            "min_fraction": float(min_fraction) if rule == "max_fraction" else float("nan"),
            "combinations": bool(combinations),
            "control_label": control_label,
            "multiple_label": multiple_label,
            "unassigned_label": unassigned_label,
        }
        _write_assignment(out, df, key_added, params)
    return df


def _check_args(
    rule: str,
    min_umis: int,
    min_fraction: float,
    control_targets: Sequence[str] | str,
    control_label: str,
    multiple_label: str,
    unassigned_label: str,
    separator: str,
    key_added: str,
) -> Sequence[str]:
    """Refuse invalid arguments of :func:`assign_guides` (cheap checks, before any data are read).

    Parameters
    ----------
    rule
        Assignment rule.
    min_umis
        Minimum UMI count of an assigned guide.
    min_fraction
        Minimum fraction of the cell's guide UMIs held by the top guide.
    control_targets
        Target names of control guides (a single string is one name).
    control_label
        Perturbation label of cells with control guides.
    multiple_label
        Perturbation label of cells with several unresolved guides.
    unassigned_label
        Perturbation label of cells without an assigned guide.
    separator
        Separator of combinations and of several assigned guides.
    key_added
        Prefix of the ``obs`` columns written.

    Returns
    -------
    ``control_targets``, a single string wrapped in a list.

    Raises
    ------
    ValueError
        For any invalid argument.
    TypeError
        For ``control_targets`` that is not a list of names.
    """
    if rule not in ("max_fraction", "threshold"):
        msg = f"rule={rule!r} is not a guide assignment rule; use 'max_fraction' (low MOI) or 'threshold' (high MOI)."
        raise ValueError(msg)
    if isinstance(min_umis, bool) or not isinstance(min_umis, int | np.integer) or min_umis < 1:
        msg = f"min_umis={min_umis!r} must be an integer >= 1 (the minimum UMI count of an assigned guide), e.g. 5."
        raise ValueError(msg)
    if isinstance(min_fraction, bool) or not (
        isinstance(min_fraction, int | float | np.integer | np.floating) and 0 < float(min_fraction) <= 1
    ):
        msg = f"min_fraction={min_fraction!r} must be in (0, 1] (the top guide's share of the cell's UMIs), e.g. 0.8."
        raise ValueError(msg)
    labels = {"control_label": control_label, "multiple_label": multiple_label, "unassigned_label": unassigned_label}
    for name, value in labels.items():
        if not isinstance(value, str) or not value.strip():
            msg = f"{name}={value!r} must be a non-empty string."
            raise ValueError(msg)
    if not isinstance(separator, str) or not separator.strip():
        # setup_anndata refuses a blank separator too: combinations joined by it could not be registered
        msg = f"separator={separator!r} must be a non-blank string (it joins combinations), e.g. '+'."
        raise ValueError(msg)
    if len(set(labels.values())) < 3:
        msg = f"control_label, multiple_label and unassigned_label must differ, got {list(labels.values())}."
        raise ValueError(msg)
    if not isinstance(key_added, str) or not key_added:
        msg = f"key_added={key_added!r} must be a non-empty string (the prefix of the obs columns)."
        raise ValueError(msg)
    if isinstance(control_targets, str):
        control_targets = [control_targets]
    if control_targets is None or not all(isinstance(t, str) for t in control_targets):
        msg = (
            f"control_targets={control_targets!r} must be a list of target names that mean the control (e.g. "
            "['non-targeting', 'safe-targeting']); pass [] when no guide is a control."
        )
        raise TypeError(msg)
    return control_targets
