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
    """Exponent gamma whose profile has the given relative std; std must lie in (0, sqrt(1/12))."""
    std = np.float64(std)
    if not 0 < std < np.sqrt(1 / 12):
        raise ValueError(f'EMA std must be in (0, {np.sqrt(1 / 12):.4f}), got {std}')
    # std^2 (gamma + 2)^2 (gamma + 3) = gamma + 1, a cubic in gamma with one root above -1.
    s2 = std * std
    roots = np.roots([s2, 7 * s2, 16 * s2 - 1, 12 * s2 - 1])
    real = roots[np.abs(roots.imag) < 1e-6 * np.maximum(1, np.abs(roots))].real
    return float(real.max())

def power_function_beta(std, t_next, t_delta):
    """Decay that moves a power-function average from time t_next - t_delta to t_next."""
    return (1 - t_delta / t_next) ** (std_to_exp(std) + 1)

#----------------------------------------------------------------------------
# Post-hoc reconstruction: least-squares fit of a target profile by saved ones.

def profile_inner_products(t_a, exp_a, t_b, exp_b):
    """<p_a, p_b> = integral of the two profiles' product, elementwise over broadcast arrays.
    Computed in the log domain: t^(gamma + 1) overflows float64 for gamma in the hundreds."""
    t_a, exp_a, t_b, exp_b = [np.asarray(v, dtype=np.float64) for v in (t_a, exp_a, t_b, exp_b)]
    t_min = np.minimum(t_a, t_b)
    exp_sum = exp_a + exp_b + 1
    log_value = exp_sum * np.log(t_min) - (exp_a + 1) * np.log(t_a) - (exp_b + 1) * np.log(t_b)
    return (exp_a + 1) * (exp_b + 1) / exp_sum * np.exp(log_value)

def solve_posthoc_coefficients(in_t, in_std, out_t, out_std):
    """Weights [len(in), len(out)] such that sum_i w[i, j] * ema_i approximates the profile
    (out_t[j], out_std[j]) in the least-squares sense over tau in [0, max t]. Times in any unit
    (images, steps, kimg): the solution only depends on ratios."""
    in_t, out_t = np.asarray(in_t, np.float64).ravel(), np.asarray(out_t, np.float64).ravel()
    in_exp = np.array([std_to_exp(s) for s in np.ravel(in_std)])
    out_exp = np.array([std_to_exp(s) for s in np.ravel(out_std)])
    if len(in_t) != len(in_exp) or len(out_t) != len(out_exp):
        raise ValueError('solve_posthoc_coefficients: times and stds must have the same lengths')
    A = profile_inner_products(in_t[:, None], in_exp[:, None], in_t[None, :], in_exp[None, :])
    B = profile_inner_products(in_t[:, None], in_exp[:, None], out_t[None, :], out_exp[None, :])
    return np.linalg.lstsq(A, B, rcond=None)[0]

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
