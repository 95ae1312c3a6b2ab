"""calculate_metrics.py: the Frechet distance (closed forms, scipy's sqrtm reference), float64
sum statistics (permutation and batch-size invariance, 2 Gloo processes = 1 process), the command
line on the built-in digits with the digits detector (ref, ref --class, calc, gen, bpd, table,
weights) and its one-line errors, which leave nothing half-written."""

import json
import os
import pickle
import re
import sys

import numpy as np
import pytest
import torch

import calculate_metrics
import helpers
from helpers import ROOT, expect_cli_error, fake_dinov2, fake_inception, torchrun
from torch_utils import persistence
from training import detectors
from training import digits as digits_data
from training import metrics
from training.metrics import FeatureStats, frechet_distance, frechet_distance_sqrtm

#----------------------------------------------------------------------------
# Frechet distance.

def random_spd(dim, rng, scale=1.0):
    a = rng.randn(dim, dim)
    return scale * (a @ a.T / dim + 0.1 * np.eye(dim))

def test_fd_closed_forms():
    rng = np.random.RandomState(0)
    mu, sigma = rng.randn(32), random_spd(32, rng)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-9
    a, b = rng.rand(16) + 0.1, rng.rand(16) + 0.1
    mu2 = rng.randn(16)
    expected = np.square(np.sqrt(a) - np.sqrt(b)).sum() + np.square(mu2).sum()
    assert frechet_distance(np.zeros(16), np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    # Singular covariances (fewer samples than features) are fine: no inverse, no complex sqrtm.
    # The distance is symmetric, so the eigendecomposition path (singular first argument)
    # must agree with the Cholesky path (positive definite first argument).
    assert frechet_distance(mu, np.zeros([32, 32]), mu, sigma) == pytest.approx(np.trace(sigma), rel=1e-12)
    few = rng.randn(20, 32)
    singular = np.cov(few, rowvar=False)
    assert np.linalg.matrix_rank(singular) == 19
    forward, backward = frechet_distance(mu, singular, mu2[:1].repeat(32), sigma), frechet_distance(mu2[:1].repeat(32), sigma, mu, singular)
    assert forward == pytest.approx(backward, rel=1e-8)

@pytest.mark.parametrize('dim', [8, 64, 256])
def test_fd_matches_scipy_sqrtm(dim):
    rng = np.random.RandomState(dim)
    mu1, mu2 = rng.randn(dim), rng.randn(dim) * 0.1
    sigma1, sigma2 = random_spd(dim, rng), random_spd(dim, rng, scale=2.0)
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(frechet_distance_sqrtm(mu1, sigma1, mu2, sigma2), rel=1e-6)
    # Real covariance matrices: features with correlations, two close distributions.
    mix = rng.randn(dim, dim) / np.sqrt(dim)
    f1 = rng.randn(4 * dim, dim) @ mix
    f2 = (rng.randn(4 * dim, dim) + 0.05) @ (mix + 0.1 * rng.randn(dim, dim) / np.sqrt(dim))
    args = f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False)
    assert frechet_distance(*args) == pytest.approx(frechet_distance_sqrtm(*args), rel=1e-6)

#----------------------------------------------------------------------------
# Kernel distance (KID) and the floor of a metric.

def kid_brute_force(x, y):
    """The unbiased squared MMD under (a.b / d + 1)^3, pair by pair in plain Python (an
    independent reference for the blocked float64 implementation)."""
    d = len(x[0])
    k = lambda a, b: (sum(p * q for p, q in zip(a, b)) / d + 1) ** 3
    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(a, b) for a in x for b in y) / (n * m)
    return xx + yy - 2 * xy

def test_kernel_distance_matches_brute_force_and_is_unbiased():
    rng = np.random.RandomState(0)
    x, y = rng.randn(23, 5) + 0.3, rng.randn(17, 5) * 1.2
    expected = kid_brute_force(x.tolist(), y.tolist())
    for block_size in [4, 7, 2048]: # Blocks that split the pairs unevenly, and one block.
        assert metrics.kernel_distance(x, y, block_size=block_size) == pytest.approx(expected, rel=1e-12)
    assert metrics.kernel_distance(torch.as_tensor(x, dtype=torch.float32), y) == pytest.approx(
        kid_brute_force(x.astype(np.float32).astype(np.float64).tolist(), y.tolist()), rel=1e-12)
    # Unbiased: two samples of one distribution average 0 at any sizes (here 10 and 40, where the
    # biased V-statistic would average well above 0), within 4 standard errors of 400 draws.
    values = [metrics.kernel_distance(rng.randn(10, 3), rng.randn(40, 3)) for _ in range(400)]
    assert abs(np.mean(values)) < 4 * np.std(values) / np.sqrt(len(values))
    biased = [np.mean((a @ a.T / 3 + 1) ** 3) + np.mean((b @ b.T / 3 + 1) ** 3) - 2 * np.mean((a @ b.T / 3 + 1) ** 3)
        for a, b in [(rng.randn(10, 3), rng.randn(40, 3)) for _ in range(400)]]
    assert np.mean(biased) > 10 * np.std(values) / np.sqrt(len(values))
    with pytest.raises(ValueError, match='at least 2'):
        metrics.kernel_distance(x[:1], y)

@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning") # sqrtm of a singular product: it still agrees to 1e-8.
def test_frechet_distance_of_few_wide_features():
    # Fewer vectors than dimensions: the n x n route gives the d x d route's value.
    rng = np.random.RandomState(2)
    mu2, sigma2 = rng.randn(64), random_spd(64, rng)
    for n in [2, 10, 64, 65, 200]:
        x = rng.randn(n, 64) * 0.7 + 0.2
        assert metrics.frechet_distance_of_features(x, mu2, sigma2) == pytest.approx(
            frechet_distance_sqrtm(x.mean(0), np.cov(x, rowvar=False), mu2, sigma2), rel=1e-8)

def test_floor_of_the_frechet_distance_against_its_closed_form():
    # Features N(0, I_d) against the exact population statistics: a sample of n has
    # E|mean|^2 = d / n, and for the covariance term E tr(S + I - 2 S^(1/2)) = E sum (sqrt(l) - 1)^2
    # ~ E tr((S - I)^2) / 4 = d (d + 1) / (4 (n - 1)) for the unbiased sample covariance S (to
    # first order in 1 / n). Resampling a large pool with replacement behaves as fresh draws.
    rng = np.random.RandomState(1)
    d, n = 3, 2000
    pool = rng.randn(200000, d)
    reference = dict(fd_digits=dict(mu=np.zeros(d), sigma=np.eye(d)))
    values = metrics.resampled_values(dict(fd_digits=pool), reference, num=n, draws=300, seed=0)['fd_digits']
    expected = d / n + d * (d + 1) / (4 * (n - 1))
    assert np.mean(values) == pytest.approx(expected, rel=0.1)
    assert np.std(values) / np.sqrt(len(values)) < 0.03 * expected # The tolerance is not noise.
    # The kernel distance of real data resampled against more real data: 0 on average.
    kid = metrics.resampled_values(dict(kid_digits=pool[:5000]), dict(kid_digits=dict(features=pool[-500:])), num=300, draws=100, seed=0)['kid_digits']
    assert abs(np.mean(kid)) < 4 * np.std(kid) / np.sqrt(len(kid))
    # Draws are seeded and with replacement: the same seed gives the same values.
    again = metrics.resampled_values(dict(fd_digits=pool), reference, num=n, draws=300, seed=0)['fd_digits']
    assert again == values

#----------------------------------------------------------------------------
# Statistics.

def stats_of(features, batch_size):
    stats = FeatureStats(features.shape[1])
    for batch in torch.as_tensor(features).split(batch_size):
        stats.update(batch)
    return stats.all_reduce().mu_sigma()

def test_stats_match_numpy_and_are_invariant():
    rng = np.random.RandomState(0)
    features = rng.randn(203, 17) * rng.rand(17) * 5 + rng.randn(17) * 10
    reference = stats_of(features, 203)
    np.testing.assert_allclose(reference['mu'], features.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(reference['sigma'], np.cov(features, rowvar=False), rtol=1e-10, atol=1e-10)
    assert reference['mu'].dtype == reference['sigma'].dtype == np.float64
    for batch_size, order in [(1, None), (7, None), (64, rng.permutation(203))]:
        other = stats_of(features if order is None else features[order], batch_size)
        np.testing.assert_allclose(other['mu'], reference['mu'], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(other['sigma'], reference['sigma'], rtol=1e-10, atol=1e-10)

#----------------------------------------------------------------------------
# Command line on the built-in digits.

def invoke(args, env=None):
    return helpers.invoke(calculate_metrics.cmdline, *args, env=env)

def expect_error(args, *fragments, exit_code=1):
    return expect_cli_error(invoke(args), *fragments, exit_code=exit_code)

@pytest.fixture(scope='module')
def digits(digits_zips, digits_ref, tmp_path_factory):
    return dict(digits_zips, ref=digits_ref, root=tmp_path_factory.mktemp('metrics'))

def digits_features(split):
    images, labels = digits_data.load(split)
    return detectors.DigitsDetector()(torch.as_tensor(images)[:, None]).numpy(), labels

def calc_value(args):
    result = invoke(['calc', '--workers', '0'] + args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output.strip().splitlines()[-1])['value']

def test_kernel_distance_and_floor_commands(digits):
    test, test_labels = digits_features('test')
    train, train_labels = digits_features('train')
    # ref keeps the features of a kernel metric (the detector's own float64 here) and the
    # Frechet statistics of the same detector, computed once.
    dest = str(digits['root'] / 'refs' / 'kid-class3.pkl')
    result = invoke(['ref', '--data', digits['train'], '--metrics', 'fd_digits,kid_digits', '--class', '3', '--dest', dest, '--workers', '0'])
    assert result.exit_code == 0, result.output
    ref = metrics.load_reference(dest)
    np.testing.assert_allclose(ref['kid_digits']['features'], train[train_labels == 3], rtol=1e-12, atol=1e-12) # Batched matmul rounding.
    np.testing.assert_allclose(ref['fd_digits']['mu'], train[train_labels == 3].mean(0), rtol=1e-10, atol=1e-12)
    # calc of every test image against it: the kernel distance computed with numpy's full kernel matrices.
    value = calc_value(['--images', digits['test'], '--ref', dest, '--metrics', 'kid_digits', '--num', '359'])
    x, y = test, train[train_labels == 3]
    k = lambda a, b: (a @ b.T / a.shape[1] + 1) ** 3
    expected = ((k(x, x).sum() - np.trace(k(x, x))) / (len(x) * (len(x) - 1)) + (k(y, y).sum() - np.trace(k(y, y))) / (len(y) * (len(y) - 1))
        - 2 * k(x, y).mean())
    assert value == pytest.approx(expected, rel=1e-9)
    # floor: the test images of class 3, resampled with replacement, against that reference.
    results = str(digits['root'] / 'floor.jsonl')
    result = invoke(['floor', '--data', digits['test'], '--class', 'id:3', '--ref', dest, '--metrics', 'fd_digits,kid_digits',
        '--num', '50', '--draws', '5', '--seed', '7', '--workers', '0', '--results', results, '--tag', 'target=3'])
    assert result.exit_code == 0, result.output
    records = {r['metric']: r for r in map(json.loads, open(results))}
    expected = metrics.resampled_values(dict(fd_digits=test[test_labels == 3], kid_digits=test[test_labels == 3]), ref, num=50, draws=5, seed=7)
    for metric in ['fd_digits', 'kid_digits']:
        r = records[metric]
        assert r['value'] == pytest.approx(np.mean(expected[metric]), rel=1e-9) and r['std'] == pytest.approx(np.std(expected[metric], ddof=1), rel=1e-9)
        assert (r['num'], r['draws'], r['images'], r['class'], r['target']) == (50, 5, (test_labels == 3).sum(), 3, 3)
    assert records['fd_digits']['value'] > 0.3 # 50 draws from 37 images against 144 others: far from 0.
    expect_error(['floor', '--data', digits['test'], '--ref', dest, '--metrics', 'fd_digits,fid', '--num', '10'], 'has no "fid" statistics')
    expect_error(['floor', '--data', digits['test'], '--ref', dest, '--metrics', 'digits_acc', '--num', '10'], 'digits_acc')

def test_kernel_reference_with_non_finite_features_is_refused(digits, tmp_path):
    # As a Frechet reference whose statistics hold NaN or inf is refused (covariance_problem), so
    # is a kernel reference whose features do, before any work (before: kid_digits NaN, written).
    train, labels = digits_features('train')
    features = train[labels == 3]
    metrics.check_reference(dict(kid_digits=dict(features=features)), 'good.pkl', ['kid_digits'], dict(kid_digits=train.shape[1]))
    for value in [np.nan, np.inf, -np.inf]:
        bad = features.copy()
        bad[5, 2] = value
        with pytest.raises(ValueError, match=r'Reference bad.pkl: the "kid_digits" statistics are not those of any set of images '
                r'\(they hold NaN or inf\)'):
            metrics.check_reference(dict(kid_digits=dict(features=bad)), 'bad.pkl', ['kid_digits'], dict(kid_digits=train.shape[1]))
    with pytest.raises(ValueError, match=r'\(they are <U1, not numbers\)'):
        metrics.check_reference(dict(kid_digits=dict(features=np.array([['a', 'b'], ['c', 'd']]))), 'text.pkl', ['kid_digits'])
    path, results = tmp_path / 'bad.npz', tmp_path / 'results.jsonl'
    np.savez(path, **{'kid_digits.features': bad})
    expect_error(['calc', '--images', digits['test'], '--ref', str(path), '--metrics', 'kid_digits', '--num', '359', '--workers', '0',
        '--results', str(results)], 'bad.npz', '"kid_digits" statistics are not those of any set of images (they hold NaN or inf)')
    assert not results.exists()

def test_ref_and_calc(digits):
    with open(digits['ref'], 'rb') as f:
        ref = pickle.load(f)
    features, labels = digits_features('test')
    assert ref['num_images'] == len(features) == 359 and set(ref) == {'fd_digits', 'num_images'}
    np.testing.assert_allclose(ref['fd_digits']['mu'], features.mean(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ref['fd_digits']['sigma'], np.cov(features, rowvar=False), rtol=1e-8, atol=1e-12)
    assert calc_value(['--images', digits['test'], '--ref', digits['ref'], '--metrics', 'fd_digits', '--num', '359']) < 1e-9
    # A seeded subset of the training split: repeatable, seed-dependent, and equal to numpy's FD.
    args = ['--images', digits['train'], '--ref', digits['ref'], '--metrics', 'fd_digits', '--num', '300']
    value = calc_value(args + ['--seed', '1'])
    assert 0 < value == calc_value(args + ['--seed', '1', '--batch', '7']) or value == pytest.approx(calc_value(args + ['--seed', '1', '--batch', '7']), rel=1e-9)
    assert value != calc_value(args + ['--seed', '2'])
    train, _ = digits_features('train')
    results = digits['root'] / 'calc.jsonl'
    full = calc_value(args[:-1] + ['1438', '--results', str(results), '--tag', 'split=train'])
    assert full == pytest.approx(frechet_distance_sqrtm(train.mean(0), np.cov(train, rowvar=False), features.mean(0), np.cov(features, rowvar=False)), rel=1e-6)
    (record,) = [json.loads(line) for line in open(results)] # --results: what was printed, appended.
    assert record == dict(metric='fd_digits', value=full, images=digits['train'], ref=digits['ref'], num=1438, seed=0, split='train')

    # Per class: the statistics of that class's images only.
    dest = str(digits['root'] / 'refs' / 'class3.pkl')
    assert invoke(['ref', '--data', digits['test'], '--metrics', 'fd_digits', '--class', '3', '--dest', dest, '--workers', '0']).exit_code == 0
    with open(dest, 'rb') as f:
        ref3 = pickle.load(f)
    assert ref3['num_images'] == (labels == 3).sum()
    for spec in ['id:3', 'name:3']: # The digits' sources: name '3', original id 3.
        again = str(digits['root'] / 'refs' / f'class3-{spec[:2]}.pkl')
        assert invoke(['ref', '--data', digits['test'], '--metrics', 'fd_digits', '--class', spec, '--dest', again, '--workers', '0']).exit_code == 0
        with open(again, 'rb') as f:
            np.testing.assert_array_equal(pickle.load(f)['fd_digits']['mu'], ref3['fd_digits']['mu'])
    np.testing.assert_allclose(ref3['fd_digits']['mu'], features[labels == 3].mean(0), rtol=1e-10, atol=1e-12)

def test_fid_with_fake_inception_and_npz_reference(digits, tmp_path):
    inception = str(tmp_path / 'inception.pkl')
    fake_inception(inception)
    dest = str(tmp_path / 'fid.pkl')
    result = invoke(['ref', '--data', digits['test'], '--metrics', 'fid,fd_digits', '--dest', dest, '--inception', inception, '--workers', '0'])
    assert result.exit_code == 0, result.output
    with open(dest, 'rb') as f:
        ref = pickle.load(f)
    assert ref['fid']['mu'].shape == (2048,) and ref['fid']['sigma'].shape == (2048, 2048)
    # An EDM2-style pickle without num_images, and an .npz of mu/sigma (taken as FID).
    edm2 = str(tmp_path / 'edm2.pkl')
    with open(edm2, 'wb') as f:
        pickle.dump({'fid': ref['fid'], 'fd_dinov2': dict(mu=np.zeros(1024), sigma=np.eye(1024))}, f)
    npz = str(tmp_path / 'ref.npz')
    np.savez(npz, mu=ref['fid']['mu'], sigma=ref['fid']['sigma'])
    for path in [edm2, npz]:
        loaded = metrics.load_reference(path)
        metrics.check_reference(loaded, path, ['fid'], dict(fid=2048))
        np.testing.assert_array_equal(loaded['fid']['sigma'], ref['fid']['sigma'])
    value = calc_value(['--images', digits['test'], '--ref', npz, '--metrics', 'fid', '--num', '359', '--inception', inception])
    assert abs(value) < 1e-6

def test_reference_with_dnnlib_easydicts(tmp_path, monkeypatch):
    # Should an EDM2 reference pickle hold dnnlib.util.EasyDict entries, it loads without dnnlib.
    import types
    dnnlib, dnnlib_util = types.ModuleType('dnnlib'), types.ModuleType('dnnlib.util')
    EasyDict = type('EasyDict', (dict,), {'__module__': 'dnnlib.util'})
    dnnlib_util.EasyDict, dnnlib.util = EasyDict, dnnlib_util
    monkeypatch.setitem(sys.modules, 'dnnlib', dnnlib)
    monkeypatch.setitem(sys.modules, 'dnnlib.util', dnnlib_util)
    path = str(tmp_path / 'edm2-ref.pkl')
    with open(path, 'wb') as f:
        pickle.dump(EasyDict(fd_dinov2=EasyDict(mu=np.zeros(1024), sigma=np.eye(1024))), f)
    monkeypatch.delitem(sys.modules, 'dnnlib')
    monkeypatch.delitem(sys.modules, 'dnnlib.util')
    stats = metrics.load_reference(path)
    metrics.check_reference(stats, path, ['fd_dinov2'], dict(fd_dinov2=1024))

def test_errors_are_one_line_and_leave_nothing(digits, tmp_path):
    ref, test = digits['ref'], digits['test']
    expect_error(['calc', '--images', test, '--ref', ref, '--metrics', 'fd_digits', '--num', '1000'], 'found 359 images', '--num 1000')
    expect_error(['calc', '--images', test, '--ref', ref, '--metrics', 'fid', '--num', '10'], 'has no "fid" statistics', 'fd_digits')
    expect_error(['calc', '--images', test, '--ref', ref, '--metrics', 'nope', '--num', '10'], 'unknown metric "nope"')
    expect_error(['calc', '--images', test, '--ref', ref, '--metrics', 'digits_acc', '--num', '10'], 'use gen')
    bad = tmp_path / 'bad.pkl'
    bad.write_bytes(b'garbage')
    expect_error(['calc', '--images', test, '--ref', str(bad), '--metrics', 'fd_digits', '--num', '10'], 'Cannot read reference', 'bad.pkl')
    expect_error(['calc', '--images', test, '--ref', str(tmp_path / 'none.pkl'), '--metrics', 'fd_digits', '--num', '10'], 'none.pkl')
    wrong = tmp_path / 'wrong.pkl'
    with open(wrong, 'wb') as f:
        pickle.dump({'fd_digits': dict(mu=np.zeros(10), sigma=np.eye(10))}, f)
    expect_error(['calc', '--images', test, '--ref', str(wrong), '--metrics', 'fd_digits', '--num', '10'], '10 features', 'gives 20')
    expect_error(['calc', '--images', str(tmp_path / 'missing.zip'), '--ref', ref, '--metrics', 'fd_digits', '--num', '10'], 'missing.zip')
    dest = tmp_path / 'out' / 'ref.pkl'
    expect_error(['ref', '--data', test, '--metrics', 'fd_digits', '--class', '10', '--dest', str(dest)], '--class 10', '0..9')
    expect_error(['ref', '--data', test, '--metrics', 'fid', '--dest', str(dest), '--inception', str(tmp_path / 'no-inception.pkl')], 'inception-2015-12-05.pkl')
    assert not dest.exists() and (not dest.parent.exists() or os.listdir(dest.parent) == [])
    expect_error(['gen', '--net', 'x.pkl', '--metrics', 'fd_digits'], '--ref')

def test_table_and_weights(tmp_path, monkeypatch):
    results = tmp_path / 'metrics.jsonl'
    records = [dict(metric='fid', value=3.14159, model='multi', source='0'), dict(metric='fd_dinov2', value=50.0, model='multi', source='0'),
        dict(metric='fid', value=4.0, model='single', source='0'), dict(metric='fid', value=5.0, model='multi', source='1'),
        dict(metric='bpd', value=1.25, model='ardm')]
    results.write_text(''.join(json.dumps(r) + '\n' for r in records))
    dest = tmp_path / 'table.md'
    result = invoke(['table', '--results', str(results), '--rows', 'model', '--cols', 'metric', '--dest', str(dest)])
    assert result.exit_code == 0, result.output
    assert dest.read_text() == result.output
    lines = result.output.splitlines()
    assert lines[0] == '| model | fid | fd_dinov2 | bpd |' and lines[2] == '| multi | 5 | 50 | - |' and lines[4] == '| ardm | - | - | 1.25 |'
    result = invoke(['table', '--results', str(results), '--rows', 'source', '--cols', 'model'])
    assert result.output.splitlines()[0] == '| source | multi fid | multi fd_dinov2 | single fid |'
    assert result.output.splitlines()[2] == '| 0 | 3.142 | 50 | 4 |'
    expect_error(['table', '--results', str(tmp_path / 'none.jsonl'), '--rows', 'model'], 'none.jsonl')

    monkeypatch.setenv('EDM2_CACHE_DIR', str(tmp_path / 'cache'))
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    result = invoke(['weights', '--check', 'fid,fd_dinov2'])
    assert result.exit_code == 1 and 'inception-2015-12-05.pkl' in result.output and detectors.DINOV2_CHECKPOINT in result.output
    assert invoke(['weights', '--check', 'fd_digits,digits_acc']).exit_code == 0
    fake_inception(str(tmp_path / 'inception.pkl'))
    repo, weights, _ = fake_dinov2(tmp_path)
    result = invoke(['weights', '--check', 'fid,fd_dinov2', '--inception', str(tmp_path / 'inception.pkl'), '--dinov2-repo', repo, '--dinov2-weights', weights])
    assert result.exit_code == 0, result.output

#----------------------------------------------------------------------------
# gen and bpd with tiny persistent networks (pickled with their source, as snapshots are).

@persistence.persistent_class
class ClassMeans(torch.nn.Module):
    """Samples each class's mean training digit (net space [-1, 1]) plus noise from the seeds;
    guided by `gnet` (another ClassMeans), the mean is extrapolated: g + w (mean - g).
    Also a stand-in likelihood: bpd = mean pixel value plus a small per-seed random term."""
    sampler_options = dict(steps=int)

    def __init__(self, means, noise=0.1):
        super().__init__()
        self.img_resolution, self.img_channels, self.label_dim = 8, 1, means.shape[0]
        self.noise = noise
        self.register_buffer('means', means)

    def sample(self, noise, labels, rnd, gnet=None, guidance=1.0, steps=None):
        base = self.means[labels.argmax(1)]
        if guidance != 1:
            base = gnet.means[labels.argmax(1)].lerp(base, guidance)
        return base + self.noise * rnd.randn_like(noise) + (steps or 0) * 0.01

    def bpd(self, images, labels=None, rnd=None, mode='elbo', **kwargs):
        return images.flatten(1).mean(1).to(torch.float64) + 1e-3 * rnd.rand([images.shape[0]], dtype=torch.float64, device=images.device)

@persistence.persistent_class
class NoLikelihood(torch.nn.Module):
    sampler_options = dict()

    def __init__(self):
        super().__init__()
        self.img_resolution, self.img_channels, self.label_dim = 8, 1, 0

    def sample(self, noise, labels, rnd, gnet=None, guidance=1.0):
        return torch.zeros_like(noise)

def class_means(images, labels):
    """Per-class mean images in net space [-1, 1], [10, 1, 8, 8]."""
    return torch.stack([torch.as_tensor(images[labels == c].mean(0), dtype=torch.float32) for c in range(10)]).reshape(10, 1, 8, 8) * 2 - 1

def tiny_ardm():
    """A class-conditional ARDM of the digits at 4 levels with random weights and a running
    per-step loss that falls with the step, so that the DP and the even split differ."""
    from training.networks_ardm import ARDMNet
    torch.manual_seed(0)
    net = ARDMNet(img_resolution=8, img_channels=1, label_dim=10, levels=4, model_channels=8, num_blocks=1)
    with torch.no_grad():
        for param in net.parameters():
            param.add_(torch.randn_like(param) * 0.3)
    net.update_step_loss(torch.arange(64), torch.linspace(2, 0, 64) ** 2)
    return net

@pytest.fixture(scope='module')
def snapshots(digits):
    from training import encoders
    x_train, y_train = digits_data.pixels('train')
    x_test, y_test = digits_data.pixels('test')
    paths = {}
    # Label c of these models is the digit 9 - c (a dataset converted with --classes 9,8,...,0).
    for name, net in [('means', ClassMeans(class_means(x_train, 9 - y_train))), ('guide', ClassMeans(class_means(x_test, (10 - y_test) % 10))),
            ('uncond', NoLikelihood()), ('ardm', tiny_ardm())]:
        paths[name] = str(digits['root'] / f'network-snapshot-{name}.pkl')
        encoder = encoders.QuantizeEncoder(levels=4) if name == 'ardm' else encoders.StandardRGBEncoder()
        with open(paths[name], 'wb') as f:
            pickle.dump(dict(ema=net.eval().requires_grad_(False), encoder=encoder, loss_fn=None, dataset_kwargs={},
                sources=[dict(label=c, name=f'digit{9 - c}', original_id=9 - c) for c in range(10)]), f)
    return paths

def class_means_samples(seeds, guidance=1.0):
    """The images and classes that ClassMeans (guided by the 'guide' snapshot) generates for
    `seeds`, recomputed from EDM2's per-seed stream (noise, then class, then the sampler's
    draws) and the uint8 conversion (x * 127.5 + 128), without the generation code."""
    x_train, y_train = digits_data.pixels('train')
    x_test, y_test = digits_data.pixels('test')
    means, guide = class_means(x_train, 9 - y_train), class_means(x_test, (10 - y_test) % 10)
    images, classes = [], []
    for seed in seeds:
        gen = torch.Generator().manual_seed(seed)
        torch.randn([1, 8, 8], generator=gen) # The initial noise, unused by this network.
        c = int(torch.randint(10, size=[1], generator=gen))
        x = guide[c] + guidance * (means[c] - guide[c]) + 0.1 * torch.randn([1, 8, 8], generator=gen)
        images.append((x * 127.5 + 128).clip(0, 255).to(torch.uint8))
        classes.append(c)
    return torch.stack(images), np.array(classes)

def expected_metrics(digits, images, classes):
    """fd_digits (scipy sqrtm against numpy statistics of the test split) and digits_acc of images
    of the model's classes (label c = digit 9 - c)."""
    features = detectors.DigitsDetector()(images).numpy()
    test, _ = digits_features('test')
    fd = frechet_distance_sqrtm(features.mean(0), np.cov(features, rowvar=False), test.mean(0), np.cov(test, rowvar=False))
    classifier = detectors.DigitsClassifier()
    return fd, float((classifier(images).numpy() == 9 - classes).mean())

def test_gen(digits, snapshots, tmp_path):
    results = str(tmp_path / 'metrics.jsonl')
    base = ['gen', '--net', snapshots['means'], '--ref', digits['ref'], '--metrics', 'fd_digits,digits_acc', '--num', '60', '--seed', '5']
    result = invoke(base + ['--batch', '7', '--results', results, '--tag', 'model=means'])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in open(results)]
    assert [r['metric'] for r in lines] == ['fd_digits', 'digits_acc']
    assert all(r['num'] == 60 and r['class'] is None and r['model'] == 'means' and r['guidance'] == 1 and r['net'] == snapshots['means'] for r in lines)
    # A tag may not replace what the result itself says.
    expect_error(base + ['--tag', 'guidance=2'], '--tag guidance', 'already has')
    fd, acc = lines[0]['value'], lines[1]['value']
    expected_fd, expected_acc = expected_metrics(digits, *class_means_samples(range(5, 65)))
    assert fd == pytest.approx(expected_fd, rel=1e-6) and acc == expected_acc
    # Batch-size invariance (per-seed generators), and what was printed is what was written.
    again = invoke(base + ['--batch', '60'])
    assert [json.loads(line)['value'] for line in again.output.strip().splitlines()[-2:]] == pytest.approx([fd, acc], rel=1e-9)
    one_class = invoke(base[:-4] + ['--num', '20', '--class', '3', '--metrics', 'digits_acc', '--steps', '2'])
    record = json.loads(one_class.output.strip().splitlines()[-1])
    assert record['class'] == 3 and record['source'] == 6 and record['steps'] == 2 and record['value'] == 1.0
    expect_error(['gen', '--net', snapshots['uncond'], '--metrics', 'digits_acc', '--num', '4'], 'digits_acc needs the class of every image')
    expect_error(base[:-4] + ['--num', '4', '--class', '12', '--metrics', 'digits_acc'], '--class 12')
    # A source by its identity: the same class, the same images.
    for spec in ['id:6', 'digit6']:
        by_identity = invoke(base[:-4] + ['--num', '20', '--class', spec, '--metrics', 'digits_acc', '--steps', '2'])
        assert json.loads(by_identity.output.strip().splitlines()[-1]) == record
    expect_error(base[:-4] + ['--num', '4', '--class', 'id:12', '--metrics', 'digits_acc'], 'no source', 'original id 12')
    # Every class on its own: one record per (class, metric), each against its own reference.
    per_class = invoke(base[:-4] + ['--num', '20', '--per-class', '--metrics', 'digits_acc', '--steps', '2'])
    records = [json.loads(line) for line in per_class.output.strip().splitlines()[-10:]]
    assert [(r['class'], r['source']) for r in records] == [(c, 9 - c) for c in range(10)] and records[3] == record
    expect_error(base[:-4] + ['--num', '4', '--per-class', '--class', '3'], 'does not go with --class')
    expect_error(base[:-4] + ['--num', '4', '--per-class', '--ref', str(tmp_path / 'digit{source}.pkl')], 'digit9.pkl')

def test_gen_with_gnet_and_guidance(digits, snapshots, tmp_path):
    # --gnet and --guidance reach the sampler: the metrics of the guided images, recomputed.
    results = tmp_path / 'guided.jsonl'
    result = invoke(['gen', '--net', snapshots['means'], '--gnet', snapshots['guide'], '--guidance', '1.5', '--ref', digits['ref'],
        '--metrics', 'fd_digits,digits_acc', '--num', '40', '--seed', '3', '--batch', '16', '--results', str(results)])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in open(results)]
    assert all(r['guidance'] == 1.5 for r in records)
    expected = expected_metrics(digits, *class_means_samples(range(3, 43), guidance=1.5))
    assert [r['value'] for r in records] == pytest.approx(expected, rel=1e-6)
    unguided = expected_metrics(digits, *class_means_samples(range(3, 43)))
    assert abs(unguided[0] - expected[0]) > 0.1 * expected[0] # Guidance changes the answer: the test can tell.

def digits_test_subset(num, seed=0):
    """The test digits a dataset subset of `num` images holds, recomputed: EDM2's rule (the first
    `num` of a RandomState(seed) shuffle, in index order). -> uint8 images [num, 8, 8], labels."""
    images, labels = digits_data.load('test')
    order = np.arange(len(images))
    if num < len(images):
        np.random.RandomState(seed).shuffle(order)
        order = np.sort(order[:num])
    return np.asarray(images)[order], np.asarray(labels)[order]

def expected_bpd(num, seed=0):
    """What ClassMeans.bpd gives on a seeded subset of the test digits, recomputed: the images in
    net space, and one uniform float64 draw per position in the subset from a generator seeded
    with it."""
    images, _ = digits_test_subset(num, seed)
    x = images.astype(np.float64).reshape(len(images), -1) / 127.5 - 1
    noise = [torch.rand([], generator=torch.Generator().manual_seed(i), dtype=torch.float64).item() for i in range(len(images))]
    return float(np.mean(x.mean(1) + 1e-3 * np.array(noise)))

def test_bpd(digits, snapshots, tmp_path):
    results = str(tmp_path / 'metrics.jsonl')
    values = []
    for batch in ['7', '100']:
        result = invoke(['bpd', '--net', snapshots['means'], '--data', digits['test'], '--num', '100', '--batch', batch,
            '--workers', '0', '--results', results, '--tag', 'model=means'])
        assert result.exit_code == 0, result.output
        values.append(json.loads(open(results).read().splitlines()[-1]))
    assert values[0]['metric'] == 'bpd' and values[0]['mode'] == 'elbo' and values[0]['model'] == 'means' and values[0]['num'] == 100
    assert values[0]['value'] == pytest.approx(values[1]['value'], rel=1e-12)
    assert values[0]['value'] == pytest.approx(expected_bpd(100), rel=1e-7) # ClassMeans averages in float32.
    assert abs(expected_bpd(100) - expected_bpd(100, seed=1)) > 1e-3 # Another subset: the test can tell.
    exact = invoke(['bpd', '--net', snapshots['means'], '--data', digits['test'], '--mode', 'exact', '--workers', '0'])
    assert exact.exit_code == 0, exact.output
    record = json.loads(exact.output.strip().splitlines()[-1])
    assert record['num'] == 359 and record['mode'] == 'exact' and record['value'] == pytest.approx(expected_bpd(359), rel=1e-7)
    expect_error(['bpd', '--net', snapshots['uncond'], '--data', digits['test']], 'bits/dim does not apply to', 'it defines no likelihood')
    expect_error(['bpd', '--net', snapshots['means'], '--data', digits['test'], '--policy', 'naive'], '--mode exact with --steps')

def test_bpd_options_of_an_ardm(digits, snapshots):
    # --draws (ELBO), --steps and --policy (exact): the mean over the images of the network's
    # bits/dim with those options, each image at its 4 levels (floor(x * 4 / 256)) with its label,
    # from a generator seeded with its position in the subset.
    from training.samplers import StackedRandomGenerator
    net = tiny_ardm().eval()
    images, labels = digits_test_subset(12)
    levels = torch.as_tensor(np.floor(images.astype(np.float64) * 4 / 256), dtype=torch.float32)[:, None]
    def expected(**kwargs):
        return float(np.mean([net.bpd(levels[i:i + 1], torch.eye(10)[labels[i:i + 1]], StackedRandomGenerator('cpu', [i]), **kwargs).item()
            for i in range(12)]))
    base = ['bpd', '--net', snapshots['ardm'], '--data', digits['test'], '--num', '12', '--batch', '5', '--workers', '0']
    values = {}
    for name, args, kwargs in [('elbo', [], dict()), ('draws', ['--draws', '3'], dict(draws=3)),
            ('dp', ['--mode', 'exact', '--steps', '4'], dict(mode='exact', steps=4, policy='dp')),
            ('naive', ['--mode', 'exact', '--steps', '4', '--policy', 'naive'], dict(mode='exact', steps=4, policy='naive'))]:
        result = invoke(base + args)
        assert result.exit_code == 0, result.output
        record = json.loads(result.output.strip().splitlines()[-1])
        assert record['value'] == pytest.approx(expected(**kwargs), rel=1e-6) and record['num'] == 12, name
        assert (record.get('steps'), record.get('policy')) == ((4, name) if name in ['dp', 'naive'] else (None, None))
        values[name] = record['value']
    assert len(set(values.values())) == 4 # Each option changes the answer: the comparison can tell.
    assert net.policy(4, 'dp')[0] != net.policy(4, 'naive')[0]
    # The values of --steps and --policy are the network's to check (one place, one message),
    # before any image is read.
    for args, message in [(['--steps', '4', '--policy', 'fast'], 'ARDM: unknown policy "fast"; choose dp or naive'),
            (['--steps', '0'], 'ARDM policy: the budget must be in'), (['--steps', '99'], 'ARDM policy: the budget must be in')]:
        expect_error(base + ['--mode', 'exact', *args], message)
        with pytest.raises(ValueError, match=re.escape(message)):
            net.policy(int(args[1]), args[3] if len(args) > 2 else 'dp')

def test_two_gloo_processes_equal_one(digits, snapshots, tmp_path):
    # Two Gloo processes give the results of one: float64 sums reduced over the ranks (ref, gen,
    # bpd elbo), or every rank scoring every image (bpd exact; the ARDM splits its network calls
    # over the ranks and sums their bits). One launch runs the five commands.
    ref = str(tmp_path / 'ref2.pkl')
    commands = {
        'gen': ['gen', '--net', snapshots['means'], '--gnet', snapshots['guide'], '--guidance', '1.5', '--ref', digits['ref'],
            '--metrics', 'fd_digits,digits_acc', '--num', '40', '--seed', '3', '--batch', '8'],
        'elbo': ['bpd', '--net', snapshots['means'], '--data', digits['test'], '--num', '100', '--batch', '16', '--workers', '0'],
        'exact': ['bpd', '--net', snapshots['means'], '--data', digits['test'], '--mode', 'exact', '--batch', '64', '--workers', '0'],
        'ardm': ['bpd', '--net', snapshots['ardm'], '--data', digits['test'], '--num', '12', '--mode', 'exact', '--steps', '8',
            '--policy', 'naive', '--batch', '5', '--workers', '0'],
    }
    two = {name: tmp_path / f'two-{name}.jsonl' for name in commands}
    torchrun([os.path.join(ROOT, 'tests', 'torchrun_commands.py'), json.dumps([['calculate_metrics', 'ref', '--data', digits['test'],
        '--metrics', 'fd_digits', '--dest', ref, '--batch', '32', '--workers', '0']] +
        [['calculate_metrics', *args, '--results', str(two[name])] for name, args in commands.items()])])
    with open(ref, 'rb') as f:
        two_ref = pickle.load(f)
    with open(digits['ref'], 'rb') as f:
        one_ref = pickle.load(f)
    assert two_ref['num_images'] == one_ref['num_images']
    np.testing.assert_allclose(two_ref['fd_digits']['mu'], one_ref['fd_digits']['mu'], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(two_ref['fd_digits']['sigma'], one_ref['fd_digits']['sigma'], rtol=1e-10, atol=1e-14)
    for name, args in commands.items():
        one = tmp_path / f'one-{name}.jsonl'
        assert invoke(args + ['--results', str(one)]).exit_code == 0
        records = [[json.loads(line) for line in open(path)] for path in [one, two[name]]]
        assert [r['metric'] for r in records[1]] == [r['metric'] for r in records[0]] and len(records[0]) >= 1
        for a, b in zip(*records):
            assert b['value'] == pytest.approx(a['value'], rel=1e-9, abs=1e-12) and b['num'] == a['num'], name

#----------------------------------------------------------------------------

def test_tags_are_json_numbers_when_they_spell_one():
    tags = calculate_metrics.parse_tags('K=5 guidance=1.5 model=edm2-digits note=nan level=sim3')
    assert tags == dict(K=5, guidance=1.5, model='edm2-digits', note='nan', level='sim3')
    assert isinstance(tags['K'], int) and json.loads(json.dumps(tags)) == tags
