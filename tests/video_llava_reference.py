"""Tiny VideoLlavaForConditionalGeneration references built offline, plus the same weights as a jaxvlm VLM.

    model, params, config = build()           # float32, seeded, initializer_range 0.1, re-drawn norms
    inputs = make_inputs(params, rows=("image", "video", "image+video"))

Real Video-LLaVA geometry (224px, patch 14: 256 tokens per image, 8 frames x 257 = 2,056 per video) with tiny
widths (text 64, vision 32); norms and biases re-drawn as tests/llava_next_reference.py does.
"""

from __future__ import annotations

import numpy as np

from llava_next_reference import hf_reference, jax_copy
from llava_reference import IMAGE_TOKEN, PAD_TOKEN, VOCAB

VIDEO_TOKEN = 252
FRAMES = 8


def hf_config_dict(*, text_layers: int = 2, vision_layers: int = 2, feature_layer=-2, strategy="default") -> dict:
    text = dict(model_type="llama", vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                num_hidden_layers=text_layers, num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                initializer_range=0.1, max_position_embeddings=8192)
    vision = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                  num_hidden_layers=vision_layers, num_attention_heads=4, image_size=224, patch_size=14,
                  initializer_range=0.1, projection_dim=16)
    return dict(model_type="video_llava", architectures=["VideoLlavaForConditionalGeneration"], text_config=text,
                vision_config=vision, image_token_index=IMAGE_TOKEN, video_token_index=VIDEO_TOKEN,
                pad_token_id=PAD_TOKEN, projector_hidden_act="gelu", vision_feature_layer=feature_layer,
                vision_feature_select_strategy=strategy, tie_word_embeddings=False, initializer_range=0.1,
                image_seq_length=256 + (strategy == "full"), video_seq_length=FRAMES * 257)


def torch_model(config: dict, seed: int = 0):
    return hf_reference(config, "VideoLlavaConfig", "VideoLlavaForConditionalGeneration", seed)


def to_jax(model, config: dict):
    return jax_copy(model, config, "video_llava")


def build(seed: int = 0, **kw):
    config = hf_config_dict(**kw)
    model = torch_model(config, seed)
    return model, to_jax(model, config), config


def make_inputs(params, rows=("image", "video", "image+video"), text=(40, 25, 30), padding="left", seed=0):
    """Row b: `text[b]` random ids with the runs of its media ("image", "video" or both, in that order) inserted.
    pixel_values (I, 3, 224, 224) / pixel_values_videos (V, 8, 3, 224, 224) (None when absent)."""
    rng = np.random.default_rng(seed)
    cfg = params.config
    per = {"image": (IMAGE_TOKEN, cfg.tokens_per_image), "video": (VIDEO_TOKEN, FRAMES * cfg.tokens_per_frame)}
    ids_rows = []
    for b, kinds in enumerate(rows):
        ids = list(rng.integers(0, IMAGE_TOKEN, size=text[b]))
        at = int(rng.integers(1, text[b] // 2))
        for kind in kinds.split("+") if kinds else ():
            token, n = per[kind]
            ids[at:at] = [token] * n
            at += n + int(rng.integers(1, 4))
        ids_rows.append(ids)
    t = max(map(len, ids_rows))
    input_ids = np.full((len(rows), t), PAD_TOKEN, np.int64)
    mask = np.zeros((len(rows), t), np.int64)
    for b, ids in enumerate(ids_rows):
        sl = slice(t - len(ids), t) if padding == "left" else slice(0, len(ids))
        input_ids[b, sl], mask[b, sl] = ids, 1
    n_img = sum("image" in r for r in rows)
    n_vid = sum("video" in r for r in rows)
    s = cfg.vision.image_size
    return {"input_ids": input_ids, "attention_mask": mask,
            "pixel_values": rng.standard_normal((n_img, 3, s, s)).astype(np.float32) if n_img else None,
            "pixel_values_videos": (rng.standard_normal((n_vid, FRAMES, 3, s, s)).astype(np.float32)
                                    if n_vid else None)}


def torch_logits(model, inputs: dict) -> np.ndarray:
    import torch

    mask = torch.as_tensor(inputs["attention_mask"])
    opt = {k: torch.as_tensor(inputs[k]) for k in ("pixel_values", "pixel_values_videos") if inputs[k] is not None}
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(inputs["input_ids"]), attention_mask=mask,
                    position_ids=(mask.cumsum(-1) - 1).clamp(min=0), **opt)
    return out.logits.float().numpy()
