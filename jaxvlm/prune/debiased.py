"""`prune.debiased`: attention debiasing (METHOD.md) wrapped around a method's `score`, knowing nothing about it.

    prune.debiased(prune.fastv(2, 128), trend=debias.release_trend("fastv"), pad_threshold=0.5)
    prune.debiased_fastv()                        # the release's recipe; setting="original"|"padding"|"recency"|"both"

At the wrapped stage: scores = suppress_padding(detrend(score(ctx), span_index, trend), ~ctx.pad)
(s * w(x) then s * mask, the release's `s * mask * w`). Positions are the tokens' raster index within their
visual span (`TokenState.span_index`, gathered through earlier stages, so later stages see ORIGINAL positions);
a `debias.Trend2D` uses (row, col) instead.

Budget under padding suppression (METHOD.md section 3): "lower" (FastV's rule) removes padding patches from the
candidates, so fewer than K tokens survive when fewer non-padding ones exist (never zero: a row whose visual
tokens are all padding keeps them as candidates, and the host-built masks are never empty, `stage_pad_mask`);
"fill" keeps K and lets padding tokens (score 0) fill up. Default per method (`stage.budget_default`), override
with `budget=`. At plan time a "lower" stage's K above the visual tokens available is lowered to them (`fit`).
For attention-free methods (DART, DivPrune, VisionZip) the score is not debiased; padding=True removes padding
patches from their candidates.

Which stages: "first" (the release: only the first attention-based selection over the full grid) or "all"
(opt-in extension: every attention-based stage).

Trends (`trend=`): a `debias.Trend` / `Trend2D`, a trend JSON (`jaxvlm calibrate`), "self" (`debias.SelfTrend`:
each row's own robust exponential, calibration-free; padding and position-less tokens excluded from its
estimate) or, in the presets, "release" (the release's LLaVA-1.5 trend, explicitly). A preset given no trend
uses its per-family default (docs/METHOD.md, "Trends on other token counts"), bound at plan time through
`Debiased.for_model` (the engine's hook, jaxvlm.engine.prefill.make_plan): the release's trend, unstretched, on
the LLaVA families (LLaVA-1.5; LLaVA-NeXT per tile; Video-LLaVA per frame: positions are the model's
`span_index`), `SelfTrend()` on M-RoPE models (Qwen2-VL / Qwen2.5-VL), whose FastV score falls with position
where LLaVA's rises. Every `Trend` is clamped beyond the span it was fitted over (576 for the release's).

`release_shift=True` reproduces the release's FastV / TokenCarve window, hard-coded at offset 36 while the
image starts at 35 (METHOD.md section 4): the method sees every image run moved one slot later, i.e. image
token 0 leaves the window (and is always kept, as the release keeps everything before the window) and the
first token after the image joins it as window position N-1; window position j is scored with trend w[j] and
padding flag of patch j, exactly the release's `s * mask[j] * w[j]`. A selected text token costs a budget slot
(kept anyway as text), as in the release. `keep` grows by one (token 0). One image per row.

The engine builds `StageContext.pad` from the wrapped stage's `pad_threshold` and `pad_variant` ("release":
`debias.pad_mask`; "sparsevlm": the bilinear pixel-mask variant; "unpad": FastV's integer unpadding).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxvlm import debias
from jaxvlm.prune import common
from jaxvlm.prune.base import StageContext

PAD_VARIANTS = ("release", "sparsevlm", "unpad")
SETTINGS = {  # our names and the release's switch names
    "original": (False, False), "paper": (False, False),
    "padding": (False, True), "before": (False, True),
    "recency": (True, False),
    "both": (True, True), "after": (True, True),
}


@dataclasses.dataclass(frozen=True)
class Debiased:
    """A stage whose `score` is debiased; everything else is the inner stage's (attributes delegate to it)."""

    inner: Any
    trend: Any = None  # debias.Trend | debias.Trend2D (hashable); required when recency=True
    recency: bool = True
    padding: bool = True
    pad_threshold: float = 0.5
    pad_variant: str = "release"
    budget_rule: str | None = None  # "lower" | "fill"; None: inner.budget_default
    release_shift: bool = False
    default_trend: bool = False  # `trend` is a preset's per-family default, replaced by `for_model` at plan time

    def __post_init__(self):
        object.__setattr__(self, "trend", debias.as_trend(self.trend))  # a JSON file path or dict loads here
        if self.recency and self.trend is None:
            raise ValueError("recency=True needs a trend (e.g. jaxvlm.debias.release_trend('fastv'))")
        if self.recency and not getattr(self.inner, "attention_based", True):
            raise ValueError(f"{type(self.inner).__name__} is not attention-scored: recency detrending does not "
                             "apply (use recency=False; padding masks still do)")
        if not 0.0 <= float(self.pad_threshold) < 1.0:
            raise ValueError(f"pad_threshold={self.pad_threshold!r} must be in [0, 1)")
        if self.pad_variant not in PAD_VARIANTS:
            raise ValueError(f"pad_variant={self.pad_variant!r}: expected one of {PAD_VARIANTS}")
        if self.budget_rule is not None:
            common.check_budget_mode(self.budget_rule)
        hash(self.trend)

    # -- the Stage protocol ----------------------------------------------------------------------------------
    @property
    def layer(self) -> int:
        return self.inner.layer

    @property
    def score_layer(self):
        return self.inner.score_layer

    @property
    def keep(self) -> int | None:
        keep = self.inner.keep
        return None if keep is None else keep + (1 if self.release_shift else 0)

    def for_model(self, text_config) -> "Debiased":
        """The engine's plan-time hook (before `resolve`): a preset's default trend for the model it runs on.
        text_config: the language model's `jaxvlm.config.TextConfig`; M-RoPE (`rope.mrope_section`, i.e. the
        Qwen2-VL / Qwen2.5-VL families) gets `debias.SelfTrend()`, every other model keeps the release's trend.
        An explicitly given trend is never replaced; the bound stage equals the one built with its trend given."""
        if not (self.default_trend and self.recency):
            return self
        trend = debias.SelfTrend() if uses_mrope(text_config) else self.trend
        return dataclasses.replace(self, trend=trend, default_trend=False)

    def resolve(self, n_in: int, n_visual: int) -> "Debiased":
        """Forward the engine's count resolution (jaxvlm.prune.base) to the inner stage, keeping the wrapper."""
        return self._forward("resolve", n_in, n_visual)

    def fit(self, n_max: int) -> "Debiased":
        """Forward the budget rule (jaxvlm.prune.base) to the inner stage; with release_shift the window holds
        one token fewer (image token 0 is kept on top of the inner keep)."""
        return self._forward("fit", n_max - (1 if self.release_shift else 0))

    def _forward(self, hook: str, *args) -> "Debiased":
        fn = getattr(self.inner, hook, None)
        if fn is None:
            return self
        inner = fn(*args)
        return self if inner is self.inner else dataclasses.replace(self, inner=inner)

    @property
    def renumber(self) -> bool:
        return getattr(self.inner, "renumber", False)

    @property
    def budget_mode(self) -> str:
        return self.budget_rule or getattr(self.inner, "budget_default", "fill")

    def __getattr__(self, name):  # other method attributes (attention_based, n_select, ...)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def query_rows(self, state):
        return self.inner.query_rows(state)

    def score(self, ctx: StageContext) -> jax.Array:
        if self.release_shift:
            ctx = release_window(ctx)
        scores = self.inner.score(ctx)
        if not getattr(self.inner, "attention_based", True):
            return scores
        st = ctx.state
        if self.recency:
            if isinstance(self.trend, debias.Trend2D):
                scores = debias.detrend(scores, (st.row, st.col), self.trend)
            else:  # a SelfTrend is estimated on the valid non-padding visual tokens only
                scores = debias.detrend(scores, st.span_index, self.trend, weight=st.valid & st.visual & ~ctx.pad)
        if self.padding:
            scores = debias.suppress_padding(scores, ~ctx.pad)
        return scores

    def select(self, ctx: StageContext, scores: jax.Array):
        real = ctx.state
        if self.release_shift:
            ctx = release_window(ctx)
        lower = self.budget_mode == "lower" or not getattr(self.inner, "attention_based", True)
        if self.padding and lower:
            st = ctx.state
            pad = ctx.pad & st.visual
            # never zero: a row whose visual tokens are all padding keeps them as candidates (the engine's
            # host-built masks are never empty per image, see stage_pad_mask; this covers other callers)
            pad = pad & jnp.any(st.valid & st.visual & ~pad, axis=1, keepdims=True)
            ctx = ctx.replace(state=st.replace(valid=st.valid & ~pad))
        sel = self.inner.select(ctx, scores)
        if not self.release_shift:
            return sel
        # image token 0 lies before the release's window: always kept
        t = real.valid.shape[1]
        cand = real.valid & real.visual
        first = jnp.argmax(cand, axis=1).astype(jnp.int32)
        first = jnp.where(jnp.any(cand, axis=1), first, -1)[:, None]
        slots = jnp.concatenate([sel.slots.astype(jnp.int32), first], axis=1)
        x = None
        if sel.x is not None:
            x0 = jnp.take_along_axis(real.x, jnp.clip(first, 0, t - 1)[:, :, None], axis=1)
            x = jnp.concatenate([sel.x, x0.astype(sel.x.dtype)], axis=1)
        return sel.replace(slots=slots, x=x)


def release_window(ctx: StageContext) -> StageContext:
    """The release's off-by-one window: per-token visual metadata (and padding flags) shifted one slot later."""
    st = ctx.state

    def shift(a, fill):
        return jnp.concatenate([jnp.full(a.shape[:1] + (1,), fill, a.dtype), a[:, :-1]], axis=1)

    visual = shift(st.visual, False) & st.valid
    idx = {name: jnp.where(visual, shift(getattr(st, name), -1), -1) for name in ("span_index", "row", "col", "media",
                                                                                  "frame")}
    state = st.replace(visual=visual, **idx)
    return ctx.replace(state=state, pad=shift(ctx.pad, False) & visual)


def uses_mrope(text_config) -> bool:
    """Whether a language model uses multimodal rotary positions (Qwen2-VL / Qwen2.5-VL's M-RoPE)."""
    rope = getattr(text_config, "rope", None)
    return getattr(rope, "mrope_section", None) is not None


def stage_pad_mask(stage, image_sizes, grid: int, image_size: int) -> np.ndarray:
    """(M, grid*grid) float32 {0,1} padding mask (1 = image) of a debiased `stage` for images of `image_sizes`
    (M, 2) (width, height), on the host in float64: the stage's variant (`pad_variant`, `pad_threshold`), the
    release's mask bit for bit - except that it is never empty.

    An image thin enough that no patch is image enough for the rule (LLaVA-1.5, 336 px / 14 px, threshold 0.5:
    every aspect ratio above 24:1, e.g. 2000x3; any variant) would leave a "lower" budget zero visual tokens
    and a "fill" budget only padding ranked by index. Such an image keeps instead the patches it touches (its
    strip of the padded square: a 3-pixel-tall image still covers parts of 2 patch rows, 48 patches), and a
    warning names it."""
    sizes = np.asarray(image_sizes)
    threshold = float(stage.pad_threshold)
    variant = getattr(stage, "pad_variant", "release")
    mask = np.asarray(debias.make_pad_mask(sizes, variant=variant, threshold=threshold, grid=grid,
                                           image_size=image_size, exact=True), np.float32)
    empty = np.flatnonzero(mask.max(axis=-1, initial=0.0) <= 0)
    if empty.size:
        touched = np.asarray(debias.pad_mask(sizes[empty], grid=grid, image_size=image_size,
                                             threshold=float(np.nextafter(1.0, 0.0))), np.float32)
        mask[empty] = touched
        for i, t in zip(empty.tolist(), touched):
            w, h = sizes[i].tolist()
            warnings.warn(f"image {i} ({w}x{h} pixels, aspect {max(w, h) / min(w, h):.0f}:1): no patch of its "
                          f"{image_size}-pixel padded square is image enough for the {variant!r} pad mask "
                          f"(pad_threshold {threshold:g}), so debiased pruning would keep none of its visual "
                          f"tokens; keeping the {int(t.sum())} patches it touches as its non-padding tokens",
                          stacklevel=2)
    return mask


def _as_schedule(method_or_schedule) -> tuple:
    if isinstance(method_or_schedule, (tuple, list)):
        return tuple(method_or_schedule)
    if hasattr(method_or_schedule, "score"):
        return (method_or_schedule,)
    raise TypeError(f"expected a pruning stage or a schedule (tuple of stages), got {method_or_schedule!r}")


def debiased(method_or_schedule, trend=None, pad_threshold: float | None = None, recency: bool = True,
             padding: bool = True, stages: str = "first", release_shift: bool = False, budget: str | None = None,
             pad_variant: str = "release") -> tuple:
    """Wrap the schedule's first attention-based stage (stages="all": every one) with debiasing. Returns a schedule.

    recency: divide out `trend` (debias.Trend / Trend2D; required); padding: suppress padding patches
    (threshold `pad_threshold`, default 0.5). Attention-free stages only get padding (candidate removal)."""
    schedule = _as_schedule(method_or_schedule)
    if stages not in ("first", "all"):
        raise ValueError(f"stages={stages!r}: expected 'first' or 'all'")
    if not schedule:
        raise ValueError("empty schedule: nothing to debias")
    if not recency and not padding:
        return schedule
    if recency and trend is None:
        raise ValueError("recency=True needs trend= (e.g. jaxvlm.debias.release_trend('fastv'))")
    attn = [i for i, st in enumerate(schedule) if getattr(st, "attention_based", True)]
    if attn:
        targets = attn if stages == "all" else attn[:1]
    elif recency:
        raise ValueError("no attention-scored stage in this schedule: recency detrending does not apply "
                         "(use recency=False for padding suppression only)")
    else:
        targets = list(range(len(schedule))) if stages == "all" else [0]
    out = list(schedule)
    for i in targets:
        st = out[i]
        if isinstance(st, Debiased):
            raise ValueError(f"stage {i} is already debiased")
        is_attn = getattr(st, "attention_based", True)
        out[i] = Debiased(inner=st, trend=trend if (recency and is_attn) else None, recency=recency and is_attn,
                          padding=padding, pad_threshold=0.5 if pad_threshold is None else float(pad_threshold),
                          pad_variant=pad_variant, budget_rule=budget, release_shift=release_shift)
    return tuple(out)


# ------------------------------------------------------------------------------------------------ presets


def _setting(setting: str) -> tuple[bool, bool]:
    if setting not in SETTINGS:
        raise ValueError(f"setting={setting!r}: expected one of {sorted(SETTINGS)} "
                         "(original/paper, padding/before, recency, both/after)")
    return SETTINGS[setting]


def _preset(schedule, setting, trend, release, pad_threshold, pad_variant="release", **kwargs) -> tuple:
    """The preset's schedule; trend None: `release` as the per-family default (Debiased.for_model), "release":
    `release` explicitly, anything else through debias.as_trend ("self", a Trend, a JSON file)."""
    recency, padding = _setting(setting)
    if not recency and not padding:
        return tuple(schedule)
    default = trend is None
    if default or (isinstance(trend, str) and trend == "release"):
        trend = release
    out = debiased(schedule, trend=trend if recency else None, pad_threshold=pad_threshold, recency=recency,
                   padding=padding, pad_variant=pad_variant, **kwargs)
    if not (default and recency):
        return out
    return tuple(dataclasses.replace(st, default_trend=True) if isinstance(st, Debiased) and st.recency else st
                 for st in out)


def debiased_fastv(setting: str = "both", layer: int = 2, keep: int = 128, pad_threshold: float = 0.5,
                   trend=None, **kwargs) -> tuple:
    """FastV K=2, keep 128, padding threshold 0.5, the release's cubic trend (trend=None: the per-family default,
    see the module docstring); budget lowered to the valid count.

    setting="padding" uses the release's integer-unpadding mask ("before" in its FastV code)."""
    from jaxvlm.prune.fastv import fastv

    variant = "unpad" if setting in ("padding", "before") else "release"
    return _preset(fastv(layer=layer, keep=keep), setting, trend, debias.release_trend("fastv"), pad_threshold,
                   variant, **kwargs)


def debiased_himap(setting: str = "both", benchmark: str = "gqa", text_layer: int = 2, text_keep: int = 115,
                   image_layer: int = 8, image_keep: int = 90, pad_threshold: float = 0.5, trend=None,
                   **kwargs) -> tuple:
    """HiMAP 2/115 then 8/90, padding 0.5, the release's per-benchmark exponential trend (stage 1 only)."""
    from jaxvlm.prune.himap import himap

    sched = himap(text_layer=text_layer, text_keep=text_keep, image_layer=image_layer, image_keep=image_keep)
    return _preset(sched, setting, trend, debias.release_trend("himap", benchmark), pad_threshold, **kwargs)


def debiased_pdrop(setting: str = "both", benchmark: str = "gqa", layers=(2, 10, 20), ratios=(0.32, 0.16, 0.08),
                   pad_threshold: float = 0.01, trend=None, n_visual: int | None = None,
                   **kwargs) -> tuple:
    """PyramidDrop [2,10,20] x .32/.16/.08 (184/92/46 of 576), padding threshold 0.01, first stage debiased.
    n_visual=None: keeps resolved at plan time from the batch's visual count (see prune.pdrop)."""
    from jaxvlm.prune.pdrop import pdrop

    return _preset(pdrop(layers=layers, ratios=ratios, n_visual=n_visual), setting, trend,
                   debias.release_trend("pdrop", benchmark), pad_threshold, **kwargs)


def debiased_sparsevlm(setting: str = "both", benchmark: str = "gqa", budget: int = 128,
                       pad_threshold: float = 0.5, trend=None, n_visual: int | None = None,
                       **kwargs) -> tuple:
    """SparseVLM v1.5, budget 128 -> [303,110,36] at layers [2,6,15], bilinear pixel pad mask (>= 0.5 kept).
    n_visual=None: recycling counts resolved at plan time (see prune.sparsevlm)."""
    from jaxvlm.prune.sparsevlm import sparsevlm

    return _preset(sparsevlm(budget=budget, n_visual=n_visual), setting, trend,
                   debias.release_trend("sparsevlm", benchmark), pad_threshold, "sparsevlm", **kwargs)


def debiased_tokencarve(setting: str = "both", benchmark: str = "gqa", keep: int = 64, pad_threshold: float = 0.5,
                        trend=None, **kwargs) -> tuple:
    """TokenCarve N=64 (select 96, merge 32), padding 0.5; only the attention (AV) branch is debiased."""
    from jaxvlm.prune.tokencarve import tokencarve

    return _preset(tokencarve(keep=keep), setting, trend, debias.release_trend("tokencarve", benchmark),
                   pad_threshold, **kwargs)


def debiased_illava(setting: str = "both", layers=(8,), keep_ratio: float = 0.7, pad_threshold: float = 0.5,
                    trend=None, **kwargs) -> tuple:
    """iLLaVA's LLM stage debiased (the paper reports it; the release ships no code nor trend): pass a trend
    (defaults to FastV's cubic, the closest released last-token attention trend)."""
    from jaxvlm.prune.illava import illava

    return _preset(illava(layers=layers, keep_ratio=keep_ratio), setting, trend, debias.release_trend("fastv"),
                   pad_threshold, **kwargs)


PRESETS = {
    "fastv": debiased_fastv,
    "himap": debiased_himap,
    "pdrop": debiased_pdrop,
    "sparsevlm": debiased_sparsevlm,
    "tokencarve": debiased_tokencarve,
    "illava": debiased_illava,
}
