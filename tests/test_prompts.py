"""Prompt files: the shipped VOC set, JSON list / JSON lines, every error names file, record and field."""

import json
import logging

import pytest

from pccseg.errors import InputError
from pccseg.dataset.prompts import check_lengths, load_prompts, parse_classes_option, select
from pccseg.capture.tokenizer import clip_tokenizer


def test_shipped_voc_set():
    recs = load_prompts()
    assert len(recs) == 44426
    assert recs[0].id == 0 and recs[0].prompt == "a baby in a yellow toy car" and recs[0].classes == ("person", "car")
    assert all(r.index == i for i, r in enumerate(recs[:100]))
    assert recs[7].stem == "000007"


def _write(tmp_path, obj, name="p.json", lines=False):
    p = tmp_path / name
    p.write_text("\n".join(json.dumps(o) for o in obj) + "\n" if lines else json.dumps(obj))
    return p


GOOD = [{"id": 5, "prompt_sd": "a cat", "classes": ["cat"]},
        {"id": 9, "prompt_sd": "a dog and a dog", "classes": ["dog", "dog"]}]


def test_json_list_and_json_lines_agree(tmp_path):
    a = load_prompts(_write(tmp_path, GOOD))
    b = load_prompts(_write(tmp_path, GOOD, "p.jsonl", lines=True))
    assert a == b and [r.id for r in a] == [5, 9] and [r.index for r in a] == [0, 1]
    assert a[1].classes == ("dog", "dog")


@pytest.mark.parametrize("records,field,message", [
    ([{"prompt_sd": "x", "classes": ["cat"]}], "record 0: id", "missing field"),
    ([GOOD[0], {"id": 1, "classes": ["cat"]}], "record 1: prompt_sd", "missing field"),
    ([GOOD[0], {"id": 1, "prompt_sd": "x"}], "record 1: classes", "missing field"),
    ([{"id": 1, "prompt_sd": "x", "classes": []}], "record 0: classes", "non-empty list"),
    ([{"id": 1, "prompt_sd": "x", "classes": ["unicorn"]}], "record 0: classes", "unknown class name 'unicorn'"),
    ([{"id": 1, "prompt_sd": "x", "classes": ["background"]}], "record 0: classes", "unknown class name"),
    ([{"id": "1", "prompt_sd": "x", "classes": ["cat"]}], "record 0: id", "integer"),
    ([{"id": 1, "prompt_sd": "", "classes": ["cat"]}], "record 0: prompt_sd", "non-empty string"),
    ([GOOD[0], GOOD[1], dict(GOOD[0], prompt_sd="again")], "record 2: id", "duplicate id 5 (also record 0)"),
    ([GOOD[0], "text"], "record 1", "expected an object"),
])
def test_errors_name_file_record_and_field(tmp_path, records, field, message):
    p = _write(tmp_path, records)
    with pytest.raises(InputError) as e:
        load_prompts(p)
    assert e.value.path == str(p) and e.value.field == field and message in e.value.message
    assert str(e.value).startswith(f"{p}: {field}: ")


def test_malformed_json_and_missing_file(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('[{"id": 1, "prompt_sd": "x", "classes": ["cat"]},]')
    with pytest.raises(InputError, match=r"bad.json: not valid JSON \(.* at column 50\)"):
        load_prompts(p)
    p.write_text('{"id": 1, "prompt_sd": "x", "classes": ["cat"]}\n{"id": 2, oops}\n')
    with pytest.raises(InputError, match=r"bad.json: line 2: not valid JSON"):
        load_prompts(p)
    with pytest.raises(InputError, match="no such prompt file"):
        load_prompts(tmp_path / "nope.json")
    p.write_text("  \n")
    with pytest.raises(InputError, match="empty prompt file"):
        load_prompts(p)


def test_custom_class_list(tmp_path):
    names = parse_classes_option("background,traffic light,hydrant")
    assert names == ("background", "traffic light", "hydrant")
    p = _write(tmp_path, [{"id": 0, "prompt_sd": "a red hydrant", "classes": ["hydrant"]}])
    assert load_prompts(p, class_names=names)[0].classes == ("hydrant",)
    with pytest.raises(InputError, match="unknown class name 'hydrant'"):
        load_prompts(p)
    for bad in ("cat", "background,cat,cat", "background,,cat"):
        with pytest.raises(InputError, match="--classes"):
            parse_classes_option(bad)


def test_select_slices():
    recs = load_prompts()
    got = select(recs, start=10, num=3)
    assert [r.index for r in got] == [10, 11, 12]
    assert len(select(recs, start=44420)) == 6
    assert select(recs, start=50000, num=2) == []
    with pytest.raises(InputError, match="--num"):
        select(recs, num=0)
    with pytest.raises(InputError, match="--start"):
        select(recs, start=-1)


def test_long_prompt_warns(tmp_path, caplog):
    long = " ".join(["a very long prompt about a cat"] * 20)
    p = _write(tmp_path, [GOOD[0], {"id": 3, "prompt_sd": long, "classes": ["cat"]}])
    recs = load_prompts(p)
    with caplog.at_level(logging.WARNING, logger="pccseg.dataset.prompts"):
        assert check_lengths(recs, clip_tokenizer(), path=p) == [1]
    assert "record 1: prompt_sd has" in caplog.text and "truncated" in caplog.text


def test_a_prompt_file_with_a_byte_order_mark_is_utf8(tmp_path):
    from pccseg.dataset.prompts import load_prompts

    p = tmp_path / "bom.json"
    p.write_bytes(b"\xef\xbb\xbf" + '[{"id": 0, "prompt_sd": "un chat noir à Noël", "classes": ["cat"]}]'.encode())
    (rec,) = load_prompts(p)
    assert rec.prompt == "un chat noir à Noël" and rec.classes == ("cat",)
    lines = tmp_path / "bom.jsonl"
    lines.write_bytes(b"\xef\xbb\xbf" + b'{"id": 3, "prompt_sd": "a dog", "classes": ["dog"]}\n')
    assert load_prompts(lines)[0].id == 3
