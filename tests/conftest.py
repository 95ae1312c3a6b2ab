"""Shared pytest set-up (pytest.ini puts the repository root and tests/ on the import path):
keep torch single-threaded and quiet."""
import os

import pytest

os.environ.setdefault('OMP_NUM_THREADS', '1')

def pytest_collection_modifyitems(items):
    """The 10-minute per-test timeout (pytest.ini) guards the fast suite; a `slow` quality run
    trains for real and gets an hour, unless it sets its own timeout."""
    for item in items:
        if item.get_closest_marker('slow') and not item.get_closest_marker('timeout'):
            item.add_marker(pytest.mark.timeout(3600))

@pytest.fixture(scope='session')
def digits_classifier():
    """The judge of the slow acceptance tests: an RBF SVM trained on the real built-in training
    digits (flattened pixels in [0, 1]); .score(samples, requested classes) is the agreement."""
    from sklearn.svm import SVC # pylint: disable=import-outside-toplevel
    from training import digits # pylint: disable=import-outside-toplevel
    return SVC(gamma='scale').fit(*digits.pixels('train'))

def write_image_zip(path, images, labels=None):
    """A dataset ZIP in EDM2's layout, written by hand (independently of dataset_tool.py):
    uint8 images [N, H, W] (grayscale) or [N, H, W, 3], int labels [N] or None."""
    import io
    import json
    import zipfile
    import PIL.Image
    with zipfile.ZipFile(path, 'w') as zf:
        names = []
        for idx, image in enumerate(images):
            names.append(f'{idx:08d}'[:5] + f'/img{idx:08d}.png')
            buffer = io.BytesIO()
            PIL.Image.fromarray(image).save(buffer, format='png')
            zf.writestr(names[-1], buffer.getvalue())
        zf.writestr('dataset.json', json.dumps({'labels': None if labels is None else [[n, int(l)] for n, l in zip(names, labels)]}))
    return str(path)

@pytest.fixture(scope='session')
def tiny_zip(tmp_path_factory):
    """40 random 4x4 grayscale images of 3 classes."""
    import numpy as np
    rnd = np.random.RandomState(0)
    return write_image_zip(tmp_path_factory.mktemp('tiny') / 'tiny.zip', rnd.randint(0, 256, size=[40, 4, 4], dtype=np.uint8),
        rnd.randint(0, 3, size=40))
