"""Short training runs on CPU: time per iteration, loss, mIoU, and how far the eval-mode network (BatchNorm
running statistics) is from the train-mode one for a few BatchNorm momenta.

    python bench/bench_train.py                      # MobileNetV3, random init, 64 px, 4 images
    python bench/bench_train.py --momenta 0.5 0.1 --iters 40 --batch-size 2
    python bench/bench_train.py --data runs/demo          # any dataset, e.g. pccseg generate --model tiny

The data are pccseg.dataset.synthetic's blocks (a red and a green block on grey noise), or --data. Prints one table
row per momentum: seconds per iteration (median of the logged intervals), first and last logged loss,
mIoU at the end, and the cross-entropy on the training images with the model in eval mode and in train
mode (the gap is what running statistics cost).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from pccseg.dataset.synthetic import make_blocks_tree
from pccseg.dataset.voc import VOCSplit
from pccseg.train.config import TrainConfig
from pccseg.train.deeplab import load_model, normalize
from pccseg.train.loop import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--momenta", type=float, nargs="+", default=[0.5, 0.1, 0.0],
                    help="BatchNorm momenta to compare; 0 = torchvision's default (0.01 for MobileNetV3)")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--images", type=int, default=4, help="synthetic images (without --data)")
    ap.add_argument("--data", default=None, help="a VOC-layout dataset (its train split) instead")
    ap.add_argument("--crop-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else make_blocks_tree(Path(tmp) / "data", n=args.images)
        ds = VOCSplit(data, "train")
        x = torch.stack([normalize(ds[i][0]) for i in range(len(ds))])
        y = torch.stack([ds[i][1] for i in range(len(ds))])
        h, w = ds[0][1].shape
        print(f"{args.iters} iterations, batch {args.batch_size}, crop {args.crop_size}, {len(ds)} images of "
              f"{w}x{h} ({'synthetic blocks' if not args.data else data}), {args.threads} thread(s)\n")
        print("| BN momentum | s / iteration | loss first -> last | mIoU at the end | CE eval mode | CE train mode |")
        print("|---|---:|---:|---:|---:|---:|")
        for momentum in args.momenta:
            run = Path(tmp) / f"run-{momentum}"
            cfg = TrainConfig(data=str(data), out=str(run), val=str(data), val_split="train",
                              arch="mobilenet_v3_large", backbone_weights="none", aux_loss=False,
                              batch_size=args.batch_size, crop_size=args.crop_size, short_side=None, scale_min=0.75,
                              scale_max=1.25, lr=2e-3, backbone_lr_mult=1.0, bn_momentum=momentum or None,
                              workers=0, device="cpu", progress=False, tensorboard=False, iters=args.iters,
                              val_every=args.iters, log_every=5)
            result = train(cfg)
            log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
            losses = [r for r in log if "loss" in r]
            steps = [(b["time"] - a["time"]) / (b["iter"] - a["iter"]) for a, b in zip(losses, losses[1:])]
            model, _ = load_model(run / "last")
            with torch.no_grad():
                ce_eval = F.cross_entropy(model(x)["out"], y, ignore_index=255).item()
                model.train()
                ce_train = F.cross_entropy(model(x)["out"], y, ignore_index=255).item()
            name = f"{momentum:g}" if momentum else "default"
            print(f"| {name} | {statistics.median(steps):.2f} | {losses[0]['loss']:.2f} -> {losses[-1]['loss']:.2f} "
                  f"| {result['last_miou']:.2f} | {ce_eval:.2f} | {ce_train:.2f} |", flush=True)


if __name__ == "__main__":
    main()
