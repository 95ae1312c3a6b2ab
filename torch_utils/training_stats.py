"""Scalar statistics reported anywhere in the code and collected across ranks.

`report(name, value)` accumulates the count, sum and sum of squares of the given values (any
tensor shape) on the value's device; `Collector.update()` reduces them over all ranks and returns
means and standard deviations since the previous update. Cheap enough to call in the inner loop:
nothing synchronizes with the device until the collector asks.
"""

import re
import numpy as np
import torch

#----------------------------------------------------------------------------

_num_moments = 3            # [count, sum, sum of squares]
_reduce_dtype = torch.float32
_counter_dtype = torch.float64
_rank = 0
_sync_device = None         # Device for all_reduce (NCCL needs CUDA); None = CPU (Gloo).
_counters = dict()          # name -> device -> running moments since the last collection
_cumulative = dict()        # name -> moments collected so far

#----------------------------------------------------------------------------

def init_multiprocessing(rank, sync_device):
    """Called once by torch_utils.distributed.init()."""
    global _rank, _sync_device
    _rank = rank
    _sync_device = sync_device

def report(name, value):
    """Accumulate a scalar statistic. Returns `value` unchanged so it can be used inline."""
    if name not in _counters:
        _counters[name] = dict()
    elems = torch.as_tensor(value)
    if elems.numel() == 0:
        return value
    elems = elems.detach().flatten().to(_reduce_dtype)
    moments = torch.stack([torch.ones_like(elems).sum(), elems.sum(), elems.square().sum()])
    device = moments.device
    if device not in _counters[name]:
        _counters[name][device] = torch.zeros_like(moments)
    _counters[name][device].add_(moments)
    return value

def report0(name, value):
    """Like report(), but counted on rank 0 only (for values every rank has in common)."""
    report(name, value if _rank == 0 else [])
    return value

#----------------------------------------------------------------------------

class Collector:
    """Collects the statistics whose names match `regex` across all ranks.

    keep_previous: when a statistic got no new values since the last update, report the previous
    value instead of dropping it (stable columns in stats.jsonl)."""

    def __init__(self, regex='.*', keep_previous=True):
        self._regex = re.compile(regex)
        self._keep_previous = keep_previous
        self._cumulative = dict()
        self._moments = dict()
        self.update()
        self._moments.clear()

    def names(self):
        # Sorted: every rank must reduce the same names in the same order.
        return sorted(name for name in _counters if self._regex.fullmatch(name))

    def update(self):
        if not self._keep_previous:
            self._moments.clear()
        for name, cumulative in _sync(self.names()):
            if name not in self._cumulative:
                self._cumulative[name] = torch.zeros([_num_moments], dtype=_counter_dtype)
            delta = cumulative - self._cumulative[name]
            self._cumulative[name].copy_(cumulative)
            if float(delta[0]) != 0:
                self._moments[name] = delta

    def _get_delta(self, name):
        assert self._regex.fullmatch(name)
        if name not in self._moments:
            self._moments[name] = torch.zeros([_num_moments], dtype=_counter_dtype)
        return self._moments[name]

    def num(self, name):
        return float(self._get_delta(name)[0])

    def mean(self, name):
        delta = self._get_delta(name)
        if int(delta[0]) == 0:
            return float('nan')
        return float(delta[1] / delta[0])

    def std(self, name):
        delta = self._get_delta(name)
        if int(delta[0]) == 0 or not np.isfinite(float(delta[1])):
            return float('nan')
        if int(delta[0]) == 1:
            return float(0)
        mean = float(delta[1] / delta[0])
        raw_var = float(delta[2] / delta[0])
        return np.sqrt(max(raw_var - np.square(mean), 0))

    def as_dict(self):
        return {name: dict(num=self.num(name), mean=self.mean(name), std=self.std(name))
            for name in self.names()}

    def __getitem__(self, name):
        return self.mean(name)

#----------------------------------------------------------------------------

def _sync(names):
    """Move the running counters into the cumulative totals, summed over ranks."""
    if len(names) == 0:
        return []

    deltas = []
    device = _sync_device if _sync_device is not None else torch.device('cpu')
    for name in names:
        delta = torch.zeros([_num_moments], dtype=_counter_dtype, device=device)
        for counter in _counters[name].values():
            delta.add_(counter.to(device=device, dtype=_counter_dtype))
            counter.zero_()
        deltas.append(delta)
    deltas = torch.stack(deltas)

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(deltas)

    deltas = deltas.cpu()
    for idx, name in enumerate(names):
        if name not in _cumulative:
            _cumulative[name] = torch.zeros([_num_moments], dtype=_counter_dtype)
        _cumulative[name].add_(deltas[idx])
    return [(name, _cumulative[name]) for name in names]

#----------------------------------------------------------------------------
