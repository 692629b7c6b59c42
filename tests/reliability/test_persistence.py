"""save/load: identical predictions after a round trip; truncated or foreign files and wrong data raise.

Missing files (model.pt, metadata.json, the folder) are tested in tests/model/test_persistence.py.
"""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pytest
import torch

from scmech.model import SemiMechVI


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "model"
    model.save(path)
    return path


def _copy(src, dst):
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_round_trip_gives_identical_predictions(model, saved):
    loaded = SemiMechVI.load(saved, adata=model.adata)
    for kwargs in ({}, {"return_mean": False, "n_cells": 8, "random_state": 3}):
        a = model.predict(["NT", "G0008", "G0009+G0021", "G0001"], **kwargs)
        b = loaded.predict(["NT", "G0008", "G0009+G0021", "G0001"], **kwargs)
        np.testing.assert_array_equal(a.X, b.X)
        assert a.obs.equals(b.obs)
    np.testing.assert_array_equal(loaded.get_latent_representation(), model.get_latent_representation())


def test_save_never_clobbers_without_overwrite(model, saved):
    before = {p.name: p.read_bytes() for p in saved.iterdir()}
    with pytest.raises(ValueError, match=r"already exists; pass overwrite=True"):
        model.save(saved)
    assert {p.name: p.read_bytes() for p in saved.iterdir()} == before
    model.save(saved, overwrite=True)
    assert sorted(p.name for p in saved.iterdir()) == sorted(before)


@pytest.mark.parametrize(
    ("name", "cut", "match"),
    [
        ("model.pt", 0.5, r"Cannot read the weights in .*model\.pt \(truncated or not a weights file\)"),
        (
            "metadata.json",
            0.5,
            r"metadata\.json is not valid JSON \(truncated, too deeply nested or not written by scmech\)",
        ),
    ],
)
def test_a_truncated_file_raises_value_error(model, saved, tmp_path, name, cut, match):
    path = _copy(saved, tmp_path / "m")
    data = (path / name).read_bytes()
    (path / name).write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(ValueError, match=match):
        SemiMechVI.load(path, adata=model.adata)


def test_a_foreign_file_raises_value_error(model, saved, tmp_path):
    path = _copy(saved, tmp_path / "m")
    (path / "metadata.json").write_text(json.dumps({"format": "scvi-tools", "attr_dict": {}}))
    with pytest.raises(ValueError, match=r"is not an scmech model file \(format 'scvi-tools'\)"):
        SemiMechVI.load(path, adata=model.adata)
    path = _copy(saved, tmp_path / "m2")
    (path / "model.pt").write_bytes(b"PK\x03\x04 not a torch archive")
    with pytest.raises(ValueError, match=r"Cannot read the weights"):
        SemiMechVI.load(path, adata=model.adata)


def _altered(saved, path, change) -> None:
    """A copy of the save at ``path`` with its metadata changed by ``change(meta)``."""
    _copy(saved, path)
    meta = json.loads((path / "metadata.json").read_text())
    change(meta)
    (path / "metadata.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        # load set every saved attribute: a method or a property would be replaced by a value
        (
            lambda m: m["attributes"].__setitem__("predict", "x"),
            r"attributes that SemiMechVI.save\(\) never writes \(\['predict'\]\)",
        ),
        (lambda m: m["attributes"].__setitem__("regime", "steady_state"), r"never writes \(\['regime'\]\)"),
        (lambda m: m["attributes"].__setitem__("_private_", 1), r"never writes \(\['_private_'\]\)"),
        (lambda m: m.__setitem__("attributes", [1]), r"its attributes are a list, not a dict"),
        (lambda m: m.__setitem__("cells", "abc"), r"saved split cells are damaged \(a str, not a dict"),
        (
            lambda m: m.__setitem__("var_names", {"__dataframe__": {}}),
            r"is damaged: its 'var_names' entry cannot be read",
        ),
    ],
)
def test_altered_metadata_is_refused(model, saved, tmp_path, change, match):
    path = tmp_path / "m"
    _altered(saved, path, change)
    with pytest.raises(ValueError, match=match):
        SemiMechVI.load(path, adata=model.adata)


def test_metadata_that_is_a_folder_or_too_deep_is_refused(model, saved, tmp_path):
    path = _copy(saved, tmp_path / "m")
    (path / "metadata.json").unlink()
    (path / "metadata.json").mkdir()
    with pytest.raises(ValueError, match=r"metadata\.json is not a file"):
        SemiMechVI.load(path, adata=model.adata)
    path = _copy(saved, tmp_path / "m2")
    (path / "metadata.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match=r"metadata\.json is not valid JSON \(truncated, too deeply nested"):
        SemiMechVI.load(path, adata=model.adata)


def test_a_time_unit_no_training_writes_is_refused(model, saved, tmp_path):
    # a time unit of 0 loaded, and predict failed asking for 3.4e38 integration steps
    path = _copy(saved, tmp_path / "m")
    saved_file = torch.load(path / "model.pt", weights_only=True)
    state = saved_file["model_state_dict"]
    name = next(k for k in state if k.endswith("time_unit"))
    state[name] = torch.zeros_like(state[name])
    torch.save(saved_file, path / "model.pt")
    with pytest.raises(ValueError, match=r"hold a time unit of 0, which no training writes .*damaged or was altered"):
        SemiMechVI.load(path, adata=model.adata)


class _Payload:
    """Unpickling this runs code: what an attacker would put in a weights file."""

    def __reduce__(self):
        return (exec, ("import builtins; builtins._scmech_payload_ran = True",))


def test_loading_never_unpickles_code(model, saved, tmp_path):
    import builtins

    path = _copy(saved, tmp_path / "m")
    state = torch.load(path / "model.pt", weights_only=True)
    state["payload"] = _Payload()
    buf = io.BytesIO()
    torch.save(state, buf, pickle_module=pickle)
    (path / "model.pt").write_bytes(buf.getvalue())
    with pytest.raises(
        ValueError,
        match=r"model\.pt: besides tensors it holds the Python object 'exec'.*refused",
    ):
        SemiMechVI.load(path, adata=model.adata)
    assert not hasattr(builtins, "_scmech_payload_ran")
    # the metadata are plain JSON: there is nothing to execute in them
    meta = json.loads((saved / "metadata.json").read_text())
    assert meta["format"] == "scmech-model"


def test_loading_with_other_genes_raises(model, saved):
    with pytest.raises(ValueError, match=r"genes of adata differ from those the model was trained on.*adata\[:, "):
        SemiMechVI.load(saved, adata=model.adata[:, ::-1].copy())
    with pytest.raises(ValueError, match=r"genes of adata differ"):
        SemiMechVI.load(saved, adata=model.adata[:, :20].copy())


def test_loading_with_a_missing_batch_is_named(model, saved):
    adata = model.adata.copy()
    values = adata.obs["batch"].astype(object).to_numpy()
    values[0] = np.nan
    adata.obs["batch"] = values
    with pytest.raises(ValueError, match=r"obs\['batch'\] has 1 missing \(NaN\) batch values"):
        SemiMechVI.load(saved, adata=adata)


def test_loading_with_another_registry_raises(model, saved):
    renamed = model.adata.copy()
    renamed.obs["batch"] = renamed.obs["batch"].astype(str).replace({"b1": "lane1"})
    with pytest.raises(ValueError, match=r"Category lane1 not found in source registry"):
        SemiMechVI.load(saved, adata=renamed)
    new_target = model.adata.copy()
    new_target.obs["perturbation"] = new_target.obs["perturbation"].replace({"G0008": "CD274"})
    with pytest.raises(ValueError, match=r"perturbs target\(s\) \['CD274'\] that were not registered"):
        SemiMechVI.load(saved, adata=new_target)
    no_key = model.adata.copy()
    del no_key.obs["batch"]
    with pytest.raises(KeyError, match="batch"):
        SemiMechVI.load(saved, adata=no_key)


def _scvi_style_payload_save(path) -> None:
    """A directory as scvi-tools' own save would write it, whose pickle runs code when loaded."""
    path.mkdir(parents=True, exist_ok=True)
    torch.save({"attr_dict": _Payload(), "model_state_dict": {}}, path / "model.pt", pickle_module=pickle)


@pytest.mark.parametrize("method", ["load_registry", "view_setup_args"])
def test_registry_readers_read_json_and_never_unpickle(model, saved, tmp_path, method):
    import builtins

    registry = SemiMechVI.load_registry(saved)
    assert registry["setup_args"] == model.adata_manager.registry["setup_args"]
    # a payload where scvi-tools would look: refused without being read
    _scvi_style_payload_save(tmp_path / "evil")
    with pytest.raises(FileNotFoundError, match=r"metadata\.json not found"):
        getattr(SemiMechVI, method)(tmp_path / "evil")
    (tmp_path / "evil" / "metadata.json").write_text(json.dumps({"format": "scvi-tools"}))
    with pytest.raises(ValueError, match=r"is not an scmech model file"):
        getattr(SemiMechVI, method)(tmp_path / "evil")
    assert not hasattr(builtins, "_scmech_payload_ran")


def test_view_setup_args_prints_the_saved_setup(saved, capsys):
    SemiMechVI.view_setup_args(saved)
    assert "perturbation_key" in capsys.readouterr().out


def test_convert_legacy_save_and_baseline_loading_refuse_without_reading(tmp_path):
    import builtins

    from scmech import tl

    _scvi_style_payload_save(tmp_path / "evil")
    with pytest.raises(NotImplementedError, match="no legacy scvi-tools save to convert"):
        SemiMechVI.convert_legacy_save(tmp_path / "evil", tmp_path / "out")
    for cls in (tl.ControlMean, tl.TrainMean, tl.OwnGene, tl.TargetClassMean, tl.LinearModel):
        for method in ("load", "load_registry", "view_setup_args", "convert_legacy_save"):
            with pytest.raises(NotImplementedError, match="never saved"):
                getattr(cls, method)(tmp_path / "evil")
    assert not hasattr(builtins, "_scmech_payload_ran")


def test_overwriting_a_save_never_removes_a_users_files(model, tmp_path):
    path = tmp_path / "m"
    path.mkdir()
    (path / "adata.h5ad").write_bytes(b"the user's own data")
    (path / "notes.txt").write_text("mine")
    model.save(path, overwrite=True)
    assert (path / "adata.h5ad").read_bytes() == b"the user's own data"
    # saving the data would replace the user's file: refused, nothing lost
    with pytest.raises(FileExistsError, match=r"adata\.h5ad exists and was not written by a scmech save"):
        model.save(path, overwrite=True, save_anndata=True)
    assert (path / "adata.h5ad").read_bytes() == b"the user's own data"
    assert (path / "notes.txt").read_text() == "mine"
    # data a scmech save wrote is scmech's to replace or remove
    other = tmp_path / "o"
    model.save(other, save_anndata=True)
    assert (other / "adata.h5ad").exists()
    model.save(other, overwrite=True)  # without data: the stale copy must not sit next to the new weights
    assert not (other / "adata.h5ad").exists()
    model.save(other, overwrite=True, save_anndata=True)
    model.save(other, overwrite=True, save_anndata=True)
    assert SemiMechVI.load(other).adata.n_obs == model.adata.n_obs


def test_load_resolves_accelerators_and_devices_clearly(model, saved):
    from scmech.model._persistence import torch_device

    assert torch_device("cpu") == torch.device("cpu")
    assert torch_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="accelerator='tpu' is not one of"):
        torch_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees no CUDA device; use accelerator='cpu'"):
            SemiMechVI.load(saved, adata=model.adata, accelerator="gpu")
    loaded = SemiMechVI.load(saved, adata=model.adata, accelerator="cpu", device="auto")
    assert str(loaded.device).startswith("cpu")


def test_loading_with_an_unseen_batch_explains_itself(rel, model, saved):
    query = rel.small()
    query.obs["batch"] = query.obs["batch"].astype(str).replace({"b0": "b9"})
    with pytest.raises(ValueError, match=r"category the saved model was not trained on .*b9.*relabel it"):
        SemiMechVI.load(saved, adata=query)
