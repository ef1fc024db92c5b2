"""VisionZip wired through the engine on the tiny LLaVA: the CLIP [CLS] attention and keys the stage reads
match transformers (eager, output_attentions=True) at the chosen layer, and generate keeps the static count of
visual tokens per row."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import jax.numpy as jnp

from jaxvlm import prune
from jaxvlm.engine import api
from jaxvlm.models import llava
from llava_reference import build, make_inputs


@pytest.fixture(scope="module")
def tiny():
    return build(gqa=True)


@pytest.mark.parametrize("feature_layer", [-2, -1])
def test_cls_attention_matches_transformers(feature_layer):
    model, params, config = build(gqa=True, feature_layer=feature_layer)
    pixels = np.random.default_rng(3).standard_normal((2, 3, 336, 336)).astype(np.float32)
    cls, keys = llava.vision_cls_stats(params, jnp.asarray(pixels))
    tower = model.model.vision_tower if hasattr(model.model, "vision_tower") else model.vision_tower
    captured = {}
    n_layers = config["vision_config"]["num_hidden_layers"]
    j = feature_layer + n_layers + 1  # hidden_states index; the layer producing it is j - 1
    attn_mods = [m for n, m in tower.named_modules() if n.endswith("self_attn")]
    assert len(attn_mods) == n_layers
    attn_mod = attn_mods[j - 1]
    hook = attn_mod.k_proj.register_forward_hook(lambda m, i, o: captured.setdefault("k", o.detach()))
    with torch.no_grad():
        out = tower(torch.as_tensor(pixels), output_attentions=True, output_hidden_states=True)
    hook.remove()
    ref = out.attentions[j - 1][:, :, 0, 1:].sum(1).numpy()  # VisionZip: attentions[-2] next to hidden_states[-2]
    np.testing.assert_allclose(np.asarray(cls), ref, atol=1e-5, rtol=0)
    heads = config["vision_config"]["num_attention_heads"]
    k = captured["k"].numpy()
    ref_keys = k.reshape(k.shape[0], k.shape[1], heads, -1).mean(2)[:, 1:]  # raw_key_states.mean(1)
    np.testing.assert_allclose(np.asarray(keys), ref_keys, atol=1e-5, rtol=0)


def test_visionzip_generate_keeps_static_count(tiny):
    _, params, config = tiny
    inputs = make_inputs(config, lengths=(600, 590), padding="left")
    out = api.generate(params, **inputs, prune=prune.visionzip(dominant=20, contextual=6), max_new_tokens=3)
    assert np.asarray(out.tokens).shape == (2, 3)
    (kept,) = out.kept
    kept = np.asarray(kept)
    assert kept.shape == (2, 26)
    visual = inputs["input_ids"] == 250
    for i in range(2):
        assert (kept[i] >= 0).all() and len(set(kept[i].tolist())) == 26
        assert visual[i, kept[i]].all()
    # the dominant tokens are the top [CLS]-attended patches of each row's image
    cls, _ = llava.vision_cls_stats(params, jnp.asarray(inputs["pixel_values"]))
    cls = np.asarray(cls)
    for i in range(2):
        start = int(np.argmax(visual[i]))
        top = set((np.argsort(-cls[i], kind="stable")[:20] + start).tolist())
        assert top <= set(kept[i].tolist())


def test_visionzip_merges_contextual_tokens(tiny):
    """forward with VisionZip differs from plain top-D+C only through the merged contextual tokens: logits are
    finite and the engine reports the same kept indices through forward."""
    _, params, config = tiny
    inputs = make_inputs(config, lengths=(600,), padding="left")
    sched = prune.visionzip(dominant=20, contextual=6)
    fwd = api.forward(params, **inputs, prune=sched)
    gen = api.generate(params, **inputs, prune=sched, max_new_tokens=1)
    np.testing.assert_array_equal(np.asarray(fwd.kept[0]), np.asarray(gen.kept[0]))
    assert np.isfinite(np.asarray(fwd.logits)).all()


def test_visionzip_without_vision_fields_raises():
    from experiments import schedules as sweep

    cfg = sweep.tiny_config(layers=2, hidden=64)
    w = sweep.random_weights(cfg, 0)
    emb, _ = sweep.make_batch(cfg, w, 1, 6, 0)
    with pytest.raises(NotImplementedError, match="not Qwen"):
        api.generate_embedded(w, cfg, emb, prune=prune.visionzip(dominant=4, contextual=2), max_new_tokens=1)


def test_embed_with_vision_cls_keeps_embeddings(tiny):
    _, params, config = tiny
    inputs = make_inputs(config, lengths=(600,), padding="left")
    batch = llava.prepare(params.config, **inputs)
    plain = llava.embed(params, batch)
    emb = llava.embed(params, batch, vision_cls=True)
    np.testing.assert_array_equal(np.asarray(plain.embeds), np.asarray(emb.embeds))
    assert plain.vision_cls is None and emb.vision_cls.shape == batch["input_ids"].shape
    text = ~batch["visual"]
    assert (np.asarray(emb.vision_cls)[text] == 0).all() and (np.asarray(emb.vision_keys)[text] == 0).all()


def test_visionzip_select_merges_values():
    rng = np.random.default_rng(4)
    cls = rng.random((1, 20)).astype(np.float32)
    keys = rng.standard_normal((1, 20, 8)).astype(np.float32)
    vals = rng.standard_normal((1, 20, 5)).astype(np.float32)
    slots, merged = prune.visionzip_select(cls, keys, np.ones((1, 20), bool), 4, 3, values=vals)
    slots, merged = np.asarray(slots)[0], np.asarray(merged)[0]
    dom = set(np.argsort(-cls[0])[:4].tolist())
    rest = [j for j in range(20) if j not in dom]
    targets = [rest[j] for j in (0, 5, 10)]
    kn = keys[0] / np.linalg.norm(keys[0], axis=1, keepdims=True)
    groups = {t: [t] for t in targets}
    for j in rest:
        if j not in targets:
            groups[targets[int(np.argmax(kn[targets] @ kn[j]))]].append(j)
    for t, g in groups.items():
        np.testing.assert_allclose(merged[t], vals[0, g].mean(0), atol=1e-5)
    for d in dom:
        np.testing.assert_allclose(merged[d], vals[0, d], atol=0)
