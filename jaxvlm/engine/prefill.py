"""Prefill in segments between pruning stages, with a KV cache per segment (DESIGN: "caches").

    plan = make_plan(cfg, schedule, bucket, visual_counts, max_new)      # host side, static
    state, caches, kept, x_last = prefill(text_w, cfg, state0, plan)    # jittable

Segment i runs decoder layers [plan.bounds[i]) over T_i = plan.lengths[i] slots. At stage i the engine scores
the slots with the stage's query rows only (never a T x T matrix outside the fused attention), selects
`stage.keep` visual slots per row, keeps every valid text slot, and gathers the TokenState (order preserved) into
T_{i+1} = T_i - max(0, V_floor - keep) slots, with V_floor a static lower bound of the visual tokens of every
row (the batch minimum, floored to a multiple of VISUAL_BUCKET so nearby counts share a program). Rows with more
room than survivors carry padding slots (valid False).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxvlm.config import TextConfig
from jaxvlm.engine import state as token_state
from jaxvlm.engine.state import TokenState
from jaxvlm.layers import attention_logits, causal_mask, rms_norm
from jaxvlm.models import decoder

# Static lower bounds of visual tokens per row are floored to multiples of this (fewer distinct programs).
VISUAL_BUCKET = 64


@dataclasses.dataclass(frozen=True)
class Plan:
    """Static description of one prefill: segment layer bounds, slot counts, stages, cache headroom."""

    stages: tuple  # the schedule (Stage values)
    bounds: tuple[tuple[int, int], ...]  # layers [start, stop) of each segment
    lengths: tuple[int, ...]  # T_i, slots entering each segment
    max_new: int  # cache headroom for decode (0: no caches)


def make_plan(cfg: TextConfig, schedule, bucket: int, visual_counts, max_new: int) -> Plan:
    """Validate `schedule` against the model and batch (host-side errors) and derive the static sizes.

    visual_counts: number of visual tokens of each row (numpy / list), used for the static lower bound and to
    refuse budgets larger than the candidates.

    Count resolution: a stage with a `resolve(n_in, n_visual)` method (ratio-defined counts left open at
    construction, see jaxvlm.prune.base) is replaced by `stage.resolve(n_in, n_visual)` before validation, with
    n_visual = the batch's smallest visual count (exact, not floored: every row has at least that many) and
    n_in = n_visual at the first stage, the previous stage's resolved `keep` after it. Ratios therefore resolve
    against the batch's smallest visual count: rows with more visual tokens keep the same static number.
    `Plan.stages` holds the resolved (concrete, hashable) stages, so a program is compiled per (bucket,
    resolved schedule).
    """
    stages = tuple(schedule or ())
    counts = np.asarray(visual_counts, dtype=np.int64).reshape(-1)
    v_min = int(counts.min()) if counts.size else 0
    v_max = int(counts.max()) if counts.size else 0
    capacity_floor = (v_min // VISUAL_BUCKET) * VISUAL_BUCKET
    capacity = v_max
    bounds, lengths = [], [bucket]
    start, prev_layer = 0, 0
    resolved, n_in = [], v_min
    for i, st in enumerate(stages):
        name = f"pruning stage {i} ({type(st).__name__})"
        if hasattr(st, "for_model"):  # a stage that depends on the language model (a preset's trend, prune.debiased)
            st = st.for_model(cfg)
        st = resolve_stage(st, n_in, v_min, name)
        if hasattr(st, "fit"):  # the stage's budget rule for a keep above `capacity` (jaxvlm.prune.base)
            st = st.fit(int(capacity))
        resolved.append(st)
        for attr in ("layer", "score_layer", "keep", "query_rows", "score", "select"):
            if not hasattr(st, attr):
                raise ValueError(f"{name}: not a pruning Stage (missing {attr!r}; see jaxvlm.prune.base)")
        try:
            hash(st)
        except TypeError as e:
            raise ValueError(f"{name}: stages must be hashable (frozen dataclasses)") from e
        layer, keep, score_layer = st.layer, st.keep, st.score_layer
        if not isinstance(layer, (int, np.integer)) or not 0 <= layer < cfg.num_layers:
            raise ValueError(f"{name}: layer {layer!r} must be an int in [0, {cfg.num_layers})")
        if i and layer <= prev_layer:
            raise ValueError(f"{name}: stage layers must be strictly increasing (got {layer} after {prev_layer})")
        if score_layer is not None and not (prev_layer <= score_layer <= layer):
            raise ValueError(f"{name}: score_layer {score_layer} must lie in [{prev_layer}, {layer}] "
                             "(the segment before the stage)")
        if keep is None:
            raise ValueError(f"{name}: keep is unresolved (None) and the stage has no resolve(n_in, n_visual) "
                             "method (see jaxvlm.prune.base)")
        if not isinstance(keep, (int, np.integer)) or keep < 0:
            raise ValueError(f"{name}: keep must be a non-negative int, got {keep!r}")
        if keep > capacity:
            raise ValueError(f"{name}: budget keep={keep} exceeds the {capacity} visual tokens available at this "
                             "stage (the batch's largest visual count at the first stage, the previous stage's "
                             "keep after it)")
        bounds.append((start, layer))
        lengths.append(lengths[-1] - max(0, capacity_floor - keep))
        capacity, capacity_floor = keep, min(keep, capacity_floor)
        n_in = min(int(keep), n_in)
        start = prev_layer = layer
    bounds.append((start, cfg.num_layers))
    return Plan(stages=tuple(resolved), bounds=tuple(bounds), lengths=tuple(lengths), max_new=int(max_new))


def resolve_stage(stage, n_in: int, n_visual: int, name: str = "pruning stage"):
    """`stage.resolve(n_in, n_visual)` when the stage has that hook (host side), else the stage itself.

    n_in: static visual tokens entering the stage (every row has at least that many); n_visual: the batch's
    smallest ORIGINAL visual count (what PyramidDrop's ratios refer to). Errors name the stage."""
    fn = getattr(stage, "resolve", None)
    if fn is None:
        return stage
    try:
        out = fn(int(n_in), int(n_visual))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{name}: cannot resolve its token counts for {n_in} visual tokens entering it "
                         f"({n_visual} in the input): {e}") from e
    return stage if out is None else out


# ------------------------------------------------------------------------------------------- scoring


def _layer_weights(layers, index: int, x_in) -> dict:
    """Weights of layer `index` from stacked weights (dict of (L, ...) arrays, read once `x_in`, the layer's
    input, is computed: see decoder.layer_weights) or a per-layer list."""
    if isinstance(layers, (list, tuple)):
        return layers[index]
    return decoder.layer_weights(layers, index, after=x_in)


def _rows_query(lw: dict, x_btd, positions_pbt, rows_br, cfg: TextConfig):
    """Queries (B, R, N, H) of the scoring rows: input norm, q projection (+bias), RoPE at the rows' positions."""
    xr = jnp.take_along_axis(x_btd, rows_br[:, :, None], axis=1)
    cos, sin = decoder.rotary(jnp.take_along_axis(positions_pbt, rows_br[None], axis=2), cfg)
    return decoder.project_q(lw, rms_norm(xr, lw["attn_norm"], cfg.rms_norm_eps), cos, sin)


def _keys(lw: dict, x_btd, positions_pbt, cfg: TextConfig):
    """Post-RoPE keys (B, T, K, H) of one layer on hidden states entering it."""
    cos, sin = decoder.rotary(positions_pbt, cfg)
    return decoder.project_k(lw, rms_norm(x_btd, lw["attn_norm"], cfg.rms_norm_eps), cos, sin)


def _row_logits(lw, x_in, keys, state: TokenState, rows, cfg):
    """(B, N, R, T) causal, masked attention logits of the scoring rows against `keys`."""
    q = _rows_query(lw, x_in, state.positions, rows, cfg)
    t = state.length
    mask = state.valid[:, None, :] & (jnp.arange(t)[None, None, :] <= rows[:, :, None])
    return attention_logits(q, keys, mask)


# -------------------------------------------------------------------------------------------- stages


def apply_stage(stage, state: TokenState, ctx: StageContext, new_length: int):
    """Score, select and gather: returns (next TokenState (B, new_length), kept (B, keep) input indices)."""
    b, t = state.valid.shape
    scores = stage.score(ctx)
    sel = stage.select(ctx, scores)
    slots = sel.slots.astype(jnp.int32)
    cand = state.valid & state.visual
    rows = jnp.arange(b)[:, None]
    safe = jnp.where(slots < 0, t, slots)  # out of range -> dropped by the scatter
    chosen = jnp.zeros((b, t), bool).at[rows, safe].set(True, mode="drop") & cand
    x = state.x
    if sel.x is not None:  # merging methods: replacement hidden states for the kept slots
        x = x.at[rows, safe].set(sel.x.astype(x.dtype), mode="drop")
        state = state.replace(x=x)
    slot = jnp.arange(t, dtype=jnp.int32)
    last = jnp.max(jnp.where(state.valid, slot, -1), axis=1, keepdims=True)
    keep = state.valid & (~state.visual | chosen | (slot[None] == last))
    order = jnp.argsort(jnp.where(keep, slot[None], t + slot[None]), axis=1)[:, :new_length].astype(jnp.int32)
    valid = jnp.take_along_axis(keep, order, axis=1)
    nxt = token_state.gather(state, order, valid)
    if getattr(stage, "renumber", False):
        renum = (jnp.cumsum(valid, axis=1) - 1).astype(jnp.int32)
        nxt = nxt.replace(positions=jnp.where(valid[None], jnp.broadcast_to(renum, nxt.positions.shape), 0))
    # kept: input indices of the surviving visual slots, ascending, -1 where fewer.
    src = jnp.take_along_axis(state.src, jnp.where(slots < 0, 0, slots), axis=1)
    ok = (slots >= 0) & jnp.take_along_axis(chosen, jnp.where(slots < 0, 0, slots), axis=1)
    big = jnp.iinfo(jnp.int32).max
    kept = jnp.sort(jnp.where(ok, src, big), axis=1)
    return nxt, jnp.where(kept == big, -1, kept).astype(jnp.int32)


# ------------------------------------------------------------------------------------------- prefill


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SegmentCache:
    """KV cache of one segment for decode.

    k, v: the prompt's keys/values, heads-major (L_seg, B, K, T_i, H) (stacked weights path) or a tuple of
    L_seg arrays (B, K, T_i, H) (per-layer CPU path); `valid` (B, T_i) marks the real prompt slots.
    tail_k, tail_v: the generated tokens' keys/values, same layout with max_new slots instead of T_i; slot s holds
    decode step s. The prompt part is never written during decode (loop-invariant: no per-step copies); only
    the small tail is updated in place.
    """

    k: Any
    v: Any
    valid: jax.Array
    tail_k: Any
    tail_v: Any


def _is_list(layers) -> bool:
    return isinstance(layers, (list, tuple))


def _new_kv(layers, state: TokenState, n_layers: int, max_new: int):
    """The segment's KV cache under construction: None without decode, lists for per-layer weights, else
    zero heads-major buffers (n_layers, B, K, T_i, H) written in place layer by layer (built once)."""
    if not max_new or n_layers <= 0:
        return None
    if _is_list(layers):
        return ([], [])
    wk = layers["wk"]
    shape = (n_layers, state.batch, wk.shape[2], state.length, wk.shape[3])
    dtype = jnp.result_type(state.x.dtype, wk.dtype)
    return jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)


def _put(kv, index: int, k, v):
    """Add one layer's k, v (B, T, K, H) at segment layer `index` to a cache under construction."""
    if kv is None:
        return None
    if isinstance(kv[0], list):
        return kv[0] + [jnp.swapaxes(k, 1, 2)], kv[1] + [jnp.swapaxes(v, 1, 2)]
    return decoder.write_kv(kv, index, k, v)


def _run(layers, start, stop, x, cos, sin, mask, cfg, kv, seg_start):
    """Layers [start, stop) over x, their k, v added to `kv` (see _new_kv) at index layer - seg_start.

    `layers`: stacked weights (scanned by layer index) or a per-layer list (unrolled, see api.per_layer_weights).
    """
    if stop <= start:
        return x, kv
    if not _is_list(layers):
        if kv is None:
            return decoder.run_layers(layers, x, cos, sin, mask, cfg, start, stop)[0], None
        return decoder.run_layers(layers, x, cos, sin, mask, cfg, start, stop, cache=kv, cache_at=start - seg_start)
    for i in range(start, stop):
        x, (k, v) = decoder.layer(layers[i], x, cos, sin, mask, cfg)
        kv = _put(kv, i - seg_start, k, v)
    return x, kv


def last_valid_slot(valid_bt: jax.Array) -> jax.Array:
    """(B,) int32 index of each row's last valid slot (0 for an empty row)."""
    t = valid_bt.shape[1]
    return jnp.max(jnp.where(valid_bt, jnp.arange(t, dtype=jnp.int32), 0), axis=1)


def _segment_cache(kv, valid, max_new: int) -> SegmentCache:
    """The built prompt cache plus an empty tail of max_new slots, allocated only once the prompt cache is
    complete (otherwise XLA materialises the zeros at the program start and holds them through prefill)."""
    k, v = kv
    if isinstance(k, list):
        k, v = tuple(k), tuple(v)
    first = jax.tree.leaves(k)[-1]
    zero = decoder.after_value(0, first).astype(first.dtype)

    def tail(a):  # (..., T_i, H) -> zeros (..., max_new, H)
        return jnp.broadcast_to(zero, a.shape[:-2] + (max_new, a.shape[-1]))

    tails = lambda: jax.tree.map(tail, k)  # noqa: E731
    return SegmentCache(k=k, v=v, valid=valid, tail_k=tails(), tail_v=tails())


def prefill(text_w: dict, cfg: TextConfig, state: TokenState, plan: Plan, embeds=None, pad_fn=None,
            layer_list=None, last_only: bool = False):
    """Run all segments and stages. Returns (final TokenState, caches, kept, x_last).

    x_last: (B, 1, D) final hidden state at each row's last valid slot. With `last_only` (generation) the final
    layer computes its output at that slot only (decoder.layer_at_rows), and the returned state's `x` is that
    layer's input, not its output: use x_last.

    caches: one SegmentCache per segment of `plan.bounds` (None for an empty segment; no caches at all when
    plan.max_new == 0); kept: one (B, keep) int32 array of input indices per stage.
    pad_fn(stage, state) -> (B, T) bool builds `StageContext.pad` (padding patches; None: all False).
    layer_list: optional per-layer weights (a list of dicts) used instead of the stacked ones.
    """
    layers = text_w["layers"] if layer_list is None else layer_list
    caches, kept, x_last = [], [], None
    for i, (start, stop) in enumerate(plan.bounds):
        stage = plan.stages[i] if i < len(plan.stages) else None
        cos, sin = decoder.rotary(state.positions, cfg)
        mask = causal_mask(state.valid)
        kv = _new_kv(layers, state, stop - start, plan.max_new)
        logits = rows = weights = keys = None
        if stage is not None and stage.score_layer is not None and stage.score_layer < stop:
            sl = stage.score_layer
            x_in, kv = _run(layers, start, sl, state.x, cos, sin, mask, cfg, kv, start)
            lw = _layer_weights(layers, sl, x_in)
            x, (keys, v) = decoder.layer(lw, x_in, cos, sin, mask, cfg)
            kv = _put(kv, sl - start, keys, v)
            rows, weights = stage.query_rows(state)
            logits = _row_logits(lw, x_in, keys, state, rows, cfg)
            x, kv = _run(layers, sl + 1, stop, x, cos, sin, mask, cfg, kv, start)
        elif last_only and i == len(plan.bounds) - 1 and stop > start:
            x, kv = _run(layers, start, stop - 1, state.x, cos, sin, mask, cfg, kv, start)
            x_last, (k, v) = decoder.layer_at_rows(_layer_weights(layers, stop - 1, x), x, cos, sin, mask,
                                                   last_valid_slot(state.valid), cfg)
            kv = _put(kv, stop - 1 - start, k, v)
        else:
            x, kv = _run(layers, start, stop, state.x, cos, sin, mask, cfg, kv, start)
        state = state.replace(x=x)
        if plan.max_new and kv is None:  # a stage before layer 0 leaves an empty first segment
            caches.append(None)
        elif plan.max_new:
            caches.append(_segment_cache(kv, state.valid, plan.max_new))
        if stage is None:
            continue
        if stage.score_layer is not None and stage.score_layer == stage.layer:  # PyramidDrop-style recompute
            lw = _layer_weights(layers, stage.layer, state.x)
            keys = _keys(lw, state.x, state.positions, cfg)
            rows, weights = stage.query_rows(state)
            logits = _row_logits(lw, state.x, keys, state, rows, cfg)
        from jaxvlm.prune.base import StageContext  # lazy: jaxvlm.prune.base imports the engine's state

        ctx = StageContext(
            state=state, logits=logits, row_slots=rows, row_weight=weights, keys=keys,
            pad=jnp.zeros_like(state.valid) if pad_fn is None else pad_fn(stage, state), embeds=embeds,
        )
        state, k = apply_stage(stage, state, ctx, plan.lengths[i + 1])
        kept.append(k)
    if x_last is None:
        x_last = jnp.take_along_axis(state.x, last_valid_slot(state.valid)[:, None, None], axis=1)
    return state, tuple(caches), tuple(kept), x_last
