"""The command lines that the READMEs of NVlabs/edm2 and ML-GSAI/Multi-Souce-GM write, stored in
tests/data/anchor_commands.json, run unchanged: as a subprocess in the folder the README runs them
from (`run`), or in this process through click's CliRunner (`invoke`, the same arguments without
the start-up of a new interpreter)."""

import importlib
import json
import os
import shlex
import subprocess
import sys

from click.testing import CliRunner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

with open(os.path.join(ROOT, 'tests', 'data', 'anchor_commands.json')) as _f:
    ANCHORS = {name: entry for name, entry in json.load(_f).items() if not name.startswith('_')}

def words(name, env=None):
    """The command as the README writes it, split as a shell would, with its $VARIABLES (e.g.
    $HOME) taken from `env` (default: this process's environment)."""
    command = ANCHORS[name]['command']
    for var, value in sorted((env if env is not None else os.environ).items(), key=lambda item: -len(item[0])):
        command = command.replace(f'${var}', value)
    return shlex.split(command)

def argv(name, env=None):
    """The command for this machine: `python` is this interpreter, `torchrun` is
    `python -m torch.distributed.run` (what the torchrun entry point runs)."""
    command = words(name, env)
    launcher = {'python': [sys.executable], 'torchrun': [sys.executable, '-m', 'torch.distributed.run']}[command[0]]
    return launcher + command[1:]

def run(name, root=ROOT, env=None, timeout=600, check=True):
    """Run the command in its README folder under `root` (a copy of this repository, or the
    repository itself) and return the CompletedProcess; with `check`, assert that it succeeds."""
    cwd = os.path.join(root, ANCHORS[name]['cwd'])
    env = dict(env or os.environ, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
    result = subprocess.run(argv(name, env), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert not check or result.returncode == 0, f'{ANCHORS[name]["command"]}\n{result.stdout[-3000:]}{result.stderr[-3000:]}'
    return result

def invoke(name, cwd):
    """Run a `python SCRIPT.py ARGS` command of this repository's top-level scripts in this
    process, in the working directory `cwd` (where its relative outputs land). Returns click's
    Result (check it as conftest.invoke_ok does, or with expect_cli_error)."""
    command = words(name)
    assert command[0] == 'python' and command[1].endswith('.py'), command
    module = importlib.import_module(command[1][:-3])
    args = command[2:]
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(getattr(module, 'cmdline', None) or module.main, args)
    finally:
        os.chdir(previous)
