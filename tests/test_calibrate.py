"""`jaxvlm calibrate`: fits the planted trend from score vectors, padding excluded, with a held-out split."""

from __future__ import annotations

import json

import numpy as np

from experiments import calibrate as cal
from jaxvlm import debias


def test_calibrate_cli_recovers_planted_trend(tmp_path, capsys):
    rng = np.random.default_rng(0)
    true = debias.release_trend("pdrop", "gqa")
    s, n = 96, 576
    mask = debias.pad_mask(rng.integers(200, 1200, (s, 2)))
    scale = np.exp(rng.normal(0, 0.5, (s, 1)))  # per-sample magnitude varies
    scores = scale * true(np.arange(n, dtype=float)) * np.exp(rng.normal(0, 0.2, (s, n)))
    scores = np.where(mask > 0, scores, 40.0)  # attention sink on padding
    npz = tmp_path / "scores.npz"
    np.savez(npz, scores=scores, pad_mask=mask)
    out = tmp_path / "trend.json"
    assert cal.main([str(npz), "--out", str(out), "--normalize"]) == 0
    printed = capsys.readouterr().out
    assert "72 fit, 24 held out" in printed
    report = json.loads(out.read_text())
    assert report["samples_fit"] == 72 and report["samples_holdout"] == 24
    assert report["padding_excluded"] > 0
    trend = debias.load_trend(out)
    assert trend.family == "exponential" and trend.params[2] == 0.0
    assert abs(trend.params[1] / true.params[1] - 1) < 0.05
    h = report["holdout"]
    assert h["r2"] > 0.9 and h["rank_corr_position_score"] > 0.9 and abs(h["rank_corr_after_detrend"]) < 0.3
    assert (tmp_path / "trend.png").stat().st_size > 10_000


def test_calibrate_polynomial_and_rank_correlation():
    x = np.arange(576.0)
    true = debias.release_trend("fastv")
    trend, report = cal.calibrate(np.tile(true(x), (8, 1)), family="polynomial", degree=3, holdout=0.25)
    np.testing.assert_allclose(trend(x), true(x), rtol=1e-6)
    assert report["samples_fit"] == 6 and report["holdout"]["r2"] > 0.999
    assert cal.rank_correlation(x, x**2) == 1.0 and cal.rank_correlation(x, -x) == -1.0
