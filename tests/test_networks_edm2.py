"""EDM2 network and loss: magnitude preservation, forced weight normalisation, the official
architecture's parameter names and counts, EDM preconditioning and the loss in closed form."""

import re

import numpy as np
import pytest
import torch

from torch_utils import util
from training import networks_edm2 as N
from training import presets

def small_net(**kwargs):
    torch.manual_seed(0)
    kwargs = dict(dict(img_resolution=16, img_channels=3, label_dim=10, model_channels=32, channel_mult=[1, 2],
        num_blocks=1, attn_resolutions=[8]), **kwargs)
    return N.Precond(**kwargs)

def rms(x):
    return x.square().mean().sqrt().item()

#----------------------------------------------------------------------------
# Magnitude preservation.

def test_primitives_preserve_unit_magnitude():
    torch.manual_seed(0)
    a, b = torch.randn(2, 100000)
    assert abs(rms(N.mp_silu(a)) - 1) < 0.01
    for t in [0.0, 0.3, 0.5, 0.9]:
        assert abs(rms(N.mp_sum(a, b, t=t)) - 1) < 0.01
    a2, b2 = torch.randn(8, 96, 64), torch.randn(8, 32, 64)
    for t in [0.3, 0.5]:
        y = N.mp_cat(a2, b2, dim=1, t=t)
        assert y.shape == (8, 128, 64) and abs(rms(y) - 1) < 0.01
        # b2 contributes the fraction t^2 / ((1-t)^2 + t^2) of the energy.
        share = y[:, 96:].square().sum() / y.square().sum()
        assert abs(share.item() - t ** 2 / ((1 - t) ** 2 + t ** 2)) < 0.01
    x = torch.randn(4, 7, 5, 5) * 3 + 1
    assert torch.allclose(N.normalize(x).square().mean(dim=[1, 2, 3]), torch.ones(4), atol=1e-3)
    assert torch.allclose(N.normalize(x, dim=1).square().mean(dim=1), torch.ones(4, 5, 5), atol=1e-3)

def test_mpconv_forced_weight_normalization_and_magnitude():
    torch.manual_seed(0)
    conv = N.MPConv(64, 32, kernel=[3, 3])
    with torch.no_grad():
        conv.weight.mul_(torch.rand(32, 1, 1, 1) * 5 + 0.5) # Rows of arbitrary norms.
    before = conv.weight.detach().clone()
    x = torch.randn(16, 64, 12, 12)
    y_eval = conv.eval()(x)
    assert torch.equal(conv.weight, before) # Eval mode leaves the weights alone.
    y_train = conv.train()(x)
    row_norms = conv.weight.detach().flatten(1).norm(dim=1)
    assert torch.allclose(row_norms, torch.full([32], np.sqrt(64 * 9)), rtol=1e-3) # Unit RMS per output channel.
    assert torch.allclose(y_eval, y_train, rtol=1e-3, atol=1e-4) # Weight scale never reaches the output.
    assert abs(rms(y_train[:, :, 1:-1, 1:-1]) - 1) < 0.05
    fc = N.MPConv(256, 128, kernel=[]).train()
    assert abs(rms(fc(torch.randn(4096, 256), gain=2)) - 2) < 0.05

@pytest.mark.parametrize('flavor,mode,attention', [('enc', 'keep', False), ('enc', 'down', True), ('dec', 'up', False), ('dec', 'keep', True)])
def test_block_preserves_magnitude_at_init(flavor, mode, attention):
    torch.manual_seed(0)
    block = N.Block(64, 128, 256, flavor=flavor, resample_mode=mode, attention=attention).eval()
    with torch.no_grad():
        block.emb_gain.fill_(1)
    y = block(torch.randn(8, 64, 16, 16), torch.randn(8, 256))
    size = {'keep': 16, 'down': 8, 'up': 32}[mode]
    assert y.shape == (8, 128, size, size)
    assert 0.8 < rms(y) < 1.25, rms(y)

def test_unet_output_magnitude_at_init():
    net = small_net().eval()
    x = torch.randn(16, 3, 16, 16)
    labels = torch.nn.functional.one_hot(torch.arange(16) % 10, 10).float()
    with torch.no_grad():
        assert net.unet(x, torch.zeros(16), labels).abs().max() == 0 # out_gain starts at 0.
        net.unet.out_gain.fill_(1)
        for name, p in net.named_parameters():
            if name.endswith('emb_gain'):
                p.fill_(1)
        y = net.unet(x, torch.randn(16), labels)
    assert y.shape == x.shape
    assert 0.5 < rms(y) < 2, rms(y)

#----------------------------------------------------------------------------
# Preconditioning and the loss.

def test_precond_closed_form_at_init():
    net = small_net().eval()
    x = torch.randn(6, 3, 16, 16)
    sigma = torch.tensor([0.002, 0.1, 0.5, 1.0, 10.0, 80.0])
    with torch.no_grad():
        D, logvar = net(x, sigma, None, return_logvar=True) # F = 0 at init: D = c_skip x.
    c_skip = 0.25 / (sigma ** 2 + 0.25)
    assert torch.allclose(D, c_skip.reshape(-1, 1, 1, 1) * x, rtol=1e-6, atol=1e-7)
    assert logvar.shape == (6, 1, 1, 1) and logvar.abs().max() > 0
    with torch.no_grad():
        net.unet.out_gain.fill_(1)
        D = net(x, sigma[2:3].expand(6), torch.eye(10)[:6])
        F = net.unet(x / np.sqrt(0.5), (torch.log(torch.tensor(0.5)) / 4).expand(6), torch.eye(10)[:6])
    assert torch.allclose(D, 0.5 * x + 0.5 / np.sqrt(2) * F, atol=1e-5) # sigma = sigma_data: c_skip 1/2, c_out 1/sqrt(2)

def test_fp16_is_a_documented_no_op_on_cpu():
    # use_fp16 (train_edm2.py --fp16) runs the U-Net in float16 on CUDA only; on the CPU every
    # layer sees float32 and the output equals that of use_fp16=False bit for bit.
    nets = [small_net(use_fp16=flag).eval() for flag in [True, False]]
    seen = []
    for net in nets:
        for name, p in net.named_parameters():
            if name.endswith('_gain'):
                p.data.fill_(1) # Let the U-Net reach the output.
        net.unet.enc['16x16_conv'].register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    x, sigma, labels = torch.randn(2, 3, 16, 16), torch.ones(2), torch.eye(10)[:2]
    with torch.no_grad():
        fp16, fp32 = [net(x, sigma, labels) for net in nets]
    assert seen == [torch.float32, torch.float32] and fp16.dtype == torch.float32
    assert torch.equal(fp16, fp32) and not torch.equal(fp16, nets[0].unet.out_gain * 0 + 0.5 * x)
    import train_edm2 # pylint: disable=import-outside-toplevel
    assert 'Mixed precision on CUDA' in ' '.join(train_edm2.main.get_help(train_edm2.click.Context(train_edm2.main)).split())

def test_unconditional_label_is_zero_row():
    net = small_net().eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith('_gain'):
                p.fill_(1) # At init the embedding does not modulate anything yet.
        x = torch.randn(3, 3, 16, 16)
        assert torch.equal(net(x, torch.ones(3), None), net(x, torch.ones(3), torch.zeros(3, 10)))
        assert not torch.equal(net(x, torch.ones(3), None), net(x, torch.ones(3), torch.eye(10)[:3]))

class FixedDenoiser(torch.nn.Module):
    """D(x) = 0, u = const: the loss is lambda(sigma) / e^u * |y|^2 + u in closed form."""
    def __init__(self, logvar):
        super().__init__()
        self.logvar = logvar
        self.seen_labels = None
    def forward(self, x, sigma, labels, return_logvar=False):
        self.seen_labels = labels
        return torch.zeros_like(x), torch.full([x.shape[0], 1, 1, 1], self.logvar)

def test_edm2_loss_closed_form():
    images = torch.randn(64, 3, 4, 4)
    loss_fn = N.EDM2Loss(P_mean=-0.4, P_std=1.0, sigma_data=0.5)
    torch.manual_seed(1)
    loss = loss_fn(net=FixedDenoiser(0.7), images=images, labels=None)
    torch.manual_seed(1)
    sigma = (torch.randn(64, 1, 1, 1) - 0.4).exp()
    weight = (sigma ** 2 + 0.25) / (sigma * 0.5) ** 2
    assert loss.shape == images.shape
    assert torch.allclose(loss, weight / np.exp(0.7) * images ** 2 + 0.7, rtol=1e-5)

def test_edm2_loss_label_dropout():
    labels = torch.eye(10)[torch.arange(4000) % 10]
    net = FixedDenoiser(0.0)
    torch.manual_seed(0)
    N.EDM2Loss(label_dropout=0.2)(net=net, images=torch.zeros(4000, 1, 1, 1), labels=labels)
    dropped = (net.seen_labels.sum(1) == 0).float().mean().item()
    assert abs(dropped - 0.2) < 0.03
    assert torch.equal(net.seen_labels[net.seen_labels.sum(1) > 0], labels[net.seen_labels.sum(1) > 0])
    N.EDM2Loss(label_dropout=0.0)(net=net, images=torch.zeros(4000, 1, 1, 1), labels=labels)
    assert torch.equal(net.seen_labels, labels)
    with pytest.raises(ValueError, match='label_dropout must be in'):
        N.EDM2Loss(label_dropout=1.0)

#----------------------------------------------------------------------------
# The official architecture: parameter counts of the paper's Tables 2 and 3, names, the digits
# preset for real.

def build_preset_net(name, device, label_dim=None):
    family = util.EasyDict(presets.family_kwargs(presets.resolve(name)))
    resolution, channels = (64, 4) if 'img512' in name else (32, 4) if 'img256' in name else (64, 3) if 'img64' in name else (8, 1)
    label_dim = label_dim if label_dim is not None else 1000 if 'img' in name else 10
    with torch.device(device):
        net = util.construct_class_by_name(img_resolution=resolution, img_channels=channels, label_dim=label_dim, **family.network_kwargs)
    return net, resolution, channels

def parameter_count(name, **kwargs):
    net, _, _ = build_preset_net(name, 'meta', **kwargs)
    return sum(p.numel() for p in net.parameters())

@pytest.mark.parametrize('size,millions', [('xs', 124.7), ('s', 280.2), ('m', 497.8), ('l', 777.5), ('xl', 1119.3), ('xxl', 1523.2)])
def test_official_parameter_counts(size, millions):
    assert abs(parameter_count(f'edm2-img512-{size}') / 1e6 - millions) < 0.1 # EDM2 paper, Table 2: 125M..1.5B

@pytest.mark.parametrize('size,millions', [('s', 280), ('m', 498), ('l', 778), ('xl', 1119)])
def test_official_img64_parameter_counts(size, millions):
    # EDM2 paper, Table 3 (ImageNet-64): 280M..1119M, whole millions (777.49M prints as 778).
    # The pixel model differs from the latent one
    # of the same size only in the first and last convolutions (3 instead of 4 channels in and
    # out, 3x3 kernels): 2 * 9 * channels parameters fewer.
    count = parameter_count(f'edm2-img64-{size}')
    assert abs(count / 1e6 - millions) < 0.55
    channels = presets.resolve(f'edm2-img64-{size}').channels
    assert parameter_count(f'edm2-img512-{size}') - count == 2 * 9 * channels

def test_multisource_parameter_counts():
    # The study's 12 presets are one XS network on 32x32x4 latents; K sources differ only in
    # the class embedding, a [4 * 128, K] matrix.
    sizes = [tuple(map(int, m.groups())) for m in map(re.compile(r'edm2-img256-xs-(\d+)c-(\d+)').fullmatch, presets.PRESETS) if m]
    assert len(sizes) == 12
    counts = {(k, n): parameter_count(f'edm2-img256-xs-{k}c-{n}', label_dim=k) for k, n in sizes}
    for (k, n), count in counts.items():
        assert count == counts[1, 100] + (k - 1) * 4 * 128, (k, n)

def test_official_parameter_names():
    net, _, _ = build_preset_net('edm2-img512-xs', 'meta')
    shapes = {name: tuple(p.shape) for name, p in net.state_dict().items()}
    expected = {
        'unet.out_gain': (), 'unet.emb_fourier.freqs': (128,), 'unet.emb_noise.weight': (512, 128),
        'unet.emb_label.weight': (512, 1000), 'unet.enc.64x64_conv.weight': (128, 5, 3, 3),
        'unet.enc.64x64_block0.emb_gain': (), 'unet.enc.32x32_down.conv_res0.weight': (128, 128, 3, 3),
        'unet.enc.32x32_block0.conv_skip.weight': (256, 128, 1, 1), 'unet.enc.16x16_block0.attn_qkv.weight': (1152, 384, 1, 1),
        'unet.dec.8x8_in0.attn_proj.weight': (512, 512, 1, 1), 'unet.dec.8x8_in1.emb_linear.weight': (512, 512),
        'unet.dec.64x64_block3.conv_res0.weight': (128, 256, 3, 3), 'unet.dec.16x16_up.conv_res1.weight': (512, 512, 3, 3),
        'unet.out_conv.weight': (4, 128, 3, 3), 'logvar_fourier.phases': (128,), 'logvar_linear.weight': (1, 128),
    }
    for name, shape in expected.items():
        assert shapes.get(name) == shape, name
    assert 'unet.enc.64x64_block3.emb_gain' not in shapes and 'unet.dec.64x64_block4.emb_gain' not in shapes
    assert sum(name.endswith('attn_qkv.weight') for name in shapes) == 3 * 2 + 1 + 4 * 2 # enc: 3 blocks at 16 and 8; dec: in0, 4 blocks at 8 and 16

def test_official_creation_order():
    # The order in which the modules are created decides which random draws become which
    # initial weights (a seed gives the official network) and the order of state dicts and
    # optimizer states: it is the official one (checked against NVlabs/edm2 4bf8162).
    net = small_net()
    names = [name for name, _ in net.named_parameters()]
    assert [name.split('.')[2] for name in names if name.endswith('emb_gain')] == ['16x16_block0', '8x8_down', '8x8_block0',
        '8x8_in0', '8x8_in1', '8x8_block0', '8x8_block1', '16x16_up', '16x16_block0', '16x16_block1']
    assert [name[len('unet.dec.8x8_block0.'):] for name in names if name.startswith('unet.dec.8x8_block0.')] == ['emb_gain',
        'conv_res0.weight', 'emb_linear.weight', 'conv_res1.weight', 'conv_skip.weight', 'attn_qkv.weight', 'attn_proj.weight']
    assert [name for name in names if '_block' not in name and '_down' not in name and '_up' not in name and '_in' not in name] == [
        'unet.out_gain', 'unet.emb_noise.weight', 'unet.emb_label.weight', 'unet.enc.16x16_conv.weight', 'unet.out_conv.weight',
        'logvar_linear.weight']
    # The first draws: the noise embedding's Fourier frequencies and phases, then its linear layer.
    torch.manual_seed(0)
    freqs, phases, weight = torch.randn(32) * (2 * np.pi), torch.rand(32) * (2 * np.pi), torch.randn(64, 32)
    assert torch.equal(net.unet.emb_fourier.freqs, freqs) and torch.equal(net.unet.emb_fourier.phases, phases)
    assert torch.equal(net.unet.emb_noise.weight, weight)

def test_digits_preset_preserves_magnitude_for_real():
    # The preset's own network (1.0M parameters, 8x8x1 digits) on the CPU, every gain at 1: the
    # U-Net maps unit-variance inputs to unit-variance outputs and each class changes them.
    # (tests/test_presets.py trains every preset, this one included, for a step.)
    torch.manual_seed(0)
    net, resolution, channels = build_preset_net('edm2-digits', 'cpu')
    assert abs(sum(p.numel() for p in net.parameters()) / 1e6 - 1.0) < 0.01 # README: 1.0M parameters.
    x = torch.randn(64, channels, resolution, resolution)
    labels = torch.eye(10)[torch.arange(64) % 10]
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith('_gain'):
                p.fill_(1)
        y = net.eval().unet(x, torch.randn(64), labels)
        other = net.unet(x, torch.randn(64), labels.roll(1, dims=0))
    assert y.shape == x.shape and 0.5 < rms(y) < 2, rms(y)
    assert rms(y - other) > 0.05 * rms(y)

#----------------------------------------------------------------------------
