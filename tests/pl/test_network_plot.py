"""scmech.pl.regulatory_network."""

from __future__ import annotations

import matplotlib as mpl

mpl.use("agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from scmech import pl


def _network(n: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    genes = [f"G{i}" for i in range(n)]
    mat = pd.DataFrame(rng.normal(size=(n, n)) * 0.01, index=genes, columns=genes)
    mat.loc["G3", "G0"] = 2.0  # the strongest edges
    mat.loc["G4", "G1"] = -1.5
    mat.attrs["kind"] = "jacobian"
    return mat


def test_heatmap_picks_strongest_sources_and_targets(tmp_path):
    net = _network()
    ax = pl.regulatory_network(net, n_sources=2, n_targets=3, show=False, save=tmp_path / "net.png")
    assert (tmp_path / "net.png").exists()
    xlabels = [t.get_text() for t in ax.get_xticklabels()]
    ylabels = [t.get_text() for t in ax.get_yticklabels()]
    assert xlabels == ["G0", "G1"]
    assert ylabels[:2] == ["G3", "G4"]
    img = ax.images[0]
    # symmetric colour scale, red = positive
    assert img.norm.vmin == -img.norm.vmax
    assert "jacobian" in ax.get_title()
    plt.close("all")


def test_edge_table_and_given_axes():
    net = _network()
    edges = net.stack().rename("weight").reset_index()
    edges.columns = ["target", "source", "weight"]
    fig, ax = plt.subplots()
    out = pl.regulatory_network(edges, n_sources=3, n_targets=3, ax=ax, show=False)
    assert out is ax
    plt.close(fig)


def test_bad_input():
    with pytest.raises(TypeError, match="pandas DataFrame"):
        pl.regulatory_network(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="n_sources=0 is out of range"):
        pl.regulatory_network(_network(), n_sources=0)


@pytest.mark.parametrize(
    ("table", "match"),
    [
        (
            pd.DataFrame({"x": [1]}),
            r"not a regulatory network: it lacks the column\(s\) \['source', 'target', 'weight'\].*RangeIndex",
        ),
        (
            pd.DataFrame({"source": ["G0"], "weight": [1.0]}),
            r"edge table \(it has \['source', 'weight'\]\) but lacks the column\(s\) \['target'\]",
        ),
        (
            pd.DataFrame({"G0": ["up"], "G1": [0.5]}, index=["G2"]),
            r"lacks the column\(s\) \['source', 'target', 'weight'\].*column\(s\) \['G0'\] are not numeric",
        ),
        (
            pd.DataFrame({"source": ["G0"], "target": ["G1"], "weight": ["strong"]}),
            r"network\['weight'\] must hold numbers",
        ),
    ],
)
def test_tables_that_are_not_networks_are_refused(table, match):
    plt.close("all")
    with pytest.raises(ValueError, match=match):
        pl.regulatory_network(table, show=False)
    assert not plt.get_fignums()  # refused before drawing
