"""EDM sampling speed: images per second for the 32-step Heun sampler on a small EDM2 network
(training.networks_edm2.Precond, 16x16x3, 10 classes, 32 channels, random weights: speed does not
depend on the weights), on the CPU and, when present, on the GPU; and network evaluations per
image for each solver at 32 steps (counted with a wrapper around the network), with and without
guidance. Prints one JSON line per figure; times are medians over the repeats.

    python -m benchmarks.bench_sample [--images 32] [--steps 32] [--repeats 3]
"""

import json
import time

import click
import numpy as np
import torch

from training import samplers

def small_net():
    torch.manual_seed(0)
    try:
        from training.networks_edm2 import Precond
    except ImportError: # Before training/networks_edm2.py exists: a tiny conv net with the same interface.
        return TinyConvNet(), 'tiny conv net (training.networks_edm2 missing)'
    net = Precond(img_resolution=16, img_channels=3, label_dim=10, model_channels=32, channel_mult=[1, 2],
        num_blocks=1, attn_resolutions=[8], use_fp16=False)
    return net, 'networks_edm2.Precond 16x16x3, 10 classes, 32 channels, channel_mult [1,2], 1 block, attention at 8'

class TinyConvNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.img_resolution, self.img_channels, self.label_dim = 16, 3, 10
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(32, 3, 3, padding=1))

    def forward(self, x, sigma, labels=None):
        sigma = sigma.reshape(-1, 1, 1, 1)
        return x * 0.25 / (0.25 + sigma ** 2) + self.body(x / (0.25 + sigma ** 2).sqrt())

class CountingNet(torch.nn.Module):
    """Counts the images passed through the network."""
    def __init__(self, net):
        super().__init__()
        self.net, self.images = net, 0
        self.img_resolution, self.img_channels, self.label_dim = net.img_resolution, net.img_channels, net.label_dim

    def forward(self, x, sigma, labels=None):
        self.images += x.shape[0]
        return self.net(x, sigma, labels)

def run(net, device, images, **kwargs):
    seeds = list(range(images))
    rnd = samplers.StackedRandomGenerator(device, seeds)
    noise = rnd.randn([images, net.img_channels, net.img_resolution, net.img_resolution], device=device)
    labels = torch.eye(net.label_dim, device=device)[rnd.randint(net.label_dim, size=[images, 1], device=device)[:, 0]]
    with torch.no_grad():
        x = samplers.sample(net, noise, labels, rnd, **kwargs)
    if device.type == 'cuda':
        torch.cuda.synchronize()
    return x

@click.command()
@click.option('--images', help='Images per batch', type=int, default=32, show_default=True)
@click.option('--steps', help='Sampling steps', type=int, default=32, show_default=True)
@click.option('--repeats', help='Timed repeats', type=int, default=3, show_default=True)
def main(images, steps, repeats):
    net, description = small_net()
    devices = [torch.device('cpu')] + ([torch.device('cuda')] if torch.cuda.is_available() else [])
    for device in devices:
        net = net.to(device).eval().requires_grad_(False)
        run(net, device, min(images, 4), num_steps=2) # Warm-up.
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            run(net, device, images, solver='heun', num_steps=steps)
            seconds.append(time.perf_counter() - start)
        print(json.dumps(dict(figure='images_per_second', solver='heun', steps=steps, device=device.type,
            threads=torch.get_num_threads() if device.type == 'cpu' else None, batch=images,
            value=round(images / float(np.median(seconds)), 2), seconds=[round(s, 3) for s in seconds], net=description)))

    net = net.to('cpu')
    for guidance in [1.0, 2.0]:
        for solver in samplers.SOLVERS:
            counter, gcounter = CountingNet(net), CountingNet(net)
            run(counter, torch.device('cpu'), 2, solver=solver, num_steps=steps, gnet=gcounter, guidance=guidance)
            print(json.dumps(dict(figure='network_evaluations_per_image', solver=solver, steps=steps, guidance=guidance,
                value=(counter.images + gcounter.images) / 2)))

if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter
