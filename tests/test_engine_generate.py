"""The engine against transformers on a tiny LLaVA (576-token images, 600+-token prompts, 4 text layers).

Tolerances: logits are compared at 1e-4 absolute; the unpruned port matches transformers at ~5e-6 on these
models (tests/test_llava_parity.py), and the pruned paths add only reorderings of the same float32 sums.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine_stages import FastV, RecomputeTopK
from hf_compare import hf_greedy, torch_inputs
from llava_reference import IMAGE_TOKEN, PAD_TOKEN, build, make_inputs

import jaxvlm
from jaxvlm.engine import api

ATOL = 1e-4
EOS = 2


@pytest.fixture(scope="module")
def models():
    return build(gqa=True, text_layers=4, seed=3)


@pytest.fixture(scope="module")
def inputs(models):
    return make_inputs(models[2], lengths=(640, 610, 605), padding="left", seed=1)


def hf_positions(mask):
    import torch

    mask = torch.as_tensor(mask)
    return (mask.cumsum(-1) - 1).clamp(min=0)


def masked_hf_logits(model, monkeypatch, ids, mask, pixels, drop, from_layer):
    """transformers' logits with the keys `drop` (B, S) bool masked out in every layer >= from_layer.

    Several stages: `drop` and `from_layer` may be lists (the latest stage whose layer is <= the layer wins)."""
    drops = drop if isinstance(drop, list) else [drop]
    froms = from_layer if isinstance(from_layer, list) else [from_layer]
    import torch
    from transformers.models.llama import modeling_llama

    original = modeling_llama.eager_attention_forward
    drop_ts = [torch.as_tensor(d) for d in drops]

    def patched(module, query, key, value, attention_mask, *args, **kwargs):
        active = [d for d, f in zip(drop_ts, froms) if getattr(module, "layer_idx", -1) >= f]
        if active and attention_mask is not None:
            d = active[-1][:, None, None, : attention_mask.shape[-1]]
            if attention_mask.dtype == torch.bool:
                attention_mask = attention_mask & ~d
            else:
                attention_mask = attention_mask.masked_fill(d, torch.finfo(attention_mask.dtype).min)
        return original(module, query, key, value, attention_mask, *args, **kwargs)

    monkeypatch.setattr(modeling_llama, "eager_attention_forward", patched)
    try:
        with torch.no_grad():
            out = model(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask),
                        position_ids=hf_positions(mask), pixel_values=torch.as_tensor(pixels))
    finally:
        monkeypatch.setattr(modeling_llama, "eager_attention_forward", original)
    return out.logits.float().numpy()


def test_greedy_matches_transformers_generate(models, inputs):
    model, params, _ = models
    n = 24
    ref = hf_greedy(model, torch_inputs(inputs, "pixel_values"), n, EOS, PAD_TOKEN)
    out = jaxvlm.generate(params, **inputs, max_new_tokens=n, eos_token_id=EOS, pad_token_id=PAD_TOKEN)
    np.testing.assert_array_equal(np.asarray(out.tokens), ref)
    assert out.tokens.shape == (3, n) and out.tokens.dtype == np.int32 and out.kept == ()


def right_padded(inputs):
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    right_ids, right_mask = np.full_like(ids, PAD_TOKEN), np.zeros_like(mask)
    for b in range(ids.shape[0]):
        row = ids[b][mask[b] == 1]
        right_ids[b, : len(row)], right_mask[b, : len(row)] = row, 1
    return dict(inputs, input_ids=right_ids, attention_mask=right_mask)


def test_left_and_right_padding_agree(models, inputs):
    _, params, _ = models
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    right = right_padded(inputs)
    sched = (FastV(layer=2, keep=64),)
    a = jaxvlm.generate(params, **inputs, prune=sched, max_new_tokens=8)
    b = jaxvlm.generate(params, **right, prune=sched, max_new_tokens=8)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    shift = ids.shape[1] - mask.sum(1)  # left padding offsets the input indices
    kept_a, kept_b = np.asarray(a.kept[0]), np.asarray(b.kept[0])
    np.testing.assert_array_equal(kept_a - shift[:, None], kept_b)


@pytest.mark.parametrize("padding", ["right", "left"])
def test_keep_everything_schedule_is_exact(models, inputs, padding):
    """Bitwise equal with right padding (survivors stay in their slots). With left padding the stage packs the
    rows to the front, so the blocked causal attention groups its sums differently: equal to ~1e-6, same tokens."""
    _, params, _ = models
    inputs = right_padded(inputs) if padding == "right" else inputs
    check = np.testing.assert_array_equal if padding == "right" else (
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=0))
    full = jaxvlm.forward(params, **inputs)
    sched = (FastV(layer=2, keep=576),)
    pruned = jaxvlm.forward(params, **inputs, prune=sched)
    src = np.asarray(pruned.src)
    assert src.shape == inputs["input_ids"].shape
    for r in range(3):  # survivors are packed to the front in input order, padding slots after them
        np.testing.assert_array_equal(src[r][src[r] >= 0], np.flatnonzero(inputs["attention_mask"][r]))
    got = np.asarray(pruned.logits)
    want = np.take_along_axis(np.asarray(full.logits), np.maximum(src, 0)[..., None], axis=1)
    check(got[src >= 0], want[src >= 0])
    a = jaxvlm.generate(params, **inputs, max_new_tokens=8, output_logits=True)
    b = jaxvlm.generate(params, **inputs, prune=sched, max_new_tokens=8, output_logits=True)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    check(np.asarray(a.logits), np.asarray(b.logits))
    kept = np.asarray(b.kept[0])
    for r in range(kept.shape[0]):
        np.testing.assert_array_equal(kept[r], np.flatnonzero(inputs["input_ids"][r] == IMAGE_TOKEN))


@pytest.mark.parametrize("layer,keep", [(2, 64), pytest.param(1, 200, marks=pytest.mark.slow)])
def test_fastv_matches_transformers_with_masked_layers(models, inputs, monkeypatch, layer, keep):
    """Prefill logits at the survivors, the kept set, and cached decode logits against transformers' model
    with the dropped tokens masked out of every attention from layer K on (original positions)."""
    import torch

    model, params, _ = models
    ids, mask, pixels = inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"]
    sched = (FastV(layer=layer, keep=keep),)
    out = jaxvlm.forward(params, **inputs, prune=sched)
    kept = np.asarray(out.kept[0])
    assert kept.shape == (3, keep) and (kept >= 0).all()

    # The kept set is FastV's: top-`keep` of layer K-1's last-row head-mean attention over the image span.
    with torch.no_grad():
        att = model(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask),
                    position_ids=hf_positions(mask), pixel_values=torch.as_tensor(pixels),
                    output_attentions=True).attentions[layer - 1]
    scores = att[:, :, -1, :].mean(1).numpy()
    for r in range(3):
        span = np.flatnonzero(ids[r] == IMAGE_TOKEN)
        want = np.sort(span[np.argsort(-scores[r, span], kind="stable")[:keep]])
        np.testing.assert_array_equal(kept[r], want)

    drop = (ids == IMAGE_TOKEN)
    np.put_along_axis(drop, kept, False, axis=1)
    ref = masked_hf_logits(model, monkeypatch, ids, mask, pixels, drop, layer)
    src = np.asarray(out.src)
    got = np.asarray(out.logits)
    n_valid = (src >= 0).sum(1)
    np.testing.assert_array_equal(n_valid, mask.sum(1) - 576 + keep)
    for r in range(3):
        s = src[r][src[r] >= 0]
        np.testing.assert_allclose(got[r][src[r] >= 0], ref[r, s], atol=ATOL, rtol=0)

    # Cached decode through the pruned caches == full recompute of the masked model on prompt + new tokens.
    n = 8
    gen = jaxvlm.generate(params, **inputs, prune=sched, max_new_tokens=n, output_logits=True)
    np.testing.assert_array_equal(np.asarray(gen.kept[0]), kept)
    toks = np.asarray(gen.tokens)
    full_ids = np.concatenate([ids, toks[:, : n - 1]], axis=1)
    full_mask = np.concatenate([mask, np.ones((3, n - 1), mask.dtype)], axis=1)
    full_drop = np.concatenate([drop, np.zeros((3, n - 1), bool)], axis=1)
    ref = masked_hf_logits(model, monkeypatch, full_ids, full_mask, pixels, full_drop, layer)
    t = ids.shape[1]
    np.testing.assert_allclose(np.asarray(gen.logits), ref[:, t - 1: t - 1 + n], atol=ATOL, rtol=0)
    np.testing.assert_array_equal(toks, ref[:, t - 1: t - 1 + n].argmax(-1))


def test_cached_decode_equals_full_recompute(models, inputs):
    _, params, _ = models
    n = 8
    gen = jaxvlm.generate(params, **inputs, max_new_tokens=n, output_logits=True)
    toks = np.asarray(gen.tokens)
    full = dict(inputs, input_ids=np.concatenate([inputs["input_ids"], toks[:, : n - 1]], axis=1),
                attention_mask=np.concatenate([inputs["attention_mask"], np.ones((3, n - 1), np.int64)], axis=1))
    ref = np.asarray(jaxvlm.forward(params, **full).logits)
    t = inputs["input_ids"].shape[1]
    np.testing.assert_allclose(np.asarray(gen.logits), ref[:, t - 1: t - 1 + n], atol=ATOL, rtol=0)


def test_batch_invariance(models, inputs):
    _, params, _ = models
    sched = (FastV(layer=2, keep=64),)
    both = jaxvlm.generate(params, **inputs, prune=sched, max_new_tokens=8)
    mask = inputs["attention_mask"]
    for r in range(3):
        keep = mask[r] == 1
        alone = dict(input_ids=inputs["input_ids"][r:r + 1, keep], pixel_values=inputs["pixel_values"][r:r + 1])
        one = jaxvlm.generate(params, **alone, prune=sched, max_new_tokens=8)
        np.testing.assert_array_equal(np.asarray(one.tokens)[0], np.asarray(both.tokens)[r])
        offset = mask.shape[1] - keep.sum()
        np.testing.assert_array_equal(np.asarray(one.kept[0])[0], np.asarray(both.kept[0])[r] - offset)


def test_two_lengths_in_one_bucket_compile_once(models):
    _, params, config = models
    sched = (FastV(layer=2, keep=32),)
    a = make_inputs(config, lengths=(600, 590), seed=5)
    b = make_inputs(config, lengths=(630, 601), seed=6)  # same bucket (640), other lengths
    jaxvlm.generate(params, **a, prune=sched, max_new_tokens=4)
    before = api.TRACE_COUNTS["generate"]
    out = jaxvlm.generate(params, **b, prune=sched, max_new_tokens=4)
    assert api.TRACE_COUNTS["generate"] == before
    assert out.tokens.shape == (2, 4)
    c = make_inputs(config, lengths=(650, 601), seed=7)  # next bucket (704): one new program
    jaxvlm.generate(params, **c, prune=sched, max_new_tokens=4)
    assert api.TRACE_COUNTS["generate"] == before + 1


@pytest.mark.slow
def test_recompute_stage_with_renumbering(models, inputs):
    """PyramidDrop-style scoring (the stage layer's own q/k) and contiguous positions; two stages."""
    _, params, _ = models
    sched = (RecomputeTopK(layer=1, keep=288), RecomputeTopK(layer=3, keep=72))
    out = jaxvlm.forward(params, **inputs, prune=sched)
    k1, k2 = (np.asarray(k) for k in out.kept)
    assert k1.shape == (3, 288) and k2.shape == (3, 72)
    for r in range(3):
        assert set(k2[r]) <= set(k1[r])
    gen = jaxvlm.generate(params, **inputs, prune=sched, max_new_tokens=8)
    assert gen.tokens.shape == (3, 8)
    keep_all = (RecomputeTopK(layer=2, keep=576, renumber=False),)
    same = jaxvlm.generate(params, **inputs, prune=keep_all, max_new_tokens=8).tokens
    np.testing.assert_array_equal(np.asarray(same), np.asarray(jaxvlm.generate(params, **inputs, max_new_tokens=8).tokens))


def test_rows_with_fewer_visual_tokens_keep_masked_slots(models):
    _, params, config = models
    inputs = make_inputs(config, lengths=(700, 130), images_per_row=(1, 0), seed=2)
    out = jaxvlm.generate(params, **inputs, prune=(FastV(layer=2, keep=64),), max_new_tokens=8)
    kept = np.asarray(out.kept[0])
    assert (kept[0] >= 0).all() and (kept[1] == -1).all()


def test_eos_then_pad(models, inputs):
    _, params, _ = models
    free = np.asarray(jaxvlm.generate(params, **inputs, max_new_tokens=8).tokens)
    eos = int(free[0, 2])
    out = np.asarray(jaxvlm.generate(params, **inputs, max_new_tokens=8, eos_token_id=eos, pad_token_id=7).tokens)
    for r in range(3):
        hits = np.flatnonzero(free[r] == eos)
        stop = hits[0] + 1 if hits.size else 8
        np.testing.assert_array_equal(out[r, :stop], free[r, :stop])
        assert (out[r, stop:] == 7).all()


def test_sampling_is_seeded(models, inputs):
    _, params, _ = models
    kw = dict(max_new_tokens=8, temperature=1.5)
    a = np.asarray(jaxvlm.generate(params, **inputs, seed=1, **kw).tokens)
    b = np.asarray(jaxvlm.generate(params, **inputs, seed=1, **kw).tokens)
    c = np.asarray(jaxvlm.generate(params, **inputs, seed=2, **kw).tokens)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    greedy = np.asarray(jaxvlm.generate(params, **inputs, max_new_tokens=8).tokens)
    nucleus = np.asarray(jaxvlm.generate(params, **inputs, max_new_tokens=8, temperature=1.0, top_p=1e-6).tokens)
    np.testing.assert_array_equal(nucleus, greedy)  # top-p keeps at least the most likely token


def test_bad_schedules_fail_on_the_host(models, inputs):
    _, params, _ = models
    with pytest.raises(ValueError, match="exceeds the 576 visual tokens"):
        jaxvlm.generate(params, **inputs, prune=(FastV(layer=2, keep=600),))
    with pytest.raises(ValueError, match="exceeds the 64 visual tokens"):
        jaxvlm.forward(params, **inputs, prune=(FastV(layer=1, keep=64), FastV(layer=3, keep=128)))
    with pytest.raises(ValueError, match="strictly increasing"):
        jaxvlm.forward(params, **inputs, prune=(FastV(layer=2, keep=64), FastV(layer=2, keep=32)))
    with pytest.raises(ValueError, match=r"layer 9 must be an int in \[0, 4\)"):
        jaxvlm.forward(params, **inputs, prune=(FastV(layer=9, keep=64),))
    with pytest.raises(ValueError, match="score_layer"):
        jaxvlm.forward(params, **inputs, prune=(FastV(layer=1, keep=64), FastV(layer=3, keep=32, score_layer=0)))
    with pytest.raises(ValueError, match="not a pruning Stage"):
        jaxvlm.forward(params, **inputs, prune=("fastv",))


def test_debiased_stage_gets_padding_flags_from_image_sizes(models, inputs):
    """prune.debiased(..., padding=True): the engine builds StageContext.pad from image_sizes, so no kept token
    lies on a pad-to-square padding patch (wide images: padding above and below)."""
    from jaxvlm import debias, prune

    _, params, _ = models
    sizes = np.array([[336, 120], [500, 200], [336, 336]], np.int32)  # (width, height) per image
    sched = prune.debiased(prune.fastv(layer=2, keep=200), recency=False, padding=True, pad_threshold=0.5)
    out = jaxvlm.forward(params, **inputs, image_sizes=sizes, prune=sched)
    kept = np.asarray(out.kept[0])
    masks = np.asarray(debias.pad_mask(sizes, grid=24, image_size=336, threshold=0.5))  # 1 = real patch
    for r in range(3):
        span = np.flatnonzero(inputs["input_ids"][r] == IMAGE_TOKEN)
        got = kept[r][kept[r] >= 0]
        assert masks[r][np.searchsorted(span, got)].all()
        assert len(got) == min(200, int(masks[r].sum()))  # FastV's budget rule "lower" under suppression


def test_stacked_weights_path_agrees(models, inputs, monkeypatch):
    """The scanned stacked-weights path (GPU/TPU, big models) == the per-layer path used on CPU."""
    _, params, _ = models
    sched = (FastV(layer=2, keep=64),)
    a = jaxvlm.generate(params, **inputs, prune=sched, max_new_tokens=8, output_logits=True)
    monkeypatch.setattr(api, "PER_LAYER_MAX_BYTES", 0)
    assert api.per_layer_weights(params.weights["text"]) is None
    b = jaxvlm.generate(params, **inputs, prune=sched, max_new_tokens=8, output_logits=True)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    np.testing.assert_allclose(np.asarray(a.logits), np.asarray(b.logits), atol=ATOL, rtol=0)


def test_two_stage_schedule_matches_transformers_with_masked_layers(models, inputs, monkeypatch):
    """Two FastV-style stages (layers 1 and 3): each segment's cache holds its own survivors; prefill logits and
    cached decode logits equal transformers with stage 1's drops masked from layer 1 and stage 2's from 3."""
    model, params, _ = models
    ids, mask, pixels = inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"]
    sched = (FastV(layer=1, keep=200), FastV(layer=3, keep=40))
    n = 8
    gen = jaxvlm.generate(params, **inputs, prune=sched, max_new_tokens=n, output_logits=True)
    k1, k2 = (np.asarray(k) for k in gen.kept)
    for r in range(3):
        assert set(k2[r]) <= set(k1[r])
    drops = []
    for kept in (k1, k2):
        d = ids == IMAGE_TOKEN
        np.put_along_axis(d, kept, False, axis=1)
        drops.append(d)
    toks = np.asarray(gen.tokens)
    full_ids = np.concatenate([ids, toks[:, : n - 1]], axis=1)
    full_mask = np.concatenate([mask, np.ones((3, n - 1), mask.dtype)], axis=1)
    pad = np.zeros((3, n - 1), bool)
    ref = masked_hf_logits(model, monkeypatch, full_ids, full_mask, pixels,
                           [np.concatenate([d, pad], axis=1) for d in drops], [1, 3])
    t = ids.shape[1]
    np.testing.assert_allclose(np.asarray(gen.logits), ref[:, t - 1: t - 1 + n], atol=ATOL, rtol=0)
    out = jaxvlm.forward(params, **inputs, prune=sched)
    src, got = np.asarray(out.src), np.asarray(out.logits)
    for r in range(3):
        np.testing.assert_allclose(got[r][src[r] >= 0], ref[r, src[r][src[r] >= 0]], atol=ATOL, rtol=0)


def test_stage_before_layer_zero(models, inputs):
    """A stage at layer 0 scored with layer 0's own q/k (empty first segment, no cache for it)."""
    _, params, _ = models
    out = jaxvlm.generate(params, **inputs, prune=(RecomputeTopK(layer=0, keep=100, renumber=False),),
                          max_new_tokens=8, output_logits=True)
    assert np.isfinite(np.asarray(out.logits)).all() and (np.asarray(out.kept[0]) >= 0).all()
