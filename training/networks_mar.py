"""MAR: masked autoregressive image generation with a per-token diffusion (or flow) head, after
Li et al., "Autoregressive Image Generation without Vector Quantization", 2024 (arXiv 2406.11838).

An image in net space (pixels in [-1, 1], or VAE latents) is cut into p x p patches, the tokens.
A bidirectional MAE-style transformer sees the known tokens (and a few buffer tokens carrying the
class) and produces one conditioning vector per unknown token; a small MLP head models each
unknown token's continuous distribution given that vector, by diffusion ("DiffLoss") or by flow
matching. Training masks a random share of the tokens (in a random order) and scores the masked
ones only; generation reveals the tokens in a random order over K transformer passes, drawing each
newly revealed token from the head.

The same paper's causal baseline (`order='raster'`, class CausalAR) is here too: the tokens in
raster order, a causal (decoder-only) transformer whose first input is a start token carrying the
class, token i predicted by the head from the tokens before it. Training is teacher forcing with
every position scored; generation is token by token with a key/value cache, so L tokens cost L
incremental steps of one position each rather than L full passes.

Three heads share one interface: DDPM-style diffusion (DiffLoss), flow matching, and EDM
(Karras et al. 2022 preconditioning, log-normal training noise, Heun or Euler over the Karras
noise levels).
"""

import math
import numpy as np
import torch
from torch_utils import persistence

#----------------------------------------------------------------------------
# Generation order: how many tokens each of the K steps reveals. The share still masked after
# step k follows cos(pi/2 * (k+1)/K) (MaskGIT, MAR); every step reveals at least one token and
# the last step reveals the rest.

def unmasking_schedule(num_tokens, num_steps):
    if not 1 <= num_steps <= num_tokens:
        raise ValueError(f'MAR: steps must be in 1..{num_tokens} (one token per step at least), got {num_steps}')
    counts = []
    masked = num_tokens
    for step in range(num_steps):
        target = math.floor(num_tokens * math.cos(math.pi / 2 * (step + 1) / num_steps))
        still_to_go = num_steps - 1 - step # Leave one token for each later step.
        target = min(max(target, still_to_go), masked - 1) if still_to_go else 0
        counts.append(masked - target)
        masked = target
    return counts

#----------------------------------------------------------------------------
# Transformer building blocks (pre-norm ViT block, as in MAE).

@persistence.persistent_class
class Attention(torch.nn.Module):
    def __init__(self, dim, num_heads, dropout=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.qkv = torch.nn.Linear(dim, dim * 3)
        self.proj = torch.nn.Linear(dim, dim)
        self.proj_drop = torch.nn.Dropout(dropout)

    def forward(self, x, causal=False, cache=None):
        """x [N, T, dim]. `causal`: position t attends to positions <= t only. `cache` (a dict,
        filled in place) holds the keys and values of the positions seen so far: x is then the
        next position(s) after them, and attends to all of them (no mask is needed while one
        position is added per call, the only use here)."""
        q, k, v = self.qkv(x).unflatten(-1, [3, self.num_heads, -1]).permute(2, 0, 3, 1, 4)
        if cache is not None:
            if cache:
                assert x.shape[1] == 1, 'a filled cache takes one new position per call'
                k, v = torch.cat([cache['k'], k], dim=2), torch.cat([cache['v'], v], dim=2)
            cache['k'], cache['v'] = k, v
            causal = causal and q.shape[2] > 1
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal,
            dropout_p=self.dropout if self.training else 0.0)
        return self.proj_drop(self.proj(y.transpose(1, 2).flatten(2)))

@persistence.persistent_class
class Block(torch.nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio=4, dropout=0.0):
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, dropout=dropout)
        self.norm2 = torch.nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Dropout(dropout),
            torch.nn.Linear(hidden, dim), torch.nn.Dropout(dropout))

    def forward(self, x, causal=False, cache=None):
        x = x + self.attn(self.norm1(x), causal=causal, cache=cache)
        return x + self.mlp(self.norm2(x))

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

def combine_guidance(out, guide_out, guidance, num_guided):
    """Extrapolate the first `num_guided` channels of `out` away from `guide_out`; the rest
    (e.g. the learned variance) stay those of `out`."""
    guided = guide_out[..., :num_guided] + guidance * (out[..., :num_guided] - guide_out[..., :num_guided])
    return torch.cat([guided, out[..., num_guided:]], dim=-1)

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
class DiffusionHead(torch.nn.Module):
    """DiffLoss: epsilon prediction with a learned variance (the network's second half of outputs
    v in [-1, 1] interpolates log beta_t and the clipped log posterior variance), trained with
    improved DDPM's hybrid loss L_simple + L_vlb (the variational term sees a frozen mean; with
    1000 steps the per-step L_t is their lambda = 0.001 times T L_t). Samples with the schedule
    respaced to `sample_steps`."""
    def __init__(self, token_dim, cond_dim, width=1024, depth=3,
        train_steps     = 1000, # Timesteps of the training diffusion (cosine schedule).
        sample_steps    = 100,  # Respaced timesteps used for sampling.
    ):
        super().__init__()
        self.token_dim = token_dim
        self.sample_steps = sample_steps
        self.net = AdaLNMLP(token_dim, 2 * token_dim, cond_dim, width, depth)
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
        timesteps, coef = self.coefficients(steps or self.sample_steps)
        batch_shape = z.shape[:-1]
        # All of an image's noise in one draw per generator (the per-image loop is the slow part).
        noise = rnd.randn([batch_shape[0], len(timesteps), *batch_shape[1:], self.token_dim], device=z.device)
        x = noise[:, -1]
        flat = lambda a: a.reshape(-1, a.shape[-1])
        for i in reversed(range(len(timesteps))):
            t = timesteps[i].expand(x[..., 0].numel())
            out = self.net(flat(x), t, flat(z))
            if guide_z is not None:
                out = combine_guidance(out, (guide_head or self).net(flat(x), t, flat(guide_z)), guidance, self.token_dim)
            eps, v = out.reshape(*batch_shape, -1).chunk(2, dim=-1)
            x, logvar = self.p_mean_logvar(coef, i, x, eps, v, bound=bound)
            if i > 0:
                x = x + torch.exp(0.5 * logvar) * temperature * noise[:, i - 1]
        return x

@persistence.persistent_class
class FlowHead(torch.nn.Module):
    """Flow matching on the linear path x_t = (1 - t) x0 + t eps, t in [0, 1], predicting the
    velocity eps - x0 (or the clean token x0); sampled from t = 1 to 0 with Heun's method (Euler
    on the last step) or Euler. Temperature scales the starting noise."""
    def __init__(self, token_dim, cond_dim, width=1024, depth=3,
        prediction      = 'v',      # 'v' (velocity) or 'x' (clean token).
        sample_steps    = 50,       # Integration steps.
        solver          = 'heun',   # 'heun' or 'euler'.
        time_scale      = 1000,     # t in [0, 1] enters the timestep embedding as t * time_scale.
    ):
        super().__init__()
        if prediction not in ['v', 'x'] or solver not in ['heun', 'euler']:
            raise ValueError(f'FlowHead: prediction must be "v" or "x" and solver "heun" or "euler", got {prediction!r}, {solver!r}')
        self.token_dim = token_dim
        self.prediction = prediction
        self.sample_steps = sample_steps
        self.solver = solver
        self.time_scale = time_scale
        self.net = AdaLNMLP(token_dim, token_dim, cond_dim, width, depth)

    def loss(self, x0, z):
        t = torch.rand([x0.shape[0], 1], device=x0.device)
        noise = torch.randn_like(x0)
        out = self.net((1 - t) * x0 + t * noise, t[:, 0] * self.time_scale, z)
        target = noise - x0 if self.prediction == 'v' else x0
        return (out - target).square().mean(-1)

    def velocity(self, out, x, t):
        """dx/dt at (x, t > 0) from the network output."""
        return out if self.prediction == 'v' else (x - out) / t

    def sample(self, z, rnd, temperature=1.0, guidance=1.0, guide_z=None, guide_head=None, bound=None, steps=None):
        num_steps = steps or self.sample_steps
        batch_shape = z.shape[:-1]
        flat = lambda a: a.reshape(-1, a.shape[-1])
        def field(x, t): # The guided velocity; its implied clean token clipped to [-bound, bound].
            x = flat(x)
            t_in = torch.full([x.shape[0]], t * self.time_scale, dtype=x.dtype, device=x.device)
            v = self.velocity(self.net(x, t_in, flat(z)), x, t)
            if guide_z is not None:
                head = guide_head or self
                v = combine_guidance(v, head.velocity(head.net(x, t_in, flat(guide_z)), x, t), guidance, self.token_dim)
            if bound is not None:
                v = (x - (x - t * v).clamp(-bound, bound)) / t
            return v.reshape(*batch_shape, -1)
        x = rnd.randn([*batch_shape, self.token_dim], device=z.device) * temperature
        t_steps = np.linspace(1, 0, num_steps + 1)
        for t_cur, t_next in zip(t_steps[:-1], t_steps[1:]):
            d_cur = field(x, t_cur)
            x_next = x + (t_next - t_cur) * d_cur
            if self.solver == 'heun' and t_next > 0:
                x_next = x + (t_next - t_cur) * 0.5 * (d_cur + field(x_next, t_next))
            x = x_next
        return x

@persistence.persistent_class
class EDMHead(torch.nn.Module):
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
        super().__init__()
        if solver not in ['heun', 'euler'] or sigma_data <= 0 or not 0 < sigma_min < sigma_max:
            raise ValueError(f'EDMHead: solver must be "heun" or "euler", sigma_data > 0 and 0 < sigma_min < sigma_max; '
                f'got {solver!r}, {sigma_data}, {sigma_min}, {sigma_max}')
        self.token_dim = token_dim
        self.sigma_data = sigma_data
        self.P_mean = P_mean
        self.P_std = P_std
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.rho = rho
        self.sample_steps = sample_steps
        self.solver = solver
        self.time_scale = time_scale
        self.net = AdaLNMLP(token_dim, token_dim, cond_dim, width, depth)

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
        batch_shape = z.shape[:-1]
        flat = lambda a: a.reshape(-1, a.shape[-1])
        def slope(x, sigma): # dx/dsigma = (x - D) / sigma with the guided denoiser, clipped to [-bound, bound].
            x_flat = flat(x)
            sigma_in = torch.full([x_flat.shape[0]], sigma, dtype=x.dtype, device=x.device)
            denoised = self.denoise(x_flat, sigma_in, flat(z))
            if guide_z is not None:
                denoised = combine_guidance(denoised, (guide_head or self).denoise(x_flat, sigma_in, flat(guide_z)), guidance, self.token_dim)
            if bound is not None:
                denoised = denoised.clamp(-bound, bound)
            return (x - denoised.reshape(x.shape)) / sigma
        sigmas = self.noise_levels(steps or self.sample_steps)
        x = rnd.randn([*batch_shape, self.token_dim], device=z.device) * (sigmas[0] * temperature)
        for sigma_cur, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            d_cur = slope(x, sigma_cur)
            x_next = x + (sigma_next - sigma_cur) * d_cur
            if self.solver == 'heun' and sigma_next > 0:
                x_next = x + (sigma_next - sigma_cur) * 0.5 * (d_cur + slope(x_next, sigma_next))
            x = x_next
        return x

HEADS = dict(diffusion=DiffusionHead, flow=FlowHead, edm=EDMHead)

#----------------------------------------------------------------------------
# What both networks share: tokens (patches), the class embedding with its learned null class,
# the head, the scoring of chosen tokens and the sampling options. Not persistent itself: the
# persistent networks below derive from it, and it travels in the same module source.

class TokenModel(torch.nn.Module):
    # calculate_metrics.py bpd: why bits/dim does not apply (docs/families.md).
    no_bpd_reason = ('its per-token head models continuous tokens by diffusion or flow, which gives no exact '
        'likelihood of the 8-bit pixels (at best a bound through its variational loss)')

    def __init__(self, img_resolution, img_channels, label_dim, patch_size, width, data_bound, mixed_precision):
        super().__init__()
        if img_resolution % patch_size != 0:
            raise ValueError(f'{type(self).__name__}: resolution {img_resolution} is not a multiple of patch_size {patch_size}')
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.patch_size = patch_size
        self.seq_len = (img_resolution // patch_size) ** 2
        self.token_dim = img_channels * patch_size ** 2
        self.data_bound = data_bound
        self.mixed_precision = mixed_precision

        # Class embedding; the learned null class stands for "no label" (guidance).
        self.class_emb = torch.nn.Parameter(torch.randn([label_dim, width]) * 0.02)
        self.null_emb = torch.nn.Parameter(torch.randn([width]) * 0.02)
        self.token_proj = torch.nn.Linear(self.token_dim, width)

    def init_linear_layers(self):
        """Xavier-uniform weights, zero biases (MAE); call before the head is made (it has its own)."""
        for module in self.modules():
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.xavier_uniform_(module.weight)
                torch.nn.init.zeros_(module.bias)

    def make_head(self, head, width, head_width, head_depth, head_kwargs):
        if head not in HEADS:
            raise ValueError(f'{type(self).__name__}: head must be one of {", ".join(HEADS)}, got {head!r}')
        self.head = HEADS[head](self.token_dim, width, width=head_width, depth=head_depth, **head_kwargs)

    def no_weight_decay(self):
        """The head is not decayed (the loop also skips biases and norm gains)."""
        return {f'head.{name}' for name, _ in self.head.named_parameters()}

    def autocast(self, x):
        """bfloat16 for the transformer on CUDA when mixed precision is on."""
        return torch.autocast('cuda', dtype=torch.bfloat16, enabled=(self.mixed_precision and x.device.type == 'cuda'))

    def patchify(self, x): # [N, C, R, R] -> [N, L, C*p*p]
        n, c, r, _ = x.shape
        p = self.patch_size
        x = x.reshape(n, c, r // p, p, r // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(n, self.seq_len, self.token_dim)

    def unpatchify(self, tokens): # [N, L, C*p*p] -> [N, C, R, R]
        n = tokens.shape[0]
        p = self.patch_size
        g = self.img_resolution // p
        x = tokens.reshape(n, g, g, self.img_channels, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(n, self.img_channels, self.img_resolution, self.img_resolution)

    def class_embedding(self, labels, batch_size):
        """One-hot labels [N, L] -> [N, width]; an all-zero row (or no labels) is the null class."""
        if labels is None or self.label_dim == 0:
            return self.null_emb.expand(batch_size, -1)
        labels = labels.to(self.class_emb.dtype)
        return labels @ self.class_emb + (1 - labels.sum(-1, keepdim=True)) * self.null_emb

    def masked_token_loss(self, tokens, z, mask, batch_mul=1):
        """Per-sample mean head loss over the tokens where `mask` is True, each scored `batch_mul`
        times with independent noise draws (its conditioning vector reused)."""
        n, _, d = tokens.shape
        target = tokens[mask].repeat(batch_mul, 1)
        cond = z[mask].repeat(batch_mul, 1)
        per_token = self.head.loss(target, cond).reshape(batch_mul, n, -1)
        return per_token.mean(dim=[0, 2])

    def guide(self, labels, gnet, guidance_schedule, unknown):
        """Checks the sampling options; the guiding network and its labels: `gnet` given the
        same labels, or this network's null class."""
        if unknown:
            raise ValueError(f'{type(self).__name__} sampling does not understand {", ".join(sorted(unknown))}; '
                f'its options are {", ".join(self.sampler_options)}')
        if guidance_schedule not in ['constant', 'linear']:
            raise ValueError(f'{type(self).__name__}: guidance_schedule must be "constant" or "linear", got {guidance_schedule!r}')
        if gnet is not None and getattr(gnet, 'order', 'random') != self.order:
            raise ValueError(f'the guiding network must generate in the same order ({self.order}), '
                f'got a {type(gnet).__name__} ({getattr(gnet, "order", "random")})')
        return (gnet, labels) if gnet is not None else (self, None)

    @staticmethod
    def guidance_weight(guidance, schedule, revealed, total):
        """Constant, or rising linearly from 1 to `guidance` with the share of tokens revealed."""
        return guidance if schedule == 'constant' else 1 + (guidance - 1) * revealed / total

#----------------------------------------------------------------------------
# The masked network: MAE encoder over the known tokens and the buffer tokens, MAE decoder over
# all positions (unknown ones as a learned mask token), one conditioning vector per token.

@persistence.persistent_class
class MAR(TokenModel):
    order = 'random'
    sampler_options = ['steps', 'temperature', 'guidance_schedule', 'head_steps']

    def __init__(self,
        img_resolution,                 # Net-space resolution (pixels, or latents).
        img_channels,                   # Net-space channels.
        label_dim       = 0,            # Number of classes, 0 = unconditional.
        patch_size      = 1,            # Tokens are patch_size x patch_size patches.
        width           = 768,          # Encoder and decoder width.
        encoder_depth   = 12,           # Encoder blocks.
        decoder_depth   = 12,           # Decoder blocks.
        num_heads       = 12,           # Attention heads.
        mlp_ratio       = 4,            # Hidden width of the transformer MLPs relative to `width`.
        buffer_tokens   = 64,           # Extra tokens at the start of the sequence, carrying the class.
        dropout         = 0.1,          # Attention and projection dropout.
        head            = 'diffusion',  # Per-token head: 'diffusion' (DiffLoss), 'flow' or 'edm'.
        head_width      = 1024,         # Head MLP width.
        head_depth      = 3,            # Head residual blocks.
        head_kwargs     = {},           # Further arguments of the head class.
        data_bound      = None,         # Clip predicted clean tokens to [-bound, bound] (pixels: 1); None = unbounded.
        sample_steps    = 64,           # Default number of generation steps K.
        mixed_precision = True,         # bfloat16 transformer on CUDA (CPU always runs float32).
    ):
        super().__init__(img_resolution, img_channels, label_dim, patch_size, width, data_bound, mixed_precision)
        self.buffer_tokens = buffer_tokens
        self.sample_steps = sample_steps
        self.token_norm = torch.nn.LayerNorm(width, eps=1e-6)
        self.encoder_pos = torch.nn.Parameter(torch.randn([buffer_tokens + self.seq_len, width]) * 0.02)
        self.encoder = torch.nn.ModuleList([Block(width, num_heads, mlp_ratio, dropout) for _ in range(encoder_depth)])
        self.encoder_norm = torch.nn.LayerNorm(width, eps=1e-6)
        self.mask_token = torch.nn.Parameter(torch.randn([width]) * 0.02)
        self.decoder_pos = torch.nn.Parameter(torch.randn([buffer_tokens + self.seq_len, width]) * 0.02)
        self.decoder = torch.nn.ModuleList([Block(width, num_heads, mlp_ratio, dropout) for _ in range(decoder_depth)])
        self.decoder_norm = torch.nn.LayerNorm(width, eps=1e-6)
        self.head_pos = torch.nn.Parameter(torch.randn([self.seq_len, width]) * 0.02)
        self.init_linear_layers()
        self.make_head(head, width, head_width, head_depth, head_kwargs)

    def transformer(self, tokens, labels, mask):
        """Conditioning vectors [N, L, width] for every position, given the tokens [N, L, D] and the
        mask [N, L] (True = unknown). Unknown tokens never enter the encoder, so their values cannot
        leak. Every row must have the same number of unknown tokens."""
        n = tokens.shape[0]
        keep = torch.cat([torch.ones([n, self.buffer_tokens], dtype=torch.bool, device=mask.device), ~mask], dim=1)
        num_keep = int(keep[0].sum())
        x = self.token_proj(tokens)
        buffer = self.class_embedding(labels, n).unsqueeze(1).expand(-1, self.buffer_tokens, -1)
        x = self.token_norm(torch.cat([buffer, x], dim=1) + self.encoder_pos)
        x = x[keep].reshape(n, num_keep, -1)
        with self.autocast(x):
            for block in self.encoder:
                x = block(x)
            x = self.encoder_norm(x)
            y = self.mask_token.to(x.dtype).expand(n, keep.shape[1], -1).clone()
            y[keep] = x.reshape(n * num_keep, -1)
            y = y + self.decoder_pos
            for block in self.decoder:
                y = block(y)
            y = self.decoder_norm(y)
        return y[:, self.buffer_tokens:].to(torch.float32) + self.head_pos

    def forward(self, images, labels, mask, batch_mul=4):
        tokens = self.patchify(images)
        z = self.transformer(tokens, labels, mask)
        return self.masked_token_loss(tokens, z, mask, batch_mul)

    @torch.no_grad()
    def sample(self, noise, labels, rnd, gnet=None, guidance=1.0,
        steps               = None,         # Generation steps K (default: self.sample_steps).
        temperature         = 1.0,          # Scales the head's sampling noise.
        guidance_schedule   = 'constant',   # 'constant', or 'linear' from 1 up to `guidance` as tokens are revealed.
        head_steps          = None,         # Head sampling steps (default: the head's own).
        **unknown,
    ):
        """Images [N, C, R, R] in net space. Guidance extrapolates the head's prediction away from
        the null class (gnet=None) or from the guiding network `gnet` given the same labels."""
        guide_net, guide_labels = self.guide(labels, gnet, guidance_schedule, unknown)
        n, device = noise.shape[0], noise.device
        counts = unmasking_schedule(self.seq_len, steps or self.sample_steps)

        orders = rnd.rand([n, self.seq_len], device=device).argsort(dim=1)
        tokens = torch.zeros([n, self.seq_len, self.token_dim], device=device)
        mask = torch.ones([n, self.seq_len], dtype=torch.bool, device=device)
        revealed = 0
        for count in counts:
            idx = orders[:, revealed : revealed + count]
            revealed += count
            pick = lambda z: z.gather(1, idx.unsqueeze(-1).expand(-1, -1, z.shape[-1]))
            z = pick(self.transformer(tokens, labels, mask))
            guide_z = None
            if guidance != 1:
                guide_z = pick(guide_net.transformer(tokens, guide_labels, mask))
            w = self.guidance_weight(guidance, guidance_schedule, revealed, self.seq_len)
            new = self.head.sample(z, rnd, temperature=temperature, guidance=w, guide_z=guide_z,
                guide_head=guide_net.head, bound=self.data_bound, steps=head_steps)
            tokens = tokens.scatter(1, idx.unsqueeze(-1).expand(-1, -1, self.token_dim), new)
            mask = mask.scatter(1, idx, False)
        return self.unpatchify(tokens)

#----------------------------------------------------------------------------
# The causal network: a decoder-only transformer over [start token, token 0, ..., token L-2] in
# raster order with a causal mask; its output at position i conditions the head for token i, so
# it sees the class and tokens 0..i-1 only. Generation feeds one position per step and keeps every
# block's keys and values (the cache), so token i costs one position's pass, not i of them.

@persistence.persistent_class
class CausalAR(TokenModel):
    order = 'raster'
    sampler_options = ['steps', 'temperature', 'guidance_schedule', 'head_steps', 'use_cache']

    def __init__(self,
        img_resolution,                 # Net-space resolution (pixels, or latents).
        img_channels,                   # Net-space channels.
        label_dim       = 0,            # Number of classes, 0 = unconditional.
        patch_size      = 1,            # Tokens are patch_size x patch_size patches.
        width           = 768,          # Transformer width.
        depth           = 24,           # Transformer blocks.
        num_heads       = 12,           # Attention heads.
        mlp_ratio       = 4,            # Hidden width of the transformer MLPs relative to `width`.
        dropout         = 0.1,          # Attention and projection dropout.
        head            = 'diffusion',  # Per-token head: 'diffusion' (DiffLoss), 'flow' or 'edm'.
        head_width      = 1024,         # Head MLP width.
        head_depth      = 3,            # Head residual blocks.
        head_kwargs     = {},           # Further arguments of the head class.
        data_bound      = None,         # Clip predicted clean tokens to [-bound, bound] (pixels: 1); None = unbounded.
        mixed_precision = True,         # bfloat16 transformer on CUDA (CPU always runs float32).
    ):
        super().__init__(img_resolution, img_channels, label_dim, patch_size, width, data_bound, mixed_precision)
        self.pos = torch.nn.Parameter(torch.randn([self.seq_len, width]) * 0.02)
        self.input_norm = torch.nn.LayerNorm(width, eps=1e-6)
        self.blocks = torch.nn.ModuleList([Block(width, num_heads, mlp_ratio, dropout) for _ in range(depth)])
        self.out_norm = torch.nn.LayerNorm(width, eps=1e-6)
        self.init_linear_layers()
        self.make_head(head, width, head_width, head_depth, head_kwargs)

    def inputs(self, tokens, labels, start, stop):
        """The transformer's inputs at positions start..stop-1 [N, stop-start, width]: the start
        token (the class embedding) at position 0, token i-1 at position i."""
        n = tokens.shape[0]
        parts = [self.class_embedding(labels, n).unsqueeze(1)] if start == 0 else []
        if stop > max(start, 1):
            parts.append(self.token_proj(tokens[:, max(start, 1) - 1 : stop - 1]))
        return self.input_norm(torch.cat(parts, dim=1) + self.pos[start:stop])

    def run_blocks(self, x, caches=None):
        with self.autocast(x):
            for i, block in enumerate(self.blocks):
                x = block(x, causal=True, cache=None if caches is None else caches[i])
            x = self.out_norm(x)
        return x.to(torch.float32)

    def transformer(self, tokens, labels):
        """Conditioning vectors [N, L, width] for every position in one causal pass: position i
        depends on the class and tokens[:, :i] only."""
        return self.run_blocks(self.inputs(tokens, labels, 0, self.seq_len))

    def next_condition(self, tokens, labels, i, caches=None):
        """The conditioning vector [N, 1, width] of token i given tokens[:, :i]: one position
        through the blocks with `caches` (one dict per block, holding positions 0..i-1), or
        without them a full causal pass."""
        if caches is None:
            return self.transformer(tokens, labels)[:, i : i + 1]
        return self.run_blocks(self.inputs(tokens, labels, i, i + 1), caches)

    def new_caches(self):
        return [dict() for _ in self.blocks]

    def forward(self, images, labels, mask=None, batch_mul=4):
        """Teacher forcing: the per-sample head loss over every token (or those where `mask` is True)."""
        tokens = self.patchify(images)
        z = self.transformer(tokens, labels)
        if mask is None:
            mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return self.masked_token_loss(tokens, z, mask, batch_mul)

    @torch.no_grad()
    def sample(self, noise, labels, rnd, gnet=None, guidance=1.0,
        steps               = None,         # Must be the number of tokens L if given (one token per step).
        temperature         = 1.0,          # Scales the head's sampling noise.
        guidance_schedule   = 'constant',   # 'constant', or 'linear' from 1 up to `guidance` as tokens are revealed.
        head_steps          = None,         # Head sampling steps (default: the head's own).
        use_cache           = True,         # Key/value cache (False: a full causal pass per token; same images).
        **unknown,
    ):
        """Images [N, C, R, R] in net space, token by token in raster order. Guidance extrapolates
        the head's prediction away from the null class (gnet=None) or from the causal guiding
        network `gnet` given the same labels; the guide keeps its own cache."""
        guide_net, guide_labels = self.guide(labels, gnet, guidance_schedule, unknown)
        if steps is not None and steps != self.seq_len:
            raise ValueError(f'raster order generates one token per step: steps must be the number of tokens '
                f'({self.seq_len}), got {steps}')
        tokens = torch.zeros([noise.shape[0], self.seq_len, self.token_dim], device=noise.device)
        caches = self.new_caches() if use_cache else None
        guide_caches = guide_net.new_caches() if use_cache else None
        for i in range(self.seq_len):
            z = self.next_condition(tokens, labels, i, caches)
            guide_z = None
            if guidance != 1:
                guide_z = guide_net.next_condition(tokens, guide_labels, i, guide_caches)
            w = self.guidance_weight(guidance, guidance_schedule, i + 1, self.seq_len)
            new = self.head.sample(z, rnd, temperature=temperature, guidance=w, guide_z=guide_z,
                guide_head=guide_net.head, bound=self.data_bound, steps=head_steps)
            tokens[:, i] = new[:, 0]
        return self.unpatchify(tokens)

#----------------------------------------------------------------------------
# Loss: label dropout to the null class, a random order per sample, a mask ratio per batch from
# a normal (mean 1, std 0.25) truncated to [mask_ratio_min, 1]; the loss counts masked tokens only.
# A raster-order (causal) network is trained by teacher forcing on every token: no mask.

@persistence.persistent_class
class MARLoss:
    def __init__(self,
        label_dropout   = 0.1,  # Probability of training a sample on the null class.
        mask_ratio_min  = 0.7,  # Lower end of the truncated normal mask ratio.
        mask_ratio_std  = 0.25, # Its standard deviation (mean 1).
        batch_mul       = 4,    # Noise draws per masked token (diffusion_batch_mul).
    ):
        if not 0 <= label_dropout < 1 or not 0 <= mask_ratio_min <= 1:
            raise ValueError(f'MAR: label_dropout must be in [0, 1) and mask_ratio_min in [0, 1], got {label_dropout} and {mask_ratio_min}')
        self.label_dropout = label_dropout
        self.mask_ratio_min = mask_ratio_min
        self.mask_ratio_std = mask_ratio_std
        self.batch_mul = batch_mul

    def draw_mask(self, batch_size, seq_len, device):
        """[N, L] bool, True = masked; the same count in every row (the encoder drops them)."""
        import scipy.stats # pylint: disable=import-outside-toplevel # Here: every script imports this module, few train MAR.
        u = float(torch.rand([]))
        lo = (self.mask_ratio_min - 1) / self.mask_ratio_std
        ratio = 1 + self.mask_ratio_std * scipy.stats.truncnorm.ppf(u, lo, 0)
        num_masked = min(max(int(np.ceil(seq_len * ratio)), 1), seq_len)
        orders = torch.rand([batch_size, seq_len], device=device).argsort(dim=1)
        return orders.argsort(dim=1) < num_masked

    def __call__(self, net, images, labels=None):
        module = getattr(net, 'module', net)
        if labels is not None and self.label_dropout:
            keep = torch.rand([labels.shape[0], 1], device=labels.device) >= self.label_dropout
            labels = labels * keep.to(labels.dtype)
        mask = None
        if getattr(module, 'order', 'random') == 'random':
            mask = self.draw_mask(images.shape[0], module.seq_len, images.device)
        return net(images, labels, mask=mask, batch_mul=self.batch_mul)

    @property
    def has_unconditional_branch(self): # docs/families.md: the null class was trained.
        return self.label_dropout > 0

#----------------------------------------------------------------------------
# The family's preset options (training/presets.py; COMMON_OPTIONS there apply too, some with
# other defaults here) and the training-loop arguments they give. The paper's recipe: AdamW
# (0.9, 0.95), weight decay 0.02 (not on biases, norms and the head), lr 1e-4 per 256 images
# (8e-4 at batch 2048), 100 epochs of warm-up then constant, gradient clip 3.0, EMA 0.9999.
# `order` picks the network: 'random' the masked MAR, 'raster' the causal CausalAR (same loss,
# same heads, same recipe).

FAMILY = 'mar'

OPTIONS = dict(
    order               = 'random',     # 'random': masked, bidirectional (MAR); 'raster': causal, token by token (CausalAR).
    patch_size          = 2,            # Tokens are patch_size x patch_size patches of the net-space image.
    width               = 768,          # Transformer width (encoder and decoder).
    encoder_depth       = 12,           # Encoder blocks (random order).
    decoder_depth       = 12,           # Decoder blocks (random order).
    depth               = 24,           # Transformer blocks (raster order).
    num_heads           = 12,           # Attention heads.
    buffer_tokens       = 64,           # Buffer tokens carrying the class embedding (random order).
    dropout             = 0.1,          # Attention and projection dropout.
    head                = 'diffusion',  # Per-token head: 'diffusion' (DiffLoss), 'flow' or 'edm'.
    head_width          = 1024,         # Head MLP width.
    head_depth          = 6,            # Head residual blocks.
    head_sample_steps   = 0,            # Head sampling steps (0 = the head's default: 100 diffusion, 50 flow, 32 edm).
    flow_prediction     = 'v',          # Flow head: predict the velocity 'v' or the clean token 'x'.
    flow_solver         = 'heun',       # Flow head: 'heun' or 'euler'.
    edm_sigma_data      = 0.5,          # EDM head: standard deviation of the tokens.
    edm_P_mean          = -1.2,         # EDM head: training noise ln(sigma) ~ normal(P_mean, P_std).
    edm_P_std           = 1.2,
    edm_solver          = 'heun',       # EDM head: 'heun' or 'euler'.
    data_bound          = 0.0,          # Clip predicted clean tokens to [-bound, bound]: 1.0 for pixels, 0 = off (latents).
    sample_steps        = 64,           # Default generation steps K.
    label_dropout       = 0.1,          # Label dropout to the null class (guidance).
    mask_ratio_min      = 0.7,          # Mask ratio ~ normal(1, 0.25) truncated to [mask_ratio_min, 1].
    batch_mul           = 4,            # Head noise draws per masked token (diffusion_batch_mul).
    mixed_precision     = True,         # bfloat16 transformer on CUDA.
    lr                  = 8e-4,         # AdamW learning rate after warm-up.
    betas               = [0.9, 0.95],  # AdamW betas.
    weight_decay        = 0.02,         # AdamW weight decay.
    rampup              = 128.1,        # Learning rate warm-up (millions of images; 100 ImageNet epochs).
    grad_clip           = 3.0,          # Gradient norm clipping.
    ema_beta            = 0.9999,       # EMA decay per step.
    ema_halflife        = 0.0,          # EMA half-life in kimg instead of ema_beta (0 = use ema_beta).
    vae                 = 'stabilityai/sd-vae-ft-mse', # VAE for latent datasets (hub name or local folder).
)

def loop_kwargs(o):
    """Network, loss, encoder (None: chosen from the dataset), optimizer, learning rate and EMA
    arguments of training_loop() for resolved options `o` (attribute access)."""
    head_kwargs = dict(
        diffusion   = dict(),
        flow        = dict(prediction=o.flow_prediction, solver=o.flow_solver),
        edm         = dict(sigma_data=o.edm_sigma_data, P_mean=o.edm_P_mean, P_std=o.edm_P_std, solver=o.edm_solver),
    ).get(o.head, dict())
    if o.head_sample_steps:
        head_kwargs['sample_steps'] = o.head_sample_steps
    network_kwargs = dict(patch_size=o.patch_size, width=o.width, num_heads=o.num_heads, dropout=o.dropout, head=o.head,
        head_width=o.head_width, head_depth=o.head_depth, head_kwargs=head_kwargs, data_bound=o.data_bound or None,
        mixed_precision=o.mixed_precision)
    if o.order == 'random':
        network_kwargs.update(class_name='training.networks_mar.MAR', encoder_depth=o.encoder_depth,
            decoder_depth=o.decoder_depth, buffer_tokens=o.buffer_tokens, sample_steps=o.sample_steps)
    elif o.order == 'raster':
        network_kwargs.update(class_name='training.networks_mar.CausalAR', depth=o.depth)
    else:
        raise ValueError(f'option "order" must be "random" (masked MAR) or "raster" (causal), got {o.order!r}')
    return dict(
        encoder_kwargs      = None,
        network_kwargs      = network_kwargs,
        loss_kwargs         = dict(class_name='training.networks_mar.MARLoss', label_dropout=o.label_dropout,
                                mask_ratio_min=o.mask_ratio_min, batch_mul=o.batch_mul),
        optimizer_kwargs    = dict(class_name='torch.optim.AdamW', betas=o.betas, weight_decay=o.weight_decay),
        lr_kwargs           = dict(func_name='training.training_loop.constant_lr', ref_lr=o.lr, rampup_Mimg=o.rampup),
        ema_kwargs          = dict(class_name='training.phema.TraditionalEMA', beta=o.ema_beta, halflife_kimg=o.ema_halflife),
    )

#----------------------------------------------------------------------------
