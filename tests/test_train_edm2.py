"""train_edm2.py: preset resolution and overrides, validation errors, dry run, and a short real
run of the digits preset through the command line (snapshots, state, log, options, loss curve)."""

import contextlib
import io
import json
import os

import numpy as np
import PIL.Image
import pytest
import torch

import helpers
import train_edm2
from helpers import ROOT, expect_cli_error, invoke_ok, torchrun, write_dataset
from training import presets

@pytest.fixture(scope='module')
def digits_zip(digits_zips):
    return digits_zips['train']

def invoke(args):
    return helpers.invoke(train_edm2.main, *args)

def test_multisource_presets_table():
    opts = presets.resolve('edm2-img256-xs-5c-500')
    assert (opts.duration, opts.lr, opts.decay, opts.channels, opts.batch) == (128 << 20, 0.006, 4000, 128, 2048)
    assert (opts.P_mean, opts.P_std, opts.dropout, opts.lr_schedule) == (-0.4, 1.0, 0.0, 'multisource')
    assert len([n for n in presets.PRESETS if n.startswith('edm2-img256-xs-')]) == 13
    nlr = presets.resolve('edm2-img256-xs-10c-1000-nlr') # The study's train_1c_1000.sh.
    assert (nlr.duration, nlr.lr, nlr.decay, nlr.batch, nlr.channels) == ((2048 << 19) + (2048 << 18), 0.004, 6000, 2048, 128)
    assert (nlr.dropout, nlr.P_mean, nlr.P_std, nlr.lr_schedule) == (0.0, -0.4, 1.0, 'multisource')
    official = presets.resolve('edm2-img512-xxl')
    assert (official.duration, official.channels, official.lr, official.dropout) == (896 << 20, 448, 0.0065, 0.1)

def test_dry_run_applies_overrides(digits_zip, tmp_path):
    result = invoke(['--preset', 'edm2-digits', '--data', digits_zip, '--outdir', str(tmp_path / 'run'), '--dry-run',
        '--duration', '2Ki', '--batch', '64', '--lr', '0.02', '--set', 'num_blocks=1', '--set', 'channel_mult=[1,1]'])
    assert result.exit_code == 0, result.output
    assert '"total_nimg": 2048' in result.output and '"batch_size": 64' in result.output
    assert '"ref_lr": 0.02' in result.output and '"num_blocks": 1' in result.output
    assert not os.path.exists(tmp_path / 'run') # A dry run writes nothing.

@pytest.mark.parametrize('args, cond', [([], True), (['--cond'], True), (['--cond=True'], True), (['--cond=False'], False),
    (['--cond', 'false'], False), (['--uncond'], False), (['--cond=False', '--uncond'], False)])
def test_cond_flag_spellings(digits_zip, tmp_path, args, cond):
    """EDM2 and the multi-source code write --cond=True/False; --cond/--uncond work too."""
    result = invoke(['--preset', 'edm2-digits', '--data', digits_zip, '--outdir', str(tmp_path / 'run'), '--dry-run'] + args)
    assert result.exit_code == 0, result.output
    assert f'"cond": {str(cond).lower()}' in result.output

def loop_arguments(monkeypatch, args):
    """The keyword arguments train_edm2.py hands to training_loop(), flattened to
    {'section.key': value} (JSON types), for the command line `args`."""
    captured = {}
    monkeypatch.setattr(train_edm2.training_loop, 'training_loop', lambda **kwargs: captured.update(kwargs))
    result = invoke(args)
    assert result.exit_code == 0, result.output
    flat = {}
    for key, value in json.loads(json.dumps(captured)).items():
        flat.update({f'{key}.{k}': v for k, v in value.items()} if isinstance(value, dict) else {key: value})
    return flat

@pytest.mark.parametrize('flags, changes', [
    (['--uncond'], {'dataset_kwargs.use_labels': False}),
    (['--cond'], {}), # The preset's own choice.
    (['--xflip', 'true'], {'dataset_kwargs.xflip': True}),
    (['--cache', 'false'], {'dataset_kwargs.cache': False}), # EDM2's flag: the decoded dataset kept in memory.
    (['--lr-schedule', 'multisource'], {'lr_kwargs.func_name': 'training.networks_edm2.multisource_lr_schedule'}),
    (['--P_mean', '-1.2', '--P_std', '0.7'], {'loss_kwargs.P_mean': -1.2, 'loss_kwargs.P_std': 0.7}),
    (['--decay', '123'], {'lr_kwargs.ref_batches': 123}),
    (['--fp16', 'false'], {'network_kwargs.use_fp16': False}),
    (['--batch-gpu', '16'], {'batch_gpu': 16}),
    (['--p-uncond', '0.2', '--dropout', '0.05'], {'loss_kwargs.label_dropout': 0.2, 'network_kwargs.dropout': 0.05}),
    (['--label-dropout', '0.2'], {'loss_kwargs.label_dropout': 0.2}),
    (['--mixed-precision', 'false'], {'network_kwargs.use_fp16': False}),
    (['--ls', '1024'], {'loss_scaling': 1024.0}), # EDM2's loss scaling and cuDNN benchmarking flags.
    (['--bench=False'], {'cudnn_benchmark': False}),
    (['--seed', '7'], {'seed': 7}),
    (['--channels', '16'], {'network_kwargs.model_channels': 16}),
])
def test_each_flag_changes_what_the_loop_receives(digits_zip, tmp_path, monkeypatch, flags, changes):
    base = ['--preset', 'edm2-digits', '--data', digits_zip, '--duration', '1Ki', '--batch', '64']
    before = loop_arguments(monkeypatch, base + ['--outdir', str(tmp_path / 'a')])
    after = loop_arguments(monkeypatch, base + flags + ['--outdir', str(tmp_path / 'b')])
    differ = {key: after[key] for key in after if after[key] != before.get(key)}
    assert differ.pop('run_id') != before['run_id'] # Each run directory has its own run.
    assert differ == dict(changes, run_dir=str(tmp_path / 'b'))
    assert set(after) == set(before)

@pytest.mark.parametrize('args, message', [
    (['--preset', 'edm2-digits', '--cond=True', '--uncond'], 'contradict'),
    (['--preset', 'no-such-preset'], 'unknown preset'),
    (['--preset', 'edm2-digits', '--batch', '100', '--batch-gpu', '30'], 'not divisible'),
    (['--preset', 'edm2-digits', '--duration', '1000'], 'not a multiple of the batch size'),
    (['--preset', 'edm2-digits', '--snapshot', '3Ki', '--batch', '1000'], 'not a multiple'),
    (['--preset', 'edm2-digits', '--duration', '5X'], 'Invalid image count'),
    (['--preset', 'edm2-digits', '--set', 'no_such_option=3'], 'does not apply'),
    (['--preset', 'edm2-digits', '--set', 'oops'], 'KEY=VALUE'),
])
def test_bad_options_are_clear_errors(digits_zip, tmp_path, args, message):
    result = invoke(['--data', digits_zip, '--outdir', str(tmp_path / 'run')] + args)
    expect_cli_error(result, message)
    assert not os.path.exists(tmp_path / 'run')

# Every flag parses its type only: its value is checked once, by the library, as the same value
# given with --set is (before, --p-uncond 1 passed click's [0, 1] and was then refused, and --lr 0
# had two messages).
@pytest.mark.parametrize('flag, option, value, message', [
    ('--p-uncond', 'label_dropout', '1', 'label_dropout must be in [0, 1), got 1.0'),
    ('--label-dropout', 'p_uncond', '-0.5', 'label_dropout must be in [0, 1), got -0.5'),
    ('--dropout', 'dropout', '1.5', 'dropout must be in [0, 1], got 1.5'),
    ('--channels', 'channels', '0', 'channels must be at least 1, got 0'),
    ('--lr', 'lr', '0', 'lr must be positive'),
    ('--P_std', 'P_std', '0', 'P_std and sigma_data must be positive'),
    ('--ls', 'loss_scaling', '0', 'loss_scaling (--ls) must be positive'),
    ('--decay', 'decay', '-1', 'option "decay" must be at least 0, got -1'),
    ('--workers', 'workers', '-1', 'option "workers" must be at least 0, got -1'),
    ('--seed', 'seed', '-1', 'seed must be in 0..4294967295, got -1'),
    ('--batch', 'batch', '0', 'batch and duration must be at least 1 image'),
    ('--fp16', 'mixed_precision', '2', None), # A type error: click's own usage error for the flag.
])
def test_a_bad_value_is_one_message_through_its_flag_and_set(digits_zip, tmp_path, flag, option, value, message):
    base = ['--preset', 'edm2-digits', '--data', digits_zip, '--outdir', str(tmp_path / 'run'), '--dry-run']
    if message is None:
        expect_cli_error(invoke(base + [flag, value]), 'is not a valid boolean', exit_code=2)
        expect_cli_error(invoke(base + ['--set', f'{option}={value}']), f'option "{option}" expects True or False, got 2')
        return
    by_flag = expect_cli_error(invoke(base + [flag, value]), message)
    by_set = expect_cli_error(invoke(base + ['--set', f'{option}={value}']), message)
    assert by_flag == by_set
    assert not os.path.exists(tmp_path / 'run')

def test_a_flag_and_set_must_agree(digits_zip, tmp_path):
    # One option given by its flag and by --set (today's name or the old one): the same value is
    # accepted, another refused (before: --set won silently under today's name).
    base = ['--preset', 'edm2-digits', '--data', digits_zip, '--outdir', str(tmp_path / 'run'), '--dry-run']
    for args in [['--p-uncond', '0.1', '--set', 'label_dropout=0.2'], ['--label-dropout', '0.1', '--set', 'p_uncond=0.2']]:
        expect_cli_error(invoke(base + args), f'--set {args[-1]}: option "label_dropout" is also given by its flag, with another value (0.1)')
    expect_cli_error(invoke(base + ['--lr', '0.01', '--set', 'lr=0.02']), 'option "lr" is also given by its flag')
    for args in [['--p-uncond', '0.1', '--set', 'label_dropout=0.1'], ['--duration', '64Ki', '--set', 'duration=64Ki']]:
        result = invoke(base + args)
        assert result.exit_code == 0 and 'Dry run; exiting.' in result.output, result.output
    assert not os.path.exists(tmp_path / 'run')

# An option whose value the family (or config.py) checks is checked there only: the same bad value
# as an int or a float, through its flag or --set, and the values on either side of 0, get one
# message (before, the generic "must be at least 0" rule took the negative ints).
@pytest.mark.parametrize('preset, option, flag, values, message', [
    ('edm2-digits', 'channels', '--channels', ['-1', '0'], 'channels must be at least 1, got'),
    ('edm2-digits', 'num_blocks', None, ['-1', '-2'], 'num_blocks must be at least 0, got -'),
    ('edm2-digits', 'attn_resolutions', None, ['[-1]', '[3]'], 'attn_resolutions [', ),
    ('edm2-digits', 'seed', '--seed', ['-1'], 'seed must be in 0..4294967295, got -1'),
    ('ardm-digits', 'channels', '--channels', ['-1', '0', '2'], 'channels (model_channels) must be at least 4'),
    ('ardm-digits', 'branch', None, ['-2', '-2.0', '1'], 'ARDMNet: branch must be an integer, at least 2'),
    ('ardm-digits', 'levels', None, ['-1', '1'], 'QuantizeEncoder: levels must be in 2..256, got'),
    ('mar-digits', 'data_bound', None, ['-1', '-1.0', '-0.5'], 'MAR: data_bound must be positive (or None: no clipping), got'),
    ('mar-digits', 'head_steps', None, ['-1', '0'], "head_steps an integer, at least 1 (or None: the head's own)"),
    ('mar-digits', 'width', None, ['-1', '0'], 'MAR: width must be at least 1, got'),
])
def test_a_checked_option_has_one_message_for_every_bad_value(digits_zip, tmp_path, preset, option, flag, values, message):
    base = ['--preset', preset, '--data', digits_zip, '--outdir', str(tmp_path / 'run'), '--dry-run']
    for value in values:
        by_set = expect_cli_error(invoke(base + ['--set', f'{option}={value}']), message)
        assert f'option "{option}"' not in by_set # Not the generic rule of presets.check_value.
        if flag is not None and '.' not in value:
            assert expect_cli_error(invoke(base + [flag, value]), message) == by_set
    assert not os.path.exists(tmp_path / 'run')

# The network of each family checks its sizes (before, ARDM's GroupNorm and MAR's attention heads
# ended --dry-run in a ZeroDivisionError traceback).
@pytest.mark.parametrize('preset, args, message', [
    ('ardm-digits', ['--channels', '0'], 'channels (model_channels) must be at least 4 and divisible by its GroupNorm groups, min(32, channels // 4) (e.g. 64, 128, 256), got 0'),
    ('ardm-digits', ['--channels', '11'], 'channels (model_channels) must be at least 4 and divisible by its GroupNorm groups, min(32, channels // 4) (e.g. 64, 128, 256), got 11'),
    ('mar-digits', ['--set', 'width=0'], 'MAR: width must be at least 1, got 0'),
    ('mar-digits', ['--set', 'num_heads=0'], 'MAR: num_heads must be at least 1, got 0'),
    ('mar-digits', ['--set', 'width=130'], 'MAR: width 130 is not divisible by num_heads 4'),
    ('mar-digits', ['--set', 'patch_size=0'], 'MAR: patch_size must be at least 1, got 0'),
    ('mar-digits-causal', ['--set', 'head_width=0'], 'CausalAR: head_width must be at least 1, got 0'),
])
def test_impossible_network_sizes_are_one_line_errors(digits_zip, tmp_path, preset, args, message):
    result = invoke(['--preset', preset, '--data', digits_zip, '--outdir', str(tmp_path / 'run'), '--dry-run'] + args)
    expect_cli_error(result, 'the network cannot be built', message)
    assert not os.path.exists(tmp_path / 'run')

def test_edm2_training_command_and_default_preset(tmp_path, monkeypatch):
    # The EDM2 README's training command (8 processes there, one here), up to the training loop;
    # and without --preset, EDM2's default edm2-img512-s. Latents as dataset_tool.py encode writes them.
    import zipfile
    import anchors
    (tmp_path / 'datasets').mkdir()
    # Four 16x16 "latents" (mean and std, 4 channels each): the smallest size whose resolutions
    # (16, 8, 4, 2) hold the preset's attn_resolutions [16, 8], which a network must have.
    with zipfile.ZipFile(tmp_path / 'datasets' / 'img512-sd.zip', 'w') as zf:
        for idx in range(4):
            buffer = io.BytesIO()
            np.save(buffer, np.random.RandomState(idx).randn(8, 16, 16).astype(np.float32))
            zf.writestr(f'00000/img-mean-std-{idx:08d}.npy', buffer.getvalue())
        zf.writestr('dataset.json', json.dumps({'labels': [[f'00000/img-mean-std-{idx:08d}.npy', idx] for idx in range(4)]}))
    command = anchors.words('edm2-train-xs')
    assert command[:3] == ['torchrun', '--standalone', '--nproc_per_node=8'] and command[3] == 'train_edm2.py'
    (tmp_path / 'default').mkdir()
    os.symlink(tmp_path / 'datasets', tmp_path / 'default' / 'datasets')
    for args, preset, cwd in [(command[4:], 'edm2-img512-xs', tmp_path),
            ([a for a in command[4:] if not a.startswith('--preset')], 'edm2-img512-s', tmp_path / 'default')]:
        captured = {}
        monkeypatch.setattr(train_edm2.training_loop, 'training_loop', lambda **kwargs: captured.update(kwargs))
        with contextlib.chdir(cwd):
            result = invoke(args)
        assert result.exit_code == 0, result.output
        assert f'Preset {preset} (edm2)' in result.output and captured['batch_gpu'] == 32
        assert captured['network_kwargs']['model_channels'] == presets.resolve(preset).channels
        assert captured['encoder_kwargs']['class_name'] == 'training.encoders.StabilityVAEEncoder'
        assert captured['run_dir'] == 'training-runs/00000-edm2-img512-xs'

def test_bad_boolean_is_a_usage_error(digits_zip, tmp_path):
    result = invoke(['--data', digits_zip, '--outdir', str(tmp_path / 'run'), '--preset', 'edm2-digits', '--cond=maybe'])
    expect_cli_error(result, 'not a valid boolean', exit_code=2) # click's own usage error.
    assert not os.path.exists(tmp_path / 'run')

def test_missing_dataset_is_clear_error(tmp_path):
    result = invoke(['--preset', 'edm2-digits', '--data', str(tmp_path / 'missing.zip'), '--outdir', str(tmp_path / 'run')])
    expect_cli_error(result, '--data', 'missing.zip')
    assert not os.path.exists(tmp_path / 'run')

def test_short_run_and_resume(digits_zip, tmp_path):
    # Sliced in two invocations, the run ends where one invocation ends: the same network,
    # optimizer and EMA bit for bit, one status line per interval, both invocations in the log.
    run_dir = tmp_path / 'run'
    args = ['--preset', 'edm2-digits', '--data', digits_zip, '--duration', '2Ki',
        '--batch', '64', '--status', '1Ki', '--snapshot', '2Ki', '--checkpoint', '1Ki', '--set', 'channels=16']
    invoke_ok(train_edm2.main, *args, '--outdir', run_dir, '--slice', '1Ki')
    assert sorted(f for f in os.listdir(run_dir) if f.startswith('training-state')) == ['training-state-0000001.pt']
    result = invoke_ok(train_edm2.main, *args, '--outdir', run_dir)
    assert 'Resuming from training-state-0000001.pt' in result.output
    files = sorted(os.listdir(run_dir))
    for name in ['log.txt', 'stats.jsonl', 'training_options.json', 'loss.png',
            'network-snapshot-0000002-0.050.pkl', 'network-snapshot-0000002-0.100.pkl', 'training-state-0000002.pt']:
        assert name in files, files
    options = json.load(open(run_dir / 'training_options.json'))
    assert options['preset'] == 'edm2-digits' and options['options']['channels'] == 16
    log = open(run_dir / 'log.txt').read()
    assert log.count('Training from 0 kimg to 1 kimg') == 1 and log.count('Resuming from training-state-0000001.pt') == 1
    assert [json.loads(line)['Progress/kimg'] for line in open(run_dir / 'stats.jsonl')] == [0, 1.024, 2.048]
    invoke_ok(train_edm2.main, *args, '--outdir', tmp_path / 'straight')
    sliced, straight = [torch.load(d / 'training-state-0000002.pt', weights_only=True) for d in [run_dir, tmp_path / 'straight']]
    leaves = lambda state: [t for t in torch.utils._pytree.tree_leaves([state['net'], state['optimizer'], state['ema']]) if isinstance(t, torch.Tensor)]
    assert len(leaves(sliced)) == len(leaves(straight)) > 10
    assert all(torch.equal(a, b) for a, b in zip(leaves(sliced), leaves(straight)))

def test_seed_and_channels_make_the_initial_network(digits_zip, tmp_path):
    # --seed and --channels reach the loop: the kimg-0 snapshot (an EMA of the initial network)
    # is the network the preset's structure with 16 channels gives after torch.manual_seed(seed).
    from torch_utils import persistence
    from torch_utils import util
    kwargs = dict(presets.family_kwargs(presets.resolve('edm2-digits', dict(channels=16)))['network_kwargs'], img_resolution=8,
        img_channels=1, label_dim=10)
    for seed in [0, 7]:
        run_dir = tmp_path / str(seed)
        invoke_ok(train_edm2.main, '--preset', 'edm2-digits', '--data', digits_zip, '--outdir', run_dir, '--duration', 64, '--batch', 64,
            '--snapshot', '1Ki', '--checkpoint', 0, '--channels', 16, '--seed', seed)
        with open(run_dir / 'network-snapshot-0000000-0.050.pkl', 'rb') as f:
            net = persistence.load_pickle(f)['ema']
        torch.manual_seed(seed)
        expected = util.construct_class_by_name(**kwargs)
        assert net.init_kwargs.model_channels == 16
        names = [name for name, _ in expected.named_parameters()]
        assert names == [name for name, _ in net.named_parameters()]
        assert all(torch.equal(a, b) for a, b in zip(expected.parameters(), net.parameters())), seed

def test_latent_pipeline_end_to_end(tmp_path, tiny_vae):
    # Pixels -> VAE latents (dataset_tool.py encode) -> a latent EDM2 model (train_edm2.py, the
    # VAE given by --set vae) -> images decoded to pixels (generate_images.py) -> scored
    # (calculate_metrics.py gen, and calc on the written PNGs: the same images, the same value).
    import calculate_metrics
    import dataset_tool
    import generate_images
    from torch_utils import persistence
    from training import encoders

    pixels, latents, run = tmp_path / 'pixels.zip', tmp_path / 'latents.zip', tmp_path / 'run'
    invoke_ok(dataset_tool.cmdline, 'convert', '--source', 'builtin:digits-train', '--dest', pixels, '--resolution', '32x32', '--max-images', 64)
    invoke_ok(dataset_tool.cmdline, 'encode', '--source', pixels, '--dest', latents, '--model-url', tiny_vae, '--batch', 32)
    invoke_ok(train_edm2.main, '--preset', 'edm2-digits', '--data', latents, '--outdir', run, '--duration', 1024, '--batch', 32,
        '--status', 512, '--snapshot', 1024, '--checkpoint', 1024, '--set', f'vae={tiny_vae}', '--set', 'channels=16',
        '--set', 'channel_mult=[1,1]')
    snapshot = run / 'network-snapshot-0000001-0.100.pkl'
    with open(snapshot, 'rb') as f:
        data = persistence.load_pickle(f)
    assert isinstance(data['encoder'], encoders.StabilityVAEEncoder) and data['encoder'].vae_name == tiny_vae
    assert (data['ema'].img_channels, data['ema'].img_resolution, data['ema'].label_dim) == (4, 4, 10) # 32 px / 8, 4 channels.
    invoke_ok(generate_images.main, '--net', snapshot, '--outdir', tmp_path / 'out', '--seeds', '0-15', '--steps', 4, '--batch', 8)
    images = [PIL.Image.open(tmp_path / 'out' / f'{seed:06d}.png') for seed in range(16)]
    assert all(image.mode == 'RGB' and image.size == (32, 32) for image in images) # Decoded by the VAE.
    assert len({image.tobytes() for image in images}) == 16

    ref = tmp_path / 'ref.pkl'
    invoke_ok(calculate_metrics.cmdline, 'ref', '--data', pixels, '--dest', ref, '--metrics', 'fd_digits', '--workers', 0)
    gen = invoke_ok(calculate_metrics.cmdline, 'gen', '--net', snapshot, '--ref', ref, '--metrics', 'fd_digits', '--num', 16, '--steps', 4, '--batch', 8)
    calc = invoke_ok(calculate_metrics.cmdline, 'calc', '--images', tmp_path / 'out', '--ref', ref, '--metrics', 'fd_digits', '--num', 16, '--workers', 0)
    values = [json.loads(result.output.strip().splitlines()[-1])['value'] for result in [gen, calc]]
    assert np.isfinite(values[0]) and values[0] > 0 and values[0] == pytest.approx(values[1], rel=1e-9)

def test_causal_mar_through_the_command_lines(tmp_path, tiny_zip):
    # The causal preset, shrunk: trained by train_edm2.py, sampled token by token with guidance
    # from its null class by generate_images.py (the same images for a seed whatever the batch),
    # scored by calculate_metrics.py gen; bits/dim is refused with the reason.
    import calculate_metrics
    import generate_images
    run, out = tmp_path / 'run', tmp_path / 'out'
    invoke_ok(train_edm2.main, '--preset', 'mar-digits-causal', '--data', tiny_zip,
        '--outdir', run, '--duration', 1024, '--batch', 32, '--status', 1024, '--snapshot', 1024, '--checkpoint', 0, '--workers', 0,
        '--set', 'width=16', '--set', 'depth=2', '--set', 'num_heads=2', '--set', 'head_width=16', '--set', 'head_depth=1')
    snapshot = sorted(run.glob('network-snapshot-*.pkl'))[-1]
    for batch, folder in [(2, out / 'a'), (5, out / 'b')]:
        invoke_ok(generate_images.main, '--net', snapshot, '--outdir', folder, '--seeds', '0-4', '--class', 'all', '--guidance', 2,
            '--batch', batch)
    pngs = lambda folder: [(folder / f'{seed:06d}.png').read_bytes() for seed in range(5)]
    assert pngs(out / 'a') == pngs(out / 'b') and len(set(pngs(out / 'a'))) == 5
    bad = helpers.invoke(generate_images.main, '--net', snapshot, '--outdir', out / 'c', '--steps', 3)
    expect_cli_error(bad, 'one token per step', 'got 3')
    assert not (out / 'c').exists()
    ref = tmp_path / 'ref.pkl'
    invoke_ok(calculate_metrics.cmdline, 'ref', '--data', tiny_zip, '--dest', ref, '--metrics', 'fd_digits', '--workers', 0)
    result = invoke_ok(calculate_metrics.cmdline, 'gen', '--net', snapshot, '--ref', ref, '--metrics', 'fd_digits', '--num', 8, '--batch', 8)
    assert np.isfinite(json.loads(result.output.strip().splitlines()[-1])['value'])
    bpd = helpers.invoke(calculate_metrics.cmdline, 'bpd', '--net', snapshot, '--data', tiny_zip, '--workers', 0)
    expect_cli_error(bpd, 'bits/dim does not apply to CausalAR', 'no exact likelihood', 'an ARDM snapshot')

#----------------------------------------------------------------------------
# train_edm2.py under torchrun: two Gloo processes, every real family.

# Tiny versions of the digits presets (no warm-up: 8 steps at the full learning rate): (preset,
# data, overrides). ARDM on 1x1 images is exactly deterministic: with one dimension, the step and
# the order it draws are always the same.
TORCHRUN_FAMILIES = {
    'edm2': ('edm2-digits', 'tiny', dict(channels=8, channel_mult=[1, 1], rampup=0.0)),
    'mar': ('mar-digits', 'tiny', dict(width=16, num_heads=2, encoder_depth=1, decoder_depth=1, head_width=16, head_depth=1,
        batch_mul=1, buffer_tokens=2, rampup=0.0)),
    'ardm': ('ardm-digits', 'one_pixel', dict(channels=8, num_blocks=1)),
}
STEPS, BATCH = 8, 16

def train_args(family, data, outdir, slice_nimg=None):
    preset, kind, overrides = TORCHRUN_FAMILIES[family]
    sliced = ['--slice', str(slice_nimg), '--checkpoint', str(slice_nimg)] if slice_nimg else []
    return ['--preset', preset, '--data', data[kind], '--outdir', str(outdir), '--duration', str(STEPS * BATCH), '--batch', str(BATCH),
        '--status', str(STEPS * BATCH), '--snapshot', '0', '--checkpoint', str(STEPS * BATCH), '--workers', '0',
        *[arg for key, value in overrides.items() for arg in ['--set', f'{key}={value!r}']], *sliced]

def initial_parameters(family, data):
    """The network every run of `family` starts from: the loop's construction with its seed."""
    from torch_utils import misc
    from training import config, training_loop
    preset, kind, overrides = TORCHRUN_FAMILIES[family]
    _, c = config.build(preset, overrides, data=data[kind])
    misc.set_seed(c.seed)
    r = training_loop.build_run(c.dataset_kwargs, c.encoder_kwargs, c.network_kwargs, c.loss_kwargs, c.optimizer_kwargs,
        c.ema_kwargs, torch.device('cpu'))
    return {key: value.detach().clone() for key, value in r.net.named_parameters()}

@pytest.fixture(scope='module')
def torchrun_runs(tmp_path_factory, tiny_zip):
    """Each family trained by 1 process (this one) and, in one torchrun launch, by 2 processes
    (EDM2 and MAR twice: the same command into two run directories; ARDM also resumed by 2
    processes from a training state 1 process wrote halfway).
    -> {family: {'init': parameters, 'one', 'two'[, 'two_again' | 'resumed']: final training
    state}, 'output': what the launch printed}."""
    root = tmp_path_factory.mktemp('torchrun')
    rnd = np.random.RandomState(0)
    data = dict(tiny=tiny_zip, one_pixel=write_dataset(root / 'one-pixel.zip', rnd.randint(0, 256, [40, 1, 1], dtype=np.uint8), rnd.randint(0, 3, 40)))
    names = dict(edm2=['two', 'two_again'], mar=['two', 'two_again'], ardm=['two', 'resumed'])
    with contextlib.redirect_stdout(io.StringIO()):
        invoke_ok(train_edm2.main, *train_args('ardm', data, root / 'ardm-resumed', slice_nimg=STEPS * BATCH // 2))
    launch = torchrun([os.path.join(ROOT, 'tests', 'torchrun_commands.py'),
        json.dumps([['train_edm2', *train_args(family, data, root / f'{family}-{name}')] for family in names for name in names[family]])])
    runs = {'output': launch.stdout}
    for family in TORCHRUN_FAMILIES:
        with contextlib.redirect_stdout(io.StringIO()):
            result = invoke(train_args(family, data, root / f'{family}-one'))
        assert result.exit_code == 0, result.output
        runs[family] = {name: training_state(root / f'{family}-{name}') for name in ['one'] + names[family]}
        runs[family]['init'] = initial_parameters(family, data)
    return runs

def training_state(run_dir):
    (path,) = run_dir.glob('training-state-*.pt')
    return torch.load(path, weights_only=True)

@pytest.mark.parametrize('family', sorted(TORCHRUN_FAMILIES))
def test_torchrun_two_processes(torchrun_runs, family):
    """What must hold exactly. Each rank draws its own noise (seed + rank), so for EDM2 and MAR a
    2-process run is not the 1-process run, and over a few steps their difference is as large as
    the training signal (no useful statistical tolerance). So: the ranks agree (the loop checks
    parameters and buffers when it saves the state, else the run fails), the buffers are the
    1-process run's (random Fourier features from rank 0, ARDM's running per-step loss pooled over
    the ranks), a re-run is bit-identical, and ARDM on 1x1 images, whose loss draws nothing that
    matters, equals the 1-process run to float rounding: the same images per step split over the
    ranks, the gradients averaged, the running loss pooled."""
    runs = torchrun_runs[family]
    one, two, init = runs['one'], runs['two'], runs['init']
    assert one['state']['cur_nimg'] == two['state']['cur_nimg'] == STEPS * BATCH and len(two['rng']) == 2
    buffers = [key for key in one['net'] if key not in init]
    assert bool(buffers) == (family != 'mar') # EDM2: Fourier features; ARDM: Fourier features, step_loss, step_count.
    for key in buffers:
        torch.testing.assert_close(two['net'][key], one['net'][key], rtol=1e-6, atol=1e-9)
    moved = lambda state: max(float((state['net'][k] - init[k]).abs().max()) for k in init)
    assert moved(one) > 1e-4 and moved(two) > 1e-4
    assert all(torch.isfinite(value).all() for value in two['net'].values())
    if family == 'ardm':
        # Also resumed by 2 processes from a training state of 1 (new random streams, with a warning).
        assert 'the checkpoint was written by 1 processes, not 2' in torchrun_runs['output']
        for two in [runs['two'], runs['resumed']]:
            assert float(two['net']['step_count'][0]) == STEPS * BATCH # Every image of both ranks counted.
            for a, b in zip([one['net'], *one['ema']['emas']], [two['net'], *two['ema']['emas']]):
                for key in a:
                    torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-7)
    else:
        for key in two['net']:
            assert torch.equal(two['net'][key], runs['two_again']['net'][key]), key

#----------------------------------------------------------------------------
# Training states across the two codes. tests/data/official_edm2_run/ holds a real training state
# of the official EDM2 train_edm2.py (run on the CPU for 64 steps, see drive_official_cpu.py
# there) and its training_options.json. Before: "no training state loads (... damaged)".

OFFICIAL_RUN = os.path.join(ROOT, 'tests', 'data', 'official_edm2_run')
OFFICIAL_ARGS = ['--data=rgb.zip', '--preset=edm2-img512-xs', '--batch=32', '--status=1Ki', '--snapshot=1Ki', '--checkpoint=1Ki',
    '--channels=4', '--set', 'channel_mult=[1]', '--set', 'num_blocks=1', '--set', 'attn_resolutions=[]', '--set', 'workers=0']

def test_resumes_a_run_of_the_official_code(tmp_path):
    import shutil
    from training import training_loop
    shutil.copytree(OFFICIAL_RUN, tmp_path / 'offrun', ignore=shutil.ignore_patterns('*.py'))
    rnd = np.random.RandomState(0)
    write_dataset(tmp_path / 'rgb.zip', rnd.randint(0, 256, size=[64, 8, 8, 3], dtype=np.uint8), [0] * 32 + [1] * 32)
    official = training_loop.load_training_state(str(tmp_path / 'offrun' / 'training-state-0000002.pt'))
    assert type(official['state']) is dict and official['state']['cur_nimg'] == 2048 and 'rng' not in official
    with contextlib.chdir(tmp_path):
        result = invoke(['--outdir=offrun', '--duration=3Ki', *OFFICIAL_ARGS])
    assert result.exit_code == 0, result.output
    assert 'Resuming from training-state-0000002.pt (a training state of the official EDM2 code)' in result.output
    assert 'changed options: duration (2048 -> 3072)' in result.output # The official options are compared with ours.
    files = os.listdir(tmp_path / 'offrun')
    assert {'training-state-0000002.pt', 'training-state-0000003.pt', 'network-snapshot-0000003-0.050.pkl'} <= set(files)
    ours = training_loop.load_training_state(str(tmp_path / 'offrun' / 'training-state-0000003.pt'))
    # The weights, the optimizer and the EMA continued from the official state: 32 more Adam steps
    # on top of its 64, the time carried on, the network a few small steps from where it was.
    steps = lambda s: {int(v['step']) for v in s['optimizer']['state'].values()}
    assert steps(official) == {64} and steps(ours) == {96}
    assert ours['state']['cur_nimg'] == 3072 and ours['state']['total_elapsed_time'] > official['state']['total_elapsed_time']
    moved = max(float((ours['net'][k] - official['net'][k]).abs().max()) for k in official['net'])
    assert 0 < moved < 0.5
    for ema_theirs, ema_ours in zip(official['ema']['emas'], ours['ema']['emas']):
        assert max(float((ema_ours[k] - ema_theirs[k]).abs().max()) for k in ema_theirs) < moved
    # Ours carries what the official code needs to resume it (verified by running it: it went on
    # from our kimg 2 to 3): its keys, and the loss settings under loss_fn.
    settings = lambda loss: {k: v for k, v in loss.items() if not k.startswith('_')}
    assert set(official) <= set(ours) and settings(ours['loss_fn']) == dict(settings(official['loss_fn']), label_dropout=0.0)
    # The resumption is recorded as for runs of this code (the official arguments stay, still
    # read as an official run: every state is kept), and the next one compares with that record.
    recorded = json.loads((tmp_path / 'offrun' / 'training_options.json').read_text())
    assert 'preset' not in recorded and recorded['total_nimg'] == 2048 and recorded['options']['duration'] == 3072
    assert [change['options'] for change in recorded['changes']] == [{'duration': [2048, 3072]}]
    assert 'data' not in recorded['changes'][0] and recorded['data']['path'] == str(tmp_path / 'rgb.zip')
    with contextlib.chdir(tmp_path):
        result = invoke(['--outdir=offrun', '--duration=4Ki', *OFFICIAL_ARGS])
    assert result.exit_code == 0, result.output
    assert 'changed options: duration (3072 -> 4096)' in result.output and '(a training state of the official EDM2 code)' not in result.output
    assert {'training-state-0000002.pt', 'training-state-0000003.pt', 'training-state-0000004.pt'} <= set(os.listdir(tmp_path / 'offrun'))
    assert '.lock' not in os.listdir(tmp_path / 'offrun')

def test_a_state_that_needs_code_is_named_not_called_damaged(tmp_path, tiny_zip):
    import collections
    run = tmp_path / 'run'
    args = ['--preset', 'edm2-digits', '--data', tiny_zip, '--outdir', str(run), '--duration', '1Ki', '--batch', '64',
        '--status', '1Ki', '--snapshot', '1Ki', '--checkpoint', '1Ki', '--set', 'channels=4']
    assert invoke(args).exit_code == 0
    state = torch.load(run / 'training-state-0000001.pt', weights_only=True)
    state['extra'] = collections.Counter(a=1) # Admitted by weights_only; a class of its own is not:
    state['extra'] = PIL.Image.new('L', (1, 1))
    torch.save(state, run / 'training-state-0000001.pt')
    with pytest.warns(UserWarning, match='falling back'):
        result = invoke(args + ['--duration', '2Ki'])
    expect_cli_error(result, 'training-state-0000001.pt: it holds PIL.Image.Image', 'not a training state of this code or of the official EDM2 code')
