"""Parameter descriptions shared by many docstrings, written once.

The same keyword arguments come back in many public signatures: where the experimental design lives in
``adata.obs`` (``perturbation_key``, ``control_label``, ``separator``, ``unassigned_label``, ``batch_key``,
``time_key``, ``media_key``, ...), which matrix holds the expression (``layer``, ``counts``) and the plotting
conventions of ``scmech.pl`` (``ax``, ``show``, ``save``). Their descriptions live in :data:`PARAMS`. A
docstring names the parameter as usual and writes ``%(name)s`` where its description goes, e.g. in the
``Parameters`` section of :func:`scmech.tl.split`::

    perturbation_key
        %(perturbation_key)s
    batch_key
        %(batch_key)s Required for ``kind="batch"``.

and the function (or class) is decorated with :func:`fill_doc`, which puts the text in when the module is
imported; ``help()`` and the API reference show the filled text. Text after a placeholder (on its line or on the
next ones) stays, so that a function adds what is particular to it. Where a function means something else by a
parameter of the same name (``control_label`` of :func:`scmech.pp.assign_guides` is the label it *writes*), its
docstring keeps a description of its own; where signatures differ, a parameter has two entries
(``control_label``, one label or several, and ``single_control_label`` for signatures that take one).

Why a small decorator rather than docrep's ``DocstringProcessor`` (scvi-tools' ``scvi.utils.setup_anndata_dsp``):

- only fixed descriptions are shared here; docrep's main feature, reusing sections extracted from other docstrings
  (``get_sections``, ``keep_params``), would go unused;
- docrep formats the whole docstring with Python's ``%`` operator: a literal ``%`` (``"10 %"``, written in some
  docstrings here) goes through its escaping fallback, and a misspelt placeholder only warns and stays in the
  docs. :func:`fill_doc` touches nothing but the ``%(name)s`` placeholders of :data:`PARAMS` and raises on an
  unknown name at import, so that a typo cannot reach the docs;
- a multi-line description needs no indentation argument (docrep's ``with_indent(n)``, or ``dedent``, which
  re-indents the whole docstring): continuation lines are indented like the placeholder's line;
- no new direct dependency (docrep comes only with scvi-tools).
"""

from __future__ import annotations

import re
from inspect import cleandoc
from typing import TypeVar

__all__ = ["PARAMS", "fill_doc"]

_T = TypeVar("_T")

#: description of each shared parameter: the text after the parameter's name in a numpydoc ``Parameters`` section
PARAMS: dict[str, str] = {
    # ------------------------------------------------------------------ the experimental design in ``adata.obs``
    "perturbation_key": cleandoc(
        """
        ``obs`` column with perturbation labels (targets, ``A+B`` combinations, control and unassigned labels).
        """
    ),
    "control_label": "Label (or labels) of non-targeting controls.",
    # functions whose signature takes one control label
    "single_control_label": "Label of non-targeting control cells.",
    "separator": "Separator between the targets of a combination.",
    "unassigned_label": "Label (or labels) of cells without a usable guide call.",
    "batch_key": "``obs`` column with the wet-lab batch (lane, replicate).",
    "time_key": "``obs`` column with the time since perturbation (numeric, ``>= 0``).",
    "media_key": "``obs`` column with the medium or condition.",
    "media_time_key": "``obs`` column with the time of the switch into the medium, on the clock of ``time_key``.",
    "efficacy_key": "``obs`` column with the knock-down efficacy in ``[0, 1]``.",
    "guide_key": "``obs`` column with the guide identity.",
    # ------------------------------------------------------------------ the expression matrix
    # ------------------------------------------------------------------ registration of a model (setup_anndata/mudata)
    "size_factor_key": "``obs`` column of library sizes used instead of total counts.",
    "categorical_covariate_keys": "Further categorical measurement covariates (``obs`` columns).",
    "continuous_covariate_keys": "Further continuous measurement covariates (``obs`` columns).",
    "gene_embedding_key": cleandoc(
        """
        ``varm`` key of a gene embedding used to predict targets never perturbed in training; by default
        the principal components of the training pseudobulk.
        """
    ),
    "gene_symbols": cleandoc(
        """
        ``var`` column with the gene names the perturbations are labelled by, for data whose ``var_names``
        are other identifiers (Ensembl); a target's own gene is the gene of that name. ``None``: ``var_names``.
        """
    ),
    "perturbation_modality": cleandoc(
        """
        ``"CRISPRko"``, ``"CRISPRi"`` or ``"CRISPRa"``: how the perturbations act on their target's own
        mRNA (lowered or raised). It fixes the sign of the own-gene effect predicted for targets without
        training cells; ``None`` takes the sign from the training targets.
        """
    ),
    "layer": "Layer with the counts; ``X`` when ``None``.",
    "counts": cleandoc(
        """
        Whether the matrix holds raw counts (checked: non-negative integers); ``False`` for log-normalised values,
        which are averaged as they are.
        """
    ),
    # ------------------------------------------------------------------ plots (``scmech.pl``)
    "ax": "Axes to draw into; a new figure when ``None``.",
    "show": "Call :func:`matplotlib.pyplot.show` (and return ``None``) when ``True``.",
    "save": cleandoc(
        """
        Path to save the figure to (the suffix sets the format), or ``True`` for scanpy's figure directory
        (``scanpy.settings.figdir``).
        """
    ),
}

_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def _fill(docstring: str, owner: str) -> str:
    """Replace each ``%(name)s`` of ``docstring`` by ``PARAMS[name]``, continuation lines indented like it."""
    lines = []
    for line in docstring.split("\n"):
        indent = line[: len(line) - len(line.lstrip())]

        def _text(match: re.Match[str], indent: str = indent) -> str:
            name = match.group(1)
            if name not in PARAMS:
                msg = f"The docstring of {owner} uses %({name})s, which is not a shared parameter of scmech._docs."
                raise KeyError(msg)
            return PARAMS[name].replace("\n", "\n" + indent)

        lines.append(_PLACEHOLDER.sub(_text, line))
    return "\n".join(lines)


def fill_doc(obj: _T) -> _T:
    """Fill the ``%(name)s`` placeholders of a function's or class's docstring from :data:`PARAMS`.

    Parameters
    ----------
    obj
        The function, method or class; its ``__doc__`` is rewritten in place (nothing else changes).

    Returns
    -------
    ``obj`` itself, so that ``fill_doc`` works as a decorator.
    """
    if obj.__doc__:  # None under ``python -OO``
        obj.__doc__ = _fill(obj.__doc__, getattr(obj, "__qualname__", repr(obj)))
    return obj
