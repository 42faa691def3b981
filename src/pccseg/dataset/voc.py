"""Read datasets in the Pascal VOC segmentation layout (VOC 2012 itself, or a ``pccseg generate`` output).

Layout of ``root`` (e.g. ``VOCdevkit/VOC2012``)::

    root/JPEGImages/<stem>.jpg
    root/SegmentationClass/<stem>.png          palette or greyscale PNG, values 0..C-1, 255 = ignore
    root/ImageSets/Segmentation/<split>.txt    one stem per line
    root/settings.json                         optional; its "class_names" sets the classes (pccseg)

``root`` may also be the folder above ``VOCdevkit/VOC2012`` (torchvision's ``VOCSegmentation`` root).

Every problem is an :class:`~pccseg.errors.InputError` naming the file: a missing split file or
folder, a split line that is not a plain file stem (a path), a split line naming a missing image or
mask, an image and mask of different sizes, a mask value outside ``0..C-1`` and 255.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .folder import IMAGES as IMAGE_DIR, MASKS as MASK_DIR, SETS as SPLIT_DIR, TORCHVISION_VOC_DIR
from ..errors import InputError
from ..io import check_inside, check_stem, image_size, load_image, load_mask, read_json, read_text
from ..vocab import IGNORE_INDEX, VOC_CLASSES, check_class_names

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


def voc_root(root: str | Path) -> Path:
    """``root`` itself, or ``root/VOCdevkit/VOC2012`` when ``root`` is torchvision's kind of VOC root."""
    root = Path(root)
    inner = root / TORCHVISION_VOC_DIR
    if not (root / SPLIT_DIR).is_dir() and (inner / SPLIT_DIR).is_dir():
        return inner
    return root


def dataset_folder(root: str | Path) -> Path:
    """The folder a VOC root's files must lie in once links are followed (:func:`pccseg.io.check_inside`):
    the root, or for a ``.../VOCdevkit/VOC2012`` root the folder above ``VOCdevkit`` (a pccseg dataset's
    ``VOCdevkit/VOC2012`` links to its own ``JPEGImages``, ...)."""
    root = Path(root)
    return root.parent.parent if root.parent.name == "VOCdevkit" else root


def read_class_names(root: str | Path) -> list[str]:
    """The dataset's class names: ``settings.json``'s ``class_names`` when present, else the 21 VOC ones."""
    settings = voc_root(root) / "settings.json"
    if settings.is_file():
        check_inside(settings, dataset_folder(voc_root(root)), what="the dataset")
        names = read_json(settings).get("class_names")
        if names is not None:
            return list(check_class_names(names, path=settings))
    return list(VOC_CLASSES)


def read_split(root: str | Path, split: str) -> list[str]:
    """Stems listed in ``root/ImageSets/Segmentation/<split>.txt`` (blank lines skipped); every line must
    be a plain file stem (:func:`pccseg.io.check_stem`)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError("dataset root is not a directory", path=root)
    root = voc_root(root)
    split_file = root / SPLIT_DIR / f"{split}.txt"
    if not split_file.is_file():
        raise InputError(f"split file not found (a VOC root holds {SPLIT_DIR}/{split}.txt)", path=split_file)
    lines = read_text(check_inside(split_file, dataset_folder(root), what="the dataset")).splitlines()
    stems = [check_stem(line.strip(), path=split_file, line=n) for n, line in enumerate(lines, 1) if line.strip()]
    if not stems:
        raise InputError("split file lists no images", path=split_file)
    return stems


class VOCSplit(torch.utils.data.Dataset):
    """A VOC-layout split. ``ds[i]`` -> ``(image, mask)``: (3, H, W) uint8 and (H, W) int64 tensors.

    Not torchvision's ``VOCSegmentation`` (which takes ``image_set=``, gives PIL images and applies
    ``transforms``): pccseg's reader checks every file and value and gives tensors for its training stream.

    root: the VOC root; split: name of the split file (``train``, ``val``, ...); class_names: the
    label values' names (default: :func:`read_class_names`). File existence is checked on construction;
    sizes and mask values on every read, and for the whole split by :meth:`check`.
    """

    def __init__(self, root: str | Path, split: str = "train", class_names: Sequence[str] | None = None):
        try:
            self._open(root, split, class_names)
        except OSError as e:   # a folder or file that cannot be looked at (permissions, I/O): one line
            raise InputError(f"unreadable ({e.strerror or e})", path=e.filename or root) from None

    def _open(self, root: str | Path, split: str, class_names: Sequence[str] | None) -> None:
        self.root = voc_root(root)
        self.split = split
        self.class_names = list(class_names) if class_names is not None else read_class_names(self.root)
        self.stems = read_split(self.root, split)
        split_file = self.root / SPLIT_DIR / f"{split}.txt"
        for sub in (IMAGE_DIR, MASK_DIR):
            if not (self.root / sub).is_dir():
                raise InputError(f"folder {sub}/ not found (VOC layout)", path=self.root / sub)
        self.images: list[Path] = []
        self.masks: list[Path] = []
        base = dataset_folder(self.root)            # files are read only inside the dataset
        for n, stem in enumerate(self.stems, 1):
            image = self._find_image(stem)
            if image is None:
                raise InputError(f"image {stem!r} named in the split file not found",
                                 path=self.root / IMAGE_DIR / f"{stem}.jpg", field=f"{split_file.name} line {n}")
            mask = self.root / MASK_DIR / f"{stem}.png"
            if not mask.is_file():
                raise InputError(f"mask {stem!r} named in the split file not found", path=mask,
                                 field=f"{split_file.name} line {n}")
            self.images.append(check_inside(image, base, what="the dataset"))
            self.masks.append(check_inside(mask, base, what="the dataset"))

    def _find_image(self, stem: str) -> Path | None:
        for suffix in _IMAGE_SUFFIXES:
            p = self.root / IMAGE_DIR / f"{stem}{suffix}"
            if p.is_file():
                return p
        return None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.stems)

    def _check_sizes(self, i: int) -> None:
        im, mk = image_size(self.images[i]), image_size(self.masks[i])
        if im != mk:
            raise InputError(f"mask size {mk[0]}x{mk[1]} differs from image size "
                             f"{im[0]}x{im[1]} ({self.images[i].name})", path=self.masks[i])

    def _check_values(self, mask: np.ndarray, i: int) -> None:
        present = np.unique(mask)
        bad = present[(present >= self.num_classes) & (present != IGNORE_INDEX)]
        if bad.size:
            raise InputError(f"values {bad.tolist()} outside 0..{self.num_classes - 1} and {IGNORE_INDEX}",
                             path=self.masks[i], field="mask values")

    def _load_mask(self, i: int) -> np.ndarray:
        return load_mask(self.masks[i])

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``i`` as numpy: image (H, W, 3) uint8 RGB, mask (H, W) uint8; checked."""
        image = load_image(self.images[i])
        mask = self._load_mask(i)
        if image.shape[:2] != mask.shape:
            raise InputError(f"mask size {mask.shape[1]}x{mask.shape[0]} differs from image size "
                             f"{image.shape[1]}x{image.shape[0]} ({self.images[i].name})", path=self.masks[i])
        self._check_values(mask, i)
        return image, mask

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.read(i)
        return torch.from_numpy(image).permute(2, 0, 1).contiguous(), torch.from_numpy(mask).long()

    def check(self, values: bool = True, workers: int = 4) -> None:
        """Check the whole split up front: image/mask sizes (headers only) and, with ``values``, every
        mask's values (decodes the masks, in ``workers`` threads). Raises the first problem found."""

        def one(i: int) -> None:
            if values:
                self._check_values(self._load_mask(i), i)
            self._check_sizes(i)

        with ThreadPoolExecutor(max(1, workers)) as pool:
            for _ in pool.map(one, range(len(self))):
                pass
