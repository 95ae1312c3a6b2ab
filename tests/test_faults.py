"""Bad input and faults across the tools, run through the real command lines in temporary
folders: each ends with exit code 1 (2 for click's own usage errors), one `Error:` line and no
traceback, and leaves every file as it was (nothing lost, replaced or half-written). Also the
policies behind that: a run directory belongs to one run, an existing output is refused unless
--overwrite, temporaries of killed processes are cleaned up, reference statistics never run code."""

import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile

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
from torch_utils import persistence
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
    # Other seeds into the folder of another network's images: before, two models in one folder.
    fails_cleanly(generate_images.main, ['--net', snapshots[1], '--outdir', out, '--seeds', '10-11', '--steps', 2, '--class', 1],
        'holds 000000.png, made by another command (another network or options): adding images there would mix two models', tmp_path)
    # A PNG whose header claims 30000x30000 pixels: refused as not made by this command, not PIL's DecompressionBombError.
    (tmp_path / 'big').mkdir()
    (tmp_path / 'big' / '000000.png').write_bytes(png_header(30000, 30000))
    fails_cleanly(generate_images.main, ['--net', snapshots[0], '--outdir', tmp_path / 'big', '--seeds', '0', '--steps', 2],
        'was not made by this command', tmp_path)
    shutil.rmtree(tmp_path / 'big')
    ok(generate_images.main, '--net', snapshots[1], *args, '--overwrite')
    assert fingerprint(out) != {k[4:]: v for k, v in made.items() if k.startswith('out/')}
    ok(generate_images.main, '--net', snapshots[1], '--outdir', out, '--seeds', '4-5', '--steps', 2, '--class', 1) # More seeds.

def test_dataset_tool_overwrite(tmp_path):
    convert = lambda dest, *args: ['convert', '--source', 'builtin:digits-test', '--dest', dest, *args]
    dest = tmp_path / 'd.zip'
    ok(dataset_tool.cmdline, *convert(dest, '--max-images', 5))
    fails_cleanly(dataset_tool.cmdline, convert(dest), 'already exists', tmp_path)
    ok(dataset_tool.cmdline, *convert(dest, '--max-images', 7, '--overwrite'))
    assert len([n for n in zipfile.ZipFile(dest).namelist() if n.endswith('.png')]) == 7
    ok(dataset_tool.cmdline, *convert(tmp_path / 'folder', '--max-images', 5))
    ok(dataset_tool.cmdline, *convert(tmp_path / 'folder', '--max-images', 3, '--overwrite'))
    assert sorted(os.listdir(tmp_path / 'folder' / '00000')) == [f'img{i:08d}.png' for i in range(3)]
    # --overwrite replaces only what the tool wrote, never a folder (or ZIP) holding anything else,
    # dataset.json or not. Before: a project folder with a dataset.json lost its src/ and notes.
    (tmp_path / 'notes').mkdir()
    (tmp_path / 'notes' / 'keep.txt').write_text('user data')
    project = tmp_path / 'project'
    ok(dataset_tool.cmdline, *convert(project, '--max-images', 2))
    (project / 'src').mkdir()
    (project / 'src' / 'train.py').write_text('print("my code")')
    (project / 'README.md').write_text('my notes')
    (project / 'results').mkdir() # An empty folder counts too.
    with zipfile.ZipFile(tmp_path / 'backup.zip', 'w') as zf:
        zf.writestr('dataset.json', '{"labels": null}')
        zf.writestr('thesis.tex', 'chapter 1')
    (tmp_path / 'not-a-zip.zip').write_text('plain text')
    for target in ['notes', 'project', 'backup.zip', 'not-a-zip.zip']:
        fails_cleanly(dataset_tool.cmdline, convert(tmp_path / target, '--overwrite'), 'that dataset_tool.py did not write', tmp_path)
    fails_cleanly(dataset_tool.cmdline, convert(tmp_path / 'notes' / 'keep.txt', '--overwrite'), 'is a file; name a folder', tmp_path)

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

#----------------------------------------------------------------------------
# A run directory is one run, also under concurrency; a crash never wedges it.

def python_env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, 'tests')]), OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')

def wait_for(condition, timeout=120, what='a condition'):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f'timed out waiting for {what}'
        time.sleep(0.05)

def test_two_runs_started_together_on_one_directory(tmp_path, tiny_zip):
    # Before: both exited 0, their snapshots interleaved under one run id. Now the first to take
    # the directory's lock trains (stopped here by SIGTERM, as a cluster would), the other is refused.
    run = tmp_path / 'run'
    logs = [tmp_path / f'seed{seed}.txt' for seed in (0, 1)]
    procs = [subprocess.Popen([sys.executable, 'train_edm2.py', '--data', tiny_zip, '--outdir', str(run), '--seed', str(seed),
        *TINY_EDM2, '--duration', '1024Ki'], cwd=ROOT, env=python_env(), stdout=open(log, 'w'), stderr=subprocess.STDOUT)
        for seed, log in zip((0, 1), logs)]
    try:
        wait_for(lambda: any(p.poll() is not None for p in procs), what='the second run to be refused')
        loser = next(i for i, p in enumerate(procs) if p.poll() is not None)
        winner = procs[1 - loser]
        wait_for(lambda: (run / 'stats.jsonl').exists(), what='the first status line') # Its signal handler is in place.
        winner.send_signal(signal.SIGTERM)
        assert winner.wait(timeout=120) == 128 + signal.SIGTERM
    finally:
        for p in procs:
            p.kill()
    output = logs[loser].read_text()
    assert procs[loser].returncode == 1 and 'Traceback' not in output, output
    errors = [line for line in output.splitlines() if line.startswith('Error')]
    assert len(errors) == 1 and 'is in use by another training process' in errors[0] and f'pid {winner.pid},' in errors[0], output
    options = json.load(open(run / 'training_options.json'))
    assert options['config']['seed'] == 1 - loser
    states = sorted(run.glob('training-state-*.pt'))
    assert states and all(torch.load(p, weights_only=True)['run_id'] == options['run_id'] for p in states)
    assert not (run / '.lock').exists()
    # A holder killed with SIGKILL leaves its lock file behind, not the lock: the same command goes on.
    code = 'import os, signal, sys\nfrom training import runs\nruns.lock(sys.argv[1])\nos.kill(os.getpid(), signal.SIGKILL)'
    subprocess.run([sys.executable, '-c', code, str(run)], cwd=ROOT, env=python_env())
    assert 'pid' in (run / '.lock').read_text()
    newest = lambda: torch.load(max(run.glob('training-state-*.pt'), key=os.path.getmtime), weights_only=True)['state']['cur_nimg']
    stopped_at = newest()
    result = ok(train_edm2.main, '--data', tiny_zip, '--outdir', run, '--seed', 1 - loser, *TINY_EDM2, '--duration', '1024Ki', '--slice', 64)
    assert 'Resuming from' in result.output and newest() == stopped_at + 64 and not (run / '.lock').exists()

def test_a_locked_directory_under_torchrun(tmp_path, tiny_zip):
    # Rank 0 takes the lock and tells the others; rank 0 alone prints the error, no rank prints a
    # traceback, and the launchers' torchrun (torch_utils.torchrun) ends with one line of its own
    # instead of torchrun's ChildFailedError report, exiting with the processes' status.
    from training import runs
    run = tmp_path / 'run'
    held = runs.lock(str(run))
    try:
        result = subprocess.run([sys.executable, '-m', 'torch_utils.torchrun', '--standalone', '--nproc_per_node=2', 'train_edm2.py',
            '--data', tiny_zip, '--outdir', str(run), *TINY_EDM2], cwd=ROOT, env=python_env(), capture_output=True, text=True, timeout=300)
        holder = (run / '.lock').read_text()
        dry_run = invoke(train_edm2.main, '--data', tiny_zip, '--outdir', run, *TINY_EDM2, '--dry-run') # Probes the lock too.
    finally:
        held.release()
    assert dry_run.exit_code == 1 and 'is in use by another training process' in dry_run.output
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if line.startswith('Error')]
    assert result.returncode == 1 and len(errors) == 1 and 'is in use' in errors[0] and holder.strip() in errors[0], output
    assert 'Traceback' not in output and 'ChildFailedError' not in output, output
    launcher = [line for line in output.splitlines() if line.startswith('torchrun: ')]
    # Both ranks end with status 1 (or rank 1 is stopped by torchrun first: signal 15).
    assert len(launcher) == 1 and re.fullmatch(r'torchrun: train_edm2\.py: ranks? 0(, 1)? ended with exit status 1'
        r'(; rank 1 ended with signal 15)? \(the output is above\)', launcher[0]), output
    assert not run.exists()

def test_a_start_that_crashed_before_its_first_training_state_starts_again(tmp_path, tiny_zip):
    # Images whose data is cut short behind an intact header pass the checks before training; the
    # first step fails on them, after the options, the kimg-0 status line and snapshots were written.
    # Before: the same command (what an automatic requeue runs) was refused until --restart.
    data, run = tmp_path / 'data.zip', tmp_path / 'run'
    with zipfile.ZipFile(tiny_zip) as good, zipfile.ZipFile(data, 'w') as bad:
        for index, name in enumerate(good.namelist()):
            content = good.read(name)
            bad.writestr(name, content[:60] if name.endswith('.png') and index > 0 else content)
    args = ['--data', data, '--outdir', run, *TINY_EDM2]
    result = invoke(train_edm2.main, *args)
    assert result.exit_code == 1 and len([line for line in result.output.splitlines() if line.startswith('Error')]) == 1
    assert sorted(os.listdir(run)) == ['log.txt', 'network-snapshot-0000000-0.050.pkl', 'network-snapshot-0000000-0.100.pkl',
        'stats.jsonl', 'training_options.json']
    first_id = json.load(open(run / 'training_options.json'))['run_id']
    shutil.copy(tiny_zip, data) # The fault is gone; the same command again.
    result = ok(train_edm2.main, *args)
    assert 'starting again' in result.output
    run_id = json.load(open(run / 'training_options.json'))['run_id']
    assert run_id != first_id and len([line for line in open(run / 'stats.jsonl')]) == 3 # kimg 0, 1, 2 of the new start only.
    with open(run / 'network-snapshot-0000000-0.050.pkl', 'rb') as f:
        assert pickle.load(f)['run_id'] == run_id
    # Outputs beyond the start without a training state are still refused (test above).

def test_resuming_on_other_data(tmp_path, trained, tiny_zip):
    # Before: no word, the options file kept the old path, and data of another shape was blamed
    # on "an architecture option".
    run = tmp_path / 'copy'
    shutil.copytree(trained / 'a', run)
    rnd = np.random.RandomState(1)
    other = write_dataset(tmp_path / 'other.zip', rnd.randint(0, 256, size=[40, 4, 4], dtype=np.uint8), rnd.randint(0, 3, size=40))
    result = ok(train_edm2.main, '--data', other, '--outdir', run, *TINY_EDM2, '--duration', '3Ki')
    assert f'Note: resuming in {run} with another --data: {other}' in result.output
    options = json.load(open(run / 'training_options.json'))
    assert options['data']['path'] == other and options['config']['dataset_kwargs']['path'] == other
    assert options['changes'][-1]['data'][0]['path'] == tiny_zip and options['changes'][-1]['options'] == dict(duration=[2048, 3072])
    five = write_dataset(tmp_path / 'five.zip', rnd.randint(0, 256, size=[40, 4, 4], dtype=np.uint8), rnd.randint(0, 5, size=40))
    fails_cleanly(train_edm2.main, ['--data', five, '--outdir', run, *TINY_EDM2, '--duration', '4Ki'],
        f'(40 images of 1x4x4, 5 classes) cannot continue the run in {run}, which was trained on {other} (40 images of 1x4x4, 3 classes)', tmp_path)

def test_a_finished_run_rewrites_a_damaged_final_snapshot(tmp_path, trained, tiny_zip):
    # Before: "Done", with the truncated file left in place.
    run = tmp_path / 'copy'
    shutil.copytree(trained / 'a', run)
    final = run / 'network-snapshot-0000002-0.050.pkl'
    with open(final, 'r+b') as f:
        f.truncate(os.path.getsize(final) // 2)
    before = fingerprint(run)
    result = ok(train_edm2.main, '--data', tiny_zip, '--outdir', run, '--seed', 0, *TINY_EDM2)
    assert 'Rewriting network-snapshot-0000002-0.050.pkl (missing or damaged)' in result.output and 'Done' in result.output
    rewritten, original = [persistence.load_pickle(open(path, 'rb')) for path in [final, trained / 'a' / final.name]]
    assert rewritten['run_id'] == original['run_id'] and rewritten['sources'] == original['sources']
    for (name, a), (_, b) in zip(rewritten['ema'].state_dict().items(), original['ema'].state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    after = fingerprint(run)
    assert {k for k in after if after[k] != before.get(k)} == {final.name, 'log.txt'}

def test_a_full_disk_while_saving_a_training_state(tmp_path, tiny_zip):
    # A file-size limit between a snapshot's size (~130 kB) and a training state's (~430 kB): the
    # write of training-state-0000002.pt fails as on a full disk. Before: a 40-line torch error.
    import resource
    run = tmp_path / 'run'
    args = ['--data', tiny_zip, '--outdir', run, *TINY_EDM2]
    ok(train_edm2.main, *args, '--slice', '1Ki')
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, hard))
    try:
        result = invoke(train_edm2.main, *args)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    errors = [line for line in result.output.splitlines() if line.startswith('Error')]
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit) and len(errors) == 1, result.output
    assert f'cannot write {run}/training-state-0000002.pt (File too large); nothing of it was kept' in errors[0]
    assert sorted(p.name for p in run.glob('*training-state*')) == ['training-state-0000001.pt'] # No temporary left.
    assert errors[0] in open(run / 'log.txt').read()
    result = ok(train_edm2.main, *args) # Space again: resumes and finishes.
    assert 'Resuming from training-state-0000001.pt' in result.output and (run / 'training-state-0000002.pt').exists()

#----------------------------------------------------------------------------
# Non-finite and impossible values: refused before any work, or the run stops.

def test_impossible_training_values_are_refused(tmp_path, tiny_zip):
    run = ['--data', tiny_zip, '--outdir', tmp_path / 'run', *TINY_EDM2]
    for args, message in [
            (['--lr', 'inf'], 'option "lr" must be a finite number, got inf'),
            (['--P_mean', 'nan'], 'option "P_mean" must be a finite number'),
            (['--set', 'num_blocks=-1'], 'num_blocks must be at least 0, got -1'),
            (['--set', 'attn_resolutions=[3]'], 'attn_resolutions [3] may name only resolutions of this network (4, 2)'),
            (['--set', 'ema_stds=[]'], 'give one or more EMA stds'),
            (['--set', 'ema_stds=[0.0501,0.0504]'], 'differ in their first three decimals'),
            (['--seed', 2**32], 'seed must be in 0..4294967295')]:
        fails_cleanly(train_edm2.main, run + args, message, tmp_path)
    assert not (tmp_path / 'run').exists()

def test_a_diverging_run_stops_with_an_error(tmp_path, tiny_zip):
    # Before: --lr inf trained to all-NaN parameters and said "Done". A finite but absurd rate
    # makes the loss overflow within a few steps: the run stops, nothing after that is saved.
    run = tmp_path / 'run'
    result = invoke(train_edm2.main, '--data', tiny_zip, '--outdir', run, *TINY_EDM2, '--lr', '1e30')
    errors = [line for line in result.output.splitlines() if line.startswith('Error')]
    assert result.exit_code == 1 and len(errors) == 1 and 'the loss is not finite (NaN or inf) at 0.' in errors[0], result.output
    assert 'training diverged' in errors[0] and 'Done' not in result.output
    assert not list(run.glob('training-state-*')) and sorted(p.name for p in run.glob('network-snapshot-*')) == [
        'network-snapshot-0000000-0.050.pkl', 'network-snapshot-0000000-0.100.pkl']

def test_impossible_generation_and_metric_values_are_refused(tmp_path, trained, tiny_zip):
    snapshot = str(sorted((trained / 'a').glob('network-snapshot-0000002-*.pkl'))[0])
    ref = tmp_path / 'ref.npz'
    ok(calculate_metrics.cmdline, 'ref', '--data', tiny_zip, '--metrics', 'fd_digits', '--dest', ref, '--workers', 0)
    stats = dict(np.load(ref))
    bad_refs = {}
    for name, sigma in [('negative', -np.eye(20)), ('asymmetric', np.triu(np.ones([20, 20]))), ('nan', np.full([20, 20], np.nan))]:
        bad_refs[name] = tmp_path / f'{name}.npz'
        np.savez(bad_refs[name], **dict(stats, **{'fd_digits.sigma': sigma}))
    (tmp_path / 'other.csv').write_text('K,accuracy\n1,0.5\n')
    gen = ['gen', '--net', snapshot, '--metrics', 'fd_digits', '--ref', ref, '--num', 4]
    cases = [
        (generate_images.main, ['--net', snapshot, '--outdir', tmp_path / 'g', '--guidance', 'nan'], 'guidance must be at least 0 and finite'),
        (generate_images.main, ['--net', snapshot, '--outdir', tmp_path / 'g', '--guidance', 'inf'], 'guidance must be at least 0 and finite'),
        (calculate_metrics.cmdline, gen + ['--guidance', 'nan'], 'guidance must be at least 0 and finite'),
        (generate_images.main, ['--net', snapshot, '--outdir', tmp_path / 'g', '--sigma_min', 100], 'need 0 < sigma_min < sigma_max'),
        (generate_images.main, ['--net', snapshot, '--outdir', tmp_path / 'g', '--S_noise', 'nan'], 'sampling option S_noise=nan: must be a finite number'),
        # Before: a MemoryError, and seed 2^32 gave seed 0's image.
        (generate_images.main, ['--net', snapshot, '--outdir', tmp_path / 'g', '--seeds', '0-99999999999'], '"0-99999999999" is outside 0..4294967295'),
        (generate_images.main, ['--net', snapshot, '--outdir', tmp_path / 'g', '--seeds', '4294967296'], '"4294967296" is outside 0..4294967295'),
        (generate_images.main, ['--net', snapshot, '--outdir', tmp_path / 'g', '--seeds', '1,0-9999999'], 'has 10,000,001 values, more than the 10,000,000'),
        (calculate_metrics.cmdline, gen[:-1] + ['2', '--seed', 2**32 - 1], 'seeds are 0..4294967295'),
        # Before: FD 0.0 against a covariance that no images have.
        (calculate_metrics.cmdline, gen[:-3] + [bad_refs['negative'], '--num', 4], 'not positive semi-definite'),
        (calculate_metrics.cmdline, ['calc', '--images', tiny_zip, '--ref', bad_refs['asymmetric'], '--metrics', 'fd_digits', '--num', 4],
            'the covariance is not symmetric'),
        (calculate_metrics.cmdline, ['calc', '--images', tiny_zip, '--ref', bad_refs['nan'], '--metrics', 'fd_digits', '--num', 4],
            'they hold NaN or inf'),
        # Before: 0.0, the digits classifier's view of a network of three 4x4 classes.
        (calculate_metrics.cmdline, ['gen', '--net', snapshot, '--metrics', 'digits_acc', '--num', 4], 'has 3 classes and records no source names'),
        # Before: KeyError.
        (plot_gaussian_K.main, ['--csv', tmp_path / 'other.csv', '--outdir', tmp_path / 'figs'], "has no column 'empirical TV of single'"),
    ]
    for command, args, message in cases:
        fails_cleanly(command, args, message, tmp_path)
    from training import detectors
    cifar = [dict(label=i, name=name, original_id=i) for i, name in enumerate(['airplane', 'automobile', 'bird', 'cat', 'deer',
        'dog', 'frog', 'horse', 'ship', 'truck'])]
    with pytest.raises(ValueError, match='"airplane" .original id 0., not one of the digits'):
        detectors.DigitsClassifier.check_network(10, cifar, 'the network')
    detectors.DigitsClassifier.check_network(2, [dict(label=0, name='3', original_id=3), dict(label=1, name='8', original_id=8)], 'x')

def test_results_are_appended_after_an_unfinished_last_line(tmp_path, tiny_zip):
    # Before: the new record was glued onto the old one and the file no longer parsed.
    ref, results = tmp_path / 'ref.npz', tmp_path / 'r.jsonl'
    ok(calculate_metrics.cmdline, 'ref', '--data', tiny_zip, '--metrics', 'fd_digits', '--dest', ref, '--workers', 0)
    results.write_text('{"metric": "fid", "value": 1.0, "model": "m"}')
    ok(calculate_metrics.cmdline, 'calc', '--images', tiny_zip, '--ref', ref, '--metrics', 'fd_digits', '--num', 40, '--workers', 0,
        '--results', results, '--tag', 'model=n')
    lines = results.read_text().splitlines()
    assert lines[0] == '{"metric": "fid", "value": 1.0, "model": "m"}' and len(lines) == 2 and results.read_text().endswith('\n')
    assert json.loads(lines[1])['model'] == 'n' and json.loads(lines[1])['value'] < 1e-9

#----------------------------------------------------------------------------
# Conversion: huge images, signals.

def png_header(width, height):
    """A PNG that is only a header claiming width x height pixels (and an empty image stream)."""
    import struct
    import zlib
    chunk = lambda kind, data: struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0))
        + chunk(b'IDAT', zlib.compress(b'')) + chunk(b'IEND', b''))

def test_huge_images_are_refused_before_any_work(tmp_path, tiny_zip):
    # Before: --resolution 65536x65536 ran until the kernel killed it; a PNG whose header says
    # 30000x30000 gave PIL's DecompressionBombError traceback.
    fails_cleanly(dataset_tool.cmdline, ['convert', '--source', 'builtin:digits-test', '--dest', tmp_path / 'o.zip', '--resolution',
        '65536x65536', '--workers', 16], 'converting takes about 768.0 GiB of memory', tmp_path)
    src = tmp_path / 'src'
    src.mkdir()
    PIL.Image.fromarray(np.zeros([4, 4], dtype=np.uint8)).save(src / 'a.png')
    (src / 'b.png').write_bytes(png_header(30000, 30000))
    with zipfile.ZipFile(tiny_zip) as good, zipfile.ZipFile(tmp_path / 'bomb.zip', 'w') as bad:
        for name in good.namelist():
            bad.writestr(name, png_header(30000, 30000) if name.endswith('00000039.png') else good.read(name))
    for command, args in [
            (dataset_tool.cmdline, ['convert', '--source', src, '--dest', tmp_path / 'o.zip']),
            (train_edm2.main, ['--data', tmp_path / 'bomb.zip', '--outdir', tmp_path / 'run', *TINY_EDM2]),
            (calculate_metrics.cmdline, ['ref', '--data', tmp_path / 'bomb.zip', '--metrics', 'fd_digits', '--dest', tmp_path / 'r.pkl'])]:
        fails_cleanly(command, args, 'exceeds limit of 178956970 pixels', tmp_path)

def test_convert_stops_cleanly_on_sigterm_and_ctrl_c(tmp_path):
    # Before: worker tracebacks, and an 84 MB hidden temporary left behind. SIGTERM goes to the
    # main process (kill PID), Ctrl-C's SIGINT to the whole process group (as a terminal sends it).
    procs = {}
    for name in ['term', 'int']:
        (tmp_path / name).mkdir()
        procs[name] = subprocess.Popen([sys.executable, 'dataset_tool.py', 'convert', '--source', 'builtin:digits-train', '--dest',
            str(tmp_path / name / 'out.zip'), '--resolution', '512x512', '--workers', '2'], cwd=ROOT, env=python_env(),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        for name, proc in procs.items():
            temporary = lambda: [p for p in (tmp_path / name).iterdir() if p.stat().st_size > 2**20] # A few images in.
            wait_for(lambda: temporary() or proc.poll() is not None, what='the conversion to start writing')
            if name == 'term':
                proc.send_signal(signal.SIGTERM)
            else:
                os.killpg(proc.pid, signal.SIGINT)
        outputs = {name: proc.communicate(timeout=120) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            proc.kill()
    for (name, proc), signum in zip(procs.items(), [signal.SIGTERM, signal.SIGINT]):
        stdout, stderr = outputs[name]
        errors = [line for line in stderr.splitlines() if line.startswith('Error')]
        assert proc.returncode == 128 + signum and 'Traceback' not in stderr, (name, stderr)
        assert len(errors) == 1 and f'stopped by {signum.name}; nothing was written' in errors[0], (name, stderr)
        assert os.listdir(tmp_path / name) == [], name

def test_detector_files_that_run_code_say_so_where_the_option_is():
    # --inception (NVIDIA's pickle) and a pickled --dinov2-model run the code they hold.
    for command in ['calc', 'gen', 'ref', 'weights']:
        text = ' '.join(ok(calculate_metrics.cmdline, command, '--help').output.split())
        assert "a pickle runs the code it holds: use only NVIDIA's file or one you trust" in text, command
        assert 'or a pickled module, which runs the code it holds: use only a file you trust' in text, command
    readme = ' '.join(open(os.path.join(ROOT, 'README.md')).read().split())
    assert 'So do the feature networks of the metrics when given as files: `--inception`' in readme
