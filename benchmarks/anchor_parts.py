"""What each part of SemiMechVI's prediction for an unseen knockout adds, on Papalexi.

For a target without training cells whose gene is measured, SemiMechVI predicts the random-effects mean of the
training targets' observations (its anchor), shrunk gene by gene towards the model's own read-outs where the
anchor is noisy (:func:`scmech.model._weights.shrinkage`, Stein's unbiased risk estimate), with the own gene at
its calibrated knock-down. The observations are used in the batch composition their cells came in
(``predict(batch_mix="observed")``, the default) or moved to the training controls' composition by the controls'
level in each batch (``batch_mix="controls"``). This benchmark takes the prediction apart, on the harness' Papalexi
regime (the 9 measured targets, leave-3-out, seeds 0-2, 30 epochs):

- ``SemiMechVI``: the prediction;
- ``SemiMechVI_controls``: the prediction with ``batch_mix="controls"``;
- ``anchor``: its anchor alone (:meth:`~scmech.model._post_training.PostTrainingMixin._anchor_bases`), with
  SemiMechVI's own gene: the prediction without the shrinkage towards the model;
- ``WeightedOwnGene``: ``tl.OwnGene(weighting="precision")``, the precision-weighted train mean with the own gene
  at the half-sample mode of the training targets' own changes;
- ``TrainMean``: the plain train mean.

The differences are the parts: ``SemiMechVI - anchor`` is what the model's read-outs add,
``SemiMechVI - SemiMechVI_controls`` what keeping the observed batch composition adds. Scores are
``tl.evaluate``'s, against the pooled pseudobulk of the held-out cells: P20 by |observed change|
(``pearson_delta_top_change``) and by t-test genes (``pearson_delta_de``), CR (``systema_pearson_delta``) and CR
without the own gene (``systema_pearson_delta_off``).

Run ``python benchmarks/anchor_parts.py`` (about 5 minutes; ``--seeds 0`` for one seed). Writes
``benchmarks/results/anchor_parts.{csv,md}``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import scvi
from _common import md_table, quiet

import scmech
from scmech.model import SemiMechVI

RESULTS = Path(__file__).resolve().parent / "results"
KEYS = {"perturbation_key": "perturbation", "control_label": "NT", "unassigned_label": "unassigned"}
SETUP = {**KEYS, "batch_key": "bio_rep", "perturbation_modality": "CRISPRko"}
MODELS = ("SemiMechVI", "SemiMechVI_controls", "anchor", "WeightedOwnGene", "TrainMean")
METRICS = {
    "pearson_delta_top_change": "P20",
    "pearson_delta_de": "P20_t",
    "systema_pearson_delta": "CR",
    "systema_pearson_delta_off": "CR_off",
}


def with_rows(template, rows: np.ndarray, own_from) -> object:
    """``template`` (a prediction AnnData) with ``rows`` as values, each row's own gene taken from ``own_from``."""
    out = template.copy()
    pos = {g: i for i, g in enumerate(map(str, template.var_names))}
    for i, t in enumerate(map(str, template.obs_names)):
        row = np.asarray(rows[i], dtype=np.float64).copy()
        row[pos[t]] = own_from.X[i, pos[t]]
        out.X[i] = row
    return out


def fold_predictions(adata, split, seed: int) -> dict:
    """Train SemiMechVI and the baselines on one fold; return the predictions of its held-out targets."""
    ds = {"external_indexing": split.external_indexing}
    conditions = list(split.test_conditions)
    scvi.settings.seed = seed
    data = adata.copy()
    SemiMechVI.setup_anndata(data, **SETUP)
    model = SemiMechVI(data)
    model.train(max_epochs=30, datasplitter_kwargs=ds, enable_progress_bar=False)
    preds = {"SemiMechVI": model.predict(conditions)}
    preds["SemiMechVI_controls"] = model.predict(conditions, batch_mix="controls")
    anchor = model._anchor_bases(conditions, list(model.target_map_.trained))
    preds["anchor"] = with_rows(preds["SemiMechVI"], anchor, preds["SemiMechVI"])
    for name, cls, kwargs in (
        ("WeightedOwnGene", scmech.tl.OwnGene, {"weighting": "precision"}),
        ("TrainMean", scmech.tl.TrainMean, {}),
    ):
        data = adata.copy()
        cls.setup_anndata(data, **SETUP)
        baseline = cls(data, **kwargs)
        baseline.train(datasplitter_kwargs=ds)
        preds[name] = baseline.predict(conditions)
    return preds


def run(seeds: list[int]) -> pd.DataFrame:
    """Every seed's leave-3-out folds over the measured Papalexi targets, scored by ``tl.evaluate``."""
    adata = scmech.datasets.papalexi2021()
    labels = adata.obs["perturbation"].astype(str)
    genes = set(map(str, adata.var_names))
    pool = sorted(t for t in set(labels) - {"NT", "unassigned"} if t in genes)
    frames = []
    for seed in seeds:
        order = np.random.default_rng(seed).permutation(pool)
        for k, fold in enumerate(np.array_split(order, len(pool) // 3)):
            split = scmech.tl.split(adata, "perturbation", test_conditions=sorted(fold), random_state=seed, **KEYS)
            preds = fold_predictions(adata, split, seed)
            res = scmech.tl.evaluate(preds, adata, split=split, perturbation_key="perturbation", control_label="NT")
            frames.append(res[res["metric"].isin(list(METRICS))].assign(seed=seed, fold=k))
            print(f"seed {seed} fold {k}: {sorted(fold)}", flush=True)
    return pd.concat(frames, ignore_index=True)


def write_report(df: pd.DataFrame) -> str:
    """Mean ± sd over seeds of each model and metric, the parts, and per-target wins of the full prediction."""
    per_seed = df.groupby(["model", "metric", "seed"])["value"].mean().unstack("seed")
    table = (
        pd.DataFrame(
            {
                label: [
                    f"{per_seed.loc[(m, metric)].mean():.3f} ± {per_seed.loc[(m, metric)].std(ddof=1):.3f}"
                    for m in MODELS
                ]
                for metric, label in METRICS.items()
            },
            index=list(MODELS),
        )
        .rename_axis("model")
        .reset_index()
    )
    mean = df.groupby(["model", "metric"])["value"].mean().unstack("metric")
    parts = (
        pd.DataFrame(
            {
                label: [
                    mean.loc["SemiMechVI", metric] - mean.loc["anchor", metric],
                    mean.loc["SemiMechVI", metric] - mean.loc["SemiMechVI_controls", metric],
                    mean.loc["anchor", metric] - mean.loc["WeightedOwnGene", metric],
                ]
                for metric, label in METRICS.items()
            },
            index=["the model's read-outs", "the observed batch composition", "anchor - WeightedOwnGene"],
        )
        .rename_axis("part")
        .reset_index()
    )
    by_target = df.groupby(["metric", "condition", "model"])["value"].mean().unstack("model")
    wins = []
    pairs = (
        ("SemiMechVI", "anchor"),
        ("SemiMechVI", "SemiMechVI_controls"),
        ("SemiMechVI", "WeightedOwnGene"),
        ("SemiMechVI", "TrainMean"),
        ("SemiMechVI_controls", "TrainMean"),
    )
    for metric, label in METRICS.items():
        t = by_target.loc[metric]
        row = {"metric": label}
        for a, b in pairs:
            # a baseline without a score (TrainMean's CR: its change is the reference) counts no target
            scored = int(t[b].notna().sum())
            row[f"{a} above {b}"] = f"{int((t[a] > t[b]).sum())}/{scored}" if scored else "–"
        wins.append(row)
    text = [
        "# What each part of SemiMechVI's unseen-target prediction adds (Papalexi)",
        "",
        f"Written by `python benchmarks/anchor_parts.py`; the parts are in the script's docstring. Seeds "
        f"{sorted(int(x) for x in df['seed'].unique())}, 9 measured targets held out 3 at a time, 30 epochs; mean ± sd "
        "over seeds.",
        "",
        md_table(table),
        "",
        "## The parts (differences of the means)",
        "",
        md_table(parts, floatfmt="+.4f"),
        "",
        "## Per-target wins (target means over seeds)",
        "",
        md_table(pd.DataFrame(wins)),
        "",
    ]
    return "\n".join(text)


def main() -> None:
    """Run the seeds, write the csv and the markdown summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--report-only", action="store_true", help="rewrite the markdown from the csv")
    args = parser.parse_args()
    quiet()
    if args.report_only:
        df = pd.read_csv(RESULTS / "anchor_parts.csv")
    else:
        df = run(args.seeds)
        RESULTS.mkdir(exist_ok=True)
        df.to_csv(RESULTS / "anchor_parts.csv", index=False)
    text = write_report(df)
    (RESULTS / "anchor_parts.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
