"""Shared pieces of the pruning methods: candidate masks, head-mean probabilities, static top-k, row pickers.

Every function here is pure, batched over the leading B axis, static-shaped and jit/vmap-safe. Slot arrays are
(B, T) over the current token slots of a `TokenState`; "candidates" are the valid visual slots a stage may keep.

Tie-breaking everywhere is by slot index (lower slot first), the order `jax.lax.top_k` and a stable descending
argsort in numpy both give, so reference implementations in tests agree exactly.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxvlm.engine.state import TokenState
from jaxvlm.layers import MASK_VALUE

NEG = -jnp.inf

# Release image-token count of LLaVA-1.5 (24 x 24 CLIP patches); default for ratio-defined budgets.
LLAVA_VISUAL_TOKENS = 576


# ------------------------------------------------------------------------------------------- checks


def check_count(name: str, value, low: int = 1, high: int | None = None) -> int:
    """A static token count: a Python int in [low, high]; clear error otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a Python int (a static token count), got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name}={value} is out of range: expected {bound}")
    return value


def check_ratio(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) <= 1.0:
        raise ValueError(f"{name}={value!r} must be a fraction in (0, 1]")
    return float(value)


def check_layer(name: str, value, low: int = 0) -> int:
    return check_count(name, value, low=low)


def check_budget_mode(mode: str) -> str:
    if mode not in ("lower", "fill"):
        raise ValueError(f"budget={mode!r}: expected 'lower' (keep only non-padding tokens, fewer than K if "
                         "needed; FastV's rule) or 'fill' (always K, padding tokens fill up with score 0)")
    return mode


def fit_keep(stage, n_max: int):
    """`stage` with keep = min(keep, n_max) (a dataclasses.replace copy; the stage itself when it fits, is
    unresolved, or n_max < 1: nothing to keep, the engine's own error stands)."""
    if stage.keep is None or n_max < 1 or stage.keep <= n_max:
        return stage
    return dataclasses.replace(stage, keep=int(n_max))


def check_capacity(keep: int, t: int, name: str = "keep") -> None:
    """Trace-time check that a static keep count fits the token axis."""
    if keep > t:
        raise ValueError(f"{name}={keep} exceeds the {t} token slots of this stage's input")


# ---------------------------------------------------------------------------------------- candidates


def candidates(state: TokenState) -> jax.Array:
    """(B, T) bool: valid visual slots (what a stage may keep)."""
    return state.valid & state.visual


def text_mask(state: TokenState) -> jax.Array:
    return state.valid & ~state.visual


def after_visual_text(state: TokenState) -> jax.Array:
    """(B, T) bool: valid text slots after the row's last visual slot (the question / instruction)."""
    t = state.valid.shape[1]
    slot = jnp.arange(t)[None, :]
    last_vis = jnp.max(jnp.where(candidates(state), slot, -1), axis=1, keepdims=True)
    return text_mask(state) & (slot > last_vis)


# ------------------------------------------------------------------------------------------ scoring


def probs(logits: jax.Array) -> jax.Array:
    """Softmax over keys of masked scoring logits (B, N, R, T) -> float32 probabilities.

    Masked keys carry MASK_VALUE (finite), so they get exactly 0 probability and fully-masked rows stay finite.
    """
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


def head_mean_probs(logits: jax.Array) -> jax.Array:
    """(B, N, R, T) logits -> (B, R, T) attention probabilities averaged over heads."""
    return jnp.mean(probs(logits), axis=1)


def weighted_rows(p_brt: jax.Array, row_weight: jax.Array, reduce: str = "mean") -> jax.Array:
    """Combine scoring rows (B, R, T) with weights (B, R) (0 = unused row): 'sum' or weighted 'mean'."""
    w = row_weight.astype(jnp.float32)
    total = jnp.einsum("BRT,BR->BT", p_brt, w)
    if reduce == "sum":
        return total
    if reduce == "mean":
        return total / jnp.maximum(jnp.sum(w, axis=1, keepdims=True), 1e-30)
    raise ValueError(f"reduce={reduce!r}")


def on_candidates(scores: jax.Array, state: TokenState) -> jax.Array:
    """Zero the scores of non-candidate slots (tidy output; select masks them anyway)."""
    return jnp.where(candidates(state), scores.astype(jnp.float32), 0.0)


# -------------------------------------------------------------------------------------------- top-k


def top_k_slots(scores: jax.Array, cand: jax.Array, k: int, sort: bool = True) -> jax.Array:
    """(B, K) int32 slots of the k highest-scoring candidate slots; -1 where a row has fewer candidates.

    With sort=True the kept slots are in ascending slot order (sequence order), -1 entries last.
    """
    t = scores.shape[1]
    check_capacity(k, t)
    masked = jnp.where(cand, scores.astype(jnp.float32), NEG)
    _, idx = jax.lax.top_k(masked, k)
    ok = jnp.take_along_axis(cand, idx, axis=1)
    slots = jnp.where(ok, idx, -1).astype(jnp.int32)
    return sort_slots(slots) if sort else slots


def sort_slots(slots: jax.Array) -> jax.Array:
    """Ascending slot order with -1 entries moved to the end."""
    big = jnp.iinfo(jnp.int32).max
    s = jnp.sort(jnp.where(slots < 0, big, slots), axis=1)
    return jnp.where(s == big, -1, s).astype(jnp.int32)


def rank_order(scores: jax.Array, cand: jax.Array) -> jax.Array:
    """(B, T) slots sorted by descending score, candidates first (ties: lower slot first)."""
    t = scores.shape[1]
    _, idx = jax.lax.top_k(jnp.where(cand, scores.astype(jnp.float32), NEG), t)
    return idx


def gather_rows(x: jax.Array, slots: jax.Array) -> jax.Array:
    """x (B, T, ...) at slots (B, K) (-1 -> slot 0; mask the result yourself)."""
    return jnp.take_along_axis(x, jnp.maximum(slots, 0).reshape(slots.shape + (1,) * (x.ndim - 2)), axis=1)


# ------------------------------------------------------------------------------------------- rows


def last_token_rows(state: TokenState) -> tuple[jax.Array, jax.Array]:
    """The last valid (prompt) token of each row: rows (B, 1) int32, weights (B, 1) float32."""
    t = state.valid.shape[1]
    slot = jnp.arange(t)[None, :]
    last = jnp.max(jnp.where(state.valid, slot, -1), axis=1)
    rows = jnp.maximum(last, 0)[:, None].astype(jnp.int32)
    return rows, (last >= 0).astype(jnp.float32)[:, None]


def pick_rows(mask: jax.Array, r: int, prefer_last: bool = True) -> tuple[jax.Array, jax.Array]:
    """Up to r slots where `mask` holds (the last r if prefer_last): rows (B, r) int32, weights (B, r) {0, 1}.

    Rows are returned in ascending slot order; unused rows point at slot 0 with weight 0.
    """
    b, t = mask.shape
    r = min(r, t)
    slot = jnp.arange(t)[None, :]
    key = jnp.where(mask, slot if prefer_last else t - slot, -1)
    _, idx = jax.lax.top_k(key, r)
    ok = jnp.take_along_axis(mask, idx, axis=1)
    big = t + 1
    order = jnp.argsort(jnp.where(ok, idx, big), axis=1)
    idx = jnp.take_along_axis(idx, order, axis=1)
    ok = jnp.take_along_axis(ok, order, axis=1)
    return jnp.where(ok, idx, 0).astype(jnp.int32), ok.astype(jnp.float32)


def cosine(a: jax.Array, b: jax.Array) -> jax.Array:
    """(B, M, D) x (B, N, D) -> (B, M, N) cosine similarity in float32."""
    a = a.astype(jnp.float32)
    b = b.astype(jnp.float32)
    a = a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    return jnp.einsum("BMD,BND->BMN", a, b)


__all__ = [
    "LLAVA_VISUAL_TOKENS",
    "MASK_VALUE",
    "after_visual_text",
    "candidates",
    "check_budget_mode",
    "check_capacity",
    "check_count",
    "check_layer",
    "check_ratio",
    "cosine",
    "fit_keep",
    "gather_rows",
    "head_mean_probs",
    "last_token_rows",
    "on_candidates",
    "pick_rows",
    "probs",
    "rank_order",
    "sort_slots",
    "text_mask",
    "top_k_slots",
    "weighted_rows",
]


# ------------------------------------------------------------------------------------------ stage mixin


class ScoresPreviousLayer:
    """Mixin: the stage reads the attention of the layer before the one it prunes at (FastV's K-1 rule)."""

    @property
    def score_layer(self) -> int:
        return self.layer - 1


class TopKStage:
    """Mixin for frozen-dataclass stages: default `select` = top-`keep` scores among candidate slots.

    Class attributes a stage may override:
      attention_based: its score is attention (debiasing applies to it; METHOD.md section 4);
      budget_default:  "fill" (keep K, padding tokens fill up with score 0) or "lower" (FastV: keep only
                       non-padding tokens, fewer than K when not enough) - used when padding suppression is on;
      renumber:        False (survivors keep their original rotary positions) or True (contiguous
                       renumbering after the drop, PyramidDrop / SparseVLM v1.5) - read by the engine.
    """

    attention_based = True
    budget_default = "fill"
    renumber = False
    pad_threshold = None  # set by `prune.debiased`; the engine builds StageContext.pad with it

    def fit(self, n_max: int):
        """The budget rule at plan time (jaxvlm.prune.base): a "lower" stage (FastV) asked to keep more than the
        `n_max` visual tokens any row brings keeps them all (keep = n_max); "fill" stages are left as they are
        (the engine refuses a keep above n_max)."""
        return fit_keep(self, n_max) if self.budget_default == "lower" else self

    def select(self, ctx, scores):
        from jaxvlm.prune.base import Selection

        return Selection(slots=top_k_slots(scores, candidates(ctx.state), self.keep))
