"""Small general helpers (what EDM2 keeps in dnnlib/util.py): EasyDict, object construction by
name, URL/file opening through an on-disk cache, the stdout/stderr tee Logger, parsing helpers
and atomic output paths."""

import ast
import contextlib
import functools
import glob
import hashlib
import importlib
import io
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid

import numpy as np

#----------------------------------------------------------------------------
# Convenience dict with attribute access. Official EDM2 pickles store their option dicts as
# `dnnlib.util.EasyDict`; torch_utils.persistence.load_pickle maps that name to this class.

class EasyDict(dict):
    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name)

    def __setattr__(self, name, value):
        self[name] = value

    def __delattr__(self, name):
        del self[name]

def plain_containers(value):
    """`value` with every dict (EasyDicts too, ours or an official snapshot's) inside dicts, lists
    and tuples made a plain dict, other objects untouched: what a snapshot written here must hold,
    because this module does not exist in the official tree that may load it."""
    if isinstance(value, dict):
        return {key: plain_containers(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain_containers(item) for item in value)
    return value

#----------------------------------------------------------------------------
# Construct objects and call functions given by their fully qualified name, e.g.
# construct_class_by_name(class_name='training.networks_edm2.Precond', img_resolution=64).

def get_obj_by_name(name):
    """Import `module.sub.attr` and return the attribute; the longest importable module wins."""
    parts = name.split('.')
    for i in range(len(parts) - 1, 0, -1):
        module_name = '.'.join(parts[:i])
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name is not None and not module_name.startswith(e.name):
                raise # A genuine missing dependency inside the module.
            continue
        obj = module
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            raise ImportError(f'Cannot find "{".".join(parts[i:])}" in module "{module_name}"')
        return obj
    return importlib.import_module(name)

def call_func_by_name(*args, func_name=None, **kwargs):
    assert func_name is not None
    func = get_obj_by_name(func_name)
    if not callable(func):
        raise TypeError(f'"{func_name}" is not callable')
    return func(*args, **kwargs)

def construct_class_by_name(*args, class_name=None, **kwargs):
    return call_func_by_name(*args, func_name=class_name, **kwargs)

#----------------------------------------------------------------------------
# Parsing helpers shared by the command-line tools.

def parse_int_list(s, low=None, high=None, max_count=None):
    """'0-63,100' -> [0, 1, ..., 63, 100]. Accepts a list of ints as-is. Every value must lie in
    [low, high] and there may be at most `max_count` of them (None: no limit), checked before a
    range is expanded, so that '0-99999999999' is an error rather than a list of 10^11 numbers."""
    if isinstance(s, list):
        return s
    if s is None or not str(s).strip():
        return []
    parts = []
    for part in str(s).split(','):
        part = part.strip()
        m = re.fullmatch(r'(-?\d+)-(-?\d+)', part) or re.fullmatch(r'((-?\d+))', part)
        if not m:
            raise ValueError(f'Invalid integer list item "{part}"')
        lo, hi = int(m.group(1)), int(m.group(2))
        if hi < lo:
            raise ValueError(f'Invalid range "{part}": end is before start')
        if (low is not None and lo < low) or (high is not None and hi > high):
            raise ValueError(f'"{part}" is outside {low}..{high}')
        parts.append((lo, hi))
    count = sum(hi - lo + 1 for lo, hi in parts)
    if max_count is not None and count > max_count:
        raise ValueError(f'"{s}" has {count:,} values, more than the {max_count:,} allowed')
    return [value for lo, hi in parts for value in range(lo, hi + 1)]

def parse_float_list(s):
    """'0.05,0.1' -> [0.05, 0.1]. Two ways to write an evenly spaced run, stop included: EDM2's
    '0.010,0.015,...,0.250' (the step is the difference of the two numbers before '...', and the
    values are computed as the official code computes them, prev + step * k) or 'start:stop:step'."""
    if isinstance(s, (list, tuple)):
        return [float(v) for v in s]
    raw = []
    for part in (p.strip() for p in str(s).split(',')):
        try:
            if part == '...':
                raw.append(None)
            elif ':' in part:
                start, stop, step = (float(v) for v in part.split(':'))
                if step <= 0 or stop < start:
                    raise ValueError
                count = int(np.floor((stop - start) / step + 1e-6)) + 1
                raw.extend(float(np.round(start + i * step, 10)) for i in range(count))
            else:
                raw.append(float(part))
        except ValueError:
            raise ValueError(f'Invalid float list item "{part}": expected a number, start:stop:step or "..."') from None
    values = []
    for i, value in enumerate(raw):
        if value is not None:
            values.append(value)
            continue
        if i < 2 or raw[i - 2] is None or raw[i - 1] is None or i + 1 >= len(raw) or raw[i + 1] is None:
            raise ValueError(f'"{s}": "..." needs two numbers before it and one after it, e.g. 0.010,0.015,...,0.250')
        step = raw[i - 1] - raw[i - 2]
        count = (raw[i + 1] - raw[i - 1]) / step - 1 if step != 0 else 0 # Values strictly between.
        if step == 0 or round(count) <= 0 or abs(round(count) - count) > 1e-4:
            raise ValueError(f'"{s}": the numbers around "..." must be evenly spaced and increase or decrease, '
                f'e.g. 0.010,0.015,...,0.250')
        values.extend(raw[i - 1] + step * (k + 1) for k in range(round(count)))
    return values

def parse_assignment(text, flag):
    """'key=value' (train_edm2.py --set, the generators' --opt) -> (key, value): the value a Python
    literal, a bare word a string."""
    match = re.fullmatch(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)', str(text))
    if not match:
        raise ValueError(f'{flag} "{text}" is not KEY=VALUE')
    key, raw = match.group(1), match.group(2).strip()
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key, value

def check_type(value, expected, what):
    """`value` as the type `expected` (bool, int, float or str; an int passes for a float, a bool
    for nothing else), or a ValueError that names `what`."""
    ok = isinstance(value, expected) and (expected is bool or not isinstance(value, bool))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        kind = {bool: 'True or False', int: 'an integer', float: 'a number', str: 'a string'}.get(expected, expected.__name__)
        raise ValueError(f'{what} expects {kind}, got {value!r}')
    return value

_NIMG_SUFFIXES = {'': 1, 'k': 10**3, 'M': 10**6, 'G': 10**9, 'Ki': 2**10, 'Mi': 2**20, 'Gi': 2**30}

def parse_nimg(s):
    """Image counts with optional suffix: '8Mi' -> 8388608, '2.5k' -> 2500, '1000' -> 1000."""
    if isinstance(s, int):
        return s
    m = re.fullmatch(r'\s*(\d+(?:\.\d*)?)\s*(Ki|Mi|Gi|k|M|G|)\s*', str(s))
    if not m:
        raise ValueError(f'Invalid image count "{s}": expected a number with optional suffix k/M/G/Ki/Mi/Gi')
    value = float(m.group(1)) * _NIMG_SUFFIXES[m.group(2)]
    if value != int(value):
        raise ValueError(f'Image count "{s}" is not a whole number of images')
    return int(value)

def format_nimg(nimg):
    """The shortest exact spelling of an image count: 32768 -> '32Ki', 1000 -> '1000'."""
    for suffix in ['Gi', 'Mi', 'Ki']:
        if nimg and nimg % _NIMG_SUFFIXES[suffix] == 0:
            return f'{nimg // _NIMG_SUFFIXES[suffix]}{suffix}'
    return str(nimg)

def format_time(seconds):
    s = int(round(seconds))
    if s < 60:
        return f'{s}s'
    if s < 60 * 60:
        return f'{s // 60}m {s % 60:02d}s'
    if s < 24 * 60 * 60:
        return f'{s // 3600}h {(s // 60) % 60:02d}m'
    return f'{s // 86400}d {(s // 3600) % 24:02d}h'

#----------------------------------------------------------------------------
# Atomic outputs: write to a temporary name in the destination folder, rename when complete,
# delete on error. Nothing half-written is ever visible under the final name. A temporary is
# named after its target, host and process, so that the next write of the same target removes
# what a killed process left behind (never the temporary of a live process, e.g. another rank).

_HOST = re.sub(r'[^0-9A-Za-z]', '', socket.gethostname())[:32] or 'host'

def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)

def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

def remove_stale_temporaries(path):
    """Delete the temporaries of `path` (its name may be a glob pattern) that dead processes of
    this host left behind."""
    folder = os.path.dirname(os.path.abspath(path))
    for stale in glob.glob(os.path.join(glob.escape(folder), f'.{os.path.basename(path)}.tmp-*')):
        match = re.fullmatch(r'(\w+)-(\d+)-[0-9a-f]+', stale.rsplit('.tmp-', 1)[1])
        if match and match.group(1) == _HOST and not _process_alive(int(match.group(2))):
            _remove(stale)

@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path to write; it becomes `path` when the block succeeds (replacing a
    file or, for an explicit overwrite, a folder)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temporaries(glob.escape(path))
    tmp = os.path.join(folder, f'.{os.path.basename(path)}.tmp-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}')
    try:
        yield tmp
        if os.path.isdir(path) and not os.path.islink(path):
            os.replace(path, tmp + '-old') # A folder cannot be replaced in one rename.
            os.replace(tmp, path)
            _remove(tmp + '-old')
        else:
            os.replace(tmp, path)
    finally:
        _remove(tmp)

def check_new_output(path, what, overwrite=False, folder=False):
    """The outputs policy of every tool: an existing output is refused unless `overwrite`; the
    place must be writable. Checked before any work. `what` names the option."""
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f'{what} {path} already exists; pass --overwrite to replace it, or choose another name')
    check_writable(path, what, folder=folder)

#----------------------------------------------------------------------------
# Cache directory for downloaded files. Compatible with dnnlib's layout, so files that the
# official EDM2 code already downloaded (~/.cache/dnnlib/downloads/<md5>_<name>) are found.

def make_cache_dir_path(*paths):
    for var in ('EDM2_CACHE_DIR', 'DNNLIB_CACHE_DIR'):
        if os.environ.get(var):
            return os.path.join(os.environ[var], *paths)
    if os.environ.get('HOME'):
        return os.path.join(os.environ['HOME'], '.cache', 'dnnlib', *paths)
    return os.path.join(tempfile.gettempdir(), '.cache', 'dnnlib', *paths)

def is_url(obj, allow_file_urls=False):
    if not isinstance(obj, str) or '://' not in obj:
        return False
    if allow_file_urls and obj.startswith('file://'):
        return True
    res = urllib.parse.urlparse(obj)
    return res.scheme in ('http', 'https') and bool(res.netloc)

def url_cache_path(url, cache_dir=None):
    """Where open_url keeps (or looks for) the cached copy of `url`."""
    cache_dir = cache_dir or make_cache_dir_path('downloads')
    url_md5 = hashlib.md5(url.encode('utf-8')).hexdigest()
    safe_name = re.sub(r'[^0-9a-zA-Z._-]', '_', os.path.basename(urllib.parse.urlparse(url).path)) or 'file'
    return os.path.join(cache_dir, f'{url_md5}_{safe_name}')

class DownloadError(OSError):
    """A URL that could not be downloaded: `reason` (the last attempt's error) and `cache_file`
    (where a copy placed by hand is found), for callers that say more about the file."""
    def __init__(self, url, reason, cache_file):
        super().__init__(f'Cannot download {url} ({reason}). If this machine is offline, place the file at {cache_file} '
            '(or set EDM2_CACHE_DIR), or pass a local path instead of the URL.')
        self.url, self.reason, self.cache_file = url, reason, cache_file

def open_url(url, cache_dir=None, num_attempts=3, verbose=True, return_filename=False, cache=True):
    """Open a local path, a file:// URL or an http(s) URL. Remote files go through the on-disk
    cache: a cached copy is used without touching the network; otherwise the file is downloaded
    into the cache atomically. Returns a binary file object (or the local filename)."""
    url = os.fspath(url)
    if not is_url(url, allow_file_urls=True):
        if not os.path.isfile(url):
            raise FileNotFoundError(f'No such file: {url}')
        return url if return_filename else open(url, 'rb')
    if url.startswith('file://'):
        filename = urllib.parse.urlparse(url).path
        if re.match(r'^/[a-zA-Z]:', filename):
            filename = filename[1:]
        if not os.path.isfile(filename):
            raise FileNotFoundError(f'No such file: {filename} (from {url})')
        return filename if return_filename else open(filename, 'rb')
    assert num_attempts >= 1
    assert not (return_filename and not cache)

    cache_file = url_cache_path(url, cache_dir)
    if cache and os.path.isfile(cache_file):
        return cache_file if return_filename else open(cache_file, 'rb')

    data = None
    for attempt in range(num_attempts):
        try:
            if verbose:
                print(f'Downloading {url} ...', end='', file=sys.stderr, flush=True)
            with urllib.request.urlopen(url, timeout=60) as res:
                data = res.read()
            if verbose:
                print(' done', file=sys.stderr)
            break
        except Exception as e:
            if verbose:
                print(' failed', file=sys.stderr)
            if attempt == num_attempts - 1:
                raise DownloadError(url, e, cache_file) from e
            time.sleep(1)
    if cache:
        with atomic_path(cache_file) as tmp:
            with open(tmp, 'wb') as f:
                f.write(data)
        if return_filename:
            return cache_file
    return io.BytesIO(data)

#----------------------------------------------------------------------------
# Tee stdout/stderr into a log file (the run directory's log.txt).

class Logger:
    """While open, everything written to stdout or stderr is also written to `file_name` (unless
    None); both streams go on to the original stdout. Usable as a context manager; close()
    gives the streams back."""

    def __init__(self, file_name=None, file_mode='a', should_flush=True):
        self.file = None if file_name is None else open(file_name, file_mode)
        self.should_flush = should_flush # Flush after every write: the log survives a crash.
        self.stdout, self.stderr = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = self

    def __enter__(self):
        return self

    def __exit__(self, *_exc):
        self.close()

    def _targets(self):
        return [stream for stream in (self.file, self.stdout) if stream is not None]

    def write(self, text):
        text = text.decode() if isinstance(text, bytes) else text
        if not text:
            return
        for stream in self._targets():
            self._guarded(stream, stream.write, text)
        if self.should_flush:
            self.flush()

    def flush(self):
        for stream in self._targets():
            self._guarded(stream, stream.flush)

    def _guarded(self, stream, method, *args):
        """A log file that cannot be written (disk full, file-size limit) is dropped with one
        warning on the console, so that the error being reported still reaches it."""
        try:
            method(*args)
        except OSError as e:
            if stream is not self.file:
                raise
            self.file = None
            with contextlib.suppress(OSError):
                stream.close()
            self.stdout.write(f'WARNING: cannot write the log file any more ({error_message(e)}); logging to the console only\n')

    def isatty(self): # Progress bars ask.
        return self.stdout.isatty()

    def close(self):
        self.flush()
        for name, original in [('stdout', self.stdout), ('stderr', self.stderr)]:
            if getattr(sys, name) is self: # Unless something else took the stream over since.
                setattr(sys, name, original)
        file, self.file = self.file, None
        if file is not None:
            file.close()

#----------------------------------------------------------------------------
# Bad input from the command line. Library code raises ValueError or OSError (FileNotFoundError,
# PermissionError, ...) with a message naming the option or file; the scripts' commands are
# wrapped so that these end the program with that one line on stderr and exit code 1, never a
# traceback. Anything else (a bug) still shows its traceback.

def error_message(e):
    if isinstance(e, OSError) and e.strerror and e.filename and str(e.filename) not in str(e.strerror):
        return f'{e.strerror}: {e.filename}'
    return str(e)

class Interrupted(Exception):
    """SIGTERM or SIGINT arrived inside stop_on_signals(): the work stops, temporaries are removed
    on the way out, and the program ends with 128 + the signal number."""
    def __init__(self, signum):
        super().__init__(f'stopped by {signal.Signals(signum).name}; nothing was written')
        self.signum = signum

@contextlib.contextmanager
def stop_on_signals():
    """Turn SIGTERM and SIGINT into Interrupted in this (main) thread for the duration of the block,
    so that `finally` clauses (atomic_path's clean-up) run: the default SIGTERM action ends the
    process on the spot. Worker processes forked inside the block must reset the handlers
    (see dataset_tool.py), or each of them raises too."""
    def handle(signum, _frame):
        raise Interrupted(signum)
    previous = {signum: signal.signal(signum, handle) for signum in [signal.SIGTERM, signal.SIGINT]}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

def one_line_errors(fn):
    """Under torchrun every rank reaches the same error (each checks the same input, or receives
    rank 0's outcome: torch_utils.distributed.rank0_outcome), so rank 0 alone prints it. The exit
    status goes to torch_utils.distributed.exiting (see there: why a process of several leaves
    at once)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from torch_utils import distributed as dist # pylint: disable=import-outside-toplevel
        dist.exiting(None) # Unknown until fn ends: an unexpected exception keeps Python's own exit.
        try:
            result = fn(*args, **kwargs)
        except (ValueError, OSError, Interrupted) as e:
            if int(os.environ.get('RANK') or 0) == 0:
                print(f'Error: {error_message(e)}', file=sys.stderr, flush=True)
            dist.exiting(128 + e.signum if isinstance(e, Interrupted) else 1)
            raise SystemExit(128 + e.signum if isinstance(e, Interrupted) else 1) from e
        except SystemExit as e:
            dist.exiting(e.code if isinstance(e.code, int) else 1)
            raise
        dist.exiting(0)
        return result
    return wrapper

def check_writable(path, what, folder=False):
    """Fail before any work when `path` could not be created: its nearest existing folder is
    read-only or a file, or the path itself is a folder (unless `folder` outputs are meant).
    `what` names the option."""
    existing = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise NotADirectoryError(f'{what} {path}: {existing} is a file, not a folder')
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f'{what} {path}: the folder {existing} is not writable')
    if os.path.isdir(path) and not folder:
        raise IsADirectoryError(f'{what} {path} is a folder')

#----------------------------------------------------------------------------
