"""The scores a pruning stage ranks with, recorded from inside the compiled engine (for calibration).

    stage = probe_target(prune.parse_schedule("debiased_fastv"))     # the first attention-based stage
    rec = collect(params, batches, stage)                            # Recorded(scores, positions, valid)

`Probe(stage)` is a pruning stage that behaves exactly as `stage` (same layer, score layer, query rows,
budget rules, selection) and hands the stage's own score of every slot to the host through
`jax.debug.callback`, together with each slot's position in its visual span (`TokenState.span_index`),
the scoring rows' head-mean attention over every slot (for sink shares) and the engine's padding flag (`StageContext.pad`, built from the probe's `pad_threshold`
and `pad_variant` as for a debiased stage). For a `prune.debiased` stage it records the inner method's
score, i.e. before detrending and padding suppression. The engine itself is untouched.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Any

import jax
import numpy as np

_SINKS: dict[int, list] = {}
_IDS = itertools.count(1)


def _record(sink: int, scores, span_index, candidate, pad, attention) -> None:
    _SINKS[sink].append(tuple(np.asarray(a) for a in (scores, span_index, candidate, pad, attention)))


@dataclasses.dataclass(frozen=True)
class Probe:
    """`inner` (a raw stage; a Debiased wrapper is unwrapped by `probe_target`) plus a score recorder."""

    inner: Any
    sink: int
    pad_threshold: float = 0.5
    pad_variant: str = "release"

    layer = property(lambda self: self.inner.layer)
    score_layer = property(lambda self: self.inner.score_layer)
    keep = property(lambda self: self.inner.keep)

    def __getattr__(self, name):  # method attributes the engine may ask for (budget_default, renumber, ...)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def resolve(self, n_in: int, n_visual: int) -> "Probe":
        return self._forward("resolve", n_in, n_visual)

    def fit(self, n_max: int) -> "Probe":
        return self._forward("fit", n_max)

    def _forward(self, hook, *args) -> "Probe":
        fn = getattr(self.inner, hook, None)
        return self if fn is None else dataclasses.replace(self, inner=fn(*args))

    def query_rows(self, state):
        return self.inner.query_rows(state)

    def score(self, ctx):
        from jaxvlm.prune import common

        scores = self.inner.score(ctx)
        st = ctx.state
        attention = common.weighted_rows(common.head_mean_probs(ctx.logits), ctx.row_weight, "mean")
        jax.debug.callback(functools.partial(_record, self.sink), scores, st.span_index, st.valid & st.visual,
                           ctx.pad, attention)
        return scores

    def select(self, ctx, scores):
        return self.inner.select(ctx, scores)


def probe_target(schedule) -> tuple[Any, float, str]:
    """(raw stage, pad threshold, pad variant) of the schedule's first attention-based stage: what the
    release calibrates and debiases. A Debiased stage gives its inner stage and its padding settings."""
    from jaxvlm.errors import UserError

    for st in schedule:
        inner = getattr(st, "inner", None)
        raw = inner if inner is not None and hasattr(st, "recency") else st
        if getattr(raw, "attention_based", True) and getattr(raw, "score_layer", None) is not None:
            threshold = getattr(st, "pad_threshold", None)
            return raw, 0.5 if threshold is None else float(threshold), getattr(st, "pad_variant", None) or "release"
    raise UserError("the schedule has no attention-scored stage: there is no score to calibrate a trend on")


@dataclasses.dataclass
class Recorded:
    """Per sample (S rows, padded to the longest visual span count N with position -1 and valid 0):
    scores (S, N) float64, positions (S, N) int (span index), valid (S, N) {0,1} (0: padding patch);
    first_share (S,) / span_share (S,): the scoring rows' attention on the first token / on the visual span."""

    scores: np.ndarray
    positions: np.ndarray
    valid: np.ndarray
    first_share: np.ndarray
    span_share: np.ndarray


def collect(params, batches, stage, pad_threshold: float = 0.5, pad_variant: str = "release",
            progress=None) -> Recorded:
    """Run `jaxvlm.forward` with a Probe around `stage` over `batches` (dicts of model inputs, one sample per
    row) and gather each row's visual-token scores. `progress(i, n)` is called after each batch."""
    import jaxvlm

    sink = next(_IDS)
    _SINKS[sink] = []
    probe = Probe(stage, sink, pad_threshold, pad_variant)
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    shares: list[tuple[float, float]] = []
    try:
        for i, inputs in enumerate(batches):
            jaxvlm.forward(params, prune=(probe,), **inputs).logits.block_until_ready()
            jax.effects_barrier()
            (scores, span, cand, pad, attn), = _SINKS[sink]
            _SINKS[sink].clear()
            for b in range(scores.shape[0]):
                sel = cand[b]
                rows.append((scores[b][sel], span[b][sel], ~pad[b][sel]))
                shares.append((float(attn[b, 0]), float(attn[b][sel].sum())))
            if progress:
                progress(i + 1, len(batches))
    finally:
        _SINKS.pop(sink, None)
    n = max(len(r[0]) for r in rows)
    first, span_share = (np.asarray(v) for v in zip(*shares))
    out = Recorded(np.zeros((len(rows), n)), np.full((len(rows), n), -1, np.int64), np.zeros((len(rows), n)),
                   first, span_share)
    for j, (s, x, v) in enumerate(rows):
        out.scores[j, :len(s)], out.positions[j, :len(s)], out.valid[j, :len(s)] = s, x, v
    return out
