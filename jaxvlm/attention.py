"""Softmax attention behind one function, `attention`, with the kernel chosen per backend.

    out = attention(q (B,T,N,H), k (B,S,K,H), v (B,S,K,H), mask)          # (B, T, N, H)

`mask` is a `TokenMask` built from per-token vectors (what the engine has: valid slots, slot-causal order,
segment ids), never a (B, T, S) array; a boolean (B, T, S) array is still accepted (it can only take the
reference or chunked path). Paths:

- "splash": Pallas splash attention (TPU); causal and padding as segment ids, Qwen windows as segments.
- "cudnn": cuDNN flash attention (GPU) through `jax.nn.dot_product_attention(implementation="cudnn")` with
  `is_causal` and per-row key lengths; used when the valid keys of every row are a prefix (right padding, or
  pruned rows packed to the front), checked at run time with `lax.cond` against the chunked path.
- "chunked": online softmax in plain JAX: one scan over the (query block, key block) pairs below the causal
  diagonal with a running max / sum (static trip count). Memory O(B N q_block kv_block).
- "blocked": CPU, short causal prompts: static query blocks against their whole key prefix (fastest on CPU at
  ~700 tokens; the chunked path with one key block per query block).
- "xla": the reference, `jax.nn.dot_product_attention` with the dense mask: (B, N, T, S) logits; small shapes.

`attention_impl("chunked")` / `attention_platform("tpu")` force a path or the backend the choice is made for
(at trace time; e.g. to compile for TPU on a CPU host). Outputs are defined at query rows that see a key;
in self-attention (T == S) only at real (valid) query slots: padding rows differ between paths.
"""

from __future__ import annotations

import contextlib
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

# Large finite negative used for masked logits (keeps fully-masked rows finite, unlike -inf).
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)

# CPU: causal prompts up to this many slots take the "blocked" path with this query block (best of 64..256 at
# T=704, 2 cores); longer ones, and every non-CPU fallback, the chunked path with these blocks.
CPU_CAUSAL_BLOCK = 176
CPU_BLOCKED_MAX = 2048
Q_BLOCK = 256
KV_BLOCK = 256
# Below this many (T * S) logits per head the reference path is used (CLIP's 577^2, one decode row).
SMALL_LOGITS = 1 << 20

_FORCED = {"impl": None, "platform": None}


@contextlib.contextmanager
def attention_impl(impl: str | None):
    """Force one path ("xla", "chunked", "blocked", "cudnn", "splash", "splash_interpret") while tracing."""
    if impl not in (None, "xla", "chunked", "blocked", "cudnn", "splash", "splash_interpret"):
        raise ValueError(f"unknown attention implementation {impl!r}")
    old, _FORCED["impl"] = _FORCED["impl"], impl
    try:
        yield
    finally:
        _FORCED["impl"] = old


@contextlib.contextmanager
def attention_platform(platform: str | None):
    """Choose paths as for `platform` ("cpu", "gpu", "tpu") instead of jax.default_backend() while tracing."""
    old, _FORCED["platform"] = _FORCED["platform"], platform
    try:
        yield
    finally:
        _FORCED["platform"] = old


@struct.dataclass
class TokenMask:
    """Which keys each query sees, from per-token vectors. Key slot j is visible from query slot i iff
    kv_valid[b, j], and j <= the query's slot when causal, and q_segments[b, i] == kv_segments[b, j] when
    segments are given, and dense[b, i, j] when a dense mask is given.

    kv_valid (B, S) bool; q_slots (B, T) int32: the query's slot for causal masking (None with `aligned`:
    query i is slot i, so blocks above the diagonal are skipped; None without it: not causal);
    q_segments (B, T) / kv_segments (B, S) int32 or None; dense (B, T, S) bool or None.
    """

    kv_valid: jax.Array
    q_slots: jax.Array | None = None
    q_segments: jax.Array | None = None
    kv_segments: jax.Array | None = None
    dense: jax.Array | None = None
    aligned: bool = struct.field(pytree_node=False, default=False)

    @property
    def causal(self) -> bool:
        return self.aligned or self.q_slots is not None

    def visible(self, q0, bq: int, k0, bk: int) -> jax.Array:
        """(B, bq, bk) bool for queries [q0, q0+bq) and keys [k0, k0+bk) (starts may be traced; slots past
        the ends are invisible)."""
        kv_valid = _window(self.kv_valid, k0, bk, 1, False)
        vis = jnp.broadcast_to(kv_valid[:, None, :], (kv_valid.shape[0], bq, bk))
        kslot = k0 + jnp.arange(bk, dtype=jnp.int32)
        if self.aligned:
            qslot = q0 + jnp.arange(bq, dtype=jnp.int32)
            vis = vis & (kslot[None, None, :] <= qslot[None, :, None])
        elif self.q_slots is not None:
            qs = _window(self.q_slots, q0, bq, 1, -1)
            vis = vis & (kslot[None, None, :] <= qs[:, :, None])
        if self.q_segments is not None:
            qs = _window(self.q_segments, q0, bq, 1, -1)
            ks = _window(self.kv_segments, k0, bk, 1, -2)
            vis = vis & (qs[:, :, None] == ks[:, None, :])
        if self.dense is not None:
            d = _window(_window(self.dense, q0, bq, 1, False), k0, bk, 2, False)
            vis = vis & d
        return vis

    def dense_mask(self, t: int) -> jax.Array:
        """The full (B, T, S) boolean mask (reference path, tests)."""
        return self.visible(0, t, 0, self.kv_valid.shape[1])

    def at_rows(self, rows_b: jax.Array) -> TokenMask:
        """The mask of one query per row, the one at slot rows_b (B,) of an aligned / slot-causal mask."""
        rows = rows_b.reshape(-1, 1).astype(jnp.int32)
        take = lambda a: None if a is None else jnp.take_along_axis(a, rows, axis=1)  # noqa: E731
        q_slots = rows if self.aligned else take(self.q_slots)
        dense = None if self.dense is None else jnp.take_along_axis(self.dense, rows[:, :, None], axis=1)
        return TokenMask(kv_valid=self.kv_valid, q_slots=q_slots, q_segments=take(self.q_segments),
                         kv_segments=self.kv_segments, dense=dense)


def _window(a, start, size: int, axis: int, fill):
    """a[..., start:start+size, ...] along `axis` with `fill` past the end (start may be traced)."""
    n = a.shape[axis]
    if isinstance(start, int) and start + size <= n:
        return jax.lax.slice_in_dim(a, start, start + size, axis=axis)
    pad = [(0, 0)] * a.ndim
    pad[axis] = (0, size)
    return jax.lax.dynamic_slice_in_dim(jnp.pad(a, pad, constant_values=fill), start, size, axis=axis)


def causal_mask(valid_bt: jax.Array) -> TokenMask:
    """Prefill over the queries' own slots: key j visible from query i iff j <= i and j is a real token."""
    return TokenMask(kv_valid=valid_bt.astype(bool), aligned=True)


def full_mask(valid_bs: jax.Array, segments_bs: jax.Array | None = None) -> TokenMask:
    """Non-causal attention among real tokens (and within equal segment ids when given)."""
    return TokenMask(kv_valid=valid_bs.astype(bool), q_segments=segments_bs, kv_segments=segments_bs)


def as_mask(mask, causal: bool = False) -> TokenMask:
    """A TokenMask from a TokenMask or a boolean (B, T, S) array (`causal` then promises j <= i)."""
    if isinstance(mask, TokenMask):
        return mask
    mask = jnp.asarray(mask, bool)
    return TokenMask(kv_valid=jnp.any(mask, axis=1), dense=mask, aligned=causal)


# ---------------------------------------------------------------------------------------------- paths


def reference_attention(q, k, v, mask: TokenMask) -> jax.Array:
    """`jax.nn.dot_product_attention` with the dense mask (materialises (B, N, T, S) logits)."""
    return jax.nn.dot_product_attention(q, k, v, mask=mask.dense_mask(q.shape[1])[:, None])


def _heads_major(q, k, v):
    b, t, n, h = q.shape
    kh = k.shape[2]
    q = q.reshape(b, t, kh, n // kh, h).transpose(0, 2, 3, 1, 4)
    return q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # (B,K,G,T,H), (B,K,S,H), (B,K,S,H)


def _block_scores(q_bkgth, k_bksh, vis_bts):
    """Scaled float32 logits (B, K, G, T, S) of one block, MASK_VALUE where invisible."""
    logits = jnp.einsum("BKGTH,BKSH->BKGTS", q_bkgth, k_bksh, preferred_element_type=jnp.float32)
    return jnp.where(vis_bts[:, None, None], logits * (1.0 / math.sqrt(q_bkgth.shape[-1])), MASK_VALUE)


def _online_update(carry, q_bkgth, k_bksh, v_bksh, vis_bts):
    """One key block of the online softmax: carry (running max m, sum l (B,K,G,T,1), output acc (B,K,G,T,H))."""
    m, l, acc = carry
    logits = _block_scores(q_bkgth, k_bksh, vis_bts)
    m_new = jnp.maximum(m, jnp.max(logits, axis=-1, keepdims=True))
    p = jnp.exp(logits - m_new)
    corr = jnp.exp(m - m_new)
    pv = jnp.einsum("BKGTS,BKSH->BKGTH", p.astype(v_bksh.dtype), v_bksh, preferred_element_type=jnp.float32)
    return m_new, l * corr + jnp.sum(p, axis=-1, keepdims=True), acc * corr + pv


def _to_btnh(out_bkgth, dtype):
    b, kh, g, t, h = out_bkgth.shape
    return out_bkgth.transpose(0, 3, 1, 2, 4).reshape(b, t, kh * g, h).astype(dtype)


def blocked_attention(q, k, v, mask: TokenMask, q_block: int = CPU_CAUSAL_BLOCK) -> jax.Array:
    """Static query blocks, each against its whole key prefix (aligned masks) or all keys: one softmax per
    block, normalised after the value product. Measured at T=704, 8 heads, 2 cores: 4.8 ms vs 10.0 ms for the
    reference with the full mask."""
    t, s = q.shape[1], k.shape[1]
    qh, kh, vh = _heads_major(q, k, v)
    blocks = []
    for start in range(0, t, q_block):
        stop = min(start + q_block, t)
        kend = min(stop, s) if mask.aligned else s
        logits = _block_scores(qh[:, :, :, start:stop], kh[:, :, :kend], mask.visible(start, stop - start, 0, kend))
        weights = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
        out = jnp.einsum("BKGTS,BKSH->BKGTH", weights.astype(vh.dtype), vh[:, :, :kend],
                         preferred_element_type=jnp.float32)
        blocks.append(out / jnp.sum(weights, axis=-1, keepdims=True))
    return _to_btnh(jnp.concatenate(blocks, axis=3), q.dtype)


def block_pairs(t: int, s: int, bq: int, bk: int, aligned: bool) -> np.ndarray:
    """(P, 2) int32 (query block, key block) pairs to visit in row order: every key block, or for aligned
    (causal) masks only those starting at or below the last query slot of the query block."""
    nq, nk = -(-t // bq), -(-s // bk)
    return np.asarray([(i, j) for i in range(nq) for j in range(nk) if not aligned or j * bk < (i + 1) * bq],
                      np.int32).reshape(-1, 2)


def _even_block(n: int, most: int) -> int:
    """The smallest multiple of 8 that splits n slots into as few blocks of at most `most` (little padding)."""
    blocks = -(-n // most)
    return min(most, -(-(-(-n // blocks)) // 8) * 8)


def chunked_attention(q, k, v, mask: TokenMask, q_block: int = Q_BLOCK, kv_block: int = KV_BLOCK) -> jax.Array:
    """Online-softmax attention: one `lax.scan` over the (query block, key block) pairs of `block_pairs` (the
    causal upper triangle is never visited; a static trip count), carrying the running max, sum and output of
    the current query block, which is written to the output when its row of pairs ends. Never holds more than
    (B, N, q_block, kv_block) logits."""
    b, t, n, h = q.shape
    s = k.shape[1]
    bq, bk = _even_block(t, q_block), _even_block(s, kv_block)
    pairs = block_pairs(t, s, bq, bk, mask.aligned)
    nq, nk = -(-t // bq), -(-s // bk)
    qh, kh, vh = _heads_major(q, k, v)
    qh = jnp.pad(qh, [(0, 0)] * 3 + [(0, nq * bq - t), (0, 0)])
    kh = jnp.pad(kh, [(0, 0), (0, 0), (0, nk * bk - s), (0, 0)])
    vh = jnp.pad(vh, [(0, 0), (0, 0), (0, nk * bk - s), (0, 0)])
    shape = (b, kh.shape[1], n // kh.shape[1], bq)
    fresh = (jnp.full(shape + (1,), MASK_VALUE, jnp.float32), jnp.zeros(shape + (1,), jnp.float32),
             jnp.zeros(shape + (h,), jnp.float32))
    first = np.concatenate([[True], pairs[1:, 0] != pairs[:-1, 0]])
    last = np.concatenate([pairs[1:, 0] != pairs[:-1, 0], [True]])

    def step(carry, xs):
        state, out = carry
        (i, j), is_first, is_last = xs
        state = jax.tree.map(lambda a, z: jnp.where(is_first, z, a), state, fresh)
        q0, k0 = i * bq, j * bk
        qb = jax.lax.dynamic_slice_in_dim(qh, q0, bq, axis=3)
        kb = jax.lax.dynamic_slice_in_dim(kh, k0, bk, axis=2)
        vb = jax.lax.dynamic_slice_in_dim(vh, k0, bk, axis=2)
        state = _online_update(state, qb, kb, vb, mask.visible(q0, bq, k0, bk))
        done = (state[2] / state[1]).astype(out.dtype)
        old = jax.lax.dynamic_slice_in_dim(out, q0, bq, axis=3)
        out = jax.lax.dynamic_update_slice_in_dim(out, jnp.where(is_last, done, old), q0, axis=3)
        return (state, out), None

    out0 = jnp.zeros(shape[:3] + (nq * bq, h), q.dtype)
    (_, out), _ = jax.lax.scan(step, (fresh, out0), ((jnp.asarray(pairs[:, 0]), jnp.asarray(pairs[:, 1])),
                                                      jnp.asarray(first), jnp.asarray(last)))
    return _to_btnh(out[:, :, :, :t], q.dtype)


def _is_prefix(valid_bs):
    n = jnp.sum(valid_bs, axis=1, keepdims=True)
    return jnp.all(valid_bs == (jnp.arange(valid_bs.shape[1])[None] < n))


def cudnn_supported(q, k, mask: TokenMask) -> bool:
    """Static constraints of the cuDNN flash path (half precision, head dim, mask made of lengths only)."""
    h = q.shape[-1]
    return (q.dtype in (jnp.bfloat16, jnp.float16) and h % 8 == 0 and h <= 128 and mask.dense is None
            and mask.q_segments is None and (mask.aligned or mask.q_slots is None)
            and (not mask.aligned or q.shape[1] == k.shape[1]))


def cudnn_attention(q, k, v, mask: TokenMask) -> jax.Array:
    """cuDNN flash attention with per-row key lengths when every row's valid keys are a prefix, else the
    chunked path (one `lax.cond`, both compiled)."""
    lengths = jnp.sum(mask.kv_valid, axis=1).astype(jnp.int32)

    def flash(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, is_causal=mask.aligned, key_value_seq_lengths=lengths,
                                            implementation="cudnn")

    return jax.lax.cond(_is_prefix(mask.kv_valid), flash, lambda q, k, v: chunked_attention(q, k, v, mask), q, k, v)


SPLASH_LANES = 128


def splash_supported(q, k, mask: TokenMask) -> bool:
    """Static constraints of the splash path: self-attention (T == S), no dense mask, no per-row query slots."""
    return q.shape[1] == k.shape[1] and mask.dense is None and mask.q_slots is None and q.shape[-1] % 128 == 0


@functools.lru_cache(maxsize=64)
def _splash_kernel(heads: int, length: int, causal: bool, block: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    one = sa.CausalMask((length, length)) if causal else sa.FullMask((length, length))
    sizes = sa.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                          block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    # Built eagerly even when first asked for inside a trace: the kernel holds its mask tables as arrays, and a
    # cached kernel built in one trace would hand that trace's tracers to the next program.
    with jax.ensure_compile_time_eval():
        return sa.make_splash_mha(sa.MultiHeadMask([one] * heads), head_shards=1, q_seq_shards=1,
                                  block_sizes=sizes, interpret=interpret)


def splash_attention(q, k, v, mask: TokenMask, interpret: bool = False) -> jax.Array:
    """Pallas splash attention (TPU; `interpret=True` runs the kernel on any backend): padding and segments as
    segment ids (invalid slots in segment 0, which no real token shares), causal as the kernel's mask; the
    sequence is padded to a multiple of 128 with invalid slots."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    b, t, n, h = q.shape
    tp = -(-t // SPLASH_LANES) * SPLASH_LANES
    block = next(x for x in (512, 256, 128) if tp % x == 0)
    seg = mask.kv_valid.astype(jnp.int32)
    if mask.kv_segments is not None:
        seg = jnp.where(mask.kv_valid, mask.kv_segments.astype(jnp.int32) + 1, 0)
    seg = jnp.pad(seg, ((0, 0), (0, tp - t)))

    def heads_major(x):
        x = jnp.pad(x, ((0, 0), (0, tp - t), (0, 0), (0, 0)))
        return x.transpose(0, 2, 1, 3)  # (B, heads, Tp, H)

    kernel = _splash_kernel(n, tp, mask.aligned, block, interpret)
    qs = heads_major(q * jnp.asarray(1.0 / math.sqrt(h), q.dtype))
    out = jax.vmap(lambda q1, k1, v1, s1: kernel(q1, k1, v1, segment_ids=sa.SegmentIds(q=s1, kv=s1)))(
        qs, heads_major(k), heads_major(v), seg)
    return out.transpose(0, 2, 1, 3)[:, :t].astype(q.dtype)


# ------------------------------------------------------------------------------------------- dispatch


def choose(q, k, mask: TokenMask) -> str:
    """The path `attention` takes for these shapes on the current (or forced) platform."""
    if _FORCED["impl"] is not None:
        return _FORCED["impl"]
    platform = _FORCED["platform"] or jax.default_backend()
    t, s = q.shape[1], k.shape[1]
    if platform == "tpu" and splash_supported(q, k, mask):
        return "splash"
    if platform in ("gpu", "cuda") and cudnn_supported(q, k, mask):
        return "cudnn"
    if platform == "cpu" and mask.aligned and CPU_CAUSAL_BLOCK < t <= CPU_BLOCKED_MAX:
        return "blocked"
    if t * s <= SMALL_LOGITS:
        return "xla"
    return "chunked"


def attention(q_btnh: jax.Array, k_bskh: jax.Array, v_bskh: jax.Array, mask, causal: bool = False) -> jax.Array:
    """Softmax attention. q (B, T, N, H); k, v (B, S, K, H) with N a multiple of K (GQA); `mask` a TokenMask
    (or a boolean (B, T, S) array, with `causal=True` promising that query slot i sees no key slot > i).
    Returns (B, T, N, H) in q's dtype. The path is chosen by `choose` (module docstring)."""
    mask = as_mask(mask, causal)
    impl = choose(q_btnh, k_bskh, mask)
    if impl == "splash" or impl == "splash_interpret":
        if not splash_supported(q_btnh, k_bskh, mask):
            return chunked_attention(q_btnh, k_bskh, v_bskh, mask)
        return splash_attention(q_btnh, k_bskh, v_bskh, mask, interpret=impl == "splash_interpret")
    if impl == "cudnn":
        if not cudnn_supported(q_btnh, k_bskh, mask):
            return chunked_attention(q_btnh, k_bskh, v_bskh, mask)
        return cudnn_attention(q_btnh, k_bskh, v_bskh, mask)
    if impl == "blocked":
        return blocked_attention(q_btnh, k_bskh, v_bskh, mask)
    if impl == "chunked":
        return chunked_attention(q_btnh, k_bskh, v_bskh, mask)
    return reference_attention(q_btnh, k_bskh, v_bskh, mask)
