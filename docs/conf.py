"""Sphinx configuration of the scmech documentation.

Build with ``make docs`` (``sphinx-build -W --keep-going -b html docs docs/_build/html``). At the start of the
build this file writes ``docs/generated/`` (ignored by git):

- ``generated/api/``: one autosummary page per public namespace, listing what its ``__all__`` exports, so
  new functions appear without editing the docs;
- ``generated/benchmarks/``: one page per ``benchmarks/results/*.md``, which *includes* the result file
  (the results change with every benchmark run; nothing is copied into the docs sources);
- ``generated/tutorials/``: the jupytext percent scripts of ``tutorials/`` as notebooks, executed by myst-nb.

Environment variables: ``SCMECH_DOCS_EXECUTE`` sets myst-nb's execution mode (``cache``, the default, runs a
tutorial again only when its code changed; ``force``; ``off`` renders the tutorials without outputs).
"""

from __future__ import annotations

import importlib
import os
from datetime import date
from importlib.metadata import version as _version
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GENERATED = HERE / "generated"

# ---------------------------------------------------------------------------- project
project = "scmech"
author = "scmech developers"
copyright = f"{date.today().year}, {author}"
release = _version("scmech")
version = ".".join(release.split(".")[:2])

# ---------------------------------------------------------------------------- extensions
extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints", "README.md"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
nitpicky = True

# names from other packages (no intersphinx: the build works offline) and type aliases in signatures
nitpick_ignore_regex = [
    # other packages (no intersphinx, so that the build works offline)
    (
        r"py:.*",
        r"(anndata|ad|mudata|md|numpy|np|pandas|pd|scipy|sp|torch|scvi|lightning|matplotlib|mpl|scanpy|sc"
        r"|pertpy|rich|sklearn|jax|collections|typing|pathlib|os|abc|enum|dataclasses)(\..*)?",
    ),
    # bare type names in signatures and docstrings
    (r"py:class", r"(?!scmech\.).*"),
    # private modules and objects of scmech: the public path is documented instead
    (r"py:.*", r"scmech(\.\w+)*\._\w+.*"),
    # attributes listed in numpydoc "Attributes" sections have no targets of their own
    (r"py:attr", r".*"),
]

# ---------------------------------------------------------------------------- autodoc, numpydoc
autosummary_generate = True
autodoc_member_order = "groupwise"
autodoc_typehints = "signature"
autodoc_default_options = {"show-inheritance": False}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
# numpydoc's checks of every docstring autodoc renders; a failure is a warning, so an error of ``make docs``.
# All checks but: ES01, EX01 and SA01 (extended summary, examples, See Also: sections not every object needs);
# PR04 (parameter types: they are the signatures' annotations); RT03, RT04 and RT05 (a Returns section here is
# prose without a type line, which numpydoc reads as a type without a description, then checks its capitals and
# periods).
numpydoc_validation_checks = {"all", "ES01", "EX01", "SA01", "PR04", "RT03", "RT04", "RT05"}
numpydoc_validation_exclude = {
    # methods inherited unchanged from scvi-tools' mixins: their docstrings are scvi-tools' own
    r"^scmech\.model\.\w+\.(posterior_predictive_sample|get_importance_weights|differential_expression)$",
    r"^scmech\.model\.\w+\.(get_latent_representation|get_reconstruction_error)$",
}

# ---------------------------------------------------------------------------- MyST, myst-nb
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist", "substitution"]
myst_heading_anchors = 3
nb_execution_mode = os.environ.get("SCMECH_DOCS_EXECUTE", "cache")
nb_execution_cache_path = str(HERE / "_build" / ".jupyter_cache")
nb_execution_timeout = 900
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True
nb_output_stderr = "remove"

# ---------------------------------------------------------------------------- HTML
html_theme = "sphinx_book_theme"
html_title = "scmech"
html_static_path: list[str] = []
html_theme_options = {
    "repository_url": "https://github.com/scmech/scmech",
    "use_repository_button": False,
    "show_toc_level": 2,
    "navigation_with_keys": False,
}

# ---------------------------------------------------------------------------- generated pages
#: public namespaces documented in the API reference, with a one-line description
API_NAMESPACES = {
    "scmech.model": "The model: SemiMechVI",
    "scmech.module": "Torch modules: measurement operator, latent dynamics, SemiMechVAE",
    "scmech.train": "Training plan and minibatch samplers",
    "scmech.data": "Experimental design, registration fields, pseudobulks and the simulator",
    "scmech.datasets": "Bundled datasets",
    "scmech.pp": "Preprocessing",
    "scmech.tl": "Tools: splits, baselines, metrics, error decomposition, design",
    "scmech.pl": "Plots",
}


def _write(path: Path, text: str) -> None:
    """Write ``text`` only when it changed, so that Sphinx and the execution cache see unchanged files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _public_names(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    names = list(getattr(module, "__all__", []))
    # skip plain data (tuples of names, constants): autosummary documents classes and functions
    out = []
    for name in names:
        try:
            obj = getattr(module, name)
        except (AttributeError, ImportError):  # an optional backend that is not installed
            continue
        if callable(obj) or isinstance(obj, type):
            out.append(name)
    return sorted(out, key=lambda n: (not isinstance(getattr(module, n), type), n.lower()))


def _constants(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    return [n for n in getattr(module, "__all__", []) if n.isupper() and not callable(getattr(module, n, None))]


def write_api_pages() -> None:
    """One page per namespace with an autosummary table of everything in its ``__all__``."""
    for module_name, title in API_NAMESPACES.items():
        names = _public_names(module_name)
        lines = [
            module_name,
            "=" * len(module_name),
            "",
            f"*{title}.*",
            "",
            f".. automodule:: {module_name}",
            "   :no-members:",
            "",
            f".. currentmodule:: {module_name}",
            "",
        ]
        if names:
            lines += [".. autosummary::", "   :toctree: .", "   :nosignatures:", ""]
            lines += [f"   {n}" for n in names]
            lines.append("")
        else:
            lines += ["Nothing is exported yet.", ""]
        consts = _constants(module_name)
        if consts:
            lines += ["Constants", "---------", ""]
            for c in consts:
                value = getattr(importlib.import_module(module_name), c)
                lines += [f".. py:data:: {c}", f"   :value: {value!r}", ""]
        _write(GENERATED / "api" / f"{module_name}.rst", "\n".join(lines))


def write_benchmark_pages() -> None:
    """One page per result file of ``benchmarks/results/``, including (not copying) the file."""
    results = ROOT / "benchmarks" / "results"
    out = GENERATED / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    wanted = set()
    for md in sorted(results.glob("*.md")):
        rel = os.path.relpath(md, out)
        page = out / md.name
        wanted.add(page.name)
        _write(page, f"```{{include}} {rel}\n:relative-images:\n:relative-docs: ../..\n```\n")
    figures = sorted((results / "figures").glob("*.png"))
    if figures:
        lines = [
            "# Benchmark figures",
            "",
            "Every figure of `benchmarks/results/figures/`, as the benchmark scripts",
            "last wrote it.",
            "",
        ]
        for fig in figures:
            rel = os.path.relpath(fig, out)
            lines += [f"## `{fig.name}`", "", f"```{{image}} {rel}", f":alt: {fig.stem}", ":width: 100%", "```", ""]
        _write(out / "zz_figures.md", "\n".join(lines))
        wanted.add("zz_figures.md")
    for stale in out.glob("*.md"):
        if stale.name not in wanted:
            stale.unlink()


def write_tutorial_notebooks() -> None:
    """Convert the percent scripts of ``tutorials/`` into notebooks for myst-nb to execute and render."""
    import jupytext

    out = GENERATED / "tutorials"
    out.mkdir(parents=True, exist_ok=True)
    wanted = set()
    for script in sorted((ROOT / "tutorials").glob("*.py")):
        nb = jupytext.read(script, fmt="py:percent")
        nb.metadata.pop("jupytext", None)
        name = f"{script.stem}.ipynb"
        wanted.add(name)
        _write(out / name, jupytext.writes(nb, fmt="ipynb"))
    for stale in out.glob("*.ipynb"):
        if stale.name not in wanted:
            stale.unlink()


write_api_pages()
write_benchmark_pages()
write_tutorial_notebooks()


def _strip_citations(app, what, name, obj, options, lines):
    """Docstrings inherited from scvi-tools cite its bibliography (``:cite:p:`key```); show ``[key]`` instead."""
    import re

    for i, line in enumerate(lines):
        lines[i] = re.sub(r":cite:[pt]?:`([^`]+)`", r"[\1]", line)


def setup(app):
    app.connect("autodoc-process-docstring", _strip_citations, priority=100)
