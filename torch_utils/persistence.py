"""Pickling that carries its own source code.

A class decorated with @persistent_class pickles as a call to `_reconstruct_persistent_obj(meta)`
where `meta` holds the full source text of the module that defined the class, the class name and
the object's state. Unpickling executes that source as a fresh module, so a snapshot loads without
this source tree (and keeps working after the code here changes). The format is the one used by
the official EDM2/StyleGAN code (version 6), so their pickles load here, and ours load there.
"""

import copy
import inspect
import io
import pickle
import sys
import types
import uuid

from torch_utils import util

_version = 6                # Format version, as written by the official code.
_decorators = set()         # Every decorator class created so far.
_module_to_src_dict = {}    # module -> source text
_src_to_module_dict = {}    # source text -> module

#----------------------------------------------------------------------------

def persistent_class(orig_class):
    """Class decorator: instances pickle together with the source of the defining module.
    Also records the constructor arguments (`init_args`, `init_kwargs`) so that a fresh copy
    can be constructed with the same configuration."""
    assert isinstance(orig_class, type)
    if is_persistent(orig_class):
        return orig_class
    assert orig_class.__module__ in sys.modules
    orig_module = sys.modules[orig_class.__module__]
    orig_module_src = _module_to_src(orig_module)

    class Decorator(orig_class):
        _orig_module_src = orig_module_src
        _orig_class_name = orig_class.__name__

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            record_init_args = getattr(self, '_record_init_args', True)
            self._init_args = copy.deepcopy(args) if record_init_args else None
            self._init_kwargs = copy.deepcopy(kwargs) if record_init_args else None
            assert orig_class.__name__ in orig_module.__dict__
            _check_pickleable(self.__reduce__())

        @property
        def init_args(self):
            assert self._init_args is not None
            return copy.deepcopy(self._init_args)

        @property
        def init_kwargs(self):
            assert self._init_kwargs is not None
            return util.EasyDict(copy.deepcopy(self._init_kwargs))

        def __reduce__(self):
            fields = list(super().__reduce__())
            fields += [None] * max(3 - len(fields), 0)
            if fields[0] is not _reconstruct_persistent_obj:
                meta = dict(type='class', version=_version, module_src=self._orig_module_src,
                    class_name=self._orig_class_name, state=fields[2])
                fields[0] = _reconstruct_persistent_obj
                fields[1] = (meta,)
                fields[2] = None
            return tuple(fields)

    Decorator.__name__ = orig_class.__name__
    Decorator.__qualname__ = orig_class.__qualname__
    Decorator.__module__ = orig_class.__module__
    _decorators.add(Decorator)
    return Decorator

def is_persistent(obj):
    """Is the class (or the class of the object) decorated with @persistent_class?"""
    try:
        if obj in _decorators:
            return True
    except TypeError:
        pass
    return type(obj) in _decorators

#----------------------------------------------------------------------------
# Loading pickles, including the official EDM2 ones. Those reference `dnnlib.util.EasyDict` for
# option dicts, and the embedded source of their training loop/encoders does `import dnnlib`.
# There is no dnnlib package here: names are mapped to torch_utils.util while unpickling, and the
# embedded sources see a `dnnlib` alias module with the few names they use.

_NAME_MAP = {
    'dnnlib': 'torch_utils.util',
    'dnnlib.util': 'torch_utils.util',
}

class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        return super().find_class(_NAME_MAP.get(module, module), name)

def load_pickle(f):
    """Unpickle a snapshot (ours or an official EDM2 one) from a binary file object."""
    return _Unpickler(f).load()

def _dnnlib_alias():
    """A stand-in `dnnlib` module exposing what the official embedded sources use."""
    module = types.ModuleType('dnnlib')
    module.util = util
    module.EasyDict = util.EasyDict
    module.make_cache_dir_path = util.make_cache_dir_path
    return module

#----------------------------------------------------------------------------

def _reconstruct_persistent_obj(meta):
    meta = util.EasyDict(meta)
    meta.state = util.EasyDict(meta.state)
    if meta.version != _version:
        raise ValueError(f'Unsupported persistent object version {meta.version} (expected {_version})')
    if meta.type != 'class':
        raise ValueError(f'Unsupported persistent object type "{meta.type}"')
    module = _src_to_module(meta.module_src)
    orig_class = module.__dict__[meta.class_name]
    decorator_class = persistent_class(orig_class)
    obj = decorator_class.__new__(decorator_class)
    setstate = getattr(obj, '__setstate__', None)
    if callable(setstate):
        setstate(meta.state)
    else:
        obj.__dict__.update(meta.state)
    return obj

def _module_to_src(module):
    src = _module_to_src_dict.get(module, None)
    if src is None:
        src = inspect.getsource(module)
        _module_to_src_dict[module] = src
        _src_to_module_dict[src] = module
    return src

def _src_to_module(src):
    module = _src_to_module_dict.get(src, None)
    if module is None:
        module_name = '_imported_module_' + uuid.uuid4().hex
        module = types.ModuleType(module_name)
        sys.modules[module_name] = module
        _module_to_src_dict[module] = src
        _src_to_module_dict[src] = module
        added_alias = 'dnnlib' not in sys.modules
        if added_alias:
            sys.modules['dnnlib'] = _dnnlib_alias()
        try:
            exec(src, module.__dict__) # pylint: disable=exec-used
        finally:
            if added_alias:
                del sys.modules['dnnlib']
    return module

#----------------------------------------------------------------------------

def _check_pickleable(obj):
    """Fail early, at construction, on state that could not be pickled into a snapshot."""
    def recurse(obj):
        if isinstance(obj, (list, tuple, set)):
            return [recurse(x) for x in obj]
        if isinstance(obj, dict):
            return [[recurse(x), recurse(y)] for x, y in obj.items()]
        if isinstance(obj, (str, int, float, bool, bytes, bytearray)):
            return None # Python primitive types are pickleable.
        if f'{type(obj).__module__}.{type(obj).__name__}' in ['numpy.ndarray', 'torch.Tensor', 'torch.nn.parameter.Parameter']:
            return None # NumPy arrays and PyTorch tensors are pickleable.
        if is_persistent(obj):
            return None # Persistent objects are pickleable, by virtue of the constructor check.
        return obj
    with io.BytesIO() as f:
        pickle.dump(recurse(obj), f)

#----------------------------------------------------------------------------
