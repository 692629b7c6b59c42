from __future__ import annotations

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scmech
from scmech.pp import assign_guides

TARGETS = ["STAT1", "JAK2", "IRF1", "non-targeting"]
GUIDES = [f"{t}g{k}" if t != "non-targeting" else f"NTg{k}" for t in TARGETS for k in (1, 2)]
GUIDE_TARGETS = [t for t in TARGETS for _ in (1, 2)]


def _simulated(n: int = 400, seed: int = 0):
    """Guide counts with known truth: singlets (one guide), doublets (two guides of different targets), empties."""
    rng = np.random.default_rng(seed)
    n_g = len(GUIDES)
    kind = rng.choice(["single", "double", "empty"], size=n, p=[0.8, 0.1, 0.1])
    counts = rng.poisson(0.1, size=(n, n_g))  # ambient guide reads
    true_guide = np.full(n, "", dtype=object)
    true_target = np.full(n, "", dtype=object)
    pairs = []
    for i in range(n):
        if kind[i] == "single":
            g = rng.integers(n_g)
            counts[i, g] += rng.poisson(30) + 5
            true_guide[i], true_target[i] = GUIDES[g], GUIDE_TARGETS[g]
        elif kind[i] == "double":
            g1 = rng.integers(0, 2)  # a STAT1 guide
            g2 = rng.integers(2, 4)  # a JAK2 guide
            counts[i, g1] += rng.poisson(30) + 5
            counts[i, g2] += rng.poisson(30) + 5
            pairs.append(i)
    obs_names = [f"c{i}" for i in range(n)]
    gdata = ad.AnnData(
        X=sp.csr_matrix(counts.astype(np.int32)),
        obs=pd.DataFrame(index=obs_names),
        var=pd.DataFrame({"target": GUIDE_TARGETS}, index=GUIDES),
    )
    rna = ad.AnnData(
        X=sp.csr_matrix(rng.poisson(2.0, size=(n, 5)).astype(np.float32)),
        obs=pd.DataFrame(index=obs_names),
        var=pd.DataFrame(index=[f"gene{k}" for k in range(5)]),
    )
    truth = pd.DataFrame({"kind": kind, "guide": true_guide, "target": true_target}, index=obs_names)
    return gdata, rna, truth


def test_max_fraction_recovers_known_truth():
    gdata, rna, truth = _simulated()
    with md.set_options(pull_on_update=False):
        mdata = md.MuData({"rna": rna, "guide": gdata})
    g_before = gdata.X.copy()
    df = assign_guides(mdata)
    pert = df["scmech_perturbation"].astype(str)
    single = truth["kind"] == "single"
    expected = truth.loc[single, "target"].replace({"non-targeting": "NT"})
    assert (pert[single] == expected).all()
    assert (df.loc[single, "scmech_guide"].astype(str) == truth.loc[single, "guide"]).all()
    assert (pert[truth["kind"] == "double"] == "multiple").all()
    assert (pert[truth["kind"] == "empty"] == "unassigned").all()
    # doublets name both guides
    dbl = df.loc[truth["kind"] == "double", "scmech_guide"].astype(str)
    assert dbl.str.contains("STAT1g").all()
    assert dbl.str.contains("JAK2g").all()
    # written to the RNA modality, with the summary columns and the parameters
    obs = mdata["rna"].obs
    for c in df.columns:
        assert c in obs.columns
    assert (obs["scmech_perturbation"].astype(str) == pert).all()
    x = gdata.X.toarray()
    np.testing.assert_array_equal(obs["scmech_guide_umis"].to_numpy(), x.sum(1))
    np.testing.assert_array_equal(obs["scmech_guide_max_umis"].to_numpy(), x.max(1))
    np.testing.assert_array_equal(obs["scmech_n_guides"].to_numpy(), (x > 0).sum(1))
    np.testing.assert_allclose(obs["scmech_guide_max_fraction"].to_numpy(), x.max(1) / np.maximum(x.sum(1), 1))
    params = mdata["rna"].uns["scmech"]["guide_assignment"]
    assert params["params"]["rule"] == "max_fraction"
    assert params["n_cells"]["multiple"] == int((truth["kind"] == "double").sum())
    # the guide data are untouched
    assert (gdata.X != g_before).nnz == 0
    assert list(gdata.obs.columns) == []


def test_threshold_rule_and_combinations():
    gdata, rna, truth = _simulated(seed=1)
    dbl = truth["kind"] == "double"
    df = assign_guides(gdata, rna=rna, rule="threshold", min_umis=5)
    pert = df["scmech_perturbation"].astype(str)
    assert (pert[dbl] == "multiple").all()
    comb = assign_guides(gdata, rna=rna, rule="threshold", min_umis=5, combinations=True, inplace=False)
    assert (comb.loc[dbl, "scmech_perturbation"].astype(str) == "JAK2+STAT1").all()
    single = truth["kind"] == "single"
    assert (comb.loc[single, "scmech_perturbation"] == pert[single]).all()
    # the last call wrote nothing: rna still holds the first call's labels
    assert (rna.obs["scmech_perturbation"].astype(str) == pert).all()


def test_threshold_same_target_guides_are_one_target():
    x = np.array([[10, 8, 0], [10, 0, 9], [0, 0, 1]])
    g = ad.AnnData(X=x, var=pd.DataFrame({"target": ["A", "A", "B"]}, index=["Ag1", "Ag2", "Bg1"]))
    df = assign_guides(g, rule="threshold", min_umis=5, key_added="gd")
    assert df["gd_perturbation"].astype(str).tolist() == ["A", "multiple", "unassigned"]
    assert df["gd_guide"].astype(str).tolist() == ["Ag1+Ag2", "Ag1+Bg1", "unassigned"]
    assert "gd_perturbation" in g.obs


def test_max_fraction_ties_and_thresholds():
    x = np.array([[6, 6, 0], [5, 1, 0], [4, 0, 0], [8, 3, 0], [0, 0, 0]])
    g = ad.AnnData(X=x, var=pd.DataFrame({"target": ["A", "B", "C"]}, index=["a", "b", "c"]))
    df = assign_guides(g, min_umis=5, min_fraction=0.7, inplace=False)
    # tie -> multiple; 5/6 >= 0.7 -> A; 4 < min_umis -> unassigned; 8/11 = 0.727 -> A; empty -> unassigned
    assert df["scmech_perturbation"].astype(str).tolist() == ["multiple", "A", "unassigned", "A", "unassigned"]
    assert df["scmech_guide_max_fraction"].iloc[4] == 0.0
    df = assign_guides(g, min_umis=5, min_fraction=0.8, inplace=False)
    assert df["scmech_perturbation"].astype(str).tolist()[3] == "unassigned"  # 8/11 < 0.8, only one guide >= 5


def test_targets_from_mapping_regex_and_obsm():
    gdata, rna, truth = _simulated(n=120, seed=2)
    ref = assign_guides(gdata, inplace=False)["scmech_perturbation"]
    by_map = assign_guides(gdata, targets=dict(zip(GUIDES, GUIDE_TARGETS, strict=True)), inplace=False)
    by_regex = assign_guides(gdata, target_pattern=r"^(.+?)g\d+$", inplace=False)
    assert (by_map["scmech_perturbation"] == ref).all()
    assert (by_regex["scmech_perturbation"] == ref).all()  # "NTg1" -> "NT", the control label
    rna.obsm["guides"] = pd.DataFrame(gdata.X.toarray(), index=rna.obs_names, columns=GUIDES)
    by_obsm = assign_guides(rna, obsm_key="guides", targets=GUIDE_TARGETS)
    assert (by_obsm["scmech_perturbation"] == ref).all()
    assert "guides" in rna.obsm
    assert "scmech_perturbation" in rna.obs


def test_rna_cells_missing_from_guides_are_unassigned():
    gdata, rna, _ = _simulated(n=60, seed=3)
    sub = gdata[10:].copy()
    df = assign_guides(sub, rna=rna, inplace=False)
    assert df.index.equals(rna.obs_names)
    assert (df["scmech_perturbation"].iloc[:10] == "unassigned").all()
    assert (df["scmech_guide_umis"].iloc[:10] == 0).all()
    full = assign_guides(gdata, rna=rna, inplace=False)
    assert (df["scmech_perturbation"].iloc[10:] == full["scmech_perturbation"].iloc[10:]).all()


def test_papalexi_reproduces_the_dataset_labels():
    mdata = scmech.datasets.papalexi2021(as_mudata=True)
    ref = mdata["rna"].obs["perturbation"].astype(str).to_numpy()
    guide_before = mdata["guide"].X.copy()
    df = assign_guides(mdata, min_umis=5, min_fraction=0.8)
    mine = df["scmech_perturbation"].astype(str).to_numpy()
    # the dataset labels are sceptre's rule (>= 5 UMIs, >= 80 %) with every failing cell "unassigned"
    collapsed = np.where(mine == "multiple", "unassigned", mine)
    assert (collapsed == ref).mean() == 1.0
    assigned = ref != "unassigned"
    assert (mine[assigned] == ref[assigned]).all()
    assert ((mine == "multiple") & (ref != "unassigned")).sum() == 0
    assert 0 < (mine == "multiple").sum() < (ref == "unassigned").sum()
    assert (df["scmech_perturbation"] == "STAT1").sum() == 325
    # the guide summary agrees with the dataset's own columns
    obs = mdata["rna"].obs
    np.testing.assert_array_equal(obs["scmech_guide_umis"].to_numpy(), obs["grna_total_umi"].to_numpy())
    np.testing.assert_array_equal(obs["scmech_guide_max_umis"].to_numpy(), obs["grna_max_umi"].to_numpy())
    assert (mdata["guide"].X != guide_before).nnz == 0
    # the looser 50 % rule of the dataset notes: 966 cells without a label, 2304 NT
    loose = assign_guides(mdata, min_fraction=0.5, inplace=False)["scmech_perturbation"].astype(str)
    assert int(loose.isin(["unassigned", "multiple"]).sum()) == 966
    assert int((loose == "NT").sum()) == 2304
    # the AnnData form with the counts in obsm gives the same labels
    adata = scmech.datasets.papalexi2021()
    df2 = assign_guides(adata, obsm_key="grna_counts", guide_names="grna_ids", targets="grna_targets", inplace=False)
    assert (df2["scmech_perturbation"].astype(str).to_numpy() == mine).all()


def test_assignment_registers_with_semimechvi():
    from scmech.model import SemiMechVI

    gdata, rna, _ = _simulated(n=120, seed=4)
    assign_guides(gdata, rna=rna)
    SemiMechVI.setup_anndata(rna, perturbation_key="scmech_perturbation", unassigned_label=["unassigned", "multiple"])


def test_bad_inputs_name_key_value_and_fix():
    gdata, rna, _ = _simulated(n=30)
    with md.set_options(pull_on_update=False):
        mdata = md.MuData({"rna": rna, "guide": gdata})
    with pytest.raises(KeyError, match=r"guide_mod='gdo'.*modalities.*guide"):
        assign_guides(mdata, guide_mod="gdo")
    with pytest.raises(KeyError, match=r"rna_mod='gex'.*pass rna_mod"):
        assign_guides(mdata, rna_mod="gex")
    with pytest.raises(KeyError, match=r"layer='raw'.*pass layer=None"):
        assign_guides(gdata, layer="raw")
    with pytest.raises(KeyError, match=r"targets='gene'.*columns.*target"):
        assign_guides(gdata, targets="gene")
    with pytest.raises(ValueError, match=r"rule='maximum'.*'max_fraction'"):
        assign_guides(gdata, rule="maximum")
    with pytest.raises(ValueError, match=r"min_umis=0.*integer >= 1"):
        assign_guides(gdata, min_umis=0)
    with pytest.raises(ValueError, match=r"min_fraction=1.5.*\(0, 1\]"):
        assign_guides(gdata, min_fraction=1.5)
    with pytest.raises(ValueError, match=r"min_fraction=True must be in \(0, 1\]"):  # was read as 1.0
        assign_guides(gdata, min_fraction=True)
    with pytest.raises(TypeError, match=r"control_targets=None must be a list of target names.*pass \[\]"):
        assign_guides(gdata, control_targets=None)
    with pytest.raises(ValueError, match=r"target_pattern='\^\(X\)g'.*does not match guide 'STAT1g1'"):
        assign_guides(gdata, target_pattern=r"^(X)g")
    with pytest.raises(ValueError, match=r"target_pattern='\^g\\\\d\$' has no group: its first group is the target"):
        assign_guides(gdata, target_pattern=r"^g\d$")
    with pytest.raises(ValueError, match="either targets"):
        assign_guides(gdata, targets="target", target_pattern=r"(.+)g\d")
    with pytest.raises(KeyError, match=r"obsm_key='guides' is not in adata.obsm"):
        assign_guides(rna, obsm_key="guides")
    rna.obsm["arr"] = gdata.X.toarray()
    with pytest.raises(ValueError, match="without guide names; pass guide_names"):
        assign_guides(rna, obsm_key="arr")
    neg = gdata.copy()
    neg.X = neg.X.toarray() - 1.0
    with pytest.raises(ValueError, match="non-negative integers"):
        assign_guides(neg)
    with pytest.raises(ValueError, match="is a view"):
        assign_guides(gdata[:10])
    with pytest.raises(ValueError, match=r"must differ"):
        assign_guides(gdata, multiple_label="unassigned")
    other = rna.copy()
    other.obs_names = [f"x{i}" for i in range(other.n_obs)]
    with pytest.raises(ValueError, match="share no obs_names"):
        assign_guides(gdata, rna=other)


def _obs_state(adata: ad.AnnData) -> tuple[list[str], list[str], list[str]]:
    return list(adata.obs.columns), list(adata.uns.keys()), list(adata.obs_names)


def test_duplicated_obs_names_are_refused_where_cells_are_matched_by_name():
    """Duplicated barcodes would give every duplicate the guide of one cell: refused, naming them and the fix."""
    gdata, rna, _ = _simulated(n=30)
    dup_rna = rna.copy()
    dup_rna.obs_names = ["c0"] * 4 + list(rna.obs_names[4:])
    before = _obs_state(dup_rna)
    with pytest.raises(
        ValueError,
        match=r"rna\.obs_names has 3 duplicated names \(e\.g\. \['c0'\]\).*"
        r"rna\.obs_names_make_unique\(\)",
    ):
        assign_guides(gdata, rna=dup_rna)
    assert _obs_state(dup_rna) == before
    dup_guide = gdata.copy()
    dup_guide.obs_names = ["c1", "c1", *gdata.obs_names[2:]]
    before = _obs_state(rna)
    with pytest.raises(ValueError, match=r"data\.obs_names has 1 duplicated names \(e\.g\. \['c1'\]\)"):
        assign_guides(dup_guide, rna=rna)
    assert _obs_state(rna) == before
    # a MuData whose RNA modality has duplicated names
    with md.set_options(pull_on_update=False):
        mdata = md.MuData({"rna": dup_rna, "guide": gdata})
    with pytest.raises(ValueError, match=r"mdata\['rna'\]\.obs_names has 3 duplicated names"):
        assign_guides(mdata)
    assert "scmech_perturbation" not in mdata["rna"].obs
    # annotating the guide AnnData itself matches cells by position: duplicated names are no ambiguity there
    ref = assign_guides(gdata, inplace=False)
    df = assign_guides(dup_guide, inplace=False)
    assert (df["scmech_perturbation"].to_numpy() == ref["scmech_perturbation"].to_numpy()).all()


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.nan, r"missing target \(NaN/None.*for guide\(s\) \['JAK2g1'\]"),
        (None, r"missing target \(NaN/None.*for guide\(s\) \['JAK2g1'\]"),
        ("nan", r"missing target \(NaN/None, or the string 'nan'.*\['JAK2g1'\]"),
        ("", r"empty target for guide\(s\) \['JAK2g1'\]"),
        ("  ", r"empty target for guide\(s\) \['JAK2g1'\]"),
        ("unassigned", r"\['JAK2g1'\] have the target 'unassigned'.*unassigned_label='unassigned'.*another"),
        ("multiple", r"\['JAK2g1'\] have the target 'multiple'.*multiple_label='multiple'.*another multiple_label"),
        (" unassigned ", r"\['JAK2g1'\] have the target 'unassigned'.*unassigned_label='unassigned'"),
    ],
)
def test_missing_empty_and_reserved_targets_are_refused(bad, match):
    """A NaN/None, empty or reserved target would make a perturbation 'nan', '' or collide with a written label."""
    gdata, rna, _ = _simulated(n=30)
    targets = list(GUIDE_TARGETS)
    targets[2] = bad  # JAK2g1
    before = _obs_state(rna)
    with pytest.raises(ValueError, match=match):
        assign_guides(gdata, rna=rna, targets=targets)
    with pytest.raises(ValueError, match=match):
        assign_guides(gdata, rna=rna, targets=dict(zip(GUIDES, targets, strict=True)))
    g = gdata.copy()
    g.var["target"] = pd.Series(targets, index=g.var_names, dtype=object)
    with pytest.raises(ValueError, match=match):
        assign_guides(g, rna=rna)
    assert _obs_state(rna) == before
    assert _obs_state(g) == _obs_state(gdata)


def test_reserved_labels_follow_the_arguments():
    gdata, _, _ = _simulated(n=30)
    targets = list(GUIDE_TARGETS)
    targets[0] = "doublet"
    with pytest.raises(ValueError, match=r"\['STAT1g1'\] have the target 'doublet'.*multiple_label='doublet'"):
        assign_guides(gdata, targets=targets, multiple_label="doublet")
    # with the default labels "doublet" is an ordinary target
    df = assign_guides(gdata, targets=targets, inplace=False)
    assert "doublet" in set(df["scmech_perturbation"].astype(str))
    # a guide named like the unassigned label would be ambiguous in the guide column
    g = gdata.copy()
    g.var_names = ["none", *GUIDES[1:]]
    with pytest.raises(ValueError, match=r"guide is named 'none'.*unassigned_label='none'"):
        assign_guides(g, targets=GUIDE_TARGETS, unassigned_label="none")
    assert "scmech_perturbation" not in g.obs
    with pytest.raises(
        ValueError, match=r"target_pattern='\^\(x\*\)' gives an empty target for guide\(s\) \['STAT1g1'"
    ):
        assign_guides(gdata, target_pattern=r"^(x*)")
    with pytest.raises(ValueError, match=r"separator='' must be a non-blank string"):
        assign_guides(gdata, separator="")
    assert list(gdata.obs.columns) == []


@pytest.mark.parametrize("bad", [["STAT1", "JAK2"], 1, 1.0])
def test_a_target_that_is_not_a_gene_name_is_refused(bad):
    # a list became the label "['STAT1', 'JAK2']", and 1 and 1.0 two different targets
    gdata, rna, _ = _simulated(n=30)
    targets = dict(zip(GUIDES, GUIDE_TARGETS, strict=True))
    targets["JAK2g1"] = bad
    with pytest.raises(TypeError, match=r"not a gene name \(a string\) for guide\(s\) \['JAK2g1'\]"):
        assign_guides(gdata, rna=rna, targets=targets)


def test_stored_zeros_are_not_guides_and_the_counts_are_not_rewritten():
    # explicit zeros counted as guides (n_guides), and summing duplicated entries edited the user's arrays
    data, indices, indptr = np.array([0.0, 10.0, 0.0, 3.0, 4.0, 5.0]), np.array([0, 1, 2, 2, 0, 2]), np.array([0, 3, 6])
    counts = sp.csr_matrix((data, indices, indptr), shape=(2, 4))
    before = (counts.data.copy(), counts.indices.copy(), counts.indptr.copy())
    gdata = ad.AnnData(counts, var=pd.DataFrame({"target": ["A", "A", "B", "NT"]}, index=["gA1", "gA2", "gB1", "NTg"]))
    out = assign_guides(gdata, inplace=False)
    assert out["scmech_n_guides"].tolist() == [1, 2]
    assert out["scmech_guide_umis"].tolist() == [10, 12]
    for a, b in zip(before, (counts.data, counts.indices, counts.indptr), strict=True):
        np.testing.assert_array_equal(a, b)


def test_counts_that_are_almost_whole_are_not_counts():
    gdata = ad.AnnData(
        sp.csr_matrix(np.array([[100000.5, 0.0], [3.0, 0.0]])),
        var=pd.DataFrame({"target": ["A", "NT"]}, index=["gA1", "NTg"]),
    )
    with pytest.raises(ValueError, match=r"must hold guide UMI counts \(non-negative integers\)"):
        assign_guides(gdata, inplace=False)


def test_a_target_named_like_the_control_label_is_not_merged_into_the_controls():
    gdata, _, _ = _simulated(n=60)
    with pytest.raises(
        ValueError,
        match=r"control_label='JAK2' is the target of guide\(s\) \['JAK2g1', 'JAK2g2'\], while other guides target the "
        r"controls \['non-targeting'\]; both would be labelled 'JAK2'",
    ):
        assign_guides(gdata, control_label="JAK2", inplace=False)
    # the control guides' own target as the label, or that target listed among the controls, is fine
    labels = assign_guides(gdata, control_label="non-targeting", inplace=False)["scmech_perturbation"]
    assert "non-targeting" in set(labels.astype(str))
    listed = assign_guides(gdata, control_label="JAK2", control_targets=["JAK2", "non-targeting"], inplace=False)
    assert "JAK2" in set(listed["scmech_perturbation"].astype(str))
