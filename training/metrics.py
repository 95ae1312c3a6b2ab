"""Evaluation maths and files: the Frechet distance, the kernel distance (KID), feature statistics
accumulated in float64 over batches and ranks, class-agreement counts, the floor of a metric
(real images resampled), and reference-statistics files. The library part of
calculate_metrics.py; errors about the user's input are ValueError / OSError.

Reference statistics use EDM2's pickle format ({metric: {'mu', 'sigma'}}, plus 'num_images');
a kernel metric stores the reference features themselves ({metric: {'features'}}): its unbiased
estimator needs every pair. EDM2's published reference pickles are accepted. They are read with a restricted unpickler that
admits only dicts, numbers and numpy arrays, so a reference file can never run code; `.npz`
(keys '{metric}.mu', '{metric}.sigma', 'num_images'; or plain 'mu'/'sigma' = FID) is the format
that needs no pickle at all.
"""

import io
import pickle

import numpy as np
import torch

from torch_utils import distributed as dist
from torch_utils import util

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
# Kernel distance (KID, Binkowski et al. 2018, "Demystifying MMD GANs"): the squared maximum mean
# discrepancy between the two feature distributions under the cubic polynomial kernel
# k(a, b) = (a.b / d + 1)^3, estimated by the unbiased U-statistic over every pair:
#   sum_{i!=j} k(x_i, x_j) / (n(n-1)) + sum_{i!=j} k(y_i, y_j) / (m(m-1)) - 2 sum_{i,j} k(x_i, y_j) / (nm).
# Unlike the Frechet distance, its expected value for two samples of one distribution is exactly
# 0 at any sample sizes (it can come out negative), so values at different sizes compare and a
# ratio of two values is a ratio of squared distances. The official KID averages this statistic
# over random subsets of 1000 images (for speed); here every pair counts, in blocks, float64.

KERNEL_METRICS = {'kid': 'fid', 'kid_dinov2': 'fd_dinov2', 'kid_digits': 'fd_digits'} # Metric -> the Frechet metric whose detector gives its features.

def _kernel_sum(a, b, block_size):
    """sum_{i,j} (a_i.b_j / d + 1)^3 over all pairs, in blocks of rows."""
    total = torch.zeros([], dtype=torch.float64, device=a.device)
    for start in range(0, a.shape[0], block_size):
        for other in range(0, b.shape[0], block_size):
            total += ((a[start : start + block_size] @ b[other : other + block_size].T) / a.shape[1] + 1).pow(3).sum()
    return total

def kernel_distance(x, y, block_size=2048, device=None):
    """Unbiased squared MMD between features x [n, d] and y [m, d] (n, m >= 2) under the cubic
    polynomial kernel (see above). Arrays or tensors; computed in float64 on `device`."""
    x = torch.as_tensor(x, device=device).to(torch.float64)
    y = torch.as_tensor(y, device=x.device).to(torch.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or min(x.shape[0], y.shape[0]) < 2:
        raise ValueError(f'kernel distance: need two sets of at least 2 feature vectors of one size, got {list(x.shape)} and {list(y.shape)}')
    n, m, d = x.shape[0], y.shape[0], x.shape[1]
    diagonal = lambda a: ((a * a).sum(1) / d + 1).pow(3).sum() # The i == j terms.
    xx = (_kernel_sum(x, x, block_size) - diagonal(x)) / (n * (n - 1))
    yy = (_kernel_sum(y, y, block_size) - diagonal(y)) / (m * (m - 1))
    xy = _kernel_sum(x, y, block_size) / (n * m)
    return float(xx + yy - 2 * xy)

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
            raise ValueError(f'Need at least 2 images for a covariance, got {n}')
        mu = self.sum / n
        sigma = (self.sum_outer - n * torch.outer(mu, mu)) / (n - 1)
        return dict(mu=mu.cpu().numpy(), sigma=sigma.cpu().numpy())

class FeatureSet:
    """Every feature vector itself (for the kernel metrics and the floor), in the detector's own
    dtype; all_reduce gathers the vectors of every rank (their order does not matter)."""
    def __init__(self, feature_dim):
        self.feature_dim = feature_dim
        self.parts = []

    def update(self, features):
        self.parts.append(features.detach().reshape(features.shape[0], -1).cpu())

    def all_reduce(self):
        mine = torch.cat(self.parts) if self.parts else torch.zeros([0, self.feature_dim])
        if dist.get_world_size() > 1:
            gathered = [None] * dist.get_world_size()
            torch.distributed.all_gather_object(gathered, mine.numpy())
            mine = torch.cat([torch.as_tensor(part) for part in gathered])
        self.parts = [mine]
        return self

    def features(self):
        """The feature vectors [N, F] (numpy); needs at least 2 of them."""
        features = torch.cat(self.parts) if self.parts else torch.zeros([0, self.feature_dim])
        if features.shape[0] < 2:
            raise ValueError(f'Need at least 2 images for a kernel distance, got {features.shape[0]}')
        return features.numpy()

#----------------------------------------------------------------------------
# Every metric of one evaluation, fed batch by batch: a Frechet metric accumulates the features
# of its detector, a kernel metric keeps them; an accuracy metric (a classifier: image -> class)
# counts the images whose predicted class is the one they were generated for. Metrics that share
# a detector (fd_digits and kid_digits) compute its features once per batch.

class Evaluation:
    def __init__(self, detectors, device=torch.device('cpu'), keep_features=False):
        """detectors: {metric: detector (has feature_dim) or classifier (has none)};
        keep_features: keep the features of the Frechet metrics too (features())."""
        self.detectors, self.device = detectors, device
        keep = lambda metric: keep_features or metric in KERNEL_METRICS
        with_features = {m: d.feature_dim for m, d in detectors.items() if hasattr(d, 'feature_dim')}
        self.stats = {m: FeatureStats(dim, device) for m, dim in with_features.items() if not keep(m)}
        self.kept = {m: FeatureSet(dim) for m, dim in with_features.items() if keep(m)}
        self.agreement = {m: torch.zeros([2], dtype=torch.float64, device=device) for m in detectors if m not in with_features}

    @torch.no_grad()
    def update(self, images, classes=None):
        """uint8 images [N, C, H, W]; classes: int64 [N], the classes they should show (accuracy)."""
        features = {}
        for metric, detector in self.detectors.items():
            if metric in self.stats or metric in self.kept:
                if id(detector) not in features:
                    features[id(detector)] = detector(images)
                (self.stats.get(metric) or self.kept[metric]).update(features[id(detector)])
                continue
            if classes is None:
                raise ValueError(f'{metric} needs the class of every image, but these images have none (an unconditional network?)')
            predicted = detector(images).cpu()
            self.agreement[metric] += torch.tensor([(predicted == classes.cpu()).sum().item(), len(predicted)],
                dtype=torch.float64, device=self.agreement[metric].device)

    def all_reduce(self):
        for s in [*self.stats.values(), *self.kept.values()]:
            s.all_reduce()
        for counts in self.agreement.values():
            dist.all_reduce_sum(counts)
        return self

    def statistics(self):
        """{metric: {'mu', 'sigma'}} of the Frechet metrics and {metric: {'features'}} of the
        kernel metrics (after all_reduce): what a reference file holds."""
        stats = {metric: s.mu_sigma() for metric, s in self.stats.items()}
        stats.update({metric: statistics_of(metric, features) for metric, features in self.features().items()})
        return stats

    def features(self):
        """{metric: features [N, F]} of the metrics whose features are kept (after all_reduce)."""
        return {metric: s.features() for metric, s in self.kept.items()}

    def results(self, ref_stats=None):
        """{metric: value}: Frechet and kernel distances against `ref_stats`, accuracies in [0, 1]."""
        values = {}
        for metric, ours in self.statistics().items():
            values[metric] = distance(metric, ours, ref_stats[metric], device=self.device)
        for metric, (correct, total) in self.agreement.items():
            values[metric] = float(correct / total)
        return {metric: values[metric] for metric in self.detectors}

def distance(metric, ours, ref, device=None):
    """The value of a Frechet or kernel metric between two statistics entries."""
    if metric in KERNEL_METRICS:
        return kernel_distance(ours['features'], ref['features'], device=device)
    return frechet_distance(ours['mu'], ours['sigma'], ref['mu'], ref['sigma'])

def frechet_distance_of_features(features, mu2, sigma2):
    """The Frechet distance of feature vectors [n, d] to (mu2, sigma2). With no more vectors than
    dimensions their covariance has rank n - 1 and the trace of the square root comes from an
    n x n problem: for C the centred vectors, sigma1 = C^T C / (n - 1) and sigma1 sigma2 has the
    nonzero eigenvalues of C sigma2 C^T / (n - 1) (the same value as frechet_distance, far
    cheaper for small samples of wide features, e.g. the floor of FID at 2048 dimensions)."""
    x = np.asarray(features, dtype=np.float64)
    if x.shape[0] > x.shape[1]:
        return frechet_distance(x.mean(0), np.cov(x, rowvar=False), mu2, sigma2)
    centred = x - x.mean(0)
    sigma2 = np.asarray(sigma2, dtype=np.float64)
    small = centred @ sigma2 @ centred.T / (x.shape[0] - 1)
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((small + small.T) / 2), 0, None)).sum()
    fd = np.square(x.mean(0) - mu2).sum() + np.square(centred).sum() / (x.shape[0] - 1) + np.trace(sigma2) - 2 * trace_sqrt
    return float(max(fd, 0))

def statistics_of(metric, features):
    """The statistics entry of `metric` for features [N, F] (numpy)."""
    if metric in KERNEL_METRICS:
        return dict(features=features)
    features = np.asarray(features, dtype=np.float64)
    return dict(mu=features.mean(0), sigma=np.cov(features, rowvar=False))

#----------------------------------------------------------------------------
# The floor of a metric: what a sampler that draws real images would score. `num` images drawn
# with replacement from real ones (features [N, F] per metric), scored against the reference,
# `draws` times. With the sample and reference sizes of a model's evaluation, a model cannot be
# told from real data unless it scores clearly above this.

def resampled_values(features, ref_stats, num, draws=10, seed=0, device=None):
    """{metric: [value per draw]}; `features`: {metric: real features [N, F]}."""
    rnd = np.random.RandomState(seed)
    values = {metric: [] for metric in features}
    for _ in range(draws):
        pick = rnd.randint(0, min(len(f) for f in features.values()), size=num)
        for metric, real in features.items():
            sample = np.asarray(real)[pick]
            values[metric].append(kernel_distance(sample, ref_stats[metric]['features'], device=device) if metric in KERNEL_METRICS
                else frechet_distance_of_features(sample, ref_stats[metric]['mu'], ref_stats[metric]['sigma']))
    return values

#----------------------------------------------------------------------------
# Reference statistics files.

class _ReferenceUnpickler(pickle.Unpickler):
    """Admits dicts, numbers, strings and numpy arrays: what EDM2's reference pickles hold
    (their EasyDicts become plain dicts). Anything else (code) is refused."""
    _ALLOWED = {
        ('numpy', 'ndarray'), ('numpy', 'dtype'),
        ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
        ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
        ('numpy.core.numeric', '_frombuffer'), ('numpy._core.numeric', '_frombuffer'),
        ('collections', 'OrderedDict'),
    }
    _DICTS = {('dnnlib.util', 'EasyDict'), ('dnnlib', 'EasyDict'), ('torch_utils.util', 'EasyDict')}

    def find_class(self, module, name):
        if (module, name) in self._DICTS:
            return dict
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f'refusing to load {module}.{name}: reference statistics hold only numbers and arrays')

def load_reference(ref):
    """Statistics {metric: {'mu', 'sigma'}, ...} from an EDM2-format pickle or an .npz (path or URL)."""
    try:
        with util.open_url(ref, verbose=(dist.get_rank() == 0)) as f:
            data = f.read()
    except OSError as e:
        raise FileNotFoundError(f'Cannot read reference statistics {ref}: {e}') from e
    try:
        if data[:2] == b'PK': # .npz (a zip of .npy), never pickled objects.
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                stats = _from_npz(npz)
        else:
            stats = _ReferenceUnpickler(io.BytesIO(data)).load()
    except Exception as e: # pylint: disable=broad-except
        raise ValueError(f'Cannot read reference statistics {ref}: not an EDM2 reference pickle or statistics .npz '
            f'({type(e).__name__}: {e})') from e
    if not isinstance(stats, dict):
        raise ValueError(f'Cannot read reference statistics {ref}: expected a dict of metrics, got {type(stats).__name__}')
    return stats

def _from_npz(npz):
    if 'mu' in npz.files: # A bare mu/sigma pair is FID statistics.
        return dict(fid=dict(mu=npz['mu'], sigma=npz['sigma']))
    stats = {}
    for key in npz.files:
        metric, _, field = key.rpartition('.')
        if metric:
            stats.setdefault(metric, {})[field] = npz[key]
        else:
            stats[key] = npz[key].item() if npz[key].ndim == 0 else npz[key]
    return stats

def save_reference(stats, dest):
    """Write statistics atomically: `.npz` (no pickle) when dest ends in .npz, else EDM2's pickle."""
    with util.atomic_path(dest) as tmp:
        with open(tmp, 'wb') as f:
            if dest.lower().endswith('.npz'):
                arrays = {f'{m}.{k}': v for m, entry in stats.items() if isinstance(entry, dict) for k, v in entry.items()}
                arrays.update({k: np.asarray(v) for k, v in stats.items() if not isinstance(v, dict)})
                np.savez(f, **arrays)
            else:
                pickle.dump(stats, f)

def check_reference(stats, ref, metrics, feature_dims=None):
    """The reference has every requested metric: a Frechet metric with mu [F] and sigma [F, F]
    that a set of images can have (covariance_problem), a kernel metric with finite features
    [M, F], M >= 2."""
    for metric in metrics:
        entry = stats.get(metric)
        fields = ['features'] if metric in KERNEL_METRICS else ['mu', 'sigma']
        if not isinstance(entry, dict) or any(field not in entry for field in fields):
            present = [k for k, v in stats.items() if isinstance(v, dict) and ('mu' in v or 'features' in v)]
            raise ValueError(f'Reference {ref} has no "{metric}" statistics (it has: {", ".join(present) or "none"}); '
                f'compute them with: calculate_metrics.py ref --metrics {metric}')
        if metric in KERNEL_METRICS:
            features = np.asarray(entry['features'])
            if features.ndim != 2 or features.shape[0] < 2:
                raise ValueError(f'Reference {ref}: "{metric}" has features {list(features.shape)}, not [M, F] with M >= 2')
            if feature_dims is not None and features.shape[1] != feature_dims[metric]:
                raise ValueError(f'Reference {ref}: "{metric}" features have {features.shape[1]} dimensions, '
                    f'but the {metric} detector gives {feature_dims[metric]}')
            problem = features_problem(features)
        else:
            mu, sigma = np.asarray(entry['mu']), np.asarray(entry['sigma'])
            dim = mu.shape[0] if mu.ndim == 1 else None
            if dim is None or sigma.shape != (dim, dim):
                raise ValueError(f'Reference {ref}: "{metric}" has mu {list(mu.shape)} and sigma {list(sigma.shape)}, not [F] and [F, F]')
            if feature_dims is not None and dim != feature_dims[metric]:
                raise ValueError(f'Reference {ref}: "{metric}" statistics have {dim} features, '
                    f'but the {metric} detector gives {feature_dims[metric]}')
            problem = covariance_problem(mu, sigma)
        if problem:
            raise ValueError(f'Reference {ref}: the "{metric}" statistics are not those of any set of images ({problem}); '
                f'compute them again with: calculate_metrics.py ref')

def features_problem(features):
    """Why `features` cannot be the features of a set of images, or None: not numbers, or NaN or
    inf among them (the kernel distance would come out NaN)."""
    if not np.issubdtype(features.dtype, np.number):
        return f'they are {features.dtype}, not numbers'
    if not np.isfinite(features).all():
        return 'they hold NaN or inf'
    return None

def covariance_problem(mu, sigma):
    """Why (mu, sigma) cannot be a mean and a covariance, or None: non-finite numbers, sigma not
    symmetric, or not positive semi-definite (the Frechet distance would be meaningless; clipped,
    it came out 0). Rounding is allowed for: a tolerance of 1e-6 of the trace."""
    mu, sigma = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        return 'they hold NaN or inf'
    scale = 1e-6 * max(np.trace(sigma), 0) + np.finfo(np.float64).tiny
    if np.abs(sigma - sigma.T).max(initial=0) > scale:
        return 'the covariance is not symmetric'
    try:
        np.linalg.cholesky(sigma + scale * np.eye(len(sigma)))
    except np.linalg.LinAlgError:
        return 'the covariance is not positive semi-definite'
    return None

#----------------------------------------------------------------------------
