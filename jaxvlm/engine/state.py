"""The token state carried between prefill segments (DESIGN: "the token state between segments")."""

from __future__ import annotations

import jax
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
