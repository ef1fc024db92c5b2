"""PyramidDrop (Cooperx521/PyramidDrop): stages before given layers; at each, a one-row attention recomputed
with THAT layer's input norm and q/k projections (+RoPE) on the current hidden states (score_layer == layer):
query = the last instruction token (the prompt's last token), causal softmax, head mean, image columns; keep the
top `int(n_visual * ratio)` image tokens (ratios are fractions of the ORIGINAL image-token count, as upstream's
`image_token_ratio_list`: 576 x .32/.16/.08 -> 184/92/46).

    prune.pdrop()                                             # paper default: layers (8,16,24), .5/.25/.125
    prune.pdrop(layers=(2, 10, 20), ratios=(.32, .16, .08))   # the debiasing release's setting
    prune.pdrop(layers=(2,), ratios=(.5,), n_visual=576)      # counts fixed now (184/... style), not at plan time

With `n_visual=None` (the default) the keeps are left open (`keep` None, `ratio` set) and the engine resolves
them at plan time (`PDropStage.resolve`) against the batch's smallest visual count, so one schedule serves
LLaVA (576 -> 184/92/46 for .32/.16/.08), Qwen2-VL's dynamic resolutions and video (83 tokens x .5 -> 41). Every
stage's ratio refers to that ORIGINAL count (not to the tokens entering the stage), as upstream.

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
    keep: int | None  # None: resolved from `ratio` at plan time
    renumber: bool = True
    ratio: float | None = None  # fraction of the ORIGINAL visual count (only while keep is None)

    def __post_init__(self):
        common.check_layer("PyramidDrop layer", self.layer)
        if self.keep is None:
            if self.ratio is None:
                raise ValueError("PyramidDrop stage needs keep or ratio")
            common.check_ratio("PyramidDrop ratio", self.ratio)
        else:
            common.check_count("PyramidDrop keep", self.keep)
            if self.ratio is not None:
                raise ValueError("PyramidDrop stage: give keep or ratio, not both")

    def resolve(self, n_in: int, n_visual: int) -> "PDropStage":
        """Concrete keep = int(n_visual * ratio) of the ORIGINAL count n_visual (n_in is not used)."""
        if self.keep is not None:
            return self
        (keep,) = pdrop_keeps((self.ratio,), n_visual)
        return dataclasses.replace(self, keep=keep, ratio=None)

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


def pdrop(layers=(8, 16, 24), ratios=(0.5, 0.25, 0.125), n_visual: int | None = None,
          renumber: bool = True) -> tuple[PDropStage, ...]:
    """PyramidDrop schedule: one stage per layer; `ratios` are fractions of the original visual count.

    n_visual=None (default): keeps resolved by the engine at plan time from the batch's smallest visual count
    (rows with more visual tokens keep the same number); an int fixes them now (int(n_visual * ratio))."""
    layers, ratios = tuple(layers), tuple(ratios)
    if not layers or len(layers) != len(ratios):
        raise ValueError(f"need one ratio per layer, got layers={layers} ratios={ratios}")
    if any(b <= a for a, b in zip(layers, layers[1:])):
        raise ValueError(f"layers must be strictly increasing, got {layers}")
    if n_visual is None:
        rs = [common.check_ratio(f"ratios[{i}]", r) for i, r in enumerate(ratios)]
        if any(b > a for a, b in zip(rs, rs[1:])):
            raise ValueError(f"ratios must be non-increasing (fractions of the original count), got {ratios}")
        return tuple(PDropStage(layer=l, keep=None, renumber=renumber, ratio=r) for l, r in zip(layers, rs))
    keeps = pdrop_keeps(ratios, n_visual)
    return tuple(PDropStage(layer=l, keep=k, renumber=renumber) for l, k in zip(layers, keeps))
