"""A minimal model family used by the training-loop tests: it shows that a family plugs into the
loop through the interface of docs/families.md alone (a network, a per-sample loss, an encoder)."""

import numpy as np
import torch

from torch_utils import persistence

@persistence.persistent_class
class TinyNet(torch.nn.Module):
    def __init__(self, img_resolution, img_channels, label_dim, hidden=32):
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        dim = img_channels * img_resolution**2
        self.inp = torch.nn.Linear(dim + label_dim, hidden)
        self.out = torch.nn.Linear(hidden, dim)
        self.register_buffer('calls', torch.zeros([])) # Sampling state lives in buffers (EMA copies them).

    def forward(self, x, labels):
        self.calls += 1
        h = torch.cat([x.flatten(1), labels], dim=1)
        return self.out(torch.nn.functional.silu(self.inp(h))).reshape(x.shape)

@persistence.persistent_class
class TinyLoss:
    """Denoising loss; noise=False makes it deterministic (to compare 1 and 2 processes)."""
    def __init__(self, noise=True):
        self.noise = noise

    def __call__(self, net, images, labels):
        noisy = images + 0.3 * torch.randn_like(images) if self.noise else images.flip(-1)
        return (net(noisy, labels) - images).square().flatten(1).mean(1)

@persistence.persistent_class
class IdentityEncoder:
    def init(self, device):
        pass

    def encode_latents(self, x):
        return x.to(torch.float32) / 127.5 - 1

    def decode(self, x):
        return (x * 127.5 + 128).clip(0, 255).to(torch.uint8)

class TinyDataset(torch.utils.data.Dataset):
    """Random 1x4x4 uint8 images with one-hot labels of 3 classes."""
    def __init__(self, size=40, seed=0):
        rnd = np.random.RandomState(seed)
        self.images = rnd.randint(0, 256, size=[size, 1, 4, 4]).astype(np.uint8)
        self.labels = np.eye(3, dtype=np.float32)[rnd.randint(0, 3, size=size)]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, idx):
        return self.images[idx], self.labels[idx]

class RandomData(torch.utils.data.Dataset):
    """`size` random images of a given shape with one-hot labels of `label_dim` classes: uint8
    pixels [channels, R, R], or with latent=True what dataset_tool.py encode stores, float32
    VAE posterior means and (positive) stds [8, R, R]."""
    def __init__(self, resolution, channels, label_dim, latent=False, size=8, seed=0):
        rnd = np.random.RandomState(seed)
        if latent:
            self.images = np.concatenate([rnd.randn(size, 4, resolution, resolution) * 4,
                rnd.rand(size, 4, resolution, resolution) * 0.1], axis=1).astype(np.float32)
        else:
            self.images = rnd.randint(0, 256, size=[size, channels, resolution, resolution]).astype(np.uint8)
        self.labels = np.eye(label_dim, dtype=np.float32)[rnd.randint(0, max(label_dim, 1), size=size)] if label_dim else np.zeros([size, 0], np.float32)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, idx):
        return self.images[idx], self.labels[idx]
