"""Hostile input to the ``scmech`` command line, the assumption checks, the efficacy tools and their plot.

Each test pins a defect found by probing: a traceback or a library's message instead of a named argument, a
silent wrong answer, or user files and columns overwritten.
"""

from __future__ import annotations

import warnings

import matplotlib as mpl
import numpy as np
import pandas as pd
import pytest

import scmech
from scmech import tl
from scmech._cli import main

mpl.use("agg")


# ---------------------------------------------------------------------- command line
def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("seed", ["-1", "4294967296"])
def test_cli_seed_outside_numpy_range_is_an_argument_error(tmp_path, capsys, seed):
    # a negative or huge seed passed argparse and crashed with a traceback inside scmech.tl.split / lightning
    out = tmp_path / "o"
    assert main(["demo", "--quick", "--seed", seed, "--out", str(out)]) == 2
    assert "argument --seed: must be an integer from 0 to 4294967295" in _err(capsys)
    assert not out.exists()


def test_cli_threads_above_the_cpu_count_is_an_argument_error(tmp_path, capsys, monkeypatch):
    # --threads 99999 ran out of memory inside pandas (thread stacks) after the data were loaded
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert main(["demo", "--threads", "3", "--test-targets", "NOTAGENE", "--out", str(tmp_path / "o")]) == 2
    assert "argument --threads: must be at most the 2 CPUs of this machine, got '3'" in _err(capsys)


def test_cli_empty_out_is_refused(tmp_path, capsys, monkeypatch):
    # --out "" became Path("."): the demo wrote its files into the working directory
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--out", "", "--test-targets", "NOTAGENE"]) == 2
    assert "argument --out: must be a folder path, got an empty string" in _err(capsys)
    assert list(tmp_path.iterdir()) == []


def test_cli_does_not_overwrite_existing_results(tmp_path, capsys):
    # an --out folder holding metrics.csv or model/ was silently overwritten
    out = tmp_path / "project"
    (out / "model").mkdir(parents=True)
    (out / "metrics.csv").write_text("precious")
    (out / "model" / "model.pt").write_text("my weights")
    assert main(["demo", "--quick", "--epochs", "1", "--out", str(out)]) == 2
    err = _err(capsys)
    assert "already holds metrics.csv, model" in err
    assert "pass --overwrite" in err
    assert (out / "metrics.csv").read_text() == "precious"
    assert (out / "model" / "model.pt").read_text() == "my weights"
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "model"]


def test_cli_overwrite_flag_lets_existing_results_be_replaced(tmp_path, capsys):
    out = tmp_path / "project"
    out.mkdir()
    (out / "metrics.csv").write_text("old run")
    # the folder check passes; the run then stops at the (checked) target, before anything is written
    assert main(["demo", "--overwrite", "--test-targets", "NOTAGENE", "--out", str(out)]) == 2
    err = _err(capsys)
    assert "'NOTAGENE' is not a target" in err
    assert "already holds" not in err
    assert (out / "metrics.csv").read_text() == "old run"


def test_cli_out_that_is_a_file_is_left_alone(tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    assert main(["demo", "--quick", "--out", str(target)]) == 2
    assert "is an existing file, not a folder" in _err(capsys)
    assert target.read_text() == "keep me"


def test_cli_holding_out_every_target_is_one_line_error(tmp_path, capsys):
    # tl.split's ValueError escaped as a traceback
    pert = scmech.datasets.papalexi2021().obs["perturbation"].astype(str)
    targets = sorted(set(pert) - {"NT", "unassigned"})
    out = tmp_path / "o"
    assert main(["demo", "--quick", "--test-targets", ",".join(targets), "--out", str(out)]) == 2
    err = _err(capsys)
    assert "--test-targets holds out every target of the screen" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_bad_target_leaves_no_empty_output_folder(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["demo", "--quick", "--test-targets", "NOTAGENE", "--out", str(out)]) == 2
    assert "'NOTAGENE' is not a target" in _err(capsys)
    assert not out.exists()


# ---------------------------------------------------------------------- assumption checks
@pytest.fixture
def screen(rel):
    return rel.small(300)


def test_check_assumptions_refuses_huge_n_bootstrap(screen, rel):
    # n_bootstrap=10**9 ran for minutes and died in numpy with "Unable to allocate 224 GiB"
    before = rel.snapshot(screen)
    with pytest.raises(ValueError, match=r"n_bootstrap=10001 is too large: use n_bootstrap <= 10000"):
        tl.check_assumptions(screen, n_bootstrap=10_001)
    rel.assert_unchanged(screen, before)


def test_check_assumptions_refuses_n_bootstrap_that_would_not_fit(screen, monkeypatch):
    monkeypatch.setattr("scmech.tl._assumptions._validation._MAX_RESAMPLED_CELLS", 3000)
    with pytest.raises(ValueError, match=r"n_bootstrap=30 is too large: .* of the 300 cells .* n_bootstrap <= 10"):
        tl.check_assumptions(screen, n_bootstrap=30)
    assert "scmech" not in screen.uns


def test_check_assumptions_alpha_too_small_for_any_n_bootstrap(screen):
    with pytest.raises(ValueError, match=r"n_bootstrap=200 cannot give .* use alpha > 0\.0001"):
        tl.check_assumptions(screen, alpha=1e-6)


@pytest.mark.parametrize(
    ("func", "kwargs"),
    [
        (tl.check_assumptions, {"counts": "no"}),
        (tl.check_assumptions, {"copy": 1}),
        (tl.estimate_efficacy, {"counts": "no"}),
        (tl.efficacy_from_mixscape, {"counts": "False", "n_neighbors": None}),
    ],
)
def test_flags_must_be_bools(screen, func, kwargs):
    # counts="no" is truthy: the checks silently treated the data as raw counts
    name, value = next(iter(kwargs.items()))
    with pytest.raises(TypeError, match=rf"{name}={value!r} must be True or False"):
        func(screen, **kwargs)


def test_check_assumptions_refuses_raw_counts_declared_log_normalised(screen):
    # counts=False on raw counts compared cells without library-size normalisation, without a word
    with pytest.raises(ValueError, match=r"counts=False declares adata\.X log-normalised, but it holds integer"):
        tl.check_assumptions(screen, counts=False, n_bootstrap=30)


def test_check_assumptions_accepts_log_normalised_values(screen):
    import scanpy as sc

    sc.pp.normalize_total(screen, target_sum=1e4)
    sc.pp.log1p(screen)
    table = tl.check_assumptions(screen, counts=False, n_bootstrap=30)
    assert (table["assumption"] == "unique_attractor").any()


# ---------------------------------------------------------------------- efficacy
def test_estimate_efficacy_does_not_overwrite_the_perturbation_labels(screen, rel):
    before = rel.snapshot(screen)
    with pytest.raises(ValueError, match=r"key_added='perturbation' is also perturbation_key"):
        tl.estimate_efficacy(screen, key_added="perturbation")
    with pytest.raises(ValueError, match=r"key_added='batch' is also batch_key"):
        tl.estimate_efficacy(screen, batch_key="batch", key_added="batch")
    rel.assert_unchanged(screen, before)


def test_mixscape_does_not_overwrite_the_scores_it_reads(screen):
    screen.obs["p_ko"] = np.linspace(0, 1, screen.n_obs)
    with pytest.raises(ValueError, match=r"key_added='p_ko' is also score_key"):
        tl.efficacy_from_mixscape(screen, score_key="p_ko", key_added="p_ko")
    np.testing.assert_array_equal(screen.obs["p_ko"], np.linspace(0, 1, screen.n_obs))


def test_mixscape_accepts_numpy_numbers_for_untestable(screen):
    screen.obs["p_ko"] = 0.25
    eff = tl.efficacy_from_mixscape(screen, score_key="p_ko", untestable=np.float32(0.5))
    perturbed = screen.obs["perturbation"].astype(str) != "NT"
    np.testing.assert_allclose(eff[perturbed], 0.25)
    with pytest.raises(ValueError, match=r"untestable=True must be in \[0, 1\]"):
        tl.efficacy_from_mixscape(screen, score_key="p_ko", untestable=True)


@pytest.mark.parametrize(
    ("random_state", "match"),
    [(-1, r"random_state=-1 must be a non-negative integer seed"), (2**32, r"random_state=4294967296 must be below")],
)
def test_mixscape_refuses_bad_random_state(screen, random_state, match):
    # -1 died in numpy's mt19937 ("Seed must be between 0 and 2**32 - 1")
    with pytest.raises(ValueError, match=match):
        tl.efficacy_from_mixscape(screen, random_state=random_state, n_neighbors=None)
    assert "scmech_efficacy" not in screen.obs


def test_mixscape_random_state_none_uses_the_scvi_seed(screen, monkeypatch):
    # random_state=None failed with "int() argument must be ... not 'NoneType'"
    import scvi

    monkeypatch.setattr(scvi.settings, "_seed", 3, raising=False)
    a = tl.efficacy_from_mixscape(screen.copy(), random_state=None, n_neighbors=None)
    b = tl.efficacy_from_mixscape(screen.copy(), random_state=scvi.settings.seed, n_neighbors=None)
    pd.testing.assert_series_equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pval_cutoff": 2}, r"pval_cutoff=2 must be in \(0, 1\]"),
        ({"pval_cutoff": 0}, r"pval_cutoff=0 must be in \(0, 1\]"),
        ({"logfc_threshold": -1}, r"logfc_threshold=-1 must be a finite number >= 0"),
        ({"logfc_threshold": float("nan")}, r"logfc_threshold=nan must be a finite number >= 0"),
    ],
)
def test_mixscape_refuses_meaningless_marker_thresholds(screen, kwargs, match):
    # pval_cutoff=2 made every gene a marker, silently
    with pytest.raises(ValueError, match=match):
        tl.efficacy_from_mixscape(screen, n_neighbors=None, **kwargs)


def test_mixscape_refuses_nan_and_non_count_matrices(rel):
    import scanpy as sc

    adata = rel.small(300, sparse=False)
    adata.X = adata.X.astype(float)
    adata.X[5, 3] = np.nan
    # NaN went into Mixscape and an efficacy came back
    with pytest.raises(ValueError, match=r"adata\.X has 1 NaN or infinite values"):
        tl.efficacy_from_mixscape(adata, n_neighbors=None)
    adata = rel.small(300)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    # log-normalised data were normalised and logged a second time
    with pytest.raises(ValueError, match=r"holds non-integer values .* or counts=False for log-normalised"):
        tl.efficacy_from_mixscape(adata, n_neighbors=None)
    eff = tl.efficacy_from_mixscape(adata, n_neighbors=None, counts=False)
    assert ((eff >= 0) & (eff <= 1)).all()


def test_mixscape_refuses_a_view(screen):
    # writing into a view only warned (ImplicitModificationWarning) and the column landed in a detached copy
    view = screen[:200]
    with pytest.raises(ValueError, match=r"adata is a view \(200 x 30\).*Pass adata\.copy\(\) or copy=True"):
        tl.efficacy_from_mixscape(view, n_neighbors=None)
    assert "scmech_efficacy" not in screen.obs


@pytest.mark.parametrize("value", [1, True, 0.5])
def test_mixscape_classes_must_be_text(screen, value):
    # a numeric or boolean column was read as classes: every perturbed cell got efficacy 1
    screen.obs["cls"] = value
    with pytest.raises(ValueError, match=r"adata\.obs\['cls'\] holds .* values, not Mixscape classes"):
        tl.efficacy_from_mixscape(screen, class_key="cls")


def test_mixscape_classes_must_not_be_the_perturbation_labels(screen):
    screen.obs["cls"] = screen.obs["perturbation"].astype(str).replace({"G0008": "SNAP"})
    screen.obs["perturbation"] = screen.obs["cls"]
    # "SNAP" ends in "NP": its cells were read as escapers (efficacy 0)
    with pytest.raises(ValueError, match=r"repeats the perturbation labels, not Mixscape classes"):
        tl.efficacy_from_mixscape(screen, class_key="cls")


def test_mixscape_classes_read_the_last_word(screen):
    pert = screen.obs["perturbation"].astype(str)
    cls = np.where(pert == "NT", "NT", pert + " KO")
    cls[(pert == "G0008").to_numpy()] = "SNAP KO"
    cls[(pert == "G0009").to_numpy()] = "G0009 np "
    cls[(pert == "G0010").to_numpy()] = "NP"
    screen.obs["cls"] = cls
    eff = tl.efficacy_from_mixscape(screen, class_key="cls")
    expect = {"NT": 0.0, "G0008": 1.0, "G0009": 0.0, "G0010": 0.0, "G0021": 1.0, "G0009+G0021": 1.0}
    np.testing.assert_array_equal(eff.to_numpy(), pert.map(expect).to_numpy())


def test_mixscape_without_perturbed_cells_warns_nothing(screen):
    # the log line averaged an empty selection: "RuntimeWarning: Mean of empty slice"
    controls = screen[screen.obs["perturbation"] == "NT"].copy()
    controls.obs["p_ko"] = 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        eff = tl.efficacy_from_mixscape(controls, score_key="p_ko")
    assert (eff == 0).all()


# ---------------------------------------------------------------------- report and plot
@pytest.fixture
def checked(screen):
    tl.check_assumptions(screen, batch_key="batch", n_bootstrap=30)
    return screen


@pytest.mark.parametrize("value", [-1, 2.5, True])
def test_report_refuses_bad_max_subjects(checked, value):
    # 2.5 failed inside pandas ("cannot do positional indexing"); -1 named all subjects but the last
    with pytest.raises(ValueError, match=rf"max_subjects={value!r} must be a non-negative integer"):
        tl.report_assumptions(checked, max_subjects=value)


@pytest.mark.parametrize(
    ("stored", "match"),
    [
        ("not a dict", r"adata\.uns\['scmech'\] has no 'assumptions'"),
        ({"assumptions": {"params": {}}}, r"\['assumptions'\] is not a result of check_assumptions .* got dict"),
        ({"assumptions": pd.DataFrame({"a": [1]})}, r"is not a result of check_assumptions .* got DataFrame"),
    ],
)
def test_report_and_plot_name_a_broken_uns_entry(screen, stored, match):
    # AttributeError "'str' object has no attribute 'get'" and KeyError 'table' before
    screen.uns["scmech"] = stored
    with pytest.raises(KeyError, match=match):
        tl.report_assumptions(screen)
    with pytest.raises(KeyError, match=match):
        scmech.pl.assumptions(screen, show=False)


def test_report_and_plot_refuse_missing_verdicts(checked):
    table = checked.uns["scmech"]["assumptions"]["table"].copy()
    table.loc[2, "verdict"] = np.nan
    with pytest.raises(ValueError, match=r"'verdict' column has 1 missing or non-text values"):
        tl.report_assumptions(table)
    with pytest.raises(ValueError, match=r"'verdict' column has 1 missing or non-text values"):
        scmech.pl.assumptions(table, show=False)


def test_plot_into_axes_placed_by_position(checked):
    import matplotlib.pyplot as plt

    # fig.add_axes has no subplot spec: AttributeError "'NoneType' object has no attribute 'subgridspec'"
    fig = plt.figure()
    ax = fig.add_axes((0.1, 0.1, 0.5, 0.8))
    axes = scmech.pl.assumptions(checked, ax=ax, show=False)
    assert len(axes) == 5
    assert ax not in fig.axes
    for pax in axes:
        box = pax.get_position()
        assert box.x0 >= 0.09
        assert box.x1 <= 0.61
    plt.close(fig)


def test_plot_tested_row_without_finite_effect(checked):
    import matplotlib.pyplot as plt

    table = checked.uns["scmech"]["assumptions"]["table"].copy()
    row = table.index[table["verdict"].isin(["holds", "violated"])][0]
    table.loc[row, "effect"] = np.inf
    # KeyError 'why' before: the row was taken for an untested one
    axes = scmech.pl.assumptions(table, show=False)
    texts = [t.get_text() for pax in axes for t in pax.texts]
    assert any("effect inf, not drawn" in t for t in texts)
    plt.close(axes[0].figure)
