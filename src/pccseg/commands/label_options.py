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

from ..errors import InputError
from ..params import add_options, format_value, option_name

#: LabelParams field -> option name, where it is not the field name with dashes.
OPTION_NAMES = {"seed": "kmeans-seed"}

#: labeller -> option group title
_TITLES = {"pcc": "labelling (--labeller pcc, the default)", "dd": "labelling (--labeller dd)",
           "attn": "labelling (--labeller attn)", "fuse": "labelling (--labeller fuse)"}


def _option(labeller: str, name: str) -> str:
    return option_name(name, "" if labeller == "pcc" else f"{labeller}-", OPTION_NAMES if labeller == "pcc" else None)


def _dest(labeller: str, name: str) -> str:
    return f"label_{name}" if labeller == "pcc" else f"label_{labeller}_{name}"


def add_label_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--labeller``, ``--preset`` and one option per parameter of every labeller (all "unset"), made by
    :func:`pccseg.params.add_options` from the parameter dataclasses (their help and constraints)."""
    from ..labellers.pcc import LabelParams
    from ..labellers.registry import DEFAULT_LABELLER, LABELLERS

    parser.add_argument("--labeller", default=DEFAULT_LABELLER, metavar="{" + ",".join(LABELLERS) + "}",
                        help="; ".join(f"{lab.name}: {lab.summary}" for lab in LABELLERS.values())
                        + f" (default: {DEFAULT_LABELLER}); see docs/labeller.md")
    report, authors = LabelParams(), LabelParams.preset("authors")
    for name, lab in LABELLERS.items():
        group = parser.add_argument_group(_TITLES[name])
        notes = {}
        if name == "pcc":
            group.add_argument("--preset", dest="label_preset", choices=("report", "authors"), default=None,
                               help="parameter set: the report's (default) or the authors' code; options "
                                    "below that are left unset take the preset's value")
            notes = {f.name: f"authors preset: {format_value(getattr(authors, f.name))}" for f in dataclasses.fields(report)
                     if getattr(authors, f.name) != getattr(report, f.name)}
        add_options(group, lab.params, prefix="" if name == "pcc" else f"{name}-", dest_prefix=_dest(name, ""),
                    names=OPTION_NAMES if name == "pcc" else None, shown=lab.params(), unset=True, notes=notes)


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
