"""`jaxvlm.forward`: one prefill pass returning logits, unpruned or through a pruning schedule.

`forward` shares the engine's bucketing, planning and prefill with `generate` (jaxvlm/engine/api.py).
`_forward_unpruned(params, batch)` is the plain, unbucketed reference path over an already prepared batch.
"""

from __future__ import annotations

import jax

from jaxvlm.engine.api import ForwardOutput, forward, forward_embedded
from jaxvlm.layers import causal_mask
from jaxvlm.model import VLM, family
from jaxvlm.models import decoder

__all__ = ["ForwardOutput", "forward", "forward_embedded"]


@jax.jit
def _forward_unpruned(params: VLM, batch: dict) -> jax.Array:
    cfg = params.config.text
    emb = family(params).embed(params, batch)
    cos, sin = decoder.rotary(emb.positions, cfg)
    x, _ = decoder.run_layers(params.weights["text"]["layers"], emb.embeds, cos, sin, causal_mask(emb.valid), cfg)
    return decoder.final_logits(params.weights["text"], x, cfg)
