"""SD 1.x-style and 768-v-style (v-prediction) pipelines: the capture leaves the image unchanged, finds
every up-block self-attention layer and gives captures that the labeller labels, at a non-square size."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

from pccseg.capture.attention import capture
from pccseg.capture.layers import is_self_layer
from pccseg.labellers.pcc import label
from pccseg.capture.tiny import SD_SCHEDULER, tiny_pipeline, tiny_unet_config

H, W = 64, 128   # latent 8x16


def _variant(kind: str) -> StableDiffusionPipeline:
    base = tiny_pipeline(0)
    parts = dict(base.components)
    if kind == "sd1":     # SD 1.x: conv projections in the transformers, 8 heads everywhere
        cfg = tiny_unet_config()
        cfg.update(use_linear_projection=False, attention_head_dim=8)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            parts["unet"] = UNet2DConditionModel(**cfg).eval()
    elif kind == "v":     # SD 2.x 768-v: v-prediction, DDIM with trailing spacing
        sched = {k: v for k, v in SD_SCHEDULER.items() if k != "skip_prk_steps"}
        parts["scheduler"] = DDIMScheduler(**sched, prediction_type="v_prediction", clip_sample=False,
                                           timestep_spacing="trailing", rescale_betas_zero_snr=True)
    parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = StableDiffusionPipeline(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("kind", ["sd1", "v"])
def test_variant_capture_is_transparent_and_labels(kind):
    pipe = _variant(kind)
    classes = [["dog", "sofa"]]

    def call():
        return pipe(["a dog on a sofa"], num_inference_steps=3, height=H, width=W,
                    generator=[torch.Generator().manual_seed(5)], output_type="np").images

    plain = call()
    with capture(pipe, classes) as cap:
        captured = call()
    assert np.array_equal(plain, captured)
    (c,) = cap.captures(captured)
    layers = {n: m for n, m in pipe.unet.named_modules() if hasattr(m, "set_processor") and is_self_layer(n)}
    assert set(c.self_attn) == set(layers)
    for name, t in c.self_attn.items():
        assert t.shape[0] == 2 * layers[name].heads                      # both guidance halves
        assert t.shape[1] * 2 == t.shape[2]                              # the 1:2 aspect of the image
    assert c.token_maps.shape[1:] == (H // 8, W // 8)
    res = label(c)
    assert res.mask.shape == (H, W) and res.blocky.shape == (H // 8, W // 8)
    assert set(torch.unique(res.mask).tolist()) <= {0, 12, 18, 255}
