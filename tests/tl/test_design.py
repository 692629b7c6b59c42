from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pandas as pd
import pytest

from scmech.data._pseudobulk import pseudobulk
from scmech.data._simulate import simulate_perturbseq
from scmech.tl import estimate_variance
from scmech.tl._design import BatchDesign, minimal_detectable_effect, power, recommend_batches, resolve_variance

VAR = {"batch": 0.02, "cell": 7.4}
VAR_SPLIT = {"batch": 0.02, "bio": 1.4, "meas": 6.0, "depth": 200.0}


def _check_constraints(design: BatchDesign, capacity: int, min_batches: int, control: str = "NT") -> None:
    table = design.table
    assert (table >= 0).all().all()
    assert (table[control] > 0).all()  # controls in every batch (x time x medium) row
    per_batch = table.groupby(level=0).sum().sum(axis=1) if isinstance(table.index, pd.MultiIndex) else table.sum(1)
    assert per_batch.max() <= capacity
    perts = [c for c in table.columns if c != control]
    if isinstance(table.index, pd.MultiIndex):
        contexts = table.index.droplevel(0).unique()
        for ctx in contexts:
            sub = table.xs(ctx, level=list(range(1, table.index.nlevels)), drop_level=False)
            assert ((sub[perts] > 0).sum(axis=0) >= min_batches).all()
    else:
        assert ((table[perts] > 0).sum(axis=0) >= min_batches).all()
    pd.testing.assert_series_equal(
        design.cells_per_perturbation, table[perts].sum(axis=0).rename("n_cells"), check_names=False
    )


def test_design_table_constraints_and_square_root_rule():
    design = recommend_batches(25, n_batches=4, cells_per_batch=5000)
    _check_constraints(design, 5000, 2)
    assert design.table.shape == (4, 26)
    # every perturbation in every batch, in the controls' proportions
    assert (design.table > 0).all().all()
    assert design.expected_error["batch_factor"].max() < 1e-4
    # controls ~ sqrt(K) x cells per perturbation
    n_p = design.expected_error["n_cells"].mean()
    assert design.table["NT"].sum() / n_p == pytest.approx(math.sqrt(25), rel=0.02)
    assert design.control_fraction == pytest.approx(1 / (1 + 5), abs=0.005)
    # the capacity is used
    assert design.table.to_numpy().sum() > 0.99 * 4 * 5000
    # the square-root rule is bounded
    assert recommend_batches(1, 2, 1000).control_fraction == pytest.approx(0.5, abs=0.01)
    assert recommend_batches(2000, 4, 20000).control_fraction == pytest.approx(0.05, abs=0.005)
    assert recommend_batches(25, 4, 5000, control_fraction=0.3).control_fraction == pytest.approx(0.3, abs=0.01)


def test_design_with_time_points_and_media():
    design = recommend_batches(
        ["STAT1", "JAK2", "IRF1"], n_batches=3, cells_per_batch=6000, time_points=[0, 1, 3], media=["ctrl", "stim"]
    )
    assert design.table.index.names == ["batch", "time", "medium"]
    assert len(design.table) == 3 * 3 * 2
    _check_constraints(design, 6000, 2)
    ee = design.expected_error
    assert len(ee) == 3 * 3 * 2
    assert set(ee.columns) >= {"perturbation", "time", "medium", "expected_error", "naive_expected_error"}


def test_few_cells_spread_over_at_least_min_batches():
    design = recommend_batches(40, n_batches=6, cells_per_batch=40, min_batches_per_perturbation=3)
    _check_constraints(design, 40, 3)
    assert design.expected_error["n_batches"].min() >= 3
    assert any("fewer than the 6 batches" in n for n in design.notes)


def test_recommended_error_below_naive():
    design = recommend_batches(12, n_batches=4, cells_per_batch=3000, variance=VAR)
    ee = design.expected_error
    # same cells, same noise floor; the naive design adds 2 sigma2_batch outside the control batch
    np.testing.assert_array_equal(ee["n_cells"], ee["naive_n_cells"])
    np.testing.assert_allclose(ee["noise_factor"], ee["naive_noise_factor"])
    assert (ee["expected_error"] <= ee["naive_expected_error"] + 1e-12).all()
    assert ee["expected_error"].mean() < 0.5 * ee["naive_expected_error"].mean()
    outside = ee["naive_n_batches"].eq(1) & design.naive_table.iloc[0][ee["perturbation"]].eq(0).to_numpy()
    np.testing.assert_allclose(ee.loc[outside, "naive_batch_factor"], 2.0)
    assert (design.naive_table.iloc[1:]["NT"] == 0).all()
    # and the naive table has the same cells
    assert design.naive_table.to_numpy().sum() == design.table.to_numpy().sum()
    # deterministic
    again = recommend_batches(12, n_batches=4, cells_per_batch=3000, variance=VAR)
    pd.testing.assert_frame_equal(design.table, again.table)


def test_target_effect_sizes_cells_to_the_mde():
    design = recommend_batches(10, n_batches=4, cells_per_batch=5000, target_effect=0.3, variance=VAR)
    ee = design.expected_error
    assert (ee["mde"] <= 0.3 + 1e-9).all()
    n_p = int(ee["n_cells"].iloc[0])
    ratio = ee["n_controls"].iloc[0] / n_p
    # one cell fewer (same control ratio) would miss the target: the design is the smallest that reaches it
    worse = minimal_detectable_effect(VAR["cell"], n_p - 1, ratio * (n_p - 1))
    assert worse > 0.3
    assert any("Sized for target_effect=0.3" in n for n in design.notes)


def test_minimal_detectable_effect_by_hand():
    z = 1.959963984540054 + 0.8416212335729143
    assert float(minimal_detectable_effect(1.0, 400, 400)) == pytest.approx(z * math.sqrt(2 / 400))
    got = minimal_detectable_effect(2.0, [100, 400], 400, sigma2_batch=0.1, batch_factor=0.5)
    np.testing.assert_allclose(got, z * np.sqrt(2.0 * (1 / np.array([100, 400]) + 1 / 400) + 0.05))
    assert float(minimal_detectable_effect(0.0, 10, 10)) == 0.0  # no noise: every effect is detectable


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_cells": -10}, "n_cells must be positive .*got -10"),
        ({"n_cells": 0}, "n_cells must be positive .*got 0"),
        ({"n_cells": [100, 0]}, r"n_cells must be positive .*got 0 \(1 of 2 values\)"),
        ({"n_controls": -1}, "n_controls must be positive .*got -1"),
        ({"n_controls": np.nan}, "n_controls must be positive .*got nan"),
        ({"sigma2_cell": -1.0}, "sigma2_cell must be non-negative .*got -1"),
        ({"sigma2_batch": -0.5}, "sigma2_batch must be non-negative .*got -0.5"),
        ({"batch_factor": -2.0}, "batch_factor must be non-negative .*got -2"),
    ],
)
def test_minimal_detectable_effect_refuses_impossible_inputs(kwargs, match):
    args = {"sigma2_cell": 1.0, "n_cells": 10, "n_controls": 10} | kwargs
    with pytest.raises(ValueError, match=match):
        minimal_detectable_effect(args.pop("sigma2_cell"), args.pop("n_cells"), args.pop("n_controls"), **args)


def test_infeasible_requests_explain_the_fix():
    with pytest.raises(ValueError, match="min_batches_per_perturbation=3 exceeds n_batches=2"):
        recommend_batches(5, 2, 1000, min_batches_per_perturbation=3)
    with pytest.raises(ValueError, match="target_effect needs the variance terms"):
        recommend_batches(5, 2, 1000, target_effect=0.2)
    with pytest.raises(ValueError, match=r"needs >= ([\d,]+) cells per batch or >= ([\d,]+) batches") as info:
        recommend_batches(1000, 2, 500)
    per_batch, batches = (
        int(x.replace(",", "")) for x in re.search(r">= ([\d,]+) cells.*>= ([\d,]+) batches", str(info.value)).groups()
    )
    # both suggested fixes work
    _check_constraints(recommend_batches(1000, 2, per_batch), per_batch, 2)
    _check_constraints(recommend_batches(1000, batches, 500), 500, 2)
    with pytest.raises(
        ValueError, match=r"needs [\d,]+ cells per perturbation.*needs >= ([\d,]+) cells per batch"
    ) as info:
        recommend_batches(25, 4, 5000, target_effect=0.1, variance=VAR)
    per_batch = int(re.search(r"needs >= ([\d,]+) cells per batch", str(info.value)).group(1).replace(",", ""))
    design = recommend_batches(25, 4, per_batch, target_effect=0.1, variance=VAR)
    assert (design.expected_error["mde"] <= 0.1 + 1e-9).all()
    with pytest.raises(ValueError, match="perturbations contains the control label 'NT'"):
        recommend_batches(["A", "NT"], 2, 1000)
    with pytest.raises(ValueError, match=r"control_fraction=1.5 must lie in \(0, 1\)"):
        recommend_batches(5, 2, 1000, control_fraction=1.5)


# ------------------------------------------------------------------------------------------------ power


def test_mde_falls_with_cells_as_one_over_sqrt_n():
    out = power({"batch": 0.0, "cell": 2.0}, n_cells=[100, 400, 1600, 6400])
    mde = out["mde"].to_numpy()
    assert (np.diff(mde) < 0).all()
    np.testing.assert_allclose(mde[:-1] / mde[1:], 2.0)  # 4x cells, half the MDE
    # a batch mismatch sets a floor that more cells cannot pass
    floor = power({"batch": 0.05, "cell": 2.0}, n_cells=[1e3, 1e5, 1e7], batch_factor=2.0)["mde"].to_numpy()
    assert (np.diff(floor) < 0).all()
    z = 1.959963984540054 + 0.8416212335729143
    assert floor[-1] == pytest.approx(z * math.sqrt(0.1), rel=1e-3)
    # the power at the MDE is the requested power
    at = power({"batch": 0.0, "cell": 2.0}, n_cells=400, effect=float(mde[1]))
    assert at["power"].iloc[0] == pytest.approx(0.8, abs=1e-3)


def test_cells_needed_inverts_the_mde():
    need = power(VAR, effect=[0.2, 0.4], n_perturbations=25)
    assert need["n_cells"].iloc[0] > need["n_cells"].iloc[1]
    n, nc = need["n_cells"].iloc[0], need["n_controls"].iloc[0]
    assert nc == pytest.approx(5 * n, abs=6)
    assert minimal_detectable_effect(VAR["cell"], n, nc) <= 0.2
    assert minimal_detectable_effect(VAR["cell"], n - 2, 5 * (n - 2)) > 0.2
    # a batch term larger than the effect cannot be beaten with cells
    assert np.isinf(power(VAR, effect=0.1, batch_factor=2.0)["n_cells"].iloc[0])


def test_budget_optimum_inside_the_grid_and_more_cells_when_biology_dominates():
    curve = power(VAR_SPLIT, budget_reads=5e7, cell_cost_reads=400, n_perturbations=25)
    grid = curve["reads_per_cell"].to_numpy()
    best = curve.loc[curve["optimal"]].iloc[0]
    assert grid[0] < best["reads_per_cell"] < grid[-1]
    assert not curve.attrs["grid_optimum"]["at_edge"]
    r_star = curve.attrs["optimum"]["reads_per_cell"]
    assert r_star == pytest.approx(math.sqrt(400 * 200 * 6.0 / 1.4))
    step = grid[1] / grid[0]
    assert best["reads_per_cell"] / r_star == pytest.approx(1.0, abs=step - 1)  # grid optimum next to r*
    assert curve.attrs["optimum"]["expected_error"] <= curve["expected_error"].min() + 1e-15
    # more biological variance: shallower sequencing of more cells
    bio_heavy = power({**VAR_SPLIT, "bio": 14.0}, budget_reads=5e7, cell_cost_reads=400, n_perturbations=25)
    assert bio_heavy.attrs["optimum"]["n_cells"] > curve.attrs["optimum"]["n_cells"]
    assert bio_heavy.attrs["optimum"]["reads_per_cell"] < r_star
    # a pure read budget has no interior optimum: the shallowest depth wins
    pure = power(VAR_SPLIT, budget_reads=5e7)
    assert pure.attrs["grid_optimum"]["at_edge"]
    assert pure["optimal"].iloc[0]


def test_power_from_a_pilot_per_gene_and_for_a_design():
    import scmech

    pilot = scmech.datasets.papalexi2021()
    per_gene = power(pilot, n_cells=[100, 1000], per_gene=True, pilot_kwargs={"batch_key": "bio_rep"})
    assert set(per_gene.columns) == {"gene", "n_cells", "n_controls", "se", "mde"}
    assert len(per_gene) == 2 * pilot.n_vars
    wide = per_gene.pivot(index="gene", columns="n_cells", values="mde")
    np.testing.assert_allclose(wide[100] / wide[1000], math.sqrt(10))
    var = resolve_variance(pilot, pilot_kwargs={"batch_key": "bio_rep"})
    assert var["depth"] > 0
    assert var["cell"] > var["batch"] > 0
    design = recommend_batches(25, 3, 8000, variance=var["per_gene"])
    out = power(var["per_gene"], design=design)
    assert (out["mde"] <= out["naive_mde"] * (1 + 1e-5)).all()  # equal up to rounding in the control batch
    assert (out["mde"] < out["naive_mde"]).any()
    with pytest.raises(KeyError, match="pilot_kwargs"):
        power(pilot, n_cells=100)
    with pytest.raises(ValueError, match="Pass n_cells"):
        power(VAR)
    with pytest.raises(ValueError, match="pilot's depth"):
        power(VAR, budget_reads=1e7)


# ------------------------------------------------------------------------------------------------ simulator


@pytest.mark.parametrize("seed", [0, 1])
def test_spread_design_estimates_effects_better_than_confounded(seed):
    errors = {}
    for layout in ("spread", "confounded"):
        adata = simulate_perturbseq(
            4000, 100, n_perturbations=8, n_combinations=0, n_batches=4, batch_sd=0.3, design=layout, seed=seed
        )
        pb = pseudobulk(adata, "perturbation")
        truth = adata.uns["truth"]["mean_log"]
        truth = truth[truth.index.str.endswith("|m0")].rename(index=lambda k: k.split("|")[0])
        est = pb.drop(index="NT") - pb.loc["NT"]
        true = truth.loc[est.index] - truth.loc["NT"]
        errors[layout] = float(((est - true) ** 2).to_numpy().mean())
    assert errors["spread"] < 0.5 * errors["confounded"]
    # the design tool predicts the same ordering for these cell numbers
    design = recommend_batches(8, 4, 1000, variance={"batch": 0.09, "cell": 0.5})
    assert design.expected_error["expected_error"].mean() < design.expected_error["naive_expected_error"].mean()


# ------------------------------------------------------------------------------------------------ hostile input

Z = 1.959963984540054 + 0.8416212335729143


def _one_batch_pilot():
    pilot = simulate_perturbseq(n_cells=300, n_genes=30, n_perturbations=4, n_combinations=1, seed=0)
    pilot.obs["batch"] = "b0"
    return pilot


def test_power_keeps_the_batch_variance_of_a_one_batch_pilot_unknown():
    pilot, kw = _one_batch_pilot(), {"pilot_kwargs": {"batch_key": "batch"}}
    var = resolve_variance(pilot, **kw)
    assert np.isnan(var["batch"])
    cell = var["cell"]
    with pytest.warns(UserWarning, match=r"pilot has controls in 1 batch .*cannot be estimated.*se and mde .*power\("):
        out = power(pilot, n_cells=[50], batch_factor=1.0, **kw)
    assert out[["se", "mde"]].isna().all().all()
    with pytest.warns(UserWarning, match=r"cells needed .* are NaN"):
        need = power(pilot, effect=0.5, batch_factor=0.5, **kw)
    assert need[["n_cells", "n_controls"]].isna().all().all()
    with pytest.warns(UserWarning, match="cannot be estimated"):
        per_gene = power(pilot, n_cells=[50], batch_factor=1.0, per_gene=True, **kw)
    assert per_gene["mde"].isna().all()
    # a balanced comparison (batch_factor 0) needs no batch variance: exact, without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        balanced = power(pilot, n_cells=[50], **kw)
    assert balanced["mde"].iloc[0] == pytest.approx(Z * math.sqrt(cell * 2 / 50))
    # the fix named in the warning works
    given = power({"batch": 0.02, "cell": cell}, n_cells=[50], batch_factor=1.0)
    assert given["mde"].iloc[0] == pytest.approx(Z * math.sqrt(cell * 2 / 50 + 0.02))
    with pytest.warns(UserWarning, match="the variance terms give no 'batch'"):
        assert power({"cell": 1.0}, n_cells=[50], batch_factor=0.5)["mde"].isna().all()


def test_recommend_batches_keeps_the_batch_variance_of_a_one_batch_pilot_unknown():
    pilot, kw = _one_batch_pilot(), {"pilot_kwargs": {"batch_key": "batch"}}
    with pytest.warns(UserWarning, match=r"pilot has controls in 1 batch .*variance=\{'batch'"):
        design = recommend_batches(["A", "B", "C"], 3, 1000, pilot=pilot, **kw)
    assert np.isnan(design.variance["batch"])
    assert any("sigma2_batch unknown (NaN): expected_error and mde are NaN" in n for n in design.notes)
    ee = design.expected_error
    for prefix in ("", "naive_"):
        needs_batch = ee[f"{prefix}batch_factor"].to_numpy() > 0
        err = ee[f"{prefix}expected_error"].to_numpy()
        assert np.isnan(err[needs_batch]).all()
        np.testing.assert_allclose(
            err[~needs_batch], design.variance["cell"] * ee[f"{prefix}noise_factor"].to_numpy()[~needs_batch]
        )
    assert ee["naive_batch_factor"].gt(0).any()  # the naive design puts perturbations away from the controls
    # power on the design agrees row by row
    with pytest.warns(UserWarning, match="naive_mde of"):
        out = power(pilot, design=design, **kw)
    np.testing.assert_array_equal(out["naive_mde"].isna(), ee["naive_mde"].isna())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_controls": 0}, "n_controls must be finite positive .*got 0"),
        ({"n_controls": -3}, "n_controls must be finite positive .*got -3"),
        ({"n_controls": np.nan}, "n_controls must be finite positive .*got nan"),
        ({"n_controls": np.inf}, "n_controls must be finite positive .*got inf"),
        ({"batch_factor": np.nan}, "batch_factor must be finite non-negative .*got nan"),
        ({"batch_factor": -1.0}, "batch_factor must be finite non-negative .*got -1"),
        ({"batch_factor": np.inf}, "batch_factor must be finite non-negative .*got inf"),
        ({"n_perturbations": 0}, "n_perturbations must be a positive integer .*got 0"),
        ({"n_perturbations": 2.5}, "n_perturbations must be a positive integer .*got 2.5"),
    ],
)
def test_power_refuses_impossible_comparisons(kwargs, match):
    for mode in ({"n_cells": 10}, {"effect": 0.3}):
        with pytest.raises(ValueError, match=match):
            power({"cell": 0.3, "batch": 0.01}, **mode, **kwargs)


def test_budget_that_cannot_pay_for_the_cells_is_refused():
    var = {"bio": 0.2, "meas": 0.1, "batch": 0.01, "depth": 2000}
    with pytest.raises(ValueError, match=r"budget_reads=10 cannot pay for one cell .*needs budget_reads >= 2,000"):
        power(var, reads_per_cell=[1000], budget_reads=10)
    # the budget named in the message pays for one perturbation cell and one control
    ok = power(var, reads_per_cell=[1000], budget_reads=2000)
    assert ok["n_cells"].iloc[0] == 2
    assert ok["expected_error"].iloc[0] == pytest.approx((0.2 + 0.1 * 2) * 2 * 2 / 2)
    assert ok["optimal"].iloc[0]
    # depths the budget cannot pay are never optimal, with a warning
    with pytest.warns(UserWarning, match=r"cannot pay for one cell of each of the 4 perturbations .*1 of 3 depths"):
        curve = power(var, reads_per_cell=[10, 100, 1000], budget_reads=5000, n_perturbations=4)
    assert np.isnan(curve["expected_error"].iloc[2])
    assert np.isnan(curve["mde"].iloc[2])
    assert not curve["optimal"].iloc[2]
    assert curve["optimal"].sum() == 1
    share = (4 + 2) * (1 + 1 / 2)  # (K + sqrt K)(1 + 1/sqrt K)
    sigma = 0.2 + 0.1 * 2000 / np.array([10, 100])
    np.testing.assert_allclose(curve["expected_error"].iloc[:2], sigma * share / np.array([500, 50]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"reads_per_cell": [-1000]}, r"reads_per_cell must be a positive number .*got \[-1000\]"),
        ({"reads_per_cell": [np.nan]}, "reads_per_cell must be a positive number"),
        ({"budget_reads": np.nan}, "budget_reads must be a finite number > 0 .*got nan"),
        ({"budget_reads": np.inf}, "budget_reads must be a finite number > 0 .*got inf"),
        ({"cell_cost_reads": np.nan}, "cell_cost_reads must be a finite number >= 0 .*got nan"),
        ({"pilot_depth": -5}, "pilot_depth must be a finite number > 0 .*got -5"),
    ],
)
def test_budget_arguments_are_named_before_the_variance_terms(kwargs, match):
    # the variance lacks bio/meas: the bad budget argument is reported first
    args = {"budget_reads": 1e6, "pilot_depth": 2000} | kwargs
    with pytest.raises(ValueError, match=match):
        power({"cell": 0.3, "batch": 0.01}, **args)


@pytest.mark.parametrize(
    ("time_points", "match"),
    [
        ([np.nan, 2], r"time_points has 1 NaN or infinite value"),
        ([0, np.inf], r"time_points has 1 NaN or infinite value"),
        ([-1, 2], r"time_points has negative value.*min -1.*perturbation is at 0"),
    ],
)
def test_recommend_batches_refuses_bad_time_points(time_points, match):
    with pytest.raises(ValueError, match=match):
        recommend_batches(["A", "B"], 2, 100, time_points=time_points)


def test_variance_terms_that_are_not_finite_are_named():
    with pytest.raises(ValueError, match=r"variance\['cell'\] is nan \(NaN, not finite\).*Pass a finite 'cell'"):
        recommend_batches(["A", "B"], 2, 100, variance={"cell": np.nan})
    with pytest.raises(ValueError, match=r"variance\['batch'\] is inf \(not finite\)"):
        power({"cell": 1.0, "batch": np.inf}, n_cells=10)
    with pytest.raises(ValueError, match=r"variance\['depth'\] must be a number > 0 .*got nan"):
        resolve_variance({"cell": 1.0, "depth": np.nan})
    with pytest.raises(KeyError, match="variance needs 'cell'"):
        resolve_variance({"batch": 0.1})
    # NaN marks an unknown term: a resolved dict goes back in unchanged, cell from bio + meas
    var = resolve_variance({"batch": np.nan, "cell": np.nan, "bio": 0.5, "meas": 1.0})
    assert var["cell"] == 1.5
    assert np.isnan(var["batch"])
    assert resolve_variance(var)["cell"] == 1.5


@pytest.mark.parametrize("low", [0.01, 0.025, 0.05])
def test_power_at_or_below_the_test_level_is_refused(low):
    # z_{1-alpha/2} + z_power <= 0 below alpha/2 gave a negative MDE; up to alpha every effect, 0 included, reaches it
    match = rf"power={low} must lie between alpha=0.05 and 1: .*every effect.*Pass a power in \(0.05, 1\)"
    for mode in ({"n_cells": 100}, {"effect": 0.2}, {"n_cells": 100, "effect": 0.2}):
        with pytest.raises(ValueError, match=match):
            power(VAR, power=low, **mode)
    with pytest.raises(ValueError, match=match):
        minimal_detectable_effect(1.0, 100, 100, power=low)
    with pytest.raises(ValueError, match=match):
        recommend_batches(6, 3, 3000, target_effect=0.5, variance=VAR, power=low)
    # just above the level the MDE is positive and the cells needed detect the effect at that power
    mde = power(VAR, n_cells=100, power=0.06)["mde"].iloc[0]
    assert mde > 0
    need = power(VAR, effect=0.5, power=0.06)["n_cells"].iloc[0]
    assert power(VAR, n_cells=need, effect=0.5)["power"].iloc[0] >= 0.06


@pytest.mark.parametrize(("name", "value"), [("alpha", "0.05"), ("alpha", True), ("power", "0.8"), ("power", None)])
def test_power_and_alpha_must_be_numbers(name, value):
    with pytest.raises(TypeError, match=rf"{name}={re.escape(repr(value))} must be a number in \(0, 1\)"):
        power(VAR, n_cells=100, **{name: value})


def test_recommend_batches_refuses_a_control_label_among_the_generated_labels():
    match = r"control_label='P0' is also the label generated for one of perturbations=6 \(labels 'P0' to 'P5'\)"
    with pytest.raises(ValueError, match=match + r"; pass another control_label"):
        recommend_batches(6, 3, 300, control_label="P0")
    with pytest.raises(ValueError, match=r"control_label='P07' is also the label generated"):
        recommend_batches(12, 3, 900, control_label="P07")
    # a control label outside the generated ones is kept, as are given labels beside it
    design = recommend_batches(6, 3, 300, control_label="P6")
    assert design.table.columns[0] == "P6"
    assert list(design.cells_per_perturbation.index) == [f"P{i}" for i in range(6)]
    assert list(recommend_batches(["A", "B"], 2, 300, control_label="P0").cells_per_perturbation.index) == ["A", "B"]


@pytest.mark.parametrize(
    ("perturbations", "match"),
    [
        (6.0, r"perturbations=6.0 is a float; pass the number of perturbations as an integer"),
        (True, r"perturbations=True is a bool; pass the number of perturbations as an integer"),
        (np.bool_(True), r"perturbations=(np\.)?True_? is a bool"),
        (None, r"perturbations=None \(NoneType\) is neither a number nor a list of labels"),
    ],
)
def test_recommend_batches_perturbations_is_a_count_or_labels(perturbations, match):
    with pytest.raises(TypeError, match=match):
        recommend_batches(perturbations, 3, 300)
    # integers (numpy's too) stay counts
    assert len(recommend_batches(np.int64(6), 3, 300).cells_per_perturbation) == 6


# ------------------------------------------------------------------------------------------------ hostile input


def _variance_table() -> pd.DataFrame:
    genes = [f"g{i}" for i in range(4)]
    return pd.DataFrame(
        {"batch": 0.02, "cell": [0.3, 0.4, 0.5, 0.6], "mean": [5.0, 5.0, 5.0, 0.01]}, index=pd.Index(genes)
    )


def test_variance_table_of_scaled_data_is_taken():
    # the control mean of scaled log-normalised data is negative at some genes: a mean, not a variance
    pilot = simulate_perturbseq(600, 20, n_perturbations=3, n_combinations=0, seed=0)
    pilot.X = pilot.X.toarray() if hasattr(pilot.X, "toarray") else np.asarray(pilot.X, dtype=float)
    pilot.X = (np.log1p(pilot.X) - np.log1p(pilot.X).mean(0)).astype(np.float32)
    table = estimate_variance(pilot, batch_key="batch", counts=False)
    assert (table["mean"] < 0).any()
    assert np.isfinite(power(table, n_cells=[50])["mde"]).all()


def test_variance_table_terms_are_the_means_over_expressed_genes():
    # the fourth gene is below the expression threshold: the mean is over the first three
    assert resolve_variance(_variance_table())["cell"] == pytest.approx(0.4)
    table = _variance_table().assign(cell=[0.3, np.nan, 0.5, 0.6])  # a term not estimated at one gene
    assert resolve_variance(table)["cell"] == pytest.approx(0.4)


@pytest.mark.parametrize(
    ("column", "values", "err", "match"),
    [
        (
            "cell",
            [-0.3, 0.4, 0.5, 0.6],
            ValueError,
            r"'cell' column has 1 negative or infinite value\(s\) \(genes \['g0'\]\); it must be finite and >= 0",
        ),
        (
            "batch",
            [0.02, np.inf, 0.02, 0.02],
            ValueError,
            r"'batch' column has 1 negative or infinite .*genes \['g1'\]",
        ),
        ("mean", [5.0, np.inf, 5.0, 5.0], ValueError, r"'mean' column has 1 infinite value\(s\) \(genes \['g1'\]\)"),
        ("cell", [np.nan] * 4, ValueError, r"'cell' column has no value \(all NaN\)"),
        ("cell", ["a", "b", "c", "d"], TypeError, r"'cell' column is not numeric"),
    ],
)
def test_variance_table_with_impossible_terms_is_refused(column, values, err, match):
    table = _variance_table().assign(**{column: values})
    with pytest.raises(err, match=match):
        power(table, n_cells=100)
    with pytest.raises(err, match=match):
        recommend_batches(4, 3, 200, variance=table, target_effect=0.5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_batches": np.nan}, r"n_batches=nan must be a positive whole number"),
        ({"n_batches": np.inf}, r"n_batches=inf must be a positive whole number"),
        ({"n_batches": None}, r"n_batches=None must be a positive whole number"),
        ({"n_batches": True}, r"n_batches=True must be a positive whole number"),
        ({"min_batches_per_perturbation": 1.7}, r"min_batches_per_perturbation=1.7 must be a positive whole number"),
        ({"min_batches_per_perturbation": None}, r"min_batches_per_perturbation=None must be a positive whole number"),
        ({"control_fraction": "0.1"}, r"control_fraction='0.1' must lie in \(0, 1\)"),
        ({"control_fraction": np.nan}, r"control_fraction=nan must lie in \(0, 1\)"),
        ({"target_effect": "a", "variance": VAR}, r"target_effect='a' must be a positive number"),
        ({"target_effect": np.inf, "variance": VAR}, r"target_effect=inf must be a positive number"),
    ],
)
def test_recommend_batches_names_each_bad_size(kwargs, match):
    args = {"n_batches": 4, "min_batches_per_perturbation": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        recommend_batches(5, args.pop("n_batches"), 1000, **args)


def test_recommend_batches_takes_numpy_scalars_and_refuses_numpy_nan_labels():
    one = recommend_batches(3, np.int64(2), np.int64(500), time_points=np.int64(1))
    assert one.table.equals(recommend_batches(3, 2, 500, time_points=1).table)
    # whole numbers written as floats are whole numbers; a set of time points is a set of time points
    assert recommend_batches(3, 2.0, 5e2, time_points=1).table.equals(one.table)
    assert recommend_batches(3, 2, np.float64(500), time_points={0, 1}).table.equals(
        recommend_batches(3, 2, 500, time_points=[0, 1]).table
    )
    # a 0-d array is one time point; a set of media is sorted (a set's own order varies between runs)
    assert recommend_batches(3, 2, 500, time_points=np.array(1)).table.equals(one.table)
    assert recommend_batches(3, 2, 500, media={"m1", "m0"}).table.equals(
        recommend_batches(3, 2, 500, media=["m0", "m1"]).table
    )
    with pytest.raises(ValueError, match=r"perturbations has 1 missing \(None/NaN\) label"):
        recommend_batches(["A", np.float32("nan")], 2, 500)
