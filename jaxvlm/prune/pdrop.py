"""PyramidDrop (Cooperx521/PyramidDrop): stages before given layers; at each, a one-row attention recomputed
with THAT layer's input norm and q/k projections (+RoPE) on the current hidden states (score_layer == layer):
query = the last instruction token (the prompt's last token), causal softmax, head mean, image columns; keep the
top `int(n_visual * ratio)` image tokens (ratios are fractions of the ORIGINAL image-token count, as upstream's
`image_token_ratio_list`: 576 x .32/.16/.08 -> 184/92/46).

    prune.pdrop()                                             # paper default: layers (8,16,24), .5/.25/.125
    prune.pdrop(layers=(2, 10, 20), ratios=(.32, .16, .08))   # the debiasing release's setting

Upstream renumbers positions contiguously after each drop (and shifts decode positions accordingly): the
default here (`renumber=True`); `renumber=False` keeps original positions.
"""

from __future__ import annotations

import dataclasses

import jax

from jaxvlm.prune import common
from jaxvlm.prune.base import StageContext
from jaxvlm.prune.fastv import fastv_scores


@dataclasses.dataclass(frozen=True)
class PDropStage(common.TopKStage):
    layer: int
    keep: int
    renumber: bool = True

    def __post_init__(self):
        common.check_layer("PyramidDrop layer", self.layer)
        common.check_count("PyramidDrop keep", self.keep)

    @property
    def score_layer(self) -> int:
        return self.layer

    def query_rows(self, state):
        return common.last_token_rows(state)

    def score(self, ctx: StageContext) -> jax.Array:
        return fastv_scores(ctx.logits, ctx.row_weight, common.candidates(ctx.state))


def pdrop_keeps(ratios, n_visual: int) -> tuple[int, ...]:
    """Static keep counts: int(n_visual * ratio) (upstream's truncation), checked non-increasing and >= 1."""
    common.check_count("n_visual", n_visual)
    keeps = []
    for i, r in enumerate(ratios):
        k = int(n_visual * common.check_ratio(f"ratios[{i}]", r))
        if k < 1:
            raise ValueError(f"ratios[{i}]={r} keeps no token of {n_visual}")
        if keeps and k > keeps[-1]:
            raise ValueError(f"ratios must be non-increasing (fractions of the original count), got {tuple(ratios)}")
        keeps.append(k)
    return tuple(keeps)


def pdrop(layers=(8, 16, 24), ratios=(0.5, 0.25, 0.125), n_visual: int = common.LLAVA_VISUAL_TOKENS,
          renumber: bool = True) -> tuple[PDropStage, ...]:
    """PyramidDrop schedule: one stage per layer; `ratios` are fractions of the original `n_visual`."""
    layers, ratios = tuple(layers), tuple(ratios)
    if not layers or len(layers) != len(ratios):
        raise ValueError(f"need one ratio per layer, got layers={layers} ratios={ratios}")
    if any(b <= a for a, b in zip(layers, layers[1:])):
        raise ValueError(f"layers must be strictly increasing, got {layers}")
    keeps = pdrop_keeps(ratios, n_visual)
    return tuple(PDropStage(layer=l, keep=k, renumber=renumber) for l, k in zip(layers, keeps))
