"""EDM2 training speed: images per second and peak memory of the training step (EDM2 loss,
backward, Adam, forced weight normalisation), in one process on the same network. The baseline
is one round of `--batch` images; the figure compared with it is the same batch accumulated over
rounds of `--batch-gpu` images (what `--batch-gpu` costs). Prints one JSON line per figure with
medians over the repeats. On CUDA it also reports the model FLOP utilisation (MFU): training
FLOPs (3x the forward pass, counted by torch's FLOP counter) per second over `--peak-tflops`.

    python -m benchmarks.bench_train                              # CPU: edm2-digits-sized net, 8x8x3
    python -m benchmarks.bench_train --preset edm2-img512-xs --resolution 64 --channels 4 \\
        --batch 64 --batch-gpu 32 --peak-tflops 989             # GPU: H100 dense fp16 peak
"""

import json
import time

import click
import numpy as np
import psutil
import torch

from torch_utils import util
from training import presets

def build(preset, resolution, channels, label_dim, device):
    family = util.EasyDict(presets.family_kwargs(presets.resolve(preset)))
    torch.manual_seed(0)
    net = util.construct_class_by_name(img_resolution=resolution, img_channels=channels, label_dim=label_dim,
        **family.network_kwargs).train().requires_grad_(True).to(device)
    loss_fn = util.construct_class_by_name(**family.loss_kwargs)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4, betas=(0.9, 0.99), eps=1e-8)
    return net, loss_fn, optimizer

def training_step(net, loss_fn, optimizer, images, labels, batch_gpu):
    optimizer.zero_grad(set_to_none=True)
    for start in range(0, len(images), batch_gpu):
        loss = loss_fn(net=net, images=images[start : start + batch_gpu], labels=labels[start : start + batch_gpu])
        loss.sum().mul(1 / len(images)).backward()
    optimizer.step()

def time_steps(net, loss_fn, optimizer, images, labels, batch_gpu, repeats, device):
    training_step(net, loss_fn, optimizer, images, labels, batch_gpu) # Warm-up.
    if device.type == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        training_step(net, loss_fn, optimizer, images, labels, batch_gpu)
        if device.type == 'cuda':
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if device.type == 'cuda' else psutil.Process().memory_info().rss
    return float(np.median(seconds)), peak / 2**30

def forward_flops_per_image(net, resolution, channels, label_dim, device):
    from torch.utils.flop_counter import FlopCounterMode
    x = torch.randn(1, channels, resolution, resolution, device=device)
    labels = torch.zeros(1, label_dim, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x, torch.ones(1, device=device), labels)
    return counter.get_total_flops()

@click.command()
@click.option('--preset', default='edm2-digits', show_default=True, help='EDM2 preset whose architecture is timed')
@click.option('--resolution', default=8, show_default=True, type=int)
@click.option('--channels', default=3, show_default=True, type=int)
@click.option('--label-dim', default=10, show_default=True, type=int)
@click.option('--batch', default=64, show_default=True, type=int, help='Images per optimiser step')
@click.option('--batch-gpu', default=16, show_default=True, type=int, help='Images per round in the accumulated variant')
@click.option('--repeats', default=5, show_default=True, type=int)
@click.option('--peak-tflops', default=None, type=float, help='Accelerator peak for MFU (e.g. 989 for H100 fp16 dense)')
def main(preset, resolution, channels, label_dim, batch, batch_gpu, repeats, peak_tflops):
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    net, loss_fn, optimizer = build(preset, resolution, channels, label_dim, device)
    generator = torch.Generator(device).manual_seed(0)
    images = torch.randn([batch, channels, resolution, resolution], generator=generator, device=device) * 0.5
    labels = torch.nn.functional.one_hot(torch.randint(label_dim, [batch], generator=generator, device=device), label_dim).float()
    common = dict(preset=preset, shape=[channels, resolution, resolution], batch=batch, device=str(device),
        device_name=torch.cuda.get_device_name() if device.type == 'cuda' else f'{torch.get_num_threads()} CPU threads')

    results = {}
    for name, rounds_of in [('one_round', batch), ('accumulated', batch_gpu)]:
        seconds, peak_gib = time_steps(net, loss_fn, optimizer, images, labels, rounds_of, repeats, device)
        results[name] = seconds
        figure = dict(common, name=f'train_{name}', batch_gpu=rounds_of, seconds_per_step_median=seconds,
            images_per_second=batch / seconds, peak_memory_gib=peak_gib,
            peak_memory_kind='cuda max allocated' if device.type == 'cuda' else 'process RSS')
        if device.type == 'cuda' and peak_tflops:
            flops = 3 * forward_flops_per_image(net, resolution, channels, label_dim, device)
            figure.update(train_gflops_per_image=flops / 1e9, mfu=flops * batch / seconds / (peak_tflops * 1e12))
        print(json.dumps(figure))
    print(json.dumps(dict(common, name='accumulated_vs_one_round', batch_gpu=batch_gpu,
        speed_ratio=results['one_round'] / results['accumulated'])))

if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter
