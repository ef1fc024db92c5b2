"""Tensor parallelism on 8 forced CPU devices (a subprocess: XLA_FLAGS must be set before jax starts): weights
placed by the logical-axis table, model=8 and data=2 x model=4 with FSDP, give the same logits (1e-5 of their
scale), tokens and kept sets as one device, unpruned and FastV, and each device holds about 1/8 of the weight
bytes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json
    import jax, numpy as np
    jax.config.update("jax_default_matmul_precision", "highest")
    assert jax.device_count() == 8, jax.devices()
    import jaxvlm
    from jaxvlm import io, prune
    from jaxvlm.engine import sharding
    from jaxvlm.model import random_params
    d = json.load(open("jaxvlm/data/configs/llava-1.5-7b-hf.json"))
    d["text_config"].update(hidden_size=64, num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=8,
                            intermediate_size=256)
    d["vision_config"].update(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2)
    params = random_params(io.parse_hf_config(d), seed=1, std=0.2)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 31999, size=(2, 600))
    ids[:, 3:579] = 32000
    mask = np.ones_like(ids)
    mask[1, :20] = 0
    pixels = rng.standard_normal((2, 3, 336, 336)).astype(np.float32)
    inputs = dict(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    total = sum(w.nbytes for w in jax.tree.leaves(params.weights))
    dev0 = jax.devices()[0]
    one = jaxvlm.forward(params, **inputs).logits
    valid = mask.astype(bool)
    # 1e-5 of the logit scale: the sharded contractions (heads in wo, F in w_down) sum in another order.
    scale = float(np.abs(np.asarray(one)[valid]).max())
    single = {sched: jaxvlm.generate(params, **inputs, prune=sched, max_new_tokens=6)
              for sched in (None, prune.fastv(layer=1, keep=64))}
    fractions = []
    for data, model, fsdp in ((1, 8, False), (2, 4, True)):
        mesh = sharding.model_mesh(data, model)
        tp = sharding.shard_weights(params, mesh, fsdp=fsdp)
        mine = sum(s.data.nbytes for w in jax.tree.leaves(tp.weights) for s in w.addressable_shards
                   if s.device == dev0)
        wq = tp.weights["text"]["layers"]["wq"]
        assert wq.sharding.spec == jax.sharding.PartitionSpec(None, "data" if fsdp else None, "model", None)
        assert sum(s.data.nbytes for s in wq.addressable_shards if s.device == dev0) * 8 == wq.nbytes
        assert total / 8 <= mine <= 0.2 * total, (mine, total)
        fractions.append(mine / total)
        many = jaxvlm.forward(tp, **inputs, mesh=mesh).logits
        np.testing.assert_allclose(np.asarray(many)[valid], np.asarray(one)[valid], atol=1e-5 * max(1.0, scale),
                                   rtol=0)
        for sched, a in single.items():
            b = jaxvlm.generate(tp, **inputs, prune=sched, max_new_tokens=6, mesh=mesh)
            np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
            for x, y in zip(a.kept, b.kept):
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    print("TP_OK", fractions)
""")


@pytest.mark.slow
def test_tensor_parallel_matches_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=900,
                          cwd=root)
    assert proc.returncode == 0 and "TP_OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-5000:]
    print(proc.stdout.strip().splitlines()[-1])
