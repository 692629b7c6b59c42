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

Is the shrinkage towards the model's read-outs borne out where no test target is looked at? In each fold every
training target :math:`q` is predicted from the others as an unseen target is anchored, with and without the
shrinkage (the model's specific change left out of both): the random-effects mean of the others' observations
(each left out at its own gene), or the mean of their read-outs plus the shrunk correction
(:func:`scmech.model._weights.shrinkage`). The squared error against :math:`q`'s observed pseudobulk, its own gene
left out, is written per target (``anchor_parts_loo.csv``) and summarised per seed.

Run ``python benchmarks/anchor_parts.py`` (about 5 minutes; ``--seeds 0`` for one seed). Writes
``benchmarks/results/anchor_parts.{csv,md}`` and ``anchor_parts_loo.csv``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from _common import baseline_predictions, md_table, papalexi_folds, quiet, train_semimechvi

import scmech
from scmech.model._protocols import Protocol
from scmech.model._weights import member_mean, random_effects_weights, shrinkage

if TYPE_CHECKING:
    from scmech.model import SemiMechVI

RESULTS = Path(__file__).resolve().parent / "results"
#: the shrinkage check of each fold, appended by :func:`fold_predictions`
CHECKS: list[pd.DataFrame] = []
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


def shrinkage_check(model: SemiMechVI) -> pd.DataFrame:
    """Each training target predicted from the others, with and without the shrinkage; squared errors per target."""
    obs = model.anchor_
    ctx = model._context_of(Protocol("", (), None, 0.0, np.nan))
    trained = [q for q in sorted(model.target_map_.trained) if obs.get(q, ctx) is not None]
    genes = model._target_gene_positions()
    read = model._reader([obs.protocol(q, ctx) for q in trained])
    y = np.stack([np.asarray(obs.get(q, ctx).value, dtype=np.float64) for q in trained])
    var = np.stack([np.asarray(obs.get(q, ctx).var, dtype=np.float64) for q in trained])
    reads = np.stack([read(obs.protocol(q, ctx)) for q in trained])
    own = [(genes[q],) if q in genes else () for q in trained]
    rows = []
    for i, q in enumerate(trained):
        keep = np.arange(len(trained)) != i
        others = tuple(g for g, k in zip(own, keep, strict=True) if k)
        w = random_effects_weights(y[keep], var[keep])
        anchor = member_mean(w, y[keep], others)
        mean_read = member_mean(w, reads[keep], others)
        correction = anchor - mean_read
        shrunk = mean_read + shrinkage(correction, member_mean(w, var[keep], others, squared=True)) * correction
        scored = np.ones(y.shape[1], dtype=bool)
        scored[list(own[i])] = False
        rows.append(
            {
                "target": q,
                "anchor": float(np.mean((anchor - y[i])[scored] ** 2)),
                "shrunk": float(np.mean((shrunk - y[i])[scored] ** 2)),
            }
        )
    return pd.DataFrame(rows)


def fold_predictions(adata, split, seed: int) -> dict:
    """Train SemiMechVI and the baselines on one fold; return the predictions of its held-out targets."""
    conditions = list(split.test_conditions)
    model = train_semimechvi(adata, split, SETUP, seed)
    preds = {"SemiMechVI": model.predict(conditions)}
    preds["SemiMechVI_controls"] = model.predict(conditions, batch_mix="controls")
    anchor = model._anchor_bases(conditions, list(model.target_map_.trained))
    preds["anchor"] = with_rows(preds["SemiMechVI"], anchor, preds["SemiMechVI"])
    CHECKS.append(shrinkage_check(model).assign(seed=seed))
    baselines = (
        ("WeightedOwnGene", scmech.tl.OwnGene, {"weighting": "precision"}),
        ("TrainMean", scmech.tl.TrainMean, {}),
    )
    return preds | baseline_predictions(adata, split, SETUP, conditions, baselines)


def run(seeds: list[int]) -> pd.DataFrame:
    """Every seed's leave-3-out folds over the measured Papalexi targets, scored by ``tl.evaluate``."""
    adata = scmech.datasets.papalexi2021()
    frames = []
    for seed in seeds:
        for k, split in papalexi_folds(adata, seed, KEYS):
            preds = fold_predictions(adata, split, seed)
            res = scmech.tl.evaluate(preds, adata, split=split, perturbation_key="perturbation", control_label="NT")
            frames.append(res[res["metric"].isin(list(METRICS))].assign(seed=seed, fold=k))
            print(f"seed {seed} fold {k}: {sorted(split.test_conditions)}", flush=True)
    return pd.concat(frames, ignore_index=True)


def check_table(loo: pd.DataFrame) -> pd.DataFrame:
    """Per seed: mean squared errors of the training targets predicted without and with the shrinkage."""
    out = []
    for seed, sub in loo.groupby("seed"):
        gain = sub["anchor"] - sub["shrunk"]
        out.append(
            {
                "seed": int(seed),
                "predicted targets": len(sub),
                "anchor": sub["anchor"].mean(),
                "shrunk": sub["shrunk"].mean(),
                "lower with the shrinkage": f"{int((gain > 0).sum())}/{len(sub)}",
                "mean gain ± se": f"{gain.mean():.5f} ± {gain.std(ddof=1) / np.sqrt(len(gain)):.5f}",
            }
        )
    return pd.DataFrame(out)


def write_report(df: pd.DataFrame, loo: pd.DataFrame | None = None) -> str:
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
    if loo is not None and len(loo):
        text += [
            "## Is the shrinkage borne out on the training targets?",
            "",
            "Each training target of each fold predicted from the others as an unseen target is anchored, without "
            "and with the shrinkage towards the model's read-outs; mean squared error over genes (its own gene left "
            "out), over the folds' training targets.",
            "",
            md_table(check_table(loo), floatfmt=".5f"),
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
        loo_path = RESULTS / "anchor_parts_loo.csv"
        loo = pd.read_csv(loo_path) if loo_path.exists() else None
    else:
        df = run(args.seeds)
        loo = pd.concat(CHECKS, ignore_index=True)
        RESULTS.mkdir(exist_ok=True)
        df.to_csv(RESULTS / "anchor_parts.csv", index=False)
        loo.to_csv(RESULTS / "anchor_parts_loo.csv", index=False)
    text = write_report(df, loo)
    (RESULTS / "anchor_parts.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
