from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scmech.data._simulate import simulate_perturbseq
from scmech.tl._errors import COMPONENTS, error_decomposition, estimate_variance

SIM = {"n_genes": 100, "n_perturbations": 10, "n_combinations": 0, "control_fraction": 0.3}


def _sim(n_cells=6000, n_batches=4, batch_sd=0.25, seed=0, **kwargs):
    return simulate_perturbseq(n_cells=n_cells, n_batches=n_batches, batch_sd=batch_sd, seed=seed, **{**SIM, **kwargs})


@pytest.fixture(scope="module")
def sim():
    return _sim()


def _wide(table: pd.DataFrame) -> pd.DataFrame:
    return table.pivot(index="condition", columns="component", values="value")


def _truth_prediction(adata, offset: float = 0.0) -> ad.AnnData:
    conds = list(adata.uns["truth"]["conditions"])
    x = adata.uns["truth"]["mean_log"].loc[[f"{c}|m0" for c in conds]].to_numpy() + offset
    x[0] -= offset  # the control row stays exact: a wrong effect, not a wrong control level
    return ad.AnnData(
        X=x.astype(np.float32),
        obs=pd.DataFrame({"perturbation": conds}, index=conds),
        var=pd.DataFrame(index=adata.var_names.copy()),
    )


def _observed_effects(adata) -> pd.DataFrame:
    from scmech.data._pseudobulk import pseudobulk

    pb = pseudobulk(adata, "perturbation")
    return pb.drop(index="NT") - pb.loc["NT"]


def _true_effects(adata) -> pd.DataFrame:
    ml = adata.uns["truth"]["mean_log"]
    ml = ml[ml.index.str.endswith("|m0")].rename(index=lambda k: k.split("|")[0])
    return ml.drop(index="NT") - ml.loc["NT"]


# ------------------------------------------------------------------------------------------------ additivity


@pytest.mark.parametrize("target", ["delta", "expression"])
def test_components_follow_their_closed_forms(sim, target):
    # with the variance terms given, every component is its formula on the design's cell counts
    cell, batch = 0.5, 0.02
    table = error_decomposition(
        sim, batch_key="batch", target=target, n_bootstrap=0, variance={"cell": cell, "batch": batch}
    )
    wide = _wide(table)
    assert set(wide.columns) == {"noise_floor", "confounding", "batch", "total"}
    obs = sim.obs.astype({"perturbation": str, "batch": str})
    counts = pd.crosstab(obs["perturbation"], obs["batch"])
    n_ctrl, u = counts.loc["NT"].sum(), counts.loc["NT"] / counts.loc["NT"].sum()
    for cond, row in wide.iterrows():
        n_p, w = counts.loc[cond].sum(), counts.loc[cond] / counts.loc[cond].sum()
        if target == "delta":
            assert row["noise_floor"] == pytest.approx(cell / n_p + cell / n_ctrl, rel=1e-9)
            assert row["confounding"] == pytest.approx(batch * ((w - u) ** 2).sum(), rel=1e-9, abs=1e-15)
            assert row["batch"] == 0
        else:
            assert row["noise_floor"] == pytest.approx(cell / n_p, rel=1e-9)
            assert row["batch"] == pytest.approx(batch * (w**2).sum(), rel=1e-9)
            assert row["confounding"] == 0
        # without predictions, the total is the error an oracle meets: the sum of the terms
        assert row["total"] == pytest.approx(row["noise_floor"] + row["confounding"] + row["batch"], rel=1e-12)
    per_gene = sim.uns["scmech"]["error_decomposition"]["per_gene"]
    np.testing.assert_allclose(per_gene.drop(columns="total").sum(axis=1), per_gene["total"], rtol=1e-12)


def test_predictions_with_nan_are_refused(sim):
    pred = _truth_prediction(sim)
    cond = str(pred.obs_names[2])
    pred.X[2, :3] = np.nan
    with pytest.raises(ValueError, match=rf"NaN or infinite values for \['{cond}'\]"):
        error_decomposition(sim, batch_key="batch", predictions=pred, n_bootstrap=0)


@pytest.mark.parametrize("target", ["delta", "expression"])
def test_components_add_up_with_predictions_and_model_error_is_the_excess(sim, target):
    exact = error_decomposition(
        sim, batch_key="batch", predictions=_truth_prediction(sim), target=target, n_bootstrap=0
    )
    off = error_decomposition(
        sim, batch_key="batch", predictions=_truth_prediction(sim, 0.3), target=target, n_bootstrap=0
    )
    for table in (exact, off):
        wide = _wide(table)
        assert set(wide.columns) == {*COMPONENTS, "total"}
        np.testing.assert_allclose(wide[list(COMPONENTS)].sum(axis=1), wide["total"], rtol=1e-12, atol=1e-15)
    e, o = _wide(exact).mean(), _wide(off).mean()
    if target == "delta":
        # the noise-free truth leaves (almost) nothing for the model; an effect off by 0.3 leaves 0.09
        assert abs(e["model"]) < 0.2 * e["noise_floor"]
        assert o["model"] == pytest.approx(0.09, rel=0.1)
    else:
        # a batch-free prediction meets the batch term; what is left for the model is small against it
        assert e["batch"] > 5 * e["noise_floor"]
        assert abs(e["model"]) < 0.5 * e["batch"]
        assert o["model"] == pytest.approx(0.09, rel=0.3)


# ------------------------------------------------------------------------------------------------ recovery


@pytest.mark.parametrize(
    ("n_batches", "batch_sd", "seed"), [(4, 0.25, 0), (5, 0.2, 1), (6, 0.3, 2), (4, 0.3, 3), (5, 0.25, 4)]
)
def test_recovers_simulated_variance_components(n_batches, batch_sd, seed):
    adata = _sim(n_cells=1500 * n_batches, n_batches=n_batches, batch_sd=batch_sd, seed=seed)
    truth = adata.uns["truth"]
    threshold = adata.uns["simulation"]["var_mean_threshold"]
    expressed = (truth["var_components"]["mean"] >= threshold).to_numpy()
    var = estimate_variance(adata, batch_key="batch", dispersion=truth["theta"])
    # like with like: the truth's scalars are means over genes with mean >= threshold (counts per 1e4)
    assert var.loc[expressed, "batch"].mean() / truth["var_batch"] == pytest.approx(1.0, abs=0.15)
    cell_truth = truth["var_bio"] + truth["var_meas"]
    assert var.loc[expressed, "cell"].mean() / cell_truth == pytest.approx(1.0, abs=0.15)
    assert var.loc[expressed, "meas"].mean() / truth["var_meas"] == pytest.approx(1.0, abs=0.1)
    # our own gene filter (control mean >= 1 per 1e4) picks nearly the same genes
    assert np.mean((var["mean"].to_numpy() >= 1.0) == expressed) > 0.9
    # per gene, the batch variance follows the truth
    r = np.corrcoef(var.loc[expressed, "batch"], truth["var_components"].loc[expressed, "batch"])[0, 1]
    assert r > 0.8


def test_poisson_measurement_is_a_lower_bound(sim):
    theta = sim.uns["truth"]["theta"]
    nb = estimate_variance(sim, batch_key="batch", dispersion=theta)
    poisson = estimate_variance(sim, batch_key="batch")
    assert (poisson["meas"] <= nb["meas"] + 1e-12).all()
    assert (poisson["bio"] >= nb["bio"] - 1e-12).all()
    np.testing.assert_allclose(poisson["cell"], nb["cell"])  # the split estimate does not use the model


# ------------------------------------------------------------------------------------------------ designs


def test_spread_design_has_no_confounding(sim):
    table = error_decomposition(sim, batch_key="batch", n_bootstrap=0)
    wide = _wide(table)
    assert not table["confounded"].any()
    assert (wide["confounding"] < 0.01 * wide["noise_floor"]).all()
    # the noise floor predicts the observed error of the effects against the truth (the truth is conditional on
    # the realised cells, so it leaves out their biological sampling noise: only the measurement part remains)
    var = sim.uns["scmech"]["error_decomposition"]["variance"]
    observed = ((_observed_effects(sim) - _true_effects(sim)) ** 2).mean(axis=1)
    expected_meas = wide["noise_floor"] * var["meas"].mean() / var["cell"].mean()
    assert observed.mean() / expected_meas.mean() == pytest.approx(1.0, abs=0.3)


def test_perturbations_in_batches_without_controls_are_flagged_and_confounded():
    adata = _sim(n_cells=7500, n_batches=5, batch_sd=0.3, seed=5)
    perts = [p for p in adata.obs["perturbation"].cat.categories if p != "NT"]
    only_b3, only_b4 = perts[:2], perts[2:4]
    obs = adata.obs
    drop = (obs["perturbation"] == "NT") & obs["batch"].isin(["b3", "b4"])
    drop |= obs["perturbation"].isin(only_b3) & (obs["batch"] != "b3")
    drop |= obs["perturbation"].isin(only_b4) & (obs["batch"] != "b4")
    sub = adata[~drop.to_numpy()].copy()
    with pytest.warns(UserWarning, match=r"Batches \['b3', 'b4'\] of obs\['batch'\] hold no control cells"):
        table = error_decomposition(sub, batch_key="batch", n_bootstrap=0)
    flagged = set(table.loc[table["confounded"], "condition"])
    assert flagged == set(only_b3 + only_b4)
    wide = _wide(table)
    conf, spread = wide.loc[sorted(flagged)], wide.drop(index=sorted(flagged))
    assert (conf["confounding"] > 3 * conf["noise_floor"]).all()
    # the spread ones sit partly in the control-free batches too: sum (w - u)^2 = 2/15, ten times less
    assert conf["confounding"].min() > 5 * spread["confounding"].max()
    # u = (1/3, 1/3, 1/3, 0, 0), w = e_3: sum (w - u)^2 = 4/3 times sigma2_batch from the 3 control batches
    sigma2_batch = sub.uns["scmech"]["error_decomposition"]["variance"]["batch"].mean()
    np.testing.assert_allclose(conf["confounding"], 4 / 3 * sigma2_batch, rtol=1e-9)
    # and the terms predict the observed error of those effects against the (batch-free) truth
    observed = ((_observed_effects(sub) - _true_effects(sub)) ** 2).mean(axis=1)
    assert observed[sorted(flagged)].mean() / conf["total"].mean() == pytest.approx(1.0, abs=0.5)
    assert observed[sorted(flagged)].mean() > 5 * observed[spread.index].mean()
    assert sub.uns["scmech"]["error_decomposition"]["params"]["batches_without_controls"] == ["b3", "b4"]


def test_simulated_confounded_design_needs_an_external_batch_variance():
    adata = _sim(n_cells=4000, n_batches=4, batch_sd=0.3, seed=1, design="confounded")
    b = adata.obs.groupby("perturbation", observed=True)["batch"].agg(lambda s: set(s.astype(str)))
    in_b0 = {p for p, batches in b.items() if "b0" in batches and p != "NT"}
    with (
        pytest.warns(UserWarning, match="sigma2_batch is not identifiable"),
        pytest.warns(UserWarning, match=r"Batches \['b1', 'b2', 'b3'\] of obs\['batch'\] hold no control cells"),
    ):
        table = error_decomposition(adata, batch_key="batch", n_bootstrap=0)
    flagged = set(table.loc[table["confounded"], "condition"])
    assert flagged == set(b.index) - in_b0 - {"NT"}
    wide = _wide(table)
    assert wide.loc[sorted(flagged), "confounding"].isna().all()
    assert (wide.loc[sorted(in_b0), "confounding"] == 0).all()  # same single batch as the controls
    assert wide["noise_floor"].notna().all()
    truth = adata.uns["truth"]["var_batch"]
    with pytest.warns(UserWarning, match="hold no control cells"):
        table = error_decomposition(adata, batch_key="batch", n_bootstrap=0, variance={"batch": truth})
    wide = _wide(table)
    np.testing.assert_allclose(wide.loc[sorted(flagged), "confounding"], 2 * truth)  # 2 sigma2_batch


def test_noise_floor_shrinks_as_one_over_n(sim):
    rng = np.random.default_rng(0)
    keep = rng.random(sim.n_obs) < 0.25
    full = _wide(error_decomposition(sim, batch_key="batch", n_bootstrap=0, key_added="full"))
    quarter = _wide(error_decomposition(sim[keep].copy(), batch_key="batch", n_bootstrap=0))
    ratio = quarter["noise_floor"] / full["noise_floor"]
    assert ratio.mean() == pytest.approx(4.0, rel=0.15)


# ------------------------------------------------------------------------------------------------ bootstrap, io


def test_bootstrap_intervals_are_as_wide_as_the_spread_between_replicate_screens():
    # four disjoint screens of one design (the cells of every (condition, batch) group dealt out in turn): the
    # spread of their noise floors is what the bootstrap interval of each must describe
    adata = _sim(n_cells=8000, seed=0)
    rng = np.random.default_rng(0)
    group = (adata.obs["perturbation"].astype(str) + "|" + adata.obs["batch"].astype(str)).to_numpy()
    quarter = np.zeros(adata.n_obs, dtype=int)
    for g in np.unique(group):
        idx = rng.permutation(np.flatnonzero(group == g))
        quarter[idx] = np.arange(idx.size) % 4
    values, sds = [], []
    for k in range(4):
        table = error_decomposition(adata[quarter == k].copy(), batch_key="batch", n_bootstrap=40, random_state=k)
        noise = table[table["component"] == "noise_floor"].set_index("condition")
        assert np.isfinite(noise[["ci_low", "ci_high"]]).all().all()
        values.append(noise["value"])
        sds.append((noise["ci_high"] - noise["ci_low"]) / (2 * 1.96))
    between = pd.concat(values, axis=1).var(axis=1, ddof=1).mean()  # 10 conditions x 3 df
    within = (pd.concat(sds, axis=1) ** 2).mean(axis=1).mean()
    assert 0.5 < between / within < 2.5


def test_bootstrap_is_seeded(sim):
    table = error_decomposition(sim, batch_key="batch", n_bootstrap=10, random_state=1)
    again = error_decomposition(sim, batch_key="batch", n_bootstrap=10, random_state=1)
    pd.testing.assert_frame_equal(table, again)
    summary = sim.uns["scmech"]["error_decomposition"]["variance_summary"]
    assert (summary.loc[["batch", "cell"], "ci_high"] > summary.loc[["batch", "cell"], "ci_low"]).all()


def test_adata_untouched_except_the_uns_key(sim):
    adata = sim.copy()
    adata.uns.pop("scmech", None)  # earlier tests wrote into the shared fixture
    before_x = adata.X.copy()
    before_obs = adata.obs.copy()
    before_uns = set(adata.uns)
    table = error_decomposition(adata, batch_key="batch", n_bootstrap=0, key_added="mine")
    assert isinstance(table, pd.DataFrame)
    assert (adata.X != before_x).nnz == 0
    pd.testing.assert_frame_equal(adata.obs, before_obs)
    assert set(adata.uns) == before_uns | {"scmech"}
    assert list(adata.uns["scmech"]) == ["mine"]
    stored = adata.uns["scmech"]["mine"]
    assert set(stored) == {"table", "per_gene", "variance", "variance_summary", "params"}
    assert list(stored["variance"].columns) == ["batch", "cell", "bio", "meas", "mean"]
    pd.testing.assert_frame_equal(stored["table"], table)
    assert set(table.columns) == {
        "condition",
        "component",
        "value",
        "ci_low",
        "ci_high",
        "n_cells",
        "n_batches",
        "confounded",
    }
    # copy=True returns the annotated copy and leaves the input alone
    fresh = sim.copy()
    fresh.uns.pop("scmech", None)
    out = error_decomposition(fresh, batch_key="batch", n_bootstrap=0, copy=True)
    assert isinstance(out, ad.AnnData)
    assert "scmech" not in fresh.uns
    assert "error_decomposition" in out.uns["scmech"]


def test_results_write_to_h5ad(sim, tmp_path):
    adata = sim[:1500].copy()
    del adata.uns["truth"], adata.uns["simulation"]
    error_decomposition(adata, batch_key="batch", n_bootstrap=0)
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    stored = back.uns["scmech"]["error_decomposition"]
    assert set(stored["table"]["component"]) == {"noise_floor", "confounding", "batch", "total"}


def test_papalexi_replicates_as_batches():
    import scmech

    adata = scmech.datasets.papalexi2021()
    table = error_decomposition(adata, batch_key="bio_rep", n_bootstrap=0)
    params = adata.uns["scmech"]["error_decomposition"]["params"]
    assert params["controls_per_batch"] == [648, 675, 600]
    assert table["condition"].nunique() == 25
    assert not table["confounded"].any()
    summary = adata.uns["scmech"]["error_decomposition"]["variance_summary"]
    assert 0 < summary.loc["batch", "value"] < summary.loc["cell", "value"]
    wide = _wide(table)
    # fewer cells, larger noise floor: SPI1 (33 cells) above ATF2 (891 cells)
    assert wide.loc["SPI1", "noise_floor"] > 5 * wide.loc["ATF2", "noise_floor"]


# ------------------------------------------------------------------------------------------------ messages


def test_one_batch_gives_nan_batch_variance_and_keeps_the_noise_floor(sim):
    with pytest.warns(UserWarning, match="sigma2_batch is not identifiable: there is only one batch"):
        table = error_decomposition(sim, batch_key=None, n_bootstrap=0)
    wide = _wide(table)
    assert (wide["confounding"] == 0).all()  # perturbations and controls share the one batch
    assert wide["noise_floor"].notna().all()
    assert sim.uns["scmech"]["error_decomposition"]["variance"]["batch"].isna().all()
    with pytest.warns(UserWarning, match="the batch term is NaN"):
        table = error_decomposition(sim, batch_key=None, n_bootstrap=0, target="expression")
    assert _wide(table)["batch"].isna().all()


def test_errors_and_messages(sim):
    with pytest.raises(KeyError, match="batch_key 'lane' is not a column of adata.obs"):
        error_decomposition(sim, batch_key="lane")
    with pytest.raises(ValueError, match="target='both' is not supported"):
        error_decomposition(sim, batch_key="batch", target="both")
    with pytest.raises(ValueError, match="n_bootstrap must be an integer >= 0"):
        error_decomposition(sim, batch_key="batch", n_bootstrap=-1)
    with pytest.raises(ValueError, match="min_cells must be >= 2"):
        error_decomposition(sim, batch_key="batch", min_cells=1)
    with pytest.raises(KeyError, match="Condition 'G9999' has no assigned cells"):
        error_decomposition(sim, batch_key="batch", conditions=["G9999"])
    logged = sim.copy()
    logged.X = logged.X.copy()
    logged.X.data = np.log1p(logged.X.data)
    with pytest.raises(ValueError, match="does not hold counts"):
        error_decomposition(logged, batch_key="batch", n_bootstrap=0)
    # log-normalised data are accepted with counts=False, without the bio/meas split
    error_decomposition(logged, batch_key="batch", n_bootstrap=0, counts=False)
    var = logged.uns["scmech"]["error_decomposition"]["variance"]
    assert var["meas"].isna().all()
    assert var["cell"].notna().all()
    bad = _truth_prediction(sim)
    bad.obs = bad.obs.rename(columns={"perturbation": "condition"})
    with pytest.raises(KeyError, match=r"no obs\['perturbation'\] column"):
        error_decomposition(sim, batch_key="batch", predictions=bad)
    with pytest.raises(KeyError, match="unknown entries"):
        error_decomposition(sim, batch_key="batch", variance={"btach": 0.1})


def test_conditions_below_min_cells_are_left_out(sim):
    perts = [p for p in sim.obs["perturbation"].cat.categories if p != "NT"]
    rare = perts[0]
    idx = np.flatnonzero((sim.obs["perturbation"] == rare).to_numpy())
    keep = np.ones(sim.n_obs, dtype=bool)
    keep[idx[5:]] = False
    sub = sim[keep].copy()
    with pytest.warns(UserWarning, match=rf"\['{rare}'\] have fewer than min_cells=10 cells"):
        table = error_decomposition(sub, batch_key="batch", n_bootstrap=0, min_cells=10)
    assert rare not in set(table["condition"])
    assert sub.uns["scmech"]["error_decomposition"]["params"]["dropped_conditions"] == [rare]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = error_decomposition(sub, batch_key="batch", n_bootstrap=0, min_cells=2)
    assert rare in set(table["condition"])


def test_given_variance_terms_replace_the_estimates(sim):
    table = error_decomposition(sim, batch_key="batch", n_bootstrap=5, variance={"cell": 0.5, "batch": 0.1})
    wide = _wide(table)
    n = table.drop_duplicates("condition").set_index("condition")["n_cells"]
    n_ctrl = int((sim.obs["perturbation"] == "NT").sum())
    np.testing.assert_allclose(wide["noise_floor"], 0.5 * (1 / n.loc[wide.index] + 1 / n_ctrl))
    stored = sim.uns["scmech"]["error_decomposition"]
    assert (stored["variance"]["batch"] == 0.1).all()
    assert stored["params"]["variance_given"] == ["batch", "cell"]
    # fixed terms do not vary in the bootstrap
    noise = table[table["component"] == "noise_floor"]
    np.testing.assert_allclose(noise["ci_low"], noise["value"])


def test_dispersion_is_checked_against_the_genes():
    adata = _sim(n_cells=800, n_batches=2, n_genes=30, n_perturbations=4)
    genes = adata.var_names
    with pytest.raises(ValueError, match=r"dispersion has shape \(3,\) \(length 3\), but adata has 30 genes"):
        error_decomposition(adata, batch_key="batch", dispersion=np.ones(3))
    with pytest.raises(ValueError, match="but adata has 30 genes"):
        estimate_variance(adata, batch_key="batch", dispersion=np.ones((2, 30)))
    with pytest.raises(KeyError, match=r"dispersion \(a Series\) lacks 25 of the 30 genes of adata"):
        error_decomposition(adata, batch_key="batch", dispersion=pd.Series(2.0, index=genes[:5]), n_bootstrap=0)
    # a Series is aligned by gene name, an array taken in var_names order
    theta = np.linspace(0.5, 5.0, len(genes))
    by_array = estimate_variance(adata, batch_key="batch", dispersion=theta)
    by_name = estimate_variance(adata, batch_key="batch", dispersion=pd.Series(theta, index=genes)[::-1])
    pd.testing.assert_frame_equal(by_array, by_name)
    # with predictions on fewer genes, an array over adata's genes is subset to them
    pred = _truth_prediction(adata)[:, genes[:20]].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        error_decomposition(adata, batch_key="batch", predictions=pred, dispersion=theta, n_bootstrap=0)
        a_arr = adata.uns["scmech"]["error_decomposition"]["variance"]
        error_decomposition(
            adata, batch_key="batch", predictions=pred, dispersion=pd.Series(theta, index=genes), n_bootstrap=0
        )
        a_ser = adata.uns["scmech"]["error_decomposition"]["variance"]
    assert list(a_arr.index) == list(genes[:20])
    pd.testing.assert_frame_equal(a_arr, a_ser)


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("counts", [True, False])
def test_non_finite_values_are_named_as_such(sim, value, counts):
    bad = sim.copy()
    x = bad.X.toarray().astype(np.float64)
    x[0, 0] = value
    bad.X = x
    match = r"adata\.X has 1 NaN or infinite values in the cells used; remove or impute them"
    with pytest.raises(ValueError, match=match):
        error_decomposition(bad, batch_key="batch", n_bootstrap=0, counts=counts)
    with pytest.raises(ValueError, match=match):
        estimate_variance(bad, batch_key="batch", counts=counts)
    bad.layers["raw"] = x
    with pytest.raises(ValueError, match=r"adata\.layers\['raw'\] has 1 NaN or infinite values"):
        estimate_variance(bad, batch_key="batch", layer="raw", counts=counts)


def test_predictions_with_two_rows_for_one_condition_are_refused(sim):
    pred = _truth_prediction(sim)
    labels = pred.obs["perturbation"].astype(str).to_numpy()
    perturbed = [i for i, c in enumerate(labels) if c != "NT"]
    first, second = perturbed[0], perturbed[1]
    labels[second] = labels[first]  # e.g. one row per medium, read as the same condition twice
    pred.obs["perturbation"] = labels
    with pytest.raises(ValueError, match=rf"predictions hold several rows for \['{labels[first]}'\].*decompose one"):
        error_decomposition(sim, batch_key="batch", predictions=pred, n_bootstrap=0)


def test_predictions_on_another_scale_are_refused(sim):
    # counts (np.expm1 of a prediction) in place of log1p values: a model error of thousands, not a message
    pred = _truth_prediction(sim)
    pred.X = np.expm1(pred.X) * 100
    with pytest.raises(ValueError, match=r"predictions reach .* above log1p\(1e4\) = 9.21.*not on the log1p"):
        error_decomposition(sim, batch_key="batch", predictions=pred, n_bootstrap=0)


def test_duplicated_gene_names_are_refused(sim):
    dup = sim.copy()
    dup.var_names = [sim.var_names[0], *sim.var_names[:-1]]
    with pytest.raises(ValueError, match=r"adata.var_names has 1 duplicates.*adata.var_names_make_unique\(\)"):
        error_decomposition(dup, batch_key="batch", n_bootstrap=0)
