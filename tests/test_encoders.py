"""Encoders: closed-form pixel mappings, the quantizer's level arithmetic, and the VAE encoder
against the diffusers model it wraps (a tiny random AutoencoderKL saved to a temporary folder)."""

import io
import pickle
import numpy as np
import pytest
import torch
from helpers import save_tiny_vae
from torch_utils import persistence
from training import encoders

#----------------------------------------------------------------------------

def all_uint8():
    return torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)

def repickle(obj):
    return persistence.load_pickle(io.BytesIO(pickle.dumps(obj)))

#----------------------------------------------------------------------------

def test_standard_rgb_round_trip():
    enc = encoders.StandardRGBEncoder()
    x = all_uint8()
    y = enc.encode(x)
    assert y.dtype == torch.float32
    assert y.min() == -1 and y.max() == 1
    assert torch.equal(enc.decode(y), x)
    assert torch.equal(repickle(enc).decode(y), x)
    np.testing.assert_allclose(y.flatten().numpy(), np.arange(256) / 127.5 - 1, rtol=0, atol=1e-7)
    # Off the grid: the nearest level (EDM2's decode, x * 127.5 + 128 truncated), clipped to 0..255;
    # a level's neighbourhood of +-0.45 steps decodes to it, whichever side.
    levels = np.arange(-3, 259)
    for offset in [-0.45, -0.2, 0.2, 0.45]:
        y = torch.as_tensor((levels + offset) / 127.5 - 1, dtype=torch.float32)
        np.testing.assert_array_equal(enc.decode(y).numpy(), np.clip(levels, 0, 255), err_msg=str(offset))

@pytest.mark.parametrize('levels', [2, 3, 17, 100, 256])
def test_quantize_matches_closed_form(levels):
    enc = encoders.QuantizeEncoder(levels=levels)
    x = all_uint8()
    k = enc.encode(x)
    assert k.dtype == torch.float32
    expected = np.floor(np.arange(256) * levels / 256)
    assert np.array_equal(k.flatten().numpy(), expected)
    assert k.min() == 0 and k.max() == levels - 1
    decoded = enc.decode(torch.arange(levels, dtype=torch.float32))
    assert np.array_equal(decoded.numpy(), np.round(np.arange(levels) * 255 / (levels - 1)).astype(np.uint8))
    assert repickle(enc).levels == levels

def test_quantize_special_cases():
    x = all_uint8()
    assert torch.equal(encoders.QuantizeEncoder(levels=256).encode(x), x.float())
    assert torch.equal(encoders.QuantizeEncoder(levels=256).decode(x.float()), x)
    assert torch.equal(encoders.QuantizeEncoder(levels=2).encode(x), (x >= 128).float())

def test_quantize_digits_levels_round_trip():
    # The built-in digits store gray level v in 0..16 as round(v * 255 / 16).
    enc = encoders.QuantizeEncoder(levels=17)
    v = torch.arange(17)
    stored = torch.from_numpy(np.round(np.arange(17) * 255 / 16).astype(np.uint8))
    assert torch.equal(enc.encode(stored), v.float())
    assert torch.equal(enc.decode(v.float()), stored)

def test_quantize_rejects_bad_levels():
    with pytest.raises(ValueError, match='levels'):
        encoders.QuantizeEncoder(levels=1)

#----------------------------------------------------------------------------

def test_vae_encoder_matches_diffusers(tmp_path):
    vae = save_tiny_vae(tmp_path / 'vae')
    enc = encoders.StabilityVAEEncoder(vae_name=str(tmp_path / 'vae'), batch_size=3)
    x = torch.randint(0, 256, [5, 3, 16, 16], generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    with torch.no_grad():
        raw = enc.encode_pixels(x)
        posterior = vae.encode(x.float() / 255)['latent_dist']
        direct = vae.decode(posterior.mean)['sample'].clamp(0, 1).mul(255).to(torch.uint8)
        decoded = enc.decode(enc.scale_latents(posterior.mean))
    assert raw.shape == (5, 8, 2, 2) and raw.dtype == torch.float32
    torch.testing.assert_close(raw, torch.cat([posterior.mean, posterior.std], dim=1), rtol=1e-5, atol=1e-5)
    assert decoded.shape == (5, 3, 16, 16) and decoded.dtype == torch.uint8
    assert (decoded.int() - direct.int()).abs().max() <= 1

    # Final latents: a posterior sample, whitened with the EDM2 constants.
    scale = 0.5 / np.float32([4.17, 4.62, 3.71, 3.28])
    np.testing.assert_allclose(enc.scale, scale, rtol=1e-6)
    np.testing.assert_allclose(enc.bias, -np.float32([5.81, 3.25, 0.12, -2.15]) * scale, rtol=1e-6)
    torch.manual_seed(2)
    final = enc.encode_latents(raw)
    torch.manual_seed(2)
    sample = raw[:, :4] + torch.randn_like(raw[:, :4]) * raw[:, 4:]
    torch.testing.assert_close(final, sample * torch.tensor(scale).reshape(1, -1, 1, 1) + torch.tensor(enc.bias).reshape(1, -1, 1, 1))

    # Grayscale input is the same image in all three channels.
    gray = x[:, :1]
    with torch.no_grad():
        torch.testing.assert_close(enc.encode_pixels(gray), enc.encode_pixels(gray.expand(-1, 3, -1, -1)))

def test_vae_encoder_pickles_without_weights(tmp_path):
    save_tiny_vae(tmp_path / 'vae')
    enc = encoders.StabilityVAEEncoder(vae_name=str(tmp_path / 'vae'))
    enc.init(torch.device('cpu'))
    data = pickle.dumps(enc)
    assert len(data) < 20000 # The VAE weights stay out of snapshots.
    loaded = persistence.load_pickle(io.BytesIO(data))
    assert loaded._vae is None and loaded.vae_name == enc.vae_name and loaded.batch_size == 8
    np.testing.assert_array_equal(loaded.scale, enc.scale)
    np.testing.assert_array_equal(loaded.bias, enc.bias)

def test_vae_offline_error_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv('EDM2_CACHE_DIR', str(tmp_path / 'cache'))
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    with pytest.raises(FileNotFoundError) as e:
        encoders.load_stability_vae('no-such-org/no-such-vae')
    message = str(e.value)
    assert 'save_pretrained' in message and str(tmp_path / 'cache' / 'diffusers') in message
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='empty'):
        encoders.load_stability_vae(str(tmp_path / 'empty'))

#----------------------------------------------------------------------------
