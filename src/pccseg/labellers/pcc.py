"""PCC labelling of one capture, end to end: docs/method.md sections 2-4.

The stages live one per module (``features``, ``clusters``, ``classes``, ``refine``); this module holds
their parameters, runs them in order and keeps every intermediate for pictures.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Literal

from ..errors import InputError
from ..signals import hold_interrupts

if TYPE_CHECKING:  # torch is imported where it is used, so that the CLI's --help stays light
    import torch

    from ..capture.format import Capture

Preset = Literal["report", "authors"]


@dataclass(frozen=True)
class LabelParams:
    """Every labeller parameter, with the report's values as defaults.

    ``LabelParams.preset("authors")`` switches to the authors' code where it differs from the report:
    8-connected cluster segments, the token maps blurred as their resize-and-sum route does, uncertain
    below a 0.56 vote share (6 of 9), the refine k-means fitted on all pixels, and a refine segment takes
    the dominant value when it has more than twice the runner-up.
    """

    # section 2: class-agnostic clusters
    n_components: int = 3                      # PCA components per head
    ks: tuple[int, ...] = (4, 7, 10)           # k-means cluster counts
    seed: int = 0                              # k-means seed (k-means++ init)
    kmeans_iters: int = 300                    # Lloyd iterations at most
    kmeans_restarts: int = 1                   # k-means++ starts per k-means, least inertia wins (n_init)
    seed_votes: int = 1                        # k-means seeds seed..seed+n-1, their labels voted per pixel
    cluster_connectivity: Literal[4, 8] = 4    # report 4; authors' code 8
    # section 3: classify the segments
    class_blur: bool = False                   # authors' route: [1/8, 3/4, 1/8] blur of the token maps
    thresholds: tuple[float, ...] = (0.3, 0.5, 0.8)
    background_factor: float = 1.2             # background (SoT) binary map: map > factor * t
    vote_rule: Preset = "report"               # report: uncertain if mode share <= 0.5; authors: < 0.56
    # section 4: refinement on the RGB image
    refine: bool = True
    refine_k: int = 20
    refine_connectivity: Literal[4, 8] = 8     # authors' code
    refine_min_segment: int = 10               # smaller fragments pool into one leftover segment
    refine_subsample: int = 16384              # fit the refine k-means on <= this many pixels (0: all)
    dominance_rule: Preset = "report"          # report: > dominance_share; authors: > 2x runner-up
    dominance_share: float = 0.66
    artefact_ring: bool = True                 # authors' code: morphology + 2-px uncertain ring
    ring_width: int = 2

    def __post_init__(self) -> None:
        """Check every field against :data:`CHECKS` (lists become tuples); :class:`InputError` names the
        field. So the API refuses what the command line refuses."""
        for f in fields(self):
            try:
                value = CHECKS[f.name](getattr(self, f.name))
            except ValueError as e:
                raise InputError(str(e), field=f.name) from None
            object.__setattr__(self, f.name, value)
        if 0 < self.refine_subsample < self.refine_k:
            raise InputError(f"must be 0 (all pixels) or at least refine_k ({self.refine_k}), got "
                             f"{self.refine_subsample}", field="refine_subsample")

    @classmethod
    def preset(cls, name: Preset = "report", **overrides) -> "LabelParams":
        """The report's defaults, or the authors' code (``"authors"``), with ``overrides`` on top."""
        if name == "report":
            base = cls()
        elif name == "authors":
            base = cls(cluster_connectivity=8, class_blur=True, vote_rule="authors", refine_subsample=0,
                       dominance_rule="authors")
        else:
            raise ValueError(f"unknown preset {name!r} (report, authors)")
        return replace(base, **overrides)


def _bounds(lo: float, hi: float | None, op: str) -> str:
    return f"{op[0]} {lo}" + ("" if hi is None else f" and {op[1]} {hi}")


def _integer(lo: int, hi: int | None = None) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo or (hi is not None and v > hi):
            raise ValueError(f"must be an integer {_bounds(lo, hi, ('>=', '<='))}, got {v!r}")
        return int(v)
    return check


def _number(lo: float, hi: float | None = None) -> Callable[[Any], float]:
    """A finite number in the open interval (lo, hi)."""
    def check(v: Any) -> float:
        inside = isinstance(v, numbers.Real) and math.isfinite(v) and v > lo and (hi is None or v < hi)
        if isinstance(v, bool) or not inside:
            raise ValueError(f"must be a number {_bounds(lo, hi, ('>', '<'))}, got {v!r}")
        return float(v)
    return check


def _one_of(*choices: Any) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        if not any(v == c and type(v) is type(c) for c in choices):
            raise ValueError(f"must be one of {', '.join(map(repr, choices))}, got {v!r}")
        return v
    return check


def _several(item: Callable[[Any], Any]) -> Callable[[Any], tuple]:
    """A non-empty list or tuple, every item checked by ``item``."""
    def check(v: Any) -> tuple:
        if not isinstance(v, (list, tuple)) or not v:
            raise ValueError(f"must be a non-empty list, got {v!r}")
        try:
            return tuple(item(x) for x in v)
        except ValueError as e:
            raise ValueError(f"each value {e}") from None
    return check


#: LabelParams field -> its check (raises ValueError, returns the value to keep). Every field has one.
CHECKS: dict[str, Callable[[Any], Any]] = {
    "n_components": _integer(1),
    "ks": _several(_integer(2)),
    "seed": _integer(0, 2**63 - 1),
    "kmeans_iters": _integer(1),
    "kmeans_restarts": _integer(1, 1000),
    "seed_votes": _integer(1, 1000),
    "cluster_connectivity": _one_of(4, 8),
    "class_blur": _one_of(True, False),
    "thresholds": _several(_number(0, 1)),
    "background_factor": _number(0),
    "vote_rule": _one_of("report", "authors"),
    "refine": _one_of(True, False),
    "refine_k": _integer(2),
    "refine_connectivity": _one_of(4, 8),
    "refine_min_segment": _integer(0),
    "refine_subsample": _integer(0),
    "dominance_rule": _one_of("report", "authors"),
    "dominance_share": _number(0, 1),
    "artefact_ring": _one_of(True, False),
    "ring_width": _integer(0, 1024),             # pixels: wider than any image's side is meaningless
}


@dataclass
class LabelResult:
    """The final mask and every stage's intermediate (h, w: latent size; H, W: image size).

    Attributes:
        mask: (H, W) uint8 final mask, label values and 255 for uncertain.
        blocky: (h, w) uint8 mask of section 3 (before refinement).
        class_ids: label values of the class maps, background (0) first.
        class_maps: (C, h, w) float, each min-max normalised to [0, 1]; row i is class ``class_ids[i]``.
        pca: layer name -> (heads, h_l, w_l, n_components) principal-component maps of each head.
        features: (h*w, F) clustering features (normalised PCA columns, then x and y).
        clusters: k -> (h, w) int64 k-means cluster index (of the first seed with ``seed_votes`` > 1).
        segments: k -> (h, w) int64 connected-component segment id (idem).
        votes: (seed_votes * len(ks) * len(thresholds), h, w) uint8 label map per (seed, k, threshold),
            seed-major, then k.
        vote_share: (h, w) float share of the votes that the mode got.
        refine_segments: (H, W) int64 segments of the RGB refinement (None if refinement is off; of the
            first seed with ``seed_votes`` > 1).
        refined: (H, W) uint8 mask after the dominance rule (with ``seed_votes`` > 1: the per-pixel vote of
            every seed's, by ``vote_rule``), before the artefact ring (None if off).
        timings: seconds per stage.
        params: the parameters used.
    """

    mask: torch.Tensor
    blocky: torch.Tensor
    class_ids: list[int]
    class_maps: torch.Tensor
    pca: dict[str, torch.Tensor]
    features: torch.Tensor
    clusters: dict[int, torch.Tensor]
    segments: dict[int, torch.Tensor]
    votes: torch.Tensor
    vote_share: torch.Tensor
    refine_segments: torch.Tensor | None
    refined: torch.Tensor | None
    timings: dict[str, float] = field(default_factory=dict)
    params: LabelParams = field(default_factory=LabelParams)

    @property
    def uncertain_share(self) -> float:
        """Share of the final mask's pixels that are 255."""
        return float((self.mask == 255).float().mean())


class _Timer:
    """Seconds per stage (summed over the calls of a stage, which may run side by side in threads) and the
    total; synchronises CUDA so that the numbers are the stages' own."""

    def __init__(self, device: torch.device):
        import torch

        self.sync = torch.cuda.synchronize if device.type == "cuda" else None
        self.times: dict[str, float] = {}
        self.lock = threading.Lock()
        self.t0 = self.start = self._now()

    def _now(self) -> float:
        if self.sync is not None:
            self.sync()
        return time.perf_counter()

    def lap(self, name: str) -> None:
        """Add the seconds since the last lap (or the start) to stage ``name``."""
        now = self._now()
        self.times[name] = self.times.get(name, 0.0) + now - self.start
        self.start = now

    def timed(self, name: str, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)``, its seconds added to stage ``name``."""
        start = self._now()
        out = fn(*args, **kwargs)
        seconds = self._now() - start
        with self.lock:
            self.times[name] = self.times.get(name, 0.0) + seconds
        return out

    def total(self) -> dict[str, float]:
        self.times["total"] = self._now() - self.t0
        return self.times


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` inside the block (process-wide), restored after."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def _tasks(threads: int) -> Iterator[Callable[..., Future]]:
    """``submit(fn, *args) -> Future``: with ``threads`` > 1 a pool of that many threads, each running its
    torch operations on ONE intra-op thread (OpenMP teams of several Python threads would oversubscribe the
    cores); with 1, ``fn`` runs at once in this thread."""
    if threads <= 1:
        def now(fn: Callable, *args) -> Future:
            fut: Future = Future()
            fut.set_result(fn(*args))
            return fut
        yield now
        return
    # signals held back until the capture is labelled: raised inside a future's lock, they would leave it
    # taken, and the pool's threads (joined at exit) would wait on it forever (see LabelPool)
    with hold_interrupts(), torch_threads(1), ThreadPoolExecutor(threads) as pool:
        yield pool.submit


def label(capture: Capture, params: LabelParams | None = None, **overrides) -> LabelResult:
    """Label one capture: PCA -> k-means -> segments -> classes -> 9-way vote -> refinement.

    Runs on the device of ``capture``'s token maps (the other tensors are moved there). ``overrides``
    replace fields of ``params``. Timings (seconds): ``pca``, ``features``, ``kmeans``, ``segments``,
    ``classes``, ``vote``, ``refine_segments``, ``dominance``, ``artefacts``, ``total``.

    On the CPU with torch's threads > 1 the independent stages run side by side on that many threads (the
    RGB segments of the refinement beside the PCA, the k-means of every k), each torch operation on one
    thread; the stage timings then overlap (their sum exceeds ``total``). The results are those of one
    thread either way.

    Raises:
        InputError: a layer's head_dim is smaller than ``params.n_components`` (names the layer).
    """
    import torch
    import torch.nn.functional as F

    from . import classes as C
    from . import clusters as K
    from . import features as Fe
    from . import refine as R

    p = params or LabelParams()
    if overrides:
        p = replace(p, **overrides)
    device = capture.token_maps.device
    timer = _Timer(device)
    h, w = capture.latent_size
    H, W = capture.image_size
    seeds = [p.seed + i for i in range(p.seed_votes)]
    image = capture.image.to(device)

    def image_segments(seed: int) -> torch.Tensor:
        return timer.timed("refine_segments", R.image_segments, image, k=p.refine_k, seed=seed,
                           max_iter=p.kmeans_iters, n_init=p.kmeans_restarts, connectivity=p.refine_connectivity,
                           min_segment=p.refine_min_segment, subsample=p.refine_subsample)

    def cluster(feats: Fe.BlockRows, seed: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        lab, _ = timer.timed("kmeans", K.kmeans, feats, k, seed=seed, max_iter=p.kmeans_iters,
                             n_init=p.kmeans_restarts)
        lab = lab.reshape(h, w)
        return lab, timer.timed("segments", K.connected_components, lab, p.cluster_connectivity)

    with _tasks(torch.get_num_threads() if device.type == "cpu" else 1) as submit:
        refining = [submit(image_segments, s) for s in seeds] if p.refine else []
        self_attn = {k: v.to(device) for k, v in capture.self_attn.items()}
        try:
            pca = timer.timed("pca", Fe.layer_pca, self_attn, p.n_components)
        except InputError as e:
            raise InputError(e.message, path=capture.source and f"{capture.source}/capture.safetensors",
                             field=e.field) from None
        rows = timer.timed("features", Fe.pca_feature_rows, pca, (h, w))
        clustering = [[submit(cluster, rows, s, k) for k in p.ks] for s in seeds]
        feats = timer.timed("features", rows.dense)

        token_maps = capture.token_maps.to(device)
        if p.class_blur:
            token_maps = timer.timed("classes", C.block_sum_blur, token_maps)
        class_ids, cmaps = timer.timed("classes", C.class_maps, token_maps, capture.token_classes)
        binaries = [C.binary_maps(cmaps, class_ids, t, p.background_factor) for t in p.thresholds]
        clusters: dict[int, torch.Tensor] = {}
        segments: dict[int, torch.Tensor] = {}
        votes = []
        for seed, futures in zip(seeds, clustering):
            for k, fut in zip(p.ks, futures):
                lab, seg = fut.result()
                if seed == p.seed:                     # the first seed's, for pictures
                    clusters[k], segments[k] = lab, seg
                votes += [timer.timed("classes", C.assign_segments, seg, b, class_ids) for b in binaries]
        votes = torch.stack(votes)
        blocky, share = timer.timed("vote", C.vote, votes, p.vote_rule)

        up = blocky if (h, w) == (H, W) else \
            F.interpolate(blocky[None, None].float(), size=(H, W), mode="nearest")[0, 0].to(torch.uint8)
        refine_segments = refined = None
        mask = up
        if p.refine:
            refine_segments = refining[0].result()     # the first seed's, for pictures
            per_seed = [timer.timed("dominance", R.dominant_labels, up, fut.result(), rule=p.dominance_rule,
                                    share=p.dominance_share) for fut in refining]
            refined = per_seed[0] if len(seeds) == 1 else \
                timer.timed("dominance", C.vote, torch.stack(per_seed), p.vote_rule)[0]
            mask = refined
        if p.artefact_ring:
            mask = timer.timed("artefacts", R.artefact_ring, mask, p.ring_width)
    return LabelResult(mask=mask, blocky=blocky, class_ids=class_ids, class_maps=cmaps, pca=pca, features=feats,
                       clusters=clusters, segments=segments, votes=votes, vote_share=share,
                       refine_segments=refine_segments, refined=refined, timings=timer.total(), params=p)
