"""The release's 41 weight files: exact parameter recovery, the packaged trends.json, name aliases; and
Trend.fit recovering planted parameters."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxvlm import debias

FILES = sorted(debias.WEIGHTS_DIR.glob("*/*.npy"))
X = np.arange(576.0)


def test_all_41_files_are_packaged():
    assert len(FILES) == 41
    assert {p.parent.name for p in FILES} == {"FastV", "HiMAP", "PyramidDrop", "SparseVLMs", "TokenCarve"}
    assert (debias.WEIGHTS_DIR / "README.md").exists()


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_from_weights_reproduces_file(path):
    w = np.load(path)
    assert w.dtype == np.float64 and w.shape == (576,) and w[0] == 1.0
    trend = debias.Trend.from_weights(path)
    assert trend.family == ("polynomial" if path.parent.name == "FastV" else "exponential")
    np.testing.assert_allclose(trend.weights(X), w, rtol=0, atol=1e-12)
    assert debias.Trend.from_weights(w) == trend  # array input too
    assert 1.8 < trend.ratio(576) < 14.5


def test_trends_json_reproduces_files_and_is_current():
    table = json.loads(debias.TRENDS_JSON.read_text())
    n = 0
    for folder, entries in table["trends"].items():
        for key, entry in entries.items():
            w = np.load(debias.WEIGHTS_DIR / entry["file"])
            np.testing.assert_allclose(debias.Trend.from_dict(entry).weights(X), w, rtol=0, atol=1e-12)
            n += 1
    assert n == 41
    # Refitting must give the stored parameters; a different CPU (BLAS kernel, libm) may move the last
    # ulp or so, so compare at 1e-12 relative (the weights above already agree to 1e-12 absolute).
    assert_trend_tables_close(debias.build_trends_json(), table, rtol=1e-12)


def assert_trend_tables_close(got, want, rtol):
    """Same nested keys and strings; floats equal to `rtol` relative (atol 1e-300 for exact zeros)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want)
        for k in want:
            assert_trend_tables_close(got[k], want[k], rtol)
    elif isinstance(want, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(want)
        for g, w in zip(got, want):
            assert_trend_tables_close(g, w, rtol)
    elif isinstance(want, float):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-300)
    else:
        assert got == want


def test_fastv_cubic_matches_method_md():
    t = debias.release_trend("fastv", "gqa")
    assert t.family == "polynomial" and len(t.params) == 4 and t.params[0] == 1.0
    np.testing.assert_allclose(t.params[1:], (3.0151976033e-3, -1.4597908344e-5, 2.5691135190e-8), rtol=1e-9)
    assert abs(t.ratio(576) - 2.79) < 0.01


def test_exponential_rates_match_method_md():
    # METHOD.md quotes the ranges rounded to 2 significant digits
    ranges = {"tokencarve": (0.0011, 0.0018), "himap": (0.0014, 0.0023), "pdrop": (0.0025, 0.0042), "sparsevlm": (0.0023, 0.0047)}
    for method, (lo, hi) in ranges.items():
        for bench in debias.release_benchmarks(method):
            t = debias.release_trend(method, bench)
            assert t.params[0] == 1.0 and t.params[2] == 0.0 and lo <= t.params[1] <= hi


def test_name_aliases_and_quirks():
    for method in ("himap", "pdrop", "sparsevlm", "tokencarve", "PyramidDrop", "SparseVLMs"):
        assert debias.release_trend(method, "mmvet") == debias.release_trend(method, "mm-vet")
        assert debias.release_trend(method, "MME") == debias.release_trend(method, "mme")
        assert debias.release_trend(method, "MMBench_CN") == debias.release_trend(method, "mmbench_cn")
    assert debias.release_weights_path("pdrop", "mmvet").name == "mm-vet.npy"
    assert debias.release_weights_path("sparsevlm", "MME").name == "mme.npy"
    # the release's TokenCarve vqav2 file is a byte copy of its mmvet file
    assert debias.release_trend("tokencarve", "vqav2") == debias.release_trend("tokencarve", "mmvet")
    assert debias.release_trend("fastv") == debias.release_trend("fastv", "anything")
    with pytest.raises(ValueError):
        debias.release_trend("himap")
    with pytest.raises(ValueError):
        debias.release_trend("visionzip", "gqa")


def test_from_weights_falls_back_to_table():
    w = 1.0 / (1.0 + np.sin(np.arange(50.0)) ** 2)
    t = debias.Trend.from_weights(w)
    assert t.family == "table"
    np.testing.assert_allclose(t.weights(np.arange(50.0)), w, atol=1e-12)


# ---- fitting -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params,loss",
    [((1e-3, 3e-3, 2e-4), "lsq"), ((2.0, 4.6e-3, 0.0), "log"), ((0.5, 1.1e-3, 0.3), "lsq")],
)
def test_fit_recovers_planted_exponential(params, loss):
    true = debias.Trend("exponential", params)
    fit = debias.Trend.fit(X, true(X), family="exponential", loss=loss)
    np.testing.assert_allclose(fit(X), true(X), rtol=1e-9)
    np.testing.assert_allclose(fit.params[:2], params[:2], rtol=1e-7)
    assert abs(fit.params[2] - params[2]) < 1e-9 * max(1.0, params[0])


def test_fit_recovers_release_trends_from_noisy_samples_ignoring_padding():
    """Samples = trend x lognormal noise, with a padding sink on masked positions that must be ignored."""
    rng = np.random.default_rng(0)
    true = debias.release_trend("sparsevlm", "pope")
    mask = debias.pad_mask(rng.integers(200, 1000, (256, 2)))  # (256, 576)
    noise = np.exp(rng.normal(0, 0.3, (256, 576)) - 0.3**2 / 2)  # mean-one multiplicative noise
    scores = true(X) * noise * 1e-3
    scores = np.where(mask > 0, scores, 0.5)  # sink: huge scores on padding
    fit = debias.Trend.fit(X, scores, weight=mask, offset=False)
    assert abs(fit.params[1] / true.params[1] - 1) < 0.03
    assert abs(fit.ratio(576) / true.ratio(576) - 1) < 0.05
    unmasked = debias.Trend.fit(X, scores, offset=False)
    assert abs(unmasked.params[1] / true.params[1] - 1) > 0.1  # the sink would bias the fit


def test_fit_recovers_planted_polynomial_and_table():
    true = debias.release_trend("fastv")
    for loss in ("lsq", "log"):
        fit = debias.Trend.fit(X, true(X) * 7.0, family="polynomial", degree=3, loss=loss)
        np.testing.assert_allclose(np.asarray(fit.params) / 7.0, true.params, rtol=1e-6)
    table = debias.Trend.fit(np.tile(X, 3), np.tile(true(X), 3), family="table")
    np.testing.assert_allclose(table(X), true(X), rtol=1e-12)


def test_fit_is_deterministic_and_validates():
    rng = np.random.default_rng(3)
    y = np.exp(2e-3 * X) * (1 + 0.1 * rng.standard_normal((8, 576)))
    assert debias.Trend.fit(X, y) == debias.Trend.fit(X, y)
    with pytest.raises(ValueError):
        debias.Trend.fit(X, y, weight=np.zeros_like(y))
    with pytest.raises(ValueError):
        debias.Trend.fit(X, y, loss="l1")


def test_trend2d_fit_recovers_separable_trend():
    rows, cols = np.divmod(np.arange(576), 24)
    true = debias.Trend2D(debias.Trend("exponential", (1.0, 0.08, 0.0)), debias.Trend("exponential", (1.0, 0.02, 0.0)))
    scores = np.tile(2.5 * true(rows, cols), (4, 1))
    fit = debias.Trend2D.fit(rows, cols, scores, loss="log", offset=False)
    np.testing.assert_allclose(fit(rows, cols), 2.5 * true(rows, cols), rtol=1e-6)
    flat = debias.detrend(scores[0], (rows, cols), fit)
    np.testing.assert_allclose(flat, flat[0], rtol=1e-6)
    assert debias.load_trend({"row": fit.row.to_dict(), "col": fit.col.to_dict()}) == fit
