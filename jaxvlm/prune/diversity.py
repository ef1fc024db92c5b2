"""Attention-free / outside-the-LLM methods: DART, DivPrune, VisionZip (PRUNING.md, last section).

Debiasing does not apply to their scores; padding masks still can (`prune.debiased(..., recency=False)` removes
padding patches from their candidates).

- DART (stage at layer 2): pivots = the 4 image + 4 text tokens with the largest L1 norm of layer 1's keys
  (`StageContext.keys`, all kv heads flattened); for each pivot in turn (image pivots first, by norm), add the
  `keep/8` not-yet-chosen image tokens least cosine-similar to it (on the layer-1 output hidden states
  `state.x`). Remainders of keep/8 go to the first pivots. Original positions.
- DivPrune (stage at layer 0 = on the projected visual tokens, before the LLM): greedy max-min cosine
  diversity: start from the token whose nearest other token is farthest, then repeatedly add the token whose
  minimum cosine distance (1 - cos) to the chosen set is largest. Distances are computed against the chosen
  token of each step only (no N x N matrix).
- VisionZip: CLIP layer -2 [CLS] attention picks D dominant tokens; the rest are merged into C contextual tokens
  by key cosine similarity to evenly spaced targets. The stage sets `needs_vision_cls`, so the engine asks the
  family's embed for `vision_cls` / `vision_keys` (LLaVA: jaxvlm.models.llava.vision_cls_stats, the attention
  inside the encoder layer that outputs the feature layer) and StageContext exposes them. Families without a
  [CLS] token (Qwen) get a clear error. Contextual tokens enter the LLM as the mean of the projected features of
  their group (VisionZip averages CLIP features before the projector; the projector is not linear, so this is an
  approximation). The [CLS] token itself is not an LLM token under LLaVA's "default" strategy, so D counts
  patches only.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxvlm.prune import common
from jaxvlm.prune.base import Selection, StageContext
from jaxvlm.prune.sparsevlm import scatter_rows


# ------------------------------------------------------------------------------------------------ DART


def key_l1(keys: jax.Array) -> jax.Array:
    """(B, T) L1 norm of post-RoPE keys (B, T, K, H) over all kv heads."""
    return jnp.sum(jnp.abs(keys.astype(jnp.float32)), axis=(2, 3))


def dart_select(x: jax.Array, norms: jax.Array, cand: jax.Array, text: jax.Array, keep: int,
                n_image_pivots: int = 4, n_text_pivots: int = 4) -> jax.Array:
    """(B, keep) sorted slots chosen by DART (see module docstring); -1 where a row runs out of candidates."""
    b, t = cand.shape
    piv_i = common.top_k_slots(norms, cand, n_image_pivots, sort=False)
    piv_t = common.top_k_slots(norms, text, n_text_pivots, sort=False)
    pivots = jnp.concatenate([piv_i, piv_t], axis=1)
    n_piv = pivots.shape[1]
    per = [keep // n_piv + (1 if j < keep % n_piv else 0) for j in range(n_piv)]
    xp = common.gather_rows(x, pivots)
    sim = common.cosine(xp, x)  # (B, P, T)
    chosen = jnp.zeros((b, t), bool)
    out = []
    rows = jnp.arange(b)[:, None]
    for j in range(n_piv):
        if per[j] == 0:
            continue
        avail = cand & ~chosen
        pick = common.top_k_slots(-sim[:, j], avail, per[j], sort=False)  # least similar first
        chosen = chosen.at[rows, jnp.where(pick < 0, t, pick)].set(True, mode="drop")
        out.append(pick)
    return common.sort_slots(jnp.concatenate(out, axis=1))


@dataclasses.dataclass(frozen=True)
class DART(common.ScoresPreviousLayer, common.TopKStage):
    layer: int = 2
    keep: int = 128
    n_image_pivots: int = 4
    n_text_pivots: int = 4
    attention_based = False

    def __post_init__(self):
        common.check_layer("DART layer", self.layer, low=1)
        common.check_count("DART keep", self.keep)

    def query_rows(self, state):
        return common.last_token_rows(state)  # unused by the score; the engine needs a row to run

    def score(self, ctx: StageContext) -> jax.Array:
        if ctx.keys is None:
            raise ValueError("DART needs StageContext.keys (layer-1 keys)")
        return key_l1(ctx.keys)

    def select(self, ctx: StageContext, scores: jax.Array) -> Selection:
        st = ctx.state
        return Selection(slots=dart_select(st.x, scores, common.candidates(st), common.text_mask(st), self.keep,
                                           self.n_image_pivots, self.n_text_pivots))


def dart(keep: int = 128, layer: int = 2) -> tuple[DART]:
    return (DART(layer=layer, keep=keep),)


# -------------------------------------------------------------------------------------------- DivPrune


def divprune_select(x: jax.Array, cand: jax.Array, keep: int) -> jax.Array:
    """(B, keep) sorted slots by greedy max-min cosine diversity (module docstring); -1 where fewer."""
    b, t, _ = x.shape
    common.check_capacity(keep, t)
    xn = x.astype(jnp.float32)
    xn = xn / jnp.maximum(jnp.linalg.norm(xn, axis=-1, keepdims=True), 1e-12)
    rows = jnp.arange(b)

    # first pick: the token whose nearest other candidate is farthest; one (B, T) row of distances at a time,
    # so no T x T matrix is held.
    def nearest_other(i, best):
        d = 1.0 - jnp.einsum("BD,BTD->BT", xn[:, i], xn)
        d = jnp.where(cand & (jnp.arange(t)[None] != i), d, jnp.inf)
        return best.at[:, i].set(jnp.min(d, axis=1))

    nn = jax.lax.fori_loop(0, t, nearest_other, jnp.full((b, t), -jnp.inf))
    first = jnp.argmax(jnp.where(cand, nn, -jnp.inf), axis=1)

    def step(k, carry):
        mind, chosen, slots = carry
        pick = jnp.where(k == 0, first, jnp.argmax(jnp.where(cand & ~chosen, mind, -jnp.inf), axis=1))
        ok = jnp.any(cand & ~chosen, axis=1)
        d = 1.0 - jnp.einsum("BD,BTD->BT", xn[rows, pick], xn)
        mind = jnp.where(ok[:, None], jnp.minimum(mind, d), mind)
        chosen = chosen.at[rows, pick].set(chosen[rows, pick] | ok)
        slots = slots.at[:, k].set(jnp.where(ok, pick, -1))
        return mind, chosen, slots

    init = (jnp.full((b, t), jnp.inf), jnp.zeros((b, t), bool), jnp.full((b, keep), -1, jnp.int32))
    _, _, slots = jax.lax.fori_loop(0, keep, step, init)
    return common.sort_slots(slots)


@dataclasses.dataclass(frozen=True)
class DivPrune(common.TopKStage):
    layer: int = 0
    keep: int | None = 64  # None: resolved from `ratio` at plan time
    ratio: float | None = None  # only while keep is None
    attention_based = False

    def __post_init__(self):
        common.check_layer("DivPrune layer", self.layer)
        if self.keep is None:
            common.check_ratio("DivPrune ratio", self.ratio)
        else:
            common.check_count("DivPrune keep", self.keep)
            if self.ratio is not None:
                raise ValueError("DivPrune stage: give keep or ratio, not both")

    def resolve(self, n_in: int, n_visual: int) -> "DivPrune":
        """Concrete keep = max(1, round(ratio * n_in)) of the visual tokens entering the stage."""
        if self.keep is not None:
            return self
        return DivPrune(layer=self.layer, keep=_ratio_keep(self.ratio, n_in))

    score_layer = None

    def query_rows(self, state):
        return common.last_token_rows(state)

    def score(self, ctx: StageContext) -> jax.Array:
        return jnp.zeros(ctx.state.valid.shape, jnp.float32)

    def select(self, ctx: StageContext, scores: jax.Array) -> Selection:
        return Selection(slots=divprune_select(ctx.state.x, common.candidates(ctx.state), self.keep))


def _ratio_keep(ratio: float, n: int) -> int:
    return max(1, int(round(common.check_ratio("ratio", ratio) * common.check_count("n_visual", n))))


def divprune(keep: int | None = None, ratio: float | None = 0.098, layer: int = 0,
             n_visual: int | None = None) -> tuple[DivPrune]:
    """DivPrune before the LLM (layer 0). `keep` tokens, or `ratio` of the visual count (default 0.098 -> 56 of
    576): of `n_visual` when given, else of the batch's smallest visual count, resolved by the engine at plan time."""
    if keep is None:
        if n_visual is None:
            return (DivPrune(layer=layer, keep=None, ratio=common.check_ratio("ratio", ratio)),)
        keep = _ratio_keep(ratio, n_visual)
    return (DivPrune(layer=layer, keep=keep),)


# ------------------------------------------------------------------------------------------- VisionZip


def visionzip_select(cls_attn: jax.Array, keys: jax.Array, cand: jax.Array, dominant: int, contextual: int,
                     values: jax.Array | None = None):
    """VisionZip on one visual sequence per row.

    cls_attn (B, T): [CLS] attention to each token (summed over heads); keys (B, T, D) the tokens' keys;
    cand (B, T) the visual slots. Returns (slots (B, dominant + contextual) sorted, merged (B, T, D) float32 with
    each contextual target's slot holding the mean of itself and the tokens assigned to it, dominant slots
    unchanged); what is merged is `values` (B, T, E) when given, else the keys. Contextual targets: `contextual`
    evenly spaced (by rank in slot order) among the non-dominant tokens; every other non-dominant token joins its
    most key-cosine-similar target.
    """
    b, t = cand.shape
    dom = common.top_k_slots(cls_attn, cand, dominant)
    dmask = jnp.zeros((b, t), bool).at[jnp.arange(b)[:, None], jnp.where(dom < 0, t, dom)].set(True, mode="drop")
    rest = cand & ~dmask
    n_rest = jnp.sum(rest, axis=1)
    rank = jnp.cumsum(rest, axis=1) - 1  # rank of each rest token in slot order
    step = jnp.maximum(n_rest // contextual, 1)[:, None]
    is_target = rest & (rank % step == 0) & (rank // step < contextual)
    targets = common.pick_rows(is_target, contextual, prefer_last=False)[0]
    t_ok = jnp.take_along_axis(is_target, targets, axis=1)
    targets = jnp.where(t_ok, targets, -1)
    sim = common.cosine(keys, common.gather_rows(keys, targets))  # (B, T, C)
    sim = jnp.where(t_ok[:, None, :], sim, -jnp.inf)
    assign = jnp.argmax(sim, axis=-1)
    member = jax.nn.one_hot(assign, contextual, dtype=jnp.float32) * (rest & ~is_target)[:, :, None]
    xk = (keys if values is None else values).astype(jnp.float32)
    tx = common.gather_rows(xk, targets)
    merged_t = (tx + jnp.einsum("BTC,BTD->BCD", member, xk)) / (1.0 + jnp.sum(member, axis=1))[..., None]
    merged = scatter_rows(xk, targets, merged_t)
    return common.sort_slots(jnp.concatenate([dom, targets], axis=1)), merged


@dataclasses.dataclass(frozen=True)
class VisionZip(common.TopKStage):
    """Before-LLM stage; needs `ctx.vision_cls` (B, T) and `ctx.vision_keys` (B, T, Dv) from the vision tower."""

    layer: int = 0
    dominant: int = 54
    contextual: int = 10
    attention_based = False
    score_layer = None
    needs_vision_cls = True  # the engine asks the family's embed for vision_cls / vision_keys

    @property
    def keep(self) -> int:
        return self.dominant + self.contextual

    def query_rows(self, state):
        return common.last_token_rows(state)

    def score(self, ctx):
        cls = getattr(ctx, "vision_cls", None)
        if cls is None:
            raise NotImplementedError("VisionZip needs the vision tower's [CLS] attention (StageContext.vision_cls);"
                                      " only model families with a CLIP [CLS] token (LLaVA) provide it, not Qwen")
        return cls

    def select(self, ctx, scores):
        keys = getattr(ctx, "vision_keys", None)
        if keys is None:
            raise NotImplementedError("VisionZip needs StageContext.vision_keys")
        slots, merged = visionzip_select(scores, keys, common.candidates(ctx.state), self.dominant, self.contextual,
                                         values=ctx.state.x)
        # contextual tokens become the mean of their group's projected features; dominant ones are unchanged
        return Selection(slots=slots, x=common.gather_rows(merged, slots))


def visionzip(dominant: int = 54, contextual: int = 10) -> tuple[VisionZip]:
    return (VisionZip(dominant=dominant, contextual=contextual),)
