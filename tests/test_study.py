"""training/study.py and run_study.py: the companions of a target, which models a grid trains
and at which budgets (the step counts the README documents), the strict summary (missing arms,
missing replicates, mixed metrics), the intervals against scipy, the theory's fit and prediction
against hand-computed numbers, and the driver's refusals (other settings, bad options)."""

import itertools
import json
import math
import os

import numpy as np
import pytest
import scipy.stats
from click.testing import CliRunner

import run_study
from helpers import expect_cli_error
from training import digits
from training import study

#----------------------------------------------------------------------------
# Levels and the grid.

def test_digits_companions_are_ranked_by_class_mean_distance():
    x, y = digits.pixels('all')
    means = [x[y == c].mean(0) for c in range(10)]
    for target in range(10):
        by_distance = sorted((c for c in range(10) if c != target), key=lambda c: np.linalg.norm(means[c] - means[target]))
        assert study.digits_companions(target, 'similar') == by_distance
        assert study.digits_companions(target, 'dissimilar') == by_distance[::-1]
    # The documented sources of the default target (README, bash_files/study/digits.sh).
    assert [study.sources_of('digits', 3, level, k) for level in ['similar', 'dissimilar'] for k in [1, 2, 4]] == \
        [[3], [3, 9], [3, 9, 8, 2], [3], [3, 4], [3, 4, 6, 0]]
    with pytest.raises(ValueError, match='unknown digits level'):
        study.sources_of('digits', 3, 'near', 2)
    with pytest.raises(ValueError, match='at most 10 sources'):
        study.sources_of('digits', 3, 'similar', 11)

def test_imagenet_levels():
    assert study.sources_of('imagenet', 171, 'sim3', 3) == [171, 182, 198]
    assert study.sources_of('imagenet', 171, 'level3', 2) == [171, 1] # The study's code numbers them the other way.
    assert study.level_classes('sim2', 2) == [171, 269]
    with pytest.raises(ValueError, match='at most 10 sources'):
        study.sources_of('imagenet', 171, 'sim1', 11)

def test_grid_models():
    models = study.grid_models('digits', [3], ['similar', 'dissimilar'], [1, 2, 4], [20, 40], [0, 1, 2])
    assert len(models) == 2 * 3 * (1 + 2 * 2) and len({m['name'] for m in models}) == len(models)
    assert models[0] == dict(kind='single', target=3, level=None, K=1, N=20, replicate=0, classes=[3], name='t3-single-20-r0')
    assert models[4] == dict(kind='multi', target=3, level='dissimilar', K=4, N=20, replicate=0, classes=[3, 4, 6, 0], name='t3-dissimilar-4c-20-r0')

def test_budgets_give_the_documented_step_counts(tmp_path):
    # Base budget 32Ki images at batch 64 = 512 steps. Single: 512 (base) and 1024 (doubled); a
    # K-source model: 512 in the steps arm and K x 512 in the per-source arm; one run per model to
    # its longest budget, with a snapshot at each.
    grid, models = run_study.make_grid('digits', None, None, None, None, '0', None, False)
    the_study = run_study.Study(str(tmp_path / 's'), 'digits', grid)
    steps = {m['name']: {b: nimg // 64 for b, nimg in the_study.budgets(m).items()} for m in models}
    assert steps == {'t3-single-20-r0': dict(base=512, doubled=1024), 't3-single-40-r0': dict(base=512, doubled=1024),
        **{f't3-{level}-{k}c-{n}-r0': {'steps': 512, 'per-source': 512 * k} for level in ['similar', 'dissimilar'] for k in [2, 4] for n in [20, 40]}}
    four = next(m for m in models if m['name'] == 't3-similar-4c-20-r0')
    options, overrides = the_study.train_options(four)
    assert (options['duration'], options['snapshot'], options['batch'], options['seed']) == (4 * 32768, 32768, 64, 0)
    assert overrides == ['rampup=0.002048'] # A 2Ki warm-up: 1/16 of the base budget.
    assert the_study.snapshot(four, 2 * 32768).endswith('network-snapshot-0000065-0.100.pkl')
    with pytest.raises(ValueError, match='base budget'):
        study.budgets(2, ['steps'], base=None)
    assert study.budgets(3, ['preset'], preset_nimg=5) == dict(preset=5)

#----------------------------------------------------------------------------
# Summary.

GRID = dict(targets=[3], levels=['similar', 'dissimilar'], num_sources=[1, 2, 4], per_class=[20, 40], replicates=[0, 1, 2], arms=['steps'])

def rows_for(values, metric='fd_digits'):
    """study.csv rows from {(kind, level, K, N, budget, replicate): value}."""
    return [dict(target=3, replicate=r, kind=kind, level=level, K=k, N=n, budget=budget, nimg=None, metric=metric, value=v)
        for (kind, level, k, n, budget, r), v in values.items()]

def full_values(seed=0):
    rng = np.random.RandomState(seed)
    values = {}
    for r in GRID['replicates']:
        values['floor', None, None, None, None, r] = 0.1 + 0.01 * rng.rand()
        for n in GRID['per_class']:
            values['single', None, 1, n, 'base', r] = 1.0 + rng.rand()
            values['single', None, 1, n, 'doubled', r] = 1.0 + rng.rand()
            for level, k in itertools.product(GRID['levels'], [2, 4]):
                values['multi', level, k, n, 'steps', r] = 0.5 + rng.rand()
    return values

def test_t_interval_matches_scipy():
    values = [0.3, 0.7, 0.4, 0.9]
    mean, half = study.t_interval(values)
    low, high = scipy.stats.t.interval(0.95, df=3, loc=np.mean(values), scale=scipy.stats.sem(values))
    assert (mean - half, mean + half) == pytest.approx((low, high), rel=1e-12)
    assert math.isnan(study.t_interval([0.5])[1]) # One value: no interval.
    assert [study.verdict(i, -1) for i in [(-2, 1), (2, 1), (0.5, 1), (1, math.nan)]] == ['holds', 'opposite', 'undecided', 'undecided']

def test_markdown_reports_each_metric_with_its_own_numbers():
    # Two metrics in one CSV: each section of study.md shows that metric's own single/multi means
    # (a report that printed the first metric's numbers under every heading passed before).
    first, second = full_values(0), full_values(1)
    rows = rows_for(first, 'fd_digits') + rows_for(second, 'kid_digits')
    text = study.markdown(rows, ['fd_digits', 'kid_digits'], GRID)
    fd, kid = text.split('### fd_digits\n')[1].split('### kid_digits (x1000)\n')
    for section, values, scale in [(fd, first, 1.0), (kid, second, 1e3)]:
        single = study.t_interval([values['single', None, 1, 20, 'base', r] for r in range(3)])
        multi = study.t_interval([values['multi', 'similar', 2, 20, 'steps', r] for r in range(3)])
        assert f'| 3 | similar | 2 | 20 | steps | {study._fmt(single, scale=scale)} | {study._fmt(multi, scale=scale)} |' in section

def test_summary_against_hand_computed_numbers():
    values = full_values()
    entries = study.comparisons(rows_for(values), 'fd_digits', GRID)
    assert len(entries) == 2 * 2 * 2 # N x levels x K > 1 (one arm)
    e = next(e for e in entries if (e['level'], e['K'], e['N']) == ('similar', 4, 40))
    single = [values['single', None, 1, 40, 'base', r] for r in range(3)]
    multi = [values['multi', 'similar', 4, 40, 'steps', r] for r in range(3)]
    ratio = [m / s for s, m in zip(single, multi)]
    t = scipy.stats.t.ppf(0.975, 2)
    assert e['ratio'] == pytest.approx((np.mean(ratio), t * np.std(ratio, ddof=1) / np.sqrt(3)), rel=1e-12)
    assert e['single'][0] == pytest.approx(np.mean(single)) and e['multi'][0] == pytest.approx(np.mean(multi)) and e['n'] == 3 and not e['missing']
    # The theory: b from K = 2 per replicate, (1 - b) + b / 4 predicted for K = 4.
    predicted = {(t_['level'], t_['N']): t_ for t_ in study.theory(entries)}
    two = [values['multi', 'similar', 2, 40, 'steps', r] / values['single', None, 1, 40, 'base', r] for r in range(3)]
    b = [2 * (1 - q) for q in two]
    assert predicted['similar', 40]['shared'][0] == pytest.approx(np.mean(b))
    assert predicted['similar', 40]['predicted'][0] == pytest.approx(np.mean([1 - b_ + b_ / 4 for b_ in b]))
    assert predicted['similar', 40]['difference'][0] == pytest.approx(np.mean(ratio) - np.mean([1 - b_ + b_ / 4 for b_ in b]))
    # Convergence: the change from B to 2 B against the interval of the score at B.
    conv = {c['N']: c for c in study.convergence(rows_for(values), 'fd_digits', GRID)}
    base = [values['single', None, 1, 20, 'base', r] for r in range(3)]
    change = np.subtract([values['single', None, 1, 20, 'doubled', r] for r in range(3)], base)
    assert conv[20]['change'] == pytest.approx(study.t_interval(change))
    converged = abs(np.mean(change)) + study.t_interval(change)[1] <= study.t_interval(base)[1]
    assert conv[20]['verdict'] == ('converged' if converged else 'improving' if np.mean(change) < 0 else 'worse')
    # The three verdicts, on numbers made for them.
    for shift, expected in [(0.0, 'converged'), (-3.0, 'improving'), (3.0, 'worse')]: # The base's half-width is about 1.2.
        moved = values | {('single', None, 1, 20, 'doubled', r): values['single', None, 1, 20, 'base', r] + shift + 0.001 * r for r in range(3)}
        assert {c['N']: c for c in study.convergence(rows_for(moved), 'fd_digits', GRID)}[20]['verdict'] == expected

def test_summary_is_strict():
    values = full_values()
    # A missing arm (no multi model of one cell), a missing replicate, a missing floor.
    del values['multi', 'similar', 2, 20, 'steps', 1]
    del values['single', None, 1, 40, 'base', 2]
    entries = {(e['level'], e['K'], e['N']): e for e in study.comparisons(rows_for(values), 'fd_digits', GRID)}
    assert entries['similar', 2, 20]['missing'] == ['target 3 similar K=2 N=20 (steps budget), replicate 1'] and 'ratio' not in entries['similar', 2, 20]
    assert all(e['missing'] == ['target 3 single-source N=40 (base budget), replicate 2'] for key, e in entries.items() if key[2] == 40)
    assert 'ratio' in entries['similar', 4, 20] and 'ratio' in entries['dissimilar', 2, 20]
    text = study.markdown(rows_for(values), ['fd_digits'], GRID)
    assert '| 3 | similar | 2 | 20 | steps | incomplete: 1 missing (target 3 similar K=2 N=20 (steps budget), replicate 1) |' in text
    values = full_values()
    del values['floor', None, None, None, None, 0]
    assert all(e['missing'] == ['the floor of target 3, replicate 0'] for e in study.comparisons(rows_for(values), 'fd_digits', GRID))
    # Two metrics in one CSV: each summarized on its own values only.
    first, second = full_values(0), full_values(1)
    rows = rows_for(first, 'fd_digits') + rows_for(second, 'kid_digits')
    for metric, values in [('fd_digits', first), ('kid_digits', second)]:
        e = next(e for e in study.comparisons(rows, metric, GRID) if (e['level'], e['K'], e['N']) == ('similar', 2, 20))
        assert e['single'][0] == pytest.approx(np.mean([values['single', None, 1, 20, 'base', r] for r in range(3)]), rel=1e-12)
    # The same score twice (two runs mixed in one folder) is refused.
    with pytest.raises(ValueError, match='two fd_digits scores'):
        study.comparisons(rows_for(first) + rows_for(first)[:1], 'fd_digits', GRID)

def test_predictions_and_their_verdicts():
    values = {}
    for r in range(3):
        values['floor', None, None, None, None, r] = 0.1
        for n, level, k in itertools.product([20, 40], ['similar', 'dissimilar'], [2, 4]):
            single = 2.0 if n == 20 else 1.0
            values['single', None, 1, n, 'base', r] = single
            # Ratios: similar 0.6 (K=2), 0.4 (K=4); dissimilar 0.9, 0.8; the same at both N, with replicate noise.
            ratio = {('similar', 2): 0.6, ('similar', 4): 0.4, ('dissimilar', 2): 0.9, ('dissimilar', 4): 0.8}[level, k] + 0.01 * (r - 1)
            values['multi', level, k, n, 'steps', r] = single * ratio
    grid = dict(GRID, levels=['similar', 'dissimilar'])
    tests = study.predictions(study.comparisons(rows_for(values), 'fd_digits', grid), grid['levels'], grid['per_class'])
    verdicts = {(name, where): result for name, where, _, result in tests}
    assert all(result == 'holds' for (name, _), result in verdicts.items() if name in ['helps', 'more sources', 'similar'])
    assert verdicts['N', 'target 3, similar, K=2, N=20 vs 40, steps'] == 'holds' # Gain 0.8 at N = 20, 0.4 at N = 40.
    assert len([t for t in tests if t[0] == 'helps']) == 8 and len([t for t in tests if t[0] == 'N']) == 4

#----------------------------------------------------------------------------
# The driver.

def invoke(args):
    return CliRunner().invoke(run_study.cmdline, [str(a) for a in args])

def test_dry_run_lists_the_models_and_checks_every_option(tmp_path):
    out = tmp_path / 's'
    result = invoke(['grid', '--data', 'digits', '--out', out, '--quick', '--dry-run'])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[:3] == ['0: t3-single-20-r0: sources 3; scored at base 32Ki, doubled 64Ki; snapshots every 32Ki',
        '1: t3-similar-2c-20-r0: sources 3,9; scored at steps 32Ki, per-source 64Ki; snapshots every 32Ki',
        '2: t3-dissimilar-2c-20-r0: sources 3,4; scored at steps 32Ki, per-source 64Ki; snapshots every 32Ki'] and len(lines) == 9
    for args, fragments in [(['--preset', 'bogus'], ['unknown preset "bogus"']), (['--set', 'bogus=1'], ['option "bogus" does not apply']),
            (['--set', 'num_blocks=abc'], ['num_blocks', 'an integer']), (['--budget', '1000'], ['not a multiple of the batch size 64']),
            (['--budget', 'soon'], ['Invalid image count']), (['--arms', 'steps,cheap'], ['unknown arm']),
            (['--sources', '2,4'], ['must include 1']), (['--per-class', '100'], ['at most 80']), (['--task', '9'], ['9 models'])]:
        expect_cli_error(invoke(['grid', '--data', 'digits', '--out', out, '--quick', '--dry-run', *args]), *fragments)
    expect_cli_error(invoke(['grid', '--data', 'imagenet', '--out', out, '--levels', 'sim2']), '--source: the ImageNet training folder')
    # The default ImageNet grid passes its own checks (each snapshot interval whole batches: the
    # 10-source, 1000-image model trains at batch 6144 to 1536Mi, snapshots every 48Mi).
    result = invoke(['grid', '--data', 'imagenet', '--source', tmp_path / 'imagenet', '--out', out, '--dry-run'])
    assert result.exit_code == 0, result.output
    lines = {line.split(': ')[1]: line.split('; ', 1)[1] for line in result.output.splitlines()}
    assert len(lines) == 30 and lines['t171-sim3-10c-1000-r0'] == 'scored at preset 1536Mi; snapshots every 48Mi'
    assert lines['t171-sim3-5c-1000-r0'] == 'scored at preset 192Mi; snapshots every 16Mi'
    expect_cli_error(invoke(['report', '--data', 'digits', '--out', tmp_path / 'none', '--quick']), 'no study here')
    assert not out.exists() and not (tmp_path / 'none').exists()

def fake_tools(monkeypatch):
    """run_study.run replaced: records each command, leaves an empty file where it names an output."""
    commands = []
    def fake_run(args, log=None, threads=None):
        commands.append(' '.join(map(str, args)))
        for option in ['--dest', '--results']:
            if option in args:
                os.makedirs(os.path.dirname(args[args.index(option) + 1]), exist_ok=True)
                open(args[args.index(option) + 1], 'w').close()
    monkeypatch.setattr(run_study, 'run', fake_run)
    return commands

def test_each_replicate_draws_its_own_data_and_seeds_its_training(tmp_path, monkeypatch):
    commands = fake_tools(monkeypatch)
    grid, models = run_study.make_grid('digits', None, None, '1,4', '20', '0-2', None, False)
    the_study = run_study.Study(str(tmp_path), 'digits', grid)
    model = next(m for m in models if m['name'] == 't3-dissimilar-4c-20-r2')
    the_study.prepare([model])
    the_study.train_and_score(model)
    convert = [c for c in commands if 'dataset_tool.py convert' in c]
    assert [c.split('--dest ')[1].split()[0] for c in convert] == [f'{tmp_path}/refs/images/t3-p80-r2.zip', f'{tmp_path}/data/c3-n80-r2.zip',
        f'{tmp_path}/data/c3-4-6-0-n20-r2.zip']
    assert all('--seed 2 ' in c for c in convert) and '--classes 3 --per-class 80 --seed 2 --held-out' in convert[0]
    assert '--classes 3,4,6,0 --per-class 20 --seed 2' in convert[2]
    floor = next(c for c in commands if 'calculate_metrics.py floor' in c)
    assert f'--data {tmp_path}/data/c3-n80-r2.zip --ref {tmp_path}/refs/t3-p80-r2.pkl' in floor and '--num 300 --draws 20 --seed 2' in floor
    train = next(c for c in commands if 'train_edm2.py' in c)
    assert '--seed 2 ' in train and '--duration 131072 --snapshot 32768' in train
    scores = [c for c in commands if 'calculate_metrics.py gen' in c]
    assert [c.split('--net ')[1].split()[0].rsplit('/', 1)[1] for c in scores] == ['network-snapshot-0000032-0.100.pkl', 'network-snapshot-0000131-0.100.pkl']
    assert all(f'--class id:3 --ref {tmp_path}/refs/t3-p80-r2.pkl' in c and '--num 300 --steps 16' in c for c in scores)

def test_a_folder_holds_one_set_of_settings(tmp_path, monkeypatch):
    # The first run records its settings; a re-run with other ones is refused before any work,
    # naming what changed; a score made with other settings is refused by the report.
    out = tmp_path / 's'
    commands = fake_tools(monkeypatch)
    result = invoke(['grid', '--data', 'digits', '--out', out, '--quick', '--replicates', '0', '--task', '0'])
    assert result.exit_code == 0, result.output
    recorded = json.loads((out / 'study.json').read_text())
    assert recorded['settings']['budget'] == 32768 and recorded['settings']['num'] == 300
    assert any('train_edm2.py' in c and '--duration 65536 --snapshot 32768' in c for c in commands)
    for args, fragment in [(['--budget', '16Ki'], 'budget was 32768, now 16384'), (['--num', '500'], 'num was 300, now 500'),
            (['--set', 'dropout=0'], "set_options was [], now ['dropout=0']")]:
        before = sorted(os.listdir(out))
        expect_cli_error(invoke(['grid', '--data', 'digits', '--out', out, '--quick', '--replicates', '0', *args]), fragment, 'another --out')
        assert sorted(os.listdir(out)) == before
    # A partial study: report lists what is missing and exits 1; a score of other settings is refused.
    assert sorted(os.listdir(out / 'scores')) == ['floor-t3-r0.jsonl', 't3-single-20-r0-base.jsonl', 't3-single-20-r0-doubled.jsonl']
    os.remove(out / 'scores' / 't3-single-20-r0-doubled.jsonl')
    record = dict(metric='fd_digits', value=0.5, settings='other')
    (out / 'scores' / 't3-single-20-r0-base.jsonl').write_text(json.dumps(record) + '\n')
    (out / 'scores' / 'floor-t3-r0.jsonl').write_text(json.dumps(dict(record, settings=recorded['digest'])) + '\n')
    expect_cli_error(invoke(['report', '--data', 'digits', '--out', out, '--quick', '--replicates', '0']), 't3-single-20-r0-base.jsonl', 'other settings')
    (out / 'scores' / 't3-single-20-r0-base.jsonl').write_text(json.dumps(dict(record, settings=recorded['digest'])) + '\n')
    result = invoke(['report', '--data', 'digits', '--out', out, '--quick', '--replicates', '0'])
    assert result.exit_code == 1 and 'INCOMPLETE: 5 scores missing: t3-single-20-r0 at its doubled budget; t3-similar-2c-20-r0 at its steps budget' in result.output

def test_several_nodes_run_the_same_distributed_commands(tmp_path, monkeypatch):
    # A study on two machines (compare_single_vs_multi.sh --nnodes 2): each node runs the same
    # grid; node 0 builds the data, the other waits for it; both run the same torchrun command
    # lines (one rendezvous port per command, node 0 holding global rank 0, which alone writes the
    # scores). The commands are recorded, not run (tests/test_bash_files.py runs such torchrun
    # commands across two nodes for real).
    commands = {}
    for rank in [1, 0]:
        calls = commands[rank] = []
        def record(args, log=None, threads=None):
            calls.append(args)
            for option in ['--dest', '--results']: # What the tool (its rank 0) would write.
                if option in args:
                    os.makedirs(os.path.dirname(args[args.index(option) + 1]), exist_ok=True)
                    open(args[args.index(option) + 1], 'w').close()
        monkeypatch.setattr(run_study, 'run', record)
        the_study, models = run_study.open_study('digits', str(tmp_path / str(rank)), None, 'similar', '1,2', '20', '0', None, False,
            nnodes=2, node_rank=rank, master_addr='10.0.0.1', master_port=29500, source=None, budget=None, num=None, preset=None,
            set_options=(), resolution=None, vae=None, gpus=1, batch_gpu=None, jobs=1, workers=1)
        if rank == 1: # Node 0's data: node 1 waits for these files before its first command.
            for path in [the_study.floor_scores(3, 0)] + [the_study.dataset(m['classes'], m['N'], 0) for m in models]:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                open(path, 'w').close()
        the_study.run_grid(models)
    torchrun = lambda calls: [c for c in calls if 'torch_utils.torchrun' in c]
    assert [c for c in commands[1] if c not in torchrun(commands[1])] == [] # Node 1 builds nothing.
    assert any('dataset_tool.py' in ' '.join(c) for c in commands[0])
    assert len(torchrun(commands[0])) == len(torchrun(commands[1])) == 2 * 3 # Each model trained once, scored at two budgets.
    for port, (a, b) in enumerate(zip(torchrun(commands[0]), torchrun(commands[1]))):
        assert a[:a.index('--')] == [arg.replace('--node-rank=1', '--node-rank=0') for arg in b[:b.index('--')]]
        assert f'--master-port={29500 + port}' in a and '--nnodes=2' in a and '--master-addr=10.0.0.1' in a
        strip = lambda c: [arg.replace(str(tmp_path / '0'), '').replace(str(tmp_path / '1'), '') for arg in c[c.index('--'):]]
        assert strip(a)[:len(strip(b))] == strip(b) and ('--results' in a) == ('gen' in a) and '--results' not in b
    expect_cli_error(invoke(['grid', '--data', 'digits', '--out', tmp_path / 'x', '--nnodes', 2, '--node-rank', 1]), 'need --master-addr')
