"""Model inputs: images of every PIL mode (jaxvlm.images) on real photographs, the host-side input checks
(jaxvlm.input_checks), and the budget rules at plan time (FastV lowers K; padding masks are never empty).

End-to-end refusals and ok cases through generate / forward / Processor live in the bad-input catalogue
(tests/bad_inputs/inputs.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from skimage import data

from jaxvlm import debias, prune
from jaxvlm.engine.prefill import make_plan
from jaxvlm.errors import UserError
from jaxvlm.images import open_image, to_rgb
from jaxvlm.input_checks import check_finite, check_token_ids, int_array
from jaxvlm.prune.debiased import stage_pad_mask
from prune_ref import layout, make_ctx, random_qk, run_stage

PHOTO = data.astronaut()[::2, ::2]  # (256, 256, 3) uint8, a real photograph
GREY = np.asarray(Image.fromarray(PHOTO).convert("L"))
ALPHA = np.tile(np.linspace(0, 255, PHOTO.shape[1]).round().astype(np.uint8), (PHOTO.shape[0], 1))


def mean_abs(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean())


def on_white(rgb, alpha) -> np.ndarray:
    a = alpha[..., None] / 255.0
    return np.round(a * rgb + (1 - a) * 255.0)


def grey3(g) -> np.ndarray:
    return np.repeat(np.asarray(g)[..., None], 3, axis=2)


def png_bytes(image) -> io.BytesIO:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    buf.seek(0)
    return buf


# ------------------------------------------------------------------------------------------- images


# mode -> (image in that mode, expected RGB, mean |diff| tolerance in 8-bit levels)
def _mode_cases():
    rgb = Image.fromarray(PHOTO)
    rgba = Image.fromarray(np.dstack([PHOTO, ALPHA]))
    la = Image.fromarray(np.dstack([GREY, ALPHA]))
    palette = rgb.convert("P")
    keyed = palette.copy()
    keyed.info["transparency"] = int(np.asarray(palette)[0, 0])  # palette entry of the top-left pixel
    keyed_alpha = np.where(np.asarray(palette) == keyed.info["transparency"], 0, 255).astype(np.uint8)
    one = rgb.convert("1")
    pa = rgba.convert("PA")
    return {
        "RGB": (rgb, PHOTO, 0.0),
        "RGBX": (rgb.convert("RGBX"), PHOTO, 0.0),
        "L": (rgb.convert("L"), grey3(GREY), 0.0),
        "1": (one, grey3(np.asarray(one, np.uint8) * 255), 0.0),
        "P": (palette, PHOTO, 16.0),  # PIL's dithered web palette
        "P+transparency": (keyed, on_white(np.asarray(palette.convert("RGB")), keyed_alpha), 0.0),
        "CMYK": (rgb.convert("CMYK"), PHOTO, 0.0),
        "YCbCr": (rgb.convert("YCbCr"), PHOTO, 1.5),  # 8-bit YCbCr round trip
        "LAB": (rgb.convert("LAB"), PHOTO, 1.0),
        "HSV": (rgb.convert("HSV"), PHOTO, 1.0),
        "RGBA": (rgba, on_white(PHOTO, ALPHA), 0.0),
        "RGBa": (rgba.convert("RGBa"), on_white(PHOTO, ALPHA), 0.5),  # premultiplied: 8-bit rounding
        "LA": (la, grey3(on_white(GREY[..., None], ALPHA)[..., 0]), 0.0),
        "La": (la.convert("La"), grey3(on_white(GREY[..., None], ALPHA)[..., 0]), 0.5),
        "PA": (pa, on_white(np.asarray(pa.convert("RGB")), np.asarray(pa)[..., 1]), 0.0),
        "I;16 (16-bit PNG)": (Image.open(png_bytes(Image.fromarray(GREY.astype(np.uint16) * 257))), grey3(GREY), 0.0),
        "I;16B": (Image.fromarray(GREY.astype(">u2") * 257), grey3(GREY), 0.0),
        "I": (Image.fromarray(GREY.astype(np.int32) * 257), grey3(GREY), 0.0),
        "I (8-bit values)": (rgb.convert("L").convert("I"), grey3(GREY), 0.0),
        "F [0, 1]": (Image.fromarray(GREY.astype(np.float32) / 255), grey3(GREY), 0.0),
        "F [0, 255]": (rgb.convert("L").convert("F"), grey3(GREY), 0.0),
    }


MODE_CASES = _mode_cases()


@pytest.mark.parametrize("mode", sorted(MODE_CASES))
def test_every_pil_mode_becomes_its_rgb_picture(mode):
    image, expected, tol = MODE_CASES[mode]
    got = to_rgb(image)
    assert got.shape == PHOTO.shape and got.dtype == np.uint8
    if tol == 0:
        np.testing.assert_array_equal(got, expected)
    else:
        assert mean_abs(got, expected) <= tol, mode


def test_16_bit_png_is_not_white():
    sixteen = Image.open(png_bytes(Image.fromarray(GREY.astype(np.uint16) * 257)))
    assert sixteen.mode == "I;16"
    clipped = np.asarray(sixteen.convert("RGB"))  # PIL clips at 255: every pixel but the black ones is white
    np.testing.assert_array_equal(clipped, grey3(np.where(GREY > 0, 255, 0)))
    np.testing.assert_array_equal(to_rgb(sixteen), grey3(GREY))


@pytest.mark.parametrize("layout_", ["HW", "HW1", "HWC", "CHW", "HW4", "HW2", "uint16", "float01", "float255",
                                     "bool", "int64"])
def test_array_layouts_and_dtypes(layout_):
    arrays = {
        "HW": (GREY, grey3(GREY)), "HW1": (GREY[..., None], grey3(GREY)), "HWC": (PHOTO, PHOTO),
        "CHW": (PHOTO.transpose(2, 0, 1), PHOTO), "HW4": (np.dstack([PHOTO, ALPHA]), on_white(PHOTO, ALPHA)),
        "HW2": (np.dstack([GREY, ALPHA]), grey3(on_white(GREY[..., None], ALPHA)[..., 0])),
        "uint16": (PHOTO.astype(np.uint16) * 257, PHOTO), "float01": (PHOTO / 255.0, PHOTO),
        "float255": (PHOTO.astype(np.float32), PHOTO), "bool": (GREY > 127, grey3((GREY > 127) * 255)),
        "int64": (PHOTO.astype(np.int64), PHOTO),
    }
    array, expected = arrays[layout_]
    got = to_rgb(array)
    assert got.dtype == np.uint8 and got.shape == PHOTO.shape
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("bad,pattern", [
    (np.zeros((0, 10, 3), np.uint8), r"empty \(10x0 pixels"),
    (Image.new("RGB", (5, 0)), r"empty \(5x0"),
    (np.full((4, 4, 3), np.nan, np.float32), r"sample \(0, 0, 0\) is nan"),
    (np.full((4, 4, 3), 300.0), r"float samples in \[300, 300\]"),
    (np.full((4, 4), -1, np.int32), r"integer samples in \[-1, -1\]"),
    (np.zeros((6, 6, 5), np.uint8), r"shape \(6, 6, 5\)"),
    (np.zeros((2, 3, 4, 5), np.uint8), r"shape \(2, 3, 4, 5\)"),
    (np.array([["a"]]), "dtype <U1"),
])
def test_bad_images_are_named(bad, pattern):
    with pytest.raises(UserError, match=pattern):
        to_rgb(bad, "images[0]")


@settings(max_examples=30, deadline=None)
@given(h=st.integers(1, 9), w=st.integers(1, 9), seed=st.integers(0, 2**16), wide=st.booleans())
def test_property_integer_samples(h, w, seed, wide):
    """8-bit RGB is the identity; 16-bit data (some value > 255) is v / 257 rounded, through PIL too."""
    rng = np.random.default_rng(seed)
    if not wide:
        rgb = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
        np.testing.assert_array_equal(to_rgb(rgb), rgb)
        np.testing.assert_array_equal(to_rgb(Image.fromarray(rgb)), rgb)
        return
    g = rng.integers(0, 65536, (h, w)).astype(np.uint16)
    g.flat[0] = 65535
    want = grey3(np.round(g / 257.0).astype(np.uint8))
    np.testing.assert_array_equal(to_rgb(g), want)
    np.testing.assert_array_equal(to_rgb(Image.fromarray(g)), want)


def test_open_image(tmp_path):
    path = tmp_path / "depth16.png"
    Image.fromarray(GREY.astype(np.uint16) * 257).save(path)
    np.testing.assert_array_equal(open_image(path), grey3(GREY))
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(UserError, match=r"--image .*missing\.png: no such file"):
        open_image(tmp_path / "missing.png", "--image")
    with pytest.raises(UserError, match=r"notes\.txt: not a readable image"):
        open_image(tmp_path / "notes.txt")
    with pytest.raises(UserError, match="is a directory"):
        open_image(tmp_path)


# ------------------------------------------------------------------------------------------- checks


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 4), t=st.integers(1, 30), vocab=st.integers(2, 100), seed=st.integers(0, 2**16),
       bad=st.sampled_from((None, -1, "vocab", 10**6)))
def test_property_token_ids(b, t, vocab, seed, bad):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (b, t))
    if bad is None:
        check_token_ids(ids, vocab)
        return
    value = vocab if bad == "vocab" else bad
    i, j = int(rng.integers(b)), int(rng.integers(t))
    ids[i, j] = value
    first = np.argwhere((ids < 0) | (ids >= vocab))[0]
    with pytest.raises(UserError, match=rf"input_ids\[{first[0]}, {first[1]}\] = {value} is outside the "
                                        rf"vocabulary \(size {vocab}\)"):
        check_token_ids(ids, vocab)


def test_finite_and_integer_checks():
    x = np.zeros((2, 3, 4, 4), np.float32)
    check_finite(x, "pixel_values")
    x[1, 2, 0, 3] = -np.inf
    with pytest.raises(UserError, match=r"pixel_values\[1, 2, 0, 3\] = -inf: pixel values must be finite \(1 of 96"):
        check_finite(x, "pixel_values")
    with pytest.raises(UserError, match="input_ids must hold integers; got dtype float64"):
        int_array("input_ids", np.zeros((1, 3)))
    with pytest.raises(UserError, match=r"must be \(batch, tokens\); got shape \(3,\)"):
        int_array("input_ids", np.zeros(3, np.int64), ndim=2)


# ------------------------------------------------------------------------------------- budget rules


class _Cfg:  # the two fields make_plan reads
    num_layers = 4


@settings(max_examples=30, deadline=None)
@given(counts=st.lists(st.integers(1, 700), min_size=1, max_size=4), keep=st.integers(1, 700),
       debiased=st.booleans())
def test_property_lower_fits_k_to_the_largest_row(counts, keep, debiased):
    """FastV ("lower"): the static keep is min(K, largest visual count); "fill" methods are not lowered."""
    sched = prune.debiased_fastv(keep=keep) if debiased else prune.fastv(keep=keep)
    plan = make_plan(_Cfg, sched, 768, counts, 0)
    assert plan.stages[0].keep == min(keep, max(counts))
    if keep > max(counts):
        with pytest.raises(ValueError, match="exceeds"):
            make_plan(_Cfg, prune.himap(text_keep=keep, image_keep=1)[:1], 768, counts, 0)


def test_fit_with_release_shift_and_fill_stages():
    """release_shift keeps image token 0 on top of the inner keep: the window's K is lowered to n - 1; a "fill"
    method wrapped by debiasing is not lowered; a later FastV stage is lowered to the previous stage's keep."""
    (st,) = make_plan(_Cfg, prune.debiased_fastv(keep=128, release_shift=True), 64, [16], 0).stages
    assert (st.keep, st.inner.keep) == (16, 15)
    with pytest.raises(ValueError, match="exceeds the 16 visual tokens"):
        make_plan(_Cfg, prune.debiased_tokencarve(keep=64), 64, [16], 0)
    plan = make_plan(_Cfg, prune.fastv(layer=1, keep=8) + prune.fastv(layer=3, keep=32), 64, [16], 0)
    assert [s.keep for s in plan.stages] == [8, 8]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), keep=st.sampled_from((5, 25)), pad_frac=st.sampled_from((0.0, 0.4, 1.0)),
       debiased=st.booleans())
def test_property_lower_keeps_min_k_count_and_no_avoidable_padding(seed, keep, pad_frac, debiased):
    """Rows of different visual counts through the plan's fitted stage: every row keeps min(K, its count)
    (debiased: min(K, its non-padding count), padding only when a row has nothing else)."""
    rng = np.random.default_rng(seed)
    nv = [20, int(rng.integers(2, 21))]  # the fitted keep is min(K, 20): few distinct programs
    lay = layout(rng, 2, 40, 20, pad_frac=pad_frac, n_vis_per_row=nv)
    q, k = random_qk(rng, 2, 2, 40, 4, scale=1.5)
    sched = prune.debiased_fastv(keep=keep) if debiased else prune.fastv(keep=keep)
    (stage,) = make_plan(_Cfg, sched, 64, nv, 0).stages
    pad = lay.pad if debiased else None
    sel = np.asarray(run_stage(stage, make_ctx(stage, lay.state, q, k, pad=pad)).slots)
    for i, r in enumerate(lay.rows):
        got = [int(s) for s in sel[i] if s >= 0]
        assert set(got) <= set(r["vis"].tolist())
        real = int((~lay.pad[i][r["vis"]]).sum()) if debiased else nv[i]
        assert len(got) == min(keep, real or nv[i])
        if debiased and real:
            assert not any(lay.pad[i][s] for s in got)


@settings(max_examples=40, deadline=None)
@given(w=st.integers(1, 5000), h=st.integers(1, 5000), threshold=st.sampled_from((0.01, 0.5, 0.9)),
       variant=st.sampled_from(("release", "unpad", "sparsevlm")))
def test_property_pad_mask_never_empty(w, h, threshold, variant):
    """stage_pad_mask = the release's mask wherever that keeps a patch; otherwise the patches the image
    touches (never empty), with a warning naming the image."""
    (stage,) = prune.debiased(prune.fastv(keep=8), trend=debias.release_trend("fastv"), pad_threshold=threshold,
                              pad_variant=variant)
    sizes = np.array([[w, h]])
    release = np.asarray(debias.make_pad_mask(sizes, variant=variant, threshold=threshold, exact=True))
    if release.max() > 0:
        np.testing.assert_array_equal(stage_pad_mask(stage, sizes, 24, 336), release)
        return
    with pytest.warns(UserWarning, match=rf"image 0 \({w}x{h} pixels"):
        mask = stage_pad_mask(stage, sizes, 24, 336)
    touched = np.asarray(debias.pad_mask(sizes, threshold=float(np.nextafter(1.0, 0.0))))
    assert mask.max() == 1 and (mask == touched).all()


def test_thin_images_measured():
    """Which images the masks leave empty at LLaVA-1.5's 336 px / 24 x 24 grid (width 2000, height h).

    Release mask: the image is a strip of 336 h / 2000 px centred on the boundary of patch rows 11 and 12, each
    row gets half of it, so the mask is empty while that half covers less than 14 (1 - threshold) px."""
    h = np.arange(1, 400)
    sizes = np.stack([np.full_like(h, 2000), h], -1)
    for threshold in (0.5, 0.01):
        m = np.asarray(debias.make_pad_mask(sizes, threshold=threshold, exact=True))
        strip = 336 * h / 2000
        np.testing.assert_array_equal(m.max(-1) == 0, strip / 2 < 14 * (1 - threshold))
    for variant in ("unpad", "sparsevlm"):  # empty at 2000x3, not at 2000x100 (5 patch rows)
        m = np.asarray(debias.make_pad_mask(np.array([[2000, 3], [2000, 100]]), variant=variant, exact=True))
        assert m[0].max() == 0 and m[1].sum() >= 24
    touched = np.asarray(debias.pad_mask(np.array([[2000, 3]]), threshold=float(np.nextafter(1.0, 0.0))))
    assert touched.sum() == 48  # a 3-pixel strip across the middle: parts of patch rows 11 and 12
