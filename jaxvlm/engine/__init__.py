"""Prefill (with pruning stages) and decode: what `jaxvlm.forward` and `jaxvlm.generate` run.

    state.py     TokenState: hidden states + per-token metadata carried between segments
    prefill.py   static Plan (segments, slot counts), scoring rows, stages, per-segment KV caches
    decode.py    the decode loop (one lax.while_loop) and sampling
    api.py       public entry points: bucketing, planning, one jit per (bucket, schedule, batch size)
    sharding.py  data-parallel mesh over the batch axis (the one place sharding is declared)
    cli.py       `jaxvlm generate`
"""

from jaxvlm.engine.api import ForwardOutput, GenerateOutput, forward, forward_embedded, generate, generate_embedded
from jaxvlm.engine.sharding import data_mesh

__all__ = ["ForwardOutput", "GenerateOutput", "data_mesh", "forward", "forward_embedded", "generate",
           "generate_embedded"]
