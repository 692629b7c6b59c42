"""scmech.pl.own_gene_calibration."""

from __future__ import annotations

import matplotlib as mpl

mpl.use("agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from scmech import pl


def _table(model: str = "scale") -> pd.DataFrame:
    control = np.array([4.0, 5.0, 6.0, 2.0])
    change = np.array([-0.5, -0.4, -1.6, -0.3])
    table = pd.DataFrame(
        {
            "control_level": control,
            "observed_level": control + change,
            "observed_change": change,
            "effect": change,
            "calibrated_change": np.full(4, -0.45),
        },
        index=pd.Index(["A", "B", "STRONG", "D"], name="target"),
    )
    grid = np.linspace(0.0, 7.0, 5)
    table.attrs = {
        "model": model,
        "effect": -0.45 if model == "scale" else float("nan"),
        "level": 3.0 if model == "level" else float("nan"),
        "spread": 0.1,
        "curve": {
            "control_level": grid.tolist(),
            "change": (-0.45 + 0 * grid).tolist(),
            "low": (-0.55 + 0 * grid).tolist(),
            "high": (-0.35 + 0 * grid).tolist(),
        },
    }
    return table


def test_points_curve_band_and_labels(tmp_path):
    table = _table()
    ax = pl.own_gene_calibration(table, show=False, save=tmp_path / "own.png")
    assert (tmp_path / "own.png").exists()
    points = ax.collections[-1].get_offsets()
    np.testing.assert_allclose(points, table[["control_level", "observed_change"]].to_numpy())
    line = ax.get_lines()[0]
    np.testing.assert_allclose(line.get_xdata(), table.attrs["curve"]["control_level"])
    np.testing.assert_allclose(line.get_ydata(), table.attrs["curve"]["change"])
    assert [t.get_text() for t in ax.texts] == ["A", "B", "STRONG", "D"]
    assert "a = -0.45" in ax.get_title()
    plt.close("all")


def test_level_model_title_given_axes_and_no_labels():
    fig, ax = plt.subplots()
    out = pl.own_gene_calibration(_table("level"), annotate=False, ax=ax, show=False)
    assert out is ax
    assert not ax.texts
    assert "level 3.00" in ax.get_title()
    plt.close(fig)


def test_bad_input():
    with pytest.raises(TypeError, match="pandas DataFrame"):
        pl.own_gene_calibration(np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['observed_change'\]"):
        pl.own_gene_calibration(_table().drop(columns="observed_change"))
    no_curve = _table()
    no_curve.attrs = {}
    with pytest.raises(ValueError, match=r"lacks attrs\['curve'\]"):
        pl.own_gene_calibration(no_curve)
    with pytest.raises(ValueError, match="empty"):
        pl.own_gene_calibration(_table().iloc[:0])


@pytest.mark.parametrize(
    ("extra", "axis", "title"),
    [
        ({}, "log1p of 10⁴ × share", "scaled by e^a"),
        ({"value": "log1p(1e4 * mean normalised expression)"}, "log1p of 10⁴ × share", "scaled by e^a"),
        (
            {"value": "the registered log-normalised values, log_b(1 + expression) with base b = 2", "log_base": 2.0},
            "log2(1 + x), as registered",
            "scaled by e^a",
        ),
        (
            {"value": "the registered values (centred or scaled: no expression layer)", "scaled": False},
            "(as registered)",
            "shifted by a = -0.45",
        ),
    ],
)
def test_the_axis_names_the_scale_and_the_title_the_form(extra, axis, title):
    """Log-normalised input in base 2 was labelled log1p of 10^4 x share, and a shift was titled a scaling."""
    table = _table()
    table.attrs.update(extra)
    ax = pl.own_gene_calibration(table, show=False)
    assert axis in ax.get_xlabel()
    assert title in ax.get_title()
    plt.close("all")
