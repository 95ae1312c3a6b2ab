"""training/study.py and run_study.py: the similarity levels, which models a grid trains (every
single-source model once), how per-source scores become the paper's table (checked against
numbers computed by hand), and the driver's commands."""

import itertools
import json

import numpy as np
import pytest
from click.testing import CliRunner

import run_study
from training import digits
from training import study

def test_digits_levels_are_the_closest_and_farthest_class_means():
    x, y = digits.pixels('train')
    means = [x[y == c].mean(0) for c in range(10)]
    mean_distance = lambda s: np.mean([np.linalg.norm(means[a] - means[b]) for a, b in itertools.combinations(s, 2)])
    for k in [2, 3, 5]:
        all_sets = list(itertools.combinations(range(10), k))
        assert study.digits_level_classes('similar', k) == list(min(all_sets, key=mean_distance))
        assert study.digits_level_classes('diverse', k) == list(max(all_sets, key=mean_distance))
    # The documented sets (README, study/digits.sh).
    assert [study.digits_level_classes('similar', k) for k in [2, 3, 5]] == [[3, 9], [3, 8, 9], [1, 2, 3, 8, 9]]
    assert [study.digits_level_classes('diverse', k) for k in [2, 3, 5]] == [[6, 7], [0, 6, 7], [0, 2, 4, 6, 7]]
    with pytest.raises(ValueError, match='unknown digits level'):
        study.digits_level_classes('near', 2)

def test_imagenet_levels():
    assert study.level_classes('imagenet', 'sim3', 3) == [171, 182, 198]
    assert study.level_classes('imagenet', 'level3', 2) == [171, 1] # The study's code numbers them the other way.
    with pytest.raises(ValueError, match='a level has 10 sources'):
        study.level_classes('imagenet', 'sim1', 11)

def test_grid_trains_every_single_source_model_once():
    models = study.grid_models('digits', ['similar', 'diverse'], [2, 3, 5], [20, 80], [0, 1])
    multi = [m for m in models if m['kind'] == 'multi']
    singles = [m for m in models if m['kind'] == 'single']
    assert len(multi) == 2 * 3 * 2 * 2 and len(singles) == 9 * 2 * 2 # Digits 1,2,3,8,9 and 0,2,4,6,7: nine.
    assert len({m['name'] for m in models}) == len(models)
    assert sorted(m['classes'][0] for m in singles if m['N'] == 20 and m['seed'] == 0) == [0, 1, 2, 3, 4, 6, 7, 8, 9]

def test_summary_against_hand_computed_numbers():
    models = [dict(kind='multi', level='similar', K=2, N=20, seed=s, classes=[3, 9], name=f'm{s}') for s in [0, 1]]
    models += [dict(kind='single', N=20, seed=s, classes=[c], name=f's{c}-{s}') for c in [3, 9] for s in [0, 1]]
    fd = {('m0', 3): 1.0, ('m0', 9): 2.0, ('m1', 3): 1.2, ('m1', 9): 1.8,
        ('s3-0', 3): 2.0, ('s9-0', 9): 2.0, ('s3-1', 3): 1.0, ('s9-1', 9): 3.0}
    scores = {}
    for (name, source), value in fd.items():
        scores.setdefault(name, []).append(dict(metric='fd_digits', value=value, source=source))
    rows = study.cell_records(models, scores)
    assert len(rows) == 8 and {r['kind'] for r in rows} == {'single', 'multi'}
    table = study.summarize(rows, 'fd_digits')[('similar', 2, 20)]
    # Seed 0: single (2 + 2) / 2 = 2, multi 1.5, change -25%; seed 1: single 2, multi 1.5, change -25%.
    assert table['single'] == pytest.approx((2.0, 0.0)) and table['multi'] == pytest.approx((1.5, 0.0))
    assert table['change'] == pytest.approx((-0.25, 0.0)) and table['seeds'] == 2
    scores['m1'][0]['value'] = 2.2 # Seed 1's multi mean becomes 2.0: change 0; mean -12.5%, error 12.5%.
    table = study.summarize(study.cell_records(models, scores), 'fd_digits')[('similar', 2, 20)]
    assert table['change'] == pytest.approx((-0.125, 0.125))
    assert '| similar | 2 | 20 | 2.000 ± 0.000 | 1.750 ± 0.250 | -12.5% ± 12.5% | 2 |' in study.markdown_table({('similar', 2, 20): table}, 'fd_digits')

def test_grid_dry_run_lists_the_models(tmp_path):
    result = CliRunner().invoke(run_study.cmdline, ['grid', '--data', 'digits', '--out', str(tmp_path / 's'), '--quick', '--dry-run'])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == 'similar-2c-20-s0: classes 3,9' and len(result.output.splitlines()) == 10
    result = CliRunner().invoke(run_study.cmdline, ['grid', '--data', 'imagenet', '--out', str(tmp_path / 's'), '--levels', 'sim2'])
    assert result.exit_code == 1 and '--source: the ImageNet training folder' in result.output
    result = CliRunner().invoke(run_study.cmdline, ['report', '--data', 'digits', '--out', str(tmp_path / 'none'), '--quick'])
    assert result.exit_code == 1 and 'no scores yet' in result.output
    assert not (tmp_path / 's').exists()

def test_several_nodes_run_the_same_distributed_commands(tmp_path, monkeypatch):
    # compare_single_vs_multi.sh on two machines: each node runs the same grid; node 0 builds the
    # data, the other waits for it; both run the same torchrun command lines (one rendezvous port
    # per command, node 0 holding global rank 0, which alone writes the scores). The commands are
    # recorded, not run (bash_files/ runs such torchrun commands across two nodes for real).
    import os
    models = run_study.grid_models('digits', 'similar', '2', '20', '0', False)
    commands = {}
    for rank in [1, 0]:
        calls = commands[rank] = []
        def record(args, log=None, threads=None):
            calls.append(args)
            if '--results' in args: # What calculate_metrics.py's rank 0 would write.
                open(args[args.index('--results') + 1], 'w').close()
        monkeypatch.setattr(run_study, 'run', record)
        study_ = run_study.Study(str(tmp_path / str(rank)), 'digits', nodes=dict(nnodes=2, node_rank=rank, master_addr='10.0.0.1', master_port=29500))
        if rank == 1: # Node 0's data: node 1 waits for these files before its first command.
            for path in [study_.reference(c) for m in models for c in m['classes']] + [study_.dataset(m) for m in models]:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                open(path, 'w').close()
        study_.run_grid(models)
    torchrun = lambda calls: [c for c in calls if 'torch.distributed.run' in c]
    assert [c for c in commands[1] if c not in torchrun(commands[1])] == [] # Node 1 builds nothing.
    assert any('dataset_tool.py' in ' '.join(c) for c in commands[0])
    assert len(torchrun(commands[0])) == len(torchrun(commands[1])) == 2 * len(models) # Train and score each model.
    for ports, (a, b) in enumerate(zip(torchrun(commands[0]), torchrun(commands[1]))):
        assert a[:a.index('--')] == [arg.replace('--node-rank=1', '--node-rank=0') for arg in b[:b.index('--')]]
        assert f'--master-port={29500 + ports}' in a and '--nnodes=2' in a and '--master-addr=10.0.0.1' in a
        strip = lambda c: [arg.replace(str(tmp_path / '0'), '').replace(str(tmp_path / '1'), '') for arg in c[c.index('--'):]]
        assert strip(a)[:len(strip(b))] == strip(b) and ('--results' in a) == ('gen' in a) and '--results' not in b
    result = CliRunner().invoke(run_study.cmdline, ['grid', '--data', 'digits', '--out', str(tmp_path / 'x'), '--nnodes', '2', '--node-rank', '1'])
    assert result.exit_code == 1 and 'need --master-addr' in result.output
