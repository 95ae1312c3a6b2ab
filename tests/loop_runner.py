"""Runs training_loop() with JSON keyword arguments (for tests that need torchrun/subprocesses)."""
import json
import sys

from torch_utils import distributed as dist
from training import training_loop

if __name__ == '__main__':
    dist.init()
    training_loop.training_loop(**json.loads(sys.argv[1]))
