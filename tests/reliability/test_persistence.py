"""save/load: identical predictions after a round trip; missing, truncated or foreign files and wrong data raise."""

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


@pytest.mark.parametrize("name", ["model.pt", "metadata.json"])
def test_a_missing_file_raises_file_not_found(model, saved, tmp_path, name):
    path = _copy(saved, tmp_path / "m")
    (path / name).unlink()
    with pytest.raises(FileNotFoundError, match=rf"{name} not found: .* does not hold a model saved by SemiMechVI"):
        SemiMechVI.load(path, adata=model.adata)
    with pytest.raises(FileNotFoundError, match="not found"):
        SemiMechVI.load(tmp_path / "nowhere", adata=model.adata)


@pytest.mark.parametrize(
    ("name", "cut", "match"),
    [
        ("model.pt", 0.5, r"Cannot read the weights in .*model\.pt \(truncated or not a weights file\)"),
        ("metadata.json", 0.5, r"metadata\.json is not valid JSON \(truncated or not written by scmech\)"),
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
