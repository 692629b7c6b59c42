"""Hostile input to dynamic models: read-out times, medium switches, onsets and protocol steps."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scvi
import torch

from scmech.model import SemiMechVI

from .conftest import MODEL_KWARGS, TRAIN_KWARGS, simulated

SETUP = {"batch_key": "batch", "time_key": "time", "media_key": "media", "media_time_key": "media_time"}


def dynamic_data(n_cells: int = 160):
    """A fresh small dynamic screen (read-outs at 0.5, 1, 2, 4; switches into m1 at -1 or 1)."""
    return simulated("dynamic", n_cells=n_cells)


def dynamic_model(adata=None, **module_kwargs) -> SemiMechVI:
    scvi.settings.seed = 0
    adata = dynamic_data() if adata is None else adata
    SemiMechVI.setup_anndata(adata, **SETUP)
    model = SemiMechVI(adata, **MODEL_KWARGS, **module_kwargs)
    model.train(max_epochs=1, **TRAIN_KWARGS)
    return model


@pytest.fixture(scope="module")
def dyn() -> SemiMechVI:
    return dynamic_model()


@pytest.fixture(scope="module")
def dyn_onset() -> SemiMechVI:
    return dynamic_model(onset_tau=0.5)


@pytest.mark.parametrize("which", ["dyn", "dyn_onset"])
def test_perturbed_cells_equal_controls_at_time_zero(which, request):
    """At the perturbation (time 0) nothing has acted yet: the measurement offsets are absent too."""
    model = request.getfixturevalue(which)
    pert = model.predict("G0009", time=0.0, anchor="none", random_state=0).X
    ctrl = model.predict("NT", time=0.0, anchor="none", random_state=0).X
    np.testing.assert_allclose(pert, ctrl, atol=1e-5)
    later = model.predict("G0009", time=2.0, anchor="none", random_state=0).X
    assert np.abs(later - model.predict("NT", time=2.0, anchor="none", random_state=0).X).max() > 1e-3


def test_measurement_offsets_follow_the_onset(dyn_onset):
    """With an onset, the shared offset and own-gene effect build up as 1 - exp(-t / tau), like the drive."""
    module = dyn_onset.module
    tau = dyn_onset.module.onset_tau_data
    t = torch.tensor([0.0, 0.25, 2.0]) * float(module.time_unit)
    ramp = module.offset_ramp(t).numpy()
    np.testing.assert_allclose(ramp, [0.0, 1 - math.exp(-0.25 / tau), 1 - math.exp(-2.0 / tau)], rtol=1e-5)


def test_steady_state_residual_uses_the_onset_ramp():
    """The residual of a dynamic cell is the velocity under the drive applied at its read-out time."""
    adata = dynamic_data()
    model = dynamic_model(adata, onset_tau=1e6)  # the drive has barely started at every read-out
    with torch.no_grad():
        model.module.field.operators_raw.fill_(1.0)  # a drive the residual would show at full strength
    driven = model.module.field.drive(torch.eye(model.module.n_targets)).norm(dim=-1)
    assert float(driven.min()) > 0.1
    residual = model.get_steady_state_residual()
    z = torch.as_tensor(model.get_latent_representation())
    media = torch.as_tensor(adata.obs["_scvi_media"].to_numpy(), dtype=torch.long)
    with torch.no_grad():
        undriven = model.module.field(z, media, torch.zeros_like(z)).norm(dim=-1).numpy()
    np.testing.assert_allclose(residual, undriven, rtol=1e-3, atol=1e-4)


def test_every_cell_at_time_zero_is_refused():
    adata = dynamic_data()
    adata.obs["time"] = 0.0
    adata.obs["media_time"] = np.nan
    SemiMechVI.setup_anndata(adata, **SETUP)
    with pytest.raises(ValueError, match=r"obs\['time'\] is 0 for every cell.*regime='steady_state'"):
        SemiMechVI(adata, **MODEL_KWARGS)
    assert SemiMechVI(adata, regime="steady_state", **MODEL_KWARGS).regime == "steady_state"


def test_switch_after_read_out_is_refused():
    """A cell labelled with a medium it switched into only after its read-out would be read out in another one."""
    adata = dynamic_data()
    switched = adata.obs["media_time"].notna()
    adata.obs.loc[switched, "media_time"] = 10.0
    SemiMechVI.setup_anndata(adata, **SETUP)
    with pytest.raises(ValueError, match=r"obs\['media_time'\] after obs\['time'\].*NaN switch time"):
        SemiMechVI(adata, **MODEL_KWARGS)


def test_time_beyond_the_trained_window_warns(dyn):
    with pytest.warns(UserWarning, match=r"time=40 lies beyond the training times \(up to 4"):
        dyn.predict("G0009", time=40.0, anchor="none")
    with pytest.warns(UserWarning, match=r"media_time=-9 lies beyond"):
        dyn.predict("G0009", time=1.0, media="m1", media_time=-9.0, anchor="none")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        dyn.predict("G0009", time=4.0, media="m1", media_time=-1.0, anchor="none")


def test_the_window_scales_with_the_time_unit():
    adata = dynamic_data()
    adata.obs["time"] *= 24
    adata.obs["media_time"] *= 24
    model = dynamic_model(adata)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model.predict("G0009", time=96.0, anchor="none")
    with pytest.warns(UserWarning, match=r"up to 96"):
        model.predict("G0009", time=97.0, anchor="none")


def test_zero_dimensional_array_time_is_one_time(dyn):
    out = dyn.predict(["G0009", "NT"], time=np.array(1.5), anchor="none")
    assert out.obs["time"].tolist() == [1.5, 1.5]


def test_empty_protocol_in_a_list_is_refused(dyn):
    with pytest.raises(ValueError, match=r"protocol\[1\] is empty"):
        dyn.predict(protocol=[[("perturb", "G0009"), ("wait", 2.0)], []])


def test_protocol_as_a_generator_or_string(dyn):
    steps = (s for s in [("perturb", "G0009"), ("wait", 2.0)])
    out = dyn.predict(protocol=steps, anchor="none")
    assert out.obs[["perturbation", "time"]].values.tolist() == [["G0009", 2.0]]
    with pytest.raises(TypeError, match=r"protocol='G0009' must be a list of steps"):
        dyn.predict(protocol="G0009")
