"""Network recovery on the simulator: how well does ``SemiMechVI.get_regulatory_network`` find the true edges?

The simulator's regulation ``W`` (``W[g, j]`` = effect of gene ``j`` on gene ``g``) is known. Only edges out of
perturbed targets are scored: they are the only sources an intervention identifies (a gene that was never
perturbed has no observed push). Two truths per edge ``j -> g`` (``g != j``):

- ``direct``: ``W[g, j] != 0``;
- ``total``: ``g`` is downstream of ``j`` (non-zero linearised total effect ``(-J_true)^{-1}`` at the control
  steady state, ``J_true`` the Jacobian of the true ODE).

Scores (absolute value ranks the edges):

- ``jacobian``: :math:`DJD^+` (``kind="jacobian"``); ``jacobian_no_relax``: the same without the latent
  relaxation (``relaxation=False``); ``response``: :math:`-DJ^{-1}D^+` (``kind="response"``);
  ``intervention``: the model's post-intervention fixed point of each target (``kind="intervention"``);
- baselines: ``random``; ``correlation`` (gene-gene Pearson correlation of log-normalised control cells);
  ``observed`` (pseudobulk change of each perturbation vs controls, log-normalised; the observed-effect baseline).

Metrics: AUROC, average precision (AP, with the prevalence as its chance level), precision at k (k = number of
true edges, i.e. R-precision, and k = 25) and sign agreement on the true edges (sign of the score vs the sign
of the true effect: a push for the Jacobian-type scores and correlation, a knock-down for ``intervention`` and
``observed``).

Run ``python benchmarks/network.py`` (about 10 minutes on one thread); ``--quick`` for a smoke run. Writes
``benchmarks/results/network.{csv,md}``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scanpy as sc
import scvi
from _common import md_table, single_thread
from sklearn.metrics import average_precision_score, roc_auc_score

import scmech
from scmech.data import SimulatedNetwork
from scmech.model import SemiMechVI

RESULTS = Path(__file__).resolve().parent / "results"
SETUP = {"perturbation_key": "perturbation", "control_label": "NT", "batch_key": "batch"}
#: sign convention of each score: +1 scores a push on the source, -1 a knock-down
SIGN = {
    "jacobian": 1,
    "jacobian_no_relax": 1,
    "response": 1,
    "intervention": -1,
    "random": 1,
    "correlation": 1,
    "observed": -1,
}


def _truth(adata) -> tuple[np.ndarray, np.ndarray]:
    """Direct regulation and linearised total effect of a production push (genes x genes, [target, source])."""
    net = SimulatedNetwork.from_truth(adata.uns["truth"])
    x0 = net.steady_state()
    total = -np.linalg.inv(net.jacobian(x0))
    total = total / x0[:, None] * x0[None, :]  # relative (log-scale) effect
    return np.asarray(adata.uns["truth"]["W"]), total


def _baselines(adata, sources: list[str], seed: int) -> dict[str, pd.DataFrame]:
    b = adata.copy()
    sc.pp.normalize_total(b, target_sum=1e4)
    sc.pp.log1p(b)
    x = b.X.toarray() if hasattr(b.X, "toarray") else np.asarray(b.X)
    pert = adata.obs["perturbation"].astype(str).to_numpy()
    genes = list(adata.var_names)
    ctrl = x[pert == "NT"]
    corr = np.nan_to_num(np.corrcoef(ctrl.T))
    observed = np.column_stack([x[pert == s].mean(0) - ctrl.mean(0) for s in sources])
    rng = np.random.default_rng(seed)
    frame = lambda m: pd.DataFrame(m, index=genes, columns=sources)
    return {
        "random": frame(rng.normal(size=(len(genes), len(sources)))),
        "correlation": pd.DataFrame(corr, index=genes, columns=genes)[sources],
        "observed": frame(observed),
    }


def _scores(name: str, score: pd.DataFrame, W: np.ndarray, total: np.ndarray, genes: list[str]) -> list[dict]:
    cols = [genes.index(s) for s in score.columns]
    s = score.to_numpy()
    off = ~np.eye(len(genes), dtype=bool)[:, cols]
    rows = []
    for truth_name, lab_mat, sign_mat in (
        ("direct", W[:, cols] != 0, np.sign(W[:, cols])),
        ("total", np.abs(total[:, cols]) > 1e-9, np.sign(total[:, cols])),
    ):
        lab, val = lab_mat[off], s[off]
        order = np.argsort(-np.abs(val), kind="stable")
        n_pos = int(lab.sum())
        sign_ok = np.sign(val[lab]) * SIGN[name] == sign_mat[off][lab]
        rows.append(
            {
                "method": name,
                "truth": truth_name,
                "n_edges": int(lab.size),
                "n_true": n_pos,
                "prevalence": float(lab.mean()),
                "auroc": float(roc_auc_score(lab, np.abs(val))),
                "ap": float(average_precision_score(lab, np.abs(val))),
                "precision_at_n_true": float(lab[order[:n_pos]].mean()),
                "precision_at_25": float(lab[order[:25]].mean()),
                "sign_agreement": float(sign_ok.mean()),
            }
        )
    return rows


def run(seeds: list[int], n_cells: int, n_genes: int, n_perturbations: int, epochs: int) -> pd.DataFrame:
    rows = []
    for seed in seeds:
        adata = scmech.data.simulate_perturbseq(
            n_cells,
            n_genes,
            n_perturbations=n_perturbations,
            n_combinations=0,
            regulator_fraction=0.15,
            seed=seed,
        )
        genes = list(adata.var_names)
        sources = [str(t) for t in adata.uns["truth"]["targets"]]
        W, total = _truth(adata)
        scvi.settings.seed = seed
        b = adata.copy()
        SemiMechVI.setup_anndata(b, **SETUP)
        model = SemiMechVI(b)
        t0 = time.perf_counter()
        model.train(max_epochs=epochs, enable_progress_bar=False)
        secs = time.perf_counter() - t0
        nets = {
            "jacobian": model.get_regulatory_network()[sources],
            "jacobian_no_relax": model.get_regulatory_network(relaxation=False)[sources],
            "response": model.get_regulatory_network(kind="response")[sources],
            "intervention": model.get_regulatory_network(kind="intervention")[sources],
            **_baselines(adata, sources, seed),
        }
        fit = float(np.corrcoef(nets["intervention"].to_numpy().ravel(), nets["observed"].to_numpy().ravel())[0, 1])
        for name, score in nets.items():
            for row in _scores(name, score, W, total, genes):
                rows.append({"seed": seed, **row, "train_seconds": secs, "intervention_vs_observed_r": fit})
        print(f"seed {seed}: trained {secs:.0f} s, intervention vs observed effects r = {fit:.2f}", flush=True)
    return pd.DataFrame(rows)


def write_report(df: pd.DataFrame, command: str, args: argparse.Namespace, path: Path) -> None:
    metrics = ["auroc", "ap", "prevalence", "precision_at_n_true", "precision_at_25", "sign_agreement"]
    order = list(SIGN)
    summary = df.groupby(["truth", "method"], sort=False)[metrics].agg(["mean", "std"])
    summary.columns = [f"{a} {b}" for a, b in summary.columns]
    summary = summary.reset_index()
    summary["method"] = pd.Categorical(summary["method"], categories=order, ordered=True)
    summary = summary.sort_values(["truth", "method"])
    per_seed = df.pivot_table(index=["truth", "method"], columns="seed", values="auroc", observed=True).reset_index()
    per_seed["method"] = pd.Categorical(per_seed["method"], categories=order, ordered=True)
    per_seed = per_seed.sort_values(["truth", "method"])
    per_seed.columns = [f"AUROC seed {c}" if isinstance(c, int | np.integer) else c for c in per_seed.columns]

    def mean(truth: str, method: str, metric: str) -> float:
        sel = df[(df["truth"] == truth) & (df["method"] == method)]
        return float(sel[metric].mean())

    fit = df.groupby("seed")["intervention_vs_observed_r"].first()
    text = [
        "# Network recovery on the simulator",
        "",
        f"Command: `{command}` (one torch thread; seeds {', '.join(map(str, args.seeds))}; {args.n_cells} cells, "
        f"{args.n_genes} genes, {args.n_perturbations} single perturbations, regulator fraction 0.15, "
        f"{args.epochs} epochs, default `SemiMechVI`).",
        "",
        "Scored edges: every edge out of a perturbed target (the only sources an intervention identifies) to every "
        "other gene. `direct`: the edge is in the simulated `W`; `total`: the gene is downstream of the target "
        "(non-zero linearised total effect). Scores rank edges by absolute value; `sign_agreement` is the share of "
        "true edges whose score has the sign of the true effect (push for the Jacobian-type scores and "
        "correlation, knock-down for `intervention` and `observed`). Chance: AUROC 0.5, AP = prevalence, "
        "sign agreement 0.5.",
        "",
        "## Summary (mean and sd over seeds)",
        "",
        md_table(summary),
        "",
        "## AUROC per seed",
        "",
        md_table(per_seed),
        "",
        "## Reading",
        "",
        f"- Jacobian (`D J D^+`): AUROC {mean('direct', 'jacobian', 'auroc'):.2f} (direct), "
        f"{mean('total', 'jacobian', 'auroc'):.2f} (total); without the relaxation "
        f"{mean('direct', 'jacobian_no_relax', 'auroc'):.2f} / {mean('total', 'jacobian_no_relax', 'auroc'):.2f}; "
        f"response `-D J^-1 D^+`: {mean('direct', 'response', 'auroc'):.2f} / "
        f"{mean('total', 'response', 'auroc'):.2f}. "
        + (
            "The part the field's nonlinearity adds (without the relaxation) ranks edges at chance; what lifts "
            "`D J D^+` is its relaxation term, a multiple of the projection `D D^+`: which genes share decoder "
            "loadings, not who regulates whom."
            if mean("direct", "jacobian_no_relax", "auroc") < 0.55
            else "The nonlinear part of the field carries edge information beyond the decoder's loadings."
        ),
        f"- Intervention columns (post-intervention fixed point per target): AUROC "
        f"{mean('direct', 'intervention', 'auroc'):.2f} (direct), {mean('total', 'intervention', 'auroc'):.2f} "
        f"(total), AP {mean('total', 'intervention', 'ap'):.2f} vs prevalence "
        f"{mean('total', 'intervention', 'prevalence'):.2f}, sign agreement "
        f"{mean('total', 'intervention', 'sign_agreement'):.2f}.",
        f"- Baselines: random {mean('direct', 'random', 'auroc'):.2f} / {mean('total', 'random', 'auroc'):.2f}; "
        f"control-cell correlation {mean('direct', 'correlation', 'auroc'):.2f} / "
        f"{mean('total', 'correlation', 'auroc'):.2f}; observed effect {mean('direct', 'observed', 'auroc'):.2f} / "
        f"{mean('total', 'observed', 'auroc'):.2f}.",
        f"- The model's intervention effects correlate with the observed effects at r = "
        f"{', '.join(f'{v:.2f}' for v in fit)} (per seed): the network read from the model can only be as good "
        "as the model's fit of the perturbation effects, and the observed-effect baseline, which needs no "
        "model, is the bar for the perturbed columns. Columns of genes that were never perturbed are not "
        "identified by these data at all.",
        "",
    ]
    path.write_text("\n".join(text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-cells", type=int, default=2000)
    parser.add_argument("--n-genes", type=int, default=80)
    parser.add_argument("--n-perturbations", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="one seed, 5 epochs, written to network_quick.*")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs = [0], 5
    single_thread()
    df = run(args.seeds, args.n_cells, args.n_genes, args.n_perturbations, args.epochs)
    RESULTS.mkdir(exist_ok=True)
    stem = "network_quick" if args.quick else "network"
    df.to_csv(RESULTS / f"{stem}.csv", index=False)
    command = "python benchmarks/network.py" + (" --quick" if args.quick else "")
    if not args.quick and (args.seeds, args.n_cells, args.epochs) != ([0, 1, 2], 2000, 50):
        command += f" --seeds {' '.join(map(str, args.seeds))} --n-cells {args.n_cells} --epochs {args.epochs}"
    write_report(df, command, args, RESULTS / f"{stem}.md")
    print((RESULTS / f"{stem}.md").read_text())


if __name__ == "__main__":
    main()
