"""`jaxvlm.Processor`: the transformers processor of a checkpoint, returning exactly the numpy arrays the
jaxvlm entry points take.

    proc = jaxvlm.Processor.from_pretrained(path)          # a HF checkpoint / processor directory
    inputs = proc(text=[...], images=[...])                # dict of numpy arrays
    out = jaxvlm.forward(params, **inputs)

LLaVA-1.5: LlavaProcessor (PIL image processor) with `num_additional_image_tokens=1` when the directory does
    not set it (the CLS token the vision tower drops), so each `<image>` expands to 576 ids. Returns
    input_ids, attention_mask, pixel_values (N,3,H,W), image_sizes (N,2) = original (width, height).
LLaVA-NeXT: LlavaNextProcessor (PIL image processor; `num_additional_image_tokens=1` defaulted as for LLaVA-1.5).
    Returns input_ids, attention_mask, pixel_values (N, max tiles, 3, S, S), image_sizes (N,2) = transformers'
    original (height, width).
Video-LLaVA: VideoLlavaProcessor declaring only (image_processor, tokenizer) (its video processor needs
    torchvision). Videos are uint8 frame stacks (F,H,W,3) (8 frames sampled by the caller); every frame goes
    through the image processor (CLIP shortest-edge resize, centre crop, normalise), which is what
    transformers' VideoLlavaImageProcessor did for videos before the video processor split off, and
    transformers' own `replace_video_token` expands each `<video>`. Returns input_ids, attention_mask,
    pixel_values (N,3,S,S) when there are images, pixel_values_videos (V,F,3,S,S) when there are videos.
Qwen2-VL / Qwen2.5-VL: transformers' Qwen2VLProcessor / Qwen2_5_VLProcessor insist on a video processor,
    which needs torchvision; a subclass declaring only (image_processor, tokenizer) works without it (images
    only). Returns input_ids, attention_mask, mm_token_type_ids, pixel_values (patches, C*2*14*14),
    image_grid_thw (N,3).
Images (PIL, any mode, or arrays) are converted to uint8 RGB by `jaxvlm.images.to_rgb` first (16-bit and
float images scaled, transparency composited onto white as transformers does; empty images refused), so
every mode reaches the image processor as the picture it shows. Integer arrays come back as int32, pixel
arrays as float32. Text, chat templates and decoding go through `proc.tokenizer` / `proc.hf` (the wrapped
transformers processor).
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np

from jaxvlm.errors import UserError, one_line
from jaxvlm.images import to_rgb

PROCESSOR_FAMILIES = {
    "LlavaProcessor": "llava", "LlavaNextProcessor": "llava_next", "VideoLlavaProcessor": "video_llava",
    "Qwen2VLProcessor": "qwen2_vl", "Qwen2_5_VLProcessor": "qwen2_5_vl",
}
CLS_DROPPING = ("llava", "llava_next")  # families whose processors need num_additional_image_tokens = 1
MODEL_TYPE_FAMILIES = {"llava": "llava", "llava_next": "llava_next", "video_llava": "video_llava",
                       "qwen2_vl": "qwen2_vl", "qwen2_5_vl": "qwen2_5_vl"}


# LLaVA-1.5's conversation template (conv_vicuna_v1 of llava/conversation.py), the one its evaluation scripts
# and the pruning papers use.
LLAVA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def llava_prompt(question: str, image_token: str | None = "<image>", system: str = LLAVA_SYSTEM) -> str:
    """LLaVA-1.5 prompt: system, then `USER: <image>\n{question} ASSISTANT:` (image_token=None: a text-only
    question, `USER: {question} ASSISTANT:`, as LLaVA's ScienceQA loader builds it). `system`: another
    conversation's system message with the same turns (conv_llava_v1's)."""
    image = f"{image_token}\n" if image_token is not None else ""
    return f"{system} USER: {image}{question} ASSISTANT:"


def _read(path: str, name: str) -> dict:
    f = os.path.join(path, name)
    if not os.path.isfile(f):
        return {}
    with open(f) as fh:
        return json.load(fh)


def detect_family(path: str) -> str:
    """Family of a processor/checkpoint directory, from processor_config.json, preprocessor_config.json or
    config.json (first that names one)."""
    for name in ("processor_config.json", "preprocessor_config.json"):
        cls = _read(path, name).get("processor_class")
        if cls in PROCESSOR_FAMILIES:
            return PROCESSOR_FAMILIES[cls]
    model_type = _read(path, "config.json").get("model_type")
    if model_type in MODEL_TYPE_FAMILIES:
        return MODEL_TYPE_FAMILIES[model_type]
    image_proc = (_read(path, "preprocessor_config.json").get("image_processor_type")
                  or _read(path, "processor_config.json").get("image_processor", {}).get("image_processor_type", ""))
    if image_proc.startswith("Qwen2VLImageProcessor"):
        return "qwen2_vl"
    from jaxvlm.errors import UserError

    raise UserError(f"{path}: no processor found (no processor_class / model_type of {sorted(PROCESSOR_FAMILIES)}"
                    f" / {sorted(MODEL_TYPE_FAMILIES)}); pass --processor DIR (the original Hugging Face checkpoint "
                    "or a processor directory), e.g. for a checkpoint converted without its tokenizer files")


def _image_only(cls):
    """A subclass of a Qwen processor class whose only sub-processors are the image processor and tokenizer."""

    class ImageOnly(cls):
        @classmethod
        def get_attributes(cls_):
            return ["image_processor", "tokenizer"]

    ImageOnly.__name__ = ImageOnly.__qualname__ = cls.__name__
    return ImageOnly


def _frames_video_llava():
    """VideoLlavaProcessor with only (image_processor, tokenizer); videos go through the image processor frame
    by frame, then transformers' replace_video_token expands each `<video>`."""
    from transformers import VideoLlavaProcessor
    from transformers.processing_utils import ProcessorMixin

    class VideoLlavaFrames(VideoLlavaProcessor):
        video_processor = None  # videos are handled by _process_videos below

        @classmethod
        def get_attributes(cls_):
            return ["image_processor", "tokenizer"]

        def __init__(self, image_processor=None, tokenizer=None, patch_size=14, vision_feature_select_strategy="default",
                     image_token="<image>", video_token="<video>", chat_template=None, num_additional_image_tokens=1,
                     **kwargs):
            self.patch_size, self.num_additional_image_tokens = patch_size, num_additional_image_tokens
            self.vision_feature_select_strategy = vision_feature_select_strategy
            self.image_token = getattr(tokenizer, "image_token", None) or image_token
            self.video_token = getattr(tokenizer, "video_token", None) or video_token
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)

        def _process_videos(self, videos, **kwargs):
            pixels = np.stack([video_frames(self.image_processor, v) for v in videos])
            processed = {"pixel_values_videos": pixels}
            return processed, [self.replace_video_token(processed, video_idx=i) for i in range(len(videos))]

    VideoLlavaFrames.__name__ = VideoLlavaFrames.__qualname__ = "VideoLlavaProcessor"
    return VideoLlavaFrames


def video_array(frames, name: str = "video") -> np.ndarray:
    """One video, (F, H, W, C) or a list of same-sized images (any mode), as uint8 RGB (F, H, W, 3)."""
    if not isinstance(frames, (list, tuple)):
        frames = np.asarray(frames)
        if frames.ndim != 4:  # (H, W, 3) would be read as H frames of (W, 3): refuse it
            raise UserError(f"{name}: a video must be frames (F, H, W, C) or a list of frames; got shape "
                            f"{frames.shape}")
    if len(frames) == 0:
        raise UserError(f"{name}: a video must be frames (F, H, W, C) or a list of frames; got no frames")
    rgb = [to_rgb(f, f"{name}[{j}]") for j, f in enumerate(frames)]
    if len({f.shape for f in rgb}) > 1:
        raise UserError(f"{name}: frames differ in size ({sorted({f.shape[:2] for f in rgb})}); a video's frames "
                        "must share one (height, width)")
    return np.stack(rgb)


def video_frames(image_processor, video: np.ndarray) -> np.ndarray:
    """(F, H, W, 3) uint8 -> (F, 3, S, S) float32: each frame through the image processor, in order."""
    out = image_processor(list(video), return_tensors="np", return_legacy_image_output=False)
    return np.asarray(out["pixel_values"], np.float32)


def hf_processor_class(family: str):
    import transformers

    if family == "llava":
        return transformers.LlavaProcessor
    if family == "llava_next":
        return transformers.LlavaNextProcessor
    if family == "video_llava":
        return _frames_video_llava()
    base = transformers.Qwen2VLProcessor if family == "qwen2_vl" else transformers.Qwen2_5_VLProcessor
    return _image_only(base)


class Processor:
    """A transformers processor whose outputs are the named numpy arrays of `jaxvlm.forward` / `generate`."""

    INT_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw", "video_grid_thw",
                "image_sizes")

    def __init__(self, hf_processor, family: str):
        self.hf = hf_processor
        self.family = family

    @classmethod
    def from_pretrained(cls, path: str, family: str | None = None, **kwargs) -> "Processor":
        """Load the processor saved in `path` (offline). `family` overrides detection."""
        path = os.fspath(path)
        family = family or detect_family(path)
        proc_cls = hf_processor_class(family)
        if family in CLS_DROPPING:
            stored = {**_read(path, "processor_config.json"), **kwargs}
            if "num_additional_image_tokens" not in stored:
                kwargs["num_additional_image_tokens"] = 1  # CLIP's CLS token, dropped by LLaVA
        return cls(proc_cls.from_pretrained(path, **kwargs), family)

    @property
    def tokenizer(self):
        return self.hf.tokenizer

    def save_pretrained(self, path: str) -> None:
        self.hf.save_pretrained(path)

    def __call__(self, text: str | Sequence[str], images: Sequence[Any] | None = None, videos=None,
                 padding: bool | str = True, **kwargs) -> dict[str, np.ndarray]:
        """text: prompts with the family's placeholders; images: one image or a list; videos (Video-LLaVA
        only): one (F, H, W, 3) frame stack or a list of them."""
        if videos is not None and self.family != "video_llava":
            raise NotImplementedError("video preprocessing needs transformers' video processor, which needs "
                                      "torchvision; pass pixel_values_videos / video_grid_thw yourself")
        if videos is not None:
            videos = list(videos) if isinstance(videos, (list, tuple)) else [videos]
            kwargs["videos"] = [video_array(v, f"videos[{i}]") for i, v in enumerate(videos)]
        if isinstance(text, str):
            text = [text]
        if images is not None:
            images = images if isinstance(images, (list, tuple)) else [images]
            images = [to_rgb(im, f"images[{i}]") for i, im in enumerate(images)]
        try:
            out = self.hf(text=list(text), images=images, padding=padding, return_tensors="np", **kwargs)
        except ValueError as e:  # transformers' own checks of what it was given (image count, aspect ratio, ...)
            raise UserError(f"{type(self.hf).__name__}: {one_line(e)}") from e
        arrays = {k: np.asarray(v) for k, v in out.items()}
        arrays.pop("token_type_ids", None)
        if self.family in ("llava", "llava_next", "video_llava"):
            arrays.pop("mm_token_type_ids", None)
        if self.family == "llava" and images is not None:  # original (width, height)
            arrays["image_sizes"] = np.array([im.shape[1::-1] for im in images], np.int32).reshape(-1, 2)
        if "pixel_values_images" in arrays:  # Video-LLaVA's legacy key
            arrays["pixel_values"] = arrays.pop("pixel_values_images")
        for k in list(arrays):
            if k in self.INT_KEYS:
                arrays[k] = arrays[k].astype(np.int32)
            elif k.startswith("pixel_values"):
                arrays[k] = arrays[k].astype(np.float32)
        return arrays

    def batch_decode(self, ids, **kwargs) -> list[str]:
        return self.tokenizer.batch_decode(np.asarray(ids).tolist(), **kwargs)

    def decode(self, ids, **kwargs) -> str:
        return self.tokenizer.decode(np.asarray(ids).tolist(), **kwargs)
