"""Anchoring an unseen target on every training target, or on a random subset of them (the behaviour before).

SemiMechVI predicts a target without training cells from the random-effects mean of the training targets'
observations (its anchor) plus the model's change specific to the target. Until this change, a screen with more
than 50 training targets anchored each unseen target on a random 50 of them, drawn per target. A subset mean
carries its own sampling noise, about :math:`(1 - n/N) S^2 / n` per gene for a subset of :math:`n` of :math:`N`
targets whose responses spread by :math:`S^2`, and that noise entered every unseen prediction. Now every training
target is used. This benchmark measures what the subset cost, on two screens:

``simulator``
    ``simulate_perturbseq`` with 150 single targets over 400 genes and 16,000 cells; a quarter of the targets
    held out (``tl.split(..., "perturbation", test_size=0.25)``), about 112 training targets, subset 50 (the old
    limit).
``papalexi``
    Papalexi 2021, the 9 measured targets held out 3 at a time (as ``benchmarks/accuracy.py``), 22 training targets;
    the subset is half of them (11), the same share of the training targets as 50 of about 100.

Models: ``SemiMechVI`` (every training target, the package's), ``SemiMechVI_subset`` (the same trained model, each
unseen target anchored on its seeded random subset, reproduced here by restricting the class the model anchors
on), ``WeightedTrainMean`` (``tl.TrainMean(weighting="precision")``, the random-effects mean over every training
target) and ``TrainMean``. Seeds 0-2, 30 epochs. Scores are ``tl.evaluate``'s: P20 by |observed change|
(``pearson_delta_top_change``) and by t-test genes (``pearson_delta_de``), and CR (``systema_pearson_delta``).

Timing: a simulated screen of 1,000 targets over 2,000 genes (20,000 cells, 700 targets in training, SemiMechVI
trained 30 steps), the 300 unseen targets predicted with every training target and with the subset of 50, each
three times in one process, side by side (``anchor_pool_timing.csv``).

Run ``python benchmarks/anchor_pool.py`` (about 15 minutes on 2 cores; ``--seeds 0`` for one seed,
``--timing-only`` for the timing alone). Writes ``benchmarks/results/anchor_pool.{csv,md}`` and
``anchor_pool_timing.csv``.
"""

from __future__ import annotations

import argparse
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import scvi
from _common import baseline_predictions, md_table, papalexi_folds, quiet, simulated_screen, train_semimechvi

import scmech
from scmech.model import SemiMechVI

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("SemiMechVI", "SemiMechVI_subset", "WeightedTrainMean", "TrainMean")
METRICS = {"pearson_delta_top_change": "P20", "pearson_delta_de": "P20_t", "systema_pearson_delta": "CR"}


def subset_class(model: SemiMechVI, size: int, seed: int):
    """``model._class_of`` restricted to a seeded random ``size`` of the training targets, drawn per target."""
    full = model._class_of

    def class_of(target: str):
        found = full(target)
        if found is None or len(found[0]) <= size:
            return found
        rng = np.random.default_rng([seed, zlib.crc32(target.encode())])
        members = sorted(rng.choice(np.asarray(found[0], dtype=object), size=size, replace=False).tolist())
        return tuple(members), found[1]

    return class_of


def fold(adata, split, setup: dict, seed: int, size: int) -> pd.DataFrame:
    """Train on one split; score the full and the subset anchor and the train means on its held-out targets."""
    conditions = list(split.test_conditions)
    model = train_semimechvi(adata, split, setup, seed)
    preds = {"SemiMechVI": model.predict(conditions)}
    model._class_of = subset_class(model, size, seed)
    preds["SemiMechVI_subset"] = model.predict(conditions)
    baselines = (
        ("WeightedTrainMean", scmech.tl.TrainMean, {"weighting": "precision"}),
        ("TrainMean", scmech.tl.TrainMean, {}),
    )
    preds |= baseline_predictions(adata, split, setup, conditions, baselines)
    keys = {k: setup[k] for k in ("perturbation_key", "control_label")}
    res = scmech.tl.evaluate(preds, adata, split=split, **keys)
    return res[res["metric"].isin(list(METRICS))]


def run(seeds: list[int]) -> pd.DataFrame:
    """Both screens, every seed."""
    frames = []
    for seed in seeds:
        adata, split, keys = simulated_screen(seed)
        res = fold(adata, split, {**keys, "batch_key": "batch"}, seed, 50)
        frames.append(res.assign(screen="simulator", seed=seed, fold=0))
        print(f"simulator seed {seed}: {len(split.train_conditions)} training conditions", flush=True)
    adata = scmech.datasets.papalexi2021()
    keys = {"perturbation_key": "perturbation", "control_label": "NT", "unassigned_label": "unassigned"}
    setup = {**keys, "batch_key": "bio_rep", "perturbation_modality": "CRISPRko"}
    for seed in seeds:
        for k, split in papalexi_folds(adata, seed, keys):
            res = fold(adata, split, setup, seed, 11)
            frames.append(res.assign(screen="papalexi", seed=seed, fold=k))
            print(f"papalexi seed {seed} fold {k}", flush=True)
    return pd.concat(frames, ignore_index=True)


def timing(repeats: int = 3) -> pd.DataFrame:
    """Seconds to predict the unseen targets of a 1,000-target screen, every training target against a subset of 50."""
    adata = scmech.data.simulate_perturbseq(
        n_cells=20_000, n_genes=2_000, n_perturbations=1_000, n_combinations=0, library_size_mean=1000.0, seed=0
    )
    adata.obs["perturbation"] = adata.obs["perturbation"].astype(str)
    keys = {"perturbation_key": "perturbation", "control_label": "NT"}
    split = scmech.tl.split(adata, "perturbation", test_size=0.3, random_state=0, **keys)
    scvi.settings.seed = 0
    SemiMechVI.setup_anndata(adata, **keys)
    model = SemiMechVI(adata)
    ds = {"external_indexing": split.external_indexing}
    model.train(max_epochs=1, max_steps=30, datasplitter_kwargs=ds, enable_progress_bar=False)
    conditions = list(split.test_conditions)
    every, subset = model._class_of, subset_class(model, 50, 0)
    rows = []
    for r in range(repeats):
        for name, class_of in (("every training target", every), ("subset of 50", subset)):
            model._class_of = class_of
            t0 = time.perf_counter()
            model.predict(conditions)
            rows.append(
                {
                    "anchor": name,
                    "repeat": r,
                    "seconds": time.perf_counter() - t0,
                    "unseen targets": len(conditions),
                    "training targets": len(model.target_map_.trained),
                    "genes": adata.n_vars,
                }
            )
    return pd.DataFrame(rows)


def timing_text(times: pd.DataFrame) -> list[str]:
    """The timing section of the report: median seconds of each anchor and their ratio."""
    med = times.groupby("anchor")["seconds"].median()
    first = times.iloc[0]
    ratio = med["every training target"] / med["subset of 50"]
    return [
        "## Timing",
        "",
        f"{int(first['unseen targets'])} unseen targets of a simulated screen with {int(first['training targets'])} "
        f"training targets and {int(first['genes'])} genes, predicted {times['repeat'].nunique()} times with each "
        f"anchor in one process: median {med['every training target']:.2f} s with every training target, "
        f"{med['subset of 50']:.2f} s with a subset of 50 (ratio {ratio:.2f}).",
        "",
    ]


def write_report(df: pd.DataFrame) -> str:
    """Mean ± sd over seeds per screen and model, and per-condition wins of the full anchor over the subset."""
    per_seed = df.groupby(["screen", "model", "metric", "seed"])["value"].mean().reset_index()
    stats = per_seed.groupby(["screen", "model", "metric"])["value"].agg(["mean", "std"]).reset_index()
    stats["cell"] = [
        f"{m:.3f} ± {s:.3f}" if np.isfinite(m) else "–" for m, s in zip(stats["mean"], stats["std"], strict=True)
    ]
    table = stats.pivot_table(index=["screen", "model"], columns="metric", values="cell", aggfunc="first")
    table = table.reindex(columns=list(METRICS)).rename(columns=METRICS).reset_index()
    order = {m: i for i, m in enumerate(MODELS)}
    table = table.sort_values(["screen", "model"], key=lambda s: s.map(order) if s.name == "model" else s)
    wins = []
    for (screen, metric), sub in df.groupby(["screen", "metric"]):
        cond = sub.groupby(["seed", "fold", "condition", "model"])["value"].mean().unstack("model")
        for a, b in (("SemiMechVI", "SemiMechVI_subset"), ("SemiMechVI", "WeightedTrainMean")):
            pair = cond[[a, b]].dropna()
            gap = pair[a] - pair[b]
            wins.append(
                {
                    "screen": screen,
                    "metric": METRICS[metric],
                    "comparison": f"{a} vs {b}",
                    "above": f"{int((gap > 1e-9).sum())}/{len(pair)}",
                    "below": f"{int((gap < -1e-9).sum())}/{len(pair)}",
                    "mean gap": f"{gap.mean():+.4f}",
                }
            )
    seeds = sorted(int(x) for x in df["seed"].unique())
    text = [
        "# Anchoring an unseen target on every training target, or on a random subset (before)",
        "",
        f"Written by `python benchmarks/anchor_pool.py`; the screens and models are in the script's docstring. Seeds "
        f"{seeds}, 30 epochs; mean ± sd over seeds of the per-seed means over held-out targets.",
        "",
        md_table(table, na_rep="–"),
        "",
        "## Per-condition comparisons (conditions over seeds and folds)",
        "",
        md_table(pd.DataFrame(wins)),
        "",
    ]
    return "\n".join(text)


def main() -> None:
    """Run the seeds, write the csv and the markdown summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--report-only", action="store_true", help="rewrite the markdown from the csvs")
    parser.add_argument("--timing-only", action="store_true", help="rerun the timing; the scores from the csv")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    quiet()
    if args.report_only or args.timing_only:
        df = pd.read_csv(RESULTS / "anchor_pool.csv")
    else:
        df = run(args.seeds)
        df.to_csv(RESULTS / "anchor_pool.csv", index=False)
    timing_path = RESULTS / "anchor_pool_timing.csv"
    if not args.report_only:
        timing().to_csv(timing_path, index=False)
    text = write_report(df)
    if timing_path.exists():
        text += "\n" + "\n".join(timing_text(pd.read_csv(timing_path)))
    (RESULTS / "anchor_pool.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
