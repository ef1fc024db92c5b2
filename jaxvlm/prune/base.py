"""The contract between the engine and a pruning method.

A schedule is a tuple of stages; each stage is a frozen (hashable) dataclass, so the schedule is static and
part of the compiled program's identity. At a stage the engine:
  1. asks `stage.query_rows(state)` which query rows it needs (static count R);
  2. computes the attention logits of just those rows at decoder layer `stage.score_layer`
     ((B, N, R, T) float32, scaled and masked with MASK_VALUE; never a T x T matrix) and builds a StageContext;
  3. calls `stage.score(ctx)` -> (B, T) importance per slot, then `stage.select(ctx, scores)` -> Selection;
  4. keeps every valid text token plus the selected visual slots (order preserved), gathers the TokenState,
     and runs decoder layers from `stage.layer` on the shorter sequence.
Debiasing wraps `score` only (see jaxvlm.prune.debiased), so it knows nothing about the method.

Engine rules a stage can rely on (jaxvlm/engine/prefill.py):
- `score_layer` is None, or `prev_stage.layer <= score_layer <= layer`.
  * score_layer < layer (FastV: layer - 1): the scoring rows' queries come from that layer's input hidden
    states (its input norm + q projection + RoPE) and the keys are that layer's own cached keys.
  * score_layer == layer (PyramidDrop): queries AND keys are recomputed with layer `layer`'s input norm and q/k
    projections (+RoPE) on the current hidden states `ctx.state.x`.
- Logits are causal: row slot r sees key slots <= r that are valid.
- Only valid visual slots are candidates; every valid text slot and each row's last valid slot are always kept.
- `Selection.slots` may be in any order; the engine keeps slot order (the sequence stays sorted by input index).
- `keep` must not exceed the visual tokens entering the stage (the batch maximum at the first stage, the
  previous stage's `keep` after it): a host-side ValueError otherwise. Rows with fewer candidates keep
  padding slots (valid False).
- Optional method `fit(n_max: int) -> Stage` (host side, at plan time, right after `resolve`): the budget rule
  for a `keep` above `n_max`, the most visual tokens any row brings to the stage (the bound above). FastV-style
  stages (`budget_default = "lower"`) return a copy with keep = n_max, so every row keeps min(K, its visual
  count) - e.g. `prune.fastv()` / `prune.debiased_fastv()` (K = 128) on a Qwen2-VL image of 83 tokens keep
  all 83; "fill" stages return themselves and the engine's error stands. prune.debiased forwards it.
- Optional attribute `renumber: bool` (default False): after the stage, positions of the survivors are
  renumbered contiguously per row (PyramidDrop's upstream default); otherwise original positions are kept.
- Stages must be frozen dataclasses (hashable): the schedule is a static argument of the compiled program.
- Optional method `resolve(n_in: int, n_visual: int) -> Stage` (host side, at plan time, before any check):
  counts defined by ratios of the visual token count (PyramidDrop ratios, iLLaVA's r, SparseVLM's recycling
  slots, FastV's drop_ratio) may be left open at construction (`n_visual=None`, `keep` None) and are fixed
  here. `n_visual` is the batch's smallest visual count (exact, not floored to VISUAL_BUCKET: every row has at
  least that many), `n_in` the visual tokens entering this stage (n_visual at the first stage, the previous
  resolved stage's `keep` after it, capped by n_visual). It returns a copy with concrete counts (or the stage
  itself when already concrete) that must compare equal to the stage built with an explicit count, so that
  `pdrop(..., n_visual=576)` and `pdrop(...)` resolved at 576 share a compiled program. Stages without it are
  used as they are; wrappers (prune.debiased) forward it. With rows of different visual counts, ratios resolve
  against the smallest one (rows with more visual tokens keep the same static number).
The helpers at the bottom (`last_token_rows`, `attention_scores`, `top_k_visual`) implement FastV's pieces;
methods reuse them.
"""

from __future__ import annotations

from typing import Protocol

import jax
import jax.numpy as jnp
from flax import struct

from jaxvlm.engine.state import TokenState


@struct.dataclass
class StageContext:
    """What a stage may look at. Arrays are (B, T) over the current slots unless noted."""

    state: TokenState  # tokens entering decoder layer `stage.layer`; state.x are the hidden states there
    logits: jax.Array | None  # (B, N, R, T) scoring rows' attention logits at `stage.score_layer`
    row_slots: jax.Array | None  # (B, R) int32 slot of each scoring row
    row_weight: jax.Array | None  # (B, R) float32 weight of each scoring row, 0 for unused rows
    keys: jax.Array | None  # (B, T, K, H) post-RoPE keys of `stage.score_layer` (for key-norm methods)
    pad: jax.Array  # bool: visual token that is a padding patch (all False when image sizes are unknown)
    embeds: jax.Array | None = None  # (B, T0, D) input embeddings of the original sequence (SparseVLM raters)

    @property
    def vision_cls(self) -> jax.Array | None:
        """(B, T) vision-tower [CLS] attention per slot (VisionZip; None unless a stage has `needs_vision_cls`)."""
        return self.state.vision_cls

    @property
    def vision_keys(self) -> jax.Array | None:
        """(B, T, Dk) vision-tower keys per slot (VisionZip; None unless a stage has `needs_vision_cls`)."""
        return self.state.vision_keys


@struct.dataclass
class Selection:
    """The visual slots a stage keeps: `slots` (B, K) int32, -1 where a row keeps fewer than K.

    Merging methods also return `x` (B, K, D), replacement hidden states for the kept slots.
    """

    slots: jax.Array
    x: jax.Array | None = None


class Stage(Protocol):
    layer: int  # prune before this decoder layer (0-based)
    score_layer: int | None  # the layer whose attention logits `score` reads (None: no logits needed)
    keep: int  # static number of visual tokens kept per row (None until `resolve`d, for ratio-defined stages)

    def query_rows(self, state: TokenState) -> tuple[jax.Array, jax.Array]:
        """(rows (B, R) int32 slots, weights (B, R) float32); R static."""

    def score(self, ctx: StageContext) -> jax.Array:
        """(B, T) float32 importance of each slot (only valid visual slots are considered)."""

    def select(self, ctx: StageContext, scores: jax.Array) -> Selection:
        """Which visual slots to keep (default: top-`keep` scores among valid visual slots)."""

    # Optional (host side, see the module docstring):
    # def resolve(self, n_in: int, n_visual: int) -> Stage: a copy with concrete counts.
    # def fit(self, n_max: int) -> Stage: the budget rule for a keep above the visual tokens available.


# ------------------------------------------------------------------------ helpers shared by the methods


def last_token_rows(state: TokenState) -> tuple[jax.Array, jax.Array]:
    """One scoring row per batch row: the last valid slot (the last prompt token). (B, 1) int32, (B, 1) f32."""
    t = state.valid.shape[1]
    last = jnp.max(jnp.where(state.valid, jnp.arange(t, dtype=jnp.int32), 0), axis=1)
    return last[:, None], jnp.ones((state.valid.shape[0], 1), jnp.float32)


def attention_scores(ctx: StageContext) -> jax.Array:
    """(B, T) softmax attention probabilities of the scoring rows, mean over heads, weighted sum over rows."""
    probs = jax.nn.softmax(ctx.logits, axis=-1)  # (B, N, R, T)
    per_row = jnp.mean(probs, axis=1)  # (B, R, T)
    return jnp.einsum("BRS,BR->BS", per_row, ctx.row_weight)


def candidates(state: TokenState) -> jax.Array:
    """(B, T) bool: the slots a stage may drop or keep (valid visual tokens)."""
    return state.valid & state.visual


def top_k_visual(ctx: StageContext, scores: jax.Array, keep: int) -> Selection:
    """The `keep` highest-scored candidate slots per row; -1 where a row has fewer candidates."""
    cand = candidates(ctx.state)
    finite = jnp.nan_to_num(scores.astype(jnp.float32), nan=-3e38, neginf=-3e38, posinf=3e38)
    _, slots = jax.lax.top_k(jnp.where(cand, finite, -jnp.inf), keep)
    ok = jnp.arange(keep)[None, :] < jnp.sum(cand, axis=1, keepdims=True)
    return Selection(slots=jnp.where(ok, slots, -1).astype(jnp.int32))
