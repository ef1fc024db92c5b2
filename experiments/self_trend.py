"""Calibration-free recency detrending: the trend estimated from each row's own scores (an experiment).

    schedule = (SelfDetrended(prune.fastv(layer=2, keep=64)[0]),)

At the stage, per row, over the valid non-padding visual tokens: fit log s_i = a + b * x_i by least squares
(x = span_index), with two robust passes that drop the tokens whose residual exceeds 2 robust standard
deviations (1.4826 * median absolute deviation) - the few content-salient tokens a pruning method is meant
to keep must not tilt the trend - then score s_i * exp(-b * x_i) (T(0)/T(x) of the row's own exponential).
Padding patches are suppressed as in `prune.debiased`. Unlike a calibrated trend it needs no calibration
set and follows each image's span length (Qwen dynamic resolution), but it also removes any genuine
correlation of content with position within that image.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp


def row_slopes(scores, positions, weight, clip: float = 2.0) -> jax.Array:
    """(B,) robust least-squares slope b of log(scores) on positions per row; weight (B, T) {0,1}."""
    w = weight.astype(jnp.float32) * (scores > 0)
    x = positions.astype(jnp.float32)
    y = jnp.log(jnp.maximum(scores.astype(jnp.float32), 1e-30))

    def fit(w):
        n = jnp.maximum(w.sum(1, keepdims=True), 1.0)
        xm, ym = (w * x).sum(1, keepdims=True) / n, (w * y).sum(1, keepdims=True) / n
        b = (w * (x - xm) * (y - ym)).sum(1) / jnp.maximum((w * (x - xm) ** 2).sum(1), 1e-12)
        return b, ym[:, 0] - b * xm[:, 0]

    keep = w
    for _ in range(2):  # two trimming passes: the first fit may be tilted by the salient tokens
        b, a = fit(keep)
        r = jnp.abs(y - a[:, None] - b[:, None] * x)
        med = jnp.nanmedian(jnp.where(keep > 0, r, jnp.nan), axis=1, keepdims=True)
        keep = w * (r <= clip * 1.4826 * jnp.nan_to_num(med, nan=jnp.inf))
    return fit(keep)[0]


@dataclasses.dataclass(frozen=True)
class SelfDetrended:
    """`inner` with its score detrended by the row's own exponential and padding suppressed."""

    inner: Any
    pad_threshold: float = 0.5
    pad_variant: str = "release"

    layer = property(lambda self: self.inner.layer)
    score_layer = property(lambda self: self.inner.score_layer)
    keep = property(lambda self: self.inner.keep)

    def __getattr__(self, name):
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def resolve(self, n_in: int, n_visual: int):
        fn = getattr(self.inner, "resolve", None)
        return self if fn is None else dataclasses.replace(self, inner=fn(n_in, n_visual))

    def fit(self, n_max: int):
        fn = getattr(self.inner, "fit", None)
        return self if fn is None else dataclasses.replace(self, inner=fn(n_max))

    def query_rows(self, state):
        return self.inner.query_rows(state)

    def score(self, ctx):
        st = ctx.state
        scores = self.inner.score(ctx)
        ok = st.valid & st.visual & ~ctx.pad
        b = row_slopes(scores, st.span_index, ok)
        detrended = scores * jnp.exp(-b[:, None] * jnp.maximum(st.span_index, 0).astype(jnp.float32))
        return jnp.where(ok, detrended, 0.0)

    def select(self, ctx, scores):
        st = ctx.state  # FastV's budget rule under padding suppression: padding patches are not candidates
        return self.inner.select(ctx.replace(state=st.replace(valid=st.valid & ~(ctx.pad & st.visual))), scores)
