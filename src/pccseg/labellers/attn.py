"""The attn labeller: the class maps alone, no self-attention (the baseline that PCC and dd improve on).

Each object class's map (the capture's open-vocabulary token maps, merged per class, method §1b; the
start-of-text map is not used) is min-max normalised at latent size and resized to the image size; every
pixel takes the class of the largest map where that maximum is at least ``threshold``, and is background
below it. With ``uncertain_threshold`` set, pixels whose maximum lies in [uncertain_threshold, threshold)
are uncertain (255) instead.

This module also holds what the dd labeller (:mod:`pccseg.labellers.dd`) shares with it: the object class
maps of a capture, the resize, the threshold-and-argmax rule, threshold checks and the result type.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, get_args

from ..errors import InputError
from ..params import Choice, OrNone, Real, check, param, parameters
from .pcc import _Timer
from ..vocab import IGNORE_INDEX

if TYPE_CHECKING:  # torch is imported where it is used, so that the CLI's --help stays light
    import torch

    from ..capture.format import Capture

Interpolation = Literal["bicubic", "bilinear", "nearest"]
TokenMerge = Literal["max", "mean"]


#: A threshold on min-max normalised maps.
FRACTION = Real(0, 1, why="the maps are min-max normalised")


def check_band(params: Any) -> None:
    """The uncertain threshold (None: no band) at most the threshold: the ``_validate`` of the attn and dd
    parameters."""
    if params.uncertain_threshold is not None and params.uncertain_threshold > params.threshold:
        raise InputError(f"{params.uncertain_threshold} is above threshold {params.threshold}: the uncertain "
                         "band is [uncertain_threshold, threshold)", field="uncertain_threshold")


@parameters
@dataclass(frozen=True)
class AttnParams:
    """Parameters of the attn labeller (see the module docstring).

    Defaults: ``threshold`` 0.4 is DAAM's mask threshold (its ``daam_to_mask.py``; DAAM also min-max
    normalises and resizes bicubically); no uncertain band; tokens of one class merged by the element-wise
    max, as the PCC labeller's class maps (method §1b).
    """

    threshold: float = param(0.4, "background where every normalised class map is below this", FRACTION)
    uncertain_threshold: float | None = param(None, "uncertain (255) where the largest map is in [this, "
                                                    "threshold); None: no band", OrNone(FRACTION, "no band"))
    interpolation: Interpolation = param("bicubic", "resize of the class maps to the image",
                                         Choice(*get_args(Interpolation)))
    token_merge: TokenMerge = param("max", "how the tokens of one class name merge", Choice(*get_args(TokenMerge)))

    def __post_init__(self) -> None:
        check(self)

    _validate = check_band


@dataclass
class MapsResult:
    """The mask of the attn or dd labeller and the maps it came from (h, w: the maps' grid; H, W: image).

    Attributes:
        mask: (H, W) uint8 final mask: label values, 255 for uncertain.
        class_ids: label values of the object classes, ascending (no background).
        class_maps: (C, h, w) float class maps, each min-max normalised: attn at latent size; dd at the
            self-attention grid, before the affinity.
        refined_maps: (C, h, w) float, dd only: the class maps after the affinity, min-max normalised.
        score: (H, W) float: the largest resized map at each pixel, the value the thresholds cut.
        timings: seconds per stage and ``total``.
        params: the parameters used.
    """

    mask: torch.Tensor
    class_ids: list[int]
    class_maps: torch.Tensor
    score: torch.Tensor
    refined_maps: torch.Tensor | None = None
    timings: dict[str, float] = field(default_factory=dict)
    params: Any = None

    @property
    def uncertain_share(self) -> float:
        """Share of the final mask's pixels that are 255."""
        return float((self.mask == IGNORE_INDEX).float().mean())


def object_maps(capture: Capture, merge: TokenMerge) -> tuple[list[int], torch.Tensor]:
    """The object classes' token maps merged per class, unnormalised, background (start-of-text) left out.

    Returns:
        (class_ids ascending, (C, h, w) float32 maps at latent size on the token maps' device).
    """
    from .classes import merge_tokens

    ids, maps = merge_tokens(capture.token_maps, capture.token_classes, merge)
    keep = [i for i, c in enumerate(ids) if c != 0]
    return [ids[i] for i in keep], maps[keep]


def resize(maps: torch.Tensor, size: tuple[int, int], mode: Interpolation) -> torch.Tensor:
    """(C, h, w) -> (C, H, W) by ``F.interpolate`` (``align_corners=False`` for bilinear and bicubic)."""
    import torch.nn.functional as F

    if maps.shape[0] == 0:
        return maps.new_zeros((0, *size))
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    kw = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(maps[None], size=tuple(size), mode=mode, **kw)[0]


def threshold_argmax(maps: torch.Tensor, class_ids: Sequence[int], threshold: float,
                     uncertain_threshold: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pixel the class of the largest map where that maximum is >= ``threshold``, else background (0);
    255 where the maximum lies in [``uncertain_threshold``, ``threshold``). Ties: the first class.

    Args:
        maps: (C, H, W) float, one map per class of ``class_ids``.

    Returns:
        (mask (H, W) uint8, maximum (H, W) float).
    """
    import torch

    if maps.shape[0] == 0:
        best = maps.new_zeros(maps.shape[1:])
        return torch.zeros(best.shape, dtype=torch.uint8, device=maps.device), best
    best, idx = maps.max(0)
    lut = torch.tensor(list(class_ids), dtype=torch.uint8, device=maps.device)
    mask = torch.where(best >= threshold, lut[idx], torch.zeros_like(idx, dtype=torch.uint8))
    if uncertain_threshold is not None:
        mask[(best >= uncertain_threshold) & (best < threshold)] = IGNORE_INDEX
    return mask, best


def label(capture: Capture, params: AttnParams | None = None, **overrides) -> MapsResult:
    """Label one capture with the class maps alone; runs on the device of the capture's token maps.

    Timings (seconds): ``maps``, ``resize``, ``mask``, ``total``.
    """
    from .features import minmax

    p = replace(params or AttnParams(), **overrides)
    timer = _Timer(capture.token_maps.device)
    ids, maps = object_maps(capture, p.token_merge)
    maps = minmax(maps, (1, 2))
    timer.lap("maps")
    up = resize(maps, capture.image_size, p.interpolation)
    timer.lap("resize")
    mask, score = threshold_argmax(up, ids, p.threshold, p.uncertain_threshold)
    timer.lap("mask")
    return MapsResult(mask=mask, class_ids=ids, class_maps=maps, score=score, timings=timer.total(), params=p)
