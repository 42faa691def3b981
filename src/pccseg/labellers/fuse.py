"""The fuse labeller: PCC's cluster votes and the class maps fused into soft class scores, decided per
colour segment of the image (docs/labeller.md, "fuse").

1. **Votes** (PCC's sections 2-3, :func:`pccseg.labellers.pcc.label` without its refinement): the
   self-attention clusters at every k, each classified by the class maps at every threshold; the share of
   the votes that each class gets at each latent pixel is a soft score (PCC keeps only the mode, and
   calls a pixel uncertain when the mode has half of the votes or less).
2. **Fusion**: score = vote share + weight * class map (min-max normalised; the background's map, the
   start-of-text token's, weighted ``background_weight``, the objects' ``map_weight``). The clusters say
   where the regions are, the maps which class each pixel leans to; an object needs both. Each class map
   is first mixed (``map_spread``) with its spread through DiffCut's affinity of the self-attention
   outputs (:func:`~pccseg.labellers.ncut.affinity`, :func:`~pccseg.labellers.fusion.spread_maps`), so
   that it agrees with the attention's grouping; DiffCut's regions (recursive normalized cut of that
   affinity, ``ncut_tau``, off by default) can vote beside PCC's clusters.
3. **Propagation** (optional, off by default): the scores spread ``propagate`` times through the
   captured self-attention probabilities (``self_probs``), rows raised to ``sharpen`` (iSeg, Dataset
   Diffusion).
4. **Upsampling** to the image size, bilinear (PCC: nearest, whence blocky edges).
5. **Refinement on the image** (``both`` by default): PAMR, label propagation weighted by local colour
   affinity (``pamr``), on a grid of at most ``pamr_scale`` image pixels per latent pixel (then bilinear
   to the image size); then every colour-and-position segment (PCC's k-means on RGB + xy, ``refine_k``
   clusters split into connected parts) takes the mean score of its pixels (``segments``).
6. **Decision**: argmax; uncertain where the runner-up is within ``margin`` of the best (relative); regions
   under ``min_region`` pixels take the majority of their border.

No uncertain ring: every pixel gets a class unless the scores are close.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal, get_args

from ..errors import InputError
from ..params import SEED, Choice, Int, Real, Seq, check, param, parameters
from .pcc import _Timer

if TYPE_CHECKING:  # torch is imported where it is used, so that the CLI's --help stays light
    import torch

    from ..capture.format import Capture

Upsample = Literal["bilinear", "nearest"]
Refine = Literal["segments", "pamr", "both", "none"]
UNCERTAIN = 255

MISSING_SELF_PROBS = ("no self-attention probabilities in this capture, which --fuse-propagate needs: make the "
                      "captures with `pccseg generate --keep-captures` (or --labeller dd / fuse), or set "
                      "propagate to 0")


@parameters
@dataclass(frozen=True)
class FuseParams:
    """Parameters of the fuse labeller (module docstring); each stage can be switched off.

    The cluster and vote fields are PCC's (:class:`~pccseg.labellers.pcc.LabelParams`, the report's
    values); the rest were chosen on three instruments together (docs/labeller.md, "fuse").
    """

    # 1. PCC's clusters and votes
    n_components: int = param(3, "PCA components per attention head (PCC's clusters)", Int(1))
    ks: tuple[int, ...] = param((4, 7, 10), "k-means cluster counts (PCC's clusters; one vote set per k)",
                                Seq(Int(2)))
    thresholds: tuple[float, ...] = param((0.3, 0.5, 0.8), "class-map thresholds (PCC's votes; one vote set per "
                                                           "threshold)", Seq(Real(0, 1, "neither")))
    background_factor: float = param(1.2, "background (start-of-text) binary map is map > factor * t (PCC's votes)",
                                     Real(0, closed="neither"))
    seed: int = param(0, "k-means seed (clusters and colour segments)", SEED)
    # 1b. DiffCut's affinity: scaled cosine of the self-attention outputs ** alpha, on the finest level
    affinity_alpha: float = param(10.0, "DiffCut's affinity of two pixels: the cosine of their self-attention "
                                        "outputs, scaled to [0, 1], to this power", Real(0, closed="neither"))
    affinity_nodes: int = param(1024, "the affinity is taken on the finest self-attention level with at most this "
                                      "many pixels", Int(4, 16384))
    map_spread: float = param(0.5, "class map = (1 - this) x map + this x the map spread once through the "
                                   "affinity (0: off)", Real(0, 1))
    ncut_tau: float = param(0.0, "DiffCut's regions vote beside PCC's clusters: recursive normalized cut of the "
                                 "affinity, stopped where the best cut's value is above this (0: off)",
                            Real(0, 2, "left"))
    # 2. fusion: score = vote share + weight * class map
    map_weight: float = param(1.0, "score = vote share + this x object class map (0: the votes alone)", Real(0))
    background_weight: float = param(2.0, "weight of the background (start-of-text) map in the score", Real(0))
    # 3. propagation through self_probs (0: off)
    propagate: int = param(0, "spread the scores this many times through the captured self_probs (0: off; needs "
                              "captures with self_probs)", Int(0, 100))
    sharpen: float = param(1.0, "power of the self_probs rows before propagation (1: as captured)",
                           Real(0, closed="neither"))
    # 4-5. upsampling and refinement on the image
    upsample: Upsample = param("bilinear", "scores latent -> image size", Choice(*get_args(Upsample)))
    refine: Refine = param("both", "segments: every colour segment takes its mean score; pamr: colour-affinity "
                                   "propagation; both: pamr, then segments; none", Choice(*get_args(Refine)))
    refine_k: int = param(20, "k of the RGB+xy k-means of the colour segments", Int(2))
    pamr_iters: int = param(10, "PAMR iterations", Int(0, 1000))
    pamr_dilations: tuple[int, ...] = param((1, 2, 4, 8), "PAMR neighbourhood dilations in pixels", Seq(Int(1)))
    pamr_scale: int = param(4, "PAMR runs at most this many pixels per latent pixel (then bilinear to the image; "
                               "0: at the image size)", Int(0))
    # 6. decision
    margin: float = param(0.0, "uncertain (255) where the runner-up score is within this share of the best "
                               "(0: never)", Real(0, 1, "left"))
    min_region: int = param(0, "regions under this many pixels take their border's majority label (0: off)",
                            Int(0))

    def __post_init__(self) -> None:
        check(self)


@dataclass
class FuseResult:
    """The fuse labeller's mask and its stages (h, w: latent size; g: the self_probs grid; H, W: image).

    Attributes:
        mask: (H, W) uint8 final mask, 255 for uncertain.
        blocky: (h, w) uint8 PCC's voted mask (the mode of the votes, 255 where it has <= half).
        class_ids: label values of the classes scored, background (0) first.
        class_maps: (C, h, w) float min-max normalised class maps.
        shares: (C, h, w) float share of the votes per class.
        scores: (C, h, w) float fused scores (after propagation, on the latent grid).
        refine_segments: (H, W) int64 colour segments (None unless refine uses them).
        regions: (h, w) int64 DiffCut's regions (None unless ``ncut_tau`` > 0).
        spread_maps: (C, h, w) float class maps after the spread, as fused (None unless ``map_spread`` > 0).
        refined: (C, H, W) float scores after upsampling and refinement.
        timings: seconds per stage and ``total``.
        params: the parameters used.
    """

    mask: torch.Tensor
    blocky: torch.Tensor
    class_ids: list[int]
    class_maps: torch.Tensor
    shares: torch.Tensor
    scores: torch.Tensor
    refine_segments: torch.Tensor | None
    refined: torch.Tensor
    regions: torch.Tensor | None = None
    spread_maps: torch.Tensor | None = None
    timings: dict[str, float] = field(default_factory=dict)
    params: FuseParams = field(default_factory=FuseParams)

    @property
    def uncertain_share(self) -> float:
        """Share of the final mask's pixels that are 255."""
        return float((self.mask == UNCERTAIN).float().mean())


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """(C, h, w) -> (C, *size) float, ``mode`` bilinear (align_corners False) or nearest."""
    import torch.nn.functional as F

    if tuple(x.shape[1:]) == tuple(size):
        return x
    kw = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(x[None], size=tuple(size), mode=mode, **kw)[0]


def label(capture: Capture, params: FuseParams | None = None, **overrides) -> FuseResult:
    """Label one capture with the fuse labeller; runs on the device of the capture's token maps.

    Timings (seconds): ``votes`` (PCC's clusters and votes), ``refine_segments``, ``fuse``, ``propagate``,
    ``refine``, ``decide``, ``total``. On the CPU with torch threads > 1 the colour segments run beside the
    votes (as in PCC), each on one thread, so ``votes`` and ``refine_segments`` overlap; the masks are
    those of one thread either way.

    Raises:
        InputError: ``propagate`` > 0 and the capture has no ``self_probs``; a layer's head_dim is below
            ``n_components`` (both name the file and the field).
    """
    import torch
    import torch.nn.functional as F

    from ..capture.format import SELF_PROBS_KEY, TENSOR_FILE
    from . import classes as C
    from . import fusion as Fu
    from . import pcc
    from . import ncut as N
    from .refine import image_segments

    p = replace(params or FuseParams(), **overrides)
    if p.propagate and capture.self_probs is None:
        raise InputError(MISSING_SELF_PROBS, path=capture.source and f"{capture.source}/{TENSOR_FILE}",
                         field=SELF_PROBS_KEY)
    device = capture.token_maps.device
    timer = _Timer(device)
    image = capture.image.to(device)
    # as PCC does: on a CPU with torch threads > 1, the colour segments run beside the votes, each on one
    # torch thread (two intra-op teams would oversubscribe the cores)
    with pcc._tasks(torch.get_num_threads() if device.type == "cpu" else 1) as submit:
        segmenting = submit(lambda: timer.timed("refine_segments", image_segments, image, k=p.refine_k,
                                                seed=p.seed)) if p.refine in ("segments", "both") else None
        vote = timer.timed("votes", pcc.label, capture, pcc.LabelParams(
            n_components=p.n_components, ks=p.ks, thresholds=p.thresholds, background_factor=p.background_factor,
            seed=p.seed, refine=False, artefact_ring=False))
        segments = None if segmenting is None else segmenting.result()
    timer.start = timer._now()
    ids, maps = vote.class_ids, vote.class_maps
    votes, regions, fused_maps = vote.votes, None, maps
    if p.map_spread > 0 or p.ncut_tau > 0:
        feats, grid = N.attention_features({k: v.to(device) for k, v in capture.self_attn.items()}, p.affinity_nodes)
        aff = N.affinity(feats, p.affinity_alpha)
        if p.map_spread > 0:
            fused_maps = Fu.spread_maps(maps, aff, grid, p.map_spread)
        if p.ncut_tau > 0:
            regions = N.cut_regions(aff, grid, tuple(maps.shape[1:]), p.ncut_tau)
            votes = torch.cat([votes, torch.stack([C.assign_segments(regions, C.binary_maps(
                maps, ids, t, p.background_factor), ids) for t in p.thresholds])])
        timer.lap("affinity")
    shares = Fu.vote_shares(votes, ids)
    scores = Fu.fuse_scores(shares, fused_maps, ids, p.map_weight, p.background_weight)
    timer.lap("fuse")
    if p.propagate:
        probs = capture.self_probs.to(device)
        g = tuple(probs.shape[:2])
        n = g[0] * g[1]
        small = F.interpolate(scores[None], size=g, mode="area")[0] if g != tuple(scores.shape[1:]) else scores
        spread = Fu.propagate(small, Fu.sharpen(probs.reshape(n, n).float(), p.sharpen), p.propagate)
        scores = spread if g == tuple(scores.shape[1:]) else \
            F.interpolate(spread[None], size=tuple(scores.shape[1:]), mode="bilinear", align_corners=False)[0]
        timer.lap("propagate")
    size = capture.image_size
    use_pamr = p.refine in ("pamr", "both") and p.pamr_iters > 0
    # PAMR runs on a grid of at most pamr_scale image pixels per latent pixel (the scores have no detail
    # finer than a latent pixel; the colour segments give the edges at the image size)
    grid = tuple(min(n, m * p.pamr_scale) for n, m in zip(size, scores.shape[1:])) \
        if use_pamr and p.pamr_scale else size
    up = _resize(scores, grid, p.upsample)
    if use_pamr:
        small = image if grid == size else \
            F.interpolate(image.permute(2, 0, 1)[None].float(), size=grid, mode="area")[0].permute(1, 2, 0)
        up = _resize(Fu.pamr(small, up, p.pamr_iters, p.pamr_dilations), size, p.upsample)
    if segments is not None:
        up = Fu.pool_segments(up, segments)
    timer.lap("refine")
    mask = Fu.absorb_small(Fu.decide(up, ids, p.margin), p.min_region)
    timer.lap("decide")
    return FuseResult(mask=mask, blocky=vote.blocky, class_ids=ids, class_maps=maps, shares=shares, scores=scores,
                      refine_segments=segments, refined=up, regions=regions,
                      spread_maps=fused_maps if p.map_spread > 0 else None, timings=timer.total(), params=p)
