"""training/presets.py and training/config.py: a preset plus overrides becomes the complete,
checked arguments of training_loop(); every inconsistency is a ValueError naming the option,
raised before anything is written."""

import inspect
import re

import numpy as np
import pytest

from helpers import write_dataset
from training import config
from training import presets
from training import training_loop

def test_build_gives_every_loop_argument(tiny_zip):
    opts, c = config.build('edm2-digits', dict(duration='2Ki', batch=64, channels=16, channel_mult=[1, 1]), data=tiny_zip)
    assert opts.family == 'edm2' and opts.duration == 2048 and opts.channels == 16
    loop_params = inspect.signature(training_loop.training_loop).parameters
    assert set(c) <= set(loop_params) and set(loop_params) - set(c) == {'run_dir', 'run_id', 'on_resumed', 'slice_nimg', 'force_finite', 'keep_checkpoints', 'device'}
    # What the preset decides, the loop requires: it keeps no defaults of its own for it.
    assert {name for name, param in loop_params.items() if param.default is inspect.Parameter.empty} == set(c) | {'run_dir'}
    # batch_gpu as the loop uses it: per process and round (the option's 0 = the whole per-process batch).
    assert (c.total_nimg, c.batch_size, c.batch_gpu, c.status_nimg, c.snapshot_nimg) == (2048, 64, 64, 8 << 10, 64 << 10)
    assert c.network_kwargs == dict(class_name='training.networks_edm2.Precond', model_channels=16, channel_mult=[1, 1],
        num_blocks=2, attn_resolutions=[4], dropout=0.0, sigma_data=0.5, use_fp16=True)
    assert c.encoder_kwargs == dict(class_name='training.encoders.StandardRGBEncoder') # uint8 data: pixels.
    assert c.lr_kwargs == dict(func_name='training.networks_edm2.learning_rate_schedule', ref_lr=0.01, ref_batches=1000, rampup_Mimg=0.01)
    assert c.dataset_kwargs == dict(class_name='training.dataset.ImageFolderDataset', path=tiny_zip, use_labels=True, xflip=False, cache=True)

def test_values_are_checked_against_the_defaults_types():
    opts = presets.resolve('edm2-digits', dict(lr=1, dropout=0, ema_stds=[0.05, 1], duration='1.5Ki', snapshot=0))
    assert opts.lr == 1.0 and isinstance(opts.lr, float) and opts.ema_stds == [0.05, 1.0] and opts.duration == 1536
    for overrides, message in [
            (dict(num_blocks='abc'), 'option "num_blocks" expects an integer'),
            (dict(lr='fast'), 'option "lr" expects a number'),
            (dict(channels=2.5), 'option "channels" expects an integer'),
            (dict(channels=True), 'option "channels" expects an integer'),
            (dict(xflip=1), 'option "xflip" expects True or False'),
            (dict(channel_mult=3), 'option "channel_mult" expects a list'),
            (dict(channel_mult=[1, 'x']), 'option "channel_mult" expects an integer'),
            (dict(duration='5X'), 'option "duration": Invalid image count'),
            (dict(levels=4), 'option "levels" does not apply to preset "edm2-digits" (family edm2)')]:
        with pytest.raises(ValueError, match=re.escape(message)):
            presets.resolve('edm2-digits', overrides)
    with pytest.raises(ValueError, match='unknown preset "nope"'):
        presets.resolve('nope')

@pytest.mark.parametrize('overrides, world_size, message', [
    (dict(batch=0), 1, 'batch and duration must be at least 1'),
    (dict(lr=0.0), 1, 'lr must be positive'),
    (dict(batch=100, batch_gpu=30), 1, 'batch 100 is not divisible by 1 processes x batch-gpu 30'),
    (dict(batch=64), 3, 'batch 64 is not divisible by 3 processes'),
    (dict(batch=64, duration=1000), 1, 'duration: 1000 images is not a multiple of the batch size 64'),
    (dict(batch=64, checkpoint=100), 1, 'checkpoint: 100 images'),
    (dict(channel_mult=[1, 2, 2, 2, 2]), 1, 'channel_mult has 5 resolution levels, too many for 4x4'),
    (dict(label_dropout=1.0), 1, 'label_dropout must be in'),
    (dict(p_uncond=1.0), 1, 'label_dropout must be in'), # The old name.
    (dict(lr_schedule='cosine'), 1, 'lr_schedule "cosine" is not an EDM2 schedule'),
    (dict(ema_stds=[0.5]), 1, 'EMA std must be in'),
])
def test_inconsistent_options_are_value_errors(tiny_zip, overrides, world_size, message):
    with pytest.raises(ValueError, match=message):
        config.build('edm2-digits', overrides, data=tiny_zip, world_size=world_size)

@pytest.mark.parametrize('family', sorted(presets.FAMILIES))
def test_every_checked_option_is_checked(family, tiny_zip):
    # presets.check_value leaves the options of CHECKED_OPTIONS to their own check: each must
    # really refuse a negative value, with its own message.
    name = dict(edm2='edm2-digits', ardm='ardm-digits', mar='mar-digits')[family]
    small = dict(batch=64, duration='2Ki', channel_mult=[1, 1]) if family == 'edm2' else dict(batch=64, duration='2Ki')
    checked = sorted(presets.CHECKED_OPTIONS | presets.FAMILIES[family].CHECKED_OPTIONS)
    assert checked
    for option in checked:
        value = [-1] if isinstance(presets.defaults(family)[option], list) else -1
        with pytest.raises(ValueError) as error:
            config.build(name, dict(small, **{option: value}), data=tiny_zip)
        assert option in str(error.value) and f'option "{option}"' not in str(error.value), (option, str(error.value))

class DividesByZero:
    def __init__(self, **kwargs):
        self.groups = kwargs['img_channels'] // 0

def test_an_arithmetic_error_building_the_network_is_a_value_error(tiny_zip):
    # Whatever a network's own checks miss (a size that divides by zero) is still one message.
    opts, loop_kwargs = config.build('edm2-digits', dict(batch=64, duration='2Ki', channel_mult=[1, 1]), data=tiny_zip)
    loop_kwargs.network_kwargs = dict(class_name=f'{__name__}.DividesByZero')
    dataset = config.open_dataset(loop_kwargs.dataset_kwargs, opts.cond)
    with pytest.raises(ValueError, match=r'the network cannot be built for 1x4x4 inputs and 3 classes: integer division or modulo by zero'):
        config.check_network(loop_kwargs, dataset)

def test_batch_split_over_processes_and_rounds(tiny_zip):
    _, c = config.build('edm2-digits', dict(batch=64, batch_gpu=8, duration='1Ki', status='1Ki'), data=tiny_zip, world_size=4)
    assert c.batch_size == 64 and c.batch_gpu == 8 # 4 processes x 2 rounds x 8 images.
    config.check_slice(128, 64)
    with pytest.raises(ValueError, match='slice: 100 images'):
        config.check_slice(100, 64)

def test_dataset_problems_name_the_file(tmp_path, tiny_zip):
    with pytest.raises(ValueError, match='--data .*missing.zip'):
        config.build('edm2-digits', data=str(tmp_path / 'missing.zip'))
    unlabeled = write_dataset(tmp_path / 'unlabeled.zip', np.zeros([4, 4, 4], dtype=np.uint8))
    with pytest.raises(ValueError, match='has no labels.*--uncond'):
        config.build('edm2-digits', data=unlabeled)
    _, c = config.build('edm2-digits', dict(cond=False), data=unlabeled)
    assert c.dataset_kwargs['use_labels'] is False

@pytest.mark.parametrize('name', sorted(presets.PRESETS))
def test_every_preset_builds_on_digits_sized_data(name, tiny_zip):
    # Family, loss, optimizer, schedule and EMA of every preset; the network's shape is checked
    # on the meta device for 4x4 data when the preset's architecture fits it.
    opts = presets.resolve(name)
    family = presets.family_kwargs(opts)
    network = {'edm2': 'Precond', 'ardm': 'ARDMNet', 'mar': {'random': 'MAR', 'raster': 'CausalAR'}.get(opts.get('order'))}[opts.family]
    assert family['network_kwargs']['class_name'] == f'training.networks_{opts.family}.{network}'
    if opts.family == 'ardm' or name.endswith('digits') or '-digits-' in name:
        config.build(name, dict(channel_mult=[1, 1]) if opts.family == 'edm2' else {}, data=tiny_zip)
