"""The multi-source study, end to end: does adding sources help a target source? For each target,
similarity level, number of sources K, images per source N and replicate, train a model on the
target and K - 1 companions (K = 1: the target alone), score the target at every budget of the
model, score the metric's floor, and summarize with intervals (CSV, Markdown, figure). The design
is in training/study.py and the README; the same driver runs the built-in digits (laptop-sized)
and ImageNet (the Multi-Source-GM study, on GPUs). Every step runs one of the project's
command-line tools, printed as it runs; re-running skips what is done.

    python run_study.py grid --data digits --out study-digits --jobs 2     # the default digits study
    python run_study.py grid --data digits --out quick --quick --jobs 2    # the quick one
    python run_study.py grid --data digits --out study-digits --task 7     # one model (a job-array task)
    python run_study.py report --data digits --out study-digits            # the summary so far
    python run_study.py grid --data imagenet --source /data/imagenet/train --out study --gpus 8 --batch-gpu 32

Layout of --out: study.json (the settings; a re-run with other settings is refused), data/
(training sets c{classes}-n{N}-r{replicate}.zip, and -latents), refs/ (reference statistics of
each target, from refs/images/), runs/{model}/ (train_edm2.py run directories), scores/
({model}-{budget}.jsonl, floor-t{target}-r{replicate}.jsonl), logs/, and the summary study.csv,
study.md, study.png.
"""

import concurrent.futures
import hashlib
import json
import math
import os
import subprocess
import sys
import threading
import time

import click

from torch_utils import util
from training import config
from training import presets
from training import study

ROOT = os.path.dirname(os.path.abspath(__file__))

# Digits: the whole built-in set (about 180 images per digit). A replicate's pool of each target
# is the first `pool` images of a seeded permutation of the class (its training images for every
# N <= pool); the reference is the rest of the class (about 100 images), never trained on. The
# small edm2-digits-study network, batch 64, base budget 32Ki images with a 2Ki warm-up.
# ImageNet: the Multi-Source-GM study's presets and launch settings (batch 8192; the 5-source,
# 1000-image model at 192Mi; the 10-source, 1000-image model from the -nlr run at batch 6144; a
# plain resize to 256x256), references from all images of the class, as the study has them.
PROFILES = dict(
    digits=dict(source='builtin:digits', reference='held-out', pool=80, resize=False, encode=False,
        metrics='fd_digits,kid_digits', num=300, gen=['--steps', '16'], ema='0.100', preset='edm2-digits-study',
        train=dict(batch=64, workers=0), budget='32Ki', warmup=1 / 16, arms='steps,per-source', snapshot=None,
        model_train={}),
    imagenet=dict(source=None, reference='class', pool=None, resize=True, encode=True,
        metrics='fid,kid,fd_dinov2', num=5000, gen=[], ema='0.050', preset='edm2-img256-xs-{K}c-{N}',
        train=dict(batch=8192, status='64Ki', checkpoint='64Mi'), budget=None, warmup=None, arms='preset', snapshot='16Mi',
        model_train={(5, 1000): dict(duration='192Mi'),
            (10, 1000): dict(preset='edm2-img256-xs-10c-1000-nlr', batch=6144, status='96Ki', checkpoint='96Mi')}),
)
GRIDS = dict(
    digits=dict(targets='3', levels='similar,dissimilar', sources='1,2,4', per_class='20,40', replicates='0-5'),
    quick=dict(targets='3', levels='similar,dissimilar', sources='1,2', per_class='20', replicates='0-2'),
    imagenet=dict(targets='171', levels='sim3,sim2,sim1', sources='1,3,5,10', per_class='100,500,1000', replicates='0'),
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
        launcher = [sys.executable, '-m', 'torch_utils.torchrun', f'--nnodes={nodes["nnodes"]}', f'--node-rank={nodes["node_rank"]}',
            f'--master-addr={nodes["master_addr"]}', f'--master-port={nodes["master_port"] + job}', f'--nproc_per_node={gpus}', '--']
    elif gpus > 1:
        launcher = [sys.executable, '-m', 'torch_utils.torchrun', '--standalone', f'--nproc_per_node={gpus}', '--']
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

def ensure(path, build):
    """Run `build` unless `path` exists. Tasks of a job array may build the same file at once:
    a build that fails because another one finished first counts as done."""
    if os.path.exists(path):
        return False
    try:
        build()
    except ChildProcessError:
        if not os.path.exists(path):
            raise
    return True

#----------------------------------------------------------------------------

class Study:
    """The files and steps of one study under `out` (see the module docstring)."""
    def __init__(self, out, data, grid, source=None, resolution=256, vae='stabilityai/sd-vae-ft-mse', preset=None,
            budget=None, num=None, gpus=1, batch_gpu=None, jobs=1, workers=2, set_options=(), nodes=None):
        self.out, self.data, self.grid, self.gpus, self.batch_gpu, self.jobs, self.workers = out, data, grid, gpus, batch_gpu, jobs, workers
        # Several machines: every node runs the same grid; node 0 builds the data and writes the
        # summary, the others wait for its files and join every training and scoring command.
        self.nodes = nodes or dict(nnodes=1, node_rank=0)
        self.torchrun_jobs = 0
        self.profile = PROFILES[data]
        self.source = source or self.profile['source']
        self.resolution = resolution if self.profile['resize'] else None
        self.resize = ['--transform', 'none', '--resolution', f'{resolution}x{resolution}'] if self.profile['resize'] else []
        self.vae, self.preset = vae, preset or self.profile['preset']
        self.budget = util.parse_nimg(budget or self.profile['budget']) if (budget or self.profile['budget']) else None
        self.arms = grid['arms']
        self.num = num or self.profile['num']
        self.set_options = list(set_options)
        self.pool = self.profile['pool'] and max(self.profile['pool'], max(grid['per_class']))
        # CPU threads per command: the user's OMP_NUM_THREADS, else the cores shared out between
        # the jobs (torch slows down many times over when its threads outnumber free cores).
        self.threads = os.environ.get('OMP_NUM_THREADS') or (max(1, (os.cpu_count() or 1) // jobs) if gpus == 1 else None)

    def path(self, *parts):
        return os.path.join(self.out, *parts)

    #------------------------------------------------------------------------
    # What produces the scores. A study folder holds the results of one set of settings:
    # study.json records them and a re-run with others is refused; every score carries their digest.

    def settings(self):
        return dict(data=self.data, source=self.source, preset=self.preset, set_options=self.set_options, budget=self.budget,
            warmup=self.profile['warmup'], num=self.num, metrics=self.profile['metrics'], sampler=self.profile['gen'],
            ema=self.profile['ema'], reference=self.profile['reference'], pool=self.pool, resolution=self.resolution,
            vae=self.vae if self.profile['encode'] else None)

    def digest(self):
        return hashlib.sha1(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()[:12]

    def check_settings(self, write=False):
        """Refuse an --out made with other settings; record them (write=True) for a new one."""
        path = self.path('study.json')
        if os.path.exists(path):
            with open(path) as f:
                recorded = json.load(f).get('settings', {})
            changed = {key: (recorded.get(key), value) for key, value in self.settings().items() if recorded.get(key) != value}
            if changed:
                what = '; '.join(f'{key} was {old!r}, now {new!r}' for key, (old, new) in changed.items())
                raise ValueError(f'--out {self.out} holds a study made with other settings ({what}); its scores would be '
                    'mixed with these: choose another --out, or remove the folder to start over')
        elif write:
            os.makedirs(self.out, exist_ok=True)
            study.write_text(path, json.dumps(dict(settings=self.settings(), digest=self.digest()), indent=2) + '\n')

    #------------------------------------------------------------------------
    # Models and their budgets.

    def model_preset(self, model):
        preset = self.profile['model_train'].get((model['K'], model['N']), {}).get('preset', self.preset)
        return preset.format(K=model['K'], N=model['N'])

    def preset_duration(self, model):
        duration = self.profile['model_train'].get((model['K'], model['N']), {}).get('duration')
        return util.parse_nimg(duration) if duration else presets.resolve(self.model_preset(model)).duration

    def budgets(self, model):
        """{budget name: images} at which the model is scored (study.budgets)."""
        return study.budgets(model['K'], self.arms, self.budget, self.preset_duration(model) if 'preset' in self.arms else None)

    def snapshot_interval(self, model):
        """A snapshot at every budget (and at the profile's interval, for long runs), in whole
        batches: the greatest common divisor of them all, raised to a multiple of the model's
        batch (the 10-source -nlr model trains at batch 6144, of which 16Mi is not a multiple)."""
        points = list(self.budgets(model).values())
        interval = math.gcd(*points, *([util.parse_nimg(self.profile['snapshot'])] if self.profile['snapshot'] else []))
        batch = self.model_batch(model)
        return math.lcm(interval, batch) if batch else interval

    def user_options(self):
        """The study's --set KEY=VALUE as {name: value}: they override its own settings."""
        return dict(util.parse_assignment(text, '--set') for text in self.set_options)

    def model_batch(self, model):
        """The model's batch size: --set batch, else the profile's for its (K, N), else the profile's."""
        batch = self.user_options().get('batch', self.profile['model_train'].get((model['K'], model['N']), {}).get('batch', self.profile['train'].get('batch')))
        return batch if isinstance(batch, int) and batch > 0 else None # Anything else: refused by validate().

    def snapshot(self, model, nimg):
        return self.path('runs', model['name'], f'network-snapshot-{nimg // 1000:07d}-{self.profile["ema"]}.pkl')

    def train_options(self, model):
        """The model's train_edm2.py options ({option: value}, all named as preset options) and
        its --set overrides: one run to its longest budget, a snapshot at each."""
        duration = max(self.budgets(model).values())
        options = dict(seed=model['replicate'], status=self.snapshot_interval(model))
        options.update(self.profile['train'])
        options.update({k: v for k, v in self.profile['model_train'].get((model['K'], model['N']), {}).items() if k != 'preset'})
        options.update(duration=duration, snapshot=self.snapshot_interval(model), checkpoint=options.get('checkpoint', duration))
        options.update(batch_gpu=self.batch_gpu) if self.batch_gpu else None
        # A --set of an option passed here as a flag replaces its value (train_edm2.py refuses a
        # flag and a --set that disagree); the others go on as --set.
        user = self.user_options()
        options.update({key: value for key, value in user.items() if key in options})
        overrides = [f'rampup={self.budget * self.profile["warmup"] / 1e6:g}'] if self.profile['warmup'] and self.budget else [] # Millions of images.
        overrides += [f'vae={self.vae}'] if self.profile['encode'] else [] # Decodes the snapshot's samples.
        return options, overrides + [text for text in self.set_options if util.parse_assignment(text, '--set')[0] not in options]

    def training_command(self, model):
        options, overrides = self.train_options(model)
        return tool('train_edm2.py', '--preset', self.model_preset(model), '--data', self.dataset(model['classes'], model['N'], model['replicate'], latents=self.profile['encode']),
            '--outdir', self.path('runs', model['name']), *[a for key, value in options.items() for a in [f'--{key.replace("_", "-")}', value]],
            *[a for text in overrides for a in ['--set', text]], gpus=self.gpus, nodes=self.nodes, job=self.torchrun_jobs)

    def validate(self, models):
        """Every model's training options resolve and fit together (preset, --set, budgets,
        batch), before anything is built: what train_edm2.py would refuse is refused now."""
        for model in models:
            options, overrides = self.train_options(model)
            try:
                opts = presets.resolve(self.model_preset(model), dict(options, **dict(util.parse_assignment(text, '--set') for text in overrides)))
                config.check_options(opts, self.gpus)
            except ValueError as e:
                raise ValueError(f'{model["name"]}: {e}') from None

    #------------------------------------------------------------------------
    # Files.

    def dataset(self, classes, n, replicate, latents=False):
        return self.path('data', f'c{"-".join(map(str, classes))}-n{n}-r{replicate}{"-latents" if latents else ""}.zip')

    def reference(self, target, replicate):
        """Held-out (digits): the target's images outside the replicate's pool; class
        (ImageNet, as the study): every image of the class, for every replicate."""
        if self.profile['reference'] == 'held-out':
            return self.path('refs', f't{target}-p{self.pool}-r{replicate}.pkl')
        return self.path('refs', f't{target}.pkl')

    def floor_scores(self, target, replicate):
        return self.path('scores', f'floor-t{target}-r{replicate}.jsonl')

    def scores(self, model, budget):
        return self.path('scores', f'{model["name"]}-{budget}.jsonl')

    #------------------------------------------------------------------------
    # Steps; each skips what exists.

    def build_dataset(self, classes, n, replicate):
        """N images per source, drawn with data seed `replicate` (a source has the same images in
        every model of the replicate, and the N = 20 images are part of the N = 40 ones)."""
        ensure(self.dataset(classes, n, replicate), lambda: run(tool('dataset_tool.py', 'convert', '--source', self.source,
            '--dest', self.dataset(classes, n, replicate), *self.resize, '--classes', ','.join(map(str, classes)), '--per-class', n,
            '--seed', replicate, '--workers', self.workers)))
        if self.profile['encode']:
            ensure(self.dataset(classes, n, replicate, latents=True), lambda: run(tool('dataset_tool.py', 'encode',
                '--source', self.dataset(classes, n, replicate), '--dest', self.dataset(classes, n, replicate, latents=True), '--model-url', self.vae)))

    def build_reference(self, target, replicate):
        """The target's reference statistics and, from its pool of real training images, the
        floor of every metric at the evaluation's sample size."""
        ref = self.reference(target, replicate)
        images = self.path('refs', 'images', os.path.basename(ref)[:-len('.pkl')] + '.zip')
        held_out = ['--per-class', self.pool, '--seed', replicate, '--held-out'] if self.profile['reference'] == 'held-out' else []
        if not os.path.exists(ref):
            ensure(images, lambda: run(tool('dataset_tool.py', 'convert', '--source', self.source, '--dest', images, *self.resize,
                '--classes', target, *held_out, '--workers', self.workers)))
            ensure(ref, lambda: run(tool('calculate_metrics.py', 'ref', '--data', images, '--dest', ref, '--metrics', self.profile['metrics'], '--workers', 0)))
        pool = self.pool or max(self.grid['per_class'])
        self.build_dataset([target], pool, replicate)
        results = self.floor_scores(target, replicate)
        def floor():
            with util.atomic_path(results) as tmp:
                run(tool('calculate_metrics.py', 'floor', '--data', self.dataset([target], pool, replicate), '--ref', ref,
                    '--metrics', self.profile['metrics'], '--num', self.num, '--draws', 20, '--seed', replicate, '--workers', 0,
                    '--results', tmp, '--tag', f'kind=floor target={target} replicate={replicate} settings={self.digest()}'))
        ensure(results, floor)

    def train(self, model, log=None):
        if all(os.path.exists(self.snapshot(model, nimg)) for nimg in self.budgets(model).values()):
            return False
        run(self.training_command(model), log, self.threads)
        self.torchrun_jobs += 1 # Each command of several nodes meets on a port of its own.
        return True

    def score(self, model, log=None):
        """The target at every budget of the model: scores/{model}-{budget}.jsonl, written under a
        temporary name until complete."""
        did = False
        for budget, nimg in self.budgets(model).items():
            results = self.scores(model, budget)
            if os.path.exists(results):
                continue
            tags = (f'kind={model["kind"]} target={model["target"]} level={model["level"] or "-"} K={model["K"]} N={model["N"]} '
                f'replicate={model["replicate"]} budget={budget} nimg={nimg} model={model["name"]} settings={self.digest()}')
            args = ['gen', '--net', self.snapshot(model, nimg), '--class', f'id:{model["target"]}', '--ref', self.reference(model['target'], model['replicate']),
                '--metrics', self.profile['metrics'], '--num', self.num, *self.profile['gen'], '--tag', tags]
            if self.nodes['node_rank'] > 0: # Global rank 0 is on node 0: it writes the results.
                run(tool('calculate_metrics.py', *args, gpus=self.gpus, nodes=self.nodes, job=self.torchrun_jobs), log, self.threads)
            else:
                with util.atomic_path(results) as tmp:
                    run(tool('calculate_metrics.py', *args, '--results', tmp, gpus=self.gpus, nodes=self.nodes, job=self.torchrun_jobs), log, self.threads)
            self.torchrun_jobs += 1
            did = True
        return did

    #------------------------------------------------------------------------

    def prepare(self, models):
        """References, floors and datasets the models need, each once (node 0; the other nodes
        wait for them)."""
        if self.nodes['node_rank'] > 0:
            wait_for([self.floor_scores(m['target'], m['replicate']) for m in models] +
                [self.dataset(m['classes'], m['N'], m['replicate'], latents=self.profile['encode']) for m in models])
            return
        with concurrent.futures.ThreadPoolExecutor(self.jobs) as pool: # list(): re-raise the first failure.
            list(pool.map(lambda key: self.build_reference(*key), sorted({(m['target'], m['replicate']) for m in models})))
            list(pool.map(lambda key: self.build_dataset(*key), {(tuple(m['classes']), m['N'], m['replicate']) for m in models}))

    def train_and_score(self, model, log=None):
        return [what for what, step in [('trained', self.train), ('scored', self.score)] if step(model, log)]

    def run_grid(self, models):
        say(f'Working directory: {os.getcwd()}')
        say(f'Study in {self.out} ({self.data}): {sum(m["kind"] == "multi" for m in models)} multi-source and '
            f'{sum(m["kind"] == "single" for m in models)} single-source models, {self.jobs} at a time')
        self.prepare(models)
        start, done = time.time(), []
        def one(model):
            began = time.time()
            did = self.train_and_score(model, self.path('logs', f'{model["name"]}.log') if self.jobs > 1 else None)
            with _print_lock:
                done.append(model)
                elapsed = time.time() - start
                eta = elapsed / len(done) * (len(models) - len(done))
                print(f'[model {len(done)}/{len(models)}] {model["name"]}: {" and ".join(did) or "already done"} in '
                    f'{util.format_time(time.time() - began)}; elapsed {util.format_time(elapsed)}, ETA {util.format_time(eta)}', flush=True)
        # Longest first, so that no job is left with a long model when the others are done.
        by_cost = sorted(models, key=lambda m: -max(self.budgets(m).values()))
        with concurrent.futures.ThreadPoolExecutor(self.jobs) as pool:
            for future in [pool.submit(one, model) for model in by_cost]:
                future.result()

    #------------------------------------------------------------------------

    def records(self, models):
        """(study.csv rows, [what is missing]). A score made with other settings is refused."""
        rows, missing = [], []
        def read(path, what):
            if not os.path.exists(path):
                missing.append(what)
                return []
            with open(path) as f:
                records = [json.loads(line) for line in f if line.strip()]
            if not records:
                missing.append(f'{what} (empty {path})')
            for r in records:
                if r.get('settings') != self.digest():
                    raise ValueError(f'{path} was made with other settings than this study\'s (study.json); remove it to redo it')
            return records
        for target, replicate in sorted({(m['target'], m['replicate']) for m in models}):
            for r in read(self.floor_scores(target, replicate), f'floor of target {target}, replicate {replicate}'):
                rows.append(dict(target=target, replicate=replicate, kind='floor', level=None, K=None, N=None, budget=None, nimg=None,
                    metric=r['metric'], value=r['value']))
        for model in models:
            for budget, nimg in self.budgets(model).items():
                for r in read(self.scores(model, budget), f'{model["name"]} at its {budget} budget'):
                    rows.append(dict(target=model['target'], replicate=model['replicate'], kind=model['kind'], level=model['level'],
                        K=model['K'], N=model['N'], budget=budget, nimg=nimg, metric=r['metric'], value=r['value']))
        return rows, missing

    def report(self, models):
        """study.csv (every score), study.md (the comparisons, convergence, predictions) and
        study.png; returns (the Markdown, [what is missing])."""
        rows, missing = self.records(models)
        if not rows:
            raise ValueError(f'--out {self.out}: no scores yet (scores/*.jsonl); run the grid first')
        metrics = [m for m in self.profile['metrics'].split(',') if any(r['metric'] == m for r in rows)]
        text = study.markdown(rows, metrics, self.grid)
        if missing:
            text = f'INCOMPLETE: {len(missing)} scores missing: {"; ".join(missing)}\n\n' + text
        study.write_csv(rows, self.path('study.csv'))
        study.write_text(self.path('study.md'), text)
        study.plot(rows, metrics, self.grid, self.path('study.png'))
        return text, missing

#----------------------------------------------------------------------------

def study_options(fn):
    """The options of `grid` and `report`: the grid, the settings (recorded in study.json), and
    how to run it (ignored by `report`)."""
    for option in reversed([
        click.option('--data', help='Dataset of the study', type=click.Choice(sorted(PROFILES)), required=True),
        click.option('--out', help='Folder of the study (created; re-running resumes)', metavar='DIR', type=str, required=True),
        click.option('--targets', help='Target sources (original class ids), each its own comparison  [default: digits 3, ImageNet 171]', metavar='LIST', type=str, default=None),
        click.option('--levels', help='Similarity levels  [default: digits similar,dissimilar; ImageNet sim3,sim2,sim1]', metavar='LIST', type=str, default=None),
        click.option('--sources', 'num_sources', help='Numbers of sources K, 1 = the target alone  [default: digits 1,2,4]', metavar='LIST', type=str, default=None),
        click.option('--per-class', help='Images per source N  [default: digits 20,40]', metavar='LIST', type=str, default=None),
        click.option('--replicates', help='Replicates, each its own data draw and training seed  [default: digits 0-5]', metavar='LIST', type=str, default=None),
        click.option('--arms', help='Budget arms: steps, per-source, preset  [default: digits steps,per-source; ImageNet preset]', metavar='LIST', type=str, default=None),
        click.option('--quick', help='The quick digits study (target 3, K 1 and 2, N 20, replicates 0-2)', is_flag=True),
        # Settings: a study folder holds one set of them (study.json).
        click.option('--source', help='ImageNet training folder (synset subfolders)  [imagenet only]', metavar='DIR', type=str, default=None),
        click.option('--budget', help='Base budget B of the steps and per-source arms (images)  [default: digits 32Ki]', metavar='NIMG', type=str, default=None),
        click.option('--num', help='Generated images of the target per score  [default: digits 300, ImageNet 5000]', metavar='INT', type=click.IntRange(min=2), default=None),
        click.option('--preset', help='Preset of every model  [default: digits edm2-digits-study; ImageNet edm2-img256-xs-{K}c-{N}]', metavar='NAME', type=str, default=None),
        click.option('--set', 'set_options', help='Preset override passed to train_edm2.py', metavar='KEY=VALUE', multiple=True),
        click.option('--resolution', help='ImageNet image size (pixels)  [default: 256]', metavar='INT', type=click.IntRange(min=8), default=None),
        click.option('--vae', help='VAE for the ImageNet latents: hub name or local folder  [default: stabilityai/sd-vae-ft-mse]', metavar='NAME|DIR', type=str, default=None),
        # How to run it.
        click.option('--gpus', help='Processes per training and scoring command (torchrun)', metavar='INT', type=click.IntRange(min=1), default=1, show_default=True),
        click.option('--batch-gpu', help='Images per GPU and step (gradient accumulation)', metavar='INT', type=click.IntRange(min=1), default=None),
        click.option('--jobs', help='Models trained at the same time (on a CPU one thread each)', metavar='INT', type=click.IntRange(min=1), default=1, show_default=True),
        click.option('--workers', help='Image-decoding processes for the datasets', metavar='INT', type=click.IntRange(min=1), default=2, show_default=True),
        click.option('--nnodes', help='Machines that run every training and scoring command together (the same command on each)', metavar='INT', type=click.IntRange(min=1), default=1, show_default=True),
        click.option('--node-rank', help='This machine\'s rank (0 builds the data and writes the summary)', metavar='INT', type=click.IntRange(min=0), default=0, show_default=True),
        click.option('--master-addr', help='Address of node 0 (torchrun\'s static rendezvous)', metavar='HOST', type=str, default=None),
        click.option('--master-port', help='First port of the rendezvous (one more per command)', metavar='PORT', type=click.IntRange(min=1, max=65535), default=29500, show_default=True),
    ]):
        fn = option(fn)
    return fn

def make_grid(data, targets, levels, num_sources, per_class, replicates, arms, quick):
    """The grid's lists (levels ordered from the most to the least similar) and its models."""
    if quick and data != 'digits':
        raise ValueError('--quick: the quick grid is for --data digits')
    defaults = GRIDS['quick' if quick else data]
    pick = lambda value, key: value if value is not None else defaults[key]
    level_list = [study.canonical_level(data, level) for level in pick(levels, 'levels').split(',')]
    order = study.level_names(data)
    grid = dict(targets=util.parse_int_list(pick(targets, 'targets')), levels=sorted(set(level_list), key=order.index),
        num_sources=util.parse_int_list(pick(num_sources, 'sources')), per_class=sorted(set(util.parse_int_list(pick(per_class, 'per_class')))),
        replicates=util.parse_int_list(pick(replicates, 'replicates')), arms=(arms or PROFILES[data]['arms']).split(','))
    unknown = [arm for arm in grid['arms'] if arm not in study.ARMS]
    if unknown:
        raise ValueError(f'--arms: unknown arm {unknown[0]!r}; choose from {", ".join(study.ARMS)}')
    if 1 not in grid['num_sources']:
        raise ValueError('--sources: must include 1 (the single-source model every comparison is against)')
    pool = PROFILES[data]['pool']
    if pool and max(grid['per_class']) > pool:
        raise ValueError(f'--per-class {max(grid["per_class"])}: at most {pool} (the images of a target that are never in its reference)')
    return grid, study.grid_models(data, grid['targets'], grid['levels'], grid['num_sources'], grid['per_class'], grid['replicates'])

def open_study(data, out, targets, levels, num_sources, per_class, replicates, arms, quick, nnodes, node_rank, master_addr, master_port,
        recorded=None, **options):
    """(Study, models) from the command line; `recorded` (study.json's settings) fills in the
    settings options that were not given."""
    if node_rank >= nnodes or (nnodes > 1 and not master_addr) or (nnodes > 1 and options['jobs'] > 1):
        raise ValueError(f'--nnodes {nnodes} --node-rank {node_rank}: the rank must be below --nnodes, and several nodes need '
            '--master-addr (node 0\'s address) and one job at a time (--jobs 1)')
    if recorded:
        for key in ['source', 'budget', 'num', 'preset', 'resolution', 'vae']:
            options[key] = options[key] if options[key] is not None else recorded.get(key)
        options['set_options'] = options['set_options'] or recorded.get('set_options', ())
    if data == 'imagenet' and not options['source']:
        raise ValueError('--source: the ImageNet training folder is needed for --data imagenet')
    the_grid, models = make_grid(data, targets, levels, num_sources, per_class, replicates, arms, quick)
    nodes = dict(nnodes=nnodes, node_rank=node_rank, master_addr=master_addr, master_port=master_port)
    options.update(resolution=options['resolution'] or 256, vae=options['vae'] or 'stabilityai/sd-vae-ft-mse')
    return Study(out, data, the_grid, nodes=nodes, **options), models

@click.group()
def cmdline():
    """The multi-source study: does training on more sources help a target source?"""

@cmdline.command()
@study_options
@click.option('--task', help='Run only this model (0-based, in --dry-run order) and what it needs: one task of a job array', metavar='INT', type=click.IntRange(min=0), default=None)
@click.option('--dry-run', help='Check every option, list the models (index, name, sources, budgets) and exit', is_flag=True)
@util.one_line_errors
def grid(task, dry_run, **options):
    """Train and score every model of a grid (or one, --task), then write the summary."""
    the_study, models = open_study(**options)
    the_study.validate(models)
    if task is not None and task >= len(models):
        raise ValueError(f'--task {task}: the grid has {len(models)} models (0..{len(models) - 1})')
    the_study.check_settings()
    if dry_run:
        for index, model in enumerate(models):
            points = ', '.join(f'{name} {util.format_nimg(nimg)}' for name, nimg in the_study.budgets(model).items())
            every = util.format_nimg(the_study.snapshot_interval(model))
            print(f'{index}: {model["name"]}: sources {",".join(map(str, model["classes"]))}; scored at {points}; snapshots every {every}')
        return
    util.check_writable(the_study.path('study.csv'), '--out')
    if the_study.nodes['node_rank'] == 0:
        the_study.check_settings(write=True)
    if task is not None:
        model = models[task]
        say(f'Working directory: {os.getcwd()}\nTask {task} of {len(models)}: {model["name"]}')
        the_study.prepare([model])
        did = the_study.train_and_score(model)
        say(f'Task {task}: {model["name"]} {" and ".join(did) or "already done"}; `run_study.py report` with the same options summarizes')
        return
    the_study.run_grid(models)
    if the_study.nodes['node_rank'] > 0:
        print(f'Node {the_study.nodes["node_rank"]}: every model trained and scored; node 0 writes the summary')
        return
    text, _missing = the_study.report(models)
    print(text, end='')
    print(f'Wrote {the_study.path("study.csv")}, {the_study.path("study.md")} and {the_study.path("study.png")}')

@cmdline.command(name='report')
@study_options
@util.one_line_errors
def report_command(**options):
    """Write the summary of the scores so far: study.csv, study.md, study.png. Takes the options
    of `grid` (the ones that run models are ignored; settings not given are study.json's); lists
    what is missing and exits with 1 while anything is."""
    path = os.path.join(options['out'], 'study.json')
    if not os.path.exists(path):
        raise ValueError(f'--out {options["out"]}: no study here (no study.json); run the grid first')
    with open(path) as f:
        recorded = json.load(f)['settings']
    the_study, models = open_study(recorded=recorded, **options)
    the_study.check_settings()
    text, missing = the_study.report(models)
    print(text, end='')
    if missing:
        raise SystemExit(f'Incomplete: {len(missing)} scores missing (listed at the top of the report)')

#----------------------------------------------------------------------------

if __name__ == '__main__':
    cmdline() # pylint: disable=no-value-for-parameter

#----------------------------------------------------------------------------
