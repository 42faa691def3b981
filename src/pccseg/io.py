"""Files: atomic writes (temporary name, then rename), palette PNG masks, RGB images."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image

from .vocab import VOC_PALETTE


@contextlib.contextmanager
def atomic_path(path: str | Path, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on error remove it.

    A crash or a kill never leaves a half-written file under the final name. With ``directory=True``
    the temporary path is an (empty, created) directory and an existing ``path`` directory is replaced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if directory:
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> dict:
    """The JSON object in a file.

    Raises:
        InputError: the file is unreadable, not valid JSON, or not a JSON object (the message names it).
    """
    from .errors import InputError

    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise InputError(f"unreadable ({e})", path=path) from None
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text (byte {e.start})", path=path) from None
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON ({e})", path=path) from None
    except RecursionError:
        raise InputError("JSON nested too deeply", path=path) from None
    if not isinstance(obj, dict):
        raise InputError("expected a JSON object", path=path)
    return obj


def read_jsonl(path: str | Path) -> list[dict]:
    """Objects of a JSON-lines file (blank lines skipped).

    Raises:
        InputError: the file is unreadable, or a line is not a JSON object (the message names the line).
    """
    from .errors import InputError

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"unreadable ({e})", path=path) from None
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text (byte {e.start})", path=path) from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"not valid JSON ({e.msg})", path=path, field=f"line {n}") from None
        if not isinstance(obj, dict):
            raise InputError("expected a JSON object", path=path, field=f"line {n}")
        out.append(obj)
    return out


def check_stem(line: str, path: str | Path, lineno: int) -> str:
    """``line`` of a list file (a split file) as a file stem: a plain name, never a path.

    Raises:
        InputError: the line holds a folder separator, is ``.`` / ``..``, or holds a NUL byte; the
            message names the file and the line number.
    """
    from .errors import InputError

    stem = line.strip()
    if stem in (".", "..") or "/" in stem or "\\" in stem or "\0" in stem:
        raise InputError(f"{stem!r} is not a file stem (a name without folders, '..' or a leading '/')",
                         path=path, field=f"line {lineno}")
    return stem


def remove_temporaries(folder: str | Path, names: Sequence[str]) -> list[Path]:
    """Remove what :func:`atomic_path` left in ``folder`` for the files ``names`` when a run was killed
    (``.<name>.<random>.tmp`` files and directories); returns what was removed."""
    folder = Path(folder)
    removed = []
    for name in names:
        for p in folder.glob(f".{glob.escape(name)}.*.tmp"):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _as_uint8_2d(mask: Any) -> np.ndarray:
    if hasattr(mask, "detach"):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    return mask.astype(np.uint8)


def mask_to_image(mask: Any) -> Image.Image:
    """(H, W) label values -> single-channel PIL image in mode ``P`` with the VOC palette."""
    img = Image.fromarray(_as_uint8_2d(mask), mode="P")
    img.putpalette(VOC_PALETTE.reshape(-1).tolist())
    return img


def save_mask(path: str | Path, mask: Any) -> None:
    """Save a (H, W) mask (values 0..N and 255) as a VOC palette PNG, atomically."""
    img = mask_to_image(mask)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def load_mask(path: str | Path) -> np.ndarray:
    """Read a palette (or grey) PNG mask as (H, W) uint8 label values (the palette is not applied)."""
    with Image.open(path) as img:
        if img.mode not in ("P", "L"):
            raise ValueError(f"{path}: mask must be a palette or greyscale PNG, got mode {img.mode}")
        return np.array(img, dtype=np.uint8)


def save_image(path: str | Path, image: Any, *, format: str | None = None, **kwargs: Any) -> None:
    """Save an (H, W, 3) uint8 array / tensor or a PIL image, atomically (format from the suffix)."""
    if not isinstance(image, Image.Image):
        if hasattr(image, "detach"):
            image = image.detach().cpu().numpy()
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    path = Path(path)
    fmt = format or {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}.get(path.suffix.lower(), "PNG")
    with atomic_path(path) as tmp:
        image.save(tmp, format=fmt, **kwargs)


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB."""
    with Image.open(path) as img:
        return np.array(img.convert("RGB"), dtype=np.uint8)
