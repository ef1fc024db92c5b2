"""Padding masks, padding suppression and detrending (jaxvlm.debias) against the release's formulas.

The reference implementations below are written from METHOD.md section 3 as plain loops.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from jaxvlm import debias

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
sizes = st.tuples(st.integers(1, 5000), st.integers(1, 5000))
near_square = st.integers(1, 3000).flatmap(lambda w: st.tuples(st.just(w), st.integers(max(1, w - 40), w + 40)))
any_size = st.one_of(sizes, near_square)
thresholds = st.one_of(st.sampled_from([0.0, 0.01, 0.2, 0.3, 0.5, 0.99, 1.0]), st.floats(0.0, 1.0))
geometries = st.sampled_from([(24, 336), (16, 224), (27, 378), (7, 100), (32, 448)])


def loop_pad_mask(width, height, grid=24, img_size=336, threshold=0.5):
    """The release's pad-to-square geometry, patch by patch, in Python floats; also returns the ratios."""
    p = img_size // grid
    if width < height:
        pad = (height - width) / (2 * height) * img_size
        left, right, top, bottom = pad, img_size - pad, 0, img_size
    elif height < width:
        pad = (width - height) / (2 * width) * img_size
        left, right, top, bottom = 0, img_size, pad, img_size - pad
    else:
        left, right, top, bottom = 0, img_size, 0, img_size
    mask = np.zeros((grid, grid), np.float32)
    ratio = np.zeros((grid, grid))
    for i in range(grid):
        for j in range(grid):
            iw = max(0, min((j + 1) * p, right) - max(j * p, left))
            ih = max(0, min((i + 1) * p, bottom) - max(i * p, top))
            ratio[i, j] = 1 - iw * ih / (p * p)
            mask[i, j] = 0 if ratio[i, j] > threshold else 1
    return mask.reshape(-1), ratio.reshape(-1)


def loop_unpad_mask(width, height, grid=24):
    mask = np.zeros((grid, grid), np.float32)
    if width / height > 1:
        new = int(height * (grid / width))
        pad = (grid - new) // 2
        mask[pad : grid - pad, :] = 1
    else:
        new = int(width * (grid / height))
        pad = (grid - new) // 2
        mask[:, pad : grid - pad] = 1
    return mask.reshape(-1)


@pytest.mark.parametrize(
    "size,threshold,valid",
    [
        ((640, 480), 0.5, 432),
        ((640, 427), 0.5, 384),
        ((1920, 1080), 0.5, 336),
        ((300, 1000), 0.5, 192),
        ((1920, 1080), 0.01, 288),
        ((300, 1000), 0.01, 144),
        ((512, 512), 0.5, 576),
    ],
)
def test_reference_counts(size, threshold, valid):
    host = debias.pad_mask(np.array(size), threshold=threshold)
    dev = jax.jit(debias.pad_mask, static_argnames="threshold")(jnp.array(size), threshold=threshold)
    assert host.shape == (576,) and host.dtype == np.float32
    assert host.sum() == valid and float(dev.sum()) == valid
    assert set(np.unique(host)) <= {0.0, 1.0}


@SETTINGS
@given(size=any_size, threshold=thresholds, geometry=geometries)
def test_pad_mask_equals_release_loop(size, threshold, geometry):
    grid, img = geometry
    ref, _ = loop_pad_mask(*size, grid=grid, img_size=img, threshold=threshold)
    got = debias.pad_mask(np.array(size), grid=grid, image_size=img, threshold=threshold)
    np.testing.assert_array_equal(got, ref)


def test_pad_mask_batched_and_jitted_match_loop():
    """Hundreds of sizes in one call; the float32 jit path may differ only where the ratio ties the threshold."""
    rng = np.random.default_rng(0)
    n = 400
    w = rng.integers(1, 4000, n)
    h = np.where(rng.random(n) < 0.3, w + rng.integers(-20, 21, n), rng.integers(1, 4000, n)).clip(1)
    thr = rng.choice([0.5, 0.01, 0.3], n)
    sizes = np.stack([w, h], 1)
    loops = [loop_pad_mask(a, b, threshold=t) for a, b, t in zip(w, h, thr)]
    ref = np.stack([m for m, _ in loops])
    ratio = np.stack([r for _, r in loops])
    np.testing.assert_array_equal(debias.pad_mask(sizes, threshold=thr), ref)
    dev = np.asarray(jax.jit(debias.pad_mask)(jnp.asarray(sizes), threshold=jnp.asarray(thr, jnp.float32)))
    diff = dev != ref
    assert np.all(np.abs(ratio - thr[:, None])[diff] < 1e-5), "float32 path differs away from a tie"
    assert diff.mean() < 1e-3
    # vmap over images equals the batched call
    vm = jax.vmap(lambda s: debias.pad_mask(s, threshold=0.5))(jnp.asarray(sizes))
    np.testing.assert_array_equal(np.asarray(vm), np.asarray(jax.jit(debias.pad_mask)(jnp.asarray(sizes))))


@SETTINGS
@given(size=any_size, grid=st.sampled_from([24, 16, 27]))
def test_unpad_mask_equals_release(size, grid):
    np.testing.assert_array_equal(debias.unpad_mask(np.array(size), grid=grid), loop_unpad_mask(*size, grid=grid))


def test_unpad_mask_float64_quirk_and_jit():
    # int(47 * (24 / 94)) == 11 in float64 although 47*24/94 == 12: the host path keeps the release's quirk
    assert debias.unpad_mask(np.array([94, 47])).sum() == 24 * (24 - 2 * ((24 - 11) // 2))
    got = jax.jit(debias.unpad_mask)(jnp.array([[640, 480], [300, 1000], [500, 500]]))
    np.testing.assert_array_equal(np.asarray(got), debias.unpad_mask(np.array([[640, 480], [300, 1000], [500, 500]])))


def pil_mask(width, height, grid=24):
    side = max(width, height)
    m = Image.new("L", (side, side), 0)
    m.paste(Image.new("L", (width, height), 1), ((side - width) // 2, (side - height) // 2))
    return (np.asarray(m.resize((grid, grid), Image.Resampling.BILINEAR)).reshape(-1) >= 0.5).astype(np.float32)


@settings(max_examples=100, deadline=None)
@given(size=st.one_of(st.tuples(st.integers(1, 3000), st.integers(1, 3000)), near_square))
def test_sparsevlm_mask_equals_pillow(size):
    np.testing.assert_array_equal(debias.pad_mask_sparsevlm(np.array(size)), pil_mask(*size))


def test_sparsevlm_mask_jit_equals_pillow():
    rng = np.random.default_rng(2)  # Pillow on big canvases is the slow part: 120 sizes up to 2000
    w = rng.integers(1, 2000, 120)
    h = np.where(rng.random(120) < 0.4, w + rng.integers(-30, 31, 120), rng.integers(1, 2000, 120)).clip(1)
    sizes = np.stack([w, h], 1)
    ref = np.stack([pil_mask(a, b) for a, b in sizes])
    np.testing.assert_array_equal(debias.pad_mask_sparsevlm(sizes), ref)
    np.testing.assert_array_equal(np.asarray(jax.jit(debias.pad_mask_sparsevlm)(jnp.asarray(sizes))), ref)


def test_make_pad_mask_variants():
    sizes = np.array([[640, 480], [300, 1000]])
    np.testing.assert_array_equal(debias.make_pad_mask(sizes, "release", 0.01), debias.pad_mask(sizes, threshold=0.01))
    np.testing.assert_array_equal(debias.make_pad_mask(sizes, "unpad"), debias.unpad_mask(sizes))
    np.testing.assert_array_equal(debias.make_pad_mask(sizes, "sparsevlm"), debias.pad_mask_sparsevlm(sizes))
    f = jax.jit(debias.make_pad_mask, static_argnums=(1, 2))
    for variant in debias.PAD_VARIANTS:
        np.testing.assert_array_equal(np.asarray(f(jnp.asarray(sizes), variant, 0.5)), debias.make_pad_mask(sizes, variant))
    with pytest.raises(ValueError):
        debias.make_pad_mask(sizes, "crop")


def test_sparsevlm_mask_close_to_threshold_half():
    rng = np.random.default_rng(1)
    sizes = rng.integers(100, 2000, (50, 2))
    agree = (debias.pad_mask_sparsevlm(sizes) == debias.pad_mask(sizes, threshold=0.5)).mean()
    assert agree > 0.99


def test_token_pad_flags():
    masks = debias.pad_mask(np.array([[640, 480], [300, 1000]]))  # (2, 576)
    grid = masks.reshape(2, 24, 24)
    rng = np.random.default_rng(0)
    b, t = 3, 50
    media = rng.integers(-1, 2, (b, t))
    row = np.where(media >= 0, rng.integers(0, 24, (b, t)), -1)
    col = np.where(media >= 0, rng.integers(0, 24, (b, t)), -1)
    want = np.zeros((b, t), bool)
    for i in range(b):
        for j in range(t):
            if media[i, j] >= 0:
                want[i, j] = grid[media[i, j], row[i, j], col[i, j]] == 0
    assert want.any() and (~want & (media >= 0)).any()
    np.testing.assert_array_equal(debias.token_pad_flags(media, row, col, masks), want)
    np.testing.assert_array_equal(debias.token_pad_flags(media, row, col, grid), want)
    got = jax.jit(debias.token_pad_flags)(jnp.asarray(media), jnp.asarray(row), jnp.asarray(col), jnp.asarray(grid))
    np.testing.assert_array_equal(np.asarray(got), want)
    # Qwen: no pad-to-square, all-valid masks, nothing is padding
    ones = debias.valid_mask(2, 6, 9)
    assert not debias.token_pad_flags(media, np.minimum(row, 5), np.minimum(col, 8), ones, grid_w=9).any()


@SETTINGS
@given(
    scores=st.lists(st.floats(0.0, 10.0), min_size=1, max_size=64),
    data=st.data(),
)
def test_suppress_padding_zeroes_exactly_padding(scores, data):
    s = np.asarray(scores, np.float32)
    mask = np.asarray(data.draw(st.lists(st.booleans(), min_size=len(s), max_size=len(s))), np.float32)
    out = debias.suppress_padding(s, mask)
    np.testing.assert_array_equal(out[mask == 0], 0.0)
    np.testing.assert_array_equal(out[mask == 1], s[mask == 1])
    np.testing.assert_array_equal(out, s * mask)  # the release's `scores * mask`
    neg = debias.suppress_padding(jnp.asarray(s), jnp.asarray(mask), fill=-jnp.inf)
    assert np.all(np.isneginf(np.asarray(neg)[mask == 0]))


def test_suppress_padding_jit_vmap():
    rng = np.random.default_rng(0)
    s = rng.random((4, 576)).astype(np.float32)
    m = debias.pad_mask(rng.integers(100, 1000, (4, 2)))
    f = jax.jit(jax.vmap(debias.suppress_padding))
    np.testing.assert_array_equal(np.asarray(f(jnp.asarray(s), jnp.asarray(m))), s * m)


trend_strategy = st.one_of(
    st.builds(
        lambda a, r, c: debias.Trend("exponential", (a, np.log(r) / 575, c)),
        st.floats(0.1, 10.0),
        st.floats(1.5, 15.0),
        st.floats(0.0, 1.0),
    ),
    st.builds(
        lambda c1, c2: debias.Trend("polynomial", (1.0, c1, c2)),
        st.floats(0.0, 1e-2),
        st.floats(0.0, 1e-5),
    ),
    st.lists(st.floats(0.5, 5.0), min_size=2, max_size=30).map(lambda v: debias.Trend("table", tuple(v))),
)


@SETTINGS
@given(trend=trend_strategy, content=st.floats(0.01, 100.0), seed=st.integers(0, 2**16))
def test_detrend_makes_equal_content_position_independent(trend, content, seed):
    rng = np.random.default_rng(seed)
    n = 576
    positions = np.concatenate([np.full(7, -1), rng.permutation(n)[:200], np.full(5, -1)])
    text = positions < 0
    raw = np.where(text, rng.random(len(positions)), content * trend(np.maximum(positions, 0)))
    out = debias.detrend(raw, positions, trend)
    np.testing.assert_allclose(out[~text], content * trend(0.0), rtol=1e-12)
    np.testing.assert_array_equal(out[text], raw[text])  # text untouched


@pytest.mark.parametrize(
    "trend",
    [debias.release_trend("sparsevlm", "pope"), debias.release_trend("fastv"), debias.Trend("table", (1.0, 3.0, 2.0, 5.0))],
    ids=["exp", "poly", "table"],
)
def test_detrend_jit_vmap(trend):
    """jax path, trend as a static argument, batched with vmap: equal content -> equal scores."""
    rng = np.random.default_rng(0)
    positions = np.stack([np.concatenate([[-1, -1], rng.permutation(576), [-1]]) for _ in range(3)])
    text = positions < 0
    content = rng.random((3, 1)) + 0.5
    raw = np.where(text, rng.random(positions.shape), content * trend(np.maximum(positions, 0)))
    f = jax.jit(jax.vmap(debias.detrend, in_axes=(0, 0, None)), static_argnums=2)
    got = np.asarray(f(jnp.asarray(raw, jnp.float32), jnp.asarray(positions), trend))
    want = np.broadcast_to(content * trend(0.0), raw.shape)
    np.testing.assert_allclose(got[~text], want[~text], rtol=2e-5)
    np.testing.assert_array_equal(got[text], raw[text].astype(np.float32))


def test_detrend_equals_release_weighting():
    """s * w with w the release's vector: the same numbers as `scores * weight` in the release."""
    w = np.load(debias.release_weights_path("pdrop", "gqa"))
    s = np.random.default_rng(0).random(576)
    np.testing.assert_allclose(debias.detrend(s, np.arange(576), debias.release_trend("pdrop", "gqa")), s * w, rtol=1e-12)


def test_detrend_2d_and_video_frames():
    row_t = debias.Trend("exponential", (1.0, 0.05, 0.0))
    col_t = debias.Trend("polynomial", (1.0, 0.1))
    t2 = debias.Trend2D(row_t, col_t)
    rows, cols = np.divmod(np.arange(48), 8)  # one 6x8 grid
    rows = np.concatenate([[-1], rows, rows, [-1]])  # two video frames share (row, col)
    cols = np.concatenate([[-1], cols, cols, [-1]])
    raw = np.where(rows >= 0, 3.0 * t2(np.maximum(rows, 0), np.maximum(cols, 0)), 0.7)
    out = debias.detrend(raw, (rows, cols), t2)
    np.testing.assert_allclose(out[rows >= 0], 3.0 * t2(0.0, 0.0))
    assert out[0] == 0.7 and out[-1] == 0.7
    got = jax.jit(debias.detrend, static_argnums=2)(jnp.asarray(raw, jnp.float32), (jnp.asarray(rows), jnp.asarray(cols)), t2)
    np.testing.assert_allclose(np.asarray(got)[rows >= 0], 3.0, rtol=1e-5)
    # per frame with 1-D positions: span_index restarts at each frame
    span = np.concatenate([[-1], np.arange(48), np.arange(48), [-1]])
    raw1 = np.where(span >= 0, 2.0 * row_t(np.maximum(span, 0)), 0.7)
    np.testing.assert_allclose(debias.detrend(raw1, span, row_t)[span >= 0], 2.0)
    with pytest.raises(TypeError):
        debias.detrend(raw, span, t2)


def test_trend_is_static_and_hashable():
    a = debias.Trend("exponential", np.array([1.0, 2e-3, 0.0]))
    b = debias.Trend("exponential", (1, 0.002, 0))
    assert a == b and hash(a) == hash(b) and isinstance(a.params[0], float)
    assert debias.Trend.from_dict(a.to_dict()) == a
    assert hash(debias.Trend2D(a, b)) == hash(debias.Trend2D(b, a))
    with pytest.raises(ValueError):
        debias.Trend("spline", (1.0,))


def test_stretch_maps_relative_positions():
    t = debias.release_trend("fastv")
    s = t.stretch(576, 1151)
    np.testing.assert_allclose(s(np.arange(0, 1151, 2.0)), t(np.arange(576.0)), rtol=1e-12)
    assert abs(s.ratio(1151) - t.ratio(576)) < 1e-9


@SETTINGS
@given(size=any_size, threshold=st.sampled_from([0.5, 0.01]), k=st.integers(1, 576), seed=st.integers(0, 2**16))
def test_topk_after_suppression_keeps_no_padding_when_enough_valid(size, threshold, k, seed):
    """Positive scores with a huge sink on padding: after suppression top-k holds no padding patch whenever
    at least k patches are valid, and all valid patches otherwise."""
    mask = debias.pad_mask(np.array(size), threshold=threshold)
    rng = np.random.default_rng(seed)
    scores = np.where(mask > 0, rng.random(576) + 1e-3, 1e3 * (1 + rng.random(576)))
    kept = np.argsort(-debias.suppress_padding(scores, mask), kind="stable")[:k]
    n_valid = int(mask.sum())
    assert (mask[kept] == 0).sum() == max(0, k - n_valid)


def test_exact_mode_matches_release_inside_jit_and_vmap():
    """Ties the float32 path resolves differently (400x233 at 0.01, 94x47 unpad) are exact with exact=True."""
    sizes = np.array([[400, 233], [800, 266], [94, 47], [640, 480], [300, 1000]])
    for variant, thr in (("release", 0.01), ("release", 0.5), ("unpad", 0.5), ("sparsevlm", 0.5)):
        want = debias.make_pad_mask(sizes, variant, thr)
        f = jax.jit(lambda s, v=variant, t=thr: debias.make_pad_mask(s, v, t, exact=True))
        np.testing.assert_array_equal(np.asarray(f(jnp.asarray(sizes))), want)
        np.testing.assert_array_equal(np.asarray(jax.vmap(f)(jnp.asarray(sizes))), want)
    ref = np.stack([loop_pad_mask(400, 233, threshold=0.01)[0]])
    np.testing.assert_array_equal(debias.pad_mask(np.array([[400, 233]]), threshold=0.01), ref)
