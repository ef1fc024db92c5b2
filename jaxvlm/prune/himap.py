"""HiMAP (ustc-hyin/HiMAP): two stages.

Stage 1 (before layer `text_layer`, default 2): layer text_layer-1's attention, head mean, SUMMED over every text
query row after the image span, image columns; keep the top `text_keep`. Stage 2 (before `image_layer`, default
8): image->image attention of layer image_layer-1 on the reduced sequence, summed over the retained image query
rows; keep `image_keep`. Original positions throughout.

    prune.himap()                                   # HiMAP's default: 2/288 then 8/72
    prune.himap(text_keep=115, image_keep=90)       # the debiasing release's setting (only stage 1 debiased)

Static row counts: stage 1 uses at most `max_rows` text rows (the LAST max_rows text tokens after the image if
a prompt has more); stage 2 uses the `text_keep` visual survivors as rows (all of them).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxvlm.prune import common
from jaxvlm.prune.base import StageContext


def summed_scores(logits: jax.Array, row_weight: jax.Array, cand: jax.Array) -> jax.Array:
    """(B, T): head-mean probabilities summed over the (weighted) scoring rows, zero off candidates."""
    s = common.weighted_rows(common.head_mean_probs(logits), row_weight, "sum")
    return jnp.where(cand, s, 0.0)


@dataclasses.dataclass(frozen=True)
class HiMAPText(common.ScoresPreviousLayer, common.TopKStage):
    layer: int = 2
    keep: int = 288
    max_rows: int = 128

    def __post_init__(self):
        common.check_layer("HiMAP text layer", self.layer, low=1)
        common.check_count("HiMAP text keep", self.keep)
        common.check_count("HiMAP max_rows", self.max_rows)

    def query_rows(self, state):
        return common.pick_rows(common.after_visual_text(state), self.max_rows, prefer_last=True)

    def score(self, ctx: StageContext) -> jax.Array:
        return summed_scores(ctx.logits, ctx.row_weight, common.candidates(ctx.state))


@dataclasses.dataclass(frozen=True)
class HiMAPImage(common.ScoresPreviousLayer, common.TopKStage):
    layer: int = 8
    keep: int = 72
    n_rows: int = 288  # static row count: the visual tokens entering this stage (stage 1's keep)

    def __post_init__(self):
        common.check_layer("HiMAP image layer", self.layer, low=1)
        common.check_count("HiMAP image keep", self.keep)
        common.check_count("HiMAP image rows", self.n_rows)
        if self.keep > self.n_rows:
            raise ValueError(f"HiMAP image_keep={self.keep} exceeds the {self.n_rows} tokens entering stage 2")

    def query_rows(self, state):
        return common.pick_rows(common.candidates(state), self.n_rows, prefer_last=False)

    def score(self, ctx: StageContext) -> jax.Array:
        return summed_scores(ctx.logits, ctx.row_weight, common.candidates(ctx.state))


def himap(text_layer: int = 2, text_keep: int = 288, image_layer: int = 8, image_keep: int = 72,
          max_rows: int = 128) -> tuple:
    """HiMAP schedule (stage 1 text-guided, stage 2 image->image)."""
    if image_layer <= text_layer:
        raise ValueError(f"image_layer={image_layer} must come after text_layer={text_layer}")
    if image_keep > text_keep:
        raise ValueError(f"image_keep={image_keep} must not exceed text_keep={text_keep}")
    return (HiMAPText(layer=text_layer, keep=text_keep, max_rows=max_rows),
            HiMAPImage(layer=image_layer, keep=image_keep, n_rows=text_keep))
