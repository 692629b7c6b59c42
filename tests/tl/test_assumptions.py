"""Assumption checks: each one flags a simulated regime that violates it and passes one that respects it."""

from __future__ import annotations

import copy as copy_mod
import re
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scmech
from scmech.data._simulate import simulate_perturbseq
from scmech.tl._assumptions import ASSUMPTIONS, CANNOT, COLUMNS, HOLDS, VIOLATED

#: resamples per test: enough for p < 0.05 (the smallest resampling p-value is 1 / 51), small enough to be fast
N_BOOT = 50
#: a small screen: 6 single targets, 2 combinations
SMALL = {"n_perturbations": 6, "n_combinations": 2, "seed": 0}
TIMES = (0.5, 1.0, 2.0, 4.0)

#: regime name -> (simulator arguments, check_assumptions keys); each assumption has a violating and a respecting one
REGIMES: dict[str, tuple[dict, dict]] = {
    # controls moved into a new medium at t = 0 relax towards its fixed point during the read-outs
    "baseline_violated": (
        {"regime": "dynamic", "media_switch_times": (0.0,), "time_points": TIMES},
        {"batch_key": "batch", "time_key": "time", "media_key": "media"},
    ),
    # controls stay in the baseline medium, at its fixed point
    "baseline_respected": (
        {"regime": "dynamic", "media_switch_times": None, "time_points": TIMES},
        {"batch_key": "batch", "time_key": "time", "media_key": "media"},
    ),
    "media_violated": ({"n_media": 2, "media_strength": 1.0}, {"batch_key": "batch", "media_key": "media"}),
    "media_respected": ({"n_media": 2, "media_strength": 0.0}, {"batch_key": "batch", "media_key": "media"}),
    # 40 % escapers next to responders: two states per perturbation (deep libraries, so that states separate)
    "attractor_violated": (
        {"escaper_fraction": 0.4, "efficacy_concentration": 50.0, "library_size_mean": 10_000.0},
        {"batch_key": "batch"},
    ),
    # the same screen without escapers: one state
    "attractor_respected": (
        {"escaper_fraction": 0.0, "efficacy_concentration": 50.0, "library_size_mean": 10_000.0},
        {"batch_key": "batch"},
    ),
    # a slow onset (tau = 2 days) read out at days 2 and 4: effects still grow
    "time_violated": (
        {"regime": "dynamic", "media_switch_times": None, "time_points": (2.0, 4.0), "onset_tau": 2.0},
        {"batch_key": "batch", "time_key": "time"},
    ),
    # an instantaneous perturbation read out at days 8 and 16, after the network has relaxed
    "time_respected": (
        {"regime": "dynamic", "media_switch_times": None, "time_points": (8.0, 16.0), "onset_tau": 0.0},
        {"batch_key": "batch", "time_key": "time"},
    ),
    # every perturbed cell shows a shared response that the controls lack: A+B carries it once, A + B twice
    "additivity_violated": ({"systematic_fraction": 1.0}, {"batch_key": "batch"}),
    # no regulation and no shared response: each knock-down changes its own target only, so effects add
    "additivity_respected": (
        {"unregulated_fraction": 1.0, "systematic_strength": 0.0},
        {"batch_key": "batch"},
    ),
}

_CACHE: dict[str, tuple] = {}


def _simulate(name: str):
    sim_kw, _ = REGIMES[name]
    return simulate_perturbseq(1500, 80, **SMALL, **sim_kw)


def _run(name: str) -> tuple:
    """Simulated screen and its check table (computed once per regime)."""
    if name not in _CACHE:
        adata = _simulate(name)
        _, keys = REGIMES[name]
        table = scmech.tl.check_assumptions(adata, n_bootstrap=N_BOOT, **keys)
        _CACHE[name] = (adata, table)
    return _CACHE[name]


def _rows(table: pd.DataFrame, assumption: str) -> pd.DataFrame:
    return table[table["assumption"] == assumption]


def _tested(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["verdict"].isin([HOLDS, VIOLATED])]


@pytest.fixture(scope="module")
def screen():
    """A small screen with everything: batches, combinations, escapers (the default simulator)."""
    return simulate_perturbseq(800, 60, n_perturbations=4, n_combinations=1, seed=3)


# ---------------------------------------------------------------------------------------------------- the checks
def test_baseline_steady_state_flags_drifting_controls():
    _, table = _run("baseline_violated")
    row = _rows(table, "baseline_steady_state").set_index("subject").loc["controls in m1"]
    assert row["verdict"] == VIOLATED
    assert row["ci_low"] > 1.0
    assert row["p_value"] < 0.05
    assert "time points of obs['time']" in row["detail"]


def test_baseline_steady_state_holds_for_controls_at_their_fixed_point():
    _, table = _run("baseline_respected")
    rows = _rows(table, "baseline_steady_state")
    assert rows["subject"].tolist() == ["controls in m0"]
    row = rows.iloc[0]
    assert row["verdict"] == HOLDS
    assert row["ci_low"] <= 1.0 <= row["ci_high"]


def test_baseline_without_time_compares_batches_and_says_so():
    with_batch_effect = simulate_perturbseq(1500, 80, **SMALL, batch_sd=0.3)
    no_batch_effect = simulate_perturbseq(1500, 80, **SMALL, batch_sd=0.0)
    verdicts = {}
    for name, adata in (("effect", with_batch_effect), ("none", no_batch_effect)):
        table = scmech.tl.check_assumptions(adata, batch_key="batch", n_bootstrap=N_BOOT)
        row = _rows(table, "baseline_steady_state").iloc[0]
        assert "batches of obs['batch']" in row["detail"]
        assert "batch effect or a drift" in row["detail"]
        verdicts[name] = row["verdict"]
    assert verdicts == {"effect": VIOLATED, "none": HOLDS}


def test_media_response_flags_controls_that_differ_between_media():
    _, table = _run("media_violated")
    row = _rows(table, "media_response").iloc[0]
    assert row["verdict"] == VIOLATED
    assert row["ci_low"] > 1.0
    assert "m0, m1" in row["detail"]


def test_media_response_holds_when_media_do_nothing():
    _, table = _run("media_respected")
    row = _rows(table, "media_response").iloc[0]
    assert row["verdict"] == HOLDS
    assert row["ci_low"] <= 1.0 <= row["ci_high"]


def _separation(rows: pd.DataFrame) -> pd.Series:
    """How many control SDs the responders sit from the controls (from the detail text)."""
    return rows["detail"].str.extract(r"the others sit ([\d.]+) control SDs away")[0].astype(float)


def test_unique_attractor_flags_escaper_mixtures():
    _, table = _run("attractor_violated")
    tested = _tested(_rows(table, "unique_attractor"))
    assert len(tested) >= 4
    flagged = tested[tested["verdict"] == VIOLATED]
    # a mixture can only be resolved where responders and escapers separate: every perturbation whose
    # responders sit >= 5 control SDs away is flagged, and these exist
    far = _separation(tested) >= 5
    assert far.any()
    assert (tested.loc[far, "verdict"] == VIOLATED).all()
    assert (flagged["ci_low"] > 0.05).all()
    # the true escaper share is 0.4, but escapers with the shared (systematic) response are not control-like,
    # so the control-like fraction lies between 0.4 x 0.4 and 0.4
    assert 0.1 < flagged["effect"].median() < 0.5


def test_unique_attractor_holds_without_escapers():
    _, table = _run("attractor_respected")
    tested = _tested(_rows(table, "unique_attractor"))
    assert len(tested) >= 4
    assert (tested["verdict"] == HOLDS).all()
    assert (tested["effect"] < 0.1).all()


def test_posterior_separates_escapers_from_responders():
    adata, _ = _run("attractor_violated")
    post = adata.uns["scmech"]["assumptions"]["posterior"]
    assert set(post.columns) == {"condition", "context", "p_perturbed"}
    assert post["p_perturbed"].between(0, 1).all()
    escaper = pd.Series(adata.uns["truth"]["cell_escaper"], index=adata.obs_names).loc[post.index]
    p = post["p_perturbed"].to_numpy()
    # AUC of P(perturbed) for responders vs escapers (Mann-Whitney)
    from scipy.stats import mannwhitneyu

    auc = mannwhitneyu(p[~escaper.to_numpy()], p[escaper.to_numpy()]).statistic / ((~escaper).sum() * escaper.sum())
    assert auc > 0.8


def test_instantaneous_perturbation_flags_growing_effects():
    _, table = _run("time_violated")
    tested = _tested(_rows(table, "instantaneous_perturbation"))
    assert len(tested) >= 4
    assert (tested["verdict"] == VIOLATED).mean() >= 0.75
    # the true share is about 0.6 for tau = 2 read out at days 2 and 4
    assert tested["effect"].median() > 0.3


def test_instantaneous_perturbation_holds_after_relaxation():
    _, table = _run("time_respected")
    tested = _tested(_rows(table, "instantaneous_perturbation"))
    assert len(tested) >= 4
    # each subject is a test at level ~alpha: allow one false flag among them
    assert (tested["verdict"] == VIOLATED).sum() <= 1
    assert abs(tested["effect"].median()) < 0.1


def test_additivity_flags_interactions():
    adata, table = _run("additivity_violated")
    rows = _rows(table, "additivity")
    assert sorted(rows["subject"]) == sorted(adata.uns["truth"]["combinations"])
    assert (rows["verdict"] == VIOLATED).all()
    assert (rows["ci_low"] > 1.0).all()


def test_additivity_holds_for_independent_targets():
    adata, table = _run("additivity_respected")
    assert np.linalg.norm(adata.uns["truth"]["interaction"].to_numpy(), axis=1).max() < 0.01
    rows = _rows(table, "additivity")
    assert len(rows) == 2
    assert (rows["verdict"] == HOLDS).all()
    assert (rows["ci_low"] <= 1.0).all()


def test_additivity_follows_the_true_genetic_interaction():
    # without the shared response, seed 2 holds one strongly interacting pair and one that barely interacts
    adata = simulate_perturbseq(1500, 80, n_perturbations=6, n_combinations=2, seed=2, systematic_strength=0.0)
    truth = np.sqrt(adata.uns["truth"]["interaction"].pow(2).sum(axis=1))
    truth.index = truth.index.str.split("|").str[0]
    assert truth.max() > 1.0
    assert truth.min() < 0.05
    rows = _rows(scmech.tl.check_assumptions(adata, batch_key="batch", n_bootstrap=N_BOOT), "additivity")
    verdict = rows.set_index("subject")["verdict"]
    assert verdict[truth.idxmax()] == VIOLATED
    assert verdict[truth.idxmin()] == HOLDS


# ---------------------------------------------------------------------------------------------------- untestable
def test_checks_that_lack_their_design_say_why(screen):
    table = scmech.tl.check_assumptions(screen.copy(), n_bootstrap=N_BOOT)
    verdict = table.drop_duplicates("assumption").set_index("assumption")["verdict"]
    assert (
        verdict["baseline_steady_state"]
        == f"{CANNOT}: no time_key or batch_key: controls were read out once, so a drift cannot be seen"
    )
    assert verdict["media_response"] == f"{CANNOT}: no media_key given"
    assert verdict["instantaneous_perturbation"] == f"{CANNOT}: no time_key given: one read-out per cell"
    assert list(table.columns) == COLUMNS
    assert set(table["assumption"]) <= set(ASSUMPTIONS)


def test_additivity_without_combinations_or_singles():
    adata = simulate_perturbseq(400, 30, n_perturbations=3, n_combinations=0, seed=1)
    table = scmech.tl.check_assumptions(adata, n_bootstrap=N_BOOT)
    assert _rows(table, "additivity")["verdict"].tolist() == [f"{CANNOT}: no combinations in the screen"]
    adata = simulate_perturbseq(400, 30, n_perturbations=3, n_combinations=1, seed=1)
    combo = adata.uns["truth"]["combinations"][0]
    single = combo.split("+")[0]
    adata = adata[adata.obs["perturbation"] != single].copy()
    table = scmech.tl.check_assumptions(adata, n_bootstrap=N_BOOT)
    assert _rows(table, "additivity")["verdict"].tolist() == [f"{CANNOT}: single(s) ['{single}'] not observed"]


def test_time_confounded_with_batch_cannot_be_tested():
    adata = simulate_perturbseq(800, 40, **SMALL, regime="dynamic", media_switch_times=None, time_points=(1.0, 2.0))
    adata.obs["batch"] = pd.Categorical(np.where(adata.obs["time"] == 1.0, "b0", "b1"))
    table = scmech.tl.check_assumptions(adata, batch_key="batch", time_key="time", n_bootstrap=N_BOOT)
    verdict = _rows(table, "baseline_steady_state")["verdict"].iloc[0]
    assert verdict.startswith(CANNOT)
    assert "time and batch are confounded" in verdict


# ---------------------------------------------------------------------------------------------------- storage
def _snapshot(adata):
    return {
        "X": adata.X.copy(),
        "obs": adata.obs.copy(),
        "var": adata.var.copy(),
        "uns": copy_mod.deepcopy({k: v for k, v in adata.uns.items() if k != "scmech"}),
        "layers": {k: v.copy() for k, v in adata.layers.items()},
        "obsm": {k: v.copy() for k, v in adata.obsm.items()},
        "obs_names": adata.obs_names.copy(),
        "var_names": adata.var_names.copy(),
    }


def _assert_unchanged(adata, snap, *, obs_added: str | None = None):
    assert (adata.X != snap["X"]).nnz == 0
    obs = adata.obs.drop(columns=[obs_added]) if obs_added else adata.obs
    pd.testing.assert_frame_equal(obs, snap["obs"])
    pd.testing.assert_frame_equal(adata.var, snap["var"])
    assert adata.obs_names.equals(snap["obs_names"])
    assert adata.var_names.equals(snap["var_names"])
    assert set(adata.layers.keys()) == set(snap["layers"])
    assert set(adata.obsm.keys()) == set(snap["obsm"])
    assert set(adata.uns.keys()) - {"scmech"} == set(snap["uns"])
    for k, v in snap["uns"].items():
        assert adata.uns[k] is not None
        if isinstance(v, pd.DataFrame):
            pd.testing.assert_frame_equal(adata.uns[k], v)


def test_results_go_to_uns_and_nothing_else_changes(screen, tmp_path):
    adata = screen.copy()
    adata.layers["counts"] = adata.X.copy()
    adata.uns["scmech"] = {"other": {"x": 1}}
    snap = _snapshot(adata)
    table = scmech.tl.check_assumptions(adata, batch_key="batch", media_key="media", n_bootstrap=N_BOOT)
    _assert_unchanged(adata, snap)
    stored = adata.uns["scmech"]["assumptions"]
    assert set(adata.uns["scmech"]) == {"other", "assumptions"}
    assert set(stored) == {"table", "posterior", "params"}
    pd.testing.assert_frame_equal(stored["table"], table)
    assert stored["params"]["batch_key"] == "batch"
    assert stored["params"]["n_bootstrap"] == N_BOOT
    assert stored["params"]["n_genes"] > 1
    assert stored["posterior"].index.isin(adata.obs_names).all()
    # other results under uns["scmech"] are kept
    assert adata.uns["scmech"]["other"] == {"x": 1}
    # the result survives a round trip through h5ad
    adata.write_h5ad(tmp_path / "a.h5ad")
    import anndata as ad

    back = ad.read_h5ad(tmp_path / "a.h5ad")
    pd.testing.assert_frame_equal(
        back.uns["scmech"]["assumptions"]["table"].reset_index(drop=True), table, check_dtype=False
    )


def test_copy_returns_a_new_object_and_leaves_the_input_alone(screen):
    adata = screen.copy()
    snap = _snapshot(adata)
    out = scmech.tl.check_assumptions(adata, batch_key="batch", n_bootstrap=N_BOOT, copy=True, key_added="a2")
    assert out is not adata
    assert "scmech" not in adata.uns
    _assert_unchanged(adata, snap)
    assert isinstance(out.uns["scmech"]["a2"]["table"], pd.DataFrame)
    assert "assumptions" not in out.uns["scmech"]


def test_same_seed_same_table_and_layer_equals_x(screen):
    adata = screen.copy()
    adata.layers["counts"] = adata.X.copy()
    t1 = scmech.tl.check_assumptions(adata, batch_key="batch", n_bootstrap=N_BOOT, random_state=1)
    t2 = scmech.tl.check_assumptions(adata, batch_key="batch", n_bootstrap=N_BOOT, random_state=1, layer="counts")
    pd.testing.assert_frame_equal(t1, t2)


def test_log_normalised_input_with_counts_false(screen):
    adata = screen.copy()
    lib = np.asarray(adata.X.sum(axis=1)).ravel()
    adata.X = sp.csr_matrix(sp.diags(1e4 / lib) @ adata.X).log1p()
    table = scmech.tl.check_assumptions(adata, batch_key="batch", counts=False, n_bootstrap=N_BOOT)
    assert adata.uns["scmech"]["assumptions"]["params"]["counts"] is False
    assert _tested(_rows(table, "baseline_steady_state")).shape[0] == 1


def test_estimate_efficacy_writes_only_its_column():
    adata, _ = _run("attractor_violated")
    adata = adata.copy()
    snap = _snapshot(adata)
    eff = scmech.tl.estimate_efficacy(adata, batch_key="batch", key_added="eta")
    _assert_unchanged(adata, snap, obs_added="eta")
    assert adata.obs["eta"].dtype == np.float64
    np.testing.assert_array_equal(adata.obs["eta"].to_numpy(), eff.to_numpy())
    assert eff.between(0, 1).all()
    is_ctrl = (adata.obs["perturbation"] == "NT").to_numpy()
    assert (eff[is_ctrl] == 0).all()
    # perturbed cells of tested perturbations get their posterior of the unique-attractor check, the others 1
    post = adata.uns["scmech"]["assumptions"]["posterior"]["p_perturbed"]
    np.testing.assert_allclose(eff.loc[post.index], post, atol=1e-12)
    untested = ~is_ctrl & ~adata.obs_names.isin(post.index)
    assert (eff[untested] == 1).all()
    out = scmech.tl.estimate_efficacy(snap_adata := adata.copy(), batch_key="batch", copy=True)
    assert "scmech_efficacy" in out.obs
    assert "scmech_efficacy" not in snap_adata.obs


# ---------------------------------------------------------------------------------------------------- report
def test_report_names_every_check_and_its_verdict():
    adata, table = _run("media_violated")
    text = scmech.tl.report_assumptions(adata)
    assert text == scmech.tl.report_assumptions(table)
    for assumption in table["assumption"].unique():
        assert ASSUMPTIONS[assumption] in text
    assert "No media response: control cells are the same in every medium: VIOLATED." in text
    assert re.search(r"Additivity: .*: \d+ (violated|holds)", text)
    assert "cannot be tested" in text  # the time check, without time_key


def test_report_lists_subjects_with_effects():
    _, table = _run("attractor_violated")
    text = scmech.tl.report_assumptions(table, max_subjects=2)
    n_flagged = int((_tested(_rows(table, "unique_attractor"))["verdict"] == VIOLATED).sum())
    line = next(s for s in text.splitlines() if s.strip().startswith("violated (unperturbed fraction)"))
    assert line.count("[") == min(n_flagged, 2)
    assert (f"+{n_flagged - 2} more" in line) == (n_flagged > 2)


# ---------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"perturbation_key": "guide_call"}, KeyError, r"perturbation_key 'guide_call' is not a column of adata\.obs"),
        ({"control_label": "non-targeting"}, ValueError, r"control_label='non-targeting'.*Pass the label"),
        ({"batch_key": "lane"}, KeyError, r"batch_key 'lane' is not a column"),
        ({"time_key": "day"}, KeyError, r"time_key 'day' is not a column"),
        ({"media_key": "medium"}, KeyError, r"media_key 'medium' is not a column"),
        ({"layer": "counts"}, KeyError, r"Layer 'counts' is not in adata\.layers.*layer=None"),
        ({"n_bootstrap": 0}, ValueError, r"n_bootstrap=0 must be a positive integer, e\.g\. n_bootstrap=200"),
        ({"n_bootstrap": 2.5}, ValueError, r"n_bootstrap=2\.5 must be a positive integer"),
        ({"n_bootstrap": 10}, ValueError, r"n_bootstrap=10 cannot give a p-value below alpha=0\.05.*>= 20"),
        ({"n_bootstrap": 19}, ValueError, r"n_bootstrap=19 cannot give a p-value below alpha=0\.05.*>= 20"),
        ({"alpha": 1.5}, ValueError, r"alpha=1\.5 must be a number in \(0, 1\)"),
        ({"key_added": ""}, ValueError, r"key_added='' must be a non-empty string"),
        ({"model": object()}, TypeError, r"model=object is not a trained scmech\.model\.SemiMechVI"),
    ],
)
def test_bad_arguments(screen, kwargs, error, match):
    adata = screen.copy()
    with pytest.raises(error, match=match):
        scmech.tl.check_assumptions(adata, **kwargs)
    assert "scmech" not in adata.uns


@pytest.mark.parametrize("random_state", [-1, 1.5, True, "0"])
def test_bad_random_state_is_refused_before_the_data_are_read(screen, random_state):
    adata = screen.copy()
    match = rf"random_state={random_state!r} must be a non-negative integer seed.*or None"
    # perturbation_key is wrong too: the seed is checked first
    with pytest.raises(ValueError, match=match):
        scmech.tl.check_assumptions(adata, perturbation_key="guide_call", random_state=random_state)
    with pytest.raises(ValueError, match=match):
        scmech.tl.estimate_efficacy(adata, perturbation_key="guide_call", random_state=random_state)
    assert "scmech" not in adata.uns


def test_random_state_none_is_scvi_seed(screen, monkeypatch):
    import scvi

    monkeypatch.setattr(scvi.settings, "_seed", 7, raising=False)
    seed = scvi.settings.seed
    a, b = screen.copy(), screen.copy()
    t_none = scmech.tl.check_assumptions(a, batch_key="batch", n_bootstrap=N_BOOT, random_state=None)
    t_seed = scmech.tl.check_assumptions(b, batch_key="batch", n_bootstrap=N_BOOT, random_state=seed)
    pd.testing.assert_frame_equal(t_none, t_seed)
    assert a.uns["scmech"]["assumptions"]["params"]["random_state"] == seed
    e_none = scmech.tl.estimate_efficacy(screen.copy(), batch_key="batch", random_state=None)
    e_seed = scmech.tl.estimate_efficacy(screen.copy(), batch_key="batch", random_state=seed)
    pd.testing.assert_series_equal(e_none, e_seed)


def test_normalised_counts_are_refused_with_the_fix(screen):
    adata = screen.copy()
    adata.X = adata.X * 0.5
    with pytest.raises(ValueError, match=r"adata\.X holds non-integer values.*counts=False"):
        scmech.tl.check_assumptions(adata)


def test_views_and_non_anndata_are_refused(screen):
    with pytest.raises(ValueError, match=r"adata is a view.*adata\.copy\(\) or copy=True"):
        scmech.tl.check_assumptions(screen[:400])
    with pytest.raises(ValueError, match=r"adata is a view"):
        scmech.tl.estimate_efficacy(screen[:400])
    with pytest.raises(TypeError, match=r"adata must be an AnnData, got DataFrame"):
        scmech.tl.check_assumptions(screen.obs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = scmech.tl.check_assumptions(screen[:400], n_bootstrap=N_BOOT, copy=True)
    assert "assumptions" in out.uns["scmech"]


def test_report_errors(screen):
    with pytest.raises(KeyError, match=r"has no 'assumptions'; run scmech\.tl\.check_assumptions"):
        scmech.tl.report_assumptions(screen)
    with pytest.raises(TypeError, match=r"got list"):
        scmech.tl.report_assumptions([1, 2])
    with pytest.raises(KeyError, match=r"lacks columns"):
        scmech.tl.report_assumptions(screen.obs)
