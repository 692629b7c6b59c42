"""NeuralODE: the paper's end-to-end neural ODE (an MLP field read out by flows), with and without the term."""

from __future__ import annotations

import numpy as np
import pytest
import scvi
import torch

from scmech.model import NeuralODE
from scmech.module import NeuralField, NeuralODEVAE

SETUP = {"perturbation_key": "perturbation", "control_label": "NT", "batch_key": "batch"}
DYNAMIC_SETUP = {**SETUP, "time_key": "time", "media_key": "media", "media_time_key": "media_time"}


def _random_field(seed: int = 0, n_media: int = 1) -> NeuralField:
    torch.manual_seed(seed)
    field = NeuralField(4, 3, n_media=n_media, n_hidden=8, n_layers=2)
    with torch.no_grad():
        for p in field.parameters():
            p.normal_(0.0, 0.5)
    return field


# ---------------------------------------------------------------------------------------------- the field
def test_field_starts_at_zero_so_every_flow_starts_as_the_identity():
    field = NeuralField(4, 3)
    z = torch.randn(5, 4)
    drive = field.drive(torch.eye(3)[[0, 1, 2, 0, 1]])
    assert torch.equal(field(z, torch.zeros(5, dtype=torch.long), drive), torch.zeros(5, 4))
    out = field.integrate_protocol(
        z, drive, torch.zeros(5, dtype=torch.long), torch.full((5,), 2.0), torch.full((5,), float("nan"))
    )
    assert torch.allclose(out, z)


def test_drive_sums_the_embeddings_of_a_combination_scaled_by_efficacy():
    field = _random_field()
    e = field.operators.detach()
    rows = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    drive = field.drive(rows, efficacy=torch.tensor([0.5, 1.0, 0.25]))
    assert torch.allclose(drive[0], 0.5 * (e[0] + e[2]))
    assert torch.equal(drive[1], torch.zeros(4))  # controls: no input, and no push shared by perturbed cells
    assert torch.allclose(drive[2], 0.25 * e[1])


def test_jacobian_matches_finite_differences_and_stiffness_bounds_it():
    field = _random_field(1, n_media=2)
    z = torch.randn(3, 4, dtype=torch.float32)
    media = torch.tensor([0, 1, 1])
    jac = field.jacobian(z, media)
    eps = 1e-3
    zero = torch.zeros(3, 4)
    for j in range(4):
        step = torch.zeros(4)
        step[j] = eps
        fd = (field(z + step, media, zero) - field(z - step, media, zero)) / (2 * eps)
        assert torch.allclose(jac[:, :, j], fd, atol=2e-3)
    spectral = torch.linalg.matrix_norm(jac, ord=2).max()
    assert float(spectral) <= field.stiffness() + 1e-6


def test_the_neural_field_has_no_fixed_point_solve():
    with pytest.raises(NotImplementedError, match="flows only"):
        _random_field().fixed_point(torch.zeros(1, 4), torch.zeros(1, dtype=torch.long), torch.zeros(1, 4))


# ---------------------------------------------------------------------------------------------- the module
def test_module_refuses_a_fixed_point_readout_and_a_settled_time_course():
    with pytest.raises(ValueError, match="flows only"):
        NeuralODEVAE(10, n_targets=2, readout="fixed_point")
    with pytest.raises(ValueError, match="steady-state regime only"):
        NeuralODEVAE(10, n_targets=2, regime="dynamic", steady_state_perturbed=True)
    module = NeuralODEVAE(10, n_targets=2)
    assert isinstance(module.field, NeuralField)
    assert module.decoder.shared_offset is None
    assert module.decoder.own_effect is None


def _losses(module, tensors, **kw):
    module.eval()
    torch.manual_seed(0)
    _, _, out = module(tensors, loss_kwargs=kw)
    return out


def test_the_terms_enter_the_loss_with_their_weight(make_adata):
    adata = make_adata(n_cells=120)
    NeuralODE.setup_anndata(adata, **SETUP)
    model = NeuralODE(adata, n_latent=4, n_hidden=16, field_hidden=8, steady_state_perturbed=True)
    with torch.no_grad():
        for p in model.module.field.parameters():
            p.normal_(0.0, 0.3)
    tensors = next(iter(model._make_data_loader(adata, batch_size=120, shuffle=False)))
    off = _losses(model.module, tensors, ss_weight=0.0)
    on = _losses(model.module, tensors, ss_weight=2.0)
    ss_ctrl = off.extra_metrics["ss_residual"] ** 2
    ss_pert = off.extra_metrics["ss_residual_perturbed"] ** 2
    assert float(ss_ctrl) > 0
    assert float(ss_pert) > 0
    assert torch.allclose(on.loss - off.loss, 2.0 * (ss_ctrl + ss_pert), rtol=1e-4)
    # the names the training plan logs (and early stopping may watch) are those the loss returns
    assert list(off.extra_metrics) == model.module.extra_metric_names
    vanilla = NeuralODE(adata, n_latent=4, n_hidden=16, field_hidden=8)
    names = list(_losses(vanilla.module, tensors, ss_weight=0.0).extra_metrics)
    assert names == vanilla.module.extra_metric_names
    assert "ss_residual_perturbed" not in names


def test_the_term_is_zero_at_a_fixed_point_and_its_gradient_reaches_the_shared_field(make_adata):
    adata = make_adata(n_cells=120)
    NeuralODE.setup_anndata(adata, **SETUP)
    model = NeuralODE(adata, n_latent=4, n_hidden=16, field_hidden=8, steady_state_perturbed=True)
    tensors = next(iter(model._make_data_loader(adata, batch_size=120, shuffle=False)))
    # the field starts at zero: every state is a fixed point, so the term is 0 and the loss is the vanilla one
    at_rest = _losses(model.module, tensors, ss_weight=5.0)
    assert float(at_rest.extra_metrics["ss_residual"]) == 0.0
    assert float(at_rest.extra_metrics["ss_residual_perturbed"]) == 0.0
    assert torch.equal(at_rest.loss, _losses(model.module, tensors, ss_weight=0.0).loss)
    # away from a fixed point the term's own gradient reaches the MLP shared by every perturbation and medium
    with torch.no_grad():
        for p in model.module.field.parameters():
            p.normal_(0.0, 0.3)
    model.module.zero_grad()
    term = _losses(model.module, tensors, ss_weight=1.0).loss - _losses(model.module, tensors, ss_weight=0.0).loss
    term.backward()
    shared = [(n, p.grad) for n, p in model.module.field.named_parameters() if n.startswith("mlp.")]
    assert shared
    assert all(g is not None and float(g.abs().sum()) > 0 for _, g in shared), [n for n, g in shared]


# ---------------------------------------------------------------------------------------------- the model
def _trained(adata, setup, weight, seed=0, epochs=6, **kwargs):
    scvi.settings.seed = seed
    NeuralODE.setup_anndata(adata, **setup)
    model = NeuralODE(adata, n_latent=4, n_hidden=16, field_hidden=8, steady_state_weight=weight, **kwargs)
    model.train(max_epochs=epochs, batch_size=64, enable_progress_bar=False)
    return model


def test_trains_and_predicts_its_own_readout_in_both_regimes(make_adata):
    steady = _trained(make_adata(n_cells=240), SETUP, 1.0)
    pred = steady.predict(["G0008", "G0009+G0021", "NT"], n_cells=50)
    assert pred.shape == (3, 30)
    assert np.isfinite(pred.X).all()
    assert not pred.obs["anchored"].any()  # the paper's model: no anchoring on observed pseudobulks
    assert pred.uns["scmech"]["prediction"]["model"] == "NeuralODE"
    dyn = _trained(make_adata("dynamic", n_cells=240), DYNAMIC_SETUP, 1.0)
    assert dyn.module.regime == "dynamic"
    early = dyn.predict(["G0008"], media="m1", time=0.5, media_time=-1.0, n_cells=50)
    late = dyn.predict(["G0008"], media="m1", time=4.0, media_time=-1.0, n_cells=50)
    assert not np.allclose(early.X, late.X)  # a flow: the read-out moves with time


def test_the_term_pulls_the_control_field_to_zero(make_adata):
    adata = make_adata(n_cells=240)
    residual = {}
    for weight in (0.0, 50.0):
        model = _trained(adata.copy(), SETUP, weight, epochs=8)
        residual[weight] = float(model.history["ss_residual_train"]["ss_residual_train"].iloc[-1])
    assert residual[50.0] < 0.5 * residual[0.0]


def test_round_trip_and_what_it_does_not_offer(make_adata, tmp_path):
    adata = make_adata(n_cells=240)
    model = _trained(adata, SETUP, 0.0, epochs=2)
    model.save(tmp_path / "node", save_anndata=False)
    loaded = NeuralODE.load(tmp_path / "node", adata=adata)
    assert isinstance(loaded.module, NeuralODEVAE)
    a = model.predict(["G0008"], n_cells=30, random_state=1).X
    b = loaded.predict(["G0008"], n_cells=30, random_state=1).X
    np.testing.assert_allclose(a, b, rtol=1e-6)
    with pytest.raises(NotImplementedError, match="SemiMechVI"):
        model.get_regulatory_network()
    with pytest.raises(ValueError, match="flows only"):
        NeuralODE(adata, readout="fixed_point")
    with pytest.raises(TypeError, match="steady_state_perturbed='yes' must be True or False"):
        NeuralODE(adata, steady_state_perturbed="yes")
    with pytest.raises(ValueError, match="steady_state_weight=nan must be a finite number"):
        NeuralODE(adata, steady_state_weight=float("nan"))
