"""Held-out splits of a Perturb-seq screen: perturbations, combinations, batches, time points and media.

Evaluation never uses random cell splits: a random split puts cells of every perturbation into training, so
the "held-out" cells are predicted from their own condition. Every split here holds out whole conditions (or
the perturbed cells of whole batches, time points or media); only the validation set is a random subset of
the training cells.

Modules: :mod:`._result` (:class:`Split`), :mod:`._choice` (what each kind of split holds out) and :mod:`._make`
(:func:`split` and its steps, :func:`leave_one_out`).
"""

from __future__ import annotations

from ._make import leave_one_out, split
from ._result import Split

__all__ = ["Split", "leave_one_out", "split"]
