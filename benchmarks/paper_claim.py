"""The paper's claim in its own model class: does the steady-state loss help an end-to-end neural ODE?

Kovacevic et al. 2025 report that a neural ODE trained with a loss that makes the controls a steady state has a
lower test error and converges more stably than the vanilla end-to-end neural ODE. This benchmark fits
``scmech.model.NeuralODE`` with and without the term (and, in the steady-state regimes, with the term also on the
perturbed populations), and ``SemiMechVI`` for reference, on four simulated regimes:

- ``differentiating``: controls at the baseline steady state in medium m0, a medium switch into m1 (the
  differentiation cue) one day after the perturbation, read-outs on days 1.5, 2, 3, 4 and 6;
- ``steady``: a non-differentiating screen read out at its steady states;
- ``differentiating+shared`` and ``steady+shared``: the same with a strong response shared by all perturbed cells
  (``systematic_fraction=1``, ``systematic_strength=1.5``), which real screens have.

Errors are against the simulator's noise-free truth (``uns["truth"]["mean_log"]``), per condition: the MSE of the
predicted log-normalised expression and of its change from the control of the same context. Test sets: held-out
perturbations (all regimes); in the time courses also a held-out day (3) and a later day than any trained (6,
extrapolation). Simple baselines sit beside the models: the mean of the training perturbations (held-out
perturbations), the linear interpolation of the observed neighbouring days (held-out day) and the last observed
day (extrapolation).

Stability: every dataset is fitted from several initialisations (training seeds), and the spread over them is
measured for the norm of the learned control field at the control state, the final training loss and the
predictions; the loss curves are drawn.

Run from the repository root::

    python benchmarks/paper_claim.py            # 2 datasets x 5 seeds per regime, writes results/paper_claim.*
    python benchmarks/paper_claim.py --quick    # 1 dataset x 2 seeds, few epochs (a smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from _common import single_thread

RESULTS = Path(__file__).resolve().parent / "results"
SETUP = {"perturbation_key": "perturbation", "control_label": "NT", "batch_key": "batch"}
TIME_SETUP = {**SETUP, "time_key": "time", "media_key": "media", "media_time_key": "media_time"}
SWITCH = 1.0
DAYS = (1.5, 2.0, 3.0, 4.0, 6.0)
TRAIN_DAYS = (1.5, 2.0, 4.0)
HELD_DAY, LATE_DAY = 3.0, 6.0
SHARED = {"systematic_fraction": 1.0, "systematic_strength": 1.5}
REGIMES = {
    "differentiating": {"dynamic": True, "shared": False},
    "differentiating+shared": {"dynamic": True, "shared": True},
    "steady": {"dynamic": False, "shared": False},
    "steady+shared": {"dynamic": False, "shared": True},
}
VANILLA, TERM, TERM_P, SEMIMECH = "NODE vanilla", "NODE + ss term", "NODE + ss term (perturbed too)", "SemiMechVI"


def models_for(regime: str) -> dict[str, dict]:
    """Model name -> constructor arguments (``cls`` is the model's class name)."""
    out = {
        VANILLA: {"cls": "NeuralODE", "steady_state_weight": 0.0},
        TERM: {"cls": "NeuralODE", "steady_state_weight": 1.0},
    }
    if not REGIMES[regime]["dynamic"]:
        out[TERM_P] = {"cls": "NeuralODE", "steady_state_weight": 1.0, "steady_state_perturbed": True}
    out[SEMIMECH] = {"cls": "SemiMechVI"}
    return out


# ---------------------------------------------------------------------------------------------- data and split
def simulate(regime: str, data_seed: int, n_cells: int, n_genes: int):
    import scmech

    spec = REGIMES[regime]
    kwargs = dict(SHARED) if spec["shared"] else {"systematic_strength": 0.0}
    if spec["dynamic"]:
        kwargs.update(regime="dynamic", media_switch_times=(SWITCH,), time_points=DAYS)
    return scmech.data.simulate_perturbseq(
        n_cells, n_genes, n_perturbations=12, n_combinations=0, seed=1000 + data_seed, **kwargs
    )


def split(adata, regime: str, data_seed: int) -> tuple[np.ndarray, list[str], list[str]]:
    """Training cells, held-out perturbations and training perturbations (3 of 12 held out)."""
    perts = sorted(c for c in adata.obs["perturbation"].cat.categories if c != "NT")
    rng = np.random.default_rng(data_seed)
    held = sorted(rng.choice(perts, size=3, replace=False).tolist())
    keep = ~adata.obs["perturbation"].isin(held).to_numpy()
    if REGIMES[regime]["dynamic"]:
        keep &= adata.obs["time"].isin(TRAIN_DAYS).to_numpy()
    return np.flatnonzero(keep), held, [p for p in perts if p not in held]


def _key(cond: str, day: float | None) -> str:
    return f"{cond}|m0" if day is None else f"{cond}|m1|{SWITCH:g}|{day:g}"


# ---------------------------------------------------------------------------------------------- fitting
def fit(adata, name: str, spec: dict, train: np.ndarray, seed: int, epochs: int, dynamic: bool):
    import scvi

    from scmech.model import NeuralODE, SemiMechVI

    cls = {"NeuralODE": NeuralODE, "SemiMechVI": SemiMechVI}[spec["cls"]]
    kwargs = {k: v for k, v in spec.items() if k != "cls"}
    scvi.settings.seed = seed
    b = adata.copy()
    cls.setup_anndata(b, **(TIME_SETUP if dynamic else SETUP))
    model = cls(b, **kwargs)
    t0 = time.perf_counter()
    model.train(
        max_epochs=epochs,
        enable_progress_bar=False,
        datasplitter_kwargs={"external_indexing": [train, np.array([], dtype=int), np.array([], dtype=int)]},
    )
    return model, time.perf_counter() - t0


def predictions(model, conds: list[str], dynamic: bool) -> dict[str, pd.DataFrame]:
    """Predicted log-normalised expression per test context (day), conditions x genes."""
    out = {}
    for day in DAYS if dynamic else (None,):
        kw = {"media": "m1", "time": day, "media_time": SWITCH} if dynamic else {}
        pred = model.predict([*conds, "NT"], n_cells=300, random_state=0, **kw)
        out[day] = pd.DataFrame(pred.X, index=pred.obs["perturbation"].astype(str).to_numpy(), columns=pred.var_names)
    return out


def control_field(model, adata, train: np.ndarray, dynamic: bool) -> float:
    r""":math:`\|f_\theta(z_\varnothing; m_0, \varnothing)\|` at the control state the flows start from."""
    import torch

    module = model.module
    if dynamic:
        z = module.z_base.detach().reshape(1, -1)
    else:
        ctrl = np.intersect1d(np.flatnonzero((adata.obs["perturbation"] == "NT").to_numpy()), train)
        z = torch.as_tensor(model.get_latent_representation(indices=ctrl).mean(0), dtype=torch.float32).reshape(1, -1)
    with torch.no_grad():
        f = module.field(z, torch.zeros(1, dtype=torch.long), torch.zeros_like(z))
    return float(f.norm())


# ---------------------------------------------------------------------------------------------- scoring
def _scores(pred: np.ndarray, truth: np.ndarray, pred_ctrl: np.ndarray, truth_ctrl: np.ndarray) -> dict:
    dp, dt = pred - pred_ctrl, truth - truth_ctrl
    return {
        "mse": float(np.mean((pred - truth) ** 2)),
        "mse_delta": float(np.mean((dp - dt) ** 2)),
        "pearson_delta": float(np.corrcoef(dp, dt)[0, 1]) if dp.std() > 0 and dt.std() > 0 else np.nan,
    }


def test_sets(regime: str, held: list[str], trained: list[str]) -> list[tuple[str, str, float | None]]:
    """``(test set, condition, day)`` of every scored prediction."""
    if not REGIMES[regime]["dynamic"]:
        return [("held-out perturbation", c, None) for c in held]
    rows = [("held-out perturbation", c, d) for c in held for d in TRAIN_DAYS]
    rows += [("held-out day", c, HELD_DAY) for c in trained]
    rows += [("later day (extrapolation)", c, LATE_DAY) for c in trained]
    return rows


def baselines(adata, train: np.ndarray, regime: str, held: list[str], trained: list[str]) -> dict:
    """Simple baselines' predictions keyed by (test set, condition, day): train mean, interpolation, last day."""
    import scmech

    key = scmech.data.simulation_group_keys(adata.obs)  # the truth's keys, e.g. "G0001|m1|1|2"
    groups = np.full(adata.n_obs, "", dtype=object)
    groups[train] = key[train]
    pb = scmech.data.pseudobulk(adata, groups.astype(str), min_cells=3)
    pb = pb.loc[[k for k in pb.index if k]]
    out = {}
    for test, cond, day in test_sets(regime, held, trained):
        if test == "held-out perturbation":
            rows = [_key(p, day) for p in trained if _key(p, day) in pb.index]
            out[(test, cond, day)] = ("train mean", pb.loc[rows].mean(0).to_numpy(), pb.loc[_key("NT", day)].to_numpy())
        elif test == "held-out day":
            lo, hi = _key(cond, 2.0), _key(cond, 4.0)
            w = (HELD_DAY - 2.0) / 2.0
            value = (1 - w) * pb.loc[lo].to_numpy() + w * pb.loc[hi].to_numpy()
            ctrl = (1 - w) * pb.loc[_key("NT", 2.0)].to_numpy() + w * pb.loc[_key("NT", 4.0)].to_numpy()
            out[(test, cond, day)] = ("interpolation", value, ctrl)
        else:
            out[(test, cond, day)] = (
                "last day",
                pb.loc[_key(cond, 4.0)].to_numpy(),
                pb.loc[_key("NT", 4.0)].to_numpy(),
            )
    return out


# ---------------------------------------------------------------------------------------------- one regime
def run_regime(regime: str, n_data: int, n_seeds: int, epochs: int, n_cells: int, n_genes: int) -> dict:
    """Fit every model on every dataset and seed of one regime; return score, stability and curve records."""
    single_thread("lightning.fabric")
    dynamic = REGIMES[regime]["dynamic"]
    scores, fits, curves, spread = [], [], [], []
    for d in range(n_data):
        adata = simulate(regime, d, n_cells, n_genes)
        truth = adata.uns["truth"]["mean_log"]
        train, held, trained = split(adata, regime, d)
        tests = test_sets(regime, held, trained)
        for (test, cond, day), (name, value, ctrl) in baselines(adata, train, regime, held, trained).items():
            s = _scores(value, truth.loc[_key(cond, day)].to_numpy(), ctrl, truth.loc[_key("NT", day)].to_numpy())
            scores.append(
                {
                    "regime": regime,
                    "data": d,
                    "seed": -1,
                    "model": name,
                    "test": test,
                    "condition": _key(cond, day),
                    **s,
                }
            )
        for name, spec in models_for(regime).items():
            preds = []
            for seed in range(n_seeds):
                model, secs = fit(adata, name, spec, train, seed, epochs, dynamic)
                pred = predictions(model, held + trained, dynamic)
                preds.append(pred)
                for test, cond, day in tests:
                    p = pred[day]
                    s = _scores(
                        p.loc[cond].to_numpy(),
                        truth.loc[_key(cond, day)].to_numpy(),
                        p.loc["NT"].to_numpy(),
                        truth.loc[_key("NT", day)].to_numpy(),
                    )
                    scores.append(
                        {
                            "regime": regime,
                            "data": d,
                            "seed": seed,
                            "model": name,
                            "test": test,
                            "condition": _key(cond, day),
                            **s,
                        }
                    )
                hist = model.history["elbo_train"]["elbo_train"].to_numpy(dtype=float)
                ss = model.history["ss_residual_train"]["ss_residual_train"].to_numpy(dtype=float)
                curves += [
                    {
                        "regime": regime,
                        "data": d,
                        "seed": seed,
                        "model": name,
                        "epoch": e,
                        "elbo_train": v,
                        "ss_residual_train": r,
                    }
                    for e, (v, r) in enumerate(zip(hist, ss, strict=True))
                ]
                fits.append(
                    {
                        "regime": regime,
                        "data": d,
                        "seed": seed,
                        "model": name,
                        "control_field_norm": control_field(model, adata, train, dynamic),
                        "final_elbo_train": float(hist[-1]),
                        "train_seconds": secs,
                    }
                )
                print(f"{regime} data {d} seed {seed} {name}: {secs:.0f} s", flush=True)
            # spread over training seeds of the predictions (same data): sd per gene and condition, then the mean
            for test, cond, day in tests:
                stack = np.stack([p[day].loc[cond].to_numpy() for p in preds])
                spread.append(
                    {
                        "regime": regime,
                        "data": d,
                        "model": name,
                        "test": test,
                        "condition": _key(cond, day),
                        "prediction_sd": float(stack.std(0, ddof=1).mean()),
                    }
                )
    return {"scores": scores, "fits": fits, "curves": curves, "spread": spread}


# ---------------------------------------------------------------------------------------------- report
def summarise(scores: pd.DataFrame, fits: pd.DataFrame, spread: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Errors per fit (mean over conditions), then mean and sd over fits, and the per-fit wins of the term."""
    per_fit = scores.groupby(["regime", "test", "model", "data", "seed"], as_index=False)[["mse", "mse_delta"]].mean()
    err = per_fit.groupby(["regime", "test", "model"]).agg(
        mse=("mse", "mean"),
        mse_sd=("mse", "std"),
        mse_delta=("mse_delta", "mean"),
        mse_delta_sd=("mse_delta", "std"),
        n_fits=("mse", "size"),
    )
    for measure in ("mse", "mse_delta"):
        wide = per_fit.pivot_table(index=["regime", "test", "data", "seed"], columns="model", values=measure)
        both = wide[[VANILLA, TERM]].dropna()
        wins = (both[TERM] < both[VANILLA]).groupby(level=["regime", "test"]).sum().rename(f"term_wins_{measure}")
        err = err.join(wins, on=["regime", "test"])
    err = err.join(
        per_fit[per_fit["model"] == TERM].groupby(["regime", "test"]).size().rename("pairs"), on=["regime", "test"]
    )
    stab = fits.groupby(["regime", "model", "data"]).agg(
        field_norm=("control_field_norm", "mean"),
        field_norm_sd=("control_field_norm", "std"),
        elbo_sd=("final_elbo_train", "std"),
        seconds=("train_seconds", "mean"),
    )
    pred_sd = spread.groupby(["regime", "model", "data"])["prediction_sd"].mean()
    stab = stab.join(pred_sd).groupby(level=["regime", "model"]).mean()
    return err.reset_index(), stab.reset_index()


#: smallest relative change of the mean error (or spread) counted as a difference
MATERIAL = 0.05


def _error_verdict(term: float, vanilla: float, wins: int, pairs: int) -> str:
    rel = (term - vanilla) / vanilla
    if abs(rel) < MATERIAL:
        lean = (
            " (consistently lower)"
            if wins >= 0.8 * pairs
            else (" (consistently higher)" if wins <= 0.2 * pairs else "")
        )
        return f"within {MATERIAL:.0%}{lean}"
    if rel < 0 and wins >= 0.8 * pairs:
        return "**reproduced** (lower with the term)"
    if rel > 0 and wins <= 0.2 * pairs:
        return "**reversed** (higher with the term)"
    return "no consistent difference"


def verdicts(err: pd.DataFrame, stab: pd.DataFrame) -> list[str]:
    """One verdict per claim and regime, from the numbers (the rule is stated in the results file)."""
    lines = []
    for regime in REGIMES:
        e = err[(err["regime"] == regime) & err["model"].isin([VANILLA, TERM])]
        if e.empty:
            continue
        parts = []
        for test, g in e.groupby("test", sort=False):
            v, t = g.set_index("model").loc[VANILLA], g.set_index("model").loc[TERM]
            pairs = int(t["pairs"])
            for measure, what in (("mse", "level"), ("mse_delta", "change")):
                wins = int(t[f"term_wins_{measure}"])
                verdict = _error_verdict(t[measure], v[measure], wins, pairs)
                rel = (t[measure] - v[measure]) / v[measure]
                parts.append(
                    f"{test}, {what}: {verdict} ({t[measure]:.4f} vs {v[measure]:.4f}, {rel:+.0%}; term lower in "
                    f"{wins}/{pairs} fits)"
                )
        lines.append(f"- **{regime}, test error.** " + "; ".join(parts) + ".")
        s = stab[stab["regime"] == regime].set_index("model")
        sv, st = s.loc[VANILLA], s.loc[TERM]
        d_pred = (st["prediction_sd"] - sv["prediction_sd"]) / sv["prediction_sd"]
        d_loss = (st["elbo_sd"] - sv["elbo_sd"]) / sv["elbo_sd"]
        if d_pred <= -2 * MATERIAL and d_loss <= 2 * MATERIAL:
            verdict = "**reproduced**"
        elif d_pred <= -2 * MATERIAL:
            verdict = "**partly reproduced** (steadier predictions, not a steadier final loss)"
        else:
            verdict = "**not reproduced**"
        lines.append(
            f"- **{regime}, stability.** {verdict}: spread over training seeds of the predictions {d_pred:+.0%} "
            f"({st['prediction_sd']:.4f} vs {sv['prediction_sd']:.4f}) and of the final loss {d_loss:+.0%} "
            f"({st['elbo_sd']:.2f} vs {sv['elbo_sd']:.2f}) with the term; the control field it penalises is "
            f"{st['field_norm']:.3f} (sd {st['field_norm_sd']:.3f}) against {sv['field_norm']:.3f} "
            f"(sd {sv['field_norm_sd']:.3f}) without it."
        )
    return lines


def figure(curves: pd.DataFrame, path: Path) -> None:
    """Training loss and control-field residual per epoch, every fit, per regime."""
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    regimes = [r for r in REGIMES if r in set(curves["regime"])]
    fig, axes = plt.subplots(2, len(regimes), figsize=(4.2 * len(regimes), 6.4), squeeze=False)
    colours = {VANILLA: "tab:grey", TERM: "tab:blue", TERM_P: "tab:purple", SEMIMECH: "tab:orange"}
    rows = (
        ("elbo_train", "training -ELBO per cell\nabove the lowest final value + 0.1"),
        ("ss_residual_train", "control field norm (training)"),
    )
    for j, regime in enumerate(regimes):
        sub = curves[curves["regime"] == regime]
        last = sub[sub["epoch"] == sub.groupby(["model", "data", "seed"])["epoch"].transform("max")]
        best = last.groupby("data")["elbo_train"].min()
        for i, (col, label) in enumerate(rows):
            ax = axes[i][j]
            for (model, d, seed), g in sub.groupby(["model", "data", "seed"]):
                first = (d, seed) == (sub["data"].min(), sub["seed"].min())
                y = g[col].to_numpy()
                if col == "elbo_train":  # above the dataset's lowest final loss: datasets differ in their level
                    y = y - best[d] + 0.1
                ax.plot(g["epoch"], y, color=colours.get(model, "k"), alpha=0.5, lw=1, label=model if first else None)
            ax.set_yscale("log")
            ax.set_title(regime if i == 0 else "")
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
        axes[0][j].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(args, err: pd.DataFrame, stab: pd.DataFrame, minutes: float) -> str:
    def table(df: pd.DataFrame) -> str:
        return df.to_markdown(index=False, floatfmt=".4g")

    command = "python benchmarks/paper_claim.py" + (" --quick" if args.quick else "")
    return "\n".join(
        [
            "# The paper's claim in its own model class: the steady-state loss in an end-to-end neural ODE",
            "",
            f"Command: `{command}` ({minutes:.0f} min on {os.cpu_count()} CPU cores; {args.data} datasets x "
            f"{args.seeds} training seeds per regime, {args.epochs} epochs, {args.cells} cells x {args.genes} genes, "
            "12 single targets of which 3 are held out).",
            "",
            "Models: `NeuralODE` without the term (the paper's vanilla model, `steady_state_weight=0`), with it on the "
            "baseline controls (`steady_state_weight=1`), in the steady-state regimes also on the perturbed "
            "populations "
            "(`steady_state_perturbed=True`), and `SemiMechVI` (defaults, anchored predictions) for reference. Errors "
            "are against the simulator's noise-free truth; `mse` is of the log-normalised expression, `mse_delta` of "
            "its change from the control of the same context; means over fits (datasets x seeds) of the per-fit mean "
            "over conditions, with the sd over fits. `term_wins` counts the fits in which the term has the lower "
            "`mse_delta` than vanilla on the same data and seed.",
            "",
            f"Verdict rule, test error (level and change, per test set): **reproduced** when the term's mean error is "
            f"lower by at least {MATERIAL:.0%} and it is lower in at least 80% of the paired fits (same data and "
            "seed); **reversed** in the opposite case; *within 5%* when the means differ by less (whatever the "
            "wins); otherwise *no consistent difference*. Stability: **reproduced** when the spread of the "
            f"predictions over training seeds falls by at least {2 * MATERIAL:.0%} with the term and the spread of "
            f"the final loss does not rise by more than {2 * MATERIAL:.0%}. The control field's own spread is shown "
            "but not used: it is what the term penalises.",
            "",
            "## Verdicts",
            "",
            *verdicts(err, stab),
            "",
            "## Test error",
            "",
            table(err),
            "",
            "## Stability over training seeds (same data)",
            "",
            "`field_norm`: the norm of the learned control field at the control state the flows start from (mean "
            "latent state of the training controls; the baseline state in the time courses); `field_norm_sd`, "
            "`elbo_sd` (final training loss) and `prediction_sd` (log-normalised expression of the test conditions, "
            "mean over genes and conditions): sd over training seeds on the same data, averaged over datasets.",
            "",
            table(stab),
            "",
            "![loss curves](figures/paper_claim_curves.png)",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 dataset x 2 seeds, 8 epochs")
    parser.add_argument("--regimes", nargs="*", default=list(REGIMES), choices=list(REGIMES))
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="regimes run in parallel")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report and figure from the CSVs")
    parser.add_argument("--seeds", type=int, default=None, help="training seeds per dataset (5; 2 with --quick)")
    args = parser.parse_args()
    args.data, seeds, args.epochs = (1, 2, 8) if args.quick else (2, 5, 40)
    args.seeds = seeds if args.seeds is None else args.seeds
    if args.seeds < 2:
        parser.error(f"--seeds {args.seeds}: the spread over training seeds needs at least 2")
    args.cells, args.genes = (800, 40) if args.quick else (2000, 80)
    suffix = "_quick" if args.quick else ""
    meta_path = RESULTS / f"paper_claim_meta{suffix}.json"
    names = ("scores", "fits", "curves", "spread")
    if args.report_only:
        frames = {k: pd.read_csv(RESULTS / f"paper_claim_{k}{suffix}.csv") for k in names}
        minutes = json.loads(meta_path.read_text())["minutes"]
    else:
        t0 = time.perf_counter()
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = {
                r: pool.submit(run_regime, r, args.data, args.seeds, args.epochs, args.cells, args.genes)
                for r in args.regimes
            }
            parts = {r: f.result() for r, f in futures.items()}
        frames = {k: pd.DataFrame([row for p in parts.values() for row in p[k]]) for k in names}
        minutes = (time.perf_counter() - t0) / 60
        RESULTS.mkdir(exist_ok=True)
        for k, df in frames.items():
            df.to_csv(RESULTS / f"paper_claim_{k}{suffix}.csv", index=False)
        meta_path.write_text(json.dumps({"minutes": minutes}))
    err, stab = summarise(frames["scores"], frames["fits"], frames["spread"])
    figure(frames["curves"], RESULTS / "figures" / f"paper_claim_curves{suffix}.png")
    text = report(args, err, stab, minutes)
    if args.quick:
        text = text.replace("figures/paper_claim_curves.png", "figures/paper_claim_curves_quick.png")
    (RESULTS / f"paper_claim{suffix}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
