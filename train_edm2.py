"""Train a class-conditional generative model from a named preset (EDM2, ARDM, MAR; see
training/presets.py). The same command runs on a laptop CPU and, under torchrun, on many GPUs:

    python train_edm2.py --preset edm2-digits --data datasets/digits-train.zip --outdir runs/digits
    torchrun --standalone --nproc_per_node=8 train_edm2.py --preset edm2-img512-xs --data ... --outdir ...

Re-running the same command resumes from the newest training state in --outdir."""

import contextlib
import functools
import json
import os

import click

from torch_utils import distributed as dist
from torch_utils import util
from training import config
from training import presets
from training import runs
from training import training_loop

#----------------------------------------------------------------------------

def combine_cond(cond, uncond):
    """--cond[=BOOL] (EDM2's and the multi-source code's spelling) and --uncond: None = the
    preset's choice; both given must agree."""
    if not uncond:
        return cond
    if cond:
        raise ValueError('--cond=True and --uncond contradict each other; give one of them')
    return False

#----------------------------------------------------------------------------

@click.command(context_settings=dict(show_default=True))
@click.option('--outdir',       help='Run directory (created; re-running resumes in it)', metavar='DIR', type=str, required=True)
@click.option('--data',         help='Dataset ZIP or folder (dataset_tool.py)', metavar='ZIP|DIR', type=str, required=True)
@click.option('--preset',       help='Configuration preset (training/presets.py)', metavar='NAME', type=str, default='edm2-img512-s')
@click.option('--cond',         help='Class-conditional training (--cond alone, or =True/False as in EDM2)', metavar='[BOOL]', type=bool, is_flag=False, flag_value=True, default=None)
@click.option('--uncond',       help='Unconditional training (same as --cond=False)', is_flag=True, default=False)
@click.option('--duration',     help='Training duration (images; Ki/Mi/Gi)', metavar='NIMG', type=str, default=None)
@click.option('--batch',        help='Total batch size', metavar='NIMG', type=str, default=None)
@click.option('--batch-gpu',    help='Limit batch size per GPU/process (gradient accumulation)', metavar='NIMG', type=str, default=None)
@click.option('--lr',           help='Reference learning rate', metavar='FLOAT', type=float, default=None)
@click.option('--decay',        help='Learning rate decay (batches)', metavar='BATCHES', type=int, default=None)
@click.option('--lr-schedule',  help='Learning rate schedule (EDM2: edm2, multisource)', metavar='NAME', type=str, default=None)
@click.option('--channels',     help='Channel count', metavar='INT', type=int, default=None)
@click.option('--dropout',      help='Dropout probability', metavar='FLOAT', type=float, default=None)
@click.option('--P_mean', 'P_mean', help='Noise level mean', metavar='FLOAT', type=float, default=None)
@click.option('--P_std', 'P_std', help='Noise level standard deviation', metavar='FLOAT', type=float, default=None)
@click.option('--label-dropout', '--p-uncond', 'label_dropout', help='Label dropout probability (classifier-free guidance)', metavar='FLOAT', type=float, default=None)
@click.option('--mixed-precision', '--fp16', 'mixed_precision', help='Mixed precision on CUDA', metavar='BOOL', type=bool, default=None)
@click.option('--ls',           'loss_scaling', help='Loss scaling (against fp16 under/overflows)', metavar='FLOAT', type=float, default=None)
@click.option('--bench',        'cudnn_benchmark', help='Enable cuDNN benchmarking', metavar='BOOL', type=bool, default=None)
@click.option('--xflip',        help='Random x-flips of the dataset', metavar='BOOL', type=bool, default=None)
@click.option('--cache',        help='Keep the decoded dataset in memory (as EDM2)', metavar='BOOL', type=bool, default=None)
@click.option('--status',       help='Status interval (images)', metavar='NIMG', type=str, default=None)
@click.option('--snapshot',     help='Snapshot interval (images; 0 = off)', metavar='NIMG', type=str, default=None)
@click.option('--checkpoint',   help='Training-state interval (images; 0 = off)', metavar='NIMG', type=str, default=None)
@click.option('--seed',         help='Random seed', metavar='INT', type=int, default=None)
@click.option('--workers',      help='DataLoader workers per process', metavar='INT', type=int, default=None)
@click.option('--slice',        'slice_nimg', help='Stop after this many images in this invocation (then resume)', metavar='NIMG', type=str, default=None)
@click.option('--set',          'set_options', help='Override any preset value, e.g. --set num_blocks=2', metavar='KEY=VALUE', multiple=True)
@click.option('--restart',      help='Move an earlier run in --outdir aside and start over', is_flag=True)
@click.option('-n', '--dry-run', help='Print the resolved configuration and exit', is_flag=True)
@util.one_line_errors
def main(outdir, data, preset, slice_nimg, set_options, restart, dry_run, uncond, **flags):
    """Train a model from a named preset. Every preset value can be overridden: the common ones
    with their flags, any other with --set KEY=VALUE. The flags parse types only: every value is
    checked once, by the library, whether it came from a flag or from --set.

    --outdir belongs to one run: re-running the same command resumes it (a run directory of the
    official EDM2 code too, with an EDM2 preset); a directory holding
    another run (another preset, or outputs without a training state) is refused unless
    --restart moves its files into a subfolder first. One process at a time works in it: a second
    one is refused while the first runs."""
    dist.init()
    flags['cond'] = combine_cond(flags['cond'], uncond)
    overrides = {key: value for key, value in flags.items() if value is not None}
    for text in set_options: # A flag and --set for one option must agree, as in the generators' --opt.
        key, value = util.parse_assignment(text, '--set')
        name = presets.RENAMED.get(key, (key, {}))[0]
        if name in flags and flags[name] is not None and presets.upgrade({key: value})[name] != flags[name]:
            raise ValueError(f'--set {text}: option "{name}" is also given by its flag, with another value ({flags[name]!r})')
        overrides[key] = value
    opts, loop_kwargs = config.build(preset, overrides, data=data, world_size=dist.get_world_size())
    slice_nimg = util.parse_nimg(slice_nimg) if slice_nimg is not None else 0
    if slice_nimg:
        config.check_slice(slice_nimg, loop_kwargs.batch_size)
    data_record = config.describe_data(loop_kwargs.dataset_kwargs)

    dist.print0(f'Preset {preset} ({opts.family}):')
    dist.print0(json.dumps(opts, indent=2))
    dist.print0('Training config:')
    dist.print0(json.dumps(loop_kwargs, indent=2))
    lock = dist.rank0_outcome(runs.lock, outdir, probe=dry_run)
    try:
        action = runs.check(outdir, preset, restart=restart, data=data_record)
        dist.print0(f'Output directory: {outdir} ({ACTIONS[action]})')
        dist.print0(f'Processes: {dist.get_world_size()}, device: {dist.get_device()}')
        if dry_run:
            dist.print0('Dry run; exiting.')
            return
        record = json.loads(json.dumps(dict(options=opts, config=loop_kwargs, data=data_record)))
        run_id = dist.rank0_outcome(runs.prepare, outdir, preset, record, action)
        on_resumed = functools.partial(runs.record_resumption, outdir, record) if action == 'resume' else None
        # A run of the official code keeps every training state; so does this code when it continues one.
        keep = 0 if action == 'resume' and runs.is_official_run(runs.read_options(outdir)) else 2
        train(outdir, dict(loop_kwargs, run_id=run_id, slice_nimg=slice_nimg, on_resumed=on_resumed, keep_checkpoints=keep))
    finally:
        if lock is not None and dist.get_rank() == 0:
            lock.release()

ACTIONS = {'new': 'new run', 'start-again': 'starting again a run that stopped before its first training state',
    'resume': 'resuming', 'restart': 'moving the earlier run aside'}

def train(outdir, loop_kwargs):
    """The training loop with log.txt capturing the console (rank 0), the error that ends it included."""
    logger = util.Logger(file_name=os.path.join(outdir, 'log.txt'), file_mode='a') if dist.get_rank() == 0 else None
    try:
        training_loop.training_loop(run_dir=outdir, **loop_kwargs)
    except (ValueError, OSError) as e:
        if logger is not None and logger.file is not None: # The console gets it from one_line_errors.
            with contextlib.suppress(OSError):
                logger.file.write(f'Error: {util.error_message(e)}\n')
        raise
    finally:
        if logger is not None:
            logger.close()

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter

#----------------------------------------------------------------------------
