"""What the test modules share, in one place (pytest.ini puts tests/ on the import path; the
fixtures built from these live in conftest.py):

- command lines: `invoke` / `invoke_ok` run a script's click command in this process,
  `expect_cli_error` checks a promised one-line failure, `torchrun` launches Gloo processes,
  `gen_metrics` scores a snapshot on the digits;
- datasets written by hand, independently of dataset_tool.py: `write_dataset` (EDM2's layout,
  ZIP or folder), `save_image`, and the readers `read_zip` and `zip_pngs`;
- stand-ins for the pretrained networks, with random weights and nothing downloaded:
  `fake_inception`, `fake_dinov2`, `save_tiny_vae`.
"""

import importlib
import io
import json
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import PIL.Image
import torch
from click.testing import CliRunner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, 'tests')

#----------------------------------------------------------------------------
# Command lines.

def invoke(command, *args, env=None):
    """Run a click command in this process (click's CliRunner) with the arguments as strings;
    returns the click Result. `command`: a click command, or a script's module name
    ('train_edm2': its `cmdline` group or its `main` command)."""
    if isinstance(command, str):
        module = importlib.import_module(command)
        command = getattr(module, 'cmdline', None) or module.main
    return CliRunner().invoke(command, [str(a) for a in args], env=env)

def invoke_ok(command, *args, env=None):
    """invoke(); asserts success."""
    result = invoke(command, *args, env=env)
    assert result.exit_code == 0, result.output + repr(result.exception)
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

def gen_metrics(snapshot, ref, *args):
    """{metric: value} of `calculate_metrics.py gen --net snapshot --ref ref --metrics
    fd_digits,digits_acc ...`: the digits FD and the class accuracy the README quotes (digits_acc:
    an RBF SVM fitted on the real training digits classifies the samples)."""
    result = invoke_ok('calculate_metrics', 'gen', '--net', snapshot, '--ref', ref, '--metrics', 'fd_digits,digits_acc', *args)
    records = [json.loads(line) for line in result.output.splitlines() if line.startswith('{')]
    return {record['metric']: record['value'] for record in records}

def subprocess_env(**extra):
    """The environment of a Python subprocess of the tests: the repository and tests/ on the
    import path (snapshots pickled by a test module embed its source, which may import from
    here), one thread."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, TESTS]), OMP_NUM_THREADS='1', **extra)

def torchrun(args, nproc=2, timeout=300):
    """Run `python -m torch.distributed.run --standalone` with `nproc` Gloo processes on the
    command `args` (a script and its options) from the repository root, one thread each, on the
    CPU. Asserts success; returns the CompletedProcess."""
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}', *[str(a) for a in args]]
    result = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(CUDA_VISIBLE_DEVICES=''), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result

#----------------------------------------------------------------------------
# Datasets and images written and read by hand.

def write_dataset(path, images, labels=None, sources=None, ext='png'):
    """EDM2's dataset layout, written by hand (independently of dataset_tool.py), to a .zip or
    a folder: uint8 images [N, H, W] (grayscale) or [N, H, W, 3] as `ext` files ('npy': any
    arrays), int labels [N] or None, and `sources` (a dataset.json key) when given. Returns the
    path as a string."""
    files = {}
    for idx, image in enumerate(images):
        buffer = io.BytesIO()
        if ext == 'npy':
            np.save(buffer, image)
        else:
            PIL.Image.fromarray(image).save(buffer, format=ext)
        files[f'{idx:08d}'[:5] + f'/img{idx:08d}.{ext}'] = buffer.getvalue()
    names = sorted(files)
    metadata = {'labels': None if labels is None else [[name, int(label)] for name, label in zip(names, labels)]}
    if sources is not None:
        metadata['sources'] = sources
    files['dataset.json'] = json.dumps(metadata).encode()
    if str(path).endswith('.zip'):
        with zipfile.ZipFile(path, 'w') as zf:
            for name, data in files.items():
                zf.writestr(name, data)
    else:
        for name, data in files.items():
            os.makedirs(os.path.dirname(os.path.join(path, name)), exist_ok=True)
            with open(os.path.join(path, name), 'wb') as f:
                f.write(data)
    return str(path)

def save_image(path, image, **kwargs):
    """uint8 [H, W] or [H, W, 3] -> an image file (format from the name; PIL's save options),
    creating its folder."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    PIL.Image.fromarray(image).save(path, **kwargs)

def read_zip(path):
    """A dataset ZIP -> (images as arrays in archive order, labels or None, dataset.json), after
    checking EDM2's file names."""
    with zipfile.ZipFile(path) as zf:
        names = sorted(n for n in zf.namelist() if n != 'dataset.json')
        metadata = json.loads(zf.read('dataset.json'))
        if names[0].endswith('.npy'):
            images = [np.load(io.BytesIO(zf.read(n))) for n in names]
        else:
            images = [np.array(PIL.Image.open(io.BytesIO(zf.read(n)))) for n in names]
    for idx, name in enumerate(names):
        assert name == f'{idx:08d}'[:5] + '/' + (f'img{idx:08d}.png' if name.endswith('.png') else f'img-mean-std-{idx:08d}.npy')
    labels = None
    if metadata['labels'] is not None:
        assert [n for n, _ in metadata['labels']] == names
        labels = [label for _, label in metadata['labels']]
    return images, labels, metadata

def zip_pngs(path):
    """{name: PNG bytes} of a ZIP."""
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in sorted(zf.namelist()) if name.endswith('.png')}

#----------------------------------------------------------------------------
# Stand-ins for the pretrained networks.

class FakeInception(torch.nn.Module):
    """The TorchScript call signature of NVIDIA's Inception pickle, 2048 features."""
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3 * 4 * 4, 2048)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = torch.nn.functional.interpolate(x.to(torch.float32), size=(4, 4), mode='bilinear', align_corners=False)
        features = self.proj(x.flatten(1) / 255)
        return features if return_features else features.softmax(dim=1)

class TorchScriptPickle:
    """Pickles as a call that rebuilds the TorchScript module (what pickle.load gives back)."""
    def __init__(self, module):
        buffer = io.BytesIO()
        torch.jit.save(module, buffer)
        self.data = buffer.getvalue()

    def __reduce__(self):
        return (torch.jit.load, (io.BytesIO(self.data),))

def fake_inception(path, archive=False):
    """A FakeInception written to `path` as NVIDIA's pickle is (or, archive=True, as a TorchScript
    archive); returns the module."""
    torch.manual_seed(0)
    module = torch.jit.script(FakeInception().eval())
    if archive:
        torch.jit.save(module, path)
    else:
        with open(path, 'wb') as f:
            pickle.dump(TorchScriptPickle(module), f)
    return module

DINOV2_HUBCONF = '''
import torch

class TinyViT(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(3, 1024)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, x):
        return self.head(x.mean([2, 3]))

def dinov2_vitl14(*, pretrained=True, **kwargs):
    assert not pretrained, 'the test never downloads'
    return TinyViT()
'''

def fake_dinov2(tmp_path):
    """A local torch.hub repository of a tiny 'dinov2_vitl14' (1024 features of the mean colour)
    and its checkpoint, laid out as the hub cache does under `tmp_path`. -> (repo, weights, state)."""
    from training import detectors # pylint: disable=import-outside-toplevel
    repo = tmp_path / 'facebookresearch_dinov2_main'
    repo.mkdir()
    (repo / 'hubconf.py').write_text(DINOV2_HUBCONF)
    torch.manual_seed(0)
    state = {'head.weight': torch.randn([1024, 3]), 'head.bias': torch.randn([1024])}
    weights = tmp_path / 'checkpoints' / detectors.DINOV2_CHECKPOINT
    weights.parent.mkdir()
    torch.save(state, weights)
    return str(repo), str(weights), state

def save_tiny_vae(folder):
    """A random AutoencoderKL with SD's interface (3 -> 4 channels, 8x downsampling) but tiny
    widths, written with save_pretrained(). Returns the model."""
    import diffusers # pylint: disable=import-outside-toplevel
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=['DownEncoderBlock2D'] * 4, up_block_types=['UpDecoderBlock2D'] * 4,
        block_out_channels=[8] * 4, layers_per_block=1, norm_num_groups=4, sample_size=16)
    vae.save_pretrained(folder)
    return vae.eval()

#----------------------------------------------------------------------------
