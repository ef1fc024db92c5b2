"""The token state carried between prefill segments (DESIGN: "the token state between segments")."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class TokenState:
    """Hidden states of the surviving tokens plus their per-token metadata; all arrays (B, T_i) unless noted.

    A pruning stage gathers every field with the same (B, T_{i+1}) slot indices, so metadata never drifts
    from the hidden state it describes. Slots with `valid` False are padding and are masked everywhere.
    """

    x: jax.Array  # (B, T_i, D) hidden states entering the next decoder layer
    positions: jax.Array  # (P, B, T_i) int32 original rotary positions (gathered, never recomputed)
    valid: jax.Array  # bool: real token
    visual: jax.Array  # bool: visual token
    src: jax.Array  # int32: index of the token in the input's T axis (what `out.kept` reports)
    media: jax.Array  # int32: image/video index in the batch's media list; -1 text
    frame: jax.Array  # int32: frame within a video; -1 text
    row: jax.Array  # int32: row in its (merged) patch grid; -1 text
    col: jax.Array  # int32: column in its (merged) patch grid; -1 text
    span_index: jax.Array  # int32: raster index within its image/frame; -1 text
    vision_cls: jax.Array | None = None  # float32 (optional, VisionZip): vision [CLS] attention; 0 text/padding
    vision_keys: jax.Array | None = None  # (B, T_i, Dk) float32 (optional, VisionZip): vision-tower keys

    @property
    def batch(self) -> int:
        return self.valid.shape[0]

    @property
    def length(self) -> int:
        return self.valid.shape[1]


# Fields that are per-slot (B, T) metadata and get -1 on invalid slots after a gather.
_INDEX_FIELDS = ("src", "media", "frame", "row", "col", "span_index")


def from_embedded(emb) -> TokenState:
    """The token state entering decoder layer 0: the input embeddings plus their metadata, src = arange(T)."""
    b, t = emb.valid.shape
    src = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    return TokenState(
        x=emb.embeds, positions=emb.positions.astype(jnp.int32), valid=emb.valid.astype(bool),
        visual=emb.visual.astype(bool) & emb.valid.astype(bool), src=jnp.where(emb.valid, src, -1),
        media=emb.media, frame=emb.frame, row=emb.row, col=emb.col, span_index=emb.span_index,
        vision_cls=getattr(emb, "vision_cls", None), vision_keys=getattr(emb, "vision_keys", None),
    )


def gather(state: TokenState, order_bt: jax.Array, valid_bt: jax.Array) -> TokenState:
    """Gather every field at slots `order_bt` (B, T') and mark slots with `valid_bt` False as padding.

    Padding slots carry zeros in `x`, -1 in every index field and False in `visual`: masked, never garbage.
    """
    take = lambda a: jnp.take_along_axis(a, order_bt, axis=1)  # noqa: E731
    x = jnp.take_along_axis(state.x, order_bt[:, :, None], axis=1)
    positions = jnp.take_along_axis(state.positions, order_bt[None], axis=2)
    fields = {name: jnp.where(valid_bt, take(getattr(state, name)), -1) for name in _INDEX_FIELDS}
    return TokenState(
        x=jnp.where(valid_bt[:, :, None], x, jnp.zeros((), x.dtype)),
        positions=jnp.where(valid_bt[None], positions, 0),
        valid=valid_bt,
        visual=take(state.visual) & valid_bt,
        **fields,
        **_gather_vision(state, order_bt, valid_bt),
    )


def _gather_vision(state: TokenState, order_bt, valid_bt) -> dict:
    out = {}
    if state.vision_cls is not None:
        out["vision_cls"] = jnp.where(valid_bt, jnp.take_along_axis(state.vision_cls, order_bt, axis=1), 0.0)
    if state.vision_keys is not None:
        k = jnp.take_along_axis(state.vision_keys, order_bt[:, :, None], axis=1)
        out["vision_keys"] = jnp.where(valid_bt[:, :, None], k, 0.0)
    return out


def pad_to(state: TokenState, length: int) -> TokenState:
    """Append padding slots so the token axis has `length` slots (a bucket)."""
    extra = length - state.length
    if extra == 0:
        return state
    if extra < 0:
        raise ValueError(f"cannot pad {state.length} slots down to {length}")
    pad = lambda a, value, axis=1: jnp.concatenate(  # noqa: E731
        [a, jnp.full(a.shape[:axis] + (extra,) + a.shape[axis + 1:], value, a.dtype)], axis=axis)
    return TokenState(
        x=pad(state.x, 0), positions=pad(state.positions, 0, axis=2), valid=pad(state.valid, False),
        visual=pad(state.visual, False), **{name: pad(getattr(state, name), -1) for name in _INDEX_FIELDS},
        vision_cls=None if state.vision_cls is None else pad(state.vision_cls, 0),
        vision_keys=None if state.vision_keys is None else pad(state.vision_keys, 0),
    )
