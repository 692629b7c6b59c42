"""Hostile settings of NeuralODE, the paper's end-to-end neural ODE: each is refused by name, or works as documented.

Every case here once did something else without a word: the module read a ``steady_state_perturbed="no"`` as
``True``, the model refused a numpy bool that every other flag of the package takes, ``lipschitz`` and
``operator_scale`` (the hint of a diverging run) were dropped, a misspelt setting failed inside ``SemiMechVAE``,
a field of width 0 was refused under the encoder's names, and the validation cells of a split were passed to
``_fit_anchor`` as its ``min_cells``.
"""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import scvi

from scmech.model import NeuralODE, SemiMechVI
from scmech.module import NeuralODEVAE

from .conftest import MODEL_KWARGS, TRAIN_KWARGS, simulated, small

SETUP = {"perturbation_key": "perturbation", "control_label": "NT", "batch_key": "batch"}
DYNAMIC_SETUP = {**SETUP, "time_key": "time", "media_key": "media", "media_time_key": "media_time"}


def _registered():
    adata = small()
    NeuralODE.setup_anndata(adata, **SETUP)
    return adata


@pytest.fixture(scope="module")
def node() -> NeuralODE:
    """A NeuralODE with the steady-state term on perturbed populations, trained one epoch with validation cells."""
    scvi.settings.seed = 0
    adata = small(n_cells=240)
    NeuralODE.setup_anndata(adata, **SETUP)
    model = NeuralODE(adata, **MODEL_KWARGS, steady_state_weight=1.0, steady_state_perturbed=True)
    model.train(max_epochs=1, train_size=0.8, **TRAIN_KWARGS)
    return model


# ---------------------------------------------------------------- steady_state_perturbed
@pytest.mark.parametrize("regime", ["steady_state", "dynamic"])
def test_module_refuses_steady_state_perturbed_given_as_a_string(regime):
    # "no" is a true string: the module switched the perturbed populations' term on (and, in the dynamic regime,
    # refused it as "steady_state_perturbed=True")
    with pytest.raises(TypeError, match=r"steady_state_perturbed='no' must be True or False"):
        NeuralODEVAE(10, n_targets=2, regime=regime, steady_state_perturbed="no")
    assert NeuralODEVAE(10, n_targets=2, steady_state_perturbed=np.True_).steady_state_perturbed is True


def test_a_numpy_bool_steady_state_perturbed_is_taken_like_any_flag():
    # the model refused np.True_ ("must be True or False"), which predict's return_mean and save's flags take
    model = NeuralODE(_registered(), **MODEL_KWARGS, steady_state_perturbed=np.True_)
    assert model.module.steady_state_perturbed is True
    saved = model.init_params_["non_kwargs"]["steady_state_perturbed"]
    assert saved is True
    assert json.loads(json.dumps(model.init_params_))["non_kwargs"]["steady_state_perturbed"] is True


def test_steady_state_perturbed_in_a_dynamic_model_names_the_fix():
    adata = simulated("dynamic", n_cells=120)
    NeuralODE.setup_anndata(adata, **DYNAMIC_SETUP)
    with pytest.raises(ValueError, match=r"steady_state_perturbed=True .* pass regime='steady_state' .*time key"):
        NeuralODE(adata, **MODEL_KWARGS, steady_state_perturbed=True)
    model = NeuralODE(adata, **MODEL_KWARGS, regime="steady_state", steady_state_perturbed=True)
    assert model.module.regime == "steady_state"


# ---------------------------------------------------------------- settings the neural field would ignore
@pytest.mark.parametrize(
    ("name", "value", "meaning"),
    [
        ("lipschitz", 5.0, "contraction bound"),
        # the diverging-loss message suggests "a lower operator_scale": it changed nothing for a NeuralODE
        ("operator_scale", 1e-6, "learning-rate multiplier"),
        ("fixed_point_tol", 1e-3, "tolerance of SemiMechVI's steady-state solve"),
        ("fixed_point_max_iter", 1, "iteration cap"),
    ],
)
def test_settings_the_neural_field_would_ignore_are_refused(name, value, meaning):
    adata = _registered()
    with pytest.raises(TypeError, match=rf"{name}={value!r} does not apply to NeuralODE: it is the {meaning}.*Drop it"):
        NeuralODE(adata, **MODEL_KWARGS, **{name: value})
    with pytest.raises(TypeError, match=rf"{name}={value!r} does not apply to NeuralODE"):
        NeuralODEVAE(10, n_targets=2, **{name: value})


def test_an_unknown_setting_is_refused_with_the_nearest_name():
    # it failed inside SemiMechVAE ("SemiMechVAE.__init__() got an unexpected keyword argument 'horizn'")
    adata = _registered()
    with pytest.raises(TypeError, match=r"NeuralODE has no setting horizn=2\.0 \(did you mean 'horizon'\?\)"):
        NeuralODE(adata, **MODEL_KWARGS, horizn=2.0)
    with pytest.raises(TypeError, match=r"NeuralODE has no setting foo=1\. Its settings: .*steady_state_perturbed"):
        NeuralODE(adata, **MODEL_KWARGS, foo=1)
    model = NeuralODE(adata, **MODEL_KWARGS, horizon=2.0, ode_steps=3, mmd_weight=0.0)
    assert (model.module.horizon, model.module.ode_steps, model.module.mmd_weight) == (2.0, 3, 0.0)


@pytest.mark.parametrize(("name", "value"), [("field_hidden", 0), ("field_layers", 0), ("field_layers", 1.5)])
def test_module_field_sizes_are_refused_by_their_own_names(name, value):
    # the field's check named the encoder's arguments: "needs n_hidden >= 1 and n_layers >= 1, got n_hidden=0"
    with pytest.raises(ValueError, match=rf"{name}={value!r} must be a positive integer \(the MLP field"):
        NeuralODEVAE(10, n_targets=2, **{name: value})


# ---------------------------------------------------------------- training with validation cells
def test_fit_anchor_takes_the_validation_cells_like_semimechvi(node):
    # the validation cells of a split were bound to min_cells: the override's signature must be the parent's
    ours = list(inspect.signature(NeuralODE._fit_anchor).parameters)
    assert ours == list(inspect.signature(SemiMechVI._fit_anchor).parameters)
    assert node.anchor_ is None
    assert len(node.validation_indices) > 0
    a = node.predict(["G0008", "G0009+G0021"], anchor="auto", random_state=1)
    b = node.predict(["G0008", "G0009+G0021"], anchor="none", random_state=1)
    np.testing.assert_array_equal(a.X, b.X)
    assert not a.obs["anchored"].any()
    assert "ss_residual_perturbed_validation" in node.history


@pytest.mark.parametrize("cls", [SemiMechVI, NeuralODE])
def test_the_diverging_loss_hint_names_only_settings_the_model_has(cls):
    # the message suggested "a lower operator_scale" to a NeuralODE, which refuses that setting
    from types import SimpleNamespace

    import torch

    from scmech.model._callbacks import FiniteLossCallback

    adata = small()
    cls.setup_anndata(adata, **SETUP)
    plan = SimpleNamespace(module=cls(adata, **MODEL_KWARGS).module)
    trainer = SimpleNamespace(current_epoch=3, global_step=7)
    with pytest.raises(FloatingPointError, match=r"loss became nan at epoch 3, step 7") as info:
        FiniteLossCallback().on_train_batch_end(trainer, plan, torch.tensor(float("nan")), None, 0)
    assert ("operator_scale" in str(info.value)) is (cls is SemiMechVI)
