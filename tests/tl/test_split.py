from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scmech import tl

LABELS = {"NT": 30, "A": 12, "B": 12, "C": 12, "D": 9, "A+B": 8, "A+C": 8, "B+C": 8, "B+D": 6, "unassigned": 10}


def _adata(seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    labels = np.concatenate([[k] * n for k, n in LABELS.items()])
    n = len(labels)
    x = rng.poisson(3, size=(n, 6)).astype(np.float32) + 1
    obs = pd.DataFrame(
        {
            "perturbation": labels,
            "rep": np.tile(["r1", "r2", "r3"], n // 3 + 1)[:n],
            "day": np.tile([0.0, 2.0], n // 2 + 1)[:n],
            "medium": np.tile(["ctrl", "stim"], n // 2 + 1)[:n],
        },
        index=[f"c{i}" for i in range(n)],
    )
    return ad.AnnData(x, obs=obs, var=pd.DataFrame(index=["A", "B", "D", "g1", "g2", "g3"]))


def _labels(adata, idx):
    return set(adata.obs["perturbation"].to_numpy()[idx])


def _check_partition(adata, s):
    sets = [set(s.train), set(s.validation), set(s.test), set(s.excluded)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not sets[i] & sets[j]
    for arr in (s.train, s.validation, s.test):
        assert np.all(np.diff(arr) > 0)
        assert arr.dtype.kind == "i"
    un = np.flatnonzero(adata.obs["perturbation"].to_numpy() == "unassigned")
    assert not set(un) & set().union(*sets)
    assigned = adata.n_obs - len(un)
    assert sum(len(x) for x in sets) == assigned


def test_perturbation_split_holds_out_whole_conditions():
    adata = _adata()
    before = adata.copy()
    s = tl.split(adata, "perturbation", test_conditions=["B", "A+B"], validation_size=0.2)
    _check_partition(adata, s)
    labels = adata.obs["perturbation"].to_numpy()
    assert set(s.test) == set(np.flatnonzero(np.isin(labels, ["B", "A+B"])))
    assert _labels(adata, s.test) == {"B", "A+B"}
    assert "NT" in _labels(adata, s.train)
    assert s.test_conditions == ["A+B", "B"]
    assert "B" not in s.train_conditions
    assert "NT" not in s.train_conditions
    assert len(s.validation) == int(np.floor(0.2 * (len(s.train) + len(s.validation))))
    assert s.external_indexing[2] is s.test
    # changes are measured from the controls models may use (training and validation), never from test cells
    usable = np.union1d(s.train, s.validation)
    np.testing.assert_array_equal(s.control_reference, np.intersect1d(usable, np.flatnonzero(labels == "NT")))
    assert len(np.intersect1d(s.control_reference, s.validation)) > 0
    assert len(np.intersect1d(s.control_reference, s.test)) == 0
    json.dumps(s.to_dict())
    assert "perturbation" in repr(s)
    # adata untouched
    assert adata.obs.equals(before.obs)
    assert list(adata.uns.keys()) == []
    assert list(adata.obsm.keys()) == []


def test_combination_labels_are_canonicalised():
    adata = _adata()
    s = tl.split(adata, "perturbation", test_conditions=["B+A"])
    assert s.test_conditions == ["A+B"]


def test_random_split_reproducible_and_measured_only():
    adata = _adata()
    s1 = tl.split(adata, "perturbation", test_size=0.3, random_state=3)
    s2 = tl.split(adata, "perturbation", test_size=0.3, random_state=3)
    np.testing.assert_array_equal(s1.test, s2.test)
    np.testing.assert_array_equal(s1.validation, s2.validation)
    seen = {tuple(tl.split(adata, "perturbation", test_size=0.3, random_state=r).test_conditions) for r in range(8)}
    assert len(seen) > 1
    for r in range(8):
        s = tl.split(adata, "perturbation", restrict_to_measured=True, random_state=r)
        for c in s.test_conditions:
            assert all(t in adata.var_names for t in c.split("+"))


@pytest.mark.parametrize("seen", [2, 1, 0])
def test_combination_split_seen(seen):
    adata = _adata()
    labels = adata.obs["perturbation"].to_numpy()
    for r in range(5):
        s = tl.split(adata, "combination", seen=seen, test_size=0.3, random_state=r)
        _check_partition(adata, s)
        train_conds = set(labels[np.concatenate([s.train, s.validation])]) - {"NT"}
        train_targets = {t for c in train_conds for t in c.split("+")}
        combos = [c for c in s.test_conditions if "+" in c]
        assert combos
        for c in combos:
            n_seen = sum(1 for t in c.split("+") if t in train_conds)
            assert n_seen == seen, (c, train_conds)
            unseen = [t for t in c.split("+") if t not in train_conds]
            # a held-out target appears in no training condition, not even in combinations
            assert not set(unseen) & train_targets
        # cells of every test condition are in the test set
        assert set(s.test) == set(np.flatnonzero(np.isin(labels, s.test_conditions)))


def test_combination_split_given_and_errors():
    adata = _adata()
    s = tl.split(adata, "combination", test_conditions=["A+B"], seen=2)
    assert s.test_conditions == ["A+B"]
    s1 = tl.split(adata, "combination", test_conditions=["A+B"], seen=1, random_state=0)
    assert len([c for c in s1.test_conditions if "+" not in c]) == 1
    with pytest.raises(ValueError, match="not a combination"):
        tl.split(adata, "combination", test_conditions=["A"])
    single = adata[~adata.obs["perturbation"].str.contains(r"\+")].copy()
    with pytest.raises(ValueError, match="needs combinations"):
        tl.split(single, "combination")
    with pytest.raises(ValueError, match="seen=3"):
        tl.split(adata, "combination", seen=3)


def test_batch_split_keeps_controls_in_training():
    adata = _adata()
    labels = adata.obs["perturbation"].to_numpy()
    rep = adata.obs["rep"].to_numpy()
    s = tl.split(adata, "batch", batch_key="rep", test_conditions=["r3"])
    _check_partition(adata, s)
    expect = np.flatnonzero((rep == "r3") & ~np.isin(labels, ["NT", "unassigned"]))
    np.testing.assert_array_equal(s.test, expect)
    ctrl_r3 = np.flatnonzero((rep == "r3") & (labels == "NT"))
    assert set(ctrl_r3) <= set(s.train) | set(s.validation)
    np.testing.assert_array_equal(s.control_reference, ctrl_r3)
    assert s.test_groups == ["r3"]
    assert s.group_key == "rep"
    s2 = tl.split(adata, "batch", batch_key="rep", test_conditions=["r3"], controls_in_train=False)
    assert set(ctrl_r3) <= set(s2.test)
    # random choice holds out one of three replicates
    s3 = tl.split(adata, "batch", batch_key="rep", random_state=1)
    assert len(s3.test_groups) == 1


def test_time_and_media_splits():
    adata = _adata()
    labels = adata.obs["perturbation"].to_numpy()
    s = tl.split(adata, "time", time_key="day", test_conditions=[2])
    assert s.test_groups == [2.0]
    assert set(adata.obs["day"].to_numpy()[s.test]) == {2.0}
    assert "NT" not in set(labels[s.test])
    m = tl.split(adata, "media", media_key="medium", test_conditions="stim")
    assert set(adata.obs["medium"].to_numpy()[m.test]) == {"stim"}


def test_errors_name_key_value_and_fix():
    adata = _adata()
    with pytest.raises(ValueError, match="Unknown split kind 'cells'"):
        tl.split(adata, "cells")
    with pytest.raises(ValueError, match="needs `batch_key`"):
        tl.split(adata, "batch")
    with pytest.raises(KeyError, match="'Z'"):
        tl.split(adata, "perturbation", test_conditions=["Z"])
    with pytest.raises(KeyError, match="r9"):
        tl.split(adata, "batch", batch_key="rep", test_conditions=["r9"])
    with pytest.raises(KeyError, match="nope"):
        tl.split(adata, "batch", batch_key="nope")
    with pytest.raises(ValueError, match="every perturbation"):
        tl.split(adata, "perturbation", test_conditions=[c for c in LABELS if c not in ("NT", "unassigned")])
    with pytest.raises(ValueError, match="is the control"):
        tl.split(adata, "perturbation", test_conditions=["NT"])
    with pytest.raises(ValueError, match="every batch"):
        tl.split(adata, "batch", batch_key="rep", test_conditions=["r1", "r2", "r3"])
    with pytest.raises(ValueError, match="controls_in_train=False applies"):
        tl.split(adata, "perturbation", controls_in_train=False)
    with pytest.raises(ValueError, match="test_size"):
        tl.split(adata, "perturbation", test_size=1.5)
    no_ctrl_r3 = adata[~((adata.obs["rep"] == "r3") & (adata.obs["perturbation"] == "NT"))].copy()
    s = tl.split(no_ctrl_r3, "batch", batch_key="rep", test_conditions=["r3"])
    assert len(s.control_reference) > 0


def test_leave_one_out():
    adata = _adata()
    splits = list(tl.leave_one_out(adata, conditions=["A", "B", "C"]))
    assert [s.test_conditions for s in splits] == [["A"], ["B"], ["C"]]
    measured = list(tl.leave_one_out(adata, restrict_to_measured=True))
    assert {s.test_conditions[0] for s in measured} == {"A", "B", "D", "A+B", "B+D"}
    with pytest.raises(KeyError, match="'Z'"):
        tl.leave_one_out(adata, conditions=["Z"])  # checked before the first split


def test_external_indexing_works_with_scvi_datasplitter():
    from scvi.dataloaders import DataSplitter

    from scmech.model._setup import PerturbationSetupMixin  # noqa: F401

    adata = _adata()
    s = tl.split(adata, "perturbation", test_conditions=["A"])
    tl.ControlMean.setup_anndata(adata)
    model = tl.ControlMean(adata)
    ext = [s.train, s.validation, np.union1d(s.test, np.flatnonzero(adata.obs["perturbation"] == "unassigned"))]
    splitter = DataSplitter(model.adata_manager, external_indexing=ext)
    splitter.setup()
    np.testing.assert_array_equal(np.sort(splitter.train_idx), s.train)


def test_test_and_validation_sizes_must_leave_training_cells():
    adata = _adata()
    with pytest.raises(ValueError, match=r"test_size=0.6 and validation_size=0.6 sum to 1.2 >= 1"):
        tl.split(adata, "perturbation", test_size=0.6, validation_size=0.6)
    with pytest.raises(ValueError, match="sum to 1 >= 1"):
        tl.split(adata, "batch", batch_key="rep", test_size=0.5, validation_size=0.5)
    # test_size is unused when test_conditions are given
    s = tl.split(adata, "perturbation", test_conditions=["A"], test_size=0.6, validation_size=0.6)
    assert len(s.train) > 0


def test_split_records_the_cells_it_was_made_on():
    adata = _adata()
    s = tl.split(adata, "perturbation", test_conditions=["A"])
    assert s.n_obs == adata.n_obs
    fp = s.obs_names_fingerprint
    assert isinstance(fp, str)
    assert len(fp) == 16
    int(fp, 16)  # a hex digest
    # deterministic: the same names give the same fingerprint, whatever the split
    assert tl.split(adata.copy(), "batch", batch_key="rep", test_conditions=["r3"]).obs_names_fingerprint == fp
    assert all(sp.obs_names_fingerprint == fp for sp in tl.leave_one_out(adata, conditions=["A", "B"]))
    # plain data, restored as is
    d = json.loads(json.dumps(s.to_dict()))
    assert (d["n_obs"], d["obs_names_fingerprint"]) == (adata.n_obs, fp)
    s.check_adata(adata)  # the same cells pass
    perm = adata[np.random.default_rng(0).permutation(adata.n_obs)].copy()
    assert tl.split(perm, "perturbation", test_conditions=["A"]).obs_names_fingerprint != fp
    with pytest.raises(ValueError, match="split was made on other cells.*reordered"):
        s.check_adata(perm)
    with pytest.raises(ValueError, match=rf"{adata.n_obs} cells, but this AnnData has 50.*tl.split\(adata"):
        s.check_adata(adata[:50].copy())


@pytest.mark.parametrize("bad", [-1, 1.5, "0", True])
def test_random_state_must_be_a_non_negative_integer(bad):
    adata = _adata()
    with pytest.raises(ValueError, match=rf"random_state={bad!r} must be a non-negative integer seed"):
        tl.split(adata, "perturbation", random_state=bad)
    with pytest.raises(ValueError, match=rf"random_state={bad!r} must be a non-negative integer seed"):
        tl.leave_one_out(adata, random_state=bad)  # checked before the first split


def test_random_state_none_uses_the_scvi_seed():
    import scvi

    adata = _adata()
    s = tl.split(adata, "perturbation", test_size=0.3, random_state=None)
    same = tl.split(adata, "perturbation", test_size=0.3, random_state=int(scvi.settings.seed))
    np.testing.assert_array_equal(s.test, same.test)
    np.testing.assert_array_equal(s.validation, same.validation)
    assert tl.split(adata, "perturbation", random_state=np.int64(2)).params["random_state"] == 2


def test_leave_one_out_reads_a_bare_string_as_one_condition():
    adata = _adata()
    # the string was read character by character (KeyError "Test condition 'A'" for "A+B")
    assert [s.test_conditions for s in tl.leave_one_out(adata, conditions="A+B")] == [["A+B"]]
    assert [s.test_conditions for s in tl.leave_one_out(adata, conditions="B")] == [["B"]]
    with pytest.raises(KeyError, match=r"Test condition 'Z9' .*has no assigned cells"):
        tl.leave_one_out(adata, conditions="Z9")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"test_size": "0.2"}, r"test_size='0.2' \(str\) must be a fraction in \(0, 1\), e.g. test_size=0.2"),
        ({"test_size": None}, r"test_size=None \(NoneType\) must be a fraction in \(0, 1\)"),
        ({"test_size": True}, r"test_size=True \(bool\) must be a fraction in \(0, 1\)"),
        ({"validation_size": True}, r"validation_size=True \(bool\) must be a fraction in \[0, 1\)"),
        ({"validation_size": "0"}, r"validation_size='0' \(str\) must be a fraction in \[0, 1\)"),
    ],
)
def test_sizes_must_be_numbers(kwargs, match):
    adata = _adata()
    with pytest.raises(TypeError, match=match):
        tl.split(adata, "perturbation", **kwargs)
    if "validation_size" in kwargs:
        with pytest.raises(TypeError, match=match):
            tl.leave_one_out(adata, **kwargs)


@pytest.mark.parametrize("seen", [2.0, True, np.bool_(False), "2", None])
def test_seen_must_be_an_integer(seen):
    adata = _adata()
    with pytest.raises(TypeError, match=r"seen=.* must be the integer 0, 1 or 2 .*e.g. seen=2"):
        tl.split(adata, "combination", seen=seen, random_state=0)
    # numpy integers are integers
    s = tl.split(adata, "combination", seen=np.int64(1), test_conditions=["A+B"], random_state=0)
    assert len([c for c in s.test_conditions if "+" not in c]) == 1


@pytest.mark.parametrize("value", [True, np.True_, "two", None])
def test_held_out_times_must_be_numbers(value):
    adata = _adata()
    adata.obs["day"] = np.tile([0.0, 1.0, 2.0], adata.n_obs // 3 + 1)[: adata.n_obs]
    # True was read as time 1.0
    with pytest.raises(TypeError, match=r"time value .* in test_conditions is not a number.*obs\['day'\]"):
        tl.split(adata, "time", time_key="day", test_conditions=[value])
    # numbers, and strings that are numbers, name a time point
    assert tl.split(adata, "time", time_key="day", test_conditions=[1]).test_groups == [1.0]
    assert tl.split(adata, "time", time_key="day", test_conditions="2").test_groups == [2.0]


def test_keys_must_be_obs_columns_even_where_the_kind_ignores_them():
    adata = _adata()
    for name in ("batch_key", "time_key", "media_key"):
        with pytest.raises(KeyError, match=rf"{name}='zzz' is not a column of adata.obs \(columns: \['perturbation'"):
            tl.split(adata, "perturbation", **{name: "zzz"})
    with pytest.raises(KeyError, match=r"batch_key='zzz' is not a column of adata.obs .*pass one of them or None"):
        tl.split(adata, "perturbation", batch_key="zzz", time_key="zzz")
    with pytest.raises(TypeError, match=r"batch_key=\['rep'\] must be the name of one adata.obs column"):
        tl.split(adata, "perturbation", batch_key=["rep"])
    # existing columns the kind does not use are accepted (and recorded)
    s = tl.split(adata, "perturbation", batch_key="rep", time_key="day", test_conditions=["A"])
    assert s.params["batch_key"] == "rep"
    assert s.test_conditions == ["A"]


def test_to_dict_is_plain_data_when_numpy_scalars_were_passed():
    s = tl.split(_adata(), "perturbation", test_size=np.float32(0.5), random_state=np.int64(3))
    d = json.loads(json.dumps(s.to_dict()))
    assert d["params"]["random_state"] == 3
    assert d["params"]["test_size"] == pytest.approx(0.5)
