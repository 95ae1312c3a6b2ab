"""Generate images from a snapshot of any model family (EDM2, ARDM, MAR), or from an official
EDM2 post-hoc-EMA reconstruction, with the EDM samplers, guidance and autoguidance.

Seed-compatible with the official EDM2 generate_images.py: per seed, a torch.Generator on the
sampling device seeded with seed % 2**32 draws the initial noise of one image and then its class.
"""

import math
import os
import re

import click
import numpy as np
import PIL.Image
import torch
import tqdm

from torch_utils import distributed as dist
from torch_utils import persistence
from torch_utils import util
from training import encoders
from training import presets
from training import samplers

#----------------------------------------------------------------------------
# Loading a snapshot: ours, or an official EDM2 one. Official latent snapshots carry an encoder
# whose embedded source loads the VAE through `dnnlib`, which does not exist here: it is replaced
# by this project's StabilityVAEEncoder with the same VAE and the same scaling.

def _local_encoder(encoder):
    if encoder is None:
        return encoders.StandardRGBEncoder()
    if type(encoder).__name__ != 'StabilityVAEEncoder':
        return encoder
    state = encoder.__dict__
    kwargs = dict(state.get('_init_kwargs') or {})
    kwargs.update({k: state[k] for k in ['vae_name', 'raw_mean', 'raw_std', 'final_mean', 'final_std', 'batch_size'] if k in state})
    local = encoders.StabilityVAEEncoder(**kwargs)
    for key in ['scale', 'bias']: # What decode() uses, whichever arguments built it.
        if key in state:
            setattr(local, key, np.asarray(state[key], dtype=np.float32))
    return local

def load_snapshot(net, device=torch.device('cpu'), verbose=True):
    """Load `net` (a path, a URL or a preset name from presets.GENERATION_PRESETS) onto `device`.
    Returns EasyDict(net, encoder, loss_fn, dataset_kwargs, label_dim)."""
    if isinstance(net, str) and net in presets.GENERATION_PRESETS:
        net = presets.GENERATION_PRESETS[net].net
    if verbose:
        dist.print0(f'Loading network from {net} ...')
    try:
        with util.open_url(net, verbose=(verbose and dist.get_rank() == 0)) as f:
            data = persistence.load_pickle(f)
    except (OSError, IOError) as e:
        raise click.ClickException(f'Cannot read the snapshot {net}: {e}')
    except Exception as e: # Anything unpickling can raise on a file that is not a pickle.
        raise click.ClickException(f'{net} is not a readable snapshot pickle ({type(e).__name__}: {e})')
    if not isinstance(data, dict) or 'ema' not in data:
        raise click.ClickException(f'{net} is not a network snapshot: expected a pickled dict with the key "ema"')
    model = data['ema'].to(device).eval().requires_grad_(False) if isinstance(data['ema'], torch.nn.Module) else data['ema']
    encoder = _local_encoder(data.get('encoder', None))
    encoder.init(device)
    return util.EasyDict(net=model, encoder=encoder, loss_fn=data.get('loss_fn', None),
        dataset_kwargs=data.get('dataset_kwargs', None), label_dim=int(getattr(model, 'label_dim', 0)))

def check_guidance(snapshot, gnet=None, guidance=1.0):
    """Guidance other than 1 needs a guiding network, or a conditional network trained with label
    dropout (its all-zero label is then the unconditional branch)."""
    if guidance == 1 or gnet is not None:
        return
    if snapshot.label_dim == 0 or not samplers.has_unconditional_branch(snapshot.loss_fn):
        raise click.ClickException(f'--guidance {guidance} needs a guiding network (--gnet): this network '
            f'{"is unconditional" if snapshot.label_dim == 0 else "was not trained with label dropout"}, '
            'so it has no unconditional branch to guide itself')

#----------------------------------------------------------------------------
# Generate images for the given seeds, in batches, split across the ranks. Yields one EasyDict
# per non-empty batch of this rank: images (uint8 [N, C, H, W] on device), labels (int64 class
# indices [N], or None for unconditional networks), seeds and indices (positions in `seeds`).
# `class_idx`: None = a random class per seed, an int = that class, 'all' = position % label_dim.

def generate_images(net, encoder=None, seeds=range(32), class_idx=None, batch_size=32,
    device=torch.device('cpu'), gnet=None, guidance=1.0, verbose=True, **sampler_kwargs):
    if isinstance(net, str):
        snapshot = load_snapshot(net, device=device, verbose=verbose)
        check_guidance(snapshot, gnet=gnet, guidance=guidance)
        net, encoder = snapshot.net, (encoder or snapshot.encoder)
    if isinstance(gnet, str):
        gnet = load_snapshot(gnet, device=device, verbose=verbose).net
    if encoder is None:
        encoder = encoders.StandardRGBEncoder()
    seeds = list(seeds)
    if len(seeds) == 0:
        raise click.ClickException('No seeds to generate (the seed list is empty)')
    label_dim = int(net.label_dim)
    if class_idx is not None:
        if label_dim == 0:
            raise click.ClickException(f'--class {class_idx}: the network is unconditional')
        if class_idx != 'all' and not 0 <= int(class_idx) < label_dim:
            raise click.ClickException(f'--class {class_idx} is out of range: the network has {label_dim} classes (0..{label_dim - 1})')

    # The same split as the official code: batches of at most batch_size, dealt out to the ranks.
    world_size = dist.get_world_size()
    num_batches = max((len(seeds) - 1) // (batch_size * world_size) + 1, 1) * world_size
    rank_batches = np.array_split(np.arange(len(seeds)), num_batches)[dist.get_rank() :: world_size]
    if verbose:
        dist.print0(f'Generating {len(seeds)} images ...')

    for indices in rank_batches:
        if len(indices) == 0:
            continue
        batch_seeds = [seeds[idx] for idx in indices]
        rnd = samplers.StackedRandomGenerator(device, batch_seeds)
        noise = rnd.randn([len(batch_seeds), net.img_channels, net.img_resolution, net.img_resolution], device=device)
        classes, labels = None, None
        if label_dim > 0:
            # Drawn even for a fixed class, as the official code does, so that whatever the
            # sampler draws afterwards (churn) matches it too.
            classes = rnd.randint(label_dim, size=[len(batch_seeds), 1], device=device)[:, 0]
            if class_idx == 'all':
                classes = torch.as_tensor(indices % label_dim, dtype=torch.int64, device=device)
            elif class_idx is not None:
                classes = torch.full_like(classes, int(class_idx))
            labels = torch.eye(label_dim, device=device)[classes]
        with torch.no_grad():
            x = samplers.sample(net, noise, labels, rnd, gnet=gnet, guidance=guidance, **sampler_kwargs)
            images = encoder.decode(x)
        yield util.EasyDict(images=images, labels=classes, seeds=batch_seeds, indices=[int(i) for i in indices])

#----------------------------------------------------------------------------
# Output.

def save_image(image, path):
    """uint8 [C, H, W] -> PNG, written atomically (RGB, or grayscale when C == 1)."""
    array = image.permute(1, 2, 0).cpu().numpy()
    pil = PIL.Image.fromarray(array[:, :, 0], 'L') if array.shape[2] == 1 else PIL.Image.fromarray(array, 'RGB')
    with util.atomic_path(path) as tmp:
        pil.save(tmp, format='PNG')

def make_grid(images, rows=None):
    """uint8 [C, H, W] images -> one [C, H * num_rows, W * num_cols] grid. `rows`: lists of
    positions into `images`, one list per row (None = near-square, in order); gaps are black."""
    if rows is None:
        cols = math.ceil(math.sqrt(len(images)))
        rows = [list(range(i, min(i + cols, len(images)))) for i in range(0, len(images), cols)]
    c, h, w = images[0].shape
    cols = max(len(row) for row in rows)
    grid = torch.zeros([c, h * len(rows), w * cols], dtype=torch.uint8)
    for r, row in enumerate(rows):
        for col, idx in enumerate(row):
            grid[:, r * h : (r + 1) * h, col * w : (col + 1) * w] = images[idx]
    return grid

def _gather(items):
    """Concatenate a list of picklable items across ranks (every rank gets all of them)."""
    if dist.get_world_size() == 1:
        return items
    out = [None] * dist.get_world_size()
    torch.distributed.all_gather_object(out, items)
    return [item for part in out for item in part]

#----------------------------------------------------------------------------
# Command line.

def parse_class(value):
    if value is None or value == 'all':
        return value
    if re.fullmatch(r'\d+', value.strip()):
        return int(value)
    raise click.BadParameter(f'"{value}" is not a class index or "all"', param_hint='--class')

def parse_seeds(value):
    try:
        return util.parse_int_list(value)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint='--seeds')

@click.command()
@click.option('--net',        help='Snapshot: path, URL or preset name', metavar='PATH|URL|PRESET', type=str, required=True)
@click.option('--gnet',       help='Guiding network: path, URL or preset  [default: the preset\'s, or none]', metavar='PATH|URL', type=str, default=None)
@click.option('--guidance',   help='Guidance weight  [default: the preset\'s, or 1 = none]', metavar='FLOAT', type=float, default=None)
@click.option('--outdir',     help='Where to save the images', metavar='DIR', type=str, default=None)
@click.option('--subdirs',    help='Save images in subdirectories of 1000 seeds', is_flag=True)
@click.option('--seeds',      help='Random seeds (e.g. 1,2,5-10)', metavar='LIST', type=str, default='0-63', show_default=True)
@click.option('--class', 'class_idx', help='Class index, or "all" to cycle through the classes  [default: random]', metavar='INT|all', type=str, default=None)
@click.option('--batch', 'batch_size', help='Maximum batch size per process', metavar='INT', type=click.IntRange(min=1), default=32, show_default=True)
@click.option('--grid',       help='Also save one image grid (rows per class with --class all)', metavar='PNG', type=str, default=None)
@click.option('--solver',     help='ODE/SDE solver (EDM2 networks)  [default: heun]', type=click.Choice(samplers.SOLVERS), default=None)
@click.option('--steps',      help='Sampling steps  [default: the sampler\'s]', metavar='INT', type=click.IntRange(min=1), default=None)
@click.option('--sigma_min',  help='Lowest noise level  [default: 0.002]', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True), default=None)
@click.option('--sigma_max',  help='Highest noise level  [default: 80]', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True), default=None)
@click.option('--rho',        help='Time step exponent  [default: 7]', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True), default=None)
@click.option('--S_churn', 'S_churn', help='Stochasticity strength  [default: 0]', metavar='FLOAT', type=click.FloatRange(min=0), default=None)
@click.option('--S_min', 'S_min', help='Stochastic min noise level  [default: 0]', metavar='FLOAT', type=click.FloatRange(min=0), default=None)
@click.option('--S_max', 'S_max', help='Stochastic max noise level  [default: inf]', metavar='FLOAT', type=click.FloatRange(min=0), default=None)
@click.option('--S_noise', 'S_noise', help='Stochastic noise inflation  [default: 1]', metavar='FLOAT', type=float, default=None)
def main(net, gnet, guidance, outdir, subdirs, seeds, class_idx, batch_size, grid, **sampler_opts):
    """Generate images from a snapshot (any model family) or an official EDM2 preset.

    Examples:

    \b
    # 64 images of the built-in digits model, class 3, and a grid
    python generate_images.py --net run/network-snapshot-0000256-0.100.pkl --class 3 --outdir out --grid grid.png

    \b
    # 50000 images on 8 GPUs with an official EDM2 preset
    torchrun --standalone --nproc_per_node=8 generate_images.py \\
        --net edm2-img512-xs-guid-fid --outdir out --subdirs --seeds 0-49999
    """
    seeds = parse_seeds(seeds)
    class_idx = parse_class(class_idx)
    if outdir is None and grid is None:
        raise click.ClickException('Nothing to write: give --outdir and/or --grid')
    if len(seeds) == 0:
        raise click.ClickException('--seeds is empty')
    preset = presets.GENERATION_PRESETS.get(net, util.EasyDict())
    gnet = gnet if gnet is not None else preset.get('gnet', None)
    guidance = guidance if guidance is not None else preset.get('guidance', 1.0)
    # Only the options the user set: each sampler keeps its own defaults (docs/families.md).
    sampler_kwargs = {key: value for key, value in sampler_opts.items() if value is not None}

    dist.init()
    device = dist.get_device()
    snapshot = load_snapshot(net, device=device)
    check_guidance(snapshot, gnet=gnet, guidance=guidance)
    guide = load_snapshot(gnet, device=device).net if gnet is not None and guidance != 1 else None

    results = []
    try:
        image_iter = generate_images(snapshot.net, encoder=snapshot.encoder, seeds=seeds, class_idx=class_idx,
            batch_size=batch_size, device=device, gnet=guide, guidance=guidance, **sampler_kwargs)
        for r in tqdm.tqdm(image_iter, unit='batch', disable=(dist.get_rank() != 0)):
            images = r.images.cpu()
            for seed, image in zip(r.seeds, images):
                if outdir is not None:
                    folder = os.path.join(outdir, f'{seed // 1000 * 1000:06d}') if subdirs else outdir
                    save_image(image, os.path.join(folder, f'{seed:06d}.png'))
            if grid is not None:
                labels = r.labels.tolist() if r.labels is not None else [None] * len(r.seeds)
                results += list(zip(r.indices, labels, images))
    except ValueError as e: # A sampler's message about its options.
        raise click.ClickException(str(e))

    if grid is not None:
        results = sorted(_gather(results), key=lambda item: item[0])
        if dist.get_rank() == 0:
            images = [image for _, _, image in results]
            rows = None
            if class_idx == 'all':
                rows = [[pos for pos, (_, label, _) in enumerate(results) if label == c] for c in range(snapshot.label_dim)]
                rows = [row for row in rows if row]
            save_image(make_grid(images, rows), grid)
            dist.print0(f'Saved the grid {grid}')
    dist.barrier()
    dist.print0('Done.')

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter

#----------------------------------------------------------------------------
