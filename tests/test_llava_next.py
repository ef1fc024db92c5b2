"""Parity of the LLaVA-NeXT port with transformers' LlavaNextForConditionalGeneration (float32, built offline).

Tolerance ATOL = 1e-4 on logits and on every component (as tests/test_llava_parity.py: both sides float32 with
the same weights, measured at ~1e-6 .. 5e-6; real bugs move logits by >= 1e-2, checked below by injecting
them through the port's own data). Fast tests use 112px tiles (136-336 tokens per image), the slow one the
real 336px geometry (1,176-2,928 tokens per image).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import jax

from jaxvlm.engine import forward, forward_embedded
from jaxvlm.models import llava, llava_next
from llava_next_reference import SIZES, build, hf_config_dict, make_inputs, torch_logits

ATOL = 1e-4  # see module docstring


@pytest.fixture(scope="module")
def models():
    return build()


@pytest.fixture(scope="module")
def left_case(models):
    """The four aspect ratios, left-padded, and transformers' logits for them."""
    inputs = make_inputs(models[1], padding="left")
    return inputs, torch_logits(models[0], inputs)


def valid_max_diff(ours, ref, mask) -> float:
    return float(np.abs(np.asarray(ours) - np.asarray(ref))[np.asarray(mask).astype(bool)].max())


# --------------------------------------------------------------------------------------- host geometry

SIZE = st.tuples(st.integers(1, 2000), st.integers(1, 2000))
PINS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
REAL_CFG = llava_next.parse_config(hf_config_dict(image_size=336))


@settings(max_examples=200, deadline=None)
@given(size=SIZE, pins=st.lists(st.sampled_from(PINS + [[336, 336], [1344, 336], [672, 1008]]), min_size=1,
                                max_size=6))
def test_select_best_resolution_is_transformers(size, pins):
    from transformers.image_processing_utils import select_best_resolution

    assert llava_next.select_best_resolution(size, pins) == tuple(select_best_resolution(size, pins))


@settings(max_examples=200, deadline=None)
@given(size=SIZE)
def test_grid_layout_is_transformers_unpad_and_processor_count(size):
    """Kept rows / columns = transformers' unpad_image on the tile grid; tokens = the processor's count."""
    import types

    from transformers.models.llava_next import modeling_llava_next as m
    from transformers.models.llava_next.processing_llava_next import LlavaNextProcessor

    cfg = REAL_CFG
    pins = [list(p) for p in cfg.image_grid_pinpoints]
    lay = llava_next.grid_layout(size, cfg)
    nph, npw = m.get_anyres_image_grid_shape(list(size), pins, cfg.vision.image_size)
    assert (lay.nph, lay.npw) == (nph, npw)
    assert lay.tiles == m.image_size_to_num_patches(list(size), pins, cfg.vision.image_size)
    g = cfg.vision.grid
    unpadded = m.unpad_image(torch.zeros(1, nph * g, npw * g), list(size))
    assert (lay.r1 - lay.r0, lay.c1 - lay.c0) == tuple(unpadded.shape[1:])
    proc = types.SimpleNamespace(image_processor=types.SimpleNamespace(image_grid_pinpoints=pins), patch_size=14,
                                 num_additional_image_tokens=1)
    proc._get_unpadded_features = types.MethodType(LlavaNextProcessor._get_unpadded_features, proc)
    s = cfg.vision.image_size
    assert lay.tokens == LlavaNextProcessor._get_number_of_features(proc, *size, s, s) - 1  # "default": no CLS


@settings(max_examples=200, deadline=None)
@given(size=SIZE)
def test_unpadding_leaves_under_one_patch_of_padding(size):
    """The decision of docs/PORTING.md (no pad mask for LLaVA-NeXT), checked against transformers' processor
    geometry: in the grid the LLM sees, the processor's centred padding (and the image cut away) is under one
    14px patch row / column per side."""
    from transformers.image_processing_utils import get_patch_output_size
    from transformers.image_utils import ChannelDimension

    cfg = REAL_CFG
    lay = llava_next.grid_layout(size, cfg)
    p = cfg.vision.patch_size
    canvas = (lay.nph * cfg.vision.image_size, lay.npw * cfg.vision.image_size)
    new = get_patch_output_size(np.zeros((1, *size)), canvas, ChannelDimension.FIRST)
    for axis, (lo, hi) in enumerate(((lay.r0, lay.r1), (lay.c0, lay.c1))):
        pad = (canvas[axis] - new[axis]) // 2  # the processor's leading padding (the trailing one is >= it)
        image_lo, image_hi = pad, pad + new[axis]
        assert abs(lo * p - image_lo) < p and abs(hi * p - image_hi) < p, (axis, lo, hi, image_lo, image_hi)


# ----------------------------------------------------------------------------------------- components


def test_projector_output(models):
    model, params, _ = models
    tiles = make_inputs(params)["pixel_values"][0, :3]
    with torch.no_grad():
        hidden = model.model.vision_tower(torch.as_tensor(tiles), output_hidden_states=True).hidden_states[-2]
        ref = model.model.multi_modal_projector(hidden[:, 1:]).numpy()
    ours = jax.jit(lambda p, x: llava.project(p, llava.image_features(p, x)))(params, tiles)
    diff = float(np.abs(np.asarray(ours) - ref).max())
    print(f"projector output max diff = {diff:.2e}")
    assert diff < ATOL


def packed(params, inputs):
    """Our packed image features in masked_scatter order: (image tokens, D)."""
    batch = llava_next.prepare(params.config, **inputs)
    table = jax.jit(llava_next.feature_table)(params, batch["pixel_values"])["features"]
    idx = batch["feature_index"]
    return np.asarray(table)[idx[idx >= 0]], batch


def test_tiling_and_feature_packing(models):
    """Base + unpadded tile grid + newlines of four aspect ratios == transformers' get_image_features."""
    model, params, _ = models
    inputs = make_inputs(params)
    ours, _ = packed(params, inputs)
    with torch.no_grad():
        ref = model.model.get_image_features(torch.as_tensor(inputs["pixel_values"]),
                                             torch.as_tensor(inputs["image_sizes"])).pooler_output
    ref = torch.cat(list(ref)).numpy()
    assert ours.shape == ref.shape == (136 + 214 + 280 + 336, 64)
    diff = float(np.abs(ours - ref).max())
    print(f"packed features max diff = {diff:.2e}")
    assert diff < ATOL


# ----------------------------------------------------------------------------------------- whole model


@pytest.mark.parametrize("padding", ["left", "right"])
def test_logits_four_aspect_ratios_padded_batch(models, left_case, padding):
    model, params, _ = models
    inputs, ref = left_case if padding == "left" else (lambda i: (i, torch_logits(model, i)))(
        make_inputs(params, padding=padding))
    diff = valid_max_diff(forward(params, **inputs).logits, ref, inputs["attention_mask"])
    print(f"max |logit diff| ({padding} padding) = {diff:.2e}")
    assert diff < ATOL


def test_logits_rows_with_two_none_and_one_image_4d_pixels(models):
    """Rows with 2, 0 and 1 images; pixel_values as the concatenated tiles (transformers' 4-D form)."""
    model, params, _ = models
    inputs = make_inputs(params, sizes=((100, 100), (60, 240), (224, 224)), images_per_row=[2, 0, 1],
                         text=(30, 50, 20))
    ref = torch_logits(model, inputs)
    n = [llava_next.grid_layout(s, params.config).tiles for s in inputs["image_sizes"]]
    flat = np.concatenate([p[:k] for p, k in zip(inputs["pixel_values"], n)])
    diff = valid_max_diff(forward(params, **dict(inputs, pixel_values=flat)).logits, ref, inputs["attention_mask"])
    print(f"multi-image rows: max |logit diff| = {diff:.2e}")
    assert diff < ATOL


@pytest.mark.parametrize("text_model", ["mistral", "qwen2"])
def test_mistral_and_qwen2_text_models(text_model):
    model, params, config = build(text_model=text_model, text_layers=1, vision_layers=1, feature_layer=-1)
    assert params.config.text.rope.theta == 1e6
    assert params.config.text.attention_bias == (text_model == "qwen2")
    inputs = make_inputs(params, sizes=((60, 240), (330, 110)), text=(20, 30))
    diff = valid_max_diff(forward(params, **inputs).logits, torch_logits(model, inputs), inputs["attention_mask"])
    print(f"{text_model}: max |logit diff| = {diff:.2e}")
    assert diff < ATOL


@pytest.mark.slow
def test_logits_real_geometry():
    """336px tiles, the Hub's pinpoints: 1,176 / 1,890 / 2,376 / 2,928-token images, left-padded batch."""
    model, params, _ = build(image_size=336, vision_layers=2)
    inputs = make_inputs(params, sizes=SIZES)
    diff = valid_max_diff(forward(params, **inputs).logits, torch_logits(model, inputs), inputs["attention_mask"])
    print(f"real geometry: max |logit diff| = {diff:.2e}")
    assert diff < ATOL


# ------------------------------------------------------------------------------------------ bugs


def newline_first(batch, base_tokens):
    """Bug: each grid row's newline placed before the row instead of after it."""
    fi = batch["feature_index"].copy()
    grid = batch["visual"] & (batch["span_index"] >= base_tokens)  # tokens past the base tile ("sequence")
    for b in range(fi.shape[0]):
        cols = np.flatnonzero(grid[b])
        keys = batch["media"][b, cols] * 10_000 + batch["row"][b, cols]
        for k in np.unique(keys):
            at = cols[keys == k]
            fi[b, at] = np.roll(fi[b, at], 1)
    return dict(batch, feature_index=fi)


def test_tolerance_catches_bugs(models, left_case, monkeypatch):
    """Each named bug, injected through the port's own data, fails the tolerance by far."""
    _, params, _ = models
    inputs, ref = left_case
    mask = inputs["attention_mask"]
    cfg = params.config

    def diff(batch):
        return valid_max_diff(forward_embedded(params.weights["text"], cfg.text,
                                               jax.jit(llava_next.embed)(params, batch)).logits, ref, mask)

    batch = llava_next.prepare(cfg, **inputs)
    correct = diff(batch)
    # Wrong pinpoint: ties broken by the LAST pinpoint (the 100x100 image: 2 x 1 tiles instead of 1 x 2; same
    # token count, so only the tolerance can see it).
    best = llava_next.select_best_resolution
    monkeypatch.setattr(llava_next, "select_best_resolution", lambda size, pins: best(size, pins[::-1]))
    wrong_pin = llava_next.prepare(cfg, **inputs)
    monkeypatch.undo()
    assert (wrong_pin["feature_index"] != batch["feature_index"]).any()
    seq = llava_next.prepare(dataclasses.replace(cfg, span_layout="sequence"), **inputs)  # newline_first's rows
    bugs = {"pinpoint tie": diff(wrong_pin), "newline first": diff(newline_first(seq, cfg.vision.grid**2))}
    print({k: f"{v:.2e}" for k, v in bugs.items()}, f"correct: {correct:.2e}")
    assert correct < ATOL
    for name, d in bugs.items():
        assert d > 100 * ATOL, name
