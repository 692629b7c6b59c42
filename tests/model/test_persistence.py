"""Save/load of SemiMechVI in the pickle-free format (model.pt + metadata.json)."""

from __future__ import annotations

import datetime
import json
from typing import TYPE_CHECKING

import mudata as md
import numpy as np
import pandas as pd
import pytest
import torch

from scmech.model import SemiMechVI
from scmech.model._persistence import from_jsonable, to_jsonable
from scmech.model._protocols import Context

if TYPE_CHECKING:
    from pathlib import Path

PERSISTED = ("init_params_", "history_", "is_trained_", "train_indices_", "validation_indices_", "target_map_")


@pytest.fixture(scope="module")
def saved(steady, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("saved") / "model"
    steady.model.save(path)
    return path


def _snapshot(path: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(path.iterdir())}


def _copy_dir(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


# ------------------------------------------------------------------------------------------------ round trip
def test_save_writes_weights_and_plain_metadata(saved, steady):
    assert sorted(p.name for p in saved.iterdir()) == ["metadata.json", "model.pt"]
    meta = json.loads((saved / "metadata.json").read_text())
    assert meta["format"] == "scmech-model"
    assert meta["format_version"] == 3
    assert set(meta["cells"]) >= {"train_indices_"}  # the training cells by name, not only by position
    assert meta["model_name"] == "SemiMechVI"
    assert from_jsonable(meta["var_names"]).tolist() == list(steady.adata.var_names)
    assert set(PERSISTED) <= set(meta["attributes"])


def test_weights_load_with_weights_only(saved, steady):
    saved_file = torch.load(saved / "model.pt", weights_only=True)
    assert saved_file["attr_dict"]["registry_"]["model_name"] == "SemiMechVI"
    state = saved_file["model_state_dict"]
    expected = steady.model.module.state_dict()
    assert list(state) == list(expected)
    for key, value in expected.items():
        torch.testing.assert_close(state[key], value.cpu(), msg=key)


def test_round_trip_gives_identical_predictions_and_latent(saved, steady):
    model, adata = steady.model, steady.adata
    loaded = SemiMechVI.load(saved, adata=adata)
    assert loaded.is_trained_
    assert loaded.regime == model.regime
    assert loaded.module.readout == model.module.readout
    np.testing.assert_array_equal(loaded.get_latent_representation(), model.get_latent_representation())
    conds = ["NT", "G0008", "G0009+G0021", "G0008+G0021", steady.heldout_target]
    a = model.predict(conds, random_state=5, n_cells=12, return_mean=False)
    b = loaded.predict(conds, random_state=5, n_cells=12, return_mean=False)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.obsm["X_scmech"], b.obsm["X_scmech"])
    pd.testing.assert_frame_equal(a.obs, b.obs)
    provenance_a, provenance_b = dict(a.uns["scmech"]["prediction"]), dict(b.uns["scmech"]["prediction"])
    pd.testing.assert_frame_equal(provenance_a.pop("target_sources"), provenance_b.pop("target_sources"))
    assert provenance_a == provenance_b
    np.testing.assert_array_equal(loaded.get_steady_state_residual(), model.get_steady_state_residual())


def test_round_trip_keeps_the_split_and_the_target_map(saved, steady):
    model = steady.model
    loaded = SemiMechVI.load(saved, adata=steady.adata)
    np.testing.assert_array_equal(np.asarray(loaded.train_indices), np.asarray(model.train_indices))
    np.testing.assert_array_equal(np.asarray(loaded.validation_indices), np.asarray(model.validation_indices))
    assert loaded.trained_targets_ == model.trained_targets_
    assert loaded.target_map_.class_targets == model.target_map_.class_targets
    for name in ("operator_class", "operator_all", "directions", "propagation_mean"):
        np.testing.assert_array_equal(getattr(loaded.target_map_, name), getattr(model.target_map_, name))
    assert loaded.target_map_.gain == model.target_map_.gain
    assert loaded.anchor_.conditions.keys() == model.anchor_.conditions.keys()
    assert loaded.init_params_ == model.init_params_


def test_history_survives(saved, steady):
    loaded = SemiMechVI.load(saved, adata=steady.adata)
    assert set(loaded.history) == set(steady.model.history)
    for key, df in steady.model.history.items():
        got = loaded.history[key]
        assert list(got.columns) == list(df.columns), key
        np.testing.assert_array_equal(np.asarray(got.index), np.asarray(df.index))
        np.testing.assert_allclose(got.to_numpy(dtype=float), df.to_numpy(dtype=float), err_msg=key)
    assert "ss_residual_train" in loaded.history


def test_history_frames_are_equal_up_to_the_index_name(saved, steady):
    loaded = SemiMechVI.load(saved, adata=steady.adata)
    for key, df in steady.model.history.items():
        got = loaded.history[key].rename_axis(df.index.name)
        pd.testing.assert_frame_equal(got, df, check_dtype=False, obj=key)  # scvi keeps object columns


def test_history_index_name_survives(saved, steady):
    loaded = SemiMechVI.load(saved, adata=steady.adata)
    for key, df in steady.model.history.items():
        assert loaded.history[key].index.name == df.index.name == "epoch", key


def test_loaded_model_can_train_further(saved, steady, train_kwargs):
    loaded = SemiMechVI.load(saved, adata=steady.adata)
    loaded.train(max_epochs=1, **train_kwargs)
    assert np.isfinite(loaded.get_latent_representation()).all()


def test_save_anndata_then_load_without_adata(steady, tmp_path, model_kwargs):
    model = steady.model
    path = tmp_path / "with_data"
    model.save(path, save_anndata=True)
    assert (path / "adata.h5ad").exists()
    loaded = SemiMechVI.load(path)
    assert loaded.adata is not steady.adata
    assert loaded.adata.shape == steady.adata.shape
    a = model.predict(["G0008", "G0009+G0021"], random_state=2)
    b = loaded.predict(["G0008", "G0009+G0021"], random_state=2)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(loaded.get_latent_representation(), model.get_latent_representation())
    # the read copy has an identity of its own: the in-memory original still starts new models
    assert loaded.adata.uns["_scvi_uuid"] != steady.adata.uns["_scvi_uuid"]
    assert SemiMechVI(steady.adata, **model_kwargs).adata is steady.adata


def test_load_without_adata_and_without_saved_data_raises(saved):
    with pytest.raises(ValueError, match="No data saved in .*; pass adata="):
        SemiMechVI.load(saved)


def test_prefix(steady, tmp_path):
    steady.model.save(tmp_path / "p", prefix="run1_")
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["run1_metadata.json", "run1_model.pt"]
    loaded = SemiMechVI.load(tmp_path / "p", adata=steady.adata, prefix="run1_")
    np.testing.assert_array_equal(loaded.get_latent_representation(), steady.model.get_latent_representation())
    with pytest.raises(FileNotFoundError, match="metadata.json not found"):
        SemiMechVI.load(tmp_path / "p", adata=steady.adata)


def test_round_trip_of_a_dynamic_model(dynamic, tmp_path):
    model = dynamic.model
    model.save(tmp_path / "dyn")
    loaded = SemiMechVI.load(tmp_path / "dyn", adata=dynamic.adata)
    assert loaded.regime == "dynamic"
    kw = {"protocol": [("perturb", "G0008"), ("wait", 1.0), ("media", "m1"), ("wait", 1.0)], "random_state": 0}
    np.testing.assert_array_equal(model.predict(**kw).X, loaded.predict(**kw).X)


def test_round_trip_of_a_mudata_model(small_adata, model_kwargs, train_kwargs, tmp_path):
    with md.set_options(pull_on_update=False):
        mdata = md.MuData({"rna": small_adata})
    SemiMechVI.setup_mudata(mdata, perturbation_key="perturbation", batch_key="batch")
    model = SemiMechVI(mdata, **model_kwargs)
    model.train(max_epochs=1, **train_kwargs)
    model.save(tmp_path / "mu", save_anndata=True)
    assert (tmp_path / "mu" / "mdata.h5mu").exists()
    loaded = SemiMechVI.load(tmp_path / "mu")
    np.testing.assert_array_equal(loaded.get_latent_representation(), model.get_latent_representation())
    np.testing.assert_array_equal(loaded.predict("G0008").X, model.predict("G0008").X)


# ------------------------------------------------------------------------------------------------ overwrite
def test_save_refuses_an_existing_directory_and_writes_nothing(saved, steady):
    before = _snapshot(saved)
    with pytest.raises(ValueError, match="already exists; pass overwrite=True"):
        steady.model.save(saved)
    with pytest.raises(ValueError, match="already exists; pass overwrite=True"):
        steady.model.save(saved, save_anndata=True)
    assert _snapshot(saved) == before


def test_save_refuses_an_existing_empty_directory(steady, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="already exists"):
        steady.model.save(tmp_path / "empty")
    assert list((tmp_path / "empty").iterdir()) == []


def test_overwrite_replaces_the_files(steady, dynamic, tmp_path):
    path = tmp_path / "m"
    dynamic.model.save(path)
    steady.model.save(path, overwrite=True)
    loaded = SemiMechVI.load(path, adata=steady.adata)
    assert loaded.regime == "steady_state"
    assert sorted(p.name for p in path.iterdir()) == ["metadata.json", "model.pt"]  # no temporary files left


# ------------------------------------------------------------------------------------------------ wrong data
def test_load_with_a_gene_subset_raises(saved, steady):
    sub = steady.adata[:, steady.adata.var_names[:-3]].copy()
    with pytest.raises(ValueError, match=r"genes of adata differ .*adata\[:, model_var_names\]"):
        SemiMechVI.load(saved, adata=sub)


def test_load_with_reordered_genes_raises(saved, steady):
    order = list(steady.adata.var_names[::-1])
    reordered = steady.adata[:, order].copy()
    with pytest.raises(
        ValueError, match=r"genes of adata differ from those the model was trained on \(names or order\)"
    ):
        SemiMechVI.load(saved, adata=reordered)


def test_load_with_renamed_genes_raises(saved, steady):
    renamed = steady.adata.copy()
    renamed.var_names = [f"x{g}" for g in renamed.var_names]
    with pytest.raises(ValueError, match="genes of adata differ"):
        SemiMechVI.load(saved, adata=renamed)


def test_load_with_renamed_batch_categories_raises(saved, steady):
    renamed = steady.adata.copy()
    renamed.obs["batch"] = renamed.obs["batch"].astype(str).str.replace("b", "lane", regex=False)
    with pytest.raises(ValueError, match="extend_categories"):
        SemiMechVI.load(saved, adata=renamed)


def test_load_with_an_unknown_target_raises(saved, steady):
    renamed = steady.adata.copy()
    labels = renamed.obs["perturbation"].to_numpy().copy()
    labels[labels == "G0008"] = "G0011"
    renamed.obs["perturbation"] = labels
    with pytest.raises(ValueError, match=r"perturbs target\(s\) \['G0011'\] that were not registered"):
        SemiMechVI.load(saved, adata=renamed)


# ------------------------------------------------------------------------------------------------ damaged files
@pytest.mark.parametrize("missing", ["model.pt", "metadata.json"])
def test_missing_file_raises_file_not_found(saved, steady, tmp_path, missing):
    path = _copy_dir(saved, tmp_path / "copy")
    (path / missing).unlink()
    with pytest.raises(FileNotFoundError, match=rf"{missing} not found: .* does not hold a model saved by SemiMechVI"):
        SemiMechVI.load(path, adata=steady.adata)


def test_missing_directory_raises_file_not_found(steady, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        SemiMechVI.load(tmp_path / "nowhere", adata=steady.adata)


def test_truncated_weights_raise_value_error(saved, steady, tmp_path):
    path = _copy_dir(saved, tmp_path / "copy")
    data = (path / "model.pt").read_bytes()
    (path / "model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="Cannot read the weights in .*model.pt"):
        SemiMechVI.load(path, adata=steady.adata)


def test_weights_with_arbitrary_objects_are_refused(saved, steady, tmp_path):
    path = _copy_dir(saved, tmp_path / "copy")
    torch.save({"when": datetime.date(2020, 1, 1)}, path / "model.pt")
    with pytest.raises(ValueError, match="Cannot read the weights"):
        SemiMechVI.load(path, adata=steady.adata)


def test_weights_of_another_architecture_raise_value_error(saved, steady, tmp_path, model_kwargs):
    path = _copy_dir(saved, tmp_path / "copy")
    other = SemiMechVI(steady.adata, **{**model_kwargs, "n_latent": 3})
    torch.save(other.module.state_dict(), path / "model.pt")
    with pytest.raises(ValueError, match="do not fit this model's architecture"):
        SemiMechVI.load(path, adata=steady.adata)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("truncated", "is not valid JSON"),
        (b"\xff\xfe\x00garbage", "is not valid JSON"),
        ('{"hello": 1}', r"is not an scmech model file \(format None\)"),
        ("[1, 2, 3]", "is not an scmech model file"),
        ('{"format": "scvi-tools"}', r"is not an scmech model file \(format 'scvi-tools'\)"),
    ],
)
def test_corrupted_or_foreign_metadata_raises_value_error(saved, steady, tmp_path, content, match):
    path = _copy_dir(saved, tmp_path / "copy")
    meta = path / "metadata.json"
    if content == "truncated":
        text = meta.read_text()
        meta.write_text(text[: len(text) // 2])
    elif isinstance(content, bytes):
        meta.write_bytes(content)
    else:
        meta.write_text(content)
    with pytest.raises(ValueError, match=match):
        SemiMechVI.load(path, adata=steady.adata)


def test_metadata_of_another_model_class_raises(saved, steady, tmp_path):
    path = _copy_dir(saved, tmp_path / "copy")
    meta = json.loads((path / "metadata.json").read_text())
    meta["model_name"] = "OtherVI"
    (path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="holds a OtherVI, not a SemiMechVI"):
        SemiMechVI.load(path, adata=steady.adata)


@pytest.mark.parametrize("drop", ["registry", "attributes", "var_names", "model_name"])
def test_metadata_with_missing_entries_raises_value_error(saved, steady, tmp_path, drop):
    path = _copy_dir(saved, tmp_path / "copy")
    meta = json.loads((path / "metadata.json").read_text())
    del meta[drop]
    (path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="metadata"):
        SemiMechVI.load(path, adata=steady.adata)


# ------------------------------------------------------------------------------------------------ JSON encoding
def test_jsonable_round_trip_of_plain_data():
    obj = {
        "a": np.arange(4, dtype=np.int64),
        "b": np.array(["x", "y"], dtype=object),
        "c": (1, 2.5, None),
        "d": pd.DataFrame({"v": [1.0, 2.0]}, index=[3, 4]),
        "e": np.float32(1.5),
        "f": torch.ones(2),
        "g": [True, "s"],
    }
    back = from_jsonable(json.loads(json.dumps(to_jsonable(obj))))
    np.testing.assert_array_equal(back["a"], obj["a"])
    assert back["a"].dtype == np.int64
    assert back["b"].tolist() == ["x", "y"]
    assert back["c"] == (1, 2.5, None)
    pd.testing.assert_frame_equal(back["d"], obj["d"])
    assert back["e"] == 1.5
    np.testing.assert_array_equal(back["f"], np.ones(2, dtype=np.float32))
    assert back["g"] == [True, "s"]


def test_jsonable_refuses_arbitrary_objects():
    with pytest.raises(TypeError, match="Cannot save an attribute of type date as plain data"):
        to_jsonable({"x": datetime.date(2020, 1, 1)})


def test_round_trip_keeps_the_context_anchoring_of_a_dynamic_model(dynamic_contexts, tmp_path):
    """Per-context control pseudobulks are keyed by (medium, time, switch) tuples: the keys must survive JSON."""
    model, adata = dynamic_contexts.model, dynamic_contexts.adata
    assert model.anchor_.control(Context("m1", 2.0, 1.0)) is not None
    target = adata.uns["truth"]["targets"][0]
    kw = {"media": "m1", "time": 2.0, "media_time": 1.0, "random_state": 0}
    before = model.predict([target, "NT"], **kw)
    assert before.obs["anchored"].all()
    model.save(tmp_path / "ctx")
    loaded = SemiMechVI.load(tmp_path / "ctx", adata=adata)
    assert set(loaded.anchor_.conditions) == set(model.anchor_.conditions)
    after = loaded.predict([target, "NT"], **kw)
    assert after.obs["anchored"].all()
    np.testing.assert_array_equal(before.X, after.X)


def test_load_finds_the_training_cells_by_name_on_reordered_or_subset_data(tmp_path):
    import scmech

    adata = scmech.data.simulate_perturbseq(n_cells=300, n_genes=30, n_perturbations=4, n_combinations=0, seed=0)
    split = scmech.tl.split(adata, "batch", batch_key="batch", test_conditions=["b2"], controls_in_train=False)
    SemiMechVI.setup_anndata(adata, batch_key="batch")
    model = SemiMechVI(adata, n_latent=4, n_hidden=16)
    model.train(max_epochs=1, datasplitter_kwargs={"external_indexing": split.external_indexing})
    model.save(tmp_path / "m")
    train_names = set(adata.obs_names[model.train_indices_])
    # the same cells in another order: the held-out batch's controls never start a prediction
    shuffled = adata[np.random.default_rng(1).permutation(adata.n_obs)].copy()
    loaded = SemiMechVI.load(tmp_path / "m", adata=shuffled)
    assert set(shuffled.obs_names[loaded.train_indices_]) == train_names
    pred = loaded.predict(["G0008"], return_mean=False, random_state=0)
    assert set(shuffled.obs.loc[pred.obs["source_cell"], "batch"]) <= {"b0", "b1"}
    assert set(pred.obs["source_cell"]) <= train_names
    # a subset keeps the training cells it holds (positions of the full data would fall outside it)
    first = adata[:100].copy()
    sub = SemiMechVI.load(tmp_path / "m", adata=first)
    assert set(first.obs_names[sub.train_indices_]) == train_names & set(first.obs_names)
    assert sub.predict(["G0008"]).n_obs == 1


def test_scvi_loaders_read_a_scmech_save(saved, steady):
    """scvi-tools' own loaders crashed on a scmech save ('NoneType' object has no attribute 'pop'); now they
    answer as for a model of another class, and read its registry."""
    import scvi

    with pytest.raises(ValueError, match="loading a model from a different class"):
        scvi.model.SCVI.load(saved, adata=steady.adata.copy())
    registry = scvi.model.SCVI.load_registry(saved)
    assert registry["model_name"] == "SemiMechVI"
    assert registry["setup_args"]["control_label"] == steady.model.adata_manager.registry["setup_args"]["control_label"]


def _keys(adata) -> tuple:
    return list(adata.obs.columns), list(adata.obsm.keys()), {k: adata.uns[k] for k in adata.uns}


def test_a_failed_load_leaves_the_users_data_as_it_was(saved, steady, tmp_path, model_kwargs):
    """A load that failed after registering the data left scvi-tools' registry keys (obs '_scvi_batch', obsm
    '_scmech_perturbation') in the user's AnnData."""
    # a fresh copy, never registered: every registry key in it would be left by the failed load
    raw = steady.adata.copy()
    for c in [c for c in raw.obs.columns if c.startswith("_scvi")]:
        del raw.obs[c]
    for k in [k for k in raw.obsm if k.startswith(("_scvi", "_scmech"))]:
        del raw.obsm[k]
    for k in [k for k in raw.uns if k.startswith("_scvi")]:
        del raw.uns[k]
    before = _keys(raw)
    path = _copy_dir(saved, tmp_path / "copy")
    other = SemiMechVI(steady.adata, **{**model_kwargs, "n_latent": 3})
    torch.save(other.module.state_dict(), path / "model.pt")
    with pytest.raises(ValueError, match="do not fit this model's architecture"):
        SemiMechVI.load(path, adata=raw)
    assert _keys(raw) == before
    no_batch = raw.copy()
    del no_batch.obs["batch"]
    before = _keys(no_batch)
    with pytest.raises(KeyError, match="batch"):
        SemiMechVI.load(saved, adata=no_batch)
    assert _keys(no_batch) == before
    loaded = SemiMechVI.load(saved, adata=raw)  # the same data load once the save fits
    assert "_scvi_batch" in raw.obs
    assert loaded.is_trained


@pytest.mark.parametrize("fails", ["metadata", "weights"])
def test_a_save_that_cannot_write_leaves_the_earlier_save_and_no_temporary_files(saved, steady, tmp_path, fails):
    """A full disk (or a folder that refuses writes) left the data and metadata written so far as hidden temporary
    files; they are removed, the error propagates and the earlier save still loads."""
    import errno
    from pathlib import Path as _Path

    path = _copy_dir(saved, tmp_path / "copy")
    before = _snapshot(path)

    def refuse(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    patch = pytest.MonkeyPatch()
    if fails == "metadata":
        patch.setattr(_Path, "write_text", refuse)
    else:
        patch.setattr(torch, "save", refuse)
    try:
        with pytest.raises(OSError, match="No space left on device"):
            steady.model.save(path, overwrite=True, save_anndata=True)
    finally:
        patch.undo()
    assert _snapshot(path) == before  # no temporary file, nothing replaced
    assert SemiMechVI.load(path, adata=steady.adata).is_trained
