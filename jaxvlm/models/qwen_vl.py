"""Qwen2-VL and Qwen2.5-VL (families "qwen2_vl", "qwen2_5_vl"): config, host-side prepare, jittable embed.

    cfg = parse_config(hf_config_dict)
    batch = prepare(cfg, input_ids=..., attention_mask=..., pixel_values=..., image_grid_thw=...,
                    pixel_values_videos=..., video_grid_thw=..., mm_token_type_ids=None, second_per_grid_ts=None)
    emb = embed(params, batch)        # Embedded: token embeddings with visual features scattered in + metadata

The text model is the shared Qwen2 decoder (`jaxvlm/models/decoder.py`, q/k/v biases) driven by M-RoPE
positions (3, B, T) = (temporal, height, width) computed exactly as transformers' `model.get_rope_index`,
except that positions are counted from each row's first real token for every row (transformers does so
when given an attention mask, which is what `generate` passes), so left and right padding agree.
`batch["rope_deltas"]` (B,) is what decode adds: position of the n-th real token (n >= prompt length) =
n + rope_deltas.

Images and videos of a batch go through the vision tower together as one packed sequence (images first,
then videos); attention never crosses an image or frame, so this equals transformers' two separate calls.
The packed patch axis is padded to a shape bucket (masked padding patches, `qwen_vision.BUCKETS_PER_OCTAVE`),
so batches of different image sizes share compiled programs.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxvlm import input_checks as checks
from jaxvlm.config import (
    TEXT_BENIGN, TEXT_KEYS, TextConfig, UnsupportedConfigError, check_fields, parse_text_config, require,
)
from jaxvlm.errors import UserError
from jaxvlm.layers import ACTIVATIONS
from jaxvlm.model import VLM, Embedded
from jaxvlm.models import decoder, qwen_vision
from jaxvlm.models.qwen_vision import VisionConfig

FAMILIES = ("qwen2_vl", "qwen2_5_vl")
ARCHITECTURES = {"Qwen2VLForConditionalGeneration": "qwen2_vl",
                 "Qwen2_5_VLForConditionalGeneration": "qwen2_5_vl"}
TEXT, IMAGE, VIDEO = 0, 1, 2  # mm_token_type_ids values (transformers' convention)


@dataclasses.dataclass(frozen=True)
class QwenVLConfig:
    family: str
    text: TextConfig
    vision: VisionConfig
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    hf_json: str = dataclasses.field(default="", compare=False, repr=False)  # the parsed config.json (for save)


# ------------------------------------------------------------------------------------------- config

TOP_KEYS = {"text_config", "vision_config", "image_token_id", "video_token_id", "vision_start_token_id",
            "vision_end_token_id", "vision_token_id", "tie_word_embeddings"}
# transformers' Qwen2VLTextConfig / Qwen2_5_VLTextConfig defaults (they differ from Llama's).
TEXT_DEFAULTS = {"vocab_size": 152064, "hidden_size": 8192, "intermediate_size": 29568, "num_hidden_layers": 80,
                 "num_attention_heads": 64, "num_key_value_heads": 8, "rms_norm_eps": 1e-5}
VISION_KEYS = {
    "qwen2_vl": {"depth", "embed_dim", "hidden_size", "hidden_act", "mlp_ratio", "num_heads", "in_channels",
                 "in_chans", "patch_size", "spatial_patch_size", "spatial_merge_size", "temporal_patch_size",
                 "rope_parameters", "num_attention_heads", "num_hidden_layers"},
    "qwen2_5_vl": {"depth", "hidden_size", "hidden_act", "intermediate_size", "num_heads", "in_channels",
                   "in_chans", "patch_size", "spatial_patch_size", "spatial_merge_size", "temporal_patch_size",
                   "tokens_per_second", "window_size", "out_hidden_size", "fullatt_block_indexes",
                   "rope_parameters", "num_attention_heads", "num_hidden_layers"},
}


def _family_of(hf: Mapping[str, Any]) -> str:
    mt = hf.get("model_type")
    if mt in FAMILIES:
        return mt
    for arch in hf.get("architectures") or ():
        if arch in ARCHITECTURES:
            return ARCHITECTURES[arch]
    raise UnsupportedConfigError(f"not a Qwen2-VL / Qwen2.5-VL config (model_type={mt!r})")


def _parse_vision(family: str, d: Mapping[str, Any]) -> VisionConfig:
    section = "vision_config"
    check_fields(section, d, VISION_KEYS[family])
    # transformers' attribute_map aliases
    depth = int(d.get("depth", d.get("num_hidden_layers", 32)))
    heads = int(d.get("num_heads", d.get("num_attention_heads", 16)))
    in_ch = int(d.get("in_channels", d.get("in_chans", 3)))
    require(section, int(d.get("in_chans", in_ch)) == in_ch, "in_chans != in_channels")
    patch = d.get("patch_size", 14)
    require(section, isinstance(patch, int), f"non-square patch_size {patch!r} is not implemented")
    require(section, int(d.get("spatial_patch_size", patch)) == patch, "spatial_patch_size != patch_size")
    tps = d.get("temporal_patch_size", 2)
    require(section, isinstance(tps, int), f"temporal_patch_size {tps!r} must be an int")
    rope = dict(d.get("rope_parameters") or {})
    check_fields(f"{section}.rope_parameters", rope, {"rope_type", "rope_theta", "type"})
    require(section, rope.get("rope_type", rope.get("type", "axial")) == "axial", "vision rope_type must be 'axial'")
    common = dict(depth=depth, num_heads=heads, in_channels=in_ch, patch_size=int(patch), temporal_patch_size=tps,
                  spatial_merge_size=int(d.get("spatial_merge_size", 2)),
                  rope_theta=float(rope.get("rope_theta", 10000.0)))
    if family == "qwen2_vl":
        width = int(d.get("embed_dim", 1280))
        act = d.get("hidden_act", "quick_gelu")
        cfg = VisionConfig(family=family, hidden_size=width, intermediate_size=int(width * d.get("mlp_ratio", 4)),
                           hidden_act=act, out_hidden_size=int(d.get("hidden_size", 3584)), **common)
    else:
        act = d.get("hidden_act", "silu")
        full = tuple(int(i) for i in d.get("fullatt_block_indexes", (7, 15, 23, 31)))
        cfg = VisionConfig(family=family, hidden_size=int(d.get("hidden_size", 3584)),
                           intermediate_size=int(d.get("intermediate_size", 3420)), hidden_act=act,
                           out_hidden_size=int(d.get("out_hidden_size", 3584)),
                           window_size=int(d.get("window_size", 112)), fullatt_block_indexes=full,
                           tokens_per_second=float(d.get("tokens_per_second", 4)), **common)
        require(section, cfg.window_size // cfg.spatial_merge_size // cfg.patch_size >= 1,
                "window_size smaller than one merged patch")
    require(section, act in ACTIVATIONS, f"hidden_act {act!r} is not implemented")
    require(section, cfg.hidden_size % heads == 0 and cfg.head_dim % 4 == 0,
            "vision head_dim must be a multiple of 4 (axial 2-D rotary)")
    return cfg


def parse_config(hf: Mapping[str, Any]) -> QwenVLConfig:
    """Parse a Qwen2-VL / Qwen2.5-VL config.json dict (flat Hub layout or with a nested text_config)."""
    family = _family_of(hf)
    hf = dict(hf)
    nested = hf.get("text_config")
    if nested is not None:
        text_d = dict(nested)
        # transformers ignores text fields duplicated at the top level when text_config is given.
        top_rest = {k: v for k, v in hf.items() if k not in TOP_KEYS}
        check_fields("config", top_rest, TEXT_KEYS, TEXT_BENIGN)
    else:
        text_d = {k: v for k, v in hf.items() if k not in TOP_KEYS}
    text_d.pop("text_config", None)
    for k, v in TEXT_DEFAULTS.items():
        text_d.setdefault(k, v)
    if "rope_theta" not in (text_d.get("rope_parameters") or {}) and "rope_theta" not in text_d:
        text_d["rope_theta"] = 1e6
    rope_d = {**(text_d.pop("rope_scaling", None) or {}), **(text_d.get("rope_parameters") or {})}
    rope_d.setdefault("mrope_section", [16, 24, 24])  # transformers' fallback
    text_d["rope_parameters"] = rope_d
    require("text_config", text_d.get("attention_bias", True) is True,
            "attention_bias=False is not implemented (Qwen2-VL always has q/k/v biases)")
    hidden, heads = int(text_d["hidden_size"]), int(text_d["num_attention_heads"])
    require("text_config", text_d.get("head_dim") in (None, hidden // heads),
            "head_dim != hidden_size / num_attention_heads is not implemented (Qwen2-VL ignores head_dim)")
    tie = bool(hf.get("tie_word_embeddings", False) or text_d.get("tie_word_embeddings", False))
    text = parse_text_config(text_d, default_attention_bias=True, tie_word_embeddings=tie,
                             extra_benign={"attention_bias"})
    require("text_config", sum(text.rope.mrope_section) == text.head_dim // 2,
            f"mrope_section {text.rope.mrope_section} must sum to head_dim/2 = {text.head_dim // 2}")
    require("text_config", text.rope.rope_type == "default", "Qwen M-RoPE with rope scaling is not implemented")
    vision = _parse_vision(family, hf.get("vision_config") or {})
    require("vision_config", vision.out_hidden_size == text.hidden_size,
            f"merger output {vision.out_hidden_size} != text hidden_size {text.hidden_size}")
    ids = {k: int(hf[k]) for k in ("image_token_id", "video_token_id", "vision_start_token_id",
                                   "vision_end_token_id") if hf.get(k) is not None}
    return QwenVLConfig(family=family, text=text, vision=vision, **ids,
                        hf_json=json.dumps(dict(hf), sort_keys=True, default=str))


def weight_shapes(cfg: QwenVLConfig) -> dict:
    """{"vision": tower, "projector": merger, "text": decoder} shape pytree."""
    return {**qwen_vision.weight_shapes(cfg.vision), "text": decoder.weight_shapes(cfg.text)}


# ------------------------------------------------------------------------------------------ prepare


def _type_groups(types: np.ndarray):
    """[(type, start, stop)] runs of equal values (transformers groups tokens the same way)."""
    out, start = [], 0
    for key, grp in itertools.groupby(types.tolist()):
        n = len(list(grp))
        out.append((key, start, start + n))
        start += n
    return out


def rope_index(cfg: QwenVLConfig, mm_token_type_ids: np.ndarray, attention_mask: np.ndarray,
               image_grid_thw: np.ndarray | None, video_grid_thw: np.ndarray | None,
               second_per_grid_ts: np.ndarray | None = None):
    """M-RoPE positions (3, B, T) int64 and rope_deltas (B,) as transformers' `get_rope_index`.

    Also returns, per token, (media, frame, row, col) for visual tokens (-1 for text) and checks that every
    run of image/video tokens holds exactly the next grid's t * (h/m) * (w/m) tokens.
    """
    b, t_len = mm_token_type_ids.shape
    m = cfg.vision.spatial_merge_size
    grids = {IMAGE: np.zeros((0, 3), np.int64) if image_grid_thw is None else image_grid_thw,
             VIDEO: np.zeros((0, 3), np.int64) if video_grid_thw is None else video_grid_thw}
    n_images = len(grids[IMAGE])
    nxt = {IMAGE: 0, VIDEO: 0}
    positions = np.zeros((3, b, t_len), np.int64)
    meta = np.full((4, b, t_len), -1, np.int64)  # media, frame, row, col
    deltas = np.zeros(b, np.int64)
    for row in range(b):
        keep = np.flatnonzero(attention_mask[row])
        types = mm_token_type_ids[row, keep]
        pos_parts, meta_parts, cur = [], [], 0
        for kind, start, stop in _type_groups(types):
            n = stop - start
            if kind == TEXT:
                pos_parts.append(np.broadcast_to(np.arange(n) + cur, (3, n)))
                meta_parts.append(np.full((4, n), -1))
                cur += n
                continue
            if kind not in (IMAGE, VIDEO):
                raise UserError(f"mm_token_type_ids value {kind} (row {row}) is not 0 (text), 1 (image) or 2 (video)")
            what = "image" if kind == IMAGE else "video"
            k = nxt[kind]
            if k >= len(grids[kind]):
                raise UserError(f"row {row}: more {what} token spans than entries in {what}_grid_thw "
                                 f"({len(grids[kind])})")
            gt, gh, gw = (int(v) for v in grids[kind][k])
            hm, wm = gh // m, gw // m
            if n != gt * hm * wm:
                raise UserError(
                    f"row {row}: a run of {n} {what} tokens stands for {what} {k} with grid_thw {[gt, gh, gw]}, "
                    f"which has {gt * hm * wm} tokens (t*h*w/{m * m}); every {what} needs its own span of exactly "
                    "that many tokens (separate adjacent spans with text, e.g. vision_start/vision_end)")
            nxt[kind] += 1
            interval = 1.0
            if kind == VIDEO and cfg.family == "qwen2_5_vl":
                sec = 1.0 if second_per_grid_ts is None else second_per_grid_ts[k]
                interval = np.float32(cfg.vision.tokens_per_second) * np.float32(sec)
            tpos = (np.arange(gt, dtype=np.float32) * np.float32(interval)).astype(np.int64) + cur
            f, r, c = np.meshgrid(np.arange(gt), np.arange(hm), np.arange(wm), indexing="ij")
            pos_parts.append(np.stack([tpos[f.ravel()], r.ravel() + cur, c.ravel() + cur]))
            media = k if kind == IMAGE else n_images + k
            meta_parts.append(np.stack([np.full(n, media), f.ravel(), r.ravel(), c.ravel()]))
            cur += max(gh, gw) // m
        if keep.size:
            pos = np.concatenate(pos_parts, axis=1)
            positions[:, row, keep] = pos
            meta[:, row, keep] = np.concatenate(meta_parts, axis=1)
            deltas[row] = pos.max() + 1 - keep.size
    for kind, what in ((IMAGE, "image"), (VIDEO, "video")):
        if nxt[kind] != len(grids[kind]):
            raise UserError(f"{len(grids[kind])} {what}s given ({what}_grid_thw) but the prompt has "
                             f"{nxt[kind]} {what} token spans")
    return positions, deltas, meta


def _as_np(x, dtype=None):
    if x is None:
        return None
    a = np.asarray(x)
    return a if dtype is None else a.astype(dtype)


def prepare(cfg: QwenVLConfig, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None,
            pixel_values_videos=None, video_grid_thw=None, mm_token_type_ids=None, second_per_grid_ts=None,
            image_sizes=None) -> dict[str, np.ndarray]:
    """Validate transformers-style inputs and compute every host-side array `embed` needs (numpy).

    Returns input_ids (B,T) int32, valid (B,T) bool, positions (3,B,T) int32 (get_rope_index; 0 on padding),
    rope_deltas (B,) int32, feature_index (B,T) int32 (row of the merged image-then-video features each visual
    token takes, -1 for text), the per-token metadata of `Embedded` (visual, media [images first, then
    videos], frame [temporal patch index], row, col [merged grid], span_index [row * merged_w + col]) and,
    when media are given, patches (Np, C*tp*p*p) float32 (images then videos, then zero rows up to the
    patch-count bucket, `qwen_vision.BUCKETS_PER_OCTAVE`) with the vision index arrays `vis_*` of
    `qwen_vision.index_arrays` (bucketed the same way: one compiled program per bucket, not per patch count).
    `mm_token_type_ids` is derived from the ids when absent (and must agree with them when given);
    `second_per_grid_ts` (one per video) spaces Qwen2.5-VL video time positions.
    `image_sizes` is accepted for API uniformity and unused (Qwen images are resized, never padded).
    Bad inputs raise UserError naming the tensor (out-of-vocabulary ids, non-finite pixels, shapes, counts).
    """
    ids = checks.int_array("input_ids", input_ids, ndim=2).astype(np.int64)
    checks.check_token_ids(ids, cfg.text.vocab_size)
    b, t_len = ids.shape
    mask = np.ones((b, t_len), bool) if attention_mask is None else _as_np(attention_mask).astype(bool)
    if mask.shape != ids.shape:
        raise UserError(f"attention_mask {mask.shape} != input_ids {ids.shape}")
    is_img, is_vid = ids == cfg.image_token_id, ids == cfg.video_token_id
    if mm_token_type_ids is None:
        types = np.where(is_img, IMAGE, np.where(is_vid, VIDEO, TEXT))
    else:
        types = _as_np(mm_token_type_ids, np.int64)
        if types.shape != ids.shape:
            raise UserError(f"mm_token_type_ids {types.shape} != input_ids {ids.shape}")
        bad = ((types == IMAGE) != is_img) | ((types == VIDEO) != is_vid)
        if (bad & mask).any():
            raise UserError("mm_token_type_ids disagrees with the image/video token ids in input_ids")
    if ((is_img | is_vid) & ~mask).any():
        raise UserError("image/video tokens at padding positions (attention_mask == 0)")
    vcfg = cfg.vision
    media = []  # (pixel rows, grids) for images then videos
    for name, pix, grid, tok in (("image", pixel_values, image_grid_thw, is_img),
                                 ("video", pixel_values_videos, video_grid_thw, is_vid)):
        pv_name = "pixel_values" if name == "image" else "pixel_values_videos"
        if (pix is None) != (grid is None):
            raise UserError(f"{pv_name} and {name}_grid_thw must be given together")
        if pix is None:
            if tok.any():
                raise UserError(f"input_ids hold {int(tok.sum())} {name} tokens but no {pv_name} was given")
            continue
        g = qwen_vision.check_grids(vcfg, grid, f"{name}_grid_thw")
        pix = _as_np(pix)
        if pix.ndim != 2 or pix.shape[1] != vcfg.patch_dim:
            raise UserError(f"{pv_name} must be (num_patches, {vcfg.patch_dim}) "
                            f"(C*temporal_patch*patch*patch), got {pix.shape}")
        checks.check_finite(pix, pv_name)
        if pix.shape[0] != int(g.prod(-1).sum()):
            raise UserError(f"{pv_name} has {pix.shape[0]} patch rows, {name}_grid_thw needs "
                             f"{int(g.prod(-1).sum())} (sum of t*h*w)")
        n_tok, n_feat = int(tok.sum()), int(g.prod(-1).sum()) // vcfg.merge_unit
        if n_tok != n_feat:
            raise UserError(f"{name} features and {name} tokens do not match: input_ids hold {n_tok} {name} "
                             f"tokens, {name}_grid_thw gives {n_feat} features (t*h*w/{vcfg.merge_unit})")
        media.append((pix, g))
    img_grid = _as_np(image_grid_thw, np.int64) if image_grid_thw is not None else None
    vid_grid = _as_np(video_grid_thw, np.int64) if video_grid_thw is not None else None
    spgt = _as_np(second_per_grid_ts, np.float32)
    if spgt is not None and (vid_grid is None or spgt.reshape(-1).shape[0] != len(vid_grid)):
        raise UserError("second_per_grid_ts needs one entry per video")
    if media:
        positions, deltas, meta = rope_index(cfg, types, mask, img_grid, vid_grid,
                                             None if spgt is None else spgt.reshape(-1))
    else:  # text only: 1-D positions counted from the first real token, as generate does
        pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
        positions, deltas = np.broadcast_to(pos, (3, b, t_len)), np.zeros(b, np.int64)
        meta = np.full((4, b, t_len), -1, np.int64)
    visual = is_img | is_vid
    # Feature index: image tokens take the image features in row-major order, video tokens the video features.
    feat = np.full((b, t_len), -1, np.int64)
    n_img_feat = int(is_img.sum())
    feat[is_img] = np.arange(n_img_feat)
    feat[is_vid] = n_img_feat + np.arange(int(is_vid.sum()))
    media_id, frame, row, col = meta
    grid_w = np.zeros_like(col)
    all_grids = np.concatenate([g for _, g in media]) if media else np.zeros((0, 3), np.int64)
    if media:
        grid_w[visual] = all_grids[media_id[visual], 2] // vcfg.spatial_merge_size
    span = np.where(visual, row * grid_w + col, -1)
    i32 = lambda a: np.ascontiguousarray(a, np.int32)  # noqa: E731
    batch = {
        "input_ids": i32(ids), "valid": mask, "positions": i32(positions), "rope_deltas": i32(deltas),
        "visual": visual, "media": i32(media_id), "frame": i32(frame), "row": i32(row), "col": i32(col),
        "span_index": i32(span), "feature_index": i32(feat),
    }
    if media:  # packed patch axis and attention blocks padded to shape buckets (see qwen_vision)
        index = qwen_vision.index_arrays(vcfg, all_grids, qwen_vision.BUCKETS_PER_OCTAVE)
        patches = np.zeros((index["order"].size, vcfg.patch_dim), np.float32)
        np.concatenate([np.asarray(p, np.float32) for p, _ in media], axis=0, out=patches[: all_grids.prod(-1).sum()])
        batch["patches"] = patches
        batch.update({f"vis_{k}": v for k, v in index.items()})
    return batch


# -------------------------------------------------------------------------------------------- embed


def vision_index(batch: Mapping[str, Any]) -> dict:
    return {k[len("vis_"):]: v for k, v in batch.items() if k.startswith("vis_")}


def visual_features(params: VLM, batch: Mapping[str, Any]) -> jax.Array:
    """Merged visual features (Nm, D) of every image then every video of the batch (then the padding merged
    tokens of the patch bucket, which no feature_index points at)."""
    w, cfg = params.weights, params.config
    return qwen_vision.encode(cfg.vision, w["vision"], w["projector"], batch["patches"], vision_index(batch))


def embed(params: VLM, batch: Mapping[str, Any]) -> Embedded:
    """Token embeddings with the visual features scattered into the image/video token slots."""
    embeds = jnp.take(params.weights["text"]["embed"], batch["input_ids"], axis=0)
    if "patches" in batch:
        feats = visual_features(params, batch).astype(embeds.dtype)
        fi = batch["feature_index"]
        embeds = jnp.where((fi >= 0)[..., None], jnp.take(feats, jnp.maximum(fi, 0), axis=0), embeds)
    return Embedded.from_batch(embeds, batch)
