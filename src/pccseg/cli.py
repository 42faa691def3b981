"""``pccseg`` command line: a thin layer over the Python API.

Each sub-command lives in ``pccseg/commands/<name>.py`` with ``register(subparsers)``, which adds its
parser and sets ``func(args) -> int``; it imports torch and other heavy modules inside ``func`` only, so
that ``--help`` is quick. Bad input (:class:`~pccseg.errors.InputError`) becomes one line on stderr and
exit code 2; Ctrl-C exit code 130 and SIGTERM 143 (:mod:`pccseg.signals`), each with one line.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__
from .errors import InputError
from .signals import Terminated, handle_interrupts

COMMAND_MODULES = ("generate", "label", "train", "filter", "pictures", "toy", "export", "experiment")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pccseg",
        description="Labelled segmentation datasets from Stable Diffusion by Principal Component Clustering.")
    parser.add_argument("--version", action="version", version=f"pccseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"pccseg.commands.{name}").register(sub)
    _finish_commands(parser)
    return parser


VERBOSE_HELP = "pccseg's debug lines (model loading, settings, per-stage timings) and other libraries' INFO"


def _finish_commands(parser: argparse.ArgumentParser) -> None:
    """On every (sub-)command's parser: ``-v`` (also after the command: ``pccseg label ... -v``) and its full
    name (``pccseg toy train``) for the one-line errors."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):   # aliases share one parser
                child.set_defaults(prog_name=child.prog)
                if not any("-v" in a.option_strings for a in child._actions):
                    child.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                                       help=VERBOSE_HELP)
                _finish_commands(child)


def is_quiet(args: argparse.Namespace) -> bool:
    """Whether the command was asked for no progress: ``-q`` / ``--quiet`` or ``--no-progress``, whichever
    it has. The one rule for every command: no progress bar (each command's own flag) and no progress lines
    (pccseg's INFO, here and in every worker process); warnings, errors and the final summary stay."""
    return bool(getattr(args, "quiet", False)) or getattr(args, "progress", True) is False


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # pccseg's own progress at INFO (DEBUG with -v, none when quiet); other libraries' INFO (torch prints cache
    # statistics at exit, for one) only with -v
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("pccseg")
    log.setLevel(logging.DEBUG if args.verbose else logging.WARNING if is_quiet(args) else logging.INFO)
    log.debug("pccseg %s: %s", __version__, " ".join(argv if argv is not None else sys.argv[1:]))
    name = getattr(args, "prog_name", f"pccseg {args.command}")
    try:
        with handle_interrupts():
            return int(args.func(args) or 0)
    except InputError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"{name}: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
