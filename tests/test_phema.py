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
    expect_cli_error(result, 'no snapshots named PREFIX-KKKKKKK-S.SSS.pkl')
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

#----------------------------------------------------------------------------
# Equal to the official reconstruction. tests/data/phema_official.npz holds the EMA snapshots of
# a tiny edm2-digits run of train_edm2.py (the inputs: float32 parameters and buffers of every
# snapshot, kimg 0, 32, 65 and 98, std 0.050 and 0.100) and the parameters that the official
# NVlabs/edm2 reconstruct_phema.py (4bf8162) wrote from them, made once with
# tests/data/make_phema_reference.py, which runs the official script on snapshot files written by
# write_snapshots below. Two layouts: a run directory of ours (network-snapshot-*, float32) and the
# official raw snapshots (edm2-img512-xs-*, float16, options as dnnlib.util.EasyDict).

PHEMA_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'phema_official.npz')
RUN_DIR, RAW_DIR = 'training-runs/00000-edm2-img512-xs', 'raw-snapshots/edm2-img512-xs'

def dump_with_official_easydicts(data, f):
    """Pickle `data` (a snapshot dict) as the official code writes it: the snapshot dict and its
    option dicts are dnnlib.util.EasyDict instances."""
    import sys, types # pylint: disable=import-outside-toplevel,multiple-imports
    official = type('EasyDict', (dict,), {'__module__': 'dnnlib.util'})
    dnnlib, dnnlib_util = types.ModuleType('dnnlib'), types.ModuleType('dnnlib.util')
    dnnlib.util, dnnlib_util.EasyDict = dnnlib_util, official
    convert = lambda d: official({k: convert(v) if isinstance(v, dict) else v for k, v in d.items()})
    sys.modules.update({'dnnlib': dnnlib, 'dnnlib.util': dnnlib_util})
    try:
        pickle.dump(convert(data), f)
    finally:
        del sys.modules['dnnlib'], sys.modules['dnnlib.util']

def stored_snapshots():
    """{(kimg, std): state dict} of the stored inputs (each stored as one flat float32 vector of
    its state dict in order), and the network's constructor arguments."""
    import json # pylint: disable=import-outside-toplevel
    from training import networks_edm2 # pylint: disable=import-outside-toplevel
    with np.load(PHEMA_DATA) as npz:
        kwargs = json.loads(str(npz['net_kwargs']))
        shapes = {name: value.shape for name, value in networks_edm2.Precond(**kwargs).state_dict().items()}
        snapshots = {}
        for key in npz.files:
            if key.startswith('in/'):
                _, kimg, std = key.split('/')
                parts = torch.from_numpy(npz[key]).split([int(np.prod(shape)) for shape in shapes.values()])
                snapshots[int(kimg), float(std)] = {name: part.reshape(shape) for (name, shape), part in zip(shapes.items(), parts)}
    return snapshots, kwargs

def write_snapshots(folder, official=False):
    """The stored inputs as snapshot files: a run directory of ours, or (official) the raw
    snapshots of the official layout. Returns the paths."""
    from training import encoders, networks_edm2 # pylint: disable=import-outside-toplevel
    snapshots, kwargs = stored_snapshots()
    os.makedirs(folder, exist_ok=True)
    paths = []
    for (kimg, std), state in sorted(snapshots.items()):
        net = networks_edm2.Precond(**kwargs).eval().requires_grad_(False)
        net.load_state_dict(state)
        data = dict(ema=net.to(torch.float16) if official else net, loss_fn=networks_edm2.EDM2Loss(P_mean=-0.8, P_std=1.6, label_dropout=0.1),
            encoder=encoders.StandardRGBEncoder(), dataset_kwargs=dict(class_name='training.dataset.ImageFolderDataset', path='digits.zip'))
        if not official:
            data.update(run_id='0123abcd', sources=None)
        paths.append(os.path.join(folder, f'{"edm2-img512-xs" if official else "network-snapshot"}-{kimg:07d}-{std:.3f}.pkl'))
        with open(paths[-1], 'wb') as f:
            (dump_with_official_easydicts if official else pickle.dump)(data, f)
    return paths

def official_reference(case):
    """{std as in the file name: the official output's parameters, one flat float16 vector}."""
    with np.load(PHEMA_DATA) as npz:
        return dict(zip(npz[f'out/{case}/stds'], torch.from_numpy(npz[f'out/{case}'])))

def flat_output(path):
    """(parameters as one flat vector, buffers, names of the pickle's globals) of a written snapshot."""
    from test_official_compat import walk_pickle # pylint: disable=import-outside-toplevel
    with open(path, 'rb') as f:
        raw = f.read()
    net = persistence.load_pickle(__import__('io').BytesIO(raw))['ema']
    return torch.cat([p.detach().flatten() for p in net.parameters()]), list(net.buffers()), walk_pickle(raw)[0]

def test_equal_to_the_official_reconstruction(tmp_path):
    # Before: the solver did not rescale its coefficients to sum 1 (here 0.93 at std 0.150, 0.61 at
    # 0.010) and counted time in kimg: parameters up to 0.205 apart at std 0.150, 1.22 over the sweep.
    import anchors
    from test_official_compat import foreign_globals # pylint: disable=import-outside-toplevel
    snapshots, _ = stored_snapshots()
    last_buffers = [b for name, b in snapshots[98, 0.1].items() if 'fourier' in name] # The newest input's.
    ours, raw, anchor = tmp_path / 'ours', tmp_path / 'raw', tmp_path / 'anchor'
    write_snapshots(ours / RUN_DIR)
    for folder in [raw, anchor]:
        write_snapshots(folder / RAW_DIR, official=True)
    run = lambda indir, outdir, *args: invoke(reconstruct_phema.main, f'--indir={indir}', f'--outdir={outdir}', *args)
    cases = {
        'run-0.150': (anchors.invoke('edm2-phema-run', ours), ours / 'out'),
        'run-sweep': (run(ours / RUN_DIR, ours / 'sweep', '--outstd=0.010,0.015,...,0.250', '--batch=8'), ours / 'sweep'),
        'raw-0.150': (anchors.invoke('edm2-phema-150', raw), raw / 'out'),
        'raw-sweep': (run(raw / RAW_DIR, raw / 'sweep', '--outstd=0.050,0.100,...,0.250', '--batch=2'), raw / 'sweep'),
    }
    for case, (result, out) in cases.items():
        assert result.exit_code == 0, result.output
        reference = official_reference(case)
        assert sorted(os.listdir(out)) == [f'phema-0000098-{std}.pkl' for std in sorted(reference)]
        for std, expected in reference.items():
            params, buffers, names = flat_output(out / f'phema-0000098-{std}.pkl')
            # Official snapshots are float16 and so are the outputs; ours stay float32 and are the
            # official float32 sums before its final cast to float16: bit for bit either way.
            assert params.dtype == (torch.float16 if case.startswith('raw') else torch.float32)
            assert torch.equal(params.to(torch.float16), expected), (case, std, float((params.float() - expected.float()).abs().max()))
            assert all(torch.equal(b, ref.to(b.dtype)) for b, ref in zip(buffers, last_buffers))
            assert foreign_globals(names) == [] # Loads in the official tree: no torch_utils.util.EasyDict.
    # The README's sweep over the raw snapshots: 49 profiles in 7 passes over the inputs, as there.
    result = anchors.invoke('edm2-phema-sweep', anchor)
    assert result.exit_code == 0 and '49 profiles at 98 kimg in 7 pass(es)' in result.output, result.output
    assert len(os.listdir(anchor / 'out')) == 49

def test_reconstruct_phema_options(tmp_path):
    run = lambda *args: invoke(reconstruct_phema.main, *args)
    indir = tmp_path / RUN_DIR
    write_snapshots(indir)
    result = run('--indir', indir, '--outdir', indir, '--outstd', '0.07')
    assert result.exit_code == 0, result.output
    # Now the folder also holds phema-*: which snapshots are meant must be said.
    expect_cli_error(run('--indir', indir, '--outdir', tmp_path / 'o', '--outstd', '0.07'), 'network-snapshot-*.pkl, phema-*.pkl', '--inprefix')
    result = run('--indir', indir, '--inprefix', 'network-snapshot', '--outdir', tmp_path / 'o', '--outstd', '0.07,0.15', '--outprefix', 'rebuilt')
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(tmp_path / 'o')) == ['rebuilt-0000098-0.070.pkl', 'rebuilt-0000098-0.150.pkl']
    # Same inputs, same network, whatever else is reconstructed in the same pass.
    assert torch.equal(flat_output(tmp_path / 'o' / 'rebuilt-0000098-0.070.pkl')[0], flat_output(indir / 'phema-0000098-0.070.pkl')[0])
    # --skip keeps what exists and writes the rest; without it (or --overwrite) nothing is replaced.
    result = run('--indir', indir, '--inprefix', 'network-snapshot', '--outdir', tmp_path / 'o', '--outstd', '0.07,0.1', '--outprefix', 'rebuilt', '--skip')
    assert result.exit_code == 0 and '1 exist(s) already' in result.output, result.output
    assert sorted(os.listdir(tmp_path / 'o'))[:2] == ['rebuilt-0000098-0.070.pkl', 'rebuilt-0000098-0.100.pkl']
    expect_cli_error(run('--indir', indir, '--inprefix', 'network-snapshot', '--outdir', tmp_path / 'o', '--outstd', '0.1', '--outprefix', 'rebuilt'), 'already exists')
    # An earlier time must be an input's, as in the official tool; the fit then ends there.
    expect_cli_error(run('--indir', indir, '--inprefix', 'network-snapshot', '--outdir', tmp_path / 'e', '--outstd', '0.1', '--outkimg', 50), 'at 32, 65, 98 kimg')
    result = run('--indir', indir, '--inprefix', 'network-snapshot', '--outdir', tmp_path / 'e', '--outstd', '0.1', '--outkimg', 65, '--instd', '0.050,0.100')
    assert result.exit_code == 0 and '4 snapshots' in result.output, result.output
    expect_cli_error(run('--indir', indir, '--inprefix', 'network-snapshot', '--outdir', tmp_path / 'e', '--outstd', '0.1', '--instd', '0.050'), 'at least two EMA profiles')
    # Two stds that round to one file name are refused before anything is written (issue 22).
    expect_cli_error(run('--indir', indir, '--inprefix', 'network-snapshot', '--outdir', tmp_path / 'd', '--outstd', '0.0501,0.0504'),
        '--outstd 0.0501 and 0.0504 give the same file name phema-0000098-0.050.pkl')
    assert not os.path.exists(tmp_path / 'd')
    for bad, message in [('0.010,...,0.250', 'two numbers before it'), ('0.01,0.02,...,0.045', 'evenly spaced'), ('0.01,0.3', '(0, 0.289)')]:
        expect_cli_error(run('--indir', indir, '--outdir', tmp_path / 'd', '--outstd', bad), message, exit_code=2)
    expect_cli_error(run('--indir', indir, '--outdir', tmp_path / 'd', '--outstd', '0.1', '--skip', '--overwrite'), 'give one of them')
    os.environ['WORLD_SIZE'] = '2'
    try:
        expect_cli_error(run('--indir', indir, '--outdir', tmp_path / 'd', '--outstd', '0.1'), 'not torchrun')
    finally:
        del os.environ['WORLD_SIZE']
