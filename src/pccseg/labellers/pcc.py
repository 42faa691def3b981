"""PCC labelling of one capture, end to end: docs/method.md sections 2-4.

The stages live one per module (``features``, ``clusters``, ``classes``, ``refine``); this module holds
their parameters, runs them in order and keeps every intermediate for pictures.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from ..errors import InputError
from ..params import SEED, Bool, Choice, Int, Real, Seq, check, param, parameters
from ..signals import hold_interrupts

if TYPE_CHECKING:  # torch is imported where it is used, so that the CLI's --help stays light
    import torch

    from ..capture.format import Capture

Preset = Literal["report", "authors"]


@parameters
@dataclass(frozen=True)
class LabelParams:
    """Every labeller parameter, with the report's values as defaults.

    ``LabelParams.preset("authors")`` switches to the authors' code where it differs from the report:
    8-connected cluster segments, the token maps blurred as their resize-and-sum route does, uncertain
    below a 0.56 vote share (6 of 9), the refine k-means fitted on all pixels, and a refine segment takes
    the dominant value when it has more than twice the runner-up.
    """

    # section 2: class-agnostic clusters
    n_components: int = param(3, "PCA components per attention head", Int(1))
    ks: tuple[int, ...] = param((4, 7, 10), "k-means cluster counts (one vote set per k)", Seq(Int(2)))
    seed: int = param(0, "k-means seed (k-means++ init, both k-means steps)", SEED)
    kmeans_iters: int = param(300, "Lloyd iterations at most", Int(1))
    kmeans_restarts: int = param(1, "k-means++ starts of every k-means; the one of least inertia wins "
                                    "(scikit-learn's n_init)", Int(1, 1000))
    seed_votes: int = param(1, "label with the k-means seeds seed .. seed + n - 1 and vote: the cluster votes of "
                               "all seeds make one blocky mask, each seed refines it and every pixel takes the "
                               "value most of them give", Int(1, 1000))
    cluster_connectivity: Literal[4, 8] = param(4, "connectivity of cluster segments (report 4, authors 8)",
                                                Choice(4, 8))
    # section 3: classify the segments
    class_blur: bool = param(False, "blur the class-text token maps by [1/8, 3/4, 1/8], as the authors' bilinear "
                                    "resize to the image size and 8x8 block sums do", Bool())
    thresholds: tuple[float, ...] = param((0.3, 0.5, 0.8), "class-map thresholds (one vote set per threshold)",
                                          Seq(Real(0, 1, "neither")))
    background_factor: float = param(1.2, "background (start-of-text) binary map is map > factor * t",
                                     Real(0, closed="neither"))
    vote_rule: Preset = param("report", "report: uncertain if the mode's share <= 0.5; authors: < 0.56",
                              Choice("report", "authors"))
    # section 4: refinement on the RGB image
    refine: bool = param(True, "refine the blocky mask on the RGB image", Bool())
    refine_k: int = param(20, "k of the RGB+xy k-means", Int(2))
    refine_connectivity: Literal[4, 8] = param(8, "connectivity of refine segments", Choice(4, 8))
    refine_min_segment: int = param(10, "refine fragments under this many pixels pool into one leftover segment",
                                    Int(0))
    refine_subsample: int = param(16384, "refine k-means: fit centroids on at most this many pixels (strided), "
                                         "then assign every pixel; 0 = fit on all pixels", Int(0))
    dominance_rule: Preset = param("report", "report: dominant value if its share > dominance share; authors: "
                                             "> 2x runner-up", Choice("report", "authors"))
    dominance_share: float = param(0.66, "share for the report's dominance rule", Real(0, 1, "neither"))
    artefact_ring: bool = param(True, "authors' morphology + uncertain ring around each class region", Bool())
    ring_width: int = param(2, "width in pixels of the uncertain ring",
                            Int(0, 1024, why="wider than any image's side is meaningless"))

    def __post_init__(self) -> None:
        """Check every field (:func:`pccseg.params.check`; lists become tuples): the API refuses what the
        command line refuses."""
        check(self)

    def _validate(self) -> None:
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
