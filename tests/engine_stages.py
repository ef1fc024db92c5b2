"""Minimal pruning stages for the engine tests (the method library lives in jaxvlm/prune/).

`FastV`: score = head-mean attention of the last prompt token at layer `layer - 1`, top-`keep` visual tokens.
`RecomputeTopK`: the same rule scored PyramidDrop-style (layer `layer`'s own norm + q/k on the current hidden
states), with contiguous renumbering of positions by default.
"""

from __future__ import annotations

import dataclasses

from jaxvlm.prune import base


@dataclasses.dataclass(frozen=True)
class FastV:
    layer: int
    keep: int
    score_layer: int | None = None
    renumber: bool = False

    def __post_init__(self):
        if self.score_layer is None:
            object.__setattr__(self, "score_layer", self.layer - 1)

    def query_rows(self, state):
        return base.last_token_rows(state)

    def score(self, ctx):
        return base.attention_scores(ctx)

    def select(self, ctx, scores):
        return base.top_k_visual(ctx, scores, self.keep)


def RecomputeTopK(layer: int, keep: int, renumber: bool = True) -> FastV:  # noqa: N802
    return FastV(layer=layer, keep=keep, score_layer=layer, renumber=renumber)
