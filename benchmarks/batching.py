"""Minibatch strategies compared on a simulator with a strong batch effect.

``SemiMechVI.train(batching=...)`` with ``"random"`` (scvi-tools' default loader), ``"batch_matched"`` (every
minibatch draws perturbed cells and controls from one wet-lab batch) and ``"error_guided"`` (perturbations
re-weighted by their running reconstruction error). Two designs with a large batch effect (``batch_sd=0.6``,
4 batches): ``spread`` (every condition in every batch) and ``controls_missing`` (no controls in the last
batch). Errors of the model's own predictions (``anchor="none"``) of the change vs the control, against the
simulator's noise-free truth, for perturbations seen in training and for held-out ones.

Run from the repository root::

    python benchmarks/batching.py           # 2 seeds, writes benchmarks/results/batching.{md,csv}
    python benchmarks/batching.py --quick   # 1 seed, fewer epochs (smoke test)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scvi

import scmech
from scmech.model import SemiMechVI

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import single_thread
from model_claims import RESULTS, SETUP, _delta_scores, _frame

STRATEGIES = ("random", "batch_matched", "error_guided")
DESIGNS = ("spread", "controls_missing")


def run(seeds, epochs, n_cells) -> pd.DataFrame:
    rows = []
    for design in DESIGNS:
        for seed in seeds:
            adata = scmech.data.simulate_perturbseq(
                n_cells=n_cells,
                n_genes=200,
                n_perturbations=20,
                n_combinations=0,
                n_batches=4,
                batch_sd=0.6,
                design=design,
                seed=seed,
            )
            split = scmech.tl.split(adata, "perturbation", test_size=0.2, random_state=seed)
            truth = adata.uns["truth"]["mean_log"]
            ctrl_truth = truth.loc["NT|m0"].to_numpy()
            seen = [c for c in adata.obs["perturbation"].cat.categories if c != "NT" and c not in split.test_conditions]
            for strategy in STRATEGIES:
                scvi.settings.seed = seed
                b = adata.copy()
                SemiMechVI.setup_anndata(b, **SETUP)
                model = SemiMechVI(b)
                t0 = time.perf_counter()
                model.train(
                    max_epochs=epochs,
                    batching=strategy,
                    enable_progress_bar=False,
                    datasplitter_kwargs={"external_indexing": [split.train, np.array([], dtype=int), split.test]},
                )
                secs = time.perf_counter() - t0
                frame = _frame(model.predict([*seen, *split.test_conditions, "NT"], n_cells=400, anchor="none"))
                for cond in [*seen, *split.test_conditions]:
                    scores = _delta_scores(
                        frame.loc[cond].to_numpy(),
                        truth.loc[f"{cond}|m0"].to_numpy(),
                        frame.loc["NT"].to_numpy(),
                        ctrl_truth,
                    )
                    rows.append(
                        {
                            "design": design,
                            "seed": seed,
                            "batching": strategy,
                            "condition": cond,
                            "held_out": cond in split.test_conditions,
                            "train_seconds": secs,
                            **scores,
                        }
                    )
                print(f"{design} seed {seed} {strategy}: {secs:.0f} s", flush=True)
    return pd.DataFrame(rows)


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    per_seed = (
        df.groupby(["design", "held_out", "batching", "seed"])[["mse_delta", "pearson_delta", "train_seconds"]]
        .mean()
        .reset_index()
    )
    out = per_seed.groupby(["design", "held_out", "batching"]).agg(
        mse_delta=("mse_delta", "mean"),
        mse_delta_sd=("mse_delta", "std"),
        pearson_delta=("pearson_delta", "mean"),
        train_seconds=("train_seconds", "mean"),
    )
    return out.reset_index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    single_thread()
    seeds, epochs, n_cells = ((0,), 8, 3000) if args.quick else ((0, 1), 20, 4000)
    t0 = time.perf_counter()
    df = run(seeds, epochs, n_cells)
    suffix = "_quick" if args.quick else ""
    RESULTS.mkdir(parents=True, exist_ok=True)
    df.to_csv(RESULTS / f"batching{suffix}.csv", index=False)
    summary = summarise(df)
    cmd = "python benchmarks/batching.py" + (" --quick" if args.quick else "")
    lines = [
        "# Minibatch strategies under a strong batch effect",
        "",
        f"Made by `{cmd}` ({(time.perf_counter() - t0) / 60:.0f} min; seeds {list(seeds)}, {epochs} epochs, "
        f"{n_cells} cells, 200 genes, 20 single perturbations of which 20 % held out, 4 batches, batch_sd 0.6).",
        "Scores of the model's own predictions (`anchor='none'`) of the change vs the control against the",
        "simulator's noise-free truth; mean over conditions per seed, then mean (sd) over seeds. Training time is",
        "wall clock on a shared machine (compare within a row group only).",
        "",
        "| design | conditions | batching | MSE delta (sd) | Pearson delta | train s |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in summary.itertuples():
        sd = "" if np.isnan(r.mse_delta_sd) else f" ({r.mse_delta_sd:.4f})"
        lines.append(
            f"| {r.design} | {'held out' if r.held_out else 'seen'} | {r.batching} | {r.mse_delta:.4f}{sd} | "
            f"{r.pearson_delta:.3f} | {r.train_seconds:.0f} |"
        )
    (RESULTS / f"batching{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
