"""Sampling: per-seed random generators, the EDM sampler family and the one dispatcher.

All samplers integrate the probability-flow ODE (or its stochastic variant) of a denoiser
`D(x, sigma, labels)` over the Karras et al. (2022) noise levels, from `noise * sigma_max` down to
sigma = 0. Randomness during sampling (stochastic churn) comes from the per-seed generators only,
so that a seed gives the same image whatever the batch size or the number of processes.
"""

import numpy as np
import torch

#----------------------------------------------------------------------------
# One torch.Generator per seed: draws for a batch are the stack of each seed's own draws.
# The same interface as the official EDM2 class (randn/randint with the batch size first), and
# bit for bit the same numbers: that is what makes a seed give the official code's image.

class StackedRandomGenerator:
    def __init__(self, device, seeds):
        super().__init__()
        self.generators = [torch.Generator(device).manual_seed(int(seed) % (1 << 32)) for seed in seeds]

    def _stack(self, fn, size, *args, **kwargs):
        size = list(size)
        assert size[0] == len(self.generators), f'size[0] = {size[0]} but there are {len(self.generators)} seeds'
        return torch.stack([fn(*args, size=size[1:], generator=gen, **kwargs) for gen in self.generators])

    def randn(self, size, **kwargs):
        return self._stack(torch.randn, size, **kwargs)

    def randn_like(self, input):
        return self.randn(input.shape, dtype=input.dtype, layout=input.layout, device=input.device)

    def rand(self, size, **kwargs):
        return self._stack(torch.rand, size, **kwargs)

    def rand_like(self, input):
        return self.rand(input.shape, dtype=input.dtype, layout=input.layout, device=input.device)

    def randint(self, *args, size, **kwargs):
        return self._stack(torch.randint, size, *args, **kwargs)

#----------------------------------------------------------------------------
# Noise levels sigma_0 = sigma_max > ... > sigma_{N-1} = sigma_min, then sigma_N = 0, spaced
# uniformly in sigma^(1/rho) (Karras et al. 2022, eq. 5). The arithmetic is the official one, so
# that the steps, and the images, match the official sampler's bit for bit.

def karras_sigmas(num_steps=32, sigma_min=0.002, sigma_max=80, rho=7, dtype=torch.float32, device=None):
    if num_steps < 1:
        raise ValueError(f'num_steps must be at least 1, got {num_steps}')
    step_indices = torch.arange(num_steps, dtype=dtype, device=device)
    if num_steps == 1:
        t_steps = torch.full([1], sigma_max, dtype=dtype, device=device)
    else:
        t_steps = (sigma_max ** (1 / rho) + step_indices / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([t_steps, torch.zeros_like(t_steps[:1])]) # t_N = 0

#----------------------------------------------------------------------------
# The guided denoiser D = D_g + w (D - D_g). The guide is `gnet` given the same labels
# (autoguidance, or classic CFG with a separate unconditional network) or, without gnet, the
# same network given all-zero labels (its unconditional branch: the caller checks it has one).
# Guidance 1 skips the second evaluation.

def guided_denoiser(net, labels=None, gnet=None, guidance=1.0, dtype=torch.float32):
    if guidance != 1 and gnet is None:
        if labels is None:
            raise ValueError('guidance != 1 needs a guiding network (gnet) or class labels whose all-zero '
                'row selects the unconditional branch; this network is unconditional')
        gnet, guide_labels = net, torch.zeros_like(labels)
    else:
        guide_labels = labels

    def denoise(x, t):
        Dx = net(x, t, labels).to(dtype)
        if guidance == 1:
            return Dx
        ref_Dx = gnet(x, t, guide_labels).to(dtype)
        return ref_Dx.lerp(Dx, guidance)
    return denoise

#----------------------------------------------------------------------------
# The EDM sampler and its variants.
#   'euler':    first-order steps of the probability-flow ODE; num_steps evaluations.
#   'heun':     Heun's second-order method with an Euler last step (Karras et al. 2022, Alg. 2);
#               2 * num_steps - 1 evaluations. With the default arguments this is exactly the
#               official EDM2 edm_sampler. S_churn > 0 adds churn on the steps with
#               S_min <= sigma <= S_max, as there.
#   'heun_sde': 'heun' with churn on every step: gamma = min(S_churn / num_steps, sqrt(2) - 1)
#               whatever S_min/S_max; S_churn = 0 (the default) means the maximum gamma sqrt(2) - 1,
#               i.e. each step first raises the noise level by the factor sqrt(2) (variance doubled).
#   'dpm++':    DPM-Solver++(2M) (Lu et al. 2022), multistep second order in the data-prediction
#               form over the same Karras sigmas, first order on the first and the last step;
#               num_steps evaluations; deterministic (no churn).
# Evaluations per image are doubled by guidance != 1.

SOLVERS = ['euler', 'heun', 'heun_sde', 'dpm++']

def check_edm_options(sigma_min=0.002, sigma_max=80, rho=7, S_churn=0, S_min=0, S_max=float('inf'), S_noise=1, **_other):
    """The numbers of edm_sampler's options (its defaults for those not given): finite (S_max may be
    inf), and noise levels that go down. Options of other samplers pass (they check their own)."""
    values = dict(sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, S_churn=S_churn, S_min=S_min, S_noise=S_noise)
    for name, value in values.items():
        if not np.isfinite(value):
            raise ValueError(f'--{name} {value}: must be a finite number')
    if np.isnan(S_max) or S_max < S_min:
        raise ValueError(f'--S_max {S_max}: must be at least --S_min {S_min}')
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f'--sigma_min {sigma_min} and --sigma_max {sigma_max}: need 0 < sigma_min < sigma_max')

def edm_sampler(net, noise, labels=None, gnet=None, guidance=1.0, solver='heun',
    num_steps=32, sigma_min=0.002, sigma_max=80, rho=7,
    S_churn=0, S_min=0, S_max=float('inf'), S_noise=1,
    rnd=None, dtype=torch.float32,
):
    if solver not in SOLVERS:
        raise ValueError(f'unknown solver "{solver}"; choose from {", ".join(SOLVERS)}')
    check_edm_options(sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, S_churn=S_churn, S_min=S_min, S_max=S_max, S_noise=S_noise)
    if solver == 'dpm++' and S_churn > 0:
        raise ValueError('the dpm++ solver is deterministic: S_churn must be 0 (use heun or heun_sde for churn)')
    denoise = guided_denoiser(net, labels=labels, gnet=gnet, guidance=guidance, dtype=dtype)
    t_steps = karras_sigmas(num_steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, dtype=dtype, device=noise.device)
    randn_like = rnd.randn_like if rnd is not None else torch.randn_like

    x_next = noise.to(dtype) * t_steps[0]
    if solver == 'dpm++':
        return _dpmpp_2m(denoise, x_next, t_steps)

    if solver == 'heun_sde':
        gamma_all = min(S_churn / num_steps, np.sqrt(2) - 1) if S_churn > 0 else np.sqrt(2) - 1
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])): # 0, ..., N-1
        x_cur = x_next

        # Churn: raise the noise level from t_cur to t_hat with fresh noise.
        if solver == 'heun_sde':
            gamma = gamma_all
        elif S_churn > 0 and S_min <= t_cur <= S_max:
            gamma = min(S_churn / num_steps, np.sqrt(2) - 1)
        else:
            gamma = 0
        if gamma > 0:
            t_hat = t_cur + gamma * t_cur
            x_hat = x_cur + (t_hat ** 2 - t_cur ** 2).sqrt() * S_noise * randn_like(x_cur)
        else:
            t_hat = t_cur
            x_hat = x_cur

        # First-order step to t_next along the ODE's direction at (x_hat, t_hat).
        d_cur = (x_hat - denoise(x_hat, t_hat)) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur

        # Heun: average the directions at both ends (not on the last step, which lands on 0).
        if solver != 'euler' and i < num_steps - 1:
            d_prime = (x_next - denoise(x_next, t_next)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)

    return x_next

def _dpmpp_2m(denoise, x, t_steps):
    """DPM-Solver++(2M) in lambda = -log(sigma): x_{i+1} = (s_{i+1}/s_i) x_i - expm1(-h) D_i', where D_i'
    extrapolates the denoised estimates of the last two steps linearly in lambda (Lu et al. 2022, Alg. 2)."""
    old_denoised, h_last = None, None
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        denoised = denoise(x, t_cur)
        if t_next == 0: # Last step: first order, lands on the denoised estimate.
            x = denoised
            break
        h = t_cur.log() - t_next.log()
        if old_denoised is None:
            d = denoised
        else:
            r = h_last / h
            d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (t_next / t_cur) * x - torch.expm1(-h) * d
        old_denoised, h_last = denoised, h
    return x

#----------------------------------------------------------------------------
# The single entry point for every model family (docs/families.md): a network that defines
# `sample` samples itself; EDM2 networks (official ones included) go through edm_sampler.

def sample(net, noise, labels, rnd, gnet=None, guidance=1.0, **kwargs):
    """`kwargs`: the sampler's options; the family-neutral `steps` means num_steps here."""
    if callable(getattr(net, 'sample', None)):
        return net.sample(noise, labels, rnd, gnet=gnet, guidance=guidance, **kwargs)
    if 'steps' in kwargs:
        kwargs['num_steps'] = kwargs.pop('steps')
    return edm_sampler(net, noise, labels, gnet=gnet, guidance=guidance, rnd=rnd, **kwargs)

def evaluations_per_image(solver='heun', num_steps=32, guidance=1.0):
    """Network evaluations per image of edm_sampler (counting the guide's)."""
    n = 2 * num_steps - 1 if solver in ['heun', 'heun_sde'] else num_steps
    return n if guidance == 1 else 2 * n

#----------------------------------------------------------------------------
