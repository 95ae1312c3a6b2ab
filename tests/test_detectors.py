"""training/detectors.py with random weights built here (no download): the Inception-v3 pickle
loaded from a local path, a file:// URL, the download cache and as a TorchScript archive; DINOv2
preprocessing and loading from a local torch.hub repository plus checkpoint, or a whole-model
file; the digits detector and classifier; clear errors when files are missing."""

import os

import numpy as np
import pytest
import torch

from helpers import fake_dinov2, fake_inception
from torch_utils import util
from training import detectors
from training import digits

#----------------------------------------------------------------------------
# The Inception-v3 pickle (helpers.fake_inception: random weights, NVIDIA's call signature).

def random_images(n=5, channels=3, resolution=12, seed=0):
    return torch.as_tensor(np.random.RandomState(seed).randint(0, 256, size=[n, channels, resolution, resolution]), dtype=torch.uint8)

@pytest.mark.parametrize('archive', [False, True])
def test_inception_local_file(tmp_path, archive):
    path = str(tmp_path / 'inception-2015-12-05.pkl')
    module = fake_inception(path, archive=archive)
    det = detectors.InceptionV3Detector(path=path)
    x = random_images()
    features = det(x)
    assert features.shape == (5, det.feature_dim) == (5, 2048) and features.dtype == torch.float32
    assert torch.equal(features, module(x, return_features=True))
    assert torch.equal(det(x), features) # Deterministic.
    gray = random_images(channels=1)
    assert torch.equal(det(gray), module(gray.repeat(1, 3, 1, 1), return_features=True))
    assert detectors.InceptionV3Detector.missing_files(path)[0] == []

def test_inception_file_url_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('EDM2_CACHE_DIR', str(tmp_path / 'cache'))
    local = str(tmp_path / 'inception.pkl')
    module = fake_inception(local)
    x = random_images()
    assert torch.equal(detectors.InceptionV3Detector(path='file://' + local)(x), module(x, return_features=True))

    # The URL is never fetched when the cache holds the file.
    url = detectors.INCEPTION_URL
    files, hint = detectors.InceptionV3Detector.missing_files()
    assert files == [util.url_cache_path(url)] and files[0] in hint and 'inception-2015-12-05.pkl' in hint
    os.makedirs(os.path.dirname(files[0]))
    os.replace(local, files[0])
    assert detectors.InceptionV3Detector.missing_files() == ([], hint)
    assert torch.equal(detectors.InceptionV3Detector()(x), module(x, return_features=True))

def test_inception_missing_and_bad_file(tmp_path, monkeypatch):
    monkeypatch.setenv('EDM2_CACHE_DIR', str(tmp_path / 'cache'))
    with pytest.raises(detectors.DetectorUnavailable, match='inception-2015-12-05.pkl') as e:
        detectors.InceptionV3Detector(path=str(tmp_path / 'nope.pkl'))
    assert util.url_cache_path(detectors.INCEPTION_URL) in str(e.value)
    bad = tmp_path / 'bad.pkl'
    bad.write_bytes(b'not a pickle')
    with pytest.raises(detectors.DetectorUnavailable, match='bad.pkl'):
        detectors.InceptionV3Detector(path=str(bad))

#----------------------------------------------------------------------------
# DINOv2: preprocessing, a fake local hub repository with a checkpoint, a whole-model file.

def test_dinov2_preprocessing():
    value = 200
    x = torch.full([2, 3, 37, 50], value, dtype=torch.uint8)
    y = detectors.dinov2_preprocess(x)
    assert y.shape == (2, 3, 224, 224) and y.dtype == torch.float32
    expected = (value / 255 - torch.tensor(detectors.IMAGENET_MEAN)) / torch.tensor(detectors.IMAGENET_STD)
    torch.testing.assert_close(y[:, :, 100, 100], expected.expand(2, 3), rtol=0, atol=1e-5) # Constant stays constant.
    gray = random_images(channels=1, resolution=30)
    assert torch.equal(detectors.dinov2_preprocess(gray), detectors.dinov2_preprocess(gray.repeat(1, 3, 1, 1)))
    # Antialiased bicubic: downsampling a checkerboard gives its mean, not aliasing.
    board = (torch.arange(448)[:, None] + torch.arange(448)[None, :]) % 2 * 255
    z = detectors.dinov2_preprocess(board.to(torch.uint8).expand(1, 3, 448, 448))
    torch.testing.assert_close(z[0, :, 50:170, 50:170].mean((1, 2)), (0.5 - torch.tensor(detectors.IMAGENET_MEAN)) / torch.tensor(detectors.IMAGENET_STD), atol=0.05, rtol=0)

def test_dinov2_local_hub_repo(tmp_path):
    repo, weights, state = fake_dinov2(tmp_path)
    det = detectors.DINOv2Detector(repo=repo, weights=weights)
    x = random_images(resolution=20)
    features = det(x)
    assert features.shape == (5, det.feature_dim) == (5, 1024)
    expected = detectors.dinov2_preprocess(x).mean([2, 3]) @ state['head.weight'].T + state['head.bias']
    torch.testing.assert_close(features, expected)
    assert torch.equal(det(x), features)
    assert detectors.DINOv2Detector.missing_files(repo, weights)[0] == []

def test_dinov2_environment_and_hub_dir_defaults(tmp_path, monkeypatch):
    repo, weights, state = fake_dinov2(tmp_path)
    monkeypatch.setenv('EDM2_CACHE_DIR', str(tmp_path / 'dnnlib-cache')) # Nothing there.
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path)) # The hub cache layout.
    x = random_images(resolution=20)
    torch.testing.assert_close(detectors.DINOv2Detector()(x), detectors.DINOv2Detector(repo=repo, weights=weights)(x))
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'elsewhere'))
    monkeypatch.setenv('EDM2_DINOV2_REPO', repo)
    monkeypatch.setenv('EDM2_DINOV2_WEIGHTS', weights)
    assert detectors.DINOv2Detector.missing_files()[0] == []

def test_dinov2_where_edm2_downloads_it(tmp_path, monkeypatch):
    # The official calculate_metrics.py downloads DINOv2 with torch.hub into
    # $DNNLIB_CACHE_DIR/torch_hub: found there without any option (before: only in torch.hub.get_dir()).
    monkeypatch.delenv('EDM2_CACHE_DIR', raising=False)
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'torch-hub')) # Empty.
    (tmp_path / 'cache' / 'torch_hub').mkdir(parents=True)
    repo, weights, _ = fake_dinov2(tmp_path / 'cache' / 'torch_hub')
    assert detectors.DINOv2Detector.resolve() == (repo, weights, None)
    x = random_images(resolution=20)
    torch.testing.assert_close(detectors.DINOv2Detector()(x), detectors.DINOv2Detector(repo=repo, weights=weights)(x))
    # Missing everywhere: the message names both places.
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'nothing'))
    files, hint = detectors.DINOv2Detector.missing_files()
    assert files[0] == str(tmp_path / 'nothing' / 'torch_hub' / 'facebookresearch_dinov2_main')
    assert str(tmp_path / 'nothing' / 'torch_hub') in hint and str(tmp_path / 'torch-hub') in hint

def test_dinov2_whole_model_file(tmp_path):
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 1024))
    path = str(tmp_path / 'dinov2.pt')
    torch.jit.save(torch.jit.script(model), path)
    x = random_images()
    torch.testing.assert_close(detectors.DINOv2Detector(model=path)(x), model(detectors.dinov2_preprocess(x)))

def test_dinov2_missing_names_files(tmp_path):
    repo, weights = str(tmp_path / 'repo'), str(tmp_path / 'ckpt' / detectors.DINOV2_CHECKPOINT)
    files, hint = detectors.DINOv2Detector.missing_files(repo, weights)
    assert files == [repo, weights] and 'github.com/facebookresearch/dinov2' in hint
    with pytest.raises(detectors.DetectorUnavailable, match=detectors.DINOV2_CHECKPOINT) as e:
        detectors.DINOv2Detector(repo=repo, weights=weights)
    assert repo in str(e.value) and weights in str(e.value)
    with pytest.raises(detectors.DetectorUnavailable, match='nope.pt'):
        detectors.DINOv2Detector(model=str(tmp_path / 'nope.pt'))

#----------------------------------------------------------------------------
# Digits: PCA features equal to the acceptance test's numpy computation; classifier accuracy.

def digits_test_split():
    images, labels = digits.load('test')
    return torch.as_tensor(images)[:, None], labels

def test_digits_detector_matches_sklearn_pca():
    from sklearn.decomposition import PCA
    images, _ = digits_test_split()
    det = detectors.DigitsDetector()
    features = det(images)
    assert features.shape == (len(images), det.feature_dim) == (len(images), 20)
    x_train, _ = digits.pixels('train')
    expected = PCA(20, random_state=0).fit(x_train).transform(images.reshape(len(images), -1).numpy() / 255)
    np.testing.assert_allclose(features.numpy(), expected, rtol=1e-9, atol=1e-9)
    assert torch.equal(detectors.DigitsDetector()(images), features) # Deterministic, fit included.
    # RGB copies and 2x upsampled copies (area resize back to 8x8) give the same features.
    torch.testing.assert_close(det(images.repeat(1, 3, 1, 1)), features)
    torch.testing.assert_close(det(images.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)), features)

def test_digits_classifier_and_registry():
    images, labels = digits_test_split()
    predicted = detectors.DigitsClassifier()(images)
    assert predicted.dtype == torch.int64 and (predicted.numpy() == labels).mean() > 0.95
    assert set(detectors.DETECTORS) == {'fid', 'fd_dinov2', 'fd_digits'} and set(detectors.CLASSIFIERS) == {'digits_acc'}
    for name, cls in detectors.DETECTORS.items():
        assert cls.name == name and cls.feature_dim > 0

#----------------------------------------------------------------------------

def test_inception_offline_is_one_message(tmp_path, monkeypatch):
    # No network: the error says once what failed and where the file goes (before: the download's
    # own hint, then the detector's, with '..' between them).
    import urllib.error, urllib.request # pylint: disable=import-outside-toplevel,multiple-imports
    monkeypatch.setenv('EDM2_CACHE_DIR', str(tmp_path / 'cache'))
    monkeypatch.delenv('EDM2_INCEPTION', raising=False)
    def offline(*args, **kwargs):
        raise urllib.error.URLError('no route to host')
    monkeypatch.setattr(urllib.request, 'urlopen', offline)
    monkeypatch.setattr(util.time, 'sleep', lambda seconds: None)
    with pytest.raises(detectors.DetectorUnavailable) as e:
        detectors.InceptionV3Detector()
    assert str(e.value) == ('Inception-v3 (FID) cannot be downloaded (<urlopen error no route to host>). It needs '
        f'inception-2015-12-05.pkl (from {detectors.INCEPTION_URL}): place it at {util.url_cache_path(detectors.INCEPTION_URL)} '
        '(or set EDM2_CACHE_DIR), or pass its path with --inception (or EDM2_INCEPTION).')
    assert not os.path.exists(util.url_cache_path(detectors.INCEPTION_URL))
