"""The training loop, shared by every model family. It talks to a family only through the
interface of docs/families.md: a network built from `network_kwargs`, a loss object that returns
per-sample losses, an encoder, and the EMA. Everything else (data order, RNG, optimizer, snapshots,
checkpoints, resumption, statistics) lives here once."""

import copy
import glob
import json
import os
import pickle
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
# Learning-rate schedules, selected by name in training/presets.py (LR_SCHEDULES).

def learning_rate_schedule(cur_nimg, batch_size, ref_lr=100e-4, ref_batches=70e3, rampup_Mimg=10):
    """EDM2: linear warm-up over `rampup_Mimg` million images, constant until `ref_batches`
    batches, then inverse square root decay."""
    lr = ref_lr
    if ref_batches > 0:
        lr /= np.sqrt(max(cur_nimg / (ref_batches * batch_size), 1))
    if rampup_Mimg > 0:
        lr *= min(cur_nimg / (rampup_Mimg * 1e6), 1)
    return lr

def multisource_lr_schedule(cur_nimg, batch_size, ref_lr=100e-4, ref_batches=70e3, rampup_Mimg=10):
    """The multi-source study's variant: ref_lr until decay*batch images t_ref, then
    ref_lr / sqrt(4 t / t_ref) (a step down by half at t_ref, then inverse square root)."""
    lr = ref_lr
    t_ref = ref_batches * batch_size
    if ref_batches > 0 and cur_nimg >= t_ref:
        lr /= np.sqrt(4 * cur_nimg / t_ref)
    if rampup_Mimg > 0:
        lr *= min(cur_nimg / (rampup_Mimg * 1e6), 1)
    return lr

def constant_lr(cur_nimg, batch_size, ref_lr=1e-4, rampup_Mimg=0):
    """Linear warm-up over `rampup_Mimg` million images, then constant (ARDM, MAR)."""
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
# warning. The two newest are kept.

_STATE_RE = re.compile(r'training-state-(\d+)\.pt$')

def list_checkpoints(run_dir):
    files = [f for f in glob.glob(os.path.join(run_dir, 'training-state-*.pt')) if _STATE_RE.search(f)]
    return sorted(files, key=lambda f: int(_STATE_RE.search(f).group(1)))

def save_checkpoint(run_dir, state, keep=2):
    path = os.path.join(run_dir, f'training-state-{state["state"]["cur_nimg"] // 1000:07d}.pt')
    with util.atomic_path(path) as tmp:
        torch.save(state, tmp)
    for old in list_checkpoints(run_dir)[:-keep]:
        if os.path.abspath(old) != os.path.abspath(path):
            os.remove(old)
    return path

def load_latest_checkpoint(run_dir):
    """(path, state) of the newest checkpoint that loads, or (None, None)."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return path, torch.load(path, map_location='cpu', weights_only=True)
        except Exception as e: # pylint: disable=broad-except
            reason = str(e).strip().splitlines()[0] if str(e).strip() else ''
            warnings.warn(f'Cannot load {path} ({type(e).__name__}: {reason}); falling back to the previous training state')
            dist.print0(f'WARNING: cannot load {os.path.basename(path)}; trying the previous training state')
    return None, None

#----------------------------------------------------------------------------
# Pre-emption: SIGTERM/SIGINT set a flag; the loop saves a training state at the next step
# boundary (every rank agrees via an all-reduce) and exits with 128 + signal number.

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

    def agreed(self, device):
        """The largest signal number seen by any rank (0 = keep going)."""
        if dist.get_world_size() == 1:
            return self.signum
        flag = torch.tensor([self.signum], dtype=torch.int64, device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item())

#----------------------------------------------------------------------------
# The loss curve PNG, redrawn from stats.jsonl at each status.

def plot_loss_curve(run_dir, stat='Loss/loss'):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
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
# Main training loop.

def training_loop(
    dataset_kwargs      = dict(class_name='training.dataset.ImageFolderDataset', path=None),
    encoder_kwargs      = dict(class_name='training.encoders.StandardRGBEncoder'),
    data_loader_kwargs  = dict(num_workers=2),
    network_kwargs      = dict(class_name='training.networks_edm2.Precond'),
    loss_kwargs         = dict(class_name='training.networks_edm2.EDM2Loss'),
    optimizer_kwargs    = dict(class_name='torch.optim.Adam', betas=(0.9, 0.99)),
    lr_kwargs           = dict(func_name='training.training_loop.learning_rate_schedule'),
    ema_kwargs          = dict(class_name='training.phema.PowerFunctionEMA'),

    run_dir             = '.',      # Output directory.
    seed                = 0,        # Global random seed.
    batch_size          = 2048,     # Total batch size for one training iteration.
    batch_gpu           = None,     # Limit batch size per GPU. None = no limit.
    total_nimg          = 8<<30,    # Train for a total of N training images.
    slice_nimg          = None,     # Train for a maximum of N training images in one invocation. None = no limit.
    status_nimg         = 128<<10,  # Report status every N training images. None = disable.
    snapshot_nimg       = 8<<20,    # Save network snapshot every N training images. None = disable.
    checkpoint_nimg     = 128<<20,  # Save state checkpoint every N training images. None = disable.

    loss_scaling        = 1,        # Loss scaling factor for reducing FP16 under/overflows.
    force_finite        = True,     # Replace NaN/Inf gradients with zeros.
    grad_clip           = 0,        # Clip the global gradient norm to this value (0 = off).
    cudnn_benchmark     = True,     # Enable torch.backends.cudnn.benchmark?
    device              = None,     # Default: torch_utils.distributed.get_device().
):
    # Initialize.
    device = torch.device(device) if device is not None else dist.get_device()
    start_time = time.time()
    misc.set_seed(seed + dist.get_rank())
    torch.backends.cudnn.benchmark = cudnn_benchmark
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False

    if dist.get_rank() == 0:
        os.makedirs(run_dir, exist_ok=True)

    # Validate batch size.
    world_size = dist.get_world_size()
    batch_gpu_total = batch_size // world_size
    if batch_gpu is None or batch_gpu > batch_gpu_total:
        batch_gpu = batch_gpu_total
    num_accumulation_rounds = batch_gpu_total // batch_gpu
    if batch_size != batch_gpu * num_accumulation_rounds * world_size:
        raise ValueError(f'batch size {batch_size} is not divisible by {world_size} processes x batch_gpu {batch_gpu}')
    for name, value in [('total_nimg', total_nimg), ('slice_nimg', slice_nimg), ('status_nimg', status_nimg),
            ('snapshot_nimg', snapshot_nimg), ('checkpoint_nimg', checkpoint_nimg)]:
        if value is not None and value % batch_size != 0:
            raise ValueError(f'{name} = {value} is not a multiple of the batch size {batch_size}')

    # Dataset, encoder and network. The network's shape is the encoder's output shape.
    dist.print0('Loading dataset...')
    dataset_obj = util.construct_class_by_name(**dataset_kwargs)
    ref_image, ref_label = dataset_obj[0]
    dist.print0('Setting up encoder...')
    encoder = util.construct_class_by_name(**encoder_kwargs)
    encoder.init(device)
    ref_image = encoder.encode_latents(torch.as_tensor(ref_image).to(device).unsqueeze(0))
    dist.print0('Constructing network...')
    interface_kwargs = dict(img_resolution=ref_image.shape[-1], img_channels=ref_image.shape[1], label_dim=ref_label.shape[-1])
    net = util.construct_class_by_name(**network_kwargs, **interface_kwargs)
    net.train().requires_grad_(True).to(device)
    dist.print0(f'Network: {type(net).__name__}, {sum(p.numel() for p in net.parameters()):,} parameters, '
        f'input {list(ref_image.shape[1:])}, {interface_kwargs["label_dim"]} classes')

    # Training state.
    state = util.EasyDict(cur_nimg=0, total_elapsed_time=0.0)
    ddp = net
    if world_size > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == 'cuda' else None, broadcast_buffers=False)
    loss_fn = util.construct_class_by_name(**loss_kwargs)
    optimizer_kwargs = dict(optimizer_kwargs)
    groups = param_groups(net, optimizer_kwargs.pop('weight_decay', 0))
    optimizer = util.construct_class_by_name(groups, **optimizer_kwargs)
    ema = util.construct_class_by_name(net=net, **ema_kwargs) if ema_kwargs is not None else None

    # Resume from the newest complete training state.
    ckpt_path, ckpt = load_latest_checkpoint(run_dir)
    if ckpt is not None:
        dist.print0(f'Resuming from {os.path.basename(ckpt_path)}')
        state.update(ckpt['state'])
        net.load_state_dict(ckpt['net'])
        optimizer.load_state_dict(ckpt['optimizer'])
        if ema is not None:
            ema.load_state_dict(ckpt['ema'])
        rng = ckpt['rng']
        if len(rng) == world_size:
            misc.set_rng_state(rng[dist.get_rank()])
        else:
            dist.print0(f'WARNING: the checkpoint was written by {len(rng)} processes, not {world_size}; '
                'continuing with fresh random streams (not bit-identical to an uninterrupted run)')
        del ckpt
    stop_at_nimg = total_nimg
    if slice_nimg is not None:
        stop_at_nimg = min(stop_at_nimg, state.cur_nimg + slice_nimg)
    dist.print0(f'Training from {state.cur_nimg // 1000} kimg to {stop_at_nimg // 1000} kimg:')
    dist.print0()

    # Data: an infinite, resumable stream split across ranks.
    sampler = misc.InfiniteSampler(dataset=dataset_obj, rank=dist.get_rank(), num_replicas=world_size, seed=seed,
        start_idx=state.cur_nimg // world_size)
    loader_kwargs = dict(data_loader_kwargs)
    if loader_kwargs.get('num_workers', 0) == 0:
        loader_kwargs.pop('prefetch_factor', None)
    loader_kwargs.setdefault('pin_memory', device.type == 'cuda')
    # Its own generator: creating the iterator must not draw from the global RNG (exact resumption).
    loader = torch.utils.data.DataLoader(dataset=dataset_obj, sampler=sampler, batch_size=batch_gpu,
        generator=torch.Generator().manual_seed(seed), **loader_kwargs)
    dataset_iterator = iter(loader)

    # Main loop.
    stop = _StopRequest()
    stop.install()
    start_nimg = state.cur_nimg
    prev_status_time = time.time()
    prev_status_nimg = state.cur_nimg
    cumulative_training_time = 0.0
    loss_acc = torch.zeros([2], dtype=torch.float64, device=device) # Sum and count of this rank's losses since the last status.
    stats_jsonl = None
    try:
        while True:
            done = (state.cur_nimg >= stop_at_nimg)
            signum = stop.agreed(device)
            fresh = (state.cur_nimg != start_nimg or start_nimg == 0)

            # Report status.
            if status_nimg is not None and (done or signum or state.cur_nimg % status_nimg == 0) and fresh:
                cur_time = time.time()
                state.total_elapsed_time += cur_time - prev_status_time
                tick_nimg = max(state.cur_nimg - prev_status_nimg, 1)
                sec_per_kimg = cumulative_training_time / tick_nimg * 1e3 if state.cur_nimg > prev_status_nimg else float('nan')
                eta = (stop_at_nimg - state.cur_nimg) / 1e3 * sec_per_kimg if np.isfinite(sec_per_kimg) else float('nan')
                cpu_mem = psutil.Process(os.getpid()).memory_info().rss / 2**30
                gpu_mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == 'cuda' else 0.0
                fields = []
                fields += [f'kimg {training_stats.report0("Progress/kimg", state.cur_nimg / 1e3):<9.1f}']
                fields += [f'time {util.format_time(training_stats.report0("Timing/total_sec", state.total_elapsed_time)):<12s}']
                if np.isfinite(sec_per_kimg): # NaN would poison the cumulative statistic.
                    training_stats.report0('Timing/sec_per_kimg', sec_per_kimg)
                fields += [f'sec/kimg {sec_per_kimg:<8.3f}']
                fields += [f'eta {util.format_time(eta) if np.isfinite(eta) else "-":<10s}']
                fields += [f'loss {float(loss_acc[0] / loss_acc[1]) if loss_acc[1] > 0 else float("nan"):<9.4f}']
                fields += [f'cpumem {training_stats.report0("Resources/cpu_mem_gb", cpu_mem):<5.2f}']
                if device.type == 'cuda':
                    fields += [f'gpumem {training_stats.report0("Resources/peak_gpu_mem_gb", gpu_mem):<6.2f}']
                    torch.cuda.reset_peak_memory_stats()
                dist.print0(' '.join(fields), flush=True)

                # Flush training stats.
                training_stats.default_collector.update()
                if dist.get_rank() == 0:
                    if stats_jsonl is None:
                        stats_jsonl = open(os.path.join(run_dir, 'stats.jsonl'), 'at')
                    fmt = {'Progress/kimg': '%.3f', 'Timing/total_sec': '%.1f'}
                    items = [(name, value['mean']) for name, value in training_stats.default_collector.as_dict().items()]
                    items = [f'"{name}": ' + (fmt.get(name, '%g') % value if np.isfinite(value) else 'NaN') for name, value in items]
                    stats_jsonl.write('{' + ', '.join(items) + f', "timestamp": {time.time():.3f}' + '}\n')
                    stats_jsonl.flush()
                    plot_loss_curve(run_dir)
                prev_status_time = time.time()
                prev_status_nimg = state.cur_nimg
                cumulative_training_time = 0.0
                loss_acc.zero_()

            # Save network snapshots, one per EMA profile.
            if snapshot_nimg is not None and state.cur_nimg % snapshot_nimg == 0 and fresh and dist.get_rank() == 0:
                ema_list = ema.get() if ema is not None else [(net, '')]
                for ema_net, ema_suffix in ema_list:
                    data = util.EasyDict(encoder=encoder, dataset_kwargs=dataset_kwargs, loss_fn=loss_fn)
                    data.ema = copy.deepcopy(ema_net).cpu().eval().requires_grad_(False)
                    fname = f'network-snapshot-{state.cur_nimg // 1000:07d}{ema_suffix}.pkl'
                    dist.print0(f'Saving {fname} ... ', end='', flush=True)
                    with util.atomic_path(os.path.join(run_dir, fname)) as tmp:
                        with open(tmp, 'wb') as f:
                            pickle.dump(data, f)
                    dist.print0('done')
                    del data

            # Save a training state: at the interval, at the end, and when asked to stop.
            if (checkpoint_nimg is not None and (done or state.cur_nimg % checkpoint_nimg == 0) and state.cur_nimg != start_nimg) or signum:
                rng = [misc.get_rng_state()]
                if world_size > 1:
                    rng = [None] * world_size
                    torch.distributed.all_gather_object(rng, misc.get_rng_state())
                if dist.get_rank() == 0:
                    path = save_checkpoint(run_dir, dict(state=dict(state), net=net.state_dict(), optimizer=optimizer.state_dict(),
                        ema=ema.state_dict() if ema is not None else None, rng=rng))
                    dist.print0(f'Saved {os.path.basename(path)}')
                dist.barrier()

            if signum:
                dist.print0(f'Stopping on signal {signal.Signals(signum).name} at {state.cur_nimg // 1000} kimg; '
                    're-run the same command to resume.', flush=True)
                raise SystemExit(128 + signum)
            if done:
                break

            # Evaluate loss and accumulate gradients.
            batch_start_time = time.time()
            optimizer.zero_grad(set_to_none=True)
            for round_idx in range(num_accumulation_rounds):
                with misc.ddp_sync(ddp, (round_idx == num_accumulation_rounds - 1)):
                    images, labels = next(dataset_iterator)
                    images = encoder.encode_latents(images.to(device))
                    loss = loss_fn(net=ddp, images=images, labels=labels.to(device))
                    training_stats.report('Loss/loss', loss)
                    loss_acc += torch.stack([loss.detach().sum().double(), torch.tensor(loss.numel(), dtype=torch.float64, device=device)])
                    loss.sum().mul(loss_scaling / batch_gpu_total).backward()

            # Run optimizer and update weights.
            lr = float(util.call_func_by_name(cur_nimg=state.cur_nimg, batch_size=batch_size, **lr_kwargs))
            training_stats.report('Loss/learning_rate', lr)
            for group in optimizer.param_groups:
                group['lr'] = lr
            if force_finite:
                for param in net.parameters():
                    if param.grad is not None:
                        torch.nan_to_num(param.grad, nan=0, posinf=0, neginf=0, out=param.grad)
            if grad_clip:
                grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
                training_stats.report('Loss/grad_norm', grad_norm)
            optimizer.step()

            # Update EMA and training state.
            state.cur_nimg += batch_size
            if ema is not None:
                ema.update(cur_nimg=state.cur_nimg, batch_size=batch_size)
            cumulative_training_time += time.time() - batch_start_time
    finally:
        stop.uninstall()
        if stats_jsonl is not None:
            stats_jsonl.close()
    dist.print0(f'Done in {util.format_time(time.time() - start_time)}.')

#----------------------------------------------------------------------------
