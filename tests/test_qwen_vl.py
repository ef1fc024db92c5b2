"""Parity of the Qwen2-VL / Qwen2.5-VL port with transformers (tiny models, float32, every weight re-drawn).

Tolerances (float32 everywhere, `jax_default_matmul_precision=highest` in conftest.py):
- vision tower / merger outputs: max |diff| <= 1e-5 * max |reference| (~80 float32 ulps of the largest
  value). Pre-merge states reach ~15 after the 1176-wide patch matmul and the residual stack; measured
  differences are ~2e-5 there (relative 1.4e-6) and ~2e-6 after the merger (magnitude ~3): float32 rounding
  of different summation orders (XLA vs oneDNN).
- logits: atol 1e-4 on logits of magnitude ~3-7. Measured max differences are ~5e-6 with the tiny head dims
  and ~3.3e-5 with the real ones (text head_dim 128, theta 1e6, positions ~600: float32 rotary angles; torch's
  own float32 logits differ from a float64 run by 3.7e-5 there), so 1e-4 is ~3x above float32 noise.
  Every deliberate bug below (swapped mrope_section, wrong window partition, missing inverse window order,
  wrong merge order) moves logits by > 1e-2, i.e. 100x above the tolerance (`test_bugs_fail_the_tolerance` asserts that).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import qwen_reference as R
from converters import DictReader, convert, table_for
from jaxvlm.layers import causal_mask
from jaxvlm.model import VLM
from jaxvlm.models import decoder, qwen_vision, qwen_vl

VISION_RTOL = 1e-5
LOGIT_ATOL = 1e-4
REPORT: dict[str, float] = {}


def _record(name: str, diff: float) -> float:
    REPORT[name] = diff
    print(f"\n[max |diff|] {name}: {diff:.3g}")
    return diff


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def pair(request):
    """(torch reference, jax params) for one family. Qwen2.5-VL: 3 blocks, block 1 full attention, windows of
    56 pixels = 2x2 merged tokens, so every image below is split into several (some partial) windows."""
    family = request.param
    kw = {"depth": 3, "fullatt": (1,), "window_size": 56} if family == "qwen2_5_vl" else {}
    model, d = R.build(family, **kw)
    cfg = qwen_vl.parse_config(d)
    weights = convert(table_for(cfg), qwen_vl.weight_shapes(cfg), DictReader(model.state_dict()), place=jnp.asarray)
    return model, VLM(weights=weights, config=cfg)


@jax.jit
def _logits(params: VLM, batch: dict) -> jax.Array:
    emb = qwen_vl.embed(params, batch)
    cfg = params.config.text
    cos, sin = decoder.rotary(emb.positions, cfg)
    x, _ = decoder.run_layers(params.weights["text"]["layers"], emb.embeds, cos, sin, causal_mask(emb.valid), cfg)
    return decoder.final_logits(params.weights["text"], x, cfg)


def jax_logits(params: VLM, **inputs) -> np.ndarray:
    return np.asarray(_logits(params, qwen_vl.prepare(params.config, **inputs)))


def _masked_max(a, b, mask=None) -> float:
    d = np.abs(np.asarray(a) - np.asarray(b))
    return float(d[mask.astype(bool)].max() if mask is not None else d.max())


def _two_image_row(rng):
    """One row, two images of different grids, 500+ tokens."""
    g1, g2 = (1, 10, 14), (1, 16, 12)  # merged 5x7 (partial 2x2 windows) and 8x6
    ids = (R.text(rng, 250) + R.media_span(R.IMAGE, g1) + R.text(rng, 200) + R.media_span(R.IMAGE, g2)
           + R.text(rng, 60))
    return {"input_ids": np.array([ids]), "pixel_values": np.concatenate([R.image_patches(rng, g1),
                                                                           R.image_patches(rng, g2)]),
            "image_grid_thw": np.array([g1, g2])}


# ----------------------------------------------------------------------------------------- vision


def test_vision_tower_and_merger_per_image(pair):
    model, params = pair
    cfg = params.config
    rng = np.random.default_rng(1)
    grids = [(1, 4, 6), (2, 6, 4), (1, 10, 14)]
    pv = np.concatenate([R.image_patches(rng, g) for g in grids])
    with torch.no_grad():
        ref = model.model.visual(torch.from_numpy(pv), grid_thw=torch.tensor(grids))
    idx = qwen_vision.index_arrays(cfg.vision, np.array(grids))
    hidden = qwen_vision.tower(cfg.vision, params.weights["vision"], jnp.asarray(pv), idx)
    merged = qwen_vision.merge(cfg.vision, params.weights["projector"], hidden, idx["unorder"])
    # transformers returns the pre-merge states in its processing (window) order, as we do.
    ref_hidden = ref.last_hidden_state.numpy()
    d_hidden = _record(f"{cfg.family} vision tower (pre-merge)", _masked_max(hidden, ref_hidden))
    assert d_hidden < VISION_RTOL * np.abs(ref_hidden).max()
    ref_merged = ref.pooler_output.numpy()
    tol = VISION_RTOL * np.abs(ref_merged).max()
    start = 0
    for i, g in enumerate(grids):
        n = R.n_tokens(g)
        d = _record(f"{cfg.family} merger image {i} grid {g}", _masked_max(merged[start:start + n],
                                                                          ref_merged[start:start + n]))
        assert d < tol
        start += n


def test_window_index_matches_transformers():
    from transformers.vision_utils import get_vision_window_index

    vcfg = qwen_vl.parse_config(R.hf_config_dict("qwen2_5_vl", window_size=56)).vision
    grids = np.array([(1, 10, 14), (3, 4, 8), (1, 16, 12)])
    idx = qwen_vision.index_arrays(vcfg, grids)
    ref_index, ref_cu = get_vision_window_index(torch.tensor(grids), 2, 56, 14)
    np.testing.assert_array_equal(idx["order"][::4] // 4, ref_index.numpy())
    # window boundaries in processing order == transformers' cu_window_seqlens
    change = np.flatnonzero(np.diff(idx["seg_window"])) + 1
    np.testing.assert_array_equal(np.concatenate([[0], change, [idx["seg_window"].size]]), ref_cu.numpy())


def test_segment_blocks_roundtrip():
    seg = np.array([3, 3, 1, 3, 7, 1, 1, 7, 3], np.int32)
    gather, inverse = qwen_vision.segment_blocks(seg)
    assert gather.shape == (3, 4)  # 3 segments, longest has 4 slots
    flat = np.concatenate([gather.ravel(), [-1]])
    np.testing.assert_array_equal(flat[inverse], np.arange(seg.size))
    for row in gather:
        real = row[row < seg.size]
        assert len(set(seg[real])) == 1 and (np.diff(real) > 0).all()


# -------------------------------------------------------------------------------------- positions


def _positions_case(rng, family):
    """Batch with left/right padding, several images, a video, a text-only row."""
    gi = [(1, 4, 6), (1, 6, 4), (1, 8, 8), (1, 2, 2)]
    gv = [(3, 4, 6)]
    rows = [
        R.text(rng, 7) + R.media_span(R.IMAGE, gi[0]) + R.text(rng, 5),
        R.text(rng, 3) + R.media_span(R.IMAGE, gi[1]) + R.text(rng, 2) + R.media_span(R.IMAGE, gi[2]) + R.text(rng, 4),
        R.text(rng, 2) + R.media_span(R.VIDEO, gv[0]) + R.text(rng, 3) + R.media_span(R.IMAGE, gi[3]) + R.text(rng, 6),
        R.text(rng, 11),
    ]
    t_len = max(len(r) for r in rows) + 3
    ids = np.zeros((len(rows), t_len), np.int64)
    mask = np.zeros_like(ids)
    for b, r in enumerate(rows):
        start = t_len - len(r) if b % 2 == 0 else 0  # even rows left-padded, odd rows right-padded
        ids[b, start:start + len(r)] = r
        mask[b, start:start + len(r)] = 1
    inputs = {"input_ids": ids, "attention_mask": mask,
              "pixel_values": np.concatenate([R.image_patches(rng, g) for g in gi]), "image_grid_thw": np.array(gi),
              "pixel_values_videos": np.concatenate([R.image_patches(rng, g) for g in gv]),
              "video_grid_thw": np.array(gv)}
    if family == "qwen2_5_vl":
        inputs["second_per_grid_ts"] = np.array([1.5], np.float32)  # 2 tokens/s * 1.5 s: t positions 0, 3, 6
    return inputs


def test_mrope_positions_equal_get_rope_index(pair):
    model, params = pair
    inputs = _positions_case(np.random.default_rng(2), params.config.family)
    batch = qwen_vl.prepare(params.config, **inputs)
    kw = {k: torch.from_numpy(np.asarray(inputs[k])) for k in ("image_grid_thw", "video_grid_thw", "attention_mask")}
    if "second_per_grid_ts" in inputs:
        kw["second_per_grid_ts"] = torch.from_numpy(inputs["second_per_grid_ts"])
    ids = torch.from_numpy(inputs["input_ids"])
    ref_pos, ref_delta = model.model.get_rope_index(ids, torch.from_numpy(R.mm_types(inputs["input_ids"])), **kw)
    np.testing.assert_array_equal(batch["positions"], ref_pos.numpy())
    np.testing.assert_array_equal(batch["rope_deltas"], ref_delta.numpy()[:, 0])
    # metadata: row 0 holds image 0 (grid 4x6 patches -> 2x3 merged), raster span indices 0..5
    vis = batch["visual"][0]
    np.testing.assert_array_equal(batch["span_index"][0][vis], np.arange(6))
    np.testing.assert_array_equal(batch["row"][0][vis], [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(batch["media"][0][vis], 0)
    # row 2: the video is media 4 (after the 4 images), frames 0..2
    v = batch["media"][2] == 4
    np.testing.assert_array_equal(np.unique(batch["frame"][2][v]), [0, 1, 2])
    assert (batch["media"][~batch["visual"]] == -1).all()


# ----------------------------------------------------------------------------------------- logits


def test_logits_two_images_one_row_long_prompt(pair):
    model, params = pair
    inputs = _two_image_row(np.random.default_rng(3))
    assert inputs["input_ids"].shape[1] > 500
    ref = R.torch_logits(model, **inputs)
    import jaxvlm

    out = np.asarray(jaxvlm.forward(params, **inputs).logits)  # the public entry point
    d = _record(f"{params.config.family} (a) two images one row, T={ref.shape[1]}", _masked_max(out, ref))
    assert d < LOGIT_ATOL


def test_logits_batch_different_images_left_and_right_padding(pair):
    model, params = pair
    inputs = _positions_case(np.random.default_rng(4), params.config.family)
    ref = R.torch_logits(model, **inputs)
    out = jax_logits(params, **inputs)
    d = _record(f"{params.config.family} (b)+(c) padded batch, images + video", _masked_max(out, ref,
                                                                                           inputs["attention_mask"]))
    assert d < LOGIT_ATOL


def test_logits_video(pair):
    model, params = pair
    rng = np.random.default_rng(5)
    gv = (4, 6, 8)
    ids = R.text(rng, 20) + R.media_span(R.VIDEO, gv) + R.text(rng, 30)
    inputs = {"input_ids": np.array([ids]), "pixel_values_videos": R.image_patches(rng, gv),
              "video_grid_thw": np.array([gv])}
    if params.config.family == "qwen2_5_vl":
        inputs["second_per_grid_ts"] = np.array([0.75], np.float32)  # interval 1.5: t positions 0, 1, 3, 4
    ref = R.torch_logits(model, **inputs)
    out = jax_logits(params, **inputs)
    d = _record(f"{params.config.family} (c) video grid {gv}", _masked_max(out, ref))
    assert d < LOGIT_ATOL


def test_logits_qwen25_large_grid_window_partition():
    """Qwen2.5-VL with the real window geometry (112 px windows = 4x4 merged tokens) on a 20x28-patch grid:
    merged 10x14 -> 3x4 windows, the last row and column partial; blocks 1 and 3 full attention."""
    model, d = R.build("qwen2_5_vl", seed=7, depth=4, fullatt=(1, 3), window_size=112)
    cfg = qwen_vl.parse_config(d)
    params = VLM(weights=convert(table_for(cfg), qwen_vl.weight_shapes(cfg), DictReader(model.state_dict()),
                                 place=jnp.asarray), config=cfg)
    rng = np.random.default_rng(6)
    g = (1, 20, 28)
    idx = qwen_vision.index_arrays(cfg.vision, np.array([g]))
    assert len(np.unique(idx["seg_window"])) == 12
    ids = R.text(rng, 30) + R.media_span(R.IMAGE, g) + R.text(rng, 40)
    inputs = {"input_ids": np.array([ids]), "pixel_values": R.image_patches(rng, g), "image_grid_thw": np.array([g])}
    ref = R.torch_logits(model, **inputs)
    out = jax_logits(params, **inputs)
    dd = _record(f"qwen2_5_vl (d) window-partitioned grid {g}", _masked_max(out, ref))
    assert dd < LOGIT_ATOL


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_logits_real_head_dims(family):
    """The real checkpoints' head geometry: vision head_dim 80 (1280 / 16: 20 rotary frequencies per axis),
    text head_dim 128 with mrope_section [16, 24, 24] and rope_theta 1e6 (narrow widths, 2 heads each)."""
    text = {"hidden_size": 256, "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 128,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}}
    model, d = R.build(family, seed=11, text=text, vision_width=160, window_size=112)
    cfg = qwen_vl.parse_config(d)
    assert cfg.vision.head_dim == 80 and cfg.text.head_dim == 128
    params = VLM(weights=convert(table_for(cfg), qwen_vl.weight_shapes(cfg), DictReader(model.state_dict()),
                                 place=jnp.asarray), config=cfg)
    inputs = _two_image_row(np.random.default_rng(12))
    ref = R.torch_logits(model, **inputs)
    d_max = _record(f"{family} real head dims, T={ref.shape[1]}", _masked_max(jax_logits(params, **inputs), ref))
    assert d_max < LOGIT_ATOL


def test_text_only_rows(pair):
    model, params = pair
    rng = np.random.default_rng(8)
    ids = np.array([R.text(rng, 40), [0] * 5 + R.text(rng, 35)])
    mask = np.ones_like(ids)
    mask[1, :5] = 0
    import torch as _t

    with _t.no_grad():  # transformers' generate-style positions: counted from the first real token
        pos = _t.from_numpy(np.maximum(np.cumsum(mask, 1) - 1, 0))
        ref = model(input_ids=_t.from_numpy(ids), attention_mask=_t.from_numpy(mask), position_ids=pos).logits.numpy()
    out = jax_logits(params, input_ids=ids, attention_mask=mask)
    d = _record(f"{params.config.family} text only, left padding", _masked_max(out, ref, mask))
    assert d < LOGIT_ATOL


# ------------------------------------------------------------------------------------ sensitivity


def test_bugs_fail_the_tolerance(monkeypatch):
    """Each deliberate bug must move the logits far beyond LOGIT_ATOL (else the parity tests prove nothing)."""
    monkeypatch.setattr(qwen_vision, "BUCKETS_PER_OCTAVE", 0)  # the overrides below have the exact shapes
    model, d = R.build("qwen2_5_vl", depth=3, fullatt=(1,), window_size=56)
    cfg = qwen_vl.parse_config(d)
    params = VLM(weights=convert(table_for(cfg), qwen_vl.weight_shapes(cfg), DictReader(model.state_dict()),
                                 place=jnp.asarray), config=cfg)
    rng = np.random.default_rng(9)
    g1, g2 = (1, 10, 14), (1, 8, 12)
    ids = R.text(rng, 20) + R.media_span(R.IMAGE, g1) + R.text(rng, 10) + R.media_span(R.IMAGE, g2) + R.text(rng, 10)
    inputs = {"input_ids": np.array([ids]), "image_grid_thw": np.array([g1, g2]),
              "pixel_values": np.concatenate([R.image_patches(rng, g1), R.image_patches(rng, g2)])}
    ref = R.torch_logits(model, **inputs)
    batch = qwen_vl.prepare(cfg, **inputs)
    assert _masked_max(_logits(params, batch), ref) < LOGIT_ATOL

    def diff(p=params, **override):
        return _masked_max(_logits(p, {**batch, **override}), ref)

    rope = dataclasses.replace(cfg.text.rope, mrope_section=(3, 3, 2))  # t and w sections swapped
    swapped = VLM(weights=params.weights, config=dataclasses.replace(
        cfg, text=dataclasses.replace(cfg.text, rope=rope)))
    units = batch["vis_order"][::4] // 4  # merged unit processed at each merged slot
    n_units = units.size
    raster_windows = np.repeat(np.arange(n_units) // 4, 4).astype(np.int32)  # 1-D chunks, not 2-D windows
    # wrong merge order: rotary positions as if pixel rows were raster order instead of merge-block-major
    raster = []
    for t, h, w in (g1, g2):
        r, c = np.divmod(np.arange(h * w), w)
        raster.append(np.stack([r, c], -1))
    raster = np.concatenate(raster)[batch["vis_order"]].astype(np.int32)
    # wrong merge order of features: image 0's tokens scattered column-major instead of raster
    fi = batch["feature_index"].copy()
    n0 = R.n_tokens(g1)
    slots = np.flatnonzero(fi[0] >= 0)[:n0]
    fi[0, slots] = np.arange(n0).reshape(5, 7).T.ravel()
    bugs = {
        "swapped mrope_section": diff(swapped),
        "no inverse window order": diff(vis_unorder=np.arange(n_units, dtype=np.int32)),
        "wrong window partition": diff(**dict(zip(("vis_window_gather", "vis_window_inverse"),
                                                  qwen_vision.segment_blocks(raster_windows)))),
        "wrong merge order (rotary)": diff(vis_rope_pos=raster),
        "wrong merge order (scatter)": diff(feature_index=fi),
    }
    for name, v in bugs.items():
        _record(f"bug: {name}", v)
        assert v > 100 * LOGIT_ATOL, name


# ------------------------------------------------------------------------------------------ decode


def test_greedy_generate_matches_transformers(pair):
    """Decode positions after images/videos (transformers: cache length + rope_deltas) through jaxvlm.generate,
    on a left-padded batch with images of different sizes and a video."""
    model, params = pair
    inputs = _positions_case(np.random.default_rng(10), params.config.family)
    # transformers' batched generate needs left padding: re-pad every row on the left
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    t_len = ids.shape[1]
    for b in range(ids.shape[0]):
        real = ids[b][mask[b].astype(bool)]
        ids[b] = 0
        ids[b, t_len - real.size:] = real
        mask[b] = 0
        mask[b, t_len - real.size:] = 1
    import jaxvlm

    new = 8
    got = np.asarray(jaxvlm.generate(params, max_new_tokens=new, **inputs).tokens)
    t = {k: torch.from_numpy(np.asarray(v).astype(np.int64) if np.issubdtype(np.asarray(v).dtype, np.integer)
                             else np.asarray(v)) for k, v in inputs.items()}
    t["mm_token_type_ids"] = torch.from_numpy(R.mm_types(ids))
    with torch.no_grad():
        ref = model.generate(**t, max_new_tokens=new, do_sample=False, pad_token_id=0)[:, t_len:].numpy()
    print(f"\n{params.config.family} greedy tokens: {got.tolist()}")
    assert len(np.unique(got)) > 4  # not a degenerate repeat of one token
    np.testing.assert_array_equal(got, ref)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_vision_tower_real_width(family):
    """Real vision geometry (width 1280, 16 heads, real MLP widths, 112 px windows) at depth 4, on a 448x448
    image (1024 patches, 4x4 windows of 4x4 merged tokens), transformers' own init: merger output parity."""
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

    from test_qwen_configs import QWEN2_VL_2B, QWEN25_VL_3B

    d = dict(QWEN2_VL_2B if family == "qwen2_vl" else QWEN25_VL_3B)
    d["vision_config"] = {**d["vision_config"], "depth": 4}
    if family == "qwen2_5_vl":
        d["vision_config"]["fullatt_block_indexes"] = [1, 3]
    hf_cls, cfg_cls = ((Qwen2VisionTransformerPretrainedModel, Qwen2VLConfig) if family == "qwen2_vl"
                       else (Qwen2_5_VisionTransformerPretrainedModel, Qwen2_5_VLConfig))
    torch.manual_seed(0)
    vis = hf_cls._from_config(cfg_cls(**dict(d)).vision_config).float().eval()
    cfg = qwen_vl.parse_config(d)
    shapes = qwen_vl.weight_shapes(cfg)
    shapes = {"vision": shapes["vision"], "projector": shapes["projector"]}
    w = convert(table_for(cfg), shapes, DictReader({"visual." + k: v for k, v in vis.state_dict().items()}),
                place=jnp.asarray)
    grid = np.array([(1, 32, 32)])
    pv = np.random.default_rng(0).standard_normal((1024, 1176)).astype(np.float32)
    with torch.no_grad():
        ref = vis(torch.from_numpy(pv), grid_thw=torch.from_numpy(grid)).pooler_output.numpy()
    idx = qwen_vision.index_arrays(cfg.vision, grid)
    out = jax.jit(lambda w, p, i: qwen_vision.encode(cfg.vision, w["vision"], w["projector"], p, i))(w, pv, idx)
    d_max = _record(f"{family} real-width vision tower + merger (depth 4, 1024 patches)", _masked_max(out, ref))
    assert d_max < VISION_RTOL * np.abs(ref).max()
