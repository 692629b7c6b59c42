"""Hostile inputs shared by the plots: ``save`` naming a folder, and empty or bare-string selections."""

from __future__ import annotations

from pathlib import Path

import matplotlib as mpl

mpl.use("agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from scmech import pl


def _results() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "model": ["M", "M", "N", "N"],
            "condition": ["p1", "p2", "p1", "p2"],
            "metric": "pearson_delta_de",
            "value": [0.5, 0.6, 0.2, 0.3],
        }
    )


def _decomposition() -> pd.DataFrame:
    rows = []
    for cond, scale in (("A", 1.0), ("B", 2.0), ("C", 0.5)):
        for comp, value in (("noise_floor", 0.1), ("confounding", 0.05), ("batch", 0.02), ("model", 0.3)):
            rows.append((cond, comp, scale * value))
        rows.append((cond, "total", scale * 0.47))
    return pd.DataFrame(rows, columns=["condition", "component", "value"])


def _network() -> pd.DataFrame:
    genes = [f"G{i}" for i in range(4)]
    return pd.DataFrame(np.arange(16.0).reshape(4, 4) - 8, index=genes, columns=genes)


def _design() -> pd.DataFrame:
    return pd.DataFrame({"NT": [10, 12], "A": [5, 0], "B": [0, 6]}, index=["b1", "b2"])


PLOTS = {
    "leaderboard": (lambda save: pl.leaderboard(_results(), show=False, save=save), "leaderboard_pearson_delta_de"),
    "error_components": (lambda save: pl.error_components(_decomposition(), show=False, save=save), "error_components"),
    "regulatory_network": (lambda save: pl.regulatory_network(_network(), show=False, save=save), "regulatory_network"),
    "design_table": (lambda save: pl.design_table(_design(), show=False, save=save), "design_table"),
}


@pytest.mark.parametrize("plot", list(PLOTS))
@pytest.mark.parametrize("form", ["figs", "figs/", "path", "absolute"])
def test_save_refuses_an_existing_folder_and_writes_nothing_beside_it(plot, form, tmp_path, monkeypatch):
    # save="figs" with a folder figs wrote ./figs.png beside it: ".png" was added before the folder check
    monkeypatch.chdir(tmp_path)
    (tmp_path / "figs").mkdir()
    save = {"figs": "figs", "figs/": "figs/", "path": Path("figs"), "absolute": tmp_path / "figs"}[form]
    draw, name = PLOTS[plot]
    shown = str(save)
    with pytest.raises(ValueError, match=r"names the existing folder") as err:
        draw(save)
    message = str(err.value)
    assert f"save={shown!r}" in message
    assert f"(e.g. save={str(Path(save) / f'{name}.png')!r})" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figs"]  # no figs.png beside the folder
    assert not list((tmp_path / "figs").iterdir())
    plt.close("all")


def test_save_refuses_a_path_ending_with_a_separator_and_saves_a_file_inside_the_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"save='new/' ends with a path separator, so it names a folder; .*new/lead"):
        pl.leaderboard(_results(), show=False, save="new/")
    assert not list(tmp_path.iterdir())
    (tmp_path / "figs").mkdir()
    pl.leaderboard(_results(), show=False, save="figs/leaderboard")  # the fix the message suggests
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figs"]
    assert [p.name for p in (tmp_path / "figs").iterdir()] == ["leaderboard.png"]
    plt.close("all")


@pytest.mark.parametrize("conditions", [[], ()])
def test_error_components_refuses_an_empty_selection(conditions):
    with pytest.raises(
        ValueError,
        match=r"conditions=(\[\]|\(\)) selects no perturbation: nothing to plot\. Pass conditions=None for all "
        r"perturbations of the decomposition, or name some \(e\.g\. conditions=\['A', 'B'\]\)",
    ):
        pl.error_components(_decomposition(), conditions=conditions, show=False)
    plt.close("all")


def test_error_components_refuses_an_empty_table():
    empty = _decomposition().iloc[:0]
    with pytest.raises(
        ValueError, match=r"The error decomposition table is empty \(0 rows, 3 columns\): nothing to plot"
    ):
        pl.error_components(empty, show=False)
    nan = _decomposition().assign(value=np.nan)
    with pytest.raises(ValueError, match=r"has no perturbation with a value \(15 rows"):
        pl.error_components(nan, show=False)
    plt.close("all")


def test_error_components_refuses_an_empty_table_stored_in_an_anndata():
    import anndata as ad

    adata = ad.AnnData(np.zeros((2, 2), dtype=np.float32))
    adata.uns["scmech"] = {"error_decomposition": {"table": _decomposition().iloc[:0]}}
    with pytest.raises(
        ValueError, match=r"adata\.uns\['scmech'\]\['error_decomposition'\]\['table'\] is empty \(0 rows"
    ):
        pl.error_components(adata, show=False)
    plt.close("all")


def test_error_components_takes_a_bare_string_as_one_perturbation():
    ax = pl.error_components(_decomposition(), conditions="B", show=False)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["B"]
    plt.close("all")
