from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from scmech.data import (
    canonical_label,
    get_design,
    parse_condition,
    parse_perturbations,
    validate_categorical,
    validate_efficacy,
    validate_time,
)


def test_parse_singles_combinations_controls_unassigned():
    labels = ["STAT1", "JAK2+STAT1", "NT", "unassigned", "STAT1+JAK2", "JAK2", "NT"]
    d = parse_perturbations(labels, control_label="NT")
    assert d.targets == ["JAK2", "STAT1"]
    assert d.labels.tolist() == ["STAT1", "JAK2+STAT1", "NT", "unassigned", "JAK2+STAT1", "JAK2", "NT"]
    assert d.is_control.tolist() == [False, False, True, False, False, False, True]
    assert d.is_unassigned.tolist() == [False, False, False, True, False, False, False]
    m = d.matrix.toarray()
    assert sp.issparse(d.matrix)
    np.testing.assert_array_equal(m, [[0, 1], [1, 1], [0, 0], [0, 0], [1, 1], [1, 0], [0, 0]])
    assert d.conditions == ["NT", "JAK2", "JAK2+STAT1", "STAT1"]
    assert d.n_targets_per_cell.tolist() == [1, 2, 0, 0, 2, 1, 0]
    assert d.fit_mask.sum() == 6


def test_configurable_labels_and_separator():
    d = parse_perturbations(
        ["a|b", "ctrl", "non-targeting", "none", "b"],
        control_label=["ctrl", "non-targeting"],
        separator="|",
        unassigned_label="none",
    )
    assert d.control_label == "ctrl"
    assert d.labels.tolist() == ["a|b", "ctrl", "ctrl", "none", "b"]
    assert d.is_control.sum() == 2


def test_gears_style_ctrl_parts_are_dropped():
    d = parse_perturbations(["STAT1+ctrl", "ctrl", "ctrl+JAK2", "JAK2+STAT1"], control_label="ctrl")
    assert d.labels.tolist() == ["STAT1", "ctrl", "JAK2", "JAK2+STAT1"]


def test_unassigned_is_logged(caplog):
    with caplog.at_level("INFO"):
        parse_perturbations(["A", "NT", "unassigned", "unassigned"])
    assert "2 of 4 cells are unassigned" in caplog.text


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (["A", "", "NT"], "Empty perturbation label"),
        (["A", "   ", "NT"], "Empty perturbation label"),
        (["A+A", "NT"], "more than once"),
        (["A+", "NT"], "empty target"),
        (["+A", "NT"], "empty target"),
        (["A++B", "NT"], "empty target"),
        (["A", "B"], "No control cells"),
        (["A", np.nan, "NT"], "missing"),
    ],
)
def test_bad_labels_raise(labels, match):
    with pytest.raises(ValueError, match=match):
        parse_perturbations(labels, control_label="NT")


def test_separator_inside_gene_name_is_ambiguous():
    with pytest.raises(ValueError, match="ambiguous: the gene 'HLA-A'"):
        parse_perturbations(["HLA-A", "NT"], separator="-", var_names=["HLA-A", "B2M"])
    # without the clash it parses as a combination
    d = parse_perturbations(["HLA-B2M", "NT"], separator="-", var_names=["HLA", "B2M"])
    assert d.labels.tolist() == ["B2M-HLA", "NT"]


def test_fixed_targets_reject_unknown():
    with pytest.raises(ValueError, match=r"target\(s\) \['C'\] that were not registered"):
        parse_perturbations(["A", "C", "NT"], targets=["A", "B"])
    d = parse_perturbations(["A", "NT"], targets=["A", "B"])
    assert d.matrix.shape == (2, 2)


def test_target_index_and_condition_matrix():
    d = parse_perturbations(["A", "B+C", "NT"])
    assert d.target_index(["C", "x", "A"]).tolist() == [2, -1, 0]
    cm = d.condition_matrix(["NT", "C+A", "B"]).toarray()
    np.testing.assert_array_equal(cm, [[0, 0, 0], [1, 0, 1], [0, 1, 0]])
    with pytest.raises(KeyError, match="Target 'Z'"):
        d.condition_matrix(["Z"])


def test_canonical_label_and_parse_condition():
    assert canonical_label(("STAT1", "JAK2")) == "JAK2+STAT1"
    # a separator of several characters must not straddle two targets: the label must read back as its targets
    for targets in (("A+", "B"), ("C", "AB+")):
        with pytest.raises(ValueError, match=r"joined by '\+\+' they read as other targets"):
            canonical_label(targets, separator="++")
    for targets, sep in ((("A", "B"), "++"), (("A+", "B"), "+-")):
        assert parse_condition(canonical_label(targets, separator=sep), separator=sep) == tuple(sorted(targets))
    assert canonical_label(()) == "NT"
    assert parse_condition("B+A") == ("A", "B")
    assert parse_condition("NT") == ()


@pytest.mark.parametrize("targets", ["STAT1", None, ("STAT1", 3)])
def test_canonical_label_refuses_what_is_not_a_collection_of_target_names(targets):
    # a bare string would be sorted letter by letter: 'STAT1' -> '1+A+S+T+T'
    with pytest.raises(TypeError, match=r"targets=.* must (be a list or tuple of target names|hold target names)"):
        canonical_label(targets)


@pytest.mark.parametrize(
    ("targets", "kwargs"),
    [
        ((), {}),
        (("STAT1",), {}),
        (("STAT1", "JAK2"), {}),
        (["C", "A", "B"], {}),
        ([" A", "B "], {}),  # whitespace is stripped, as parse_condition strips it
        (["NT", "A"], {}),  # control parts are dropped, as in parse_condition ("A+NT" reads as A)
        (["NT"], {}),
        (["ctrl", "IFNGR1"], {"control_label": "ctrl"}),
        (["A", "B"], {"separator": "|"}),
        (["A+B", "C"], {"separator": "|"}),  # '+' is an ordinary character with another separator
    ],
)
def test_canonical_label_round_trips_through_parse_condition(targets, kwargs):
    label = canonical_label(targets, **kwargs)
    control = kwargs.get("control_label", "NT")
    expected = tuple(sorted(t.strip() for t in targets if t.strip() != control))
    assert parse_condition(label, **kwargs) == expected
    # and it is the canonical form: the label parses back to itself
    assert canonical_label(parse_condition(label, **kwargs), **kwargs) == label
    assert label == (kwargs.get("separator", "+").join(expected) if expected else control)


@pytest.mark.parametrize(
    ("targets", "match"),
    [
        (["A", "A"], r"names the target\(s\) \['A'\] more than once"),
        (["A", " A"], r"names the target\(s\) \['A'\] more than once"),
        (["A+B", "C"], r"target\(s\) \['A\+B'\] contain the separator '\+'"),
        ([""], "holds an empty target name"),
        (["A", "  "], "holds an empty target name"),
    ],
)
def test_canonical_label_refuses_what_cannot_be_a_condition(targets, match):
    with pytest.raises(ValueError, match=match):
        canonical_label(targets)


def test_canonical_label_refuses_blank_separator_or_control():
    with pytest.raises(ValueError, match=r"`separator` must be a non-blank string such as '\+', got ' '"):
        canonical_label(["A", "B"], separator=" ")
    with pytest.raises(ValueError, match=r"`control_label` must be a non-empty label such as 'NT', got ''"):
        canonical_label([], control_label="")


@pytest.mark.parametrize("missing", [np.nan, None, pd.NA, np.float64("nan")])
def test_parse_condition_refuses_a_missing_label(missing):
    with pytest.raises(TypeError, match=r"Perturbation label .* in obs\['guide'\] is missing \(NaN/None\)"):
        parse_condition(missing, key="guide")


def test_validate_time_and_efficacy():
    np.testing.assert_array_equal(validate_time([0, 1.5, 2]), [0, 1.5, 2])
    with pytest.raises(ValueError, match="NaN or infinite time"):
        validate_time([0, np.nan], key="day")
    with pytest.raises(ValueError, match=r"negative time values \(min -1\)"):
        validate_time([0, -1], key="day")
    with pytest.raises(TypeError, match="must be numeric"):
        validate_time(["a", "b"], key="day")
    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        validate_efficacy([0.5, 1.2], key="eff")
    with pytest.raises(ValueError, match="NaN or infinite efficacy"):
        validate_efficacy([0.5, np.nan], key="eff")


def test_validate_categorical():
    cat = validate_categorical(pd.Categorical(["a", "b"], categories=["a", "b", "c"]), "batch")
    assert list(cat.categories) == ["a", "b"]
    with pytest.raises(ValueError, match="missing \\(NaN\\) batch values"):
        validate_categorical(pd.Series(["a", None]), "batch", "batch")


def _toy_adata():
    obs = pd.DataFrame(
        {
            "guide_target": ["A", "B", "NT", "A+B", "NT", "unassigned"],
            "rep": pd.Categorical(["r1", "r1", "r1", "r2", "r2", "r2"]),
            "day": [1.0, 1.0, 1.0, 2.0, 2.0, 2.0],
            "eff": [0.9, 0.5, 0.0, 1.0, 0.0, 0.0],
        },
        index=[f"c{i}" for i in range(6)],
    )
    return ad.AnnData(X=sp.csr_matrix(np.ones((6, 3), dtype=np.float32)), obs=obs)


def test_get_design_reads_all_keys_without_mutation():
    adata = _toy_adata()
    before = adata.obs.copy()
    d = get_design(adata, "guide_target", "NT", batch_key="rep", time_key="day", efficacy_key="eff")
    pd.testing.assert_frame_equal(adata.obs, before)
    assert list(d.batch.categories) == ["r1", "r2"]
    assert d.time.tolist() == [1, 1, 1, 2, 2, 2]
    table = d.cells_per_batch()
    assert table.loc["NT"].tolist() == [1, 1]


def test_get_design_missing_key_and_missing_controls():
    adata = _toy_adata()
    with pytest.raises(KeyError, match="batch_key 'lane' is not a column"):
        get_design(adata, "guide_target", batch_key="lane")
    with pytest.raises(KeyError, match="perturbation_key 'pert'"):
        get_design(adata, "pert")
    adata.obs.loc["c4", "guide_target"] = "B"
    with pytest.warns(UserWarning, match=r"No control cells in batch \['r2'\]"):
        get_design(adata, "guide_target", batch_key="rep")


# ---------------------------------------------------------------- property-based tests
_gene = st.text(alphabet=st.sampled_from("ABCDEFGHJK0123456789-_."), min_size=1, max_size=6)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(_gene, min_size=0, max_size=3), min_size=1, max_size=30))
def test_property_well_formed_labels_round_trip(target_lists):
    labels = []
    for tl in target_lists:
        tl = list(dict.fromkeys(tl))  # unique targets
        labels.append("+".join(tl) if tl else "NT")
    labels.append("NT")
    d = parse_perturbations(labels, control_label="NT", unassigned_label=None)
    # every row of the matrix holds exactly the targets of its label, and the canonical label re-parses to it
    for lab, canon, row in zip(labels, d.labels, d.matrix.toarray(), strict=True):
        targets = set() if lab == "NT" else set(lab.split("+"))
        assert {d.targets[i] for i in np.flatnonzero(row)} == targets
        assert set(parse_condition(canon)) == targets
    assert d.is_control.sum() == sum(1 for lab in labels if lab == "NT")


_any_label = st.one_of(st.text(max_size=8), st.sampled_from(["NT", "unassigned", "A+A", "+", "A+", "A+B", " "]))


@settings(max_examples=300, deadline=None)
@given(st.lists(_any_label, min_size=1, max_size=20))
def test_property_malformed_labels_fail_only_with_documented_errors(labels):
    try:
        d = parse_perturbations(labels, control_label="NT")
    except ValueError as e:
        message = str(e)
    else:
        message = None
    if message is not None:
        assert "obs['perturbation']" in message or "No control cells" in message
        return
    assert d.matrix.shape[0] == len(labels)
    assert np.all(d.matrix.sum(axis=1).A1[d.is_control] == 0)


_target = st.one_of(st.text(alphabet=st.sampled_from("AB+ N"), max_size=4), st.sampled_from(["NT", "A", " A"]))


@settings(max_examples=300, deadline=None)
@given(st.lists(_target, max_size=4))
def test_property_canonical_label_round_trips_or_refuses(targets):
    """Any list of target names either gives the label parse_condition reads back, or a ValueError."""
    names = [t.strip() for t in targets]
    kept = [t for t in names if t != "NT"]
    if "" in names or any("+" in t for t in names) or len(set(kept)) < len(kept):
        with pytest.raises(ValueError, match="empty target name|contain the separator|more than once"):
            canonical_label(targets)
        return
    assert parse_condition(canonical_label(targets)) == tuple(sorted(kept))


def test_canonical_condition_sorts_targets_under_the_design():
    from scmech.data._design import canonical_condition

    design = parse_perturbations(["NT", "B+A", "C"], control_label="NT", separator="+")
    assert canonical_condition("B+A", design) == "A+B"
    assert canonical_condition("NT", design) == "NT"
    with pytest.raises(ValueError, match=r"^Cannot parse test condition 'A\+': "):
        canonical_condition("A+", design, "test condition")
    # without a name for the label, the parser's own message comes through
    with pytest.raises(ValueError, match=r"^Perturbation label 'A\+' .* has an empty target around the separator"):
        canonical_condition("A+", design)
