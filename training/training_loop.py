"""The training loop, shared by every model family. It talks to a family only through the
interface of docs/families.md: a network built from `network_kwargs`, a loss object that returns
per-sample losses, an encoder, and the EMA. Everything else (data order, RNG, optimizer, snapshots,
checkpoints, resumption, statistics) lives here once. training/config.py builds and checks its
arguments from a preset."""

import copy
import glob
import json
import os
import pickle
import pickletools
import re
import signal
import time
import warnings

import numpy as np
import psutil
import torch

from torch_utils import distributed as dist
from torch_utils import misc
from torch_utils import training_stats
from torch_utils import util

#----------------------------------------------------------------------------
# The learning-rate schedule of the families without one of their own (ARDM, MAR).

def constant_lr(cur_nimg, batch_size, ref_lr=1e-4, rampup_Mimg=0):
    """Linear warm-up over `rampup_Mimg` million images, then constant."""
    _ = batch_size
    if rampup_Mimg > 0:
        return ref_lr * min(cur_nimg / (rampup_Mimg * 1e6), 1)
    return ref_lr

#----------------------------------------------------------------------------
# Optimizer parameter groups: weight decay (when the optimizer has any) skips parameters with
# ndim <= 1 (biases, norm gains) and those the network lists in no_weight_decay().

def param_groups(net, weight_decay):
    if not weight_decay:
        return [dict(params=list(net.parameters()))]
    skip = set(net.no_weight_decay()) if hasattr(net, 'no_weight_decay') else set()
    decay, no_decay = [], []
    for name, param in net.named_parameters():
        (no_decay if param.ndim <= 1 or name in skip else decay).append(param)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]

#----------------------------------------------------------------------------
# Training state checkpoints: `training-state-{kimg:07d}.pt`, written atomically, loadable with
# torch.load(weights_only=True). The newest one that loads wins; a damaged one is skipped with a
# warning. The two newest are kept. A training state of the official EDM2 code loads too: the
# same restricted unpickler admits the two things it holds beyond tensors and plain containers,
# its state dict (a dnnlib.util.EasyDict, read as a plain dict) and its learning rate (a numpy
# float64); its network, optimizer and EMA states have the layout of ours.

_STATE_RE = re.compile(r'training-state-(\d+)\.pt$')

def list_checkpoints(run_dir):
    files = [f for f in glob.glob(os.path.join(run_dir, 'training-state-*.pt')) if _STATE_RE.search(f)]
    return sorted(files, key=lambda f: int(_STATE_RE.search(f).group(1)))

class _WriteErrors:
    """A file that remembers the OSError of a failed write: torch.save reports one as a
    RuntimeError that says only "unexpected pos"."""
    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self):
        self.f.flush()

def write_file(path, write, what):
    """write(file) into `path` atomically. A write that fails (disk full, file-size limit) becomes
    one OSError naming the file and the cause; nothing of it is left behind."""
    with util.atomic_path(path) as tmp:
        stream = None
        try:
            with open(tmp, 'wb') as f:
                stream = _WriteErrors(f)
                write(stream)
        except (OSError, RuntimeError) as e:
            cause = stream.error if stream is not None and stream.error is not None else e
            if not isinstance(cause, OSError):
                raise
            raise OSError(f'cannot write {path} ({cause.strerror or cause}); nothing of it was kept, the files written '
                f'before it are intact: free some space (or raise the file-size limit) and re-run the same command to {what}') from e

def save_checkpoint(run_dir, state, keep=2):
    """Write a training state; keep the `keep` newest ones (0 = all of them)."""
    path = os.path.join(run_dir, f'training-state-{state["state"]["cur_nimg"] // 1000:07d}.pt')
    write_file(path, lambda f: torch.save(state, f), 'resume from the previous training state')
    for old in list_checkpoints(run_dir)[:-keep] if keep else []:
        if os.path.abspath(old) != os.path.abspath(path):
            os.remove(old)
    return path

_numpy_scalar = getattr(np, '_core', np.core).multiarray.scalar
OFFICIAL_STATE_GLOBALS = [(dict, 'dnnlib.util.EasyDict'), (_numpy_scalar, 'numpy._core.multiarray.scalar'),
    (_numpy_scalar, 'numpy.core.multiarray.scalar'), np.dtype, type(np.dtype(np.float64))]

def load_training_state(path):
    """A training state written here or by the official EDM2 code, without running code."""
    with torch.serialization.safe_globals(OFFICIAL_STATE_GLOBALS):
        return torch.load(path, map_location='cpu', weights_only=True)

def why_unloadable(path, error):
    """What is wrong with a training state that does not load: objects that only code could
    rebuild (named), or a damaged file."""
    allowed = {name if isinstance(name, str) else f'{name.__module__}.{name.__qualname__}'
        for name in (entry[1] if isinstance(entry, tuple) else entry for entry in OFFICIAL_STATE_GLOBALS)}
    try:
        foreign = [name for name in torch.serialization.get_unsafe_globals_in_checkpoint(path) if name not in allowed]
    except Exception: # pylint: disable=broad-except
        foreign = []
    if foreign:
        return (f'it holds {", ".join(foreign)}, which only code could rebuild: not a training state of this code '
            'or of the official EDM2 code')
    reason = str(error).strip().splitlines()[0] if str(error).strip() else ''
    return f'damaged ({type(error).__name__}: {reason})'

def load_latest_checkpoint(run_dir):
    """(path, state, {name: why it did not load}) of the newest checkpoint that loads, or
    (None, None, ...) when none does."""
    failed = {}
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load_training_state(path), failed
        except Exception as e: # pylint: disable=broad-except
            failed[os.path.basename(path)] = why_unloadable(path, e)
            warnings.warn(f'Cannot load {path}: {failed[os.path.basename(path)]}; falling back to the previous training state')
            dist.print0(f'WARNING: cannot load {os.path.basename(path)}; trying the previous training state')
    return None, None, failed

#----------------------------------------------------------------------------
# Pre-emption: SIGTERM/SIGINT set a flag; the loop saves a training state at the next step
# boundary (every rank agrees via an all-reduce) and exits with 128 + signal number. The same
# all-reduce tells every rank whether any rank's loss was not finite.

class _StopRequest:
    def __init__(self):
        self.signum = 0
        self._previous = {}

    def install(self):
        for signum in [signal.SIGTERM, signal.SIGINT]:
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum, _frame):
        self.signum = signum

    def agreed(self, device, nonfinite=None):
        """(The largest signal number seen by any rank (0 = keep going), whether the loss of any
        rank was not finite). `nonfinite`: this rank's flag, a bool tensor, or None."""
        flags = torch.tensor([self.signum, 0], dtype=torch.int64, device=device)
        if nonfinite is not None:
            flags[1] = nonfinite
        if dist.get_world_size() > 1:
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        signum, diverged = flags.tolist()
        return signum, bool(diverged)

#----------------------------------------------------------------------------
# Status: one line per interval on stdout (the log), the collected statistics appended to
# stats.jsonl and the loss curve redrawn from it.

class _Status:
    def __init__(self, run_dir, device, start_nimg, stop_at_nimg, total_elapsed_time):
        self.run_dir, self.device, self.stop_at_nimg = run_dir, device, stop_at_nimg
        self.total_elapsed_time = total_elapsed_time
        # This run's statistics only: another run earlier in the same process (tests, notebooks)
        # must not show up in this run's first status line.
        self.collector = training_stats.Collector()
        self.prev_time, self.prev_nimg = time.time(), start_nimg
        self.training_time = 0.0 # Seconds spent in training steps since the previous report.

    def report(self, cur_nimg):
        now = time.time()
        self.total_elapsed_time += now - self.prev_time
        sec_per_kimg = self.training_time / (cur_nimg - self.prev_nimg) * 1e3 if cur_nimg > self.prev_nimg else float('nan')
        eta = (self.stop_at_nimg - cur_nimg) / 1e3 * sec_per_kimg
        training_stats.report0('Progress/kimg', cur_nimg / 1e3)
        training_stats.report0('Timing/total_sec', self.total_elapsed_time)
        if np.isfinite(sec_per_kimg): # NaN would poison the cumulative statistic.
            training_stats.report0('Timing/sec_per_kimg', sec_per_kimg)
        training_stats.report0('Resources/cpu_mem_gb', psutil.Process(os.getpid()).memory_info().rss / 2**30)
        if self.device.type == 'cuda':
            training_stats.report0('Resources/peak_gpu_mem_gb', torch.cuda.max_memory_allocated(self.device) / 2**30)
            torch.cuda.reset_peak_memory_stats()
        collector = self.collector
        collector.update()
        fields = [f'kimg {cur_nimg / 1e3:<9.1f}', f'time {util.format_time(self.total_elapsed_time):<12s}',
            f'sec/kimg {sec_per_kimg:<8.3f}', f'eta {util.format_time(eta) if np.isfinite(eta) else "-":<10s}',
            f'loss {collector["Loss/loss"] if collector.num("Loss/loss") else float("nan"):<9.4f}',
            f'cpumem {collector["Resources/cpu_mem_gb"]:<5.2f}']
        if self.device.type == 'cuda':
            fields += [f'gpumem {collector["Resources/peak_gpu_mem_gb"]:<6.2f}']
        dist.print0(' '.join(fields), flush=True)
        dist.rank0_outcome(write_status_files, self.run_dir, collector.as_dict())
        self.prev_time, self.prev_nimg, self.training_time = time.time(), cur_nimg, 0.0

def write_status_files(run_dir, stats):
    append_stats(run_dir, stats)
    plot_loss_curve(run_dir)

def append_stats(run_dir, stats):
    fmt = {'Progress/kimg': '%.3f', 'Timing/total_sec': '%.1f'}
    items = [f'"{name}": ' + (fmt.get(name, '%g') % value['mean'] if np.isfinite(value['mean']) else 'NaN') for name, value in stats.items()]
    with open(os.path.join(run_dir, 'stats.jsonl'), 'at') as f:
        f.write('{' + ', '.join(items) + f', "timestamp": {time.time():.3f}' + '}\n')

def plot_loss_curve(run_dir, stat='Loss/loss'):
    """loss.png, redrawn from stats.jsonl."""
    import matplotlib # pylint: disable=import-outside-toplevel
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt # pylint: disable=import-outside-toplevel
    kimg, loss = [], []
    with open(os.path.join(run_dir, 'stats.jsonl'), 'rt') as f:
        for line in f:
            entry = json.loads(line)
            if isinstance(entry.get(stat), float) and np.isfinite(entry[stat]) and 'Progress/kimg' in entry:
                kimg.append(entry['Progress/kimg'])
                loss.append(entry[stat])
    if not kimg:
        return
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(kimg, loss, lw=1.5)
    ax.set_xlabel('kimg')
    ax.set_ylabel(stat)
    ax.set_title(os.path.basename(os.path.abspath(run_dir)))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with util.atomic_path(os.path.join(run_dir, 'loss.png')) as tmp:
        fig.savefig(tmp, format='png')
    plt.close(fig)

#----------------------------------------------------------------------------
# What a run builds before its first step, and the state it resumes from.

def build_run(dataset_kwargs, encoder_kwargs, network_kwargs, loss_kwargs, optimizer_kwargs, ema_kwargs, device):
    """EasyDict(dataset, encoder, net, ddp, loss_fn, optimizer, ema). The network's shape is
    the encoder's output shape."""
    run = util.EasyDict()
    dist.print0('Loading dataset...')
    run.dataset = util.construct_class_by_name(**dataset_kwargs)
    ref_image, ref_label = run.dataset[0]
    dist.print0('Setting up encoder...')
    run.encoder = util.construct_class_by_name(**encoder_kwargs) # Training needs no VAE weights: they load when first used.
    ref_image = run.encoder.encode_latents(torch.as_tensor(ref_image).to(device).unsqueeze(0))
    dist.print0('Constructing network...')
    interface_kwargs = dict(img_resolution=ref_image.shape[-1], img_channels=ref_image.shape[1], label_dim=ref_label.shape[-1])
    run.net = util.construct_class_by_name(**network_kwargs, **interface_kwargs)
    run.net.train().requires_grad_(True).to(device)
    dist.print0(f'Network: {type(run.net).__name__}, {sum(p.numel() for p in run.net.parameters()):,} parameters, '
        f'input {list(ref_image.shape[1:])}, {interface_kwargs["label_dim"]} classes')
    run.ddp = run.net
    if dist.get_world_size() > 1:
        # Every rank starts from rank 0's network. DDP broadcasts the parameters; with
        # broadcast_buffers=False (buffers such as ARDM's running loss stay each rank's own, kept
        # equal by the family) it leaves the buffers, e.g. EDM2's random Fourier frequencies, alone.
        for buffer in run.net.buffers():
            torch.distributed.broadcast(buffer, src=0)
        run.ddp = torch.nn.parallel.DistributedDataParallel(run.net, device_ids=[device] if device.type == 'cuda' else None, broadcast_buffers=False)
    run.loss_fn = util.construct_class_by_name(**loss_kwargs)
    optimizer_kwargs = dict(optimizer_kwargs)
    groups = param_groups(run.net, optimizer_kwargs.pop('weight_decay', 0))
    run.optimizer = util.construct_class_by_name(groups, **optimizer_kwargs)
    run.ema = util.construct_class_by_name(net=run.net, **ema_kwargs) if ema_kwargs is not None else None
    return run

def resume(run_dir, run, run_id=None):
    """The training state {cur_nimg, total_elapsed_time}: the newest complete checkpoint's, loaded
    into the run's network, optimizer, EMA and RNGs, or a fresh start when there is none. A run
    directory whose training states are all damaged, or belong to another run, is refused."""
    state = util.EasyDict(cur_nimg=0, total_elapsed_time=0.0)
    ckpt_path, ckpt, failed = load_latest_checkpoint(run_dir)
    if ckpt is None:
        if failed:
            raise ValueError(f'--outdir {run_dir}: no training state loads ({"; ".join(f"{name}: {why}" for name, why in failed.items())}); '
                'starting over would mix two runs: choose another --outdir, or pass --restart to move the old files aside')
        return state
    if run_id is not None and ckpt.get('run_id', run_id) != run_id:
        raise ValueError(f'{ckpt_path} belongs to run {ckpt["run_id"]}, not to the run {run_id} recorded in {run_dir}')
    official = 'rng' not in ckpt # The official EDM2 code keeps no random states (it reseeds every step).
    dist.print0(f'Resuming from {os.path.basename(ckpt_path)}' + (' (a training state of the official EDM2 code)' if official else ''))
    state.update(ckpt['state'])
    try:
        run.net.load_state_dict(ckpt['net'])
        run.optimizer.load_state_dict(ckpt['optimizer'])
        if run.ema is not None:
            run.ema.load_state_dict(ckpt['ema'])
    except (RuntimeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0]
        raise ValueError(f'{ckpt_path} does not fit this network (an architecture option changed since the run '
            f'started?): {first}') from e
    if official:
        loss_fn = {key: getattr(run.loss_fn, key, None) for key in (ckpt.get('loss_fn') or {}) if not key.startswith('_')}
        if any(ckpt['loss_fn'][key] != value for key, value in loss_fn.items()):
            dist.print0(f'Note: the training state was trained with the loss {ckpt["loss_fn"]}; this run continues with {loss_fn}')
        dist.print0('Note: weights, optimizer, EMA and time resume; the random streams and the order of the images start afresh')
    elif len(ckpt['rng']) == dist.get_world_size():
        misc.set_rng_state(ckpt['rng'][dist.get_rank()])
    else:
        dist.print0(f'WARNING: the checkpoint was written by {len(ckpt["rng"])} processes, not {dist.get_world_size()}; '
            'continuing with fresh random streams (not bit-identical to an uninterrupted run)')
    return state

def data_iterator(dataset, start_nimg, batch_gpu, seed, data_loader_kwargs, device):
    """An infinite, resumable stream of this rank's batches, continuing at image `start_nimg`."""
    sampler = misc.InfiniteSampler(dataset=dataset, rank=dist.get_rank(), num_replicas=dist.get_world_size(), seed=seed,
        start_idx=start_nimg // dist.get_world_size())
    loader_kwargs = dict(data_loader_kwargs)
    if loader_kwargs.get('num_workers', 0) == 0:
        loader_kwargs.pop('prefetch_factor', None)
    loader_kwargs.setdefault('pin_memory', device.type == 'cuda')
    # Its own generator: creating the iterator must not draw from the global RNG (exact resumption).
    return iter(torch.utils.data.DataLoader(dataset=dataset, sampler=sampler, batch_size=batch_gpu,
        generator=torch.Generator().manual_seed(seed), **loader_kwargs))

#----------------------------------------------------------------------------
# Saving: network snapshots (rank 0) and training states (every rank takes part).

def snapshot_names(run, cur_nimg):
    """{file name: network} of the snapshots at cur_nimg: one per EMA profile (or of the network
    itself without EMA)."""
    return {f'network-snapshot-{cur_nimg // 1000:07d}{suffix}.pkl': net for net, suffix in (run.ema.get() if run.ema is not None else [(run.net, '')])}

def save_snapshots(run_dir, run, cur_nimg, dataset_kwargs, run_id=None, only=None):
    """The snapshots at cur_nimg (rank 0; `only`: these file names). Plain dicts and lists, so
    that EDM2 snapshots load in the official code too (it reads only `ema` and `encoder`).
    `sources` ([{label, name, original_id}] from dataset.json, or None) lets the generator choose a
    class by its identity once the dataset is gone; `run_id` ties the snapshot to its run."""
    check_finite(run, cur_nimg)
    for fname, ema_net in snapshot_names(run, cur_nimg).items():
        if only is not None and fname not in only:
            continue
        data = dict(ema=copy.deepcopy(ema_net).cpu().eval().requires_grad_(False), loss_fn=run.loss_fn,
            encoder=run.encoder, dataset_kwargs=dict(dataset_kwargs), run_id=run_id,
            sources=getattr(run.dataset, 'sources', None)) # Optional for dataset classes other than ours.
        dist.print0(f'Saving {fname} ... ', end='', flush=True)
        write_file(os.path.join(run_dir, fname), lambda f, data=data: pickle.dump(data, f), 'write it again')
        dist.print0('done')

def repair_snapshots(run_dir, run, cur_nimg, dataset_kwargs, run_id=None):
    """Rewrite the snapshots of the training state being resumed from when they are missing or
    damaged (e.g. truncated by a full disk): they hold the state's EMA, so they come out with the
    same networks as when first written. A finished run re-run then ends with every file whole."""
    damaged = [fname for fname in snapshot_names(run, cur_nimg) if not pickle_is_complete(os.path.join(run_dir, fname))]
    if damaged:
        dist.print0(f'Rewriting {", ".join(damaged)} (missing or damaged) from the training state')
        save_snapshots(run_dir, run, cur_nimg, dataset_kwargs, run_id, only=damaged)

def pickle_is_complete(path):
    """Whether `path` holds a whole pickle, walked opcode by opcode without loading anything."""
    try:
        with open(path, 'rb') as f:
            ops = [op.name for op, _arg, _pos in pickletools.genops(f)]
        return ops[-1:] == ['STOP']
    except Exception: # pylint: disable=broad-except
        return False

def check_finite(run, cur_nimg):
    """Never save a network whose parameters are not finite: resuming from it could not help."""
    if not torch.stack([p.isfinite().all() for p in run.net.parameters()]).all():
        raise diverged_error(cur_nimg, 'the network parameters are not finite')

def diverged_error(cur_nimg, what):
    return ValueError(f'{what} at {cur_nimg / 1e3:g} kimg: training diverged (a learning rate too high?); '
        'nothing from this point on was saved')

def save_state(run_dir, run, state, run_id=None, keep=2):
    """Every rank's RNG state goes in, so that a resumed run continues bit for bit; the ranks'
    networks must agree (as EDM2 checks) before one copy is written. The loss's settings go in
    too, under the official key `loss_fn`, so that the official EDM2 code resumes EDM2 runs of
    this code."""
    check_finite(run, state.cur_nimg)
    rng = [misc.get_rng_state()]
    if dist.get_world_size() > 1:
        misc.check_ddp_consistency(run.net)
        rng = [None] * dist.get_world_size()
        torch.distributed.all_gather_object(rng, misc.get_rng_state())
    path = dist.rank0_outcome(save_checkpoint, run_dir, dict(state=dict(state), net=run.net.state_dict(), loss_fn=plain_settings(run.loss_fn),
        optimizer=run.optimizer.state_dict(), ema=run.ema.state_dict() if run.ema is not None else None, rng=rng, run_id=run_id), keep)
    dist.print0(f'Saved {os.path.basename(path)}')

def plain_settings(obj):
    """The attributes of `obj` made of numbers, strings, None and lists, tuples and dicts of
    them (e.g. a loss's P_mean and P_std, and the constructor arguments a persistent class
    records): what the official code restores a loss from, loadable weights-only."""
    def plain(value):
        if isinstance(value, (list, tuple)):
            return all(plain(item) for item in value)
        if isinstance(value, dict):
            return all(isinstance(key, str) and plain(item) for key, item in value.items())
        return value is None or isinstance(value, (bool, int, float, str))
    return {key: value for key, value in vars(obj).items() if plain(value)}

#----------------------------------------------------------------------------
# One optimizer step: the per-process batch in accumulation rounds of batch_gpu images.

def train_step(run, dataset_iterator, cur_nimg, batch_size, batch_gpu, lr_kwargs, device, *,
        loss_scaling, force_finite, grad_clip):
    """Returns a bool tensor on the device: was the loss of any image not finite? The options of
    training_loop() (loss_scaling, force_finite, grad_clip) come from it, with no defaults here."""
    per_process = batch_size // dist.get_world_size()
    num_rounds = per_process // batch_gpu
    run.optimizer.zero_grad(set_to_none=True)
    nonfinite = torch.zeros([], dtype=torch.bool, device=device)
    for round_idx in range(num_rounds):
        with misc.ddp_sync(run.ddp, (round_idx == num_rounds - 1)):
            images, labels = next(dataset_iterator)
            images = run.encoder.encode_latents(images.to(device))
            loss = run.loss_fn(net=run.ddp, images=images, labels=labels.to(device))
            training_stats.report('Loss/loss', loss)
            nonfinite |= ~loss.detach().isfinite().all()
            loss.sum().mul(loss_scaling / per_process).backward()

    lr = float(util.call_func_by_name(cur_nimg=cur_nimg, batch_size=batch_size, **lr_kwargs))
    training_stats.report('Loss/learning_rate', lr)
    for group in run.optimizer.param_groups:
        group['lr'] = lr
    if force_finite:
        for param in run.net.parameters():
            if param.grad is not None:
                torch.nan_to_num(param.grad, nan=0, posinf=0, neginf=0, out=param.grad)
    if grad_clip:
        training_stats.report('Loss/grad_norm', torch.nn.utils.clip_grad_norm_(run.net.parameters(), grad_clip))
    run.optimizer.step()
    if run.ema is not None:
        run.ema.update(cur_nimg=cur_nimg + batch_size, batch_size=batch_size)
    return nonfinite

#----------------------------------------------------------------------------
# Main training loop.

def training_loop(*,
    # What to train, as training/config.py builds it from a preset: required, no defaults here.
    dataset_kwargs,                 # Dataset class and arguments.
    encoder_kwargs,                 # Encoder class and arguments (pixels, VAE latents or levels to net space).
    data_loader_kwargs,             # torch DataLoader arguments (num_workers, ...).
    network_kwargs,                 # Network class and arguments (docs/families.md).
    loss_kwargs,                    # Loss class and arguments.
    optimizer_kwargs,               # Optimizer class and arguments (an optional weight_decay makes parameter groups).
    lr_kwargs,                      # Learning-rate schedule: func_name and arguments.
    ema_kwargs,                     # EMA class and arguments, or None (snapshots of the network itself).
    seed,                           # Global random seed (rank r seeds with seed + r).
    batch_size,                     # Total batch size for one training iteration.
    batch_gpu,                      # Images per process in one accumulation round (config.batch_per_round()).
    total_nimg,                     # Train for a total of N training images.
    status_nimg,                    # Report status every N training images (0 = off).
    snapshot_nimg,                  # Save network snapshots every N training images (0 = off).
    checkpoint_nimg,                # Save a training state every N training images (0 = off).
    loss_scaling,                   # Loss scaling factor for reducing FP16 under/overflows.
    grad_clip,                      # Clip the global gradient norm to this value (0 = off).
    cudnn_benchmark,                # Enable torch.backends.cudnn.benchmark?

    # How this invocation runs.
    run_dir,                        # Output directory.
    run_id              = None,     # Identity of the run (training/runs.py), kept in its snapshots and states.
    on_resumed          = None,     # Called (on rank 0) once a training state has loaded, before the first step.
    slice_nimg          = 0,        # Train for at most N images in this invocation (0 = no limit).
    keep_checkpoints    = 2,        # Keep the N newest training states (0 = all, as the official code does).
    force_finite        = True,     # Replace NaN/Inf gradients with zeros.
    device              = None,     # Default: torch_utils.distributed.get_device().
):
    device = torch.device(device) if device is not None else dist.get_device()
    start_time = time.time()
    misc.set_seed(seed + dist.get_rank())
    torch.backends.cudnn.benchmark = cudnn_benchmark
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    assert batch_size % (dist.get_world_size() * batch_gpu) == 0, 'checked by training/config.py'
    if dist.get_rank() == 0:
        os.makedirs(run_dir, exist_ok=True)
        for pattern in ['network-snapshot-*.pkl', 'training-state-*.pt']: # Left by a killed run.
            util.remove_stale_temporaries(os.path.join(run_dir, pattern))

    run = build_run(dataset_kwargs, encoder_kwargs, network_kwargs, loss_kwargs, optimizer_kwargs, ema_kwargs, device)
    state = resume(run_dir, run, run_id)
    start_nimg = state.cur_nimg
    if on_resumed is not None and start_nimg:
        dist.rank0_outcome(on_resumed)
    if snapshot_nimg and start_nimg and start_nimg % snapshot_nimg == 0:
        dist.rank0_outcome(repair_snapshots, run_dir, run, start_nimg, dataset_kwargs, run_id)
    stop_at_nimg = min(total_nimg, start_nimg + slice_nimg) if slice_nimg else total_nimg
    dist.print0(f'Training from {start_nimg // 1000} kimg to {stop_at_nimg // 1000} kimg:\n')
    batches = data_iterator(run.dataset, start_nimg, batch_gpu, seed, data_loader_kwargs, device)
    status = _Status(run_dir, device, start_nimg, stop_at_nimg, state.total_elapsed_time)
    every = lambda interval: interval and state.cur_nimg % interval == 0

    stop = _StopRequest()
    stop.install()
    nonfinite = None # Of the latest step.
    try:
        while True:
            done = state.cur_nimg >= stop_at_nimg
            signum, diverged = stop.agreed(device, nonfinite)
            if diverged:
                raise diverged_error(state.cur_nimg, 'the loss is not finite (NaN or inf)')
            fresh = state.cur_nimg != start_nimg or start_nimg == 0 # Not what the resumed state already reported and saved.
            if status_nimg and (done or signum or every(status_nimg)) and fresh:
                status.report(state.cur_nimg)
                state.total_elapsed_time = status.total_elapsed_time
            if every(snapshot_nimg) and fresh:
                dist.rank0_outcome(save_snapshots, run_dir, run, state.cur_nimg, dataset_kwargs, run_id)
            if signum or (checkpoint_nimg and (done or every(checkpoint_nimg)) and state.cur_nimg != start_nimg):
                save_state(run_dir, run, state, run_id, keep=keep_checkpoints)
            if signum:
                dist.print0(f'Stopping on signal {signal.Signals(signum).name} at {state.cur_nimg // 1000} kimg; '
                    're-run the same command to resume.', flush=True)
                raise SystemExit(128 + signum)
            if done:
                break
            step_start = time.time()
            nonfinite = train_step(run, batches, state.cur_nimg, batch_size, batch_gpu, lr_kwargs, device,
                loss_scaling=loss_scaling, force_finite=force_finite, grad_clip=grad_clip)
            state.cur_nimg += batch_size
            status.training_time += time.time() - step_start
    finally:
        stop.uninstall()
    dist.print0(f'Done in {util.format_time(time.time() - start_time)}.')

#----------------------------------------------------------------------------
