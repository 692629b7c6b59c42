"""Selection (fitness) per perturbation: abundance relative to the controls and the design."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scmech.data import simulate_perturbseq
from scmech.tl import selection

LN2 = np.log(2.0)


def _design(adata) -> pd.Series:
    design = adata.uns["truth"]["fitness"]["design_frequency"].copy()
    design["NT"] = adata.uns["simulation"]["control_fraction"]
    return design


@pytest.fixture(scope="module")
def selected():
    return simulate_perturbseq(
        12000, 30, n_perturbations=10, n_combinations=0, fitness_sd=1.0, control_fraction=0.2, seed=3
    )


def test_recovers_simulated_fitness(selected):
    adata = selected.copy()
    table = selection(adata, batch_key="batch", reference=_design(adata))
    pooled = table[table["batch"] == "all"].set_index("condition")
    truth = adata.uns["truth"]["fitness"]["fitness"] / LN2  # natural log -> log2
    est = pooled.loc[truth.index, "log2_ratio"]
    # the estimate is the true fitness up to counting noise: within a few standard errors, intervals cover it
    assert ((est - truth).abs() <= 3.5 * pooled.loc[truth.index, "se"]).all()
    assert np.corrcoef(est, truth)[0, 1] > 0.95
    covered = (pooled.loc[truth.index, "ci_low"] <= truth) & (truth <= pooled.loc[truth.index, "ci_high"])
    assert covered.mean() >= 0.8
    # strongly selected perturbations are called in the right direction
    strong = truth.abs() > 1.0
    assert strong.any()
    expected_call = np.where(truth[strong] < 0, "depleted", "enriched")
    assert (pooled.loc[truth.index[strong], "call"].to_numpy() == expected_call).all()
    # per batch rows, three batches, each with its own controls
    per_batch = table[table["batch"] != "all"]
    assert set(per_batch["batch"]) == {"b0", "b1", "b2"}
    assert (per_batch.groupby("condition")["n_cells"].sum() == pooled["n_cells"]).all()
    # pooled intervals are narrower than per-batch ones
    assert (pooled["se"].mean()) < per_batch["se"].mean()
    stored = adata.uns["scmech"]["selection"]
    pd.testing.assert_frame_equal(stored["table"], table)
    assert stored["params"]["reference"] == "given"


def test_no_selection_is_neutral():
    adata = simulate_perturbseq(6000, 30, n_perturbations=10, n_combinations=0, seed=3)
    table = selection(adata, batch_key="batch", reference=_design(adata))
    pooled = table[table["batch"] == "all"]
    assert (adata.uns["truth"]["fitness"]["fitness"] == 0).all()
    assert (pooled["log2_ratio"].abs() <= 3.5 * pooled["se"]).all()
    assert (pooled["call"] == "neutral").mean() >= 0.8


def test_median_reference_ranks_fitness(selected):
    table = selection(selected.copy())
    assert set(table["batch"]) == {"all"}
    est = table.set_index("condition")["log2_ratio"]
    truth = selected.uns["truth"]["fitness"]["fitness"].loc[est.index] / LN2
    # without the design only differences between perturbations are identified: the median one is neutral
    assert abs(est.median()) < 1e-9
    assert np.corrcoef(est, truth)[0, 1] > 0.95


def _time_course(growth: dict[str, float], n0: int = 2000, seed: int = 0) -> ad.AnnData:
    """Cells at day 0 (equal numbers) and day 7 (numbers scaled by exp(growth * 7))."""
    rng = np.random.default_rng(seed)
    labels, times = [], []
    for lab, g in growth.items():
        for t in (0.0, 7.0):
            n = rng.poisson(n0 * np.exp(g * t))
            labels += [lab] * n
            times += [t] * n
    obs = pd.DataFrame({"perturbation": labels, "time": times})
    obs.index = obs.index.astype(str)
    return ad.AnnData(obs=obs)


def test_reference_time_point():
    growth = {"NT": 0.0, "A": -0.1, "B": 0.05, "C": 0.0}
    adata = _time_course(growth)
    table = selection(adata, time_key="time", reference_time=0.0)
    assert set(table["time"]) == {"7.0"}
    table = table.set_index("condition")
    for lab in ("A", "B", "C"):
        assert abs(table.loc[lab, "log2_ratio"] - growth[lab] * 7 / LN2) <= 3.5 * table.loc[lab, "se"]
    calls = table["call"]
    assert calls["A"] == "depleted"
    assert calls["B"] == "enriched"
    assert calls["C"] == "neutral"


def test_reference_counts_widen_intervals(selected):
    design = _design(selected)
    exact = selection(selected.copy(), reference=design)
    counted = selection(selected.copy(), reference=(design * 2000).round())
    np.testing.assert_allclose(exact["log2_ratio"], counted["log2_ratio"], atol=0.01)
    assert (counted["se"] > exact["se"]).all()


def test_small_whole_number_reference_is_ambiguous():
    """Design ratios (2 parts control to 1 part each guide) were silently read as 4 counted reads."""
    obs = pd.DataFrame({"perturbation": ["NT"] * 400 + ["A"] * 200 + ["B"] * 100})
    obs.index = obs.index.astype(str)
    ratios = {"NT": 2, "A": 1, "B": 1}
    with pytest.warns(UserWarning, match=r"whole numbers \(smallest 1, sum 4\).*reference_counts=False"):
        guessed = selection(ad.AnnData(obs=obs), reference=ratios).set_index("condition")
    exact = selection(ad.AnnData(obs=obs), reference=ratios, reference_counts=False).set_index("condition")
    counted = selection(ad.AnnData(obs=obs), reference=ratios, reference_counts=True).set_index("condition")
    pd.testing.assert_frame_equal(guessed, counted)
    np.testing.assert_allclose(exact["log2_ratio"], counted["log2_ratio"])
    # exact ratios: only the cells are counted, se^2 = 1/(n_A + 1/2) + 1/(n_NT + 1/2) in natural-log units
    np.testing.assert_allclose(exact.loc["A", "se"], np.sqrt(1 / 200.5 + 1 / 400.5) / LN2, rtol=1e-6)
    assert exact.loc["B", "call"] == "depleted"
    assert counted.loc["B", "call"] == "neutral"
    with pytest.raises(ValueError, match=r"reference_counts='no' must be True, False or None"):
        selection(ad.AnnData(obs=obs), reference=ratios, reference_counts="no")
    with pytest.raises(ValueError, match=r"goes with reference="):
        selection(ad.AnnData(obs=obs), reference_counts=True)


def test_min_cells_and_rare_conditions():
    obs = pd.DataFrame({"perturbation": ["NT"] * 50 + ["A"] * 30 + ["B"] * 2})
    obs.index = obs.index.astype(str)
    table = selection(
        ad.AnnData(obs=obs), reference={"NT": 1, "A": 1, "B": 1}, reference_counts=False, min_cells=5
    ).set_index("condition")
    assert table.loc["B", "call"] == "too few cells"
    assert np.isnan(table.loc["B", "log2_ratio"])
    np.testing.assert_allclose(table.loc["A", "log2_ratio"], np.log2(30.5 / 50.5))


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"perturbation_key": "guide_call"}, KeyError, "perturbation_key='guide_call' is not a column"),
        ({"batch_key": "lane"}, KeyError, "batch_key='lane' is not a column"),
        ({"control_label": "ctrl"}, ValueError, "control_label='ctrl' is not a value"),
        ({"reference": {"NT": 1.0}}, KeyError, "reference lacks the conditions"),
        ({"reference_time": 0.0}, ValueError, "go together"),
        ({"confidence": 1.5}, ValueError, "confidence=1.5 is out of range"),
    ],
)
def test_bad_arguments(selected, kwargs, err, match):
    with pytest.raises(err, match=match):
        selection(selected, **kwargs)


def _mk(pert, batch=None) -> ad.AnnData:
    adata = ad.AnnData(np.ones((len(pert), 2)))
    adata.obs["perturbation"] = pert
    adata.obs["batch"] = batch if batch is not None else ["b0"] * len(pert)
    return adata


def test_unassigned_cells_are_left_out():
    pert = ["NT"] * 50 + ["A"] * 50 + ["B"] * 20 + ["C"] * 80 + ["unassigned"] * 500
    table = selection(_mk(pert))
    assert set(table["condition"]) == {"A", "B", "C"}
    assert table.set_index("condition").loc["A", "log2_ratio"] == pytest.approx(0.0)  # A is the median
    assert selection(_mk(pert), unassigned_label=None)["condition"].isin(["unassigned"]).any()
    adata = _mk(pert)
    selection(adata)
    assert adata.uns["scmech"]["selection"]["params"]["unassigned_label"] == "unassigned"


def test_nan_labels_are_refused():
    pert = ["NT"] * 50 + ["A"] * 50 + ["B"] * 50 + ["unassigned"] * 500 + [np.nan] * 20
    with pytest.raises(ValueError, match=r"obs\['perturbation'\] has 20 missing \(NaN\) labels.*fillna"):
        selection(_mk(pert))


def test_batch_without_controls_is_not_called():
    pert = ["NT"] * 40 + ["A"] * 40 + ["B"] * 40 + ["A"] * 30 + ["B"] * 30
    batch = ["b0"] * 120 + ["b1"] * 60
    table = selection(_mk(pert, batch), batch_key="batch", reference={"NT": 1, "A": 1, "B": 1}, reference_counts=False)
    b1 = table[table["batch"] == "b1"]
    assert len(b1) == 2
    assert b1["log2_ratio"].isna().all()
    assert (b1["call"] == "too few cells").all()
    pooled = table[table["batch"] == "all"].set_index("condition")
    b0 = table[table["batch"] == "b0"].set_index("condition")
    # the pooled estimate is batch b0's alone
    np.testing.assert_allclose(pooled["log2_ratio"], b0.loc[pooled.index, "log2_ratio"])
    assert (pooled["call"] == "neutral").all()


def test_batch_named_like_pooled_rows_is_refused():
    pert = ["NT", "A", "B"] * 20
    with pytest.raises(ValueError, match=r"obs\['batch'\] has a batch named 'all'.*rename it"):
        selection(_mk(pert, ["all", "b1"] * 30), batch_key="batch")


def test_view_is_refused():
    adata = _mk(["NT", "A", "B"] * 20)
    with pytest.raises(ValueError, match=r"adata is a view.*Pass adata.copy\(\)"):
        selection(adata[:30])


def test_only_controls_is_refused():
    with pytest.raises(ValueError, match=r"no perturbed cells.*control_label='NT'"):
        selection(_mk(["NT"] * 30 + ["unassigned"] * 5))


@pytest.mark.parametrize(
    ("confidence", "err"), [("0.9", TypeError), (True, TypeError), (1.0, ValueError), (0, ValueError)]
)
def test_confidence_is_validated(confidence, err):
    with pytest.raises(err, match=rf"confidence={confidence!r}.*\(0, 1\)"):
        selection(_mk(["NT", "A", "B"] * 20), confidence=confidence)


def test_integer_labels_and_control_label():
    adata = _mk([0, 1, 2] * 20)
    table = selection(adata, control_label=0)
    assert set(table["condition"]) == {"1", "2"}
    assert adata.uns["scmech"]["selection"]["params"]["control_label"] == "0"


def _counted(spec: dict[tuple[str, str, str], int]) -> ad.AnnData:
    """Cells with the given counts per (perturbation, batch, time)."""
    labs, bats, times = [], [], []
    for (p, b, t), n in spec.items():
        labs += [p] * n
        bats += [b] * n
        times += [t] * n
    obs = pd.DataFrame({"perturbation": labs, "batch": bats, "time": times}, index=[str(i) for i in range(len(labs))])
    return ad.AnnData(obs=obs)


def test_pooled_se_counts_a_shared_reference_once():
    # two identical batches against one counted reference: the reference noise is shared, not averaged away
    spec = {(p, b, ""): 100 for p in ("NT", "P1") for b in ("b1", "b2")}
    table = selection(_counted(spec), batch_key="batch", reference={"NT": 10, "P1": 10})
    pooled = table.query("batch == 'all'").iloc[0]
    batch_only = 2.0 / 100.5 / LN2**2  # per batch; two batches pool to half of it
    shared = 2.0 / 10.5 / LN2**2
    assert pooled["log2_ratio"] == pytest.approx(0.0)
    assert pooled["se"] == pytest.approx(np.sqrt(batch_only / 2 + shared), rel=1e-12)
    per_batch = table.query("batch == 'b1'").iloc[0]
    assert per_batch["se"] == pytest.approx(np.sqrt(batch_only + shared), rel=1e-12)


def test_batch_missing_at_reference_time_gets_nan():
    spec = {("NT", "b1", "0"): 100, ("P1", "b1", "0"): 50, ("NT", "b1", "1"): 100, ("P1", "b1", "1"): 100}
    spec |= {("NT", "b2", "1"): 100, ("P1", "b2", "1"): 100}
    table = selection(_counted(spec), batch_key="batch", time_key="time", reference_time="0").set_index("batch")
    assert table.loc["b2", "call"] == "too few cells"
    assert np.isnan(table.loc["b2", "log2_ratio"])
    # doubling relative to the controls since t0, from b1 alone
    expected = np.log2(100.5 / 100.5) - np.log2(50.5 / 100.5)
    assert table.loc["all", "log2_ratio"] == pytest.approx(expected, rel=1e-12)
    assert table.loc["all", "se"] == pytest.approx(np.sqrt(2 / 100.5 + 1 / 50.5 + 1 / 100.5) / LN2, rel=1e-12)


@pytest.mark.parametrize("key_added", [None, "", 3])
def test_key_added_must_be_a_non_empty_string(key_added):
    # uns["scmech"][None] could not be written to h5ad; an empty key is no key
    adata = _mk(["NT", "A", "B"] * 20)
    with pytest.raises(ValueError, match=rf"key_added must be a non-empty string .*got {key_added!r}"):
        selection(adata, key_added=key_added)
    assert "scmech" not in adata.uns
    selection(adata, key_added="fitness")
    assert list(adata.uns["scmech"]) == ["fitness"]


def test_labels_are_read_as_their_targets():
    # "B+A" is the condition "A+B", and " C" is "C": one condition each, reported under the canonical label
    pert = ["NT"] * 40 + ["A+B"] * 10 + ["B+A"] * 10 + ["C"] * 15 + [" C"] * 5
    table = selection(_mk(pert)).set_index("condition")
    assert set(table.index) == {"A+B", "C"}
    assert table.loc["A+B", "n_cells"] == 20
    assert table.loc["C", "n_cells"] == 20
    given = selection(_mk(pert), reference={"NT": 0.5, "B+A": 0.25, "C": 0.25}).set_index("condition")
    assert set(given.index) == {"A+B", "C"}
    with pytest.raises(ValueError, match=r"reference has two entries for the condition 'A\+B': 'A\+B' and 'B\+A'"):
        selection(_mk(pert), reference={"NT": 0.5, "A+B": 0.1, "B+A": 0.15, "C": 0.25})
    with pytest.raises(ValueError, match="reference must map conditions to numbers"):
        selection(_mk(pert), reference={"NT": 0.5, "A+B": "x", "C": 0.25})


def test_numpy_reference_time_matches_by_value():
    growth = {"NT": 0.0, "A": -0.1, "B": 0.05, "C": 0.0}
    adata = _time_course(growth)
    expected = selection(adata.copy(), time_key="time", reference_time=0.0)
    for ref in (np.int64(0), np.float32(0.0)):
        pd.testing.assert_frame_equal(selection(adata.copy(), time_key="time", reference_time=ref), expected)


def test_a_scmech_entry_that_is_not_a_dictionary_is_named():
    adata = _mk(["NT"] * 20 + ["A"] * 20)
    adata.uns["scmech"] = "x"
    with pytest.raises(ValueError, match=r"adata.uns\['scmech'\] holds a str, not a dictionary"):
        selection(adata)
