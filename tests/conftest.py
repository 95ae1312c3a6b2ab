"""Shared pytest set-up: run from the repository root, keep torch single-threaded and quiet."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault('OMP_NUM_THREADS', '1')

def pytest_collection_modifyitems(items):
    """The 10-minute per-test timeout (pytest.ini) guards the fast suite; a `slow` quality run
    trains for real and gets an hour, unless it sets its own timeout."""
    import pytest # pylint: disable=import-outside-toplevel
    for item in items:
        if item.get_closest_marker('slow') and not item.get_closest_marker('timeout'):
            item.add_marker(pytest.mark.timeout(3600))
