"""Conditional-Gaussian study of multi-source learning (Figure 1 of "A Theory for Conditional
Generative Modeling on Multiple Data Sources").

K sources with uniform probabilities in dimension D. Source k (0-based) has mean k+1 on the first
d_dif = D - d_sim coordinates and 0 on the last d_sim = int(sim * D); covariance identity.
"single" learns each conditional mean from its own source; "multi" shares the last d_sim
coordinates, estimated as the pooled mean of all training data. Both are scored by the empirical
total variation 0.5 * E|p_hat(x|y) / p(x|y) - 1| over 500 test pairs, against the bounds
sqrt(K*D/n) and sqrt(((K-1)*(D-d_sim) + D)/n).

The order of the random draws follows the published experiment exactly (train labels, per-class
train noise in class order, then test labels and per-class test noise), so the figure's numbers are
reproduced, not just its shape.
"""

import math
import random

import numpy as np
import torch

PARAMS = ('K', 'D', 'sim', 'n')
DEFAULTS = {'K': 5, 'D': 10, 'sim': 0.5, 'n': 500}
SEEDS = (3, 33, 520, 2025, 25731)
GRIDS = {
    'K': (1, 3, 5, 10, 15),
    'n': (100, 300, 500, 1000, 5000),
    'sim': (0.0, 0.3, 0.5, 0.7, 1.0),
}
TAGS = tuple(GRIDS)
BOUND_SINGLE = 'theoretical TV bound of single'
BOUND_MULTI = 'theoretical TV bound of multi'
BOUND_ADV = 'theoretical advantage (abs)'
TV_SINGLE = 'empirical TV of single'
TV_MULTI = 'empirical TV of multi'
TV_ADV = 'advantage (abs)'
METRICS = (BOUND_SINGLE, BOUND_MULTI, BOUND_ADV, TV_SINGLE, TV_MULTI, TV_ADV)
LABELS = {'K': 'number of sources K', 'n': 'sample size n', 'sim': 'similarity (shared fraction of dimensions)',
          'D': 'dimension D'}

#----------------------------------------------------------------------------
# Model.

def num_shared(D, sim):
    """d_sim = int(sim * D): the number of dimensions all sources share."""
    return int(sim * D)

def true_means(K, D, sim):
    """[K, D] float32: source k has mean k+1 on its first D - d_sim coordinates, 0 on the rest."""
    d_dif = D - num_shared(D, sim)
    means = torch.zeros(K, D)
    means[:, :d_dif] = torch.arange(1, K + 1, dtype=torch.float32)[:, None]
    return means

def sample(means, n):
    """n pairs (x [n, D], y [n]) from the true distribution, in the published draw order: labels by
    torch.multinomial over uniform class probabilities, then for k = 0..K-1 the rows with y == k
    get torch.randn(count, D) + mean_k (a class with no rows draws nothing)."""
    K, D = means.shape
    p_y = torch.ones(K) / K
    y = torch.multinomial(p_y, n, replacement=True)
    x = torch.empty(n, D)
    for k in range(K):
        idx = (y == k).nonzero(as_tuple=True)[0]
        count = idx.numel()
        if count == 0:
            continue
        x[idx] = torch.randn(count, D) + means[k]
    return x, y

def estimate_single(x, y, K):
    """[K, D] per-class sample means (a class with no training rows falls back to the pooled mean)."""
    pooled = x.mean(dim=0)
    means = pooled.expand(K, -1).clone()
    for k in range(K):
        rows = x[y == k]
        if rows.shape[0] > 0:
            means[k] = rows.mean(dim=0)
    return means

def estimate_multi(x, y, K, d_sim):
    """Per-class sample means with the last d_sim coordinates replaced by the pooled mean of all
    training data (unchanged when d_sim == 0)."""
    means = estimate_single(x, y, K)
    if d_sim > 0:
        means[:, -d_sim:] = x.mean(dim=0)[-d_sim:]
    return means

def log_density(x, y, means):
    """[n] log N(x_i; means[y_i], I) in closed form over the whole batch."""
    D = x.shape[1]
    diff = x - means[y]
    return -0.5 * (diff * diff).sum(dim=1) - 0.5 * D * math.log(2 * math.pi)

def log_density_naive(x, y, means):
    """Reference implementation: one torch.distributions.MultivariateNormal per test point."""
    D = x.shape[1]
    eye = torch.eye(D)
    out = torch.empty(x.shape[0])
    for i in range(x.shape[0]):
        dist = torch.distributions.MultivariateNormal(means[y[i]], covariance_matrix=eye)
        out[i] = dist.log_prob(x[i])
    return out

def empirical_tv(x, y, means_hat, means, log_density_fn=log_density):
    """0.5 * mean |p_hat(x|y) / p(x|y) - 1| over the pairs (x, y)."""
    ratio = torch.exp(log_density_fn(x, y, means_hat) - log_density_fn(x, y, means))
    return 0.5 * (ratio - 1).abs().mean().item()

def bounds(K, D, sim, n):
    """(single, multi) theoretical TV bounds: sqrt(K*D/n) and sqrt(((K-1)*(D-d_sim) + D)/n)."""
    d_sim = num_shared(D, sim)
    return math.sqrt(K * D / n), math.sqrt(((K - 1) * (D - d_sim) + D) / n)

def seed_all(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

def run_one(seed, K, D, sim, n, num_test=500, log_density_fn=log_density):
    """One run: seed everything, draw n training pairs, estimate both models, draw num_test test
    pairs, score. Returns a dict with the parameters, the bounds and the empirical TVs."""
    K, D, n, num_test, sim = int(K), int(D), int(n), int(num_test), float(sim)
    seed_all(seed)
    means = true_means(K, D, sim)
    d_sim = num_shared(D, sim)
    x, y = sample(means, n)
    single = estimate_single(x, y, K)
    multi = estimate_multi(x, y, K, d_sim)
    x_test, y_test = sample(means, num_test)
    tv_single = empirical_tv(x_test, y_test, single, means, log_density_fn)
    tv_multi = empirical_tv(x_test, y_test, multi, means, log_density_fn)
    b_single, b_multi = bounds(K, D, sim, n)
    return {'seed': seed, 'K': K, 'D': D, 'sim': sim, 'n': n,
            BOUND_SINGLE: b_single, BOUND_MULTI: b_multi, BOUND_ADV: b_single - b_multi,
            TV_SINGLE: tv_single, TV_MULTI: tv_multi, TV_ADV: tv_single - tv_multi}

def columns(tag):
    """CSV columns for a tag: the tag, seed, the other parameters, then the metrics."""
    return [tag, 'seed'] + [p for p in PARAMS if p != tag] + list(METRICS)

def run_grid(tag, values, seeds=SEEDS, defaults=None, num_test=500, log_density_fn=log_density):
    """One row per value of the varied parameter `tag`, metrics averaged over the seeds."""
    if tag not in PARAMS:
        raise ValueError(f'unknown tag {tag!r}; expected one of {PARAMS}')
    params = dict(DEFAULTS)
    params.update(defaults or {})
    rows = []
    for value in values:
        p = dict(params, **{tag: value})
        runs = [run_one(seed, p['K'], p['D'], p['sim'], p['n'], num_test=num_test,
                        log_density_fn=log_density_fn) for seed in seeds]
        row = {tag: runs[0][tag], 'seed': ';'.join(str(s) for s in seeds)}
        for q in PARAMS:
            if q != tag:
                row[q] = runs[0][q]
        for m in METRICS:
            row[m] = float(np.mean([r[m] for r in runs]))
        rows.append({c: row[c] for c in columns(tag)})
    return rows

#----------------------------------------------------------------------------
