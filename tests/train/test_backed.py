from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import scmech
from scmech.data._checks import BackedRows, check_empty_cells_genes, check_expression, is_backed_matrix
from scmech.data._pseudobulk import normalized_mean
from scmech.model import SemiMechVI

SETUP = {"perturbation_key": "perturbation", "control_label": "NT", "batch_key": "batch"}


@pytest.fixture
def backed_path(tmp_path):
    adata = scmech.data.simulate_perturbseq(n_cells=400, n_genes=40, n_perturbations=4, n_combinations=1, seed=0)
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    del adata.uns["truth"]
    path = tmp_path / "screen.h5ad"
    adata.write_h5ad(path)
    return path, adata


def test_backed_setup_train_predict(backed_path):
    path, mem = backed_path
    adata = ad.read_h5ad(path, backed="r")
    assert adata.isbacked
    assert is_backed_matrix(adata.X)
    SemiMechVI.setup_anndata(adata, **SETUP)
    model = SemiMechVI(adata, n_latent=4, n_hidden=16)
    model.train(max_epochs=1, batch_size=64, enable_progress_bar=False)
    assert np.isfinite(model.history["elbo_train"].to_numpy(dtype=float)).all()
    # the backed matrix stays on disk: the model reads it through a lazy row selection
    x, _ = model._expression_matrix(model.adata)
    assert isinstance(x, BackedRows)
    pred = model.predict(["NT", model.trained_targets_[0]])
    assert pred.shape == (2, mem.n_vars)
    assert np.isfinite(pred.X).all()
    latent = model.get_latent_representation()
    assert latent.shape == (mem.n_obs, 4)
    adata.file.close()


def test_backed_rows_match_in_memory(backed_path):
    path, mem = backed_path
    adata = ad.read_h5ad(path, backed="r")
    rows = BackedRows(adata.X)
    idx = np.array([5, 3, 399, 0, 3, 200])
    sel = rows[idx]
    np.testing.assert_allclose(sel.toarray(), mem.X[idx].toarray())
    np.testing.assert_allclose(np.asarray(sel.sum(axis=1)).ravel(), np.asarray(mem.X[idx].sum(axis=1)).ravel())
    np.testing.assert_allclose(rows[10:20][::2].toarray(), mem.X[10:20][::2].toarray())
    mask = np.zeros(mem.n_obs, dtype=bool)
    mask[[1, 7, 8]] = True
    np.testing.assert_allclose(rows[mask].toarray(), mem.X[mask].toarray())
    labels = mem.obs["perturbation"].astype(str).to_numpy()
    groups = sorted(set(labels))
    for chunk in (7, 10_000):
        import scmech.data._checks as checks

        old = checks.CHUNK_ROWS
        checks.CHUNK_ROWS = chunk
        try:
            got = normalized_mean(BackedRows(adata.X, np.arange(mem.n_obs)), labels, groups)
        finally:
            checks.CHUNK_ROWS = old
        np.testing.assert_allclose(got, normalized_mean(mem.X, labels, groups), rtol=1e-6)
    adata.file.close()


def test_backed_checks_read_in_chunks(tmp_path):
    x = sp.random(50, 8, density=0.5, format="csr", random_state=0, dtype=np.float32)
    x.data = np.round(x.data * 10) + 1
    x = x.tolil()
    x[3, :] = 0
    x = x.tocsr()
    path = tmp_path / "bad.h5ad"
    ad.AnnData(X=x).write_h5ad(path)
    adata = ad.read_h5ad(path, backed="r")
    check_expression(adata.X, "adata.X")
    n_empty = int((np.asarray(x.sum(axis=1)).ravel() == 0).sum())
    with pytest.raises(ValueError, match=f"{n_empty} cells without any counts"):
        check_empty_cells_genes(adata.X, "adata.X")
    adata.file.close()
    x.data[0] = 0.5
    ad.AnnData(X=x).write_h5ad(path)
    adata = ad.read_h5ad(path, backed="r")
    with pytest.raises(ValueError, match="non-integer values"):
        check_expression(adata.X, "adata.X")
    adata.file.close()
