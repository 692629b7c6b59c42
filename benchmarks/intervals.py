"""Do the prediction intervals hold what they promise? Coverage of held-out targets, doubles, media and times.

``SemiMechVI.predict(..., interval=level)`` bounds each target without training cells by the split-conformal rank
rule on the training targets' jackknife residuals (:mod:`scmech.model._intervals`), and each double whose singles
were seen by the training doubles' residuals: for a row exchangeable with those, each gene's observation lies
within its bounds with probability at least ``level``. This
benchmark checks the promise where it can fail, on held-out targets:

- Papalexi: the 9 measured knockouts held out 3 at a time and the 16 knockouts whose gene is not measured held out
  8 at a time (the harness' folds, seeds 0-2, 30 epochs, registered as CRISPRko with ``bio_rep`` as batch);
- the simulator of ``amplitude.py`` (150 single CRISPRi targets, a quarter held out; seeds 0-1);
- held-out doubles whose singles were seen (40 doubles of 16 targets, 40 % held out; seeds 0-1), on counts and on
  a CRISPRa screen log-normalised as scanpy does (``counts=False``, ``gene_likelihood="normal"``);
- targets observed in one medium and predicted in the other (a simulator with two media and 24 targets, 8 of them
  held out of medium ``m1``; seeds 0-1): bounded by the residuals of the 16 observed in both from the model-free
  carry-over (:func:`scmech.model._calibration.media_carry_residuals`), scored on the held-out ``m1`` cells;
- targets observed at read-out times 0.5, 1 and 4 and predicted at 2 (a dynamic simulator with 24 targets, 8 of
  them held out at time 2; seeds 0-1): bounded by how far the 16 observed at every time lay from their changes at
  1 and 4 interpolated, scored on the held-out cells at time 2.

For each held-out target and level (0.5, 0.8, 0.9) it records the share of genes whose observed pseudobulk (all the
target's cells, as scmech pseudobulks them) lies within the bounds, over every gene but the target genes
(``coverage``; both of a double's), over the 20 genes of largest observed change from the controls
(``coverage_top20``: genes chosen because they moved, where a conformal bound makes no promise, since the choice
depends on the observation), and at the own gene (``own_covered``; measured targets only), with the median width of
the finite bounds off the own gene and the share of infinite bounds.

Run ``python benchmarks/intervals.py`` (about 20 minutes; ``--report`` rewrites the report from the csv,
``--screens media`` reruns one screen and keeps the others' rows).
Writes ``benchmarks/results/intervals.{csv,md}``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from _common import md_table, papalexi_folds, simulated_screen, single_thread, train_semimechvi

import scmech
from scmech.model._observations import log_pseudobulk

RESULTS = Path(__file__).resolve().parent / "results"
KEYS = {"perturbation_key": "perturbation", "control_label": "NT", "unassigned_label": "unassigned"}
SETUP = {**KEYS, "batch_key": "bio_rep", "perturbation_modality": "CRISPRko"}
LEVELS = (0.5, 0.8, 0.9)
SCREENS = ("papalexi", "simulator", "doubles", "media", "time")


def score(
    model,
    adata,
    conditions: list[str],
    control: str,
    screen: str,
    seed: int,
    fold: int,
    *,
    counts: bool = True,
    cells: np.ndarray | None = None,
    **predict_kwargs,
) -> list[dict]:
    """Coverage of each held-out condition's observed pseudobulk by the intervals at every level.

    ``cells``: the cells pseudobulked (all when ``None``); ``predict_kwargs`` go to ``predict`` (``media=``).
    """
    labels = adata.obs[KEYS["perturbation_key"]].astype(str).to_numpy()
    x = sp.csr_matrix(adata.X, dtype=np.float64)
    cells = np.arange(adata.n_obs) if cells is None else cells
    observed, _ = log_pseudobulk(x, cells, labels[cells], [control, *conditions], counts=counts)
    base, observed = observed[0], observed[1:]
    genes = {g: i for i, g in enumerate(map(str, adata.var_names))}
    rows = []
    for level in LEVELS:
        pred = model.predict(conditions, interval=level, **predict_kwargs)
        lo, hi = np.asarray(pred.layers["lower"]), np.asarray(pred.layers["upper"])
        for i, t in enumerate(conditions):
            y = observed[i]
            inside = (y >= lo[i]) & (y <= hi[i])
            off = np.ones(len(y), dtype=bool)
            targets = [genes[g] for g in t.split("+") if g in genes]  # every target gene of a double
            own = genes.get(t)
            off[targets] = False
            change = np.where(off, np.abs(y - base), -np.inf)
            top = np.argsort(-change)[:20]
            width = (hi[i] - lo[i])[off]
            rows.append(
                {
                    "screen": screen,
                    "seed": seed,
                    "fold": fold,
                    "target": t,
                    "measured": own is not None,
                    "level": level,
                    "coverage": float(inside[off].mean()),
                    "coverage_top20": float(inside[top].mean()),
                    "own_covered": float(inside[own]) if own is not None else np.nan,
                    "own_finite": float(np.isfinite(lo[i, own]) and np.isfinite(hi[i, own]))
                    if own is not None
                    else np.nan,
                    "median_width": float(np.median(width[np.isfinite(width)])) if np.isfinite(width).any() else np.inf,
                    "infinite": float((~np.isfinite(width)).mean()),
                }
            )
    return rows


def papalexi(seeds: list[int]) -> list[dict]:
    """Measured and unmeasured held-out knockouts of Papalexi."""
    adata = scmech.datasets.papalexi2021()
    rows = []
    for seed in seeds:
        for measured, size, screen in ((True, 3, "papalexi_measured"), (False, 8, "papalexi_unmeasured")):
            for k, split in papalexi_folds(adata, seed, KEYS, measured=measured, size=size):
                model = train_semimechvi(adata, split, SETUP, seed)
                rows += score(model, adata, sorted(split.test_conditions), "NT", screen, seed, k)
                print(f"{screen} seed {seed} fold {k} done", flush=True)
    return rows


def simulator(seeds: list[int]) -> list[dict]:
    """The 150-target simulator, a quarter of the targets held out."""
    rows = []
    for seed in seeds:
        adata, split, keys = simulated_screen(seed)
        model = train_semimechvi(adata, split, {**keys, "batch_key": "batch", "perturbation_modality": "CRISPRi"}, seed)
        rows += score(model, adata, sorted(split.test_conditions), "NT", "simulator", seed, 0)
        print(f"simulator seed {seed} done", flush=True)
    return rows


def doubles(seeds: list[int]) -> list[dict]:
    """Held-out doubles whose singles were seen: the simulator on counts, and a CRISPRa screen log-normalised."""
    rows = []
    keys = {"perturbation_key": "perturbation", "control_label": "NT"}
    for lognorm in (False, True):
        screen = "simulator_doubles_lognorm" if lognorm else "simulator_doubles"
        for seed in seeds:
            adata = scmech.data.simulate_perturbseq(
                n_cells=16_000,
                n_genes=200,
                n_perturbations=16,
                n_combinations=40,
                seed=seed,
                **({"modality": "CRISPRa"} if lognorm else {}),
            )
            adata.obs["perturbation"] = adata.obs["perturbation"].astype(str)
            setup = {**keys, "batch_key": "batch"}
            if lognorm:
                sc.pp.normalize_total(adata, target_sum=1e4)
                sc.pp.log1p(adata)
                setup = {**setup, "counts": False, "perturbation_modality": "CRISPRa", "gene_likelihood": "normal"}
            split = scmech.tl.split(adata, "combination", seen=2, test_size=0.4, random_state=seed, **keys)
            likelihood = {"gene_likelihood": setup.pop("gene_likelihood")} if lognorm else {}
            model = train_semimechvi(adata, split, setup, seed, **likelihood)
            rows += score(model, adata, sorted(split.test_conditions), "NT", screen, seed, 0, counts=not lognorm)
            print(f"{screen} seed {seed} done", flush=True)
    return rows


def media(seeds: list[int]) -> list[dict]:
    """Targets observed in one medium, predicted in the other by the calibrated carry-over of the others."""
    rows = []
    for seed in seeds:
        adata = scmech.data.simulate_perturbseq(
            n_cells=8000, n_genes=100, n_perturbations=24, n_combinations=0, n_media=2, seed=seed
        )
        in_m1 = adata.obs["media"].astype(str).to_numpy() == "m1"
        rows += _held_out_in(adata, in_m1, "media", "simulator_media", seed, media="m1")
    return rows


def time_points(seeds: list[int]) -> list[dict]:
    """Targets observed at other read-out times, predicted at one they were not observed at."""
    rows = []
    for seed in seeds:
        adata = scmech.data.simulate_perturbseq(
            n_cells=8000,
            n_genes=100,
            n_perturbations=24,
            n_combinations=0,
            regime="dynamic",
            media_switch_times=None,
            time_points=(0.5, 1.0, 2.0, 4.0),
            seed=seed,
        )
        at_2 = adata.obs["time"].to_numpy() == 2.0
        rows += _held_out_in(adata, at_2, "time", "simulator_time", seed, time=2.0)
    return rows


def _held_out_in(adata, here: np.ndarray, key: str, screen: str, seed: int, **context) -> list[dict]:
    """8 targets' cells in the context ``here`` held out (their other cells train), predicted there and scored.

    ``key`` is the ``obs`` column registered for the context (``media_key``, ``time_key``); ``context`` goes to
    ``predict``.
    """
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    adata.obs["perturbation"] = labels
    held = sorted(np.random.default_rng(seed).choice(sorted(set(labels) - {"NT"}), 8, replace=False).tolist())
    test = np.flatnonzero(np.isin(labels, held) & here)
    split = SimpleNamespace(external_indexing=[np.setdiff1d(np.arange(adata.n_obs), test), np.array([], int), test])
    setup = {"perturbation_key": "perturbation", "control_label": "NT", "batch_key": "batch", f"{key}_key": key}
    model = train_semimechvi(adata, split, setup, seed)
    rows = score(model, adata, held, "NT", screen, seed, 0, cells=np.flatnonzero(here), **context)
    print(f"{screen} seed {seed} done", flush=True)
    return rows


def write_report(df: pd.DataFrame) -> str:
    """Coverage per screen and level (mean ± sd over seeds of the per-seed means), and the targets it misses."""
    cols = ["coverage", "coverage_top20", "own_covered", "own_finite", "median_width", "infinite"]
    per_seed = df.groupby(["screen", "level", "seed"])[cols].mean()
    stats = per_seed.groupby(["screen", "level"]).agg(["mean", "std"])
    table = []
    for (screen, level), r in stats.iterrows():
        n_rows = int((df["screen"] == screen).sum() / len(LEVELS))
        row = {"screen": screen, "level": level, "held-out rows (targets x seeds)": n_rows}
        for c in cols:
            m, s = r[(c, "mean")], r[(c, "std")]
            row[c] = "–" if not np.isfinite(m) else f"{m:.3f} ± {s:.3f}"
        table.append(row)
    worst = (
        df[(df["level"] == 0.9) & (df["infinite"] < 1.0)]  # infinite bounds hold trivially
        .groupby(["screen", "target"])["coverage"]
        .mean()
        .reset_index()
        .sort_values("coverage")
        .groupby("screen")
        .head(4)
    )
    text = [
        "# Prediction intervals of unseen targets, held-out doubles, other media and times: do they hold?",
        "",
        "Written by `python benchmarks/intervals.py`; what it measures is in the script's docstring. Mean ± sd over "
        "seeds of the per-seed mean over held-out targets (the seeds redraw the folds and the training, not the "
        "targets: Papalexi's 9 measured knockouts check a promise made on average over targets). `coverage`: "
        "share of genes (the target genes left out, both of a double's, as `scmech.tl.interval_coverage` does) whose "
        "observed pseudobulk lies within the bounds; `coverage_top20`: the same on the 20 genes of largest observed "
        "change (chosen after seeing the observation, so no promise holds there); `own_covered` and `own_finite`: "
        "at the own gene of measured targets; `median_width`: of the finite bounds off the own gene (log units); "
        "`infinite`: share of infinite bounds off the own gene. Bounds are infinite where the training targets are "
        "too few for the level (n of them bound a new one at most at 1 - 2 / (n + 1): 17 training targets in the "
        "unmeasured folds cannot at 0.9, 6 measured training targets cannot bound the own gene at 0.8); a coverage "
        "of 1 there is trivial.",
        "",
        md_table(pd.DataFrame(table)),
        "",
        "## The held-out targets covered least at level 0.9 (mean over seeds; finite bounds only)",
        "",
        md_table(worst.round(3)),
        "",
    ]
    return "\n".join(text)


def report_only() -> None:
    """Rewrite the report from the csv (no training)."""
    df = pd.read_csv(RESULTS / "intervals.csv")
    (RESULTS / "intervals.md").write_text(write_report(df))


def main() -> None:
    """Run both screens and write the csv and the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="seed 0 of Papalexi only (a check of the script)")
    parser.add_argument("--report", action="store_true", help="only rewrite the report from the csv")
    parser.add_argument(
        "--screens", nargs="+", choices=SCREENS, default=list(SCREENS), help="rerun these (the others' rows are kept)"
    )
    args = parser.parse_args()
    if args.report:
        report_only()
        return
    single_thread()
    if args.quick:
        rows = papalexi([0])
    else:
        runs = {"papalexi": lambda: papalexi(args.seeds), "simulator": lambda: simulator([0, 1])}
        runs |= {
            "doubles": lambda: doubles([0, 1]),
            "media": lambda: media([0, 1]),
            "time": lambda: time_points([0, 1]),
        }
        rows = [r for name in args.screens for r in runs[name]()]
    df = pd.DataFrame(rows)
    if not args.quick and set(args.screens) != set(SCREENS):  # the other screens' rows kept from the last run
        kept = pd.read_csv(RESULTS / "intervals.csv", float_precision="round_trip")
        df = pd.concat([kept[~kept["screen"].isin(df["screen"].unique())], df], ignore_index=True)
    RESULTS.mkdir(exist_ok=True)
    suffix = "_quick" if args.quick else ""
    df.to_csv(RESULTS / f"intervals{suffix}.csv", index=False)
    text = write_report(df)
    (RESULTS / f"intervals{suffix}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
