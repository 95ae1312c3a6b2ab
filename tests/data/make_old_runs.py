"""Makes tests/data/runs-1c68c62/: short training runs written by this project's code as it was at
commit 1c68c62 (before issue 25 renamed options and moved MAR's heads), kept as test data so that
tests/test_old_files.py checks that today's code still resumes those runs (their
training_options.json speaks the old option names) and samples their snapshots.

    git archive 1c68c62 | tar -x -C /tmp/tree-1c68c62
    python tests/data/make_old_runs.py --tree /tmp/tree-1c68c62

Every run trains tiny networks on the same 40 random 4x4 grayscale images of 3 classes (the
dataset is rebuilt by the tests from the recipe below) for 1Ki images, with a snapshot and a
training state at the end. Kept: training_options.json and the final snapshot of every run, the
training state of the runs the tests resume (RESUMED); commands.json holds each run's
train_edm2.py arguments (without --data and --outdir).
"""

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

import click

HERE = os.path.dirname(os.path.abspath(__file__))
DEST = os.path.join(HERE, 'runs-1c68c62')

_SHORT = ['--batch', '32', '--duration', '1Ki', '--status', '1Ki', '--snapshot', '1Ki', '--checkpoint', '1Ki', '--workers', '0']
_MAR = ['--set', 'width=16', '--set', 'encoder_depth=1', '--set', 'decoder_depth=1', '--set', 'num_heads=2', '--set', 'buffer_tokens=1',
    '--set', 'head_width=16', '--set', 'head_depth=1', '--set', 'head_sample_steps=3', '--set', 'sample_steps=2']
COMMANDS = {
    # Old names: p_uncond (label dropout) and fp16 (mixed precision).
    'edm2': ['--preset', 'edm2-digits', *_SHORT, '--set', 'channels=8', '--set', 'channel_mult=[1,2]', '--set', 'num_blocks=1',
        '--set', 'attn_resolutions=[2]', '--set', 'ema_stds=[0.1]', '--p-uncond', '0.1', '--set', 'fp16=False'],
    # Old "off" value: branch 0 (here 2: an upscale ARDM with two stages).
    'ardm': ['--preset', 'ardm-digits', *_SHORT, '--set', 'levels=4', '--set', 'branch=2', '--set', 'channels=8', '--set', 'num_blocks=1'],
    # Old names: head_sample_steps; data_bound 1.0 from the preset (0.0 was "off").
    'mar-diffusion': ['--preset', 'mar-digits', *_SHORT, *_MAR],
    'mar-flow-euler': ['--preset', 'mar-digits-flow', *_SHORT, *_MAR, '--set', 'flow_solver=euler'],
    'mar-edm-heun': ['--preset', 'mar-digits-edm', *_SHORT, *_MAR],
    'causal-edm': ['--preset', 'mar-digits-causal', *_SHORT, *_MAR, '--set', 'depth=1'],
}

RESUMED = ['edm2', 'ardm', 'mar-diffusion', 'causal-edm']

def write_tiny_dataset(path, write_dataset):
    """The dataset every run trains on (tests/conftest.py's tiny_zip): 40 random 4x4 images of 3 classes."""
    import numpy as np # pylint: disable=import-outside-toplevel
    rnd = np.random.RandomState(0)
    return write_dataset(path, rnd.randint(0, 256, size=[40, 4, 4], dtype=np.uint8), rnd.randint(0, 3, size=40))

@click.command()
@click.option('--tree', help='A checkout of this project at the commit to record', metavar='DIR', required=True)
@click.option('--dest', help='Output folder', metavar='DIR', default=DEST, show_default=True)
def main(tree, dest):
    tree = os.path.abspath(tree)
    sys.path[:0] = [tree, os.path.join(tree, 'tests')]
    from helpers import write_dataset # pylint: disable=import-outside-toplevel,import-error
    env = dict(os.environ, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='', PYTHONPATH=tree)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_tiny_dataset(os.path.join(tmp, 'tiny.zip'), write_dataset)
        for name, args in COMMANDS.items():
            run_dir = os.path.join(tmp, name)
            subprocess.run([sys.executable, 'train_edm2.py', '--data', data, '--outdir', run_dir, *args], cwd=tree, env=env, check=True)
            shutil.rmtree(os.path.join(dest, name), ignore_errors=True)
            os.makedirs(os.path.join(dest, name))
            keep = ['training_options.json', 'network-snapshot-0000001*.pkl'] + (['training-state-*.pt'] if name in RESUMED else [])
            for path in [path for pattern in keep for path in glob.glob(os.path.join(run_dir, pattern))]:
                shutil.copy(path, os.path.join(dest, name))
    with open(os.path.join(dest, 'commands.json'), 'wt') as f:
        json.dump(COMMANDS, f, indent=2)
    print(f'Saved {dest}')

if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter
