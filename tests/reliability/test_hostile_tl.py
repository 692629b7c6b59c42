"""Hostile input to the tools and plots (``scmech.tl``, ``scmech.pl``): each test failed before its fix.

Every defect was a silent wrong answer (a meaningless result without a word), a crash deep inside numpy, pandas,
scipy or matplotlib whose message did not name the bad argument, or a user's data changed beyond the documented
keys.
"""

from __future__ import annotations

import sys
import warnings

import anndata as ad
import matplotlib as mpl
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scmech import pl, tl

mpl.use("agg")


@pytest.fixture(scope="module")
def bench():
    """A small screen, a perturbation split and two baselines' predictions of the held-out conditions."""
    # the model tests' simulated screen, loaded by this folder's conftest (a conftest is not importable by name)
    adata = sys.modules["_scmech_model_fixtures"].simulated(n_cells=240)
    adata.X = sp.csr_matrix(adata.X)
    split = tl.split(adata, "perturbation", test_conditions=["G0010", "G0009+G0021"], random_state=0)
    preds = {}
    for cls in (tl.ControlMean, tl.TrainMean):
        cls.setup_anndata(adata, perturbation_key="perturbation", control_label="NT", batch_key="batch")
        model = cls(adata)
        model.train(datasplitter_kwargs={"external_indexing": split.external_indexing})
        preds[cls.__name__] = model.predict(split.test_conditions)
    return adata, split, preds


@pytest.fixture(scope="module")
def results(bench):
    adata, split, preds = bench
    return tl.evaluate(preds, adata, split=split)


# ----------------------------------------------------------------------------------------------- selection
@pytest.mark.parametrize("column", ["batch", "time"])
def test_selection_refuses_nan_batch_or_time(rel, column):
    # NaN batches or times became a group named "nan", with its own estimates
    adata = rel.small(120)
    adata.obs["time"] = np.tile([0.0, 1.0], 60)
    adata.obs[column] = adata.obs[column].astype(object)
    adata.obs.iloc[:4, adata.obs.columns.get_loc(column)] = np.nan
    before = rel.snapshot(adata)
    kw = {"batch_key": "batch"} if column == "batch" else {"time_key": "time", "reference_time": 0.0}
    with pytest.raises(ValueError, match=rf"adata\.obs\['{column}'\] \(the {column}_key\) has 4 missing \(NaN\)"):
        tl.selection(adata, **kw)
    rel.assert_unchanged(adata, before)


def test_selection_ignores_nan_batch_of_unassigned_cells(rel):
    adata = rel.small(120)
    adata.obs["perturbation"] = adata.obs["perturbation"].astype(object)
    adata.obs["batch"] = adata.obs["batch"].astype(object)
    adata.obs.iloc[:3, adata.obs.columns.get_loc("perturbation")] = "unassigned"
    adata.obs.iloc[:3, adata.obs.columns.get_loc("batch")] = np.nan
    table = tl.selection(adata, batch_key="batch")
    assert "nan" not in set(table["batch"])


def test_selection_refuses_non_integer_min_cells(rel):
    # a string min_cells failed inside a comparison ("'>=' not supported between ... 'str'")
    with pytest.raises(TypeError, match=r"min_cells='5' must be a whole number >= 0"):
        tl.selection(rel.small(120), min_cells="5")
    with pytest.raises(ValueError, match=r"min_cells=-1 must be a whole number >= 0"):
        tl.selection(rel.small(120), min_cells=-1)


# ----------------------------------------------------------------------------------------------- evaluate
def test_evaluate_refuses_non_integer_sizes(bench):
    # n_de_genes=2.5 failed inside numpy ("Partition index must be integer")
    adata, split, preds = bench
    with pytest.raises(TypeError, match=r"n_de_genes=2\.5 must be an integer"):
        tl.evaluate(preds, adata, split=split, n_de_genes=2.5)
    with pytest.raises(TypeError, match=r"max_cells='a' must be an integer"):
        tl.evaluate(preds, adata, split=split, max_cells="a")
    with pytest.raises(ValueError, match=r"n_pcs=0 is too small"):
        tl.evaluate(preds, adata, split=split, n_pcs=0)


def test_evaluate_refuses_counts_declared_log_normalised(bench):
    # counts=False on raw counts overflowed in expm1 and returned mse in the tens of thousands
    adata, split, preds = bench
    with pytest.raises(ValueError, match=r"counts=False declares adata\.X log-normalised, but it holds integer"):
        tl.evaluate(preds, adata, split=split, counts=False)
    with pytest.raises(ValueError, match=r"counts=False declares adata\.X log-normalised"):
        tl.noise_ceiling(adata, counts=False)


def test_evaluate_accepts_log_normalised_data(bench):
    import scanpy as sc

    adata, split, preds = bench
    lognorm = adata.copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    res = tl.evaluate(preds, lognorm, split=split, counts=False)
    assert np.isfinite(res.loc[res["metric"] == "mse", "value"]).all()


@pytest.mark.parametrize(
    ("row", "call", "match"),
    [
        # a prediction row with a NaN label became the condition "nan" and its condition was silently not scored
        pytest.param(
            1,
            lambda pred, adata, split: tl.evaluate(pred, adata, split=split),
            r"have 1 missing \(NaN\) labels in obs\['perturbation'\]",
            id="evaluate",
        ),
        pytest.param(
            0,
            lambda pred, adata, split: tl.error_decomposition(
                adata.copy(), batch_key="batch", predictions=pred, n_splits=2, n_bootstrap=0
            ),
            r"predictions have 1 missing \(NaN\) labels",
            id="error_decomposition",
        ),
        # the NaN row was silently dropped from the perturbation space
        pytest.param(
            0,
            lambda pred, adata, split: tl.combine_prediction(pred, adata),
            r"pred has 1 missing \(NaN\) labels",
            id="pertpy_interop",
        ),
    ],
)
def test_tools_refuse_nan_prediction_label(bench, row, call, match):
    adata, split, preds = bench
    pred = preds["TrainMean"].copy()
    pred.obs["perturbation"] = pred.obs["perturbation"].astype(object)
    pred.obs.iloc[row, pred.obs.columns.get_loc("perturbation")] = np.nan
    with pytest.raises(ValueError, match=match):
        call(pred, adata, split)


def test_evaluate_refuses_empty_conditions(bench):
    adata, split, preds = bench
    with pytest.raises(ValueError, match=r"conditions=\[\] selects nothing"):
        tl.evaluate(preds, adata, split=split, conditions=[])


def test_evaluate_refuses_nan_cell_predictions(bench):
    # NaN cell predictions failed inside scikit-learn's PCA ("Input X contains NaN")
    adata, split, preds = bench
    cells = ad.AnnData(
        np.ones((10, adata.n_vars)),
        obs=pd.DataFrame({"perturbation": ["G0010"] * 10}, index=[f"c{i}" for i in range(10)]),
        var=pd.DataFrame(index=adata.var_names),
    )
    cells.X[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"cell_predictions\['TrainMean'\] holds 1 NaN or infinite values"):
        tl.evaluate(preds, adata, split=split, cell_predictions={"TrainMean": cells})


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"random_state": "x"}, TypeError, r"random_state='x' must be a non-negative integer seed"),
        ({"n_de_genes": 2.5}, TypeError, r"n_de_genes=2\.5 must be an integer"),
        ({"n_de_genes": 0}, ValueError, r"n_de_genes=0 is too small"),
    ],
)
def test_noise_ceiling_argument_checks(bench, kwargs, error, match):
    with pytest.raises(error, match=match):
        tl.noise_ceiling(bench[0], **kwargs)


def test_noise_ceiling_refuses_duplicated_genes(bench):
    # duplicated var_names failed inside scipy ("XA and XB must have the same number of columns")
    adata = bench[0].copy()
    adata.var_names = ["g"] * adata.n_vars
    with pytest.raises(ValueError, match=r"adata\.var_names has .* duplicates.*var_names_make_unique"):
        tl.noise_ceiling(adata)


# ----------------------------------------------------------------------------------------------- energy distance
def test_energy_distance_refuses_mismatched_or_nan_inputs():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 5))
    with pytest.raises(ValueError, match=r"x has 5 features and y 4"):
        tl.energy_distance(x, rng.normal(size=(20, 4)))
    y = x.copy()
    y[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"y holds 1 NaN or infinite values"):
        tl.energy_distance(x, y)
    assert tl.energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------------------------- leaderboards
def test_leaderboard_warns_on_models_scored_on_different_conditions(results):
    # a model scored on fewer conditions was ranked against the others' means without a word
    partial = results[~((results["model"] == "ControlMean") & (results["condition"] == "G0010"))]
    with pytest.warns(UserWarning, match=r"not scored on the same conditions.*'ControlMean': '1 of 2'"):
        board = tl.leaderboard(partial, metrics="pearson")
    assert board.set_index("model").loc["ControlMean", "n"] == 1


def test_leaderboard_no_warning_on_shared_conditions(results):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        board = tl.leaderboard(results, metrics=["pearson", "mse"])
    assert set(board["model"]) == {"ControlMean", "TrainMean"}


def test_leaderboard_refuses_non_numeric_values(results):
    # string values failed inside pandas ("agg function failed [how->mean,dtype->object]")
    text = results.assign(value=results["value"].astype(str).replace("nan", "n/a"))
    with pytest.raises(TypeError, match=r"results\['value'\] must hold numbers"):
        tl.leaderboard(text)
    with pytest.raises(TypeError, match=r"results\['value'\] must hold numbers"):
        tl.win_counts(text, "TrainMean", "pearson")
    numeric_text = results.assign(value=results["value"].astype(object))
    pd.testing.assert_frame_equal(
        tl.leaderboard(numeric_text, metrics="pearson"), tl.leaderboard(results, metrics="pearson")
    )


def test_leaderboard_seed_without_condition(results):
    with pytest.raises(ValueError, match=r"'seed' column but no 'condition' column"):
        tl.leaderboard(results.drop(columns="condition").assign(seed=0))


def test_leaderboard_table_refuses_negative_digits(results):
    # digits=-1 failed inside Python's formatting ("Format specifier missing precision")
    with pytest.raises(ValueError, match=r"digits=-1 must be a non-negative integer"):
        tl.leaderboard_table(results, digits=-1)


def test_win_counts_names_missing_columns(results):
    with pytest.raises(ValueError, match=r"columns \['condition', 'metric', 'model', 'value'\]"):
        tl.win_counts(results.drop(columns="condition"), "TrainMean", "pearson")


# ----------------------------------------------------------------------------------------------- baselines
def _registered(rel, cls, adata=None, **kwargs):
    adata = rel.small(240) if adata is None else adata
    cls.setup_anndata(adata, perturbation_key="perturbation", control_label="NT", batch_key="batch")
    return cls(adata, **kwargs), adata


@pytest.mark.parametrize(
    ("cls", "kwargs", "error", "match"),
    [
        (tl.LinearModel, {"n_components": "abc"}, TypeError, r"n_components='abc' must be a positive integer"),
        (tl.LinearModel, {"n_components": 2.7}, TypeError, r"n_components=2\.7 must be a positive integer"),
        (tl.LinearModel, {"ridge": "a"}, TypeError, r"ridge='a' must be a number >= 0"),
        (tl.LinearModel, {"ridge": -1.0}, ValueError, r"ridge=-1\.0 must be a finite number >= 0"),
        (tl.TargetClassMean, {"n_components": "x"}, TypeError, r"n_components='x' must be a positive integer"),
        (tl.TargetClassMean, {"k": 2, "gene_embedding": "nope"}, KeyError, r"gene_embedding='nope' is neither"),
    ],
)
def test_baseline_arguments(rel, cls, kwargs, error, match):
    with pytest.raises(error, match=match):
        _registered(rel, cls, **kwargs)


@pytest.mark.parametrize("cls", [tl.LinearModel, tl.TargetClassMean])
def test_baseline_refuses_nan_gene_embedding(rel, cls):
    # a NaN in the varm embedding made every LinearModel prediction NaN, silently
    adata = rel.small(240)
    adata.varm["emb"] = np.random.default_rng(0).normal(size=(adata.n_vars, 3))
    adata.varm["emb"][0, 0] = np.nan
    kwargs = {"k": 2} if cls is tl.TargetClassMean else {}
    model, _ = _registered(rel, cls, adata, gene_embedding="emb", **kwargs)
    with pytest.raises(ValueError, match=r"adata\.varm\['emb'\] holds 1 NaN or infinite values"):
        model.train()


def test_linear_model_singular_fit(rel):
    # ridge=0 with fewer conditions than components failed inside numpy ("Singular matrix")
    model, _ = _registered(rel, tl.LinearModel, ridge=0.0)
    with pytest.raises(ValueError, match=r"singular with ridge=0\.0.*positive ridge"):
        model.train()


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda s, n: [np.isin(np.arange(n), s.train), s.validation, s.test], r"external_indexing\[0\] is a boolean"),
        (lambda s, n: [s.train + 0.5, s.validation, s.test], r"\[0\] holds float64 values \(e.g. [\d.]+\)"),
        (lambda s, n: [s.train, np.array([10**6]), s.test], r"external_indexing\[1\] holds indices outside 0\.\.239"),
    ],
)
def test_baseline_refuses_bad_external_indexing(rel, make, match):
    # boolean masks were cast to indices 0 and 1 (a fit on two cells); fractional indices were truncated;
    # out-of-range validation indices were dropped silently
    model, adata = _registered(rel, tl.TrainMean)
    split = tl.split(adata, "perturbation", test_conditions=["G0010"], random_state=0)
    with pytest.raises(ValueError, match=match):
        model.train(datasplitter_kwargs={"external_indexing": make(split, adata.n_obs)})


def test_baseline_refuses_non_numeric_time(rel):
    adata = rel.small(240)
    adata.obs["time"] = np.tile([0.0, 1.0], 120)
    tl.TrainMean.setup_anndata(adata, perturbation_key="perturbation", control_label="NT", time_key="time")
    model = tl.TrainMean(adata)
    model.train()
    with pytest.raises(TypeError, match=r"`time`='day1' is not a number"):
        model.predict(["G0010"], time="day1")


# ----------------------------------------------------------------------------------------------- design
def test_power_refuses_budget_arguments_without_budget():
    # reads_per_cell / pilot_depth / cell_cost_reads were ignored without budget_reads, silently
    var = {"cell": 0.5, "batch": 0.01}
    with pytest.raises(ValueError, match=r"\['reads_per_cell', 'pilot_depth'\] only apply to the budget mode"):
        tl.power(var, n_cells=50, n_controls=100, reads_per_cell=1000, pilot_depth=500)
    with pytest.raises(ValueError, match=r"budget_reads= \(the depth trade-off\) ignores \['n_cells'\]"):
        tl.power({**var, "bio": 0.2, "meas": 0.3, "depth": 500}, n_cells=50, budget_reads=1e6)


def test_power_refuses_bad_cell_numbers():
    var = {"cell": 0.5, "batch": 0.01}
    with pytest.raises(TypeError, match=r"n_cells=\[10, 'a'\] must be a positive number"):
        tl.power(var, n_cells=[10, "a"], n_controls=100)
    with pytest.raises(ValueError, match=r"n_cells=\[\] is empty"):
        tl.power(var, n_cells=[], n_controls=100)


def test_mde_refuses_shapes_that_do_not_broadcast():
    with pytest.raises(ValueError, match=r"do not broadcast together.*'sigma2_cell': \(3,\), 'n_cells': \(2,\)"):
        tl.minimal_detectable_effect(np.ones(3), np.ones(2), 10)


def test_recommend_batches_refuses_missing_labels_and_bad_seed():
    # a NaN label became a perturbation named "nan"; a string seed failed inside numpy
    with pytest.raises(ValueError, match=r"perturbations has 1 missing \(None/NaN\) label"):
        tl.recommend_batches(["A", np.nan, "B"], 2, 300)
    with pytest.raises(TypeError, match=r"random_state='x' must be a non-negative integer seed"):
        tl.recommend_batches(5, 2, 300, random_state="x")


# ----------------------------------------------------------------------------------------------- errors, pertpy
def test_error_decomposition_argument_types(bench):
    adata = bench[0].copy()
    with pytest.raises(TypeError, match=r"random_state='x' must be a non-negative integer seed"):
        tl.error_decomposition(adata, batch_key="batch", n_splits=2, n_bootstrap=0, random_state="x")
    with pytest.raises(TypeError, match=r"min_cells=1\.5 must be a whole number"):
        tl.error_decomposition(adata, batch_key="batch", n_splits=2, n_bootstrap=0, min_cells=1.5)
    with pytest.raises(TypeError, match=r"n_splits='2' must be a whole number"):
        tl.estimate_variance(adata, batch_key="batch", n_splits="2")


def test_pertpy_interop_refuses_a_bad_seed(bench):
    # a string seed failed in int() (its NaN-label check is in test_tools_refuse_nan_prediction_label)
    adata, _, preds = bench
    with pytest.raises(TypeError, match=r"random_state='x' must be a non-negative integer seed, e\.g\."):
        tl.combine_prediction(preds["TrainMean"], adata, random_state="x")


# ----------------------------------------------------------------------------------------------- plots
def test_plot_save_refuses_unknown_format_and_non_path(results, tmp_path):
    import matplotlib.pyplot as plt

    with pytest.raises(ValueError, match=r"save='.*lb\.xyz' has the suffix '\.xyz', which is not a figure format"):
        pl.leaderboard(results, metric="pearson", save=tmp_path / "lb.xyz", show=False)
    with pytest.raises(TypeError, match=r"save=5 must be a file path"):
        pl.leaderboard(results, metric="pearson", save=5, show=False)
    assert not list(tmp_path.iterdir())
    (tmp_path / "figs.png").mkdir()  # a folder named like a figure: PIL failed with IsADirectoryError
    with pytest.raises(ValueError, match=r"save='.*figs\.png' names the existing folder"):
        pl.leaderboard(results, metric="pearson", save=tmp_path / "figs.png", show=False)
    with pytest.raises(ValueError, match=r"names the existing folder"):
        pl.leaderboard(results, metric="pearson", save=tmp_path / "figs", show=False)
    assert not list((tmp_path / "figs.png").iterdir())
    ax = pl.leaderboard(results, metric="pearson", save=tmp_path / "new" / "lb", show=False)
    assert (tmp_path / "new" / "lb.png").is_file()
    plt.close("all")
    assert ax is not None


def test_plot_save_true_keeps_metric_name_in_one_file(results, tmp_path):
    import matplotlib.pyplot as plt
    import scanpy as sc

    renamed = results.assign(metric=results["metric"].replace({"pearson": "a/b"}))
    old = sc.settings.figdir
    sc.settings.figdir = tmp_path
    try:
        pl.leaderboard(renamed, metric="a/b", save=True, show=False)
    finally:
        sc.settings.figdir = old
        plt.close("all")
    assert [p.name for p in tmp_path.iterdir()] == ["scmech_leaderboard_a_b.png"]


def test_leaderboard_plot_all_nan_metric(results):
    # every value NaN was reported as "Metric 'pearson' is not in the results"
    nan = results.copy()
    nan.loc[nan["metric"] == "pearson", "value"] = np.nan
    with pytest.raises(ValueError, match=r"Every value of metric 'pearson' is NaN \(undefined for ControlMean"):
        pl.leaderboard(nan, metric="pearson", show=False)
    with pytest.raises(KeyError, match=r"Metric 'nope' is not in the results \(metrics: \['centroid_accuracy'"):
        pl.leaderboard(results, metric="nope", show=False)


def test_leaderboard_plot_ignores_other_metrics_coverage(results):
    import matplotlib.pyplot as plt

    partial = results[
        ~((results["model"] == "ControlMean") & (results["condition"] == "G0010") & (results["metric"] == "mse"))
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ax = pl.leaderboard(partial, metric="pearson", show=False)
    plt.close("all")
    assert ax is not None


@pytest.mark.parametrize("n_genes", [0, 2.5])
def test_predicted_vs_observed_refuses_bad_n_genes(bench, n_genes):
    # n_genes=2.5 failed inside numpy; n_genes=0 drew an empty plot
    adata, split, preds = bench
    with pytest.raises(ValueError, match=rf"n_genes={n_genes} must be an integer >= 1"):
        pl.predicted_vs_observed(preds["TrainMean"], adata, "G0010", split=split, n_genes=n_genes, show=False)


@pytest.mark.parametrize("form", ["counts", "log1p", "centred"])
def test_additive_never_predicts_negative_expression(form):
    """Two singles that each silence a gene summed to a level below zero (expression -1 of 1e4 counts): the gene is
    now predicted as not expressed, and the other genes keep their additive sum. The same holds for log1p input
    (``log(1 + x)`` is never below zero); centred input, whose levels can be negative, keeps the sum."""
    rng = np.random.default_rng(0)
    labels = np.repeat(["NT", "A", "B"], 40)
    x = rng.poisson(20, size=(120, 6)).astype(np.float32)
    x[labels != "NT", 0] = 0  # each single silences gene 0
    if form != "counts":
        x = np.log1p(1e4 * x / x.sum(1, keepdims=True))
        x = (x - x.mean(0)) if form == "centred" else x
    adata = ad.AnnData(
        x.astype(np.float32),
        obs=pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(120)]),
        var=pd.DataFrame(index=[f"g{i}" for i in range(6)]),
    )
    tl.Additive.setup_anndata(adata, perturbation_key="perturbation", control_label="NT", counts=form == "counts")
    model = tl.Additive(adata)
    model.train()
    pred = model.predict(["A+B"])
    singles = model.predict(["NT", "A", "B"])
    ctrl, a, b = np.asarray(singles.X, dtype=np.float64)
    if form == "centred":
        assert (a + b - ctrl)[0] < 0
        np.testing.assert_allclose(pred.X[0], a + b - ctrl, rtol=1e-5, atol=1e-6)
        return
    assert pred.X[0, 0] == 0.0
    if form == "counts":
        assert pred.layers["expression"][0, 0] == 0.0
    np.testing.assert_allclose(pred.X[0, 1:], (a + b - ctrl)[1:], rtol=1e-5)


def test_evaluate_warns_on_part_of_the_genes_and_refuses_none(bench):
    """A prediction of part of the genes was scored on that part with only a log line; none in common gave NaN."""
    adata, split, preds = bench
    part = {"ControlMean": preds["ControlMean"][:, 5:].copy(), "TrainMean": preds["TrainMean"]}
    with pytest.warns(UserWarning, match=r"Evaluating on the \d+ of \d+ genes .*'ControlMean': 5\}"):
        res = tl.evaluate(part, adata, split=split)
    full = tl.evaluate({"TrainMean": preds["TrainMean"]}, adata, split=split)
    assert set(res["model"]) == {"ControlMean", "TrainMean"}
    mse = res[(res["metric"] == "mse") & (res["model"] == "TrainMean")]["value"].to_numpy()
    assert not np.allclose(mse, full[full["metric"] == "mse"]["value"].to_numpy())  # scored on fewer genes
    disjoint = {"ControlMean": preds["ControlMean"][:, :5].copy(), "TrainMean": preds["TrainMean"][:, 5:].copy()}
    with pytest.raises(ValueError, match=r"No gene of adata\.var_names is in every prediction"):
        tl.evaluate(disjoint, adata, split=split)


def test_evaluate_keeps_the_users_torch_thread_count(bench):
    """scanpy's numba-parallel normalisation shares torch's OpenMP runtime and reset torch.set_num_threads(1) to the
    core count: models trained after tl.evaluate ran multi-threaded and stopped reproducing in the last digits."""
    import torch

    adata, split, preds = bench
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tl.evaluate(preds, adata, split=split)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_noise_ceiling_and_decomposition_of_the_control_alone_name_the_control(bench):
    adata = bench[0]
    # both said "no condition has at least 2 cells", though the controls have dozens
    with pytest.raises(ValueError, match=r"conditions=\['NT'\] holds only the control label 'NT'; the noise ceiling"):
        tl.noise_ceiling(adata, conditions=["NT"])
    with pytest.raises(ValueError, match=r"conditions=\['NT'\] holds only the control label 'NT'; the decomposition"):
        tl.error_decomposition(adata, batch_key="batch", conditions="NT", n_bootstrap=2, n_splits=2)


def test_untestable_controls_say_the_cell_limit_is_per_batch():
    import scmech

    # 15 controls at every time point, but fewer than 10 in each batch x time: the message said "in only 0 of the
    # time points", as if no time point had controls
    d = scmech.data.simulate_perturbseq(
        n_cells=600, n_genes=40, n_perturbations=6, n_combinations=0, seed=0, regime="dynamic"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = tl.check_assumptions(d, time_key="time", batch_key="batch")
    detail = table.loc[table["subject"].astype(str) == "controls", "verdict"].iloc[0]
    assert "controls (>= 10 cells per batch of obs['batch']) in only 0 of the time points" in detail
    assert "10 or more of its control cells share a batch" in detail


def test_decomposition_warns_of_predicted_conditions_without_cells(bench):
    adata, _, preds = bench
    pred = preds["TrainMean"]
    extra = pred[[0]].copy()
    extra.obs_names = ["G9999"]
    extra.obs["perturbation"] = ["G9999"]
    both = ad.concat([pred, extra])
    both.uns = pred.uns
    with pytest.warns(UserWarning, match=r"Predicted condition\(s\) \['G9999'\] have no assigned cells"):
        tl.error_decomposition(adata, batch_key="batch", predictions=both, n_bootstrap=2, n_splits=2)
