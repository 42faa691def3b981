"""Files: atomic writes (temporary name, then rename), palette PNG masks, RGB images, JSON, plain stems.

Every file and folder is created with the modes ``open()`` and ``mkdir`` give (0666 / 0777 less the
umask). A temporary name is ``.<final name>.<random>.pccseg.tmp`` (:data:`TEMP_SUFFIX`) beside the final
name; a folder being replaced is first renamed aside to ``.<final name>.<random>.old.pccseg.tmp``.
:func:`remove_temps` deletes those that a killed run left behind, after restoring a complete copy whose
final name a kill left missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from .vocab import VOC_PALETTE

#: Every temporary file or folder name ends so (and starts with a dot).
TEMP_SUFFIX = ".pccseg.tmp"
#: A folder renamed aside while its replacement is renamed in: ``.<name>.<random>.old.pccseg.tmp``.
_ASIDE = re.compile(r"^\.(?P<name>.+)\.(?P<token>[0-9a-f]{8})\.old" + re.escape(TEMP_SUFFIX) + "$")
#: The longest sample id (UTF-8 bytes): with ``.png`` and a temporary name's 25 more it fits in 255.
MAX_STEM_BYTES = 200
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<token>[0-9a-f]{8})" + re.escape(TEMP_SUFFIX) + "$")


#: Tests only (the kill-injection stress test): with ``PCCSEG_TEST_KILL_AT=N`` in its environment a process
#: ends at once, as a SIGKILL would end it (``os._exit(137)``: no clean-up), at the N-th rename of
#: :func:`atomic_path`, so that every write point can be hit in turn.
KILL_AT_ENV = "PCCSEG_TEST_KILL_AT"
_renames = {"pid": 0, "n": 0}


def _rename(src: Path, dst: Path) -> None:
    at = os.environ.get(KILL_AT_ENV)
    if at:
        if _renames["pid"] != os.getpid():
            _renames.update(pid=os.getpid(), n=0)
        _renames["n"] += 1
        if _renames["n"] == int(at):
            os._exit(137)
    os.replace(src, dst)


def _new_temp(path: Path, directory: bool) -> Path:
    """Create a fresh temporary file (mode 0666) or folder (0777) beside ``path``, less the umask."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            if directory:
                os.mkdir(tmp, 0o777)
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue


@contextlib.contextmanager
def atomic_path(path: str | Path, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on error remove it.

    A crash or a kill never leaves a half-written file under the final name (a kill may leave the
    temporary name, which :func:`remove_temps` recognises). With ``directory=True`` the temporary path is
    an (empty, created) directory, and an existing ``path`` is replaced without a moment with no complete
    copy: it is renamed aside (``.<name>.<random>.old.pccseg.tmp``, the same ``<random>`` as the new
    copy's temporary name), the new copy renamed in, then the old one removed. After a kill between the
    two renames, :func:`remove_temps` puts the complete new copy in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(path, directory)
    try:
        yield tmp
        if directory and os.path.lexists(path):
            aside = tmp.with_name(tmp.name[:-len(TEMP_SUFFIX)] + ".old" + TEMP_SUFFIX)
            _rename(path, aside)
            _rename(tmp, path)
            _remove(aside)
        else:
            _rename(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            _remove(tmp)
        raise


def _remove(path: str | Path) -> None:
    """Delete a file, a link (not what it points to) or a folder tree."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        Path(path).unlink(missing_ok=True)


def _restore(directory: Path, name: str | None, complete) -> None:
    """Put back the complete copies that a kill inside :func:`atomic_path` left under temporary names
    while the final name is missing: the new copy of an interrupted replacement (its old copy was renamed
    aside only once it was complete), else the old copy; or a temporary folder that ``complete(path)``
    recognises as whole (what versions before the rename-aside replacement left)."""
    entries = {e.name for e in os.scandir(directory)}
    for kind in ("aside", "complete"):
        for entry in sorted(entries):
            m = (_ASIDE if kind == "aside" else _TEMP).match(entry)
            if m is None or (name is not None and m["name"] != name) or m["name"] in entries:
                continue
            if kind == "aside":
                new = f".{m['name']}.{m['token']}{TEMP_SUFFIX}"
                source = new if new in entries else entry      # the new copy is complete: prefer it
            elif complete is not None and (directory / entry).is_dir() and complete(directory / entry):
                source = entry
            else:
                continue
            os.replace(directory / source, directory / m["name"])
            entries.discard(source)
            entries.add(m["name"])


def remove_temps(directory: str | Path, *, name: str | None = None, complete=None) -> int:
    """Delete the temporary files and folders (:data:`TEMP_SUFFIX`) directly in ``directory`` that killed
    runs left behind, or with ``name`` only those of that final name; returns how many. First, where a
    kill inside :func:`atomic_path` left a final name missing, its complete copy is put back (see
    :func:`_restore`; ``complete``: a test of whether a temporary folder is whole, for folders whose last
    file written marks them complete). Call it only while no other process writes them."""
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    _restore(directory, name, complete)
    prefix = "." if name is None else f".{name}."
    n = 0
    for entry in os.scandir(directory):
        if entry.name.startswith(prefix) and entry.name.endswith(TEMP_SUFFIX):
            _remove(entry.path)
            n += 1
    return n


def make_dir(path: str | Path, *, field: str | None = "--out") -> Path:
    """Create the output folder ``path`` (and its parents) or raise :class:`InputError` naming it: under
    a file, on a read-only or virtual file system (``/proc``), without permission."""
    from .errors import InputError

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the folder ({e.strerror or e})", path=path, field=field) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError("the folder is not writable", path=path, field=field)
    return path


def check_stem(stem: str, *, path: str | Path | None = None, line: int | None = None,
               key: str | None = None) -> str:
    """``stem`` if it is a plain file stem, else :class:`InputError` naming ``path``, ``line`` and ``key``.

    A stem read from a data file (a split-file line, a manifest id) names a file inside the folder it
    belongs to: it is not empty, holds no path separator, NUL or line break, does not start with a dot (so
    it is neither ``.`` nor ``..``, nor a hidden or temporary name), and is at most :data:`MAX_STEM_BYTES`
    bytes of UTF-8 (its files' and temporary names' must fit the file system's 255). An absolute path
    holds a separator.
    """
    from .errors import InputError

    where = ": ".join(x for x in (None if line is None else f"line {line}", key) if x) or None
    if not isinstance(stem, str) or not stem or stem.startswith(".") or any(c in stem for c in "/\\\0\n\r"):
        raise InputError(f"{stem!r} is not a plain file name (no path separators or line breaks, no leading dot, "
                         "not empty)", path=path, field=where)
    try:
        size = len(stem.encode("utf-8"))
    except UnicodeEncodeError:
        raise InputError(f"{stem!r} is not a plain file name (not valid Unicode)", path=path, field=where) from None
    if size > MAX_STEM_BYTES:
        raise InputError(f"a name of {size} bytes is longer than the limit of {MAX_STEM_BYTES} "
                         f"({stem[:20]!r}...)", path=path, field=where)
    return stem


def check_inside(path: str | Path, base: str | Path, *, what: str = "the folder") -> Path:
    """``path`` if it lies inside ``base`` once links are followed, else :class:`InputError` naming it: a
    file of a dataset or a run folder is never read through a link that leads out of it (one rule for
    every reader)."""
    from .errors import InputError

    real, root = os.path.realpath(path), os.path.realpath(base)
    if real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
        raise InputError(f"is a symbolic link out of {what} ({base}): pccseg does not follow it", path=path)
    return Path(path)


def check_no_links(*paths: str | Path) -> None:
    """:class:`InputError` naming the first of ``paths`` that is a symbolic link: pccseg never writes
    through one (a folder or file it writes into must be a real one of the output folder)."""
    from .errors import InputError

    for p in paths:
        if os.path.islink(p):
            raise InputError("is a symbolic link: pccseg writes only into real folders and files of its output "
                             "folder, never through a link", path=p)


def read_text(path: str | Path) -> str:
    """A UTF-8 text file's content (a leading byte-order mark, which Windows editors write, dropped);
    :class:`InputError` naming it when it is unreadable or not UTF-8."""
    from .errors import InputError

    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except OSError as e:
        raise InputError(f"unreadable ({e.strerror or e})", path=path) from None
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text (byte {e.start})", path=path) from None


def parse_json(text: str, *, path: str | Path | None = None, field: str | None = None) -> Any:
    """``json.loads(text)``; :class:`InputError` naming ``path`` and ``field`` when it is not valid JSON
    or nested too deeply for the parser."""
    from .errors import InputError

    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        where = f"column {e.colno}" if e.lineno == 1 else f"line {e.lineno} column {e.colno}"
        raise InputError(f"not valid JSON ({e.msg} at {where})", path=path, field=field) from None
    except RecursionError:
        raise InputError("JSON nested too deeply", path=path, field=field) from None


def respect_umask(folder: str | Path) -> None:
    """Give every file under ``folder`` mode 0666 and every folder 0777, less the umask (for what libraries
    such as safetensors write 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~mask)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666 & ~mask)


def save_tensors(path: str | Path, tensors: dict) -> None:
    """Write a dict of tensors as a safetensors file, atomically (safetensors' own ``save_file`` creates
    its files 0600, whatever the umask)."""
    from safetensors.torch import save

    data = save(tensors)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> dict:
    """The JSON object in a file.

    Raises:
        InputError: the file is unreadable, not UTF-8, not valid JSON, or not a JSON object (the message
            names it).
    """
    from .errors import InputError

    obj = parse_json(read_text(path), path=path)
    if not isinstance(obj, dict):
        raise InputError("expected a JSON object", path=path)
    return obj


def read_jsonl(path: str | Path, *, torn_tail: bool = False) -> list[dict]:
    """Objects of a JSON-lines file (blank lines skipped). ``torn_tail``: a last line without its newline
    that is not a JSON object (a kill cut an append short) is dropped instead of refused.

    Raises:
        InputError: the file is unreadable or not UTF-8, or a line is not a JSON object (the message names
            the line).
    """
    from .errors import InputError

    text = read_text(path)
    lines = text.splitlines()
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = parse_json(line, path=path, field=f"line {n}")
            if not isinstance(obj, dict):
                raise InputError("expected a JSON object", path=path, field=f"line {n}")
        except InputError:
            if torn_tail and n == len(lines) and not text.endswith("\n"):
                break
            raise
        out.append(obj)
    return out


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


@contextlib.contextmanager
def open_image(path: str | Path) -> Iterator[Image.Image]:
    """A PIL image of ``path``, opened lazily (header only until its pixels are read inside the block).
    Any error opening or decoding it, in the block too (unreadable, not an image, truncated, larger than
    PIL's decompression-bomb limit of ``Image.MAX_IMAGE_PIXELS`` x 2 pixels), is an :class:`InputError`
    naming the file."""
    from .errors import InputError

    try:
        with Image.open(path) as img:
            yield img
    except Image.DecompressionBombError as e:
        raise InputError(f"image too large to decode ({str(e).split(' could be')[0].rstrip(',. ')})", path=path) from None
    except UnidentifiedImageError:
        raise InputError("not an image (or in a format PIL cannot read)", path=path) from None
    except OSError as e:   # a file system error, or "image file is truncated"
        raise InputError(f"unreadable image ({e.strerror or e})", path=path) from None
    except (ValueError, SyntaxError, EOFError) as e:  # malformed image data in PIL's decoders
        if isinstance(e, InputError):
            raise
        raise InputError(f"unreadable image ({type(e).__name__}: {e})", path=path) from None


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the image file's header; :class:`InputError` as :func:`open_image`."""
    with open_image(path) as img:
        return img.size


def load_mask(path: str | Path) -> np.ndarray:
    """Read a palette (or grey) PNG mask as (H, W) uint8 label values (the palette is not applied);
    :class:`InputError` naming the file when it cannot (see :func:`open_image`)."""
    from .errors import InputError

    with open_image(path) as img:
        if img.mode not in ("P", "L"):
            raise InputError(f"mask must be a palette or greyscale PNG, got mode {img.mode}", path=path)
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
    """Read an image file as (H, W, 3) uint8 RGB; :class:`InputError` naming the file when it cannot
    (see :func:`open_image`)."""
    with open_image(path) as img:
        return np.array(img.convert("RGB"), dtype=np.uint8)


def read_bytes(path: str | Path) -> bytes:
    """A file's bytes; :class:`InputError` naming it when it is unreadable."""
    from .errors import InputError

    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise InputError(f"unreadable ({e.strerror or e})", path=path) from None
