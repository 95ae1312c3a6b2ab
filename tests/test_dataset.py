"""ImageFolderDataset over ZIPs and folders written by hand (independently of dataset_tool.py):
pixels, one-hot labels, source names, subsets, x-flips, .npy latents and DataLoader workers."""

import os
import numpy as np
import pytest
import torch
from helpers import write_dataset
from torch_utils import util
from training.dataset import ImageFolderDataset

#----------------------------------------------------------------------------

def make_images(n=12, channels=3, size=8, seed=0):
    shape = [n, size, size] + ([channels] if channels > 1 else [])
    return np.random.RandomState(seed).randint(0, 256, size=shape, dtype=np.uint8)

def as_chw(images):
    return images.reshape(*images.shape[:3], -1).transpose(0, 3, 1, 2)

#----------------------------------------------------------------------------

@pytest.mark.parametrize('where', ['data.zip', 'folder'])
@pytest.mark.parametrize('channels', [1, 3])
def test_reads_pixels_and_labels(tmp_path, where, channels):
    images = make_images(channels=channels)
    labels = np.arange(12) % 3
    sources = [{'label': 2, 'name': 'emu', 'original_id': 7}, {'label': 0, 'name': 'cat', 'original_id': 4},
        {'label': 1, 'name': 'dog', 'original_id': 5}]
    ds = ImageFolderDataset(str(write_dataset(tmp_path / where, images, labels, sources)))
    assert len(ds) == 12
    assert ds.image_shape == [channels, 8, 8] and ds.num_channels == channels and ds.resolution == 8
    assert ds.label_shape == [3] and ds.label_dim == 3 and ds.has_labels
    assert ds.sources == sorted(sources, key=lambda s: s['label'])
    assert ds.name == os.path.splitext(where)[0]
    for idx in range(12):
        image, label = ds[idx]
        assert image.dtype == np.uint8 and label.dtype == np.float32
        np.testing.assert_array_equal(image, as_chw(images)[idx])
        np.testing.assert_array_equal(label, np.eye(3, dtype=np.float32)[labels[idx]])

def test_without_labels(tmp_path):
    path = str(write_dataset(tmp_path / 'd.zip', make_images(), np.zeros(12)))
    ds = ImageFolderDataset(path, use_labels=False)
    assert ds.label_dim == 0 and not ds.has_labels and ds[0][1].shape == (0,) and ds.sources is None
    ds = ImageFolderDataset(str(write_dataset(tmp_path / 'u.zip', make_images())))
    assert ds.label_dim == 0 and ds.sources is None

def test_max_size_and_xflip(tmp_path):
    images = make_images(n=20)
    path = str(write_dataset(tmp_path / 'd.zip', images, np.arange(20) % 4))
    a = ImageFolderDataset(path, max_size=7, random_seed=3, xflip=True)
    b = ImageFolderDataset(path, max_size=7, random_seed=3)
    c = ImageFolderDataset(path, max_size=7, random_seed=4)
    assert len(a) == 14 and len(b) == 7
    # Which of the (distinct) images each subset holds, found by their pixels.
    find = lambda ds: [next(j for j, im in enumerate(as_chw(images)) if np.array_equal(ds[i][0], im)) for i in range(7)]
    raw = find(b)
    assert raw == sorted(set(raw)) and raw != find(c)
    for i in range(7):
        np.testing.assert_array_equal(a[i][0], as_chw(images)[raw[i]])
        np.testing.assert_array_equal(a[i + 7][0], as_chw(images)[raw[i]][:, :, ::-1])
        np.testing.assert_array_equal(a[i + 7][1], np.eye(4)[raw[i] % 4])

def test_npy_latents(tmp_path):
    latents = np.random.RandomState(0).randn(5, 8, 4, 4).astype(np.float32)
    ds = ImageFolderDataset(str(write_dataset(tmp_path / 'lat', latents, [0, 1, 0, 1, 1], ext='npy')))
    assert ds.image_shape == [8, 4, 4]
    image, label = ds[3]
    assert image.dtype == np.float32
    np.testing.assert_array_equal(image, latents[3])
    np.testing.assert_array_equal(label, [0, 1])

def test_resolution_check_and_bad_paths(tmp_path):
    path = str(write_dataset(tmp_path / 'd.zip', make_images()))
    assert ImageFolderDataset(path, resolution=8).resolution == 8
    with pytest.raises(IOError, match='expected 16x16'):
        ImageFolderDataset(path, resolution=16)
    with pytest.raises(FileNotFoundError, match='No such file or folder'):
        ImageFolderDataset(str(tmp_path / 'missing.zip'))
    (tmp_path / 'notes.txt').write_text('not a dataset')
    with pytest.raises(IOError, match='folder or a .zip'):
        ImageFolderDataset(str(tmp_path / 'notes.txt'))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(IOError, match='No image files'):
        ImageFolderDataset(str(tmp_path / 'empty'))

def test_constructs_from_edm2_dataset_kwargs(tmp_path, monkeypatch):
    # The dataset_kwargs that the official EDM2 training script stores in its snapshots.
    images = make_images()
    path = str(write_dataset(tmp_path / 'd.zip', images, np.arange(12) % 2))
    kwargs = util.EasyDict(class_name='training.dataset.ImageFolderDataset', path=path, use_labels=True, xflip=False, cache=True)
    ds = util.construct_class_by_name(**kwargs)
    assert len(ds) == 12 and ds.label_dim == 2
    np.testing.assert_array_equal(ds[5][0], as_chw(images)[5])
    # The second read comes from the cache: the file is not read again.
    monkeypatch.setattr(ds, '_read_image', lambda raw_idx: pytest.fail(f'image {raw_idx} read again despite cache=True'))
    image, label = ds[5]
    np.testing.assert_array_equal(image, as_chw(images)[5])
    np.testing.assert_array_equal(label, [0, 1])
    image[:] = 0 # Callers get a copy: the cached image stays intact.
    np.testing.assert_array_equal(ds[5][0], as_chw(images)[5])

def test_dataloader_workers_match_single_process(tmp_path):
    images = make_images(n=40)
    ds = ImageFolderDataset(str(write_dataset(tmp_path / 'd.zip', images, np.arange(40) % 5)))
    ds[0] # Opens the ZIP in this process before the workers fork.
    def load(num_workers):
        loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=num_workers, shuffle=False)
        return [(x.clone(), y.clone()) for x, y in loader]
    single, multi = load(0), load(2)
    assert len(single) == len(multi) == 10
    for (x0, y0), (x1, y1) in zip(single, multi):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    assert torch.equal(torch.cat([x for x, _ in single]), torch.from_numpy(as_chw(images)))

#----------------------------------------------------------------------------
