"""`jaxvlm calibrate --per frame`: a trend planted per video frame in a tiny Video-LLaVA is recovered from the
model's own FastV scores (positions within each frame), written, and fed back through `--prune ...:trend=FILE`."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from experiments import calibrate as cal
from jaxvlm import debias
from planted_trend import plant

GRID = 16  # 224 px / patch 14: 256 patches per frame (+ CLS)
RATIO = 6.0  # planted T(255)/T(0) within every frame


@pytest.fixture(scope="module")
def planted():
    """A tiny Video-LLaVA whose FastV score (layer-1 attention of the last token) is exp(b * i) * noise for the
    patch i of EVERY frame (i = its raster index within the frame), whatever the frame's place in the video.

    As tests/test_calibrate.planted_llava (tests/planted_trend.py), in the video tower: the rope theta of 1e9
    means no rotation, so a frame's offset in the sequence does not matter."""
    import jax
    import jax.numpy as jnp

    from jaxvlm.model import VLM, random_params
    from jaxvlm.models import video_llava
    from video_llava_reference import hf_config_dict

    hf = hf_config_dict(text_layers=3, vision_layers=1)
    hf["text_config"]["rope_theta"] = 1e9
    cfg = video_llava.parse_config(hf)
    w = {k: dict(v) if isinstance(v, dict) else v for k, v in random_params(cfg, seed=3, std=0.05).weights.items()}
    rng = np.random.default_rng(0)
    n, dv, d = GRID * GRID, 32, 64
    tower, w["projector"], w["text"], slope = plant(w["video_tower"], w["text"], cfg.text.vocab_size, n, RATIO, rng,
                                                    tower_width=dv, hidden=d)
    w["video_tower"] = tower
    return VLM(weights=jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), w), config=cfg), slope


def video_batches(params, n: int):
    from video_llava_reference import make_inputs

    return [make_inputs(params, rows=("video",), text=(12 + i,), seed=i) for i in range(n)]


def test_per_frame_trend_recovered_and_fed_back(planted, tmp_path):
    import jaxvlm
    from jaxvlm.prune import parse_schedule

    params, slope = planted
    batches = video_batches(params, 6)
    trend, report, rec = cal.calibrate_batches(params, batches, "debiased_fastv:keep=64", holdout=0.34)
    assert report["per"] == "frame" and report["span_layout"] == "frame" and trend.span == GRID * GRID
    assert (rec.positions.max(axis=1) == 255).all() and rec.positions.shape[1] == 8 * 257
    err = abs(trend.params[1] / slope - 1)
    print(f"planted per-frame slope {slope:.5f}, recovered {trend.params[1]:.5f} ({trend.family}): error {err:.2%}")
    assert trend.family == "exponential" and err < 0.05
    assert report["candidates"]["exponential"]["holdout_r2"] > 0.95
    # the same scores as one span (--per span): the sawtooth is no trend of the run's position
    _, whole, _ = cal.calibrate_batches(params, batches, "debiased_fastv:keep=64", per="span", holdout=0.34)
    assert whole["span_layout"] == "sequence" and whole["span"] == 8 * 257
    assert whole["candidates"]["exponential"]["holdout_r2"] < 0.5
    # written, then fed back through --prune: raw FastV keeps the ends of the frames, the trend spreads them
    out = tmp_path / "trend.json"
    cal.write_outputs(str(out), None, trend, report, rec.scores, rec.valid, rec.positions, "per frame")
    assert json.loads(out.read_text())["per"] == "frame" and np.load(out.with_suffix(".npy")).shape == (256,)
    assert debias.load_trend(out) == trend
    inputs = batches[0]

    def kept_within(spec):
        """Positions within their frame of the tokens `spec` keeps."""
        from jaxvlm.models import video_llava

        kept = np.asarray(jaxvlm.forward(params, prune=parse_schedule(spec), **inputs).kept[0][0])
        return video_llava.prepare(params.config, **inputs)["span_index"][0][kept[kept >= 0]]

    raw, fixed = kept_within("fastv:keep=64"), kept_within(f"debiased_fastv:keep=64,trend={out}")
    assert np.median(raw) > 200 and np.median(fixed) < 180, (np.median(raw), np.median(fixed))


def test_per_is_checked_against_the_family(planted):
    import tiny_vlm
    from jaxvlm.errors import UserError

    params, _ = planted
    with pytest.raises(UserError, match=re.escape("video_llava model's positions are per frame | span")):
        cal.with_positions(params, "tile")
    assert cal.with_positions(tiny_vlm.qwen(), None)[1] == "frame"
    with pytest.raises(UserError, match="per frame"):
        cal.with_positions(tiny_vlm.qwen(), "span")
    assert cal.with_positions(tiny_vlm.llava(), None)[1] == "span"
