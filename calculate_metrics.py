"""Calculate evaluation metrics: Frechet distances in the feature spaces of training/detectors.py
(FID, FD-DINOv2, the demo's FD-digits), the digits classification accuracy of generated images,
and bits/dim of likelihood networks (ARDM). Reference statistics use EDM2's pickle format
({metric: {'mu', 'sigma'}}, plus 'num_images'); EDM2's published reference pickles are accepted.

Statistics are float64 sums (count, sum x, sum x x^T) accumulated over batches and reduced over
ranks, so a torchrun job gives the statistics of all its images.

Examples:
    python calculate_metrics.py ref --data=datasets/img512.zip --dest=refs/img512.pkl
    python calculate_metrics.py ref --data=data.zip --class=3 --dest=refs/data-class3.pkl
    python calculate_metrics.py calc --images=out/ --ref=refs/img512.pkl --num=50000
    torchrun --standalone --nproc_per_node=8 calculate_metrics.py gen --net=snapshot.pkl \\
        --ref=refs/img512.pkl --class=3 --results=metrics.jsonl --tag="model=multi source=3"
    python calculate_metrics.py bpd --net=ardm.pkl --data=digits-test.zip
    python calculate_metrics.py table --results=metrics.jsonl --rows=model --cols=metric
    python calculate_metrics.py weights --check=fid,fd_dinov2
"""

import functools
import io
import json
import os
import pickle

import click
import numpy as np
import torch
import tqdm

from torch_utils import distributed as dist
from torch_utils import persistence
from torch_utils import util
from training import detectors as detectors_lib

#----------------------------------------------------------------------------
# Frechet distance between Gaussians N(mu1, sigma1) and N(mu2, sigma2):
#   |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2)).
# For any factor sigma1 = L L^T, sigma1 sigma2 is similar to the symmetric PSD matrix
# L^T sigma2 L, so the trace of its square root is the sum of the square roots of that matrix's
# eigenvalues: one symmetric eigenvalue problem instead of a general (Schur-based, complex)
# sqrtm. L is the Cholesky factor when sigma1 is positive definite (the usual case), else
# sigma1^(1/2) from its eigendecomposition (singular covariances: fewer images than features).

def frechet_distance(mu1, sigma1, mu2, sigma2):
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    sigma1, sigma2 = np.asarray(sigma1, dtype=np.float64), np.asarray(sigma2, dtype=np.float64)
    try:
        factor = np.linalg.cholesky(sigma1)
    except np.linalg.LinAlgError:
        w, v = np.linalg.eigh(sigma1)
        factor = v * np.sqrt(np.clip(w, 0, None))
    s = factor.T @ sigma2 @ factor
    eig = np.linalg.eigvalsh((s + s.T) / 2) # Symmetrize away rounding.
    trace_sqrt = np.sqrt(np.clip(eig, 0, None)).sum()
    fd = np.square(mu1 - mu2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt
    return float(max(fd, 0)) # Only rounding makes it negative.

def frechet_distance_sqrtm(mu1, sigma1, mu2, sigma2):
    """The reference formula (EDM2's): scipy.linalg.sqrtm of the product. For tests and benchmarks."""
    import scipy.linalg # pylint: disable=import-outside-toplevel
    m = np.square(np.asarray(mu1, dtype=np.float64) - mu2).sum()
    s, _ = scipy.linalg.sqrtm(np.dot(sigma1, sigma2), disp=False)
    return float(np.real(m + np.trace(sigma1 + sigma2 - s * 2)))

#----------------------------------------------------------------------------
# Feature statistics as float64 sums, reduced over ranks.

class FeatureStats:
    def __init__(self, feature_dim, device=torch.device('cpu')):
        self.count = torch.zeros([], dtype=torch.float64, device=device)
        self.sum = torch.zeros([feature_dim], dtype=torch.float64, device=device)
        self.sum_outer = torch.zeros([feature_dim, feature_dim], dtype=torch.float64, device=device)

    def update(self, features):
        x = features.to(self.sum.device, torch.float64).reshape(features.shape[0], -1)
        assert x.shape[1] == self.sum.shape[0], f'features have {x.shape[1]} dimensions, expected {self.sum.shape[0]}'
        self.count += x.shape[0]
        self.sum += x.sum(0)
        self.sum_outer += x.T @ x

    def all_reduce(self):
        for tensor in [self.count, self.sum, self.sum_outer]:
            dist.all_reduce_sum(tensor)
        return self

    def mu_sigma(self):
        """Mean and unbiased (n - 1) covariance, float64 numpy, as EDM2 stores them."""
        n = int(self.count.item())
        if n < 2:
            raise click.ClickException(f'Need at least 2 images for a covariance, got {n}')
        mu = self.sum / n
        sigma = (self.sum_outer - n * torch.outer(mu, mu)) / (n - 1)
        return dict(mu=mu.cpu().numpy(), sigma=sigma.cpu().numpy())

#----------------------------------------------------------------------------
# Options shared by the commands.

def parse_metrics(metrics, allowed):
    names = [m.strip() for m in metrics.split(',') if m.strip()]
    if not names:
        raise click.BadParameter('no metric given', param_hint='--metrics')
    for name in names:
        if name not in allowed:
            others = sorted(set(detectors_lib.DETECTORS) | set(detectors_lib.CLASSIFIERS))
            hint = '' if name not in others else ' here (digits_acc needs generated images with labels: use gen)'
            raise click.BadParameter(f'unknown metric "{name}"{hint}; choose from {", ".join(allowed)}', param_hint='--metrics')
    return list(dict.fromkeys(names))

def parse_tags(tag):
    tags = {}
    for item in (tag or '').split():
        key, sep, value = item.partition('=')
        if not sep or not key:
            raise click.BadParameter(f'"{item}" is not key=value', param_hint='--tag')
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

def detector_options(fn):
    """--inception, --dinov2-repo, --dinov2-weights, --dinov2-model -> detector_kwargs."""
    @click.option('--inception', help='Inception-v3 pickle: path, file:// or http(s) URL  [default: NVIDIA URL via cache]', metavar='PATH|URL')
    @click.option('--dinov2-repo', help='Local dinov2 torch.hub repository  [default: hub cache]', metavar='DIR')
    @click.option('--dinov2-weights', help='Local dinov2_vitl14_pretrain.pth  [default: hub cache]', metavar='PTH')
    @click.option('--dinov2-model', help='Whole DINOv2 model file (TorchScript or pickled module)', metavar='FILE')
    @functools.wraps(fn)
    def wrapper(*args, inception, dinov2_repo, dinov2_weights, dinov2_model, **kwargs):
        detector_kwargs = dict(fid=dict(path=inception), fd_dinov2=dict(repo=dinov2_repo, weights=dinov2_weights, model=dinov2_model))
        return fn(*args, detector_kwargs=detector_kwargs, **kwargs)
    return wrapper

def load_detectors(metrics, device, detector_kwargs):
    """Detector objects for the Frechet metrics and classifiers for the accuracy metrics."""
    result = {}
    for metric in metrics:
        try:
            if metric in detectors_lib.DETECTORS:
                result[metric] = detectors_lib.DETECTORS[metric](device=device, **detector_kwargs.get(metric, {}))
            else:
                result[metric] = detectors_lib.CLASSIFIERS[metric](device=device)
        except detectors_lib.DetectorUnavailable as e:
            raise click.ClickException(str(e))
    return result

#----------------------------------------------------------------------------
# Reference statistics.

def load_reference(ref):
    """EDM2-format pickle (path or URL) or an .npz with mu/sigma (taken as FID statistics)."""
    try:
        with util.open_url(ref, verbose=(dist.get_rank() == 0)) as f:
            data = f.read()
    except OSError as e:
        raise click.ClickException(f'Cannot read reference statistics {ref}: {e}')
    try:
        if data[:2] == b'PK': # .npz (a zip of .npy)
            with np.load(io.BytesIO(data)) as npz:
                stats = dict(fid=dict(mu=npz['mu'], sigma=npz['sigma']))
        else:
            stats = persistence.loads_pickle(data) # Maps dnnlib names, should an EDM2 file hold any.
    except Exception as e: # pylint: disable=broad-except
        raise click.ClickException(f'Cannot read reference statistics {ref}: not an EDM2 reference pickle or mu/sigma .npz ({type(e).__name__}: {e})')
    if not isinstance(stats, dict):
        raise click.ClickException(f'Cannot read reference statistics {ref}: expected a dict of metrics, got {type(stats).__name__}')
    return stats

def check_reference(stats, ref, metrics, feature_dims=None):
    """The reference has every requested Frechet metric, with mu [F] and sigma [F, F]."""
    for metric in metrics:
        entry = stats.get(metric)
        if not isinstance(entry, dict) or 'mu' not in entry or 'sigma' not in entry:
            present = [k for k, v in stats.items() if isinstance(v, dict) and 'mu' in v]
            raise click.ClickException(f'Reference {ref} has no "{metric}" statistics (it has: {", ".join(present) or "none"}); '
                f'compute them with: calculate_metrics.py ref --metrics {metric}')
        mu, sigma = np.asarray(entry['mu']), np.asarray(entry['sigma'])
        dim = mu.shape[0] if mu.ndim == 1 else None
        if dim is None or sigma.shape != (dim, dim):
            raise click.ClickException(f'Reference {ref}: "{metric}" has mu {list(mu.shape)} and sigma {list(sigma.shape)}, not [F] and [F, F]')
        if feature_dims is not None and dim != feature_dims[metric]:
            raise click.ClickException(f'Reference {ref}: "{metric}" statistics have {dim} features, '
                f'but the {metric} detector gives {feature_dims[metric]}')

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
    from training.dataset import ImageFolderDataset # pylint: disable=import-outside-toplevel
    try:
        dataset = ImageFolderDataset(path=path, max_size=max_size, random_seed=seed)
        image = dataset[0][0]
    except (OSError, ValueError, KeyError) as e:
        raise click.ClickException(f'{option} {path}: cannot read images ({e})')
    if image.dtype != np.uint8:
        raise click.ClickException(f'{option} {path}: holds {image.dtype} arrays (latents?), not uint8 images')
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

def compute_stats(batches, detectors, device):
    """{metric: FeatureStats} over the image batches of every rank (reduced)."""
    stats = {metric: FeatureStats(det.feature_dim, device) for metric, det in detectors.items()}
    with torch.no_grad():
        for images in batches:
            images = images.to(device)
            for metric, det in detectors.items():
                stats[metric].update(det(images))
    return {metric: s.all_reduce() for metric, s in stats.items()}

def frechet_results(stats, ref_stats, metrics):
    results = {}
    for metric in metrics:
        ours = stats[metric].mu_sigma()
        results[metric] = frechet_distance(ours['mu'], ours['sigma'], ref_stats[metric]['mu'], ref_stats[metric]['sigma'])
    return results

def report(records, results_path):
    """Print one JSON line per result (rank 0) and append them to results_path."""
    if dist.get_rank() != 0:
        return
    lines = [json.dumps(record) for record in records]
    for line in lines:
        print(line)
    if results_path:
        os.makedirs(os.path.dirname(os.path.abspath(results_path)), exist_ok=True)
        with open(results_path, 'a') as f:
            f.write(''.join(line + '\n' for line in lines))

def class_indices(dataset, class_idx, path):
    """Indices of the images of class `class_idx` in a labelled dataset."""
    if not dataset.has_labels:
        raise click.ClickException(f'--class {class_idx}: dataset {path} has no labels')
    labels = np.array([np.argmax(dataset.get_label(i)) for i in range(len(dataset))])
    if not 0 <= class_idx < dataset.label_dim:
        raise click.ClickException(f'--class {class_idx}: dataset {path} has classes 0..{dataset.label_dim - 1}')
    indices = np.flatnonzero(labels == class_idx)
    if len(indices) < 2:
        raise click.ClickException(f'--class {class_idx}: dataset {path} has {len(indices)} images of that class, need at least 2')
    return indices

#----------------------------------------------------------------------------

@click.group()
def cmdline():
    """Calculate evaluation metrics (FID, FD-DINOv2, FD-digits, digits accuracy, bits/dim)."""

#----------------------------------------------------------------------------

@cmdline.command()
@click.option('--data', help='Dataset of images: ZIP or folder', metavar='ZIP|DIR', type=str, required=True)
@click.option('--dest', help='Destination reference pickle', metavar='PKL', type=str, required=True)
@click.option('--metrics', help='Comma-separated metrics', metavar='LIST', type=str, default='fid,fd_dinov2', show_default=True)
@click.option('--class', 'class_idx', help='Only the images of this class (source)', metavar='INT', type=click.IntRange(min=0), default=None)
@click.option('--batch', help='Images per batch per process', metavar='INT', type=click.IntRange(min=1), default=64, show_default=True)
@click.option('--workers', help='DataLoader worker processes', metavar='INT', type=click.IntRange(min=0), default=2, show_default=True)
@detector_options
def ref(data, dest, metrics, class_idx, batch, workers, detector_kwargs):
    """Reference statistics of a dataset (all of it, or one class)."""
    dist.init()
    metrics = parse_metrics(metrics, detectors_lib.DETECTORS)
    dataset = open_image_dataset(data, '--data')
    indices = np.arange(len(dataset)) if class_idx is None else class_indices(dataset, class_idx, data)
    if len(indices) < 2:
        raise click.ClickException(f'--data {data}: {len(indices)} image(s), need at least 2 for a covariance')
    device = dist.get_device()
    detectors = load_detectors(metrics, device, detector_kwargs)
    what = f'class {class_idx} of {data}' if class_idx is not None else data
    dist.print0(f'Reference statistics of {len(indices)} images ({what}): {", ".join(metrics)}')
    batches = (images for _, images, _ in iterate_images(dataset, indices, batch, workers))
    stats = compute_stats(batches, detectors, device)
    result = {metric: s.mu_sigma() for metric, s in stats.items()}
    result['num_images'] = int(len(indices))
    if dist.get_rank() == 0:
        with util.atomic_path(dest) as tmp:
            with open(tmp, 'wb') as f:
                pickle.dump(result, f)
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
@click.option('--results', help='Append the results to this JSONL file', metavar='FILE', type=str, default=None)
@click.option('--tag', help='Extra result fields, "key=value key2=value2"', metavar='STR', type=str, default=None)
@detector_options
def calc(images, ref_path, metrics, num, seed, batch, workers, results, tag, detector_kwargs):
    """Metrics of a set of images against reference statistics."""
    dist.init()
    metrics = parse_metrics(metrics, detectors_lib.DETECTORS)
    tags = parse_tags(tag)
    ref_stats = load_reference(ref_path)
    check_reference(ref_stats, ref_path, metrics)
    dataset = open_image_dataset(images, '--images', max_size=num, seed=seed)
    if len(dataset) < num:
        raise click.ClickException(f'--images {images}: found {len(dataset)} images, but --num {num} requested')
    device = dist.get_device()
    detectors = load_detectors(metrics, device, detector_kwargs)
    check_reference(ref_stats, ref_path, metrics, {m: d.feature_dim for m, d in detectors.items()})
    dist.print0(f'Calculating {", ".join(metrics)} of {num} images from {images} against {ref_path}')
    batches = (x for _, x, _ in iterate_images(dataset, np.arange(len(dataset)), batch, workers))
    values = frechet_results(compute_stats(batches, detectors, device), ref_stats, metrics)
    report([{'metric': m, 'value': v, 'images': images, 'ref': ref_path, 'num': num, 'seed': seed, **tags} for m, v in values.items()], results)

#----------------------------------------------------------------------------

@cmdline.command()
@click.option('--net', help='Network snapshot', metavar='PKL|URL', type=str, required=True)
@click.option('--ref', 'ref_path', help='Reference statistics (for the Frechet metrics)', metavar='PKL|NPZ|URL', type=str, default=None)
@click.option('--metrics', help='Comma-separated metrics', metavar='LIST', type=str, default='fid,fd_dinov2', show_default=True)
@click.option('--num', help='Number of generated images', metavar='INT', type=click.IntRange(min=2), default=50000, show_default=True)
@click.option('--seed', help='First seed (seeds seed..seed+num-1)', metavar='INT', type=click.IntRange(min=0), default=0, show_default=True)
@click.option('--class', 'class_idx', help='Generate only this class (source)  [default: random classes]', metavar='INT', type=click.IntRange(min=0), default=None)
@click.option('--guidance', help='Guidance strength', metavar='FLOAT', type=float, default=1.0, show_default=True)
@click.option('--gnet', help='Guiding network snapshot', metavar='PKL|URL', type=str, default=None)
@click.option('--steps', help='Sampling steps  [default: the family\'s own]', metavar='INT', type=click.IntRange(min=1), default=None)
@click.option('--batch', help='Images per batch per process', metavar='INT', type=click.IntRange(min=1), default=32, show_default=True)
@click.option('--results', help='Append the results to this JSONL file', metavar='FILE', type=str, default=None)
@click.option('--tag', help='Extra result fields, "key=value key2=value2"', metavar='STR', type=str, default=None)
@detector_options
def gen(net, ref_path, metrics, num, seed, class_idx, guidance, gnet, steps, batch, results, tag, detector_kwargs):
    """Generate images in memory and calculate their metrics."""
    import generate_images # pylint: disable=import-outside-toplevel
    dist.init()
    allowed = {**detectors_lib.DETECTORS, **detectors_lib.CLASSIFIERS}
    metrics = parse_metrics(metrics, allowed)
    tags = parse_tags(tag)
    fd_metrics = [m for m in metrics if m in detectors_lib.DETECTORS]
    ref_stats = None
    if fd_metrics:
        if ref_path is None:
            raise click.BadParameter(f'needed for {", ".join(fd_metrics)}', param_hint='--ref')
        ref_stats = load_reference(ref_path)
        check_reference(ref_stats, ref_path, fd_metrics)
    device = dist.get_device()
    snapshot = generate_images.load_snapshot(net, device=device, verbose=(dist.get_rank() == 0))
    if class_idx is not None and class_idx >= max(snapshot.label_dim, 1):
        raise click.ClickException(f'--class {class_idx}: the network has {snapshot.label_dim} classes')
    guide = generate_images.load_snapshot(gnet, device=device, verbose=(dist.get_rank() == 0)).net if gnet else None
    generate_images.check_guidance(snapshot, gnet=guide, guidance=guidance)
    detectors = load_detectors(metrics, device, detector_kwargs)
    if fd_metrics:
        check_reference(ref_stats, ref_path, fd_metrics, {m: detectors[m].feature_dim for m in fd_metrics})
    sampler_kwargs = {} if steps is None else dict(steps=steps)

    dist.print0(f'Generating {num} images from {net} and calculating {", ".join(metrics)}')
    stats = {m: FeatureStats(detectors[m].feature_dim, device) for m in fd_metrics}
    correct = torch.zeros([2], dtype=torch.float64, device=device) # (correct, total) for accuracy metrics
    for r in generate_images.generate_images(snapshot.net, encoder=snapshot.encoder, seeds=range(seed, seed + num),
            class_idx=class_idx, batch_size=batch, device=device, gnet=guide, guidance=guidance,
            verbose=(dist.get_rank() == 0), **sampler_kwargs):
        images = r.images.to(device)
        with torch.no_grad():
            for metric in metrics:
                if metric in stats:
                    stats[metric].update(detectors[metric](images))
                    continue
                if r.labels is None:
                    raise click.ClickException(f'{metric} needs class labels, but {net} is unconditional')
                predicted = detectors[metric](images)
                correct[0] += (predicted.cpu() == r.labels.cpu()).sum().item()
                correct[1] += len(predicted)
    for s in stats.values():
        s.all_reduce()
    dist.all_reduce_sum(correct)
    values = frechet_results(stats, ref_stats, fd_metrics) if fd_metrics else {}
    for metric in metrics:
        if metric not in values:
            values[metric] = float(correct[0] / correct[1])
    base = dict(net=net, num=num, seed=seed, **{'class': class_idx}, guidance=guidance)
    if steps is not None:
        base['steps'] = steps
    report([{'metric': m, 'value': values[m], **base, **tags} for m in metrics], results)

#----------------------------------------------------------------------------

@cmdline.command()
@click.option('--net', help='Network snapshot with a likelihood (ARDM)', metavar='PKL|URL', type=str, required=True)
@click.option('--data', help='Dataset of images: ZIP or folder', metavar='ZIP|DIR', type=str, required=True)
@click.option('--num', help='Number of images (a seeded random subset)  [default: all]', metavar='INT', type=click.IntRange(min=1), default=None)
@click.option('--seed', help='Seed of the subset', metavar='INT', type=int, default=0, show_default=True)
@click.option('--batch', help='Images per batch per process', metavar='INT', type=click.IntRange(min=1), default=64, show_default=True)
@click.option('--mode', help='Negative ELBO or exact NLL of one order', type=click.Choice(['elbo', 'exact']), default='elbo', show_default=True)
@click.option('--steps', help='Exact mode: network calls per stage  [default: one per dimension]', metavar='INT', type=click.IntRange(min=1), default=None)
@click.option('--policy', help='Exact mode with --steps: how the calls split the dimensions  [default: dp]', type=click.Choice(['dp', 'naive']), default=None)
@click.option('--draws', help='ELBO mode: stratified timesteps per image  [default: the network\'s]', metavar='INT', type=click.IntRange(min=1), default=None)
@click.option('--workers', help='DataLoader worker processes', metavar='INT', type=click.IntRange(min=0), default=2, show_default=True)
@click.option('--results', help='Append the result to this JSONL file', metavar='FILE', type=str, default=None)
@click.option('--tag', help='Extra result fields, "key=value key2=value2"', metavar='STR', type=str, default=None)
def bpd(net, data, num, seed, batch, mode, steps, policy, draws, workers, results, tag):
    """Bits per dimension of a dataset under a likelihood network."""
    import generate_images # pylint: disable=import-outside-toplevel
    from training.samplers import StackedRandomGenerator # pylint: disable=import-outside-toplevel
    dist.init()
    tags = parse_tags(tag)
    device = dist.get_device()
    snapshot = generate_images.load_snapshot(net, device=device, verbose=(dist.get_rank() == 0))
    if not callable(getattr(snapshot.net, 'bpd', None)):
        raise click.ClickException(f'--net {net}: {type(snapshot.net).__name__} has no likelihood (bpd); bits/dim needs an ARDM snapshot')
    dataset = open_image_dataset(data, '--data', max_size=num, seed=seed)
    if num is not None and len(dataset) < num:
        raise click.ClickException(f'--data {data}: found {len(dataset)} images, but --num {num} requested')
    if snapshot.label_dim and dataset.label_dim != snapshot.label_dim:
        raise click.ClickException(f'--data {data}: labels of {dataset.label_dim} classes, the network expects {snapshot.label_dim}')
    if policy is not None and (mode != 'exact' or steps is None):
        raise click.BadParameter('applies to --mode exact with --steps only', param_hint='--policy')
    policy = policy or 'dp'
    kwargs = dict(mode=mode)
    kwargs.update({} if steps is None else dict(steps=steps, policy=policy), **({} if draws is None else dict(draws=draws)))
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
    value = float(total[0] / total[1])
    record = dict(metric='bpd', value=value, mode=mode, net=net, data=data, num=int(total[1].item()))
    if steps is not None:
        record.update(steps=steps, policy=policy)
    report([dict(record, **tags)], results)

#----------------------------------------------------------------------------

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
def table(results, rows, cols, dest):
    """Pivot a results JSONL file into a Markdown table."""
    records = []
    try:
        with open(results) as f:
            for num, line in enumerate(f, start=1):
                if line.strip():
                    records.append(json.loads(line))
    except OSError as e:
        raise click.ClickException(f'--results {results}: {e.strerror}')
    except json.JSONDecodeError as e:
        raise click.ClickException(f'--results {results}: line {num} is not JSON ({e.msg})')
    text = pivot_table(records, rows, cols)
    if not any(rows in r for r in records):
        raise click.ClickException(f'--rows {rows}: no record in {results} has that key')
    print(text, end='')
    if dest:
        with util.atomic_path(dest) as tmp:
            with open(tmp, 'w') as f:
                f.write(text)

#----------------------------------------------------------------------------

@cmdline.command()
@click.option('--check', 'metrics', help='Comma-separated metrics whose detector files must be present', metavar='LIST', type=str, default='fid,fd_dinov2', show_default=True)
@detector_options
def weights(metrics, detector_kwargs):
    """Exit 0 when the detectors' pretrained files are on this machine, else 1 (names the files)."""
    metrics = parse_metrics(metrics, {**detectors_lib.DETECTORS, **detectors_lib.CLASSIFIERS})
    missing = []
    for metric in metrics:
        if metric in detectors_lib.DETECTORS:
            files, hint = detectors_lib.DETECTORS[metric].missing_files(**detector_kwargs.get(metric, {}))
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
