"""How good a toy model is: prompt adherence of its images, and the quality of the masks pccseg makes from
its attention, scored against the colour-family ground truth of the generated images (:mod:`.judge`).

:func:`score_model` generates images for toy prompts with capture, labels each one with labellers of
:mod:`pccseg.labellers` (default PCC and the class maps alone, ``attn``), and returns adherence, mIoU of each labeller's masks and the uncertain
share. Masks are scored two ways: ``miou`` counts an uncertain pixel (255) as wrong, ``miou_certain``
leaves uncertain pixels out. Ground-truth pixels whose colour is ambiguous (255) are left out of both.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..vocab import VOC_CLASSES
from .judge import adherence, colour_labels
from .world import toy_prompt_records

N_CLASSES = len(VOC_CLASSES)


@dataclass
class MaskScore:
    """Confusion counts of one labeller over many images (rows: ground truth, columns: prediction;
    column 255 is folded into an extra last column for uncertain pixels)."""

    cm: np.ndarray = field(default_factory=lambda: np.zeros((N_CLASSES, N_CLASSES + 1), np.int64))

    def add(self, pred: np.ndarray, gt: np.ndarray) -> None:
        keep = gt != 255
        p = pred[keep].astype(np.int64)
        p[p == 255] = N_CLASSES
        np.add.at(self.cm, (gt[keep].astype(np.int64), p), 1)

    def iou(self, certain_only: bool = False) -> np.ndarray:
        cm = self.cm[:, :N_CLASSES] if certain_only else self.cm
        tp = np.diag(cm[:, :N_CLASSES]).astype(np.float64)
        union = cm.sum(1) + cm[:, :N_CLASSES].sum(0) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / union, np.nan)

    def summary(self) -> dict:
        iou = self.iou()
        return {"miou": float(np.nanmean(iou)), "miou_certain": float(np.nanmean(self.iou(True))),
                "uncertain": float(self.cm[:, N_CLASSES].sum() / max(1, self.cm.sum())),
                "iou": {VOC_CLASSES[i]: round(float(v), 4) for i, v in enumerate(iou) if not np.isnan(v)}}


def judge_error(n: int = 300, seed: int = 5_000_000) -> dict:
    """The colour-family ground truth (:func:`~pccseg.toy.judge.colour_labels`) against the exact label maps
    of ``n`` rendered scenes (seeds ``seed ..``) saved as JPEG (quality 95, as datasets store images):
    ``pixel_acc`` and ``unknown`` (shares of all pixels), ``miou`` (unknown pixels counted as wrong),
    ``adherence`` of the rendered scenes themselves (by the judge) and ``n``."""
    import io

    from PIL import Image

    from .world import render_scene

    score, ok = MaskScore(), 0
    for s in range(n):
        sc = render_scene(seed + s)
        buf = io.BytesIO()
        Image.fromarray(sc.image).save(buf, format="JPEG", quality=95)
        img = np.array(Image.open(buf))
        score.add(colour_labels(img), sc.labels)
        ok += adherence(img, sc.classes).ok
    cm = score.cm
    return {"pixel_acc": float(np.trace(cm[:, :-1]) / cm.sum()), "unknown": float(cm[:, -1].sum() / cm.sum()),
            "miou": score.summary()["miou"], "adherence": ok / n, "n": n}


def round_trip(vae, n: int = 200, seed: int = 1_000_000, batch_size: int = 8) -> dict:
    """The ceiling that a toy model's VAE sets on prompt adherence: ``n`` rendered scenes (seeds ``seed ..``)
    encoded and decoded by ``vae`` (posterior mean), then judged against their captions' classes. Returns
    ``adherence`` (the judge's rule), ``adherence_all_pixels`` (every pixel counted: no opening, see
    :func:`~pccseg.toy.judge.present_classes`), ``l1`` (mean absolute error, 0-255) and ``n``."""
    from .judge import colour_labels, present_classes
    from .world import render_scene

    p = next(vae.parameters())
    ok, ok_all, l1 = 0, 0, []
    for i in range(0, n, batch_size):
        scenes = [render_scene(seed + s) for s in range(i, min(n, i + batch_size))]
        x = torch.from_numpy(np.stack([sc.image for sc in scenes])).permute(0, 3, 1, 2).to(p.device, p.dtype)
        with torch.no_grad():
            y = vae.decode(vae.encode(x / 127.5 - 1).latent_dist.mean).sample
        ims = ((y.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        for sc, im in zip(scenes, ims):
            lab = colour_labels(im)
            ok += present_classes(lab) == set(sc.classes)
            ok_all += present_classes(lab, opening=1) == set(sc.classes)
            l1.append(np.abs(im.astype(np.float32) - sc.image).mean())
    return {"adherence": ok / n, "adherence_all_pixels": ok_all / n, "l1": float(np.mean(l1)), "n": n}


def score_model(pipe, records: Sequence[dict], *, size: int = 128, steps: int = 20, guidance: float = 5.0,
                seed: int = 2024, batch_size: int = 8, labellers: Sequence[str] = ("pcc", "attn")) -> dict:
    """Generate ``records`` (toy prompt records) with capture and score adherence and masks.

    ``labellers``: names of :mod:`pccseg.labellers` labellers, each with its default parameters (``pcc``:
    the report's; ``attn``: the class maps alone; ``dd``: Dataset Diffusion's rule, which makes the capture
    record the self-attention probabilities). Returns a dict with ``adherence``, per-labeller mask scores,
    ``images`` (uint8 list), ``gts`` and ``masks`` (name -> list) for pictures.
    """
    from ..capture.attention import capture
    from ..labellers.registry import get_labeller

    labellers = {name: get_labeller(name) for name in labellers}
    self_probs = any(lab.needs_self_probs for lab in labellers.values())
    scores = {k: MaskScore() for k in labellers}
    ok, images, masks, gts = [], [], {k: [] for k in labellers}, []
    t0 = time.perf_counter()
    for i in range(0, len(records), batch_size):
        batch = records[i:i + batch_size]
        gens = [torch.Generator("cpu").manual_seed(seed + i + j) for j in range(len(batch))]
        with capture(pipe, [r["classes"] for r in batch], self_probs=self_probs) as cap:
            out = pipe([r["prompt_sd"] for r in batch], num_inference_steps=steps, guidance_scale=guidance,
                       height=size, width=size, generator=gens, output_type="np")
        caps = cap.captures(out.images)
        for r, c in zip(batch, caps):
            img = c.image.numpy()
            gt = colour_labels(img)
            ok.append(adherence(img, r["classes"]).ok)
            images.append(img)
            gts.append(gt)
            for name, lab in labellers.items():
                m = lab.label(c).mask.cpu().numpy()
                scores[name].add(m, gt)
                masks[name].append(m)
    return {"adherence": float(np.mean(ok)), "n": len(ok), "seconds": round(time.perf_counter() - t0, 1),
            "labellers": {k: s.summary() for k, s in scores.items()}, "images": images, "masks": masks, "gts": gts}


def picture(images: Sequence[np.ndarray], rows: dict[str, Sequence[np.ndarray]], captions: Sequence[str] | None = None,
            n: int = 8, names: bool = True):
    """A grid: the images on top, then one row of palette masks per entry of ``rows``; with ``names`` each
    row's name ("image", then the keys of ``rows``) on its left; under the grid a key of the colours of the
    label values the masks hold (VOC palette, ``value name``; 255 uncertain). PIL image."""
    from PIL import Image, ImageDraw, ImageFont

    from ..vocab import VOC_CLASSES, VOC_PALETTE

    n = min(n, len(images))
    tiles = [np.concatenate(list(images[:n]), 1)]
    for masks in rows.values():
        tiles.append(np.concatenate([VOC_PALETTE[m] for m in masks[:n]], 1))
    grid = Image.fromarray(np.concatenate(tiles, 0).astype(np.uint8))
    font = ImageFont.load_default(size=max(10, images[0].shape[0] // 9))
    labels = ["image", *rows] if names else []
    margin = int(max(font.getlength(x) for x in labels)) + 12 if labels else 0
    values = sorted(set().union(*(np.unique(m).tolist() for masks in rows.values() for m in masks[:n])))
    keys = [(v, "255 uncertain" if v == 255 else f"{v} {VOC_CLASSES[v] if v < len(VOC_CLASSES) else 'class'}")
            for v in values]
    line, box, gap = int(font.size * 1.6), font.size, font.size
    widths = [box + 6 + int(font.getlength(t)) + gap for _, t in keys]
    width = grid.width + margin
    key_rows, x = 1, 6
    for w in widths:                                  # how many lines the key needs at this width
        if x + w > width and x > 6:
            key_rows, x = key_rows + 1, 6
        x += w
    out = Image.new("RGB", (width, grid.height + (key_rows * line + 8 if keys else 0)), "white")
    out.paste(grid, (margin, 0))
    draw = ImageDraw.Draw(out)
    for i, text in enumerate(labels):
        draw.text((margin - 6, (i + 0.5) * grid.height / len(labels)), text, fill="black", font=font, anchor="rm")
    x, y = 6, grid.height + 6
    for (v, text), w in zip(keys, widths):
        if x + w > width and x > 6:
            x, y = 6, y + line
        draw.rectangle([x, y, x + box, y + box], fill=tuple(int(c) for c in VOC_PALETTE[v]), outline=(80, 80, 80))
        draw.text((x + box + 6, y + box / 2), text, fill="black", font=font, anchor="lm")
        x += w
    return out


def training_eval(pipe, size: int, step: int, cfg) -> dict:
    """The evaluation run during training: ``cfg.eval_prompts`` fixed prompts at the phase's size."""
    from pathlib import Path

    from ..io import save_image

    records = toy_prompt_records(cfg.eval_prompts, seed=777)
    res = score_model(pipe, records, size=size, steps=cfg.eval_steps)
    pic = picture(res["images"], {"gt": res["gts"], **res["masks"]}, n=12)
    save_image(Path(cfg.out) / "unet" / f"eval-{step:06d}.png", pic)
    row = {"step": step, "size": size, "adherence": res["adherence"], "seconds": res["seconds"],
           **{f"{k}_miou": round(v["miou"], 4) for k, v in res["labellers"].items()},
           **{f"{k}_miou_certain": round(v["miou_certain"], 4) for k, v in res["labellers"].items()},
           **{f"{k}_uncertain": round(v["uncertain"], 4) for k, v in res["labellers"].items()}}
    import logging

    logging.getLogger(__name__).info("eval %s", row)
    return row
