"""The training stream of :mod:`pccseg.train.loop`: mmsegmentation's augmentation of one sample
(:func:`augment`, :func:`photometric_distortion`), the endless seeded stream of augmented samples
(:class:`TrainStream`) and the sampler that shards it over the ranks and resumes mid-epoch
(:class:`StreamSampler`); see the loop's module docstring for how sample ``k`` is fixed by the seed."""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from .deeplab import normalize, rescale_factor, rescaled_size
from ..vocab import IGNORE_INDEX
from ..dataset.voc import VOCSplit


def photometric_distortion(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """mmsegmentation's ``PhotoMetricDistortion`` of a (3, H, W) uint8 image, each step with p = 0.5:
    brightness + U(-32, 32); contrast x U(0.5, 1.5), either first or last (p = 0.5); saturation
    x U(0.5, 1.5) and hue + U{-18..18} (of OpenCV's 180) in HSV. Values are clipped to 0..255."""
    img = np.ascontiguousarray(image.permute(1, 2, 0).numpy())

    def convert(a: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        return np.clip(a.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def contrast(a: np.ndarray) -> np.ndarray:
        return convert(a, alpha=rng.uniform(0.5, 1.5)) if rng.integers(2) else a

    if rng.integers(2):
        img = convert(img, beta=rng.uniform(-32, 32))
    contrast_first = bool(rng.integers(2))
    if contrast_first:
        img = contrast(img)
    if rng.integers(2):
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[..., 1] = convert(hsv[..., 1], alpha=rng.uniform(0.5, 1.5))
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if rng.integers(2):
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(np.int64) + int(rng.integers(-18, 19))) % 180
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if not contrast_first:
        img = contrast(img)
    return torch.from_numpy(img).permute(2, 0, 1).contiguous()


def _crop_origin(mask: torch.Tensor, crop_size: int, rng: np.random.Generator,
                 cat_max_ratio: float) -> tuple[int, int]:
    """Top-left corner of a random crop; with ``cat_max_ratio < 1`` re-drawn (at most 10 times) until the
    crop holds two classes or more and none covers ``cat_max_ratio`` of its labelled pixels (mmseg)."""
    H, W = mask.shape

    def draw() -> tuple[int, int]:
        return int(rng.integers(0, max(H - crop_size, 0) + 1)), int(rng.integers(0, max(W - crop_size, 0) + 1))

    top, left = draw()
    if cat_max_ratio < 1:
        for _ in range(10):
            counts = torch.bincount(mask[top:top + crop_size, left:left + crop_size].reshape(-1),
                                    minlength=IGNORE_INDEX + 1)[:IGNORE_INDEX]
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() < cat_max_ratio * counts.sum():
                break
            top, left = draw()
    return top, left


def augment(image: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator, crop_size: int,
            scale: tuple[float, float] = (0.5, 2.0), *, short_side: int | None = None,
            cat_max_ratio: float = 1.0, photometric: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """mmsegmentation's training pipeline for one sample, in its order: random resize (bilinear image,
    nearest mask) to ``short_side`` (None: the image's own size) times U(``scale``), random crop (see
    :func:`_crop_origin`), horizontal flip (p = 0.5), photometric distortion, ImageNet normalisation, and
    padding to the crop size at the bottom and right (image 0 after normalisation, i.e. the mean
    colour; mask 255).

    image (3, H, W) uint8, mask (H, W) int64 -> (3, crop, crop) float32, (crop, crop) int64.
    """
    h, w = mask.shape
    nh, nw = rescaled_size(h, w, rng.uniform(*scale) * rescale_factor(h, w, short_side))
    image = TF.resize(image, [nh, nw], InterpolationMode.BILINEAR, antialias=False)
    mask = TF.resize(mask[None], [nh, nw], InterpolationMode.NEAREST)[0]
    top, left = _crop_origin(mask, crop_size, rng, cat_max_ratio)
    image = image[:, top:top + crop_size, left:left + crop_size]
    mask = mask[top:top + crop_size, left:left + crop_size]
    if rng.random() < 0.5:
        image, mask = image.flip(-1), mask.flip(-1)
    if photometric:
        image = photometric_distortion(image, rng)
    pad = [0, crop_size - mask.shape[1], 0, crop_size - mask.shape[0]]
    return F.pad(normalize(image), pad, value=0.0), F.pad(mask, pad, value=IGNORE_INDEX).contiguous()


class TrainStream(torch.utils.data.Dataset):
    """The endless augmented training stream: ``stream[k]`` is sample ``k`` (see the module docstring);
    ``options`` are :func:`augment`'s (``crop_size``, ``scale``, ``short_side``, ...)."""

    def __init__(self, base: VOCSplit, seed: int, **options):
        self.base, self.seed, self.options = base, seed, options
        self._epoch, self._perm = -1, None

    def index(self, k: int) -> int:
        epoch, pos = divmod(k, len(self.base))
        if epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.base))
            self._epoch = epoch
        return int(self._perm[pos])

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.base[self.index(k)]
        return augment(image, mask, np.random.default_rng([self.seed, 1, k]), **self.options)


class StreamSampler(torch.utils.data.Sampler):
    """Stream indices of iterations ``start+1 .. stop`` for one rank (``per_rank`` samples each)."""

    def __init__(self, start: int, stop: int, per_rank: int, rank: int = 0, world: int = 1):
        self.start, self.stop, self.per_rank, self.rank, self.world = start, stop, per_rank, rank, world

    def __iter__(self):
        for it in range(self.start, self.stop):
            first = (it * self.world + self.rank) * self.per_rank
            yield from range(first, first + self.per_rank)

    def __len__(self) -> int:
        return max(0, self.stop - self.start) * self.per_rank
