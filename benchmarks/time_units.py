"""Time units: the dynamic regime in hours must give what it gives in days.

The simulator's dynamic screen (read-outs at 0.5, 1, 2 and 4 days, 16 knockouts, no media switch) is fitted
twice per seed with the same cells, split and seed: once with ``obs["time"]`` in days, once with the same
times in hours (x 24). Read-out time 2 days (48 h) is held out; SemiMechVI predicts every perturbation there.
A model that is safe in any time unit gives the same predictions and the same scores in both; before the
time unit was rescaled, the run in hours stopped at once (explicit RK4 unstable for a rate x step above 2.8).

Reported per seed: the largest difference between the two runs' predicted changes (log1p scale), and
``pearson_delta_de`` of both against the observed held-out time point (mean over perturbations).

Run ``python benchmarks/time_units.py`` (a few minutes on one thread); ``--quick`` for a smoke run. Writes
``benchmarks/results/time_units.{csv,md}``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import scvi
from _common import single_thread

import scmech
from scmech.model import SemiMechVI

RESULTS = Path(__file__).resolve().parent / "results"
TIMES = (0.5, 1.0, 2.0, 4.0)
HELD = 2.0
KEYS = {"perturbation_key": "perturbation", "control_label": "NT"}


def _fit_predict(adata, split, factor: float, epochs: int, seed: int):
    data = adata.copy()
    data.obs["time"] = data.obs["time"].astype(float) * factor
    SemiMechVI.setup_anndata(data, batch_key="batch", time_key="time", **KEYS)
    scvi.settings.seed = seed
    model = SemiMechVI(data)
    model.train(
        max_epochs=epochs, datasplitter_kwargs={"external_indexing": split.external_indexing}, enable_progress_bar=False
    )
    conds = sorted(set(split.test_conditions) - {"NT"})
    pred = model.predict([*conds, "NT"], time=HELD * factor, random_state=seed)
    return pred, conds


def run(seed: int, epochs: int, n_cells: int) -> list[dict]:
    adata = scmech.data.simulate_perturbseq(
        n_cells,
        200,
        n_perturbations=16,
        n_combinations=0,
        regime="dynamic",
        media_switch_times=None,
        time_points=TIMES,
        n_batches=2,
        seed=seed,
    )
    split = scmech.tl.split(adata, "time", time_key="time", test_conditions=[HELD], random_state=seed, **KEYS)
    rows = []
    preds = {}
    for unit, factor in (("days", 1.0), ("hours", 24.0)):
        pred, conds = _fit_predict(adata, split, factor, epochs, seed)
        pred.obs["time"] = HELD  # score both against the held-out cells, whose obs are in days
        preds[unit] = pred
        test = pred[pred.obs["perturbation"].astype(str) != "NT"]
        scores = scmech.tl.evaluate({unit: test}, adata, split=split, **KEYS)
        scores = scores[scores["metric"] == "pearson_delta_de"]
        rows.append({"seed": seed, "unit": unit, "pearson_delta_de": float(scores["value"].mean())})
    change = {u: p.X[:-1] - p.X[-1] for u, p in preds.items()}
    diff = float(np.abs(change["days"] - change["hours"]).max())
    scale = float(np.abs(change["days"]).max())
    for r in rows:
        r.update({"max_abs_difference": diff, "max_abs_change": scale, "n_conditions": len(conds)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    single_thread()
    seeds, epochs, n_cells = ((0,), 3, 1200) if args.quick else ((0, 1, 2), 20, 3000)
    rows = []
    for seed in seeds:
        rows += run(seed, epochs, n_cells)
        print(f"seed {seed} done", flush=True)
    df = pd.DataFrame(rows)
    suffix = "_quick" if args.quick else ""
    RESULTS.mkdir(parents=True, exist_ok=True)
    df.to_csv(RESULTS / f"time_units{suffix}.csv", index=False)
    wide = df.pivot(index="seed", columns="unit", values="pearson_delta_de")
    extra = df.groupby("seed")[["max_abs_difference", "max_abs_change", "n_conditions"]].first()
    table = pd.concat([wide[["days", "hours"]], extra], axis=1).reset_index()
    cmd = "python benchmarks/time_units.py" + (" --quick" if args.quick else "")
    text = [
        "# Time units: hours against days",
        "",
        f"Made by `{cmd}`. The simulator's dynamic screen, read-out at {HELD:g} days (= {24 * HELD:g} h) held out,",
        f"SemiMechVI trained {epochs} epochs with the same cells, split and seed, once with `obs['time']` in days and",
        "once in hours. `pearson_delta_de`: mean over the held-out perturbations against the observed time point;",
        "`max_abs_difference`: the largest difference between the two runs' predicted changes (log1p scale), beside",
        "the largest predicted change.",
        "",
        table.to_markdown(index=False, floatfmt=".4g"),
        "",
    ]
    (RESULTS / f"time_units{suffix}.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
