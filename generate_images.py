"""Generate images from a snapshot of any model family (EDM2, ARDM, MAR), or from an official
EDM2 post-hoc-EMA reconstruction, with the EDM samplers, guidance and autoguidance. The loading
and the generation loop live in training/generate.py; this script parses options and writes PNGs.

Seed-compatible with the official EDM2 generate_images.py: per seed, a torch.Generator on the
sampling device seeded with seed % 2**32 draws the initial noise of one image and then its class.
"""

import glob
import json
import math
import os
import re

import click
import PIL.Image
import PIL.PngImagePlugin
import torch
import tqdm

from torch_utils import distributed as dist
from torch_utils import util
from training import generate
from training import samplers

#----------------------------------------------------------------------------
# Output.

# Every PNG records the command that made it (network, guidance, class, sampler options; the
# grid also its seeds). A file made by the same command is the same image and may be written
# again; any other existing file is refused unless --overwrite (the outputs policy, README).

RECORD_KEY = 'generated-by'

def save_image(image, path, record):
    """uint8 [C, H, W] -> PNG, written atomically (RGB, or grayscale when C == 1)."""
    array = image.permute(1, 2, 0).cpu().numpy()
    pil = PIL.Image.fromarray(array[:, :, 0], 'L') if array.shape[2] == 1 else PIL.Image.fromarray(array, 'RGB')
    info = PIL.PngImagePlugin.PngInfo()
    info.add_text(RECORD_KEY, record)
    with util.atomic_path(path) as tmp:
        pil.save(tmp, format='PNG', pnginfo=info)

def made_by(path):
    """The record of the command that made the PNG at `path`, or None."""
    try:
        with PIL.Image.open(path) as image:
            return image.text.get(RECORD_KEY)
    except (OSError, AttributeError, ValueError, PIL.Image.DecompressionBombError):
        return None

def check_outputs(paths, record, overwrite, what):
    """Refuse, before any work, to replace a file that another command made."""
    for path in paths:
        util.check_writable(path, what)
        if overwrite or not os.path.lexists(path):
            continue
        if made_by(path) != record:
            raise FileExistsError(f'{path} exists and was not made by this command (another network or options); '
                f'pass --overwrite to replace it, or choose another {what}')

def check_folder(outdir, paths, record):
    """The images already in --outdir that this command does not write must have been made by it
    too: one folder never holds the images of two networks (or two sets of options), whatever
    their seeds. Looks at the seed images (NNNNNN.png, also in NNNNNN/ subfolders)."""
    if not os.path.isdir(outdir):
        return
    ours = {os.path.abspath(path) for path in paths}
    found = glob.glob(os.path.join(glob.escape(outdir), '*.png')) + glob.glob(os.path.join(glob.escape(outdir), '[0-9]' * 6, '*.png'))
    for path in sorted(found):
        if re.fullmatch(r'\d+\.png', os.path.basename(path)) and os.path.abspath(path) not in ours and made_by(path) != record:
            raise FileExistsError(f'--outdir {outdir} holds {os.path.relpath(path, outdir)}, made by another command (another network '
                'or options): adding images there would mix two models in one folder; choose another --outdir')

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

@click.command()
@click.option('--preset',     help='Generation preset: an official EDM2 snapshot with its guiding network and guidance', metavar='NAME', type=str, default=None)
@click.option('--net',        help='Snapshot: path, URL (or a preset name)  [default: the preset\'s]', metavar='PATH|URL', type=str, default=None)
@click.option('--gnet',       help='Guiding network: path or URL  [default: the preset\'s, or none]', metavar='PATH|URL', type=str, default=None)
@click.option('--guidance',   help='Guidance weight  [default: the preset\'s, or 1 = none]', metavar='FLOAT', type=float, default=None)
@click.option('--outdir',     help='Where to save the images', metavar='DIR', type=str, default=None)
@click.option('--subdirs',    help='Save images in subdirectories of 1000 seeds', is_flag=True)
@click.option('--seeds',      help='Random seeds (e.g. 1,2,5-10)', metavar='LIST', type=str, default='16-19', show_default=True)
@click.option('--class', 'class_spec', help='Class index 0..K-1, "all" to cycle through the classes, or a source: id:N (original class id, e.g. id:171), name:NAME or NAME  [default: random]', metavar='INT|all|id:N|NAME', type=str, default=None)
@click.option('--batch', 'batch_size', help='Maximum batch size per process', metavar='INT', type=click.IntRange(min=1), default=32, show_default=True)
@click.option('--grid',       help='Also save one image grid (rows per class with --class all)', metavar='PNG', type=str, default=None)
@click.option('--opt', 'opt_texts', help='Sampling option of the network\'s family, e.g. temperature=0.5 (README: sampling options); repeatable', metavar='KEY=VALUE', multiple=True)
@click.option('--solver',     help=f'EDM2 sampler: {"|".join(samplers.SOLVERS)}  [default: heun]', metavar='NAME', type=str, default=None)
@click.option('--steps',      help='Sampling steps  [default: the sampler\'s]', metavar='INT', type=int, default=None)
@click.option('--sigma_min',  help='EDM2 sampler: lowest noise level  [default: 0.002]', metavar='FLOAT', type=float, default=None)
@click.option('--sigma_max',  help='EDM2 sampler: highest noise level  [default: 80]', metavar='FLOAT', type=float, default=None)
@click.option('--rho',        help='EDM2 sampler: time step exponent  [default: 7]', metavar='FLOAT', type=float, default=None)
@click.option('--S_churn', 'S_churn', help='EDM2 sampler: stochasticity strength  [default: 0]', metavar='FLOAT', type=float, default=None)
@click.option('--S_min', 'S_min', help='EDM2 sampler: stochastic min noise level  [default: 0]', metavar='FLOAT', type=float, default=None)
@click.option('--S_max', 'S_max', help='EDM2 sampler: stochastic max noise level  [default: inf]', metavar='FLOAT', type=float, default=None)
@click.option('--S_noise', 'S_noise', help='EDM2 sampler: stochastic noise inflation  [default: 1]', metavar='FLOAT', type=float, default=None)
@click.option('--overwrite',  help='Replace images or a grid that another command made', is_flag=True)
@util.one_line_errors
def main(preset, net, gnet, guidance, outdir, subdirs, seeds, class_spec, batch_size, grid, opt_texts, overwrite, **sampler_flags):
    """Generate images from a snapshot (any model family) or an official EDM2 preset.

    Examples:

    \b
    # A couple of images of an official EDM2 model (seeds 16-19), as the EDM2 README writes it
    python generate_images.py --preset=edm2-img512-s-guid-dino --outdir=out

    \b
    # 64 images of the built-in digits model, class 3, and a grid
    python generate_images.py --net runs/edm2-digits/network-snapshot-0000131-0.100.pkl --seeds 0-63 --class 3 --outdir out --grid grid.png

    \b
    # 5000 images of the source with ImageNet id 171 of a multi-source model
    python generate_images.py --net run/network-snapshot-0134217-0.050.pkl --class id:171 --seeds 0-4999 --outdir out

    \b
    # A MAR model with its sampler's own options (README: sampling options)
    python generate_images.py --net mar-run/network-snapshot-0000098-ema.pkl --opt temperature=0.9 --opt guidance_schedule=linear --guidance 2 --outdir out

    \b
    # 50000 images on 8 GPUs with an official EDM2 preset
    torchrun --standalone --nproc_per_node=8 generate_images.py \\
        --preset edm2-img512-xs-guid-fid --outdir out --subdirs --seeds 0-49999
    """
    seeds = generate.parse_seeds(seeds)
    if outdir is None and grid is None:
        raise ValueError('Nothing to write: give --outdir and/or --grid')
    # Only the sampling options the user set: each sampler keeps its own defaults (docs/families.md).
    spec = generate.resolve_generation(net, preset, gnet, guidance, opt_texts, sampler_flags)

    local = lambda path: os.path.abspath(path) if path is not None and os.path.exists(path) else path
    record = dict(net=local(spec.net), gnet=local(spec.gnet), guidance=spec.guidance, class_spec=class_spec, **spec.options)
    image_paths = [os.path.join(outdir, f'{seed // 1000 * 1000:06d}' if subdirs else '', f'{seed:06d}.png') for seed in seeds] if outdir else []
    check_outputs(image_paths, json.dumps(record), overwrite, '--outdir')
    if outdir is not None:
        check_folder(outdir, image_paths, json.dumps(record))
    check_outputs([grid] if grid else [], json.dumps(dict(record, seeds=seeds)), overwrite, '--grid')

    dist.init()
    device = dist.get_device()
    loaded = generate.load(spec, device=device)
    snapshot = loaded.snapshot
    class_idx = generate.resolve_class(class_spec, snapshot.label_dim, snapshot.sources)

    results = []
    image_iter = generate.generate_images(snapshot.net, snapshot.encoder, seeds=seeds, class_idx=class_idx,
        batch_size=batch_size, device=device, gnet=loaded.guide, guidance=spec.guidance, **loaded.sampler_kwargs)
    for batch in tqdm.tqdm(image_iter, unit='batch', disable=(dist.get_rank() != 0)):
        images = batch.images.cpu()
        for idx, image in zip(batch.indices, images):
            if outdir is not None:
                save_image(image, image_paths[idx], json.dumps(record))
        if grid is not None:
            labels = batch.labels.tolist() if batch.labels is not None else [None] * len(batch.seeds)
            results += list(zip(batch.indices, labels, images))

    if grid is not None:
        results = sorted(_gather(results), key=lambda item: item[0])
        if dist.get_rank() == 0:
            images = [image for _, _, image in results]
            rows = None
            if class_idx == 'all':
                rows = [[pos for pos, (_, label, _) in enumerate(results) if label == c] for c in range(snapshot.label_dim)]
                rows = [row for row in rows if row]
            save_image(make_grid(images, rows), grid, json.dumps(dict(record, seeds=seeds)))
            dist.print0(f'Saved the grid {grid}')
    dist.barrier()
    dist.print0('Done.')

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter

#----------------------------------------------------------------------------
