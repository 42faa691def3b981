"""The command line as a newcomer meets it: -v before or after the command shows pccseg's debug lines,
errors name the full command."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pccseg.cli import build_parser, main

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _pccseg(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "pccseg", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def capture_dir(tmp_path_factory):
    from pccseg.capture.format import save_capture
    from pccseg.capture.synthetic import SD21, planted_capture

    root = tmp_path_factory.mktemp("caps")
    save_capture(root / "000000", planted_capture(image_size=(64, 64), latent=(16, 16), layers=SD21[::3],
                                                  heads_per_layer=2, head_dim=8))
    return root / "000000"


def test_verbose_is_accepted_after_the_command_too():
    for argv in (["-v", "label", "c", "--out", "o"], ["label", "c", "--out", "o", "-v"],
                 ["toy", "train", "--out", "o", "--verbose"]):
        assert build_parser().parse_args(argv).verbose is True
    assert build_parser().parse_args(["label", "c", "--out", "o"]).verbose is False


def test_verbose_shows_pccseg_debug_lines(capture_dir, tmp_path):
    args = ["label", str(capture_dir), "--out", str(tmp_path / "m"), "-q"]
    r = _pccseg(*args, "-v")
    assert r.returncode == 0, r.stderr
    debug = [line for line in r.stderr.splitlines() if line.startswith("DEBUG pccseg")]
    assert any("labelled in" in line and "pca" in line for line in debug), r.stderr   # per-stage timings
    quiet = _pccseg(*args, "--overwrite")
    assert quiet.returncode == 0 and "DEBUG" not in quiet.stderr


def test_errors_name_the_whole_command(tmp_path, capsys):
    assert main(["toy", "train", "--out", str(tmp_path / "t"), "--low-steps", "4", "--high-steps", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pccseg toy train: error: --decay-steps")
    assert main(["label", str(tmp_path / "none"), "--out", str(tmp_path / "m")]) == 2
    assert capsys.readouterr().err.startswith("pccseg label: error:")
