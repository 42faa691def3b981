"""The page about an experiment (``pccseg report EXPERIMENT_DIR``; :func:`~pccseg.pictures.report.make_report`).

Experiment directory (``results.json``, written by ``pccseg experiment``): its tables, pictures, times and
settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io import atomic_path, read_json
from .page import escape, html_page, image_tag, prepare_out, settings_table, write_text

RESULTS = "results.json"


def _cell(x: Any) -> str:
    return "-" if x is None else f"{x:.2f}" if isinstance(x, float) else escape(x)


def results_report(directory: str | Path, out: str | Path) -> Path:
    """Write ``out/index.html`` for a folder with ``results.json`` (``pccseg experiment``): its ``tables``
    (``title``, ``columns``, ``rows``, ``note``), its ``pictures`` (``file`` in the folder, ``caption``;
    copied into ``out``), ``timings`` and ``config``."""
    import shutil

    directory, out = Path(directory), Path(out)
    path = directory / RESULTS
    results = read_json(path)
    tables, pictures = results.get("tables", []), results.get("pictures", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) and isinstance(t.get("columns"), list)
                                               and isinstance(t.get("rows"), list)
                                               and all(isinstance(r, list) for r in t["rows"]) for t in tables):
        raise InputError("expected a list of {title, columns, rows} with every row a list", path=path,
                         field="tables")
    prepare_out(out)
    body = [f"<p>Results of <code>{escape(directory.resolve())}</code> (also in results.md, results.json and the "
            "CSV files there).</p>"]
    for t in tables:
        head = "".join(f'<th{"" if i == 0 else " class=num"}>{escape(c)}</th>' for i, c in enumerate(t["columns"]))
        rows = ["<tr>" + "".join(f'<td{"" if i == 0 else " class=num"}>{_cell(x)}</td>' for i, x in enumerate(r))
                + "</tr>" for r in t["rows"]]
        body += [f"<h2>{escape(t.get('title', ''))}</h2>", "<table>", f"<tr>{head}</tr>", *rows, "</table>"]
        if t.get("note"):
            body.append(f'<p class="note">{escape(t["note"])}</p>')
    for p in pictures if isinstance(pictures, list) else []:
        src = directory / str(p.get("file", "")) if isinstance(p, dict) else None
        if src is None or src.parent != directory or src.is_symlink() or not src.is_file():
            continue                              # a picture is a file of the folder, never a link out of it
        with atomic_path(out / src.name) as tmp:
            shutil.copyfile(src, tmp)
        body += [f"<h2>{escape(p.get('caption', src.name))}</h2>", image_tag(src.name, str(p.get("caption", "")))]
    if isinstance(results.get("timings"), dict) and results["timings"]:
        body += ["<h2>Time</h2>", settings_table(results["timings"])]
    if isinstance(results.get("config"), dict):
        body += ["<h2>Settings</h2>", settings_table(results["config"])]
    page = out / "index.html"
    write_text(page, html_page(str(results.get("title", f"pccseg results: {directory.name}")), body))
    return page
