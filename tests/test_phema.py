"""Power-function EMA: std <-> exponent, the profile inner products, the per-step decay, and the
post-hoc reconstruction of a profile that was never tracked (library and reconstruct_phema.py)."""

import os
import pickle

import numpy as np
import pytest
import scipy.integrate
import torch

import reconstruct_phema
from helpers import expect_cli_error, invoke, invoke_ok
from torch_utils import persistence
from training import phema

def test_std_exp_conversion():
    # The EDM2 paper's pairs (Section 3.1): sigma_rel 0.10 <-> gamma 6.94, 0.05 <-> 16.97.
    assert abs(phema.std_to_exp(0.10) - 6.94) < 0.01
    assert abs(phema.std_to_exp(0.05) - 16.97) < 0.01
    for std in [0.001, 0.01, 0.05, 0.1, 0.2, 0.28]:
        assert abs(phema.exp_to_std(phema.std_to_exp(std)) - std) < 1e-10
    # Closed form for gamma = 0 (uniform average): std = sqrt(1/12) ... approached from below.
    assert abs(phema.exp_to_std(0) - np.sqrt(1 / 12)) < 1e-12
    for bad in [0, -0.1, 0.2887, 1]:
        with pytest.raises(ValueError, match='std'):
            phema.std_to_exp(bad)

def test_profile_inner_products_match_numerical_integration():
    def profile(t, g):
        return lambda tau: (g + 1) * tau ** g / t ** (g + 1) if tau <= t else 0.0
    for t_a, g_a, t_b, g_b in [(1.0, 6.94, 1.0, 16.97), (0.6, 3.0, 1.0, 10.0), (1.0, 2.0, 0.3, 0.5)]:
        numeric = scipy.integrate.quad(lambda tau: profile(t_a, g_a)(tau) * profile(t_b, g_b)(tau), 0, max(t_a, t_b), points=[min(t_a, t_b)])[0]
        assert abs(phema.profile_inner_products(t_a, g_a, t_b, g_b) - numeric) < 1e-8 * max(1, numeric)
    # Huge times and exponents stay finite (log domain).
    # Huge times and exponents (t^(g+1) overflows float64) stay exact: <p, p> = (g+1)^2 / ((2g+1) t).
    value = phema.profile_inner_products(1e9, 1000.0, 1e9, 1000.0)
    assert abs(value / (1001 ** 2 / 2001 / 1e9) - 1) < 1e-9

def test_power_function_ema_weights_follow_the_profile():
    # Average the "weights" theta(t) = t over t = 1..T: the power-function EMA equals the
    # discrete profile average, close to the continuous mean (g + 1) / (g + 2) * T.
    net = torch.nn.Linear(1, 1, bias=False)
    ema = phema.PowerFunctionEMA(net, stds=[0.05, 0.1])
    T = 4000
    for t in range(1, T + 1):
        with torch.no_grad():
            net.weight.fill_(t)
        ema.update(cur_nimg=t, batch_size=1)
    for (avg, suffix), std in zip(ema.get(), [0.05, 0.1]):
        g = phema.std_to_exp(std)
        assert suffix == f'-{std:.3f}'
        assert abs(avg.weight.item() / ((g + 1) / (g + 2) * T) - 1) < 2e-3

def test_traditional_ema_halflife_and_buffers():
    net = torch.nn.BatchNorm1d(1)
    ema = phema.TraditionalEMA(net, halflife_kimg=2)
    with torch.no_grad():
        net.weight.fill_(0)
    for _ in range(100): # 100 steps of 20 images = 2 kimg: the initial weight (1) halves.
        ema.update(cur_nimg=0, batch_size=20)
    (avg, suffix), = ema.get()
    assert suffix == '-ema' and abs(avg.weight.item() - 0.5) < 1e-6
    net.running_mean.fill_(3)
    ema.update(cur_nimg=0, batch_size=20)
    assert avg.running_mean.item() == 3 # Buffers are copied, not averaged.
    beta_ema = phema.TraditionalEMA(net, beta=0.9)
    with torch.no_grad():
        net.weight.fill_(1)
    beta_ema.update(cur_nimg=0, batch_size=7)
    assert abs(beta_ema.get()[0][0].weight.item() - 0.1) < 1e-6

def test_state_dict_round_trip_weights_only(tmp_path):
    net = torch.nn.Linear(3, 2)
    ema = phema.PowerFunctionEMA(net, stds=[0.05, 0.1])
    ema.update(cur_nimg=10, batch_size=10)
    with torch.no_grad():
        net.weight.add_(1)
    ema.update(cur_nimg=20, batch_size=10)
    torch.save(ema.state_dict(), tmp_path / 'ema.pt')
    restored = phema.PowerFunctionEMA(torch.nn.Linear(3, 2), stds=[0.05, 0.1])
    restored.load_state_dict(torch.load(tmp_path / 'ema.pt', weights_only=True))
    for (a, _), (b, _) in zip(ema.get(), restored.get()):
        assert torch.equal(a.weight, b.weight)
    with pytest.raises(ValueError, match='stds'):
        phema.PowerFunctionEMA(torch.nn.Linear(3, 2), stds=[0.05, 0.2]).load_state_dict(ema.state_dict())

#----------------------------------------------------------------------------
# Reconstruction of an untracked profile from synthetic snapshots.

class Weights(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.zeros(64))

def trajectory(t, T):
    """Smooth drifting weights plus noise, like a training run: theta(t) for t in 1..T."""
    rng = np.random.RandomState(t)
    k = np.arange(64)
    return torch.tensor(np.sin(2 * np.pi * (k + 1) * t / T / 8) + 0.3 * np.sqrt(t / T) * np.cos(k) + 0.05 * rng.randn(64), dtype=torch.float32)

def test_posthoc_reconstruction_from_snapshots(tmp_path):
    T, every = 2000, 100
    net = Weights()
    saved = phema.PowerFunctionEMA(net, stds=[0.05, 0.10])
    truth = phema.PowerFunctionEMA(net, stds=[0.03, 0.07, 0.15]) # Tracked only to check the reconstruction.
    for t in range(1, T + 1):
        with torch.no_grad():
            net.theta.copy_(trajectory(t, T))
        saved.update(cur_nimg=t, batch_size=1)
        truth.update(cur_nimg=t, batch_size=1)
        if t % every == 0: # Time in the file name stands for kimg; only ratios matter.
            for avg, suffix in saved.get():
                with open(tmp_path / f'network-snapshot-{t:07d}{suffix}.pkl', 'wb') as f:
                    pickle.dump(dict(ema=avg, loss_fn=None, encoder=None, dataset_kwargs={}), f)

    invoke_ok(reconstruct_phema.main, '--indir', tmp_path, '--outdir', tmp_path / 'out', '--outstd', '0.03,0.07,0.15')
    nearest = {0.03: 0.05, 0.07: 0.05, 0.15: 0.10}
    for (target, _), std in zip(truth.get(), [0.03, 0.07, 0.15]):
        with open(tmp_path / 'out' / f'phema-{T:07d}-{std:.3f}.pkl', 'rb') as f:
            rebuilt = persistence.load_pickle(f)['ema']
        error = (rebuilt.theta - target.theta).norm().item()
        baseline = (dict((s, a) for (a, _), s in zip(saved.get(), [0.05, 0.10]))[nearest[std]].theta - target.theta).norm().item()
        print(f'std {std}: reconstruction error {error:.2e}, nearest stored profile {baseline:.2e}')
        assert error < 0.1 * baseline, (std, error, baseline)

    # An earlier time uses only the snapshots up to it.
    invoke_ok(reconstruct_phema.main, '--indir', tmp_path, '--outdir', tmp_path / 'out', '--outstd', '0.05:0.10:0.05', '--outkimg', '1000')
    assert sorted(os.listdir(tmp_path / 'out'))[:2] == ['phema-0001000-0.050.pkl', 'phema-0001000-0.100.pkl']
    with open(tmp_path / 'out' / 'phema-0001000-0.050.pkl', 'rb') as f:
        rebuilt = persistence.load_pickle(f)['ema']
    with open(tmp_path / 'network-snapshot-0001000-0.050.pkl', 'rb') as f:
        stored = persistence.load_pickle(f)['ema']
    assert torch.allclose(rebuilt.theta, stored.theta, atol=1e-4) # A stored profile reconstructs as itself.

def test_reconstruct_phema_errors(tmp_path):
    run = lambda *args: invoke(reconstruct_phema.main, '--indir', tmp_path, '--outdir', tmp_path / 'o', *args)
    result = run('--outstd', '0.05')
    expect_cli_error(result, 'no network-snapshot')
    result = run('--outstd', '0.3')
    expect_cli_error(result, '--outstd', exit_code=2)
    result = run('--outstd', 'abc')
    expect_cli_error(result, 'abc', exit_code=2)
    with open(tmp_path / 'network-snapshot-0000010-0.050.pkl', 'wb') as f:
        pickle.dump(dict(ema=Weights()), f)
    result = run('--outstd', '0.07')
    expect_cli_error(result, 'two EMA profiles')
    (tmp_path / 'network-snapshot-0000010-0.100.pkl').write_bytes(b'not a pickle')
    result = run('--outstd', '0.07')
    expect_cli_error(result, 'network-snapshot-0000010-0.100.pkl')
    assert not (tmp_path / 'o').exists() or not os.listdir(tmp_path / 'o')
