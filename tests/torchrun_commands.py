"""Runs several script commands in one torchrun launch (each launch costs seconds of start-up):
argv[1] is a JSON list of [script, arg, ...]; each runs in this process group as
`python script.py arg ...` would, one after the other. A failing command ends the launch."""
import importlib
import json
import sys

from torch_utils import distributed as dist

ENTRY_POINTS = dict(train_edm2='main', generate_images='main', calculate_metrics='cmdline', dataset_tool='cmdline')

if __name__ == '__main__':
    dist.init()
    for script, *args in json.loads(sys.argv[1]):
        command = getattr(importlib.import_module(script), ENTRY_POINTS[script])
        command.main([str(a) for a in args], prog_name=f'{script}.py', standalone_mode=False)
        dist.barrier()
