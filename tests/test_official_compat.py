"""EDM2 snapshots written here load in the unmodified official EDM2 code (NVlabs/edm2), checked
without that code: a snapshot may reference only names that exist in the official tree, both in
the pickle itself (every GLOBAL / STACK_GLOBAL opcode) and in the module sources it embeds (every
import, and every attribute of the torch_utils modules they use); and it loads in a fresh process
whose import path holds only a stand-in for that tree (no `training` package, no
torch_utils.util). What it computes there, and the images generate_images.py makes from it, are
those of the official code: tests/data/official_edm2.npz holds the official network's outputs
and the official generator's images for the same weights, made once by running the official code
(tests/data/make_official_edm2.py; README, "Coming from EDM2")."""

import ast
import inspect
import json
import os
import pickle
import pickletools
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch

import dataset_tool
import generate_images
import train_edm2
from helpers import ROOT, invoke_ok
from torch_utils import misc
from torch_utils import persistence
from torch_utils import util
from training import encoders
from training import presets

# What the official tree provides (names only, as of NVlabs/edm2 4bf8162): its packages and
# modules, and the names in those that our pickles and embedded sources may use.
OFFICIAL = {
    'dnnlib': {'EasyDict', 'make_cache_dir_path', 'util'},
    'dnnlib.util': {'EasyDict', 'Logger', 'set_cache_dir', 'make_cache_dir_path', 'format_time', 'get_obj_by_name',
        'call_func_by_name', 'construct_class_by_name', 'is_url', 'open_url'},
    'torch_utils': {'persistence', 'misc', 'distributed', 'training_stats'},
    'torch_utils.persistence': {'persistent_class', 'is_persistent', 'import_hook', '_reconstruct_persistent_obj'},
    'torch_utils.misc': {'constant', 'const_like', 'set_random_seed', 'InfiniteSampler', 'params_and_buffers',
        'named_params_and_buffers', 'copy_params_and_buffers', 'ddp_sync', 'check_ddp_consistency', 'print_module_summary'},
    'torch_utils.distributed': {'init', 'get_rank', 'get_world_size', 'should_stop', 'update_progress', 'print0'},
    'torch_utils.training_stats': {'init_multiprocessing', 'report', 'report0', 'Collector'},
    'training': {'dataset', 'encoders', 'networks_edm2', 'phema', 'training_loop'},
}
# Packages of this project: nothing else of ours exists in the official tree.
PROJECT = {'dnnlib', 'torch_utils', 'training', 'simulations', 'benchmarks', 'tests'} | {
    name[:-3] for name in os.listdir(ROOT) if name.endswith('.py')}
# Third-party modules a pickle of tensors, arrays and plain containers refers to.
LIBRARIES = {'torch', 'numpy', 'collections', 'builtins', 'copyreg', '_codecs'}

#----------------------------------------------------------------------------
# The checks.

def walk_pickle(data):
    """(globals as 'module.name', embedded module sources) of a pickle, read from its opcodes.
    String operands are followed through the memo, so STACK_GLOBAL's module and name are known,
    and so is the value stored under each 'module_src' key of a persistent object's meta."""
    memo, pushed, names, sources = {}, [], set(), []
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name in ('SHORT_BINUNICODE', 'BINUNICODE', 'BINUNICODE8', 'UNICODE'):
            pushed.append(arg)
        elif opcode.name in ('BINGET', 'LONG_BINGET', 'GET'):
            pushed.append(memo[arg])
        elif opcode.name == 'MEMOIZE':
            memo[len(memo)] = pushed[-1]
            continue
        elif opcode.name in ('BINPUT', 'LONG_BINPUT', 'PUT'):
            memo[arg] = pushed[-1]
            continue
        elif opcode.name == 'GLOBAL':
            names.add(arg.replace(' ', '.'))
            pushed.append(None)
        elif opcode.name == 'STACK_GLOBAL':
            names.add(f'{pushed[-2]}.{pushed[-1]}')
            pushed.append(None)
        elif opcode.name not in ('FRAME', 'PROTO', 'MARK'):
            pushed.append(None)
            continue
        if len(pushed) >= 2 and pushed[-2] == 'module_src' and isinstance(pushed[-1], str):
            sources.append(pushed[-1])
    return names, list(dict.fromkeys(sources))

def foreign_globals(names):
    """The globals the official tree cannot resolve."""
    def known(full):
        module, name = full.rsplit('.', 1)
        return name in OFFICIAL.get(module, ()) or full.split('.')[0] in LIBRARIES
    return sorted(name for name in names if not known(name))

def optional_import(node, parents):
    """Inside the body of a try whose handler catches ImportError (a fallback follows)."""
    while node in parents:
        parent = parents[node]
        if isinstance(parent, ast.Try) and node in parent.body and any(
                isinstance(h.type, ast.Name) and h.type.id in ('ImportError', 'ModuleNotFoundError') for h in parent.handlers):
            return True
        node = parent
    return False

def foreign_references(src):
    """Imports of project modules, and attributes of the official modules they bind, that the
    official tree lacks, in one module source."""
    tree = ast.parse(src)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    bound, problems = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not optional_import(node, parents):
            if node.level or (node.module.split('.')[0] in PROJECT and node.module not in OFFICIAL):
                problems.append(f'from {"." * node.level}{node.module} import ...')
            elif node.module in OFFICIAL:
                for alias in node.names:
                    if alias.name not in OFFICIAL[node.module]:
                        problems.append(f'from {node.module} import {alias.name}')
                    bound[alias.asname or alias.name] = f'{node.module}.{alias.name}'
        elif isinstance(node, ast.Import) and not optional_import(node, parents):
            for alias in node.names:
                if alias.name.split('.')[0] in PROJECT and alias.name not in OFFICIAL:
                    problems.append(f'import {alias.name}')
                bound[alias.asname or alias.name] = alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and bound.get(node.value.id) in OFFICIAL:
            if node.attr not in OFFICIAL[bound[node.value.id]]:
                problems.append(f'{bound[node.value.id]}.{node.attr}')
    return problems

#----------------------------------------------------------------------------

@pytest.fixture(scope='module')
def edm2_snapshot(tmp_path_factory):
    """A real EDM2 snapshot from train_edm2.py: two digit classes, 8 optimizer steps without
    warm-up, so that the network's gains have moved away from their initial zeros."""
    root = tmp_path_factory.mktemp('official')
    data = str(root / 'digits.zip')
    invoke_ok(dataset_tool.cmdline, 'convert', '--source', 'builtin:digits-train', '--dest', data,
        '--classes', '7,3', '--per-class', '32', '--workers', '1')
    invoke_ok(train_edm2.main, '--preset', 'edm2-digits', '--data', data, '--outdir', root / 'run',
        '--duration', '1Ki', '--batch', '128', '--snapshot', '1Ki', '--status', '1Ki', '--checkpoint', '0',
        '--channels', OFFICIAL_OVERRIDES['channels'], '--set', f'num_blocks={OFFICIAL_OVERRIDES["num_blocks"]}', '--set', 'rampup=0.0')
    return str(root / 'run' / 'network-snapshot-0000001-0.100.pkl')

#----------------------------------------------------------------------------
# The official side: tests/data/official_edm2.npz, made by tests/data/make_official_edm2.py with
# the official code from the network and inputs defined here (weights from a seeded generator,
# so that only the official outputs are stored).

OFFICIAL_EDM2 = os.path.join(ROOT, 'tests', 'data', 'official_edm2.npz')
OFFICIAL_OVERRIDES = dict(channels=8, num_blocks=1) # edm2-digits, smaller.
OFFICIAL_SEEDS = list(range(6))
OFFICIAL_STEPS = 8

def seeded_state(net):
    """Weights for every parameter and buffer of an EDM2 network: normal draws from a generator
    seeded 0, in the order of the sorted names (every gain away from its initial zero)."""
    gen = torch.Generator().manual_seed(0)
    return {name: torch.randn(value.shape, generator=gen) for name, value in sorted(net.state_dict().items())}

def official_test_network():
    """This project's network of the edm2_snapshot's structure, with the seeded weights."""
    kwargs = presets.family_kwargs(presets.resolve('edm2-digits', OFFICIAL_OVERRIDES))['network_kwargs']
    net = util.construct_class_by_name(**kwargs, img_resolution=8, img_channels=1, label_dim=2).eval().requires_grad_(False)
    net.load_state_dict(seeded_state(net))
    return net

def official_test_inputs():
    gen = torch.Generator().manual_seed(0)
    return dict(x=torch.randn([4, 1, 8, 8], generator=gen) * 3, sigma=torch.tensor([0.1, 1.0, 3.0, 20.0]),
        labels=torch.eye(2)[[0, 1, 1, 0]])

@pytest.fixture(scope='module')
def official():
    """tests/data/official_edm2.npz: the network's constructor arguments, and the official
    outputs: denoised (of official_test_inputs), images and classes (of OFFICIAL_SEEDS)."""
    with np.load(OFFICIAL_EDM2) as data:
        return {key: data[key] for key in data.files}

@pytest.fixture(scope='module')
def seeded_snapshot(edm2_snapshot, official, tmp_path_factory):
    """The edm2_snapshot as train_edm2.py wrote it, its network given the seeded weights."""
    with open(edm2_snapshot, 'rb') as f:
        data = persistence.load_pickle(f)
    assert data['ema'].init_kwargs == json.loads(str(official['kwargs'])), 'the network changed: remake tests/data/official_edm2.npz'
    data['ema'].load_state_dict(seeded_state(data['ema']))
    path = tmp_path_factory.mktemp('seeded') / 'network-snapshot-seeded.pkl'
    with open(path, 'wb') as f:
        pickle.dump(data, f)
    return str(path)

def test_snapshot_references_only_official_names(edm2_snapshot):
    with open(edm2_snapshot, 'rb') as f:
        names, sources = walk_pickle(f.read())
    assert 'torch_utils.persistence._reconstruct_persistent_obj' in names
    assert foreign_globals(names) == []
    assert len(sources) == 2 and 'class Precond' in sources[0] and 'class StandardRGBEncoder' in sources[1]
    for src in sources + [inspect.getsource(encoders)]: # The VAE encoder too (latent snapshots).
        assert foreign_references(src) == []

def test_latent_encoder_pickles_with_official_names():
    names, sources = walk_pickle(pickle.dumps(encoders.StabilityVAEEncoder(vae_name='no-such-vae')))
    assert foreign_globals(names) == [] and any(name.startswith('numpy.') for name in names)
    assert len(sources) == 1 and foreign_references(sources[0]) == []

def test_the_checks_catch_what_would_fail_there():
    names, _ = walk_pickle(pickle.dumps(dict(kwargs=util.EasyDict(a=1))))
    assert foreign_globals(names) == ['torch_utils.util.EasyDict']
    src = 'from torch_utils import util\nfrom torch_utils import misc\nimport training.generate\nx = misc.set_seed\n'
    assert foreign_references(src) == ['from torch_utils import util', 'import training.generate', 'torch_utils.misc.set_seed']
    src = 'def f():\n    try:\n        from torch_utils.util import g\n    except ImportError:\n        from dnnlib import make_cache_dir_path\n'
    assert foreign_references(src) == []

#----------------------------------------------------------------------------
# Loading in a fresh process that sees only a stand-in for the official tree: dnnlib with
# EasyDict and make_cache_dir_path, and torch_utils with persistence (ours, importing its
# helpers from dnnlib as the official one does) and misc. Unpickled with plain pickle.load, as
# the official code does.

LOAD_AND_RUN = '''
import importlib.util, pickle, sys, torch
assert importlib.util.find_spec('training') is None and importlib.util.find_spec('torch_utils.util') is None
with open(sys.argv[1], 'rb') as f:
    data = pickle.load(f)
inputs = torch.load(sys.argv[2])
net, encoder = data['ema'], data['encoder']
encoder.init(torch.device('cpu'))
with torch.no_grad():
    denoised = net(inputs['x'], inputs['sigma'], inputs['labels'])
torch.save(dict(denoised=denoised, images=encoder.decode(denoised), label_dim=net.label_dim), sys.argv[3])
'''

def make_stand_in_tree(root):
    (root / 'dnnlib').mkdir()
    helpers = [inspect.getsource(util.EasyDict), inspect.getsource(util.make_cache_dir_path)]
    (root / 'dnnlib' / 'util.py').write_text('\n'.join(['import os', 'import tempfile'] + helpers))
    (root / 'dnnlib' / '__init__.py').write_text('from . import util\nfrom .util import EasyDict, make_cache_dir_path\n')
    (root / 'torch_utils').mkdir()
    (root / 'torch_utils' / '__init__.py').write_text('')
    (root / 'torch_utils' / 'misc.py').write_text(inspect.getsource(misc))
    src = inspect.getsource(persistence)
    assert 'from torch_utils import util\n' in src
    (root / 'torch_utils' / 'persistence.py').write_text(src.replace('from torch_utils import util\n', 'from dnnlib import util\n'))

def test_loads_and_runs_without_this_tree(seeded_snapshot, official, tmp_path):
    # The snapshot, loaded and run with plain pickle.load where only the stand-in tree is
    # importable, denoises as the official network with the same weights does, and decodes as the
    # official encoder (float rounding of another CPU: up to 1e-5 on outputs of magnitude 10; a
    # wrong scaling is ~1e-1).
    tree = tmp_path / 'official'
    tree.mkdir()
    make_stand_in_tree(tree)
    inputs = official_test_inputs()
    torch.save(inputs, tmp_path / 'inputs.pt')
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS='1')
    result = subprocess.run([sys.executable, '-c', LOAD_AND_RUN, seeded_snapshot,
        str(tmp_path / 'inputs.pt'), str(tmp_path / 'out.pt')], cwd=tree, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    there = torch.load(tmp_path / 'out.pt')
    theirs = torch.as_tensor(official['denoised'])
    assert there['label_dim'] == 2
    torch.testing.assert_close(there['denoised'], theirs, rtol=0, atol=1e-5)
    assert (there['images'].to(int) - (theirs * 127.5 + 128).clip(0, 255).to(torch.uint8).to(int)).abs().max() <= 1
    # Loaded here, the same network and the same outputs.
    with open(seeded_snapshot, 'rb') as f:
        here = persistence.load_pickle(f)['ema']
    with torch.no_grad():
        assert torch.equal(here(inputs['x'], inputs['sigma'], inputs['labels']), there['denoised'])
    # Not the identity-like initial state: the comparison means something.
    assert not np.allclose(theirs.numpy(), (inputs['x'] * 0.25 / (0.25 + inputs['sigma'].reshape(-1, 1, 1, 1) ** 2)).numpy(), atol=0.1)

def test_generate_images_makes_the_official_images(seeded_snapshot, official, tmp_path):
    # The same seeds give the official generator's images: its per-seed noise and classes, its
    # Heun sampler, its decoding (one level of float rounding allowed).
    invoke_ok(generate_images.main, '--net', seeded_snapshot, '--outdir', tmp_path, '--seeds', f'0-{len(OFFICIAL_SEEDS) - 1}',
        '--steps', OFFICIAL_STEPS)
    for seed, theirs in zip(OFFICIAL_SEEDS, official['images']):
        ours = np.asarray(PIL.Image.open(tmp_path / f'{seed:06d}.png')).astype(int)
        assert np.abs(ours - theirs[0].astype(int)).max() <= 1, seed
    assert official['images'].std() > 20 and len(set(official['classes'].tolist())) == 2
