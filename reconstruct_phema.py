"""Post-hoc EMA: build the snapshot of any power-function EMA profile after training.

Training with PowerFunctionEMA saves one snapshot per profile (e.g. std 0.050 and 0.100) at
every snapshot interval. Each saved average is a known linear functional of the weight
trajectory, so a new profile (std, time) is approximated by the least-squares combination of
the saved ones (training/phema.py, solve_posthoc_coefficients). This script loads the input
snapshots one at a time, accumulates their weighted parameters, and writes
`phema-{kimg:07d}-{std:.3f}.pkl` (same format as the training snapshots) for every --outstd.

    python reconstruct_phema.py --indir=training-runs/00000-edm2-digits --outdir=phema \\
        --outstd=0.03,0.07,0.12
    python reconstruct_phema.py --indir=RUN --outdir=phema --outstd=0.02:0.20:0.01 --outkimg=128
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

SNAPSHOT_RE = re.compile(r'network-snapshot-(\d+)-(\d+\.\d+)\.pkl')
MAX_STD = float(np.sqrt(1 / 12)) # A profile wider than the uniform average does not exist.

#----------------------------------------------------------------------------

def list_snapshots(indir, max_kimg=None):
    """[(path, kimg, std)] of the power-function EMA snapshots in a run directory. The kimg-0
    snapshots (the initial weights, which every profile gives zero weight) are left out: at time
    0 a profile has no width and the fit would divide by it."""
    if not os.path.isdir(indir):
        raise NotADirectoryError(f'--indir {indir} is not a folder')
    found = []
    for name in sorted(os.listdir(indir)):
        m = SNAPSHOT_RE.fullmatch(name)
        if m and int(m.group(1)) > 0 and (max_kimg is None or int(m.group(1)) <= max_kimg):
            found.append((os.path.join(indir, name), int(m.group(1)), float(m.group(2))))
    return found

def load_snapshot_dict(path):
    try:
        with open(path, 'rb') as f:
            data = persistence.load_pickle(f)
    except Exception as e:
        raise ValueError(f'{path}: cannot read the snapshot ({type(e).__name__}: {e})') from None
    if not isinstance(data, dict) or not isinstance(data.get('ema'), torch.nn.Module):
        raise ValueError(f'{path}: not a network snapshot (no "ema" network)')
    return data

def reconstruct_phema(snapshots, out_std, out_kimg, verbose=True):
    """Yield (std, snapshot dict) for each requested std at time out_kimg, from
    `snapshots` = [(path, kimg, std)] holding at least two distinct profiles."""
    in_kimg = np.array([kimg for _path, kimg, _std in snapshots], dtype=np.float64)
    in_std = np.array([std for _path, _kimg, std in snapshots])
    coefs = phema.solve_posthoc_coefficients(in_t=in_kimg, in_std=in_std, out_t=[out_kimg] * len(out_std), out_std=out_std)

    # Accumulate in float64, one input snapshot in memory at a time.
    accum = None
    last = None
    first_run = None
    for i, (path, kimg, _std) in enumerate(tqdm.tqdm(snapshots, desc='Reading snapshots', disable=not verbose)):
        data = load_snapshot_dict(path)
        first_run = first_run or (path, data.get('run_id'))
        if data.get('run_id') != first_run[1]:
            raise ValueError(f'{path} and {first_run[0]} come from different training runs '
                f'(run ids {data.get("run_id")} and {first_run[1]}); keep one run per directory')
        params = [p.detach().to(torch.float64) for p in data['ema'].parameters()]
        if accum is None:
            accum = [[torch.zeros_like(p) for p in params] for _ in out_std]
        elif len(params) != len(accum[0]) or any(p.shape != a.shape for p, a in zip(params, accum[0])):
            raise ValueError(f'{path}: the network differs from the other snapshots')
        for j in range(len(out_std)):
            for a, p in zip(accum[j], params):
                a.add_(p, alpha=float(coefs[i, j]))
        if last is None or kimg >= last[0]:
            last = (kimg, data) # Buffers and everything else come from the newest snapshot.
        del params

    for j, std in enumerate(out_std):
        data = copy.copy(last[1])
        data['ema'] = net = copy.deepcopy(last[1]['ema'])
        with torch.no_grad():
            for p, a in zip(net.parameters(), accum[j]):
                p.copy_(a.to(p.dtype))
        yield std, data

#----------------------------------------------------------------------------

def parse_stds(ctx, param, value):
    try:
        stds = util.parse_float_list(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    bad = [s for s in stds if not 0 < s < MAX_STD]
    if not stds or bad:
        raise click.BadParameter(f'every std must be in (0, {MAX_STD:.3f}); got {value}')
    return stds

@click.command()
@click.option('--indir',    help='Run directory with network-snapshot-*-*.pkl', metavar='DIR', type=str, required=True)
@click.option('--outdir',   help='Where to write phema-*.pkl', metavar='DIR', type=str, required=True)
@click.option('--outstd',   help='Relative stds: list and/or start:stop:step ranges', metavar='LIST', type=str, required=True, callback=parse_stds)
@click.option('--outkimg',  help='Training time of the output  [default: newest snapshot]', metavar='KIMG', type=click.IntRange(min=1), default=None)
@click.option('--overwrite', help='Replace existing phema-*.pkl files of the same names', is_flag=True)
@util.one_line_errors
def main(indir, outdir, outstd, outkimg, overwrite):
    """Reconstruct post-hoc EMA profiles from the snapshots of a training run."""
    snapshots = list_snapshots(indir, max_kimg=outkimg)
    if not snapshots:
        raise ValueError(f'no network-snapshot-KKKKKKK-S.SSS.pkl after kimg 0 in {indir}' + (f' at or before {outkimg} kimg' if outkimg else ''))
    in_stds = sorted({std for _path, _kimg, std in snapshots})
    if len(in_stds) < 2:
        raise ValueError(f'{indir}: post-hoc EMA needs snapshots of at least two EMA profiles, found only std {in_stds[0]:.3f}')
    newest = max(kimg for _path, kimg, _std in snapshots)
    outkimg = outkimg if outkimg is not None else newest
    if outkimg > newest:
        raise ValueError(f'--outkimg {outkimg} is after the newest snapshot ({newest} kimg)')
    paths = {std: os.path.join(outdir, f'phema-{outkimg:07d}-{std:.3f}.pkl') for std in outstd}
    for path in paths.values():
        util.check_new_output(path, '--outdir', overwrite=overwrite)
    print(f'{len(snapshots)} snapshots (stds {", ".join(f"{s:.3f}" for s in in_stds)}, {min(k for _, k, _ in snapshots)} to '
        f'{newest} kimg) -> {len(outstd)} profiles at {outkimg} kimg')
    for std, data in reconstruct_phema(snapshots, out_std=outstd, out_kimg=outkimg):
        path = paths[std]
        with util.atomic_path(path) as tmp:
            with open(tmp, 'wb') as f:
                pickle.dump(data, f)
        print(f'Saved {path}')

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter

#----------------------------------------------------------------------------
