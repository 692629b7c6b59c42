"""Pseudobulk means: the same numbers whatever the storage of the matrix."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scmech.data import pseudobulk
from scmech.data._pseudobulk import library_size, normalized_mean


def test_sparse_matrices_larger_than_a_block_give_the_dense_means():
    """In-memory CSR matrices are summed in row blocks (bounded memory); the result must not depend on it."""
    rng = np.random.default_rng(0)
    n = 25_000  # more than two blocks of 10,000 rows
    x = sp.random(n, 40, density=0.2, format="csr", random_state=1, dtype=np.float32)
    x.data = np.ceil(x.data * 10)
    x = (
        x + sp.csr_matrix((np.ones(n, dtype=np.float32), (np.arange(n), np.zeros(n, dtype=int))), shape=x.shape)
    ).tocsr()
    groups = rng.choice(["a", "b", "c", "skip"], n)
    sparse = normalized_mean(x, groups, ["a", "b", "c"])
    dense = normalized_mean(x.toarray(), groups, ["a", "b", "c"])
    np.testing.assert_allclose(sparse, dense, rtol=1e-12)
    # by hand for one group: mean over its cells of counts / library size
    d = x.toarray().astype(np.float64)
    sel = groups == "b"
    np.testing.assert_allclose(sparse[1], (d[sel] / d[sel].sum(1, keepdims=True)).mean(0), rtol=1e-10)
    # a group confined to one block (the others are skipped)
    only_first = np.where(np.arange(n) < 100, "a", "none")
    np.testing.assert_allclose(
        normalized_mean(x, only_first, ["a"]), normalized_mean(x.toarray(), only_first, ["a"]), rtol=1e-12
    )


def test_second_moments_by_hand_for_counts_and_values_in_blocks():
    """``second_moment=True`` also averages squared proportions (or squared values), sparse or dense, across row
    blocks, in the same pass as the means."""
    rng = np.random.default_rng(2)
    n = 21_000  # more than two blocks
    d = rng.poisson(2.0, size=(n, 5)).astype(np.float64) + 1.0
    groups = rng.choice(["a", "b"], n)
    prop = d / d.sum(1, keepdims=True)
    for x in (d, sp.csr_matrix(d)):
        mean, m2 = normalized_mean(x, groups, ["a", "b"], second_moment=True)
        np.testing.assert_allclose(mean, normalized_mean(x, groups, ["a", "b"]), rtol=1e-12)
        np.testing.assert_allclose(m2[0], (prop[groups == "a"] ** 2).mean(0), rtol=1e-10)
        _, raw = normalized_mean(x, groups, ["a", "b"], counts=False, second_moment=True)
        np.testing.assert_allclose(raw[1], (d[groups == "b"] ** 2).mean(0), rtol=1e-10)
    # an empty group is NaN in both
    mean, m2 = normalized_mean(d, groups, ["a", "none"], second_moment=True)
    assert np.isnan(mean[1]).all()
    assert np.isnan(m2[1]).all()


@pytest.mark.parametrize("dense", [False, True])
def test_backed_adata_gives_the_in_memory_pseudobulk(tmp_path, dense):
    """Backed (on-disk) X is read in blocks of rows: library sizes and pseudobulks equal the in-memory ones."""
    rng = np.random.default_rng(4)
    n = 21_000  # more than two blocks of 10,000 rows
    x = rng.poisson(1.5, size=(n, 6)).astype(np.float32)
    x[:, 0] += 1  # no empty cell
    obs = pd.DataFrame({"g": rng.choice(["NT", "A", "B"], n)}, index=[f"c{i}" for i in range(n)])
    mem = ad.AnnData(X=x if dense else sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=[f"g{k}" for k in range(6)]))
    path = tmp_path / "screen.h5ad"
    mem.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        assert backed.isbacked
        np.testing.assert_array_equal(library_size(backed.X), x.sum(axis=1, dtype=np.float64))
        pd.testing.assert_frame_equal(pseudobulk(backed, "g"), pseudobulk(mem, "g"), rtol=1e-12)
        pd.testing.assert_frame_equal(
            pseudobulk(backed, "g", groups=["B", "NT"]), pseudobulk(mem, "g", groups=["B", "NT"]), rtol=1e-12
        )
    finally:
        backed.file.close()


def _adata(seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    x = rng.poisson(3.0, size=(60, 4)).astype(np.float32) + 1
    obs = pd.DataFrame({"g": pd.Categorical(rng.choice(["A", "B", "C"], 60))}, index=[f"c{i}" for i in range(60)])
    return ad.AnnData(X=sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=[f"gene{k}" for k in range(4)]))


def _state(adata: ad.AnnData):
    return adata.X.copy(), adata.obs.copy(), list(adata.uns.keys())


def _unchanged(adata: ad.AnnData, state) -> None:
    x, obs, uns = state
    assert (adata.X != x).nnz == 0
    pd.testing.assert_frame_equal(adata.obs, obs)
    assert list(adata.uns.keys()) == uns


@pytest.mark.parametrize("target_sum", [0, -1, np.nan, np.inf])
def test_target_sum_must_be_positive_and_finite(target_sum):
    """0 gave all-zero pseudobulks and -1 negative 'log' values."""
    adata = _adata()
    with pytest.raises(ValueError, match=rf"target_sum={target_sum!r} must be a positive finite number.*1e4"):
        pseudobulk(adata, "g", target_sum=target_sum)
    with pytest.raises(TypeError, match=r"target_sum='1e4' must be a positive number"):
        pseudobulk(adata, "g", target_sum="1e4")


def test_pseudobulk_by_hand():
    adata = _adata()
    pb = pseudobulk(adata, "g", target_sum=100)
    x = adata.X.toarray().astype(np.float64)
    sel = (adata.obs["g"] == "B").to_numpy()
    expected = np.log1p(100 * (x[sel] / x[sel].sum(1, keepdims=True)).mean(0))
    np.testing.assert_allclose(pb.loc["B"].to_numpy(), expected, rtol=1e-10)
    assert pb.index.tolist() == ["A", "B", "C"]
    # the same labels as an array or a list
    pd.testing.assert_frame_equal(pseudobulk(adata, adata.obs["g"].to_numpy(), target_sum=100), pb)
    pd.testing.assert_frame_equal(pseudobulk(adata, list(adata.obs["g"]), target_sum=100), pb)
    # a Series is matched to the cells by its index, as pandas aligns (sorted, it was read by position)
    pd.testing.assert_frame_equal(pseudobulk(adata, adata.obs["g"].sort_values(), target_sum=100), pb)
    pd.testing.assert_frame_equal(pseudobulk(adata, pd.Series(list(adata.obs["g"])), target_sum=100), pb)
    with pytest.raises(ValueError, match=r"groupby is a Series whose index is not adata.obs_names"):
        pseudobulk(adata, pd.Series(adata.obs["g"].to_numpy(), index=[f"x{i}" for i in range(adata.n_obs)]))
    with pytest.raises(ValueError, match=r"adata has no cells"):
        pseudobulk(adata[:0].copy(), "g")
    empty = pseudobulk(adata[:0].copy(), "g", groups=["A"], allow_empty=True)  # the NaN row allow_empty promises
    assert empty.index.tolist() == ["A"]
    assert empty.isna().all().all()
    with pytest.raises(ValueError, match=r"groupby has 3 labels for \d+ cells"):
        pseudobulk(adata, pd.Series(["A", "B", "A"]))


def test_missing_labels_are_refused_unless_groups_are_given():
    """NaN labels used to form a group 'nan'; as in setup_anndata they are refused, with the fix."""
    adata = _adata()
    adata.obs.loc[adata.obs_names[:3], "g"] = np.nan
    state = _state(adata)
    with pytest.raises(ValueError, match=r"adata.obs\['g'\] has 3 missing \(NaN/None\) labels.*fillna.*groups="):
        pseudobulk(adata, "g")
    labels = adata.obs["g"].astype(object).to_numpy()
    labels[3] = None
    with pytest.raises(ValueError, match=r"groupby has 4 missing \(NaN/None\) labels"):
        pseudobulk(adata, labels)
    _unchanged(adata, state)
    # with groups given, cells with a missing label belong to none of them
    pb = pseudobulk(adata, "g", groups=["B", "A"])
    kept = adata[adata.obs["g"].notna()].copy()
    pd.testing.assert_frame_equal(pb, pseudobulk(kept, "g", groups=["B", "A"]))
    # and never to a group named "nan"
    with pytest.raises(KeyError, match=r"groups \['nan'\] have no cells"):
        pseudobulk(adata, "g", groups=["nan"])


def test_groups_without_cells_raise_naming_them_and_the_available_ones():
    """groups=[..., 'FOO'] used to return a NaN row for FOO."""
    adata = _adata()
    with pytest.raises(KeyError, match=r"groups \['FOO'\] have no cells in adata.obs\['g'\] .*\['A', 'B', 'C'\]"):
        pseudobulk(adata, "g", groups=["A", "FOO"])
    with pytest.raises(KeyError, match=r"groups \['FOO'\] have no cells in groupby"):
        pseudobulk(adata, adata.obs["g"].to_numpy(), groups=["FOO"])
    pb = pseudobulk(adata, "g", groups=["A", "FOO"], allow_empty=True)
    assert pb.loc["A"].notna().all()
    assert pb.loc["FOO"].isna().all()
    with pytest.raises(TypeError, match=r"groups='A' must be a list.*groups=\['A'\]"):
        pseudobulk(adata, "g", groups="A")
    with pytest.raises(ValueError, match=r"groups has duplicated entries \['A'\]"):
        pseudobulk(adata, "g", groups=["A", "B", "A"])
    with pytest.raises(KeyError, match=r"groupby='perturbation' is not a column of adata.obs"):
        pseudobulk(adata, "perturbation")


def test_counts_true_refuses_normalised_data():
    """counts=True on log-normalised data was averaged as if it were counts."""
    adata = _adata()
    adata.layers["log"] = sp.csr_matrix(np.log1p(adata.X.toarray()))
    state = _state(adata)
    with pytest.raises(ValueError, match=r"adata.layers\['log'\] holds non-integer values.*counts=False"):
        pseudobulk(adata, "g", layer="log")
    neg = _adata()
    neg.X = neg.X.toarray() - 2
    with pytest.raises(ValueError, match=r"adata.X has \d+ negative values"):
        pseudobulk(neg, "g")
    _unchanged(adata, state)
    # counts=False averages the values as they are
    pb = pseudobulk(adata, "g", layer="log", counts=False)
    sel = (adata.obs["g"] == "A").to_numpy()
    np.testing.assert_allclose(pb.loc["A"].to_numpy(), adata.layers["log"].toarray()[sel].mean(0), rtol=1e-6)


def test_size_factors_must_be_positive():
    adata = _adata()
    adata.obs["sf"] = np.r_[0.0, np.ones(adata.n_obs - 1)]
    with pytest.raises(ValueError, match=r"obs\['sf'\] has 1 size factors that are not positive finite"):
        pseudobulk(adata, "g", size_factor_key="sf")
    with pytest.raises(ValueError, match=r"min_cells=-1 must be a non-negative integer"):
        pseudobulk(adata, "g", min_cells=-1)


def test_a_list_of_column_names_is_named_as_such():
    """A list of obs columns was read as per-cell labels, with a count mismatch as the only message."""
    adata = _adata()
    adata.obs["h"] = "x"
    with pytest.raises(ValueError, match=r"groupby has 2 labels for .* cells\. \['g', 'h'\] are obs columns"):
        pseudobulk(adata, ["g", "h"])
    with pytest.raises(ValueError, match=r"groupby has 2 labels for .* cells\.$"):
        pseudobulk(adata, ["p", "q"])
