"""`jaxvlm.forward`: one prefill pass returning logits (the unpruned path; pruning stages extend it)."""

from __future__ import annotations

import functools

import jax
from flax import struct

from jaxvlm.layers import causal_mask
from jaxvlm.model import VLM, family
from jaxvlm.models import decoder


@struct.dataclass
class ForwardOutput:
    logits: jax.Array  # (B, T, V) float32
    kept: tuple = ()  # one (B, K_stage) int32 array per pruning stage


@functools.partial(jax.jit, static_argnames=())
def _forward_unpruned(params: VLM, batch: dict) -> jax.Array:
    cfg = params.config.text
    emb = family(params).embed(params, batch)
    cos, sin = decoder.rotary(emb.positions, cfg)
    x, _ = decoder.run_layers(params.weights["text"]["layers"], emb.embeds, cos, sin, causal_mask(emb.valid), cfg)
    return decoder.final_logits(params.weights["text"], x, cfg)


def forward(params: VLM, prune=None, **inputs) -> ForwardOutput:
    """Logits (B, T, V) float32 for transformers-style named inputs (numpy or jax arrays)."""
    if prune is not None:
        raise NotImplementedError("pruned forward is provided by the engine (issue 4)")
    batch = family(params).prepare(params.config, **inputs)
    return ForwardOutput(logits=_forward_unpruned(params, batch))
