"""Qwen patch-count buckets: padded patches are masked out exactly, and batches of different grids inside one
prompt bucket and one patch bucket share one compiled program (jaxvlm/models/qwen_vision.py `bucket`).

Parity tolerance: 1e-5 (float32, `highest` matmuls). The bucketed program adds masked keys to the attention
blocks and padding rows past the real ones; the real rows' arithmetic differs only in the attention's block
split, measured ~1e-8 on features of magnitude ~0.5 and ~1e-6 on logits of magnitude ~3.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import qwen_reference as Q
from engine_stages import FastV
from jaxvlm.engine import api
from jaxvlm.model import random_params
from jaxvlm.models import qwen_vision, qwen_vl

import jaxvlm

ATOL = 1e-5
FAMILY_KW = {"qwen2_vl": {}, "qwen2_5_vl": {"depth": 3, "fullatt": (1,), "window_size": 56}}


@functools.cache
def model(family: str):
    """Tiny random model; Qwen2.5-VL with 2x2-merged-token windows (every grid below has several, some partial)."""
    return random_params(qwen_vl.parse_config(Q.hf_config_dict(family, **FAMILY_KW[family])), seed=1, std=0.1)


# ----------------------------------------------------------------------------------------- host side


@given(st.integers(1, 1 << 20), st.sampled_from([1, 4, 9, 64]), st.sampled_from([1, 2, 4, 8]))
def test_bucket_bounds(n, quantum, per_octave):
    b = qwen_vision.bucket(n, quantum, per_octave)
    assert b >= n and b % quantum == 0
    assert b < n * (1 + 1 / per_octave) + quantum  # padding under 1/per_octave (plus the quantum)
    assert qwen_vision.bucket(b, quantum, per_octave) == b  # a bucket is its own bucket
    assert qwen_vision.bucket(n + 1, quantum, per_octave) >= b  # monotone
    assert qwen_vision.bucket(n, quantum, 0) == n


def test_buckets_per_octave():
    got = sorted({qwen_vision.bucket(n, 4) for n in range(1025, 4097)})
    assert got == [1280, 1536, 1792, 2048, 2560, 3072, 3584, 4096]


@given(st.lists(st.integers(-1, 5), min_size=1, max_size=40), st.sampled_from([0, 4]))
def test_segment_blocks_with_unsegmented_slots(seg, per_octave):
    seg = np.asarray(seg, np.int32)
    gather, inverse = qwen_vision.segment_blocks(seg, per_octave)
    s, p = gather.shape
    real = seg >= 0
    flat = np.concatenate([gather.ravel(), [-1]])
    np.testing.assert_array_equal(flat[np.minimum(inverse, s * p)][real], np.flatnonzero(real))
    assert (inverse[~real] == s * p).all()  # no block holds a padding slot
    for row in gather:
        slots = row[row < seg.size]
        assert len(set(seg[slots])) <= 1 and (np.diff(slots) > 0).all() and real[slots].all()
    assert s >= len(set(seg[real].tolist())) and p >= max(np.bincount(seg[real] + 0).max(initial=0), 1)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_bucketed_index_extends_the_exact_one(family):
    vcfg = model(family).config.vision
    grids = np.array([(1, 4, 6), (2, 6, 4), (1, 10, 14), (1, 2, 2)])
    exact = qwen_vision.index_arrays(vcfg, grids)
    padded = qwen_vision.index_arrays(vcfg, grids, 4)
    n, nm = exact["order"].size, exact["unorder"].size
    assert padded["order"].size == qwen_vision.bucket(n, vcfg.merge_unit) > n
    for k in ("order", "rope_pos", "seg_full", "seg_window"):
        np.testing.assert_array_equal(padded[k][:n], exact[k])
    np.testing.assert_array_equal(padded["unorder"][:nm], exact["unorder"])
    np.testing.assert_array_equal(padded["order"][n:], np.arange(n, padded["order"].size))
    assert (padded["seg_full"][n:] == -1).all() and (padded["seg_window"][n:] == -1).all()
    for k in ("full", "window"):
        assert (padded[f"{k}_gather"] < n).sum() == n  # every real patch in one block, no padding patch


# ----------------------------------------------------------------------------------------- device side


def _media_inputs(grids, videos=(), seed=0):
    """One right-padded row per image grid, then one per video grid."""
    rng = np.random.default_rng(seed)
    rows = ([Q.text(rng, 6) + Q.media_span(Q.IMAGE, g) + Q.text(rng, 5) for g in grids]
            + [Q.text(rng, 4) + Q.media_span(Q.VIDEO, g) + Q.text(rng, 7) for g in videos])
    t = max(map(len, rows))
    ids, mask = np.zeros((len(rows), t), np.int64), np.zeros((len(rows), t), np.int64)
    for b, r in enumerate(rows):
        ids[b, :len(r)], mask[b, :len(r)] = r, 1
    out = {"input_ids": ids, "attention_mask": mask}
    if grids:
        out["image_grid_thw"] = np.array(grids)
        out["pixel_values"] = np.concatenate([Q.image_patches(rng, g) for g in grids])
    if videos:
        out["video_grid_thw"] = np.array(videos)
        out["pixel_values_videos"] = np.concatenate([Q.image_patches(rng, g) for g in videos])
    return out


def _generate(params, inputs, per_octave, monkeypatch):
    monkeypatch.setattr(qwen_vision, "BUCKETS_PER_OCTAVE", per_octave)
    return jaxvlm.generate(params, **inputs, prune=(FastV(layer=1, keep=10),), max_new_tokens=3, output_logits=True)


@pytest.mark.parametrize("family", ["qwen2_vl", pytest.param("qwen2_5_vl", marks=pytest.mark.slow)])
def test_bucketed_program_equals_the_exact_one(family, monkeypatch):
    """Images of several grids and a video: logits, tokens and FastV's kept sets of the bucketed program equal
    the exact-shape program's, and the padding really was there (shapes differ)."""
    params = model(family)
    inputs = _media_inputs([(1, 4, 6), (1, 10, 14), (1, 6, 10)], videos=[(2, 6, 6)])  # 296 patches -> 320
    monkeypatch.setattr(qwen_vision, "BUCKETS_PER_OCTAVE", 0)
    exact_batch = qwen_vl.prepare(params.config, **inputs)
    monkeypatch.setattr(qwen_vision, "BUCKETS_PER_OCTAVE", 4)
    assert qwen_vl.prepare(params.config, **inputs)["patches"].shape[0] > exact_batch["patches"].shape[0]
    ref = _generate(params, inputs, 0, monkeypatch)
    got = _generate(params, inputs, 4, monkeypatch)
    d = float(np.abs(np.asarray(got.logits) - np.asarray(ref.logits)).max())
    print(f"\n[max |diff|] {family} bucketed vs exact logits: {d:.3g} (max |logit| "
          f"{float(np.abs(np.asarray(ref.logits)).max()):.3g})")
    assert d < ATOL
    np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(ref.tokens))
    np.testing.assert_array_equal(np.asarray(got.kept[0]), np.asarray(ref.kept[0]))


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_merged_features_equal_the_exact_ones(family):
    """The vision tower and merger alone, images and a 2-frame video: the real merged tokens are unchanged."""
    params = model(family)
    vcfg, w = params.config.vision, params.weights
    grids = np.array([(1, 4, 6), (2, 6, 4), (1, 10, 14), (1, 2, 2)])
    pv = np.concatenate([Q.image_patches(np.random.default_rng(2), g) for g in grids])
    encode = jax.jit(lambda p, i: qwen_vision.encode(vcfg, w["vision"], w["projector"], p, i))
    exact = np.asarray(encode(pv, qwen_vision.index_arrays(vcfg, grids)))
    idx = qwen_vision.index_arrays(vcfg, grids, 4)
    padded = np.zeros((idx["order"].size, pv.shape[1]), np.float32)
    padded[:len(pv)] = pv
    got = np.asarray(encode(padded, idx))
    assert got.shape[0] > exact.shape[0] and np.isfinite(got).all()
    d = float(np.abs(got[:len(exact)] - exact).max())
    print(f"\n[max |diff|] {family} merged features bucketed vs exact: {d:.3g} (max {np.abs(exact).max():.3g})")
    assert d < ATOL * max(1.0, np.abs(exact).max())


# ------------------------------------------------------------------------------------------- compiles


# Two-image batches inside one 64-token prompt bucket whose patch counts (132..160 -> 160), widest image
# (72 or 80 -> 80 patches) and Qwen2.5-VL window counts (12 -> 16) share their buckets: four patch counts.
SAME_BUCKET_BATCHES = [[(1, 8, 10), (1, 10, 8)], [(1, 8, 10), (1, 6, 10)], [(1, 6, 12), (1, 8, 10)],
                       [(1, 6, 12), (1, 6, 10)]]


def program_keys(config, batches, per_octave) -> set:
    """The jit cache keys of `generate` (no pruning) for these batches of single-image rows as `_media_inputs`
    lays them out, host side only: batch size, prompt bucket and the shapes of the vision arrays."""
    keys = set()
    for grids in batches:
        t = api.bucket_length(max(g[0] * g[1] * g[2] for g in grids) // config.vision.merge_unit + 13)
        idx = qwen_vision.index_arrays(config.vision, np.array(grids), per_octave)
        keys.add((len(grids), t, tuple(sorted((k, v.shape) for k, v in idx.items()))))
    return keys


@pytest.mark.parametrize("family", ["qwen2_5_vl", pytest.param("qwen2_vl", marks=pytest.mark.slow)])
def test_one_program_for_grids_in_one_bucket(family, monkeypatch):
    params = model(family)
    assert len(program_keys(params.config, SAME_BUCKET_BATCHES, 0)) == 4  # exact shapes: one per patch count
    assert len(program_keys(params.config, SAME_BUCKET_BATCHES, 4)) == 1
    monkeypatch.setattr(qwen_vision, "BUCKETS_PER_OCTAVE", 4)
    jax.clear_caches()
    before = api.TRACE_COUNTS["generate"]
    for i, grids in enumerate(SAME_BUCKET_BATCHES):
        jaxvlm.generate(params, **_media_inputs(grids, seed=i), max_new_tokens=2)
    assert api.TRACE_COUNTS["generate"] - before == 1


def coco_like_grids(n: int, seed: int = 0) -> list[tuple[int, int, int]]:
    """Grids of `n` photos sized like COCO's (long side 640 or 500, short 333..640, a third portrait) as
    Qwen2-VL's processor resizes them: sides rounded to multiples of 28 pixels (the checkpoints' pixel budget,
    3136 .. 12845056, leaves photos of this size otherwise unchanged)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        long = int(rng.choice([640, 500], p=[0.9, 0.1]))
        short = int(rng.integers(333, long + 1))
        h, w = (long, short) if rng.random() < 1 / 3 else (short, long)
        out.append((1, max(28, round(h / 28) * 28) // 14, max(28, round(w / 28) * 28) // 14))
    return out


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_eval_mix_compiles_fewer_programs(family):
    """COCO-like photos at the real window geometry: exact shapes need about one program per batch, the
    buckets a few more than the distinct prompt buckets (which no vision bucket can merge)."""
    cfg = qwen_vl.parse_config(Q.hf_config_dict(family, **({"window_size": 112} if family == "qwen2_5_vl" else {})))
    report = []
    for n, size in ((20, 2), (500, 8)):
        grids = coco_like_grids(n)
        batches = [grids[i:i + size] for i in range(0, n, size)]
        exact, bucketed = (len(program_keys(cfg, batches, po)) for po in (0, 4))
        prompt_buckets = len({k[:2] for k in program_keys(cfg, batches, 0)})
        report.append(f"{n} photos in batches of {size}: {exact} programs exact, {bucketed} bucketed "
                      f"({prompt_buckets} prompt buckets)")
        assert exact >= 0.9 * len(batches) and bucketed <= prompt_buckets + max(3, exact // 10)
    print(f"\n{family}: " + "; ".join(report))
