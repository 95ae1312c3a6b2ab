"""Tests for training/networks_ardm.py: the generation policies against closed forms and brute
force, the network's masking, the exact likelihood against the chain rule and normalisation,
sampling against the exact distribution, and the running per-step loss."""

import itertools
import io
import pickle

import numpy as np
import pytest
import torch

from training.networks_ardm import ARDMLoss, ARDMNet, dp_policy, gaussian_blur, naive_policy, policy_cost

class SeedRandom:
    """Per-seed generators with the interface of training.samplers.StackedRandomGenerator."""
    def __init__(self, seeds, device='cpu'):
        self.generators = [torch.Generator(device).manual_seed(int(seed)) for seed in seeds]

    def rand(self, size, **kwargs):
        assert size[0] == len(self.generators)
        return torch.stack([torch.rand(size[1:], generator=gen, **kwargs) for gen in self.generators])

def make_net(seed=0, **kwargs):
    """A small network with random (non-zero) output weights, so that its predictions vary."""
    torch.manual_seed(seed)
    kwargs = dict(img_resolution=2, img_channels=1, label_dim=0, levels=3, model_channels=8, num_blocks=1) | kwargs
    net = ARDMNet(**kwargs).eval()
    with torch.no_grad():
        for param in net.parameters():
            param.add_(torch.randn_like(param) * 0.5)
    return net

def seeds_per_order(num_dims):
    """One seed for each order of num_dims dimensions (the order SeedRandom's first draw gives)."""
    seeds = {}
    for seed in range(10000):
        seeds.setdefault(tuple(SeedRandom([seed]).rand([1, num_dims]).argsort(dim=1)[0].tolist()), seed)
    assert len(seeds) == np.prod(range(1, num_dims + 1))
    return list(seeds.values())

def all_images(net):
    levels = range(net.levels)
    grid = list(itertools.product(levels, repeat=net.num_dims))
    return torch.tensor(grid, dtype=torch.float32).reshape(-1, net.img_channels, net.img_resolution, net.img_resolution)

#----------------------------------------------------------------------------
# Policies.

def test_dp_policy_closed_form():
    L = [5, 4, 3, 2.85, 2.80]
    costs = [dp_policy(L, budget)[1] for budget in range(1, 6)]
    np.testing.assert_allclose(costs, [25, 19, 18, 17.7, 17.65])
    assert dp_policy(L, 2)[0] == [0, 2, 5]
    assert dp_policy(L, 5)[0] == [0, 1, 2, 3, 4, 5]
    # A flat L: every policy costs the same; the DP takes the most calls among the cheapest (with
    # a loss that cannot grow, more calls never cost more), in every stage.
    assert dp_policy([3.0] * 6, 4) == ([0, 1, 2, 3, 6], 18.0)
    assert dp_policy([2.0] * 3 + [1.0] * 3, 5, stage_len=3) == ([0, 1, 2, 3, 4, 6], 9.0)

def brute_force(L, budget, stage_len):
    T = len(L)
    best = np.inf
    for calls in range(1, budget + 1):
        for inner in itertools.combinations(range(1, T), calls - 1):
            bounds = [0, *inner, T]
            if all(s // stage_len == (e - 1) // stage_len for s, e in zip(bounds[:-1], bounds[1:])):
                best = min(best, policy_cost(L, bounds))
    return best

@pytest.mark.parametrize('stage_len', [8, 4])
def test_dp_policy_matches_brute_force(stage_len):
    rng = np.random.RandomState(stage_len)
    L = rng.uniform(1, 3, size=8) # Not monotone: fewer calls can win.
    for budget in range(8 // stage_len, 9):
        bounds, cost = dp_policy(L, budget, stage_len)
        assert len(bounds) - 1 <= budget and bounds[0] == 0 and bounds[-1] == 8
        assert cost == pytest.approx(policy_cost(L, bounds))
        assert cost == pytest.approx(brute_force(L, budget, stage_len))
        assert cost <= policy_cost(L, naive_policy(8, budget, stage_len)) + 1e-12

def test_naive_policy_and_budget_errors():
    assert naive_policy(8, 4) == [0, 2, 4, 6, 8]
    assert naive_policy(8, 3, 4) == [0, 2, 4, 8]
    with pytest.raises(ValueError, match='budget must be in 2..8'):
        naive_policy(8, 1, 4)
    with pytest.raises(ValueError, match='budget'):
        dp_policy([1.0] * 4, 5)

#----------------------------------------------------------------------------
# Network.

def digits_of(x, branch, num_stages):
    """[S, ...] int64: the base-`branch` digits of the levels x, most significant first."""
    return torch.stack([x.long() // branch ** (num_stages - 1 - s) % branch for s in range(num_stages)])

def compose(digits, branch):
    num_stages = len(digits)
    return sum(d * branch ** (num_stages - 1 - s) for s, d in enumerate(digits)).float()

@pytest.mark.parametrize('levels, branch, num_stages', [(4, None, 1), (4, 2, 2), (9, 3, 2), (5, 2, 3)])
def test_network_sees_only_revealed_digits(levels, branch, num_stages):
    net = make_net(img_resolution=3, levels=levels, branch=branch)
    assert net.num_stages == num_stages
    b = branch or levels
    torch.manual_seed(1)
    x = torch.randint(0, levels, [6, 1, 3, 3]).float()
    mask = torch.rand([6, 1, 3, 3]) < 0.5
    step = torch.arange(6) * net.num_steps // 6 # Every stage, early and late steps.
    stage = step // net.num_dims
    # Visible: the digits of earlier stages everywhere, this stage's digit where `mask` is set;
    # everything else reads as 0, the absorbing value.
    digits = digits_of(x, b, num_stages)
    shown = torch.stack([(s < stage.reshape(-1, 1, 1, 1)) | ((s == stage.reshape(-1, 1, 1, 1)) & mask) for s in range(num_stages)])
    assert torch.equal(net.visible(x, mask, stage), compose(torch.where(shown, digits, 0), b))
    # Another image with the same visible digits and other hidden ones gives the same logits.
    visible_only = compose(torch.where(shown, digits, 0), b)
    other = compose(torch.where(shown, digits, torch.randint(0, b, digits.shape)), b)
    other = torch.where(other < levels, other, visible_only) # A level that exists (hidden digits 0 if not).
    assert (other != x).sum() >= 10
    assert torch.equal(net(x, mask, step), net(other, mask, step))
    # One visible digit changed (to another level that exists): that image's logits change.
    for s, n, c, h, w in shown.nonzero().tolist():
        changed = digits.clone()
        changed[s, n, c, h, w] = (changed[s, n, c, h, w] + 1) % b
        changed = compose(changed, b)
        if changed.max() < levels:
            break
    assert (changed != x).sum() == 1
    assert not torch.allclose(net(changed, mask, step)[n], net(x, mask, step)[n])
    # The target digit of each stage recomposes the levels.
    targets = [net.target_digit(x, torch.full([6], s)) for s in range(num_stages)]
    assert torch.equal(torch.stack(targets), digits_of(x, b, num_stages))

def test_initial_loss_is_uniform():
    x = torch.randint(0, 256, [5, 1, 4, 4]).float()
    for branch, expected in [(None, 8.0), (4, 8.0), (16, 8.0)]:
        net = ARDMNet(img_resolution=4, img_channels=1, levels=256, branch=branch, model_channels=8, num_blocks=1)
        loss = ARDMLoss()(net=net, images=x)
        np.testing.assert_allclose(loss.detach().numpy(), expected, rtol=1e-5) # log2(256) bits: a uniform guess.

@pytest.mark.parametrize('sigma', [0.5, 1.0, 1.5, 3.0])
def test_blur_is_scipys_gaussian_filter(sigma):
    # scipy.ndimage's separable Gaussian, mirrored at the borders (torch's 'reflect'), with the
    # same radius: ceil(3 sigma), at most the image size less one (sigma = 3 on 8 pixels: 7).
    import scipy.ndimage
    x = torch.rand([2, 3, 8, 8], dtype=torch.float64)
    radius = min(int(np.ceil(3 * sigma)), 7)
    expected = scipy.ndimage.gaussian_filter(x.numpy(), sigma=[0, 0, sigma, sigma], mode='mirror', truncate=radius / sigma)
    np.testing.assert_allclose(gaussian_blur(x, sigma).numpy(), expected, rtol=0, atol=1e-6) # A float32 kernel.
    assert torch.allclose(gaussian_blur(torch.full([1, 1, 8, 8], 0.3), sigma), torch.full([1, 1, 8, 8], 0.3))

def test_conditional_network_needs_cond():
    net = make_net(cond_blur=1.0)
    x = torch.randint(0, 3, [2, 1, 2, 2]).float()
    with pytest.raises(ValueError, match='cond'):
        net.sample(torch.zeros(2, 1, 2, 2), None, SeedRandom([0, 1]))
    assert net.sample(torch.zeros(2, 1, 2, 2), None, SeedRandom([0, 1]), cond=x).shape == x.shape
    assert torch.isfinite(net.bpd(x, None, SeedRandom([0, 1]), mode='exact')).all() # z comes from the images.
    assert net.sampler_options == dict(steps=int, policy=str) # What --opt reaches (cond is an array).
    with pytest.raises(ValueError, match='unknown policy "fast"'):
        net.sample(torch.zeros(2, 1, 2, 2), None, SeedRandom([0, 1]), cond=x, policy='fast', steps=2)

#----------------------------------------------------------------------------
# Likelihood.

@pytest.mark.parametrize('branch', [None, 2])
def test_exact_likelihood_normalises(branch):
    net = make_net(levels=3 if branch is None else 4, branch=branch, img_resolution=1, img_channels=2)
    images = all_images(net)
    seeds = [7] * len(images) # One seed: the same order for every image.
    bits = net.bpd(images, None, SeedRandom(seeds), mode='exact') * net.num_dims
    assert float((2 ** -bits).sum()) == pytest.approx(1.0, abs=1e-6)
    # Batched over timesteps or one timestep per forward: the same numbers.
    one_by_one = net.bpd(images, None, SeedRandom(seeds), mode='exact', max_batch=len(images))
    torch.testing.assert_close(bits / net.num_dims, one_by_one)

def test_exact_likelihood_chain_rule():
    net = make_net(img_resolution=2, levels=3)
    x = torch.tensor([[[[2.0, 0.0], [1.0, 1.0]]]])
    u = SeedRandom([3]).rand([1, 4])
    order = u.argsort(dim=1)[0] # order[t] = dimension revealed at step t.
    nats = 0.0
    revealed = torch.zeros(1, 4, dtype=torch.bool)
    for t in range(4):
        logits = net(x, revealed.reshape(x.shape), torch.tensor([t]))
        nats -= logits.log_softmax(dim=2).flatten(3)[0, 0, int(x.flatten()[order[t]]), order[t]].item()
        revealed[0, order[t]] = True
    assert net.bpd(x, None, SeedRandom([3]), mode='exact').item() == pytest.approx(nats / 4 / np.log(2), rel=1e-5)

def test_elbo_is_mean_exact_likelihood_over_orders():
    # The ELBO's expectation (over steps and orders) is the mean over the orders of the exact
    # fixed-order NLL: the D/(D-t) weighting and the stratified steps must be right for this.
    net = make_net(img_resolution=1, img_channels=3, levels=2)
    images = all_images(net)
    n = len(images)
    elbo = torch.stack([net.bpd(images, None, SeedRandom(range(s * n, (s + 1) * n)), draws=3) for s in range(400)]).mean(0)
    exact = torch.stack([net.bpd(images, None, SeedRandom([seed] * n), mode='exact') for seed in seeds_per_order(3)])
    torch.testing.assert_close(elbo, exact.mean(0), atol=0.04, rtol=0)

@pytest.mark.parametrize('levels, num_stages', [(4, 2), (8, 3)])
def test_elbo_of_one_dimension_is_its_exact_likelihood(levels, num_stages):
    # One dimension has one order, so the upscale ARDM's ELBO is its exact NLL: S stages of one
    # step each, every one weighted S D/(D-t) = S; with S draws the stratified steps are exactly
    # the S stages, and the estimate has no randomness left.
    net = make_net(img_resolution=1, img_channels=1, levels=levels, branch=2)
    assert (net.num_stages, net.num_steps) == (num_stages, num_stages)
    images = all_images(net)
    elbo = net.bpd(images, None, SeedRandom(range(levels)), draws=num_stages)
    exact = net.bpd(images, None, SeedRandom(range(levels)), mode='exact')
    torch.testing.assert_close(elbo, exact, rtol=1e-12, atol=0)
    assert float((2 ** -exact).sum()) == pytest.approx(1.0, abs=1e-6) and exact.min() > 0.1

#----------------------------------------------------------------------------
# Sampling.

def test_sampling_matches_exact_distribution():
    net = make_net(img_resolution=1, img_channels=2, levels=3)
    images = all_images(net)
    n = 3000
    samples = net.sample(torch.zeros(n, 2, 1, 1), None, SeedRandom(range(n)))
    index = (samples[:, 0, 0, 0] * 3 + samples[:, 1, 0, 0]).long()
    freq = torch.bincount(index, minlength=9).double() / n
    # The sampled distribution is the mixture over the two orders of the fixed-order models.
    probs = [2 ** -(net.bpd(images, None, SeedRandom([s] * 9), mode='exact') * 2) for s in seeds_per_order(2)]
    mixture = torch.stack(probs).mean(0)
    assert float((freq - mixture).abs().max()) < 0.03 # Binomial std at most 0.009.
    assert float((probs[0] - probs[1]).abs().max()) > 0.05 # The orders differ: the test can tell.

def test_sampling_is_per_seed():
    net = make_net(img_resolution=3, levels=5, label_dim=2)
    labels = torch.eye(2)[[0, 1, 1]]
    batch = net.sample(torch.zeros(3, 1, 3, 3), labels, SeedRandom([4, 5, 6]), steps=4)
    alone = net.sample(torch.zeros(1, 1, 3, 3), labels[2:], SeedRandom([6]), steps=4)
    assert torch.equal(batch[2:], alone)
    assert batch.min() >= 0 and batch.max() <= 4 and torch.equal(batch, batch.round())

def frequencies(samples, levels):
    """Empirical distribution of 2-dimensional level images [N, 2, 1, 1] over all levels^2 images."""
    index = (samples[:, 0, 0, 0] * levels + samples[:, 1, 0, 0]).long()
    return torch.bincount(index, minlength=levels ** 2).double() / len(samples)

def test_upscale_sampling_matches_exact_distribution():
    # Levels 0..3 in two binary digits, two dimensions: 16 images. One call per step samples the
    # mixture over the orders of the exact fixed-order models; one call per stage samples, in
    # each stage, every digit at once given the earlier stages' digits: a product of that stage's
    # categoricals, computed here from the network's logits.
    net = make_net(img_resolution=1, img_channels=2, levels=4, branch=2)
    images = all_images(net)
    n = 4000
    mixture = torch.stack([2 ** -(net.bpd(images, None, SeedRandom([s] * 16), mode='exact') * 2) for s in seeds_per_order(2)]).mean(0)
    per_step = frequencies(net.sample(torch.zeros(n, 2, 1, 1), None, SeedRandom(range(n))), 4)
    assert float((per_step - mixture).abs().max()) < 0.03 # Binomial std at most 0.008.
    hidden = torch.zeros_like(images, dtype=torch.bool)
    high, low = images // 2, images % 2
    with torch.no_grad():
        p_high = net(torch.zeros_like(images), hidden, torch.zeros(16, dtype=torch.int64)).softmax(dim=2)
        p_low = net(high * 2, hidden, torch.full([16], 2)).softmax(dim=2) # Stage 1 starts at step D = 2, seeing the high digits.
    pick = lambda p, digits: p.gather(2, digits.long().unsqueeze(2)).squeeze(2).prod(dim=1).flatten()
    per_stage = pick(p_high, high) * pick(p_low, low)
    assert float(per_stage.sum()) == pytest.approx(1.0, abs=1e-6)
    sampled = frequencies(net.sample(torch.zeros(n, 2, 1, 1), None, SeedRandom(range(n)), steps=2, policy='naive'), 4)
    assert float((sampled - per_stage).abs().max()) < 0.03
    assert float((per_stage - mixture).abs().max()) > 0.05 # The two policies differ: the test can tell them apart.

def test_sampling_guided_by_a_second_network():
    # One dimension: a single call, whose logits are the guide's extrapolated towards the net's,
    # g + w (l - g); the sampled distribution is their softmax.
    net, guide = make_net(img_resolution=1, levels=5, label_dim=2), make_net(seed=1, img_resolution=1, levels=5, label_dim=2)
    labels = torch.eye(2)[torch.arange(3000) % 2]
    samples = net.sample(torch.zeros(3000, 1, 1, 1), labels, SeedRandom(range(3000)), gnet=guide, guidance=2.5)
    empty, step = torch.zeros([2, 1, 1, 1], dtype=torch.bool), torch.zeros(2, dtype=torch.int64)
    with torch.no_grad():
        l, g = net(torch.zeros(2, 1, 1, 1), empty, step, torch.eye(2)), guide(torch.zeros(2, 1, 1, 1), empty, step, torch.eye(2))
    expected = (g + 2.5 * (l - g)).softmax(dim=2).flatten(1) # [class, level]
    for c in range(2):
        freq = torch.bincount(samples[c::2].flatten().long(), minlength=5).double() / 1500
        assert float((freq - expected[c]).abs().max()) < 0.04, (c, freq, expected[c]) # Binomial std at most 0.013.
    unguided = l.softmax(dim=2).flatten(1)
    assert float((expected - unguided).abs().max()) > 0.1

#----------------------------------------------------------------------------
# The running per-step loss and the snapshot.

def test_running_step_loss():
    net = ARDMNet(img_resolution=1, img_channels=2, levels=4, model_channels=8, num_blocks=1, loss_decay=0.5)
    assert np.allclose(net.running_step_loss(), 2.0) # Untrained: a uniform guess.
    net.update_step_loss(torch.tensor([0, 0, 1]), torch.tensor([5.0, 7.0, 1.0]))
    np.testing.assert_allclose(net.step_loss, [6.0, 1.0]) # First observations replace the initial value.
    net.update_step_loss(torch.tensor([0, 0]), torch.tensor([2.0, 2.0]))
    np.testing.assert_allclose(net.step_loss, [0.25 * 6 + 0.75 * 2, 1.0])
    # Unseen steps are interpolated; each stage is sorted in decreasing order.
    net = ARDMNet(img_resolution=2, img_channels=1, levels=4, model_channels=8, num_blocks=1)
    net.update_step_loss(torch.tensor([0, 3]), torch.tensor([4.0, 1.0]))
    np.testing.assert_allclose(net.running_step_loss(), [4, 3, 2, 1])
    assert net.policy(steps=1) == ([0, 4], 4.0)
    net.update_step_loss(torch.tensor([1]), torch.tensor([5.0]))
    np.testing.assert_allclose(net.running_step_loss(), [5, 4, 3, 1]) # Raw [4, 5, (3), 1].
    net = ARDMNet(img_resolution=1, img_channels=2, levels=4, branch=2, model_channels=8, num_blocks=1)
    net.update_step_loss(torch.arange(4), torch.tensor([1.0, 2.0, 0.5, 0.7]))
    np.testing.assert_allclose(net.running_step_loss(), [2.0, 1.0, 0.7, 0.5])

def test_policy_of_one_call_per_step_needs_no_dp():
    net = ARDMNet(img_resolution=32, img_channels=3, levels=256, branch=4, model_channels=8, num_blocks=1)
    boundaries, predicted = net.policy() # 12288 steps: an O(T^3) DP would take hours.
    assert boundaries == list(range(4 * 3072 + 1)) and predicted == pytest.approx(8.0)
    with pytest.raises(ValueError, match='unknown policy'):
        net.policy(16, 'greedy')

def test_training_fills_step_loss_and_pickles():
    net = ARDMNet(img_resolution=2, img_channels=1, label_dim=3, levels=4, model_channels=8, num_blocks=1)
    x = torch.randint(0, 4, [64, 1, 2, 2]).float()
    labels = torch.eye(3)[torch.randint(0, 3, [64])]
    loss = ARDMLoss()(net=net, images=x, labels=labels)
    loss.sum().backward()
    assert loss.shape == (64,) and (net.step_count > 0).all()
    clone = pickle.load(io.BytesIO(pickle.dumps(net)))
    torch.testing.assert_close(clone.step_loss, net.step_loss)

def test_preset_trains_through_the_loop(tmp_path, tiny_zip):
    # The family plugs into the shared loop through its preset alone; the snapshot carries L.
    from torch_utils import persistence
    from training import config, training_loop
    _, c = config.build('ardm-digits', dict(levels=4, channels=8, num_blocks=1, batch=8, duration=1000, status=1000,
        snapshot=1000, checkpoint=0), data=tiny_zip)
    training_loop.training_loop(run_dir=str(tmp_path), device='cpu', **c)
    with open(tmp_path / 'network-snapshot-0000001-ema.pkl', 'rb') as f:
        data = persistence.load_pickle(f)
    net, encoder = data['ema'], data['encoder']
    assert isinstance(net, ARDMNet) and net.levels == 4 and net.label_dim == 3
    assert net.step_count.sum() == 1000 # The EMA copy carries the network's running loss.
    samples = net.sample(torch.zeros(2, 1, 4, 4), torch.eye(3)[:2], SeedRandom([0, 1]), steps=4)
    pixels = encoder.decode(samples)
    assert pixels.dtype == torch.uint8 and set(pixels.unique().tolist()) <= {0, 85, 170, 255}

#----------------------------------------------------------------------------
# Acceptance (slow, 21 minutes on 2 CPU cores): ardm-digits and ardm-digits-blur trained
# through train_edm2.py on the train split, measured on the held-out split through
# calculate_metrics.py bpd, sampled through generate_images.py. Prints every figure.

def independent_pixel_bpd(train, test, levels, alpha=1.0):
    """Bits/dim of the test images under a class-conditional independent per-pixel categorical
    model fitted on the train images (add-alpha smoothing): what an ARDM with one call costs."""
    def quantize(images):
        return np.rint(images.astype(np.float64) / 255 * (levels - 1)).astype(np.int64).reshape(len(images), -1)
    (x_train, y_train), (x_test, y_test) = [(quantize(images), labels) for images, labels in [train, test]]
    bits = 0.0
    for label in np.unique(y_test):
        counts = np.stack([(x_train[y_train == label] == k).sum(0) for k in range(levels)]) + alpha # [levels, D]
        log_p = np.log2(counts / counts.sum(0))
        xt = x_test[y_test == label]
        bits -= log_p[xt, np.arange(xt.shape[1])].sum()
    return bits / x_test.size

# The numbers README.md quotes (Results), in bits/dim on the 359 held-out digits, and the
# tolerances a retrained model stays within: 2% on the likelihoods, 0.03 on the accuracy. The
# independent per-pixel model needs no training: it must match to the last digit quoted.
README_ARDM_DIGITS = {'elbo': 1.684, 'exact 64': 1.678, 'exact dp 16': 1.699, 'exact dp 1': 2.126, 'blur elbo': 0.485,
    'independent per-pixel': 2.193, 'sample accuracy': 0.982}

@pytest.mark.slow
def test_digits_acceptance(tmp_path, digits_zips, digits_ref):
    import json
    import time
    from helpers import gen_metrics, invoke_ok
    from training import digits, generate

    train, test = digits_zips['train'], digits_zips['test']
    results, snapshots = {}, {}
    for preset in ['ardm-digits', 'ardm-digits-blur']:
        start = time.time()
        invoke_ok('train_edm2', '--preset', preset, '--data', train, '--outdir', tmp_path / preset)
        results[f'{preset} train_minutes'] = round((time.time() - start) / 60, 1)
        snapshots[preset] = str(sorted((tmp_path / preset).glob('network-snapshot-*.pkl'))[-1])

    jsonl = tmp_path / 'bpd.jsonl'
    def bpd(preset, *args):
        invoke_ok('calculate_metrics', 'bpd', '--net', snapshots[preset], '--data', test, '--workers', 0, '--results', jsonl, *args)
        return json.loads(jsonl.read_text().splitlines()[-1])['value']
    results['elbo'] = bpd('ardm-digits')
    results['blur elbo'] = bpd('ardm-digits-blur')
    results['exact 64'] = bpd('ardm-digits', '--mode', 'exact')
    for steps in [1, 4, 16]:
        for policy in ['dp', 'naive']:
            results[f'exact {policy} {steps}'] = bpd('ardm-digits', '--mode', 'exact', '--steps', steps, '--policy', policy)
    snap = generate.load_snapshot(snapshots['ardm-digits'], verbose=False)
    net = snap.net
    predicted = {policy: [net.policy(steps, policy)[1] for steps in range(1, net.num_steps + 1)] for policy in ['dp', 'naive']}
    results.update({f'predicted {policy} {steps}': predicted[policy][steps - 1] for steps in [4, 16, 64] for policy in ['dp', 'naive']})
    results['independent per-pixel'] = independent_pixel_bpd(digits.load('train'), digits.load('test'), net.levels)
    results['sample accuracy'] = gen_metrics(snapshots['ardm-digits'], digits_ref, '--num', 500, '--batch', 250)['digits_acc']
    print('ardm-digits acceptance', json.dumps(results, indent=1))

    assert results['ardm-digits train_minutes'] <= 25 # README: 10.8 minutes on one thread.
    assert results['independent per-pixel'] == pytest.approx(README_ARDM_DIGITS['independent per-pixel'], abs=5e-4)
    for key in ['elbo', 'exact 64', 'exact dp 16', 'exact dp 1', 'blur elbo']:
        assert results[key] == pytest.approx(README_ARDM_DIGITS[key], rel=0.02), (key, results[key])
    assert results['sample accuracy'] >= README_ARDM_DIGITS['sample accuracy'] - 0.03
    assert abs(results['exact 64'] - results['elbo']) <= 0.02 * results['elbo']
    assert results['exact dp 16'] <= 1.02 * results['exact 64']
    # The DP minimises the predicted cost (the running training loss L_t): never above naive there.
    # Measured on 359 test images with one random order each, the two agree within the noise.
    assert all(d <= n + 1e-9 for d, n in zip(predicted['dp'], predicted['naive']))
    assert results['exact dp 16'] <= 1.005 * results['exact naive 16'] and results['exact dp 4'] <= 1.005 * results['exact naive 4']
    assert abs(results['exact dp 1'] - results['independent per-pixel']) <= 0.1 * results['independent per-pixel']
    assert results['blur elbo'] < results['elbo']
