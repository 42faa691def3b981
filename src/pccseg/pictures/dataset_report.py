"""The page about a generated dataset (``pccseg report DATASET_DIR``; :func:`~pccseg.pictures.report.make_report`).

Dataset directory (``manifest.jsonl``, ``JPEGImages/``, ``SegmentationClass/``, ``settings.json``):

* ``class_pixels.png`` — share of the labelled pixels per class (uncertain pixels left out; their share
  is given in the title);
* ``images_per_class.png`` — per class, the images whose prompt names it and the images whose mask has it;
* ``uncertain_share.png`` — histogram of the per-image uncertain share;
* ``samples_<class>.png`` — a few images per class (evenly spread over the ids that have the class),
  image above, mask over image below;
* a table per class and the generation settings (``settings.json``) as a table.

Per-sample numbers come from the manifest (``class_pixels``, ``uncertain_share``); a record without them,
or a directory without a manifest, is read from its mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from PIL import Image  # noqa: E402

from ..dataset.folder import IMAGES, MANIFEST, MASKS, SETTINGS, sample_stem  # noqa: E402
from ..errors import InputError  # noqa: E402
from ..io import check_stem, load_image, load_mask, read_json, read_jsonl  # noqa: E402
from ..params import Int, check_value  # noqa: E402
from .page import (count, escape, html_page, image_tag, prepare_out, settings_table, swatch,  # noqa: E402
                   write_text)
from .rgb import overlay  # noqa: E402
from .show import legend_handles, save_figure  # noqa: E402
from .training_report import LOG  # noqa: E402
from ..vocab import IGNORE_INDEX, VOC_CLASSES, VOC_PALETTE, check_class_names  # noqa: E402


def _read_settings(directory: Path) -> dict | None:
    p = directory / SETTINGS
    return read_json(p) if p.is_file() else None


def _stem(record: dict, path: Path, n: int) -> str:
    """The sample stem of manifest record ``n``: a plain file name, never a path out of the dataset."""
    if "id" in record:
        return check_stem(str(record["id"]), path=path, key=f"record {n}: id")
    if "record_id" in record:
        try:
            return sample_stem(record["record_id"])
        except ValueError as e:
            raise InputError(str(e), path=path, field=f"record {n}: record_id") from None
    raise InputError("record has neither 'id' nor 'record_id'", path=path, field=f"record {n}")


def dataset_stats(directory: str | Path) -> dict[str, Any]:
    """Per-sample numbers of a dataset directory.

    Returns a dict with ``class_names`` (tuple), ``settings`` (dict or None), ``ids`` (list of stems),
    ``pixels`` ((N, C) int64 pixel count per sample and class), ``uncertain`` ((N,) float share),
    ``named`` ((N, C) bool: the prompt names the class), ``records`` (the manifest objects).
    Raises :class:`InputError` when there is no sample.
    """
    directory = Path(directory)
    settings = _read_settings(directory)
    names = (settings or {}).get("class_names")
    names = VOC_CLASSES if names is None else check_class_names(names, path=str(directory / SETTINGS))
    index = {n: i for i, n in enumerate(names)}
    manifest = directory / MANIFEST
    if manifest.is_file():
        records = read_jsonl(manifest)
        if not records:
            raise InputError("no samples: the manifest has no records", path=manifest)
    else:
        masks = sorted((directory / MASKS).glob("*.png")) if (directory / MASKS).is_dir() else []
        if not masks:
            raise InputError(f"not a dataset directory: no {MANIFEST} and no masks in {MASKS}/ "
                             f"(nor a training run: no {LOG})", path=directory)
        records = [{"id": p.stem} for p in masks]
    C = len(names)
    ids = [_stem(r, manifest, n) for n, r in enumerate(records, 1)]
    pixels = np.zeros((len(records), C), dtype=np.int64)
    uncertain = np.zeros(len(records), dtype=np.float64)
    named = np.zeros((len(records), C), dtype=bool)
    for n, (stem, rec) in enumerate(zip(ids, records)):
        cp = rec.get("class_pixels")
        us = rec.get("uncertain_share")
        if not isinstance(cp, dict) or us is None:
            mpath = directory / MASKS / f"{stem}.png"
            if not mpath.is_file():
                raise InputError("no class_pixels/uncertain_share in the manifest and no mask file",
                                 path=mpath)
            m = load_mask(mpath)
            counts = np.bincount(m.reshape(-1), minlength=256)
            pixels[n] = counts[:C]
            uncertain[n] = counts[IGNORE_INDEX] / m.size
        else:
            try:
                for name, cnt in cp.items():
                    if name in index:
                        pixels[n, index[name]] = int(cnt)
                uncertain[n] = float(us)
            except (TypeError, ValueError, OverflowError) as e:
                raise InputError(f"class_pixels / uncertain_share: not numbers ({e})", path=manifest,
                                 field=f"record {n + 1}") from None
        classes = rec.get("classes") or []
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise InputError(f"expected a list of class names, got {classes!r:.60}", path=manifest,
                             field=f"record {n + 1}: classes")
        for name in classes:
            if name in index:
                named[n, index[name]] = True
    return dict(class_names=names, settings=settings, ids=ids, pixels=pixels, uncertain=uncertain,
                named=named, records=records)


def _bar_colours(C: int) -> np.ndarray:
    return VOC_PALETTE[:C] / 255.0


def class_pixels_figure(pixels: np.ndarray, names: Sequence[str], uncertain_mean: float):
    """Bar chart: share of labelled pixels per class (pixels: (N, C))."""
    tot = pixels.sum(0).astype(np.float64)
    share = 100 * tot / max(tot.sum(), 1)
    C = len(names)
    fig, ax = plt.subplots(figsize=(10, 3.8), dpi=100, layout="constrained")
    x = np.arange(C)
    ax.bar(x, share, color=_bar_colours(C), edgecolor="0.3", linewidth=0.6)
    for xi, s in zip(x, share):
        ax.text(xi, s, f"{s:.1f}" if s >= 0.05 else ("0" if s == 0 else "<0.1"), ha="center",
                va="bottom", fontsize=7)
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("% of labelled pixels")
    ax.set_ylim(0, max(share.max() * 1.15, 1))
    ax.set_title(f"Class pixel frequency (uncertain pixels, {100 * uncertain_mean:.1f}% of all, left out)",
                 fontsize=10)
    return fig


def images_per_class_figure(pixels: np.ndarray, named: np.ndarray, names: Sequence[str]):
    """Grouped bars: images whose prompt names the class, images whose mask has it."""
    C = len(names)
    present = (pixels > 0).sum(0)
    in_prompt = named.sum(0)
    fig, ax = plt.subplots(figsize=(10, 3.8), dpi=100, layout="constrained")
    x = np.arange(C)
    wdt = 0.4
    ax.bar(x - wdt / 2, in_prompt, wdt, color="0.75", edgecolor="0.3", linewidth=0.6, label="named in prompt")
    ax.bar(x + wdt / 2, present, wdt, color=_bar_colours(C), edgecolor="0.3", linewidth=0.6,
           label="present in mask")
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("images")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0, max(max(present.max(), in_prompt.max()) * 1.15, 1))
    ax.set_title(f"Images per class ({count(pixels.shape[0], 'image')})", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    return fig


def uncertain_figure(uncertain: np.ndarray):
    """Histogram of the per-image uncertain share."""
    fig, ax = plt.subplots(figsize=(6.5, 3.5), dpi=100, layout="constrained")
    u = 100 * uncertain
    hi = max(float(u.max()), 1.0)
    ax.hist(u, bins=np.linspace(0, hi * 1.0001, 26), color="tab:gray", edgecolor="white")
    ax.axvline(float(np.mean(u)), color="tab:red", label=f"mean {np.mean(u):.1f}%")
    ax.axvline(float(np.median(u)), color="tab:blue", linestyle="--", label=f"median {np.median(u):.1f}%")
    ax.set_xlabel("uncertain pixels per image (%)")
    ax.set_ylabel("images")
    ax.set_title("Uncertain share (value 255)", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def _thumb(img: np.ndarray, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    H, W = img.shape[:2]
    s = min(1.0, size / max(H, W))
    hw = (max(1, round(H * s)), max(1, round(W * s)))
    if hw == (H, W):
        return img, hw
    return np.asarray(Image.fromarray(img).resize((hw[1], hw[0]), Image.BILINEAR)), hw


#: Sample figures at 100 dpi: inches per sample column, the smallest width, the font size in points.
SAMPLE_COLUMN_IN, SAMPLE_MIN_WIDTH_IN, SAMPLE_FONT_PT = 2.8, 5.6, 10


def samples_figure(directory: Path, ids: Sequence[str], cls: int, names: Sequence[str], *,
                   thumb: int = 256, alpha: float = 0.55):
    """Columns of samples that have class ``cls``: image above, mask over image below (background dimmed,
    class regions outlined in their colour and black or white, so a grey class on a grey image shows).
    Made to be read at its own size: 280 px per column, at least 560 px wide, text 10 pt (14 px) or more."""
    n = len(ids)
    images = [load_image(directory / IMAGES / f"{stem}.jpg") for stem in ids]
    aspect = images[0].shape[0] / images[0].shape[1]
    width = max(SAMPLE_COLUMN_IN * n + 0.4, SAMPLE_MIN_WIDTH_IN)
    fig, axes = plt.subplots(2, n, figsize=(width, 2 * SAMPLE_COLUMN_IN * aspect + 1.8), dpi=100, squeeze=False,
                             layout="constrained")
    shown = set()
    for j, (stem, img) in enumerate(zip(ids, images)):
        mask = load_mask(directory / MASKS / f"{stem}.png")
        share = 100 * float((mask == cls).mean())
        small, hw = _thumb(img, thumb)
        mimg = Image.fromarray(mask).resize((hw[1], hw[0]), Image.NEAREST)
        m = np.asarray(mimg)
        shown |= {int(v) for v in np.unique(m)}
        axes[0][j].imshow(small)
        axes[0][j].set_title(f"{stem}: {names[cls]} {share:.0f}%", fontsize=SAMPLE_FONT_PT)
        axes[1][j].imshow(overlay(small, m, alpha, dim=0.35))
        for ax in axes[:, j]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_ylabel("image", fontsize=SAMPLE_FONT_PT)
    axes[1][0].set_ylabel("mask over image", fontsize=SAMPLE_FONT_PT)
    vals = sorted(v for v in shown if v != 0)
    fig.legend(handles=legend_handles(vals, names), loc="outside lower center", frameon=False,
               ncol=max(1, min(len(vals), int(width / 1.5))), fontsize=SAMPLE_FONT_PT)
    fig.suptitle(f"{cls} {names[cls]}", fontsize=SAMPLE_FONT_PT + 2)
    return fig


def _spread(items: Sequence[str], n: int) -> list[str]:
    """``n`` items evenly spread over ``items`` (all when there are fewer)."""
    if len(items) <= n:
        return list(items)
    idx = np.unique(np.round(np.linspace(0, len(items) - 1, n)).astype(int))
    return [items[i] for i in idx]


def dataset_report(directory: str | Path, out: str | Path, *, samples_per_class: int = 4,
                   thumb: int = 256) -> Path:
    """Write ``out/index.html`` and its PNGs for a dataset directory; returns the page's path."""
    directory, out = Path(directory), Path(out)
    check_value(Int(1), samples_per_class, "samples")
    st = dataset_stats(directory)
    names, ids, pixels, unc, named = st["class_names"], st["ids"], st["pixels"], st["uncertain"], st["named"]
    prepare_out(out)
    N, C = pixels.shape
    body = [f'<p>Dataset <code>{escape(directory.resolve())}</code>: {count(N, "image")}, '
            f'{count(C, "class", "classes")}; mean uncertain share {100 * unc.mean():.2f}%.</p>']

    times = [r.get("timings") for r in st["records"] if isinstance(r.get("timings"), dict)]
    if times:
        keys = sorted({k for t in times for k in t})
        cells = ", ".join(f"{escape(k)} {np.median([t[k] for t in times if k in t]):.2f} s" for k in keys)
        body.append(f"<p>Median time per image: {cells}.</p>")

    save_figure(class_pixels_figure(pixels, names, float(unc.mean())), out / "class_pixels.png")
    body += ["<h2>Class pixel frequency</h2>", image_tag("class_pixels.png", "class pixel frequency")]
    save_figure(images_per_class_figure(pixels, named, names), out / "images_per_class.png")
    body += ["<h2>Images per class</h2>", image_tag("images_per_class.png", "images per class")]

    tot = pixels.sum(0)
    share = 100 * tot / max(tot.sum(), 1)
    rows = ["<table>", '<tr><th>value</th><th>class</th><th class="num">% labelled pixels</th>'
            '<th class="num">images named</th><th class="num">images present</th></tr>']
    for c in range(C):
        rows.append(f'<tr><td class="num">{c}</td><td>{swatch(c)}{escape(names[c])}</td>'
                    f'<td class="num">{share[c]:.2f}</td><td class="num">{int(named[:, c].sum())}</td>'
                    f'<td class="num">{int((pixels[:, c] > 0).sum())}</td></tr>')
    rows.append("</table>")
    body += rows

    save_figure(uncertain_figure(unc), out / "uncertain_share.png")
    body += ["<h2>Uncertain share</h2>", image_tag("uncertain_share.png", "uncertain share histogram")]

    body.append("<h2>Samples per class</h2>")
    body.append(f'<p class="note">Up to {count(samples_per_class, "image")} per class, evenly spread over the '
                "images whose mask has the class; image above, mask over image below (uncertain pixels: "
                "white stripes).</p>")
    missing = []
    for c in range(1, C):
        have = [ids[i] for i in np.flatnonzero(pixels[:, c] > 0)]
        have = [s for s in have if (directory / IMAGES / f"{s}.jpg").is_file()
                and (directory / MASKS / f"{s}.png").is_file()]
        if not have:
            missing.append(names[c])
            continue
        fname = f"samples_{c:02d}_{_safe(names[c])}.png"
        save_figure(samples_figure(directory, _spread(sorted(have), samples_per_class), c, names, thumb=thumb),
                    out / fname)
        body += [f"<h3>{swatch(c)}{escape(names[c])} ({count(len(have), 'image')})</h3>",
                 image_tag(fname, f"samples of {names[c]}")]
    if missing:
        body.append(f"<p>No image has: {escape(', '.join(missing))}.</p>")

    body.append("<h2>Generation settings</h2>")
    if st["settings"] is None:
        body.append(f'<p class="note">No {SETTINGS} in the dataset directory: the generation settings '
                    "are unknown.</p>")
    else:
        body.append(settings_table(st["settings"]))
    page = out / "index.html"
    write_text(page, html_page(f"pccseg dataset report: {directory.name}", body))
    return page


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
