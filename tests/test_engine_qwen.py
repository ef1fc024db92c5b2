"""The engine on Qwen2-VL / Qwen2.5-VL (M-RoPE): FastV against transformers with the dropped tokens masked out
of every attention from layer K on. Survivors keep their (t, h, w) positions; decode positions continue at
max position + 1 (transformers: cache length + rope_deltas). Tolerance 1e-4 as in tests/test_qwen_vl.py."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import qwen_reference as R
from converters import DictReader, convert, table_for
from engine_stages import FastV
from jaxvlm.model import VLM
from jaxvlm.models import qwen_vl

import jaxvlm

ATOL = 1e-4


@pytest.fixture(scope="module", params=["qwen2_vl", pytest.param("qwen2_5_vl", marks=pytest.mark.slow)])
def pair(request):
    family = request.param
    kw = {"depth": 3, "fullatt": (1,), "window_size": 56} if family == "qwen2_5_vl" else {}
    model, d = R.build(family, text={"num_hidden_layers": 3}, **kw)
    model.set_attn_implementation("eager")
    cfg = qwen_vl.parse_config(d)
    weights = convert(table_for(cfg), qwen_vl.weight_shapes(cfg), DictReader(model.state_dict()), place=jnp.asarray)
    return model, VLM(weights=weights, config=cfg)


def batch(rng):
    """Two left-padded rows: two images of different grids (83 visual tokens), one image (48)."""
    g1, g2, g3 = (1, 10, 14), (1, 16, 12), (1, 16, 12)
    rows = [R.text(rng, 90) + R.media_span(R.IMAGE, g1) + R.text(rng, 40) + R.media_span(R.IMAGE, g2)
            + R.text(rng, 20),
            R.text(rng, 50) + R.media_span(R.IMAGE, g3) + R.text(rng, 30)]
    t = max(map(len, rows))
    ids, mask = np.zeros((2, t), np.int64), np.zeros((2, t), np.int64)
    for b, r in enumerate(rows):
        ids[b, t - len(r):], mask[b, t - len(r):] = r, 1
    return {"input_ids": ids, "attention_mask": mask, "image_grid_thw": np.array([g1, g2, g3]),
            "pixel_values": np.concatenate([R.image_patches(rng, g) for g in (g1, g2, g3)])}


def masked_logits(model, monkeypatch, inputs, drop, from_layer):
    mod = __import__(type(model).__module__, fromlist=["eager_attention_forward"])
    original = mod.eager_attention_forward
    drop_t = torch.as_tensor(drop)

    def patched(module, query, key, value, attention_mask, *args, **kwargs):
        if getattr(module, "layer_idx", -1) >= from_layer and attention_mask is not None:
            d = drop_t[:, None, None, : attention_mask.shape[-1]]
            if attention_mask.dtype == torch.bool:
                attention_mask = attention_mask & ~d
            else:
                attention_mask = attention_mask.masked_fill(d, torch.finfo(attention_mask.dtype).min)
        return original(module, query, key, value, attention_mask, *args, **kwargs)

    monkeypatch.setattr(mod, "eager_attention_forward", patched)
    try:
        return R.torch_logits(model, **inputs)
    finally:
        monkeypatch.setattr(mod, "eager_attention_forward", original)


def test_fastv_on_mrope_matches_masked_transformers(pair, monkeypatch):
    model, params = pair
    inputs = batch(np.random.default_rng(0))
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    sched = (FastV(layer=2, keep=24),)
    n = 6
    gen = jaxvlm.generate(params, **inputs, prune=sched, max_new_tokens=n, output_logits=True)
    kept = np.asarray(gen.kept[0])
    assert kept.shape == (2, 24) and (kept >= 0).all() and (ids[np.arange(2)[:, None], kept] == R.IMAGE).all()
    drop = ids == R.IMAGE
    np.put_along_axis(drop, kept, False, axis=1)

    out = jaxvlm.forward(params, **inputs, prune=sched)
    np.testing.assert_array_equal(np.asarray(out.kept[0]), kept)
    ref = masked_logits(model, monkeypatch, inputs, drop, 2)
    src, got = np.asarray(out.src), np.asarray(out.logits)
    unpruned = R.torch_logits(model, **inputs)  # the masking matters: pruning moves logits far beyond ATOL
    assert np.abs(unpruned - ref)[mask.astype(bool)].max() > 100 * ATOL
    for r in range(2):
        np.testing.assert_allclose(got[r][src[r] >= 0], ref[r, src[r][src[r] >= 0]], atol=ATOL, rtol=0)

    toks = np.asarray(gen.tokens)
    full = dict(inputs, input_ids=np.concatenate([ids, toks[:, : n - 1]], axis=1),
                attention_mask=np.concatenate([mask, np.ones((2, n - 1), np.int64)], axis=1))
    ref = masked_logits(model, monkeypatch, full, np.concatenate([drop, np.zeros((2, n - 1), bool)], axis=1), 2)
    t = ids.shape[1]
    np.testing.assert_allclose(np.asarray(gen.logits), ref[:, t - 1: t - 1 + n], atol=ATOL, rtol=0)
    np.testing.assert_array_equal(toks, ref[:, t - 1: t - 1 + n].argmax(-1))
