"""The labeller options of ``pccseg label``, ``generate`` and ``show``.

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
import types
import typing

from ..errors import InputError

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
    "affinity_alpha": "DiffCut's affinity of two pixels: the cosine of their self-attention outputs, scaled to "
                      "[0, 1], to this power",
    "affinity_nodes": "the affinity is taken on the finest self-attention level with at most this many pixels",
    "map_spread": "class map = (1 - this) x map + this x the map spread once through the affinity (0: off)",
    "ncut_tau": "DiffCut's regions vote beside PCC's clusters: recursive normalized cut of the affinity, "
                "stopped where the best cut's value is above this (0: off)",
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
