"""dataset_tool.py end to end through its command line: round trips from every kind of source,
transforms against plain PIL, class selection and relabelling, reproducible bytes, every bad
input, and encode/decode with a tiny VAE. Inputs are generated in the test."""

import collections
import functools
import gzip
import io
import json
import os
import pickle
import subprocess
import tarfile
import zipfile
import numpy as np
import PIL.Image
import pytest
import sklearn.datasets
import torch

import dataset_tool
from training import imagenet
from helpers import expect_cli_error, invoke, invoke_ok, read_zip, save_image, save_tiny_vae

#----------------------------------------------------------------------------
# Helpers.

run = functools.partial(invoke, dataset_tool.cmdline)
ok = functools.partial(invoke_ok, dataset_tool.cmdline)

def make_class_folder(root, counts={'cat': 6, 'dog': 4, 'emu': 5}):
    """One folder per class; image j of class i is the constant colour (i, j, 200)."""
    for i, (name, n) in enumerate(counts.items()):
        for j in range(n):
            save_image(os.path.join(root, name, f'{j:03d}.png'), np.full([8, 8, 3], [i, j, 200], dtype=np.uint8))
    return str(root)

def identities(images):
    return [tuple(int(v) for v in image[0, 0, :2]) for image in images]

def sources(*entries):
    return [dict(label=label, name=name, original_id=original_id) for label, name, original_id in entries]

def listing(folder):
    return sorted(os.listdir(folder))

#----------------------------------------------------------------------------
# Built-in digits.

def digits_pixels():
    digits = sklearn.datasets.load_digits()
    return np.round(digits.images * 255 / 16).astype(np.uint8), digits.target

def test_digits_round_trip(tmp_path):
    ok('convert', '--source=builtin:digits', f'--dest={tmp_path / "d.zip"}', '--workers=2')
    images, labels, metadata = read_zip(tmp_path / 'd.zip')
    expected_images, expected_labels = digits_pixels()
    assert len(images) == 1797 and images[0].shape == (8, 8) # One channel: grayscale PNG.
    np.testing.assert_array_equal(np.stack(images), expected_images)
    assert labels == expected_labels.tolist()
    assert metadata['sources'] == sources(*[(c, str(c), c) for c in range(10)])

def test_digits_split_is_a_fixed_stratified_partition(tmp_path):
    ok('convert', '--source=builtin:digits-train', f'--dest={tmp_path / "train.zip"}')
    ok('convert', '--source=builtin:digits-test', f'--dest={tmp_path / "test.zip"}')
    train_images, train_labels, _ = read_zip(tmp_path / 'train.zip')
    test_images, test_labels, _ = read_zip(tmp_path / 'test.zip')
    all_images, all_labels = digits_pixels()
    def bag(images, labels):
        return collections.Counter((image.tobytes(), int(label)) for image, label in zip(images, labels))
    assert bag(train_images, train_labels) + bag(test_images, test_labels) == bag(all_images, all_labels)
    class_sizes = np.bincount(all_labels)
    assert np.array_equal(np.bincount(test_labels), np.round(class_sizes * 0.2).astype(int))
    assert len(test_images) == 359 and len(train_images) == 1438

#----------------------------------------------------------------------------
# Transforms: pixels equal plain PIL operations.

def reference_transform(image, transform, w, h):
    if transform == 'none':
        return image.resize((w, h), PIL.Image.Resampling.LANCZOS)
    if transform == 'center-crop':
        c = min(image.size)
        left, top = (image.width - c) // 2, (image.height - c) // 2
        return image.crop((left, top, left + c, top + c)).resize((w, h), PIL.Image.Resampling.LANCZOS)
    if transform == 'center-crop-wide':
        crop_height = round(w * image.height / image.width)
        top = (image.height - crop_height) // 2
        canvas = PIL.Image.new(image.mode, (w, w))
        canvas.paste(image.crop((0, top, image.width, top + crop_height)).resize((w, h), PIL.Image.Resampling.LANCZOS), (0, (w - h) // 2))
        return canvas
    while min(image.size) >= 2 * w: # center-crop-dhariwal, as in ADM's image_datasets.py.
        image = image.resize((image.width // 2, image.height // 2), PIL.Image.Resampling.BOX)
    scale = w / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), PIL.Image.Resampling.BICUBIC)
    left, top = (image.width - w) // 2, (image.height - w) // 2
    return image.crop((left, top, left + w, top + w))

@pytest.mark.parametrize('transform', dataset_tool.TRANSFORMS)
def test_transforms_match_pil(tmp_path, transform):
    rnd = np.random.RandomState(0)
    sizes = [(37, 50), (100, 70), (64, 64), (90, 33)] # (height, width)
    for i, (hh, ww) in enumerate(sizes):
        save_image(str(tmp_path / 'src' / f'{i}.png'), rnd.randint(0, 256, [hh, ww, 3], dtype=np.uint8))
    w, h = (16, 8) if transform == 'center-crop-wide' else (16, 16)
    ok('convert', f'--source={tmp_path / "src"}', f'--dest={tmp_path / "out.zip"}', f'--transform={transform}', f'--resolution={w}x{h}', '--workers=2')
    images, labels, _ = read_zip(tmp_path / 'out.zip')
    expected = [reference_transform(PIL.Image.open(tmp_path / 'src' / f'{i}.png'), transform, w, h) for i in range(len(sizes))]
    if transform == 'center-crop-wide': # (37, 50) crops to 37x50 -> height round(16 * 37/50) = 12 >= 8: kept.
        expected = [e for (hh, ww), e in zip(sizes, expected) if ww >= w and round(w * hh / ww) >= h]
    assert labels is None and len(images) == len(expected)
    for image, reference in zip(images, expected):
        assert image.shape == (w, w, 3)
        np.testing.assert_array_equal(image, np.array(reference))

def test_center_crop_wide_skips_small_images(tmp_path):
    save_image(str(tmp_path / 'src' / 'a.png'), np.zeros([40, 40, 3], dtype=np.uint8))
    save_image(str(tmp_path / 'src' / 'b.png'), np.zeros([10, 10, 3], dtype=np.uint8))
    result = ok('convert', f'--source={tmp_path / "src"}', f'--dest={tmp_path / "out.zip"}', '--transform=center-crop-wide', '--resolution=16x8')
    assert 'Skipped 1' in result.output and len(read_zip(tmp_path / 'out.zip')[0]) == 1

#----------------------------------------------------------------------------
# Image modes and formats: JPEG input, grayscale and RGB mixed in one source.

def test_jpeg_input(tmp_path):
    # Photos usually come as JPEG (ImageNet): decoded as PIL decodes them, RGB and grayscale files alike.
    rnd = np.random.RandomState(0)
    files = ['0.jpg', '1.JPEG', '2.jpeg', '3.jpg']
    (tmp_path / 'src').mkdir()
    for name, shape in zip(files, [[16, 16, 3]] * 3 + [[16, 16]]):
        PIL.Image.fromarray(rnd.randint(0, 256, shape, dtype=np.uint8)).save(tmp_path / 'src' / name, format='JPEG', quality=90)
    ok('convert', f'--source={tmp_path / "src"}', f'--dest={tmp_path / "out.zip"}', '--workers=2')
    images, labels, _ = read_zip(tmp_path / 'out.zip')
    assert labels is None and len(images) == 4
    for image, name in zip(images, files):
        np.testing.assert_array_equal(image, np.array(PIL.Image.open(tmp_path / 'src' / name).convert('RGB')))

@pytest.mark.parametrize('first', ['gray', 'rgb'])
def test_grayscale_and_rgb_mixed_give_rgb(tmp_path, first):
    # Whichever image comes first, one RGB image makes the dataset RGB; grayscale images become
    # three equal channels (PIL's convert('RGB')), RGB ones are kept exactly.
    rnd = np.random.RandomState(1)
    gray, rgb = rnd.randint(0, 256, [2, 8, 8], dtype=np.uint8), rnd.randint(0, 256, [8, 8, 3], dtype=np.uint8)
    order = [gray[0], rgb, gray[1]] if first == 'gray' else [rgb, gray[0], gray[1]]
    for i, image in enumerate(order):
        save_image(str(tmp_path / 'src' / f'{i}.png'), image)
    assert PIL.Image.open(tmp_path / 'src' / '0.png').mode == ('L' if first == 'gray' else 'RGB')
    ok('convert', f'--source={tmp_path / "src"}', f'--dest={tmp_path / "out.zip"}')
    images, _, _ = read_zip(tmp_path / 'out.zip')
    for image, source in zip(images, order):
        assert image.shape == (8, 8, 3)
        np.testing.assert_array_equal(image, source if source.ndim == 3 else np.repeat(source[:, :, None], 3, axis=2))
    # A source of grayscale images only stays one channel (MNIST, digits).
    os.remove(tmp_path / 'src' / ('1.png' if first == 'gray' else '0.png'))
    ok('convert', f'--source={tmp_path / "src"}', f'--dest={tmp_path / "gray.zip"}')
    assert all(image.shape == (8, 8) for image in read_zip(tmp_path / 'gray.zip')[0])

#----------------------------------------------------------------------------
# Classes: from folders, ImageNet synsets, dataset.json; selection and relabelling.

def test_folder_classes_and_selection(tmp_path):
    src = make_class_folder(tmp_path / 'src')
    ok('convert', f'--source={src}', f'--dest={tmp_path / "all.zip"}')
    images, labels, metadata = read_zip(tmp_path / 'all.zip')
    assert identities(images) == [(i, j) for i, n in enumerate([6, 4, 5]) for j in range(n)]
    assert labels == [i for i, _ in identities(images)]
    assert metadata['sources'] == sources((0, 'cat', 0), (1, 'dog', 1), (2, 'emu', 2))

    # Classes in the order given become labels 0..K-1; ids and names both work.
    ok('convert', f'--source={src}', f'--dest={tmp_path / "two.zip"}', '--classes=emu,0')
    images, labels, metadata = read_zip(tmp_path / 'two.zip')
    assert identities(images) == [(0, j) for j in range(6)] + [(2, j) for j in range(5)]
    assert labels == [1] * 6 + [0] * 5
    assert metadata['sources'] == sources((0, 'emu', 2), (1, 'cat', 0))

    # --per-class: N distinct images per class; a class's pick depends on the seed only.
    ok('convert', f'--source={src}', f'--dest={tmp_path / "pc.zip"}', '--classes=emu,cat', '--per-class=3', '--seed=5')
    images, labels, _ = read_zip(tmp_path / 'pc.zip')
    ids = identities(images)
    assert len(set(ids)) == 6 and collections.Counter(i for i, _ in ids) == {0: 3, 2: 3}
    assert labels == [{2: 0, 0: 1}[i] for i, _ in ids]
    ok('convert', f'--source={src}', f'--dest={tmp_path / "cat.zip"}', '--classes=cat', '--per-class=3', '--seed=5')
    assert identities(read_zip(tmp_path / 'cat.zip')[0]) == [x for x in ids if x[0] == 0]
    ok('convert', f'--source={src}', f'--dest={tmp_path / "seed6.zip"}', '--classes=emu,cat', '--per-class=3', '--seed=6')
    assert identities(read_zip(tmp_path / 'seed6.zip')[0]) != ids

    # --max-images caps the selection, in source order.
    ok('convert', f'--source={src}', f'--dest={tmp_path / "max.zip"}', '--max-images=7')
    assert identities(read_zip(tmp_path / 'max.zip')[0]) == [(0, j) for j in range(6)] + [(1, 0)]

def test_per_class_draws_are_nested_and_held_out_keeps_the_rest(tmp_path):
    # The multi-source study relies on both: the N = 20 images of a source are part of its
    # N = 40 ones (one seed), and its reference is the rest of the class (never trained on).
    src = make_class_folder(tmp_path / 'src', counts={'cat': 9, 'dog': 4, 'emu': 7})
    drawn = {}
    for n in [2, 4]:
        ok('convert', f'--source={src}', f'--dest={tmp_path / f"n{n}.zip"}', '--classes=emu,cat', f'--per-class={n}', '--seed=3')
        drawn[n] = identities(read_zip(tmp_path / f'n{n}.zip')[0])
    ok('convert', f'--source={src}', f'--dest={tmp_path / "rest.zip"}', '--classes=emu,cat', '--per-class=4', '--seed=3', '--held-out')
    images, labels, metadata = read_zip(tmp_path / 'rest.zip')
    rest = identities(images)
    assert set(drawn[2]) < set(drawn[4]) and not set(drawn[4]) & set(rest)
    assert sorted(drawn[4] + rest) == sorted([(0, j) for j in range(9)] + [(2, j) for j in range(7)]) # The whole of both classes.
    # Independently: numpy's seeded permutation of each class, the first N drawn.
    for c, count in [(0, 9), (2, 7)]:
        assert {j for i, j in drawn[4] if i == c} == set(np.random.RandomState([3, c]).permutation(count)[:4].tolist())
    assert labels == [{2: 0, 0: 1}[i] for i, _ in rest] and metadata['sources'] == sources((0, 'emu', 2), (1, 'cat', 0))
    expect_cli_error(run('convert', f'--source={src}', f'--dest={tmp_path / "bad.zip"}', '--held-out'), '--held-out', '--per-class')
    assert not (tmp_path / 'bad.zip').exists()

def test_imagenet_synset_ids_and_chained_selection(tmp_path):
    # Class id = index in the sorted synset list, as in the standard ImageNet ids.
    src = make_class_folder(tmp_path / 'train', {'n01440764': 3, 'n01443537': 2, 'n01484850': 4, 'n01491361': 2})
    ok('convert', f'--source={src}', f'--dest={tmp_path / "sel.zip"}', '--classes=n01484850,1')
    images, labels, metadata = read_zip(tmp_path / 'sel.zip')
    assert identities(images) == [(1, 0), (1, 1)] + [(2, j) for j in range(4)]
    assert labels == [1, 1, 0, 0, 0, 0]
    assert metadata['sources'] == sources((0, 'n01484850', 2), (1, 'n01443537', 1))

    # Converting a selection again keeps each class's name and original id.
    ok('convert', f'--source={tmp_path / "sel.zip"}', f'--dest={tmp_path / "again.zip"}', '--classes=n01443537')
    images, labels, metadata = read_zip(tmp_path / 'again.zip')
    assert identities(images) == [(1, 0), (1, 1)] and labels == [0, 0]
    assert metadata['sources'] == sources((0, 'n01443537', 1))

#----------------------------------------------------------------------------
# The multi-source study's command lines (its convert_inet_*.sh scripts): --class_labels,
# --nums, --sim_name/--level_name, and the ImageNet root that torchvision reads as --source.

@pytest.fixture(scope='module')
def imagenet_root(tmp_path_factory):
    """torchvision's layout: devkit beside train/ with one folder per synset, in id order; the
    ten sim3 dog breeds have three images each, every other class one."""
    root = tmp_path_factory.mktemp('imagenet')
    (root / 'ILSVRC2012_devkit_t12.tar.gz').write_bytes(b'')
    for class_id in range(260):
        for j in range(3 if class_id in dataset_tool.SIMILARITY_LEVELS['sim3'] else 1):
            save_image(str(root / 'train' / f'n{class_id:08d}' / f'{j}.png'), np.full([8, 8, 3], [class_id % 256, j, 200], dtype=np.uint8))
    return str(root)

def test_multisource_study_commands(imagenet_root, tmp_path):
    # convert_inet_5c.sh sim3, with --nums and the root as the study writes them; then ours.
    ok('convert', f'--source={imagenet_root}/', f'--dest={tmp_path / "fork.zip"}', '--resolution=8x8',
        '--class_labels=171,182,198,208,215', '--nums=2', '--sim_name=sim3')
    ok('convert', f'--source={imagenet_root}/train', f'--dest={tmp_path / "ours.zip"}', '--resolution=8x8',
        '--classes=171,182,198,208,215', '--per-class=2')
    assert (tmp_path / 'fork.zip').read_bytes() == (tmp_path / 'ours.zip').read_bytes()
    images, labels, metadata = read_zip(tmp_path / 'fork.zip')
    assert sorted(labels) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert [(s['label'], s['original_id']) for s in metadata['sources']] == list(enumerate([171, 182, 198, 208, 215]))

    # A level alone: its ten classes, labelled in its order (as the study's level maps do); -1 = every image.
    ok('convert', f'--source={imagenet_root}', f'--dest={tmp_path / "level.zip"}', '--level_name=level1', '--nums=-1')
    images, labels, metadata = read_zip(tmp_path / 'level.zip')
    assert len(images) == 30 and [s['original_id'] for s in metadata['sources']] == dataset_tool.SIMILARITY_LEVELS['sim3']
    assert collections.Counter(labels) == {label: 3 for label in range(10)}
    # convert_inet_1c.sh: one class, the level named Sim3.
    ok('convert', f'--source={imagenet_root}', f'--dest={tmp_path / "one.zip"}', '--class_labels=182', '--nums=-1', '--sim_name=Sim3')
    assert read_zip(tmp_path / 'one.zip')[2]['sources'] == sources((0, 'n00000182', 182))

@pytest.mark.parametrize('args, message', [
    (['--classes=171,182', '--class_labels=171,198'], '--classes 171,182 and --class_labels 171,198 disagree'),
    (['--per-class=2', '--nums=-1'], '--per-class 2 and --nums -1 disagree'),
    (['--sim_name=sim3', '--level_name=level2'], '--sim_name sim3 and --level_name level2 disagree'),
    (['--sim_name=sim4'], 'unknown similarity level'),
    (['--class_labels=171,1', '--sim_name=sim3'], 'class id 1 is not one of the sim3 classes'),
    (['--sim_name=sim2'], 'no class with the ImageNet id 269'),
    (['--class_labels=182', '--nums=5'], '--nums 5: class 182 (n00000182) has only 3 images (images are drawn without repeats; --nums -1 for every image)'),
    (['--class_labels=182', '--per-class=5'], '--per-class 5: class 182 (n00000182) has only 3 images (images are drawn without repeats; leave --per-class out'),
])
def test_multisource_study_flag_errors(imagenet_root, tmp_path, args, message):
    result = run('convert', f'--source={imagenet_root}', f'--dest={tmp_path / "out.zip"}', *args)
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit)
    assert message in result.output, result.output
    assert not os.listdir(tmp_path)

def test_multisource_scripts_on_an_imagenet_root_without_devkit(tmp_path, monkeypatch):
    # The convert scripts of Multi-Source-GM as they run (variables filled in): the root holds
    # train/ with synset folders and no meta.bin or devkit (before: "has no class labels"); the
    # bundled synset list gives the ids. Then --nums=1000 on a class of fewer images names --nums.
    import anchors
    synsets = {class_id: name for name, class_id in imagenet.synsets().items()}
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    train = tmp_path / 'home' / 'datas' / 'Datasets' / 'ImageNet' / 'train'
    for class_id in [171, 182, 198, 208, 215, 231]:
        for j in range(100):
            save_image(str(train / synsets[class_id] / f'{synsets[class_id]}_{j}.JPEG.png'), np.full([4, 4, 3], [class_id % 256, j, 7], dtype=np.uint8))
    (tmp_path / 'work').mkdir()
    result = anchors.invoke('msgm-convert-5c', tmp_path / 'work')
    assert result.exit_code == 0, result.output
    images, labels, metadata = read_zip(tmp_path / 'work' / 'datasets' / 'ori_datasets' / 'sim3' / 'inet-256-5c-100.zip')
    assert len(images) == 500 and images[0].shape == (256, 256, 3) and collections.Counter(labels) == {k: 100 for k in range(5)}
    assert [(s['label'], s['name'], s['original_id']) for s in metadata['sources']] == [(k, synsets[c], c) for k, c in enumerate([171, 182, 198, 208, 215])]
    assert sorted({int(image[0, 0, 0]) for image in images}) == sorted(c % 256 for c in [171, 182, 198, 208, 215])
    result = anchors.invoke('msgm-convert-1c', tmp_path / 'work')
    expect_cli_error(result, '--nums 1000: class 171 (n02091032) has only 100 images', '--nums -1 for every image')
    assert not os.path.exists(tmp_path / 'work' / 'datasets' / 'ori_datasets' / 'Sim3')

def test_labels_from_dataset_json_in_folder(tmp_path):
    for name in ['x.png', 'y.png', 'z.png']:
        save_image(str(tmp_path / 'src' / name), np.full([4, 4, 3], ord(name[0]), dtype=np.uint8))
    (tmp_path / 'src' / 'dataset.json').write_text(json.dumps({'labels': [['x.png', 2], ['y.png', 0], ['z.png', 2]]}))
    ok('convert', f'--source={tmp_path / "src"}', f'--dest={tmp_path / "out.zip"}', '--classes=2')
    images, labels, metadata = read_zip(tmp_path / 'out.zip')
    assert [int(image[0, 0, 0]) for image in images] == [ord('x'), ord('z')] and labels == [0, 0]
    assert metadata['sources'] == sources((0, '2', 2))

def test_same_seed_gives_identical_bytes(tmp_path):
    src = make_class_folder(tmp_path / 'src')
    for name, workers in [('a.zip', 1), ('b.zip', 2)]:
        ok('convert', f'--source={src}', f'--dest={tmp_path / name}', '--per-class=2', '--seed=3', '--resolution=16x16', f'--workers={workers}')
    assert (tmp_path / 'a.zip').read_bytes() == (tmp_path / 'b.zip').read_bytes()

def test_folder_destination_matches_zip(tmp_path):
    src = make_class_folder(tmp_path / 'src')
    (tmp_path / 'out').mkdir() # An existing empty folder is fine.
    ok('convert', f'--source={src}', f'--dest={tmp_path / "out"}', '--classes=dog')
    ok('convert', f'--source={src}', f'--dest={tmp_path / "out.zip"}', '--classes=dog')
    with zipfile.ZipFile(tmp_path / 'out.zip') as zf:
        for name in zf.namelist():
            assert (tmp_path / 'out' / name).read_bytes() == zf.read(name)
    assert listing(tmp_path) == ['out', 'out.zip', 'src']

#----------------------------------------------------------------------------
# CIFAR-10 and MNIST in their distribution formats (small synthetic copies).

def test_cifar10_tarball(tmp_path):
    rnd = np.random.RandomState(0)
    batches = [{b'data': rnd.randint(0, 256, [4, 3072], dtype=np.uint8), b'labels': list(rnd.randint(0, 10, 4))} for _ in range(5)]
    names = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']
    path = tmp_path / 'cifar-10-python.tar.gz'
    with tarfile.open(path, 'w:gz') as tar:
        members = {f'data_batch_{i + 1}': b for i, b in enumerate(batches)}
        members['batches.meta'] = {b'label_names': [n.encode() for n in names]}
        for member, obj in members.items():
            data = pickle.dumps(obj)
            info = tarfile.TarInfo(f'cifar-10-batches-py/{member}')
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    ok('convert', f'--source={path}', f'--dest={tmp_path / "c.zip"}', '--workers=2')
    images, labels, metadata = read_zip(tmp_path / 'c.zip')
    expected = np.concatenate([b[b'data'] for b in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(np.stack(images), expected)
    assert labels == [int(l) for b in batches for l in b[b'labels']]
    assert [s['name'] for s in metadata['sources']] == [names[c] for c in sorted(set(labels))]

def write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b''.join(int(d).to_bytes(4, 'big') for d in array.shape)
    with gzip.open(path, 'wb') as f:
        f.write(header + array.astype(np.uint8).tobytes())

def test_mnist_idx_files(tmp_path):
    rnd = np.random.RandomState(0)
    images, labels = rnd.randint(0, 256, [12, 28, 28], dtype=np.uint8), np.arange(12) % 10
    (tmp_path / 'mnist').mkdir()
    write_idx(tmp_path / 'mnist' / 'train-images-idx3-ubyte.gz', images)
    write_idx(tmp_path / 'mnist' / 'train-labels-idx1-ubyte.gz', labels)
    ok('convert', f'--source={tmp_path / "mnist"}', f'--dest={tmp_path / "m.zip"}', '--resolution=32x32')
    ok('convert', f'--source={tmp_path / "mnist" / "train-images-idx3-ubyte.gz"}', f'--dest={tmp_path / "m28.zip"}', '--classes=1', '--transform=center-crop', '--resolution=16x16')
    out, out_labels, _ = read_zip(tmp_path / 'm.zip')
    assert out_labels == labels.tolist() and out[0].shape == (32, 32)
    np.testing.assert_array_equal(out[5], np.array(PIL.Image.fromarray(images[5]).resize((32, 32), PIL.Image.Resampling.LANCZOS)))
    selected, selected_labels, _ = read_zip(tmp_path / 'm28.zip')
    assert selected_labels == [0, 0]
    np.testing.assert_array_equal(selected[1], np.array(PIL.Image.fromarray(images[11]).resize((16, 16), PIL.Image.Resampling.LANCZOS)))

#----------------------------------------------------------------------------
# Bad input: a one-line error naming the file or option, and nothing left behind.

def bad_inputs(tmp_path):
    classes = make_class_folder(tmp_path / 'classes')
    (tmp_path / 'texts').mkdir()
    (tmp_path / 'texts' / 'readme.txt').write_text('no images here')
    save_image(str(tmp_path / 'corrupt' / 'a.png'), np.zeros([8, 8, 3], dtype=np.uint8))
    (tmp_path / 'corrupt' / 'b.png').write_bytes(b'\x89PNG\r\n\x1a\n garbage')
    save_image(str(tmp_path / 'mixed' / 'a.png'), np.zeros([8, 8, 3], dtype=np.uint8))
    save_image(str(tmp_path / 'mixed' / 'b.png'), np.zeros([16, 16, 3], dtype=np.uint8))
    save_image(str(tmp_path / 'odd' / 'a.png'), np.zeros([12, 12, 3], dtype=np.uint8))
    save_image(str(tmp_path / 'flat' / 'a.png'), np.zeros([8, 8, 3], dtype=np.uint8))
    save_image(str(tmp_path / 'badjson' / 'a.png'), np.zeros([8, 8, 3], dtype=np.uint8))
    (tmp_path / 'badjson' / 'dataset.json').write_text('{"labels": [1, 2]}')
    return {
        'missing source':       ([f'--source={tmp_path / "nope"}'], 'nope'),
        'no images':            ([f'--source={tmp_path / "texts"}'], 'no images found'),
        'corrupt image':        ([f'--source={tmp_path / "corrupt"}', '--workers=2'], 'b.png'),
        'mixed sizes':          ([f'--source={tmp_path / "mixed"}'], 'b.png is 16x16'),
        'non-square output':    ([f'--source={classes}', '--resolution=32x16'], 'square'),
        'non-power-of-two':     ([f'--source={classes}', '--resolution=48x48'], 'power of two'),
        'non-power-of-two src': ([f'--source={tmp_path / "odd"}'], 'power of two'),
        'unknown class id':     ([f'--source={classes}', '--classes=0,7'], '"7"'),
        'unknown class name':   ([f'--source={classes}', '--classes=zebra'], '"zebra"'),
        'per-class too large':  ([f'--source={classes}', '--per-class=5'], 'class 1 (dog) has only 4'),
        'unlabeled selection':  ([f'--source={tmp_path / "flat"}', '--classes=0'], 'no class labels'),
        'bad resolution':       ([f'--source={classes}', '--resolution=big'], 'WxH'),
        'unknown builtin':      (['--source=builtin:faces'], 'builtin:faces'),
        'malformed json':       ([f'--source={tmp_path / "badjson"}'], 'dataset.json'),
    }

def test_bad_inputs_fail_cleanly(tmp_path):
    cases = bad_inputs(tmp_path)
    for dest in ['out.zip', 'outdir']:
        for case, (args, expected) in cases.items():
            before = listing(tmp_path)
            usage_error = case == 'bad resolution' # Click's own option check: exit code 2.
            expect_cli_error(run('convert', *args, f'--dest={tmp_path / dest}'), expected, exit_code=2 if usage_error else 1)
            assert listing(tmp_path) == before, case # No output, no temporary files.

def test_existing_destination_is_kept(tmp_path):
    src = make_class_folder(tmp_path / 'src')
    (tmp_path / 'full').mkdir()
    (tmp_path / 'full' / 'keep.txt').write_text('user data')
    (tmp_path / 'exists.zip').write_bytes(b'user data')
    for dest, expected in [('full', 'is a folder that is not empty'), ('exists.zip', 'already exists')]:
        expect_cli_error(run('convert', f'--source={src}', f'--dest={tmp_path / dest}'), expected)
    assert listing(tmp_path / 'full') == ['keep.txt'] and (tmp_path / 'exists.zip').read_bytes() == b'user data'
    expect_cli_error(run('convert', f'--source={src}', f'--dest={tmp_path / "exists.zip" / "out.zip"}'), 'is a file, not a folder')

#----------------------------------------------------------------------------
# encode / decode with a tiny VAE saved by the test.

def test_encode_decode_tiny_vae(tmp_path):
    vae = save_tiny_vae(tmp_path / 'vae')
    ok('convert', '--source=builtin:digits-test', f'--dest={tmp_path / "img.zip"}', '--resolution=16x16', '--classes=4,2', '--max-images=5')
    ok('encode', f'--source={tmp_path / "img.zip"}', f'--dest={tmp_path / "lat.zip"}', f'--model-url={tmp_path / "vae"}', '--batch=2')
    images, labels, metadata = read_zip(tmp_path / 'img.zip')
    latents, latent_labels, latent_metadata = read_zip(tmp_path / 'lat.zip')
    assert latent_labels == labels and latent_metadata['sources'] == metadata['sources']
    assert all(lat.shape == (8, 2, 2) and lat.dtype == np.float32 for lat in latents)

    x = torch.from_numpy(np.stack(images)).float().div(255)[:, None].expand(-1, 3, -1, -1)
    with torch.no_grad():
        posterior = vae.encode(x)['latent_dist']
        direct = vae.decode(posterior.mean)['sample'].clamp(0, 1).mul(255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.stack(latents), torch.cat([posterior.mean, posterior.std], dim=1).numpy(), rtol=1e-4, atol=1e-5)

    ok('decode', f'--source={tmp_path / "lat.zip"}', f'--dest={tmp_path / "dec.zip"}', f'--model-url={tmp_path / "vae"}')
    decoded, decoded_labels, _ = read_zip(tmp_path / 'dec.zip')
    assert decoded_labels == labels and decoded[0].shape == (16, 16, 3)
    assert np.abs(np.stack(decoded).astype(int) - direct.astype(int)).max() <= 1

def test_encode_offline_error(tmp_path, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('EDM2_CACHE_DIR', str(tmp_path / 'cache'))
    ok('convert', '--source=builtin:digits-test', f'--dest={tmp_path / "img.zip"}', '--max-images=2')
    result = run('encode', f'--source={tmp_path / "img.zip"}', f'--dest={tmp_path / "lat.zip"}', '--model-url=no-such-org/no-such-vae')
    expect_cli_error(result, 'save_pretrained', '--model-url')
    result = run('decode', f'--source={tmp_path / "img.zip"}', f'--dest={tmp_path / "dec.zip"}', '--model-url=no-such-org/no-such-vae')
    expect_cli_error(result, 'expected a dataset of latents')
    assert listing(tmp_path) == ['cache', 'img.zip'] or listing(tmp_path) == ['img.zip']

#----------------------------------------------------------------------------

def test_imagenet_synset_folders_keep_their_official_ids(tmp_path):
    # A tree with only some ImageNet classes: the ids are ILSVRC-2012's (the position among all
    # 1000 synsets: n01443537 goldfish = 1, n02091032 Italian greyhound = 171), not 0 and 1.
    for synset in ['n02091032', 'n01443537']:
        (tmp_path / 'src' / synset).mkdir(parents=True)
        for idx in range(2):
            PIL.Image.fromarray(np.full([8, 8, 3], idx * 50, dtype=np.uint8)).save(tmp_path / 'src' / synset / f'{idx}.jpg')
    ok('convert', f'--source={tmp_path / "src"}', f'--dest={tmp_path / "all.zip"}')
    _, labels, metadata = read_zip(tmp_path / 'all.zip')
    assert sorted(set(labels)) == [1, 171]
    assert metadata['sources'] == [dict(label=1, name='n01443537', original_id=1), dict(label=171, name='n02091032', original_id=171)]
    ok('convert', f'--source={tmp_path / "src"}', f'--dest={tmp_path / "two.zip"}', '--classes=171,n01443537')
    _, labels, metadata = read_zip(tmp_path / 'two.zip')
    assert labels == [1, 1, 0, 0] and [s['original_id'] for s in metadata['sources']] == [171, 1]

#----------------------------------------------------------------------------
# Labels at conversion: where the class folders are, what lies beside them, dataset.json.

def test_class_folders_of_a_zipped_folder_and_macos_archives(tmp_path):
    # `zip -r data.zip mydata/` (run for real) holds every file under mydata/: its class folders
    # are mydata's subfolders. macOS adds __MACOSX/ (an AppleDouble ._ file per file) and .DS_Store.
    make_class_folder(tmp_path / 'mydata', counts={'cat': 2, 'dog': 3})
    if subprocess.run(['zip', '-qr', 'data.zip', 'mydata/'], cwd=tmp_path).returncode != 0:
        pytest.skip('no zip command')
    ok('convert', f'--source={tmp_path / "data.zip"}', f'--dest={tmp_path / "plain.zip"}')
    with zipfile.ZipFile(tmp_path / 'data.zip', 'a') as zf:
        for name in zf.namelist():
            zf.writestr(f'__MACOSX/{os.path.dirname(name)}/._{os.path.basename(name)}', b'\0\5\x16\7\0\2\0\0Mac OS X')
        zf.writestr('mydata/.DS_Store', b'\0\0\0\1Bud1')
    ok('convert', f'--source={tmp_path / "data.zip"}', f'--dest={tmp_path / "mac.zip"}')
    for dest in ['plain.zip', 'mac.zip']:
        images, labels, metadata = read_zip(tmp_path / dest)
        assert labels == [0, 0, 1, 1, 1] and identities(images) == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
        assert metadata['sources'] == sources((0, 'cat', 0), (1, 'dog', 1))
    # A zipped dataset folder keeps the labels of its dataset.json.
    ok('convert', f'--source={tmp_path / "plain.zip"}', f'--dest={tmp_path / "ds"}')
    subprocess.run(['zip', '-qr', 'ds.zip', 'ds/'], cwd=tmp_path, check=True)
    ok('convert', f'--source={tmp_path / "ds.zip"}', f'--dest={tmp_path / "again.zip"}')
    assert read_zip(tmp_path / 'again.zip')[1:] == read_zip(tmp_path / 'plain.zip')[1:]

def test_an_image_beside_the_class_folders_is_refused(tmp_path):
    # Before: it made a class "" and renumbered the real ones (official ImageNet ids 151/152 became 1/2).
    with open(os.path.join(os.path.dirname(dataset_tool.__file__), 'training', 'imagenet_synsets.txt')) as f:
        synsets = f.read().split()
    for synset in [synsets[151], synsets[152]]:
        save_image(str(tmp_path / 'src' / synset / '0.png'), np.full([8, 8, 3], 7, dtype=np.uint8))
    ok('convert', f'--source={tmp_path / "src"}', f'--dest={tmp_path / "ok.zip"}')
    assert read_zip(tmp_path / 'ok.zip')[1] == [151, 152]
    save_image(str(tmp_path / 'src' / 'preview.png'), np.zeros([8, 8, 3], dtype=np.uint8))
    expect_cli_error(run('convert', f'--source={tmp_path / "src"}', f'--dest={tmp_path / "bad.zip"}'),
        'preview.png lies beside the class folders', synsets[151], 'has no class')
    assert listing(tmp_path) == ['ok.zip', 'src']

def test_a_file_listed_twice_with_two_labels_is_refused(tmp_path):
    # dataset.json read into a dict took the last of the two labels.
    for image in range(2):
        save_image(str(tmp_path / 'src' / f'{image}.png'), np.full([4, 4], image, dtype=np.uint8))
    (tmp_path / 'src' / 'dataset.json').write_text(json.dumps({'labels': [['0.png', 0], ['1.png', 1], ['0.png', 1]]}))
    expect_cli_error(run('convert', f'--source={tmp_path / "src"}', f'--dest={tmp_path / "out.zip"}'),
        'lists 0.png twice, with the labels 0 and 1')
    from training.dataset import ImageFolderDataset # pylint: disable=import-outside-toplevel
    with pytest.raises(ValueError, match='lists 0.png twice'):
        ImageFolderDataset(str(tmp_path / 'src')).get_label(0)
    # The same label twice is only redundant.
    (tmp_path / 'src' / 'dataset.json').write_text(json.dumps({'labels': [['0.png', 0], ['1.png', 1], ['0.png', 0]]}))
    ok('convert', f'--source={tmp_path / "src"}', f'--dest={tmp_path / "out.zip"}')
    assert read_zip(tmp_path / 'out.zip')[1] == [0, 1]
