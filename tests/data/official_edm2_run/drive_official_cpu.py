"""How tests/data/official_edm2_run/ was made: the unmodified official NVlabs/edm2 train_edm2.py
(4bf8162), run on the CPU. Only what needs CUDA is replaced from outside (NCCL -> Gloo, no device
selection, DDP without device ids, no CUDA memory statistics, the training loop's device, no
DataLoader workers), plus Sampler.__init__, whose argument torch 2.13 dropped; the network is
shrunk through setup_training_config's result (NET_KWARGS), so that training_options.json
records it. Run once, by hand, with the official checkout in EDM2:

    EDM2=path/to/edm2 NET_KWARGS='{"model_channels": 4, "channel_mult": [1], "num_blocks": 1, "attn_resolutions": []}' \
        python drive_official_cpu.py --outdir=offrun --data=rgb.zip --preset=edm2-img512-xs --batch=32 \
        --duration=2Ki --status=1Ki --snapshot=1Ki --checkpoint=1Ki

where rgb.zip holds 64 random 8x8 RGB images of two classes (dataset_tool.py convert of two
folders). Its training-state-0000002.pt and training_options.json are kept here (weights only;
the snapshots embed the official source and are not kept)."""
import json, os, sys
import torch
import torch.distributed
EDM2 = os.environ['EDM2']
sys.path.insert(0, EDM2)
_init = torch.distributed.init_process_group
torch.distributed.init_process_group = lambda backend=None, **kw: _init(backend='gloo', **kw)
torch.cuda.set_device = lambda *a, **k: None
torch.cuda.max_memory_allocated = lambda *a, **k: 0
torch.cuda.max_memory_reserved = lambda *a, **k: 0
torch.cuda.reset_peak_memory_stats = lambda *a, **k: None
class CPUDDP(torch.nn.parallel.DistributedDataParallel):
    def __init__(self, module, device_ids=None, **kwargs):
        super().__init__(module, **kwargs)
torch.nn.parallel.DistributedDataParallel = CPUDDP
torch.utils.data.Sampler.__init__ = lambda self, data_source=None: None # torch 2.13 dropped the argument that the official InfiniteSampler passes.
import train_edm2
import training.training_loop
_loop = training.training_loop.training_loop
training.training_loop.training_loop = lambda **kw: _loop(device=torch.device('cpu'), **kw)
_setup = train_edm2.setup_training_config
def setup(**opts):
    c = _setup(**opts)
    c.network_kwargs.update(json.loads(os.environ.get('NET_KWARGS', '{}')))
    c.data_loader_kwargs = dict(class_name='torch.utils.data.DataLoader', pin_memory=False, num_workers=0)
    return c
train_edm2.setup_training_config = setup
if __name__ == '__main__':
    train_edm2.cmdline()
