"""LLaVA-1.5 configs and host-side inputs: the real Hub config parses, unknown attributes are refused by name,
`jax.eval_shape` of the real 7b / 13b configs gives transformers' parameter counts and traces the forward pass
at full size without allocating, and `prepare` validates inputs and derives positions / per-token metadata."""

from __future__ import annotations

import copy
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvlm.config import UnsupportedConfigError
from jaxvlm.layers import causal_mask
from jaxvlm.model import VLM
from jaxvlm.models import decoder, llava
from llava_reference import IMAGE_TOKEN, hf_config_dict

REFERENCE_7B = "/work/shared/reference/configs/llava-1.5-7b-hf.config.json"


def real_7b() -> dict:
    with open(REFERENCE_7B) as f:
        return json.load(f)


def real_13b() -> dict:
    d = real_7b()  # llava-1.5-13b differs only in the text dimensions
    d["text_config"].update(hidden_size=5120, num_hidden_layers=40, num_attention_heads=40,
                            intermediate_size=13824, _name_or_path="lmsys/vicuna-13b-v1.5")
    return d


def hf_param_count(d: dict) -> int:
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    d = copy.deepcopy(d)
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(LlavaConfig(**{k: v for k, v in d.items() if k != "model_type"}))
    return model.num_parameters()


def shape_structs(cfg, dtype=jnp.bfloat16):
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, dtype), llava.weight_shapes(cfg),
                        is_leaf=lambda s: isinstance(s, tuple))


def test_real_7b_config():
    cfg = llava.parse_config(real_7b())
    t, v = cfg.text, cfg.vision
    assert (t.hidden_size, t.num_layers, t.num_heads, t.num_kv_heads, t.intermediate_size, t.vocab_size) == (
        4096, 32, 32, 32, 11008, 32064)
    assert t.rms_norm_eps == 1e-5 and not t.tie_word_embeddings and t.rope.theta == 10000.0
    assert (v.hidden_size, v.num_layers, v.num_heads, v.image_size, v.patch_size, v.hidden_act) == (
        1024, 24, 16, 336, 14, "quick_gelu")
    assert cfg.image_token_id == 32000 and cfg.feature_layers == (-2,) and cfg.feature_strategy == "default"
    assert cfg.tokens_per_image == 576 and cfg.projector_act == "gelu" and cfg.projector_bias
    assert hash(cfg) == hash(llava.parse_config(real_7b()))  # static / hashable for jit


@pytest.mark.parametrize("name,make,expected", [("7b", real_7b, 7_063_427_072), ("13b", real_13b, None)])
def test_param_counts_match_transformers(name, make, expected):
    d = make()
    cfg = llava.parse_config(d)
    structs = jax.eval_shape(lambda: jax.tree.map(jnp.zeros_like, shape_structs(cfg)))
    ours = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(structs))
    theirs = hf_param_count(d)
    print(f"llava-1.5-{name}: {ours:,} parameters (transformers {theirs:,})")
    assert ours == theirs
    if expected is not None:
        assert ours == expected


def test_eval_shape_forward_7b():
    """The whole forward (vision tower, projector, scatter, 32 layers, logits) traces at full size."""
    cfg = llava.parse_config(real_7b())
    ids = np.full((2, 620), 5, np.int64)
    ids[:, 10:586] = cfg.image_token_id
    batch = llava.prepare(cfg, ids, pixel_values=np.zeros((2, 3, 336, 336), np.float32))

    def run(params, batch):
        emb = llava.embed(params, batch)
        cos, sin = decoder.rotary(emb.positions, cfg.text)
        x, _ = decoder.run_layers(params.weights["text"]["layers"], emb.embeds, cos, sin, causal_mask(emb.valid),
                                  cfg.text)
        return decoder.final_logits(params.weights["text"], x, cfg.text)

    out = jax.eval_shape(run, VLM(shape_structs(cfg), cfg), batch)
    assert out.shape == (2, 620, 32064) and out.dtype == jnp.float32


@pytest.mark.parametrize("where", ["top", "text_config", "vision_config"])
def test_unknown_config_attribute_is_refused_by_name(where):
    d = real_7b()
    (d if where == "top" else d[where])["frobnication_level"] = 3
    with pytest.raises(UnsupportedConfigError, match="frobnication_level"):
        llava.parse_config(d)


@pytest.mark.parametrize("change,match", [
    (lambda d: d.update(vision_feature_select_strategy="cls_only"), "vision_feature_select_strategy"),
    (lambda d: d.update(vision_feature_layer=-30), "vision_feature_layer"),
    (lambda d: d["vision_config"].update(model_type="siglip_vision_model"), "siglip"),
    (lambda d: d["text_config"].update(model_type="mistral"), "mistral"),
    (lambda d: d["text_config"].update(rope_scaling={"rope_type": "yarn", "factor": 2.0}), "yarn"),
    (lambda d: d["text_config"].update(mlp_bias=True), "mlp_bias"),
    (lambda d: d.update(projector_hidden_act="relu6_squared"), "relu6_squared"),
])
def test_unsupported_values_are_refused(change, match):
    d = real_7b()
    change(d)
    with pytest.raises((UnsupportedConfigError, ValueError), match=match):
        llava.parse_config(d)


def test_transformers_5_config_and_tied_flag():
    """A config as transformers 5 writes it (image_token_id alias, rope_parameters, text-level tie flag)."""
    d = hf_config_dict(gqa=True)
    d.pop("image_token_index")
    d["image_token_id"] = IMAGE_TOKEN
    d["tie_word_embeddings"] = False
    d["text_config"]["tie_word_embeddings"] = True
    d["text_config"]["rope_parameters"] = {"rope_theta": 500.0, "rope_type": "default"}
    cfg = llava.parse_config(d)
    assert cfg.image_token_id == IMAGE_TOKEN and cfg.text.tie_word_embeddings and cfg.text.rope.theta == 500.0
    assert "lm_head" not in llava.weight_shapes(cfg)["text"]


# ------------------------------------------------------------------------------------------- prepare


@pytest.fixture(scope="module")
def cfg():
    return llava.parse_config(hf_config_dict(gqa=True))


def _row(n_text_before, n_images, n_text_after, per=576):
    return [1] * n_text_before + [IMAGE_TOKEN] * (per * n_images) + [2] * n_text_after


def test_prepare_metadata(cfg):
    rows = [_row(3, 1, 2), _row(1, 2, 0)]  # row 0: 581 tokens, 1 image; row 1: 1153 tokens, 2 images
    t = max(map(len, rows))
    ids = np.zeros((2, t), np.int64)
    mask = np.zeros((2, t), np.int64)
    ids[0, t - len(rows[0]):] = rows[0]  # left padded
    mask[0, t - len(rows[0]):] = 1
    ids[1] = rows[1]
    mask[1] = 1
    pixels = np.zeros((3, 3, 336, 336), np.float32)
    b = llava.prepare(cfg, ids, mask, pixels, image_sizes=[[640, 480], [336, 336], [100, 200]])
    pad = t - len(rows[0])
    assert b["positions"].shape == (1, 2, t)
    assert (b["positions"][0, 0, :pad] == 0).all() and b["positions"][0, 0, pad] == 0
    assert b["positions"][0, 0, -1] == len(rows[0]) - 1 and b["positions"][0, 1, -1] == t - 1
    first = pad + 3
    assert b["visual"][0, first] and not b["visual"][0, first - 1]
    assert b["media"][0, first] == 0 and b["media"][1, 1] == 1 and b["media"][1, 1 + 576] == 2
    assert b["span_index"][0, first + 575] == 575 and b["row"][0, first + 25] == 1 and b["col"][0, first + 25] == 1
    assert b["row"][1, 1 + 576 + 24 * 23 + 5] == 23 and b["col"][1, 1 + 576 + 24 * 23 + 5] == 5
    for k in ("media", "frame", "row", "col", "span_index"):
        assert (b[k][~b["visual"]] == -1).all(), k
    assert (b["frame"][b["visual"]] == 0).all()
    assert (b["feature_index"][b["visual"]] == np.arange(3 * 576)).all()
    assert b["image_sizes"].shape == (3, 2)


def test_prepare_refuses_mismatched_image_tokens(cfg):
    ids = np.array([_row(2, 1, 2)])
    with pytest.raises(ValueError, match=r"576 image tokens .* 2 image\(s\) x 576 tokens per image = 1152"):
        llava.prepare(cfg, ids, pixel_values=np.zeros((2, 3, 336, 336), np.float32))
    with pytest.raises(ValueError, match="575 image tokens"):
        llava.prepare(cfg, ids[:, :2 + 575], pixel_values=np.zeros((1, 3, 336, 336), np.float32))
    with pytest.raises(ValueError, match="pixel_values must be"):
        llava.prepare(cfg, ids, pixel_values=np.zeros((1, 3, 224, 224), np.float32))
    with pytest.raises(ValueError, match="attention_mask shape"):
        llava.prepare(cfg, ids, attention_mask=np.ones((1, 5)), pixel_values=np.zeros((1, 3, 336, 336)))


def test_prepare_text_only(cfg):
    b = llava.prepare(cfg, np.array([[1, 2, 3]]))
    assert b["pixel_values"].shape == (0, 3, 336, 336) and not b["visual"].any()
    with pytest.raises(ValueError, match="0 image"):
        llava.prepare(cfg, np.array([_row(1, 1, 1)]))
