"""Attention capture (method §1a, §1b) on the tiny SD pipeline: the image is unchanged, the captured tensors
equal a direct recomputation, buffers do not grow with steps, processors come back."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pccseg.capture.attention import capture
from pccseg.capture.hook import CaptureAttnProcessor
from pccseg.capture.layers import is_cross_layer, is_self_layer, layer_grid
from pccseg.capture.text import class_text
from pccseg.capture.tiny import tiny_pipeline
from pccseg.vocab import VOC_CLASSES, prompt_word

H, W = 64, 48          # latent 8x6; UNet levels 8x6, 4x3, 2x2
PROMPTS = ["a photo of a cat on a sofa", "a person and a car"]
CLASSES = [["cat", "sofa"], ["person", "car", "pottedplant"]]


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline(0)


def _gens(seeds=(11, 12)):
    return [torch.Generator().manual_seed(s) for s in seeds]


def _call(pipe, steps=2, guidance=7.5, prompts=PROMPTS, seeds=(11, 12)):
    return pipe(list(prompts), num_inference_steps=steps, guidance_scale=guidance, height=H, width=W,
                generator=_gens(seeds), output_type="np")


@pytest.mark.parametrize("seeds,guidance", [((11, 12), 7.5), ((3, 4), 1.0), ((2024, 2025), 4.0)])
def test_captured_image_is_bit_identical(pipe, seeds, guidance):
    plain = _call(pipe, 3, guidance, seeds=seeds).images
    with capture(pipe, CLASSES) as cap:
        captured = _call(pipe, 3, guidance, seeds=seeds).images
    assert captured.dtype == plain.dtype and np.array_equal(captured, plain)
    assert len(cap.captures(captured)) == 2


def _layers(pipe, pred):
    return {n: m for n, m in pipe.unet.named_modules() if hasattr(m, "set_processor") and pred(n)}


def test_shapes_of_every_layer(pipe):
    with capture(pipe, CLASSES) as cap:
        out = _call(pipe, 2)
    caps = cap.captures(out.images, meta={"prompt": "x"})
    selfs = _layers(pipe, is_self_layer)
    assert len(selfs) == 4
    for c, names in zip(caps, CLASSES):
        assert c.image.shape == (H, W, 3) and c.image.dtype == torch.uint8
        assert set(c.self_attn) == set(selfs)
        for name, t in c.self_attn.items():
            heads = selfs[name].heads
            hw = (8, 6) if name.startswith("up_blocks.2") else (4, 3)
            assert t.shape == (2 * heads, *hw, selfs[name].inner_dim // heads)
        assert c.token_maps.shape == (len(c.tokens), 8, 6)
        assert c.tokens[0] == "<|startoftext|>" and c.tokens[-1] == "<|endoftext|>"
        assert c.meta["prompt"] == "x" and c.meta["unet_calls"] == 3   # PNDM: steps + 1 UNet calls
    assert caps[1].token_classes == [0, 15, 7, 16, 16, None]
    # without CFG: one half, so the layer's own head count
    with capture(pipe, CLASSES) as cap:
        out = _call(pipe, 2, guidance=1.0)
    for name, t in cap.captures(out.images)[0].self_attn.items():
        assert t.shape[0] == selfs[name].heads


def _record_inputs(pipe, names):
    """Forward pre-hooks recording every call's hidden_states input of the named attention modules."""
    seen = {n: [] for n in names}
    mods = dict(pipe.unet.named_modules())
    hooks = [mods[n].register_forward_pre_hook(lambda m, a, k, n=n: seen[n].append(a[0].detach().clone()),
                                               with_kwargs=True) for n in names]
    return seen, hooks


def _plain_inputs_then_captures(pipe, layers):
    """The inputs of ``layers`` at every UNet call of a plain 2-step call, then the captures of that call."""
    seen, hooks = _record_inputs(pipe, list(layers))
    try:
        _call(pipe, 2)
    finally:
        for h in hooks:
            h.remove()
    with capture(pipe, CLASSES) as cap:
        out = _call(pipe, 2)
    return seen, cap.captures(out.images)


def test_token_maps_equal_direct_recomputation(pipe):
    cross = _layers(pipe, is_cross_layer)
    assert not any(n.startswith("mid_block") for n in cross) and len(cross) == 6
    seen, caps = _plain_inputs_then_captures(pipe, cross)
    tok, enc = pipe.tokenizer, pipe.text_encoder
    for i, names in enumerate(CLASSES):
        ids = tok(" ".join(prompt_word(n) for n in names), return_tensors="pt").input_ids
        assert ids[0].tolist() == class_text(tok, names).ids
        with torch.no_grad():
            emb = enc(ids)[0]                                                    # (1, T, D)
            total = 0
            for name, attn in cross.items():
                k = attn.to_k(emb)[0].view(-1, attn.heads, attn.inner_dim // attn.heads).transpose(0, 1)
                acc = 0
                assert len(seen[name]) == 3
                for hs in seen[name]:
                    q = attn.to_q(hs[i])                                         # unconditional half: row i
                    q = q.view(-1, attn.heads, attn.inner_dim // attn.heads).transpose(0, 1)
                    acc = acc + (q @ k.transpose(-1, -2) * attn.scale).softmax(-1).sum(0)   # (n, T)
                h, w = layer_grid(acc.shape[0], (8, 6))
                m = acc.T.reshape(1, -1, h, w)
                total = total + F.interpolate(m, size=(8, 6), mode="bilinear", align_corners=False)[0]
        torch.testing.assert_close(caps[i].token_maps, total, rtol=1e-4, atol=1e-4)


def test_self_attention_equals_final_step_recomputation(pipe):
    selfs = _layers(pipe, is_self_layer)
    seen, caps = _plain_inputs_then_captures(pipe, selfs)
    with torch.no_grad():
        for name, attn in selfs.items():
            hs = seen[name][-1]                                                  # final UNet call
            d = attn.inner_dim // attn.heads
            q, k, v = (f(hs).view(hs.shape[0], -1, attn.heads, d).transpose(1, 2)
                       for f in (attn.to_q, attn.to_k, attn.to_v))
            o = ((q @ k.transpose(-1, -2)) / d ** 0.5).softmax(-1) @ v          # (2B, heads, n, d)
            for i in range(2):
                want = torch.cat([o[i], o[2 + i]]).reshape(2 * attn.heads, *caps[i].self_attn[name].shape[1:3], d)
                torch.testing.assert_close(caps[i].self_attn[name], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("self_probs", [False, True])
def test_buffers_do_not_grow_with_steps(pipe, self_probs):
    sizes = []
    for steps in (2, 6):
        with capture(pipe, CLASSES, self_probs=self_probs) as cap:
            out = _call(pipe, steps)
        sizes.append((cap.buffer_bytes(), len(cap.ovam), len(cap.self_attn), cap.probs is not None))
        caps = cap.captures(out.images)
        # every layer's softmax sums to heads per step: the summed maps are a constant per pixel
        n_per_pixel = caps[0].token_maps.sum(0)
        torch.testing.assert_close(n_per_pixel, torch.full_like(n_per_pixel, float(n_per_pixel[0, 0])))
        heads = sum(m.heads for m in _layers(pipe, is_cross_layer).values())
        assert float(n_per_pixel[0, 0]) == pytest.approx(heads * (steps + 1), rel=1e-4)
    assert sizes[0] == sizes[1] and sizes[0][0] > 0 and sizes[0][3] == self_probs


def test_pad_tokens_are_masked(pipe):
    # image 0 has 4 tokens, image 1 has 6: image 0's maps must not depend on the padding
    with capture(pipe, CLASSES) as cap:
        out = _call(pipe, 2)
    both = cap.captures(out.images)[0].token_maps
    with capture(pipe, CLASSES[:1]) as cap1:
        out1 = _call(pipe, 2, prompts=PROMPTS[:1], seeds=(11,))
    alone = cap1.captures(out1.images)[0].token_maps
    assert both.shape == alone.shape == (4, 8, 6)
    torch.testing.assert_close(both, alone, rtol=1e-4, atol=1e-4)


def _processors(pipe):
    return {n: id(p) for n, p in pipe.unet.attn_processors.items()}


def test_processors_restored_after_block_and_after_error(pipe):
    before = _processors(pipe)
    with capture(pipe, CLASSES):
        assert _processors(pipe) != before
        assert len(pipe.unet._forward_pre_hooks) == 1
    assert _processors(pipe) == before and not pipe.unet._forward_pre_hooks
    with pytest.raises(RuntimeError, match="boom"):
        with capture(pipe, CLASSES):
            raise RuntimeError("boom")
    assert _processors(pipe) == before and not pipe.unet._forward_pre_hooks
    with pytest.raises(RuntimeError, match="num_images_per_prompt"):   # batch mismatch inside the UNet
        with capture(pipe, CLASSES):
            pipe(PROMPTS, num_inference_steps=1, height=H, width=W, num_images_per_prompt=2, output_type="np")
    assert _processors(pipe) == before and not pipe.unet._forward_pre_hooks


def test_query_half_option_changes_maps_only(pipe):
    with capture(pipe, CLASSES) as a:
        out_a = _call(pipe, 2)
    with capture(pipe, CLASSES, query_half="cond", include_mid=True) as b:
        out_b = _call(pipe, 2)
    assert np.array_equal(out_a.images, out_b.images)
    assert any(n.startswith("mid_block") for n in b.ovam) and not any(n.startswith("mid_block") for n in a.ovam)
    assert not torch.allclose(a.token_maps()[0], b.token_maps()[0])


def test_class_text_multi_token_and_repeated_names(pipe):
    tok = pipe.tokenizer
    t = class_text(tok, ["pottedplant", "cat", "cat", "tvmonitor"])
    assert t.text == "pot plant cat cat monitor"
    assert t.tokens == ["<|startoftext|>", "pot</w>", "plant</w>", "cat</w>", "cat</w>", "monitor</w>",
                        "<|endoftext|>"]
    assert t.token_classes == [0, 16, 16, 8, 8, 20, None]
    assert t.ids == tok(t.text)["input_ids"]
    # a name the BPE splits: every piece maps to the class
    t = class_text(tok, ["tvmonitor"], renames={})
    assert t.tokens[1:-1] == ["tv", "monitor</w>"] and t.token_classes == [0, 20, 20, None]
    # a custom vocabulary
    names = ("background", "traffic light", "hydrant")
    t = class_text(tok, ["hydrant", "traffic light"], names)
    n_hydrant = len(tok("hydrant", add_special_tokens=False)["input_ids"])
    assert t.token_classes == [0] + [2] * n_hydrant + [1, 1, None]
    with pytest.raises(KeyError):
        class_text(tok, ["unicorn"])


def test_layer_grid_and_image_inputs(pipe):
    assert layer_grid(64 * 64, (64, 64)) == (64, 64) and layer_grid(16 * 16, (64, 64)) == (16, 16)
    assert layer_grid(2 * 2, (8, 6)) == (2, 2) and layer_grid(12, (8, 6)) == (4, 3)
    with pytest.raises(RuntimeError):
        layer_grid(7, (8, 6))
    with capture(pipe, CLASSES) as cap:
        out = pipe(PROMPTS, num_inference_steps=1, height=H, width=W, generator=_gens(), output_type="pil")
    caps = cap.captures(out.images)
    assert np.array_equal(caps[0].image.numpy(), np.asarray(out.images[0]))
    assert VOC_CLASSES == caps[0].class_names


def test_capture_nbytes_matches_a_real_capture(pipe):
    from pccseg.capture.layers import capture_nbytes

    with capture(pipe, CLASSES[:1], self_probs=True) as cap:
        out = _call(pipe, 1, prompts=PROMPTS[:1], seeds=(1,))
    c = cap.captures(out.images)[0]
    n = capture_nbytes(pipe.unet, H, W, len(c.tokens), self_probs=True)
    assert n["self_attn"] == sum(t.numel() * 2 for t in c.self_attn.values())        # float16
    assert n["token_maps"] == c.token_maps.numel() * 4
    assert n["self_probs"] == c.self_probs.numel() * 4 == cap.probs.numel() * 4 == 12 * 12 * 4
    assert n["ovam_buffers"] == sum(b.numel() * b.element_size() for b in cap.ovam.values())
    assert n["total"] == n["self_attn"] + n["token_maps"] + n["self_probs"]
    assert capture_nbytes(pipe.unet, H, W, len(c.tokens))["self_probs"] == 0


# ----------------------------------------------------------------------------------------------------------
# whatever processor is installed: the image is that processor's, the captures those of the default path
class HandWritten:
    """A user's own processor: attention written out by hand, in float64 when ``precise`` (a keyword that
    reaches it through the pipeline's cross_attention_kwargs); ``key_gain`` != 1 changes what the keys are."""

    def __init__(self, key_gain: float = 1.0):
        self.key_gain = key_gain

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, precise=False):
        ctx = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        dt = torch.float64 if precise else hidden_states.dtype
        b, n, _ = hidden_states.shape
        q, k, v = (f(t).to(dt).view(b, -1, attn.heads, attn.inner_dim // attn.heads).transpose(1, 2)
                   for f, t in ((attn.to_q, hidden_states), (attn.to_k, ctx), (attn.to_v, ctx)))
        o = ((q @ (k * self.key_gain).transpose(-1, -2)) * attn.scale).softmax(-1) @ v
        return attn.to_out[0](o.transpose(1, 2).reshape(b, n, -1).to(hidden_states.dtype))


class OwnLinear(torch.nn.Linear):
    """A ``to_q`` that is not a plain Linear (as LoRA libraries wrap it): the OVAM queries are recomputed
    through it instead of carrying the class keys back through its weight."""


def _install(pipe, setup: str) -> dict:
    """Put one kind of attention processor on the pipeline; returns the call's extra keyword arguments."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    if setup == "sliced":
        pipe.enable_attention_slicing()
    elif setup == "classic":
        pipe.unet.set_attn_processor(AttnProcessor())
    elif setup == "sdpa":
        pipe.unet.set_attn_processor(AttnProcessor2_0())
    elif setup == "fused":
        pipe.fuse_qkv_projections()
    elif setup == "own_to_q":
        for m in pipe.unet.modules():
            if hasattr(m, "set_processor"):
                m.to_q.__class__ = OwnLinear
    elif setup == "user":
        pipe.unet.set_attn_processor(HandWritten())
        return {"cross_attention_kwargs": {"precise": True}}
    elif setup == "xformers":
        pytest.importorskip("xformers")
        if not torch.cuda.is_available():
            pytest.skip("xformers needs CUDA")
        pipe.to("cuda")
        pipe.enable_xformers_memory_efficient_attention()
    return {}


@pytest.fixture(scope="module")
def default_captures(pipe):
    with capture(pipe, CLASSES) as cap:
        out = _call(pipe, 2)
    return cap.captures(out.images)


@pytest.mark.parametrize("setup", ["sliced", "classic", "sdpa", "fused", "user", "own_to_q", "xformers"])
def test_any_processor_image_bit_identical_and_captures_as_default(setup, default_captures):
    pipe = tiny_pipeline(0)
    extra = _install(pipe, setup)
    before = _processors(pipe)
    kw = dict(num_inference_steps=2, height=H, width=W, output_type="np", **extra)
    plain = pipe(PROMPTS, generator=_gens(), **kw).images
    with capture(pipe, CLASSES) as cap:
        captured = pipe(PROMPTS, generator=_gens(), **kw).images
        through_q = {kx is not None for _, kx, _ in cap.keys.values()}
    assert np.array_equal(captured, plain)
    assert through_q == {setup != "own_to_q"}
    assert _processors(pipe) == before
    for got, want in zip(cap.captures(captured), default_captures):
        torch.testing.assert_close(got.token_maps.cpu(), want.token_maps, rtol=1e-4, atol=1e-4)
        assert set(got.self_attn) == set(want.self_attn)
        for name, t in got.self_attn.items():
            torch.testing.assert_close(t.cpu(), want.self_attn[name], rtol=1e-4, atol=1e-5)


def test_processor_that_changes_the_keys_is_refused(pipe):
    p = tiny_pipeline(0)
    p.unet.set_attn_processor(HandWritten(key_gain=1.5))
    with capture(p, CLASSES) as cap:
        out = _call(p, 1)
    with pytest.raises(RuntimeError, match=r"layer \S+: its attention processor HandWritten computes something "
                                           r"other than softmax\(QK\^T\)V"):
        cap.captures(out.images)


def test_layer_without_its_own_projection_is_refused():
    p = tiny_pipeline(0)
    p.fuse_qkv_projections()                        # self-attention runs on to_qkv ...
    name = next(n for n in _layers(p, is_self_layer))
    del dict(p.unet.named_modules())[name].to_q     # ... and this layer no longer has to_q
    before = _processors(p)
    with pytest.raises(RuntimeError, match=f"layer {name} has no to_q projection .processor FusedAttnProcessor2_0."):
        with capture(p, CLASSES):
            pass
    assert _processors(p) == before


# ----------------------------------------------------------------------------------------------------------
# self-attention probabilities (Dataset Diffusion)
def test_self_probs_equal_float64_recomputation(pipe):
    half = (4, 3)                                   # ceil of the 8x6 latent / 2
    selfs = {n: m for n, m in _layers(pipe, lambda n: n.endswith(".attn1")).items()}
    seen, hooks = _record_inputs(pipe, list(selfs))
    try:
        plain = _call(pipe, 2).images
    finally:
        for h in hooks:
            h.remove()
    with capture(pipe, CLASSES, self_probs=True) as cap:
        out = _call(pipe, 2)
    assert np.array_equal(out.images, plain)
    caps = cap.captures(out.images)
    total = torch.zeros(2, 12, 12, dtype=torch.float64)
    terms = 0
    with torch.no_grad():
        for name, attn in selfs.items():
            for hs in seen[name]:
                if hs.shape[1] != 12:
                    continue
                x = hs[2:].double()                                              # conditional half
                d = attn.inner_dim // attn.heads
                q, k = (x @ f.weight.double().T for f in (attn.to_q, attn.to_k))
                q, k = (t.view(2, 12, attn.heads, d).transpose(1, 2) for t in (q, k))
                total += ((q @ k.transpose(-1, -2)) * d ** -0.5).softmax(-1).sum(1)
                terms += attn.heads
    assert terms == cap.probs_heads == 3 * 4 * 3    # 3 layers at 4x3 (down and up) x 4 heads x 3 UNet calls
    for i, c in enumerate(caps):
        assert c.self_probs.shape == (*half, 12) and c.self_probs.dtype == torch.float32
        torch.testing.assert_close(c.self_probs.double().reshape(12, 12), total[i] / terms, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(c.self_probs.sum(-1), torch.ones(half), rtol=1e-5, atol=1e-5)


def test_self_probs_only_when_asked(pipe):
    down_self = [m for n, m in _layers(pipe, lambda n: n.endswith(".attn1")).items() if not is_self_layer(n)]
    with capture(pipe, CLASSES) as cap:
        assert not any(isinstance(m.processor, CaptureAttnProcessor) for m in down_self)   # not even wrapped
        out = _call(pipe, 1)
    assert cap.probs is None and all(c.self_probs is None for c in cap.captures(out.images))
