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
        parts = [p for p in (self.path, self.field) if p]
        super().__init__(": ".join(parts + [message]))
