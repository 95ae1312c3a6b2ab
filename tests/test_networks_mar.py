"""MAR (training/networks_mar.py): the unmasking schedule, the masking and its invisibility to the
encoder, the loss on masked tokens only, the diffusion head's sampler and hybrid loss against
oracles, the flow head's integrator on fields with known solutions, the EDM head's
preconditioning and sampler against a point mass, the causal (raster-order) network's mask and
its key/value cache against uncached passes, guidance, per-seed reproducibility, and the
presets' shapes and parameter counts."""

import copy
import pickle

import numpy as np
import pytest
import scipy.stats
import torch

from torch_utils import persistence
from training import mar_heads
from training.mar_heads import DiffusionHead, FlowHead, EDMHead
from training.networks_mar import MAR, CausalAR, MARLoss, unmasking_schedule
from training.samplers import StackedRandomGenerator

HEADS = ['diffusion', 'flow', 'edm']

def tiny_net(head='diffusion', label_dim=10, order='random', **kwargs):
    """A small MAR (order 'random') or CausalAR (order 'raster') on 8x8 one-channel images:
    2x2 patches, 16 tokens."""
    torch.manual_seed(0)
    if order == 'random':
        kwargs = dict(dict(encoder_depth=1, decoder_depth=1, buffer_tokens=2, sample_steps=4), **kwargs)
    kwargs = dict(dict(patch_size=2, width=32, num_heads=2, head=head, head_width=32, head_depth=2, data_bound=1.0), **kwargs)
    net = (MAR if order == 'random' else CausalAR)(img_resolution=8, img_channels=1, label_dim=label_dim, **kwargs)
    # Random (not zero-initialised) head output layers, so that every input matters.
    for param in net.parameters():
        param.data.add_(torch.randn_like(param) * 0.05)
    return net.eval()

def test_constructor_defaults_agree_with_the_family_options():
    # The networks' and the loss's defaults are the family's OPTIONS (presets pass every value;
    # a direct construction must not get another model: TokenModel had patch 1 and head depth 3).
    import inspect
    from training import networks_mar
    shared = 0
    classes = {c for cls in [MAR, CausalAR, MARLoss] for c in cls.__mro__ if '__init__' in vars(c)} # Past persistence's wrapper.
    for cls in classes:
        for name, param in inspect.signature(cls.__init__).parameters.items():
            if name in networks_mar.OPTIONS and param.default is not inspect.Parameter.empty:
                assert param.default == networks_mar.OPTIONS[name], (cls.__name__, name, param.default)
                shared += 1
    assert shared == 17 # TokenModel 9, MAR 4, CausalAR 1, MARLoss 3.

def one_hot(classes, label_dim=10):
    return torch.eye(label_dim)[torch.as_tensor(classes)]

#----------------------------------------------------------------------------
# Generation schedule.

@pytest.mark.parametrize('num_tokens', [1, 4, 16, 64, 256])
def test_unmasking_schedule_reveals_all_at_least_one_per_step(num_tokens):
    for num_steps in sorted({min(k, num_tokens) for k in [1, 2, 3, num_tokens // 4 or 1, num_tokens // 2 or 1, num_tokens]}):
        counts = unmasking_schedule(num_tokens, num_steps)
        assert len(counts) == num_steps
        assert sum(counts) == num_tokens
        assert min(counts) >= 1

def test_unmasking_schedule_follows_cosine():
    # With few steps no constraint binds: the tokens still masked after step k are exactly
    # floor(N cos(pi/2 (k+1)/K)) (MaskGIT, MAR), here for N = 256, K = 8.
    assert (256 - np.cumsum(unmasking_schedule(256, 8))).tolist() == [251, 236, 212, 181, 142, 97, 49, 0]
    # Where the constraints do not bind, the tokens still masked after step k are floor(N cos(pi/2 (k+1)/K)).
    counts = unmasking_schedule(256, 64)
    masked = 256 - np.cumsum(counts)
    expected = np.floor(256 * np.cos(np.pi / 2 * np.arange(1, 65) / 64))
    previous = np.append(256, masked[:-1])
    free = (expected <= previous - 1) & (expected >= 64 - np.arange(1, 65)) # Neither constraint binds.
    assert free.sum() > 40 and np.array_equal(masked[free], expected[free])
    assert masked[-1] == 0
    with pytest.raises(ValueError, match='steps'):
        unmasking_schedule(16, 17)

#----------------------------------------------------------------------------
# Training: masking, no leakage, masked tokens only.

def test_draw_mask_ratio_is_truncated_normal():
    torch.manual_seed(1)
    loss_fn = MARLoss()
    ratios = []
    for _ in range(400):
        mask = loss_fn.draw_mask(3, 256, 'cpu')
        assert (mask.sum(1) == mask[0].sum()).all() # Same count per row.
        ratios.append(mask[0].float().mean().item())
    ratios = np.array(ratios)
    assert ratios.min() >= 0.7 and ratios.max() <= 1.0
    dist = scipy.stats.truncnorm((0.7 - 1) / 0.25, 0, loc=1, scale=0.25)
    assert abs(ratios.mean() - dist.mean()) < 0.01 # ceil() adds at most 1/256.

def test_masked_tokens_do_not_reach_the_encoder():
    net = tiny_net()
    tokens = torch.randn([2, net.seq_len, net.token_dim])
    labels = one_hot([3, 7])
    mask = MARLoss().draw_mask(2, net.seq_len, 'cpu')
    mask[:, 0] = True # At least one masked and one known position to change.
    mask[:, 1] = False
    z = net.transformer(tokens, labels, mask)
    changed = tokens.clone()
    changed[mask] += 5
    assert torch.equal(net.transformer(changed, labels, mask), z)
    changed = tokens.clone()
    changed[:, 1] += 5
    assert not torch.allclose(net.transformer(changed, labels, mask), z)

def test_unmasked_tokens_do_not_change_the_loss():
    net = tiny_net()
    images = torch.rand([3, 1, 8, 8]) * 2 - 1
    labels = one_hot([1, 2, 3])
    mask = MARLoss().draw_mask(3, net.seq_len, 'cpu')
    mask[:, :2] = torch.tensor([True, False])
    z = net.transformer(net.patchify(images), labels, mask)
    net.transformer = lambda *args: z # Fixed conditioning: only the loss's own reduction is under test.

    def loss_of(x):
        torch.manual_seed(5)
        return net(x, labels, mask=mask, batch_mul=2)
    reference = loss_of(images)
    assert reference.shape == (3,)
    known = net.unpatchify(net.patchify(torch.ones_like(images)) * (~mask).unsqueeze(-1))
    assert torch.equal(loss_of(images + 0.5 * known), reference)
    unknown = net.unpatchify(net.patchify(torch.ones_like(images)) * mask.unsqueeze(-1))
    assert not torch.allclose(loss_of(images + 0.5 * unknown), reference)

def test_loss_applies_label_dropout_and_returns_per_sample_losses():
    # label_dropout = p: each sample's label becomes the null class (all zeros) with probability
    # p, the others keep theirs; 400 samples at p = 0.2 drop 80 +- 8.
    net = tiny_net().train()
    seen = []
    original = net.class_embedding
    net.class_embedding = lambda labels, n: (seen.append(labels.clone()), original(labels, n))[1]
    torch.manual_seed(0)
    labels = one_hot(np.arange(400) % 10)
    loss = MARLoss(label_dropout=0.2, batch_mul=1)(net=net, images=torch.rand([400, 1, 8, 8]) * 2 - 1, labels=labels)
    assert loss.shape == (400,) and torch.isfinite(loss).all() and (loss > 0).all()
    dropped = seen[0].sum(1) == 0
    assert torch.equal(seen[0][~dropped], labels[~dropped]) and (seen[0][dropped] == 0).all()
    assert 0.14 < dropped.float().mean().item() < 0.26, dropped.float().mean()
    loss.sum().backward()
    assert net.class_emb.grad is not None and net.null_emb.grad is not None

def test_null_class_and_unconditional():
    net = tiny_net()
    emb = net.class_embedding(torch.cat([one_hot([4]), torch.zeros([1, 10])]), 2)
    assert torch.allclose(emb[0], net.class_emb[4]) and torch.equal(emb[1], net.null_emb)
    uncond = tiny_net(label_dim=0)
    loss = MARLoss()(net=uncond, images=torch.rand([2, 1, 8, 8]), labels=None)
    assert loss.shape == (2,)
    out = uncond.sample(torch.zeros([2, 1, 8, 8]), None, StackedRandomGenerator('cpu', [0, 1]))
    assert out.shape == (2, 1, 8, 8)

def test_patchify_layout():
    net = tiny_net(patch_size=2)
    x = torch.arange(64, dtype=torch.float32).reshape(1, 1, 8, 8)
    tokens = net.patchify(x)
    assert tokens.shape == (1, 16, 4)
    assert tokens[0, 0].tolist() == [0, 1, 8, 9] and tokens[0, 1].tolist() == [2, 3, 10, 11]
    assert torch.equal(net.unpatchify(tokens), x)

def test_no_weight_decay_is_the_head():
    net = tiny_net()
    names = net.no_weight_decay()
    assert names == {name for name, _ in net.named_parameters() if name.startswith('head.')}

#----------------------------------------------------------------------------
# Diffusion head against oracles.

def cosine_alphas_cumprod(num_steps=1000, s=0.008, max_beta=0.999):
    """Improved DDPM's cosine schedule in closed form (Nichol & Dhariwal 2021, Eq. 17):
    alpha_bar_t = f(t) / f(0), f(t) = cos^2((t / T + s) / (1 + s) * pi / 2), at t = 1..T, with
    beta_t = 1 - alpha_bar_t / alpha_bar_{t-1} clipped at 0.999: only the last step, where f = 0."""
    f = lambda t: np.cos((t / num_steps + s) / (1 + s) * np.pi / 2) ** 2
    alpha_bar = f(np.arange(1, num_steps + 1)) / f(0)
    assert (1 - alpha_bar[1:-1] / alpha_bar[:-2]).max() < max_beta
    alpha_bar[-1] = alpha_bar[-2] * (1 - max_beta)
    return alpha_bar

def test_diffusion_schedule_is_the_closed_form_cosine():
    head = DiffusionHead(token_dim=2, cond_dim=2, width=8, depth=1)
    expected = cosine_alphas_cumprod()
    np.testing.assert_allclose(head.alphas_cumprod, expected, rtol=1e-9, atol=0)
    torch.testing.assert_close(head.sqrt_acp, torch.as_tensor(np.sqrt(head.alphas_cumprod), dtype=torch.float32))
    # The posterior variance of q(x_{t-1} | x_t, x_0): beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t),
    # with t = 0 (variance 0) clipped to t = 1's.
    beta = 1 - expected[1] / expected[0]
    assert head.post_log_var[0].item() == pytest.approx(np.log(beta * (1 - expected[0]) / (1 - expected[1])), rel=1e-5)

class OracleEps(torch.nn.Module):
    """The exact noise of a point mass at the conditioning vector c (token space), and a fixed
    variance interpolation v; sqrt_acp from the closed-form schedule, not from the head."""
    def __init__(self, sqrt_acp, v=0.0):
        super().__init__()
        self.sqrt_acp = sqrt_acp
        self.v = v

    def forward(self, x, t, c):
        a = self.sqrt_acp[t, None]
        eps = (x - a * c) / (1 - a * a).sqrt()
        return torch.cat([eps, torch.full_like(eps, self.v)], dim=-1)

def oracle_head(token_dim, v):
    """A float64 diffusion head (its own coefficients, in float64) whose network is OracleEps."""
    head = DiffusionHead(token_dim=token_dim, cond_dim=token_dim, width=8, depth=1)
    for name, value in mar_heads.diffusion_coefficients(head.alphas_cumprod).items():
        setattr(head, name, torch.as_tensor(value))
    head.net = OracleEps(torch.as_tensor(np.sqrt(cosine_alphas_cumprod())), v=v)
    return head

def float64_rnd(seeds):
    rnd = StackedRandomGenerator('cpu', seeds)
    randn = rnd.randn
    rnd.randn = lambda size, **kw: randn(size, dtype=torch.float64)
    return rnd

@pytest.mark.parametrize('bound', [None, 1.0])
@pytest.mark.parametrize('temperature', [0.5, 1.0])
def test_diffusion_head_samples_point_mass_with_true_noise(bound, temperature):
    head = oracle_head(token_dim=3, v=0.3)
    x0 = torch.rand([4, 5, 3], dtype=torch.float64) * 2 - 1
    for steps in [100, 7]:
        out = head.sample(x0, float64_rnd(range(4)), temperature=temperature, bound=bound, steps=steps)
        assert torch.allclose(out, x0, atol=1e-9, rtol=0)

class ZeroEps(torch.nn.Module):
    """Predicts no noise (eps = 0) and the variance interpolation v: the sampler becomes linear in
    its Gaussian draws."""
    def __init__(self, v):
        super().__init__()
        self.v = v

    def forward(self, x, t, c):
        return torch.cat([torch.zeros_like(x), torch.full_like(x, self.v)], dim=-1)

class FixedNoise:
    """A StackedRandomGenerator stand-in whose randn returns given draws (its size checked)."""
    def __init__(self, draws):
        self.draws = draws

    def randn(self, size, **kwargs):
        assert list(size) == list(self.draws.shape), (size, self.draws.shape)
        return self.draws

@pytest.mark.parametrize('v', [-1.0, 1.0])
def test_diffusion_head_sampler_is_ancestral_sampling_in_closed_form(v):
    # With eps = 0 every step maps x_t to k_t x_t plus fresh noise of std s_t, where on the
    # respaced schedule (abar_t, abar_{t-1}, beta_t = 1 - abar_t / abar_{t-1}) the posterior mean
    # of q(x_{t-1} | x_t, x_0 = x_t / sqrt(abar_t)) gives
    #   k_t = sqrt(abar_{t-1}) beta_t / ((1 - abar_t) sqrt(abar_t)) + sqrt(1 - beta_t) (1 - abar_{t-1}) / (1 - abar_t),
    # and s_t^2 is the posterior variance beta_t (1 - abar_{t-1}) / (1 - abar_t) (v = -1) or
    # beta_t (v = 1) (Nichol & Dhariwal 2021, Eq. 10-15). The output is then a sum of independent
    # draws: the initial noise times prod_t k_t, and the noise added on the way to step t-1 times
    # s_t prod_{t' < t} k_t'. Each of the K draws must enter once, with its own weight.
    head = oracle_head(token_dim=1, v=v)
    head.net = ZeroEps(v)
    steps = 7
    abar = cosine_alphas_cumprod()[mar_heads.spaced_timesteps(1000, steps)]
    abar_prev = np.append(1.0, abar[:-1])
    beta = 1 - abar / abar_prev
    k = np.sqrt(abar_prev) * beta / ((1 - abar) * np.sqrt(abar)) + np.sqrt(1 - beta) * (1 - abar_prev) / (1 - abar)
    s = np.sqrt(beta * (1 - abar_prev) / (1 - abar) if v == -1 else beta)
    expected = [np.prod(k)] + [s[t] * np.prod(k[:t]) for t in range(1, steps)]
    # Draw j alone set to 1 (one image per draw): the output is that draw's weight.
    out = head.sample(torch.zeros([steps, 1, 1], dtype=torch.float64), FixedNoise(torch.eye(steps, dtype=torch.float64).reshape(steps, steps, 1, 1)),
        steps=steps)
    np.testing.assert_allclose(np.sort(out.flatten().numpy()), np.sort(expected), rtol=1e-9, atol=0)
    assert min(expected) > 1e-3 # Every draw matters.

def test_diffusion_respacing_and_hybrid_loss():
    head = DiffusionHead(token_dim=2, cond_dim=2, width=8, depth=1)
    # Respacing to all 1000 steps is the training schedule; any respacing keeps alpha_bar.
    timesteps, coef = head.coefficients(1000)
    assert torch.equal(timesteps, torch.arange(1000))
    assert torch.allclose(coef['sqrt_acp'], head.sqrt_acp) and torch.allclose(coef['post_log_var'], head.post_log_var)
    timesteps, coef = head.coefficients(100)
    assert timesteps[0] == 0 and timesteps[-1] == 999 and len(timesteps) == 100
    assert torch.allclose(coef['sqrt_acp'], head.sqrt_acp[timesteps])
    # Exact noise and the true posterior variance (v = -1): both terms vanish for t > 0; at t = 0
    # what is left is -log2 of the Gaussian's mass in the data bin (closed form).
    head = oracle_head(token_dim=2, v=-1.0)
    x0 = torch.rand([4000, 2], dtype=torch.float64) * 1.8 - 0.9
    torch.manual_seed(0)
    loss = head.loss(x0, x0)
    torch.manual_seed(0)
    t = torch.randint(0, 1000, [4000])
    assert (t == 0).any()
    assert loss[t > 0].abs().max() < 1e-6
    half_bin = (1 / 255) / np.exp(0.5 * head.post_log_var[0].item())
    expected = -np.log2(scipy.stats.norm.cdf(half_bin) - scipy.stats.norm.cdf(-half_bin))
    assert np.allclose(loss[t == 0].numpy(), expected, rtol=1e-6)

def test_diffusion_loss_trains_the_variance_only_through_the_bound():
    head = DiffusionHead(token_dim=2, cond_dim=4, width=16, depth=1)
    for param in head.parameters():
        param.data.add_(torch.randn_like(param) * 0.1)
    x0, z = torch.rand([64, 2]), torch.randn([64, 4])
    out = head.net.out
    torch.manual_seed(1)
    head.loss(x0, z).sum().backward()
    vb_grad = out.weight.grad[2:].clone()
    out.weight.grad = None
    # Without the bound (MSE only) the variance half gets no gradient.
    torch.manual_seed(1)
    t = torch.randint(0, 1000, [64])
    noise = torch.randn_like(x0)
    x = head.sqrt_acp[t, None] * x0 + head.sqrt_one_minus_acp[t, None] * noise
    (head.net(x, t, z)[:, :2] - noise).square().mean(-1).sum().backward()
    assert out.weight.grad[2:].abs().max() == 0 and vb_grad.abs().max() > 0

#----------------------------------------------------------------------------
# Flow head against known fields.

class KnownField(torch.nn.Module):
    """Velocity prediction v(x, t) = (x - c) / t (the point mass at c), or a constant field c."""
    def __init__(self, constant=False):
        super().__init__()
        self.constant = constant

    def forward(self, x, t, c):
        if self.constant:
            return c
        return (x - c) / (t[:, None] / 1000)

@pytest.mark.parametrize('solver', ['euler', 'heun'])
@pytest.mark.parametrize('steps', [1, 20])
def test_flow_head_x_prediction_samples_a_point_mass(solver, steps):
    # An x-predicting head that always predicts the clean token c implies the velocity
    # (x - c) / t of the point mass at c; along it x(t) = c + (x(1) - c) t is linear, so Euler
    # and Heun land on c exactly, whatever the noise; guidance towards the guide's c_g gives
    # the extrapolated point g + w (c - g).
    head = FlowHead(token_dim=3, cond_dim=3, width=8, depth=1, prediction='x', solver=solver)
    head.net = KnownField(constant=True)
    c = torch.rand([2, 4, 3], dtype=torch.float64) * 2 - 1
    out = head.sample(c, float64_rnd([0, 1]), temperature=1.3, steps=steps)
    assert torch.allclose(out, c, atol=1e-12, rtol=0)
    g = torch.zeros_like(c)
    out = head.sample(c, float64_rnd([0, 1]), guidance=2.0, guide_z=g, steps=steps)
    assert torch.allclose(out, 2 * c - g, atol=1e-12, rtol=0)

@pytest.mark.parametrize('solver', ['euler', 'heun'])
def test_flow_head_integrates_linear_fields_exactly(solver):
    head = FlowHead(token_dim=3, cond_dim=3, width=8, depth=1, solver=solver)
    c = torch.rand([2, 4, 3], dtype=torch.float64) * 2 - 1
    for steps in [1, 5, 50]:
        head.net = KnownField(constant=True)
        rnd = StackedRandomGenerator('cpu', [0, 1])
        noise = StackedRandomGenerator('cpu', [0, 1]).randn([2, 4, 3], dtype=torch.float64)
        rnd_randn = rnd.randn
        rnd.randn = lambda size, **kw: rnd_randn(size, dtype=torch.float64)
        out = head.sample(c, rnd, temperature=0.7)
        assert torch.allclose(out, 0.7 * noise - c, atol=1e-12, rtol=0) # x(0) = x(1) - c.
        head.net = KnownField()
        out = head.sample(c, rnd, temperature=1.3, steps=steps)
        assert torch.allclose(out, c, atol=1e-12, rtol=0)

def test_flow_head_loss_closed_form():
    # The exact velocity gives zero loss; an x-predicting head returning x0 too.
    head = FlowHead(token_dim=2, cond_dim=2, width=8, depth=1)
    head.net = KnownField()
    x0 = torch.rand([100, 2], dtype=torch.float64)
    assert head.loss(x0, x0).abs().max() < 1e-10
    head = FlowHead(token_dim=2, cond_dim=2, width=8, depth=1, prediction='x')
    head.net = KnownField(constant=True) # Returns c = x0.
    assert head.loss(x0, x0).abs().max() == 0

#----------------------------------------------------------------------------
# EDM head against a point mass: the ideal denoiser of a point mass at x0 is D = x0 at every
# noise level, which the preconditioned network reaches when F returns (x0 - c_skip x) / c_out
# computed from the true noise.

class PointMassF(torch.nn.Module):
    """F of the EDM head for the point mass at x0 = c (given as the conditioning), rebuilt from
    the head's inputs: x = (c_in x) / c_in and sigma from the timestep input."""
    def __init__(self, head):
        super().__init__()
        self.sigma_data, self.time_scale = head.sigma_data, head.time_scale

    def forward(self, x_in, t, c):
        sigma = torch.exp(4 * t.to(torch.float64) / self.time_scale)[:, None]
        norm = (sigma.square() + self.sigma_data ** 2).sqrt()
        x = x_in * norm
        c_skip, c_out = self.sigma_data ** 2 / norm.square(), sigma * self.sigma_data / norm
        return (c - c_skip * x) / c_out

def edm_oracle_head(**kwargs):
    head = EDMHead(token_dim=3, cond_dim=3, width=8, depth=1, **kwargs)
    head.net = PointMassF(head)
    return head

def test_edm_preconditioning_closed_form():
    head = EDMHead(token_dim=2, cond_dim=2, width=8, depth=1, sigma_data=0.7)
    sigma = torch.tensor([0.002, 0.7, 80.0])
    c_skip, c_out, c_in, t = head.preconditioning(sigma)
    s2 = sigma.double().square() + 0.49
    assert torch.allclose(c_skip[:, 0].double(), 0.49 / s2, rtol=1e-6)
    assert torch.allclose(c_out[:, 0].double(), sigma.double() * 0.7 / s2.sqrt(), rtol=1e-6)
    assert torch.allclose(c_in[:, 0].double(), 1 / s2.sqrt(), rtol=1e-6)
    assert torch.allclose(t.double(), sigma.double().log() / 4 * 1000, rtol=1e-6)
    # At sigma = sigma_data, c_skip = 1/2 and c_out = c_in * sigma_data^2 = sigma_data / sqrt(2).
    assert c_skip[1].item() == pytest.approx(0.5) and c_out[1].item() == pytest.approx(0.7 / np.sqrt(2))

def test_edm_head_denoiser_recovers_point_mass_with_true_noise():
    head = edm_oracle_head()
    x0 = (torch.rand([500, 3], dtype=torch.float64) * 2 - 1)
    for sigma in [0.002, 0.05, 0.5, 3.0, 80.0]:
        x = x0 + sigma * torch.randn_like(x0)
        denoised = head.denoise(x, torch.full([500], sigma, dtype=torch.float64), x0)
        assert torch.allclose(denoised, x0, atol=1e-6 * max(1, sigma), rtol=0), sigma
    # The training target is the same F: zero loss at any noise level.
    torch.manual_seed(0)
    assert head.loss(x0, x0).abs().max() < 1e-8
    # A wrong target is not: F of the point mass at 0 for data at x0.
    assert head.loss(x0, torch.zeros_like(x0)).mean() > 0.1

@pytest.mark.parametrize('solver', ['euler', 'heun'])
@pytest.mark.parametrize('steps', [1, 2, 32])
def test_edm_head_samples_point_mass(solver, steps):
    # With D = x0 the ODE x' = (x - x0) / sigma shrinks x - x0 by sigma_next / sigma_cur at each
    # step (Euler and Heun alike) and the last step, to sigma = 0, lands on x0 exactly.
    head = edm_oracle_head(solver=solver)
    x0 = torch.rand([4, 5, 3], dtype=torch.float64) * 2 - 1
    for temperature, bound in [(1.0, None), (0.3, 1.0)]:
        out = head.sample(x0, float64_rnd(range(4)), temperature=temperature, bound=bound, steps=steps)
        assert torch.allclose(out, x0, atol=1e-9, rtol=0)
    # Guidance between two point masses extrapolates: D = g + w (x0 - g), and so does the sample.
    g = torch.zeros_like(x0)
    out = head.sample(x0, float64_rnd(range(4)), guidance=2.0, guide_z=g, steps=steps)
    assert torch.allclose(out, 2 * x0 - g, atol=1e-9, rtol=0)

def test_edm_noise_levels_are_karras():
    from training.samplers import karras_sigmas
    head = EDMHead(token_dim=2, cond_dim=2, width=8, depth=1)
    for steps in [1, 2, 32]:
        assert np.allclose(head.noise_levels(steps), karras_sigmas(steps, dtype=torch.float64).numpy(), rtol=1e-12)

class TimeRecorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x_in, t, z):
        self.seen.append(t.clone())
        return torch.zeros_like(x_in)

def test_edm_training_noise_is_lognormal():
    head = EDMHead(token_dim=1, cond_dim=1, width=8, depth=1, P_mean=-0.4, P_std=1.5)
    head.net = TimeRecorder()
    torch.manual_seed(0)
    head.loss(torch.zeros([20000, 1]), torch.zeros([20000, 1]))
    log_sigma = head.net.seen[0].double() * 4 / head.time_scale
    assert scipy.stats.kstest(log_sigma.numpy(), 'norm', args=(-0.4, 1.5)).pvalue > 0.01

#----------------------------------------------------------------------------
# The causal network (raster order): the mask hides later tokens, teacher forcing scores every
# token, and the key/value cache gives the uncached passes' images.

def test_causal_mask_hides_future_tokens():
    net = tiny_net('edm', order='raster')
    tokens = torch.randn([3, 16, 4])
    labels = one_hot([1, 2, 3])
    base = net.transformer(tokens, labels)
    assert base.shape == (3, 16, 32)
    for j in [0, 5, 15]:
        changed = tokens.clone()
        changed[:, j] += torch.randn([3, 4])
        out = net.transformer(changed, labels)
        # Position i conditions token i: it sees the class and tokens 0..i-1 only.
        assert torch.equal(out[:, : j + 1], base[:, : j + 1]), j
        if j < 15:
            assert (out[:, j + 1 :] - base[:, j + 1 :]).abs().amax(dim=-1).min() > 1e-4, j
    # The class reaches every position through the start token.
    assert (net.transformer(tokens, one_hot([4, 2, 3]))[0] - base[0]).abs().amax(dim=-1).min() > 1e-4

def test_causal_loss_scores_every_token_by_teacher_forcing():
    net = tiny_net('flow', order='raster', dropout=0.0).train()
    images, labels = torch.rand([4, 1, 8, 8]) * 2 - 1, one_hot([0, 1, 2, 3])
    loss_fn = MARLoss(label_dropout=0.0, batch_mul=2)
    loss_fn.draw_mask = None # Never called for a causal network.
    torch.manual_seed(5)
    loss = loss_fn(net=net, images=images, labels=labels)
    torch.manual_seed(5)
    tokens = net.patchify(images)
    expected = net.masked_token_loss(tokens, net.transformer(tokens, labels), torch.ones([4, 16], dtype=torch.bool), batch_mul=2)
    assert loss.shape == (4,) and torch.equal(loss, expected)

@pytest.mark.parametrize('head', HEADS)
def test_kv_cache_equals_uncached_sampling(head):
    net = tiny_net(head, order='raster')
    gnet = tiny_net(head, order='raster', width=48)
    labels = one_hot([0, 3, 7])
    tokens = torch.randn([3, 16, 4])
    caches = net.new_caches()
    for i in range(16): # Each cached step is one position of the full causal pass.
        cached = net.next_condition(tokens, labels, i, caches)
        assert torch.allclose(cached, net.transformer(tokens, labels)[:, i : i + 1], atol=1e-5, rtol=0)
    assert caches[0]['k'].shape == (3, 2, 16, 16) # [N, heads, positions, channels per head]
    for kwargs in [dict(), dict(guidance=2.5), dict(guidance=2.0, gnet=gnet, guidance_schedule='linear')]:
        sample = lambda use_cache: net.sample(torch.zeros([3, 1, 8, 8]), labels, StackedRandomGenerator('cpu', [5, 6, 7]),
            head_steps=12, use_cache=use_cache, **kwargs)
        with_cache, without = sample(True), sample(False)
        assert (with_cache - without).abs().max() < 1e-5, kwargs
        assert with_cache.std() > 0.1

def test_causal_sampling_reveals_tokens_in_raster_order():
    # Token i is drawn from the head given the vector of position i, which depends on tokens < i:
    # record the conditioning the head sees and check it against the final tokens' full pass.
    net = tiny_net('edm', order='raster')
    seen = []
    head_sample = net.head.sample
    net.head.sample = lambda z, rnd, **kw: seen.append(z) or head_sample(z, rnd, **kw)
    labels = one_hot([2, 9])
    images = net.sample(torch.zeros([2, 1, 8, 8]), labels, StackedRandomGenerator('cpu', [1, 2]), head_steps=6)
    assert len(seen) == 16 and all(z.shape == (2, 1, 32) for z in seen)
    full = net.transformer(net.patchify(images), labels)
    assert torch.allclose(torch.cat(seen, dim=1), full, atol=1e-5, rtol=0)

#----------------------------------------------------------------------------
# Sampling: guidance, seeds, options.

@pytest.mark.parametrize('order', ['random', 'raster'])
@pytest.mark.parametrize('head', HEADS)
def test_guidance_one_is_the_unguided_path(head, order):
    net = tiny_net(head, order=order)
    other = tiny_net(head, order=order, width=48)
    labels = one_hot([0, 5])
    sample = lambda **kw: net.sample(torch.zeros([2, 1, 8, 8]), labels, StackedRandomGenerator('cpu', [3, 4]), head_steps=10, **kw)
    plain = sample()
    assert torch.equal(sample(guidance=1.0, gnet=other), plain)
    assert torch.equal(sample(guidance=1.0, guidance_schedule='linear'), plain)
    # A guiding network identical to the net leaves any guidance strength without effect.
    assert torch.allclose(sample(guidance=3.0, gnet=copy.deepcopy(net)), plain, atol=1e-5)
    # The null class does not.
    assert not torch.allclose(sample(guidance=3.0), plain, atol=1e-3)
    out, guide = torch.randn([5, 6]), torch.randn([5, 6])
    assert torch.allclose(mar_heads.combine_guidance(out, guide, 1.0, 6), out, atol=1e-6)
    assert torch.allclose(mar_heads.combine_guidance(out, guide, 2.0, 3)[:, :3], 2 * out[:, :3] - guide[:, :3])

@pytest.mark.parametrize('order', ['random', 'raster'])
def test_linear_guidance_schedule_weights(order):
    # The head is guided with w = 1 + (guidance - 1) * (tokens revealed after the step) / L:
    # masked, K = 4 steps of 4 tokens (the cosine schedule's counts); causal, one token per step.
    net = tiny_net(order=order)
    weights = []
    head_sample = net.head.sample
    net.head.sample = lambda z, rnd, guidance=1.0, **kw: weights.append(guidance) or head_sample(z, rnd, guidance=guidance, **kw)
    net.sample(torch.zeros([1, 1, 8, 8]), one_hot([1]), StackedRandomGenerator('cpu', [0]), guidance=3.0,
        guidance_schedule='linear', head_steps=2, **({'steps': 4} if order == 'random' else {}))
    revealed = np.cumsum(unmasking_schedule(16, 4)) if order == 'random' else np.arange(1, 17)
    assert weights == pytest.approx(list(1 + 2 * revealed / 16), abs=1e-12)
    weights.clear()
    net.sample(torch.zeros([1, 1, 8, 8]), one_hot([1]), StackedRandomGenerator('cpu', [0]), guidance=3.0, head_steps=2)
    assert set(weights) == {3.0}

@pytest.mark.parametrize('order', ['random', 'raster'])
@pytest.mark.parametrize('head', HEADS)
def test_seed_gives_same_image_whatever_the_batch(head, order):
    net = tiny_net(head, order=order)
    seeds, classes = [11, 12, 13], [1, 2, 3]
    kw = dict(guidance=2.0, guidance_schedule='linear', head_steps=10)
    batch = net.sample(torch.zeros([3, 1, 8, 8]), one_hot(classes), StackedRandomGenerator('cpu', seeds), **kw)
    for i in [0, 2]:
        single = net.sample(torch.zeros([1, 1, 8, 8]), one_hot(classes[i:i+1]), StackedRandomGenerator('cpu', seeds[i:i+1]), **kw)
        assert torch.allclose(single[0], batch[i], atol=1e-5)
    assert batch.abs().max() <= 1 # Pixels: clipped to the data range.
    assert not torch.allclose(batch[0], batch[1])

@pytest.mark.parametrize('order', ['random', 'raster'])
def test_sample_checks_its_options(order):
    # The names and types are checked against `sampler_options` by the front end
    # (test_generate_images.py); sample() checks the values.
    net = tiny_net(order=order)
    sample = lambda **kw: net.sample(torch.zeros([1, 1, 8, 8]), one_hot([0]), StackedRandomGenerator('cpu', [0]), **kw)
    assert list(net.sampler_options) == ['steps', 'temperature', 'guidance_schedule', 'head_steps'] + (['use_cache'] if order == 'raster' else [])
    with pytest.raises(ValueError, match='guidance_schedule must be "constant" or "linear", got \'cosine\''):
        sample(guidance_schedule='cosine')
    with pytest.raises(ValueError, match='temperature must be a finite number, at least 0, got -1'):
        sample(temperature=-1.0)
    with pytest.raises(ValueError, match='head_steps must be at least 1'):
        sample(head_steps=0)
    if order == 'random':
        with pytest.raises(ValueError, match='steps must be in 1..16'):
            sample(steps=0)
    if order == 'raster':
        with pytest.raises(ValueError, match='one token per step: steps must be the number of tokens \\(16\\), got 8'):
            sample(steps=8)
        assert sample(steps=16).shape == (1, 1, 8, 8)

def test_persistent_pickle_roundtrip():
    net = tiny_net('flow')
    loaded = pickle.loads(pickle.dumps(net))
    assert persistence.is_persistent(loaded)
    run = lambda n: n.sample(torch.zeros([1, 1, 8, 8]), one_hot([2]), StackedRandomGenerator('cpu', [9]), head_steps=5)
    assert torch.equal(run(loaded), run(net))

#----------------------------------------------------------------------------
# Presets.

def build_preset_net(name, **shape):
    from training import presets
    kwargs = dict(presets.family_kwargs(presets.resolve(name))['network_kwargs'])
    network_class = {'training.networks_mar.MAR': MAR, 'training.networks_mar.CausalAR': CausalAR}[kwargs.pop('class_name')]
    return network_class(**shape, **kwargs)

def test_paper_sizes_parameter_counts():
    # Paper (Table 2 / 4): MAR-B 208M, MAR-L 479M, MAR-H 943M parameters, with the head. Its
    # causal AR baseline at the base size has the same blocks, without the buffer tokens and the
    # encoder/decoder split: the same count within 2%.
    for name, paper in [('mar-b', 208e6), ('mar-l', 479e6), ('mar-h', 943e6), ('ar-b', 208e6)]:
        with torch.device('meta'):
            net = build_preset_net(name, img_resolution=32, img_channels=4, label_dim=1000)
        assert net.seq_len == 256 and net.token_dim == 16 and type(net).__name__ == ('CausalAR' if name == 'ar-b' else 'MAR')
        count = sum(p.numel() for p in net.parameters())
        assert abs(count - paper) / paper < 0.02, (name, count)
    assert len(net.blocks) == 24 and type(net.head).__name__ == 'DiffusionHead' # ar-b

@pytest.mark.parametrize('head', ['diffusion', 'flow'])
def test_paper_size_forward_on_cpu(head):
    # MAR-B at full width (768, 64 buffer tokens, 1000 classes) on 32x32x4 latents (256 tokens of
    # 16), few blocks. At initialisation its head outputs exactly zero (the paper's init), so with
    # the flow head on all-zero latents every masked token's loss is the mean of 16 squared
    # standard normal draws: a sample's loss averages 16 x 4 draws for each of its >= 180 masked
    # tokens (mask ratio >= 0.7): 1 +- 0.013.
    from training import presets
    kwargs = dict(presets.family_kwargs(presets.resolve('mar-b', dict(head=head)))['network_kwargs'])
    kwargs.update(encoder_depth=1, decoder_depth=1, head_depth=1) # Full width, few blocks: fast.
    net = MAR(img_resolution=32, img_channels=4, label_dim=1000, **{k: v for k, v in kwargs.items() if k != 'class_name'})
    assert (net.seq_len, net.token_dim, net.buffer_tokens, net.data_bound) == (256, 16, 64, None) # Latents: never clipped.
    masks = []
    loss_fn = MARLoss()
    draw_mask = loss_fn.draw_mask
    loss_fn.draw_mask = lambda *args: masks.append(draw_mask(*args)) or masks[-1]
    torch.manual_seed(0)
    images = torch.randn([2, 4, 32, 32]) if head == 'diffusion' else torch.zeros([2, 4, 32, 32])
    loss = loss_fn(net=net, images=images, labels=one_hot([1, 999], 1000))
    assert loss.shape == (2,) and torch.isfinite(loss).all()
    assert (masks[0].sum(1) >= 180).all()
    if head == 'flow':
        assert (loss - 1).abs().max() < 0.05, loss

def test_digits_presets_build():
    from training import presets
    for name, network, head in [('mar-digits', 'MAR', 'DiffusionHead'), ('mar-digits-flow', 'MAR', 'FlowHead'),
            ('mar-digits-edm', 'MAR', 'EDMHead'), ('mar-digits-causal', 'CausalAR', 'EDMHead')]:
        net = build_preset_net(name, img_resolution=8, img_channels=1, label_dim=10)
        assert (type(net).__name__, type(net.head).__name__) == (network, head), name
        assert net.data_bound == 1.0 and net.seq_len == 16
        c = presets.family_kwargs(presets.resolve(name))
        assert c['optimizer_kwargs']['class_name'] == 'torch.optim.AdamW' and c['optimizer_kwargs']['weight_decay'] == 0.02
    # The causal digits model has the masked one's 4 + 4 blocks as 8 causal ones, at the same width.
    assert len(net.blocks) == 8 and net.pos.shape == (16, 128)
    with pytest.raises(ValueError, match='option "order" must be "random".*"raster".*got \'zigzag\''):
        presets.family_kwargs(presets.resolve('mar-digits', dict(order='zigzag')))
    with pytest.raises(ValueError, match="head must be one of diffusion, flow, edm and head_steps .*; got 'ddim' and 1"):
        MAR(img_resolution=8, img_channels=1, patch_size=2, width=16, num_heads=2, encoder_depth=1, decoder_depth=1, head='ddim')
    with pytest.raises(ValueError, match="got 'flow' and 0"):
        MAR(img_resolution=8, img_channels=1, patch_size=2, width=16, num_heads=2, encoder_depth=1, decoder_depth=1, head='flow',
            head_kwargs=dict(sample_steps=0))

@pytest.mark.parametrize('name', ['mar-digits', 'mar-digits-causal'])
def test_digits_preset_trains_through_the_shared_loop(name, tmp_path, tiny_zip):
    # The family plugs into the loop through its preset alone. The snapshot holds the EMA of the
    # training state (the same weights, moved away from the initial network: no warm-up here),
    # samples as that state loaded into a freshly built network does, and decodes to pixels.
    from torch_utils import util
    from training import config, training_loop
    small = dict(encoder_depth=1, decoder_depth=1) if name == 'mar-digits' else dict(depth=2)
    _, c = config.build(name, dict(small, width=16, num_heads=2, head_width=16, head_depth=1, rampup=0.0, ema_beta=0.9,
        batch=8, duration=1000, status=1000, snapshot=1000, checkpoint=1000), data=tiny_zip)
    training_loop.training_loop(run_dir=str(tmp_path), device='cpu', **c)
    with open(tmp_path / 'network-snapshot-0000001-ema.pkl', 'rb') as f:
        data = persistence.load_pickle(f)
    net, encoder = data['ema'], data['encoder']
    assert isinstance(net, {'mar-digits': MAR, 'mar-digits-causal': CausalAR}[name]) and net.label_dim == 3 and net.seq_len == 4
    state = torch.load(tmp_path / 'training-state-0000001.pt', weights_only=True)
    fresh = util.construct_class_by_name(**c.network_kwargs, img_resolution=4, img_channels=1, label_dim=3).eval()
    initial = {k: v.clone() for k, v in fresh.state_dict().items()}
    fresh.load_state_dict(state['ema']['emas'][0])
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in fresh.state_dict().items())
    assert max(float((fresh.state_dict()[k] - v).abs().max()) for k, v in initial.items()) > 1e-3
    sample = lambda n: n.sample(torch.zeros([2, 1, 4, 4]), torch.eye(3)[:2], StackedRandomGenerator('cpu', [0, 1]), steps=4, head_steps=5)
    samples = sample(net)
    assert torch.equal(samples, sample(fresh)) and samples.abs().max() <= 1
    assert torch.equal(encoder.decode(samples), (samples * 127.5 + 128).clip(0, 255).to(torch.uint8))

@pytest.mark.parametrize('name, calls', [('mar-digits', 7), ('mar-digits-flow', 2 * 7 - 1), ('mar-digits-edm', 2 * 7 - 1),
    ('mar-digits-causal', 2 * 7 - 1)])
def test_head_steps_reaches_the_head(name, calls):
    # The training option head_steps=7: every token's head samples in 7 steps (diffusion: 7 network
    # calls; flow and EDM with Heun: 2 per step but the last), unless the sampler is given head_steps.
    from training import presets
    small = dict(encoder_depth=1, decoder_depth=1) if name != 'mar-digits-causal' else dict(depth=1)
    opts = presets.resolve(name, dict(small, head_steps=7, width=16, num_heads=2, head_width=16, head_depth=1))
    kwargs = dict(presets.family_kwargs(opts)['network_kwargs'])
    network_class = {'training.networks_mar.MAR': MAR, 'training.networks_mar.CausalAR': CausalAR}[kwargs.pop('class_name')]
    net = network_class(img_resolution=8, img_channels=1, label_dim=10, **kwargs).eval()
    assert net.head.sample_steps == 7
    seen = []
    forward = net.head.net.forward
    net.head.net.forward = lambda *args: seen.append(1) or forward(*args)
    sample = lambda **kw: net.sample(torch.zeros([1, 1, 8, 8]), one_hot([3]), StackedRandomGenerator('cpu', [0]), **kw)
    sample(**({'steps': 4} if name != 'mar-digits-causal' else {}))
    head_calls = 4 if name != 'mar-digits-causal' else 16 # One per generation step.
    assert len(seen) == head_calls * calls
    seen.clear()
    sample(head_steps=3, **({'steps': 4} if name != 'mar-digits-causal' else {}))
    assert len(seen) == head_calls * (3 if name == 'mar-digits' else 5)

#----------------------------------------------------------------------------
# Acceptance (slow, 9-12 minutes each on 2 cores): the digits presets (masked with the diffusion,
# flow and EDM heads; causal with the EDM head) trained, sampled
# and scored through the command lines (train_edm2.py, calculate_metrics.py gen on 1000 images
# against the held-out digits), to the numbers README.md quotes. The reference point is "class
# mean plus noise": per class, the mean training image plus independent Gaussian noise with the
# class's per-pixel standard deviation, clipped to [0, 1], scored by calculate_metrics.py calc.

README_MAR_DIGITS = {
    'mar-digits': {1.0: dict(digits_acc=0.950, fd_digits=0.169), 2.0: dict(digits_acc=0.999)},
    'mar-digits-flow': {1.0: dict(digits_acc=0.963, fd_digits=0.151), 2.0: dict(digits_acc=0.996)},
    'mar-digits-edm': {1.0: dict(digits_acc=0.944, fd_digits=0.149), 2.0: dict(digits_acc=0.997)},
    'mar-digits-causal': {1.0: dict(digits_acc=0.953, fd_digits=0.079), 2.0: dict(digits_acc=0.999)},
}
README_CLASS_MEAN_PLUS_NOISE_FD = 0.339

@pytest.mark.slow
@pytest.mark.parametrize('preset', sorted(README_MAR_DIGITS))
def test_digits_acceptance(preset, tmp_path, digits_zips, digits_ref):
    import json
    import time
    from helpers import gen_metrics, invoke_ok, write_dataset
    from training import digits

    x_train, y_train = digits.pixels('train')
    rng = np.random.RandomState(0)
    baseline = np.concatenate([np.clip(x_train[y_train == c].mean(0) + rng.randn(100, 64) * x_train[y_train == c].std(0), 0, 1)
        for c in range(10)])
    write_dataset(tmp_path / 'baseline.zip', np.rint(baseline * 255).astype(np.uint8).reshape(-1, 8, 8))
    result = invoke_ok('calculate_metrics', 'calc', '--images', tmp_path / 'baseline.zip', '--ref', digits_ref, '--metrics', 'fd_digits',
        '--num', 1000, '--workers', 0)
    results = dict(baseline_fd=json.loads(result.output.strip().splitlines()[-1])['value'])

    start = time.time()
    invoke_ok('train_edm2', '--preset', preset, '--data', digits_zips['train'], '--outdir', tmp_path / 'run')
    results['train_minutes'] = round((time.time() - start) / 60, 1)
    snapshot = sorted((tmp_path / 'run').glob('network-snapshot-*.pkl'))[-1]
    for guidance in [1.0, 2.0]:
        results[guidance] = gen_metrics(snapshot, digits_ref, '--num', 1000, '--guidance', guidance, '--batch', 100)
    print(preset, snapshot.name, results)

    assert results['train_minutes'] <= 20 # README: 7.7 to 11.6 minutes on one thread.
    assert results[1.0]['digits_acc'] >= 0.90
    assert results['baseline_fd'] == pytest.approx(README_CLASS_MEAN_PLUS_NOISE_FD, abs=0.01)
    for guidance, quoted in README_MAR_DIGITS[preset].items():
        assert abs(results[guidance]['digits_acc'] - quoted['digits_acc']) <= 0.03, (guidance, results)
    assert results[1.0]['fd_digits'] == pytest.approx(README_MAR_DIGITS[preset][1.0]['fd_digits'], rel=0.4)
    assert results[1.0]['fd_digits'] < results['baseline_fd']
    assert results[2.0]['digits_acc'] >= results[1.0]['digits_acc'] # Guidance helps (or keeps a perfect score).
