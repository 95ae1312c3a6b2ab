"""A run directory belongs to one run. training_options.json, written when the run starts,
records the preset, the options, the dataset and a run id; snapshots and training states carry
the same id. Starting train_edm2.py in a directory either starts a new run (the directory is new
or holds none of a run's files), starts again a run that stopped before its first training state
(nothing of it worth keeping: its options, a status line and snapshots at kimg 0), resumes the
run recorded there (same preset, same kind of data, a training state to resume from), or is
refused with the choices: another --outdir, or --restart, which moves the earlier run's files
into a subfolder and starts afresh. Nothing of two runs is ever mixed. A run directory of the
official EDM2 code (its training_options.json holds its loop's arguments: no preset, no run id)
is resumed by any EDM2 preset, its options compared with the command's.

While a process works in a run directory it holds its lock (lock(): an flock on `.lock`, which
the operating system drops when the process ends in any way, kill -9 included), so that a second
train_edm2.py on the same --outdir is refused instead of interleaving its files with the first's.
"""

import contextlib
import datetime
import errno
import fcntl
import glob
import json
import os
import re
import shutil
import socket
import time
import uuid

from torch_utils import util
from training import presets

OPTIONS_FILE = 'training_options.json'
LOCK_FILE = '.lock'
RUN_FILES = [OPTIONS_FILE, 'log.txt', 'stats.jsonl', 'loss.png'] # Plus the patterns below.
RUN_PATTERNS = ['network-snapshot-*.pkl', 'training-state-*.pt']
START_SNAPSHOT = re.compile(r'network-snapshot-0000000(-[0-9.]+)?\.pkl') # Written before the first step.

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

def check_place(run_dir):
    util.check_writable(os.path.join(run_dir, OPTIONS_FILE), '--outdir')
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise NotADirectoryError(f'--outdir {run_dir} is a file, not a folder')

#----------------------------------------------------------------------------
# The lock. The lock file is removed by its holder before it lets go, and a process that got the
# lock checks that the file it locked is still the one at the path (the holder may have removed it
# in between): two processes never both hold a lock.

class Lock:
    def __init__(self, run_dir, fd, created):
        self.run_dir, self.fd, self.created = run_dir, fd, created

    def release(self):
        """Only by the process that took the lock (under torchrun: rank 0)."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.remove(os.path.join(self.run_dir, LOCK_FILE))
        os.close(self.fd)
        self.fd = None
        if self.created: # Nothing was started in it: leave no empty folder behind.
            with contextlib.suppress(OSError):
                os.rmdir(self.run_dir)

def lock(run_dir, probe=False):
    """Take the lock of `run_dir` (creating the folder) and return a Lock, or raise ValueError
    naming the process that holds it. probe=True (a dry run) only checks that nobody holds it and
    creates nothing."""
    check_place(run_dir)
    path = os.path.join(run_dir, LOCK_FILE)
    created = not os.path.isdir(run_dir)
    if not probe:
        os.makedirs(run_dir, exist_ok=True)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | (0 if probe else os.O_CREAT), 0o644)
        except FileNotFoundError: # Probing: nobody holds the lock.
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors='replace').strip() or 'unknown process'
            os.close(fd)
            raise ValueError(f'--outdir {run_dir} is in use by another training process ({holder}); wait until it ends, '
                'or choose another --outdir') from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            print(f'WARNING: cannot lock {run_dir} on this file system ({e.strerror}); make sure no other run uses it')
            break
        same = os.fstat(fd).st_ino == os.stat(path).st_ino if os.path.exists(path) else False
        if same:
            break
        os.close(fd) # The holder removed the file as we took it: lock the new one.
    if probe:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f'host {socket.gethostname()}, pid {os.getpid()}, since {time.strftime("%Y-%m-%d %H:%M:%S")}\n'.encode())
    return Lock(run_dir, fd, created)

#----------------------------------------------------------------------------
# Deciding and preparing.

def describe_data(data):
    """How messages name a dataset record (config.describe_data)."""
    channels, height, width = data['shape']
    return f'{data["path"]} ({data["images"]} images of {channels}x{height}x{width}, {data["classes"]} classes)'

def check(run_dir, preset, restart=False, data=None):
    """What starting `preset` in `run_dir` will do: 'new', 'start-again' (a start that stopped
    before its first training state), 'resume' or 'restart' (move the earlier run aside). `data`:
    config.describe_data() of --data. Raises ValueError/OSError naming the choices when it may do
    none of them. Reads only, so that every rank can call it and all reach the same decision."""
    check_place(run_dir)
    files = run_files(run_dir) if os.path.isdir(run_dir) else []
    if not files:
        return 'new'
    if restart:
        return 'restart'
    choices = f'choose another --outdir, or pass --restart to move its files into {run_dir}/previous-<time>/ and start over'
    if OPTIONS_FILE not in files:
        raise ValueError(f'--outdir {run_dir} holds files of a training run ({", ".join(files[:3])}...) but no {OPTIONS_FILE}; {choices}')
    record = read_options(run_dir)
    official = is_official_run(record)
    if official and presets.resolve(preset).family != 'edm2':
        raise ValueError(f'--outdir {run_dir} holds a run of the official EDM2 code; preset "{preset}" is not an EDM2 preset; {choices}')
    if not official and record.get('preset') != preset:
        raise ValueError(f'--outdir {run_dir} belongs to a run of preset "{record.get("preset")}", not "{preset}"; {choices}')
    if not any(name.startswith('training-state-') for name in files):
        if official:
            raise ValueError(f'--outdir {run_dir} holds a run of the official EDM2 code but no training state to resume it from; {choices}')
        if is_unfinished_start(run_dir, files):
            return 'start-again'
        outputs = [name for name in files if name not in [OPTIONS_FILE, 'log.txt']]
        raise ValueError(f'--outdir {run_dir} holds outputs of a run ({", ".join(outputs[:3])}) but no training state to '
            f'resume it from; starting again would mix two runs; {choices}')
    recorded = record.get('data')
    if data is not None and recorded and (recorded['shape'], recorded['classes']) != (data['shape'], data['classes']):
        raise ValueError(f'--data {describe_data(data)} cannot continue the run in {run_dir}, which was trained on '
            f'{describe_data(recorded)}; resume with that dataset, or {choices}')
    return 'resume'

def is_unfinished_start(run_dir, files):
    """Only what a run writes before its first training step: options, log, the kimg-0 status
    line and loss curve, kimg-0 snapshots."""
    if any(name not in [OPTIONS_FILE, 'log.txt', 'stats.jsonl', 'loss.png'] and not START_SNAPSHOT.fullmatch(name) for name in files):
        return False
    if 'stats.jsonl' in files:
        try:
            with open(os.path.join(run_dir, 'stats.jsonl')) as f:
                if any(json.loads(line).get('Progress/kimg') != 0 for line in f if line.strip()):
                    return False
        except (OSError, ValueError, AttributeError):
            return False
    return True

def prepare(run_dir, preset, record, action):
    """Carry out check()'s decision (rank 0 only) and return the run id: create the directory and
    its options record with a new run id (moving an earlier run aside first, or removing the files
    of a start that stopped before its first training state), or keep the run being resumed
    (record_resumption() notes what changed once its training state has loaded)."""
    if action == 'restart':
        aside = os.path.join(run_dir, f'previous-{time.strftime("%Y%m%d-%H%M%S")}')
        os.makedirs(aside)
        for name in run_files(run_dir):
            shutil.move(os.path.join(run_dir, name), os.path.join(aside, name))
        print(f'Moved the earlier run into {aside}')
    if action == 'start-again':
        restarted = [name for name in run_files(run_dir) if name != 'log.txt']
        print(f'Note: {run_dir} holds only the start of a run that stopped before its first training state; '
            f'starting again (removing {", ".join(restarted)})')
        for name in restarted:
            os.remove(os.path.join(run_dir, name))
    if action == 'resume':
        return read_options(run_dir).get('run_id')
    os.makedirs(run_dir, exist_ok=True)
    record = dict(preset=preset, run_id=uuid.uuid4().hex, **record)
    write_options(run_dir, record)
    return record['run_id']

def record_resumption(run_dir, record):
    """Say what this resumption changes (options; the dataset, by path or by content), and record
    it in the options file: the current options, config and data, and the change appended to its
    "changes" list. Rank 0, once the training state has loaded (a resumption that fails changes
    nothing)."""
    previous = read_options(run_dir)
    change = changes(run_dir, previous, record)
    if change:
        previous.update(options=record['options'], config=record['config'], data=record.get('data'))
        previous['changes'] = previous.get('changes', []) + [change]
        write_options(run_dir, previous)

def changes(run_dir, previous, record):
    """{'time', 'options': {key: [old, new]}, 'data': [old, new]} of a resumption, said on the
    console, or None."""
    if is_official_run(previous) and 'options' not in previous: # Its first resumption here: its own arguments.
        options = {option: [theirs, ours] for option, theirs, ours in official_differences(previous, record['config'])}
        old_config = previous
    else:
        # Options an earlier version recorded under old names (presets.RENAMED) compare by today's names.
        old_options, new_options = presets.upgrade(previous.get('options', {})), record['options']
        options = {key: [old_options.get(key), new_options.get(key)] for key in sorted(set(old_options) | set(new_options))
            if old_options.get(key) != new_options.get(key)}
        old_config = previous.get('config', {})
    old_data, new_data = previous.get('data'), record.get('data')
    if old_data is None: # Recorded by an earlier version or by the official code: the path as given is all there is.
        old_data = dict(path=os.path.abspath(old_config.get('dataset_kwargs', {}).get('path') or ''))
    data_changed = new_data is not None and (old_data.get('path') != new_data['path'] or
        old_data.get('fingerprint', new_data['fingerprint']) != new_data['fingerprint'])
    if options:
        print(f'Note: resuming in {run_dir} with changed options: ' + ', '.join(f'{k} ({a!r} -> {b!r})' for k, (a, b) in options.items()))
    if data_changed:
        what = 'another --data' if old_data.get('path') != new_data['path'] else 'changed files in --data'
        print(f'Note: resuming in {run_dir} with {what}: {new_data["path"]} (the run so far trained on {old_data.get("path")}); '
            f'recorded in {OPTIONS_FILE}')
    if not options and not data_changed:
        return None
    change = dict(time=datetime.datetime.now().isoformat(timespec='seconds'), options=options)
    if data_changed:
        change['data'] = [old_data, new_data]
    return change

def write_options(run_dir, record):
    with util.atomic_path(os.path.join(run_dir, OPTIONS_FILE)) as tmp:
        with open(tmp, 'wt') as f:
            json.dump(record, f, indent=2)

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
    ('duration', None, 'total_nimg', None), ('cond', 'dataset_kwargs', 'use_labels', True),
] # The dataset is compared by changes(), as for runs of this code.

def official_differences(recorded, config):
    """[(option, the official run's value, this command's)] where they differ."""
    found = []
    for option, section, key, default in _OFFICIAL_SETTINGS:
        theirs = (recorded.get(section) or {}) if section else recorded
        ours = (config.get(section) or {}) if section else config
        if theirs.get(key, default) != ours.get(key):
            found.append((option, theirs.get(key, default), ours.get(key)))
    return found
