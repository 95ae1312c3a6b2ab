"""torch_utils: util parsing/atomic writes/open_url, persistence round trips (own and official
format), InfiniteSampler resumption, training_stats moments, RNG state round trip."""

import io
import itertools
import os
import pickle
import random
import sys
import textwrap

import numpy as np
import pytest
import torch

from torch_utils import misc, persistence, training_stats, util

#----------------------------------------------------------------------------
# util

def test_parse_int_list():
    assert util.parse_int_list('0-3,7,10-11') == [0, 1, 2, 3, 7, 10, 11]
    assert util.parse_int_list('') == []
    with pytest.raises(ValueError):
        util.parse_int_list('3-1')
    with pytest.raises(ValueError):
        util.parse_int_list('a')

def test_parse_nimg():
    assert util.parse_nimg('8Mi') == 8 * 2**20
    assert util.parse_nimg('2Ki') == 2048
    assert util.parse_nimg('1.5k') == 1500
    assert util.parse_nimg('640') == 640
    assert util.parse_nimg(12) == 12
    for bad in ['1.3', '5X', 'Mi', '']:
        with pytest.raises(ValueError):
            util.parse_nimg(bad)

def test_atomic_path(tmp_path):
    dest = tmp_path / 'out.bin'
    with util.atomic_path(dest) as tmp:
        open(tmp, 'wb').write(b'abc')
        assert not dest.exists()
    assert dest.read_bytes() == b'abc'
    with pytest.raises(RuntimeError):
        with util.atomic_path(tmp_path / 'bad.bin') as tmp:
            open(tmp, 'wb').write(b'partial')
            raise RuntimeError('boom')
    assert sorted(os.listdir(tmp_path)) == ['out.bin'] # Nothing half-written left behind.

def test_open_url_local_file_url_and_cache(tmp_path, monkeypatch):
    f = tmp_path / 'a.txt'
    f.write_bytes(b'hello')
    assert util.open_url(str(f)).read() == b'hello'
    assert util.open_url('file://' + str(f)).read() == b'hello'
    with pytest.raises(FileNotFoundError):
        util.open_url(str(tmp_path / 'missing'))
    # A cached copy of an http URL is used without touching the network.
    monkeypatch.setenv('EDM2_CACHE_DIR', str(tmp_path / 'cache'))
    url = 'https://example.invalid/models/net.pkl'
    cache_file = util.url_cache_path(url)
    assert cache_file.startswith(str(tmp_path / 'cache' / 'downloads'))
    os.makedirs(os.path.dirname(cache_file))
    open(cache_file, 'wb').write(b'cached')
    assert util.open_url(url).read() == b'cached'
    assert util.open_url(url, return_filename=True) == cache_file

def test_open_url_offline_error_names_cache_file(tmp_path, monkeypatch):
    monkeypatch.setenv('EDM2_CACHE_DIR', str(tmp_path))
    url = 'https://example.invalid/x/inception.pkl'
    with pytest.raises(IOError, match='inception.pkl'):
        util.open_url(url, num_attempts=1, verbose=False)

def test_construct_by_name():
    d = util.construct_class_by_name(class_name='torch_utils.util.EasyDict', a=1)
    assert isinstance(d, util.EasyDict) and d.a == 1
    assert util.call_func_by_name(3, func_name='math.sqrt') == pytest.approx(3**0.5)
    with pytest.raises(ImportError):
        util.get_obj_by_name('torch_utils.util.NoSuchThing')

def test_logger_tees(tmp_path, capsys):
    path = tmp_path / 'log.txt'
    with util.Logger(file_name=str(path), file_mode='a'):
        print('line one')
    assert 'line one' in path.read_text()
    assert 'line one' in capsys.readouterr().out

#----------------------------------------------------------------------------
# persistence

_MODULE_SRC = textwrap.dedent('''
    import torch
    from torch_utils import persistence
    from torch_utils import misc

    @persistence.persistent_class
    class Affine(torch.nn.Module):
        def __init__(self, n, scale=2.0):
            super().__init__()
            self.scale = scale
            self.weight = torch.nn.Parameter(torch.randn(n))
        def forward(self, x):
            return x * self.weight * misc.const_like(x, self.scale)
''')

def _import_source_as(name, src, tmp_path):
    path = tmp_path / f'{name}.py'
    path.write_text(src)
    sys.path.insert(0, str(tmp_path))
    try:
        module = __import__(name)
    finally:
        sys.path.remove(str(tmp_path))
    return module

def test_persistence_round_trip_without_source(tmp_path):
    module = _import_source_as('persist_mod_a', _MODULE_SRC, tmp_path)
    net = module.Affine(4, scale=3.0)
    assert persistence.is_persistent(net)
    assert net.init_kwargs == dict(scale=3.0) and net.init_args == (4,)
    data = pickle.dumps(dict(ema=net, opts=util.EasyDict(x=1)))
    # The defining module disappears: the pickle must still load from its embedded source.
    del sys.modules['persist_mod_a']
    (tmp_path / 'persist_mod_a.py').unlink()
    del persistence._src_to_module_dict[persistence._module_to_src_dict.pop(module)]
    loaded = persistence.load_pickle(io.BytesIO(data))
    x = torch.randn(3, 4)
    assert torch.equal(loaded['ema'](x), net(x))
    assert type(loaded['ema']).__module__.startswith('_imported_module_')
    assert loaded['opts'].x == 1

def _official_pickle(obj_state, class_name, module_src, options):
    """Bytes in the layout the official EDM2 code writes: a call to
    torch_utils.persistence._reconstruct_persistent_obj(meta) and dnnlib.util.EasyDict options."""
    class OfficialEasyDict(dict):
        pass
    OfficialEasyDict.__module__ = 'dnnlib.util'
    OfficialEasyDict.__qualname__ = 'EasyDict'
    class Reconstruct:
        def __reduce__(self):
            meta = dict(type='class', version=6, module_src=module_src, class_name=class_name, state=obj_state)
            return (persistence._reconstruct_persistent_obj, (meta,))
    class Pickler(pickle.Pickler):
        def reducer_override(self, obj):
            if type(obj) is OfficialEasyDict:
                return (OfficialEasyDict, (), None, None, iter(obj.items()))
            return NotImplemented
    f = io.BytesIO()
    fake = type(sys)('dnnlib')
    fake.util = type(sys)('dnnlib.util')
    fake.util.EasyDict = OfficialEasyDict
    sys.modules.update({'dnnlib': fake, 'dnnlib.util': fake.util})
    try:
        Pickler(f).dump(dict(ema=Reconstruct(), dataset_kwargs=OfficialEasyDict(options)))
    finally:
        del sys.modules['dnnlib'], sys.modules['dnnlib.util']
    return f.getvalue()

def test_load_official_format(tmp_path):
    # The embedded source imports dnnlib (as the official training loop and encoders do).
    src = 'import dnnlib\n' + _MODULE_SRC + '\nCACHE = dnnlib.make_cache_dir_path("x")\n'
    module = _import_source_as('persist_mod_b', _MODULE_SRC, tmp_path)
    ref = module.Affine(5)
    state = dict(ref.__dict__)
    data = _official_pickle(state, 'Affine', src, dict(class_name='training.dataset.ImageFolderDataset', path='x.zip'))
    assert b'dnnlib.util' in data and b'_reconstruct_persistent_obj' in data
    loaded = persistence.load_pickle(io.BytesIO(data))
    x = torch.randn(2, 5)
    assert torch.equal(loaded['ema'](x), ref(x))
    assert isinstance(loaded['dataset_kwargs'], util.EasyDict)
    assert loaded['dataset_kwargs'].path == 'x.zip'
    assert 'dnnlib' not in sys.modules # The alias exists only while the source executes.

#----------------------------------------------------------------------------
# misc

def test_const_like_cached():
    ref = torch.zeros(2, dtype=torch.float64)
    a = misc.const_like(ref, 0.5)
    assert a.dtype == torch.float64 and float(a) == 0.5
    assert misc.const_like(ref, 0.5) is a

def test_infinite_sampler_resume_and_ranks():
    ds = range(13)
    full = list(itertools.islice(iter(misc.InfiniteSampler(ds, seed=5)), 60))
    assert sorted(full[:13]) == list(range(13)) # Each epoch is a permutation.
    assert sorted(full[13:26]) == list(range(13))
    assert full[:13] != full[13:26]
    for start in [0, 1, 12, 13, 40]:
        resumed = list(itertools.islice(iter(misc.InfiniteSampler(ds, seed=5, start_idx=start)), 60 - start))
        assert resumed == full[start:]
    # Two ranks interleave the same global stream, also when resumed.
    r0 = list(itertools.islice(iter(misc.InfiniteSampler(ds, seed=5, rank=0, num_replicas=2, start_idx=4)), 10))
    r1 = list(itertools.islice(iter(misc.InfiniteSampler(ds, seed=5, rank=1, num_replicas=2, start_idx=4)), 10))
    assert r0 == full[8:28:2] and r1 == full[9:29:2]

def test_rng_state_round_trip(tmp_path):
    misc.set_seed(123)
    state = misc.get_rng_state()
    path = tmp_path / 's.pt'
    torch.save(state, path)
    a = (torch.rand(3), np.random.rand(3), random.random())
    misc.set_rng_state(torch.load(path, weights_only=True))
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]

#----------------------------------------------------------------------------
# training_stats

def test_training_stats_moments():
    collector = training_stats.Collector(regex='Test/.*', keep_previous=False)
    values = torch.tensor([1.0, 2.0, 3.0, 6.0])
    training_stats.report('Test/a', values[:2])
    training_stats.report('Test/a', values[2:])
    collector.update()
    assert collector.num('Test/a') == 4
    assert collector.mean('Test/a') == pytest.approx(3.0)
    assert collector.std('Test/a') == pytest.approx(float(values.std(unbiased=False)))
    collector.update() # Nothing new since the last update.
    assert collector.num('Test/a') == 0

def test_a_nan_reads_nan_in_its_own_window_only():
    # Before, the running totals turned NaN for good: every later status line of the process (and
    # of every later run in it) read NaN.
    collector = training_stats.Collector(regex='Test/b', keep_previous=False)
    training_stats.report('Test/b', [1.0, float('nan')])
    collector.update()
    assert collector.num('Test/b') == 2 and np.isnan(collector.mean('Test/b')) and np.isnan(collector.std('Test/b'))
    later = training_stats.Collector(regex='Test/b', keep_previous=False) # Created after the NaN.
    training_stats.report('Test/b', [2.0, 4.0])
    collector.update()
    later.update()
    assert (collector.num('Test/b'), collector.mean('Test/b'), collector.std('Test/b')) == (2, 3.0, 1.0)
    assert (later.num('Test/b'), later.mean('Test/b')) == (2, 3.0)

#----------------------------------------------------------------------------

def test_one_line_errors_tells_a_process_of_several_how_it_ends():
    # torch_utils.distributed leaves a torchrun process at once with this status (the C++ teardown
    # of a Gloo group aborts now and then); an unexpected exception keeps Python's own exit (None).
    from torch_utils import distributed as dist
    def ends(behaviour):
        @util.one_line_errors
        def command():
            if behaviour is not None:
                raise behaviour
        try:
            command()
        except (SystemExit, RuntimeError):
            pass
        return dist._exit_status # pylint: disable=protected-access
    assert [ends(None), ends(ValueError('bad')), ends(SystemExit(3)), ends(SystemExit('text')), ends(RuntimeError('bug'))] == [0, 1, 3, 1, None]
    dist.exiting(None)
