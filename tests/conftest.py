"""Shared pytest set-up (pytest.ini puts the repository root and tests/ on the import path):
keep torch single-threaded and quiet."""
import os
import subprocess
import sys

import pytest

os.environ.setdefault('OMP_NUM_THREADS', '1')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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

def invoke_ok(script, *args):
    """Run a script's command line in this process (click's CliRunner); assert success."""
    import importlib # pylint: disable=import-outside-toplevel
    from click.testing import CliRunner # pylint: disable=import-outside-toplevel
    module = importlib.import_module(script)
    result = CliRunner().invoke(getattr(module, 'cmdline', None) or module.main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result

def gen_metrics(snapshot, ref, *args):
    """{metric: value} of `calculate_metrics.py gen --net snapshot --ref ref --metrics
    fd_digits,digits_acc ...`: the digits FD and the class accuracy the README quotes (digits_acc:
    an RBF SVM fitted on the real training digits classifies the samples)."""
    import json # pylint: disable=import-outside-toplevel
    result = invoke_ok('calculate_metrics', 'gen', '--net', snapshot, '--ref', ref, '--metrics', 'fd_digits,digits_acc', *args)
    records = [json.loads(line) for line in result.output.splitlines() if line.startswith('{')]
    return {record['metric']: record['value'] for record in records}

@pytest.fixture(scope='session')
def tiny_vae(tmp_path_factory):
    """A folder holding a tiny random AutoencoderKL (test_encoders.save_tiny_vae): 3 -> 4 channels,
    8x downsampling, as Stable Diffusion's VAE."""
    from test_encoders import save_tiny_vae # pylint: disable=import-outside-toplevel
    folder = tmp_path_factory.mktemp('vae') / 'vae'
    save_tiny_vae(folder)
    return str(folder)

def torchrun(args, nproc=2, timeout=300):
    """Run `python -m torch.distributed.run --standalone` with `nproc` Gloo processes on the
    command `args` (a script and its options) from the repository root, one thread each, with
    tests/ on the import path (snapshots pickled by a test module embed its source, which may
    import from here). Asserts success; returns the CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, 'tests')]), OMP_NUM_THREADS='1',
        CUDA_VISIBLE_DEVICES='')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}', *[str(a) for a in args]]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result

def expect_cli_error(result, *fragments, exit_code=1):
    """A command that failed the way the scripts promise (torch_utils.util.one_line_errors, or
    click's own usage errors with exit_code=2): that exit code, a SystemExit rather than an
    escaped exception (CliRunner never prints tracebacks, so only result.exception tells), and
    one 'Error:' line naming every fragment. Returns that line."""
    assert result.exit_code == exit_code, (result.exit_code, repr(result.exception), result.output)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith('Error')]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], (fragment, result.output)
    return errors[0]

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
