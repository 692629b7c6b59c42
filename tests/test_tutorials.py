"""The tutorials execute from top to bottom, and the documentation lists them and every key scmech writes.

Each tutorial in ``tutorials/`` (a jupytext percent script) is converted to a notebook and run in a fresh
kernel with nbclient, as the documentation build does. Set ``SCMECH_TUTORIALS_OUT`` to a folder to keep the
executed notebooks (with their figures) there.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("[0-9]*.py"))
DOCS = ROOT / "docs"


def test_there_are_tutorials():
    assert [p.stem for p in TUTORIALS][:3] == ["01_quickstart", "02_planning_a_screen", "03_dynamics"]


@pytest.mark.slow
@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_executes(path, tmp_path, monkeypatch):
    jupytext = pytest.importorskip("jupytext", reason="the docs extra runs the tutorials")
    nbclient = pytest.importorskip("nbclient", reason="the docs extra runs the tutorials")
    import nbformat

    # the kernel inherits the environment: keep matplotlib's inline backend (figures in the outputs) and one
    # thread per library, as the tutorials do for torch
    monkeypatch.delenv("MPLBACKEND", raising=False)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(var, "1")
    nb = jupytext.read(path, fmt="py:percent")
    client = nbclient.NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    t0 = time.perf_counter()
    client.execute()  # raises CellExecutionError with the failing cell and its traceback
    took = time.perf_counter() - t0
    n_figures = sum(
        "image/png" in out.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )
    assert n_figures >= 3, f"{path.name} made only {n_figures} figures"
    out = os.environ.get("SCMECH_TUTORIALS_OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, Path(out) / f"{path.stem}.ipynb")
    print(f"{path.name}: {took:.0f} s, {n_figures} figures")


def test_docs_list_every_tutorial():
    toc = (DOCS / "tutorials.md").read_text()
    for path in TUTORIALS:
        assert f"generated/tutorials/{path.stem}" in toc, f"docs/tutorials.md does not list {path.name}"


def test_keys_page_lists_every_key_scmech_writes():
    from scmech._constants import GUIDE_SUMMARY_SUFFIXES, SCMECH_ADATA_KEYS

    page = (DOCS / "keys.md").read_text()
    # assign_guides' summary columns follow its key_added prefix, by default "scmech"
    keys = [*SCMECH_ADATA_KEYS, *(f"{SCMECH_ADATA_KEYS.UNS}{s}" for s in GUIDE_SUMMARY_SUFFIXES)]
    missing = [key for key in keys if f"`{key}`" not in page and f'"{key}"' not in page]
    assert not missing, f"docs/keys.md does not document {missing}"
