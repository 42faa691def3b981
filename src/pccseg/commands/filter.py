"""``pccseg filter DATASET_DIR``: a split file of the samples the labeller's own evidence trusts
(:mod:`pccseg.dataset.filter`); the images and masks stay as they are.

    pccseg filter runs/voc10k --out-split filtered          # then: pccseg train --train-split filtered
"""

from __future__ import annotations

import argparse
import json
import sys


def run(args: argparse.Namespace) -> int:
    from ..dataset.filter import FilterRule, filter_split

    rule = FilterRule(max_uncertain=None if args.max_uncertain < 0 else args.max_uncertain,
                      area_mad=None if args.area_mad <= 0 else args.area_mad, missing=args.missing)
    report = filter_split(args.directory, split=args.split, out_split=args.out_split, rule=rule)
    if not args.list:
        report.pop("dropped_stems")
    print(json.dumps(report, indent=2))
    print(f"pccseg filter: kept {report['kept']} of {report['kept'] + report['dropped']} samples in "
          f"ImageSets/Segmentation/{args.out_split}.txt; train on it with --train-split {args.out_split}",
          file=sys.stderr)
    return 0


def register(sub) -> None:
    from ..dataset.filter import FilterRule
    from ..params import add_options, with_options

    p = sub.add_parser(
        "filter", help="a split file of the samples the labeller's own evidence trusts",
        description="Drop samples whose mask is mostly uncertain, lacks a prompted class, or has a class far "
                    "from its usual area in the dataset (log-area beyond --area-mad robust sds of the class "
                    "median); write the kept stems to ImageSets/Segmentation/OUT_SPLIT.txt. Images, masks and "
                    "the other split files are not touched. Prints a JSON summary.")
    p.add_argument("directory", metavar="DATASET_DIR", help="VOC-layout dataset (pccseg generate, label --dataset)")
    p.add_argument("--split", default="train", help="split to filter (default: %(default)s)")
    p.add_argument("--out-split", default="filtered", help="name of the split file written (default: %(default)s)")
    add_options(p, FilterRule, names={"missing": "drop-missing"},
                extra={"max_uncertain": dict(metavar="SHARE"), "area_mad": dict(metavar="K")})
    p.add_argument("--list", action="store_true", help="also list every dropped sample with its reasons")
    p.set_defaults(func=with_options(run, p))
