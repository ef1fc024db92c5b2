"""Device check: one command that tells a GPU / TPU owner whether jaxvlm's kernels, planner and prefill speed hold
on their device (a few minutes on one H100 / H200 / TPU chip, compiles included).

    .venv/bin/python dev/device_check.py [--smoke] [--out DIR] [--sections kernels,planner,mfu]
                                         [--paths chunked,xla] [--masks right_pad]

Sections (each in a fresh child process, so every allocator peak is its own and a crash is reported as a
failure of its section; `--in-process` runs them here, for tests and debugging):

1. kernels: every attention path of this backend (GPU: cudnn, chunked, xla; TPU: splash, chunked, xla; CPU:
   chunked, blocked, splash in Pallas interpret mode, xla) at B=2, T in {512, 4096}, heads 32/32 (LLaVA) and
   28/4 (Qwen2.5 GQA), head dim 128, bfloat16 and float32, four masks: causal with left padding, causal with
   right padding, causal with pruned (non-contiguous) kept positions, Qwen vision windows (block-diagonal
   segments, not causal). Per row: max |error| at the valid query slots against a float32 ground truth
   (jax.nn.dot_product_attention with the dense mask at "highest" matmul precision, in query chunks), the
   worst error over its tolerance (TOLERANCE), the path `choose` picks for the case, compile seconds and the
   median of 5 timed calls after a warm-up. A row over its tolerance is a failure: exit 1.
2. planner: `jaxvlm.plan.plan_program`'s per-device total for llava-1.5-7b with 4 layers (bfloat16, batch 8,
   704 + 32 tokens, unpruned and FastV keep 64, the attention the backend chooses) against the allocator's
   peak (`peak_bytes_in_use`) during a real `jaxvlm.generate` call on random weights; "n/a" where the backend
   keeps no statistics (CPU).
3. mfu: prefill (generate with max_new_tokens=1, the time to the first token) of llava-1.5-7b's language
   model (all 32 layers where the allocator has 40 GB, else 8), batch 8, T = 704 and 4096, bfloat16,
   unpruned and FastV keep 64: compile seconds, median prefill time, the program's dot FLOPs
   (`jaxvlm.plan.dot_flops`) and MFU against PEAK_FLOPS for the device kind (unknown kinds: FLOP/s only).
   Attention kernels are opaque to the jaxpr: under cuDNN the count takes the lax.cond's costlier branch, the
   chunked path (its visited causal blocks); a Pallas kernel's body is counted once, not per grid step, so on
   TPU the attention share is undercounted.

Compile seconds are the first call minus the median call; every timed call ends in block_until_ready.
`--smoke` shrinks every shape (tiny configs, T=320 kernels, one head layout) so the check runs on a CPU in a
few minutes; it checks the machinery, not a device. Writes DIR/device_check.json (default: runs/device_check).
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

SECTIONS = ("kernels", "planner", "mfu")
CHILD_FLAG = "--_child"
RESULT_MARK = "DEVICE_CHECK_RESULT "
CONFIG_7B = os.path.join(ROOT, "jaxvlm", "data", "configs", "llava-1.5-7b-hf.json")
FASTV = "fastv:layer=2,keep=64"

# Kernel tolerances, elementwise as in numpy.allclose: |out - truth| <= atol + rtol * |truth| (outputs of O(1):
# q, k, v ~ N(0, 1), bf16-representable). float32 paths run at "highest" matmul precision, so only summation
# orders differ (measured <= 1e-6 on CPU), while one key wrongly seen or hidden moves some output by about
# |v| / (visible keys) >= 2.5e-4 at 4096 keys: atol 1e-4 catches any mask error. bfloat16 outputs are rounded
# to bf16 (half an ulp: 2^-9 |x|), the kernels feed bf16 softmax weights to the value product and the xla
# reference rounds the logits themselves to bf16 (measured <= 1.4e-2 at |x| ~ 2 on CPU); atol = rtol = 1e-2
# leaves room for accumulation orders while a dropped segment or a causal leak (errors ~0.1-1) still fails.
TOLERANCE = {"float32": {"atol": 1e-4, "rtol": 0.0}, "bfloat16": {"atol": 1e-2, "rtol": 1e-2}}

# Peak dense bfloat16 FLOP/s per device kind (vendor data sheets), matched in order by substrings of
# jax's device_kind (lower case).
PEAK_FLOPS = (
    (("h100", "pcie"), 756e12), (("h100",), 989e12), (("h200",), 989e12), (("a100",), 312e12),
    (("v5 lite",), 197e12), (("v5e",), 197e12), (("v5p",), 459e12), (("tpu v5",), 459e12), (("v4",), 275e12),
)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Shapes of one run (FULL on a device, SMOKE on a CPU) and the kernel cases to run."""

    kernel_batch: int
    kernel_lengths: tuple
    kernel_heads: tuple  # (q heads, kv heads) pairs
    reps: int  # timed calls per measurement (after one warm-up)
    planner_text: dict  # overrides of llava-1.5-7b's text_config
    planner_vision: dict  # overrides of its vision_config
    planner_batch: int
    planner_prompt: int
    planner_new: int
    mfu_text: dict
    mfu_batch: int
    mfu_lengths: tuple
    kernel_masks: tuple = ("left_pad", "right_pad", "pruned", "windows")
    kernel_dtypes: tuple = ("bfloat16", "float32")
    kernel_paths: tuple | None = None  # None: every path of the backend (backend_paths())


FULL = Sizes(kernel_batch=2, kernel_lengths=(512, 4096), kernel_heads=((32, 32), (28, 4)), reps=5,
             planner_text={"num_hidden_layers": 4}, planner_vision={}, planner_batch=8, planner_prompt=704,
             planner_new=32, mfu_text={}, mfu_batch=8, mfu_lengths=(704, 4096))
# CPU: T=320 gives every path several blocks (chunked 2 x 2, blocked 2, splash 3 x 3); a 168-pixel image has
# 144 visual tokens (FastV keep 64 still prunes); the LM prompt stays LLaVA's 704 tokens.
SMOKE = Sizes(kernel_batch=2, kernel_lengths=(320,), kernel_heads=((4, 2),), reps=2,
              planner_text={"hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
                            "num_key_value_heads": 2, "intermediate_size": 128},
              planner_vision={"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                              "num_hidden_layers": 1, "image_size": 168},
              planner_batch=2, planner_prompt=192, planner_new=2,
              mfu_text={"hidden_size": 128, "num_hidden_layers": 3, "num_attention_heads": 2,
                        "num_key_value_heads": 2, "intermediate_size": 256},
              mfu_batch=2, mfu_lengths=(704,))


# ------------------------------------------------------------------------------------------- common


def timed(fn, reps: int):
    """(first call's result, its seconds, median seconds of `reps` calls after one more warm-up call); fn
    blocks until its result is ready. first - median is the call's trace + compile time."""
    t0 = time.perf_counter()
    result = fn()
    first = time.perf_counter() - t0
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return result, first, statistics.median(times)


def device_info() -> dict:
    import jax

    dev = jax.devices()[0]
    stats = dev.memory_stats()
    return {"backend": jax.default_backend(), "device_kind": dev.device_kind, "devices": jax.device_count(),
            "bytes_limit": None if not stats else stats.get("bytes_limit"), "jax": jax.__version__}


def peak_flops(device_kind: str) -> float | None:
    """Peak dense bf16 FLOP/s of `device_kind` from PEAK_FLOPS, None when unknown."""
    kind = device_kind.lower()
    return next((peak for keys, peak in PEAK_FLOPS if all(k in kind for k in keys)), None)


def llava_config(text: dict, vision: dict):
    """llava-1.5-7b's config with these text_config / vision_config overrides."""
    from jaxvlm import io

    hf = io.read_json(CONFIG_7B)
    hf["text_config"] = {**hf["text_config"], **text}
    hf["vision_config"] = {**hf["vision_config"], **vision}
    return io.parse_hf_config(hf)


def device_weights(abstract, seed: int = 0, std: float = 0.02):
    """Random weights shaped as `abstract` (a pytree of ShapeDtypeStruct) drawn on the device one leaf at a
    time (no host copy, and no scratch beyond one leaf: the planner's peak stays the program's): norm scales 1,
    everything else N(0, std) in its dtype (the values only have to be finite for this check)."""
    import functools

    import jax
    import jax.numpy as jnp

    @functools.partial(jax.jit, static_argnums=(1, 2))
    def normal(key, shape, dtype):
        return jax.random.normal(key, shape, dtype) * jnp.asarray(std, dtype)

    flat, tree = jax.tree_util.tree_flatten_with_path(abstract)
    keys = jax.random.split(jax.random.key(seed), len(flat))
    leaves = [jax.block_until_ready(jnp.ones(s.shape, s.dtype) if "norm" in str(path[-1]) else
                                    normal(k, tuple(s.shape), jnp.dtype(s.dtype)))
              for k, (path, s) in zip(keys, flat)]
    return jax.tree_util.tree_unflatten(tree, leaves)


# ------------------------------------------------------------------------------------------ kernels


def backend_paths(backend: str) -> tuple:
    return {"gpu": ("cudnn", "chunked", "xla"), "tpu": ("splash", "chunked", "xla")}.get(
        backend, ("chunked", "blocked", "splash_interpret", "xla"))


def kernel_masks(b: int, t: int, seed: int = 0) -> dict:
    """The four masks of section 1 as numpy (kv_valid (B, T) bool, segments (B, T) int32 or None, causal).
    Row 0 is padded by T/4, row 1 is not (rows alternate)."""
    rng = np.random.default_rng(seed)
    slot = np.arange(t)[None]
    pad = np.asarray([t // 4 if r % 2 == 0 else 0 for r in range(b)])[:, None]
    right = slot < t - pad
    text = (slot < t // 16) | (slot >= t - t // 8 - pad)  # a text prefix and suffix around a visual span
    pruned = right & (text | (rng.random((b, t)) < 0.3))  # 30% of the visual span kept, in place
    cuts = [np.sort(rng.choice(np.arange(1, t), size=max(2, t // 64), replace=False)) for _ in range(b)]
    segments = np.stack([np.searchsorted(c, np.arange(t), side="right") for c in cuts]).astype(np.int32)
    return {"left_pad": (slot >= pad, None, True), "right_pad": (right, None, True), "pruned": (pruned, None, True),
            "windows": (right, segments, False)}


def token_mask(valid, segments, causal: bool):
    import jax.numpy as jnp

    from jaxvlm import attention as attn

    valid = jnp.asarray(valid)
    if causal:
        return attn.causal_mask(valid)
    return attn.full_mask(valid, None if segments is None else jnp.asarray(segments))


def ground_truth(q, k, v, mask, chunk: int = 512):
    """float32 attention with the dense mask at "highest" precision, `chunk` query rows at a time (bounded
    memory at T=4096 on small devices)."""
    import jax
    import jax.numpy as jnp

    b, t, n, h = q.shape
    chunks = -(-t // chunk)

    def truth(q, k, v, mask):
        qp = jnp.pad(q, ((0, 0), (0, chunks * chunk - t), (0, 0), (0, 0)))

        def one(i):
            qc = jax.lax.dynamic_slice_in_dim(qp, i * chunk, chunk, axis=1)
            vis = mask.visible(i * chunk, chunk, 0, k.shape[1])
            return jax.nn.dot_product_attention(qc, k, v, mask=vis[:, None])

        out = jax.lax.map(one, jnp.arange(chunks))
        return out.transpose(1, 0, 2, 3, 4).reshape(b, chunks * chunk, n, h)[:, :t]

    with jax.default_matmul_precision("highest"):
        return jax.jit(truth)(q, k, v, mask)


def path_supported(path: str, q, k, mask) -> bool:
    from jaxvlm import attention as attn

    if path == "cudnn":
        return attn.cudnn_supported(q, k, mask)
    if path.startswith("splash"):
        return attn.splash_supported(q, k, mask)
    return True


def run_path(path: str, q, k, v, mask, reps: int):
    """(output, compile seconds, median seconds) of `attention` with `path` forced; float32 at "highest" matmul
    precision (the context stays open for every call: it is part of jit's cache key)."""
    import jax
    import jax.numpy as jnp

    from jaxvlm import attention as attn

    precision = "highest" if q.dtype == jnp.float32 else "default"
    # A fresh function per path: jit's trace cache is keyed by the function, not by the forced path.
    fn = jax.jit(lambda q, k, v, mask: attn.attention(q, k, v, mask))
    with attn.attention_impl(path), jax.default_matmul_precision(precision):
        out, first, call = timed(lambda: jax.block_until_ready(fn(q, k, v, mask)), reps)
    return out, max(0.0, first - call), call


def kernel_row(path, q, k, v, mask, truth, valid, reps: int) -> dict:
    """One table row: errors at the valid query slots against the tolerance, compile and median call time."""
    import jax.numpy as jnp

    dtype = jnp.dtype(q.dtype).name
    if not path_supported(path, q, k, mask):
        return {"path": path, "dtype": dtype, "ok": True,
                "note": "unsupported here (attention() falls back to chunked)"}
    try:
        out, compile_s, call = run_path(path, q, k, v, mask, reps)
    except Exception as e:  # noqa: BLE001 (reported; an out-of-memory xla reference at T=4096 is no failure)
        text = str(e)
        oom = "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()
        return {"path": path, "dtype": dtype, "ok": path == "xla" and oom,
                "note": f"{type(e).__name__}: {text.splitlines()[0][:160] if text else ''}"}
    tol = TOLERANCE[dtype]
    diff = jnp.where(valid[:, :, None, None], jnp.abs(out.astype(jnp.float32) - truth), 0.0)
    err = float(jnp.max(diff))
    worst = float(jnp.max(diff / (tol["atol"] + tol["rtol"] * jnp.abs(truth))))
    note = ""
    if path == "cudnn":
        v_np = np.asarray(valid)
        prefix = bool(np.all(v_np == (np.arange(v_np.shape[1]) < v_np.sum(1)[:, None])))
        note = "runs flash (valid keys a prefix)" if prefix else "runs chunked (lax.cond: valid keys not a prefix)"
    return {"path": path, "dtype": dtype, "max_err": err, "err_over_tol": worst,
            "ok": bool(np.isfinite(worst) and worst <= 1.0), "compile_s": round(compile_s, 3), "ms": 1e3 * call,
            "note": note}


def run_kernels(sizes: Sizes) -> dict:
    import jax
    import jax.numpy as jnp

    from jaxvlm import attention as attn

    paths = sizes.kernel_paths or backend_paths(jax.default_backend())
    rows, h, b = [], 128, sizes.kernel_batch
    for t in sizes.kernel_lengths:
        for n, kv in sizes.kernel_heads:
            keys = jax.random.split(jax.random.key(t * 1000 + n * 10 + kv), 3)
            # bf16-representable inputs: the float32 rows and the bfloat16 rows see the same numbers.
            q32, k32, v32 = (jax.random.normal(key, (b, t, heads, h)).astype(jnp.bfloat16).astype(jnp.float32)
                             for key, heads in zip(keys, (n, kv, kv)))
            for name, (valid, segments, causal) in kernel_masks(b, t).items():
                if name not in sizes.kernel_masks:
                    continue
                mask = token_mask(valid, segments, causal)
                truth = ground_truth(q32, k32, v32, mask)
                for dtype in sizes.kernel_dtypes:
                    q, k, v = (x.astype(dtype) for x in (q32, k32, v32))
                    chosen = attn.choose(q, k, mask)
                    for path in paths:
                        row = kernel_row(path, q, k, v, mask, truth, mask.kv_valid, sizes.reps)
                        rows.append({"T": t, "heads": f"{n}/{kv}", "mask": name, "chosen": chosen, **row})
    failures = [f"kernels: {r['path']} {r['dtype']} T={r['T']} heads {r['heads']} mask {r['mask']}: "
                + (f"max |err| {r['max_err']:.3g}, {r['err_over_tol']:.3g} x the tolerance {TOLERANCE[r['dtype']]}"
                   if "max_err" in r else r["note"])
                for r in rows if not r["ok"]]
    return {"rows": rows, "tolerance": TOLERANCE, "failures": failures}


def format_kernels(res: dict) -> str:
    head = (f"{'T':>5} {'heads':>6} {'mask':>9} {'dtype':>8} {'path':>16} {'chosen':>8} {'max|err|':>9} "
            f"{'err/tol':>7} {'ms/call':>9} {'compile s':>9}  note")
    lines = [head, "-" * len(head)]
    for r in res["rows"]:
        err = f"{r['max_err']:.2e}" if "max_err" in r else "-"
        ratio = f"{r['err_over_tol']:.3f}" if "err_over_tol" in r else "-"
        ms = f"{r['ms']:.3f}" if "ms" in r else "-"
        comp = f"{r['compile_s']:.2f}" if "compile_s" in r else "-"
        flag = "" if r["ok"] else "FAIL "
        lines.append(f"{r['T']:>5} {r['heads']:>6} {r['mask']:>9} {r['dtype']:>8} {r['path']:>16} "
                     f"{r['chosen']:>8} {err:>9} {ratio:>7} {ms:>9} {comp:>9}  {flag}{r.get('note', '')}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ planner


def run_planner(sizes: Sizes, prune: str | None) -> dict:
    """Predicted per-device total of the generate program vs the allocator's peak during the real call."""
    import tempfile

    import jax

    from jaxvlm import compile_cache, plan

    dev = jax.devices()[0]
    stats = lambda: dev.memory_stats() or {}  # noqa: E731 (None on CPU)
    config = llava_config(sizes.planner_text, sizes.planner_vision)
    b, t, new = sizes.planner_batch, sizes.planner_prompt, sizes.planner_new
    # Planning first, with nothing allocated, into a fresh compilation cache: the real call then loads the
    # planned program instead of compiling it again (on CPU it differs: per-layer weights), so no compile-time
    # scratch (GPU autotuning) enters the peak measured with the weights in place.
    cache = tempfile.mkdtemp(prefix="jaxvlm-device-check-")
    atexit.register(shutil.rmtree, cache, ignore_errors=True)  # at exit: later compiles of this process write there
    compile_cache.enable(cache)
    predicted = plan.plan_program(config, b, t, new, images=1, prune=prune, dtype="bfloat16", attention="auto")
    return measure_generate(config, predicted, prune, stats, (b, t, new))


def measure_generate(config, predicted: dict, prune: str | None, stats, shape) -> dict:
    """The real generate call on random device weights: allocator statistics before and after it."""
    import jax

    from jaxvlm import plan
    from jaxvlm.engine import api
    from jaxvlm.prune.spec import parse_schedule

    b, t, new = shape
    peak_planning = stats().get("peak_bytes_in_use")
    params = plan.abstract_params(config, "bfloat16")
    params = params.replace(weights=device_weights(params.weights))
    weights_in_use, peak_before = stats().get("bytes_in_use"), stats().get("peak_bytes_in_use")
    inputs = plan.synthetic_inputs(config, b, t, 1)
    t0 = time.perf_counter()
    out = api.generate(params, prune=parse_schedule(prune), max_new_tokens=new, **inputs)
    jax.block_until_ready(out.tokens)
    first_call = time.perf_counter() - t0
    peak = stats().get("peak_bytes_in_use")
    ratio = None if peak is None else peak / predicted["total_bytes"]
    return {"prune": prune or "none", "batch": b, "prompt_tokens": t, "max_new_tokens": new,
            "layers": config.text.num_layers, "predicted": predicted, "predicted_total_bytes": predicted["total_bytes"],
            "measured_peak_bytes": peak, "ratio": ratio, "weights_in_use_bytes": weights_in_use,
            "peak_after_planning_bytes": peak_planning, "peak_before_call_bytes": peak_before,
            "peak_from": None if peak is None else ("generate" if peak > (peak_before or 0) else
                                                    "planning or weight creation (generate's peak is at most this)"),
            "first_call_s": round(first_call, 2), "failures": []}


def format_planner(cases: list) -> str:
    gb = lambda x: "n/a" if x is None else f"{x / 1e9:.3f} GB"  # noqa: E731
    lines = [f"{'prune':>22} {'predicted':>10} {'peak':>10} {'ratio':>6} {'weights':>10} {'in use':>10} "
             f"{'plan temp':>10} {'plan s':>7} {'call s':>7}  peak from",
             f"{'':>22} {'(total)':>10} {'(measured)':>10} {'':>6} {'(planned)':>10} {'(measured)':>10}"]
    for c in cases:
        p = c["predicted"]
        ratio = "n/a" if c["ratio"] is None else f"{c['ratio']:.3f}"
        lines.append(f"{c['prune']:>22} {gb(c['predicted_total_bytes']):>10} {gb(c['measured_peak_bytes']):>10} "
                     f"{ratio:>6} {gb(p['weights_bytes']):>10} {gb(c['weights_in_use_bytes']):>10} "
                     f"{gb(p['temp_bytes']):>10} {p['compile_seconds']:>7.1f} {c['first_call_s']:>7.1f}  "
                     f"{c['peak_from'] or 'n/a (no allocator statistics on this backend)'}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- MFU


def mfu_layers(sizes: Sizes, info: dict) -> int:
    """All 32 layers where the allocator has room for them (bfloat16: 13.5 GB of weights, 17 GB of KV cache
    at B=8, T=4096, ~2 GB of activations), else 8; the smoke config's own count."""
    if "num_hidden_layers" in sizes.mfu_text:
        return sizes.mfu_text["num_hidden_layers"]
    return 32 if (info.get("bytes_limit") or 0) >= 40e9 else 8


def mfu_prompt(cfg, b: int, t: int, dtype):
    """A LLaVA-shaped embedded prompt: 35 text tokens, 576 visual tokens, the rest text (random embeddings)."""
    import jax
    import jax.numpy as jnp

    from experiments.bench import N_VISUAL, PREFIX, embedded

    visual = np.zeros((b, t), bool)
    visual[:, PREFIX:PREFIX + N_VISUAL] = True
    x = jax.random.normal(jax.random.key(1), (b, t, cfg.hidden_size), dtype) * jnp.asarray(0.02, dtype)
    return embedded(x, visual)


def prefill_case(text_w, cfg, emb, prune: str | None, reps: int) -> dict:
    """generate(max_new_tokens=1) on this embedded prompt (time to the first token, what `jaxvlm bench` calls
    prefill): the program's dot FLOPs, compile seconds (first call - median) and median seconds."""
    import jax

    from jaxvlm import plan as planner
    from jaxvlm.engine import api
    from jaxvlm.prune.spec import parse_schedule

    schedule = parse_schedule(prune)
    prog, _, state = api._embedded_plan(cfg, emb, schedule, 1)
    eos, pad = api._eos_pad(None, None)
    args = (text_w, state, jax.random.key(0), api._sampling(0.0, 1.0))
    kwargs = dict(cfg=cfg, plan=prog, eos=eos, pad_id=pad, mesh=None, output_logits=False,
                  layer_list=api.per_layer_weights(text_w))
    flops, _ = planner.dot_flops(api._generate_embedded.trace(*args, **kwargs).jaxpr, 0)
    _, first, seconds = timed(lambda: jax.block_until_ready(api._generate_embedded(*args, **kwargs)), reps)
    return {"prune": prune or "none", "T": emb.valid.shape[1], "segment_tokens": list(prog.lengths),
            "compile_s": round(max(0.0, first - seconds), 2), "prefill_s": seconds, "flops": flops,
            "flops_per_s": flops / seconds}


def run_mfu(sizes: Sizes) -> dict:
    import jax.numpy as jnp

    from jaxvlm import plan

    info = device_info()
    layers = mfu_layers(sizes, info)
    config = llava_config({**sizes.mfu_text, "num_hidden_layers": layers}, {})
    cfg = config.text
    abstract = plan.abstract_params(config, "bfloat16").weights["text"]
    text_w = device_weights(abstract)
    peak = peak_flops(info["device_kind"])
    rows = []
    for t in sizes.mfu_lengths:
        emb = mfu_prompt(cfg, sizes.mfu_batch, t, jnp.bfloat16)
        base = None
        for prune in (None, FASTV):
            r = prefill_case(text_w, cfg, emb, prune, sizes.reps)
            r["mfu"] = None if peak is None else r["flops_per_s"] / peak
            if base is None:
                base = r
            else:
                r["flops_ratio"] = r["flops"] / base["flops"]
                r["time_ratio"] = r["prefill_s"] / base["prefill_s"]
                r["tokens_ratio"] = r["segment_tokens"][-1] / base["segment_tokens"][-1]
            rows.append(r)
    return {"layers": layers, "hidden": cfg.hidden_size, "ffn": cfg.intermediate_size, "heads": cfg.num_heads,
            "vocab": cfg.vocab_size, "batch": sizes.mfu_batch, "dtype": "bfloat16", "device_kind": info["device_kind"],
            "peak_flops": peak, "rows": rows, "failures": []}


def format_mfu(res: dict) -> str:
    peak = "unknown device kind: achieved FLOP/s only" if res["peak_flops"] is None else \
        f"peak {res['peak_flops'] / 1e12:.0f} TFLOP/s bf16"
    lines = [f"llava-1.5-7b language model, {res['layers']} layers (D {res['hidden']}, F {res['ffn']}, "
             f"{res['heads']} heads, vocab {res['vocab']}), batch {res['batch']}, {res['dtype']}; {peak}",
             "FLOPs: the program's dot FLOPs (jaxvlm.plan.dot_flops; see the module docstring for kernels)",
             f"{'T':>5} {'prune':>20} {'tokens':>12} {'compile s':>9} {'prefill ms':>10} {'TFLOP':>8} "
             f"{'TFLOP/s':>8} {'MFU':>6} {'FLOPs ratio':>11} {'time ratio':>10}"]
    for r in res["rows"]:
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        fr = f"{r['flops_ratio']:.3f}" if "flops_ratio" in r else "-"
        tr = f"{r['time_ratio']:.3f}" if "time_ratio" in r else "-"
        tokens = "->".join(map(str, (r["segment_tokens"][0], r["segment_tokens"][-1])))
        lines.append(f"{r['T']:>5} {r['prune']:>20} {tokens:>12} {r['compile_s']:>9.2f} {1e3 * r['prefill_s']:>10.2f} "
                     f"{r['flops'] / 1e12:>8.3f} {r['flops_per_s'] / 1e12:>8.2f} {mfu:>6} {fr:>11} {tr:>10}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ driver


def run_part(part: str, sizes: Sizes) -> dict:
    """One child's work: "kernels", "planner:none", "planner:<spec>" or "mfu"."""
    section, _, arg = part.partition(":")
    run = {"kernels": lambda: run_kernels(sizes), "planner": lambda: run_planner(sizes, None if arg == "none" else arg),
           "mfu": lambda: run_mfu(sizes)}[section]
    return {"device": device_info(), **run()}


def parts_of(section: str) -> tuple:
    return ("planner:none", f"planner:{FASTV}") if section == "planner" else (section,)


def run_child(part: str, flags: list) -> dict:
    """`run_part` in a fresh process (its own allocator and peak statistics); a crash becomes a failure."""
    cmd = [sys.executable, os.path.abspath(__file__), CHILD_FLAG, part, *flags]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        return {"failures": [f"{part}: child process exited {proc.returncode} (its traceback is above)"]}
    return json.loads(lines[-1][len(RESULT_MARK):])


def run_guarded(part: str, sizes: Sizes) -> dict:
    """`run_part` in this process, an exception reported as a failure of the part (as a child's crash is)."""
    import traceback

    try:
        return run_part(part, sizes)
    except Exception as e:  # noqa: BLE001 (every part's failure is reported, the others still run)
        traceback.print_exc()
        return {"failures": [f"{part}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"]}


def report(sections: dict) -> str:
    out = []
    if "kernels" in sections and "rows" in sections["kernels"]:
        out += ["", "== 1. attention paths (max |err| vs float32 ground truth at valid query slots; median of "
                "timed calls) ==", format_kernels(sections["kernels"])]
    cases = [c for c in sections.get("planner", []) if "predicted" in c]
    if cases:
        out += ["", "== 2. planner (jaxvlm plan) vs the allocator's peak during generate ==", format_planner(cases)]
    if "mfu" in sections and "rows" in sections["mfu"]:
        out += ["", "== 3. prefill MFU ==", format_mfu(sections["mfu"])]
    return "\n".join(out)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dev/device_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny shapes (CPU; checks the machinery only)")
    p.add_argument("--out", default=os.path.join("runs", "device_check"), help="directory for device_check.json")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    p.add_argument("--paths", default=None, help="section 1: only these attention paths (comma-separated)")
    p.add_argument("--masks", default=None, help="section 1: only these masks (left_pad,right_pad,pruned,windows)")
    p.add_argument("--in-process", action="store_true",
                   help="run the sections here, not in child processes (allocator peaks include earlier sections)")
    p.add_argument(CHILD_FLAG, default=None, help=argparse.SUPPRESS)
    return p


def timed_part(run, part: str) -> dict:
    """run(part) with its wall seconds added, announced as it starts (the full check takes minutes)."""
    print(f"[device check] {part} ...", flush=True)
    t0 = time.perf_counter()
    result = run(part)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"[device check] {part}: {result['seconds']} s, {len(result.get('failures', []))} failure(s)", flush=True)
    return result


def sizes_of(a) -> Sizes:
    """SMOKE or FULL narrowed by --paths / --masks."""
    split = lambda text: tuple(x.strip() for x in text.split(",") if x.strip())  # noqa: E731
    sizes = SMOKE if a.smoke else FULL
    if a.paths:
        sizes = dataclasses.replace(sizes, kernel_paths=split(a.paths))
    if a.masks:
        sizes = dataclasses.replace(sizes, kernel_masks=split(a.masks))
    return sizes


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    sizes = sizes_of(a)
    if a._child:
        print(RESULT_MARK + json.dumps(run_part(a._child, sizes)))
        return 0
    chosen = [s.strip() for s in a.sections.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser().error(f"--sections: unknown {unknown}; have {', '.join(SECTIONS)}")
    forwarded = ["--smoke"] if a.smoke else []
    forwarded += [f"--{name}={getattr(a, name)}" for name in ("paths", "masks") if getattr(a, name)]
    run = (lambda part: run_guarded(part, sizes)) if a.in_process else (lambda part: run_child(part, forwarded))
    t0 = time.perf_counter()
    sections, failures, info = {}, [], None
    for section in chosen:
        results = [timed_part(run, part) for part in parts_of(section)]
        for r in results:
            failures += r.get("failures", [])
            device = r.pop("device", None)
            info = info or device
        sections[section] = results if section == "planner" else results[0]
    info = info or {"backend": "?", "device_kind": "?", "jax": "?"}
    result = {**info, "smoke": a.smoke, "seconds": round(time.perf_counter() - t0, 1), "tolerance": TOLERANCE,
              "sections": sections, "failures": failures}
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "device_check.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"device check on {info['backend']} ({info['device_kind']}), jax {info['jax']}"
          f"{' (smoke: tiny shapes)' if a.smoke else ''}: {result['seconds']} s")
    print(report(sections))
    print("")
    for line in failures:
        print(f"FAILURE {line}")
    print(f"{'FAILED' if failures else 'OK'}: {len(failures)} failure(s); wrote {path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
