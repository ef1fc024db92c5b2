"""`jaxvlm.Processor` for LLaVA-NeXT and Video-LLaVA, offline: the trained tokenizer of experiments.assets, PIL
image processors, real photographs; arrays equal transformers' processors, and drive jaxvlm.forward to
transformers' logits (tiny models of tests/llava_next_reference.py, tests/video_llava_reference.py)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import jaxvlm
import llava_next_reference as NR
import video_llava_reference as VR
from experiments.assets import photo, train_tokenizer
from jaxvlm.errors import UserError
from jaxvlm.processor import Processor, detect_family

PROMPT = "USER: {}\nWhat is shown in this image? ASSISTANT:"


@pytest.fixture(scope="module")
def tokenizer():
    tok = train_tokenizer()
    tok.add_tokens(["<video>"], special_tokens=True)
    return tok


def _drop_stored(path, key):
    """Remove `key` from processor_config.json (older Hub revisions do not carry num_additional_image_tokens)."""
    f = os.path.join(path, "processor_config.json")
    with open(f) as fh:
        stored = json.load(fh)
    stored.pop(key, None)
    with open(f, "w") as fh:
        json.dump(stored, fh)


def _masked_diff(got, ref, mask) -> float:
    return float(np.abs(np.asarray(got) - ref)[mask.astype(bool)].max())


def _forward_diff(ref, d: dict, out: dict, tokenizer, label: str, media_tokens: tuple) -> float:
    """Max masked |diff| of jaxvlm.forward vs the offline transformers model `ref` (tests/*_reference.py) built
    from config dict `d` with the tokenizer's vocabulary, media token ids and pad id, on processor output `out`."""
    d["text_config"]["vocab_size"] = len(tokenizer)
    for token in media_tokens:
        d[f"{token.strip('<>')}_token_index"] = tokenizer.convert_tokens_to_ids(token)
    d["pad_token_id"] = tokenizer.pad_token_id
    model = ref.torch_model(d)
    diff = _masked_diff(jaxvlm.forward(ref.to_jax(model, d), **out).logits, ref.torch_logits(model, out),
                        out["attention_mask"])
    print(f"\n[max |diff|] {label} processor end to end, T={out['input_ids'].shape[1]}: {diff:.3g}")
    return diff


def test_llava_next_processor_equals_transformers_and_feeds_forward(tmp_path, tokenizer):
    from transformers import LlavaNextImageProcessorPil, LlavaNextProcessor

    d = NR.hf_config_dict()
    ip = LlavaNextImageProcessorPil(size={"shortest_edge": NR.SMALL}, crop_size={"height": NR.SMALL,
                                    "width": NR.SMALL}, image_grid_pinpoints=d["image_grid_pinpoints"])
    hf = LlavaNextProcessor(image_processor=ip, tokenizer=tokenizer, patch_size=14,
                            vision_feature_select_strategy="default", num_additional_image_tokens=1)
    path = str(tmp_path / "next")
    hf.save_pretrained(path)
    _drop_stored(path, "num_additional_image_tokens")
    proc = Processor.from_pretrained(path)
    assert proc.family == "llava_next" == detect_family(path)
    photos = [photo("astronaut"), photo("coffee"), photo("rocket")[:, 100:400]]  # 512x512, 400x600, 427x300
    text = [PROMPT.format("<image>") + " a cat." * k for k in (0, 2, 1)]
    out = proc(text=text, images=photos)
    assert set(out) == {"input_ids", "attention_mask", "pixel_values", "image_sizes"}
    ref = hf(text=text, images=photos, padding=True, return_tensors="np")
    for key in out:
        np.testing.assert_array_equal(out[key], np.asarray(ref[key]), err_msg=key)
    np.testing.assert_array_equal(out["image_sizes"], [[512, 512], [400, 600], [427, 300]])  # (height, width)
    assert out["input_ids"].dtype == np.int32 and out["pixel_values"].dtype == np.float32

    assert _forward_diff(NR, d, out, tokenizer, "LLaVA-NeXT", ("<image>",)) < 1e-4


def _video(name: str, frames: int = VR.FRAMES, step: int = 24) -> np.ndarray:
    """A camera pan over a photograph: `frames` crops (F, H, W, 3) uint8, each `step` px right of the last."""
    im = photo(name)
    w = im.shape[1] - step * (frames - 1)
    return np.stack([im[:, k * step:k * step + w] for k in range(frames)])


@pytest.fixture(scope="module")
def video_proc(tmp_path_factory, tokenizer):
    from transformers import VideoLlavaImageProcessor

    from jaxvlm.processor import hf_processor_class

    path = str(tmp_path_factory.mktemp("video") / "proc")
    hf_processor_class("video_llava")(image_processor=VideoLlavaImageProcessor(), tokenizer=tokenizer,
                                      patch_size=14).save_pretrained(path)
    return Processor.from_pretrained(path)


def test_video_llava_frames_equal_clip_image_processor(video_proc):
    """pixel_values_videos: every frame, in order, exactly as transformers' CLIP image processor (224 shortest
    edge, bicubic, centre crop, CLIP mean / std) makes it; images through VideoLlavaImageProcessor."""
    from transformers import CLIPImageProcessorPil, VideoLlavaImageProcessor

    assert video_proc.family == "video_llava"
    videos = [_video("astronaut"), _video("coffee")]
    image = photo("chelsea")
    out = video_proc(text=[PROMPT.format("<video>"), PROMPT.format("<image>\n<video>")], images=[image],
                     videos=videos)
    assert out["pixel_values_videos"].shape == (2, VR.FRAMES, 3, 224, 224)
    clip = CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    for v, frames in enumerate(videos):
        want = np.asarray(clip(list(frames), return_tensors="np")["pixel_values"])
        np.testing.assert_allclose(out["pixel_values_videos"][v], want, atol=1e-5, err_msg=f"video {v}")
    want = VideoLlavaImageProcessor()([image], return_tensors="np", return_legacy_image_output=False)
    np.testing.assert_allclose(out["pixel_values"], np.asarray(want["pixel_values"]), atol=1e-6)
    # each <video> becomes 8 x 257 video tokens where it stood (transformers' replace_video_token)
    tok = video_proc.tokenizer
    expanded = [PROMPT.format("<video>" * 8 * 257), PROMPT.format("<image>" * 256 + "\n" + "<video>" * 8 * 257)]
    want_ids = tok(expanded, padding=True, return_tensors="np")
    np.testing.assert_array_equal(out["input_ids"], want_ids["input_ids"])
    np.testing.assert_array_equal(out["attention_mask"], want_ids["attention_mask"])


def test_video_llava_processor_feeds_forward(video_proc, tokenizer):
    """An image row and a video row through jaxvlm.forward equal transformers' VideoLlava on the same arrays."""
    out = video_proc(text=[PROMPT.format("<image>") + " a cat.", PROMPT.format("<video>")],
                     images=[photo("rocket")], videos=[_video("motorcycle")])
    d = VR.hf_config_dict()
    assert _forward_diff(VR, d, out, tokenizer, "Video-LLaVA", ("<image>", "<video>")) < 1e-4


def test_video_llava_frame_lists_and_refused_videos(video_proc):
    grey = list(_video("astronaut")[..., 0])  # a list of grey (H, W) frames, converted as grey images are
    out = video_proc(text=[PROMPT.format("<video>")], videos=[grey])
    assert out["pixel_values_videos"].shape == (1, VR.FRAMES, 3, 224, 224)
    for bad in (np.zeros((0, 32, 32, 3), np.uint8), photo("chelsea")):  # no frames; one image, not a video
        with pytest.raises(UserError, match=r"videos\[0\]: a video must be frames"):
            video_proc(text=[PROMPT.format("<video>")], videos=[bad])
