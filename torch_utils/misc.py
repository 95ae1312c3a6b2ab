"""Low-level helpers for models and training: cached constants, seeding and RNG state, the
resumable infinite sampler, and the DDP helpers of the training loop.

This module must import nothing but numpy and torch: the snapshot tests run it as the
`torch_utils.misc` of a stand-in for the official EDM2 tree."""

import contextlib
import random
import numpy as np
import torch

#----------------------------------------------------------------------------
# Constant tensors, built once per (value, shape, dtype, device, memory format) and then reused:
# the networks ask for the same resampling filter or scale on every forward pass, and a cached
# tensor saves the copy to the device each time. Official EDM2 network and encoder sources call
# `misc.const_like(ref, value)`, so these signatures stay as the official code has them.

_constants = {}

def constant(value, shape=None, dtype=None, device=None, memory_format=None):
    """`value` (anything np.asarray takes) as a tensor, broadcast to `shape` when given; by default
    of torch's default dtype, on the CPU, contiguous."""
    value = np.asarray(value)
    shape = None if shape is None else tuple(shape)
    dtype = torch.get_default_dtype() if dtype is None else dtype
    device = torch.device('cpu') if device is None else device
    memory_format = torch.contiguous_format if memory_format is None else memory_format
    key = (value.shape, value.dtype, value.tobytes(), shape, dtype, device, memory_format)
    if key not in _constants:
        tensor = torch.as_tensor(value.copy(), dtype=dtype, device=device)
        if shape is not None:
            tensor = tensor.expand(torch.broadcast_shapes(tensor.shape, shape))
        _constants[key] = tensor.contiguous(memory_format=memory_format)
    return _constants[key]

def const_like(ref, value, shape=None, dtype=None, device=None, memory_format=None):
    """constant() with the dtype and device of the tensor `ref` unless given."""
    dtype = ref.dtype if dtype is None else dtype
    device = ref.device if device is None else device
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
        if len(dataset) == 0 or not 0 <= rank < num_replicas or start_idx < 0:
            raise ValueError(f'InfiniteSampler: needs a non-empty dataset, 0 <= rank < num_replicas and start_idx >= 0 '
                f'(got {len(dataset)} items, rank {rank} of {num_replicas}, start_idx {start_idx})')
        super().__init__()
        self.dataset_size = len(dataset)
        self.rank, self.num_replicas = rank, num_replicas
        self.shuffle, self.seed = shuffle, seed
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
# DDP helpers of the training loop.

def ddp_sync(module, sync):
    """Context for one gradient-accumulation round: DDP all-reduces the gradients only when
    `sync` (the last round); a module that is not DDP needs nothing."""
    if sync or not isinstance(module, torch.nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return module.no_sync()

def check_ddp_consistency(module):
    """Assert that every rank holds rank 0's parameters and buffers (NaNs count as equal)."""
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        mine = tensor.detach()
        if mine.is_floating_point():
            mine = torch.nan_to_num(mine)
        theirs = mine.clone()
        torch.distributed.broadcast(tensor=theirs, src=0)
        assert torch.equal(mine, theirs), f'{type(module).__name__}.{name} differs between ranks'

#----------------------------------------------------------------------------
