"""Video-LLaVA through the engine against transformers: greedy generate, and FastV over image + video tokens
(video CLS tokens included) equal to transformers with the dropped tokens masked. Tolerance 1e-4 (as
tests/test_video_llava.py)."""

from __future__ import annotations

import numpy as np
import pytest

import jaxvlm
from engine_stages import FastV
from hf_compare import hf_greedy, torch_inputs
from llava_next_reference import masked_hf_logits
from llava_reference import IMAGE_TOKEN, PAD_TOKEN
from video_llava_reference import VIDEO_TOKEN, build, make_inputs

ATOL = 1e-4
EOS = 2


@pytest.fixture(scope="module")
def models():
    return build(text_layers=3, vision_layers=2, seed=2)


@pytest.fixture(scope="module")
def inputs(models):
    return make_inputs(models[1], rows=("image", "video"), text=(30, 20), seed=1)


def hf_kwargs(inputs: dict) -> dict:
    return torch_inputs(inputs, "pixel_values", "pixel_values_videos")


def test_greedy_matches_transformers_generate(models, inputs):
    model, params, _ = models
    n = 8
    ref = hf_greedy(model, hf_kwargs(inputs), n, EOS, PAD_TOKEN)
    out = jaxvlm.generate(params, **inputs, max_new_tokens=n, eos_token_id=EOS, pad_token_id=PAD_TOKEN)
    np.testing.assert_array_equal(np.asarray(out.tokens), ref)


def test_fastv_matches_transformers_with_masked_layers(models, inputs):
    """FastV keep 64 at layer 2: rows of 256 image tokens and of 2,056 video tokens (the batch's plan keeps 64
    of each row's visual tokens); prefill logits at the survivors equal transformers with the rest masked."""
    model, params, _ = models
    ids, layer, keep = inputs["input_ids"], 2, 64
    out = jaxvlm.forward(params, **inputs, prune=(FastV(layer=layer, keep=keep),))
    kept = np.asarray(out.kept[0])
    visual = np.isin(ids, [IMAGE_TOKEN, VIDEO_TOKEN])
    assert visual[np.arange(2)[:, None], kept].all()
    drop = visual.copy()
    np.put_along_axis(drop, kept, False, axis=1)
    ref = masked_hf_logits(model, hf_kwargs(inputs), drop, layer)
    src, got = np.asarray(out.src), np.asarray(out.logits)
    for r in range(2):
        np.testing.assert_allclose(got[r][src[r] >= 0], ref[r, src[r][src[r] >= 0]], atol=ATOL, rtol=0)


@pytest.mark.slow
def test_visionzip_reads_both_towers(models, inputs):
    """vision_cls of image tokens comes from the image tower, of video tokens from the video tower (each frame's
    [CLS] attention to its patches, transformers' attentions[-2] head sum; 0 on the frames' CLS tokens)."""
    import jax
    import torch

    from jaxvlm import prune
    from jaxvlm.models import video_llava

    model, params, _ = models
    batch = video_llava.prepare(params.config, **inputs)
    emb = jax.jit(video_llava.embed, static_argnames="vision_cls")(params, batch, vision_cls=True)
    frames = torch.as_tensor(inputs["pixel_values_videos"]).flatten(0, 1)
    with torch.no_grad():
        img = model.model.image_tower(torch.as_tensor(inputs["pixel_values"]), output_attentions=True).attentions
        vid = model.model.video_tower(frames, output_attentions=True).attentions
    img = img[-2][:, :, 0, 1:].sum(1).reshape(-1).numpy()
    vid = torch.nn.functional.pad(vid[-2][:, :, 0, 1:].sum(1), (1, 0)).reshape(-1).numpy()  # CLS slot: 0
    idx = batch["feature_index"]
    want = np.where(idx >= 0, np.concatenate([img, vid])[np.maximum(idx, 0)], 0.0)
    np.testing.assert_allclose(np.asarray(emb.vision_cls), want, atol=1e-5, rtol=0)
    out = jaxvlm.forward(params, **inputs, prune=prune.visionzip(dominant=40, contextual=8))
    assert np.asarray(out.kept[0]).shape == (2, 48)
