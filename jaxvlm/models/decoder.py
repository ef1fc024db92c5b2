"""The Llama / Qwen2 decoder-only language model, as pure functions over a weights dict.

Weights (layers stacked on a leading L axis; segments of layers run under `lax.scan` over the layer index):
    embed (V, D); norm (D,); lm_head (D, V) unless tied
    layers: attn_norm (L, D), wq (L, D, N, H), wk/wv (L, D, K, H), [bq (L, N, H), bk/bv (L, K, H)],
            wo (L, N, H, D), mlp_norm (L, D), w_gate/w_up (L, D, F), w_down (L, F, D)
Positions are (P, B, T): P=1 for plain RoPE, P=3 (t, h, w) for Qwen's M-RoPE.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxvlm.config import TextConfig
from jaxvlm.attention import as_mask
from jaxvlm.layers import apply_rope, attention, rms_norm, rope_cos_sin

LAYER_KEYS = ("attn_norm", "wq", "wk", "wv", "wo", "mlp_norm", "w_gate", "w_up", "w_down")
BIAS_KEYS = ("bq", "bk", "bv")


def weight_shapes(cfg: TextConfig) -> dict:
    """Shapes of every text weight for `cfg` (a pytree of tuples, same structure as the weights)."""
    L, D, F, V = cfg.num_layers, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    N, K, H = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    layers = {
        "attn_norm": (L, D), "wq": (L, D, N, H), "wk": (L, D, K, H), "wv": (L, D, K, H), "wo": (L, N, H, D),
        "mlp_norm": (L, D), "w_gate": (L, D, F), "w_up": (L, D, F), "w_down": (L, F, D),
    }
    if cfg.attention_bias:
        layers.update({"bq": (L, N, H), "bk": (L, K, H), "bv": (L, K, H)})
    shapes = {"embed": (V, D), "norm": (D,), "layers": layers}
    if not cfg.tie_word_embeddings:
        shapes["lm_head"] = (D, V)
    return shapes


def rotary(positions_pbt: jax.Array, cfg: TextConfig) -> tuple[jax.Array, jax.Array]:
    """cos, sin (B, T, H/2) for the decoder's rotary embedding at `positions` (P, B, T)."""
    return rope_cos_sin(positions_pbt, cfg.rope, cfg.head_dim)


def project_q(lw: dict, h_btd: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Queries (B, T, N, H) with RoPE from normed hidden states."""
    q = jnp.einsum("BTD,DNH->BTNH", h_btd, lw["wq"])
    return apply_rope(q + lw["bq"] if "bq" in lw else q, cos, sin)


def project_k(lw: dict, h_btd: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Keys (B, T, K, H) with RoPE from normed hidden states."""
    k = jnp.einsum("BTD,DKH->BTKH", h_btd, lw["wk"])
    return apply_rope(k + lw["bk"] if "bk" in lw else k, cos, sin)


def project_kv(lw: dict, h_btd: jax.Array, cos: jax.Array, sin: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Keys with RoPE and values, (B, T, K, H) each, from normed hidden states."""
    v = jnp.einsum("BTD,DKH->BTKH", h_btd, lw["wv"])
    return project_k(lw, h_btd, cos, sin), (v + lw["bv"] if "bv" in lw else v)


def project_qkv(lw: dict, x_btd: jax.Array, cos: jax.Array, sin: jax.Array, cfg: TextConfig):
    """Input norm, q/k/v projections (+bias) and RoPE of one layer: q (B,T,N,H), k, v (B,T,K,H)."""
    h = rms_norm(x_btd, lw["attn_norm"], cfg.rms_norm_eps)
    return (project_q(lw, h, cos, sin), *project_kv(lw, h, cos, sin))


# The MLP runs over token chunks when its (tokens, F) activations would exceed this many elements (peak memory
# of long prompts: Qwen2.5-VL-7B at 8 x 4096 tokens, f32, temp 12.9 -> 8.2 GB; 8 x 16k x 18944 is 9.9 GB f32
# per activation otherwise).
MLP_CHUNK_ELEMENTS = 1 << 26


def mlp(lw: dict, x_btd: jax.Array, cfg: TextConfig) -> jax.Array:
    """Post-attention norm and SiLU-gated MLP (no residual); over token chunks (`lax.map`) for big inputs."""
    h = rms_norm(x_btd, lw["mlp_norm"], cfg.rms_norm_eps)

    def core(h_d):  # (..., D) -> (..., D)
        up = jnp.einsum("...D,DF->...F", h_d, lw["w_up"])
        return jnp.einsum("...F,FD->...D", jax.nn.silu(jnp.einsum("...D,DF->...F", h_d, lw["w_gate"])) * up,
                          lw["w_down"])

    b, t, d = h.shape
    chunks = -(-(b * t * lw["w_gate"].shape[-1]) // MLP_CHUNK_ELEMENTS)
    if chunks <= 1:
        return core(h)
    size = -(-(b * t) // chunks)
    flat = jnp.pad(h.reshape(b * t, d), ((0, chunks * size - b * t), (0, 0))).reshape(chunks, size, d)
    return jax.lax.map(core, flat).reshape(chunks * size, -1)[: b * t].reshape(b, t, -1)


def layer(lw: dict, x_btd, cos, sin, mask, cfg: TextConfig):
    """One decoder layer over its own T tokens (prefill). `mask`: a TokenMask (layers.causal_mask) or a
    (B, T, T) bool array. Returns (x_out (B,T,D), (k, v) (B, T, K, H))."""
    q, k, v = project_qkv(lw, x_btd, cos, sin, cfg)
    attn = attention(q, k, v, mask, causal=True)
    x_btd = x_btd + jnp.einsum("BTNH,NHD->BTD", attn, lw["wo"])
    return x_btd + mlp(lw, x_btd, cfg), (k, v)


def layer_at_rows(lw: dict, x_btd, cos, sin, mask, rows_b, cfg: TextConfig):
    """One layer whose output is needed at one slot per row only (the last prompt token, in generation's final
    layer): keys and values for every token (the cache), queries, attention and MLP for row `rows_b` (B,) only.
    Returns (x (B, 1, D), (k, v) (B, T, K, H)). Saves ~80% of the layer's work at T=700.
    """

    def at_rows(a):  # (B, T, ...) -> (B, 1, ...)
        return jnp.take_along_axis(a, rows_b.reshape((-1, 1) + (1,) * (a.ndim - 2)), axis=1)

    h = rms_norm(x_btd, lw["attn_norm"], cfg.rms_norm_eps)
    k, v = project_kv(lw, h, cos, sin)
    q = project_q(lw, at_rows(h), at_rows(cos), at_rows(sin))
    attn = attention(q, k, v, as_mask(mask, causal=True).at_rows(rows_b))
    x = at_rows(x_btd) + jnp.einsum("BTNH,NHD->BTD", attn, lw["wo"])
    return x + mlp(lw, x, cfg), (k, v)


def slice_layers(layers: dict, start: int, stop: int) -> dict:
    """The stacked weights of layers [start, stop) (a copy: the engine indexes the full stack instead)."""
    return jax.tree.map(lambda w: w[start:stop], layers)


def layer_weights(layers: dict, index, after=None) -> dict:
    """Weights of layer `index` (int or traced scalar) read from the stacked (L, ...) weights.

    `after` (an array, e.g. the layer's input): read only once it is computed (see `after_value`). A read at a
    static index outside a loop is a slice copy on XLA:CPU, which XLA schedules at the program start and holds
    throughout otherwise (llava-1.5-7b f32: the last layer's 0.8 GB through prefill and decode)."""
    if after is not None:
        index = after_value(index, after)
    return jax.tree.map(lambda w: jax.lax.dynamic_index_in_dim(w, index, axis=0, keepdims=False), layers)


def after_value(value: int, after) -> jax.Array:
    """The int `value` >= 0 as an int32 scalar computed from one element of the array `after`, so that what
    reads it is scheduled after `after` exists. (XLA:CPU drops optimization barriers, and max(value, -isnan)
    cannot be folded: it is `value` for every input, NaN included.)"""
    flag = jnp.isnan(after[(0,) * after.ndim]).astype(jnp.int32)  # an element read, not a reshape (sharding)
    return jnp.maximum(jnp.int32(value), -flag)


def write_kv(cache, index, k_btkh, v_btkh):
    """Write one layer's keys/values (B, T, K, H) into heads-major cache buffers (L_c, B, K, T, H) at layer
    `index`, in place when the buffers are loop carries."""
    def put(c, a):
        return jax.lax.dynamic_update_index_in_dim(c, jnp.swapaxes(a, 1, 2).astype(c.dtype), index, 0)

    return put(cache[0], k_btkh), put(cache[1], v_btkh)


def run_layers(layers: dict, x_btd, cos, sin, mask, cfg: TextConfig, start: int = 0, stop: int | None = None,
               cache=None, cache_at: int = 0):
    """Layers [start, stop) of the stacked weights (leading axis L) under `lax.scan` over the layer index, each
    layer's weights read from the full stack in place (no copy of the stack).

    Without `cache`: returns (x, (k, v) stacked (stop-start, B, T, K, H)). With `cache` = (k, v) heads-major
    buffers (L_c, B, K, T_c, H): layer i's keys/values are written at index cache_at + i - start (the KV cache
    built once, in its final layout) and the updated buffers are returned instead.
    """
    stop = jax.tree.leaves(layers)[0].shape[0] if stop is None else stop
    index = jnp.arange(start, stop, dtype=jnp.int32)
    if cache is None:
        def step(x, i):
            return layer(layer_weights(layers, i), x, cos, sin, mask, cfg)

        return jax.lax.scan(step, x_btd, index)

    def step_cached(carry, i):
        x, c = carry
        x, (k, v) = layer(layer_weights(layers, i), x, cos, sin, mask, cfg)
        return (x, write_kv(c, i - start + cache_at, k, v)), None

    (x, cache), _ = jax.lax.scan(step_cached, (x_btd, cache), index)
    return x, cache


def final_logits(text_w: dict, x_btd: jax.Array, cfg: TextConfig) -> jax.Array:
    """Final norm and vocabulary projection: (B, T, V) float32."""
    h = rms_norm(x_btd, text_w["norm"], cfg.rms_norm_eps)
    head = text_w["embed"].T if cfg.tie_word_embeddings else text_w["lm_head"]
    return jnp.einsum("BTD,DV->BTV", h, head).astype(jnp.float32)
