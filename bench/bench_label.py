"""Benchmark of PCC labelling at SD 2.1 shapes (not a test).

A planted synthetic capture (512x512 image, latent 64x64, 210 heads of dim 64) is labelled N times by

* pccseg: ``pccseg.labellers.pcc.label`` (batched PCA by subspace iteration, torch k-means on the
  features' distinct rows, subsampled refine fit);
* baseline: the same algorithm written straightforwardly, as the authors do: one scikit-learn ``PCA`` per
  head, scikit-learn ``KMeans(random_state=0)`` for the three cluster k-means and the k = 20 refine
  k-means on all 262,144 pixels; the other steps share pccseg's code.

It prints a Markdown table: median seconds per stage and in total, the ratio baseline / pccseg, and the
mIoU between the two final masks (and of each against the planted layout).

    .venv/bin/python bench/bench_label.py --runs 5 [--threads 2] [--preset report] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def miou(a: torch.Tensor, b: torch.Tensor, over: str = "both") -> float:
    """Mean IoU over the values present in either map (255 included), or in ``b`` only (``over="b"``)."""
    a, b = a.long().cpu(), b.long().cpu()
    ious = []
    for c in (torch.unique(torch.cat([a.unique(), b.unique()])) if over == "both" else b.unique()):
        x, y = a == c, b == c
        ious.append(float((x & y).sum()) / float((x | y).sum()))
    return sum(ious) / len(ious)


def baseline_label(cap, p, random_state: int = 0):
    """The straightforward version: per-head sklearn PCA, sklearn KMeans(random_state); returns (mask, timings)."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    from pccseg.labellers import classes as C
    from pccseg.labellers import clusters as K
    from pccseg.labellers import refine as R
    from pccseg.labellers.features import minmax, pixel_grid

    t = {}
    t0 = time.perf_counter()
    h, w = cap.latent_size
    H, W = cap.image_size
    cols = []
    for layer in cap.self_attn.values():
        heads, hl, wl, d = layer.shape
        for i in range(heads):
            scores = PCA(n_components=p.n_components).fit_transform(layer[i].reshape(-1, d).numpy())
            m = torch.from_numpy(scores).float().t().reshape(1, p.n_components, hl, wl)
            cols.append(F.interpolate(m, size=(h, w), mode="nearest").reshape(p.n_components, h * w))
    t["pca"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    feats = torch.cat([minmax(torch.cat(cols).t()), pixel_grid(h, w)], 1).numpy()
    t["features"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    segments = {}
    for k in p.ks:
        lab = KMeans(n_clusters=k, random_state=random_state).fit(feats).labels_
        segments[k] = K.connected_components(torch.from_numpy(lab).reshape(h, w), p.cluster_connectivity)
    t["kmeans+segments"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    token_maps = C.block_sum_blur(cap.token_maps) if p.class_blur else cap.token_maps
    ids, maps = C.class_maps(token_maps, cap.token_classes)
    votes = torch.stack([C.assign_segments(segments[k], C.binary_maps(maps, ids, th, p.background_factor), ids)
                         for k in p.ks for th in p.thresholds])
    blocky, _ = C.vote(votes, p.vote_rule)
    t["classes+vote"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    up = F.interpolate(blocky[None, None].float(), size=(H, W), mode="nearest")[0, 0].to(torch.uint8)
    lab = KMeans(n_clusters=p.refine_k, random_state=random_state).fit(R.pixel_features(cap.image).numpy()).labels_
    segs = K.connected_components(torch.from_numpy(lab).reshape(H, W), p.refine_connectivity)
    segs = K.relabel_small(segs, p.refine_min_segment)
    t["refine_segments"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    mask = R.artefact_ring(R.dominant_labels(up, segs, rule=p.dominance_rule, share=p.dominance_share),
                           p.ring_width)
    t["dominance+artefacts"] = time.perf_counter() - t1
    t["total"] = time.perf_counter() - t0
    return mask, t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="runs of each (median reported; default 5)")
    ap.add_argument("--baseline-runs", type=int, default=None, help="runs of the baseline (default: --runs)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--preset", default="report", choices=("report", "authors"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-baseline", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from pccseg.labellers.pcc import LabelParams, label
    from pccseg.capture.synthetic import planted_capture, planted_layout

    p = LabelParams.preset(args.preset)
    cap = planted_capture(seed=0, device=args.device)
    layout = planted_layout()
    label(cap, p)                                                  # warm-up
    ours = [label(cap, p) for _ in range(args.runs)]
    stages = {
        "pca": ["pca"], "features": ["features"], "kmeans+segments": ["kmeans", "segments"],
        "classes+vote": ["classes", "vote"], "refine_segments": ["refine_segments"],
        "dominance+artefacts": ["dominance", "artefacts"], "total": ["total"],
    }
    med = {s: statistics.median(sum(r.timings.get(k, 0.0) for k in ks) for r in ours) for s, ks in stages.items()}
    base_med, base_mask = {}, None
    if not args.no_baseline:
        cpu_cap = cap if args.device == "cpu" else planted_capture(seed=0)
        runs = [baseline_label(cpu_cap, p) for _ in range(args.baseline_runs or args.runs)]
        base_mask = runs[0][0]
        base_med = {s: statistics.median(r[1][s] for r in runs) for s in stages}

    print(f"PCC labelling, SD 2.1 shapes (512x512 image, latent 64x64, 210 heads x 64), preset {args.preset}, "
          f"device {args.device}, torch threads {torch.get_num_threads()}, median of {args.runs} runs\n")
    print("| stage | pccseg (s) | baseline (s) | baseline / pccseg |")
    print("|---|---:|---:|---:|")
    for s in stages:
        b = base_med.get(s)
        ratio = f"{b / med[s]:.1f}x" if b and med[s] > 0 else "-"
        print(f"| {s} | {med[s]:.4f} | {'-' if b is None else f'{b:.4f}'} | {ratio} |")
    mask = ours[0].mask.cpu()
    print()
    print(f"- mIoU pccseg mask vs planted layout: {miou(mask, layout, 'b'):.4f} "
          f"(uncertain share {ours[0].uncertain_share:.4f})")
    if base_mask is not None:
        print(f"- mIoU baseline mask vs planted layout: {miou(base_mask, layout, 'b'):.4f}")
        print(f"- agreement, mIoU pccseg mask vs baseline mask: {miou(mask, base_mask):.4f}")
        print(f"- pixel agreement: {float((mask == base_mask).float().mean()):.4f}")


if __name__ == "__main__":
    main()
