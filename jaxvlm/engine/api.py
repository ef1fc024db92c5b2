"""`jaxvlm.generate` and the pruned `jaxvlm.forward`: host-side bucketing and planning around one jit each.

Host side (numpy, per call): pad the prompt axis to a bucket (multiple of BUCKET, padding on the right with
attention_mask 0), run the family's `prepare`, count visual tokens per row, validate the schedule and derive the
static plan (jaxvlm/engine/prefill.py). Device side (one compiled program per (bucket, plan, batch size, sampling
mode)): embed -> token state -> prefill segments and stages -> last-token logits -> decode loop.

`TRACE_COUNTS` counts how often each program body was traced (= compiled): tests use it to prove that two
prompt lengths in one bucket share a program.
"""

from __future__ import annotations

import collections
import functools
import inspect
import weakref

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxvlm import input_checks as checks
from jaxvlm.config import TextConfig
from jaxvlm.engine import sharding as shard
from jaxvlm.engine.decode import Sampling, decode
from jaxvlm.engine.prefill import Plan, make_plan, prefill
from jaxvlm.engine.state import TokenState, from_embedded, pad_to
from jaxvlm.errors import UserError
from jaxvlm.models import decoder

BUCKET = 64  # prompt lengths are padded to a multiple of this
TRACE_COUNTS: collections.Counter = collections.Counter()


@struct.dataclass
class GenerateOutput:
    tokens: jax.Array  # (B, max_new_tokens) int32, pad id after EOS
    kept: tuple = ()  # one (B, keep) int32 per stage: input indices of surviving visual tokens, -1 where fewer
    logits: jax.Array | None = None  # (B, max_new_tokens, V) float32 with output_logits=True (zeros after stop)


@struct.dataclass
class ForwardOutput:
    logits: jax.Array  # (B, T, V) float32; with pruning (B, T_final, V) at the surviving slots
    kept: tuple = ()  # one (B, keep) int32 per pruning stage
    src: jax.Array | None = None  # (B, T_final) input index of each logits row (-1: padding slot); pruned only


# Per-layer copies of the stacked layer weights (CPU only, models up to this size; see per_layer_weights).
PER_LAYER_MAX_BYTES = 2 << 30
_PER_LAYER: dict[int, tuple] = {}


def per_layer_weights(text_w: dict):
    """On CPU, the decoder's stacked layer weights as a list of per-layer arrays, made once per weights and
    cached (an extra copy of the layer weights held while the model lives); None elsewhere or for big models.

    Why: XLA:CPU feeds a matmul from a slice of a stacked weight by first copying the slice, every layer of every
    call (and every decode step). Measured on the 58.5M bench model: the 6 layers after a FastV stage at 192
    tokens take 58 ms with stacked weights and 37 ms with per-layer buffers; decode 32 -> 10 ms/token.
    On GPU/TPU the stacked weights are scanned as they are.
    """
    if jax.default_backend() != "cpu":
        return None
    layers = text_w["layers"]
    leaves = jax.tree.leaves(layers)
    if not leaves or sum(a.nbytes for a in leaves) > PER_LAYER_MAX_BYTES or isinstance(leaves[0], jax.core.Tracer):
        return None
    key = id(leaves[0])
    hit = _PER_LAYER.get(key)
    if hit is not None and hit[0]() is leaves[0]:
        return hit[1]
    split = [jax.tree.map(lambda w, i=i: w[i], layers) for i in range(leaves[0].shape[0])]
    _PER_LAYER[key] = (weakref.ref(leaves[0], lambda _, k=key: _PER_LAYER.pop(k, None)), split)
    return split


def bucket_length(t: int, bucket: int = BUCKET) -> int:
    return max(bucket, -(-int(t) // bucket) * bucket)


# ------------------------------------------------------------------------------------------- device


def host_pad_masks(config, image_sizes, stages):
    """Pad-to-square patch masks, built on the HOST (numpy float64, `debias.make_pad_mask(..., exact=True)`:
    bit-for-bit the release; in float32 inside jit 28 of 1e6 image sizes differ at threshold 0.01).

    One (M, grid*grid) float32 {0,1} array per stage of `stages` that carries a `pad_threshold` (set by
    prune.debiased; variant `stage.pad_variant`, default "release"; never empty, see
    prune.debiased.stage_pad_mask), None for the others. None when the model
    has no padded square grid or image_sizes is absent (then StageContext.pad is all False)."""
    vision = getattr(config, "vision", None)
    if image_sizes is None or not hasattr(vision, "grid") or not hasattr(vision, "image_size"):
        return None
    if not any(getattr(st, "pad_threshold", None) is not None for st in stages):
        return None
    from jaxvlm.prune.debiased import stage_pad_mask

    sizes = np.asarray(image_sizes)
    return tuple(None if getattr(st, "pad_threshold", None) is None
                 else stage_pad_mask(st, sizes, grid=vision.grid, image_size=vision.image_size) for st in stages)


def pad_flags_fn(stages, masks):
    """`pad_fn` for prefill from `host_pad_masks` (traced inside the program): a stage with a mask gets
    StageContext.pad = the visual tokens lying on padding patches of their image; None without masks."""
    if masks is None:
        return None
    from jaxvlm import debias

    table = {st: m for st, m in zip(stages, masks) if m is not None}

    def fn(stage, state):
        m = table.get(stage)
        if m is None:
            return jnp.zeros_like(state.valid)
        return debias.token_pad_flags(state.media, state.row, state.col, m) & state.valid

    return fn


def _generate_core(text_w, cfg: TextConfig, state: TokenState, key, sampling: Sampling, plan: Plan,
                   eos, pad_id, mesh, output_logits: bool = False, embeds=None, pad_fn=None, layer_list=None):
    TRACE_COUNTS["generate"] += 1
    b = state.batch
    state = shard.shard_state(state, mesh)
    state, caches, kept, x_last = prefill(text_w, cfg, state, plan, embeds=embeds, pad_fn=pad_fn,
                                          layer_list=layer_list, last_only=True)
    logits = decoder.final_logits(text_w, x_last, cfg)[:, 0]  # the vocab matmul for the last token only
    start_pos = jnp.max(jnp.where(state.valid[None], state.positions, -1), axis=(0, 2)) + 1
    tokens, step_logits = decode(text_w, cfg, plan, caches, logits, start_pos.astype(jnp.int32),
                                 state.positions.shape[0], key, sampling, eos, pad_id, plan.max_new, output_logits,
                                 layer_list=layer_list)
    return shard.host_readable((tokens[:b], tuple(k[:b] for k in kept),
                                (step_logits[:b] if output_logits else None)), mesh)


def _forward_core(text_w, cfg: TextConfig, state: TokenState, plan: Plan, mesh, embeds=None, pad_fn=None,
                  layer_list=None):
    TRACE_COUNTS["forward"] += 1
    b = state.batch
    state = shard.shard_state(state, mesh)
    state, _, kept, _ = prefill(text_w, cfg, state, plan, embeds=embeds, pad_fn=pad_fn, layer_list=layer_list)
    logits = decoder.final_logits(text_w, state.x, cfg)
    return shard.host_readable((logits[:b], tuple(k[:b] for k in kept), state.src[:b]), mesh)


_STATIC = ("plan", "mesh", "output_logits")


def _embed(params, batch, plan, mesh=None):
    """The family's embed; with `vision_cls=True` when a stage needs the vision tower's [CLS] attention and the
    family provides it (VISION_CLS; otherwise the fields stay None and such a stage raises its own error).
    Under a mesh the vision towers run sharded over images (sharding.image_parallel)."""
    from jaxvlm.model import family

    fam = family(params)
    if mesh is not None:
        params, batch = shard.image_parallel(params, batch, mesh)
    if getattr(fam, "VISION_CLS", False) and any(getattr(st, "needs_vision_cls", False) for st in plan.stages):
        return fam.embed(params, batch, vision_cls=True)
    return fam.embed(params, batch)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _generate_vlm(params, batch, key, sampling, plan, eos, pad_id, mesh, output_logits, layer_list=None,
                  pad_masks=None):
    emb = _embed(params, batch, plan, mesh)
    state = pad_to(from_embedded(emb), plan.lengths[0])
    return _generate_core(params.weights["text"], params.config.text, state, key, sampling, plan, eos, pad_id,
                          mesh, output_logits, embeds=emb.embeds, pad_fn=pad_flags_fn(plan.stages, pad_masks),
                          layer_list=layer_list)


@functools.partial(jax.jit, static_argnames=_STATIC + ("cfg",))
def _generate_embedded(text_w, state, key, sampling, cfg, plan, eos, pad_id, mesh, output_logits, layer_list=None):
    return _generate_core(text_w, cfg, state, key, sampling, plan, eos, pad_id, mesh, output_logits,
                          embeds=state.x, layer_list=layer_list)


@functools.partial(jax.jit, static_argnames=("plan", "mesh"))
def _forward_vlm(params, batch, plan, mesh, layer_list=None, pad_masks=None):
    emb = _embed(params, batch, plan, mesh)
    state = pad_to(from_embedded(emb), plan.lengths[0])
    return _forward_core(params.weights["text"], params.config.text, state, plan, mesh, embeds=emb.embeds,
                         pad_fn=pad_flags_fn(plan.stages, pad_masks), layer_list=layer_list)


@functools.partial(jax.jit, static_argnames=("cfg", "plan", "mesh"))
def _forward_embedded(text_w, state, cfg, plan, mesh, layer_list=None):
    return _forward_core(text_w, cfg, state, plan, mesh, embeds=state.x, layer_list=layer_list)


# --------------------------------------------------------------------------------------------- host


def _eos_pad(eos_token_id, pad_token_id) -> tuple[np.ndarray, np.ndarray]:
    """EOS ids as a (E,) int32 array (-1: none; traced, so new ids never recompile) and the pad id."""
    if eos_token_id is None:
        eos = []
    elif isinstance(eos_token_id, (int, np.integer)):
        eos = [int(eos_token_id)]
    else:
        eos = [int(e) for e in eos_token_id]
    pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
    return np.asarray(eos or [-1], np.int32), np.int32(pad)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _mesh_key(seed: int, mesh):
    return jax.lax.with_sharding_constraint(jax.random.key(seed), shard.replicated(mesh))


def _key(seed: int, mesh):
    """jax.random.key(seed); with a mesh, made replicated on its devices (no device-to-device copy of the key)."""
    return jax.random.key(seed) if mesh is None else _mesh_key(seed, mesh)


def _sampling(temperature: float, top_p: float) -> Sampling:
    if temperature < 0 or not 0 < top_p <= 1:
        raise UserError(f"need temperature >= 0 and 0 < top_p <= 1 (got {temperature}, {top_p})")
    greedy = temperature == 0
    # Host scalars (like the seed): the program places them, so a call on a mesh sends nothing device to device.
    return Sampling(temperature=np.float32(temperature if not greedy else 1.0), top_p=np.float32(top_p),
                    greedy=greedy, use_top_p=(not greedy) and top_p < 1.0)


def _media_token_ids(config) -> set[int]:
    ids = set()
    for name in ("image_token_id", "video_token_id", "image_token_index", "video_token_index"):
        v = getattr(config, name, None)
        if isinstance(v, (int, np.integer)):
            ids.add(int(v))
    return ids


def pad_inputs(config, inputs: dict, bucket: int) -> tuple[dict, np.ndarray]:
    """Right-pad every (B, T) input to `bucket` (attention_mask 0, ids a non-media id). Returns (inputs, mask)."""
    ids = checks.int_array("input_ids", inputs["input_ids"], ndim=2)
    b, t = ids.shape
    mask = inputs.get("attention_mask")
    mask = np.ones((b, t), np.int64) if mask is None else np.asarray(mask)
    if mask.shape != (b, t):
        raise UserError(f"attention_mask shape {mask.shape} != input_ids shape {ids.shape}")
    if b == 0 or t == 0:
        raise UserError(f"input_ids has shape {ids.shape}: need at least one row and one token (empty prompt?)")
    empty = ~mask.astype(bool).any(axis=1)
    if empty.any():
        raise UserError(f"row {int(np.argmax(empty))} of attention_mask is all 0: every row needs a real token")
    media = _media_token_ids(config)
    pad_id = next(i for i in range(len(media) + 1) if i not in media)
    out = dict(inputs)
    out["attention_mask"] = mask
    extra = bucket - t
    for name, value in inputs.items():
        if name in ("pixel_values", "pixel_values_videos", "image_sizes", "image_grid_thw", "video_grid_thw"):
            continue
        arr = np.asarray(value) if value is not None else None
        if arr is None or arr.ndim < 2 or arr.shape[:2] != (b, t):
            continue
        fill = pad_id if name == "input_ids" else 0
        out[name] = np.concatenate([arr, np.full((b, extra) + arr.shape[2:], fill, arr.dtype)], axis=1)
    if "attention_mask" not in inputs or inputs["attention_mask"] is None:
        out["attention_mask"] = np.concatenate([mask, np.zeros((b, extra), mask.dtype)], axis=1)
    return out, mask


def visual_counts(config, input_ids, attention_mask) -> np.ndarray:
    """Visual tokens per row (image and video placeholder ids among the real tokens)."""
    ids, mask = np.asarray(input_ids), np.asarray(attention_mask).astype(bool)
    media = _media_token_ids(config)
    return np.sum(np.isin(ids, list(media)) & mask, axis=1) if media else np.zeros(ids.shape[0], np.int64)


def _prepared(params, inputs: dict, prune, max_new: int):
    """(batch, plan, T, pad_masks): bucketed inputs through the family's prepare, the static plan (counts
    resolved against the batch's smallest visual count, see make_plan) and the host-built padding masks."""
    from jaxvlm.model import family

    if "input_ids" not in inputs:
        raise UserError("input_ids is required")
    prepare = family(params).prepare
    accepted = list(inspect.signature(prepare).parameters)[1:]
    unknown = sorted(set(inputs) - set(accepted))
    if unknown:
        raise UserError(f"unexpected input(s) {unknown} for a {params.config.family} model (accepted: {accepted})")
    t = checks.int_array("input_ids", inputs["input_ids"], ndim=2).shape[1]
    bucket = bucket_length(t)
    padded, mask = pad_inputs(params.config, inputs, bucket)
    counts = visual_counts(params.config, inputs["input_ids"], mask)
    plan = make_plan(params.config.text, prune, bucket, counts, max_new)
    batch = prepare(params.config, **padded)
    return batch, plan, t, host_pad_masks(params.config, batch.get("image_sizes"), plan.stages)


def generate(params, prune=None, max_new_tokens: int = 32, temperature: float = 0.0, top_p: float = 1.0,
             seed: int = 0, eos_token_id=None, pad_token_id: int | None = None, mesh=None,
             output_logits: bool = False, **inputs) -> GenerateOutput:
    """Generate `max_new_tokens` tokens per row (API.md). Greedy when temperature == 0.

    After a row's EOS (any of `eos_token_id`) its tokens are `pad_token_id` (default: the first EOS id, else 0,
    as transformers does). `mesh` (see jaxvlm.engine.sharding.data_mesh) shards the batch across devices.
    `output_logits=True` also returns each step's logits (`out.logits`, (B, max_new_tokens, V)).
    """
    if max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    eos, pad_id = _eos_pad(eos_token_id, pad_token_id)
    batch, plan, _, pad_masks = _prepared(params, inputs, prune, max_new_tokens)
    tokens, kept, logits = _generate_vlm(params, batch, _key(seed, mesh), _sampling(temperature, top_p),
                                         plan=plan, eos=eos, pad_id=pad_id, mesh=mesh, output_logits=output_logits,
                                         layer_list=per_layer_weights(params.weights["text"]), pad_masks=pad_masks)
    return GenerateOutput(tokens=tokens, kept=kept, logits=logits)


def forward(params, prune=None, mesh=None, **inputs) -> ForwardOutput:
    """Prefill logits (API.md). prune=None: (B, T, V) at every input position; with a schedule: (B, T_final, V)
    at the surviving slots (`out.src` maps each slot to its input index, -1 for padding) plus `out.kept`."""
    batch, plan, t, pad_masks = _prepared(params, inputs, prune, 0)
    logits, kept, src = _forward_vlm(params, batch, plan=plan, mesh=mesh,
                                     layer_list=per_layer_weights(params.weights["text"]), pad_masks=pad_masks)
    if not plan.stages:
        return ForwardOutput(logits=logits[:, :t])
    return ForwardOutput(logits=logits, kept=kept, src=src)


# ------------------------------------------------------------- embedded inputs (tests, custom front ends)


def _embedded_plan(cfg, emb, prune, max_new):
    """(plan, T, bucketed TokenState): the embedded batch padded to its bucket on the host side of the jit."""
    t = emb.valid.shape[1]
    counts = np.sum(np.asarray(emb.visual) & np.asarray(emb.valid), axis=1)
    plan = make_plan(cfg, prune, bucket_length(t), counts, max_new)
    return plan, t, pad_to(from_embedded(emb), plan.lengths[0])


def generate_embedded(text_w: dict, cfg: TextConfig, emb, prune=None, max_new_tokens: int = 32,
                      temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, eos_token_id=None,
                      pad_token_id: int | None = None, mesh=None, output_logits: bool = False) -> GenerateOutput:
    """`generate` from an already embedded batch (jaxvlm.model.Embedded) and text-decoder weights."""
    eos, pad_id = _eos_pad(eos_token_id, pad_token_id)
    plan, _, state = _embedded_plan(cfg, emb, prune, max_new_tokens)
    tokens, kept, logits = _generate_embedded(text_w, state, _key(seed, mesh), _sampling(temperature, top_p),
                                              cfg=cfg, plan=plan, eos=eos, pad_id=pad_id, mesh=mesh,
                                              output_logits=output_logits, layer_list=per_layer_weights(text_w))
    return GenerateOutput(tokens=tokens, kept=kept, logits=logits)


def forward_embedded(text_w: dict, cfg: TextConfig, emb, prune=None, mesh=None) -> ForwardOutput:
    """`forward` from an already embedded batch."""
    plan, t, state = _embedded_plan(cfg, emb, prune, 0)
    logits, kept, src = _forward_embedded(text_w, state, cfg=cfg, plan=plan, mesh=mesh,
                                          layer_list=per_layer_weights(text_w))
    if not plan.stages:
        return ForwardOutput(logits=logits[:, :t])
    return ForwardOutput(logits=logits, kept=kept, src=src)
