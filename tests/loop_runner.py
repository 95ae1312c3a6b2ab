"""Runs training_loop() with JSON keyword arguments, or one run after the other for a JSON list
of them (for tests that need torchrun/subprocesses: one launch, several runs)."""
import json
import sys

from torch_utils import distributed as dist
from training import training_loop

if __name__ == '__main__':
    dist.init()
    runs = json.loads(sys.argv[1])
    for kwargs in runs if isinstance(runs, list) else [runs]:
        training_loop.training_loop(**kwargs)
    dist.exiting(0)
