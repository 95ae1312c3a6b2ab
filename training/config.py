"""From a preset and overrides to the complete, validated arguments of training_loop().

    opts, loop_kwargs = config.build('edm2-digits', dict(duration='2Ki'), data='digits.zip')
    training_loop.training_loop(run_dir=..., **loop_kwargs)

Everything a run could trip over later is checked here, before anything is written: the options
(presets.resolve), the dataset, the batch split over the processes, the intervals, and the
network itself (built on the `meta` device, which allocates nothing).
"""

import copy
import os

import torch

from torch_utils import util
from training import presets

#----------------------------------------------------------------------------

def build(preset, overrides=None, data=None, world_size=1):
    """(resolved options, training_loop() keyword arguments without run_dir). ValueError or
    FileNotFoundError naming the option or file on any inconsistency."""
    opts = presets.resolve(preset, overrides)
    check_options(opts, world_size)
    dataset_kwargs = dict(class_name='training.dataset.ImageFolderDataset', path=data, use_labels=opts.cond, xflip=opts.xflip, cache=opts.cache)
    dataset = open_dataset(dataset_kwargs, opts.cond)
    family = presets.family_kwargs(opts)
    loop_kwargs = util.EasyDict(
        dataset_kwargs      = dataset_kwargs,
        encoder_kwargs      = family['encoder_kwargs'] or default_encoder_kwargs(dataset, opts, data),
        data_loader_kwargs  = dict(num_workers=opts.workers),
        network_kwargs      = family['network_kwargs'],
        loss_kwargs         = family['loss_kwargs'],
        optimizer_kwargs    = family['optimizer_kwargs'],
        lr_kwargs           = family['lr_kwargs'],
        ema_kwargs          = family['ema_kwargs'],
        seed                = opts.seed,
        batch_size          = opts.batch,
        batch_gpu           = batch_per_round(opts.batch, opts.batch_gpu, world_size),
        total_nimg          = opts.duration,
        status_nimg         = opts.status,
        snapshot_nimg       = opts.snapshot,
        checkpoint_nimg     = opts.checkpoint,
        grad_clip           = opts.grad_clip,
        loss_scaling        = opts.loss_scaling,
        cudnn_benchmark     = opts.cudnn_benchmark,
    )
    check_network(loop_kwargs, dataset)
    return opts, loop_kwargs

#----------------------------------------------------------------------------
# Checks.

def check_options(opts, world_size=1):
    """The checks that need no dataset: value ranges, the batch split and the intervals."""
    check_ranges(opts, world_size)
    check_batch(opts, world_size)

def describe_data(dataset_kwargs):
    """What the dataset is, as training_options.json records it (training/runs.py compares it on
    resumption): absolute path, image count, stored shape [C, H, W], number of classes (whether or
    not this run uses them) and a fingerprint of its listing."""
    dataset = util.construct_class_by_name(**dict(dataset_kwargs, use_labels=True, xflip=False))
    return dict(path=os.path.abspath(dataset_kwargs['path']), images=len(dataset), shape=dataset.image_shape,
        classes=dataset.label_dim, fingerprint=dataset.fingerprint())

def check_ranges(opts, world_size=1):
    if not 0 <= opts.seed <= 2**32 - world_size: # Rank r seeds with seed + r; NumPy's seeds end at 2^32 - 1.
        raise ValueError(f'seed must be in 0..{2**32 - world_size}, got {opts.seed}')
    if opts.batch < 1 or opts.duration < 1:
        raise ValueError(f'batch and duration must be at least 1 image, got batch {opts.batch} and duration {opts.duration}')
    if not opts.lr > 0 or opts.grad_clip < 0:
        raise ValueError(f'lr must be positive and grad_clip at least 0, got lr {opts.lr} and grad_clip {opts.grad_clip}')
    if not opts.loss_scaling > 0:
        raise ValueError(f'loss_scaling (--ls) must be positive, got {opts.loss_scaling}')

def batch_per_round(batch, batch_gpu, world_size):
    """Images per process in one accumulation round: the option batch_gpu (0 = no limit) capped
    at the process's share of the batch. The training loop takes it as computed here."""
    per_process = batch // world_size
    return min(batch_gpu or per_process, per_process)

def check_batch(opts, world_size):
    """The batch splits evenly into processes x accumulation rounds x batch_gpu, and every
    interval is a whole number of batches (0 = off)."""
    batch_gpu = batch_per_round(opts.batch, opts.batch_gpu, world_size)
    if opts.batch % world_size != 0 or batch_gpu < 1 or (opts.batch // world_size) % batch_gpu != 0:
        raise ValueError(f'batch {opts.batch} is not divisible by {world_size} processes x batch-gpu {opts.batch_gpu or opts.batch // world_size}')
    for option in ['duration', 'status', 'snapshot', 'checkpoint']:
        if opts[option] % opts.batch != 0:
            raise ValueError(f'{option}: {opts[option]} images is not a multiple of the batch size {opts.batch}')
    if 0 < opts.snapshot < 1000: # Two snapshots in one thousand images would get the same name.
        raise ValueError(f'snapshot: {opts.snapshot} images is below 1000; snapshot names count thousands of images (kimg)')

def check_slice(slice_nimg, batch_size):
    if slice_nimg < 1 or slice_nimg % batch_size != 0:
        raise ValueError(f'slice: {slice_nimg} images is not a positive multiple of the batch size {batch_size}')

def open_dataset(dataset_kwargs, cond):
    """The dataset object, or a ValueError that names the file and what is wrong with it."""
    path = dataset_kwargs['path']
    try:
        dataset = util.construct_class_by_name(**dataset_kwargs)
        dataset[0] # Decode one item and the labels: an unreadable file fails here, not in the loop.
        dataset.check_shapes()
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f'--data {path}: cannot read the dataset ({e})') from e
    if cond and not dataset.has_labels:
        raise ValueError(f'--data {path}: the dataset has no labels (dataset.json); train unconditionally with --uncond')
    return dataset

def default_encoder_kwargs(dataset, opts, path):
    """EDM2's rule: 8-channel float data are VAE latents (posterior mean and std), uint8 data
    are pixels."""
    image, _ = dataset[0]
    if image.dtype == 'uint8':
        return dict(class_name='training.encoders.StandardRGBEncoder')
    if dataset.num_channels == 8 and 'vae' in opts:
        return dict(class_name='training.encoders.StabilityVAEEncoder', vae_name=opts.vae)
    raise ValueError(f'the dataset {path} holds {dataset.num_channels}-channel {image.dtype} data; '
        f'the {opts.family} family takes uint8 pixels' + (' or 8-channel VAE latents' if 'vae' in opts else ''))

def check_network(loop_kwargs, dataset):
    """Build the encoder (without loading weights), the loss, and the network and its EMA on the
    meta device, so that an impossible configuration (e.g. more resolution levels than the images
    have) fails now."""
    encoder = util.construct_class_by_name(**loop_kwargs.encoder_kwargs)
    image, label = dataset[0]
    shape = encoder.encode_latents(torch.as_tensor(image).unsqueeze(0)).shape
    util.construct_class_by_name(**loop_kwargs.loss_kwargs)
    with torch.device('meta'):
        try:
            net = util.construct_class_by_name(**copy.deepcopy(loop_kwargs.network_kwargs), img_resolution=shape[-1],
                img_channels=shape[1], label_dim=label.shape[-1])
        except (ValueError, TypeError, AssertionError, RuntimeError, ArithmeticError) as e:
            raise ValueError(f'the network cannot be built for {shape[1]}x{shape[2]}x{shape[3]} inputs '
                f'and {label.shape[-1]} classes: {e}') from e
        if loop_kwargs.ema_kwargs is not None:
            util.construct_class_by_name(net=net, **loop_kwargs.ema_kwargs)

#----------------------------------------------------------------------------
