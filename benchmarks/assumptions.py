"""Assumption checks (``scmech.tl.check_assumptions``) on the simulator and on the bundled Papalexi screen.

(a) Flag rates: every check on a simulated regime that violates its assumption and on one that respects it
    (one factor changed), over several seeds. A subject is a medium (baseline), the controls (media), a
    perturbation (unique attractor, instantaneous perturbation) or a combination (additivity); the flag rate is
    the share of tested subjects whose verdict is "violated".
(b) Additivity against the simulator's noise-free genetic interaction (network only, no shared response).
(c) The bundled Papalexi et al. 2021 THP-1 screen, replicates as batches: the table, the text report and the
    summary figure.

Run from the repository root::

    python benchmarks/assumptions.py   # writes benchmarks/results/assumptions.{md,csv} and figures/assumptions_*.png
"""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from _common import md_table, single_thread

import scmech
from scmech.data._simulate import simulate_perturbseq
from scmech.tl._assumptions import HOLDS, VIOLATED

RESULTS = Path(__file__).resolve().parent / "results"
FIGURES = RESULTS / "figures"
COMMAND = "python benchmarks/assumptions.py"
SEEDS = (1, 2, 3, 4)
N_CELLS, N_GENES = 2000, 100
N_BOOT = 100
SMALL = {"n_perturbations": 6, "n_combinations": 2}
TIMES = (0.5, 1.0, 2.0, 4.0)
MEDIA_KEYS = {"batch_key": "batch", "media_key": "media"}
DEEP = {"efficacy_concentration": 50.0, "library_size_mean": 10_000.0}

#: assumption -> [(regime, truth, simulator arguments, check keys)]: the violating regime first
REGIMES: dict[str, list[tuple[str, str, dict, dict]]] = {
    "baseline_steady_state": [
        (
            "controls switched into medium 1 at t=0, read out at t=0.5-4",
            VIOLATED,
            {"regime": "dynamic", "media_switch_times": (0.0,), "time_points": TIMES},
            {"batch_key": "batch", "time_key": "time", "media_key": "media"},
        ),
        (
            "controls stay in the baseline medium",
            HOLDS,
            {"regime": "dynamic", "media_switch_times": None, "time_points": TIMES},
            {"batch_key": "batch", "time_key": "time", "media_key": "media"},
        ),
    ],
    "media_response": [
        ("two media, media_strength=1", VIOLATED, {"n_media": 2, "media_strength": 1.0}, MEDIA_KEYS),
        ("two media, media_strength=0", HOLDS, {"n_media": 2, "media_strength": 0.0}, MEDIA_KEYS),
    ],
    "unique_attractor": [
        ("40% escapers (deep libraries)", VIOLATED, {"escaper_fraction": 0.4, **DEEP}, {"batch_key": "batch"}),
        ("no escapers (deep libraries)", HOLDS, {"escaper_fraction": 0.0, **DEEP}, {"batch_key": "batch"}),
    ],
    "instantaneous_perturbation": [
        (
            "onset delay tau=2, read-outs t=2, 4",
            VIOLATED,
            {"regime": "dynamic", "media_switch_times": None, "time_points": (2.0, 4.0), "onset_tau": 2.0},
            {"batch_key": "batch", "time_key": "time"},
        ),
        (
            "instantaneous, read-outs t=8, 16",
            HOLDS,
            {"regime": "dynamic", "media_switch_times": None, "time_points": (8.0, 16.0), "onset_tau": 0.0},
            {"batch_key": "batch", "time_key": "time"},
        ),
    ],
    "additivity": [
        ("shared response in every perturbed cell", VIOLATED, {"systematic_fraction": 1.0}, {"batch_key": "batch"}),
        (
            "no regulation, no shared response",
            HOLDS,
            {"unregulated_fraction": 1.0, "systematic_strength": 0.0},
            {"batch_key": "batch"},
        ),
    ],
}


def flag_rates() -> pd.DataFrame:
    """(a) Per assumption, regime and seed: tested subjects, flagged subjects and mean effect."""
    rows = []
    for assumption, regimes in REGIMES.items():
        for regime, truth, sim_kw, keys in regimes:
            for seed in SEEDS:
                adata = simulate_perturbseq(N_CELLS, N_GENES, **SMALL, seed=seed, **sim_kw)
                table = scmech.tl.check_assumptions(adata, n_bootstrap=N_BOOT, random_state=seed, **keys)
                sub = table[table["assumption"] == assumption]
                if assumption == "baseline_steady_state" and "media_switch_times" in sim_kw:
                    # the drifting (or resting) controls: medium 1 after a switch, else medium 0
                    medium = "m1" if sim_kw["media_switch_times"] else "m0"
                    sub = sub[sub["subject"] == f"controls in {medium}"]
                tested = sub[sub["verdict"].isin([HOLDS, VIOLATED])]
                rows.append(
                    {
                        "assumption": assumption,
                        "regime": regime,
                        "truth": truth,
                        "seed": seed,
                        "subjects": len(sub),
                        "tested": len(tested),
                        "flagged": int((tested["verdict"] == VIOLATED).sum()),
                        "mean_effect": float(tested["effect"].mean()) if len(tested) else np.nan,
                    }
                )
            print(f"  {assumption}: {regime} done", flush=True)
    return pd.DataFrame(rows)


def additivity_vs_truth() -> pd.DataFrame:
    """(b) Verdict per combination against the noise-free interaction norm (no shared response)."""
    rows = []
    for seed in SEEDS:
        adata = simulate_perturbseq(N_CELLS, N_GENES, **SMALL, seed=seed, systematic_strength=0.0)
        truth = np.sqrt(adata.uns["truth"]["interaction"].pow(2).sum(axis=1))
        truth.index = truth.index.str.split("|").str[0]
        table = scmech.tl.check_assumptions(adata, batch_key="batch", n_bootstrap=N_BOOT, random_state=seed)
        for r in table[table["assumption"] == "additivity"].itertuples():
            rows.append(
                {
                    "seed": seed,
                    "combination": r.subject,
                    "true_interaction_norm": float(truth[r.subject]),
                    "effect": r.effect,
                    "verdict": r.verdict,
                }
            )
    return pd.DataFrame(rows)


def _summary(df: pd.DataFrame) -> pd.DataFrame:
    g = df.groupby(["assumption", "regime", "truth"], sort=False)
    out = g.agg(
        seeds=("seed", "nunique"),
        subjects=("subjects", "sum"),
        tested=("tested", "sum"),
        flagged=("flagged", "sum"),
        mean_effect=("mean_effect", "mean"),
    ).reset_index()
    out["flag_rate"] = out["flagged"] / out["tested"].replace(0, np.nan)
    return out


def _plot_rates(summary: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7.5, 3.6), layout="constrained")
    names = list(REGIMES)
    x = np.arange(len(names))
    for k, (truth, colour) in enumerate(((VIOLATED, "#c0392b"), (HOLDS, "#2471a3"))):
        part = summary[summary["truth"] == truth].set_index("assumption").loc[names]
        bars = ax.bar(x + (k - 0.5) * 0.38, part["flag_rate"], width=0.36, color=colour)
        for b, (f, t) in zip(bars, zip(part["flagged"], part["tested"], strict=True), strict=True):
            ax.text(b.get_x() + b.get_width() / 2, b.get_height() + 0.02, f"{f}/{t}", ha="center", fontsize=7)
        bars.set_label(f"regime where the assumption is {'violated' if truth == VIOLATED else 'respected'}")
    ax.axhline(0.05, color="0.4", ls="--", lw=0.8)
    ax.text(-0.5, 0.06, " alpha = 0.05", fontsize=7, color="0.4", ha="left", va="bottom")
    ax.set_xticks(x, [n.replace("_", "\n") for n in names], fontsize=8)
    ax.set_ylabel("share of tested subjects flagged")
    ax.set_ylim(0, 1.12)
    ax.legend(fontsize=7.5, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(f"Assumption checks on simulated screens ({len(SEEDS)} seeds)", fontsize=9, loc="left")
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    single_thread()
    FIGURES.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    print("(a) flag rates", flush=True)
    rates = flag_rates()
    summary = _summary(rates)
    print("(b) additivity vs the true interaction", flush=True)
    add = additivity_vs_truth()
    print("(c) Papalexi", flush=True)
    adata = scmech.datasets.papalexi2021()
    t1 = time.time()
    table = scmech.tl.check_assumptions(adata, batch_key="bio_rep", n_bootstrap=200)
    t_pap = time.time() - t1
    report = scmech.tl.report_assumptions(table)
    scmech.pl.assumptions(table, show=False, save=FIGURES / "assumptions_papalexi.png")
    plt.close("all")
    _plot_rates(summary, FIGURES / "assumptions_flag_rates.png")

    rates.assign(section="flag_rates").to_csv(RESULTS / "assumptions.csv", index=False)
    strong = add[add["true_interaction_norm"] > 0.5]
    null = add[add["true_interaction_norm"] < 0.1]
    pap = table.drop(columns=["detail"]).copy()
    pap = pap[pap["verdict"].isin([HOLDS, VIOLATED])]
    lines = [
        "# Assumption checks: simulator flag rates and the Papalexi screen",
        "",
        f"Made by `{COMMAND}` (scmech {scmech.__version__}; {time.time() - t0:.0f} s on one CPU thread).",
        "",
        f"## (a) Flag rates on simulated screens ({N_CELLS} cells, {N_GENES} genes, 6 targets + 2 combinations, "
        f"seeds {', '.join(map(str, SEEDS))}, {N_BOOT} resamples, alpha = 0.05)",
        "",
        "Each assumption has a regime that violates it and one that respects it; everything else is the "
        'simulator\'s default. `tested` counts subjects with a verdict (the others "cannot be tested": e.g. '
        "perturbations that move cells by less than one control SD cannot be split into escapers and "
        "responders), `flag_rate` = flagged / tested. Baseline rows use the medium whose controls drift (or "
        "rest).",
        "",
        md_table(
            summary[["assumption", "regime", "truth", "subjects", "tested", "flagged", "flag_rate", "mean_effect"]],
            ".2f",
            na_rep="",
        ),
        "",
        "`mean_effect` is the check's effect size (F ratio; unperturbed fraction; growth share; interaction / noise), "
        "averaged over tested subjects and seeds.",
        "",
        "![flag rates](figures/assumptions_flag_rates.png)",
        "",
        "## (b) Additivity against the simulator's noise-free genetic interaction",
        "",
        "Shared response switched off, so that the only non-additivity is the network's: per combination, the "
        "norm of the true interaction L(A+B) - L(A) - L(B) + L(NT) (population pseudobulk, no noise).",
        "",
        md_table(add.sort_values("true_interaction_norm").reset_index(drop=True), ".3f", na_rep=""),
        "",
        f"Flagged: {int((strong['verdict'] == VIOLATED).sum())}/{len(strong)} combinations with a true interaction "
        f"norm > 0.5, {int((null['verdict'] == VIOLATED).sum())}/{len(null)} with a norm < 0.1.",
        "",
        "## (c) Papalexi et al. 2021 THP-1 ECCITE-seq (bundled panel), replicates as batches",
        "",
        "```python",
        "adata = scmech.datasets.papalexi2021()",
        'table = scmech.tl.check_assumptions(adata, batch_key="bio_rep", n_bootstrap=200)',
        "print(scmech.tl.report_assumptions(table))",
        "```",
        "",
        f"{adata.n_obs} cells, {adata.n_vars} genes; {t_pap:.0f} s. There is one read-out, one medium "
        "(IFN-gamma stimulated) and no combinations, so only the batch comparison of controls and the "
        "unique-attractor check can run. Without time points, a difference between replicates is a batch effect or "
        "a drift, which the check cannot tell apart (the report says so).",
        "",
        "Tested subjects:",
        "",
        md_table(pap.reset_index(drop=True), ".3g", na_rep=""),
        "",
        "Report:",
        "",
        "```text",
        report,
        "```",
        "",
        "![Papalexi](figures/assumptions_papalexi.png)",
        "",
    ]
    (RESULTS / "assumptions.md").write_text("\n".join(lines))
    print(summary.to_string())
    print(report)
    print(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
