"""Pictures of every stage of a labeller for one image (``pccseg show``).

:func:`stage_figure` draws one panel per stage of :func:`pccseg.labellers.pcc.label`, from the
:class:`~pccseg.labellers.pcc.LabelResult` it returns:

1. the image and the first three principal components of a few self-attention heads (one head per
   resolution) as RGB;
2. the k-means clusters for each k, with the borders of their connected segments;
3. each class map as a heat map with its threshold contours (dotted, dashed, solid from the lowest
   threshold up; the background's contours are the thresholds times ``background_factor``);
4. the votes' agreement (the mode's share) with the uncertainty cut-off, the blocky mask, the RGB
   refinement segments and the final mask over the image;

and a legend of the class colours present (VOC palette; uncertain pixels, 255, are white hatching).
:func:`maps_figure` draws the dd and attn labellers' results (class maps, affinity, thresholds, mask),
:func:`~pccseg.pictures.fuse_figure.fuse_figure` the fuse labeller's; :func:`save_stage_figure` picks the
right one (:func:`pccseg.pictures.stages.save_stage_figure`).

Masks and maps become RGB arrays in :mod:`.rgb` (:func:`~.rgb.colorize`, :func:`~.rgb.overlay`, ...); this
module lays them out in figures. Headless: matplotlib runs on the Agg backend.
"""

from __future__ import annotations

import re
import textwrap
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from scipy.ndimage import binary_dilation  # noqa: E402

from ..io import atomic_path  # noqa: E402
from ..limits import check_fits  # noqa: E402
from ..params import Int, check_value  # noqa: E402
from .rgb import (MASK_GROUND, UNCERTAIN_GROUND, boundaries, colorize, overlay, pca_rgb,  # noqa: E402
                  resize_nearest, to_numpy)
from ..vocab import IGNORE_INDEX, VOC_CLASSES, VOC_PALETTE  # noqa: E402

_THRESHOLD_STYLES = (":", "--", "-", "-.")
_PANEL_IN = 2.6  # panel size in inches


def short_layer(name: str) -> str:
    """``up_blocks.1.attentions.2.transformer_blocks.0.attn1`` -> ``up1.att2.tb0``; others truncated."""
    m = re.search(r"up_blocks\.(\d+)\.attentions\.(\d+)(?:\.transformer_blocks\.(\d+))?", name)
    if m:
        s = f"up{m.group(1)}.att{m.group(2)}"
        return s + (f".tb{m.group(3)}" if m.group(3) is not None else "")
    return name if len(name) <= 24 else "…" + name[-23:]


def pick_heads(pca: dict[str, Any], n: int = 3) -> list[tuple[str, int]]:
    """A few (layer, head) pairs from different resolutions, lowest resolution first.

    One per resolution (the first layer of that size, head 0) while there are resolutions; then further
    heads of the same layers (head ``heads // 2``) until ``n``.
    """
    by_res: dict[tuple[int, int], list[str]] = {}
    for name, t in pca.items():
        by_res.setdefault((int(t.shape[1]), int(t.shape[2])), []).append(name)
    res = sorted(by_res)
    picks = [(by_res[r][0], 0) for r in res][:n]
    for r in res:
        if len(picks) >= n:
            break
        name = by_res[r][-1]
        head = int(pca[name].shape[0]) // 2
        if (name, head) not in picks:
            picks.append((name, head))
    return picks[:n]


def _cut_off(params: Any) -> tuple[float, str]:
    if getattr(params, "vote_rule", "report") == "authors":
        return 0.56, "< 0.56"
    return 0.5, "≤ 0.5"


def _off(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _label_panel(ax, rgb: np.ndarray, title: str) -> None:
    ax.imshow(rgb, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    _off(ax)


def check_figure_options(*, n_heads: int = 3, dpi: int = 100) -> None:
    """:class:`InputError` naming the option when ``n_heads`` < 0 or ``dpi`` < 1 (or not integers), or
    when one panel's RGBA pixels at ``dpi`` cannot fit in memory (:func:`pccseg.limits.check_fits`)."""
    check_value(Int(0), n_heads, "--heads")
    check_value(Int(1), dpi, "--dpi")
    check_fits((_PANEL_IN * dpi) ** 2 * 4, "--dpi", f"one {_PANEL_IN}-inch panel at {dpi} dpi")


def stage_figure(capture: Any, result: Any, *, n_heads: int = 3, max_cols: int = 5, alpha: float = 0.55,
                 dpi: int = 100) -> Figure:
    """One figure, one panel per PCC stage, for one image: a row per part of the method.

    Args:
        capture: the :class:`~pccseg.capture.format.Capture` that was labelled (image, class names,
            ``meta["prompt"]`` for the title).
        result: its :class:`~pccseg.labellers.pcc.LabelResult`.
        n_heads: how many heads' principal components to show (from different resolutions).
        max_cols: panels per row at most (longer stages wrap).
        alpha: opacity of the mask over the image.
    Returns:
        A matplotlib Figure (Agg); save it with ``fig.savefig`` or use :func:`pccseg.pictures.stages.save_stage_figure`.
    """
    check_figure_options(n_heads=n_heads, dpi=dpi)
    image = to_numpy(capture.image).astype(np.uint8)
    names = tuple(getattr(capture, "class_names", None) or VOC_CLASSES)
    thresholds = sorted(float(t) for t in result.params.thresholds)
    rows = [_components_row(image, result, n_heads),      # 2.1: principal components of heads
            _clusters_row(result),                        # 2.3-2.4: k-means, segments
            _class_maps_row(result, names, thresholds),   # 3: class maps and their thresholds
            _masks_row(image, result, alpha)]             # 3-4: votes, blocky mask, refinement, final mask
    present = ({int(v) for v in np.unique(to_numpy(result.mask))} | set(result.class_ids)
               | {int(v) for v in np.unique(to_numpy(result.blocky))})
    lines = [(f"threshold {t:g}", st) for t, st in zip(thresholds, _THRESHOLD_STYLES)]
    return _panel_figure(rows, "PCC stages", capture, present, lines, max_cols=max_cols, dpi=dpi)


# Each row of the stage figure is a list of functions ``draw(ax)``, one per panel.
def _components_row(image: np.ndarray, result: Any, n_heads: int) -> list:
    """The image, then the first three principal components (as RGB) of ``n_heads`` heads."""
    row = [_image_panel(image)]
    for layer, head in pick_heads(result.pca, n_heads):
        pc = result.pca[layer][head]
        h, w = int(pc.shape[0]), int(pc.shape[1])
        row.append(lambda ax, pc=pc, layer=layer, head=head, h=h, w=w: _label_panel(
            ax, pca_rgb(pc), f"PCA 1-3, {h}x{w} head\n{short_layer(layer)} head {head}"))
    return row


def _clusters_row(result: Any) -> list:
    """The k-means clusters of every k, with the borders of their connected segments."""
    row = []
    for k in sorted(result.clusters):
        cl = to_numpy(result.clusters[k]).astype(np.int64)
        seg = to_numpy(result.segments[k]).astype(np.int64) if k in result.segments else None

        def draw(ax, cl=cl, seg=seg, k=k):
            scale = max(1, int(np.ceil(256 / max(cl.shape))))
            size = (cl.shape[0] * scale, cl.shape[1] * scale)
            cmap = plt.get_cmap("tab20")
            rgb = (np.asarray(cmap(np.arange(20)))[:, :3] * 255).astype(np.uint8)[resize_nearest(cl, size) % 20]
            title = f"k-means, k={k}"
            if seg is not None:
                rgb[boundaries(resize_nearest(seg, size))] = 0
                title += f"\n{len(np.unique(seg))} segments (borders)"
            _label_panel(ax, rgb, title)
        row.append(draw)
    return row


def _class_maps_row(result: Any, names: Sequence[str], thresholds: list[float]) -> list:
    """Each class map with the contours of the thresholds (the background's scaled by its factor)."""
    params = result.params
    maps = to_numpy(result.class_maps).astype(np.float32)
    row = []
    for i, cid in enumerate(result.class_ids):
        is_bg = int(cid) == 0
        levels = [t * (params.background_factor if is_bg else 1.0) for t in thresholds]
        title = f"{_class_name(names, cid)}{' (SoT)' if is_bg else ''} map\n> {'/'.join(f'{v:.2g}' for v in levels)}"
        row.append(lambda ax, m=maps[i], title=title, levels=levels: _map_panel(
            ax, m, title, list(zip(levels, _THRESHOLD_STYLES))))
    return row


def _masks_row(image: np.ndarray, result: Any, alpha: float) -> list:
    """The vote agreement with the uncertainty cut-off, the blocky mask, the refinement segments and the
    final mask over the image."""
    H, W = image.shape[:2]
    share = to_numpy(result.vote_share).astype(np.float32)
    cut, cut_txt = _cut_off(result.params)

    def draw_share(ax):
        im = ax.imshow(share, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
        if share.min() < cut < share.max():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax.contour(share, levels=[cut], colors="red", linewidths=1.0)
        n_votes = int(result.votes.shape[0]) if result.votes is not None else 0
        ax.set_title(f"vote agreement ({n_votes} votes)\nred: uncertain {cut_txt}", fontsize=9)
        _off(ax)
        cb = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        cb.ax.tick_params(labelsize=7)
    row = [draw_share]

    blocky = to_numpy(result.blocky)
    b_unc = float((blocky == IGNORE_INDEX).mean())
    row.append(lambda ax: _label_panel(
        ax, colorize(blocky, (H, W), ground=MASK_GROUND, outline=True),
        f"blocky mask ({blocky.shape[0]}x{blocky.shape[1]})\ngrey: background; uncertain {100 * b_unc:.1f}%"))
    if result.refine_segments is not None:
        rs = to_numpy(result.refine_segments).astype(np.int64)

        def draw_rs(ax):
            rgb = image.copy()
            b = boundaries(resize_nearest(rs, (H, W)))
            thick = max(H, W) // 300          # keep the borders visible once the panel is scaled down
            if thick:
                b = binary_dilation(b, iterations=thick)
            rgb[b] = (255, 255, 0)
            _label_panel(ax, rgb, f"RGB refinement\n{len(np.unique(rs))} segments")
        row.append(draw_rs)
    row.append(_final_mask_panel(image, to_numpy(result.mask), alpha))
    return row


def _image_panel(image: np.ndarray):
    return lambda ax: _label_panel(ax, image, f"image ({image.shape[0]}x{image.shape[1]})")


def _final_mask_panel(image: np.ndarray, mask: np.ndarray, alpha: float):
    unc = float((mask == IGNORE_INDEX).mean())
    return lambda ax: _label_panel(ax, overlay(image, mask, alpha), f"final mask over image\nuncertain {100 * unc:.1f}%")


def _panel_figure(rows: list[list], title: str, capture: Any, present: set[int], lines: list[tuple[str, str]],
                  *, max_cols: int, dpi: int) -> Figure:
    """Lay out rows of panel-drawing functions (each row wrapped at ``max_cols``), with ``title`` and the
    capture's prompt on top and a legend below: the colours of the label values ``present`` (255 as
    hatching) and the cyan contour styles ``lines`` ((label, linestyle) pairs)."""
    flat_rows: list[list] = []
    for r in rows:
        for s in range(0, max(len(r), 1), max_cols):
            flat_rows.append(r[s:s + max_cols])
    ncols = max(len(r) for r in flat_rows)
    nrows = len(flat_rows)
    fig = plt.figure(figsize=(_PANEL_IN * ncols, _PANEL_IN * 1.12 * nrows + 1.3), dpi=dpi,
                     layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for r, fns in enumerate(flat_rows):
        for c in range(ncols):
            ax = axes[r][c]
            if c < len(fns):
                fns[c](ax)
            else:
                ax.set_axis_off()

    prompt = (getattr(capture, "meta", None) or {}).get("prompt")
    if prompt:
        title += ": " + "\n".join(textwrap.wrap(str(prompt), width=int(ncols * 26)))
    fig.suptitle(title, fontsize=11)
    names = tuple(getattr(capture, "class_names", None) or VOC_CLASSES)
    # the background as the mask panels draw it: MASK_GROUND, not VOC's black (which would hide dark classes)
    handles = [Patch(facecolor=(MASK_GROUND if v == 0 else VOC_PALETTE[v]) / 255.0, edgecolor="0.3",
                     label=f"{v} {_class_name(names, v)}") for v in sorted(present) if v != IGNORE_INDEX]
    handles.append(Patch(facecolor=UNCERTAIN_GROUND / 255.0, edgecolor="white", hatch="///",
                         label="255 uncertain"))
    handles += [Line2D([], [], color="cyan", linestyle=st, label=text) for text, st in lines]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), max(4, ncols + 1)),
               fontsize=8, frameon=False)
    return fig


def _class_name(names: Sequence[str], i: int) -> str:
    return names[i] if 0 <= i < len(names) else f"class {i}"


def _map_panel(ax, m: np.ndarray, title: str, levels: Sequence[tuple[float, str]] = ()) -> None:
    """A [0, 1] map (magma) with cyan contours at ``levels`` ((value, linestyle) pairs inside its range)."""
    ax.imshow(m, cmap="magma", vmin=0.0, vmax=1.0, interpolation="nearest")
    lv = sorted((v, st) for v, st in levels if m.min() < v < m.max())
    if lv:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ax.contour(m, levels=[v for v, _ in lv], colors="cyan", linewidths=1.0,
                       linestyles=[st for _, st in lv])
    ax.set_title(title, fontsize=9)
    _off(ax)


def maps_figure(capture: Any, result: Any, *, max_cols: int = 5, alpha: float = 0.55, dpi: int = 100) -> Figure:
    """One figure for the dd or attn labeller (a :class:`~pccseg.labellers.attn.MapsResult`).

    Rows: the image and each normalised class map; for dd, each map after the self-attention affinity;
    the largest map at image size with contours at the threshold (solid) and the uncertain threshold
    (dashed), and the final mask over the image. Arguments as :func:`stage_figure`.
    """
    image = to_numpy(capture.image).astype(np.uint8)
    H, W = image.shape[:2]
    names = tuple(getattr(capture, "class_names", None) or VOC_CLASSES)
    p = result.params
    dd = result.refined_maps is not None
    maps = to_numpy(result.class_maps).astype(np.float32)
    h, w = maps.shape[1:]
    rows = [[_image_panel(image)]
            + [lambda ax, i=i, c=c: _map_panel(ax, maps[i], f"{_class_name(names, c)} map ({h}x{w})")
               for i, c in enumerate(result.class_ids)]]
    if dd:
        refined = to_numpy(result.refined_maps).astype(np.float32)
        rows.append([lambda ax, i=i, c=c: _map_panel(ax, refined[i], f"{_class_name(names, c)} after\n"
                                                                     f"affinity^{p.power}")
                     for i, c in enumerate(result.class_ids)])
    levels = [(p.threshold, "-")] + ([(p.uncertain_threshold, "--")]
                                     if p.uncertain_threshold not in (None, p.threshold) else [])
    score = to_numpy(result.score).astype(np.float32)
    mask = to_numpy(result.mask)
    rows.append([lambda ax: _map_panel(ax, score, f"largest map ({H}x{W})", levels),
                 _final_mask_panel(image, mask, alpha)])
    lines = [(f"threshold {p.threshold:g}", "-")] + [(f"uncertain from {v:g}", st) for v, st in levels[1:]]
    title = "dd (Dataset Diffusion's rule)" if dd else "attn (class maps alone)"
    return _panel_figure(rows, title, capture, {int(v) for v in np.unique(mask)} | set(result.class_ids), lines,
                         max_cols=max_cols, dpi=dpi)


def save_figure(fig: Figure, path: str | Path, **kwargs: Any) -> Path:
    """Save a figure as PNG atomically and close it."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", **kwargs)
    finally:
        plt.close(fig)
    return path


def legend_handles(values: Sequence[int], class_names: Sequence[str] = VOC_CLASSES) -> list[Patch]:
    """Legend patches for label values (palette colours; 255 as hatching)."""
    out = []
    for v in values:
        if v == IGNORE_INDEX:
            out.append(Patch(facecolor=UNCERTAIN_GROUND / 255.0, edgecolor="white", hatch="///",
                             label="uncertain"))
        else:
            name = class_names[v] if 0 <= v < len(class_names) else f"class {v}"
            out.append(Patch(facecolor=VOC_PALETTE[v] / 255.0, edgecolor="0.3", label=name))
    return out
