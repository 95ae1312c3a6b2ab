"""The single table of named configurations for every model family.

A preset is a flat dict of options (`PRESETS[name]`). Its `family` names a module in `training/`
(FAMILIES) that declares the family's options with their defaults (`OPTIONS`) and turns resolved
options into its part of the training-loop arguments (`loop_kwargs`); COMMON_OPTIONS apply to
every family. `resolve()` gives a preset's complete options with overrides applied and checked;
training/config.py turns them into the arguments of training_loop(). (The presets of generation,
the official EDM2 post-hoc-EMA snapshots, are in training/generate.py.)

Adding a family: one module with FAMILY, OPTIONS and loop_kwargs, listed in FAMILIES, and its
presets below. The training loop is not touched.
"""

import ast
import copy
import math
import re

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
    family does not have, or a value of the wrong type."""
    if name not in PRESETS:
        raise ValueError(f'unknown preset "{name}"; choose from: {", ".join(sorted(PRESETS))}')
    family = PRESETS[name]['family']
    default = defaults(family)
    opts = EasyDict(default, **copy.deepcopy(PRESETS[name]))
    for key, value in (overrides or {}).items():
        if key not in default:
            raise ValueError(f'option "{key}" does not apply to preset "{name}" (family {family}); '
                f'its options are: {", ".join(sorted(default))}')
        opts[key] = value
    for key in default:
        opts[key] = check_value(key, opts[key], default[key])
    return opts

def parse_override(text):
    """'key=value' (train_edm2.py --set) -> (key, value): the value a Python literal, a bare word
    a string."""
    match = re.fullmatch(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)', text)
    if not match:
        raise ValueError(f'--set "{text}" is not KEY=VALUE')
    key, raw = match.group(1), match.group(2).strip()
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key, value

def family_kwargs(opts):
    """The family's part of the training-loop arguments for resolved options: dicts under
    encoder_kwargs (None: chosen from the dataset), network_kwargs, loss_kwargs,
    optimizer_kwargs, lr_kwargs and ema_kwargs."""
    return FAMILIES[opts.family].loop_kwargs(opts)

def check_value(key, value, default):
    """`value` in the type of the option's default (ints pass for floats, lists element by
    element), image counts parsed; ValueError naming the option otherwise."""
    if key in NIMG_OPTIONS:
        try:
            return util.parse_nimg(value)
        except ValueError as e:
            raise ValueError(f'option "{key}": {e}') from None
    expected = type(default)
    if isinstance(default, list):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f'option "{key}" expects a list like {default}, got {value!r}')
        return [check_value(key, v, default[0]) for v in value] if default else list(value)
    ok = isinstance(value, expected) and (expected is bool or not isinstance(value, bool))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        kind = {bool: 'True or False', int: 'an integer', float: 'a number', str: 'a string'}.get(expected, expected.__name__)
        raise ValueError(f'option "{key}" expects {kind}, got {value!r}')
    # No option takes a negative count or a non-finite number (inf would train to NaN parameters).
    if expected is float and not math.isfinite(value):
        raise ValueError(f'option "{key}" must be a finite number, got {value!r}')
    if expected is int and value < 0:
        raise ValueError(f'option "{key}" must be at least 0, got {value!r}')
    return value

#----------------------------------------------------------------------------
# EDM2: magnitude-preserving U-Net with the EDM2 loss (training/networks_edm2.py).

# The official EDM2 presets (ImageNet-512 via 64x64x4 latents; ImageNet-64 in pixels).
for _size, _dur, _ch, _lr, _drop in [('xxs', '2048Mi', 64, 0.0170, 0.0), ('xs', '2048Mi', 128, 0.0120, 0.0),
        ('s', '2048Mi', 192, 0.0100, 0.0), ('m', '2048Mi', 256, 0.0090, 0.1), ('l', '1792Mi', 320, 0.0080, 0.1),
        ('xl', '1280Mi', 384, 0.0070, 0.1), ('xxl', '896Mi', 448, 0.0065, 0.1)]:
    preset(f'edm2-img512-{_size}', family='edm2', duration=_dur, batch=2048, channels=_ch, lr=_lr, decay=70000,
        dropout=_drop, P_mean=-0.4, P_std=1.0)
for _size, _dur, _ch, _lr, _drop in [('xs', '1024Mi', 128, 0.0120, 0.0), ('s', '1024Mi', 192, 0.0100, 0.0),
        ('m', '2048Mi', 256, 0.0090, 0.1), ('l', '1024Mi', 320, 0.0080, 0.1), ('xl', '640Mi', 384, 0.0070, 0.1)]:
    preset(f'edm2-img64-{_size}', family='edm2', duration=_dur, batch=2048, channels=_ch, lr=_lr, decay=35000,
        dropout=_drop, P_mean=-0.8, P_std=1.6)

# The multi-source study: XS network on 256x256 images encoded to 32x32x4 latents, K sources
# with N images each; (duration, lr, decay) per (K, N).
MULTISOURCE_GRID = {
    (1, 100): ('48Mi', 0.004, 4000),  (1, 500): ('128Mi', 0.004, 2000),  (1, 1000): ('176Mi', 0.005, 2500),
    (3, 100): ('64Mi', 0.002, 2000),  (3, 500): ('64Mi', 0.002, 2500),   (3, 1000): ('64Mi', 0.002, 2500),
    (5, 100): ('64Mi', 0.004, 4000),  (5, 500): ('128Mi', 0.006, 4000),  (5, 1000): ('96Mi', 0.006, 4000),
    (10, 100): ('64Mi', 0.003, 3000), (10, 500): ('96Mi', 0.003, 3000),  (10, 1000): ('384Mi', 0.006, 3000),
}
for (_k, _n), (_dur, _lr, _decay) in MULTISOURCE_GRID.items():
    preset(f'edm2-img256-xs-{_k}c-{_n}', family='edm2', duration=_dur, batch=2048, channels=128, lr=_lr,
        decay=_decay, dropout=0.0, P_mean=-0.4, P_std=1.0, lr_schedule='multisource')
# The study's long 10-source, 1000-image run (its train_1c_1000.sh): 1536Mi images, a lower
# learning rate and a later decay than edm2-img256-xs-10c-1000.
preset('edm2-img256-xs-10c-1000-nlr', **(PRESETS['edm2-img256-xs-10c-1000'] | dict(duration='1536Mi', lr=0.004, decay=6000)))

# Small enough to train on the built-in 8x8 digits on a laptop CPU in minutes (4.4 minutes on two
# cores; 1.0M parameters). Label dropout lets the same network guide itself (classifier-free
# guidance). Measured at 128Ki (1000 samples vs the held-out digits): class accuracy 0.975 at
# guidance 1 and 1.000 at guidance 2, fd_digits 0.076 / 0.174 (real training digits: 0.056).
preset('edm2-digits', family='edm2', duration='128Ki', batch=128, status='8Ki', snapshot='64Ki',
    checkpoint='64Ki', workers=0, channels=32, channel_mult=[1, 2], num_blocks=2, attn_resolutions=[4],
    lr=0.01, decay=1000, rampup=0.01, P_mean=-0.8, P_std=1.6, p_uncond=0.1, ema_stds=[0.050, 0.100])

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
for _size, _width, _depth, _heads, _head_width, _head_depth in [('b', 768, 12, 12, 1024, 6),
        ('l', 1024, 16, 16, 1280, 8), ('h', 1280, 20, 16, 1536, 12)]:
    preset(f'mar-{_size}', family='mar', duration='488Mi', batch=2048, width=_width, encoder_depth=_depth,
        decoder_depth=_depth, num_heads=_heads, head_width=_head_width, head_depth=_head_depth)

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
