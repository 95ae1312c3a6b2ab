"""Throughput of `dataset_tool.py convert`, 1 worker vs all cores, in one process.

Two workloads: the built-in digits upscaled to 64x64 (tiny decode, so it measures the pipeline's
overhead), and a generated folder of 320x240 JPEGs center-cropped to 64x64 (decode and resize
dominate, as with real photo collections). Prints one JSON line per measurement (median over
--repeats) and one per speed-up ratio.

    python benchmarks/bench_convert.py [--images 2000] [--repeats 3]
"""

import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
import click
import numpy as np
import PIL.Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ['TQDM_DISABLE'] = '1' # Read when tqdm is imported.
import dataset_tool

#----------------------------------------------------------------------------

def make_jpeg_folder(folder, num_images, seed=0):
    """Smooth random photos-like images (upsampled noise), in 10 class folders."""
    rnd = np.random.RandomState(seed)
    for idx in range(num_images):
        small = PIL.Image.fromarray(rnd.randint(0, 256, [12, 16, 3], dtype=np.uint8))
        image = small.resize((320, 240), PIL.Image.Resampling.BICUBIC)
        os.makedirs(os.path.join(folder, f'class{idx % 10}'), exist_ok=True)
        image.save(os.path.join(folder, f'class{idx % 10}', f'{idx:05d}.jpg'), quality=90)

def time_convert(args, workers, repeats, tmp):
    """Median images/s of convert with the given arguments."""
    rates = []
    for rep in range(repeats):
        dest = os.path.join(tmp, f'out-{workers}-{rep}.zip')
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()): # Only JSON lines on stdout.
            dataset_tool.cmdline.main(['convert', *args, f'--dest={dest}', f'--workers={workers}'], standalone_mode=False)
        elapsed = time.perf_counter() - start
        with dataset_tool.zipfile.ZipFile(dest) as zf:
            num_images = len(zf.namelist()) - 1
        os.remove(dest)
        rates.append(num_images / elapsed)
    return statistics.median(rates), num_images

@click.command()
@click.option('--images',  help='JPEGs to generate', type=click.IntRange(min=1), default=2000, show_default=True)
@click.option('--repeats', help='Timed runs per setting', type=click.IntRange(min=1), default=3, show_default=True)
@click.option('--workers', help='The parallel setting  [default: all cores]', type=click.IntRange(min=2), default=dataset_tool.default_workers())
def main(images, repeats, workers):
    with tempfile.TemporaryDirectory() as tmp:
        make_jpeg_folder(os.path.join(tmp, 'jpegs'), images)
        workloads = {
            'builtin:digits@64x64': ['--source=builtin:digits', '--resolution=64x64'],
            f'{images} JPEGs 320x240 -> center-crop 64x64': [f'--source={os.path.join(tmp, "jpegs")}', '--transform=center-crop', '--resolution=64x64'],
        }
        for name, args in workloads.items():
            rates = {}
            for w in [1, workers]:
                rates[w], num_images = time_convert(args, w, repeats, tmp)
                print(json.dumps(dict(figure='convert_images_per_s', workload=name, workers=w, images=num_images,
                    images_per_s=round(rates[w], 1), repeats=repeats)), flush=True)
            print(json.dumps(dict(figure='convert_speedup', workload=name, workers=workers, baseline_workers=1,
                ratio=round(rates[workers] / rates[1], 3))), flush=True)

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()

#----------------------------------------------------------------------------
