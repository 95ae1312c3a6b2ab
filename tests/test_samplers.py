"""training/samplers.py on an analytic model: per class, data ~ N(mu_c, s^2 I), whose ideal
denoiser is D(x, sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu) in closed form. The probability-flow
ODE then has the closed-form solution x(sigma) = mu + (x_T - mu) sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_max^2),
so deterministic solvers are checked per sample, stochastic ones by the moments of their output."""

import os

import numpy as np
import pytest
import torch

from training import samplers
from training.samplers import StackedRandomGenerator, edm_sampler

SIGMA_MAX = 80.0

class GaussianDenoiser(torch.nn.Module):
    """The ideal denoiser of a per-class Gaussian (an all-zero label row means mean zero)."""
    def __init__(self, means, s=0.5, img_resolution=2, img_channels=1):
        super().__init__()
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.means = torch.as_tensor(means, dtype=torch.float32)  # [label_dim, C * R * R]
        self.label_dim = self.means.shape[0]
        self.s = s
        self.calls = 0

    def mean(self, labels, shape):
        return (labels.to(torch.float32) @ self.means).reshape(shape)

    def forward(self, x, sigma, labels):
        self.calls += 1
        sigma = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1, 1, 1, 1)
        mu = self.mean(labels, x.shape)
        return mu + self.s ** 2 / (self.s ** 2 + sigma ** 2) * (x - mu)

def analytic_setup(n=4000, seed=0, label_dim=3, s=0.5):
    torch.manual_seed(seed)
    net = GaussianDenoiser(torch.randn([label_dim, 4]) * 2, s=s)
    seeds = list(range(n))
    rnd = StackedRandomGenerator('cpu', seeds)
    noise = rnd.randn([n, 1, 2, 2])
    labels = torch.eye(label_dim)[torch.arange(n) % label_dim]
    return net, noise, labels, rnd

def exact_ode(net, noise, labels, mu=None):
    mu = net.mean(labels, noise.shape) if mu is None else mu
    x_T = noise * SIGMA_MAX
    return mu + (x_T - mu) * net.s / np.sqrt(net.s ** 2 + SIGMA_MAX ** 2)

def moment_error(net, x, labels):
    z = (x - net.mean(labels, x.shape)) / net.s # Should be N(0, 1) per dimension.
    return max(z.mean().abs().item(), (z.std() - 1).abs().item())

#----------------------------------------------------------------------------

def test_stacked_random_generator_is_per_seed():
    seeds = [5, 7, (1 << 32) + 9]
    rnd = StackedRandomGenerator('cpu', seeds)
    a, b, c = rnd.randn([3, 2, 4]), rnd.rand([3, 5]), rnd.randint(10, size=[3, 1])
    for i, seed in enumerate(seeds):
        gen = torch.Generator().manual_seed(seed % (1 << 32))
        assert torch.equal(a[i], torch.randn([2, 4], generator=gen))
        assert torch.equal(b[i], torch.rand([5], generator=gen))
        assert torch.equal(c[i], torch.randint(10, size=[1], generator=gen))
    # The same seed gives the same draws in any batch, at any position.
    x = StackedRandomGenerator('cpu', [7]).randn_like(torch.zeros([1, 3, 2], dtype=torch.float64))
    y = StackedRandomGenerator('cpu', [1, 7]).randn([2, 3, 2], dtype=torch.float64)
    assert x.dtype == torch.float64 and torch.equal(x[0], y[1])
    assert StackedRandomGenerator('cpu', [3]).rand_like(torch.zeros([1, 4])).shape == (1, 4)
    with pytest.raises(AssertionError):
        rnd.randn([2, 4])

def test_karras_sigmas():
    t = samplers.karras_sigmas(8, sigma_min=0.002, sigma_max=80, rho=7)
    assert len(t) == 9 and t[-1] == 0
    assert torch.allclose(t[[0, 7]], torch.tensor([80.0, 0.002]))
    assert (t[1:] < t[:-1]).all()
    assert torch.equal(samplers.karras_sigmas(1), torch.tensor([80.0, 0.0]))

class TinyConvDenoiser(torch.nn.Module):
    """A nonlinear stand-in for an EDM2 Precond: net(x, sigma, labels) -> denoised."""
    def __init__(self, label_dim=3):
        super().__init__()
        torch.manual_seed(1)
        self.img_resolution, self.img_channels, self.label_dim = 4, 2, label_dim
        self.conv = torch.nn.Conv2d(2, 2, 3, padding=1)
        self.emb = torch.nn.Linear(label_dim, 2)

    def forward(self, x, sigma, labels):
        sigma = torch.as_tensor(sigma).reshape(-1, 1, 1, 1)
        c_in = 1 / (0.25 + sigma ** 2).sqrt()
        h = torch.tanh(self.conv(x * c_in) + self.emb(labels)[:, :, None, None] + sigma.log() / 4)
        return x * 0.25 / (0.25 + sigma ** 2) + h * sigma * 0.5 / (0.25 + sigma ** 2).sqrt()

# Reference outputs of the OFFICIAL EDM2 sampler (NVlabs/edm2 4bf8162, generate_images.edm_sampler)
# on TinyConvDenoiser, made once by running the official code on these inputs (its code is not
# part of this project: its licence is non-commercial). On the machine that made them ours equals
# them bit for bit (max difference 0); on another CPU float rounding differs (measured up to
# 2.6e-6 on outputs of magnitude 5, case 2): the tolerance allows that, a wrong step is ~1e-2.
KWARGS = [dict(), dict(num_steps=7, S_churn=20, S_min=0.05, S_max=10, S_noise=1.003), dict(guidance=1.7, num_steps=5)]
OFFICIAL_HEUN = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'official_heun.npz')

@pytest.mark.parametrize('case', range(len(KWARGS)))
def test_heun_is_the_official_sampler(case):
    net, gnet = TinyConvDenoiser(), TinyConvDenoiser().requires_grad_(False)
    torch.nn.init.normal_(gnet.conv.weight)
    seeds = [0, 1, 2]
    noise = StackedRandomGenerator('cpu', seeds).randn([3, 2, 4, 4])
    with torch.no_grad():
        ours = edm_sampler(net, noise, torch.eye(3), gnet=gnet, rnd=StackedRandomGenerator('cpu', seeds), **KWARGS[case])
    with np.load(OFFICIAL_HEUN) as reference:
        theirs = torch.as_tensor(reference[f'case{case}'])
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert not torch.equal(ours, noise * 80) # Not a trivial pass.

#----------------------------------------------------------------------------
# Accuracy on the analytic model.

@pytest.mark.parametrize('solver', samplers.SOLVERS)
def test_output_distribution_converges(solver):
    errors = {}
    for num_steps in [8, 64]:
        net, noise, labels, rnd = analytic_setup()
        x = edm_sampler(net, noise, labels, solver=solver, num_steps=num_steps, rnd=rnd)
        errors[num_steps] = moment_error(net, x, labels)
    print(solver, errors)
    assert errors[64] < errors[8]
    assert errors[64] < 0.05

def per_sample_error(solver, num_steps):
    """RMS distance to the exact ODE solution from the same noise."""
    net, noise, labels, rnd = analytic_setup(n=256)
    x = edm_sampler(net, noise, labels, solver=solver, num_steps=num_steps, rnd=rnd)
    return (x - exact_ode(net, noise, labels)).square().mean().sqrt().item()

def test_deterministic_solvers_converge_at_their_order():
    for solver, order in [('euler', 1), ('heun', 2), ('dpm++', 2)]:
        errors = [per_sample_error(solver, n) for n in [8, 16, 32, 64]]
        print(solver, errors)
        assert all(a > b for a, b in zip(errors[:-1], errors[1:])), (solver, errors)
        ratio = errors[-2] / errors[-1] # Doubling the steps divides the error by about 2^order.
        assert 2 ** order * 0.75 < ratio < 2 ** order * 1.5, (solver, ratio)

def test_heun_beats_euler_and_dpmpp_beats_euler():
    # With 8 steps or fewer the Karras schedule crosses sigma ~ s (where the trajectory bends) in
    # one or two big steps, and there Heun's correction is no better than Euler on this model.
    for num_steps in [16, 32, 64]:
        euler, heun = per_sample_error('euler', num_steps), per_sample_error('heun', num_steps)
        assert heun < euler / 2, (num_steps, heun, euler)
    assert per_sample_error('dpm++', 8) < per_sample_error('euler', 8) / 2

#----------------------------------------------------------------------------
# Guidance.

def test_guidance_one_is_no_guidance_and_skips_the_guide():
    net, noise, labels, rnd = analytic_setup(n=16)
    gnet = GaussianDenoiser(net.means * 0, s=net.s)
    plain = edm_sampler(net, noise, labels, num_steps=8)
    calls = net.calls
    guided = edm_sampler(net, noise, labels, gnet=gnet, guidance=1.0, num_steps=8)
    assert torch.equal(plain, guided)
    assert gnet.calls == 0 and net.calls - calls == 15

def test_guidance_with_gnet_is_the_closed_form_extrapolation():
    # Same s, guide means mu_g: the guided denoiser is the ideal one of means mu_w = mu_g + w (mu - mu_g),
    # so the guided ODE has the closed-form solution with mu_w.
    net, noise, labels, _ = analytic_setup(n=64)
    gnet = GaussianDenoiser(torch.randn([3, 4]), s=net.s)
    w = 2.5
    mu = net.mean(labels, noise.shape)
    mu_w = gnet.mean(labels, noise.shape).lerp(mu, w)
    x = edm_sampler(net, noise, labels, gnet=gnet, guidance=w, num_steps=64)
    assert (x - exact_ode(net, noise, labels, mu=mu_w)).abs().max() < 1e-2
    extrapolated = GaussianDenoiser(gnet.means.lerp(net.means, w), s=net.s)
    assert torch.allclose(x, edm_sampler(extrapolated, noise, labels, num_steps=64), atol=1e-4)
    # One Euler step lands on the guided denoiser at sigma_max: D_g + w (D - D_g).
    x1 = edm_sampler(net, noise, labels, gnet=gnet, guidance=w, num_steps=1, solver='euler')
    x_T = noise * SIGMA_MAX
    expected = gnet(x_T, SIGMA_MAX, labels) + w * (net(x_T, SIGMA_MAX, labels) - gnet(x_T, SIGMA_MAX, labels))
    assert torch.allclose(x1, expected, atol=1e-4)

def test_self_guidance_uses_the_unconditional_branch():
    net, noise, labels, _ = analytic_setup(n=64)
    w = 1.5
    x = edm_sampler(net, noise, labels, guidance=w, num_steps=64) # All-zero labels: mean 0 here.
    assert (x - exact_ode(net, noise, labels, mu=net.mean(labels, noise.shape) * w)).abs().max() < 1e-2
    assert torch.allclose(x, edm_sampler(GaussianDenoiser(net.means * w, s=net.s), noise, labels, num_steps=64), atol=1e-4)
    # Each family's loss declares whether its all-zero label was trained; official losses do not.
    # generate.check_guidance() refuses guidance without a guide for the others, once, before
    # sampling (test_generate_images.py: test_cli_errors).
    from training import generate, networks_edm2, networks_mar
    assert generate.has_unconditional_branch(networks_edm2.EDM2Loss(label_dropout=0.1))
    assert generate.has_unconditional_branch(networks_mar.MARLoss(label_dropout=0.1))
    assert not generate.has_unconditional_branch(networks_edm2.EDM2Loss(label_dropout=0.0))
    assert not generate.has_unconditional_branch(type('OfficialEDM2Loss', (), dict(p_uncond=0.1))())
    assert not generate.has_unconditional_branch(None)

#----------------------------------------------------------------------------
# Evaluations, churn, dispatch, errors.

# Network calls per image in closed form: Heun (with or without churn) evaluates twice per step
# except the last (2N - 1), Euler and DPM++(2M) once per step (N); guidance adds the guide's call.
CALLS_PER_STEP = dict(heun=lambda n: 2 * n - 1, heun_sde=lambda n: 2 * n - 1, euler=lambda n: n, **{'dpm++': lambda n: n})

@pytest.mark.parametrize('solver', samplers.SOLVERS)
@pytest.mark.parametrize('guidance', [1.0, 2.0])
@pytest.mark.parametrize('num_steps', [1, 7, 32])
def test_network_evaluations_per_image(solver, guidance, num_steps):
    assert set(CALLS_PER_STEP) == set(samplers.SOLVERS)
    net, noise, labels, rnd = analytic_setup(n=4)
    gnet = GaussianDenoiser(net.means, s=net.s)
    edm_sampler(net, noise, labels, gnet=gnet, guidance=guidance, solver=solver, num_steps=num_steps, rnd=rnd)
    expected = CALLS_PER_STEP[solver](num_steps) * (2 if guidance != 1 else 1)
    assert net.calls + gnet.calls == expected
    assert gnet.calls == (expected // 2 if guidance != 1 else 0)
    assert samplers.evaluations_per_image(solver, num_steps, guidance) == expected

def test_heun_sde_churns_every_step_per_seed():
    net, noise, labels, _ = analytic_setup(n=6)
    run = lambda sl, **kw: edm_sampler(net, noise[sl], labels[sl], solver='heun_sde', num_steps=8,
        rnd=StackedRandomGenerator('cpu', list(range(6))[sl]), **kw)
    full, part = run(slice(0, 6)), run(slice(3, 5))
    assert torch.equal(full[3:5], part) # Per-seed churn noise: independent of the batch.
    heun = edm_sampler(net, noise, labels, num_steps=8)
    assert not torch.allclose(full, heun)
    # S_min/S_max do not restrict heun_sde; with 'heun' they switch churn off.
    assert torch.equal(run(slice(0, 6), S_min=1000, S_max=2000), full)
    narrow = edm_sampler(net, noise, labels, num_steps=8, S_churn=10, S_min=1000, S_max=2000, rnd=StackedRandomGenerator('cpu', range(6)))
    assert torch.equal(narrow, heun)

def test_dispatch_and_errors():
    class Family(torch.nn.Module):
        def sample(self, noise, labels, rnd, gnet=None, guidance=1.0, **kwargs):
            self.got = kwargs
            return noise * 0 + guidance
    family = Family()
    out = samplers.sample(family, torch.zeros([2, 1, 2, 2]), None, StackedRandomGenerator('cpu', [0, 1]), guidance=3.0, steps=5)
    assert family.got == dict(steps=5) and (out == 3).all()
    net, noise, labels, rnd = analytic_setup(n=2)
    samplers.sample(net, noise, labels, rnd, steps=5, solver='euler')
    assert net.calls == 5 # `steps` is num_steps for the EDM sampler.
    with pytest.raises(ValueError, match='unknown solver'):
        edm_sampler(net, noise, labels, solver='rk4')
    with pytest.raises(ValueError, match='deterministic'):
        edm_sampler(net, noise, labels, solver='dpm++', S_churn=1)

def dpmpp_2m_midpoint(denoise, x, sigmas, order=2):
    """DPM-Solver++(2M) as Lu et al. (2022) derive it, written independently of samplers.py: in
    lambda = -log(sigma) the ODE's exact step is x_{i+1} = (s_{i+1}/s_i) x_i + s_{i+1} * integral of
    e^lambda D(lambda) over the step; 2M takes D constant at its value in the middle of the step,
    extrapolated linearly in lambda from the last two denoised estimates (the first step: D_0).
    The step to sigma = 0 lands on the denoised estimate. order=1: D constant at its value at the
    start of the step (DPM-Solver++ 1, i.e. DDIM)."""
    lam = lambda s: -np.log(s)
    previous = None
    for s_cur, s_next in zip(sigmas[:-1], sigmas[1:]):
        D = denoise(x, s_cur)
        if s_next == 0:
            return D
        mid = (lam(s_cur) + lam(s_next)) / 2
        D_mid = D if previous is None or order == 1 else D + (D - previous[1]) / (lam(s_cur) - lam(previous[0])) * (mid - lam(s_cur))
        x = (s_next / s_cur) * x + (1 - s_next / s_cur) * D_mid # s_{i+1} * (e^lam_{i+1} - e^lam_i) = 1 - s_{i+1}/s_i
        previous = (s_cur, D)
    return x

def test_dpmpp_2m_is_the_midpoint_extrapolation():
    # On a nonlinear network, in float64, over the Karras steps (rho = 7: the step ratio h_{i-1}/h_i
    # is not 1, so the extrapolation's direction matters) and a uniform-in-lambda schedule.
    net = TinyConvDenoiser().double()
    noise = StackedRandomGenerator('cpu', [0, 1, 2]).randn([3, 2, 4, 4], dtype=torch.float64)
    labels = torch.eye(3, dtype=torch.float64)
    denoise = lambda x, s: net(x, torch.tensor(float(s), dtype=torch.float64).expand(len(x)), labels)
    with torch.no_grad():
        for num_steps, rho in [(6, 7), (12, 7), (5, 1)]:
            sigmas = samplers.karras_sigmas(num_steps, rho=rho, dtype=torch.float64).tolist()
            ours = edm_sampler(net, noise, labels, solver='dpm++', num_steps=num_steps, rho=rho, dtype=torch.float64)
            reference = dpmpp_2m_midpoint(denoise, noise * sigmas[0], sigmas)
            torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-10)
            first_order = dpmpp_2m_midpoint(denoise, noise * sigmas[0], sigmas, order=1)
            assert (ours - reference).abs().max() < 1e-6 * (ours - first_order).abs().max() # The comparison can tell.

def test_heun_sde_churn_strength():
    # heun_sde churns every step by gamma = min(S_churn / num_steps, sqrt(2) - 1): with the same
    # per-seed noise it is 'heun' with that churn on every step (S_min = 0, S_max = inf).
    net, noise, labels, _ = analytic_setup(n=6)
    run = lambda solver, **kw: edm_sampler(net, noise, labels, solver=solver, num_steps=8, rnd=StackedRandomGenerator('cpu', range(6)), **kw)
    weak = run('heun_sde', S_churn=2) # gamma = 0.25
    assert torch.equal(weak, run('heun', S_churn=2))
    strongest = run('heun_sde') # S_churn = 0: gamma = sqrt(2) - 1.
    assert torch.equal(strongest, run('heun', S_churn=100)) and torch.equal(strongest, run('heun_sde', S_churn=100))
    assert (weak - strongest).abs().max() > 0.01
    assert torch.equal(run('heun_sde', S_churn=2, S_noise=1.5), run('heun', S_churn=2, S_noise=1.5))
