"""Sweep pruning schedules on one tiny model: FLOPs vs output fidelity, as a table and a Pareto plot.

Any sequence of stages (layer, method, keep, debias options) is a valid schedule; this runner compiles each
schedule once (one prefill+decode program per schedule; the engine's trace counter is reported), runs it on
the same batch, and compares it with the unpruned run:

- FLOPs: PRUNING.md's count with a 3-matrix FFN, per layer `4 n d^2 + 2 n^2 d + 3 n d m` with n the tokens
  entering that layer (text + surviving visual), summed over layers, averaged over rows; "equiv" is the
  layer-weighted average number of visual tokens (how multi-stage budgets are compared);
- fidelity: KL(p_unpruned || p_pruned) of the next-token distribution after the prompt (mean over rows), the
  first-token agreement, and the greedy agreement over `--new` decoded tokens.

The model is a random-weight Llama-shaped decoder (labelled as such: numbers compare schedules with each other
on one model, they say nothing about accuracy) fed with embedded inputs: [text | g x g visual tokens | question].

    python -m experiments.schedules [--out schedules_out] [--fast] [--batch 4] [--grid 12] [--layers 12]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxvlm import debias, prune
from jaxvlm.config import RopeConfig, TextConfig
from jaxvlm.engine import api
from jaxvlm.model import Embedded
from jaxvlm.models import decoder


# ------------------------------------------------------------------------------------------- model, batch


def tiny_config(layers: int = 12, hidden: int = 128, heads: int = 4, kv_heads: int = 2, vocab: int = 512) -> TextConfig:
    return TextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=int(hidden * 2.6875),
                      num_layers=layers, num_heads=heads, num_kv_heads=kv_heads, head_dim=hidden // heads,
                      rms_norm_eps=1e-6, rope=RopeConfig(), attention_bias=False, tie_word_embeddings=False)


def random_weights(cfg: TextConfig, seed: int = 0) -> dict:
    """Random text-decoder weights (fan-in scaled normals, unit norms) in the decoder's layout."""
    shapes = decoder.weight_shapes(cfg)
    leaves, tree = jax.tree.flatten(shapes, is_leaf=lambda s: isinstance(s, tuple))
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(
        shapes, is_leaf=lambda s: isinstance(s, tuple))[0]]
    out = []
    for key, shape, path in zip(keys, leaves, paths):
        if "norm" in path:
            out.append(jnp.ones(shape, jnp.float32))
        elif "embed" in path:
            out.append(jax.random.normal(key, shape, jnp.float32))
        else:
            if "layers" not in path:
                fan_in = shape[0]  # lm_head (D, V)
            elif path.endswith("['wo']"):
                fan_in = shape[1] * shape[2]  # (L, N, H, D)
            else:
                fan_in = shape[1]  # (L, D, ...) or w_down (L, F, D)
            out.append(jax.random.normal(key, shape, jnp.float32) * (1.5 / np.sqrt(fan_in)))
    return jax.tree.unflatten(tree, out)


def make_batch(cfg: TextConfig, weights: dict, batch: int, grid: int, seed: int = 0) -> tuple[Embedded, np.ndarray]:
    """Embedded rows [prefix text | grid x grid visual | question], right-padded; returns (emb, text counts)."""
    rng = np.random.default_rng(seed)
    nv = grid * grid
    pre = rng.integers(6, 12, batch)
    qst = rng.integers(8, 20, batch)
    t = int((pre + nv + qst).max())
    ids = rng.integers(0, cfg.vocab_size, (batch, t))
    emb = np.asarray(weights["embed"])[ids]
    valid = np.zeros((batch, t), bool)
    visual = np.zeros((batch, t), bool)
    span = -np.ones((batch, t), np.int32)
    # visual features: smooth low-frequency pattern + noise, so neighbouring patches resemble each other
    yy, xx = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    for i in range(batch):
        n = pre[i] + nv + qst[i]
        valid[i, :n] = True
        s0 = pre[i]
        visual[i, s0:s0 + nv] = True
        span[i, s0:s0 + nv] = np.arange(nv)
        basis = rng.standard_normal((4, cfg.hidden_size))
        f = np.stack([np.sin(xx / grid * 3), np.cos(yy / grid * 3), np.sin((xx + yy) / grid * 2), np.ones_like(xx)], -1)
        feats = f.reshape(nv, 4) @ basis + 0.7 * rng.standard_normal((nv, cfg.hidden_size))
        emb[i, s0:s0 + nv] = feats
    pos = np.where(valid, np.cumsum(valid, 1) - 1, 0).astype(np.int32)
    e = Embedded(
        embeds=jnp.asarray(emb, jnp.float32), positions=jnp.asarray(pos[None]), valid=jnp.asarray(valid),
        visual=jnp.asarray(visual), media=jnp.asarray(np.where(visual, np.arange(batch)[:, None], -1), jnp.int32),
        frame=jnp.asarray(np.where(visual, 0, -1), jnp.int32),
        row=jnp.asarray(np.where(visual, np.maximum(span, 0) // grid, -1), jnp.int32),
        col=jnp.asarray(np.where(visual, np.maximum(span, 0) % grid, -1), jnp.int32),
        span_index=jnp.asarray(span),
    )
    return e, (pre + qst).astype(np.int64)


# ------------------------------------------------------------------------------------------------ FLOPs


def visual_per_layer(schedule, n_layers: int, n_visual: int) -> np.ndarray:
    """Visual tokens entering each decoder layer under `schedule` (nominal: every row has n_visual)."""
    v = np.full(n_layers, n_visual, np.int64)
    for st in schedule:
        v[st.layer:] = min(int(st.keep), n_visual)
    return v


def flops(cfg: TextConfig, n_text: np.ndarray, schedule, n_visual: int) -> float:
    """PRUNING.md's LLM FLOPs (3-matrix FFN), averaged over rows."""
    d, m = cfg.hidden_size, cfg.intermediate_size
    v = visual_per_layer(schedule, cfg.num_layers, n_visual)
    total = 0.0
    for nt in n_text:
        n = (nt + v).astype(np.float64)
        total += float(np.sum(4 * n * d * d + 2 * n * n * d + 3 * n * d * m))
    return total / len(n_text)


# ---------------------------------------------------------------------------------------------- schedules


def grid_schedules(n_layers: int, n_visual: int, fast: bool = False) -> dict[str, tuple]:
    """The sweep: each method at a few budgets, layers scaled to the model depth, plus debiased variants."""
    frac = lambda f: max(1, int(round(n_visual * f)))  # noqa: E731
    L = n_layers
    trend = debias.release_trend("fastv").stretch(576, n_visual)
    s: dict[str, tuple] = {}
    keeps = (0.25,) if fast else (0.125, 0.25, 0.5)
    for kf in keeps:
        k = frac(kf)
        s[f"fastv K=2 keep={k}"] = prune.fastv(layer=2, keep=k)
        if not fast:
            s[f"fastv K=3 keep={k}"] = prune.fastv(layer=3, keep=k)
        s[f"fastv K=2 keep={k} +recency"] = prune.debiased(prune.fastv(layer=2, keep=k), trend=trend, padding=False)
        s[f"tokencarve keep={k}"] = prune.tokencarve(keep=max(k, 2))
        s[f"dart keep={k}"] = prune.dart(keep=k)
        if not fast:
            s[f"divprune keep={k}"] = prune.divprune(keep=k)
    pd_layers = (2, max(3, L * 10 // 32), max(4, L * 20 // 32))
    s["pdrop [2,10,20]/32 .32/.16/.08"] = prune.pdrop(layers=pd_layers, ratios=(.32, .16, .08), n_visual=n_visual)
    if not fast:
        s["pdrop paper .5/.25/.125"] = prune.pdrop(layers=(L // 4, L // 2, 3 * L // 4), ratios=(.5, .25, .125),
                                                   n_visual=n_visual)
        s["pdrop original positions"] = prune.pdrop(layers=pd_layers, ratios=(.32, .16, .08), n_visual=n_visual,
                                                    renumber=False)
    scale = n_visual / 576
    sv_layers = (2, max(3, L * 6 // 32), max(4, L * 15 // 32))
    sv_budgets = tuple(max(1, int(round(b * scale))) for b in prune.BUDGETS_V15[128])
    s["sparsevlm 128 v1.5"] = prune.sparsevlm(budgets=sv_budgets, layers=sv_layers, n_visual=n_visual)
    if not fast:
        s["sparsevlm 128 v1.5 no recycle"] = prune.sparsevlm(budgets=sv_budgets, layers=sv_layers, n_visual=n_visual,
                                                             recycle=False)
        s["sparsevlm 128 v2.0"] = prune.sparsevlm(
            budgets=tuple(max(1, int(round(b * scale))) for b in prune.BUDGETS_V20[128]), layers=sv_layers,
            n_visual=n_visual, version="2.0", heads=2)
    s["himap 2/115 8/90 (scaled)"] = prune.himap(text_keep=frac(115 / 576), image_keep=frac(90 / 576),
                                                 image_layer=max(3, L * 8 // 32))
    s["illava keep 70%"] = prune.illava(layers=(max(1, L // 4),), keep_ratio=0.7, n_visual=n_visual)
    if not fast:  # the release's recency trends (stretched to this grid) on the other hosts; no padding here
        for name, method in (("pdrop [2,10,20]/32 .32/.16/.08", "pdrop"), ("sparsevlm 128 v1.5", "sparsevlm"),
                             ("himap 2/115 8/90 (scaled)", "himap"), (f"tokencarve keep={frac(0.25)}", "tokencarve")):
            tr = debias.release_trend(method, "gqa").stretch(576, n_visual)
            s[name + " +recency"] = prune.debiased(s[name], trend=tr, padding=False)
    return s


# ---------------------------------------------------------------------------------------------- running


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def evaluate(cfg, weights, emb, n_text, schedules: dict, n_visual: int, max_new: int) -> list[dict]:
    base = api.generate_embedded(weights, cfg, emb, prune=None, max_new_tokens=max_new, output_logits=True)
    base_lp = _log_softmax(base.logits[:, 0])
    base_tok = np.asarray(base.tokens)
    f0 = flops(cfg, n_text, (), n_visual)
    rows = [dict(schedule="unpruned", flops=f0, rel_flops=1.0, equiv=float(n_visual), kl=0.0, first=1.0,
                 agree=1.0, seconds=0.0, traces=0)]
    for name, sched in schedules.items():
        before = api.TRACE_COUNTS["generate"]
        t0 = time.perf_counter()
        out = api.generate_embedded(weights, cfg, emb, prune=sched, max_new_tokens=max_new, output_logits=True)
        jax.block_until_ready(out.tokens)
        dt = time.perf_counter() - t0
        # a second call must not recompile (one program per schedule)
        api.generate_embedded(weights, cfg, emb, prune=sched, max_new_tokens=max_new, output_logits=True)
        traces = api.TRACE_COUNTS["generate"] - before
        lp = _log_softmax(out.logits[:, 0])
        kl = float(np.mean(np.sum(np.exp(base_lp) * (base_lp - lp), -1)))
        tok = np.asarray(out.tokens)
        f = flops(cfg, n_text, sched, n_visual)
        v = visual_per_layer(sched, cfg.num_layers, n_visual)
        rows.append(dict(schedule=name, flops=f, rel_flops=f / f0, equiv=float(v.mean()), kl=kl,
                         first=float(np.mean(tok[:, 0] == base_tok[:, 0])), agree=float(np.mean(tok == base_tok)),
                         seconds=dt, traces=traces))
    return rows


def pareto(rows: list[dict]) -> list[str]:
    """Schedules not dominated in (rel_flops, kl): no other is at most as costly and at most as divergent."""
    front = []
    for r in rows:
        if not any((o["rel_flops"] <= r["rel_flops"] and o["kl"] <= r["kl"]) and
                   (o["rel_flops"] < r["rel_flops"] or o["kl"] < r["kl"]) for o in rows):
            front.append(r["schedule"])
    return front


def format_table(rows: list[dict], front: list[str]) -> str:
    head = f"{'schedule':<36} {'FLOPs':>7} {'equiv':>6} {'KL':>9} {'1st':>5} {'greedy':>6} {'s':>6} {'tr':>3}  P"
    lines = [head, "-" * len(head)]
    for r in sorted(rows, key=lambda r: r["rel_flops"]):
        lines.append(f"{r['schedule']:<36} {r['rel_flops']:>7.3f} {r['equiv']:>6.1f} {r['kl']:>9.5f} "
                     f"{r['first']:>5.2f} {r['agree']:>6.2f} {r['seconds']:>6.2f} {r['traces']:>3}  "
                     f"{'*' if r['schedule'] in front else ''}")
    return "\n".join(lines)


def plot(rows: list[dict], front: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    floor = min([r["kl"] for r in rows if r["kl"] > 0] or [1e-6]) / 3
    for r in rows:
        y = max(r["kl"], floor)
        ax.scatter(r["rel_flops"], y, c="tab:red" if r["schedule"] in front else "tab:blue", s=24)
        label = r["schedule"] + (" (KL=0)" if r["kl"] == 0 else "")
        ax.annotate(label, (r["rel_flops"], y), fontsize=6, xytext=(3, 2), textcoords="offset points")
    fr = sorted((r for r in rows if r["schedule"] in front), key=lambda r: r["rel_flops"])
    ax.plot([r["rel_flops"] for r in fr], [max(r["kl"], floor) for r in fr], "r--", lw=1, label="Pareto front")
    ax.set_yscale("log")
    ax.set_xlabel("LLM FLOPs relative to unpruned (3-matrix FFN)")
    ax.set_ylabel("KL(unpruned || pruned), next token")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.schedules", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="schedules_out", help="output folder (table .txt, .json, Pareto .png)")
    p.add_argument("--fast", action="store_true", help="a few schedules on a smaller model (tests)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--grid", type=int, default=None, help="visual grid side (default 12; 6 with --fast)")
    p.add_argument("--layers", type=int, default=None, help="decoder layers (default 12; 8 with --fast)")
    p.add_argument("--new", type=int, default=8, help="greedy tokens compared")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    grid = a.grid or (6 if a.fast else 12)
    layers = a.layers or (8 if a.fast else 12)
    cfg = tiny_config(layers=layers, hidden=64 if a.fast else 128)
    weights = random_weights(cfg, a.seed)
    emb, n_text = make_batch(cfg, weights, a.batch, grid, a.seed)
    nv = grid * grid
    scheds = grid_schedules(layers, nv, fast=a.fast)
    t0 = time.perf_counter()
    rows = evaluate(cfg, weights, emb, n_text, scheds, nv, a.new)
    front = pareto(rows)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    title = (f"random-weight decoder ({layers} layers, d={cfg.hidden_size}), {a.batch} rows, {nv} visual tokens: "
             "FLOPs vs fidelity")
    table = format_table(rows, front)
    print(f"# {title}\n# (random weights: compares schedules with each other, not accuracy)\n{table}")
    (out / "schedules.txt").write_text(table + "\n")
    (out / "schedules.json").write_text(json.dumps(dict(config=dict(layers=layers, hidden=cfg.hidden_size,
                                                                    batch=a.batch, visual=nv), rows=rows,
                                                        pareto=front), indent=1))
    plot(rows, front, out / "schedules_pareto.png", title)
    print(f"wrote {out / 'schedules.txt'}, {out / 'schedules.json'}, {out / 'schedules_pareto.png'} "
          f"({time.perf_counter() - t0:.1f}s, {len(scheds)} schedules, each compiled once)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
