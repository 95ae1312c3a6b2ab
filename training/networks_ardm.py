"""Autoregressive Diffusion Models: Hoogeboom et al., "Autoregressive Diffusion Models", ICLR 2022
(arXiv 2110.02037).

An order-agnostic ARDM (OA-ARDM) models D discrete dimensions (pixels x channels, K levels each)
by revealing them one at a time in a uniformly random order sigma. One network, conditioned on
the step t, predicts every dimension that is still hidden from the revealed ones; training draws
one step per image and scores all hidden dimensions at once, which is an unbiased estimate of the
negative ELBO:  -log p(x) <= D * E_t[ 1/(D-t) * sum_{k: sigma(k) >= t} -log p(x_k | x_{sigma<t}) ].

The upscale ARDM (branch factor b) writes each level in base b and runs S = ceil(log_b K) stages,
each an OA-ARDM over the D dimensions that reveals the next most significant digit; OA-ARDM is the
one-stage case with b = K. Steps are counted globally, g = stage * D + t, 0 <= g < S * D.

Optionally the model is conditional, P(x | z): z is a Gaussian blur of the image (made inside the
network, so that training, sampling and likelihood agree), fed next to the input and the mask.

The network keeps a running estimate of the loss of every step, L_g (bits of one dimension
revealed at step g), in a buffer; the dynamic-programming policy turns it into a schedule that
reveals several dimensions per network call with the least expected loss for a budget of calls.
"""

import math
import numpy as np
import torch
from torch_utils import distributed as dist
from torch_utils import persistence

#----------------------------------------------------------------------------
# Generation policies: step boundaries 0 = g_0 < g_1 < ... < g_B = T; group i reveals, in one
# network call made at step g_i, the dimensions of steps g_i .. g_{i+1}-1, each at the cost L[g_i]
# (it sees only what was revealed before g_i). A group never crosses a stage boundary.

def policy_cost(step_loss, boundaries):
    """Expected loss (sum of L over the revealed dimensions) of a policy."""
    L = np.asarray(step_loss, dtype=np.float64)
    return float(sum((end - start) * L[start] for start, end in zip(boundaries[:-1], boundaries[1:])))

def _check_budget(num_steps, budget, stage_len):
    if num_steps % stage_len != 0:
        raise ValueError(f'ARDM policy: {num_steps} steps do not split into stages of {stage_len}')
    num_stages = num_steps // stage_len
    if not num_stages <= budget <= num_steps:
        raise ValueError(f'ARDM policy: the budget must be in {num_stages}..{num_steps} network calls '
            f'(at least one per stage, at most one per step), got {budget}')
    return num_stages

def naive_policy(num_steps, budget, stage_len=None):
    """The even split: the budget shared evenly between stages, then steps evenly between calls."""
    stage_len = stage_len or num_steps
    num_stages = _check_budget(num_steps, budget, stage_len)
    boundaries = [0]
    for stage in range(num_stages):
        calls = budget // num_stages + (stage < budget % num_stages)
        edges = np.round(np.linspace(0, stage_len, calls + 1)).astype(int)
        boundaries += [stage * stage_len + int(e) for e in edges[1:]]
    return boundaries

def dp_policy(step_loss, budget, stage_len=None):
    """The policy of at most `budget` calls with the least expected loss (the paper's dynamic
    program; a non-monotone L may want fewer calls). Returns (boundaries, cost).
    O(budget * T * stage_len) time, O(budget * T + stage_len^2) memory."""
    L = np.asarray(step_loss, dtype=np.float64)
    num_steps = len(L)
    stage_len = stage_len or num_steps
    _check_budget(num_steps, budget, stage_len)
    best = np.full(num_steps + 1, np.inf) # best[s]: least cost of steps 0..s-1 in exactly b calls.
    best[0] = 0
    choice = np.zeros([budget, num_steps + 1], dtype=np.int64) # Start of the last group.
    final = np.zeros(budget) # Least cost of all steps in exactly b + 1 calls.
    local = np.arange(stage_len)
    span = np.arange(1, stage_len + 1)[None, :] - local[:, None] # span[t, j] = j + 1 - t: group [t, j+1).
    for b in range(budget):
        new_best = np.full(num_steps + 1, np.inf)
        for start in range(0, num_steps, stage_len):
            t = start + local
            total = np.where(span > 0, best[t, None] + span * L[t, None], np.inf)
            arg = total.argmin(axis=0)
            new_best[start + 1 + local] = total[arg, local]
            choice[b, start + 1 + local] = t[arg]
        best = new_best
        final[b] = best[num_steps]
    # The most calls among the cheapest (ties: more calls never cost more with a monotone L).
    calls = int(np.flatnonzero(final <= final.min() + 1e-12 * abs(final.min()))[-1]) + 1
    boundaries = [num_steps]
    for b in reversed(range(calls)):
        boundaries.append(int(choice[b, boundaries[-1]]))
    assert boundaries[-1] == 0
    return boundaries[::-1], float(final[calls - 1])

#----------------------------------------------------------------------------
# Small helpers.

def random_orders(uniform):
    """Rank of each entry of `uniform` [N, D] within its row: sigma[i, k] = the step at which
    dimension k of image i is revealed, a uniformly random permutation."""
    return uniform.argsort(dim=1).argsort(dim=1)

def sample_categorical(logits, uniform):
    """Inverse-CDF draw from logits [N, C, K, H, W] with uniform [N, C, H, W] -> indices [N, C, H, W]."""
    cdf = logits.float().softmax(dim=2).cumsum(dim=2)
    return (cdf < uniform.unsqueeze(2)).sum(dim=2).clamp(max=logits.shape[2] - 1)

def gaussian_blur(x, sigma):
    """Separable Gaussian blur of [N, C, H, W], reflecting at the borders."""
    radius = min(int(math.ceil(3 * sigma)), x.shape[-1] - 1, x.shape[-2] - 1)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(x.dtype)
    channels = x.shape[1]
    x = torch.nn.functional.pad(x, [radius] * 4, mode='reflect')
    x = torch.nn.functional.conv2d(x, kernel.reshape(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return torch.nn.functional.conv2d(x, kernel.reshape(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)

#----------------------------------------------------------------------------
# Backbone: a residual CNN at full resolution (as in the paper's CIFAR-10 model), with the step
# and the class entering every block as a scale and shift.

def _group_count(channels):
    return min(32, channels // 4)

def _group_norm(channels):
    return torch.nn.GroupNorm(num_groups=_group_count(channels), num_channels=channels)

class ResBlock(torch.nn.Module):
    def __init__(self, channels, emb_channels, dropout=0.0):
        super().__init__()
        self.norm0 = _group_norm(channels)
        self.conv0 = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.affine = torch.nn.Linear(emb_channels, channels * 2)
        self.norm1 = _group_norm(channels)
        self.dropout = torch.nn.Dropout(dropout)
        self.conv1 = torch.nn.Conv2d(channels, channels, 3, padding=1)
        torch.nn.init.zeros_(self.conv1.weight) # Each block starts as the identity.
        torch.nn.init.zeros_(self.conv1.bias)

    def forward(self, x, emb):
        h = self.conv0(torch.nn.functional.silu(self.norm0(x)))
        scale, shift = self.affine(emb)[:, :, None, None].chunk(2, dim=1)
        h = torch.nn.functional.silu(self.norm1(h) * (1 + scale) + shift)
        return x + self.conv1(self.dropout(h))

#----------------------------------------------------------------------------
# The network: (levels, mask, step, class, condition) -> logits of the current stage's digit.

@persistence.persistent_class
class ARDMNet(torch.nn.Module):
    # The options of sample() that generate_images.py and calculate_metrics.py gen reach (--opt
    # KEY=VALUE), with their types (docs/families.md); sample() documents and checks their values.
    sampler_options = dict(steps=int, policy=str)

    def __init__(self,
        img_resolution,                 # Image resolution.
        img_channels,                   # Image channels.
        label_dim       = 0,            # Class label dimensionality. 0 = unconditional.
        levels          = 256,          # K: discrete levels per channel (the data are 0..K-1).
        branch          = None,         # Upscale ARDM: digits of base b revealed most significant first. None = OA-ARDM.
        model_channels  = 64,           # Channels of the residual blocks.
        num_blocks      = 4,            # Residual blocks.
        emb_channels    = None,         # Step/class embedding width. None = 4 * model_channels.
        dropout         = 0.0,          # Dropout inside the residual blocks.
        cond_blur       = 0.0,          # P(x|z): std (pixels) of the Gaussian blur giving z. 0 = unconditional in x.
        loss_decay      = 0.999,        # Running per-step loss: weight of the old value per new observation.
    ):
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        if branch is not None and not (branch == int(branch) and branch >= 2):
            raise ValueError(f'ARDMNet: branch must be an integer, at least 2 (or None: OA-ARDM), got {branch}')
        if not (model_channels >= 4 and model_channels % _group_count(model_channels) == 0): # GroupNorm's groups divide the channels.
            raise ValueError(f'ARDMNet: channels (model_channels) must be at least 4 and divisible by its GroupNorm groups, '
                f'min(32, channels // 4) (e.g. 64, 128, 256), got {model_channels}')
        self.levels = int(levels)
        self.branch = self.levels if branch is None else int(branch)
        self.num_stages = 1
        while self.branch ** self.num_stages < self.levels:
            self.num_stages += 1
        self.num_dims = img_channels * img_resolution ** 2
        self.num_steps = self.num_stages * self.num_dims
        self.cond_blur = float(cond_blur)
        self.loss_decay = float(loss_decay)
        emb_channels = emb_channels or model_channels * 4

        self.register_buffer('freqs', torch.randn(emb_channels // 2) * 4) # Random Fourier features of g / T.
        self.emb_step = torch.nn.Sequential(torch.nn.Linear(emb_channels, emb_channels), torch.nn.SiLU(), torch.nn.Linear(emb_channels, emb_channels))
        self.emb_label = torch.nn.Linear(label_dim, emb_channels, bias=False) if label_dim else None
        in_channels = img_channels * (3 if self.cond_blur else 2) # Value, mask (the absorbing value is a real level), z.
        self.conv_in = torch.nn.Conv2d(in_channels, model_channels, 3, padding=1)
        self.blocks = torch.nn.ModuleList([ResBlock(model_channels, emb_channels, dropout) for _ in range(num_blocks)])
        self.norm_out = _group_norm(model_channels)
        self.conv_out = torch.nn.Conv2d(model_channels, img_channels * self.branch, 3, padding=1)
        torch.nn.init.zeros_(self.conv_out.weight) # Start from the uniform distribution.
        torch.nn.init.zeros_(self.conv_out.bias)
        self.register_buffer('step_loss', torch.zeros(self.num_steps, dtype=torch.float64)) # L_g in bits.
        self.register_buffer('step_count', torch.zeros(self.num_steps, dtype=torch.float64)) # Observations of L_g.

    def digit_unit(self, stage):
        """b^(S-1-stage): the place value of the digit that `stage` reveals (tensor of stages)."""
        return torch.pow(self.branch, self.num_stages - 1 - stage).to(torch.float32)

    def visible(self, x, mask, stage):
        """What the network may see: the digits before `stage` everywhere, and the digit of
        `stage` where `mask` (revealed in this stage) is set; 0 (the absorbing value) otherwise."""
        unit = self.digit_unit(stage).reshape(-1, 1, 1, 1)
        unit = torch.where(mask, unit, unit * self.branch)
        return torch.floor(x / unit) * unit

    def target_digit(self, x, stage):
        unit = self.digit_unit(stage).reshape(-1, 1, 1, 1)
        return torch.remainder(torch.floor(x / unit), self.branch).to(torch.int64)

    def forward(self, x, mask, step, labels=None, cond=None):
        """x: levels [N, C, H, W] (only the visible digits are used); mask: bool [N, C, H, W], the
        dimensions revealed in the current stage; step: global step g [N]; labels: one-hot
        [N, label_dim]; cond: level images whose blur is z (conditional networks only).
        Returns logits [N, C, branch, H, W] of the current stage's digit."""
        stage = torch.div(step, self.num_dims, rounding_mode='floor')
        scale = 2 / (self.levels - 1)
        inputs = [self.visible(x, mask, stage) * scale - 1, mask.to(torch.float32)]
        if self.cond_blur:
            if cond is None:
                raise ValueError(f'this ARDM is conditional on a blurred copy of the image (cond_blur={self.cond_blur}): pass cond')
            inputs.append(gaussian_blur(cond.to(torch.float32) * scale - 1, self.cond_blur))
        phase = (step.to(torch.float32) / self.num_steps)[:, None] * self.freqs[None, :] * (2 * np.pi)
        emb = self.emb_step(torch.cat([phase.cos(), phase.sin()], dim=1))
        if self.emb_label is not None:
            if labels is None:
                raise ValueError(f'this ARDM is class-conditional ({self.label_dim} classes): pass one-hot labels')
            emb = emb + self.emb_label(labels.to(torch.float32) * np.sqrt(self.label_dim))
        emb = torch.nn.functional.silu(emb)
        h = self.conv_in(torch.cat(inputs, dim=1))
        for block in self.blocks:
            h = block(h, emb)
        h = self.conv_out(torch.nn.functional.silu(self.norm_out(h)))
        return h.reshape(x.shape[0], self.img_channels, self.branch, *x.shape[2:])

    def digit_nll(self, logits, x, stage):
        """Nats of the true digit of `stage` under `logits`, per dimension [N, C, H, W]."""
        logp = logits.float().log_softmax(dim=2)
        return -logp.gather(2, self.target_digit(x, stage).unsqueeze(2)).squeeze(2)

    #------------------------------------------------------------------------
    # The running per-step loss L_g.

    @torch.no_grad()
    def update_step_loss(self, step, bits):
        """Fold observations `bits` [N] at steps `step` [N] into L: each observation multiplies the
        old value's weight by loss_decay; the first one replaces the initial value. Under torchrun
        the observations of every rank are pooled, so that L stays the same on every rank."""
        counts = torch.bincount(step, minlength=self.num_steps).to(torch.float64)
        sums = torch.bincount(step, weights=bits.detach().to(torch.float64), minlength=self.num_steps)
        if dist.get_world_size() > 1:
            pooled = dist.all_reduce_sum(torch.stack([counts, sums]))
            counts, sums = pooled[0], pooled[1]
        keep = torch.where(self.step_count > 0, self.loss_decay ** counts, torch.zeros_like(counts))
        mean = sums / counts.clamp(min=1)
        self.step_loss.copy_(torch.where(counts > 0, keep * self.step_loss + (1 - keep) * mean, self.step_loss))
        self.step_count += counts

    def running_step_loss(self):
        """L as a numpy array for the policies: steps never observed are interpolated from their
        neighbours (log2(branch) everywhere for an untrained network, the loss of a uniform guess),
        and each stage is sorted in decreasing order. The true L_t cannot grow with t (more
        context), so sorting removes only noise, which the DP would otherwise exploit (a group
        started at a step whose estimate is low by chance), and keeps the sum, the full-step bpd."""
        L = self.step_loss.cpu().numpy()
        seen = self.step_count.cpu().numpy() > 0
        if not seen.any():
            return np.full(self.num_steps, np.log2(self.branch))
        steps = np.arange(self.num_steps)
        L = np.interp(steps, steps[seen], L[seen])
        return -np.sort(-L.reshape(self.num_stages, self.num_dims), axis=1).flatten()

    def policy(self, steps=None, policy='dp'):
        """(boundaries, predicted bits/dim) of a generation policy of `steps` network calls
        (None = one call per step, exact)."""
        steps = self.num_steps if steps is None else int(steps)
        L = self.running_step_loss()
        if policy not in ['dp', 'naive']:
            raise ValueError(f'ARDM: unknown policy "{policy}"; choose dp or naive')
        if steps == self.num_steps: # One step per call: both policies agree, no need for the DP.
            return list(range(self.num_steps + 1)), float(L.sum()) / self.num_dims
        if policy == 'dp':
            boundaries, cost = dp_policy(L, steps, self.num_dims)
        else:
            boundaries = naive_policy(self.num_steps, steps, self.num_dims)
            cost = policy_cost(L, boundaries)
        return boundaries, cost / self.num_dims

    #------------------------------------------------------------------------
    # Generation.

    @torch.no_grad()
    def sample(self, noise, labels, rnd, gnet=None, guidance=1.0, steps=None, policy='dp', cond=None):
        """Images (levels, float [N, C, H, W]) in `steps` network calls (None = one dimension per
        call) following `policy` ('dp' or 'naive'). `noise` only gives the batch shape and device;
        all randomness comes from `rnd`. `gnet`: a guiding ARDM, logits extrapolated from it by
        `guidance`. `cond`: level images whose blurred copy conditions a conditional network."""
        if self.cond_blur and cond is None:
            raise ValueError(f'this ARDM models P(x|z) with z a blurred image (cond_blur={self.cond_blur}): '
                'sampling needs cond=<level images [N, C, H, W]> to blur')
        boundaries, predicted = self.policy(steps, policy)
        if getattr(self, '_announced', None) != (steps, policy):
            dist.print0(f'ARDM {policy} policy, {len(boundaries) - 1} network calls: predicted {predicted:.4f} bits/dim')
            self._announced = (steps, policy)
        n, device = noise.shape[0], noise.device
        orders = random_orders(rnd.rand([n, self.num_dims], device=device)).reshape(noise.shape)
        x = torch.zeros(noise.shape, dtype=torch.float32, device=device)
        for start, end in zip(boundaries[:-1], boundaries[1:]):
            stage, t = divmod(start, self.num_dims)
            step = torch.full([n], start, dtype=torch.int64, device=device)
            mask = orders < t
            logits = self(x, mask, step, labels, cond)
            if gnet is not None:
                logits = gnet(x, mask, step, labels, cond).lerp(logits, guidance)
            digit = sample_categorical(logits, rnd.rand(list(noise.shape), device=device))
            reveal = (orders >= t) & (orders < end - stage * self.num_dims)
            x = x + reveal * digit * self.digit_unit(torch.tensor(stage))
        return x

    #------------------------------------------------------------------------
    # Likelihood.

    @torch.no_grad()
    def bpd(self, images, labels=None, rnd=None, mode='elbo', draws=16, steps=None, policy='dp', max_batch=1024):
        """Bits per dimension of level images [N, C, H, W], per image [N].
        mode='elbo': the negative ELBO, averaged over `draws` stratified steps (each with its own order).
        mode='exact': the exact negative log-likelihood for one fixed order per image, revealed
        with a policy of `steps` calls (None = all steps: D network calls per stage); the calls
        are batched over timesteps (`max_batch` per forward) and, under torchrun, split between
        the ranks and summed, so every rank must pass the same images."""
        n, device = images.shape[0], images.device
        images = images.to(torch.float32)
        if labels is not None and labels.shape[-1] == 0:
            labels = None
        image = torch.arange(n, device=device)
        if mode == 'elbo':
            # Item (image i, draw j): step g in the j-th of `draws` equal slices of 0..T-1.
            u = rnd.rand([n, draws], device=device, dtype=torch.float64)
            step = ((torch.arange(draws, device=device) + u) / draws * self.num_steps).floor().to(torch.int64).clamp(max=self.num_steps - 1)
            orders = torch.stack([random_orders(rnd.rand([n, self.num_dims], device=device)) for _ in range(draws)], dim=1).flatten(0, 1)
            t = step % self.num_dims
            items = dict(image=image[:, None].expand(n, draws), step=step, end=torch.full_like(step, self.num_dims),
                weight=self.num_stages / (self.num_dims - t).to(torch.float64) / draws)
            items = {key: value.flatten(0, 1) for key, value in items.items()}
            total = self._masked_nll(images, labels, orders=orders, order=torch.arange(n * draws, device=device), **items, max_batch=max_batch)
            return total / np.log(2)
        if mode != 'exact':
            raise ValueError(f'ARDM bpd: unknown mode "{mode}"; choose elbo or exact')
        boundaries, _ = self.policy(steps, policy)
        orders = random_orders(rnd.rand([n, self.num_dims], device=device))
        # Items step-major, so that a forward of n items evaluates one timestep for every image.
        groups = list(zip(boundaries[:-1], boundaries[1:]))[dist.get_rank()::dist.get_world_size()]
        start = torch.tensor([g[0] for g in groups], dtype=torch.int64, device=device).repeat_interleave(n)
        end = torch.tensor([g[1] - g[0] // self.num_dims * self.num_dims for g in groups], dtype=torch.int64, device=device).repeat_interleave(n)
        item_image = image.repeat(len(groups))
        total = self._masked_nll(images, labels, orders=orders, image=item_image, order=item_image, step=start, end=end,
            weight=torch.ones_like(start, dtype=torch.float64), max_batch=max_batch)
        if dist.get_world_size() > 1:
            dist.all_reduce_sum(total)
        return total / (self.num_dims * np.log(2))

    def _masked_nll(self, images, labels, orders, image, order, step, end, weight, max_batch):
        """Sum over items of weight * nats of the dimensions of `image` revealed at local steps
        t..end-1 of the order `orders[order]` (t = step mod D), given those before t, per image
        [N] (float64). Items are (image, order, step, end, weight) tensors of one length; the
        conditioning z, when the network has one, is made from the images themselves."""
        total = torch.zeros(images.shape[0], dtype=torch.float64, device=images.device)
        for chunk in torch.arange(len(image), device=images.device).split(max_batch):
            idx = image[chunk]
            x = images[idx]
            stage = torch.div(step[chunk], self.num_dims, rounding_mode='floor')
            t = (step[chunk] % self.num_dims).reshape(-1, 1, 1, 1)
            sigma = orders[order[chunk]].reshape(x.shape)
            logits = self(x, sigma < t, step[chunk], None if labels is None else labels[idx], x if self.cond_blur else None)
            reveal = (sigma >= t) & (sigma < end[chunk].reshape(-1, 1, 1, 1))
            nll = (self.digit_nll(logits, x, stage) * reveal).flatten(1).sum(1).to(torch.float64)
            total.index_add_(0, idx, nll * weight[chunk])
        return total

#----------------------------------------------------------------------------
# Training loss: one random stage, step and order per image; the per-sample negative ELBO
# estimate in bits per dimension. Also feeds the running per-step loss L_g of the network.

@persistence.persistent_class
class ARDMLoss:
    def __call__(self, net, images, labels=None):
        module = getattr(net, 'module', net)
        n, device = images.shape[0], images.device
        step = torch.randint(module.num_steps, [n], device=device)
        stage = torch.div(step, module.num_dims, rounding_mode='floor')
        t = step % module.num_dims
        sigma = random_orders(torch.rand([n, module.num_dims], device=device)).reshape(images.shape)
        mask = sigma < t.reshape(-1, 1, 1, 1)
        logits = net(images, mask, step, labels if module.label_dim else None, images if module.cond_blur else None)
        nll = (module.digit_nll(logits, images, stage) * ~mask).flatten(1).sum(1)
        step_bits = nll / (module.num_dims - t) / np.log(2) # The loss of one dimension revealed at step g.
        module.update_step_loss(step, step_bits)
        return step_bits * module.num_stages

#----------------------------------------------------------------------------
# The family's preset options (training/presets.py; COMMON_OPTIONS there apply too, some with
# other defaults here) and the training-loop arguments they give. The paper's optimiser: Adam
# 1e-4, gradient clipping at 100, an EMA of the weights (evaluated and sampled with the EMA).

FAMILY = 'ardm'

OPTIONS = dict(
    levels              = 256,          # K: discrete levels per channel (the dataset is quantized on the fly).
    branch              = None,         # Upscale ARDM: branch factor b, most significant digits first (None = OA-ARDM).
    channels            = 256,          # Channels of the residual blocks.
    num_blocks          = 32,           # Residual blocks (full resolution, as in the paper).
    dropout             = 0.0,          # Dropout probability.
    cond_blur           = 0.0,          # P(x|z): std (pixels) of the Gaussian blur giving z (0 = no z).
    loss_decay          = 0.999,        # Running per-step loss L_t: weight of the old value per observation.
    lr                  = 1e-4,         # Adam learning rate.
    betas               = [0.9, 0.999], # Adam betas.
    rampup              = 0.0,          # Learning rate warm-up (millions of images).
    grad_clip           = 100.0,        # Gradient norm clipping.
    ema_beta            = 0.9999,       # EMA decay per step.
    ema_halflife        = 0.0,          # EMA half-life in kimg instead of ema_beta (0 = use ema_beta).
    batch               = 128,          # Total batch size.
)

# The options whose values the network or the encoder checks itself, bounds included
# (presets.check_value leaves them alone).
CHECKED_OPTIONS = {'levels', 'branch', 'channels'}

def loop_kwargs(opts):
    """Network, loss, encoder, optimizer, learning rate and EMA arguments of training_loop()."""
    return dict(
        encoder_kwargs      = dict(class_name='training.encoders.QuantizeEncoder', levels=opts.levels),
        network_kwargs      = dict(class_name='training.networks_ardm.ARDMNet', levels=opts.levels, branch=opts.branch,
                                model_channels=opts.channels, num_blocks=opts.num_blocks, dropout=opts.dropout,
                                cond_blur=opts.cond_blur, loss_decay=opts.loss_decay),
        loss_kwargs         = dict(class_name='training.networks_ardm.ARDMLoss'),
        optimizer_kwargs    = dict(class_name='torch.optim.Adam', betas=opts.betas, eps=1e-8),
        lr_kwargs           = dict(func_name='training.training_loop.constant_lr', ref_lr=opts.lr, rampup_Mimg=opts.rampup),
        ema_kwargs          = dict(class_name='training.phema.TraditionalEMA', beta=opts.ema_beta, halflife_kimg=opts.ema_halflife),
    )

#----------------------------------------------------------------------------
