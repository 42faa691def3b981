"""The foundation: vocabulary, palette, atomic writes, the CLI's error contract."""

import numpy as np
import pytest
from PIL import Image

from pccseg import cli
from pccseg.errors import InputError
from pccseg.io import atomic_path, load_mask, save_mask, write_json
from pccseg.vocab import VOC_CLASSES, VOC_PALETTE, class_index, prompt_word


def test_voc_palette_known_colours():
    assert VOC_PALETTE.shape == (256, 3)
    assert tuple(VOC_PALETTE[0]) == (0, 0, 0)
    assert tuple(VOC_PALETTE[1]) == (128, 0, 0)          # aeroplane
    assert tuple(VOC_PALETTE[15]) == (192, 128, 128)     # person
    assert tuple(VOC_PALETTE[20]) == (0, 64, 128)        # tvmonitor
    assert tuple(VOC_PALETTE[255]) == (224, 224, 192)    # uncertain / void


def test_class_names_and_renames():
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[0] == "background"
    assert class_index("person") == 15
    assert prompt_word("pottedplant") == "pot plant" and prompt_word("cat") == "cat"
    with pytest.raises(KeyError, match="unknown class 'unicorn'"):
        class_index("unicorn")


def test_mask_round_trip_is_a_palette_png(tmp_path):
    mask = np.random.default_rng(0).integers(0, 21, (13, 17)).astype(np.uint8)
    mask[0, :5] = 255
    save_mask(tmp_path / "m.png", mask)
    with Image.open(tmp_path / "m.png") as img:
        assert img.mode == "P" and img.size == (17, 13)
        assert img.getpalette()[15 * 3:15 * 3 + 3] == [192, 128, 128]
    np.testing.assert_array_equal(load_mask(tmp_path / "m.png"), mask)
    assert [p.name for p in tmp_path.iterdir()] == ["m.png"]


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text().strip().startswith("{") and '"a": 1' in target.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "d", directory=True) as tmp:
            (tmp / "x").write_text("x")
            raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_input_error_names_file_and_field():
    e = InputError("contains NaN or Inf", path="cap/capture.safetensors", field="token_maps")
    assert str(e) == "cap/capture.safetensors: token_maps: contains NaN or Inf"


def test_cli_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in ("generate", "label", "train", "evaluate", "show", "report", "export"):
        assert name in out


def test_cli_logs_pccseg_at_info_and_other_libraries_from_warning(tmp_path):
    # other libraries at INFO were shown: torch logged its cache statistics after every command (4 lines)
    import subprocess
    import sys

    code = ("import logging, sys; from pccseg import cli; rc = cli.main(sys.argv[1:]); "
            "[logging.getLogger(n).log(level, n + ' ' + logging.getLevelName(level)) "
            " for n in ('pccseg.x', 'somelib.x') for level in (logging.DEBUG, logging.INFO, logging.WARNING)]")
    args = ["label", str(tmp_path / "none"), "--out", str(tmp_path / "out")]
    train = ["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "run")]
    for verbose, shown, cmd in (
            ([], {"pccseg.x INFO", "pccseg.x WARNING", "somelib.x WARNING"}, args),
            (["-v"], {"pccseg.x DEBUG", "pccseg.x INFO", "pccseg.x WARNING", "somelib.x INFO", "somelib.x WARNING"},
             args),
            # quiet, by the command's flag (-q or --no-progress): no progress lines, warnings stay
            ([], {"pccseg.x WARNING", "somelib.x WARNING"}, [*args, "-q"]),
            ([], {"pccseg.x WARNING", "somelib.x WARNING"}, [*train, "--no-progress"]),
            ([], {"pccseg.x INFO", "pccseg.x WARNING", "somelib.x WARNING"}, train)):
        err = subprocess.run([sys.executable, "-c", code, *verbose, *cmd], capture_output=True, text=True,
                             timeout=120).stderr
        lines = {line.split(": ", 1)[1] for line in err.splitlines() if line.startswith(("DEBUG", "INFO", "WARN"))}
        assert {x for x in lines if x.startswith(("pccseg.x", "somelib.x"))} == shown, err
        from pccseg import __version__

        assert bool(verbose) == any(x.startswith(f"pccseg {__version__}: ") for x in lines)   # -v: its own line


def test_public_api_names_resolve():
    import pccseg

    for name in pccseg.__all__:
        assert getattr(pccseg, name) is not None, name
