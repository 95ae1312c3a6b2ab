"""Exponential moving averages of the network weights.

PowerFunctionEMA tracks the power-function EMA profiles of EDM2 ("Analyzing and Improving the
Training Dynamics of Diffusion Models", Karras et al. 2024, Section 3): at training time t (in
images) the averaged weights are the integral of the weights theta(tau) against the profile
p_t(tau) = (gamma + 1) tau^gamma / t^(gamma + 1) on [0, t]. A profile is named by its relative
standard deviation `std` (the width of p_t relative to t), which is independent of t. Snapshots
saved with two or more profiles let `solve_posthoc_coefficients` reconstruct any other profile
after training (reconstruct_phema.py).

TraditionalEMA is the classic per-step decay (beta, or a half-life in kimg), used by the ARDM and
MAR presets as in their papers.

Both keep buffers (e.g. running statistics a sampler needs) equal to the training network's, and
both have `get()` -> [(net, file-name suffix)], `update(cur_nimg, batch_size)`, and a
`state_dict()` of tensors, lists and floats only (loads with torch.load(weights_only=True)).
"""

import copy

import numpy as np
import torch

#----------------------------------------------------------------------------
# Relative standard deviation <-> exponent gamma of a power-function profile.

def exp_to_std(exp):
    """Relative standard deviation of the profile p(tau) ~ tau^exp on [0, 1]."""
    exp = np.float64(exp)
    return np.sqrt((exp + 1) / ((exp + 2) ** 2 * (exp + 3)))

def std_to_exp(std):
    """Exponent gamma whose profile has the given relative std(s), std in (0, sqrt(1/12)); a float
    for a scalar, else an array of the same shape. The largest real root of
    gamma^3 + 7 gamma^2 + (16 - t) gamma + (12 - t) = 0 with t = std^-2 (the relation above times
    t), computed as the official code computes it, so that post-hoc coefficients agree bit for bit."""
    std = np.float64(std)
    if not np.all((0 < std) & (std < np.sqrt(1 / 12))):
        raise ValueError(f'EMA std must be in (0, {np.sqrt(1 / 12):.4f}), got {std}')
    t = std.flatten() ** -2
    exp = np.float64([np.roots([1, 7, 16 - ti, 12 - ti]).real.max() for ti in t]).reshape(std.shape)
    return float(exp) if exp.ndim == 0 else exp

def power_function_beta(std, t_next, t_delta):
    """Decay that moves a power-function average from time t_next - t_delta to t_next."""
    return (1 - t_delta / t_next) ** (std_to_exp(std) + 1)

#----------------------------------------------------------------------------
# Post-hoc reconstruction: least-squares fit of a target profile by saved ones.

def profile_inner_products(t_a, exp_a, t_b, exp_b):
    """<p_a, p_b> = integral of the two profiles' product, elementwise over broadcast arrays:
    (g_a + 1)(g_b + 1) / ((g_a + g_b + 1) max(t_a, t_b)) * (t_a / t_b)^(g_b if t_a < t_b else -g_a).
    The ratio is at most 1 when raised to a positive power and at least 1 otherwise, so nothing
    overflows; the order of the operations is the official one (bit-for-bit coefficients)."""
    t_a, exp_a, t_b, exp_b = [np.asarray(v, dtype=np.float64) for v in (t_a, exp_a, t_b, exp_b)]
    power = np.where(t_a < t_b, exp_b, -exp_a)
    numerator = (exp_a + 1) * (exp_b + 1) * (t_a / t_b) ** power
    return numerator / ((exp_a + exp_b + 1) * np.maximum(t_a, t_b))

def solve_posthoc_coefficients(in_t, in_std, out_t, out_std):
    """Weights [len(in), len(out)] such that sum_i w[i, j] * ema_i approximates the profile
    (out_t[j], out_std[j]) in the least-squares sense over tau in [0, max t], rescaled to sum 1
    for each output (each profile integrates to 1, so the combination must too; the official
    solver does the same: without it the sums drift, e.g. 0.73 at std 0.02). Times in images,
    as the official code counts them, for coefficients equal to its own bit for bit."""
    in_t, out_t = np.asarray(in_t, np.float64).ravel(), np.asarray(out_t, np.float64).ravel()
    in_exp, out_exp = std_to_exp(np.ravel(in_std)), std_to_exp(np.ravel(out_std))
    if len(in_t) != len(in_exp) or len(out_t) != len(out_exp):
        raise ValueError('solve_posthoc_coefficients: times and stds must have the same lengths')
    A = profile_inner_products(in_t[:, None], in_exp[:, None], in_t[None, :], in_exp[None, :])
    B = profile_inner_products(in_t[:, None], in_exp[:, None], out_t[None, :], out_exp[None, :])
    coefs = np.linalg.solve(A, B)
    return coefs / np.sum(coefs, axis=0)

#----------------------------------------------------------------------------
# Shared plumbing: a list of (averaged copy, parameter) pairs.

class _EMABase:
    def __init__(self, net, count):
        self.net = net
        self.emas = [copy.deepcopy(net).eval().requires_grad_(False) for _ in range(count)]

    def _betas(self, cur_nimg, batch_size): # One decay per averaged copy.
        raise NotImplementedError

    @torch.no_grad()
    def update(self, cur_nimg, batch_size):
        for beta, ema in zip(self._betas(cur_nimg, batch_size), self.emas):
            for p_net, p_ema in zip(self.net.parameters(), ema.parameters()):
                p_ema.lerp_(p_net.detach().to(p_ema.dtype), 1 - beta)
            for b_net, b_ema in zip(self.net.buffers(), ema.buffers()):
                b_ema.copy_(b_net.detach())

    def state_dict(self):
        return dict(emas=[ema.state_dict() for ema in self.emas])

    def load_state_dict(self, state):
        if len(state['emas']) != len(self.emas):
            raise ValueError(f'EMA state holds {len(state["emas"])} averages, this run has {len(self.emas)}')
        for ema, ema_state in zip(self.emas, state['emas']):
            ema.load_state_dict(ema_state)

#----------------------------------------------------------------------------

class PowerFunctionEMA(_EMABase):
    """One averaged copy per relative std; snapshots are suffixed '-{std:.3f}'."""
    def __init__(self, net, stds=[0.050, 0.100]):
        for std in stds:
            std_to_exp(std) # Validate early.
        names = [f'{std:.3f}' for std in stds]
        if not stds or len(set(names)) != len(names): # Snapshot names end in -{std:.3f}.
            raise ValueError(f'ema_stds {list(stds)}: give one or more EMA stds that differ in their first three '
                'decimals (each one is saved as network-snapshot-<kimg>-<std:.3f>.pkl)')
        super().__init__(net, len(stds))
        self.stds = [float(std) for std in stds]

    def _betas(self, cur_nimg, batch_size):
        return [power_function_beta(std, t_next=cur_nimg, t_delta=batch_size) for std in self.stds]

    def get(self):
        return [(ema, f'-{std:.3f}') for std, ema in zip(self.stds, self.emas)]

    def state_dict(self):
        return dict(super().state_dict(), stds=list(self.stds))

    def load_state_dict(self, state):
        if 'stds' in state and [round(s, 6) for s in state['stds']] != [round(s, 6) for s in self.stds]:
            raise ValueError(f'EMA state was saved with stds {state["stds"]}, this run uses {self.stds}')
        super().load_state_dict(state)

#----------------------------------------------------------------------------

class TraditionalEMA(_EMABase):
    """ema <- beta * ema + (1 - beta) * net after every step. A positive `halflife_kimg` sets
    beta from the batch size instead, so that the weight of an image halves every halflife_kimg
    thousand images. Snapshots are suffixed '-ema'."""
    def __init__(self, net, beta=0.9999, halflife_kimg=0):
        if halflife_kimg < 0:
            raise ValueError(f'EMA half-life must be positive (0 = use beta), got {halflife_kimg} kimg')
        if not halflife_kimg and not 0 <= beta < 1:
            raise ValueError(f'EMA beta must be in [0, 1), got {beta}')
        super().__init__(net, 1)
        self.beta = float(beta)
        self.halflife_kimg = float(halflife_kimg)

    def _betas(self, cur_nimg, batch_size):
        if self.halflife_kimg:
            return [0.5 ** (batch_size / (self.halflife_kimg * 1000))]
        return [self.beta]

    def get(self):
        return [(self.emas[0], '-ema')]

#----------------------------------------------------------------------------
