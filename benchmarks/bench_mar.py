"""MAR generation speed: images per second for K = 16 and K = 64 generation steps, and the share
of the time spent in the per-token head (the diffusion sampler's 100 MLP steps per revealed token)
against the transformer (one encoder-decoder pass per step), in one process on the same network
(a preset's architecture with random weights; speed does not depend on the weights). Prints one
JSON line per figure: medians over the repeats, and K = 64 against K = 16.

For a causal preset (order 'raster', e.g. mar-digits-causal) the two settings are token-by-token
sampling with the key/value cache (one position per step through the transformer) and without it
(a full causal pass per token, the baseline): images per second of each and their ratio.

The default is the mar-digits architecture on 16x16 one-channel images: 2x2 patches give 64
tokens, so that K = 64 (one token per step) is possible.

    python -m benchmarks.bench_mar [--preset mar-digits] [--resolution 16] [--images 16] [--guidance 2]
    python -m benchmarks.bench_mar --preset mar-digits-causal [--head-steps 8]
"""

import json
import time

import click
import numpy as np
import torch

from torch_utils import util
from training import presets
from training.samplers import StackedRandomGenerator

class PartTimer:
    """Wraps the network's transformer (the causal one's per-token step) and net.head.sample to
    add up the seconds spent in each."""
    def __init__(self, net, device):
        self.device = device
        self.seconds = dict(transformer=0.0, head=0.0)
        if net.order == 'raster':
            net.next_condition = self.wrap(net.next_condition, 'transformer')
        else:
            net.transformer = self.wrap(net.transformer, 'transformer')
        net.head.sample = self.wrap(net.head.sample, 'head')

    def sync(self):
        if self.device.type == 'cuda':
            torch.cuda.synchronize()

    def wrap(self, func, part):
        def timed(*args, **kwargs):
            self.sync()
            start = time.perf_counter()
            result = func(*args, **kwargs)
            self.sync()
            self.seconds[part] += time.perf_counter() - start
            return result
        return timed

def time_generation(net, timer, images, guidance, repeats, **sampler_kwargs):
    """Median seconds per batch, and the median shares of the head and the transformer."""
    labels = torch.eye(net.label_dim, device=timer.device)[torch.arange(images, device=timer.device) % net.label_dim]
    noise = torch.zeros([images, net.img_channels, net.img_resolution, net.img_resolution], device=timer.device)
    seconds, head_share, transformer_share = [], [], []
    for repeat in range(repeats):
        timer.seconds = dict(transformer=0.0, head=0.0)
        rnd = StackedRandomGenerator(timer.device, range(repeat * images, (repeat + 1) * images))
        timer.sync()
        start = time.perf_counter()
        net.sample(noise, labels, rnd, guidance=guidance, **sampler_kwargs)
        timer.sync()
        seconds.append(time.perf_counter() - start)
        head_share.append(timer.seconds['head'] / seconds[-1])
        transformer_share.append(timer.seconds['transformer'] / seconds[-1])
    return float(np.median(seconds)), float(np.median(head_share)), float(np.median(transformer_share))

def report(figure, value, **fields):
    print(json.dumps(dict(figure=figure, value=value, **fields)))

def bench_steps(net, timer, step_list, images, guidance, repeats, head_steps, common):
    """Masked MAR: each number of generation steps K, the first one the baseline."""
    if max(step_list) > net.seq_len:
        raise click.BadParameter(f'{net.seq_len} tokens allow at most {net.seq_len} steps', param_hint='--steps')
    time_generation(net, timer, images, guidance, 1, steps=step_list[0], head_steps=head_steps) # Warm-up.
    rates = dict()
    for num_steps in step_list:
        sec, head_share, transformer_share = time_generation(net, timer, images, guidance, repeats, steps=num_steps, head_steps=head_steps)
        rates[num_steps] = images / sec
        report('mar_images_per_sec', rates[num_steps], K=num_steps, **common)
        report('mar_time_share_head', head_share, K=num_steps, **common)
        report('mar_time_share_transformer', transformer_share, K=num_steps, **common)
    for num_steps in step_list[1:]:
        report('mar_images_per_sec_ratio_vs_baseline', rates[num_steps] / rates[step_list[0]], K=num_steps, baseline_K=step_list[0], **common)

def bench_cache(net, timer, images, guidance, repeats, head_steps, common):
    """Causal network: token-by-token sampling without the key/value cache (the baseline) and with it."""
    time_generation(net, timer, images, guidance, 1, use_cache=True, head_steps=head_steps) # Warm-up.
    rates = dict()
    for use_cache in [False, True]:
        sec, head_share, transformer_share = time_generation(net, timer, images, guidance, repeats, use_cache=use_cache, head_steps=head_steps)
        rates[use_cache] = images / sec
        report('causal_images_per_sec', rates[use_cache], kv_cache=use_cache, **common)
        report('causal_time_share_head', head_share, kv_cache=use_cache, **common)
        report('causal_time_share_transformer', transformer_share, kv_cache=use_cache, **common)
    report('causal_images_per_sec_ratio_cache_vs_no_cache', rates[True] / rates[False], **common)

@click.command()
@click.option('--preset',     help='Architecture (training/presets.py)', metavar='NAME', type=str, default='mar-digits', show_default=True)
@click.option('--resolution', help='Net-space resolution', metavar='INT', type=click.IntRange(min=1), default=16, show_default=True)
@click.option('--channels',   help='Net-space channels', metavar='INT', type=click.IntRange(min=1), default=1, show_default=True)
@click.option('--images',     help='Images generated together', metavar='INT', type=click.IntRange(min=1), default=16, show_default=True)
@click.option('--guidance',   help='Guidance scale (1 = one network pass per step)', metavar='FLOAT', type=float, default=2.0, show_default=True)
@click.option('--steps',      help='Generation steps K to compare, the first one the baseline (masked presets)', metavar='LIST', type=str, default='16,64', show_default=True)
@click.option('--head-steps', help='Head sampling steps  [default: the head\'s]', metavar='INT', type=click.IntRange(min=1), default=None)
@click.option('--repeats',    help='Timed repeats per setting', metavar='INT', type=click.IntRange(min=1), default=3, show_default=True)
@click.option('--threads',    help='CPU threads (the machine may be shared)', metavar='INT', type=click.IntRange(min=1), default=1, show_default=True)
def main(preset, resolution, channels, images, guidance, steps, head_steps, repeats, threads):
    """Benchmark MAR generation: several numbers of steps K (masked), or the key/value cache (causal)."""
    torch.set_num_threads(threads)
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        network_kwargs = presets.family_kwargs(presets.resolve(preset))['network_kwargs']
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint='--preset')
    torch.manual_seed(0)
    net = util.construct_class_by_name(**network_kwargs, img_resolution=resolution, img_channels=channels, label_dim=10)
    net = net.eval().requires_grad_(False).to(device)
    timer = PartTimer(net, device)
    common = dict(device=device.type, threads=threads, preset=preset, resolution=resolution, channels=channels,
        tokens=net.seq_len, images=images, guidance=guidance, head_steps=head_steps or net.head.sample_steps, repeats=repeats)
    if net.order == 'raster':
        bench_cache(net, timer, images, guidance, repeats, head_steps, common)
    else:
        bench_steps(net, timer, util.parse_int_list(steps), images, guidance, repeats, head_steps, common)

if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter
