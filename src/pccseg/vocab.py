"""Class vocabularies: the 21 Pascal VOC classes, their palette, and the renames of the report's Table 1.

A *class list* is a sequence of names whose index is the label value; index 0 is always the background
(the class the start-of-text token stands for). 255 marks an uncertain pixel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
IGNORE_INDEX = 255

#: Report Table 1: the words given to the text encoder for VOC names that are not plain English.
VOC_RENAMES: dict[str, str] = {
    "diningtable": "table",
    "tvmonitor": "monitor",
    "pottedplant": "pot plant",
    "aeroplane": "airplane",
}


def voc_palette() -> np.ndarray:
    """The standard Pascal VOC colour map, shape (256, 3) uint8 (index 255 is (224, 224, 192))."""
    pal = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


VOC_PALETTE = voc_palette()


def prompt_word(name: str, renames: dict[str, str] | None = None) -> str:
    """The text a class name is encoded as (``diningtable`` -> ``table``); other names pass unchanged."""
    return (VOC_RENAMES if renames is None else renames).get(name, name)


def class_index(name: str, classes: Sequence[str] = VOC_CLASSES) -> int:
    """Label value of ``name`` in ``classes``; ``KeyError`` with the known names when it is not there."""
    try:
        return list(classes).index(name)
    except ValueError:
        raise KeyError(f"unknown class {name!r} (known: {', '.join(classes[1:])})") from None


def check_class_names(names: object, *, path: str | None = None, field: str = "class_names") -> tuple[str, ...]:
    """``names`` as a class list if it is a non-empty list of at most 255 strings (255 is the uncertain
    value), else :class:`~pccseg.errors.InputError` naming ``path`` and ``field``."""
    from .errors import InputError

    if not (isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names)):
        raise InputError("must be a non-empty list of strings", path=path, field=field)
    if len(names) > IGNORE_INDEX:
        raise InputError(f"at most {IGNORE_INDEX} classes, got {len(names)}", path=path, field=field)
    return tuple(names)
