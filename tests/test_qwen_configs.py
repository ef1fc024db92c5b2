"""Qwen2-VL / Qwen2.5-VL configs: real Hub configs parse, unknown attributes are refused by name, and
`jax.eval_shape` of the real configs gives transformers' parameter counts (meta device) and traces the
whole forward pass at full size without allocating anything."""

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
from jaxvlm.models import decoder, qwen_vl

REFERENCE_25_7B = "/work/shared/reference/configs/qwen2.5-vl-7b-instruct.config.json"

_COMMON = {
    "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645, "vision_start_token_id": 151652,
    "vision_end_token_id": 151653, "vision_token_id": 151654, "image_token_id": 151655, "video_token_id": 151656,
    "hidden_act": "silu", "initializer_range": 0.02, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "sliding_window": 32768, "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
}
# config.json of Qwen/Qwen2-VL-2B-Instruct, Qwen/Qwen2-VL-7B-Instruct, Qwen/Qwen2.5-VL-3B-Instruct (flat layout
# written by transformers 4.x; written down from the Hub files).
QWEN2_VL_2B = {
    **_COMMON, "architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl",
    "hidden_size": 1536, "intermediate_size": 8960, "max_position_embeddings": 32768, "max_window_layers": 28,
    "num_attention_heads": 12, "num_hidden_layers": 28, "num_key_value_heads": 2, "tie_word_embeddings": True,
    "transformers_version": "4.45.0.dev0", "vocab_size": 151936,
    "vision_config": {"depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16, "in_chans": 3,
                      "hidden_size": 1536, "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
                      "temporal_patch_size": 2},
}
QWEN2_VL_7B = {
    **_COMMON, "architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl",
    "hidden_size": 3584, "intermediate_size": 18944, "max_position_embeddings": 32768, "max_window_layers": 28,
    "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4, "tie_word_embeddings": False,
    "transformers_version": "4.41.2", "vocab_size": 152064,
    "vision_config": {"depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16, "in_chans": 3,
                      "hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
                      "temporal_patch_size": 2},
}
QWEN25_VL_3B = {
    **_COMMON, "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
    "hidden_size": 2048, "intermediate_size": 11008, "max_position_embeddings": 128000, "max_window_layers": 70,
    "num_attention_heads": 16, "num_hidden_layers": 36, "num_key_value_heads": 2, "tie_word_embeddings": True,
    "transformers_version": "4.41.2", "vocab_size": 151936,
    "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
                      "num_heads": 16, "in_chans": 3, "out_hidden_size": 2048, "patch_size": 14,
                      "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
                      "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2, "temporal_patch_size": 2},
}


def _reference_25_7b() -> dict:
    with open(REFERENCE_25_7B) as f:
        return json.load(f)


REAL = {"qwen2-vl-2b": lambda: QWEN2_VL_2B, "qwen2-vl-7b": lambda: QWEN2_VL_7B,
        "qwen2.5-vl-3b": lambda: QWEN25_VL_3B, "qwen2.5-vl-7b": _reference_25_7b}


def _hf_param_count(d: dict) -> int:
    import torch
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig,
                              Qwen2VLForConditionalGeneration)

    cfg_cls, cls = ((Qwen2VLConfig, Qwen2VLForConditionalGeneration) if d["model_type"] == "qwen2_vl"
                    else (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration))
    with torch.device("meta"):
        model = cls(cfg_cls(**copy.deepcopy(d)))
    return model.num_parameters()


def _logits(params: VLM, batch: dict) -> jax.Array:
    emb = qwen_vl.embed(params, batch)
    cfg = params.config.text
    cos, sin = decoder.rotary(emb.positions, cfg)
    x, _ = decoder.run_layers(params.weights["text"]["layers"], emb.embeds, cos, sin, causal_mask(emb.valid), cfg)
    return decoder.final_logits(params.weights["text"], x, cfg)


def _abstract_params(cfg) -> VLM:
    shapes = qwen_vl.weight_shapes(cfg)
    leaves = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.bfloat16), shapes,
                          is_leaf=lambda x: isinstance(x, tuple))
    return VLM(weights=leaves, config=cfg)


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_config_parses_and_param_count_matches_transformers(name):
    d = REAL[name]()
    cfg = qwen_vl.parse_config(d)
    params = jax.eval_shape(lambda: jax.tree.map(jnp.zeros_like, _abstract_params(cfg)))
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params.weights))
    assert n == _hf_param_count(d)
    if name == "qwen2.5-vl-7b":
        assert n == 8_292_166_656  # transformers 5 on the meta device (Qwen2.5-VL-7B-Instruct config)
    assert cfg.text.rope.mrope_section == (16, 24, 24)


@pytest.mark.parametrize("name", ["qwen2-vl-2b", "qwen2.5-vl-7b"])
def test_full_size_forward_traces(name):
    """eval_shape of the whole jitted forward (vision tower, merger, scatter, decoder) at full size."""
    cfg = qwen_vl.parse_config(REAL[name]())
    grid = (1, 8, 12)  # 24 merged tokens; window attention with 112-pixel windows partitions it (2 x 2 windows)
    ntok = grid[0] * grid[1] * grid[2] // 4
    ids = np.array([[1, 2, cfg.vision_start_token_id] + [cfg.image_token_id] * ntok + [cfg.vision_end_token_id, 3]])
    batch = qwen_vl.prepare(cfg, input_ids=ids, pixel_values=np.zeros((96, 1176), np.float32),
                            image_grid_thw=np.array([grid]))
    out = jax.eval_shape(_logits, _abstract_params(cfg), batch)
    assert out.shape == (1, ids.shape[1], cfg.text.vocab_size) and out.dtype == jnp.float32


@pytest.mark.parametrize("where", ["top", "vision", "text", "rope"])
def test_unknown_attribute_is_refused_by_name(where):
    d = copy.deepcopy(_reference_25_7b())
    target = {"top": d, "vision": d["vision_config"], "text": d["text_config"],
              "rope": d["text_config"]["rope_scaling"]}[where]
    target["frobnicate_heads"] = 3
    with pytest.raises(UnsupportedConfigError, match="frobnicate_heads"):
        qwen_vl.parse_config(d)


def test_unsupported_values_are_refused():
    d = copy.deepcopy(QWEN2_VL_7B)
    d["use_sliding_window"] = True
    with pytest.raises(UnsupportedConfigError, match="sliding"):
        qwen_vl.parse_config(d)
    d = copy.deepcopy(QWEN2_VL_7B)
    d["rope_scaling"]["mrope_section"] = [16, 24, 16]
    with pytest.raises(UnsupportedConfigError, match="mrope_section"):
        qwen_vl.parse_config(d)


def test_parsed_fields():
    cfg = qwen_vl.parse_config(_reference_25_7b())
    assert cfg.family == "qwen2_5_vl" and cfg.vision.fullatt_block_indexes == (7, 15, 23, 31)
    assert cfg.vision.window_size == 112 and cfg.vision.tokens_per_second == 2
    assert cfg.text.rope.theta == 1e6 and cfg.text.attention_bias and not cfg.text.tie_word_embeddings
    cfg2 = qwen_vl.parse_config(QWEN2_VL_2B)
    assert cfg2.family == "qwen2_vl" and cfg2.text.tie_word_embeddings and cfg2.vision.hidden_act == "quick_gelu"
    assert cfg2.vision.intermediate_size == 5120 and cfg2.vision.out_hidden_size == 1536
    hash(cfg), hash(cfg2)  # jit-static
