"""``pccseg label CAPTURE_DIR... --out DIR``: PCC masks for saved captures.

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
    try:
        return LabelParams.preset(getattr(args, "label_preset", None) or "report", **overrides)
    except InputError as e:
        raise InputError(e.message, field=_option(e.field)) from None


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


def check_label_settings(out: Path, params: "LabelParams", *, overwrite: bool = False) -> dict:
    """Refuse to resume a folder labelled with other parameters; returns what ``out/label_params.json``
    is to hold (written with the first mask, so that a run that stops before has written nothing).

    Without ``overwrite``, existing masks are kept, so masks of two parameter sets would mix: that is an
    :class:`InputError` naming the differences. With ``overwrite`` every mask is redone and the file replaced.
    """
    from .. import __version__
    from ..dataset import settings_diff
    from ..io import read_json

    new = dict(label_params=dataclasses.asdict(params), pccseg_version=__version__)
    path = out / LABEL_SETTINGS
    if path.is_file() and not overwrite:
        diff = settings_diff(read_json(path).get("label_params", {}), new["label_params"])
        if diff:
            raise InputError("this folder holds masks made with other label parameters ("
                             + "; ".join(diff) + "): use another --out, the same options, or --overwrite",
                             path=path)
    return new


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..capture_format import load_capture
    from ..io import make_dir, remove_temps, save_mask, write_json
    from ..labeller import label
    from ..pipeline import resolve_device
    from ..signals import hold_interrupts

    params = params_from_args(args)
    dirs = capture_dirs(args.captures)
    names = [d.name for d in dirs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise InputError(f"two captures would write the same mask name(s): {', '.join(sorted(dup))}",
                         path=args.out)
    out = Path(args.out)
    settings = check_label_settings(out, params, overwrite=args.overwrite)
    device = resolve_device(args.device)
    make_dir(out)
    remove_temps(out)
    failed = 0
    skipped = 0
    bar = tqdm(dirs, desc="label", unit="img", disable=args.quiet)
    for d in bar:
        target = out / f"{d.name}.png"
        if target.exists() and not args.overwrite:
            skipped += 1
            continue
        try:
            cap = load_capture(d, device=device)
            res = label(cap, params)
        except InputError as e:
            failed += 1
            bar.clear()
            print(f"pccseg label: error: {e}", file=sys.stderr, flush=True)
            if not args.keep_going:
                return 2
            continue
        with hold_interrupts():                 # SIGTERM / Ctrl-C: this mask is finished first
            if settings is not None:
                write_json(out / LABEL_SETTINGS, settings)
                settings = None
            save_mask(target, res.mask.cpu())
        bar.set_postfix(uncertain=f"{res.uncertain_share:.3f}")
    bar.close()
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
    p.add_argument("--out", required=True, help="output directory for the masks")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--overwrite", action="store_true",
                   help="redo masks that exist (default: skip them, so a rerun resumes)")
    p.add_argument("--keep-going", action="store_true",
                   help="on bad input print one line and go on with the others (exit code still 2)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_label_arguments(p)
    p.set_defaults(func=run)
