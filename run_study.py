"""The multi-source study, end to end: for a grid of similarity levels, numbers of sources K and
images per source N, train one multi-source model per cell and one single-source model per
source, score every model source by source against held-out references, and summarize single
against multi (CSV, table, figure). The same driver runs the study on ImageNet (the paper's) and
on the built-in digits (laptop-sized); bash_files/ launch it. Every step runs one of the
project's command-line tools, printed as it runs; re-running skips what is done.

    python run_study.py grid --data digits --out study-digits --jobs 2     # the default digits grid
    python run_study.py grid --data digits --out quick --quick --jobs 2    # 8.5 minutes on 2 cores
    python run_study.py grid --data imagenet --source /data/imagenet/train --out study \\
        --levels sim3 --sources 5 --per-class 500 --gpus 8 --batch-gpu 32

Layout of --out: data/ (training datasets: {level}-{K}c-{N}.zip, src{id}-{N}.zip, and -latents),
refs/ ({data}-{id}.pkl per source, from refs/images/), runs/{model}/ (train_edm2.py run
directories), scores/{model}.jsonl (calculate_metrics.py gen --per-class), logs/, and the
summary study.csv, study.md, study.png.
"""

import concurrent.futures
import json
import os
import subprocess
import sys
import threading
import time

import click

from torch_utils import util
from training import study

ROOT = os.path.dirname(os.path.abspath(__file__))

# Digits: the training split gives the sources' images, the test split (never trained on) their
# references; a model trains on 10Ki images per source (a multi-source model K times as many as
# a single-source one, so that every source gets the same share of training). ImageNet: images
# encoded to latents, references from all images of each class, the study's own presets.
PROFILES = dict(
    digits=dict(source='builtin:digits-train', held_out='builtin:digits-test', crop=None, encode=False,
        metrics='fd_digits,digits_acc', num=100, gen=['--steps', '16'], ema='0.100', preset='edm2-digits',
        train=['--batch', '64', '--workers', '0'], per_source='10Ki'),
    imagenet=dict(source=None, held_out=None, crop='center-crop-dhariwal', encode=True,
        metrics='fid,fd_dinov2', num=5000, gen=[], ema='0.050', preset='edm2-img256-xs-{K}c-{N}',
        train=[], per_source=None),
)
GRIDS = dict(
    digits=dict(levels='similar,diverse', sources='2,3,5', per_class='20,80', seeds='0,1'),
    quick=dict(levels='similar,diverse', sources='2,3', per_class='20', seeds='0'),
    imagenet=dict(levels='sim1,sim2,sim3', sources='3,5,10', per_class='100,500,1000', seeds='0'),
)

#----------------------------------------------------------------------------
# Running the tools: every command is printed; with several jobs at once, a model's commands
# write their output to its log file.

_print_lock = threading.Lock()

def say(text):
    with _print_lock:
        print(text, flush=True)

def tool(script, *args, gpus=1, nodes=None, job=0):
    """The command line of one of the project's scripts, under torchrun for several processes
    (`--` keeps the script's options, e.g. --num, away from torchrun's prefix matching). `nodes`
    (nnodes, node_rank, master_addr, master_port) spans several machines as
    bash_files/common.sh does: torchrun's static rendezvous, so that node 0 holds global rank 0,
    on master_port + job, so that one command's nodes never meet another command's."""
    if nodes and nodes['nnodes'] > 1:
        launcher = [sys.executable, '-m', 'torch.distributed.run', f'--nnodes={nodes["nnodes"]}', f'--node-rank={nodes["node_rank"]}',
            f'--master-addr={nodes["master_addr"]}', f'--master-port={nodes["master_port"] + job}', f'--nproc_per_node={gpus}', '--']
    elif gpus > 1:
        launcher = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={gpus}', '--']
    else:
        launcher = [sys.executable]
    return launcher + [os.path.join(ROOT, script)] + [str(a) for a in args]

def wait_for(paths, poll=10):
    """Block until every path exists (another node is making them)."""
    missing = [path for path in paths if not os.path.exists(path)]
    if missing:
        say(f'Waiting for node 0 to write {len(missing)} file(s), e.g. {missing[0]}')
    while any(not os.path.exists(path) for path in missing):
        time.sleep(poll)

def run(args, log=None, threads=None):
    say('+ ' + ' '.join(args))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')])))
    if threads:
        env['OMP_NUM_THREADS'] = str(threads)
    if log:
        os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log, 'a') if log else open(os.devnull, 'w') as f:
        result = subprocess.run(args, stdout=f if log else None, stderr=subprocess.STDOUT if log else None, env=env, check=False)
    if result.returncode != 0:
        raise ChildProcessError(f'this command failed (exit code {result.returncode}){f"; its output is in {log}" if log else ""}')

#----------------------------------------------------------------------------

class Study:
    """The files and steps of one study under `out` (see the module docstring)."""
    def __init__(self, out, data, source=None, resolution=256, vae='stabilityai/sd-vae-ft-mse', preset=None,
            duration=None, num=None, gpus=1, batch_gpu=None, jobs=1, workers=2, train_args=(), nodes=None):
        self.out, self.data, self.gpus, self.batch_gpu, self.jobs, self.workers = out, data, gpus, batch_gpu, jobs, workers
        # Several machines: every node runs the same grid; node 0 builds the data and writes the
        # summary, the others wait for its files and join every training and scoring command.
        self.nodes = nodes or dict(nnodes=1, node_rank=0)
        self.torchrun_jobs = 0
        self.profile = PROFILES[data]
        self.source = source or self.profile['source']
        self.held_out = self.profile['held_out'] or self.source
        self.convert = ['--transform', self.profile['crop'], '--resolution', f'{resolution}x{resolution}'] if self.profile['crop'] else []
        self.vae, self.preset, self.duration = vae, preset, duration
        self.num = num or self.profile['num']
        self.train_args = list(train_args)
        self.fd_metrics = ','.join(m for m in self.profile['metrics'].split(',') if not m.endswith('_acc'))
        # CPU threads per command: the user's OMP_NUM_THREADS, else the cores shared out between
        # the jobs (torch slows down many times over when its threads outnumber free cores).
        self.threads = os.environ.get('OMP_NUM_THREADS') or (max(1, (os.cpu_count() or 1) // jobs) if gpus == 1 else None)

    def path(self, *parts):
        return os.path.join(self.out, *parts)

    def dataset(self, model, latents=False):
        return self.path('data', f'{model["name"].rsplit("-s", 1)[0]}{"-latents" if latents else ""}.zip')

    def reference(self, class_id):
        return self.path('refs', f'{self.data}-{class_id}.pkl')

    def model_preset(self, model):
        return (self.preset or self.profile['preset']).format(K=len(model['classes']), N=model['N'])

    def model_duration(self, model):
        """--duration, else the profile's per-source budget times K, else the preset's."""
        if self.duration is not None:
            return util.parse_nimg(self.duration)
        if self.profile['per_source']:
            return util.parse_nimg(self.profile['per_source']) * len(model['classes'])
        from training import presets # pylint: disable=import-outside-toplevel
        return presets.resolve(self.model_preset(model)).duration

    def snapshot(self, model):
        return self.path('runs', model['name'], f'network-snapshot-{self.model_duration(model) // 1000:07d}-{self.profile["ema"]}.pkl')

    #------------------------------------------------------------------------
    # Steps; each skips what exists.

    def build_reference(self, class_id):
        """Statistics of one source's held-out images (digits: its test split; ImageNet: all
        images of the class, about 1300), once for every K and N."""
        if os.path.exists(self.reference(class_id)):
            return
        images = self.path('refs', 'images', f'{self.data}-{class_id}.zip')
        if not os.path.exists(images):
            run(tool('dataset_tool.py', 'convert', '--source', self.held_out, '--dest', images, *self.convert,
                '--classes', class_id, '--workers', self.workers))
        run(tool('calculate_metrics.py', 'ref', '--data', images, '--dest', self.reference(class_id), '--metrics', self.fd_metrics, '--workers', 0))

    def build_dataset(self, model, seed=0):
        """The model's N images per source, always drawn with data seed 0, so that a source
        has the same images in every model (the training seed only changes the training)."""
        if not os.path.exists(self.dataset(model)):
            run(tool('dataset_tool.py', 'convert', '--source', self.source, '--dest', self.dataset(model), *self.convert,
                '--classes', ','.join(map(str, model['classes'])), '--per-class', model['N'], '--seed', seed, '--workers', self.workers))
        if self.profile['encode'] and not os.path.exists(self.dataset(model, latents=True)):
            run(tool('dataset_tool.py', 'encode', '--source', self.dataset(model), '--dest', self.dataset(model, latents=True), '--model-url', self.vae))

    def train(self, model, log=None):
        if os.path.exists(self.snapshot(model)):
            return False
        duration = self.model_duration(model)
        args = ['--preset', self.model_preset(model), '--data', self.dataset(model, latents=self.profile['encode']),
            '--outdir', self.path('runs', model['name']), '--seed', model['seed'], *self.profile['train'], '--duration', duration,
            '--snapshot', duration, '--checkpoint', duration, '--status', duration // 4, *self.train_args]
        args += ['--set', f'vae={self.vae}'] if self.profile['encode'] else [] # Decodes the snapshot's samples.
        args += ['--batch-gpu', self.batch_gpu] if self.batch_gpu else []
        run(self.distributed('train_edm2.py', *args), log, self.threads)
        return True

    def distributed(self, script, *args):
        """A training or scoring command: on all nodes, each command a torchrun job of its own."""
        self.torchrun_jobs += 1
        return tool(script, *args, gpus=self.gpus, nodes=self.nodes, job=self.torchrun_jobs - 1)

    def score(self, model, log=None):
        """Every source of the model against its own reference: scores/{model}.jsonl, one record
        per (source, metric), written under a temporary name until complete."""
        results = self.path('scores', f'{model["name"]}.jsonl')
        if os.path.exists(results):
            return False
        args = ['gen', '--net', self.snapshot(model), '--per-class', '--ref', self.reference('{source}'),
            '--metrics', self.profile['metrics'], '--num', self.num, *self.profile['gen'], '--tag', f'model={model["name"]}']
        if self.nodes['node_rank'] > 0: # Global rank 0 is on node 0: it writes the results.
            run(self.distributed('calculate_metrics.py', *args), log, self.threads)
            return True
        with util.atomic_path(results) as tmp:
            run(self.distributed('calculate_metrics.py', *args, '--results', tmp), log, self.threads)
        return True

    #------------------------------------------------------------------------

    def run_grid(self, models):
        say(f'Working directory: {os.getcwd()}')
        say(f'Study in {self.out} ({self.data}): {sum(m["kind"] == "multi" for m in models)} multi-source and '
            f'{sum(m["kind"] == "single" for m in models)} single-source models, {self.jobs} at a time')
        if self.nodes['node_rank'] > 0:
            wait_for([self.reference(c) for m in models for c in m['classes']] + [self.dataset(m, latents=self.profile['encode']) for m in models])
        else:
            with concurrent.futures.ThreadPoolExecutor(self.jobs) as pool: # list(): re-raise the first failure.
                list(pool.map(self.build_reference, sorted({c for m in models for c in m['classes']})))
                list(pool.map(self.build_dataset, {self.dataset(m): m for m in models}.values())) # Each file once.
        start, done = time.time(), []
        def train_and_score(model):
            began = time.time()
            log = self.path('logs', f'{model["name"]}.log') if self.jobs > 1 else None
            did = [what for what, step in [('trained', self.train), ('scored', self.score)] if step(model, log)]
            with _print_lock:
                done.append(model)
                elapsed = time.time() - start
                eta = elapsed / len(done) * (len(models) - len(done))
                print(f'[model {len(done)}/{len(models)}] {model["name"]}: {" and ".join(did) or "already done"} in '
                    f'{util.format_time(time.time() - began)}; elapsed {util.format_time(elapsed)}, ETA {util.format_time(eta)}', flush=True)
        with concurrent.futures.ThreadPoolExecutor(self.jobs) as pool:
            for future in [pool.submit(train_and_score, model) for model in models]:
                future.result()

    def report(self, models):
        """study.csv (every per-source score), study.md (the paper's table per metric) and
        study.png (the first metric against K); returns the table text."""
        scores = {}
        for model in models:
            path = self.path('scores', f'{model["name"]}.jsonl')
            if os.path.exists(path):
                with open(path) as f:
                    scores[model['name']] = [json.loads(line) for line in f if line.strip()]
        rows = study.cell_records(models, scores)
        if not rows:
            raise ValueError(f'--out {self.out}: no scores yet (scores/*.jsonl); run the grid first')
        metrics = list(dict.fromkeys(r['metric'] for r in rows))
        text = ''.join(f'{metric}:\n\n' + study.markdown_table(study.summarize(rows, metric), metric) + '\n' for metric in metrics)
        study.write_csv(rows, self.path('study.csv'))
        study.write_text(self.path('study.md'), text)
        study.plot(study.summarize(rows, metrics[0]), metrics[0], self.path('study.png'))
        return text

#----------------------------------------------------------------------------

def grid_options(fn):
    for option in reversed([
        click.option('--data', help='Dataset of the study', type=click.Choice(sorted(PROFILES)), required=True),
        click.option('--source', help='ImageNet training folder (synset subfolders)  [imagenet only]', metavar='DIR', type=str, default=None),
        click.option('--out', help='Folder of the study (created; re-running resumes)', metavar='DIR', type=str, required=True),
        click.option('--levels', help='Similarity levels  [default: the dataset\'s grid]', metavar='LIST', type=str, default=None),
        click.option('--sources', 'num_sources', help='Numbers of sources K  [default: the dataset\'s grid]', metavar='LIST', type=str, default=None),
        click.option('--per-class', help='Images per source N  [default: the dataset\'s grid]', metavar='LIST', type=str, default=None),
        click.option('--seeds', help='Training seeds  [default: the dataset\'s grid]', metavar='LIST', type=str, default=None),
        click.option('--quick', help='The small digits grid (similar and diverse, K 2 and 3, N 20, one seed)', is_flag=True),
    ]):
        fn = option(fn)
    return fn

def grid_models(data, levels, num_sources, per_class, seeds, quick):
    if quick and data != 'digits':
        raise ValueError('--quick: the quick grid is for --data digits')
    grid = GRIDS['quick' if quick else data]
    pick = lambda value, key: value if value is not None else grid[key]
    return study.grid_models(data, pick(levels, 'levels').split(','), util.parse_int_list(pick(num_sources, 'sources')),
        util.parse_int_list(pick(per_class, 'per_class')), util.parse_int_list(pick(seeds, 'seeds')))

@click.group()
def cmdline():
    """The multi-source study: single- against multi-source models, source by source."""

@cmdline.command()
@grid_options
@click.option('--duration', help='Training images per model  [default: digits 10Ki per source; ImageNet the preset\'s]', metavar='NIMG', type=str, default=None)
@click.option('--num', help='Generated images per source for the metrics  [default: digits 100, ImageNet 5000]', metavar='INT', type=click.IntRange(min=2), default=None)
@click.option('--gpus', help='Processes per training and scoring command (torchrun)', metavar='INT', type=click.IntRange(min=1), default=1, show_default=True)
@click.option('--batch-gpu', help='Images per GPU and step (gradient accumulation)', metavar='INT', type=click.IntRange(min=1), default=None)
@click.option('--jobs', help='Models trained at the same time (on a CPU one thread each)', metavar='INT', type=click.IntRange(min=1), default=1, show_default=True)
@click.option('--workers', help='Image-decoding processes for the datasets', metavar='INT', type=click.IntRange(min=1), default=2, show_default=True)
@click.option('--resolution', help='ImageNet image size (pixels)', metavar='INT', type=click.IntRange(min=8), default=256, show_default=True)
@click.option('--vae', help='VAE for the ImageNet latents: hub name or local folder', metavar='NAME|DIR', type=str, default='stabilityai/sd-vae-ft-mse', show_default=True)
@click.option('--preset', help='Preset of every model  [default: digits edm2-digits; ImageNet edm2-img256-xs-{K}c-{N}]', metavar='NAME', type=str, default=None)
@click.option('--set', 'set_options', help='Preset override passed to train_edm2.py', metavar='KEY=VALUE', multiple=True)
@click.option('--nnodes', help='Machines that run every training and scoring command together (the same command on each)', metavar='INT', type=click.IntRange(min=1), default=1, show_default=True)
@click.option('--node-rank', help='This machine\'s rank (0 builds the data and writes the summary)', metavar='INT', type=click.IntRange(min=0), default=0, show_default=True)
@click.option('--master-addr', help='Address of node 0 (torchrun\'s static rendezvous)', metavar='HOST', type=str, default=None)
@click.option('--master-port', help='First port of the rendezvous (one more per command)', metavar='PORT', type=click.IntRange(min=1, max=65535), default=29500, show_default=True)
@click.option('--dry-run', help='List the models and exit', is_flag=True)
@util.one_line_errors
def grid(data, source, out, levels, num_sources, per_class, seeds, quick, dry_run, set_options, nnodes, node_rank, master_addr, master_port, **options):
    """Train and score every model of a grid, then write the summary."""
    if data == 'imagenet' and not source:
        raise ValueError('--source: the ImageNet training folder is needed for --data imagenet')
    if node_rank >= nnodes or (nnodes > 1 and not master_addr) or (nnodes > 1 and options['jobs'] > 1):
        raise ValueError(f'--nnodes {nnodes} --node-rank {node_rank}: the rank must be below --nnodes, and several nodes need '
            '--master-addr (node 0\'s address) and one job at a time (--jobs 1)')
    models = grid_models(data, levels, num_sources, per_class, seeds, quick)
    if dry_run:
        for model in models:
            print(f'{model["name"]}: classes {",".join(map(str, model["classes"]))}')
        return
    util.check_writable(os.path.join(out, 'study.csv'), '--out')
    nodes = dict(nnodes=nnodes, node_rank=node_rank, master_addr=master_addr, master_port=master_port)
    the_study = Study(out, data, source, train_args=[item for text in set_options for item in ['--set', text]], nodes=nodes, **options)
    the_study.run_grid(models)
    if node_rank > 0:
        print(f'Node {node_rank}: every model trained and scored; node 0 writes the summary')
        return
    print(the_study.report(models), end='')
    print(f'Wrote {the_study.path("study.csv")}, {the_study.path("study.md")} and {the_study.path("study.png")}')

@cmdline.command(name='report')
@grid_options
@util.one_line_errors
def report_command(data, source, out, levels, num_sources, per_class, seeds, quick):
    """Write the summary of the scores so far (the grid options of `grid`)."""
    print(Study(out, data, source).report(grid_models(data, levels, num_sources, per_class, seeds, quick)), end='')

#----------------------------------------------------------------------------

if __name__ == '__main__':
    cmdline() # pylint: disable=no-value-for-parameter

#----------------------------------------------------------------------------
