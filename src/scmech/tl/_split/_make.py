"""Making splits: :func:`split` and its steps, and :func:`leave_one_out`."""

from __future__ import annotations

import logging
from numbers import Real
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from scmech._docs import fill_doc
from scmech.data._design import get_design
from scmech.data._target_genes import target_gene_names
from scmech.tl._seeds import check_random_state, default_seed

from ._choice import _given_conditions, _held_out, _targets
from ._result import Split, _fingerprint_obs_names

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from anndata import AnnData

    from scmech.data._design import PerturbationDesign

logger = logging.getLogger(__name__)

__all__ = ["leave_one_out", "split"]

SplitKind = Literal["perturbation", "combination", "batch", "time", "media"]
_KINDS = ("perturbation", "combination", "batch", "time", "media")
_GROUP_KEYS = {"batch": "batch_key", "time": "time_key", "media": "media_key"}


@fill_doc
def split(
    adata: AnnData,
    kind: SplitKind,
    *,
    perturbation_key: str = "perturbation",
    control_label: str | Sequence[str] = "NT",
    separator: str = "+",
    unassigned_label: str | Sequence[str] | None = "unassigned",
    batch_key: str | None = None,
    time_key: str | None = None,
    media_key: str | None = None,
    test_conditions: Sequence[Any] | str | None = None,
    test_size: float = 0.2,
    validation_size: float = 0.1,
    seen: Literal[0, 1, 2] = 2,
    controls_in_train: bool = True,
    restrict_to_measured: bool = False,
    gene_symbols: str | None = None,
    random_state: int | None = 0,
) -> Split:
    """Split a screen into training, validation and held-out test cells.

    Kinds of split:

    ``"perturbation"``
        Held-out perturbations: all cells of the test conditions leave training; controls stay in training.
    ``"combination"``
        Held-out combinations (``A+B``) of which ``seen`` single targets are still perturbed in training.
        With ``seen=2`` both singles stay in training; with ``seen=1`` one target of each test combination is
        held out everywhere (its single's cells join the test set); with ``seen=0`` both are. Training
        combinations containing a held-out target are excluded from every set (see :attr:`Split.excluded`).
    ``"batch"``, ``"time"``, ``"media"``
        A held-out batch (replicate, lane), time point or medium: its perturbed cells are the test set. Its
        controls stay in training by default (``controls_in_train``), as in "train on replicates 1–2 plus the
        controls of replicate 3".

    Unassigned cells belong to no set. The validation set is a random ``validation_size`` fraction of the
    remaining training cells. Nothing is written to ``adata``.

    Parameters
    ----------
    adata
        Annotated data matrix (not modified).
    kind
        ``"perturbation"``, ``"combination"``, ``"batch"``, ``"time"`` or ``"media"``.
    perturbation_key
        %(perturbation_key)s
    control_label
        %(control_label)s
    separator
        %(separator)s
    unassigned_label
        %(unassigned_label)s
    batch_key
        %(batch_key)s Required for ``kind="batch"``.
    time_key
        %(time_key)s Required for ``kind="time"``.
    media_key
        %(media_key)s Required for ``kind="media"``. Each of these three keys, when given, must be a column of
        ``adata.obs``, even where the kind of split does not use it.
    test_conditions
        Conditions to hold out instead of a random choice: perturbation labels for ``"perturbation"`` and
        ``"combination"``, batch, time (numbers) or medium values for the other kinds; a single value is one
        condition.
    test_size
        Fraction of the candidate conditions (or groups) held out when ``test_conditions`` is ``None``; at
        least one. A number in (0, 1); with ``validation_size``, it must sum to less than 1.
    validation_size
        Fraction of the training cells moved to the validation set, a number in [0, 1).
    seen
        Combination splits: number of single targets of each test combination still perturbed in training
        (the integer 0, 1 or 2).
    controls_in_train
        Batch, time and media splits: whether the held-out group's controls stay in training (else they
        join the test set). Perturbation and combination splits always keep controls in training.
    restrict_to_measured
        Choose test perturbations only among those whose targets are all genes of ``adata.var_names`` (the
        linear baseline needs a measured target), or of the column ``gene_symbols``.
    gene_symbols
        %(gene_symbols)s
    random_state
        Seed of the random choices (:func:`numpy.random.default_rng`): a non-negative integer, or ``None`` for
        ``scvi.settings.seed``.

    Returns
    -------
    The :class:`Split`; pass ``split.external_indexing`` to ``model.train(datasplitter_kwargs=...)``.

    Raises
    ------
    TypeError
        For a ``test_size``, ``validation_size`` or ``seen`` that is not a number (a bool is not one here), a key
        that is not a string, and a held-out time that is not a number.
    KeyError
        For a key that is not a column of ``adata.obs``, and test conditions or groups without assigned cells.
    ValueError
        For an unknown ``kind``, sizes outside their range, a ``seen`` other than 0, 1 or 2 in a combination
        split, and a split that would leave nothing (or no controls) to train on.

    Examples
    --------
    >>> adata = scmech.datasets.papalexi2021()
    >>> sp = scmech.tl.split(adata, "perturbation", test_conditions=["STAT1", "JAK2"])
    >>> scmech.model.SemiMechVI.setup_anndata(adata)
    >>> model = scmech.model.SemiMechVI(adata)
    >>> model.train(max_epochs=20, datasplitter_kwargs={"external_indexing": sp.external_indexing})
    >>> sp_rep = scmech.tl.split(adata, "batch", batch_key="bio_rep", test_conditions=["rep_3"])
    """
    # the arguments but the data and the held-out conditions, in the order of the signature
    params = {k: v for k, v in locals().items() if k not in ("adata", "test_conditions")}
    group_key = _check_split_args(
        kind,
        random_state=random_state,
        test_conditions=test_conditions,
        test_size=test_size,
        validation_size=validation_size,
        seen=seen,
        controls_in_train=controls_in_train,
        group_keys={"batch": batch_key, "time": time_key, "media": media_key},
    )
    _check_obs_keys(adata, {"batch_key": batch_key, "time_key": time_key, "media_key": media_key})
    if isinstance(test_conditions, str | int | float | np.number):
        test_conditions = [test_conditions]
    full = get_design(
        adata,
        perturbation_key,
        control_label,
        separator=separator,
        unassigned_label=unassigned_label,
        batch_key=batch_key if kind == "batch" else None,
        time_key=time_key if kind == "time" else None,
        media_key=media_key if kind == "media" else None,
        warn_missing_controls=False,
    )
    design = full.perturbation
    rng = np.random.default_rng(default_seed(random_state))
    held = _held_out(
        full,
        kind,
        group_key,
        test_conditions,
        test_size=test_size,
        seen=seen,
        controls_in_train=controls_in_train,
        restrict_to_measured=restrict_to_measured,
        genes=set(target_gene_names(adata.var, gene_symbols)),
        rng=rng,
        key=perturbation_key,
    )
    train, validation, train_conds = _training_sets(design, held.test_mask, held.excluded_mask, validation_size, rng)
    control_ref = held.control_ref
    if kind in ("perturbation", "combination"):
        # changes are measured from the controls models may use: training and validation (the validation cells
        # are a random share of the training conditions' cells); never from test cells
        control_ref = np.zeros(len(design.labels), dtype=bool)
        control_ref[train] = True
        control_ref[validation] = True
        control_ref &= design.is_control
    out = Split(
        train=train.astype(np.int64),
        validation=validation.astype(np.int64),
        test=np.flatnonzero(held.test_mask).astype(np.int64),
        kind=kind,
        test_conditions=[c for c in held.chosen if c != design.control_label],
        train_conditions=train_conds,
        test_groups=held.test_groups,
        group_key=group_key,
        control_reference=np.flatnonzero(control_ref).astype(np.int64),
        excluded=np.flatnonzero(held.excluded_mask).astype(np.int64),
        params=params,
        n_obs=adata.n_obs,
        obs_names_fingerprint=_fingerprint_obs_names(adata.obs_names),
    )
    logger.info("%r", out)
    return out


def _check_split_args(
    kind: str,
    *,
    random_state: Any,
    test_conditions: Any,
    test_size: float,
    validation_size: float,
    seen: Any,
    controls_in_train: bool,
    group_keys: dict[str, str | None],
) -> str | None:
    """Check the arguments of :func:`split` that need no data; return the ``obs`` column of the held-out groups."""
    if kind not in _KINDS:
        msg = f"Unknown split kind {kind!r}; use one of {list(_KINDS)}."
        raise ValueError(msg)
    check_random_state(random_state)
    _check_fraction(test_size, "test_size", allow_zero=False)
    _check_fraction(validation_size, "validation_size", allow_zero=True)
    if test_conditions is None and test_size + validation_size >= 1:
        msg = (
            f"test_size={test_size!r} and validation_size={validation_size!r} sum to "
            f"{test_size + validation_size:.3g} >= 1, leaving (almost) nothing to train on; choose sizes that sum to "
            "less than 1 (e.g. test_size=0.2, validation_size=0.1)."
        )
        raise ValueError(msg)
    if isinstance(seen, bool | np.bool_) or not isinstance(seen, int | np.integer):
        msg = (
            f"seen={seen!r} ({type(seen).__name__}) must be the integer 0, 1 or 2 (single targets of each test "
            "combination seen in training), e.g. seen=2."
        )
        raise TypeError(msg)
    if kind == "combination" and seen not in (0, 1, 2):
        msg = f"seen={seen!r} must be 0, 1 or 2 (single targets of each test combination seen in training)."
        raise ValueError(msg)
    if kind in ("perturbation", "combination") and not controls_in_train:
        msg = (
            f"controls_in_train=False applies to batch, time and media splits; a {kind} split always keeps the "
            "controls in training. Leave controls_in_train=True."
        )
        raise ValueError(msg)
    group_key = None
    if kind in _GROUP_KEYS:
        group_key = group_keys[kind]
        if group_key is None:
            arg = _GROUP_KEYS[kind]
            msg = f"A {kind!r} split needs `{arg}`: the obs column of the {kind} values (e.g. {arg}='bio_rep')."
            raise ValueError(msg)
    return group_key


def _check_fraction(value: float, name: str, *, allow_zero: bool) -> None:
    """Refuse a ``value`` of argument ``name`` that is not a number (bools included) or not a fraction."""
    bound = "[0, 1)" if allow_zero else "(0, 1)"
    if isinstance(value, bool | np.bool_) or not isinstance(value, Real):
        example = {"test_size": 0.2, "validation_size": 0.1}.get(name, 0.2)
        msg = f"{name}={value!r} ({type(value).__name__}) must be a fraction in {bound}, e.g. {name}={example}."
        raise TypeError(msg)
    lo_ok = value >= 0 if allow_zero else value > 0
    if not (np.isfinite(value) and lo_ok and value < 1):
        msg = f"{name}={value!r} must be a fraction in {bound}."
        raise ValueError(msg)


def _check_obs_keys(adata: AnnData, keys: dict[str, str | None]) -> None:
    """Refuse a key of ``keys`` (argument name to value) that is given but is not the name of an ``obs`` column.

    A key that the kind of split does not use is checked too: a misspelt column would otherwise be ignored
    silently.
    """
    cols = list(adata.obs.columns)
    shown = f"{cols[:12]}{' ...' if len(cols) > 12 else ''}"
    for name, key in keys.items():
        if key is None:
            continue
        if not isinstance(key, str):
            msg = f"{name}={key!r} must be the name of one adata.obs column (a string) or None; columns: {shown}."
            raise TypeError(msg)
        if key not in adata.obs.columns:
            msg = f"{name}={key!r} is not a column of adata.obs (columns: {shown}); pass one of them or None."
            raise KeyError(msg)


def _training_sets(
    design: PerturbationDesign,
    test_mask: np.ndarray,
    excluded_mask: np.ndarray,
    validation_size: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Training and validation cells (the assigned cells in no other set) and the training perturbations."""
    is_ctrl = design.is_control
    train_mask = design.fit_mask & ~test_mask & ~excluded_mask
    train_all = np.flatnonzero(train_mask)
    if len(train_all) == 0:
        msg = "Nothing left to train on: every assigned cell is in the test set. Hold out fewer conditions."
        raise ValueError(msg)
    if not (train_mask & is_ctrl).any():
        msg = (
            f"No control cells ({design.control_label!r}) are left in training; models need training controls. "
            "Keep controls_in_train=True or add controls to other groups."
        )
        raise ValueError(msg)
    train_conds = sorted(set(design.labels[train_mask & ~is_ctrl].tolist()))
    if not train_conds:
        msg = "No perturbed cells are left in training; hold out fewer conditions or groups."
        raise ValueError(msg)
    train, validation = _validation(train_all, validation_size, rng)
    return train, validation, train_conds


def _validation(train: np.ndarray, validation_size: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n_val = int(np.floor(validation_size * len(train)))
    if n_val == 0:
        return np.sort(train), np.zeros(0, dtype=np.int64)
    perm = rng.permutation(train)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


@fill_doc
def leave_one_out(
    adata: AnnData,
    *,
    perturbation_key: str = "perturbation",
    control_label: str | Sequence[str] = "NT",
    separator: str = "+",
    unassigned_label: str | Sequence[str] | None = "unassigned",
    conditions: Sequence[str] | str | None = None,
    validation_size: float = 0.1,
    restrict_to_measured: bool = False,
    gene_symbols: str | None = None,
    random_state: int | None = 0,
) -> Iterator[Split]:
    """Leave-one-perturbation-out splits: one :func:`split` of kind ``"perturbation"`` per condition.

    Parameters
    ----------
    adata
        Annotated data matrix (not modified).
    perturbation_key
        %(perturbation_key)s
    control_label
        %(control_label)s
    separator
        %(separator)s
    unassigned_label
        %(unassigned_label)s
    conditions
        Conditions to leave out in turn (a single label is one condition); all perturbations (restricted to
        measured targets with ``restrict_to_measured``) when ``None``.
    validation_size
        Fraction of training cells in each validation set.
    restrict_to_measured
        With ``conditions=None``, only perturbations whose targets are all genes of ``adata.var_names``, or of
        the column ``gene_symbols``.
    gene_symbols
        %(gene_symbols)s
    random_state
        Seed of the validation sets: a non-negative integer, or ``None`` for ``scvi.settings.seed``.

    Returns
    -------
    An iterator of :class:`Split` (one per condition, in sorted order); wrap it in ``list`` to keep them all.
    Arguments are checked before the first split is made.

    Examples
    --------
    >>> scmech.tl.LinearModel.setup_anndata(adata)
    >>> for sp in scmech.tl.leave_one_out(adata, conditions=["STAT1", "JAK2"]):
    ...     model = scmech.tl.LinearModel(adata)
    ...     model.train(datasplitter_kwargs={"external_indexing": sp.external_indexing})
    """
    design = get_design(
        adata,
        perturbation_key,
        control_label,
        separator=separator,
        unassigned_label=unassigned_label,
        warn_missing_controls=False,
    ).perturbation
    perts = [c for c in design.conditions if c != design.control_label]
    if conditions is None:
        genes = set(target_gene_names(adata.var, gene_symbols))
        conds = [c for c in perts if not restrict_to_measured or all(t in genes for t in _targets(design, c))]
    else:
        # a bare label (a string or a number) is one condition, as in split(test_conditions=...)
        given = [conditions] if isinstance(conditions, str | int | float | np.number) else list(conditions)
        conds = _given_conditions(given, design, perts, perturbation_key)
    if len(perts) < 2:
        msg = "Leave-one-out needs at least two perturbations (one held out, the others to train on)."
        raise ValueError(msg)
    _check_fraction(validation_size, "validation_size", allow_zero=True)
    check_random_state(random_state)

    def _gen() -> Iterator[Split]:
        for c in conds:
            yield split(
                adata,
                "perturbation",
                perturbation_key=perturbation_key,
                control_label=control_label,
                separator=separator,
                unassigned_label=unassigned_label,
                test_conditions=[c],
                validation_size=validation_size,
                random_state=random_state,
            )

    return _gen()
