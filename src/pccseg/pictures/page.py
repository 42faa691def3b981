"""The HTML page every report writes (:mod:`.dataset_report`, :mod:`.training_report`,
:mod:`.results_report`): its style, escaping, image and settings tables, and writing it atomically into a
folder that a killed run may have left temporary files in."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from ..io import atomic_path, make_dir, remove_temps
from ..vocab import VOC_PALETTE

_CSS = """
body { font-family: sans-serif; max-width: 1200px; margin: 1em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; }
img { max-width: 100%; }
.note { color: #666; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; border: 1px solid #888;
          vertical-align: middle; margin-right: 4px; }
"""


def count(n: int, word: str, plural: str | None = None) -> str:
    """``1 image``, ``2 images`` (``plural``: when it is not ``word + "s"``)."""
    return f"{n} {word if n == 1 else plural or word + 's'}"


def escape(x: Any) -> str:
    return html.escape(str(x), quote=True)


def image_tag(name: str, alt: str) -> str:
    return f'<p><img src="{escape(name)}" alt="{escape(alt)}"></p>'


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(obj, dict):
        out: list[tuple[str, Any]] = []
        for k, v in obj.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return [(prefix, obj)]


def settings_table(settings: dict) -> str:
    rows = []
    for k, v in _flatten(settings):
        if k == "class_names":
            v = ", ".join(map(str, v))
        elif not isinstance(v, str):
            v = json.dumps(v)
        rows.append(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>")
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def html_page(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            f"<h1>{escape(title)}</h1>\n" + "\n".join(body) + "\n</body>\n</html>\n")


def prepare_out(out: Path) -> None:
    """Create the output folder (one line when it cannot be) and remove what a killed run left there."""
    make_dir(out)
    remove_temps(out)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def swatch(v: int) -> str:
    r, g, b = (int(c) for c in VOC_PALETTE[v])
    return f'<span class="swatch" style="background: rgb({r},{g},{b})"></span>'
