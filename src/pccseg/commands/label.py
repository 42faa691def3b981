"""``pccseg label CAPTURE_DIR... --out DIR [--labeller pcc|dd|attn|fuse] [--dataset]``: masks for saved
captures, or (``--dataset``) a whole VOC-layout dataset that ``pccseg train`` and torchvision read, as
``generate`` writes it. The labeller options (shared with ``generate`` and ``show``) are in
:mod:`.label_options`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import InputError
from ..params import Int, OrNone, check_value
from .label_options import add_label_arguments, params_from_args, print_label_config_or

log = logging.getLogger("pccseg.label")

#: --workers: labelling processes (None: :func:`pccseg.labellers.workers.default_workers`).
WORKERS = OrNone(Int(1))

def capture_dirs(paths: list[str | Path]) -> list[Path]:
    """Expand the CLI's paths: a capture directory stays; a directory of captures gives its sub-dirs.

    A directory is a capture when it holds ``capture.json`` or ``capture.safetensors``. Sub-directories
    are listed sorted by name; hidden ones (``.name``, e.g. temporary files) are skipped. A capture's
    folder name is its sample id (its mask's name): a plain file stem (:func:`pccseg.io.check_stem`), else
    :class:`InputError`; ``.`` and ``..`` stand for the folder's own name.
    """
    from ..capture.format import META_FILE, TENSOR_FILE
    from ..io import check_stem

    out: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise InputError("not a directory", path=p)
        if (p / META_FILE).exists() or (p / TENSOR_FILE).exists():
            out.append(p.resolve() if p.name in ("", ".", "..") else p)
            continue
        subs = sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not subs:
            raise InputError("neither a capture directory nor a directory of captures", path=p)
        out.extend(subs)
    for d in out:
        check_stem(d.name, path=d, key="capture folder name (the sample id)")
    return out


LABEL_SETTINGS = "label_params.json"
#: label_params.json key recorded while an --overwrite run redoes the masks (removed when it has finished).
OVERWRITING = "overwrite_in_progress"


def check_overwrite_covers(out: Path, ds, names: list[str], params) -> None:
    """With ``--overwrite`` and label parameters other than those the folder's masks were made with,
    every mask in the folder must be redone by this run: :class:`InputError` naming those it would leave
    (they would keep the old labeller's masks under the new settings)."""
    from ..dataset.folder import settings_diff
    from ..io import read_json
    from ..labellers.registry import DEFAULT_LABELLER, params_record

    path = out / LABEL_SETTINGS
    if not path.is_file():
        return
    old, new = read_json(path), params_record(params)
    if old.get("labeller", DEFAULT_LABELLER) == new["labeller"] \
            and not settings_diff(old.get("label_params", {}), new["label_params"]):
        return
    existing = ds.stems_on_disk() if ds is not None else \
        sorted(p.stem for p in out.glob("*.png") if not p.name.startswith("."))
    left = sorted(set(existing) - set(names))
    if left:
        raise InputError(f"--overwrite with other label parameters would leave {len(left)} mask(s) made with the "
                         f"old ones ({', '.join(left[:3])}{', ...' if len(left) > 3 else ''}): relabel every "
                         "capture of this folder, or use another --out", path=path)


def check_label_settings(out: Path, params, *, overwrite: bool = False) -> dict:
    """Refuse to resume a folder labelled with another labeller or other parameters; returns what
    ``out/label_params.json`` is to hold (written with the first mask, so that a run that stops before
    has written nothing).

    Without ``overwrite``, existing masks are kept, so masks of two parameter sets would mix: that is an
    :class:`InputError` naming the differences. With ``overwrite`` every mask is redone and the file replaced.
    A file without ``labeller`` (written before there were several) is PCC's.
    """
    from .. import __version__
    from ..dataset.folder import settings_diff
    from ..io import read_json
    from ..labellers.registry import DEFAULT_LABELLER, params_record

    new = dict(params_record(params), pccseg_version=__version__)
    path = out / LABEL_SETTINGS
    if path.is_file() and not overwrite:
        old = read_json(path)
        if old.get(OVERWRITING):
            raise InputError("an --overwrite run stopped before it had redone every mask, so masks of two "
                             "parameter sets may be mixed: run it again with --overwrite", path=path)
        old_labeller = old.get("labeller", DEFAULT_LABELLER)
        diff = [f"labeller: {old_labeller!r} -> {new['labeller']!r}"] if old_labeller != new["labeller"] \
            else settings_diff(old.get("label_params", {}), new["label_params"])
        if diff:
            raise InputError("this folder holds masks made with other label parameters ("
                             + "; ".join(diff) + "): use another --out, the same options, or --overwrite",
                             path=path)
    return new


def open_dataset(out: Path, first_capture: Path, params, *, val_share: float, overwrite: bool):
    """The dataset ``label --dataset`` writes into ``out``, opened with the settings.json it is to hold
    (written with the first sample, as ``label_params.json``), and its class names: the source, the class
    names (those of ``first_capture``; every capture must have them), the labeller and its parameters and
    the val share. A folder holding other settings is refused, unless ``overwrite`` (then every sample is
    redone)."""
    from ..capture.format import META_FILE
    from ..dataset.folder import DatasetFolder, check_val_share
    from ..io import read_json
    from ..labellers.registry import params_record
    from ..vocab import VOC_CLASSES

    check_val_share(val_share, field="--val-share")
    meta_path = first_capture / META_FILE
    class_names = (read_json(meta_path).get("class_names") if meta_path.is_file() else None) or list(VOC_CLASSES)
    settings = {"source": "pccseg label", "class_names": list(class_names), **params_record(params),
                **({"val_share": val_share} if val_share else {})}
    return DatasetFolder.open(out, settings, overwrite=overwrite), tuple(class_names)


def check_same_vocabulary(cap, class_names) -> None:
    """:class:`InputError` unless the capture ``cap`` has the dataset's ``class_names``."""
    if tuple(cap.class_names) != tuple(class_names):
        raise InputError(f"class names differ from the dataset's ({len(cap.class_names)} against "
                         f"{len(class_names)}: label captures of one vocabulary into one dataset)",
                         path=cap.source, field="class_names")


def write_sample(ds, stem: str, cap, mask, seconds: float, class_names) -> None:
    """One labelled capture into the dataset ``ds`` (:meth:`~pccseg.dataset.folder.DatasetFolder.write_sample`),
    its manifest line from the capture's record."""
    from ..dataset.folder import manifest_entry

    named = list(dict.fromkeys(class_names[v] for v in cap.token_classes if v))
    entry = manifest_entry(stem, mask, class_names, record_id=cap.meta.get("record_id"), prompt=cap.meta.get("prompt"),
                           classes=named, seed=cap.meta.get("seed"), timings={"label": seconds},
                           capture=str(cap.source))
    ds.write_sample(stem, cap.image.cpu().numpy(), mask, entry)


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from ..capture.format import load_capture
    from ..io import make_dir, remove_temps, save_mask, write_json
    from ..capture.pipeline import resolve_device
    from ..signals import hold_interrupts
    from ..labellers.workers import LabelPool, default_workers

    params = params_from_args(args)
    check_value(WORKERS, args.workers, "--workers")
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
    settings = check_label_settings(out, params, overwrite=args.overwrite)
    if args.overwrite:
        check_overwrite_covers(out, ds, names, params)
        finished_settings, settings = settings, dict(settings, **{OVERWRITING: True})
    device = resolve_device(args.device)
    make_dir(out)
    if ds is None:
        remove_temps(out)
        done = {n for n in names if (out / f"{n}.png").exists()}
    else:
        ds.repair()
        done = set(names) - set(ds.todo(names))
    todo = [d for d in dirs if args.overwrite or d.name not in done]
    skipped = len(dirs) - len(todo)
    workers = min(args.workers or default_workers(device), max(1, len(todo)))
    failed = 0
    bar = tqdm(total=len(dirs), initial=skipped, desc="label", unit="img", disable=args.quiet)
    with LabelPool(params, 0 if workers == 1 else workers, device=device) as pool:
        for d, res in pool.map_dirs(todo):
            try:
                if isinstance(res, InputError):
                    raise res
                cap = None
                if ds is not None:              # the sample's image and record (a worker labelled it)
                    cap = load_capture(d)
                    check_same_vocabulary(cap, class_names)
            except InputError as e:
                failed += 1
                bar.clear()
                print(f"pccseg label: error: {e}", file=sys.stderr, flush=True)
                if not args.keep_going:
                    break
                continue
            log.debug("%s: labelled in %s", d, res.describe())
            mask = torch.from_numpy(res.mask)
            with hold_interrupts():             # SIGTERM / Ctrl-C: this mask (or sample) is finished first
                if settings is not None:        # with the first mask: a run that stops before writes nothing
                    write_json(out / LABEL_SETTINGS, settings)
                    if ds is not None:
                        ds.bind()               # with --overwrite: replaced
                    settings = None
                if ds is None:
                    save_mask(out / f"{d.name}.png", mask)
                else:
                    write_sample(ds, d.name, cap, mask, res.seconds, class_names)
            bar.update(1)
            bar.set_postfix(uncertain=f"{res.uncertain_share:.3f}")
    bar.close()
    if args.overwrite and not failed and (out / LABEL_SETTINGS).is_file():
        write_json(out / LABEL_SETTINGS, finished_settings)   # every mask redone: no longer mixed
    if ds is not None and ds.settings_path.is_file():
        n = ds.rebuild()[0]
        if not args.quiet:
            print(f"pccseg label: {n} sample(s) in the dataset {out}", file=sys.stderr)
    if skipped and not args.quiet:
        print(f"pccseg label: skipped {skipped} existing mask(s) (use --overwrite to redo them)",
              file=sys.stderr)
    return 2 if failed else 0


def register(sub) -> None:
    p = sub.add_parser(
        "label", help="masks for saved captures (PCC, or another labeller)",
        description="Label capture directories with Principal Component Clustering (or --labeller dd / "
                    "attn) and write VOC palette masks (values 0-20, 255 = uncertain) as "
                    "<out>/<capture dir name>.png.")
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
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="labelling processes, one torch thread each (default: the CPU cores this process may "
                        "use; 1 with CUDA); the masks do not depend on N")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_label_arguments(p)
    p.set_defaults(func=print_label_config_or(run))
