"""Prefill (with pruning stages) and decode: what `jaxvlm.forward` and `jaxvlm.generate` run.

    state.py     TokenState: hidden states + per-token metadata carried between segments
    prefill.py   static Plan (segments, slot counts), scoring rows, stages, per-segment KV caches
    decode.py    the decode loop (one lax.while_loop) and sampling
    api.py       public entry points: bucketing, planning, one jit per (bucket, schedule, batch size)
    sharding.py  data / tensor parallel meshes and the weights' logical-axis table (the one place sharding lives)
    cli.py       `jaxvlm generate`
"""

from jaxvlm.engine.api import ForwardOutput, GenerateOutput, forward, forward_embedded, generate, generate_embedded
from jaxvlm.engine.sharding import data_mesh, model_mesh, shard_weights

__all__ = ["ForwardOutput", "GenerateOutput", "data_mesh", "forward", "forward_embedded", "generate",
           "generate_embedded", "model_mesh", "shard_weights"]
