"""debias.SelfTrend, the calibration-free trend (each row's own robust exponential): properties of the pure
function, and `trend="self"` through prune.debiased / --prune / the engine."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxvlm import debias, prune
from jaxvlm.prune.base import StageContext
from jaxvlm.prune.common import TopKStage, last_token_rows

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SELF = debias.SelfTrend()
ROWS, N = 2, 256  # one shape for every example: one compiled program
slopes = jax.jit(SELF.slopes)


def planted(seed: int, b, n: int = N, noise: float = 0.2, salient: int = 0):
    """Scores exp(b_r * x) * lognormal noise (len(b), n), `salient` tokens per row multiplied by 50."""
    rng = np.random.default_rng(seed)
    b = np.asarray(b, float).reshape(-1, 1)
    x = np.tile(np.arange(n), (len(b), 1))
    s = np.exp(b * x + rng.normal(0, noise, x.shape))
    for r in range(len(b)):
        s[r, rng.choice(n, salient, replace=False)] *= 50.0
    return s.astype(np.float32), x


def prefix(n: int) -> np.ndarray:
    """(ROWS, N) weight: the first n tokens of each row (a span of n tokens inside the static shape)."""
    return np.broadcast_to(np.arange(N) < n, (ROWS, N))


@SETTINGS
@given(n=st.integers(2, N), seed=st.integers(0, 2**16))
def test_shapes(n, seed):
    s, x = planted(seed, np.zeros(ROWS))
    w = prefix(n)
    assert slopes(s, x, w).shape == (ROWS,)
    assert SELF.weights(s, x, w).shape == (ROWS, N)
    assert SELF.weights(s[0], x[0], w[0]).shape == (N,)  # leading axes are batch axes, any number of them
    out = debias.detrend(s, x, SELF, weight=w)
    assert out.shape == (ROWS, N) and out.dtype == s.dtype


@SETTINGS
@given(seed=st.integers(0, 2**16), log_scale=st.floats(-8, 8), b=st.floats(-0.01, 0.01))
def test_invariant_to_the_score_scale(seed, log_scale, b):
    s, x = planted(seed, [b, -b], salient=5)
    w = prefix(N)
    np.testing.assert_allclose(slopes(s * np.float32(np.exp(log_scale)), x, w), slopes(s, x, w), atol=2e-5)


@SETTINGS
@given(seed=st.integers(0, 2**16), b=st.floats(-0.015, 0.015), n=st.integers(120, N))
def test_planted_exponential_recovered_despite_salient_tokens(seed, b, n):
    """A planted exponential trend in random (lognormal) scores over a span of n tokens, 4% of them
    content-salient (x50): the slope comes back within 4 standard errors, and detrending leaves none."""
    s, x = planted(seed, [b, b], salient=n // 25)
    s[:, n:] = 1e3  # beyond the span: not in the estimate
    w = prefix(n)
    got = np.asarray(slopes(s, x, w))
    assert np.all(np.abs(got - b) < 4 * 3.5 * 0.2 / n**1.5 + 1e-4), (got, b)
    flat = np.asarray(debias.detrend(s, x, SELF, weight=w))[0, :n]
    assert abs(np.corrcoef(x[0, :n], np.log(flat))[0, 1]) < 0.25


@SETTINGS
@given(seed=st.integers(0, 2**16), n_pad=st.integers(1, 120), sink=st.floats(1.0, 1e4))
def test_padding_and_positionless_tokens_excluded(seed, n_pad, sink):
    """Whatever the scores of excluded tokens (weight 0: padding; position -1: text, newlines, CLS), the
    estimate is the one of the included tokens alone; position-less tokens come back untouched."""
    s, x = planted(seed, [0.004, -0.004])
    rng = np.random.default_rng(seed)
    pad = np.zeros_like(s, bool)
    pad[:, rng.choice(N, n_pad, replace=False)] = True
    x = x.copy()
    x[:, :5] = -1
    want = slopes(np.where(pad | (x < 0), 1.0, s), x, ~pad)
    sunk = np.where(pad | (x < 0), np.float32(sink), s)
    np.testing.assert_allclose(slopes(sunk, x, ~pad), want, atol=1e-6)
    out = np.asarray(debias.detrend(sunk, x, SELF, weight=~pad))
    np.testing.assert_array_equal(out[:, :5], sunk[:, :5])


def test_rows_without_tokens_and_steep_trends_stay_finite():
    s, x = planted(0, [0.0, -0.02], n=3000)
    w = np.ones_like(s, bool)
    w[0] = False
    b = np.asarray(SELF.slopes(s, x, w))
    assert b[0] == 0.0 and abs(b[1] + 0.02) < 1e-4
    assert np.isfinite(np.asarray(SELF.weights(s, x, w))).all()
    with pytest.raises(ValueError, match="clip > 0"):
        debias.SelfTrend(clip=0.0)


def test_self_through_debiased_spec_and_hash():
    sched = prune.parse_schedule("debiased_fastv:keep=16,trend=self")
    assert isinstance(sched[0].trend, debias.SelfTrend) and not sched[0].default_trend
    assert sched == prune.debiased_fastv(keep=16, trend=debias.SelfTrend())
    assert hash(sched) == hash(prune.debiased(prune.fastv(keep=16), trend="self"))
    assert debias.as_trend("self") == debias.SelfTrend()


@dataclasses.dataclass(frozen=True)
class LogScore(TopKStage):
    """A stage whose score is exp of the first hidden coordinate (a planted score per slot)."""

    layer: int = 2
    keep: int = 16
    score_layer = 1

    def query_rows(self, state):
        return last_token_rows(state)

    def score(self, ctx):
        return jnp.exp(ctx.state.x[..., 0])


def test_debiased_self_trend_flattens_a_planted_bias():
    """Scores with a strongly rising planted trend: the raw top-k crowds the end of the span; trend="self"
    (Debiased.score) spreads it over the span again, and padding never enters its estimate."""
    from prune_ref import layout

    lay = layout(np.random.default_rng(0), 1, 100, 64)
    vis = lay.rows[0]["vis"]
    s, _ = planted(3, [0.08], n=64, noise=0.3)
    x = np.zeros(lay.state.x.shape, np.float32)
    x[0, vis, 0] = np.log(s[0])
    pad = np.zeros((1, 100), bool)
    pad[0, vis[:8]] = True  # padding patches with an attention sink
    x[0, vis[:8], 0] = 12.0
    state = lay.state.replace(x=jnp.asarray(x))
    ctx = StageContext(state=state, logits=None, row_slots=None, row_weight=None, keys=None, pad=jnp.asarray(pad))
    raw = np.asarray(LogScore().select(ctx, LogScore().score(ctx)).slots[0]) - vis[0]
    stage = prune.debiased((LogScore(),), trend="self")[0]
    fixed = np.asarray(stage.select(ctx, stage.score(ctx)).slots[0]) - vis[0]
    assert raw.min() < 8 and np.sort(raw)[8:].min() >= 40  # the sink and the end of the span
    assert fixed.min() >= 8 and fixed.mean() < 44 and np.sort(fixed)[2] < 30
