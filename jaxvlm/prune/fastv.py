"""FastV (pkunlp-icler/FastV), the in-place drop: at layer K, rank the visual tokens by the head-mean attention
that the last prompt token paid them at layer K-1 and keep the top R (text is always kept).

    prune.fastv(layer=2, keep=128)            # the debiasing release's setting (K=2, R=128 of 576)
    prune.fastv(layer=2, drop_ratio=0.75)     # FastV's own notation: K=2, R=75% dropped -> keep 144 of 576

Survivors keep their original positions; layers < K keep their full KV cache (engine). Budget rule
(`budget_default = "lower"`): K is lowered to what a row has - to the number of non-padding tokens under
padding suppression, and at plan time to the visual token count of a small image (`fit`, jaxvlm.prune.base:
keep 128 on a Qwen2-VL image of 83 tokens keeps all 83).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxvlm.prune import common
from jaxvlm.prune.base import StageContext


def fastv_scores(logits: jax.Array, row_weight: jax.Array, cand: jax.Array) -> jax.Array:
    """(B, T) FastV importance: softmax of the scoring row's logits (B, N, R, T), mean over heads, (weighted
    mean over rows; FastV has one row, the last prompt token), zero off the candidate (visual) slots."""
    s = common.weighted_rows(common.head_mean_probs(logits), row_weight, "mean")
    return jnp.where(cand, s, 0.0)


class ScoresLastToken:
    """Mixin: FastV's score, the last prompt token's head-mean attention over the visual slots (also the
    attention branch of TokenCarve and iLLaVA's LLM-stage score)."""

    def query_rows(self, state):
        return common.last_token_rows(state)

    def score(self, ctx: StageContext) -> jax.Array:
        return fastv_scores(ctx.logits, ctx.row_weight, common.candidates(ctx.state))


@dataclasses.dataclass(frozen=True)
class FastV(ScoresLastToken, common.ScoresPreviousLayer, common.TopKStage):
    layer: int = 2
    keep: int | None = 128  # None: resolved from `drop_ratio` at plan time
    drop_ratio: float | None = None  # only while keep is None
    budget_default = "lower"

    def __post_init__(self):
        common.check_layer("FastV layer", self.layer, low=1)
        if self.keep is None:
            _check_drop_ratio(self.drop_ratio)
        else:
            common.check_count("FastV keep", self.keep)
            if self.drop_ratio is not None:
                raise ValueError("give keep or drop_ratio, not both")

    def resolve(self, n_in: int, n_visual: int) -> "FastV":
        """Concrete keep = round(n_in * (1 - drop_ratio)) of the visual tokens entering the stage (>= 1)."""
        if self.keep is not None:
            return self
        return dataclasses.replace(self, keep=_drop_keep(n_in, self.drop_ratio), drop_ratio=None)


def _check_drop_ratio(drop_ratio) -> float:
    if drop_ratio is None or isinstance(drop_ratio, bool) or not 0.0 <= float(drop_ratio) < 1.0:
        raise ValueError(f"drop_ratio={drop_ratio!r} must be in [0, 1)")
    return float(drop_ratio)


def _drop_keep(n: int, drop_ratio: float) -> int:
    return max(1, int(round(common.check_count("n_visual", n) * (1.0 - float(drop_ratio)))))


def fastv(layer: int = 2, keep: int | None = None, drop_ratio: float | None = None,
          n_visual: int | None = None) -> tuple[FastV]:
    """FastV schedule (one stage). Give `keep` (tokens kept) or `drop_ratio` (fraction of the visual tokens
    dropped: keep = round(n (1 - drop_ratio)), at least 1). With drop_ratio and n_visual=None (default) n is the
    batch's smallest visual count, resolved by the engine at plan time; an int n_visual fixes keep now."""
    if keep is not None and drop_ratio is not None:
        raise ValueError("give keep or drop_ratio, not both")
    if keep is None:
        if drop_ratio is None:
            keep = 128
        else:
            drop_ratio = _check_drop_ratio(drop_ratio)
            if n_visual is None:
                return (FastV(layer=layer, keep=None, drop_ratio=drop_ratio),)
            keep = _drop_keep(n_visual, drop_ratio)
    return (FastV(layer=layer, keep=keep),)
