"""Does the Papalexi result hold on other gene sets, cells and splits? The checks an independent reviewer runs.

The leaderboard of ``benchmarks/accuracy.py`` uses every gene and cell of the bundled screen and seed-shuffled
thirds of the measured targets. A reviewer recomputes it on other choices; this script runs the same harness
(:func:`accuracy.run_regime`: every model through ``setup_anndata``, ``train`` with the split's
``external_indexing``, ``predict`` and :func:`scmech.tl.evaluate`) on four variants of Papalexi 2021, 3 seeds
each (the seed draws the genes, cells and held-out targets, and initialises SemiMechVI; 30 epochs):

``genes120``
    120 random genes that keep 4 of the 9 measured target genes; held out: 3 targets whose gene is kept and 2 whose
    gene was dropped (now unmeasured targets).
``hvg100``
    The 100 most variable genes (``scanpy.pp.highly_variable_genes``, ``flavor="seurat_v3"`` on counts), which keep
    few target genes; 4 of the 9 measured targets held out.
``cells30``
    30 % of the cells drawn at random; 3 measured targets held out.
``leave_one_out``
    Each of 4 random measured targets held out alone (:func:`scmech.tl.leave_one_out`).

Models: SemiMechVI (and the model alone, ``anchor="none"``), ``TrainMean``, ``WeightedTrainMean``
(``TrainMean(weighting="precision")``), ``OwnGene``, ``WeightedOwnGene`` (``OwnGene(weighting="precision")``) and
``TargetClassMean``; the linear model is left out, as it
cannot embed targets whose gene is not in the panel. Scores: P20 on t-test DE genes (``pearson_delta_de``) and on
the 20 genes of largest |observed change| (``pearson_delta_top_change``), CR (``systema_pearson_delta``) and CR
without the own gene (``systema_pearson_delta_off``).

Run ``python benchmarks/variants.py`` (about 15 minutes on 2 cores). Writes
``benchmarks/results/variants.{csv,md}``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from _common import md_table, single_thread
from accuracy import KEYS, _factories, run_regime

import scmech
from scmech.model._observations import log_pseudobulk

RESULTS = Path(__file__).resolve().parent / "results"
MEASURED = ("CMTM6", "IFNGR2", "JAK2", "NFKBIA", "STAT1", "STAT2", "STAT3", "TNFRSF14", "UBE2L6")
VARIANTS = ("genes120", "hvg100", "cells30", "leave_one_out")
METRICS = ("pearson_delta_de", "pearson_delta_top_change", "systema_pearson_delta", "systema_pearson_delta_off")
MODELS = (
    "SemiMechVI",
    "SemiMechVI_alone",
    "WeightedTrainMean",
    "TrainMean",
    "OwnGene",
    "WeightedOwnGene",
    "TargetClassMean",
)
SETUP = {**KEYS, "batch_key": "bio_rep", "perturbation_modality": "CRISPRko"}


def variant(name: str, seed: int) -> tuple:
    """The screen of one variant and seed, and its splits."""
    adata = scmech.datasets.papalexi2021()
    rng = np.random.default_rng(seed)
    genes = list(map(str, adata.var_names))
    if name == "genes120":
        kept = list(rng.choice(MEASURED, 4, replace=False))
        others = [g for g in genes if g not in MEASURED]
        chosen = set(kept) | set(rng.choice(others, 116, replace=False))
        adata = adata[:, [g for g in genes if g in chosen]].copy()
        dropped = [t for t in MEASURED if t not in kept]
        held = sorted([*rng.choice(kept, 3, replace=False), *rng.choice(dropped, 2, replace=False)])
        return adata, [scmech.tl.split(adata, "perturbation", test_conditions=held, random_state=seed, **KEYS)]
    if name == "hvg100":
        sc.pp.highly_variable_genes(adata, flavor="seurat_v3", n_top_genes=100)
        adata = adata[:, adata.var["highly_variable"].to_numpy()].copy()
        held = sorted(rng.choice(MEASURED, 4, replace=False))
        return adata, [scmech.tl.split(adata, "perturbation", test_conditions=held, random_state=seed, **KEYS)]
    if name == "cells30":
        cells = np.sort(rng.choice(adata.n_obs, int(0.3 * adata.n_obs), replace=False))
        adata = adata[cells].copy()
        held = sorted(rng.choice(MEASURED, 3, replace=False))
        return adata, [scmech.tl.split(adata, "perturbation", test_conditions=held, random_state=seed, **KEYS)]
    if name == "leave_one_out":
        held = sorted(rng.choice(MEASURED, 4, replace=False))
        return adata, list(scmech.tl.leave_one_out(adata, conditions=held, random_state=seed, **KEYS))
    msg = f"Unknown variant {name!r}; choose from {VARIANTS}."
    raise ValueError(msg)


def main(seeds: list[int], epochs: int) -> pd.DataFrame:
    """Run every variant and seed; write the csv and the markdown summary."""
    single_thread()
    frames = []
    for name in VARIANTS:
        for seed in seeds:
            adata, splits = variant(name, seed)
            for k, split in enumerate(splits):
                models = _factories(SETUP, vanilla=False, linear=False)
                models = {m: f for m, f in models.items() if m in MODELS}
                res = run_regime(adata, split, setup=SETUP, models=models, epochs=epochs, seed=seed, ceiling=False)
                frames.append(res.assign(variant=name, fold=k, n_genes=adata.n_vars, n_cells=adata.n_obs))
            print(f"{name} seed {seed} done", flush=True)
    df = pd.concat(frames, ignore_index=True)
    df = df[df["metric"].isin(METRICS) & df["model"].isin(MODELS)]
    RESULTS.mkdir(exist_ok=True)
    df.to_csv(RESULTS / "variants.csv", index=False)
    write_report(df, epochs)
    return df


def write_report(df: pd.DataFrame, epochs: int) -> None:
    """Mean ± sd over seeds of the per-seed means, and the per-condition wins of SemiMechVI."""
    per_seed = df.groupby(["variant", "model", "metric", "seed"])["value"].mean().reset_index()
    stats = per_seed.groupby(["variant", "model", "metric"])["value"].agg(["mean", "std"]).reset_index()
    stats["cell"] = [
        f"{m:.3f} ± {s:.3f}" if np.isfinite(m) else "–" for m, s in zip(stats["mean"], stats["std"], strict=True)
    ]
    table = stats.pivot_table(index=["variant", "model"], columns="metric", values="cell", aggfunc="first")
    table = table.reindex(columns=list(METRICS)).reset_index()
    order = {v: i for i, v in enumerate(VARIANTS)}, {m: i for i, m in enumerate(MODELS)}
    table = table.sort_values(["variant", "model"], key=lambda s: s.map(order[0] if s.name == "variant" else order[1]))
    wins = []
    for (name, metric), sub in df[df["metric"].isin(METRICS[:2])].groupby(["variant", "metric"]):
        cond = sub.groupby(["seed", "condition", "model"])["value"].mean().unstack("model")
        for other in ("TrainMean", "WeightedTrainMean", "OwnGene", "WeightedOwnGene"):
            pair = cond[["SemiMechVI", other]].dropna()
            wins.append(
                {
                    "variant": name,
                    "metric": metric,
                    "against": other,
                    "SemiMechVI above": f"{int((pair['SemiMechVI'] > pair[other]).sum())}/{len(pair)}",
                    "mean gap": round(float((pair["SemiMechVI"] - pair[other]).mean()), 3),
                }
            )
    text = [
        "# Papalexi on other gene sets, cells and splits",
        "",
        f"Written by `python benchmarks/variants.py`; the variants are in the script's docstring. SemiMechVI trained "
        f"{epochs} epochs. Mean ± sd over 3 seeds of the per-seed means over held-out targets.",
        "",
        md_table(table, na_rep="–"),
        "",
        "## Per-condition wins of SemiMechVI (conditions over seeds) and the mean gap",
        "",
        md_table(pd.DataFrame(wins)),
        "",
    ]
    (RESULTS / "variants.md").write_text("\n".join(text))
    print("\n".join(text))


def own_gene_table(seeds: list[int]) -> pd.DataFrame:
    """Of each seed's gene sets: the measured training targets the own-gene level rests on, and the held-out ones.

    No model is trained: each target's observed own-gene change from the controls (scmech pseudobulks of all its
    cells), for the training targets whose gene is kept (the members the level is calibrated on) and for the
    held-out targets whose gene is kept (which get that level).
    """
    rows = []
    for name in ("genes120", "hvg100"):
        for seed in seeds:
            adata, splits = variant(name, seed)
            labels = adata.obs["perturbation"].astype(str).to_numpy()
            genes = list(map(str, adata.var_names))
            kept = [t for t in MEASURED if t in genes]
            held = set(splits[0].test_conditions)
            counts = sp.csr_matrix(adata.X, dtype=np.float64)
            pb, _ = log_pseudobulk(counts, np.arange(adata.n_obs), labels, ["NT", *kept], counts=True)
            change = {t: float(pb[1 + k, genes.index(t)] - pb[0, genes.index(t)]) for k, t in enumerate(kept)}
            members = [t for t in kept if t not in held]
            rows.append(
                {
                    "variant": name,
                    "seed": seed,
                    "training targets with a kept gene (own change)": ", ".join(
                        f"{t} ({change[t]:+.2f})" for t in members
                    ),
                    "held-out targets with a kept gene (own change)": ", ".join(
                        f"{t} ({change[t]:+.2f})" for t in kept if t in held
                    ),
                }
            )
    return pd.DataFrame(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, 3 epochs (a smoke run)")
    parser.add_argument(
        "--own-genes",
        action="store_true",
        help="no training: which own-gene changes the level rests on in each gene set (variants_own_gene.md)",
    )
    args = parser.parse_args()
    if args.own_genes:
        table = own_gene_table([0, 1, 2])
        text = [
            "# The own-gene level's training targets in each gene set (no model trained)",
            "",
            "Written by `python benchmarks/variants.py --own-genes`. An unseen target whose gene is kept gets its own "
            "gene at the level calibrated on the training targets whose gene is kept (the mode of their factors). "
            "Each target's observed own-gene change from the controls, all its cells.",
            "",
            md_table(table),
            "",
        ]
        (RESULTS / "variants_own_gene.md").write_text("\n".join(text))
        print("\n".join(text))
    else:
        main([0] if args.quick else [0, 1, 2], 3 if args.quick else 30)
