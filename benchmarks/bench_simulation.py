"""Conditional-Gaussian study speed: one tag's grid (default `n`, five seeds) with the vectorised
closed-form log-density against a per-point loop (one torch.distributions.MultivariateNormal per
test point), in one process. Both give the same numbers; prints one JSON line per figure (medians
over the repeats) and the ratio loop / vectorised.

    python -m benchmarks.bench_simulation [--tag n] [--repeats 3]
"""

import json
import statistics
import time

import click
import torch

from simulations import gaussian as G

def time_grid(tag, log_density_fn, repeats):
    times, rows = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        rows = G.run_grid(tag, G.GRIDS[tag], G.SEEDS, log_density_fn=log_density_fn)
        times.append(time.perf_counter() - start)
    return statistics.median(times), rows

@click.command()
@click.option('--tag', type=click.Choice(list(G.TAGS)), default='n', show_default=True)
@click.option('--repeats', type=click.IntRange(min=1), default=3, show_default=True)
def main(tag, repeats):
    torch.set_num_threads(1)
    fast, rows_fast = time_grid(tag, G.log_density, repeats)
    slow, rows_slow = time_grid(tag, G.log_density_naive, repeats)
    diff = max(abs(a[m] - b[m]) for a, b in zip(rows_fast, rows_slow) for m in (G.TV_SINGLE, G.TV_MULTI))
    print(json.dumps({'name': f'gaussian_{tag}_vectorised', 'seconds_median': round(fast, 4), 'repeats': repeats}))
    print(json.dumps({'name': f'gaussian_{tag}_per_point_loop', 'seconds_median': round(slow, 4), 'repeats': repeats}))
    print(json.dumps({'name': f'gaussian_{tag}_loop_over_vectorised', 'ratio': round(slow / fast, 2),
                      'max_abs_tv_difference': diff}))

if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter
