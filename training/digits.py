"""The built-in dataset: scikit-learn's 8x8 digits (1797 images of the ten digits, gray levels
0..16), stored as uint8 round(v * 255 / 16), with a fixed stratified train/test split.

dataset_tool.py converts it (`--source builtin:digits[-train|-test]`), the digits metrics of
training/detectors.py fit their feature space on the training split, and the tests judge samples
against it. The split must never change between runs or versions: within each class, in class
order, one RandomState(0) stream permutes the class's images and the first round(20%) of them
form the test split (1438 training and 359 test images).
"""

import functools

import numpy as np

SPLITS = ['all', 'train', 'test']
TEST_FRACTION = 0.2 # Share of each class that goes to the test split.
SPLIT_SEED = 0      # Fixed: the split must never change.
NUM_CLASSES = 10

@functools.lru_cache(maxsize=None)
def _load_all():
    import sklearn.datasets # pylint: disable=import-outside-toplevel
    digits = sklearn.datasets.load_digits()
    images = np.round(digits.images * 255 / 16).astype(np.uint8)
    images.setflags(write=False)
    labels = digits.target.astype(np.int64)
    labels.setflags(write=False)
    return images, labels

def is_test_image(labels):
    """bool [N]: which images of the full dataset form the test split."""
    is_test = np.zeros(len(labels), dtype=bool)
    rnd = np.random.RandomState(SPLIT_SEED)
    for c in range(NUM_CLASSES):
        members = rnd.permutation(np.flatnonzero(labels == c))
        is_test[members[:int(round(len(members) * TEST_FRACTION))]] = True
    return is_test

def load(split='all'):
    """(images uint8 [N, 8, 8], labels int64 [N]) of the split 'all', 'train' or 'test'."""
    if split not in SPLITS:
        raise ValueError(f'unknown digits split "{split}"; choose from {", ".join(SPLITS)}')
    images, labels = _load_all()
    if split == 'all':
        return images, labels
    keep = is_test_image(labels) == (split == 'test')
    return images[keep], labels[keep]

def pixels(split='train'):
    """(float64 [N, 64] gray levels in [0, 1], int64 labels [N]) of a split."""
    images, labels = load(split)
    return images.reshape(len(images), -1).astype(np.float64) / 255, labels
