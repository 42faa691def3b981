"""Capture save/load round trip and every bad-input case, through load_capture (the CLI side is in
test_label_cli.py, with the same corruptions)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pccseg.capture.format import Capture, load_capture, save_capture
from pccseg.errors import InputError
from pccseg.capture.synthetic import SD21, planted_capture, planted_layout


def small_capture(seed=0):
    return planted_capture(image_size=(64, 64), latent=(16, 16), layers=SD21[::3], heads_per_layer=2,
                           head_dim=8, seed=seed)


def _edit_tensors(d: Path, fn):
    t = load_file(str(d / "capture.safetensors"))
    fn(t)
    save_file(t, str(d / "capture.safetensors"))


def _edit_meta(d: Path, fn):
    meta = json.loads((d / "capture.json").read_text())
    fn(meta)
    (d / "capture.json").write_text(json.dumps(meta))


LAYER = "self_attn." + SD21[0][0]

#: name -> (corruption, expected file, expected field)
CORRUPTIONS = {
    "missing_file": (lambda d: (d / "capture.safetensors").unlink(), "capture.safetensors", None),
    "wrong_rank": (lambda d: _edit_tensors(d, lambda t: t.update({LAYER: t[LAYER][0, 0]})), "capture.safetensors",
                   LAYER),
    "no_factor": (lambda d: _edit_tensors(d, lambda t: t.update({LAYER: torch.zeros(4, 15, 8)})),
                  "capture.safetensors", LAYER),
    "nan": (lambda d: _edit_tensors(d, lambda t: t[LAYER].view(-1)[3].fill_(float("nan"))), "capture.safetensors",
            LAYER),
    "inf_token_maps": (lambda d: _edit_tensors(d, lambda t: t["token_maps"].view(-1)[0].fill_(float("inf"))),
                       "capture.safetensors", "token_maps"),
    "class_outside_vocab": (lambda d: _edit_meta(d, lambda m: m["token_classes"].__setitem__(1, 21)),
                            "capture.json", "token_classes[1]"),
    "empty_tokens": (lambda d: _edit_meta(d, lambda m: m.update(tokens=[], token_classes=[])), "capture.json",
                     "tokens"),
    "class_names_not_a_list": (lambda d: _edit_meta(d, lambda m: m.update(class_names=5)), "capture.json",
                               "class_names"),
    "meta_not_utf8": (lambda d: (d / "capture.json").write_bytes(b'{"tokens": ["\xff"]}'), "capture.json", None),
    "meta_nested_too_deeply": (lambda d: (d / "capture.json").write_text("[" * 100_000 + "]" * 100_000),
                               "capture.json", None),
    "integer_self_attn": (lambda d: _edit_tensors(d, lambda t: t.update({LAYER: (t[LAYER] * 100).to(torch.int32)})),
                          "capture.safetensors", LAYER),
    "integer_token_maps": (lambda d: _edit_tensors(d, lambda t: t.update(token_maps=t["token_maps"].to(torch.int64))),
                           "capture.safetensors", "token_maps"),
    "self_probs_rows": (lambda d: _edit_tensors(d, lambda t: t["self_probs"].mul_(1.5)), "capture.safetensors",
                        "self_probs"),
    "self_probs_shape": (lambda d: _edit_tensors(d, lambda t: t.update(self_probs=t["self_probs"][:, :, :-1].contiguous())),
                         "capture.safetensors", "self_probs"),
    # an image other than the generated one: labelled without a word before
    "grey_image": (lambda d: _edit_image(d, lambda im: im.convert("L")), "image.png", None),
    "rgba_image": (lambda d: _edit_image(d, lambda im: im.convert("RGBA")), "image.png", None),
    "image_of_another_size": (lambda d: _edit_image(d, lambda im: im.resize((72, 72))), "image.png", None),
}


def _edit_image(d: Path, fn):
    from PIL import Image

    with Image.open(d / "image.png") as im:
        out = fn(im.copy())
    out.save(d / "image.png")


def make_bad(root: Path, name: str, dirname: str | None = None) -> Path:
    d = save_capture(root / (dirname or name), small_capture())
    CORRUPTIONS[name][0](d)
    return d


def test_round_trip(tmp_path):
    cap = small_capture()
    save_capture(tmp_path / "c", cap, dtype=torch.float32)
    back = load_capture(tmp_path / "c")
    assert torch.equal(back.image, cap.image)
    assert back.tokens == cap.tokens and back.token_classes == cap.token_classes
    assert back.class_names == cap.class_names and back.meta["seed"] == 0
    assert list(back.self_attn) == list(cap.self_attn)
    for k in cap.self_attn:
        torch.testing.assert_close(back.self_attn[k], cap.self_attn[k])
    torch.testing.assert_close(back.token_maps, cap.token_maps)
    assert back.self_probs.shape == (8, 8, 64) and torch.equal(back.self_probs, cap.self_probs)
    half = load_capture(save_capture(tmp_path / "h", cap))          # float16 on disk
    torch.testing.assert_close(half.self_attn[SD21[0][0]], cap.self_attn[SD21[0][0]], atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_bad_input_names_file_and_field(tmp_path, name):
    d = make_bad(tmp_path, name)
    _, file, field = CORRUPTIONS[name]
    with pytest.raises(InputError) as e:
        load_capture(d)
    assert e.value.path == str(d / file)
    assert e.value.field == field
    assert "\n" not in str(e.value)


def test_self_probs_round_trip_is_exact_and_optional(tmp_path):
    cap = small_capture()
    assert cap.self_probs.dtype == torch.float32
    torch.testing.assert_close(cap.self_probs.sum(-1), torch.ones(8, 8))
    back = load_capture(save_capture(tmp_path / "c", cap))                 # float16 self-attention
    assert torch.equal(back.self_probs, cap.self_probs)                      # float32 on disk
    assert "self_probs" in load_file(str(tmp_path / "c" / "capture.safetensors"))
    plain = planted_capture(image_size=(64, 64), latent=(16, 16), layers=SD21[::3], heads_per_layer=2,
                            head_dim=8, self_probs=False)
    assert plain.self_probs is None
    assert load_capture(save_capture(tmp_path / "p", plain)).self_probs is None
    assert "self_probs" not in load_file(str(tmp_path / "p" / "capture.safetensors"))
    # the planted affinity stays mostly inside each planted region
    lay = planted_layout(image_size=(64, 64))[4::8, 4::8].reshape(-1)
    p = cap.self_probs.reshape(64, 64)
    same = (lay[:, None] == lay[None, :]).float()
    assert float((p * same).sum(1).mean()) > 0.8


@pytest.mark.parametrize("bad, message", [
    (lambda p: p[:, :, :-1], "shape"),
    (lambda p: p[:4], "shape"),
    (lambda p: p * 2, "sum to 1"),
    (lambda p: torch.where(torch.arange(64) == 0, -p, p), "negative"),
    (lambda p: p.masked_fill(torch.arange(64) == 5, float("nan")), "NaN"),
    (lambda p: p.to(torch.int64), "float"),
])
def test_bad_self_probs_refused(bad, message):
    cap = small_capture()
    with pytest.raises(InputError, match=message) as e:
        Capture(image=cap.image, self_attn=cap.self_attn, token_maps=cap.token_maps, tokens=cap.tokens,
                token_classes=cap.token_classes, self_probs=bad(cap.self_probs), source="cap")
    assert e.value.field == "self_probs" and e.value.path.endswith("capture.safetensors")


def test_as_saved_labels_like_the_saved_capture(tmp_path):
    from pccseg.capture.format import as_saved
    from pccseg.labellers.pcc import label

    cap = small_capture()
    rounded = as_saved(cap)
    loaded = load_capture(save_capture(tmp_path / "c", cap))
    for k, v in cap.self_attn.items():
        assert rounded.self_attn[k].dtype == v.dtype and not torch.equal(rounded.self_attn[k], v)
        assert torch.equal(rounded.self_attn[k], loaded.self_attn[k])   # float16 values, as saved
    assert torch.equal(label(rounded).mask, label(loaded).mask)


def test_a_capture_that_cannot_be_read_is_not_reported_as_missing(tmp_path, monkeypatch):
    """Permissions (EACCES cannot be had as root, so os.access is patched here): 'unreadable', naming the
    file, not 'missing file'."""
    import os

    d = save_capture(tmp_path / "c", small_capture())
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if str(p).endswith("capture.json") else real(p, mode))
    with pytest.raises(InputError, match=r"capture.json: unreadable \(permission denied\)"):
        load_capture(d)
