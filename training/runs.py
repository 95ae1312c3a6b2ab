"""A run directory belongs to one run. training_options.json, written when the run starts,
records the preset, the options and a run id; snapshots and training states carry the same id.
Starting train_edm2.py in a directory either starts a new run (the directory is new or holds
none of a run's files), resumes the run recorded there (same preset, a training state to resume
from), or is refused with the choices: another --outdir, or --restart, which moves the earlier
run's files into a subfolder and starts afresh. Nothing of two runs is ever mixed.
"""

import glob
import json
import os
import shutil
import time
import uuid

from torch_utils import util
from training import presets

OPTIONS_FILE = 'training_options.json'
RUN_FILES = [OPTIONS_FILE, 'log.txt', 'stats.jsonl', 'loss.png'] # Plus the patterns below.
RUN_PATTERNS = ['network-snapshot-*.pkl', 'training-state-*.pt']

def run_files(run_dir):
    """The files of a run that `run_dir` holds (sorted names)."""
    found = [name for name in RUN_FILES if os.path.exists(os.path.join(run_dir, name))]
    for pattern in RUN_PATTERNS:
        found += [os.path.basename(path) for path in glob.glob(os.path.join(glob.escape(run_dir), pattern))]
    return sorted(found)

def read_options(run_dir):
    path = os.path.join(run_dir, OPTIONS_FILE)
    try:
        with open(path, 'rt') as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f'--outdir {run_dir}: cannot read {OPTIONS_FILE} ({e}); use another --outdir or --restart') from e

def check(run_dir, preset, restart=False):
    """What starting `preset` in `run_dir` will do: 'new', 'resume' or 'restart' (move the
    earlier run aside). Raises ValueError/OSError naming the choices when it may do none of them.
    Reads only, so that every rank can call it and all reach the same decision."""
    util.check_writable(os.path.join(run_dir, OPTIONS_FILE), '--outdir')
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise NotADirectoryError(f'--outdir {run_dir} is a file, not a folder')
    files = run_files(run_dir) if os.path.isdir(run_dir) else []
    if not files:
        return 'new'
    if restart:
        return 'restart'
    choices = f'choose another --outdir, or pass --restart to move its files into {run_dir}/previous-<time>/ and start over'
    if OPTIONS_FILE not in files:
        raise ValueError(f'--outdir {run_dir} holds files of a training run ({", ".join(files[:3])}...) but no {OPTIONS_FILE}; {choices}')
    if is_official_run(read_options(run_dir)):
        if presets.resolve(preset).family != 'edm2':
            raise ValueError(f'--outdir {run_dir} holds a run of the official EDM2 code; preset "{preset}" is not an EDM2 preset; {choices}')
        if not any(name.startswith('training-state-') for name in files):
            raise ValueError(f'--outdir {run_dir} holds a run of the official EDM2 code but no training state to resume it from; {choices}')
        return 'resume'
    recorded = read_options(run_dir).get('preset')
    if recorded != preset:
        raise ValueError(f'--outdir {run_dir} belongs to a run of preset "{recorded}", not "{preset}"; {choices}')
    outputs = [name for name in files if name not in [OPTIONS_FILE, 'log.txt']]
    if outputs and not any(name.startswith('training-state-') for name in files):
        raise ValueError(f'--outdir {run_dir} holds outputs of a run ({", ".join(outputs[:3])}) but no training state to '
            f'resume it from; starting again would mix two runs; {choices}')
    return 'resume'

def prepare(run_dir, preset, record, action):
    """Carry out check()'s decision (rank 0 only): create the directory and its options record
    with a new run id, or move an earlier run aside first, or keep the run being resumed (saying
    which options changed). Returns the run id."""
    if action == 'restart':
        aside = os.path.join(run_dir, f'previous-{time.strftime("%Y%m%d-%H%M%S")}')
        os.makedirs(aside)
        for name in run_files(run_dir):
            shutil.move(os.path.join(run_dir, name), os.path.join(aside, name))
        print(f'Moved the earlier run into {aside}')
    if action == 'resume':
        previous = read_options(run_dir)
        if is_official_run(previous):
            changed = [f'{name} {theirs} -> {ours}' for name, theirs, ours in official_differences(previous, record['config'])]
        else:
            changed = sorted(k for k in set(previous.get('options', {})) | set(record['options'])
                if previous.get('options', {}).get(k) != record['options'].get(k))
        if changed:
            print(f'Note: resuming in {run_dir} with changed options: {", ".join(changed)}')
        return previous.get('run_id')
    os.makedirs(run_dir, exist_ok=True)
    record = dict(preset=preset, run_id=uuid.uuid4().hex, **record)
    with util.atomic_path(os.path.join(run_dir, OPTIONS_FILE)) as tmp:
        with open(tmp, 'wt') as f:
            json.dump(record, f, indent=2)
    return record['run_id']

def run_id_of(run_dir):
    """The run id recorded in run_dir (None for a run of an earlier version of this code)."""
    return read_options(run_dir).get('run_id')

#----------------------------------------------------------------------------
# A run directory of the official EDM2 train_edm2.py: its training_options.json holds the
# arguments of its training loop (no preset, no run id). The same command resumes it here.

def is_official_run(recorded):
    return 'preset' not in recorded and recorded.get('network_kwargs', {}).get('class_name') == 'training.networks_edm2.Precond'

# Where the official arguments and ours keep the same setting, with the official default where
# its record leaves it out.
_OFFICIAL_SETTINGS = [
    ('channels', 'network_kwargs', 'model_channels', None), ('channel_mult', 'network_kwargs', 'channel_mult', [1, 2, 3, 4]),
    ('num_blocks', 'network_kwargs', 'num_blocks', 3), ('attn_resolutions', 'network_kwargs', 'attn_resolutions', [16, 8]),
    ('dropout', 'network_kwargs', 'dropout', 0.0), ('P_mean', 'loss_kwargs', 'P_mean', -0.4), ('P_std', 'loss_kwargs', 'P_std', 1.0),
    ('lr', 'lr_kwargs', 'ref_lr', None), ('decay', 'lr_kwargs', 'ref_batches', None), ('batch', None, 'batch_size', None),
    ('duration', None, 'total_nimg', None), ('cond', 'dataset_kwargs', 'use_labels', True), ('data', 'dataset_kwargs', 'path', None),
]

def official_differences(recorded, config):
    """[(option, the official run's value, this command's)] where they differ."""
    found = []
    for option, section, key, default in _OFFICIAL_SETTINGS:
        theirs = (recorded.get(section) or {}) if section else recorded
        ours = (config.get(section) or {}) if section else config
        if theirs.get(key, default) != ours.get(key):
            found.append((option, theirs.get(key, default), ours.get(key)))
    return found
