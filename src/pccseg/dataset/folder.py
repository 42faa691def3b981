"""The dataset directory that every pccseg writer makes: ``generate``, ``label --dataset``, ``toy render``
and the experiment's sets (VOC layout, read unchanged by torchvision's ``VOCSegmentation``)::

    DIR/JPEGImages/<stem>.jpg
    DIR/SegmentationClass/<stem>.png        VOC palette PNG, values 0..20, 255 = uncertain
    DIR/ImageSets/Segmentation/train.txt    one stem per line, sorted
    DIR/ImageSets/Segmentation/val.txt      the held-out stems: a ``val_share`` in settings.json, or the
                                            manifest lines' ``split`` (toy render)
    DIR/manifest.jsonl                      one JSON object per sample (:func:`manifest_entry`)
    DIR/manifest.d/rank-<r>.jsonl           the per-process shards manifest.jsonl is rebuilt from
    DIR/settings.json                       the run's settings
    DIR/captures/<stem>/                    with --keep-captures: capture directories
    DIR/VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets}   relative links to the folders
                                            above, where torchvision's ``VOCSegmentation(DIR)`` looks

Every writer (``generate``, ``label --dataset``, ``toy render``, the experiment's sets) opens the folder
with its settings (:meth:`DatasetFolder.open`: checked there, once) and writes each sample with
:meth:`DatasetFolder.write_sample`. A sample is complete when its mask exists and its manifest line is
whole: the image is written first, then the capture (optional), then the manifest line, then the mask,
each file atomically. ``manifest.jsonl`` and the split files are rebuilt from the shards and the files on
disk (:meth:`DatasetFolder.rebuild`), so an interrupted or multi-process run repairs them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

from ..errors import InputError
from ..params import Real, check_value
from ..io import atomic_path, check_inside, check_no_links, read_json, read_jsonl, remove_temps, write_json

log = logging.getLogger(__name__)

IMAGES = "JPEGImages"                    # the VOC layout (voc.py reads it)
MASKS = "SegmentationClass"
SETS = "ImageSets/Segmentation"
#: Where torchvision's ``VOCSegmentation(root)`` looks for the VOC 2012 tree.
TORCHVISION_VOC_DIR = "VOCdevkit/VOC2012"
JPEG_QUALITY = 95
TRAIN_LIST = "train.txt"
VAL_LIST = "val.txt"
MANIFEST = "manifest.jsonl"
SHARDS = "manifest.d"
SETTINGS = "settings.json"
CAPTURES = "captures"

#: settings.json keys that do not have to match when a run resumes an existing folder.
INFORMATIONAL_KEYS = ("pccseg_version", "batch_size", "cpu_offload", "device", "processes", "scheduler", "threads")
#: informational keys that change the float rounding of the images: a run resumed with others makes its
#: remaining images not bit for bit as an uninterrupted run would (torch's kernels differ by device, batch
#: shape and CPU thread count)
ROUNDING_KEYS = ("device", "batch_size", "threads")


def _canon(obj: Any) -> Any:
    """JSON round trip: tuples become lists, so settings compare as they are stored."""
    return json.loads(json.dumps(obj))


#: Largest record id (int64): an id is a file stem here and may be a tensor value elsewhere.
MAX_ID = 2**63 - 1


def sample_stem(record_id: int) -> str:
    """File stem of a prompt record's sample: the record id, zero-padded to six digits.

    Raises:
        ValueError: ``record_id`` is not an integer from 0 to :data:`MAX_ID` (a digit string is taken).
    """
    try:
        rid = int(record_id)
    except (TypeError, ValueError):
        rid = -1
    if isinstance(record_id, bool) or not 0 <= rid <= MAX_ID:
        shown = repr(record_id) if len(repr(record_id)) <= 40 else repr(record_id)[:37] + "..."
        raise ValueError(f"expected an integer from 0 to 2**63 - 1, got {shown}")
    return f"{rid:06d}"


#: A share of the samples held out in val.txt (:func:`val_stems`): 0 <= share < 1.
VAL_SHARE = Real(0, 1, closed="left")


def check_val_share(share: Any, *, path: Path | None = None, field: str = "val_share") -> float:
    """``share`` when :data:`VAL_SHARE` accepts it, else :class:`InputError` naming ``path`` and ``field``."""
    check_value(VAL_SHARE, share, field, path)
    return share


def val_stems(stems: list[str], share: float) -> set[str]:
    """The stems held out for validation: ``round(share * len(stems))`` of them, those whose SHA-256
    comes first. Fixed by the stems alone (no seed, no order), so every rebuild picks the same ones."""
    n = round(share * len(stems))
    return set(sorted(stems, key=lambda s: hashlib.sha256(s.encode()).hexdigest())[:n])


def mask_stats(mask, class_names: Sequence[str]) -> tuple[float, dict[str, int]]:
    """(share of 255 pixels, {class name: pixels} for the classes present) of an (H, W) uint8 mask tensor."""
    import torch

    counts = torch.bincount(mask.reshape(-1).long(), minlength=256)
    pixels = {class_names[v]: int(counts[v]) for v in range(min(len(class_names), 255)) if counts[v] > 0}
    return round(int(counts[255]) / mask.numel(), 6), pixels


def settings_diff(old: dict, new: dict) -> list[str]:
    """Keys (with old and new values) that differ, ignoring :data:`INFORMATIONAL_KEYS`."""
    old, new = _canon(old), _canon(new)
    keys = sorted((set(old) | set(new)) - set(INFORMATIONAL_KEYS))
    return [f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}" for k in keys if old.get(k) != new.get(k)]


def rounding_changes(old: dict, new: dict) -> list[str]:
    """``key old -> new`` for each of :data:`ROUNDING_KEYS` that both hold, with different values."""
    old, new = _canon(old), _canon(new)
    return [f"{k} {old[k]!r} -> {new[k]!r}" for k in ROUNDING_KEYS if k in old and k in new and old[k] != new[k]]


def manifest_entry(stem: str, mask, class_names: Sequence[str], *, record_id: Any, prompt: str | None,
                   classes: Sequence[str], seed: int | None, timings: dict[str, float] | None = None,
                   **extra: Any) -> dict:
    """One manifest line: id, record_id, prompt, classes, seed, uncertain_share, class_pixels (of ``mask``,
    an (H, W) uint8 tensor on the host, see :func:`mask_stats`), timings in seconds (rounded to 0.1 ms;
    left out when None), then ``extra`` as given."""
    uncertain, pixels = mask_stats(mask, class_names)
    entry = {"id": stem, "record_id": record_id, "prompt": prompt, "classes": list(classes), "seed": seed,
             "uncertain_share": uncertain, "class_pixels": pixels}
    if timings is not None:
        entry["timings"] = {k: round(v, 4) for k, v in timings.items()}
    return {**entry, **extra}


class DatasetFolder:
    """Paths and bookkeeping of one dataset directory, and the one writer of its samples.

    ``DatasetFolder(root)`` reads and repairs; a run that writes opens it with its settings
    (:meth:`open`), writes them (:meth:`bind`) and then its samples (:meth:`write_sample`).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.settings: dict | None = None      # what this run records in settings.json (set by open)
        self.stored: dict | None = None        # the folder's settings.json when it binds the run (open)
        self._bound = False

    @classmethod
    def open(cls, root: str | Path, settings: dict, *, overwrite: bool = False) -> DatasetFolder:
        """The folder ``root`` for a run with ``settings`` (the settings.json it is to hold), checked once:
        :class:`InputError` when ``root`` is not a directory, a folder or file the writers write is a link
        (:meth:`check_no_links`), or the folder holds samples of a run with other settings (keys outside
        :data:`INFORMATIONAL_KEYS` that differ). Settings bind a folder only once a sample is written, so a
        run that failed before its first sample does not lock the folder to its options. ``overwrite``:
        the run redoes every sample, so the folder's settings are not compared (and :meth:`bind` replaces
        them). Writes nothing."""
        folder = cls(root)
        folder.settings = dict(settings)
        if folder.root.exists() and not folder.root.is_dir():
            raise InputError("output path exists and is not a directory", path=folder.root, field="--out")
        if folder.root.is_dir():
            folder.check_no_links()
        path = folder.settings_path
        if overwrite or not path.is_file():
            return folder
        old = read_json(path)
        diff = settings_diff(old, settings)
        if diff and folder.holds_samples():
            raise InputError("this folder holds a run with other settings (" + "; ".join(diff) +
                             "): use another --out, or the earlier run's options to resume it", path=path)
        if not diff:
            folder.stored, folder._bound = old, True
        return folder

    def bind(self, settings: dict | None = None) -> None:
        """Write settings.json (``settings``, default: those given to :meth:`open`) unless the folder's
        own already bind the run (then they are kept, as the run's first start wrote them). Once."""
        if self._bound:
            return
        if settings is not None:
            self.settings = dict(settings)
        if self.settings is None:
            raise ValueError("open the folder with its settings first (DatasetFolder.open)")
        write_json(self.settings_path, _canon(self.settings))
        self._bound = True

    def write_sample(self, stem: str, image, mask, entry: dict, *, rank: int = 0, capture=None) -> None:
        """Write one sample: the image (``image``: (H, W, 3) uint8 array, JPEG), its capture directory
        (``capture``: a :class:`~pccseg.capture.format.Capture`, optional), the manifest ``entry`` (into
        process ``rank``'s shard, :meth:`append_manifest`), then the mask (``mask``: (H, W) uint8 tensor
        or array; last: its presence marks the sample done), each atomically. SIGTERM / Ctrl-C wait until
        the sample is written (:func:`pccseg.signals.hold_interrupts`)."""
        from ..io import save_image, save_mask
        from ..signals import hold_interrupts

        with hold_interrupts():
            save_image(self.image_path(stem), image, quality=JPEG_QUALITY)
            if capture is not None:
                from ..capture.format import save_capture

                save_capture(self.capture_dir(stem), capture)
            self.append_manifest(rank, entry)
            save_mask(self.mask_path(stem), mask)

    # paths
    def image_path(self, stem: str) -> Path:
        return self.root / IMAGES / f"{stem}.jpg"

    def mask_path(self, stem: str) -> Path:
        return self.root / MASKS / f"{stem}.png"

    def capture_dir(self, stem: str) -> Path:
        return self.root / CAPTURES / stem

    @property
    def settings_path(self) -> Path:
        return self.root / SETTINGS

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    @property
    def train_list_path(self) -> Path:
        return self.root / SETS / TRAIN_LIST

    @property
    def val_list_path(self) -> Path:
        return self.root / SETS / VAL_LIST

    def shard_path(self, rank: int) -> Path:
        return self.root / SHARDS / f"rank-{rank:04d}.jsonl"

    def is_done(self, stem: str, *, with_capture: bool = False) -> bool:
        """The files of a sample are there: its image and its mask (written last), and with ``with_capture``
        also its capture directory (a rerun with ``--keep-captures`` redoes samples made without).
        :meth:`todo` also asks for the manifest line."""
        done = self.mask_path(stem).is_file() and self.image_path(stem).is_file()
        return done and (not with_capture or (self.capture_dir(stem) / "capture.json").is_file())

    def todo(self, stems: list[str], *, with_capture: bool = False) -> list[str]:
        """The ``stems`` (in order) whose sample is not done: files missing (:meth:`is_done`), or no
        whole manifest line (a torn line from a kill): such a sample is made again."""
        entries = self.read_shards()
        return [s for s in stems if s not in entries or not self.is_done(s, with_capture=with_capture)]

    # settings
    def holds_samples(self) -> bool:
        """Whether any sample file is there (an image, a mask, a manifest shard line, a capture)."""
        for d in (self.root / IMAGES, self.root / MASKS, self.root / CAPTURES):
            if d.is_dir() and any(not e.name.startswith(".") for e in os.scandir(d)):
                return True
        return any(shard.stat().st_size for shard in self._shards())

    # manifest
    def append_manifest(self, rank: int, entry: dict) -> None:
        """Append one line to this process's shard (flushed and synced before returning). The line starts
        on a fresh line even when the shard ends in a line torn by a kill."""
        path = self.shard_path(rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _jsonl([entry]).encode("utf-8")
        with open(path, "a+b") as f:
            end = f.seek(0, os.SEEK_END)
            if end:
                f.seek(end - 1)
                if f.read(1) != b"\n":
                    data = b"\n" + data
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def _shards(self) -> list[Path]:
        shard_dir = self.root / SHARDS
        return sorted(shard_dir.glob("rank-*.jsonl")) if shard_dir.is_dir() else []

    def read_shards(self) -> dict[str, dict]:
        """stem -> latest manifest entry over all shards; lines that are not whole entries are left out."""
        return {str(e["id"]): e for shard in self._shards() for e in _read_shard(shard)[0]}

    def check_no_links(self) -> None:
        """:class:`InputError` when a folder or file the dataset's writers write into is a symbolic link
        (its folders, its shards, settings.json, manifest.jsonl, a capture folder): nothing is written
        through one, nor read from one on resume. The root may be a link; ``VOCdevkit``'s links are the
        dataset's own."""
        paths = [self.root / d for d in (IMAGES, MASKS, SETS.split("/")[0], SETS, SHARDS, CAPTURES)]
        paths += [self.settings_path, self.manifest_path, *self._shards()]
        if (self.root / CAPTURES).is_dir() and not (self.root / CAPTURES).is_symlink():
            paths += [Path(e.path) for e in os.scandir(self.root / CAPTURES)]
        check_no_links(*paths)

    def repair(self) -> None:
        """Undo what kills leave behind; call it before a run, while no process writes into the dataset.

        Deletes the temporary files and folders (:func:`pccseg.io.remove_temps`) in every folder the
        dataset's writers write (the root, the VOC folders, ``manifest.d``, ``VOCdevkit/VOC2012``, ``captures``
        and each capture folder), and drops the shard lines that a kill tore: their samples count as not done (:meth:`todo`) and are
        made again.
        """
        self.check_no_links()
        captures = self.root / CAPTURES
        folders = [self.root, self.root / IMAGES, self.root / MASKS, self.root / SETS.split("/")[0],
                   self.root / SETS, self.root / SHARDS, self.root / TORCHVISION_VOC_DIR, captures]
        if captures.is_dir():
            folders += sorted(Path(e.path) for e in os.scandir(captures) if e.is_dir(follow_symlinks=False))
        for d in folders:
            n = remove_temps(d)
            if n:
                log.info("%s: removed %d temporary file(s) of an interrupted run", d, n)
        for shard in self._shards():
            entries, torn = _read_shard(shard)
            if torn:
                log.warning("%s: line(s) %s torn by a kill: dropped, their samples are made again", shard,
                            ", ".join(map(str, torn)))
            latest = list({str(e["id"]): e for e in entries}.values())   # a sample made again: its last line
            if torn or len(latest) < len(entries):
                with atomic_path(shard) as tmp:
                    tmp.write_text(_jsonl(latest), encoding="utf-8")

    def stems_on_disk(self) -> list[str]:
        """Stems whose image and mask both exist, sorted."""
        mask_dir = self.root / MASKS
        if not mask_dir.is_dir():
            return []
        stems = [p.stem for p in mask_dir.glob("*.png") if not p.name.startswith(".")]
        return sorted(s for s in stems if self.image_path(s).is_file())

    def rebuild(self) -> tuple[int, int]:
        """Rewrite manifest.jsonl, train.txt and val.txt atomically from the shards and the files on disk,
        and link the torchvision layout (:meth:`link_voc_layout`). A sample goes to the split its manifest
        entry names (``"split": "train"`` or ``"val"``, as ``toy render`` writes them), else to val.txt
        when it is among the ``val_share`` of settings.json (:func:`val_stems`), else to train.txt. val.txt
        is written when it may hold samples.

        Returns (samples in the split files, samples in manifest.jsonl).
        """
        stems = self.stems_on_disk()
        share = read_json(self.settings_path).get("val_share", 0) if self.settings_path.is_file() else 0
        check_val_share(share, path=self.settings_path)
        held_out = val_stems(stems, share) if share else set()
        entries = self.read_shards()
        manifest = [entries[s] for s in stems if s in entries]
        missing = len(stems) - len(manifest)
        if missing:
            log.warning("%s: %d complete sample(s) have no manifest entry (a rerun makes them again)", self.root,
                        missing)
        split = {s: "val" if s in held_out else "train" for s in stems}
        for s in stems:
            named = entries.get(s, {}).get("split")
            if named is not None and named not in ("train", "val"):
                raise InputError(f"must be 'train' or 'val', got {named!r} (sample {s})", path=self.root / SHARDS,
                                 field="split")
            split[s] = named or split[s]
        with atomic_path(self.manifest_path) as tmp:
            tmp.write_text(_jsonl(manifest), encoding="utf-8")
        with atomic_path(self.train_list_path) as tmp:
            tmp.write_text("".join(s + "\n" for s in stems if split[s] == "train"))
        if share or "val" in split.values():
            with atomic_path(self.val_list_path) as tmp:
                tmp.write_text("".join(s + "\n" for s in stems if split[s] == "val"))
        self.link_voc_layout()
        return len(stems), len(manifest)

    def link_voc_layout(self) -> None:
        """Make ``VOCdevkit/VOC2012/`` hold relative links to ``JPEGImages``, ``SegmentationClass`` and
        ``ImageSets``, so that ``torchvision.datasets.VOCSegmentation(root)`` reads the dataset unchanged
        (it looks there). Links that exist are kept; where links cannot be made, a warning."""
        inner = self.root / TORCHVISION_VOC_DIR
        for name in (IMAGES, MASKS, SETS.split("/")[0]):
            link = inner / name
            if link.is_symlink() or link.exists():
                continue
            try:
                inner.mkdir(parents=True, exist_ok=True)
                link.symlink_to(Path("..", "..", name), target_is_directory=True)
            except OSError as e:
                log.warning("%s: cannot link %s for torchvision's VOCSegmentation (%s)", self.root, link, e)
                return


def _jsonl(entries: list[dict]) -> str:
    return "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries)


def _read_shard(shard: Path) -> tuple[list[dict], list[int]]:
    """The manifest entries of a shard, and the numbers of its lines that are not whole entries."""
    entries, torn = [], []
    for n, line in enumerate(shard.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            e = json.loads(line.decode("utf-8"))
        except (ValueError, RecursionError):  # ValueError: not UTF-8 or not JSON
            e = None
        if isinstance(e, dict) and "id" in e:
            entries.append(e)
        else:
            torn.append(n)
    return entries, torn


def read_manifest(root: str | Path) -> list[dict]:
    """The entries of ``root/manifest.jsonl`` (never read through a link out of ``root``)."""
    return read_jsonl(check_inside(Path(root) / MANIFEST, root, what="the dataset"))
