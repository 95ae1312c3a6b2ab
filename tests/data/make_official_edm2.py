"""Makes tests/data/official_edm2.npz, the official side of tests/test_official_compat.py: the
outputs of the UNMODIFIED official EDM2 code (NVlabs/edm2 4bf8162, not part of this project: its
licence is non-commercial) for a small EDM2 network of this project's edm2-digits structure.

    python tests/data/make_official_edm2.py --edm2 /path/to/a/checkout/of/NVlabs/edm2

1. Here: the test's network (its constructor arguments, those of the snapshot the test trains,
   and its seeded weights) and its inputs, from tests/test_official_compat.py.
2. In a separate process whose import path holds only the official tree: the official Precond
   built from those arguments with those weights; its denoised outputs on the inputs; and
   images as the official generate_images.py makes them (per-seed generators, noise then class,
   its edm_sampler, its StandardRGBEncoder.decode).
The file keeps the constructor arguments (the test checks its snapshot has them) and the
official outputs.
"""

import json
import os
import subprocess
import sys
import tempfile

import click
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

def our_side(path):
    """The network's constructor arguments and weights, the inputs and the seeds (an .npz)."""
    sys.path[:0] = [ROOT, os.path.join(ROOT, 'tests')]
    import test_official_compat as T # pylint: disable=import-outside-toplevel
    net = T.official_test_network()
    arrays = {f'state/{k}': v.numpy() for k, v in net.state_dict().items()}
    arrays.update({f'input/{k}': v.numpy() for k, v in T.official_test_inputs().items()})
    np.savez(path, kwargs=json.dumps(dict(net.init_kwargs)), seeds=np.array(T.OFFICIAL_SEEDS), num_steps=T.OFFICIAL_STEPS, **arrays)

OFFICIAL_SIDE = '''
import json, sys
import numpy as np
import torch
import generate_images
from training import encoders, networks_edm2
data = dict(np.load(sys.argv[1]))
net = networks_edm2.Precond(**json.loads(str(data['kwargs']))).eval().requires_grad_(False)
net.load_state_dict({k[len('state/'):]: torch.as_tensor(v) for k, v in data.items() if k.startswith('state/')})
inputs = {k[len('input/'):]: torch.as_tensor(v) for k, v in data.items() if k.startswith('input/')}
with torch.no_grad():
    denoised = net(inputs['x'], inputs['sigma'], inputs['labels'])
    seeds = [int(s) for s in data['seeds']]
    rnd = generate_images.StackedRandomGenerator('cpu', seeds)
    noise = rnd.randn([len(seeds), net.img_channels, net.img_resolution, net.img_resolution])
    classes = rnd.randint(net.label_dim, size=[len(seeds)])
    latents = generate_images.edm_sampler(net, noise, torch.eye(net.label_dim)[classes], num_steps=int(data['num_steps']),
        randn_like=rnd.randn_like)
    images = encoders.StandardRGBEncoder().decode(latents)
np.savez(sys.argv[2], denoised=denoised.numpy(), images=images.numpy(), classes=classes.numpy())
'''

@click.command()
@click.option('--edm2', help='A checkout of NVlabs/edm2', metavar='DIR', required=True)
@click.option('--dest', help='Output', metavar='NPZ', default=os.path.join(HERE, 'official_edm2.npz'), show_default=True)
def main(edm2, dest):
    with tempfile.TemporaryDirectory() as tmp:
        ours, theirs = os.path.join(tmp, 'ours.npz'), os.path.join(tmp, 'theirs.npz')
        our_side(ours)
        env = dict(os.environ, PYTHONPATH=os.path.abspath(edm2), OMP_NUM_THREADS='1')
        subprocess.run([sys.executable, '-c', OFFICIAL_SIDE, ours, theirs], cwd=edm2, env=env, check=True)
        with np.load(ours) as a, np.load(theirs) as b:
            np.savez_compressed(dest, kwargs=a['kwargs'], **{k: b[k] for k in b.files})
    print(f'Saved {dest}')

if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter
