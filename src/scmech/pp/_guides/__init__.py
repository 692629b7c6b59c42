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

from ._assign import assign_guides

__all__ = ["assign_guides"]
