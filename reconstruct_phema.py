"""Post-hoc EMA: build the snapshot of any power-function EMA profile after training.

Training with PowerFunctionEMA saves one snapshot per profile (e.g. std 0.050 and 0.100) at
every snapshot interval. Each saved average is a known linear functional of the weight
trajectory, so a new profile (std, time) is the least-squares combination of the saved ones
(training/phema.py, solve_posthoc_coefficients). This script streams over the input snapshots,
accumulates their weighted parameters, and writes `{outprefix}-{kimg:07d}-{std:.3f}.pkl` (the
same format as the training snapshots) for every --outstd. The command lines of the official
EDM2 reconstruct_phema.py work unchanged and give the same networks, bit for bit:

    python reconstruct_phema.py --indir=raw-snapshots/edm2-img512-xs --outdir=out --outstd=0.150
    python reconstruct_phema.py --indir=raw-snapshots/edm2-img512-xs \\
        --outdir=out --outstd=0.010,0.015,...,0.250 --batch=8
    python reconstruct_phema.py --indir=training-runs/00000-edm2-digits --outdir=phema --outstd=0.02:0.20:0.01 --outkimg=128
"""

import copy
import os
import pickle
import re

import click
import numpy as np
import torch
import tqdm

from torch_utils import persistence
from torch_utils import util
from training import phema

SNAPSHOT_RE = re.compile(r'(.*)-(\d+)-(\d+\.\d+)\.pkl') # {prefix}-{kimg}-{std}.pkl, as the official code reads them.
MAX_STD = float(np.sqrt(1 / 12)) # A profile wider than the uniform average does not exist.

#----------------------------------------------------------------------------
# Input snapshots: a run directory (network-snapshot-*) or the official raw snapshots
# (edm2-img512-xs-KKKKKKK-S.SSS.pkl), one training run per directory.

def kimg_to_nimg(kimg):
    """The training time in images of a snapshot named by its kimg. Snapshots are saved at
    multiples of 1024 images (EDM2's intervals, and ours in Ki/Mi): the one multiple of 1024 in
    [kimg * 1000, kimg * 1000 + 999], as the official code deduces it. Where there is none (a run
    with other intervals), kimg * 1000."""
    nimg = (kimg * 1000 + 999) // 1024 * 1024
    return nimg if nimg // 1000 == kimg else kimg * 1000

def list_snapshots(indir, prefix=None, stds=None):
    """[EasyDict(path, prefix, kimg, nimg, std)] of the snapshots in `indir`, sorted by time and
    std; `prefix` and `stds` (None = any) filter them. Every prefix found must be the same one:
    a directory that also holds, say, phema outputs needs --inprefix."""
    if not os.path.isdir(indir):
        raise NotADirectoryError(f'--indir {indir} is not a folder')
    found = []
    for name in sorted(os.listdir(indir)):
        m = SNAPSHOT_RE.fullmatch(name)
        if m and os.path.isfile(os.path.join(indir, name)) and (prefix is None or m.group(1) == prefix):
            kimg, std = int(m.group(2)), float(m.group(3))
            if stds is None or any(np.isclose(std, s, rtol=0, atol=5e-4) for s in stds):
                found.append(util.EasyDict(path=os.path.join(indir, name), prefix=m.group(1), kimg=kimg, nimg=kimg_to_nimg(kimg), std=std))
    prefixes = sorted({s.prefix for s in found})
    if len(prefixes) > 1:
        raise ValueError(f'--indir {indir} holds snapshots of {len(prefixes)} names ({", ".join(p + "-*.pkl" for p in prefixes)}); '
            'choose one with --inprefix')
    return sorted(found, key=lambda s: (s.nimg, s.std))

def load_snapshot_dict(path):
    try:
        with open(path, 'rb') as f:
            data = persistence.load_pickle(f)
    except Exception as e:
        raise ValueError(f'{path}: cannot read the snapshot ({type(e).__name__}: {e})') from None
    if not isinstance(data, dict) or not isinstance(data.get('ema'), torch.nn.Module):
        raise ValueError(f'{path}: not a network snapshot (no "ema" network)')
    return data

#----------------------------------------------------------------------------
# Reconstruction, in the official order of operations: the coefficients of one batch of output
# stds, then one pass over the inputs (oldest first) adding each input's float32 parameters
# times its coefficient into every output, whose structure is a copy of the first input and
# whose buffers are the last input's.

def reconstruct_phema(snapshots, out_std, out_nimg, verbose=True):
    """Yield (std, snapshot dict) for the stds of one batch at time out_nimg (images) from
    `snapshots` (list_snapshots), reading each input once. The networks keep the inputs'
    precision: float16 for official snapshots (the official code casts every output to float16),
    float32 for ours (the same float32 sums the official code computes before that cast)."""
    coefs = phema.solve_posthoc_coefficients(in_t=[s.nimg for s in snapshots], in_std=[s.std for s in snapshots],
        out_t=[out_nimg] * len(out_std), out_std=out_std)
    outputs, dtype, first_run = None, None, None
    for i, snapshot in enumerate(tqdm.tqdm(snapshots, desc='Reading snapshots', disable=not verbose)):
        data = load_snapshot_dict(snapshot.path)
        first_run = first_run or (snapshot.path, data.get('run_id'))
        if data.get('run_id') != first_run[1]:
            raise ValueError(f'{snapshot.path} and {first_run[0]} come from different training runs '
                f'(run ids {data.get("run_id")} and {first_run[1]}); keep one run per directory')
        dtype = dtype or next(data['ema'].parameters()).dtype
        net = data['ema'].to(torch.float32)
        with torch.no_grad():
            if outputs is None:
                outputs = [copy.deepcopy(data) for _ in out_std]
                for out in outputs:
                    for param in out['ema'].parameters():
                        param.zero_()
            for j, out in enumerate(outputs):
                if [p.shape for p in out['ema'].parameters()] != [p.shape for p in net.parameters()]:
                    raise ValueError(f'{snapshot.path}: the network differs from the one in {snapshots[0].path}')
                for p_out, p_in in zip(out['ema'].parameters(), net.parameters()):
                    p_out += p_in * coefs[i, j]
                for b_out, b_in in zip(out['ema'].buffers(), net.buffers()):
                    b_out.copy_(b_in)
        del data, net
    for std, out in zip(out_std, outputs):
        out['ema'].to(dtype)
        yield std, util.plain_containers(out)

#----------------------------------------------------------------------------

def parse_stds(ctx, param, value):
    """A list of stds as the official tool writes it ('0.010,0.015,...,0.250'), or with ranges
    start:stop:step; sorted, without repeats."""
    if value is None:
        return None
    try:
        stds = util.parse_float_list(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    bad = [s for s in stds if not 0 < s < MAX_STD]
    if not stds or bad:
        raise click.BadParameter(f'every std must be in (0, {MAX_STD:.3f}); got {value}')
    return sorted(set(stds))

@click.command()
@click.option('--indir',    help='Directory of the input snapshots (a run directory, or official raw snapshots)', metavar='DIR', type=str, required=True)
@click.option('--inprefix', help='Only inputs named PREFIX-KKKKKKK-S.SSS.pkl  [default: the one prefix found]', metavar='STR', type=str, default=None)
@click.option('--instd',    help='Only inputs of these EMA stds  [default: all]', metavar='LIST', type=str, default=None, callback=parse_stds)
@click.option('--outdir',   help='Where to write the reconstructed snapshots', metavar='DIR', type=str, required=True)
@click.option('--outprefix', help='Output file name prefix', metavar='STR', type=str, default='phema', show_default=True)
@click.option('--outstd',   help='Relative stds: a list, with "..." (0.010,0.015,...,0.250) or start:stop:step ranges', metavar='LIST', type=str, required=True, callback=parse_stds)
@click.option('--outkimg',  help='Training time of the output: one of the inputs\'  [default: the newest]', metavar='KIMG', type=click.IntRange(min=1), default=None)
@click.option('--batch',    'batch_size', help='Profiles reconstructed per pass over the inputs', metavar='INT', type=click.IntRange(min=1), default=8, show_default=True)
@click.option('--skip',     help='Skip outputs that already exist', is_flag=True)
@click.option('--overwrite', help='Replace outputs that already exist', is_flag=True)
@util.one_line_errors
def main(indir, inprefix, instd, outdir, outprefix, outstd, outkimg, batch_size, skip, overwrite):
    """Reconstruct post-hoc EMA profiles from the snapshots of a training run.

    Accepts the official EDM2 command lines and gives the same networks (bit for bit for official
    float16 snapshots; for this project's float32 snapshots the outputs stay float32 and round
    to the official float16 files exactly). An existing output is refused unless --overwrite
    (replace) or --skip (keep it, as the official --skip does)."""
    if os.environ.get('WORLD_SIZE', '1') != '1':
        raise ValueError('reconstruct_phema.py runs as one process; start it with python, not torchrun')
    if skip and overwrite:
        raise ValueError('--skip keeps existing outputs and --overwrite replaces them; give one of them')
    snapshots = list_snapshots(indir, inprefix, instd)
    name = f'{inprefix or "PREFIX"}-KKKKKKK-S.SSS.pkl' + (f' of std {", ".join(f"{s:.3f}" for s in instd)}' if instd else '')
    if not [s for s in snapshots if s.kimg > 0]:
        raise ValueError(f'--indir {indir}: no snapshots named {name} after kimg 0')
    in_stds = sorted({s.std for s in snapshots})
    if len(in_stds) < 2:
        raise ValueError(f'{indir}: post-hoc EMA needs snapshots of at least two EMA profiles, found only std {in_stds[0]:.3f}')
    times = sorted({s.kimg for s in snapshots if s.kimg > 0})
    outkimg = outkimg if outkimg is not None else times[-1]
    if outkimg not in times:
        raise ValueError(f'--outkimg {outkimg}: the output time must be that of an input snapshot; they are at {", ".join(map(str, times))} kimg')
    # The initial weights (kimg 0) get weight zero in every profile, and the fit stops at the output time.
    snapshots = [s for s in snapshots if 0 < s.kimg <= outkimg]

    paths = {}
    for std in outstd:
        path = os.path.join(outdir, f'{outprefix}-{outkimg:07d}-{std:.3f}.pkl')
        clash = [s for s, p in paths.items() if p == path]
        if clash:
            raise ValueError(f'--outstd {clash[0]:g} and {std:g} give the same file name {os.path.basename(path)} (names '
                'keep three decimals); give stds that differ in the first three decimals')
        paths[std] = path
    if skip:
        paths = {std: path for std, path in paths.items() if not os.path.exists(path)}
    for path in paths.values():
        util.check_new_output(path, '--outdir', overwrite=overwrite)
    out_nimg = kimg_to_nimg(outkimg)
    batches = np.array_split(list(paths), (len(paths) - 1) // batch_size + 1) if paths else []
    print(f'{len(snapshots)} snapshots (stds {", ".join(f"{s:.3f}" for s in in_stds)}, {snapshots[0].kimg} to {outkimg} kimg) '
        f'-> {len(paths)} profiles at {outkimg} kimg in {len(batches)} pass(es) over the inputs'
        + (f'; {len(outstd) - len(paths)} exist(s) already (--skip)' if skip else ''))
    for batch in batches:
        for std, data in reconstruct_phema(snapshots, out_std=[float(s) for s in batch], out_nimg=out_nimg):
            with util.atomic_path(paths[std]) as tmp:
                with open(tmp, 'wb') as f:
                    pickle.dump(data, f)
            print(f'Saved {paths[std]}')

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter

#----------------------------------------------------------------------------
