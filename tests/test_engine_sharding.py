"""Data-parallel generation over 8 CPU devices (a subprocess, since XLA_FLAGS must be set before jax starts)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    jax.config.update("jax_default_matmul_precision", "highest")
    assert jax.device_count() == 8, jax.devices()
    import jaxvlm
    from jaxvlm.engine import data_mesh
    from engine_stages import FastV
    from llava_reference import build, make_inputs
    _, params, config = build(gqa=True, text_layers=4, seed=3)
    inputs = make_inputs(config, lengths=(640, 610, 605, 620, 600), seed=1)   # 5 rows: padded to 8 inside
    mesh = data_mesh()
    for sched in (None, (FastV(layer=2, keep=64),)):
        one = jaxvlm.generate(params, **inputs, prune=sched, max_new_tokens=8)
        many = jaxvlm.generate(params, **inputs, prune=sched, max_new_tokens=8, mesh=mesh)
        np.testing.assert_array_equal(np.asarray(one.tokens), np.asarray(many.tokens))
        for a, b in zip(one.kept, many.kept):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    text = jaxvlm.engine.api._generate_vlm.lower(
        params, jaxvlm.model.family(params).prepare(params.config, **inputs), jax.random.key(0),
        jaxvlm.engine.api._sampling(0.0, 1.0), eos=np.int32([-1]), pad_id=np.int32(0),
        plan=jaxvlm.engine.prefill.make_plan(params.config.text, None, 640, [576] * 5, 8), mesh=mesh,
        output_logits=False).as_text()
    assert "sharding_constraint" in text and '{"data"}' in text, "batch axis not sharded"
    print("SHARDED_OK")
""")


@pytest.mark.slow
def test_eight_devices_give_the_same_tokens():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    tests = os.path.dirname(__file__)
    env["PYTHONPATH"] = os.pathsep.join([tests, env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and "SHARDED_OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-5000:]
