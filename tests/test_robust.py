"""Nothing escapes the output folder, nothing is left behind (issue 12), and a first minute without
surprises (issue 10): plain stems, one line and exit 2 before anything is written, temporary names that a
rerun removes, the umask, SIGTERM, torn manifest lines, relabelling that reproduces generate, a light
``--help``, a quick answer when the hub cannot be reached. Kills of real processes: test_kill.py."""

import dataclasses
import json
import math
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pccseg import cli
from pccseg.capture.format import load_capture, save_capture
from pccseg.dataset.folder import DatasetFolder, read_manifest
from pccseg.errors import InputError
from pccseg.io import TEMP_SUFFIX, atomic_path, check_stem, load_mask, read_json, read_jsonl, remove_temps
from pccseg.labellers.pcc import LabelParams
from pccseg.dataset.prompts import load_prompts
from pccseg.signals import Terminated, handle_interrupts, hold_interrupts

from test_capture_format import small_capture
from test_generate import gen, pipe, records  # noqa: F401 (fixtures: the tiny pipeline, three VOC records)
from test_pictures import make_dataset

@pytest.fixture(scope="module")
def tiny(tmp_path_factory, records):
    """CLI options for a quick tiny-model run on ``records`` (a small prompt file: no 44k-record parse)."""
    p = tmp_path_factory.mktemp("prompts") / "three.jsonl"
    p.write_text("".join(json.dumps({"id": r.id, "prompt_sd": r.prompt, "classes": list(r.classes)}) + "\n"
                         for r in records))
    return ["--model", "tiny", "--prompts", str(p), "--height", "64", "--width", "64", "--steps", "1", "-q"]


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _temps(root: Path) -> list[str]:
    return [f for f in _files(root) if f.endswith(TEMP_SUFFIX) or "/." in "/" + f]


def _one_line(capsys, argv: list[str], *needles: str, code: int = 2) -> str:
    """Run the CLI: ``code``, and exactly one line on stderr holding every needle."""
    capsys.readouterr()
    assert cli.main(argv) == code
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and all(n in err[0] for n in needles), err
    return err[0]


# --------------------------------------------------------------------------- plain stems


@pytest.mark.parametrize("stem", ["", ".", "..", "../../escape/evil", "a/b", "/etc/passwd", "a\\b", ".hidden",
                                  "a\0b", 7])
def test_check_stem_refuses_anything_but_a_file_name(stem):
    with pytest.raises(InputError) as e:
        check_stem(stem, path="ds/ImageSets/Segmentation/train.txt", line=3)
    assert str(e.value).startswith("ds/ImageSets/Segmentation/train.txt: line 3: ")
    assert "\n" not in str(e.value)


def test_check_stem_keeps_file_names():
    for stem in ("2007_000032", "000001", "a..b", "cat photo", "ü"):
        assert check_stem(stem, path="x", line=1) == stem


def test_report_refuses_a_manifest_id_that_is_a_path(tmp_path, capsys):
    root = make_dataset(tmp_path / "ds", n=2)
    target = tmp_path / "escape"
    entries = read_jsonl(root / "manifest.jsonl")
    entries[1]["id"] = "../../escape/evil"
    (root / "manifest.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    _one_line(capsys, ["report", str(root), "--out", str(tmp_path / "rep")], "manifest.jsonl", "record 2: id",
              "../../escape/evil")
    entries[1] = {"record_id": 10**300}
    (root / "manifest.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    _one_line(capsys, ["report", str(root), "--out", str(tmp_path / "rep")], "record 2: record_id")
    assert not target.exists() and not (tmp_path / "rep").exists()


def test_show_id_never_leads_out_of_the_captures_folder(tmp_path, capsys, monkeypatch):
    data = tmp_path / "ds"
    (data / "captures").mkdir(parents=True)
    save_capture(data / "outside", small_capture())           # DATA/captures/../outside would reach it
    monkeypatch.chdir(tmp_path)                               # where ../outside is no directory
    _one_line(capsys, ["show", "../outside", "--data", str(data), "--out", str(tmp_path / "x.png")],
              "no capture for sample '../outside'")
    _one_line(capsys, ["show", "9" * 400, "--data", str(data), "--out", str(tmp_path / "x.png")],
              "CAPTURE_DIR_OR_ID")
    assert not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------- readers: one line, never a traceback


def test_json_readers_name_the_file_for_bytes_that_are_not_text_or_too_deep(tmp_path):
    bad = tmp_path / "settings.json"
    bad.write_bytes(b'{"a": "\xff\xfe"}')
    with pytest.raises(InputError, match=r"settings.json: not UTF-8 text"):
        read_json(bad)
    bad.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InputError, match=r"settings.json: JSON nested too deeply"):
        read_json(bad)
    lines = tmp_path / "manifest.jsonl"
    lines.write_text('{"id": "a"}\n' + "[" * 100_000 + "\n")
    with pytest.raises(InputError, match=r"manifest.jsonl: line 2: JSON nested too deeply"):
        read_jsonl(lines)
    lines.write_bytes(b'{"id": "a"}\n{"id": "\xff"}\n')
    with pytest.raises(InputError, match=r"manifest.jsonl: not UTF-8 text"):
        read_jsonl(lines)


@pytest.mark.parametrize("text,field", [
    ('[{"id": 1' + "0" * 300 + ', "prompt_sd": "a cat", "classes": ["cat"]}]', "record 0: id"),
    ('[{"id": -1, "prompt_sd": "a cat", "classes": ["cat"]}]', "record 0: id"),
    ('[{"id": true, "prompt_sd": "a cat", "classes": ["cat"]}]', "record 0: id"),
    ("[" * 100_000 + "]" * 100_000, None),
])
def test_prompt_ids_and_depth(tmp_path, capsys, text, field, tiny):
    p = tmp_path / "p.json"
    p.write_text(text)
    with pytest.raises(InputError) as e:
        load_prompts(p)
    assert e.value.path == str(p) and e.value.field == field and len(str(e.value)) < 300
    _one_line(capsys, ["generate", "--out", str(tmp_path / "o"), *tiny, "--prompts", str(p)], "p.json")
    assert not (tmp_path / "o").exists()


def test_report_bad_files_are_one_line_and_write_nothing(tmp_path, capsys):
    root = make_dataset(tmp_path / "ds", n=2)
    out = tmp_path / "rep"
    manifest = (root / "manifest.jsonl").read_bytes()
    (root / "manifest.jsonl").write_bytes(manifest.replace(b'"cat"', b'"\xffcat"', 1))
    _one_line(capsys, ["report", str(root), "--out", str(out)], "manifest.jsonl", "not UTF-8")
    (root / "manifest.jsonl").write_bytes(manifest)
    settings = json.loads((root / "settings.json").read_text())
    (root / "settings.json").write_text(json.dumps(dict(settings, class_names=5)))
    _one_line(capsys, ["report", str(root), "--out", str(out)], "settings.json", "class_names")
    (root / "settings.json").write_text(json.dumps(settings))
    _one_line(capsys, ["report", str(root), "--out", str(out), "--samples", "0"], "samples")
    assert not out.exists()
    (tmp_path / "file").write_text("x")
    _one_line(capsys, ["report", str(root), "--out", str(tmp_path / "file" / "rep")], "--out", "cannot create")
    if Path("/proc/self").is_dir():
        _one_line(capsys, ["report", str(root), "--out", "/proc/pccseg-report"], "--out")


def test_show_bad_options_write_nothing(tmp_path, capsys):
    cdir = save_capture(tmp_path / "cap", small_capture())
    out = tmp_path / "pics" / "stages.png"
    _one_line(capsys, ["show", str(cdir), "--out", str(out), "--dpi", "0"], "--dpi")
    _one_line(capsys, ["show", str(cdir), "--out", str(out), "--heads", "-1"], "--heads")
    _one_line(capsys, ["show", str(cdir), "--out", str(out), "--thresholds", "1.5"], "--thresholds")
    assert not out.parent.exists()
    (tmp_path / "file").write_text("x")
    _one_line(capsys, ["show", str(cdir), "--out", str(tmp_path / "file" / "s.png")], "--out")


def test_generate_bad_out_and_settings_file(tmp_path, capsys, tiny):
    (tmp_path / "file").write_text("x")
    _one_line(capsys, ["generate", "--num", "1", "--out", str(tmp_path / "file" / "ds"), *tiny], "--out",
              "cannot create")
    if Path("/proc/self").is_dir():
        _one_line(capsys, ["generate", "--num", "1", "--out", "/proc/pccseg-ds", *tiny], "--out")
    out = tmp_path / "ds"
    out.mkdir()
    (out / "settings.json").write_bytes(b'{"model": "\xff"}')
    _one_line(capsys, ["generate", "--num", "1", "--out", str(out), *tiny], "settings.json", "not UTF-8")
    assert _files(out) == ["settings.json"]


# --------------------------------------------------------------------------- parameters, checked where they are defined


@pytest.mark.parametrize("name,value", [
    ("ks", (0,)), ("ks", (1,)), ("ks", (-3,)), ("ks", ()), ("ks", (4, 2.5)), ("thresholds", (1.5,)),
    ("thresholds", (-0.5,)), ("thresholds", (float("nan"),)), ("refine_k", 0), ("n_components", 0),
    ("ring_width", -1), ("kmeans_iters", 0), ("background_factor", -1.0), ("background_factor", math.inf),
    ("refine_subsample", -1), ("refine_subsample", 5), ("refine_min_segment", -1), ("dominance_share", 1.5),
    ("dominance_share", math.nan), ("cluster_connectivity", 6), ("vote_rule", "mine"), ("refine", 1),
    ("seed", -1), ("ring_width", 10**9), ("seed", 2**63),
])
def test_label_params_refuse_bad_values(name, value):
    with pytest.raises(InputError) as e:
        LabelParams(**{name: value})
    assert e.value.field == name
    with pytest.raises(InputError):
        LabelParams.preset("authors", **{name: value})


def test_every_label_param_is_checked_and_lists_become_tuples():
    assert all("check" in f.metadata and f.metadata["help"] for f in dataclasses.fields(LabelParams))
    p = LabelParams(ks=[4, 7], thresholds=[0.4, 0.6])
    assert p.ks == (4, 7) and p.thresholds == (0.4, 0.6) and p == LabelParams(ks=(4, 7), thresholds=(0.4, 0.6))
    assert LabelParams.preset("authors") != LabelParams()


def test_cli_refuses_label_params_before_writing(tmp_path, capsys, tiny):
    caps = tmp_path / "caps"
    save_capture(caps / "000000", small_capture())
    for argv, option in ((["--ks", "4", "1"], "--ks"), (["--refine-k", "0"], "--refine-k"),
                         (["--kmeans-seed", "-1"], "--kmeans-seed"), (["--thresholds", "nan"], "--thresholds")):
        line = _one_line(capsys, ["label", str(caps), "--out", str(tmp_path / "masks"), *argv], option)
        assert line.startswith(f"pccseg label: error: {option}: ")
        _one_line(capsys, ["generate", "--num", "1", "--out", str(tmp_path / "ds"), *tiny, *argv], option)
    assert not (tmp_path / "masks").exists() and not (tmp_path / "ds").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_guidance_must_be_finite_before_anything_is_written(tmp_path, capsys, pipe, records, value, tiny):
    out = tmp_path / "ds"
    _one_line(capsys, ["generate", "--num", "1", "--out", str(out), f"--guidance={value}", *tiny], "--guidance")
    with pytest.raises(InputError, match="guidance: must be a finite number"):
        gen(pipe, records[:1], out, guidance=float(value))
    with pytest.raises(InputError, match="batch_size"):
        gen(pipe, records[:1], out, batch_size=0)
    assert not out.exists()


@pytest.mark.parametrize("argv, needle, api", [
    (["--seed", str(2**64 - 1)], "--seed: must be an integer from 0 to 2**63 - 1", dict(seed=2**64 - 1)),
    (["--seed", str(2**63 - 1)], "it seeds 3 records", dict(seed=2**63 - 1)),      # seed + index overflows
    (["--tiny-seed", str(2**70)], "--tiny-seed: must be an integer from 0 to 2**63 - 1", None),
    (["--steps", "1000000000"], "--steps: must be an integer from 1 to 1000", dict(steps=10**9)),
    (["--guidance", "1e308"], "--guidance: must be a finite number from 0 to 100", dict(guidance=1e308)),
    (["--height", "65536"], "--height: must be a multiple of 8 from 8 to 4096", dict(height=65536)),
    (["--height", "4096", "--width", "4096", "--batch-size", "1000000"], "too large: decoding 1000000 image(s)",
     dict(height=4096, width=4096, batch_size=10**6)),
])
def test_options_that_would_fail_after_writing_are_refused_first(tmp_path, capsys, pipe, records, tiny, argv,
                                                                 needle, api):
    """Each of these wrote settings.json, the manifest and the split, then failed (or ran for hours)."""
    out = tmp_path / "ds"
    _one_line(capsys, ["generate", "--num", "3", "--out", str(out), *tiny, *argv], needle)
    assert not out.exists()
    if api is not None:                          # the API refuses the same
        with pytest.raises(InputError):
            gen(pipe, records, out, **api)
        assert not out.exists()


def test_a_run_that_fails_before_its_first_sample_does_not_lock_the_folder(tmp_path, pipe, records):
    """NaN images (here: a VAE with NaN weights) stop the run in one line before the sample is written;
    settings bind a folder only once it holds a sample, so the next run with other options goes on."""
    out = tmp_path / "ds"
    weight = pipe.vae.post_quant_conv.weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.fill_(float("nan"))
    try:
        with pytest.raises(InputError, match="guidance: sampling record .* gave NaN or inf values"):
            gen(pipe, records[:1], out)
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert (out / "settings.json").is_file() and not list((out / "SegmentationClass").glob("*.png"))
    report = gen(pipe, records[:1], out, seed=7)
    assert report.generated == 1 and json.loads((out / "settings.json").read_text())["seed"] == 7
    with pytest.raises(InputError, match="other settings"):           # now it holds a sample: bound
        gen(pipe, records[:1], out, seed=8)


# --------------------------------------------------------------------------- sample ids, input files


@pytest.mark.parametrize("name, needle", [("evil\n000000", "not a plain file name"), (".hidden", "not a plain file name"),
                                          ("x" * 201, "a name of 201 bytes is longer than the limit of 200")])
def test_capture_folder_names_are_checked_as_sample_ids(tmp_path, capsys, name, needle):
    """A capture folder's name becomes a sample id: checked like a split line or a manifest id (a line
    break injected a line into train.txt; .hidden wrote .hidden.png left out of the split)."""
    caps = tmp_path / "caps"
    save_capture(caps / name, small_capture())
    for src in (caps, caps / name) if not name.startswith(".") else (caps / name,):   # hidden: skipped in caps
        line = _one_line(capsys, ["label", str(src), "--out", str(tmp_path / "ds"), "--dataset", "-q"], needle)
        assert "capture folder name (the sample id)" in line
    assert not (tmp_path / "ds").exists()


def test_label_dot_inside_a_capture_folder_uses_its_name(tmp_path, monkeypatch):
    save_capture(tmp_path / "caps" / "000007", small_capture())
    monkeypatch.chdir(tmp_path / "caps" / "000007")
    assert cli.main(["label", ".", "--out", str(tmp_path / "ds"), "--dataset", "-q"]) == 0
    assert (tmp_path / "ds" / "ImageSets/Segmentation/train.txt").read_text() == "000007\n"
    assert sorted(p.name for p in (tmp_path / "ds" / "SegmentationClass").iterdir()) == ["000007.png"]


def test_capture_images_that_cannot_be_read_are_one_line(tmp_path, capsys):
    from PIL import Image

    from pccseg.capture.format import IMAGE_FILE

    caps = tmp_path / "caps"
    save_capture(caps / "000000", small_capture())
    Image.new("RGB", (20000, 20000)).save(caps / "000000" / IMAGE_FILE)            # a decompression bomb
    _one_line(capsys, ["label", str(caps), "--out", str(tmp_path / "m"), "-q"], f"{IMAGE_FILE}: image too large",
              code=2)
    (caps / "000000" / IMAGE_FILE).write_bytes(b"not an image")
    with pytest.raises(InputError, match="not an image"):
        load_capture(caps / "000000")


@pytest.mark.parametrize("link", ["SegmentationClass", "manifest.d", "captures/000000"])
def test_generate_never_writes_through_a_link_in_the_dataset(tmp_path, capsys, tiny, link):
    """A dataset folder (or a capture folder, on resume) that is a symbolic link is refused in one line;
    what it points to is untouched."""
    out = tmp_path / "ds"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / link).parent.mkdir(parents=True)
    (out / link).symlink_to(elsewhere, target_is_directory=True)
    _one_line(capsys, ["generate", "--num", "1", "--out", str(out), "--keep-captures", *tiny],
              f"{link}: is a symbolic link")
    assert list(elsewhere.iterdir()) == [] and sorted(p.name for p in out.iterdir()) == [link.split("/")[0]]


# --------------------------------------------------------------------------- temporary names, the umask


def test_temporary_names_are_recognised_and_removed(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "m.png") as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".m.png.") and tmp.name.endswith(TEMP_SUFFIX)
            raise RuntimeError
    # what a kill leaves: a file, a folder, and names that are not ours
    (tmp_path / f".m.png.1234abcd{TEMP_SUFFIX}").write_bytes(b"")
    (tmp_path / f".x.json.1234abcd{TEMP_SUFFIX}").write_bytes(b"")
    (tmp_path / f".000001.5678ef01{TEMP_SUFFIX}").mkdir()
    (tmp_path / f".000001.5678ef01{TEMP_SUFFIX}" / "image.png").write_bytes(b"x")
    (tmp_path / ".keep.tmp").write_text("another tool's")
    (tmp_path / f"visible{TEMP_SUFFIX}").write_text("not hidden")
    assert remove_temps(tmp_path, name="m.png") == 1
    assert remove_temps(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".keep.tmp", f"visible{TEMP_SUFFIX}"]


def _replace_killed_at(final: Path, n: int) -> None:
    """Replace the folder ``final`` by one holding ``new.txt``, in a forked child killed (``os._exit``,
    no clean-up) at its ``n``-th rename."""
    import multiprocessing

    def child():
        calls, real = [0], os.replace

        def replace(a, b):
            calls[0] += 1
            if calls[0] == n:
                os._exit(9)
            real(a, b)
        os.replace = replace
        with atomic_path(final, directory=True) as tmp:
            (tmp / "new.txt").write_text("new")
        os._exit(0)

    proc = multiprocessing.get_context("fork").Process(target=child)
    proc.start()
    proc.join(30)
    assert proc.exitcode == 9


@pytest.mark.parametrize("n", [1, 2])
def test_a_folder_replaced_atomically_is_never_missing_after_a_kill(tmp_path, n):
    """Killed before renaming the old copy aside (1) or between that and renaming the new one in (2): a
    complete copy is there under the final name, or under temporary names that remove_temps puts back
    (the new one, as it is complete). No kill point loses both."""
    final = tmp_path / "last"
    final.mkdir()
    (final / "old.txt").write_text("old")
    _replace_killed_at(final, n)
    names = sorted(p.name for p in tmp_path.iterdir())
    if n == 2:
        assert "last" not in names and any(x.endswith(".old" + TEMP_SUFFIX) for x in names), names
    remove_temps(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    assert sorted(p.name for p in final.iterdir()) == (["old.txt"] if n == 1 else ["new.txt"])
    # a temporary folder without an aside is restored only when the caller recognises it as complete
    final.rename(tmp_path / f".last.0123abcd{TEMP_SUFFIX}")
    remove_temps(tmp_path, complete=lambda p: (p / "new.txt").is_file() and n == 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["last"] if n == 2 else [])


def test_read_jsonl_drops_only_a_torn_last_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"a": 1}\n{"a": 2')
    assert read_jsonl(path, torn_tail=True) == [{"a": 1}]
    with pytest.raises(InputError, match="line 2: not valid JSON"):
        read_jsonl(path)
    path.write_text('{"a": 1}\n{"a": 2\n')          # ends with its newline: not torn, refused
    with pytest.raises(InputError, match="line 2: not valid JSON"):
        read_jsonl(path, torn_tail=True)


def _modes(root: Path) -> set[tuple[str, int]]:
    return {("d" if p.is_dir() else "f", stat.S_IMODE(p.stat().st_mode)) for p in [root, *root.rglob("*")]}


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_files_and_folders_respect_the_umask(tmp_path, pipe, records, umask):
    old = os.umask(umask)
    try:
        gen(pipe, records[:1], tmp_path / "ds", keep_captures=True)
        assert cli.main(["label", str(tmp_path / "ds" / "captures"), "--out", str(tmp_path / "m"), "-q"]) == 0
    finally:
        os.umask(old)
    want = {("f", 0o666 & ~umask), ("d", 0o777 & ~umask)}
    assert _modes(tmp_path / "ds") == want and _modes(tmp_path / "m") == want


# --------------------------------------------------------------------------- generate: reruns repair


def test_torn_manifest_lines_are_dropped_and_their_samples_made_again(tmp_path, pipe, records):
    out = tmp_path / "ds"
    gen(pipe, records, out)
    masks = {s: (out / "SegmentationClass" / f"{s}.png").read_bytes() for s in ("000000", "000001", "000002")}
    shard = out / "manifest.d" / "rank-0000.jsonl"
    lines = shard.read_text().splitlines(keepends=True)
    # a kill while sample 1's line was being appended (its mask was not written yet) ...
    (out / "SegmentationClass" / "000001.png").unlink()
    # ... and sample 2's line lost while its files are there (e.g. torn in the middle of the shard)
    shard.write_text(lines[0] + lines[2][:25] + "\n" + lines[1][:40])
    rep = gen(pipe, records, out)
    assert sorted(rep.stems) == ["000001", "000002"]
    assert [e["id"] for e in read_manifest(out)] == ["000000", "000001", "000002"]
    assert [json.loads(x)["id"] for x in shard.read_text().splitlines()] == ["000000", "000001", "000002"]
    assert {s: (out / "SegmentationClass" / f"{s}.png").read_bytes() for s in masks} == masks
    # an append after a torn last line starts on a fresh line
    with open(shard, "a") as f:
        f.write('{"id": "0000')
    DatasetFolder(out).append_manifest(0, {"id": "000009"})
    assert shard.read_text().splitlines()[-1] == '{"id": "000009"}'


def test_rerun_removes_the_temporary_files_of_a_killed_run(tmp_path, tiny):
    out = tmp_path / "ds"
    argv = ["generate", "--num", "2", "--out", str(out), "--keep-captures", *tiny]
    assert cli.main(argv) == 0
    planted = [out / "SegmentationClass" / f".000001.png.0badf00d{TEMP_SUFFIX}",
               out / "JPEGImages" / f".000001.jpg.0badf00d{TEMP_SUFFIX}",
               out / f".manifest.jsonl.0badf00d{TEMP_SUFFIX}",
               out / "ImageSets" / "Segmentation" / f".train.txt.0badf00d{TEMP_SUFFIX}"]
    planted += [out / "manifest.d" / f".rank-0000.jsonl.0badf00d{TEMP_SUFFIX}",   # every folder it writes
                out / "ImageSets" / f".x.0badf00d{TEMP_SUFFIX}",
                out / "VOCdevkit" / "VOC2012" / f".JPEGImages.0badf00d{TEMP_SUFFIX}",
                out / "captures" / "000001" / f".capture.json.0badf00d{TEMP_SUFFIX}"]
    for p in planted:
        p.write_bytes(b"")
    (out / "captures" / f".000001.0badf00d{TEMP_SUFFIX}").mkdir()
    shard = out / "manifest.d" / "rank-0000.jsonl"                  # a kill between the append and the mask
    shard.write_text(shard.read_text() + shard.read_text().splitlines(keepends=True)[0])
    assert cli.main(argv) == 0                                      # all done: no model, still cleaned
    assert _temps(out) == []
    assert [json.loads(x)["id"] for x in shard.read_text().splitlines()] == ["000000", "000001"]
    planted[0].write_bytes(b"")
    assert cli.main(argv[:2] + ["3"] + argv[3:]) == 0              # a run with work to do cleans too
    assert _temps(out) == [] and len(read_manifest(out)) == 3
    masks = tmp_path / "masks"
    assert cli.main(["label", str(out / "captures"), "--out", str(masks), "-q"]) == 0
    (masks / f".000000.png.0badf00d{TEMP_SUFFIX}").write_bytes(b"")
    assert cli.main(["label", str(out / "captures"), "--out", str(masks), "-q"]) == 0
    assert _temps(masks) == []


# --------------------------------------------------------------------------- label


def test_relabelling_saved_captures_gives_the_dataset_masks(tmp_path, pipe, records, monkeypatch):
    from pccseg.labellers import registry
    from pccseg.labellers.pcc import label

    seen = {}

    def recording(cap, params):
        seen[cap.meta["record_id"]] = cap
        return label(cap, params)

    out = tmp_path / "ds"
    with monkeypatch.context() as m:
        m.setattr(registry, "label", recording)
        gen(pipe, records, out, keep_captures=True, label_workers=0)
    for r in records:
        saved = load_capture(out / "captures" / r.stem)
        for k, v in seen[r.id].self_attn.items():
            assert torch.equal(v, saved.self_attn[k]), k                # labelled what was saved
    assert cli.main(["label", str(out / "captures"), "--out", str(tmp_path / "relabel"), "-q"]) == 0
    for r in records:
        np.testing.assert_array_equal(load_mask(tmp_path / "relabel" / f"{r.stem}.png"),
                                      load_mask(out / "SegmentationClass" / f"{r.stem}.png"))


def test_label_params_json_is_written_with_the_first_mask(tmp_path, capsys):
    caps = tmp_path / "caps"
    save_capture(caps / "000000", small_capture())
    (caps / "000000" / "capture.json").write_bytes(b"\xff")
    out = tmp_path / "masks"
    _one_line(capsys, ["label", str(caps), "--out", str(out), "-q"], "capture.json", "not UTF-8")
    assert _files(out) == []
    save_capture(caps / "000001", small_capture(seed=1))
    assert cli.main(["label", str(caps), "--out", str(out), "-q", "--keep-going"]) == 2
    assert _files(out) == ["000001.png", "label_params.json"]
    (tmp_path / "file").write_text("x")
    _one_line(capsys, ["label", str(caps), "--out", str(tmp_path / "file" / "m")], "--out")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_cuda_on_a_machine_without_it_is_one_line(tmp_path, capsys):
    cdir = save_capture(tmp_path / "caps" / "000000", small_capture())
    _one_line(capsys, ["label", str(cdir), "--out", str(tmp_path / "m"), "--device", "cuda"], "--device", "CUDA")
    _one_line(capsys, ["show", str(cdir), "--out", str(tmp_path / "s.png"), "--device", "cuda:1"], "--device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["caps"]


# --------------------------------------------------------------------------- SIGTERM


def test_sigterm_is_raised_like_ctrl_c_after_the_held_block():
    before = signal.getsignal(signal.SIGTERM)
    steps = []
    with pytest.raises(Terminated):
        with handle_interrupts():
            with hold_interrupts():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.01)
                steps.append("finished the write")
            steps.append("not reached")
    assert steps == ["finished the write"]
    with pytest.raises(Terminated):
        with handle_interrupts():
            try:
                with hold_interrupts():
                    os.kill(os.getpid(), signal.SIGTERM)
            finally:
                os.kill(os.getpid(), signal.SIGTERM)        # a second one, during the clean-up: ignored
                time.sleep(0.01)
                steps.append("cleaned up")
    assert steps == ["finished the write", "cleaned up"]
    with pytest.raises(KeyboardInterrupt):
        with handle_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
            steps.append("not reached")
    assert steps == ["finished the write", "cleaned up"] and signal.getsignal(signal.SIGTERM) is before
    with hold_interrupts():                                     # no handler installed: holds nothing
        pass


def test_a_hold_in_another_thread_does_not_defer_the_main_threads_signal():
    # label() holds signals around its thread pool; called from a thread of the caller's, its hold deferred a
    # SIGTERM of the main thread and then raised it in that thread, where nobody stops for it
    inside, leave, raised = threading.Event(), threading.Event(), []

    def held_elsewhere() -> None:
        try:
            with hold_interrupts():
                inside.set()
                leave.wait(5)
        except BaseException as e:                                # pragma: no cover - the failure
            raised.append(e)

    thread = threading.Thread(target=held_elsewhere)
    with pytest.raises(Terminated), handle_interrupts():
        thread.start()
        inside.wait(5)
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)                                         # raised here, at once
        finally:
            leave.set()
            thread.join()
    assert raised == []


def _stop_signals_blocked(*_) -> list[int]:
    return sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, []) & {signal.SIGINT, signal.SIGTERM})


class _WorkerState(torch.utils.data.Dataset):
    """Item i: the worker's pid and its blocked stop signals (slowly: a worker stays busy)."""

    def __len__(self) -> int:
        return 1000

    def __getitem__(self, i: int) -> tuple[int, list[int]]:
        time.sleep(0.01)
        return os.getpid(), _stop_signals_blocked()


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="needs pthread_sigmask")
def test_dataloader_workers_start_blocked_and_end_quietly_on_a_signal_from_anyone(tmp_path):
    # As `pccseg train` and `evaluate` start their workers. (1) A signal in a forked worker's first moments
    # would run the handler it inherited and raise into its copy of the training loop's stack. (2) torch's
    # own SIGTERM handler let a worker exit quietly only for its parent's SIGTERM: Slurm's (every process of
    # the job) killed it, and torch's SIGCHLD handler raised "DataLoader worker ... is killed by signal"
    # over pccseg's own SIGTERM.
    import subprocess

    from pccseg.signals import blocked_for_children, dataloader_worker_init

    seen = tmp_path / "at_start.json"

    def init(worker_id: int) -> None:                           # the worker's state before it unblocks
        seen.write_text(json.dumps(_stop_signals_blocked()))
        dataloader_worker_init(worker_id)

    loader = torch.utils.data.DataLoader(_WorkerState(), batch_size=None, num_workers=1, worker_init_fn=init,
                                         multiprocessing_context="fork")
    with handle_interrupts():
        with blocked_for_children():
            batches = iter(loader)
        assert _stop_signals_blocked() == []                    # here only while the workers start
        pid, blocked = next(batches)
        assert json.loads(seen.read_text()) == sorted([int(signal.SIGINT), int(signal.SIGTERM)])
        assert blocked == []
        subprocess.run(["kill", "-TERM", str(pid)], check=True)  # from another process, as Slurm's
        worker = batches._workers[0]
        worker.join(10)
        assert worker.exitcode == 0                             # ended by its loop, not killed
        batches._shutdown_workers()


# --------------------------------------------------------------------------- the first minute (issue 10)


def test_help_imports_no_heavy_module():
    code = """if True:
        import sys
        from pccseg.cli import main
        for cmd in ([], ["generate"], ["label"], ["train"], ["evaluate"], ["show"], ["report"]):
            try:
                main(cmd + ["--help"])
            except SystemExit as e:
                assert e.code == 0, cmd
        heavy = ("torch", "torchvision", "diffusers", "transformers", "matplotlib", "safetensors", "accelerate")
        print(sorted(m for m in sys.modules if m.split(".")[0] in heavy))
    """
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "[]"


def test_report_help_and_counts(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["report", "--help"])
    out = capsys.readouterr().out
    assert "DATASET_OR_RUN_DIR a dataset directory" in " ".join(out.split())
    root = make_dataset(tmp_path / "ds", n=1)
    assert cli.main(["report", str(root), "--out", str(tmp_path / "rep")]) == 0
    html = (tmp_path / "rep" / "index.html").read_text()
    assert ": 1 image, 21 classes;" in html and "1 images" not in html


@pytest.fixture()
def no_hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))


def test_unreachable_hub_fails_fast_with_one_line(no_hub_cache, monkeypatch, tmp_path, capsys):
    import huggingface_hub

    import pccseg.capture.pipeline as P

    asked = []

    def refused(url, timeout=None, **kw):
        asked.append(timeout)
        raise ConnectionError("[Errno -2] Name or service not known")

    def no_download(*a, **k):
        raise AssertionError("downloaded with retries")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", refused)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="hub cannot be reached"):
        P.check_model("someone/some-model")
    assert time.perf_counter() - t0 < 2 and asked == [P.HUB_TIMEOUT] and P.HUB_TIMEOUT <= 10
    _one_line(capsys, ["generate", "--model", "someone/some-model", "--out", str(tmp_path / "o")],
              "--model", "hub cannot be reached")
    assert not (tmp_path / "o").exists()

    # a hub that never answers (a resolver or proxy that hangs): given up after HUB_TIMEOUT
    release = threading.Event()
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda url, **kw: release.wait(30))
    monkeypatch.setattr(P, "HUB_TIMEOUT", 0.3)
    t0 = time.perf_counter()
    try:
        with pytest.raises(InputError, match="hub cannot be reached"):
            P.check_model("someone/some-model")
    finally:
        release.set()
    assert time.perf_counter() - t0 < 2


# --------------------------------------------------------------------------- workers die with their parent


def _pdeathsig() -> int:
    """This process's parent-death signal (Linux prctl PR_GET_PDEATHSIG)."""
    import ctypes

    value = ctypes.c_int(0)
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(2, ctypes.byref(value))
    return value.value


def _pdeathsig_of(_) -> int:
    return _pdeathsig()


class _PdeathsigDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, i):
        return _pdeathsig()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_die_with_a_killed_main_process():
    """DataLoader and labelling workers ask the OS for SIGKILL when their parent dies (they outlived a
    SIGKILLed command by seconds), the experiment's for SIGTERM."""
    from pccseg.labellers.workers import LabelPool
    from pccseg.signals import blocked_for_children, dataloader_worker_init

    with blocked_for_children():
        loader = iter(torch.utils.data.DataLoader(_PdeathsigDataset(), num_workers=1,
                                                  worker_init_fn=dataloader_worker_init))
    assert int(next(loader)) == signal.SIGKILL
    with LabelPool(LabelParams(), 1) as pool:
        assert pool.result(pool._send(_pdeathsig_of, None)) == signal.SIGKILL
