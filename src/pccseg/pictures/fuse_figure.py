"""``pccseg show --labeller fuse``: the stages of the fuse labeller (:mod:`pccseg.labellers.fuse`) for one
image, from its :class:`~pccseg.labellers.fuse.FuseResult`.

Rows: the image and each normalised class map; the maps after their spread through DiffCut's affinity
(when on); each class's share of PCC's cluster votes; each class's
fused score (vote share + weighted map, after propagation when on), scaled to [0, 1] per row; PCC's
voted (blocky) mask, the colour segments (when the refinement uses them) and the final mask over the image.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..vocab import VOC_CLASSES
from .show import (MASK_GROUND, _class_name, _final_mask_panel, _image_panel, _label_panel, _map_panel,
                   _panel_figure, boundaries, colorize, resize_nearest, to_numpy)


def fuse_figure(capture: Any, result: Any, *, max_cols: int = 5, alpha: float = 0.55, dpi: int = 100) -> Figure:
    """One figure for the fuse labeller; arguments as :func:`~pccseg.pictures.show.stage_figure`."""
    image = to_numpy(capture.image).astype(np.uint8)
    H, W = image.shape[:2]
    names = tuple(getattr(capture, "class_names", None) or VOC_CLASSES)
    p = result.params
    maps = to_numpy(result.class_maps).astype(np.float32)
    shares = to_numpy(result.shares).astype(np.float32)
    spread = None if getattr(result, "spread_maps", None) is None else to_numpy(result.spread_maps).astype(np.float32)
    scores = to_numpy(result.scores).astype(np.float32)
    top = max(float(scores.max()), 1e-12) if scores.size else 1.0
    h, w = maps.shape[1:]
    ids = result.class_ids
    rows = [[_image_panel(image)]
            + [lambda ax, i=i, c=c: _map_panel(ax, maps[i], f"{_class_name(names, c)} map ({h}x{w})")
               for i, c in enumerate(ids)],
            *([[lambda ax, i=i, c=c: _map_panel(ax, spread[i], f"{_class_name(names, c)} map, {p.map_spread:g}"
                                                               f" spread\nthrough DiffCut's affinity")
                for i, c in enumerate(ids)]] if spread is not None else []),
            [lambda ax, i=i, c=c: _map_panel(ax, shares[i], f"{_class_name(names, c)}: share of the\n"
                                                            f"{len(p.ks) * len(p.thresholds)} cluster votes"
                                                            + (f" + {len(p.thresholds)} of\nDiffCut's regions"
                                                               if getattr(p, "ncut_tau", 0) > 0 else ""))
             for i, c in enumerate(ids)],
            [lambda ax, i=i, c=c: _map_panel(ax, scores[i] / top, f"{_class_name(names, c)} score"
                                                                  + (f" (x{p.propagate} spread)" if p.propagate else ""))
             for i, c in enumerate(ids)]]
    blocky = to_numpy(result.blocky)
    last = [lambda ax: _label_panel(ax, colorize(blocky, (H, W), ground=MASK_GROUND, outline=True),
                                    f"PCC's voted mask ({blocky.shape[0]}x{blocky.shape[1]})")]
    if result.refine_segments is not None:
        rs = to_numpy(result.refine_segments).astype(np.int64)

        def draw_rs(ax):
            rgb = image.copy()
            rgb[boundaries(resize_nearest(rs, (H, W)))] = (255, 255, 0)
            _label_panel(ax, rgb, f"colour segments ({len(np.unique(rs))})\neach takes its mean score")
        last.append(draw_rs)
    last.append(_final_mask_panel(image, to_numpy(result.mask), alpha))
    rows.append(last)
    lines = []
    title = (f"fuse (votes + {p.map_weight:g} x maps, background {p.background_weight:g} x; "
             f"{p.upsample}; refine {p.refine})")
    return _panel_figure(rows, title, capture, {int(v) for v in np.unique(to_numpy(result.mask))} | set(ids), lines,
                         max_cols=max_cols, dpi=dpi)
