"""The single table of named configurations for every model family.

A preset is a flat dict of options (`PRESETS[name]`). Its `family` names a module in `training/`
(FAMILIES) that declares the family's options with their defaults (`OPTIONS`) and turns resolved
options into its part of the training-loop arguments (`loop_kwargs`); COMMON_OPTIONS apply to
every family. `resolve()` gives a preset's complete options with overrides applied and checked;
training/config.py turns them into the arguments of training_loop(). (The presets of generation,
the official EDM2 post-hoc-EMA snapshots, are in training/generate.py.)

Adding a family: one module with FAMILY, OPTIONS, CHECKED_OPTIONS and loop_kwargs, listed in
FAMILIES, and its presets below. The training loop is not touched.
"""

import copy
import math

from torch_utils import util
from torch_utils.util import EasyDict
from training import networks_ardm
from training import networks_edm2
from training import networks_mar

FAMILIES = {module.FAMILY: module for module in [networks_edm2, networks_ardm, networks_mar]}

# Options every family understands (train_edm2.py has a flag for each; `--set` reaches the rest).
# Image counts accept Ki/Mi/Gi suffixes; an interval of 0 is off.
COMMON_OPTIONS = dict(
    cond        = True,         # Train class-conditional (labels from dataset.json).
    duration    = '64Mi',       # Training duration in images.
    batch       = 2048,         # Total batch size.
    batch_gpu   = 0,            # Limit batch size per GPU (0 = no limit; gradient accumulation above it).
    status      = '128Ki',      # Interval of status prints (images).
    snapshot    = '8Mi',        # Interval of network snapshots (images).
    checkpoint  = '128Mi',      # Interval of training-state checkpoints (images).
    seed        = 0,            # Random seed.
    workers     = 2,            # DataLoader worker processes per GPU/process.
    xflip       = False,        # Random horizontal flips of the dataset (doubles it).
    cache       = True,         # Keep the decoded dataset in memory (each data-loading process its own copy), as EDM2 does.
    lr          = 0.01,         # Reference learning rate.
    grad_clip   = 0.0,          # Clip the gradient norm to this value (0 = off).
    loss_scaling = 1.0,         # Loss scaling factor against fp16 under/overflows (EDM2's --ls).
    cudnn_benchmark = True,     # torch.backends.cudnn.benchmark (EDM2's --bench).
)
NIMG_OPTIONS = ['duration', 'batch', 'batch_gpu', 'status', 'snapshot', 'checkpoint']
# The common options whose range training/config.py checks (check_ranges); each family lists its
# own in CHECKED_OPTIONS (those its network, loss or encoder checks). check_value's generic "at
# least 0" rule for integers applies only to the other options, so that each value is checked in
# one place and a bad value has one message whatever its type (before, data_bound=-1 was refused
# by the generic rule and data_bound=-1.0 by MAR, with another message).
CHECKED_OPTIONS = {'seed'}

PRESETS = dict() # name -> dict of options (family and the values that differ from the defaults)

def defaults(family):
    """Every option of a family with its default value."""
    return dict(copy.deepcopy(COMMON_OPTIONS), **copy.deepcopy(FAMILIES[family].OPTIONS))

def preset(name, **opts):
    assert name not in PRESETS, name
    assert opts.get('family') in FAMILIES, f'{name}: unknown family {opts.get("family")}'
    unknown = set(opts) - {'family'} - set(defaults(opts['family']))
    assert not unknown, f'{name}: unknown options {sorted(unknown)}'
    PRESETS[name] = opts

def resolve(name, overrides=None):
    """The complete options of a preset with `overrides` applied: EasyDict, image counts parsed
    to ints. Raises ValueError naming the preset or option for an unknown preset, an option the
    family does not have, or a value of the wrong type. Overrides may use the old names of
    options (RENAMED)."""
    if name not in PRESETS:
        raise ValueError(f'unknown preset "{name}"; choose from: {", ".join(sorted(PRESETS))}')
    family = PRESETS[name]['family']
    default = defaults(family)
    opts = EasyDict(default, **copy.deepcopy(PRESETS[name]))
    for key, value in upgrade(overrides or {}).items():
        if key not in default:
            raise ValueError(f'option "{key}" does not apply to preset "{name}" (family {family}); '
                f'its options are: {", ".join(sorted(default))}')
        opts[key] = value
    checked = CHECKED_OPTIONS | FAMILIES[family].CHECKED_OPTIONS
    for key in default:
        opts[key] = check_value(key, opts[key], default[key], bounded=key not in checked)
    return opts

# Options renamed since runs were first recorded: old name -> (new name, {old value: new value}).
# Commands (--set) and the training_options.json of earlier runs may still use the old names.
# The "off" of data_bound, branch and head_steps is None, no longer 0.
RENAMED = dict(
    p_uncond            = ('label_dropout', {}),
    fp16                = ('mixed_precision', {}),
    head_sample_steps   = ('head_steps', {0: None}),
    data_bound          = ('data_bound', {0: None}),
    branch              = ('branch', {0: None}),
)

def upgrade(options):
    """Options written with old names or old "off" values -> today's (a new dict)."""
    upgraded = {}
    for key, value in options.items():
        new_key, new_values = RENAMED.get(key, (key, {}))
        if not isinstance(value, bool) and isinstance(value, (int, float)) and value in new_values:
            value = new_values[value]
        if new_key in upgraded and upgraded[new_key] != value:
            raise ValueError(f'option "{new_key}" is given twice with different values (once as "{key}", its old name)')
        upgraded[new_key] = value
    return upgraded

def family_kwargs(opts):
    """The family's part of the training-loop arguments for resolved options: dicts under
    encoder_kwargs (None: chosen from the dataset), network_kwargs, loss_kwargs,
    optimizer_kwargs, lr_kwargs and ema_kwargs."""
    return FAMILIES[opts.family].loop_kwargs(opts)

def check_value(key, value, default, bounded=True):
    """`value` in the type of the option's default (ints pass for floats, lists element by
    element; a default of None takes None or a number, which the family checks), image counts
    parsed, finite, and (`bounded`: an option whose range no other check covers) no negative
    integer; ValueError naming the option otherwise."""
    if key in NIMG_OPTIONS:
        try:
            return util.parse_nimg(value)
        except ValueError as e:
            raise ValueError(f'option "{key}": {e}') from None
    if isinstance(default, list):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f'option "{key}" expects a list like {default}, got {value!r}')
        return [check_value(key, v, default[0], bounded) for v in value] if default else list(value)
    if default is None: # Off by default (e.g. data_bound, branch): None, or a number the family checks.
        if value is None:
            return None
        util.check_type(value, float, f'option "{key}"')
    else:
        value = util.check_type(value, type(default), f'option "{key}"')
    # No option takes a negative count or a non-finite number (inf would train to NaN parameters).
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f'option "{key}" must be a finite number, got {value!r}')
    if bounded and isinstance(value, int) and not isinstance(value, bool) and value < 0:
        raise ValueError(f'option "{key}" must be at least 0, got {value!r}')
    return value

#----------------------------------------------------------------------------
# EDM2: magnitude-preserving U-Net with the EDM2 loss (training/networks_edm2.py).

# The official EDM2 presets (EDM2's table: ImageNet-512 via 64x64x4 latents; ImageNet-64 in pixels).
_IMG512 = dict(family='edm2', batch=2048, decay=70000, P_mean=-0.4, P_std=1.0)
preset('edm2-img512-xxs', **_IMG512, duration='2048Mi', channels=64,  lr=0.0170, dropout=0.0)
preset('edm2-img512-xs',  **_IMG512, duration='2048Mi', channels=128, lr=0.0120, dropout=0.0)
preset('edm2-img512-s',   **_IMG512, duration='2048Mi', channels=192, lr=0.0100, dropout=0.0)
preset('edm2-img512-m',   **_IMG512, duration='2048Mi', channels=256, lr=0.0090, dropout=0.1)
preset('edm2-img512-l',   **_IMG512, duration='1792Mi', channels=320, lr=0.0080, dropout=0.1)
preset('edm2-img512-xl',  **_IMG512, duration='1280Mi', channels=384, lr=0.0070, dropout=0.1)
preset('edm2-img512-xxl', **_IMG512, duration='896Mi',  channels=448, lr=0.0065, dropout=0.1)
_IMG64 = dict(family='edm2', batch=2048, decay=35000, P_mean=-0.8, P_std=1.6)
preset('edm2-img64-xs',   **_IMG64,  duration='1024Mi', channels=128, lr=0.0120, dropout=0.0)
preset('edm2-img64-s',    **_IMG64,  duration='1024Mi', channels=192, lr=0.0100, dropout=0.0)
preset('edm2-img64-m',    **_IMG64,  duration='2048Mi', channels=256, lr=0.0090, dropout=0.1)
preset('edm2-img64-l',    **_IMG64,  duration='1024Mi', channels=320, lr=0.0080, dropout=0.1)
preset('edm2-img64-xl',   **_IMG64,  duration='640Mi',  channels=384, lr=0.0070, dropout=0.1)

# The multi-source study: XS network on 256x256 images encoded to 32x32x4 latents, K sources
# with N images each (edm2-img256-xs-{K}c-{N}), each with its duration, lr and decay.
_IMG256 = dict(family='edm2', batch=2048, channels=128, dropout=0.0, P_mean=-0.4, P_std=1.0, lr_schedule='multisource')
preset('edm2-img256-xs-1c-100',   **_IMG256, duration='48Mi',  lr=0.004, decay=4000)
preset('edm2-img256-xs-1c-500',   **_IMG256, duration='128Mi', lr=0.004, decay=2000)
preset('edm2-img256-xs-1c-1000',  **_IMG256, duration='176Mi', lr=0.005, decay=2500)
preset('edm2-img256-xs-3c-100',   **_IMG256, duration='64Mi',  lr=0.002, decay=2000)
preset('edm2-img256-xs-3c-500',   **_IMG256, duration='64Mi',  lr=0.002, decay=2500)
preset('edm2-img256-xs-3c-1000',  **_IMG256, duration='64Mi',  lr=0.002, decay=2500)
preset('edm2-img256-xs-5c-100',   **_IMG256, duration='64Mi',  lr=0.004, decay=4000)
preset('edm2-img256-xs-5c-500',   **_IMG256, duration='128Mi', lr=0.006, decay=4000)
preset('edm2-img256-xs-5c-1000',  **_IMG256, duration='96Mi',  lr=0.006, decay=4000)
preset('edm2-img256-xs-10c-100',  **_IMG256, duration='64Mi',  lr=0.003, decay=3000)
preset('edm2-img256-xs-10c-500',  **_IMG256, duration='96Mi',  lr=0.003, decay=3000)
preset('edm2-img256-xs-10c-1000', **_IMG256, duration='384Mi', lr=0.006, decay=3000)
# The study's long 10-source, 1000-image run (its train_1c_1000.sh): 1536Mi images, a lower
# learning rate and a later decay than edm2-img256-xs-10c-1000.
preset('edm2-img256-xs-10c-1000-nlr', **_IMG256, duration='1536Mi', lr=0.004, decay=6000)

# Small enough to train on the built-in 8x8 digits on a laptop CPU in minutes (4.4 minutes on two
# cores; 1.0M parameters). Label dropout lets the same network guide itself (classifier-free
# guidance). Measured at 128Ki (1000 samples vs the held-out digits): class accuracy 0.975 at
# guidance 1 and 1.000 at guidance 2, fd_digits 0.076 / 0.174 (real training digits: 0.056).
preset('edm2-digits', family='edm2', duration='128Ki', batch=128, status='8Ki', snapshot='64Ki',
    checkpoint='64Ki', workers=0, channels=32, channel_mult=[1, 2], num_blocks=2, attn_resolutions=[4],
    lr=0.01, decay=1000, rampup=0.01, P_mean=-0.8, P_std=1.6, label_dropout=0.1, ema_stds=[0.050, 0.100])

# The digits multi-source study (run_study.py --data digits): a network small enough (0.16M
# parameters, 16 channels, one block per resolution, dropout 0.3) that it cannot simply memorize
# a few images per class, so that what one source teaches it can carry over to another; no label
# dropout (the study samples without guidance); a constant learning rate after a short warm-up,
# so that the snapshot at any image count is the model a run of that length gives.
preset('edm2-digits-study', family='edm2', duration='64Ki', batch=64, status='8Ki', snapshot='32Ki', checkpoint='64Ki',
    workers=0, channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.3, lr=0.01, decay=0,
    rampup=0.002, P_mean=-0.8, P_std=1.6, ema_stds=[0.050, 0.100])

#----------------------------------------------------------------------------
# ARDM: order-agnostic and upscale autoregressive diffusion over K discrete levels
# (training/networks_ardm.py; Hoogeboom et al., ICLR 2022).

# Built-in 8x8 digits (17 gray levels), class-conditional: about 13 minutes on one CPU thread.
# The paper's optimiser with an EMA half-life short enough for a run this short.
_ARDM_DIGITS = dict(family='ardm', levels=17, channels=64, num_blocks=4, batch=64, duration='384Ki',
    status='16Ki', snapshot='64Ki', checkpoint='64Ki', workers=0, ema_halflife=4)
preset('ardm-digits', **_ARDM_DIGITS)
preset('ardm-digits-bin', **(_ARDM_DIGITS | dict(levels=2)))
preset('ardm-digits-blur', **(_ARDM_DIGITS | dict(cond_blur=1.0)))
# Binarized MNIST (dataset_tool.py convert --source train-images-idx3-ubyte.gz --resolution 32x32:
# EDM2's format needs a power of two; the paper's images are 28x28).
preset('ardm-mnist-bin', family='ardm', levels=2, channels=128, num_blocks=16, batch=128, duration='64Mi')
# CIFAR-10, 8-bit: the paper's OA-ARDM and upscale ARDM with branch factor 4 (4 stages).
preset('ardm-cifar10', family='ardm', levels=256, channels=256, num_blocks=32, batch=128, duration='128Mi')
preset('ardm-upscale4-cifar10', family='ardm', levels=256, branch=4, channels=256, num_blocks=32, batch=128, duration='128Mi')

#----------------------------------------------------------------------------
# MAR: masked autoregressive transformer with a per-token diffusion (or flow) head
# (training/networks_mar.py; Li et al., 2024, arXiv 2406.11838).

# ImageNet 256x256 through our 8x-downsampling VAE: 32x32x4 latents in 2x2 patches give the
# paper's 16x16 = 256 tokens of 16 numbers (the paper: a 16x-downsampling VAE with 16 channels,
# patch 1). Sizes as in the paper (208M, 479M, 943M parameters); 400 epochs at batch 2048.
_IMAGENET_MAR = dict(family='mar', duration='488Mi', batch=2048)
preset('mar-b', **_IMAGENET_MAR, width=768,  encoder_depth=12, decoder_depth=12, num_heads=12, head_width=1024, head_depth=6)
preset('mar-l', **_IMAGENET_MAR, width=1024, encoder_depth=16, decoder_depth=16, num_heads=16, head_width=1280, head_depth=8)
preset('mar-h', **_IMAGENET_MAR, width=1280, encoder_depth=20, decoder_depth=20, num_heads=16, head_width=1536, head_depth=12)

# Built-in 8x8 digits in pixels (bounded: clipped to [-1, 1]), 2x2 patches = 16 tokens: trains
# in 15 minutes on a laptop CPU. A short EMA half-life and a short warm-up for a run this short.
_MAR_DIGITS = dict(family='mar', duration='96Ki', batch=128, status='8Ki', snapshot='32Ki', checkpoint='32Ki',
    workers=0, patch_size=2, width=128, encoder_depth=4, decoder_depth=4, num_heads=4, buffer_tokens=4,
    head_width=128, head_depth=3, data_bound=1.0, sample_steps=8, lr=1e-3, rampup=0.01, ema_halflife=6)
preset('mar-digits', **_MAR_DIGITS)
preset('mar-digits-flow', **(_MAR_DIGITS | dict(head='flow')))
# The EDM head (sigma_data 0.5, 32 Heun steps) on the masked model, and the causal model in raster
# order with the same head and the same number of blocks (8) at the same width.
preset('mar-digits-edm', **(_MAR_DIGITS | dict(head='edm')))
preset('mar-digits-causal', **(_MAR_DIGITS | dict(order='raster', depth=8, head='edm')))

# The paper's causal baseline (its "AR, raster order" rows) at the base size: MAR-B's 24 blocks of
# width 768 as one causal transformer, the DiffLoss head, the same recipe and data as mar-b.
preset('ar-b', **(PRESETS['mar-b'] | dict(order='raster', depth=24)))

#----------------------------------------------------------------------------
