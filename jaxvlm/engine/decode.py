"""Decode: the whole token loop in one `lax.while_loop` over fixed-size per-segment caches.

The new token of step s is written at slot T_i + s of every segment's cache (T_i = the segment's prompt slots);
its rotary position is the same in all segments: the row's last prompt position + 1 + s (for M-RoPE all three
axes, which is transformers' `cache length + rope_deltas`). Layers before a pruning stage therefore attend to
every prompt token, later ones to the survivors only, exactly like in-place FastV.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

from jaxvlm.config import TextConfig
from jaxvlm.engine.prefill import Plan, SegmentCache
from jaxvlm.layers import MASK_VALUE
from jaxvlm.models import decoder


@struct.dataclass
class Sampling:
    """How the next token is drawn. `greedy` and `top_p < 1` are static branches; the values are traced."""

    temperature: jax.Array
    top_p: jax.Array
    greedy: bool = struct.field(pytree_node=False, default=True)
    use_top_p: bool = struct.field(pytree_node=False, default=False)


def sample(logits_bv: jax.Array, key: jax.Array, sampling: Sampling) -> jax.Array:
    """Next token (B,) int32: argmax, or temperature (+ nucleus / top-p) sampling with `key`."""
    if sampling.greedy:
        return jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
    logits = logits_bv.astype(jnp.float32) / sampling.temperature
    if sampling.use_top_p:
        desc = -jnp.sort(-logits, axis=-1)
        probs = jax.nn.softmax(desc, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        n_keep = jnp.maximum(jnp.sum(mass_before < sampling.top_p, axis=-1, keepdims=True), 1)
        cutoff = jnp.take_along_axis(desc, n_keep - 1, axis=-1)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def decode_attention(q_b1nh, k_bksh, v_bksh, mask_bs):
    """Attention of one new query per row over a heads-major cache: (B, 1, N, H) -> (B, 1, N, H)."""
    b, _, n, h = q_b1nh.shape
    kh = k_bksh.shape[1]
    q = q_b1nh.reshape(b, kh, n // kh, h)
    logits = jnp.einsum("BKGH,BKSH->BKGS", q, k_bksh) * (1.0 / math.sqrt(h))
    logits = jnp.where(mask_bs[:, None, None, :], logits.astype(jnp.float32), MASK_VALUE)
    probs = jax.nn.softmax(logits, axis=-1).astype(v_bksh.dtype)
    return jnp.einsum("BKGS,BKSH->BKGH", probs, v_bksh).reshape(b, 1, n, h)


def decode_segment(layers: dict, cache: SegmentCache, x_b1d, cos, sin, write_at, cfg: TextConfig):
    """One token through a segment's layers, updating its cache in place (scan carry). Returns (x, cache)."""
    b = x_b1d.shape[0]
    valid = jax.lax.dynamic_update_slice(cache.valid, jnp.ones((b, 1), bool), (0, write_at))

    def step(carry, lw):
        x, k_all, v_all, idx = carry
        q, k, v = decoder.project_qkv(lw, x, cos, sin, cfg)  # k, v (B, 1, K, H)
        k_all = jax.lax.dynamic_update_slice(k_all, jnp.swapaxes(k, 1, 2)[None].astype(k_all.dtype),
                                             (idx, 0, 0, write_at, 0))
        v_all = jax.lax.dynamic_update_slice(v_all, jnp.swapaxes(v, 1, 2)[None].astype(v_all.dtype),
                                             (idx, 0, 0, write_at, 0))
        k_l = jax.lax.dynamic_index_in_dim(k_all, idx, keepdims=False)
        v_l = jax.lax.dynamic_index_in_dim(v_all, idx, keepdims=False)
        attn = decode_attention(q, k_l, v_l, valid)
        x = x + jnp.einsum("BTNH,NHD->BTD", attn, lw["wo"])
        x = x + decoder.mlp(lw, x, cfg)
        return (x, k_all, v_all, idx + 1), None

    if isinstance(layers, (list, tuple)):  # per-layer weights (api.per_layer_weights): unrolled
        carry = (x_b1d, cache.k, cache.v, 0)
        for lw in layers:
            carry, _ = step(carry, lw)
        x, k, v, _ = carry
    else:
        (x, k, v, _), _ = jax.lax.scan(step, (x_b1d, cache.k, cache.v, jnp.int32(0)), layers)
    return x, SegmentCache(k=k, v=v, valid=valid)


def decode(text_w: dict, cfg: TextConfig, plan: Plan, caches, first_logits_bv, start_pos_b, num_pos_axes: int,
           key, sampling: Sampling, eos, pad_id, max_new: int, output_logits: bool = False, layer_list=None):
    """Tokens (B, max_new) int32: the first from `first_logits_bv`, then max_new - 1 cached steps; per-row EOS,
    `pad_id` after it. The loop stops early once every row is done. `eos` (E,) int32 and `pad_id` are traced
    (no recompiles per id); use -1 for "no EOS".

    With `output_logits` also returns the logits each token was drawn from, (B, max_new, V) float32 (zeros
    after the loop stopped); otherwise None.
    """
    b = first_logits_bv.shape[0]
    eos_arr = jnp.asarray(eos, jnp.int32).reshape(-1)
    first = sample(first_logits_bv, jax.random.fold_in(key, 0), sampling)
    out = jnp.full((b, max_new), pad_id, jnp.int32).at[:, 0].set(first)
    v = first_logits_bv.shape[-1]
    all_logits = (jnp.zeros((b, max_new, v), jnp.float32).at[:, 0].set(first_logits_bv) if output_logits
                  else jnp.zeros((), jnp.float32))
    done = jnp.isin(first, eos_arr)
    if max_new == 1:  # nothing to decode: no loop (and no per-layer weight slices)
        return out, (all_logits if output_logits else None)
    # Per-layer weight buffers (CPU, see api.per_layer_weights): unrolled layers, no per-step weight copies.
    # Otherwise the stacked weights are scanned (GPU/TPU, or models too big for a second copy on CPU).
    if layer_list is not None:
        seg_layers = [list(layer_list[a:z]) for a, z in plan.bounds]
    else:
        seg_layers = [decoder.slice_layers(text_w["layers"], a, z) for a, z in plan.bounds]

    def cond(carry):
        step, done = carry[0], carry[2]
        return (step < max_new - 1) & ~jnp.all(done)

    def body(carry):
        step, token, done, out, caches, all_logits = carry
        x = jnp.take(text_w["embed"], token, axis=0)[:, None, :]
        pos = jnp.broadcast_to((start_pos_b + step)[None, :, None], (num_pos_axes, b, 1))
        cos, sin = decoder.rotary(pos, cfg)
        new_caches = []
        for seg_w, length, cache in zip(seg_layers, plan.lengths, caches):
            if cache is None:
                new_caches.append(None)
                continue
            x, cache = decode_segment(seg_w, cache, x, cos, sin, length + step, cfg)
            new_caches.append(cache)
        logits = decoder.final_logits(text_w, x, cfg)[:, 0]
        nxt = sample(logits, jax.random.fold_in(key, step + 1), sampling)
        nxt = jnp.where(done, pad_id, nxt)
        out = jax.lax.dynamic_update_slice(out, nxt[:, None], (0, step + 1))
        if output_logits:
            all_logits = jax.lax.dynamic_update_slice(all_logits, logits[:, None], (0, step + 1, 0))
        return step + 1, nxt, done | jnp.isin(nxt, eos_arr), out, tuple(new_caches), all_logits

    carry = (jnp.int32(0), first, done, out, tuple(caches), all_logits)
    _, _, _, out, _, all_logits = jax.lax.while_loop(cond, body, carry)
    return out, (all_logits if output_logits else None)
