"""``pccseg label CAPTURE_DIR... --out DIR [--dataset]``: PCC masks for saved captures, or (``--dataset``)
a whole VOC-layout dataset that ``pccseg train`` and torchvision read, as ``generate`` writes it.

Also provides the labeller options for other commands (``generate`` reuses them):

* :func:`add_label_arguments` adds every :class:`~pccseg.labeller.LabelParams` field as an option plus
  ``--preset report|authors``. Options left unset take the preset's value.
* :func:`params_from_args` turns the parsed namespace into a :class:`~pccseg.labeller.LabelParams`.

Option names are the field names with dashes (``--cluster-connectivity``), except the k-means seed
``LabelParams.seed``, which is ``--kmeans-seed`` so that it never clashes with a generation seed.
Every destination is ``label_<field>`` (``args.label_seed``, ``args.label_preset``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path

from ..errors import InputError

if typing.TYPE_CHECKING:
    from ..labeller import LabelParams

#: LabelParams field -> option name, where it is not the field name with dashes.
OPTION_NAMES = {"seed": "kmeans-seed"}

_HELP = {
    "n_components": "PCA components per attention head",
    "ks": "k-means cluster counts (one vote set per k)",
    "seed": "k-means seed (k-means++ init, both k-means steps)",
    "kmeans_iters": "Lloyd iterations at most",
    "cluster_connectivity": "connectivity of cluster segments (report 4, authors 8)",
    "thresholds": "class-map thresholds (one vote set per threshold)",
    "background_factor": "background (start-of-text) binary map is map > factor * t",
    "vote_rule": "report: uncertain if the mode's share <= 0.5; authors: < 0.56",
    "refine": "refine the blocky mask on the RGB image",
    "refine_k": "k of the RGB+xy k-means",
    "refine_connectivity": "connectivity of refine segments",
    "refine_min_segment": "refine fragments under this many pixels pool into one leftover segment",
    "refine_subsample": "refine k-means: fit centroids on at most this many pixels (strided), then assign "
                        "every pixel; 0 = fit on all pixels",
    "dominance_rule": "report: dominant value if its share > dominance-share; authors: > 2x runner-up",
    "dominance_share": "share for the report's dominance rule",
    "artefact_ring": "authors' morphology + uncertain ring around each class region",
    "ring_width": "width in pixels of the uncertain ring",
}


def _option(name: str) -> str:
    return "--" + OPTION_NAMES.get(name, name.replace("_", "-"))


def _fmt(v) -> str:
    if isinstance(v, tuple):
        return " ".join(str(x) for x in v)
    return str(v)


def add_label_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add ``--preset`` and one option per :class:`LabelParams` field (all defaulting to "unset")."""
    from ..labeller import LabelParams

    report, authors = LabelParams.preset("report"), LabelParams.preset("authors")
    group = parser.add_argument_group("labelling (PCC)") if isinstance(parser, argparse.ArgumentParser) \
        else parser
    group.add_argument("--preset", dest="label_preset", choices=("report", "authors"), default="report",
                       help="parameter set: the report's (default) or the authors' code; options below "
                            "that are left unset take the preset's value")
    hints = typing.get_type_hints(LabelParams)
    for f in dataclasses.fields(LabelParams):
        tp = hints[f.name]
        default = getattr(report, f.name)
        dflt = f"default: {_fmt(default)}"
        if getattr(authors, f.name) != default:
            dflt += f"; authors preset: {_fmt(getattr(authors, f.name))}"
        help_ = f"{_HELP.get(f.name, f.name.replace('_', ' '))} ({dflt})"
        kw: dict = dict(dest=f"label_{f.name}", default=None, help=help_)
        origin = typing.get_origin(tp)
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif origin is tuple:
            item = typing.get_args(tp)[0]
            kw.update(nargs="+", type=item, metavar={int: "N", float: "X"}.get(item, "V"))
        elif origin is typing.Literal:
            choices = typing.get_args(tp)
            kw.update(choices=choices, type=type(choices[0]))
        else:
            kw.update(type=tp, metavar={int: "N", float: "X"}.get(tp, "V"))
        group.add_argument(_option(f.name), **kw)


def params_from_args(args: argparse.Namespace):
    """The :class:`LabelParams` of a namespace parsed with :func:`add_label_arguments`."""
    from ..labeller import LabelParams

    overrides = {}
    for f in dataclasses.fields(LabelParams):
        v = getattr(args, f"label_{f.name}", None)
        if v is not None:
            overrides[f.name] = tuple(v) if isinstance(v, list) else v
    return LabelParams.preset(getattr(args, "label_preset", None) or "report", **overrides)


def capture_dirs(paths: list[str | Path]) -> list[Path]:
    """Expand the CLI's paths: a capture directory stays; a directory of captures gives its sub-dirs.

    A directory is a capture when it holds ``capture.json`` or ``capture.safetensors``. Sub-directories
    are listed sorted by name; hidden ones (``.name``, e.g. temporary files) are skipped.
    """
    from ..capture_format import META_FILE, TENSOR_FILE

    out: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise InputError("not a directory", path=p)
        if (p / META_FILE).exists() or (p / TENSOR_FILE).exists():
            out.append(p)
            continue
        subs = sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not subs:
            raise InputError("neither a capture directory nor a directory of captures", path=p)
        out.extend(subs)
    return out


LABEL_SETTINGS = "label_params.json"


def check_label_settings(out: Path, params: "LabelParams", *, overwrite: bool = False) -> None:
    """Record the parameters in ``out/label_params.json``; refuse to resume a folder labelled with others.

    Without ``overwrite``, existing masks are kept, so masks of two parameter sets would mix: that is an
    :class:`InputError` naming the differences. With ``overwrite`` every mask is redone and the file replaced.
    """
    from .. import __version__
    from ..dataset import settings_diff
    from ..io import read_json, write_json

    new = dict(label_params=dataclasses.asdict(params), pccseg_version=__version__)
    path = out / LABEL_SETTINGS
    if path.is_file() and not overwrite:
        diff = settings_diff(read_json(path).get("label_params", {}), new["label_params"])
        if diff:
            raise InputError("this folder holds masks made with other label parameters ("
                             + "; ".join(diff) + "): use another --out, the same options, or --overwrite",
                             path=path)
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, new)


def open_dataset(out: Path, first_capture: Path, params: "LabelParams", *, val_share: float, overwrite: bool):
    """The dataset ``label --dataset`` writes into ``out``: its settings.json names the source, the class
    names (those of ``first_capture``; every capture must have them), the label parameters and the val
    share. A folder holding other settings is refused, unless ``overwrite`` (then every sample is redone)."""
    from ..capture_format import META_FILE
    from ..dataset import Dataset, check_val_share
    from ..io import read_json, write_json
    from ..vocab import VOC_CLASSES

    check_val_share(val_share, field="--val-share")
    meta_path = first_capture / META_FILE
    class_names = (read_json(meta_path).get("class_names") if meta_path.is_file() else None) or list(VOC_CLASSES)
    settings = {"source": "pccseg label", "class_names": list(class_names),
                "label_params": dataclasses.asdict(params), **({"val_share": val_share} if val_share else {})}
    ds = Dataset(out)
    if overwrite and out.is_dir():
        write_json(ds.settings_path, json.loads(json.dumps(settings)))
    else:
        ds.write_settings(settings)
    return ds, tuple(class_names)


def write_sample(ds, stem: str, cap, mask, seconds: float, class_names) -> None:
    """One labelled capture into the dataset ``ds``: image (JPEG), manifest line, then the mask (last: its
    presence marks the sample done), each written atomically."""
    from ..dataset import JPEG_QUALITY, mask_stats
    from ..io import save_image, save_mask

    if tuple(cap.class_names) != tuple(class_names):
        raise InputError(f"class names differ from the dataset's ({len(cap.class_names)} against "
                         f"{len(class_names)}: label captures of one vocabulary into one dataset)",
                         path=cap.source, field="class_names")
    save_image(ds.image_path(stem), cap.image.cpu().numpy(), quality=JPEG_QUALITY)
    uncertain, pixels = mask_stats(mask, class_names)
    named = list(dict.fromkeys(class_names[v] for v in cap.token_classes if v))
    ds.append_manifest(0, {"id": stem, "record_id": cap.meta.get("record_id"), "prompt": cap.meta.get("prompt"),
                           "classes": named, "seed": cap.meta.get("seed"), "uncertain_share": uncertain,
                           "class_pixels": pixels, "timings": {"label": round(seconds, 4)},
                           "capture": str(cap.source)})
    save_mask(ds.mask_path(stem), mask)


def run(args: argparse.Namespace) -> int:
    import time

    import torch
    from tqdm import tqdm

    from ..capture_format import load_capture
    from ..io import save_mask
    from ..labeller import label

    params = params_from_args(args)
    dirs = capture_dirs(args.captures)
    names = [d.name for d in dirs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise InputError(f"two captures would write the same mask name(s): {', '.join(sorted(dup))}",
                         path=args.out)
    if args.val_share and not args.dataset:
        raise InputError("a val split needs --dataset", field="--val-share")
    out = Path(args.out)
    ds = class_names = None
    if args.dataset:
        ds, class_names = open_dataset(out, dirs[0], params, val_share=args.val_share, overwrite=args.overwrite)
    check_label_settings(out, params, overwrite=args.overwrite)
    device = torch.device(args.device)
    failed = 0
    skipped = 0
    bar = tqdm(dirs, desc="label", unit="img", disable=args.quiet)
    for d in bar:
        target = out / f"{d.name}.png"
        if (ds.is_done(d.name) if ds else target.exists()) and not args.overwrite:
            skipped += 1
            continue
        try:
            t0 = time.perf_counter()
            cap = load_capture(d, device=device)
            res = label(cap, params)
            if ds is not None:
                write_sample(ds, d.name, cap, res.mask.cpu(), time.perf_counter() - t0, class_names)
        except InputError as e:
            failed += 1
            bar.clear()
            print(f"pccseg label: error: {e}", file=sys.stderr, flush=True)
            if not args.keep_going:
                break
            continue
        if ds is None:
            save_mask(target, res.mask.cpu())
        bar.set_postfix(uncertain=f"{res.uncertain_share:.3f}")
    bar.close()
    if ds is not None:
        n = ds.rebuild()[0]
        if not args.quiet:
            print(f"pccseg label: {n} sample(s) in the dataset {out}", file=sys.stderr)
    if skipped and not args.quiet:
        print(f"pccseg label: skipped {skipped} existing mask(s) (use --overwrite to redo them)",
              file=sys.stderr)
    return 2 if failed else 0


def register(sub) -> None:
    p = sub.add_parser(
        "label", help="PCC masks for saved captures",
        description="Label capture directories with Principal Component Clustering and write VOC palette "
                    "masks (values 0-20, 255 = uncertain) as <out>/<capture dir name>.png.")
    p.add_argument("captures", nargs="+", metavar="CAPTURE_DIR",
                   help="a capture directory, or a directory whose sub-directories are captures")
    p.add_argument("--out", required=True, help="output directory for the masks (or the dataset)")
    p.add_argument("--dataset", action="store_true",
                   help="write a full VOC-layout dataset, as generate does: JPEGImages/, SegmentationClass/, "
                        "ImageSets/Segmentation/train.txt (and val.txt), manifest.jsonl, settings.json; the "
                        "sample ids are the capture directory names (default: masks only, OUT/<name>.png)")
    p.add_argument("--val-share", type=float, default=0.0, metavar="X",
                   help="with --dataset: hold out this share of the samples in val.txt (default: 0)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--overwrite", action="store_true",
                   help="redo masks that exist (default: skip them, so a rerun resumes)")
    p.add_argument("--keep-going", action="store_true",
                   help="on bad input print one line and go on with the others (exit code still 2)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_label_arguments(p)
    p.set_defaults(func=run)
