from __future__ import annotations

import subprocess
import sys
from functools import cache

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc

from scmech import tl
from scmech.data import simulate_perturbseq

pytestmark = pytest.mark.pertpy


@cache
def _screen(n_cells: int = 800, seed: int = 0) -> ad.AnnData:
    return simulate_perturbseq(
        n_cells=n_cells,
        n_genes=60,
        n_perturbations=3,
        n_combinations=0,
        escaper_fraction=0.3,
        efficacy_mean=0.9,
        seed=seed,
    )


def screen(**kwargs) -> ad.AnnData:
    adata = _screen(**kwargs).copy()
    adata.obs["perturbation"] = adata.obs["perturbation"].astype(str)
    return adata


def _lognorm(adata: ad.AnnData) -> np.ndarray:
    x = adata.copy()
    sc.pp.normalize_total(x, target_sum=1e4)
    sc.pp.log1p(x)
    return x.X.toarray() if hasattr(x.X, "toarray") else np.asarray(x.X)


def test_import_does_not_load_pertpy():
    code = "import sys, scmech.tl, scmech.pp; assert 'pertpy' not in sys.modules, 'pertpy imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_mixscape_efficacy_is_lower_for_escapers():
    pytest.importorskip("pertpy")
    adata = screen()
    before = adata.copy()
    eff = tl.efficacy_from_mixscape(adata, n_neighbors=None)
    assert adata.obs["scmech_efficacy"].dtype == np.float64
    np.testing.assert_array_equal(adata.obs["scmech_efficacy"].to_numpy(), eff.to_numpy())
    assert ((eff >= 0) & (eff <= 1)).all()
    # nothing but the efficacy column is written
    assert list(adata.obs.columns) == [*before.obs.columns, "scmech_efficacy"]
    assert set(adata.layers.keys()) == set(before.layers.keys())
    assert set(adata.uns) == set(before.uns)
    assert (adata.X != before.X).nnz == 0
    labels = adata.obs["perturbation"].to_numpy()
    escaper = np.asarray(adata.uns["truth"]["cell_escaper"], dtype=bool)
    assert (eff[labels == "NT"] == 0).all()
    perturbed = labels != "NT"
    # escapers (true efficacy < 0.05) get a lower efficacy than responders, overall and in every perturbation
    assert eff[perturbed & escaper].mean() < eff[perturbed & ~escaper].mean() - 0.15
    for p in np.unique(labels[perturbed]):
        m = labels == p
        assert eff[m & escaper].mean() < eff[m & ~escaper].mean()
    # the column registers as the model's efficacy_key
    from scmech.model import SemiMechVI

    SemiMechVI.setup_anndata(adata, efficacy_key="scmech_efficacy")


def test_mixscape_untestable_perturbation_gets_full_effect():
    pytest.importorskip("pertpy")
    adata = screen()
    rng = np.random.default_rng(0)
    # relabel random controls as a "perturbation" without any effect: no marker genes
    nt = np.flatnonzero(adata.obs["perturbation"].to_numpy() == "NT")
    fake = rng.choice(nt, size=30, replace=False)
    adata.obs.iloc[fake, adata.obs.columns.get_loc("perturbation")] = "FAKE"
    eff = tl.efficacy_from_mixscape(adata, n_neighbors=None, untestable=0.7, copy=True).obs["scmech_efficacy"]
    assert (eff.iloc[fake] == 0.7).all()
    assert "scmech_efficacy" not in adata.obs


def test_mixscape_scores_and_classes_are_read():
    adata = screen(n_cells=200)
    labels = adata.obs["perturbation"].to_numpy()
    rng = np.random.default_rng(1)
    adata.obs["mixscape_class_p_ko"] = np.where(labels == "NT", 0.0, rng.uniform(size=adata.n_obs))
    adata.obs.loc[adata.obs_names[0], "perturbation"] = "unassigned"
    eff = tl.efficacy_from_mixscape(adata, score_key="mixscape_class_p_ko", key_added="eff")
    m = (labels != "NT") & (adata.obs["perturbation"].to_numpy() != "unassigned")
    np.testing.assert_allclose(eff[m], adata.obs["mixscape_class_p_ko"].to_numpy()[m])
    assert eff.iloc[0] == 0.0
    assert (eff[labels == "NT"] == 0).all()
    adata.obs["mixscape_class"] = [
        "NT" if lab == "NT" else f"{lab} {'NP' if k % 3 == 0 else 'KO'}" for k, lab in enumerate(labels)
    ]
    eff = tl.efficacy_from_mixscape(adata, class_key="mixscape_class", key_added="eff")
    cls = adata.obs["mixscape_class"].to_numpy()
    assert set(eff[m & np.char.endswith(cls.astype(str), "NP")]) == {0.0}
    assert set(eff[m & np.char.endswith(cls.astype(str), "KO")]) == {1.0}


def test_mixscape_classes_missing_or_lower_case():
    adata = screen(n_cells=200)
    labels = adata.obs["perturbation"].to_numpy()
    perturbed = np.flatnonzero(labels != "NT")
    classes = np.array(["NT" if lab == "NT" else f"{lab} KO" for lab in labels], dtype=object)
    classes[perturbed[0]] = f"{labels[perturbed[0]]} np"
    classes[perturbed[1]] = "g NP "
    adata.obs["mixscape_class"] = classes
    eff = tl.efficacy_from_mixscape(adata, class_key="mixscape_class", key_added="eff")
    assert eff.iloc[perturbed[0]] == 0.0
    assert eff.iloc[perturbed[1]] == 0.0
    assert eff.iloc[perturbed[2]] == 1.0
    # a missing class of a control cell is harmless; of a perturbed cell it is refused
    control = np.flatnonzero(labels == "NT")[0]
    classes[control] = None
    adata.obs["mixscape_class"] = classes
    assert tl.efficacy_from_mixscape(adata, class_key="mixscape_class", key_added="eff").iloc[control] == 0.0
    for missing in (None, np.nan):
        classes[perturbed[2]] = missing
        adata.obs["mixscape_class"] = classes
        with pytest.raises(
            ValueError, match=r"\['mixscape_class'\] must hold a Mixscape class for every perturbed cell; 1 are missing"
        ):
            tl.efficacy_from_mixscape(adata, class_key="mixscape_class", key_added="eff")


def test_mixscape_bad_inputs():
    adata = screen(n_cells=200)
    with pytest.raises(KeyError, match=r"score_key: 'p_ko' is not a column of adata.obs"):
        tl.efficacy_from_mixscape(adata, score_key="p_ko")
    adata.obs["bad"] = 2.0
    with pytest.raises(ValueError, match=r"adata.obs\['bad'\] must hold probabilities in \[0, 1\]"):
        tl.efficacy_from_mixscape(adata, score_key="bad")
    with pytest.raises(ValueError, match="either score_key"):
        tl.efficacy_from_mixscape(adata, score_key="bad", class_key="bad")
    with pytest.raises(ValueError, match=r"untestable=2.*\[0, 1\]"):
        tl.efficacy_from_mixscape(adata, untestable=2)
    with pytest.raises(KeyError, match=r"layer='counts' is not a layer"):
        tl.efficacy_from_mixscape(adata, layer="counts")
    with pytest.raises(KeyError, match=r"split_by: 'rep' is not a column"):
        tl.efficacy_from_mixscape(adata, split_by="rep")


def test_mixscape_without_pertpy_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pertpy", None)
    with pytest.raises(ImportError, match=r"pip install 'scmech\[pertpy\]'"):
        tl.efficacy_from_mixscape(screen(n_cells=200), n_neighbors=None)
    with pytest.raises(ImportError, match=r"pip install 'scmech\[pertpy\]'"):
        tl.prediction_distance(ad.AnnData(np.zeros((1, 2))), screen(n_cells=200))


def _cells_prediction(adata: ad.AnnData, conds: list[str], seed: int = 0) -> ad.AnnData:
    """A per-cell 'prediction' in predict(return_mean=False)'s layout: observed cells with a little noise."""
    rng = np.random.default_rng(seed)
    x = _lognorm(adata)
    labels = adata.obs["perturbation"].to_numpy()
    rows = np.concatenate([np.flatnonzero(labels == c)[:40] for c in conds])
    obs = pd.DataFrame({"perturbation": labels[rows], "source_cell": adata.obs_names[rows]})
    obs.index = [f"{p}|{c}" for p, c in zip(obs["perturbation"], obs["source_cell"], strict=True)]
    return ad.AnnData(
        X=(x[rows] + rng.normal(0, 0.05, size=(len(rows), adata.n_vars))).astype(np.float32),
        obs=obs,
        var=pd.DataFrame(index=adata.var_names.copy()),
    )


def test_prediction_distance_matches_energy_distance():
    pytest.importorskip("pertpy")
    adata = screen()
    conds = [c for c in pd.unique(adata.obs["perturbation"]) if c != "NT"][:2]
    pred = _cells_prediction(adata, [*conds, "NT"])
    res = tl.prediction_distance(pred, adata, metric="edistance", n_pcs=None, max_cells=None)
    assert res.attrs["metric"] == "edistance"
    assert set(res.index) == {*conds, "NT"}
    x = _lognorm(adata)
    labels = adata.obs["perturbation"].to_numpy()
    for c in conds:
        p = pred.X[pred.obs["perturbation"].to_numpy() == c]
        o = x[labels == c]
        assert res.loc[c, "distance"] == pytest.approx(tl.energy_distance(p, o), rel=1e-5)
        assert res.loc[c, "control_distance"] == pytest.approx(tl.energy_distance(x[labels == "NT"], o), rel=1e-5)
        assert res.loc[c, "n_predicted"] == 40
        assert res.loc[c, "n_observed"] == (labels == c).sum()
        # a near-copy of the observed cells is much closer than the controls
        assert res.loc[c, "distance"] < 0.5 * res.loc[c, "control_distance"]
    # in PCA space: the same as energy_distance on the combined AnnData's X_pca
    both = tl.combine_prediction(pred, adata, n_pcs=10, max_cells=None)
    res_pca = tl.prediction_distance(pred, adata, n_pcs=10, max_cells=None)
    g = both.obs["group"].astype(str).to_numpy()
    for c in conds:
        e = tl.energy_distance(both.obsm["X_pca"][g == f"predicted|{c}"], both.obsm["X_pca"][g == f"observed|{c}"])
        assert res_pca.loc[c, "distance"] == pytest.approx(e, rel=1e-6)
    # and other pertpy metrics run on the same input
    mmd = tl.prediction_distance(pred, adata, metric="mmd", n_pcs=10)
    assert np.isfinite(mmd["distance"]).all()


def test_mean_prediction_compares_with_observed_pseudobulk():
    pytest.importorskip("pertpy")
    from scmech.data import pseudobulk

    adata = screen()
    tl.ControlMean.setup_anndata(adata)
    model = tl.ControlMean(adata)
    model.train()
    conds = [c for c in pd.unique(adata.obs["perturbation"]) if c != "NT"]
    pred = model.predict(conds)
    res = tl.prediction_distance(pred, adata, metric="euclidean", n_pcs=None)
    pb = pseudobulk(adata, "perturbation")
    for c in conds:
        # ControlMean predicts the control pseudobulk: its distance is the control's
        expected = np.linalg.norm(pb.loc["NT"].to_numpy() - pb.loc[c].to_numpy())
        assert res.loc[c, "distance"] == pytest.approx(expected, rel=1e-4)
        assert res.loc[c, "control_distance"] == pytest.approx(expected, rel=1e-4)
    with pytest.warns(UserWarning, match="compares distributions of cells"):
        tl.prediction_distance(pred, adata, metric="edistance")


def test_semimechvi_prediction_goes_straight_into_pertpy():
    pytest.importorskip("pertpy")
    import pertpy as pt

    from scmech.model import SemiMechVI

    adata = screen(n_cells=240)
    SemiMechVI.setup_anndata(adata)
    model = SemiMechVI(adata, n_latent=4, n_hidden=16, field_hidden=8)
    model.train(max_epochs=1, batch_size=64, enable_progress_bar=False)
    conds = [c for c in pd.unique(adata.obs["perturbation"]) if c != "NT"]
    cells = model.predict(conds, return_mean=False, n_cells=30)
    res = tl.prediction_distance(cells, adata, metric="edistance", n_pcs=5)
    assert set(res.index) == set(conds)
    assert (res["distance"] > 0).all()
    assert (res["n_predicted"] == cells.n_obs // len(conds)).all()
    ps = tl.perturbation_space(cells, adata, method="pseudobulk", n_pcs=5)
    assert set(ps.obs["group"]) == {f"predicted|{c}" for c in conds} | {f"observed|{c}" for c in [*conds, "NT"]}
    assert ps.obsm["X_pca"].shape == (ps.n_obs, 5)
    # pertpy's own tools accept the result
    pw = pt.tl.Distance("euclidean", obsm_key="X_pca").pairwise(ps, groupby="group", show_progressbar=False)
    assert pw.shape == (ps.n_obs, ps.n_obs)
    cs = tl.perturbation_space(model.predict(conds), adata, method="centroid", n_pcs=5)
    assert set(cs.obs["source"]) == {"predicted", "observed"}


def test_mean_prediction_with_duplicated_labels_is_refused():
    pytest.importorskip("pertpy")
    adata = screen(n_cells=200)
    cond = next(c for c in pd.unique(adata.obs["perturbation"]) if c != "NT")
    mean = _cells_prediction(adata, [cond])[:2].copy()
    one = ad.AnnData(mean.X[:1].copy(), obs=pd.DataFrame({"perturbation": [cond]}, index=["m0"]), var=mean.var)
    res = tl.prediction_distance(one, adata, metric="euclidean", n_pcs=None)
    assert res.loc[cond, "n_predicted"] == 1
    two = ad.AnnData(mean.X.copy(), obs=pd.DataFrame({"perturbation": [cond, cond]}, index=["m0", "m1"]), var=mean.var)
    with pytest.raises(ValueError, match=rf"read as a mean prediction.*1 rows repeat.*\['{cond}'\].*source_cell"):
        tl.prediction_distance(two, adata, metric="euclidean", n_pcs=None)
    # with source_cell the same rows are per-cell predictions
    two.obs["source_cell"] = two.obs_names
    assert tl.combine_prediction(two, adata, n_pcs=None).uns["scmech"]["combine_prediction"]["mean_prediction"] is False


def test_perturbation_space_pseudobulk_is_the_group_mean():
    pytest.importorskip("pertpy")
    adata = screen()
    conds = [c for c in pd.unique(adata.obs["perturbation"]) if c != "NT"][:2]
    pred = _cells_prediction(adata, conds)
    both = tl.combine_prediction(pred, adata, n_pcs=4)
    ps = tl.perturbation_space(pred, adata, n_pcs=4)
    g = both.obs["group"].astype(str).to_numpy()
    for grp in ps.obs_names:
        name = ps.obs.loc[grp, "group"]
        np.testing.assert_allclose(np.asarray(ps[grp].X).ravel(), both.X[g == name].mean(0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(ps[grp].obsm["X_pca"].ravel(), both.obsm["X_pca"][g == name].mean(0), atol=1e-4)
    alone = tl.perturbation_space(pred, n_pcs=None)
    assert set(alone.obs["source"]) == {"predicted"}
    assert alone.n_obs == len(conds)


def test_prediction_helpers_bad_inputs():
    pytest.importorskip("pertpy")
    adata = screen(n_cells=200)
    pred = _cells_prediction(adata, ["NT"])
    with pytest.raises(ValueError, match=r"metric='edist' is not a pertpy Distance metric"):
        tl.prediction_distance(pred, adata, metric="edist")
    with pytest.raises(KeyError, match=r"pred has no obs\['perturbation'\]"):
        tl.prediction_distance(ad.AnnData(np.zeros((2, adata.n_vars))), adata)
    other = pred.copy()
    other.var_names = [f"x{i}" for i in range(other.n_vars)]
    with pytest.raises(ValueError, match="share no var_names"):
        tl.combine_prediction(other, adata)
    renamed = pred.copy()
    renamed.obs["perturbation"] = "ZZZ"
    with pytest.raises(ValueError, match=r"No predicted condition has observed cells"):
        tl.combine_prediction(renamed, adata)
    with pytest.raises(KeyError, match=r"perturbation_key: 'pert' is not a column|'pert'"):
        tl.combine_prediction(pred, adata, perturbation_key="pert")
    with pytest.raises(ValueError, match=r"n_pcs=0 must be a positive integer"):
        tl.combine_prediction(pred, adata, n_pcs=0)
    with pytest.raises(ValueError, match=r"max_cells=True must be a positive integer"):
        tl.prediction_distance(pred, adata, max_cells=True)
    with pytest.raises(ValueError, match=r"max_cells=0 must be a positive integer"):
        tl.combine_prediction(pred, adata, max_cells=0)
    dup_pred = pred.copy()
    dup_pred.var_names = [pred.var_names[0], *pred.var_names[:-1]]
    with pytest.raises(ValueError, match=r"pred.var_names has 1 duplicates.*pred.var_names_make_unique\(\)"):
        tl.prediction_distance(dup_pred, adata)
    dup_obs = adata.copy()
    dup_obs.var_names = [adata.var_names[0], *adata.var_names[:-1]]
    with pytest.raises(ValueError, match=r"observed.var_names has 1 duplicates.*observed.var_names_make_unique"):
        tl.combine_prediction(pred, dup_obs)
    with pytest.raises(ValueError, match=r"method='umap'.*'pseudobulk' or 'centroid'"):
        tl.perturbation_space(pred, adata, method="umap")


@cache
def _combination_screen() -> tuple[ad.AnnData, ad.AnnData]:
    """The screen of six perturbations and two combinations, and TrainMean's mean prediction of two of them."""
    adata = simulate_perturbseq(n_cells=600, n_genes=40, n_perturbations=6, n_combinations=2, seed=0)
    tl.TrainMean.setup_anndata(adata)
    model = tl.TrainMean(adata)
    model.train()
    return adata, model.predict(["G0001", "G0009"])


def test_counts_false_on_raw_counts_is_refused():
    pytest.importorskip("pertpy")
    adata, pred = _combination_screen()
    adata = adata.copy()
    refused = r"counts=False declares observed\.X log-normalised, but it holds integer counts \(largest value 3956\)"
    with pytest.raises(ValueError, match=refused):
        tl.prediction_distance(pred, adata, metric="euclidean", counts=False)
    with pytest.raises(ValueError, match=refused):
        tl.combine_prediction(pred, adata, counts=False)
    with pytest.raises(ValueError, match=refused):
        tl.perturbation_space(pred, adata, counts=False)
    # per-cell predictions are refused too, and the message names the layer read
    adata.layers["counts"] = adata.X.copy()
    cells = _cells_prediction(adata, ["G0001"])
    with pytest.raises(ValueError, match=r"counts=False declares observed\.layers\['counts'\] log-normalised"):
        tl.prediction_distance(cells, adata, layer="counts", counts=False)
    # log-normalised data with counts=False, and counts with counts=True, are accepted
    lognorm = adata.copy()
    lognorm.X = _lognorm(adata)
    res = tl.prediction_distance(pred, lognorm, metric="euclidean", counts=False, n_pcs=None)
    assert list(res.index) == ["G0001", "G0009"]
    assert (res["distance"] < 3).all()
    assert (tl.prediction_distance(pred, adata, metric="euclidean", n_pcs=None)["distance"] < 3).all()


def test_a_bare_string_condition_is_one_label():
    pytest.importorskip("pertpy")
    adata, pred = _combination_screen()
    one = tl.combine_prediction(pred, adata, conditions="G0001", n_pcs=None)
    listed = tl.combine_prediction(pred, adata, conditions=["G0001"], n_pcs=None)
    assert set(one.obs["group"]) == {"predicted|G0001", "observed|G0001", "observed|NT"}
    np.testing.assert_array_equal(one.X, listed.X)
    res = tl.prediction_distance(pred, adata, metric="euclidean", conditions="G0001")
    assert list(res.index) == ["G0001"]
    ps = tl.perturbation_space(pred, adata, conditions="G0001", n_pcs=None)
    assert set(ps.obs["group"]) == {"predicted|G0001", "observed|G0001", "observed|NT"}
    alone = tl.perturbation_space(pred, conditions="G0001", n_pcs=None)
    assert list(alone.obs["perturbation"]) == ["G0001"]


def test_mean_prediction_counts_the_cells_behind_each_side():
    pytest.importorskip("pertpy")
    adata, pred = _combination_screen()
    res = tl.prediction_distance(pred, adata, metric="euclidean", max_cells=10)
    # TrainMean averages the 540 perturbed cells; the observed pseudobulk holds all 68 cells of each condition,
    # whatever max_cells (which subsamples the cells of the PCA only)
    assert pred.obs["n_cells"].tolist() == [540, 540]
    assert res["n_predicted"].tolist() == [540, 540]
    assert res["n_observed"].tolist() == [68, 68]


def test_predictions_on_another_scale_are_refused():
    # counts (np.expm1 of a prediction) in place of log1p values: distances of thousands, not a message
    pytest.importorskip("pertpy")
    adata = screen(n_cells=300)
    conds = [c for c in pd.unique(adata.obs["perturbation"]) if c != "NT"]
    tl.ControlMean.setup_anndata(adata)
    model = tl.ControlMean(adata)
    model.train()
    pred = model.predict(conds)
    tl.combine_prediction(pred, adata, n_pcs=None)  # on the log1p scale: accepted
    counts = pred.copy()
    counts.X = np.expm1(np.asarray(counts.X)) * 50
    for call in (tl.combine_prediction, tl.prediction_distance):
        with pytest.raises(ValueError, match=r"pred.X reach .* above log1p\(1e4\) = 9.21.*not on the log1p"):
            call(counts, adata)


def test_perturbation_space_of_predictions_alone_checks_them():
    pytest.importorskip("pertpy")
    adata = screen(n_cells=200)
    conds = [c for c in pd.unique(adata.obs["perturbation"]) if c != "NT"][:2]
    pred = _cells_prediction(adata, conds)
    with pytest.raises(KeyError, match=r"conditions \['XYZ'\] are not predicted in pred"):
        tl.perturbation_space(pred, conditions=["XYZ"], n_pcs=None)
    nan_label = pred.copy()
    nan_label.obs["perturbation"] = nan_label.obs["perturbation"].astype(object)
    nan_label.obs.iloc[0, nan_label.obs.columns.get_loc("perturbation")] = np.nan
    with pytest.raises(ValueError, match=r"pred has 1 missing \(NaN\) labels in obs\['perturbation'\]"):
        tl.perturbation_space(nan_label, n_pcs=None)
    nan_x = pred.copy()
    x = np.asarray(nan_x.X.toarray() if hasattr(nan_x.X, "toarray") else nan_x.X, dtype=np.float32)
    x[0, 0] = np.nan
    nan_x.X = x
    with pytest.raises(ValueError, match=rf"pred.X holds NaN or infinite values in the rows of \['{conds[0]}'\]"):
        tl.perturbation_space(nan_x, n_pcs=None)
