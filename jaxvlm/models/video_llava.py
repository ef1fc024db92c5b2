"""Video-LLaVA (transformers' VideoLlavaForConditionalGeneration): an image tower and a video tower (two CLIP
towers of one config), one projector, a Llama decoder.

Family contract (jaxvlm/model.py): parse_config, weight_shapes, prepare (host numpy), embed (jittable).

Weights: {"vision": image tower, "video_tower": video tower (both clip.weight_shapes), "projector", "text"};
the image path is LLaVA-1.5's (jaxvlm/models/llava.py: feature layers, CLS dropped under "default").

Features, as transformers computes them:
    images (I, C, S, S)       -> image tower at the feature layer(s) -> CLS dropped ("default") -> projector:
                                 G*G tokens per image (256 at 224px / patch 14)
    videos (V, F, C, S, S)    -> every frame through the video tower at the feature layer(s), CLS KEPT whatever
                                 the strategy (transformers' video path ignores it) -> projector:
                                 F * (1 + G*G) tokens per video (8 x 257 = 2,056)
Image features fill the image tokens and video features the video tokens, each in order (row-major over
(B, T)), like transformers' two masked_scatter calls; images and videos may share a batch and a row.

Token metadata (docs/PORTING.md, "LLaVA-NeXT and Video-LLaVA token layouts"): image and video tokens are
visual; media = image index, or number of images + video index; frame = frame index (0 for images); row / col
= patch position in the G x G grid (-1 for CLS tokens); span_index per `span_layout`: "frame" (default) = the
patch raster index within its image / frame (CLS -1, not detrended), "sequence" = the index in the image's or
video's whole token run. Frames are center-cropped by the processor, so there is no padding mask.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxvlm import input_checks as checks
from jaxvlm.config import UnsupportedConfigError, check_fields, require
from jaxvlm.errors import UserError
from jaxvlm.model import VLM, Embedded
from jaxvlm.models import clip, llava, llava_next

SECTION = "video_llava"
VISION_CLS = True  # embed(..., vision_cls=True) provides Embedded.vision_cls / vision_keys (VisionZip)
SPAN_LAYOUTS = ("frame", "sequence")
VIDEO_KEYS = {"video_token_index", "video_token_id", "video_seq_length"}


@dataclasses.dataclass(frozen=True)
class VideoLlavaConfig(llava.LlavaConfig):
    """LlavaConfig (tower config shared by both towers, feature layers, projector, text) plus the video token."""

    video_token_id: int = 32001
    span_layout: str = "frame"  # detrending positions, see module docstring
    family: str = "video_llava"

    @property
    def tokens_per_frame(self) -> int:
        """LLM tokens of one video frame: CLS + G*G patches (257 at 224px)."""
        return 1 + self.vision.grid**2


def parse_config(d: Mapping[str, Any]) -> VideoLlavaConfig:
    """Parse a VideoLlavaForConditionalGeneration config.json dict; refuses attributes it does not implement."""
    check_fields(SECTION, d, llava.TOP_KEYS | VIDEO_KEYS, llava.TOP_BENIGN)
    require(SECTION, d.get("model_type", SECTION) == SECTION, f"model_type {d.get('model_type')!r} is not {SECTION!r}")
    base = {k: v for k, v in d.items() if k not in VIDEO_KEYS}
    base["model_type"] = "llava"
    if d.get("vision_config") is None:  # VideoLlavaConfig's default tower: CLIP ViT-L/14 at 224px
        base["vision_config"] = {"intermediate_size": 4096, "hidden_size": 1024, "patch_size": 14, "image_size": 224,
                                 "num_hidden_layers": 24, "num_attention_heads": 16}
    try:
        cfg = llava.parse_config(base)
    except UnsupportedConfigError as e:
        raise UnsupportedConfigError(str(e).replace("llava", SECTION, 1)) from None
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(llava.LlavaConfig) if f.name != "family"}
    fields["hf_json"] = json.dumps(dict(d), sort_keys=True, default=str)
    video = int(d.get("video_token_id", d.get("video_token_index", 32001)))
    require(SECTION, video != cfg.image_token_id, f"video_token_index {video} equals image_token_index")
    return VideoLlavaConfig(**fields, video_token_id=video)


def weight_shapes(cfg: VideoLlavaConfig) -> dict:
    return {**llava.weight_shapes(cfg), "video_tower": clip.weight_shapes(cfg.vision)}


# ----------------------------------------------------------------------------------------------- host


def _pixels(name: str, value, lead: int, cfg: VideoLlavaConfig) -> np.ndarray:
    vc = cfg.vision
    want = (vc.num_channels, vc.image_size, vc.image_size)
    if value is None:
        return np.zeros((0,) * lead + want, np.float32)
    a = np.asarray(value, dtype=np.float32)
    if a.ndim != lead + 3 or a.shape[lead:] != want:
        dims = "images" if lead == 1 else "videos, frames"
        raise UserError(f"{name} must be ({dims}, {', '.join(map(str, want))}); got {a.shape}")
    checks.check_finite(a, name)
    return a


def _tokens(kind: str, is_kind: np.ndarray, n_media: int, per_media: int, token_id: int) -> None:
    n = int(is_kind.sum())
    if n != n_media * per_media:
        raise UserError(
            f"{kind} tokens and {kind} features do not match: input_ids hold {n} {kind} tokens (id {token_id}; "
            f"per row {is_kind.sum(axis=1).tolist()}) but {n_media} {kind}(s) x {per_media} tokens = "
            f"{n_media * per_media} features (the processor expands each <{kind}> placeholder into them)")


def prepare(cfg: VideoLlavaConfig, input_ids, attention_mask=None, pixel_values=None,
            pixel_values_videos=None) -> dict:
    """Validate transformers-style inputs and derive everything `embed` needs (numpy, host side).

    pixel_values (I, C, S, S) images, pixel_values_videos (V, F, C, S, S) videos of F frames (8 from the
    processor). Returns input_ids (B,T) int32, valid (B,T) bool, positions (1,B,T) int32 (cumsum(mask) - 1),
    pixel_values, pixel_values_videos float32, feature_index (B,T) int32 (row of the flat feature table, image
    features then video features, each media token takes; -1 for text) and the per-token metadata of
    `Embedded` (visual, media, frame, row, col, span_index).
    """
    ids, mask = checks.token_inputs(input_ids, attention_mask, cfg.text.vocab_size)
    images = _pixels("pixel_values", pixel_values, 1, cfg)
    videos = _pixels("pixel_values_videos", pixel_values_videos, 2, cfg)
    g2, per_image, per_frame = cfg.vision.grid**2, cfg.tokens_per_image, cfg.tokens_per_frame
    n_frames = videos.shape[1]
    is_image, is_video = ids == cfg.image_token_id, ids == cfg.video_token_id
    _tokens("image", is_image, images.shape[0], per_image, cfg.image_token_id)
    _tokens("video", is_video, videos.shape[0], n_frames * per_frame, cfg.video_token_id)

    # Per media token, in scatter order: flat feature row, media, frame, index within its frame / image.
    j_img = np.arange(images.shape[0] * per_image)
    j_vid = np.arange(videos.shape[0] * n_frames * per_frame)
    sequence = cfg.span_layout == "sequence"
    if cfg.span_layout not in SPAN_LAYOUTS:
        raise ValueError(f"span_layout {cfg.span_layout!r} is not one of {SPAN_LAYOUTS}")
    cls_img = 1 if per_image > g2 else 0  # strategy "full": the image's CLS token first
    parts = {
        "feature_index": (j_img, j_img.size + j_vid),
        "media": (j_img // per_image, images.shape[0] + j_vid // (n_frames * per_frame)),
        "frame": (np.zeros_like(j_img), (j_vid // per_frame) % max(n_frames, 1)),
    }
    patch_img, patch_vid = j_img % per_image - cls_img, j_vid % per_frame - 1  # -1: a CLS token
    parts["row"] = (np.where(patch_img >= 0, patch_img // cfg.vision.grid, -1),
                    np.where(patch_vid >= 0, patch_vid // cfg.vision.grid, -1))
    parts["col"] = (np.where(patch_img >= 0, patch_img % cfg.vision.grid, -1),
                    np.where(patch_vid >= 0, patch_vid % cfg.vision.grid, -1))
    parts["span_index"] = ((j_img % per_image, j_vid % (n_frames * per_frame)) if sequence
                           else (patch_img, patch_vid))
    batch = {"input_ids": ids, "valid": mask,
             "positions": np.clip(np.cumsum(mask, axis=1) - 1, 0, None).astype(np.int32)[None],
             "pixel_values": images, "pixel_values_videos": videos, "visual": is_image | is_video}
    for key, (img, vid) in parts.items():
        out = np.full(ids.shape, -1, np.int32)
        out[is_image], out[is_video] = img, vid
        batch[key] = out
    return batch


def kept_maps(cfg: VideoLlavaConfig, batch: dict, kept) -> list[dict]:
    """Which tokens of each image / video survived pruning, for per-frame views (host side, numpy).

    batch = prepare's output, kept (B, K) input indices of the surviving tokens (`out.kept[i]`; -1 ignored).
    Per media, images first then videos: {"patches": (F, G, G) bool (F = 1 for an image), "cls": (F,) bool
    (the frames' CLS tokens; an image's under "full")}.
    """
    g = cfg.vision.grid
    n_img, (n_vid, n_frames) = batch["pixel_values"].shape[0], batch["pixel_values_videos"].shape[:2]
    maps = [{"patches": np.zeros((f, g, g), bool), "cls": np.zeros(f, bool)}
            for f in [1] * n_img + [n_frames] * n_vid]
    kept = np.asarray(kept)
    for b, k in zip(*np.nonzero(kept >= 0)):
        t = int(kept[b, k])
        i, f, r, c = (int(batch[key][b, t]) for key in ("media", "frame", "row", "col"))
        if i < 0:
            continue
        if r < 0:
            maps[i]["cls"][f] = True
        else:
            maps[i]["patches"][f, r, c] = True
    return maps


# ------------------------------------------------------------------------------------------ jittable


def video_tower_view(params: VLM) -> VLM:
    """The model as LLaVA-1.5's feature path sees the video tower: its weights as "vision", strategy "full"
    (CLS kept), so llava.image_features / vision_cls_stats on frames give transformers' video features."""
    return VLM({**params.weights, "vision": params.weights["video_tower"]},
               dataclasses.replace(params.config, feature_strategy="full"))


def video_features(params: VLM, videos: jax.Array) -> jax.Array:
    """Projected video features (V, F * (1 + G*G), D): video tower at the feature layer(s), CLS kept."""
    v, f = videos.shape[:2]
    frames = videos.reshape(v * f, *videos.shape[2:])
    feats = llava.project(params, llava.image_features(video_tower_view(params), frames))
    return feats.reshape(v, f * feats.shape[1], feats.shape[-1])


def feature_table(params: VLM, images: jax.Array, videos: jax.Array, vision_cls: bool = False) -> dict:
    """The rows `feature_index` reads, image entries then video entries: {"features": (I*P + V*F*(1+G*G), D)}
    (projected), with vision_cls also "vision_cls" / "vision_keys" (llava.vision_cls_stats of each tower:
    [CLS] attention to each patch, 0 on CLS tokens)."""
    parts = []
    for view, pixels in ((params, images), (video_tower_view(params), videos.reshape(-1, *videos.shape[2:]))):
        if pixels.shape[0] == 0:
            continue
        if vision_cls:
            raw, cls, keys = llava.vision_cls_stats(view, pixels, with_features=True)
        else:
            raw, cls, keys = llava.image_features(view, pixels), None, None
        feats = llava.project(params, raw)
        part = {"features": feats.reshape(-1, feats.shape[-1])}
        if vision_cls:
            part.update(vision_cls=cls.reshape(-1), vision_keys=keys.reshape(-1, keys.shape[-1]))
        parts.append(part)
    return {k: jnp.concatenate([p[k] for p in parts]) for k in parts[0]}


def embed(params: VLM, batch: dict, vision_cls: bool = False) -> Embedded:
    """Token embeddings with the projected image and video features at their tokens (vision_cls: VisionZip's
    per-token inputs too)."""
    images, videos = jnp.asarray(batch["pixel_values"]), jnp.asarray(batch["pixel_values_videos"])
    tables = feature_table(params, images, videos, vision_cls) if images.shape[0] or videos.shape[0] else None
    return llava_next.scatter_embedded(params, batch, tables, vision_cls)
