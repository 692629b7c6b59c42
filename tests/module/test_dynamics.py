"""Tests of the latent dynamics (:class:`scmech.module.VectorField`): tensors in, tensors out."""

from __future__ import annotations

import pytest
import torch

from scmech.module import FixedPointResult, VectorField

D = torch.float64
N_LATENT = 5
N_TARGETS = 3


def random_field(
    *,
    n_media: int = 1,
    n_hidden: int = 16,
    n_layers: int = 1,
    seed: int = 0,
    gate: float = 2.0,
    lipschitz: float = 0.9,
    media_scale: float = 1.0,
    **kwargs,
) -> VectorField:
    """A float64 field with all parameters random (the default init has g = 0 and zero operators)."""
    torch.manual_seed(seed)
    f = VectorField(
        N_LATENT, N_TARGETS, n_media=n_media, n_hidden=n_hidden, n_layers=n_layers, lipschitz=lipschitz, **kwargs
    ).to(D)
    with torch.no_grad():
        f.gamma_raw.copy_(0.5 * torch.randn(N_LATENT, dtype=D))
        f.center.copy_(torch.randn(N_LATENT, dtype=D))
        f.operators_raw.copy_(torch.randn(N_TARGETS, N_LATENT, dtype=D))
        f.shared_raw.copy_(0.5 * torch.randn(N_LATENT, dtype=D))
        f.media_push_raw.copy_(media_scale * torch.randn_like(f.media_push_raw))
        if f.media_embedding is not None:
            f.media_embedding.copy_(torch.randn_like(f.media_embedding))
        for w in f.weights:
            w.copy_(1.5 * torch.randn_like(w))
        for b in f.biases:
            b.copy_(0.5 * torch.randn_like(b))
        if f.g_gate is not None:
            f.g_gate.fill_(gate)
    return f


def design(n: int = 6, n_media: int = 1, seed: int = 1):
    """Perturbations (controls, singles, a combination), media and efficacies for ``n`` rows."""
    g = torch.Generator().manual_seed(seed)
    pert = torch.zeros(n, N_TARGETS, dtype=D)
    for i in range(1, n):
        pert[i, (i - 1) % N_TARGETS] = 1.0
    pert[-1, :2] = 1.0
    media = torch.arange(n) % n_media
    eff = torch.rand(n, generator=g, dtype=D) * 0.5 + 0.5
    return pert, media, eff


def autograd_jacobian(f: VectorField, z, media, drive) -> torch.Tensor:
    rows = []
    for i in range(z.shape[0]):
        rows.append(
            torch.autograd.functional.jacobian(lambda zi, i=i: f(zi[None], media[i : i + 1], drive[i : i + 1])[0], z[i])
        )
    return torch.stack(rows)


# ------------------------------------------------------------------------------------------------ construction
@pytest.mark.parametrize("lipschitz", [0.0, 1.0, 1.5, -0.1])
def test_lipschitz_outside_unit_interval_raises(lipschitz):
    with pytest.raises(ValueError, match=r"`lipschitz` must be in \(0, 1\)"):
        VectorField(4, 2, lipschitz=lipschitz)


def test_default_init_is_linear_relaxation_to_center():
    f = VectorField(4, 2, n_media=3).to(D)
    # g starts at zero (gate 0), operators and media pushes at zero, gamma = 1
    torch.testing.assert_close(f.gamma, torch.ones(4, dtype=D))
    z = torch.randn(5, 4, dtype=D)
    media = torch.tensor([0, 1, 2, 0, 1])
    drive = torch.zeros(5, 4, dtype=D)
    torch.testing.assert_close(f(z, media, drive), -(z - f.center))
    assert f.media_push.shape == (3, 4)
    torch.testing.assert_close(f.media_push[0], torch.zeros(4, dtype=D))


def test_drive_scales_operators_by_efficacy_and_adds_shared_push_to_perturbed_rows():
    f = random_field()
    pert, _, eff = design()
    u = f.drive(pert, eff)
    expected = (pert @ f.operators) * eff[:, None] + (pert.sum(1, keepdim=True) > 0).to(D) * f.shared
    torch.testing.assert_close(u, expected)
    # control row: no push at all
    torch.testing.assert_close(u[0], torch.zeros(N_LATENT, dtype=D))
    # efficacy None = 1; operators can be replaced (e.g. rows for unseen targets)
    torch.testing.assert_close(f.drive(pert), pert @ f.operators + (pert.sum(1, keepdim=True) > 0).to(D) * f.shared)
    ops = torch.randn(N_TARGETS, N_LATENT, dtype=D)
    torch.testing.assert_close(f.drive(pert, operators=ops)[1], ops[0] + f.shared)
    # operator_scale multiplies the raw parameters
    f2 = random_field(operator_scale=3.0)
    torch.testing.assert_close(f2.operators, 3.0 * f2.operators_raw)


# ------------------------------------------------------------------------------------------------ Jacobian
@pytest.mark.parametrize("n_media", [1, 3])
@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_analytic_jacobian_matches_autograd(n_media, n_layers):
    f = random_field(n_media=n_media, n_layers=n_layers, seed=n_layers)
    pert, media, eff = design(n_media=n_media)
    drive = f.drive(pert, eff)
    z = 2.0 * torch.randn(len(media), N_LATENT, dtype=D)
    jac = f.jacobian(z, media)
    assert jac.shape == (len(media), N_LATENT, N_LATENT)
    torch.testing.assert_close(jac, autograd_jacobian(f, z, media, drive), rtol=1e-10, atol=1e-12)
    # the nonlinear part contributes (the comparison is not only -diag(gamma))
    assert (jac + torch.diag_embed(f.gamma.expand(len(media), -1))).abs().max() > 1e-3
    if n_media > 1:
        # the medium enters the nonlinear part through its embedding
        other = (media + 1) % n_media
        assert not torch.allclose(f.jacobian(z, other), jac)


def test_linear_field_jacobian_is_minus_gamma():
    f = random_field(n_hidden=0, n_media=2)
    z = torch.randn(4, N_LATENT, dtype=D)
    media = torch.tensor([0, 1, 0, 1])
    torch.testing.assert_close(f.jacobian(z, media), -torch.diag_embed(f.gamma.expand(4, -1)))
    torch.testing.assert_close(f.jacobian(z, media), autograd_jacobian(f, z, media, torch.zeros_like(z)))


# ------------------------------------------------------------------------------------------------ fixed points
@pytest.mark.parametrize(("n_media", "n_layers"), [(1, 1), (3, 2)])
def test_fixed_point_converges(n_media, n_layers):
    f = random_field(n_media=n_media, n_layers=n_layers)
    pert, media, eff = design(n_media=n_media)
    drive = f.drive(pert, eff)
    z0 = torch.randn(len(media), N_LATENT, dtype=D)
    res = f.fixed_point(z0, media, drive, tol=1e-10)
    assert isinstance(res, FixedPointResult)
    assert res.z.shape == z0.shape
    assert bool(res.converged.all())
    assert 1 <= res.n_iter < 50
    assert float(res.residual.max()) < 1e-9
    with torch.no_grad():
        assert float(f(res.z, media, drive).abs().max()) < 1e-9
    # a unique fixed point: another start gives the same state
    res2 = f.fixed_point(z0 + 5.0, media, drive, tol=1e-10)
    torch.testing.assert_close(res2.z, res.z, rtol=1e-8, atol=1e-8)


def test_fixed_point_of_linear_field_is_closed_form():
    f = random_field(n_hidden=0, n_media=2)
    pert, media, eff = design(n_media=2)
    drive = f.drive(pert, eff)
    res = f.fixed_point(torch.zeros(len(media), N_LATENT, dtype=D), media, drive, tol=1e-12, check_every=1)
    expected = f.center + (f.media_push[media] + drive) / f.gamma
    torch.testing.assert_close(res.z, expected)
    assert res.n_iter == 1  # Newton solves a linear field in one step


def test_fixed_point_falls_back_to_the_contraction_when_newton_fails(monkeypatch):
    # a Jacobian that makes every Newton step fail: the relaxation step alone must still reach the fixed point
    f = random_field(n_layers=2, gate=5.0)
    pert, media, eff = design()
    drive = f.drive(pert, eff)
    z0 = 30.0 * torch.randn(len(media), N_LATENT, dtype=D)
    expected = f.fixed_point(z0, media, drive, tol=1e-11, implicit=False).z
    monkeypatch.setattr(f, "jacobian", lambda z, media: torch.zeros(z.shape[0], N_LATENT, N_LATENT, dtype=D))
    res = f.fixed_point(z0, media, drive, tol=1e-11, max_iter=3000, implicit=False)
    assert bool(res.converged.all())
    torch.testing.assert_close(res.z, expected, rtol=1e-8, atol=1e-8)


def test_fixed_point_tolerance_follows_the_dtype():
    # float32 cannot resolve a residual of 1e-12 on states of order one: the solve stops at what it can resolve
    f = random_field().float()
    pert, media, eff = design()
    drive = f.drive(pert.float(), eff.float())
    res = f.fixed_point(torch.zeros(len(media), N_LATENT), media, drive, tol=1e-12, max_iter=200, implicit=False)
    assert bool(res.converged.all())
    assert res.n_iter < 40
    exact = f.double().fixed_point(torch.zeros(len(media), N_LATENT, dtype=D), media, drive.double(), tol=1e-12).z
    torch.testing.assert_close(res.z.double(), exact.detach(), rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_fixed_point_reports_unconverged_solves():
    f = random_field(n_layers=2, gate=5.0)
    pert, media, eff = design()
    drive = f.drive(pert, eff)
    res = f.fixed_point(100.0 * torch.ones(len(media), N_LATENT, dtype=D), media, drive, tol=1e-14, max_iter=1)
    assert res.n_iter == 1
    assert not bool(res.converged.all())
    assert float(res.residual.max()) > 1e-4


def test_fixed_point_without_implicit_gradient_is_detached():
    f = random_field()
    pert, media, eff = design()
    res = f.fixed_point(torch.zeros(len(media), N_LATENT, dtype=D), media, f.drive(pert, eff), implicit=False)
    assert not res.z.requires_grad
    res = f.fixed_point(torch.zeros(len(media), N_LATENT, dtype=D), media, f.drive(pert, eff), implicit=True)
    assert res.z.requires_grad


def _fixed_point_objective(f, pert, media, eff, weights, z0):
    return (weights * f.fixed_point(z0, media, f.drive(pert, eff), tol=1e-13, max_iter=100).z).sum()


@pytest.mark.parametrize("param", ["operators_raw", "shared_raw", "media_push_raw", "center", "gamma_raw", "g_gate"])
def test_fixed_point_implicit_gradient_matches_finite_differences(param):
    f = random_field(n_media=2, n_layers=2)
    pert, media, eff = design(n_media=2)
    g = torch.Generator().manual_seed(3)
    weights = torch.randn(len(media), N_LATENT, generator=g, dtype=D)
    z0 = torch.zeros(len(media), N_LATENT, dtype=D)
    f.zero_grad()
    _fixed_point_objective(f, pert, media, eff, weights, z0).backward()
    p = getattr(f, param)
    grad = p.grad.detach().clone().reshape(-1)
    assert grad.abs().max() > 1e-6
    flat = p.data.view(-1)
    eps = 1e-6
    fd = torch.empty_like(grad)
    with torch.no_grad():
        for k in range(flat.numel()):
            old = flat[k].item()
            flat[k] = old + eps
            up = _fixed_point_objective(f, pert, media, eff, weights, z0)
            flat[k] = old - eps
            down = _fixed_point_objective(f, pert, media, eff, weights, z0)
            flat[k] = old
            fd[k] = (up - down) / (2 * eps)
    torch.testing.assert_close(grad, fd, rtol=1e-5, atol=1e-7)


def test_fixed_point_and_its_gradient_match_a_long_integration():
    f = random_field(n_media=2, n_layers=2)
    pert, media, eff = design(n_media=2)
    g = torch.Generator().manual_seed(4)
    weights = torch.randn(len(media), N_LATENT, generator=g, dtype=D)
    z0 = torch.zeros(len(media), N_LATENT, dtype=D)
    params = [f.operators_raw, f.center, f.gamma_raw, f.weights[0]]

    f.zero_grad()
    res = f.fixed_point(z0, media, f.drive(pert, eff), tol=1e-13, max_iter=100)
    (weights * res.z).sum().backward()
    implicit = [p.grad.detach().clone() for p in params]

    f.zero_grad()
    n = len(media)
    t_read = torch.full((n,), 40.0, dtype=D)
    z_flow = f.integrate_protocol(
        z0, f.drive(pert, eff), media, t_read, torch.full((n,), float("nan"), dtype=D), n_steps=80
    )
    (weights * z_flow).sum().backward()
    through_flow = [p.grad.detach().clone() for p in params]

    torch.testing.assert_close(z_flow, res.z.detach(), rtol=1e-7, atol=1e-7)
    for a, b in zip(implicit, through_flow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------ stability
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n_media", [1, 3])
@torch.no_grad()
def test_lipschitz_bound_makes_every_linearisation_stable(seed, n_media):
    lip = 0.9
    # gate 5: tanh(5) ~ 1, the nonlinear part is as strong as the bound allows; large random weights
    f = random_field(n_media=n_media, n_layers=2, seed=seed, gate=5.0, lipschitz=lip)
    with torch.no_grad():
        for w in f.weights:
            w.mul_(10.0)
    pert, media, eff = design(n_media=n_media, seed=seed)
    drive = f.drive(pert, eff)
    res = f.fixed_point(torch.zeros(len(media), N_LATENT, dtype=D), media, drive, tol=1e-10)
    assert bool(res.converged.all())
    # at the fixed points and at random far-away states: Re(eig J) <= -(1 - lip) * min(gamma)
    bound = -(1 - lip) * float(f.gamma.min())
    z_far = 10.0 * torch.randn(len(media), N_LATENT, dtype=D)
    for z in (res.z.detach(), z_far):
        eig = torch.linalg.eigvals(f.jacobian(z, media))
        assert float(eig.real.max()) <= bound + 1e-10
        # the nonlinear part is genuinely there: its norm is close to the bound
        g_jac = f.jacobian(z, media) + torch.diag_embed(f.gamma.expand(len(media), -1))
        assert float(torch.linalg.matrix_norm(g_jac, ord=2).max()) <= lip * float(f.gamma.min()) + 1e-10


@torch.no_grad()
def test_field_is_a_contraction_towards_its_fixed_point():
    f = random_field(n_layers=2, gate=5.0)
    pert, media, eff = design()
    drive = f.drive(pert, eff)
    z_star = f.fixed_point(torch.zeros(len(media), N_LATENT, dtype=D), media, drive, implicit=False).z
    z = z_star + 3.0 * torch.randn_like(z_star)
    # <f(z), z - z*> < 0: the flow moves every state closer to the fixed point
    inner = (f(z, media, drive) * (z - z_star)).sum(-1)
    assert bool((inner < 0).all())


# ------------------------------------------------------------------------------------------------ protocols
def _nan(n):
    return torch.full((n,), float("nan"), dtype=D)


@torch.no_grad()
def test_integrate_protocol_without_switch_approaches_the_fixed_point():
    f = random_field(n_media=2, n_layers=2)
    pert, media, eff = design(n_media=2)
    n = len(media)
    drive = f.drive(pert, eff)
    z0 = f.center.detach().expand(n, -1).clone()
    z_star = f.fixed_point(z0, media, drive, tol=1e-12, implicit=False).z
    dist = []
    for t in (0.5, 4.0, 40.0):
        z = f.integrate_protocol(z0, drive, media, torch.full((n,), t, dtype=D), _nan(n), n_steps=80)
        dist.append(float((z - z_star).norm(dim=-1).max()))
    assert dist == sorted(dist, reverse=True)
    assert dist[-1] < 1e-8
    assert dist[0] > 1e-2


def test_integrate_protocol_at_time_zero_returns_the_start():
    f = random_field()
    pert, media, eff = design()
    n = len(media)
    z0 = torch.randn(n, N_LATENT, dtype=D)
    z = f.integrate_protocol(z0, f.drive(pert, eff), media, torch.zeros(n, dtype=D), _nan(n))
    torch.testing.assert_close(z, z0)
    # negative read-out times are clamped to 0
    z = f.integrate_protocol(z0, f.drive(pert, eff), media, torch.full((n,), -1.0, dtype=D), _nan(n))
    torch.testing.assert_close(z, z0)


def test_integrate_protocol_matches_the_linear_solution():
    # dz/dt = -gamma (z - c) + u with constant u: z(t) = z* + (z0 - z*) exp(-gamma t)
    f = random_field(n_hidden=0)
    pert, media, eff = design()
    n = len(media)
    drive = f.drive(pert, eff)
    z0 = torch.randn(n, N_LATENT, dtype=D)
    t = torch.linspace(0.1, 3.0, n, dtype=D)
    z = f.integrate_protocol(z0, drive, media, t, _nan(n), n_steps=64)
    z_star = f.center + drive / f.gamma
    expected = z_star + (z0 - z_star) * torch.exp(-f.gamma * t[:, None])
    torch.testing.assert_close(z, expected, rtol=1e-7, atol=1e-8)


@torch.no_grad()
def test_media_switch_before_or_after_perturbation_gives_different_states():
    f = random_field(n_media=2, n_layers=2)
    pert, _, eff = design()
    n = len(pert)
    drive = f.drive(pert, eff)
    media = torch.ones(n, dtype=torch.long)
    z0 = f.fixed_point(
        f.center.detach().expand(n, -1).clone(), torch.zeros(n, dtype=torch.long), torch.zeros_like(drive)
    ).z.detach()
    t = torch.full((n,), 2.0, dtype=D)
    before = f.integrate_protocol(z0, drive, media, t, torch.full((n,), -1.0, dtype=D))
    after = f.integrate_protocol(z0, drive, media, t, torch.full((n,), 1.0, dtype=D))
    assert float((before - after).norm(dim=-1).min()) > 1e-2


@pytest.mark.parametrize("n_hidden", [0, 16])
@torch.no_grad()
def test_operators_do_not_commute_at_finite_times_but_share_the_fixed_point(n_hidden):
    # A: medium for a, then perturbation for b; B: perturbation for a, then medium for b (same total time)
    f = random_field(n_media=2, n_layers=2, n_hidden=n_hidden)
    pert, _, eff = design()
    pert, eff = pert[1:], eff[1:]  # perturbed rows only
    n = len(pert)
    drive = f.drive(pert, eff)
    media = torch.ones(n, dtype=torch.long)
    z0 = f.center.detach().expand(n, -1).clone()
    a = 1.0

    def both(b):
        za = f.integrate_protocol(
            z0, drive, media, torch.full((n,), b, dtype=D), torch.full((n,), -a, dtype=D), n_steps=60
        )
        zb = f.integrate_protocol(
            z0, drive, media, torch.full((n,), a + b, dtype=D), torch.full((n,), a, dtype=D), n_steps=60
        )
        return za, zb

    za, zb = both(1.0)
    assert float((za - zb).norm(dim=-1).min()) > 1e-2
    za, zb = both(40.0)
    torch.testing.assert_close(za, zb, rtol=1e-7, atol=1e-7)
    z_star = f.fixed_point(z0, media, drive, tol=1e-12, implicit=False).z
    torch.testing.assert_close(za, z_star, rtol=1e-7, atol=1e-7)


@torch.no_grad()
def test_media_order_is_irrelevant_for_a_linear_field_without_media_effect():
    f = random_field(n_hidden=0, n_media=2, media_scale=0.0)
    pert, _, eff = design()
    n = len(pert)
    drive = f.drive(pert, eff)
    media = torch.ones(n, dtype=torch.long)
    z0 = torch.randn(n, N_LATENT, dtype=D)
    tt = torch.full((n,), 40.0, dtype=D)
    before = f.integrate_protocol(z0, drive, media, tt, torch.full((n,), -1.0, dtype=D), n_steps=100)
    after = f.integrate_protocol(z0, drive, media, tt, torch.full((n,), 1.0, dtype=D), n_steps=100)
    torch.testing.assert_close(before, after, rtol=1e-7, atol=1e-7)
    # starting at the baseline fixed point the medium never matters, even at short times
    # (up to the RK4 error: the protocols cut [0, 2] at different points)
    z0 = f.center.detach().expand(n, -1).clone()
    tt = torch.full((n,), 2.0, dtype=D)
    before = f.integrate_protocol(z0, drive, media, tt, torch.full((n,), -1.0, dtype=D), n_steps=64)
    after = f.integrate_protocol(z0, drive, media, tt, torch.full((n,), 1.0, dtype=D), n_steps=64)
    torch.testing.assert_close(before, after, rtol=1e-7, atol=1e-7)


@torch.no_grad()
def test_onset_ramp_slows_early_change_but_not_the_destination():
    instant = random_field(n_layers=2)
    ramped = random_field(n_layers=2, onset_tau=1.0)
    state = {k: v for k, v in instant.state_dict().items() if k != "log_tau"}
    ramped.load_state_dict(state, strict=False)
    assert not instant.onset
    assert ramped.onset
    torch.testing.assert_close(ramped.tau, torch.tensor(1.0, dtype=D))
    pert, media, eff = design()
    pert, media, eff = pert[1:], media[1:], eff[1:]
    n = len(pert)
    z0 = instant.fixed_point(
        instant.center.detach().expand(n, -1).clone(), media, torch.zeros(n, N_LATENT, dtype=D), implicit=False
    ).z
    drive = instant.drive(pert, eff).detach()
    early = torch.full((n,), 0.1, dtype=D)
    move_instant = (instant.integrate_protocol(z0, drive, media, early, _nan(n)) - z0).norm(dim=-1)
    move_ramped = (ramped.integrate_protocol(z0, drive, media, early, _nan(n)) - z0).norm(dim=-1)
    assert bool((move_ramped < 0.2 * move_instant).all())
    late = torch.full((n,), 40.0, dtype=D)
    torch.testing.assert_close(
        ramped.integrate_protocol(z0, drive, media, late, _nan(n), n_steps=80),
        instant.integrate_protocol(z0, drive, media, late, _nan(n), n_steps=80),
        rtol=1e-6,
        atol=1e-6,
    )


def test_learn_onset_makes_tau_a_trainable_parameter():
    fixed = VectorField(4, 2, onset_tau=2.0)
    assert not fixed.log_tau.requires_grad
    learned = VectorField(4, 2, learn_onset=True)
    assert learned.onset
    assert learned.log_tau.requires_grad
    torch.testing.assert_close(learned.tau, torch.tensor(0.5))


# ------------------------------------------------------------------------------------------------ gauge of the ss term
@torch.no_grad()
@pytest.mark.parametrize("n_hidden", [0, 16])
def test_steady_state_term_is_a_gauge_of_centre_and_shared_push(n_hidden):
    # f(z; p) = f(z; 0) + v_p + s: moving the centre c and the shared push s together (s -= gamma * dc) leaves
    # the field of every perturbed row unchanged, yet zeroes f(z_ctrl; 0) at any chosen control state. So the
    # steady-state penalty on controls can be met without changing a single perturbed read-out.
    f = random_field(n_hidden=n_hidden)
    pert, media, eff = design()
    perturbed = pert.sum(-1) > 0
    z_ctrl = torch.randn(1, N_LATENT, dtype=D)
    zero = torch.zeros(1, N_LATENT, dtype=D)
    m0 = torch.zeros(1, dtype=torch.long)
    z0 = torch.randn(len(media), N_LATENT, dtype=D)
    before_fp = f.fixed_point(z0, media, f.drive(pert, eff), tol=1e-12).z
    t = torch.full((len(media),), 1.5, dtype=D)
    nan = torch.full((len(media),), float("nan"), dtype=D)
    before_flow = f.integrate_protocol(z0, f.drive(pert, eff), media, t, nan)
    assert float(f(z_ctrl, m0, zero).norm()) > 0.1

    g_ctrl = f(z_ctrl, m0, zero) + f.gamma * (z_ctrl - f.center)  # the nonlinear part at the control state
    new_center = (z_ctrl - g_ctrl / f.gamma)[0]
    f.shared_raw.sub_(f.gamma * (new_center - f.center) / f.operator_scale)
    f.center.copy_(new_center)

    assert float(f(z_ctrl, m0, zero).norm()) < 1e-12  # the steady-state term is now zero
    after_fp = f.fixed_point(z0, media, f.drive(pert, eff), tol=1e-12).z
    after_flow = f.integrate_protocol(z0, f.drive(pert, eff), media, t, nan)
    torch.testing.assert_close(after_fp[perturbed], before_fp[perturbed])
    torch.testing.assert_close(after_flow[perturbed], before_flow[perturbed])
    assert float((after_fp[~perturbed] - before_fp[~perturbed]).abs().max()) > 0.1  # only controls moved


@pytest.mark.parametrize(("gamma", "t_end"), [(1.0, 22.0), (1.0, 72.0), (1.0, 1000.0), (10.0, 24.0), (10.0, 72.0)])
def test_integration_with_default_steps_matches_the_analytic_relaxation_at_any_time(gamma, t_end):
    """dz/dt = -gamma (z - c): z(t) = c + (z0 - c) exp(-gamma t), with the default 8 steps per segment."""
    field = VectorField(2, 1, n_hidden=0).double()
    with torch.no_grad():
        field.gamma_raw.fill_(float(torch.log(torch.expm1(torch.tensor(gamma - 0.05, dtype=D)))))
        field.center.copy_(torch.tensor([0.5, -1.0], dtype=D))
    z0 = torch.tensor([[1.5, 2.0], [0.0, 0.0]], dtype=D)
    t = torch.tensor([t_end, t_end / 7], dtype=D)
    media = torch.zeros(2, dtype=torch.long)
    got = field.integrate_protocol(z0, torch.zeros(2, 2, dtype=D), media, t, t * float("nan"))
    c = field.center.detach()
    expected = c + (z0 - c) * torch.exp(-gamma * t).unsqueeze(-1)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


def test_step_count_follows_the_stiffness_bound():
    field = VectorField(3, 1, n_hidden=8)
    rate = field.stiffness()
    gamma_max = float(field.gamma.detach().max())
    assert gamma_max <= rate <= gamma_max * (1 + field.lipschitz) + 1e-6
    assert field.stable_steps(0.5, 8) == 8  # short segments keep the fewest steps
    assert field.stable_steps(100.0, 8) == int(torch.ceil(torch.tensor(rate * 100.0)))
    with pytest.raises(FloatingPointError, match="check the time units of the data") as info:
        field.stable_steps(1e9, 8)
    # a steady-state model's segment is its horizon, and a learned field's high rates mean divergence
    assert "pass a shorter horizon" in str(info.value)
    assert "lower the learning rate" in str(info.value)
