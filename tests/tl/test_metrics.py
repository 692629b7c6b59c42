from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scmech import tl
from scmech.tl._metrics import energy_distance

CTRL = np.array([1.0, 2.0, 0.5])
OBS = {"A": np.array([2.0, 2.0, 0.0]), "B": np.array([1.0, 4.0, 0.5])}
TRAIN = {"C": np.array([1.5, 2.5, 1.5]), "D": np.array([0.5, 2.5, 0.5])}
PRED = {"A": np.array([1.5, 2.2, 0.0]), "B": np.array([1.0, 2.2, 0.6])}
EPS = np.array([0.1, 0.2, 0.3])


def _lognorm_adata() -> ad.AnnData:
    """Log-normalised values (counts=False): each condition's cells are mu ± eps, so the mean is mu exactly."""
    rows, labels = [], []
    for lab, mu in {"NT": CTRL, **OBS, **TRAIN}.items():
        for sign in (1, -1, 1, -1):
            rows.append(mu + sign * EPS * (1.5 if lab == "NT" else 1.0))
            labels.append(lab)
    rows.append(CTRL)
    labels.append("unassigned")
    return ad.AnnData(
        np.asarray(rows, dtype=np.float32),
        obs=pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))]),
        var=pd.DataFrame(index=["g0", "g1", "g2"]),
    )


def _pred(values: dict[str, np.ndarray], model: str = "toy") -> ad.AnnData:
    out = ad.AnnData(
        np.stack(list(values.values())).astype(np.float32),
        obs=pd.DataFrame({"perturbation": list(values)}, index=list(values)),
        var=pd.DataFrame(index=["g0", "g1", "g2"]),
    )
    out.uns["scmech"] = {"prediction": {"model": model}}
    return out


def _wide(res):
    return res.pivot(index="condition", columns="metric", values="value")


def test_metrics_by_hand():
    adata = _lognorm_adata()
    before = adata.copy()
    res = tl.evaluate(_pred(PRED), adata, counts=False, n_de_genes=3, n_top_expressed=2, train_conditions=["C", "D"])
    assert list(res.columns) == ["model", "condition", "metric", "value", "n_cells"]
    assert set(res["model"]) == {"toy"}
    assert set(res.loc[res["condition"] == "A", "n_cells"]) == {4}
    w = _wide(res)
    r = (TRAIN["C"] + TRAIN["D"]) / 2
    for c in ("A", "B"):
        dp, do = PRED[c] - CTRL, OBS[c] - CTRL
        assert w.loc[c, "pearson"] == pytest.approx(np.corrcoef(PRED[c], OBS[c])[0, 1], abs=1e-6)
        assert w.loc[c, "pearson_delta"] == pytest.approx(np.corrcoef(dp, do)[0, 1], abs=1e-6)
        assert w.loc[c, "pearson_delta_de"] == pytest.approx(np.corrcoef(dp, do)[0, 1], abs=1e-6)  # 3 DE = all genes
        assert w.loc[c, "mse"] == pytest.approx(np.mean((PRED[c] - OBS[c]) ** 2), abs=1e-6)
        assert w.loc[c, "systema_pearson_delta"] == pytest.approx(np.corrcoef(PRED[c] - r, OBS[c] - r)[0, 1], abs=1e-6)
    # worked by hand: Δpred(A) = [.5, .2, -.5] vs Δobs(A) = [1, 0, -.5]; Δpred(B) = [0, .2, .1] vs [0, 2, 0]
    assert w.loc["A", "direction_accuracy_de"] == pytest.approx(2 / 3)
    assert w.loc["B", "direction_accuracy_de"] == pytest.approx(2 / 3)
    # the two genes most expressed in control are g1 (2.0) and g0 (1.0)
    assert w.loc["A", "l2_top"] == pytest.approx(np.sqrt(0.5**2 + 0.2**2), abs=1e-6)
    assert w.loc["B", "l2_top"] == pytest.approx(1.8, abs=1e-6)
    # |predA - obsA|^2 = .29 < |predA - obsB|^2 = 3.74; |predB - obsB|^2 = 3.25 > |predB - obsA|^2 = 1.4
    assert w.loc["A", "centroid_accuracy"] == 1.0
    assert w.loc["B", "centroid_accuracy"] == 0.0
    assert w.loc["A", "perturbench_rank"] == 0.0
    assert w.loc["B", "perturbench_rank"] == 0.5
    assert "energy_distance" not in w.columns
    # adata untouched
    np.testing.assert_array_equal(adata.X, before.X)
    assert adata.obs.equals(before.obs)
    assert adata.var.equals(before.var)
    assert list(adata.uns.keys()) == list(before.uns.keys()) == []
    assert list(adata.layers.keys()) == []
    assert list(adata.obsm.keys()) == []


def test_systema_needs_train_conditions_and_constant_predictions_are_nan():
    adata = _lognorm_adata()
    ctrl_pred = _pred({"A": CTRL, "B": CTRL}, "ControlMean")
    with pytest.warns(UserWarning, match=r"No training perturbations .*systema_pearson_delta.* are NaN"):
        res = tl.evaluate(ctrl_pred, adata, counts=False, n_de_genes=2)
    w = _wide(res)
    assert w["systema_pearson_delta"].isna().all()
    # training conditions without observed cells: the reference is missing, said so
    with pytest.warns(UserWarning, match=r"None of the training conditions \['Z'\] has observed training cells"):
        res = tl.evaluate(ctrl_pred, adata, counts=False, n_de_genes=2, train_conditions=["Z"])
    assert _wide(res)["systema_pearson_delta_off"].isna().all()
    assert w["pearson_delta"].isna().all()  # no predicted change: undefined, not an error
    assert np.isfinite(w["mse"]).all()


def test_de_genes_from_scanpy_and_reproducible():
    import scanpy as sc

    rng = np.random.default_rng(0)
    n_genes = 30
    mu = rng.gamma(2, 2, size=n_genes)
    labels = np.repeat(["NT", "A", "B"], 40)
    lam = np.tile(mu, (len(labels), 1))
    lam[labels == "A", :5] *= np.array([2.0, 3.0, 4.0, 6.0, 8.0])
    lam[labels == "B", 5:10] *= 0.2
    adata = ad.AnnData(
        rng.poisson(lam).astype(np.float32) + 1,
        obs=pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))]),
        var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]),
    )
    before = adata.copy()
    pb = tl._metrics.pseudobulk(adata, "perturbation")
    p = ad.AnnData(
        pb.loc[["A", "B"]].to_numpy().astype(np.float32) + rng.normal(0, 0.02, size=(2, n_genes)).astype(np.float32),
        obs=pd.DataFrame({"perturbation": ["A", "B"]}, index=["A", "B"]),
        var=pd.DataFrame(index=adata.var_names),
    )
    r1 = tl.evaluate(p, adata, n_de_genes=5)
    r2 = tl.evaluate(p, adata, n_de_genes=5)
    pd.testing.assert_frame_equal(r1, r2)
    # the DE genes are scanpy's top genes on a log-normalised copy
    ref = adata.copy()
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    sc.tl.rank_genes_groups(ref, "perturbation", groups=["A"], reference="NT", method="t-test", rankby_abs=True)
    top = list(ref.uns["rank_genes_groups"]["names"]["A"][:5])
    assert len(set(top) & {f"g{i}" for i in range(5)}) >= 4
    obs_pb = pb.loc["A"].to_numpy()
    de = [int(g[1:]) for g in top]
    mse_de = np.mean((p.X[0, de] - obs_pb[de]) ** 2)
    w = _wide(r1)
    assert w.loc["A", "mse_de"] == pytest.approx(mse_de, rel=1e-4)
    assert w.loc["A", "pearson_delta_de"] > 0.9
    # the user's data were not normalised in place
    np.testing.assert_array_equal(adata.X, before.X)
    assert "log1p" not in adata.uns
    assert "rank_genes_groups" not in adata.uns


def test_key_added_is_the_only_write_and_split_selects_cells():
    adata = _lognorm_adata()
    sp = tl.split(adata, "perturbation", test_conditions=["A", "B"], validation_size=0.0)
    res = tl.evaluate(_pred(PRED), adata, counts=False, split=sp, n_de_genes=2, key_added="evaluation")
    pd.testing.assert_frame_equal(adata.uns["scmech"]["evaluation"], res)
    assert list(adata.uns.keys()) == ["scmech"]
    w = _wide(res)
    # Systema reference from the split's training conditions
    r = (TRAIN["C"] + TRAIN["D"]) / 2
    assert w.loc["A", "systema_pearson_delta"] == pytest.approx(
        np.corrcoef(PRED["A"] - r, OBS["A"] - r)[0, 1], abs=1e-6
    )


def test_multiple_models_and_condition_selection():
    adata = _lognorm_adata()
    preds = {"good": _pred(PRED), "partial": _pred({"A": PRED["A"]})}
    res = tl.evaluate(preds, adata, counts=False, n_de_genes=2)
    assert set(res["condition"]) == {"A"}  # the shared condition
    # one evaluated condition: nothing to rank it against
    assert res.loc[res["metric"].isin(["centroid_accuracy", "perturbench_rank"]), "value"].isna().all()
    with pytest.raises(KeyError, match="'partial' has no prediction"):
        tl.evaluate(preds, adata, counts=False, conditions=["A", "B"])
    with pytest.raises(KeyError, match="no observed cells"):
        tl.evaluate(_pred(PRED), adata, counts=False, conditions=["Z"])
    dup = _pred({"A": PRED["A"], "B": PRED["B"]})
    dup.obs["perturbation"] = ["A", "A"]
    dup.obs_names = ["x", "y"]
    with pytest.raises(ValueError, match="several rows"):
        tl.evaluate(dup, adata, counts=False)
    with pytest.raises(TypeError, match="AnnData"):
        tl.evaluate([1, 2], adata)


def test_energy_distance_definition():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    y = rng.normal(loc=1.0, size=(30, 3))
    from scipy.spatial.distance import cdist

    expected = 2 * cdist(x, y).mean() - cdist(x, x).mean() - cdist(y, y).mean()
    assert energy_distance(x, y) == pytest.approx(expected)
    assert energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)
    assert energy_distance(x, y) > energy_distance(x, x + 0.01)


@pytest.mark.pertpy
def test_energy_distance_matches_pertpy():
    pt = pytest.importorskip("pertpy")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 5))
    y = rng.normal(loc=0.5, scale=1.5, size=(40, 5))
    dist = pt.tl.Distance("edistance")
    assert energy_distance(x, y) == pytest.approx(float(dist(x, y)), rel=1e-6)


def test_energy_distance_in_evaluate():
    rng = np.random.default_rng(2)
    n_genes = 8
    labels = np.repeat(["NT", "A", "B"], 60)
    lam = np.full((len(labels), n_genes), 5.0)
    lam[labels == "A", :3] = 15
    lam[labels == "B", 3:6] = 1
    adata = ad.AnnData(
        rng.poisson(lam).astype(np.float32) + 1,
        obs=pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))]),
        var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]),
    )
    import scanpy as sc

    ln = adata.copy()
    sc.pp.normalize_total(ln, target_sum=1e4)
    sc.pp.log1p(ln)
    pb = tl._metrics.pseudobulk(adata, "perturbation")
    mean_pred = ad.AnnData(
        pb.loc[["A", "B"]].to_numpy().astype(np.float32),
        obs=pd.DataFrame({"perturbation": ["A", "B"]}, index=["A", "B"]),
        var=pd.DataFrame(index=adata.var_names),
    )
    # "perfect" cells: observed cells of the right condition; "swapped": cells of the other condition
    perfect = ln[ln.obs["perturbation"].isin(["A", "B"])].copy()
    swapped = perfect.copy()
    swapped.obs["perturbation"] = np.where(perfect.obs["perturbation"] == "A", "B", "A")
    res = tl.evaluate(
        {"perfect": mean_pred, "swapped": mean_pred, "means_only": mean_pred},
        adata,
        cell_predictions={"perfect": perfect, "swapped": swapped},
        n_de_genes=3,
        n_pcs=5,
        max_cells=40,
    )
    e = res[res["metric"] == "energy_distance"].pivot(index="condition", columns="model", values="value")
    assert (e["perfect"] < 0.5 * e["swapped"]).all()
    assert e["means_only"].isna().all()
    res2 = tl.evaluate(
        {"perfect": mean_pred}, adata, cell_predictions={"perfect": perfect}, n_de_genes=3, n_pcs=5, max_cells=40
    )
    e2 = res2[res2["metric"] == "energy_distance"].set_index("condition")["value"]
    np.testing.assert_allclose(e2.to_numpy(), e["perfect"].to_numpy())  # seeded


def test_noise_ceiling_half_and_replicate():
    rng = np.random.default_rng(3)
    n_genes = 10
    labels = np.repeat(["NT", "A", "B", "C"], 60)
    lam = np.full((len(labels), n_genes), 6.0)
    lam[labels == "A", :3] = 20
    lam[labels == "B", 3:6] = 1
    lam[labels == "C", 6:] = 15
    adata = ad.AnnData(
        rng.poisson(lam).astype(np.float32) + 1,
        obs=pd.DataFrame(
            {"perturbation": labels, "rep": np.tile(["r1", "r2", "r3"], len(labels) // 3)},
            index=[f"c{i}" for i in range(len(labels))],
        ),
        var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]),
    )
    before = adata.copy()
    half = tl.noise_ceiling(adata, n_de_genes=5, train_conditions=["C"], conditions=["A", "B"])
    assert set(half["model"]) == {"noise_ceiling"}
    w = _wide(half)
    assert (w["pearson_delta"] > 0.8).all()
    assert (w["centroid_accuracy"] == 1.0).all()
    assert set(half.loc[half["condition"] == "A", "n_cells"]) == {30}
    raw = _wide(tl.noise_ceiling(adata, n_de_genes=5, conditions=["A", "B"], spearman_brown=False))
    r = raw["pearson_delta"]
    np.testing.assert_allclose(w["pearson_delta"], 2 * r / (1 + r))
    assert (w["pearson_delta"] >= r).all()
    np.testing.assert_allclose(w["mse"], raw["mse"])  # only correlations are stepped up
    rep = tl.noise_ceiling(adata, split="replicate", batch_key="rep", n_de_genes=5)
    assert set(rep["condition"]) == {"A", "B", "C"}
    assert (_wide(rep)["pearson_delta"] > 0.8).all()
    assert set(rep.loc[rep["condition"] == "A", "n_cells"]) == {60}
    with pytest.raises(ValueError, match="needs `batch_key`"):
        tl.noise_ceiling(adata, split="replicate")
    with pytest.raises(ValueError, match="'thirds'"):
        tl.noise_ceiling(adata, split="thirds")
    np.testing.assert_array_equal(adata.X, before.X)
    assert adata.obs.equals(before.obs)
    assert list(adata.uns.keys()) == []


def test_leaderboard_direction_and_seeds():
    rows = []
    for seed in (0, 1):
        for cond, (a, b) in {"p1": (0.9, 0.5), "p2": (0.7, 0.3)}.items():
            rows += [
                ("m1", cond, "pearson_delta", a + 0.01 * seed, seed),
                ("m2", cond, "pearson_delta", b, seed),
                ("m1", cond, "mse", 0.2, seed),
                ("m2", cond, "mse", 0.1 + 0.1 * seed, seed),
            ]
    res = pd.DataFrame(rows, columns=["model", "condition", "metric", "value", "seed"])
    # without the seed column, each condition's two rows are averaged first (each condition counts once)
    with pytest.warns(UserWarning, match=r"16 rows that repeat a model, condition and metric .*add a 'seed' column"):
        board = tl.leaderboard(res.drop(columns="seed"))
    pdel = board[board["metric"] == "pearson_delta"].set_index("model")
    assert pdel.loc["m1", "rank"] == 1
    assert pdel.loc["m2", "rank"] == 2
    assert pdel.loc["m1", "mean"] == pytest.approx(np.mean([0.905, 0.705]))
    assert pdel.loc["m1", "sd"] == pytest.approx(np.std([0.905, 0.705], ddof=1))
    assert pdel.loc["m1", "n"] == 2
    mse = board[board["metric"] == "mse"].set_index("model")
    assert mse.loc["m2", "rank"] == 1
    assert not mse.loc["m2", "higher_is_better"]
    seeded = tl.leaderboard(res, metrics=["pearson_delta"]).set_index("model")
    assert list(seeded.index) == ["m1", "m2"]
    assert seeded.loc["m1", "mean"] == pytest.approx(np.mean([0.8, 0.81]))
    assert seeded.loc["m1", "sd"] == pytest.approx(np.std([0.8, 0.81], ddof=1))
    assert seeded.loc["m1", "n"] == 2
    assert seeded.loc["m1", "n_conditions"] == 2
    with pytest.warns(UserWarning, match="repeat a model, condition and metric"):
        table = tl.leaderboard_table(res.drop(columns="seed"), metrics=["pearson_delta", "mse"], digits=2)
    assert list(table.columns) == ["pearson_delta", "mse"]
    assert table.loc["m1", "pearson_delta"].startswith("0.80 ±")
    with pytest.raises(KeyError, match="'nope'"):
        tl.leaderboard(res, metrics=["nope"])
    with pytest.raises(ValueError, match="results is an empty list"):
        tl.leaderboard([])
    # a condition duplicated by concatenating the same results counts once, as in win_counts
    one = res[res["seed"] == 0].drop(columns="seed")
    with pytest.warns(UserWarning, match="repeat a model, condition and metric"):
        twice = tl.leaderboard([one, one])
    pd.testing.assert_frame_equal(twice, tl.leaderboard(one))
    # ties share the best rank; NaN values are ignored
    tie = pd.DataFrame(
        [("a", "p", "mse", 1.0), ("b", "p", "mse", 1.0), ("c", "p", "mse", np.nan)],
        columns=["model", "condition", "metric", "value"],
    )
    assert list(tl.leaderboard(tie)["rank"]) == [1, 1]


def test_real_data_smoke(baseline_predictions):
    """Papalexi 2021, leave-one-out on STAT1: the linear model recovers the top-20 DE change."""
    import scmech

    adata = scmech.datasets.papalexi2021()
    sp = next(tl.leave_one_out(adata, conditions=["STAT1"]))
    preds = baseline_predictions(
        adata, sp, dict.fromkeys((tl.ControlMean, tl.TrainMean, tl.LinearModel), sp.test_conditions)
    )
    res = tl.evaluate(preds, adata, split=sp)
    w = res[res["condition"] == "STAT1"].pivot(index="model", columns="metric", values="value")
    assert w.loc["LinearModel", "pearson_delta_de"] > 0.5
    assert w.loc["TrainMean", "pearson_delta_de"] > 0.5
    assert abs(w.loc["ControlMean", "pearson_delta"]) < 0.2 or np.isnan(w.loc["ControlMean", "pearson_delta"])
    assert np.isnan(w.loc["TrainMean", "systema_pearson_delta"])  # its prediction is the Systema reference
    assert w.loc["LinearModel", "systema_pearson_delta_de"] > 0.5


def test_top_change_and_off_target_metrics_by_hand():
    """P20 on the genes of largest observed change; Systema's score without the target's own gene."""
    adata = _lognorm_adata()
    # rename: condition A targets gene g1, so its own gene is g1
    adata.obs["perturbation"] = adata.obs["perturbation"].replace({"A": "g1"})
    pred = _pred({"g1": PRED["A"], "B": PRED["B"]})
    res = tl.evaluate(pred, adata, counts=False, n_de_genes=2, train_conditions=["C", "D"])
    w = _wide(res)
    r = (TRAIN["C"] + TRAIN["D"]) / 2
    for c, key in (("g1", "A"), ("B", "B")):
        dp, do = PRED[key] - CTRL, OBS[key] - CTRL
        top = np.argsort(-np.abs(do), kind="stable")[:2]
        assert w.loc[c, "pearson_delta_top_change"] == pytest.approx(np.corrcoef(dp[top], do[top])[0, 1], abs=1e-6)
    # A's observed change [1, 0, -0.5]: top-2 by |change| are g0 and g2
    off = np.array([True, False, True])
    expected = np.corrcoef((PRED["A"] - r)[off], (OBS["A"] - r)[off])[0, 1]
    assert w.loc["g1", "systema_pearson_delta_off"] == pytest.approx(expected, abs=1e-6)
    # B is not a gene of the data: nothing to leave out
    assert w.loc["B", "systema_pearson_delta_off"] == pytest.approx(w.loc["B", "systema_pearson_delta"], abs=1e-9)


def test_win_counts_compare_condition_means_in_the_metric_direction():
    rows = []
    for seed, (a, b) in enumerate([(0.9, 0.5), (0.7, 0.6)]):
        rows += [("M", "c1", "pearson_delta", a, 1, seed), ("N", "c1", "pearson_delta", b, 1, seed)]
        rows += [("M", "c2", "pearson_delta", 0.1, 1, seed), ("N", "c2", "pearson_delta", 0.4, 1, seed)]
        rows += [("M", "c1", "mse", 0.1, 1, seed), ("N", "c1", "mse", 0.2, 1, seed)]
    res = pd.DataFrame(rows, columns=["model", "condition", "metric", "value", "n_cells", "seed"])
    w = tl.win_counts(res, "M", "pearson_delta")
    assert w.loc["N"].tolist() == [1, 1, 0, 2]
    assert tl.win_counts(res, "M", "mse").loc["N", "wins"] == 1  # lower is better
    assert tl.win_counts(res, "N", "mse").loc["M", "losses"] == 1
    # one model named as a string, not its letters
    pd.testing.assert_frame_equal(tl.win_counts(res, "M", "pearson_delta", against="N"), w)
    with pytest.raises(KeyError, match="No results for model 'X'"):
        tl.win_counts(res, "X", "mse")
    with pytest.raises(KeyError, match="No results for metric 'nope'"):
        tl.win_counts(res, "M", "nope")
    with pytest.raises(ValueError, match=r"No model to compare 'M' with: against=\['M'\] names only the model itself"):
        tl.win_counts(res, "M", "pearson_delta", against="M")
    with pytest.raises(ValueError, match=r"No model to compare 'M' with: the results hold no other model"):
        tl.win_counts(res[res["model"] == "M"], "M", "pearson_delta")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_predictions_are_refused(bad):
    adata = _lognorm_adata()
    values = {k: v.copy() for k, v in PRED.items()}
    values["B"][1] = bad
    with pytest.raises(ValueError, match=r"Predictions of 'toy' hold NaN or infinite values for \['B'\]"):
        tl.evaluate(_pred(values), adata, counts=False, n_de_genes=3)


def _one_cell_of_b() -> ad.AnnData:
    adata = _lognorm_adata()
    lab = adata.obs["perturbation"].to_numpy()
    drop = np.flatnonzero(lab == "B")[1:]
    return adata[~np.isin(np.arange(adata.n_obs), drop)].copy()


def test_one_cell_conditions_warn_in_evaluate_and_leave_the_noise_ceiling():
    adata = _one_cell_of_b()
    with pytest.warns(UserWarning, match=r"\['B'\] have fewer than 2 observed cells: no DE test is possible"):
        res = tl.evaluate(_pred(PRED), adata, counts=False, n_de_genes=3, train_conditions=["C", "D"])
    w = _wide(res)
    for m in ("pearson_delta_de", "mse_de", "direction_accuracy_de", "systema_pearson_delta_de"):
        assert np.isnan(w.loc["B", m]), m
        assert np.isfinite(w.loc["A", m]), m
    # the other metrics use the single cell, and n_cells says so
    assert w.loc["B", "mse"] == pytest.approx(np.mean((PRED["B"] - (OBS["B"] + EPS)) ** 2), abs=1e-6)
    assert set(res.loc[res["condition"] == "B", "n_cells"]) == {1}
    # the noise ceiling cannot split one cell: B is left out, named
    with pytest.warns(UserWarning, match=r"\['B'\] of obs\['perturbation'\] have fewer than 2 cells and are left out"):
        ceiling = tl.noise_ceiling(adata, counts=False, n_de_genes=3)
    assert "B" not in set(ceiling["condition"])
    assert {"A", "C", "D"} <= set(ceiling["condition"])
    with (
        pytest.warns(UserWarning, match="left out of the noise ceiling"),
        pytest.raises(ValueError, match=r"No condition of conditions=\['B'\] has at least 2 cells"),
    ):
        tl.noise_ceiling(adata, counts=False, conditions=["B"])


def test_noise_ceiling_names_conditions_in_a_single_replicate():
    adata = _lognorm_adata()
    lab = adata.obs["perturbation"].to_numpy()
    adata.obs["rep"] = np.where(lab == "D", "r1", np.tile(["r1", "r2"], adata.n_obs // 2 + 1)[: adata.n_obs])
    with pytest.warns(UserWarning, match=r"\['D'\] are left out of the noise ceiling: their cells sit in a single"):
        rep = tl.noise_ceiling(adata, split="replicate", batch_key="rep", counts=False, n_de_genes=2)
    assert "D" not in set(rep["condition"])


@pytest.mark.parametrize("scale", ["expm1", "counts"])
def test_predictions_off_the_log1p_scale_are_refused(scale):
    adata = _lognorm_adata()
    values = {k: (np.expm1(v * 4) if scale == "expm1" else v * 1e3) for k, v in PRED.items()}
    top = max(float(np.float32(v).max()) for v in values.values())
    with pytest.raises(ValueError, match=rf"Predictions of 'toy' reach {top:.4g}, above log1p\(1e4\) = 9.21"):
        tl.evaluate(_pred(values), adata, counts=False, n_de_genes=3)
    # just above log1p(1e4) is allowed (extrapolating models), far above it is not
    ok = {k: v.copy() for k, v in PRED.items()}
    ok["A"][0] = 9.5
    tl.evaluate(_pred(ok), adata, counts=False, n_de_genes=3, train_conditions=["C", "D"])
    cells = _pred({"A": PRED["A"] * 10, "B": PRED["B"]})
    with pytest.raises(ValueError, match=r"cell_predictions\['toy'\] reach 22, .*as returned by predict\(\)"):
        tl.evaluate(_pred(PRED), adata, counts=False, n_de_genes=3, cell_predictions={"toy": cells})


def test_unknown_de_method_is_refused_before_any_work():
    adata = _lognorm_adata()
    # checked before the predictions are even read
    with pytest.raises(ValueError, match=r"de_method='foo' is not supported; use one of \['t-test'"):
        tl.evaluate("not predictions", adata, counts=False, de_method="foo")
    with pytest.raises(ValueError, match=r"de_method='foo' is not supported"):
        tl.noise_ceiling(adata, counts=False, de_method="foo", perturbation_key="nope")


def test_evaluate_refuses_a_split_made_on_other_cells():
    adata = _lognorm_adata()
    sp = tl.split(adata, "perturbation", test_conditions=["A", "B"], validation_size=0.0)
    assert sp.n_obs == adata.n_obs
    good = tl.evaluate(_pred(PRED), adata, counts=False, split=sp, n_de_genes=2)
    # the same cells in another object: accepted, and scored the same
    pd.testing.assert_frame_equal(tl.evaluate(_pred(PRED), adata.copy(), counts=False, split=sp, n_de_genes=2), good)
    perm = np.random.default_rng(0).permutation(adata.n_obs)
    with pytest.raises(ValueError, match=r"split was made on other cells: this AnnData's obs_names .* reordered"):
        tl.evaluate(_pred(PRED), adata[perm].copy(), counts=False, split=sp)
    with pytest.raises(ValueError, match=rf"made on other cells: {adata.n_obs} cells, but this AnnData has 20"):
        tl.evaluate(_pred(PRED), adata[:20].copy(), counts=False, split=sp)
    renamed = adata.copy()
    renamed.obs_names = [f"x{i}" for i in range(adata.n_obs)]
    with pytest.raises(ValueError, match="Make the split on this AnnData"):
        tl.evaluate(_pred(PRED), renamed, counts=False, split=sp)


def test_evaluate_accepts_a_split_without_a_fingerprint():
    from dataclasses import replace

    adata = _lognorm_adata()
    sp = tl.split(adata, "perturbation", test_conditions=["A", "B"], validation_size=0.0)
    bare = replace(sp, n_obs=None, obs_names_fingerprint=None)  # e.g. built by hand
    renamed = adata.copy()
    renamed.obs_names = [f"x{i}" for i in range(adata.n_obs)]
    pd.testing.assert_frame_equal(
        tl.evaluate(_pred(PRED), renamed, counts=False, split=bare, n_de_genes=2),
        tl.evaluate(_pred(PRED), adata, counts=False, split=sp, n_de_genes=2),
    )
    # indices past the end are still caught without the fingerprint
    with pytest.raises(ValueError, match="indices outside"):
        tl.evaluate(_pred(PRED), adata[:10].copy(), counts=False, split=bare)


def test_evaluate_refuses_duplicated_gene_names():
    adata = _lognorm_adata()
    pred = _pred(PRED)
    pred.var_names = ["g0", "g0", "g2"]
    with pytest.raises(ValueError, match=r"var_names of the predictions of 'toy' has 1 duplicates .*make_unique"):
        tl.evaluate(pred, adata, counts=False)
    dup = adata.copy()
    dup.var_names = ["g0", "g1", "g1"]
    with pytest.raises(ValueError, match=r"adata.var_names has 1 duplicates \(e.g. \['g1'\]\); .*make_unique"):
        tl.evaluate(_pred(PRED), dup, counts=False)
    cells = _pred(PRED)
    cells.var_names = ["g2", "g2", "g1"]
    with pytest.raises(ValueError, match=r"cell_predictions\['toy'\] has 1 duplicates"):
        tl.evaluate(_pred(PRED), adata, counts=False, cell_predictions={"toy": cells})


def test_a_single_label_is_one_condition_not_its_letters():
    adata = _lognorm_adata()
    one = tl.evaluate(_pred(PRED), adata, counts=False, n_de_genes=2, conditions="A", train_conditions="C")
    listed = tl.evaluate(_pred(PRED), adata, counts=False, n_de_genes=2, conditions=["A"], train_conditions=["C"])
    pd.testing.assert_frame_equal(one, listed)
    assert set(one["condition"]) == {"A"}
    assert one["value"][one["metric"] == "systema_pearson_delta"].notna().all()
    table = tl.leaderboard_table(listed, metrics="mse")
    pd.testing.assert_frame_equal(table, tl.leaderboard_table(listed, metrics=["mse"]))
    assert list(table.columns) == ["mse"]
    assert list(tl.leaderboard(listed, metrics="mse")["metric"]) == ["mse"]


def _counts_adata(seed: int = 3) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    labels = np.repeat(["NT", "A", "B", "C"], 30)
    lam = np.full((len(labels), 8), 6.0)
    lam[labels == "A", :3] = 20
    lam[labels == "B", 3:6] = 1
    return ad.AnnData(
        rng.poisson(lam).astype(np.float32) + 1,
        obs=pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))]),
        var=pd.DataFrame(index=[f"g{i}" for i in range(8)]),
    )


def test_noise_ceiling_of_a_backed_adata_equals_in_memory(tmp_path):
    adata = _counts_adata()
    path = tmp_path / "screen.h5ad"
    adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        got = tl.noise_ceiling(backed, n_de_genes=3, conditions="A", train_conditions="C")
    finally:
        backed.file.close()
    want = tl.noise_ceiling(adata, n_de_genes=3, conditions=["A"], train_conditions=["C"])
    pd.testing.assert_frame_equal(got, want)
    assert set(want["condition"]) == {"A"}


def test_results_with_categorical_columns_and_unused_categories():
    # filtering results (or reading parquet) leaves categories without rows: they are no models or metrics
    rows = [("M1", "c1", "pearson_delta", 0.9), ("M2", "c1", "pearson_delta", 0.5)]
    rows += [("M1", "c2", "pearson_delta", 0.7), ("M2", "c2", "pearson_delta", 0.6)]
    res = pd.DataFrame(rows, columns=["model", "condition", "metric", "value"])
    cat = res.assign(
        model=pd.Categorical(res["model"], categories=["M1", "M2", "M3"]),
        metric=pd.Categorical(res["metric"], categories=["pearson_delta", "mse"]),
        condition=pd.Categorical(res["condition"], categories=["c1", "c2", "c3"]),
    )
    plain = tl.leaderboard(res)
    pd.testing.assert_frame_equal(tl.leaderboard(cat), plain, check_dtype=False, check_categorical=False)
    assert list(tl.leaderboard_table(cat).index) == ["M1", "M2"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no pandas FutureWarning about observed=
        w = tl.win_counts(cat, "M1", "pearson_delta")
    assert list(w.index) == ["M2"]
    assert w.loc["M2", "wins"] == 2


def test_metric_names_that_are_not_text_and_unknown_table_metrics():
    res = pd.DataFrame([("M1", "c1", 1, 0.9), ("M2", "c1", 1, 0.5)], columns=["model", "condition", "metric", "value"])
    board = tl.leaderboard(res)
    assert board["metric"].tolist() == ["1", "1"]
    assert list(tl.leaderboard_table(board, metrics=[1]).columns) == ["1"]
    with pytest.raises(KeyError, match=r"Metric\(s\) \['foo'\] are not in the leaderboard"):
        tl.leaderboard_table(board, metrics=["foo"])


def test_energy_distance_names_an_anndata_given_for_an_array():
    x = ad.AnnData(np.zeros((3, 2)))
    with pytest.raises(TypeError, match=r"x must be a cells x features array, got AnnData"):
        energy_distance(x, np.zeros((3, 2)))
    # a DataFrame of cells x features is an array
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 2)), rng.normal(size=(4, 2))
    assert energy_distance(pd.DataFrame(a), pd.DataFrame(b)) == pytest.approx(energy_distance(a, b))
