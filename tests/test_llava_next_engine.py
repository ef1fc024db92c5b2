"""LLaVA-NeXT through the engine against transformers: greedy generate, FastV with the dropped tokens masked,
and the token-layout decisions (newlines are visual and prunable; detrending positions; no padding mask).

Tiny model: 112px tiles (136-280 tokens per image, three aspect ratios in one left-padded batch), 3 text
layers. Tolerance 1e-4 on logits (tests/test_llava_next.py; the pruned paths only reorder float32 sums).
"""

from __future__ import annotations

import numpy as np
import pytest

import jaxvlm
from engine_stages import FastV
from hf_compare import hf_greedy, torch_inputs
from jaxvlm import debias, prune
from jaxvlm.models import llava_next
from llava_next_reference import IMAGE_TOKEN, PAD_TOKEN, SIZES, SMALL_SIZES, build, make_inputs, masked_hf_logits

ATOL = 1e-4
EOS = 2


@pytest.fixture(scope="module")
def models():
    return build(text_layers=3, seed=3)


@pytest.fixture(scope="module")
def inputs(models):
    return make_inputs(models[1], sizes=SMALL_SIZES[:3], seed=1)


def hf_inputs(inputs: dict) -> dict:
    return torch_inputs(inputs, "pixel_values", "image_sizes")


def test_greedy_matches_transformers_generate(models, inputs):
    model, params, _ = models
    n = 10
    ref = hf_greedy(model, hf_inputs(inputs), n, EOS, PAD_TOKEN)
    out = jaxvlm.generate(params, **inputs, max_new_tokens=n, eos_token_id=EOS, pad_token_id=PAD_TOKEN)
    np.testing.assert_array_equal(np.asarray(out.tokens), ref)


def test_fastv_matches_transformers_with_masked_layers(models, inputs):
    """FastV keep 48 at layer 2 (of 136-280 visual tokens per row, newlines included): the kept set is the top
    of layer 1's last-row head-mean attention over ALL image tokens; prefill logits at the survivors equal
    transformers with the dropped tokens masked from layer 2 on."""
    import torch

    model, params, _ = models
    ids, layer, keep = inputs["input_ids"], 2, 48
    sched = (FastV(layer=layer, keep=keep),)
    out = jaxvlm.forward(params, **inputs, prune=sched)
    kept = np.asarray(out.kept[0])
    with torch.no_grad():
        att = model(**hf_inputs(inputs), output_attentions=True).attentions[layer - 1]
    scores = att[:, :, -1, :].mean(1).numpy()
    batch = llava_next.prepare(params.config, **inputs)
    newline = batch["feature_index"] == batch["pixel_values"].shape[0] * params.config.vision.grid**2
    for r in range(ids.shape[0]):
        span = np.flatnonzero(ids[r] == IMAGE_TOKEN)
        want = np.sort(span[np.argsort(-scores[r, span], kind="stable")[:keep]])
        np.testing.assert_array_equal(kept[r], want)
    assert newline[np.arange(ids.shape[0])[:, None], kept].any()  # newlines compete (and some win)

    drop = ids == IMAGE_TOKEN
    np.put_along_axis(drop, kept, False, axis=1)
    ref = masked_hf_logits(model, hf_inputs(inputs), drop, layer)
    src, got = np.asarray(out.src), np.asarray(out.logits)
    for r in range(ids.shape[0]):
        np.testing.assert_allclose(got[r][src[r] >= 0], ref[r, src[r][src[r] >= 0]], atol=ATOL, rtol=0)


@pytest.mark.slow
def test_fastv_cached_decode_matches_transformers_with_masked_layers(models, inputs):
    """Decode through the pruned caches == transformers on prompt + new tokens with the drops masked."""
    model, params, _ = models
    ids, layer, keep = inputs["input_ids"], 2, 48
    sched = (FastV(layer=layer, keep=keep),)
    n = 6
    gen = jaxvlm.generate(params, **inputs, prune=sched, max_new_tokens=n, output_logits=True)
    toks = np.asarray(gen.tokens)
    drop = ids == IMAGE_TOKEN
    np.put_along_axis(drop, np.asarray(gen.kept[0]), False, axis=1)
    b = ids.shape[0]
    full = dict(inputs, input_ids=np.concatenate([ids, toks[:, : n - 1]], axis=1),
                attention_mask=np.concatenate([inputs["attention_mask"], np.ones((b, n - 1), np.int64)], axis=1))
    full_drop = np.concatenate([drop, np.zeros((b, n - 1), bool)], axis=1)
    ref = masked_hf_logits(model, hf_inputs(full), full_drop, layer)
    t = ids.shape[1]
    np.testing.assert_allclose(np.asarray(gen.logits), ref[:, t - 1: t - 1 + n], atol=ATOL, rtol=0)


@pytest.mark.slow
def test_debiased_fastv_detrends_span_positions_without_padding_mask(models, inputs):
    """prune.debiased on LLaVA-NeXT: no pad-to-square mask exists (prepare returns no image_sizes, so
    StageContext.pad is all False: padding=True changes nothing), and recency detrending reads span_index
    (the raster index within its 8 x 8 tile by default): a trend falling with position (weights rising) moves
    the kept set towards the end of every tile."""
    _, params, _ = models
    plain = np.asarray(jaxvlm.forward(params, **inputs, prune=prune.fastv(layer=2, keep=48)).kept[0])
    pad_only = prune.debiased(prune.fastv(layer=2, keep=48), recency=False, padding=True, pad_threshold=0.5)
    np.testing.assert_array_equal(np.asarray(jaxvlm.forward(params, **inputs, prune=pad_only).kept[0]), plain)
    falling = debias.Trend("exponential", (1.0, -0.02, 0.0))  # T(x) = exp(-x/50): weights exp(x/50)
    late = prune.debiased(prune.fastv(layer=2, keep=48), trend=falling, recency=True, padding=False)
    kept = np.asarray(jaxvlm.forward(params, **inputs, prune=late).kept[0])
    span = llava_next.prepare(params.config, **inputs)["span_index"]
    rows = np.arange(kept.shape[0])[:, None]
    assert span[rows, kept].mean() > span[rows, plain].mean() + 10  # of 0..63


def test_visionzip_reads_each_tiles_cls_attention(models, inputs):
    """VisionZip on LLaVA-NeXT: every image token's vision_cls is transformers' [CLS] attention of ITS tile
    (attentions[-2] of the tower, head sum) to its patch, 0 on newlines; the embeddings do not change; the
    stage keeps dominant + contextual visual tokens per row."""
    import jax
    import torch

    model, params, _ = models
    batch = llava_next.prepare(params.config, **inputs)
    emb = jax.jit(llava_next.embed, static_argnames="vision_cls")(params, batch, vision_cls=True)
    with torch.no_grad():
        att = model.model.vision_tower(torch.as_tensor(batch["pixel_values"]), output_attentions=True).attentions
    per_tile = att[-2][:, :, 0, 1:].sum(1).reshape(-1).numpy()  # feature layer -2: the layer inside is [-2]
    idx = batch["feature_index"]
    want = np.where(idx >= 0, np.concatenate([per_tile, [0.0]])[np.maximum(idx, 0)], 0.0)
    np.testing.assert_allclose(np.asarray(emb.vision_cls), want, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(np.asarray(emb.embeds), np.asarray(jax.jit(llava_next.embed)(params, batch).embeds))
    out = jaxvlm.forward(params, **inputs, prune=prune.visionzip(dominant=40, contextual=8))
    kept = np.asarray(out.kept[0])
    assert kept.shape == (3, 48) and (inputs["input_ids"][np.arange(3)[:, None], kept] == IMAGE_TOKEN).all()


@pytest.mark.slow
def test_fastv_real_geometry_matches_transformers_with_masked_layers():
    """336px tiles: rows of 1,176 and 1,890 visual tokens, FastV keep 320 (the papers' LLaVA-NeXT budget
    scale); prefill logits at the survivors equal transformers with the dropped tokens masked from layer 2."""
    model, params, _ = build(image_size=336, vision_layers=2, text_layers=3, seed=4)
    inputs = make_inputs(params, sizes=SIZES[:2], text=(40, 30))
    out = jaxvlm.forward(params, **inputs, prune=(FastV(layer=2, keep=320),))
    kept, ids = np.asarray(out.kept[0]), inputs["input_ids"]
    assert kept.shape == (2, 320) and (ids[np.arange(2)[:, None], kept] == IMAGE_TOKEN).all()
    drop = ids == IMAGE_TOKEN
    np.put_along_axis(drop, kept, False, axis=1)
    ref = masked_hf_logits(model, hf_inputs(inputs), drop, 2)
    src, got = np.asarray(out.src), np.asarray(out.logits)
    for r in range(2):
        np.testing.assert_allclose(got[r][src[r] >= 0], ref[r, src[r][src[r] >= 0]], atol=ATOL, rtol=0)
