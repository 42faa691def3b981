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


def test_errors_name_the_whole_command(tmp_path, capsys):
    assert main(["toy", "train", "--out", str(tmp_path / "t"), "--low-steps", "4", "--high-steps", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pccseg toy train: error: --decay-steps")
    assert main(["label", str(tmp_path / "none"), "--out", str(tmp_path / "m")]) == 2
    assert capsys.readouterr().err.startswith("pccseg label: error:")
