"""Property-based tests: malformed labels and matrices either give a correct result or a documented error.

Documented errors are :class:`ValueError`, :class:`KeyError` and :class:`TypeError` with a message; nothing may
fail deep inside torch, and no training may give a NaN loss.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scvi
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from scmech import tl
from scmech.model import SemiMechVI

DOCUMENTED = (ValueError, KeyError, TypeError)
GENES = [f"G{i:04d}" for i in range(12)]
CONTROLS = ("NT", "ctrl")
SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], derandomize=True
)

# ------------------------------------------------------------------------------------------------ strategies
_target = st.sampled_from(GENES[:6] + ["CD274"])  # CD274 is no gene of the data: an unmeasured target
_control = st.sampled_from(["NT", " NT ", "NT+NT", "NT+G0001", "G0002+NT", "nt", "ctrl"])  # "nt", "ctrl": targets
_combination = st.lists(_target, min_size=2, max_size=3, unique=True).map("+".join)
_spaced = st.sampled_from([" G0001 + G0002 ", "G0003 ", "\tG0004", "unassigned", " unassigned"])
_good = st.one_of(_target, _control, _combination, _spaced)
_bad = st.one_of(
    st.sampled_from(["", " ", "\t", "+G0001", "G0001+", "G0001++G0002", "+", "G0001+G0001", "G0001+ +G0002"]),
    st.just(None),
    st.just(np.nan),
)
_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=8)
_labels = st.tuples(
    st.lists(_good, min_size=1, max_size=20), st.lists(st.one_of(_bad, _text), max_size=2), st.randoms()
).map(lambda t: t[2].sample(t[0] + t[1], len(t[0]) + len(t[1])))


def _counts(n_cells: int, n_genes: int = len(GENES), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.poisson(3.0, size=(n_cells, n_genes)).astype(np.float32)
    x[:, 0] += 1  # no empty cells
    return x


def _outcome(fn, *args, **kwargs) -> Exception | None:
    """Run ``fn``; return the documented error it raised (anything else propagates), or ``None``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # few cells per condition, empty genes
            fn(*args, **kwargs)
    except DOCUMENTED as e:
        return e
    return None


def _expected_targets(label, controls=("NT",), unassigned=("unassigned",)) -> tuple[str, ...] | None:
    """Independent reading of a valid label: its targets, () for a control, None for unassigned cells."""
    text = str(label).strip()
    if text in unassigned:
        return None
    if text in controls:
        return ()
    parts = [p.strip() for p in text.split("+")]
    return tuple(sorted(p for p in parts if p not in controls))


# ------------------------------------------------------------------------------------------------ labels
@SETTINGS
@given(labels=_labels, sparse=st.booleans(), categorical=st.booleans())
def test_any_labels_register_correctly_or_raise_a_documented_error(labels, sparse, categorical):
    labels = ["NT", "NT", *labels]  # some controls, so that the labels themselves are what is tested
    n = len(labels)
    x = _counts(n)
    obs = pd.DataFrame({"perturbation": np.asarray(labels, dtype=object)}, index=[f"c{i}" for i in range(n)])
    if categorical:
        obs["perturbation"] = obs["perturbation"].astype("category")
    adata = ad.AnnData(sp.csr_matrix(x) if sparse else x, obs=obs, var=pd.DataFrame(index=GENES))
    before = adata.obs.copy()
    error = _outcome(SemiMechVI.setup_anndata, adata, perturbation_key="perturbation", control_label="NT")
    event("labels: " + ("error" if error else "registered"))
    if error is not None:
        assert str(error), "an error without a message"
        assert "_scmech_perturbation" not in adata.obsm  # a failed setup writes nothing
        pd.testing.assert_frame_equal(adata.obs, before)
        return
    # success: every label was valid; the registered matrix holds exactly its targets
    assert not any(lab is None or (isinstance(lab, float) and np.isnan(lab)) for lab in labels)
    pd.testing.assert_frame_equal(adata.obs[["perturbation"]], before)
    manager = SemiMechVI._get_most_recent_anndata_manager(adata, required=True)
    targets = list(manager.get_state_registry("perturbation")["targets"])
    m = adata.obsm["_scmech_perturbation"]
    for lab, row in zip(labels, m, strict=True):
        expected = _expected_targets(lab)
        got = tuple(sorted(targets[int(i)] for i in row if i >= 0))
        assert got == (expected or ()), (lab, got, expected)
        assert set(np.unique(row)) <= {-1.0, *range(len(targets))}


@SETTINGS
@given(labels=_labels)
def test_split_partitions_the_cells_or_raises_a_documented_error(labels):
    labels = ["NT", "NT", "NT", *labels]
    n = len(labels)
    adata = ad.AnnData(_counts(n), obs=pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(n)]))
    adata.var_names = GENES
    out: list = []
    error = _outcome(lambda: out.append(tl.split(adata, "perturbation", test_size=0.5, random_state=0)))
    event("split: " + ("error" if error else "split"))
    if error is not None:
        assert str(error)
        return
    s = out[0]
    train, val, test = (np.asarray(ix) for ix in s.external_indexing)
    assert not set(train) & set(test)
    assert not set(val) & set(test)
    assert not set(train) & set(val)
    read = [_expected_targets(lab) for lab in labels]
    held = set(s.test_conditions)
    assert len(test) > 0
    for i in test:
        assert read[i] is not None  # no unassigned cell is a test cell
        assert read[i] != ()  # nor a control
        assert "+".join(read[i]) in held
    for i in np.concatenate([train, val]).astype(int):
        assert read[i] is not None
        assert read[i] == () or "+".join(read[i]) not in held


# ------------------------------------------------------------------------------------------------ matrices
_entry = st.one_of(
    st.integers(0, 30).map(float),
    st.sampled_from([-1.0, 0.5, 2.25, np.nan, np.inf, -np.inf, 1e7]),
)


@st.composite
def _matrices(draw):
    n_cells, n_genes = draw(st.integers(8, 16)), draw(st.integers(3, 6))
    x = _counts(n_cells, n_genes, seed=draw(st.integers(0, 3)))
    for _ in range(draw(st.sampled_from([0, 0, 1, 2, 3]))):
        x[draw(st.integers(0, n_cells - 1)), draw(st.integers(0, n_genes - 1))] = draw(_entry)
    if draw(st.sampled_from([False, False, False, True])):
        x[draw(st.integers(0, n_cells - 1))] = 0  # an empty cell
    if draw(st.booleans()):
        x[:, draw(st.integers(0, n_genes - 1))] = 0  # an empty gene
    return x, draw(st.booleans())


def _valid_counts(x: np.ndarray) -> bool:
    return bool(np.isfinite(x).all() and (x >= 0).all() and (x == np.round(x)).all() and (x.sum(axis=1) > 0).all())


def _matrix_adata(x, sparse):
    n = x.shape[0]
    labels = (["NT"] * 4 + ["G0000"] * 4 + ["G0001"] * n)[:n]
    obs = pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(n)])
    return ad.AnnData(sp.csr_matrix(x) if sparse else x, obs=obs, var=pd.DataFrame(index=GENES[: x.shape[1]]))


@SETTINGS
@given(data=_matrices())
def test_any_matrix_registers_iff_it_holds_counts(data):
    x, sparse = data
    adata = _matrix_adata(x, sparse)
    error = _outcome(SemiMechVI.setup_anndata, adata)
    event("matrix: " + ("refused" if error else "registered"))
    if error is not None:
        assert isinstance(error, ValueError)
        assert not _valid_counts(x), f"valid counts refused: {error}"
        assert "adata.X" in str(error)
        return
    assert _valid_counts(x)


@SETTINGS
@given(data=_matrices())
def test_baselines_on_any_matrix_are_correct_or_raise(data):
    x, sparse = data
    adata = _matrix_adata(x, sparse)
    error = _outcome(tl.ControlMean.setup_anndata, adata)
    if error is not None:
        assert isinstance(error, ValueError)
        assert not _valid_counts(x)
        return
    m = tl.ControlMean(adata)
    m.train()
    pred = m.predict(["NT", "G0000"])
    ctrl = x[:4] / x[:4].sum(axis=1, keepdims=True)
    expected = np.log1p(1e4 * ctrl.mean(axis=0))
    np.testing.assert_allclose(pred.X[0], expected, rtol=1e-5)
    np.testing.assert_allclose(pred.X[1], expected, rtol=1e-5)  # the control baseline predicts no effect


@settings(max_examples=8, deadline=None, derandomize=True)
@given(data=_matrices().filter(lambda d: _valid_counts(d[0])))
def test_training_on_any_registered_matrix_gives_a_finite_loss(data):
    # huge counts (1e7), empty genes, dense or sparse: the loss stays finite
    x, sparse = data
    adata = _matrix_adata(x, sparse)
    scvi.settings.seed = 0
    assert _outcome(SemiMechVI.setup_anndata, adata) is None
    model = SemiMechVI(adata, n_latent=2, n_hidden=8, field_hidden=4)
    error = _outcome(model.train, max_epochs=2, batch_size=8, enable_progress_bar=False, train_size=1.0)
    if error is not None:  # the one documented refusal: a minibatch of a single cell
        assert adata.n_obs % 8 == 1
        assert "a minibatch holds a single cell" in str(error)
        return
    loss = model.history["elbo_train"].to_numpy(dtype=float)
    assert np.isfinite(loss).all()
    assert np.isfinite(model.predict(["G0000"]).X).all()


@pytest.mark.parametrize("value", [np.nan, np.inf, -1.0, 0.5])
def test_query_data_with_bad_values_never_give_silent_nan(value, rel, model):
    # a trained model reading query data with bad values: a documented error or finite output, never NaN
    query = rel.small(sparse=False)
    x = query.X.astype(np.float32)
    x[0, 0] = value
    query.X = x
    out: list = []
    error = _outcome(lambda: out.append(model.get_latent_representation(query)))
    if error is not None:
        assert str(error)
        return
    assert np.isfinite(out[0]).all(), f"query value {value} gave non-finite latents"
