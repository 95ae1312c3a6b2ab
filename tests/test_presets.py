"""training/presets.py: every training preset builds and takes a real training step (its own
encoder, network structure, loss, optimizer, schedule and EMA) on data of its shape; the digits
presets learn in a few hundred steps; the official generation presets are NVlabs/edm2's table."""

import contextlib
import copy
import io
import json

import numpy as np
import pytest
import torch

from training import config
from training import presets
from training import training_loop

#----------------------------------------------------------------------------
# The tables are literal: every preset's name is written out (grep finds it), as in EDM2's table;
# and the generators reach the generation presets without importing the families.

def test_every_preset_name_is_written_out():
    from training import generate # pylint: disable=import-outside-toplevel
    for module, table in [(presets, presets.PRESETS), (generate, generate.GENERATION_PRESETS)]:
        with open(module.__file__) as f:
            text = f.read()
        missing = [name for name in table if f"'{name}'" not in text]
        assert len(table) > 30 and not missing, (module.__name__, missing)

def test_the_generators_and_dataset_tool_import_no_family_and_no_study():
    import subprocess # pylint: disable=import-outside-toplevel
    import sys # pylint: disable=import-outside-toplevel
    from helpers import ROOT, subprocess_env # pylint: disable=import-outside-toplevel
    code = ('import sys, dataset_tool, generate_images, calculate_metrics; '
        'print(sorted(m for m in sys.modules if m.startswith("training.")))')
    loaded = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, check=True).stdout
    assert 'training.generate' in loaded and 'training.imagenet' in loaded
    assert not [name for name in ['presets', 'networks_edm2', 'networks_ardm', 'networks_mar', 'study'] if f"'training.{name}'" in loaded]

#----------------------------------------------------------------------------
# One training step for every preset.

def preset_data(name):
    """The data a preset is made for: RandomData arguments (tests/loop_family.py)."""
    if name.startswith('edm2-img512') or name in ['mar-b', 'mar-l', 'mar-h', 'ar-b']:
        return dict(resolution=64 if name.startswith('edm2') else 32, channels=4, label_dim=1000, latent=True) # 512 / 256 px via the VAE.
    if name.startswith('edm2-img256'):
        return dict(resolution=32, channels=4, label_dim=int(name.split('-')[3][:-1]), latent=True) # K sources.
    if name.startswith('edm2-img64'):
        return dict(resolution=64, channels=3, label_dim=1000)
    if 'cifar10' in name:
        return dict(resolution=32, channels=3, label_dim=10)
    if 'mnist' in name:
        return dict(resolution=32, channels=1, label_dim=10) # dataset_tool.py pads MNIST to a power of two.
    assert 'digits' in name, name
    return dict(resolution=8, channels=1, label_dim=10)

def reduced(name):
    """Overrides that shrink a preset's network to CPU size but keep its structure (levels,
    blocks, attention, heads, tokens, patches, stages): EDM2 8 base channels with 4 per attention
    head, ARDM 8 channels, MAR 2 per attention head and a 16-wide head; mar-b/l/h also 2 + 2
    transformer blocks and 2 head blocks (instead of 12-20 and 6-12), ar-b 4 causal blocks and 2
    head blocks (instead of 24 and 6). Full sizes are checked by
    parameter count in test_networks_edm2.py and test_networks_mar.py."""
    opts = presets.resolve(name)
    if opts.family == 'edm2':
        return dict(channels=8)
    if opts.family == 'ardm':
        return dict(channels=8)
    small = dict(width=2 * opts.num_heads, head_width=16)
    if name in ['mar-b', 'mar-l', 'mar-h']:
        small.update(encoder_depth=2, decoder_depth=2, head_depth=2)
    if name == 'ar-b':
        small.update(depth=4, head_depth=2)
    return small

@pytest.mark.parametrize('name', sorted(presets.PRESETS))
def test_every_preset_takes_a_training_step(name, tiny_vae):
    opts = presets.resolve(name, reduced(name))
    family = presets.family_kwargs(opts)
    data = preset_data(name)
    if opts.family == 'edm2':
        family['network_kwargs']['channels_per_head'] = 4
    encoder_kwargs = family['encoder_kwargs'] or (dict(class_name='training.encoders.StabilityVAEEncoder', vae_name=tiny_vae)
        if data.get('latent') else dict(class_name='training.encoders.StandardRGBEncoder'))
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):
        r = training_loop.build_run(dict(class_name='loop_family.RandomData', size=4, **data), encoder_kwargs, family['network_kwargs'],
            family['loss_kwargs'], family['optimizer_kwargs'], family['ema_kwargs'], torch.device('cpu'))
    shape = [data['channels'], data['resolution'], data['resolution']] if not data.get('latent') else [4, data['resolution'] // 1, data['resolution']]
    assert [r.net.img_channels, r.net.img_resolution, r.net.img_resolution] == shape and r.net.label_dim == data['label_dim']
    before = {key: p.detach().clone() for key, p in r.net.named_parameters()}
    at_step = {} # The parameters the optimizer steps from (EDM2 renormalises its weights in the forward pass).
    r.optimizer.register_step_pre_hook(lambda *_: at_step.update({k: p.detach().clone() for k, p in r.net.named_parameters()}))
    batches = training_loop.data_iterator(r.dataset, 0, 2, 0, dict(num_workers=0), torch.device('cpu'))
    lr_kwargs = dict(family['lr_kwargs'], rampup_Mimg=0) # The first step at the preset's learning rate, not 0.
    training_loop.train_step(r, batches, 0, 2, 2, lr_kwargs, torch.device('cpu'),
        loss_scaling=opts.loss_scaling, force_finite=True, grad_clip=opts.grad_clip)
    changed = [key for key, p in r.net.named_parameters() if not torch.equal(p, before[key])]
    assert changed and all(torch.isfinite(p).all() for p in r.net.parameters())
    # Adam's first step in closed form (bias-corrected moments g and g^2; AdamW decays first):
    # p - lr wd p - lr g / (|g| + eps), at the preset's learning rate (no warm-up), whatever the
    # gradient's scale (clipping included); MAR decays its weight matrices, not biases, norms
    # or the head (the paper's recipe).
    assert type(r.optimizer).__name__ == ('AdamW' if opts.family == 'mar' else 'Adam')
    for key, p in r.net.named_parameters():
        decay = opts.weight_decay if opts.family == 'mar' and p.ndim > 1 and not key.startswith('head.') else 0.0
        g, p0 = p.grad, at_step[key]
        expected = p0 * (1 - opts.lr * decay) - opts.lr * g / (g.abs() + 1e-8)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=opts.lr * 1e-3, msg=key)
    # The step moved the output layer (the one every family initialises so the first loss is exact).
    assert any(key.startswith(('unet.out', 'conv_out', 'head.net.out')) for key in changed), changed
    for ema_net, _ in r.ema.get():
        assert all(torch.isfinite(p).all() for p in ema_net.parameters())
    images, labels = next(batches)
    loss = r.loss_fn(net=r.net, images=r.encoder.encode_latents(images), labels=labels)
    assert loss.shape[0] == 2 and torch.isfinite(loss).all()

#----------------------------------------------------------------------------
# A few hundred steps on the real digits lower the loss.

# Small enough for seconds per preset; the structure is each preset's own.
DIGITS_SMALL = {
    'edm2-digits': dict(channels=8, num_blocks=1), 'edm2-digits-study': dict(channels=8),
    'ardm-digits': dict(channels=16, num_blocks=1), 'ardm-digits-bin': dict(channels=16, num_blocks=1),
    'ardm-digits-blur': dict(channels=16, num_blocks=1),
    'mar-digits': dict(width=16, num_heads=2, encoder_depth=1, decoder_depth=1, head_width=16, head_depth=1, batch_mul=1),
    'mar-digits-flow': dict(width=32, num_heads=2, encoder_depth=1, decoder_depth=1, head_width=32, head_depth=1, batch_mul=1),
    'mar-digits-edm': dict(width=16, num_heads=2, encoder_depth=1, decoder_depth=1, head_width=16, head_depth=1, batch_mul=1),
    'mar-digits-causal': dict(width=16, num_heads=2, depth=2, head_width=16, head_depth=1, batch_mul=1),
}

def denoising_error(net, images, labels):
    """Mean squared error of an EDM2 denoiser on images in [-1, 1] at noise levels around
    sigma_data, with fixed noise: a measure of the network that owes nothing to its loss."""
    gen = torch.Generator().manual_seed(0)
    errors = []
    with torch.no_grad():
        for sigma in [0.2, 0.5, 1.0, 2.0]:
            noisy = images + sigma * torch.randn(images.shape, generator=gen)
            errors.append((net(noisy, torch.full([len(images)], sigma), labels) - images).square().mean().item())
    return float(np.mean(errors))

@pytest.mark.parametrize('name', sorted(DIGITS_SMALL))
def test_digits_presets_learn(name, digits_zips, tmp_path):
    # 200 steps of 8 images at the preset's own optimizer, learning rate and loss: the mean loss
    # of the last 100 steps is below that of the first 100 (the loop's status lines). Measured
    # independently of the loss as well: ARDM's loss is in bits, positive and below the uniform
    # guess's log2(levels) once learning; MAR's head losses (squared errors, a KL) are positive;
    # the trained EDM2 network denoises the held-out digits better than the initial one.
    assert sorted(DIGITS_SMALL) == sorted(n for n in presets.PRESETS if 'digits' in n)
    opts, c = config.build(name, dict(DIGITS_SMALL[name], batch=8, duration=1600, status=800, snapshot=1600, checkpoint=1600),
        data=digits_zips['train'])
    c.dataset_kwargs['cache'] = True # Decode each PNG once.
    with contextlib.redirect_stdout(io.StringIO()):
        training_loop.training_loop(run_dir=str(tmp_path), device='cpu', **c)
    losses = [json.loads(line)['Loss/loss'] for line in list(open(tmp_path / 'stats.jsonl'))[1:]] # After 100 and 200 steps.
    assert len(losses) == 2 and all(np.isfinite(losses))
    print(name, losses)
    assert losses[1] < 0.95 * losses[0], losses
    if opts.family == 'ardm':
        assert 0 < losses[1] < np.log2(opts.levels), losses
    if opts.family == 'mar':
        assert min(losses) > 0, losses
    if opts.family == 'edm2':
        from torch_utils import persistence # pylint: disable=import-outside-toplevel
        from training import digits # pylint: disable=import-outside-toplevel
        with open(tmp_path / 'network-snapshot-0000000-0.100.pkl', 'rb') as f:
            initial = persistence.load_pickle(f)['ema'] # An EMA of nothing yet: the initial network.
        trained = copy.deepcopy(initial)
        trained.load_state_dict(torch.load(tmp_path / 'training-state-0000001.pt', weights_only=True)['net'])
        images, labels = digits.load('test')
        images, labels = torch.as_tensor(images[:, None], dtype=torch.float32) / 127.5 - 1, torch.eye(10)[labels]
        before, after = denoising_error(initial, images, labels), denoising_error(trained, images, labels)
        print(name, 'denoising error', before, after)
        assert after < 0.8 * before, (before, after)

