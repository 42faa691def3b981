"""The vocabulary of parameter constraints (pccseg.params), and that every parameter dataclass declares its
fields with it: the API refuses what the command line refuses, and help() shows each field's help."""

import dataclasses
import math
import pydoc

import numpy as np
import pytest

from pccseg.cli import main
from pccseg.commands.generate import NOT_OPTIONS
from pccseg.commands.label_options import OPTION_NAMES
from pccseg.dataset.generate import GenerateConfig
from pccseg.dataset.filter import FilterRule
from pccseg.errors import InputError
from pccseg.labellers.attn import AttnParams
from pccseg.labellers.dd import DDParams
from pccseg.labellers.fuse import FuseParams
from pccseg.labellers.pcc import LabelParams
from pccseg.params import (SEED, Bool, Choice, Int, Interval, OrNone, Real, Seq, Where, add_options, check,
                           constraint, option_name, param, parameters)
from pccseg.toy.config import ExperimentConfig, ToyTrainConfig
from pccseg.train.config import TrainConfig


def refused(c, value) -> str:
    with pytest.raises(ValueError) as e:
        c(value)
    return str(e.value)


# --------------------------------------------------------------------------- the vocabulary


def test_integer_interval_ends_and_types():
    c = Int(1, 3)
    assert [c(v) for v in (1, 2, 3)] == [1, 2, 3]
    assert type(c(np.int64(2))) is int                                   # numpy integers become int
    for bad in (0, 4, True, 2.0, "2", None, np.float64(2)):
        assert refused(c, bad) == f"must be an integer from 1 to 3, got {bad!r}"
    assert refused(Int(1), 0) == "must be an integer >= 1, got 0"
    assert refused(Int(hi=5), 6) == "must be an integer <= 5, got 6"
    assert refused(SEED, -1) == "must be an integer from 0 to 2**63 - 1, got -1"
    assert SEED(2**63 - 1) == 2**63 - 1 and refused(SEED, 2**63)
    assert refused(Int(2, why="BatchNorm"), 1) == "must be an integer >= 2 (BatchNorm), got 1"


@pytest.mark.parametrize("closed, lo_in, hi_in, text", [
    ("both", True, True, "a finite number from 0 to 1"), ("left", True, False, "a finite number >= 0 and < 1"),
    ("right", False, True, "a finite number > 0 and <= 1"), ("neither", False, False, "a finite number > 0 and < 1")])
def test_real_interval_open_and_closed_ends(closed, lo_in, hi_in, text):
    c = Real(0, 1, closed)
    assert c.text == text and c(0.5) == 0.5
    for end, inside in ((0, lo_in), (1, hi_in)):
        if inside:
            assert c(end) == end and type(c(end)) is float               # an int end is kept as a float
        else:
            assert refused(c, end) == f"must be {text}, got {end!r}"
    for bad in (math.nan, math.inf, -math.inf, True, "0.5", None):
        assert refused(c, bad).startswith(f"must be {text}, got ")
    assert refused(Real(0, closed="neither"), math.inf) == "must be a finite number > 0, got inf"
    assert Real()(-1e300) == -1e300 and refused(Real(), math.nan) == "must be a finite number, got nan"


def test_choice_is_exact_in_value_and_type():
    c = Choice(4, 8)
    assert c(4) == 4 and c(8) == 8
    for bad in (6, 4.0, "4", True):
        assert refused(c, bad) == f"must be one of 4, 8, got {bad!r}"
    assert Choice(True, False)(False) is False and refused(Choice(True, False), 0)
    assert Choice("a", "b").option() == dict(choices=("a", "b"), type=str)


def test_bool_is_not_an_int_and_an_int_is_not_a_bool():
    assert Bool()(True) is True and Bool()(False) is False
    for bad in (0, 1, "yes", None, np.bool_(True)):
        assert refused(Bool(), bad) == f"must be true or false, got {bad!r}"
    assert refused(Int(0), True) and refused(Real(0), False)


def test_sequences_of_a_constraint_with_a_length_rule():
    c = Seq(Int(2))
    assert c([4, 7]) == (4, 7) and c((3,)) == (3,) and type(c([np.int64(3)])[0]) is int
    assert refused(c, []) == "must be a non-empty list, got []"
    assert refused(c, 4) == "must be a non-empty list, got 4"
    assert refused(c, "47") == "must be a non-empty list, got '47'"          # a string is not a list
    assert refused(c, [4, 1]) == "each value must be an integer >= 2, got 1"
    pair = Seq(Real(0), 2, 2)
    assert pair([1, 2]) == (1.0, 2.0) and pair.option()["nargs"] == 2
    assert refused(pair, [1.0]) == "must be a list of 2 values, got [1.0]"
    assert refused(Seq(Int(), 1, 3), [1, 2, 3, 4]) == "must be a list of 1 to 3 values, got [1, 2, 3, 4]"
    assert refused(Seq(Int(), unique=True), [1, 2, 1]) == "names 1 twice: 1 2 1"
    assert refused(Seq(Real(0, 1)), [0.5, math.nan]) == "each value must be a finite number from 0 to 1, got nan"


def test_none_allowed_only_where_said():
    c = OrNone(Int(1), "off")
    assert c(None) is None and c(3) == 3
    assert refused(c, 0) == "must be an integer >= 1, got 0"               # the inner message
    assert c.text == "an integer >= 1, or None (off)"
    assert refused(Int(1), None) == "must be an integer >= 1, got None"
    split = Where(lambda v: isinstance(v, str) and "/" not in v, "a split name")
    assert split("val") == "val" and refused(split, "../x") == "must be a split name, got '../x'"


def test_bad_constraint_arguments_are_programming_errors():
    with pytest.raises(TypeError):
        Interval(int, 0, 1, closed="open")
    with pytest.raises(TypeError):
        Interval(complex)
    with pytest.raises(TypeError):
        param(1, "no constraint")


# --------------------------------------------------------------------------- check() on a dataclass


@parameters
@dataclasses.dataclass(frozen=True)
class _Planted:
    """A constructed parameter class."""

    name: str = param(help="a name", check=Where(lambda v: isinstance(v, str) and v != "", "a non-empty name"))
    k: int = param(2, "a count", Int(1))
    ws: tuple[float, ...] = param((0.5,), "weights", Seq(Real(0, 1)))
    lo: float = param(0.2, "low end", Real(0, 1))
    hi: float = param(0.8, "high end", Real(0, 1))

    def __post_init__(self):
        check(self)

    def _validate(self):
        if self.lo > self.hi:
            raise InputError(f"above hi ({self.hi}), got {self.lo}", field="lo")


def test_check_names_the_field_keeps_the_values_and_runs_the_cross_field_rule():
    p = _Planted("a", k=np.int64(3), ws=[1, 0])
    assert p.k == 3 and type(p.k) is int and p.ws == (1.0, 0.0)                   # frozen, yet kept
    assert p == _Planted("a", k=3, ws=(1.0, 0.0))
    for kw, field, words in [(dict(name=""), "name", "must be a non-empty name, got ''"),
                             (dict(k=0), "k", "must be an integer >= 1, got 0"),
                             (dict(ws=[0.5, 2]), "ws", "each value must be a finite number from 0 to 1, got 2"),
                             (dict(lo=0.9), "lo", "above hi (0.8), got 0.9")]:
        with pytest.raises(InputError) as e:
            _Planted(**{"name": "a", **kw})
        assert e.value.field == field and str(e.value) == f"{field}: {words}"
    with pytest.raises(InputError, match="^k: "):
        dataclasses.replace(p, k=-1)                                             # replace() checks too


def test_a_field_without_a_constraint_is_refused_at_class_definition():
    with pytest.raises(TypeError, match="'b' declares no constraint"):
        @parameters
        @dataclasses.dataclass
        class Bad:
            a: int = param(1, "a", Int())
            b: int = 2


def test_options_from_a_dataclass(capsys):
    import argparse

    parser = argparse.ArgumentParser(prog="x")
    added = add_options(parser, _Planted, prefix="p-", names={"ws": "weights"}, notes={"k": "two is plenty"})
    assert added == {"name": "--p-name", "k": "--p-k", "ws": "--weights", "lo": "--p-lo", "hi": "--p-hi"}
    args = parser.parse_args(["--p-name", "a", "--weights", "0.1", "0.2", "--p-k", "5"])
    assert (args.name, args.k, args.ws, args.lo) == ("a", 5, [0.1, 0.2], 0.2)
    with pytest.raises(SystemExit):
        parser.parse_args([])                                                    # --p-name has no default
    parser.print_help()
    text = " ".join(capsys.readouterr().out.split())
    assert "--p-k N a count (default: 2; two is plenty)" in text
    assert "--weights X [X ...] weights (default: 0.5)" in text


# --------------------------------------------------------------------------- every parameter dataclass

#: class, the command whose options it makes, option prefix and option names, fields the command line
#: maps (its own "off" values) or does not offer
COMMANDS = [
    (LabelParams, ["label", "{tmp}/caps", "--out", "{tmp}/out", "--labeller", "pcc"], "", OPTION_NAMES, ()),
    (DDParams, ["label", "{tmp}/caps", "--out", "{tmp}/out", "--labeller", "dd"], "dd-", {}, ()),
    (AttnParams, ["label", "{tmp}/caps", "--out", "{tmp}/out", "--labeller", "attn"], "attn-", {}, ()),
    (FuseParams, ["label", "{tmp}/caps", "--out", "{tmp}/out", "--labeller", "fuse"], "fuse-", {}, ()),
    (TrainConfig, ["train", "--data", "{tmp}", "--out", "{tmp}/out"], "", {"arch": "model"},
     ("scale_min", "scale_max", "progress")),
    (ToyTrainConfig, ["toy", "train", "--out", "{tmp}/out"], "", {}, ()),
    (ExperimentConfig, ["experiment", "toy", "--out", "{tmp}/out"], "", {}, ("progress",)),
    (FilterRule, ["filter", "{tmp}/data"], "", {"missing": "drop-missing"}, ("area_mad",)),  # <= 0: off
    (GenerateConfig, ["generate", "--model", "tiny", "--num", "1", "--out", "{tmp}/out"], "", {}, NOT_OPTIONS),
]
REQUIRED = {TrainConfig: dict(data="d", out="o"), ToyTrainConfig: dict(out="o"), ExperimentConfig: dict(out="o")}


#: where the command line takes the value bad_value() gives as "off" (--short-side 0: native size)
BAD = {(TrainConfig, "short_side"): -1, (GenerateConfig, "height"): 65, (GenerateConfig, "width"): 4104}


def bad_value(c):
    """A value outside the numeric constraint ``c`` (None for other kinds)."""
    c = c.inner if isinstance(c, OrNone) else c
    if isinstance(c, Seq):
        item = bad_value(c.item)
        return None if item is None else [item]
    if not isinstance(c, Interval):
        return None
    return c.kind(c.hi + 1) if c.hi is not None else c.kind(c.lo - 1)


CASES = [pytest.param(cls, argv, prefix, names, f, BAD.get((cls, f.name), bad_value(constraint(f))),
                      id=f"{cls.__name__}.{f.name}")
         for cls, argv, prefix, names, skip in COMMANDS for f in dataclasses.fields(cls)
         if f.name not in skip and BAD.get((cls, f.name), bad_value(constraint(f))) is not None]


def test_the_cases_cover_every_numeric_field():
    assert len(CASES) >= 97
    assert {c.id for c in CASES} >= {f"GenerateConfig.{f}" for f in ("steps", "guidance", "seed", "batch_size",
                                                                     "height", "width", "val_share")}


@pytest.mark.parametrize("cls, argv, prefix, names, f, bad", CASES)
def test_the_api_refuses_what_the_command_line_refuses(tmp_path, capsys, cls, argv, prefix, names, f, bad):
    option = option_name(f.name, prefix, names)
    must = "each value must be " if isinstance(bad, list) else "must be "
    words = [str(v) for v in (bad if isinstance(bad, list) else [bad])]
    rc = main([a.format(tmp=tmp_path) for a in argv] + [option, *words])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and f"error: {option}: {must}" in err, err
    assert not (tmp_path / "out").exists()                                        # before any work
    with pytest.raises(InputError) as e:
        cls(**REQUIRED.get(cls, {}), **{f.name: bad})
    assert e.value.field == f.name and str(e.value).startswith(f"{f.name}: {must}")


@pytest.mark.parametrize("cls", [c[0] for c in COMMANDS])
def test_help_shows_every_field_with_its_help_and_constraint(cls):
    text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
    doc = " ".join(cls.__doc__.split())
    assert "Fields:" in text
    for f in dataclasses.fields(cls):
        assert f"|  {f.name} (" in text
        assert " ".join(f.metadata["help"].split()) in doc and f"Accepts {constraint(f).text}." in doc


# --------------------------------------------------------------------------- --config FILE and --print-config


def _printed(capsys, argv) -> dict:
    import json

    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_train_print_config_is_the_dataclass_defaults_and_the_options_given(tmp_path, capsys):
    base = ["train", "--data", "d", "--out", str(tmp_path / "run"), "--print-config"]
    assert _printed(capsys, base) == dataclasses.asdict(TrainConfig(data="d", out=str(tmp_path / "run")))
    got = _printed(capsys, base + ["--model", "mobilenet_v3_large", "--scale", "0.6", "1.5", "--grad-clip", "0",
                                   "--short-side", "0", "--keep-best", "--no-progress", "--no-aux-loss"])
    assert got == dataclasses.asdict(TrainConfig(data="d", out=str(tmp_path / "run"), arch="mobilenet_v3_large",
                                                 scale_min=0.6, scale_max=1.5, grad_clip=None, short_side=None,
                                                 keep_best=True, progress=False, aux_loss=False))
    assert not (tmp_path / "run").exists()


def test_train_config_file_then_options_and_bad_files_name_the_file_and_field(tmp_path, capsys):
    import json

    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"lr": 0.5, "iters": 7, "val": None, "data": "ignored", "scale_max": 1.5}))
    got = _printed(capsys, ["train", "--data", "d", "--out", "o", "--config", str(cfg), "--iters", "9",
                            "--print-config"])
    assert (got["lr"], got["iters"], got["data"], got["scale_max"]) == (0.5, 9, "d", 1.5)   # the options win
    for text, words in [('{"lr": -1}', "lr: must be a finite number > 0, got -1"),
                        ('{"learning_rate": 1}', "learning_rate: unknown setting (one of data, out, "),
                        ('[1, 2]', "expected a JSON object"), ("{", "not valid JSON")]:
        cfg.write_text(text)
        rc = main(["train", "--data", "d", "--out", str(tmp_path / "run"), "--config", str(cfg)])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and f"error: {cfg}: " in err and words in err, err
    assert not (tmp_path / "run").exists()


def test_label_config_round_trip_and_override(tmp_path, capsys):
    import json

    from pccseg.labellers.registry import params_record

    base = ["label", "caps", "--out", str(tmp_path / "out"), "--print-label-config"]
    assert _printed(capsys, base) == json.loads(json.dumps(params_record(LabelParams())))
    dd = _printed(capsys, base + ["--labeller", "dd", "--dd-power", "2"])
    assert dd == json.loads(json.dumps(params_record(DDParams(power=2))))
    (tmp_path / "dd.json").write_text(json.dumps(dict(dd, pccseg_version="x", model="tiny")))  # as settings.json
    again = _printed(capsys, base + ["--label-config", str(tmp_path / "dd.json"), "--dd-threshold", "0.7"])
    assert again == json.loads(json.dumps(params_record(DDParams(power=2, threshold=0.7))))
    authors = _printed(capsys, base + ["--preset", "authors", "--ks", "3"])
    (tmp_path / "pcc.json").write_text(json.dumps(authors))
    assert _printed(capsys, base + ["--label-config", str(tmp_path / "pcc.json")])["label_params"] == \
        json.loads(json.dumps(dataclasses.asdict(LabelParams.preset("authors", ks=(3,)))))
    for obj, argv, words in [({"labeller": "dd", "label_params": {"power": -1}}, [],
                              "label_params.power: must be an integer from 0 to 64 (each is a matrix product), got -1"),
                             ({"labeller": "dd", "label_params": {"margin": 0.1}}, [], "label_params.margin: unknown"),
                             ({"labeller": "sam", "label_params": {}}, [], "labeller: unknown labeller 'sam'"),
                             ({"labeller": "dd"}, [], "label_params: missing"),
                             ({"labeller": "dd", "label_params": {}}, ["--labeller", "pcc"],
                              "labeller: holds the parameters of --labeller dd, not of --labeller pcc")]:
        (tmp_path / "bad.json").write_text(json.dumps(obj))
        rc = main(["label", "caps", "--out", str(tmp_path / "out"), "--label-config", str(tmp_path / "bad.json"),
                   *argv])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and f"{tmp_path / 'bad.json'}: {words}" in err, err
    rc = main(["generate", "--model", "tiny", "--num", "1", "--out", str(tmp_path / "out"), "--label-config",
               str(tmp_path / "bad.json"), "--labeller", "pcc"])                  # generate and show share them
    assert rc == 2 and "not of --labeller pcc" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_generate_print_config_round_trip_config_file_and_bad_files(tmp_path, capsys):
    import json

    out = tmp_path / "ds"
    base = ["generate", "--model", "tiny", "--num", "2", "--out", str(out), "--print-config"]
    fields = [f.name for f in dataclasses.fields(GenerateConfig) if f.name not in NOT_OPTIONS]
    got = _printed(capsys, base)
    assert list(got) == fields
    assert (got["steps"], got["height"], got["width"], got["seed"]) == (4, 128, 128, 2024)   # tiny's defaults
    got = _printed(capsys, base + ["--steps", "3", "--keep-captures", "--val-share", "0.25", "--negative-prompt", "x"])
    cfg = tmp_path / "gen.json"
    cfg.write_text(json.dumps(got))
    assert _printed(capsys, base + ["--config", str(cfg)]) == got                             # round trip
    again = _printed(capsys, base + ["--config", str(cfg), "--seed", "7", "--query-half", "cond"])
    assert again == dict(got, seed=7, query_half="cond")                                      # the options win
    assert (again["steps"], again["keep_captures"], again["val_share"]) == (3, True, 0.25)
    for text, words in [('{"steps": 0}', "steps: must be an integer from 1 to 1000"),
                        ('{"height": 65}', "height: must be a multiple of 8"),
                        ('{"model": "tiny"}', "model: unknown setting (one of steps, guidance, "),
                        ('[1]', "expected a JSON object"), ("{", "not valid JSON")]:
        cfg.write_text(text)
        rc = main(["generate", "--model", "tiny", "--num", "2", "--out", str(out), "--config", str(cfg)])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and f"error: {cfg}: " in err and words in err, err
    assert not out.exists()
