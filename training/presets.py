"""The single table of named configurations for every model family.

A preset is a flat dict of options (`PRESETS[name]`); its `family` names a builder that turns
the options into the family's part of the training-loop arguments (network, loss, encoder,
optimizer, learning-rate schedule, EMA). train_edm2.py resolves a preset, applies the command
line's overrides and builds the loop's arguments; generate_images.py reads GENERATION_PRESETS.

Adding a family: register its builder with @family(name, **defaults) and add presets with
preset(name, family=name, ...). The training loop is not touched.
"""

import copy
from torch_utils.util import EasyDict

PRESETS = dict()    # name -> EasyDict of options
FAMILIES = dict()   # family name -> EasyDict(builder=fn(opts) -> EasyDict, defaults=EasyDict)

# Options every family understands (train_edm2.py has a flag for each; `--set` reaches the rest).
COMMON_DEFAULTS = EasyDict(
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
    lr          = 0.01,         # Reference learning rate.
    grad_clip   = 0,            # Clip the gradient norm to this value (0 = off).
)

def family(name, **defaults):
    """Register a family builder: fn(opts) -> EasyDict with the keys encoder_kwargs (None: chosen
    from the dataset), network_kwargs, loss_kwargs, optimizer_kwargs, lr_kwargs, ema_kwargs."""
    def register(builder):
        FAMILIES[name] = EasyDict(builder=builder, defaults=EasyDict(defaults))
        return builder
    return register

def preset(name, **opts):
    assert name not in PRESETS, name
    assert opts.get('family') in FAMILIES, f'{name}: unknown family {opts.get("family")}'
    unknown = set(opts) - {'family'} - set(COMMON_DEFAULTS) - set(FAMILIES[opts['family']].defaults)
    assert not unknown, f'{name}: unknown options {sorted(unknown)}'
    PRESETS[name] = EasyDict(opts)

def resolve(name, overrides=None):
    """The full option dict of a preset with `overrides` applied. Raises KeyError for an unknown
    preset and ValueError for an override that the preset's family does not have."""
    if name not in PRESETS:
        raise KeyError(name)
    opts = EasyDict(copy.deepcopy(COMMON_DEFAULTS))
    opts.update(copy.deepcopy(FAMILIES[PRESETS[name].family].defaults))
    opts.update(copy.deepcopy(PRESETS[name]))
    for key, value in (overrides or {}).items():
        if key not in opts or key == 'family':
            raise ValueError(f'option "{key}" does not apply to preset "{name}" (family {opts.family}); '
                f'its options are: {", ".join(sorted(k for k in opts if k != "family"))}')
        opts[key] = value
    return opts

def build(opts):
    """The family part of the training-loop arguments for resolved options."""
    return FAMILIES[opts.family].builder(opts)

#----------------------------------------------------------------------------
# Learning-rate schedules by name (functions in training/training_loop.py).

LR_SCHEDULES = dict(
    edm2        = 'training.training_loop.learning_rate_schedule',  # EDM2: inverse sqrt after `decay` batches.
    multisource = 'training.training_loop.multisource_lr_schedule', # The multi-source study's variant.
    constant    = 'training.training_loop.constant_lr',             # Warm-up, then constant.
)

def lr_schedule_kwargs(opts, **kwargs):
    if opts.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f'unknown lr_schedule "{opts.lr_schedule}"; choose from {", ".join(LR_SCHEDULES)}')
    return EasyDict(func_name=LR_SCHEDULES[opts.lr_schedule], **kwargs)

#----------------------------------------------------------------------------
# EDM2: magnitude-preserving U-Net with the EDM2 loss (training/networks_edm2.py).

@family('edm2',
    channels            = 192,          # Base channel count (model_channels).
    channel_mult        = None,         # Per-resolution multipliers (None = network default [1,2,3,4]).
    num_blocks          = None,         # Blocks per resolution (None = network default 3).
    attn_resolutions    = None,         # Resolutions with self-attention (None = network default [16,8]).
    dropout             = 0.0,          # Dropout probability.
    P_mean              = -0.4,         # Log-normal noise level distribution: mean.
    P_std               = 1.0,          # Log-normal noise level distribution: std.
    sigma_data          = 0.5,          # Expected standard deviation of the training data.
    p_uncond            = 0.0,          # Label dropout probability (classifier-free guidance).
    decay               = 70000,        # Learning rate decay: batches before the inverse-sqrt decay.
    rampup              = 10.0,         # Learning rate warm-up (millions of images).
    lr_schedule         = 'edm2',       # Name in LR_SCHEDULES.
    ema_stds            = [0.050, 0.100], # Power-function EMA profiles saved in the snapshots.
    fp16                = True,         # Mixed precision (CUDA only; CPU always runs fp32).
    vae                 = 'stabilityai/sd-vae-ft-mse', # VAE for latent datasets (hub name or local folder).
)
def _build_edm2(o):
    network_kwargs = EasyDict(class_name='training.networks_edm2.Precond', model_channels=o.channels,
        dropout=o.dropout, sigma_data=o.sigma_data, use_fp16=o.fp16)
    for key in ['channel_mult', 'num_blocks', 'attn_resolutions']:
        if o[key] is not None:
            network_kwargs[key] = o[key]
    return EasyDict(
        encoder_kwargs      = None, # From the dataset: pixels, or 8-channel VAE latents decoded with `vae`.
        network_kwargs      = network_kwargs,
        loss_kwargs         = EasyDict(class_name='training.networks_edm2.EDM2Loss', P_mean=o.P_mean, P_std=o.P_std,
                                sigma_data=o.sigma_data, p_uncond=o.p_uncond),
        optimizer_kwargs    = EasyDict(class_name='torch.optim.Adam', betas=[0.9, 0.99], eps=1e-8),
        lr_kwargs           = lr_schedule_kwargs(o, ref_lr=o.lr, ref_batches=o.decay, rampup_Mimg=o.rampup),
        ema_kwargs          = EasyDict(class_name='training.phema.PowerFunctionEMA', stds=o.ema_stds),
    )

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

# Small enough to train on the built-in 8x8 digits on a laptop CPU in minutes (4.4 minutes on two
# cores; 1.0M parameters). Label dropout lets the same network guide itself (classifier-free
# guidance). Measured at 128Ki (1000 samples vs the held-out digits): class accuracy 0.975 at
# guidance 1 and 1.000 at guidance 2, fd_digits 0.076 / 0.174 (real training digits: 0.056).
preset('edm2-digits', family='edm2', duration='128Ki', batch=128, status='8Ki', snapshot='64Ki',
    checkpoint='64Ki', workers=0, channels=32, channel_mult=[1, 2], num_blocks=2, attn_resolutions=[4],
    lr=0.01, decay=1000, rampup=0.01, P_mean=-0.8, P_std=1.6, p_uncond=0.1, ema_stds=[0.050, 0.100])

#----------------------------------------------------------------------------
# ARDM: order-agnostic and upscale autoregressive diffusion over K discrete levels
# (training/networks_ardm.py; Hoogeboom et al., ICLR 2022). The paper's optimiser: Adam 1e-4,
# gradient clipping at 100, an EMA of the weights (evaluated and sampled with the EMA).

@family('ardm',
    levels              = 256,          # K: discrete levels per channel (the dataset is quantized on the fly).
    branch              = 0,            # Upscale ARDM: branch factor b, most significant digits first (0 = OA-ARDM).
    channels            = 256,          # Channels of the residual blocks.
    num_blocks          = 32,           # Residual blocks (full resolution, as in the paper).
    dropout             = 0.0,          # Dropout probability.
    cond_blur           = 0.0,          # P(x|z): std (pixels) of the Gaussian blur giving z (0 = no z).
    loss_decay          = 0.999,        # Running per-step loss L_t: weight of the old value per observation.
    lr                  = 1e-4,         # Adam learning rate.
    betas               = [0.9, 0.999], # Adam betas.
    rampup              = 0.0,          # Learning rate warm-up (millions of images).
    lr_schedule         = 'constant',   # Name in LR_SCHEDULES.
    grad_clip           = 100,          # Gradient norm clipping.
    ema_beta            = 0.9999,       # EMA decay per step.
    ema_halflife        = 0,            # EMA half-life in kimg instead of ema_beta (0 = use ema_beta).
    batch               = 128,          # Total batch size.
)
def _build_ardm(o):
    ema_kwargs = EasyDict(class_name='training.phema.TraditionalEMA')
    if o.ema_halflife:
        ema_kwargs.halflife_kimg = o.ema_halflife
    else:
        ema_kwargs.beta = o.ema_beta
    return EasyDict(
        encoder_kwargs      = EasyDict(class_name='training.encoders.QuantizeEncoder', levels=o.levels),
        network_kwargs      = EasyDict(class_name='training.networks_ardm.ARDMNet', levels=o.levels, branch=o.branch or None,
                                model_channels=o.channels, num_blocks=o.num_blocks, dropout=o.dropout,
                                cond_blur=o.cond_blur, loss_decay=o.loss_decay),
        loss_kwargs         = EasyDict(class_name='training.networks_ardm.ARDMLoss'),
        optimizer_kwargs    = EasyDict(class_name='torch.optim.Adam', betas=o.betas, eps=1e-8),
        lr_kwargs           = lr_schedule_kwargs(o, ref_lr=o.lr, rampup_Mimg=o.rampup),
        ema_kwargs          = ema_kwargs,
    )

# Built-in 8x8 digits (17 gray levels), class-conditional: about 13 minutes on one CPU thread.
# The paper's optimiser with an EMA half-life short enough for a run this short.
_ARDM_DIGITS = dict(family='ardm', levels=17, channels=64, num_blocks=4, batch=64, duration='384Ki',
    status='16Ki', snapshot='64Ki', checkpoint='64Ki', workers=0, ema_halflife=4)
preset('ardm-digits', **_ARDM_DIGITS)
preset('ardm-digits-bin', **(_ARDM_DIGITS | dict(levels=2)))
preset('ardm-digits-blur', **(_ARDM_DIGITS | dict(cond_blur=1.0)))
# 28x28 binarized MNIST (dataset_tool.py convert --source train-images-idx3-ubyte.gz).
preset('ardm-mnist-bin', family='ardm', levels=2, channels=128, num_blocks=16, batch=128, duration='64Mi')
# CIFAR-10, 8-bit: the paper's OA-ARDM and upscale ARDM with branch factor 4 (4 stages).
preset('ardm-cifar10', family='ardm', levels=256, channels=256, num_blocks=32, batch=128, duration='128Mi')
preset('ardm-upscale4-cifar10', family='ardm', levels=256, branch=4, channels=256, num_blocks=32, batch=128, duration='128Mi')

#----------------------------------------------------------------------------
# MAR: masked autoregressive transformer with a per-token diffusion (or flow) head
# (training/networks_mar.py; Li et al., 2024, arXiv 2406.11838). The paper's recipe: AdamW
# (0.9, 0.95), weight decay 0.02 (not on biases, norms and the head), lr 1e-4 per 256 images
# (8e-4 at batch 2048), 100 epochs of warm-up then constant, gradient clip 3.0, EMA 0.9999.

@family('mar',
    patch_size          = 2,            # Tokens are patch_size x patch_size patches of the net-space image.
    width               = 768,          # Transformer width (encoder and decoder).
    encoder_depth       = 12,           # Encoder blocks.
    decoder_depth       = 12,           # Decoder blocks.
    num_heads           = 12,           # Attention heads.
    buffer_tokens       = 64,           # Buffer tokens carrying the class embedding.
    dropout             = 0.1,          # Attention and projection dropout.
    head                = 'diffusion',  # Per-token head: 'diffusion' (DiffLoss) or 'flow'.
    head_width          = 1024,         # Head MLP width.
    head_depth          = 6,            # Head residual blocks.
    head_sample_steps   = 0,            # Head sampling steps (0 = the head's default: 100 diffusion, 50 flow).
    flow_prediction     = 'v',          # Flow head: predict the velocity 'v' or the clean token 'x'.
    flow_solver         = 'heun',       # Flow head: 'heun' or 'euler'.
    data_bound          = None,         # Clip predicted clean tokens to [-bound, bound]: 1.0 for pixels, None for latents.
    sample_steps        = 64,           # Default generation steps K.
    label_dropout       = 0.1,          # Label dropout to the null class (guidance).
    mask_ratio_min      = 0.7,          # Mask ratio ~ normal(1, 0.25) truncated to [mask_ratio_min, 1].
    batch_mul           = 4,            # Head noise draws per masked token (diffusion_batch_mul).
    mixed_precision     = True,         # bfloat16 transformer on CUDA.
    lr                  = 8e-4,         # AdamW learning rate after warm-up.
    betas               = [0.9, 0.95],  # AdamW betas.
    weight_decay        = 0.02,         # AdamW weight decay.
    rampup              = 128.1,        # Learning rate warm-up (millions of images; 100 ImageNet epochs).
    lr_schedule         = 'constant',   # Name in LR_SCHEDULES.
    grad_clip           = 3.0,          # Gradient norm clipping.
    ema_beta            = 0.9999,       # EMA decay per step.
    ema_halflife        = 0,            # EMA half-life in kimg instead of ema_beta (0 = use ema_beta).
    vae                 = 'stabilityai/sd-vae-ft-mse', # VAE for latent datasets (hub name or local folder).
)
def _build_mar(o):
    head_kwargs = dict(prediction=o.flow_prediction, solver=o.flow_solver) if o.head == 'flow' else dict()
    if o.head_sample_steps:
        head_kwargs['sample_steps'] = o.head_sample_steps
    ema_kwargs = EasyDict(class_name='training.phema.TraditionalEMA')
    if o.ema_halflife:
        ema_kwargs.halflife_kimg = o.ema_halflife
    else:
        ema_kwargs.beta = o.ema_beta
    return EasyDict(
        encoder_kwargs      = None, # From the dataset: pixels (bounded), or VAE latents (unbounded).
        network_kwargs      = EasyDict(class_name='training.networks_mar.MAR', patch_size=o.patch_size, width=o.width,
                                encoder_depth=o.encoder_depth, decoder_depth=o.decoder_depth, num_heads=o.num_heads,
                                buffer_tokens=o.buffer_tokens, dropout=o.dropout, head=o.head, head_width=o.head_width,
                                head_depth=o.head_depth, head_kwargs=head_kwargs, data_bound=o.data_bound,
                                sample_steps=o.sample_steps, mixed_precision=o.mixed_precision),
        loss_kwargs         = EasyDict(class_name='training.networks_mar.MARLoss', label_dropout=o.label_dropout,
                                mask_ratio_min=o.mask_ratio_min, batch_mul=o.batch_mul),
        optimizer_kwargs    = EasyDict(class_name='torch.optim.AdamW', betas=o.betas, weight_decay=o.weight_decay),
        lr_kwargs           = lr_schedule_kwargs(o, ref_lr=o.lr, rampup_Mimg=o.rampup),
        ema_kwargs          = ema_kwargs,
    )

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

#----------------------------------------------------------------------------

#----------------------------------------------------------------------------
# The official EDM2 post-hoc-EMA presets (the table of the official generate_images.py),
# read by generate_images.py --net/--gnet/--guidance:
# the network, the guiding network and the guidance weight that gave the best FID / FD_DINOv2.

_model_root = 'https://nvlabs-fi-cdn.nvidia.com/edm2/posthoc-reconstructions'

GENERATION_PRESETS = {
    'edm2-img512-xs-fid':        EasyDict(net=f'{_model_root}/edm2-img512-xs-2147483-0.135.pkl'),   # fid = 3.53
    'edm2-img512-s-fid':         EasyDict(net=f'{_model_root}/edm2-img512-s-2147483-0.130.pkl'),    # fid = 2.56
    'edm2-img512-m-fid':         EasyDict(net=f'{_model_root}/edm2-img512-m-2147483-0.100.pkl'),    # fid = 2.25
    'edm2-img512-l-fid':         EasyDict(net=f'{_model_root}/edm2-img512-l-1879048-0.085.pkl'),    # fid = 2.06
    'edm2-img512-xl-fid':        EasyDict(net=f'{_model_root}/edm2-img512-xl-1342177-0.085.pkl'),   # fid = 1.96
    'edm2-img512-xxl-fid':       EasyDict(net=f'{_model_root}/edm2-img512-xxl-0939524-0.070.pkl'),  # fid = 1.91
    'edm2-img64-s-fid':          EasyDict(net=f'{_model_root}/edm2-img64-s-1073741-0.075.pkl'),     # fid = 1.58
    'edm2-img64-m-fid':          EasyDict(net=f'{_model_root}/edm2-img64-m-2147483-0.060.pkl'),     # fid = 1.43
    'edm2-img64-l-fid':          EasyDict(net=f'{_model_root}/edm2-img64-l-1073741-0.040.pkl'),     # fid = 1.33
    'edm2-img64-xl-fid':         EasyDict(net=f'{_model_root}/edm2-img64-xl-0671088-0.040.pkl'),    # fid = 1.33
    'edm2-img512-xs-dino':       EasyDict(net=f'{_model_root}/edm2-img512-xs-2147483-0.200.pkl'),   # fd_dinov2 = 103.39
    'edm2-img512-s-dino':        EasyDict(net=f'{_model_root}/edm2-img512-s-2147483-0.190.pkl'),    # fd_dinov2 = 68.64
    'edm2-img512-m-dino':        EasyDict(net=f'{_model_root}/edm2-img512-m-2147483-0.155.pkl'),    # fd_dinov2 = 58.44
    'edm2-img512-l-dino':        EasyDict(net=f'{_model_root}/edm2-img512-l-1879048-0.155.pkl'),    # fd_dinov2 = 52.25
    'edm2-img512-xl-dino':       EasyDict(net=f'{_model_root}/edm2-img512-xl-1342177-0.155.pkl'),   # fd_dinov2 = 45.96
    'edm2-img512-xxl-dino':      EasyDict(net=f'{_model_root}/edm2-img512-xxl-0939524-0.150.pkl'),  # fd_dinov2 = 42.84
    'edm2-img512-xs-guid-fid':   EasyDict(net=f'{_model_root}/edm2-img512-xs-2147483-0.045.pkl',  gnet=f'{_model_root}/edm2-img512-xs-uncond-2147483-0.045.pkl', guidance=1.4), # fid = 2.91
    'edm2-img512-s-guid-fid':    EasyDict(net=f'{_model_root}/edm2-img512-s-2147483-0.025.pkl',   gnet=f'{_model_root}/edm2-img512-xs-uncond-2147483-0.025.pkl', guidance=1.4), # fid = 2.23
    'edm2-img512-m-guid-fid':    EasyDict(net=f'{_model_root}/edm2-img512-m-2147483-0.030.pkl',   gnet=f'{_model_root}/edm2-img512-xs-uncond-2147483-0.030.pkl', guidance=1.2), # fid = 2.01
    'edm2-img512-l-guid-fid':    EasyDict(net=f'{_model_root}/edm2-img512-l-1879048-0.015.pkl',   gnet=f'{_model_root}/edm2-img512-xs-uncond-2147483-0.015.pkl', guidance=1.2), # fid = 1.88
    'edm2-img512-xl-guid-fid':   EasyDict(net=f'{_model_root}/edm2-img512-xl-1342177-0.020.pkl',  gnet=f'{_model_root}/edm2-img512-xs-uncond-2147483-0.020.pkl', guidance=1.2), # fid = 1.85
    'edm2-img512-xxl-guid-fid':  EasyDict(net=f'{_model_root}/edm2-img512-xxl-0939524-0.015.pkl', gnet=f'{_model_root}/edm2-img512-xs-uncond-2147483-0.015.pkl', guidance=1.2), # fid = 1.81
    'edm2-img512-xs-guid-dino':  EasyDict(net=f'{_model_root}/edm2-img512-xs-2147483-0.150.pkl',  gnet=f'{_model_root}/edm2-img512-xs-uncond-2147483-0.150.pkl', guidance=1.7), # fd_dinov2 = 79.94
    'edm2-img512-s-guid-dino':   EasyDict(net=f'{_model_root}/edm2-img512-s-2147483-0.085.pkl',   gnet=f'{_model_root}/edm2-img512-xs-uncond-2147483-0.085.pkl', guidance=1.9), # fd_dinov2 = 52.32
    'edm2-img512-m-guid-dino':   EasyDict(net=f'{_model_root}/edm2-img512-m-2147483-0.015.pkl',   gnet=f'{_model_root}/edm2-img512-xs-uncond-2147483-0.015.pkl', guidance=2.0), # fd_dinov2 = 41.98
    'edm2-img512-l-guid-dino':   EasyDict(net=f'{_model_root}/edm2-img512-l-1879048-0.035.pkl',   gnet=f'{_model_root}/edm2-img512-xs-uncond-2147483-0.035.pkl', guidance=1.7), # fd_dinov2 = 38.20
    'edm2-img512-xl-guid-dino':  EasyDict(net=f'{_model_root}/edm2-img512-xl-1342177-0.030.pkl',  gnet=f'{_model_root}/edm2-img512-xs-uncond-2147483-0.030.pkl', guidance=1.7), # fd_dinov2 = 35.67
    'edm2-img512-xxl-guid-dino': EasyDict(net=f'{_model_root}/edm2-img512-xxl-0939524-0.015.pkl', gnet=f'{_model_root}/edm2-img512-xs-uncond-2147483-0.015.pkl', guidance=1.7), # fd_dinov2 = 33.09
}
