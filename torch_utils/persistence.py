"""Pickling that carries its own source code.

An instance of a class decorated with @persistent_class pickles as the call
`torch_utils.persistence._reconstruct_persistent_obj(meta)`, where `meta` holds the full source
text of the module that defined the class, the class name and the object's state. Unpickling
executes that source as a fresh module, so a snapshot loads without this source tree (and keeps
working after the code here changes). The layout of `meta` (type 'class', version 6, module_src,
class_name, state) and the name of the reconstruction function are those of the official
EDM2/StyleGAN code, so their pickles load here and ours load there.
"""

import contextlib
import copy
import inspect
import pickle
import sys
import types
import uuid

from torch_utils import util

_FORMAT_VERSION = 6         # Both sides refuse any other.
_persistent_classes = set() # Every class persistent_class() has made, for is_persistent().
_module_to_src_dict = {}    # module -> its source text, as embedded in pickles
_src_to_module_dict = {}    # source text -> the module that runs it (one module per distinct source)

#----------------------------------------------------------------------------

def persistent_class(orig_class):
    """Class decorator: instances pickle together with the source of the defining module. Other
    classes of that module that the instance holds must be persistent too; imported modules are
    not embedded and must exist where the pickle is loaded.

    Also records the constructor arguments (`init_args`, `init_kwargs`), which are pickled with
    the state, so that a fresh copy can be built with the same configuration; a class can opt out
    by setting `self._record_init_args = False` before calling the decorated constructor."""
    assert isinstance(orig_class, type)
    if is_persistent(orig_class):
        return orig_class
    module = sys.modules[orig_class.__module__]
    name = orig_class.__name__

    class Persistent(orig_class):
        # Read through the instance, so that for a persistent subclass of a persistent class the
        # most derived class's values are the ones pickled.
        _persistent_source = _module_to_src(module)
        _persistent_name = name

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            record = getattr(self, '_record_init_args', True)
            # Official attribute names: the official code reads them from our pickles' state.
            self._init_args = copy.deepcopy(args) if record else None
            self._init_kwargs = copy.deepcopy(kwargs) if record else None
            # Reconstruction looks the class up by name in the module's source.
            assert name in module.__dict__, f'{name} must be defined at the top level of {module.__name__}'
            _check_pickleable(self.__reduce__())

        @property
        def init_args(self): # A copy of the positional constructor arguments.
            return _recorded(self, '_init_args')

        @property
        def init_kwargs(self): # A copy of the keyword constructor arguments, as an EasyDict.
            return util.EasyDict(_recorded(self, '_init_kwargs'))

        def __reduce__(self):
            fields = list(super().__reduce__())
            fields.extend([None] * (3 - len(fields))) # (callable, args, state, ...)
            if fields[0] is _reconstruct_persistent_obj: # A persistent base class already did it.
                return tuple(fields)
            # Key order as the official code writes it.
            meta = dict(type='class', version=_FORMAT_VERSION, module_src=self._persistent_source,
                class_name=self._persistent_name, state=fields[2])
            return (_reconstruct_persistent_obj, (meta,), None, *fields[3:])

    Persistent.__name__ = name
    Persistent.__qualname__ = orig_class.__qualname__
    Persistent.__module__ = orig_class.__module__
    _persistent_classes.add(Persistent)
    return Persistent

def _recorded(obj, attr):
    value = getattr(obj, attr)
    assert value is not None, f'{type(obj).__name__} did not record its constructor arguments'
    return copy.deepcopy(value)

def is_persistent(obj):
    """Is `obj` a class made by persistent_class(), or an instance of one?"""
    return (obj if isinstance(obj, type) else type(obj)) in _persistent_classes

#----------------------------------------------------------------------------
# Loading pickles, including the official EDM2 ones. Those reference `dnnlib.util.EasyDict` for
# option dicts, and the embedded source of their training loop/encoders does `import dnnlib`.
# There is no dnnlib package here: names are mapped to torch_utils.util while unpickling, and the
# embedded sources see a `dnnlib` alias module with the few names they use.

class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module in ('dnnlib', 'dnnlib.util'):
            module = 'torch_utils.util'
        return super().find_class(module, name)

def load_pickle(f):
    """Unpickle a snapshot (ours or an official EDM2 one) from a binary file object."""
    return _Unpickler(f).load()

def _reconstruct_persistent_obj(meta):
    """What pickle calls for a persistent object; its name and module are part of the format."""
    if meta['version'] != _FORMAT_VERSION:
        raise ValueError(f'Unsupported persistent object version {meta["version"]} (expected {_FORMAT_VERSION})')
    if meta['type'] != 'class':
        raise ValueError(f'Unsupported persistent object type "{meta["type"]}"')
    cls = persistent_class(_src_to_module(meta['module_src']).__dict__[meta['class_name']])
    obj = cls.__new__(cls)
    state = util.EasyDict(meta['state']) # The type the official code hands to __setstate__.
    if callable(getattr(obj, '__setstate__', None)):
        obj.__setstate__(state)
    else:
        obj.__dict__.update(state)
    return obj

def _module_to_src(module):
    if module not in _module_to_src_dict:
        _remember(module, inspect.getsource(module))
    return _module_to_src_dict[module]

def _src_to_module(src):
    if src not in _src_to_module_dict:
        module = types.ModuleType(f'_imported_module_{uuid.uuid4().hex}')
        sys.modules[module.__name__] = module
        _remember(module, src)
        with _dnnlib_alias():
            exec(src, module.__dict__) # pylint: disable=exec-used
    return _src_to_module_dict[src]

def _remember(module, src):
    _module_to_src_dict[module] = src
    _src_to_module_dict[src] = module

@contextlib.contextmanager
def _dnnlib_alias():
    """While official embedded sources execute, a stand-in `dnnlib` module (unless a real one is
    loaded) with the names they use: util, EasyDict, make_cache_dir_path."""
    if 'dnnlib' in sys.modules:
        yield
        return
    alias = types.ModuleType('dnnlib')
    alias.util, alias.EasyDict, alias.make_cache_dir_path = util, util.EasyDict, util.make_cache_dir_path
    sys.modules['dnnlib'] = alias
    try:
        yield
    finally:
        del sys.modules['dnnlib']

#----------------------------------------------------------------------------

_PLAIN_TYPES = (str, int, float, bool, bytes, bytearray)
_ARRAY_TYPES = {'numpy.ndarray', 'torch.Tensor', 'torch.nn.parameter.Parameter'}

def _check_pickleable(obj):
    """Fail at construction, not at the first snapshot, when the state holds something pickle
    cannot write. Cheaper than pickling the object: only containers are walked, and plain values,
    arrays, tensors and persistent objects are taken as pickleable without being written."""
    def skeleton(value):
        if isinstance(value, (list, tuple, set)):
            return [skeleton(item) for item in value]
        if isinstance(value, dict):
            return [[skeleton(key), skeleton(item)] for key, item in value.items()]
        kind = f'{type(value).__module__}.{type(value).__name__}'
        if isinstance(value, _PLAIN_TYPES) or kind in _ARRAY_TYPES or is_persistent(value):
            return None
        return value
    pickle.dumps(skeleton(obj))

#----------------------------------------------------------------------------
