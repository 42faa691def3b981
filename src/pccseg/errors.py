"""One exception type for bad input: it names the file and the field, and the CLI turns it into one line
and exit code 2."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad input that the user must fix.

    ``str(err)`` is the one line the CLI prints: ``<file>: <field>: <message>``.
    """

    def __init__(self, message: str, *, path: str | Path | None = None, field: str | None = None):
        self.path = None if path is None else str(path)
        self.field = field
        self.message = message
        parts = [_printable(p) for p in (self.path, self.field) if p]
        super().__init__(": ".join(parts + [message]))


def _printable(text: str) -> str:
    """``text``, or its repr when it holds a line break or another control character (a name read from
    the disk or a data file must not break the one line)."""
    return repr(text) if any(ord(c) < 32 or ord(c) == 127 for c in text) else text


def unwrap_worker_error(e: InputError) -> InputError:
    """An InputError raised in a DataLoader worker arrives with the worker's traceback in its text; keep
    the one line that matters."""
    text = str(e)
    if "\n" not in text:
        return e
    last = [ln for ln in text.splitlines() if ln.strip()][-1]
    return InputError(last.split("InputError: ", 1)[-1])


def as_options(e: InputError, parser, aliases: dict[str, str] | None = None) -> InputError:
    """``e`` with its field named as the command line's option (``batch_size`` -> ``--batch-size``, ``arch``
    -> ``--model``) when it is a setting of ``parser`` (an ``argparse`` parser) and names no file;
    ``aliases``: setting -> destination where they differ (``scale_min`` -> ``scale``). Fields joined by
    `` / `` are named one by one."""
    if e.path is not None or not e.field:
        return e
    options = {a.dest: next((o for o in a.option_strings if o.startswith("--")), a.option_strings[0])
               for a in parser._actions if a.option_strings}
    names = [options.get((aliases or {}).get(f, f)) for f in e.field.split(" / ")]
    if not all(names):
        return e
    return InputError(e.message, field=" / ".join(dict.fromkeys(names)))
