"""Leaderboard of SemiMechVI against every baseline on simulated regimes and the bundled Papalexi screen.

Every model goes through the same public API (``setup_anndata``, ``train`` with the split's
``external_indexing``, ``predict``) and every prediction through :func:`scmech.tl.evaluate` with the split, so
the harness runs on any AnnData with a perturbation column and a control label (:func:`run_regime`).

Regimes (each over 3 seeds; the seed changes the simulated screen, the held-out set and the initialisation;
simulated screens have 3,000 cells and 200 genes and SemiMechVI trains 20 epochs on them, 30 on Papalexi):

``sim_singles``
    Steady-state simulator, 25 % of the single perturbations held out.
``sim_combinations``
    Steady-state simulator with combinations; held-out combinations whose two singles are seen (``seen=2``).
``sim_combinations_lognorm``
    A simulated CRISPRa screen with combinations, log-normalised as scanpy does and registered with
    ``counts=False`` (SemiMechVI with ``gene_likelihood="normal"``, every score on the log-normalised values):
    held-out combinations whose two singles are seen, the form of published CRISPRa double screens.
``sim_time``
    Dynamic simulator (a relaxation time course, one medium): the 2-day time point held out.
``sim_media``
    Steady-state simulator with two media: the perturbed cells of medium ``m1`` held out (its controls train).
``sim_media_targets``
    The same simulator with a third of its 16 targets held out of medium ``m1`` only: observed in ``m0``, predicted
    in ``m1`` by the carry-over calibrated on the targets observed in both (the setting of a screen whose targets
    were observed in one medium and are predicted in another). ``ObservedChangeCarried``, each target's observed
    change in ``m0`` added to ``m1``'s controls, is the simple baseline there.
``papalexi_perturbations``
    Papalexi 2021: leave-3-out over the 9 knockouts whose target is measured (the seed shuffles them into 3
    folds of 3; each fold is a separate fit), so every measured target is held out once per seed.
``papalexi_unmeasured``
    Papalexi 2021: leave-8-out over the 16 knockouts whose target is not a measured gene (2 folds of 8 per seed);
    with ``papalexi_perturbations`` every one of the 25 targets is predicted and scored. The linear model cannot
    embed these targets and is left out.
``papalexi_replicate``
    Papalexi 2021: one biological replicate's perturbed cells held out (``rep_1``, ``rep_2``, ``rep_3``); scored
    on the knockouts whose target is measured (the linear model cannot embed the others). Every model predicts
    in the held-out replicate (``predict(..., batch=rep)``).
``papalexi_lognorm``
    ``papalexi_perturbations`` on the screen log-normalised as scanpy does (``normalize_total(target_sum=1e4)``
    and ``log1p``), registered with ``counts=False``: SemiMechVI with ``gene_likelihood="normal"``, every model
    and the scores on the log-normalised values (``evaluate(..., counts=False)``), the form most published screens
    are shared in.

On simulated regimes every model is also scored against the simulator's noise-free truth (``truth_*``: the
predicted change from the model's own predicted control in the held-out context against the true change), a
second table per regime: observed pseudobulks carry sampling noise, and a change measured against the held-out
group's observed controls shares their noise with any prediction that does not use those controls.

Models: ``ControlMean``, ``TrainMean``, ``WeightedTrainMean`` (``TrainMean(weighting="precision")``, the
random-effects mean that SemiMechVI anchors unseen targets on), ``OwnGene`` (train mean with the calibrated own-gene
change), ``WeightedOwnGene`` (``OwnGene(weighting="precision")``: the weighted mean with the calibrated own-gene
change, nearly SemiMechVI's anchor without the model), ``TargetClassMean`` (mean of the measured training targets),
``Additive`` (combinations), ``LinearModel`` (Ahlmann-Eltze et al.), ``SemiMechVI`` and ``SemiMechVI_vanilla``
(``steady_state_weight=0``), and each SemiMechVI's own read-out without anchoring (``*_alone``,
``predict(anchor="none")`` of the same fit), the anchored prediction without the propagation of an unseen target's
knock-down through the learned dynamics (``*_no_propagation``: the target map's gain set to 0; equal to the full
prediction wherever the gain did not validate or no target is unseen), plus the split-half noise ceiling where the
held-out conditions have enough cells. pertpy's scGen (``scmech.tl.ScGen``) is left out: it needs a GPU to be
practical at these sizes.

Run from the repository root::

    python benchmarks/accuracy.py                   # all regimes, writes benchmarks/results/accuracy.{md,csv}
    python benchmarks/accuracy.py --parts sim       # simulated regimes only (accuracy_sim.*)
    python benchmarks/accuracy.py --parts papalexi  # Papalexi regimes only (accuracy_papalexi.*)
    python benchmarks/accuracy.py --quick           # 1 seed, few epochs (smoke test, *_quick.*)
    python benchmarks/accuracy.py --merge           # combine the part files into accuracy.{md,csv}
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scanpy as sc
import scvi
from _common import papalexi_folds, single_thread

import scmech
from scmech.model import SemiMechVI

if TYPE_CHECKING:
    from collections.abc import Callable

RESULTS = Path(__file__).resolve().parent / "results"
KEYS = {"perturbation_key": "perturbation", "control_label": "NT"}
METRICS = (
    "pearson_delta_de",
    "pearson_delta_top_change",
    "systema_pearson_delta",
    "systema_pearson_delta_off",
    "systema_pearson_delta_de",
    "pearson_delta",
    "mse_de",
    "l2_top",
    "direction_accuracy_de",
    "centroid_accuracy",
)
TRUTH_METRICS = ("truth_pearson_delta_de", "truth_pearson_delta", "truth_mse_de")
REGIMES = {
    "sim": (
        "sim_singles",
        "sim_combinations",
        "sim_combinations_lognorm",
        "sim_time",
        "sim_media",
        "sim_media_targets",
    ),
    "papalexi": ("papalexi_perturbations", "papalexi_unmeasured", "papalexi_replicate", "papalexi_lognorm"),
}


# ---------------------------------------------------------------------------------------------- the harness
def run_regime(
    adata,
    split: scmech.tl.Split,
    *,
    setup: dict[str, Any],
    models: dict[str, Callable[[Any], Any]],
    predict_kwargs: dict[str, Any] | None = None,
    epochs: int = 30,
    seed: int = 0,
    ceiling: bool = True,
) -> pd.DataFrame:
    """Fit every model on ``split``, predict its test conditions and score them (tidy frame).

    ``models`` maps a name to a factory ``f(adata) -> model`` of a class with the scvi-tools interface
    (``setup_anndata`` is called on a copy of ``adata`` with ``setup``). ``predict_kwargs`` (media, time)
    go to every model's ``predict``.
    """
    ds = {"external_indexing": split.external_indexing}
    preds, seconds, ctrl_preds = {}, {}, {}
    for name, factory in models.items():
        scvi.settings.seed = seed
        data = adata.copy()
        model = factory(data)
        t0 = time.perf_counter()
        if isinstance(model, SemiMechVI):
            model.train(max_epochs=epochs, datasplitter_kwargs=ds, enable_progress_bar=False)
        else:
            model.train(datasplitter_kwargs=ds)
        seconds[name] = time.perf_counter() - t0
        variants = {name: "auto", f"{name}_alone": "none"} if isinstance(model, SemiMechVI) else {name: None}
        if isinstance(model, SemiMechVI) and getattr(model, "target_map_", None) is not None:
            variants[f"{name}_no_propagation"] = "no propagation"
        for key, anchor in variants.items():
            kw = {**(predict_kwargs or {}), **({"anchor": anchor} if anchor else {})}
            preds[key], ctrl = _predict(model, split, kw, setup["control_label"], "truth" in adata.uns)
            seconds[key] = seconds[name]
            if ctrl is not None:
                ctrl_preds[key] = ctrl
    keys = {k: setup[k] for k in ("perturbation_key", "control_label") if k in setup}
    keys["counts"] = setup.get("counts", True)
    res = scmech.tl.evaluate(preds, adata, split=split, **keys)
    if "truth" in adata.uns:  # simulated data: also score against the noise-free truth
        res = pd.concat([res, _truth_scores(adata, split, preds, ctrl_preds, setup)], ignore_index=True)
    res["train_seconds"] = res["model"].map(seconds)
    if ceiling and split.kind in ("perturbation", "combination"):
        nc = scmech.tl.noise_ceiling(
            adata, conditions=split.test_conditions, train_conditions=split.train_conditions, **keys
        )
        res = pd.concat([res, nc], ignore_index=True)
    res["seed"] = seed
    return res


def _predict(model, split, kw: dict, control_label: str, with_control: bool) -> tuple:
    """Predictions of the test conditions (and of the control when ``with_control``).

    ``anchor="no propagation"`` is the ablation of the propagation through the learned dynamics: the anchored
    prediction with the target map's propagation gain set to 0 for this call (an unseen target is then its class
    mean plus its own-gene knock-down), so that what the propagation adds is visible beside the full prediction.
    """
    kw = dict(kw)
    saved = None
    if kw.get("anchor") == "no propagation":
        kw["anchor"] = "auto"
        saved = model.target_map_.gain
        model.target_map_.gain = 0.0
    try:
        pred = model.predict(list(split.test_conditions), **kw)
        ctrl = model.predict([control_label], **kw) if with_control else None
    finally:
        if saved is not None:
            model.target_map_.gain = saved
    return pred, ctrl


def _truth_scores(adata, split, preds: dict, ctrl_preds: dict, setup: dict, n_de: int = 20) -> pd.DataFrame:
    """Each model's predicted change from its own predicted control against the simulator's noise-free change.

    Observed pseudobulks carry sampling noise, and a change measured against the held-out group's observed
    controls shares their noise with any prediction that does not use those controls; the truth has neither.
    ``truth_pearson_delta_de`` is on the ``n_de`` genes with the largest true change.
    """
    truth = adata.uns["truth"]["mean_log"]
    keys = scmech.data.simulation_group_keys(adata.obs)
    labels = adata.obs[setup["perturbation_key"]].astype(str).to_numpy()
    rows = []
    for cond in split.test_conditions:
        held = sorted(set(keys[split.test][labels[split.test] == cond]))
        if len(held) != 1:  # the condition must sit in one context (medium, time, protocol)
            continue
        key = held[0]
        ctrl_key = "|".join([setup["control_label"], *key.split("|")[1:]])
        dt = truth.loc[key].to_numpy() - truth.loc[ctrl_key].to_numpy()
        top = np.argsort(-np.abs(dt))[:n_de]
        for name, pred in preds.items():
            labs = pred.obs[setup["perturbation_key"]].astype(str).to_numpy()
            dp = np.asarray(pred.X[labs == cond][0], dtype=np.float64) - np.asarray(ctrl_preds[name].X[0])
            for metric, value in (
                ("truth_pearson_delta_de", np.corrcoef(dp[top], dt[top])[0, 1]),
                ("truth_pearson_delta", np.corrcoef(dp, dt)[0, 1]),
                ("truth_mse_de", np.mean((dp[top] - dt[top]) ** 2)),
            ):
                rows.append({"model": name, "condition": cond, "metric": metric, "value": float(value)})
    return pd.DataFrame(rows)


def _factories(
    setup: dict[str, Any], *, additive: bool = False, vanilla: bool = True, linear: bool = True
) -> dict[str, Callable]:
    def baseline(cls, **kwargs):
        def make(data):
            cls.setup_anndata(data, **setup)
            return cls(data, **kwargs)

        return make

    def semimech(**kwargs):
        def make(data):
            SemiMechVI.setup_anndata(data, **setup)
            likelihood = {} if setup.get("counts", True) else {"gene_likelihood": "normal"}
            return SemiMechVI(data, **likelihood, **kwargs)

        return make

    out = {"ControlMean": baseline(scmech.tl.ControlMean), "TrainMean": baseline(scmech.tl.TrainMean)}
    out["WeightedTrainMean"] = baseline(scmech.tl.TrainMean, weighting="precision")
    out["OwnGene"] = baseline(scmech.tl.OwnGene)
    out["WeightedOwnGene"] = baseline(scmech.tl.OwnGene, weighting="precision")
    out["TargetClassMean"] = baseline(scmech.tl.TargetClassMean)
    if additive:
        out["Additive"] = baseline(scmech.tl.Additive)
    if linear:
        out["LinearModel"] = baseline(scmech.tl.LinearModel)
    out["SemiMechVI"] = semimech()
    if vanilla:
        out["SemiMechVI_vanilla"] = semimech(steady_state_weight=0.0)
    return out


# ---------------------------------------------------------------------------------------------- the regimes
def _sim(seed: int, n_cells: int, **kwargs):
    adata = scmech.data.simulate_perturbseq(n_cells=n_cells, n_genes=200, seed=seed, **kwargs)
    adata.obs["perturbation"] = adata.obs["perturbation"].astype(str)
    return adata


def regime(name: str, seed: int, epochs: int, n_cells: int) -> pd.DataFrame:
    """Data, split and models of one regime and seed, scored."""
    setup = {**KEYS, "batch_key": "batch"}
    if name == "sim_singles":
        adata = _sim(seed, n_cells, n_perturbations=24, n_combinations=0)
        split = scmech.tl.split(adata, "perturbation", test_size=0.25, random_state=seed, **KEYS)
        return run_regime(adata, split, setup=setup, models=_factories(setup), epochs=epochs, seed=seed)
    if name == "sim_combinations":
        adata = _sim(seed, n_cells, n_perturbations=16, n_combinations=16)
        split = scmech.tl.split(adata, "combination", seen=2, test_size=0.4, random_state=seed, **KEYS)
        models = _factories(setup, additive=True)
        return run_regime(adata, split, setup=setup, models=models, epochs=epochs, seed=seed)
    if name == "sim_combinations_lognorm":
        adata = _sim(seed, n_cells, n_perturbations=16, n_combinations=16, modality="CRISPRa")
        sc.pp.normalize_total(adata, target_sum=1e4)
        sc.pp.log1p(adata)
        setup = {**setup, "counts": False, "perturbation_modality": "CRISPRa"}
        split = scmech.tl.split(adata, "combination", seen=2, test_size=0.4, random_state=seed, **KEYS)
        models = _factories(setup, additive=True, vanilla=False)
        return run_regime(adata, split, setup=setup, models=models, epochs=epochs, seed=seed)
    if name == "sim_time":
        adata = _sim(
            seed,
            n_cells,
            n_perturbations=16,
            n_combinations=0,
            regime="dynamic",
            media_switch_times=None,
            time_points=(0.5, 1.0, 2.0, 4.0),
        )
        setup = {**setup, "time_key": "time"}
        split = scmech.tl.split(adata, "time", time_key="time", test_conditions=[2.0], random_state=seed, **KEYS)
        conds = sorted(set(adata.obs["perturbation"].iloc[split.test]) - {"NT"})
        split = _with_conditions(split, conds)
        return run_regime(
            adata, split, setup=setup, models=_factories(setup), predict_kwargs={"time": 2.0}, epochs=epochs, seed=seed
        )
    if name == "sim_media":
        adata = _sim(seed, n_cells, n_perturbations=16, n_combinations=0, n_media=2)
        setup = {**setup, "media_key": "media"}
        split = scmech.tl.split(adata, "media", media_key="media", test_conditions=["m1"], random_state=seed, **KEYS)
        conds = sorted(set(adata.obs["perturbation"].iloc[split.test]) - {"NT"})
        split = _with_conditions(split, conds)
        return run_regime(
            adata,
            split,
            setup=setup,
            models=_factories(setup),
            predict_kwargs={"media": "m1"},
            epochs=epochs,
            seed=seed,
        )
    if name == "sim_media_targets":
        adata = _sim(seed, n_cells, n_perturbations=16, n_combinations=0, n_media=2)
        setup = {**setup, "media_key": "media"}
        targets = sorted(set(adata.obs["perturbation"].astype(str)) - {"NT"})
        held = sorted(np.random.default_rng(seed).choice(targets, len(targets) // 3, replace=False).tolist())
        split = scmech.tl.split(adata, "perturbation", test_conditions=held, random_state=seed, **KEYS)
        in_m1 = adata.obs["media"].astype(str).to_numpy() == "m1"
        test = np.sort(split.test[in_m1[split.test]])  # held out of m1 only: their m0 cells train
        train = np.sort(np.concatenate([split.train, split.test[~in_m1[split.test]]]))
        split = replace(split, train=train, test=test)
        res = run_regime(
            adata,
            split,
            setup=setup,
            models=_factories(setup),
            predict_kwargs={"media": "m1"},
            epochs=epochs,
            seed=seed,
        )
        return pd.concat([res, _carried_whole(adata, split, held, seed)], ignore_index=True)
    adata = scmech.datasets.papalexi2021()
    setup = {**KEYS, "batch_key": "bio_rep", "perturbation_modality": "CRISPRko"}
    if name == "papalexi_lognorm":
        sc.pp.normalize_total(adata, target_sum=1e4)
        sc.pp.log1p(adata)
        setup = {**setup, "counts": False}
    if name in ("papalexi_perturbations", "papalexi_unmeasured", "papalexi_lognorm"):
        measured = name != "papalexi_unmeasured"
        frames = []
        for k, split in papalexi_folds(adata, seed, KEYS, measured=measured, size=3 if measured else 8):
            models = _factories(setup, vanilla=False, linear=measured)
            res = run_regime(adata, split, setup=setup, models=models, epochs=epochs, seed=seed, ceiling=measured)
            frames.append(res.assign(fold=k))
        return pd.concat(frames, ignore_index=True)
    if name == "papalexi_replicate":
        rep = sorted(adata.obs["bio_rep"].astype(str).unique())[seed % 3]
        split = scmech.tl.split(adata, "batch", batch_key="bio_rep", test_conditions=[rep], random_state=seed, **KEYS)
        # every model must predict the same conditions: the linear model embeds only measured targets
        measured = set(map(str, adata.var_names))
        conds = sorted((set(adata.obs["perturbation"].astype(str).iloc[split.test]) - {"NT", "unassigned"}) & measured)
        split = _with_conditions(split, conds)
        # every model predicts the held-out replicate's cells as measured in that replicate
        models = _factories(setup, vanilla=False)
        return run_regime(
            adata, split, setup=setup, models=models, predict_kwargs={"batch": rep}, epochs=epochs, seed=seed
        )
    msg = f"Unknown regime {name!r}; choose from {sum(REGIMES.values(), ())}."
    raise ValueError(msg)


def _carried_whole(adata, split, held: list[str], seed: int) -> pd.DataFrame:
    """The strongest simple baseline of a target observed in ``m0`` only: its observed change on ``m1``'s controls.

    ``ObservedChangeCarried``: the training cells' log pseudobulk of ``m1``'s controls plus the target's observed
    change from ``m0``'s controls, carried whole; scored by :func:`scmech.tl.evaluate` on the split's held-out
    ``m1`` cells, as the models are.
    """
    import anndata as ad
    import scipy.sparse as sp

    from scmech.model._observations import log_pseudobulk

    labels = adata.obs["perturbation"].astype(str).to_numpy()
    media = adata.obs["media"].astype(str).to_numpy()
    x = sp.csr_matrix(adata.X, dtype=np.float64)
    m0 = split.train[media[split.train] == "m0"]
    m1 = split.train[media[split.train] == "m1"]
    in_m0, _ = log_pseudobulk(x, m0, labels[m0], [KEYS["control_label"], *held], counts=True)
    in_m1, _ = log_pseudobulk(x, m1, labels[m1], [KEYS["control_label"]], counts=True)
    pred = ad.AnnData(
        (in_m1[0] + in_m0[1:] - in_m0[0]).astype(np.float32),
        obs=pd.DataFrame({"perturbation": held, "media": "m1"}, index=held),
        var=pd.DataFrame(index=adata.var_names),
    )
    res = scmech.tl.evaluate({"ObservedChangeCarried": pred}, adata, split=split, media_key="media", **KEYS)
    return res.assign(train_seconds=0.0, seed=seed)


def _with_conditions(split, conds):
    """Group splits (time, media, batch) predict every perturbation present in the held-out group."""
    if list(split.test_conditions) == list(conds):
        return split
    return replace(split, test_conditions=tuple(conds))


# ---------------------------------------------------------------------------------------------- report
def summarise(df: pd.DataFrame) -> str:
    lines = []
    for name in dict.fromkeys(df["regime"]):
        sub = df[df["regime"] == name]
        table = scmech.tl.leaderboard_table(sub, metrics=[m for m in METRICS if m in set(sub["metric"])], digits=3)
        secs = sub.groupby("model")["train_seconds"].mean()
        table["train s"] = [
            f"{secs.get(m, np.nan):.0f}" if np.isfinite(secs.get(m, np.nan)) else "" for m in table.index
        ]
        n_seeds = sub["seed"].nunique()
        n_cond = sub[sub["model"] == "SemiMechVI"].groupby("seed")["condition"].nunique().mean()
        epochs = ", ".join(str(int(e)) for e in sorted(set(sub["epochs"].dropna()))) if "epochs" in sub else "?"
        lines += [
            f"## {name}",
            "",
            f"{n_seeds} seeds, {n_cond:.0f} held-out conditions per seed, SemiMechVI trained {epochs} epochs.",
            "",
        ]
        lines += [table.to_markdown(), ""]
        lines += _wins(sub)
        tru = sub[sub["metric"].isin(TRUTH_METRICS) & (sub["model"] != "noise_ceiling")]
        if len(tru):
            per_seed = tru.groupby(["model", "metric", "seed"])["value"].mean().groupby(["model", "metric"])
            cell = per_seed.mean().map("{:.3f}".format) + " ± " + per_seed.std().fillna(0).map("{:.3f}".format)
            wide = cell.unstack("metric")[list(TRUTH_METRICS)]
            wide = wide.loc[
                per_seed.mean().unstack("metric")["truth_pearson_delta_de"].sort_values(ascending=False).index
            ]
            lines += [
                "Against the simulator's noise-free truth (each model's predicted change from its own predicted "
                "control in the held-out context vs the true change; `_de`: the 20 genes with the largest true "
                "change):",
                "",
                wide.to_markdown(),
                "",
            ]
    return "\n".join(lines)


WIN_METRICS = ("pearson_delta_top_change", "pearson_delta_de", "systema_pearson_delta", "systema_pearson_delta_off")


def _wins(sub: pd.DataFrame) -> list[str]:
    """Per-condition wins of SemiMechVI (condition means over seeds) against every other model, per metric."""
    present = [m for m in WIN_METRICS if m in set(sub["metric"])]
    models = [m for m in dict.fromkeys(sub["model"]) if m not in ("SemiMechVI", "noise_ceiling")]
    if "SemiMechVI" not in set(sub["model"]) or not present:
        return []
    cols = {}
    for metric in present:
        w = scmech.tl.win_counts(sub, "SemiMechVI", metric, against=models)
        cols[metric] = [f"{r.wins}/{r.n}" for r in w.itertuples()]
        index = list(w.index)
    table = pd.DataFrame(cols, index=pd.Index(index, name="SemiMechVI wins against"))
    return [
        "Per-condition wins of SemiMechVI (each condition's mean over seeds; wins / conditions scored by both):",
        "",
        table.to_markdown(),
        "",
    ]


def figure(df: pd.DataFrame, path: Path) -> None:
    """The two headline scores of every regime as :func:`scmech.pl.leaderboard` panels (one row per regime)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    regimes = list(dict.fromkeys(df["regime"]))
    metrics = ("pearson_delta_de", "systema_pearson_delta_de")
    fig, axes = plt.subplots(len(regimes), len(metrics), figsize=(11, 2.6 * len(regimes)), squeeze=False)
    for row, name in zip(axes, regimes, strict=True):
        sub = df[(df["regime"] == name) & df["metric"].isin(metrics)].dropna(subset=["value"])
        for ax, metric in zip(row, metrics, strict=True):
            scmech.pl.leaderboard(sub, metric=metric, ax=ax, show=False)
            ax.set_title(f"{name}: {metric}", fontsize="medium", loc="left")
            ax.xaxis.set_major_locator(MaxNLocator(5))  # narrow ranges otherwise crowd their tick labels
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--parts", choices=["all", "sim", "papalexi"], default="all")
    parser.add_argument("--merge", action="store_true")
    parser.add_argument("--epochs", type=int, default=None, help="SemiMechVI epochs (default 20 sim, 30 Papalexi)")
    parser.add_argument("--regimes", nargs="*", default=None, help="run only these regimes of the part(s)")
    parser.add_argument(
        "--append", action="store_true", help="add to the part's csv (replacing the rerun regimes' rows of the seeds)"
    )
    parser.add_argument("--suffix", default="", help="suffix of the part files (e.g. to run regimes in parallel)")
    parser.add_argument("--seeds", type=int, nargs="*", default=None, help="run only these seeds (default 0 1 2)")
    args = parser.parse_args()
    single_thread()
    suffix = ("_quick" if args.quick else "") + args.suffix
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.merge:
        parts = []
        for p in REGIMES:
            part = pd.read_csv(RESULTS / f"accuracy_{p}{suffix}.csv")
            if "epochs" not in part:  # files written before the column existed used the defaults
                part["epochs"] = 4 if args.quick else (30 if p == "papalexi" else 20)
            parts.append(part)
        df = pd.concat(parts, ignore_index=True)
    else:
        parts = list(REGIMES) if args.parts == "all" else [args.parts]
        seeds = args.seeds if args.seeds is not None else ((0,) if args.quick else (0, 1, 2))
        frames = []
        for part in parts:
            t0 = time.perf_counter()
            if args.append and (RESULTS / f"accuracy_{part}{suffix}.csv").exists():
                kept = pd.read_csv(RESULTS / f"accuracy_{part}{suffix}.csv", float_precision="round_trip")
                rerun = args.regimes if args.regimes else list(REGIMES[part])
                replaced = kept["regime"].isin(rerun) & kept["seed"].isin(seeds)
                frames.append(kept[~replaced])  # the rerun regimes' rows of the rerun seeds are replaced
            for name in REGIMES[part]:
                if args.regimes and name not in args.regimes:
                    continue
                for seed in seeds:
                    epochs = 4 if args.quick else (30 if part == "papalexi" else 20)
                    epochs = args.epochs or epochs
                    n_cells = 1500 if args.quick else 3000
                    res = regime(name, seed, epochs, n_cells)
                    res["regime"] = name
                    res["epochs"] = epochs
                    frames.append(res)
                    print(f"{name} seed {seed} done ({(time.perf_counter() - t0) / 60:.1f} min)", flush=True)
                    # written after every fit, so that an interrupted run keeps what it measured
                    written = pd.concat([f for f in frames if len(f) and f["regime"].iloc[0] in REGIMES[part]])
                    order = {r: k for k, r in enumerate(REGIMES[part])}  # kept and rerun regimes in the part's order
                    written = written.sort_values("regime", key=lambda r: r.map(order), kind="stable")
                    written.to_csv(RESULTS / f"accuracy_{part}{suffix}.csv", index=False)
        df = pd.concat(frames, ignore_index=True)
        if args.parts != "all":
            print(summarise(df))
            return
    df.to_csv(RESULTS / f"accuracy{suffix}.csv", index=False)
    fig_path = RESULTS / "figures" / f"accuracy_leaderboard{suffix}.png"
    figure(df, fig_path)
    cmd = "python benchmarks/accuracy.py" + (" --quick" if args.quick else "")
    if args.epochs:
        cmd += f" --epochs {args.epochs}"
    text = [
        "# Accuracy: SemiMechVI against the baselines",
        "",
        f"Made by `{cmd}` (or its `--parts sim`, `--parts papalexi` and `--merge` steps). Cells are",
        "`mean ± sd` over seeds of the per-seed mean over held-out conditions; rows ordered by mean rank. Metrics",
        "as in `scmech.tl.evaluate` (log1p pseudobulk; top-20 DE genes from the observed data; Systema's",
        "Pearson delta against the mean of the training perturbations' centroids). `noise_ceiling` is the",
        "split-half agreement of the observed data with itself (correlations stepped up with Spearman-Brown).",
        "Training seconds are wall clock on a shared 2-core machine (compare within a table only).",
        "",
        f"Figure: `figures/{fig_path.name}` (Pearson delta on the top-20 DE genes and Systema's score per regime).",
        "",
        summarise(df),
    ]
    reading = Path(__file__).with_name("accuracy_reading.md")  # the hand-written reading, kept across reruns
    if reading.exists() and not args.quick:
        text += [reading.read_text()]
    (RESULTS / f"accuracy{suffix}.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
