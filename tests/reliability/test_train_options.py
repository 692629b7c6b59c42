"""Options of ``train`` that would be ignored, rejected late or order-dependent: refused or fixed before training."""

from __future__ import annotations

import numpy as np
import pytest
import scvi
import torch

from scmech.data import simulate_perturbseq
from scmech.model import SemiMechVI
from scmech.train import PerturbationDataSplitter, SemiMechTrainingPlan

MODEL_KWARGS = {"n_latent": 4, "n_hidden": 16, "field_hidden": 8}
TRAIN_KWARGS = {"batch_size": 64, "enable_progress_bar": False, "log_every_n_steps": 1}


@pytest.fixture(scope="module")
def adata():
    """A small simulated screen with wet-lab batches, registered once for the module's tests."""
    adata = simulate_perturbseq(n_cells=240, n_genes=40, n_perturbations=6, n_combinations=2, seed=0)
    SemiMechVI.setup_anndata(adata, batch_key="batch")
    return adata


def _model(adata) -> SemiMechVI:
    scvi.settings.seed = 0
    return SemiMechVI(adata, **MODEL_KWARGS)


def _trained(adata, **kwargs) -> dict[str, torch.Tensor]:
    """The parameters after a 2-epoch run with seed 0 (``kwargs`` go to ``train``)."""
    model = _model(adata)
    model.train(max_epochs=2, **{**TRAIN_KWARGS, **kwargs})
    return {k: v.detach().clone() for k, v in model.module.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _refused(adata, exc, match, **kwargs) -> None:
    """Assert that ``train(**kwargs)`` raises ``exc`` matching ``match`` and leaves the model untrained."""
    model = _model(adata)
    with pytest.raises(exc, match=match):
        model.train(max_epochs=1, **{**TRAIN_KWARGS, **kwargs})
    assert not model.is_trained_
    assert model.history_ is None


@pytest.fixture(scope="module")
def default_run(adata) -> dict[str, torch.Tensor]:
    return _trained(adata)


# ================================================================================================ ignored plan keys
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"plan_kwargs": {"kl_weight": 5.0}}, r"plan_kwargs\['kl_weight'\] would be ignored.*'max_kl_weight'"),
        ({"plan_kwargs": {"kl_weight": 0.0}}, r"plan_kwargs\['kl_weight'\] would be ignored.*'min_kl_weight'"),
        ({"plan_kwargs": {"update_only_decoder": True}}, r"plan_kwargs\['update_only_decoder'\] would be ignored"),
        ({"plan_kwargs": {"on_epoch": False}}, r"plan_kwargs\['on_epoch'\]=False: the training always logs"),
        ({"plan_kwargs": {"on_epoch": None, "on_step": True}}, r"plan_kwargs\['on_epoch'\]=None: .*Drop it"),
        (
            {"plan_kwargs": {"error_alpha": 3.0}},
            r"plan_kwargs\['error_alpha'\]=3.0 would be ignored: batching='random'.*batching='error_guided'",
        ),
        (
            {"batching": "batch_matched", "plan_kwargs": {"error_alpha": 3.0}},
            r"plan_kwargs\['error_alpha'\]=3.0 would be ignored: batching='batch_matched'",
        ),
        (
            {"plan_kwargs": {"optimizer_creator": lambda p: torch.optim.SGD(p, lr=0.1)}},
            r"plan_kwargs\['optimizer_creator'\].*would be ignored.*'optimizer'\]='Custom'",
        ),
        (
            {"plan_kwargs": {"optimizer": "Custom", "optimizer_creator": torch.optim.SGD, "eps": 0.1}},
            r"plan_kwargs\['eps'\]=0.1 would be ignored.*inside optimizer_creator",
        ),
        ({"plan_kwargs": {"compile_kwargs": {}}}, r"plan_kwargs\['compile_kwargs'\]=\{\} would be ignored"),
        (
            {"plan_kwargs": {"lr_patience": 3, "lr_factor": 0.5}},
            r"plan_kwargs \['lr_factor', 'lr_patience'\] would be ignored.*reduce_lr_on_plateau'\]=True",
        ),
        (
            {"datasplitter_kwargs": {"min_controls": 4}},
            r"datasplitter_kwargs\['min_controls'\]=4 would be ignored.*batching='batch_matched'",
        ),
        (
            {"batching": "error_guided", "datasplitter_kwargs": {"drop_last": True}},
            r"datasplitter_kwargs\['drop_last'\]=True would be ignored.*batching='error_guided'",
        ),
    ],
)
def test_options_that_would_be_ignored_are_refused(adata, kwargs, match):
    _refused(adata, ValueError, match, **kwargs)


def test_the_refused_kl_weight_fix_changes_the_model(adata, default_run):
    # the fix the message names acts (kl_weight itself left the parameters bit-identical to the default)
    assert not _same(_trained(adata, plan_kwargs={"max_kl_weight": 5.0}), default_run)


def test_error_alpha_is_used_with_error_guided_batching(adata):
    # error_alpha is refused only where it is ignored: with error-guided batching it changes the minibatches
    base = _trained(adata, batching="error_guided")
    assert not _same(_trained(adata, batching="error_guided", plan_kwargs={"error_alpha": 3.0}), base)


# ================================================================================================ internal key
@pytest.mark.parametrize("value", ["yes", {"weights": np.ones(3)}, None])
def test_the_internal_error_tracking_key_is_refused_by_name(adata, value):
    _refused(
        adata,
        ValueError,
        r"plan_kwargs\['error_tracking'\] is internal.*batching='error_guided'",
        plan_kwargs={"error_tracking": value},
    )


def test_the_plan_checks_the_error_tracking_it_is_given(adata):
    with pytest.raises(TypeError, match=r"error_tracking \(a str\) must be None or the dict with keys \['hash'"):
        SemiMechTrainingPlan(_model(adata).module, error_tracking="yes")


# ================================================================================================ late checks
@pytest.mark.parametrize(
    ("plan_kwargs", "exc", "match"),
    [
        ({"lr_factor": 2.0}, ValueError, r"plan_kwargs\['lr_factor'\]=2.0 must be a number in \(0, 1\)"),
        ({"lr_factor": 0.0}, ValueError, r"plan_kwargs\['lr_factor'\]=0.0 must be a number in \(0, 1\)"),
        ({"lr_factor": float("nan")}, ValueError, r"plan_kwargs\['lr_factor'\]=nan must be"),
        ({"lr_patience": -1}, ValueError, r"plan_kwargs\['lr_patience'\]=-1 must be a whole number of epochs >= 0"),
        ({"lr_patience": 2.5}, ValueError, r"plan_kwargs\['lr_patience'\]=2.5 must be a whole number"),
        ({"lr_threshold": -0.1}, ValueError, r"plan_kwargs\['lr_threshold'\]=-0.1 must be a finite number >= 0"),
        ({"lr_min": float("inf")}, ValueError, r"plan_kwargs\['lr_min'\]=inf must be a finite number >= 0"),
        (
            {"lr_scheduler_metric": "bogus"},
            ValueError,
            r"lr_scheduler_metric'\]='bogus' is not a metric the training logs; use one of \[.*'elbo_validation'",
        ),
    ],
)
def test_scheduler_options_are_checked_before_training(adata, plan_kwargs, exc, match):
    _refused(adata, exc, match, plan_kwargs={"reduce_lr_on_plateau": True, **plan_kwargs})


def test_a_reduce_lr_on_plateau_that_is_no_flag_is_refused(adata):
    _refused(
        adata,
        TypeError,
        r"reduce_lr_on_plateau'\]='yes' must be True or False",
        plan_kwargs={"reduce_lr_on_plateau": "yes"},
    )


def test_an_unknown_early_stopping_monitor_is_refused_with_the_logged_metrics(adata):
    _refused(
        adata,
        ValueError,
        r"early_stopping_monitor='nonexistent_metric' is not a metric the training logs; use one of \[.*'elbo_train'",
        early_stopping=True,
        early_stopping_monitor="nonexistent_metric",
    )


@pytest.mark.parametrize(
    ("datasplitter_kwargs", "exc", "match"),
    [
        (
            {"bogus": 1},
            KeyError,
            r"datasplitter_kwargs has unknown keys \['bogus'\]; it takes \[.*'external_indexing'.*'num_workers'",
        ),
        ({"sampler": None}, ValueError, r"datasplitter_kwargs\['sampler'\]=None is set by train itself.*batching"),
        ({"num_workers": -1}, ValueError, r"datasplitter_kwargs\['num_workers'\]=-1 must be a whole number >= 0"),
        ({"timeout": 5}, ValueError, r"datasplitter_kwargs \['timeout'\] act on worker processes.*num_workers"),
        ({"min_controls": -2}, ValueError, r"datasplitter_kwargs\['min_controls'\]=-2 must be a whole number >= 0"),
    ],
)
def test_datasplitter_keys_are_checked_before_training(adata, datasplitter_kwargs, exc, match):
    batching = "batch_matched" if "min_controls" in datasplitter_kwargs else "random"
    _refused(adata, exc, match, batching=batching, datasplitter_kwargs=datasplitter_kwargs)


def test_the_checked_metrics_are_those_training_logs(adata):
    # a train metric for the scheduler and a validation extra for early stopping both run
    model = _model(adata)
    model.train(
        max_epochs=2,
        plan_kwargs={"reduce_lr_on_plateau": True, "lr_scheduler_metric": "elbo_train", "lr_factor": 0.5},
        early_stopping=True,
        early_stopping_monitor="ss_residual_validation",
        **TRAIN_KWARGS,
    )
    logged = set(SemiMechTrainingPlan.logged_metrics(model.module))
    history = set(model.history)
    assert logged <= history
    assert {k for k in history - logged if not k.startswith("lr-")} == {"kl_weight"}


def test_loader_options_reach_the_batching_strategies_loader(adata):
    model = _model(adata)
    n = adata.n_obs
    splitter = PerturbationDataSplitter(
        model.adata_manager,
        batching="batch_matched",
        batch_labels=np.zeros(n, dtype=int),
        condition_codes=np.zeros(n, dtype=int),
        is_control=np.ones(n, dtype=bool),
        external_indexing=[np.arange(n), np.array([], dtype=int), np.array([], dtype=int)],
        batch_size=64,
        num_workers=1,
        timeout=7,
    )
    splitter.setup()
    loader = splitter.train_dataloader()
    assert (loader.num_workers, loader.timeout) == (1, 7)


# ================================================================================================ split order
@pytest.mark.parametrize("batching", ["random", "batch_matched"])
def test_the_order_of_external_indexing_does_not_change_the_model(adata, batching):
    rng = np.random.default_rng(1)
    cells = rng.permutation(adata.n_obs)
    train, val, test = np.sort(cells[:180]), np.sort(cells[180:210]), np.sort(cells[210:])
    shuffled = [rng.permutation(train), rng.permutation(val), rng.permutation(test)]
    assert not np.array_equal(shuffled[0], train)
    ordered = _trained(adata, batching=batching, datasplitter_kwargs={"external_indexing": [train, val, test]})
    assert _same(_trained(adata, batching=batching, datasplitter_kwargs={"external_indexing": shuffled}), ordered)
