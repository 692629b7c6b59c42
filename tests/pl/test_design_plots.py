from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("agg")
import matplotlib.pyplot as plt

from scmech.data._simulate import simulate_perturbseq
from scmech.pl._design import design_table, error_components, power_curve
from scmech.tl._design import power, recommend_batches
from scmech.tl._errors import error_decomposition

VAR = {"batch": 0.02, "bio": 1.4, "meas": 6.0, "depth": 200.0}


@pytest.fixture(scope="module")
def confounded():
    adata = simulate_perturbseq(
        3000, 60, n_perturbations=6, n_combinations=0, n_batches=3, batch_sd=0.3, design="confounded", seed=0
    )
    with pytest.warns(UserWarning, match="hold no control cells"):
        error_decomposition(adata, batch_key="batch", n_bootstrap=10, variance={"batch": 0.05})
    return adata


def test_error_components(confounded, tmp_path):
    path = tmp_path / "sub" / "components.png"
    ax = error_components(confounded, save=path)
    assert path.exists()
    assert path.stat().st_size > 5_000
    table = confounded.uns["scmech"]["error_decomposition"]["table"]
    flagged = set(table.loc[table["confounded"], "condition"])
    labels = {t.get_text(): t.get_color() for t in ax.get_yticklabels()}
    assert len(labels) == table["condition"].nunique()
    assert {k.rstrip(" *") for k in labels if k.endswith(" *")} == flagged
    assert all(c == "#b30000" for k, c in labels.items() if k.endswith(" *"))
    # largest total on top
    totals = table[table["component"] == "total"].set_index("condition")["value"]
    assert ax.get_yticklabels()[-1].get_text().rstrip(" *") == totals.idxmax()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"noise floor", "confounding", "total"} <= set(legend)
    plt.close("all")
    # the table works too, a subset in a given order, and a given axes is used
    fig, ax2 = plt.subplots()
    keep = sorted(flagged)[:2]
    out = error_components(table, conditions=keep, sort=False, ax=ax2)
    assert out is ax2
    assert [t.get_text().rstrip(" *") for t in ax2.get_yticklabels()] == keep
    # side by side on a shared y axis (the second plot sees the first one's tick labels too)
    fig, (a1, a2) = plt.subplots(1, 2, sharey=True)
    error_components(table, conditions=keep, sort=False, ax=a1)
    error_components(table, conditions=keep, sort=False, ax=a2)
    assert all(t.get_color() == "#b30000" for t in a2.get_yticklabels() if t.get_text().endswith(" *"))
    with pytest.raises(KeyError, match="'nope'"):
        error_components(confounded, key="nope")
    with pytest.raises(KeyError, match="not in the decomposition"):
        error_components(table, conditions=["G9999"])
    plt.close("all")


def test_design_table_plot(tmp_path):
    design = recommend_batches(8, n_batches=3, cells_per_batch=2000)
    ax = design_table(design, save=tmp_path / "design.png")
    assert (tmp_path / "design.png").exists()
    assert [t.get_text() for t in ax.get_yticklabels()][0] == "NT"
    numbers = [t.get_text() for t in ax.texts]
    assert len(numbers) == 9 * 3
    assert str(int(design.table.iloc[0, 0])) in numbers
    naive = design_table(design, naive=True)
    assert "·" in [t.get_text() for t in naive.texts]  # empty cells of the naive design
    timed = design_table(recommend_batches(3, 2, 3000, time_points=[0, 2]))
    assert [t.get_text() for t in timed.get_xticklabels()][0] == "batch0\nt=0"
    with pytest.raises(TypeError, match="BatchDesign"):
        design_table([1, 2])
    plt.close("all")


def test_power_curve_plots(tmp_path):
    cells = power(VAR, n_cells=[50, 200, 800, 3200])
    ax = power_curve(cells, save=tmp_path / "mde.png")
    assert ax.get_xscale() == "log"
    assert "cells per perturbation" in ax.get_xlabel()
    budget = power(VAR, budget_reads=2e7, cell_cost_reads=300, n_perturbations=20)
    ax = power_curve(budget, save=tmp_path / "budget.png")
    assert (tmp_path / "budget.png").stat().st_size > 5_000
    assert "optimum" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert ax.get_xlabel() == "reads per cell"
    ax = power_curve(power(VAR, n_cells=[100, 400, 1600], effect=[0.2, 0.4]))
    assert ax.get_ylabel() == "power"
    with pytest.raises(KeyError, match="'se2'"):
        power_curve(cells, y="se2")
    plt.close("all")


def test_power_curve_refuses_an_empty_table():
    cells = power(VAR, n_cells=[50, 200])
    with pytest.raises(ValueError, match=r"power_df is empty \(0 rows, \d+ columns\): nothing to plot"):
        power_curve(cells.iloc[:0])
    budget = power(VAR, budget_reads=2e7, cell_cost_reads=300, n_perturbations=20)
    with pytest.raises(ValueError, match="power_df is empty"):
        power_curve(budget.iloc[:0])
    with pytest.raises(ValueError, match=r"power_df\['mde'\] has no finite value"):
        power_curve(cells.assign(mde=np.nan))
    plt.close("all")


def test_design_table_refuses_tables_that_are_not_cells_per_batch_and_condition():
    with pytest.raises(ValueError, match=r"The design table is empty \(0 rows x 0 columns\)"):
        design_table(pd.DataFrame())
    with pytest.raises(ValueError, match=r"single column \['a'\]; it lacks the perturbation columns"):
        design_table(pd.DataFrame({"a": [1]}))
    with pytest.raises(TypeError, match=r"non-numeric columns \['P0'\]"):
        design_table(pd.DataFrame({"NT": [10, 10], "P0": ["x", "y"]}, index=["b0", "b1"]))
    with pytest.raises(ValueError, match=r"not cell counts .* e\.g\. -3\.0 in row 'b1', column 'P0'"):
        design_table(pd.DataFrame({"NT": [10, 10], "P0": [5, -3]}, index=["b0", "b1"]))
    with pytest.raises(ValueError, match="fill empty cells with 0"):
        design_table(pd.DataFrame({"NT": [10, 10], "P0": [5, np.nan]}, index=["b0", "b1"]))
    # a plain crosstab of cells per batch and condition is drawn
    ax = design_table(pd.DataFrame({"NT": [10, 12], "P0": [5, 0]}, index=["b0", "b1"]))
    assert [t.get_text() for t in ax.get_yticklabels()] == ["NT", "P0"]
    plt.close("all")


def test_plots_refuse_an_ax_that_is_not_an_axes():
    design = recommend_batches(4, n_batches=2, cells_per_batch=300)
    with pytest.raises(TypeError, match=r"ax must be a matplotlib Axes .*got str \('foo'\)"):
        design_table(design, ax="foo")
    with pytest.raises(TypeError, match=r"ax must be a matplotlib Axes .*got Figure"):
        power_curve(power(VAR, n_cells=[50, 200]), ax=plt.figure())
    plt.close("all")
