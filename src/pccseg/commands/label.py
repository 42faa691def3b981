"""``pccseg label CAPTURE_DIR... --out DIR [--labeller pcc|dd|attn|fuse] [--dataset]``: masks for saved
captures, or (``--dataset``) a whole VOC-layout dataset that ``pccseg train`` and torchvision read, as
``generate`` writes it.

Also provides the labeller options for other commands (``generate`` and ``show`` reuse them):

* :func:`add_label_arguments` adds ``--labeller``, ``--preset report|authors`` (PCC) and one option per
  field of every labeller's parameters. Options left unset take the labeller's (PCC: the preset's) value.
* :func:`params_from_args` turns the parsed namespace into the chosen labeller's parameters
  (:class:`~pccseg.labellers.pcc.LabelParams`, :class:`~pccseg.labellers.dd.DDParams` or
  :class:`~pccseg.labellers.attn.AttnParams`, :class:`~pccseg.labellers.fuse.FuseParams`); an option of
  another labeller is refused.

PCC option names are the field names with dashes (``--cluster-connectivity``), except the k-means seed
``LabelParams.seed``, which is ``--kmeans-seed`` so that it never clashes with a generation seed; their
destinations are ``label_<field>`` (``args.label_seed``, ``args.label_preset``). The other labellers'
options carry the labeller's name: ``--dd-power`` (destination ``label_dd_power``), ``--attn-threshold``.
The labeller's name is ``args.labeller``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import types
import typing
from pathlib import Path

from ..errors import InputError

log = logging.getLogger("pccseg.label")

#: LabelParams field -> option name, where it is not the field name with dashes.
OPTION_NAMES = {"seed": "kmeans-seed"}

_HELP = {
    "n_components": "PCA components per attention head",
    "ks": "k-means cluster counts (one vote set per k)",
    "seed": "k-means seed (k-means++ init, both k-means steps)",
    "kmeans_iters": "Lloyd iterations at most",
    "kmeans_restarts": "k-means++ starts of every k-means; the one of least inertia wins (scikit-learn's n_init)",
    "seed_votes": "label with the k-means seeds SEED..SEED+N-1 and vote: the cluster votes of all seeds make one "
                  "blocky mask, each seed refines it and every pixel takes the value most of them give",
    "cluster_connectivity": "connectivity of cluster segments (report 4, authors 8)",
    "class_blur": "blur the class-text token maps by [1/8, 3/4, 1/8], as the authors' bilinear resize to the image "
                  "size and 8x8 block sums do",
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

_DD_HELP = {
    "power": "power of the self-attention affinity matrix",
    "class_downsample": "class maps at the latent size divided by this (4: 16x16 for SD at 512)",
    "threshold": "a pixel takes the class of the largest map where it is >= this",
    "uncertain_threshold": "uncertain (255) where the largest map is in [this, threshold); set it to the "
                           "threshold for no uncertain band",
    "token_merge": "how the tokens of one class name merge",
    "interpolation": "resize of the class maps to the self-attention grid and of the result to the image",
}

_ATTN_HELP = {
    "threshold": "background where every normalised class map is below this",
    "uncertain_threshold": "uncertain (255) where the largest map is in [this, threshold); none: no band",
    "token_merge": "how the tokens of one class name merge",
    "interpolation": "resize of the class maps to the image",
}

_FUSE_HELP = {
    "n_components": "PCA components per attention head (PCC's clusters)",
    "ks": "k-means cluster counts (PCC's clusters; one vote set per k)",
    "thresholds": "class-map thresholds (PCC's votes; one vote set per threshold)",
    "background_factor": "background (start-of-text) binary map is map > factor * t (PCC's votes)",
    "seed": "k-means seed (clusters and colour segments)",
    "map_weight": "score = vote share + this x object class map (0: the votes alone)",
    "background_weight": "weight of the background (start-of-text) map in the score",
    "propagate": "spread the scores this many times through the captured self_probs (0: off; needs "
                 "captures with self_probs)",
    "sharpen": "power of the self_probs rows before propagation (1: as captured)",
    "upsample": "scores latent -> image size",
    "refine": "segments: every colour segment takes its mean score; pamr: colour-affinity propagation; "
              "both: pamr, then segments; none",
    "refine_k": "k of the RGB+xy k-means of the colour segments",
    "pamr_iters": "PAMR iterations",
    "pamr_dilations": "PAMR neighbourhood dilations in pixels",
    "pamr_scale": "PAMR runs at most this many pixels per latent pixel (then bilinear to the image; 0: "
                  "at the image size)",
    "margin": "uncertain (255) where the runner-up score is within this share of the best (0: never)",
    "min_region": "regions under this many pixels take their border's majority label (0: off)",
}

#: labeller -> (option help per field, option group title)
_OPTIONS = {"pcc": (_HELP, "labelling (--labeller pcc, the default)"),
            "dd": (_DD_HELP, "labelling (--labeller dd)"),
            "attn": (_ATTN_HELP, "labelling (--labeller attn)"),
            "fuse": (_FUSE_HELP, "labelling (--labeller fuse)")}


def _option(labeller: str, name: str) -> str:
    if labeller == "pcc":
        return "--" + OPTION_NAMES.get(name, name.replace("_", "-"))
    return f"--{labeller}-" + name.replace("_", "-")


def _dest(labeller: str, name: str) -> str:
    return f"label_{name}" if labeller == "pcc" else f"label_{labeller}_{name}"


def _fmt(v) -> str:
    if isinstance(v, tuple):
        return " ".join(str(x) for x in v)
    return "none" if v is None else str(v)


def _option_kwargs(tp) -> dict:
    """argparse keywords for a dataclass field of type ``tp`` (bool, tuple[X, ...], Literal, X or X | None)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
        origin = typing.get_origin(tp)
    if tp is bool:
        return dict(action=argparse.BooleanOptionalAction)
    if origin is tuple:
        item = typing.get_args(tp)[0]
        return dict(nargs="+", type=item, metavar={int: "N", float: "X"}.get(item, "V"))
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        return dict(choices=choices, type=type(choices[0]))
    return dict(type=tp, metavar={int: "N", float: "X"}.get(tp, "V"))


def add_label_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--labeller``, ``--preset`` and one option per parameter of every labeller (all "unset")."""
    from ..labellers.pcc import LabelParams
    from ..labellers.registry import DEFAULT_LABELLER, LABELLERS

    parser.add_argument("--labeller", default=DEFAULT_LABELLER, metavar="{" + ",".join(LABELLERS) + "}",
                        help="; ".join(f"{lab.name}: {lab.summary}" for lab in LABELLERS.values())
                        + f" (default: {DEFAULT_LABELLER}); see docs/labeller.md")
    authors = LabelParams.preset("authors")
    for name, lab in LABELLERS.items():
        helps, title = _OPTIONS[name]
        group = parser.add_argument_group(title)
        if name == "pcc":
            group.add_argument("--preset", dest="label_preset", choices=("report", "authors"), default=None,
                               help="parameter set: the report's (default) or the authors' code; options "
                                    "below that are left unset take the preset's value")
        defaults = lab.params()
        hints = typing.get_type_hints(lab.params)
        for f in dataclasses.fields(lab.params):
            default = getattr(defaults, f.name)
            dflt = f"default: {_fmt(default)}"
            if name == "pcc" and getattr(authors, f.name) != default:
                dflt += f"; authors preset: {_fmt(getattr(authors, f.name))}"
            help_ = f"{helps.get(f.name, f.name.replace('_', ' '))} ({dflt})"
            group.add_argument(_option(name, f.name), dest=_dest(name, f.name), default=None, help=help_,
                               **_option_kwargs(hints[f.name]))


def params_from_args(args: argparse.Namespace):
    """The parameters of the labeller ``args.labeller`` from a namespace parsed with :func:`add_label_arguments`.

    Raises:
        InputError: an unknown labeller, an option of another labeller, or a value the parameters refuse
            (each names the option).
    """
    from ..labellers.pcc import LabelParams
    from ..labellers.registry import DEFAULT_LABELLER, LABELLERS, get_labeller

    try:
        chosen = get_labeller(getattr(args, "labeller", None) or DEFAULT_LABELLER)
    except InputError as e:
        raise InputError(e.message, field="--labeller") from None
    overrides = {}
    for name, lab in LABELLERS.items():
        given = {f.name: v for f in dataclasses.fields(lab.params)
                 if (v := getattr(args, _dest(name, f.name), None)) is not None}
        if name == "pcc" and getattr(args, "label_preset", None) is not None:
            given["preset"] = args.label_preset
        if name == chosen.name:
            overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
        elif given:
            opt = "--preset" if "preset" in given else _option(name, next(iter(given)))
            raise InputError(f"is an option of --labeller {name}, not of --labeller {chosen.name}", field=opt)
    try:
        if chosen.name == "pcc":
            return LabelParams.preset(overrides.pop("preset", "report"), **overrides)
        return chosen.params(**overrides)
    except InputError as e:                                  # name the option, not the field
        known = {f.name for f in dataclasses.fields(chosen.params)}
        raise InputError(e.message, path=e.path,
                         field=_option(chosen.name, e.field) if e.field in known else e.field) from None


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
    """The dataset ``label --dataset`` writes into ``out`` and the settings.json it is to hold (written
    with the first sample, as ``label_params.json``): the source, the class names (those of
    ``first_capture``; every capture must have them), the labeller and its parameters and the val share.
    A folder holding other settings is refused, unless ``overwrite`` (then every sample is redone)."""
    from ..capture.format import META_FILE
    from ..dataset.folder import Dataset, check_val_share
    from ..io import read_json
    from ..labellers.registry import params_record
    from ..vocab import VOC_CLASSES

    check_val_share(val_share, field="--val-share")
    meta_path = first_capture / META_FILE
    class_names = (read_json(meta_path).get("class_names") if meta_path.is_file() else None) or list(VOC_CLASSES)
    settings = {"source": "pccseg label", "class_names": list(class_names), **params_record(params),
                **({"val_share": val_share} if val_share else {})}
    ds = Dataset(out)
    if not overwrite:
        ds.check_settings(settings)
    return ds, tuple(class_names), settings


def check_class_names(cap, class_names) -> None:
    """:class:`InputError` unless the capture ``cap`` has the dataset's ``class_names``."""
    if tuple(cap.class_names) != tuple(class_names):
        raise InputError(f"class names differ from the dataset's ({len(cap.class_names)} against "
                         f"{len(class_names)}: label captures of one vocabulary into one dataset)",
                         path=cap.source, field="class_names")


def write_sample(ds, stem: str, cap, mask, seconds: float, class_names) -> None:
    """One labelled capture into the dataset ``ds``: image (JPEG), manifest line, then the mask (last: its
    presence marks the sample done), each written atomically."""
    from ..dataset.folder import JPEG_QUALITY, mask_stats
    from ..io import save_image, save_mask

    save_image(ds.image_path(stem), cap.image.cpu().numpy(), quality=JPEG_QUALITY)
    uncertain, pixels = mask_stats(mask, class_names)
    named = list(dict.fromkeys(class_names[v] for v in cap.token_classes if v))
    ds.append_manifest(0, {"id": stem, "record_id": cap.meta.get("record_id"), "prompt": cap.meta.get("prompt"),
                           "classes": named, "seed": cap.meta.get("seed"), "uncertain_share": uncertain,
                           "class_pixels": pixels, "timings": {"label": round(seconds, 4)},
                           "capture": str(cap.source)})
    save_mask(ds.mask_path(stem), mask)


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from ..capture.format import load_capture
    from ..io import make_dir, remove_temps, save_mask, write_json
    from ..capture.pipeline import resolve_device
    from ..signals import hold_interrupts
    from ..labellers.workers import LabelPool, default_workers

    params = params_from_args(args)
    if args.workers is not None and args.workers < 1:
        raise InputError(f"must be an integer >= 1, got {args.workers}", field="--workers")
    dirs = capture_dirs(args.captures)
    names = [d.name for d in dirs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise InputError(f"two captures would write the same mask name(s): {', '.join(sorted(dup))}",
                         path=args.out)
    if args.val_share and not args.dataset:
        raise InputError("a val split needs --dataset", field="--val-share")
    out = Path(args.out)
    ds = class_names = ds_settings = None
    if args.dataset:
        ds, class_names, ds_settings = open_dataset(out, dirs[0], params, val_share=args.val_share,
                                                    overwrite=args.overwrite)
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
                    check_class_names(cap, class_names)
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
                    if ds is not None and args.overwrite:
                        write_json(ds.settings_path, ds_settings)
                    elif ds is not None:
                        ds.write_settings(ds_settings)
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
    p.set_defaults(func=run)
