"""Tiny LlavaForConditionalGeneration references built offline, plus the same weights as a jaxvlm VLM.

    torch_model, params = build(gqa=True)        # float32, seeded, initializer_range 0.1, re-drawn norms
    inputs = make_inputs(config, lengths=(640, 610, 605), padding="left")

The image is the real 336px / patch-14 geometry (576 image tokens after dropping CLS) with tiny widths, so
prompts of 600+ tokens exercise RoPE at real distances. After construction every norm scale is re-drawn as
1 + 0.1 N(0,1) and every bias as 0.1 N(0,1) (transformers initialises them to 1 / 0, which would hide a
missing or misplaced norm or bias).
"""

from __future__ import annotations

import numpy as np

IMAGE_TOKEN = 250
PAD_TOKEN = 251
VOCAB = 256


def hf_config_dict(gqa: bool = True, *, vision_layers: int = 3, text_layers: int = 2, feature_layer=-2,
                   strategy: str = "default", tie: bool = False, rope_parameters=None) -> dict:
    """A config.json-style dict of a tiny LLaVA (text 64 wide, vision 32 wide, 336px / patch 14)."""
    text = dict(model_type="llama", vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                num_hidden_layers=text_layers, num_attention_heads=4, num_key_value_heads=2 if gqa else 4,
                rms_norm_eps=1e-5, initializer_range=0.1, max_position_embeddings=2048,
                tie_word_embeddings=tie)
    if rope_parameters is not None:
        text["rope_parameters"] = rope_parameters
    vision = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                  num_hidden_layers=vision_layers, num_attention_heads=4, image_size=336, patch_size=14,
                  initializer_range=0.1, projection_dim=16)
    return dict(model_type="llava", architectures=["LlavaForConditionalGeneration"], text_config=text,
                vision_config=vision, image_token_index=IMAGE_TOKEN, pad_token_id=PAD_TOKEN,
                projector_hidden_act="gelu", vision_feature_layer=feature_layer,
                vision_feature_select_strategy=strategy, tie_word_embeddings=tie, initializer_range=0.1,
                image_seq_length=576 + (strategy == "full"))


def torch_model(config: dict, seed: int = 0):
    """transformers' LlavaForConditionalGeneration for `config`, float32, eval mode, eager attention."""
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    cfg = LlavaConfig(**{k: v for k, v in config.items() if k not in ("model_type", "architectures")})
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg).float().eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            is_norm = "norm" in name or "layrnorm" in name
            if is_norm and leaf == "weight":
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            elif leaf == "bias":
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    model.config._attn_implementation = "eager"
    for m in model.modules():
        if hasattr(m, "config") and hasattr(m.config, "_attn_implementation"):
            m.config._attn_implementation = "eager"
    return model


def to_jax(model, config: dict, dtype: str = "float32"):
    """The torch model's weights as a jaxvlm VLM, through the converter (in-memory key layout)."""
    import jax.numpy as jnp

    from converters.core import DictReader, convert
    from converters.llava import table
    from jaxvlm.model import VLM
    from jaxvlm.models import llava

    cfg = llava.parse_config(config)
    weights = convert(table(cfg), llava.weight_shapes(cfg), DictReader(model.state_dict()), dtype=dtype,
                      place=jnp.asarray)
    return VLM(weights=weights, config=cfg)


def build(gqa: bool = True, seed: int = 0, **kw):
    """(torch model, jaxvlm VLM, config dict) with identical weights."""
    config = hf_config_dict(gqa, **kw)
    model = torch_model(config, seed)
    return model, to_jax(model, config), config


def make_inputs(config: dict, lengths=(640, 610, 605), padding: str = "left", images_per_row=1, seed: int = 0):
    """A padded batch: each row is text, `images_per_row[b]` runs of 576 image tokens, text.

    Returns numpy input_ids (B,T) int64, attention_mask (B,T) int64, pixel_values (I,3,336,336) float32.
    """
    rng = np.random.default_rng(seed)
    per_image = 576 + (config.get("vision_feature_select_strategy") == "full")
    if isinstance(images_per_row, int):
        images_per_row = [images_per_row] * len(lengths)
    rows = []
    for n, k in zip(lengths, images_per_row):
        text = n - k * per_image
        assert text >= 2, "row too short for its images"
        ids = list(rng.integers(0, IMAGE_TOKEN, size=text))
        start = int(rng.integers(1, max(2, text // (k + 1))))
        for _ in range(k):
            ids[start:start] = [IMAGE_TOKEN] * per_image
            start += per_image + int(rng.integers(0, 3))
        rows.append(ids[:n])
    t = max(lengths)
    input_ids = np.full((len(rows), t), PAD_TOKEN, np.int64)
    mask = np.zeros((len(rows), t), np.int64)
    for b, ids in enumerate(rows):
        sl = slice(t - len(ids), t) if padding == "left" else slice(0, len(ids))
        input_ids[b, sl] = ids
        mask[b, sl] = 1
    pixels = rng.standard_normal((sum(images_per_row), 3, 336, 336)).astype(np.float32)
    return {"input_ids": input_ids, "attention_mask": mask, "pixel_values": pixels}


def torch_logits(model, inputs: dict) -> np.ndarray:
    """transformers' logits with position_ids = cumsum(mask) - 1 (positions from each row's first token)."""
    import torch

    mask = torch.as_tensor(inputs["attention_mask"])
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(inputs["input_ids"]), attention_mask=mask, position_ids=pos,
                    pixel_values=torch.as_tensor(inputs["pixel_values"]))
    return out.logits.float().numpy()
