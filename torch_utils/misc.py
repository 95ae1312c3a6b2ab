"""Low-level helpers for models and training: cached constants, seeding, the resumable infinite
sampler, parameter copying, DDP helpers and the module summary."""

import contextlib
import random
import re
import numpy as np
import torch

#----------------------------------------------------------------------------
# Cached construction of constant tensors. The official EDM2 network source calls
# `misc.const_like(ref, value)`, so the signature must stay as it is.

_constant_cache = dict()

def constant(value, shape=None, dtype=None, device=None, memory_format=None):
    value = np.asarray(value)
    if shape is not None:
        shape = tuple(shape)
    if dtype is None:
        dtype = torch.get_default_dtype()
    if device is None:
        device = torch.device('cpu')
    if memory_format is None:
        memory_format = torch.contiguous_format

    key = (value.shape, value.dtype, value.tobytes(), shape, dtype, device, memory_format)
    tensor = _constant_cache.get(key, None)
    if tensor is None:
        tensor = torch.as_tensor(value.copy(), dtype=dtype, device=device)
        if shape is not None:
            tensor, _ = torch.broadcast_tensors(tensor, torch.empty(shape))
        tensor = tensor.contiguous(memory_format=memory_format)
        _constant_cache[key] = tensor
    return tensor

def const_like(ref, value, shape=None, dtype=None, device=None, memory_format=None):
    """A constant with the dtype and device of `ref` (unless given)."""
    if dtype is None:
        dtype = ref.dtype
    if device is None:
        device = ref.device
    return constant(value, shape=shape, dtype=dtype, device=device, memory_format=memory_format)

#----------------------------------------------------------------------------
# Seeding and RNG state (results are reproducible from a seed; bit-for-bit on CPU).

def set_seed(seed):
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)

def get_rng_state():
    """Every RNG state the training loop depends on, in a form torch.load(weights_only=True) accepts."""
    state = dict(torch=torch.get_rng_state(), numpy=_numpy_state_to_tensors(np.random.get_state()),
        python=_python_state_to_tensor(random.getstate()))
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state

def set_rng_state(state):
    torch.set_rng_state(state['torch'])
    np.random.set_state(_tensors_to_numpy_state(state['numpy']))
    random.setstate(_tensor_to_python_state(state['python']))
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])

def _numpy_state_to_tensors(s):
    return dict(keys=torch.as_tensor(s[1].astype(np.int64)), pos=int(s[2]), has_gauss=int(s[3]), cached_gaussian=float(s[4]))

def _tensors_to_numpy_state(d):
    return ('MT19937', d['keys'].numpy().astype(np.uint32), d['pos'], d['has_gauss'], d['cached_gaussian'])

def _python_state_to_tensor(s):
    version, internal, gauss_next = s
    return dict(version=version, internal=torch.as_tensor(internal, dtype=torch.int64), gauss_next=gauss_next)

def _tensor_to_python_state(d):
    return (d['version'], tuple(int(x) for x in d['internal'].tolist()), d['gauss_next'])

#----------------------------------------------------------------------------
# Sampler for torch.utils.data.DataLoader that loops over the dataset indefinitely. Epoch e
# visits the items in the order of a permutation drawn from RandomState([seed, e]); the global
# stream is split across ranks item by item. `start_idx` (the number of items this rank already
# consumed) resumes the exact sequence in O(dataset size), so a resumed run sees the same data
# in the same order as an uninterrupted one.

class InfiniteSampler(torch.utils.data.Sampler):
    def __init__(self, dataset, rank=0, num_replicas=1, shuffle=True, seed=0, start_idx=0):
        assert len(dataset) > 0
        assert num_replicas > 0
        assert 0 <= rank < num_replicas
        assert start_idx >= 0
        super().__init__()
        self.dataset_size = len(dataset)
        self.rank = rank
        self.num_replicas = num_replicas
        self.shuffle = shuffle
        self.seed = seed
        self.start_idx = start_idx

    def epoch_order(self, epoch):
        if not self.shuffle:
            return np.arange(self.dataset_size)
        return np.random.RandomState([self.seed % (1 << 32), epoch]).permutation(self.dataset_size)

    def __iter__(self):
        idx = self.start_idx * self.num_replicas + self.rank # Position in the global stream.
        epoch = idx // self.dataset_size
        order = self.epoch_order(epoch)
        while True:
            if idx // self.dataset_size != epoch:
                epoch = idx // self.dataset_size
                order = self.epoch_order(epoch)
            yield int(order[idx % self.dataset_size])
            idx += self.num_replicas

    def __len__(self):
        # Infinite in principle; DataLoader only needs a number for its heuristics.
        return 2**62

#----------------------------------------------------------------------------
# Parameters and buffers.

def named_params_and_buffers(module):
    assert isinstance(module, torch.nn.Module)
    return list(module.named_parameters()) + list(module.named_buffers())

#----------------------------------------------------------------------------
# DDP: skip the gradient all-reduce on all but the last accumulation round.

@contextlib.contextmanager
def ddp_sync(module, sync):
    assert isinstance(module, torch.nn.Module)
    if sync or not isinstance(module, torch.nn.parallel.DistributedDataParallel):
        yield
    else:
        with module.no_sync():
            yield

def check_ddp_consistency(module, ignore_regex=None):
    """Assert that every rank holds the same parameters and buffers."""
    assert isinstance(module, torch.nn.Module)
    for name, tensor in named_params_and_buffers(module):
        fullname = type(module).__name__ + '.' + name
        if ignore_regex is not None and re.fullmatch(ignore_regex, fullname):
            continue
        tensor = tensor.detach()
        if tensor.is_floating_point():
            tensor = torch.nan_to_num(tensor)
        other = tensor.clone()
        torch.distributed.broadcast(tensor=other, src=0)
        assert (tensor == other).all(), fullname

#----------------------------------------------------------------------------
