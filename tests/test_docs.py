"""Every command in the README and docs/*.md runs as written.

What is checked, for every ```bash block of README.md and docs/*.md (lines joined at a trailing ``\\``,
comments dropped, split at ``&&``, ``;`` and ``|``):

* every ``pccseg ...`` command (also as ``.venv/bin/pccseg``, ``python -m pccseg``, ``accelerate launch -m
  pccseg`` and ``torchrun ... -m pccseg --``, after ``nice`` or ``VAR=value`` prefixes) is parsed by the real
  command-line parser, so an option that does not exist, a missing required option or a bad choice fails
  here. Commands that need hub weights (SD 2.1, SDXL), Pascal VOC or a GPU are parse-checked only;
  synopses written with ``[optional]`` parts or ``...`` are skipped;
* every ``bench/*.py`` script a command names exists; an archive is extracted (``tar -x -C DIR``) into a
  folder the block makes first; a ``--model runs/...`` folder is under the ``--out`` of a ``pccseg toy
  train`` command of the docs;
* two docs never send an offline ``pccseg generate`` (toy, tiny, tiny-sdxl) with other settings to the
  same ``--out``: run in order, the second would be refused;
* every relative link (``file.md``, ``file.md#anchor``, ``#anchor``) of those pages points at a file and a
  heading that exist (GitHub's anchor rules);
* the README's quick commands (those it writes as ``.venv/bin/pccseg``) run end to end, in order, in a
  fresh folder: the toy model's ``generate``, the ``--keep-captures`` rerun, ``show``, ``label --dataset``
  and ``report``, with 2 images
  of 2 denoising steps instead of 4 of 25 (``--num 2 --steps 2 --threads 1 -q`` appended), so that the
  chain takes seconds.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from pccseg.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
OFFLINE_MODELS = ("toy", "tiny", "tiny-sdxl")


def bash_blocks(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of each ```bash block of a Markdown file."""
    out, lines = [], path.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip().startswith("```bash"):
            start, body = i + 1, []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                body.append(lines[i])
                i += 1
            out.append((start + 1, "\n".join(body)))
        i += 1
    return out


def shell_commands(block: str) -> list[list[str]]:
    """The simple commands of a bash block, as word lists (no comments, continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", block)
    commands = []
    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split, lexer.commenters = True, "#"
        words, current = list(lexer), []
        for w in words:
            if w in (";", "&&", "||", "|", "&"):
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(w)
        if current:
            commands.append(current)
    return commands


def pccseg_args(words: list[str]) -> list[str] | None:
    """The arguments after ``pccseg`` when the command runs pccseg's command line, else None."""
    w = list(words)
    while w and (re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", w[0]) or w[0] == "nice"):
        w = w[3:] if w[0] == "nice" and len(w) > 2 and w[1] == "-n" else w[1:]
    if not w:
        return None
    if w[0].endswith("pccseg") and "/" not in w[0].replace(".venv/bin/", ""):
        return w[1:]
    if "-m" in w and w.index("-m") + 1 < len(w) and w[w.index("-m") + 1] == "pccseg":
        rest = w[w.index("-m") + 2:]
        return rest[1:] if rest[:1] == ["--"] else rest
    return None


def doc_commands() -> list[tuple[str, list[str]]]:
    """(where, words) of every simple command in the pages' bash blocks."""
    found = []
    for page in PAGES:
        for line, block in bash_blocks(page):
            for words in shell_commands(block):
                found.append((f"{page.relative_to(ROOT)}:{line}", words))
    return found


def pccseg_commands() -> list[tuple[str, list[str]]]:
    out = []
    for where, words in doc_commands():
        args = pccseg_args(words)
        if args is None or any(a.startswith("[") or a.endswith("...") for a in args):
            continue                      # not pccseg, or a synopsis with [optional] parts
        out.append((where, args))
    return out


def test_the_extractor_finds_the_commands():
    cmds = pccseg_commands()
    subcommands = {args[0] for _, args in cmds}
    assert {"generate", "label", "train", "evaluate", "show", "report", "export", "toy", "experiment"} <= subcommands
    assert pccseg_args(["OMP_NUM_THREADS=1", "nice", "-n", "10", ".venv/bin/pccseg", "label", "x"]) == ["label", "x"]
    assert pccseg_args(["torchrun", "--nproc_per_node", "2", "-m", "pccseg", "--", "generate"]) == ["generate"]
    assert pccseg_args([".venv/bin/python", "bench/bench_label.py"]) is None
    assert shell_commands("a --x 1 \\\n  --y 2 && b | c  # note\n") == [["a", "--x", "1", "--y", "2"], ["b"], ["c"]]


def test_every_pccseg_command_in_the_docs_parses():
    bad = []
    for where, args in pccseg_commands():
        try:
            build_parser().parse_args(args)
        except SystemExit:
            bad.append(f"{where}: pccseg {shlex.join(args)}")
    assert not bad, "\n".join(bad)


def test_the_parser_check_catches_an_option_that_does_not_exist(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["export", "d", "--format", "hf", "--out", "o", "--val-share", "0.1"])
    capsys.readouterr()


def test_every_bench_script_named_exists():
    missing = sorted({f"{where}: {w}" for where, words in doc_commands() for w in words
                      if re.fullmatch(r"(\S*/)?bench/\w+\.py", w) and not w.startswith("/tmp")
                      and not (ROOT / "bench" / Path(w).name).is_file()})
    assert not missing


def offline_generate_outs() -> dict[str, list[tuple[str, tuple]]]:
    outs: dict[str, list[tuple[str, tuple]]] = {}
    for where, args in pccseg_commands():
        if args[0] != "generate":
            continue
        ns = build_parser().parse_args(args)
        if ns.model in OFFLINE_MODELS:
            key = (ns.model, ns.steps, ns.guidance, ns.height, ns.width, ns.prompts, ns.seed, ns.classes)
            outs.setdefault(ns.out, []).append((where, key))
    return outs


def test_no_two_docs_generate_into_one_folder_with_other_settings():
    clashes = [f"{out}: " + ", ".join(f"{where} {key[0]}" for where, key in uses)
               for out, uses in offline_generate_outs().items() if len({key for _, key in uses}) > 1]
    assert not clashes


def test_a_model_folder_under_runs_is_one_that_a_doc_trains():
    trained = [build_parser().parse_args(args).out for _, args in pccseg_commands() if args[:2] == ["toy", "train"]]
    trained += [words[words.index("--out") + 1] for _, words in doc_commands()   # the second toy model's trainer
                if any(w.endswith("bench/toy_second_model.py") for w in words) and "--out" in words]
    unknown = [f"{where}: {args[args.index('--model') + 1]}" for where, args in pccseg_commands()
               if "--model" in args and args[args.index("--model") + 1].startswith("runs/")
               and not any(args[args.index("--model") + 1].startswith(t.rstrip("/") + "/") for t in trained)]
    assert trained and not unknown


def test_an_archive_is_extracted_into_a_folder_made_first():
    """``tar -x -C DIR`` fails when DIR does not exist: the same block makes it first."""
    bad = []
    for page in PAGES:
        for line, block in bash_blocks(page):
            made = set()
            for words in shell_commands(block):
                if words[:2] == ["mkdir", "-p"]:
                    made.update(words[2:])
                if words[0] == "tar" and "-C" in words and words[words.index("-C") + 1] not in made:
                    bad.append(f"{page.name}:{line}: {shlex.join(words)}")
    assert not bad


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    in_code = False
    for line in path.read_text().splitlines():
        if line.strip().startswith("```"):
            in_code = not in_code
        m = None if in_code else re.match(r"#{1,6}\s+(.*)", line)
        if m:
            a = github_anchor(m.group(1))
            n = seen.get(a, 0)
            seen[a] = n + 1
            out.add(a if n == 0 else f"{a}-{n}")
    return out


def test_every_relative_link_resolves():
    assert github_anchor("What is captured (method §1)") == "what-is-captured-method-1"
    bad = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            if not dest.exists():
                bad.append(f"{page.name}: {target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                bad.append(f"{page.name}: {target}: no such heading")
    assert not bad, "\n".join(bad)


QUICK = ["--num", "2", "--steps", "2", "--threads", "1", "-q"]


def test_the_readme_quick_commands_run_in_order(tmp_path, monkeypatch, capsys):
    """The README's first command and its 'Then look at it' block, in a fresh folder, with 2 images of 2
    steps (the options appended to each generate override the README's --num 4 and the model's 25)."""
    quick = [pccseg_args(words) for where, words in doc_commands()
             if where.startswith("README.md") and words[0] == ".venv/bin/pccseg"]
    assert [a[0] for a in quick] == ["generate", "generate", "show", "label", "report"], quick
    monkeypatch.chdir(tmp_path)
    for args in quick:
        args = args + QUICK if args[0] == "generate" else args
        assert main(args) == 0, args
        err = capsys.readouterr().err
        assert "Loading" not in err and "error" not in err
    assert len(list(Path("runs/demo/captures").iterdir())) == 2
    assert Path("runs/stages.png").stat().st_size > 0 and Path("runs/demo-report/index.html").is_file()
    assert len(Path("runs/relabel/ImageSets/Segmentation/train.txt").read_text().split()) == 2
