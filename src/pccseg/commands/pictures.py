"""``pccseg show`` (every PCC stage of one image) and ``pccseg report`` (HTML page of a dataset or a run).

``pccseg show CAPTURE_DIR_OR_ID --out FILE.png [--data DATASET_DIR] [label options]``
``pccseg report DATASET_OR_RUN_DIR --out DIR``
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from .label_options import add_label_arguments, params_from_args, print_label_config_or


def resolve_capture(target: str, data: str | None) -> Path:
    """The capture directory ``target`` names: a path, or with ``data`` an ID of that dataset.

    With ``data``: ``DATA/captures/<stem>``, stem = the ID zero-padded to 6 digits when it is a number
    (``7`` -> ``000007``), else the ID itself when it is a plain file name; a path that is itself a
    directory is taken as is. An ID never leads out of ``DATA/captures``.
    """
    if data is not None:
        from ..dataset.folder import CAPTURES, sample_stem
        from ..io import check_stem

        droot = Path(data)
        if not droot.is_dir():
            raise InputError("not a dataset directory", path=droot)
        t = target.strip()
        if t.isdigit():
            try:
                stem = sample_stem(t)
            except ValueError as e:
                raise InputError(str(e), field="CAPTURE_DIR_OR_ID") from None
        else:
            try:
                stem = check_stem(t)
            except InputError:                            # not an ID: a path, or nothing
                stem = None
        captures = droot / CAPTURES
        if stem is not None and (captures / stem).is_dir():
            return captures / stem
        if Path(target).is_dir() and not t.isdigit():
            return Path(target)
        hint = "" if captures.is_dir() else " (the dataset has no captures/: generate it with --keep-captures)"
        raise InputError(f"no capture for sample {target!r}{hint}",
                         path=captures if stem is None else captures / stem)
    p = Path(target)
    if not p.is_dir():
        hint = " (to name a sample of a dataset by its ID, add --data DATASET_DIR)" \
            if target.strip().isdigit() else ""
        raise InputError(f"no such capture directory{hint}", path=p)
    return p


def run_show(args: argparse.Namespace) -> int:
    from ..capture.format import load_capture
    from ..io import make_dir, remove_temps
    from ..labellers.registry import label
    from ..capture.pipeline import resolve_device
    from ..pictures.show import check_figure_options
    from ..pictures.stages import save_stage_figure

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise InputError("the picture is written as PNG: give a .png file name", path=out, field="--out")
    check_figure_options(n_heads=args.heads, dpi=args.dpi)
    params = params_from_args(args)
    cdir = resolve_capture(args.capture, args.data)
    device = resolve_device(args.device)
    make_dir(out.parent)
    remove_temps(out.parent, name=out.name)
    cap = load_capture(cdir, device=device)
    res = label(cap, params)
    save_stage_figure(cap, res, out, n_heads=args.heads, dpi=args.dpi)
    print(out)
    return 0


def run_report(args: argparse.Namespace) -> int:
    from ..pictures.report import make_report

    page = make_report(args.directory, args.out, samples_per_class=args.samples)
    print(page)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "show", help="picture of every labeller stage for one image",
        description="Label one capture and draw every stage in one PNG. PCC: the image, principal "
                    "components of a few heads, the k-means clusters and segments, the class maps with "
                    "threshold contours, the votes' agreement, the blocky mask, the refinement segments and "
                    "the final mask over the image. dd and attn: the class maps (dd: also after the "
                    "self-attention affinity), the largest map with the thresholds and the final mask. "
                    "With a legend of class colours.")
    p.add_argument("capture", metavar="CAPTURE_DIR_OR_ID",
                   help="a capture directory, or with --data a sample ID (7 -> DATA/captures/000007)")
    p.add_argument("--out", required=True, help="output PNG file")
    p.add_argument("--data", metavar="DATASET_DIR", help="dataset directory whose captures/ holds the ID")
    p.add_argument("--heads", type=int, default=3, help="heads whose principal components are shown "
                                                        "(from different resolutions; default 3)")
    p.add_argument("--dpi", type=int, default=100, help="resolution of the PNG (default 100)")
    p.add_argument("--device", default="cpu", help="torch device for labelling (default: cpu)")
    add_label_arguments(p)
    p.set_defaults(func=print_label_config_or(run_show))

    r = sub.add_parser(
        "report", help="HTML page of a dataset (or a training run)",
        description="Write DIR/index.html with PNG pictures: for a dataset directory the class pixel "
                    "frequencies, images per class, the uncertain share, sample overlays per class and "
                    "the generation settings; for a training run folder (log.jsonl) the loss and mIoU "
                    "curves, the per-class IoU of the last check, the wall time and the hyperparameters.")
    r.add_argument("directory", metavar="DATASET_OR_RUN_DIR",
                   help="a dataset directory (manifest.jsonl or SegmentationClass/) or a training run "
                        "directory (log.jsonl)")
    r.add_argument("--out", required=True, help="output directory (index.html and PNGs)")
    r.add_argument("--samples", type=int, default=4, help="sample images per class (default 4)")
    r.set_defaults(func=run_report)
