"""Tiny random-weight models and inputs for the input-handling tests (tests/test_inputs.py, the bad-input
catalogue): a LLaVA-1.5-shaped model at 112 px / patch 14 (8 x 8 = 64 image tokens, pad-to-square masks) and a
Qwen2-VL one, both built in under a second (jaxvlm.model.random_params), cached per process.
"""

from __future__ import annotations

import functools

import numpy as np

import llava_reference as L
import qwen_reference as Q

LLAVA_SIDE, LLAVA_TOKENS = 112, 64


@functools.cache
def llava():
    from jaxvlm.model import random_params
    from jaxvlm.models import llava as fam

    d = L.hf_config_dict(text_layers=3, vision_layers=1)
    d["vision_config"]["image_size"] = LLAVA_SIDE
    d["image_seq_length"] = LLAVA_TOKENS
    return random_params(fam.parse_config(d))


@functools.cache
def qwen():
    from jaxvlm.model import random_params
    from jaxvlm.models import qwen_vl

    return random_params(qwen_vl.parse_config(Q.hf_config_dict("qwen2_vl", text={"num_hidden_layers": 3})))


def llava_inputs(image_sizes=None, rows: int = 1, seed: int = 0) -> dict:
    """`rows` rows of 100 tokens, each with one image run of 64 tokens at slot 5; image_sizes (rows, 2)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, L.IMAGE_TOKEN, size=(rows, 100))
    ids[:, 5:5 + LLAVA_TOKENS] = L.IMAGE_TOKEN
    out = {"input_ids": ids, "attention_mask": np.ones_like(ids),
           "pixel_values": rng.standard_normal((rows, 3, LLAVA_SIDE, LLAVA_SIDE)).astype(np.float32)}
    if image_sizes is not None:
        out["image_sizes"] = np.asarray(image_sizes, np.int64).reshape(rows, 2)
    return out


def qwen_inputs(grids=((1, 8, 8),), seed: int = 0) -> dict:
    """One row per grid: 10 text tokens, the image span (t*h*w/4 tokens), 10 text tokens; right-padded."""
    rng = np.random.default_rng(seed)
    rows = [Q.text(rng, 10) + Q.media_span(Q.IMAGE, g) + Q.text(rng, 10) for g in grids]
    t = max(map(len, rows))
    ids = np.zeros((len(rows), t), np.int64)
    mask = np.zeros_like(ids)
    for b, r in enumerate(rows):
        ids[b, :len(r)], mask[b, :len(r)] = r, 1
    return {"input_ids": ids, "attention_mask": mask, "image_grid_thw": np.array(grids),
            "pixel_values": np.concatenate([Q.image_patches(rng, g) for g in grids])}


def kept_counts(out) -> list[list[int]]:
    """Visual tokens kept per stage and row (entries >= 0 of out.kept)."""
    return [(np.asarray(k) >= 0).sum(axis=1).tolist() for k in out.kept]
