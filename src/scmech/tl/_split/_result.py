"""The result of a held-out split: :class:`Split`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Split"]


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

    @property
    def external_indexing(self) -> list[np.ndarray]:
        """``[train, validation, test]`` for ``model.train(datasplitter_kwargs={"external_indexing": ...})``."""
        return [self.train, self.validation, self.test]

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
            "params": dict(self.params),
        }

    def __repr__(self) -> str:
        tc = ", ".join(self.test_conditions[:6]) + (" ..." if len(self.test_conditions) > 6 else "")
        groups = f", test_groups={self.test_groups}" if self.test_groups else ""
        return (
            f"Split(kind={self.kind!r}, train={len(self.train)}, validation={len(self.validation)}, "
            f"test={len(self.test)} cells, test_conditions=[{tc}]{groups})"
        )
