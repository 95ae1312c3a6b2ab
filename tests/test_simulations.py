"""simulations/: the conditional-Gaussian study (bounds, estimators, the TV estimator against its
closed form, densities, every published number, CSV output, plots, speed, command-line errors)."""

import csv
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import scipy.stats
import torch

from simulations import gaussian as G
from simulations import run_gaussian
from simulations import plot_gaussian_K, plot_gaussian_n, plot_gaussian_sim
from helpers import expect_cli_error, invoke

def test_bounds_formula():
    assert G.bounds(5, 10, 0.5, 500) == pytest.approx((math.sqrt(50 / 500), math.sqrt((4 * 5 + 10) / 500)))
    assert G.bounds(3, 10, 0.0, 100) == pytest.approx((math.sqrt(0.3), math.sqrt(0.3)))
    assert G.bounds(3, 10, 1.0, 100) == pytest.approx((math.sqrt(0.3), math.sqrt(0.1)))
    assert G.num_shared(10, 0.3) == 3 and G.num_shared(10, 0.7) == 7 and G.num_shared(7, 0.5) == 3
    r = G.run_one(3, 4, 6, 0.5, 200, num_test=50)
    assert r[G.BOUND_SINGLE] == pytest.approx(math.sqrt(24 / 200))
    assert r[G.BOUND_MULTI] == pytest.approx(math.sqrt((3 * 3 + 6) / 200))
    assert r[G.BOUND_ADV] == pytest.approx(r[G.BOUND_SINGLE] - r[G.BOUND_MULTI])

def test_true_means_and_sample_order():
    m = G.true_means(3, 4, 0.5)
    assert torch.equal(m, torch.tensor([[1., 1, 0, 0], [2, 2, 0, 0], [3, 3, 0, 0]]))
    # Draw order: multinomial labels, then randn per class in class order.
    torch.manual_seed(0)
    x, y = G.sample(m, 20)
    torch.manual_seed(0)
    y2 = torch.multinomial(torch.ones(3) / 3, 20, replacement=True)
    assert torch.equal(y, y2)
    for k in range(3):
        idx = (y2 == k).nonzero(as_tuple=True)[0]
        if len(idx):
            assert torch.equal(x[idx], torch.randn(len(idx), 4) + m[k])

@pytest.mark.parametrize('K,sim', [(5, 0.0), (1, 0.5), (1, 1.0)])
def test_single_equals_multi(K, sim):
    for seed in (3, 33):
        r = G.run_one(seed, K, 10, sim, 300)
        assert r[G.TV_SINGLE] == pytest.approx(r[G.TV_MULTI], abs=1e-6)
        if sim == 0:
            assert r[G.TV_ADV] == 0
    x, y = torch.randn(50, 4), torch.randint(0, 3, (50,))
    assert torch.equal(G.estimate_single(x, y, 3), G.estimate_multi(x, y, 3, 0))

def test_multi_estimator_pools_shared_dims():
    x, y = torch.randn(60, 6), torch.arange(60) % 3
    single, multi = G.estimate_single(x, y, 3), G.estimate_multi(x, y, 3, 2)
    assert torch.allclose(single[1], x[y == 1].mean(0))
    assert torch.equal(multi[:, :4], single[:, :4])
    assert torch.allclose(multi[:, 4:], x.mean(0)[4:].expand(3, 2))

@pytest.mark.parametrize('sim', [0.3, 0.5, 1.0])
def test_multi_below_single_on_average(sim):
    runs = [G.run_one(s, 5, 10, sim, 500) for s in G.SEEDS]
    assert np.mean([r[G.TV_MULTI] for r in runs]) < np.mean([r[G.TV_SINGLE] for r in runs])

def test_log_density_matches_torch_distributions():
    torch.manual_seed(1)
    means = torch.randn(4, 7) * 3
    x, y = torch.randn(100, 7) * 2, torch.randint(0, 4, (100,))
    ref = torch.distributions.Normal(means[y], 1.0).log_prob(x).sum(-1)
    assert torch.allclose(G.log_density(x, y, means), ref, atol=1e-4, rtol=1e-5)
    assert torch.allclose(G.log_density_naive(x[:10], y[:10], means), ref[:10], atol=1e-4, rtol=1e-5)
    # Same TV with either density implementation.
    assert G.run_one(5, 3, 4, 0.5, 100, num_test=30) == \
        G.run_one(5, 3, 4, 0.5, 100, num_test=30, log_density_fn=G.log_density_naive)

def test_tv_estimator_matches_closed_form():
    # TV(N(mu, I), N(mu_hat, I)) = 2 Phi(|mu_hat - mu| / 2) - 1. The estimator averages
    # 0.5 |p_hat / p - 1| over draws from p; its standard error is at most
    # 0.5 sqrt(E[(p_hat / p - 1)^2] / n) = 0.5 sqrt((e^(delta^2) - 1) / n) per class.
    torch.manual_seed(0)
    deltas = torch.tensor([0.3, 0.8, 1.5])
    means = torch.randn(3, 6) * 2
    direction = torch.nn.functional.normalize(torch.randn(3, 6), dim=1)
    means_hat = means + direction * deltas[:, None]
    n = 60000
    y = torch.arange(n) % 3
    x = torch.randn(n, 6) + means[y]
    expected = np.mean(2 * scipy.stats.norm.cdf(deltas.numpy() / 2) - 1)
    std_error = np.sqrt(np.mean(0.25 * (np.exp(deltas.numpy() ** 2) - 1) / (n / 3)) / 3)
    assert abs(G.empirical_tv(x, y, means_hat, means) - expected) < 5 * std_error
    assert 5 * std_error < 0.1 * expected # The test can tell a wrong estimator.
    assert G.empirical_tv(x, y, means, means) == 0

# The tables in README.md (Gaussian simulations), means over the five published seeds, to the
# four decimals quoted: {tag: [(value, single, multi), ...]}.
README_TABLES = {
    'K': [(1, .0527, .0527), (3, .0926, .0720), (5, .1240, .0962), (10, .1750, .1287), (15, .2098, .1544)],
    'n': [(100, .2787, .2037), (300, .1703, .1285), (500, .1240, .0962), (1000, .0915, .0718), (5000, .0385, .0290)],
    'sim': [(0.0, .1240, .1240), (0.3, .1240, .1068), (0.5, .1240, .0962), (0.7, .1240, .0813), (1.0, .1240, .0490)],
}

def test_published_numbers():
    runs = [G.run_one(s, 5, 10, 0.5, 500) for s in G.SEEDS]
    single = np.mean([r[G.TV_SINGLE] for r in runs])
    multi = np.mean([r[G.TV_MULTI] for r in runs])
    assert single == pytest.approx(0.124, abs=0.005) and multi == pytest.approx(0.096, abs=0.005)
    # What this implementation gives exactly (float32 torch draws, published draw order).
    assert single == pytest.approx(0.12397009, abs=1e-6)
    assert multi == pytest.approx(0.09624504, abs=1e-6)

def test_run_grid_rows():
    rows = G.run_grid('n', [100, 200], seeds=[3, 33], defaults={'K': 2, 'D': 4})
    assert [r['n'] for r in rows] == [100, 200]
    assert list(rows[0]) == G.columns('n')
    assert rows[0]['seed'] == '3;33' and rows[0]['K'] == 2 and rows[0]['D'] == 4 and rows[0]['sim'] == 0.5
    runs = [G.run_one(s, 2, 4, 0.5, 100) for s in (3, 33)]
    assert rows[0][G.TV_SINGLE] == pytest.approx(np.mean([r[G.TV_SINGLE] for r in runs]))

EXPECTED_COLUMNS = {
    'K': ['K', 'seed', 'D', 'sim', 'n'],
    'n': ['n', 'seed', 'K', 'D', 'sim'],
    'sim': ['sim', 'seed', 'K', 'D', 'n'],
}
METRIC_COLUMNS = ['theoretical TV bound of single', 'theoretical TV bound of multi', 'theoretical advantage (abs)',
                  'empirical TV of single', 'empirical TV of multi', 'advantage (abs)']

def _csvs(root, tag):
    folder = os.path.join(root, 'gaussian', tag)
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith('.csv'))

def test_cli_all_tags_csv_speed_and_plots(tmp_path):
    results, figures = str(tmp_path / 'results'), str(tmp_path / 'figures')
    start = time.perf_counter()
    res = invoke(run_gaussian.main, '--tag', 'all', '--results_dir', results)
    seconds = time.perf_counter() - start
    assert res.exit_code == 0, res.output
    print(f'all three tags: {seconds:.2f} s')
    assert seconds < 60 # the spec asks for < 30 s; slack for a busy machine
    for tag in ('K', 'n', 'sim'):
        (path,) = _csvs(results, tag)
        assert os.path.basename(path).startswith(f'gaussian_{tag}_') and path in res.output
        with open(path, newline='') as f:
            reader = csv.reader(f)
            header = next(reader)
            body = list(reader)
        assert header == EXPECTED_COLUMNS[tag] + METRIC_COLUMNS
        assert len(body) == 5
        assert [float(r[0]) for r in body] == [float(v) for v in G.GRIDS[tag]]
        assert all(r[1] == '3;33;520;2025;25731' for r in body)
        column = lambda name: [float(r[header.index(name)]) for r in body]
        # Every cell the README quotes, to its four decimals (half a unit of the last digit).
        assert [float(r[0]) for r in body] == [value for value, _, _ in README_TABLES[tag]]
        np.testing.assert_allclose(column('empirical TV of single'), [s for _, s, _ in README_TABLES[tag]], rtol=0, atol=5e-5)
        np.testing.assert_allclose(column('empirical TV of multi'), [m for _, _, m in README_TABLES[tag]], rtol=0, atol=5e-5)
        np.testing.assert_allclose(column('advantage (abs)'),
            np.subtract(column('empirical TV of single'), column('empirical TV of multi')), rtol=0, atol=1e-12)
    for tag, mod in (('K', plot_gaussian_K), ('n', plot_gaussian_n), ('sim', plot_gaussian_sim)):
        res = invoke(mod.main, '--results_dir', results, '--outdir', figures)
        assert res.exit_code == 0, res.output
        for ext in ('png', 'svg'):
            path = os.path.join(figures, f'gaussian_{tag}.{ext}')
            assert os.path.getsize(path) > 1000
    with open(os.path.join(figures, 'gaussian_n.png'), 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    with open(os.path.join(figures, 'gaussian_K.svg')) as f:
        assert '<svg' in f.read()

def test_cli_overrides_and_explicit_csv(tmp_path):
    results = str(tmp_path / 'r')
    res = invoke(run_gaussian.main, '--tag', 'sim', '--values', '0,1', '--seeds', '1,2', '--K', '3',
                 '--D', '4', '--n', '50', '--num-test', '20', '--results_dir', results)
    assert res.exit_code == 0, res.output
    (path,) = _csvs(results, 'sim')
    with open(path, newline='') as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and rows[0]['seed'] == '1;2' and rows[0]['K'] == '3' and rows[0]['D'] == '4'
    assert float(rows[0]['advantage (abs)']) == 0
    res = invoke(plot_gaussian_sim.main, '--csv', path, '--outdir', tmp_path / 'f')
    assert res.exit_code == 0, res.output
    assert sorted(os.listdir(tmp_path / 'f')) == ['gaussian_sim.png', 'gaussian_sim.svg']

@pytest.mark.parametrize('args, message', [
    (['--tag', 'D'], "Invalid value for '--tag': 'D' is not one of"),
    ([], "Missing option '--tag'"),
    (['--tag', 'K', '--K', '0'], "Invalid value for '--K'"),
    (['--tag', 'n', '--seeds', 'a,b'], "expected comma-separated int values, got 'a,b'"),
    (['--tag', 'sim', '--values', '0,2'], 'sim must be in [0, 1], got 2.0'),
    (['--tag', 'all', '--values', '1,2'], '--values needs a single --tag'),
    (['--tag', 'n', '--values', '0'], 'n must be >= 1, got 0'),
])
def test_cli_bad_options(tmp_path, args, message):
    # Option errors are click usage errors (exit code 2), raised before anything is computed.
    res = invoke(run_gaussian.main, *args, '--results_dir', tmp_path)
    expect_cli_error(res, message, exit_code=2)
    assert not os.path.exists(tmp_path / 'gaussian')

def test_plot_without_csv_names_folder(tmp_path):
    res = invoke(plot_gaussian_n.main, '--results_dir', tmp_path, '--outdir', tmp_path / 'f')
    expect_cli_error(res, os.path.join(str(tmp_path), 'gaussian', 'n'), 'run_gaussian --tag n')
    assert not os.path.exists(tmp_path / 'f')

def test_scripts_run_as_files_as_the_readmes_write_them(tmp_path):
    # The Multi-Source-GM README runs `python run_gaussian.py --tag=K` and `python plot_gaussian_K.py`
    # inside simulations/; issue 23 runs them as `python simulations/...py` from the root, and from
    # anywhere else by path. All of them write to the package's own results/ and figures/ (a copy
    # of the tree here, so that the test leaves the repository alone).
    import shutil
    import anchors
    repo = tmp_path / 'repo'
    for package in ['simulations', 'torch_utils']:
        shutil.copytree(os.path.join(anchors.ROOT, package), repo / package, ignore=shutil.ignore_patterns('__pycache__', 'results', 'figures'))
    results, figures = repo / 'simulations' / 'results', repo / 'simulations' / 'figures'
    env = dict(os.environ, PYTHONPATH='') # Nothing but the script's own location makes the imports work.
    anchors.run('msgm-sim-run-K', repo, env) # In simulations/.
    anchors.run('msgm-sim-plot-K', repo, env)
    anchors.run('issue-sim-run-K', repo, env) # From the root: a second CSV of the same numbers.
    first, second = _csvs(str(results), 'K')
    assert open(first).read() == open(second).read()
    with open(second, newline='') as f:
        rows = list(csv.DictReader(f))
    np.testing.assert_allclose([float(r['empirical TV of multi']) for r in rows], [m for _, _, m in README_TABLES['K']], rtol=0, atol=5e-5)
    assert sorted(os.listdir(figures)) == ['gaussian_K.png', 'gaussian_K.svg']
    refused = anchors.run('issue-sim-plot-K', repo, env, check=False) # The figures exist: the outputs policy.
    assert refused.returncode == 1 and 'gaussian_K.png already exists; pass --overwrite' in refused.stderr
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    for script, args in [('run_gaussian.py', ['--tag=n']), ('plot_gaussian_n.py', [])]:
        result = subprocess.run([sys.executable, str(repo / 'simulations' / script), *args], cwd=elsewhere, env=env,
            capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
    assert len(_csvs(str(results), 'n')) == 1 and (figures / 'gaussian_n.png').is_file() and os.listdir(elsewhere) == []
