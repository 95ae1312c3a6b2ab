"""Exact ARDM likelihood: network evaluations (image x timestep) per second when the D timesteps
of the fixed-order NLL are batched into few forwards, against one timestep per forward, in one
process on the same network (the ardm-digits architecture, random weights). Prints one JSON line
per figure: medians over the repeats, and the speed-up of batching.

    python -m benchmarks.bench_ardm [--images 1] [--repeats 5] [--threads 1]
"""

import json
import time

import click
import numpy as np
import torch

from training.networks_ardm import ARDMNet

class _Random:
    """Per-image generators (the interface of training.samplers.StackedRandomGenerator)."""
    def __init__(self, seeds, device):
        self.generators = [torch.Generator(device).manual_seed(seed) for seed in seeds]

    def rand(self, size, **kwargs):
        return torch.stack([torch.rand(size[1:], generator=gen, **kwargs) for gen in self.generators])

def time_exact_bpd(net, images, labels, max_batch, repeats):
    """Median seconds of one exact-likelihood evaluation, and its result."""
    seconds = []
    for _ in range(repeats):
        if images.device.type == 'cuda':
            torch.cuda.synchronize()
        start = time.perf_counter()
        bpd = net.bpd(images, labels, _Random(range(len(images)), images.device), mode='exact', max_batch=max_batch)
        if images.device.type == 'cuda':
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds)), bpd

@click.command()
@click.option('--images',   help='Images evaluated together', metavar='INT', type=click.IntRange(min=1), default=1, show_default=True)
@click.option('--repeats',  help='Timed repeats per setting', metavar='INT', type=click.IntRange(min=1), default=5, show_default=True)
@click.option('--threads',  help='CPU threads (the machine may be shared)', metavar='INT', type=click.IntRange(min=1), default=1, show_default=True)
@click.option('--max-batch', help='Largest batched forward', metavar='INT', type=click.IntRange(min=1), default=1024, show_default=True)
def main(images, repeats, threads, max_batch):
    """Benchmark the exact ARDM likelihood, batched over timesteps vs one timestep per forward."""
    torch.set_num_threads(threads)
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    torch.manual_seed(0)
    net = ARDMNet(img_resolution=8, img_channels=1, label_dim=10, levels=17, model_channels=64, num_blocks=4).eval().to(device)
    x = torch.randint(0, 17, [images, 1, 8, 8], device=device).float()
    labels = torch.eye(10, device=device)[torch.arange(images, device=device) % 10]
    evaluations = images * net.num_steps
    common = dict(device=device.type, threads=threads, images=images, timesteps=net.num_steps, repeats=repeats)

    time_exact_bpd(net, x, labels, max_batch, 1) # Warm-up.
    batched_sec, batched_bpd = time_exact_bpd(net, x, labels, max_batch, repeats)
    single_sec, single_bpd = time_exact_bpd(net, x, labels, images, repeats)
    torch.testing.assert_close(batched_bpd, single_bpd) # Same numbers either way.
    batched_rate = evaluations / batched_sec
    single_rate = evaluations / single_sec
    print(json.dumps(dict(figure='ardm_exact_evals_per_sec_batched', value=batched_rate, max_batch=max_batch, **common)))
    print(json.dumps(dict(figure='ardm_exact_evals_per_sec_one_timestep', value=single_rate, **common)))
    print(json.dumps(dict(figure='ardm_exact_batched_speedup', value=batched_rate / single_rate, **common)))

if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter
