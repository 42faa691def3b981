"""A static HTML page about a generated dataset or a training run (``pccseg report``).

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

Training run directory (``log.jsonl``): loss and learning-rate curve, mIoU curve, per-class IoU of the
last check, the wall time, and the hyperparameters (``config.json``) with any change made on resuming.

Experiment directory (``results.json``, written by ``pccseg experiment``): its tables, pictures, times and
settings.

Every file is written atomically; links in ``index.html`` are relative file names in the output directory.
"""

from __future__ import annotations

import html
import json
import math
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
from ..io import atomic_path, check_stem, load_image, load_mask, make_dir, read_json, read_jsonl  # noqa: E402
from ..io import remove_temps  # noqa: E402
from .show import legend_handles, overlay, save_figure  # noqa: E402
from ..vocab import IGNORE_INDEX, VOC_CLASSES, VOC_PALETTE, check_class_names  # noqa: E402

LOG = "log.jsonl"
RESULTS = "results.json"

_CSS = """
body { font-family: sans-serif; max-width: 1200px; margin: 1em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; }
img { max-width: 100%; }
.note { color: #666; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; border: 1px solid #888;
          vertical-align: middle; margin-right: 4px; }
"""


# --------------------------------------------------------------------------- reading


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


def _count(n: int, word: str, plural: str | None = None) -> str:
    """``1 image``, ``2 images`` (``plural``: when it is not ``word + "s"``)."""
    return f"{n} {word if n == 1 else plural or word + 's'}"


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


# --------------------------------------------------------------------------- figures


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
    ax.set_title(f"Images per class ({_count(pixels.shape[0], 'image')})", fontsize=10)
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


# --------------------------------------------------------------------------- HTML


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _img(name: str, alt: str) -> str:
    return f'<p><img src="{_e(name)}" alt="{_e(alt)}"></p>'


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(obj, dict):
        out: list[tuple[str, Any]] = []
        for k, v in obj.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return [(prefix, obj)]


def _settings_table(settings: dict) -> str:
    rows = []
    for k, v in _flatten(settings):
        if k == "class_names":
            v = ", ".join(map(str, v))
        elif not isinstance(v, str):
            v = json.dumps(v)
        rows.append(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>")
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def _page(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            f"<h1>{_e(title)}</h1>\n" + "\n".join(body) + "\n</body>\n</html>\n")


def _prepare(out: Path) -> None:
    """Create the output folder (one line when it cannot be) and remove what a killed run left there."""
    make_dir(out)
    remove_temps(out)


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _swatch(v: int) -> str:
    r, g, b = (int(c) for c in VOC_PALETTE[v])
    return f'<span class="swatch" style="background: rgb({r},{g},{b})"></span>'


# --------------------------------------------------------------------------- reports


def dataset_report(directory: str | Path, out: str | Path, *, samples_per_class: int = 4,
                   thumb: int = 256) -> Path:
    """Write ``out/index.html`` and its PNGs for a dataset directory; returns the page's path."""
    directory, out = Path(directory), Path(out)
    if isinstance(samples_per_class, bool) or not isinstance(samples_per_class, int) or samples_per_class < 1:
        raise InputError(f"must be an integer >= 1, got {samples_per_class!r}", field="samples")
    st = dataset_stats(directory)
    names, ids, pixels, unc, named = st["class_names"], st["ids"], st["pixels"], st["uncertain"], st["named"]
    _prepare(out)
    N, C = pixels.shape
    body = [f'<p>Dataset <code>{_e(directory.resolve())}</code>: {_count(N, "image")}, '
            f'{_count(C, "class", "classes")}; mean uncertain share {100 * unc.mean():.2f}%.</p>']

    times = [r.get("timings") for r in st["records"] if isinstance(r.get("timings"), dict)]
    if times:
        keys = sorted({k for t in times for k in t})
        cells = ", ".join(f"{_e(k)} {np.median([t[k] for t in times if k in t]):.2f} s" for k in keys)
        body.append(f"<p>Median time per image: {cells}.</p>")

    save_figure(class_pixels_figure(pixels, names, float(unc.mean())), out / "class_pixels.png")
    body += ["<h2>Class pixel frequency</h2>", _img("class_pixels.png", "class pixel frequency")]
    save_figure(images_per_class_figure(pixels, named, names), out / "images_per_class.png")
    body += ["<h2>Images per class</h2>", _img("images_per_class.png", "images per class")]

    tot = pixels.sum(0)
    share = 100 * tot / max(tot.sum(), 1)
    rows = ["<table>", '<tr><th>value</th><th>class</th><th class="num">% labelled pixels</th>'
            '<th class="num">images named</th><th class="num">images present</th></tr>']
    for c in range(C):
        rows.append(f'<tr><td class="num">{c}</td><td>{_swatch(c)}{_e(names[c])}</td>'
                    f'<td class="num">{share[c]:.2f}</td><td class="num">{int(named[:, c].sum())}</td>'
                    f'<td class="num">{int((pixels[:, c] > 0).sum())}</td></tr>')
    rows.append("</table>")
    body += rows

    save_figure(uncertain_figure(unc), out / "uncertain_share.png")
    body += ["<h2>Uncertain share</h2>", _img("uncertain_share.png", "uncertain share histogram")]

    body.append("<h2>Samples per class</h2>")
    body.append(f'<p class="note">Up to {_count(samples_per_class, "image")} per class, evenly spread over the '
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
        body += [f"<h3>{_swatch(c)}{_e(names[c])} ({_count(len(have), 'image')})</h3>",
                 _img(fname, f"samples of {names[c]}")]
    if missing:
        body.append(f"<p>No image has: {_e(', '.join(missing))}.</p>")

    body.append("<h2>Generation settings</h2>")
    if st["settings"] is None:
        body.append(f'<p class="note">No {SETTINGS} in the dataset directory: the generation settings '
                    "are unknown.</p>")
    else:
        body.append(_settings_table(st["settings"]))
    page = out / "index.html"
    _write_text(page, _page(f"pccseg dataset report: {directory.name}", body))
    return page


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _read_object(path: Path) -> dict | None:
    """The JSON object in ``path``, or None when it is missing or unreadable (the report goes on)."""
    try:
        return read_json(path) if path.is_file() else None
    except InputError:
        return None


def _duration(seconds: float) -> str:
    h, rest = divmod(round(seconds), 3600)
    return f"{h} h {rest // 60:02d} min" if h else f"{rest // 60} min {rest % 60:02d} s"


def _run_class_names(run: Path, n: int) -> tuple[str, ...]:
    for fname in ("last/checkpoint.json", "best/checkpoint.json", "config.json", "settings.json"):
        obj = _read_object(run / fname)
        if obj is not None and isinstance(obj.get("class_names"), list) and len(obj["class_names"]) == n:
            return tuple(map(str, obj["class_names"]))
    if n == len(VOC_CLASSES):
        return VOC_CLASSES
    return tuple(f"class {i}" for i in range(n))



def miou_panel(ax, checks: list[dict], pct: float) -> dict | None:
    """Validation mIoU (in percent: ``pct`` times the logged values) against iteration, the last and the
    highest check marked and named in a key inside the axes (so no label leaves them, wherever the points
    are); returns the last check (None without one)."""
    if not checks:
        ax.text(0.5, 0.5, "no checks yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("iteration")
        return None
    it = [e["iter"] for e in checks]
    m = [pct * float(e["miou"]) for e in checks]
    best = int(np.argmax(m))
    ax.plot(it, m, marker="o", markersize=3, color="tab:green", label="_curve")
    ax.axhline(m[best], color="0.6", linestyle=":", linewidth=1)
    ax.plot([it[best]], [m[best]], marker="*", markersize=10, color="tab:red", linestyle="none",
            label=f"max {m[best]:.2f} % @ {it[best]}")
    ax.plot([it[-1]], [m[-1]], marker="o", markersize=9, markerfacecolor="none", markeredgecolor="black",
            linestyle="none", label=f"last {m[-1]:.2f} % @ {it[-1]}")
    ax.margins(x=0.06, y=0.12)
    ax.legend(loc="best", fontsize=8, framealpha=0.9)
    ax.set_ylabel("mIoU (%)")
    ax.set_xlabel("iteration")
    ax.set_title("Validation mIoU (max: picked on this split, so optimistic)", fontsize=10)
    return checks[-1]

def training_report(run: str | Path, out: str | Path) -> Path:
    """Write ``out/index.html`` with loss, mIoU and per-class IoU pictures for a training run folder."""
    run, out = Path(run), Path(out)
    log = run / LOG
    entries = read_jsonl(log)
    losses = [e for e in entries if _num(e.get("loss")) and _num(e.get("iter"))]
    checks = [e for e in entries if "miou" in e and _num(e.get("iter"))]
    if not losses and not checks:
        raise InputError("no loss or mIoU entries", path=log)
    n_checks = len(checks)
    checks = [e for e in checks if _num(e["miou"])]          # a check can log miou null (no class seen)
    _prepare(out)
    pct = 100.0 if checks and all(float(e["miou"]) <= 1.0 for e in checks) else 1.0
    entries = _count(len(losses), "loss entry", "loss entries")
    body = [f"<p>Training run <code>{_e(run.resolve())}</code>: {entries}, {_count(n_checks, 'check')}.</p>"]
    timed = [e for e in losses if _num(e.get("time")) and e["iter"] > 0]
    if timed:
        t, it = float(timed[-1]["time"]), int(timed[-1]["iter"])
        body.append(f"<p>Wall time: {_duration(t)} for {_count(it, 'iteration')} ({t / it:.3f} s per iteration, "
                    "validation included; over every start of the run).</p>")

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), dpi=100, layout="constrained")
    ax = axes[0]
    if losses:
        it = np.array([e["iter"] for e in losses], dtype=float)
        ax.plot(it, [e["loss"] for e in losses], color="tab:blue", linewidth=1, label="loss")
        ax.set_ylabel("loss")
        lrs = [e for e in losses if _num(e.get("lr"))]
        if lrs:
            ax2 = ax.twinx()
            ax2.plot([e["iter"] for e in lrs], [e["lr"] for e in lrs],
                     color="tab:orange", linewidth=1, linestyle="--", label="lr")
            ax2.set_ylabel("learning rate", color="tab:orange")
            ax2.tick_params(axis="y", labelcolor="tab:orange", labelsize=8)
            ax2.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.set_title("Training loss (blue), learning rate (orange, dashed)", fontsize=10)
    else:
        ax.text(0.5, 0.5, "no loss entries", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("iteration")
    final = miou_panel(axes[1], checks, pct)
    save_figure(fig, out / "curves.png")
    body += ["<h2>Loss and mIoU</h2>", _img("curves.png", "loss and mIoU curves")]

    if final is not None and isinstance(final.get("iou"), list) and final["iou"]:
        iou = np.array([np.nan if v is None else float(v) for v in final["iou"]]) * pct
        acc = final.get("acc") if isinstance(final.get("acc"), list) and len(final["acc"]) == len(iou) else None
        names = _run_class_names(run, len(iou))
        fig, ax = plt.subplots(figsize=(10, 3.8), dpi=100, layout="constrained")
        x = np.arange(len(iou))
        cols = VOC_PALETTE[np.arange(len(iou)) % 256] / 255.0
        ax.bar(x, np.nan_to_num(iou), color=cols, edgecolor="0.3", linewidth=0.6)
        for xi, v in zip(x, iou):
            ax.text(xi, 0 if math.isnan(v) else v, "n/a" if math.isnan(v) else f"{v:.0f}", ha="center",
                    va="bottom", fontsize=7)
        ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("IoU (%)")
        ax.set_ylim(0, 105 if pct == 100 else max(np.nanmax(iou) * 1.15, 1))
        ax.set_title(f"Per-class IoU at the last check (iteration {final['iter']}, "
                     f"mIoU {pct * float(final['miou']):.2f})", fontsize=10)
        save_figure(fig, out / "class_iou.png")
        body += ["<h2>Per-class IoU of the last check</h2>",
                 f"<p>Last check: iteration {_e(final['iter'])}, mIoU {pct * float(final['miou']):.2f}"
                 f"{'%' if pct == 100 else ''}.</p>", _img("class_iou.png", "per-class IoU")]
        rows = ['<table>', '<tr><th>class</th><th class="num">IoU (%)</th>'
                + ('<th class="num">accuracy (%)</th>' if acc else "") + "</tr>"]
        for i, n in enumerate(names):
            a = ""
            if acc:
                a = f'<td class="num">{"n/a" if acc[i] is None else f"{pct * float(acc[i]):.2f}"}</td>'
            v = "n/a" if math.isnan(iou[i]) else f"{iou[i]:.2f}"
            rows.append(f'<tr><td>{_e(n)}</td><td class="num">{v}</td>{a}</tr>')
        rows.append("</table>")
        body += rows
    elif not checks:
        body.append('<p class="note">No check (mIoU) in the log yet.</p>' if not n_checks else
                    '<p class="note">No check has an mIoU (every check logged null).</p>')

    config = _read_object(run / "config.json")
    if config is not None:
        changes = config.pop("changes", None) or []
        body += ["<h2>Hyperparameters</h2>",
                 '<p class="note">The settings in force at the latest start (<code>config.json</code>).</p>',
                 _settings_table(config)]
        for c in changes:
            changed = ", ".join(f"{_e(k)} {_e(json.dumps(a))} &rarr; {_e(json.dumps(b))}"
                                for k, (a, b) in (c.get("changed") or {}).items())
            body.append(f"<p>Changed on resuming at iteration {_e(c.get('iteration'))}: {changed}.</p>")
    page = out / "index.html"
    _write_text(page, _page(f"pccseg training report: {run.name}", body))
    return page


def _cell(x: Any) -> str:
    return "-" if x is None else f"{x:.2f}" if isinstance(x, float) else _e(x)


def results_report(directory: str | Path, out: str | Path) -> Path:
    """Write ``out/index.html`` for a folder with ``results.json`` (``pccseg experiment``): its ``tables``
    (``title``, ``columns``, ``rows``, ``note``), its ``pictures`` (``file`` in the folder, ``caption``;
    copied into ``out``), ``timings`` and ``config``."""
    import shutil

    directory, out = Path(directory), Path(out)
    path = directory / RESULTS
    results = read_json(path)
    tables, pictures = results.get("tables", []), results.get("pictures", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) and isinstance(t.get("columns"), list)
                                               and isinstance(t.get("rows"), list)
                                               and all(isinstance(r, list) for r in t["rows"]) for t in tables):
        raise InputError("expected a list of {title, columns, rows} with every row a list", path=path,
                         field="tables")
    _prepare(out)
    body = [f"<p>Results of <code>{_e(directory.resolve())}</code> (also in results.md, results.json and the "
            "CSV files there).</p>"]
    for t in tables:
        head = "".join(f'<th{"" if i == 0 else " class=num"}>{_e(c)}</th>' for i, c in enumerate(t["columns"]))
        rows = ["<tr>" + "".join(f'<td{"" if i == 0 else " class=num"}>{_cell(x)}</td>' for i, x in enumerate(r))
                + "</tr>" for r in t["rows"]]
        body += [f"<h2>{_e(t.get('title', ''))}</h2>", "<table>", f"<tr>{head}</tr>", *rows, "</table>"]
        if t.get("note"):
            body.append(f'<p class="note">{_e(t["note"])}</p>')
    for p in pictures if isinstance(pictures, list) else []:
        src = directory / str(p.get("file", "")) if isinstance(p, dict) else None
        if src is None or src.parent != directory or src.is_symlink() or not src.is_file():
            continue                              # a picture is a file of the folder, never a link out of it
        with atomic_path(out / src.name) as tmp:
            shutil.copyfile(src, tmp)
        body += [f"<h2>{_e(p.get('caption', src.name))}</h2>", _img(src.name, str(p.get("caption", "")))]
    if isinstance(results.get("timings"), dict) and results["timings"]:
        body += ["<h2>Time</h2>", _settings_table(results["timings"])]
    if isinstance(results.get("config"), dict):
        body += ["<h2>Settings</h2>", _settings_table(results["config"])]
    page = out / "index.html"
    _write_text(page, _page(str(results.get("title", f"pccseg results: {directory.name}")), body))
    return page


def make_report(directory: str | Path, out: str | Path, **kwargs: Any) -> Path:
    """A results page when ``directory`` holds ``results.json`` (an experiment), a training report when it
    holds ``log.jsonl``, else a dataset report."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError("not a directory", path=directory)
    if (directory / RESULTS).is_file():
        return results_report(directory, out)
    if (directory / LOG).is_file():
        return training_report(directory, out)
    return dataset_report(directory, out, **kwargs)
