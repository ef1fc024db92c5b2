"""Multi-host data parallelism, simulated on one machine: 2 processes x 2 CPU devices joined by
jax.distributed (coordinator and gloo collectives on 127.0.0.1) run the same generate/forward calls over one
global data_mesh() with the same global numpy inputs; both must return what a single process without a mesh
returns. Every process is a subprocess (XLA_FLAGS and jax.distributed must precede jax's start) that writes its
outputs to an .npz file; every wait has a deadline and every process still running at the end is killed."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import pytest

PROCESSES, LOCAL_DEVICES, TIMEOUT_S = 2, 2, 600

# argv: process_id num_processes port out.npz. num_processes == 1: the reference (one process, no mesh).
WORKER = textwrap.dedent("""
    import functools, sys
    pid, n, port, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    import jax, numpy as np
    jax.config.update("jax_default_matmul_precision", "highest")
    if n > 1:
        # gloo's TCP transport binds the hostname's address by default: keep it on loopback too
        from jax._src import xla_bridge
        xla_bridge._jax.make_gloo_tcp_collectives = functools.partial(
            xla_bridge._jax.make_gloo_tcp_collectives, hostname="127.0.0.1")
        jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=n, process_id=pid,
                                   coordinator_bind_address=f"127.0.0.1:{port}", initialization_timeout=120)
        assert jax.process_count() == n and jax.device_count() == n * jax.local_device_count(), jax.devices()
    import jaxvlm
    from jaxvlm.engine import data_mesh
    from engine_stages import FastV
    from llava_reference import build, make_inputs
    _, params, config = build(gqa=True, text_layers=2, seed=3)
    mesh = data_mesh() if n > 1 else None
    res = {}
    four = make_inputs(config, lengths=(640, 610, 605, 620), seed=1)   # 4 rows: sharded outputs
    three = make_inputs(config, lengths=(630, 600, 615), seed=2)       # 3 rows: padded to 4 inside
    for name, inputs, sched in (("four", four, None), ("four_fastv", four, (FastV(layer=1, keep=64),)),
                                ("three", three, None)):
        o = jaxvlm.generate(params, **inputs, prune=sched, max_new_tokens=6, mesh=mesh)
        res[name] = np.asarray(o.tokens)
        for i, k in enumerate(o.kept):
            res[f"{name}_kept{i}"] = np.asarray(k)
    f = jaxvlm.forward(params, **three, prune=(FastV(layer=1, keep=64),), mesh=mesh)
    res["forward_logits"], res["forward_src"] = np.asarray(f.logits), np.asarray(f.src)
    np.savez(out, **res)
    print("WORKER_OK", pid, flush=True)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(argvs: list[list[str]], env: dict, timeout_s: float,
                  worker: str = WORKER) -> list[tuple[int | None, str]]:
    """Start every `python -c worker argv...` at once; wait for all within one deadline. Returns (rc, log) per
    process, rc None for a process that missed the deadline (it is killed, as is every other one left)."""
    logs = [tempfile.TemporaryFile("w+") for _ in argvs]
    procs = [subprocess.Popen([sys.executable, "-c", worker, *argv], env=env, stdout=log, stderr=subprocess.STDOUT,
                              text=True) for argv, log in zip(argvs, logs)]
    deadline = time.monotonic() + timeout_s
    try:
        rcs = []
        for p in procs:
            try:
                rcs.append(p.wait(timeout=max(deadline - time.monotonic(), 0.1)))
            except subprocess.TimeoutExpired:
                rcs.append(None)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    out = []
    for rc, log in zip(rcs, logs):
        log.seek(0)
        out.append((rc, log.read()))
        log.close()
    return out


@pytest.mark.slow
def test_two_processes_give_the_same_outputs_as_one(tmp_path):
    tests = os.path.dirname(__file__)
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={LOCAL_DEVICES}")
    env["PYTHONPATH"] = os.pathsep.join([tests, env.get("PYTHONPATH", "")])
    port = free_port()
    files = [tmp_path / f"process{i}.npz" for i in range(PROCESSES)] + [tmp_path / "reference.npz"]
    argvs = [[str(i), str(PROCESSES), str(port), str(files[i])] for i in range(PROCESSES)]
    argvs.append(["0", "1", "0", str(files[-1])])
    results = run_processes(argvs, env, TIMEOUT_S)
    for (rc, log), f in zip(results, files):
        assert rc == 0 and "WORKER_OK" in log, f"{f.name}: rc={rc}\n{log[-6000:]}"
    ref = np.load(files[-1])
    for f in files[:-1]:
        got = np.load(f)
        assert sorted(got.files) == sorted(ref.files)
        for name in ref.files:
            if name == "forward_logits":
                np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=1e-5, err_msg=f"{f.name} {name}")
            else:
                np.testing.assert_array_equal(got[name], ref[name], err_msg=f"{f.name} {name}")
