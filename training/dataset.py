"""Reading the datasets that dataset_tool.py writes: a ZIP or a folder of PNG/JPEG images or of
.npy latents, with class labels in dataset.json. Constructor names and arguments follow EDM2, so
the `dataset_kwargs` stored in official snapshots construct these classes unchanged."""

import json
import os
import zipfile
import numpy as np
import PIL.Image
import torch
from torch_utils import util

#----------------------------------------------------------------------------
# Base class: subsetting (max_size), x-flip augmentation, caching and one-hot labels. A subclass
# provides the raw images and labels.

class Dataset(torch.utils.data.Dataset):
    def __init__(self,
        name,                   # Name of the dataset.
        raw_shape,              # Shape of the raw image data [N, C, H, W].
        use_labels  = True,     # Use the class labels? False = label_dim is zero.
        max_size    = None,     # Keep a random subset of this many images, None = all. Applied before xflip.
        xflip       = False,    # Double the dataset with x-flipped copies. Applied after max_size.
        random_seed = 0,        # Seed that picks the max_size subset.
        cache       = False,    # Keep decoded images in CPU memory?
    ):
        self._name = name
        self._raw_shape = list(raw_shape)
        self._use_labels = use_labels
        self._cache = cache
        self._cached_images = dict() # {raw_idx: np.ndarray}
        self._raw_labels = None
        self._label_shape = None

        self._raw_idx = np.arange(self._raw_shape[0], dtype=np.int64)
        if max_size is not None and self._raw_idx.size > max_size:
            np.random.RandomState(random_seed % (1 << 31)).shuffle(self._raw_idx)
            self._raw_idx = np.sort(self._raw_idx[:max_size])

        self._xflip = np.zeros(self._raw_idx.size, dtype=np.uint8)
        if xflip:
            self._raw_idx = np.tile(self._raw_idx, 2)
            self._xflip = np.concatenate([self._xflip, np.ones_like(self._xflip)])

    def _get_raw_labels(self):
        if self._raw_labels is None:
            labels = self._load_raw_labels() if self._use_labels else None
            if labels is None:
                labels = np.zeros([self._raw_shape[0], 0], dtype=np.float32)
            assert labels.shape[0] == self._raw_shape[0]
            assert labels.dtype in (np.float32, np.int64)
            assert labels.dtype != np.int64 or (labels.ndim == 1 and np.all(labels >= 0))
            self._raw_labels = labels
        return self._raw_labels

    def _load_raw_image(self, raw_idx): # to be overridden by subclass
        raise NotImplementedError

    def _load_raw_labels(self): # to be overridden by subclass; int64 [N] class ids or float32 [N, D]
        raise NotImplementedError

    def close(self): # to be overridden by subclass
        pass

    def describe(self, raw_idx): # How error messages name an image; to be overridden by subclass.
        return f'{self._name} image {raw_idx}'

    def __getstate__(self):
        return dict(self.__dict__, _raw_labels=None)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __len__(self):
        return self._raw_idx.size

    def __getitem__(self, idx):
        raw_idx = self._raw_idx[idx]
        image = self._cached_images.get(raw_idx, None)
        if image is None:
            image = self._load_raw_image(raw_idx)
            if self._cache:
                self._cached_images[raw_idx] = image
        if list(image.shape) != self._raw_shape[1:]:
            raise ValueError(f'{self.describe(raw_idx)} has shape {list(image.shape)}, but the first image has {self._raw_shape[1:]}: '
                'every image of a dataset must have the same size and channels')
        if self._xflip[idx]:
            image = image[:, :, ::-1]
        return image.copy(), self.get_label(idx)

    def get_label(self, idx):
        label = self._get_raw_labels()[self._raw_idx[idx]]
        if label.dtype == np.int64:
            onehot = np.zeros(self.label_shape, dtype=np.float32)
            onehot[label] = 1
            return onehot
        return label.copy()

    @property
    def name(self):
        return self._name

    @property
    def image_shape(self): # [C, H, W]
        return list(self._raw_shape[1:])

    @property
    def num_channels(self):
        return self.image_shape[0]

    @property
    def resolution(self):
        assert self.image_shape[1] == self.image_shape[2]
        return self.image_shape[1]

    @property
    def label_shape(self):
        if self._label_shape is None:
            raw_labels = self._get_raw_labels()
            if raw_labels.dtype == np.int64:
                self._label_shape = [int(np.max(raw_labels)) + 1]
            else:
                self._label_shape = list(raw_labels.shape[1:])
        return list(self._label_shape)

    @property
    def label_dim(self):
        assert len(self.label_shape) == 1
        return self.label_shape[0]

    @property
    def has_labels(self):
        return any(x != 0 for x in self.label_shape)

    @property
    def sources(self): # [{label, name, original_id}] by label, when the dataset records them; else None.
        return None

#----------------------------------------------------------------------------
# Images (or .npy latents) found recursively in a folder or a ZIP, in sorted name order.

class ImageFolderDataset(Dataset):
    def __init__(self,
        path,                   # Folder or .zip file.
        resolution  = None,     # Require this resolution, None = anything goes.
        **super_kwargs,         # Arguments for the Dataset base class.
    ):
        self._path = path
        self._files = FileTree(path)
        self._image_fnames = [f for f in self._files.fnames if is_image_file(f)]
        if len(self._image_fnames) == 0:
            raise IOError(f'No image files found in {path}')

        name = os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
        raw_shape = [len(self._image_fnames)] + list(self._load_raw_image(0).shape)
        if resolution is not None and (raw_shape[2] != resolution or raw_shape[3] != resolution):
            raise IOError(f'Images in {path} are {raw_shape[3]}x{raw_shape[2]}, expected {resolution}x{resolution}')
        super().__init__(name=name, raw_shape=raw_shape, **super_kwargs)

    def close(self):
        self._files.close()

    def _load_raw_image(self, raw_idx):
        fname = self._image_fnames[raw_idx]
        with self._files.open(fname) as f:
            if fname.lower().endswith('.npy'):
                image = np.load(f)
                return image.reshape(-1, *image.shape[-2:])
            image = np.array(PIL.Image.open(f))
        return image.reshape(*image.shape[:2], -1).transpose(2, 0, 1)

    def describe(self, raw_idx):
        return self._files.describe(self._image_fnames[raw_idx])

    def _load_raw_labels(self):
        labels = load_metadata(self._files).get('labels')
        if labels is None:
            return None
        where = self._files.describe('dataset.json')
        labels = dict(labels)
        missing = [fname for fname in self._image_fnames if fname not in labels]
        if missing:
            raise ValueError(f'{where} has no label for {missing[0]}')
        labels = np.array([labels[fname] for fname in self._image_fnames])
        if labels.ndim == 1 and (labels.dtype.kind != 'i' or labels.min() < 0):
            bad = int(np.flatnonzero((labels < 0) if labels.dtype.kind in 'iuf' else np.ones(len(labels), bool))[0])
            raise ValueError(f'{where}: the label of {self._image_fnames[bad]} is {labels[bad]!r}; class labels are integers >= 0')
        return labels.astype({1: np.int64, 2: np.float32}[labels.ndim])

    def check_shapes(self):
        """Read every image's header (not its pixels) and fail, naming the file, on the first
        one whose shape differs from the first image's: before training or evaluation starts."""
        for raw_idx, fname in enumerate(self._image_fnames):
            with self._files.open(fname) as f:
                shape = _header_shape(f, fname)
            if shape != self._raw_shape[1:]:
                raise ValueError(f'{self.describe(raw_idx)} has shape {shape}, but the first image has {self._raw_shape[1:]}: '
                    'every image of a dataset must have the same size and channels')

    @property
    def sources(self):
        sources = load_metadata(self._files).get('sources') if self._use_labels else None
        if not sources:
            return None
        return [dict(label=s['label'], name=s['name'], original_id=s.get('original_id', s['label']))
            for s in sorted(sources, key=lambda s: s['label'])]

#----------------------------------------------------------------------------
# The files of a folder or of a ZIP archive, named by '/'-separated paths relative to the root,
# in sorted order. dataset_tool.py reads its sources through this class too.

class FileTree:
    def __init__(self, path):
        self.path = path
        self.is_zip = os.path.isfile(path) and path.lower().endswith('.zip')
        self._zipfile = None
        self._zipfile_pid = None
        if os.path.isdir(path):
            self.fnames = sorted(os.path.relpath(os.path.join(root, fname), start=path).replace('\\', '/')
                for root, _dirs, files in os.walk(path) for fname in files)
        elif self.is_zip:
            self.fnames = sorted(f for f in self._get_zipfile().namelist() if not f.endswith('/'))
        elif not os.path.exists(path):
            raise FileNotFoundError(f'No such file or folder: {path}')
        else:
            raise IOError(f'Dataset path must be a folder or a .zip file: {path}')

    def _get_zipfile(self):
        # A ZipFile shares its file offset with every process forked from the one that opened
        # it, so each process (e.g. each DataLoader worker) opens its own handle.
        if self._zipfile is None or self._zipfile_pid != os.getpid():
            self._zipfile = zipfile.ZipFile(self.path)
            self._zipfile_pid = os.getpid()
        return self._zipfile

    def open(self, fname):
        if self.is_zip:
            return self._get_zipfile().open(fname, 'r')
        return open(os.path.join(self.path, fname), 'rb')

    def describe(self, fname): # How error messages name a file.
        return f'{self.path}:{fname}' if self.is_zip else os.path.join(self.path, fname)

    def close(self):
        try:
            if self._zipfile is not None and self._zipfile_pid == os.getpid():
                self._zipfile.close()
        finally:
            self._zipfile = None

    def __getstate__(self):
        return dict(self.__dict__, _zipfile=None)

_MODE_CHANNELS = {'1': 1, 'L': 1, 'P': 1, 'I': 1, 'F': 1, 'I;16': 1, 'I;16B': 1, 'I;16L': 1, 'LA': 2, 'RGB': 3, 'YCbCr': 3, 'RGBA': 4, 'CMYK': 4}

def _header_shape(f, fname):
    """[C, H, W] as _load_raw_image would return it, from the file header alone."""
    if fname.lower().endswith('.npy'):
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape = list(read_header(f)[0])
        return [int(np.prod(shape[:-2]))] + shape[-2:]
    image = PIL.Image.open(f)
    return [_MODE_CHANNELS.get(image.mode, len(image.getbands())), image.size[1], image.size[0]]

def is_image_file(fname): # An image PIL can read, or a .npy latent.
    PIL.Image.init()
    return os.path.splitext(fname)[1].lower() in PIL.Image.EXTENSION.keys() | {'.npy'}

def load_metadata(files): # The parsed dataset.json of a FileTree, {} when there is none.
    try:
        with files.open('dataset.json') as f:
            return json.load(f) or {}
    except (KeyError, FileNotFoundError): # KeyError: not in the ZIP.
        return {}

#----------------------------------------------------------------------------
