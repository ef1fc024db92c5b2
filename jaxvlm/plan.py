"""`jaxvlm plan`: does a model fit, before loading anything. Compiles the generate program with the weights as
shapes only (`jax.ShapeDtypeStruct`) and reports, per device, from the compiled program:

    jaxvlm plan CONFIG_OR_CKPT --batch 8 --prompt-tokens 704 --max-new-tokens 32 [--images 1] [--prune SPEC]
                [--dtype bfloat16] [--mesh data=D,model=M] [--fsdp] [--devices N] [--json OUT]

- weights_bytes: the weight arguments' shards on one device (`--mesh data=D,model=M`: batch over D, weights
  by jaxvlm.engine.sharding's logical-axis table over M); kv_cache_bytes: the prompt caches and decode
  tails of every segment on one device (allocated inside the program, so part of temp_bytes);
  temp_bytes: `memory_analysis().temp_size_in_bytes`; total_bytes: arguments + outputs + temp - aliased.
- compile_seconds: lower + compile. prefill_flops / decode_flops: dot FLOPs of the program (jaxpr), every
  scan counted times its length and the decode loop times (max_new - 1) (an upper bound: the loop stops at
  EOS), divided evenly over the devices; prefill includes the vision tower. (`compiled.cost_analysis()`
  counts each loop body once, hence not used.)
- The attention path is the chunked online-softmax one (`--attention`), whose memory class (no (T, S) logits)
  is the TPU/GPU kernels'. `--devices N` plans N devices on a CPU host (a subprocess with
  XLA_FLAGS=--xla_force_host_platform_device_count=N). On CPU, bfloat16 programs upcast weight stacks to
  float32 (XLA:CPU has no bf16 dot), so their temp is above an accelerator's: plan float32 and halve.

`--prompt-tokens` counts every token of a row, visual ones included; `--images N` puts N images per row at
the model's default resolution (LLaVA: its image_size; Qwen: DEFAULT_QWEN_IMAGE pixels), 0 = text only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from jaxvlm.errors import UserError

DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_QWEN_IMAGE = (448, 448)  # (height, width) in pixels of a planned Qwen image
CHILD_FLAG = "--_in-subprocess"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (jaxvlm.errors.run_cli)
        raise UserError(f"jaxvlm plan: {message}")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="jaxvlm plan", description="per-device memory, compile time and FLOPs of the generate "
                "program, compiled with the weights as shapes (nothing is loaded)")
    p.add_argument("config", metavar="CONFIG_OR_CKPT", help="a config.json, or a directory holding one "
                   "(Hugging Face checkpoint or jaxvlm.save directory)")
    p.add_argument("--batch", type=int, default=8, help="rows per call")
    p.add_argument("--prompt-tokens", type=int, default=704, help="tokens per row, visual tokens included")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--images", type=int, default=1, help="images per row at the default resolution (0: text)")
    p.add_argument("--prune", default=None, help="a schedule spec as in `jaxvlm generate --prune`")
    p.add_argument("--dtype", default="bfloat16", choices=DTYPES)
    p.add_argument("--mesh", default=None, help="data=D,model=M (default: data over all devices)")
    p.add_argument("--fsdp", action="store_true", help="also shard the weights over the data axis (FSDP)")
    p.add_argument("--devices", type=int, default=None, help="plan for N devices (forced CPU devices)")
    p.add_argument("--attention", default="chunked", choices=("chunked", "blocked", "xla", "auto"),
                   help="attention path compiled (auto: the current backend's choice)")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the result here")
    p.add_argument(CHILD_FLAG, action="store_true", help=argparse.SUPPRESS)
    return p


# ------------------------------------------------------------------------------------------- inputs


def read_config(path: str):
    """(config, hf_config dict) from a config.json or a checkpoint directory (HF or jaxvlm)."""
    from jaxvlm import io

    if os.path.isdir(path):
        if io.is_jaxvlm_dir(path):
            meta = io.read_json(os.path.join(path, io.META_FILE))
            hf = meta.get("hf_config") if isinstance(meta, dict) else None
        else:
            file = os.path.join(path, "config.json")
            if not os.path.isfile(file):
                raise UserError(f"{path}: no config.json (neither a Hugging Face checkpoint nor a jaxvlm directory)")
            hf = io.read_json(file)
    elif os.path.isfile(path):
        hf = io.read_json(path)
    else:
        raise UserError(f"{path}: no such file or directory")
    if not isinstance(hf, dict):
        raise UserError(f"{path}: not a model config (a JSON object expected)")
    return io.parse_hf_config(hf), hf


def parse_mesh(spec: str | None, devices: int) -> tuple[int, int]:
    """(data, model) from "data=D,model=M" (either may be omitted; default data = devices / model)."""
    sizes = {"data": None, "model": 1}
    for item in filter(None, (s.strip() for s in (spec or "").split(","))):
        key, eq, value = item.partition("=")
        if not eq or key.strip() not in sizes or not value.strip().isdigit() or int(value) < 1:
            raise UserError(f"--mesh {spec!r}: expected data=D,model=M with positive integers, got {item!r}")
        sizes[key.strip()] = int(value)
    model = sizes["model"]
    data = sizes["data"] if sizes["data"] is not None else max(1, devices // model)
    if data * model != devices:
        raise UserError(f"--mesh {spec!r}: data*model = {data * model} but {devices} device(s) are planned "
                        f"(--devices N)")
    return data, model


def synthetic_inputs(config, batch: int, prompt_tokens: int, images: int) -> dict:
    """transformers-style numpy inputs of the planned shape: `images` images per row at the default
    resolution, the rest text. Token ids are arbitrary in-vocabulary ids."""
    fam = config.family
    rng = np.random.default_rng(0)
    vocab = config.text.vocab_size
    if fam == "llava":
        per_image = config.vision.grid ** 2
        image_id = config.image_token_id
    elif fam in ("qwen2_vl", "qwen2_5_vl"):
        v = config.vision
        gh, gw = (s // v.patch_size for s in DEFAULT_QWEN_IMAGE)
        per_image = gh * gw // v.spatial_merge_size ** 2
        image_id = config.image_token_id
    else:
        raise UserError(f"jaxvlm plan: family {fam!r} is not supported by the planner (llava, qwen2_vl, qwen2_5_vl)")
    visual = images * per_image
    if visual + 2 > prompt_tokens:
        raise UserError(f"--prompt-tokens {prompt_tokens}: {images} image(s) take {visual} tokens (+2 text); "
                        f"give at least {visual + 2} or fewer --images")
    media = {image_id, getattr(config, "video_token_id", -1)}
    text = np.asarray([i for i in range(1, min(vocab, 4096)) if i not in media], np.int64)
    ids = rng.choice(text, size=(batch, prompt_tokens))
    for j in range(images):
        ids[:, 1 + j * (per_image + 1): 1 + j * (per_image + 1) + per_image] = image_id
    out = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if images and fam == "llava":
        s = config.vision.image_size
        out["pixel_values"] = np.zeros((batch * images, 3, s, s), np.float32)
    elif images:
        v = config.vision
        gh, gw = (s // v.patch_size for s in DEFAULT_QWEN_IMAGE)
        width = v.in_channels * v.temporal_patch_size * v.patch_size ** 2
        out["pixel_values"] = np.zeros((batch * images * gh * gw, width), np.float32)
        out["image_grid_thw"] = np.tile(np.asarray([[1, gh, gw]], np.int64), (batch * images, 1))
    return out


def abstract_params(config, dtype: str, mesh=None, fsdp: bool = False):
    """The model with every weight a ShapeDtypeStruct, placed on `mesh` by the logical-axis table if given
    (`fsdp`: also over the data axis, as `jaxvlm.load(..., fsdp=True)` places them)."""
    import jax
    import jax.numpy as jnp

    from jaxvlm.engine import sharding
    from jaxvlm.model import VLM, family_module

    shapes = family_module(config.family).weight_shapes(config)
    weights = jax.tree.map(lambda s: jax.ShapeDtypeStruct(tuple(s), jnp.dtype(dtype)), shapes,
                           is_leaf=lambda s: isinstance(s, tuple))
    if mesh is not None:
        placed = sharding.weight_shardings(weights, mesh, fsdp=fsdp)
        weights = jax.tree.map(lambda w, sh: jax.ShapeDtypeStruct(w.shape, w.dtype, sharding=sh), weights, placed)
    return VLM(weights=weights, config=config)


def weight_bytes_per_device(weights) -> int:
    """Bytes of one device's shards of the weights (ShapeDtypeStructs, sharded or not)."""
    import jax

    def one(w):
        shape = w.shape if w.sharding is None else w.sharding.shard_shape(w.shape)
        return int(np.prod(shape)) * w.dtype.itemsize

    return sum(one(w) for w in jax.tree.leaves(weights))


# -------------------------------------------------------------------------------------------- FLOPs


def dot_flops(jaxpr, decode_trips: int) -> tuple[float, float]:
    """(outside, inside) dot FLOPs of a closed jaxpr: outside / inside the `while` loops (the decode loop,
    counted `decode_trips` times); scans count times their length, conds their costliest branch."""

    def walk(jp, mult: float, in_while: bool, acc: list):
        for eqn in jp.eqns:
            name = eqn.primitive.name
            if name == "dot_general":
                (lc, _), _ = eqn.params["dimension_numbers"]
                lhs = eqn.invars[0].aval.shape
                k = float(np.prod([lhs[d] for d in lc])) if lc else 1.0
                acc[in_while] += 2.0 * float(np.prod(eqn.outvars[0].aval.shape)) * k * mult
                continue
            if name == "scan":
                walk(eqn.params["jaxpr"].jaxpr, mult * eqn.params["length"], in_while, acc)
            elif name == "while":
                walk(eqn.params["body_jaxpr"].jaxpr, mult * decode_trips, True, acc)
            elif name == "cond":
                best = None
                for br in eqn.params["branches"]:
                    sub = [0.0, 0.0]
                    walk(br.jaxpr, mult, in_while, sub)
                    best = sub if best is None or sum(sub) > sum(best) else best
                acc[0] += best[0]
                acc[1] += best[1]
            else:
                for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
                    sub = eqn.params.get(key)
                    if sub is not None:
                        walk(getattr(sub, "jaxpr", sub), mult, in_while, acc)

    acc = [0.0, 0.0]
    walk(jaxpr.jaxpr, 1.0, False, acc)
    return acc[0], acc[1]


# --------------------------------------------------------------------------------------------- plan


def kv_cache_bytes(config, plan, batch_per_device: int, itemsize: int, model: int = 1) -> int:
    """Prompt caches + decode tails of every segment on one device (K, V; heads-major (L, B, K, T + M, H); the
    kv heads split over the model axis when it divides them, as the kv projections are)."""
    t = config.text
    if not plan.max_new:
        return 0
    heads = t.num_kv_heads // model if t.num_kv_heads % model == 0 else t.num_kv_heads
    total = 0
    for (a, z), length in zip(plan.bounds, plan.lengths):
        total += 2 * (z - a) * batch_per_device * heads * (length + plan.max_new) * t.head_dim * itemsize
    return int(total)


def plan_program(config, batch: int, prompt_tokens: int, max_new: int, images: int = 1, prune=None,
                 dtype: str = "bfloat16", data: int = 1, attention: str = "chunked", model: int = 1,
                 fsdp: bool = False) -> dict:
    """Compile the generate program for these shapes and report its per-device memory, compile time, FLOPs."""
    import jax
    import jax.numpy as jnp

    from jaxvlm import attention as attn
    from jaxvlm.engine import api, sharding
    from jaxvlm.prune.spec import parse_schedule

    if batch < 1 or prompt_tokens < 1 or max_new < 1 or images < 0:
        raise UserError(f"jaxvlm plan: need --batch, --prompt-tokens, --max-new-tokens >= 1 and --images >= 0 "
                        f"(got {batch}, {prompt_tokens}, {max_new}, {images})")
    if jax.device_count() < data * model:
        raise UserError(f"jaxvlm plan: {data * model} devices planned but {jax.device_count()} present (use --devices)")
    schedule = parse_schedule(prune) if isinstance(prune, str) or prune is None else prune
    mesh = sharding.model_mesh(data, model) if data * model > 1 else None
    params = abstract_params(config, dtype, mesh, fsdp)
    inputs = synthetic_inputs(config, batch, prompt_tokens, images)
    batch_arrays, plan, _, pad_masks = api._prepared(params, inputs, schedule, max_new)
    args = (params, batch_arrays, jax.random.key(0), api._sampling(0.0, 1.0))
    kwargs = dict(plan=plan, eos=np.int32([-1]), pad_id=np.int32(0), mesh=mesh, output_logits=False,
                  layer_list=None, pad_masks=pad_masks)
    impl = None if attention == "auto" else attention
    t0 = time.perf_counter()
    with attn.attention_impl(impl):
        traced = api._generate_vlm.trace(*args, **kwargs)
        compiled = traced.lower().compile()
    seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    prefill_flops, decode_flops = dot_flops(traced.jaxpr, max_new - 1)
    itemsize = jnp.dtype(dtype).itemsize
    rows = -(-batch // data)
    total = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes - mem.alias_size_in_bytes
    return {
        "model": config.family, "dtype": dtype, "batch": batch, "prompt_tokens": prompt_tokens,
        "bucket": plan.lengths[0], "segment_tokens": list(plan.lengths), "max_new_tokens": max_new, "images": images,
        "prune": prune if isinstance(prune, str) else None, "mesh": {"data": data, "model": model},
        "fsdp": fsdp, "devices": data * model, "attention": attention, "backend": jax.default_backend(),
        "weights_bytes": weight_bytes_per_device(params.weights),
        "kv_cache_bytes": kv_cache_bytes(config, plan, rows, itemsize, model),
        "temp_bytes": int(mem.temp_size_in_bytes), "argument_bytes": int(mem.argument_size_in_bytes),
        "total_bytes": int(total), "compile_seconds": round(seconds, 2),
        "prefill_flops": prefill_flops / (data * model), "decode_flops": decode_flops / (data * model),
    }


def _format(r: dict) -> str:
    gb = lambda b: f"{b / 1e9:.2f} GB"  # noqa: E731
    return (f"{r['model']} {r['dtype']} batch {r['batch']} x {r['prompt_tokens']} (+{r['max_new_tokens']}) tokens, "
            f"prune {r['prune'] or 'none'}, mesh data={r['mesh']['data']},model={r['mesh']['model']}"
            f"{' (fsdp)' if r.get('fsdp') else ''}: per device "
            f"weights {gb(r['weights_bytes'])}, kv cache {gb(r['kv_cache_bytes'])} (in temp), "
            f"temp {gb(r['temp_bytes'])}, total {gb(r['total_bytes'])}; compile {r['compile_seconds']:.1f} s; "
            f"FLOPs prefill {r['prefill_flops']:.3e}, decode {r['decode_flops']:.3e}")


def _run_in_subprocess(argv: list[str], devices: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"))
    proc = subprocess.run([sys.executable, "-m", "jaxvlm.plan", *argv, CHILD_FLAG], env=env, capture_output=True,
                          text=True)
    if proc.returncode == 2:
        raise UserError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "jaxvlm plan failed")
    if proc.returncode != 0:
        raise RuntimeError(f"planning subprocess failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parser().parse_args(argv)
    config, _ = read_config(a.config)
    if a.devices is not None and a.devices < 1:
        raise UserError(f"--devices {a.devices}: must be >= 1")
    import jax

    devices = a.devices or (jax.device_count() if a.mesh else 1)
    data, model = parse_mesh(a.mesh, devices)
    if not a._in_subprocess and devices > 1 and jax.device_count() < devices:
        result = _run_in_subprocess(_without_json(argv), devices)
    else:
        result = plan_program(config, a.batch, a.prompt_tokens, a.max_new_tokens, a.images, a.prune, a.dtype,
                              data, a.attention, model, a.fsdp)
    if a._in_subprocess:
        print(json.dumps(result))
        return 0
    print(_format(result))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


def _without_json(argv: list[str]) -> list[str]:
    out, skip = [], False
    for x in argv:
        if skip:
            skip = False
        elif x == "--json":
            skip = True
        elif not x.startswith("--json="):
            out.append(x)
    return out


if __name__ == "__main__":
    from jaxvlm.errors import run_cli

    sys.exit(run_cli("jaxvlm plan", main, sys.argv[1:]))
