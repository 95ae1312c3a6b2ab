"""The training loop: learning-rate schedules against closed forms, exact resumption (sliced and
after SIGTERM), damaged-checkpoint fallback, 1 vs 2 Gloo processes, and run-directory outputs.
Uses the minimal family in tests/loop_family.py, so it exercises the loop alone."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from helpers import ROOT, TESTS, subprocess_env, torchrun
from torch_utils import persistence
from training import networks_edm2
from training import presets
from training import training_loop

def loop_kwargs(run_dir, total_nimg=8000, noise=True, ema=True, **kwargs):
    c = dict(
        dataset_kwargs=dict(class_name='loop_family.TinyDataset'),
        encoder_kwargs=dict(class_name='loop_family.IdentityEncoder'),
        data_loader_kwargs=dict(num_workers=0),
        network_kwargs=dict(class_name='loop_family.TinyNet'),
        loss_kwargs=dict(class_name='loop_family.TinyLoss', noise=noise),
        optimizer_kwargs=dict(class_name='torch.optim.Adam', betas=(0.9, 0.99)),
        lr_kwargs=dict(func_name='training.networks_edm2.learning_rate_schedule', ref_lr=0.01, ref_batches=100, rampup_Mimg=0.001),
        ema_kwargs=dict(class_name='training.phema.PowerFunctionEMA', stds=[0.05, 0.1]) if ema else None,
        run_dir=str(run_dir), seed=1, batch_size=8, batch_gpu=8, total_nimg=total_nimg,
        status_nimg=2000, snapshot_nimg=4000, checkpoint_nimg=2000, loss_scaling=1, grad_clip=0, cudnn_benchmark=False, device='cpu',
    )
    c.update(kwargs)
    return c

def final_state(run_dir):
    path, state, _ = training_loop.load_latest_checkpoint(str(run_dir))
    assert path is not None
    return state

def assert_states_equal(a, b):
    assert a['state']['cur_nimg'] == b['state']['cur_nimg']
    for key in a['net']:
        assert torch.equal(a['net'][key], b['net'][key]), key
    for ta, tb in zip(flat_tensors(a['ema']), flat_tensors(b['ema'])):
        assert torch.equal(ta, tb)
    for ta, tb in zip(flat_tensors(a['optimizer']), flat_tensors(b['optimizer'])):
        assert torch.equal(ta, tb)

def flat_tensors(tree):
    return [t for t in torch.utils._pytree.tree_leaves(tree) if isinstance(t, torch.Tensor)]

#----------------------------------------------------------------------------

def test_learning_rate_schedules():
    lr = networks_edm2.learning_rate_schedule
    # Warm-up: linear over rampup_Mimg; then constant until ref_batches; then 1/sqrt.
    assert lr(cur_nimg=0.5e6, batch_size=100, ref_lr=0.01, ref_batches=70e3, rampup_Mimg=1) == pytest.approx(0.005)
    assert lr(cur_nimg=2e6, batch_size=100, ref_lr=0.01, ref_batches=70e3, rampup_Mimg=1) == pytest.approx(0.01)
    assert lr(cur_nimg=4 * 70e3 * 100, batch_size=100, ref_lr=0.01, ref_batches=70e3, rampup_Mimg=1) == pytest.approx(0.005)
    ms = networks_edm2.multisource_lr_schedule
    t_ref = 2000 * 2048
    assert ms(cur_nimg=t_ref, batch_size=2048, ref_lr=0.004, ref_batches=2000, rampup_Mimg=0) == 0.004
    assert ms(cur_nimg=t_ref + 2048, batch_size=2048, ref_lr=0.004, ref_batches=2000, rampup_Mimg=0) == pytest.approx(0.002, rel=1e-3)
    assert ms(cur_nimg=4 * t_ref, batch_size=2048, ref_lr=0.004, ref_batches=2000, rampup_Mimg=0) == pytest.approx(0.001)
    c = training_loop.constant_lr
    assert c(cur_nimg=10, batch_size=8, ref_lr=1e-4, rampup_Mimg=0) == 1e-4
    assert c(cur_nimg=250, batch_size=8, ref_lr=1e-4, rampup_Mimg=0.001) == pytest.approx(0.25e-4)

def multisource_study_lr(cur_nimg, batch_size, ref_lr, ref_batches, rampup_Mimg):
    """The multi-source study's schedule as its code states it: the rate is divided by
    sqrt(4 t / (decay * batch)) once t / (decay * batch) > 1, then scaled by the linear warm-up."""
    lr = ref_lr
    if cur_nimg / (ref_batches * batch_size) > 1:
        lr = ref_lr / np.sqrt(cur_nimg * 4 / (ref_batches * batch_size))
    return lr * min(cur_nimg / (rampup_Mimg * 1e6), 1)

@pytest.mark.parametrize('preset', ['edm2-img256-xs-10c-1000-nlr', 'edm2-img256-xs-1c-500', 'edm2-img256-xs-5c-100'])
@pytest.mark.parametrize('batch_size', [2048, 6144]) # The preset's batch; the study's scripts ran 6144 and 8192.
def test_multisource_lr_matches_the_study_around_decay(preset, batch_size):
    lr_kwargs = presets.family_kwargs(presets.resolve(preset))['lr_kwargs']
    assert lr_kwargs['func_name'] == 'training.networks_edm2.multisource_lr_schedule'
    kwargs = {k: v for k, v in lr_kwargs.items() if k != 'func_name'}
    decay = kwargs['ref_batches']
    for step in [1, decay - 1, decay, decay + 1, decay + 2, 2 * decay, 10 * decay]:
        ours = networks_edm2.multisource_lr_schedule(cur_nimg=step * batch_size, batch_size=batch_size, **kwargs)
        assert ours == multisource_study_lr(cur_nimg=step * batch_size, batch_size=batch_size, **kwargs), step
    full = kwargs['ref_lr'] * min(decay * batch_size / (kwargs['rampup_Mimg'] * 1e6), 1)
    assert networks_edm2.multisource_lr_schedule(cur_nimg=decay * batch_size, batch_size=batch_size, **kwargs) == full

def test_param_groups_skip_vectors_and_listed_names():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    net.no_weight_decay = lambda: {'2.weight'}
    decay, no_decay = training_loop.param_groups(net, 0.02)
    assert [p.shape for p in decay['params']] == [torch.Size([4, 3])]
    assert len(no_decay['params']) == 5 and no_decay['weight_decay'] == 0

def test_train_step_takes_the_loop_options_without_defaults():
    # training_loop() passes loss_scaling, force_finite and grad_clip; defaults of its own here
    # (loss scaling 1, no clipping) would silently differ from a caller's preset.
    import inspect
    params = inspect.signature(training_loop.train_step).parameters
    for name in ['loss_scaling', 'force_finite', 'grad_clip']:
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY and params[name].default is inspect.Parameter.empty, name

def test_outputs_and_snapshots(tmp_path):
    training_loop.training_loop(**loop_kwargs(tmp_path))
    names = sorted(os.listdir(tmp_path))
    assert 'stats.jsonl' in names and 'loss.png' in names
    for kimg in [0, 4, 8]:
        assert f'network-snapshot-{kimg:07d}-0.050.pkl' in names and f'network-snapshot-{kimg:07d}-0.100.pkl' in names
    # Checkpoints every 2 kimg; only the two newest are kept.
    assert [n for n in names if n.startswith('training-state')] == ['training-state-0000006.pt', 'training-state-0000008.pt']
    assert not [n for n in names if n.startswith('.')] # No temporary files left.
    lines = [json.loads(l) for l in open(tmp_path / 'stats.jsonl')]
    assert [l['Progress/kimg'] for l in lines] == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert all(np.isfinite(l['Loss/loss']) for l in lines[1:])
    with open(tmp_path / 'network-snapshot-0000008-0.100.pkl', 'rb') as f:
        snap = persistence.load_pickle(f)
    assert set(snap) == {'ema', 'encoder', 'loss_fn', 'dataset_kwargs', 'run_id', 'sources'}
    assert not snap['ema'].training and not any(p.requires_grad for p in snap['ema'].parameters())

def test_a_run_reports_its_own_statistics(tmp_path):
    # Two runs in one process (tests, notebooks): the second's first status line (before any
    # step) has no loss, not the first run's last one.
    for name in ['a', 'b']:
        training_loop.training_loop(**loop_kwargs(tmp_path / name, total_nimg=2000, snapshot_nimg=None, checkpoint_nimg=None))
    first = json.loads(open(tmp_path / 'b' / 'stats.jsonl').readline())
    assert first['Progress/kimg'] == 0 and not np.isfinite(first.get('Loss/loss', np.nan)), first
    assert np.isfinite(json.loads(open(tmp_path / 'a' / 'stats.jsonl').readlines()[-1])['Loss/loss'])

@pytest.mark.parametrize('optimizer', ['torch.optim.SGD', 'torch.optim.Adam'])
def test_gradient_accumulation_matches_one_round(tmp_path, optimizer):
    # batch_gpu (--batch-gpu) below the per-process batch: 1 round of 8 images, 2 rounds of 4,
    # 4 rounds of 2 give the same update (each round adds its sum / 8; the same images in the same
    # order; a deterministic loss). SGD's step is proportional to the gradient, so a wrong
    # normalisation shows there; Adam (scale-invariant) shows a lost or doubled round.
    kwargs = dict(noise=False, snapshot_nimg=None, total_nimg=400, status_nimg=400, checkpoint_nimg=400,
        optimizer_kwargs=dict(class_name=optimizer), lr_kwargs=dict(func_name='training.training_loop.constant_lr', ref_lr=0.05))
    states = {}
    for batch_gpu in [8, 4, 2]:
        training_loop.training_loop(**loop_kwargs(tmp_path / str(batch_gpu), batch_gpu=batch_gpu, **kwargs))
        states[batch_gpu] = final_state(tmp_path / str(batch_gpu))
    initial = init_parameters()
    assert max((states[8]['net'][k] - p).abs().max() for k, p in initial.items()) > 0.01 # 50 steps went somewhere.
    for batch_gpu in [4, 2]:
        assert states[batch_gpu]['net']['calls'] == 50 * 8 // batch_gpu # One forward call per round.
        for net, reference in zip([states[batch_gpu]['net'], *states[batch_gpu]['ema']['emas']], [states[8]['net'], *states[8]['ema']['emas']]):
            for key in initial:
                torch.testing.assert_close(net[key], reference[key], rtol=1e-5, atol=1e-6)

def init_parameters(seed=1):
    """The TinyNet parameters a run with loop_kwargs starts from (its seed, rank 0)."""
    from loop_family import TinyNet # pylint: disable=import-outside-toplevel
    torch.manual_seed(seed)
    return {name: p.detach() for name, p in TinyNet(img_resolution=4, img_channels=1, label_dim=3).named_parameters()}

def test_seed_makes_the_initial_network(tmp_path):
    # A run of no images saves its initial network as the kimg-0 snapshot: the one torch builds
    # after manual_seed(seed), for each seed.
    for seed in [1, 7]:
        training_loop.training_loop(**loop_kwargs(tmp_path / str(seed), seed=seed, ema=False, total_nimg=0, status_nimg=0,
            snapshot_nimg=1000, checkpoint_nimg=0))
        with open(tmp_path / str(seed) / 'network-snapshot-0000000.pkl', 'rb') as f:
            net = persistence.load_pickle(f)['ema']
        expected = init_parameters(seed)
        assert all(torch.equal(p, expected[name]) for name, p in net.named_parameters()), seed
    assert not torch.equal(init_parameters(1)['inp.weight'], init_parameters(7)['inp.weight'])

def test_resume_is_bit_identical(tmp_path):
    straight = tmp_path / 'straight'
    sliced = tmp_path / 'sliced'
    training_loop.training_loop(**loop_kwargs(straight))
    training_loop.training_loop(**loop_kwargs(sliced, slice_nimg=4000))
    assert final_state(sliced)['state']['cur_nimg'] == 4000
    training_loop.training_loop(**loop_kwargs(sliced))
    assert_states_equal(final_state(straight), final_state(sliced))

def test_damaged_newest_state_falls_back(tmp_path):
    training_loop.training_loop(**loop_kwargs(tmp_path, total_nimg=4000))
    newest = training_loop.list_checkpoints(str(tmp_path))[-1]
    with open(newest, 'r+b') as f:
        f.truncate(100)
    with pytest.warns(UserWarning, match='falling back'):
        path, state, failed = training_loop.load_latest_checkpoint(str(tmp_path))
    assert path != newest and state['state']['cur_nimg'] == 2000
    assert failed[os.path.basename(newest)].startswith('damaged (')

#----------------------------------------------------------------------------
# Subprocess runs: SIGTERM and torchrun with 2 Gloo processes.

RUNNER = os.path.join(TESTS, 'loop_runner.py')

def test_sigterm_saves_state_and_resume_matches(tmp_path):
    straight = tmp_path / 'straight'
    killed = tmp_path / 'killed'
    training_loop.training_loop(**loop_kwargs(straight, total_nimg=40000, snapshot_nimg=None, checkpoint_nimg=40000))
    kwargs = loop_kwargs(killed, total_nimg=40000, snapshot_nimg=None, checkpoint_nimg=40000)
    proc = subprocess.Popen([sys.executable, RUNNER, json.dumps(kwargs)], cwd=ROOT, env=subprocess_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Wait until it has trained for a while, then pre-empt it.
    deadline = time.time() + 120
    while time.time() < deadline and not os.path.exists(killed / 'stats.jsonl'):
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert 'Stopping on signal SIGTERM' in out
    stopped_at = final_state(killed)['state']['cur_nimg']
    assert 0 < stopped_at < 40000, out
    training_loop.training_loop(**kwargs)
    assert_states_equal(final_state(straight), final_state(killed))

def test_two_gloo_processes_match_one(tmp_path):
    # 2 processes (one launch): 4 images each per step in one round, and in two rounds of 2
    # (gradient accumulation: DDP's no_sync on the first round, the gradients all-reduced on the
    # last), give the 1-process run's network.
    one = tmp_path / 'one'
    # 100 steps: Adam amplifies summation-order differences over long runs.
    short = dict(noise=False, ema=False, snapshot_nimg=None, total_nimg=800, status_nimg=800, checkpoint_nimg=800, device=None)
    training_loop.training_loop(**loop_kwargs(one, **short))
    runs = {'two': loop_kwargs(tmp_path / 'two', batch_gpu=4, **short), 'two-accumulating': loop_kwargs(tmp_path / 'two-accumulating', batch_gpu=2, **short)}
    torchrun([RUNNER, json.dumps(list(runs.values()))])
    a = final_state(one)
    assert max(float((a['net'][k] - p).abs().max()) for k, p in init_parameters().items()) > 0.01 # Training went somewhere.
    for name in runs:
        b = final_state(tmp_path / name)
        assert a['state']['cur_nimg'] == b['state']['cur_nimg'] == 800
        assert b['net']['calls'] == 100 * (2 if name == 'two-accumulating' else 1) # Forward calls of rank 0's copy.
        for key in a['net']:
            if a['net'][key].is_floating_point() and key != 'calls':
                torch.testing.assert_close(a['net'][key], b['net'][key], rtol=1e-5, atol=1e-6)
        assert len(b['rng']) == 2 # Each rank's RNG state is kept for exact resumption.
