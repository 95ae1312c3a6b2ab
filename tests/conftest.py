"""Shared pytest set-up (pytest.ini puts the repository root and tests/ on the import path):
torch single-threaded, the long timeout of slow tests, and the session fixtures (datasets, a
tiny VAE). The helpers test modules import live in tests/helpers.py."""
import os

import numpy as np
import pytest

from helpers import invoke_ok, save_tiny_vae, write_dataset

os.environ.setdefault('OMP_NUM_THREADS', '1')

def pytest_collection_modifyitems(items):
    """The 10-minute per-test timeout (pytest.ini) guards the fast suite; a `slow` quality run
    trains for real and gets an hour, unless it sets its own timeout."""
    for item in items:
        if item.get_closest_marker('slow') and not item.get_closest_marker('timeout'):
            item.add_marker(pytest.mark.timeout(3600))

@pytest.fixture(scope='session')
def digits_zips(tmp_path_factory):
    """The built-in digits' train and test splits as dataset ZIPs: {'train': path, 'test': path}."""
    root = tmp_path_factory.mktemp('digits')
    paths = {}
    for split in ['train', 'test']:
        paths[split] = str(root / f'digits-{split}.zip')
        invoke_ok('dataset_tool', 'convert', '--source', f'builtin:digits-{split}', '--dest', paths[split])
    return paths

@pytest.fixture(scope='session')
def digits_ref(digits_zips, tmp_path_factory):
    """fd_digits reference statistics of the held-out digits (calculate_metrics.py ref)."""
    dest = str(tmp_path_factory.mktemp('refs') / 'digits-test.pkl')
    invoke_ok('calculate_metrics', 'ref', '--data', digits_zips['test'], '--metrics', 'fd_digits', '--dest', dest, '--batch', 50, '--workers', 0)
    return dest

@pytest.fixture(scope='session')
def tiny_vae(tmp_path_factory):
    """A folder holding a tiny random AutoencoderKL (helpers.save_tiny_vae): 3 -> 4 channels,
    8x downsampling, as Stable Diffusion's VAE."""
    folder = tmp_path_factory.mktemp('vae') / 'vae'
    save_tiny_vae(folder)
    return str(folder)

@pytest.fixture(scope='session')
def tiny_zip(tmp_path_factory):
    """40 random 4x4 grayscale images of 3 classes."""
    rnd = np.random.RandomState(0)
    return write_dataset(tmp_path_factory.mktemp('tiny') / 'tiny.zip', rnd.randint(0, 256, size=[40, 4, 4], dtype=np.uint8),
        rnd.randint(0, 3, size=40))
