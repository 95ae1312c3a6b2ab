"""Loading snapshots and generating images from them, for any model family: the library part of
generate_images.py, shared with calculate_metrics.py (gen). Errors about the user's input are
ValueError / FileNotFoundError; the scripts turn them into one-line messages.

Seed-compatible with the official EDM2 generate_images.py: per seed, a torch.Generator on the
sampling device seeded with seed % 2**32 draws the initial noise of one image and then its class.
"""

import math
import os
import re

import numpy as np
import torch

from torch_utils import distributed as dist
from torch_utils import persistence
from torch_utils import util
from training import encoders
from training import samplers

#----------------------------------------------------------------------------
# The generation presets: the official EDM2 post-hoc-EMA reconstructions (the preset table of
# NVlabs/edm2's generate_images.py): the network, the guiding network and the guidance weight that
# gave the best FID or FD_DINOv2 in the EDM2 and autoguidance papers (the score in the comments).
# Snapshot names: {model}-{kimg}-{ema std}. Read only through resolve_generation() below, which
# generate_images.py and calculate_metrics.py gen both call; one row per preset, as in EDM2's table.

_model_root = 'https://nvlabs-fi-cdn.nvidia.com/edm2/posthoc-reconstructions'

def _snapshot(net, gnet=None, guidance=None):
    preset = util.EasyDict(net=f'{_model_root}/{net}.pkl')
    if gnet is not None:
        preset.update(gnet=f'{_model_root}/{gnet}.pkl', guidance=guidance)
    return preset

GENERATION_PRESETS = {
    # No guidance: the EMA std best for FID or for FD_DINOv2. img512 FID 3.53 2.56 2.25 2.06 1.96 1.91,
    # FD_DINOv2 103.39 68.64 58.44 52.25 45.96 42.84 (xs .. xxl); img64 FID 1.58 1.43 1.33 1.33 (s .. xl).
    'edm2-img512-xs-fid':              _snapshot('edm2-img512-xs-2147483-0.135'),
    'edm2-img512-xs-dino':             _snapshot('edm2-img512-xs-2147483-0.200'),
    'edm2-img512-s-fid':               _snapshot('edm2-img512-s-2147483-0.130'),
    'edm2-img512-s-dino':              _snapshot('edm2-img512-s-2147483-0.190'),
    'edm2-img512-m-fid':               _snapshot('edm2-img512-m-2147483-0.100'),
    'edm2-img512-m-dino':              _snapshot('edm2-img512-m-2147483-0.155'),
    'edm2-img512-l-fid':               _snapshot('edm2-img512-l-1879048-0.085'),
    'edm2-img512-l-dino':              _snapshot('edm2-img512-l-1879048-0.155'),
    'edm2-img512-xl-fid':              _snapshot('edm2-img512-xl-1342177-0.085'),
    'edm2-img512-xl-dino':             _snapshot('edm2-img512-xl-1342177-0.155'),
    'edm2-img512-xxl-fid':             _snapshot('edm2-img512-xxl-0939524-0.070'),
    'edm2-img512-xxl-dino':            _snapshot('edm2-img512-xxl-0939524-0.150'),
    'edm2-img64-s-fid':                _snapshot('edm2-img64-s-1073741-0.075'),
    'edm2-img64-m-fid':                _snapshot('edm2-img64-m-2147483-0.060'),
    'edm2-img64-l-fid':                _snapshot('edm2-img64-l-1073741-0.040'),
    'edm2-img64-xl-fid':               _snapshot('edm2-img64-xl-0671088-0.040'),
    # Classifier-free guidance by the unconditional XS model at the same EMA std. FID 2.91 2.23 2.01 1.88
    # 1.85 1.81, FD_DINOv2 79.94 52.32 41.98 38.20 35.67 33.09 (xs .. xxl).
    'edm2-img512-xs-guid-fid':         _snapshot('edm2-img512-xs-2147483-0.045', 'edm2-img512-xs-uncond-2147483-0.045', 1.4),
    'edm2-img512-xs-guid-dino':        _snapshot('edm2-img512-xs-2147483-0.150', 'edm2-img512-xs-uncond-2147483-0.150', 1.7),
    'edm2-img512-s-guid-fid':          _snapshot('edm2-img512-s-2147483-0.025', 'edm2-img512-xs-uncond-2147483-0.025', 1.4),
    'edm2-img512-s-guid-dino':         _snapshot('edm2-img512-s-2147483-0.085', 'edm2-img512-xs-uncond-2147483-0.085', 1.9),
    'edm2-img512-m-guid-fid':          _snapshot('edm2-img512-m-2147483-0.030', 'edm2-img512-xs-uncond-2147483-0.030', 1.2),
    'edm2-img512-m-guid-dino':         _snapshot('edm2-img512-m-2147483-0.015', 'edm2-img512-xs-uncond-2147483-0.015', 2.0),
    'edm2-img512-l-guid-fid':          _snapshot('edm2-img512-l-1879048-0.015', 'edm2-img512-xs-uncond-2147483-0.015', 1.2),
    'edm2-img512-l-guid-dino':         _snapshot('edm2-img512-l-1879048-0.035', 'edm2-img512-xs-uncond-2147483-0.035', 1.7),
    'edm2-img512-xl-guid-fid':         _snapshot('edm2-img512-xl-1342177-0.020', 'edm2-img512-xs-uncond-2147483-0.020', 1.2),
    'edm2-img512-xl-guid-dino':        _snapshot('edm2-img512-xl-1342177-0.030', 'edm2-img512-xs-uncond-2147483-0.030', 1.7),
    'edm2-img512-xxl-guid-fid':        _snapshot('edm2-img512-xxl-0939524-0.015', 'edm2-img512-xs-uncond-2147483-0.015', 1.2),
    'edm2-img512-xxl-guid-dino':       _snapshot('edm2-img512-xxl-0939524-0.015', 'edm2-img512-xs-uncond-2147483-0.015', 1.7),
    # Autoguidance by a smaller, shorter-trained model (Karras et al. 2024, "Guiding a diffusion model
    # with a bad version of itself"). FID 1.34 1.25 3.86 1.01, FD_DINOv2 36.67 24.18 90.39 31.85 (s,
    # xxl, s-uncond, img64-s).
    'edm2-img512-s-autog-fid':         _snapshot('edm2-img512-s-2147483-0.070', 'edm2-img512-xs-0134217-0.125', 2.1),
    'edm2-img512-s-autog-dino':        _snapshot('edm2-img512-s-2147483-0.120', 'edm2-img512-xs-0134217-0.165', 2.45),
    'edm2-img512-xxl-autog-fid':       _snapshot('edm2-img512-xxl-0939524-0.075', 'edm2-img512-m-0268435-0.155', 2.05),
    'edm2-img512-xxl-autog-dino':      _snapshot('edm2-img512-xxl-0939524-0.130', 'edm2-img512-m-0268435-0.205', 2.3),
    'edm2-img512-s-uncond-autog-fid':  _snapshot('edm2-img512-s-uncond-2147483-0.070', 'edm2-img512-xs-uncond-0134217-0.110', 2.85),
    'edm2-img512-s-uncond-autog-dino': _snapshot('edm2-img512-s-uncond-2147483-0.090', 'edm2-img512-xs-uncond-0134217-0.125', 2.9),
    'edm2-img64-s-autog-fid':          _snapshot('edm2-img64-s-1073741-0.045', 'edm2-img64-xs-0134217-0.110', 1.7),
    'edm2-img64-s-autog-dino':         _snapshot('edm2-img64-s-1073741-0.105', 'edm2-img64-xs-0134217-0.175', 2.2),
}

def resolve_generation(net=None, preset=None, gnet=None, guidance=None, options=(), given_options=None):
    """What a generation command samples, as EasyDict(net, gnet, guidance, preset, options): the
    options the user gave, and for the others those of the generation preset (--preset NAME, or a
    preset name given as --net, as here only), as the official generate_images.py applies
    --preset. No guidance (None) means 1; a guiding network is loaded only for guidance other than
    1. The guidance is checked here (finite, at least 0) for every command that samples.
    `options`: --opt KEY=VALUE texts, `given_options`: the values of the sampler flags (None = not
    given); load() checks them against the family's sampling options."""
    if preset is None and net in GENERATION_PRESETS:
        preset, net = net, None
    if preset is not None and preset not in GENERATION_PRESETS:
        raise ValueError(f'--preset {preset}: not a generation preset; choose from {", ".join(GENERATION_PRESETS)}')
    defaults = GENERATION_PRESETS.get(preset, {})
    resolved = util.EasyDict(preset=preset, net=net if net is not None else defaults.get('net'),
        gnet=gnet if gnet is not None else defaults.get('gnet'),
        guidance=guidance if guidance is not None else defaults.get('guidance', 1.0),
        options=samplers.parse_options(options, given_options))
    if resolved.net is None:
        raise ValueError('Nothing to sample: give --net (a snapshot: path or URL) or --preset (a generation preset)')
    if not (math.isfinite(resolved.guidance) and resolved.guidance >= 0):
        raise ValueError(f'--guidance {resolved.guidance}: guidance must be at least 0 and finite (1 = none, 0 = the guiding model alone)')
    return resolved

def load(spec, device=torch.device('cpu'), verbose=True):
    """The snapshot and the guiding network (None unless guidance is other than 1) of a
    resolve_generation() result, with the guidance preconditions and the sampling options checked:
    EasyDict(snapshot, guide, sampler_kwargs)."""
    snapshot = load_snapshot(spec.net, device=device, verbose=verbose)
    sampler_kwargs = samplers.check_options(snapshot.net, spec.options)
    samplers.check_values(snapshot.net, sampler_kwargs)
    guide = load_snapshot(spec.gnet, device=device, verbose=verbose).net if spec.gnet is not None and spec.guidance != 1 else None
    check_guidance(snapshot, guide, spec.guidance)
    return util.EasyDict(snapshot=snapshot, guide=guide, sampler_kwargs=sampler_kwargs)

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
    """Load `net` (a path or a URL; resolve_generation() turns a preset name into one) onto `device`.
    Returns EasyDict(net, encoder, loss_fn, dataset_kwargs, sources, label_dim); `sources`
    ([{label, name, original_id}]) is None for snapshots that do not record them (official ones,
    unlabelled datasets). Snapshots are pickles that carry code: load only files you trust."""
    if isinstance(net, str) and os.path.isdir(net):
        raise IsADirectoryError(f'{net} is a folder, not a snapshot file (network-snapshot-*.pkl)')
    if verbose:
        dist.print0(f'Loading network from {net} ...')
    try:
        with util.open_url(net, verbose=(verbose and dist.get_rank() == 0)) as f:
            data = persistence.load_pickle(f)
    except OSError as e:
        raise FileNotFoundError(f'Cannot read the snapshot {net}: {e}') from e
    except Exception as e: # Anything unpickling can raise on a file that is not a pickle.
        raise ValueError(f'{net} is not a readable snapshot pickle ({type(e).__name__}: {e})') from e
    if not isinstance(data, dict) or not isinstance(data.get('ema'), torch.nn.Module):
        raise ValueError(f'{net} is not a network snapshot: expected a pickled dict with the network under "ema"')
    model = data['ema'].to(device).eval().requires_grad_(False)
    encoder = _local_encoder(data.get('encoder', None))
    encoder.init(device)
    return util.EasyDict(net=model, encoder=encoder, loss_fn=data.get('loss_fn', None),
        dataset_kwargs=data.get('dataset_kwargs', None), sources=data.get('sources', None),
        label_dim=int(getattr(model, 'label_dim', 0)))

def has_unconditional_branch(loss_fn):
    """Did training drop labels (docs/families.md)? Then the all-zero label selects the network's
    unconditional branch. Losses declare it; official EDM2 losses (no declaration) did not."""
    return bool(getattr(loss_fn, 'has_unconditional_branch', False))

def check_guidance(snapshot, guide=None, guidance=1.0):
    """What guidance other than 1 needs (the one place that checks it; its value is checked by
    resolve_generation()): a guiding network `guide` of the same kind (the same class, e.g. the
    same generation order, on the same images and classes), or without one a conditional network
    trained with label dropout (its all-zero label is then the unconditional branch)."""
    if guidance == 1:
        return
    if guide is None:
        if snapshot.label_dim == 0 or not has_unconditional_branch(snapshot.loss_fn):
            raise ValueError(f'--guidance {guidance} needs a guiding network (--gnet): this network '
                f'{"is unconditional" if snapshot.label_dim == 0 else "was not trained with label dropout"}, '
                'so it has no unconditional branch to guide itself')
        return
    net = snapshot.net
    ours = (type(net).__name__, net.img_channels, net.img_resolution, net.label_dim)
    theirs = (type(guide).__name__, guide.img_channels, guide.img_resolution, guide.label_dim)
    if ours != theirs:
        raise ValueError(f'--gnet is a {theirs[0]} on {theirs[1]}x{theirs[2]}x{theirs[2]} inputs with {theirs[3]} classes, but the '
            f'network is a {ours[0]} on {ours[1]}x{ours[2]}x{ours[2]} inputs with {ours[3]} classes: guide with a network of the same kind')

def check_class(label_dim, class_idx, what='the network'):
    """`class_idx`: None (random), 'all', or an index 0..label_dim-1 of `what`'s classes."""
    if class_idx is None:
        return
    if label_dim == 0:
        raise ValueError(f'--class {class_idx}: {what} is unconditional (no classes)')
    if class_idx != 'all' and not 0 <= int(class_idx) < label_dim:
        raise ValueError(f'--class {class_idx} is out of range: {what} has {label_dim} classes (0..{label_dim - 1})')

def resolve_class(spec, label_dim, sources=None, what='the network'):
    """--class as written -> None (random), 'all' or an index 0..label_dim-1 (checked).

    A plain integer is always the index, as in EDM2. A source identity is spelled out, so that
    `171` never has to be guessed between an index and an id: `id:N` is the source whose
    original class id is N (e.g. the ImageNet id that the multi-source code's --class takes),
    `name:NAME` or a bare NAME that is not an integer the source of that name (e.g. n02091032).
    `sources`: [{label, name, original_id}] from dataset.json, carried in the snapshot."""
    text = None if spec is None else str(spec).strip()
    if text is None or text == 'all' or label_dim == 0:
        check_class(label_dim, text, what) # Any class of an unconditional network is an error.
        return text
    if re.fullmatch(r'\d+', text):
        index = int(text)
        if index >= label_dim and any(s['original_id'] == index for s in sources or []):
            raise ValueError(f'--class {index} is a class index (0..{label_dim - 1}); for the source '
                f'with the original class id {index}, write --class id:{index}')
        check_class(label_dim, index, what)
        return index
    index = find_source(text, sources, what)
    check_class(label_dim, index, what)
    return index

def find_source(text, sources, what):
    """The label of the source named by `id:N`, `name:NAME` or a bare NAME."""
    key, value = 'name', text.removeprefix('name:')
    if text.startswith('id:'):
        if not re.fullmatch(r'\d+', text[3:]):
            raise ValueError(f'--class {text}: expected id:N with N a class id, e.g. id:171')
        key, value = 'original_id', int(text[3:])
    if not sources:
        raise ValueError(f'--class {text}: {what} records no source names or ids (datasets written by '
            'dataset_tool.py and the snapshots trained on them do); give the class index instead')
    matches = [s['label'] for s in sources if s[key] == value]
    if len(matches) != 1:
        known = ', '.join(f'{s["label"]} = id:{s["original_id"]} name:{s["name"]}' for s in sources)
        raise ValueError(f'--class {text}: {"no" if not matches else "more than one"} source of {what} '
            f'has the {key.replace("_", " ")} {value}; its sources: {known}')
    return matches[0]

#----------------------------------------------------------------------------
# Seeds: a seed seeds a torch.Generator with seed % 2^32 (as in the official code), so seeds are
# kept in 0..2^32-1, where each gives its own image.

MAX_SEED = 2**32 - 1
MAX_SEEDS = 10**7 # Per command: more is split over several commands (or --subdirs runs).

def parse_seeds(text):
    """--seeds '0-63,100' -> list, checked before a range is expanded."""
    try:
        return util.parse_int_list(text, low=0, high=MAX_SEED, max_count=MAX_SEEDS)
    except ValueError as e:
        raise ValueError(f'--seeds: {e}; seeds are 0..{MAX_SEED}, at most {MAX_SEEDS:,} per command') from None

def check_seed_range(seed, num):
    """--seed and --num of calculate_metrics.py gen: seeds seed..seed+num-1."""
    if seed + num - 1 > MAX_SEED or num > MAX_SEEDS:
        raise ValueError(f'--seed {seed} --num {num}: seeds are 0..{MAX_SEED}, at most {MAX_SEEDS:,} per command')

#----------------------------------------------------------------------------
# Generate images for the given seeds, in batches, split across the ranks. Yields one EasyDict
# per non-empty batch of this rank: images (uint8 [N, C, H, W] on device), labels (int64 class
# indices [N], or None for unconditional networks), seeds and indices (positions in `seeds`).
# `class_idx` as resolve_class() gives it (which checks it): None = a random class per seed, an
# int = that class, 'all' = position % label_dim. `gnet`, `guidance`: as load() gives and checks them.

def generate_images(net, encoder, seeds=range(32), class_idx=None, batch_size=32,
    device=torch.device('cpu'), gnet=None, guidance=1.0, verbose=True, **sampler_kwargs):
    seeds = list(seeds)
    if len(seeds) == 0:
        raise ValueError('No seeds to generate (the seed list is empty)')
    label_dim = int(net.label_dim)

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
