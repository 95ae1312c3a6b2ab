"""Files and figures of the conditional-Gaussian study (simulations/gaussian.py): one CSV per
grid, and one figure per grid drawn from the newest CSV. The CLIs `python -m simulations.run_gaussian`
and `python -m simulations.plot_gaussian_{K,n,sim}` are thin layers over this module (they also
run as files: `python simulations/run_gaussian.py`, or `python run_gaussian.py` inside simulations/,
as the Multi-Source-GM README writes them)."""

import csv
import glob
import os

import numpy as np

from simulations import gaussian as G
from torch_utils import util

#----------------------------------------------------------------------------
# Files. The default folders are this package's results/ and figures/, wherever the command runs
# from: the Multi-Source-GM README runs the scripts inside simulations/ and finds them there too.

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(HERE, 'results')
FIGURES_DIR = os.path.join(HERE, 'figures')
DEFAULT_SHOWN = dict(results='simulations/results/ of this repository', figures='simulations/figures/ of this repository')

def write_csv(rows, tag, path):
    """Write rows atomically (temporary file, then rename)."""
    with util.atomic_path(path) as tmp:
        with open(tmp, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=G.columns(tag))
            writer.writeheader()
            writer.writerows(rows)
    return path

def read_csv(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))

def newest_csv(results_dir, tag):
    """Newest gaussian_{tag}_*.csv under {results_dir}/gaussian/{tag}/; FileNotFoundError naming the
    folder when there is none."""
    folder = os.path.join(results_dir, 'gaussian', tag)
    found = sorted(glob.glob(os.path.join(folder, f'gaussian_{tag}_*.csv')))
    if not found:
        raise FileNotFoundError(f'no gaussian_{tag}_*.csv in {folder}; run '
                                f'`python -m simulations.run_gaussian --tag {tag}` first or pass --csv')
    return max(found, key=lambda p: (os.stat(p).st_mtime_ns, os.path.basename(p)))

def unique_path(path):
    """path, or path with -1, -2, ... before the extension when it exists (two runs in one second)."""
    root, ext = os.path.splitext(path)
    candidate, i = path, 0
    while os.path.exists(candidate):
        i += 1
        candidate = f'{root}-{i}{ext}'
    return candidate

#----------------------------------------------------------------------------
# Plotting.

def figure_paths(outdir, tag):
    return [os.path.join(outdir, f'gaussian_{tag}.{ext}') for ext in ('png', 'svg')]

def plot_tag(csv_path, tag, outdir, log_x=None):
    """Empirical TV (left axis, solid) and theoretical bound (right axis, dashed) for single and
    multi against the varied parameter. Saves {outdir}/gaussian_{tag}.png and .svg; returns both paths."""
    import matplotlib # pylint: disable=import-outside-toplevel
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt # pylint: disable=import-outside-toplevel

    rows = read_csv(csv_path)
    if not rows:
        raise ValueError(f'{csv_path} has no rows')
    needed = [tag, G.TV_SINGLE, G.TV_MULTI, G.BOUND_SINGLE, G.BOUND_MULTI]
    missing = [name for name in needed if name not in rows[0]]
    if missing:
        raise ValueError(f'{csv_path} has no column {", ".join(map(repr, missing))} (it has {", ".join(rows[0])}): '
            f'not a CSV of `python -m simulations.run_gaussian --tag {tag}`')
    def col(name):
        try:
            return [float(r[name]) for r in rows]
        except (TypeError, ValueError):
            raise ValueError(f'{csv_path}: column {name!r} holds a value that is not a number') from None
    order = np.argsort(col(tag), kind='stable')
    rows = [rows[i] for i in order]
    xs = col(tag)
    if log_x is None:
        log_x = tag == 'n'

    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax2 = ax.twinx()
    lines = []
    lines += ax.plot(xs, col(G.TV_SINGLE), 'o-', color='tab:blue', label='single (empirical)')
    lines += ax.plot(xs, col(G.TV_MULTI), 's-', color='tab:orange', label='multi (empirical)')
    lines += ax2.plot(xs, col(G.BOUND_SINGLE), 'o--', color='tab:blue', alpha=0.6, label='single (bound)')
    lines += ax2.plot(xs, col(G.BOUND_MULTI), 's--', color='tab:orange', alpha=0.6, label='multi (bound)')
    if log_x:
        ax.set_xscale('log')
    ax.set_xlabel(G.LABELS.get(tag, tag))
    ax.set_ylabel('empirical TV error')
    ax2.set_ylabel('theoretical TV bound')
    ax.legend(lines, [l.get_label() for l in lines], fontsize=8, loc='best')
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths = figure_paths(outdir, tag)
    for path in paths:
        with util.atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.rsplit('.', 1)[1], dpi=150)
    plt.close(fig)
    return paths

def plot_command(tag):
    """A click command that plots one tag: the three plot scripts are this and nothing else."""
    import click # pylint: disable=import-outside-toplevel

    @click.command(help=f'Plot the conditional-Gaussian study against {tag} (newest CSV unless --csv).')
    @click.option('--csv', 'csv_path', type=click.Path(exists=True, dir_okay=False), default=None,
                  help='CSV to plot (default: newest of this tag under --results_dir).')
    @click.option('--results_dir', default=RESULTS_DIR, show_default=DEFAULT_SHOWN['results'])
    @click.option('--outdir', default=FIGURES_DIR, show_default=DEFAULT_SHOWN['figures'])
    @click.option('--overwrite', help='Replace existing figures', is_flag=True)
    @util.one_line_errors
    def main(csv_path, results_dir, outdir, overwrite):
        for path in figure_paths(outdir, tag):
            util.check_new_output(path, '--outdir', overwrite=overwrite)
        if csv_path is None:
            csv_path = newest_csv(results_dir, tag)
        for p in plot_tag(csv_path, tag, outdir):
            click.echo(p)
    return main
