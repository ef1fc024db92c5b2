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


def decode_attention(q_b1nh, k_bksh, v_bksh, valid_bs, tk_bkmh, tv_bkmh, step):
    """Attention of one new query per row over the prompt cache (slots in `valid_bs`) and the decode tail
    (slots 0..step, the new token's own key/value already written at `step`).

    q (B, 1, N, H); prompt k, v (B, K, S, H) and tail k, v (B, K, M, H), heads-major. Returns (B, 1, N, H).
    Logits, softmax and the value sums are float32 whatever the cache dtype (as in prefill's attention).
    """
    b, _, n, h = q_b1nh.shape
    kh, m = k_bksh.shape[1], tk_bkmh.shape[2]
    q = q_b1nh.reshape(b, kh, n // kh, h)
    scale = 1.0 / math.sqrt(h)
    f32 = dict(preferred_element_type=jnp.float32)
    lp = jnp.einsum("BKGH,BKSH->BKGS", q, k_bksh, **f32) * scale
    lt = jnp.einsum("BKGH,BKMH->BKGM", q, tk_bkmh, **f32) * scale
    lp = jnp.where(valid_bs[:, None, None, :], lp, MASK_VALUE)
    lt = jnp.where((jnp.arange(m) <= step)[None, None, None, :], lt, MASK_VALUE)
    probs = jax.nn.softmax(jnp.concatenate([lp, lt], axis=-1), axis=-1)
    pp, pt = probs[..., : lp.shape[-1]], probs[..., lp.shape[-1]:]
    out = jnp.einsum("BKGS,BKSH->BKGH", pp.astype(v_bksh.dtype), v_bksh, **f32)
    out = out + jnp.einsum("BKGM,BKMH->BKGH", pt.astype(tv_bkmh.dtype), tv_bkmh, **f32)
    return out.reshape(b, 1, n, h).astype(q_b1nh.dtype)


def _tail_update(tail, kv_b1kh, layer, step):
    """Write one token's keys or values (B, 1, K, H) at decode slot `step` of a tail: (B, K, M, H) when `layer`
    is None (one layer's tail), else layer `layer` of the stacked (L_seg, B, K, M, H) tails (in place: the
    tails are while-loop carries)."""
    new = jnp.swapaxes(kv_b1kh, 1, 2).astype(tail.dtype)
    if layer is None:
        return jax.lax.dynamic_update_slice(tail, new, (0, 0, step, 0))
    return jax.lax.dynamic_update_slice(tail, new[None], (layer, 0, 0, step, 0))


def decode_layer(lw, x_b1d, cos, sin, pk, pv, valid, tk, tv, step, cfg: TextConfig, layer=None):
    """One layer for one new token: returns (x, tail_k, tail_v) with the token's k, v written at `step`.
    `tk`, `tv`: this layer's tails (layer None) or the segment's stacked tails with this layer at `layer`."""
    q, k, v = decoder.project_qkv(lw, x_b1d, cos, sin, cfg)  # k, v (B, 1, K, H)
    tk, tv = _tail_update(tk, k, layer, step), _tail_update(tv, v, layer, step)
    read = (lambda t: t) if layer is None else (lambda t: jax.lax.dynamic_index_in_dim(t, layer, 0, False))
    attn = decode_attention(q, pk, pv, valid, read(tk), read(tv), step)
    x = x_b1d + jnp.einsum("BTNH,NHD->BTD", attn, lw["wo"])
    return x + decoder.mlp(lw, x, cfg), tk, tv


def decode_segment(layers, start: int, cache: SegmentCache, tails, x_b1d, cos, sin, step, cfg: TextConfig):
    """One token through a segment's layers. `tails` = (tail_k, tail_v) of the segment (the loop carry; the
    prompt part of `cache` is read-only). Returns (x, new tails).

    `layers`: the full stacked weights, the segment starting at layer `start` (scanned by layer index, weights
    and prompt caches read in place, the stacked tails carried and written in place), or the segment's
    per-layer list (unrolled; CPU, see api.per_layer_weights)."""
    tk_all, tv_all = tails
    if isinstance(layers, (list, tuple)):
        new_k, new_v = [], []
        x = x_b1d
        for lw, pk, pv, tk, tv in zip(layers, cache.k, cache.v, tk_all, tv_all):
            x, tk, tv = decode_layer(lw, x, cos, sin, pk, pv, cache.valid, tk, tv, step, cfg)
            new_k.append(tk)
            new_v.append(tv)
        return x, (tuple(new_k), tuple(new_v))

    def body(carry, i):
        x, tk, tv = carry
        pk, pv = (jax.lax.dynamic_index_in_dim(c, i, 0, False) for c in (cache.k, cache.v))
        x, tk, tv = decode_layer(decoder.layer_weights(layers, start + i), x, cos, sin, pk, pv, cache.valid,
                                 tk, tv, step, cfg, layer=i)
        return (x, tk, tv), None

    (x, tk_all, tv_all), _ = jax.lax.scan(body, (x_b1d, tk_all, tv_all), jnp.arange(tk_all.shape[0]))
    return x, (tk_all, tv_all)


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
    if max_new == 1:  # nothing to decode: no loop
        return out, (all_logits if output_logits else None)
    # Per-layer weight buffers (CPU, see api.per_layer_weights): unrolled layers, no per-step weight copies.
    # Otherwise the full stacked weights are scanned by layer index (GPU/TPU, or big models on CPU).
    if layer_list is not None:
        seg_layers = [list(layer_list[a:z]) for a, z in plan.bounds]
    else:
        seg_layers = [text_w["layers"]] * len(plan.bounds)

    def cond(carry):
        step, done = carry[0], carry[2]
        return (step < max_new - 1) & ~jnp.all(done)

    def body(carry):
        step, token, done, out, tails, all_logits = carry
        x = jnp.take(text_w["embed"], token, axis=0)[:, None, :]
        pos = jnp.broadcast_to((start_pos_b + step)[None, :, None], (num_pos_axes, b, 1))
        cos, sin = decoder.rotary(pos, cfg)
        new_tails = []
        for seg_w, (start, _), cache, tail in zip(seg_layers, plan.bounds, caches, tails):
            if cache is None:
                new_tails.append(None)
                continue
            x, tail = decode_segment(seg_w, start, cache, tail, x, cos, sin, step, cfg)
            new_tails.append(tail)
        logits = decoder.final_logits(text_w, x, cfg)[:, 0]
        nxt = sample(logits, jax.random.fold_in(key, step + 1), sampling)
        nxt = jnp.where(done, pad_id, nxt)
        out = jax.lax.dynamic_update_slice(out, nxt[:, None], (0, step + 1))
        if output_logits:
            all_logits = jax.lax.dynamic_update_slice(all_logits, logits[:, None], (0, step + 1, 0))
        return step + 1, nxt, done | jnp.isin(nxt, eos_arr), out, tuple(new_tails), all_logits

    tails = tuple(None if c is None else (c.tail_k, c.tail_v) for c in caches)
    carry = (jnp.int32(0), first, done, out, tails, all_logits)
    _, _, _, out, _, all_logits = jax.lax.while_loop(cond, body, carry)
    return out, (all_logits if output_logits else None)
