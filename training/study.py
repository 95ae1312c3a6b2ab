"""The multi-source study: does training on more sources help a *target* source, and how does
the help depend on the number of sources K, their similarity to the target and the number of
images N per source? run_study.py runs the steps; this module decides them and summarizes them.

Design (README, "The multi-source study"). For each target source, each similarity level names
the order in which companion sources join it; a K-source model learns the target and the first
K - 1 companions of the level, N images each; the single-source model (K = 1) learns the target
alone. Only the target is scored, always against the same reference, so that every comparison is
about one distribution. A replicate r draws every source's images with data seed r (the first N
of a seeded permutation of the class: the N = 20 images are part of the N = 40 ones) and trains
every model with seed r; comparisons are paired within a replicate.

Budgets are arms, reported side by side:
  steps       every model trains the base budget B: single and multi take the same number of
              optimizer steps (each source of a K-source model sees 1/K of them);
  per-source  a K-source model trains K x B: every source gets the images a single-source
              model gets (K times the steps);
  preset      every model trains its preset's own duration (the ImageNet study's table).
The single-source model is also scored at 2 x B: when doubling its budget moves its score by
less than the score's own interval, it has converged and the steps arm does not starve it.
Warm-up and learning rate depend only on the images seen, never on the run's length, so the
snapshot at B of a longer run is exactly the model a run of length B gives: one run per model
serves every budget (run_study.py trains each model once, to its longest budget).

The floor of each metric (real images of the target, resampled to the evaluation's sample size
and scored against the same reference) is reported next to every value.
"""

import csv
import io
import itertools
import math

import numpy as np

from torch_utils import util
from training import digits
from training.imagenet import IMAGENET_LEVELS, LEVEL_ALIASES

#----------------------------------------------------------------------------
# Similarity levels: the order in which companions join a target.

# ImageNet (the Multi-Source-GM study): IMAGENET_LEVELS and LEVEL_ALIASES, with the data code in
# training/imagenet.py.

# Built-in digits: the companions of a target digit ranked by the Euclidean distance between
# class means (every image of the class, pixels in [0, 1]): 'similar' takes the nearest first,
# 'dissimilar' the farthest first. For the default target 3: similar 9, 8, 2, ...; dissimilar
# 4, 6, 0, ... (README). Listed from the most to the least similar.
DIGITS_LEVELS = ['similar', 'dissimilar']

def digits_companions(target, level):
    """The other nine digits in the order they join `target` at `level`."""
    if level not in DIGITS_LEVELS:
        raise ValueError(f'unknown digits level "{level}"; choose from {", ".join(DIGITS_LEVELS)}')
    if not 0 <= target < digits.NUM_CLASSES:
        raise ValueError(f'--targets {target}: the digits are 0..{digits.NUM_CLASSES - 1}')
    x, y = digits.pixels('all')
    means = np.stack([x[y == c].mean(0) for c in range(digits.NUM_CLASSES)])
    distance = np.linalg.norm(means - means[target], axis=1)
    others = [int(c) for c in np.argsort(distance, kind='stable') if c != target]
    return others if level == 'similar' else others[::-1]

def level_names(data):
    """The levels of a dataset, from the most to the least similar."""
    return list(DIGITS_LEVELS if data == 'digits' else IMAGENET_LEVELS)

def canonical_level(data, level):
    if data == 'digits':
        if level not in DIGITS_LEVELS:
            raise ValueError(f'unknown digits level "{level}"; choose from {", ".join(DIGITS_LEVELS)}')
        return level
    name = LEVEL_ALIASES.get(level.lower(), level.lower())
    if name not in IMAGENET_LEVELS:
        raise ValueError(f'unknown ImageNet level "{level}"; choose from {", ".join(IMAGENET_LEVELS)} (or level1..3)')
    return name

def sources_of(data, target, level, num_sources):
    """The original class ids of a K-source model: the target, then the level's first K - 1
    companions (in label order)."""
    level = canonical_level(data, level)
    companions = digits_companions(target, level) if data == 'digits' else [c for c in IMAGENET_LEVELS[level] if c != target]
    if not 1 <= num_sources <= len(companions) + 1:
        raise ValueError(f'--sources {num_sources}: level {level} gives at most {len(companions) + 1} sources')
    return [target] + companions[:num_sources - 1]

def level_classes(level, num_sources):
    """An ImageNet level's first K class ids (171 and its companions), as the launchers use them."""
    return sources_of('imagenet', IMAGENET_LEVELS[canonical_level('imagenet', level)][0], level, num_sources)

#----------------------------------------------------------------------------
# The grid: every model once, with the budgets at which it is scored.

ARMS = ['steps', 'per-source', 'preset']

def budgets(num_sources, arms, base=None, preset_nimg=None):
    """{budget name: images} at which a model of K sources is scored. A single-source model has
    'base' (B, what every budget arm compares with) and 'doubled' (2 B: the convergence check);
    a multi-source model one entry per arm. With the preset arm, 'preset' (its own duration)."""
    points = {}
    if any(arm in arms for arm in ['steps', 'per-source']):
        if not base:
            raise ValueError('the steps and per-source arms need a base budget (--budget)')
        if num_sources == 1:
            points.update(base=base, doubled=2 * base)
        else:
            points.update({arm: nimg for arm, nimg in [('steps', base), ('per-source', num_sources * base)] if arm in arms})
    if 'preset' in arms:
        points['preset'] = preset_nimg
    return points

def single_budget(arm):
    """The single-source score a multi-source arm compares with."""
    return 'preset' if arm == 'preset' else 'base'

def grid_models(data, targets, levels, num_sources, per_class, replicates):
    """The models of a grid, each once: dicts with kind ('single' or 'multi'), target, level
    (None for single), K, N, replicate, classes (original ids, target first) and name. Per
    (target, N, replicate): the single-source model, then one model per (level, K > 1)."""
    levels = [canonical_level(data, level) for level in levels]
    models = []
    for target, n, replicate in itertools.product(targets, per_class, replicates):
        models.append(dict(kind='single', target=target, level=None, K=1, N=n, replicate=replicate, classes=[target],
            name=f't{target}-single-{n}-r{replicate}'))
        for level, k in itertools.product(levels, sorted(k for k in set(num_sources) if k > 1)):
            models.append(dict(kind='multi', target=target, level=level, K=k, N=n, replicate=replicate,
                classes=sources_of(data, target, level, k), name=f't{target}-{level}-{k}c-{n}-r{replicate}'))
    return models

#----------------------------------------------------------------------------
# Records: one per score, in study.csv. kind: 'single', 'multi' or 'floor'; budget: which
# budget of the model (budgets() names) the score belongs to ('' for the floor, which depends
# only on the target and the replicate).

CSV_FIELDS = ['target', 'replicate', 'kind', 'level', 'K', 'N', 'budget', 'nimg', 'metric', 'value']

def write_text(path, text):
    with util.atomic_path(path) as tmp:
        with open(tmp, 'w', newline='') as f:
            f.write(text)

def write_csv(rows, path):
    """Rows in CSV_FIELDS order, written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction='ignore')
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())

def read_csv(path):
    """The rows of a study.csv, typed back (numbers as numbers, '' as None)."""
    with open(path, newline='') as f:
        rows = list(csv.DictReader(f))
    if not rows or set(CSV_FIELDS) - set(rows[0]):
        raise ValueError(f'{path}: not a study.csv (expected the columns {", ".join(CSV_FIELDS)})')
    typed = []
    for row in rows:
        row = {key: (None if row[key] == '' else row[key]) for key in CSV_FIELDS}
        for key in ['target', 'replicate', 'K', 'N', 'nimg']:
            row[key] = None if row[key] is None else int(row[key])
        row['value'] = float(row['value'])
        typed.append(row)
    return typed

#----------------------------------------------------------------------------
# Intervals: Student's t over the replicates (n - 1 degrees of freedom), 95% two-sided.

def t_interval(values, confidence=0.95):
    """(mean, half-width) of the confidence interval for the mean of `values`; the half-width is
    nan for fewer than two values (no interval)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()) if len(values) else math.nan, math.nan
    import scipy.stats # pylint: disable=import-outside-toplevel
    quantile = scipy.stats.t.ppf(0.5 + confidence / 2, df=len(values) - 1)
    return float(values.mean()), float(quantile * values.std(ddof=1) / math.sqrt(len(values)))

def verdict(interval, predicted_sign):
    """'holds' when the interval lies entirely on the predicted side of 0, 'opposite' when it
    lies entirely on the other side, 'undecided' when it contains 0 (or there is none)."""
    mean, half = interval
    if not math.isfinite(half):
        return 'undecided'
    low, high = mean - half, mean + half
    if (predicted_sign < 0 and high < 0) or (predicted_sign > 0 and low > 0):
        return 'holds'
    if (predicted_sign < 0 and low > 0) or (predicted_sign > 0 and high < 0):
        return 'opposite'
    return 'undecided'

#----------------------------------------------------------------------------
# Summary. Strict: a comparison uses exactly the replicates of the grid; one whose single,
# multi or floor scores miss a replicate is reported as incomplete (with what is missing) and
# never averaged over what happens to be there. Each metric is summarized on its own.

def _index(rows, metric):
    """{(kind, target, level, K, N, budget, replicate): value} of one metric; a duplicate key
    (two scores for one model and budget) is an error."""
    index = {}
    for r in rows:
        if r['metric'] != metric:
            continue
        key = (r['kind'], r['target'], r['level'], r['K'], r['N'], r['budget'], r['replicate'])
        if key in index:
            raise ValueError(f'two {metric} scores for {describe(key)}; the study folder mixes two runs')
        index[key] = r['value']
    return index

def describe(key):
    kind, target, level, k, n, budget, replicate = key
    if kind == 'floor':
        return f'the floor of target {target}, replicate {replicate}'
    model = f'{level} K={k}' if kind == 'multi' else 'single-source'
    return f'target {target} {model} N={n} ({budget} budget), replicate {replicate}'

def _paired(index, keys_by_role, replicates):
    """{role: [value per replicate]} when every key of every role has every replicate, else
    (None, [missing descriptions])."""
    missing = [describe(key + (r,)) for key in keys_by_role.values() for r in replicates if key + (r,) not in index]
    if missing:
        return None, missing
    return {role: [index[key + (r,)] for r in replicates] for role, key in keys_by_role.items()}, []

def comparisons(rows, metric, grid):
    """One entry per (target, N, arm, level, K > 1): single, multi and floor (t-intervals over
    the replicates), the ratio multi / single (the mean of the per-replicate ratios), the
    per-replicate values, or `missing`. `grid`: dict(targets, levels, num_sources, per_class,
    replicates, arms)."""
    index = _index(rows, metric)
    out = []
    for target, n, arm, level, k in itertools.product(grid['targets'], grid['per_class'], grid['arms'], grid['levels'],
            sorted(k for k in set(grid['num_sources']) if k > 1)):
        keys = dict(single=('single', target, None, 1, n, single_budget(arm)), multi=('multi', target, level, k, n, arm),
            floor=('floor', target, None, None, None, None))
        values, missing = _paired(index, keys, grid['replicates'])
        entry = dict(target=target, N=n, arm=arm, level=level, K=k, metric=metric, missing=missing)
        if values is not None:
            ratio = [m / s for s, m in zip(values['single'], values['multi'])]
            entry.update(values=dict(values, ratio=ratio), single=t_interval(values['single']), multi=t_interval(values['multi']),
                floor=t_interval(values['floor']), ratio=t_interval(ratio), n=len(grid['replicates']))
        out.append(entry)
    return out

def convergence(rows, metric, grid):
    """Per (target, N): the single-source score at B and at 2 B, the paired change, and a
    verdict: 'converged' when the whole interval of the change lies within plus or minus the
    half-width of the interval of the score at B (doubling the budget moves the score by less
    than the score's own uncertainty, and the replicates show it); otherwise 'improving' (the
    change is negative: at B it is under-trained, and the steps arm starves it) or 'worse' (more
    training hurts it: past its best, it overfits its few images)."""
    index = _index(rows, metric)
    out = []
    for target, n in itertools.product(grid['targets'], grid['per_class']):
        keys = dict(base=('single', target, None, 1, n, 'base'), doubled=('single', target, None, 1, n, 'doubled'))
        values, missing = _paired(index, keys, grid['replicates'])
        entry = dict(target=target, N=n, metric=metric, missing=missing)
        if values is not None:
            base, change = t_interval(values['base']), t_interval(np.subtract(values['doubled'], values['base']))
            converged = math.isfinite(base[1]) and math.isfinite(change[1]) and abs(change[0]) + change[1] <= base[1]
            entry.update(base=base, doubled=t_interval(values['doubled']), change=change,
                verdict='converged' if converged else 'improving' if change[0] < 0 else 'worse')
        out.append(entry)
    return out

def theory(entries):
    """The Gaussian analysis: a target sharing a fraction b of its structure with every other
    source has multi / single error (1 - b) + b / K. Per (target, level, N, arm): b fitted per
    replicate from the smallest K > 1 (b = (1 - ratio) / (1 - 1 / K)), the predicted ratio of
    every larger K next to the measured one, and their paired difference (t-intervals)."""
    out = []
    complete = [e for e in entries if 'ratio' in e]
    for key, group in itertools.groupby(sorted(complete, key=lambda e: (e['target'], e['level'], e['N'], e['arm'], e['K'])),
            key=lambda e: (e['target'], e['level'], e['N'], e['arm'])):
        group = list(group)
        if len(group) < 2:
            continue
        fit = group[0]
        shared = [(1 - q) / (1 - 1 / fit['K']) for q in fit['values']['ratio']]
        for e in group[1:]:
            predicted = [(1 - b) + b / e['K'] for b in shared]
            out.append(dict(zip(['target', 'level', 'N', 'arm'], key), metric=e['metric'], fit_K=fit['K'], K=e['K'],
                shared=t_interval(shared), predicted=t_interval(predicted), measured=e['ratio'],
                difference=t_interval(np.subtract(e['values']['ratio'], predicted))))
    return out

def predictions(entries, levels, per_class):
    """The theory's four qualitative predictions, each tested per comparison with a paired
    t-interval over the replicates: (name, where, interval, verdict).
      helps: multi / single < 1 (sharing lowers the target's error);
      more sources: ratio(K largest) - ratio(K smallest) < 0;
      similar: ratio(most similar level) - ratio(least similar level) < 0;
      N: gain(N smallest) - gain(N largest) > 0, gain = single - multi (absolute), since the
      predicted ratio itself does not depend on N."""
    complete = {(e['target'], e['level'], e['K'], e['N'], e['arm']): e for e in entries if 'ratio' in e}
    out = []
    for (target, level, k, n, arm), e in complete.items():
        below_one = t_interval(np.subtract(e['values']['ratio'], 1))
        out.append(('helps', f'target {target}, {level}, K={k}, N={n}, {arm}', below_one, verdict(below_one, -1)))
    ks = sorted({k for _, _, k, _, _ in complete})
    ns = sorted(set(per_class))
    for target, level, n, arm in sorted({(t, lv, n, a) for t, lv, _, n, a in complete}):
        small, large = complete.get((target, level, ks[0], n, arm)), complete.get((target, level, ks[-1], n, arm))
        if small and large and small is not large:
            diff = t_interval(np.subtract(large['values']['ratio'], small['values']['ratio']))
            out.append(('more sources', f'target {target}, {level}, K={ks[-1]} vs {ks[0]}, N={n}, {arm}', diff, verdict(diff, -1)))
    for target, k, n, arm in sorted({(t, k, n, a) for t, _, k, n, a in complete}):
        near, far = complete.get((target, levels[0], k, n, arm)), complete.get((target, levels[-1], k, n, arm))
        if near and far and near is not far:
            diff = t_interval(np.subtract(near['values']['ratio'], far['values']['ratio']))
            out.append(('similar', f'target {target}, {levels[0]} vs {levels[-1]}, K={k}, N={n}, {arm}', diff, verdict(diff, -1)))
    for target, level, k, arm in sorted({(t, lv, k, a) for t, lv, k, _, a in complete}):
        small, large = complete.get((target, level, k, ns[0], arm)), complete.get((target, level, k, ns[-1], arm))
        if small and large and small is not large:
            gain = lambda e: np.subtract(e['values']['single'], e['values']['multi'])
            diff = t_interval(gain(small) - gain(large))
            out.append(('N', f'target {target}, {level}, K={k}, N={ns[0]} vs {ns[-1]}, {arm}', diff, verdict(diff, +1)))
    return out

#----------------------------------------------------------------------------
# Markdown.

def _fmt(interval, digits_=3, scale=1.0):
    mean, half = interval
    if not math.isfinite(half):
        return f'{mean * scale:.{digits_}f}'
    return f'{mean * scale:.{digits_}f} ± {half * scale:.{digits_}f}'

def metric_scale(metric):
    """KID values are printed x 1000, as is usual."""
    return (1e3, ' (x1000)') if metric.startswith('kid') else (1.0, '')

def markdown(rows, metrics, grid):
    """The report: per metric the comparisons (with the floor and the theory's prediction), the
    convergence of the single-source models, and the four predictions with their verdicts."""
    levels = grid['levels']
    lines = [f'Replicates: {len(grid["replicates"])} ({", ".join(map(str, grid["replicates"]))}), each its own data draw and '
        'training seed; intervals: 95% Student t over the replicates (n - 1 degrees of freedom); ratio = mean over replicates '
        'of multi / single. Floor: real images of the target resampled to the same sample size, against the same reference.', '']
    for metric in metrics:
        scale, unit = metric_scale(metric)
        entries = comparisons(rows, metric, grid)
        predicted = {(t['target'], t['level'], t['N'], t['arm'], t['K']): t for t in theory(entries)}
        lines += [f'### {metric}{unit}', '', '| target | level | K | N | budget | single | multi | floor | multi / single | theory | n |',
            '|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|']
        for e in entries:
            head = f'| {e["target"]} | {e["level"]} | {e["K"]} | {e["N"]} | {e["arm"]} |'
            if e['missing']:
                lines.append(f'{head} incomplete: {len(e["missing"])} missing ({"; ".join(e["missing"][:3])}{"; ..." if len(e["missing"]) > 3 else ""}) | | | | | |')
                continue
            t = predicted.get((e['target'], e['level'], e['N'], e['arm'], e['K']))
            theory_text = f'{_fmt(t["predicted"], 2)} (b from K={t["fit_K"]})' if t else 'fit'
            lines.append(f'{head} {_fmt(e["single"], scale=scale)} | {_fmt(e["multi"], scale=scale)} | {_fmt(e["floor"], scale=scale)} | '
                f'{_fmt(e["ratio"], 2)} | {theory_text} | {e["n"]} |')
        conv = convergence(rows, metric, grid)
        if any(c['missing'] or 'change' in c for c in conv):
            lines += ['', 'Single-source models, base budget B against 2 B (converged: the whole interval of the change lies within the '
                'half-width of the interval of the score at B; improving: under-trained at B; worse: more training hurts it):', '',
                '| target | N | at B | at 2 B | change | verdict |', '|---:|---:|---:|---:|---:|---|']
            for c in conv:
                if c['missing']:
                    lines.append(f'| {c["target"]} | {c["N"]} | incomplete: {len(c["missing"])} missing | | | |')
                    continue
                lines.append(f'| {c["target"]} | {c["N"]} | {_fmt(c["base"], scale=scale)} | {_fmt(c["doubled"], scale=scale)} | '
                    f'{_fmt(c["change"], scale=scale)} | {c["verdict"]} |')
        tests = predictions(entries, levels, grid['per_class'])
        if tests:
            lines += ['', 'Predictions (paired differences; "holds" when the whole interval is on the predicted side):', '',
                '| prediction | comparison | difference | verdict |', '|---|---|---:|---|']
            for name, where, interval, result in tests:
                lines.append(f'| {name} | {where} | {_fmt(interval, 3, scale if name == "N" else 1.0)} | {result} |')
        lines.append('')
    return '\n'.join(lines) + '\n'

#----------------------------------------------------------------------------
# Figure: per metric (rows) and (arm, N) (columns), the paired ratio multi / single against K for
# each level (1 at K = 1 by definition), 95% intervals as error bars, the theory's prediction from
# the smallest K as open markers, and floor / single as a band: no model can go below it.

def plot(rows, metrics, grid, path):
    import matplotlib # pylint: disable=import-outside-toplevel
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt # pylint: disable=import-outside-toplevel
    columns = list(itertools.product(grid['arms'], grid['per_class']))
    fig, axes = plt.subplots(len(metrics), len(columns), figsize=(3.6 * len(columns), 3.0 * len(metrics)), squeeze=False)
    for (i, metric), (j, (arm, n)) in itertools.product(enumerate(metrics), enumerate(columns)):
        ax = axes[i][j]
        entries = [e for e in comparisons(rows, metric, grid) if e['arm'] == arm and e['N'] == n and 'ratio' in e]
        predicted = {(t['target'], t['level'], t['K']): t['predicted'] for t in theory(entries)}
        ax.axhline(1, color='0.3', lw=0.8)
        for target in grid['targets']:
            mine = [e for e in entries if e['target'] == target]
            if not mine:
                continue
            floor = t_interval(np.divide(mine[0]['values']['floor'], mine[0]['values']['single']))
            ax.axhspan(floor[0] - np.nan_to_num(floor[1]), floor[0] + np.nan_to_num(floor[1]), color='0.85', label='floor / single')
            for (level, marker), color in zip(zip(grid['levels'], 'osd^v'), ['C0', 'C1', 'C2', 'C3', 'C4']):
                cells = sorted((e['K'], e['ratio']) for e in mine if e['level'] == level)
                ax.errorbar([1] + [k for k, _ in cells], [1] + [r[0] for _, r in cells], yerr=[0] + [np.nan_to_num(r[1]) for _, r in cells],
                    marker=marker, color=color, capsize=3, label=level + (f' (target {target})' if len(grid['targets']) > 1 else ''))
                theory_points = [(k, predicted[target, level, k]) for k, _ in cells if (target, level, k) in predicted]
                if theory_points:
                    ax.errorbar([k + 0.12 for k, _ in theory_points], [p[0] for _, p in theory_points], yerr=[np.nan_to_num(p[1]) for _, p in theory_points],
                        marker=marker, mfc='none', ls='none', color=color, capsize=2, label=f'{level}: theory (1 - b) + b/K')
        ax.set_title(f'{arm} budget, N = {n}', fontsize=9)
        ax.set_xlabel('number of sources K')
        ax.set_xticks(sorted({1, *grid['num_sources']}))
        ax.set_ylabel(f'target {metric}: multi / single')
        ax.grid(alpha=0.3)
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(fontsize=6)
    targets = ', '.join(str(t) for t in grid['targets'])
    fig.suptitle(f'Target {targets}: multi / single, paired per replicate, mean and 95% t-interval over {len(grid["replicates"])} replicates. '
        'Budget "steps": the single-source model\'s training steps; "per-source": K times them. Grey: floor / single.', fontsize=9)
    fig.tight_layout()
    with util.atomic_path(path) as tmp:
        fig.savefig(tmp, format='png', dpi=110)
    plt.close(fig)

#----------------------------------------------------------------------------
