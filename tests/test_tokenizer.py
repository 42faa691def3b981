"""The offline CLIP tokenizer: known ids, agreement with open_clip's SimpleTokenizer, cached files."""

import json

import pytest

from pccseg.capture.tokenizer import EOT_ID, SOT_ID, VOCAB_SIZE, clip_tokenizer, derive_vocab, tokenizer_files


@pytest.fixture(scope="module")
def tok():
    return clip_tokenizer()


def test_known_ids(tok):
    assert tok("a photo of a cat")["input_ids"] == [SOT_ID, 320, 1125, 539, 320, 2368, EOT_ID]
    assert tok("dog")["input_ids"] == [49406, 1929, 49407]
    assert tok.bos_token_id == 49406 and tok.eos_token_id == 49407
    assert len(tok) == VOCAB_SIZE
    assert tok.convert_ids_to_tokens([320, 2368]) == ["a</w>", "cat</w>"]


def test_derived_vocab_matches_clip_layout(tmp_path):
    vocab, merges = derive_vocab()
    assert len(vocab) == VOCAB_SIZE and len(merges) == 49152 - 256 - 2
    assert vocab["<|startoftext|>"] == SOT_ID and vocab["<|endoftext|>"] == EOT_ID
    assert vocab["!"] == 0 and vocab["!</w>"] == 256          # byte chars, then their </w> variants
    assert vocab["".join(merges[0].split())] == 512           # then one token per merge
    d = tokenizer_files(tmp_path / "tok")
    assert json.loads((d / "vocab.json").read_text(encoding="utf-8")) == vocab
    lines = (d / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("#version") and lines[1:] == merges
    assert not [p for p in d.iterdir() if p.name.startswith(".")]   # no temporary leftovers
    # cached: a second call does not rewrite
    mtime = (d / "vocab.json").stat().st_mtime_ns
    assert tokenizer_files(tmp_path / "tok") == d and (d / "vocab.json").stat().st_mtime_ns == mtime


def test_agrees_with_open_clip(tok):
    from open_clip.tokenizer import SimpleTokenizer

    from pccseg.dataset.prompts import load_prompts

    ref = SimpleTokenizer()
    texts = [r.prompt for r in load_prompts()[:200:7]] + [
        "pot plant", "tvmonitor", "A MotorBike, on the road!!", "aeroplane's wing", "café 123 naïve",
        "diningtable with   spaces", "sheep-dog"]
    for t in texts:
        assert tok(t)["input_ids"] == [SOT_ID] + ref.encode(t) + [EOT_ID], t
