"""The labeller options of ``pccseg label``, ``generate`` and ``show``.

* :func:`add_label_arguments` adds ``--labeller``, ``--preset report|authors`` (PCC), ``--label-config FILE``,
  ``--print-label-config`` and one option per field of every labeller's parameters, made from the parameter
  dataclasses by :func:`pccseg.params.add_options`. Options left unset take the file's, else the labeller's
  (PCC: the preset's) value.
* :func:`params_from_args` turns the parsed namespace into the chosen labeller's parameters
  (:class:`~pccseg.labellers.pcc.LabelParams`, :class:`~pccseg.labellers.dd.DDParams` or
  :class:`~pccseg.labellers.attn.AttnParams`, :class:`~pccseg.labellers.fuse.FuseParams`); an option of
  another labeller is refused. :func:`print_label_config_or` wraps a command for ``--print-label-config``.

PCC option names are the field names with dashes (``--cluster-connectivity``), except the k-means seed
``LabelParams.seed``, which is ``--kmeans-seed`` so that it never clashes with a generation seed; their
destinations are ``label_<field>`` (``args.label_seed``, ``args.label_preset``). The other labellers'
options carry the labeller's name: ``--dd-power`` (destination ``label_dd_power``), ``--attn-threshold``.
The labeller's name is ``args.labeller``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from ..errors import InputError
from ..params import add_options, config_values, format_value, option_name

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

    parser.add_argument("--labeller", default=None, metavar="{" + ",".join(LABELLERS) + "}",
                        help="; ".join(f"{lab.name}: {lab.summary}" for lab in LABELLERS.values())
                        + f" (default: {DEFAULT_LABELLER}, or --label-config's); see docs/labeller.md")
    parser.add_argument("--label-config", metavar="FILE", default=None,
                        help="the labeller and its parameters from this JSON file: {\"labeller\": NAME, "
                             "\"label_params\": {field: value}}, as label_params.json, a dataset's settings.json and "
                             "--print-label-config hold them; the options given override them")
    parser.add_argument("--print-label-config", action="store_true",
                        help="print the labeller and parameters the options resolve to as JSON and exit")
    report, authors = LabelParams(), LabelParams.preset("authors")
    for name, lab in LABELLERS.items():
        group = parser.add_argument_group(_TITLES[name])
        notes = {}
        if name == "pcc":
            group.add_argument("--preset", dest="label_preset", choices=("report", "authors"), default=None,
                               help="parameter set: the report's (default) or the authors' code; options "
                                    "below that are left unset take the preset's value")
            notes = {f.name: f"authors preset: {format_value(getattr(authors, f.name))}"
                     for f in dataclasses.fields(report) if getattr(authors, f.name) != getattr(report, f.name)}
        add_options(group, lab.params, prefix="" if name == "pcc" else f"{name}-", dest_prefix=_dest(name, ""),
                    names=OPTION_NAMES if name == "pcc" else None, shown=lab.params(), unset=True, notes=notes)


def read_label_config(path) -> tuple[str, dict]:
    """(labeller name, checked parameter values) of the JSON file ``path`` holding ``{"labeller": NAME,
    "label_params": {field: value}}`` (label_params.json, settings.json; other keys are ignored).

    Raises:
        InputError: naming the file and the field.
    """
    from ..io import read_json
    from ..labellers.registry import DEFAULT_LABELLER, get_labeller

    obj = read_json(path)
    if "label_params" not in obj:
        raise InputError('missing (the file holds {"labeller": NAME, "label_params": {...}}, as label_params.json)',
                         path=path, field="label_params")
    try:
        lab = get_labeller(obj.get("labeller", DEFAULT_LABELLER))
    except InputError as e:
        raise InputError(e.message, path=path, field="labeller") from None
    return lab.name, config_values(obj["label_params"], lab.params, path, within="label_params")


def params_from_args(args: argparse.Namespace):
    """The parameters of the labeller ``args.labeller`` from a namespace parsed with :func:`add_label_arguments`:
    the labeller's defaults (PCC: the preset's), then ``--label-config FILE``'s values, then the options given.

    Raises:
        InputError: an unknown labeller, an option of another labeller, or a value the parameters refuse
            (each names the option), or a bad --label-config file (naming the file and the field).
    """
    from ..labellers.pcc import LabelParams
    from ..labellers.registry import DEFAULT_LABELLER, LABELLERS, get_labeller

    config = getattr(args, "label_config", None)
    file_labeller, overrides = read_label_config(config) if config else (None, {})
    try:
        chosen = get_labeller(getattr(args, "labeller", None) or file_labeller or DEFAULT_LABELLER)
    except InputError as e:
        raise InputError(e.message, field="--labeller") from None
    if file_labeller not in (None, chosen.name):
        raise InputError(f"holds the parameters of --labeller {file_labeller}, not of --labeller {chosen.name}",
                         path=config, field="labeller")
    for name, lab in LABELLERS.items():
        given = {f.name: v for f in dataclasses.fields(lab.params)
                 if (v := getattr(args, _dest(name, f.name), None)) is not None}
        if name == "pcc" and getattr(args, "label_preset", None) is not None:
            given["preset"] = args.label_preset
        if name == chosen.name:
            overrides.update({k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})
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


def print_label_config_or(func):
    """``func(args)``, or with ``--print-label-config``: print the labeller and parameters the options
    resolve to (``{"labeller": NAME, "label_params": {...}}``, JSON) and return 0, before any work."""
    def run(args: argparse.Namespace) -> int:
        if getattr(args, "print_label_config", False):
            from ..labellers.registry import params_record

            print(json.dumps(params_record(params_from_args(args)), indent=2))
            return 0
        return func(args)
    return run
