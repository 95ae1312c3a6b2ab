"""Process-group set-up and helpers. Under torchrun the environment (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT) describes the job; a plain `python` call is a world of one.
NCCL is used on CUDA, Gloo on CPU."""

import atexit
import os
import sys

import torch

from torch_utils import training_stats

#----------------------------------------------------------------------------

def _env_int(name, default):
    value = os.environ.get(name)
    return int(value) if value else default

def get_device():
    """The device this process works on: its local GPU when CUDA is present, else the CPU."""
    if torch.cuda.is_available():
        return torch.device('cuda', _env_int('LOCAL_RANK', 0))
    return torch.device('cpu')

def init():
    """Initialize the process group when running under torchrun (idempotent)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return
    world_size = _env_int('WORLD_SIZE', 1)
    if world_size > 1:
        backend = 'nccl' if torch.cuda.is_available() else 'gloo'
        if backend == 'nccl':
            torch.cuda.set_device(get_device())
        torch.distributed.init_process_group(backend=backend, init_method='env://')
        atexit.register(_shutdown)
    sync_device = get_device() if world_size > 1 and torch.cuda.is_available() else None
    training_stats.init_multiprocessing(rank=get_rank(), sync_device=sync_device)

# Leaving a process of several. After the work is done, the interpreter's own teardown destroys
# torch's C++ objects in an order that sometimes aborts a process of a Gloo group ("terminate
# called without an active exception", SIGABRT or SIGSEGV after its last line; measured here on 2
# loaded cores: 6 of 120 two-process launches, with or without a barrier first). So the group is
# destroyed at exit and, when the script has said how it ends (exiting(), which
# util.one_line_errors calls for every script), the process leaves at once with that status.

_exit_status = None

def exiting(status):
    """The exit status this process is about to end with (0 = success)."""
    global _exit_status # pylint: disable=global-statement
    _exit_status = status

def _shutdown():
    if not is_initialized():
        return
    torch.distributed.destroy_process_group()
    if _exit_status is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status) # pylint: disable=protected-access

def is_initialized():
    return torch.distributed.is_available() and torch.distributed.is_initialized()

def get_rank():
    return torch.distributed.get_rank() if is_initialized() else 0

def get_world_size():
    return torch.distributed.get_world_size() if is_initialized() else 1

def barrier():
    if is_initialized():
        torch.distributed.barrier()

def all_reduce_sum(tensor):
    """In-place sum over ranks (a no-op in a world of one). Gloo and NCCL both accept float64."""
    if is_initialized():
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor

def rank0_outcome(fn, *args, **kwargs):
    """fn(*args, **kwargs) on rank 0 only; every rank returns its result, or raises its ValueError or
    OSError. Work that only rank 0 does (writing files) must end this way: a rank 0 that failed
    alone would leave the others waiting in their next collective until they die with a
    communication error of their own."""
    outcome = [None, None]
    if get_rank() == 0:
        try:
            outcome = [fn(*args, **kwargs), None]
        except (ValueError, OSError) as e:
            outcome = [None, e]
    if get_world_size() > 1:
        torch.distributed.broadcast_object_list(outcome, src=0, device=get_device() if torch.cuda.is_available() else None)
    if outcome[1] is not None:
        raise outcome[1]
    return outcome[0]

def print0(*args, **kwargs):
    """print() on rank 0 only."""
    if get_rank() == 0:
        print(*args, **kwargs)

#----------------------------------------------------------------------------
