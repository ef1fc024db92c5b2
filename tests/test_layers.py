"""Every attention path (jaxvlm.attention) equals the dense reference: causal prefill with left / right padding,
pruned slots (holes in `valid`), one query row per row, segments (Qwen windows), GQA, splash in interpret mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvlm import attention as at


def _qkv(rng, b, t, n, kh, h, s=None, dtype=jnp.float32):
    s = t if s is None else s
    q = jnp.asarray(rng.standard_normal((b, t, n, h)), dtype)
    k = jnp.asarray(rng.standard_normal((b, s, kh, h)), dtype)
    v = jnp.asarray(rng.standard_normal((b, s, kh, h)), dtype)
    return q, k, v


def _valid(rng, b, t):
    """Row 0 right padding, row 1 left padding, row 2 (if any) pruned holes in the middle."""
    valid = np.ones((b, t), bool)
    valid[0, t - t // 7:] = False
    valid[1 % b, : t // 5] = False
    if b > 2:
        valid[2, rng.choice(t - 1, t // 3, replace=False)] = False
    return valid


def _numpy_reference(q, k, v, dense):
    """float64 softmax attention with a dense (B, T, S) mask, rows with a visible key only."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    g = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
    logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
    logits = np.where(dense[:, None], logits, -np.inf)
    logits -= np.max(np.where(dense[:, None], logits, -1e300), axis=-1, keepdims=True)
    p = np.where(dense[:, None], np.exp(logits), 0.0)
    p /= np.maximum(p.sum(-1, keepdims=True), 1e-300)
    return np.einsum("bnts,bsnh->btnh", p, v)


def _check(out, q, k, v, mask, atol=2e-5):
    dense = np.asarray(mask.dense_mask(q.shape[1]))
    rows = dense.any(-1)  # query rows that see a key; in self-attention only the real query slots are defined
    if q.shape[1] == k.shape[1]:
        rows &= np.asarray(mask.kv_valid)
    ref = _numpy_reference(q, k, v, dense)
    np.testing.assert_allclose(np.asarray(out, np.float64)[rows], ref[rows], atol=atol)


@pytest.mark.parametrize("impl", ["xla", "blocked", "chunked"])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2)])
def test_causal_paths_match_reference(impl, heads, kv_heads):
    rng = np.random.default_rng(0)
    t = 2 * at.CPU_CAUSAL_BLOCK + 37  # several blocks, the last partial
    q, k, v = _qkv(rng, 3, t, heads, kv_heads, 16)
    mask = at.causal_mask(jnp.asarray(_valid(rng, 3, t)))
    fn = {"xla": at.reference_attention, "blocked": at.blocked_attention,
          "chunked": lambda *a: at.chunked_attention(*a, q_block=96, kv_block=80)}[impl]
    _check(jax.jit(fn)(q, k, v, mask), q, k, v, mask)


def test_chunked_at_1k_tokens_default_blocks():
    rng = np.random.default_rng(1)
    q, k, v = _qkv(rng, 2, 1024 + 64, 4, 2, 32)
    mask = at.causal_mask(jnp.asarray(_valid(rng, 2, 1024 + 64)))
    with at.attention_impl("chunked"):
        out = jax.jit(at.attention)(q, k, v, mask)
    _check(out, q, k, v, mask)


@pytest.mark.slow
def test_chunked_at_4k_tokens():
    rng = np.random.default_rng(2)
    t = 4096
    q, k, v = _qkv(rng, 3, t, 4, 1, 64)
    mask = at.causal_mask(jnp.asarray(_valid(rng, 3, t)))
    out = jax.jit(at.chunked_attention)(q, k, v, mask)
    _check(out, q, k, v, mask)


def test_one_query_row_per_row():
    """generation's last layer: the query at slot rows[b] sees keys <= rows[b] (any path)."""
    rng = np.random.default_rng(3)
    t = 300
    q, k, v = _qkv(rng, 3, 1, 4, 2, 16, s=t)
    valid = _valid(rng, 3, t)
    rows = jnp.asarray([t - t // 7 - 1, t - 1, 250], jnp.int32)
    mask = at.causal_mask(jnp.asarray(valid)).at_rows(rows)
    for impl in ("xla", "chunked"):
        with at.attention_impl(impl):
            _check(jax.jit(at.attention)(q, k, v, mask), q, k, v, mask)


def test_segments_match_reference():
    """Block-diagonal masks from segment ids (Qwen's windows / frames) with padding."""
    rng = np.random.default_rng(4)
    t = 400
    q, k, v = _qkv(rng, 2, t, 4, 4, 16)
    seg = jnp.asarray(np.sort(rng.integers(0, 5, (2, t)), axis=1), jnp.int32)
    mask = at.full_mask(jnp.asarray(_valid(rng, 2, t)), seg)
    for impl in ("xla", "chunked"):
        with at.attention_impl(impl):
            _check(jax.jit(at.attention)(q, k, v, mask), q, k, v, mask)


def test_dense_mask_and_bf16():
    """A legacy (B, T, S) boolean mask works on the chunked path; bf16 inputs stay within bf16 error."""
    rng = np.random.default_rng(5)
    t = 260
    q, k, v = _qkv(rng, 2, t, 4, 2, 16, dtype=jnp.bfloat16)
    dense = np.tril(np.ones((t, t), bool))[None] & _valid(rng, 2, t)[:, None, :]
    out = jax.jit(lambda *a: at.chunked_attention(*a, q_block=64, kv_block=64))(q, k, v, at.as_mask(dense, True))
    _check(out, q, k, v, at.as_mask(jnp.asarray(dense)), atol=3e-2)


def test_choice_by_platform():
    q, k, _ = _qkv(np.random.default_rng(6), 1, 704, 4, 4, 128, dtype=jnp.bfloat16)
    mask = at.causal_mask(jnp.ones((1, 704), bool))
    assert at.choose(q, k, mask) == "blocked"  # CPU
    for platform, impl in (("tpu", "splash"), ("gpu", "cudnn")):
        with at.attention_platform(platform):
            assert at.choose(q, k, mask) == impl
    with at.attention_platform("gpu"):  # float32: no cuDNN flash -> chunked for long prompts
        assert at.choose(q.astype(jnp.float32)[:, :1], k, mask.at_rows(jnp.zeros(1, jnp.int32))) == "xla"
        big = jnp.zeros((1, 4096, 4, 128), jnp.float32)
        assert at.choose(big, big, at.causal_mask(jnp.ones((1, 4096), bool))) == "chunked"


@pytest.mark.parametrize("causal", [True, False])
def test_splash_interpret_matches_reference(causal):
    """The Pallas splash kernel (interpret mode on CPU): padding + causal + segments as segment ids, GQA,
    a length that is not a multiple of its 128-slot blocks."""
    rng = np.random.default_rng(7)
    t = 200
    q, k, v = _qkv(rng, 2, t, 4, 2, 128)
    valid = jnp.asarray(_valid(rng, 2, t))
    if causal:
        mask = at.causal_mask(valid)
    else:
        mask = at.full_mask(valid, jnp.asarray(np.repeat(np.arange(4), t // 4)[None].repeat(2, 0), jnp.int32))
    with at.attention_impl("splash_interpret"):
        out = jax.jit(at.attention)(q, k, v, mask)
    _check(out, q, k, v, mask, atol=1e-4)


def test_mlp_over_token_chunks(monkeypatch):
    """decoder.mlp over token chunks (long prompts) equals the one-shot MLP, a partial last chunk included."""
    from jaxvlm.models import decoder

    rng = np.random.default_rng(8)
    d, f = 16, 24
    lw = {"mlp_norm": jnp.asarray(rng.standard_normal(d), jnp.float32),
          **{k: jnp.asarray(rng.standard_normal(s) / 4, jnp.float32)
             for k, s in (("w_gate", (d, f)), ("w_up", (d, f)), ("w_down", (f, d)))}}
    x = jnp.asarray(rng.standard_normal((3, 37, d)), jnp.float32)
    cfg = type("Cfg", (), {"rms_norm_eps": 1e-6})()
    whole = decoder.mlp(lw, x, cfg)
    monkeypatch.setattr(decoder, "MLP_CHUNK_ELEMENTS", 10 * f)  # 12 chunks of 10 tokens for 111 tokens
    np.testing.assert_allclose(np.asarray(decoder.mlp(lw, x, cfg)), np.asarray(whole), rtol=1e-5, atol=1e-5)
