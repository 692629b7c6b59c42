"""The summary figure of the assumption checks follows scanpy's plotting conventions."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

import scmech
from scmech.tl._assumptions import COLUMNS


def _table() -> pd.DataFrame:
    rows = [
        ("baseline_steady_state", "controls", "F (between / within)", 3.0, 2.5, 3.6, 0.005, "violated", ""),
        ("media_response", "controls", "F (between / within)", np.nan, np.nan, np.nan, np.nan,
         "cannot be tested: no media_key given", ""),
        ("unique_attractor", "A", "unperturbed fraction", 0.3, 0.2, 0.4, 1e-6, "violated",
         "30% ... mixture vs one shifted state: ΔBIC = 25.0 (escapers or a second attractor)"),
        ("unique_attractor", "B", "unperturbed fraction", 0.02, 0.0, 0.08, 0.4, "holds",
         "2% ... mixture vs one shifted state: ΔBIC = -4.0 (not decisive: ΔBIC <= 10)"),
        ("unique_attractor", "C", "unperturbed fraction", np.nan, np.nan, np.nan, np.nan,
         "cannot be tested: the perturbation moves cells by only 0.20 control SDs along its own direction; "
         "escapers and responders overlap", ""),
        ("additivity", "A+B", "interaction / noise", 1.1, 0.8, 1.4, 0.3, "holds", ""),
    ]  # fmt: skip
    table = pd.DataFrame([(*r[:6], r[6], 100, *r[7:]) for r in rows], columns=COLUMNS)
    return table


def test_returns_one_axes_per_panel_and_saves(tmp_path):
    table = _table()
    axes = scmech.pl.assumptions(table, show=False, save=tmp_path / "checks.png")
    assert isinstance(axes, list)
    assert len(axes) == 4  # one panel per assumption in the table, in the order of ASSUMPTIONS
    titles = [ax.get_title(loc="left") for ax in axes]
    assert titles[0].startswith("Baseline steady state")
    assert titles[-1].startswith("Additivity")
    assert (tmp_path / "checks.png").stat().st_size > 10_000
    # the unique-attractor panel: one grey row for the untested subject, then the tested ones by effect
    labels = [t.get_text() for t in axes[2].get_yticklabels()]
    assert labels == ["C", "B", "A"]
    texts = [t.get_text() for t in axes[2].texts]
    assert "ΔBIC 25.0" in texts
    assert any(t.strip().startswith("cannot be tested: cells move < 1 control SD") for t in texts)
    assert "p = 0.005" in [t.get_text() for t in axes[0].texts]
    plt.close("all")


def test_return_fig_show_and_given_ax(tmp_path, monkeypatch):
    table = _table()
    fig = scmech.pl.assumptions(table, show=False, return_fig=True)
    assert isinstance(fig, plt.Figure)
    monkeypatch.setattr(plt, "show", lambda *a, **k: None)
    assert scmech.pl.assumptions(table, show=True) is None
    fig2, (left, right) = plt.subplots(1, 2, figsize=(12, 6))
    axes = scmech.pl.assumptions(table, ax=right, show=False)
    assert all(ax.figure is fig2 for ax in axes)
    assert left in fig2.axes
    assert right not in fig2.axes
    plt.close("all")


def test_reads_from_anndata_and_rejects_missing_results():
    adata = scmech.data.simulate_perturbseq(400, 30, n_perturbations=3, n_combinations=0, seed=0)
    with pytest.raises(KeyError, match=r"has no 'assumptions'; run scmech\.tl\.check_assumptions"):
        scmech.pl.assumptions(adata, show=False)
    adata.uns["scmech"] = {"checks": {"table": _table()}}
    axes = scmech.pl.assumptions(adata, key="checks", show=False)
    assert len(axes) == 4
    with pytest.raises(ValueError, match="empty"):
        scmech.pl.assumptions(_table().iloc[:0], show=False)
    plt.close("all")


def test_assumptions_plot_refuses_an_ax_that_is_not_an_axes():
    with pytest.raises(TypeError, match=r"ax must be a matplotlib Axes .*got list"):
        scmech.pl.assumptions(_table(), ax=[1, 2])
