from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scvi

from scmech import tl
from scmech.data import pseudobulk
from scmech.model._setup import PerturbationSetupMixin

GENES = ["A", "B", "C", "D", "g1", "g2", "g3", "g4", "g5", "g6", "g7", "g8"]
LABELS = {"NT": 40, "A": 15, "B": 15, "C": 15, "D": 15, "E": 10, "A+B": 12, "C+D": 12, "unassigned": 8}


def _adata(seed: int = 0, sparse: bool = False) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    labels = np.concatenate([[k] * n for k, n in LABELS.items()])
    base = rng.gamma(2.0, 2.0, size=len(GENES))
    effects = {k: np.exp(rng.normal(0, 0.5, size=len(GENES))) for k in LABELS}
    mu = np.stack([base * effects[lab] for lab in labels])
    x = rng.poisson(mu).astype(np.float32)
    x[:, -1] += 1  # no empty cells
    obs = pd.DataFrame(
        {"perturbation": labels, "rep": np.tile(["r1", "r2"], len(labels) // 2 + 1)[: len(labels)]},
        index=[f"c{i}" for i in range(len(labels))],
    )
    out = ad.AnnData(sp.csr_matrix(x) if sparse else x, obs=obs, var=pd.DataFrame(index=GENES))
    return out


def _fit(cls, adata, split=None, **kwargs):
    cls.setup_anndata(adata, perturbation_key="perturbation", control_label="NT", batch_key="rep")
    model = cls(adata, **kwargs)
    dsk = None if split is None else {"external_indexing": split.external_indexing}
    model.train(max_epochs=3, datasplitter_kwargs=dsk, batch_size=7, plan_kwargs={}, enable_progress_bar=False)
    return model


def _fit_cells(split) -> np.ndarray:
    """The cells a pseudobulk baseline fits on: training cells and the validation cells of training conditions
    (scmech.tl.split draws validation cells from the training conditions only)."""
    return np.union1d(split.train, split.validation)


def _train_pb(adata, split):
    sub = adata[_fit_cells(split)]
    return pseudobulk(sub, "perturbation")


@pytest.fixture
def data():
    adata = _adata()
    split = tl.split(adata, "perturbation", test_conditions=["A+B", "C"], validation_size=0.2)
    return adata, split


def test_same_registration_as_semimechvi():
    for cls in (tl.ControlMean, tl.TrainMean, tl.Additive, tl.LinearModel):
        assert issubclass(cls, PerturbationSetupMixin)
        assert cls.setup_anndata.__func__ is PerturbationSetupMixin.setup_anndata.__func__


@pytest.mark.parametrize("sparse", [False, True])
def test_control_mean(sparse):
    adata = _adata(sparse=sparse)
    split = tl.split(adata, "perturbation", test_conditions=["C"], validation_size=0.2)
    model = _fit(tl.ControlMean, adata, split)
    pred = model.predict(["C", "A+B"])
    expected = _train_pb(adata, split).loc["NT"].to_numpy()
    np.testing.assert_allclose(pred.X[0], expected, rtol=1e-5)
    np.testing.assert_allclose(pred.X[1], expected, rtol=1e-5)
    assert model.is_trained_
    np.testing.assert_array_equal(model.train_indices_, _fit_cells(split))


def test_train_mean(data):
    adata, split = data
    model = _fit(tl.TrainMean, adata, split)
    pb = _train_pb(adata, split)
    perts = [c for c in pb.index if c not in ("NT", "unassigned")]
    assert set(perts) == set(split.train_conditions)
    expected = pb.loc[perts].to_numpy().mean(0)
    pred = model.predict(["C", "A+B", "Z"])  # any label gets the train mean, even an unknown target
    for row in pred.X:
        np.testing.assert_allclose(row, expected, rtol=1e-5)
    np.testing.assert_allclose(model.predict("NT").X[0], pb.loc["NT"].to_numpy(), rtol=1e-5)


def test_train_mean_precision_weights_closed_form(data):
    """weighting="precision": DerSimonian-Laird weights 1/(tau2 + mean sampling variance), computed here from cells."""
    adata, split = data
    model = _fit(tl.TrainMean, adata, split, weighting="precision")
    cells = _fit_cells(split)
    labels = adata.obs["perturbation"].to_numpy()[cells]
    x = np.asarray(adata.X)[cells].astype(np.float64)
    prop = x / x.sum(1, keepdims=True)
    perts = sorted(set(split.train_conditions))
    values, noise = [], []
    for c in perts:
        p = prop[labels == c]
        mu = p.mean(0)
        values.append(np.log1p(1e4 * mu))
        noise.append((p.var(0, ddof=1) / len(p) * (1e4 / (1 + 1e4 * mu)) ** 2).mean())
    values, noise = np.array(values), np.array(noise)
    tau2 = max(0.0, values.var(0, ddof=1).mean() - noise.mean())
    w = 1 / (tau2 + noise)
    w /= w.sum()
    order = [list(model._pb.index).index(c) - 1 for c in perts]  # rows of weights_ follow the training pseudobulk
    np.testing.assert_allclose(model.weights_[order], w, rtol=1e-6)
    np.testing.assert_allclose(model.predict("C").X[0], w @ values, rtol=1e-5)
    assert not np.allclose(w, 1 / len(w))  # the conditions differ in cells (10 to 15): the weights do too


def test_train_mean_precision_downweighs_a_noisy_perturbation():
    """Five perturbations share one response; a sixth observed in 3 cells is mostly noise and weighs little."""
    rng = np.random.default_rng(1)
    n_genes = 200
    base = rng.gamma(2.0, 3.0, size=n_genes)
    shared = np.exp(rng.normal(0, 0.4, size=n_genes))
    sizes = {"NT": 300, "P1": 200, "P2": 200, "P3": 200, "P4": 200, "P5": 200, "NOISY": 3}
    labels = np.concatenate([[k] * n for k, n in sizes.items()])
    mu = np.stack([base * (1.0 if lab == "NT" else shared) for lab in labels])
    x = rng.poisson(mu).astype(np.float32) + 1
    adata = ad.AnnData(x, obs=pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))]))
    adata.var_names = [f"g{i}" for i in range(n_genes)]
    truth = np.log1p(1e4 * (base * shared + 1) / (base * shared + 1).sum())
    fits = {}
    for weighting in ("equal", "precision"):
        tl.TrainMean.setup_anndata(adata, perturbation_key="perturbation", control_label="NT")
        m = tl.TrainMean(adata, weighting=weighting)
        m.train()
        fits[weighting] = m
    w = dict(zip(fits["precision"]._pb.index[1:], fits["precision"].weights_, strict=True))
    assert w["NOISY"] < 0.2 * min(v for k, v in w.items() if k != "NOISY")
    err = {k: np.sqrt(np.mean((np.asarray(m.predict("NEW").X[0]) - truth) ** 2)) for k, m in fits.items()}
    assert err["precision"] < 0.6 * err["equal"]


def test_train_mean_precision_on_log_normalised_values():
    """counts=False: values are averaged as they are, each condition weighed by the variance of its plain mean."""
    rng = np.random.default_rng(2)
    sizes = {"NT": 50, "P1": 60, "P2": 60, "FEW": 3}
    labels = np.concatenate([[k] * n for k, n in sizes.items()])
    x = rng.normal(1.0, 1.0, size=(len(labels), 30)).astype(np.float32)
    adata = ad.AnnData(x, obs=pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))]))
    adata.var_names = [f"g{i}" for i in range(30)]
    tl.TrainMean.setup_anndata(adata, perturbation_key="perturbation", control_label="NT", counts=False)
    model = tl.TrainMean(adata, weighting="precision")
    model.train()
    perts = list(model._pb.index[1:])
    values = np.stack([x[labels == c].mean(0) for c in perts])
    noise = np.array([(x[labels == c].var(0, ddof=1) / sizes[c]).mean() for c in perts])
    tau2 = max(0.0, values.var(0, ddof=1).mean() - noise.mean())
    w = 1 / (tau2 + noise)
    np.testing.assert_allclose(model.weights_, w / w.sum(), rtol=1e-5)
    np.testing.assert_allclose(model.predict("NEW").X[0], (w / w.sum()) @ values, rtol=1e-5, atol=1e-6)
    assert model.weights_[perts.index("FEW")] < 0.5 * model.weights_[perts.index("P1")]


def test_train_mean_precision_distrusts_a_single_cell_perturbation():
    rng = np.random.default_rng(3)
    sizes = {"NT": 40, "P1": 40, "P2": 40, "ONE": 1}
    labels = np.concatenate([[k] * n for k, n in sizes.items()])
    x = rng.poisson(5.0, size=(len(labels), 20)).astype(np.float32) + 1
    adata = ad.AnnData(x, obs=pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))]))
    adata.var_names = [f"g{i}" for i in range(20)]
    tl.TrainMean.setup_anndata(adata, perturbation_key="perturbation", control_label="NT")
    model = tl.TrainMean(adata, weighting="precision")
    model.train()
    w = dict(zip(model._pb.index[1:], model.weights_, strict=True))
    assert w["ONE"] < 0.5 * w["P1"]  # its variance is borrowed from the others, 40 times that of their means


def test_train_mean_weighting_refused():
    adata = _adata()
    tl.TrainMean.setup_anndata(adata, perturbation_key="perturbation", control_label="NT")
    with pytest.raises(ValueError, match="weighting='inverse' is not one of"):
        tl.TrainMean(adata, weighting="inverse")


def test_additive(data):
    adata, split = data
    model = _fit(tl.Additive, adata, split)
    pb = _train_pb(adata, split)
    ctrl = pb.loc["NT"].to_numpy()
    pred = model.predict(["A+B", "B+A", "D", "A+D"])
    expected = ctrl + (pb.loc["A"].to_numpy() - ctrl) + (pb.loc["B"].to_numpy() - ctrl)
    np.testing.assert_allclose(pred.X[0], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pred.X[1], expected, rtol=1e-5, atol=1e-6)
    assert list(pred.obs["perturbation"]) == ["A+B", "A+B", "D", "A+D"]
    assert not pred.obs_names.duplicated().any()
    np.testing.assert_allclose(pred.X[2], pb.loc["D"].to_numpy(), rtol=1e-5)  # seen single: its own pseudobulk
    with pytest.raises(KeyError, match=r"target\(s\) \['C'\] were not perturbed alone"):
        model.predict(["B+C"])
    # a combination seen in training is its own pseudobulk
    np.testing.assert_allclose(model.predict("C+D").X[0], pb.loc["C+D"].to_numpy(), rtol=1e-5)
    # without an explicit request, unpredictable conditions are skipped
    default = model.predict()
    assert "C" not in set(default.obs["perturbation"])
    assert "A+B" in set(default.obs["perturbation"])


def _linear_reference(adata, split, k, lam):
    """Independent implementation: sklearn PCA scores and explicit inverses."""
    from sklearn.decomposition import PCA

    pb = _train_pb(adata, split)
    pb = pb.loc[[c for c in pb.index if c != "unassigned"]]
    x = pb.to_numpy().T  # genes x conditions
    g = PCA(n_components=k, svd_solver="full").fit_transform(x)  # genes as observations, conditions centred
    genes = list(adata.var_names)
    conds = ["NT"] + [c for c in pb.index if c != "NT" and "+" not in c and c in genes]
    p = np.stack([np.zeros(k) if c == "NT" else g[genes.index(c)] for c in conds], axis=1)
    y = np.stack([pb.loc[c].to_numpy() - pb.loc["NT"].to_numpy() for c in conds], axis=1)
    b = y.mean(1, keepdims=True)
    w = np.linalg.inv(g.T @ g + lam * np.eye(k)) @ g.T @ (y - b) @ p.T @ np.linalg.inv(p @ p.T + lam * np.eye(k))

    def predict(targets):
        pv = sum((g[genes.index(t)] for t in targets), np.zeros(k))
        return g @ w @ pv + b[:, 0] + pb.loc["NT"].to_numpy()

    return predict


def test_linear_model_matches_numpy(data):
    adata, split = data
    model = _fit(tl.LinearModel, adata, split, n_components=3, ridge=0.1)
    ref = _linear_reference(adata, split, 3, 0.1)
    pred = model.predict(["C", "A+B", "NT"])
    np.testing.assert_allclose(pred.X[0], ref(["C"]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pred.X[1], ref(["A", "B"]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pred.X[2], ref([]), rtol=1e-4, atol=1e-5)
    # training conditions fitted: control and measured singles (E is not a gene, combinations left out)
    assert model.fit_conditions_ == ["NT", "A", "B", "D"]
    with pytest.raises(KeyError, match="not genes of the data"):
        model.predict(["E"])


def test_linear_model_varm_embedding(data):
    adata, split = data
    rng = np.random.default_rng(1)
    adata.varm["emb"] = rng.normal(size=(adata.n_vars, 4))
    model = _fit(tl.LinearModel, adata, split, gene_embedding="emb", ridge=0.5)
    np.testing.assert_array_equal(model.gene_embedding_, adata.varm["emb"])
    pred = model.predict(["C"])
    g = adata.varm["emb"]
    np.testing.assert_allclose(
        pred.X[0],
        g @ model.coef_ @ g[2] + model.center_ + _train_pb(adata, split).loc["NT"].to_numpy(),
        rtol=1e-5,
        atol=1e-6,
    )
    with pytest.raises(KeyError, match="'missing'"):
        tl.LinearModel(adata, gene_embedding="missing")


@pytest.mark.parametrize(("form", "base"), [("log1p", None), ("log1p", 2), ("log1p", 10), ("centred", None)])
def test_the_expression_layer_follows_the_scale_of_log_normalised_input(form, base):
    """``sc.pp.log1p(adata, base=2)``: a prediction of 3 stands for an expression of 2**3 - 1 = 7, not e**3 - 1;
    centred values stand for no expression, and get no layer."""
    adata = _adata()
    x = np.log1p(1e4 * adata.X / adata.X.sum(1, keepdims=True)) / np.log(base or np.e)
    adata.X = (x - x.mean(0) if form == "centred" else x).astype(np.float32)
    if base is not None:
        adata.uns["log1p"] = {"base": base}
    tl.TrainMean.setup_anndata(adata, perturbation_key="perturbation", control_label="NT", counts=False)
    model = tl.TrainMean(adata)
    model.train()
    pred = model.predict(["A", "E"])
    value = pred.uns["scmech"]["prediction"]["value"]
    if form == "centred":
        assert "expression" not in pred.layers
        assert "no expression layer" in value
        return
    b = base or np.e
    np.testing.assert_allclose(pred.layers["expression"], b ** np.asarray(pred.X, dtype=np.float64) - 1, rtol=1e-4)
    assert value.endswith(f"base b = {'e' if base is None else base}")


@pytest.mark.parametrize(
    "cls", [tl.ControlMean, tl.TrainMean, tl.Additive, tl.LinearModel, tl.OwnGene, tl.TargetClassMean]
)
def test_prediction_layout(cls, data, prediction_obs):
    adata, split = data
    model = _fit(cls, adata, split)
    conds = ["A+B"] if cls is not tl.Additive else ["A+B", "D"]
    pred = model.predict(conds)
    assert pred.shape == (len(conds), adata.n_vars)
    assert pred.X.dtype == np.float32
    np.testing.assert_allclose(pred.layers["expression"], np.expm1(pred.X), rtol=1e-5)
    assert list(pred.obs.columns) == [*prediction_obs, "anchored"]
    for c in ("perturbation", "media", "batch"):
        assert isinstance(pred.obs[c].dtype, pd.CategoricalDtype)
    assert pred.obs["n_cells"].dtype == np.int64
    assert list(pred.var_names) == list(adata.var_names)
    assert pred.uns["scmech"]["prediction"]["model"] == cls.__name__
    assert list(pred.obs_names) == conds
    if cls is not tl.Additive:
        assert pred.obs.loc["A+B", "unseen_targets"] == ""  # A and B were perturbed alone in training
    with pytest.raises(NotImplementedError, match="return_mean=True"):
        model.predict(conds, return_mean=False)


def test_untrained_and_errors(data):
    adata, split = data
    tl.TrainMean.setup_anndata(adata)
    model = tl.TrainMean(adata)
    with pytest.raises(RuntimeError, match="train"):
        model.predict(["A"])
    with pytest.raises(ValueError, match="outside"):
        model.train(datasplitter_kwargs={"external_indexing": [np.array([10_000]), [], []]})
    no_ctrl = np.flatnonzero(adata.obs["perturbation"] != "NT")
    with pytest.raises(ValueError, match="No control cells"):
        model.train(datasplitter_kwargs={"external_indexing": [no_ctrl, [], []]})
    with pytest.raises(NotImplementedError, match="not saved"):
        model.save("somewhere")
    # the sets are checked as SemiMechVI.train checks them: a test cell is never fitted on
    n = adata.n_obs
    test = np.flatnonzero(adata.obs["perturbation"] == "A")
    for ext, match in (
        ([np.arange(n), [], test], r"external_indexing\[0\] and external_indexing\[2\] share cells"),
        ([np.arange(5), [], [], [6]], r"a list of up to three sets"),
        (np.arange(n).reshape(2, -1), r"a list of up to three sets"),
        ({0: np.arange(5)}, r"a list of up to three sets"),
        ([np.ones(n, dtype=bool)], r"external_indexing\[0\] is a boolean mask"),
    ):
        with pytest.raises(ValueError, match=match):
            model.train(datasplitter_kwargs={"external_indexing": ext})


@pytest.mark.parametrize(
    "cls", [tl.ControlMean, tl.TrainMean, tl.Additive, tl.LinearModel, tl.OwnGene, tl.TargetClassMean]
)
def test_held_out_cells_never_influence_the_fit(cls, data):
    adata, split = data
    a1 = adata.copy()
    a2 = adata.copy()
    rng = np.random.default_rng(5)
    held = split.test
    a2.X[held] = rng.poisson(20, size=(len(held), a2.n_vars)).astype(np.float32) + 1
    conds = ["A+B", "C"] if cls is not tl.Additive else ["A+B"]
    p1 = _fit(cls, a1, split).predict(conds)
    p2 = _fit(cls, a2, split).predict(conds)
    np.testing.assert_array_equal(p1.X, p2.X)
    # validation cells of a condition without training cells never count either
    a3 = adata.copy()
    design_labels = a3.obs["perturbation"].to_numpy()
    extra = np.flatnonzero(design_labels == "C")  # a held-out condition, handed over as validation cells
    a4 = a3.copy()
    a4.X[extra] = rng.poisson(20, size=(len(extra), a4.n_vars)).astype(np.float32) + 1
    as_validation = [split.train, np.union1d(split.validation, extra), np.setdiff1d(split.test, extra)]
    for a in (a3, a4):
        cls.setup_anndata(a, perturbation_key="perturbation", control_label="NT", batch_key="rep")
    q3, q4 = cls(a3), cls(a4)
    for q in (q3, q4):
        q.train(datasplitter_kwargs={"external_indexing": as_validation})
    np.testing.assert_array_equal(q3.predict(conds).X, q4.predict(conds).X)
    # without a split the held-out (and validation) cells do count
    a5 = adata.copy()
    both = np.concatenate([split.test, split.validation])
    a5.X[both] = rng.poisson(20, size=(len(both), a5.n_vars)).astype(np.float32) + 1
    p3 = _fit(cls, a5).predict(conds)
    assert not np.allclose(p1.X, p3.X) or cls is tl.Additive


@pytest.mark.parametrize("statistic", ["mode", "median", "mean"])
def test_own_gene_is_the_train_mean_with_the_calibrated_own_gene_change(data, statistic):
    adata, split = data
    model = _fit(tl.OwnGene, adata, split, statistic=statistic)
    pb = _train_pb(adata, split)
    singles = [c for c in pb.index if c in GENES]  # training single targets whose gene is measured
    assert sorted(singles) == ["A", "B", "D"]
    changes = [pb.loc[c, c] - pb.loc["NT", c] for c in singles]
    # three changes: the mode is the mean of the two closest (half-sample mode), the median the middle one
    closest = sorted(changes)
    pair = closest[:2] if closest[1] - closest[0] <= closest[2] - closest[1] else closest[1:]
    own = {"mode": np.mean(pair), "median": np.median(changes), "mean": np.mean(changes)}[statistic]
    assert model.own_change_ == pytest.approx(own, rel=1e-6)
    mean = pb.loc[[c for c in pb.index if c != "NT"]].to_numpy().mean(0)
    pred = model.predict(["C", "E", "A+B"])
    expected = mean.copy()
    expected[GENES.index("C")] = pb.loc["NT", "C"] + own
    np.testing.assert_allclose(pred.X[0], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pred.X[1], mean, rtol=1e-5, atol=1e-5)  # E is not a measured gene
    combo = mean.copy()
    for g in ("A", "B"):
        combo[GENES.index(g)] = pb.loc["NT", g] + own
    np.testing.assert_allclose(pred.X[2], combo, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="statistic='mad' is not one of 'mode', 'median', 'mean'"):
        tl.OwnGene(adata, statistic="mad")


def test_own_gene_on_the_precision_weighted_mean(data):
    # the weighted train mean everywhere but at the held-out target's own gene, which gets the calibrated change
    adata, split = data
    weighted = _fit(tl.TrainMean, adata, split, weighting="precision")
    model = _fit(tl.OwnGene, adata, split, weighting="precision")
    plain = _fit(tl.OwnGene, adata, split)
    assert model.own_change_ == pytest.approx(plain.own_change_)
    np.testing.assert_allclose(model.weights_, weighted.weights_)
    pred, mean = model.predict(["C", "E"]), weighted.predict(["C", "E"])
    c = GENES.index("C")
    others = np.arange(len(GENES)) != c
    np.testing.assert_allclose(pred.X[0, others], mean.X[0, others], rtol=1e-5, atol=1e-5)
    assert pred.X[0, c] == pytest.approx(_train_pb(adata, split).loc["NT", "C"] + model.own_change_, abs=1e-5)
    np.testing.assert_allclose(pred.X[1], mean.X[1], rtol=1e-5, atol=1e-5)  # E is not a measured gene
    assert not np.allclose(pred.X[1], plain.predict(["E"]).X[0])
    assert "precision-weighted train mean plus the mode" in model._model_summary_string
    with pytest.raises(ValueError, match="weighting='median' is not one of"):
        tl.OwnGene(adata, weighting="median")


def test_own_gene_enforces_the_sign_of_the_modality(data, caplog):
    adata, split = data
    tl.OwnGene.setup_anndata(
        adata, perturbation_key="perturbation", control_label="NT", perturbation_modality="CRISPRa"
    )
    model = tl.OwnGene(adata, statistic="median")
    model.train(datasplitter_kwargs={"external_indexing": split.external_indexing})
    pb = _train_pb(adata, split)
    own = float(np.median([pb.loc[c, c] - pb.loc["NT", c] for c in ("A", "B", "D")]))
    assert own < 0  # the knock-downs of this screen, registered as activations
    assert model.own_change_ == 0.0


def test_target_class_mean_is_the_mean_of_the_measured_or_nearest_training_targets(data):
    adata, split = data
    pb = _train_pb(adata, split)
    model = _fit(tl.TargetClassMean, adata, split)
    assert sorted(model.class_targets_) == ["A", "B", "D"]
    pred = model.predict(["C", "E"])
    np.testing.assert_allclose(pred.X[0], pb.loc[["A", "B", "D"]].to_numpy().mean(0), rtol=1e-5, atol=1e-5)
    mean = pb.loc[[c for c in pb.index if c != "NT"]].to_numpy().mean(0)
    np.testing.assert_allclose(pred.X[1], mean, rtol=1e-5, atol=1e-5)  # no measured gene: the train mean
    # k nearest in the embedding
    near = _fit(tl.TargetClassMean, adata, split, k=1)
    e = near.embedding_
    pos = {g: i for i, g in enumerate(GENES)}
    nearest = min(["A", "B", "D"], key=lambda t: np.linalg.norm(e[pos[t]] - e[pos["C"]]))
    np.testing.assert_allclose(near.predict(["C"]).X[0], pb.loc[nearest].to_numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="k=0 must be a positive integer"):
        tl.TargetClassMean(adata, k=0)  # adata was registered above
    bad = ((float("nan"), ValueError), (2.5, ValueError), ([3], TypeError), ("3", TypeError), (True, TypeError))
    for k, err in bad:
        with pytest.raises(err, match=r"must be a positive integer \(nearest training targets\)"):
            tl.TargetClassMean(adata, k=k)


def test_control_mean_predicts_exactly_no_change(data):
    """Under a split, changes are measured from the training controls, which ControlMean predicts."""
    adata, split = data
    pred = _fit(tl.ControlMean, adata, split).predict(["C", "A+B"])
    res = tl.evaluate({"ControlMean": pred}, adata, split=split, n_de_genes=5)
    value = res.set_index(["condition", "metric"])["value"]
    for c in ("C", "A+B"):
        assert np.isnan(value[(c, "pearson_delta")])
        assert np.isnan(value[(c, "pearson_delta_de")])
        assert (c, "systema_pearson_delta") in value.index


def test_context_shift_by_batch(data):
    adata, split = data
    model = _fit(tl.ControlMean, adata, split)
    pred = model.predict(["C"], batch="r2")
    train = adata[_fit_cells(split)]
    expected = pseudobulk(train[(train.obs["perturbation"] == "NT") & (train.obs["rep"] == "r2")], "perturbation")
    np.testing.assert_allclose(pred.X[0], expected.loc["NT"].to_numpy(), rtol=1e-5)
    assert pred.obs["batch"].iloc[0] == "r2"
    tm = _fit(tl.TrainMean, adata, split)
    base = tm.predict(["C"]).X[0]
    shifted = tm.predict(["C"], batch="r2").X[0]
    ctrl_all = _train_pb(adata, split).loc["NT"].to_numpy()
    np.testing.assert_allclose(shifted - base, expected.loc["NT"].to_numpy() - ctrl_all, rtol=1e-4, atol=1e-5)
    with pytest.raises(KeyError, match="r9"):
        model.predict(["C"], batch="r9")
    with pytest.raises(ValueError, match="no media key"):
        model.predict(["C"], media="stim")


def test_predict_refuses_what_a_baseline_cannot_honour(data):
    adata, split = data
    model = _fit(tl.TrainMean, adata, split)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['perturbation'\]"):
        model.predict(perturbation=["C"])  # a typo would have predicted every condition
    with pytest.raises(ValueError, match="efficacy=0.0: TrainMean predicts observed pseudobulks"):
        model.predict(["C"], efficacy=0.0)
    with pytest.raises(ValueError, match="no media_time key"):
        model.predict(["C"], media_time=1.0)
    # SemiMechVI's keywords that mean nothing for a pseudobulk are accepted
    np.testing.assert_array_equal(
        model.predict(["C"], batch_size=8, random_state=1, anchor="none").X, model.predict(["C"]).X
    )


def test_media_time_selects_the_controls_of_its_switch():
    from scmech.data import simulate_perturbseq

    d = simulate_perturbseq(
        900, 20, n_perturbations=3, n_combinations=0, regime="dynamic", media_switch_times=(-1.0, 1.0), seed=0
    )
    tl.TrainMean.setup_anndata(d, time_key="time", media_key="media", media_time_key="media_time")
    model = tl.TrainMean(d)
    model.train()
    obs = d.obs
    t = float(np.max(obs["time"]))
    early = model.predict(["NT"], media="m1", time=t, media_time=-1.0)
    late = model.predict(["NT"], media="m1", time=t, media_time=1.0)
    assert early.obs["media_time"].iloc[0] == -1.0
    ctrl = (obs["perturbation"] == "NT") & (obs["media"] == "m1") & np.isclose(obs["time"], t)
    pb = pseudobulk(d[ctrl], "media_time")
    np.testing.assert_allclose(
        early.X[0] - late.X[0], (pb.loc["-1.0"] - pb.loc["1.0"]).to_numpy(), rtol=1e-4, atol=1e-4
    )
    # the control level of a context rests on that context's training controls, and says so in n_cells
    assert early.obs["n_cells"].iloc[0] == int((ctrl & np.isclose(obs["media_time"], -1.0)).sum())
    # NaN, as predictions write it, is "never switched": the controls of m0, which never switched
    t0 = float(obs.loc[obs["media"] == "m0", "time"].max())
    never = (obs["perturbation"] == "NT") & (obs["media"] == "m0") & np.isclose(obs["time"], t0)
    assert never.sum() > 0
    assert obs.loc[never, "media_time"].isna().all()
    stayed = model.predict(["NT"], media="m0", time=t0, media_time=np.nan)
    np.testing.assert_allclose(stayed.X[0], model.predict(["NT"], media="m0", time=t0).X[0], atol=1e-5)
    assert stayed.obs["n_cells"].iloc[0] == int(never.sum())


def test_models_accept_evaluation_pipeline(data):
    adata, split = data
    preds = {cls.__name__: _fit(cls, adata.copy(), split).predict(["C"]) for cls in (tl.ControlMean, tl.LinearModel)}
    res = tl.evaluate(preds, adata, split=split, n_de_genes=5)
    assert set(res["model"]) == {"ControlMean", "LinearModel"}


@pytest.mark.pertpy
def test_scgen_adapter_tiny():
    pytest.importorskip("pertpy")
    adata = _adata()
    split = tl.split(adata, "batch", batch_key="rep", test_conditions=["r2"], validation_size=0.0)
    tl.ScGen.setup_anndata(adata, batch_key="rep")
    model = tl.ScGen(adata, n_hidden=8, n_latent=3, n_layers=1)
    model.train(max_epochs=1, batch_size=64, datasplitter_kwargs={"external_indexing": split.external_indexing})
    pred = model.predict(["A", "B"], batch="r2", random_state=0)
    assert pred.shape == (2, adata.n_vars)
    assert pred.uns["scmech"]["prediction"]["model"] == "ScGen"
    assert np.isfinite(pred.X).all()
    cells = model.predict(["A"], batch="r2", return_mean=False, n_cells=5)
    assert cells.n_obs == 5
    assert "source_cell" in cells.obs
    with pytest.raises(KeyError, match="no training cells"):
        model.predict(["Z"])
    # without a seed anywhere (scvi-tools' default settings.seed is None) it failed in int(None)
    old_seed = scvi.settings.seed
    try:
        scvi.settings.seed = None
        assert model.predict(["A"], batch="r2").uns["scmech"]["prediction"]["random_state"] == 0
    finally:
        scvi.settings.seed = old_seed


def test_scgen_without_pertpy_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pertpy.tools", None)
    adata = _adata()
    tl.ScGen.setup_anndata(adata, batch_key="rep")
    with pytest.raises(ImportError, match=r"pip install 'scmech\[pertpy\]'"):
        tl.ScGen(adata)


@pytest.mark.parametrize("cls", [tl.ControlMean, tl.TrainMean, tl.OwnGene, tl.TargetClassMean])
def test_predict_refuses_the_unassigned_label_and_an_empty_list(cls):
    adata = _adata()
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    labels[:4] = "unassigned"
    adata.obs["perturbation"] = labels
    model = _fit(cls, adata)
    for request in (["unassigned"], ["A+unassigned"]):
        with pytest.raises(ValueError, match=r"'unassigned' is the unassigned label .*Predict the control label"):
            model.predict(request)
    with pytest.raises(ValueError, match=r"`perturbations` is empty; name at least one condition"):
        model.predict([])
    assert "unassigned" not in model.predict().obs_names
