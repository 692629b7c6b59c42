"""Error decomposition against closed forms on pseudobulk data with known batch, cell and model error."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scmech.tl import error_decomposition, estimate_variance


def _screen(design: dict[str, list[int]], n_genes: int = 12, seed: int = 0, counts: bool = False) -> ad.AnnData:
    """Cells ``mu_p + beta_b + eps`` (log scale), or Poisson counts at rate ``exp(mu_p + beta_b)``."""
    rng = np.random.default_rng(seed)
    beta = rng.normal(0, np.sqrt(0.3), (len(design["NT"]), n_genes))
    rows, labs, bats = [], [], []
    for p, sizes in design.items():
        mu = rng.normal(2, 1, n_genes)
        for b, n in enumerate(sizes):
            if counts:
                rows.append(rng.poisson(np.exp(mu + beta[b]), (n, n_genes)).astype(float))
            else:
                rows.append(mu + beta[b] + rng.normal(0, np.sqrt(0.5), (n, n_genes)))
            labs += [p] * n
            bats += [f"b{b}"] * n
    obs = pd.DataFrame({"perturbation": labs, "batch": pd.Categorical(bats)}, index=[str(i) for i in range(len(labs))])
    adata = ad.AnnData(np.vstack(rows), obs=obs)
    adata.var_names = [f"g{i}" for i in range(n_genes)]
    return adata


def _pivot(table: pd.DataFrame) -> pd.DataFrame:
    return table.pivot(index="condition", columns="component", values="value")


def _decompose(adata: ad.AnnData, **kwargs) -> tuple[pd.DataFrame, pd.DataFrame]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = error_decomposition(adata, batch_key="batch", n_bootstrap=0, **kwargs)
    return _pivot(table), adata.uns["scmech"]["error_decomposition"]["variance"]


def test_components_match_closed_forms():
    adata = _screen({"NT": [100, 100, 0], "P1": [1, 1, 0], "P2": [2, 0, 0], "P3": [0, 0, 40]})
    comp, var = _decompose(adata, counts=False)
    cell, batch = var["cell"].to_numpy(), var["batch"].to_numpy()
    x, lab = adata.X, adata.obs["perturbation"].to_numpy()
    ctrl = x[lab == "NT"]
    means = np.stack([ctrl[:100].mean(0), ctrl[100:].mean(0)])
    assert np.allclose(batch, np.maximum(means.var(0, ddof=1) - cell / 100, 0))
    # P1: no batch with 2 cells -> the controls' cell variance; same composition as the controls
    assert comp.loc["P1", "noise_floor"] == pytest.approx(np.mean(cell / 2 + cell / 200), rel=1e-12)
    assert comp.loc["P1", "confounding"] == 0
    # P2: its own cell variance from its 2 cells; w = (1, 0, 0), u = (1/2, 1/2, 0)
    p2 = x[lab == "P2"]
    assert comp.loc["P2", "noise_floor"] == pytest.approx(np.mean((p2[0] - p2[1]) ** 2 / 4 + cell / 200), rel=1e-12)
    assert comp.loc["P2", "confounding"] == pytest.approx(np.mean(0.5 * batch), rel=1e-12)
    # P3 alone in a batch without controls: sigma2_batch (1 + sum u^2) = 1.5 sigma2_batch
    assert comp.loc["P3", "confounding"] == pytest.approx(np.mean(1.5 * batch), rel=1e-12)
    assert np.allclose(comp["total"], comp["noise_floor"] + comp["confounding"] + comp["batch"])


@pytest.mark.parametrize("target", ["delta", "expression"])
def test_prediction_total_is_observed_squared_error(target):
    adata = _screen({"NT": [80, 80], "P1": [30, 30], "P2": [50, 10]})
    genes = list(adata.var_names)
    lab, x = adata.obs["perturbation"].to_numpy(), adata.X
    ybar = {p: x[lab == p].mean(0) for p in ("NT", "P1", "P2")}
    offset = np.linspace(-0.5, 0.5, len(genes))
    frame = pd.DataFrame({p: ybar["NT"] + offset * (p != "NT") + (p == "P2") for p in ybar}, index=genes).T
    frame = frame[genes[::-1]]  # genes in another order than adata
    pred = ad.AnnData(frame.to_numpy(), obs=pd.DataFrame({"perturbation": frame.index}, index=["a", "b", "c"]))
    pred.var_names = list(frame.columns)
    comp, _ = _decompose(adata, counts=False, predictions=pred, target=target)
    for p in ("P1", "P2"):
        f = frame.loc[p, genes].to_numpy()
        err = (f - frame.loc["NT", genes].to_numpy()) - (ybar[p] - ybar["NT"]) if target == "delta" else f - ybar[p]
        assert comp.loc[p, "total"] == pytest.approx(np.mean(err**2), rel=1e-12)
        parts = comp.loc[p, ["noise_floor", "confounding", "batch", "model"]].sum()
        assert parts == pytest.approx(comp.loc[p, "total"], rel=1e-12)


def test_counts_sparse_dense_zero_genes_and_measurement_variance():
    adata = _screen({"NT": [150, 150], "P1": [50, 50]}, counts=True)
    adata.X[:, 3] = 0
    comp_d, var_d = _decompose(adata)
    sparse = adata.copy()
    sparse.X = sp.csr_matrix(sparse.X)
    comp_s, var_s = _decompose(sparse)
    pd.testing.assert_frame_equal(comp_d, comp_s)
    pd.testing.assert_frame_equal(var_d, var_s)
    assert (var_d.loc["g3"] == 0).all()
    # Poisson measurement variance by the delta method, pooled with weights n_b
    lab, bat = adata.obs["perturbation"].to_numpy(), adata.obs["batch"].astype(str).to_numpy()
    lib = adata.X.sum(1)
    z = 1e4 * adata.X / lib[:, None]
    meas = []
    for b in ("b0", "b1"):
        sel = (lab == "NT") & (bat == b)
        meas.append((z[sel] * 1e4 / lib[sel][:, None]).mean(0) / (1 + z[sel].mean(0)) ** 2)
    est = estimate_variance(adata, batch_key="batch")
    assert np.allclose(est["meas"], np.mean(meas, axis=0))
