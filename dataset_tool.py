"""Build datasets in EDM2's format: convert images from several kinds of sources (with class
selection and per-class sampling), encode them into VAE latents, and decode latents back into
images for inspection. Run `python dataset_tool.py convert --help` for the details."""

import contextlib
import functools
import gzip
import io
import json
import multiprocessing
import os
import pickle
import re
import signal
import tarfile
import zipfile
import click
import numpy as np
import PIL.Image
import psutil
from tqdm import tqdm

from torch_utils import util
from training import digits
from training import imagenet
from training.dataset import FileTree, is_image_file, label_map, load_metadata, open_image

TRANSFORMS = ['none', 'center-crop', 'center-crop-wide', 'center-crop-dhariwal']

class SourceError(ValueError):
    """A problem with the input, reported as a one-line error (also raised in worker processes)."""

#----------------------------------------------------------------------------
# Sources: a list of images, numbered 0..N-1, with optional class labels. `classes` maps each
# class id to (name, original id); the original id differs from the class id only when the
# source is itself a selection whose dataset.json records where its classes came from.
# Sources go to the worker processes (forked, or pickled where fork is unavailable), so they hold
# file names and arrays; open file handles are per process (see training.dataset.FileTree).

class Source:
    def __init__(self, name, size, labels=None, classes=None):
        self.name = name
        self.size = size
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.classes = {} # Only the classes that have images; unnamed ones are named by their id.
        if self.labels is not None:
            known = classes or {}
            self.classes = {int(c): known.get(int(c), (str(c), int(c))) for c in np.unique(self.labels)}

    def load(self, idx): # -> uint8 [H, W] (grayscale) or [H, W, 3]
        raise NotImplementedError

    def choose_mode(self, indices): # Called with the images to convert before any load().
        pass

    def describe(self, idx): # How error messages name an image.
        return f'{self.name} image {idx}'

class ArraySource(Source):
    def __init__(self, name, images, labels, class_names):
        super().__init__(name, len(images), labels, {i: (n, i) for i, n in enumerate(class_names)})
        self.images = images

    def load(self, idx):
        return self.images[idx]

class FileSource(Source):
    def __init__(self, files, fnames, labels, classes):
        super().__init__(files.path, len(fnames), labels, classes)
        self.files = files
        self.fnames = fnames
        self.is_latent = any(f.lower().endswith('.npy') for f in fnames)
        self.mode = 'RGB'

    def choose_mode(self, indices):
        """One channel only when every image to convert is grayscale (a converted MNIST or
        digits); a single colour image, wherever it comes, makes them all RGB (photo collections
        such as ImageNet hold a few grayscale images). Reads file headers only, and stops at the
        first colour image."""
        if self.is_latent:
            return
        for idx in indices:
            if self._open(idx, decode=False).mode not in ('1', 'L', 'LA') + SIXTEEN_BIT_MODES:
                self.mode = 'RGB'
                return
        self.mode = 'L'

    def _open(self, idx, decode=True): # -> PIL image, or an array for .npy
        try:
            with self.files.open(self.fnames[idx]) as f:
                if self.is_latent:
                    return np.load(f)
                image = open_image(f, self.describe(idx))
                if decode:
                    image.load() # Decode now: truncated files fail here, inside the try.
                return image
        except (OSError, ValueError, SyntaxError) as e:
            raise SourceError(f'Cannot read {self.describe(idx)}: {e}')

    def load(self, idx):
        data = self._open(idx)
        return data if self.is_latent else np.array(to_8bit(data, self.describe(idx)).convert(self.mode))

    def describe(self, idx):
        return self.files.describe(self.fnames[idx])

# 16-bit grayscale images (PNG, TIFF) scale to 8 bits; PIL's own conversion would clip them to
# 0 and 255. Floating-point images have no agreed range and are refused.
SIXTEEN_BIT_MODES = ('I;16', 'I;16B', 'I;16L', 'I;16N', 'I')

def to_8bit(image, name):
    if image.mode in SIXTEEN_BIT_MODES:
        x = np.asarray(image, dtype=np.int64)
        if x.size and (x.min() < 0 or x.max() > 65535):
            raise SourceError(f'{name}: {image.mode} pixel values {x.min()}..{x.max()} are not 16-bit (0..65535)')
        return PIL.Image.fromarray(np.round(x * (255 / 65535)).astype(np.uint8), 'L')
    if image.mode == 'F':
        raise SourceError(f'{name}: floating-point pixels (mode F) have no agreed range; convert them to 8 or 16 bits first')
    return image

#----------------------------------------------------------------------------
# Opening each kind of source.

def open_source(source):
    if source.startswith('builtin:'):
        return open_builtin(source)
    if is_imagenet_root(source):
        return open_file_tree(os.path.join(source, 'train'))
    if os.path.isdir(source):
        mnist_images = os.path.join(source, 'train-images-idx3-ubyte.gz')
        return open_mnist(mnist_images) if os.path.isfile(mnist_images) else open_file_tree(source)
    if not os.path.isfile(source):
        raise SourceError(f'--source {source}: no such file or folder')
    name = os.path.basename(source).lower()
    if name.endswith('.zip'):
        return open_file_tree(source)
    if name.endswith(('.tar.gz', '.tgz')):
        return open_cifar10(source)
    if 'idx3-ubyte' in name:
        return open_mnist(source)
    raise SourceError(f'--source {source}: unsupported file; expected a folder, a .zip, the CIFAR-10 '
        'python tarball, an MNIST *-images-idx3-ubyte.gz file or builtin:digits[-train|-test]')

def is_imagenet_root(path):
    """The root that torchvision's ImageNet reads (the multi-source code passes it as --source):
    a train/ folder beside the devkit or the meta.bin parsed from it, or (without either) whose
    class folders are ImageNet synsets (the bundled list is all the labels need). Its train/ is
    the source."""
    train = os.path.join(path, 'train')
    if not os.path.isdir(train):
        return False
    if any(os.path.isfile(os.path.join(path, m)) for m in ['meta.bin', 'ILSVRC2012_devkit_t12.tar.gz']):
        return True
    folders = [e.name for e in os.scandir(train) if e.is_dir()]
    return bool(folders) and all(name in imagenet.synsets() for name in folders)

def open_file_tree(path):
    """A folder or ZIP of images. Classes come from its dataset.json, or else from the class
    subfolders (class id = index in the sorted folder names, as in ImageNet's synset order). Both
    are looked for where the images begin: a ZIP made with `zip -r data.zip mydata/` holds every
    file under mydata/, and its class folders are mydata's subfolders."""
    try:
        files = FileTree(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise SourceError(f'--source {path}: cannot read it ({e})')
    fnames = [f for f in files.fnames if is_image_file(f)]
    if len(fnames) == 0:
        raise SourceError(f'--source {path}: no images found')
    root = common_folder(fnames, stop_at=set(files.fnames))
    where = files.describe(root + 'dataset.json')
    try:
        metadata = load_metadata(files, root + 'dataset.json')
    except ValueError as e:
        raise SourceError(f'Cannot parse {where}: {e}')

    labels, classes = None, {}
    if metadata.get('labels') is not None:
        try:
            label_of = label_map(metadata['labels'], where)
        except ValueError as e:
            raise SourceError(str(e)) from None
        try:
            classes = {s['label']: (s['name'], s.get('original_id', s['label'])) for s in metadata.get('sources') or []}
        except (TypeError, ValueError, KeyError) as e:
            raise SourceError(f'{where}: expected "sources": [{{"label", "name", "original_id"}}, ...] ({type(e).__name__}: {e})')
        missing = [f for f in fnames if not isinstance(label_of.get(f[len(root):]), int) or label_of[f[len(root):]] < 0]
        if missing:
            raise SourceError(f'{where}: no class id >= 0 for {missing[0][len(root):]} '
                f'(got {label_of.get(missing[0][len(root):])!r})')
        labels = [label_of[f[len(root):]] for f in fnames]
    else:
        folders = [f[len(root):].split('/')[0] if '/' in f[len(root):] else None for f in fnames]
        folder_names = sorted(set(folders) - {None})
        if folder_names and None in folders: # An image beside the class folders has no class.
            stray = fnames[folders.index(None)]
            raise SourceError(f'--source {path}: {stray} lies beside the class folders ({", ".join(folder_names[:5])}'
                f'{", ..." if len(folder_names) > 5 else ""}) and so has no class; move it into one of them or remove it')
        if len(folder_names) >= 2:
            index = folder_class_ids(folder_names)
            labels = [index[folder] for folder in folders]
            classes = {i: (folder, i) for folder, i in index.items()}
    return FileSource(files, fnames, labels, classes)

def common_folder(fnames, stop_at=()):
    """The deepest folder ('a/b/', or '' for the root) that holds every one of `fnames`, or the
    first one on the way down whose dataset.json is in `stop_at`."""
    root = ''
    while True:
        tops = {f[len(root):].split('/')[0] if '/' in f[len(root):] else None for f in fnames}
        if len(tops) != 1 or None in tops or root + 'dataset.json' in stop_at:
            return root
        root += tops.pop() + '/'

def folder_class_ids(folder_names):
    """Class id of each class folder: for ImageNet synset folders (n01440764, ...) the official
    ILSVRC-2012 id, which is the position in the sorted list of all 1000 synsets, so that a tree
    holding only some of the classes keeps their ids; otherwise the position in sorted order."""
    synsets = imagenet.synsets()
    if all(name in synsets for name in folder_names):
        return {name: synsets[name] for name in folder_names}
    return {name: i for i, name in enumerate(sorted(folder_names))}

def open_builtin(source):
    """scikit-learn's 8x8 digits, all of them or the fixed train/test split (training/digits.py)."""
    splits = {'builtin:digits': 'all', 'builtin:digits-train': 'train', 'builtin:digits-test': 'test'}
    if source not in splits:
        raise SourceError(f'--source {source}: unknown built-in dataset; choose one of {", ".join(splits)}')
    images, labels = digits.load(splits[source])
    return ArraySource(source, images, labels, [str(c) for c in range(digits.NUM_CLASSES)])

def open_cifar10(path):
    """The CIFAR-10 python tarball (cifar-10-python.tar.gz): the 50,000 training images."""
    try:
        with tarfile.open(path, 'r:gz') as tar:
            def load(member):
                return pickle.load(tar.extractfile(f'cifar-10-batches-py/{member}'), encoding='bytes')
            batches = [load(f'data_batch_{i}') for i in range(1, 6)]
            class_names = [n.decode() for n in load('batches.meta')[b'label_names']]
    except (OSError, KeyError, EOFError, tarfile.TarError, pickle.UnpicklingError) as e:
        raise SourceError(f'--source {path}: not a readable CIFAR-10 python tarball ({e})')
    images = np.concatenate([b[b'data'] for b in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    labels = np.concatenate([b[b'labels'] for b in batches])
    return ArraySource(path, images, labels, class_names)

def read_idx(path):
    """An MNIST idx file (optionally gzipped) -> uint8 array."""
    try:
        with (gzip.open(path, 'rb') if path.endswith('.gz') else open(path, 'rb')) as f:
            data = f.read()
    except OSError as e:
        raise SourceError(f'Cannot read {path}: {e}')
    if len(data) < 4 or data[:3] != b'\0\0\x08':
        raise SourceError(f'{path}: not an uint8 idx file')
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], 'big') for i in range(ndim))
    if len(data) != 4 + 4 * ndim + int(np.prod(shape)):
        raise SourceError(f'{path}: size does not match the idx header {shape}')
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)

def open_mnist(images_path):
    """MNIST (or Fashion-MNIST) idx files; the labels file lies beside the images file."""
    labels_path = os.path.join(os.path.dirname(images_path), os.path.basename(images_path).replace('images-idx3', 'labels-idx1'))
    if not os.path.isfile(labels_path):
        raise SourceError(f'--source {images_path}: the labels file {labels_path} is missing')
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise SourceError(f'{images_path} and {labels_path} do not match: {images.shape} images, {labels.shape} labels')
    return ArraySource(images_path, images, labels, [str(c) for c in range(int(labels.max()) + 1)])

#----------------------------------------------------------------------------
# Selecting images: --classes, --per-class, --max-images, --sim_name.

# The multi-source study's similarity levels (training/imagenet.py): ten ImageNet class ids each.
# Its scripts call them sim3/sim2/sim1, its Python code level1/level2/level3.
SIMILARITY_LEVELS = imagenet.IMAGENET_LEVELS
LEVEL_NAMES = imagenet.LEVEL_ALIASES | {name: name for name in SIMILARITY_LEVELS}

def similarity_level(flag, name):
    """A level's canonical name (sim1..sim3) from either spelling, any case (the study's
    scripts write both sim3 and Sim3)."""
    if name.lower() not in LEVEL_NAMES:
        raise SourceError(f'{flag} {name}: unknown similarity level; choose from {", ".join(LEVEL_NAMES)}')
    return LEVEL_NAMES[name.lower()]

def class_list(_flag, spec): # '171, 182' -> '171,182', so that two spellings of one list agree.
    return ','.join(token.strip() for token in spec.split(','))

def images_per_class(_flag, count): # The multi-source code's --nums: 0 or less = every image.
    return count if count > 0 else 'all'

def one_value(values, canonical):
    """The value of an option that has several spellings: `values` = {flag: value as given,
    None = not given}, `canonical(flag, value)` the value in one form. None when no spelling
    was given; an error when two spellings disagree."""
    given = {flag: value for flag, value in values.items() if value is not None}
    forms = {flag: canonical(flag, value) for flag, value in given.items()}
    if len(set(forms.values())) > 1:
        raise SourceError(' and '.join(f'{flag} {value}' for flag, value in given.items()) + ' disagree; give one of them')
    return next(iter(forms.values()), None)

def choose_classes(source, spec=None, level=None):
    """The class ids to keep, in label order, or None for all of them (keeping their ids).
    `spec`: --classes; `level`: a SIMILARITY_LEVELS name, whose ImageNet ids (the classes'
    original ids) are the default selection, and which --classes must then stay within."""
    if level is None:
        return parse_classes(source, spec) if spec is not None else None
    if spec is not None:
        chosen = parse_classes(source, spec)
        outside = [source.classes[c][1] for c in chosen if source.classes[c][1] not in SIMILARITY_LEVELS[level]]
        if outside:
            raise SourceError(f'--classes {spec}: class id {outside[0]} is not one of the {level} classes {SIMILARITY_LEVELS[level]}')
        return chosen
    by_original_id = {original_id: c for c, (_, original_id) in source.classes.items()}
    missing = [i for i in SIMILARITY_LEVELS[level] if i not in by_original_id]
    if missing:
        raise SourceError(f'--sim_name {level}: {source.name} has no class with the ImageNet id {missing[0]}')
    return [by_original_id[i] for i in SIMILARITY_LEVELS[level]]

def parse_class_range(token, source):
    try:
        return util.parse_int_list(token, max_count=len(source.classes))
    except ValueError as e:
        raise SourceError(f'--classes: {e}') from None

def parse_classes(source, spec):
    """'3,n01440764,5-7' -> class ids, in the order given. Names win over ids when a class is
    named by a number (a folder called '3' is that folder, not class id 3)."""
    by_name = {name: c for c, (name, _) in source.classes.items()}
    chosen = []
    for token in (t.strip() for t in spec.split(',')):
        if token in by_name:
            chosen.append(by_name[token])
        elif re.fullmatch(r'\d+(-\d+)?', token) and all(c in source.classes for c in parse_class_range(token, source)):
            chosen += parse_class_range(token, source)
        else:
            known = ', '.join(f'{c} ({name})' for c, (name, _) in sorted(source.classes.items())[:20])
            raise SourceError(f'--classes: unknown class "{token}" in {source.name}; its classes are {known}'
                + (', ...' if len(source.classes) > 20 else ''))
    if len(set(chosen)) != len(chosen):
        raise SourceError(f'--classes {spec}: a class is listed twice')
    return chosen

def select_images(source, classes=None, per_class=None, seed=0, max_images=None, level=None, held_out=False,
        per_class_flag='--per-class'):
    """Returns (image indices into the source, output label per image or None, [(class id, name,
    original id)] per output label or None). Chosen classes (choose_classes) become labels
    0..K-1 in the order given; each class's sample depends only on (seed, class), not on the
    other classes chosen. The sample is the first `per_class` images of a seeded permutation of
    the class, so a smaller sample is part of a larger one with the same seed; `held_out` keeps
    instead the class's images that the sample leaves out. `per_class_flag`: the option the user
    gave the count with (--nums is the multi-source code's), for the error messages."""
    if held_out and per_class is None:
        raise SourceError(f'--held-out: keeps the images that {per_class_flag} leaves out; give {per_class_flag} (and its --seed)')
    if source.labels is None:
        if classes is not None or per_class is not None or level is not None:
            raise SourceError(f'--classes/{per_class_flag}/--sim_name: {source.name} has no class labels')
        indices = np.arange(source.size)[:max_images]
        return indices, None, None

    chosen = choose_classes(source, classes, level)
    if chosen is None: # Every class, keeping its id.
        chosen = sorted(source.classes)
        new_label = {c: c for c in chosen}
    else:
        new_label = {c: i for i, c in enumerate(chosen)}
    indices = []
    for c in chosen:
        members = np.flatnonzero(source.labels == c)
        if per_class is not None:
            if len(members) < per_class:
                every = '--nums -1' if per_class_flag == '--nums' else 'leave --per-class out'
                raise SourceError(f'{per_class_flag} {per_class}: class {c} ({source.classes[c][0]}) has only {len(members)} images '
                    f'(images are drawn without repeats; {every} for every image)')
            drawn = members[np.random.RandomState([seed, c]).choice(len(members), per_class, replace=False)]
            members = np.setdiff1d(members, drawn) if held_out else drawn
        indices.append(members)
    indices = np.sort(np.concatenate(indices))[:max_images]
    labels = [new_label[c] for c in source.labels[indices]]
    sources = [(new_label[c], *source.classes[c]) for c in chosen]
    return indices, labels, sorted(sources)

#----------------------------------------------------------------------------
# Transforms: resize and crop with PIL, for grayscale [H, W] and RGB [H, W, 3] arrays alike.

def resize(image, width, height, resample=PIL.Image.Resampling.LANCZOS):
    return np.array(PIL.Image.fromarray(image).resize((width, height), resample))

def scale_to(width, height, image):
    if width is None or image.shape[1::-1] == (width, height):
        return image
    return resize(image, width, height)

def center_crop(width, height, image):
    crop = min(image.shape[:2])
    top, left = (image.shape[0] - crop) // 2, (image.shape[1] - crop) // 2
    return resize(image[top : top + crop, left : left + crop], width, height)

def center_crop_wide(width, height, image):
    """Crop to the output's aspect ratio, resize, and letterbox into a width x width square.
    Images too small to fill the box are skipped (returns None)."""
    crop_height = int(np.round(width * image.shape[0] / image.shape[1]))
    if image.shape[1] < width or crop_height < height:
        return None
    top = (image.shape[0] - crop_height) // 2
    image = resize(image[top : top + crop_height], width, height)
    canvas = np.zeros([width, width, *image.shape[2:]], dtype=np.uint8)
    canvas[(width - height) // 2 : (width - height) // 2 + height] = image
    return canvas

def center_crop_dhariwal(size, image):
    """ADM's ImageNet preprocessing: halve with BOX filtering while the short side is at least
    twice the target, resize with BICUBIC so the short side matches, then center crop."""
    pil = PIL.Image.fromarray(image)
    while min(pil.size) >= 2 * size:
        pil = pil.resize(tuple(x // 2 for x in pil.size), resample=PIL.Image.Resampling.BOX)
    scale = size / min(pil.size)
    pil = pil.resize(tuple(round(x * scale) for x in pil.size), resample=PIL.Image.Resampling.BICUBIC)
    image = np.array(pil)
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return image[top : top + size, left : left + size]

def make_transform(transform, width, height):
    """Returns image -> image (or None = skip), after checking that the output is square and a
    power of two, so a bad --resolution fails before any work."""
    if transform != 'none' and width is None:
        raise SourceError(f'--transform {transform} needs --resolution WxH')
    if width is not None:
        out_height = width if transform == 'center-crop-wide' else height
        check_output_size(width, out_height, '--resolution')
    if transform == 'center-crop-dhariwal' and width != height:
        raise SourceError(f'--transform {transform} needs a square --resolution')
    return {
        'none':                 functools.partial(scale_to, width, height),
        'center-crop':          functools.partial(center_crop, width, height),
        'center-crop-wide':     functools.partial(center_crop_wide, width, height),
        'center-crop-dhariwal': functools.partial(center_crop_dhariwal, width),
    }[transform]

def check_output_size(width, height, what):
    if width != height:
        raise SourceError(f'{what}: output images must be square, got {width}x{height}')
    if width < 1 or width & (width - 1) != 0:
        raise SourceError(f'{what}: output size must be a power of two, got {width}x{height}')

#----------------------------------------------------------------------------
# Parallel map that keeps the input order. Workers are forked where possible, so a source's
# arrays are shared rather than pickled; the function is installed once per worker.

_worker_func = None

_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}

def _install_worker_func(func):
    global _worker_func
    _worker_func = func
    # The parent stops the pool: Ctrl-C (SIGINT to the whole process group) is for it alone, and
    # SIGTERM ends a worker quietly, without the parent's handler (util.stop_on_signals). Until
    # now both were blocked (map_ordered): none arrived under the parent's handlers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)

def _call_worker_func(item):
    return _worker_func(item)

def map_ordered(func, items, workers):
    if workers <= 1 or len(items) <= 1:
        yield from map(func, items)
        return
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context('fork' if 'fork' in methods else 'spawn')
    chunksize = max(1, min(64, len(items) // (workers * 8)))
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS) # Workers start with them blocked.
    try:
        pool = context.Pool(workers, initializer=_install_worker_func, initargs=(func,))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    with pool:
        yield from pool.imap(_call_worker_func, items, chunksize=chunksize)

def default_workers():
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1

#----------------------------------------------------------------------------
# Output: EDM2's layout in a ZIP or a folder, written under a temporary name and renamed when
# complete. The ZIP is byte-for-byte reproducible: fixed timestamps and permissions, input order.

def archive_name(idx, ext='png'):
    idx_str = f'{idx:08d}'
    return f'{idx_str[:5]}/img{idx_str}.png' if ext == 'png' else f'{idx_str[:5]}/img-mean-std-{idx_str}.npy'

# What this tool writes: dataset.json and the images (or latents) under archive_name(), in their folders.
WRITTEN_HERE = re.compile(r'dataset\.json|\d{5}/|\d{5}/img\d{8}\.png|\d{5}/img-mean-std-\d{8}\.npy')

def check_dest(dest, overwrite=False):
    """The outputs policy (README): an existing --dest is refused unless --overwrite, which
    replaces only what this tool writes: a ZIP, or a folder, that holds a dataset and nothing
    else. An empty folder is filled."""
    if dest == '':
        raise SourceError('--dest must not be empty')
    is_zip = dest.lower().endswith('.zip')
    if os.path.isdir(dest) and os.listdir(dest) and not overwrite:
        raise SourceError(f'--dest {dest} is a folder that is not empty; choose another name, or pass --overwrite to replace '
            'the dataset in it')
    if os.path.isfile(dest) and not is_zip:
        raise SourceError(f'--dest {dest} is a file; name a folder, or a .zip')
    if overwrite and os.path.lexists(dest):
        foreign = not_written_here(dest)
        if foreign:
            raise SourceError(f'--dest {dest} holds {len(foreign)} file(s) that dataset_tool.py did not write (e.g. {foreign[0]}); '
                '--overwrite replaces only a dataset as this tool writes it, nothing else: choose another --dest')
    util.check_new_output(dest, '--dest', overwrite=overwrite or os.path.isdir(dest), folder=not is_zip)

def not_written_here(dest):
    """The names in an existing --dest (folder or ZIP; folders end in /) that a dataset of this
    tool does not hold."""
    if os.path.isdir(dest):
        names = []
        for root, dirs, files in os.walk(dest):
            prefix = os.path.relpath(root, dest).replace(os.sep, '/') + '/' if root != dest else ''
            names += [prefix + name + '/' for name in dirs] + [prefix + name for name in files]
        return [name for name in names if not WRITTEN_HERE.fullmatch(name)]
    try:
        with zipfile.ZipFile(dest) as zf:
            return [name for name in zf.namelist() if not WRITTEN_HERE.fullmatch(name)]
    except (OSError, zipfile.BadZipFile):
        return [f'{os.path.basename(dest)} itself, which is not a ZIP archive']

@contextlib.contextmanager
def open_dest(dest):
    """Yields write(fname, data); the output appears under `dest` only if the block succeeds."""
    with util.atomic_path(dest) as tmp:
        if dest.lower().endswith('.zip'):
            with zipfile.ZipFile(tmp, 'w', compression=zipfile.ZIP_STORED) as zf:
                def write_zip(fname, data):
                    info = zipfile.ZipInfo(fname, date_time=(1980, 1, 1, 0, 0, 0))
                    info.external_attr = 0o644 << 16
                    zf.writestr(info, data)
                yield write_zip
        else:
            def write_file(fname, data):
                os.makedirs(os.path.dirname(os.path.join(tmp, fname)), exist_ok=True)
                with open(os.path.join(tmp, fname), 'wb') as f:
                    f.write(data)
            yield write_file

def write_dataset(dest, records, labels, sources, total, ext='png', desc='convert'):
    """records: iterable of file contents (bytes), one per output image, or None to skip.
    labels: the label of each record, or None. sources: [(label, name, original id)] or None."""
    kept_labels = []
    num_written = 0
    try:
        with open_dest(dest) as write, tqdm(total=total, desc=desc, unit='img', dynamic_ncols=True) as progress:
            for idx, data in enumerate(records):
                progress.update(1)
                if data is None:
                    continue
                fname = archive_name(num_written, ext)
                write(fname, data)
                if labels is not None:
                    kept_labels.append([fname, int(labels[idx])])
                num_written += 1
            metadata = {'labels': kept_labels if labels is not None else None}
            if sources is not None:
                metadata['sources'] = [dict(label=label, name=name, original_id=original_id) for label, name, original_id in sources]
            write('dataset.json', json.dumps(metadata).encode('utf-8'))
    except OSError as e: # Reading errors are SourceErrors by now: this is about the output.
        raise SourceError(f'Cannot write --dest {dest}: {e.strerror or e}')
    return num_written

def png_bytes(image):
    f = io.BytesIO()
    PIL.Image.fromarray(image).save(f, format='png', compress_level=0, optimize=False)
    return f.getvalue()

def npy_bytes(array):
    f = io.BytesIO()
    np.save(f, array)
    return f.getvalue()

#----------------------------------------------------------------------------
# Command line.

def parse_resolution(_ctx, _param, value):
    if value is None:
        return None
    m = re.fullmatch(r'(\d+)[x,](\d+)', value)
    if not m:
        raise click.BadParameter(f'expected WxH, e.g. 64x64, got "{value}"')
    return int(m.group(1)), int(m.group(2))

@click.group()
def cmdline():
    """Dataset tool: convert images into EDM2's dataset format, encode them into VAE latents,
    decode latents back into images.

    \b
    python dataset_tool.py convert --source=builtin:digits-train --dest=datasets/digits.zip
    python dataset_tool.py convert --source=imagenet/train --dest=datasets/img64-10cls.zip \\
        --resolution=64x64 --transform=center-crop-dhariwal --classes=n01440764,n01443537 --per-class=500
    python dataset_tool.py encode --source=datasets/img512.zip --dest=datasets/img512-sd.zip
    """

def convert_image(source, transform, idx):
    image = transform(source.load(idx))
    return None if image is None else (png_bytes(image), image.shape)

@cmdline.command()
@click.option('--source',     help='Folder, ZIP, CIFAR-10 tarball, MNIST idx.gz, builtin:digits[-train|-test]', metavar='PATH', type=str, required=True)
@click.option('--dest',       help='Output ZIP or empty folder', metavar='PATH', type=str, required=True)
@click.option('--transform',  help='Crop/resize mode', type=click.Choice(TRANSFORMS), default='none', show_default=True)
@click.option('--resolution', help='Output size, e.g. 64x64', metavar='WxH', type=str, callback=parse_resolution)
@click.option('--max-images', help='Stop after this many images', metavar='INT', type=click.IntRange(min=1))
@click.option('--classes',    help='Classes to keep, in label order: ids, id ranges or names, e.g. 3,7 or 0-9 or n01440764,n01443537', metavar='LIST', type=str)
@click.option('--per-class',  help='Pick this many images per class at random, without replacement', metavar='INT', type=click.IntRange(min=1))
@click.option('--seed',       help='Random seed for --per-class', metavar='INT', type=click.IntRange(min=0, max=2**32 - 1), default=0, show_default=True)
@click.option('--held-out',   help='Keep the images of each class that --per-class (same --seed) leaves out', is_flag=True)
@click.option('--workers',    help='Decoding processes  [default: all cores]', metavar='INT', type=click.IntRange(min=1), default=default_workers())
@click.option('--sim_name',   help='Similarity level of the multi-source study (sim1..3, or level3..1): its ImageNet classes, or a check of --classes', metavar='NAME', type=str)
@click.option('--level_name', help='Same as --sim_name', metavar='NAME', type=str)
@click.option('--class_labels', help='Same as --classes', metavar='LIST', type=str)
@click.option('--nums',       help='Same as --per-class; 0 or -1 = every image of each class', metavar='INT', type=int)
@click.option('--overwrite',  help='Replace an existing --dest', is_flag=True)
@util.one_line_errors
def convert(source, dest, transform, resolution, max_images, classes, per_class, seed, held_out, workers, sim_name, level_name, class_labels, nums, overwrite):
    """Convert images into a dataset ZIP (or folder) of PNGs with a dataset.json.

    Classes come from dataset.json, from the top-level subfolders (sorted: for an ImageNet
    train/ folder, the standard class ids), or from the labels of CIFAR-10, MNIST and digits.
    --classes keeps the listed classes and relabels them 0..K-1 in the order given;
    dataset.json records each label's source name and original id under "sources".
    --per-class N takes the first N images of a permutation of each class seeded by --seed and
    the class (so a smaller N is part of a larger one); --held-out keeps the rest of each class
    instead (e.g. reference images that a model trained on the draw never saw).
    The same options and seed give a byte-identical ZIP, whatever --workers is.

    builtin:digits is scikit-learn's 8x8 digits as 1-channel PNGs (gray level v in 0..16 stored
    as round(v * 255 / 16)); builtin:digits-train and builtin:digits-test are a fixed, stratified
    80/20 split of it (1438 and 359 images). CIFAR-10 gives its 50,000 training images; MNIST
    reads train-images-idx3-ubyte.gz (or the given *-images-idx3-ubyte.gz) and its labels file.
    Folders and ZIPs give 1-channel images when every image converted is grayscale, else RGB
    (grayscale images then get three equal channels), whatever the order of the files.

    The multi-source study's flags work too: --class_labels (= --classes), --nums
    (= --per-class; -1 = all), --sim_name/--level_name, and an ImageNet root as torchvision
    reads it (its train/ folder is the source).
    """
    classes = one_value({'--classes': classes, '--class_labels': class_labels}, class_list)
    per_class_given = per_class
    per_class = one_value({'--per-class': per_class, '--nums': nums}, images_per_class)
    per_class = None if per_class == 'all' else per_class
    level = one_value({'--sim_name': sim_name, '--level_name': level_name}, similarity_level)
    check_dest(dest, overwrite)
    width, height = resolution if resolution is not None else (None, None)
    transform_image = make_transform(transform, width, height)
    if width is not None:
        check_memory(width, width if transform == 'center-crop-wide' else height, workers)
    selection = dict(classes=classes, per_class=per_class, seed=seed, max_images=max_images, level=level, held_out=held_out,
        per_class_flag='--nums' if nums is not None and per_class_given is None else '--per-class')
    with util.stop_on_signals():
        convert_images(source, dest, transform_image, workers, selection)

def check_memory(width, height, workers):
    """Each worker holds about four copies of an output image at a time (the resized array, PIL's,
    the PNG, the one sent to the writer): refuse sizes that cannot fit before any work."""
    need = 4 * width * height * 3 * workers
    available = psutil.virtual_memory().available
    if need > available:
        raise SourceError(f'--resolution {width}x{height}: converting takes about {need / 2**30:,.1f} GiB of memory '
            f'({workers} worker(s) x 4 copies of one {width}x{height} RGB image), more than the {available / 2**30:.1f} GiB '
            'available; choose a smaller --resolution or fewer --workers')

def convert_images(source, dest, transform_image, workers, selection):
    """Write the images that select_images(**selection) chooses from `source` into `dest`."""
    src = open_source(source)
    if getattr(src, 'is_latent', False):
        raise SourceError(f'--source {source} holds latents (.npy); use `dataset_tool.py decode`')
    indices, labels, sources = select_images(src, **selection)
    src.choose_mode(indices)
    results = map_ordered(functools.partial(convert_image, src, transform_image), indices, workers)

    def records():
        first = None
        for idx, result in zip(indices, results):
            if result is None:
                yield None
                continue
            data, shape = result
            if first is None:
                first = (idx, shape)
                check_output_size(shape[1], shape[0], f'images of {source} (use --resolution)')
            elif shape != first[1]:
                raise SourceError(f'Mixed image sizes: {src.describe(idx)} is {shape[1]}x{shape[0]} but '
                    f'{src.describe(first[0])} is {first[1][1]}x{first[1][0]}; pass --resolution')
            yield data

    try:
        num_written = write_dataset(dest, records(), labels, sources, total=len(indices))
    finally:
        results.close() # Stops the worker processes now, also when the writing failed.
    if num_written < len(indices):
        print(f'Skipped {len(indices) - num_written} images smaller than --resolution (center-crop-wide).')
    print(f'Wrote {num_written} images to {dest}')

def batched(indices, batch):
    return [indices[i : i + batch] for i in range(0, len(indices), batch)]

def load_batch(source, indices, what):
    arrays = [source.load(i) for i in indices]
    for idx, a in zip(indices, arrays):
        if a.shape != arrays[0].shape:
            raise SourceError(f'Mixed sizes in {what}: {source.describe(idx)} is {a.shape}, '
                f'{source.describe(indices[0])} is {arrays[0].shape}')
    return np.stack(arrays)

def vae_command(source_help, batch_help):
    """The command-line options of encode and decode."""
    def decorate(fn):
        options = [
            click.option('--source',     help=source_help, metavar='PATH', type=str, required=True),
            click.option('--dest',       help='Output ZIP or empty folder', metavar='PATH', type=str, required=True),
            click.option('--model-url',  help='VAE: hub name or local folder from save_pretrained()', metavar='NAME|PATH', type=str, default='stabilityai/sd-vae-ft-mse', show_default=True),
            click.option('--max-images', help='Stop after this many images', metavar='INT', type=click.IntRange(min=1)),
            click.option('--batch',      help=batch_help, metavar='INT', type=click.IntRange(min=1), default=8, show_default=True),
            click.option('--overwrite',  help='Replace an existing --dest', is_flag=True),
        ]
        fn = util.one_line_errors(fn)
        for option in reversed(options):
            fn = option(fn)
        return cmdline.command()(fn)
    return decorate

def transcode(source, dest, model_url, max_images, batch, overwrite, want_latents, convert_batch):
    """The skeleton of encode and decode: every image (or latent) of `source`, `batch` at a time
    through convert_batch(arrays, encoder, device) -> file contents, into a dataset at `dest` with
    the source's labels and classes."""
    import torch # pylint: disable=import-outside-toplevel
    from training.encoders import StabilityVAEEncoder # pylint: disable=import-outside-toplevel
    check_dest(dest, overwrite)
    src = open_source(source)
    if getattr(src, 'is_latent', False) != want_latents:
        raise SourceError(f'--source {source}: expected a dataset of ' + ('latents (.npy)' if want_latents else 'images'))
    indices = np.arange(src.size)[:max_images]
    src.choose_mode(indices)
    labels = src.labels[indices] if src.labels is not None else None
    sources = sorted((c, name, original_id) for c, (name, original_id) in src.classes.items()) if src.labels is not None else None
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    encoder = StabilityVAEEncoder(vae_name=model_url, batch_size=batch)
    encoder.init(device)

    def records():
        for chunk in batched(indices, batch):
            with torch.no_grad():
                yield from convert_batch(load_batch(src, chunk, source), encoder, device)
    ext, what = ('png', 'images') if want_latents else ('npy', 'latents')
    with util.stop_on_signals():
        num_written = write_dataset(dest, records(), labels, sources, total=len(indices), ext=ext, desc='decode' if want_latents else 'encode')
    print(f'Wrote {num_written} {what} to {dest}')

@vae_command(source_help='Image dataset (ZIP or folder)', batch_help='Images per VAE call')
def encode(source, dest, model_url, max_images, batch, overwrite):
    """Encode images into VAE latents: float32 [8, H/8, W/8] .npy files holding the posterior
    mean and std, with the source's labels and dataset.json "sources"."""
    transcode(source, dest, model_url, max_images, batch, overwrite, want_latents=False, convert_batch=functools.partial(encode_batch, source))

def encode_batch(source, images, encoder, device):
    import torch # pylint: disable=import-outside-toplevel
    if images.shape[1] % 8 != 0 or images.shape[2] % 8 != 0:
        raise SourceError(f'--source {source}: image size {images.shape[2]}x{images.shape[1]} is not a multiple of 8')
    x = torch.from_numpy(images.reshape(*images.shape[:3], -1)).permute(0, 3, 1, 2).to(device)
    return [npy_bytes(lat.astype(np.float32)) for lat in encoder.encode_pixels(x).cpu().numpy()]

@vae_command(source_help='Latent dataset (ZIP or folder) written by encode', batch_help='Latents per VAE call')
def decode(source, dest, model_url, max_images, batch, overwrite):
    """Decode latents back into PNGs for inspection (the posterior mean, no sampling noise)."""
    transcode(source, dest, model_url, max_images, batch, overwrite, want_latents=True, convert_batch=functools.partial(decode_batch, source))

def decode_batch(source, latents, encoder, device):
    import torch # pylint: disable=import-outside-toplevel
    if latents.ndim != 4 or latents.shape[1] != 8:
        raise SourceError(f'--source {source}: expected [8, H, W] latents, got {list(latents.shape[1:])}')
    mean = torch.from_numpy(latents[:, :4]).to(device)
    return [png_bytes(image) for image in encoder.decode(encoder.scale_latents(mean)).permute(0, 2, 3, 1).cpu().numpy()]

#----------------------------------------------------------------------------

if __name__ == '__main__':
    cmdline()

#----------------------------------------------------------------------------
