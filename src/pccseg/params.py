"""One vocabulary of parameter constraints (as scikit-learn's ``_parameter_constraints``), one function that
checks a parameter dataclass against them, and one that makes its command-line options.

Every field of a parameter dataclass says, once, what it means and what it accepts::

    @parameters
    @dataclass(frozen=True)
    class DDParams:
        \"\"\"Parameters of the dd labeller.\"\"\"

        power: int = param(4, "power of the self-attention affinity matrix", Int(0, 64))

        def __post_init__(self) -> None:
            check(self)

* :func:`check` checks every field against its constraint (the value it keeps: lists become tuples,
  integers and reals plain ``int`` / ``float``), then calls the class's ``_validate`` for rules across
  fields; a refused value is one :class:`~pccseg.errors.InputError` naming the field.
* :func:`parameters` appends the fields' help and constraints to the class docstring (``help(DDParams)``).
* :func:`add_options` adds the fields to an ``argparse`` parser, help from the metadata, ``choices`` /
  ``nargs`` / ``metavar`` from the constraint; :func:`with_options` renames a refused field as its option.

This module imports nothing from pccseg's subpackages (it sits beside :mod:`pccseg.errors`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
import os
import textwrap
from collections.abc import Callable, Iterable
from typing import Any

from .errors import InputError, as_options
from .limits import MAX_SEED

_NO_DEFAULT = dataclasses.MISSING


class Constraint:
    """What a field accepts. Calling it returns the value to keep or raises ``ValueError`` with the
    message (``must be ..., got ...``); ``text`` describes what it accepts (``an integer >= 1``)."""

    text = "anything"
    why = ""

    def __call__(self, value: Any) -> Any:
        if not self.accepts(value):
            raise ValueError(f"must be {self.text}{self._why()}, got {value!r}")
        return self.keep(value)

    def _why(self) -> str:
        return f" ({self.why})" if self.why else ""

    def accepts(self, value: Any) -> bool:
        return True

    def keep(self, value: Any) -> Any:
        return value

    def option(self) -> dict:
        """``argparse.add_argument`` keywords for an option that takes such a value."""
        return dict(metavar="V")


def _number(v: float) -> str:
    return "2**63 - 1" if v == MAX_SEED else f"{v}"


class Interval(Constraint):
    """An integer (``kind=int``; ``bool`` is not one) or a finite real (``kind=float``) between ``lo`` and
    ``hi`` (None: unbounded); ``closed``: which ends belong to it, ``both``, ``left``, ``right`` or ``neither``.
    Keeps a plain ``int`` / ``float``."""

    def __init__(self, kind: type, lo: float | None = None, hi: float | None = None, closed: str = "both",
                 why: str = ""):
        if kind not in (int, float) or closed not in ("both", "left", "right", "neither"):
            raise TypeError(f"Interval({kind!r}, closed={closed!r})")
        self.kind, self.lo, self.hi, self.closed, self.why = kind, lo, hi, closed, why
        self.lo_closed = closed in ("both", "left")
        self.hi_closed = closed in ("both", "right")
        what = "an integer" if kind is int else "a finite number"
        lo_t = None if lo is None else f"{'>=' if self.lo_closed else '>'} {_number(lo)}"
        hi_t = None if hi is None else f"{'<=' if self.hi_closed else '<'} {_number(hi)}"
        if lo_t and hi_t and closed == "both":
            self.text = f"{what} from {_number(lo)} to {_number(hi)}"
        else:
            self.text = " ".join([what] + [" and ".join(t for t in (lo_t, hi_t) if t)]).strip()

    def accepts(self, v: Any) -> bool:
        kind = numbers.Integral if self.kind is int else numbers.Real
        if isinstance(v, bool) or not isinstance(v, kind) or not math.isfinite(v):
            return False
        lo_ok = self.lo is None or (v >= self.lo if self.lo_closed else v > self.lo)
        return lo_ok and (self.hi is None or (v <= self.hi if self.hi_closed else v < self.hi))

    def keep(self, v: Any) -> Any:
        return self.kind(v)

    def option(self) -> dict:
        return dict(type=self.kind, metavar="N" if self.kind is int else "X")


def Int(lo: int | None = None, hi: int | None = None, why: str = "") -> Interval:
    """An integer in ``lo .. hi`` (both ends included)."""
    return Interval(int, lo, hi, "both", why)


def Real(lo: float | None = None, hi: float | None = None, closed: str = "both", why: str = "") -> Interval:
    """A finite real number between ``lo`` and ``hi`` (:class:`Interval`)."""
    return Interval(float, lo, hi, closed, why)


#: A seed: an integer from 0 to :data:`pccseg.limits.MAX_SEED`.
SEED = Int(0, MAX_SEED)


class Choice(Constraint):
    """One of ``options``, of the same type (``True`` is not ``1``, ``4.0`` not ``4``)."""

    def __init__(self, *options: Any, why: str = ""):
        self.options, self.why = options, why
        self.text = "one of " + ", ".join(map(str, options))

    def accepts(self, v: Any) -> bool:
        return any(v == c and type(v) is type(c) for c in self.options)

    def option(self) -> dict:
        return dict(choices=self.options, type=type(self.options[0]))


class Bool(Constraint):
    """``True`` or ``False`` (not 0 / 1)."""

    text = "true or false"

    def accepts(self, v: Any) -> bool:
        return isinstance(v, bool)

    def option(self) -> dict:
        return dict(action=argparse.BooleanOptionalAction)


class Where(Constraint):
    """A value for which ``test(value)`` is true; ``text`` says which (``a split name``)."""

    def __init__(self, test: Callable[[Any], bool], text: str, why: str = "", metavar: str = "V"):
        self.test, self.text, self.why, self.metavar = test, text, why, metavar

    def accepts(self, v: Any) -> bool:
        return bool(self.test(v))

    def option(self) -> dict:
        return dict(metavar=self.metavar) if self.metavar != "V" else {}


#: Any string; a non-empty one; a path (a string or ``os.PathLike``, kept as given).
TEXT = Where(lambda v: isinstance(v, str), "a string")
NAME = Where(lambda v: isinstance(v, str) and v != "", "a non-empty string")
PATH = Where(lambda v: isinstance(v, (str, os.PathLike)), "a path")


class OrNone(Constraint):
    """None (``means``: what None stands for) or what ``inner`` accepts; a refused value gets ``inner``'s
    message."""

    def __init__(self, inner: Constraint, means: str = ""):
        self.inner, self.means = inner, means
        self.text = f"{inner.text}, or None" + (f" ({means})" if means else "")

    def __call__(self, v: Any) -> Any:
        return None if v is None else self.inner(v)

    def option(self) -> dict:
        return self.inner.option()


class Seq(Constraint):
    """A list or tuple of ``min_len`` .. ``max_len`` values (None: no limit), each accepted by ``item``;
    ``unique``: no value twice. Keeps a tuple."""

    def __init__(self, item: Constraint, min_len: int = 1, max_len: int | None = None, unique: bool = False):
        self.item, self.min_len, self.max_len, self.unique = item, min_len, max_len, unique
        if max_len is None:
            count = "a non-empty list" if min_len == 1 else f"a list of at least {min_len} values"
        else:
            count = f"a list of {min_len} to {max_len} values" if min_len != max_len else f"a list of {min_len} values"
        self.text = f"{count}, each {item.text}" + (", no value twice" if unique else "")
        self.count_text = count

    def __call__(self, v: Any) -> tuple:
        if not isinstance(v, (list, tuple)) or not self.min_len <= len(v) <= (self.max_len or len(v)):
            raise ValueError(f"must be {self.count_text}, got {v!r}")
        try:
            kept = tuple(self.item(x) for x in v)
        except ValueError as e:
            raise ValueError(f"each value {e}") from None
        if self.unique and len(set(kept)) != len(kept):
            twice = next(x for i, x in enumerate(kept) if x in kept[:i])
            raise ValueError(f"names {twice!r} twice: {' '.join(map(str, kept))}")
        return kept

    def option(self) -> dict:
        kw = self.item.option()
        kw["nargs"] = self.min_len if self.min_len == self.max_len else "+"
        return kw


# --------------------------------------------------------------------------- declaring and checking


def param(default: Any = _NO_DEFAULT, help: str = "", check: Constraint | None = None, **field_kw) -> Any:
    """A dataclass field with its help text and constraint in its metadata (``default``: as
    ``dataclasses.field``'s; omitted: the field is required)."""
    if check is None or not help:
        raise TypeError("param() needs a help text and a constraint")
    return dataclasses.field(default=default, metadata={"help": help, "check": check}, **field_kw)


def constraint(f: dataclasses.Field) -> Constraint:
    """The constraint declared on a field (TypeError when it has none)."""
    try:
        return f.metadata["check"]
    except KeyError:
        raise TypeError(f"field {f.name!r} declares no constraint (use pccseg.params.param)") from None


def check_value(accepts: Constraint, value: Any, field: str, path: Any = None) -> Any:
    """The value ``accepts`` keeps of ``value``, else :class:`InputError` naming ``field`` (and ``path``): the check
    of :func:`check` for one value that is not a dataclass field (a command's option, a function's argument)."""
    try:
        return accepts(value)
    except ValueError as e:
        raise InputError(str(e), path=path, field=field) from None


def check(obj: Any) -> None:
    """Check every field of the dataclass instance ``obj`` against its constraint and keep the value the
    constraint gives; then ``obj._validate()`` when the class has one (rules across fields).

    Raises:
        InputError: the first refused value, naming its field (``ks: each value must be ...``).
    """
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        kept = check_value(constraint(f), value, f.name)
        if kept is not value:
            object.__setattr__(obj, f.name, kept)
    validate = getattr(obj, "_validate", None)
    if validate is not None:
        validate()


def format_value(v: Any) -> str:
    """A value as the command line writes it: a tuple space-separated, None as ``none``, a bool on / off."""
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, tuple):
        return " ".join(map(str, v))
    return "none" if v is None else str(v)


def parameters(cls: type) -> type:
    """Class decorator for a parameter dataclass: every field must declare a constraint (:func:`param`);
    appends a ``Fields:`` list (name, default, help, what it accepts) to the docstring."""
    lines = []
    for f in dataclasses.fields(cls):
        c = constraint(f)
        default = "required" if f.default is _NO_DEFAULT and f.default_factory is _NO_DEFAULT else \
            f"default {f.default!r}" if f.default is not _NO_DEFAULT else "default: computed"
        lines.append(textwrap.fill(f"{f.name} ({default}): {f.metadata['help']}. Accepts {c.text}.", 108,
                                   initial_indent="    ", subsequent_indent="        ", break_on_hyphens=False))
    doc = (cls.__doc__ or cls.__name__).rstrip()
    cls.__doc__ = doc + "\n\n    Fields:\n\n" + "\n".join(lines) + "\n"
    return cls


# --------------------------------------------------------------------------- command-line options


def option_name(name: str, prefix: str = "", names: dict[str, str] | None = None) -> str:
    """``--<prefix><field with dashes>``, or ``--<names[field]>``."""
    return "--" + ((names or {}).get(name) or prefix + name.replace("_", "-"))


def add_options(parser, cls: type, *, prefix: str = "", dest_prefix: str = "", names: dict[str, str] | None = None,
                skip: Iterable[str] = (), shown: Any = None, unset: bool = False,
                notes: dict[str, str] | None = None, extra: dict[str, dict] | None = None) -> dict[str, str]:
    """Add one option per field of the dataclass ``cls`` to ``parser`` (a parser or an argument group).

    The option is :func:`option_name`, its destination ``dest_prefix + field``; its help the field's, with
    ``(default: ...)`` from ``shown`` (an instance; None: the field defaults) unless the help already
    speaks of its default, and ``notes[field]`` inside the brackets; ``choices``, ``nargs``, ``type`` and
    ``metavar`` come from the constraint (a bool: ``--x`` / ``--no-x``). ``unset``: every option defaults to
    None (the caller fills in what is left unset); else the default is the field's. A field without a default
    is a required option. ``extra[field]``: keywords that replace the derived ones. Skips ``skip``.

    Returns:
        field -> option string, for the fields added.
    """
    added = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        has_default = f.default is not _NO_DEFAULT
        value = getattr(shown, f.name) if shown is not None else f.default if has_default else None
        kw = constraint(f).option()
        kw.update(dest=dest_prefix + f.name, default=None if unset or not has_default else f.default,
                  required=not has_default and f.default_factory is _NO_DEFAULT)
        kw.update((extra or {}).get(f.name, {}))
        help_ = f.metadata["help"]
        said = [s for s in ((notes or {}).get(f.name),) if s]
        speaks = "default" in help_ or (value is None and "None" in help_)
        if not speaks and (has_default or shown is not None):
            said.insert(0, f"default: {format_value(value)}")
        kw["help"] = help_ + (f" ({'; '.join(said)})" if said else "")
        if not kw.get("required"):
            kw.pop("required")
        opt = option_name(f.name, prefix, names)
        parser.add_argument(opt, **kw)
        added[f.name] = opt
    return added


def with_options(func: Callable, parser, aliases: dict[str, str] | None = None) -> Callable:
    """``func(args)`` whose :class:`InputError` names the command line's option (``--batch-size``) rather
    than the field (``batch_size``): see :func:`pccseg.errors.as_options`."""
    def run(args) -> int:
        try:
            return func(args)
        except InputError as e:
            raise as_options(e, parser, aliases) from None
    return run


def config_values(obj: Any, cls: type, path: Any, *, skip: Iterable[str] = (), within: str = "") -> dict:
    """The fields of ``cls`` that the JSON object ``obj`` (read from ``path``) gives, each checked by its
    constraint (rules across fields are checked when the instance is made).

    Raises:
        InputError: naming ``path`` and the key (``within.key``): not an object, a key that is not a field of
            ``cls`` (or one in ``skip``), a refused value.
    """
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
    if not isinstance(obj, dict):
        raise InputError(f"expected a JSON object of settings, got {type(obj).__name__}", path=path,
                         field=within or None)
    out = {}
    for key, value in obj.items():
        name = f"{within}.{key}" if within else key
        if key not in fields:
            raise InputError(f"unknown setting (one of {', '.join(fields)})", path=path, field=name)
        try:
            out[key] = constraint(fields[key])(value)
        except ValueError as e:
            raise InputError(str(e), path=path, field=name) from None
    return out


def read_config(path: Any, cls: type, *, skip: Iterable[str] = ()) -> dict:
    """:func:`config_values` of the JSON object in the file ``path``."""
    from .io import read_json

    return config_values(read_json(path), cls, path, skip=skip)


def values(args: argparse.Namespace, cls: type, dest_prefix: str = "") -> dict:
    """The fields of ``cls`` found in ``args`` (destinations ``dest_prefix + field``), lists as tuples."""
    out = {}
    for f in dataclasses.fields(cls):
        dest = dest_prefix + f.name
        if hasattr(args, dest):
            v = getattr(args, dest)
            out[f.name] = tuple(v) if isinstance(v, list) else v
    return out
