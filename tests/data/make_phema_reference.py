"""Makes tests/data/phema_official.npz (see tests/test_phema.py): the inputs, taken from a run of
train_edm2.py, and the outputs of the official NVlabs/edm2 reconstruct_phema.py run on them.
Run once by hand, from the repository root, with a checkout of NVlabs/edm2 (4bf8162):

    python train_edm2.py --preset edm2-digits --data digits-train.zip --outdir RUN --duration 96Ki \\
        --batch 1024 --snapshot 32Ki --checkpoint 96Ki --status 32Ki \\
        --set channels=2 --set channel_mult=[1] --set num_blocks=1 --set attn_resolutions=[]
    PYTHONPATH=.:tests python tests/data/make_phema_reference.py --run RUN --edm2 EDM2_CHECKOUT

Nothing of the official code is copied: its script runs in its own tree, in a subprocess, on
snapshot files written by tests/test_phema.write_snapshots, and only the parameters it wrote are
kept (read back with this project's loader)."""

import glob
import json
import os
import subprocess
import sys
import tempfile

import click
import numpy as np

from torch_utils import persistence

# (case, the layout of the inputs, the official command's options), as the EDM2 README and the
# --help of the official script write them.
CASES = [
    ('run-0.150', 'run', ['--outstd=0.150']),
    ('run-sweep', 'run', ['--outstd=0.010,0.015,...,0.250', '--batch=8']),
    ('raw-0.150', 'raw', ['--outstd=0.150']),
    ('raw-sweep', 'raw', ['--outstd=0.050,0.100,...,0.250', '--batch=2']),
]

@click.command()
@click.option('--run', 'run_dir', required=True, help='Run directory of train_edm2.py (the inputs)')
@click.option('--edm2', required=True, help='Checkout of NVlabs/edm2')
@click.option('--dest', default='tests/data/phema_official.npz', show_default=True)
def main(run_dir, edm2, dest):
    import test_phema # pylint: disable=import-outside-toplevel
    arrays = {}
    for path in sorted(glob.glob(os.path.join(run_dir, 'network-snapshot-*.pkl'))):
        with open(path, 'rb') as f:
            net = persistence.load_pickle(f)['ema']
        _, _, kimg, std = os.path.basename(path)[:-4].split('-')
        arrays[f'in/{kimg}/{std}'] = np.concatenate([value.numpy().ravel() for value in net.state_dict().values()])
        arrays['net_kwargs'] = np.array(json.dumps(dict(net.init_kwargs)))
    tmp = tempfile.mkdtemp()
    np.savez(os.path.join(tmp, 'inputs.npz'), **arrays)
    test_phema.PHEMA_DATA = os.path.join(tmp, 'inputs.npz')
    test_phema.write_snapshots(os.path.join(tmp, test_phema.RUN_DIR))
    test_phema.write_snapshots(os.path.join(tmp, test_phema.RAW_DIR), official=True)
    for case, layout, options in CASES:
        indir = test_phema.RUN_DIR if layout == 'run' else test_phema.RAW_DIR
        subprocess.run([sys.executable, os.path.join(os.path.abspath(edm2), 'reconstruct_phema.py'), f'--indir={indir}',
            f'--outdir={case}', *options], cwd=tmp, env=dict(os.environ, PYTHONPATH=os.path.abspath(edm2)), check=True)
        outputs = sorted(glob.glob(os.path.join(tmp, case, 'phema-*.pkl')))
        rows = []
        for path in outputs:
            with open(path, 'rb') as f:
                rows.append(np.concatenate([p.detach().numpy().ravel() for p in persistence.load_pickle(f)['ema'].parameters()]))
        arrays[f'out/{case}'] = np.stack(rows)
        arrays[f'out/{case}/stds'] = np.array([os.path.basename(path)[:-4].split('-')[2] for path in outputs])
    np.savez_compressed(dest, **arrays)
    print(f'Wrote {dest} ({os.path.getsize(dest)} bytes)')

if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter
