"""Bad input and faults across the tools, run through the real command lines in temporary
folders: each ends with exit code 1 (2 for click's own usage errors), one `Error:` line and no
traceback, and leaves every file as it was (nothing lost, replaced or half-written). Also the
policies behind that: a run directory belongs to one run, an existing output is refused unless
--overwrite, temporaries of killed processes are cleaned up, reference statistics never run code."""

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch

import calculate_metrics
import dataset_tool
import generate_images
import reconstruct_phema
import train_edm2
from helpers import ROOT, invoke, write_dataset, zip_pngs
from helpers import invoke_ok as ok
from simulations import plot_gaussian_K, run_gaussian
from torch_utils import util

TINY_EDM2 = ['--preset', 'edm2-digits', '--batch', '32', '--duration', '2Ki', '--status', '1Ki', '--snapshot', '1Ki',
    '--checkpoint', '1Ki', '--set', 'channels=8', '--set', 'channel_mult=[1,1]', '--set', 'num_blocks=1', '--set', 'attn_resolutions=[]']

def fingerprint(folder):
    """{relative path: sha1} of every file under `folder` (hidden temporaries included)."""
    found = {}
    for root, _dirs, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, 'rb') as f:
                found[os.path.relpath(path, folder)] = hashlib.sha1(f.read()).hexdigest()
    return found

def fails_cleanly(command, args, message, folder, code=1):
    """Run; expect `code`, one Error line containing `message`, no traceback, and every file in
    `folder` as it was (a run's log.txt may only have grown: it records every invocation)."""
    before = fingerprint(folder)
    logs = {name: open(os.path.join(folder, name), 'rb').read() for name in before if name.endswith('log.txt')}
    result = invoke(command, *args)
    assert result.exit_code == code, (args, result.output, repr(result.exception))
    assert isinstance(result.exception, SystemExit), (args, repr(result.exception)) # Not an uncaught exception.
    errors = [line for line in result.output.splitlines() if line.startswith('Error')]
    assert len(errors) == 1 and message in errors[0], (args, result.output)
    for name, content in logs.items():
        assert open(os.path.join(folder, name), 'rb').read().startswith(content), name
    after = fingerprint(folder)
    assert {k: v for k, v in after.items() if k not in logs} == {k: v for k, v in before.items() if k not in logs}, args
    assert set(after) == set(before), args
    return result

@pytest.fixture
def read_only(tmp_path):
    """A folder that even root cannot write into (chattr +i), or chmod 555 for other users."""
    folder = tmp_path / 'read-only'
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
    elif subprocess.run(['chattr', '+i', str(folder)], capture_output=True).returncode != 0:
        pytest.skip('cannot make a read-only folder here (root without chattr)')
    yield folder
    if os.geteuid() == 0:
        subprocess.run(['chattr', '-i', str(folder)], capture_output=True)
    folder.chmod(0o755)

@pytest.fixture(scope='module')
def trained(tmp_path_factory, tiny_zip):
    """Two finished tiny EDM2 runs of different seeds on the same data."""
    root = tmp_path_factory.mktemp('runs')
    for name, seed in [('a', 0), ('b', 1)]:
        ok(train_edm2.main, '--data', tiny_zip, '--outdir', root / name, '--seed', seed, *TINY_EDM2)
    return root

#----------------------------------------------------------------------------
# 1. A run directory belongs to one run.

def test_run_without_a_training_state_is_refused(tmp_path, trained, tiny_zip):
    run = tmp_path / 'copy'
    shutil.copytree(trained / 'a', run)
    for state in run.glob('training-state-*.pt'):
        state.unlink()
    fails_cleanly(train_edm2.main, ['--data', tiny_zip, '--outdir', run, '--seed', 5, *TINY_EDM2],
        'no training state to resume it from', tmp_path)
    # Every training state damaged: refused, not a silent restart that appends to stats.jsonl.
    shutil.rmtree(run)
    shutil.copytree(trained / 'a', run)
    for state in run.glob('training-state-*.pt'):
        with open(state, 'r+b') as f:
            f.truncate(50)
    with pytest.warns(UserWarning, match='falling back'):
        fails_cleanly(train_edm2.main, ['--data', tiny_zip, '--outdir', run, *TINY_EDM2], 'no training state loads', tmp_path)

def test_restart_moves_the_earlier_run_aside(tmp_path, trained, tiny_zip):
    run = tmp_path / 'copy'
    shutil.copytree(trained / 'a', run)
    (run / 'training-state-0000002.pt').unlink()
    (run / 'training-state-0000001.pt').unlink()
    old = fingerprint(run)
    old_id = json.load(open(run / 'training_options.json'))['run_id']
    ok(train_edm2.main, '--data', tiny_zip, '--outdir', run, '--seed', 5, '--restart', *TINY_EDM2)
    aside = [p for p in run.iterdir() if p.name.startswith('previous-')]
    assert len(aside) == 1 and fingerprint(aside[0]) == old # Every old file, unchanged, in one place.
    new_id = json.load(open(run / 'training_options.json'))['run_id']
    assert new_id != old_id
    with open(run / 'network-snapshot-0000002-0.100.pkl', 'rb') as f:
        assert pickle.load(f)['run_id'] == new_id
    assert torch.load(run / 'training-state-0000002.pt', weights_only=True)['run_id'] == new_id

def test_a_training_state_of_another_run_is_refused(tmp_path, trained, tiny_zip):
    # Run b's directory holding run a's newest training state (same preset, same shapes): resuming
    # would continue run a under b's name; refused, naming both runs, nothing touched.
    run = tmp_path / 'copy'
    shutil.copytree(trained / 'b', run)
    shutil.copy(trained / 'a' / 'training-state-0000002.pt', run / 'training-state-0000002.pt')
    ids = [json.load(open(trained / name / 'training_options.json'))['run_id'] for name in 'ab']
    error = fails_cleanly(train_edm2.main, ['--data', tiny_zip, '--outdir', run, *TINY_EDM2],
        'belongs to run', tmp_path)
    assert f'belongs to run {ids[0]}, not to the run {ids[1]}' in error.output

def test_another_preset_in_a_run_directory_is_refused(tmp_path, trained, tiny_zip):
    run = tmp_path / 'copy'
    shutil.copytree(trained / 'a', run)
    fails_cleanly(train_edm2.main, ['--data', tiny_zip, '--outdir', run, '--preset', 'ardm-digits', '--batch', '32'],
        'belongs to a run of preset "edm2-digits", not "ardm-digits"', tmp_path)
    # The same preset with an architecture change: a clear error about the state, not a state_dict dump.
    ok_args = [a if a != 'channels=8' else 'channels=16' for a in TINY_EDM2] + ['--duration', '3Ki']
    fails_cleanly(train_edm2.main, ['--data', tiny_zip, '--outdir', run, *ok_args], 'does not fit this network', tmp_path)

def test_reconstruct_phema_refuses_two_runs(tmp_path, trained):
    run = tmp_path / 'mixed'
    shutil.copytree(trained / 'a', run)
    shutil.copy(trained / 'b' / 'network-snapshot-0000001-0.050.pkl', run / 'network-snapshot-0000001-0.050.pkl')
    fails_cleanly(reconstruct_phema.main, ['--indir', run, '--outdir', run / 'phema', '--outstd', '0.07'],
        'come from different training runs', tmp_path)

def test_reconstruct_phema_on_a_real_run_directory(tmp_path, trained):
    # The kimg-0 snapshots of every run are left out (they made the fit fail: log of 0).
    out = tmp_path / 'phema'
    result = ok(reconstruct_phema.main, '--indir', trained / 'a', '--outdir', out, '--outstd', '0.07,0.12')
    assert '4 snapshots' in result.output and '1 to 2 kimg' in result.output
    assert sorted(os.listdir(out)) == ['phema-0000002-0.070.pkl', 'phema-0000002-0.120.pkl']
    # The outputs policy: an existing output is refused, --overwrite replaces it.
    fails_cleanly(reconstruct_phema.main, ['--indir', trained / 'a', '--outdir', out, '--outstd', '0.07'], 'already exists', tmp_path)
    ok(reconstruct_phema.main, '--indir', trained / 'a', '--outdir', out, '--outstd', '0.07', '--overwrite')

#----------------------------------------------------------------------------
# 2. No output is silently replaced.

def test_calculate_metrics_outputs(tmp_path, tiny_zip):
    dest = tmp_path / 'ref.pkl'
    ok(calculate_metrics.cmdline, 'ref', '--data', tiny_zip, '--metrics', 'fd_digits', '--dest', dest, '--workers', 0)
    fails_cleanly(calculate_metrics.cmdline, ['ref', '--data', tiny_zip, '--metrics', 'fd_digits', '--dest', dest], 'already exists', tmp_path)
    ok(calculate_metrics.cmdline, 'ref', '--data', tiny_zip, '--metrics', 'fd_digits', '--dest', dest, '--workers', 0, '--overwrite')
    results = tmp_path / 'r.jsonl'
    results.write_text(json.dumps(dict(metric='fid', value=1.0, model='m')) + '\n')
    ok(calculate_metrics.cmdline, 'table', '--results', results, '--rows', 'model', '--dest', tmp_path / 't.md')
    fails_cleanly(calculate_metrics.cmdline, ['table', '--results', results, '--rows', 'model', '--dest', tmp_path / 't.md'],
        'already exists', tmp_path)

def test_generate_images_refuses_images_of_another_command(tmp_path, trained):
    snapshots = sorted(str(p) for p in (trained / 'a').glob('network-snapshot-0000002-*.pkl'))
    out = tmp_path / 'out'
    args = ['--outdir', out, '--seeds', '0-3', '--steps', 2, '--class', 1, '--grid', tmp_path / 'grid.png']
    ok(generate_images.main, '--net', snapshots[0], *args)
    made = fingerprint(tmp_path)
    ok(generate_images.main, '--net', snapshots[0], *args) # The same command: the same files.
    assert fingerprint(tmp_path) == made
    fails_cleanly(generate_images.main, ['--net', snapshots[1], *args], 'was not made by this command', tmp_path)
    fails_cleanly(generate_images.main, ['--net', snapshots[0], *args[:-2], '--steps', 3], 'was not made by this command', tmp_path)
    ok(generate_images.main, '--net', snapshots[1], *args, '--overwrite')
    assert fingerprint(out) != {k[4:]: v for k, v in made.items() if k.startswith('out/')}
    ok(generate_images.main, '--net', snapshots[1], '--outdir', out, '--seeds', '4-5', '--steps', 2, '--class', 1) # More seeds.

def test_dataset_tool_overwrite(tmp_path):
    dest = tmp_path / 'd.zip'
    ok(dataset_tool.cmdline, 'convert', '--source', 'builtin:digits-test', '--dest', dest, '--max-images', 5)
    fails_cleanly(dataset_tool.cmdline, ['convert', '--source', 'builtin:digits-test', '--dest', dest], 'already exists', tmp_path)
    ok(dataset_tool.cmdline, 'convert', '--source', 'builtin:digits-test', '--dest', dest, '--max-images', 7, '--overwrite')
    assert len(zip_pngs(dest)) == 7
    # A folder that holds no dataset is never replaced, --overwrite or not.
    (tmp_path / 'notes').mkdir()
    (tmp_path / 'notes' / 'keep.txt').write_text('user data')
    fails_cleanly(dataset_tool.cmdline, ['convert', '--source', 'builtin:digits-test', '--dest', tmp_path / 'notes', '--overwrite'],
        'holds no dataset', tmp_path)

def test_plots_and_simulation_outputs(tmp_path, read_only):
    results = tmp_path / 'results'
    ok(run_gaussian.main, '--tag', 'K', '--values', '1,3', '--seeds', '3', '--num-test', 50, '--results_dir', results)
    ok(plot_gaussian_K.main, '--results_dir', results, '--outdir', tmp_path / 'figs')
    fails_cleanly(plot_gaussian_K.main, ['--results_dir', results, '--outdir', tmp_path / 'figs'], 'already exists', tmp_path)
    ok(plot_gaussian_K.main, '--results_dir', results, '--outdir', tmp_path / 'figs', '--overwrite')
    fails_cleanly(run_gaussian.main, ['--tag', 'K', '--values', '1', '--seeds', '3', '--results_dir', read_only / 'r'],
        'not writable', tmp_path)

#----------------------------------------------------------------------------
# 3. 16-bit images and negative labels.

def test_16bit_grayscale_is_scaled_not_clipped(tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    values = (np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)
    PIL.Image.fromarray(values).save(src / 'a.png')
    assert PIL.Image.open(src / 'a.png').mode == 'I;16'
    ok(dataset_tool.cmdline, 'convert', '--source', src, '--dest', tmp_path / 'out')
    image = PIL.Image.open(next((tmp_path / 'out').rglob('*.png')))
    assert image.mode == 'L'
    np.testing.assert_array_equal(np.asarray(image), np.round(values * (255 / 65535)).astype(np.uint8))

def test_negative_labels_are_refused(tmp_path):
    bad = write_dataset(tmp_path / 'bad.zip', np.zeros([4, 4, 4], dtype=np.uint8), [0, 1, -1, 1])
    fails_cleanly(dataset_tool.cmdline, ['convert', '--source', bad, '--dest', tmp_path / 'out.zip'], 'no class id >= 0', tmp_path)
    fails_cleanly(train_edm2.main, ['--data', bad, '--outdir', tmp_path / 'run', *TINY_EDM2], 'class labels are integers >= 0', tmp_path)
    fails_cleanly(calculate_metrics.cmdline, ['ref', '--data', bad, '--metrics', 'fd_digits', '--dest', tmp_path / 'r.pkl'],
        'class labels are integers >= 0', tmp_path)

def test_mixed_image_sizes_are_found_before_any_work(tmp_path):
    images = [np.zeros([4, 4], dtype=np.uint8)] * 3 + [np.zeros([8, 8], dtype=np.uint8)]
    mixed = write_dataset(tmp_path / 'mixed.zip', images, [0, 1, 2, 0])
    fails_cleanly(train_edm2.main, ['--data', mixed, '--outdir', tmp_path / 'run', *TINY_EDM2], 'img00000003.png has shape [1, 8, 8]', tmp_path)
    fails_cleanly(calculate_metrics.cmdline, ['ref', '--data', mixed, '--metrics', 'fd_digits', '--dest', tmp_path / 'r.pkl', '--workers', 2],
        'img00000003.png has shape [1, 8, 8]', tmp_path)

#----------------------------------------------------------------------------
# 4. Temporaries of killed processes; 5. snapshot names.

def test_stale_temporaries_are_removed_by_the_next_write(tmp_path):
    # A process killed (SIGKILL) in the middle of writing leaves its temporary behind.
    target = tmp_path / 'training-state-0000064.pt'
    code = (f'import os, signal\nfrom torch_utils import util\nwith util.atomic_path({str(target)!r}) as tmp:\n'
        '    open(tmp, "wb").write(b"x" * 1000)\n    os.kill(os.getpid(), signal.SIGKILL)\n')
    subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    left = [n for n in os.listdir(tmp_path) if n.startswith('.training-state-0000064.pt.tmp-')]
    assert len(left) == 1
    util.remove_stale_temporaries(str(tmp_path / 'training-state-*.pt')) # What the loop does at start.
    assert os.listdir(tmp_path) == []
    subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    with util.atomic_path(target) as tmp: # The next write of the same target.
        open(tmp, 'wb').write(b'done')
    assert os.listdir(tmp_path) == [target.name]

def test_snapshot_interval_below_1000_images_is_refused(tmp_path, tiny_zip):
    fails_cleanly(train_edm2.main, ['--data', tiny_zip, '--outdir', tmp_path / 'run', *TINY_EDM2, '--snapshot', 512],
        'snapshot names count thousands of images', tmp_path)

#----------------------------------------------------------------------------
# Pickles are code: reference statistics never run any.

class _Payload:
    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))

def test_reference_statistics_never_run_code(tmp_path, tiny_zip):
    evil = tmp_path / 'evil.pkl'
    payload = _Payload()
    payload.marker = tmp_path / 'pwned'
    with open(evil, 'wb') as f:
        pickle.dump({'fd_digits': {'mu': payload, 'sigma': np.eye(20)}}, f)
    fails_cleanly(calculate_metrics.cmdline, ['calc', '--images', tiny_zip, '--ref', evil, '--metrics', 'fd_digits', '--num', 10],
        'refusing to load posix.system', tmp_path)
    assert not payload.marker.exists()
    # .npz: statistics without pickle, written by ref and read back by calc.
    npz = tmp_path / 'ref.npz'
    ok(calculate_metrics.cmdline, 'ref', '--data', tiny_zip, '--metrics', 'fd_digits', '--dest', npz, '--workers', 0)
    with np.load(npz, allow_pickle=False) as data:
        assert sorted(data.files) == ['fd_digits.mu', 'fd_digits.sigma', 'num_images'] and int(data['num_images']) == 40
    result = ok(calculate_metrics.cmdline, 'calc', '--images', tiny_zip, '--ref', npz, '--metrics', 'fd_digits', '--num', 40, '--workers', 0)
    assert json.loads(result.output.strip().splitlines()[-1])['value'] < 1e-9

#----------------------------------------------------------------------------
# Tracebacks that became one-line errors.

def test_one_line_errors(tmp_path, trained, tiny_zip, read_only):
    snapshot = str(sorted((trained / 'a').glob('network-snapshot-0000002-*.pkl'))[0])
    (tmp_path / 'a-file').write_text('not a folder')
    from training import networks_ardm # An ARDM snapshot to guide an EDM2 one with.
    ardm = tmp_path / 'ardm.pkl'
    with open(ardm, 'wb') as f:
        pickle.dump(dict(ema=networks_ardm.ARDMNet(4, 1, 3, levels=4, model_channels=8, num_blocks=1)), f)
    cases = [
        (dataset_tool.cmdline, ['convert', '--source', 'builtin:digits', '--dest', tmp_path / 'o.zip', '--classes', '5-2'], '--classes'),
        (train_edm2.main, ['--data', tiny_zip, '--outdir', tmp_path / 'run', *TINY_EDM2, '--batch', 0], 'batch and duration must be at least 1'),
        (train_edm2.main, ['--data', tiny_zip, '--outdir', tmp_path / 'run', *TINY_EDM2, '--set', 'num_blocks=abc'], 'option "num_blocks" expects an integer'),
        (train_edm2.main, ['--data', tiny_zip, '--outdir', tmp_path / 'run', *TINY_EDM2, '--set', 'lr=fast'], 'option "lr" expects a number'),
        (train_edm2.main, ['--data', tiny_zip, '--outdir', tmp_path / 'a-file', *TINY_EDM2], 'is a file, not a folder'),
        (train_edm2.main, ['--data', tiny_zip, '--outdir', read_only / 'run', *TINY_EDM2], 'not writable'),
        (train_edm2.main, ['--data', tiny_zip, '--outdir', tmp_path / 'run', *TINY_EDM2, '--set', 'channel_mult=[1,2,2,2]'], 'too many for 4x4'),
        (generate_images.main, ['--net', snapshot, '--gnet', ardm, '--guidance', 2, '--outdir', tmp_path / 'g'], 'guide with a network of the same kind'),
        (calculate_metrics.cmdline, ['gen', '--net', snapshot, '--gnet', ardm, '--guidance', 2, '--metrics', 'digits_acc', '--num', 4], 'guide with a network of the same kind'),
        (calculate_metrics.cmdline, ['ref', '--data', tiny_zip, '--metrics', 'fd_digits', '--dest', read_only / 'r.pkl'], 'not writable'),
        (calculate_metrics.cmdline, ['gen', '--net', snapshot, '--metrics', 'digits_acc', '--num', 4, '--results', read_only / 'r.jsonl'], 'not writable'),
        (reconstruct_phema.main, ['--indir', trained / 'a', '--outdir', read_only / 'p', '--outstd', '0.07'], 'not writable'),
        (generate_images.main, ['--net', trained / 'a', '--outdir', tmp_path / 'g'], 'is a folder, not a snapshot'),
        (generate_images.main, ['--net', snapshot, '--guidance', -1, '--outdir', tmp_path / 'g'], 'guidance must be at least 0'),
        (calculate_metrics.cmdline, ['gen', '--net', snapshot, '--guidance', -0.5, '--metrics', 'digits_acc', '--num', 4], 'guidance must be at least 0'),
    ]
    for command, args, message in cases:
        fails_cleanly(command, args, message, tmp_path)
