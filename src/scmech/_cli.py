"""Command-line interface: ``scmech demo`` trains and evaluates on the bundled Papalexi 2021 screen.

Every step uses the public API only (``scmech.datasets``, ``scmech.model``, ``scmech.tl``, ``scmech.pl``); the
demo reads like a notebook: one function per step.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    import pandas as pd
    from anndata import AnnData

__all__ = ["main"]

DEFAULT_TARGETS = ("STAT1", "IFNGR2", "CMTM6")
TABLE_METRICS = (
    "pearson_delta_de",
    "pearson_delta_top_change",
    "systema_pearson_delta",
    "systema_pearson_delta_off",
    "mse_de",
)
KEYS = {"perturbation_key": "perturbation", "control_label": "NT"}
SETUP = {**KEYS, "batch_key": "bio_rep", "perturbation_modality": "CRISPRko"}
MAIN_MODEL = "SemiMechVI"
VANILLA_MODEL = "SemiMechVI_vanilla"
CEILING = "noise_ceiling"


class CLIError(Exception):
    """A user error: reported as one line, without a traceback."""


def _say(msg: str = "") -> None:
    print(msg, flush=True)


def _step(n: int, title: str) -> None:
    _say(f"\n[{n}/5] {title}")


# ---------------------------------------------------------------------- arguments
#: the most epochs or threads the demo takes (a typo such as 10**20 would otherwise start a run that never ends)
_MAX_COUNT = 1_000_000


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not 1 <= n <= _MAX_COUNT:
        msg = f"must be an integer from 1 to {_MAX_COUNT:,}, got {value!r}"
        raise argparse.ArgumentTypeError(msg)
    return n


def _seed(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = -1
    if not 0 <= n < 2**32:
        msg = f"must be an integer from 0 to {2**32 - 1} (numpy's seeds), got {value!r}"
        raise argparse.ArgumentTypeError(msg)
    return n


def _threads(value: str) -> int:
    n = _positive_int(value)
    n_cpus = os.cpu_count()
    if n_cpus is not None and n > n_cpus:
        msg = f"must be at most the {n_cpus} CPUs of this machine, got {value!r}"
        raise argparse.ArgumentTypeError(msg)
    return n


def _out_path(value: str) -> Path:
    if not value.strip():
        msg = "must be a folder path, got an empty string (e.g. --out demo_output)"
        raise argparse.ArgumentTypeError(msg)
    return Path(value)


def build_parser() -> argparse.ArgumentParser:
    """Build the ``scmech`` argument parser (one sub-command, ``demo``; each names its function in ``run``)."""
    parser = argparse.ArgumentParser(prog="scmech", description="Semi-mechanistic models of Perturb-seq data.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo_parser = sub.add_parser(
        "demo",
        help="train SemiMechVI and baselines on the bundled Papalexi 2021 screen and score held-out targets",
        description=(
            "Hold out whole CRISPR targets of the bundled Papalexi et al. 2021 THP-1 screen, train SemiMechVI "
            "and the baselines on the rest, predict the held-out targets and score them; writes metrics, "
            "figures and the trained model to --out."
        ),
    )
    demo_parser.add_argument(
        "--out", type=_out_path, default=Path("demo_output"), help="output folder (default: %(default)s)"
    )
    demo_parser.add_argument(
        "--epochs", type=_positive_int, default=None, help="SemiMechVI epochs (default 30; 3 with --quick)"
    )
    demo_parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the demo's files (metrics.csv, *.png, model/, ...) when --out already holds them",
    )
    demo_parser.add_argument("--seed", type=_seed, default=0, help="random seed (default: %(default)s)")
    demo_parser.add_argument(
        "--test-targets",
        default=",".join(DEFAULT_TARGETS),
        metavar="A,B,...",
        help="comma-separated targets to hold out (default: %(default)s)",
    )
    demo_parser.add_argument(
        "--quick", action="store_true", help="3 epochs and no vanilla model: a smoke run of ~1 minute"
    )
    demo_parser.add_argument(
        "--no-vanilla", action="store_true", help="skip the second SemiMechVI with steady_state_weight=0"
    )
    demo_parser.add_argument(
        "--threads",
        type=_threads,
        default=1,
        help="CPU threads for torch (default: %(default)s; the networks are small, and extra threads slow "
        "training down sharply when other processes share the cores)",
    )
    demo_parser.set_defaults(run=demo)
    return parser


def _output_names(targets: Sequence[str]) -> list[str]:
    """Names of the files and folders the demo writes into ``--out``."""
    fixed = ["metrics.csv", "leaderboard.csv", "leaderboard.png", "training_history.png", "steady_state_residual.png"]
    return [*fixed, *(f"predicted_vs_observed_{t}.png" for t in targets), "model"]


def _check_out(out: Path, targets: Sequence[str], *, overwrite: bool) -> Path:
    """Resolve ``out`` and refuse, before any work, a file, an unwritable place or results it would overwrite.

    Nothing is created here (:func:`_prepare_out` creates the folder once the arguments have been checked).
    """
    out = out.expanduser().resolve()
    if out.exists() and not out.is_dir():
        msg = f"--out {out} is an existing file, not a folder; give a folder path (it is created if missing)"
        raise CLIError(msg)
    parent = next(p for p in (out, *out.parents) if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        why = "is a file" if not parent.is_dir() else "is not writable"
        msg = f"cannot write to output folder {out}: {parent} {why}"
        raise CLIError(msg)
    taken = [name for name in _output_names(targets) if (out / name).exists()]
    if taken and not overwrite:
        msg = (
            f"--out {out} already holds {', '.join(taken[:4])}{' ...' if len(taken) > 4 else ''}, which the demo "
            "would overwrite; pass --overwrite to replace them, or give a new --out folder"
        )
        raise CLIError(msg)
    return out


def _prepare_out(out: Path) -> Path:
    """Create ``out`` and check it is writable before any training is done."""
    out = out.expanduser().resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".scmech_write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        msg = f"cannot write to output folder {out}: {e.strerror or e}"
        raise CLIError(msg) from None
    return out


# ---------------------------------------------------------------------- steps
def load_data() -> AnnData:
    """Step 1: load the bundled screen and print what it holds."""
    import scmech

    adata = scmech.datasets.papalexi2021()
    pert = adata.obs["perturbation"].astype(str)
    n_ctrl, n_unassigned = int((pert == "NT").sum()), int((pert == "unassigned").sum())
    targets = sorted(set(pert) - {"NT", "unassigned"})
    reps = adata.obs["bio_rep"].value_counts().sort_index()
    _say(
        f"Papalexi et al. 2021, THP-1 ECCITE-seq CRISPR knockout screen (stimulated cells): {adata.n_obs:,} cells x "
        f"{adata.n_vars} genes, {len(targets)} targeted genes, {len(reps)} biological replicates "
        f"({', '.join(f'{k}: {v:,}' for k, v in reps.items())} cells). {n_ctrl:,} cells carry a non-targeting "
        f"guide (NT controls, present in every replicate); {n_unassigned:,} cells have no confident guide call "
        "(unassigned) and are neither trained on nor scored."
    )
    return adata


def make_split(adata: AnnData, test_targets: Sequence[str], seed: int):
    """Step 2: hold out every cell of the test targets."""
    import scmech

    pert = adata.obs["perturbation"].astype(str)
    perturbed = set(pert) - {"NT", "unassigned"}
    measured = sorted(perturbed & set(map(str, adata.var_names)))
    for t in test_targets:
        if t not in perturbed:
            msg = f"{t!r} is not a target; targets of this screen: {', '.join(sorted(perturbed))}"
            raise CLIError(msg)
    if perturbed <= set(test_targets):
        msg = (
            f"--test-targets holds out every target of the screen ({len(perturbed)}), so nothing perturbed is left "
            "to train on; hold out fewer, e.g. --test-targets STAT1"
        )
        raise CLIError(msg)
    unmeasured = [t for t in test_targets if t not in measured]
    if unmeasured:
        _say(
            f"{', '.join(unmeasured)}: not a measured gene; SemiMechVI predicts it from the screen's shared response "
            "and the linear model, which needs the target's gene, is left out."
        )
    split = scmech.tl.split(adata, "perturbation", test_conditions=list(test_targets), **KEYS, random_state=seed)
    n_test = {t: int((pert.iloc[split.test] == t).sum()) for t in split.test_conditions}
    _say(
        f"Held out {len(split.test_conditions)} targets ({', '.join(f'{t}: {n} cells' for t, n in n_test.items())}); "
        f"training on {len(split.train):,} cells of {len(split.train_conditions)} targets plus controls, "
        f"{len(split.validation):,} validation cells."
    )
    return split


def train_models(adata: AnnData, split, *, epochs: int, vanilla: bool) -> dict[str, Any]:
    """Step 3: fit the baselines and train SemiMechVI (and the vanilla variant) on the same split."""
    import scmech

    ds = {"external_indexing": split.external_indexing}
    models: dict[str, Any] = {}
    t0 = time.perf_counter()
    baselines = [scmech.tl.ControlMean, scmech.tl.TrainMean, scmech.tl.OwnGene, scmech.tl.TargetClassMean]
    if set(split.test_conditions) <= set(map(str, adata.var_names)):
        baselines.append(scmech.tl.LinearModel)
    for cls in baselines:
        cls.setup_anndata(adata, **SETUP)
        models[cls.__name__] = cls(adata)
        models[cls.__name__].train(datasplitter_kwargs=ds)
    # the precision-weighted train mean: what SemiMechVI anchors a target without training cells on
    models["WeightedTrainMean"] = scmech.tl.TrainMean(adata, weighting="precision")
    models["WeightedTrainMean"].train(datasplitter_kwargs=ds)
    _say(f"Baselines fitted: {', '.join(models)} ({time.perf_counter() - t0:.1f} s).")
    scmech.model.SemiMechVI.setup_anndata(adata, **SETUP)
    for name, weight in [(MAIN_MODEL, 1.0)] + ([(VANILLA_MODEL, 0.0)] if vanilla else []):
        _say(f"Training {name} (steady_state_weight={weight:g}) for {epochs} epoch{'s' * (epochs != 1)} ...")
        t0 = time.perf_counter()
        models[name] = scmech.model.SemiMechVI(adata, steady_state_weight=weight)
        models[name].train(
            max_epochs=epochs,
            datasplitter_kwargs=ds,
            simple_progress_bar=False,  # Lightning's own bar: progress within each epoch
            check_val_every_n_epoch=1,  # scvi-tools skips validation unless early stopping is on
            enable_model_summary=False,
        )
        _say(f"{name} trained in {time.perf_counter() - t0:.0f} s.")
    return models


def evaluate(adata: AnnData, split, models: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, AnnData]]:
    """Step 4: predict the held-out targets with every model and score them, with the noise ceiling."""
    import pandas as pd

    import scmech

    preds = {name: m.predict(split.test_conditions) for name, m in models.items()}
    # the model alone beside the anchored predictor, so the source of every gain is visible
    preds[f"{MAIN_MODEL}_alone"] = models[MAIN_MODEL].predict(split.test_conditions, anchor="none")
    results = scmech.tl.evaluate(preds, adata, split=split, train_conditions=split.train_conditions, **KEYS)
    ceiling = scmech.tl.noise_ceiling(
        adata, conditions=split.test_conditions, train_conditions=split.train_conditions, **KEYS
    )
    metrics = pd.concat([results, ceiling], ignore_index=True)
    return metrics, preds


def print_results(metrics: pd.DataFrame) -> None:
    """Print the models x metrics table and the per-target Pearson delta on the top-20 DE genes."""
    import scmech

    table = scmech.tl.leaderboard_table(metrics, metrics=list(TABLE_METRICS), digits=3)
    order = [m for m in table.index if m != CEILING] + [CEILING]
    table = table.loc[order].fillna("n/a")
    table.index.name = None
    _say(
        "\nHeld-out targets, mean ± sd over the targets (_de: top-20 DE genes of each target vs control by t-test; "
        "_top_change: the 20 genes of largest observed change; systema_*: changes from the mean training "
        "perturbation, _off: without the target's own gene; SemiMechVI_alone: the model without anchoring):"
    )
    _say(table.to_string())
    _say(
        f"{CEILING}: one random half of each target's cells predicting the other half. n/a: a constant change "
        "(ControlMean predicts no change; TrainMean is the Systema reference itself), so its correlation is undefined."
    )
    for metric in ("pearson_delta_top_change", "systema_pearson_delta"):
        per = metrics[metrics["metric"] == metric].pivot(index="model", columns="condition", values="value")
        per = per.loc[[m for m in order if m in per.index]]
        per.index.name = per.columns.name = None
        _say(f"\n{metric} per held-out target:")
        _say(per.round(3).to_string())


def write_outputs(out: Path, adata: AnnData, split, models, preds, metrics: pd.DataFrame) -> None:
    """Step 5: tables, figures and the trained model."""
    import matplotlib

    matplotlib.use("agg")
    import scmech

    metrics.to_csv(out / "metrics.csv", index=False)
    scmech.tl.leaderboard(metrics).to_csv(out / "leaderboard.csv", index=False)
    ax = scmech.pl.leaderboard(metrics, metric="pearson_delta_de", show=False)
    ax.set_title("Held-out targets: " + ", ".join(split.test_conditions), fontsize="medium")
    _save(ax.figure, out / "leaderboard.png")
    for t in split.test_conditions:
        ax = scmech.pl.predicted_vs_observed(preds[MAIN_MODEL], adata, t, split=split, **KEYS, show=False)
        ax.set_title(f"{ax.get_title()}\n{MAIN_MODEL} never saw {t}-perturbed cells", fontsize="medium")
        _save(ax.figure, out / f"predicted_vs_observed_{t}.png")
    trained = {k: m for k, m in models.items() if k in (MAIN_MODEL, VANILLA_MODEL)}
    _save(_history_figure({k: m.history for k, m in trained.items()}), out / "training_history.png")
    _save(_residual_figure(adata, split, models[MAIN_MODEL]), out / "steady_state_residual.png")
    models[MAIN_MODEL].save(out / "model", overwrite=True)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)


def _history_figure(histories: dict[str, dict[str, pd.DataFrame]]):
    """Negative ELBO (train and validation) and the control residual over epochs, one line style per model."""
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    for k, (name, history) in enumerate(histories.items()):
        ls = "-" if k == 0 else "--"
        for key, split, color in (("elbo_train", "train", "C0"), ("elbo_validation", "validation", "C1")):
            if key in history:
                h = history[key]
                ax1.plot(h.index + 1, h.iloc[:, 0], ls=ls, marker="o", ms=3, color=color, label=f"{name}, {split}")
        if "ss_residual_train" in history:
            h = history["ss_residual_train"]
            ax2.plot(h.index + 1, h.iloc[:, 0], ls=ls, marker="o", ms=3, color="C2", label=name)
    ax1.set(xlabel="epoch", ylabel="negative ELBO per cell", title="Fit to the counts (lower is better)")
    ax2.set(
        xlabel="epoch",
        ylabel=r"$\|f_\theta(\bar z_{NT};\, m_0, \varnothing)\|$ (train)",
        title="Drift of the mean control state (steady-state term)",
    )
    for ax in (ax1, ax2):
        ax.legend(frameon=False, fontsize="small")
        ax.spines[["top", "right"]].set_visible(False)
        ax.xaxis.get_major_locator().set_params(integer=True)
    return fig


def _residual_figure(adata: AnnData, split, model):
    """Histogram of the per-cell steady-state residual, controls vs perturbed cells of the training targets."""
    import matplotlib.pyplot as plt
    import numpy as np

    idx = np.union1d(split.train, split.validation)
    pert = adata.obs["perturbation"].astype(str).to_numpy()[idx]
    res = model.get_steady_state_residual(indices=idx)
    groups = {"NT controls": pert == "NT", "perturbed cells (training targets)": pert != "NT"}
    bins = np.linspace(0, np.quantile(res, 0.995), 50)
    fig, ax = plt.subplots(figsize=(6.4, 4), layout="constrained")
    for k, (label, mask) in enumerate(groups.items()):
        r = res[mask]
        lab = f"{label}: n = {mask.sum():,}, median {np.median(r):.2f}"
        ax.hist(r, bins=bins, density=True, histtype="stepfilled", alpha=0.45, color=f"C{k}", label=lab)
        ax.axvline(np.median(r), ymax=0.72, color=f"C{k}", lw=1, ls="--")
    ss = model.history.get("ss_residual_train")
    if ss is not None and len(ss):
        ax.axvline(float(ss.iloc[-1, 0]), ymax=0.72, color="k", lw=1.2, label="at the mean NT state (trained)")
    ax.set_ylim(top=ax.get_ylim()[1] * 1.4)  # room for the legend above the histograms
    ax.set(
        xlabel=r"steady-state residual $\|f_\theta(z_c;\, m_c, p_c)\|$ at each cell's latent mean",
        ylabel="density",
        title="How far is each cell from a fixed point of its own protocol?",
    )
    ax.legend(frameon=False, fontsize="small", loc="upper left")
    ax.spines[["top", "right"]].set_visible(False)
    return fig


# ---------------------------------------------------------------------- entry point
def demo(args: argparse.Namespace) -> int:
    """Run the demo; returns the exit status."""
    t_start = time.perf_counter()
    epochs = args.epochs if args.epochs is not None else (3 if args.quick else 30)
    vanilla = not (args.quick or args.no_vanilla)
    targets = list(dict.fromkeys(t.strip() for t in args.test_targets.split(",") if t.strip()))
    if not targets:
        msg = "--test-targets is empty; give at least one target, e.g. --test-targets STAT1"
        raise CLIError(msg)
    out = _check_out(args.out, targets, overwrite=args.overwrite)
    _say(
        f"scmech demo: SemiMechVI for {epochs} epoch{'s' * (epochs != 1)}"
        f"{' plus a vanilla SemiMechVI (steady_state_weight=0)' if vanilla else ''}, seed {args.seed}, "
        f"{args.threads} thread{'s' * (args.threads != 1)}; results go to {out}"
    )
    _step(1, "Data")
    adata = load_data()
    _step(2, "Held-out perturbation split")
    split = make_split(adata, targets, args.seed)
    out = _prepare_out(out)
    with _runtime(args.threads):
        import scvi

        scvi.settings.seed = args.seed
        _step(3, "Training")
        models = train_models(adata, split, epochs=epochs, vanilla=vanilla)
        _step(4, "Prediction and evaluation of the held-out targets")
        metrics, preds = evaluate(adata, split, models)
        print_results(metrics)
        _step(5, "Writing results")
        try:
            write_outputs(out, adata, split, models, preds, metrics)
        except OSError as e:
            msg = f"cannot write the results to {out}: {e.strerror or e}"
            raise CLIError(msg) from None
    _say(f"\nResults in {out}:")
    for p in sorted(out.iterdir()):
        _say(f"  {p.name}{'/' if p.is_dir() else ''}")
    _say(f"\nDone in {time.perf_counter() - t_start:.0f} s (wall time after start-up and imports).")
    return 0


@contextmanager
def _runtime(threads: int) -> Iterator[None]:
    """Console output limited to the demo and the progress bar; ``threads`` torch threads. Restored on exit."""
    import torch

    names = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "scvi", "scmech")
    levels = {n: logging.getLogger(n).level for n in names}
    n_threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module=r"lightning.*")
            warnings.filterwarnings("ignore", category=FutureWarning)
            for n in names:
                logging.getLogger(n).setLevel(logging.WARNING)
            torch.set_num_threads(threads)
            yield
    finally:
        torch.set_num_threads(n_threads)
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``scmech`` console script."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse has printed the usage and the error (or the help)
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 2
    try:
        return args.run(args)
    except CLIError as e:
        print(f"scmech {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"scmech {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
