"""One round of self-training (``pccseg train --self-train THRESHOLD``).

A first segmenter (the *teacher*, ``RUN/teacher``) trains on the labeller's masks; it then predicts every
training image, and its confident predictions (softmax probability >= THRESHOLD) relabel the masks by the
rule ``--self-train-rule`` (:func:`relabel_mask`) into a new VOC-layout dataset, ``RUN/relabelled`` (the
images are hard links to the originals, or copies where links are impossible; the source dataset is not
touched); a second segmenter (the *student*) trains on it, from scratch and with the same settings, in
``RUN`` itself, so ``RUN/last`` is the final model. With ``--ema`` the teacher's average relabels.

Every part resumes: both trainings from their checkpoints, the relabelling per mask (the split file,
written last, marks it done).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import torch

from ..dataset.folder import IMAGES, MASKS, SETS
from ..dataset.voc import VOCSplit
from ..errors import InputError
from ..io import atomic_path, load_mask, make_dir, read_json, remove_temps, save_mask, write_json
from ..vocab import IGNORE_INDEX
from .config import SELF_TRAIN_RULES, TrainConfig
from .deeplab import load_model, normalize
from .ema import EMA_DIR
from .checkpoint import LAST
from .loop import train
from .evaluate import predict

TEACHER, RELABELLED = "teacher", "relabelled"
SETTINGS, REPORT = "settings.json", "relabel.json"


def relabel_mask(mask: torch.Tensor, probs: torch.Tensor, threshold: float, rule: str = "fill") -> torch.Tensor:
    """A labeller's mask relabelled by a segmenter's class probabilities.

    mask: (H, W) integer labels, 255 = uncertain; probs: (C, H, W) softmax probabilities of the same
    image; a pixel is *confident* where its largest probability is >= ``threshold``. ``fill``: a
    confident prediction replaces an uncertain pixel only (the labeller's certain labels are kept);
    ``all``: a confident prediction replaces any pixel. Returns a new (H, W) mask of ``mask``'s dtype.
    """
    if rule not in SELF_TRAIN_RULES:
        raise ValueError(f"unknown rule {rule!r} ({', '.join(SELF_TRAIN_RULES)})")
    if probs.shape[-2:] != mask.shape:
        raise ValueError(f"probabilities {tuple(probs.shape)} and mask {tuple(mask.shape)} differ in size")
    conf, pred = probs.max(0)
    take = conf >= threshold
    if rule == "fill":
        take &= mask == IGNORE_INDEX
    return torch.where(take, pred.to(mask.dtype), mask)


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)


@torch.no_grad()
def relabel_dataset(checkpoint: str | Path, data: str | Path, out: str | Path, *, split: str = "train",
                    threshold: float = 0.9, rule: str = "fill", device: str | torch.device | None = None,
                    short_side: int | None = None) -> dict:
    """Relabel split ``split`` of the VOC-layout dataset ``data`` with the segmenter ``checkpoint`` (see
    :func:`relabel_mask`) into the dataset ``out`` (same split name, images linked). Resumes a folder with
    the same settings; refuses one that holds another relabelling. Returns (and writes to
    ``out/relabel.json``) the shares of pixels changed, filled (uncertain before, certain after) and still
    uncertain, over all pixels."""
    if rule not in SELF_TRAIN_RULES:
        raise InputError(f"must be one of {', '.join(SELF_TRAIN_RULES)}, got {rule!r}", field="self_train_rule")
    source = VOCSplit(data, split)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, meta = load_model(checkpoint, device)
    if meta["num_classes"] != source.num_classes:
        raise InputError(f"checkpoint predicts {meta['num_classes']} classes but dataset {source.root} has "
                         f"{source.num_classes}", path=Path(meta["path"]) / "checkpoint.json", field="num_classes")
    out = make_dir(out, field="self_train")
    remove_temps(out)
    settings = {"source": str(source.root.resolve()), "split": split, "class_names": source.class_names,
                "teacher": str(Path(meta["path"]).resolve()), "teacher_iteration": meta.get("iteration"),
                "threshold": threshold, "rule": rule, "short_side": short_side}
    if (out / SETTINGS).is_file():
        old = read_json(out / SETTINGS)
        diff = [k for k in settings if old.get(k) != settings[k]]
        if diff:
            raise InputError(f"holds another relabelling ({', '.join(diff)} differ); remove the folder or "
                             "start afresh with --no-resume", path=out / SETTINGS)
    else:
        write_json(out / SETTINGS, settings)
    for sub in (IMAGES, MASKS, SETS):
        make_dir(out / sub, field="self_train")
    changed = filled = before = uncertain = pixels = 0
    for i, stem in enumerate(source.stems):
        image, mask = source[i]
        target = out / MASKS / f"{stem}.png"
        if target.is_file():
            new = torch.from_numpy(load_mask(target)).long()
        else:
            logits = predict(model, normalize(image[None].to(device)), short_side)
            new = relabel_mask(mask, logits[0].float().softmax(0).cpu(), threshold, rule)
            _link_or_copy(source.images[i], out / IMAGES / source.images[i].name)
            save_mask(target, new.to(torch.uint8))          # atomic; the mask marks the sample done
        changed += int((new != mask).sum())
        filled += int(((mask == IGNORE_INDEX) & (new != IGNORE_INDEX)).sum())
        before += int((mask == IGNORE_INDEX).sum())
        uncertain += int((new == IGNORE_INDEX).sum())
        pixels += mask.numel()
    report = {"images": len(source), "changed": changed / pixels, "filled": filled / pixels,
              "uncertain_before": before / pixels, "uncertain_after": uncertain / pixels}
    write_json(out / REPORT, report)
    with atomic_path(out / SETS / f"{split}.txt") as tmp:   # last: the relabelled dataset is complete
        tmp.write_text("".join(s + "\n" for s in source.stems))
    return report


def self_train(config: TrainConfig) -> dict:
    """Train the teacher (``RUN/teacher``), relabel (``RUN/relabelled``), train the student (``RUN``); returns
    the student's :func:`~pccseg.train.loop.train` result with ``teacher`` (the teacher's) and ``relabel``
    (:func:`relabel_dataset`'s report)."""
    if config.self_train is None:
        raise ValueError("config.self_train is None: a plain run, call train()")
    run = Path(config.out)
    plain = dataclasses.replace(config, self_train=None)
    if config.resume is False:
        shutil.rmtree(run / RELABELLED, ignore_errors=True)
    teacher = train(dataclasses.replace(plain, out=str(run / TEACHER)))
    report = relabel_dataset(run / TEACHER / (EMA_DIR if config.ema is not None else LAST), config.data,
                             run / RELABELLED, split=config.train_split, threshold=config.self_train,
                             rule=config.self_train_rule, device=config.device, short_side=config.short_side)
    student = train(dataclasses.replace(plain, data=str(run / RELABELLED)))
    return dict(student, teacher=teacher, relabel=report)
