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
