"""Frechet distance at FID size (2048 features): training.metrics.frechet_distance (trace of the
square root from the eigenvalues of the symmetric product L^T sigma2 L, sigma1 = L L^T)
against the reference formula with scipy.linalg.sqrtm of sigma1 sigma2, in one process on the
same covariance matrices (estimated from correlated random features, as real ones are). Prints
one JSON line per figure: median seconds over the repeats, the speed-up, and the relative
difference of the two values.

    python -m benchmarks.bench_fd [--dim 2048] [--samples 10000] [--repeats 3] [--threads 0]
"""

import json
import os
import time

import click
import numpy as np

from training.metrics import frechet_distance, frechet_distance_sqrtm

def covariance_pair(dim, samples, seed=0):
    """Two close Gaussians' statistics from correlated features with a decaying spectrum."""
    rng = np.random.RandomState(seed)
    mix = rng.randn(dim, dim) / np.sqrt(dim) * (1.0 / np.sqrt(1 + np.arange(dim)))
    stats = []
    for shift in [0.0, 0.05]:
        features = (rng.randn(samples, dim) + shift) @ (mix + shift * rng.randn(dim, dim) / np.sqrt(dim))
        stats += [features.mean(0), np.cov(features, rowvar=False)]
    return stats

def median_seconds(fn, args, repeats):
    seconds, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn(*args)
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds)), value

@click.command()
@click.option('--dim', type=int, default=2048, show_default=True, help='Features (2048 = Inception-v3)')
@click.option('--samples', type=int, default=10000, show_default=True, help='Feature vectors per covariance')
@click.option('--repeats', type=int, default=3, show_default=True)
@click.option('--threads', type=int, default=0, show_default=True, help='BLAS threads (0 = library default)')
def main(dim, samples, repeats, threads):
    if threads > 0:
        from threadpoolctl import threadpool_limits # pylint: disable=import-outside-toplevel
        threadpool_limits(threads)
    args = covariance_pair(dim, samples)
    ours_s, ours_value = median_seconds(frechet_distance, args, repeats)
    sqrtm_s, sqrtm_value = median_seconds(frechet_distance_sqrtm, args, repeats)
    common = dict(dim=dim, samples=samples, repeats=repeats, threads=threads or os.cpu_count())
    print(json.dumps(dict(figure='fd_seconds_symmetric_eig', value=ours_s, **common)))
    print(json.dumps(dict(figure='fd_seconds_scipy_sqrtm', value=sqrtm_s, **common)))
    print(json.dumps(dict(figure='fd_speedup_vs_sqrtm', value=sqrtm_s / ours_s, **common)))
    print(json.dumps(dict(figure='fd_relative_difference', value=abs(ours_value - sqrtm_value) / abs(sqrtm_value),
        fd_ours=ours_value, fd_sqrtm=sqrtm_value, **common)))

if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter
