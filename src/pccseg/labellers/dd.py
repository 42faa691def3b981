"""The dd labeller: Dataset Diffusion's mask rule (Nguyen et al., NeurIPS 2023; its ``gen_data.py``).

1. Class maps at the quarter-latent level (16x16 for SD at 512x512), one per object class, resized
   bicubically to the grid of the self-attention probabilities (half the latent size, 32x32).
2. Each class map, flattened, is multiplied by the affinity matrix raised to the 4th power: the
   self-attention probabilities P (n x n, averaged over heads, layers and steps; row = query pixel) give
   ``P^4 c``, which spreads a class over the pixels that attend to it.
3. Each result is min-max normalised, then resized bicubically to the image size.
4. Per pixel the class of the largest map where that maximum is >= 0.6; 255 where it lies in [0.5, 0.6);
   background below 0.5. There is no background map.

Where pccseg differs from that script (see docs/labeller.md): the class maps are pccseg's open-vocabulary
maps of the capture (method §1b; the class names never reach the UNet, so the image is the prompt's), brought
to the quarter level by area averaging of the latent-size token maps, instead of cross-attention to a
class prompt appended to the caption; ``P^4 c`` is computed as four products with the class maps (the same
numbers, no n x n matrix power); a constant map normalises to 0 instead of NaN.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, get_args

from ..errors import InputError
from ..params import Choice, Int, OrNone, check, param, parameters
from .pcc import _Timer
from .attn import (FRACTION, Interpolation, MapsResult, TokenMerge, check_band, object_maps, resize,
                   threshold_argmax)

if TYPE_CHECKING:  # torch is imported where it is used, so that the CLI's --help stays light
    import torch

    from ..capture.format import Capture

MISSING_SELF_PROBS = ("no self-attention probabilities in this capture, which the dd labeller needs: make the "
                      "captures with `pccseg generate --labeller dd` or `pccseg generate --keep-captures`")


@parameters
@dataclass(frozen=True)
class DDParams:
    """Parameters of the dd labeller; the defaults are the values of Dataset Diffusion's script."""

    power: int = param(4, "power of the self-attention affinity matrix (0: no affinity, the class maps alone)",
                       Int(0, 64, why="each is a matrix product"))
    class_downsample: int = param(4, "class maps at the latent size divided by this (4: 16x16 for SD at 512)",
                                  Int(1))
    threshold: float = param(0.6, "a pixel takes the class of the largest map where it is >= this", FRACTION)
    uncertain_threshold: float | None = param(
        0.5, "uncertain (255) where the largest map is in [this, threshold); set it to the threshold (or None) "
             "for no uncertain band", OrNone(FRACTION, "no band"))
    token_merge: TokenMerge = param("mean", "how the tokens of one class name merge (\"pot plant\": their mean)",
                                    Choice(*get_args(TokenMerge)))
    interpolation: Interpolation = param("bicubic", "resize of the class maps to the self-attention grid and "
                                                    "of the result to the image", Choice(*get_args(Interpolation)))

    def __post_init__(self) -> None:
        check(self)

    _validate = check_band


def spread(self_probs: torch.Tensor, maps: torch.Tensor, power: int) -> torch.Tensor:
    """``P^power c`` for every class map c: P = self_probs as an (n, n) matrix, maps flattened in raster order.

    Args:
        self_probs: (h, w, h*w) attention probabilities, row = query pixel.
        maps: (C, h, w) class maps on the same grid.

    Returns:
        (C, h, w) float32.
    """
    h, w, n = self_probs.shape
    p = self_probs.reshape(n, n).float()
    x = maps.reshape(maps.shape[0], n).T.float()      # (n, C)
    for _ in range(power):
        x = p @ x
    return x.T.reshape(maps.shape[0], h, w)


def label(capture: Capture, params: DDParams | None = None, **overrides) -> MapsResult:
    """Label one capture with Dataset Diffusion's rule; runs on the device of the capture's token maps.

    Timings (seconds): ``maps``, ``affinity``, ``resize``, ``mask``, ``total``.

    Raises:
        InputError: the capture has no ``self_probs`` (names its tensor file and the field).
    """
    import torch.nn.functional as F

    from ..capture.format import SELF_PROBS_KEY, TENSOR_FILE
    from .features import minmax

    p = replace(params or DDParams(), **overrides)
    if capture.self_probs is None:
        raise InputError(MISSING_SELF_PROBS, path=capture.source and f"{capture.source}/{TENSOR_FILE}",
                         field=SELF_PROBS_KEY)
    device = capture.token_maps.device
    timer = _Timer(device)
    probs = capture.self_probs.to(device)
    grid = tuple(probs.shape[:2])
    h, w = capture.latent_size
    ids, maps = object_maps(capture, p.token_merge)
    if ids:
        level = (max(1, h // p.class_downsample), max(1, w // p.class_downsample))
        maps = F.interpolate(maps[None], size=level, mode="area")[0]
    maps = resize(maps, grid, p.interpolation)
    timer.lap("maps")
    refined = minmax(spread(probs, maps, p.power), (1, 2))
    timer.lap("affinity")
    up = resize(refined, capture.image_size, p.interpolation)
    timer.lap("resize")
    mask, score = threshold_argmax(up, ids, p.threshold, p.uncertain_threshold)
    timer.lap("mask")
    return MapsResult(mask=mask, class_ids=ids, class_maps=minmax(maps, (1, 2)), refined_maps=refined, score=score,
                      timings=timer.total(), params=p)
