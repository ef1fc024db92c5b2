"""Qwen2-VL video inputs from frames (jaxvlm.video_inputs) against transformers' PIL image processor, which
patchifies a picture as a 2-frame video of itself: same resize, normalisation and patch order."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from skimage import data

from jaxvlm import video_inputs


@pytest.fixture(scope="module")
def image_processor():
    from transformers import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(min_pixels=16 * 28 * 28, max_pixels=60 * 28 * 28)


def config(ip) -> video_inputs.VideoConfig:
    return dataclasses.replace(video_inputs.VideoConfig.from_dir(None, ip), min_pixels=16 * 28 * 28,
                               max_pixels=60 * 28 * 28)


def pan(n: int) -> np.ndarray:
    """(n, 200, 300, 3): the astronaut panned 7 px per frame, every frame different."""
    img = data.astronaut()
    return np.stack([img[:200, 7 * k:7 * k + 300] for k in range(n)])


def test_a_still_video_is_the_image_processors_picture(image_processor):
    frame = pan(1)[0]
    ref = image_processor(images=[frame], return_tensors="np")
    pixels, grid = video_inputs.video_patches(np.stack([frame, frame]), config(image_processor))
    np.testing.assert_array_equal(grid, ref["image_grid_thw"][0])
    np.testing.assert_allclose(pixels, ref["pixel_values"], atol=1e-5)


@pytest.mark.parametrize("n", [4, 5])
def test_each_temporal_slot_holds_its_frame(image_processor, n):
    frames = pan(n)
    cfg = config(image_processor)
    pixels, grid = video_inputs.video_patches(frames, cfg)
    gt, gh, gw = grid
    assert gt == -(-n // 2)  # an odd count repeats the last frame
    p = cfg.patch_size
    rows = pixels.reshape(gt, gh * gw, 3, 2, p, p)
    padded = list(frames) + [frames[-1]] * (2 * gt - n)
    for t in range(gt):
        for slot in range(2):
            ref = image_processor(images=[padded[2 * t + slot]], return_tensors="np")["pixel_values"]
            ref = ref.reshape(gh * gw, 3, 2, p, p)[:, :, 0]
            np.testing.assert_allclose(rows[t, :, :, slot], ref, atol=1e-5)


def test_video_tokens_expand_to_the_merged_grid(tmp_path):
    (tmp_path / "video_preprocessor_config.json").write_text('{"size": {"shortest_edge": 3136, "longest_edge": 6272}}')
    cfg = video_inputs.VideoConfig.from_dir(str(tmp_path))
    assert (cfg.min_pixels, cfg.max_pixels) == (3136, 6272)
    assert video_inputs.VideoConfig.from_dir(None).max_pixels == video_inputs.VIDEO_MAX_PIXELS
    text = video_inputs.expand_video_tokens("a<v>b", "<v>", np.array([2, 4, 6]), 2)
    assert text == "a" + "<v>" * 12 + "b"
    with pytest.raises(ValueError, match="expected one"):
        video_inputs.expand_video_tokens("no token", "<v>", np.array([2, 4, 6]), 2)
