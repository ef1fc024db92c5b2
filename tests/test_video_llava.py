"""Video-LLaVA against transformers' VideoLlavaForConditionalGeneration (float32, built offline), its config,
conversion and host-side inputs.

Tolerance ATOL = 1e-4 (as tests/test_llava_parity.py; measured ~1e-6 .. 5e-6). Real geometry: 224px images of
256 tokens, 8-frame videos of 2,056 tokens; an image row, a video row and a row with both in one padded batch.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import jax
import jax.numpy as jnp

import jaxvlm
from converters.core import DictReader, convert, export
from converters.video_llava import table
from jaxvlm.config import UnsupportedConfigError
from jaxvlm.engine import forward, forward_embedded
from jaxvlm.errors import UserError
from jaxvlm.model import random_params
from jaxvlm.models import llava, video_llava
from video_llava_reference import FRAMES, VIDEO_TOKEN, build, hf_config_dict, make_inputs, torch_logits

ATOL = 1e-4  # see module docstring


@pytest.fixture(scope="module")
def models():
    return build()


@pytest.fixture(scope="module")
def case(models):
    inputs = make_inputs(models[1])
    return inputs, torch_logits(models[0], inputs)


def valid_max_diff(ours, ref, mask) -> float:
    return float(np.abs(np.asarray(ours) - np.asarray(ref))[np.asarray(mask).astype(bool)].max())


def test_image_and_video_features(models, case):
    model, params, _ = models
    inputs, _ = case
    with torch.no_grad():
        ref_img = model.model.get_image_features(torch.as_tensor(inputs["pixel_values"])).pooler_output.numpy()
        ref_vid = model.model.get_video_features(torch.as_tensor(inputs["pixel_values_videos"])).pooler_output
    img = jax.jit(lambda p, x: llava.project(p, llava.image_features(p, x)))(params, inputs["pixel_values"])
    vid = jax.jit(video_llava.video_features)(params, inputs["pixel_values_videos"])
    ref_vid = ref_vid.reshape(vid.shape).numpy()  # (V*F, 257, D) -> (V, F*257, D)
    assert img.shape == (2, 256, 64) and vid.shape == (2, FRAMES * 257, 64)
    d_img, d_vid = float(np.abs(np.asarray(img) - ref_img).max()), float(np.abs(np.asarray(vid) - ref_vid).max())
    print(f"image features {d_img:.2e}, video features {d_vid:.2e}")
    assert d_img < ATOL and d_vid < ATOL


def test_logits_image_row_video_row_and_both(models, case):
    _, params, _ = models
    inputs, ref = case
    diff = valid_max_diff(forward(params, **inputs).logits, ref, inputs["attention_mask"])
    print(f"max |logit diff| (image / video / image+video rows) = {diff:.2e}")
    assert diff < ATOL


def test_feature_layer_list_and_full_strategy():
    """vision_feature_layer as a list (concatenated for both towers) and 'full' (images keep CLS: 257 tokens)."""
    model, params, _ = build(text_layers=1, vision_layers=2, feature_layer=[-3, -1], strategy="full")
    inputs = make_inputs(params, rows=("video+image",), text=(20,))
    diff = valid_max_diff(forward(params, **inputs).logits, torch_logits(model, inputs), inputs["attention_mask"])
    print(f"layer list + full: max |logit diff| = {diff:.2e}")
    assert diff < ATOL


def test_tolerance_catches_bugs(models, case):
    """Frames in reverse order, and the two towers swapped, fail the tolerance by far."""
    _, params, _ = models
    inputs, ref = case
    cfg = params.config
    batch = video_llava.prepare(cfg, **inputs)

    def diff(p=params, b=batch):
        return valid_max_diff(forward_embedded(p.weights["text"], cfg.text, jax.jit(video_llava.embed)(p, b)).logits,
                              ref, inputs["attention_mask"])

    fi = batch["feature_index"]
    n_img = 2 * 256
    video = fi >= n_img
    local = fi - n_img
    per_video, frame = FRAMES * 257, (local % (FRAMES * 257)) // 257
    reversed_fi = np.where(video, n_img + (local // per_video) * per_video + (FRAMES - 1 - frame) * 257 + local % 257,
                           fi)
    w = params.weights
    swapped = jaxvlm.VLM(dict(w, vision=w["video_tower"], video_tower=w["vision"]), cfg)
    bugs = {"frame order": diff(b=dict(batch, feature_index=reversed_fi)), "towers swapped": diff(p=swapped)}
    print({k: f"{v:.2e}" for k, v in bugs.items()})
    assert diff() < ATOL
    for name, d in bugs.items():
        assert d > 100 * ATOL, name


# ------------------------------------------------------------------------------------------- prepare


def test_prepare_metadata(models, case):
    """media: images first, then videos; frame / row / col / span_index per frame (CLS: -1, not detrended);
    span_layout "sequence": the index in the video's whole run."""
    import dataclasses

    _, params, _ = models
    inputs, _ = case
    b = video_llava.prepare(params.config, **inputs)
    assert (b["visual"] == np.isin(inputs["input_ids"], [250, VIDEO_TOKEN])).all()
    vid = inputs["input_ids"][1] == VIDEO_TOKEN
    frame, row, col, span, media = (b[k][1][vid] for k in ("frame", "row", "col", "span_index", "media"))
    np.testing.assert_array_equal(frame, np.repeat(np.arange(FRAMES), 257))
    per_frame = np.concatenate([[-1], np.arange(256)])
    np.testing.assert_array_equal(span, np.tile(per_frame, FRAMES))
    np.testing.assert_array_equal(row, np.tile(np.where(per_frame >= 0, per_frame // 16, -1), FRAMES))
    np.testing.assert_array_equal(col, np.tile(np.where(per_frame >= 0, per_frame % 16, -1), FRAMES))
    assert (media == 2).all()  # two images in the batch, then video 0
    img = inputs["input_ids"][0] == 250
    assert (b["media"][0][img] == 0).all() and (b["span_index"][0][img] == np.arange(256)).all()
    seq = video_llava.prepare(dataclasses.replace(params.config, span_layout="sequence"), **inputs)
    np.testing.assert_array_equal(seq["span_index"][1][vid], np.arange(FRAMES * 257))
    np.testing.assert_array_equal(seq["feature_index"], b["feature_index"])


def test_kept_maps_per_frame(models, case):
    """kept_maps (the per-frame view of out.kept): all tokens -> every patch and CLS of every frame; one kept
    token -> its frame, row and column."""
    _, params, _ = models
    inputs, _ = case
    b = video_llava.prepare(params.config, **inputs)
    every = np.where(b["visual"], np.arange(b["visual"].shape[1]), -1)
    maps = video_llava.kept_maps(params.config, b, every)
    assert [m["patches"].shape for m in maps] == [(1, 16, 16)] * 2 + [(FRAMES, 16, 16)] * 2
    assert all(m["patches"].all() for m in maps) and maps[2]["cls"].all() and not maps[0]["cls"].any()
    one = np.full((3, 1), -1)
    one[1, 0] = np.flatnonzero(b["visual"][1])[3 * 257 + 1 + 2 * 16 + 5]  # frame 3, patch (2, 5)
    maps = video_llava.kept_maps(params.config, b, one)
    assert maps[2]["patches"].sum() == 1 and maps[2]["patches"][3, 2, 5]


def test_prepare_errors_name_the_input(models, case):
    _, params, _ = models
    inputs, _ = case
    with pytest.raises(UserError, match=r"video tokens and video features do not match.*2 video\(s\) x 1799"):
        video_llava.prepare(params.config, **dict(inputs, pixel_values_videos=inputs["pixel_values_videos"][:, :7]))
    with pytest.raises(UserError, match="image tokens and image features"):
        video_llava.prepare(params.config, **dict(inputs, pixel_values=None))
    with pytest.raises(UserError, match="pixel_values_videos must be"):
        video_llava.prepare(params.config, **dict(inputs, pixel_values_videos=inputs["pixel_values_videos"][0]))


# ---------------------------------------------------------------------------------- config, weights


def video_llava_7b() -> dict:
    """LanguageBind/Video-LLaVA-7B-hf's config.json."""
    vision = {"hidden_size": 1024, "image_size": 224, "intermediate_size": 4096, "model_type": "clip_vision_model",
              "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14, "projection_dim": 768,
              "vocab_size": 32000}
    text = {"_name_or_path": "lmsys/vicuna-7b-v1.5", "architectures": ["LlamaForCausalLM"],
            "max_position_embeddings": 4096, "model_type": "llama", "pad_token_id": 0, "rms_norm_eps": 1e-05,
            "torch_dtype": "float16", "vocab_size": 32064}
    return {"architectures": ["VideoLlavaForConditionalGeneration"], "ignore_index": -100, "image_seq_length": 256,
            "image_token_index": 32000, "model_type": "video_llava", "projector_hidden_act": "gelu",
            "text_config": text, "torch_dtype": "float16", "transformers_version": "4.41.0.dev0",
            "video_seq_length": 2056, "video_token_index": 32001, "vision_config": vision,
            "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "vocab_size": 32064}


def test_video_llava_7b_config_and_param_count():
    from transformers import VideoLlavaConfig, VideoLlavaForConditionalGeneration

    d = video_llava_7b()
    cfg = video_llava.parse_config(d)
    assert (cfg.family, cfg.image_token_id, cfg.video_token_id, cfg.tokens_per_image, cfg.tokens_per_frame) == (
        "video_llava", 32000, 32001, 256, 257)
    assert hash(cfg) == hash(video_llava.parse_config(video_llava_7b()))
    structs = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.bfloat16), video_llava.weight_shapes(cfg),
                           is_leaf=lambda s: isinstance(s, tuple))
    out = jax.eval_shape(lambda: jax.tree.map(jnp.zeros_like, structs))
    ours = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(out))
    with torch.device("meta"):
        hf = VideoLlavaForConditionalGeneration(VideoLlavaConfig(**{k: v for k, v in copy.deepcopy(d).items()
                                                                   if k != "model_type"}))
    print(f"Video-LLaVA-7B: {ours:,} parameters (transformers {hf.num_parameters():,})")
    assert ours == hf.num_parameters()


@pytest.mark.parametrize("change,match", [
    (lambda d: d.update(frobnication_level=3), "frobnication_level"),
    (lambda d: d["text_config"].update(frobnication_level=3), "frobnication_level"),
    (lambda d: d["vision_config"].update(frobnication_level=3), "video_llava.vision_config"),
    (lambda d: d.update(video_token_index=32000), "video_token_index"),
    (lambda d: d.update(model_type="llava"), "model_type"),
])
def test_unsupported_configs_are_refused_by_name(change, match):
    d = video_llava_7b()
    change(d)
    with pytest.raises(UnsupportedConfigError, match=match):
        video_llava.parse_config(d)


def test_every_key_layout_converts():
    cfg = video_llava.parse_config(hf_config_dict())
    params = random_params(cfg, seed=1, std=0.1)
    tab = table(cfg)
    for layout in tab.layouts:
        state = dict(export(tab, params.weights, layout))
        assert any(k.split(".")[0 if layout in ("hub", "save_pretrained") else 1] == "video_tower" for k in state)
        back = convert(tab, video_llava.weight_shapes(cfg), DictReader(state))
        for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params.weights)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_jaxvlm_directory_round_trip(tmp_path):
    cfg = video_llava.parse_config(hf_config_dict())
    params = random_params(cfg, seed=2)
    loaded = jaxvlm.load(jaxvlm.save(params, str(tmp_path / "video")))
    assert loaded.config == cfg and loaded.config.family == "video_llava"
    for a, b in zip(jax.tree.leaves(loaded.weights), jax.tree.leaves(params.weights)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_load_save_pretrained_directory(tmp_path):
    model, params, _ = build(text_layers=1, vision_layers=1, feature_layer=-1)
    model.save_pretrained(tmp_path)
    loaded = jaxvlm.load(str(tmp_path))
    assert loaded.config == params.config
    inputs = make_inputs(params, rows=("image+video",), text=(12,))
    assert valid_max_diff(jaxvlm.forward(loaded, **inputs).logits, torch_logits(model, inputs),
                          inputs["attention_mask"]) < ATOL
