r"""Assignment of guides (and their targets) to cells from guide UMI counts.

Two rules, as in sceptre and :class:`pertpy.preprocessing.GuideAssignment`:

- ``"max_fraction"`` (sceptre's low-MOI ``"maximum"`` rule, pertpy's ``assign_to_max_guide`` with a
  fraction filter): a cell gets its top guide :math:`g^\ast = \arg\max_g y_{cg}` when
  :math:`y_{cg^\ast} \ge` ``min_umis`` and :math:`y_{cg^\ast} / \sum_g y_{cg} \ge` ``min_fraction``.
- ``"threshold"`` (sceptre's ``"thresholding"``, pertpy's ``assign_by_threshold``): a cell gets every guide
  with :math:`y_{cg} \ge` ``min_umis`` (high MOI); several targets make a combination (``"A+B"``) when
  ``combinations=True`` and the ``multiple`` label otherwise.

Why not pertpy's :class:`~pertpy.preprocessing.GuideAssignment` (an optional dependency here): its maximum rule
has an absolute UMI threshold but no fraction filter, so a cell whose two guides have similar counts goes to the
larger one; its threshold rule writes a binary guide layer, not a label per cell; and neither maps guides to their
targets, recognises non-targeting guides, writes ``A+B`` combinations or reads a MuData guide modality. This
function does those steps and writes a perturbation column that ``setup_anndata`` registers as it is. Where only
the guide calls are needed, pertpy's class (or its mixture model for high MOI) serves as well.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal, NamedTuple

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scmech._constants import SCMECH_ADATA_KEYS

if TYPE_CHECKING:
    from mudata import MuData

__all__ = ["assign_guides"]

#: target names (compared case-insensitively) that mark non-targeting or safe-targeting guides
CONTROL_TARGETS = ("non-targeting", "nontargeting", "non_targeting", "NT", "safe-targeting", "control", "ctrl")


def _guide_source(
    data: MuData | ad.AnnData,
    rna: ad.AnnData | None,
    guide_mod: str,
    rna_mod: str,
    layer: str | None,
    obsm_key: str | None,
    guide_names: Sequence[str] | str | None,
) -> tuple[sp.csr_matrix, list[str], pd.DataFrame | None, ad.AnnData, str]:
    """Guide counts (cells of the output AnnData x guides), guide names, guide ``var``, output AnnData."""
    if hasattr(data, "mod"):
        mods = list(data.mod.keys())
        if guide_mod not in data.mod:
            msg = f"guide_mod={guide_mod!r} is not a modality of the MuData (modalities: {mods}); pass guide_mod=..."
            raise KeyError(msg)
        if rna_mod not in data.mod:
            msg = f"rna_mod={rna_mod!r} is not a modality of the MuData (modalities: {mods}); pass rna_mod=..."
            raise KeyError(msg)
        if obsm_key is not None or rna is not None:
            msg = "With a MuData, the guide counts come from mdata[guide_mod]; leave obsm_key and rna as None."
            raise ValueError(msg)
        gdata, out = data.mod[guide_mod], data.mod[rna_mod]
        x = _layer(gdata, layer, f"mdata[{guide_mod!r}]")
        source = f"mdata[{guide_mod!r}]" + (f".layers[{layer!r}]" if layer else ".X")
        names, var = [str(v) for v in gdata.var_names], gdata.var
        if gdata is not out:
            _check_unique_cells(gdata.obs_names, f"mdata[{guide_mod!r}]")
            _check_unique_cells(out.obs_names, f"mdata[{rna_mod!r}]")
        x = _align(x, gdata.obs_names, out.obs_names, source)
        return x, names, var, out, source
    if not isinstance(data, ad.AnnData):
        msg = f"data must be a MuData or an AnnData, got {type(data).__name__}."
        raise TypeError(msg)
    if obsm_key is not None:
        if layer is not None:
            msg = f"Pass either obsm_key={obsm_key!r} or layer={layer!r} for the guide counts, not both."
            raise ValueError(msg)
        if obsm_key not in data.obsm:
            msg = (
                f"obsm_key={obsm_key!r} is not in adata.obsm (keys: {list(data.obsm.keys())}); pass the key of the "
                "guide counts."
            )
            raise KeyError(msg)
        if rna is not None:
            msg = "With obsm_key the assignment is written to the same AnnData; leave rna as None."
            raise ValueError(msg)
        raw = data.obsm[obsm_key]
        source = f"adata.obsm[{obsm_key!r}]"
        names = _obsm_names(data, raw, guide_names, obsm_key)
        values = raw.to_numpy() if isinstance(raw, pd.DataFrame) else raw
        x = sp.csr_matrix(values)
        return x, names, None, data, source
    x = _layer(data, layer, "adata")
    source = "adata" + (f".layers[{layer!r}]" if layer else ".X")
    names, var = [str(v) for v in data.var_names], data.var
    out = data
    if rna is not None:
        if not isinstance(rna, ad.AnnData):
            msg = f"rna must be an AnnData (the RNA data to annotate), got {type(rna).__name__}."
            raise TypeError(msg)
        if rna is not data:
            _check_unique_cells(data.obs_names, "data")
            _check_unique_cells(rna.obs_names, "rna")
        x = _align(x, data.obs_names, rna.obs_names, source)
        out = rna
    return x, names, var, out, source


def _layer(adata: ad.AnnData, layer: str | None, what: str):
    if layer is None:
        return adata.X
    if layer not in adata.layers:
        msg = f"layer={layer!r} is not a layer of {what} (layers: {list(adata.layers.keys())}); pass layer=None for X."
        raise KeyError(msg)
    return adata.layers[layer]


def _check_unique_cells(cells: pd.Index, what: str) -> None:
    """Refuse duplicated ``obs_names`` where cells are matched by name (each duplicate would get one cell's guide)."""
    if cells.is_unique:
        return
    dup = cells[cells.duplicated()].unique().tolist()
    msg = (
        f"{what}.obs_names has {int(cells.duplicated().sum())} duplicated names (e.g. {dup[:5]}); the guide counts "
        "are matched to the RNA cells by obs_names, so duplicated cells would all get one cell's guide. Make the "
        f"names unique first ({what}.obs_names_make_unique(), on the guide and the RNA data alike so that they still "
        "match) or drop the duplicated cells."
    )
    raise ValueError(msg)


def _align(x, guide_cells: pd.Index, out_cells: pd.Index, source: str) -> sp.csr_matrix:
    """Rows of ``x`` (guide cells) in the order of ``out_cells``; cells without guide data get zero counts."""
    x = sp.csr_matrix(x, dtype=np.float64)
    if guide_cells.equals(out_cells):
        return x
    pos = pd.Index(guide_cells).get_indexer(out_cells)
    if (pos < 0).all():
        msg = (
            f"The cells of {source} share no obs_names with the RNA data; the two must name cells the same way "
            "(e.g. the same barcodes)."
        )
        raise ValueError(msg)
    rows = np.where(pos >= 0, pos, 0)
    out = x[rows]
    if (pos < 0).any():
        keep = sp.diags((pos >= 0).astype(x.dtype))
        out = sp.csr_matrix(keep @ out)
        out.eliminate_zeros()
    return out


def _obsm_names(adata: ad.AnnData, raw, guide_names, obsm_key: str) -> list[str]:
    n = raw.shape[1]
    if isinstance(guide_names, str):
        if guide_names not in adata.uns:
            msg = f"guide_names={guide_names!r} is not a key of adata.uns; pass the guide names as a list or a uns key."
            raise KeyError(msg)
        guide_names = adata.uns[guide_names]
    if guide_names is None:
        if isinstance(raw, pd.DataFrame):
            guide_names = raw.columns
        else:
            msg = (
                f"adata.obsm[{obsm_key!r}] is an array without guide names; pass guide_names=[...] (one per column) "
                "or the name of a uns entry that holds them."
            )
            raise ValueError(msg)
    names = [str(g) for g in np.asarray(guide_names).ravel()]
    if len(names) != n:
        msg = f"guide_names has {len(names)} names for the {n} columns of adata.obsm[{obsm_key!r}]."
        raise ValueError(msg)
    return names


def _targets(
    names: list[str],
    var: pd.DataFrame | None,
    targets: str | Mapping[str, str] | Sequence[str] | None,
    target_pattern: str | None,
    adata: ad.AnnData,
) -> list[str]:
    """Target of each guide: a guide var column or uns entry, a mapping, a list, a regex or the guide name."""
    raw, what = _raw_targets(names, var, targets, target_pattern, adata)
    return _check_targets(names, raw, what)


def _raw_targets(
    names: list[str],
    var: pd.DataFrame | None,
    targets: str | Mapping[str, str] | Sequence[str] | None,
    target_pattern: str | None,
    adata: ad.AnnData,
) -> tuple[list, str]:
    """Targets as given (not yet checked), and where they come from (for messages)."""
    if targets is not None and target_pattern is not None:
        msg = "Pass either targets=... or target_pattern=... to map guides to targets, not both."
        raise ValueError(msg)
    if target_pattern is not None:
        try:
            rx = re.compile(target_pattern)
        except re.error as e:
            msg = f"target_pattern={target_pattern!r} is not a valid regular expression ({e})."
            raise ValueError(msg) from e
        out = []
        for g in names:
            m = rx.search(g)
            if m is None:
                msg = (
                    f"target_pattern={target_pattern!r} does not match guide {g!r}; use a pattern whose first group "
                    r"is the target, e.g. r'^(.+?)[-_]?g\d+$'."
                )
                raise ValueError(msg)
            out.append(m.group(1) if m.re.groups else m.group(0))
        return out, f"target_pattern={target_pattern!r}"
    if targets is None:
        if var is not None and "target" in var.columns:
            return list(var["target"]), "the guide var['target'] column"
        return list(names), "the guide names"
    if isinstance(targets, str):
        if var is not None:
            if targets not in var.columns:
                msg = (
                    f"targets={targets!r} is not a column of the guide var (columns: {list(var.columns)}); pass the "
                    "column with each guide's target, a {guide: target} mapping or target_pattern=..."
                )
                raise KeyError(msg)
            return list(var[targets]), f"the guide var[{targets!r}] column"
        if targets not in adata.uns:
            msg = (
                f"targets={targets!r} is not a key of adata.uns; pass the uns key with one target per guide, a "
                "{guide: target} mapping or target_pattern=..."
            )
            raise KeyError(msg)
        what = f"adata.uns[{targets!r}]"
        targets = list(np.asarray(adata.uns[targets], dtype=object).ravel())
    else:
        what = "targets"
    if isinstance(targets, Mapping):
        missing = [g for g in names if g not in targets]
        if missing:
            msg = f"targets has no entry for guides {missing[:5]}; map every guide to its target."
            raise KeyError(msg)
        return [targets[g] for g in names], what
    targets = list(targets)
    if len(targets) != len(names):
        msg = f"{what} has {len(targets)} entries for {len(names)} guides; give one target per guide."
        raise ValueError(msg)
    return targets, what


def _check_targets(names: list[str], raw: list, what: str) -> list[str]:
    """Refuse missing (NaN/None, or their string forms ``'nan'``/``'None'``) and empty targets."""

    def _missing(t) -> bool:
        if t is None:
            return True
        if isinstance(t, str):
            return t in ("nan", "NaN", "None", "<NA>")
        try:
            return bool(pd.isna(t))
        except (TypeError, ValueError):  # array-like entries are not missing values
            return False

    fix = "; give every guide its target (e.g. 'non-targeting' for control guides) or drop those guides."
    miss = [g for g, t in zip(names, raw, strict=True) if _missing(t)]
    if miss:
        msg = f"{what} gives a missing target (NaN/None, or the string 'nan'/'None') for guide(s) {_few(miss)}{fix}"
        raise ValueError(msg)
    out = [str(t) for t in raw]
    empty = [g for g, t in zip(names, out, strict=True) if not t.strip()]
    if empty:
        msg = f"{what} gives an empty target for guide(s) {_few(empty)}{fix}"
        raise ValueError(msg)
    return out


def _few(names: list[str]) -> str:
    """Return the first five names, and how many more."""
    return f"{names[:5]}" + (f" and {len(names) - 5} more" if len(names) > 5 else "")


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
        Separator of combinations and of several assigned guides.
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
    """
    if rule not in ("max_fraction", "threshold"):
        msg = f"rule={rule!r} is not a guide assignment rule; use 'max_fraction' (low MOI) or 'threshold' (high MOI)."
        raise ValueError(msg)
    if isinstance(min_umis, bool) or not isinstance(min_umis, int | np.integer) or min_umis < 1:
        msg = f"min_umis={min_umis!r} must be an integer >= 1 (the minimum UMI count of an assigned guide), e.g. 5."
        raise ValueError(msg)
    if not (isinstance(min_fraction, int | float) and 0 < float(min_fraction) <= 1):
        msg = f"min_fraction={min_fraction!r} must be in (0, 1] (the top guide's share of the cell's UMIs), e.g. 0.8."
        raise ValueError(msg)
    labels = {"control_label": control_label, "multiple_label": multiple_label, "unassigned_label": unassigned_label}
    for name, value in labels.items():
        if not isinstance(value, str) or not value.strip():
            msg = f"{name}={value!r} must be a non-empty string."
            raise ValueError(msg)
    if not isinstance(separator, str) or not separator:
        msg = f"separator={separator!r} must be a non-empty string (it joins combinations), e.g. '+'."
        raise ValueError(msg)
    if len(set(labels.values())) < 3:
        msg = f"control_label, multiple_label and unassigned_label must differ, got {list(labels.values())}."
        raise ValueError(msg)
    if not isinstance(key_added, str) or not key_added:
        msg = f"key_added={key_added!r} must be a non-empty string (the prefix of the obs columns)."
        raise ValueError(msg)
    if isinstance(control_targets, str):
        control_targets = [control_targets]
    return control_targets


def _check_guide_counts(
    x: sp.csr_matrix, names: list[str], out: ad.AnnData, source: str, inplace: bool
) -> sp.csr_matrix:
    """Refuse a view to annotate, no guides, duplicated guide names and values that are not UMI counts.

    Parameters
    ----------
    x
        Guide counts (cells x guides).
    names
        Guide names.
    out
        The AnnData to annotate.
    source
        Where the counts come from (for messages).
    inplace
        Whether ``out`` is to be written.

    Returns
    -------
    The counts as a float64 CSR matrix without duplicated entries.

    Raises
    ------
    ValueError
        For any of the problems above.
    """
    if inplace and out.is_view:
        msg = "The AnnData to annotate is a view; call .copy() on it first (or pass inplace=False)."
        raise ValueError(msg)
    if x.shape[1] == 0:
        msg = f"{source} has no guides (0 columns)."
        raise ValueError(msg)
    if len(set(names)) != len(names):
        dup = pd.Index(names)[pd.Index(names).duplicated()].unique().tolist()
        msg = f"Guide names in {source} are not unique: {dup[:5]}; make them unique first."
        raise ValueError(msg)
    x = sp.csr_matrix(x, dtype=np.float64)
    x.sum_duplicates()
    data_ = x.data
    if data_.size and (not np.isfinite(data_).all() or data_.min() < 0 or not np.allclose(data_, np.round(data_))):
        msg = f"{source} must hold guide UMI counts (non-negative integers); pass the layer with raw guide counts."
        raise ValueError(msg)
    return x


def _labelled_targets(
    names: list[str],
    var: pd.DataFrame | None,
    targets: str | Mapping[str, str] | Sequence[str] | None,
    target_pattern: str | None,
    adata: ad.AnnData,
    control_targets: Sequence[str],
    control_label: str,
) -> np.ndarray:
    """Return the target of each guide, with ``control_label`` for control guides.

    Parameters
    ----------
    names
        Guide names.
    var
        Guide ``var``, or ``None``.
    targets
        The ``targets`` argument of :func:`assign_guides`.
    target_pattern
        The ``target_pattern`` argument of :func:`assign_guides`.
    adata
        The AnnData to annotate (for ``uns`` keys).
    control_targets
        Target names of control guides (case-insensitive).
    control_label
        Label of control guides.

    Returns
    -------
    Object array of targets, one per guide.
    """
    tg = _targets(names, var, targets, target_pattern, adata)
    ctrl_set = {str(c).lower() for c in control_targets} | {control_label.lower()}
    return np.asarray([control_label if t.lower() in ctrl_set else t for t in tg], dtype=object)


def _check_reserved_targets(
    names: list[str], tg: np.ndarray, control_label: str, multiple_label: str, unassigned_label: str, separator: str
) -> None:
    """Refuse targets that read as a label, a guide named ``unassigned_label`` and targets with the separator.

    Parameters
    ----------
    names
        Guide names.
    tg
        Target of each guide (``control_label`` for control guides).
    control_label
        Label of control guides.
    multiple_label
        Label of cells with several unresolved guides.
    unassigned_label
        Label of cells without an assigned guide.
    separator
        Separator of combinations.

    Raises
    ------
    ValueError
        For any of the problems above.
    """
    # a target must not read as one of the labels written for cells without a (single) target
    reserved = {"multiple_label": multiple_label, "unassigned_label": unassigned_label, "control_label": control_label}
    for arg, label in reserved.items():
        hit = [(g, t) for g, t in zip(names, tg, strict=True) if t != control_label and t.strip() == label.strip()]
        if hit:
            msg = (
                f"Guide(s) {[g for g, _ in hit][:5]} have the target {hit[0][1]!r}, which reads as {arg}={label!r}, "
                "the label written for "
                + {
                    "multiple_label": "cells with several guides",
                    "unassigned_label": "cells without an assigned guide",
                    "control_label": "control guides",
                }[arg]
                + f"; rename the target (targets=...) or pass another {arg}=..."
            )
            raise ValueError(msg)
    if unassigned_label in names:
        msg = (
            f"A guide is named {unassigned_label!r}, which is unassigned_label={unassigned_label!r}, the guide label "
            "of cells without an assigned guide; rename the guide or pass another unassigned_label=..."
        )
        raise ValueError(msg)
    for t in set(tg) - {control_label}:
        if separator in t:
            msg = f"Guide target {t!r} contains the separator {separator!r}; pass another separator=..."
            raise ValueError(msg)


class _CellStats(NamedTuple):
    """Guide UMI summary per cell."""

    #: total guide UMIs
    total: np.ndarray
    #: guides with at least one UMI
    n_guides: np.ndarray
    #: column of the top guide (ties: the first)
    top: np.ndarray
    #: UMIs of the top guide
    max_umis: np.ndarray
    #: their fraction of the total (0 without guide UMIs)
    frac: np.ndarray
    #: guides with at least ``min_umis`` UMIs
    n_pass: np.ndarray
    #: guides with the top (non-zero) count
    at_max: np.ndarray


def _cell_stats(x: sp.csr_matrix, min_umis: int) -> _CellStats:
    """Summarise the guide UMIs of each cell.

    Parameters
    ----------
    x
        Guide counts (cells x guides), float64 CSR without duplicated entries.
    min_umis
        Minimum UMI count of an assigned guide.

    Returns
    -------
    The per-cell summary.
    """
    n = x.shape[0]
    total = np.asarray(x.sum(axis=1)).ravel()
    n_guides = np.diff(x.indptr)
    # top guide per cell; ties are resolved below
    top = np.asarray(x.argmax(axis=1)).ravel() if n else np.zeros(0, dtype=int)
    max_umis = np.asarray(x.max(axis=1).toarray()).ravel() if n else np.zeros(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(total > 0, max_umis / np.where(total > 0, total, 1), 0.0)
    rows = np.repeat(np.arange(n), n_guides)
    passing = x.data >= min_umis
    n_pass = np.bincount(rows[passing], minlength=n)
    at_max = np.bincount(rows[(x.data == max_umis[rows]) & (x.data > 0)], minlength=n)
    return _CellStats(total, n_guides, top, max_umis, frac, n_pass, at_max)


def _passing_guides(x: sp.csr_matrix, i: int, min_umis: int, names: list[str]) -> list[int]:
    """Return the columns of the guides of cell ``i`` with at least ``min_umis`` UMIs, sorted by guide name.

    Parameters
    ----------
    x
        Guide counts (cells x guides), CSR.
    i
        Row of the cell.
    min_umis
        Minimum UMI count of an assigned guide.
    names
        Guide names.

    Returns
    -------
    Column indices of the passing guides.
    """
    lo, hi = x.indptr[i], x.indptr[i + 1]
    idx, vals = x.indices[lo:hi], x.data[lo:hi]
    return sorted(idx[vals >= min_umis].tolist(), key=lambda j: names[j])


def _assign_max_fraction(
    x: sp.csr_matrix,
    names: list[str],
    tg: np.ndarray,
    stats: _CellStats,
    min_umis: int,
    min_fraction: float,
    multiple_label: str,
    unassigned_label: str,
    separator: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Assign each cell its top guide when it reaches ``min_umis`` and ``min_fraction`` (``rule="max_fraction"``).

    Parameters
    ----------
    x
        Guide counts (cells x guides), CSR.
    names
        Guide names.
    tg
        Target of each guide.
    stats
        Per-cell guide summary.
    min_umis
        Minimum UMI count of an assigned guide.
    min_fraction
        Minimum fraction of the cell's guide UMIs held by the top guide.
    multiple_label
        Label of cells with several guides reaching ``min_umis`` but no assignment.
    unassigned_label
        Label of other cells without an assignment.
    separator
        Separator of the guides of ``multiple_label`` cells.

    Returns
    -------
    The guide and the perturbation label of each cell (object arrays).
    """
    n = x.shape[0]
    guide_col = np.full(n, unassigned_label, dtype=object)
    pert_col = np.full(n, unassigned_label, dtype=object)
    guide_arr = np.asarray(names, dtype=object)
    ok = (stats.max_umis >= min_umis) & (stats.frac >= min_fraction) & (stats.at_max == 1)
    guide_col[ok] = guide_arr[stats.top[ok]]
    pert_col[ok] = tg[stats.top[ok]]
    multi = ~ok & (stats.n_pass >= 2)
    pert_col[multi] = multiple_label
    for i in np.flatnonzero(multi):
        guide_col[i] = separator.join(names[j] for j in _passing_guides(x, i, min_umis, names))
    return guide_col, pert_col


def _assign_threshold(
    x: sp.csr_matrix,
    names: list[str],
    tg: np.ndarray,
    stats: _CellStats,
    min_umis: int,
    combinations: bool,
    control_label: str,
    multiple_label: str,
    unassigned_label: str,
    separator: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Assign each cell every guide with at least ``min_umis`` UMIs (``rule="threshold"``).

    Parameters
    ----------
    x
        Guide counts (cells x guides), CSR.
    names
        Guide names.
    tg
        Target of each guide.
    stats
        Per-cell guide summary.
    min_umis
        Minimum UMI count of an assigned guide.
    combinations
        Label cells with guides of several targets as combinations (controls dropped).
    control_label
        Label of control guides.
    multiple_label
        Label of cells with guides of several targets without ``combinations``.
    unassigned_label
        Label of cells without an assigned guide.
    separator
        Separator of combinations and of several assigned guides.

    Returns
    -------
    The guide and the perturbation label of each cell (object arrays).
    """
    n = x.shape[0]
    guide_col = np.full(n, unassigned_label, dtype=object)
    pert_col = np.full(n, unassigned_label, dtype=object)
    for i in np.flatnonzero(stats.n_pass == 1):
        (j,) = _passing_guides(x, i, min_umis, names)
        guide_col[i] = names[j]
        pert_col[i] = tg[j]
    for i in np.flatnonzero(stats.n_pass >= 2):
        gs = _passing_guides(x, i, min_umis, names)
        guide_col[i] = separator.join(names[j] for j in gs)
        cell_targets = sorted(set(tg[gs]))
        if len(cell_targets) == 1:
            pert_col[i] = cell_targets[0]
        elif combinations:
            real = [t for t in cell_targets if t != control_label]
            pert_col[i] = separator.join(real)
        else:
            pert_col[i] = multiple_label
    return guide_col, pert_col


def _assignment_frame(
    guide_col: np.ndarray, pert_col: np.ndarray, stats: _CellStats, key_added: str, obs_names: pd.Index
) -> pd.DataFrame:
    """Collect the assignment and the guide summary in the DataFrame that :func:`assign_guides` returns.

    Parameters
    ----------
    guide_col
        Assigned guide(s) of each cell.
    pert_col
        Perturbation label of each cell.
    stats
        Per-cell guide summary.
    key_added
        Prefix of the columns.
    obs_names
        Names of the annotated cells (copied as the index).

    Returns
    -------
    DataFrame with the ``{key_added}_*`` columns.
    """
    p = key_added
    return pd.DataFrame(
        {
            f"{p}_guide": pd.Categorical(guide_col.astype(str)),
            f"{p}_perturbation": pd.Categorical(pert_col.astype(str)),
            f"{p}_n_guides": stats.n_guides.astype(np.int64),
            f"{p}_guide_umis": np.round(stats.total).astype(np.int64),
            f"{p}_guide_max_umis": np.round(stats.max_umis).astype(np.int64),
            f"{p}_guide_max_fraction": stats.frac.astype(np.float64),
        },
        index=obs_names.copy(),
    )


def _write_assignment(out: ad.AnnData, df: pd.DataFrame, key_added: str, params: dict) -> None:
    """Write the columns of ``df`` into ``out.obs``, and the parameters and cells per label into ``out.uns``.

    Parameters
    ----------
    out
        The AnnData to annotate.
    df
        The assignment, indexed like ``out.obs``.
    key_added
        Prefix of the columns and key of ``out.uns``.
    params
        Parameters of the assignment.
    """
    for c in df.columns:
        out.obs[c] = df[c].to_numpy() if not isinstance(df[c].dtype, pd.CategoricalDtype) else df[c].values
    uns = out.uns.setdefault(key_added, {})
    uns["guide_assignment"] = {
        "params": params,
        "n_cells": {str(k): int(v) for k, v in df[f"{key_added}_perturbation"].value_counts().items()},
    }
