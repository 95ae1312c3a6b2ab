"""Feature networks for the Frechet-distance metrics, one small class per detector with one
interface: a class-level `name` (the metric) and `feature_dim`, a constructor that takes the
device and the detector's own file options, `__call__(images)` with uint8 images [N, C, H, W]
on that device returning float features [N, feature_dim], and a class method
`missing_files(**options)` -> (absent files, where to put them), which looks without
downloading anything. Adding a detector = one class + one entry in DETECTORS.

Offline first: Inception-v3 loads from a local path, a file:// URL, the download cache or its
public URL; DINOv2 from a whole-model file, or a local torch.hub repository plus a local
checkpoint (by default where EDM2's code downloads them, $DNNLIB_CACHE_DIR/torch_hub, or in
torch.hub.get_dir()), or the hub when online. When a file is missing the error names it and where to put it.
"""

import io
import os
import pickle
import re

import torch

from torch_utils import util
from training import digits

#----------------------------------------------------------------------------

class DetectorUnavailable(RuntimeError):
    """A detector's pretrained files are missing (the message names them and where they go)."""

def _grayscale_to_rgb(images):
    return images.repeat([1, 3, 1, 1]) if images.shape[1] == 1 else images

#----------------------------------------------------------------------------
# FID: Inception-v3 pool3 features (2048) of the TF-FID network, as NVIDIA's TorchScript pickle
# (the file EDM2 and StyleGAN use) or a TorchScript archive of the same module. It takes uint8-range images of any size, resizes them to
# 299x299 itself and is called as model(x, return_features=True).

INCEPTION_URL = 'https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/inception-2015-12-05.pkl'

class InceptionV3Detector:
    name = 'fid'
    feature_dim = 2048

    def __init__(self, device=torch.device('cpu'), path=None):
        path = self.resolve(path)
        try:
            with util.open_url(path, verbose=True) as f:
                data = f.read()
            # NVIDIA's pickle; a plain TorchScript archive (a ZIP) works too.
            self.model = torch.jit.load(io.BytesIO(data), map_location='cpu') if data[:2] == b'PK' else pickle.loads(data)
        except util.DownloadError as e:
            raise DetectorUnavailable(f'Inception-v3 (FID) cannot be downloaded ({e.reason}). {self._where_to_put(path)}') from e
        except (OSError, pickle.UnpicklingError, EOFError, RuntimeError) as e:
            raise DetectorUnavailable(f'Inception-v3 (FID) not loadable from {path}: {str(e).rstrip(".")}. '
                f'{self._where_to_put(path)}') from e
        self.model = self.model.to(device).eval()
        self.device = torch.device(device)

    @staticmethod
    def resolve(path=None):
        return path or os.environ.get('EDM2_INCEPTION') or INCEPTION_URL

    @staticmethod
    def _where_to_put(path):
        return (f'It needs inception-2015-12-05.pkl (from {INCEPTION_URL}): place it at '
            f'{util.url_cache_path(INCEPTION_URL)} (or set EDM2_CACHE_DIR), or pass its path with --inception (or EDM2_INCEPTION).')

    @classmethod
    def missing_files(cls, path=None):
        """The local files that are needed and absent, and where to put them (a hint)."""
        path = cls.resolve(path)
        if util.is_url(path):
            local = util.url_cache_path(path)
        else:
            local = path[len('file://'):] if path.startswith('file://') else path
        return ([] if os.path.isfile(local) else [local]), cls._where_to_put(path)

    @torch.no_grad()
    def __call__(self, images):
        x = _grayscale_to_rgb(images.to(self.device))
        return self.model(x, return_features=True).to(torch.float32)

#----------------------------------------------------------------------------
# FD-DINOv2: ViT-L/14 CLS features (1024) with EDM2's preprocessing: [0, 1], bicubic resize to
# 224x224 with antialiasing, ImageNet mean/std.

DINOV2_HUB = 'facebookresearch/dinov2:main'
DINOV2_ENTRY = 'dinov2_vitl14'
DINOV2_CHECKPOINT = 'dinov2_vitl14_pretrain.pth'
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

def dinov2_preprocess(images, resolution=224):
    """uint8 [N, C, H, W] -> normalized float32 [N, 3, resolution, resolution]."""
    x = _grayscale_to_rgb(images).to(torch.float32) / 255
    x = torch.nn.functional.interpolate(x, size=(resolution, resolution), mode='bicubic', antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    return (x - mean) / std

class DINOv2Detector:
    name = 'fd_dinov2'
    feature_dim = 1024

    def __init__(self, device=torch.device('cpu'), repo=None, weights=None, model=None):
        """`model`: a whole-model file (TorchScript, or a pickled/torch.save'd module); else
        `repo`: a local checkout of the dinov2 hub repository and `weights`: its checkpoint."""
        self.device = torch.device(device)
        self.model = self._load(repo, weights, model).to(self.device).eval()

    @staticmethod
    def hub_dirs():
        """Where a torch.hub download of DINOv2 may lie, in the hub's layout: EDM2's place
        ($DNNLIB_CACHE_DIR/torch_hub, where the official code downloads it), then torch's own
        (torch.hub.get_dir())."""
        return list(dict.fromkeys([util.make_cache_dir_path('torch_hub'), torch.hub.get_dir()]))

    @classmethod
    def resolve(cls, repo=None, weights=None, model=None):
        """The paths to look at: options, then environment, then the hub directories (the first
        that holds the file; EDM2's place when none does)."""
        def in_hub(*parts, marker=None):
            paths = [os.path.join(hub, *parts) for hub in cls.hub_dirs()]
            return next((path for path in paths if os.path.isfile(os.path.join(path, marker) if marker else path)), paths[0])
        model = model or os.environ.get('EDM2_DINOV2_MODEL') or None
        repo = repo or os.environ.get('EDM2_DINOV2_REPO') or in_hub('facebookresearch_dinov2_main', marker='hubconf.py')
        weights = weights or os.environ.get('EDM2_DINOV2_WEIGHTS') or in_hub('checkpoints', DINOV2_CHECKPOINT)
        return repo, weights, model

    @classmethod
    def _where_to_put(cls, repo, weights):
        return (f'It needs a checkout of github.com/facebookresearch/dinov2 at {repo} (--dinov2-repo or '
            f'EDM2_DINOV2_REPO) and the checkpoint {DINOV2_CHECKPOINT} (https://dl.fbaipublicfiles.com/dinov2/'
            f'dinov2_vitl14/{DINOV2_CHECKPOINT}) at {weights} (--dinov2-weights or EDM2_DINOV2_WEIGHTS), '
            f'both also found in the same layout under {" or ".join(cls.hub_dirs())}, '
            f'or a whole-model file given with --dinov2-model (EDM2_DINOV2_MODEL).')

    @classmethod
    def missing_files(cls, repo=None, weights=None, model=None):
        repo, weights, model = cls.resolve(repo, weights, model)
        if model is not None:
            return ([] if os.path.isfile(model) else [model]), 'the whole-model file given for DINOv2 (--dinov2-model or EDM2_DINOV2_MODEL)'
        missing = [] if os.path.isfile(os.path.join(repo, 'hubconf.py')) else [repo]
        missing += [] if os.path.isfile(weights) else [weights]
        return missing, cls._where_to_put(repo, weights)

    @classmethod
    def _load(cls, repo, weights, model):
        given = any([repo, weights, os.environ.get('EDM2_DINOV2_REPO'), os.environ.get('EDM2_DINOV2_WEIGHTS')])
        repo, weights, model = cls.resolve(repo, weights, model)
        if model is not None:
            return load_model_file(model)
        missing, hint = cls.missing_files(repo, weights)
        if not missing:
            net = torch.hub.load(repo, DINOV2_ENTRY, source='local', pretrained=False, verbose=False)
            state = torch.load(weights, map_location='cpu', weights_only=True)
            net.load_state_dict(state)
            return net
        if not given: # Default locations: a hub download into EDM2's place puts both files exactly there.
            previous = torch.hub.get_dir()
            torch.hub.set_dir(cls.hub_dirs()[0])
            try:
                return torch.hub.load(DINOV2_HUB, DINOV2_ENTRY, trust_repo=True, verbose=False)
            except Exception as e: # pylint: disable=broad-except
                raise DetectorUnavailable(f'DINOv2 not found locally and not downloadable ({e}). '
                    f'{cls._where_to_put(repo, weights)}') from e
            finally:
                torch.hub.set_dir(previous)
        raise DetectorUnavailable(f'DINOv2 files missing: {", ".join(missing)}. {hint}')

    @torch.no_grad()
    def __call__(self, images):
        return self.model(dinov2_preprocess(images.to(self.device))).to(torch.float32)

def load_model_file(path):
    """A whole network from a file: TorchScript archive, torch.save'd module or plain pickle."""
    if not os.path.isfile(path):
        raise DetectorUnavailable(f'No such model file: {path}')
    try:
        return torch.jit.load(path, map_location='cpu')
    except RuntimeError:
        pass
    try:
        return torch.load(path, map_location='cpu', weights_only=False)
    except Exception: # pylint: disable=broad-except
        pass
    try:
        with open(path, 'rb') as f:
            return pickle.load(f)
    except Exception as e: # pylint: disable=broad-except
        raise DetectorUnavailable(f'Cannot load a model from {path}: {e}') from e

#----------------------------------------------------------------------------
# Digits (the demo's metric space; no pretrained weights): gray levels of the image area-resized
# to 8x8 in [0, 1], projected on the first 20 principal components of the built-in digits
# training split. The same space as the slow acceptance test of tests/test_networks_mar.py.

def digits_pixels(images):
    """uint8 [N, C, H, W] -> float64 [N, 64] gray levels in [0, 1] at 8x8 (ITU-R 601 luma, area resize)."""
    x = images.to(torch.float64)
    if x.shape[1] == 3:
        x = (x * torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)).sum(1, keepdim=True)
    elif x.shape[1] != 1:
        x = x.mean(1, keepdim=True)
    if x.shape[2:] != (8, 8):
        x = torch.nn.functional.adaptive_avg_pool2d(x, (8, 8))
    return x.flatten(1) / 255

class DigitsDetector:
    name = 'fd_digits'
    feature_dim = 20

    def __init__(self, device=torch.device('cpu')):
        from sklearn.decomposition import PCA # pylint: disable=import-outside-toplevel
        pca = PCA(self.feature_dim, random_state=0).fit(digits.pixels('train')[0])
        self.device = torch.device(device)
        self.mean = torch.as_tensor(pca.mean_, dtype=torch.float64, device=self.device)
        self.components = torch.as_tensor(pca.components_, dtype=torch.float64, device=self.device)

    @classmethod
    def missing_files(cls):
        return [], ''

    @torch.no_grad()
    def __call__(self, images):
        return (digits_pixels(images.to(self.device)) - self.mean) @ self.components.T

class DigitsClassifier:
    """The `digits_acc` metric: an SVC(gamma='scale') fitted on the digits training pixels;
    returns the predicted class of each image (int64 [N] on the images' device)."""
    name = 'digits_acc'

    def __init__(self, device=torch.device('cpu')):
        from sklearn.svm import SVC # pylint: disable=import-outside-toplevel
        self.classifier = SVC(gamma='scale').fit(*digits.pixels('train'))

    @classmethod
    def check_network(cls, label_dim, sources, what):
        """The network's classes must be digits, or the accuracy means nothing: its sources (from
        dataset.json) have the original ids 0..9 and names that spell them ('3', 'digit3'), or it
        records none and has 10 classes. (CIFAR-10's ids are 0..9 too, named 'airplane', ...)"""
        if label_dim == 0:
            raise ValueError(f'{cls.name} needs the class of every image, but {what} is unconditional')
        if sources:
            other = [s for s in sources if s['original_id'] not in range(digits.NUM_CLASSES)
                or re.sub(r'\D', '', str(s['name'])) != str(s['original_id'])]
            if other:
                raise ValueError(f'{cls.name}: {what} was not trained on digits: its class {other[0]["label"]} is '
                    f'"{other[0]["name"]}" (original id {other[0]["original_id"]}), not one of the digits 0..9')
        elif label_dim != digits.NUM_CLASSES:
            raise ValueError(f'{cls.name}: {what} has {label_dim} classes and records no source names; the digits '
                f'classifier needs a network of the {digits.NUM_CLASSES} digits')

    def __call__(self, images):
        predicted = self.classifier.predict(digits_pixels(images).cpu().numpy())
        return torch.as_tensor(predicted, dtype=torch.int64, device=images.device)

#----------------------------------------------------------------------------
# Metric name -> detector class (Frechet distances), and the accuracy metrics.

DETECTORS = {cls.name: cls for cls in [InceptionV3Detector, DINOv2Detector, DigitsDetector]}
CLASSIFIERS = {cls.name: cls for cls in [DigitsClassifier]}

#----------------------------------------------------------------------------
