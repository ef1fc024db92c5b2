"""Shared layers: the CPU blocked causal attention equals the fused kernel with the full mask."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxvlm.layers import CPU_CAUSAL_BLOCK, _blocked_causal_attention, attention, causal_mask


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2)])
def test_blocked_causal_attention_matches_fused(heads, kv_heads):
    rng = np.random.default_rng(0)
    t = 2 * CPU_CAUSAL_BLOCK + 37  # several blocks, the last one partial
    q = jnp.asarray(rng.standard_normal((2, t, heads, 16)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((2, t, kv_heads, 16)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((2, t, kv_heads, 16)), jnp.float32)
    valid = np.ones((2, t), bool)
    valid[1, :40] = False  # left padding
    valid[0, -25:] = False  # right padding
    mask = causal_mask(jnp.asarray(valid))
    blocked = _blocked_causal_attention(q, k, v, mask)
    fused = attention(q, k, v, mask, causal=False)
    # 1e-5: float32 softmax over <= 300 keys summed in a different order; a wrong block boundary is O(1).
    np.testing.assert_allclose(np.asarray(blocked)[valid], np.asarray(fused)[valid], atol=1e-5)
