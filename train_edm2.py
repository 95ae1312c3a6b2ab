"""Train a class-conditional generative model from a named preset (EDM2, ARDM, MAR; see
training/presets.py). The same command runs on a laptop CPU and, under torchrun, on many GPUs:

    python train_edm2.py --preset edm2-digits --data datasets/digits-train.zip --outdir runs/digits
    torchrun --standalone --nproc_per_node=8 train_edm2.py --preset edm2-img512-xs --data ... --outdir ...

Re-running the same command resumes from the newest training state in --outdir."""

import ast
import json
import os
import re

import click
import torch

from torch_utils import distributed as dist
from torch_utils import util
from training import presets
from training import training_loop

#----------------------------------------------------------------------------
# Command-line options that override preset values (flag name -> preset key). Any other preset
# value is reached with --set KEY=VALUE.

FLAG_TO_KEY = dict(cond='cond', duration='duration', batch='batch', batch_gpu='batch_gpu', lr='lr',
    decay='decay', channels='channels', dropout='dropout', P_mean='P_mean', P_std='P_std',
    p_uncond='p_uncond', fp16='fp16', status='status', snapshot='snapshot', checkpoint='checkpoint',
    seed='seed', workers='workers', xflip='xflip', lr_schedule='lr_schedule')

NIMG_KEYS = ['duration', 'batch', 'batch_gpu', 'status', 'snapshot', 'checkpoint']

def parse_set_option(text):
    """'key=value' with value a Python literal (a bare word stays a string)."""
    match = re.fullmatch(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)', text)
    if not match:
        raise click.BadParameter(f'"{text}" is not KEY=VALUE', param_hint='--set')
    key, raw = match.group(1), match.group(2).strip()
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key, value

def resolve_options(preset_name, flag_values, set_options):
    """The preset's options with the command line's overrides, nimg values parsed."""
    overrides = {FLAG_TO_KEY[flag]: value for flag, value in flag_values.items() if value is not None}
    for text in set_options:
        key, value = parse_set_option(text)
        overrides[key] = value
    try:
        opts = presets.resolve(preset_name, overrides)
    except KeyError:
        raise click.BadParameter(f'unknown preset "{preset_name}"; choose from: {", ".join(sorted(presets.PRESETS))}', param_hint='--preset')
    except ValueError as e:
        raise click.UsageError(str(e))
    for key in NIMG_KEYS:
        try:
            opts[key] = util.parse_nimg(opts[key])
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint=f'--{key.replace("_", "-")}')
    return opts

#----------------------------------------------------------------------------
# Options -> training_loop() arguments.

def default_encoder_kwargs(dataset_obj, opts):
    """EDM2's rule: 8-channel float data are VAE latents (posterior mean and std), anything else
    is pixels."""
    _image, _ = dataset_obj[0]
    if _image.dtype == 'uint8':
        return util.EasyDict(class_name='training.encoders.StandardRGBEncoder')
    if dataset_obj.num_channels == 8:
        return util.EasyDict(class_name='training.encoders.StabilityVAEEncoder', vae_name=opts.get('vae', 'stabilityai/sd-vae-ft-mse'))
    raise click.BadParameter(f'{dataset_obj.num_channels}-channel float data: expected pixels or 8-channel VAE latents', param_hint='--data')

def setup_training_config(opts, data):
    c = util.EasyDict()
    c.dataset_kwargs = util.EasyDict(class_name='training.dataset.ImageFolderDataset', path=data, use_labels=opts.cond, xflip=opts.xflip)
    try:
        dataset_obj = util.construct_class_by_name(**c.dataset_kwargs)
    except Exception as e: # pylint: disable=broad-except
        raise click.BadParameter(f'cannot read dataset {data}: {e}', param_hint='--data')
    if opts.cond and not dataset_obj.has_labels:
        raise click.BadParameter(f'{data} has no labels (dataset.json); train unconditionally with --uncond', param_hint='--data')

    family = presets.build(opts)
    c.encoder_kwargs = family.encoder_kwargs or default_encoder_kwargs(dataset_obj, opts)
    c.network_kwargs = family.network_kwargs
    c.loss_kwargs = family.loss_kwargs
    c.optimizer_kwargs = family.optimizer_kwargs
    c.lr_kwargs = family.lr_kwargs
    c.ema_kwargs = family.ema_kwargs
    c.data_loader_kwargs = util.EasyDict(num_workers=opts.workers)
    c.total_nimg = opts.duration
    c.batch_size = opts.batch
    c.batch_gpu = opts.batch_gpu or None
    c.status_nimg = opts.status or None
    c.snapshot_nimg = opts.snapshot or None
    c.checkpoint_nimg = opts.checkpoint or None
    c.grad_clip = opts.grad_clip
    c.seed = opts.seed
    return c

def validate_batch(c, world_size):
    """Clear errors for inconsistent batch/duration/interval values (Ki/Mi/Gi already parsed)."""
    per_gpu = c.batch_gpu or c.batch_size // world_size
    if c.batch_size % world_size != 0 or c.batch_size % (world_size * per_gpu) != 0:
        raise click.BadParameter(f'batch {c.batch_size} is not divisible by {world_size} processes x batch-gpu {per_gpu}', param_hint='--batch')
    for flag, key in [('duration', 'total_nimg'), ('status', 'status_nimg'), ('snapshot', 'snapshot_nimg'), ('checkpoint', 'checkpoint_nimg')]:
        if c[key] is not None and c[key] % c.batch_size != 0:
            raise click.BadParameter(f'{c[key]} images is not a multiple of the batch size {c.batch_size}', param_hint=f'--{flag}')

#----------------------------------------------------------------------------

@click.command(context_settings=dict(show_default=True))
@click.option('--outdir',       help='Run directory (created; re-running resumes in it)', metavar='DIR', type=str, required=True)
@click.option('--data',         help='Dataset ZIP or folder (dataset_tool.py)', metavar='ZIP|DIR', type=str, required=True)
@click.option('--preset',       help='Configuration preset (training/presets.py)', metavar='NAME', type=str, required=True)
@click.option('--cond/--uncond', help='Class-conditional training', default=None)
@click.option('--duration',     help='Training duration (images; Ki/Mi/Gi)', metavar='NIMG', type=str, default=None)
@click.option('--batch',        help='Total batch size', metavar='NIMG', type=str, default=None)
@click.option('--batch-gpu',    help='Limit batch size per GPU/process (gradient accumulation)', metavar='NIMG', type=str, default=None)
@click.option('--lr',           help='Reference learning rate', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True), default=None)
@click.option('--decay',        help='Learning rate decay (batches)', metavar='BATCHES', type=click.FloatRange(min=0), default=None)
@click.option('--lr-schedule',  help='Learning rate schedule', type=click.Choice(sorted(presets.LR_SCHEDULES)), default=None)
@click.option('--channels',     help='Channel count', metavar='INT', type=click.IntRange(min=1), default=None)
@click.option('--dropout',      help='Dropout probability', metavar='FLOAT', type=click.FloatRange(min=0, max=1), default=None)
@click.option('--P_mean', 'P_mean', help='Noise level mean', metavar='FLOAT', type=float, default=None)
@click.option('--P_std', 'P_std', help='Noise level standard deviation', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True), default=None)
@click.option('--p-uncond',     help='Label dropout probability (classifier-free guidance)', metavar='FLOAT', type=click.FloatRange(min=0, max=1), default=None)
@click.option('--fp16',         help='Mixed precision on CUDA', metavar='BOOL', type=bool, default=None)
@click.option('--xflip',        help='Random x-flips of the dataset', metavar='BOOL', type=bool, default=None)
@click.option('--status',       help='Status interval (images)', metavar='NIMG', type=str, default=None)
@click.option('--snapshot',     help='Snapshot interval (images; 0 = off)', metavar='NIMG', type=str, default=None)
@click.option('--checkpoint',   help='Training-state interval (images; 0 = off)', metavar='NIMG', type=str, default=None)
@click.option('--seed',         help='Random seed', metavar='INT', type=int, default=None)
@click.option('--workers',      help='DataLoader workers per process', metavar='INT', type=click.IntRange(min=0), default=None)
@click.option('--slice',        'slice_nimg', help='Stop after this many images in this invocation (then resume)', metavar='NIMG', type=str, default=None)
@click.option('--set',          'set_options', help='Override any preset value, e.g. --set num_blocks=2', metavar='KEY=VALUE', multiple=True)
@click.option('-n', '--dry-run', help='Print the resolved configuration and exit', is_flag=True)
def main(outdir, data, preset, slice_nimg, set_options, dry_run, **flag_values):
    """Train a model from a named preset. Every preset value can be overridden."""
    dist.init()
    opts = resolve_options(preset, flag_values, set_options)
    c = setup_training_config(opts, data)
    if slice_nimg is not None:
        try:
            c.slice_nimg = util.parse_nimg(slice_nimg)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint='--slice')
    validate_batch(c, dist.get_world_size())

    dist.print0(f'Preset {preset} ({opts.family}):')
    dist.print0(json.dumps(opts, indent=2))
    dist.print0('Training config:')
    dist.print0(json.dumps(c, indent=2))
    dist.print0(f'Output directory: {outdir}')
    dist.print0(f'Processes: {dist.get_world_size()}, device: {dist.get_device()}')
    if dry_run:
        dist.print0('Dry run; exiting.')
        return

    # The run directory: options recorded on creation; a resumed run with changed options says so.
    options_path = os.path.join(outdir, 'training_options.json')
    if dist.get_rank() == 0:
        os.makedirs(outdir, exist_ok=True)
        record = dict(preset=preset, options=opts, config=c)
        if os.path.isfile(options_path):
            with open(options_path, 'rt') as f:
                previous = json.load(f)
            changed = sorted(k for k in set(previous.get('options', {})) | set(opts) if previous.get('options', {}).get(k) != json.loads(json.dumps(opts)).get(k))
            if changed:
                print(f'Note: resuming in {outdir} with changed options: {", ".join(changed)}')
        else:
            with util.atomic_path(options_path) as tmp:
                with open(tmp, 'wt') as f:
                    json.dump(record, f, indent=2)
    dist.barrier()
    logger = util.Logger(file_name=os.path.join(outdir, 'log.txt'), file_mode='a') if dist.get_rank() == 0 else None
    try:
        training_loop.training_loop(run_dir=outdir, **c)
    finally:
        if logger is not None:
            logger.close()

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter

#----------------------------------------------------------------------------
