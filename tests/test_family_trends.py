"""What a preset's trend means on each model family (docs/METHOD.md, "Trends on other token counts"):
Trend.span clamping, the per-family default bound at plan time (Debiased.for_model via make_plan), LLaVA-NeXT
detrended per tile, Video-LLaVA per frame. Random weights: these test the mechanism, not a model's bias."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import jaxvlm
import tiny_vlm
from jaxvlm import debias, prune
from jaxvlm.engine.prefill import make_plan
from jaxvlm.model import random_params

RELEASE = debias.release_trend("fastv")


def test_a_trend_is_clamped_beyond_its_span():
    x = np.arange(2000.0)
    assert RELEASE.span == 576 and all(debias.release_trend(m, "gqa").span == 576 for m in ("pdrop", "himap"))
    t = RELEASE(x)
    np.testing.assert_allclose(t[575:], t[575])  # held at T(575): the cubic is never extrapolated
    np.testing.assert_allclose(t[:576], dataclasses.replace(RELEASE, span=None)(x[:576]))
    assert RELEASE.ratio(3000) == pytest.approx(RELEASE.ratio(576))
    stretched = RELEASE.stretch(576, 1151)  # the span is in the fitted coordinates: stretching keeps it
    np.testing.assert_allclose(stretched(np.array([1150.0, 1500.0])), t[575])
    assert debias.Trend.from_dict(RELEASE.to_dict()) == RELEASE and RELEASE.to_dict()["span"] == 576
    fitted = debias.Trend.fit(np.arange(300), np.exp(0.003 * np.arange(300)))
    assert fitted.span == 300 and fitted(np.float64(1000)) == pytest.approx(fitted(np.float64(299)))
    with pytest.raises(ValueError, match="span"):
        debias.Trend("exponential", (1.0, 0.0, 0.0), span=0)


def plan_stage(params, schedule, n_visual: int = 576):
    """The first stage of `schedule` as make_plan binds it for `params`' language model (given 32 layers, so
    that every preset's layers fit)."""
    text = dataclasses.replace(params.config.text, num_layers=32)
    return make_plan(text, schedule, 1024, [n_visual], 0).stages[0]


@pytest.mark.parametrize("preset", [prune.debiased_fastv, prune.debiased_pdrop, prune.debiased_himap,
                                    prune.debiased_sparsevlm, prune.debiased_tokencarve, prune.debiased_illava])
def test_presets_bind_the_family_default_at_plan_time(preset):
    """LLaVA keeps the release's trend; a Qwen2-VL (M-RoPE) gets the row's own trend; an explicit trend (a
    Trend, "release", "self") is never replaced; the unbound stage keeps the release trend (embedded use)."""
    llava, qwen = tiny_vlm.llava(), tiny_vlm.qwen()
    sched = preset()
    release = sched[0].trend
    assert sched[0].default_trend and release.span == 576
    assert plan_stage(llava, sched) == plan_stage(llava, preset(trend="release"))  # one compiled program
    assert plan_stage(llava, sched).trend == release
    bound = plan_stage(qwen, sched)
    assert isinstance(bound.trend, debias.SelfTrend) and not bound.default_trend
    for explicit in (release, "release"):
        assert plan_stage(qwen, preset(trend=explicit)).trend == release
    assert isinstance(plan_stage(llava, preset(trend="self")).trend, debias.SelfTrend)
    assert plan_stage(qwen, preset(setting="padding")).trend is None


def test_qwen_preset_runs_the_self_trend_end_to_end():
    """debiased_fastv() on a tiny Qwen2-VL keeps exactly what trend="self" keeps (and the release's trend,
    asked for explicitly, still runs: clamped beyond 576 positions)."""
    params = tiny_vlm.qwen()
    inputs = tiny_vlm.qwen_inputs(grids=((1, 8, 8), (1, 12, 8)))
    kept = lambda sched: np.asarray(jaxvlm.forward(params, prune=sched, **inputs).kept[0])  # noqa: E731
    default = kept(prune.debiased_fastv(keep=8))
    np.testing.assert_array_equal(default, kept(prune.debiased_fastv(keep=8, trend="self")))
    assert kept(prune.debiased_fastv(keep=8, trend="release")).shape == default.shape


# ------------------------------------------------------------------------------------- LLaVA-NeXT per tile


@pytest.fixture(scope="module")
def next_model():
    from llava_next_reference import hf_config_dict
    from jaxvlm.models import llava_next

    return random_params(llava_next.parse_config(hf_config_dict(text_layers=3, vision_layers=1)), seed=0)


def tile_shares(params, inputs, schedule) -> np.ndarray:
    """(images, 3) share of each image's kept tokens on its base tile, its grid tiles and its newlines."""
    from jaxvlm.models import llava_next

    kept = np.asarray(jaxvlm.forward(params, prune=schedule, **inputs).kept[0])
    batch = llava_next.prepare(params.config, **inputs)
    maps = llava_next.kept_maps(params.config, inputs["image_sizes"], batch, kept)
    counts = np.array([[m["base"].sum(), m["grid"].sum(), m["newlines"].sum()] for m in maps], float)
    return counts / counts.sum(1, keepdims=True)


def test_llava_next_detrends_per_tile(next_model):
    """The default span_layout "tile": a trend over one tile's positions (here 8 x 8 = 64, steep) spreads the
    budget over the base tile and the grid tiles; over the whole token run ("sequence") it would push the
    budget onto the base tile, and newlines (detrended like the patch they follow) are not favoured."""
    from llava_next_reference import SMALL_SIZES, make_inputs

    assert next_model.config.span_layout == "tile"
    inputs = make_inputs(next_model, sizes=SMALL_SIZES[1:3], text=(25, 60), seed=1)
    steep = debias.Trend("exponential", (1.0, 0.03, 0.0), span=64)  # 6.6x over one tile, clamped beyond
    sched = prune.debiased_fastv(keep=48, trend=steep)
    seq = next_model.replace(config=dataclasses.replace(next_model.config, span_layout="sequence"))
    raw, tile, whole = (tile_shares(p, inputs, s) for p, s in ((next_model, prune.fastv(keep=48)),
                                                                 (next_model, sched), (seq, sched)))
    print(f"base / grid / newlines: raw {raw.round(2).tolist()} tile {tile.round(2).tolist()} "
          f"sequence {whole.round(2).tolist()}")
    assert (whole[:, 0] > 0.9).all()
    assert (tile[:, 0] < 0.6).all() and (tile[:, 1] > 0.3).all()
    assert (tile[:, 2] <= raw[:, 2] + 0.1).all()


# ------------------------------------------------------------------------------------- Video-LLaVA per frame


def test_video_llava_detrends_per_frame():
    """span_layout "frame" (default): every frame restarts at position 0, so a rising trend over one frame
    leaves every frame its share of the budget; over the whole 8-frame run ("sequence") it would keep the
    first frames only."""
    from jaxvlm.models import video_llava
    from video_llava_reference import FRAMES, hf_config_dict, make_inputs

    params = random_params(video_llava.parse_config(hf_config_dict(text_layers=3, vision_layers=1)), seed=0)
    assert params.config.span_layout == "frame"
    inputs = make_inputs(params, rows=("video",), text=(30,))
    batch = video_llava.prepare(params.config, **inputs)
    vid = batch["visual"][0]
    span, frame = batch["span_index"][0][vid], batch["frame"][0][vid]
    assert span.max() == 255 and all((span[frame == f] == np.arange(-1, 256)).all() for f in range(FRAMES))
    steep = debias.Trend("exponential", (1.0, 0.02, 0.0), span=256)  # 165x over one frame
    sched = prune.debiased_fastv(keep=128, trend=steep)

    def per_frame(p):
        kept = np.asarray(jaxvlm.forward(p, prune=sched, **inputs).kept[0][0])
        frames = video_llava.prepare(p.config, **inputs)["frame"][0][kept[kept >= 0]]
        return np.bincount(frames, minlength=FRAMES) / len(frames)

    seq = params.replace(config=dataclasses.replace(params.config, span_layout="sequence"))
    framewise, whole = per_frame(params), per_frame(seq)
    print(f"kept share per frame: frame layout {framewise.round(2).tolist()}, sequence {whole.round(2).tolist()}")
    assert framewise.min() > 0.05 and whole[0] > 0.5


@pytest.mark.slow
def test_llava_next_real_geometry_budget_over_tiles():
    """The measurement of docs/METHOD.md section 7 (336px tiles, the Hub's pinpoints, images of 1,176 - 2,928
    tokens, random weights, debiased FastV keep 128 with the release's cubic): over the whole token run the
    base tile takes the budget (extrapolated or clamped), per tile it is spread, newlines not favoured."""
    from jaxvlm.models import llava_next
    from llava_next_reference import SIZES, hf_config_dict, make_inputs

    params = random_params(llava_next.parse_config(hf_config_dict(image_size=336, text_layers=3, vision_layers=1)))
    inputs = make_inputs(params, sizes=SIZES, text=(40, 25, 60, 30))
    seq = params.replace(config=dataclasses.replace(params.config, span_layout="sequence"))
    shares = {"raw": tile_shares(params, inputs, prune.fastv(keep=128)),
              "sequence, extrapolated": tile_shares(seq, inputs, prune.debiased_fastv(
                  trend=dataclasses.replace(RELEASE, span=None))),
              "sequence, clamped": tile_shares(seq, inputs, prune.debiased_fastv()),
              "tile": tile_shares(params, inputs, prune.debiased_fastv())}
    for name, v in shares.items():
        print(f"{name}: base / grid / newlines per image {v.round(2).tolist()}")
    assert (shares["sequence, extrapolated"][:, 0] == 1).all() and (shares["sequence, clamped"][:, 0] > 0.9).all()
    assert (shares["tile"][:, 0] < 0.75).all() and (shares["tile"][:, 2] < 0.05).all()
