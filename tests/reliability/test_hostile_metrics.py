"""The numbers of scmech.tl against independent recomputations from the documented definitions.

Each test rebuilds a metric with numpy/scipy on a small hand-made screen (counts, so the pseudobulk
:math:`\\log(1 + 10^4\\bar\\rho)` and the log-normalised cells are computed here too) and compares, or checks a
property that a correct implementation cannot break (ranges, invariance to the other models evaluated).
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats

from scmech import tl
from scmech.tl._metrics._names import higher_is_better

GENES = [f"g{i}" for i in range(12)]
LABELS = ["NT"] * 10 + ["A"] * 6 + ["B"] * 5 + ["A+B"] * 4 + ["C"] * 5 + ["D"] * 1


def _screen() -> tuple[ad.AnnData, np.ndarray]:
    """Counts with a gene that is 0 everywhere (g5), a strong change of g2 in A, and a 1-cell condition D."""
    rng = np.random.default_rng(0)
    x = rng.poisson(rng.uniform(1, 30, size=len(GENES)), size=(len(LABELS), len(GENES))).astype(float)
    x[:, 5] = 0
    x[np.asarray(LABELS) == "A", 2] *= 3
    adata = ad.AnnData(
        x.astype(np.float32),
        obs=pd.DataFrame({"perturbation": LABELS}, index=[f"c{i}" for i in range(len(LABELS))]),
        var=pd.DataFrame(index=GENES),
    )
    return adata, x


def _pb(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """log(1 + 1e4 * mean proportion), the documented pseudobulk."""
    sub = x[mask]
    return np.log1p(1e4 * (sub / sub.sum(1, keepdims=True)).mean(0))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1]) if np.std(a) > 0 and np.std(b) > 0 else np.nan


def _predictions(x: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    lab = np.asarray(LABELS)
    return {c: np.clip(_pb(x, lab == c) + rng.normal(0, 0.3, x.shape[1]), 0, None) for c in ("A", "B", "A+B", "D")}


def _pred_adata(values: dict[str, np.ndarray], order: np.ndarray | None = None, names=None) -> ad.AnnData:
    order = np.arange(len(GENES)) if order is None else order
    return ad.AnnData(
        np.stack([v[order] for v in values.values()]).astype(np.float32),
        obs=pd.DataFrame({"perturbation": names or list(values)}, index=[f"r{i}" for i in range(len(values))]),
        var=pd.DataFrame(index=[GENES[i] for i in order]),
    )


def _evaluate(pred: ad.AnnData, adata: ad.AnnData) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # D has one cell (no DE test), announced by a warning
        res = tl.evaluate({"m": pred}, adata, train_conditions=["C"], n_de_genes=4, n_top_expressed=5)
    return res.pivot(index="condition", columns="metric", values="value")


def test_evaluate_metrics_match_independent_recomputation():
    adata, x = _screen()
    preds = _predictions(x)
    w = _evaluate(_pred_adata(preds), adata)
    lab = np.asarray(LABELS)
    ctrl, ref = _pb(x, lab == "NT"), _pb(x, lab == "C")
    conds = ["A", "A+B", "B", "D"]
    obs = {c: _pb(x, lab == c) for c in conds}
    top = np.argsort(-ctrl, kind="stable")[:5]
    dist = np.array([[np.linalg.norm(preds[p] - obs[q]) for q in conds] for p in conds])
    lognorm = np.log1p(1e4 * x / x.sum(1, keepdims=True))
    for i, c in enumerate(conds):
        yh, y = preds[c], obs[c]
        change = np.argsort(-np.abs(y - ctrl), kind="stable")[:4]
        expected = {
            "pearson": _pearson(yh, y),
            "pearson_delta": _pearson(yh - ctrl, y - ctrl),
            "pearson_delta_top_change": _pearson((yh - ctrl)[change], (y - ctrl)[change]),
            "mse": np.mean((yh - y) ** 2),
            "l2_top": np.linalg.norm((yh - y)[top]),
            "systema_pearson_delta": _pearson(yh - ref, y - ref),
            "centroid_accuracy": np.mean(np.delete(dist[i], i) > dist[i, i]),
            "perturbench_rank": np.sum(dist[i] < dist[i, i]) / len(conds),
        }
        if c != "D":  # Welch t-test of the log-normalised cells vs control, top |t|
            t = stats.ttest_ind(lognorm[lab == c], lognorm[lab == "NT"], equal_var=False).statistic
            de = np.argsort(-np.abs(np.nan_to_num(t)), kind="stable")[:4]
            expected["pearson_delta_de"] = _pearson((yh - ctrl)[de], (y - ctrl)[de])
            expected["mse_de"] = np.mean((yh - y)[de] ** 2)
        else:
            assert np.isnan(w.loc[c, "pearson_delta_de"])
        for metric, value in expected.items():
            assert w.loc[c, metric] == pytest.approx(value, abs=1e-5), (c, metric)


def test_evaluate_invariant_to_gene_order_label_order_sparsity_and_dtype():
    adata, x = _screen()
    preds = _predictions(x)
    base = _evaluate(_pred_adata(preds), adata)
    order = np.random.default_rng(2).permutation(len(GENES))
    shuffled = _evaluate(_pred_adata(preds, order=order, names=["A", "B", "B+A", "D"]), adata)
    sparse = adata.copy()
    sparse.X = sp.csr_matrix(sparse.X)
    # scipy's sparse arrays, which scanpy's normalize_total fails on by itself
    array = adata.copy()
    array.X = sp.csr_array(array.X)
    wide = adata.copy()
    wide.X = wide.X.astype(np.float64)
    relabelled = adata.copy()
    relabelled.obs["perturbation"] = ["B+A" if c == "A+B" else c for c in LABELS]
    others = (shuffled, *(_evaluate(_pred_adata(preds), a) for a in (sparse, array, wide)))
    for other in others:
        pd.testing.assert_frame_equal(other.loc[base.index, base.columns], base, atol=1e-6)
    pd.testing.assert_frame_equal(_evaluate(_pred_adata(preds), relabelled), base, atol=1e-6)


def test_energy_distance_of_a_model_does_not_depend_on_the_other_models():
    """The observed cells subsampled for energy_distance are shared by the models, not drawn per model in turn."""
    rng = np.random.default_rng(0)
    labels = ["NT"] * 30 + ["A"] * 30 + ["B"] * 30
    x = rng.poisson(rng.uniform(5, 30, 10), size=(len(labels), 10)).astype(np.float32)
    var = pd.DataFrame(index=[f"g{i}" for i in range(10)])
    adata = ad.AnnData(x, obs=pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(90)]), var=var)
    lognorm = np.log1p(1e4 * x / x.sum(1, keepdims=True))

    def mean_pred(shift: float) -> ad.AnnData:
        means = np.stack([lognorm[np.asarray(labels) == c].mean(0) + shift for c in "AB"])
        return ad.AnnData(means, obs=pd.DataFrame({"perturbation": list("AB")}, index=list("AB")), var=var)

    def cells(shift: float) -> ad.AnnData:
        obs = pd.DataFrame({"perturbation": labels[30:]}, index=[f"p{i}" for i in range(60)])
        return ad.AnnData(lognorm[30:] + shift, obs=obs, var=var)

    kw = {"max_cells": 10, "train_conditions": ["A"], "n_pcs": 3}
    alone = tl.evaluate({"a": mean_pred(0)}, adata, cell_predictions={"a": cells(0)}, **kw)
    both = tl.evaluate(
        {"b": mean_pred(0.2), "a": mean_pred(0)}, adata, cell_predictions={"b": cells(0.2), "a": cells(0)}, **kw
    )

    def energy(res, model):
        return res[(res["metric"] == "energy_distance") & (res["model"] == model)].set_index("condition")["value"]

    pd.testing.assert_series_equal(energy(alone, "a"), energy(both, "a"))
    # identical cell predictions score identically, whatever their position
    same = tl.evaluate(
        {"x": mean_pred(0), "y": mean_pred(0)}, adata, cell_predictions={"x": cells(0), "y": cells(0)}, **kw
    )
    np.testing.assert_allclose(energy(same, "x").to_numpy(), energy(same, "y").to_numpy())


def test_noise_ceiling_spearman_brown_stays_a_correlation():
    """2r/(1+r) is applied to r > 0 only: for r < -1/3 it would leave [-1, 1] (r = -0.5 gives -2)."""
    rng = np.random.default_rng(0)
    labels = ["NT"] * 40 + [f"P{i}" for i in range(8) for _ in range(6)]
    x = rng.poisson(20, size=(len(labels), 15)).astype(np.float32)  # no effects: split-half r scatter around 0
    adata = ad.AnnData(
        x,
        obs=pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))]),
        var=pd.DataFrame(index=[f"g{i}" for i in range(15)]),
    )
    raw = tl.noise_ceiling(adata, spearman_brown=False, n_de_genes=5)
    stepped = tl.noise_ceiling(adata, spearman_brown=True, n_de_genes=5)
    array = adata.copy()
    array.X = sp.csr_array(array.X)
    pd.testing.assert_frame_equal(tl.noise_ceiling(array, spearman_brown=False, n_de_genes=5), raw)
    m = raw.merge(stepped, on=["model", "condition", "metric"], suffixes=("_raw", "_sb"))
    corr = m[m["metric"].str.contains("pearson")].dropna(subset=["value_raw"])
    r, s = corr["value_raw"].to_numpy(), corr["value_sb"].to_numpy()
    assert (r < -1 / 3).any()  # the case that used to leave [-1, 1]
    assert ((s >= -1) & (s <= 1)).all()
    pos = r > 0
    np.testing.assert_allclose(s[pos], 2 * r[pos] / (1 + r[pos]))
    np.testing.assert_array_equal(s[~pos], r[~pos])
    other = m[~m["metric"].str.contains("pearson")]
    np.testing.assert_array_equal(other["value_raw"].to_numpy(), other["value_sb"].to_numpy())


@pytest.mark.parametrize("metric", ["mmd", "wasserstein", "sym_kldiv", "euclidean", "cityblock", "edistance", "mse"])
def test_pertpy_distances_rank_lower_is_better(metric):
    assert not higher_is_better(metric)
    results = pd.DataFrame(
        {"model": ["good", "bad"], "condition": ["x", "x"], "metric": [metric] * 2, "value": [0.1, 0.9]}
    )
    board = tl.leaderboard(results).set_index("model")
    assert board.loc["good", "rank"] == 1
    assert board.loc["bad", "rank"] == 2
    assert tl.win_counts(results, "good", metric).loc["bad", "wins"] == 1


def test_leaderboard_ties_nan_and_directions_by_hand():
    results = pd.DataFrame(
        {
            "model": ["a", "a", "b", "b", "c", "c"] * 2,
            "condition": ["x", "y"] * 6,
            "metric": ["mse"] * 6 + ["pearson_delta"] * 6,
            "value": [1, 3, 2, 2, 4, 4, 0.9, 0.1, 0.5, 0.5, np.nan, 0.2],
        }
    )
    with pytest.warns(UserWarning, match="not scored on the same conditions"):
        board = tl.leaderboard(results).set_index(["metric", "model"])
    assert board.loc[("mse", "a"), "rank"] == board.loc[("mse", "b"), "rank"] == 1  # tie: the best rank, shared
    assert board.loc[("mse", "c"), "rank"] == 3
    assert board.loc[("pearson_delta", "c"), "n"] == 1  # the NaN is dropped, not counted as a score
    assert board.loc[("pearson_delta", "c"), "mean"] == pytest.approx(0.2)
    wins = tl.win_counts(results, "a", "mse")
    assert wins.loc["b"].tolist() == [1, 1, 0, 2]
    assert wins.loc["c"].tolist() == [2, 0, 0, 2]  # lower MSE wins
    assert tl.win_counts(results, "a", "pearson_delta").loc["c"].tolist() == [0, 1, 0, 1]


def test_power_is_the_two_sided_power_at_the_mde():
    from scipy.stats import norm

    z = norm.ppf(0.975) + norm.ppf(0.8)
    var = {"cell": 0.5, "batch": 0.01}
    se = np.sqrt(0.5 * (1 / 50 + 1 / 400) + 0.01 * 0.5)
    out = tl.power(var, n_cells=[50], n_controls=400, batch_factor=0.5, effect=[z * se, 1e-9])
    assert out["mde"].iloc[0] == pytest.approx(z * se)
    two_sided = norm.cdf(z * se / se - norm.ppf(0.975)) + norm.cdf(-z * se / se - norm.ppf(0.975))
    assert out["power"].iloc[0] == pytest.approx(two_sided)
    assert out["power"].iloc[1] == pytest.approx(0.05, abs=1e-6)  # no effect: rejected at the test's level
    need = tl.power(var, effect=[0.3], n_controls=400, batch_factor=0.5)["n_cells"].iloc[0]
    mde = tl.minimal_detectable_effect(0.5, np.array([need, need - 1]), 400, sigma2_batch=0.01, batch_factor=0.5)
    assert mde[0] <= 0.3 < mde[1]  # the fewest cells that detect the effect
