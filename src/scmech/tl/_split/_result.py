"""The result of a held-out split: :class:`Split`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

__all__ = ["Split"]


def _fingerprint_obs_names(obs_names: Sequence[Any] | pd.Index) -> str:
    """Deterministic fingerprint of cell names, in order: a 16-character hex digest.

    The same names in the same order give the same digest in any process or platform (:func:`pandas.util.hash_array`
    with its fixed key, combined by SHA-256); reordered, renamed, added or removed cells change it.

    Parameters
    ----------
    obs_names
        Cell names (usually ``adata.obs_names``).

    Returns
    -------
    The hex digest.
    """
    names = pd.Index(obs_names).astype(str).to_numpy(dtype=object)
    per_name = pd.util.hash_array(names, categorize=False).astype("<u8")
    digest = hashlib.sha256(len(names).to_bytes(8, "little"))
    digest.update(per_name.tobytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Split:
    """Train, validation and test cells of a held-out split.

    Made by :func:`~scmech.tl.split` and :func:`~scmech.tl.leave_one_out`; each parameter is also an attribute of
    the same name (the object is frozen).

    Parameters
    ----------
    train
        Sorted indices (into ``adata``) of the training cells.
    validation
        Sorted indices of the validation cells (a random subset of the non-test assigned cells).
    test
        Sorted indices of the held-out test cells.
    kind
        The kind of split (``"perturbation"``, ``"combination"``, ``"batch"``, ``"time"`` or ``"media"``).
    test_conditions
        Canonical perturbation labels of the test cells (control excluded).
    train_conditions
        Canonical perturbation labels of the training and validation cells (control excluded): the
        "training perturbations" of the Systema reference in :func:`scmech.tl.evaluate`.
    test_groups
        Held-out batch, time or medium values (batch, time and media splits); empty otherwise.
    group_key
        ``obs`` column of ``test_groups``, or ``None``.
    control_reference
        Sorted indices of the control cells against which test cells are compared: the training controls for
        perturbation and combination splits (so that every reference comes from training cells and the
        control mean is exactly "no change"), the controls of the held-out groups otherwise.
    excluded
        Sorted indices of assigned cells in no set (e.g. training combinations that contain a held-out target
        in a combination split with ``seen < 2``). Unassigned cells are never in any set and are not listed.
    params
        The arguments the split was made with.
    n_obs
        Number of cells of the AnnData the split was made on, or ``None`` (not recorded).
    obs_names_fingerprint
        A 16-character hex digest of that AnnData's ``obs_names``, or ``None`` (not recorded). With
        ``n_obs``, :meth:`check_adata` uses it to refuse another (or a reordered) AnnData, whose cells the indices
        would not point at; a split built by hand without them is not checked.
    """

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    kind: str
    test_conditions: list[str]
    train_conditions: list[str]
    test_groups: list[Any] = field(default_factory=list)
    group_key: str | None = None
    control_reference: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    excluded: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    params: dict[str, Any] = field(default_factory=dict)
    n_obs: int | None = None
    obs_names_fingerprint: str | None = None

    @property
    def external_indexing(self) -> list[np.ndarray]:
        """``[train, validation, test]`` for ``model.train(datasplitter_kwargs={"external_indexing": ...})``."""
        return [self.train, self.validation, self.test]

    def check_adata(self, adata: AnnData) -> None:
        """Refuse an AnnData other than the one the split was made on.

        The split's indices point at cells by position, so on another AnnData (fewer, more or reordered cells)
        they would silently select other cells. Checked when the split recorded ``n_obs`` and
        ``obs_names_fingerprint`` (every split made by :func:`~scmech.tl.split`); a no-op otherwise.

        Parameters
        ----------
        adata
            The AnnData the split is used with.

        Raises
        ------
        ValueError
            When ``adata`` has another number of cells, or other or reordered ``obs_names``.
        """
        fix = (
            "Make the split on this AnnData (scmech.tl.split(adata, ...)) or pass the same AnnData it was made on "
            "(not a subset, a reordered copy or another dataset)."
        )
        if self.n_obs is not None and adata.n_obs != self.n_obs:
            msg = (
                f"The split was made on other cells: {self.n_obs} cells, but this AnnData has {adata.n_obs}, so its "
                f"indices would select the wrong cells. {fix}"
            )
            raise ValueError(msg)
        if self.obs_names_fingerprint is not None:
            found = _fingerprint_obs_names(adata.obs_names)
            if found != self.obs_names_fingerprint:
                msg = (
                    f"The split was made on other cells: this AnnData's obs_names (fingerprint {found}) differ from "
                    f"those the split was made on (fingerprint {self.obs_names_fingerprint}): other or reordered "
                    f"cells, which its indices would not point at. {fix}"
                )
                raise ValueError(msg)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (lists and strings), e.g. to store in ``uns`` or JSON.

        Returns
        -------
        A dict of lists, strings and numbers.
        """
        return {
            "kind": self.kind,
            "train": self.train.tolist(),
            "validation": self.validation.tolist(),
            "test": self.test.tolist(),
            "test_conditions": list(self.test_conditions),
            "train_conditions": list(self.train_conditions),
            "test_groups": [g.item() if isinstance(g, np.generic) else g for g in self.test_groups],
            "group_key": self.group_key,
            "control_reference": self.control_reference.tolist(),
            "excluded": self.excluded.tolist(),
            "params": _plain(dict(self.params)),
            "n_obs": int(self.n_obs),
            "obs_names_fingerprint": self.obs_names_fingerprint,
        }

    def __repr__(self) -> str:
        tc = ", ".join(self.test_conditions[:6]) + (" ..." if len(self.test_conditions) > 6 else "")
        groups = f", test_groups={self.test_groups}" if self.test_groups else ""
        return (
            f"Split(kind={self.kind!r}, train={len(self.train)}, validation={len(self.validation)}, "
            f"test={len(self.test)} cells, test_conditions=[{tc}]{groups})"
        )


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars and arrays, tuples and mappings made JSON-ready (numbers, lists, dicts)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
