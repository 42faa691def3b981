"""SDXL (tiny random-weight StableDiffusionXLPipeline with SDXL's architecture): the capture leaves the
image unchanged, keys the class text on both text encoders' penultimate hidden states as SDXL embeds its
prompt, finds the up blocks' attn1 layers at SDXL's levels, gives a labelled mask and the size that
capture_nbytes predicts; the pipeline class comes from model_index.json, and generate runs on it."""

import json

import numpy as np
import pytest
import torch

from pccseg import cli
from pccseg.capture.attention import capture
from pccseg.capture.layers import capture_nbytes, is_self_layer
from pccseg.labellers.pcc import label
from pccseg.capture.tiny import tiny_sdxl_pipeline

H, W = 128, 96         # latent 16x12; SDXL's levels 16x12 (no attention), 8x6 (1 layer), 4x3 (2 layers)
PROMPTS = ["a photo of a cat on a sofa", "a person and a car"]
CLASSES = [["cat", "sofa"], ["person", "car", "pottedplant"]]


@pytest.fixture(scope="module")
def pipe():
    return tiny_sdxl_pipeline(0)


def _call(pipe, steps=2):
    return pipe(PROMPTS, num_inference_steps=steps, height=H, width=W, output_type="np",
                generator=[torch.Generator().manual_seed(s) for s in (5, 6)]).images


def test_sdxl_capture_transparent_shapes_and_label(pipe):
    plain = _call(pipe)
    with capture(pipe, CLASSES, self_probs=True) as cap:
        captured = _call(pipe)
    assert np.array_equal(plain, captured)
    caps = cap.captures(captured)
    layers = {n: m for n, m in pipe.unet.named_modules() if hasattr(m, "set_processor") and is_self_layer(n)}
    # up_blocks.0 at 4x3: 2 attentions x 2 transformer layers, 4 heads; up_blocks.1 at 8x6: 2 x 1, 4 heads
    assert sorted(layers) == sorted([f"up_blocks.0.attentions.{a}.transformer_blocks.{t}.attn1"
                                     for a in (0, 1) for t in (0, 1)]
                                    + [f"up_blocks.1.attentions.{a}.transformer_blocks.0.attn1" for a in (0, 1)])
    for c in caps:
        assert set(c.self_attn) == set(layers)
        for name, t in c.self_attn.items():
            hw = (4, 3) if name.startswith("up_blocks.0") else (8, 6)
            assert t.shape == (2 * layers[name].heads, *hw, 16)
        assert c.token_maps.shape == (len(c.tokens), 8, 6)        # the largest attention grid
        assert c.self_probs.shape == (8, 6, 48)
    n = capture_nbytes(pipe.unet, H, W, len(caps[0].tokens), self_probs=True)
    assert n["self_attn"] == sum(t.numel() * 2 for t in caps[0].self_attn.values())
    assert n["token_maps"] == caps[0].token_maps.numel() * 4
    assert n["self_probs"] == caps[0].self_probs.numel() * 4
    per_image = capture_nbytes(pipe.unet, H, W, cap.valid.shape[1])["ovam_buffers"]    # 2 images x T_max tokens
    assert 2 * per_image == sum(b.numel() * b.element_size() for b in cap.ovam.values())
    res = label(caps[1])
    assert res.mask.shape == (H, W)
    assert set(torch.unique(res.mask).tolist()) <= {0, 7, 15, 16, 255} and (res.mask != 255).any()


def test_sdxl_class_keys_are_the_prompt_embedding_of_the_class_text(pipe):
    with capture(pipe, CLASSES) as cap:
        pass
    assert cap.class_emb.shape[-1] == pipe.unet.config.cross_attention_dim == 64
    for i, t in enumerate(cap.texts):
        # what SDXL gives its UNet for the class text as a prompt (padded to 77: causal, so the first T agree)
        emb = pipe.encode_prompt(t.text, do_classifier_free_guidance=False)[0][0, :len(t.ids)]
        torch.testing.assert_close(cap.class_emb[i, :len(t.ids)], emb, rtol=1e-5, atol=1e-5)


def test_sdxl_loads_from_folder_by_class_name_and_generates(pipe, tmp_path):
    from pccseg.errors import InputError
    from pccseg.capture.pipeline import check_model, load_pipeline, pipeline_class_name

    assert check_model("tiny-sdxl") == "builtin" and pipeline_class_name("tiny-sdxl") == "StableDiffusionXLPipeline"
    folder = tmp_path / "tiny-sdxl"
    pipe.save_pretrained(str(folder))
    assert pipeline_class_name(str(folder)) == "StableDiffusionXLPipeline" and check_model(str(folder)) == "folder"
    loaded = load_pipeline(str(folder), device="cpu")
    assert type(loaded).__name__ == "StableDiffusionXLPipeline"
    assert np.array_equal(_call(loaded, 1), _call(pipe, 1))
    out = tmp_path / "ds"
    assert cli.main(["generate", "--model", str(folder), "--num", "1", "--out", str(out), "--steps", "2",
                     "--height", "128", "--width", "128", "-q"]) == 0
    assert (out / "ImageSets/Segmentation/train.txt").read_text().split() == ["000000"]
    assert json.loads((out / "settings.json").read_text())["guidance"] == 5.0     # SDXL's default
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps(dict(index, _class_name="StableDiffusion3Pipeline")))
    with pytest.raises(InputError, match="_class_name: 'StableDiffusion3Pipeline' is not a supported pipeline"):
        check_model(str(folder))
