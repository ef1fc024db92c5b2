"""Qwen2-VL / Qwen2.5-VL video inputs from decoded frames, without transformers' video processor (which
needs torchvision).

    cfg = VideoConfig.from_dir(processor_dir, processor.hf.image_processor)
    pixel_values_videos, grid = video_patches(frames, cfg)     # frames (F, H, W, 3) uint8
    text = expand_video_tokens(prompt, "<|video_pad|>", grid, cfg.merge_size)

What Qwen2VLVideoProcessor does: every frame resized to one `smart_resize(H, W, factor=patch*merge,
min_pixels, max_pixels)` size (bicubic; here PIL's, as the PIL image processor), rescaled by 1/255 and
normalised with the CLIP mean/std; the last frame repeated until F is a multiple of temporal_patch_size; then
patches (grid_t*grid_h*grid_w, C*temporal*patch*patch) ordered (t, h/merge, w/merge, merge_h, merge_w) with
each row laid out (C, temporal, patch_h, patch_w). `video_grid_thw` = (F/temporal, H'/patch, W'/patch).
The size bounds come from the directory's video_preprocessor_config.json, else the video processor's defaults.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

# Qwen2VLVideoProcessor's defaults (transformers 5): min 128, max 768 merged tokens' worth of pixels per frame.
VIDEO_MIN_PIXELS = 128 * 28 * 28
VIDEO_MAX_PIXELS = 768 * 28 * 28


@dataclasses.dataclass(frozen=True)
class VideoConfig:
    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    min_pixels: int = VIDEO_MIN_PIXELS
    max_pixels: int = VIDEO_MAX_PIXELS
    mean: tuple = (0.48145466, 0.4578275, 0.40821073)
    std: tuple = (0.26862954, 0.26130258, 0.27577711)
    rescale_factor: float = 1 / 255

    @classmethod
    def from_dir(cls, path: str | None, image_processor=None) -> "VideoConfig":
        """Patch geometry and normalisation from the image processor, size bounds from
        `path`/video_preprocessor_config.json (`size` {shortest_edge, longest_edge} or min/max_pixels)."""
        kw = {}
        if image_processor is not None:
            for name in ("patch_size", "merge_size", "temporal_patch_size", "rescale_factor"):
                if getattr(image_processor, name, None) is not None:
                    kw[name] = getattr(image_processor, name)
            for name, key in (("image_mean", "mean"), ("image_std", "std")):
                if getattr(image_processor, name, None) is not None:
                    kw[key] = tuple(float(v) for v in getattr(image_processor, name))
        f = os.path.join(path, "video_preprocessor_config.json") if path else None
        if f and os.path.isfile(f):
            with open(f) as fh:
                stored = json.load(fh)
            size = stored.get("size") or {}
            kw["min_pixels"] = int(stored.get("min_pixels") or size.get("shortest_edge") or VIDEO_MIN_PIXELS)
            kw["max_pixels"] = int(stored.get("max_pixels") or size.get("longest_edge") or VIDEO_MAX_PIXELS)
            for name in ("patch_size", "merge_size", "temporal_patch_size"):
                if name in stored:
                    kw[name] = int(stored[name])
        return cls(**kw)


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize

    return hf_smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)


def normalised_frames(frames: np.ndarray, cfg: VideoConfig) -> np.ndarray:
    """(F, H, W, 3) uint8 -> (F, 3, H', W') float32: resized (PIL bicubic), rescaled and normalised."""
    from PIL import Image

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"frames must be (F, H, W, 3) with F >= 1, got {frames.shape}")
    h, w = frames.shape[1:3]
    rh, rw = smart_resize(h, w, cfg.patch_size * cfg.merge_size, cfg.min_pixels, cfg.max_pixels)
    resized = np.stack([np.asarray(Image.fromarray(np.asarray(f, np.uint8)).resize((rw, rh), Image.BICUBIC))
                        for f in frames]).astype(np.float32)
    mean, std = np.asarray(cfg.mean, np.float32), np.asarray(cfg.std, np.float32)
    out = (resized * np.float32(cfg.rescale_factor) - mean) / std
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def video_patches(frames: np.ndarray, cfg: VideoConfig) -> tuple[np.ndarray, np.ndarray]:
    """(pixel_values_videos (grid_t*grid_h*grid_w, C*temporal*patch*patch) float32, video_grid_thw (3,) int32)."""
    x = normalised_frames(frames, cfg)
    tp, p, m = cfg.temporal_patch_size, cfg.patch_size, cfg.merge_size
    if pad := -x.shape[0] % tp:
        x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
    f, c, h, w = x.shape
    gt, gh, gw = f // tp, h // p, w // p
    x = x.reshape(gt, tp, c, gh // m, m, p, gw // m, m, p)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (t, h/m, w/m, m_h, m_w, C, temporal, p, p)
    return np.ascontiguousarray(x.reshape(gt * gh * gw, c * tp * p * p)), np.array([gt, gh, gw], np.int32)


def expand_video_tokens(text: str, video_token: str, grid: np.ndarray, merge_size: int) -> str:
    """`text` with its (single) video placeholder repeated once per merged video token, as the processor does."""
    if text.count(video_token) != 1:
        raise ValueError(f"expected one {video_token!r} in the prompt, found {text.count(video_token)}")
    n = int(np.prod(grid)) // (merge_size * merge_size)
    return text.replace(video_token, video_token * n)
