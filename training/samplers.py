"""Sampling: per-seed random generators, the EDM sampler family and the one dispatcher.

All samplers integrate the probability-flow ODE (or its stochastic variant) of a denoiser
`D(x, sigma, labels)` over the Karras et al. (2022) noise levels, from `noise * sigma_max` down to
sigma = 0. Randomness during sampling (stochastic churn) comes from the per-seed generators only,
so that a seed gives the same image whatever the batch size or the number of processes.
"""

import inspect

import numpy as np
import torch

from torch_utils import util

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
    # num_steps >= 1: edm_sampler's check_edm_values() checks it.
    step_indices = torch.arange(num_steps, dtype=dtype, device=device)
    if num_steps == 1:
        t_steps = torch.full([1], sigma_max, dtype=dtype, device=device)
    else:
        t_steps = (sigma_max ** (1 / rho) + step_indices / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([t_steps, torch.zeros_like(t_steps[:1])]) # t_N = 0

#----------------------------------------------------------------------------
# The guided denoiser D = D_g + w (D - D_g). The guide is `gnet` given the same labels
# (autoguidance, or classic CFG with a separate unconditional network) or, without gnet, the
# same network given all-zero labels (its unconditional branch: training/generate.py's
# check_guidance() makes sure it has one). Guidance 1 skips the second evaluation.

def guided_denoiser(net, labels=None, gnet=None, guidance=1.0, dtype=torch.float32):
    if guidance != 1 and gnet is None:
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

def check_edm_values(solver, num_steps, sigma_min, sigma_max, rho, S_churn, S_min, S_max, S_noise):
    """The values of edm_sampler's options, checked here only: a known solver, at least one step,
    finite numbers (S_max may be inf), positive noise levels that go down, no negative churn, no
    churn for the deterministic dpm++."""
    if solver not in SOLVERS:
        raise ValueError(f'sampling option solver={solver}: unknown solver; choose from {", ".join(SOLVERS)}')
    if num_steps < 1:
        raise ValueError(f'sampling option steps={num_steps}: must be at least 1')
    values = dict(sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, S_churn=S_churn, S_min=S_min, S_noise=S_noise)
    for name, value in values.items():
        if not np.isfinite(value):
            raise ValueError(f'sampling option {name}={value}: must be a finite number')
    if not (rho > 0 and S_churn >= 0 and S_min >= 0):
        raise ValueError(f'sampling options rho={rho}, S_churn={S_churn}, S_min={S_min}: rho must be positive, S_churn and S_min at least 0')
    if np.isnan(S_max) or S_max < S_min:
        raise ValueError(f'sampling option S_max={S_max}: must be at least S_min={S_min}')
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f'sampling options sigma_min={sigma_min}, sigma_max={sigma_max}: need 0 < sigma_min < sigma_max')
    if solver == 'dpm++' and S_churn > 0:
        raise ValueError('the dpm++ solver is deterministic: S_churn must be 0 (use heun or heun_sde for churn)')

def edm_sampler(net, noise, labels=None, gnet=None, guidance=1.0, solver='heun',
    num_steps=32, sigma_min=0.002, sigma_max=80, rho=7,
    S_churn=0, S_min=0, S_max=float('inf'), S_noise=1,
    rnd=None, dtype=torch.float32,
):
    check_edm_values(solver=solver, num_steps=num_steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, S_churn=S_churn,
        S_min=S_min, S_max=S_max, S_noise=S_noise)
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

# The options of edm_sampler that the generators reach (their flags, or --opt KEY=VALUE), with
# their types; the family-neutral `steps` is num_steps. A family with a sampler of its own
# declares its options as the network's `sampler_options` (docs/families.md).
EDM_OPTIONS = dict(solver=str, steps=int, sigma_min=float, sigma_max=float, rho=float, S_churn=float, S_min=float,
    S_max=float, S_noise=float)

# What the generators set with options of their own, never a sampler's option.
_GENERATOR_OPTIONS = dict(net='--net', gnet='--gnet', guidance='--guidance', preset='--preset', class_spec='--class',
    **{'class': '--class'}, seeds='--seeds', outdir='--outdir')

def parse_options(texts, given=None):
    """--opt KEY=VALUE texts, with the values of the generator's own sampler flags (`given`;
    None = not given) -> {name: value}, the values Python literals or bare words (strings)."""
    options = {key: value for key, value in (given or {}).items() if value is not None}
    for text in texts:
        key, value = util.parse_assignment(text, '--opt')
        if key in _GENERATOR_OPTIONS:
            raise ValueError(f'--opt {text}: {key} is not a sampling option; use {_GENERATOR_OPTIONS[key]}')
        if key in options and options[key] != value:
            raise ValueError(f'--opt {text}: the sampling option {key} is given twice, with different values')
        options[key] = value
    return options

def check_options(net, options):
    """Sampling options checked against those `net`'s family declares: names and types (the
    sampler checks the values), ints made floats where a float is declared. ValueError naming
    the family's options otherwise. Networks written before families declared their options
    (no `sampler_options`, or only their names) check the rest themselves."""
    declared = getattr(net, 'sampler_options', None) if callable(getattr(net, 'sample', None)) else EDM_OPTIONS
    if declared is None:
        return dict(options)
    declared = declared if isinstance(declared, dict) else dict.fromkeys(declared)
    family = 'EDM2' if declared is EDM_OPTIONS else type(net).__name__
    known = ', '.join(f'{name} ({kind.__name__})' if kind else name for name, kind in declared.items())
    checked = {}
    for key, value in options.items():
        if key not in declared:
            raise ValueError(f'sampling option "{key}" does not apply to {family} networks; their options: {known}')
        try:
            checked[key] = value if declared[key] is None else util.check_type(value, declared[key], f'sampling option "{key}"')
        except ValueError as e:
            raise ValueError(f'{e} ({family} sampling options: {known})') from None
    return checked

def check_values(net, options):
    """The values of checked sampling options (check_options()), before anything is sampled: the
    EDM sampler's, with its defaults for those not given. A family's own sampler checks its values
    when it samples."""
    if callable(getattr(net, 'sample', None)):
        return
    defaults = {name: p.default for name, p in inspect.signature(edm_sampler).parameters.items() if p.default is not inspect.Parameter.empty}
    given = _edm_kwargs(options)
    check_edm_values(**{name: given.get(name, defaults[name]) for name in inspect.signature(check_edm_values).parameters})

def _edm_kwargs(options):
    """Sampling options as edm_sampler's arguments: the family-neutral `steps` is its num_steps."""
    return {('num_steps' if key == 'steps' else key): value for key, value in options.items()}

def sample(net, noise, labels, rnd, gnet=None, guidance=1.0, **kwargs):
    """`kwargs`: the sampler's options; the family-neutral `steps` means num_steps here. The
    generators reach it through generate.load(), which checks the options and the guidance
    preconditions once (an unconditional network has no branch to guide with)."""
    if callable(getattr(net, 'sample', None)):
        return net.sample(noise, labels, rnd, gnet=gnet, guidance=guidance, **kwargs)
    return edm_sampler(net, noise, labels, gnet=gnet, guidance=guidance, rnd=rnd, **_edm_kwargs(kwargs))

def evaluations_per_image(solver='heun', num_steps=32, guidance=1.0):
    """Network evaluations per image of edm_sampler (counting the guide's)."""
    n = 2 * num_steps - 1 if solver in ['heun', 'heun_sde'] else num_steps
    return n if guidance == 1 else 2 * n

#----------------------------------------------------------------------------
