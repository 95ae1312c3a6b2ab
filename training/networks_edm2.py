"""The EDM2 network and loss: a magnitude-preserving U-Net with EDM preconditioning.

"Analyzing and Improving the Training Dynamics of Diffusion Models" (Karras et al., CVPR 2024),
configuration G. Every layer keeps the expected magnitude of its activations: weights are
normalised on every forward pass (and forcibly re-normalised in place during training), and
additions, concatenations and nonlinearities are scaled so that unit-variance inputs give
unit-variance outputs. Module and parameter names follow the official architecture so that the
official snapshots load (state dicts match key for key) and give the same outputs.
"""

import numpy as np
import torch

from torch_utils import misc
from torch_utils import persistence

#----------------------------------------------------------------------------
# Magnitude-preserving primitives.

def normalize(x, dim=None, eps=1e-4):
    """Scale x so that its RMS over `dim` (default: all but the first) is 1."""
    if dim is None:
        dim = list(range(1, x.ndim))
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    norm = torch.add(eps, norm, alpha=np.sqrt(norm.numel() / x.numel()))
    return x / norm.to(x.dtype)

def resample(x, f=[1, 1], mode='keep'):
    """Up- or downsample by 2 with a separable FIR filter (box filter by default), per channel."""
    if mode == 'keep':
        return x
    f = np.float32(f)
    assert f.ndim == 1 and len(f) % 2 == 0
    pad = (len(f) - 1) // 2
    f = f / f.sum()
    f = np.outer(f, f)[np.newaxis, np.newaxis, :, :]
    f = misc.const_like(x, f)
    c = x.shape[1]
    if mode == 'down':
        return torch.nn.functional.conv2d(x, f.tile([c, 1, 1, 1]), groups=c, stride=2, padding=(pad,))
    assert mode == 'up'
    return torch.nn.functional.conv_transpose2d(x, (f * 4).tile([c, 1, 1, 1]), groups=c, stride=2, padding=(pad,))

def mp_silu(x):
    """SiLU divided by its output RMS for a standard normal input."""
    return torch.nn.functional.silu(x) / 0.596

def mp_sum(a, b, t=0.5):
    """(1 - t) a + t b, rescaled to unit magnitude for independent unit inputs."""
    return a.lerp(b, t) / np.sqrt((1 - t) ** 2 + t ** 2)

def mp_cat(a, b, dim=1, t=0.5):
    """Concatenation where b contributes the fraction t of the output's energy."""
    Na, Nb = a.shape[dim], b.shape[dim]
    C = np.sqrt((Na + Nb) / ((1 - t) ** 2 + t ** 2))
    wa = C / np.sqrt(Na) * (1 - t)
    wb = C / np.sqrt(Nb) * t
    return torch.cat([wa * a, wb * b], dim=dim)

#----------------------------------------------------------------------------
# Magnitude-preserving Fourier features (noise level embedding).

@persistence.persistent_class
class MPFourier(torch.nn.Module):
    def __init__(self, num_channels, bandwidth=1):
        super().__init__()
        self.register_buffer('freqs', 2 * np.pi * torch.randn(num_channels) * bandwidth)
        self.register_buffer('phases', 2 * np.pi * torch.rand(num_channels))

    def forward(self, x):
        y = x.to(torch.float32)
        y = y.ger(self.freqs.to(torch.float32))
        y = y + self.phases.to(torch.float32)
        y = y.cos() * np.sqrt(2)
        return y.to(x.dtype)

#----------------------------------------------------------------------------
# Convolution or fully-connected layer (kernel=[]) with weight normalisation.

@persistence.persistent_class
class MPConv(torch.nn.Module):
    def __init__(self, in_channels, out_channels, kernel):
        super().__init__()
        self.out_channels = out_channels
        self.weight = torch.nn.Parameter(torch.randn(out_channels, in_channels, *kernel))

    def forward(self, x, gain=1):
        w = self.weight.to(torch.float32)
        if self.training:
            with torch.no_grad():
                self.weight.copy_(normalize(w)) # Forced weight normalisation: keeps the effective learning rate fixed.
        w = normalize(w) # Traditional weight normalisation, so that gradients see it.
        w = w * (gain / np.sqrt(w[0].numel())) # Magnitude-preserving scaling by the fan-in.
        w = w.to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        assert w.ndim == 4
        return torch.nn.functional.conv2d(x, w, padding=(w.shape[-1] // 2,))

#----------------------------------------------------------------------------
# U-Net block: encoder flavour (skip projection before the residual branch) or decoder
# flavour (after it), with optional resampling and self-attention.

@persistence.persistent_class
class Block(torch.nn.Module):
    def __init__(self,
        in_channels,                    # Number of input channels.
        out_channels,                   # Number of output channels.
        emb_channels,                   # Number of embedding channels.
        flavor              = 'enc',    # Flavor: 'enc' or 'dec'.
        resample_mode       = 'keep',   # Resampling: 'keep', 'up', or 'down'.
        resample_filter     = [1, 1],   # Resampling filter.
        attention           = False,    # Include self-attention?
        channels_per_head   = 64,       # Number of channels per attention head.
        dropout             = 0,        # Dropout probability.
        res_balance         = 0.3,      # Balance between main branch (0) and residual branch (1).
        attn_balance        = 0.3,      # Balance between main branch (0) and self-attention (1).
        clip_act            = 256,      # Clip output activations. None = do not clip.
    ):
        super().__init__()
        self.out_channels = out_channels
        self.flavor = flavor
        self.resample_filter = resample_filter
        self.resample_mode = resample_mode
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.dropout = dropout
        self.res_balance = res_balance
        self.attn_balance = attn_balance
        self.clip_act = clip_act
        self.emb_gain = torch.nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(out_channels if flavor == 'enc' else in_channels, out_channels, kernel=[3, 3])
        self.emb_linear = MPConv(emb_channels, out_channels, kernel=[])
        self.conv_res1 = MPConv(out_channels, out_channels, kernel=[3, 3])
        self.conv_skip = MPConv(in_channels, out_channels, kernel=[1, 1]) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, out_channels * 3, kernel=[1, 1]) if self.num_heads != 0 else None
        self.attn_proj = MPConv(out_channels, out_channels, kernel=[1, 1]) if self.num_heads != 0 else None

    def forward(self, x, emb):
        # Main branch.
        x = resample(x, f=self.resample_filter, mode=self.resample_mode)
        if self.flavor == 'enc':
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1) # Pixel norm.

        # Residual branch, modulated by the embedding (gain starts at 0: identity modulation).
        y = self.conv_res0(mp_silu(x))
        c = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = mp_silu(y * c.unsqueeze(2).unsqueeze(3).to(y.dtype))
        if self.training and self.dropout != 0:
            y = torch.nn.functional.dropout(y, p=self.dropout)
        y = self.conv_res1(y)

        # Connect the branches.
        if self.flavor == 'dec' and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, t=self.res_balance)

        # Self-attention with cosine similarity (queries and keys pixel-normalised).
        if self.num_heads != 0:
            y = self.attn_qkv(x)
            y = y.reshape(y.shape[0], self.num_heads, -1, 3, y.shape[2] * y.shape[3])
            q, k, v = normalize(y, dim=2).unbind(3)
            w = torch.einsum('nhcq,nhck->nhqk', q, k / np.sqrt(q.shape[2])).softmax(dim=3)
            y = torch.einsum('nhqk,nhck->nhcq', w, v)
            y = self.attn_proj(y.reshape(*x.shape))
            x = mp_sum(x, y, t=self.attn_balance)

        if self.clip_act is not None:
            x = x.clip_(-self.clip_act, self.clip_act)
        return x

#----------------------------------------------------------------------------
# The U-Net: an encoder of `num_blocks` blocks per resolution, a decoder of `num_blocks + 1`,
# skip connections joined by mp_cat, noise and label embeddings shared by every block.

@persistence.persistent_class
class UNet(torch.nn.Module):
    def __init__(self,
        img_resolution,                     # Image resolution.
        img_channels,                       # Image channels.
        label_dim,                          # Class label dimensionality. 0 = unconditional.
        model_channels      = 192,          # Base multiplier for the number of channels.
        channel_mult        = [1, 2, 3, 4], # Per-resolution multipliers for the number of channels.
        channel_mult_noise  = None,         # Multiplier for noise embedding dimensionality. None = select based on channel_mult.
        channel_mult_emb    = None,         # Multiplier for final embedding dimensionality. None = select based on channel_mult.
        num_blocks          = 3,            # Number of residual blocks per resolution.
        attn_resolutions    = [16, 8],      # List of resolutions with self-attention.
        label_balance       = 0.5,          # Balance between noise embedding (0) and class embedding (1).
        concat_balance      = 0.5,          # Balance between skip connections (0) and main path (1).
        **block_kwargs,                     # Arguments for Block.
    ):
        super().__init__()
        levels = len(channel_mult)
        if levels < 1 or img_resolution % (1 << (levels - 1)) != 0:
            raise ValueError(f'channel_mult has {levels} resolution levels, too many for {img_resolution}x{img_resolution} '
                f'inputs: each level halves the resolution, so it must be divisible by {1 << max(levels - 1, 0)}')
        cblock = [model_channels * x for x in channel_mult]
        cnoise = model_channels * channel_mult_noise if channel_mult_noise is not None else cblock[0]
        cemb = model_channels * channel_mult_emb if channel_mult_emb is not None else max(cblock)
        self.label_balance = label_balance
        self.concat_balance = concat_balance
        self.out_gain = torch.nn.Parameter(torch.zeros([]))

        # Embedding.
        self.emb_fourier = MPFourier(cnoise)
        self.emb_noise = MPConv(cnoise, cemb, kernel=[])
        self.emb_label = MPConv(label_dim, cemb, kernel=[]) if label_dim != 0 else None

        # Encoder. The input gets a constant channel of ones (a learnable bias for the first conv).
        self.enc = torch.nn.ModuleDict()
        cout = img_channels + 1
        for level, channels in enumerate(cblock):
            res = img_resolution >> level
            if level == 0:
                cin = cout
                cout = channels
                self.enc[f'{res}x{res}_conv'] = MPConv(cin, cout, kernel=[3, 3])
            else:
                self.enc[f'{res}x{res}_down'] = Block(cout, cout, cemb, flavor='enc', resample_mode='down', **block_kwargs)
            for idx in range(num_blocks):
                cin = cout
                cout = channels
                self.enc[f'{res}x{res}_block{idx}'] = Block(cin, cout, cemb, flavor='enc', attention=(res in attn_resolutions), **block_kwargs)

        # Decoder.
        self.dec = torch.nn.ModuleDict()
        skips = [block.out_channels for block in self.enc.values()]
        for level, channels in reversed(list(enumerate(cblock))):
            res = img_resolution >> level
            if level == len(cblock) - 1:
                self.dec[f'{res}x{res}_in0'] = Block(cout, cout, cemb, flavor='dec', attention=True, **block_kwargs)
                self.dec[f'{res}x{res}_in1'] = Block(cout, cout, cemb, flavor='dec', **block_kwargs)
            else:
                self.dec[f'{res}x{res}_up'] = Block(cout, cout, cemb, flavor='dec', resample_mode='up', **block_kwargs)
            for idx in range(num_blocks + 1):
                cin = cout + skips.pop()
                cout = channels
                self.dec[f'{res}x{res}_block{idx}'] = Block(cin, cout, cemb, flavor='dec', attention=(res in attn_resolutions), **block_kwargs)
        self.out_conv = MPConv(cout, img_channels, kernel=[3, 3])

    def forward(self, x, noise_labels, class_labels):
        # Embedding: noise level, plus the class (one-hot scaled to unit norm per element).
        emb = self.emb_noise(self.emb_fourier(noise_labels))
        if self.emb_label is not None:
            emb = mp_sum(emb, self.emb_label(class_labels * np.sqrt(class_labels.shape[1])), t=self.label_balance)
        emb = mp_silu(emb)

        # Encoder.
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        skips = []
        for name, block in self.enc.items():
            x = block(x) if 'conv' in name else block(x, emb)
            skips.append(x)

        # Decoder.
        for name, block in self.dec.items():
            if 'block' in name:
                x = mp_cat(x, skips.pop(), t=self.concat_balance)
            x = block(x, emb)
        x = self.out_conv(x, gain=self.out_gain)
        return x

#----------------------------------------------------------------------------
# EDM preconditioning (Karras et al. 2022) around the U-Net, with the learned log-variance head
# u(sigma) of EDM2 (Equation 21) used to weight the loss by uncertainty.

@persistence.persistent_class
class Precond(torch.nn.Module):
    def __init__(self,
        img_resolution,         # Image resolution.
        img_channels,           # Image channels.
        label_dim,              # Class label dimensionality. 0 = unconditional.
        use_fp16        = True, # Run the model at FP16 precision (CUDA only; CPU always runs FP32).
        sigma_data      = 0.5,  # Expected standard deviation of the training data.
        logvar_channels = 128,  # Intermediate dimensionality for uncertainty estimation.
        **unet_kwargs,          # Keyword arguments for UNet.
    ):
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.sigma_data = sigma_data
        self.unet = UNet(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim, **unet_kwargs)
        self.logvar_fourier = MPFourier(logvar_channels)
        self.logvar_linear = MPConv(logvar_channels, 1, kernel=[])

    def forward(self, x, sigma, class_labels=None, force_fp32=False, return_logvar=False, **unet_kwargs):
        x = x.to(torch.float32)
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None: # Unconditional: the all-zero label.
            class_labels = torch.zeros([1, self.label_dim], device=x.device)
        else:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        dtype = torch.float16 if (self.use_fp16 and not force_fp32 and x.device.type == 'cuda') else torch.float32

        # Preconditioning weights.
        c_skip = self.sigma_data ** 2 / (sigma ** 2 + self.sigma_data ** 2)
        c_out = sigma * self.sigma_data / (sigma ** 2 + self.sigma_data ** 2).sqrt()
        c_in = 1 / (self.sigma_data ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.flatten().log() / 4

        # Run the model.
        x_in = (c_in * x).to(dtype)
        F_x = self.unet(x_in, c_noise, class_labels, **unet_kwargs)
        D_x = c_skip * x + c_out * F_x.to(torch.float32)

        if return_logvar:
            logvar = self.logvar_linear(self.logvar_fourier(c_noise)).reshape(-1, 1, 1, 1)
            return D_x, logvar
        return D_x

#----------------------------------------------------------------------------
# EDM2 loss: log-normal noise levels, EDM weighting lambda(sigma) = 1 / c_out(sigma)^2, and
# uncertainty weighting by the learned log-variance u(sigma): loss = lambda/exp(u) * |D - y|^2 + u.
# With p_uncond > 0 a random fraction of the labels is zeroed, so the same network also learns
# the unconditional model used for classifier-free guidance.

@persistence.persistent_class
class EDM2Loss:
    def __init__(self, P_mean=-0.4, P_std=1.0, sigma_data=0.5, p_uncond=0.0):
        if not 0 <= p_uncond < 1:
            raise ValueError(f'p_uncond must be in [0, 1), got {p_uncond}')
        if not P_std > 0 or not sigma_data > 0:
            raise ValueError(f'P_std and sigma_data must be positive, got {P_std} and {sigma_data}')
        self.P_mean = P_mean
        self.P_std = P_std
        self.sigma_data = sigma_data
        self.p_uncond = p_uncond

    @property
    def has_unconditional_branch(self): # docs/families.md: the all-zero label was trained.
        return self.p_uncond > 0

    def __call__(self, net, images, labels=None):
        rnd_normal = torch.randn([images.shape[0], 1, 1, 1], device=images.device)
        sigma = (rnd_normal * self.P_std + self.P_mean).exp()
        weight = (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2
        noise = torch.randn_like(images) * sigma
        if labels is not None and self.p_uncond > 0:
            keep = torch.rand([labels.shape[0], 1], device=labels.device) >= self.p_uncond
            labels = labels * keep.to(labels.dtype)
        denoised, logvar = net(images + noise, sigma, labels, return_logvar=True)
        loss = (weight / logvar.exp()) * ((denoised - images) ** 2) + logvar
        return loss

#----------------------------------------------------------------------------
# Learning-rate schedules, chosen by the preset option `lr_schedule` (LR_SCHEDULES).

def learning_rate_schedule(cur_nimg, batch_size, ref_lr=100e-4, ref_batches=70e3, rampup_Mimg=10):
    """EDM2: linear warm-up over `rampup_Mimg` million images, constant until `ref_batches`
    batches, then inverse square root decay."""
    lr = ref_lr
    if ref_batches > 0:
        lr /= np.sqrt(max(cur_nimg / (ref_batches * batch_size), 1))
    if rampup_Mimg > 0:
        lr *= min(cur_nimg / (rampup_Mimg * 1e6), 1)
    return lr

def multisource_lr_schedule(cur_nimg, batch_size, ref_lr=100e-4, ref_batches=70e3, rampup_Mimg=10):
    """The multi-source study's variant: ref_lr up to and including t_ref = decay*batch images,
    then ref_lr / sqrt(4 t / t_ref) (a step down by half just after t_ref, then inverse square
    root). Strictly after t_ref, as the study's code has it, so that runs resumed from its
    settings follow the same learning rates step for step."""
    lr = ref_lr
    t_ref = ref_batches * batch_size
    if ref_batches > 0 and cur_nimg > t_ref:
        lr /= np.sqrt(4 * cur_nimg / t_ref)
    if rampup_Mimg > 0:
        lr *= min(cur_nimg / (rampup_Mimg * 1e6), 1)
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
    p_uncond            = 0.0,          # Label dropout probability (classifier-free guidance).
    decay               = 70000,        # Learning rate decay: batches before the inverse-sqrt decay (0 = none).
    rampup              = 10.0,         # Learning rate warm-up (millions of images).
    lr_schedule         = 'edm2',       # Name in LR_SCHEDULES.
    ema_stds            = [0.050, 0.100], # Power-function EMA profiles saved in the snapshots.
    fp16                = True,         # Mixed precision (CUDA only; CPU always runs fp32).
    vae                 = 'stabilityai/sd-vae-ft-mse', # VAE for latent datasets (hub name or local folder).
)

def loop_kwargs(o):
    """Network, loss, encoder (None: chosen from the dataset), optimizer, learning rate and EMA
    arguments of training_loop() for resolved options `o` (attribute access)."""
    if o.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f'lr_schedule "{o.lr_schedule}" is not an EDM2 schedule; choose from {", ".join(LR_SCHEDULES)}')
    return dict(
        encoder_kwargs      = None,
        network_kwargs      = dict(class_name='training.networks_edm2.Precond', model_channels=o.channels,
                                channel_mult=o.channel_mult, num_blocks=o.num_blocks, attn_resolutions=o.attn_resolutions,
                                dropout=o.dropout, sigma_data=o.sigma_data, use_fp16=o.fp16),
        loss_kwargs         = dict(class_name='training.networks_edm2.EDM2Loss', P_mean=o.P_mean, P_std=o.P_std,
                                sigma_data=o.sigma_data, p_uncond=o.p_uncond),
        optimizer_kwargs    = dict(class_name='torch.optim.Adam', betas=[0.9, 0.99], eps=1e-8),
        lr_kwargs           = dict(func_name=LR_SCHEDULES[o.lr_schedule], ref_lr=o.lr, ref_batches=o.decay, rampup_Mimg=o.rampup),
        ema_kwargs          = dict(class_name='training.phema.PowerFunctionEMA', stds=o.ema_stds),
    )

#----------------------------------------------------------------------------
