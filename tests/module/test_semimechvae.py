"""Tests of :class:`scmech.module.SemiMechVAE` (and its training plan) on hand-made minibatches."""

from __future__ import annotations

import math

import pytest
import torch
from scvi import REGISTRY_KEYS
from scvi.module.base import LossOutput
from torch.distributions import Normal

from scmech._constants import SCMECH_REGISTRY_KEYS as K
from scmech.module import SemiMechVAE
from scmech.module._groups import _group_mmd
from scmech.train import SemiMechTrainingPlan

N_GENES = 20
N_TARGETS = 3
N_LATENT = 4
EXTRA_METRICS = {"ss_residual", "mmd", "basal_sd", "basal_leak", "fp_unconverged"}


def make_module(**kwargs) -> SemiMechVAE:
    torch.manual_seed(0)
    defaults = {
        "n_input": N_GENES,
        "n_batch": 2,
        "n_targets": N_TARGETS,
        "target_gene_index": [0, 5, -1],
        "n_media": 2,
        "n_latent": N_LATENT,
        "n_hidden": 16,
        "field_hidden": 8,
    }
    defaults.update(kwargs)
    module = SemiMechVAE(**defaults)
    # move the dynamics away from their trivial init so that every term is non-zero
    with torch.no_grad():
        module.field.operators_raw.normal_()
        module.field.media_push_raw.normal_()
        module.field.g_gate.fill_(1.0)
        module.z_base.normal_()
    return module


def entries(pert: torch.Tensor) -> torch.Tensor:
    """The registered form of multi-hot rows: target positions per cell, -1 padding (as PerturbationField)."""
    k = max(int((pert != 0).sum(1).max()), 1)
    out = torch.full((len(pert), k), -1.0)
    for i, row in enumerate(pert):
        idx = row.nonzero().ravel()
        out[i, : len(idx)] = idx.float()
    return out


def multi_hot(tensors: dict) -> torch.Tensor:
    """Multi-hot rows (n x targets) of a minibatch's registered entries."""
    e = tensors[K.PERTURBATION_KEY].long()
    out = torch.zeros(len(e), N_TARGETS)
    for i, row in enumerate(e):
        out[i, row[row >= 0]] = 1.0
    return out


def make_tensors(n: int = 48, *, dynamic: bool = False, controls: bool = True, seed: int = 0) -> dict:
    """A minibatch: 12 baseline controls, singles, a combination, two media, two batches."""
    g = torch.Generator().manual_seed(seed)
    x = torch.poisson(torch.full((n, N_GENES), 3.0), generator=g)
    x[:, 0] += 1  # no empty cells
    pert = torch.zeros(n, N_TARGETS)
    for i in range(12, n):
        pert[i, i % N_TARGETS] = 1.0
    pert[-6:, :2] = 1.0
    if not controls:
        pert[:12, 0] = 1.0
    media = (torch.arange(n) % 2).float()
    media[:12] = 0.0
    tensors = {
        REGISTRY_KEYS.X_KEY: x,
        REGISTRY_KEYS.BATCH_KEY: (torch.arange(n) % 2).float()[:, None],
        K.PERTURBATION_KEY: entries(pert),
        K.MEDIA_KEY: media[:, None],
    }
    if dynamic:
        tensors[K.TIME_KEY] = torch.tensor([0.5, 1.0, 2.0])[torch.arange(n) % 3][:, None]
        mt = torch.where(media > 0, torch.tensor(-1.0), torch.tensor(float("nan")))
        tensors[K.MEDIA_TIME_KEY] = mt[:, None]
    return tensors


def run(module, tensors, **loss_kwargs):
    inf, gen = module.forward(tensors, compute_loss=False)
    return inf, gen, module.loss(tensors, inf, gen, **loss_kwargs)


# ------------------------------------------------------------------------------------------------ hooks
def test_inference_returns_a_normal_and_samples():
    module = make_module().eval()
    tensors = make_tensors()
    inf = module.inference(tensors[REGISTRY_KEYS.X_KEY])
    assert isinstance(inf["qz"], Normal)
    assert inf["z"].shape == (48, N_LATENT)
    torch.testing.assert_close(inf["library"], torch.log(tensors[REGISTRY_KEYS.X_KEY].sum(1, keepdim=True)))
    inf3 = module.inference(tensors[REGISTRY_KEYS.X_KEY], n_samples=3)
    assert inf3["z"].shape == (3, 48, N_LATENT)


def test_generative_prior_is_the_readout_of_each_protocol():
    module = make_module().eval()
    tensors = make_tensors()
    inf, gen = module.forward(tensors, compute_loss=False)
    assert isinstance(gen["pz"], Normal)
    torch.testing.assert_close(gen["pz"].scale, torch.ones(48, N_LATENT))
    pert, media = multi_hot(tensors), tensors[K.MEDIA_KEY].reshape(-1).long()
    # steady-state regime with fixed-point read-out: mu is the fixed point of each row's (medium, perturbation)
    fp = module.field.fixed_point(module.z_base.expand(48, -1), media, module.field.drive(pert), implicit=False)
    torch.testing.assert_close(gen["mu"], fp.z, rtol=1e-4, atol=1e-4)
    assert float(gen["fp_residual"].max()) < 1e-3
    # rows with the same protocol share one state (rows are deduplicated)
    torch.testing.assert_close(gen["mu"][0], gen["mu"][1])
    assert gen["px"].mean.shape == (48, N_GENES)
    torch.testing.assert_close(gen["px"].scale.sum(-1), torch.ones(48))


def test_flow_readout_integrates_to_the_horizon():
    module = make_module(readout="flow", horizon=3.0).eval()
    pert, media = multi_hot(make_tensors()), torch.zeros(48, dtype=torch.long)
    mu, residual = module.readout_states(pert, media)
    expected = module.field.integrate_protocol(
        module.z_base.expand(48, -1),
        module.field.drive(pert),
        media,
        torch.full((48,), 3.0),
        torch.full((48,), float("nan")),
        n_steps=module.ode_steps,
    )
    torch.testing.assert_close(mu, expected)
    torch.testing.assert_close(residual, torch.zeros(48))


def test_dynamic_readout_depends_on_time_and_media_time():
    module = make_module(regime="dynamic", readout="flow").eval()
    t = make_tensors(dynamic=True)
    pert, media = multi_hot(t), t[K.MEDIA_KEY].reshape(-1).long()
    time, mtime = t[K.TIME_KEY].reshape(-1), t[K.MEDIA_TIME_KEY].reshape(-1)
    with torch.no_grad():
        mu, _ = module.readout_states(pert, media, time=time, media_time=mtime)
        mu_later, _ = module.readout_states(pert, media, time=time + 1.0, media_time=mtime)
        mu_switch_after, _ = module.readout_states(
            pert, media, time=time, media_time=torch.where(media == 1, 0.25, mtime)
        )
    assert float((mu - mu_later).norm(dim=-1).min()) > 1e-4
    switched = media == 1
    assert float((mu - mu_switch_after)[switched].norm(dim=-1).min()) > 1e-4
    torch.testing.assert_close(mu[~switched], mu_switch_after[~switched])


def test_samples_are_counts_from_the_measurement_distribution():
    """Posterior predictive samples are counts whose mean is the NB mean at the cell's sampled latent state."""
    module = make_module().eval()
    tensors = make_tensors()
    s = module.sample(tensors)
    assert s.shape == (48, N_GENES)
    s3 = module.sample(tensors, n_samples=3)
    assert s3.shape == (48, N_GENES, 3)
    assert bool((s3 >= 0).all())
    assert torch.equal(s3, s3.round())
    # the same seed draws the same latent state; many samples at it average to the distribution's mean
    torch.manual_seed(0)
    many = module.sample(tensors, n_samples=1000).float().mean(-1)
    torch.manual_seed(0)
    with torch.no_grad():
        _, gen = module.forward(tensors, compute_loss=False, inference_kwargs={"n_samples": 1})
    torch.testing.assert_close(many, gen["px"].mean, rtol=0.15, atol=0.5)
    # the scvi-tools call path (generative_kwargs) works
    a = module.sample(tensors, n_samples=1, generative_kwargs={"transform_batch": torch.tensor(0)})
    assert a.shape == (48, N_GENES)


# ------------------------------------------------------------------------------------------------ loss
@pytest.mark.parametrize("dynamic", [False, True])
def test_loss_output_layout(dynamic):
    kw = {"regime": "dynamic", "readout": "flow"} if dynamic else {}
    module = make_module(**kw).eval()
    _, _, out = run(module, make_tensors(dynamic=dynamic))
    assert isinstance(out, LossOutput)
    assert out.loss.ndim == 0
    assert torch.isfinite(out.loss)
    assert out.reconstruction_loss["reconstruction_loss"].shape == (48,)
    assert isinstance(out.kl_local, dict)
    assert set(out.kl_local) == {"kl_divergence_z"}
    assert out.kl_local["kl_divergence_z"].shape == (48,)
    assert set(out.extra_metrics) == EXTRA_METRICS
    for key, value in out.extra_metrics.items():
        assert value.ndim == 0, key
        assert not value.requires_grad, key
    assert 0.0 <= float(out.extra_metrics["fp_unconverged"]) <= 1.0


def test_loss_value_is_the_plain_elbo_without_ss_and_mmd():
    module = make_module().eval()
    _, _, out = run(module, make_tensors(), kl_weight=1.0, ss_weight=0.0, mmd_weight=0.0)
    recon = out.reconstruction_loss["reconstruction_loss"]
    kl = out.kl_local["kl_divergence_z"]
    torch.testing.assert_close(out.loss, torch.mean(recon + kl))


def _grads(module, loss) -> dict[str, torch.Tensor]:
    params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in params], retain_graph=True, allow_unused=True)
    return {n: g for (n, _), g in zip(params, grads, strict=True) if g is not None}


def test_loss_gradient_is_the_plain_elbo_gradient_without_ss_and_mmd():
    module = make_module().eval()
    tensors = make_tensors()
    _, _, out = run(module, tensors, kl_weight=1.0, ss_weight=0.0, mmd_weight=0.0)
    elbo = torch.mean(out.reconstruction_loss["reconstruction_loss"] + out.kl_local["kl_divergence_z"])
    g_loss = _grads(module, out.loss)
    g_elbo = _grads(module, elbo)
    assert set(g_loss) == set(g_elbo)
    assert any(n.startswith("field.") and g.abs().max() > 0 for n, g in g_loss.items())
    assert any(n.startswith("encoder.") and g.abs().max() > 0 for n, g in g_loss.items())
    for name in g_loss:
        torch.testing.assert_close(g_loss[name], g_elbo[name], rtol=1e-4, atol=1e-6, msg=name)


def test_kl_warmup_weight_acts_on_the_encoder_only():
    module = make_module().eval()
    tensors = make_tensors()
    inf, gen = module.forward(tensors, compute_loss=False)
    grads = {
        w: _grads(module, module.loss(tensors, inf, gen, kl_weight=w, ss_weight=0.0, mmd_weight=0.0).loss)
        for w in (1.0, 0.1)
    }
    dyn = set(module.dynamics_parameter_names()) - {"decoder.own_effect"}
    for name in dyn:
        if name in grads[1.0]:
            torch.testing.assert_close(grads[1.0][name], grads[0.1][name], msg=name)
    enc = [n for n in grads[1.0] if n.startswith("encoder.")]
    assert enc
    assert any(not torch.allclose(grads[1.0][n], grads[0.1][n]) for n in enc)


def test_steady_state_term_adds_exactly_weight_times_ss():
    module = make_module().eval()
    tensors = make_tensors()
    inf, gen = module.forward(tensors, compute_loss=False)
    base = module.loss(tensors, inf, gen, ss_weight=0.0, mmd_weight=0.0)
    ss_residual = base.extra_metrics["ss_residual"]
    assert float(ss_residual) > 1e-3
    # ss_residual = ||f(mean baseline control latent; m0, no perturbation)||
    ctrl = inf["qz"].loc[:12].mean(0, keepdim=True)
    f_ctrl = module.field(ctrl, torch.zeros(1, dtype=torch.long), torch.zeros(1, N_LATENT))
    torch.testing.assert_close(ss_residual, f_ctrl.norm().detach())
    for w in (0.5, 3.0):
        on = module.loss(tensors, inf, gen, ss_weight=w, mmd_weight=0.0)
        torch.testing.assert_close(on.loss - base.loss, w * ss_residual**2, rtol=1e-4, atol=1e-5)
    # the module's default weight applies when the loss argument is None
    default = module.loss(tensors, inf, gen, mmd_weight=0.0)
    torch.testing.assert_close(default.loss - base.loss, module.steady_state_weight * ss_residual**2)


def test_steady_state_term_on_cells_averages_over_control_cells():
    module = make_module(steady_state_on="cells").eval()
    tensors = make_tensors()
    inf, gen = module.forward(tensors, compute_loss=False)
    out = module.loss(tensors, inf, gen, ss_weight=0.0, mmd_weight=0.0)
    loc = inf["qz"].loc[:12]
    f_ctrl = module.field(loc, torch.zeros(12, dtype=torch.long), torch.zeros(12, N_LATENT))
    torch.testing.assert_close(out.extra_metrics["ss_residual"], f_ctrl.pow(2).sum(-1).mean().sqrt().detach())


def test_mmd_term_adds_exactly_weight_times_mmd():
    module = make_module().eval()
    tensors = make_tensors()
    inf, gen = module.forward(tensors, compute_loss=False)
    base = module.loss(tensors, inf, gen, ss_weight=0.0, mmd_weight=0.0)
    on = module.loss(tensors, inf, gen, ss_weight=0.0, mmd_weight=2.0)
    mmd = on.extra_metrics["mmd"]
    assert float(base.extra_metrics["mmd"]) == 0.0
    assert float(mmd.abs()) > 0
    torch.testing.assert_close(on.loss - base.loss, 2.0 * mmd, rtol=1e-4, atol=1e-5)


def test_control_reference_is_tracked_in_training_and_used_without_controls():
    module = make_module()
    assert not bool(module.control_reference_set)
    tensors = make_tensors()
    module.train()
    inf, gen, _ = run(module, tensors)
    assert bool(module.control_reference_set)
    torch.testing.assert_close(module.control_reference, inf["qz"].loc[:12].mean(0).detach())
    # evaluation does not move the running mean
    ref = module.control_reference.clone()
    module.eval()
    run(module, make_tensors(seed=1))
    torch.testing.assert_close(module.control_reference, ref)
    # a minibatch without baseline controls evaluates the steady-state term at the running mean
    no_ctrl = make_tensors(controls=False)
    _, _, out = run(module, no_ctrl, ss_weight=0.0, mmd_weight=0.0)
    f_ref = module.field(ref[None], torch.zeros(1, dtype=torch.long), torch.zeros(1, N_LATENT))
    torch.testing.assert_close(out.extra_metrics["ss_residual"], f_ref.norm().detach())


def test_a_non_finite_loss_is_returned_for_the_training_callback_to_report():
    """The module does not raise: the model's FiniteLossCallback stops training with epoch, step and causes."""
    module = make_module().eval()
    tensors = make_tensors()
    inf, gen = module.forward(tensors, compute_loss=False)
    out = module.loss(tensors, inf, gen, kl_weight=math.nan)
    assert not torch.isfinite(out.loss)


# ------------------------------------------------------------------------------------------------ MMD
def _same(groups: torch.Tensor) -> torch.Tensor:
    return groups.unsqueeze(1) == groups.unsqueeze(0)


def _mmd_by_loops(x, groups, ref, bw):
    """The unbiased MMD^2 of each group against the reference, one pair at a time."""

    def k(a, b):
        return sum(math.exp(-float(((a - b) ** 2).sum()) / (2 * w**2)) for w in bw)

    r = [i for i in range(len(x)) if ref[i]]
    out = []
    for g in groups.unique().tolist():
        rows = [i for i in range(len(x)) if groups[i] == g]
        if len(rows) < 2 or (not bool(ref.all()) and all(ref[i] for i in rows)):
            continue
        sxx = sum(k(x[i], x[j]) for i in rows for j in rows if i != j) / (len(rows) * (len(rows) - 1))
        syy = sum(k(x[i], x[j]) for i in r for j in r if i != j) / (len(r) * (len(r) - 1))
        pairs = [(i, j) for i in rows for j in r if i != j]
        sxy = sum(k(x[i], x[j]) for i, j in pairs) / len(pairs)
        out.append(sxx + syy - 2 * sxy)
    return sum(out) / len(out), len(out)


@pytest.mark.parametrize("pooled", [False, True])
def test_group_mmd_equals_the_pairwise_sums_of_each_group(pooled):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(14, 2, generator=g, dtype=torch.float64)
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 4, 4, 4, 4])
    ref = torch.ones(14, dtype=torch.bool) if pooled else groups == 0
    bw = [0.5, 1.0]
    got, n_groups = _group_mmd(x, _same(groups), ref, bw)
    want, n_want = _mmd_by_loops(x, groups, ref, bw)
    assert float(n_groups) == pytest.approx(n_want)
    assert float(got) == pytest.approx(want, rel=1e-10)


def test_group_mmd_detects_a_shifted_group_and_ignores_tiny_groups():
    g = torch.Generator().manual_seed(0)
    n = 60
    x = torch.randn(n, 3, generator=g)
    groups = torch.zeros(n, dtype=torch.long)
    groups[20:40] = 1
    groups[40:] = 2
    ref = groups == 0
    bw = [0.5, 1.0, 2.0]
    same, k = _group_mmd(x, _same(groups), ref, bw)
    assert float(k) == pytest.approx(2)
    assert abs(float(same)) < 0.1
    shifted = x.clone()
    shifted[20:40] += 3.0
    big, k = _group_mmd(shifted, _same(groups), ref, bw)
    assert float(k) == pytest.approx(2)
    assert float(big) > 5 * abs(float(same)) + 0.2
    # groups of one row are skipped; no reference rows: zero and no group
    single = groups.clone()
    single[20:] = torch.arange(1, 41)
    _, k = _group_mmd(x, _same(single), ref, bw)
    assert float(k) == 0
    zero, k = _group_mmd(x, _same(groups), torch.zeros(n, dtype=torch.bool), bw)
    assert float(k) == 0
    assert float(zero) == 0.0


# ------------------------------------------------------------------------------------------------ training plan
def test_training_plan_gives_the_dynamics_a_faster_learning_rate():
    module = make_module()
    plan = SemiMechTrainingPlan(module, lr=1e-3, dynamics_lr_factor=5.0)
    opt = plan.configure_optimizers()["optimizer"]
    assert len(opt.param_groups) == 2
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)
    assert opt.param_groups[1]["lr"] == pytest.approx(5e-3)
    names = {id(p): n for n, p in module.named_parameters()}
    fast = {names[id(p)] for p in opt.param_groups[1]["params"]}
    slow = {names[id(p)] for p in opt.param_groups[0]["params"]}
    assert "z_base" in fast
    assert "field.operators_raw" in fast
    assert "decoder.own_effect" in fast
    assert not (fast & slow)
    assert any(n.startswith("encoder.") for n in slow)
    assert "field.log_tau" not in fast | slow  # frozen unless learn_onset


def test_training_plan_rejects_a_non_positive_factor():
    with pytest.raises(ValueError, match="dynamics_lr_factor must be > 0"):
        SemiMechTrainingPlan(make_module(), dynamics_lr_factor=0.0)


# ------------------------------------------------------------------------------------------------ host syncs
class HostReads(torch.overrides.TorchFunctionMode):
    """Record every tensor operation that reads a value back to the host (a device sync on a GPU)."""

    READS = frozenset(
        {"item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "cpu", "nonzero", "unique"}
        | {"unique_consecutive", "bincount", "masked_select", "argwhere"}
    )

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        index = args[1] if name in ("__getitem__", "__setitem__") and len(args) > 1 else None
        parts = index if isinstance(index, tuple) else (index,)
        if name in self.READS or any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts):
            self.reads.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("controls", [True, False])
@pytest.mark.parametrize("steady_state_on", ["mean", "cells"])
def test_a_training_step_never_reads_back_from_the_device(controls, steady_state_on):
    # a GPU step must not wait for the device: no .item(), no bool(tensor), no data-dependent shapes
    module = make_module(steady_state_on=steady_state_on).train()
    module.deduplicate = False  # as on a GPU, where finding the distinct protocols would wait for the device
    module.sparse_counts = False  # as on a GPU, where finding the non-zero counts would wait for the device
    tensors = make_tensors(controls=controls)
    for _ in range(2):  # the first step sets the control reference, the second blends it
        with HostReads() as spy:
            inf, gen = module.forward(tensors, compute_loss=False)
            out = module.loss(tensors, inf, gen, kl_weight=0.5)
            out.loss.backward()
        assert spy.reads == []
    assert torch.isfinite(out.loss)
    # solving every row gives the states of solving each distinct protocol once (the CPU's way)
    mu_all = gen["mu"]
    module.deduplicate = True
    torch.testing.assert_close(module.forward(tensors, compute_loss=False)[1]["mu"], mu_all)


def test_the_loss_on_stored_counts_equals_the_dense_loss():
    # the CPU's sparse evaluation of the NB log-gamma terms is the same loss, in value and gradient
    module = make_module().train()
    tensors = make_tensors()
    out = {}
    for sparse in (True, False):
        module.sparse_counts = sparse
        module.zero_grad()
        torch.manual_seed(0)
        inf, gen = module.forward(tensors, compute_loss=False)
        loss = module.loss(tensors, inf, gen, kl_weight=0.5)
        loss.loss.backward()
        out[sparse] = (loss.loss.detach(), [p.grad.clone() for p in module.parameters() if p.grad is not None])
    torch.testing.assert_close(out[True][0], out[False][0])
    for a, b in zip(out[True][1], out[False][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_training_solves_run_a_budget_that_follows_what_they_needed(monkeypatch):
    import scmech.module._semimechvae as vae

    monkeypatch.setattr(vae, "SOLVER_REVIEW_STEPS", 3)
    module = make_module().train()
    with torch.no_grad():
        module.field.g_gate.fill_(2.0)  # a strongly nonlinear field: Newton needs several iterations
        module.field.operators_raw.normal_(0, 2.0)
    module._fp_budget = 1
    tensors = make_tensors()
    budgets = []
    for _ in range(12):
        module.forward(tensors, compute_loss=False)
        budgets.append(module._fp_budget)
    # the budget grew from 1 (it ran out) and settled where the solves converge within it
    assert budgets[-1] > 1
    assert budgets[-1] == budgets[-4]
    module.forward(tensors, compute_loss=False)
    assert float(module._last_unconverged) == 0.0
    # outside training the solve checks convergence itself and gives the same states
    mu_train = module.forward(tensors, compute_loss=False)[1]["mu"]
    module.eval()
    mu_eval = module.forward(tensors, compute_loss=False)[1]["mu"]
    torch.testing.assert_close(mu_train, mu_eval, rtol=1e-4, atol=1e-4)


def test_distinct_rows_are_the_rows_of_torch_unique_in_order_of_appearance():
    from scmech.module._groups import _distinct_rows

    g = torch.Generator().manual_seed(0)
    rows = torch.randint(0, 3, (40, 4), generator=g).float()
    uniq, inverse = _distinct_rows(rows)
    torch.testing.assert_close(uniq[inverse], rows)  # every row is recovered from its distinct row
    assert len(uniq) == len(torch.unique(rows, dim=0))
    firsts = [next(i for i in range(40) if torch.equal(rows[i], u)) for u in uniq]
    assert firsts == sorted(firsts)


def test_offset_added_in_place_equals_the_offset_added_to_the_logits():
    from scmech.module import MeasurementDecoder

    torch.manual_seed(0)
    dec = MeasurementDecoder(3, 8, 0, torch.tensor([2, -1, 5]), shared_offset=True, own_target=True)
    with torch.no_grad():
        dec.own_effect.normal_()
        dec.shared_offset.normal_()
    rows = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    eff = torch.tensor([0.5, 1.0, 0.9, 0.3])
    logits = torch.randn(4, 8)
    expected = logits + dec.perturbation_offset(rows, eff)
    with torch.no_grad():
        got = dec.perturbation_offset(rows, eff, add_to=logits.clone())
    torch.testing.assert_close(got, expected)
    assert torch.equal(got[1], logits[1])  # a control row: nothing added
