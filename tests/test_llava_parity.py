"""Parity of the LLaVA-1.5 port with transformers' LlavaForConditionalGeneration (float32, built offline).

Tolerance (float32): ATOL = 1e-4 on logits and on every component output. Both sides compute in float32
with the same weights; what differs is summation order (577-token vision attention, 600+-token causal text
attention, XLA vs MKL matmul blocking), measured at 1e-6 .. 5e-6 on logits of magnitude ~1-4. 1e-4 leaves a
~20x margin for other CPUs / XLA versions while staying far below what real bugs do: with these models
(initializer_range 0.1, re-drawn norms) a RoPE off by one position, the wrong vision feature layer, or image
features shifted by one token move logits by >= 1e-2 (checked by mutating the port, see
tests/test_llava_parity.py::test_tolerance_catches_bugs).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import jax
import jax.numpy as jnp

from jaxvlm.engine import forward
from jaxvlm.layers import causal_mask
from jaxvlm.models import clip, decoder, llava
from llava_reference import build, make_inputs, torch_logits

ATOL = 1e-4  # see module docstring


@pytest.fixture(scope="module", params=["gqa", "mha"])
def models(request):
    return build(gqa=request.param == "gqa")


def valid_max_diff(ours, ref, mask) -> float:
    m = np.asarray(mask).astype(bool)
    return float(np.abs(np.asarray(ours) - np.asarray(ref))[m].max())


@pytest.mark.parametrize("padding", ["left", "right"])
def test_logits_batch_of_three(models, padding):
    """Whole-model logits: 3 rows of 640 / 610 / 605 tokens, one 576-token image each, padded."""
    model, params, config = models
    inputs = make_inputs(config, lengths=(640, 610, 605), padding=padding)
    ref = torch_logits(model, inputs)
    out = forward(params, **inputs).logits
    assert out.shape == ref.shape and out.dtype == jnp.float32
    diff = valid_max_diff(out, ref, inputs["attention_mask"])
    print(f"max |logit diff| ({padding} padding) = {diff:.2e}")
    assert diff < ATOL


def test_left_and_right_padding_agree(models):
    """Positions count from each row's first real token, so a row's logits do not depend on the padding side."""
    _, params, config = models
    left = make_inputs(config, lengths=(620, 600), padding="left")
    right = make_inputs(config, lengths=(620, 600), padding="right")
    lo, ro = forward(params, **left).logits, forward(params, **right).logits
    for b in range(2):
        a = np.asarray(lo[b])[left["attention_mask"][b].astype(bool)]
        c = np.asarray(ro[b])[right["attention_mask"][b].astype(bool)]
        np.testing.assert_allclose(a, c, atol=ATOL, rtol=0)


def test_vision_hidden_states_at_feature_layer(models):
    model, params, config = models
    pixels = make_inputs(config, lengths=(600,))["pixel_values"]
    with torch.no_grad():
        ref = model.model.vision_tower(torch.as_tensor(pixels), output_hidden_states=True).hidden_states
    idx = [0, -1, config["vision_feature_layer"]]
    ours = jax.jit(lambda w, x: clip.hidden_states(w, x, params.config.vision, idx))(params.weights["vision"], pixels)
    for i, o in zip(idx, ours):
        diff = float(np.abs(np.asarray(o) - ref[i].numpy()).max())
        print(f"vision hidden_states[{i}] max diff = {diff:.2e}")
        assert diff < ATOL, i


def test_projector_output(models):
    model, params, config = models
    pixels = make_inputs(config, lengths=(600,))["pixel_values"]
    with torch.no_grad():
        ref = model.model.get_image_features(torch.as_tensor(pixels)).pooler_output
    ref = torch.stack(list(ref)).numpy()
    ours = jax.jit(lambda p, x: llava.project(p, llava.image_features(p, x)))(params, pixels)
    assert ours.shape == ref.shape == (1, 576, 64)
    diff = float(np.abs(np.asarray(ours) - ref).max())
    print(f"projector output max diff = {diff:.2e}")
    assert diff < ATOL


def test_one_decoder_layer(models):
    model, params, config = models
    rng = np.random.default_rng(1)
    b, t = 2, 620
    x = rng.standard_normal((b, t, 64)).astype(np.float32)
    mask = np.ones((b, t), bool)
    mask[1, :17] = False  # left padding on row 1
    pos = np.clip(np.cumsum(mask, 1) - 1, 0, None)
    lm = model.model.language_model
    with torch.no_grad():
        xt = torch.as_tensor(x)
        cos_sin = lm.rotary_emb(xt, torch.as_tensor(pos))
        allowed = np.tril(np.ones((t, t), bool))[None] & mask[:, None, :]
        add = torch.where(torch.as_tensor(allowed)[:, None], 0.0, torch.finfo(torch.float32).min)
        ref = lm.layers[0](xt, attention_mask=add, position_embeddings=cos_sin).numpy()
    cfg = params.config.text
    lw = decoder.slice_layers(params.weights["text"]["layers"], 0, 1)
    lw = jax.tree.map(lambda w: w[0], lw)

    @jax.jit
    def run(lw, x):
        cos, sin = decoder.rotary(jnp.asarray(pos)[None], cfg)
        return decoder.layer(lw, x, cos, sin, causal_mask(jnp.asarray(mask)), cfg)[0]

    ours = run(lw, x)
    diff = float(np.abs(np.asarray(ours) - ref)[mask].max())
    print(f"decoder layer max diff = {diff:.2e}")
    assert diff < ATOL


@pytest.mark.parametrize("kw", [dict(feature_layer=[-3, -1]), dict(strategy="full"), dict(feature_layer=1)],
                         ids=["layer_list", "full", "positive_layer"])
def test_feature_layer_variants(kw):
    """vision_feature_layer as a list (concatenated) or a positive index, and the 'full' strategy (CLS kept: 577 tokens)."""
    model, params, config = build(gqa=True, text_layers=1, **kw)
    inputs = make_inputs(config, lengths=(600,))
    diff = valid_max_diff(forward(params, **inputs).logits, torch_logits(model, inputs), inputs["attention_mask"])
    print(f"{kw}: max |logit diff| = {diff:.2e}")
    assert diff < ATOL


@pytest.mark.parametrize("rope", [{"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0},
                                  {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 64,
                                   "rope_theta": 10000.0}], ids=["linear", "llama3"])
def test_rope_types(rope):
    model, params, config = build(gqa=True, text_layers=1, vision_layers=1, feature_layer=-1, rope_parameters=rope)
    inputs = make_inputs(config, lengths=(640, 600), padding="left")
    diff = valid_max_diff(forward(params, **inputs).logits, torch_logits(model, inputs), inputs["attention_mask"])
    print(f"{rope['rope_type']}: max |logit diff| = {diff:.2e}")
    assert diff < ATOL


def test_tied_embeddings():
    model, params, config = build(gqa=True, text_layers=1, vision_layers=1, feature_layer=-1, tie=True)
    assert "lm_head" not in params.weights["text"]
    inputs = make_inputs(config, lengths=(600,))
    diff = valid_max_diff(forward(params, **inputs).logits, torch_logits(model, inputs), inputs["attention_mask"])
    assert diff < ATOL


@pytest.mark.slow
def test_logits_multi_image_rows():
    """Rows with 2, 0 and 1 images (features fill image-token runs in row-major order), 4 text layers."""
    model, params, config = build(gqa=True, text_layers=4)
    inputs = make_inputs(config, lengths=(1250, 700, 900), images_per_row=(2, 0, 1), padding="left")
    diff = valid_max_diff(forward(params, **inputs).logits, torch_logits(model, inputs), inputs["attention_mask"])
    print(f"multi-image rows: max |logit diff| = {diff:.2e}")
    assert diff < ATOL


def test_tolerance_catches_bugs(models):
    """The tolerance is meaningful: each named bug, injected through the port's own data, fails it by far."""
    import dataclasses

    from jaxvlm.engine import forward_embedded
    from jaxvlm.model import VLM

    def _forward_unpruned(p, b):
        return forward_embedded(p.weights["text"], p.config.text, jax.jit(llava.embed)(p, b)).logits

    model, params, config = models
    inputs = make_inputs(config, lengths=(620, 600), padding="left")
    ref, mask = torch_logits(model, inputs), inputs["attention_mask"]
    cfg = params.config
    batch = llava.prepare(cfg, **inputs)

    def diff(p=params, b=batch):
        return valid_max_diff(_forward_unpruned(p, b), ref, mask)

    wrong_theta = dataclasses.replace(cfg.text.rope, theta=cfg.text.rope.theta * 1.5)
    shifted = dict(batch, feature_index=np.roll(batch["feature_index"], 1, axis=1))  # images one token late
    off_by_one_pos = dict(batch, positions=batch["positions"] * 2)  # RoPE at the wrong distances
    bugs = {
        "rope theta": diff(VLM(params.weights, dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, rope=wrong_theta)))),
        "rope positions": diff(b=off_by_one_pos),
        "feature layer -1": diff(VLM(params.weights, dataclasses.replace(cfg, feature_layers=(-1,)))),
        "feature layer -3": diff(VLM(params.weights, dataclasses.replace(cfg, feature_layers=(-3,)))),
        "image offset +1": diff(b=shifted),
    }
    print({k: f"{v:.2e}" for k, v in bugs.items()}, f"correct: {diff():.2e}")
    assert diff() < ATOL
    for name, d in bugs.items():
        assert d > 100 * ATOL, name
