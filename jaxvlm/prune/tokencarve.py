"""TokenCarve (ShawnTan86/TokenCarve), at layer 2 (training-free, N = 64 kept by default).

- AV rank: the last token's head-mean attention at layer 1 over the image tokens (this is `score`, the branch
  the debiasing release reweights);
- SV rank: per-token row sum of |U diag(S)| from the SVD (float32) of layer 1's output hidden states of the
  image tokens (= `state.x` entering layer 2; non-image rows are zeroed, which leaves the image rows' U S = X V
  unchanged);
- Borda fusion: points n, n-1, ..., 1 by rank in each branch (n = image tokens of the row), weight 0.5 each;
  select `select` = N + N/2 tokens by fused points (ties: lower slot first);
- split the selected (in fused order) into the top half A and the bottom half B; the N/2 B tokens most cosine
  similar to A are merged into their best A token (mean of the A token and everything merged into it, as
  upstream's `scatter_reduce(mean)`); result A + the remaining B = N tokens. Original positions.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxvlm.prune import common
from jaxvlm.prune.base import Selection, StageContext
from jaxvlm.prune.fastv import ScoresLastToken
from jaxvlm.prune.sparsevlm import scatter_rows


def borda_points(scores: jax.Array, cand: jax.Array) -> jax.Array:
    """(B, T) float32: n - rank (rank 0 = highest score) on candidate slots, 0 elsewhere."""
    b, t = scores.shape
    order = common.rank_order(scores, cand)
    n = jnp.sum(cand, axis=1, keepdims=True)
    pts = (n - jnp.arange(t)[None, :]).astype(jnp.float32)
    pts = jnp.where(jnp.arange(t)[None, :] < n, pts, 0.0)
    out = jnp.zeros((b, t), jnp.float32).at[jnp.arange(b)[:, None], order].set(pts)
    return jnp.where(cand, out, 0.0)


def svd_contributions(x: jax.Array, cand: jax.Array) -> jax.Array:
    """(B, T) row sums of |U diag(S)| of the SVD of the candidate rows of x (B, T, D), float32."""
    xf = jnp.where(cand[:, :, None], x.astype(jnp.float32), 0.0)
    u, s, _ = jnp.linalg.svd(xf, full_matrices=False)
    return jnp.where(cand, jnp.sum(jnp.abs(u * s[:, None, :]), axis=-1), 0.0)


def carve(x: jax.Array, av: jax.Array, cand: jax.Array, keep: int, av_weight: float = 0.5):
    """TokenCarve's selection + merge. Returns (slots (B, keep) sorted, -1 where fewer; x with merged A rows)."""
    n_select = keep + keep // 2
    n_a = n_select // 2
    n_merge = n_select - keep
    sv = svd_contributions(x, cand)
    fused = av_weight * borda_points(av, cand) + (1.0 - av_weight) * borda_points(sv, cand)
    sel = common.top_k_slots(fused, cand, n_select, sort=False)  # fused order
    a, bb = sel[:, :n_a], sel[:, n_a:]
    xa, xb = common.gather_rows(x, a), common.gather_rows(x, bb)
    sim = common.cosine(xb, xa)  # (B, nb, na)
    sim = jnp.where((bb >= 0)[:, :, None] & (a >= 0)[:, None, :], sim, -jnp.inf)
    best = jnp.argmax(sim, axis=-1)
    bestv = jnp.max(sim, axis=-1)
    _, order = jax.lax.top_k(jnp.where(bb >= 0, bestv, -jnp.inf), bb.shape[1])
    b_sorted = jnp.take_along_axis(bb, order, axis=1)
    t_sorted = jnp.take_along_axis(best, order, axis=1)  # index into A
    # merge only the excess over `keep` (= n_merge when the row has >= 1.5 N candidates, fewer otherwise)
    n_sel = jnp.sum(sel >= 0, axis=1, keepdims=True)
    n_merge_row = jnp.clip(n_sel - keep, 0, n_merge)
    merge = (jnp.arange(bb.shape[1])[None, :] < n_merge_row) & (b_sorted >= 0)
    onehot = jax.nn.one_hot(t_sorted, n_a, dtype=jnp.float32) * merge[:, :, None]  # (B, nb, n_a)
    xm = common.gather_rows(x, b_sorted).astype(jnp.float32)
    summed = xa.astype(jnp.float32) + jnp.einsum("BMA,BMD->BAD", onehot, xm)
    new_a = summed / (1.0 + jnp.sum(onehot, axis=1))[..., None]
    x_new = scatter_rows(x, a, new_a)
    rest_b = jnp.where(merge, -1, b_sorted)
    slots = common.sort_slots(jnp.concatenate([a, rest_b], axis=1))[:, :keep]
    return slots, x_new


@dataclasses.dataclass(frozen=True)
class TokenCarve(ScoresLastToken, common.ScoresPreviousLayer, common.TopKStage):
    layer: int = 2
    keep: int = 64
    av_weight: float = 0.5

    def __post_init__(self):
        common.check_layer("TokenCarve layer", self.layer, low=1)
        common.check_count("TokenCarve keep", self.keep, low=2)
        if not 0.0 <= self.av_weight <= 1.0:
            raise ValueError(f"TokenCarve av_weight={self.av_weight} must be in [0, 1]")

    # score: ScoresLastToken, the attention (AV) branch (last-token head-mean attention at layer - 1), which is
    # what debiasing reweights; the SVD branch enters in `select`.

    @property
    def n_select(self) -> int:
        return self.keep + self.keep // 2

    def select(self, ctx: StageContext, scores: jax.Array) -> Selection:
        cand = common.candidates(ctx.state)
        common.check_capacity(self.n_select, cand.shape[1], "TokenCarve select (1.5 N)")
        slots, x = carve(ctx.state.x, scores, cand, self.keep, self.av_weight)
        return Selection(slots=slots, x=common.gather_rows(x, slots))


def tokencarve(keep: int = 64, layer: int = 2, av_weight: float = 0.5) -> tuple[TokenCarve]:
    return (TokenCarve(layer=layer, keep=keep, av_weight=av_weight),)
