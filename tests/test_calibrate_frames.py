"""`jaxvlm calibrate --per frame`: a trend planted per video frame in a tiny Video-LLaVA is recovered from the
model's own FastV scores (positions within each frame), written, and fed back through `--prune ...:trend=FILE`."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from experiments import calibrate as cal
from jaxvlm import debias

GRID = 16  # 224 px / patch 14: 256 patches per frame (+ CLS)
RATIO = 6.0  # planted T(255)/T(0) within every frame


@pytest.fixture(scope="module")
def planted():
    """A tiny Video-LLaVA whose FastV score (layer-1 attention of the last token) is exp(b * i) * noise for the
    patch i of EVERY frame (i = its raster index within the frame), whatever the frame's place in the video.

    As tests/test_calibrate.planted_llava, in the video tower: its position embedding puts v_i = (t_i, -t_i, f_i,
    -f_i, 0, ...) (zero mean, unit variance: the pre-LayerNorm keeps it) on patch i, t_i = 2 i / 255, plus a
    little content from the patch conv; the projector passes it through; decoder layers 0-1 add nothing;
    layer 1 reads t_i into the keys and a constant into the last token's query on the slowest rotary pair
    (rope theta 1e9: no rotation, so a frame's offset in the sequence does not matter)."""
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
    t = 2.0 * np.arange(n) / (n - 1)
    f = np.sqrt(dv / 2 - t**2)
    pos = np.zeros((n + 1, dv))
    pos[1:, 0], pos[1:, 1], pos[1:, 2], pos[1:, 3] = t, -t, f, -f
    w["video_tower"] = dict(w["video_tower"], pos_embed=pos, patch_embed=0.002 * rng.standard_normal((3, 14, 14, dv)))
    w1 = np.zeros((dv, d))
    w1[np.arange(dv), np.arange(dv)] = 1.0
    w["projector"] = {"w1": w1, "b1": np.full(d, 10.0), "w2": np.eye(d), "b2": np.full(d, -10.0)}
    text = dict(w["text"])
    emb = np.zeros((cfg.text.vocab_size, d))
    r = rng.standard_normal((cfg.text.vocab_size, 31))
    emb[:, 32:63] = 3.0 * r / np.linalg.norm(r, axis=1, keepdims=True)
    emb[:, 63] = 4.0  # rms 0.625 for every token: the normed query coordinate is 6.4
    layers = {k: np.array(v) for k, v in text["layers"].items()}
    for i in (0, 1):
        layers["wo"][i] = 0.0
        layers["w_down"][i] = 0.0
    layers["wq"][1] = 0.0
    layers["wk"][1] = 0.0
    slope = np.log(RATIO) / (n - 1)  # b = 6.4 * g * sqrt(2) * (2 / 255) / sqrt(16)
    layers["wq"][1][63, :, 7] = 1.0
    layers["wk"][1][0, :, 7] = slope / (6.4 * np.sqrt(2) * (2.0 / (n - 1)) / 4.0)
    text.update(embed=emb, layers=layers)
    w["text"] = text
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
