"""The planner's table: does llava-1.5-7b / 13b or Qwen2.5-VL-7B fit, in bfloat16, on TPU v5e-4, v5e-8, v4-8 or
one H100? Per-device weights / KV cache / temporaries / total from `jaxvlm.plan.plan_program` (the generate
program compiled with the weights as shapes, on this CPU host, N devices forced), and the largest batch that fits.

    python -m experiments.plan_table [--out outputs/plan_table] [--workloads NAME,...] [--chips NAME,...]
                                     [--no-max-batch] [--verify]

Writes OUT/plan_table.md (the tables of docs/SCALE.md) and OUT/plan_table.json. Every compiled point is kept in
OUT/points.json, so a rerun (or an interrupted run) compiles only what is missing.

How each number is derived (all per device):
- The program is compiled in float32 on the CPU (XLA:CPU has no bfloat16 dot: a bf16 compile there upcasts the
  weight stacks to float32, so its temp is not an accelerator's). bf16 numbers from it:
  weights = f32 weights / 2 and kv = f32 kv / 2, both exact (every weight and cache entry is stored in the
  planned dtype); temp = f32 temp / 2, an estimate: the KV cache, activations and weight-slice copies halve,
  the few buffers that stay float32 in a bf16 program (attention statistics and logit blocks, the last
  token's vocabulary logits) do not; inputs = the f32 program's other arguments (token ids, pixels), not
  halved; total = weights + temp + inputs (the cache is inside temp; outputs are a few KB). All the weights
  count, the vision tower's included where a text-only program does not read them (they stay loaded).
- fits: total <= HEADROOM x the chip's memory (the rest for the runtime, XLA's reserved memory, fragmentation).
- mesh: model = the largest divisor of the chip count that divides both the query and the kv heads (tensor
  parallel over heads, MLP width and vocabulary, jaxvlm.engine.sharding; attention replicated otherwise),
  data = the rest (batch rows).
- max batch: total is linear in the batch (KV and activations per row, weights fixed): the largest batch, a
  multiple of `data`, under the limit by the line through the compiles at BATCH and FIT_BATCH ("fit"); with
  --verify it is compiled too (and lowered until it fits); ">=" where the search stopped at MAX_BATCH.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

GIB = 1 << 30
HEADROOM = 0.9
BATCH, FIT_BATCH, MAX_NEW = 8, 32, 32
MAX_BATCH = 1024  # the search stops here
CONFIGS = os.path.join(os.path.dirname(__file__), "..", "jaxvlm", "data", "configs")


@dataclasses.dataclass(frozen=True)
class Chip:
    devices: int
    memory: int  # bytes per device
    note: str


CHIPS = {
    "v5e-4": Chip(4, 16 * GIB, "TPU v5e, 4 chips x 16 GiB HBM"),
    "v5e-8": Chip(8, 16 * GIB, "TPU v5e, 8 chips x 16 GiB HBM"),
    "v4-8": Chip(4, 32 * GIB, "TPU v4-8: 4 chips x 32 GiB HBM (jax sees 4 devices)"),
    "h100": Chip(1, 80 * 10**9, "one H100 80 GB"),
}


@dataclasses.dataclass(frozen=True)
class Workload:
    config: str  # file in jaxvlm/data/configs
    prompt_tokens: int
    images: int
    prunes: tuple


WORKLOADS = {
    "llava-1.5-7b": Workload("llava-1.5-7b-hf.json", 704, 1, (None, "fastv:keep=64")),
    "llava-1.5-13b": Workload("llava-1.5-13b-hf.json", 704, 1, (None, "fastv:keep=64")),
    # one 448 x 448 image = 256 visual tokens, plus 64 text tokens
    "qwen2.5-vl-7b-image": Workload("qwen2.5-vl-7b-instruct.json", 320, 1, (None, "fastv:keep=64")),
    "qwen2.5-vl-7b-text4k": Workload("qwen2.5-vl-7b-instruct.json", 4096, 0, (None,)),
}


def mesh_for(text_cfg, devices: int) -> tuple[int, int]:
    """(data, model): model the largest divisor of `devices` dividing the query and the kv heads."""
    model = max(m for m in range(1, devices + 1)
                if devices % m == 0 and text_cfg.num_heads % m == 0 and text_cfg.num_kv_heads % m == 0)
    return devices // model, model


def bf16_estimate(r: dict) -> dict:
    """Per-device bfloat16 bytes from a float32 plan (module docstring)."""
    weights, temp = r["weights_bytes"] / 2, r["temp_bytes"] / 2
    inputs = max(0, r["argument_bytes"] - r["weights_bytes"])  # < 0: a text-only program drops the vision weights
    return {"weights": weights, "kv": r["kv_cache_bytes"] / 2, "temp": temp, "inputs": inputs,
            "total": weights + temp + inputs}


class Points:
    """Compiled float32 plans, cached in a JSON file by (workload, prune, data, model, batch)."""

    def __init__(self, path: str):
        self.path = path
        self.cache = json.load(open(path)) if os.path.isfile(path) else {}

    @staticmethod
    def key(name: str, prune, data: int, model: int, batch: int) -> str:
        return f"{name}|{prune or 'none'}|{data}x{model}|{batch}"

    def has(self, *args) -> bool:
        return self.key(*args) in self.cache

    def get(self, name: str, prune, data: int, model: int, batch: int) -> dict:
        key = self.key(name, prune, data, model, batch)
        if key not in self.cache:
            from jaxvlm import plan

            w = WORKLOADS[name]
            config, _ = plan.read_config(os.path.join(CONFIGS, w.config))
            print(f"compiling {key} ...", file=sys.stderr, flush=True)
            self.cache[key] = plan.plan_program(config, batch, w.prompt_tokens, MAX_NEW, w.images, prune,
                                                "float32", data, "chunked", model)
            with open(self.path + ".tmp", "w") as f:
                json.dump(self.cache, f, indent=1)
            os.replace(self.path + ".tmp", self.path)
        return self.cache[key]


def max_batch(points: Points, name, prune, data, model, limit: float, verify: bool) -> dict | None:
    """Largest batch (a multiple of data, <= MAX_BATCH) whose estimated total is under `limit`; None if none.
    Compiled at that batch (and lowered until it fits) with `verify`; without it, as far as compiled points of
    an earlier verifying run reach."""
    a = bf16_estimate(points.get(name, prune, data, model, BATCH))
    b = bf16_estimate(points.get(name, prune, data, model, FIT_BATCH))
    per_row = (b["total"] - a["total"]) / (FIT_BATCH - BATCH)
    fixed = a["total"] - per_row * BATCH
    n = MAX_BATCH if per_row <= 0 else min(MAX_BATCH, int((limit - fixed) // per_row))
    n -= n % data
    # the largest compiled point known to fit: (batch, total)
    ref = next(((m, t) for m, t in ((FIT_BATCH, b["total"]), (BATCH, a["total"])) if t <= limit), (0, fixed))
    while n >= data and (verify or points.has(name, prune, data, model, n)):
        est = bf16_estimate(points.get(name, prune, data, model, n))
        if est["total"] <= limit:
            return {"batch": n, "total": est["total"], "verified": True, "capped": n == MAX_BATCH}
        slope = (est["total"] - ref[1]) / (n - ref[0])  # the line through ref and this failing point
        n = min(n - data, ref[0] + int((limit - ref[1]) // slope))
        n -= n % data
    if n < data:
        return None
    return {"batch": n, "total": fixed + per_row * n, "verified": False, "capped": n == MAX_BATCH}


def table(workloads, chips, points: Points, with_max: bool, verify: bool) -> list[dict]:
    from jaxvlm import plan

    rows = []
    for name in workloads:
        w = WORKLOADS[name]
        text = plan.read_config(os.path.join(CONFIGS, w.config))[0].text
        for prune in w.prunes:
            for chip_name in chips:
                chip = CHIPS[chip_name]
                data, model = mesh_for(text, chip.devices)
                est = bf16_estimate(points.get(name, prune, data, model, BATCH))
                limit = HEADROOM * chip.memory
                row = {"workload": name, "prompt_tokens": w.prompt_tokens, "images": w.images,
                       "prune": prune or "none", "chip": chip_name, "mesh": {"data": data, "model": model},
                       "batch": BATCH, **{k: int(v) for k, v in est.items()}, "limit": int(limit),
                       "fits": est["total"] <= limit}
                if with_max:
                    row["max_batch"] = max_batch(points, name, prune, data, model, limit, verify)
                rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    gb = lambda b: f"{b / 1e9:.2f}"  # noqa: E731
    head = ("| workload (tokens) | prune | chip | mesh data x model | weights GB | KV GB | temp GB | total GB "
            "| limit GB | fits at 8 | max batch (total) |\n|---|---|---|---|---:|---:|---:|---:|---:|---|---|\n")
    lines = []
    for r in rows:
        m = r.get("max_batch", "n/a")
        if isinstance(m, dict):
            m = (f"{'>= ' if m['capped'] else ''}{m['batch']} ({gb(m['total'])} GB"
                 f"{'' if m['verified'] else ', fit'})")
        elif m is None:
            m = "none"
        lines.append(f"| {r['workload']} ({r['prompt_tokens']} + {MAX_NEW}) | {r['prune']} | {r['chip']} | "
                     f"{r['mesh']['data']} x {r['mesh']['model']} | {gb(r['weights'])} | {gb(r['kv'])} | "
                     f"{gb(r['temp'])} | {gb(r['total'])} | {gb(r['limit'])} | {'yes' if r['fits'] else 'no'} | "
                     f"{m} |")
    return head + "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.plan_table", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="outputs/plan_table")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help=f"of {', '.join(WORKLOADS)}")
    p.add_argument("--chips", default=",".join(CHIPS), help=f"of {', '.join(CHIPS)}")
    p.add_argument("--no-max-batch", action="store_true", help="only the batch-8 plans")
    p.add_argument("--verify", action="store_true", help="compile the max batch too (lowered until it fits)")
    a = p.parse_args(argv)
    workloads, chips = a.workloads.split(","), a.chips.split(",")
    bad = [x for x in workloads if x not in WORKLOADS] + [x for x in chips if x not in CHIPS]
    if bad:
        p.error(f"unknown workload or chip {bad[0]!r}")
    devices = max(CHIPS[c].devices for c in chips)
    flag = f"--xla_force_host_platform_device_count={devices}"
    if flag not in os.environ.get("XLA_FLAGS", ""):  # forced CPU devices must be set before jax starts
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip())
        os.execve(sys.executable, [sys.executable, "-m", "experiments.plan_table", *(argv or sys.argv[1:])], env)
    os.makedirs(a.out, exist_ok=True)
    points = Points(os.path.join(a.out, "points.json"))
    rows = table(workloads, chips, points, not a.no_max_batch, a.verify)
    md = markdown(rows)
    with open(os.path.join(a.out, "plan_table.md"), "w") as f:
        f.write(md)
    with open(os.path.join(a.out, "plan_table.json"), "w") as f:
        json.dump({"headroom": HEADROOM, "max_new_tokens": MAX_NEW, "chips": {k: dataclasses.asdict(v) for k, v in
                   CHIPS.items() if k in chips}, "rows": rows}, f, indent=1)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
