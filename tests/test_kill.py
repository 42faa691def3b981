"""Real ``pccseg generate`` processes killed mid-run (SIGKILL) and stopped (SIGTERM), then run again: the
dataset equals an uninterrupted run's, byte for byte, and no temporary file is left. And the stress test:
``generate``, ``train`` and ``export`` killed at every write point in turn (``pccseg.io``'s test hook,
``PCCSEG_TEST_KILL_AT``), each followed by a rerun that must finish with the uninterrupted run's output.

The processes are forked from this one (Linux), so that they start with torch and diffusers imported:
a fresh interpreter takes seconds to import them. They run torch on one thread (and so does the uninterrupted
reference run): GNU OpenMP cannot start a team of threads in a child forked from a process whose main thread
has one (the team's other threads were not copied, and the child waits for them at the first barrier), which
hung this test when other tests had run a team first."""

import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

import pytest

import torch

from pccseg import cli
from pccseg.labellers.pcc import torch_threads
from pccseg.io import TEMP_SUFFIX
from pccseg.vocab import VOC_CLASSES

ARGS = ["generate", "--model", "tiny", "--height", "64", "--width", "64", "--steps", "2", "-q", "--keep-captures"]

if "fork" not in multiprocessing.get_all_start_methods():  # pragma: no cover
    pytest.skip("needs fork", allow_module_level=True)


def _generate(argv: list[str], stderr: str) -> None:
    torch.set_num_threads(1)                   # no OpenMP team in a forked child (see above)
    sys.stderr = open(stderr, "w", buffering=1)
    sys.exit(cli.main(argv))


def _start(argv: list[str], stderr: Path):
    proc = multiprocessing.get_context("fork").Process(target=_generate, args=(argv, str(stderr)))
    proc.start()
    return proc


def _count(folder: Path, pattern: str) -> int:
    return sum(1 for p in folder.glob(pattern) if not p.name.startswith(".")) if folder.is_dir() else 0


def _wait(proc, ready, timeout: float = 120) -> None:
    """Poll every millisecond until ``ready()`` or the process ends."""
    end = time.monotonic() + timeout
    while proc.is_alive() and not ready() and time.monotonic() < end:
        time.sleep(0.001)


def _snapshot(root: Path) -> dict[str, object]:
    """Every file's bytes, the manifest without its timings."""
    files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    for shard in [f for f in files if f.startswith("manifest")]:
        files.pop(shard)
    manifest = [json.loads(x) for x in (root / "manifest.jsonl").read_text().splitlines()]
    for e in manifest:
        e.pop("timings")
    return dict(files=files, manifest=manifest)


def test_killed_and_terminated_runs_resume_to_the_uninterrupted_dataset(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt_sd": f"a photo of a {c}", "classes": [c]}) + "\n"
                               for i, c in enumerate(VOC_CLASSES[1:9])))
    ref, out = tmp_path / "ref", tmp_path / "run"
    argv = ARGS + ["--prompts", str(prompts), "--out", str(out)]
    with torch_threads(1):                     # as the children run (the images change with the threads)
        assert cli.main(ARGS + ["--prompts", str(prompts), "--out", str(ref)]) == 0
    masks, images = out / "SegmentationClass", out / "JPEGImages"

    # SIGKILL while a sample is being generated, then while one is being written (image there, mask not yet)
    err = tmp_path / "stderr.txt"
    for ready in (lambda: _count(masks, "*.png") >= 2,
                  lambda: _count(images, "*.jpg") > _count(masks, "*.png") >= 3):
        proc = _start(argv, err)
        _wait(proc, ready)
        proc.kill()
        proc.join()

    # SIGTERM: the sample in hand is finished, the index rebuilt, one line, exit code 143
    proc = _start(argv, err)
    _wait(proc, lambda: _count(masks, "*.png") >= 5)
    proc.terminate()
    proc.join(120)
    if proc.exitcode != 0:                                     # 0: it had finished before the signal
        lines = err.read_text().strip().splitlines()
        assert proc.exitcode == 143 and lines[-1] == "pccseg generate: terminated (SIGTERM)", lines
        listed = (out / "ImageSets/Segmentation/train.txt").read_text().split()
        assert listed == sorted(p.stem for p in masks.glob("*.png")) and len(listed) >= 5
        assert [json.loads(x)["id"] for x in (out / "manifest.jsonl").read_text().splitlines()] == listed

    with torch_threads(1):
        assert cli.main(argv) == 0
    assert not [p for p in out.rglob("*") if p.name.endswith(TEMP_SUFFIX) or p.name.startswith(".")]
    got, want = _snapshot(out), _snapshot(ref)
    assert got["manifest"] == want["manifest"]
    assert sorted(got["files"]) == sorted(want["files"])
    assert [f for f in want["files"] if got["files"][f] != want["files"][f]] == []


# ----------------------------------------------------------------------------------------------------------
# kills injected at every write point (pccseg.io's test hook: the N-th rename of atomic_path ends the
# process as a SIGKILL would), each followed by a rerun that must finish as an uninterrupted run
def _cli_child(argv: list[str], stderr: str, kill_at: int | None) -> None:
    import os

    from pccseg.io import KILL_AT_ENV

    torch.set_num_threads(1)
    if kill_at is not None:
        os.environ[KILL_AT_ENV] = str(kill_at)
    sys.stderr = open(stderr, "w", buffering=1)
    sys.exit(cli.main(argv))


def _run(argv: list[str], tmp_path: Path, kill_at: int | None = None) -> int:
    proc = multiprocessing.get_context("fork").Process(target=_cli_child,
                                                       args=(argv, str(tmp_path / "stderr.txt"), kill_at))
    proc.start()
    proc.join(300)
    return proc.exitcode


def _no_temps(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.endswith(TEMP_SUFFIX)]


def _every_write_point(tmp_path: Path, argv_for, outputs, *, prepare=None) -> int:
    """For N = 1, 2, ...: a fresh output killed at its N-th write, then rerun; each must give the
    uninterrupted run's ``outputs``. Returns how many write points there were."""
    ref = tmp_path / "ref"
    with torch_threads(1):                     # here: the children fork with everything imported (fast)
        assert cli.main(argv_for(ref)) == 0
    want = outputs(ref)
    n = 1
    while True:
        out = tmp_path / f"killed-at-{n}"
        if prepare is not None:
            prepare(out)
        code = _run(argv_for(out), tmp_path, kill_at=n)
        if code == 0:                                   # past the last write point
            return n - 1
        assert code == 137, (n, (tmp_path / "stderr.txt").read_text())
        assert _run(argv_for(out), tmp_path) == 0, (n, (tmp_path / "stderr.txt").read_text())
        assert _no_temps(out), n
        assert outputs(out) == want, n
        n += 1


def test_kills_at_every_write_point_of_train_resume_to_the_uninterrupted_run(tmp_path):
    from pccseg.dataset.synthetic import make_blocks_tree
    from test_train import _cli_args

    data = make_blocks_tree(tmp_path / "data", n=2, size=32)

    def outputs(run: Path) -> dict:
        log = [{k: v for k, v in json.loads(x).items() if k != "time"} for x in (run / "log.jsonl").read_text().splitlines()]
        meta = json.loads((run / "last" / "checkpoint.json").read_text())
        meta.pop("train_seconds")
        meta["config"].pop("out")
        config = json.loads((run / "config.json").read_text())
        config.pop("out")
        return dict(files=sorted(str(p.relative_to(run)) for p in run.rglob("*")), log=log, meta=meta, config=config,
                    weights=(run / "last" / "model.safetensors").read_bytes(),
                    state=(run / "last" / "training.safetensors").read_bytes())

    argv = lambda run: _cli_args(data, run, iters=2, **{"--val-every": 2, "--save-every": 1})  # noqa: E731
    points = _every_write_point(tmp_path, argv, outputs)
    assert points >= 8           # config.json, log.jsonl, and two checkpoints of three renames or more each


def test_kills_at_every_write_point_of_export_leave_a_complete_copy(tmp_path):
    import shutil

    datasets = pytest.importorskip("datasets")
    from pccseg.dataset.synthetic import make_blocks_tree

    root = make_blocks_tree(tmp_path / "ds", n=2, size=32)

    def outputs(out: Path) -> dict:
        back = datasets.load_from_disk(str(out))
        rows = [(r["id"], r["image"].tobytes(), r["mask"].tobytes()) for r in back["train"]]
        return dict(files=sorted(p.name for p in out.iterdir()), rows=rows)

    def earlier_export(out: Path) -> None:          # replacing one: the old copy is renamed aside first
        shutil.copytree(tmp_path / "ref", out)

    system_temps = set(Path(tempfile.gettempdir()).iterdir())
    points = _every_write_point(tmp_path, lambda out: ["export", str(root), "--out", str(out), "-q"], outputs,
                                prepare=earlier_export)
    assert points == 2
    # datasets' arrow cache of a killed export is beside OUT, removed by the rerun; none in the system temp
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(TEMP_SUFFIX)]
    assert not [p.name for p in set(Path(tempfile.gettempdir()).iterdir()) - system_temps
                if p.name.startswith("pccseg-export-")]


def test_kills_at_every_write_point_of_generate_resume_to_the_uninterrupted_dataset(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt_sd": f"a photo of a {c}", "classes": [c]}) + "\n"
                               for i, c in enumerate(VOC_CLASSES[1:2])))
    points = _every_write_point(tmp_path, lambda out: ARGS + ["--prompts", str(prompts), "--out", str(out)],
                                _snapshot)
    assert points >= 8           # settings, the image, the capture's files and folder, the mask, the index
