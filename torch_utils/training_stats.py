"""Scalar statistics reported anywhere in the code and collected across ranks.

`report(name, value)` adds the values' count, sum and sum of squares to a running total kept on
the values' own device, so that reporting never waits for the GPU. `Collector.update()` is the
only synchronisation: it moves those totals to the CPU, sums them over the ranks and returns
per-statistic means and standard deviations for the values reported since its previous update.
The interface (report, report0, Collector, init_multiprocessing) is the one the EDM2 training
code uses.
"""

import math
import re
import torch

#----------------------------------------------------------------------------
# Process-wide state. A statistic's moments are the vector [count, sum, sum of squares].

_rank = 0
_sync_device = None # Where ranks exchange moments (NCCL needs CUDA); None: the CPU (Gloo, one process).
_pending = {}       # name -> {device: float32 moments reported there since the last sync}
_totals = {}        # name -> float64 CPU moments of every rank since the start (grows monotonically), and
                    # the number of syncs that brought a NaN or inf: kept out of the moments, so that
                    # only the windows holding one read NaN, not every later one.

def init_multiprocessing(rank, sync_device):
    """Called once by torch_utils.distributed.init()."""
    global _rank, _sync_device
    _rank, _sync_device = rank, sync_device

def report(name, value):
    """Add the scalars of `value` (a number, a list or a tensor of any shape) to statistic `name`.
    Returns `value`, so that a report can wrap an expression. An empty value still registers the
    name: every rank must know the same names, in the same order, when they synchronise."""
    per_device = _pending.setdefault(name, {})
    values = torch.as_tensor(value)
    if values.numel() == 0:
        return value
    values = values.detach().flatten().to(torch.float32)
    moments = torch.stack([torch.ones_like(values).sum(), values.sum(), values.square().sum()])
    if moments.device not in per_device:
        per_device[moments.device] = torch.zeros_like(moments)
    per_device[moments.device].add_(moments)
    return value

def report0(name, value):
    """report() for a value all ranks share (time, progress): counted once, from rank 0."""
    report(name, value if _rank == 0 else [])
    return value

def _sync(names):
    """Fold the pending moments of `names` into the totals, summed over ranks; returns the totals."""
    if not names:
        return []
    device = torch.device('cpu') if _sync_device is None else _sync_device
    fresh = torch.zeros([len(names), 3], dtype=torch.float64, device=device)
    for row, name in zip(fresh, names):
        for moments in _pending[name].values():
            row.add_(moments.to(device=device, dtype=torch.float64))
            moments.zero_()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(fresh)
    for name, row in zip(names, fresh.cpu()):
        totals = _totals.setdefault(name, torch.zeros([4], dtype=torch.float64))
        if row.isfinite().all():
            totals[:3] += row
        else:
            totals[0] += row[0]
            totals[3] += 1
    return [(name, _totals[name]) for name in names]

#----------------------------------------------------------------------------

class Collector:
    """The statistics whose names match `regex`, as they stood between the last two updates.

    keep_previous: a statistic that received nothing since the previous update keeps the values
    it had then, instead of reading as empty (stable columns in stats.jsonl)."""

    def __init__(self, regex='.*', keep_previous=True):
        self._regex = re.compile(regex)
        self._keep_previous = keep_previous
        self._seen = {}    # name -> _totals at the previous update
        self._window = {}  # name -> moments between the last two updates
        self.update()      # What was reported before the collector existed does not count.
        self._window.clear()

    def names(self):
        # Sorted: every rank must synchronise the same names in the same order.
        return sorted(name for name in _pending if self._regex.fullmatch(name))

    def update(self):
        if not self._keep_previous:
            self._window.clear()
        for name, totals in _sync(self.names()):
            window = totals - self._seen.get(name, 0)
            self._seen[name] = totals.clone()
            if float(window[0]) != 0:
                self._window[name] = window

    def _moments(self, name):
        """(count, sum, sum of squares) as floats; zeros for a statistic with nothing collected,
        NaN sums for one that received a NaN or inf."""
        assert self._regex.fullmatch(name)
        window = self._window.get(name)
        if window is None:
            return (0.0, 0.0, 0.0)
        count, total, squares, nonfinite = window.tolist()
        return (count, total, squares) if nonfinite == 0 else (count, float('nan'), float('nan'))

    def num(self, name):
        return self._moments(name)[0]

    def mean(self, name):
        count, total, _ = self._moments(name)
        return total / count if count else float('nan')

    def std(self, name):
        """Population standard deviation, from the moments (clamped at 0 against rounding)."""
        count, total, squares = self._moments(name)
        if count == 0 or not math.isfinite(total):
            return float('nan')
        if count == 1:
            return 0.0
        mean = total / count
        return math.sqrt(max(squares / count - mean * mean, 0))

    def as_dict(self):
        return {name: dict(num=self.num(name), mean=self.mean(name), std=self.std(name)) for name in self.names()}

    def __getitem__(self, name):
        return self.mean(name)

#----------------------------------------------------------------------------
