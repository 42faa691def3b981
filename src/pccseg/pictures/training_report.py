"""The page about a training run (``pccseg report RUN_DIR``; :func:`~pccseg.pictures.report.make_report`).

Training run directory (``log.jsonl``): loss and learning-rate curve, mIoU curve, per-class IoU of the
last check, the wall time, and the hyperparameters (``config.json``) with any change made on resuming.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..errors import InputError  # noqa: E402
from ..io import read_json, read_jsonl  # noqa: E402
from .page import count, escape, html_page, image_tag, prepare_out, settings_table, write_text  # noqa: E402
from .show import save_figure  # noqa: E402
from ..vocab import VOC_CLASSES, VOC_PALETTE  # noqa: E402

LOG = "log.jsonl"


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
    prepare_out(out)
    pct = 100.0 if checks and all(float(e["miou"]) <= 1.0 for e in checks) else 1.0
    entries = count(len(losses), "loss entry", "loss entries")
    body = [f"<p>Training run <code>{escape(run.resolve())}</code>: {entries}, {count(n_checks, 'check')}.</p>"]
    timed = [e for e in losses if _num(e.get("time")) and e["iter"] > 0]
    if timed:
        t, it = float(timed[-1]["time"]), int(timed[-1]["iter"])
        body.append(f"<p>Wall time: {_duration(t)} for {count(it, 'iteration')} ({t / it:.3f} s per iteration, "
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
    body += ["<h2>Loss and mIoU</h2>", image_tag("curves.png", "loss and mIoU curves")]

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
                 f"<p>Last check: iteration {escape(final['iter'])}, mIoU {pct * float(final['miou']):.2f}"
                 f"{'%' if pct == 100 else ''}.</p>", image_tag("class_iou.png", "per-class IoU")]
        rows = ['<table>', '<tr><th>class</th><th class="num">IoU (%)</th>'
                + ('<th class="num">accuracy (%)</th>' if acc else "") + "</tr>"]
        for i, n in enumerate(names):
            a = ""
            if acc:
                a = f'<td class="num">{"n/a" if acc[i] is None else f"{pct * float(acc[i]):.2f}"}</td>'
            v = "n/a" if math.isnan(iou[i]) else f"{iou[i]:.2f}"
            rows.append(f'<tr><td>{escape(n)}</td><td class="num">{v}</td>{a}</tr>')
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
                 settings_table(config)]
        for c in changes:
            changed = ", ".join(f"{escape(k)} {escape(json.dumps(a))} &rarr; {escape(json.dumps(b))}"
                                for k, (a, b) in (c.get("changed") or {}).items())
            body.append(f"<p>Changed on resuming at iteration {escape(c.get('iteration'))}: {changed}.</p>")
    page = out / "index.html"
    write_text(page, html_page(f"pccseg training report: {run.name}", body))
    return page
