"""Shared pytest set-up: run from the repository root, keep torch single-threaded and quiet."""
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
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
    import dataset_tool # pylint: disable=import-outside-toplevel
    from sklearn.svm import SVC # pylint: disable=import-outside-toplevel
    source = dataset_tool.open_builtin('builtin:digits-train')
    x = source.images.reshape(len(source.images), -1).astype(np.float64) / 255
    return SVC(gamma='scale').fit(x, np.asarray(source.labels))
