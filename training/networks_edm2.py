"""The EDM2 network and loss: a magnitude-preserving U-Net with EDM preconditioning.

"Analyzing and Improving the Training Dynamics of Diffusion Models" (Karras et al., CVPR 2024),
configuration G. Every layer keeps the expected magnitude of its activations: weights are
normalised on every forward pass (and forcibly re-normalised in place during training), and
additions, concatenations and nonlinearities are scaled so that unit-variance inputs give
unit-variance outputs. Module and parameter names follow the official architecture so that the
official snapshots load (state dicts match key for key) and give the same outputs.

This source travels inside our snapshots and runs in the official EDM2 tree too, so it imports
nothing but numpy, torch and torch_utils.persistence/misc. Where the official code and this one
must agree to the last bit (the forward pass, and the order in which the constructors draw the
initial weights, so that a seed gives the official network), the floating-point operations are
the paper's, in the official order; comments saying "bit for bit" mark the places where a
different but equivalent formula would change the result.
"""

import numpy as np
import torch

from torch_utils import misc
from torch_utils import persistence

#----------------------------------------------------------------------------
# Magnitude-preserving primitives (paper, Appendix B.2).

def normalize(x, dim=None, eps=1e-4):
    """Scale x to unit RMS over `dim` (default: every dimension but the first, i.e. per sample or
    per output channel). The norm is taken in float32 whatever x's dtype."""
    dims = list(range(1, x.ndim)) if dim is None else dim
    length = torch.linalg.vector_norm(x, dim=dims, keepdim=True, dtype=torch.float32)
    # RMS = norm * sqrt(norm elements / x elements); eps added through torch.add as the official
    # code does (bit for bit).
    length = torch.add(eps, length, alpha=np.sqrt(length.numel() / x.numel()))
    return x / length.to(x.dtype)

def resample(x, f=[1, 1], mode='keep'):
    """Halve ('down') or double ('up') the resolution with the separable filter `f` applied per
    channel (a box filter by default), or return x unchanged ('keep')."""
    if mode == 'keep':
        return x
    taps = np.float32(f)
    if taps.ndim != 1 or len(taps) % 2 != 0:
        raise ValueError(f'resample: the filter must be a list of an even number of taps, got {f}')
    taps = taps / taps.sum()
    kernel = misc.const_like(x, np.outer(taps, taps)[np.newaxis, np.newaxis])
    groups = x.shape[1]
    padding = ((len(taps) - 1) // 2,)
    if mode == 'down':
        return torch.nn.functional.conv2d(x, kernel.tile([groups, 1, 1, 1]), groups=groups, stride=2, padding=padding)
    if mode != 'up':
        raise ValueError(f'resample: mode must be keep, down or up, got {mode!r}')
    # Each output pixel receives a quarter of the taps: x4 keeps the magnitude.
    return torch.nn.functional.conv_transpose2d(x, (kernel * 4).tile([groups, 1, 1, 1]), groups=groups, stride=2, padding=padding)

def mp_silu(x):
    """SiLU divided by its output RMS for a standard normal input (0.596)."""
    return torch.nn.functional.silu(x) / 0.596

def mp_sum(a, b, t=0.5):
    """(1 - t) a + t b, rescaled to unit magnitude for independent unit inputs."""
    return a.lerp(b, t) / np.sqrt((1 - t) ** 2 + t ** 2)

def mp_cat(a, b, dim=1, t=0.5):
    """Concatenation along `dim` where b carries the fraction t^2 / ((1-t)^2 + t^2) of the output's
    energy, whatever the two widths, and the result has unit magnitude."""
    width_a, width_b = a.shape[dim], b.shape[dim]
    total = np.sqrt((width_a + width_b) / ((1 - t) ** 2 + t ** 2))
    # Per-side gains grouped as total / sqrt(width) * weight (bit for bit).
    return torch.cat([total / np.sqrt(width_a) * (1 - t) * a, total / np.sqrt(width_b) * t * b], dim=dim)

#----------------------------------------------------------------------------

@persistence.persistent_class
class MPFourier(torch.nn.Module):
    """Fourier features of a scalar (the noise level): cos(2 pi (freq x + phase)) * sqrt(2), unit
    RMS per channel. Frequencies and phases are random, drawn once and kept as buffers."""

    def __init__(self, num_channels, bandwidth=1):
        super().__init__()
        # randn for the frequencies, then rand for the phases: the official draw order.
        self.register_buffer('freqs', torch.randn(num_channels).mul(2 * np.pi).mul(bandwidth))
        self.register_buffer('phases', torch.rand(num_channels).mul(2 * np.pi))

    def forward(self, x):
        # In float32 even when the network runs in fp16: the angles need the precision.
        angles = torch.outer(x.to(torch.float32), self.freqs.to(torch.float32)) + self.phases.to(torch.float32)
        return (angles.cos() * np.sqrt(2)).to(x.dtype)

#----------------------------------------------------------------------------

@persistence.persistent_class
class MPConv(torch.nn.Module):
    """Convolution, or fully-connected layer when kernel=[], whose weight is normalised per output
    channel on every call, so that only its direction is learnt."""

    def __init__(self, in_channels, out_channels, kernel):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(out_channels, in_channels, *kernel)) # Any scale: see forward.
        self.out_channels = out_channels

    def forward(self, x, gain=1):
        """Unit-magnitude output for unit-magnitude input, times `gain` (a learnt scalar for the
        embedding modulation and the last layer)."""
        weight = self.weight.to(torch.float32) # The parameter itself when it is float32.
        if self.training:
            # Forced weight normalisation: the stored weights stay at unit norm, so the effective
            # learning rate does not drift as they grow. When `weight` is the parameter itself this
            # also rewrites it, and the normalisation below sees normalised weights (bit for bit).
            with torch.no_grad():
                self.weight.copy_(normalize(weight))
        fan_in = weight[0].numel()
        weight = normalize(weight) * (gain / np.sqrt(fan_in)) # Normalised again, for the gradients.
        weight = weight.to(x.dtype)
        if weight.ndim == 2:
            return x @ weight.t()
        return torch.nn.functional.conv2d(x, weight, padding=(weight.shape[-1] // 2,))

#----------------------------------------------------------------------------

@persistence.persistent_class
class Block(torch.nn.Module):
    """One U-Net block: optional resampling, a residual branch of two 3x3 convolutions modulated
    by the embedding, then optional self-attention. An encoder block ('enc') projects its input to
    the new width and pixel-normalises it before the residual branch; a decoder block ('dec')
    projects after it, since its input is the concatenation with a skip connection."""

    def __init__(self,
        in_channels,                    # Channels of the input.
        out_channels,                   # Channels of the output.
        emb_channels,                   # Width of the shared embedding vector.
        flavor              = 'enc',    # 'enc' (encoder) or 'dec' (decoder): where the skip projection goes.
        resample_mode       = 'keep',   # 'keep', 'down' (halve the resolution first) or 'up' (double it).
        resample_filter     = [1, 1],   # Taps of the separable resampling filter.
        attention           = False,    # Add self-attention after the residual branch.
        channels_per_head   = 64,       # Attention heads = out_channels // channels_per_head.
        dropout             = 0,        # Dropout inside the residual branch (training only).
        res_balance         = 0.3,      # mp_sum weight of the residual branch against the input.
        attn_balance        = 0.3,      # mp_sum weight of the attention output against its input.
        clip_act            = 256,      # Clamp the output to [-clip_act, clip_act]; None: no clamp.
    ):
        super().__init__()
        self.out_channels, self.flavor = out_channels, flavor
        self.resample_mode, self.resample_filter = resample_mode, resample_filter
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.dropout, self.clip_act = dropout, clip_act
        self.res_balance, self.attn_balance = res_balance, attn_balance

        # Created in the official order: the same initial weights for a seed, and the same order
        # of parameters in state dicts and optimizer states.
        self.emb_gain = torch.nn.Parameter(torch.zeros([])) # 0: the embedding starts with no effect.
        res_in = out_channels if flavor == 'enc' else in_channels
        self.conv_res0 = MPConv(res_in, out_channels, kernel=[3, 3])
        self.emb_linear = MPConv(emb_channels, out_channels, kernel=[])
        self.conv_res1 = MPConv(out_channels, out_channels, kernel=[3, 3])
        projects = in_channels != out_channels
        self.conv_skip = MPConv(in_channels, out_channels, kernel=[1, 1]) if projects else None
        self.attn_qkv = MPConv(out_channels, out_channels * 3, kernel=[1, 1]) if self.num_heads else None
        self.attn_proj = MPConv(out_channels, out_channels, kernel=[1, 1]) if self.num_heads else None

    def forward(self, x, emb):
        x = resample(x, f=self.resample_filter, mode=self.resample_mode)
        if self.flavor == 'enc':
            x = normalize(self._project(x), dim=1) # Pixel norm.
        y = self._residual(x, emb)
        if self.flavor == 'dec':
            x = self._project(x)
        x = mp_sum(x, y, t=self.res_balance)
        if self.num_heads:
            x = mp_sum(x, self._attention(x), t=self.attn_balance)
        if self.clip_act is not None:
            x = x.clip_(-self.clip_act, self.clip_act)
        return x

    def _project(self, x):
        return x if self.conv_skip is None else self.conv_skip(x)

    def _residual(self, x, emb):
        y = self.conv_res0(mp_silu(x))
        scale = self.emb_linear(emb, gain=self.emb_gain) + 1 # Per-channel modulation, 1 at init.
        y = mp_silu(y * scale[:, :, None, None].to(y.dtype))
        if self.training and self.dropout != 0:
            y = torch.nn.functional.dropout(y, p=self.dropout)
        return self.conv_res1(y)

    def _attention(self, x):
        # Cosine attention: queries and keys are normalised per pixel and head, so the logits stay
        # bounded. Written with einsum rather than scaled_dot_product_attention, whose results are
        # not the official ones to the bit.
        qkv = self.attn_qkv(x)
        qkv = qkv.reshape(qkv.shape[0], self.num_heads, -1, 3, qkv.shape[2] * qkv.shape[3])
        q, k, v = normalize(qkv, dim=2).unbind(3)
        weights = torch.einsum('nhcq,nhck->nhqk', q, k / np.sqrt(q.shape[2])).softmax(dim=3)
        out = torch.einsum('nhqk,nhck->nhcq', weights, v)
        return self.attn_proj(out.reshape(*x.shape))

#----------------------------------------------------------------------------

@persistence.persistent_class
class UNet(torch.nn.Module):
    """Level l works at img_resolution / 2^l with model_channels * channel_mult[l] channels. The
    encoder has an input convolution (level 0) or a downsampling block, then `num_blocks` blocks
    per level; the decoder mirrors it with one block more per level, each taking an encoder
    output as skip connection (mp_cat). Module names ('64x64_block0', ...) are the official
    state-dict keys."""

    def __init__(self,
        img_resolution,                     # Input and output resolution.
        img_channels,                       # Input and output channels.
        label_dim,                          # Number of classes; 0 for an unconditional model.
        model_channels      = 192,          # Channels of the first level; the others are multiples of it.
        channel_mult        = [1, 2, 3, 4], # Channel multiplier of each level (one level per entry).
        channel_mult_noise  = None,         # Fourier features = model_channels * this; None: channel_mult[0].
        channel_mult_emb    = None,         # Embedding width = model_channels * this; None: max(channel_mult).
        num_blocks          = 3,            # Encoder blocks per level (the decoder has one more).
        attn_resolutions    = [16, 8],      # Resolutions whose blocks use self-attention.
        label_balance       = 0.5,          # mp_sum weight of the class embedding against the noise embedding.
        concat_balance      = 0.5,          # mp_cat weight of the main path against the skip connection.
        **block_kwargs,                     # Passed to every Block.
    ):
        super().__init__()
        levels = len(channel_mult)
        if levels < 1 or img_resolution % (1 << (levels - 1)) != 0:
            raise ValueError(f'channel_mult has {levels} resolution levels, too many for {img_resolution}x{img_resolution} '
                f'inputs: each level halves the resolution, so it must be divisible by {1 << max(levels - 1, 0)}')
        resolutions = [img_resolution >> level for level in range(levels)]
        if num_blocks < 0:
            raise ValueError(f'num_blocks must be at least 0, got {num_blocks}')
        if any(r not in resolutions for r in attn_resolutions):
            raise ValueError(f'attn_resolutions {list(attn_resolutions)} may name only resolutions of this network '
                f'({", ".join(map(str, resolutions))})')
        if model_channels < 1:
            raise ValueError(f'channels must be at least 1, got {model_channels}')
        if not 0 <= block_kwargs.get('dropout', 0) <= 1:
            raise ValueError(f'dropout must be in [0, 1], got {block_kwargs["dropout"]}')
        widths = [model_channels * m for m in channel_mult]
        noise_width = widths[0] if channel_mult_noise is None else model_channels * channel_mult_noise
        emb_width = max(widths) if channel_mult_emb is None else model_channels * channel_mult_emb
        self.label_balance = label_balance
        self.concat_balance = concat_balance
        self.out_gain = torch.nn.Parameter(torch.zeros([])) # 0: the network starts as the zero function.
        self.emb_fourier = MPFourier(noise_width)
        self.emb_noise = MPConv(noise_width, emb_width, kernel=[])
        self.emb_label = MPConv(label_dim, emb_width, kernel=[]) if label_dim != 0 else None

        def block(cin, cout, flavor, **kwargs):
            return Block(cin, cout, emb_width, flavor=flavor, **kwargs, **block_kwargs)

        # Modules are created level by level in the official order (initial weights for a seed).
        self.enc = torch.nn.ModuleDict()
        width = img_channels + 1 # The input gets a constant channel of ones (see forward).
        for level, channels in enumerate(widths):
            res = img_resolution >> level
            if level == 0:
                self.enc[f'{res}x{res}_conv'] = MPConv(width, channels, kernel=[3, 3])
                width = channels
            else:
                self.enc[f'{res}x{res}_down'] = block(width, width, 'enc', resample_mode='down')
            for idx in range(num_blocks):
                self.enc[f'{res}x{res}_block{idx}'] = block(width, channels, 'enc', attention=(res in attn_resolutions))
                width = channels

        self.dec = torch.nn.ModuleDict()
        skip_widths = [layer.out_channels for layer in self.enc.values()]
        for level in reversed(range(levels)):
            res = img_resolution >> level
            if level == levels - 1: # The bottom of the U: two blocks, the first with attention.
                self.dec[f'{res}x{res}_in0'] = block(width, width, 'dec', attention=True)
                self.dec[f'{res}x{res}_in1'] = block(width, width, 'dec')
            else:
                self.dec[f'{res}x{res}_up'] = block(width, width, 'dec', resample_mode='up')
            for idx in range(num_blocks + 1):
                self.dec[f'{res}x{res}_block{idx}'] = block(width + skip_widths.pop(), widths[level], 'dec',
                    attention=(res in attn_resolutions))
                width = widths[level]
        self.out_conv = MPConv(width, img_channels, kernel=[3, 3])

    def forward(self, x, noise_labels, class_labels):
        emb = self.emb_noise(self.emb_fourier(noise_labels))
        if self.emb_label is not None:
            # One-hot labels times sqrt(label_dim): unit magnitude, like the noise embedding.
            class_emb = self.emb_label(class_labels * np.sqrt(class_labels.shape[1]))
            emb = mp_sum(emb, class_emb, t=self.label_balance)
        emb = mp_silu(emb)

        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        skips = []
        for name, layer in self.enc.items():
            x = layer(x) if name.endswith('_conv') else layer(x, emb)
            skips.append(x)
        for name, layer in self.dec.items():
            if '_block' in name: # The _in and _up blocks take no skip connection.
                x = mp_cat(x, skips.pop(), t=self.concat_balance)
            x = layer(x, emb)
        return self.out_conv(x, gain=self.out_gain)

#----------------------------------------------------------------------------

@persistence.persistent_class
class Precond(torch.nn.Module):
    """EDM preconditioning (Karras et al. 2022) around the U-Net, with the learned log-variance
    head u(sigma) of EDM2 (Equation 21) that weights the loss by uncertainty."""

    def __init__(self,
        img_resolution,         # Resolution of the images (or latents) the network denoises.
        img_channels,           # Their channels.
        label_dim,              # Number of classes; 0 for an unconditional model.
        use_fp16        = True, # Mixed precision: the U-Net in fp16 (CUDA only); the official name, kept for its files.
        sigma_data      = 0.5,  # Standard deviation of the training data, for the EDM scalings.
        logvar_channels = 128,  # Fourier features of the log-variance head.
        **unet_kwargs,          # Passed to UNet.
    ):
        super().__init__()
        self.unet = UNet(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim, **unet_kwargs)
        self.logvar_fourier = MPFourier(logvar_channels)
        self.logvar_linear = MPConv(logvar_channels, 1, kernel=[])
        # The generator and the training loop read these (docs/families.md).
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.use_fp16, self.sigma_data = use_fp16, sigma_data

    def forward(self, x, sigma, class_labels=None, force_fp32=False, return_logvar=False, **unet_kwargs):
        """The denoised x for noise levels `sigma` (one per sample), and u(sigma) when asked."""
        x = x.to(torch.float32)
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None: # Unconditional: the all-zero label.
            class_labels = torch.zeros([1, self.label_dim], device=x.device)
        else:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        fp16 = self.use_fp16 and not force_fp32 and x.device.type == 'cuda'

        # D(x) = c_skip x + c_out F(c_in x, c_noise). The EDM formulas, each written as the
        # official code writes it (bit for bit); sigma^2 + sigma_data^2 is shared.
        sd = self.sigma_data
        var = sigma ** 2 + sd ** 2
        c_skip = sd ** 2 / var
        c_out = sigma * sd / var.sqrt()
        c_in = 1 / var.sqrt()
        c_noise = sigma.flatten().log() / 4
        F = self.unet((c_in * x).to(torch.float16 if fp16 else torch.float32), c_noise, class_labels, **unet_kwargs)
        denoised = c_skip * x + c_out * F.to(torch.float32)
        if not return_logvar:
            return denoised
        return denoised, self.logvar_linear(self.logvar_fourier(c_noise)).reshape(-1, 1, 1, 1)

#----------------------------------------------------------------------------
# EDM2 loss: log-normal noise levels, EDM weighting lambda(sigma) = 1 / c_out(sigma)^2, and
# uncertainty weighting by the learned log-variance u(sigma): loss = lambda/exp(u) * |D - y|^2 + u.
# With label_dropout > 0 a random fraction of the labels is zeroed, so the same network also learns
# the unconditional model used for classifier-free guidance.

@persistence.persistent_class
class EDM2Loss:
    def __init__(self, P_mean=-0.4, P_std=1.0, sigma_data=0.5, label_dropout=0.0):
        if not 0 <= label_dropout < 1:
            raise ValueError(f'label_dropout must be in [0, 1), got {label_dropout}')
        if not P_std > 0 or not sigma_data > 0:
            raise ValueError(f'P_std and sigma_data must be positive, got {P_std} and {sigma_data}')
        self.P_mean = P_mean
        self.P_std = P_std
        self.sigma_data = sigma_data
        self.label_dropout = label_dropout

    @property
    def has_unconditional_branch(self): # docs/families.md: the all-zero label was trained.
        return self.label_dropout > 0

    def __call__(self, net, images, labels=None):
        # Random draws in a fixed order (noise levels, noise, then the label dropout): a seed gives
        # the same run.
        log_sigma = torch.randn([images.shape[0], 1, 1, 1], device=images.device) * self.P_std + self.P_mean
        sigma = log_sigma.exp()
        noisy = images + torch.randn_like(images) * sigma
        if labels is not None and self.label_dropout > 0:
            keep = torch.rand([labels.shape[0], 1], device=labels.device) >= self.label_dropout
            labels = labels * keep.to(labels.dtype)
        denoised, logvar = net(noisy, sigma, labels, return_logvar=True)
        weight = (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2 # lambda(sigma)
        return (weight / logvar.exp()) * ((denoised - images) ** 2) + logvar

#----------------------------------------------------------------------------
# Learning-rate schedules, chosen by the preset option `lr_schedule` (LR_SCHEDULES). Each is the
# plain float arithmetic of the schedule it reproduces, operation for operation.

def learning_rate_schedule(cur_nimg, batch_size, ref_lr=100e-4, ref_batches=70e3, rampup_Mimg=10):
    """EDM2: linear warm-up over `rampup_Mimg` million images, constant until `ref_batches`
    batches, then inverse square root decay."""
    lr = ref_lr
    if ref_batches > 0:
        lr = lr / np.sqrt(max(cur_nimg / (ref_batches * batch_size), 1))
    return _warmup(lr, cur_nimg, rampup_Mimg)

def multisource_lr_schedule(cur_nimg, batch_size, ref_lr=100e-4, ref_batches=70e3, rampup_Mimg=10):
    """The multi-source study's variant: ref_lr up to and including t_ref = decay*batch images,
    then ref_lr / sqrt(4 t / t_ref) (a step down by half just after t_ref, then inverse square
    root). Strictly after t_ref, as the study's code has it, so that runs resumed from its
    settings follow the same learning rates step for step."""
    lr = ref_lr
    t_ref = ref_batches * batch_size
    if ref_batches > 0 and cur_nimg > t_ref:
        lr = lr / np.sqrt(4 * cur_nimg / t_ref)
    return _warmup(lr, cur_nimg, rampup_Mimg)

def _warmup(lr, cur_nimg, rampup_Mimg):
    """lr scaled by the fraction of the warm-up done (none when rampup_Mimg is 0)."""
    if rampup_Mimg > 0:
        lr = lr * min(cur_nimg / (rampup_Mimg * 1e6), 1)
    return lr

LR_SCHEDULES = dict(
    edm2        = 'training.networks_edm2.learning_rate_schedule',  # Inverse sqrt after `decay` batches (decay 0: constant).
    multisource = 'training.networks_edm2.multisource_lr_schedule', # The multi-source study's variant.
)

#----------------------------------------------------------------------------
# The family's preset options (training/presets.py; COMMON_OPTIONS there apply too) and the
# training-loop arguments they give. Plain dicts: this source travels inside every snapshot.

FAMILY = 'edm2'

OPTIONS = dict(
    channels            = 192,          # Base channel count (model_channels).
    channel_mult        = [1, 2, 3, 4], # Per-resolution channel multipliers (one resolution level each).
    num_blocks          = 3,            # Blocks per resolution.
    attn_resolutions    = [16, 8],      # Resolutions with self-attention.
    dropout             = 0.0,          # Dropout probability.
    P_mean              = -0.4,         # Log-normal noise level distribution: mean.
    P_std               = 1.0,          # Log-normal noise level distribution: std.
    sigma_data          = 0.5,          # Expected standard deviation of the training data.
    label_dropout       = 0.0,          # Label dropout probability (classifier-free guidance; train_edm2.py --label-dropout or --p-uncond).
    decay               = 70000,        # Learning rate decay: batches before the inverse-sqrt decay (0 = none).
    rampup              = 10.0,         # Learning rate warm-up (millions of images).
    lr_schedule         = 'edm2',       # Name in LR_SCHEDULES.
    ema_stds            = [0.050, 0.100], # Power-function EMA profiles saved in the snapshots.
    mixed_precision     = True,         # Mixed precision: fp16 U-Net on CUDA (CPU always runs fp32; train_edm2.py --mixed-precision, EDM2's --fp16).
    vae                 = 'stabilityai/sd-vae-ft-mse', # VAE for latent datasets (hub name or local folder).
)

# The options whose values the network checks itself, bounds included (presets.check_value leaves them alone).
CHECKED_OPTIONS = {'channels', 'num_blocks', 'attn_resolutions'}

def loop_kwargs(opts):
    """Network, loss, encoder (None: chosen from the dataset), optimizer, learning rate and EMA
    arguments of training_loop() for resolved options `opts` (attribute access)."""
    if opts.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f'lr_schedule "{opts.lr_schedule}" is not an EDM2 schedule; choose from {", ".join(LR_SCHEDULES)}')
    return dict(
        encoder_kwargs      = None,
        network_kwargs      = dict(class_name='training.networks_edm2.Precond', model_channels=opts.channels,
                                channel_mult=opts.channel_mult, num_blocks=opts.num_blocks, attn_resolutions=opts.attn_resolutions,
                                dropout=opts.dropout, sigma_data=opts.sigma_data, use_fp16=opts.mixed_precision),
        loss_kwargs         = dict(class_name='training.networks_edm2.EDM2Loss', P_mean=opts.P_mean, P_std=opts.P_std,
                                sigma_data=opts.sigma_data, label_dropout=opts.label_dropout),
        optimizer_kwargs    = dict(class_name='torch.optim.Adam', betas=[0.9, 0.99], eps=1e-8),
        lr_kwargs           = dict(func_name=LR_SCHEDULES[opts.lr_schedule], ref_lr=opts.lr, ref_batches=opts.decay, rampup_Mimg=opts.rampup),
        ema_kwargs          = dict(class_name='training.phema.PowerFunctionEMA', stds=opts.ema_stds),
    )

#----------------------------------------------------------------------------
