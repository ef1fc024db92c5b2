"""The synthetic bias benchmark runs end to end, and debiasing recovers the planted tokens."""

from __future__ import annotations

import json

import numpy as np

from experiments import bias_benchmark as bb


def test_bias_benchmark_main(tmp_path, capsys):
    png, js = tmp_path / "bb.png", tmp_path / "bb.json"
    assert bb.main(["--scenes", "48", "--calib", "32", "--out", str(png), "--json", str(js)]) == 0
    assert png.stat().st_size > 10_000
    rows = json.loads(js.read_text())
    assert "R@64" in capsys.readouterr().out
    mean = [r for r in rows if r["trend"] == "mean"][0]
    for k in bb.KS:
        assert mean[f"both@{k}"] > mean[f"padding@{k}"] > mean[f"raw@{k}"]
        assert mean[f"both@{k}"] > mean[f"detrend@{k}"] >= mean[f"raw@{k}"] - 0.02
        assert mean[f"both+fit@{k}"] > mean[f"padding@{k}"]
    assert mean["padding@pad_kept64"] == 0.0


def test_plug_in_scorer_and_selector():
    """A method plugs in as a scorer (and optionally a selector); an oracle scorer gets recall 1."""

    def oracle(scenes, trend, rng):
        return scenes.relevant.astype(float) + 1e-3 * rng.random(scenes.relevant.shape)

    def first_k(scores, k):
        return np.tile(np.arange(k), (scores.shape[0], 1))

    rows = bb.run(trends={"exp 4x": bb.release_like_trends()["exp 4x"]}, scorers={"oracle": oracle, "first": oracle},
                  selectors={"first": first_k}, n_scenes=16, n_calib=16)
    assert rows[0]["raw@64"] == 1.0 and rows[0]["padding@192"] == 1.0
    assert rows[1]["raw@64"] < 0.5
