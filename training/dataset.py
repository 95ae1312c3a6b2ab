"""Reading the datasets that dataset_tool.py writes: a ZIP or a folder of PNG/JPEG images or of
.npy latents, with class labels in dataset.json. Constructor names and arguments follow EDM2, so
the `dataset_kwargs` stored in official snapshots construct these classes unchanged."""

import contextlib
import hashlib
import json
import os
import zipfile
import numpy as np
import PIL.Image
import torch

#----------------------------------------------------------------------------

class Dataset(torch.utils.data.Dataset):
    """Items (image as stored [C, H, W], label) over the raw images that a subclass reads. Item i
    is raw image _raw_idx[i], mirrored when _mirrored[i]: the max_size subset and the x-flipped
    copies are an index map, and no image is read before it is asked for. Labels come out as
    float32 vectors: one-hot for class ids, [0] wide without labels."""

    def __init__(self,
        name,                   # What messages and the run options call the dataset.
        raw_shape,              # [N, C, H, W] of the stored images.
        use_labels  = True,     # False: ignore the stored labels (label_dim 0).
        max_size    = None,     # Use a random subset of this many images; None: all of them.
        xflip       = False,    # Add a mirrored copy of every image used (after max_size).
        random_seed = 0,        # Seed of the max_size subset.
        cache       = False,    # Keep every image in memory once read.
    ):
        self._raw_shape = list(raw_shape)
        self._raw_idx, self._mirrored = _index_map(self._raw_shape[0], max_size, random_seed, xflip)
        self._name = name
        self._use_labels = use_labels
        self._raw_labels = None # Read on first use.
        self._label_shape = None
        self._cache = cache
        self._cached_images = {} # raw index -> image

    # What a subclass provides.
    def _read_image(self, raw_idx): # -> np.ndarray [C, H, W]
        raise NotImplementedError

    def _read_labels(self): # -> int64 class ids [N], float32 vectors [N, D], or None
        raise NotImplementedError

    def close(self):
        """Release what the subclass holds open."""

    @property
    def name(self):
        return self._name

    def describe(self, raw_idx): # How error messages name an image.
        return f'{self._name} image {raw_idx}'

    def __len__(self):
        return self._raw_idx.size

    def __getitem__(self, idx):
        image = self._image(self._raw_idx[idx])
        if self._mirrored[idx]:
            image = image[:, :, ::-1]
        return image.copy(), self.get_label(idx)

    def _image(self, raw_idx):
        image = self._cached_images.get(raw_idx)
        if image is None:
            image = self._read_image(raw_idx)
            if self._cache:
                self._cached_images[raw_idx] = image
        if list(image.shape) != self._raw_shape[1:]:
            raise ValueError(f'{self.describe(raw_idx)} has shape {list(image.shape)}, but the first image has {self._raw_shape[1:]}: '
                'every image of a dataset must have the same size and channels')
        return image

    def get_label(self, idx):
        label = self._labels()[self._raw_idx[idx]]
        if label.dtype != np.int64:
            return label.copy()
        onehot = np.zeros(self.label_shape, dtype=np.float32)
        onehot[label] = 1
        return onehot

    def _labels(self):
        if self._raw_labels is None:
            labels = self._read_labels() if self._use_labels else None
            if labels is None:
                labels = np.zeros([self._raw_shape[0], 0], dtype=np.float32)
            assert len(labels) == self._raw_shape[0] and (labels.dtype == np.float32 or
                (labels.dtype == np.int64 and labels.ndim == 1 and np.all(labels >= 0))), 'labels of an unexpected form'
            self._raw_labels = labels
        return self._raw_labels

    @property
    def label_shape(self):
        if self._label_shape is None:
            labels = self._labels()
            # Class ids: one entry per id up to the largest. Vectors: as stored.
            self._label_shape = [int(labels.max()) + 1] if labels.dtype == np.int64 else list(labels.shape[1:])
        return list(self._label_shape)

    @property
    def label_dim(self): # Labels must be vectors.
        (dim,) = self.label_shape
        return dim

    @property
    def has_labels(self):
        return any(size != 0 for size in self.label_shape)

    @property
    def sources(self): # [{label, name, original_id}] by label, when the dataset records them; else None.
        return None

    @property
    def image_shape(self): # [C, H, W]
        return self._raw_shape[1:]

    @property
    def num_channels(self):
        return self._raw_shape[1]

    @property
    def resolution(self):
        height, width = self._raw_shape[2:]
        assert height == width
        return height

    def __getstate__(self): # DataLoader workers read the labels again rather than receive them.
        return dict(self.__dict__, _raw_labels=None)

    def __del__(self):
        with contextlib.suppress(Exception): # Also called on half-built objects and at exit.
            self.close()

def _index_map(num_images, max_size, seed, xflip):
    """(raw index, mirrored) of every item: the sorted max_size subset, then its mirrored copy."""
    raw_idx = np.arange(num_images, dtype=np.int64)
    if max_size is not None and num_images > max_size:
        # The subset EDM2 draws for the same seed.
        np.random.RandomState(seed % (1 << 31)).shuffle(raw_idx)
        raw_idx = np.sort(raw_idx[:max_size])
    copies = 2 if xflip else 1
    return np.tile(raw_idx, copies), np.repeat(np.arange(copies, dtype=np.uint8), raw_idx.size)

#----------------------------------------------------------------------------

class ImageFolderDataset(Dataset):
    """Images (or .npy latents) found recursively in a folder or a ZIP, in sorted name order, with
    the labels and source names of its dataset.json."""

    def __init__(self,
        path,                   # A folder or a .zip file.
        resolution  = None,     # Refuse images of another resolution; None: any.
        **super_kwargs,         # use_labels, max_size, xflip, random_seed, cache: see Dataset.
    ):
        self._files = FileTree(path)
        self._image_fnames = [f for f in self._files.fnames if is_image_file(f)]
        if not self._image_fnames:
            raise IOError(f'No image files found in {path}')
        first = self._read_image(0)
        if resolution is not None and first.shape[1:] != (resolution, resolution):
            raise IOError(f'Images in {path} are {first.shape[2]}x{first.shape[1]}, expected {resolution}x{resolution}')
        name = os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
        super().__init__(name=name, raw_shape=[len(self._image_fnames), *first.shape], **super_kwargs)

    def close(self):
        self._files.close()

    def describe(self, raw_idx):
        return self._files.describe(self._image_fnames[raw_idx])

    def _read_image(self, raw_idx):
        fname = self._image_fnames[raw_idx]
        with self._files.open(fname) as f:
            if fname.lower().endswith('.npy'):
                latents = np.load(f)
                return latents.reshape(-1, *latents.shape[-2:])
            pixels = np.array(open_image(f, self._files.describe(fname)))
        if pixels.ndim == 2: # Single-channel image: [H, W] -> [H, W, 1].
            pixels = pixels[:, :, np.newaxis]
        return pixels.transpose(2, 0, 1)

    def _read_labels(self):
        labels = load_metadata(self._files).get('labels')
        if labels is None:
            return None
        where = self._files.describe('dataset.json')
        labels = label_map(labels, where)
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

    def fingerprint(self):
        """A digest of what the dataset holds, from its listing alone (no image is read): the image
        names, each ZIP entry's CRC and size, and dataset.json."""
        return self._files.fingerprint(self._image_fnames + ['dataset.json'])

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
            fnames = (os.path.relpath(os.path.join(root, fname), start=path).replace('\\', '/')
                for root, _dirs, files in os.walk(path) for fname in files)
        elif self.is_zip:
            fnames = (f for f in self._get_zipfile().namelist() if not f.endswith('/'))
        elif not os.path.exists(path):
            raise FileNotFoundError(f'No such file or folder: {path}')
        else:
            raise IOError(f'Dataset path must be a folder or a .zip file: {path}')
        self.fnames = sorted(f for f in fnames if not is_macos_metadata(f))

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

    def fingerprint(self, fnames):
        digest = hashlib.sha1()
        for fname in fnames:
            digest.update(fname.encode() + b'\0')
            if self.is_zip:
                with contextlib.suppress(KeyError):
                    info = self._get_zipfile().getinfo(fname)
                    digest.update(f'{info.CRC} {info.file_size}\0'.encode())
        with contextlib.suppress(KeyError, FileNotFoundError), self.open('dataset.json') as f:
            digest.update(f.read())
        return digest.hexdigest()[:16]

    def describe(self, fname): # How error messages name a file.
        return f'{self.path}:{fname}' if self.is_zip else os.path.join(self.path, fname)

    def close(self):
        handle, self._zipfile = self._zipfile, None
        if handle is not None and self._zipfile_pid == os.getpid(): # Never a handle a forked parent owns.
            handle.close()

    def __getstate__(self):
        return dict(self.__dict__, _zipfile=None)

_MODE_CHANNELS = {'1': 1, 'L': 1, 'P': 1, 'I': 1, 'F': 1, 'I;16': 1, 'I;16B': 1, 'I;16L': 1, 'LA': 2, 'RGB': 3, 'YCbCr': 3, 'RGBA': 4, 'CMYK': 4}

def _header_shape(f, fname):
    """[C, H, W] as _read_image would return it, from the file header alone."""
    if fname.lower().endswith('.npy'):
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape = list(read_header(f)[0])
        return [int(np.prod(shape[:-2]))] + shape[-2:]
    image = open_image(f, fname)
    return [_MODE_CHANNELS.get(image.mode, len(image.getbands())), image.size[1], image.size[0]]

def open_image(f, name):
    """PIL.Image.open, with PIL's guard against decompression bombs (a header claiming more
    pixels than PIL.Image.MAX_IMAGE_PIXELS allows twice over) as a ValueError naming the file."""
    try:
        return PIL.Image.open(f)
    except PIL.Image.DecompressionBombError as e:
        raise ValueError(f'{name}: {e}') from None

def is_macos_metadata(fname):
    """What macOS adds to the archives it makes (__MACOSX/ with an AppleDouble ._ file per file)
    and to folders (.DS_Store): never part of a dataset."""
    parts = fname.split('/')
    return '__MACOSX' in parts or parts[-1].startswith('._') or parts[-1] == '.DS_Store'

def label_map(labels, where):
    """dataset.json's [[name, label], ...] as {name: label}. A name listed twice with two
    different labels is an error (a dict would keep the last one silently)."""
    result = {}
    for entry in labels if isinstance(labels, list) else [labels]:
        if not (isinstance(entry, list) and len(entry) == 2):
            raise ValueError(f'{where}: expected "labels": [[name, label], ...], got {entry!r} in it')
        name, label = entry
        if name in result and result[name] != label:
            raise ValueError(f'{where} lists {name} twice, with the labels {result[name]!r} and {label!r}')
        result[name] = label
    return result

def is_image_file(fname): # An image PIL can read, or a .npy latent.
    PIL.Image.init()
    return os.path.splitext(fname)[1].lower() in PIL.Image.EXTENSION.keys() | {'.npy'}

def load_metadata(files, fname='dataset.json'): # The parsed dataset.json of a FileTree, {} when there is none.
    try:
        with files.open(fname) as f:
            return json.load(f) or {}
    except (KeyError, FileNotFoundError): # KeyError: not in the ZIP.
        return {}

#----------------------------------------------------------------------------
