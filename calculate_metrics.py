"""Calculate evaluation metrics: Frechet distances in the feature spaces of training/detectors.py
(FID, FD-DINOv2, the demo's FD-digits), kernel distances in the same spaces (KID, kid_dinov2,
kid_digits: unbiased, 0 in expectation for real data), the digits classification accuracy of
generated images, bits/dim of likelihood networks (ARDM), and the floor of a metric (real images
resampled to the evaluation's sizes). Reference statistics use EDM2's pickle format
({metric: {'mu', 'sigma'}}, plus 'num_images'; kernel metrics keep the features themselves);
EDM2's published reference pickles are accepted.

Statistics are float64 sums (count, sum x, sum x x^T) accumulated over batches and reduced over
ranks, so a torchrun job gives the statistics of all its images.

Examples:
    python calculate_metrics.py ref --data=datasets/img512.zip --dest=refs/img512.pkl
    python calculate_metrics.py ref --data=data.zip --class=3 --dest=refs/data-class3.pkl
    python calculate_metrics.py calc --images=out/ --ref=refs/img512.pkl --num=50000
    torchrun --standalone --nproc_per_node=8 calculate_metrics.py gen --net=snapshot.pkl \\
        --ref=refs/img512.pkl --class=3 --results=metrics.jsonl --tag="model=multi source=3"
    python calculate_metrics.py floor --data=train-class3.zip --ref=refs/class3.pkl --num=300 \\
        --metrics=fd_digits,kid_digits
    python calculate_metrics.py bpd --net=ardm.pkl --data=digits-test.zip
    python calculate_metrics.py table --results=metrics.jsonl --rows=model --cols=metric
    python calculate_metrics.py weights --check=fid,fd_dinov2
"""

import functools
import json
import os

import click
import numpy as np
import torch
import tqdm

from torch_utils import distributed as dist
from torch_utils import util
from training import detectors as detectors_lib
from training import generate
from training import metrics as metrics_lib
from training.dataset import ImageFolderDataset
from training.samplers import StackedRandomGenerator

#----------------------------------------------------------------------------
# Options shared by the commands.

FEATURE_METRICS = sorted([*detectors_lib.DETECTORS, *metrics_lib.KERNEL_METRICS]) # Compared with reference statistics.
ALL_METRICS = sorted([*FEATURE_METRICS, *detectors_lib.CLASSIFIERS])

def parse_metrics(metrics, allowed):
    names = [m.strip() for m in metrics.split(',') if m.strip()]
    if not names:
        raise ValueError('--metrics: no metric given')
    for name in names:
        if name not in allowed:
            others = ALL_METRICS
            hint = '' if name not in others else ' here (digits_acc needs generated images with labels: use gen)'
            raise ValueError(f'--metrics: unknown metric "{name}"{hint}; choose from {", ".join(allowed)}')
    return list(dict.fromkeys(names))

def parse_tags(tag):
    tags = {}
    for item in (tag or '').split():
        key, sep, value = item.partition('=')
        if not sep or not key:
            raise ValueError(f'--tag: "{item}" is not key=value')
        tags[key] = _tag_value(value)
    return tags

def _tag_value(value):
    """A tag's value as the JSON number it spells (K=5 -> 5, guidance=1.5 -> 1.5), else the string."""
    for kind in [int, float]:
        try:
            number = kind(value)
        except ValueError:
            continue
        return number if np.isfinite(number) else value # 'nan', 'inf': not JSON numbers.
    return value

def results_options(fn):
    """--results (append to this JSONL file) and --tag -> results (the path, checked) and tags
    (parsed). Goes below util.one_line_errors, so that its errors are one line too."""
    @click.option('--results', help='Append the results to this JSONL file', metavar='FILE', type=str, default=None)
    @click.option('--tag', help='Extra result fields, "key=value key2=value2"', metavar='STR', type=str, default=None)
    @functools.wraps(fn)
    def wrapper(*args, results, tag, **kwargs):
        tags = parse_tags(tag)
        if results:
            util.check_writable(results, '--results')
        return fn(*args, results=results, tags=tags, **kwargs)
    return wrapper

def detector_options(fn):
    """--inception, --dinov2-repo, --dinov2-weights, --dinov2-model -> detector_kwargs."""
    @click.option('--inception', help='Inception-v3 pickle: path, file:// or http(s) URL; a pickle runs the code it holds: '
        'use only NVIDIA\'s file or one you trust  [default: NVIDIA URL via cache]', metavar='PATH|URL')
    @click.option('--dinov2-repo', help='Local dinov2 torch.hub repository (its code runs)  [default: hub cache]', metavar='DIR')
    @click.option('--dinov2-weights', help='Local dinov2_vitl14_pretrain.pth (loaded as weights only)  [default: hub cache]', metavar='PTH')
    @click.option('--dinov2-model', help='Whole DINOv2 model file: TorchScript, or a pickled module, which runs the code it '
        'holds: use only a file you trust', metavar='FILE')
    @functools.wraps(fn)
    def wrapper(*args, inception, dinov2_repo, dinov2_weights, dinov2_model, **kwargs):
        detector_kwargs = dict(fid=dict(path=inception), fd_dinov2=dict(repo=dinov2_repo, weights=dinov2_weights, model=dinov2_model))
        return fn(*args, detector_kwargs=detector_kwargs, **kwargs)
    return wrapper

def detector_name(metric):
    """The detector (named by its Frechet metric) whose features a metric uses."""
    return metrics_lib.KERNEL_METRICS.get(metric, metric)

def load_detectors(metrics, device, detector_kwargs):
    """Detector objects for the Frechet and kernel metrics (one per feature space, shared) and
    classifiers for the accuracy metrics."""
    loaded, result = {}, {}
    for metric in metrics:
        name = detector_name(metric)
        try:
            if name not in loaded and name in detectors_lib.DETECTORS:
                loaded[name] = detectors_lib.DETECTORS[name](device=device, **detector_kwargs.get(name, {}))
            elif name not in loaded:
                loaded[name] = detectors_lib.CLASSIFIERS[name](device=device)
        except detectors_lib.DetectorUnavailable as e:
            raise FileNotFoundError(str(e)) from e
        result[metric] = loaded[name]
    return result

def load_reference(ref, metrics, detectors=None):
    """Reference statistics with every Frechet metric of `metrics` (of the detectors' sizes)."""
    stats = metrics_lib.load_reference(ref)
    feature_dims = {m: detectors[m].feature_dim for m in metrics} if detectors is not None else None
    metrics_lib.check_reference(stats, ref, metrics, feature_dims)
    return stats

#----------------------------------------------------------------------------
# Images from a dataset, split over ranks; per batch: (indices, uint8 images, one-hot labels).

class _Indexed(torch.utils.data.Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, idx):
        image, label = self.dataset[idx]
        return idx, image, label

def open_image_dataset(path, option, max_size=None, seed=0):
    try:
        dataset = ImageFolderDataset(path=path, max_size=max_size, random_seed=seed)
        image = dataset[0][0]
        dataset.check_shapes()
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f'{option} {path}: cannot read images ({e})') from e
    if image.dtype != np.uint8:
        raise ValueError(f'{option} {path}: holds {image.dtype} arrays (latents?), not uint8 images')
    return dataset

def iterate_images(dataset, indices, batch_size, workers, all_ranks_same=False):
    """This rank's share of `indices` (all of them when all_ranks_same) in batches, with a
    progress bar on rank 0."""
    mine = indices if all_ranks_same else indices[dist.get_rank()::dist.get_world_size()]
    subset = torch.utils.data.Subset(_Indexed(dataset), mine)
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, num_workers=workers, shuffle=False)
    with tqdm.tqdm(total=len(mine), unit='img', disable=(dist.get_rank() != 0), leave=False) as progress:
        for idx, images, labels in loader:
            yield idx, images, labels
            progress.update(len(idx))

def class_indices(dataset, class_spec, path):
    """(class index, indices of its images) for --class as written (an index or a source, see
    generate.resolve_class) in a labelled dataset."""
    class_idx = generate.resolve_class(class_spec, dataset.label_dim, dataset.sources, what=f'dataset {path}')
    if class_idx == 'all':
        raise ValueError('--class all: statistics are of one class, or of the whole dataset without --class')
    labels = np.array([np.argmax(dataset.get_label(i)) for i in range(len(dataset))])
    return class_idx, np.flatnonzero(labels == class_idx)

def report(records, results_path, tags):
    """Print one JSON line per result (rank 0) and append them to results_path. A tag may not
    replace a field of the result itself."""
    clash = sorted(set(tags) & set().union(*records))
    if clash:
        raise ValueError(f'--tag {", ".join(clash)}: a field the result already has; choose another name')
    if dist.get_rank() != 0:
        return
    lines = [json.dumps(dict(record, **tags)) for record in records]
    for line in lines:
        print(line)
    if results_path:
        os.makedirs(os.path.dirname(os.path.abspath(results_path)), exist_ok=True)
        with open(results_path, 'a+b') as f: # Writes go to the end, wherever the file position is.
            if f.seek(0, os.SEEK_END) > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b'\n': # The last line was left unfinished (by hand, or by a killed writer).
                    f.write(b'\n')
            f.write(''.join(line + '\n' for line in lines).encode())

#----------------------------------------------------------------------------

@click.group()
def cmdline():
    """Calculate evaluation metrics (FID, FD-DINOv2, FD-digits, digits accuracy, bits/dim)."""

#----------------------------------------------------------------------------

@cmdline.command()
@click.option('--data', help='Dataset of images: ZIP or folder', metavar='ZIP|DIR', type=str, required=True)
@click.option('--dest', help='Destination statistics: .pkl (EDM2 format) or .npz (no pickle)', metavar='PKL|NPZ', type=str, required=True)
@click.option('--metrics', help='Comma-separated metrics', metavar='LIST', type=str, default='fid,fd_dinov2', show_default=True)
@click.option('--class', 'class_spec', help='Only the images of this class: index 0..K-1, or a source: id:N (original class id), name:NAME or NAME', metavar='INT|id:N|NAME', type=str, default=None)
@click.option('--batch', help='Images per batch per process', metavar='INT', type=click.IntRange(min=1), default=64, show_default=True)
@click.option('--workers', help='DataLoader worker processes', metavar='INT', type=click.IntRange(min=0), default=2, show_default=True)
@click.option('--overwrite', help='Replace an existing --dest', is_flag=True)
@detector_options
@util.one_line_errors
def ref(data, dest, metrics, class_spec, batch, workers, overwrite, detector_kwargs):
    """Reference statistics of a dataset (all of it, or one class)."""
    dist.init()
    metrics = parse_metrics(metrics, FEATURE_METRICS)
    util.check_new_output(dest, '--dest', overwrite=overwrite)
    dataset = open_image_dataset(data, '--data')
    class_idx, indices = (None, np.arange(len(dataset))) if class_spec is None else class_indices(dataset, class_spec, data)
    if len(indices) < 2:
        raise ValueError(f'--data {data}: {len(indices)} image(s){"" if class_idx is None else f" of class {class_idx}"}, '
            'need at least 2 for a covariance')
    device = dist.get_device()
    evaluation = metrics_lib.Evaluation(load_detectors(metrics, device, detector_kwargs), device)
    what = f'class {class_idx} of {data}' if class_idx is not None else data
    dist.print0(f'Reference statistics of {len(indices)} images ({what}): {", ".join(metrics)}')
    for _, images, _ in iterate_images(dataset, indices, batch, workers):
        evaluation.update(images.to(device))
    stats = dict(evaluation.all_reduce().statistics(), num_images=int(len(indices)))
    if dist.get_rank() == 0:
        metrics_lib.save_reference(stats, dest)
        print(f'Saved {dest}')
    dist.barrier()

#----------------------------------------------------------------------------

@cmdline.command()
@click.option('--images', help='Generated images: ZIP or folder', metavar='ZIP|DIR', type=str, required=True)
@click.option('--ref', 'ref_path', help='Reference statistics: pickle, .npz or URL', metavar='PKL|NPZ|URL', type=str, required=True)
@click.option('--metrics', help='Comma-separated metrics', metavar='LIST', type=str, default='fid,fd_dinov2', show_default=True)
@click.option('--num', help='Number of images (a seeded random subset when there are more)', metavar='INT', type=click.IntRange(min=2), default=50000, show_default=True)
@click.option('--seed', help='Seed of the subset', metavar='INT', type=int, default=0, show_default=True)
@click.option('--batch', help='Images per batch per process', metavar='INT', type=click.IntRange(min=1), default=64, show_default=True)
@click.option('--workers', help='DataLoader worker processes', metavar='INT', type=click.IntRange(min=0), default=2, show_default=True)
@detector_options
@util.one_line_errors
@results_options
def calc(images, ref_path, metrics, num, seed, batch, workers, results, tags, detector_kwargs):
    """Metrics of a set of images against reference statistics."""
    dist.init()
    metrics = parse_metrics(metrics, FEATURE_METRICS)
    load_reference(ref_path, metrics)
    dataset = open_image_dataset(images, '--images', max_size=num, seed=seed)
    if len(dataset) < num:
        raise ValueError(f'--images {images}: found {len(dataset)} images, but --num {num} requested')
    device = dist.get_device()
    detectors = load_detectors(metrics, device, detector_kwargs)
    ref_stats = load_reference(ref_path, metrics, detectors)
    dist.print0(f'Calculating {", ".join(metrics)} of {num} images from {images} against {ref_path}')
    evaluation = metrics_lib.Evaluation(detectors, device)
    for _, x, _ in iterate_images(dataset, np.arange(len(dataset)), batch, workers):
        evaluation.update(x.to(device))
    values = evaluation.all_reduce().results(ref_stats)
    report([dict(metric=m, value=v, images=images, ref=ref_path, num=num, seed=seed) for m, v in values.items()], results, tags)

#----------------------------------------------------------------------------

@cmdline.command()
@click.option('--data', help='Real images: ZIP or folder', metavar='ZIP|DIR', type=str, required=True)
@click.option('--ref', 'ref_path', help='Reference statistics: pickle, .npz or URL', metavar='PKL|NPZ|URL', type=str, required=True)
@click.option('--metrics', help='Comma-separated metrics', metavar='LIST', type=str, default='fid,fd_dinov2', show_default=True)
@click.option('--class', 'class_spec', help='Only the images of this class: index 0..K-1, or a source: id:N, name:NAME or NAME', metavar='INT|id:N|NAME', type=str, default=None)
@click.option('--num', help='Images per draw (drawn with replacement): the sample size of the evaluation it is the floor of', metavar='INT', type=click.IntRange(min=2), required=True)
@click.option('--draws', help='Number of draws', metavar='INT', type=click.IntRange(min=1), default=20, show_default=True)
@click.option('--seed', help='Seed of the draws', metavar='INT', type=click.IntRange(min=0), default=0, show_default=True)
@click.option('--batch', help='Images per batch per process', metavar='INT', type=click.IntRange(min=1), default=64, show_default=True)
@click.option('--workers', help='DataLoader worker processes', metavar='INT', type=click.IntRange(min=0), default=2, show_default=True)
@detector_options
@util.one_line_errors
@results_options
def floor(data, ref_path, metrics, class_spec, num, draws, seed, batch, workers, results, tags, detector_kwargs):
    """The floor of a metric: real images scored as if a model had generated them. Each draw
    takes --num of the real images with replacement (the sample size of the evaluation) and
    scores them against --ref; prints the mean over the draws (value) and their standard
    deviation (std). Give real images that the reference does not hold (e.g. the training
    images of the class, when the reference holds the held-out ones): a model whose score does
    not clearly exceed this cannot be told from real data at these sizes."""
    dist.init()
    metrics = parse_metrics(metrics, FEATURE_METRICS)
    load_reference(ref_path, metrics)
    dataset = open_image_dataset(data, '--data')
    class_idx, indices = (None, np.arange(len(dataset))) if class_spec is None else class_indices(dataset, class_spec, data)
    if len(indices) < 2:
        raise ValueError(f'--data {data}: {len(indices)} image(s){"" if class_idx is None else f" of class {class_idx}"}, need at least 2')
    device = dist.get_device()
    detectors = load_detectors(metrics, device, detector_kwargs)
    ref_stats = load_reference(ref_path, metrics, detectors)
    dist.print0(f'Floor of {", ".join(metrics)}: {draws} draws of {num} of the {len(indices)} images of {data} against {ref_path}')
    evaluation = metrics_lib.Evaluation(detectors, device, keep_features=True)
    for _, images, _ in iterate_images(dataset, indices, batch, workers):
        evaluation.update(images.to(device))
    real = evaluation.all_reduce().features()
    values = metrics_lib.resampled_values(real, ref_stats, num=num, draws=draws, seed=seed, device=device)
    base = dict(data=data, ref=ref_path, num=num, draws=draws, seed=seed, images=int(len(indices)), **({} if class_idx is None else {'class': class_idx}))
    report([dict(metric=m, value=float(np.mean(v)), std=float(np.std(v, ddof=1)) if draws > 1 else 0.0, **base) for m, v in values.items()], results, tags)

#----------------------------------------------------------------------------

@cmdline.command()
@click.option('--net', help='Network snapshot (or a generation preset name)  [default: the preset\'s]', metavar='PKL|URL', type=str, default=None)
@click.option('--preset', help='Generation preset (generate_images.py --preset): its network, guiding network and guidance', metavar='NAME', type=str, default=None)
@click.option('--ref', 'ref_path', help='Reference statistics (for the Frechet metrics)', metavar='PKL|NPZ|URL', type=str, default=None)
@click.option('--metrics', help='Comma-separated metrics', metavar='LIST', type=str, default='fid,fd_dinov2', show_default=True)
@click.option('--num', help='Number of generated images', metavar='INT', type=click.IntRange(min=2), default=50000, show_default=True)
@click.option('--seed', help='First seed (seeds seed..seed+num-1)', metavar='INT', type=click.IntRange(min=0), default=0, show_default=True)
@click.option('--class', 'class_spec', help='Generate only this class: index 0..K-1, or a source: id:N (original class id), name:NAME or NAME  [default: random classes]', metavar='INT|id:N|NAME', type=str, default=None)
@click.option('--per-class', help='Score every class separately (--num images each); --ref may name a file per class with {source} (its original id) or {class} (its index)', is_flag=True)
@click.option('--guidance', help='Guidance strength  [default: the preset\'s, or 1 = none]', metavar='FLOAT', type=float, default=None)
@click.option('--gnet', help='Guiding network snapshot  [default: the preset\'s, or none]', metavar='PKL|URL', type=str, default=None)
@click.option('--steps', help='Sampling steps  [default: the family\'s own]', metavar='INT', type=int, default=None)
@click.option('--opt', 'opt_texts', help='Sampling option of the network\'s family, e.g. temperature=0.5 (generate_images.py --opt); repeatable', metavar='KEY=VALUE', multiple=True)
@click.option('--batch', help='Images per batch per process', metavar='INT', type=click.IntRange(min=1), default=32, show_default=True)
@detector_options
@util.one_line_errors
@results_options
def gen(net, preset, ref_path, metrics, num, seed, class_spec, per_class, guidance, gnet, steps, opt_texts, batch, results, tags, detector_kwargs):
    """Generate images in memory and calculate their metrics: of random classes, of one class,
    or of every class separately (--per-class, e.g. each source of a multi-source model against
    that source's reference). Accuracy metrics compare the predicted class with the class's
    original id when the snapshot records its sources (dataset.json), else with its index. A
    generation preset (--preset, or its name as --net) brings its guiding network and guidance,
    as in generate_images.py. The results record the sampling options (--steps, --opt)."""
    spec = generate.resolve_generation(net, preset, gnet, guidance, opt_texts, dict(steps=steps))
    dist.init()
    metrics = parse_metrics(metrics, ALL_METRICS)
    ref_metrics = [m for m in metrics if m in FEATURE_METRICS]
    if ref_metrics and ref_path is None:
        raise ValueError(f'--ref: needed for {", ".join(ref_metrics)}')
    if per_class and class_spec is not None:
        raise ValueError('--per-class scores every class; it does not go with --class')
    generate.check_seed_range(seed, num)
    device = dist.get_device()
    loaded = generate.load(spec, device=device, verbose=(dist.get_rank() == 0))
    snapshot = loaded.snapshot
    classes = range(snapshot.label_dim) if per_class else [generate.resolve_class(class_spec, snapshot.label_dim, snapshot.sources)]
    if per_class and snapshot.label_dim == 0:
        raise ValueError('--per-class: the network is unconditional')
    ids = [s['original_id'] for s in sorted(snapshot.sources, key=lambda s: s['label'])] if snapshot.sources else None
    refs = {c: class_reference(ref_path, c, ids) for c in classes} if ref_metrics else {}
    for ref in dict.fromkeys(refs.values()):
        load_reference(ref, ref_metrics) # Every file readable before any work.
    for metric in metrics:
        if metric in detectors_lib.CLASSIFIERS:
            detectors_lib.CLASSIFIERS[metric].check_network(snapshot.label_dim, snapshot.sources, spec.net)
    detectors = load_detectors(metrics, device, detector_kwargs)

    records = []
    for class_idx in classes:
        dist.print0(f'Generating {num} images of {"random classes" if class_idx is None else f"class {class_idx}"} '
            f'from {spec.net} and calculating {", ".join(metrics)}')
        evaluation = metrics_lib.Evaluation(detectors, device)
        for batch_images in generate.generate_images(snapshot.net, snapshot.encoder, seeds=range(seed, seed + num), class_idx=class_idx,
                batch_size=batch, device=device, gnet=loaded.guide, guidance=spec.guidance, verbose=(dist.get_rank() == 0), **loaded.sampler_kwargs):
            labels = batch_images.labels
            evaluation.update(batch_images.images.to(device), labels if ids is None or labels is None else torch.as_tensor(ids)[labels.cpu()])
        ref_stats = load_reference(refs[class_idx], ref_metrics, detectors) if ref_metrics else None
        base = dict(net=spec.net, **({'preset': spec.preset} if spec.preset else {}), num=num, seed=seed, **{'class': class_idx}, guidance=spec.guidance)
        base.update(dict(source=ids[class_idx]) if ids is not None and isinstance(class_idx, int) else {})
        base.update(loaded.sampler_kwargs) # The sampling options given (--steps, --opt).
        base.update(dict(ref=refs[class_idx]) if ref_metrics else {})
        records += [dict(metric=m, value=v, **base) for m, v in evaluation.all_reduce().results(ref_stats).items()]
    report(records, results, tags)

def class_reference(ref_path, class_idx, ids):
    """--ref for one class: {source} becomes the class's original id (its index without recorded
    sources), {class} its index."""
    source = ids[class_idx] if ids is not None and isinstance(class_idx, int) else class_idx
    return ref_path.replace('{source}', str(source)).replace('{class}', str(class_idx))

#----------------------------------------------------------------------------

@cmdline.command()
@click.option('--net', help='Network snapshot with a likelihood (ARDM)', metavar='PKL|URL', type=str, required=True)
@click.option('--data', help='Dataset of images: ZIP or folder', metavar='ZIP|DIR', type=str, required=True)
@click.option('--num', help='Number of images (a seeded random subset)  [default: all]', metavar='INT', type=click.IntRange(min=1), default=None)
@click.option('--seed', help='Seed of the subset', metavar='INT', type=int, default=0, show_default=True)
@click.option('--batch', help='Images per batch per process', metavar='INT', type=click.IntRange(min=1), default=64, show_default=True)
@click.option('--mode', help='Negative ELBO or exact NLL of one order', type=click.Choice(['elbo', 'exact']), default='elbo', show_default=True)
@click.option('--steps', help='Exact mode: network calls in all  [default: one per dimension]', metavar='INT', type=int, default=None)
@click.option('--policy', help='Exact mode with --steps: how the calls split the dimensions, dp or naive  [default: dp]', metavar='NAME', type=str, default=None)
@click.option('--draws', help='ELBO mode: stratified timesteps per image  [default: the network\'s]', metavar='INT', type=click.IntRange(min=1), default=None)
@click.option('--workers', help='DataLoader worker processes', metavar='INT', type=click.IntRange(min=0), default=2, show_default=True)
@util.one_line_errors
@results_options
def bpd(net, data, num, seed, batch, mode, steps, policy, draws, workers, results, tags):
    """Bits per dimension of a dataset under a likelihood network."""
    dist.init()
    if policy is not None and (mode != 'exact' or steps is None):
        raise ValueError('--policy: applies to --mode exact with --steps only')
    device = dist.get_device()
    snapshot = generate.load_snapshot(net, device=device, verbose=(dist.get_rank() == 0))
    if not callable(getattr(snapshot.net, 'bpd', None)):
        why = getattr(snapshot.net, 'no_bpd_reason', 'it defines no likelihood')
        raise ValueError(f'--net {net}: bits/dim does not apply to {type(snapshot.net).__name__}: {why}; '
            'it needs a likelihood model (an ARDM snapshot); score samples with "gen" instead')
    if steps is not None and callable(getattr(snapshot.net, 'policy', None)):
        snapshot.net.policy(steps, policy or 'dp') # The network checks the budget and the policy (the one place), before any image is read.
    dataset = open_image_dataset(data, '--data', max_size=num, seed=seed)
    if num is not None and len(dataset) < num:
        raise ValueError(f'--data {data}: found {len(dataset)} images, but --num {num} requested')
    if snapshot.label_dim and dataset.label_dim != snapshot.label_dim:
        raise ValueError(f'--data {data}: labels of {dataset.label_dim} classes, the network expects {snapshot.label_dim}')
    kwargs = dict(mode=mode, **({} if steps is None else dict(steps=steps, policy=policy or 'dp')), **({} if draws is None else dict(draws=draws)))
    # Exact mode: the network splits the timesteps over the ranks, so every rank passes every image.
    exact = mode == 'exact'
    dist.print0(f'Bits/dim ({mode}) of {len(dataset)} images from {data} under {net}')
    total = torch.zeros([2], dtype=torch.float64, device=device)
    with torch.no_grad():
        for idx, images, labels in iterate_images(dataset, np.arange(len(dataset)), batch, workers, all_ranks_same=exact):
            x = snapshot.encoder.encode(images.to(device))
            y = labels.to(device) if snapshot.label_dim else None
            rnd = StackedRandomGenerator(device, idx.tolist()) # A stream per image: batch-size independent.
            values = snapshot.net.bpd(x, y, rnd, **kwargs)
            total += torch.stack([values.to(torch.float64).sum(), torch.tensor(len(values), dtype=torch.float64, device=device)])
    if not exact:
        dist.all_reduce_sum(total)
    record = dict(metric='bpd', value=float(total[0] / total[1]), mode=mode, net=net, data=data, num=int(total[1].item()))
    if steps is not None:
        record.update(steps=steps, policy=policy or 'dp')
    report([record], results, tags)

#----------------------------------------------------------------------------

def read_results(path):
    """The records of a results JSONL file."""
    records = []
    with open(path) as f:
        for num, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f'--results {path}: line {num} is not JSON ({e.msg})') from None
    return records

def pivot_table(records, rows, cols):
    """Markdown table: one row per value of `rows`, one column per value of `cols` (per metric
    when the records hold several), or per metric when cols == 'metric'. Later records win."""
    cells, row_keys, col_keys = {}, [], []
    metrics = list(dict.fromkeys(r['metric'] for r in records if 'metric' in r))
    for r in records:
        if rows not in r or 'metric' not in r or 'value' not in r or (cols != 'metric' and cols not in r):
            continue
        row = str(r[rows])
        col = r['metric'] if cols == 'metric' else (str(r[cols]) if len(metrics) == 1 else f'{r[cols]} {r["metric"]}')
        row_keys += [row] if row not in row_keys else []
        col_keys += [col] if col not in col_keys else []
        cells[row, col] = r['value']
    fmt = lambda v: f'{v:.4g}' if isinstance(v, (int, float)) else str(v)
    lines = ['| ' + ' | '.join([rows] + col_keys) + ' |', '|' + '---|' + '---:|' * len(col_keys)]
    for row in row_keys:
        lines.append('| ' + ' | '.join([row] + [fmt(cells[row, c]) if (row, c) in cells else '-' for c in col_keys]) + ' |')
    return '\n'.join(lines) + '\n'

@cmdline.command()
@click.option('--results', help='Results JSONL file', metavar='FILE', type=str, required=True)
@click.option('--rows', help='Record key for the rows', metavar='KEY', type=str, required=True)
@click.option('--cols', help='Record key for the columns (metric: one column per metric)', metavar='KEY', type=str, default='metric', show_default=True)
@click.option('--dest', help='Also write the table to this Markdown file', metavar='FILE', type=str, default=None)
@click.option('--overwrite', help='Replace an existing --dest', is_flag=True)
@util.one_line_errors
def table(results, rows, cols, dest, overwrite):
    """Pivot a results JSONL file into a Markdown table."""
    if dest:
        util.check_new_output(dest, '--dest', overwrite=overwrite)
    records = read_results(results)
    if not any(rows in r for r in records):
        raise ValueError(f'--rows {rows}: no record in {results} has that key')
    text = pivot_table(records, rows, cols)
    print(text, end='')
    if dest:
        with util.atomic_path(dest) as tmp:
            with open(tmp, 'w') as f:
                f.write(text)

#----------------------------------------------------------------------------

@cmdline.command()
@click.option('--check', 'metrics', help='Comma-separated metrics whose detector files must be present', metavar='LIST', type=str, default='fid,fd_dinov2', show_default=True)
@detector_options
@util.one_line_errors
def weights(metrics, detector_kwargs):
    """Exit 0 when the detectors' pretrained files are on this machine, else 1 (names the files)."""
    metrics = parse_metrics(metrics, ALL_METRICS)
    missing = []
    for metric in metrics:
        if detector_name(metric) in detectors_lib.DETECTORS:
            files, hint = detectors_lib.DETECTORS[detector_name(metric)].missing_files(**detector_kwargs.get(detector_name(metric), {}))
            if files:
                missing.append(f'{metric}: missing {", ".join(files)}\n  {hint}')
    if missing:
        print('\n'.join(missing))
        raise SystemExit(1)
    print(f'Detector files present for {", ".join(metrics)}')

#----------------------------------------------------------------------------

if __name__ == '__main__':
    cmdline() # pylint: disable=no-value-for-parameter

#----------------------------------------------------------------------------
