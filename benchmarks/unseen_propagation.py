r"""Can an unseen knockout's downstream effect be learned from the other knockouts? The simulator and Papalexi.

SemiMechVI carries an unseen target's own-gene knock-down through its learned dynamics and keeps that step only as
far as it predicts the training targets, each held out in turn (the propagation gain, ``TargetMap.gain``). On
Papalexi and on the simulator the gain has validated to 0 in every fit: the model's prediction for an unseen
target is its anchor plus the own gene. This benchmark asks whether any learned regulation could do better,
without training a model, by comparing for each held-out target whose gene is measured:

- ``train_mean``: the plain mean change of the training targets (the baseline the per-target wins count against);
- ``anchor``: the precision-weighted mean of the training targets alone, each left out at its own gene (a
  held-out target does not knock down the training targets' genes; :func:`scmech.model._anchoring.member_weights`);
- ``anchor_own``: that mean with the own gene at its control level knocked down by the calibrated factor
  (:func:`scmech.model._own_gene.own_gene_effect`, each training target's factor measured from its control
  level), as SemiMechVI predicts an unseen target when the gain is 0;
- ``anchor_observed_own``: the anchor with the target's *observed* own-gene change put in, an oracle: the most
  that any calibration of the own gene alone could reach;
- ``oracle_amplitude``: ``anchor_own`` with the anchor scaled by the target's *observed* amplitude along it (the
  least-squares coefficient of its observed change off its own gene on the anchor), an oracle for item 4 of the
  magnitude question: what predicting how far each target moves the shared response would add;
- ``oracle_amplitude_own``: that, with the observed own-gene change as well (every magnitude right, the shape
  still the shared response's);
- ``expression_amplitude``: ``anchor_own`` with the anchor scaled by what the target's expression says a priori, a
  knock-down removing more of a highly expressed gene: :math:`a(x) = \frac{x/(x + K\tilde x)}{\tilde x/(\tilde x +
  K\tilde x)}` of its control expression :math:`x` (normalised, not logged) against the median :math:`\tilde x`
  of the training targets' genes, :math:`K = 0` flat (every target the shared response), :math:`K \to \infty`
  proportional. :math:`K` is the one whose scaled anchor best predicts the measured training targets held out in
  turn (mean squared error off their own genes), by the one-standard-error rule towards flat (the rule
  SemiMechVI applies to its propagation and map); ``expression_amplitude_min`` takes the smallest error instead;
- ``learned_regulation``: ``anchor_own`` plus the knock-down carried one step through a linear regulation among
  the screen's target genes learned from the training knockouts: each gene's change across the training
  conditions is regressed (ridge, centred) on the changes of the target genes (a gene-space linear structural
  causal model, the steady-state linearisation of the framework's field); the term is the held-out target's
  column times its own-gene change, less the class mean of the same term (each member's column fitted without
  its own knockout, so that every member is propagated as an unseen target is). The ridge penalty is the one
  whose propagation best predicts the training targets, each held out in turn;
- ``learned_regulation_validated``: the same with the gain on ``[0, 1]`` that predicts the held-out training
  targets best (the rule SemiMechVI applies to its own propagation);
- ``true_network`` (simulator only): ``anchor_own`` plus the knock-down carried through the simulator's true
  linearised total effects, less their class mean: what the propagation step adds when the regulation out of
  the unseen target is known.

Scores: P20 (Pearson delta on the 20 genes of largest |observed change|), P20_ttest (on the 20 genes of
scanpy's t-test against the controls, the gene set of ``scmech.tl.evaluate``), CR (Pearson delta after subtracting the
training targets' mean change) and CR_off (CR without the target's own gene). Simulator: 3 seeds of the
``sim_singles`` regime of ``benchmarks/accuracy.py`` (3,000 cells, 200 genes, 24 single targets, the same 25 %
held out). Papalexi: the 9 measured targets in seed-shuffled thirds, 3 seeds, as in ``benchmarks/accuracy.py``,
and each held out alone (``papalexi_leave_one_out``, one split, so its seed spread is empty).

Magnitude (Papalexi): for each measured target, its amplitude along the shared response of every other target and
its observed own-gene change, beside what is known of it before any perturbation: its gene's level among the
controls, the share of control cells that detect it, the spread of its log-normalised expression there and its
correlation across control cells with the shared response's programme score (the ``place in the network`` a model
can read from controls). Spearman correlations over the targets say whether any of them predicts the magnitude.

Run ``python benchmarks/unseen_propagation.py`` (about three minutes). Writes
``benchmarks/results/unseen_propagation.{csv,md}`` and ``benchmarks/results/unseen_propagation_magnitude.csv``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from _common import knocked, md_table, pearson, quiet, ttest_top

import scmech
from scmech.data._simulate._network import SimulatedNetwork
from scmech.model._anchoring import member_weights
from scmech.model._observations import log_pseudobulk
from scmech.model._own_gene import own_gene_effect

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = (
    "train_mean",
    "anchor",
    "anchor_own",
    "anchor_observed_own",
    "oracle_amplitude",
    "oracle_amplitude_own",
    "expression_amplitude",
    "expression_amplitude_min",
    "learned_regulation",
    "learned_regulation_validated",
    "true_network",
)
PENALTIES = 10.0 ** np.arange(-2.0, 3.5, 0.5)
GAINS = np.linspace(0.0, 1.0, 11)
#: steepness of the expression amplitude: 0 flat, inf proportional to the target's expression
STEEPNESS = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0, np.inf)


class Screen:
    """Pseudobulk changes of one screen, with the target genes that can regulate (the measured targets)."""

    def __init__(self, x, labels: np.ndarray, genes: list[str], control: str = "NT") -> None:
        targets = sorted(set(labels) - {control})
        level, var = log_pseudobulk(x, np.arange(x.shape[0]), labels, [*targets, control], counts=True)
        self.level = dict(zip([*targets, control], level, strict=True))
        self.var = dict(zip([*targets, control], var, strict=True))
        self.genes, self.targets, self.control = genes, targets, control
        self.pos = {t: genes.index(t) for t in targets if t in genes}
        self.cand = sorted(self.pos)
        self.cols = np.array([self.pos[t] for t in self.cand])
        self.de = self._de(x, labels)

    def _de(self, x, labels: np.ndarray) -> dict[str, np.ndarray]:
        """Top 20 genes of each measured target by scanpy's t-test against the controls (log-normalised cells)."""
        return ttest_top(x, labels, self.genes, self.cand, self.control)

    def change(self, t: str) -> np.ndarray:
        """Observed change of ``t`` from the controls."""
        return self.level[t] - self.level[self.control]

    def regulation(self, rows: list[str], penalty: float) -> np.ndarray:
        """Ridge regulation (genes x candidates) of every gene on the candidate genes across conditions ``rows``.

        A candidate gene is not regressed on itself, and the conditions that knock it down are left out of its
        own regression (its equation does not hold where it is intervened on).
        """
        y = np.stack([self.change(q) for q in rows])
        y = y - y.mean(0)
        x = y[:, self.cols]
        k = len(self.cand)
        coef = np.linalg.solve(x.T @ x + penalty * np.eye(k), x.T @ y).T
        for i, c in enumerate(self.cand):
            keep = np.arange(k) != i
            use = np.array([q != c for q in rows])
            xi, yi = x[use][:, keep], y[use, self.pos[c]]
            coef[self.pos[c]] = 0.0
            coef[self.pos[c], keep] = np.linalg.solve(xi.T @ xi + penalty * np.eye(k - 1), xi.T @ yi)
        return coef


def _own_change(screen: Screen, members: list[str], t: str) -> float:
    """Calibrated own-gene change of ``t`` (log-normalised units) from its control level, and that level.

    As SemiMechVI does: each member's factor measured from its gene's control level, the weighted median of them
    applied to ``t``'s gene at its control level.
    """
    control = screen.level[screen.control]
    own = np.array([screen.level[q][screen.pos[q]] for q in members])
    ref = np.array([control[screen.pos[q]] for q in members])
    a = own_gene_effect(own, ref, spread=False)[0]
    level = control[screen.pos[t]]
    return float(knocked(a, level) - level), level


def _anchor(screen: Screen, rest: list[str]) -> np.ndarray:
    """The package's shared response: the random-effects mean, each training target left out at its own gene."""
    y = np.stack([screen.level[q] for q in rest])
    own = tuple((screen.pos[q],) if q in screen.pos else () for q in rest)
    w = member_weights(y, np.stack([screen.var[q] for q in rest]), own)
    return (w * y).sum(0) - screen.level[screen.control]


def _propagated(screen: Screen, rest: list[str], t: str, penalty: float) -> np.ndarray:
    """The learned regulation's term for ``t``: its column times its own change, less the class mean."""
    members = [q for q in rest if q in screen.pos]

    def term(q: str, rows: list[str]) -> np.ndarray:
        coef = screen.regulation([r for r in rows if r != q], penalty)
        return coef[:, screen.cand.index(q)] * _own_change(screen, [m for m in members if m != q], q)[0]

    return term(t, rest) - np.mean([term(q, rest) for q in members], 0)


def _amplitude(shared: np.ndarray, change: np.ndarray, gene: int) -> float:
    """Least-squares coefficient of ``change`` on the shared response, off the target's own ``gene``."""
    off = np.arange(len(shared)) != gene
    return float(shared[off] @ change[off] / (shared[off] @ shared[off]))


def _expression_amplitude(x: float, median: float, k: float) -> float:
    """Amplitude of a target of control expression ``x`` against the training targets' ``median`` (``k``: steepness)."""
    if k == 0.0:
        return 1.0
    if np.isinf(k):
        return x / median
    return (x / (x + k * median)) / (1.0 / (1.0 + k))


def _steepness(screen: Screen, rest: list[str]) -> tuple[float, float]:
    """Steepness by leave-one-target-out over the measured training targets: one-standard-error rule, and argmin."""
    members = [q for q in rest if q in screen.pos]
    expression = {q: float(np.expm1(screen.level[screen.control][screen.pos[q]])) for q in members}
    err = np.zeros((len(STEEPNESS), len(members)))
    for j, q in enumerate(members):
        others = [r for r in rest if r != q]
        shared, change = _anchor(screen, others), screen.change(q)
        off = np.arange(len(change)) != screen.pos[q]
        median = float(np.median([expression[m] for m in members if m != q]))
        for i, k in enumerate(STEEPNESS):
            a = _expression_amplitude(expression[q], median, k)
            err[i, j] = np.mean((a * shared[off] - change[off]) ** 2)
    mean, se = err.mean(1), err.std(1, ddof=1) / np.sqrt(len(members))
    best = int(np.argmin(mean))
    one_se = next(i for i in range(len(STEEPNESS)) if mean[i] <= mean[best] + se[best])
    return STEEPNESS[one_se], STEEPNESS[best]


def _predict(screen: Screen, rest: list[str], t: str, extra: np.ndarray | None = None) -> np.ndarray:
    """Anchor plus the own gene at its calibrated level, plus ``extra`` off the own gene."""
    members = [q for q in rest if q in screen.pos]
    pred = _anchor(screen, rest)
    if extra is not None:
        pred = pred + extra
    change, level = _own_change(screen, members, t)
    pred[screen.pos[t]] = level + change - screen.level[screen.control][screen.pos[t]]
    return pred


def _validate(screen: Screen, rest: list[str]) -> tuple[float, float]:
    """Penalty (at gain 1) and gain whose propagation best predicts the measured training targets held out."""
    members = [q for q in rest if q in screen.pos]
    err = np.zeros((len(PENALTIES), len(GAINS)))
    for q in members:
        others = [r for r in rest if r != q]
        base = _predict(screen, others, q)
        obs = screen.change(q)
        for i, pen in enumerate(PENALTIES):
            prop = _propagated(screen, others, q, pen)
            prop[screen.pos[q]] = 0.0
            err[i] += [np.mean((base + g * prop - obs) ** 2) for g in GAINS]
    i = int(np.argmin(err[:, -1]))
    return float(PENALTIES[i]), float(GAINS[int(np.argmin(err[i]))])


def score(screen: Screen, held: list[str], total: np.ndarray | None, dataset: str, seed: int) -> list[dict]:
    """Predict each held-out measured target with every model and score it."""
    rest = [q for q in screen.targets if q not in held]
    members = [q for q in rest if q in screen.pos]
    mean = np.mean([screen.change(q) for q in rest], 0)
    penalty, gain = _validate(screen, rest)
    steep, steep_min = _steepness(screen, rest)
    median = float(np.median([np.expm1(screen.level[screen.control][screen.pos[q]]) for q in members]))
    rows = []
    for t in [h for h in held if h in screen.pos]:
        g, obs = screen.pos[t], screen.change(t)
        prop = _propagated(screen, rest, t, penalty)
        prop[g] = 0.0
        anchor = _anchor(screen, rest)
        observed_own = anchor.copy()
        observed_own[g] = obs[g]
        own = _predict(screen, rest, t)
        amplitude = _amplitude(anchor, obs, g)
        scaled, scaled_own = amplitude * anchor, amplitude * anchor
        scaled[g], scaled_own[g] = own[g], obs[g]
        expressed = float(np.expm1(screen.level[screen.control][g]))
        by_expression = {}
        for name, k in (("expression_amplitude", steep), ("expression_amplitude_min", steep_min)):
            by_expression[name] = _expression_amplitude(expressed, median, k) * anchor
            by_expression[name][g] = own[g]
        preds = {
            "train_mean": mean,
            "anchor": anchor,
            "anchor_own": own,
            "anchor_observed_own": observed_own,
            "oracle_amplitude": scaled,
            "oracle_amplitude_own": scaled_own,
            **by_expression,
            "learned_regulation": _predict(screen, rest, t, prop),
            "learned_regulation_validated": _predict(screen, rest, t, gain * prop),
        }
        if total is not None:
            own = {q: _own_change(screen, [m for m in members if m != q], q)[0] for q in members}
            true = total[:, g] * _own_change(screen, members, t)[0]
            true = true - np.mean([total[:, screen.pos[q]] * own[q] for q in members], 0)
            true[g] = 0.0
            preds["true_network"] = _predict(screen, rest, t, true)
        top = np.argsort(-np.abs(obs))[:20]
        off = np.arange(len(obs)) != g
        for name, p in preds.items():
            rows.append(
                {
                    "dataset": dataset,
                    "seed": seed,
                    "target": t,
                    "model": name,
                    "penalty": penalty,
                    "gain": gain,
                    "steepness": steep,
                    "steepness_min": steep_min,
                    "P20": pearson(p[top], obs[top]),
                    "P20_ttest": pearson(p[screen.de[t]], obs[screen.de[t]]),
                    "CR": pearson(p - mean, obs - mean),
                    "CR_off": pearson((p - mean)[off], (obs - mean)[off]),
                }
            )
    return rows


def magnitude(screen: Screen, x, labels: np.ndarray) -> pd.DataFrame:
    """Per measured target: its amplitude and own-gene change, and what the controls say of its gene a priori."""
    cells = x[labels == screen.control]
    cells = np.log1p(cells.multiply(1e4 / np.asarray(cells.sum(1))).toarray())
    rows = []
    for t in screen.cand:
        g, change = screen.pos[t], screen.change(t)
        shared = _anchor(screen, [q for q in screen.targets if q != t])
        weights = shared.copy()
        weights[g] = 0.0  # the programme score leaves the gene itself out
        score = (cells - cells.mean(0)) @ weights
        rows.append(
            {
                "target": t,
                "amplitude": _amplitude(shared, change, g),
                "own change": float(change[g]),
                "control level": float(screen.level[screen.control][g]),
                "control detection": float(np.mean(cells[:, g] > 0)),
                "control sd": float(cells[:, g].std()),
                "programme correlation": pearson(cells[:, g], score),
            }
        )
    return pd.DataFrame(rows)


def _simulated(seed: int) -> tuple[Screen, list[str], np.ndarray]:
    adata = scmech.data.simulate_perturbseq(n_cells=3000, n_genes=200, seed=seed, n_perturbations=24, n_combinations=0)
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    split = scmech.tl.split(
        adata, "perturbation", test_size=0.25, random_state=seed, perturbation_key="perturbation", control_label="NT"
    )
    held = sorted(set(labels[split.test]) - {"NT"})
    net = SimulatedNetwork.from_truth(adata.uns["truth"])
    x0 = net.steady_state()
    total = -np.linalg.inv(net.jacobian(x0))
    total = total / x0[:, None] * x0[None, :]  # log-scale effect of a log-production push [target, source]
    total = total / np.diag(total)[None, :]  # per unit change of the source's own level
    screen = Screen(sp.csr_matrix(adata.X, dtype=np.float64), labels, list(map(str, adata.var_names)))
    return screen, held, total


def main(quick: bool = False) -> None:
    """Run the simulator and Papalexi, write the csv and the markdown summary."""
    quiet()
    seeds = [0] if quick else [0, 1, 2]
    rows = []
    for seed in seeds:
        screen, held, total = _simulated(seed)
        rows += score(screen, held, total, "simulator", seed)
        print(f"simulator seed {seed} done", flush=True)
    adata = scmech.datasets.papalexi2021()
    adata = adata[adata.obs["perturbation"].astype(str) != "unassigned"]
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    screen = Screen(sp.csr_matrix(adata.X, dtype=np.float64), labels, list(map(str, adata.var_names)))
    for seed in seeds:
        order = np.random.default_rng(seed).permutation(screen.cand)
        for fold in np.array_split(order, len(order) // 3):
            rows += score(screen, sorted(fold), None, "papalexi", seed)
        print(f"papalexi seed {seed} done", flush=True)
    for t in screen.cand:  # each measured target held out alone: a split with 8 measured training targets
        rows += score(screen, [t], None, "papalexi_leave_one_out", 0)
    df = pd.DataFrame(rows)
    sizes = magnitude(screen, sp.csr_matrix(adata.X, dtype=np.float64), labels)
    RESULTS.mkdir(exist_ok=True)
    df.to_csv(RESULTS / "unseen_propagation.csv", index=False)
    sizes.to_csv(RESULTS / "unseen_propagation_magnitude.csv", index=False)
    write_report(df, sizes)


def write_report(df: pd.DataFrame, sizes: pd.DataFrame) -> None:
    """Mean and seed spread per dataset and model, per-target wins, Papalexi's P20 per target, the gains chosen and
    the magnitude table with the Spearman correlations of the a-priori features with the amplitude and own change.
    """
    per_seed = df.groupby(["dataset", "model", "seed"])[["P20", "P20_ttest", "CR", "CR_off"]].mean()
    summary = per_seed.groupby(["dataset", "model"]).agg(["mean", "std"])
    summary.columns = [f"{m} {s}" for m, s in summary.columns]
    summary = summary.reset_index()
    summary["model"] = pd.Categorical(summary["model"], MODELS)
    summary = summary.sort_values(["dataset", "model"])
    wins = []
    for d, w in df.groupby("dataset"):
        p20 = w.pivot_table(index=["seed", "target"], columns="model", values="P20")
        p20t = w.pivot_table(index=["seed", "target"], columns="model", values="P20_ttest")
        off = w.pivot_table(index=["seed", "target"], columns="model", values="CR_off")
        for m in MODELS[1:]:
            if m not in p20:
                continue
            above = int((p20[m] > p20["train_mean"]).sum())
            above_t = int((p20t[m] > p20t["train_mean"]).sum())
            row = {
                "dataset": d,
                "model": m,
                "P20 above train_mean": f"{above}/{len(p20)}",
                "P20_ttest above train_mean": f"{above_t}/{len(p20t)}",
            }
            row["CR_off above anchor_own"] = (
                f"{int((off[m] > off['anchor_own']).sum())}/{len(off)}" if m.startswith(("learned", "true")) else "–"
            )
            wins.append(row)
    per_target = df[df["dataset"] == "papalexi"].pivot_table(
        index="target", columns="model", values=["P20", "P20_ttest"]
    )
    per_target = per_target.reindex(columns=[(v, m) for v in ("P20", "P20_ttest") for m in MODELS[:4]])
    per_target.columns = [f"{v} {m}" for v, m in per_target.columns]
    per_target = per_target.reset_index()
    gains = df.groupby(["dataset", "seed"])[["penalty", "gain", "steepness", "steepness_min"]].agg(
        lambda s: ", ".join(f"{v:g}" for v in sorted(set(s)))
    )
    text = [
        "# Propagating an unseen knockout through learned regulation (simulator and Papalexi)",
        "",
        "Written by `python benchmarks/unseen_propagation.py`; what it compares is in the script's docstring. "
        "Means over seeds of the per-seed means over held-out measured targets, with the sd over seeds.",
        "",
        md_table(summary, na_rep="–"),
        "",
        "## Per-target wins (P20 against the train mean; CR_off of the propagation against the anchor and own gene)",
        "",
        md_table(pd.DataFrame(wins)),
        "",
        "## Papalexi: P20 on both gene sets per held-out target, mean over seeds",
        "",
        md_table(per_target),
        "",
        "## Ridge penalty, gain and expression steepness chosen by holding out each training target (per split, listed "
        "per seed)",
        "",
        md_table(gains.reset_index()),
        "",
        "## Papalexi: how far each target moves, and what is known of it before any perturbation",
        "",
        "Amplitude: least-squares coefficient of the target's observed change (off its own gene) on the shared "
        "response of every other target. The last rows: Spearman correlation of each column with the amplitude "
        "and with the own-gene change over the 9 targets.",
        "",
        md_table(_with_spearman(sizes)),
        "",
    ]
    (RESULTS / "unseen_propagation.md").write_text("\n".join(text))
    print("\n".join(text))


def _with_spearman(sizes: pd.DataFrame) -> pd.DataFrame:
    """The magnitude table with two rows of Spearman correlations (with the amplitude and with the own change)."""
    features = sizes.drop(columns="target")
    rho = features.rank().corr()
    extra = pd.DataFrame(
        [
            {"target": "Spearman with amplitude", **rho["amplitude"].to_dict()},
            {"target": "Spearman with own change", **rho["own change"].to_dict()},
        ]
    )
    return pd.concat([sizes, extra], ignore_index=True).round(2)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed (a smoke run)")
    main(parser.parse_args().quick)
