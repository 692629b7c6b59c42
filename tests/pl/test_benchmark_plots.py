from __future__ import annotations

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("agg")
import matplotlib.pyplot as plt

from scmech import pl, tl


@pytest.fixture
def data(baseline_predictions):
    """A small screen with four singles, a split holding out A and B, and three baselines' predictions."""
    rng = np.random.default_rng(0)
    n_genes = 25
    labels = np.repeat(["NT", "A", "B", "C", "D"], 40)
    lam = np.full((len(labels), n_genes), 5.0)
    for k, lab in enumerate(["A", "B", "C", "D"]):
        lam[labels == lab, 5 * k : 5 * k + 5] *= rng.uniform(0.2, 4, size=5)
    adata = ad.AnnData(
        rng.poisson(lam).astype(np.float32) + 1,
        obs=pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))]),
        var=pd.DataFrame(index=[f"gene{i}" for i in range(n_genes)]),
    )
    sp = tl.split(adata, "perturbation", test_conditions=["A", "B"])
    preds = baseline_predictions(
        adata, sp, {tl.ControlMean: ["A", "B"], tl.TrainMean: ["A", "B"], tl.Additive: ["C", "D"]}
    )
    return adata, sp, preds


def test_leaderboard_plot(data, tmp_path):
    adata, sp, preds = data
    res = tl.evaluate({k: v for k, v in preds.items() if k != "Additive"}, adata, split=sp, n_de_genes=5)
    ceiling = tl.noise_ceiling(adata, conditions=["A", "B"], n_de_genes=5)
    both = pd.concat([res, ceiling])
    path = tmp_path / "sub" / "leaderboard.png"
    ax = pl.leaderboard(both, metric="pearson_delta_de", save=path, show=False)
    assert path.exists()
    assert path.stat().st_size > 5_000
    labels = [t.get_text() for t in ax.get_yticklabels()]
    # ControlMean predicts no change, so a correlation of changes is undefined for it: it is named, not ranked
    assert set(labels) == {"TrainMean"}
    assert "undefined for ControlMean" in ax.get_xlabel()
    plt.close("all")
    ax = pl.leaderboard(both, metric="mse_de", show=False)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert set(labels) == {"ControlMean", "TrainMean"}
    assert "undefined" not in ax.get_xlabel()
    board = tl.leaderboard(res)
    best = board[board["metric"] == "mse_de"].sort_values("rank")["model"].iloc[0]
    assert labels[-1] == best  # best model on top
    plt.close("all")
    ax2 = pl.leaderboard(board, metric="l2_top")  # a board works too; lower-is-better label
    assert "lower is better" in ax2.get_xlabel()
    with pytest.raises(KeyError, match="'nope'"):
        pl.leaderboard(board, metric="nope")
    fig, ax3 = plt.subplots()
    assert pl.leaderboard(res, ax=ax3) is ax3
    plt.close("all")


def test_predicted_vs_observed_plot(data, tmp_path):
    adata, sp, preds = data
    before = adata.copy()
    path = tmp_path / "pvo.png"
    ax = pl.predicted_vs_observed(preds["TrainMean"], adata, "A", split=sp, n_genes=8, save=path)
    assert path.exists()
    assert path.stat().st_size > 5_000
    assert "Pearson r" in ax.get_title()
    assert ax.get_title().startswith("A")
    assert len(ax.texts) == 8
    assert "TrainMean" in ax.get_ylabel()
    ax2 = pl.predicted_vs_observed(preds["TrainMean"], adata, "B", genes=["gene5", "gene6"])
    assert {t.get_text() for t in ax2.texts} == {"gene5", "gene6"}
    with pytest.raises(KeyError, match="no row for 'C'"):
        pl.predicted_vs_observed(preds["TrainMean"], adata, "C")
    with pytest.raises(KeyError, match="nogene"):
        pl.predicted_vs_observed(preds["TrainMean"], adata, "A", genes=["nogene"])
    np.testing.assert_array_equal(adata.X, before.X)
    assert list(adata.uns.keys()) == list(before.uns.keys())
    plt.close("all")


def test_predicted_vs_observed_refuses_a_split_of_other_cells_and_duplicated_genes(data):
    adata, sp, preds = data
    perm = adata[np.random.default_rng(1).permutation(adata.n_obs)].copy()
    with pytest.raises(ValueError, match="split was made on other cells.*Make the split on this AnnData"):
        pl.predicted_vs_observed(preds["TrainMean"], perm, "A", split=sp, show=False)
    with pytest.raises(ValueError, match=rf"{adata.n_obs} cells, but this AnnData has 150"):
        pl.predicted_vs_observed(preds["TrainMean"], adata[:150].copy(), "A", split=sp, show=False)
    dup = adata.copy()
    dup.var_names = ["gene0", *dup.var_names[:-1]]
    with pytest.raises(ValueError, match=r"adata.var_names has 1 duplicates.*var_names_make_unique\(\)"):
        pl.predicted_vs_observed(preds["TrainMean"], dup, "A", show=False)
    plt.close("all")


def test_leaderboard_plot_refuses_an_ax_that_is_not_an_axes():
    res = pd.DataFrame(
        {
            "model": ["M", "M", "N", "N"],
            "condition": ["p1", "p2", "p1", "p2"],
            "metric": "pearson_delta_de",
            "value": [0.5, 0.6, 0.2, 0.3],
        }
    )
    with pytest.raises(TypeError, match=r"ax must be a matplotlib Axes \(e\.g\. from fig, ax = plt\.subplots\(\)\)"):
        pl.leaderboard(res, ax="foo")
    ax = pl.leaderboard(res)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["N", "M"]
    plt.close("all")


def test_predicted_vs_observed_takes_a_bare_string_as_one_gene_and_refuses_no_gene(data):
    # genes="gene5" was read character by character (KeyError "Gene(s) ['g', 'e', ...]")
    adata, sp, preds = data
    ax = pl.predicted_vs_observed(preds["TrainMean"], adata, "A", split=sp, genes="gene5", show=False)
    assert [t.get_text() for t in ax.texts] == ["gene5"]
    assert ax.get_title().endswith("(all 25 genes); no r for 1 selected gene")  # not "nan (selected)"
    # genes=[] drew a title "... nan (selected)" without a word
    for empty in ([], ()):
        with pytest.raises(
            ValueError,
            match=r"genes=(\[\]|\(\)) selects no gene; pass genes=None for the top n_genes=20 DE genes, or name "
            r"the genes to highlight \(e\.g\. genes=\['gene0', 'gene1'\]\)",
        ):
            pl.predicted_vs_observed(preds["TrainMean"], adata, "A", split=sp, genes=empty, show=False)
    plt.close("all")


def test_predicted_vs_observed_draws_the_prediction_interval_of_each_highlighted_gene(data):
    adata, sp, preds = data
    pred = preds["TrainMean"].copy()
    x = np.asarray(pred.X, dtype=np.float64)
    pred.layers["lower"], pred.layers["upper"] = x - 0.3, x + 0.2
    pred.layers["upper"][0, 0] = np.inf  # an infinite bound runs to the edge of the axes
    pred.uns.setdefault("scmech", {}).setdefault("prediction", {})["interval"] = 0.8
    ax = pl.predicted_vs_observed(pred, adata, "A", split=sp, genes=["gene0", "gene1"], show=False)
    bars = [c for c in ax.collections if c.get_label() == "80% prediction interval"]
    assert len(bars) == 1
    segments = bars[0].get_segments()
    assert len(segments) == 2
    # each bar stands at its gene's observed change, where the gene's point is drawn
    points = next(c for c in ax.collections if c.get_label() == "selected genes")
    np.testing.assert_allclose(sorted(s[0][0] for s in segments), sorted(points.get_offsets()[:, 0]))
    bottom, top = ax.get_ylim()
    (b0, t0), (b1, t1) = ((s[0][1], s[1][1]) for s in segments)
    assert t0 == pytest.approx(top)  # gene0's infinite upper bound
    assert b0 < t0
    assert t1 - b1 == pytest.approx(0.5, abs=1e-5)  # gene1's bar spans its bounds
    # no bars without the layers
    ax = pl.predicted_vs_observed(preds["TrainMean"], adata, "A", split=sp, genes=["gene0", "gene1"], show=False)
    assert not [c for c in ax.collections if "interval" in str(c.get_label())]
    plt.close("all")
