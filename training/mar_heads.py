"""The per-token heads of MAR and its causal baseline (training/networks_mar.py): each models the
continuous distribution of one token (a patch of D numbers) given the transformer's conditioning
vector z for it, and draws tokens from it.

Three heads share one interface: DDPM-style diffusion with a learned variance (MAR's DiffLoss,
Li et al. 2024), flow matching on the linear path, and EDM (Karras et al. 2022 preconditioning,
log-normal training noise). The flow and EDM heads integrate their ODE with the one integrator
below (Heun or Euler), as k-diffusion keeps its solvers apart from its schedules.

Each head is a persistent class and carries this module's source in a snapshot: a MAR snapshot
loads without this file.
"""

import math
import numpy as np
import torch
from torch_utils import persistence

#----------------------------------------------------------------------------
# The head's network: a residual MLP whose blocks are modulated (adaptive LayerNorm) by the sum
# of the token's conditioning vector and a timestep embedding.

def timestep_embedding(t, dim, max_period=10000):
    freqs = torch.exp(-math.log(max_period) * torch.arange(dim // 2, dtype=torch.float32, device=t.device) / (dim // 2))
    args = t.to(torch.float32)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

@persistence.persistent_class
class AdaLNBlock(torch.nn.Module):
    def __init__(self, width):
        super().__init__()
        self.norm = torch.nn.LayerNorm(width, eps=1e-6)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.SiLU(), torch.nn.Linear(width, width))
        self.modulation = torch.nn.Sequential(torch.nn.SiLU(), torch.nn.Linear(width, 3 * width))

    def forward(self, x, y):
        shift, scale, gate = self.modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(self.norm(x) * (1 + scale) + shift)

@persistence.persistent_class
class AdaLNMLP(torch.nn.Module):
    def __init__(self, in_dim, out_dim, cond_dim, width, depth, freq_dim=256):
        super().__init__()
        self.freq_dim = freq_dim
        self.time_embed = torch.nn.Sequential(torch.nn.Linear(freq_dim, width), torch.nn.SiLU(), torch.nn.Linear(width, width))
        self.cond_embed = torch.nn.Linear(cond_dim, width)
        self.input_proj = torch.nn.Linear(in_dim, width)
        self.blocks = torch.nn.ModuleList([AdaLNBlock(width) for _ in range(depth)])
        self.out_norm = torch.nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.out_modulation = torch.nn.Sequential(torch.nn.SiLU(), torch.nn.Linear(width, 2 * width))
        self.out = torch.nn.Linear(width, out_dim)

        # Start as the zero function: every block an identity, the output zero (DiT, MAR).
        for module in self.modules():
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.xavier_uniform_(module.weight)
                torch.nn.init.zeros_(module.bias)
        for layer in self.time_embed[0::2]:
            torch.nn.init.normal_(layer.weight, std=0.02)
        for layer in [block.modulation[-1] for block in self.blocks] + [self.out_modulation[-1], self.out]:
            torch.nn.init.zeros_(layer.weight)
            torch.nn.init.zeros_(layer.bias)

    def forward(self, x, t, c):
        y = self.time_embed(timestep_embedding(t, self.freq_dim)) + self.cond_embed(c)
        x = self.input_proj(x)
        for block in self.blocks:
            x = block(x, y)
        shift, scale = self.out_modulation(y).chunk(2, dim=-1)
        return self.out(self.out_norm(x) * (1 + scale) + shift)

#----------------------------------------------------------------------------
# Heads. Each models a batch of tokens x0 [M, D] given conditioning vectors z [M, C]:
# loss(x0, z) -> per-token loss [M] (randomness from torch's global RNG, as in training), and
# sample(z, rnd, ...) -> tokens [N, M', D] for z [N, M', C] with every draw from `rnd` (one
# generator per image). Guidance combines the prediction given z with the one given `guide_z`
# (from the null class, or from a guiding network `guide_head`): g_guide + w (g - g_guide).

def flat(x):
    """[..., D] -> [M, D]: the head's network sees a plain batch of tokens."""
    return x.reshape(-1, x.shape[-1])

def combine_guidance(out, guide_out, guidance, num_guided):
    """Extrapolate the first `num_guided` channels of `out` away from `guide_out`; the rest
    (e.g. the learned variance) stay those of `out`."""
    guided = guide_out[..., :num_guided] + guidance * (out[..., :num_guided] - guide_out[..., :num_guided])
    return torch.cat([guided, out[..., num_guided:]], dim=-1)

class TokenHead(torch.nn.Module):
    """What the heads share (not persistent itself; it travels in the same module source): the
    network and the guided prediction. Each head defines predict(x, t, z) for flat tokens x [M, D]
    at its time variable t, given z [M, C]."""

    def __init__(self, token_dim, cond_dim, out_dim, width, depth, sample_steps):
        super().__init__()
        self.token_dim = token_dim
        self.sample_steps = sample_steps
        self.net = AdaLNMLP(token_dim, out_dim, cond_dim, width, depth)

    def guided(self, x, t, z, guide_z=None, guide_head=None, guidance=1.0):
        """The prediction given z [..., C], extrapolated away from the guide's given guide_z."""
        out = self.predict(x, t, flat(z))
        if guide_z is None:
            return out
        return combine_guidance(out, (guide_head or self).predict(x, t, flat(guide_z)), guidance, self.token_dim)

def integrate(slope, x, times, solver):
    """Solve dx/dt = slope(x, t) from t = times[0] through times[1:] (a decreasing float64 array
    ending at 0) by Euler's method, or Heun's (Karras et al. 2022, Algorithm 1: the average of
    the slopes at both ends of a step), which takes an Euler step where the step ends at t = 0."""
    for t_cur, t_next in zip(times[:-1], times[1:]):
        d_cur = slope(x, t_cur)
        x_next = x + (t_next - t_cur) * d_cur
        if solver == 'heun' and t_next > 0:
            x_next = x + (t_next - t_cur) * 0.5 * (d_cur + slope(x_next, t_next))
        x = x_next
    return x

SOLVERS = ['heun', 'euler']

def cosine_betas(num_steps, max_beta=0.999):
    """Improved DDPM's cosine schedule: alpha_bar(s) = cos((s + 0.008) / 1.008 * pi / 2)^2."""
    alpha_bar = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.array([min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta) for i in range(num_steps)])

def spaced_timesteps(num_train_steps, num_sample_steps):
    """Evenly spaced subset of the training timesteps, first and last included."""
    return np.round(np.linspace(0, num_train_steps - 1, num_sample_steps)).astype(np.int64)

def diffusion_coefficients(alphas_cumprod):
    """Per-step coefficients of a discrete diffusion with the given cumulative alphas (float64),
    for the forward process, the posterior q(x_{t-1} | x_t, x_0) and the learned-range variance."""
    acp = np.asarray(alphas_cumprod, dtype=np.float64)
    acp_prev = np.append(1.0, acp[:-1])
    betas = 1 - acp / acp_prev
    post_var = betas * (1 - acp_prev) / (1 - acp)
    return dict(
        sqrt_acp            = np.sqrt(acp),
        sqrt_one_minus_acp  = np.sqrt(1 - acp),
        sqrt_recip_acp      = np.sqrt(1 / acp),
        sqrt_recipm1_acp    = np.sqrt(1 / acp - 1),
        post_coef_x0        = betas * np.sqrt(acp_prev) / (1 - acp),
        post_coef_xt        = (1 - acp_prev) * np.sqrt(1 - betas) / (1 - acp),
        post_log_var        = np.log(np.append(post_var[1], post_var[1:])), # The t=0 variance is 0: clip it.
        log_betas           = np.log(betas),
    )

def normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2).square() * torch.exp(-logvar2))

def discretized_gaussian_log_likelihood(x, mean, log_scale, bin_width=2/255):
    """log P(x) of a Gaussian integrated over the bin of width 2/255 around x (data in [-1, 1],
    the edge bins open), as the decoder term L_0 of improved DDPM (which MAR keeps for latents)."""
    inv_std = torch.exp(-log_scale)
    cdf_plus = torch.special.ndtr(inv_std * (x - mean + bin_width / 2))
    cdf_minus = torch.special.ndtr(inv_std * (x - mean - bin_width / 2))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_minus = torch.log((1 - cdf_minus).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_minus).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_minus, log_delta))

@persistence.persistent_class
class DiffusionHead(TokenHead):
    """DiffLoss: epsilon prediction with a learned variance (the network's second half of outputs
    v in [-1, 1] interpolates log beta_t and the clipped log posterior variance), trained with
    improved DDPM's hybrid loss L_simple + L_vlb (the variational term sees a frozen mean; with
    1000 steps the per-step L_t is their lambda = 0.001 times T L_t). Samples with the schedule
    respaced to `sample_steps`."""
    def __init__(self, token_dim, cond_dim, width=1024, depth=3,
        train_steps     = 1000, # Timesteps of the training diffusion (cosine schedule).
        sample_steps    = 100,  # Respaced timesteps used for sampling.
    ):
        super().__init__(token_dim, cond_dim, 2 * token_dim, width, depth, sample_steps)
        self.alphas_cumprod = np.cumprod(1 - cosine_betas(train_steps)) # float64: respacing needs 1 - alpha_bar exactly.
        for name, value in diffusion_coefficients(self.alphas_cumprod).items():
            self.register_buffer(name, torch.as_tensor(value, dtype=torch.float32), persistent=False)

    def coefficients(self, num_steps):
        """The sampling schedule: timesteps (indices the network sees) and their coefficients."""
        timesteps = spaced_timesteps(len(self.alphas_cumprod), num_steps)
        coef = {name: torch.as_tensor(value, dtype=self.sqrt_acp.dtype, device=self.sqrt_acp.device)
            for name, value in diffusion_coefficients(self.alphas_cumprod[timesteps]).items()}
        return torch.as_tensor(timesteps, device=self.sqrt_acp.device), coef

    def p_mean_logvar(self, coef, i, x, eps, v, bound=None):
        """Mean and log variance of p(x_{i-1} | x_i) from the predicted noise and variance
        interpolation; the implied clean token is clipped to [-bound, bound] when given."""
        frac = (v + 1) / 2
        logvar = frac * coef['log_betas'][i, None] + (1 - frac) * coef['post_log_var'][i, None]
        x0 = coef['sqrt_recip_acp'][i, None] * x - coef['sqrt_recipm1_acp'][i, None] * eps
        if bound is not None:
            x0 = x0.clamp(-bound, bound)
        return coef['post_coef_x0'][i, None] * x0 + coef['post_coef_xt'][i, None] * x, logvar

    def predict(self, x, t, z):
        return self.net(x, t, z)

    def loss(self, x0, z):
        t = torch.randint(0, len(self.sqrt_acp), [x0.shape[0]], device=x0.device)
        noise = torch.randn_like(x0)
        x = self.sqrt_acp[t, None] * x0 + self.sqrt_one_minus_acp[t, None] * noise
        eps, v = self.net(x, t, z).chunk(2, dim=-1)
        mse = (eps - noise).square().mean(-1)

        # Variational bound in bits per dimension; it trains the variance only (frozen mean).
        coef = dict(self.named_buffers(recurse=False)) # The training schedule's coefficients.
        mean, logvar = self.p_mean_logvar(coef, t, x, eps.detach(), v)
        true_mean = coef['post_coef_x0'][t, None] * x0 + coef['post_coef_xt'][t, None] * x
        kl = normal_kl(true_mean, coef['post_log_var'][t, None], mean, logvar).mean(-1)
        nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * logvar).mean(-1)
        return mse + torch.where(t == 0, nll, kl) / math.log(2)

    def sample(self, z, rnd, temperature=1.0, guidance=1.0, guide_z=None, guide_head=None, bound=None, steps=None):
        timesteps, coef = self.coefficients(self.sample_steps if steps is None else steps)
        batch_shape = z.shape[:-1]
        # All of an image's noise in one draw per generator (the per-image loop is the slow part).
        noise = rnd.randn([batch_shape[0], len(timesteps), *batch_shape[1:], self.token_dim], device=z.device)
        x = noise[:, -1]
        for i in reversed(range(len(timesteps))):
            t = timesteps[i].expand(x[..., 0].numel())
            out = self.guided(flat(x), t, z, guide_z, guide_head, guidance)
            eps, v = out.reshape(*batch_shape, -1).chunk(2, dim=-1)
            x, logvar = self.p_mean_logvar(coef, i, x, eps, v, bound=bound)
            if i > 0:
                x = x + torch.exp(0.5 * logvar) * temperature * noise[:, i - 1]
        return x

@persistence.persistent_class
class FlowHead(TokenHead):
    """Flow matching on the linear path x_t = (1 - t) x0 + t eps, t in [0, 1], predicting the
    velocity eps - x0 (or the clean token x0); sampled from t = 1 to 0 with Heun's method (Euler
    on the last step) or Euler. Temperature scales the starting noise."""
    def __init__(self, token_dim, cond_dim, width=1024, depth=3,
        prediction      = 'v',      # 'v' (velocity) or 'x' (clean token).
        sample_steps    = 50,       # Integration steps.
        solver          = 'heun',   # 'heun' or 'euler'.
        time_scale      = 1000,     # t in [0, 1] enters the timestep embedding as t * time_scale.
    ):
        if prediction not in ['v', 'x'] or solver not in SOLVERS:
            raise ValueError(f'FlowHead: prediction must be "v" or "x" and solver "heun" or "euler", got {prediction!r}, {solver!r}')
        super().__init__(token_dim, cond_dim, token_dim, width, depth, sample_steps)
        self.prediction = prediction
        self.solver = solver
        self.time_scale = time_scale

    def loss(self, x0, z):
        t = torch.rand([x0.shape[0], 1], device=x0.device)
        noise = torch.randn_like(x0)
        out = self.net((1 - t) * x0 + t * noise, t[:, 0] * self.time_scale, z)
        target = noise - x0 if self.prediction == 'v' else x0
        return (out - target).square().mean(-1)

    def predict(self, x, t, z):
        """The velocity dx/dt at (x, t > 0), a float."""
        out = self.net(x, torch.full([x.shape[0]], t * self.time_scale, dtype=x.dtype, device=x.device), z)
        return out if self.prediction == 'v' else (x - out) / t

    def sample(self, z, rnd, temperature=1.0, guidance=1.0, guide_z=None, guide_head=None, bound=None, steps=None):
        def velocity(x, t): # Guided; its implied clean token clipped to [-bound, bound].
            x_flat = flat(x)
            v = self.guided(x_flat, t, z, guide_z, guide_head, guidance)
            if bound is not None:
                v = (x_flat - (x_flat - t * v).clamp(-bound, bound)) / t
            return v.reshape(x.shape)
        x = rnd.randn([*z.shape[:-1], self.token_dim], device=z.device) * temperature
        return integrate(velocity, x, np.linspace(1, 0, (self.sample_steps if steps is None else steps) + 1), self.solver)

@persistence.persistent_class
class EDMHead(TokenHead):
    """The EDM parameterisation (Karras et al. 2022) of a per-token denoiser
    D(x; sigma) = c_skip x + c_out F(c_in x; c_noise), with sigma_data preconditioning, trained at
    log-normal noise levels with EDM's weighting (which makes the loss ||F - F_target||^2), and
    sampled by the probability-flow ODE over the Karras noise levels with Heun's method (Euler on
    the last step) or Euler. Temperature scales the starting noise."""
    def __init__(self, token_dim, cond_dim, width=1024, depth=3,
        sigma_data      = 0.5,      # Expected standard deviation of the tokens.
        P_mean          = -1.2,     # Training noise: ln(sigma) ~ normal(P_mean, P_std).
        P_std           = 1.2,
        sigma_min       = 0.002,    # Sampling noise levels (Karras schedule).
        sigma_max       = 80,
        rho             = 7,
        sample_steps    = 32,       # Noise levels before sigma = 0.
        solver          = 'heun',   # 'heun' or 'euler'.
        time_scale      = 1000,     # c_noise = ln(sigma) / 4 enters the timestep embedding times this.
    ):
        if solver not in SOLVERS or sigma_data <= 0 or not 0 < sigma_min < sigma_max:
            raise ValueError(f'EDMHead: solver must be "heun" or "euler", sigma_data > 0 and 0 < sigma_min < sigma_max; '
                f'got {solver!r}, {sigma_data}, {sigma_min}, {sigma_max}')
        super().__init__(token_dim, cond_dim, token_dim, width, depth, sample_steps)
        self.sigma_data = sigma_data
        self.P_mean, self.P_std = P_mean, P_std
        self.sigma_min, self.sigma_max, self.rho = sigma_min, sigma_max, rho
        self.solver = solver
        self.time_scale = time_scale

    def preconditioning(self, sigma):
        """c_skip, c_out, c_in [M, 1] and the network's time input [M] for noise levels [M]."""
        sigma = sigma.reshape(-1, 1)
        norm = (sigma.square() + self.sigma_data ** 2).sqrt()
        c_skip = self.sigma_data ** 2 / norm.square()
        c_out = sigma * self.sigma_data / norm
        return c_skip, c_out, 1 / norm, sigma.log().flatten() / 4 * self.time_scale

    def denoise(self, x, sigma, z):
        """D(x; sigma) for tokens x [M, D] at noise levels sigma [M] given z [M, C]."""
        c_skip, c_out, c_in, t = self.preconditioning(sigma)
        return c_skip * x + c_out * self.net(c_in * x, t, z)

    def predict(self, x, sigma, z):
        """D(x; sigma) at one noise level, a float."""
        return self.denoise(x, torch.full([x.shape[0]], sigma, dtype=x.dtype, device=x.device), z)

    def loss(self, x0, z):
        sigma = (torch.randn([x0.shape[0]], device=x0.device) * self.P_std + self.P_mean).exp()
        x = x0 + torch.randn_like(x0) * sigma[:, None]
        c_skip, c_out, c_in, t = self.preconditioning(sigma)
        target = (x0 - c_skip * x) / c_out # D = x0 exactly when F hits it.
        return (self.net(c_in * x, t, z) - target).square().mean(-1)

    def noise_levels(self, num_steps):
        """sigma_max = sigma_0 > ... > sigma_{N-1} = sigma_min, then 0 (float64). The schedule of
        training.samplers.karras_sigmas (tested equal), written here because a snapshot embeds
        this module's source and must load without the training package."""
        ramp = np.linspace(0, 1, num_steps) if num_steps > 1 else np.zeros(1)
        sigmas = (self.sigma_max ** (1 / self.rho) + ramp * (self.sigma_min ** (1 / self.rho) - self.sigma_max ** (1 / self.rho))) ** self.rho
        return np.append(sigmas, 0.0)

    def sample(self, z, rnd, temperature=1.0, guidance=1.0, guide_z=None, guide_head=None, bound=None, steps=None):
        def slope(x, sigma): # dx/dsigma = (x - D) / sigma with the guided denoiser, clipped to [-bound, bound].
            denoised = self.guided(flat(x), sigma, z, guide_z, guide_head, guidance)
            if bound is not None:
                denoised = denoised.clamp(-bound, bound)
            return (x - denoised.reshape(x.shape)) / sigma
        sigmas = self.noise_levels(self.sample_steps if steps is None else steps)
        x = rnd.randn([*z.shape[:-1], self.token_dim], device=z.device) * (sigmas[0] * temperature)
        return integrate(slope, x, sigmas, self.solver)

HEADS = dict(diffusion=DiffusionHead, flow=FlowHead, edm=EDMHead)

#----------------------------------------------------------------------------
