"""``pccseg export DATASET_DIR --format hf --out OUT``: a dataset in another tool's format."""

from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    from ..dataset.export import export_hf

    result = export_hf(args.directory, args.out, splits=args.splits, progress=not args.quiet)
    sizes = ", ".join(f"{name} {len(part)}" for name, part in result.items())
    print(f"pccseg export: {args.out}: Hugging Face DatasetDict ({sizes}); datasets.load_from_disk reads it",
          file=sys.stderr)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "export", help="write a dataset in another tool's format (Hugging Face datasets)",
        description="Write a pccseg dataset (or any VOC-layout folder) as a Hugging Face DatasetDict "
                    "(save_to_disk): one split per split file (val -> validation), rows with id, image, mask "
                    "(palette PNG, values = labels), prompt and classes, and OUT/id2label.json. Needs the "
                    "datasets package (pip install 'pccseg[hf]').")
    p.add_argument("directory", metavar="DATASET_DIR", help="dataset folder (pccseg generate or label --dataset)")
    p.add_argument("--format", choices=("hf",), default="hf", help="hf: Hugging Face datasets (default)")
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    p.add_argument("--splits", nargs="+", default=None, help="split names to export (default: every split file)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
