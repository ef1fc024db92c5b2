"""Tiny Qwen2-VL / Qwen2.5-VL reference models (transformers, PyTorch, float32) built offline from configs.

Every weight is re-drawn (std 0.1, norm scales 1 + 0.1 * noise, biases 0.1 * noise) so that rotary and
M-RoPE mistakes change logits by far more than float32 noise (with transformers' default init of 0.02 and
unit norms, tiny models are almost position-blind).
"""

from __future__ import annotations

import numpy as np

IMAGE, VIDEO, VSTART, VEND = 250, 251, 252, 253
VOCAB = 256
MERGE = 2
PATCH = 14
PATCH_DIM = 3 * 2 * PATCH * PATCH


def text_config(**over) -> dict:
    d = {"vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "max_position_embeddings": 4096,
         "initializer_range": 0.1, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                                       "mrope_section": [2, 3, 3]}}
    d.update(over)
    return d


def hf_config_dict(family: str, *, depth: int = 2, fullatt=(1,), window_size: int = 56, text=None,
                   tokens_per_second: int = 2, token_ids: dict | None = None, vision_width: int = 32) -> dict:
    """A tiny config dict (what config.json would hold, nested text_config layout)."""
    out = (text or {}).get("hidden_size", 64)
    if family == "qwen2_vl":
        vision = {"depth": depth, "embed_dim": vision_width, "hidden_size": out, "num_heads": 2, "mlp_ratio": 2,
                  "patch_size": PATCH, "temporal_patch_size": 2, "spatial_merge_size": MERGE, "in_channels": 3,
                  "hidden_act": "quick_gelu", "initializer_range": 0.1}
    else:
        vision = {"depth": depth, "hidden_size": vision_width, "out_hidden_size": out, "num_heads": 2,
                  "intermediate_size": 48,
                  "patch_size": PATCH, "temporal_patch_size": 2, "spatial_merge_size": MERGE, "in_channels": 3,
                  "hidden_act": "silu", "window_size": window_size, "fullatt_block_indexes": list(fullatt),
                  "tokens_per_second": tokens_per_second, "initializer_range": 0.1}
    ids = {"image_token_id": IMAGE, "video_token_id": VIDEO, "vision_start_token_id": VSTART,
           "vision_end_token_id": VEND, **(token_ids or {})}
    return {"model_type": family, "text_config": text_config(**(text or {})), "vision_config": vision, **ids,
            "tie_word_embeddings": False, "initializer_range": 0.1}


def build(family: str, seed: int = 0, **kw):
    """(torch model in eval mode, config dict) with every weight re-drawn from `seed`."""
    import torch
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig,
                              Qwen2VLForConditionalGeneration)

    d = hf_config_dict(family, **kw)
    cls_cfg, cls = ((Qwen2VLConfig, Qwen2VLForConditionalGeneration) if family == "qwen2_vl"
                    else (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration))
    torch.manual_seed(seed)
    model = cls(cls_cfg(**d)).float().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * 0.1
            is_norm = any(s in name for s in ("norm", "ln_q")) and name.endswith("weight")
            p.copy_(1.0 + noise if is_norm else noise)
    return model, d


def state_dict_np(model) -> dict:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def image_patches(rng: np.random.Generator, grid) -> np.ndarray:
    t, h, w = grid
    return rng.standard_normal((t * h * w, PATCH_DIM)).astype(np.float32)


def n_tokens(grid) -> int:
    t, h, w = grid
    return t * h * w // (MERGE * MERGE)


def media_span(kind: int, grid) -> list[int]:
    return [VSTART] + [kind] * n_tokens(grid) + [VEND]


def text(rng: np.random.Generator, n: int) -> list[int]:
    return rng.integers(0, 240, n).tolist()


def mm_types(ids: np.ndarray) -> np.ndarray:
    return np.where(ids == IMAGE, 1, np.where(ids == VIDEO, 2, 0)).astype(np.int64)


def torch_logits(model, **inputs) -> np.ndarray:
    """transformers' logits (B, T, V) for numpy inputs (mm_token_type_ids derived from the ids)."""
    import torch

    def tensor(v):
        a = np.asarray(v)
        return torch.from_numpy(a.astype(np.int64) if np.issubdtype(a.dtype, np.integer) else a)

    t = {k: tensor(v) for k, v in inputs.items() if v is not None}
    t.setdefault("mm_token_type_ids", tensor(mm_types(np.asarray(inputs["input_ids"]))))
    with torch.no_grad():
        return model(**t).logits.numpy()
