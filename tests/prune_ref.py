"""Test fixtures for the pruning methods: random token layouts, naive numpy attention, engine-like contexts.

`layout(...)` builds a batch of rows [left pad | text | image span | question text | right pad] as a TokenState.
`full_attention(q, k, valid)` is the naive reference: the full (B, N, T, T) causal softmax in float64 numpy.
`make_ctx(stage, state, q, k, ...)` builds the StageContext the engine would (logits of the stage's rows only,
via jaxvlm.layers.attention_logits with the causal mask), so a test runs `stage.score` / `stage.select` exactly as
the engine does and compares with a per-row reference written from PRUNING.md on the full matrices.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxvlm.engine.state import TokenState
from jaxvlm.layers import attention_logits
from jaxvlm.prune.base import StageContext


class Layout:
    """Per-row index sets of a random batch layout (numpy), plus the TokenState."""

    def __init__(self, state, rows):
        self.state = state
        self.rows = rows  # list of dicts: vis (array of slots), question (slots), text (slots), last (int)


def layout(rng, b, t, n_vis, grid_w=None, pad_frac=0.0, d=16, n_vis_per_row=None, min_question=2):
    """Random layouts: each row has `n_vis` (or n_vis_per_row[i]) visual tokens in one span; returns Layout."""
    valid = np.zeros((b, t), bool)
    visual = np.zeros((b, t), bool)
    span = -np.ones((b, t), np.int32)
    row_ = -np.ones((b, t), np.int32)
    col_ = -np.ones((b, t), np.int32)
    pos = np.zeros((b, t), np.int32)
    pad = np.zeros((b, t), bool)
    rows = []
    gw = grid_w or max(1, int(math.isqrt(n_vis)))
    for i in range(b):
        nv = n_vis if n_vis_per_row is None else n_vis_per_row[i]
        free = t - nv
        n_real = rng.integers(nv + 2 + min_question, t + 1)
        n_text = n_real - nv
        n_pre = rng.integers(1, n_text - min_question + 1)
        left = rng.integers(0, t - n_real + 1)
        s0 = left + n_pre
        valid[i, left:left + n_real] = True
        visual[i, s0:s0 + nv] = True
        span[i, s0:s0 + nv] = np.arange(nv)
        row_[i, s0:s0 + nv] = np.arange(nv) // gw
        col_[i, s0:s0 + nv] = np.arange(nv) % gw
        pos[i, left:left + n_real] = np.arange(n_real)
        if pad_frac:
            pad[i, s0:s0 + nv] = rng.random(nv) < pad_frac
        vis = np.arange(s0, s0 + nv)
        question = np.arange(s0 + nv, left + n_real)
        text = np.setdiff1d(np.arange(left, left + n_real), vis)
        rows.append(dict(vis=vis, question=question, text=text, last=left + n_real - 1, pad=pad[i], left=left))
        del free
    x = rng.standard_normal((b, t, d)).astype(np.float32)
    src = np.where(valid, np.arange(t)[None], -1).astype(np.int32)
    media = np.where(visual, 0, -1).astype(np.int32)
    state = TokenState(
        x=jnp.asarray(x), positions=jnp.asarray(pos[None]), valid=jnp.asarray(valid), visual=jnp.asarray(visual),
        src=jnp.asarray(src), media=jnp.asarray(media), frame=jnp.asarray(np.where(visual, 0, -1).astype(np.int32)),
        row=jnp.asarray(row_), col=jnp.asarray(col_), span_index=jnp.asarray(span),
    )
    lay = Layout(state, rows)
    lay.pad = pad
    return lay


def random_qk(rng, b, n, t, h, scale=1.0):
    q = (rng.standard_normal((b, n, t, h)) * scale).astype(np.float32)
    k = (rng.standard_normal((b, n, t, h)) * scale).astype(np.float32)
    return q, k


def full_attention(q, k, valid):
    """(B, N, T, T) float64 causal softmax over valid keys (rows of invalid queries are garbage, unused)."""
    q = q.astype(np.float64)
    k = k.astype(np.float64)
    t = q.shape[2]
    logits = np.einsum("bnqh,bnkh->bnqk", q, k) / math.sqrt(q.shape[-1])
    mask = np.tril(np.ones((t, t), bool))[None, None] & valid[:, None, None, :]
    logits = np.where(mask, logits, -np.inf)
    with np.errstate(invalid="ignore", divide="ignore"):
        logits = logits - logits.max(-1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(-1, keepdims=True)


def make_ctx(stage, state, q, k, pad=None, embeds=None, keys=None):
    """The StageContext the engine builds: logits of the stage's query rows only (causal, valid-masked)."""
    rows, weights = stage.query_rows(state)
    qb = jnp.asarray(q).transpose(0, 2, 1, 3)  # (B, T, N, H)
    kb = jnp.asarray(k).transpose(0, 2, 1, 3)
    qr = jnp.take_along_axis(qb, rows[:, :, None, None], axis=1)  # (B, R, N, H)
    t = state.valid.shape[1]
    mask = state.valid[:, None, :] & (jnp.arange(t)[None, None, :] <= rows[:, :, None])
    logits = attention_logits(qr, kb, mask)
    return StageContext(state=state, logits=logits, row_slots=rows, row_weight=weights, keys=keys,
                        pad=jnp.asarray(pad if pad is not None else np.zeros(state.valid.shape, bool)),
                        embeds=None if embeds is None else jnp.asarray(embeds))


def run_stage(stage, ctx):
    """score then select, compiled once per (stage, shapes) as in the engine."""
    return _jitted(stage)(ctx)


_JIT = {}


def _jitted(stage):
    if stage not in _JIT:
        _JIT[stage] = jax.jit(lambda ctx: stage.select(ctx, stage.score(ctx)))
    return _JIT[stage]


def topk_desc(scores, k):
    """Indices of the k largest (ties: lower index first), as lax.top_k."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    return order[:k]


def slots_set(slots_row):
    return sorted(int(s) for s in np.asarray(slots_row) if s >= 0)
