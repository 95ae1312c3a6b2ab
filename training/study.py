"""The multi-source study: which sources (classes) each model of the grid learns, what each step
produces, and the summary of the scores. run_study.py runs the steps; this module decides them.

A grid cell is (similarity level, K sources, N images per source). Its multi-source model learns
the K sources of the level together; a single-source model learns one source alone. A source's
N images are the same in every dataset that holds it (dataset_tool draws them from the seed and
the class only), so one single-source model per (source, N, training seed) serves every cell
that contains that source. Every model is scored source by source against that source's
held-out reference statistics.
"""

import csv
import io
import itertools
import math

import numpy as np

from torch_utils import util
from training import digits

#----------------------------------------------------------------------------
# Similarity levels.

# ImageNet (the Multi-Source-GM study): ten class ids each, 171 (Italian greyhound, the source
# every level shares) first; the first K are a level's K sources. The study's scripts call them
# sim3/sim2/sim1 (higher = more similar to 171), its Python code level1/level2/level3.
IMAGENET_LEVELS = {
    'sim3': [171, 182, 198, 208, 215, 231, 236, 244, 245, 258], # ten dog breeds
    'sim2': [171, 269, 279, 283, 294, 330, 340, 366, 370, 386], # mammals
    'sim1': [171, 1, 18, 31, 46, 532, 579, 609, 849, 980],      # diverse
}
LEVEL_ALIASES = {'level1': 'sim3', 'level2': 'sim2', 'level3': 'sim1'}

# Built-in digits: 'similar' = the K digits whose class means (training split, pixels in [0, 1])
# are closest together, i.e. the K-subset with the least mean pairwise Euclidean distance between
# class means; 'diverse' = the one with the greatest. For K = 2, 3, 5: similar {3, 9}, {3, 8, 9},
# {1, 2, 3, 8, 9}; diverse {6, 7}, {0, 6, 7}, {0, 2, 4, 6, 7}.
DIGITS_LEVELS = ['similar', 'diverse']

def digits_level_classes(level, num_sources):
    """The digits of a level for K = num_sources (sorted), by brute force over all K-subsets."""
    if level not in DIGITS_LEVELS:
        raise ValueError(f'unknown digits level "{level}"; choose from {", ".join(DIGITS_LEVELS)}')
    if not 1 <= num_sources <= digits.NUM_CLASSES:
        raise ValueError(f'--sources {num_sources}: the digits have {digits.NUM_CLASSES} classes')
    x, y = digits.pixels('train')
    means = np.stack([x[y == c].mean(0) for c in range(digits.NUM_CLASSES)])
    dist = np.linalg.norm(means[:, None] - means[None], axis=-1)
    subsets = list(itertools.combinations(range(digits.NUM_CLASSES), num_sources))
    spread = [dist[np.ix_(s, s)].sum() for s in subsets] # Proportional to the mean pairwise distance.
    return list(subsets[int(np.argmin(spread) if level == 'similar' else np.argmax(spread))])

def level_classes(data, level, num_sources):
    """The original class ids of a level's K sources, in label order."""
    if data == 'digits':
        return digits_level_classes(level, num_sources)
    level = LEVEL_ALIASES.get(level.lower(), level.lower())
    if level not in IMAGENET_LEVELS:
        raise ValueError(f'unknown ImageNet level "{level}"; choose from {", ".join(IMAGENET_LEVELS)} (or level1..3)')
    if not 1 <= num_sources <= len(IMAGENET_LEVELS[level]):
        raise ValueError(f'--sources {num_sources}: a level has {len(IMAGENET_LEVELS[level])} sources')
    return IMAGENET_LEVELS[level][:num_sources]

#----------------------------------------------------------------------------
# The grid: every model once.

def grid_models(data, levels, num_sources, per_class, seeds):
    """The models of a grid, each once, multi-source ones first within each (N, seed):
    dicts with kind ('multi' or 'single'), classes (original ids), N, seed, name, and for
    multi-source models their level and K."""
    models = []
    for n, seed in itertools.product(per_class, seeds):
        singles = []
        for level, k in itertools.product(levels, num_sources):
            classes = level_classes(data, level, k)
            models.append(dict(kind='multi', level=level, K=k, N=n, seed=seed, classes=classes, name=f'{level}-{k}c-{n}-s{seed}'))
            singles += [c for c in classes if c not in singles]
        models += [dict(kind='single', N=n, seed=seed, classes=[c], name=f'src{c}-{n}-s{seed}') for c in sorted(singles)]
    return models

#----------------------------------------------------------------------------
# Summary: per-source records -> per-cell rows -> the paper's table and a figure.

CSV_FIELDS = ['level', 'K', 'N', 'source', 'kind', 'seed', 'metric', 'value']

def cell_records(models, scores):
    """One record per (cell, source, model kind, seed, metric): a single-source model's score of
    source c counts in every cell that holds c. `scores`: {model name: [score records]} with
    'metric', 'value' and 'source' (the original class id)."""
    rows = []
    cells = [m for m in models if m['kind'] == 'multi']
    singles = {(m['classes'][0], m['N'], m['seed']): m for m in models if m['kind'] == 'single'}
    for cell in cells:
        for source in cell['classes']:
            for kind, model in [('multi', cell), ('single', singles.get((source, cell['N'], cell['seed'])))]:
                for r in scores.get(model['name'] if model else None, []):
                    if r.get('source') == source:
                        rows.append(dict(level=cell['level'], K=cell['K'], N=cell['N'], source=source, kind=kind,
                            seed=cell['seed'], metric=r['metric'], value=r['value']))
    return rows

def write_text(path, text):
    with util.atomic_path(path) as tmp:
        with open(tmp, 'w', newline='') as f:
            f.write(text)

def write_csv(rows, path):
    """Rows in CSV_FIELDS order, written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())

def mean_and_error(values):
    """Mean and its standard error (sample std / sqrt(n); 0 for one value)."""
    values = np.asarray(values, dtype=np.float64)
    error = values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return float(values.mean()), float(error)

def is_accuracy(metric):
    return metric.endswith('_acc')

def summarize(rows, metric):
    """Per (level, K, N): the average over sources of the per-source value, for single and multi,
    as mean and standard error over the training seeds; and the change of multi against single
    with its error over seeds: relative, (multi - single) / single, for a distance; the difference
    in points for an accuracy."""
    table = {}
    keys = sorted({(r['level'], r['K'], r['N']) for r in rows if r['metric'] == metric}, key=lambda k: (k[0], k[2], k[1]))
    for key in keys:
        per_seed = {}
        for r in rows:
            if r['metric'] == metric and (r['level'], r['K'], r['N']) == key:
                per_seed.setdefault(r['seed'], {}).setdefault(r['kind'], []).append(r['value'])
        complete = [v for v in per_seed.values() if 'single' in v and 'multi' in v]
        if not complete:
            continue
        single = [np.mean(v['single']) for v in complete]
        multi = [np.mean(v['multi']) for v in complete]
        change = [m - s if is_accuracy(metric) else (m - s) / s for s, m in zip(single, multi)]
        table[key] = dict(single=mean_and_error(single), multi=mean_and_error(multi), change=mean_and_error(change), seeds=len(complete))
    return table

def markdown_table(table, metric):
    lines = [f'| level | K | N | single {metric} | multi {metric} | multi vs single | seeds |', '|---|---:|---:|---:|---:|---:|---:|']
    for (level, k, n), t in table.items():
        fmt = lambda pair: f'{pair[0]:.3f} ± {pair[1]:.3f}'
        unit = ' points' if is_accuracy(metric) else '%'
        change = f'{100 * t["change"][0]:+.1f}{unit} ± {100 * t["change"][1]:.1f}{unit}'
        lines.append(f'| {level} | {k} | {n} | {fmt(t["single"])} | {fmt(t["multi"])} | {change} | {t["seeds"]} |')
    return '\n'.join(lines) + '\n'

def plot(table, metric, path):
    """Average per-source `metric` against K, single and multi with standard-error bars: one
    panel per (N, level), saved to `path` (PNG)."""
    import matplotlib # pylint: disable=import-outside-toplevel
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt # pylint: disable=import-outside-toplevel
    levels = sorted({level for level, _, _ in table})
    ns = sorted({n for _, _, n in table})
    fig, axes = plt.subplots(len(ns), len(levels), figsize=(4 * len(levels), 3.2 * len(ns)), squeeze=False, sharey=True)
    for (i, n), (j, level) in itertools.product(enumerate(ns), enumerate(levels)):
        ax = axes[i][j]
        cells = sorted((k, t) for (lv, k, nn), t in table.items() if lv == level and nn == n)
        for kind, marker in [('single', 'o'), ('multi', 's')]:
            ax.errorbar([k for k, _ in cells], [t[kind][0] for _, t in cells], yerr=[t[kind][1] for _, t in cells],
                marker=marker, capsize=3, label=kind)
        ax.set_title(f'{level}, N = {n}')
        ax.set_xlabel('number of sources K')
        ax.set_xticks([k for k, _ in cells])
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f'average per-source {metric}')
    axes[0][0].legend()
    fig.tight_layout()
    with util.atomic_path(path) as tmp:
        fig.savefig(tmp, format='png', dpi=120)
    plt.close(fig)
