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
"""

from __future__ import annotations

from typing import Protocol

import jax
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
    keep: int  # static number of visual tokens kept per row

    def query_rows(self, state: TokenState) -> tuple[jax.Array, jax.Array]:
        """(rows (B, R) int32 slots, weights (B, R) float32); R static."""

    def score(self, ctx: StageContext) -> jax.Array:
        """(B, T) float32 importance of each slot (only valid visual slots are considered)."""

    def select(self, ctx: StageContext, scores: jax.Array) -> Selection:
        """Which visual slots to keep (default: top-`keep` scores among valid visual slots)."""
