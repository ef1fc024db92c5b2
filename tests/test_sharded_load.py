"""Sharded loading on 8 forced CPU devices (a subprocess: XLA_FLAGS must be set before jax starts): a tiny HF
checkpoint and its orbax copy load into the logical-axis table's shardings (TP, TP + FSDP) with the same values
as an unsharded load, and no full copy is made on the way (every device_put and every live buffer is a shard of
one layer, the per-device program that writes a layer holds no full stack, the host holds one HF tensor at a
time); TP + FSDP logits equal one device's; the vision tower runs per image on a data mesh; a second generate
with sharded weights sends nothing device to device. In-process: the default dtype and `jaxvlm generate`'s
--dtype / --compile-cache."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

SCRIPT = textwrap.dedent("""
    import json, os, sys
    import jax, numpy as np
    from jax.sharding import PartitionSpec as P
    jax.config.update("jax_default_matmul_precision", "highest")
    assert jax.device_count() == 8, jax.devices()
    import jaxvlm
    import llava_reference as L
    from converters import SafetensorsReader, table_for
    from converters.core import export, flatten
    from jaxvlm import io
    from jaxvlm.engine import api, sharding
    from jaxvlm.model import VLM
    from jaxvlm.models import llava
    from jaxvlm.model import random_params
    from safetensors.numpy import save_file

    d = L.hf_config_dict(gqa=False, text_layers=2, vision_layers=2)
    d["vision_config"].update(image_size=112, intermediate_size=96)  # no layer shape equals the projector's
    d["image_seq_length"] = 64
    cfg = llava.parse_config(d)
    rng = np.random.default_rng(0)
    weights = jax.tree.map(lambda a: (rng.standard_normal(a.shape) * 0.2).astype(np.float32),
                           random_params(cfg).weights)
    hf_dir, jx_dir = sys.argv[1] + "/hf", sys.argv[1] + "/jx"
    tensors = {k: np.ascontiguousarray(v) for k, v in export(table_for(cfg), weights, "hub")}
    os.makedirs(hf_dir)
    save_file(tensors, hf_dir + "/model.safetensors")
    with open(hf_dir + "/config.json", "w") as f:
        json.dump(d, f)
    io.save(VLM(weights=weights, config=cfg), jx_dir, hf_config=d)
    largest_hf = max(t.nbytes for t in tensors.values())
    flat_w = flatten(weights)
    MATRICES = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down", "w_fc1", "w_fc2")
    mesh = sharding.model_mesh(2, 4)

    # The HF checkpoint loads with TP + FSDP; instruments: every device_put of a host array (its shape, bytes and
    # per-device shard shape, with every live array's shape and per-device buffer shape at that moment) and
    # every host tensor read.
    puts, reads, real_put, real_get = [], [], jax.device_put, SafetensorsReader.get
    def live_buffers():
        return {(a.shape, a.sharding.shard_shape(a.shape)) for a in jax.live_arrays()}
    def put(x, s=None, **kw):
        if isinstance(x, np.ndarray):
            puts.append((x.shape, x.nbytes, s.shard_shape(x.shape), live_buffers()))
        return real_put(x, s, **kw)
    def get(self, key):
        a = real_get(self, key)
        reads.append(a.nbytes)
        return a
    jax.device_put, SafetensorsReader.get = put, get
    sh = jaxvlm.load(hf_dir, mesh=mesh, fsdp=True)
    jax.device_put, SafetensorsReader.get = real_put, real_get
    want = flatten(sharding.weight_shardings(weights, mesh, True))
    got = flatten(sh.weights)
    for p, w in flat_w.items():
        assert got[p].sharding.is_equivalent_to(want[p], w.ndim), (p, got[p].sharding, want[p])
        np.testing.assert_array_equal(np.asarray(got[p]), w, err_msg=p)
    assert got["text/layers/wq"].sharding.spec[:3] == (None, "data", "model")
    assert max(reads) == largest_hf and max(n for _, n, _, _ in puts) <= largest_hf, (max(reads), largest_hf)
    for p in [p for p in flat_w if "/layers/" in p and p.rsplit("/", 1)[1] in MATRICES]:
        w = flat_w[p]  # a stacked matrix (a shape no replicated leaf has)
        layer_shard = sharding.layer_sharding(want[p]).shard_shape(w.shape[1:])
        assert layer_shard != w.shape[1:], p
        for shape, _, placed, live in puts:
            assert shape != w.shape, f"{p}: the whole stack was sent at once"
            assert shape != w.shape[1:] or placed == layer_shard, (p, placed, layer_shard)
            # no live array of this leaf's shape ever had a full-size buffer on a device
            assert not any(full == w.shape and s == full for full, s in live), p
    # The per-device program that writes one layer of wq into its stack never holds a full stack.
    stack = got["text/layers/wq"]
    layer = jax.device_put(np.zeros(stack.shape[1:], np.float32), sharding.layer_sharding(stack.sharding))
    text = io._set_layer.lower(stack, layer, np.int32(0), stack.sharding).compile().as_text()
    full = "f32[" + ",".join(map(str, stack.shape)) + "]"
    local = "f32[" + ",".join(map(str, stack.sharding.shard_shape(stack.shape))) + "]"
    assert full not in text and local in text, text[:2000]

    # The orbax copy restores into the tensor-parallel table's shardings (each device reads its shards).
    restored = jaxvlm.load(jx_dir, mesh=mesh)
    want_tp = flatten(sharding.weight_shardings(weights, mesh))
    for p, a in flatten(restored.weights).items():
        assert a.sharding.is_equivalent_to(want_tp[p], a.ndim), (p, a.sharding, want_tp[p])
        np.testing.assert_array_equal(np.asarray(a), flat_w[p], err_msg=p)
    assert flatten(restored.weights)["text/layers/wq"].sharding.spec[:3] == (None, None, "model")

    # TP + FSDP: per-device bytes of the big matrices are 1/8 of theirs, the logits are one device's ...
    one = jaxvlm.load(hf_dir)
    dev0 = jax.devices()[0]
    for p in ("text/layers/wq", "text/layers/w_gate", "text/layers/w_down", "text/embed", "text/lm_head"):
        a = flatten(sh.weights)[p]
        mine = sum(s.data.nbytes for s in a.addressable_shards if s.device == dev0)
        assert mine * 8 == a.nbytes, (p, mine, a.nbytes)
    ids = rng.integers(0, L.IMAGE_TOKEN, size=(2, 280))  # 2 rows of 4 images (64 tokens each)
    for j in range(4):
        ids[:, 5 + 68 * j:69 + 68 * j] = L.IMAGE_TOKEN
    mask = np.ones_like(ids)
    mask[1, :3] = 0
    inputs = dict(input_ids=ids, attention_mask=mask, pixel_values=rng.standard_normal((8, 3, 112, 112))
                  .astype(np.float32))
    ref = np.asarray(jaxvlm.forward(one, **inputs).logits)[mask.astype(bool)]
    atol = 1e-5 * max(1.0, float(np.abs(ref).max()))
    # ... and its vision tower runs sharded over images: each device's CLIP residual stream holds 4 of the 8
    # images (65 tokens each; the 2 rows alone would not split them), heads split over "model".
    batch, plan, _, _ = api._prepared(sh, inputs, None, 0)
    compiled = api._forward_vlm.lower(sh, batch, plan=plan, mesh=mesh).compile()
    text = compiled.as_text()
    assert "f32[4,65,32]" in text and "f32[8,65," not in text, "CLIP not sharded over images"
    out = np.asarray(compiled(sh, batch)[0])[:, :280][mask.astype(bool)]
    np.testing.assert_allclose(out, ref, atol=atol, rtol=0)

    # Weights loaded sharded are used where they lie: a second generate moves nothing device to device.
    first = jaxvlm.generate(sh, **inputs, max_new_tokens=3, mesh=mesh)
    with jax.transfer_guard_device_to_device("disallow"):
        again = jaxvlm.generate(sh, **inputs, max_new_tokens=3, mesh=mesh)
    np.testing.assert_array_equal(np.asarray(first.tokens), np.asarray(again.tokens))

    # Fewer images than data devices (an eval's last partial batch: 2 images on data=8) run with the pixels
    # unconstrained (a constraint made GSPMD split them over 2 of the 8 devices: IndivisibleError).
    small = dict(input_ids=ids[:, :140], attention_mask=mask[:, :140], pixel_values=inputs["pixel_values"][:4])
    few = jaxvlm.generate(one, **small, max_new_tokens=3, mesh=sharding.data_mesh())
    alone = jaxvlm.generate(one, **small, max_new_tokens=3)
    np.testing.assert_array_equal(np.asarray(few.tokens), np.asarray(alone.tokens))
    print("SHARDED_LOAD_OK")
""")


def test_sharded_load_on_eight_devices(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    tests = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.pathsep.join([tests, os.path.dirname(tests), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and "SHARDED_LOAD_OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-5000:]


def test_default_dtype_follows_the_backend(monkeypatch):
    import jax

    from jaxvlm import io

    for backend, dtype in (("cpu", "float32"), ("gpu", "bfloat16"), ("tpu", "bfloat16")):
        monkeypatch.setattr(jax, "default_backend", lambda b=backend: b)
        assert io.default_dtype() == dtype


def test_generate_cli_dtype_and_compile_cache(tmp_path, monkeypatch):
    from jaxvlm import compile_cache
    from jaxvlm.engine import cli
    from jaxvlm.errors import UserError

    args = cli.parser().parse_args([str(tmp_path), "--image", "x.png", "--prompt", "hi"])
    assert args.dtype is None and args.compile_cache is None
    assert "bfloat16 on GPU / TPU, float32 on CPU" in " ".join(cli.parser().format_help().split())
    enabled = []
    monkeypatch.setattr(compile_cache, "enable_from", enabled.append)
    with pytest.raises(UserError, match="missing.png"):  # the cache is enabled before the image and model are read
        cli.main([str(tmp_path), "--image", str(tmp_path / "missing.png"), "--prompt", "hi",
                  "--compile-cache", str(tmp_path / "cache")])
    assert enabled == [str(tmp_path / "cache")]
    # --mesh is checked before anything is read: a bad spec, and more devices than this process has.
    for spec, message in (("data=x", "expected data=D"), ("model=4", "this process has 1 device")):
        with pytest.raises(UserError, match=message):
            cli.main([str(tmp_path), "--image", str(tmp_path / "missing.png"), "--prompt", "hi", "--mesh", spec])


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_weight_spec_follows_the_table(data):
    """Every split dimension is divisible by its axis and is a letter the table maps to that axis; each axis is
    used once; FSDP keeps the model axis where it was and puts "data" on the largest free FSDP letter."""
    import jax

    from jaxvlm.engine import sharding

    name = data.draw(st.sampled_from(sorted(sharding.WEIGHT_AXES)))
    letters = sharding.WEIGHT_AXES[name]
    shape = tuple(data.draw(st.lists(st.sampled_from([1, 2, 3, 4, 6, 8, 12, 16, 28, 64]), min_size=len(letters),
                                     max_size=len(letters))))
    sizes = (data.draw(st.sampled_from([1, 2, 4])), data.draw(st.sampled_from([1, 2, 4, 8])))
    mesh = jax.sharding.AbstractMesh(sizes, (sharding.BATCH_AXIS, sharding.MODEL_AXIS))
    tp = tuple(sharding.weight_spec(name, shape, mesh)) + (None,) * len(shape)
    fs = tuple(sharding.weight_spec(name, shape, mesh, fsdp=True)) + (None,) * len(shape)
    for spec, rules in ((tp, (sharding.LOGICAL_RULES,)), (fs, (sharding.LOGICAL_RULES, sharding.FSDP_RULES))):
        used = [a for a in spec if a is not None]
        assert len(used) == len(set(used))
        for letter, dim, axis in zip(letters, shape, spec):
            if axis is not None:
                assert dim % mesh.shape[axis] == 0 and any(r.get(letter) == axis for r in rules)
    assert [a if a == sharding.MODEL_AXIS else None for a in fs[:len(shape)]] == list(tp[:len(shape)])
    free = [dim for letter, dim, axis in zip(letters, shape, tp)
            if axis is None and letter in sharding.FSDP_RULES and dim % mesh.shape[sharding.BATCH_AXIS] == 0]
    on_data = [dim for dim, axis in zip(shape, fs) if axis == sharding.BATCH_AXIS]
    assert on_data == ([max(free)] if free else [])


# argv: process_id num_processes port hf_dir out.npz. Each of 2 processes (2 CPU devices each) loads the same
# HF directory onto one global data=2 x model=2 mesh with FSDP and writes the replicated weights it sees.
HOST_WORKER = textwrap.dedent("""
    import functools, sys
    pid, n, port, hf_dir, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    import jax, numpy as np
    from jax._src import xla_bridge
    xla_bridge._jax.make_gloo_tcp_collectives = functools.partial(
        xla_bridge._jax.make_gloo_tcp_collectives, hostname="127.0.0.1")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=n, process_id=pid,
                               coordinator_bind_address=f"127.0.0.1:{port}", initialization_timeout=120)
    import jaxvlm
    from converters.core import flatten
    from jaxvlm.engine import sharding
    mesh = sharding.model_mesh(2, 2)
    params = jaxvlm.load(hf_dir, mesh=mesh, fsdp=True)
    wq = params.weights["text"]["layers"]["wq"]
    assert tuple(wq.sharding.spec)[:3] == (None, "data", "model") and not wq.is_fully_addressable
    full = jax.jit(lambda w: w, out_shardings=sharding.replicated(mesh))(params.weights)
    np.savez(out, **{k: np.asarray(v.addressable_shards[0].data) for k, v in flatten(full).items()})
    print("WORKER_OK", pid, flush=True)
""")


@pytest.mark.slow
def test_two_processes_load_one_sharded_copy(tmp_path):
    """Loading onto a mesh spanning 2 processes: each places its devices' shards; together they hold the
    checkpoint exactly (tests/test_engine_multihost.py's harness)."""
    import json

    import numpy as np
    from safetensors.numpy import save_file

    import llava_reference as L
    from converters import table_for
    from converters.core import export, flatten
    from jaxvlm.model import random_params
    from jaxvlm.models import llava
    from test_engine_multihost import free_port, run_processes

    d = L.hf_config_dict(gqa=False, text_layers=2, vision_layers=2)
    d["vision_config"]["image_size"] = 112
    params = random_params(llava.parse_config(d), std=0.2, seed=3)
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    save_file({k: np.ascontiguousarray(v) for k, v in export(table_for(params.config), params.weights, "hub")},
              str(hf_dir / "model.safetensors"))
    (hf_dir / "config.json").write_text(json.dumps(d))
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    env["PYTHONPATH"] = os.pathsep.join([tests, os.path.dirname(tests), env.get("PYTHONPATH", "")])
    port, files = free_port(), [tmp_path / f"process{i}.npz" for i in range(2)]
    argvs = [[str(i), "2", str(port), str(hf_dir), str(f)] for i, f in enumerate(files)]
    for (rc, log), f in zip(run_processes(argvs, env, 600, worker=HOST_WORKER), files):
        assert rc == 0 and "WORKER_OK" in log, f"{f.name}: rc={rc}\n{log[-6000:]}"
        got = np.load(f)
        for k, v in flatten(params.weights).items():
            np.testing.assert_array_equal(got[k], np.asarray(v), err_msg=f"{f.name} {k}")


def test_bfloat16_tensors_are_read_on_the_host(tmp_path):
    """A BF16 checkpoint tensor becomes a host bfloat16 array without passing through a device."""
    import jax
    import ml_dtypes
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from converters import SafetensorsReader

    tensors = {"w": torch.randn(6, 5).to(torch.bfloat16), "b": torch.randn(7)}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    reader = SafetensorsReader(str(tmp_path))
    with jax.transfer_guard_host_to_device("disallow_explicit"):
        got = {k: reader.get(k) for k in tensors}
    assert got["w"].dtype == ml_dtypes.bfloat16 and got["b"].dtype == np.float32
    for k, t in tensors.items():
        np.testing.assert_array_equal(got[k].astype(np.float32), t.float().numpy())


@pytest.mark.parametrize("family", ["llava", "llava_next", "video_llava", "qwen2_vl"])
def test_image_parallel_inputs_of_every_family(family, monkeypatch):
    """Under a mesh each family's pixel inputs with an image axis get that axis on "data" (Qwen's packed
    patches stay as they are) and every weight outside the text decoder, top-level ones such as LLaVA-NeXT's
    image_newline too, its tensor-parallel sharding; the text weights are left alone."""
    import jax
    import jax.numpy as jnp

    import llava_next_reference
    import llava_reference
    import qwen_reference
    import video_llava_reference
    from converters.core import flatten
    from jaxvlm import io
    from jaxvlm.engine import sharding
    from jaxvlm.plan import abstract_params

    d = {"llava": llava_reference.hf_config_dict, "llava_next": llava_next_reference.hf_config_dict,
         "video_llava": video_llava_reference.hf_config_dict,
         "qwen2_vl": lambda: qwen_reference.hf_config_dict("qwen2_vl")}[family]()
    params = abstract_params(io.parse_hf_config(d), "float32")
    batch = {"pixel_values": jnp.zeros((4, 3, 8, 8)), "pixel_values_videos": jnp.zeros((2, 8, 3, 8, 8))}
    constrained = []
    monkeypatch.setattr(jax.lax, "with_sharding_constraint", lambda x, s: constrained.append((x, s.spec)) or x)
    out, _ = sharding.image_parallel(params, batch, sharding.model_mesh(1, 1))
    on_data = [x for x, spec in constrained if spec[:1] == (sharding.BATCH_AXIS,)]
    assert [x.shape for x in on_data] == [batch[k].shape for k in sharding.IMAGE_AXIS_INPUTS.get(family, ())]
    towers = {p: w for p, w in flatten(params.weights).items() if not p.startswith("text/")}
    assert len(constrained) == len(on_data) + len(towers)
    assert {id(x) for x, _ in constrained} >= {id(w) for w in towers.values()}
    assert ("image_newline" in towers) == (family == "llava_next")
    assert out.weights["text"] is params.weights["text"]
