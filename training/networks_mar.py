"""MAR: masked autoregressive image generation with a per-token diffusion (or flow) head, after
Li et al., "Autoregressive Image Generation without Vector Quantization", 2024 (arXiv 2406.11838).

An image in net space (pixels in [-1, 1], or VAE latents) is cut into p x p patches, the tokens.
A bidirectional MAE-style transformer sees the known tokens (and a few buffer tokens carrying the
class) and produces one conditioning vector per unknown token; a small MLP head (in
training/mar_heads.py: diffusion as MAR's DiffLoss, flow matching, or EDM) models each unknown
token's continuous distribution given that vector. Training masks a random share of the tokens
and scores the masked ones; generation reveals the tokens in a random order over K transformer
passes, drawing each newly revealed token from the head.

The same paper's causal baseline (`order='raster'`, class CausalAR): a causal transformer over
the tokens in raster order after a start token carrying the class, trained by teacher forcing on
every position, generating token by token with a key/value cache (one position per step).
"""

import math
import numpy as np
import torch
from torch_utils import persistence

#----------------------------------------------------------------------------
# Generation order: how many tokens each of the K steps reveals. The share still masked after
# step k follows cos(pi/2 * (k+1)/K) (MaskGIT, MAR); every step reveals at least one token and
# the last step reveals the rest.

def unmasking_schedule(num_tokens, num_steps):
    if not 1 <= num_steps <= num_tokens:
        raise ValueError(f'MAR: steps must be in 1..{num_tokens} (one token per step at least), got {num_steps}')
    counts = []
    masked = num_tokens
    for step in range(num_steps):
        target = math.floor(num_tokens * math.cos(math.pi / 2 * (step + 1) / num_steps))
        still_to_go = num_steps - 1 - step # Leave one token for each later step.
        target = min(max(target, still_to_go), masked - 1) if still_to_go else 0
        counts.append(masked - target)
        masked = target
    return counts

#----------------------------------------------------------------------------
# Transformer building blocks (pre-norm ViT block, as in MAE).

@persistence.persistent_class
class Attention(torch.nn.Module):
    def __init__(self, dim, num_heads, dropout=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.qkv = torch.nn.Linear(dim, dim * 3)
        self.proj = torch.nn.Linear(dim, dim)
        self.proj_drop = torch.nn.Dropout(dropout)

    def forward(self, x, causal=False, cache=None):
        """x [N, T, dim]. `causal`: position t attends to positions <= t only. `cache` (a dict,
        filled in place) holds the keys and values of the positions seen so far: x is then the
        next position(s) after them, and attends to all of them (no mask is needed while one
        position is added per call, the only use here)."""
        q, k, v = self.qkv(x).unflatten(-1, [3, self.num_heads, -1]).permute(2, 0, 3, 1, 4)
        if cache is not None:
            if cache:
                assert x.shape[1] == 1, 'a filled cache takes one new position per call'
                k, v = torch.cat([cache['k'], k], dim=2), torch.cat([cache['v'], v], dim=2)
            cache['k'], cache['v'] = k, v
            causal = causal and q.shape[2] > 1
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal,
            dropout_p=self.dropout if self.training else 0.0)
        return self.proj_drop(self.proj(y.transpose(1, 2).flatten(2)))

@persistence.persistent_class
class Block(torch.nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio=4, dropout=0.0):
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, dropout=dropout)
        self.norm2 = torch.nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Dropout(dropout),
            torch.nn.Linear(hidden, dim), torch.nn.Dropout(dropout))

    def forward(self, x, causal=False, cache=None):
        x = x + self.attn(self.norm1(x), causal=causal, cache=cache)
        return x + self.mlp(self.norm2(x))

#----------------------------------------------------------------------------
# What both networks share: tokens (patches), the class embedding with its learned null class,
# the head, the scoring of chosen tokens and the sampling options. Not persistent itself: the
# persistent networks below derive from it, and it travels in the same module source.

class TokenModel(torch.nn.Module):
    # calculate_metrics.py bpd: why bits/dim does not apply (docs/families.md).
    no_bpd_reason = ('its per-token head models continuous tokens by diffusion or flow, which gives no exact '
        'likelihood of the 8-bit pixels (at best a bound through its variational loss)')
    # The options of sample() that generate_images.py and calculate_metrics.py gen reach (--opt
    # KEY=VALUE), with their types (docs/families.md); sample() documents and checks their values.
    sampler_options = dict(steps=int, temperature=float, guidance_schedule=str, head_steps=int)

    def __init__(self,
        img_resolution,                 # Net-space resolution (pixels, or latents).
        img_channels,                   # Net-space channels.
        label_dim       = 0,            # Number of classes, 0 = unconditional.
        patch_size      = 2,            # Tokens are patch_size x patch_size patches.
        width           = 768,          # Transformer width.
        num_heads       = 12,           # Attention heads.
        mlp_ratio       = 4,            # Hidden width of the transformer MLPs relative to `width`.
        dropout         = 0.1,          # Attention and projection dropout.
        head            = 'diffusion',  # Per-token head: 'diffusion' (DiffLoss), 'flow' or 'edm'.
        head_width      = 1024,         # Head MLP width.
        head_depth      = 6,            # Head residual blocks.
        head_kwargs     = {},           # Further arguments of the head class.
        data_bound      = None,         # Clip predicted clean tokens to [-bound, bound] (pixels: 1); None = unbounded.
        mixed_precision = True,         # bfloat16 transformer on CUDA (CPU always runs float32).
    ):
        super().__init__()
        for name, value in dict(patch_size=patch_size, width=width, num_heads=num_heads, head_width=head_width).items():
            if value < 1:
                raise ValueError(f'{type(self).__name__}: {name} must be at least 1, got {value}')
        if width % num_heads != 0: # Each attention head takes width / num_heads channels.
            raise ValueError(f'{type(self).__name__}: width {width} is not divisible by num_heads {num_heads}')
        if img_resolution % patch_size != 0:
            raise ValueError(f'{type(self).__name__}: resolution {img_resolution} is not a multiple of patch_size {patch_size}')
        if data_bound is not None and not data_bound > 0:
            raise ValueError(f'{type(self).__name__}: data_bound must be positive (or None: no clipping), got {data_bound}')
        # The generator and the training loop read these (docs/families.md).
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.patch_size, self.width, self.data_bound, self.mixed_precision = patch_size, width, data_bound, mixed_precision
        self.seq_len = (img_resolution // patch_size) ** 2
        self.token_dim = img_channels * patch_size ** 2
        self.block_kwargs = dict(num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout) # The subclass's blocks.
        self.head_config = dict(head=head, head_width=head_width, head_depth=head_depth, head_kwargs=head_kwargs)

        # Class embedding; the learned null class stands for "no label" (guidance).
        self.class_emb = torch.nn.Parameter(torch.randn([label_dim, width]) * 0.02)
        self.null_emb = torch.nn.Parameter(torch.randn([width]) * 0.02)
        self.token_proj = torch.nn.Linear(self.token_dim, width)

    def new_blocks(self, count):
        return torch.nn.ModuleList([Block(self.width, **self.block_kwargs) for _ in range(count)])

    def finish(self):
        """The subclass's last step: Xavier-uniform weights and zero biases for the transformer
        (MAE), then the head, which initialises itself. Its module is imported only here: a head
        carries its own source in a snapshot, which thus loads without the file."""
        from training.mar_heads import HEADS # pylint: disable=import-outside-toplevel
        for module in self.modules():
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.xavier_uniform_(module.weight)
                torch.nn.init.zeros_(module.bias)
        config = self.head_config
        steps = config['head_kwargs'].get('sample_steps', 1)
        if config['head'] not in HEADS or not (steps == int(steps) and steps >= 1):
            raise ValueError(f'{type(self).__name__}: head must be one of {", ".join(HEADS)} and head_steps an integer, at least 1 '
                f'(or None: the head\'s own); got {config["head"]!r} and {steps}')
        self.head = HEADS[config['head']](self.token_dim, self.width, width=config['head_width'], depth=config['head_depth'],
            **config['head_kwargs'])

    def no_weight_decay(self):
        """The head is not decayed (the loop also skips biases and norm gains)."""
        return {f'head.{name}' for name, _ in self.head.named_parameters()}

    def autocast(self, x):
        """bfloat16 for the transformer on CUDA when mixed precision is on."""
        return torch.autocast('cuda', dtype=torch.bfloat16, enabled=(self.mixed_precision and x.device.type == 'cuda'))

    def patchify(self, x): # [N, C, R, R] -> [N, L, C*p*p]
        n, c, r, _ = x.shape
        p = self.patch_size
        x = x.reshape(n, c, r // p, p, r // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(n, self.seq_len, self.token_dim)

    def unpatchify(self, tokens): # [N, L, C*p*p] -> [N, C, R, R]
        n = tokens.shape[0]
        p = self.patch_size
        g = self.img_resolution // p
        x = tokens.reshape(n, g, g, self.img_channels, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(n, self.img_channels, self.img_resolution, self.img_resolution)

    def class_embedding(self, labels, batch_size):
        """One-hot labels [N, L] -> [N, width]; an all-zero row (or no labels) is the null class."""
        if labels is None or self.label_dim == 0:
            return self.null_emb.expand(batch_size, -1)
        labels = labels.to(self.class_emb.dtype)
        return labels @ self.class_emb + (1 - labels.sum(-1, keepdim=True)) * self.null_emb

    def masked_token_loss(self, tokens, z, mask, batch_mul=1):
        """Per-sample mean head loss over the tokens where `mask` is True, each scored `batch_mul`
        times with independent noise draws (its conditioning vector reused)."""
        n = tokens.shape[0]
        target = tokens[mask].repeat(batch_mul, 1)
        cond = z[mask].repeat(batch_mul, 1)
        per_token = self.head.loss(target, cond).reshape(batch_mul, n, -1)
        return per_token.mean(dim=[0, 2])

    def guide(self, labels, gnet, temperature, guidance_schedule, head_steps):
        """Checks the values of the sampling options (`steps`: unmasking_schedule); returns the
        guiding network and its labels: `gnet` given the same labels (a network of the same class:
        training/generate.py checks it), or this network's null class."""
        if not (math.isfinite(temperature) and temperature >= 0):
            raise ValueError(f'{type(self).__name__}: temperature must be a finite number, at least 0, got {temperature}')
        if guidance_schedule not in ['constant', 'linear']:
            raise ValueError(f'{type(self).__name__}: guidance_schedule must be "constant" or "linear", got {guidance_schedule!r}')
        if head_steps is not None and head_steps < 1:
            raise ValueError(f'{type(self).__name__}: head_steps must be at least 1 (or None: the head\'s own), got {head_steps}')
        return (gnet, labels) if gnet is not None else (self, None)

    def draw(self, z, guide_z, guide_net, rnd, revealed, guidance, schedule, temperature, head_steps):
        """The head's new tokens for the conditioning vectors z (guided away from the guide's
        guide_z unless None), once `revealed` tokens are known; the guidance weight is constant,
        or rises linearly from 1 to `guidance` with the share of tokens revealed."""
        weight = guidance if schedule == 'constant' else 1 + (guidance - 1) * revealed / self.seq_len
        return self.head.sample(z, rnd, temperature=temperature, guidance=weight, guide_z=guide_z, guide_head=guide_net.head,
            bound=self.data_bound, steps=head_steps)

#----------------------------------------------------------------------------
# The masked network: MAE encoder over the known tokens and the buffer tokens, MAE decoder over
# all positions (unknown ones as a learned mask token), one conditioning vector per token.

@persistence.persistent_class
class MAR(TokenModel):
    order = 'random'

    def __init__(self,
        img_resolution,                 # Net-space resolution (pixels, or latents).
        img_channels,                   # Net-space channels.
        encoder_depth   = 12,           # Encoder blocks.
        decoder_depth   = 12,           # Decoder blocks.
        buffer_tokens   = 64,           # Extra tokens at the start of the sequence, carrying the class.
        sample_steps    = 64,           # Default number of generation steps K.
        **kwargs,                       # TokenModel's: classes, patches, width, attention, head, data_bound, precision.
    ):
        super().__init__(img_resolution, img_channels, **kwargs)
        width = self.width
        self.buffer_tokens = buffer_tokens
        self.sample_steps = sample_steps
        self.token_norm = torch.nn.LayerNorm(width, eps=1e-6)
        self.encoder_pos = torch.nn.Parameter(torch.randn([buffer_tokens + self.seq_len, width]) * 0.02)
        self.encoder = self.new_blocks(encoder_depth)
        self.encoder_norm = torch.nn.LayerNorm(width, eps=1e-6)
        self.mask_token = torch.nn.Parameter(torch.randn([width]) * 0.02)
        self.decoder_pos = torch.nn.Parameter(torch.randn([buffer_tokens + self.seq_len, width]) * 0.02)
        self.decoder = self.new_blocks(decoder_depth)
        self.decoder_norm = torch.nn.LayerNorm(width, eps=1e-6)
        self.head_pos = torch.nn.Parameter(torch.randn([self.seq_len, width]) * 0.02)
        self.finish()

    def transformer(self, tokens, labels, mask):
        """Conditioning vectors [N, L, width] for every position, given the tokens [N, L, D] and the
        mask [N, L] (True = unknown). Unknown tokens never enter the encoder, so their values cannot
        leak. Every row must have the same number of unknown tokens."""
        n = tokens.shape[0]
        keep = torch.cat([torch.ones([n, self.buffer_tokens], dtype=torch.bool, device=mask.device), ~mask], dim=1)
        num_keep = int(keep[0].sum())
        x = self.token_proj(tokens)
        buffer = self.class_embedding(labels, n).unsqueeze(1).expand(-1, self.buffer_tokens, -1)
        x = self.token_norm(torch.cat([buffer, x], dim=1) + self.encoder_pos)
        x = x[keep].reshape(n, num_keep, -1)
        with self.autocast(x):
            for block in self.encoder:
                x = block(x)
            x = self.encoder_norm(x)
            y = self.mask_token.to(x.dtype).expand(n, keep.shape[1], -1).clone()
            y[keep] = x.reshape(n * num_keep, -1)
            y = y + self.decoder_pos
            for block in self.decoder:
                y = block(y)
            y = self.decoder_norm(y)
        return y[:, self.buffer_tokens:].to(torch.float32) + self.head_pos

    def forward(self, images, labels, mask, batch_mul=4):
        tokens = self.patchify(images)
        z = self.transformer(tokens, labels, mask)
        return self.masked_token_loss(tokens, z, mask, batch_mul)

    @torch.no_grad()
    def sample(self, noise, labels, rnd, gnet=None, guidance=1.0,
        steps               = None,         # Generation steps K (default: self.sample_steps).
        temperature         = 1.0,          # Scales the head's sampling noise.
        guidance_schedule   = 'constant',   # 'constant', or 'linear' from 1 up to `guidance` as tokens are revealed.
        head_steps          = None,         # Head sampling steps (default: the head's own).
    ):
        """Images [N, C, R, R] in net space. Guidance extrapolates the head's prediction away from
        the null class (gnet=None) or from the guiding network `gnet` given the same labels."""
        guide_net, guide_labels = self.guide(labels, gnet, temperature, guidance_schedule, head_steps)
        n, device = noise.shape[0], noise.device
        counts = unmasking_schedule(self.seq_len, self.sample_steps if steps is None else steps)
        orders = rnd.rand([n, self.seq_len], device=device).argsort(dim=1)
        tokens = torch.zeros([n, self.seq_len, self.token_dim], device=device)
        mask = torch.ones([n, self.seq_len], dtype=torch.bool, device=device)
        revealed = 0
        for count in counts:
            idx = orders[:, revealed : revealed + count]
            revealed += count
            pick = lambda z: z.gather(1, idx.unsqueeze(-1).expand(-1, -1, z.shape[-1]))
            z = pick(self.transformer(tokens, labels, mask))
            guide_z = pick(guide_net.transformer(tokens, guide_labels, mask)) if guidance != 1 else None
            new = self.draw(z, guide_z, guide_net, rnd, revealed, guidance, guidance_schedule, temperature, head_steps)
            tokens = tokens.scatter(1, idx.unsqueeze(-1).expand(-1, -1, self.token_dim), new)
            mask = mask.scatter(1, idx, False)
        return self.unpatchify(tokens)

#----------------------------------------------------------------------------
# The causal network: a decoder-only transformer over [start token, token 0, ..., token L-2] in
# raster order with a causal mask; its output at position i conditions the head for token i, so
# it sees the class and tokens 0..i-1 only. Generation feeds one position per step and keeps every
# block's keys and values (the cache), so token i costs one position's pass, not i of them.

@persistence.persistent_class
class CausalAR(TokenModel):
    order = 'raster'
    sampler_options = dict(TokenModel.sampler_options, use_cache=bool)

    def __init__(self,
        img_resolution,                 # Net-space resolution (pixels, or latents).
        img_channels,                   # Net-space channels.
        depth           = 24,           # Transformer blocks.
        **kwargs,                       # TokenModel's: classes, patches, width, attention, head, data_bound, precision.
    ):
        super().__init__(img_resolution, img_channels, **kwargs)
        self.pos = torch.nn.Parameter(torch.randn([self.seq_len, self.width]) * 0.02)
        self.input_norm = torch.nn.LayerNorm(self.width, eps=1e-6)
        self.blocks = self.new_blocks(depth)
        self.out_norm = torch.nn.LayerNorm(self.width, eps=1e-6)
        self.finish()

    def inputs(self, tokens, labels, start, stop):
        """The transformer's inputs at positions start..stop-1 [N, stop-start, width]: the start
        token (the class embedding) at position 0, token i-1 at position i."""
        n = tokens.shape[0]
        parts = [self.class_embedding(labels, n).unsqueeze(1)] if start == 0 else []
        if stop > max(start, 1):
            parts.append(self.token_proj(tokens[:, max(start, 1) - 1 : stop - 1]))
        return self.input_norm(torch.cat(parts, dim=1) + self.pos[start:stop])

    def run_blocks(self, x, caches=None):
        with self.autocast(x):
            for i, block in enumerate(self.blocks):
                x = block(x, causal=True, cache=None if caches is None else caches[i])
            x = self.out_norm(x)
        return x.to(torch.float32)

    def transformer(self, tokens, labels):
        """Conditioning vectors [N, L, width] for every position in one causal pass: position i
        depends on the class and tokens[:, :i] only."""
        return self.run_blocks(self.inputs(tokens, labels, 0, self.seq_len))

    def next_condition(self, tokens, labels, i, caches=None):
        """The conditioning vector [N, 1, width] of token i given tokens[:, :i]: one position
        through the blocks with `caches` (one dict per block, holding positions 0..i-1), or
        without them a full causal pass."""
        if caches is None:
            return self.transformer(tokens, labels)[:, i : i + 1]
        return self.run_blocks(self.inputs(tokens, labels, i, i + 1), caches)

    def new_caches(self): # One dict per block.
        return [dict() for _ in self.blocks]

    def forward(self, images, labels, mask=None, batch_mul=4):
        """Teacher forcing: the per-sample head loss over every token (or those where `mask` is True)."""
        tokens = self.patchify(images)
        z = self.transformer(tokens, labels)
        if mask is None:
            mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return self.masked_token_loss(tokens, z, mask, batch_mul)

    @torch.no_grad()
    def sample(self, noise, labels, rnd, gnet=None, guidance=1.0,
        steps               = None,         # Must be the number of tokens L if given (one token per step).
        temperature         = 1.0,          # Scales the head's sampling noise.
        guidance_schedule   = 'constant',   # 'constant', or 'linear' from 1 up to `guidance` as tokens are revealed.
        head_steps          = None,         # Head sampling steps (default: the head's own).
        use_cache           = True,         # Key/value cache (False: a full causal pass per token; same images).
    ):
        """Images [N, C, R, R] in net space, token by token in raster order. Guidance extrapolates
        the head's prediction away from the null class (gnet=None) or from the causal guiding
        network `gnet` given the same labels; the guide keeps its own cache."""
        guide_net, guide_labels = self.guide(labels, gnet, temperature, guidance_schedule, head_steps)
        if steps is not None and steps != self.seq_len:
            raise ValueError(f'raster order generates one token per step: steps must be the number of tokens '
                f'({self.seq_len}), got {steps}')
        tokens = torch.zeros([noise.shape[0], self.seq_len, self.token_dim], device=noise.device)
        caches = self.new_caches() if use_cache else None
        guide_caches = guide_net.new_caches() if use_cache else None
        for i in range(self.seq_len):
            z = self.next_condition(tokens, labels, i, caches)
            guide_z = guide_net.next_condition(tokens, guide_labels, i, guide_caches) if guidance != 1 else None
            new = self.draw(z, guide_z, guide_net, rnd, i + 1, guidance, guidance_schedule, temperature, head_steps)
            tokens[:, i] = new[:, 0]
        return self.unpatchify(tokens)

#----------------------------------------------------------------------------
# Loss: label dropout to the null class, a random order per sample, a mask ratio per batch from
# a normal (mean 1, std 0.25) truncated to [mask_ratio_min, 1]; the loss counts masked tokens only.
# A raster-order (causal) network is trained by teacher forcing on every token: no mask.

@persistence.persistent_class
class MARLoss:
    def __init__(self,
        label_dropout   = 0.1,  # Probability of training a sample on the null class.
        mask_ratio_min  = 0.7,  # Lower end of the truncated normal mask ratio.
        mask_ratio_std  = 0.25, # Its standard deviation (mean 1).
        batch_mul       = 4,    # Noise draws per masked token (diffusion_batch_mul).
    ):
        if not 0 <= label_dropout < 1 or not 0 <= mask_ratio_min <= 1:
            raise ValueError(f'MAR: label_dropout must be in [0, 1) and mask_ratio_min in [0, 1], got {label_dropout} and {mask_ratio_min}')
        self.label_dropout, self.batch_mul = label_dropout, batch_mul
        self.mask_ratio_min, self.mask_ratio_std = mask_ratio_min, mask_ratio_std

    def draw_mask(self, batch_size, seq_len, device):
        """[N, L] bool, True = masked; the same count in every row (the encoder drops them)."""
        import scipy.stats # pylint: disable=import-outside-toplevel # Here: every script imports this module, few train MAR.
        u = float(torch.rand([]))
        lo = (self.mask_ratio_min - 1) / self.mask_ratio_std
        ratio = 1 + self.mask_ratio_std * scipy.stats.truncnorm.ppf(u, lo, 0)
        num_masked = min(max(int(np.ceil(seq_len * ratio)), 1), seq_len)
        orders = torch.rand([batch_size, seq_len], device=device).argsort(dim=1)
        return orders.argsort(dim=1) < num_masked

    def __call__(self, net, images, labels=None):
        module = getattr(net, 'module', net)
        if labels is not None and self.label_dropout:
            keep = torch.rand([labels.shape[0], 1], device=labels.device) >= self.label_dropout
            labels = labels * keep.to(labels.dtype)
        mask = None
        if getattr(module, 'order', 'random') == 'random':
            mask = self.draw_mask(images.shape[0], module.seq_len, images.device)
        return net(images, labels, mask=mask, batch_mul=self.batch_mul)

    @property
    def has_unconditional_branch(self): # docs/families.md: the null class was trained.
        return self.label_dropout > 0

#----------------------------------------------------------------------------
# The family's preset options (training/presets.py; COMMON_OPTIONS apply too) and the training-loop
# arguments they give. The paper's recipe: AdamW (0.9, 0.95), weight decay 0.02 (not on biases,
# norms and the head), lr 8e-4 at batch 2048, 100 epochs of warm-up, gradient clip 3.0, EMA 0.9999.
# `order` picks the network: 'random' the masked MAR, 'raster' the causal CausalAR.

FAMILY = 'mar'

OPTIONS = dict(
    order               = 'random',     # 'random': masked, bidirectional (MAR); 'raster': causal, token by token (CausalAR).
    patch_size          = 2,            # Tokens are patch_size x patch_size patches of the net-space image.
    width               = 768,          # Transformer width (encoder and decoder).
    encoder_depth       = 12,           # Encoder blocks (random order).
    decoder_depth       = 12,           # Decoder blocks (random order).
    depth               = 24,           # Transformer blocks (raster order).
    num_heads           = 12,           # Attention heads.
    buffer_tokens       = 64,           # Buffer tokens carrying the class embedding (random order).
    dropout             = 0.1,          # Attention and projection dropout.
    head                = 'diffusion',  # Per-token head: 'diffusion' (DiffLoss), 'flow' or 'edm'.
    head_width          = 1024,         # Head MLP width.
    head_depth          = 6,            # Head residual blocks.
    head_steps          = None,         # Head sampling steps (None = the head's default: 100 diffusion, 50 flow, 32 edm).
    flow_prediction     = 'v',          # Flow head: predict the velocity 'v' or the clean token 'x'.
    flow_solver         = 'heun',       # Flow head: 'heun' or 'euler'.
    edm_sigma_data      = 0.5,          # EDM head: standard deviation of the tokens.
    edm_P_mean          = -1.2,         # EDM head: training noise ln(sigma) ~ normal(P_mean, P_std).
    edm_P_std           = 1.2,
    edm_solver          = 'heun',       # EDM head: 'heun' or 'euler'.
    data_bound          = None,         # Clip predicted clean tokens to [-bound, bound]: 1.0 for pixels, None = off (latents).
    sample_steps        = 64,           # Default generation steps K.
    label_dropout       = 0.1,          # Label dropout to the null class (guidance).
    mask_ratio_min      = 0.7,          # Mask ratio ~ normal(1, 0.25) truncated to [mask_ratio_min, 1].
    batch_mul           = 4,            # Head noise draws per masked token (diffusion_batch_mul).
    mixed_precision     = True,         # bfloat16 transformer on CUDA.
    lr                  = 8e-4,         # AdamW learning rate after warm-up.
    betas               = [0.9, 0.95],  # AdamW betas.
    weight_decay        = 0.02,         # AdamW weight decay.
    rampup              = 128.1,        # Learning rate warm-up (millions of images; 100 ImageNet epochs).
    grad_clip           = 3.0,          # Gradient norm clipping.
    ema_beta            = 0.9999,       # EMA decay per step.
    ema_halflife        = 0.0,          # EMA half-life in kimg instead of ema_beta (0 = use ema_beta).
    vae                 = 'stabilityai/sd-vae-ft-mse', # VAE for latent datasets (hub name or local folder).
)

# The options whose values the network or its head checks itself, bounds included
# (presets.check_value leaves them alone).
CHECKED_OPTIONS = {'patch_size', 'width', 'num_heads', 'head_width', 'head_steps', 'data_bound'}

def loop_kwargs(opts):
    """Network, loss, encoder (None: chosen from the dataset), optimizer, learning rate and EMA
    arguments of training_loop() for resolved options `opts` (attribute access)."""
    head_kwargs = dict(
        diffusion   = dict(),
        flow        = dict(prediction=opts.flow_prediction, solver=opts.flow_solver),
        edm         = dict(sigma_data=opts.edm_sigma_data, P_mean=opts.edm_P_mean, P_std=opts.edm_P_std, solver=opts.edm_solver),
    ).get(opts.head, dict())
    if opts.head_steps is not None:
        head_kwargs['sample_steps'] = opts.head_steps
    network_kwargs = dict(patch_size=opts.patch_size, width=opts.width, num_heads=opts.num_heads, dropout=opts.dropout, head=opts.head,
        head_width=opts.head_width, head_depth=opts.head_depth, head_kwargs=head_kwargs, data_bound=opts.data_bound,
        mixed_precision=opts.mixed_precision)
    if opts.order == 'random':
        network_kwargs.update(class_name='training.networks_mar.MAR', encoder_depth=opts.encoder_depth,
            decoder_depth=opts.decoder_depth, buffer_tokens=opts.buffer_tokens, sample_steps=opts.sample_steps)
    elif opts.order == 'raster':
        network_kwargs.update(class_name='training.networks_mar.CausalAR', depth=opts.depth)
    else:
        raise ValueError(f'option "order" must be "random" (masked MAR) or "raster" (causal), got {opts.order!r}')
    return dict(
        encoder_kwargs      = None,
        network_kwargs      = network_kwargs,
        loss_kwargs         = dict(class_name='training.networks_mar.MARLoss', label_dropout=opts.label_dropout,
                                mask_ratio_min=opts.mask_ratio_min, batch_mul=opts.batch_mul),
        optimizer_kwargs    = dict(class_name='torch.optim.AdamW', betas=opts.betas, weight_decay=opts.weight_decay),
        lr_kwargs           = dict(func_name='training.training_loop.constant_lr', ref_lr=opts.lr, rampup_Mimg=opts.rampup),
        ema_kwargs          = dict(class_name='training.phema.TraditionalEMA', beta=opts.ema_beta, halflife_kimg=opts.ema_halflife),
    )

#----------------------------------------------------------------------------
