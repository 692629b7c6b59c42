"""Onset delay on the simulator: does ``SemiMechVI(..., learn_onset=True)`` recover a known delay?

The simulator's dynamic regime applies each perturbation with the ramp :math:`\\eta(t)=\\eta(1-e^{-t/\\tau})`
(``onset_tau``; guide expression and protein turnover), then the gene network relaxes. Cells are read out at
several times after the perturbation (no media switch). ``SemiMechVI`` in the dynamic regime has the same ramp
on its latent operators; with ``learn_onset=True`` it fits :math:`\\tau` (started at 0.5 days). The fitted
:math:`\\hat\\tau` is compared with the true :math:`\\tau` over seeds, including :math:`\\tau=0` (instantaneous),
where a good fit should return a small :math:`\\hat\\tau`.

Caveat measured here: the model's latent relaxation rates are learned too, and a ramp followed by a first-order
relaxation is a sum of two exponentials whose two time constants can trade places; :math:`\\hat\\tau` is
identified only up to that exchange.

Run ``python benchmarks/onset.py`` (about 15 minutes on one free thread); ``--quick`` for a smoke run. Writes
``benchmarks/results/onset.{csv,md}``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scvi
from _common import md_table, single_thread

import scmech
from scmech.model import SemiMechVI

RESULTS = Path(__file__).resolve().parent / "results"
TIMES = (0.25, 0.5, 1.0, 2.0, 4.0)


def _simulate(tau: float, seed: int, n_cells: int, n_genes: int):
    return scmech.data.simulate_perturbseq(
        n_cells,
        n_genes,
        n_perturbations=8,
        n_combinations=0,
        regime="dynamic",
        media_switch_times=None,
        time_points=TIMES,
        onset_tau=tau,
        control_fraction=0.2,
        seed=seed,
    )


def _true_half_time(adata) -> float:
    """Median over targets' strongest genes of the time to half the final change (noise-free truth)."""
    truth = adata.uns["truth"]
    mean_log = truth["mean_log_specific"]
    halves = []
    for target in truth["targets"]:
        rows = [f"{target}|m0|none|{t:g}" for t in TIMES]
        ctrl = [f"NT|m0|none|{t:g}" for t in TIMES]
        eff = mean_log.loc[rows].to_numpy() - mean_log.loc[ctrl].to_numpy()  # times x genes
        g = int(np.argmax(np.abs(eff[-1])))
        frac = eff[:, g] / eff[-1, g]
        halves.append(float(np.interp(0.5, np.maximum.accumulate(frac), TIMES)))
    return float(np.median(halves))


def run(taus: list[float], seeds: list[int], n_cells: int, n_genes: int, epochs: int) -> pd.DataFrame:
    rows = []
    for tau in taus:
        for seed in seeds:
            adata = _simulate(tau, seed, n_cells, n_genes)
            scvi.settings.seed = seed
            SemiMechVI.setup_anndata(adata, perturbation_key="perturbation", batch_key="batch", time_key="time")
            model = SemiMechVI(adata, learn_onset=True)
            t0 = time.perf_counter()
            model.train(max_epochs=epochs, enable_progress_bar=False)
            secs = time.perf_counter() - t0
            gamma = model.module.field.gamma.detach().numpy()
            rows.append(
                {
                    "true_tau": tau,
                    "seed": seed,
                    "fitted_tau": model.module.onset_tau_data,
                    "latent_relaxation_time_median": float(np.median(1.0 / gamma)),
                    "true_half_time": _true_half_time(adata),
                    "train_seconds": secs,
                }
            )
            print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def write_report(df: pd.DataFrame, command: str, args: argparse.Namespace, path: Path) -> None:
    summary = df.groupby("true_tau")[["fitted_tau", "true_half_time"]].agg(["mean", "std"])
    summary.columns = [f"{a} {b}" for a, b in summary.columns]
    summary = summary.reset_index()
    means = df.groupby("true_tau")["fitted_tau"].mean()
    r = float(np.corrcoef(df["true_tau"], df["fitted_tau"])[0, 1]) if df["true_tau"].nunique() > 1 else float("nan")
    noise = float(df.groupby("true_tau")["fitted_tau"].std().max())
    monotone = bool(np.all(np.diff(means.to_numpy()) > 2 * noise))
    text = [
        "# Onset delay on the simulator",
        "",
        f"Command: `{command}` (one torch thread; seeds {', '.join(map(str, args.seeds))}; {args.n_cells} cells, "
        f"{args.n_genes} genes, 8 single perturbations, read-out at {', '.join(f'{t:g}' for t in TIMES)} days, "
        f"no media switch, {args.epochs} epochs, `SemiMechVI(adata, learn_onset=True)` in the dynamic regime, "
        "onset started at 0.5 days).",
        "",
        "True onset: the simulator's ramp `eta(t) = eta (1 - exp(-t / tau))` on each target's production. "
        "`true_half_time`: median over targets of the time at which the target's most changed gene reaches half "
        "its final change (noise-free truth), which includes the network's own relaxation (about 1 day).",
        "",
        "## Per seed",
        "",
        md_table(df),
        "",
        "## Summary",
        "",
        md_table(summary),
        "",
        "## Reading",
        "",
        "- Fitted tau by true tau (mean over seeds): "
        + ", ".join(f"{t:g} -> {v:.2f}" for t, v in means.items())
        + f"; correlation of fitted and true tau over all runs r = {r:.2f}; the mean fitted tau "
        f"{'increases' if monotone else 'does not increase'} with the true tau (beyond twice its sd over seeds).",
        "- Same seed, different true tau: the fitted values are "
        + (
            "nearly identical"
            if float(df.groupby("seed")["fitted_tau"].agg(np.ptp).max()) < 0.1 * max(float(means.max()), 1e-9)
            else "different"
        )
        + ", while the simulated response is clearly delayed (`true_half_time`).",
        (
            "- So `learn_onset=True` separates a delayed onset from an instantaneous one here, but the fitted value "
            "is biased towards its start (0.5 days): it stays above 0 for instantaneous perturbations and below a "
            "long true delay. "
            if monotone
            else "- So `learn_onset=True` does not recover the delay here: the ramp's time constant ends near the "
            "same value whatever the truth, while the learned latent relaxation rates (see "
            "`latent_relaxation_time_median`) absorb the slower response. "
        )
        + "A ramp followed by a first-order relaxation is a sum of two exponentials whose time constants can "
        "trade places, so tau is weakly identified by a few read-out times; read the fitted tau as a ranking of "
        "delays, not a measurement. Controls at every time point and early read-outs (before the network "
        "relaxes) are what identify it.",
        "",
    ]
    path.write_text("\n".join(text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--taus", type=float, nargs="+", default=[0.0, 2.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-cells", type=int, default=2000)
    parser.add_argument("--n-genes", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--quick", action="store_true", help="one seed, tau 1, 3 epochs, written to onset_quick.*")
    args = parser.parse_args()
    if args.quick:
        args.taus, args.seeds, args.epochs = [1.0], [0], 3
    single_thread()
    df = run(args.taus, args.seeds, args.n_cells, args.n_genes, args.epochs)
    RESULTS.mkdir(exist_ok=True)
    stem = "onset_quick" if args.quick else "onset"
    df.to_csv(RESULTS / f"{stem}.csv", index=False)
    command = "python benchmarks/onset.py" + (" --quick" if args.quick else "")
    default = ([0.0, 2.0], [0, 1, 2], 2000, 60)
    if not args.quick and (args.taus, args.seeds, args.n_cells, args.epochs) != default:
        command += (
            f" --taus {' '.join(f'{t:g}' for t in args.taus)} --seeds {' '.join(map(str, args.seeds))}"
            f" --n-cells {args.n_cells} --epochs {args.epochs}"
        )
    write_report(df, command, args, RESULTS / f"{stem}.md")
    print((RESULTS / f"{stem}.md").read_text())


if __name__ == "__main__":
    main()
