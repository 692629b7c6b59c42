"""Training SemiMechVI on an h5ad larger than the memory given to the process (backed AnnData).

Writes a 10^6-cell x 2,000-gene sparse h5ad to a temporary folder, block by block (the simulated 2,000-cell screen
of ``speed.py`` resampled with replacement), then in subprocesses capped with ``RLIMIT_AS`` (virtual memory,
like ``ulimit -v``, set after the libraries are imported) to their import footprint plus less than the size of
the data in memory:

1. loads the file into memory (``anndata.read_h5ad(path)``): expected to fail under the cap, which shows that the
   cap binds;
2. opens it backed (``anndata.read_h5ad(path, backed="r")``), registers it, trains a few hundred minibatches and
   predicts: minibatches are read from disk, the input checks and the post-training pseudobulks read the file in
   blocks of rows, so memory is bounded by block and minibatch size, not by the number of cells.

The peak resident set size of each process is recorded, the file is deleted afterwards, and the results go into
a section of ``benchmarks/results/speed.md`` and ``benchmarks/results/backed.csv`` (``*_quick.*`` with ``--quick``).

Run from the repository root (after ``speed.py``, whose results file it extends)::

    python benchmarks/backed.py            # 10^6 cells, 300 steps (several minutes; about 5 GB of temporary disk)
    python benchmarks/backed.py --quick    # 10^5 cells, 50 steps
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import single_thread
from speed import BATCH_SIZE, N_GENES, ONE_THREAD, RESULTS, SETUP, WIDTH, _maxrss_mb

BEGIN, END = "<!-- backed:begin -->", "<!-- backed:end -->"
#: memory the process may allocate beyond what its libraries (torch, scvi-tools, scmech) take after import
CAP_GB = 2.0


def write_backed(path: Path, n_cells: int, block: int = 100_000, seed: int = 0) -> dict:
    """Write an ``n_cells`` x 2,000 CSR h5ad block by block (never the whole matrix in memory)."""
    import anndata as ad
    import h5py
    import pandas as pd
    import scipy.sparse as sp

    import scmech

    base = scmech.data.simulate_perturbseq(n_cells=2000, n_genes=N_GENES, n_perturbations=50, n_combinations=0, seed=0)
    x = sp.csr_matrix(base.X, dtype=np.float32)
    idx = np.sort(np.random.default_rng(seed).integers(0, base.n_obs, n_cells))
    obs = base.obs.iloc[idx].reset_index(drop=True)
    obs.index = pd.Index([f"cell{i}" for i in range(n_cells)])
    ad.AnnData(obs=obs, var=base.var.copy()).write_h5ad(path)
    nnz = 0
    with h5py.File(path, "a") as f:
        for start in range(0, n_cells, block):
            chunk = x[idx[start : start + block]]
            nnz += chunk.nnz
            if start == 0:
                ad.io.write_elem(f, "X", chunk)
            else:
                ad.io.sparse_dataset(f["X"]).append(chunk)
    in_memory = nnz * 8 + (n_cells + 1) * 8  # float32 values, int32 indices, int64 indptr
    return {
        "n_cells": n_cells,
        "nnz": nnz,
        "file_gb": path.stat().st_size / 2**30,
        "csr_in_memory_gb": in_memory / 2**30,
        "dense_gb": n_cells * N_GENES * 4 / 2**30,
    }


def _imports() -> None:
    import anndata  # noqa: F401
    import scvi  # noqa: F401

    import scmech.model  # noqa: F401

    single_thread("lightning.fabric")


def _cap(gb: float) -> float:
    """Cap the virtual memory at its current size (the libraries loaded) plus ``gb``; return the cap in GB."""
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    limit = int(vm + gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return limit / 2**30


def child_load(path: str, cap: float) -> dict:
    """Load the whole file into memory under the cap."""
    _imports()
    _cap(cap)
    import anndata as ad

    t = time.perf_counter()
    try:
        adata = ad.read_h5ad(path)
        return {"loaded": True, "seconds": time.perf_counter() - t, "peak_rss_mb": _maxrss_mb(), "shape": adata.shape}
    except MemoryError as e:
        return {"loaded": False, "error": f"MemoryError {e}"[:200], "peak_rss_mb": _maxrss_mb()}


def train_backed(path: str, steps: int, *, batch_size: int = BATCH_SIZE, n_predict: int = 10) -> dict:
    """Open ``path`` backed, register it, train ``steps`` minibatches and predict; times and resident memory."""
    import anndata as ad
    import scvi

    from scmech.model import SemiMechVI

    out = {}
    scvi.settings.seed = 0
    t = time.perf_counter()
    adata = ad.read_h5ad(path, backed="r")
    out["open_s"] = time.perf_counter() - t
    out["rss_after_open_mb"] = _maxrss_mb()
    t = time.perf_counter()
    SemiMechVI.setup_anndata(adata, **SETUP)
    out["setup_s"] = time.perf_counter() - t
    model = SemiMechVI(adata, **WIDTH)
    t = time.perf_counter()
    model.train(max_epochs=1, max_steps=steps, batch_size=batch_size, train_size=1.0, enable_progress_bar=False)
    out["train_s"] = time.perf_counter() - t
    out["rss_after_train_mb"] = _maxrss_mb()
    t = time.perf_counter()
    pred = model.predict(list(model.trained_targets_[:n_predict]))
    out["predict_s"] = time.perf_counter() - t
    out["predict_shape"] = list(pred.shape)
    out["steps"] = steps
    out["peak_rss_mb"] = _maxrss_mb()
    adata.file.close()
    return out


def child_train(path: str, cap: float, steps: int) -> dict:
    """Open backed, register, train ``steps`` minibatches and predict, under the cap."""
    _imports()
    out = {"rss_after_imports_mb": _maxrss_mb(), "as_limit_gb": _cap(cap)}
    return {**out, **train_backed(path, steps)}


def spawn(script: str, args: list[str]) -> dict:
    """Run ``script`` with ``args`` in a one-thread child process; return the JSON of its last output line."""
    cmd = [sys.executable, script, *args]
    p = subprocess.run(cmd, env={**os.environ, **ONE_THREAD}, capture_output=True, check=False)
    out = p.stdout.decode().strip().splitlines()
    if p.returncode != 0 or not out:
        msg = f"child {args} failed (exit {p.returncode}):\n{p.stderr.decode()[-3000:]}"
        raise RuntimeError(msg)
    return json.loads(out[-1])


def _spawn(args: list[str]) -> dict:
    return spawn(__file__, args)


def run(quick: bool) -> None:
    """Write the file, run the capped children, record the results."""
    import pandas as pd

    n_cells, steps = (100_000, 50) if quick else (1_000_000, 300)
    cap = 0.4 if quick else CAP_GB
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "screen.h5ad"
        info = write_backed(path, n_cells)
        info["write_s"] = time.perf_counter() - t0
        print(f"wrote {info}", flush=True)
        load = _spawn(["--child", "load", "--path", str(path), "--cap", str(cap)])
        print(f"in memory under {cap} GB: {load}", flush=True)
        train = _spawn(["--child", "train", "--path", str(path), "--cap", str(cap), "--steps", str(steps)])
        print(f"backed under {cap} GB: {train}", flush=True)
    row = {**info, "cap_gb": cap, "in_memory_load_ok": load["loaded"], **{f"backed_{k}": v for k, v in train.items()}}
    row["minutes"] = (time.perf_counter() - t0) / 60
    suffix = "_quick" if quick else ""
    RESULTS.mkdir(exist_ok=True)
    pd.DataFrame([row]).to_csv(RESULTS / f"backed{suffix}.csv", index=False)
    write_section(row, quick)


def write_section(row: dict, quick: bool) -> None:
    """Write (or replace) the backed section of ``speed.md`` from one result row."""
    import pandas as pd

    suffix = "_quick" if quick else ""
    n_cells, cap, steps = int(row["n_cells"]), float(row["cap_gb"]), int(row["backed_steps"])
    info = {k: row[k] for k in ("nnz", "file_gb", "csr_in_memory_gb", "dense_gb")}
    train = {k.removeprefix("backed_"): v for k, v in row.items() if k.startswith("backed_")}
    load = {"loaded": bool(row["in_memory_load_ok"])}
    minutes = "" if pd.isna(row.get("minutes", np.nan)) else f"{row['minutes']:.1f} min, "
    section = [
        BEGIN,
        "## Data larger than memory (backed h5ad)",
        "",
        f"Command: `python benchmarks/backed.py{' --quick' if quick else ''}` "
        f"({minutes}on the same shared machine as the timings above).",
        "",
        f"A {n_cells:,}-cell x {N_GENES:,}-gene sparse h5ad ({info['nnz'] / n_cells:.0f} stored values per cell; "
        f"{info['file_gb']:.2f} GB on disk, {info['csr_in_memory_gb']:.2f} GB as an in-memory CSR matrix, "
        f"{info['dense_gb']:.1f} GB dense) was written block by block to a temporary folder (deleted afterwards). "
        "Each process imported torch, scvi-tools and scmech, then capped its virtual memory (`RLIMIT_AS`, as "
        f"`ulimit -v`) at its size after the imports plus {cap:g} GB (a cap on the whole process would also have "
        "to hold the address space the libraries reserve, about 1-2 GB of virtual memory):",
        "",
        f"- loading it into memory (`anndata.read_h5ad(path)`): "
        f"{'succeeded (the cap did not bind)' if load['loaded'] else 'failed with MemoryError, as intended'};",
        f"- backed (`anndata.read_h5ad(path, backed='r')`): `SemiMechVI.setup_anndata` "
        f"{train['setup_s']:.0f} s (input checks read the file in blocks of 10,000 rows), {steps} training "
        f"minibatches of {BATCH_SIZE} cells plus the post-training pseudobulks (read in blocks) "
        f"{train['train_s']:.0f} s, `predict` of 10 conditions {train['predict_s']:.1f} s; "
        f"peak resident memory {train['peak_rss_mb']:.0f} MB "
        f"({train['rss_after_imports_mb']:.0f} MB after the imports, "
        f"{train['rss_after_open_mb']:.0f} MB after opening the file, "
        f"{train['rss_after_train_mb']:.0f} MB after training).",
        "",
        "scvi-tools 1.4.2 reads minibatches of backed AnnData itself (`AnnTorchDataset` indexes anndata's "
        "on-disk sparse datasets with sorted row indices); scmech adds block-wise input checks "
        "(`scmech.data._checks`), a lazy row selection of the backed matrix for its pseudobulks "
        "(`BackedRows`) and block-wise pseudobulk sums, so that nothing loads the whole matrix. "
        "`obs` is held in memory (about 100 bytes per cell here). Reading random minibatches from disk is slower "
        "than from memory; use it when the data do not fit.",
        END,
    ]
    md = RESULTS / f"speed{suffix}.md"
    text = md.read_text() if md.exists() else "# Speed and memory: SemiMechVI vs scvi-tools' SCVI\n"
    if BEGIN in text:
        text = text[: text.index(BEGIN)] + text[text.index(END) + len(END) + 1 :]
    md.write_text(text.rstrip("\n") + "\n\n" + "\n".join(section) + "\n")
    print(f"wrote {md}")


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10^5 cells, 50 steps")
    parser.add_argument("--report-only", action="store_true", help="rewrite the section from the saved csv file")
    parser.add_argument("--child", choices=("load", "train"), help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--cap", type=float, default=CAP_GB, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=300, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "load":
        print(json.dumps(child_load(args.path, args.cap), default=str))
    elif args.child == "train":
        print(json.dumps(child_train(args.path, args.cap, args.steps), default=str))
    elif args.report_only:
        import pandas as pd

        row = pd.read_csv(RESULTS / f"backed{'_quick' if args.quick else ''}.csv").iloc[0].to_dict()
        write_section(row, args.quick)
    else:
        run(args.quick)


if __name__ == "__main__":
    main()
