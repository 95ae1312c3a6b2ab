"""Throughput of `dataset_tool.py convert`, 1 worker vs all cores, in one process.

Two workloads: the built-in digits upscaled to 64x64 (tiny decode, so it measures the pipeline's
overhead), and a generated folder of 320x240 JPEGs center-cropped to 64x64 (decode and resize
dominate, as with real photo collections). Prints one JSON line per measurement (median over
--repeats, the two settings alternating run by run; cpu_s = CPU seconds of the process and its
workers) and one per speed-up ratio. Next to the ratio: pure_cpu_ratio, the speed-up of plain
CPU work through the same pool measured right after, and the 1-minute load average; on a shared
machine both bound what convert can reach.

    python -m benchmarks.bench_convert [--images 2000] [--repeats 3]
"""

import contextlib
import io
import json
import os
import resource
import statistics
import tempfile
import time
import zipfile
import click
import numpy as np
import PIL.Image

os.environ['TQDM_DISABLE'] = '1' # Read when tqdm is imported.
import dataset_tool

#----------------------------------------------------------------------------

def make_jpeg_folder(folder, num_images, seed=0):
    """Smooth random photo-like images (upsampled noise), in 10 class folders."""
    rnd = np.random.RandomState(seed)
    for idx in range(num_images):
        small = PIL.Image.fromarray(rnd.randint(0, 256, [12, 16, 3], dtype=np.uint8))
        image = small.resize((320, 240), PIL.Image.Resampling.BICUBIC)
        os.makedirs(os.path.join(folder, f'class{idx % 10}'), exist_ok=True)
        image.save(os.path.join(folder, f'class{idx % 10}', f'{idx:05d}.jpg'), quality=90)

def spin(_item, n=2_000_000):
    return sum(range(n))

def parallel_ceiling(workers, tasks=16):
    """Speed-up of pure CPU work through the same process pool: what the machine's free cores
    allow right now, the bound for the convert ratio."""
    wall = {}
    for w in [1, workers]:
        start = time.perf_counter()
        list(dataset_tool.map_ordered(spin, list(range(tasks)), w))
        wall[w] = time.perf_counter() - start
    return wall[1] / wall[workers]

def cpu_seconds():
    return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))

def time_convert(args, workers, tmp):
    """One run of convert: (images written, wall seconds, CPU seconds of this process and its workers)."""
    dest = os.path.join(tmp, f'out-{workers}.zip')
    cpu_start, start = cpu_seconds(), time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()): # Only JSON lines on stdout.
        dataset_tool.cmdline.main(['convert', *args, f'--dest={dest}', f'--workers={workers}'], standalone_mode=False)
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    with zipfile.ZipFile(dest) as zf:
        num_images = len(zf.namelist()) - 1
    os.remove(dest)
    return num_images, wall, cpu

@click.command()
@click.option('--images',  help='JPEGs to generate', type=click.IntRange(min=1), default=2000, show_default=True)
@click.option('--repeats', help='Timed runs per setting', type=click.IntRange(min=1), default=3, show_default=True)
@click.option('--workers', help='The parallel setting  [default: all cores]', type=click.IntRange(min=2), default=max(2, dataset_tool.default_workers()))
def main(images, repeats, workers):
    with tempfile.TemporaryDirectory() as tmp:
        make_jpeg_folder(os.path.join(tmp, 'jpegs'), images)
        workloads = {
            'builtin:digits@64x64': ['--source=builtin:digits', '--resolution=64x64'],
            f'{images} JPEGs 320x240 -> center-crop 64x64': [f'--source={os.path.join(tmp, "jpegs")}', '--transform=center-crop', '--resolution=64x64'],
        }
        for name, args in workloads.items():
            runs = {1: [], workers: []}
            for _ in range(repeats): # Alternate the settings, so that both see the same background load.
                for w in runs:
                    runs[w].append(time_convert(args, w, tmp))
            rates = {w: statistics.median(n / wall for n, wall, _ in results) for w, results in runs.items()}
            for w, results in runs.items():
                print(json.dumps(dict(figure='convert_images_per_s', workload=name, workers=w, images=results[0][0],
                    images_per_s=round(rates[w], 1), cpu_s=round(statistics.median(cpu for _, _, cpu in results), 2),
                    repeats=repeats)), flush=True)
            print(json.dumps(dict(figure='convert_speedup', workload=name, workers=workers, baseline_workers=1,
                ratio=round(rates[workers] / rates[1], 3), pure_cpu_ratio=round(parallel_ceiling(workers), 3),
                load_avg_1min=round(os.getloadavg()[0], 2))), flush=True)

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()

#----------------------------------------------------------------------------
