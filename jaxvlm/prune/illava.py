"""iLLaVA (hulianyuyy/iLLaVA), the LLM stage: before layer k, score the image tokens by the last token's head-mean
attention at layer k-1; the r+1 lowest-scored tokens are folded into ONE weighted-average token that takes the
slot (and original position) of the highest-scored of them, and the other r are dropped.

Weights, as upstream's code (`size = torch.arange(1, r+2)` applied to the fold set in descending-score order):
the highest of the fold set weighs 1, the next 2, ..., the lowest r+1 (the code's comment says "from r+1 to 1";
we follow the code). r = round(n * (1 - keep_ratio)) for the n image tokens entering the stage (at most n - 1).
With `n_visual=None` (default) n is resolved by the engine at plan time (`ILLaVAStage.resolve`): the batch's
smallest visual count at the first stage, the previous stage's keep after it; `n_visual=576` fixes the chain
now (LLaVA-1.5: 576 -> r 173, keep 403 at .7).

    prune.illava()                                        # LLaVA-OneVision: layer 8, keep 70%
    prune.illava(layers=(6, 7, 8), keep_ratio=0.9)        # Qwen2-VL: 90% at each of layers 6, 7, 8
Upstream's Qwen2-VL flash-attention variant scores by each token's own softmax log-sum-exp; its ViT-side stages
(layers 5-8 of the vision tower) are outside the LLM and not implemented here.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxvlm.prune import common
from jaxvlm.prune.base import Selection, StageContext
from jaxvlm.prune.fastv import ScoresLastToken
from jaxvlm.prune.sparsevlm import scatter_rows


def fold_lowest(x: jax.Array, scores: jax.Array, cand: jax.Array, r: int, keep: int):
    """Fold the r+1 lowest-scored candidates into one token; returns (slots (B, keep) sorted, new x)."""
    low = common.top_k_slots(-scores.astype(jnp.float32), cand, r + 1, sort=False)  # lowest first
    # weights: lowest -> r+1, ..., highest of the fold set -> 1
    w = jnp.arange(r + 1, 0, -1, dtype=jnp.float32)[None, :] * (low >= 0)
    xf = common.gather_rows(x, low).astype(jnp.float32)
    merged = jnp.einsum("BR,BRD->BD", w, xf) / jnp.maximum(jnp.sum(w, axis=1, keepdims=True), 1e-30)
    n_low = jnp.sum(low >= 0, axis=1)
    target = jnp.take_along_axis(low, jnp.maximum(n_low - 1, 0)[:, None], axis=1)  # highest of the fold set
    x_new = scatter_rows(x, target, merged[:, None, :])
    b, t = cand.shape
    dropped = jnp.zeros((b, t), bool).at[jnp.arange(b)[:, None], jnp.where(low < 0, t, low)].set(True, mode="drop")
    dropped = dropped & ~(jnp.arange(t)[None, :] == target)
    slots = common.top_k_slots(scores, cand & ~dropped, keep)
    return slots, x_new


@dataclasses.dataclass(frozen=True)
class ILLaVAStage(ScoresLastToken, common.ScoresPreviousLayer, common.TopKStage):
    layer: int = 8
    n_in: int | None = common.LLAVA_VISUAL_TOKENS  # None (with r None): resolved from keep_ratio at plan time
    r: int | None = 173
    keep_ratio: float | None = None  # only while unresolved

    def __post_init__(self):
        common.check_layer("iLLaVA layer", self.layer, low=1)
        if self.n_in is None or self.r is None:
            if self.n_in is not None or self.r is not None or self.keep_ratio is None:
                raise ValueError("iLLaVA stage: give n_in and r, or keep_ratio alone (resolved at plan time)")
            common.check_ratio("keep_ratio", self.keep_ratio)
            return
        if self.keep_ratio is not None:
            raise ValueError("iLLaVA stage: give n_in and r, or keep_ratio alone, not both")
        common.check_count("iLLaVA n_in", self.n_in)
        common.check_count("iLLaVA r", self.r, low=0, high=self.n_in - 1)

    def resolve(self, n_in: int, n_visual: int) -> "ILLaVAStage":
        """Concrete n_in (the visual tokens entering the stage) and r = min(round(n_in (1 - keep_ratio)), n_in - 1)."""
        if self.keep_ratio is None:
            return self
        return ILLaVAStage(layer=self.layer, n_in=n_in, r=illava_r(n_in, self.keep_ratio))

    @property
    def keep(self) -> int | None:
        return None if self.n_in is None else self.n_in - self.r

    def select(self, ctx: StageContext, scores: jax.Array) -> Selection:
        cand = common.candidates(ctx.state)
        if self.r == 0:
            return Selection(slots=common.top_k_slots(scores, cand, self.keep))
        slots, x = fold_lowest(ctx.state.x, scores, cand, self.r, self.keep)
        return Selection(slots=slots, x=common.gather_rows(x, slots))


def illava_r(n: int, keep_ratio: float) -> int:
    """Tokens dropped by a stage that n visual tokens enter: min(round(n (1 - keep_ratio)), n - 1)."""
    n = common.check_count("n_visual", n)
    return min(int(round(n * (1.0 - keep_ratio))), n - 1)


def illava(layers=(8,), keep_ratio: float = 0.7, n_visual: int | None = None) -> tuple:
    """iLLaVA LLM-stage schedule: at each layer keep `keep_ratio` of the image tokens entering it.

    n_visual=None (default): counts resolved by the engine at plan time from the batch's smallest visual count;
    an int fixes them now."""
    layers = tuple(layers)
    if not layers or any(b <= a for a, b in zip(layers, layers[1:])):
        raise ValueError(f"layers must be a non-empty strictly increasing tuple, got {layers}")
    keep_ratio = common.check_ratio("keep_ratio", keep_ratio)
    if n_visual is None:
        return tuple(ILLaVAStage(layer=l, n_in=None, r=None, keep_ratio=keep_ratio) for l in layers)
    stages, n = [], common.check_count("n_visual", n_visual)
    for l in layers:
        r = illava_r(n, keep_ratio)
        stages.append(ILLaVAStage(layer=l, n_in=n, r=r))
        n -= r
    return tuple(stages)
