"""`jaxvlm.load` of Qwen2-VL / Qwen2.5-VL checkpoint directories in every key layout, `jaxvlm.save` round trip,
export back to transformers, and clear errors for mismatched checkpoints."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from safetensors.numpy import save_file

import jaxvlm
import qwen_reference as R
from converters import ConversionError, export, table_for
from jaxvlm.models import qwen_vl

ATOL = 1e-4  # float32 logits, as in test_qwen_vl.py


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    g = (1, 4, 6)
    ids = R.text(rng, 9) + R.media_span(R.IMAGE, g) + R.text(rng, 5)
    return {"input_ids": np.array([ids]), "pixel_values": R.image_patches(rng, g), "image_grid_thw": np.array([g])}


def _write(path, sd: dict, config: dict, shards: int = 1):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    keys = sorted(sd)
    if shards == 1:
        save_file(sd, os.path.join(path, "model.safetensors"))
        return
    weight_map = {}
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: sd[k] for k in keys[s::shards]}
        save_file(part, os.path.join(path, name))
        weight_map.update({k: name for k in part})
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_load_every_layout_and_save_roundtrip(family, tmp_path):
    model, d = R.build(family)
    inputs = _inputs()
    ref = R.torch_logits(model, **inputs)
    # 1) transformers' own save_pretrained (Hub layout: model.layers.*, visual.*, lm_head)
    model.save_pretrained(tmp_path / "hf")
    # 2) in-memory module names (model.language_model.*, model.visual.*), sharded with an index
    sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    _write(tmp_path / "memory", sd, d, shards=3)
    for name in ("hf", "memory"):
        params = jaxvlm.load(str(tmp_path / name))
        assert params.config.family == family
        diff = np.abs(np.asarray(jaxvlm.forward(params, **inputs).logits) - ref).max()
        print(f"\n[max |diff|] {family} load {name}: {diff:.3g}")
        assert diff < ATOL
    jaxvlm.save(params, str(tmp_path / "jx"))
    back = jaxvlm.load(str(tmp_path / "jx"))
    np.testing.assert_array_equal(np.asarray(jaxvlm.forward(back, **inputs).logits),
                                  np.asarray(jaxvlm.forward(params, **inputs).logits))
    # export to the Hub layout reproduces transformers' tensors exactly
    exported = dict(export(table_for(params.config), params.weights, "hub"))
    hub_sd = {k.replace("model.language_model.", "model.").replace("model.visual.", "visual."): v
              for k, v in sd.items()}
    assert set(exported) == set(hub_sd)
    for k, v in exported.items():
        np.testing.assert_array_equal(v, hub_sd[k])


def test_mismatched_checkpoint_names_tensors(tmp_path):
    model, d = R.build("qwen2_5_vl")
    sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    sd.pop("model.visual.blocks.1.mlp.up_proj.bias")
    sd["model.visual.blocks.0.attn.proj.weight"] = sd["model.visual.blocks.0.attn.proj.weight"][:, :16].copy()
    _write(tmp_path / "bad", sd, d)
    with pytest.raises(ConversionError) as e:
        jaxvlm.load(str(tmp_path / "bad"))
    assert "blocks.1.mlp.up_proj.bias" in str(e.value) and "blocks.0.attn.proj.weight" in str(e.value)


def test_prepare_errors_are_clear():
    cfg = qwen_vl.parse_config(R.hf_config_dict("qwen2_vl"))
    inputs = _inputs()
    with pytest.raises(ValueError, match="image features and image tokens do not match"):
        qwen_vl.prepare(cfg, **{**inputs, "input_ids": inputs["input_ids"][:, :-8]})
    with pytest.raises(ValueError, match="patch rows"):
        qwen_vl.prepare(cfg, **{**inputs, "pixel_values": inputs["pixel_values"][:-4]})
    with pytest.raises(ValueError, match="no pixel_values"):
        qwen_vl.prepare(cfg, input_ids=inputs["input_ids"])
    # two images glued together without separating text: the first run is longer than image 0's grid
    g = (1, 2, 2)
    ids = np.array([[1, R.IMAGE, R.IMAGE, 2]])
    with pytest.raises(ValueError, match="its own span"):
        qwen_vl.prepare(cfg, input_ids=ids, pixel_values=np.zeros((8, R.PATCH_DIM), np.float32),
                        image_grid_thw=np.array([g, g]))


def test_load_flat_hub_config_with_tied_embeddings(tmp_path):
    """Hub config.json written by transformers 4.x: text fields at the top level, rope_scaling type "mrope",
    tied embeddings (no lm_head tensor in the files), vision `in_chans`."""
    model, d = R.build("qwen2_vl", text={"tie_word_embeddings": False})
    flat = {k: v for k, v in d.items() if k != "text_config"}
    text = dict(d["text_config"])
    rope = text.pop("rope_parameters")
    flat.update(text)
    flat.update({"rope_theta": rope["rope_theta"],
                 "rope_scaling": {"type": "mrope", "mrope_section": rope["mrope_section"]},
                 "tie_word_embeddings": True, "architectures": ["Qwen2VLForConditionalGeneration"],
                 "use_sliding_window": False, "sliding_window": 32768, "max_window_layers": 2})
    flat["vision_config"] = {**d["vision_config"], "in_chans": 3, "spatial_patch_size": R.PATCH}
    with torch_no_grad():
        model.lm_head.weight = model.model.language_model.embed_tokens.weight  # tie, as the flat config says
    sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items() if not k.startswith("lm_head")}
    sd = {k.replace("model.language_model.", "model.").replace("model.visual.", "visual."): v for k, v in sd.items()}
    _write(tmp_path / "flat", sd, flat)
    params = jaxvlm.load(str(tmp_path / "flat"))
    assert params.config.text.tie_word_embeddings and "lm_head" not in params.weights["text"]
    inputs = _inputs(1)
    diff = np.abs(np.asarray(jaxvlm.forward(params, **inputs).logits) - R.torch_logits(model, **inputs)).max()
    print(f"\n[max |diff|] qwen2_vl flat Hub config, tied embeddings: {diff:.3g}")
    assert diff < ATOL


def torch_no_grad():
    import torch

    return torch.no_grad()
