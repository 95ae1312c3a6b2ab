"""Run the conditional-Gaussian study over one grid (or all three) and write one CSV per tag.

    python -m simulations.run_gaussian --tag K|n|sim|all [--seeds 3,33,520,2025,25731]
        [--K 5] [--D 10] [--sim 0.5] [--n 500] [--values 1,3,5] [--num-test 500]
        [--results_dir simulations/results]
    python simulations/run_gaussian.py --tag=K      # as a file too, from anywhere

Each CSV goes to {results_dir}/gaussian/{tag}/gaussian_{tag}_{YYYYmmdd-HHMMSS}.csv, one row per value
of the tag, averaged over the seeds.
"""

import os
import sys
import time

if not __package__: # Run as a file: import this repository's packages, as `python -m` from its root would.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import click # pylint: disable=wrong-import-position

from simulations import gaussian as G
from simulations import plotting
from torch_utils import util

def _parse_list(ctx, param, value, cast):
    if value is None:
        return None
    try:
        out = [cast(v.strip()) for v in str(value).split(',') if v.strip()]
    except ValueError:
        raise click.BadParameter(f'expected comma-separated {cast.__name__} values, got {value!r}')
    if not out:
        raise click.BadParameter('empty list')
    return out

def _seeds(ctx, param, value):
    return _parse_list(ctx, param, value, int)

def _values(ctx, param, value):
    return _parse_list(ctx, param, value, float)

def _cast(tag, value):
    return float(value) if tag == 'sim' else int(round(value))

def _check(tag, value, D):
    if tag == 'K' and value < 1:
        raise click.BadParameter(f'K must be >= 1, got {value}', param_hint='--values/--K')
    if tag == 'n' and value < 1:
        raise click.BadParameter(f'n must be >= 1, got {value}', param_hint='--values/--n')
    if tag == 'sim' and not 0 <= value <= 1:
        raise click.BadParameter(f'sim must be in [0, 1], got {value}', param_hint='--values/--sim')

def format_table(rows, tag):
    cols = [tag, G.BOUND_SINGLE, G.BOUND_MULTI, G.TV_SINGLE, G.TV_MULTI, G.TV_ADV]
    short = [tag, 'bound single', 'bound multi', 'TV single', 'TV multi', 'advantage']
    lines = [' '.join(f'{s:>12}' for s in short)]
    for r in rows:
        lines.append(' '.join(f'{r[c]:>12.4f}' if c != tag else f'{r[c]:>12g}' for c in cols))
    return '\n'.join(lines)

@click.command(help='Conditional-Gaussian study: single vs multi-source estimation, TV error vs bounds.')
@click.option('--tag', type=click.Choice(['K', 'n', 'sim', 'all']), required=True, help='Parameter to vary.')
@click.option('--seeds', default='3,33,520,2025,25731', show_default=True, callback=_seeds,
              help='Comma-separated seeds; rows average over them.')
@click.option('--K', 'K', type=click.IntRange(min=1), default=G.DEFAULTS['K'], show_default=True)
@click.option('--D', 'D', type=click.IntRange(min=1), default=G.DEFAULTS['D'], show_default=True)
@click.option('--sim', type=click.FloatRange(0, 1), default=G.DEFAULTS['sim'], show_default=True)
@click.option('--n', type=click.IntRange(min=1), default=G.DEFAULTS['n'], show_default=True)
@click.option('--values', default=None, callback=_values,
              help='Comma-separated grid for the tag (default: the published grid; not with --tag all).')
@click.option('--num-test', 'num_test', type=click.IntRange(min=1), default=500, show_default=True)
@click.option('--results_dir', default=plotting.RESULTS_DIR, show_default=plotting.DEFAULT_SHOWN['results'])
@util.one_line_errors
def main(tag, seeds, K, D, sim, n, values, num_test, results_dir):
    if tag == 'all' and values is not None:
        raise click.BadParameter('--values needs a single --tag', param_hint='--values')
    util.check_writable(os.path.join(results_dir, 'gaussian', 'results.csv'), '--results_dir')
    tags = G.TAGS if tag == 'all' else (tag,)
    defaults = {'K': K, 'D': D, 'sim': sim, 'n': n}
    stamp = time.strftime('%Y%m%d-%H%M%S')
    for t in tags:
        grid = [_cast(t, v) for v in (values if values is not None else G.GRIDS[t])]
        for v in grid:
            _check(t, v, D)
        start = time.perf_counter()
        rows = G.run_grid(t, grid, seeds, defaults, num_test=num_test)
        seconds = time.perf_counter() - start
        path = plotting.unique_path(os.path.join(results_dir, 'gaussian', t, f'gaussian_{t}_{stamp}.csv'))
        plotting.write_csv(rows, t, path)
        click.echo(format_table(rows, t))
        click.echo(f'{path}  ({seconds:.2f} s)')

if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter
