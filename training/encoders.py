"""Converting between the pixels stored in a dataset and the representation a model works in.

Raw pixels (uint8 NCHW, as the dataset returns them) are first encoded into "raw latents", the
form stored in a dataset, and then into "final latents", what the network sees. Decoding goes
from final latents straight back to uint8 pixels. Keeping the second step separate lets a model
change its data scaling (or sample a VAE posterior afresh every time) without re-encoding the
dataset. The classes are persistent so that a snapshot carries the encoder it was trained with;
StandardRGBEncoder and StabilityVAEEncoder keep the class and attribute names of the official
EDM2 classes, so either can stand in for the other. This source travels inside snapshots and runs
in the official tree too: it imports only numpy, torch and torch_utils.persistence/misc (diffusers
and the cache helper lazily).
"""

import os
import numpy as np
import torch
from torch_utils import misc
from torch_utils import persistence

#----------------------------------------------------------------------------

@persistence.persistent_class
class Encoder:
    """The interface: encode_pixels (raw pixels -> raw latents), encode_latents (raw latents ->
    final latents) and decode (final latents -> raw pixels), all on NCHW tensors; encode() chains
    the first two. init() loads whatever a subclass loads lazily."""

    def encode(self, x):
        return self.encode_latents(self.encode_pixels(x))

    def encode_pixels(self, x):
        """The dataset stores the pixels themselves unless a subclass says otherwise."""
        return x

    def init(self, device):
        """Load lazily loaded parts now, onto `device` (the generator calls it once, up front)."""

    def __getstate__(self): # Explicit: Python < 3.11, where the official tree may run this, has no default.
        return self.__dict__

    def encode_latents(self, x):
        raise NotImplementedError(f'{type(self).__name__} does not implement encode_latents')

    def decode(self, x):
        raise NotImplementedError(f'{type(self).__name__} does not implement decode')

#----------------------------------------------------------------------------

@persistence.persistent_class
class StandardRGBEncoder(Encoder):
    """EDM2 pixel-space models: uint8 [0, 255] <-> float [-1, 1]. The dataset stores the pixels
    themselves. Both mappings are the official arithmetic, so that a seed decodes to the same
    uint8 image as in the official code (bit for bit)."""

    def encode_latents(self, x):
        return x.to(torch.float32) / 127.5 - 1

    def decode(self, x):
        """-> uint8, rounded to nearest (+128, then truncated) and clipped."""
        return (x.to(torch.float32) * 127.5 + 128).clip(0, 255).to(torch.uint8)

#----------------------------------------------------------------------------

@persistence.persistent_class
class StabilityVAEEncoder(Encoder):
    """Latent-space models: Stable Diffusion's VAE. The dataset stores the posterior mean and std
    (8 channels); encode_latents draws a fresh sample from the posterior each time and whitens it
    per channel with the assumed statistics of the raw latents: final = raw * scale + bias. The
    attribute names are the official class's, which generate._local_encoder reads from official
    snapshots to build this class in its place."""

    def __init__(self,
        vae_name    = 'stabilityai/sd-vae-ft-mse',  # Hub name, or a local folder written by save_pretrained().
        raw_mean    = [5.81, 3.25, 0.12, -2.15],    # Per-channel mean assumed for the raw latents.
        raw_std     = [4.17, 4.62, 3.71, 3.28],     # Per-channel standard deviation assumed for them.
        final_mean  = 0,                            # Mean the final latents should have.
        final_std   = 0.5,                          # Standard deviation they should have.
        batch_size  = 8,                            # Images per VAE call.
    ):
        self.vae_name = vae_name
        self.batch_size = int(batch_size)
        self._vae = None # Loaded by init(); never pickled.
        # float32 throughout, as official snapshots store them.
        scale = np.float32(final_std) / np.float32(raw_std)
        self.scale, self.bias = scale, np.float32(final_mean) - np.float32(raw_mean) * scale

    def init(self, device):
        if self._vae is None:
            self._vae = load_stability_vae(self.vae_name, device=device)
        self._vae.to(device)

    def __getstate__(self):
        return dict(super().__getstate__(), _vae=None) # The VAE weights never go into a snapshot.

    def encode_pixels(self, x):
        self.init(x.device)
        x = x.to(torch.float32) / 255
        if x.shape[1] == 1: # Grayscale datasets: the VAE expects RGB.
            x = x.expand(-1, 3, -1, -1)
        results = [] # One batch's posterior at a time: they hold several tensors each.
        for batch in x.split(self.batch_size):
            posterior = self._vae.encode(batch)['latent_dist']
            results.append(torch.cat([posterior.mean, posterior.std], dim=1))
        return torch.cat(results)

    def encode_latents(self, x):
        mean, std = x.to(torch.float32).chunk(2, dim=1)
        return self.scale_latents(mean + torch.randn_like(mean) * std)

    def scale_latents(self, x): # raw VAE latents (4 channels) => final latents
        return x * self._per_channel(x, self.scale) + self._per_channel(x, self.bias)

    def decode(self, x):
        self.init(x.device)
        x = x.to(torch.float32)
        # Undo the whitening as the official decoder does, (x - bias) / scale, so that official
        # snapshots decoded through this class give the official pixels (bit for bit).
        raw = (x - self._per_channel(x, self.bias)) / self._per_channel(x, self.scale)
        pixels = torch.cat([self._vae.decode(batch)['sample'] for batch in raw.split(self.batch_size)])
        return pixels.clamp(0, 1).mul(255).to(torch.uint8)

    @staticmethod
    def _per_channel(x, values): # Cached [1, C, 1, 1] constant with x's dtype and device.
        return misc.const_like(x, values).reshape(1, -1, 1, 1)

#----------------------------------------------------------------------------
# ARDM: discrete intensity levels. uint8 v -> floor(v * K / 256), decoded to the level's
# centre on the 0..255 scale, round(k * 255 / (K - 1)). K = 256 is the identity and K = 2
# thresholds at 128; data stored as round(u * 255 / (K - 1)) for u in 0..K-1 (e.g. the 17
# gray levels of the built-in digits with K = 17) maps back to exactly u.

@persistence.persistent_class
class QuantizeEncoder(Encoder):
    def __init__(self,
        levels = 256,   # Number of discrete levels K per channel, 2..256.
    ):
        if not 2 <= int(levels) <= 256:
            raise ValueError(f'QuantizeEncoder: levels must be in 2..256, got {levels}')
        self.levels = int(levels)

    def encode_latents(self, x): # uint8 (or integer-valued float) pixels => float levels 0..K-1
        return torch.floor(x.to(torch.float32) * self.levels / 256)

    def decode(self, x):
        x = x.to(torch.float32).round().clamp(0, self.levels - 1)
        return (x * 255 / (self.levels - 1)).round().to(torch.uint8)

#----------------------------------------------------------------------------
# Load a diffusers AutoencoderKL from a local folder, from this project's cache, or from the hub,
# in that order, and say exactly what to do when none of them works (e.g. offline).

def _cache_dir(*paths):
    # This module's source travels inside snapshots and must also run in the official EDM2 tree,
    # which keeps the cache-path helper in dnnlib instead of torch_utils.util.
    try:
        from torch_utils.util import make_cache_dir_path # pylint: disable=import-outside-toplevel
    except ImportError:
        from dnnlib import make_cache_dir_path # pylint: disable=import-outside-toplevel,import-error
    return make_cache_dir_path(*paths)

def load_stability_vae(vae_name='stabilityai/sd-vae-ft-mse', device=torch.device('cpu')):
    import diffusers
    load_kwargs = dict(low_cpu_mem_usage=False) # Without `accelerate`, True only adds a warning.
    if os.path.isdir(vae_name):
        try:
            vae = diffusers.AutoencoderKL.from_pretrained(vae_name, **load_kwargs)
        except (OSError, ValueError) as e:
            raise FileNotFoundError(f'Cannot load a diffusers AutoencoderKL from the folder {vae_name} '
                f'(it must hold config.json and the weights written by save_pretrained()): {e}') from e
        return vae.eval().requires_grad_(False).to(device)

    cache_dir = _cache_dir('diffusers')
    os.environ.setdefault('HF_HUB_DISABLE_PROGRESS_BARS', '1')
    try:
        # The cache first, so that a cached model never touches the network.
        vae = diffusers.AutoencoderKL.from_pretrained(vae_name, cache_dir=cache_dir, local_files_only=True, **load_kwargs)
    except (OSError, ValueError) as cache_error:
        try:
            if os.environ.get('HF_HUB_OFFLINE', '0') not in ('', '0'):
                raise cache_error # The user said there is no network: do not wait for retries.
            vae = diffusers.AutoencoderKL.from_pretrained(vae_name, cache_dir=cache_dir, **load_kwargs)
        except (OSError, ValueError) as e:
            raise FileNotFoundError(f'Cannot load the VAE "{vae_name}": it is not a local folder, '
                f'not in the cache {cache_dir}, and the Hugging Face hub cannot be reached ({type(e).__name__}). '
                f'To work offline, run on a machine with internet: python -c "import diffusers; '
                f"diffusers.AutoencoderKL.from_pretrained('{vae_name}').save_pretrained('sd-vae')\" "
                f'and copy the folder sd-vae here, then pass its path instead of "{vae_name}" '
                f'(e.g. --model-url sd-vae); or copy a Hugging Face cache holding it into {cache_dir} '
                f'(EDM2_CACHE_DIR moves that cache). Set HF_HUB_OFFLINE=1 to skip the hub.') from e
    return vae.eval().requires_grad_(False).to(device)

#----------------------------------------------------------------------------
