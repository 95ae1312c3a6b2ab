"""Files written by an earlier version of this code: tests/data/runs-1c68c62/, six short runs that
tests/data/make_old_runs.py made with the code of commit 1c68c62 (before options were renamed,
"off" became None and MAR's heads moved to training/mar_heads.py). Their training_options.json
(old option names) and training states resume with the command that started them; their
snapshots (which carry the old source) load and sample, take --opt, and give the images that
today's code makes from the same weights, bit for bit (the maths did not change)."""

import glob
import json
import os
import shutil

import numpy as np
import PIL.Image
import pytest
import torch

from helpers import TESTS, expect_cli_error, invoke, invoke_ok, write_dataset
from torch_utils import util
from training import generate
from data.make_old_runs import write_tiny_dataset # pylint: disable=import-error

RUNS = os.path.join(TESTS, 'data', 'runs-1c68c62')
with open(os.path.join(RUNS, 'commands.json')) as _f:
    COMMANDS = json.load(_f)

def snapshot_of(name):
    (path,) = glob.glob(os.path.join(RUNS, name, 'network-snapshot-*.pkl'))
    return path

@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    """The dataset the old runs trained on (make_old_runs.py's recipe)."""
    return write_tiny_dataset(str(tmp_path_factory.mktemp('old') / 'tiny.zip'), write_dataset)

def test_the_old_files_speak_the_old_names():
    # What the test data holds, so that the tests below exercise the old spellings.
    options = {name: json.load(open(os.path.join(RUNS, name, 'training_options.json')))['options'] for name in COMMANDS}
    assert options['edm2']['p_uncond'] == 0.1 and options['edm2']['fp16'] is False and 'label_dropout' not in options['edm2']
    assert options['ardm']['branch'] == 2 and options['mar-diffusion']['head_sample_steps'] == 3
    assert options['mar-diffusion']['data_bound'] == 1.0 and 'head_steps' not in options['mar-diffusion']
    source = generate.load_snapshot(snapshot_of('mar-diffusion'), verbose=False).net.head._persistent_source
    assert 'class DiffusionHead' in source and 'class MAR(' in source # The heads were in networks_mar.py then.

@pytest.mark.parametrize('name', ['edm2', 'ardm', 'mar-diffusion', 'causal-edm'])
def test_old_run_resumes_with_its_command(name, tmp_path, tiny_data):
    # The same command, run for 1Ki more images: it resumes (the old names are today's options:
    # only the duration is a change), trains on and writes today's record.
    run = tmp_path / name
    shutil.copytree(os.path.join(RUNS, name), run)
    result = invoke_ok('train_edm2', '--data', tiny_data, '--outdir', run, *COMMANDS[name], '--duration', '2Ki')
    assert 'Resuming from training-state-0000001.pt' in result.output
    assert f'Note: resuming in {run} with changed options: duration (1024 -> 2048)\n' in result.output, result.output
    assert (run / 'training-state-0000002.pt').exists() and glob.glob(str(run / 'network-snapshot-0000002*.pkl'))
    record = json.load(open(run / 'training_options.json'))
    assert record['changes'][-1]['options'] == {'duration': [1024, 2048]}
    assert 'p_uncond' not in record['options'] and 'head_sample_steps' not in record['options']

def test_old_names_on_the_command_line(tiny_data, tmp_path):
    # --set with an old name or an old "off" value means today's option.
    result = invoke_ok('train_edm2', '--data', tiny_data, '--outdir', tmp_path / 'run', '--dry-run', *COMMANDS['mar-diffusion'],
        '--set', 'data_bound=0')
    assert '"head_steps": 3' in result.output and '"data_bound": null' in result.output and 'head_sample_steps' not in result.output
    expect_cli_error(invoke('train_edm2', '--data', tiny_data, '--outdir', tmp_path / 'run', '--dry-run', '--preset', 'edm2-digits',
        '--set', 'p_uncond=0.1', '--set', 'label_dropout=0.2'), 'option "label_dropout" is given twice with different values')

@pytest.mark.parametrize('name', sorted(COMMANDS))
def test_old_snapshot_samples_as_todays_code(name):
    # The snapshot runs its own (old) source; today's class with the same arguments and weights
    # makes the same images, guided where the network can be (label dropout).
    old = generate.load_snapshot(snapshot_of(name), verbose=False)
    class_name = json.load(open(os.path.join(RUNS, name, 'training_options.json')))['config']['network_kwargs']['class_name']
    today = util.construct_class_by_name(class_name=class_name, **old.net.init_kwargs).eval()
    today.load_state_dict(old.net.state_dict())
    assert type(today).__module__ != type(old.net).__module__ # Two different sources.
    guidance = 2.0 if generate.has_unconditional_branch(old.loss_fn) else 1.0
    run = lambda net: torch.cat([batch.images for batch in generate.generate_images(net, old.encoder, seeds=range(6), batch_size=3,
        guidance=guidance, verbose=False, **({'steps': 4} if name == 'edm2' else {}))])
    images = run(old.net)
    assert torch.equal(images, run(today))
    assert len({tuple(image.flatten().tolist()) for image in images}) == 6 # Six different images: the comparison can tell.

def test_old_snapshots_take_opt(tmp_path):
    # --opt on snapshots that declare their options only by name (MAR then) or not at all (ARDM
    # then): the names and values go to their own sampler, which checks them as it did.
    out = lambda name: tmp_path / name
    invoke_ok('generate_images', '--net', snapshot_of('mar-flow-euler'), '--outdir', out('default'), '--seeds', '0-3')
    invoke_ok('generate_images', '--net', snapshot_of('mar-flow-euler'), '--outdir', out('cool'), '--seeds', '0-3', '--opt', 'temperature=0.5')
    read = lambda folder: np.stack([np.asarray(PIL.Image.open(folder / f'{seed:06d}.png')) for seed in range(4)]).astype(int)
    assert np.abs(read(out('default')) - read(out('cool'))).max() > 2
    expect_cli_error(invoke('generate_images', '--net', snapshot_of('mar-flow-euler'), '--outdir', out('x'), '--opt', 'tempo=1'),
        'sampling option "tempo" does not apply to MAR networks; their options: steps, temperature, guidance_schedule, head_steps')
    invoke_ok('generate_images', '--net', snapshot_of('ardm'), '--outdir', out('ardm'), '--seeds', '0-1', '--steps', 4, '--opt', 'policy=naive')
    expect_cli_error(invoke('generate_images', '--net', snapshot_of('ardm'), '--outdir', out('y'), '--opt', 'temperature=1'),
        'ARDM sampler: unknown options temperature')
